"""A drill's pure judgement: the limits checked every second, the per-second series, the
figures (answers moved, clients moved, restored, error window) and the verdict.

Nothing here reads a clock or does I/O: the runner passes times (unix seconds) and what it
recorded, so every rule is unit-tested with plain values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from gtm.models.drill import DrillKind, DrillLimits, RequestRecord, SecondSample, Verdict
from gtm.models.policy import HealthThresholds


@dataclass(frozen=True)
class AnswerSample:
    """One authoritative answer sampled during a drill: ``t`` unix seconds, the population
    whose client subnet was sent, the region answered (None: no answer / unknown address)."""

    t: float
    population: str
    region: str | None


@dataclass(frozen=True)
class Phases:
    """When the drill did what, unix seconds: ``started`` (load began), ``acted`` (override
    written / fleet killed; None when it never acted), ``restored`` (undone; None when it never
    was), ``ended`` (load stopped)."""

    started: float
    acted: float | None
    restored: float | None
    ended: float


@dataclass
class Figures:
    """The measured outcome (seconds; None: never happened). See ``DrillReport``."""

    answers_moved_s: float | None = None
    clients_moved_s: float | None = None
    restored_s: float | None = None
    error_window_s: float = 0.0
    total_requests: int = 0
    failed_requests: int = 0
    residency_violations: int = 0


@dataclass
class Judgement:
    """The verdict and why (``reasons`` empty when passed)."""

    verdict: Verdict
    reasons: list[str] = field(default_factory=list)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` (0..1) percentile by nearest rank, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def detection_s(health: HealthThresholds, probe_interval_s: float) -> float:
    """How long the agents may take to report a dead fleet, seconds: ``fall`` failed probes
    ``probe_interval_s`` apart, plus the report timeout (a report that stops coming)."""
    return health.fall * probe_interval_s + health.report_timeout_s


def expected_kill_window(health: HealthThresholds, ttl_s: float, limits: DrillLimits,
                         probe_interval_s: float) -> float:
    """The longest error window a ``kill`` drill may show to pass, seconds: detection + the
    service's TTL (clients keep the cached answer) + ``limits.kill_margin_s``."""
    return detection_s(health, probe_interval_s) + ttl_s + limits.kill_margin_s


def limit_crossed(limits: DrillLimits, records: Iterable[RequestRecord], now: float, started: float, *,
                  judge_from: float | None = None) -> str | None:
    """The first ``drills:`` limit crossed at ``now`` (unix seconds), as a sentence, or None.

    Args:
        limits: the policy's ``drills:`` section.
        records: the requests finished so far (any order).
        now: the time of the check.
        started: when the drill started (for ``max_duration_s``).
        judge_from: error rate and latency are judged only on requests sent at or after this
            time (a ``kill`` drill: kill + expected window); None: all.
    """
    if now - started > limits.max_duration_s:
        return f"the drill ran {now - started:.0f} s, longer than max_duration_s {limits.max_duration_s:g}"
    lo = now - limits.error_window_s
    if judge_from is not None:
        lo = max(lo, judge_from)
    window = [r for r in records if lo <= r.t <= now]
    if len(window) >= limits.min_requests:
        failed = sum(1 for r in window if not r.ok)
        rate = failed / len(window)
        if rate > limits.max_error_rate:
            return (f"error rate {rate:.1%} ({failed} of {len(window)} requests in the last "
                    f"{limits.error_window_s:g} s) above max_error_rate {limits.max_error_rate:.1%}")
    p99 = percentile([r.latency_ms for r in window], 0.99)
    if p99 is not None and len(window) >= limits.min_requests and p99 > limits.max_p99_latency_ms:
        return (f"p99 latency {p99:.0f} ms over the last {limits.error_window_s:g} s above max_p99_latency_ms "
                f"{limits.max_p99_latency_ms:g}")
    return None


def figures(region: str, phases: Phases, records: Sequence[RequestRecord],
            answers: Sequence[AnswerSample]) -> Figures:
    """The drill's figures from what it recorded.

    - ``answers_moved_s``: act → the first authoritative answer sampled after the last one that
      still named ``region`` before restore (None: it still named it at the last sample before
      restore, or nothing was sampled).
    - ``clients_moved_s``: act → the last client request answered with ``region`` before restore
      (0 when none was after act; None when requests reached it in the last second before
      restore).
    - ``restored_s``: restore → the first sampled answer naming ``region`` again.
    - ``error_window_s``: first to last failed request.
    """
    out = Figures(total_requests=len(records), failed_requests=sum(1 for r in records if not r.ok),
                  residency_violations=sum(1 for r in records if not r.residency_ok))
    failed = sorted(r.t for r in records if not r.ok)
    out.error_window_s = failed[-1] - failed[0] if len(failed) > 1 else 0.0
    acted, restored = phases.acted, phases.restored
    if acted is None:
        return out
    until = restored if restored is not None else phases.ended
    during = sorted((a for a in answers if acted <= a.t < until), key=lambda a: a.t)
    if during:
        named = [i for i, a in enumerate(during) if a.region == region]
        if not named:
            out.answers_moved_s = during[0].t - acted
        elif named[-1] + 1 < len(during):
            out.answers_moved_s = during[named[-1] + 1].t - acted
    hits = [r.t for r in records if acted <= r.t < until and r.region == region]
    if not hits:
        out.clients_moved_s = 0.0
    elif hits[-1] < until - 1.0:
        out.clients_moved_s = hits[-1] - acted
    if restored is not None:
        back = [a.t for a in answers if a.t >= restored and a.region == region]
        if back:
            out.restored_s = min(back) - restored
    return out


