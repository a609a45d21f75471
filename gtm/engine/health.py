"""Region health with hysteresis (rise/fall), judged from the region's own agent's reports, the
other regions' vantage points and the clock.

The agent counts consecutive good and failed checks; the engine applies the policy's
thresholds to those counts and to its own previous verdict:

- a quorum of the other regions' vantage points cannot reach the region
  (``gtm.engine.vantage``): ``unhealthy`` at once, whatever its own agent says; a confirmed
  failure. One vantage point failing is never a failover (the reason mentions it);
- no report, or one older than ``report_timeout_s``: ``unknown``. Unknown is not unhealthy:
  a region that was serving and that a majority of its vantage points still reach keeps its
  previous weight for ``unknown_grace_s``, counted from when its report lapsed; then, or with
  no vantage opinion, it goes out (unless the mass-staleness rule holds the whole plan:
  ``gtm.engine.staleness``);
- ``consecutive_fail >= fall``: ``unhealthy``; a confirmed failure;
- a failed check below ``fall``: a serving region becomes ``degraded`` (still serving, at its
  previous weight), a region that was not serving (or is seen for the first time) stays out;
- a good check: a serving region stays in; a region that was out comes back only once
  ``consecutive_ok >= rise`` (and the vantage quorum, if it failed the region, is lifted by
  ``rise`` good probes);
- serving but impaired (some replicas down, a degraded GPU): ``degraded``.

Flap damping counts only confirmed failures (going out for one, and coming back from one):
a silent agent, a rejected report or a single failed check never damps a region.

Compared with Route 53 (a check is healthy while more than 18 % of its checkers say so, so
unhealthy only when 82 % or more fail): gtm's default quorum is a strict majority of a few
vantage points, stricter in detection and still safe against one bad vantage point; see
``gtm.engine.vantage``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gtm.engine.vantage import VantageView
from gtm.models.plan import SERVING_STATES, HealthState, RegionStatus
from gtm.models.policy import HealthThresholds
from gtm.models.report import FleetReport


@dataclass(frozen=True, slots=True)
class Verdict:
    """The engine's judgement of one region at one instant.

    Attributes:
        state: health state.
        reason: why, for humans (status, audit).
        confirmed_failure: out of service for a confirmed failure (``fall`` failed checks or
            the vantage quorum), or still out since one.
        unreachable: the vantage quorum cannot reach it.
        lapsed_at: when its report lapsed, unix seconds (0 while fresh).
        grace_until: ``unknown`` but kept at its previous weight until then, unix seconds
            (0 when not granted).
        vantage: the vantage points' view in one line ("" when none probe it).
    """

    state: HealthState
    reason: str
    confirmed_failure: bool = False
    unreachable: bool = False
    lapsed_at: float = 0.0
    grace_until: float = 0.0
    vantage: str = ""

    @property
    def serving(self) -> bool:
        """Takes traffic: healthy, degraded, or unknown within its grace."""
        return self.state in SERVING_STATES or self.grace_until > 0


def is_fresh(report: FleetReport | None, thresholds: HealthThresholds, now: float) -> bool:
    """Whether ``report`` is recent enough to be trusted at ``now`` (unix seconds)."""
    return report is not None and now - report.observed_at <= thresholds.report_timeout_s


def region_health(
    region: str,
    previous: RegionStatus | None,
    report: FleetReport | None,
    thresholds: HealthThresholds,
    now: float,
) -> tuple[HealthState, str]:
    """The region's health state and the reason for it.

    Args:
        region: region name (for messages).
        previous: the region's status in the previous plan, or None on first sight.
        report: the latest report, or None.
        thresholds: the policy's rise/fall and report timeout.
        now: unix seconds.

    Returns:
        ``(state, reason)``.
    """
    if report is None:
        return "unknown", "no report from the region's agent (heartbeat lapsed or agent down)"
    age = now - report.observed_at
    if age > thresholds.report_timeout_s:
        return "unknown", (
            f"last report is {age:.1f}s old (> report_timeout_s {thresholds.report_timeout_s:g}s)"
        )
    # First sight (no previous plan) is judged like a region that was out: it must prove
    # itself with `rise` good checks, and a failing check keeps it out.
    was_serving = previous is not None and previous.serving
    if not report.healthy:
        why = report.reason or "check failed"
        if report.consecutive_fail >= thresholds.fall:
            return "unhealthy", (
                f"{report.consecutive_fail} consecutive failed checks (fall {thresholds.fall}): {why}"
            )
        if was_serving:
            return "degraded", (
                f"failed check {report.consecutive_fail}/{thresholds.fall} (still serving): {why}"
            )
        return "unhealthy", f"still failing: {why}"
    if not was_serving and report.consecutive_ok < thresholds.rise:
        return "unhealthy", (
            f"recovering: {report.consecutive_ok}/{thresholds.rise} good checks (rise {thresholds.rise})"
        )
    impaired = _impairment(report)
    if impaired:
        return "degraded", impaired
    return "healthy", f"{_replicas(report)} healthy; spare {report.spare_capacity:.2f} {report.capacity_unit}"


def judge_region(
    region: str,
    previous: RegionStatus | None,
    report: FleetReport | None,
    view: VantageView,
    thresholds: HealthThresholds,
    now: float,
) -> Verdict:
    """The region's health from its own reports and its vantage points (module docstring).

    Args:
        region: region name (for messages).
        previous: the region's status in the previous plan, or None on first sight.
        report: the latest report (stale included), or None.
        view: what the other regions' fresh vantage points saw of it.
        thresholds: rise/fall, report timeout and grace (seconds), vantage quorum.
        now: unix seconds.
    """
    seen = "" if not view.points and not view.note else view.describe()
    was_out_confirmed = previous is not None and not previous.serving and previous.confirmed_failure
    fresh = report if is_fresh(report, thresholds, now) else None
    if view.unreachable:
        own = ("its agent is silent" if fresh is None else
               "its own agent reports healthy" if fresh.healthy else "its own agent reports failing checks")
        return Verdict("unhealthy", f"{seen}; {own}", confirmed_failure=True, unreachable=True,
                       lapsed_at=_lapsed_at(previous, report, thresholds, now), vantage=seen)
    if fresh is None:
        return _unknown(region, previous, report, view, seen, was_out_confirmed, thresholds, now)
    state, reason = region_health(region, previous, fresh, thresholds, now)
    confirmed = state == "unhealthy" and (
        fresh.consecutive_fail >= thresholds.fall or was_out_confirmed
    )
    if seen and (view.failing or view.note):
        reason = f"{reason}; {seen}"
    return Verdict(state, reason, confirmed_failure=confirmed, vantage=seen)


def _unknown(
    region: str,
    previous: RegionStatus | None,
    report: FleetReport | None,
    view: VantageView,
    seen: str,
    was_out_confirmed: bool,
    thresholds: HealthThresholds,
    now: float,
) -> Verdict:
    """A silent region: kept at its weight for the grace while the vantage quorum reaches it."""
    _state, why = region_health(region, previous, report, thresholds, now)
    lapsed = _lapsed_at(previous, report, thresholds, now)
    was_serving = previous is not None and previous.serving
    grace = thresholds.unknown_grace_s
    until = lapsed + grace
    if was_serving and view.reached and now < until:
        return Verdict("unknown", (
            f"{why}; {seen}: keeping its weight for {until - now:.0f}s more "
            f"(unknown_grace_s {grace:g}s from the lapse)"
        ), lapsed_at=lapsed, grace_until=until, vantage=seen)
    if not was_serving:
        tail = "it was not serving: stays out"
    elif view.reached:
        tail = f"{seen}, but unknown_grace_s {grace:g}s is over: out"
    elif view.has_opinion:
        tail = f"{seen}: no majority reaches it, out"
    else:
        tail = f"{view.describe()}: out"
    return Verdict("unknown", f"{why}; {tail}", confirmed_failure=was_out_confirmed, lapsed_at=lapsed,
                   vantage=seen)


def _lapsed_at(
    previous: RegionStatus | None, report: FleetReport | None, thresholds: HealthThresholds, now: float
) -> float:
    """When the region's report lapsed (unix seconds; 0 while fresh): its report's
    ``observed_at`` + timeout; for a report gone from Redis, the lapse already recorded, else
    the last report's time the previous plan used, else ``now``."""
    if report is not None:
        age = now - report.observed_at
        return 0.0 if age <= thresholds.report_timeout_s else report.observed_at + thresholds.report_timeout_s
    if previous is not None and previous.lapsed_at:
        return previous.lapsed_at
    if previous is not None and previous.observed_at is not None:
        return min(now, previous.observed_at + thresholds.report_timeout_s)
    return now


