"""Data residency: which regions a segment may ever route to. A hard constraint."""

from __future__ import annotations

from gtm.models.policy import Segment, Service
from gtm.models.region import Inventory


def eligible_regions(service: Service, segment: Segment, inventory: Inventory) -> tuple[str, ...]:
    """Regions that may carry weight for ``segment`` of ``service``, sorted by name.

    A region outside the segment's residency jurisdictions is never eligible, whatever
    fails; a region missing from the inventory is never eligible either.
    """
    regions = inventory.regions
    pool = segment.regions if segment.regions is not None else service.regions
    if segment.residency is None:
        return tuple(sorted(r for r in pool if r in regions))
    allowed = segment.residency.jurisdictions
    return tuple(sorted(r for r in pool if r in regions and regions[r].jurisdiction in allowed))
