"""The drill's pure judgement: limits (abort), figures, verdict and the per-second series."""

from __future__ import annotations

import pytest

from gtm.drills.judge import (
    AnswerSample,
    Figures,
    Phases,
    expected_kill_window,
    figures,
    judge,
    limit_crossed,
    percentile,
    series,
)
from gtm.models.drill import DrillLimits, RequestRecord
from gtm.models.policy import HealthThresholds

T = 1_000.0
R = "eu-west-1"


def rec(t: float, *, ok: bool = True, region: str | None = "us-east-1", latency: float = 20.0,
        pop: str = "default", residency_ok: bool = True) -> RequestRecord:
    return RequestRecord(t=t, population=pop, address="x" if region else "", region=region,
                         outcome="ok" if ok else "refused", latency_ms=latency, residency_ok=residency_ok)


def test_percentile_nearest_rank() -> None:
    assert percentile([], 0.99) is None
    assert percentile([5.0], 0.5) == 5.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.0


def test_error_rate_aborts_only_with_enough_requests() -> None:
    limits = DrillLimits(max_error_rate=0.1, error_window_s=5, min_requests=10)
    few = [rec(T + i * 0.1, ok=False) for i in range(9)]
    assert limit_crossed(limits, few, T + 1, T) is None  # 9 < min_requests
    many = few + [rec(T + 1.0)] * 11
    assert limit_crossed(limits, many, T + 1.5, T) == (
        "error rate 45.0% (9 of 20 requests in the last 5 s) above max_error_rate 10.0%")
    # old failures leave the window
    assert limit_crossed(limits, many + [rec(T + 7 + i * 0.1) for i in range(10)], T + 8, T) is None


def test_p99_latency_and_duration() -> None:
    limits = DrillLimits(max_p99_latency_ms=100, min_requests=3, max_duration_s=60)
    slow = [rec(T + i * 0.1, latency=20) for i in range(20)] + [rec(T + 2, latency=500)]
    assert limit_crossed(limits, slow, T + 2.5, T) == (
        "p99 latency 500 ms over the last 5 s above max_p99_latency_ms 100")
    assert limit_crossed(limits, [], T + 61, T) == "the drill ran 61 s, longer than max_duration_s 60"


def test_kill_is_judged_only_after_its_expected_window() -> None:
    limits = DrillLimits(max_error_rate=0.05, min_requests=5)
    failing = [rec(T + 10 + i * 0.1, ok=False) for i in range(30)]
    assert limit_crossed(limits, failing, T + 13, T, judge_from=T + 20) is None
    assert limit_crossed(limits, failing, T + 13, T, judge_from=T + 11) is not None


def test_expected_kill_window_is_detection_plus_ttl_plus_margin() -> None:
    health = HealthThresholds(fall=2, report_timeout_s=3)
    assert expected_kill_window(health, 2, DrillLimits(kill_margin_s=4), probe_interval_s=0.5) == 1 + 3 + 2 + 4


def test_figures_answers_clients_restored_and_error_window() -> None:
    phases = Phases(started=T, acted=T + 3, restored=T + 13, ended=T + 20)
    answers = ([AnswerSample(T + 1, "eu", R), AnswerSample(T + 3.2, "eu", R), AnswerSample(T + 4.1, "eu", R),
                AnswerSample(T + 5.0, "eu", "eu-central-1"), AnswerSample(T + 6.0, "eu", "eu-central-1"),
                AnswerSample(T + 13.5, "eu", "eu-central-1"), AnswerSample(T + 14.7, "eu", R)])
    records = [rec(T + 2, region=R), rec(T + 7.5, region=R), rec(T + 9, region="eu-central-1"),
               rec(T + 10, ok=False), rec(T + 11.5, ok=False), rec(T + 12, residency_ok=False)]
    fig = figures(R, phases, records, answers)
    assert fig.answers_moved_s == 2.0  # the first answer after the last one naming R (T+4.1)
    assert fig.clients_moved_s == 4.5  # the last request still answered with R (cached)
    assert fig.restored_s == pytest.approx(1.7)
    assert fig.error_window_s == 1.5
    assert (fig.total_requests, fig.failed_requests, fig.residency_violations) == (6, 2, 1)


def test_figures_never_moved() -> None:
    phases = Phases(started=T, acted=T + 1, restored=T + 5, ended=T + 6)
    answers = [AnswerSample(T + 2 + i, "eu", R) for i in range(3)]
    records = [rec(T + 4.5, region=R)]
    fig = figures(R, phases, records, answers)
    assert fig.answers_moved_s is None and fig.clients_moved_s is None and fig.restored_s is None


def test_verdicts() -> None:
    limits = DrillLimits(allowed_failed_requests=0)
    good = Figures(answers_moved_s=1.0, clients_moved_s=3.0, restored_s=2.0, total_requests=100)
    assert judge("drain", R, limits, good, acted=True, restored=True, aborted=None, expected_window_s=None).verdict \
        == "passed"
    lost = Figures(answers_moved_s=1.0, restored_s=2.0, total_requests=100, failed_requests=2)
    j = judge("failover", R, limits, lost, acted=True, restored=True, aborted=None, expected_window_s=None)
    assert (j.verdict, j.reasons) == ("failed", ["2 requests failed (allowed: 0)"])
    kill = Figures(answers_moved_s=4.0, restored_s=5.0, failed_requests=40, error_window_s=12.5)
    assert judge("kill", R, limits, kill, acted=True, restored=True, aborted=None, expected_window_s=13.0).verdict \
        == "passed"
    j = judge("kill", R, limits, kill, acted=True, restored=True, aborted=None, expected_window_s=10.0)
    assert j.reasons == ["error window 12.5 s longer than expected 10.0 s"]
    broken = Figures(residency_violations=3)
    j = judge("drain", R, limits, broken, acted=True, restored=True, aborted=None, expected_window_s=None)
    assert j.reasons == ["3 answers broke residency", f"the answers never stopped naming {R}",
                         f"the answers did not name {R} again after the restore"]
    j = judge("drain", R, limits, good, acted=True, restored=True, aborted="aborted: p99 latency",
              expected_window_s=None)
    assert (j.verdict, j.reasons) == ("aborted", ["aborted: p99 latency"])


def test_series_counts_shares_and_latency_per_second() -> None:
    records = [rec(T + 0.2, pop="eu", region=R), rec(T + 0.4, pop="eu", region="eu-central-1"),
               rec(T + 1.1, ok=False, region=None, latency=2500.0), rec(T + 1.5, latency=40)]
    answers = [AnswerSample(T + 0.5, "eu", R), AnswerSample(T + 0.6, "eu", "eu-central-1"),
               AnswerSample(T + 0.7, "default", "us-east-1"), AnswerSample(T + 0.8, "default", "us-east-1")]
    s = series(T, T + 3.5, records, answers, {1: {R: "healthy"}})
    assert [x.t for x in s] == [0, 1, 2, 3]
    assert (s[0].ok, s[0].failed, s[1].ok, s[1].failed) == (2, 0, 1, 1)
    assert s[0].shares == {"eu": {"eu-central-1": 0.5, R: 0.5}}
    assert s[1].shares == {"default": {"none": 0.5, "us-east-1": 0.5}}
    assert s[0].answer_shares == {"eu-central-1": 0.25, R: 0.25, "us-east-1": 0.5}
    assert s[0].p50_ms == 20.0 and s[1].p99_ms == 40.0 and s[3].p99_ms == 2500.0
    assert s[1].health == {R: "healthy"} and s[2].health == {}