def judge(kind: DrillKind, region: str, limits: DrillLimits, fig: Figures, *, acted: bool, restored: bool,
          aborted: str | None, expected_window_s: float | None) -> Judgement:
    """The verdict.

    ``aborted`` (a limit crossed, an interrupt, a failed act) makes it ``aborted`` with that
    reason first. Otherwise it is ``failed`` when: failed requests exceed
    ``allowed_failed_requests`` (``drain``, ``failover``); a ``kill``'s error window is longer
    than ``expected_window_s``; any answer broke residency; the answers never stopped naming
    the region; they never named it again after restore. Else ``passed``.
    """
    reasons: list[str] = []
    if aborted:
        reasons.append(aborted)
    if kind != "kill" and fig.failed_requests > limits.allowed_failed_requests:
        reasons.append(f"{fig.failed_requests:,} requests failed (allowed: {limits.allowed_failed_requests:,})")
    if kind == "kill" and expected_window_s is not None and fig.error_window_s > expected_window_s:
        reasons.append(f"error window {fig.error_window_s:.1f} s longer than expected {expected_window_s:.1f} s")
    if fig.residency_violations:
        reasons.append(f"{fig.residency_violations:,} answers broke residency")
    if acted and not aborted and fig.answers_moved_s is None:
        reasons.append(f"the answers never stopped naming {region}")
    if acted and restored and fig.restored_s is None:
        reasons.append(f"the answers did not name {region} again after the restore")
    if aborted:
        return Judgement("aborted", reasons)
    return Judgement("failed" if reasons else "passed", reasons)


def series(started: float, ended: float, records: Sequence[RequestRecord], answers: Sequence[AnswerSample],
           health: dict[int, dict[str, str]] | None = None) -> list[SecondSample]:
    """One ``SecondSample`` per second from ``started`` to ``ended`` (unix seconds).

    Requests count in the second they were sent; latency percentiles are of the requests that
    finished in that second; ``shares`` are per population of the regions clients were
    answered with (``none`` when unresolved); ``health`` maps a second to the region states
    seen then (the plan in force).
    """
    n = max(1, math.ceil(ended - started))
    sent: list[list[RequestRecord]] = [[] for _ in range(n)]
    done: list[list[float]] = [[] for _ in range(n)]
    seen: list[list[AnswerSample]] = [[] for _ in range(n)]
    for r in records:
        i = int(r.t - started)
        if 0 <= i < n:
            sent[i].append(r)
        j = int(r.t + r.latency_ms / 1000 - started)
        if 0 <= j < n:
            done[j].append(r.latency_ms)
    for a in answers:
        i = int(a.t - started)
        if 0 <= i < n:
            seen[i].append(a)
    out = []
    for i in range(n):
        shares: dict[str, dict[str, float]] = {}
        for r in sent[i]:
            shares.setdefault(r.population, {}).setdefault(r.region or "none", 0.0)
            shares[r.population][r.region or "none"] += 1
        for pop, counts in shares.items():
            total = sum(counts.values())
            shares[pop] = {k: v / total for k, v in sorted(counts.items())}
        answer_shares: dict[str, float] = {}
        for a in seen[i]:
            answer_shares[a.region or "none"] = answer_shares.get(a.region or "none", 0.0) + 1
        total_a = sum(answer_shares.values())
        out.append(SecondSample(
            t=i, ok=sum(1 for r in sent[i] if r.ok), failed=sum(1 for r in sent[i] if not r.ok),
            p50_ms=percentile(done[i], 0.5), p99_ms=percentile(done[i], 0.99), shares=shares,
            answer_shares={k: v / total_a for k, v in sorted(answer_shares.items())},
            health=(health or {}).get(i, {}),
        ))
    return out


__all__ = [
    "AnswerSample", "Figures", "Judgement", "Phases", "detection_s", "expected_kill_window", "figures", "judge",
    "limit_crossed", "percentile", "series",
]
