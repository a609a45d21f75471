"""``gtm plan`` and ``gtm status`` show the anycast announcements (the example policy names an
EU prefix and a service prefix; every example region has a BGP side). Real Redis."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from typer.testing import CliRunner

from gtm.cli.main import app
from gtm.config import load_config
from gtm.engine import plan
from gtm.models.report import FleetReport, ModelStats
from gtm.store.keys import Keys
from tests.cli.test_cli import ROOT, regions_with_4_replicas
from tests.support.redis import REDIS_URL

runner = CliRunner()
EU_PREFIX, SERVICE_PREFIX = "198.51.100.0/24", "203.0.113.0/24"
REGIONS = ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1")


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"cli-anycast-{uuid.uuid4().hex}"
    yield name
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=f"gtm:{{{name}}}:*"))
    if keys:
        r.delete(*keys)
    r.close()


def gtm(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, [*args], catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


def base(ns: str) -> list[str]:
    return ["--redis", REDIS_URL, "--ns", ns, "--policies", str(ROOT / "policies"),
            "--regions", str(regions_with_4_replicas())]


def reports(now: float, failed: str | None = None) -> dict[str, FleetReport]:
    out = {}
    for region in REGIONS:
        ok = region != failed
        out[region] = FleetReport(
            region=region, agent_id="t", seq=1, observed_at=now, interval_s=2, healthy=ok,
            consecutive_ok=9 if ok else 0, consecutive_fail=0 if ok else 5, reason="" if ok else "vLLM /health 503",
            models={"llama-3.1-8b": ModelStats(model="llama-3.1-8b", replicas_total=4,
                                               replicas_healthy=4 if ok else 0, spare_capacity=3.0 if ok else 0)},
            spare_capacity=3.0 if ok else 0.0)
    return out


def test_plan_shows_announcement_changes_with_reasons(ns: str) -> None:
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    keys = Keys(ns)
    cfg = load_config(ROOT / "policies", regions_with_4_replicas())
    now = time.time()
    steady = plan(cfg.policy, cfg.inventory, reports(now - 1), {}, None, now - 1, digest=cfg.digest)
    r.set(keys.desired, steady.to_json())
    for region, rep in reports(now, failed="eu-west-1").items():
        r.set(keys.report(region), rep.model_dump_json(), ex=60)

    code, out, err = gtm("plan", "-o", "json", *base(ns))
    assert code == 0, err
    doc = json.loads(out)
    rows = {(a["prefix"], a["region"]): a for a in doc["announcements"]}
    assert {p for p, _ in rows} == {EU_PREFIX, SERVICE_PREFIX}
    assert {reg for p, reg in rows if p == EU_PREFIX} == {"eu-west-1", "eu-central-1"}
    gone = rows[(EU_PREFIX, "eu-west-1")]
    assert (gone["action"], gone["planned"]) == ("withdraw", False)
    assert "failover" in gone["reason"] and "vLLM /health 503" in gone["reason"]
    assert rows[(EU_PREFIX, "eu-central-1")]["action"] == "announce"
    changes = [d for d in doc["decisions"] if d["subject"].startswith("anycast ")]
    assert {(d["subject"], d["action"]) for d in changes} == {
        (f"anycast {EU_PREFIX}", "eu-west-1 announce (prepend 0, MED 0) → withdraw"),
        (f"anycast {SERVICE_PREFIX}", "eu-west-1 announce (prepend 0, MED 0) → withdraw"),
    }
    assert all("failover" in d["reason"] for d in changes)

    code, out, err = gtm("plan", *base(ns))
    assert code == 0, err
    assert "anycast" in out and EU_PREFIX in out and "withdraw" in out
    r.close()


def test_status_shows_what_the_plan_wants_per_region_and_prefix(ns: str) -> None:
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    keys = Keys(ns)
    cfg = load_config(ROOT / "policies", regions_with_4_replicas())
    now = time.time()
    state = plan(cfg.policy, cfg.inventory, reports(now, failed="us-west-2"), {}, None, now, digest=cfg.digest)
    r.set(keys.desired, state.to_json())
    for region, rep in reports(now, failed="us-west-2").items():
        r.set(keys.report(region), rep.model_dump_json(), ex=60)

    code, out, err = gtm("status", "-o", "json", *base(ns))
    assert code == 0, err
    doc = json.loads(out)
    rows = {(a["prefix"], a["region"]): a for a in doc["announcements"]}
    assert len(rows) == 6  # 2 EU regions for the EU prefix, 4 for the service's
    assert rows[(SERVICE_PREFIX, "us-west-2")]["action"] == "withdraw"
    assert rows[(SERVICE_PREFIX, "us-east-1")]["action"] == "announce"
    assert all(a["agent"] is None for a in doc["announcements"]), "no agent reported its BGP speaker"
    by_region = {row["region"]: row for row in doc["regions"]}
    assert by_region["us-west-2"]["anycast"] == {SERVICE_PREFIX: "withdraw"}
    assert by_region["eu-west-1"]["anycast"] == {EU_PREFIX: "announce", SERVICE_PREFIX: "announce"}

    code, out, err = gtm("status", *base(ns))
    assert code == 0, err
    assert "anycast" in out and SERVICE_PREFIX in out
    assert "agent:" in out and "—" in out
    r.close()
