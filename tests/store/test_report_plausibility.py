"""Reports are checked for plausibility where the engine's inputs are read (real Redis):
rejected, counted per region and reason once per payload, treated as no new report, and shown
by ``gtm status`` as "report rejected: <reason>" and on ``/metrics``."""

from __future__ import annotations

import io
import json
import time

import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from gtm.api.app import build_app
from gtm.cli.render import render_status
from gtm.config.loader import Config, policy_digest
from gtm.controller.status import gather_status
from gtm.models.region import FleetSource, Inventory
from gtm.models.report import FleetReport
from gtm.store import Store
from gtm.store.inputs import read_plan_inputs
from tests.factories import eu_segment, make_inventory, make_policy, make_report, make_service

REGIONS = ["eu-central-1", "eu-west-1", "us-east-1", "us-west-2"]


def inventory() -> Inventory:
    """The four example regions, each with one 3-replica vLLM source."""
    inv = make_inventory()
    src = FleetSource(name="vllm-a", kind="vllm", url="http://127.0.0.1:1", replicas=3)
    return Inventory(regions={n: r.model_copy(update={"fleet": (src,)}) for n, r in inv.regions.items()})


def config() -> Config:
    policy = make_policy([make_service(segments=[eu_segment()])])
    inv = inventory()
    return Config(policy=policy, inventory=inv, digest=policy_digest(policy, inv), files=())


def honest(region: str, **kw: float) -> FleetReport:
    return make_report(region, time.time(), spare=kw.get("spare", 2.0), replicas=(3, 3))


async def read(store: Store) -> tuple[dict[str, FleetReport], dict[str, str], list[str]]:
    cfg = config()
    inputs = await read_plan_inputs(store, REGIONS, inventory=cfg.inventory, thresholds=cfg.policy.health)
    return inputs.reports, inputs.rejected_reasons, inputs.rejected


async def test_server_time_is_the_redis_clock(redis_store: Store) -> None:
    before = time.time()
    t = await redis_store.server_time()
    # Same host: the server's clock reads between our two readings (1 s of slack for a loaded runner).
    assert before - 1.0 <= t <= time.time() + 1.0
    inputs = await read_plan_inputs(redis_store, REGIONS)
    assert before - 1.0 <= inputs.server_time <= time.time() + 1.0


async def test_forged_capacity_is_rejected_counted_once_per_payload_and_left_out(redis_store: Store) -> None:
    store = redis_store
    await store.put_report(honest("us-east-1"), ttl_s=6, changed=False)
    await store.put_report(honest("eu-west-1", spare=1e9), ttl_s=6, changed=False)
    reports, reasons, new = await read(store)
    assert set(reports) == {"us-east-1"}
    assert reasons == {"eu-west-1": "spare capacity 1e+09 idle-replica equivalents above what the inventory allows: "
                                    "the inventory's 3 replicas × (1 + margin 0.25) = 3.75"}
    assert new == [f"rejected report for eu-west-1: {reasons['eu-west-1']}"]
    assert await store.rejected_by_reason() == {"eu-west-1": {"capacity": 1}}
    # Read again: still rejected (and still says why), but not counted or logged again.
    reports, reasons, new = await read(store)
    assert set(reports) == {"us-east-1"} and "eu-west-1" in reasons and new == []
    assert await store.rejected_counts() == {"eu-west-1": 1}
    # Another forged payload counts again.
    await store.put_report(honest("eu-west-1", spare=5e8), ttl_s=6, changed=False)
    _, _, new = await read(store)
    assert len(new) == 1
    assert await store.rejected_by_reason() == {"eu-west-1": {"capacity": 2}}


async def test_future_dated_report_without_expiry_is_rejected(redis_store: Store) -> None:
    store = redis_store
    forged = make_report("eu-central-1", time.time() + 3600, spare=2.0, replicas=(3, 3))
    # An attacker's plain SET: no expiry (the first rule it breaks).
    await store.client.set(store.keys.report("eu-central-1"), forged.model_dump_json())
    reports, reasons, _ = await read(store)
    assert reports == {} and reasons == {"eu-central-1": "report key has no expiry"}
    # With an expiry it is still an hour ahead of the Redis clock.
    await store.client.set(store.keys.report("eu-central-1"), forged.model_dump_json(), px=6000)
    reports, reasons, _ = await read(store)
    assert reports == {}
    assert reasons["eu-central-1"].startswith("report timestamp is 3600.")
    assert reasons["eu-central-1"].endswith("s ahead of the Redis server's clock (max_clock_skew_s 5s)")
    # ...and with an expiry of a day.
    late = make_report("eu-central-1", time.time(), spare=2.0, replicas=(3, 3))
    await store.client.set(store.keys.report("eu-central-1"), late.model_dump_json(), ex=86400)
    _, reasons, _ = await read(store)
    assert reasons["eu-central-1"].startswith("report key expires in 86400s, far above the report timeout")
    assert await store.rejected_by_reason() == {"eu-central-1": {"no-expiry": 1, "future": 1, "ttl": 1}}


