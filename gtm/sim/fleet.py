"""A fleet simulator: an HTTP server that looks like an LLM serving fleet to the region agent.

It serves **real** metric samples (``gtm/sim/samples/``, provenance in ``PROVENANCE.md``) for
one engine kind, with the model label rewritten to the configured model and the load
series rewritten from a simulated state so the numbers are coherent:

* per replica, KV usage = ``load``, running = ``round(16 × load)``, waiting =
  ``round(50 × max(0, load − 0.8))`` (so a fully loaded replica has 10 queued, above GIE's
  saturation threshold of 5); the fleet's series are the sums over ``replicas``;
* the decode-token counter grows at ``tokens_per_s × load`` tokens/s (the whole fleet),
  integrated over time, and stands still while ``dead`` or ``wedged``.

* requests finish at ``tokens_per_s × load / TOKENS_PER_REQUEST`` per second; a share
  ``error_rate`` of them fails (vLLM ``request_success_total{finished_reason="abort"}``, SGLang
  ``num_aborted_requests_total``, TGI ``tgi_request_failure``); every finished request adds one
  observation of ``ttft_s`` / ``itl_s`` (× ``1 ± jitter``, drawn per scrape interval from a
  seeded generator) to the TTFT / ITL histograms (``_sum``, ``_count`` and cumulative
  ``_bucket`` series stay coherent; TGI's TTFT is split between queue time and prefill);
* the served version is exported as ``gtm_served_version_info{version="..."} 1`` so the agent
  sees a deploy (``POST /_sim/state {"version": "v2"}``).

Modes (``POST /_sim/state`` with JSON ``{"mode": ..., "load": 0.0-1.0}``; ``tokens_per_s``,
``version``, ``error_rate`` (0..1), ``ttft_s``, ``itl_s`` (seconds) and ``jitter`` (0..1) may be
set too; ``GET /_sim/state`` returns the state):

* ``healthy``: health 200.
* ``dead``: health fails like the engine does when its core died — vLLM 503 (EngineDeadError,
  PR #24897), TGI 503 ``{"error":"unhealthy","error_type":"healthcheck"}``, SGLang 503,
  Triton 400; metrics are still served, frozen.
* ``wedged``: health 200 (vLLM's ``/health`` does not probe generation), at least 2 requests
  waiting per replica and the token counter frozen (vLLM issue #39863); completion requests
  are accepted and never answered.
* ``gpu-degraded``: serving is normal, but the DCGM sample at ``/dcgm/metrics`` reports
  XID 79 (GPU fallen off the bus) on its first GPU.

Completions and vantage points (``gtm.sim.completions``): the kind's completion API answers
``answer`` (settable) word by word, paced by ``ttft_s`` / ``itl_s``; ``malformed: true`` makes
it send garbage; ``blocked_vantage: [regions]`` / ``blocked_all_vantage: true`` make requests
carrying ``X-GTM-Vantage`` from those regions hang (the fleet's public endpoint is unreachable
from there).

Every completion request is counted as served or failed (``completions_served``,
``completions_failed``, and per ``X-GTM-Client`` header in ``completions_by_client``).

``POST /_sim/kill {"for_s": N}`` really kills the fleet for N seconds (``gtm.sim.outage``): it
stops listening and resets every connection, then comes back on the same host and port.

Routes: ``/metrics``, the kind's health path(s), ``/dcgm/metrics`` (DCGM exporter sample;
GPU utilisation = ``100 × load`` %), ``/v1/models``, TGI ``/info``, the kind's completion
endpoints, ``/_sim/state``, ``/_sim/kill``.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from aiohttp import web

from gtm.log import get_logger
from gtm.sim.outage import OUTAGE_KEY, Outage, kill_handler

log = get_logger("sim")

KINDS = ("vllm", "tgi", "sglang", "triton")
"""Engine kinds the simulator can play."""

MODES = ("healthy", "dead", "wedged", "gpu-degraded")
"""Simulated fleet states."""

SAMPLES: dict[str, tuple[str, ...]] = {
    "vllm": ("vllm-0.4.3-plus-v1-lines-datadog-fixture.prom",),
    "tgi": ("tgi-3.x-datadog-fixture.prom",),
    "sglang": ("sglang-0.5.10-datadog-fixture.prom",),
    "triton": (
        "triton-trtllm-backend-readme-example.prom",
        "triton-docs-queue-summary-example.prom",
    ),
    "dcgm": ("dcgm-exporter-mixed-t4-a10g-datadog-fixture.prom",),
}
"""Sample files served per kind (concatenated in this order)."""

HEALTH_ROUTES: dict[str, tuple[str, ...]] = {
    "vllm": ("/health",),
    "tgi": ("/health",),
    "sglang": ("/health_generate", "/health"),
    "triton": ("/v2/health/ready", "/v2/health/live"),
}

RUNNING_PER_REPLICA = 16
"""Running requests of one replica at load 1.0."""
TGI_TOKEN_BUDGET = 16_000
"""``tgi_batch_max_total_tokens`` of one simulated TGI replica, tokens."""
TOKENS_PER_REQUEST = 100.0
"""Mean decode tokens per request, used to advance Triton's request counters."""

