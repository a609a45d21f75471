"""Fallback services: when no region of a service can serve a segment, answer that segment with
another service's pool (e.g. a smaller distilled model), inside the same residency pin.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from gtm.models.plan import Decision, PoolPlan, SegmentRoute, ServicePlan
from gtm.models.policy import Policy
from gtm.models.region import Inventory


def apply_fallbacks(
    policy: Policy,
    inventory: Inventory,
    services: dict[str, ServicePlan],
    pools: Mapping[str, PoolPlan],
) -> tuple[dict[str, ServicePlan], list[Decision]]:
    """Re-route segments whose own pool cannot serve to the fallback service's pool.

    A segment is re-routed when its pool is not ``normal`` (dark, held fail-static, fail-open
    or spilled) and the fallback service's pool for the same segment name (else its catch-all
    segment) serves normally with every active region inside the segment's residency pin.

    Returns:
        ``(services, decisions)``: ``services`` is the input dict when nothing changed, else a
        copy with the re-routed services; one loud decision per re-routed segment.
    """
    fallbacks = [s for s in policy.services if s.fallback is not None]
    if not fallbacks:
        return services, []
    by_name = {s.name: s for s in policy.services}
    out = services
    decisions: list[Decision] = []
    for svc in fallbacks:
        plan = services[svc.fqdn]
        fb = services[by_name[svc.fallback].fqdn]  # type: ignore[index]
        routes = list(plan.segments)
        changed = False
        for i, route in enumerate(routes):
            own = pools[route.pool_id]
            if own.mode == "normal":
                continue
            cand = next((r for r in fb.segments if r.segment == route.segment), None) or next(
                (r for r in fb.segments if r.is_default), None
            )
            if cand is None:
                continue
            fb_pool = pools[cand.pool_id]
            if fb_pool.mode != "normal":
                continue
            outside = [
                m.region for m in fb_pool.active
                if route.jurisdictions and inventory.regions[m.region].jurisdiction not in route.jurisdictions
            ]
            if outside:
                decisions.append(Decision(
                    f"service {svc.fqdn}", f"segment {route.segment}: fallback {fb.name} not used",
                    f"its pool would send {'/'.join(route.jurisdictions)}-pinned clients to {', '.join(outside)}",
                ))
                continue
            note = (
                f"FALLBACK: no region of {svc.name} can serve segment {route.segment} ({own.mode}); "
                f"answered by {fb.name}'s pool"
            )
            routes[i] = SegmentRoute(
                route.segment, route.continents, route.countries, fb_pool.pool_id, route.jurisdictions, note
            )
            decisions.append(Decision(f"service {svc.fqdn}", f"segment {route.segment} → fallback {fb.name}", note))
            changed = True
        if changed:
            if out is services:
                out = dict(services)
            out[svc.fqdn] = dataclasses.replace(plan, segments=tuple(routes))
    return out, decisions
