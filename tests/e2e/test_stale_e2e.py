"""All agents stopped together never fail a region over: separate processes on a real Redis
(simulated fleets, one agent per region, the controller with its embedded DNS), every
observation a real DNS query.

One cluster with a short heartbeat (0.4 s) and report timeout (1.2 s): each round stops every
agent at once, keeps querying past the report timeout plus the lapse window and a few controller
cycles, then brings them back. Every region must answer throughout, and the routing (the zone's
SOA serial) must never change. 20 rounds SIGSTOP the agents (as when Redis or the agents' network
hangs: they resume where they were, with their scrapes and probes in flight timed out late — the
agent's own stall, which it must not count against its fleet), and 3 more SIGKILL them (their
hosts crash together) and start new agents.
"""

from __future__ import annotations

import signal
import time

import pytest
import redis.asyncio as redis

from gtm.testing.cluster import EU_CLIENT, REGIONS, US_CLIENT, Cluster
from gtm.testing.redis import RedisProcess

pytestmark = pytest.mark.e2e

HEARTBEAT_S = 0.4
REPORT_TIMEOUT_S = 1.2
ROUNDS = 20
KILL_ROUNDS = 3
ALL = {r[0] for r in REGIONS}
EU = {r[0] for r in REGIONS if r[1] == "EU"}


@pytest.fixture
def redis_proc():
    with RedisProcess() as r:
        yield r


async def _all_answer(c: Cluster, where: str) -> None:
    """Every region answers US clients and both EU regions answer EU clients (60 / 30 real
    queries: with equal weights a region is missed by chance with p < 1e-7)."""
    us = await c.shares(US_CLIENT, 60)
    eu = await c.shares(EU_CLIENT, 30)
    assert set(us) == ALL and set(eu) == EU, f"{where}: US answers {us}, EU answers {eu}; logs in {c.root}"


async def _reporting(c: Cluster, client: redis.Redis) -> bool:
    """Every agent's report is in Redis."""
    return all(await client.mget([f"gtm:{{{c.namespace}}}:report:{r}" for r in sorted(ALL)]))


@pytest.mark.timeout(600)
async def test_agents_stopped_together_never_fail_a_region_over(redis_proc: RedisProcess) -> None:
    agent_args = ("--heartbeat", str(HEARTBEAT_S), "--report-ttl", str(REPORT_TIMEOUT_S))
    async with Cluster(redis_proc.url, extra_agent_args=agent_args,
                       health={"report_timeout_s": REPORT_TIMEOUT_S}) as c:
        await c.wait_shares(lambda s: set(s) == ALL, timeout=15)
        serial = await c.serial()
        # Past the timeout, the lapse window (2 heartbeats) and a few controller cycles.
        stopped_s = REPORT_TIMEOUT_S + 2 * HEARTBEAT_S + 0.6
        checks = 0
        client = redis.Redis.from_url(c.redis_url)
        for n in range(ROUNDS + KILL_ROUNDS):
            killed = n >= ROUNDS
            if killed:
                c.kill_agents()
            else:
                c.signal_agents(signal.SIGSTOP)
            t0 = time.monotonic()
            while time.monotonic() - t0 < stopped_s:
                await _all_answer(c, f"round {n}, {time.monotonic() - t0:.2f}s after the stop")
                checks += 1
            if killed:
                for region in sorted(ALL):
                    c.start_agent(region)
            else:
                c.signal_agents(signal.SIGCONT)
            # Back: answers checked until every agent reports again (at once after SIGCONT; a
            # new agent takes about 1 s on an idle machine, 4 s on a loaded one); the routing
            # never moved.
            t1 = time.monotonic()
            while not await _reporting(c, client):
                assert time.monotonic() - t1 < 15, f"round {n}: agents did not report again; logs in {c.root}"
                await _all_answer(c, f"round {n}, {time.monotonic() - t1:.2f}s after the restart")
                checks += 1
            await _all_answer(c, f"round {n}, all reporting again")
            assert await c.serial() == serial, f"round {n}: the routing changed; logs in {c.root}"
        await client.aclose()
        assert checks >= (ROUNDS + KILL_ROUNDS) * 4
        # The controller held the routing each time, and said why.
        assert c.log("controller").count("static stability") >= ROUNDS + KILL_ROUNDS
