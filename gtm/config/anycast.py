"""Cross-file checks of anycast: a prefix needs regions with a BGP side to announce it."""

from __future__ import annotations

from gtm.engine.anycast import prefix_specs
from gtm.models.policy import Policy
from gtm.models.region import Inventory


def anycast_reasons(policy: Policy, inventory: Inventory) -> list[str]:
    """One reason per anycast prefix that no region can announce: none of the regions of the
    segment it serves (after the residency pin) has a ``bgp`` side in the inventory."""
    index = {s.name: i for i, s in enumerate(policy.services)}
    reasons = []
    for spec in prefix_specs(policy, inventory):
        if spec.eligible:
            continue
        i = index[spec.service]
        svc = policy.services[i]
        seg_i = next((j for j, s in enumerate(svc.segments) if s.name == spec.segment), None)
        seg = svc.segments[seg_i] if seg_i is not None else None
        where = f"services[{i}]" + (f".segments[{seg_i}]" if seg is not None and seg.anycast else "") + ".anycast"
        pin = f" allowed by its residency pin {list(spec.jurisdictions)}" if spec.jurisdictions else ""
        pool = seg.regions if seg is not None and seg.regions is not None else svc.regions
        listed = [r for r in pool if r in inventory.regions]
        reasons.append(
            f"{where}: service {spec.service!r} announces {spec.prefix} for segment {spec.segment!r}, but none of "
            f"its regions{pin} has a bgp side (regions {listed}); give them one in regions/<name>.yaml "
            "(bgp: {local_asn, local_address, next_hop, peers: [{address, asn}]}) or drop the prefix"
        )
    return reasons
