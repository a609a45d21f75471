"""Scraping fleet sources: Prometheus expositions and health endpoints → normalised samples.

Every exposition is parsed with ``prometheus_client.parser.text_string_to_metric_families``
(never a home-made parser) and then normalised per engine kind to one :class:`EngineSample`
(serving engines) or :class:`GpuSample` (DCGM exporter). Facts below come from
``shared/TELEMETRY.md`` (which names the upstream commits read).

Normalisation rules (TELEMETRY.md §0 "Agent gotchas"):

* Counters and queue gauges are **summed** over every series of a metric (vLLM V1 emits one
  series per engine core / data-parallel rank under the ``engine`` label, PRs #15755 and
  #21257; SGLang adds ``tp_rank``/``dp_rank``). Fractions take the **maximum**, never a sum.
* ``NaN`` and ``±Inf`` values are ignored, and so are DCGM "blank" sentinels: int64 values
  ≥ ``0x7ffffffffffffff0`` mean not-supported / no data (README of dcgm-exporter shows
  ``DCGM_FI_DEV_MEMORY_TEMP … 9223372036854775794``).
* Counters without a ``_total`` suffix (TGI, Triton) are read under their family name;
  ``prometheus_client`` exposes their samples as ``<name>_total``, so both spellings resolve.

Per kind (queue = waiting requests, running = requests in running batches, kv = KV-cache
usage fraction 0..1, tokens = decode-token counter, errors = failed/aborted request counter):

* ``vllm``: queue ``vllm:num_requests_waiting``, running ``vllm:num_requests_running``; kv
  ``vllm:kv_cache_usage_perc`` (v0.10+, PR #18354), else ``vllm:gpu_cache_usage_perc``
  (≤ v0.10; hidden by ~v0.11, removed by PR #29330); tokens
  ``vllm:generation_tokens_total``; errors ``vllm:request_success_total{finished_reason=
  "abort"}``.
* ``tgi``: queue ``tgi_queue_size``, running ``tgi_batch_current_size``; kv
  ``tgi_batch_current_max_tokens / tgi_batch_max_total_tokens`` (our mapping, v3 router);
  tokens ``tgi_request_generated_tokens_sum`` (grows when a request finishes); errors
  ``tgi_request_failure`` (every ``err``).
* ``sglang``: queue ``sglang:num_queue_reqs``, running ``sglang:num_running_reqs``; kv
  ``sglang:token_usage``; tokens ``sglang:generation_tokens_total``; no error counter.
* ``triton``: queue TRT-LLM ``nv_trt_llm_request_metrics{request_type="waiting"}``, else
  ``nv_inference_pending_request_count``; running ``…{request_type="scheduled"}``; kv
  ``nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}`` (Triton ≥ 25.03);
  no token counter; errors ``nv_inference_request_failure``.
* ``dcgm``: utilisation ``DCGM_FI_DEV_GPU_UTIL`` % → fraction, framebuffer
  ``DCGM_FI_DEV_FB_USED``/``_FREE`` MiB, degraded on a critical XID or
  ``DCGM_FI_DEV_ROW_REMAP_FAILURE`` == 1.

Latency, request and version signals (canary gates; ``ModelStats.ttft_s`` / ``itl_s`` /
``requests_per_s`` / ``error_rate``): each sample carries histogram ``(_sum, _count)`` pairs and
counters; the agent divides the deltas between two scrapes.

* ``vllm``: TTFT ``vllm:time_to_first_token_seconds``; ITL ``vllm:inter_token_latency_seconds``
  (PR #24110), else the old ``vllm:time_per_output_token_seconds``; requests: every
  ``vllm:request_success_total`` series (``finished_reason`` stop/length/abort).
* ``sglang``: TTFT ``sglang:time_to_first_token_seconds``; ITL
  ``sglang:inter_token_latency_seconds`` (else ``time_per_output_token_seconds``); requests
  ``sglang:num_requests_total``; errors ``sglang:num_aborted_requests_total`` where exported
  (newer releases; without it there is no error rate).
* ``tgi``: TTFT is not exported; approximated as mean queue time
  (``tgi_request_queue_duration``) + mean prefill forward time
  (``tgi_batch_forward_duration{method="prefill"}``); ITL
  ``tgi_request_mean_time_per_token_duration``; requests ``tgi_request_count``.
* ``triton``: TTFT ``nv_inference_first_response_histogram_ms`` (opt-in, ms → s); requests
  ``nv_inference_request_success`` + ``nv_inference_request_failure``; no ITL.
* Served version: an info gauge ``gtm_served_version_info{version="..."} 1`` when the
  serving wrapper (or the simulator) exports one, else Triton's ``version`` label; otherwise
  the agent falls back to the inventory's ``FleetSource.version``.

Health endpoints (``HEALTH_PATHS``): vLLM ``/health`` (200 ok; 503 = ``EngineDeadError``
since PR #24897 ~v0.11, 500 on older releases; not a generation probe), TGI ``/health``
(503 ``{"error":"unhealthy"}``), SGLang ``/health_generate`` (runs a 1-token generation,
503 on failure; ``/health`` is the same handler from 0.5.x), Triton ``/v2/health/ready``
(**400** when not ready, not 503).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from gtm.errors import ScrapeError
from gtm.log import get_logger
from gtm.models.region import FleetSource

log = get_logger("agent.scrape")

CRITICAL_XIDS: frozenset[int] = frozenset({48, 63, 64, 74, 79, 92, 94, 95, 119, 120})
"""XID codes that mark a GPU degraded (dcgm-exporter ``xid_errors.go``): 48 double-bit ECC,
63/64 row-remap / page-retirement event or failure, 74 NVLink, 79 fallen off the bus, 92 high
single-bit ECC rate, 94/95 contained / uncontained ECC, 119/120 GSP RPC timeout / error."""

DCGM_BLANK_MIN = 0x7FFFFFFFFFFFFFF0
"""Smallest DCGM int64 "blank" sentinel (not supported / no data); values at or above it are
ignored. As a float every sentinel rounds to 2**63."""

HEALTH_PATHS: Mapping[str, str] = {
    "vllm": "/health",
    "tgi": "/health",
    "sglang": "/health_generate",
    "triton": "/v2/health/ready",
}
"""Default health path per engine kind (``dcgm`` has none: a good scrape is its health)."""

SERVED_VERSION_METRIC = "gtm_served_version_info"
"""Info gauge (value 1) whose ``version`` label names the model version a fleet serves."""

PARSE_IN_THREAD_BYTES = 4 * 1024
"""Expositions larger than this many bytes are parsed in a worker thread (TGI's is ~100 KB and
~20 ms of parsing, vLLM's ~20 KB) so the event loop keeps its timers and probes accurate."""

Labels = Mapping[str, str]


# -- parsed exposition ----------------------------------------------------------------------


class Exposition:
    """A parsed Prometheus text exposition, indexed by sample name.

    Only finite values below the DCGM blank sentinel are kept. A counter's samples are
    reachable both as ``<family>_total`` and as ``<family>`` (TGI and Triton counters have no
    ``_total`` suffix on the wire, but the parser appends one).
    """

    def __init__(self, text: str) -> None:
        """Parse ``text``.

        Raises:
            ScrapeError: the text is not a valid exposition.
        """
        self._series: dict[str, list[tuple[dict[str, str], float]]] = {}
        try:
            for fam in text_string_to_metric_families(text):
                for s in fam.samples:
                    value = float(s.value)
                    if not math.isfinite(value) or value >= DCGM_BLANK_MIN:
                        continue
                    row = (dict(s.labels), value)
                    self._series.setdefault(s.name, []).append(row)
                    if fam.type == "counter" and s.name == fam.name + "_total":
                        self._series.setdefault(fam.name, []).append(row)
        except (ValueError, TypeError, IndexError) as exc:
            raise ScrapeError(f"unparsable exposition: {exc}") from exc

    def names(self) -> Iterable[str]:
        """Every sample name with at least one usable value."""
        return self._series.keys()

    def series(self, name: str, where: Callable[[Labels], bool] | None = None) -> list[tuple[dict[str, str], float]]:
        """``(labels, value)`` rows of sample ``name`` (optionally filtered by labels)."""
        rows = self._series.get(name, [])
        return [r for r in rows if where is None or where(r[0])]

    def has(self, name: str) -> bool:
        """Whether sample ``name`` has at least one usable value."""
        return bool(self._series.get(name))

    def total(self, name: str, where: Callable[[Labels], bool] | None = None) -> float | None:
        """Sum over every matching series, or None when there is none."""
        rows = self.series(name, where)
        return sum(v for _, v in rows) if rows else None

    def highest(self, name: str, where: Callable[[Labels], bool] | None = None) -> float | None:
        """Maximum over every matching series (for fractions), or None."""
        rows = self.series(name, where)
        return max(v for _, v in rows) if rows else None

    def label(self, name: str, key: str) -> str | None:
        """The first non-empty value of label ``key`` on sample ``name``."""
        for labels, _ in self._series.get(name, []):
            if labels.get(key):
                return labels[key]
        return None


def parse_exposition(text: str) -> Exposition:
    """Parse a Prometheus text exposition (0.0.4). Raises ``ScrapeError`` if malformed."""
    return Exposition(text)


# -- normalised samples ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EngineSample:
    """One serving engine's load, normalised across kinds (see the module table).

    Attributes:
        kind: engine kind.
        model: served model name from the exposition's labels, or None if it does not say.
        running: requests in running batches (summed over series).
        waiting: queued requests, i.e. queue depth (summed over series).
        kv_usage: KV-cache usage fraction 0..1 (max over series), or None if not exported.
        generation_tokens: decode-token counter (tokens, summed), or None if not exported.
        progress: a monotonic work counter used by the wedge heuristic (decode + prefill
            tokens, or forward passes / completed requests where tokens are not exported),
            or None.
        errors: failed or aborted requests (counter, summed).
        has_errors: whether the engine exports an error counter at all (else no error rate).
        requests: finished requests, failed ones included (counter, summed), or None.
        ttft: TTFT histogram ``(sum seconds, count)`` pairs; the TTFT of an interval is the sum
            of each pair's mean over it (one pair, or TGI's queue + prefill); () if none.
        itl: inter-token latency histogram ``(sum seconds, count)``, or None.
        version: model version the fleet says it serves, or None.
    """

    kind: str
    model: str | None
    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float | None = None
    generation_tokens: float | None = None
    progress: float | None = None
    errors: float = 0.0
    has_errors: bool = True
    requests: float | None = None
    ttft: tuple[tuple[float, float], ...] = ()
    itl: tuple[float, float] | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class GpuSample:
    """GPU telemetry from one DCGM exporter scrape.

    Attributes:
        count: distinct GPUs seen (by ``UUID``/``uuid`` label, else ``gpu`` index + host).
        utilization: mean busy fraction 0..1 (``DCGM_FI_DEV_GPU_UTIL`` / 100), or None.
        memory_used_mib: framebuffer used, MiB, summed (``DCGM_FI_DEV_FB_USED``), or None.
        memory_total_mib: framebuffer total, MiB, summed: ``DCGM_FI_DEV_FB_TOTAL`` where
            exported, else used + free; None if neither.
        degraded: GPUs with a critical XID, ``DCGM_FI_DEV_ROW_REMAP_FAILURE`` == 1 or a
            failing DCGM health watch (``DCGM_EXP_GPU_HEALTH_STATUS`` ≥ 20).
        xids: distinct critical XID codes currently reported, sorted.
        reasons: one human-readable line per degraded GPU.
    """

    count: int
    utilization: float | None = None
    memory_used_mib: float | None = None
    memory_total_mib: float | None = None
    degraded: int = 0
    xids: tuple[int, ...] = ()
    reasons: tuple[str, ...] = ()


def _clamp01(v: float | None) -> float | None:
    return None if v is None else min(1.0, max(0.0, v))


def _add(*values: float | None) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _hist(
    exp: Exposition, name: str, where: Callable[[Labels], bool] | None = None, scale: float = 1.0
) -> tuple[float, float] | None:
    """``(sum × scale, count)`` of histogram ``name`` summed over series, or None."""
    total = exp.total(name + "_sum", where)
    count = exp.total(name + "_count", where)
    if total is None or count is None:
        return None
    return total * scale, count


def _first_hist(exp: Exposition, *names: str) -> tuple[float, float] | None:
    for n in names:
        h = _hist(exp, n)
        if h is not None:
            return h
    return None


def _served_version(exp: Exposition) -> str | None:
    return exp.label(SERVED_VERSION_METRIC, "version")


def normalise_vllm(exp: Exposition) -> EngineSample:
    """vLLM (V0 and V1). KV usage: ``kv_cache_usage_perc``, else ``gpu_cache_usage_perc``.

    ``vllm:gpu_cache_usage_perc`` was deprecated by PR #18354 (2025-05; both names emitted in
    v0.10.x), is hidden by default from ~v0.11 and removed by PR #29330 (2025-11-24).
    """
    kv = exp.highest("vllm:kv_cache_usage_perc")
    if kv is None:
        kv = exp.highest("vllm:gpu_cache_usage_perc")
    gen = exp.total("vllm:generation_tokens_total")
    model = exp.label("vllm:num_requests_running", "model_name") or _any_label(exp, "vllm:", "model_name")
    return EngineSample(
        kind="vllm",
        model=model,
        running=exp.total("vllm:num_requests_running") or 0.0,
        waiting=exp.total("vllm:num_requests_waiting") or 0.0,
        kv_usage=_clamp01(kv),
        generation_tokens=gen,
        progress=_add(gen, exp.total("vllm:prompt_tokens_total")),
        errors=exp.total("vllm:request_success_total", lambda lb: lb.get("finished_reason") == "abort") or 0.0,
        requests=exp.total("vllm:request_success_total"),
        ttft=tuple(h for h in [_hist(exp, "vllm:time_to_first_token_seconds")] if h is not None),
        itl=_first_hist(exp, "vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        version=_served_version(exp),
    )


def normalise_tgi(exp: Exposition) -> EngineSample:
    """Hugging Face TGI (v3 router). TGI exports no model label (one TGI = one model).

    KV usage is our mapping ``tgi_batch_current_max_tokens / tgi_batch_max_total_tokens``
    (tokens reserved by the running batch / batch token budget from warm-up); None when the
    budget is not exported (it is absent from the DataDog 3.x fixture).
    """
    used = exp.total("tgi_batch_current_max_tokens")
    budget = exp.total("tgi_batch_max_total_tokens")
    kv = used / budget if used is not None and budget else None
    gen = exp.total("tgi_request_generated_tokens_sum")
    return EngineSample(
        kind="tgi",
        model=None,
        running=exp.total("tgi_batch_current_size") or 0.0,
        waiting=exp.total("tgi_queue_size") or 0.0,
        kv_usage=_clamp01(kv),
        generation_tokens=gen,
        progress=_add(gen, exp.total("tgi_batch_inference_count")),
        errors=exp.total("tgi_request_failure") or 0.0,
        requests=exp.total("tgi_request_count"),
        ttft=_tgi_ttft(exp),
        itl=_hist(exp, "tgi_request_mean_time_per_token_duration"),
        version=_served_version(exp),
    )


def _tgi_ttft(exp: Exposition) -> tuple[tuple[float, float], ...]:
    """TGI exports no TTFT: queue time + prefill forward time, both as histogram pairs."""
    queue = _hist(exp, "tgi_request_queue_duration")
    prefill = _hist(exp, "tgi_batch_forward_duration", lambda lb: lb.get("method") == "prefill")
    return (queue, prefill) if queue is not None and prefill is not None else ()


def normalise_sglang(exp: Exposition) -> EngineSample:
    """SGLang (``--enable-metrics``); series carry ``model_name`` and, from 0.5.x, ``tp_rank``.

    Queue gauges are summed over ranks and ``sglang:token_usage`` is maxed.
    """
    gen = exp.total("sglang:generation_tokens_total")
    model = exp.label("sglang:num_running_reqs", "model_name") or _any_label(exp, "sglang:", "model_name")
    return EngineSample(
        kind="sglang",
        model=model,
        running=exp.total("sglang:num_running_reqs") or 0.0,
        waiting=exp.total("sglang:num_queue_reqs") or 0.0,
        kv_usage=_clamp01(exp.highest("sglang:token_usage")),
        generation_tokens=gen,
        progress=_add(gen, exp.total("sglang:prompt_tokens_total")),
        errors=exp.total("sglang:num_aborted_requests_total") or 0.0,
        has_errors=exp.has("sglang:num_aborted_requests_total"),
        requests=exp.total("sglang:num_requests_total"),
        ttft=tuple(h for h in [_hist(exp, "sglang:time_to_first_token_seconds")] if h is not None),
        itl=_first_hist(exp, "sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds"),
        version=_served_version(exp),
    )


def normalise_triton(exp: Exposition, model_hint: str | None = None) -> EngineSample:
    """Triton Inference Server, with the TensorRT-LLM backend's gauges when present.

    One Triton serves many models; with ``model_hint`` only series whose ``model`` label equals
    it are read (when any do), else every model's series are summed. Without a hint the model
    name is the TRT-LLM model, else the model with the most successful requests.
    Queue: TRT-LLM ``request_type="waiting"``, else ``nv_inference_pending_request_count``;
    running: TRT-LLM ``request_type="scheduled"`` (as GIE maps it). Progress: executions
    (``nv_inference_exec_count``), else successful requests, else the TRT-LLM iteration counter.
    """
    model_names = {lb.get("model") for n in exp.names() for lb, _ in exp.series(n)} - {None, ""}
    only: Callable[[Labels], bool] | None = None
    if model_hint is not None and model_hint in model_names:
        only = lambda lb: lb.get("model") == model_hint  # noqa: E731

    def where(extra: Callable[[Labels], bool]) -> Callable[[Labels], bool]:
        return lambda lb: extra(lb) and (only is None or only(lb))

    trt = "nv_trt_llm_request_metrics"
    waiting = exp.total(trt, where(lambda lb: lb.get("request_type") == "waiting"))
    if waiting is None:
        waiting = exp.total("nv_inference_pending_request_count", only)
    running = exp.total(trt, where(lambda lb: lb.get("request_type") == "scheduled"))
    kv = exp.highest(
        "nv_trt_llm_kv_cache_block_metrics",
        where(lambda lb: lb.get("kv_cache_block_type") == "fraction"),
    )
    progress = exp.total("nv_inference_exec_count", only)
    if progress is None:
        progress = exp.total("nv_inference_request_success", only)
    if progress is None:
        progress = exp.total(
            "nv_trt_llm_general_metrics",
            where(lambda lb: lb.get("general_type") == "iteration_counter"),
        )
    model = model_hint if only is not None else exp.label(trt, "model")
    if model is None:
        ok = exp.series("nv_inference_request_success")
        if ok:
            model = max(ok, key=lambda r: r[1])[0].get("model")
    return EngineSample(
        kind="triton",
        model=model or model_hint,
        running=running or 0.0,
        waiting=waiting or 0.0,
        kv_usage=_clamp01(kv),
        generation_tokens=None,
        progress=progress,
        errors=exp.total("nv_inference_request_failure", only) or 0.0,
        has_errors=exp.has("nv_inference_request_failure"),
        requests=_add(exp.total("nv_inference_request_success", only), exp.total("nv_inference_request_failure", only)),
        ttft=tuple(h for h in [_hist(exp, "nv_inference_first_response_histogram_ms", only, 0.001)] if h is not None),
        version=_served_version(exp),
    )


def _gpu_key(labels: Labels) -> str:
    for k in ("UUID", "uuid", "gpu_uuid"):
        if labels.get(k):
            return labels[k]
    if "gpu" in labels:
        return f"{labels.get('Hostname', '')}/{labels['gpu']}"
    return ""


def normalise_dcgm(exp: Exposition) -> GpuSample:
    """NVIDIA DCGM exporter (also the lower-case 1.x names for util / FB / XID).

    ``DCGM_FI_DEV_XID_ERRORS`` holds the *last* XID code seen; a critical code there marks the
    GPU degraded for as long as the exporter reports it. The windowed counter
    ``DCGM_EXP_XID_ERRORS_COUNT{xid}`` > 0 for a critical ``xid`` does the same. Series with
    no GPU label (dummy rows in the DataDog fixture) count toward ``degraded`` but not
    ``count`` unless they are the only ones.
    """
    keys: set[str] = set()
    for name in exp.names():
        if name.startswith(("DCGM_", "dcgm_")):
            keys.update(_gpu_key(lb) for lb, _ in exp.series(name))
    labelled = keys - {""}
    count = len(labelled) if labelled else len(keys)

    def per_gpu(*names: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for n in names:
            for lb, v in exp.series(n):
                out.setdefault(_gpu_key(lb), v)
        return out

    util = per_gpu("DCGM_FI_DEV_GPU_UTIL", "dcgm_gpu_utilization")
    used = per_gpu("DCGM_FI_DEV_FB_USED", "dcgm_fb_used")
    free = per_gpu("DCGM_FI_DEV_FB_FREE", "dcgm_fb_free")
    total = per_gpu("DCGM_FI_DEV_FB_TOTAL")
    totals = {k: v for k, v in total.items()}
    for k in used.keys() & free.keys():
        totals.setdefault(k, used[k] + free[k])

    bad: dict[str, list[str]] = {}
    xids: set[int] = set()
    for lb, v in exp.series("DCGM_FI_DEV_XID_ERRORS") + exp.series("dcgm_xid_errors"):
        code = int(v)
        if code in CRITICAL_XIDS:
            xids.add(code)
            bad.setdefault(_gpu_key(lb), []).append(f"XID {code}")
    for lb, v in exp.series("DCGM_EXP_XID_ERRORS_COUNT"):
        try:
            code = int(lb.get("xid", ""))
        except ValueError:
            continue
        if v > 0 and code in CRITICAL_XIDS:
            xids.add(code)
            bad.setdefault(_gpu_key(lb), []).append(f"XID {code}")
    for lb, v in exp.series("DCGM_FI_DEV_ROW_REMAP_FAILURE"):
        if v >= 1:
            bad.setdefault(_gpu_key(lb), []).append("row remap failure")
    for lb, v in exp.series("DCGM_EXP_GPU_HEALTH_STATUS"):
        if v >= 20:
            bad.setdefault(_gpu_key(lb), []).append(f"health watch {lb.get('health_watch', '?')} FAIL")
    reasons = tuple(f"gpu {k or '?'}: {', '.join(sorted(set(v)))}" for k, v in sorted(bad.items()))
    return GpuSample(
        count=max(count, len(bad)),
        utilization=_clamp01(sum(util.values()) / len(util) / 100.0) if util else None,
        memory_used_mib=sum(used.values()) if used else None,
        memory_total_mib=sum(totals.values()) if totals else None,
        degraded=len(bad),
        xids=tuple(sorted(xids)),
        reasons=reasons,
    )


def _any_label(exp: Exposition, prefix: str, key: str) -> str | None:
    for name in exp.names():
        if name.startswith(prefix):
            v = exp.label(name, key)
            if v:
                return v
    return None


def normalise(kind: str, exp: Exposition, model_hint: str | None = None) -> EngineSample | GpuSample:
    """Normalise a parsed exposition of ``kind``.

    Raises:
        ScrapeError: unknown kind.
    """
    if kind == "vllm":
        return normalise_vllm(exp)
    if kind == "tgi":
        return normalise_tgi(exp)
    if kind == "sglang":
        return normalise_sglang(exp)
    if kind == "triton":
        return normalise_triton(exp, model_hint)
    if kind == "dcgm":
        return normalise_dcgm(exp)
    raise ScrapeError(f"unknown fleet source kind {kind!r}")


# -- HTTP -----------------------------------------------------------------------------------


@dataclass(slots=True)
class ScrapeResult:
    """The outcome of one scrape of one source. Never raised; failures are data.

    Attributes:
        source: the inventory entry scraped.
        up: the metrics endpoint answered 200 and parsed.
        health_ok: the health endpoint answered OK (None for kinds without one).
        reasons: why the source is not fit, one short line each.
        latency_ms: wall time of the whole scrape, milliseconds.
        finished_at: ``time.monotonic()`` when the scrape finished, seconds.
        engine: the normalised engine sample (engine kinds, when up).
        gpu: the normalised GPU sample (``dcgm``, when up).
    """

    source: FleetSource
    up: bool = False
    health_ok: bool | None = None
    reasons: list[str] = field(default_factory=list)
    latency_ms: float = 0.0
    finished_at: float = 0.0
    engine: EngineSample | None = None
    gpu: GpuSample | None = None


def metrics_url(source: FleetSource) -> str:
    """The metrics URL of ``source`` (a ``dcgm`` URL that already ends in /metrics is kept)."""
    base = source.url.rstrip("/")
    if source.kind == "dcgm" and base.endswith("/metrics"):
        return base
    return base + "/metrics"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connect failed ({exc.os_error.strerror or type(exc.os_error).__name__})"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _fetch_metrics(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as resp:
        body = await resp.read()
        if resp.status != 200:
            raise ScrapeError(f"HTTP {resp.status}")
    return body.decode("utf-8", errors="replace")


async def _check_health(session: aiohttp.ClientSession, kind: str, url: str) -> str:
    """Empty string when healthy, else a short reason."""
    async with session.get(url) as resp:
        await resp.read()
        if resp.status == 200:
            return ""
        hint = ""
        if kind == "vllm" and resp.status == 503:
            hint = " (engine dead)"
        elif kind == "triton" and resp.status == 400:
            hint = " (not ready)"
        return f"health HTTP {resp.status}{hint}"


async def scrape_source(
    session: aiohttp.ClientSession,
    source: FleetSource,
    timeout_s: float,
    health_paths: Mapping[str, str] = HEALTH_PATHS,
) -> ScrapeResult:
    """Scrape ``source``'s metrics and (for engines) its health endpoint, concurrently.

    Both requests share one deadline of ``timeout_s`` seconds for the server to answer, so a
    hung server (TCP accepted, never answered, e.g. a SIGSTOPped process) is reported after
    ``timeout_s``. Parsing the exposition happens after that deadline: it is the agent's own
    work (TGI's ~100 KB exposition takes ~20 ms idle and 10x that on a CPU-starved host) and
    must not make a server that did answer in time look hung. Never raises (except on
    cancellation): every failure becomes a reason on the result.

    Args:
        session: the agent's shared client session.
        source: what to scrape.
        timeout_s: deadline for the server's answers (metrics and health together), seconds.
        health_paths: health path per engine kind.
    """
    t0 = time.monotonic()
    res = ScrapeResult(source=source)
    health_path = health_paths.get(source.kind) if source.kind != "dcgm" else None
    base = source.url.rstrip("/")
    body: list[str] = []

    async def metrics() -> None:
        try:
            body.append(await _fetch_metrics(session, metrics_url(source)))
        except Exception as exc:  # any failure is data, never a crash
            res.reasons.append(f"metrics: {_describe(exc)}")

    async def health() -> None:
        assert health_path is not None
        try:
            why = await _check_health(session, source.kind, base + health_path)
        except Exception as exc:  # any failure is data, never a crash
            why = f"health: {_describe(exc)}"
        res.health_ok = not why
        if why:
            res.reasons.append(why)

    jobs = [metrics()] if health_path is None else [metrics(), health()]
    try:
        async with asyncio.timeout(timeout_s):
            await asyncio.gather(*jobs)
    except TimeoutError:
        if not body and not any(r.startswith("metrics") for r in res.reasons):
            res.reasons.append("metrics: timeout")
        if health_path is not None and res.health_ok is None:
            res.health_ok = False
            res.reasons.append("health: timeout")
    if body:
        await _parse_into(res, body[0])
    res.finished_at = time.monotonic()
    res.latency_ms = (res.finished_at - t0) * 1000.0
    return res


async def _parse_into(res: ScrapeResult, text: str) -> None:
    """Parse and normalise a fetched exposition into ``res`` (``up`` and the sample), or add
    the reason it is unusable."""
    source = res.source
    try:
        if len(text) > PARSE_IN_THREAD_BYTES:
            exp = await asyncio.to_thread(parse_exposition, text)
        else:
            exp = parse_exposition(text)
        sample = normalise(source.kind, exp, source.model)
    except Exception as exc:  # any failure is data, never a crash
        res.reasons.append(f"metrics: {_describe(exc)}")
        return
    res.up = True
    if isinstance(sample, GpuSample):
        res.gpu = sample
    else:
        res.engine = sample


async def fetch_tgi_model(session: aiohttp.ClientSession, source: FleetSource, timeout_s: float) -> str | None:
    """The ``model_id`` TGI reports on ``GET /info`` (TGI exports no model label), or None."""
    try:
        async with asyncio.timeout(timeout_s):
            async with session.get(source.url.rstrip("/") + "/info") as resp:
                if resp.status != 200:
                    return None
                data = await resp.json(content_type=None)
    except Exception as exc:  # best effort; the source name stands in
        log.debug("fetch_tgi_model: %s: %s", source.name, _describe(exc))
        return None
    model = data.get("model_id") if isinstance(data, dict) else None
    return model if isinstance(model, str) and model else None
