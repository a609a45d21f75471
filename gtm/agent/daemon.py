"""The region agent: scrape every fleet source, judge the region, publish a FleetReport.

One :class:`RegionAgent` per region. Each *check* scrapes every source concurrently (one
shared ``aiohttp.ClientSession`` with explicit timeouts) and turns the results into a
:class:`~gtm.models.report.FleetReport`; :meth:`RegionAgent.check_once` does exactly that and
nothing else, so tests can drive it. :meth:`RegionAgent.run` loops checks and decides when to
write to Redis:

* **at once** (``put_report(changed=True)``: SET + stream entry + wake-up event) when the
  verdict, the healthy replica count or the set of failing sources changes, or the region's
  spare capacity moves by more than ``capacity_change`` (10 %);
* after a verdict change, on every one of the next ``publish_checks`` checks, polled every
  ``transition_poll_s`` instead of ``scrape_interval_s``, so the engine's rise/fall counters
  (``consecutive_ok`` / ``consecutive_fail``) count up quickly;
* otherwise once per ``heartbeat_s`` (``put_report(changed=False)``: one ``SET PX``) — in
  steady state that is the only Redis traffic. ``writes`` counts successful writes.

Writes run in a separate, supervised writer task, so a slow or absent Redis never delays a
check. A failed write (``StoreError``) is logged once per outage and retried with capped
exponential backoff, always with the freshest report; redis-py reconnects by itself when the
server returns.

Spare capacity (see :func:`source_spare`): for a healthy source with ``r`` replicas, KV usage
``kv`` (0..1, missing = 0) and ``w`` waiting requests, the per-replica load is
``max(kv, min(1, (w / r) / 5))`` — GIE's saturation detector calls a replica saturated at
``waiting > 5`` or ``kv > 0.8`` — and its spare capacity is ``r × (1 − load)`` idle-replica
equivalents (unit ``replicas``). Unhealthy sources contribute 0 (all their replicas count
unhealthy). With ``Region.capacity_per_replica`` (tokens/s of one idle replica) the figure is
multiplied by it and the unit is ``tokens/s``. A model's spare capacity sums its sources; the
region's sums its models. ``tokens_per_s`` is the decode-token counter's delta over the wall
time between two scrapes (a counter that goes down, i.e. a restart, yields no rate for that
interval).

Canary signals (``ttft_s``, ``itl_s``, ``requests_per_s``, ``error_rate``; see
``gtm.agent.scrape`` for the metrics per engine): per source, the deltas of each histogram's
``_sum`` and ``_count`` and of the request / error counters between two consecutive scrapes;
a model's value is the count-weighted mean over its healthy sources (error rate: Δerrors /
Δrequests summed over the sources that export an error counter). An interval in which no
request finished gives None, and so does a counter that went down (a restart). The served
version is the one the engine exports (``gtm_served_version_info``), else the inventory's;
``replicas_by_version`` counts healthy replicas per version.

Wedge heuristic (vLLM issue #39863: EngineCore hung while HTTP answers 200): a source with
``waiting > 0`` whose progress counter (decode + prefill tokens, see ``gtm.agent.scrape``) has
not grown over ``wedge_checks`` consecutive scrapes spanning at least ``wedge_min_s`` seconds
is unhealthy ("wedged").

Synthetic completion probes (``gtm.agent.probe``): every ``probe_interval_s`` each serving
source gets a small real completion request, timed to the first token; a source whose last
``probe_fall`` probes failed is unhealthy with the probe's reason (so ``consecutive_fail``
grows and the engine's fall applies). A probe that has not finished yet is not a failure.
Sources report ``probe_ok`` / ``probe_ttft_ms``; models ``probe_ttft_s`` / ``probe_success``.

Vantage point (``gtm.agent.vantage``): given the other regions (``peers``), the agent also
probes their ``vantage_url`` every ``vantage_interval_s`` and writes a ``VantageReport``.

Anycast (``gtm.agent.bgp``, ``gtm agent --bgp exabgp``): given a ``BgpSpeaker``, every report
is handed to it (``observe``) so a failing fleet is withdrawn at once, and on stop the agent
waits for it to withdraw every prefix before it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, Field
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from gtm.agent.bgp import BgpSpeaker
from gtm.agent.clock import ClockSkew
from gtm.agent.probe import STALL_SLACK_S, Prober
from gtm.agent.scrape import (
    HEALTH_PATHS,
    EngineSample,
    ScrapeResult,
    fetch_tgi_model,
    scrape_source,
)
from gtm.agent.stall import LoopStallMonitor
from gtm.agent.vantage import VantagePoint, vantage_targets
from gtm.errors import StoreError
from gtm.log import get_logger
from gtm.models.region import FleetSource, Region
from gtm.models.report import FleetReport, GpuStats, ModelStats, SourceStatus
from gtm.store.store import Store
from gtm.tasks import Supervisor

log = get_logger("agent")

SATURATION_WAITING = 5.0
"""Queued requests per replica at which a replica counts as fully loaded (GIE EPP
saturation detector default ``waiting > 5``; its KV threshold is 0.8)."""

UNKNOWN_MODEL = "unknown"
"""Model key for sources that never said what they serve and have no ``model`` configured."""


class AgentSettings(BaseModel):
    """Timing and thresholds of a region agent.

    Defaults target: a killed fleet excluded from DNS in a median ≤ 0.5 s and a hung one
    (SIGSTOPped: TCP accepted, never answered) in ≤ 1.5 s, with the engine needing ``fall=2``
    consecutive failed checks — and no false failover on a CPU-starved host (``make bench``'s
    false-positive run: every core busy with ``stress-ng``).

    How the scrape timeout was chosen: a hung fleet is excluded after about
    ``scrape_interval_s / 2 + 2 × scrape_timeout_s`` (two timed-out checks back to back; the
    check after a failed one starts at once), so the 1.5 s target bounds the timeout at about
    0.6 s. A healthy fleet is failed over only by two consecutive scrapes that each go
    unanswered for ``scrape_timeout_s``; one slow scrape is one failed check (the region is
    ``degraded`` and keeps serving). Under ``stress-ng --cpu 0`` on 2 cores, with the old
    0.4 s deadline that also covered the agent's own parsing of TGI's 100 KB exposition, TGI
    scrapes took up to 0.42 s and failed single checks twice in 120 s. Parsing is now outside
    the deadline (``gtm.agent.scrape``) and the timeout is 0.5 s: over 300 s of that load no
    check failed, and a hung fleet left the answers in a median 1.24 s (killed: 0.22 s).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scrape_interval_s: float = Field(default=0.25, gt=0)
    """Time between the starts of two checks in steady state, seconds."""
    scrape_timeout_s: float = Field(default=0.5, gt=0)
    """Deadline for one source's answers (metrics and health together, parsing excluded),
    seconds. Raising it slows hung-fleet detection by twice the increase (see above)."""
    heartbeat_s: float = Field(default=2.0, gt=0)
    """A report is written at least this often, seconds (also ``FleetReport.interval_s``)."""
    report_ttl_s: float = Field(default=6.0, gt=0)
    """Expiry of the report key in Redis, seconds; an expired report means *unknown*."""
    transition_poll_s: float = Field(default=0.1, gt=0)
    """Time between checks while the verdict is changing, seconds."""
    publish_checks: int = Field(default=5, ge=0)
    """After a verdict change, publish each of this many following checks."""
    capacity_change: float = Field(default=0.10, ge=0)
    """Relative move of spare capacity (fraction of the larger value) that triggers a write."""
    wedge_checks: int = Field(default=3, ge=1)
    """Consecutive scrapes without progress (while requests wait) before a source is wedged."""
    wedge_min_s: float = Field(default=5.0, ge=0)
    """...and the stall must also have lasted at least this long, seconds."""
    write_timeout_s: float = Field(default=1.0, gt=0)
    """Deadline for one report write to Redis, seconds."""
    retry_initial_s: float = Field(default=0.1, gt=0)
    """First backoff after a failed write, seconds (doubles per failure; plus a random jitter of
    up to this much, so agents do not retry in step after a Redis outage)."""
    retry_max_s: float = Field(default=2.0, gt=0)
    """Backoff cap between write retries, seconds."""
    info_retry_s: float = Field(default=10.0, gt=0)
    """How often to retry learning a TGI model name from ``/info``, seconds."""
    health_paths: Mapping[str, str] = Field(default_factory=lambda: dict(HEALTH_PATHS))
    """Health path per engine kind (e.g. ``sglang`` → ``/health`` for pure liveness)."""
    clock_check_s: float = Field(default=60.0, gt=0)
    """How often the agent measures its clock against the Redis server's ``TIME``, seconds
    (also once at start; ``FleetReport.clock_skew_s``)."""
    max_clock_skew_s: float = Field(default=5.0, gt=0)
    """Clock skew against Redis above which the agent logs a warning, seconds: the policy's
    ``health.max_clock_skew_s`` (default 5 s), beyond which the controller rejects its reports."""
    probe_interval_s: float = Field(default=1.0, gt=0)
    """Time between the starts of two synthetic completion probes of a source, seconds."""
    probe_timeout_s: float = Field(default=2.0, gt=0)
    """Deadline of one probe (first token and end of the answer), seconds."""
    probe_fall: int = Field(default=2, ge=1)
    """Consecutive failed probes before a source counts as unhealthy (one slow probe on a
    loaded machine is not a failure); a wedge is seen within about
    ``probe_fall × probe_interval_s + probe_timeout_s``."""
    probe_busy_grace_s: float = Field(default=30.0, ge=0)
    """Probes that time out while the source keeps decoding (its token counter advances) mean a
    busy engine, not a broken one: failing it over would push its load onto the other regions.
    Such timeouts are not counted for up to this long, seconds; an engine that admits no new
    request for longer is failed. Errors and malformed answers always count."""
    vantage_interval_s: float = Field(default=1.0, gt=0)
    """Time between two rounds of probes of the other regions' public endpoints, seconds."""
    vantage_timeout_s: float = Field(default=1.0, gt=0)
    """Deadline of one vantage probe, seconds."""
    vantage_ttl_s: float = Field(default=4.0, gt=0)
    """Expiry of the vantage report key in Redis, seconds."""


