"""Synthetic completion probes against the simulator's real completion endpoints (real HTTP on
free ports): per engine kind the answer, its time to first token, a wedged engine's timeout, a
malformed answer; the agent's verdict and report from probes; and the simulator's wire formats.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import aiohttp
import pytest

from gtm.agent import AgentSettings, RegionAgent
from gtm.agent.probe import Prober, ProbeResult, ProbeState, run_probe
from gtm.models.region import FleetSource, ProbeSpec, Region
from gtm.sim import FleetSim
from gtm.store.store import Store

MODEL = "llama-3.1-8b"
# (kind, api) pairs probed: each kind's default API, plus the OpenAI chat API of vLLM
APIS = [("vllm", None), ("vllm", "chat"), ("sglang", None), ("tgi", None), ("triton", None)]

Fleet = Callable[..., Awaitable[FleetSim]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # The agent's session has a short default timeout (the scrape's); probes set their own.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.4)) as session:
        yield session


def _source(sim: FleetSim, api: str | None = None, **probe: Any) -> FleetSource:
    spec = {"api": api, **probe} if (api or probe) else None
    return FleetSource(name=f"{sim.kind}-a", kind=sim.kind, url=sim.url, model=MODEL, probe=spec)  # type: ignore[arg-type]


async def _probe(http: aiohttp.ClientSession, src: FleetSource, timeout_s: float = 3.0) -> ProbeResult:
    spec = src.probe_spec()
    assert spec is not None
    return await run_probe(http, src, spec, timeout_s)


@pytest.mark.parametrize(("kind", "api"), APIS)
async def test_probe_answers_and_measures_time_to_first_token(
    kind: str, api: str | None, fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    sim = await fleet(kind, 2)
    sim.set_state(ttft_s=0.15, itl_s=0.01)
    res = await _probe(http, _source(sim, api, max_tokens=3))
    assert res.ok, res.reason
    assert res.reason == ""
    assert res.text == " ".join(sim.answer.split()[:3])  # three word tokens: "Hello! How can"
    assert res.ttft_ms is not None
    # The fleet waits ttft_s before the first token: the measurement cannot be below it, and
    # the first token comes before the end of the answer (two more tokens, 10 ms apart).
    assert 150.0 <= res.ttft_ms < 1500.0
    assert res.latency_ms >= res.ttft_ms + 15.0


@pytest.mark.parametrize(("kind", "api"), APIS)
async def test_wedged_engine_fails_the_probe_with_a_timeout(
    kind: str, api: str | None, fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    sim = await fleet(kind, 2)
    sim.set_state(mode="wedged")
    # /health still answers 200: only the probe can tell
    async with http.get(sim.url + ("/v2/health/ready" if kind == "triton" else "/health")) as resp:
        assert resp.status == 200
    res = await _probe(http, _source(sim, api), timeout_s=0.5)
    assert not res.ok
    assert res.reason == "completion probe: no first token within 0.5s"
    assert res.ttft_ms is None
    assert res.latency_ms >= 500.0


@pytest.mark.parametrize(("kind", "api"), APIS)
async def test_malformed_answer_fails_the_probe(
    kind: str, api: str | None, fleet: Fleet, http: aiohttp.ClientSession
) -> None:
    sim = await fleet(kind, 2)
    sim.set_state(ttft_s=0.0, itl_s=0.0, malformed=True)
    res = await _probe(http, _source(sim, api))
    assert not res.ok
    assert res.reason == "completion probe: malformed answer: event is not JSON: '{not json'"


async def test_answer_not_matching_the_expected_shape_fails(fleet: Fleet, http: aiohttp.ClientSession) -> None:
    sim = await fleet("vllm", 2)
    sim.set_state(ttft_s=0.0, itl_s=0.0, answer="lorem ipsum dolor")
    src = _source(sim, None, expect=r"(?i)\bok\b", max_tokens=8)
    res = await _probe(http, src)
    assert not res.ok
    assert res.reason == "completion probe: answer 'lorem ipsum dolor' does not match '(?i)\\\\bok\\\\b'"
    sim.set_state(answer="OK, sure.")
    assert (await _probe(http, src)).ok


async def test_empty_answer_and_dead_engine_fail(fleet: Fleet, http: aiohttp.ClientSession) -> None:
    sim = await fleet("tgi", 2)
    sim.set_state(ttft_s=0.0, answer="")
    res = await _probe(http, _source(sim))
    assert (res.ok, res.reason) == (False, "completion probe: empty answer")
    sim.set_state(mode="dead", answer="fine")
    res = await _probe(http, _source(sim))
    assert not res.ok
    assert res.reason.startswith("completion probe: HTTP 503: ")


async def test_unreachable_engine_and_unknown_model_fail(fleet: Fleet, http: aiohttp.ClientSession) -> None:
    sim = await fleet("triton", 2)
    wrong = FleetSource(name="t", kind="triton", url=sim.url, probe={"model": "other"})  # type: ignore[arg-type]
    res = await _probe(http, wrong)
    assert not res.ok
    assert "HTTP 400" in res.reason and "unknown model: 'other'" in res.reason
    nothing = FleetSource(name="t", kind="triton", url=sim.url)
    res = await _probe(http, nothing)
    assert res.reason == "completion probe: source t: a Triton probe needs a model (probe.model or model)"
    closed = FleetSource(name="v", kind="vllm", url="http://127.0.0.1:9")
    res = await _probe(http, closed)
    assert not res.ok and res.reason.startswith("completion probe: ClientConnectorError")


def test_probe_spec_defaults_per_kind() -> None:
    def spec(kind: str, probe: object = None) -> ProbeSpec | None:
        return FleetSource(name="s", kind=kind, url="http://x", probe=probe).probe_spec()  # type: ignore[arg-type]

    assert spec("vllm") == ProbeSpec(api="completions")
    assert spec("sglang") == ProbeSpec(api="completions")
    assert spec("tgi") == ProbeSpec(api="tgi")
    assert spec("triton", {"max_tokens": 2}) == ProbeSpec(api="triton", max_tokens=2)
    assert spec("vllm", {"api": "chat"}) == ProbeSpec(api="chat")
    assert spec("vllm", False) is None
    assert spec("vllm", True) == ProbeSpec(api="completions")
    assert spec("dcgm") is None
    with pytest.raises(ValueError, match="expect is not a valid regular expression"):
        ProbeSpec(expect="(")


def test_probe_state_counts_in_order_and_ignores_late_answers() -> None:
    st = ProbeState(ProbeSpec(api="completions"))
    bad = ProbeResult(ok=False, ttft_ms=None, latency_ms=2000.0, reason="completion probe: x")
    good = ProbeResult(ok=True, ttft_ms=120.0, latency_ms=150.0, text="hi")
    assert st.apply(1, bad) and st.apply(2, bad)
    assert (st.consecutive_fail, st.consecutive_ok, st.failures) == (2, 0, 2)
    assert st.apply(4, good)
    assert not st.apply(3, bad), "probe 3 answered after probe 4: stale"
    assert (st.consecutive_fail, st.consecutive_ok, st.last_ttft_ms, st.probes) == (0, 1, 120.0, 3)


async def test_prober_fails_a_source_only_after_fall_probes(fleet: Fleet, http: aiohttp.ClientSession) -> None:
    sim = await fleet("vllm", 2)
    sim.set_state(ttft_s=0.0, itl_s=0.0)
    dcgm = FleetSource(name="gpu", kind="dcgm", url=sim.url + "/dcgm/metrics")
    prober = Prober([_source(sim), dcgm], interval_s=1.0, timeout_s=0.3, fall=2)
    assert set(prober.states) == {"vllm-a"}, "DCGM is never probed"
    assert prober.failing("vllm-a") == "", "no probe yet is not a failure"
    assert (await prober.round(http))["vllm-a"].ok
    sim.set_state(mode="wedged")
    await prober.round(http)
    assert prober.failing("vllm-a") == "", "one failed probe is not a failure"
    await prober.round(http)
    assert prober.failing("vllm-a") == "completion probe: no first token within 0.3s (2 in a row)"
    sim.set_state(mode="healthy")
    await prober.round(http)
    assert prober.failing("vllm-a") == ""


async def test_prober_rounds_overlap_so_a_wedge_counts_one_failure_per_interval(
    fleet: Fleet,
) -> None:
    """With a timeout longer than the interval, rounds still start every interval: two
    failures are counted by about ``interval + timeout``, not ``2 × timeout``."""
    sim = await fleet("sglang", 2)
    sim.set_state(mode="wedged")
    prober = Prober([_source(sim)], interval_s=0.2, timeout_s=0.6, fall=2)
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(prober.run(stop, lambda: session))
        try:
            await _until(lambda: prober.states["sglang-a"].consecutive_fail >= 2, 10.0)
            st = prober.states["sglang-a"]
            assert st.started >= 3, "the next rounds started while the first still waited"
        finally:
            stop.set()
            await task
    assert all(t.done() for t in prober._tasks)


async def _until(pred: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# -- the agent ----------------------------------------------------------------------------

FAST = AgentSettings(
    scrape_interval_s=0.05, scrape_timeout_s=0.4, heartbeat_s=0.4, report_ttl_s=3.0, transition_poll_s=0.03,
    publish_checks=3, probe_interval_s=0.1, probe_timeout_s=0.4, probe_fall=2,
)


async def test_agent_reports_probe_results_and_fails_a_wedged_source(
    fleet: Fleet, redis_store: Store
) -> None:
    sim = await fleet("vllm", 3)
    sim.set_state(ttft_s=0.05, itl_s=0.0)
    region = Region(name="r1", jurisdiction="EU", geography={"continent": "EU"},  # type: ignore[arg-type]
                    endpoints=[{"address": "192.0.2.1"}], fleet=[_source(sim)])  # type: ignore[list-item]
    agent = RegionAgent(region, redis_store, FAST, agent_id="t")
    first = await agent.check_once()
    assert first.healthy and first.sources[0].probe_ok is None, "no probe yet: not a failure, nothing reported"
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await _until(lambda: agent.last_report is not None and agent.last_report.sources[0].probe_ok is True, 10)
        rep = agent.last_report
        assert rep is not None and rep.healthy
        src = rep.sources[0]
        assert src.probe_ttft_ms is not None and src.probe_ttft_ms >= 50.0
        stats = rep.models[MODEL]
        assert stats.probe_success == 1.0
        assert stats.probe_ttft_s is not None and stats.probe_ttft_s >= 0.05

        sim.set_state(mode="wedged")  # /health 200, metrics served, completions hang
        await _until(lambda: agent.last_report is not None and not agent.last_report.healthy, 10)
        rep = agent.last_report
        assert rep is not None
        assert rep.consecutive_fail >= 1
        assert "completion probe: no first token within 0.4s" in rep.reason
        src = rep.sources[0]
        assert (src.healthy, src.probe_ok, src.probe_ttft_ms) == (False, False, None)
        assert src.probe_consecutive_fail >= 2
        assert rep.models[MODEL].probe_success == 0.0
        # The writer task stores the failing report soon after the check that made it.
        stored: Any = None
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            async with asyncio.timeout(15):  # bounded: a stall fails here, not at the suite's timeout
                stored = await redis_store.client.get(redis_store.keys.report("r1"))
            if stored is not None and not json.loads(stored)["healthy"]:
                break
            await asyncio.sleep(0.02)
        assert stored is not None and "completion probe" in json.loads(stored)["reason"]
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task


async def test_sim_wire_formats(fleet: Fleet) -> None:
    """The simulator speaks each engine's streaming format (what the probe parses)."""
    async def lines(sim: FleetSim, path: str, body: dict[str, Any]) -> list[str]:
        async with aiohttp.ClientSession() as s, s.post(sim.url + path, json=body) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            return [ln for ln in (await resp.text()).split("\n") if ln]

    vllm = await fleet("vllm", 1)
    vllm.set_state(ttft_s=0.0, itl_s=0.0)
    got = await lines(vllm, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2, "stream": True})
    assert got[-1] == "data: [DONE]"
    assert [json.loads(ln[6:])["choices"][0]["text"] for ln in got[:-1]] == ["Hello!", " How"]
    tgi = await fleet("tgi", 1)
    tgi.set_state(ttft_s=0.0, itl_s=0.0)
    got = await lines(tgi, "/generate_stream", {"inputs": "x", "parameters": {"max_new_tokens": 2}})
    events = [json.loads(ln[5:]) for ln in got]
    assert [e["token"]["text"] for e in events] == ["Hello!", " How"]
    assert events[-1]["generated_text"] == "Hello! How"
    triton = await fleet("triton", 1)
    triton.set_state(ttft_s=0.0, itl_s=0.0)
    got = await lines(triton, f"/v2/models/{MODEL}/generate_stream", {"text_input": "x", "max_tokens": 1})
    assert [json.loads(ln[6:])["text_output"] for ln in got] == ["Hello!"]


