"""Demand: how much capacity each region is using, smoothed, in the report's capacity unit.

Load = the measured token rate (unit ``tokens/s``, from the agents' scrapes of the engines'
generation-token counters), or healthy capacity − spare capacity, where healthy capacity is the
healthy replicas (unit ``replicas``) or healthy replicas × the inventory's
``capacity_per_replica``. Smoothed with an EWMA each time a new report (a new ``seq``) arrives, so one
noisy scrape does not swing a headroom decision.
"""

from __future__ import annotations

from gtm.models.plan import RegionStatus
from gtm.models.region import Region
from gtm.models.report import FleetReport


def instant_load(report: FleetReport, region: Region) -> float:
    """Capacity in use right now, in ``report.capacity_unit`` (>= 0).

    In ``tokens/s`` the measured decode rate (the agents' ``tokens_per_s``, summed over models)
    is the demand when reported; otherwise, and in ``replicas``, it is healthy capacity minus
    spare capacity.
    """
    if report.capacity_unit == "tokens/s":
        rates = [m.tokens_per_s for m in report.models.values() if m.tokens_per_s is not None]
        if rates:
            return float(sum(rates))
    healthy = sum(m.replicas_healthy for m in report.models.values())
    per_replica = region.capacity_per_replica if report.capacity_unit == "tokens/s" else None
    capacity = healthy * (per_replica or 1.0)
    return max(0.0, capacity - report.spare_capacity)


def smoothed_load(
    previous: RegionStatus | None, report: FleetReport | None, region: Region, alpha: float
) -> float:
    """EWMA of the region's load: updated once per new report, held otherwise.

    Args:
        previous: the region's previous status (carries the smoothed load and report seq).
        report: the latest report, or None (then the previous load is kept).
        region: the inventory entry (for ``capacity_per_replica``).
        alpha: smoothing factor in (0, 1]; 1 = no smoothing.
    """
    if report is None:
        return previous.load if previous is not None else 0.0
    x = instant_load(report, region)
    if previous is None or previous.seq < 0:
        return x
    if report.seq == previous.seq:
        return previous.load
    return previous.load + alpha * (x - previous.load)
