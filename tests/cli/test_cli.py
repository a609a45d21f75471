"""The ``gtm`` command as a script sees it: exit codes, JSON output, errors on stderr.
Runs against the real Redis at GTM_TEST_REDIS_URL (default 127.0.0.1:6379) in a private namespace."""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import yaml
from typer.testing import CliRunner

from gtm.cli.main import app
from gtm.engine import plan
from gtm.models.plan import DesiredState
from gtm.models.report import FleetReport, ModelStats
from gtm.store.keys import Keys
from tests.factories import FOUR_REGIONS, healthy_reports, make_inventory, make_policy, make_report
from tests.support.redis import REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"cli-{uuid.uuid4().hex}"
    yield name
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=f"gtm:{{{name}}}:*"))
    if keys:
        r.delete(*keys)
    r.close()


def gtm(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, [*args], catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


@functools.cache
def regions_with_4_replicas() -> Path:
    """The example inventory with 4 replicas behind every serving source, so the reports of
    ``put_reports`` (4 replicas each) are plausible (``gtm.engine.plausibility``)."""
    root = Path(tempfile.mkdtemp(prefix="gtm-cli-regions-"))
    atexit.register(shutil.rmtree, root, True)
    for f in (ROOT / "regions").glob("*.yaml"):
        doc = yaml.safe_load(f.read_text())
        for src in doc.get("fleet", []):
            if src["kind"] != "dcgm":
                src["replicas"] = 4
        (root / f.name).write_text(yaml.safe_dump(doc))
    return root


def base(ns: str) -> list[str]:
    return ["--redis", REDIS_URL, "--ns", ns,
            "--policies", str(ROOT / "policies"), "--regions", str(regions_with_4_replicas())]


def test_policy_validate_ok_and_broken(tmp_path: Path) -> None:
    code, out, _ = gtm("policy", "validate", "--regions", str(ROOT / "regions"), str(ROOT / "policies"))
    assert code == 0 and "valid" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text((ROOT / "policies" / "default.yaml").read_text().replace("ttl: 30", "ttl: -1", 1))
    code, out, _err = gtm("policy", "validate", "--regions", str(ROOT / "regions"), "-o", "json", str(bad))
    assert code == 2
    doc = json.loads(out)
    assert doc["valid"] is False
    assert any(str(bad) in e and "ttl" in e and "-1" in e for e in doc["errors"]), doc["errors"]


def test_drain_unknown_region_is_refused(ns: str) -> None:
    code, _, err = gtm("drain", "mars-1", "--reason", "x", *base(ns))
    assert code == 3
    assert "unknown region" in err


def put_reports(r: redis.Redis, keys: Keys, spare: float, replicas: int = 4) -> None:
    now = time.time()
    for region in ("us-east-1", "us-west-2", "eu-west-1", "eu-central-1"):
        rep = FleetReport(region=region, agent_id="t", seq=1, observed_at=now, interval_s=2, healthy=True,
                          consecutive_ok=9,
                          models={"llama-3.1-8b": ModelStats(model="llama-3.1-8b", replicas_total=replicas,
                                                             replicas_healthy=replicas, spare_capacity=spare)},
                          spare_capacity=spare)
        r.set(keys.report(region), rep.model_dump_json(), ex=60)


def test_drain_refused_by_headroom_then_forced(ns: str) -> None:
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    keys = Keys(ns)
    put_reports(r, keys, spare=1.0, replicas=4)  # load 3.0 each; the EU peer has only 1.0 spare
    code, out, err = gtm("drain", "eu-west-1", "--reason", "upgrade", *base(ns))
    assert code == 3
    assert "held" in err and "3.00 replicas" in err and "3.60 needed" in err
    assert r.get(keys.override("eu-west-1")) is None, "a refused drain writes nothing"
    code, out, _ = gtm("drain", "eu-west-1", "--reason", "upgrade", "--force", "-o", "json", *base(ns))
    assert code == 0
    doc = json.loads(out)
    assert doc["written"] is True and doc["held_by_safety"]
    assert json.loads(r.get(keys.override("eu-west-1")) or "{}")["force"] is True
    audit = r.xrevrange(keys.audit, count=1)
    assert audit and audit[0][1]["action"] == "drain --force" and audit[0][1]["region"] == "eu-west-1"
    r.close()


def test_drain_dry_run_then_drain_and_undrain(ns: str) -> None:
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    keys = Keys(ns)
    put_reports(r, keys, spare=3.0, replicas=4)  # load 1.0 each: plenty of headroom
    code, out, _ = gtm("drain", "eu-west-1", "--reason", "upgrade", "--dry-run", "-o", "json", *base(ns))
    assert code == 0
    doc = json.loads(out)
    assert doc["written"] is False
    assert r.get(keys.override("eu-west-1")) is None
    eu_pools = [shares for pid, shares in doc["projected_shares"].items() if pid.startswith("eu-")]
    assert eu_pools and all(s == {"eu-central-1": 1.0} for s in eu_pools), doc["projected_shares"]

    code, out, _ = gtm("drain", "eu-west-1", "--reason", "upgrade", "--actor", "alice", "-o", "json", *base(ns))
    assert code == 0 and json.loads(out)["written"] is True
    stored = json.loads(r.get(keys.override("eu-west-1")) or "{}")
    assert stored["actor"] == "alice" and stored["reason"] == "upgrade"
    entry = r.xrevrange(keys.audit, count=1)[0][1]
    assert (entry["action"], entry["region"], entry["actor"]) == ("drain", "eu-west-1", "alice")

    code, out, _ = gtm("status", "-o", "json", *base(ns))
    assert code == 0
    rows = {row["region"]: row for row in json.loads(out)["regions"]}
    assert rows["eu-west-1"]["override"] == "drain"

    code, out, _ = gtm("plan", "-o", "json", *base(ns))
    assert code == 0
    plan = json.loads(out)
    assert plan["changed"] is True and plan["decisions"]

    code, _, _ = gtm("undrain", "eu-west-1", "--reason", "kernel done", "--actor", "alice",
                     "--redis", REDIS_URL, "--ns", ns)
    assert code == 0 and r.get(keys.override("eu-west-1")) is None
    entry = r.xrevrange(keys.audit, count=1)[0][1]
    assert (entry["action"], entry["region"], entry["actor"], entry["reason"]) == (
        "undrain", "eu-west-1", "alice", "kernel done")
    assert json.loads(entry["lifted"])["reason"] == "upgrade"
    code, _, _err = gtm("undrain", "eu-west-1", "--redis", REDIS_URL, "--ns", ns)
    assert code == 3
    r.close()


def test_unreachable_redis_is_a_clear_error() -> None:
    code, _, err = gtm("status", "--redis", "redis://127.0.0.1:1/0",
                       "--policies", str(ROOT / "policies"), "--regions", str(ROOT / "regions"))
    assert code == 1
    assert "StoreError" in err and "Traceback" not in err


def _damped_state(now: float) -> DesiredState:
    """The controller's plan after us-west-2 flapped in and out: damped for 100 s."""
    policy = make_policy(flap_threshold=3, flap_window_s=60, flap_penalty_s=100, rise=1, fall=1)
    inv = make_inventory()
    state = None
    for i, bad in enumerate((False, True, False, True, False)):
        t = now - 5 + i
        reps = healthy_reports(t, dict.fromkeys(FOUR_REGIONS, 2.0))
        if bad:
            reps["us-west-2"] = make_report("us-west-2", t, healthy=False, fail=1)
        state = plan(policy, inv, reps, {}, state, t)
    assert state is not None and state.regions["us-west-2"].damped_until > now
    return state


def test_undamp_clears_flap_damping_and_is_audited(ns: str) -> None:
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    keys = Keys(ns)
    conn = ["--redis", REDIS_URL, "--ns", ns]
    code, _, err = gtm("undamp", "us-west-2", "--reason", "x", *conn)
    assert code == 3 and "the controller plans nothing yet" in err
    r.set(keys.desired, _damped_state(time.time()).to_json())
    code, _, err = gtm("undamp", "us-east-1", "--reason", "x", *conn)
    assert code == 3 and "us-east-1 is not damped" in err
    code, _, err = gtm("undamp", "mars-1", "--reason", "x", *conn)
    assert code == 3 and "unknown region 'mars-1'" in err
    code, _, err = gtm("undamp", "us-west-2", "--reason", " ", *conn)
    assert code == 2 and "--reason" in err
    assert r.hgetall(keys.damping_cleared) == {}, "a refused undamp writes nothing"

    code, out, err = gtm("undamp", "us-west-2", "--reason", "NIC replaced", "--actor", "alice", "-o", "json", *conn)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["cleared"] is True and 90 < doc["remaining_s"] <= 100
    stored = json.loads(r.hget(keys.damping_cleared, "us-west-2") or "{}")
    assert stored["actor"] == "alice" and stored["reason"] == "NIC replaced" and stored["at"] == doc["at"]
    entry = r.xrevrange(keys.audit, count=1)[0][1]
    assert entry["action"] == "undamp" and entry["region"] == "us-west-2" and entry["actor"] == "alice"
    r.close()


def test_operator_text_with_markup_is_shown_verbatim(ns: str) -> None:
    """Rich markup in a reason or actor ("[/]", "[red]") is text, in every view that shows it."""
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    keys = Keys(ns)
    put_reports(r, keys, spare=3.0, replicas=4)
    code, out, err = gtm("drain", "eu-west-1", "--reason", "maint [/] [red]x", "--actor", "bob [/]", *base(ns))
    assert code == 0, err
    assert "maint [/] [red]x" in out and "bob [/]" in out
    r.set(keys.desired, _damped_state(time.time()).to_json())
    code, out, err = gtm("status", *base(ns))
    assert code == 0, err
    assert "[/]" in out and "[red]" in out, out  # the override's reason, as typed
    code, out, err = gtm("plan", *base(ns))
    assert code == 0, err
    code, _, err = gtm("undamp", "us-west-2", "--reason", "[bold]fixed[/]", "--actor", "carol [/]",
                       "--redis", REDIS_URL, "--ns", ns)
    assert code == 0, err
    code, out, err = gtm("audit", "--redis", REDIS_URL, "--ns", ns)
    assert code == 0, err
    assert "undamp us-west-2 by carol [/]: [bold]fixed[/]" in out
    r.close()


def test_drain_with_invalid_local_files_falls_back_to_the_controllers_plan(ns: str, tmp_path: Path) -> None:
    bad = tmp_path / "policies"
    bad.mkdir()
    (bad / "p.yaml").write_text("services: 3\n")
    args = ["--redis", REDIS_URL, "--ns", ns, "--policies", str(bad),
            "--regions", str(ROOT / "regions")]
    code, _, err = gtm("drain", "eu-west-1", "--reason", "x", *args)
    assert code == 3 and "do not validate" in err and "the controller plans nothing yet" in err
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    keys = Keys(ns)
    r.set(keys.desired, _damped_state(time.time()).to_json())
    code, out, err = gtm("drain", "eu-west-1", "--reason", "x", "--dry-run", *args)
    assert code == 0, err
    assert "would write drain of eu-west-1" in out and r.get(keys.override("eu-west-1")) is None
    code, out, err = gtm("drain", "eu-west-1", "--reason", "x", *args)
    assert code == 0 and "wrote drain of eu-west-1" in out and "controller still applies its safety rules" in out
    assert json.loads(r.get(keys.override("eu-west-1")) or "{}")["reason"] == "x"
    r.close()


def test_unreadable_secret_files_are_config_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GTM_API_TOKEN_FILE", str(tmp_path / "missing"))
    code, _, err = gtm("controller", "--redis", REDIS_URL, "--ns", "cli-unused",
                       "--dns-listen", "off", "--api-listen", "127.0.0.1:9")
    assert code == 2 and "cannot read GTM_API_TOKEN_FILE" in err
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("GTM_API_TOKEN_FILE", str(tmp_path / "empty"))
    code, _, err = gtm("controller", "--redis", REDIS_URL, "--ns", "cli-unused",
                       "--dns-listen", "off", "--api-listen", "127.0.0.1:9")
    assert code == 2 and "is empty" in err
    monkeypatch.delenv("GTM_API_TOKEN_FILE")
    monkeypatch.setenv("GTM_REDIS_PASSWORD_FILE", str(tmp_path / "missing"))
    for args in (("status",), ("rollout", "status", "llama-nov")):
        code, _, err = gtm(*args, "--ns", "cli-unused")
        assert code == 2 and "cannot read GTM_REDIS_PASSWORD_FILE" in err, (args, err)


def test_audit_shows_rollout_steps_as_rollout_steps(ns: str) -> None:
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    keys = Keys(ns)
    decisions = json.dumps([{"subject": "rollout llama-nov eu-west-1", "action": "canary", "reason": "v2 on 2/2"}])
    r.xadd(keys.audit, {"ts": str(time.time()), "rollout": "llama-nov", "step": "4", "fencing_token": "7",
                        "decisions": decisions})
    r.close()
    code, out, err = gtm("audit", "--redis", REDIS_URL, "--ns", ns)
    assert code == 0, err
    assert "rollout llama-nov step 4 (fencing token 7)" in out and "generation" not in out
    assert "rollout llama-nov eu-west-1: canary — v2 on 2/2" in out
