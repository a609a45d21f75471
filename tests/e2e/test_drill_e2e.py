"""Drills end to end: ``gtm drill drain|failover|kill`` against a running installation (fleets,
agents, the controller with its embedded DNS, all separate processes on a real Redis), with
client load resolving through a real Unbound (stub zone to the embedded DNS, ECS forwarded,
TTL honoured) and real completion requests to the answered fleet.

One cluster serves every test (module scope); each drill restores what it did, and each test
first waits until every region answers again.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from gtm.config.loader import Config, load_config
from gtm.drills.judge import detection_s
from gtm.drills.load import LoadSettings, default_populations
from gtm.drills.runner import DrillOptions, run_drill
from gtm.drills.unbound import Unbound, find_unbound
from gtm.errors import StartupError
from gtm.models.drill import DrillLimits, DrillReport
from gtm.store import connect
from gtm.store.store import Store
from gtm.testing.cluster import US_CLIENT, Cluster
from gtm.testing.redis import RedisProcess
from tests.factories import make_override, skip_or_fail

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

TTL_S = 2
LEASE_S = 3.0
HOLD_S = 6.0
EU = ("eu-west-1", "eu-central-1")
ALL = {"us-east-1", "us-west-2", *EU}
DRILLS = {"lease_s": LEASE_S, "kill_margin_s": 3.0, "error_window_s": 3.0, "min_requests": 5,
          "max_error_rate": 0.5, "max_duration_s": 120}


class Lab:
    """The shared cluster, its config, an Unbound in front of its DNS, a store and a session."""

    def __init__(self, cluster: Cluster, cfg: Config, unbound: Unbound, store: Store,
                 http: aiohttp.ClientSession) -> None:
        self.c, self.cfg, self.unbound, self.store, self.http = cluster, cfg, unbound, store, http
        self.svc = cfg.policy.services[0]
        # Loopback endpoints: region i's fleet serves on 127.0.1.(i+1):P, the address DNS answers,
        # so a client that connects to its answer reaches the answered region.
        self.port = cluster.endpoint_port

    def settings(self, rps: float = 8.0) -> LoadSettings:
        return LoadSettings(fqdn=self.svc.fqdn, resolver=self.unbound.address,
                            authoritative=self.c.dns_address, rps=rps, endpoint_port=self.port,
                            endpoint_scheme="http", model=self.svc.model, timeout_s=2.0)

    async def drill(self, kind: Any, region: str, *, hold_s: float = HOLD_S, limits: DrillLimits | None = None,
                    reason: str = "e2e") -> DrillReport:
        await self.c.wait_shares(lambda s: set(s) == ALL, timeout=30)
        opts = DrillOptions(actor="e2e", reason=reason, hold_s=hold_s, baseline_s=2.0, settle_timeout_s=30,
                            probe_interval_s=1.0, limits=limits)
        return await run_drill(self.store, self.cfg, kind, region, settings=self.settings(),
                               populations=default_populations(self.svc, self.cfg.inventory), options=opts,
                               session=self.http, resolver=self.unbound.describe())

    async def served(self, client: str) -> dict[str, int]:
        """Completions the fleets served / failed for ``client`` (their ``X-GTM-Client`` counts)."""
        total = {"served": 0, "failed": 0}
        for region in self.c.fleet_ports:
            url = f"{self.c.fleet_url(region)}/_sim/state"
            async with self.http.get(url) as resp:
                counts = (await resp.json()).get("completions_by_client", {}).get(client, {})
            for k in total:
                total[k] += counts.get(k, 0)
        return total

    async def clean(self) -> None:
        """Nothing left behind: no override, no drill lock."""
        assert await self.store.get_overrides() == {}
        assert await self.store.get_drill() is None


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab() -> AsyncIterator[Lab]:
    try:
        find_unbound()
    except StartupError as exc:
        skip_or_fail(f"needs unbound (Debian unbound: scripts/ensure-unbound.sh): {exc}")
    with RedisProcess() as redis_proc:
        async with Cluster(redis_proc.url, endpoints="loopback", ttl=TTL_S, extra_policy={"drills": DRILLS}) as c:
            cfg = load_config(str(c.root / "policy.yaml"), str(c.root / "regions"))
            store = connect(redis_proc.url, ns=c.namespace)
            async with aiohttp.ClientSession() as http, \
                    Unbound(zone=cfg.policy.services[0].zone, stub_addrs=[("127.0.0.1", c.dns_port)]) as ub:
                try:
                    yield Lab(c, cfg, ub, store, http)
                finally:
                    await store.aclose()


def _residency_kept(report: DrillReport, lab: Lab) -> None:
    assert report.residency_violations == 0
    eu = [s.shares.get("eu", {}) for s in report.series]
    assert all(set(shares) <= set(EU) for shares in eu), f"EU clients answered outside the EU: {eu}"
    assert any(shares for shares in eu), "the EU population sent requests"


async def test_drain_drill_under_load_loses_nothing(lab: Lab) -> None:
    report = await lab.drill("drain", "eu-west-1")
    assert report.verdict == "passed", report.verdict_line()
    assert report.failed_requests == 0 and report.total_requests >= 100, report.verdict_line()
    _residency_kept(report, lab)
    assert report.answers_moved_s is not None and report.answers_moved_s < 5.0
    # clients follow within the TTL of the answers moving (plus a second of sampling)
    assert report.clients_moved_s is not None and report.clients_moved_s <= report.answers_moved_s + TTL_S + 1.0
    assert report.restored_s is not None and report.restored_s < 10.0
    # the fleets served every request the clients counted as ok
    served = await lab.served(report.id)
    assert served["served"] == report.total_requests and served["failed"] == 0, served
    await lab.clean()
    actions = [f.get("action") for _, f in await lab.store.read_audit(50) if f.get("via") == "drill"]
    for a in ("drill drain start", "drain", "drill drain act", "undrain", "drill drain restore", "drill verdict"):
        assert a in actions, actions
    print(f"\n{report.verdict_line()}")


async def test_failover_drill_loses_nothing(lab: Lab) -> None:
    report = await lab.drill("failover", "us-west-2")
    assert report.verdict == "passed", report.verdict_line()
    assert report.failed_requests == 0 and report.total_requests >= 100
    _residency_kept(report, lab)
    assert report.answers_moved_s is not None and report.answers_moved_s < 3.0  # a failure move: immediate
    assert report.restored_s is not None
    await lab.clean()
    print(f"\n{report.verdict_line()}")


async def test_kill_drill_error_window_within_detection_ttl_margin(lab: Lab) -> None:
    health = lab.cfg.policy.health
    report = await lab.drill("kill", "eu-central-1", hold_s=8.0)
    detection = detection_s(health, 1.0)  # fall × probe interval + report timeout
    expected = detection + TTL_S + DRILLS["kill_margin_s"]
    assert report.expected_window_s == pytest.approx(expected)
    assert report.failed_requests > 0, "a real kill loses the requests sent to it before clients move"
    assert report.error_window_s <= expected, report.verdict_line()
    assert report.verdict == "passed", report.verdict_line()
    _residency_kept(report, lab)
    await lab.clean()
    print(f"\n{report.verdict_line()} (detection {detection:g} s + TTL {TTL_S} s + margin "
          f"{DRILLS['kill_margin_s']:g} s)")


async def test_crossed_limit_aborts_and_leaves_no_override(lab: Lab) -> None:
    limits = lab.cfg.policy.drills.model_copy(update={"max_p99_latency_ms": 0.5, "min_requests": 3})
    report = await lab.drill("failover", "us-east-1", hold_s=30.0, limits=limits)
    assert report.verdict == "aborted" and report.exit_code == 1
    assert report.reasons[0].startswith("aborted: p99 latency") and "above max_p99_latency_ms 0.5" in report.reasons[0]
    assert report.ended - report.started < 25, "aborted well before the 30 s hold"
    kinds = [e.kind for e in report.events]
    assert kinds.index("limit") < kinds.index("restore")
    await lab.clean()
    await lab.c.wait_shares(lambda s: "us-east-1" in s, timeout=15)


async def test_sigkilled_drill_is_undone_by_the_override_expiry(lab: Lab) -> None:
    await lab.c.wait_shares(lambda s: set(s) == ALL, timeout=30)
    c = lab.c
    argv = [sys.executable, "-m", "gtm.cli.main", "drill", "failover", "us-west-2", "--yes", "--hold", "120",
            "--redis", c.redis_url, "--ns", c.namespace, "--resolver", "{}:{}".format(*lab.unbound.address),
            "--authoritative", "{}:{}".format(*c.dns_address), "--baseline", "0", "--rps", "2", "--reason", "sigkill",
            "--endpoint-port", str(lab.port), "--endpoint-scheme", "http"]
    log = open(c.root / "drill-cli.log", "wb")  # noqa: SIM115 - the child keeps writing to it
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 30
        while (ov := await lab.store.get_override("us-west-2")) is None:
            assert proc.poll() is None, (c.root / "drill-cli.log").read_text()
            assert time.monotonic() < deadline, "the drill never wrote its override"
            await asyncio.sleep(0.1)
        assert ov.kind == "failover" and ov.drill and ov.expires_at is not None
        await c.wait_shares(lambda s: "us-west-2" not in s, timeout=10)
        # let it renew at least once, then kill it where it stands
        await asyncio.sleep(LEASE_S / 3 + 0.5)
        renewed = await lab.store.get_override("us-west-2")
        assert renewed is not None and renewed.expires_at is not None and renewed.expires_at > ov.expires_at
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        killed = time.time()
        # the override lifts itself at most lease_s after its last renewal; traffic returns
        waited = await c.wait_shares(lambda s: "us-west-2" in s, timeout=LEASE_S + 10, subnet=US_CLIENT)
        # (the expiry, then a controller cycle and real queries: a few seconds of slack on a busy machine)
        assert time.time() - killed <= LEASE_S + 5.0, f"answers came back {waited:.1f} s after the expiry"
        assert renewed.expires_at - killed <= LEASE_S
        deadline = time.monotonic() + 10
        while await lab.store.get_override("us-west-2") is not None:  # the controller removes the expired one
            assert time.monotonic() < deadline, "the expired override was never removed"
            await asyncio.sleep(0.2)
        # its lock lapses too
        deadline = time.monotonic() + LEASE_S + 2
        while await lab.store.get_drill() is not None:
            assert time.monotonic() < deadline, "the dead drill's lock never lapsed"
            await asyncio.sleep(0.2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()


def _cli(lab: Lab, *args: str) -> list[str]:
    c = lab.c
    return [sys.executable, "-m", "gtm.cli.main", "drill", *args, "--redis", c.redis_url, "--ns", c.namespace,
            "--resolver", "{}:{}".format(*lab.unbound.address), "--authoritative", "{}:{}".format(*c.dns_address),
            "--endpoint-port", str(lab.port), "--endpoint-scheme", "http"]


async def _run(argv: list[str], timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_dry_run_shows_the_plan_and_refuses_with_reasons(lab: Lab) -> None:
    await lab.c.wait_shares(lambda s: set(s) == ALL, timeout=30)
    code, out, _ = await _run(_cli(lab, "kill", "eu-west-1"))
    assert code == 0, out
    assert "kill eu-west-1: every fleet source (vllm-a) really dies for 30 s" in out
    assert "eu-central-1 50%, eu-west-1 50% → eu-central-1 100%" in out and "dry run: nothing done" in out
    await lab.store.put_override(make_override("eu-west-1", "cordon", since=time.time()))
    try:
        code, out, err = await _run(_cli(lab, "failover", "eu-west-1", "--yes"))
        assert code == 3, out + err
        assert "refused: eu-west-1 already has a cordon override (tester: maintenance); undrain it first" in out
        assert await lab.store.get_drill() is None
    finally:
        await lab.store.delete_override("eu-west-1")


async def test_cli_sigint_aborts_and_restores_and_writes_the_report(lab: Lab, tmp_path: Path) -> None:
    await lab.c.wait_shares(lambda s: set(s) == ALL, timeout=30)
    proc = await asyncio.create_subprocess_exec(
        *_cli(lab, "drain", "eu-west-1", "--yes", "--hold", "60", "--baseline", "0", "--rps", "2", "-o", "json",
              "--out", str(tmp_path)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while await lab.store.get_override("eu-west-1") is None:
            assert proc.returncode is None and time.monotonic() < deadline, "the drill never drained"
            await asyncio.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 40)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 1, err.decode()
    doc = DrillReport.model_validate_json(_report_json(out.decode()))
    assert doc.verdict == "aborted" and doc.reasons[0] == "aborted: interrupted by the operator (SIGINT/SIGTERM)"
    assert doc.restored_s is not None
    files = json.loads(out.decode())["files"]
    assert [Path(f).name for f in files] == [f"{doc.id}.json", f"{doc.id}.png", f"{doc.id}.html"]
    assert DrillReport.model_validate_json(Path(files[0]).read_text()) == doc
    assert Path(files[1]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert doc.verdict_line().split(" — ")[0] in html.unescape(Path(files[2]).read_text())
    await lab.clean()


def _report_json(text: str) -> str:
    data = json.loads(text)
    data.pop("files", None)
    return json.dumps(data)