def replica_load(kv_usage: float | None, waiting_per_replica: float) -> float:
    """Load of one replica, 0..1: ``max(kv, min(1, waiting / 5))`` (GIE thresholds)."""
    kv = 0.0 if kv_usage is None else min(1.0, max(0.0, kv_usage))
    return max(kv, min(1.0, max(0.0, waiting_per_replica) / SATURATION_WAITING))


def source_spare(healthy_replicas: int, kv_usage: float | None, waiting: float) -> float:
    """Spare capacity of a source in idle-replica equivalents: ``r × (1 − load)``.

    Args:
        healthy_replicas: replicas behind the source that are healthy (0 if it is not).
        kv_usage: highest KV-cache usage fraction 0..1 of the source, or None.
        waiting: queued requests summed over the source's replicas.
    """
    if healthy_replicas <= 0:
        return 0.0
    return healthy_replicas * (1.0 - replica_load(kv_usage, waiting / healthy_replicas))


@dataclass(slots=True)
class _SourceState:
    """What the agent remembers about one source between checks."""

    last_model: str | None = None
    info_model: str | None = None
    info_tried_at: float = -1e18
    prev_t: float | None = None
    prev_tokens: float | None = None
    prev_progress: float | None = None
    stalled_checks: int = 0
    stalled_since: float | None = None
    rate: float | None = None
    prev_requests: float | None = None
    prev_errors: float | None = None
    prev_ttft: tuple[tuple[float, float], ...] = ()
    prev_itl: tuple[float, float] | None = None
    # Over the last interval: mean TTFT / ITL (seconds) with the observations behind them,
    # requests/s, and the request / error deltas.
    ttft: tuple[float, float] | None = None
    itl: tuple[float, float] | None = None
    req_rate: float | None = None
    req_delta: float | None = None
    err_delta: float | None = None
    # Since when the source's probes time out while it keeps decoding (busy, not wedged).
    busy_since: float | None = None


