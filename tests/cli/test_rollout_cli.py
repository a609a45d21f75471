"""``gtm rollout`` as a script sees it: exit codes, JSON, reasons. Real Redis, private namespace;
no controller runs here, so only the operators' transitions happen."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from gtm.cli.rollout import EXIT_REFUSED, EXIT_TIMEOUT, rollout_app
from gtm.controller.rollout import update
from gtm.engine import rollout as machine
from gtm.models.report import FleetReport, ModelStats
from gtm.store import Store, connect
from tests.support.redis import REDIS_URL

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()

ROLLOUTS = """
rollouts:
  - name: llama-nov
    service: chat
    target_version: llama-3.1-8b-2026-11
    waves: [[eu-west-1], [eu-central-1], [us-east-1, us-west-2]]
    drain_first: true
  - name: llama-dec
    service: chat
    target_version: llama-3.1-8b-2026-12
    waves: [[us-east-1]]
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[list[str]]:
    ns = f"cli-rollout-{uuid.uuid4().hex}"
    policy = tmp_path / "policy.yaml"
    # The example policy without its own rollouts: these tests bring theirs.
    base = (ROOT / "policies" / "default.yaml").read_text().split("\nrollouts:", 1)[0] + "\n"
    policy.write_text(base + ROLLOUTS)
    yield ["--redis", REDIS_URL, "--ns", ns]
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=f"gtm:{{{ns}}}:*"))
    if keys:
        r.delete(*keys)
    r.close()


def files(env: list[str], tmp_path: Path) -> list[str]:
    return [*env, "--policies", str(tmp_path / "policy.yaml"), "--regions", str(ROOT / "regions")]