@pytest.mark.parametrize("grace_s", [30.0, 0.0])
async def test_probe_timeouts_of_a_busy_but_decoding_engine_are_not_a_failure_within_the_grace(
    grace_s: float, fleet: Fleet, redis_store: Store
) -> None:
    """A saturated engine answers new requests late but keeps decoding: failing it over would push
    its load onto the other regions. Its probe timeouts are not counted for ``probe_busy_grace_s``
    (the first case); with no grace (the control) the same timeouts fail the source."""
    sim = await fleet("vllm", 3)
    sim.set_state(ttft_s=5.0, itl_s=0.0)  # first token after 5 s: every 0.4 s probe times out
    region = Region(name="r1", jurisdiction="EU", geography={"continent": "EU"},  # type: ignore[arg-type]
                    endpoints=[{"address": "192.0.2.1"}], fleet=[_source(sim)])  # type: ignore[list-item]
    agent = RegionAgent(region, redis_store, FAST.model_copy(update={"probe_busy_grace_s": grace_s}), agent_id="t")
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        await _until(lambda: (st := agent.prober.state(f"{sim.kind}-a")) is not None
                     and st.consecutive_fail >= 4, 10)
        # a few more checks with the probes failing and the decode counter moving
        await _until(lambda: agent.last_report is not None and agent.last_report.seq >= agent.checks - 1, 5)
        rep = await agent.check_once()
        if grace_s:
            assert rep.healthy, rep.reason
            assert rep.sources[0].probe_ok is False  # the probe's outcome is still reported
        else:
            assert not rep.healthy
            assert "completion probe: no first token within 0.4s" in rep.reason
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task


