"""The simulator under a drill's load: it counts the completions it serves, and really dies on
``POST /_sim/kill`` (connections refused and reset), coming back by itself on the same port."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gtm.agent.completion import CLIENT_HEADER, complete
from gtm.sim import start_fleet
from gtm.testing.ports import free_port

MODEL = "llama-3.1-8b"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        yield session


async def _state(http: aiohttp.ClientSession, url: str) -> dict[str, object]:
    async with http.get(url + "/_sim/state") as resp:
        assert resp.status == 200
        body: dict[str, object] = await resp.json()
        return body


async def test_counts_completions_served_and_failed_per_client(http: aiohttp.ClientSession) -> None:
    runner, sim = await start_fleet("vllm", "127.0.0.1", 0, MODEL, "v1", 2)
    try:
        sim.set_state(ttft_s=0.0, itl_s=0.0)
        for _ in range(3):
            res = await complete(http, sim.url, "vllm", model=MODEL, timeout_s=2,
                                 headers={CLIENT_HEADER: "drill/eu"})
            assert res.ok, res.error
        assert (await complete(http, sim.url, "vllm", model=MODEL, timeout_s=2, api="chat")).ok
        sim.set_state(mode="dead")
        dead = await complete(http, sim.url, "vllm", model=MODEL, timeout_s=2, headers={CLIENT_HEADER: "drill/eu"})
        assert (dead.ok, dead.status, dead.refused) == (False, 503, False)
        sim.set_state(mode="healthy", malformed=True)
        garbage = await complete(http, sim.url, "vllm", model=MODEL, timeout_s=2)
        assert not garbage.ok and garbage.error.startswith("malformed answer")
        wrong = await complete(http, sim.url, "vllm", model="other", timeout_s=2)
        assert wrong.status == 404
        state = await _state(http, sim.url)
        assert state["completions_served"] == 4
        assert state["completions_failed"] == 3
        assert state["completions_by_client"] == {"drill/eu": {"served": 3, "failed": 1}}
    finally:
        await runner.cleanup()


async def _refused(http: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with http.get(url + "/health"):
            return False
    except aiohttp.ClientConnectorError:
        return True


async def test_kill_refuses_connections_resets_streams_and_comes_back(http: aiohttp.ClientSession) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gtm.sim", "--kind", "vllm", "--host", "127.0.0.1", "--port", str(port),
        "--model", MODEL, stdout=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().startswith("listening on")
        async with http.post(url + "/_sim/state", json={"ttft_s": 0.0, "itl_s": 0.0}) as resp:
            assert resp.status == 200
        assert (await complete(http, url, "vllm", model=MODEL, timeout_s=2)).ok
        # A slow answer is under way when the fleet dies: its client sees the connection go.
        async with http.post(url + "/_sim/state", json={"ttft_s": 0.0, "itl_s": 1.0}) as resp:
            assert resp.status == 200
        async with aiohttp.ClientSession() as other:
            slow = asyncio.create_task(complete(other, url, "vllm", model=MODEL, max_tokens=8, timeout_s=5))
            # the stream has started (first token at once, then one a second)
            while (await _state(http, url))["completions_in_flight"] != 1:
                assert not slow.done(), slow
                await asyncio.sleep(0.02)
            for bad in ({"for_s": 0}, {"for_s": 3601}, {"for_s": "2"}, {"other": 1}):
                async with http.post(url + "/_sim/kill", json=bad) as resp:
                    assert resp.status == 400, bad
            t0 = time.time()
            async with http.post(url + "/_sim/kill", json={"for_s": 2}) as resp:
                assert resp.status == 202
                back_at = (await resp.json())["back_at"]
            assert t0 + 1.9 <= back_at <= time.time() + 2.1
            interrupted = await slow
        assert not interrupted.ok and interrupted.refused, interrupted
        assert interrupted.ttft_ms is not None  # it was cut off mid-answer
        assert proc.returncode is None  # the process lives on; only its sockets died
        assert await _refused(http, url)
        down = await complete(http, url, "vllm", model=MODEL, timeout_s=2)
        assert (down.ok, down.refused, down.status) == (False, True, None)
        assert "ClientConnectorError" in down.error
        while await _refused(http, url):
            assert time.time() < back_at + 3, "the fleet did not come back"
            await asyncio.sleep(0.05)
        assert time.time() >= back_at - 0.1
        async with http.post(url + "/_sim/state", json={"itl_s": 0.0}) as resp:
            assert resp.status == 200
        assert (await complete(http, url, "vllm", model=MODEL, timeout_s=2)).ok
        state = await _state(http, url)
        # served before and after the outage; the cut-off stream failed
        assert (state["completions_served"], state["completions_failed"], state["completions_in_flight"]) == (2, 1, 0)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_kill_needs_a_fleet_started_by_start_fleet(http: aiohttp.ClientSession) -> None:
    from aiohttp import web

    from gtm.sim import FleetSim, make_app

    runner = web.AppRunner(make_app(FleetSim(kind="vllm", model=MODEL)))
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    try:
        async with http.post(f"http://127.0.0.1:{port}/_sim/kill", json={"for_s": 2}) as resp:
            assert resp.status == 501
    finally:
        await runner.cleanup()
