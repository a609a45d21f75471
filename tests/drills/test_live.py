"""The drill's live view renders the phase, the counts, the shares, the health, the limits
(with how close each is) and the newest events."""

from __future__ import annotations

from rich.console import Console

from gtm.drills.live import EVENTS_SHOWN, DrillProgress, limit_uses, render_live
from gtm.models.drill import DrillEvent, DrillLimits
from tests.factories import T0

LIMITS = DrillLimits(max_error_rate=0.05, error_window_s=5, min_requests=10, max_p99_latency_ms=2000,
                     max_duration_s=120, allowed_failed_requests=0)


def text_of(p: DrillProgress) -> str:
    console = Console(record=True, width=120, color_system=None, force_terminal=False)
    console.print(render_live(p))
    return console.export_text()


def progress(**kw: object) -> DrillProgress:
    base: dict[str, object] = dict(
        id="drill-drain-eu-west-1-1700000000", kind="drain", region="eu-west-1", phase="hold", elapsed_s=21.4,
        hold_s=35, limits=LIMITS, started=T0, hold_elapsed_s=12.0, ok=1_712, failed=0, last_rps=40, p99_ms=140.0,
        window_requests=200, error_rate=0.0,
        shares={"eu": {"eu-central-1": 0.85, "eu-west-1": 0.15}, "us": {"us-east-1": 0.5, "us-west-2": 0.5}},
        answer_shares={"eu-central-1": 0.5, "us-east-1": 0.25, "us-west-2": 0.25},
        health={"eu-central-1": "healthy", "eu-west-1": "healthy (drain)", "us-east-1": "healthy",
                "us-west-2": "degraded"},
        events=[DrillEvent(t=T0 + i, kind=k, text=f"{k} text") for i, k in
                enumerate(["preflight", "act", "note", "note", "note", "answers_moved"])],
    )
    base.update(kw)
    return DrillProgress(**base)  # type: ignore[arg-type]


def test_live_view_shows_phase_counts_shares_health_limits_events() -> None:
    out = text_of(progress())
    assert "gtm drill drain eu-west-1" in out
    assert "held 12 of 35 s" in out
    assert "phase hold" in out and "elapsed 21.4 s" in out
    assert "1,712 ok / 0 failed of 1,712" in out and "40 rps" in out and "p99 140 ms" in out
    assert "clients eu" in out and "eu-central-1 85%" in out and "eu-west-1 15%" in out
    assert "answers" in out and "us-east-1 25%" in out
    assert "eu-west-1 healthy (drain)" in out and "us-west-2 degraded" in out
    rows = [ln.strip("│ ") for ln in out.splitlines()]
    lines = {name: row for row in rows for name in ("error rate", "p99 latency", "duration", "failed requests")
             if row.startswith(name)}
    assert "0.0%" in lines["error rate"] and "5.0% over 5 s" in lines["error rate"]
    assert "140 ms" in lines["p99 latency"] and "2,000 ms" in lines["p99 latency"] and "7%" in lines["p99 latency"]
    assert "21 s" in lines["duration"] and "120 s" in lines["duration"] and "18%" in lines["duration"]
    assert "0 allowed" in lines["failed requests"]
    # the newest events only, with times relative to the start
    assert "+5.0 s" in out and "answers_moved" in out and "preflight" not in out
    assert out.count(" text") == EVENTS_SHOWN


def test_limits_close_and_crossed() -> None:
    p = progress(error_rate=0.2, p99_ms=1_700.0, elapsed_s=30.0, failed=3)
    uses = {u.name: u for u in limit_uses(p)}
    assert uses["error rate"].crossed and uses["error rate"].used == 4.0
    assert not uses["p99 latency"].crossed and uses["p99 latency"].used == 0.85
    assert uses["failed requests"].crossed and uses["failed requests"].used == float("inf")
    out = text_of(p)
    assert out.count("crossed") == 2 and "85%" in out
    assert "3 failed" in out


def test_error_rate_not_judged_yet() -> None:
    out = text_of(progress(error_rate=1.0, window_requests=4))
    assert "4 of 10 requests" in out and "crossed" not in out
    kill = progress(kind="kill", error_rate=0.9, elapsed_s=8.0, error_judged_after_s=25.0)
    uses = {u.name: u for u in limit_uses(kill)}
    assert not uses["error rate"].crossed and uses["error rate"].now == "not judged before 25 s"
    assert "failed requests" not in uses, "a kill drill is judged by its error window, not a failure count"


def test_before_any_request() -> None:
    p = DrillProgress(id="d", kind="failover", region="us-east-1", hold_s=35, limits=LIMITS)
    out = text_of(p)
    assert "gtm drill failover us-east-1" in out
    assert "phase preflight" in out and "p99 —" in out and "hold 35 s planned" in out
    assert "0 ok / 0 failed of 0" in out and "0 rps" in out


def test_event_times_without_a_start_are_clock_times() -> None:
    out = text_of(progress(started=None))
    assert "22:13:25" in out and "answers_moved" in out  # T0 + 5 s in UTC