@pytest.fixture
def slow_fleet() -> Iterator[str]:
    """A vLLM-shaped fleet on its own thread (its URL) that answers every request after 0.1 s:
    the agent's event loop can then be blocked while the fleet's answer is on its way, as when
    the agent alone is paused."""
    sim = FleetSim(kind="vllm", model=MODEL, replicas=3)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # http.server calls it by this name
            time.sleep(0.1)
            body = sim.render().encode() if self.path == "/metrics" else b""
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_stalled_agent_does_not_count_its_own_lateness_against_the_fleet(
    slow_fleet: str, fleet: Fleet, redis_store: Store
) -> None:
    """The agent's event loop blocked for 1.5 s in the middle of a scrape (as SIGSTOP or a starved
    VM would) while the fleet, on another thread, answers in 0.1 s: the scrape deadline fires late,
    the check is scraped again, and the healthy fleet stays healthy. A probe in flight is
    discarded as stalled, not counted as a failure."""
    src = FleetSource(name="vllm-a", kind="vllm", url=slow_fleet, model=MODEL, probe=False)  # type: ignore[arg-type]
    region = Region(name="r1", jurisdiction="EU", geography={"continent": "EU"},  # type: ignore[arg-type]
                    endpoints=[{"address": "192.0.2.1"}], fleet=[src])
    agent = RegionAgent(region, redis_store, FAST, agent_id="t")
    loop = asyncio.get_running_loop()
    try:
        assert (await agent.check_once()).healthy
        loop.call_later(0.03, time.sleep, 1.5)  # blocks the loop while the scrape below is in flight
        rep = await agent.check_once()
        assert rep.healthy and rep.consecutive_fail == 0, rep.reason
        assert agent.stalls == 1
    finally:
        await agent.aclose()

    sim = await fleet("vllm", 3)
    sim.set_state(ttft_s=1.0)
    probed = _source(sim)
    spec = probed.probe_spec()
    assert spec is not None
    async with aiohttp.ClientSession() as http:
        loop.call_later(0.05, time.sleep, 2.0)
        res = await run_probe(http, probed, spec, 0.4)
    assert res.timed_out and res.stalled, res
    state = ProbeState(spec)
    assert state.apply(1, res) is False and state.consecutive_fail == 0


