"""Vantage points: an agent probes the other regions' public endpoints (simulated fleets, real
HTTP) and writes what it saw to the real Redis at GTM_TEST_REDIS_URL, under its own key with an
expiry; a simulated fleet can drop the probes of chosen vantage points.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from gtm.agent import AgentSettings, RegionAgent
from gtm.agent.vantage import VANTAGE_HEADER, VantagePoint, probe_target, vantage_targets
from gtm.models.region import Region
from gtm.models.report import VantageReport
from gtm.sim import FleetSim
from gtm.store.store import Store

Fleet = Callable[..., Awaitable[FleetSim]]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.4)) as session:
        yield session


def _region(name: str, vantage_url: str | None = None) -> Region:
    return Region(name=name, jurisdiction="EU", geography={"continent": "EU"},  # type: ignore[arg-type]
                  endpoints=[{"address": "192.0.2.1"}], vantage_url=vantage_url)  # type: ignore[list-item]


async def test_probe_target_reachable_blocked_and_failing(fleet: Fleet, http: aiohttp.ClientSession) -> None:
    sim = await fleet("vllm", 2)
    url = sim.url + "/health"
    ok = await probe_target(http, url, "eu-west-1", 0.5)
    assert ok.ok and ok.reason == "" and ok.latency_ms is not None

    sim.set_state(blocked_vantage=frozenset({"eu-west-1"}))
    blocked = await probe_target(http, url, "eu-west-1", 0.3)
    assert (blocked.ok, blocked.latency_ms, blocked.reason) == (False, None, "no answer within 0.3s")
    assert (await probe_target(http, url, "us-east-1", 0.5)).ok, "only the listed vantage point is cut off"
    async with http.get(url) as resp:  # the fleet's own agent sends no vantage header
        assert resp.status == 200

    sim.set_state(blocked_vantage=frozenset(), blocked_all_vantage=True)
    assert not (await probe_target(http, url, "us-east-1", 0.3)).ok
    sim.set_state(blocked_all_vantage=False, mode="dead")
    dead = await probe_target(http, url, "us-east-1", 0.5)
    assert (dead.ok, dead.reason) == (False, "HTTP 503")
    refused = await probe_target(http, "http://127.0.0.1:9/health", "us-east-1", 0.5)
    assert not refused.ok and refused.reason.startswith("ClientConnectorError")


async def test_sim_state_sets_blocked_vantage_over_http(fleet: Fleet, http: aiohttp.ClientSession) -> None:
    sim = await fleet("tgi", 1)
    async with http.post(sim.url + "/_sim/state", json={"blocked_vantage": ["us-west-2"]}) as resp:
        assert resp.status == 200
        assert (await resp.json())["blocked_vantage"] == ["us-west-2"]
    assert sim.blocks_vantage("us-west-2") and not sim.blocks_vantage("eu-west-1")
    async with http.post(sim.url + "/_sim/state", json={"blocked_vantage": "us-west-2"}) as resp:
        assert resp.status == 400
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3), http.get(sim.url + "/health", headers={VANTAGE_HEADER: "us-west-2"}):
            pass


def test_targets_are_the_other_regions_with_a_vantage_url() -> None:
    regions = [_region("a", "http://a/health"), _region("b", "http://b/health"), _region("c")]
    assert vantage_targets("a", regions) == {"b": "http://b/health"}
    assert vantage_targets("c", regions) == {"a": "http://a/health", "b": "http://b/health"}


async def test_rounds_count_and_are_written_with_expiry(
    fleet: Fleet, http: aiohttp.ClientSession, redis_store: Store
) -> None:
    b, c = await fleet("vllm", 1), await fleet("sglang", 1)
    point = VantagePoint("a", {"b": b.url + "/health", "c": c.url + "/health"}, redis_store, "agent-a",
                         interval_s=1.0, timeout_s=0.3, ttl_s=5.0)
    pubsub = redis_store.client.pubsub()
    await pubsub.subscribe(redis_store.keys.events)
    try:
        await pubsub.get_message(timeout=1.0)  # subscribe confirmation

        rep = await point.round(http)
        assert await point.publish(rep)
        assert {n: (k.reachable, k.consecutive_ok) for n, k in rep.checks.items()} == {"b": (True, 1), "c": (True, 1)}
        assert await _event(pubsub) == "vantage:a", "the first report wakes the controller"

        c.set_state(blocked_vantage=frozenset({"a"}))
        for n in (1, 2):
            rep = await point.round(http)
            await point.publish(rep)
            assert rep.checks["c"].model_dump() == {"target": "c", "reachable": False, "consecutive_ok": 0,
                                                    "consecutive_fail": n, "latency_ms": None,
                                                    "reason": "no answer within 0.3s"}
            assert rep.checks["b"].consecutive_ok == n + 1
            if n == 1:
                assert await _event(pubsub) == "vantage:a", "c's reachability flipped"
        assert await _event(pubsub, 0.2) is None, "the second failure changed nothing: no wake-up"
        assert rep.seq == 3

        key = redis_store.keys.vantage("a")
        ttl_ms = await redis_store.client.pttl(key)
        assert 0 < ttl_ms <= 5000
        stored = VantageReport.model_validate_json(await redis_store.client.get(key))
        assert stored == rep
        assert await redis_store.get_vantage(["a", "b"]) == {"a": rep}
        assert point.writes == 3
    finally:
        await pubsub.aclose()


async def _event(pubsub: object, timeout: float = 2.0) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)  # type: ignore[attr-defined]
        if msg is not None:
            data = msg["data"]
            return data if isinstance(data, str) else data.decode()
    return None


async def test_agent_runs_its_vantage_point(fleet: Fleet, redis_store: Store) -> None:
    peer = await fleet("vllm", 1)
    peer.set_state(blocked_vantage=frozenset({"a"}))
    me = _region("a", "http://127.0.0.1:9/health")
    settings = AgentSettings(scrape_interval_s=0.1, vantage_interval_s=0.1, vantage_timeout_s=0.2,
                             vantage_ttl_s=3.0)
    agent = RegionAgent(me, redis_store, settings, agent_id="agent-a",
                        peers=[me, _region("b", peer.url + "/health"), _region("c")])
    assert dict(agent.vantage.targets) == {"b": peer.url + "/health"}
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        deadline = time.monotonic() + 10
        while True:
            got = await redis_store.get_vantage(["a"])
            if "a" in got and got["a"].checks["b"].consecutive_fail >= 2:
                break
            assert time.monotonic() < deadline, f"no vantage report with 2 failures: {got}"
            await asyncio.sleep(0.05)
        assert got["a"].agent_id == "agent-a" and got["a"].checks["b"].reason == "no answer within 0.2s"
        assert set(got["a"].checks) == {"b"}
    finally:
        stop.set()
        await task
