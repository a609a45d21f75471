"""Colours of a drill's report: one fixed colour per region name, one per health state.

The same region gets the same colour in every report (and in the PNG, the HTML page and the
live view), as long as no two regions of the report hash to the same slot: a collision moves
the later name (in sorted order) to the next free slot, so a report never shows two regions
in one colour. Pure: no matplotlib, colours are ``#rrggbb`` strings.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from gtm.models.drill import DrillReport

REGION_PALETTE: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
    "#17becf", "#bcbd22", "#393b79", "#e7ba52", "#7b4173",
)
"""Region colours, far apart in hue: matplotlib's tab10 without its green, red and grey (which
mean *ok* / *healthy*, *failed* and *unknown* here), then navy, gold and plum."""

UNRESOLVED = "#7f7f7f"
"""The colour of answers that named no known region (``none``, ``other``, unresolved)."""

STATE_COLOURS: dict[str, str] = {
    "healthy": "#2ca02c",
    "degraded": "#ffbf00",
    "unhealthy": "#d62728",
    "unknown": "#9e9e9e",
}
"""Health state → colour (``gtm.models.plan.HealthState``)."""

OK_COLOUR = "#2ca02c"
FAILED_COLOUR = "#d62728"

_NOT_REGIONS = frozenset({"none", "other", "", "?"})


def region_colours(names: Iterable[str]) -> dict[str, str]:
    """A ``#rrggbb`` colour for each name: fixed per name (CRC-32 into ``REGION_PALETTE``),
    distinct within ``names`` while there are no more names than palette slots; ``none`` /
    ``other`` (no region) are grey."""
    out: dict[str, str] = {}
    used: set[int] = set()
    slots = len(REGION_PALETTE)
    for name in sorted(set(names)):
        if name in _NOT_REGIONS:
            out[name] = UNRESOLVED
            continue
        slot = zlib.crc32(name.encode()) % slots
        for step in range(slots):
            if (slot + step) % slots not in used:
                slot = (slot + step) % slots
                break
        used.add(slot)
        out[name] = REGION_PALETTE[slot]
    return out


def state_colour(state: str) -> str:
    """The colour of a health state as a report stores it: ``healthy``, or with the override in
    force appended (``healthy (drain)``); the first word decides. Unknown words are grey."""
    word = state.split(" ", 1)[0].strip().lower()
    return STATE_COLOURS.get(word, STATE_COLOURS["unknown"])


def report_regions(report: DrillReport) -> list[str]:
    """Every region a report names (the drilled one, the answers, the clients' answers, the
    health), sorted; ``none``/``other`` last when present."""
    names = {report.region}
    for s in report.series:
        names.update(s.answer_shares)
        names.update(s.health)
        for shares in s.shares.values():
            names.update(shares)
    return sorted(names, key=lambda n: (n in _NOT_REGIONS, n))


def report_populations(report: DrillReport) -> list[str]:
    """The client populations of a report, sorted."""
    return sorted({p for s in report.series for p in s.shares})


__all__ = [
    "FAILED_COLOUR", "OK_COLOUR", "REGION_PALETTE", "STATE_COLOURS", "UNRESOLVED", "region_colours",
    "report_populations", "report_regions", "state_colour",
]