def gtm(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(rollout_app, list(args), catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


def test_lifecycle_exit_codes_and_reasons(env: list[str], tmp_path: Path) -> None:
    code, _, err = gtm("start", "nope", *files(env, tmp_path))
    assert code == EXIT_REFUSED and "no rollout 'nope' in the policy" in err
    code, _, err = gtm("status", "llama-nov", *env)
    assert code == EXIT_REFUSED and "no rollout 'llama-nov' was started" in err

    code, out, _ = gtm("start", "llama-nov", "--actor", "alice", "--reason", "CHG-1", *files(env, tmp_path))
    assert code == 0, out
    assert "started by alice: llama-3.1-8b-2026-11 over [eu-west-1] → [eu-central-1] → [us-east-1, us-west-2]" in out
    code, _, err = gtm("start", "llama-nov", *files(env, tmp_path))
    assert code == EXIT_REFUSED and "already running" in err
    code, _, err = gtm("start", "llama-dec", *files(env, tmp_path))
    assert code == EXIT_REFUSED and "rollout llama-nov of service chat is still active" in err

    code, out, _ = gtm("status", "llama-nov", "-o", "json", *env)
    doc = json.loads(out)
    assert code == 0 and doc["status"] == "running" and doc["step"] == 1
    assert doc["regions"]["eu-west-1"]["phase"] == "pending"
    assert doc["history"][0]["actor"] == "alice" and "(CHG-1)" in doc["history"][0]["reason"]
    code, out, _ = gtm("status", *files(env, tmp_path))
    assert code == 0 and "llama-nov" in out and "running" in out

    # Nothing drives it here: a pipeline step waiting for the region times out with exit 4.
    code, _, err = gtm("wait-ready", "llama-nov", "eu-west-1", "--timeout", "0.2", "--poll", "0.05", *env)
    assert code == EXIT_TIMEOUT and "timed out after 0.2s: eu-west-1 is pending" in err
    code, _, err = gtm("wait-ready", "llama-nov", "mars-1", "--timeout", "0.2", *env)
    assert code == EXIT_REFUSED and "does not include region 'mars-1'" in err

    code, out, _ = gtm("pause", "llama-nov", "--actor", "bob", "--reason", "incident", *env)
    assert code == 0 and "paused by bob: incident" in out
    code, _, err = gtm("pause", "llama-nov", *env)
    assert code == EXIT_REFUSED and "not running" in err
    code, out, _ = gtm("resume", "llama-nov", "--actor", "bob", *env)
    assert code == 0 and "resumed by bob" in out
    code, out, _ = gtm("abort", "llama-nov", "--actor", "bob", "--reason", "changed plans", *env)
    assert code == 0 and "aborted by bob: changed plans" in out
    code, _, err = gtm("abort", "llama-nov", *env)
    assert code == EXIT_REFUSED and "already aborted" in err
    code, _, err = gtm("wait-ready", "llama-nov", "eu-west-1", "--timeout", "5", *env)
    assert code == EXIT_REFUSED and "is aborted" in err

    code, out, _ = gtm("status", "llama-nov", "-o", "json", *env)
    doc = json.loads(out)
    assert [h["phase"] for h in doc["history"]] == ["running", "paused", "running", "aborted"]
    assert [h["step"] for h in doc["history"]] == [1, 2, 3, 4]
    # A finished rollout may be started again; so may another one of the service now.
    code, _, _ = gtm("start", "llama-dec", *files(env, tmp_path))
    assert code == 0


def _store_call(env: list[str], fn: Callable[[Store], Awaitable[object]]) -> None:
    async def go() -> None:
        store = connect(env[1], ns=env[3])
        try:
            await fn(store)
        finally:
            await store.aclose()

    asyncio.run(go())


def _report(region: str, version: str) -> FleetReport:
    stats = ModelStats(model="llama-3.1-8b", version=version, replicas_total=2, replicas_healthy=2,
                       spare_capacity=1.0, replicas_by_version={version: 2})
    return FleetReport(region=region, agent_id=f"{region}-a", seq=1, observed_at=time.time(), interval_s=2,
                       healthy=True, consecutive_ok=5, models={"llama-3.1-8b": stats}, spare_capacity=1.0)


def test_start_refused_when_the_target_is_already_everywhere(env: list[str], tmp_path: Path) -> None:
    async def put(store: Store) -> None:
        await store.put_report(_report("us-east-1", "llama-3.1-8b-2026-12"), 30, changed=True)

    _store_call(env, put)
    code, _, err = gtm("start", "llama-dec", *files(env, tmp_path))
    assert code == EXIT_REFUSED, err
    assert "rollout llama-dec (us-east-1) already serves only llama-3.1-8b-2026-12" in err

    async def put_old(store: Store) -> None:
        await store.put_report(_report("us-east-1", "llama-3.1-8b-2026-11"), 30, changed=True)

    _store_call(env, put_old)
    code, _, err = gtm("start", "llama-dec", *files(env, tmp_path))
    assert code == 0, err


def test_release_a_region_an_aborted_rollout_holds(env: list[str], tmp_path: Path) -> None:
    code, _, err = gtm("release", "llama-nov", "eu-west-1", "--reason", "x", *env)
    assert code == EXIT_REFUSED and "no rollout 'llama-nov' was started" in err
    code, _, err = gtm("start", "llama-nov", *files(env, tmp_path))
    assert code == 0, err

    # What a controller would have done: wave 1 started, eu-west-1 routed away for deploy.
    async def first_wave(store: Store) -> None:
        def tick(cur: machine.RolloutState | None) -> machine.RolloutState:
            assert cur is not None
            return machine.advance(cur, {}, time.time(), token=1)

        await update(store, "llama-nov", tick)

    _store_call(env, first_wave)
    code, _, err = gtm("release", "llama-nov", "eu-west-1", "--reason", "x", *env)
    assert code == EXIT_REFUSED and "is running; only an aborted rollout" in err
    code, _, err = gtm("release", "llama-nov", "eu-west-1", *env)
    assert code == 2 and "--reason" in err, "a release must say why"
    code, _, err = gtm("release", "llama-nov", "eu-west-1", "--reason", " ", *env)
    assert code == 2 and "--reason must be 1-500 characters" in err
    code, _, err = gtm("abort", "llama-nov", "--reason", "bad build", *env)
    assert code == 0, err
    code, _, err = gtm("release", "llama-nov", "us-east-1", "--reason", "x", *env)
    assert code == EXIT_REFUSED and "(reverting: eu-west-1)" in err
    code, out, err = gtm("release", "llama-nov", "eu-west-1", "--reason", "CHG-9 fine here",
                         "--actor", "carol", "-o", "json", *env)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["regions"]["eu-west-1"]["phase"] == "reverted"
    assert doc["regions"]["eu-west-1"]["reason"].startswith("released by carol: CHG-9 fine here")
    assert doc["history"][-1]["actor"] == "carol"
    code, _, err = gtm("release", "llama-nov", "eu-west-1", "--reason", "again", *env)
    assert code == EXIT_REFUSED and "(reverting: none)" in err

    # Every operator command is in the audit stream, besides the rollout's own history.
    r = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    entries = [e for _, e in r.xrange(f"gtm:{{{env[3]}}}:audit")]
    r.close()
    actions = [(e["action"], e.get("region")) for e in entries if e["action"].startswith("rollout ")]
    assert actions == [("rollout start llama-nov", None), ("rollout abort llama-nov", None),
                       ("rollout release llama-nov", "eu-west-1")]
    assert entries[-1]["actor"] == "carol" and entries[-1]["reason"] == "CHG-9 fine here"


def test_rollout_commands_check_namespace_and_output(env: list[str], tmp_path: Path) -> None:
    code, _, err = gtm("start", "llama-nov", "--ns", "bad ns", "--policies", str(tmp_path / "policy.yaml"),
                       "--regions", str(ROOT / "regions"))
    assert code == 2 and ("--namespace" in err or "--ns" in err)
    code, _, err = gtm("status", "llama-nov", "-o", "yaml", *env)
    assert code == 2 and "yaml" in err
    code, _, err = gtm("status", "llama-nov", "--redis", "bogus://x", "--ns", env[3])
    assert code == 2 and "Redis URL must start with" in err
