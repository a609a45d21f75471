"""Operator actions have one path: ``gtm drain`` / ``undrain`` / ``undamp`` and the HTTP API
call the same functions of ``gtm.controller.actions``, so they validate, refuse, write and
audit alike. Each side runs against its own namespace of a real Redis and the two results are
compared field by field."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from gtm.api.app import build_app
from gtm.cli.main import app
from gtm.config.loader import Config, load_config
from gtm.engine.plausibility import inventory_replicas
from gtm.models.audit import AuditEntry
from gtm.models.override import Override
from gtm.store import Store
from gtm.store.keys import Keys
from tests.factories import make_report
from tests.support.redis import REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t0ken-" + uuid.uuid4().hex
CFG = load_config(ROOT / "policies", ROOT / "regions")
runner = CliRunner()


@pytest.fixture
def two_namespaces() -> Iterator[tuple[str, str]]:
    """One namespace for the CLI, one for the API, each with fresh healthy reports."""
    names = (f"act-cli-{uuid.uuid4().hex}", f"act-api-{uuid.uuid4().hex}")
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    now = time.time()
    for ns in names:
        for region in CFG.inventory.regions:
            # Plausible for the inventory (gtm.engine.plausibility): its replicas, all idle.
            n = inventory_replicas(CFG.inventory.regions[region])
            r.set(Keys(ns).report(region), make_report(region, now, spare=float(n), replicas=(n, n)).model_dump_json(),
                  px=60_000)
    yield names
    for ns in names:
        keys = list(r.scan_iter(match=f"gtm:{{{ns}}}:*"))
        if keys:
            r.delete(*keys)
    r.close()


def cli(ns: str, *args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, [*args, "--redis", REDIS_URL, "--ns", ns], catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


def cli_with_files(ns: str, *args: str) -> tuple[int, str, str]:
    return cli(ns, *args, "--policies", str(ROOT / "policies"), "--regions", str(ROOT / "regions"))


async def api(
    ns: str, calls: list[tuple[str, str, dict[str, Any]]], cfg: Config = CFG
) -> list[tuple[int, dict[str, Any]]]:
    store = Store(aioredis.Redis.from_url(REDIS_URL, decode_responses=True), Keys(ns))
    client = TestClient(TestServer(build_app(store, lambda: cfg, None, TOKEN)))
    await client.start_server()
    out = []
    try:
        for method, path, body in calls:
            r = await client.request(method, path, json=body, headers={"Authorization": f"Bearer {TOKEN}"})
            out.append((r.status, await r.json()))
    finally:
        await client.close()
        await store.aclose()
    return out


def audit_of(ns: str) -> list[AuditEntry]:
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        return [AuditEntry.from_fields(f) for _, f in r.xrange(Keys(ns).audit)]
    finally:
        r.close()


def override_of(ns: str, region: str) -> Override | None:
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        text = r.get(Keys(ns).override(region))
    finally:
        r.close()
    return None if text is None else Override.model_validate_json(text)


def comparable(entry: AuditEntry) -> dict[str, Any]:
    """An audit entry without what differs by nature between two calls: when, and the path."""
    doc = entry.model_dump(exclude={"ts", "via", "expires_at"})
    for side in ("lifted", "replaces"):
        if doc[side] is not None:
            doc[side] = {k: v for k, v in doc[side].items() if k not in ("since", "expires_at")}
    return doc


def test_cli_and_api_drain_and_undrain_write_the_same_overrides_and_audit(two_namespaces: tuple[str, str]) -> None:
    ns_cli, ns_api = two_namespaces
    code, _, err = cli_with_files(ns_cli, "drain", "eu-west-1", "--reason", "GPU driver upgrade", "--actor", "ops",
                                  "--expires-in", "600")
    assert code == 0, err
    code, _, err = cli_with_files(ns_cli, "drain", "us-west-2", "--cordon", "--reason", "quota", "--actor", "ops")
    assert code == 0, err
    code, _, err = cli(ns_cli, "undrain", "us-west-2", "--reason", "quota raised", "--actor", "ops")
    assert code == 0, err

    results = asyncio.run(api(ns_api, [
        ("POST", "/v1/regions/eu-west-1/drain",
         {"reason": "GPU driver upgrade", "actor": "ops", "expires_in": 600}),
        ("POST", "/v1/regions/us-west-2/drain", {"reason": "quota", "actor": "ops", "kind": "cordon"}),
        ("DELETE", "/v1/regions/us-west-2/drain", {"reason": "quota raised", "actor": "ops"}),
    ]))
    assert [status for status, _ in results] == [201, 201, 200], results

    by_cli, by_api = override_of(ns_cli, "eu-west-1"), override_of(ns_api, "eu-west-1")
    assert by_cli is not None and by_api is not None
    assert by_cli.model_dump(exclude={"since", "expires_at"}) == by_api.model_dump(exclude={"since", "expires_at"})
    for ov in (by_cli, by_api):
        assert ov.expires_at is not None and ov.expires_at - ov.since == pytest.approx(600)
    assert override_of(ns_cli, "us-west-2") is None and override_of(ns_api, "us-west-2") is None

    audit_cli, audit_api = audit_of(ns_cli), audit_of(ns_api)
    assert [e.action for e in audit_cli] == ["drain", "cordon", "undrain"]
    assert [comparable(e) for e in audit_cli] == [comparable(e) for e in audit_api]
    assert [e.via for e in audit_cli] == ["cli"] * 3 and [e.via for e in audit_api] == ["api"] * 3
    drain_entry = audit_cli[0]
    assert drain_entry.policy_digest == CFG.digest and drain_entry.actor == "ops"
    assert audit_cli[2].lifted is not None and audit_cli[2].lifted["kind"] == "cordon"


def test_cli_and_api_refuse_a_held_drain_alike_and_write_nothing(
    two_namespaces: tuple[str, str], tmp_path: Path
) -> None:
    """With min_healthy_regions 2, draining one of the EU pool's two regions is held: both
    paths refuse it with the same holds and write nothing; forced, both write it and audit the
    holds it overrode."""
    ns_cli, ns_api = two_namespaces
    policy = tmp_path / "policy.yaml"
    policy.write_text((ROOT / "policies" / "default.yaml").read_text().replace(
        "safety:\n", "safety:\n  min_healthy_regions: 2\n", 1))
    strict = load_config(policy, ROOT / "regions")
    assert strict.policy.safety.min_healthy_regions == 2
    files = ["--policies", str(policy), "--regions", str(ROOT / "regions")]
    drain = ["drain", "eu-west-1", "--reason", "maintenance", "--actor", "ops", "-o", "json", *files]
    code, out, _ = cli(ns_cli, *drain)
    refused_cli = json.loads(out)
    assert code == 3 and refused_cli["refused"] and not refused_cli["written"]
    assert override_of(ns_cli, "eu-west-1") is None
    code, out, _ = cli(ns_cli, *drain, "--force")
    assert code == 0 and json.loads(out)["written"]

    body = {"reason": "maintenance", "actor": "ops"}
    (status, refused_api), (forced_status, _) = asyncio.run(api(ns_api, [
        ("POST", "/v1/regions/eu-west-1/drain", body),
        ("POST", "/v1/regions/eu-west-1/drain", {**body, "force": True}),
    ], cfg=strict))
    assert status == 409 and forced_status == 201
    assert refused_api["held_by_safety"] == refused_cli["held_by_safety"] != []
    assert any("min_healthy_regions" in h for h in refused_api["held_by_safety"])
    audit_cli, audit_api = audit_of(ns_cli), audit_of(ns_api)
    assert [e.action for e in audit_cli] == ["drain --force"], "a refused drain writes nothing, not even audit"
    assert audit_cli[0].overridden_safety == refused_cli["held_by_safety"]
    assert [comparable(e) for e in audit_cli] == [comparable(e) for e in audit_api]


def test_cli_and_api_reject_bad_requests_alike(two_namespaces: tuple[str, str]) -> None:
    ns_cli, ns_api = two_namespaces
    code, _, err = cli_with_files(ns_cli, "drain", "mars-1", "--reason", "x")
    assert code == 3 and "unknown region 'mars-1'" in err
    code, _, err = cli_with_files(ns_cli, "drain", "eu-west-1", "--reason", "   ")
    assert code == 2 and "--reason" in err
    code, _, err = cli(ns_cli, "undamp", "eu-west-1", "--reason", "x")
    assert code == 3 and "the controller plans nothing yet" in err
    results = asyncio.run(api(ns_api, [
        ("POST", "/v1/regions/mars-1/drain", {"reason": "x"}),
        ("POST", "/v1/regions/eu-west-1/drain", {"reason": "   "}),
        ("POST", "/v1/regions/eu-west-1/undamp", {"reason": "x"}),
        ("DELETE", "/v1/regions/mars-1/drain", {}),
    ]))
    assert [s for s, _ in results] == [404, 400, 404, 404], results
    assert "unknown region 'mars-1'" in results[0][1]["error"]
    assert any("reason" in p for p in results[1][1]["problems"])
    assert "the controller plans nothing yet" in results[2][1]["error"]
    assert audit_of(ns_cli) == [] and audit_of(ns_api) == []
