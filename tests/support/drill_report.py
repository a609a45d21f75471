"""A realistic drill report for the tests of the report files, the live view and the status
page: a drain of ``eu-west-1`` under EU and US client load, one sample per second.

Timeline (seconds since start): the drain is written at 5 s; the authoritative answers stop
naming the region 6.2 s later (the planner's ramp); clients keep their cached answer up to the
TTL (30 s), so the last client request reaches it at 36 s; the undrain at 40 s; the answers
name it again 9.8 s later. ``failures`` requests time out (spread over the hold).
"""

from __future__ import annotations

from gtm.models.drill import DrillEvent, DrillReport, RequestRecord, SecondSample
from tests.factories import T0

EU = ("eu-west-1", "eu-central-1")
US = ("us-east-1", "us-west-2")
ACT_S, ANSWERS_MOVED_S, CLIENTS_MOVED_S, RESTORE_S, RESTORED_S = 5.0, 6.2, 31.0, 40.0, 9.8


def _eu_share(drained: str, frac: float) -> dict[str, float]:
    """EU shares with ``frac`` (0..0.5) left on the drained region."""
    other = next(r for r in EU if r != drained)
    return {drained: round(frac, 3), other: round(1 - frac, 3)} if frac > 0 else {other: 1.0}


def _drained_frac(t: float, moved_s: float) -> float:
    """The drained region's share at ``t``: 50 % before the act, down to 0 over ``moved_s``
    seconds, 0 until the restore, then back to 50 % over ``RESTORED_S``."""
    if t < ACT_S:
        return 0.5
    if t < ACT_S + moved_s:
        return 0.5 * (1 - (t - ACT_S) / moved_s)
    if t < RESTORE_S:
        return 0.0
    return min(0.5, 0.5 * (t - RESTORE_S) / RESTORED_S)


def make_drill_report(*, seconds: int = 60, rps: int = 20, failures: int = 3, region: str = "eu-west-1",
                      note: str = "") -> DrillReport:
    """A drain drill's report (``seconds`` samples of ``rps`` requests per second per
    population, ``eu`` and ``us``); ``failures`` > 0 makes the verdict ``failed``.

    ``note`` adds a ``note`` event with that text (e.g. markup, to check escaping)."""
    series: list[SecondSample] = []
    fail_at = [int(ACT_S) + 3 + 7 * i for i in range(failures)]
    failed_records: list[RequestRecord] = []
    for t in range(seconds):
        answers = _drained_frac(t, ANSWERS_MOVED_S)
        clients = _drained_frac(t, CLIENTS_MOVED_S) if t < RESTORE_S else answers
        failed = fail_at.count(t)
        drained = ACT_S <= t < RESTORE_S + RESTORED_S
        health = {r: "healthy" for r in (*EU, *US)}
        if drained:
            health[region] = "healthy (drain)"
        series.append(SecondSample(
            t=t, ok=2 * rps - failed, failed=failed,
            p50_ms=round(42.0 + (t % 7), 1), p99_ms=round(120.0 + 9 * (t % 5) + (300 if failed else 0), 1),
            shares={"eu": _eu_share(region, clients), "us": {US[0]: 0.5, US[1]: 0.5}},
            answer_shares={**{k: v / 2 for k, v in _eu_share(region, answers).items()}, US[0]: 0.25, US[1]: 0.25},
            health=health,
        ))
        for _ in range(failed):
            failed_records.append(RequestRecord(
                t=T0 + t + 0.25, population="eu", address="192.0.2.11", region=EU[1], outcome="timeout",
                latency_ms=2000.0, resolve_ms=0.4, detail="read timeout after 2.0 s"))
    events = [
        DrillEvent(t=T0, kind="preflight", text=f"drain {region}: 2 EU regions left, safety rules hold"),
        DrillEvent(t=T0 + ACT_S, kind="act", text=f"drain {region} written"),
        DrillEvent(t=T0 + ACT_S + ANSWERS_MOVED_S, kind="answers_moved", text=f"answers no longer name {region}"),
        DrillEvent(t=T0 + ACT_S + CLIENTS_MOVED_S, kind="clients_moved", text=f"no request reached {region}"),
        DrillEvent(t=T0 + RESTORE_S, kind="restore", text=f"undrain {region}"),
        DrillEvent(t=T0 + RESTORE_S + RESTORED_S, kind="restored", text=f"answers name {region} again"),
    ]
    if note:
        events.insert(2, DrillEvent(t=T0 + ACT_S + 1, kind="note", text=note))
    total = 2 * rps * seconds
    return DrillReport(
        id=f"drill-drain-{region}-{int(T0)}", kind="drain", region=region, actor="alice",
        started=T0, ended=T0 + seconds, ttl_s=30, resolver="unbound 127.0.0.1:5353 (stub → 127.0.0.1:5300)",
        verdict="failed" if failures else "passed",
        reasons=[f"{failures} requests failed (allowed 0)"] if failures else [],
        answers_moved_s=ANSWERS_MOVED_S, clients_moved_s=CLIENTS_MOVED_S, restored_s=RESTORED_S,
        error_window_s=float(fail_at[-1] - fail_at[0]) if failures else 0.0,
        total_requests=total, failed_requests=failures,
        plan=[f"drain {region} (reason: drill); held 35 s, then undrained",
              f"EU pool: eu-central-1 takes {region}'s share; US pool unchanged",
              "clients: eu 10.1.0.0/24, us 10.2.0.0/24, 20 rps each through unbound"],
        events=events, series=series, failures=failed_records,
    )