@dataclass(slots=True)
class _Judged:
    """One source's verdict for this check."""

    result: ScrapeResult
    healthy: bool
    reason: str
    model: str | None


class RegionAgent:
    """Scrapes one region's fleet and publishes its FleetReport.

    Attributes:
        region: the region's inventory entry.
        store: where reports go.
        settings: timing and thresholds.
        agent_id: unique id of this agent (``host:pid`` by default).
        peers: the inventory's regions (this one may be among them): those with a
            ``vantage_url`` are probed from here as a vantage point.
        prober: the synthetic completion probes of this region's sources.
        vantage: this agent's probes of the other regions.
        checks: checks done.
        writes: reports written to Redis successfully.
        writes_changed: of which with ``changed=True``.
        write_failures: failed write attempts.
        last_report: the newest report built.
    """

    def __init__(
        self,
        region: Region,
        store: Store,
        settings: AgentSettings,
        agent_id: str | None = None,
        peers: Sequence[Region] = (),
        bgp: BgpSpeaker | None = None,
    ) -> None:
        self.region = region
        self.bgp = bgp
        self.store = store
        self.settings = settings
        self.agent_id = agent_id or f"{socket.gethostname()}:{os.getpid()}"
        self.stall_monitor = LoopStallMonitor()
        self.prober = Prober(region.fleet, settings.probe_interval_s, settings.probe_timeout_s,
                             fall=settings.probe_fall, model_of=self._probe_model, stalls=self.stall_monitor)
        self.vantage = VantagePoint(
            region.name, vantage_targets(region.name, peers), store, self.agent_id,
            interval_s=settings.vantage_interval_s, timeout_s=settings.vantage_timeout_s,
            ttl_s=settings.vantage_ttl_s, write_timeout_s=settings.write_timeout_s,
        )
        self.checks = 0
        self.stalls = 0  # checks scraped again because the agent itself had stalled
        self.writes = 0
        self.writes_changed = 0
        self.write_failures = 0
        self.last_report: FleetReport | None = None
        self._seq = 0
        self._ok = 0
        self._fail = 0
        self._states: dict[str, _SourceState] = {s.name: _SourceState() for s in region.fleet}
        self._session: aiohttp.ClientSession | None = None
        # publishing state
        self._published: FleetReport | None = None
        self._published_at = -1e18
        self._prev_verdict: bool | None = None
        self._transition_left = 0
        self._pending: tuple[FleetReport, bool] | None = None
        self._wake = asyncio.Event()
        self._outage = False
        self._writer_task: asyncio.Task[None] | None = None
        self.clock = ClockSkew(store, region.name, settings.max_clock_skew_s)

    # -- lifecycle ------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            t = self.settings.scrape_timeout_s
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=t, sock_connect=t),
                connector=aiohttp.TCPConnector(limit=100, ttl_dns_cache=300),
                raise_for_status=False,
            )
        return self._session

    async def aclose(self) -> None:
        """Close the HTTP session (``run`` does it on exit)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def run(self, stop: asyncio.Event) -> None:
        """Check and publish until ``stop`` is set. Never raises on a source or Redis failure.

        Args:
            stop: set it to end the loop; a report still waiting to be written is attempted
                once more before returning.

        Raises:
            TaskCrashedError: the report writer crashed (a bug: it survives Redis failures);
                it was logged then, ``stop`` was set and the agent shut down.
        """
        s = self.settings
        log.info(
            "run: region %s, %d sources, interval %.3fs, heartbeat %.1fs",
            self.region.name,
            len(self.region.fleet),
            s.scrape_interval_s,
            s.heartbeat_s,
        )
        sup = Supervisor(f"agent of {self.region.name}", stop)
        self._writer_task = sup.start(f"agent-writer-{self.region.name}", self._writer())
        sup.start(f"agent-clock-{self.region.name}", self.clock.run(stop, s.clock_check_s))
        sup.start(f"agent-stalls-{self.region.name}", self.stall_monitor.run(stop))
        sup.start(f"agent-prober-{self.region.name}", self.prober.run(stop, self._client))
        sup.start(f"agent-vantage-{self.region.name}", self.vantage.run(stop, self._client))
        bgp_task = sup.start(f"agent-bgp-{self.region.name}", self.bgp.run(stop)) if self.bgp else None
        next_at = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    report = await self.check_once()
                    if self.bgp is not None:
                        self.bgp.observe(report)
                    self._decide(report)
                except Exception:  # the loop must survive anything
                    log.exception("run: check failed for region %s", self.region.name)
                interval = s.transition_poll_s if self._transition_left > 0 else s.scrape_interval_s
                next_at = max(next_at + interval, time.monotonic())
                if stop.is_set():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=next_at - time.monotonic())
        finally:
            self._writer_task = None
            if bgp_task is not None and self.bgp is not None:  # withdraw every prefix before exiting
                await sup.finish(bgp_task, self.bgp.settings.stop_timeout_s + 6.0)
            try:
                await sup.aclose()  # cancels the writer; raises TaskCrashedError if it crashed
            finally:
                await self._flush()
                await self.aclose()
                log.info("run: region %s stopped after %d checks", self.region.name, self.checks)

    # -- one check ------------------------------------------------------------------------

    async def check_once(self) -> FleetReport:
        """Scrape every source once and build the report (no store write).

        Updates ``seq`` and the consecutive ok/fail counts, rates and wedge tracking.
        """
        session = self._client()
        s = self.settings
        now = time.monotonic()
        info_jobs: list[asyncio.Task[str | None]] = []
        info_for: list[FleetSource] = []
        for src in self.region.fleet:
            st = self._states[src.name]
            if (
                src.kind == "tgi"
                and src.model is None
                and st.info_model is None
                and now - st.info_tried_at >= s.info_retry_s
            ):
                st.info_tried_at = now
                info_for.append(src)
                info_jobs.append(asyncio.ensure_future(fetch_tgi_model(session, src, s.scrape_timeout_s)))
        for _attempt in range(2):
            t0 = time.monotonic()
            results = await asyncio.gather(
                *(scrape_source(session, src, s.scrape_timeout_s, s.health_paths) for src in self.region.fleet)
            )
            late = time.monotonic() - t0 - s.scrape_timeout_s
            if late <= STALL_SLACK_S or not any("timeout" in r for res in results for r in res.reasons):
                break
            # The deadline fired long after it was due: this process was paused (SIGSTOP, a VM
            # pause) or starved, so the timeouts are ours, not the fleet's. Scrape again at once.
            self.stalls += 1
            log.warning("check: the agent itself stalled for %.1fs; its scrape timeouts are not counted", late)
        for src, model in zip(info_for, await asyncio.gather(*info_jobs), strict=True):
            self._states[src.name].info_model = model
        report = self._build(results)
        self.checks += 1
        self.last_report = report
        return report

    def _judge(self, res: ScrapeResult) -> _Judged:
        src = res.source
        st = self._states[src.name]
        reasons = list(res.reasons)
        eng = res.engine
        if src.kind == "dcgm":
            gpu = res.gpu
            if gpu is not None and gpu.degraded:
                reasons.append("degraded " + "; ".join(gpu.reasons))
            healthy = res.up and not reasons
            return _Judged(res, healthy, "; ".join(reasons), None)
        if eng is None:
            st.prev_t = st.prev_tokens = st.prev_progress = st.rate = None
            st.prev_requests = st.prev_errors = st.prev_itl = None
            st.prev_ttft = ()
            st.ttft = st.itl = st.req_rate = st.req_delta = st.err_delta = None
            st.stalled_checks, st.stalled_since = 0, None
        else:
            self._track(st, eng, res.finished_at)
            if eng.model:
                st.last_model = eng.model
            wedged = (
                st.stalled_checks >= self.settings.wedge_checks
                and st.stalled_since is not None
                and res.finished_at - st.stalled_since >= self.settings.wedge_min_s
            )
            if wedged and st.stalled_since is not None:
                reasons.append(
                    f"wedged: {eng.waiting:g} waiting, no progress for {res.finished_at - st.stalled_since:.1f}s"
                )
        probe_failing = self.prober.failing(src.name)
        if not probe_failing:
            st.busy_since = None  # a busy spell ends when the probes answer again
        elif not self._busy(src.name, st, res.finished_at):
            reasons.append(probe_failing)
        healthy = res.up and res.health_ok is not False and not reasons
        model = (eng.model if eng else None) or src.model or st.last_model or st.info_model
        return _Judged(res, healthy, "; ".join(reasons), model)

    def _busy(self, source: str, st: _SourceState, t: float) -> bool:
        """Whether ``source``'s failing probes are only timeouts of a busy engine: it decoded
        tokens over the last scrape interval, and that for less than ``probe_busy_grace_s``."""
        probe = self.prober.state(source)
        decoding = st.rate is not None and st.rate > 0
        if probe is None or probe.last is None or not probe.last.timed_out or not decoding:
            st.busy_since = None
            return False
        if st.busy_since is None:
            st.busy_since = t
            log.warning("probe: %s times out while decoding at %.0f tokens/s: busy, not failed (for up to %gs)",
                        source, st.rate, self.settings.probe_busy_grace_s)
        return t - st.busy_since < self.settings.probe_busy_grace_s

    @staticmethod
    def _track(st: _SourceState, eng: EngineSample, t: float) -> None:
        """Update the decode rate and stall tracking of one source."""
        st.rate = None
        if st.prev_t is not None and t > st.prev_t and eng.generation_tokens is not None and st.prev_tokens is not None:
            delta = eng.generation_tokens - st.prev_tokens
            st.rate = delta / (t - st.prev_t) if delta >= 0 else None  # reset: skip
        RegionAgent._track_latency(st, eng, t)
        stalled = (
            eng.waiting > 0
            and eng.progress is not None
            and st.prev_progress is not None
            and eng.progress == st.prev_progress
        )
        if stalled:
            st.stalled_checks += 1
            if st.stalled_since is None:
                st.stalled_since = st.prev_t
        else:
            st.stalled_checks, st.stalled_since = 0, None
        st.prev_t, st.prev_tokens, st.prev_progress = t, eng.generation_tokens, eng.progress

    @staticmethod
    def _track_latency(st: _SourceState, eng: EngineSample, t: float) -> None:
        """Interval TTFT / ITL means, request rate and error share from counter deltas."""
        st.ttft = st.itl = st.req_rate = st.req_delta = st.err_delta = None
        first = st.prev_t is None or t <= st.prev_t
        if not first and eng.requests is not None and st.prev_requests is not None:
            d = eng.requests - st.prev_requests
            if d >= 0:
                assert st.prev_t is not None
                st.req_delta, st.req_rate = d, d / (t - st.prev_t)
                if eng.has_errors and st.prev_errors is not None and eng.errors >= st.prev_errors:
                    st.err_delta = min(eng.errors - st.prev_errors, d)
        if not first and eng.ttft and len(eng.ttft) == len(st.prev_ttft):
            means, n = [], 0.0
            for i, ((s1, c1), (s0, c0)) in enumerate(zip(eng.ttft, st.prev_ttft, strict=True)):
                if c1 - c0 <= 0 or s1 < s0:
                    break
                means.append((s1 - s0) / (c1 - c0))
                if i == 0:
                    n = c1 - c0
            else:
                st.ttft = (sum(means), n)
        if not first and eng.itl is not None and st.prev_itl is not None:
            dc, ds = eng.itl[1] - st.prev_itl[1], eng.itl[0] - st.prev_itl[0]
            if dc > 0 and ds >= 0:
                st.itl = (ds / dc, dc)
        st.prev_requests, st.prev_errors = eng.requests, eng.errors
        st.prev_ttft, st.prev_itl = eng.ttft, eng.itl

    def _build(self, results: Sequence[ScrapeResult]) -> FleetReport:
        judged = [self._judge(r) for r in results]
        cap = self.region.capacity_per_replica
        scale = cap if cap is not None else 1.0

        by_model: dict[str, list[_Judged]] = {}
        for j in judged:
            if j.result.source.kind != "dcgm":
                by_model.setdefault(j.model or UNKNOWN_MODEL, []).append(j)

        models: dict[str, ModelStats] = {}
        for name, group in sorted(by_model.items()):
            total = sum(j.result.source.replicas for j in group)
            healthy = sum(j.result.source.replicas for j in group if j.healthy)
            up = [j.result.engine for j in group if j.result.engine is not None]
            kvs = [
                j.result.engine.kv_usage
                for j in group
                if j.healthy and j.result.engine is not None and j.result.engine.kv_usage is not None
            ]
            rates = [
                self._states[j.result.source.name].rate
                for j in group
                if j.result.engine is not None and self._states[j.result.source.name].rate is not None
            ]
            spare = sum(
                source_spare(j.result.source.replicas, j.result.engine.kv_usage, j.result.engine.waiting)
                for j in group
                if j.healthy and j.result.engine is not None
            )
            versions = sorted({v for j in group if (v := _version(j))})
            by_version: dict[str, int] = {}
            for j in group:
                v = _version(j)
                if j.healthy and v:
                    by_version[v] = by_version.get(v, 0) + j.result.source.replicas
            live = [self._states[j.result.source.name] for j in group if j.healthy and j.result.engine is not None]
            models[name] = ModelStats(
                model=name,
                version=",".join(versions),
                replicas_total=total,
                replicas_healthy=healthy,
                running=sum(e.running for e in up),
                waiting=sum(e.waiting for e in up),
                kv_cache_usage=max(kvs) if kvs else None,
                generation_tokens_total=sum(e.generation_tokens or 0.0 for e in up),
                tokens_per_s=sum(r for r in rates if r is not None) if rates else None,
                errors_total=sum(e.errors for e in up),
                spare_capacity=spare * scale,
                ttft_s=_weighted([st.ttft for st in live]),
                itl_s=_weighted([st.itl for st in live]),
                requests_per_s=_sum_or_none([st.req_rate for st in live]),
                error_rate=_error_rate(live),
                replicas_by_version=by_version if versions else None,
                **self._probe_stats(group),
            )

        gpus = [j.result.gpu for j in judged if j.result.gpu is not None]
        gpu: GpuStats | None = None
        if gpus:
            utils = [(g.utilization, g.count) for g in gpus if g.utilization is not None]
            weight = sum(max(c, 1) for _, c in utils)
            used = [g.memory_used_mib for g in gpus if g.memory_used_mib is not None]
            tot = [g.memory_total_mib for g in gpus if g.memory_total_mib is not None]
            gpu = GpuStats(
                count=sum(g.count for g in gpus),
                utilization=(sum(u * max(c, 1) for u, c in utils if u is not None) / weight if utils else None),
                memory_used_mib=sum(used) if used else None,
                memory_total_mib=sum(tot) if tot else None,
                degraded=sum(g.degraded for g in gpus),
                xids=tuple(sorted({x for g in gpus for x in g.xids})),
            )

        healthy_replicas = sum(m.replicas_healthy for m in models.values())
        verdict = healthy_replicas > 0
        failing = [j for j in judged if not j.healthy]
        reason = ""
        if not verdict:
            if not by_model:
                reason = "no serving sources configured"
            else:
                reason = "no healthy replica: " + "; ".join(
                    f"{j.result.source.name}: {j.reason or 'unhealthy'}" for j in failing
                )
        self._seq += 1
        if verdict:
            self._ok, self._fail = self._ok + 1, 0
        else:
            self._ok, self._fail = 0, self._fail + 1
        return FleetReport(
            region=self.region.name,
            agent_id=self.agent_id,
            seq=self._seq,
            observed_at=time.time(),
            interval_s=self.settings.heartbeat_s,
            healthy=verdict,
            consecutive_ok=self._ok,
            consecutive_fail=self._fail,
            reason=reason[:2000],
            models=models,
            gpu=gpu,
            sources=tuple(
                SourceStatus(
                    name=j.result.source.name,
                    kind=j.result.source.kind,
                    up=j.result.up,
                    healthy=j.healthy,
                    reason=j.reason,
                    latency_ms=round(j.result.latency_ms, 3),
                    **self._probe_status(j.result.source.name),
                )
                for j in judged
            ),
            spare_capacity=sum(m.spare_capacity for m in models.values()),
            capacity_unit="tokens/s" if cap is not None else "replicas",
            clock_skew_s=self.clock.skew_s,
        )

    # -- synthetic probes -----------------------------------------------------------------

    def _probe_model(self, src: FleetSource) -> str | None:
        """The model a source's probe asks for when the inventory names none: what it serves."""
        st = self._states[src.name]
        return st.last_model or st.info_model

    def _probe_status(self, source: str) -> dict[str, Any]:
        """``SourceStatus`` probe fields of ``source`` (empty when not probed / no result)."""
        st = self.prober.state(source)
        if st is None or st.last is None:
            return {}
        return {"probe_ok": st.last.ok, "probe_ttft_ms": st.last.ttft_ms if st.last.ok else None,
                "probe_consecutive_fail": st.consecutive_fail, "probe_reason": st.last.reason[:500]}

    def _probe_stats(self, group: Sequence[_Judged]) -> dict[str, Any]:
        """``ModelStats.probe_ttft_s`` (mean over healthy sources' newest successful probes) and
        ``probe_success`` (share of probed sources whose newest probe succeeded)."""
        done = [st for j in group if (st := self.prober.state(j.result.source.name)) and st.last is not None]
        if not done:
            return {}
        ttfts = [st.last.ttft_ms for j in group
                 if j.healthy and (st := self.prober.state(j.result.source.name)) and st.last is not None
                 and st.last.ok and st.last.ttft_ms is not None]
        return {"probe_ttft_s": sum(ttfts) / len(ttfts) / 1000.0 if ttfts else None,
                "probe_success": sum(1 for st in done if st.last is not None and st.last.ok) / len(done)}

    # -- publishing -----------------------------------------------------------------------

    def _significant(self, report: FleetReport) -> bool:
        """Whether ``report`` changes the region's state against the last published one."""
        old = self._published
        if old is None or old.healthy != report.healthy:
            return True
        if _healthy_replicas(old) != _healthy_replicas(report):
            return True
        if _failing(old) != _failing(report):
            return True
        a, b = old.spare_capacity, report.spare_capacity
        return abs(a - b) > self.settings.capacity_change * max(a, b)

    def _decide(self, report: FleetReport) -> None:
        """Hand ``report`` to the writer if it must be published now."""
        now = time.monotonic()
        s = self.settings
        if report.healthy != self._prev_verdict:  # also the very first check
            self._transition_left = s.publish_checks + 1  # this check and the next N
        self._prev_verdict = report.healthy
        changed: bool | None = None
        if self._significant(report) or self._transition_left > 0:
            changed = True
        elif now - self._published_at >= s.heartbeat_s - s.scrape_interval_s / 2:
            changed = False
        elif self._outage and self._pending is not None:
            changed = self._pending[1]  # keep the retried report fresh
        if self._transition_left > 0:
            self._transition_left -= 1
        if changed is None:
            return
        if self._pending is not None:
            changed = changed or self._pending[1]
        self._pending = (report, changed)
        self._published = report
        self._published_at = now
        self._wake.set()

    async def _writer(self) -> None:
        """Write pending reports. A failed write is retried, with the newest pending report,
        after a capped exponential backoff with jitter (tenacity), until Redis takes it."""
        s = self.settings
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending is not None:
                async for attempt in AsyncRetrying(
                    retry=retry_if_exception_type(_WriteFailed),
                    wait=wait_exponential_jitter(multiplier=s.retry_initial_s, max=s.retry_max_s,
                                                 jitter=s.retry_initial_s),
                    reraise=True,
                ):
                    with attempt:
                        await self._write_pending()

    async def _write_pending(self) -> None:
        """Write the pending report; raises ``_WriteFailed`` (the report stays pending)."""
        assert self._pending is not None
        s = self.settings
        report, changed = self._pending
        self._pending = None
        try:
            async with asyncio.timeout(s.write_timeout_s):
                await self.store.put_report(report, s.report_ttl_s, changed=changed)
        except (StoreError, TimeoutError, OSError) as exc:
            self._write_failed(report, changed, exc)
            raise _WriteFailed from exc
        except Exception as exc:  # never let the writer die
            log.exception("writer: unexpected error for region %s", self.region.name)
            self._write_failed(report, changed, exc)
            raise _WriteFailed from exc
        self.writes += 1
        self.writes_changed += int(changed)
        if self._outage:
            self._outage = False
            log.warning("writer: redis reachable again; region %s reports resumed", self.region.name)

    async def _flush(self) -> None:
        """One last attempt at a pending report on shutdown (errors are only logged)."""
        if self._pending is None:
            return
        report, changed = self._pending
        self._pending = None
        try:
            async with asyncio.timeout(self.settings.write_timeout_s):
                await self.store.put_report(report, self.settings.report_ttl_s, changed=changed)
        except Exception as exc:  # shutting down: never raise from here
            log.info("flush: last report for region %s not written: %s", self.region.name, exc)
        else:
            self.writes += 1
            self.writes_changed += int(changed)

    def _write_failed(self, report: FleetReport, changed: bool, exc: BaseException) -> None:
        self.write_failures += 1
        if not self._outage:
            self._outage = True
            log.warning(
                "writer: cannot write report for region %s, retrying with backoff: %s",
                self.region.name,
                exc or type(exc).__name__,
            )
        if self._pending is None:
            self._pending = (report, changed)
        else:
            self._pending = (self._pending[0], self._pending[1] or changed)


