"""Project a drain before it is written: where the region's traffic goes, the load the other
regions would take, and whether the safety rules would hold it (pure, from Redis inputs)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gtm.config.loader import Config
from gtm.engine import PlanCache, plan
from gtm.models.override import Override
from gtm.models.plan import DesiredState, PoolPlan
from gtm.store.inputs import PlanInputs


@dataclass
class DrainProjection:
    """The outcome of a drain played forward with today's reports.

    Attributes:
        shares: per pool, the share (0..1) of answers each region would get afterwards.
        held: reasons the safety rules would hold the drain (empty: it would complete).
        loads: per other region: load now, spare now, projected extra load and spare after,
            in the reports' capacity unit.
        unit: that unit.
        steps: planned steps to reach weight 0 (0 when held at once).
    """

    shares: dict[str, dict[str, float]] = field(default_factory=dict)
    held: list[str] = field(default_factory=list)
    loads: dict[str, dict[str, float]] = field(default_factory=dict)
    unit: str = "replicas"
    steps: int = 0


def project_drain(
    cfg: Config,
    inputs: PlanInputs,
    override: Override,
    now: float,
    max_steps: int = 300,
) -> DrainProjection:
    """Play the drain forward one planned step at a time until the region is at weight 0 in
    every pool, or until the engine holds it (then ``held`` says why, with the numbers).

    ``inputs`` are the controller's (``gtm.store.inputs.read_plan_inputs``): with the rollouts
    in force (``caps``) and the damping clears, so a drain beside a rollout's deploy drain is
    not projected against traffic the rollout is taking away. A cordon moves no traffic: it is
    planned once, and no other region takes load. Pure: reads and writes nothing.
    """
    rules = cfg.policy.safety
    region = override.region
    reports = inputs.reports
    ovs = {**inputs.overrides, region: override}
    caps, cleared = inputs.caps or None, inputs.damping_cleared or None
    cache = PlanCache()
    state = plan(cfg.policy, cfg.inventory, reports, inputs.overrides, inputs.previous, now, digest=cfg.digest,
                 caps=caps, damping_cleared=cleared, cache=cache, vantage=inputs.vantage)
    before = state
    t = now
    out = DrainProjection()
    last_weights: tuple[int, ...] | None = None
    for step in range(max_steps):
        t += rules.step_interval_s
        # Today's reports, kept fresh as simulated time moves on (else they would age out).
        fresh = {r: rep.model_copy(update={"observed_at": max(rep.observed_at, t)}) for r, rep in reports.items()}
        seen = {r: v.model_copy(update={"observed_at": max(v.observed_at, t)}) for r, v in inputs.vantage.items()}
        state = plan(cfg.policy, cfg.inventory, fresh, ovs, state, t, digest=cfg.digest, caps=caps,
                     damping_cleared=cleared, cache=cache, vantage=seen)
        weights = tuple(p.weight_of(region) for p in state.pools.values())
        if override.kind == "cordon" or all(w == 0 for w in weights):
            out.steps = step + 1
            break
        if weights == last_weights:
            out.held = sorted({
                m.reason for p in state.pools.values() for m in p.members
                if m.region == region and "held" in m.reason
            })
            break
        last_weights = weights
    out.shares = _shares(state)
    st = before.regions.get(region)
    load = st.load if st is not None else 0.0
    out.unit = st.capacity_unit if st is not None else "replicas"
    extra: dict[str, float] = {}
    pools_with = [p for p in state.pools.values() if any(m.region == region for m in p.members)]
    if override.kind == "cordon":
        pools_with = []  # the region keeps its traffic: nobody takes load
    for pool in pools_with:
        share = _shares_of(pool)
        for r, s in share.items():
            if r != region:
                extra[r] = max(extra.get(r, 0.0), load * s)
    for r, e in sorted(extra.items()):
        rs = before.regions.get(r)
        if rs is None:
            continue
        out.loads[r] = {
            "load": round(rs.load, 3), "spare": round(rs.spare_capacity, 3),
            "extra": round(e, 3), "spare_after": round(rs.spare_capacity - e, 3),
        }
    return out


def _shares_of(pool: PoolPlan) -> dict[str, float]:
    members = pool.members
    total = sum(m.weight for m in members)
    return {m.region: m.weight / total for m in members if m.weight > 0} if total else {}


def _shares(state: DesiredState) -> dict[str, dict[str, float]]:
    return {pid: _shares_of(pool) for pid, pool in sorted(state.pools.items())}
