"""Canary analysis: is the canary region worse than the baseline regions? Pure, no I/O.

Per metric of ``GateSpec.metrics`` (higher is worse for every one of them: ``error_rate``,
``ttft``, ``itl``, ``kv_cache``, and from the agents' synthetic completion probes
``probe_ttft`` (seconds) and ``probe_failure`` (share of probed sources whose newest probe
failed, 1 − ``ModelStats.probe_success``)), with ``c`` the canary's samples and ``b`` the baseline's
(per-report observations collected over the same window):

1. **Absolute ceiling** (``max_error_rate``, ``max_ttft_s``, ``max_itl_s``, ``max_kv_cache``):
   once ``c`` has ``min_samples`` samples, the metric fails when the canary's centre exceeds the
   ceiling. The centre is the mean for the failure shares ``error_rate`` and ``probe_failure``
   (errors come in bursts: a median of per-interval rates hides a 40 % share of bad intervals)
   and the median otherwise. A probe is a request: ``probe_ttft`` is held to ``max_ttft_s`` and
   ``probe_failure`` to ``max_error_rate``.
2. **Too few samples**: fewer than ``min_samples`` on either side → ``wait``. A gate never
   passes by default.
3. **Comparison**: one-sided Mann-Whitney U (``scipy.stats.mannwhitneyu``, alternative: the
   canary is stochastically greater). The metric fails when ``p < 1 − confidence`` **and** the
   canary median exceeds ``baseline median × (1 + tolerance)``; a significant but tolerable
   shift passes, and so does a large but insignificant one.

The gate's verdict: the first failing metric (in ``GateSpec.metrics`` order) fails it; else
any waiting metric makes it wait; else it passes. Every verdict carries a reason naming the
metric, the value and the threshold.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from gtm.models.rollout import GateMetric, GateSpec

Verdict = Literal["pass", "fail", "wait"]

UNITS: dict[str, str] = {"error_rate": "", "ttft": " s", "itl": " s", "kv_cache": "", "probe_ttft": " s",
                         "probe_failure": ""}

SHARES = frozenset({"error_rate", "probe_failure"})
"""Metrics that are failure shares 0..1: centred on the mean, shown as percentages."""


@dataclass(frozen=True, slots=True)
class MetricResult:
    """One metric's judgement.

    Attributes:
        metric: the metric.
        verdict: ``pass``, ``fail`` or ``wait``.
        reason: one line naming the value and the threshold it was held to.
        canary_n: canary samples.
        baseline_n: baseline samples.
        value: the canary's centre (median; mean for ``error_rate`` and ``probe_failure``), or None without samples.
        threshold: what ``value`` was compared with (a ceiling, or baseline median × (1 +
            tolerance)), or None.
        p_value: the Mann-Whitney U p-value, or None when not computed.
    """

    metric: str
    verdict: Verdict
    reason: str
    canary_n: int
    baseline_n: int
    value: float | None = None
    threshold: float | None = None
    p_value: float | None = None


@dataclass(frozen=True, slots=True)
class GateResult:
    """The gate's verdict over every metric.

    Attributes:
        verdict: ``fail`` if any metric failed, else ``wait`` if any waits, else ``pass``.
        reason: the failing metric's reason; or every waiting metric's; or a summary.
        metrics: one result per metric, in ``GateSpec.metrics`` order.
    """

    verdict: Verdict
    reason: str
    metrics: tuple[MetricResult, ...]

    @property
    def failed(self) -> MetricResult | None:
        return next((m for m in self.metrics if m.verdict == "fail"), None)


def ceiling(spec: GateSpec, metric: str) -> float | None:
    """The absolute ceiling configured for ``metric``, or None."""
    return {
        "error_rate": spec.max_error_rate,
        "ttft": spec.max_ttft_s,
        "itl": spec.max_itl_s,
        "kv_cache": spec.max_kv_cache,
        "probe_ttft": spec.max_ttft_s,
        "probe_failure": spec.max_error_rate,
    }.get(metric)


def fmt(metric: str, value: float) -> str:
    """``value`` with the metric's unit (error rates as percentages)."""
    if metric in SHARES:
        return f"{value:.2%}"
    return f"{value:.4g}{UNITS.get(metric, '')}"


