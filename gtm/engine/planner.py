"""``plan()``: the pure function at the heart of gtm.

(policy, inventory, reports, overrides, previous, now) → DesiredState, with a reason for every
decision. No I/O, no clock, no randomness: the same inputs give the same plan.

Order of judgement:

1. **Static stability**: if more than ``safety.stale_fraction`` of the policy's regions have no
   fresh report, judged over the lapse window (``gtm.engine.staleness``), the inputs themselves
   are suspect (Redis partition, agents' network down) and the previous plan is held unchanged,
   with the reason; after such a hold, one more lapse window for the stragglers to report.
2. **Health** per region with hysteresis, from its own reports and the other regions' vantage
   points judged by quorum (``gtm.engine.health``, ``gtm.engine.vantage``).
3. **Pools** per (segment, eligible regions, model, routing): residency filters regions first
   (hard constraint); unhealthy/unknown regions drop to weight 0 at once (failover), but for an
   unknown region within its grace, which keeps its previous weight; drained
   regions step down and never up; cordoned regions never go up; the rest take weights from
   spare capacity (or static weights), paced by the safety rules.
4. When no region of a pool can serve: ``on_all_unhealthy`` (``fail-static`` holds the previous
   pool, ``fail-open`` spreads over every non-drained eligible region); otherwise the pool is
   dark, said loudly. Never spill outside a residency pin.
5. **Anycast** announcements per (prefix, region) from the same pools (``gtm.engine.anycast``):
   weight > 0 announces, with prepends and MED from the region's share; weight 0 withdraws.

Pools with the same inputs are computed once and shared by every service that uses them.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from gtm.engine.anycast import PrefixSpec, plan_announcements, prefix_specs
from gtm.engine.capacity import MAX_WEIGHT, capacity_weights
from gtm.engine.demand import smoothed_load
from gtm.engine.fallback import apply_fallbacks
from gtm.engine.health import Verdict, flap_damping, judge_region
from gtm.engine.residency import eligible_regions
from gtm.engine.safety import admitted_drains, drain_hold, drain_weight, paced_weight, step_due
from gtm.engine.staleness import Lapse, judge_lapse
from gtm.engine.vantage import VantageView, vantage_views
from gtm.models.override import Override
from gtm.models.plan import (
    SERVING_STATES,
    Decision,
    DesiredState,
    PoolMember,
    PoolPlan,
    RegionStatus,
    SegmentRoute,
    ServicePlan,
)
from gtm.models.policy import Policy, SafetyRules, Segment, Service
from gtm.models.region import Inventory
from gtm.models.report import FleetReport, VantageReport
from gtm.models.rollout import WeightCap

_Caps = tuple[tuple[str, float, str, bool], ...]
"""(region, fraction, reason) weight caps from a rollout, sorted by region; () for none."""
_PoolKey = tuple[
    str, tuple[str, ...], str | None, str, tuple[tuple[str, int], ...], tuple[str, ...], _Caps, tuple[str, ...]
]
"""(segment, eligible regions, model, routing, static weights, residency pins, caps, spill regions)."""


def plan(
    policy: Policy,
    inventory: Inventory,
    reports: Mapping[str, FleetReport],
    overrides: Mapping[str, Override],
    previous: DesiredState | None,
    now: float,
    *,
    digest: str = "",
    caps: Mapping[str, Mapping[str, WeightCap]] | None = None,
    damping_cleared: Mapping[str, float] | None = None,
    cache: PlanCache | None = None,
    vantage: Mapping[str, VantageReport] | None = None,
) -> DesiredState:
    """Compute the desired routing.

    Args:
        policy: the policy in force.
        inventory: every region.
        reports: latest report per region (stale ones included; age is judged here).
        overrides: operator overrides per region (expired ones are ignored).
        previous: the previous plan, or None on the first run.
        now: the current time, unix seconds.
        digest: the policy's digest (``gtm.config.policy_digest``), recorded in the plan.
        caps: rollout weight caps: service name → region → ``WeightCap``. A capped region
            takes ``fraction`` of the weight it would otherwise get (0 routes it away at once).
        damping_cleared: region → unix seconds an operator cleared its flap damping
            (``gtm undamp``); earlier transitions no longer count and a penalty begun by then
            is lifted (the region then ramps back in planned steps).
        cache: what to reuse between calls (``PlanCache``): a caller that plans again and again
            (the controller's loop, a drain projection, ``policy verify``) passes one and keeps
            it; without one every call compiles the policy afresh. The plan is the same either
            way (a property test holds that); only the time differs.
        vantage: latest vantage report per vantage region: what each region's agent saw of the
            other regions' public endpoints (stale ones included; age is judged here).

    Returns:
        The desired state. Its ``generation`` grows only when the routing changes.
    """
    compiled = cache.compiled(policy, inventory) if cache is not None else _compile(policy, inventory)
    regions = compiled.regions
    timeout = policy.health.report_timeout_s
    lapse = judge_lapse(regions, reports, timeout, policy.safety, now)
    if lapse.mass:
        return _hold(policy, previous, now, digest, lapse)
    if lapse.stale and previous is not None and previous.held:
        # Agents that resume together report again up to a lapse window apart: wait for them.
        since = previous.rejoin_since or now
        if now - since < lapse.window_s:
            return _hold(policy, previous, now, digest, lapse, rejoin_since=since)

    vantage = vantage or {}
    v_lapse = judge_lapse(regions, vantage, timeout, policy.safety, now)
    # Vantage reports that lapsed together say nothing (set aside, said in the reasons); with no
    # vantage report at all (none written, or all expired) the vantage points have no opinion.
    silent = (
        f"vantage points set aside: {v_lapse.describe('vantage reports lapsed')}"
        if v_lapse.mass and vantage else ""
    )
    prev_regions = previous.regions if previous is not None else {}
    recovering = frozenset(r for r, st in prev_regions.items() if st.unreachable)
    views = vantage_views(vantage, regions, policy.health, now, recovering, silent)

    active_overrides = {r: o for r, o in overrides.items() if o.active(now)}
    statuses = _region_statuses(policy, inventory, reports, views, active_overrides, previous, now, regions,
                                damping_cleared or {})
    # A failover drill's override has made its region unhealthy in ``statuses``; from here on the
    # region is planned exactly as an unhealthy region without an override (a failure move).
    active_overrides = {r: o for r, o in active_overrides.items() if o.kind != "failover"}
    drains = {r: o for r, o in active_overrides.items() if o.kind == "drain"}
    admitted = admitted_drains(drains, policy.safety.max_drained)

    pool_keys, services = compiled.pool_keys, compiled.services
    if caps:
        pool_keys, services = _with_caps(compiled, policy, caps)
    prev_pools = previous.pools if previous is not None else {}
    prev_capped = {pid.partition(".")[0]: p for pid, p in prev_pools.items() if "." in pid}
    pools: dict[str, PoolPlan] = {}
    settled = compiled.settled_pools
    region_sigs: dict[tuple[str, str | None], tuple[object, ...]] = {}
    for pool_id, key in pool_keys.items():
        prev_pool = _previous_pool(prev_pools, prev_capped, pool_id)
        sig = _pool_signature(key, statuses, reports, active_overrides, admitted, region_sigs)
        hit = settled.get(pool_id)
        if hit is not None and prev_pool is not None and hit[1] is prev_pool and hit[0] == sig:
            pools[pool_id] = prev_pool  # settled, same inputs: planning it again gives the same
            continue
        pool, is_settled = _plan_pool(pool_id, key, policy, statuses, reports, active_overrides, admitted,
                                      prev_pool, now)
        if is_settled and pool == prev_pool:
            settled[pool_id] = (sig, pool)
        else:
            settled.pop(pool_id, None)
        pools[pool_id] = pool
    announcements, anycast_decisions = plan_announcements(
        compiled.prefixes, services, pools, statuses, previous.announcements if previous is not None else {},
        policy, caps or {}, now,
    )
    services, fallback_decisions = apply_fallbacks(policy, inventory, services, pools)
    endpoints = compiled.endpoints
    state = DesiredState(
        generation=0,
        generated_at=now,
        policy_digest=digest,
        held=False,
        hold_reason="",
        regions=statuses,
        pools=pools,
        services=services,
        endpoints=endpoints,
        decisions=(*_decisions(previous, statuses, pools, now), *fallback_decisions, *anycast_decisions),
        announcements=announcements,
    )
    if (
        previous is not None and not previous.held and previous.policy_digest == digest
        and previous.services is services and previous.endpoints is endpoints
        and previous.announcements is announcements
        and len(previous.pools) == len(pools)
        and all(previous.pools.get(pid) is pool for pid, pool in pools.items())
    ):
        # Every input of the routing digest is the previous plan's own object: same digest.
        state._digest.append(previous.routing_digest())
    generation = _next_generation(previous, state)
    object.__setattr__(state, "generation", generation)
    return state


@dataclass(frozen=True)
class _Compiled:
    """What depends only on policy and inventory: services → pools, endpoints."""

    services: dict[str, ServicePlan]
    pool_keys: dict[str, _PoolKey]
    endpoints: dict[str, tuple[tuple[str, str], ...]]
    regions: list[str]
    prefixes: tuple[PrefixSpec, ...] = ()
    settled_pools: dict[str, tuple[tuple[object, ...], PoolPlan]] = field(default_factory=dict)
    """pool id → (input signature, plan) of pools last planned settled and unchanged; reused
    while the signature holds and the previous plan passes that very pool object back."""


class PlanCache:
    """What ``plan()`` may reuse from one call to the next, held by the caller (no hidden
    module state: two planners never share a cache, and a test can start from an empty one).

    Holds the compiled form of the last few (policy, inventory) pairs (services → pools,
    endpoints), keyed on the identity of the two frozen models (the controller plans with the
    same objects until the policy changes), and per compiled pair the pools last planned settled
    and unchanged. Not thread-safe: one cache per planning loop or thread.

    Args:
        max_entries: how many (policy, inventory) pairs to keep compiled.
    """

    def __init__(self, max_entries: int = 4) -> None:
        self.max_entries = max_entries
        self._entries: list[tuple[Policy, Inventory, _Compiled]] = []

    def compiled(self, policy: Policy, inventory: Inventory) -> _Compiled:
        """The compiled pair, compiled now if it is not held (the oldest then leaves)."""
        for pol, inv, comp in self._entries:
            if pol is policy and inv is inventory:
                return comp
        comp = _compile(policy, inventory)
        self._entries.insert(0, (policy, inventory, comp))
        del self._entries[self.max_entries:]
        return comp

    def __len__(self) -> int:
        return len(self._entries)


def _compile(policy: Policy, inventory: Inventory) -> _Compiled:
    """Services → pool ids for one (policy, inventory) pair; ``PlanCache`` keeps the result
    so steady-state planning costs per pool, not per service. The result is shared between
    plans and must not be mutated (but for its ``settled_pools``)."""
    services: dict[str, ServicePlan] = {}
    pool_keys: dict[str, _PoolKey] = {}
    key_ids: dict[_PoolKey, str] = {}
    eligible_cache: dict[tuple[object, ...], tuple[str, ...]] = {}
    # Services deployed the same way (regions, model, routing, segments) share their routes.
    route_cache: dict[tuple[object, ...], tuple[SegmentRoute, ...]] = {}
    for svc in policy.services:
        static_items = tuple(sorted(svc.static_weights.items())) if svc.routing == "static" else ()
        rkey = (svc.regions, svc.model, svc.routing, static_items, svc.segments)
        cached = route_cache.get(rkey)
        if cached is not None:
            services[svc.fqdn] = ServicePlan(name=svc.name, fqdn=svc.fqdn, zone=svc.zone, ttl=svc.ttl, segments=cached,
                                             dns="dns" in svc.planes)
            continue
        routes = []
        for seg in _ordered_segments(svc):
            pins = seg.residency.jurisdictions if seg.residency else ()
            ekey = (svc.regions, seg.regions, pins)
            eligible = eligible_cache.get(ekey)
            if eligible is None:
                eligible = eligible_cache[ekey] = eligible_regions(svc, seg, inventory)
            static = (
                tuple(sorted((r, svc.static_weights.get(r, 0)) for r in eligible))
                if svc.routing == "static"
                else ()
            )
            spill = (
                tuple(sorted(
                    r for r in (seg.regions if seg.regions is not None else svc.regions)
                    if r in inventory.regions and inventory.regions[r].jurisdiction in seg.spill_to
                ))
                if seg.on_unavailable == "spill"
                else ()
            )
            key: _PoolKey = (seg.name, eligible, svc.model, svc.routing, static, pins, (), spill)
            pool_id = key_ids.get(key)
            if pool_id is None:
                pool_id = key_ids[key] = _pool_id(key)
                pool_keys[pool_id] = key
            routes.append(
                SegmentRoute(
                    segment=seg.name,
                    continents=seg.match.continents,
                    countries=seg.match.countries,
                    pool_id=pool_id,
                    jurisdictions=pins,
                )
            )
        route_cache[rkey] = tuple(routes)
        services[svc.fqdn] = ServicePlan(
            name=svc.name, fqdn=svc.fqdn, zone=svc.zone, ttl=svc.ttl, segments=route_cache[rkey],
            dns="dns" in svc.planes,
        )
    regions = sorted(r for r in policy.region_names if r in inventory.regions)
    endpoints = {
        r: tuple((e.rdtype, e.value) for e in inventory.regions[r].endpoints) for r in regions
    }
    return _Compiled(services=services, pool_keys=pool_keys, endpoints=endpoints, regions=regions,
                     prefixes=prefix_specs(policy, inventory))


def _previous_pool(
    prev_pools: Mapping[str, PoolPlan], prev_capped: Mapping[str, PoolPlan], pool_id: str
) -> PoolPlan | None:
    """The pool's previous plan; a service entering or leaving rollout caps (``<id>.<service>``)
    continues from the shared pool's weights, so pacing carries over."""
    prev = prev_pools.get(pool_id)
    if prev is not None:
        return prev
    base, dot, _svc = pool_id.partition(".")
    return prev_pools.get(base) if dot else prev_capped.get(pool_id)


def _with_caps(
    compiled: _Compiled, policy: Policy, caps: Mapping[str, Mapping[str, WeightCap]]
) -> tuple[dict[str, _PoolKey], dict[str, ServicePlan]]:
    """Pools and services with rollout caps applied: a capped service gets pools of its own."""
    pool_keys = dict(compiled.pool_keys)
    services = dict(compiled.services)
    by_name = {s.name: s for s in policy.services}
    for name, region_caps in caps.items():
        svc = by_name.get(name)
        if svc is None or not region_caps:
            continue
        plan_ = services[svc.fqdn]
        routes = []
        for route in plan_.segments:
            key = compiled.pool_keys[route.pool_id]
            eligible = key[1]
            c: _Caps = tuple(
                (r, region_caps[r].fraction, region_caps[r].reason, region_caps[r].immediate)
                for r in eligible if r in region_caps
            )
            if not c:
                routes.append(route)
                continue
            new_key: _PoolKey = (key[0], key[1], key[2], key[3], key[4], key[5], c, key[7])
            # Stable while the caps move (canary → ramp), so pacing sees the previous weights.
            pool_id = f"{route.pool_id}.{svc.name}"
            pool_keys[pool_id] = new_key
            routes.append(
                SegmentRoute(route.segment, route.continents, route.countries, pool_id, route.jurisdictions)
            )
        services[svc.fqdn] = dataclasses.replace(plan_, segments=tuple(routes))
    used = {r.pool_id for s in services.values() for r in s.segments}
    return {k: v for k, v in pool_keys.items() if k in used}, services


def _hold(
    policy: Policy,
    previous: DesiredState | None,
    now: float,
    digest: str,
    lapse: Lapse,
    rejoin_since: float = 0.0,
) -> DesiredState:
    if rejoin_since:
        reason = (
            f"static stability: regions are reporting again after a mass lapse; waiting up to "
            f"{lapse.window_s:g}s (the lapse window) for the rest: {len(lapse.stale)}/{lapse.total} "
            f"still without a fresh report: {', '.join(lapse.stale)}; holding the last good routing"
        )
    else:
        reason = f"static stability: {lapse.describe()}; holding the last good routing"
    if previous is None:
        return DesiredState(
            generation=0, generated_at=now, policy_digest=digest, held=True,
            hold_reason=reason + " (none yet: publishing nothing, announcing nothing)", regions={}, pools={},
            services={}, endpoints={},
            decisions=(Decision("plan", "hold", reason),), rejoin_since=rejoin_since,
        )
    return DesiredState(
        generation=previous.generation,
        generated_at=now,
        policy_digest=previous.policy_digest,
        held=True,
        hold_reason=reason,
        regions=previous.regions,
        pools=previous.pools,
        services=previous.services,
        endpoints=previous.endpoints,
        decisions=(Decision("plan", "hold", reason),),
        rejoin_since=rejoin_since,
        announcements=previous.announcements,
    )


def _region_statuses(
    policy: Policy,
    inventory: Inventory,
    reports: Mapping[str, FleetReport],
    views: Mapping[str, VantageView],
    overrides: Mapping[str, Override],
    previous: DesiredState | None,
    now: float,
    regions: list[str],
    damping_cleared: Mapping[str, float],
) -> dict[str, RegionStatus]:
    out: dict[str, RegionStatus] = {}
    prev_regions = previous.regions if previous is not None else {}
    for r in regions:
        prev = prev_regions.get(r)
        rep = reports.get(r)
        ov = overrides.get(r)
        verdict = judge_region(r, prev, rep, views[r], policy.health, now)
        if ov is not None and ov.kind == "failover":
            # `gtm drill failover`: the fleet keeps running, the engine acts as if it had failed.
            # Not a confirmed failure: a drill never counts toward flap damping.
            drill = f" {ov.drill}" if ov.drill else ""
            verdict = Verdict("unhealthy", f"failover drill{drill} ({ov.actor}: {ov.reason}); the fleet itself: "
                              f"{verdict.state}", vantage=verdict.vantage)
        state = verdict.state
        rules = policy.safety
        # Only confirmed failures count toward damping: going out for one, or coming back from one.
        counts = verdict.confirmed_failure if not verdict.serving else prev is not None and prev.confirmed_failure
        transitions, damped_until = flap_damping(
            prev, verdict.serving, rules.flap_threshold, rules.flap_window_s, rules.flap_penalty_s, now,
            damping_cleared.get(r, 0.0), counts,
        )
        out[r] = RegionStatus(
            region=r,
            state=state,
            reason=verdict.reason,
            observed_at=rep.observed_at if rep is not None else None,
            seq=rep.seq if rep is not None else -1,
            spare_capacity=rep.spare_capacity if rep is not None else 0.0,
            capacity_unit=rep.capacity_unit if rep is not None else "replicas",
            override=ov.kind if ov is not None else None,
            override_reason=f"{ov.actor}: {ov.reason}" if ov is not None else "",
            since=prev.since if prev is not None and prev.state == state else now,
            load=smoothed_load(prev, rep, inventory.regions[r], rules.demand_smoothing),
            transitions=transitions,
            damped_until=damped_until,
            confirmed_failure=verdict.confirmed_failure,
            unreachable=verdict.unreachable,
            lapsed_at=verdict.lapsed_at,
            grace_until=verdict.grace_until,
            vantage=verdict.vantage,
        )
    return out


def _ordered_segments(svc: Service) -> list[Segment]:
    """Most specific first: country matches, then continent matches, then the catch-all."""
    segs = svc.all_segments
    return sorted(segs, key=lambda s: (0 if s.match.countries else 1 if s.match.continents else 2))


def _pool_id(key: _PoolKey) -> str:
    h = hashlib.blake2b(repr(key).encode(), digest_size=5).hexdigest()
    return f"{key[0]}-{h}"


def _pool_signature(
    key: _PoolKey,
    statuses: Mapping[str, RegionStatus],
    reports: Mapping[str, FleetReport],
    overrides: Mapping[str, Override],
    admitted: set[str],
    memo: dict[tuple[str, str | None], tuple[object, ...]],
) -> tuple[object, ...]:
    """Everything ``_plan_pool`` reads of a settled pool's regions, besides the policy and the
    previous pool: health state and reason, damping, the report's verdict and the model's
    spare capacity, the override. Memoised per (region, model) within one plan."""
    model = key[2]
    parts = []
    for r in key[1]:
        sig = memo.get((r, model))
        if sig is None:
            st = statuses[r]
            rep = reports.get(r)
            sig = memo[(r, model)] = (
                st.state, st.reason, st.damped_until,
                None if rep is None else (rep.healthy, rep.serves(model), rep.spare_for(model)),
                overrides.get(r), r in admitted,
            )
        parts.append(sig)
    return (key, tuple(parts))


def _plan_pool(
    pool_id: str,
    key: _PoolKey,
    policy: Policy,
    statuses: Mapping[str, RegionStatus],
    reports: Mapping[str, FleetReport],
    overrides: Mapping[str, Override],
    admitted: set[str],
    prev_pool: PoolPlan | None,
    now: float,
) -> tuple[PoolPlan, bool]:
    """One pool's plan, and whether it is *settled*: every member at its target by rules that
    do not depend on the clock (no override, rollout cap, flap damping, failed-check hold or
    pending step, and the pool in normal mode). A settled pool that equals its previous plan
    stays the same until one of its inputs changes (``_pool_signature``)."""
    segment, eligible, model, routing, static, pins, caps, spill = key
    cap_of = {r: (f, why, now_) for r, f, why, now_ in caps}
    rules = policy.safety
    prev_members = {m.region: m for m in prev_pool.members} if prev_pool is not None else {}
    settled = not caps and not any(r in overrides for r in eligible)

    available: list[str] = []
    out_reason: dict[str, str] = {}
    for r in eligible:
        st = statuses[r]
        rep = reports.get(r)
        if st.state not in SERVING_STATES:
            out_reason[r] = f"{st.state}: {st.reason}"
        elif st.damped_until > now:
            settled = False
            out_reason[r] = (
                f"flap damping: {len(st.transitions)} transitions within {rules.flap_window_s:g}s; "
                f"out for {st.damped_until - now:.0f}s more"
            )
        elif rep is not None and rep.healthy and not rep.serves(model):
            out_reason[r] = f"no healthy replica of model {model!r} reported"
        else:
            available.append(r)

    if routing == "static":
        weights = {r: w for r, w in static if r in available and w > 0}
        for r, w in static:
            if r in available and w == 0:
                out_reason[r] = "static weight 0"
        available = [r for r in available if r in weights]
        basis = "static weight"
    else:
        spare = {r: reports[r].spare_for(model) if r in reports else 0.0 for r in available}
        # A drained region's target is never used (it steps down from its previous weight),
        # and its spare capacity grows as traffic leaves it: keep it out of the normalisation,
        # or it would shrink every other region's weight and win back traffic share.
        # The same holds for a cordoned region, whose weight may only stay or fall.
        drained = [r for r in available if r in overrides and overrides[r].kind == "drain"]
        cordoned = [r for r in available if r in overrides and overrides[r].kind == "cordon"]
        free = [r for r in available if r not in overrides]
        top_free = max((spare[r] for r in free), default=0.0)
        weights = {
            **capacity_weights(spare, free),
            **dict.fromkeys(drained, 0),
            # On the free regions' scale, then capped at the previous weight below.
            **{
                r: MAX_WEIGHT if top_free <= 0 else max(1, round(MAX_WEIGHT * min(1.0, spare[r] / top_free)))
                for r in cordoned
            },
        }
        basis = "spare capacity"

    carried = _carried_weights(weights, prev_members, reports, overrides, cap_of, rules, now)
    members: list[PoolMember] = []
    for r in eligible:
        prev = prev_members.get(r)
        ov = overrides.get(r)
        st = statuses[r]
        if r not in weights and st.state == "unknown" and st.grace_until > now and st.damped_until <= now and not (
            ov is not None and ov.kind == "drain"
        ):
            # Unknown is not unhealthy: its agent is silent but the vantage quorum reaches it.
            w = prev.weight if prev is not None else 0
            why, settled = f"kept at weight {w} (unknown, in grace): {st.reason}", False
        elif r not in weights:
            w, why = 0, out_reason.get(r, "not available")
            if prev is not None and prev.weight > 0:
                why = f"failover: {why}"
        elif ov is not None and ov.kind == "drain" and r not in admitted:
            w = prev.weight if prev is not None else 0
            why = (
                f"drain by {ov.actor} held: max_drained {rules.max_drained} regions already draining; "
                f"weight kept at {w}"
            )
        elif ov is not None and ov.kind == "drain":
            held = None
            if not ov.force and prev is not None and prev.weight > 0:
                held = _drain_hold(r, eligible, carried, prev_members, overrides, admitted, statuses, rules)
            if held is not None:
                w, why = prev.weight, f"{held} (pool {pool_id}, segment {segment})"  # type: ignore[union-attr]
            else:
                w = drain_weight(prev, rules, now)
                forced = " [forced]" if ov.force else ""
                why = f"drained by {ov.actor}{forced} ({ov.reason}): weight {prev.weight if prev else 0}→{w}"
        elif prev is not None and r in reports and not reports[r].healthy:
            # A failed check below `fall`: hysteresis keeps the region where it was; only
            # `fall` consecutive failures (state unhealthy) take it out.
            w = prev.weight
            why = f"holding weight {w}: {statuses[r].reason}"
            settled = False
        else:
            target = weights[r]
            capped = cap_of.get(r)
            if capped is not None:
                w, why = _capped_weight(r, capped, target, prev, eligible, carried, cap_of, overrides,
                                        statuses, rules, now, pool_id, segment)
                changed_at = now if prev is None or prev.weight != w else prev.changed_at
                members.append(PoolMember(region=r, weight=w, reason=why, changed_at=changed_at))
                continue
            w = paced_weight(prev, target, rules, now)
            if w != target and not (w > 0 and target > 0 and abs(target - w) < rules.weight_deadband):
                settled = False  # a step is pending: it depends on the clock
            if ov is not None and ov.kind == "cordon":
                w = min(w, prev.weight if prev is not None else 0)
                why = f"cordoned by {ov.actor} ({ov.reason}): weight held at {w}"
            elif prev is not None and w != target and w > prev.weight:
                why = (
                    f"ramping up {prev.weight}→{w} toward {target} "
                    f"({basis}, step {rules.planned_step}/{rules.step_interval_s:g}s)"
                )
            elif prev is not None and w != target:
                why = f"holding {w} ({basis} target {target} within deadband {rules.weight_deadband})"
            else:
                why = f"{statuses[r].state}; {basis} → weight {w}"
        changed_at = now if prev is None or prev.weight != w else prev.changed_at
        members.append(PoolMember(region=r, weight=w, reason=why, changed_at=changed_at))

    if any(m.weight > 0 for m in members):
        n = sum(1 for m in members if m.weight > 0)
        return PoolPlan(pool_id, segment, tuple(members), f"{n}/{len(members)} regions serving"), settled
    all_drained = all(r in overrides and overrides[r].kind == "drain" for r in eligible)
    if pins and not all_drained:
        pool = _pinned_unavailable(pool_id, segment, pins, spill, members, statuses, reports, model, overrides, now)
        return pool, False
    return _no_region_serves(pool_id, segment, eligible, members, prev_pool, policy, overrides, now), False


def _capped_weight(
    region: str,
    capped: tuple[float, str, bool],
    normal: int,
    prev: PoolMember | None,
    eligible: tuple[str, ...],
    carried: Mapping[str, int],
    cap_of: Mapping[str, tuple[float, str, bool]],
    overrides: Mapping[str, Override],
    statuses: Mapping[str, RegionStatus],
    rules: SafetyRules,
    now: float,
    pool_id: str,
    segment: str,
) -> tuple[int, str]:
    """A rollout-capped region's weight.

    Rollback and abort caps are failure moves: at once. Every other cap is a planned move:
    paced by ``planned_step``; a route-away (deploy drain) is held, with the numbers, while the
    pool's other serving regions lack headroom or fall under ``min_healthy_regions``; and a
    region held at 0 for a deploy is let back in when the pool would otherwise have too few
    serving regions (a failure elsewhere must not leave the segment dark for a rollout).
    """
    fraction, cap_reason, immediate = capped
    target = 0 if fraction <= 0 else max(1, round(normal * fraction))
    share = f"{fraction:.0%} of {normal}"
    if immediate:
        return 0 if target == 0 else paced_weight(prev, target, rules, now), f"{cap_reason}: weight {target} ({share})"
    others = [
        r for r in eligible
        if r != region and carried.get(r, 0) > 0
        and not (r in overrides and overrides[r].kind == "drain")
        and not (r in cap_of and cap_of[r][0] <= 0)
    ]
    if target == 0:
        p = prev.weight if prev is not None else 0
        if len(others) < rules.min_healthy_regions:
            w = paced_weight(prev, normal, rules, now)
            return w, (
                f"{cap_reason} LIFTED: only {len(others)} other serving region(s) in pool {pool_id} "
                f"(segment {segment}) < min_healthy_regions {rules.min_healthy_regions}; serving at weight {w}"
            )
        if p == 0:
            return 0, f"{cap_reason}: weight 0"
        units = {statuses[r].capacity_unit for r in (region, *others)}
        held = drain_hold(region, len(others), statuses[region].load,
                          sum(statuses[r].spare_capacity for r in others),
                          units.pop() if len(units) == 1 else None, rules)
        if held is not None:
            return p, f"{cap_reason}: {held} (pool {pool_id}, segment {segment})"
        w = drain_weight(prev, rules, now)
        return w, f"{cap_reason}: stepping {p}→{w}"
    if prev is not None and target < prev.weight:
        w = max(target, prev.weight - rules.planned_step) if step_due(prev, rules, now) else prev.weight
    else:
        w = paced_weight(prev, target, rules, now)
    return w, f"{cap_reason}: weight {w} ({share})"


def _carried_weights(
    weights: Mapping[str, int],
    prev_members: Mapping[str, PoolMember],
    reports: Mapping[str, FleetReport],
    overrides: Mapping[str, Override],
    cap_of: Mapping[str, tuple[float, str, bool]],
    rules: SafetyRules,
    now: float,
) -> dict[str, int]:
    """The weight each available region other than a drained one will carry in this plan.

    Drain and rollout holds judge whether the *other* regions can take the traffic, so they
    must count what those regions will actually serve, not their capacity target: a region
    held by hysteresis after a failed check keeps its previous weight (0 stays 0), a cordoned
    one never rises, a rising one only by ``planned_step`` once due, and a rollout capped to 0
    serves nothing. Drained regions are 0 here; the drain ordering accounts for them.

    Returns:
        region -> weight 0..255.
    """
    out: dict[str, int] = {}
    for r, target in weights.items():
        prev = prev_members.get(r)
        ov = overrides.get(r)
        if ov is not None and ov.kind == "drain":
            out[r] = 0
        elif prev is not None and r in reports and not reports[r].healthy:
            out[r] = prev.weight
        elif r in cap_of and cap_of[r][0] <= 0:
            out[r] = 0
        else:
            w = paced_weight(prev, target, rules, now)
            if ov is not None and ov.kind == "cordon":
                w = min(w, prev.weight if prev is not None else 0)
            out[r] = w
    return out


def _drain_hold(
    region: str,
    eligible: tuple[str, ...],
    carried: Mapping[str, int],
    prev_members: Mapping[str, PoolMember],
    overrides: Mapping[str, Override],
    admitted: set[str],
    statuses: Mapping[str, RegionStatus],
    rules: SafetyRules,
) -> str | None:
    # Drains go in order (oldest first): a region counts as still serving for this drain
    # unless its own drain comes first, so two drains in one pool never block each other.
    def first(o: Override) -> tuple[float, str]:
        return (o.since, o.region)

    mine = first(overrides[region])
    def draining(r: str) -> bool:
        return r in overrides and overrides[r].kind == "drain" and r in admitted

    def still_serving(r: str) -> bool:
        if draining(r):
            prev = prev_members.get(r)
            return first(overrides[r]) > mine and prev is not None and prev.weight > 0
        return carried[r] > 0

    others = [r for r in eligible if r != region and r in carried and still_serving(r)]
    units = {statuses[r].capacity_unit for r in (region, *others)}
    unit = units.pop() if len(units) == 1 else None
    spare = sum(statuses[r].spare_capacity for r in others)
    return drain_hold(region, len(others), statuses[region].load, spare, unit, rules)


def _pinned_unavailable(
    pool_id: str,
    segment: str,
    pins: tuple[str, ...],
    spill: tuple[str, ...],
    members: list[PoolMember],
    statuses: Mapping[str, RegionStatus],
    reports: Mapping[str, FleetReport],
    model: str | None,
    overrides: Mapping[str, Override],
    now: float,
) -> PoolPlan:
    """A residency-pinned segment with no eligible region: ``on_unavailable`` decides.

    ``fail-closed``: explicitly dark. ``spill``: the spill regions that can serve, by spare
    capacity, said loudly. Never a silent spill, never fail-open across the pin.
    """
    why = "; ".join(f"{m.region}: {m.reason}" for m in members) or "no eligible region"
    if spill:
        serving = [
            r for r in spill
            if statuses[r].state in SERVING_STATES and statuses[r].damped_until <= now
            and not (r in overrides and overrides[r].kind == "drain")
            and (r not in reports or not reports[r].healthy or reports[r].serves(model))
        ]
        if serving:
            spare = {r: reports[r].spare_for(model) if r in reports else 0.0 for r in serving}
            weights = capacity_weights(spare, serving)
            spilled = tuple(
                PoolMember(r, weights[r], f"SPILL from {'/'.join(pins)} (on_unavailable: spill)", now)
                for r in serving
            )
            return PoolPlan(
                pool_id, segment, (*members, *spilled),
                f"SPILL: no {'/'.join(pins)} region can serve ({why}); spilling to "
                f"{', '.join(serving)} as the policy allows (on_unavailable: spill)",
                mode="spill",
            )
    return PoolPlan(
        pool_id, segment, tuple(members),
        f"DARK (fail-closed): no {'/'.join(pins)} region can serve and residency forbids spilling ({why})",
        mode="dark",
    )


def _no_region_serves(
    pool_id: str,
    segment: str,
    eligible: tuple[str, ...],
    members: list[PoolMember],
    prev_pool: PoolPlan | None,
    policy: Policy,
    overrides: Mapping[str, Override],
    now: float,
) -> PoolPlan:
    rules = policy.safety
    drained = [r for r in eligible if r in overrides and overrides[r].kind == "drain"]
    if eligible and len(drained) == len(eligible):
        return PoolPlan(
            pool_id, segment, tuple(members),
            f"DARK: every eligible region is drained ({', '.join(drained)})", mode="dark",
        )
    if rules.on_all_unhealthy == "fail-static" and prev_pool is not None and not prev_pool.dark:
        prev = {m.region: m for m in prev_pool.members}
        held = []
        for m in members:
            p = prev.get(m.region)
            if p is None:
                held.append(m)
            elif m.region in drained:
                w = drain_weight(p, rules, now)
                # changed_at moves only with the weight, or the next step never comes due.
                held.append(PoolMember(m.region, w, m.reason, now if w != p.weight else p.changed_at))
            else:
                held.append(PoolMember(m.region, p.weight, f"fail-static hold; {m.reason}", p.changed_at))
        if any(h.weight > 0 for h in held):
            return PoolPlan(
                pool_id, segment, tuple(held),
                f"FAIL-STATIC: no eligible region can serve; holding the last good pool "
                f"(on_all_unhealthy: fail-static) over {len(eligible)} regions",
                mode="fail-static",
            )
    if rules.on_all_unhealthy == "fail-open":
        prev_w = {m.region: m.weight for m in prev_pool.members} if prev_pool is not None else {}
        cordoned = {r for r in eligible if r in overrides and overrides[r].kind == "cordon"}

        def _open(m: PoolMember) -> PoolMember:
            if m.region in drained:
                return m
            if m.region in cordoned:  # a cordon never gains weight, even failing open
                w = min(MAX_WEIGHT, prev_w.get(m.region, 0))
                return PoolMember(m.region, w, f"fail-open, cordoned: held at {w}; {m.reason}", now)
            return PoolMember(m.region, MAX_WEIGHT, f"fail-open; {m.reason}", now)

        opened = tuple(_open(m) for m in members)
        if any(m.weight > 0 for m in opened):
            return PoolPlan(
                pool_id, segment, opened,
                "FAIL-OPEN: no eligible region is healthy; serving all non-drained eligible "
                "regions equally (on_all_unhealthy: fail-open)",
                mode="fail-open",
            )
    why = "; ".join(f"{m.region}: {m.reason}" for m in members) or "no eligible region"
    return PoolPlan(pool_id, segment, tuple(members), f"DARK: no eligible region can serve ({why})", mode="dark")


def _decisions(
    previous: DesiredState | None,
    statuses: Mapping[str, RegionStatus],
    pools: Mapping[str, PoolPlan],
    now: float,
) -> list[Decision]:
    out: list[Decision] = []
    prev_regions = previous.regions if previous is not None else {}
    for r, st in statuses.items():
        p = prev_regions.get(r)
        if p is None or p.state != st.state:
            out.append(Decision(f"region {r}", f"{p.state if p else 'new'} → {st.state}", st.reason))
        was_damped = p is not None and p.damped_until > 0
        if st.damped_until > now and (p is None or p.damped_until != st.damped_until):
            out.append(Decision(
                f"region {r}", "flap damping",
                f"{len(st.transitions)} transitions in or out of service within the window: kept out for "
                f"{st.damped_until - now:.0f}s (`gtm undamp {r} --reason ...` lifts it early)",
            ))
        elif was_damped and st.damped_until == 0:
            early = p is not None and p.damped_until > now
            out.append(Decision(f"region {r}", "flap damping over",
                                "lifted by an operator" if early else "penalty served"))
    prev_pools = previous.pools if previous is not None else {}
    prev_capped = {p.partition(".")[0]: pp for p, pp in prev_pools.items() if "." in p}
    for pid, pool in pools.items():
        # A service entering or leaving rollout caps (``<id>.<service>``) continues from the
        # shared pool: its members are not new.
        pp = _previous_pool(prev_pools, prev_capped, pid)
        if pp is pool:
            continue  # reused unchanged
        prev_w = {m.region: m.weight for m in pp.members} if pp is not None else {}
        for m in pool.members:
            before = prev_w.get(m.region)
            if before != m.weight:
                was = before if before is not None else "-"
                out.append(Decision(f"pool {pid}", f"{m.region} weight {was} → {m.weight}", m.reason))
        if (pp is None or pp.mode != pool.mode) and (pool.mode != "normal" or pp is not None):
            out.append(Decision(f"pool {pid}", f"mode {pp.mode if pp else '-'} → {pool.mode}", pool.reason))
    return out


def _next_generation(previous: DesiredState | None, state: DesiredState) -> int:
    if previous is None or previous.generation == 0:
        return 1
    if previous.routing_digest() == state.routing_digest():
        return previous.generation
    return previous.generation + 1
