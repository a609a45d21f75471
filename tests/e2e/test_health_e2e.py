"""Health you can trust, end to end as separate processes on a real Redis: simulated fleets, one
agent per region (synthetic completion probes, vantage points probing the other regions'
``vantage_url``), the controller with its embedded DNS; every observation is a real DNS query.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from gtm.agent.daemon import AgentSettings
from gtm.store import connect
from gtm.testing.cluster import EU_CLIENT, US_CLIENT, Cluster
from gtm.testing.redis import RedisProcess

pytestmark = pytest.mark.e2e

DEFAULTS = AgentSettings()
FALL = 2
"""The cluster policy's ``health.fall`` (the default)."""


@pytest.fixture
def redis_proc():
    with RedisProcess() as r:
        yield r


async def test_wedged_completions_fail_the_region_over(redis_proc: RedisProcess) -> None:
    """``/health`` and ``/metrics`` keep answering, completions hang: the probes catch it
    within about ``probe_fall × probe_interval_s + probe_timeout_s``, well before the wedge
    heuristic's ``wedge_min_s``."""
    async with Cluster(redis_proc.url) as c:
        assert set(await c.shares(EU_CLIENT, 100)) == {"eu-west-1", "eu-central-1"}
        serial0 = await c.serial()
        t0 = time.monotonic()
        state = await c.set_sim_state("eu-west-1", mode="wedged")
        assert state["mode"] == "wedged"
        took = await c.time_until_excluded("eu-west-1", t0, timeout=30, subnet=US_CLIENT, serial0=serial0)
        expected = DEFAULTS.probe_fall * DEFAULTS.probe_interval_s + DEFAULTS.probe_timeout_s
        print(f"\nwedged completions excluded after {took:.2f}s "
              f"(probe_fall {DEFAULTS.probe_fall} × interval {DEFAULTS.probe_interval_s:g}s "
              f"+ timeout {DEFAULTS.probe_timeout_s:g}s = {expected:g}s)")
        # + the engine's fall over the agent's fast polls (2 × 0.1 s) and a controller cycle;
        # 3 s of margin for a loaded 2-core CI machine.
        assert took < expected + 3.0, f"wedged fleet excluded only after {took:.2f}s"
        assert await c.shares(EU_CLIENT, 100) == {"eu-central-1": 1.0}

        await c.set_sim_state("eu-west-1", mode="healthy")
        await c.wait_shares(lambda s: "eu-west-1" in s, timeout=20)


async def _vantage_failures(c: Cluster, target: str, min_fail: int, timeout: float) -> dict[str, int]:
    """Wait until every other region's vantage report shows ``target`` failing ``min_fail``
    times in a row (or those listed do); returns consecutive failures per vantage point."""
    store = connect(c.redis_url, ns=c.namespace)
    try:
        deadline = time.monotonic() + timeout
        while True:
            reports = await store.get_vantage(list(c.fleet_ports))
            fails = {v: r.checks[target].consecutive_fail for v, r in reports.items() if target in r.checks}
            if len(fails) == len(c.fleet_ports) - 1 and any(n >= min_fail for n in fails.values()):
                return fails
            assert time.monotonic() < deadline, f"vantage reports never showed {target} failing: {fails}"
            await asyncio.sleep(0.1)
    finally:
        await store.aclose()


async def test_region_unreachable_from_every_vantage_point_is_failed_over(redis_proc: RedisProcess) -> None:
    """eu-central-1's fleet is fine (its own agent says healthy) but no other region reaches its
    public endpoint: a quorum of vantage points fails, the region is failed over."""
    async with Cluster(redis_proc.url) as c:
        serial0 = await c.serial()
        t0 = time.monotonic()
        await c.set_sim_state("eu-central-1", blocked_all_vantage=True)
        took = await c.time_until_excluded("eu-central-1", t0, timeout=30, subnet=US_CLIENT, serial0=serial0)
        print(f"\nregion unreachable from every vantage point excluded after {took:.2f}s")
        # vantage probes every 1 s with a 1 s timeout: a few failed rounds plus a controller cycle
        assert took < 10.0, f"unreachable region excluded only after {took:.2f}s"
        assert await c.shares(EU_CLIENT, 100) == {"eu-west-1": 1.0}, "EU clients stay in the EU"
        fails = await _vantage_failures(c, "eu-central-1", FALL, timeout=5)
        assert set(fails) == {"us-east-1", "us-west-2", "eu-west-1"}

        await c.set_sim_state("eu-central-1", blocked_all_vantage=False)
        await c.wait_shares(lambda s: "eu-central-1" in s, timeout=30)


async def test_region_cut_off_from_one_vantage_point_is_not_failed_over(redis_proc: RedisProcess) -> None:
    """Only us-east-1 cannot reach us-west-2: that is us-east-1's problem, never a failover."""
    async with Cluster(redis_proc.url) as c:
        serial0 = await c.serial()
        await c.set_sim_state("us-west-2", blocked_vantage=["us-east-1"])
        fails = await _vantage_failures(c, "us-west-2", FALL + 1, timeout=20)
        assert fails["us-east-1"] >= FALL + 1
        assert fails["eu-west-1"] == fails["eu-central-1"] == 0
        # Several more rounds of the one failing vantage point: the routing never changes.
        end = time.monotonic() + 4.0
        while time.monotonic() < end:
            shares = await c.shares(US_CLIENT, 40)
            assert "us-west-2" in shares, f"us-west-2 failed over on one vantage point: {shares}"
        assert await c.serial() == serial0, "no routing change was published"