_LINE = re.compile(r"^(?P<head>[A-Za-z_:][A-Za-z0-9_:]*(?:\{.*\})?\s+)(?P<value>\S+)(?P<rest>.*)$")
_MODEL_LABEL = {
    "vllm": re.compile(r'(model_name=")(?:[^"\\]|\\.)*(")'),
    "sglang": re.compile(r'(model_name=")(?:[^"\\]|\\.)*(")'),
    "triton": re.compile(r'(\bmodel=")(?:[^"\\]|\\.)*(")'),
}
_FRACTIONS = frozenset({"kv", "util", "xid"})
_LE = re.compile(r'\ble="([^"]+)"')

_HISTOGRAMS: dict[str, dict[str, str]] = {
    "vllm": {
        "vllm:time_to_first_token_seconds": "ttft",
        "vllm:inter_token_latency_seconds": "itl",
        "vllm:time_per_output_token_seconds": "itl",
    },
    "sglang": {
        "sglang:time_to_first_token_seconds": "ttft",
        "sglang:inter_token_latency_seconds": "itl",
        "sglang:time_per_output_token_seconds": "itl",
    },
    "tgi": {
        "tgi_request_queue_duration": "queue",
        "tgi_batch_forward_duration": "prefill",
        "tgi_request_mean_time_per_token_duration": "itl",
    },
}
"""Latency histograms simulated per kind: family → simulated quantity (slot ``h:<qty>:<part>``)."""

DEFAULT_ANSWER = "Hello! How can I help you today?"
"""What the simulated fleet generates for any prompt."""

TGI_QUEUE_SHARE = 0.5
"""Share of the simulated TTFT that TGI spends queued (the rest is prefill)."""


def _hist_slot(kind: str, name: str, line: str) -> str | None:
    for suffix in ("_sum", "_count", "_bucket"):
        if not name.endswith(suffix):
            continue
        qty = _HISTOGRAMS.get(kind, {}).get(name[: -len(suffix)])
        if qty is None or (qty == "prefill" and 'method="prefill"' not in line):
            return None
        if suffix == "_bucket":
            m = _LE.search(line)
            return f"h:{qty}:le={m.group(1)}" if m else None
        return f"h:{qty}:{suffix[1:]}"
    return None