async def test_a_rejected_report_does_not_replace_the_last_accepted_one(redis_store: Store) -> None:
    store = redis_store
    good = honest("us-west-2")
    await store.put_report(good, ttl_s=6, changed=False)
    reports, reasons, _ = await read(store)
    assert reports == {"us-west-2": good} and reasons == {}
    await store.client.set(store.keys.report("us-west-2"), honest("us-west-2", spare=1e9).model_dump_json(), px=6000)
    reports, reasons, _ = await read(store)
    # No new report as far as the engine is concerned: the genuine one stands and ages.
    assert reports == {"us-west-2": good} and "us-west-2" in reasons
    # A genuine report again clears the rejection.
    newer = honest("us-west-2", spare=1.0)
    await store.put_report(newer, ttl_s=6, changed=False)
    reports, reasons, _ = await read(store)
    assert reports == {"us-west-2": newer} and reasons == {}


async def test_malformed_reports_keep_their_count_and_old_counts_still_read(redis_store: Store) -> None:
    store = redis_store
    await store.client.set(store.keys.report("eu-west-1"), "{not json", px=6000)
    await store.client.hincrby(store.keys.rejected, "us-east-1", 2)  # written before reasons were kept
    _, reasons, _ = await read(store)
    assert list(reasons) == ["eu-west-1"]
    assert await store.rejected_by_reason() == {"eu-west-1": {"malformed": 1}, "us-east-1": {"malformed": 2}}
    assert await store.rejected_counts() == {"eu-west-1": 1, "us-east-1": 2}


async def test_status_says_report_rejected_never_agent_down(redis_store: Store) -> None:
    store = redis_store
    for r in ("eu-west-1", "us-east-1", "us-west-2"):
        await store.put_report(honest(r), ttl_s=6, changed=False)
    await store.put_report(honest("eu-central-1", spare=1e9), ttl_s=6, changed=False)
    status = await gather_status(store, config())
    row = next(r for r in status["regions"] if r["region"] == "eu-central-1")
    assert row["report_rejected"].startswith("spare capacity 1e+09")
    assert row["reason"] == f"report rejected: {row['report_rejected']}"
    assert row["rejected_reports"] == {"capacity": 1}
    assert status["rejected_reports"] == 1
    others = [r for r in status["regions"] if r["region"] != "eu-central-1"]
    assert all(r["report_rejected"] is None for r in others)
    text = json.dumps(status)
    assert "agent down" not in text and "no report" not in text
    buf = io.StringIO()
    render_status(Console(file=buf, width=400, color_system=None), status)
    human = buf.getvalue()
    assert "report rejected: spare capacity 1e+09" in human and "(rejected)" in human
    assert "agent down" not in human


@pytest.mark.usefixtures("loop_watchdog")
async def test_metrics_count_rejections_per_region_and_reason(redis_store: Store) -> None:
    store = redis_store
    await store.put_report(honest("eu-west-1", spare=1e9), ttl_s=6, changed=False)
    await store.client.set(store.keys.report("us-east-1"), honest("us-east-1").model_dump_json())
    await read(store)
    client = TestClient(TestServer(build_app(store, config, None, None)))
    await client.start_server()
    try:
        text = await (await client.get("/metrics")).text()
    finally:
        await client.close()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.labels["region"], s.labels["reason"]): s.value
               for s in fams["gtm_reports_rejected_by_reason"].samples if s.name.endswith("_total")}
    assert samples == {("eu-west-1", "capacity"): 1.0, ("us-east-1", "no-expiry"): 1.0}


async def test_a_payload_is_counted_once_for_the_installation(redis_store: Store, redis_url: str) -> None:
    # Two readers (two controller replicas, or a controller and `gtm status`) see the same
    # forged payload: both reject it, it is counted once.
    store = redis_store
    other = Store(aioredis.Redis.from_url(redis_url, decode_responses=True), store.keys)
    try:
        await store.put_report(honest("eu-west-1", spare=1e9), ttl_s=6, changed=False)
        _, reasons_a, new_a = await read(store)
        _, reasons_b, new_b = await read(other)
        assert reasons_a == reasons_b and len(new_a) == len(new_b) == 1  # each reader logs it
        assert await store.rejected_by_reason() == {"eu-west-1": {"capacity": 1}}
    finally:
        await other.aclose()
