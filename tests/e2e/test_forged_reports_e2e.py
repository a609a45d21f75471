"""Forged reports, end to end: an attacker with Redis access writes a schema-valid report that
claims a spare capacity of 1e9 for one region, and another, future-dated by an hour and without
expiry, for a second. Separate processes on a real Redis (simulated fleets, one agent per region,
the controller with its embedded DNS); every observation of routing is a real DNS query.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time

import pytest

from gtm.config.loader import load_config
from gtm.controller.status import gather_status
from gtm.models.report import FleetReport, ModelStats
from gtm.store import Store, connect
from gtm.testing.cluster import US_CLIENT, Cluster
from gtm.testing.redis import RedisProcess

pytestmark = pytest.mark.e2e

FORGED_CAPACITY = "us-west-2"
FORGED_FUTURE = "eu-central-1"


@pytest.fixture
def redis_proc():
    with RedisProcess() as r:
        yield r


async def _pause_after_fresh_write(c: Cluster, store: Store, region: str) -> None:
    """SIGSTOP ``region``'s agent right after it wrote a report (its key's expiry was just set),
    so its last genuine report stays fresh through the attack and nothing overwrites the forged
    one: the attacker's best case, a silent agent."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if await store.client.pttl(store.keys.report(region)) > 5700:  # written in the last 0.3 s (TTL 6 s)
            c.procs[f"agent-{region}"].send_signal(signal.SIGSTOP)
            return
        await asyncio.sleep(0.01)
    raise TimeoutError(f"agent of {region} did not write a report")


def _forged(genuine: FleetReport, **update: object) -> FleetReport:
    return genuine.model_copy(update={"seq": genuine.seq + 1, "agent_id": "attacker", **update})


async def test_forged_reports_are_rejected_counted_and_routing_unchanged(redis_proc: RedisProcess) -> None:
    async with Cluster(redis_proc.url, routing="capacity") as c:
        store = connect(redis_proc.url, ns=c.namespace)
        config = load_config(str(c.root / "policy.yaml"), str(c.root / "regions"))
        try:
            await asyncio.sleep(3)  # capacity weights settle
            before = await store.get_desired()
            assert before is not None
            weights_before = {pid: {m.region: m.weight for m in p.members} for pid, p in before.pools.items()}
            for region in (FORGED_CAPACITY, FORGED_FUTURE):
                await _pause_after_fresh_write(c, store, region)
            try:
                await asyncio.sleep(0.6)  # the controller reads the last genuine reports (0.5 s tick)
                reports, _ = await store.get_reports([FORGED_CAPACITY, FORGED_FUTURE])
                genuine_cap, genuine_fut = reports[FORGED_CAPACITY], reports[FORGED_FUTURE]
                now = time.time()
                huge = _forged(genuine_cap, observed_at=now, spare_capacity=1e9, models={
                    m: ModelStats(**{**s.model_dump(), "spare_capacity": 1e9}) for m, s in genuine_cap.models.items()})
                future = _forged(genuine_fut, observed_at=now + 3600)
                # As an attacker would: a SET with a believable expiry, and a plain SET (no expiry);
                # then wake the controller.
                await store.client.set(store.keys.report(FORGED_CAPACITY), huge.model_dump_json(), px=6000)
                await store.client.set(store.keys.report(FORGED_FUTURE), future.model_dump_json())
                await store.publish(f"report:{FORGED_CAPACITY}")
                await store.publish(f"report:{FORGED_FUTURE}")
                await asyncio.sleep(0.5)
                shares = await c.shares(US_CLIENT, 100)
                status = await gather_status(store, config)
                after = await store.get_desired()
            finally:
                for region in (FORGED_CAPACITY, FORGED_FUTURE):
                    c.procs[f"agent-{region}"].send_signal(signal.SIGCONT)

            # Routing unchanged: the forged capacity took nothing, the silent region kept its place.
            assert set(shares) == {"us-east-1", "us-west-2", "eu-west-1", "eu-central-1"}, shares
            assert shares[FORGED_CAPACITY] < 0.6, shares  # 1e9 believed would take ~every answer
            assert after is not None
            for pid, pool in after.pools.items():
                got = {m.region: m.weight for m in pool.members}
                for region in (FORGED_CAPACITY, FORGED_FUTURE):
                    assert got.get(region) == weights_before[pid].get(region), (pid, got, weights_before[pid])

            # Rejected, with the reason, in `gtm status`'s data.
            rows = {r["region"]: r for r in status["regions"]}
            assert rows[FORGED_CAPACITY]["reason"].startswith("report rejected: spare capacity 1e+09")
            assert rows[FORGED_FUTURE]["reason"] == "report rejected: report key has no expiry"
            assert rows["us-east-1"]["report_rejected"] is None

            # Counted per region and reason, once per payload (the controller and status both read them).
            assert await store.rejected_by_reason() == {FORGED_CAPACITY: {"capacity": 1},
                                                        FORGED_FUTURE: {"no-expiry": 1}}
            assert "rejected report for us-west-2: spare capacity 1e+09" in c.log("controller")

            # `gtm status -o json` (a separate process) shows the counts once the agents are back.
            proc = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "gtm.cli.main", "status", "-o", "json", "--redis", redis_proc.url,
                 "--ns", c.namespace, "--policies", str(c.root / "policy.yaml"), "--regions", str(c.root / "regions")],
                capture_output=True, text=True, timeout=60,
            )
            assert proc.returncode == 0, proc.stderr
            doc = json.loads(proc.stdout)
            cli_rows = {r["region"]: r for r in doc["regions"]}
            assert cli_rows[FORGED_CAPACITY]["rejected_reports"] == {"capacity": 1}
            assert cli_rows[FORGED_FUTURE]["rejected_reports"] == {"no-expiry": 1}
            assert doc["rejected_reports"] == 2
            await c.wait_shares(lambda s: len(s) == 4 and "none" not in s, timeout=20)
        finally:
            await store.aclose()