def _slot(kind: str, line: str) -> str | None:
    """Which simulated quantity a sample line carries, or None to serve it unchanged."""
    name = line.split("{", 1)[0].split(" ", 1)[0]
    hist = _hist_slot(kind, name, line)
    if hist is not None:
        return hist
    if kind == "vllm":
        if name == "vllm:request_success_total":
            return "req_abort" if 'finished_reason="abort"' in line else "req_ok"
        return {
            "vllm:num_requests_running": "running",
            "vllm:num_requests_waiting": "waiting",
            "vllm:kv_cache_usage_perc": "kv",
            "vllm:gpu_cache_usage_perc": "kv",
            "vllm:generation_tokens_total": "tokens",
        }.get(name)
    if kind == "tgi":
        return {
            "tgi_queue_size": "waiting",
            "tgi_batch_current_size": "running",
            "tgi_batch_current_max_tokens": "kv_tokens",
            "tgi_request_generated_tokens_sum": "tokens",
            "tgi_request_count": "req_all",
            "tgi_request_success": "req_ok",
            "tgi_request_failure": "req_fail",
        }.get(name)
    if kind == "sglang":
        return {
            "sglang:num_running_reqs": "running",
            "sglang:num_queue_reqs": "waiting",
            "sglang:token_usage": "kv",
            "sglang:generation_tokens_total": "tokens",
            "sglang:gen_throughput": "rate",
            "sglang:num_requests_total": "req_all",
            "sglang:num_aborted_requests_total": "req_fail",
        }.get(name)
    if kind == "triton":
        if name == "nv_trt_llm_request_metrics":
            if 'request_type="waiting"' in line:
                return "waiting"
            if 'request_type="scheduled"' in line:
                return "running"
            if 'request_type="active"' in line:
                return "active"
        if name == "nv_trt_llm_kv_cache_block_metrics" and 'type="fraction"' in line:
            return "kv"
        if name == "nv_trt_llm_general_metrics" and "iteration_counter" in line:
            return "tokens"
        if name == "nv_inference_request_success":
            return "requests"
        return None
    if kind == "dcgm":
        return {"DCGM_FI_DEV_GPU_UTIL": "util", "DCGM_FI_DEV_XID_ERRORS": "xid"}.get(name)
    return None


@dataclass(slots=True)
class _Template:
    """A sample exposition split into static text and value slots."""

    parts: list[str | tuple[str, int]]
    """Static text, or ``(slot, number of series sharing the slot)``."""
    base: dict[str, float]
    """Each slot's value in the original sample (summed over its series)."""


def _compile(kind: str, text: str, model: str) -> _Template:
    relabel = _MODEL_LABEL.get(kind)
    raw: list[str | tuple[str, str]] = []
    counts: dict[str, int] = {}
    base: dict[str, float] = {}
    for line in text.splitlines():
        if relabel is not None and not line.startswith("#"):
            line = relabel.sub(lambda m: m.group(1) + _escape(model) + m.group(2), line)
        m = _LINE.match(line) if not line.startswith("#") else None
        slot = _slot(kind, line) if m else None
        if m is None or slot is None:
            raw.append(line + "\n")
            continue
        counts[slot] = counts.get(slot, 0) + 1
        with contextlib.suppress(ValueError):
            base[slot] = base.get(slot, 0.0) + float(m["value"])
        raw.append(m["head"])
        raw.append((slot, ""))
        raw.append(m["rest"] + "\n")
        if slot == "req_ok" and kind == "vllm" and 'finished_reason="abort"' not in text and "req_abort" not in counts:
            # The sample has no aborted requests: add the series, so errors show up coherently.
            head = re.sub(r'finished_reason="[^"]*"', 'finished_reason="abort"', m["head"])
            raw.extend([head, ("req_abort", ""), "\n"])
            counts["req_abort"] = 1
    if kind == "tgi" and "tgi_batch_max_total_tokens" not in text:
        raw.append(
            "# HELP tgi_batch_max_total_tokens Maximum tokens for the current batch\n"
            "# TYPE tgi_batch_max_total_tokens gauge\n"
            "tgi_batch_max_total_tokens "
        )
        raw.append(("budget", ""))
        raw.append("\n")
        counts["budget"] = 1
    if kind == "sglang" and "sglang:num_aborted_requests_total" not in text:
        raw.append(
            "# HELP sglang:num_aborted_requests_total Number of requests aborted.\n"
            "# TYPE sglang:num_aborted_requests_total counter\n"
            f'sglang:num_aborted_requests_total{{model_name="{_escape(model)}"}} '
        )
        raw.append(("req_fail", ""))
        raw.append("\n")
        counts["req_fail"] = 1
    parts: list[str | tuple[str, int]] = [p if isinstance(p, str) else (p[0], counts[p[0]]) for p in raw]
    return _Template(parts=parts, base=base)


