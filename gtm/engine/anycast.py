"""Anycast announcements, derived from the same pool plan as the DNS weights (pure).

A service (or one of its segments) names an anycast prefix (``services[].anycast.prefix`` or
``segments[].anycast.prefix``); the service's prefix serves its catch-all segment. For each
prefix, one ``Announcement`` per region that may announce it:

- **Who may announce**: the regions of the segment's pool that have a ``bgp`` side in the
  inventory. The pool's regions are already filtered by the segment's residency pin
  (``gtm.engine.residency``), so a prefix serving a pinned segment is only ever announced from
  regions in its jurisdictions, whatever fails. Anycast never spills: a pool's spill members
  are not pool regions.
- **Announce or withdraw**: a region with weight > 0 in the pool announces; weight 0 withdraws,
  with the pool member's reason (failover, drained, cordoned, rolled back, flap damping ...).
  Because the weights are the pool's, planned moves (drain, undrain, ramp back, rollout) are
  paced by the same safety rules as DNS, and failures act at once.
- **Preference from the share**: with ``r = weight / largest weight among the announcing
  regions`` (so one region always has full preference):

  ====================  ==================  ====================
  ratio ``r``           AS-path prepends    MED
  ====================  ==================  ====================
  r ≥ 0.75              0                   round(100 × (1 − r))
  0.4 ≤ r < 0.75        1                   (0 at full share,
  0.15 ≤ r < 0.4        2                   up to 100)
  r < 0.15              3
  ====================  ==================  ====================

  A region ramping back, a canary or a capacity-reduced region is announced less preferred;
  a draining region grows prepends as its weight steps down, then withdraws. A drained or
  cordoned region never gains preference (prepends and MED never fall while the override
  stands), as it never gains weight.
- **Planned or not**: a withdrawal is ``planned`` (the agent announces GRACEFUL_SHUTDOWN first
  and holds it) when the region itself can serve (healthy or degraded, not flap-damped) and is
  out by intent: a drain or cordon override, a rollout cap that is not a rollback/abort, or a
  static weight of 0. A failure (unhealthy, unknown, damped, rollback) withdraws at once.
- **Dark as DNS is dark**: when the pool is dark (no eligible region can serve; a pinned
  segment fails closed) the prefix is withdrawn everywhere, with the pool's reason; when a
  pinned pool spills, the prefix is withdrawn everywhere too (anycast never spills).
- **Never withdrawn everywhere while a region can serve**: when no region that may announce
  the prefix has weight > 0 but the pool still serves (only through regions without a BGP
  side) and not all of them are drained, ``safety.on_all_unhealthy`` decides as for DNS:
  ``fail-static`` keeps the previous announcements (drained regions still withdraw; with
  nothing to keep the prefix is withdrawn, said loudly); ``fail-open`` announces from every
  non-drained region that may announce it, at full preference (a cordoned one keeps its
  previous action). When the pool itself fails static or open, its held or opened weights
  drive the announcements like any others.
- ``changed_at`` carries over while the action and preference are unchanged. A held plan
  (static stability) keeps the previous announcements (``gtm.engine.planner``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from gtm.engine.residency import eligible_regions
from gtm.models.plan import SERVING_STATES, Announcement, Decision, PoolMember, PoolPlan, RegionStatus, ServicePlan
from gtm.models.policy import Policy
from gtm.models.region import Inventory
from gtm.models.rollout import WeightCap

PREPEND_STEPS: tuple[tuple[float, int], ...] = ((0.75, 0), (0.4, 1), (0.15, 2))
"""(lowest ratio weight / largest weight, AS-path prepends) from full preference down."""
MAX_PREPEND = 3
"""Prepends below the last step of ``PREPEND_STEPS``."""


@dataclass(frozen=True, slots=True)
class PrefixSpec:
    """One anycast prefix and the segment it serves.

    Attributes:
        prefix: the prefix (CIDR).
        service: the service's name.
        fqdn: the service's fqdn (its key in ``DesiredState.services``).
        segment: the segment whose pool drives the announcements.
        jurisdictions: the segment's residency pin, () if none.
        eligible: the regions that may announce it: the segment's eligible regions (residency
            applied) that have a ``bgp`` side, sorted.
        static_zero: regions the policy gives a static weight of 0 (a planned withdrawal).
    """

    prefix: str
    service: str
    fqdn: str
    segment: str
    jurisdictions: tuple[str, ...]
    eligible: tuple[str, ...]
    static_zero: frozenset[str] = frozenset()


def prefix_specs(policy: Policy, inventory: Inventory) -> tuple[PrefixSpec, ...]:
    """Every anycast prefix of the policy, sorted by network."""
    out = []
    for svc in policy.services:
        zero = frozenset(r for r, w in svc.static_weights.items() if w == 0) if svc.routing == "static" else frozenset()
        for prefix, seg in svc.prefix_segments():
            regions = eligible_regions(svc, seg, inventory)
            out.append(PrefixSpec(
                prefix=prefix, service=svc.name, fqdn=svc.fqdn, segment=seg.name,
                jurisdictions=seg.residency.jurisdictions if seg.residency is not None else (),
                eligible=tuple(r for r in regions if inventory.regions[r].bgp is not None),
                static_zero=zero,
            ))
    return tuple(sorted(out, key=lambda p: _net_key(p.prefix)))


def _net_key(prefix: str) -> tuple[int, int, int]:
    net = ipaddress.ip_network(prefix)
    return (net.version, int(net.network_address), net.prefixlen)


def preference(weight: int, max_weight: int) -> tuple[int, int]:
    """``(AS-path prepends, MED)`` for a region announcing at ``weight`` when the largest
    weight among the prefix's announcing regions is ``max_weight`` (both 0-255, weight > 0);
    the mapping is in the module docstring."""
    r = min(1.0, weight / max_weight) if max_weight > 0 else 1.0
    prepend = next((p for low, p in PREPEND_STEPS if r >= low), MAX_PREPEND)
    return prepend, round(100 * (1 - r))


def plan_announcements(
    specs: tuple[PrefixSpec, ...],
    services: Mapping[str, ServicePlan],
    pools: Mapping[str, PoolPlan],
    statuses: Mapping[str, RegionStatus],
    previous: dict[str, tuple[Announcement, ...]],
    policy: Policy,
    caps: Mapping[str, Mapping[str, WeightCap]],
    now: float,
) -> tuple[dict[str, tuple[Announcement, ...]], list[Decision]]:
    """The announcements of every prefix, and a ``Decision`` per change from ``previous``.

    Args:
        specs: ``prefix_specs(policy, inventory)``.
        services: the services' routes to their own pools (rollout caps applied, before
            fallbacks: anycast does not fall back to another service's regions).
        pools: this plan's pools.
        statuses: this plan's region statuses.
        previous: the previous plan's announcements ({} for none).
        policy: the policy (``safety.on_all_unhealthy``).
        caps: rollout weight caps by service name and region.
        now: unix seconds.

    Returns:
        ``(announcements by prefix, decisions)``. When nothing changed at all, the very
        ``previous`` mapping is returned, so callers can tell by identity.
    """
    out: dict[str, tuple[Announcement, ...]] = {}
    decisions: list[Decision] = []
    for spec in specs:
        if not spec.eligible:
            continue  # `gtm policy validate` refuses this; nothing can announce it
        pool = _pool_of(spec, services, pools)
        prev = {a.region: a for a in previous.get(spec.prefix, ())}
        anns = _prefix(spec, pool, statuses, prev, policy, caps.get(spec.service, {}), now)
        out[spec.prefix] = anns
        decisions.extend(_changes(spec.prefix, prev, anns))
    if out.keys() == previous.keys() and all(out[p] == previous[p] for p in out):
        return previous, decisions
    return out, decisions


def _pool_of(spec: PrefixSpec, services: Mapping[str, ServicePlan], pools: Mapping[str, PoolPlan]) -> PoolPlan | None:
    svc = services.get(spec.fqdn)
    if svc is None:
        return None
    for route in svc.segments:
        if route.segment == spec.segment:
            return pools.get(route.pool_id)
    return None


def _prefix(
    spec: PrefixSpec,
    pool: PoolPlan | None,
    statuses: Mapping[str, RegionStatus],
    prev: Mapping[str, Announcement],
    policy: Policy,
    caps: Mapping[str, WeightCap],
    now: float,
) -> tuple[Announcement, ...]:
    members = {m.region: m for m in pool.members} if pool is not None else {}
    weights = {r: members[r].weight if r in members else 0 for r in spec.eligible}
    top = max(weights.values())
    total = sum(weights.values())
    mode = f" (pool {pool.mode})" if pool is not None and pool.mode != "normal" else ""
    if top > 0:
        anns = []
        for r in spec.eligible:
            w = weights[r]
            why = members[r].reason if r in members else "not a member of the segment's pool"
            if w > 0:
                prepend, med = preference(w, top)
                overridden = statuses[r].override is not None
                a = _ann(spec, r, "announce", prev, now, prepend=prepend, med=med, share=w / total,
                         overridden=overridden, reason="")
                kept = (a.prepend, a.med) != (prepend, med)
                held = " (held: an overridden region never gains preference)" if kept else ""
                anns.append(dataclasses.replace(
                    a, reason=f"weight {w} of {top}{mode} → prepend {a.prepend}, MED {a.med}{held}; {why}"))
            else:
                anns.append(_ann(spec, r, "withdraw", prev, now, planned=_planned(spec, r, statuses, caps, now),
                                 reason=f"weight 0: {why}"))
        return tuple(anns)
    if pool is not None and pool.mode in ("dark", "spill"):
        # As DNS: a dark pool leaves the prefix dark; anycast never spills out of a pin.
        head = "withdrawn everywhere: " + ("anycast never spills; " if pool.mode == "spill" else "") + pool.reason
        return tuple(
            _ann(spec, r, "withdraw", prev, now, planned=_planned(spec, r, statuses, caps, now),
                 reason=f"{head}; {r}: {members[r].reason if r in members else 'not a member'}")
            for r in spec.eligible
        )
    return _none_serves(spec, members, statuses, prev, policy, caps, now)


def _none_serves(
    spec: PrefixSpec,
    members: Mapping[str, PoolMember],
    statuses: Mapping[str, RegionStatus],
    prev: Mapping[str, Announcement],
    policy: Policy,
    caps: Mapping[str, WeightCap],
    now: float,
) -> tuple[Announcement, ...]:
    """No region that may announce the prefix has weight: ``on_all_unhealthy`` decides."""
    def why(r: str) -> str:
        m = members.get(r)
        return m.reason if m is not None else "not a member of the segment's pool"

    drained = {r for r in spec.eligible if statuses[r].override == "drain"}
    cordoned = {r for r in spec.eligible if statuses[r].override == "cordon"}
    mode = policy.safety.on_all_unhealthy
    n = len(spec.eligible)

    def withdraw(r: str, head: str) -> Announcement:
        return _ann(spec, r, "withdraw", prev, now, planned=_planned(spec, r, statuses, caps, now),
                    reason=f"{head}; {why(r)}")

    if len(drained) == n:
        return tuple(withdraw(r, "every region that may announce it is drained") for r in spec.eligible)
    if mode == "fail-static":
        kept = {r: a for r, a in prev.items() if a.action == "announce" and r in spec.eligible and r not in drained}
        if not kept:
            head = ("WITHDRAWN EVERYWHERE: no region that may announce it can serve and there is no "
                    "previous announcement to keep (on_all_unhealthy: fail-static)")
            return tuple(withdraw(r, head) for r in spec.eligible)
        total = sum(a.share for a in kept.values()) or 1.0
        anns = []
        for r in spec.eligible:
            a = kept.get(r)
            if a is None:
                anns.append(withdraw(r, "FAIL-STATIC: not announcing before"))
                continue
            anns.append(_ann(
                spec, r, "announce", prev, now, prepend=a.prepend, med=a.med, share=a.share / total,
                reason=(f"FAIL-STATIC: no region that may announce it can serve; keeping the last "
                        f"announcement (on_all_unhealthy: fail-static) from {len(kept)} of {n} regions; {why(r)}"),
            ))
        return tuple(anns)
    opened = [r for r in spec.eligible if r not in drained
              and (r not in cordoned or (r in prev and prev[r].action == "announce"))]
    anns = []
    for r in spec.eligible:
        if r in opened:
            anns.append(_ann(spec, r, "announce", prev, now, share=1 / len(opened), overridden=r in cordoned, reason=(
                f"FAIL-OPEN: no region that may announce it is healthy; announcing from every non-drained "
                f"region (on_all_unhealthy: fail-open); {why(r)}")))
        else:
            anns.append(withdraw(r, "FAIL-OPEN, but " + ("drained" if r in drained else "cordoned")))
    return tuple(anns)


def _planned(
    spec: PrefixSpec, region: str, statuses: Mapping[str, RegionStatus], caps: Mapping[str, WeightCap], now: float
) -> bool:
    """Whether a withdrawal is a planned move (see the module docstring)."""
    st = statuses[region]
    if st.state not in SERVING_STATES or st.damped_until > now:
        return False
    cap = caps.get(region)
    return st.override is not None or (cap is not None and not cap.immediate) or region in spec.static_zero


def _ann(
    spec: PrefixSpec,
    region: str,
    action: str,
    prev: Mapping[str, Announcement],
    now: float,
    *,
    prepend: int = 0,
    med: int = 0,
    share: float = 0.0,
    planned: bool = False,
    overridden: bool = False,
    reason: str,
) -> Announcement:
    p = prev.get(region)
    if overridden and action == "announce" and p is not None and p.action == "announce":
        # A drained or cordoned region never gains weight, and never gains preference either
        # (its ratio could rise when the other regions' weights fall).
        prepend, med = max(prepend, p.prepend), max(med, p.med)
    same = p is not None and (p.action, p.prepend, p.med) == (action, prepend, med)
    return Announcement(
        prefix=spec.prefix, region=region, action=action,  # type: ignore[arg-type]
        prepend=prepend, med=med, share=round(share, 4), planned=planned and action == "withdraw",
        reason=reason, changed_at=p.changed_at if same and p is not None else now,
    )


def _label(a: Announcement | None) -> str:
    if a is None:
        return "-"
    if a.action == "withdraw":
        return "withdraw (planned)" if a.planned else "withdraw"
    return f"announce (prepend {a.prepend}, MED {a.med})"


def _changes(prefix: str, prev: Mapping[str, Announcement], anns: tuple[Announcement, ...]) -> list[Decision]:
    out = []
    for a in anns:
        p = prev.get(a.region)
        if p is None or (p.action, p.prepend, p.med) != (a.action, a.prepend, a.med):
            out.append(Decision(f"anycast {prefix}", f"{a.region} {_label(p)} → {_label(a)}", a.reason))
    return out
