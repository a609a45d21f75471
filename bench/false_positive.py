"""False failovers under CPU load, and detection times under the same load.

The demo topology (``gtm.testing.cluster.Cluster``: four simulated fleets, one agent per region,
the controller with its embedded DNS, all separate processes on a private real Redis) with the
default agent and health settings, while ``stress-ng --cpu 0`` keeps every core busy (Debian
package ``stress-ng``; ``make bench`` installs it). Nothing fails during the observation window,
so every region that leaves the answers is a **false failover**. Counted two ways:

- the embedded DNS's SOA serial, read with real queries every 0.1 s: with static routing it
  changes only when a region leaves or rejoins the answers (``dns_serial_changes``);
- the audit stream: every ``region X: healthy|degraded → unhealthy|unknown`` decision of the
  window (``false_failovers``, with the engine's reasons).

Also sampled from Redis every 0.5 s: each region's published scrape latencies and the failed
checks that did not reach ``fall`` (``near_misses``: a check failed once, the region stayed in).

Then, under the same load, fleet-kill (SIGKILL) and hung-fleet (SIGSTOP) detection times
(``bench.failover``'s trials: signal → first DNS answer set without the region).

Usage: python -m bench.false_positive [--duration 600] [--trials 5] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from bench import failover
from gtm.agent.daemon import AgentSettings
from gtm.models.audit import AuditEntry
from gtm.models.policy import HealthThresholds
from gtm.models.report import FleetReport
from gtm.providers.dnsclient import query
from gtm.testing.cluster import Cluster
from gtm.testing.redis import RedisProcess

SERVING = ("healthy", "degraded")


def start_stress() -> subprocess.Popen[bytes]:
    """``stress-ng --cpu 0`` (one CPU hog per online core) in its own session.

    Raises:
        RuntimeError: stress-ng is not installed (``apt-get install stress-ng``).
    """
    exe = shutil.which("stress-ng")
    if exe is None:
        raise RuntimeError("stress-ng is not installed: apt-get install stress-ng (make bench does it)")
    return subprocess.Popen([exe, "--cpu", "0", "--timeout", "0", "--quiet"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def stop_stress(proc: subprocess.Popen[bytes]) -> None:
    """End the stress-ng process group started by ``start_stress``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return round(s[min(len(s) - 1, int(len(s) * q))], 1) if s else 0.0


async def _observe(cluster: Cluster, r: aioredis.Redis, duration_s: float) -> dict[str, Any]:
    """Watch the cluster for ``duration_s`` seconds with nothing failing."""
    ns = cluster.namespace
    audit_key = f"gtm:{{{ns}}}:audit"
    last = await r.xrevrange(audit_key, count=1)
    start_id = last[0][0] if last else "0-0"
    serial0 = await cluster.serial()
    serials: list[tuple[float, int]] = []
    latencies: dict[str, list[float]] = {}
    near: dict[str, set[int]] = {}
    queries = errors = 0
    t0, wall0 = time.monotonic(), time.time()
    next_sample = t0
    current = serial0
    while time.monotonic() - t0 < duration_s:
        try:
            resp = await query("127.0.0.1", cluster.dns_port, "gtm.example.com", "SOA", timeout=1.0)
            s = int(resp.answer[0][0].serial)
            queries += 1
            if s != current:
                serials.append((round(time.monotonic() - t0, 2), s))
                current = s
        except Exception:
            errors += 1
        if time.monotonic() >= next_sample:
            next_sample += 0.5
            for region, text in zip(failover.TARGETS, await r.mget([f"gtm:{{{ns}}}:report:{t}"
                                                                     for t in failover.TARGETS]), strict=True):
                if text is None:
                    continue
                rep = FleetReport.model_validate_json(text)
                latencies.setdefault(region, []).extend(s.latency_ms for s in rep.sources)
                if rep.consecutive_fail:
                    near.setdefault(region, set()).add(rep.seq - rep.consecutive_fail + 1)
        await asyncio.sleep(0.1)
    elapsed = time.monotonic() - t0
    entries = await r.xrange(audit_key, min=f"({start_id}", max="+")
    failovers = []
    for _id, fields in entries:
        entry = AuditEntry.from_fields(fields)
        for d in entry.decisions:
            if not d.subject.startswith("region ") or "→" not in d.action:
                continue
            before, after = (x.strip() for x in d.action.split("→", 1))
            if before in SERVING and after not in SERVING:
                failovers.append({"at_s": round(entry.ts - wall0, 2),
                                  "region": d.subject.removeprefix("region "), "change": d.action,
                                  "reason": d.reason})
    return {
        "duration_s": round(elapsed, 1),
        "false_failovers": len(failovers),
        "failovers": failovers,
        "dns_serial_changes": len(serials),
        "dns_serial_changes_at_s": serials[:50],
        "dns_soa_queries": queries,
        "dns_query_errors": errors,
        "near_misses": {k: len(v) for k, v in sorted(near.items())},
        "scrape_latency_ms": {
            region: {"samples": len(xs), "p50": _pct(xs, 0.5), "p99": _pct(xs, 0.99), "max": round(max(xs), 1)}
            for region, xs in sorted(latencies.items()) if xs
        },
    }


def _summary(xs: list[float]) -> dict[str, Any]:
    return failover._summary(xs) if xs else {"trials": 0}


async def run_async(duration_s: float = 600.0, trials: int = 5, settle_s: float = 10.0) -> dict[str, Any]:
    """The whole run; see the module docstring. ``settle_s``: seconds of load before observing."""
    stress: subprocess.Popen[bytes] | None = None
    with RedisProcess() as redis:
        async with Cluster(redis.url) as cluster:
            r = aioredis.Redis.from_url(redis.url, decode_responses=True)
            try:
                stress = start_stress()
                await asyncio.sleep(settle_s)
                observed = await _observe(cluster, r, duration_s)
                killed = await failover._trials(cluster, "killed", trials) if trials else []
                hung = await failover._trials(cluster, "hung", trials) if trials else []
            finally:
                if stress is not None:
                    stop_stress(stress)
                await r.aclose()
    a, h = AgentSettings(), HealthThresholds()
    return {
        "load": f"stress-ng --cpu 0 on {os.cpu_count()} cores",
        "settings": {"scrape_interval_s": a.scrape_interval_s, "scrape_timeout_s": a.scrape_timeout_s,
                     "transition_poll_s": a.transition_poll_s, "heartbeat_s": a.heartbeat_s,
                     "fall": h.fall, "rise": h.rise, "report_timeout_s": h.report_timeout_s},
        **observed,
        "killed": _summary(killed),
        "hung": _summary(hung),
        "targets": {"false_failovers": 0, "killed_median_s": 0.5, "hung_median_s": 1.5},
        "ok": (observed["false_failovers"] == 0 and observed["dns_serial_changes"] == 0
               and (not killed or statistics.median(killed) <= 0.5)
               and (not hung or statistics.median(hung) <= 1.5)),
    }


def run(duration_s: float = 600.0, trials: int = 5) -> dict[str, Any]:
    return asyncio.run(run_async(duration_s, trials))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0, help="observation window under load, seconds")
    ap.add_argument("--trials", type=int, default=5, help="kill and hang trials each, under the same load")
    ap.add_argument("--out", default="", help="also write the JSON here")
    args = ap.parse_args()
    result = run(args.duration, args.trials)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
