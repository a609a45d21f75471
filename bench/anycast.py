"""Anycast: seconds from an event until BIRD's table changed, over N trials each (real ExaBGP 5
and BIRD 2 on loopback, agents as separate processes with default settings, a private Redis).

- ``fleet_failure``: a region's fleet is SIGKILLed; its agent withdraws by itself (fall 2,
  scrape every 0.25 s, 0.1 s between checks while the verdict changes): time until the route is
  gone at BIRD. Target: median ≤ 1 s.
- ``drain_graceful``: the plan withdraws the region with ``planned=True`` (what the engine
  writes for ``gtm drain``): time until BIRD has the route with GRACEFUL_SHUTDOWN (local
  preference 0, so traffic already moves) — the agent reads the plan every 0.25 s;
- ``drain_gone``: ... and until the route is gone (after the default 5 s hold).

Those three are measured with the plan written by the benchmark (standing in for the
controller: the agent → ExaBGP → BIRD path alone). ``with_controller`` repeats the events with
a real ``gtm controller`` planning (static equal weights, default safety rules: a drain steps the
weight down by ``planned_step`` every ``step_interval_s``, growing the prepends, then withdraws
through GRACEFUL_SHUTDOWN) and measures both data planes of the same event at once:

- ``fleet_killed``: ``bgp_s`` (route gone at BIRD) and ``dns_s`` (20 real queries in a row to
  the controller's embedded DNS no longer name the region);
- ``gtm_drain``: from ``gtm drain`` returning, ``bgp_graceful_s`` (GRACEFUL_SHUTDOWN at BIRD),
  ``bgp_gone_s`` (route gone) and ``dns_gone_s`` (answers no longer name the region).

Polling BIRD with ``birdc`` takes about 3-5 ms a read; each figure is an upper bound to that.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from gtm.agent.bgp import BgpSettings
from gtm.testing.anycast import AnycastLab
from gtm.testing.redis import RedisProcess


def _summary(xs: list[float]) -> dict[str, Any]:
    s = sorted(xs)
    return {"trials": len(xs), "median_s": round(statistics.median(xs), 3),
            "p90_s": round(s[max(0, int(len(xs) * 0.9) - 1)], 3), "min_s": round(min(xs), 3),
            "max_s": round(max(xs), 3), "all_s": [round(x, 3) for x in xs]}


async def run_async(trials: int = 10) -> dict[str, Any]:
    settings = BgpSettings()
    failure: list[float] = []
    graceful: list[float] = []
    gone: list[float] = []
    with RedisProcess() as redis:
        async with AnycastLab(redis.url, regions=2, graceful_s=settings.graceful_s) as lab:
            r, other = lab.names
            both = {n: {"action": "announce"} for n in lab.names}
            await lab.put_plan(both)
            await lab.wait_routes(lambda rs: r in rs and other in rs)
            for _ in range(trials):
                t0 = time.monotonic()
                lab.kill_fleet(r)
                await lab.wait_routes(lambda rs: r not in rs, timeout=10, poll_s=0.002)
                failure.append(time.monotonic() - t0)
                lab.start_fleet(r)
                await lab.wait_routes(lambda rs: r in rs, timeout=20)
                await asyncio.sleep(0.3)
            for _ in range(trials):
                t0 = time.monotonic()
                await lab.put_plan({r: {"action": "withdraw", "planned": True}, other: {"action": "announce"}})
                await lab.wait_routes(lambda rs: r in rs and rs[r].graceful_shutdown, timeout=10, poll_s=0.002)
                graceful.append(time.monotonic() - t0)
                await lab.wait_routes(lambda rs: r not in rs, timeout=settings.graceful_s + 10, poll_s=0.002)
                gone.append(time.monotonic() - t0)
                await lab.put_plan(both)
                await lab.wait_routes(lambda rs: r in rs and not rs[r].graceful_shutdown, timeout=10)
                await asyncio.sleep(0.3)
    controlled = await _with_controller(trials, settings)
    return {
        "with_controller": controlled,
        "settings": {"fall": settings.fall, "rise": settings.rise, "graceful_s": settings.graceful_s,
                     "plan_poll_s": settings.plan_poll_s, "scrape_interval_s": 0.25, "regions": 2,
                     "speaker": "ExaBGP 5 (exabgp server, API process)", "router": "BIRD 2 (birdc polled)"},
        "fleet_failure": _summary(failure),
        "drain_graceful": _summary(graceful),
        "drain_gone": _summary(gone),
        "targets": {"fleet_failure_median_s": 1.0},
    }


async def _with_controller(trials: int, settings: BgpSettings) -> dict[str, Any]:
    kill_bgp: list[float] = []
    kill_dns: list[float] = []
    drain_graceful: list[float] = []
    drain_gone: list[float] = []
    drain_dns: list[float] = []
    with RedisProcess() as redis:
        async with AnycastLab(redis.url, regions=2, graceful_s=settings.graceful_s, controller=True) as lab:
            r, other = lab.names
            await lab.wait_routes(lambda rs: r in rs and other in rs, timeout=30)
            await lab.wait_dns(lambda s: s == {r, other}, timeout=30)
            for _ in range(trials):
                lab.kill_fleet(r)
                bgp = asyncio.create_task(lab.wait_routes(lambda rs: r not in rs, timeout=15, poll_s=0.002))
                dns = asyncio.create_task(lab.wait_dns(lambda s: r not in s, timeout=15, poll_s=0.002))
                await asyncio.gather(bgp, dns)
                kill_bgp.append(bgp.result())
                kill_dns.append(dns.result())
                lab.start_fleet(r)
                await lab.wait_routes(lambda rs: r in rs, timeout=30)
                await lab.wait_dns(lambda s: s == {r, other}, timeout=30)
                await asyncio.sleep(0.3)
            for _ in range(trials):
                await lab.drain(r)
                graceful = asyncio.create_task(lab.wait_routes(lambda rs: r in rs and rs[r].graceful_shutdown,
                                                               timeout=30, poll_s=0.002))
                gone = asyncio.create_task(lab.wait_routes(lambda rs: r not in rs, timeout=30, poll_s=0.002))
                dns = asyncio.create_task(lab.wait_dns(lambda s: r not in s, timeout=30, poll_s=0.002))
                await asyncio.gather(graceful, gone, dns)
                drain_graceful.append(graceful.result())
                drain_gone.append(gone.result())
                drain_dns.append(dns.result())
                await lab.drain(r, undo=True)
                await lab.wait_routes(lambda rs: r in rs and rs[r].prepend_count == 0, timeout=30)
                await lab.wait_dns(lambda s: s == {r, other}, timeout=30)
                await asyncio.sleep(0.3)
    return {
        "fleet_killed": {"bgp": _summary(kill_bgp), "dns": _summary(kill_dns)},
        "gtm_drain": {"bgp_graceful": _summary(drain_graceful), "bgp_gone": _summary(drain_gone),
                      "dns_gone": _summary(drain_dns)},
    }


def run(trials: int = 10) -> dict[str, Any]:
    return asyncio.run(run_async(trials))


if __name__ == "__main__":
    import json

    print(json.dumps(run(4), indent=2))
