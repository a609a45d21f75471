"""``gtm policy verify``: the plan under every combination of region failures, and each region
drained, checked against the invariants (pure: no I/O, a synthetic clock).

Scenarios: every subset of failed regions for up to ``max_exhaustive`` regions (2^n plans:
65,536 at 16); past that, every subset of at most ``k`` failures with k the largest that keeps
the count under 2^max_exhaustive (said in the result). Each scenario is planned from the
all-healthy plan as previous, as the controller would meet it.

Invariants (a break makes verify fail):
- residency: a pinned segment's answers only name regions in its jurisdictions, unless the
  policy explicitly lets it spill (reported as "relies on spill");
- failover: a failed region takes no traffic unless its pool is held (fail-static) or opened
  (fail-open), which are reported;
- drains: a drained region never gains weight while draining;
- determinism: the same inputs give the same routing digest;
- anycast (``gtm.engine.anycast``): a pinned prefix is only announced from regions in its
  jurisdictions; a failed region does not announce unless the pool or the prefix fails static
  or open; a region announces exactly when its pool weight is > 0 (but when the prefix fails
  static or open); a prefix is never withdrawn everywhere while a region that may announce it
  has weight; a draining region never announces more preferred (fewer prepends, lower MED) nor
  comes back.

Findings (reported, not failures): segments left dark, pools over capacity (the pool's demand
exceeds what its surviving regions can take), reliance on fail-open/fail-static/spill/fallback,
prefixes withdrawn everywhere.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from gtm.engine.anycast import PrefixSpec, prefix_specs
from gtm.engine.planner import PlanCache, plan
from gtm.models.override import Override
from gtm.models.plan import Announcement, DesiredState, PoolPlan
from gtm.models.policy import Policy
from gtm.models.region import Inventory
from gtm.models.report import FleetReport, ModelStats

T0 = 1_800_000_000.0


@dataclass
class Scenario:
    """One combination and what it showed."""

    failed: tuple[str, ...]
    drained: str | None = None
    dark: list[str] = field(default_factory=list)
    over_capacity: list[str] = field(default_factory=list)
    relies_on: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)

    @property
    def notable(self) -> bool:
        return bool(self.dark or self.over_capacity or self.relies_on or self.broken)


@dataclass
class VerifyResult:
    """Everything verify found.

    Attributes:
        regions: regions considered.
        exhaustive: whether every failure subset was planned.
        max_failures: the largest failure set planned.
        scenarios: how many plans were made.
        notable: scenarios with findings or broken invariants.
        broken: how many scenarios broke an invariant.
        seconds: wall time, filled in by the caller that timed the run (the engine reads no
            clock).
    """

    regions: tuple[str, ...]
    exhaustive: bool
    max_failures: int
    scenarios: int
    notable: list[Scenario]
    broken: int
    seconds: float = 0.0


def _reports(policy: Policy, inventory: Inventory, regions: tuple[str, ...], load: float) -> tuple[
    dict[str, FleetReport], dict[str, FleetReport]
]:
    models = sorted({s.model for s in policy.services if s.model is not None})
    good: dict[str, FleetReport] = {}
    bad: dict[str, FleetReport] = {}
    for r in regions:
        replicas = max(1, sum(src.replicas for src in inventory.regions[r].fleet))
        spare = replicas * (1 - load)
        stats = {m: ModelStats(model=m, replicas_total=replicas, replicas_healthy=replicas, spare_capacity=spare)
                 for m in models}
        good[r] = FleetReport(region=r, agent_id="verify", seq=1, observed_at=T0, interval_s=2.0, healthy=True,
                              consecutive_ok=100, models=stats, spare_capacity=spare)
        bad[r] = FleetReport(region=r, agent_id="verify", seq=2, observed_at=T0, interval_s=2.0, healthy=False,
                             consecutive_fail=100, reason="verify: failed",
                             models={m: ModelStats(model=m, replicas_total=replicas, replicas_healthy=0)
                                     for m in models})
    return good, bad


def _check(
    policy: Policy,
    inventory: Inventory,
    state: DesiredState,
    failed: set[str],
    sc: Scenario,
    load_of: dict[str, float],
    cap_of: dict[str, float],
) -> None:
    for svc in state.services.values():
        for route in svc.segments:
            pool = state.pools[route.pool_id]
            where = f"{svc.name}/{route.segment}"
            active = pool.active
            if route.note:
                sc.relies_on.append(f"fallback at {where}")
            if pool.mode == "dark" or not active:
                sc.dark.append(where)
                continue
            if pool.mode in ("fail-static", "fail-open", "spill"):
                sc.relies_on.append(f"{pool.mode} at {where}")
            if route.jurisdictions:
                outside = [m.region for m in active
                           if inventory.regions[m.region].jurisdiction not in route.jurisdictions]
                if outside and pool.mode != "spill":
                    sc.broken.append(f"residency: {where} pinned to {'/'.join(route.jurisdictions)} answers {outside}")
            if pool.mode == "normal":
                dead = [m.region for m in active if m.region in failed]
                if dead:
                    sc.broken.append(f"failover: {where} still sends traffic to failed {dead}")
            if pool.mode != "fail-open":
                demand = sum(load_of[m.region] for m in pool.members)
                capacity = sum(cap_of[m.region] for m in active if m.region not in failed)
                if demand > capacity + 1e-9:
                    sc.over_capacity.append(f"{where} ({demand:.1f} > {capacity:.1f})")


def _own_pool(state: DesiredState, spec: PrefixSpec) -> PoolPlan | None:
    """The pool of the segment the prefix serves; None when the segment falls back to another
    service (its DNS answers then come from that service's pool, which anycast does not follow)."""
    svc = state.services.get(spec.fqdn)
    route = next((r for r in svc.segments if r.segment == spec.segment), None) if svc is not None else None
    if route is None or route.note:
        return None
    return state.pools.get(route.pool_id)


def _check_anycast(
    inventory: Inventory, state: DesiredState, specs: tuple[PrefixSpec, ...], failed: set[str], sc: Scenario
) -> None:
    for spec in specs:
        anns = state.announcements.get(spec.prefix, ())
        if not spec.eligible:
            continue
        where = f"anycast {spec.prefix} ({spec.service}/{spec.segment})"
        pool = _own_pool(state, spec)
        weights = {r: pool.weight_of(r) if pool is not None else 0 for r in spec.eligible}
        mode = pool.mode if pool is not None else "fallback"
        fallback = next((a.reason.split(":")[0] for a in anns if a.reason.startswith(("FAIL-STATIC", "FAIL-OPEN"))),
                        "")
        if fallback:
            sc.relies_on.append(f"{fallback.lower()} at {where}")
        announcing = [a.region for a in anns if a.action == "announce"]
        if not announcing:
            sc.dark.append(where)
            if pool is not None and any(w > 0 for w in weights.values()):
                sc.broken.append(f"anycast: {where} withdrawn everywhere while {weights} can serve")
        if spec.jurisdictions:
            outside = [r for r in announcing if inventory.regions[r].jurisdiction not in spec.jurisdictions]
            if outside:
                pin = "/".join(spec.jurisdictions)
                sc.broken.append(f"residency: {where} pinned to {pin} announced from {outside}")
        if not fallback and pool is not None:
            dead = [r for r in announcing if r in failed]
            if dead and mode == "normal":
                sc.broken.append(f"failover: {where} still announced from failed {dead}")
            disagree = [r for r in spec.eligible if (weights[r] > 0) != (r in announcing)]
            if disagree:
                sc.broken.append(f"anycast: {where} disagrees with the DNS weights for {disagree}")


def _more_preferred(before: Announcement | None, after: Announcement | None) -> bool:
    """Whether ``after`` announces where ``before`` withdrew, or with fewer prepends or a lower MED."""
    if after is None or after.action != "announce":
        return False
    if before is None or before.action != "announce":
        return True
    return after.prepend < before.prepend or after.med < before.med


def verify(
    policy: Policy,
    inventory: Inventory,
    *,
    load: float = 0.5,
    max_exhaustive: int = 16,
    check_determinism_every: int = 16,
) -> VerifyResult:
    """Plan every failure combination (and each region drained) and check the invariants.

    Args:
        policy: the policy to verify.
        inventory: the regions.
        load: assumed load per replica, fraction 0..1 (spare = replicas × (1 − load)).
        max_exhaustive: plan every subset up to this many regions (2^n plans).
        check_determinism_every: re-plan every n-th scenario to check determinism.
    """
    cache = PlanCache()
    regions = tuple(sorted(policy.region_names & inventory.regions.keys()))
    n = len(regions)
    good, bad = _reports(policy, inventory, regions, load)
    replicas = {r: max(1, sum(src.replicas for src in inventory.regions[r].fleet)) for r in regions}
    load_of = {r: replicas[r] * load for r in regions}
    cap_of = {r: float(replicas[r]) for r in regions}
    digest = "verify"
    specs = prefix_specs(policy, inventory)
    baseline = plan(policy, inventory, good, {}, None, T0, digest=digest, cache=cache)
    if n <= max_exhaustive:
        max_k, exhaustive = n, True
    else:
        budget = 2**max_exhaustive
        max_k, total = 0, 1
        while max_k < n and total + math.comb(n, max_k + 1) <= budget:
            max_k += 1
            total += math.comb(n, max_k)
        max_k = max(max_k, 1)  # every single-region failure, whatever the budget
        exhaustive = False
    notable: list[Scenario] = []
    count = broken = 0
    for k in range(max_k + 1):
        for failed in itertools.combinations(regions, k):
            fs = set(failed)
            reps = {r: bad[r] if r in fs else good[r] for r in regions}
            state = plan(policy, inventory, reps, {}, baseline, T0 + 1, digest=digest, cache=cache)
            sc = Scenario(failed=failed)
            _check(policy, inventory, state, fs, sc, load_of, cap_of)
            _check_anycast(inventory, state, specs, fs, sc)
            if count % check_determinism_every == 0:
                again = plan(policy, inventory, reps, {}, baseline, T0 + 1, digest=digest, cache=cache)
                if again.routing_digest() != state.routing_digest():
                    sc.broken.append("determinism: the same inputs gave different routing")
            count += 1
            broken += bool(sc.broken)
            if sc.notable:
                notable.append(sc)
    for r in regions:
        ov = {r: Override(region=r, kind="drain", reason="verify", actor="verify", since=T0)}
        state = baseline
        sc = Scenario(failed=(), drained=r)
        before = {pid: p.weight_of(r) for pid, p in state.pools.items()}
        for i in range(1, 300):
            nxt = plan(policy, inventory, good, ov, state, T0 + i * policy.safety.step_interval_s, digest=digest,
                       cache=cache)
            count += 1
            for pid, p in nxt.pools.items():
                if p.weight_of(r) > before.get(pid, p.weight_of(r)):
                    sc.broken.append(f"drain: {r} gained weight in {pid}")
            for prefix, anns in nxt.announcements.items():
                was = next((a for a in state.announcements.get(prefix, ()) if a.region == r), None)
                now_a = next((a for a in anns if a.region == r), None)
                if _more_preferred(was, now_a):
                    sc.broken.append(f"drain: {r} announced {prefix} more preferred while draining")
            now_w = {pid: p.weight_of(r) for pid, p in nxt.pools.items()}
            if now_w == before and i > 1:
                held = sorted({m.reason for p in nxt.pools.values() for m in p.members
                               if m.region == r and "held" in m.reason})
                if held:
                    rule = ("headroom" if "headroom" in held[0] else "min_healthy_regions"
                            if "min_healthy" in held[0] else "max_drained" if "max_drained" in held[0] else "safety")
                    sc.relies_on.append(f"drain held ({rule})")
                    sc.details.extend(held)
                break
            before, state = now_w, nxt
        _check(policy, inventory, state, set(), sc, load_of, cap_of)
        _check_anycast(inventory, state, specs, set(), sc)
        broken += bool(sc.broken)
        if sc.notable:
            notable.append(sc)
    return VerifyResult(
        regions=regions, exhaustive=exhaustive, max_failures=max_k, scenarios=count,
        notable=notable, broken=broken,
    )
