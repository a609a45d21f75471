"""Canary gates (pure): too few samples wait, clear degradation fails, equal distributions pass."""

from __future__ import annotations

import random

import pytest

from gtm.engine.gates import evaluate, judge_metric
from gtm.models.rollout import GateSpec

SPEC = GateSpec(metrics=("ttft",), min_samples=20, confidence=0.95, tolerance=0.1, max_error_rate=0.05)


def noisy(mean: float, n: int, seed: int, spread: float = 0.1) -> list[float]:
    rng = random.Random(seed)
    return [mean * (1 + spread * rng.uniform(-1, 1)) for _ in range(n)]


def test_too_few_samples_waits_never_passes() -> None:
    r = evaluate(SPEC, {"ttft": noisy(0.2, 19, 1)}, {"ttft": noisy(0.2, 200, 2)})
    assert r.verdict == "wait"
    assert "canary 19/20" in r.reason and "baseline 200/20" in r.reason
    r = evaluate(SPEC, {"ttft": noisy(0.2, 50, 1)}, {"ttft": noisy(0.2, 3, 2)})
    assert r.verdict == "wait" and "baseline 3/20" in r.reason
    # No samples at all (the engine does not export the metric): wait, not pass.
    assert evaluate(SPEC, {}, {}).verdict == "wait"


def test_clear_degradation_fails_with_metric_value_and_threshold() -> None:
    r = evaluate(SPEC, {"ttft": noisy(1.5, 30, 1)}, {"ttft": noisy(0.2, 60, 2)})
    assert r.verdict == "fail"
    failed = r.failed
    assert failed is not None and failed.metric == "ttft"
    assert failed.value == pytest.approx(1.5, rel=0.15)
    assert failed.threshold == pytest.approx(0.22, rel=0.15)  # baseline median × 1.1
    assert failed.p_value is not None and failed.p_value < 0.05
    assert "gate ttft failed" in r.reason and "Mann-Whitney" in r.reason and "× 1.1" in r.reason


def test_equal_distributions_pass() -> None:
    r = evaluate(SPEC, {"ttft": noisy(0.2, 40, 1)}, {"ttft": noisy(0.2, 80, 2)})
    assert r.verdict == "pass", r.reason
    assert r.reason.startswith("gates passed")


def test_identical_constants_pass() -> None:
    spec = SPEC.model_copy(update={"metrics": ("error_rate",)})
    r = evaluate(spec, {"error_rate": [0.0] * 20}, {"error_rate": [0.0] * 20})
    assert r.verdict == "pass", r.reason


def test_significant_but_tolerated_shift_passes() -> None:
    # 5 % slower, consistently: significant, but within the 10 % tolerance.
    r = judge_metric(SPEC, "ttft", noisy(0.21, 200, 1, 0.01), noisy(0.2, 200, 2, 0.01))
    assert r.p_value is not None and r.p_value < 0.05
    assert r.verdict == "pass", r.reason


def test_absolute_ceiling_fails_without_baseline() -> None:
    spec = GateSpec(metrics=("error_rate", "ttft"), min_samples=10, max_error_rate=0.05)
    r = evaluate(spec, {"error_rate": [0.2] * 10, "ttft": noisy(0.2, 10, 1)}, {})
    assert r.verdict == "fail"
    assert r.failed is not None and r.failed.metric == "error_rate"
    assert r.reason == "gate error_rate failed: canary mean 20.00% > ceiling 5.00% (n=10)"


def test_ceiling_uses_mean_for_error_bursts() -> None:
    # 40 % of intervals at 20 % errors: the median is 0, the mean (8 %) is over the ceiling.
    spec = GateSpec(metrics=("error_rate",), min_samples=10, max_error_rate=0.05)
    canary = [0.0] * 6 + [0.2] * 4
    assert evaluate(spec, {"error_rate": canary}, {"error_rate": [0.0] * 10}).verdict == "fail"


def test_first_failing_metric_in_spec_order_wins() -> None:
    spec = GateSpec(metrics=("itl", "ttft"), min_samples=10, max_error_rate=None)
    canary = {"itl": noisy(0.2, 20, 1), "ttft": noisy(2.0, 20, 2)}
    base = {"itl": noisy(0.02, 20, 3), "ttft": noisy(0.2, 20, 4)}
    r = evaluate(spec, canary, base)
    assert r.verdict == "fail" and r.failed is not None and r.failed.metric == "itl"
    assert [m.verdict for m in r.metrics] == ["fail", "fail"]


def test_probe_metrics_gate_like_requests() -> None:
    """Synthetic probe TTFT and failure share are gate metrics: a probe is a request, so they
    are held to ``max_ttft_s`` / ``max_error_rate``; the failure share is centred on its mean."""
    from gtm.engine.gates import ceiling_breach
    from gtm.engine.rollout import metric_value
    from gtm.models.report import ModelStats

    spec = GateSpec(metrics=("probe_failure", "probe_ttft"), min_samples=10, max_error_rate=0.05, max_ttft_s=1.0)
    # 3 of 10 rounds with every probe failing: the median is 0, the mean 30 % > 5 %
    breach = ceiling_breach(spec, {"probe_failure": [0.0] * 7 + [1.0] * 3})
    assert breach is not None and breach.startswith("gate probe_failure failed: canary mean 30.00% > ceiling 5.00%")
    assert ceiling_breach(spec, {"probe_ttft": [1.2] * 10}) is not None
    r = evaluate(spec, {"probe_failure": [0.0] * 20, "probe_ttft": noisy(0.9, 30, 1)},
                 {"probe_failure": [0.0] * 20, "probe_ttft": noisy(0.2, 60, 2)})
    assert r.verdict == "fail" and r.failed is not None and r.failed.metric == "probe_ttft"
    stats = ModelStats(model="m", replicas_total=2, replicas_healthy=2, probe_ttft_s=0.25, probe_success=0.5)
    assert (metric_value(stats, "probe_ttft"), metric_value(stats, "probe_failure")) == (0.25, 0.5)
    assert metric_value(ModelStats(model="m", replicas_total=1, replicas_healthy=1), "probe_failure") is None
