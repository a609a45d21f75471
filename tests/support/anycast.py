"""Builders for anycast tests: inventories whose regions have a BGP side, services with prefixes."""

from __future__ import annotations

from collections.abc import Iterable

from gtm.models.plan import Announcement, DesiredState
from gtm.models.policy import Anycast, Segment, Service
from gtm.models.region import BgpPeer, BgpSide, Inventory

EU_PREFIX = "198.51.100.0/24"
SERVICE_PREFIX = "203.0.113.0/24"


def bgp_side(index: int) -> BgpSide:
    """Region ``index``'s speaker: ASN 65001+index on 127.0.0.(11+index), one upstream peer."""
    return BgpSide(
        local_asn=65001 + index, local_address=f"127.0.0.{11 + index}", next_hop=f"192.0.2.{10 + index}",
        peers=(BgpPeer(address="127.0.0.1", asn=65000),),
    )


def with_bgp(inventory: Inventory, regions: Iterable[str] | None = None) -> Inventory:
    """The inventory with a BGP side on ``regions`` (default: every region)."""
    chosen = set(inventory.regions if regions is None else regions)
    return Inventory(regions={
        name: r.model_copy(update={"bgp": bgp_side(i)}) if name in chosen else r
        for i, (name, r) in enumerate(sorted(inventory.regions.items()))
    })


def with_anycast(service: Service, prefix: str | None = SERVICE_PREFIX, segment_prefixes: dict[str, str] | None = None,
                 data_planes: tuple[str, ...] | None = None) -> Service:
    """The service with a service-level prefix and/or prefixes on named segments (validated)."""
    segs: list[Segment] = []
    for seg in service.segments:
        p = (segment_prefixes or {}).get(seg.name)
        segs.append(seg.model_copy(update={"anycast": Anycast(prefix=p)}) if p else seg)
    doc = service.model_dump()
    doc["segments"] = [s.model_dump() for s in segs]
    doc["anycast"] = {"prefix": prefix} if prefix else None
    doc["data_planes"] = data_planes
    return Service.model_validate(doc)


def by_region(state: DesiredState, prefix: str) -> dict[str, Announcement]:
    """The plan's announcements of ``prefix`` by region."""
    return {a.region: a for a in state.announcements.get(prefix, ())}


def actions(state: DesiredState, prefix: str) -> dict[str, str]:
    """region → ``announce`` or ``withdraw`` for ``prefix``."""
    return {a.region: a.action for a in state.announcements.get(prefix, ())}
