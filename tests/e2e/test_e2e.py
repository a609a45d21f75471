"""End to end, as separate processes on a real Redis: simulated fleets, one agent per region,
the controller with its embedded DNS; faults are real signals to the fleet processes and every
observation is a real DNS query.
"""

from __future__ import annotations

import signal
import time

import pytest

from gtm.testing.cluster import EU_CLIENT, US_CLIENT, Cluster
from gtm.testing.redis import RedisProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def redis_proc():
    with RedisProcess() as r:
        yield r


async def test_killed_fleet_is_excluded_and_residency_holds(redis_proc: RedisProcess) -> None:
    async with Cluster(redis_proc.url) as c:
        before_eu = await c.shares(EU_CLIENT, 200)
        assert set(before_eu) == {"eu-west-1", "eu-central-1"}, before_eu
        before_us = await c.shares(US_CLIENT, 200)
        assert set(before_us) == {"us-east-1", "us-west-2", "eu-west-1", "eu-central-1"}

        serial0 = await c.serial()
        t0 = time.monotonic()
        c.kill_fleet("eu-west-1")
        took = await c.time_until_excluded("eu-west-1", t0, timeout=10, subnet=US_CLIENT, serial0=serial0)
        # Bound: two failed checks at 0.25 s / 0.1 s polls plus a controller cycle (≈0.15 s
        # idle, measured by `make bench`); generous for a loaded CI machine, while a design
        # paced by the 2 s heartbeat (two lapsed heartbeats) would miss it.
        assert took < 3.0, f"exclusion took {took:.2f}s"

        after_eu = await c.shares(EU_CLIENT, 200)
        assert after_eu == {"eu-central-1": 1.0}, "EU clients must stay in the EU, on the survivor"
        after_us = await c.shares(US_CLIENT, 200)
        assert "eu-west-1" not in after_us

        c.start_fleet("eu-west-1")
        await c.wait_fleet("eu-west-1")
        await c.wait_shares(lambda s: "eu-west-1" in s, timeout=15)


async def test_hung_fleet_is_excluded(redis_proc: RedisProcess) -> None:
    async with Cluster(redis_proc.url) as c:
        serial0 = await c.serial()
        t0 = time.monotonic()
        c.signal_fleet("us-west-2", signal.SIGSTOP)
        try:
            took = await c.time_until_excluded("us-west-2", t0, timeout=10, serial0=serial0)
        finally:
            c.signal_fleet("us-west-2", signal.SIGCONT)
        assert took < 4.0, f"hung fleet exclusion took {took:.2f}s"
        await c.wait_shares(lambda s: "us-west-2" in s, timeout=15)


async def test_dns_keeps_answering_when_redis_dies(redis_proc: RedisProcess) -> None:
    """Static stability across processes: Redis gone → the last good routing keeps serving."""
    async with Cluster(redis_proc.url) as c:
        redis_proc.stop()
        time.sleep(1.0)
        shares = await c.shares(US_CLIENT, 200)
        assert set(shares) == {"us-east-1", "us-west-2", "eu-west-1", "eu-central-1"}, shares
        assert "controller" in c.procs and c.procs["controller"].poll() is None
        assert all(c.procs[f"agent-{r}"].poll() is None for r in c.fleet_ports), "agents survive"
        redis_proc.start()
        c.kill_fleet("us-east-1")
        t0 = time.monotonic()
        took = await c.time_until_excluded("us-east-1", t0, timeout=20)
        assert took < 15
