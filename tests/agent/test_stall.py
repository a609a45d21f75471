"""The agent's stall monitor: a probe that timed out while the agent itself was not running is
the agent's stall, not the engine's failure, even when its deadline fired less than
``STALL_SLACK_S`` late (a 2.6 s SIGSTOP of the agents, a 2 s probe that started 0.3 s before it:
found by tests/e2e/test_stale_e2e.py failing every run on a new machine)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import aiohttp
import pytest

from gtm.agent.probe import STALL_SLACK_S, run_probe
from gtm.agent.stall import LoopStallMonitor
from gtm.models.region import FleetSource


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_monitor_records_late_ticks_and_measures_overlap() -> None:
    clock = FakeClock()
    m = LoopStallMonitor(tick_s=0.1, min_stall_s=0.4, clock=clock)
    for _ in range(5):
        clock.t += 0.1
        m.tick()
    assert not m.stalls
    clock.t += 0.35  # 0.25 s late: below min_stall_s, not a stall
    m.tick()
    assert not m.stalls
    start = clock.t
    clock.t += 2.6  # paused
    m.tick()
    assert list(m.stalls) == [(pytest.approx(start + 0.1), pytest.approx(start + 2.6))]
    for _ in range(10):  # running again
        clock.t += 0.1
        m.tick()
    now = clock.t
    assert m.stalled_during(start - 1.0, now) == pytest.approx(2.5)
    assert m.stalled_during(start + 1.0, start + 1.5) == pytest.approx(0.5)
    assert m.stalled_during(start + 2.7, now) == 0.0


def test_monitor_counts_a_stall_still_going_on() -> None:
    """On resume the timed-out probe may be handled before the monitor's own late tick."""
    clock = FakeClock()
    m = LoopStallMonitor(tick_s=0.1, min_stall_s=0.4, clock=clock)
    t0 = clock.t
    clock.t += 2.0  # no tick yet
    assert m.stalled_during(t0, clock.t) == pytest.approx(1.9)
    assert LoopStallMonitor(clock=clock).stalled_during(t0, clock.t) == 0.0  # a fresh monitor saw nothing


@pytest.fixture
def streaming_fleet() -> Iterator[str]:
    """An OpenAI-compatible completion server on its own thread: the first token at once, three
    more 0.1 s apart. It keeps answering while the test blocks the event loop (the agent paused)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server calls it by this name
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for i, word in enumerate(("Hello!", " How", " can", " I")):
                if i:
                    time.sleep(0.1)
                event = {"choices": [{"text": word, "index": 0}]}
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("monitored", [True, False])
async def test_a_probe_cut_short_by_the_agents_own_pause_is_not_counted(streaming_fleet: str,
                                                                      monitored: bool) -> None:
    timeout_s, pause_s = 2.0, 2.3  # the deadline fires 0.6 s late: under STALL_SLACK_S
    assert 0.3 + pause_s - timeout_s < STALL_SLACK_S
    src = FleetSource(name="vllm-a", kind="vllm", url=streaming_fleet, model="m")
    spec = src.probe_spec()
    assert spec is not None
    monitor = LoopStallMonitor()
    stop = asyncio.Event()
    ticking = asyncio.create_task(monitor.run(stop))
    async with aiohttp.ClientSession() as http:
        probe = asyncio.create_task(run_probe(http, src, spec, timeout_s, stalls=monitor if monitored else None))
        await asyncio.sleep(0.3)
        time.sleep(pause_s)  # the agent's loop does not run (SIGSTOP, a VM pause, a starved loop)
        res = await probe
    stop.set()
    await ticking
    # On resume the deadline's callback runs before the read of the buffered answer (asyncio runs
    # due timers' callbacks ahead of the tasks the I/O wakes): the probe times out.
    assert not res.ok and res.timed_out, res.reason
    # Without the monitor the late deadline alone does not show the pause: a counted failure.
    assert res.stalled is monitored
