"""A drill's preflight: the plan of what it will do, and the reasons it must not start now.

``check()`` is pure: it takes the policy in force and what Redis holds (``PreflightFacts``) and
returns a ``Preflight`` (plan lines, the answer shares per pool before and after, refusals).
``gather()`` is the I/O edge that reads those facts (Redis, and for ``kill`` each fleet
source's ``GET /_sim/state``).

Refusals, each a sentence an operator can act on:

- the region is unknown, or not serving now (a drill of a region that takes no traffic proves
  nothing);
- the region already has an override (a drain, cordon or another drill's failover);
- another drill is running (the drill lock);
- a rollout is in flight (a stored rollout state that is not ``done`` or ``aborted``);
- a policy ``drills.blocked_windows`` entry covers now;
- ``drain``: the safety rules would hold it (``gtm.controller.drain.project_drain``);
- ``failover`` / ``kill``: a pool would be left with no serving region (dark, fail-static,
  fail-open) or with fewer than ``safety.min_healthy_regions``, or a residency-pinned segment
  would go dark or spill;
- ``kill``: a fleet source of the region is not a gtm simulator (its ``/_sim/state`` does not
  answer), or the region has no fleet source.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp

from gtm.config.loader import Config
from gtm.controller.drain import project_drain
from gtm.engine import plan
from gtm.models.drill import DrillKind, DrillLock
from gtm.models.override import Override
from gtm.models.plan import DesiredState, PoolPlan
from gtm.store.inputs import PlanInputs, planned_regions, read_plan_inputs
from gtm.store.rollouts import load as load_rollouts
from gtm.store.store import Store

FINISHED_ROLLOUT = frozenset({"done", "aborted"})
"""Rollout statuses that are no longer in flight."""


@dataclass(frozen=True)
class PreflightFacts:
    """What the preflight judges, read by ``gather()``.

    Attributes:
        now: unix seconds.
        inputs: the engine's inputs from Redis (reports, overrides, the plan in force).
        running: the drill lock held now, or None.
        rollouts: stored rollouts not finished: name → status.
        sim_sources: ``kill`` only: fleet source name → None when its ``/_sim/state`` answered
            (a gtm simulator), else why not; None when not checked (other kinds).
    """

    now: float
    inputs: PlanInputs
    running: DrillLock | None = None
    rollouts: dict[str, str] = field(default_factory=dict)
    sim_sources: dict[str, str | None] | None = None


@dataclass
class Preflight:
    """The preflight's outcome.

    Attributes:
        kind / region: the drill.
        plan: what will happen, one line each (shown by the dry run, kept in the report).
        before / after: per pool, each region's share of answers (0..1) now and once the
            drill has acted.
        refusals: why it must not start (empty: it may).
    """

    kind: DrillKind
    region: str
    plan: list[str] = field(default_factory=list)
    before: dict[str, dict[str, float]] = field(default_factory=dict)
    after: dict[str, dict[str, float]] = field(default_factory=dict)
    refusals: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refusals


def failover_override(region: str, *, drill: str, actor: str, reason: str, now: float,
                      lease_s: float) -> Override:
    """The override a ``failover`` drill writes: the engine treats ``region`` as unhealthy
    until ``now + lease_s`` (unix seconds) unless the drill renews it."""
    return Override(region=region, kind="failover", reason=reason, actor=actor, since=now,
                    expires_at=now + lease_s, drill=drill)


def check(cfg: Config, kind: DrillKind, region: str, facts: PreflightFacts, *, hold_s: float = 0.0) -> Preflight:
    """Decide whether the drill may start, and what it will do. Pure.

    Args:
        cfg: the policy and inventory in force.
        kind / region: the drill.
        facts: what Redis (and the fleets, for ``kill``) say now.
        hold_s: how long the drill will hold, seconds (for the plan lines).

    Returns:
        The ``Preflight``; ``refusals`` empty when the drill may start.
    """
    out = Preflight(kind=kind, region=region)
    policy = cfg.policy
    known = planned_regions(policy, cfg.inventory.regions)
    if region not in known:
        out.refusals.append(f"unknown region {region!r}; the policy plans {', '.join(known) or 'nothing'}")
        return out
    now, inputs = facts.now, facts.inputs
    current = inputs.previous
    status = current.regions.get(region) if current is not None else None
    if status is None or not status.serving or not _in_any_pool(current, region):
        state = status.state if status is not None else "not planned yet"
        out.refusals.append(f"{region} is not serving now ({state}): a drill of a region that takes no traffic "
                            "proves nothing")
    ov = inputs.overrides.get(region)
    if ov is not None and ov.active(now):
        by = f" by drill {ov.drill}" if ov.drill else ""
        out.refusals.append(f"{region} already has a {ov.kind} override{by} ({ov.actor}: {ov.reason}); "
                            "undrain it first")
    if facts.running is not None:
        r = facts.running
        out.refusals.append(f"another drill is running: {r.id} ({r.kind} {r.region} by {r.actor}, phase {r.phase})")
    for name, st in sorted(facts.rollouts.items()):
        out.refusals.append(f"rollout {name} is in flight ({st}); drill after it is done or aborted")
    window = policy.drills.blocked_at(now)
    if window is not None:
        out.refusals.append(f"a blocked window covers now: {window.describe()} (policy drills.blocked_windows)")
    if current is not None:
        out.before = _shares(current)
    if kind == "drain":
        _drain(cfg, region, facts, out, hold_s)
    else:
        _failover(cfg, kind, region, facts, out, hold_s)
    return out


def _drain(cfg: Config, region: str, facts: PreflightFacts, out: Preflight, hold_s: float) -> None:
    ov = Override(region=region, kind="drain", reason="drill preflight", actor="drill", since=facts.now)
    proj = project_drain(cfg, facts.inputs, ov, facts.now)
    out.after = proj.shares
    for h in proj.held:
        out.refusals.append(f"the safety rules would hold the drain: {h}")
    out.plan.append(f"drain {region}: weight to 0 in {proj.steps} planned step(s) of "
                    f"{cfg.policy.safety.step_interval_s:g} s (safety rules apply), hold {hold_s:g} s, then undrain "
                    "(the weight ramps back in planned steps)")
    _share_lines(out)


def _failover(cfg: Config, kind: DrillKind, region: str, facts: PreflightFacts, out: Preflight,
              hold_s: float) -> None:
    inputs, now = facts.inputs, facts.now
    ov = failover_override(region, drill="preflight", actor="drill", reason="drill preflight", now=now,
                           lease_s=cfg.policy.drills.lease_s)
    after = plan(cfg.policy, cfg.inventory, **{**inputs.plan_kwargs(), "overrides": {**inputs.overrides, region: ov}},
                 now=now, digest=cfg.digest)
    out.after = _shares(after)
    rules = cfg.policy.safety
    before_pools = inputs.previous.pools if inputs.previous is not None else {}
    residency = _residency_pools(after)
    for pid, pool in sorted(after.pools.items()):
        was = before_pools.get(pid)
        if was is None or was.weight_of(region) == 0:
            continue  # the region takes none of this pool's traffic: the drill does not touch it
        serving = [m.region for m in pool.active if m.region != region]
        if pool.mode in ("dark", "fail-static", "fail-open") or not serving:
            out.refusals.append(f"pool {pid} would be left with no serving region ({pool.mode}: {pool.reason})")
        elif len(serving) < rules.min_healthy_regions:
            out.refusals.append(f"pool {pid} would be left with {len(serving)} serving region(s), fewer than "
                                f"safety.min_healthy_regions ({rules.min_healthy_regions})")
        if pid in residency and (pool.mode != "normal" or not serving):
            out.refusals.append(f"residency-pinned segment {residency[pid]} would go {pool.mode} "
                                f"without {region}")
    if kind == "failover":
        out.plan.append(f"failover {region}: an override makes the engine treat it as unhealthy (a failure move, "
                        f"immediate; the fleet keeps running), expiring {cfg.policy.drills.lease_s:g} s after its "
                        f"last renewal; hold {hold_s:g} s, then the override is deleted")
    else:
        sources = cfg.inventory.regions[region].fleet
        if not sources:
            out.refusals.append(f"{region} has no fleet source to kill")
        for name, why in sorted((facts.sim_sources or {}).items()):
            if why is not None:
                out.refusals.append(f"kill only for fleets gtm runs: source {name} is not a gtm simulator ({why})")
        out.plan.append(f"kill {region}: every fleet source ({', '.join(s.name for s in sources) or 'none'}) really "
                        f"dies for {hold_s:g} s and comes back by itself; the agents detect it (the unplanned path)")
    _share_lines(out)


def _share_lines(out: Preflight) -> None:
    for pid in sorted(set(out.before) | set(out.after)):
        b, a = out.before.get(pid, {}), out.after.get(pid, {})
        if out.region not in b:
            continue
        out.plan.append(f"  pool {pid}: {_fmt(b)} → {_fmt(a)}")


def _fmt(shares: dict[str, float]) -> str:
    return ", ".join(f"{r} {s:.0%}" for r, s in sorted(shares.items())) or "DARK"


def _in_any_pool(state: DesiredState | None, region: str) -> bool:
    return state is not None and any(p.weight_of(region) > 0 for p in state.pools.values())


def _residency_pools(state: DesiredState) -> dict[str, str]:
    """pool id → ``service/segment`` for segments pinned to jurisdictions."""
    out: dict[str, str] = {}
    for svc in state.services.values():
        for seg in svc.segments:
            if seg.jurisdictions:
                out[seg.pool_id] = f"{svc.name}/{seg.segment} ({', '.join(seg.jurisdictions)})"
    return out


def _shares_of(pool: PoolPlan) -> dict[str, float]:
    total = sum(m.weight for m in pool.members)
    return {m.region: m.weight / total for m in pool.members if m.weight > 0} if total else {}


def _shares(state: DesiredState) -> dict[str, dict[str, float]]:
    return {pid: _shares_of(p) for pid, p in sorted(state.pools.items())}


async def gather(store: Store, cfg: Config, kind: DrillKind, region: str, now: float,
                 session: aiohttp.ClientSession | None = None, *, timeout_s: float = 3.0) -> PreflightFacts:
    """Read the preflight's facts: the engine's inputs, the drill lock, the rollouts in flight,
    and for ``kill`` whether each fleet source of ``region`` answers ``GET <url>/_sim/state``
    within ``timeout_s`` seconds (``session`` is then required).

    Raises:
        StoreError: Redis failed.
    """
    inputs = await read_plan_inputs(store, planned_regions(cfg.policy, cfg.inventory.regions),
                                    rollouts=[r.name for r in cfg.policy.rollouts], inventory=cfg.inventory,
                                    thresholds=cfg.policy.health)
    running = await store.get_drill()
    stored = await load_rollouts(store, [r.name for r in cfg.policy.rollouts])
    rollouts: dict[str, str] = {n: str(st.status) for n, (st, _) in stored.items() if st.status not in FINISHED_ROLLOUT}
    sims: dict[str, str | None] | None = None
    reg = cfg.inventory.regions.get(region)
    if kind == "kill" and reg is not None:
        if session is None:
            raise ValueError("gather(kind='kill') needs an aiohttp session")
        sims = {src.name: await sim_check(session, src.url, timeout_s) for src in reg.fleet}
    return PreflightFacts(now=now, inputs=inputs, running=running, rollouts=rollouts, sim_sources=sims)


async def sim_check(session: aiohttp.ClientSession, url: str, timeout_s: float) -> str | None:
    """None when ``GET <url>/_sim/state`` answers 200 with JSON (a gtm simulator), else why not."""
    try:
        async with session.get(url.rstrip("/") + "/_sim/state",
                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                return f"GET /_sim/state answered {resp.status}"
            await resp.json()
            return None
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return f"GET /_sim/state failed: {type(exc).__name__} {exc}".strip()


__all__ = ["Preflight", "PreflightFacts", "check", "failover_override", "gather", "sim_check"]