class _WriteFailed(Exception):
    """A report write failed; the writer retries it (the cause is chained)."""


def _version(j: _Judged) -> str:
    """The version a source serves: what the engine says, else the inventory's."""
    eng = j.result.engine
    return (eng.version if eng is not None and eng.version else None) or j.result.source.version or ""


def _weighted(values: Sequence[tuple[float, float] | None]) -> float | None:
    """Observation-weighted mean of ``(mean, observations)`` pairs, or None."""
    pairs = [v for v in values if v is not None and v[1] > 0]
    n = sum(c for _, c in pairs)
    return sum(m * c for m, c in pairs) / n if n > 0 else None


def _sum_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def _error_rate(states: Sequence[_SourceState]) -> float | None:
    """Errors / requests finished over the last interval, from sources with an error counter."""
    with_errors = [st for st in states if st.err_delta is not None and st.req_delta is not None]
    requests = sum(st.req_delta or 0.0 for st in with_errors)
    if requests <= 0:
        return None
    return min(1.0, max(0.0, sum(st.err_delta or 0.0 for st in with_errors) / requests))


def _healthy_replicas(report: FleetReport) -> int:
    return sum(m.replicas_healthy for m in report.models.values())


def _failing(report: FleetReport) -> frozenset[str]:
    return frozenset(s.name for s in report.sources if not s.healthy)
