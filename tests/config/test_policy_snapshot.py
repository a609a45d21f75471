"""The leader's policy snapshot in Redis: written by the leader, read back intact, and used by
a controller process that starts while its own policy files do not validate."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from gtm.config import load_config
from gtm.config.snapshot import dump_snapshot, load_snapshot
from gtm.controller.loop import Controller, ControllerSettings
from gtm.errors import ConfigError
from gtm.store import Store
from gtm.testing.ports import free_port
from tests.support.redis import REDIS_URL

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(redis_store: Store) -> Store:
    """The shared test Redis, in this test's own namespace (tests/conftest.py)."""
    return redis_store


def test_snapshot_round_trip_and_integrity() -> None:
    cfg = load_config(ROOT / "policies", ROOT / "regions")
    back, written_at = load_snapshot(dump_snapshot(cfg, 123.0))
    assert back.digest == cfg.digest and back.policy == cfg.policy and back.inventory == cfg.inventory
    assert written_at == 123.0
    doc = json.loads(dump_snapshot(cfg, 1.0))
    doc["policy"]["services"][0]["ttl"] = 5  # content no longer matches its digest
    with pytest.raises(ConfigError, match="does not match its content"):
        load_snapshot(json.dumps(doc))
    with pytest.raises(ConfigError, match="unusable"):
        load_snapshot("{not json")
    doc = json.loads(dump_snapshot(cfg, 1.0))
    doc["policy"]["services"][0]["ttl"] = -1
    with pytest.raises(ConfigError, match="unusable"):
        load_snapshot(json.dumps(doc))


async def test_the_leader_writes_the_policy_in_force(store: Store) -> None:
    cfg = load_config(ROOT / "policies", ROOT / "regions")
    ctl = Controller(store, lambda: cfg, [], ControllerSettings(owner="a"))
    assert await store.get_policy_snapshot() is None
    await ctl.cycle()
    text = await store.get_policy_snapshot()
    assert text is not None
    back, _ = load_snapshot(text)
    assert back.digest == cfg.digest


def _ask(port: int, name: str) -> dns.message.Message:
    q = dns.message.make_query(name, "SOA")
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=1.0)


async def test_a_controller_starts_from_the_snapshot_when_its_files_are_broken(store: Store, tmp_path: Path) -> None:
    broken = tmp_path / "policies"
    broken.mkdir()
    (broken / "p.yaml").write_text("services: [\n")
    port = free_port()
    cmd = [sys.executable, "-m", "gtm.cli.main", "controller", "--redis", REDIS_URL,
           "--ns", store.keys.ns, "--policies", str(broken), "--regions", str(ROOT / "regions"),
           "--dns-listen", f"127.0.0.1:{port}", "--api-listen", "off"]
    # No snapshot yet: the broken files are fatal (exit 2), as before.
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "YAML syntax error" in res.stderr

    cfg = load_config(ROOT / "policies", ROOT / "regions")
    await Controller(store, lambda: cfg, [], ControllerSettings(owner="leader")).cycle()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        answer = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = _ask(port, "gtm.example.com.")
                break
            except (OSError, dns.exception.Timeout):
                time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1]
        assert answer is not None and answer.rcode() == dns.rcode.NOERROR, "the snapshot's zone is served"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert "POLICY REJECTED" in err and "starting from the policy the leader last ran" in err
    assert cfg.digest[:19] in err