def _le(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _fmt(v: float) -> str:
    return repr(float(v))


def load_sample(kind: str) -> str:
    """The raw sample exposition served for ``kind`` (``vllm``…``triton``, ``dcgm``)."""
    root = resources.files("gtm.sim").joinpath("samples")
    return "".join(root.joinpath(name).read_text(encoding="utf-8") for name in SAMPLES[kind])


@dataclass
class FleetSim:
    """The simulated state of one fleet (``replicas`` replicas behind one URL).

    Attributes:
        kind: engine kind played (``vllm``, ``tgi``, ``sglang``, ``triton``).
        model: served model name written into the samples' model label.
        version: model version, exported as ``gtm_served_version_info{version=...}`` (the
            agent prefers it to the inventory's ``FleetSource.version``).
        replicas: replicas simulated; load series are summed over them.
        tokens_per_s: the whole fleet's decode rate at load 1.0, tokens/s.
        mode: one of ``MODES``.
        load: offered load per replica, 0..1.
        error_rate: share of finished requests that fail, 0..1.
        ttft_s: time to first token of a request, seconds.
        itl_s: inter-token latency, seconds.
        jitter: relative spread of the latencies per scrape interval, 0..1.
        seed: seed of the jitter's generator.
        clock: monotonic clock, seconds (replaceable in tests).
        url: ``http://host:port`` once started.
        answer: the text completions generate (word tokens; "" gives an empty answer).
        malformed: completion answers are garbage instead of the API's JSON.
        blocked_vantage: regions whose vantage probes (``X-GTM-Vantage``) hang.
        blocked_all_vantage: every vantage probe hangs.
        closing: the server is shutting down (hung requests give up).
        completions_served: completion requests answered in full with a well-formed 200.
        completions_failed: completion requests answered otherwise (an error status, a
            malformed or interrupted answer, a wedge or shutdown the request gave up on).
        completions_in_flight: completion requests being answered now.
        completions_by_client: the same two counts (``served``, ``failed``) per value of the
            requests' ``X-GTM-Client`` header (``gtm.agent.completion.CLIENT_HEADER``); requests
            without it (the agents' probes) are not in it.
    """

    kind: str
    model: str
    version: str = ""
    replicas: int = 1
    tokens_per_s: float = 1000.0
    mode: str = "healthy"
    load: float = 0.3
    error_rate: float = 0.0
    ttft_s: float = 0.2
    itl_s: float = 0.02
    jitter: float = 0.1
    seed: int = 0
    clock: Callable[[], float] = time.monotonic
    url: str = ""
    answer: str = DEFAULT_ANSWER
    malformed: bool = False
    blocked_vantage: frozenset[str] = frozenset()
    blocked_all_vantage: bool = False
    closing: bool = False
    completions_served: int = 0
    completions_failed: int = 0
    completions_in_flight: int = 0
    completions_by_client: dict[str, dict[str, int]] = field(default_factory=dict)
    _templates: dict[str, _Template] = field(default_factory=dict, repr=False)
    _base: dict[str, float] = field(default_factory=dict, repr=False)
    _tokens: float = field(default=0.0, repr=False)
    _t: float = field(default=0.0, repr=False)
    _hist: dict[str, float] = field(default_factory=dict, repr=False)
    _counters: dict[str, float] = field(default_factory=dict, repr=False)
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; use one of {KINDS}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; use one of {MODES}")
        if not 0.0 <= self.load <= 1.0:
            raise ValueError("load must be within 0..1")
        if self.replicas < 1:
            raise ValueError("replicas must be >= 1")
        self._templates = {
            self.kind: _compile(self.kind, load_sample(self.kind), self.model),
            "dcgm": _compile("dcgm", load_sample("dcgm"), self.model),
        }
        self._base = dict(self._templates[self.kind].base)
        self._tokens = self._base.get("tokens", 0.0)
        self._hist = {k: v for k, v in self._base.items() if k.startswith("h:")}
        self._counters = {k: self._base.get(k, 0.0) for k in ("req_ok", "req_all", "req_abort", "req_fail")}
        self._rng = random.Random(self.seed)
        self._check_quality(self.error_rate, self.ttft_s, self.itl_s, self.jitter)
        self._t = self.clock()

    # -- state ----------------------------------------------------------------------------

    @property
    def rate(self) -> float:
        """Current decode rate of the fleet, tokens/s (0 while dead or wedged)."""
        if self.mode in ("dead", "wedged"):
            return 0.0
        return self.tokens_per_s * self.load

    @property
    def _produced(self) -> float:
        """Tokens generated since the simulator started."""
        return self._tokens - self._base.get("tokens", 0.0)

    def _advance(self) -> None:
        now = self.clock()
        dt = max(0.0, now - self._t)
        self._tokens += self.rate * dt
        self._t = now
        requests = self.rate * dt / TOKENS_PER_REQUEST
        if requests <= 0:
            return
        failed = requests * self.error_rate
        c = self._counters
        c["req_all"] += requests
        c["req_ok"] += requests - failed
        c["req_abort"] += failed
        c["req_fail"] += failed
        spread = 1.0 + self.jitter * self._rng.uniform(-1.0, 1.0)
        ttft = self.ttft_s * spread
        observed = {
            "ttft": ttft,
            "queue": ttft * TGI_QUEUE_SHARE,
            "prefill": ttft * (1 - TGI_QUEUE_SHARE),
            "itl": self.itl_s * spread,
        }
        for qty, value in observed.items():
            # Each finished request is one observation (TGI counts prefill batches; one per
            # request here). Buckets are cumulative: every bucket with le >= value grows.
            prefix = f"h:{qty}:"
            for key in [k for k in self._hist if k.startswith(prefix)]:
                part = key[len(prefix):]
                if part == "sum":
                    self._hist[key] += value * requests
                elif part == "count" or (part.startswith("le=") and _le(part[3:]) >= value):
                    self._hist[key] += requests

    @staticmethod
    def _check_quality(error_rate: float | None, ttft_s: float | None, itl_s: float | None,
                       jitter: float | None) -> None:
        if error_rate is not None and not 0.0 <= error_rate <= 1.0:
            raise ValueError("error_rate must be within 0..1")
        if jitter is not None and not 0.0 <= jitter <= 1.0:
            raise ValueError("jitter must be within 0..1")
        if (ttft_s is not None and ttft_s < 0) or (itl_s is not None and itl_s < 0):
            raise ValueError("ttft_s and itl_s must be >= 0")

    def set_state(
        self,
        mode: str | None = None,
        load: float | None = None,
        tokens_per_s: float | None = None,
        version: str | None = None,
        *,
        error_rate: float | None = None,
        ttft_s: float | None = None,
        itl_s: float | None = None,
        jitter: float | None = None,
        answer: str | None = None,
        malformed: bool | None = None,
        blocked_vantage: frozenset[str] | None = None,
        blocked_all_vantage: bool | None = None,
    ) -> None:
        """Change the simulated state (the counters stay continuous).

        Raises:
            ValueError: unknown mode, load outside 0..1, a negative rate or latency, or an
                error rate or jitter outside 0..1.
        """
        if mode is not None and mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
        if load is not None and not 0.0 <= load <= 1.0:
            raise ValueError("load must be within 0..1")
        if tokens_per_s is not None and tokens_per_s < 0:
            raise ValueError("tokens_per_s must be >= 0")
        self._check_quality(error_rate, ttft_s, itl_s, jitter)
        self._advance()
        if mode is not None:
            if mode != self.mode:
                log.info("set_state: %s fleet %s -> %s", self.kind, self.mode, mode)
            self.mode = mode
        if load is not None:
            self.load = load
        if tokens_per_s is not None:
            self.tokens_per_s = tokens_per_s
        if version is not None:
            self.version = version
        if error_rate is not None:
            self.error_rate = error_rate
        if ttft_s is not None:
            self.ttft_s = ttft_s
        if itl_s is not None:
            self.itl_s = itl_s
        if jitter is not None:
            self.jitter = jitter
        if answer is not None:
            self.answer = answer
        if malformed is not None:
            self.malformed = malformed
        if blocked_vantage is not None:
            self.blocked_vantage = frozenset(blocked_vantage)
        if blocked_all_vantage is not None:
            self.blocked_all_vantage = blocked_all_vantage

    def count_completion(self, ok: bool, client: str | None = None) -> None:
        """Count one completion request served (``ok``) or failed, overall and for ``client``."""
        if ok:
            self.completions_served += 1
        else:
            self.completions_failed += 1
        if client:
            per = self.completions_by_client.setdefault(client, {"served": 0, "failed": 0})
            per["served" if ok else "failed"] += 1

    def blocks_vantage(self, region: str) -> bool:
        """Whether probes from vantage point ``region`` are dropped now."""
        return self.blocked_all_vantage or region in self.blocked_vantage

    def state(self) -> dict[str, Any]:
        """The state as JSON-ready data."""
        self._advance()
        return {
            "kind": self.kind,
            "model": self.model,
            "version": self.version,
            "replicas": self.replicas,
            "mode": self.mode,
            "load": self.load,
            "tokens_per_s": self.tokens_per_s,
            "error_rate": self.error_rate,
            "ttft_s": self.ttft_s,
            "itl_s": self.itl_s,
            "jitter": self.jitter,
            "answer": self.answer,
            "malformed": self.malformed,
            "blocked_vantage": sorted(self.blocked_vantage),
            "blocked_all_vantage": self.blocked_all_vantage,
            "generation_tokens_total": self._tokens,
            "completions_served": self.completions_served,
            "completions_failed": self.completions_failed,
            "completions_in_flight": self.completions_in_flight,
            "completions_by_client": {k: dict(v) for k, v in sorted(self.completions_by_client.items())},
            "values": self.values(),
        }

    def values(self) -> dict[str, float]:
        """Every slot's value now (fleet totals; fractions per replica)."""
        self._advance()
        r = self.replicas
        running = round(RUNNING_PER_REPLICA * self.load) * r
        waiting = round(50 * max(0.0, self.load - 0.8)) * r
        if self.mode == "wedged":
            waiting = max(waiting, 2 * r)
        return {
            "running": float(running),
            "active": float(running),
            "waiting": float(waiting),
            "kv": min(1.0, self.load),
            "kv_tokens": float(round(TGI_TOKEN_BUDGET * min(1.0, self.load)) * r),
            "budget": float(TGI_TOKEN_BUDGET * r),
            "tokens": float(int(self._tokens)),
            "rate": self.rate,
            "requests": float(int(self._base.get("requests", 0.0) + self._produced / TOKENS_PER_REQUEST)),
            "util": round(100.0 * self.load, 1) if self.mode != "dead" else 0.0,
            "xid": 79.0 if self.mode == "gpu-degraded" else 0.0,
            **self._counters,
            **self._hist,
        }

    def render(self, which: str | None = None) -> str:
        """The exposition served now: the engine's (default) or ``"dcgm"``."""
        tpl = self._templates[which or self.kind]
        vals = self.values()
        out: list[str] = []
        for p in tpl.parts:
            if isinstance(p, str):
                out.append(p)
                continue
            slot, n = p
            v = vals[slot]
            out.append(_fmt(v if slot in _FRACTIONS else v / n))
        if which is None and self.version:
            label = "model" if self.kind == "triton" else "model_name"
            out.append(
                "# HELP gtm_served_version_info Model version this fleet serves.\n"
                "# TYPE gtm_served_version_info gauge\n"
                f'gtm_served_version_info{{{label}="{_escape(self.model)}",version="{_escape(self.version)}"}} 1.0\n'
            )
        return "".join(out)

    @property
    def healthy_status(self) -> int:
        """HTTP status the health endpoint answers now."""
        if self.mode != "dead":
            return 200
        return 400 if self.kind == "triton" else 503


# -- HTTP app -------------------------------------------------------------------------------

SIM_KEY: web.AppKey[FleetSim] = web.AppKey("sim", FleetSim)

_TEXT_FORMAT = "text/plain; version=0.0.4; charset=utf-8"


async def _metrics(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    return web.Response(body=sim.render().encode(), headers={"Content-Type": _TEXT_FORMAT})


async def _dcgm(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    return web.Response(body=sim.render("dcgm").encode(), headers={"Content-Type": _TEXT_FORMAT})


async def _health(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    status = sim.healthy_status
    if status == 200:
        return web.Response(status=200)
    if sim.kind == "tgi":
        return web.json_response({"error": "unhealthy", "error_type": "healthcheck"}, status=status)
    return web.Response(status=status)


async def _models(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    return web.json_response(
        {
            "object": "list",
            "data": [{"id": sim.model, "object": "model", "root": sim.model, "owned_by": sim.kind}],
        }
    )


async def _info(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    return web.json_response(
        {
            "model_id": sim.model,
            "model_sha": None,
            "max_concurrent_requests": 128 * sim.replicas,
            "max_total_tokens": 512,
            "router": "text-generation-router",
            "version": "3.3.5",
        }
    )


async def _get_state(request: web.Request) -> web.Response:
    return web.json_response(request.app[SIM_KEY].state())


async def _post_state(request: web.Request) -> web.Response:
    sim = request.app[SIM_KEY]
    try:
        body = await request.json()
        if not isinstance(body, dict):
            raise ValueError("body must be a JSON object")
        floats = ("load", "tokens_per_s", "error_rate", "ttft_s", "itl_s", "jitter")
        flags = ("malformed", "blocked_all_vantage")
        unknown = set(body) - {"mode", "version", "answer", "blocked_vantage", *floats, *flags}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        num = {k: None if body.get(k) is None else float(body[k]) for k in floats}
        for k in flags:
            if body.get(k) is not None and not isinstance(body[k], bool):
                raise ValueError(f"{k} must be true or false")
        answer = body.get("answer")
        if answer is not None and not isinstance(answer, str):
            raise ValueError("answer must be a string")
        blocked = body.get("blocked_vantage")
        if blocked is not None and not (isinstance(blocked, list) and all(isinstance(r, str) for r in blocked)):
            raise ValueError("blocked_vantage must be a list of region names")
        sim.set_state(
            mode=body.get("mode"),
            load=num["load"],
            tokens_per_s=num["tokens_per_s"],
            version=body.get("version"),
            error_rate=num["error_rate"],
            ttft_s=num["ttft_s"],
            itl_s=num["itl_s"],
            jitter=num["jitter"],
            answer=answer,
            malformed=body.get("malformed"),
            blocked_vantage=None if blocked is None else frozenset(blocked),
            blocked_all_vantage=body.get("blocked_all_vantage"),
        )
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(sim.state())


def make_app(sim: FleetSim) -> web.Application:
    """The aiohttp application serving ``sim``."""
    # Imported here: the completion handlers read the FleetSim defined in this module.
    from gtm.sim.completions import add_routes, vantage_gate

    app = web.Application(middlewares=[vantage_gate])
    app[SIM_KEY] = sim

    async def _closing(_app: web.Application) -> None:
        sim.closing = True  # hung completions and blocked probes give up

    app.on_shutdown.append(_closing)
    add_routes(app, sim.kind)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/dcgm/metrics", _dcgm)
    for path in HEALTH_ROUTES[sim.kind]:
        app.router.add_get(path, _health)
    app.router.add_get("/v1/models", _models)
    if sim.kind == "tgi":
        app.router.add_get("/info", _info)
    app.router.add_get("/_sim/state", _get_state)
    app.router.add_post("/_sim/state", _post_state)
    app.router.add_post("/_sim/kill", kill_handler)
    return app


async def start_fleet(
    kind: str,
    host: str,
    port: int,
    model: str,
    version: str = "",
    replicas: int = 1,
    *,
    tokens_per_s: float = 1000.0,
    load: float = 0.3,
    mode: str = "healthy",
    seed: int = 0,
) -> tuple[web.AppRunner, FleetSim]:
    """Start a simulated fleet in this process.

    Args:
        kind: ``vllm``, ``tgi``, ``sglang`` or ``triton``.
        host: address to listen on.
        port: TCP port; 0 picks a free one (read it from ``sim.url``).
        model: served model name.
        version: model version.
        replicas: replicas behind the URL.
        tokens_per_s: the fleet's decode rate at load 1.0, tokens/s.
        load: initial load per replica, 0..1.
        mode: initial mode, one of ``MODES``.
        seed: seed of the latency jitter (give each fleet its own).

    Returns:
        ``(runner, sim)``; stop it with ``await runner.cleanup()``.
    """
    sim = FleetSim(
        kind=kind,
        model=model,
        version=version,
        replicas=replicas,
        tokens_per_s=tokens_per_s,
        load=load,
        mode=mode,
        seed=seed,
    )
    app = make_app(sim)
    outage = Outage(web.AppRunner(app, access_log=None, handle_signals=False), host, port)
    app[OUTAGE_KEY] = outage

    async def _no_revival(_app: web.Application) -> None:
        await outage.close()

    app.on_shutdown.append(_no_revival)
    runner = outage.runner
    await runner.setup()
    await outage.start_site()
    bound = port
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            bound = int(addr[1])
            break
    outage.port = bound
    shown = f"[{host}]" if ":" in host else host
    sim.url = f"http://{shown}:{bound}"
    log.info("start_fleet: %s fleet %s (%d replicas) at %s", kind, model, replicas, sim.url)
    return runner, sim