async def test_a_new_busy_spell_gets_its_own_grace(fleet: Fleet, redis_store: Store) -> None:
    """The busy grace runs from the start of each spell of timeouts: once the probes answer again,
    a later spell starts a new grace. (It used to run from the first spell ever, so every timeout
    after ``probe_busy_grace_s`` counted at once: a SIGSTOP of the agents round after round failed
    all regions over 30 s into tests/e2e/test_stale_e2e.py.)"""
    grace_s = 1.5
    sim = await fleet("vllm", 3)
    region = Region(name="r1", jurisdiction="EU", geography={"continent": "EU"},  # type: ignore[arg-type]
                    endpoints=[{"address": "192.0.2.1"}], fleet=[_source(sim)])  # type: ignore[list-item]
    agent = RegionAgent(region, redis_store, FAST.model_copy(update={"probe_busy_grace_s": grace_s}), agent_id="t")
    name = f"{sim.kind}-a"
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        for spell in range(2):
            sim.set_state(ttft_s=5.0, itl_s=0.0)  # every 0.4 s probe times out; decoding goes on
            await _until(lambda: (st := agent.prober.state(name)) is not None and st.consecutive_fail >= 3, 10)
            rep = await agent.check_once()
            assert rep.healthy, f"spell {spell}: {rep.reason}"
            sim.set_state(ttft_s=0.02, itl_s=0.0)
            await _until(lambda: (st := agent.prober.state(name)) is not None and st.consecutive_ok >= 3, 10)
            rep = await agent.check_once()
            assert rep.healthy, rep.reason
            await asyncio.sleep(grace_s)  # longer than the grace since the first spell began
    finally:
        stop.set()
        async with asyncio.timeout(15):
            await task
