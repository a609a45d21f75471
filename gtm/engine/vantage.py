"""Vantage-point quorum: is a region reachable from the other regions?

Each region's agent probes the other regions' public endpoints (the addresses clients are sent
to) and writes what it saw as a ``VantageReport``. For region R, the **vantage points** are the
other regions' *fresh* vantage reports (age ≤ ``health.report_timeout_s``) that hold a check of
R. A vantage point **fails** to reach R when its check has ``consecutive_fail >= fall``; while R
is recovering from being unreachable, a vantage point still counts as failing until its check
has ``consecutive_ok >= rise`` (the same hysteresis as a region's own reports).

- R is **unreachable** when at least ``health.vantage_min`` vantage points have an opinion and
  MORE than ``health.vantage_quorum`` of them fail (default 0.5: a strict majority). The engine
  then fails R over at once, even while R's own agent says healthy.
- R is **reached** when a strict majority of its vantage points do not fail: that is what lets a
  silent region (``unknown``) keep its weight for ``health.unknown_grace_s``.
- With fewer than ``vantage_min`` vantage points, or when the vantage reports lapsed together
  (``gtm.engine.staleness``), the vantage points say nothing either way.

A single vantage point failing is that vantage point's problem (its own uplink, a local
resolver, a firewall), never a failover: with the default quorum and 3 vantage points, 2 must
fail.

**Compared with Route 53.** A Route 53 health check is healthy while more than 18 % of its
checkers report healthy, i.e. it turns unhealthy only when 82 % or more fail. That rule is
tuned for ~15 checkers spread over the internet, where some are always seeing trouble; it
favours availability and is slow to call a failure. gtm has few vantage points (one per other
region, typically 2-5), so it uses a strict majority: stricter in detection (with 4 vantage
points, 3 failing is enough, where Route 53's rule would need all 4), yet never on one vantage
point alone (one of 3 is 33 %, below the quorum), and it needs ``vantage_min`` opinions before
it judges at all. An operator who prefers Route 53's bias sets ``vantage_quorum: 0.8``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gtm.models.policy import HealthThresholds
from gtm.models.report import VantageReport


@dataclass(frozen=True, slots=True)
class VantageView:
    """What the fresh vantage points say of one region.

    Attributes:
        target: the region judged.
        failing: (vantage region, why) of the vantage points that fail to reach it.
        reaching: vantage regions that reach it.
        quorum: the policy's ``vantage_quorum`` (fraction 0..1, strictly exceeded).
        minimum: the policy's ``vantage_min``.
        note: why the vantage points have no say, when the engine set them aside ("" else).
    """

    target: str
    failing: tuple[tuple[str, str], ...] = ()
    reaching: tuple[str, ...] = ()
    quorum: float = 0.5
    minimum: int = 2
    note: str = ""

    @property
    def points(self) -> int:
        """How many vantage points have an opinion."""
        return len(self.failing) + len(self.reaching)

    @property
    def has_opinion(self) -> bool:
        """At least ``minimum`` vantage points have an opinion."""
        return self.points >= self.minimum and self.points > 0

    @property
    def unreachable(self) -> bool:
        """More than ``quorum`` of at least ``minimum`` vantage points fail to reach it."""
        return self.has_opinion and len(self.failing) / self.points > self.quorum

    @property
    def reached(self) -> bool:
        """A strict majority of at least ``minimum`` vantage points reach it."""
        return self.has_opinion and len(self.reaching) / self.points > 0.5

    def describe(self) -> str:
        """One line for reasons and ``gtm status``: counts, the quorum and who fails why."""
        if self.note:
            return self.note
        if not self.has_opinion:
            return (f"no vantage opinion ({self.points} fresh vantage point(s) < vantage_min "
                    f"{self.minimum})")
        fails = ", ".join(f"{v}: {why}" for v, why in self.failing)
        if self.unreachable:
            return (f"unreachable from {len(self.failing)}/{self.points} vantage points "
                    f"(quorum > {self.quorum:.0%}): {fails}")
        if self.failing:
            return (f"{len(self.failing)}/{self.points} vantage points cannot reach it "
                    f"(below quorum > {self.quorum:.0%}, not a failover): {fails}")
        return f"reachable from {self.points}/{self.points} vantage points"


def vantage_views(
    vantage: Mapping[str, VantageReport],
    regions: Iterable[str],
    thresholds: HealthThresholds,
    now: float,
    recovering: frozenset[str] = frozenset(),
    note: str = "",
) -> dict[str, VantageView]:
    """Each region's view from the other regions' fresh vantage reports.

    Args:
        vantage: latest vantage report per vantage region (stale ones included).
        regions: the regions to judge.
        thresholds: ``fall``, ``rise``, ``report_timeout_s`` (seconds), ``vantage_quorum``,
            ``vantage_min``.
        now: unix seconds.
        recovering: regions that were unreachable in the previous plan: a vantage point counts
            as failing them until its check has ``consecutive_ok >= rise``.
        note: when set, the vantage points are set aside (they lapsed together): every view is
            empty and says this.

    Returns:
        region → ``VantageView`` (an empty view for a region no fresh vantage point probes).
    """
    q, m = thresholds.vantage_quorum, thresholds.vantage_min
    out: dict[str, VantageView] = {}
    fresh = (
        {} if note else
        {v: rep for v, rep in sorted(vantage.items())
         if now - rep.observed_at <= thresholds.report_timeout_s}
    )
    for r in regions:
        failing: list[tuple[str, str]] = []
        reaching: list[str] = []
        for v, rep in fresh.items():
            check = rep.checks.get(r)
            if v == r or check is None:
                continue
            if check.consecutive_fail >= thresholds.fall:
                why = check.reason or "probe failed"
                failing.append((v, f"{why} ({check.consecutive_fail} consecutive)"))
            elif r in recovering and not (check.reachable and check.consecutive_ok >= thresholds.rise):
                failing.append((v, f"recovering: {check.consecutive_ok}/{thresholds.rise} good probes"))
            else:
                reaching.append(v)
        out[r] = VantageView(r, tuple(failing), tuple(reaching), q, m, note)
    return out
