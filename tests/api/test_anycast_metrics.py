"""``/metrics`` exports the plan's anycast announcements (real HTTP, real Redis)."""

from __future__ import annotations

import json

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gtm.api.app import build_app
from gtm.config.loader import Config, policy_digest
from gtm.controller.loop import Controller, ControllerSettings
from gtm.store import Store
from tests.factories import T0, eu_segment, make_inventory, make_policy, make_report, make_service
from tests.support.anycast import EU_PREFIX, SERVICE_PREFIX, with_anycast, with_bgp

pytestmark = pytest.mark.usefixtures("loop_watchdog")


def make_config() -> Config:
    policy = make_policy([with_anycast(make_service(segments=[eu_segment()]), SERVICE_PREFIX, {"eu": EU_PREFIX})])
    inv = with_bgp(make_inventory())
    return Config(policy=policy, inventory=inv, digest=policy_digest(policy, inv), files=())


async def test_metrics_export_the_announcements_and_the_audit_has_them(redis_store: Store) -> None:
    now = [T0]
    ctl = Controller(redis_store, make_config, [], ControllerSettings(owner="api"), clock=lambda: now[0])
    for r in ("eu-central-1", "eu-west-1", "us-east-1", "us-west-2"):
        await redis_store.put_report(make_report(r, T0), ttl_s=60, changed=True)
    await ctl.cycle()
    now[0] = T0 + 1
    await redis_store.put_report(make_report("eu-west-1", T0 + 1, healthy=False, fail=2, seq=2), ttl_s=60,
                                 changed=True)
    await ctl.cycle()
    fields = (await redis_store.read_audit(1))[0][1]
    decisions = json.loads(fields["decisions"])
    assert {"subject": f"anycast {EU_PREFIX}", "action": "eu-west-1 announce (prepend 0, MED 0) → withdraw"} in [
        {"subject": d["subject"], "action": d["action"]} for d in decisions], decisions
    client = TestClient(TestServer(build_app(redis_store, make_config, ctl, None)))
    await client.start_server()
    try:
        text = await (await client.get("/metrics")).text()
    finally:
        await client.close()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    announced = {(s.labels["prefix"], s.labels["region"]): s.value for s in fams["gtm_anycast_announced"].samples}
    assert announced == {
        (EU_PREFIX, "eu-central-1"): 1.0, (EU_PREFIX, "eu-west-1"): 0.0,
        (SERVICE_PREFIX, "eu-central-1"): 1.0, (SERVICE_PREFIX, "eu-west-1"): 0.0,
        (SERVICE_PREFIX, "us-east-1"): 1.0, (SERVICE_PREFIX, "us-west-2"): 1.0,
    }
    planned = {(s.labels["prefix"], s.labels["region"]): s.value
               for s in fams["gtm_anycast_withdraw_planned"].samples}
    assert planned[(EU_PREFIX, "eu-west-1")] == 0.0, "a failure is not a planned withdrawal"
    share = {(s.labels["prefix"], s.labels["region"]): s.value for s in fams["gtm_anycast_share"].samples}
    assert share[(EU_PREFIX, "eu-central-1")] == 1.0
    changed = {s.labels["region"]: s.value for s in fams["gtm_anycast_changed_timestamp_seconds"].samples
               if s.labels["prefix"] == EU_PREFIX}
    assert changed == {"eu-central-1": T0, "eu-west-1": T0 + 1}
