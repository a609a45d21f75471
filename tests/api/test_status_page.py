"""The status page and the drill / plan-time series over real HTTP (aiohttp test server) and a
real Redis; the page's text is checked as a browser would get it (the e2e test renders it in
headless Chromium)."""

from __future__ import annotations

import re
import time

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gtm.api.app import build_app
from gtm.api.drills import last_verdict, verdict_of
from gtm.controller.loop import Controller, ControllerSettings
from gtm.models.audit import AuditEntry
from gtm.models.drill import DrillLock
from gtm.store import Store
from tests.api.test_api import make_config
from tests.factories import make_override, make_report

pytestmark = pytest.mark.usefixtures("loop_watchdog")

REGIONS = ("eu-central-1", "eu-west-1", "us-east-1", "us-west-2")


async def _client(store: Store, ctl: Controller | None) -> TestClient:
    client = TestClient(TestServer(build_app(store, make_config, ctl, None)))
    await client.start_server()
    return client


async def _controller(store: Store, now: float) -> Controller:
    ctl = Controller(store, make_config, [], ControllerSettings(owner="page"), clock=lambda: now)
    for r in REGIONS:
        await store.put_report(make_report(r, now), ttl_s=60, changed=True)
    await store.put_report(make_report("us-west-2", now, healthy=False, fail=2), ttl_s=60, changed=True)
    return ctl


async def test_page_shows_regions_overrides_drill_and_audit_escaped(redis_store: Store) -> None:
    now = time.time()
    ctl = await _controller(redis_store, now)
    evil = "<script>alert(1)</script> & co"
    await redis_store.put_override(make_override("eu-west-1", "drain", since=now).model_copy(
        update={"reason": evil, "actor": "alice", "expires_at": now + 600}))
    await ctl.cycle()
    lock = DrillLock(id="drill-drain-eu-central-1-1", kind="drain", region="eu-central-1", actor="bob",
                     started=now - 5, phase="hold", expires_at=now + 30)
    assert await redis_store.acquire_drill(lock, 30) is None
    await redis_store.append_audit(AuditEntry(ts=now, action="drill verdict", via="drill", region="us-east-1",
                                              actor="carol", note="kill us-east-1: ... — failed: 3 requests lost"))
    client = await _client(redis_store, ctl)
    try:
        for path in ("/", "/status"):
            r = await client.get(path)
            assert r.status == 200 and r.content_type == "text/html"
            page = await r.text()
            assert '<meta http-equiv="refresh" content="5">' in page
            for region in REGIONS:
                assert f"id='region-{region}'" in page
            assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
            assert re.search(r"<td class='bad'>unhealthy</td>", page)
            assert "Drill running: drain eu-central-1 (drill-drain-eu-central-1-1) by bob, phase hold" in page
            assert "<td class='bad'>failed</td>" in page  # the drill verdict row
            assert "leader" in page and "page" in page  # the lease holder's owner id
            assert "plan generation" in page
            assert "drain (alice: " in page  # the region's override with its actor
        r = await client.get("/v1/status")  # unchanged JSON
        assert r.status == 200 and {row["region"] for row in (await r.json())["regions"]} == set(REGIONS)
    finally:
        await client.close()


async def test_page_without_a_plan_and_when_redis_fails(redis_store: Store) -> None:
    client = await _client(redis_store, None)
    try:
        page = await (await client.get("/")).text()
        assert "none stored yet" in page and "No drill running." in page and "id='no-leader'" in page
    finally:
        await client.close()
    from gtm.store import connect

    dead = connect("redis://127.0.0.1:1/0", ns=redis_store.keys.ns, timeout_s=0.2)
    client = await _client(dead, None)
    try:
        r = await client.get("/")
        assert r.status == 503 and "id='store-error'" in await r.text()
    finally:
        await client.close()
        await dead.aclose()


