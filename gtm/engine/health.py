"""Region health with hysteresis (rise/fall), judged from agent reports and the clock.

The agent counts consecutive good and failed checks; the engine applies the policy's
thresholds to those counts and to its own previous verdict:

- no report, or one older than ``report_timeout_s``: ``unknown`` (takes no traffic);
- ``consecutive_fail >= fall``: ``unhealthy``;
- a failed check below ``fall``: a serving region becomes ``degraded`` (still serving, at its
  previous weight), a region that was not serving (or is seen for the first time) stays out;
- a good check: a serving region stays in; a region that was out comes back only once
  ``consecutive_ok >= rise``;
- serving but impaired (some replicas down, a degraded GPU): ``degraded``.
"""

from __future__ import annotations

from gtm.models.plan import SERVING_STATES, HealthState, RegionStatus
from gtm.models.policy import HealthThresholds
from gtm.models.report import FleetReport


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
    was_serving = previous is not None and previous.state in SERVING_STATES
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
) -> tuple[tuple[float, ...], float]:
    """Track in/out-of-service transitions and damp a flapping region.

    Args:
        previous: the region's previous status (transitions, damped_until), or None.
        serving: whether the region's state now takes traffic.
        threshold: transitions within ``window_s`` that count as flapping (0 disables).
        window_s: seconds.
        penalty_s: how long a flapping region stays out, seconds.
        now: unix seconds.
        cleared_at: unix seconds an operator cleared the region's damping (``gtm undamp``),
            0 if never: transitions up to then no longer count, and a penalty that began
            by then is lifted.

    Returns:
        ``(transitions within the window, damped_until)``; the region must stay out while
        ``now < damped_until``.
    """
    if previous is None:
        return (), 0.0
    was = previous.state in SERVING_STATES
    times = tuple(t for t in previous.transitions if now - t <= window_s and t > cleared_at)
    if was != serving:
        times = (*times, now)
    damped_until = previous.damped_until if previous.damped_until > now else 0.0
    if damped_until and damped_until - penalty_s <= cleared_at:
        damped_until = 0.0
    if threshold and len(times) >= threshold and damped_until == 0.0 and was != serving:
        damped_until = now + penalty_s
    return times, damped_until
