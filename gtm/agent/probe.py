"""Synthetic completion probes: a small real request through each serving engine's API, timed
to the first token.

A health endpoint answering 200 says the HTTP server lives, not that the engine generates
(vLLM issue #39863: EngineCore hung while ``/health`` and ``/metrics`` answer). A probe asks
for a few tokens, streaming, through the completion client it shares with the drills' clients
(``gtm.agent.completion.complete``: the APIs per engine kind, SSE parsing, TTFT timing), and
checks what comes back.

A probe **fails**, with a reason starting ``completion probe:``, on: no first token within
the timeout; a first token but no end of the answer within it; a connection error; an HTTP
status other than 200; an event or body that is not the API's JSON shape; an ``error`` event;
an empty answer; an answer the inventory's ``expect`` regular expression does not find.

:class:`Prober` runs the probes of one region's sources every ``interval_s`` on its own
schedule: a new round starts every interval even while an earlier one still waits on a hung
engine (each probe has its own timeout), so consecutive failures accumulate one per interval
and a wedge is seen ``fall × interval + timeout`` after it began. Only results newer than the
newest applied one count (a late answer never overwrites fresher news). A probe that has not
finished yet is not a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from gtm.agent.completion import complete, completion_request
from gtm.agent.stall import LoopStallMonitor
from gtm.log import get_logger
from gtm.models.region import FleetSource, ProbeSpec
from gtm.tasks import cancel_all

log = get_logger("agent.probe")

ModelOf = Callable[[FleetSource], str | None]
"""The model name to send in a source's probe when neither the probe spec nor the inventory
names one (e.g. what the engine's metrics say it serves), or None."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one synthetic completion probe.

    Attributes:
        ok: a well-formed answer matching ``expect`` arrived within the timeout.
        ttft_ms: time to the first token, milliseconds, or None when none arrived.
        latency_ms: time to the end of the answer (or to the failure), milliseconds.
        text: the generated text received (possibly partial).
        reason: why the probe failed (``completion probe: ...``); empty when ``ok``.
        timed_out: the probe failed by its deadline (no first token or no end in time), as
            opposed to an error or a malformed answer.
        stalled: the deadline fired more than ``STALL_SLACK_S`` late, or the agent's stall
            monitor saw the agent stop running while the probe ran: the agent itself was
            paused or starved (SIGSTOP, a VM pause, a CPU-starved event loop), so the timeout
            says nothing about the engine; such a result is not counted.
    """

    ok: bool
    ttft_ms: float | None
    latency_ms: float
    text: str = ""
    reason: str = ""
    timed_out: bool = False
    stalled: bool = False


STALL_SLACK_S = 1.0
"""A deadline that fires this much later than set (seconds) means the agent's own event loop did
not run in time: the result is the agent's stall, not the engine's (``ProbeResult.stalled``)."""


def probe_request(src: FleetSource, spec: ProbeSpec, model: str | None) -> tuple[str, dict[str, Any]]:
    """The URL and JSON body of ``src``'s probe (``gtm.agent.completion.completion_request``).

    Args:
        src: the fleet source (its ``url`` is the server's base URL).
        spec: the probe spec with ``api`` resolved (``FleetSource.probe_spec()``).
        model: model name to send when neither ``spec.model`` nor ``src.model`` names one;
            None leaves it out (OpenAI servers then use their only model).

    Raises:
        ValueError: a Triton probe without any model name (Triton's URL needs one).
    """
    assert spec.api is not None
    name = spec.model or src.model or model
    if spec.api == "triton" and not name:
        raise ValueError(f"source {src.name}: a Triton probe needs a model (probe.model or model)")
    return completion_request(src.url, spec.api, model=name, prompt=spec.prompt, max_tokens=spec.max_tokens)


async def run_probe(
    session: aiohttp.ClientSession,
    src: FleetSource,
    spec: ProbeSpec,
    timeout_s: float,
    model: str | None = None,
    stalls: LoopStallMonitor | None = None,
) -> ProbeResult:
    """Send one probe to ``src`` through the shared completion client and judge the answer.
    Never raises on a bad server.

    Args:
        session: the agent's shared HTTP session (this request sets its own timeout).
        src: the fleet source.
        spec: its probe spec, ``api`` resolved (``FleetSource.probe_spec()``).
        timeout_s: deadline for the whole answer (first token and end), seconds.
        model: model name to send when neither ``spec.model`` nor ``src.model`` is set.
        stalls: the agent's stall monitor: a timeout during which the agent itself stalled for
            at least its ``min_stall_s`` is ``stalled`` (not counted), as is one that fired more
            than ``STALL_SLACK_S`` late.

    Returns:
        The result; ``reason`` says why it failed.
    """
    try:
        probe_request(src, spec, model)
    except ValueError as exc:
        return ProbeResult(ok=False, ttft_ms=None, latency_ms=0.0, reason=f"completion probe: {exc}")
    res = await complete(session, src.url, src.kind, model=spec.model or src.model or model, prompt=spec.prompt,
                         max_tokens=spec.max_tokens, timeout_s=timeout_s, api=spec.api)
    end = time.monotonic()
    stalled = res.timed_out and (
        res.latency_ms / 1000.0 > timeout_s + STALL_SLACK_S
        or (stalls is not None and stalls.stalled_during(end - res.latency_ms / 1000.0, end) >= stalls.min_stall_s)
    )
    reason = res.error
    if res.ok and re.search(spec.expect, res.text) is None:
        reason = f"answer {res.text[:80]!r} does not match {spec.expect!r}"
    return ProbeResult(ok=not reason, ttft_ms=res.ttft_ms, latency_ms=res.latency_ms, text=res.text,
                       reason=f"completion probe: {reason}" if reason else "", timed_out=res.timed_out,
                       stalled=stalled)


@dataclass(slots=True)
class ProbeState:
    """What the agent knows of one source's probes.

    Attributes:
        spec: the source's probe spec (``api`` resolved).
        started: probes started (each gets the next sequence number).
        applied: sequence number of the newest probe whose result was applied.
        last: that probe's result, or None before the first one finished.
        last_ttft_ms: TTFT of the newest successful probe, milliseconds, or None.
        consecutive_ok: consecutive successful probes up to ``last``.
        consecutive_fail: consecutive failed probes up to ``last``.
        probes: results applied.
        failures: of which failed.
    """

    spec: ProbeSpec
    started: int = 0
    applied: int = 0
    last: ProbeResult | None = None
    last_ttft_ms: float | None = None
    consecutive_ok: int = 0
    consecutive_fail: int = 0
    probes: int = 0
    failures: int = 0

    def apply(self, seq: int, res: ProbeResult) -> bool:
        """Record the result of probe ``seq``; False (ignored) if a newer one was applied, or if
        the result only shows that the agent itself stalled (``ProbeResult.stalled``)."""
        if seq <= self.applied or res.stalled:
            return False
        self.applied, self.last, self.probes = seq, res, self.probes + 1
        if res.ok:
            self.consecutive_ok, self.consecutive_fail = self.consecutive_ok + 1, 0
            self.last_ttft_ms = res.ttft_ms
        else:
            self.consecutive_ok, self.consecutive_fail = 0, self.consecutive_fail + 1
            self.failures += 1
        return True


@dataclass(slots=True)
class Prober:
    """The synthetic probes of one region's fleet sources.

    Attributes:
        sources: the region's fleet sources; those whose ``probe_spec()`` is None are skipped.
        interval_s: time between the starts of two rounds, seconds.
        timeout_s: deadline of one probe, seconds.
        fall: consecutive failed probes after which the source counts as failing
            (:meth:`failing`); one slow probe on a loaded machine is not a failure.
        model_of: the model to send when neither the probe spec nor the inventory names one.
        states: per probed source name.
    """

    sources: Sequence[FleetSource]
    interval_s: float
    timeout_s: float
    fall: int = 2
    model_of: ModelOf = field(default=lambda _src: None)
    stalls: LoopStallMonitor | None = None
    states: dict[str, ProbeState] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        for src in self.sources:
            spec = src.probe_spec()
            if spec is not None:
                self.states[src.name] = ProbeState(spec)

    def failing(self, source: str) -> str:
        """Why ``source`` fails its probes (``fall`` in a row, newest reason), or ""."""
        st = self.states.get(source)
        if st is None or st.last is None or st.consecutive_fail < self.fall:
            return ""
        return f"{st.last.reason} ({st.consecutive_fail} in a row)"

    def state(self, source: str) -> ProbeState | None:
        """The probe state of ``source``, or None when it is not probed."""
        return self.states.get(source)

    async def round(self, session: aiohttp.ClientSession) -> Mapping[str, ProbeResult]:
        """Probe every source once, concurrently, and apply the results; returns them."""
        jobs = {name: self._probe(session, name) for name in self.states}
        results = await asyncio.gather(*jobs.values())
        return dict(zip(jobs, results, strict=True))

    async def _probe(self, session: aiohttp.ClientSession, name: str) -> ProbeResult:
        src = next(s for s in self.sources if s.name == name)
        st = self.states[name]
        st.started += 1
        seq = st.started
        res = await run_probe(session, src, st.spec, self.timeout_s, self.model_of(src), self.stalls)
        if st.apply(seq, res) and not res.ok and st.consecutive_fail == self.fall:
            log.warning("probe: source %s failing: %s", name, res.reason)
        elif res.ok and st.consecutive_ok == 1 and st.probes > 1:
            log.info("probe: source %s answers again (TTFT %.0f ms)", name, res.ttft_ms or 0.0)
        return res

    async def run(self, stop: asyncio.Event, session: Callable[[], aiohttp.ClientSession]) -> None:
        """Start a round every ``interval_s`` until ``stop`` is set; rounds may overlap (a hung
        engine holds a round for its timeout). Rounds still running at the end are cancelled.

        Args:
            stop: ends the loop.
            session: returns the agent's shared HTTP session.
        """
        if not self.states:
            return
        next_at = time.monotonic()
        try:
            while not stop.is_set():
                task = asyncio.ensure_future(self._round_logged(session()))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                next_at = max(next_at + self.interval_s, time.monotonic())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=next_at - time.monotonic())
        finally:
            await cancel_all(set(self._tasks))

    async def _round_logged(self, session: aiohttp.ClientSession) -> None:
        try:
            await self.round(session)
        except Exception:  # a bug; the next round runs anyway
            log.exception("probe: round failed")
