"""Mass staleness, judged over the lapse window (static stability).

When more than ``safety.stale_fraction`` of the regions have no fresh report, the inputs
themselves are suspect (Redis trouble, the agents' network down) and the previous plan is held.

Agents that stop at the same moment do not lapse at the same moment: each last wrote somewhere
within its heartbeat, so their reports time out up to two heartbeats apart (an agent writes at
least every ``interval_s``; agents that stop within one heartbeat of each other last wrote
within ``2 × interval_s``). Judged one instant at a time, the first reports to lapse would be
failed over before "more than half" is reached. So once any report has lapsed, a region whose
report is older than ``report_timeout_s - lapse_window_s`` counts as **lapsing** with it, and
the hold engages when stale + lapsing exceed the fraction. The window is
``safety.lapse_window_s``, by default twice the largest ``interval_s`` of the reports.

The same holds on the way back: agents that resume together report again up to a window apart,
so a hold lasts one lapse window after the first regions report again (``rejoin``), and the
stragglers are judged only then.

The vantage reports are judged the same way: when they lapse together, the vantage points are
set aside rather than let the last ones standing decide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from gtm.models.policy import SafetyRules


class _Heartbeat(Protocol):
    @property
    def observed_at(self) -> float: ...

    @property
    def interval_s(self) -> float: ...


@dataclass(frozen=True, slots=True)
class Lapse:
    """Which regions' reports lapsed, or are lapsing with them, at one instant.

    Attributes:
        total: regions judged.
        stale: regions with no report, or one older than the report timeout.
        lapsing: regions whose fresh report is older than the timeout minus the window,
            counted only when some report is stale (empty otherwise).
        window_s: the lapse window used, seconds.
        fraction: ``safety.stale_fraction``.
    """

    total: int
    stale: tuple[str, ...]
    lapsing: tuple[str, ...]
    window_s: float
    fraction: float

    @property
    def mass(self) -> bool:
        """Some report lapsed and stale + lapsing exceed ``fraction`` of the regions."""
        return bool(self.total and self.stale) and (
            (len(self.stale) + len(self.lapsing)) / self.total > self.fraction
        )

    def describe(self, what: str = "regions have no fresh report") -> str:
        """``3/4 regions have no fresh report (...)``, naming them, with the window when used."""
        lapsing = (
            f" + {len(self.lapsing)} lapsing within the {self.window_s:g}s lapse window "
            f"({', '.join(self.lapsing)})" if self.lapsing else ""
        )
        return (f"{len(self.stale)}/{self.total} {what}{lapsing} "
                f"(> stale_fraction {self.fraction:g}): {', '.join(self.stale)}")


def lapse_window(rules: SafetyRules, reports: Sequence[_Heartbeat]) -> float:
    """The lapse window, seconds: ``rules.lapse_window_s``, else twice the largest
    ``interval_s`` among ``reports`` (0 when there are none)."""
    if rules.lapse_window_s is not None:
        return rules.lapse_window_s
    return 2 * max((r.interval_s for r in reports), default=0.0)


def judge_lapse(
    regions: Sequence[str],
    reports: Mapping[str, _Heartbeat],
    timeout_s: float,
    rules: SafetyRules,
    now: float,
) -> Lapse:
    """Stale and lapsing regions at ``now`` (unix seconds).

    Args:
        regions: the regions judged.
        reports: latest report per region (``FleetReport`` or ``VantageReport``); missing
            means stale.
        timeout_s: a report older than this is stale, seconds.
        rules: ``stale_fraction`` and ``lapse_window_s``.
        now: unix seconds.
    """
    window = lapse_window(rules, [reports[r] for r in regions if r in reports])
    stale: list[str] = []
    young: list[tuple[str, float]] = []
    for r in regions:
        rep = reports.get(r)
        age = None if rep is None else now - rep.observed_at
        if age is None or age > timeout_s:
            stale.append(r)
        else:
            young.append((r, age))
    lapsing = [r for r, age in young if age > timeout_s - window] if stale else []
    return Lapse(len(regions), tuple(stale), tuple(lapsing), window, rules.stale_fraction)