def _replicas(report: FleetReport) -> str:
    total = sum(m.replicas_total for m in report.models.values())
    healthy = sum(m.replicas_healthy for m in report.models.values())
    return f"{healthy}/{total} replicas" if total else "agent"


def _impairment(report: FleetReport) -> str:
    parts = []
    for m in report.models.values():
        if m.replicas_healthy < m.replicas_total:
            parts.append(f"{m.model}: {m.replicas_healthy}/{m.replicas_total} replicas healthy")
    if report.gpu is not None and report.gpu.degraded:
        xids = ",".join(str(x) for x in report.gpu.xids)
        parts.append(f"{report.gpu.degraded} degraded GPU(s)" + (f" (XID {xids})" if xids else ""))
    return "; ".join(parts)


def flap_damping(
    previous: RegionStatus | None,
    serving: bool,
    threshold: int,
    window_s: float,
    penalty_s: float,
    now: float,
    cleared_at: float = 0.0,
    counts: bool = True,
) -> tuple[tuple[float, ...], float]:
    """Track in/out-of-service transitions and damp a flapping region.

    Only transitions that ``counts`` are recorded: the planner counts going out for a
    confirmed failure and coming back from one, never an outage of a silent agent (unknown),
    a rejected report or a single failed check.

    Args:
        previous: the region's previous status (transitions, damped_until), or None.
        serving: whether the region now takes traffic (``RegionStatus.serving``).
        threshold: transitions within ``window_s`` that count as flapping (0 disables).
        window_s: seconds.
        penalty_s: how long a flapping region stays out, seconds.
        now: unix seconds.
        cleared_at: unix seconds an operator cleared the region's damping (``gtm undamp``),
            0 if never: transitions up to then no longer count, and a penalty that began
            by then is lifted.
        counts: whether a transition now (``serving`` differs from before) counts toward
            damping.

    Returns:
        ``(transitions within the window, damped_until)``; the region must stay out while
        ``now < damped_until``.
    """
    if previous is None:
        return (), 0.0
    was = previous.serving
    times = tuple(t for t in previous.transitions if now - t <= window_s and t > cleared_at)
    moved = was != serving and counts
    if moved:
        times = (*times, now)
    damped_until = previous.damped_until if previous.damped_until > now else 0.0
    if damped_until and damped_until - penalty_s <= cleared_at:
        damped_until = 0.0
    if threshold and len(times) >= threshold and damped_until == 0.0 and moved:
        damped_until = now + penalty_s
    return times, damped_until