def _clean(xs: Sequence[float] | None) -> list[float]:
    return [float(x) for x in xs or () if x is not None and math.isfinite(x)]


def ceiling_breach(spec: GateSpec, canary: Mapping[str, Sequence[float]]) -> str | None:
    """Why the canary's newest ``min_samples`` samples break an absolute ceiling, or None.

    Checked on every tick of a canary or ramping region, during its bake time and while the
    rollout is paused too: a ceiling (e.g. ``max_error_rate``) needs no baseline and no
    statistics, so there is no reason to wait before rolling back.
    """
    need = spec.min_samples
    for metric in spec.metrics:
        top = ceiling(spec, metric)
        c = _clean(canary.get(metric))[-need:]
        if top is None or len(c) < need:
            continue
        centre = statistics.fmean(c) if metric in SHARES else statistics.median(c)
        if centre > top:
            name = "mean" if metric in SHARES else "median"
            return (f"gate {metric} failed: canary {name} {fmt(metric, centre)} > ceiling {fmt(metric, top)} "
                    f"(n={len(c)}) on the newest samples")
    return None


def judge_metric(
    spec: GateSpec, metric: GateMetric | str, canary: Sequence[float], baseline: Sequence[float]
) -> MetricResult:
    """Judge one metric (see the module docstring for the rules)."""
    c, b = _clean(canary), _clean(baseline)
    n, m, need = len(c), len(b), spec.min_samples
    centre_name = "mean" if metric in SHARES else "median"
    centre = (statistics.fmean(c) if metric in SHARES else statistics.median(c)) if c else None
    top = ceiling(spec, metric)
    if top is not None and centre is not None and n >= need and centre > top:
        return MetricResult(
            metric, "fail",
            f"gate {metric} failed: canary {centre_name} {fmt(metric, centre)} > ceiling "
            f"{fmt(metric, top)} (n={n})",
            n, m, centre, top,
        )
    if n < need or m < need:
        return MetricResult(
            metric, "wait",
            f"{metric}: waiting for samples (canary {n}/{need}, baseline {m}/{need})",
            n, m, centre,
        )
    med_c, med_b = statistics.median(c), statistics.median(b)
    limit = med_b * (1 + spec.tolerance)
    alpha = 1 - spec.confidence
    if min(c) == max(c) == min(b) == max(b):
        p = 1.0  # identical constant samples: no evidence either way
    else:
        from scipy.stats import mannwhitneyu  # ~0.6 s to import: only when a gate compares

        p = float(mannwhitneyu(c, b, alternative="greater").pvalue)
        if not math.isfinite(p):
            p = 1.0
    if p < alpha and med_c > limit:
        return MetricResult(
            metric, "fail",
            f"gate {metric} failed: canary median {fmt(metric, med_c)} > baseline median "
            f"{fmt(metric, med_b)} × {1 + spec.tolerance:g} = {fmt(metric, limit)}, "
            f"Mann-Whitney U p={p:.2g} < {alpha:.2g} (n={n}/{m})",
            n, m, med_c, limit, p,
        )
    return MetricResult(
        metric, "pass",
        f"{metric}: ok, canary median {fmt(metric, med_c)} vs baseline {fmt(metric, med_b)} "
        f"(limit {fmt(metric, limit)}, p={p:.2g}, n={n}/{m})",
        n, m, med_c, limit, p,
    )


def evaluate(
    spec: GateSpec, canary: Mapping[str, Sequence[float]], baseline: Mapping[str, Sequence[float]]
) -> GateResult:
    """Judge a canary against the baseline on every metric of ``spec``.

    Args:
        spec: the gates.
        canary: samples per metric from the canary region(s).
        baseline: samples per metric from the baseline regions, over the same window.
    """
    results = tuple(judge_metric(spec, mt, canary.get(mt, ()), baseline.get(mt, ())) for mt in spec.metrics)
    failed = next((r for r in results if r.verdict == "fail"), None)
    if failed is not None:
        return GateResult("fail", failed.reason, results)
    waiting = [r for r in results if r.verdict == "wait"]
    if waiting or not results:
        return GateResult("wait", "; ".join(r.reason for r in waiting) or "no gate metrics", results)
    return GateResult("pass", "gates passed: " + "; ".join(r.reason for r in results), results)
