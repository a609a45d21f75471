"""Fleet simulator tests: real HTTP on a free port, parsed with the agent's own scraper."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from gtm.agent.scrape import (
    EngineSample,
    normalise,
    normalise_dcgm,
    parse_exposition,
    scrape_source,
)
from gtm.models.region import FleetSource
from gtm.sim import FleetSim, start_fleet

TIMEOUT = aiohttp.ClientTimeout(total=3)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield session


async def _fleet(kind: str, **kw: object) -> tuple[web.AppRunner, FleetSim]:
    return await start_fleet(kind, "127.0.0.1", 0, "llama-3.1-8b", "2026-10", 2, **kw)  # type: ignore[arg-type]


async def _get(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as resp:
        return resp.status, await resp.text()


@pytest.mark.parametrize("kind", ["vllm", "tgi", "sglang", "triton"])
async def test_serves_real_samples_with_simulated_load(kind: str, http: aiohttp.ClientSession) -> None:
    runner, sim = await _fleet(kind, load=0.9)
    try:
        status, text = await _get(http, sim.url + "/metrics")
        assert status == 200
        s = normalise(kind, parse_exposition(text))
        assert isinstance(s, EngineSample)
        if kind != "tgi":  # TGI exports no model label
            assert s.model == "llama-3.1-8b"
        # 2 replicas at load 0.9: 14 running and 5 queued each, KV 0.9
        assert s.running == 28.0
        assert s.waiting == 10.0
        assert s.kv_usage == pytest.approx(0.9)
        res = await scrape_source(http, FleetSource(name="a", kind=kind, url=sim.url), timeout_s=2.0)
        assert res.up and res.health_ok, res.reasons
    finally:
        await runner.cleanup()


async def test_model_label_rewritten_everywhere(http: aiohttp.ClientSession) -> None:
    runner, sim = await _fleet("vllm")
    try:
        _, text = await _get(http, sim.url + "/metrics")
        assert "facebook/opt-125m" not in text
        assert 'model_name="llama-3.1-8b"' in text
        _, models = await _get(http, sim.url + "/v1/models")
        assert "llama-3.1-8b" in models
    finally:
        await runner.cleanup()


async def test_token_counter_grows_at_configured_rate(http: aiohttp.ClientSession) -> None:
    runner, sim = await _fleet("vllm", tokens_per_s=2000.0, load=0.5)
    try:
        src = FleetSource(name="a", kind="vllm", url=sim.url)
        first = await scrape_source(http, src, 2.0)
        await asyncio.sleep(1.0)  # long enough that a pause inside one scrape can't skew the rate
        second = await scrape_source(http, src, 2.0)
        assert first.engine is not None and second.engine is not None
        assert first.engine.generation_tokens is not None
        assert second.engine.generation_tokens is not None
        rate = (second.engine.generation_tokens - first.engine.generation_tokens) / (
            second.finished_at - first.finished_at
        )
        assert 700 < rate < 1300  # 2000 tokens/s × load 0.5
    finally:
        await runner.cleanup()


async def test_state_endpoint_and_modes(http: aiohttp.ClientSession) -> None:
    runner, sim = await _fleet("vllm")
    try:
        async with http.post(sim.url + "/_sim/state", json={"mode": "dead", "load": 0.2}) as r:
            assert r.status == 200
            body = await r.json()
        assert body["mode"] == "dead" and body["load"] == 0.2
        assert (await _get(http, sim.url + "/health"))[0] == 503

        async with http.post(sim.url + "/_sim/state", json={"mode": "bogus"}) as r:
            assert r.status == 400
        async with http.post(sim.url + "/_sim/state", json={"load": 1.5}) as r:
            assert r.status == 400

        async with http.post(sim.url + "/_sim/state", json={"mode": "wedged"}) as r:
            assert r.status == 200
        assert (await _get(http, sim.url + "/health"))[0] == 200
        _, t1 = await _get(http, sim.url + "/metrics")
        await asyncio.sleep(0.05)
        _, t2 = await _get(http, sim.url + "/metrics")
        a, b = (normalise("vllm", parse_exposition(t)) for t in (t1, t2))
        assert isinstance(a, EngineSample) and isinstance(b, EngineSample)
        assert a.waiting > 0
        assert a.generation_tokens == b.generation_tokens  # frozen

        async with http.post(sim.url + "/_sim/state", json={"mode": "gpu-degraded"}) as r:
            assert r.status == 200
        _, dcgm = await _get(http, sim.url + "/dcgm/metrics")
        g = normalise_dcgm(parse_exposition(dcgm))
        assert g.degraded == 1 and g.xids == (79,)

        status, state = await _get(http, sim.url + "/_sim/state")
        assert status == 200 and '"gpu-degraded"' in state
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("kind", "path", "dead"),
    [
        ("tgi", "/health", 503),
        ("sglang", "/health_generate", 503),
        ("triton", "/v2/health/ready", 400),
    ],
)
async def test_dead_health_status_per_engine(kind: str, path: str, dead: int, http: aiohttp.ClientSession) -> None:
    runner, sim = await _fleet(kind)
    try:
        assert (await _get(http, sim.url + path))[0] == 200
        sim.set_state(mode="dead")
        assert (await _get(http, sim.url + path))[0] == dead
    finally:
        await runner.cleanup()


async def test_tgi_info_names_the_model(http: aiohttp.ClientSession) -> None:
    runner, sim = await _fleet("tgi")
    try:
        async with http.get(sim.url + "/info") as r:
            assert (await r.json())["model_id"] == "llama-3.1-8b"
    finally:
        await runner.cleanup()


def test_bad_arguments_rejected() -> None:
    with pytest.raises(ValueError):
        FleetSim(kind="nope", model="m")
    with pytest.raises(ValueError):
        FleetSim(kind="vllm", model="m", load=2.0)


async def test_runs_as_a_separate_process(http: aiohttp.ClientSession) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gtm.sim",
        "--kind",
        "sglang",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--model",
        "qwen",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.split()[-1]
        status, text = await _get(http, url + "/metrics")
        assert status == 200 and 'model_name="qwen"' in text
        assert (await _get(http, url + "/health_generate"))[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
