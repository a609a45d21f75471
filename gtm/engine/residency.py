"""Data residency: which regions a segment may ever route to. A hard constraint."""

from __future__ import annotations

from gtm.models.policy import Segment, Service
from gtm.models.region import Inventory


def eligible_regions(service: Service, segment: Segment, inventory: Inventory) -> tuple[str, ...]:
    """Regions that may carry weight for ``segment`` of ``service``, sorted by name.

    A region outside the segment's residency jurisdictions is never eligible, whatever
    fails; a region missing from the inventory is never eligible either. For a pinned segment
    without its own ``regions:`` (it inherits the service's) leaving the others out is the
    meaning: the EU segment of a global service serves its EU regions. A pinned segment that
    lists an outside region itself is refused by the policy check
    (``gtm.config.loader.cross_check``), so nothing written is dropped silently here.
    """
    regions = inventory.regions
    pool = segment.regions if segment.regions is not None else service.regions
    if segment.residency is None:
        return tuple(sorted(r for r in pool if r in regions))
    allowed = segment.residency.jurisdictions
    return tuple(sorted(r for r in pool if r in regions and regions[r].jurisdiction in allowed))
