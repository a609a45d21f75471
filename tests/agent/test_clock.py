"""The agent's clock skew against the Redis server's TIME (real Redis)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from gtm.agent.clock import ClockSkew, skew_from
from gtm.agent.daemon import AgentSettings, RegionAgent
from gtm.models.region import FleetSource, Region
from gtm.store import Store


def test_skew_is_measured_from_the_midpoint_of_the_round_trip() -> None:
    assert skew_from(100.0, 100.2, 100.1) == pytest.approx(0.0)
    assert skew_from(110.0, 110.2, 100.1) == pytest.approx(10.0)  # agent 10 s ahead
    assert skew_from(90.0, 90.0, 100.0) == pytest.approx(-10.0)


async def test_skew_against_a_redis_on_the_same_host_is_small(redis_store: Store) -> None:
    clock = ClockSkew(redis_store, "eu-west-1", bound_s=5.0)
    assert clock.skew_s is None
    skew = await clock.measure()
    assert clock.skew_s == skew
    assert abs(skew) < 1.0  # same host, same clock: only the round trip


async def test_a_skew_beyond_the_bound_is_warned_about_once(redis_store: Store,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    clock = ClockSkew(redis_store, "eu-west-1", bound_s=1e-9)  # any real measurement exceeds it
    with caplog.at_level(logging.INFO, logger="gtm.agent.clock"):
        await clock.measure()
        await clock.measure()
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "region eu-west-1 agent clock is" in warnings[0].getMessage()
        clock.bound_s = 5.0
        await clock.measure()
    assert any("back within 5s" in r.getMessage() for r in caplog.records)


async def test_run_measures_at_once_and_stops(redis_store: Store) -> None:
    clock = ClockSkew(redis_store, "eu-west-1", bound_s=5.0)
    stop = asyncio.Event()
    task = asyncio.create_task(clock.run(stop, interval_s=60.0))
    for _ in range(200):
        if clock.skew_s is not None:
            break
        await asyncio.sleep(0.01)
    assert clock.skew_s is not None
    stop.set()
    await asyncio.wait_for(task, timeout=5)


async def test_the_agent_reports_its_skew(redis_store: Store, fleet: Any) -> None:
    sim = await fleet("vllm", 2)
    reg = Region(name="eu-west-1", jurisdiction="EU", geography={"continent": "EU"},
                 endpoints=[{"address": "192.0.2.30"}],
                 fleet=[FleetSource(name="vllm-a", kind="vllm", url=sim.url, replicas=2)])
    agent = RegionAgent(reg, redis_store, AgentSettings(scrape_interval_s=0.05, heartbeat_s=0.2))
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        for _ in range(500):
            reports, _ = await redis_store.get_reports(["eu-west-1"])
            rep = reports.get("eu-west-1")
            if rep is not None and rep.clock_skew_s is not None:
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    assert rep is not None and rep.clock_skew_s is not None
    assert abs(rep.clock_skew_s) < 1.0
