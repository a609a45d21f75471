"""Fleet failure → embedded DNS answers exclude its region: seconds, over N trials.

Separate processes (simulated fleet, agent per region, controller with embedded DNS) on a
private real Redis. Default agent and health settings (``AgentSettings``: scrape 0.25 s,
timeout 0.5 s, heartbeat 2 s; fall 2, rise 3). Two faults:

- killed: the fleet process gets SIGKILL (connections refused);
- hung: the fleet process gets SIGSTOP (the kernel still accepts TCP connections, nothing
  answers), resumed with SIGCONT after the trial.

Time is measured from the signal to the first real SOA answer (UDP) carrying a new serial,
confirmed by 30 real answers for the service (US client subnet) that all exclude the region
(an upper bound, accurate to one ~2 ms poll).
"""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from typing import Any

from gtm.agent.daemon import AgentSettings
from gtm.models.policy import HealthThresholds
from gtm.testing.cluster import Cluster
from gtm.testing.redis import RedisProcess

TARGETS = ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1")


async def _trials(cluster: Cluster, fault: str, n: int) -> list[float]:
    out: list[float] = []
    for i in range(n):
        region = TARGETS[i % len(TARGETS)]
        serial0 = await cluster.serial()
        t0 = time.monotonic()
        if fault == "killed":
            cluster.kill_fleet(region)
        else:
            cluster.signal_fleet(region, signal.SIGSTOP)
        out.append(await cluster.time_until_excluded(region, t0, timeout=15, serial0=serial0))
        if fault == "killed":
            cluster.start_fleet(region)
            await cluster.wait_fleet(region)
        else:
            cluster.signal_fleet(region, signal.SIGCONT)
        await cluster.wait_shares(lambda s, r=region: r in s and "none" not in s, timeout=20)
        await asyncio.sleep(0.3)
    return out


def _summary(xs: list[float]) -> dict[str, Any]:
    xs_sorted = sorted(xs)
    return {
        "trials": len(xs),
        "median_s": round(statistics.median(xs), 3),
        "p90_s": round(xs_sorted[max(0, int(len(xs) * 0.9) - 1)], 3),
        "min_s": round(min(xs), 3),
        "max_s": round(max(xs), 3),
        "all_s": [round(x, 3) for x in xs],
    }


async def run_async(trials: int = 10) -> dict[str, Any]:
    with RedisProcess() as redis:
        async with Cluster(redis.url) as cluster:
            killed = await _trials(cluster, "killed", trials)
            hung = await _trials(cluster, "hung", trials)
    agent, health = AgentSettings(), HealthThresholds()
    return {
        "settings": {"scrape_interval_s": agent.scrape_interval_s, "scrape_timeout_s": agent.scrape_timeout_s,
                     "heartbeat_s": agent.heartbeat_s, "fall": health.fall, "rise": health.rise,
                     "controller_tick_s": 0.5},
        "killed": _summary(killed),
        "hung": _summary(hung),
        "targets": {"killed_median_s": 0.5, "hung_median_s": 1.5},
    }


def run(trials: int = 10) -> dict[str, Any]:
    return asyncio.run(run_async(trials))


if __name__ == "__main__":
    import json

    print(json.dumps(run(4), indent=2))