async def test_metrics_plan_time_drills_report_age_and_local_publishers(redis_store: Store) -> None:
    now = time.time()
    ctl = await _controller(redis_store, now)
    await ctl.cycle()
    await ctl.cycle()
    client = await _client(redis_store, ctl)
    try:
        fams = {f.name: f for f in text_string_to_metric_families(await (await client.get("/metrics")).text())}
        assert fams["gtm_drill_running"].samples[0].value == 0.0
        assert "gtm_drill_last_verdict" not in fams
        hist = {s.name: s for s in fams["gtm_plan_duration_seconds"].samples if s.labels.get("le") in (None, "+Inf")}
        assert hist["gtm_plan_duration_seconds_count"].value == 2.0
        assert 0 < hist["gtm_plan_duration_seconds_sum"].value < 5
        assert fams["gtm_plan_generated_timestamp_seconds"].samples[0].value == pytest.approx(now)
        ages = {s.labels["region"]: s.value for s in fams["gtm_region_report_age_seconds"].samples}
        assert set(ages) == set(REGIONS) and all(0 <= a < 60 for a in ages.values())

        lock = DrillLock(id="drill-failover-eu-west-1-1", kind="failover", region="eu-west-1", actor="bob",
                         started=now, expires_at=now + 30)
        assert await redis_store.acquire_drill(lock, 30) is None
        await redis_store.append_audit(AuditEntry(ts=now - 100, action="drill verdict", via="drill",
                                                  note="drain eu-west-1: x — failed: residency broken"))
        await redis_store.append_audit(AuditEntry(ts=now, action="drill failover start", via="drill",
                                                  region="eu-west-1", reason="practice"))
        await redis_store.append_audit(AuditEntry(ts=now + 1, action="drill failover verdict", via="drill",
                                                  region="eu-west-1", note="failover eu-west-1: y — passed"))
        fams = {f.name: f for f in text_string_to_metric_families(await (await client.get("/metrics")).text())}
        assert fams["gtm_drill_running"].samples[0].value == 1.0
        assert fams["gtm_drill_info"].samples[0].labels == {"id": lock.id, "kind": "failover", "region": "eu-west-1",
                                                           "phase": "act"}
        verdicts = {s.labels["verdict"]: s.value for s in fams["gtm_drill_last_verdict"].samples}
        assert verdicts == {"passed": 1.0, "failed": 0.0, "aborted": 0.0, "refused": 0.0}
        assert {s.labels["kind"] for s in fams["gtm_drill_last_verdict"].samples} == {"failover"}
    finally:
        await client.close()


def test_verdicts_read_from_drill_audit_entries() -> None:
    def e(**kw: object) -> AuditEntry:
        return AuditEntry(ts=1.0, via="drill", **kw)  # type: ignore[arg-type]

    v = verdict_of(e(action="drill verdict", note="kill us-east-1: traffic left ... — aborted: p99 over"))
    assert v is not None and (v.kind, v.region, v.verdict) == ("kill", "us-east-1", "aborted")
    v = verdict_of(e(action="drill drain verdict", region="eu-west-1", reason="refused: a rollout is in flight"))
    assert v is not None and (v.kind, v.region, v.verdict) == ("drain", "eu-west-1", "refused")
    assert verdict_of(e(action="drill drain start", reason="the drill failed last week")) is None
    assert verdict_of(AuditEntry(ts=1.0, via="cli", action="drill verdict", note="x — passed")) is None
    assert verdict_of(e(action="drill verdict", note="no verdict word here")) is None
    rows = [("2-0", e(action="drill verdict", note="failover eu-west-1: — passed").to_fields()),
            ("1-0", e(action="drill verdict", note="drain eu-west-1: — failed").to_fields()),
            ("0-0", {"via": "drill", "ts": "not a time"})]
    found = last_verdict(rows)
    assert found is not None and found.verdict == "passed" and found.kind == "failover"
    assert last_verdict(rows[2:]) is None


def test_rollouts_of_the_policy_not_started_are_listed() -> None:
    from gtm.api.status_page import render_status_page

    page = render_status_page({"namespace": "n", "providers": {}}, overrides={}, rollouts={}, drill=None, audit=[],
                              desired=None, now=1.0, not_started=["llama-v2"])
    assert "<td class='unk'>not started</td>" in page and "gtm rollout start llama-v2" in page
    page = render_status_page({"namespace": "n"}, overrides={}, rollouts={}, drill=None, audit=[], desired=None,
                              now=1.0)
    assert "no rollout in the policy" in page
