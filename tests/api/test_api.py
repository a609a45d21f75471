"""The controller's HTTP API over real HTTP (aiohttp test server) and a real Redis."""

from __future__ import annotations

import uuid

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gtm.api.app import build_app
from gtm.config.loader import Config, policy_digest
from gtm.controller.loop import Controller, ControllerSettings
from gtm.store import Store
from tests.factories import T0, eu_segment, make_inventory, make_override, make_policy, make_report, make_service

# The controller's loop also answers DNS: a test fails when it was blocked (see conftest.py).
pytestmark = pytest.mark.usefixtures("loop_watchdog")

TOKEN = "t0ken-" + uuid.uuid4().hex


def make_config() -> Config:
    policy = make_policy([make_service(segments=[eu_segment()])])
    inv = make_inventory()
    return Config(policy=policy, inventory=inv, digest=policy_digest(policy, inv), files=())


@pytest.fixture
def store(redis_store: Store) -> Store:
    """The shared test Redis, in this test's own namespace (tests/conftest.py)."""
    return redis_store


async def client_for(store: Store, token: str | None, ctl: Controller | None = None) -> TestClient:
    client = TestClient(TestServer(build_app(store, make_config, ctl, token)))
    await client.start_server()
    return client


async def test_drain_needs_the_token(store: Store) -> None:
    client = await client_for(store, TOKEN)
    try:
        r = await client.post("/v1/regions/eu-west-1/drain", json={"reason": "kernel"})
        assert r.status == 401
        r = await client.post("/v1/regions/eu-west-1/drain", json={"reason": "kernel"},
                              headers={"Authorization": "Bearer wrong"})
        assert r.status == 401
        assert await store.get_overrides() == {}
        r = await client.post("/v1/regions/eu-west-1/drain", json={"reason": "kernel", "actor": "ops"},
                              headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status == 201
        ovs = await store.get_overrides()
        assert ovs["eu-west-1"].kind == "drain" and ovs["eu-west-1"].actor == "ops"
        entry = (await store.read_audit(1))[0][1]
        assert (entry["action"], entry["actor"], entry["via"]) == ("drain", "ops", "api")
        r = await client.delete("/v1/regions/eu-west-1/drain", headers={"Authorization": f"Bearer {TOKEN}"},
                                json={"reason": "kernel done", "actor": "ops"})
        assert r.status == 200
        assert await store.get_overrides() == {}
        entry = (await store.read_audit(1))[0][1]
        assert entry["action"] == "undrain" and entry["region"] == "eu-west-1" and entry["via"] == "api"
        assert entry["reason"] == "kernel done" and entry["actor"] == "ops"
        r = await client.delete("/v1/regions/mars-1/drain", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status == 404 and "unknown region" in (await r.json())["error"]
    finally:
        await client.close()


async def test_state_changes_disabled_without_a_token(store: Store) -> None:
    client = await client_for(store, None)
    try:
        r = await client.post("/v1/regions/eu-west-1/drain", json={"reason": "x"},
                              headers={"Authorization": "Bearer anything"})
        assert r.status == 403
        assert await store.get_overrides() == {}
    finally:
        await client.close()


async def test_bad_drain_requests_are_rejected(store: Store) -> None:
    client = await client_for(store, TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        assert (await client.post("/v1/regions/mars-1/drain", json={"reason": "x"}, headers=auth)).status == 404
        assert (await client.post("/v1/regions/eu-west-1/drain", data=b"{", headers=auth)).status == 400
        r = await client.post("/v1/regions/eu-west-1/drain", json={"reason": ""}, headers=auth)
        assert r.status == 400
        r = await client.post("/v1/regions/eu-west-1/drain", json={"reason": "x", "kind": "evict"}, headers=auth)
        assert r.status == 400
        assert await store.get_overrides() == {}
        assert (await client.delete("/v1/regions/eu-west-1/drain", headers=auth)).status == 404
    finally:
        await client.close()


async def test_status_and_metrics(store: Store) -> None:
    clock = T0
    ctl = Controller(store, make_config, [], ControllerSettings(owner="api"), clock=lambda: clock)
    for r in ("eu-central-1", "eu-west-1", "us-east-1", "us-west-2"):
        await store.put_report(make_report(r, T0), ttl_s=60, changed=True)
    await store.put_report(make_report("us-west-2", T0, healthy=False, fail=2), ttl_s=60, changed=True)
    await ctl.cycle()
    client = await client_for(store, TOKEN, ctl)
    try:
        r = await client.get("/v1/status")
        assert r.status == 200
        data = await r.json()
        states = {row["region"]: row["state"] for row in data["regions"]}
        assert states["us-west-2"] == "unhealthy" and states["eu-west-1"] == "healthy"
        r = await client.get("/metrics")
        text = await r.text()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        health = {(s.labels["region"], s.labels["state"]): s.value for s in fams["gtm_region_health"].samples}
        assert health[("us-west-2", "unhealthy")] == 1.0 and health[("us-west-2", "healthy")] == 0.0
        weights = {s.labels["region"]: s.value for s in fams["gtm_pool_weight"].samples
                   if s.labels["segment"] == "default"}
        assert weights["us-west-2"] == 0.0 and weights["us-east-1"] > 0
        assert fams["gtm_controller_leader"].samples[0].value == 1.0
        assert fams["gtm_controller_cycles"].type == "counter"
        assert fams["gtm_controller_cycles"].samples[0].name == "gtm_controller_cycles_total"
        assert fams["gtm_controller_cycles"].samples[0].value == 1.0
    finally:
        await client.close()


async def test_metrics_show_rollouts_overrides_and_damping(store: Store) -> None:
    from gtm.controller.rollout import update
    from gtm.engine import rollout as machine
    from gtm.models.rollout import RolloutSpec

    spec = RolloutSpec(name="llama-v2", service="chat", target_version="v2",
                       waves=(("eu-west-1",), ("us-east-1",)), drain_first=True)

    def config() -> Config:
        base = make_config()
        policy = base.policy.model_copy(update={"rollouts": (spec,)})
        return Config(policy=policy, inventory=base.inventory, digest=base.digest, files=())

    ctl = Controller(store, config, [], ControllerSettings(owner="api"), clock=lambda: T0)
    for r in ("eu-central-1", "eu-west-1", "us-east-1", "us-west-2"):
        await store.put_report(make_report(r, T0), ttl_s=60, changed=True)
    await store.put_override(make_override("us-west-2", "cordon", since=T0))
    await ctl.cycle()

    def started(cur: machine.RolloutState | None) -> machine.RolloutState:
        st = machine.start(spec, T0, model=None, service_regions=("eu-central-1", "eu-west-1", "us-east-1",
                           "us-west-2"), ttl_s=30, report_timeout_s=6, actor="alice")
        return machine.advance(st, {}, T0 + 1, token=1)

    await update(store, "llama-v2", started)
    client = TestClient(TestServer(build_app(store, config, ctl, TOKEN)))
    await client.start_server()
    try:
        text = await (await client.get("/metrics")).text()
    finally:
        await client.close()
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    status = {s.labels["status"]: s.value for s in fams["gtm_rollout_status"].samples}
    assert status == {"running": 1.0, "paused": 0.0, "halted": 0.0, "done": 0.0, "aborted": 0.0}
    assert {s.labels["service"] for s in fams["gtm_rollout_status"].samples} == {"chat"}
    phases = {(s.labels["region"], s.labels["phase"]) for s in fams["gtm_rollout_region_phase"].samples}
    assert ("eu-west-1", "draining") in phases and ("us-east-1", "pending") in phases
    caps = {s.labels["region"]: s.value for s in fams["gtm_rollout_weight_cap"].samples}
    assert caps == {"eu-west-1": 0.0}
    assert fams["gtm_rollout_steps"].samples[0].value >= 2
    overrides = {(s.labels["region"], s.labels["kind"]): s.value for s in fams["gtm_region_override"].samples}
    assert overrides == {("us-west-2", "cordon"): 1.0}
    damped = {s.labels["region"]: s.value for s in fams["gtm_region_damped"].samples}
    assert damped == dict.fromkeys(("eu-central-1", "eu-west-1", "us-east-1", "us-west-2"), 0.0)


async def test_api_drain_checks_input_and_safety_like_the_cli(store: Store) -> None:
    import time

    client = await client_for(store, TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    try:
        for bad in ({"reason": "x", "expires_in": -100}, {"reason": "x", "expires_in": 0.5},
                    {"reason": "x", "forse": True}, {"reason": "x", "actor": {"a": 1}}, {"reason": " " * 0},
                    {"reason": "x", "force": "yes"}):
            r = await client.post("/v1/regions/eu-west-1/drain", json=bad, headers=auth)
            assert r.status == 400, bad
            assert (await r.json())["problems"], bad
        r = await client.post("/v1/regions/eu-west-1/drain", data=b'{"reason": "x", "expires_in": Infinity}',
                              headers={**auth, "Content-Type": "application/json"})
        assert r.status == 400
        assert await store.get_overrides() == {}

        # Every region carries 3 of its 4 replicas' load: eu-central-1 (1 spare) cannot take
        # eu-west-1's 3 × 1.2 in the EU pool, so the drain is held: refused, nothing written.
        now = time.time()
        for reg in ("eu-central-1", "eu-west-1", "us-east-1", "us-west-2"):
            await store.put_report(make_report(reg, now, spare=1.0, replicas=(4, 4)), ttl_s=60, changed=True)
        r = await client.post("/v1/regions/eu-west-1/drain", json={"reason": "kernel"}, headers=auth)
        assert r.status == 409
        doc = await r.json()
        assert "held by the safety rules" in doc["error"] and any("3.60 needed" in h for h in doc["held_by_safety"])
        assert await store.get_overrides() == {}
        r = await client.post("/v1/regions/eu-west-1/drain", json={"reason": "fire", "actor": "oncall", "force": True},
                              headers=auth)
        assert r.status == 201
        ovs = await store.get_overrides()
        assert ovs["eu-west-1"].force and ovs["eu-west-1"].actor == "oncall"
        entry = (await store.read_audit(1))[0][1]
        assert entry["action"] == "drain --force" and entry["region"] == "eu-west-1" and entry["via"] == "api"
    finally:
        await client.close()
