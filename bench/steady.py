"""Steady state: with nothing changing, how many writes reach DNS and Redis.

Runs the process cluster on a private redis-server, waits until the routing has settled,
then measures over a window: the embedded DNS's SOA serial (read with a real query; it grows
with every applied DNS update), the applied-generation record, the audit stream length, and
Redis write commands from ``INFO commandstats`` (SET: agent reports; PEXPIRE: the controller's
lease renewals; XADD/PUBLISH: state changes).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis

from gtm.providers.dnsclient import query
from gtm.testing.cluster import Cluster
from gtm.testing.redis import RedisProcess

WRITE_COMMANDS = ("set", "xadd", "publish", "eval", "evalsha", "hincrby", "del", "pexpire", "incr")


async def _serial(cluster: Cluster) -> int:
    resp = await query("127.0.0.1", cluster.dns_port, "gtm.example.com", "SOA")
    return int(resp.answer[0][0].serial)


async def _writes(r: aioredis.Redis) -> dict[str, int]:
    stats = await r.info("commandstats")
    return {c: int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in WRITE_COMMANDS}


async def run_async(window_s: float = 20.0) -> dict[str, Any]:
    with RedisProcess() as redis:
        async with Cluster(redis.url, routing="capacity", planned_step=64) as cluster:
            r = aioredis.Redis.from_url(redis.url, decode_responses=True)
            try:
                await asyncio.sleep(8)  # let ramps and deadbands settle
                serial0 = await _serial(cluster)
                audit0 = await r.xlen(f"gtm:{{{cluster.namespace}}}:audit")
                w0 = await _writes(r)
                t0 = time.monotonic()
                await asyncio.sleep(window_s)
                elapsed = time.monotonic() - t0
                w1 = await _writes(r)
                serial1 = await _serial(cluster)
                audit1 = await r.xlen(f"gtm:{{{cluster.namespace}}}:audit")
            finally:
                await r.aclose()
    delta = {c: w1[c] - w0[c] for c in WRITE_COMMANDS if w1[c] - w0[c]}
    heartbeats = elapsed / 2.0
    return {
        "window_s": round(elapsed, 2),
        "dns_updates": serial1 - serial0,
        "audit_entries": audit1 - audit0,
        "redis_writes": delta,
        "report_writes_per_agent_per_heartbeat": round(delta.get("set", 0) / 4 / heartbeats, 2),
        "note": "set = agent reports; pexpire = the controller renewing its leader lease (one per 0.5 s tick)",
    }


def run(window_s: float = 20.0) -> dict[str, Any]:
    return asyncio.run(run_async(window_s))


if __name__ == "__main__":
    import json

    print(json.dumps(run(10), indent=2))
