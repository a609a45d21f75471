"""A real Prometheus scraping a running installation (agents with ``--metrics-listen``, the
controller's API, both logging JSON lines): every Grafana panel's query returns a series, every
metric an alert rule names exists, the rules pass ``promtool check rules`` and their unit tests,
and the drill-failed alert fires on a drill verdict written to the audit stream.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from typing import Any

import pytest
import yaml

from gtm.models.audit import AuditEntry
from gtm.models.drill import DrillLock
from gtm.store import connect
from gtm.testing.cluster import Cluster
from gtm.testing.redis import RedisProcess
from tests.factories import skip_or_fail
from tests.support.prometheus import ALERT_TESTS, ALERTS, DASHBOARD, Prometheus, find_binary

pytestmark = pytest.mark.e2e

GRAFANA_VARS = {"$__rate_interval": "10s", "$__interval": "1s", "$region": ".*", "${region}": ".*"}
"""What Grafana would put in for its variables (rates over 10 scrapes at 1 s)."""
ROLLOUT = {"name": "llama-next", "service": "chat", "target_version": "v2",
           "waves": [["eu-central-1"], ["us-west-2"]]}
"""A rollout in the policy, never started: its status series exist (all 0)."""


def panel_queries() -> list[tuple[str, str]]:
    """``(panel title, expr with Grafana's variables replaced)`` for every target of every panel."""
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unreplaced variable in {panel['title']!r}: {expr}"
            out.append((panel["title"], expr))
    return out


def alert_metric_names() -> set[str]:
    """Every metric name the alert rules' expressions use."""
    names: set[str] = set()
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            names |= set(re.findall(r"\b(gtm_[a-z0-9_]+|up)\b", rule["expr"]))
    return names


def _gtm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gtm.cli.main", *args], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.fixture
def redis_proc():
    with RedisProcess() as r:
        yield r


def test_rules_pass_promtool() -> None:
    promtool = find_binary("promtool")
    if promtool is None:
        skip_or_fail("promtool is missing: apt-get install prometheus (scripts/ensure-prometheus.sh)")
    checked = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 10 rules found" in checked.stdout
    tested = subprocess.run([promtool, "test", "rules", ALERT_TESTS.name], capture_output=True, text=True,
                            cwd=ALERT_TESTS.parent, check=False)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_rule_has_runbook_text() -> None:
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            ann = rule["annotations"]
            assert {"summary", "description", "runbook"} <= set(ann), rule["alert"]
            assert "Meaning:" in ann["runbook"] and "Check:" in ann["runbook"] and "Do:" in ann["runbook"]
            assert "gtm " in ann["runbook"], f"{rule['alert']}: name the gtm command to run"
            assert rule["labels"]["severity"] in ("page", "ticket") and "for" in rule


async def test_dashboard_queries_and_alert_metrics_against_a_real_prometheus(redis_proc: RedisProcess) -> None:
    if find_binary("prometheus") is None:
        skip_or_fail("prometheus is missing: apt-get install prometheus (scripts/ensure-prometheus.sh)")
    cluster = Cluster(redis_proc.url, api=True, agent_metrics=True, extra_policy={"rollouts": [ROLLOUT]},
                      extra_controller_args=("--log-format", "json"), extra_agent_args=("--log-format", "json"))
    async with cluster as c:
        jobs = {"gtm-controller": [f"127.0.0.1:{c.api_port}"],
                "gtm-agent": [f"127.0.0.1:{p}" for p in c.agent_metrics_ports.values()]}
        await _make_every_series_exist(c)
        async with Prometheus(jobs) as prom:
            await prom.wait_up(targets=5)
            queries = panel_queries()
            assert len(queries) >= 30
            missing = await _until_all_return(prom, queries, timeout=40)
            assert not missing, f"panel queries without a series: {missing}"

            names = set(await prom.api("label/__name__/values"))
            wanted = alert_metric_names()
            assert {"gtm_held", "gtm_provider_behind", "gtm_drill_last_verdict", "up"} <= wanted
            assert wanted <= names, f"alert rules name metrics Prometheus never saw: {sorted(wanted - names)}"

            firing = await _wait_alert(prom, "GtmDrillFailed", timeout=15)
            assert firing["labels"]["region"] == "us-east-1" and firing["labels"]["kind"] == "kill"
            assert "runbook" in firing["annotations"]
            quiet = {a["labels"]["alertname"] for a in (await prom.api("alerts"))["alerts"]}
            assert not quiet & {"GtmRoutingHeld", "GtmNoLeader", "GtmProviderBehind"}, quiet
        _check_json_logs(c)


async def _make_every_series_exist(c: Cluster) -> None:
    """A drain (override series), a drill running and a failed drill verdict (drill series),
    a rejected report (rejected-by-reason series)."""
    assert c.policy_path is not None and c.regions_dir is not None
    done = _gtm("drain", "eu-west-1", "--reason", "e2e: override series", "--actor", "e2e", "--redis", c.redis_url,
                "--ns", c.namespace, "--policies", str(c.policy_path), "--regions", str(c.regions_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    store = connect(c.redis_url, ns=c.namespace)
    try:
        now = time.time()
        lock = DrillLock(id="drill-drain-us-west-2-e2e", kind="drain", region="us-west-2", actor="e2e",
                         started=now, phase="hold", expires_at=now + 300)
        assert await store.acquire_drill(lock, 300) is None
        await store.append_audit(AuditEntry(
            ts=now, action="drill verdict", via="drill", region="us-east-1", actor="e2e",
            note="kill us-east-1: traffic left in 1.0 s (answers) / 31.0 s (clients, TTL 30); 40 of 900 requests "
                 "failed over 12.0 s (≤ 10.0 s allowed); restored in 4.0 s — failed: error window too long"))
        # One malformed report under a region's key: counted as rejected (the agent overwrites it).
        await store.client.set(store.keys.report("us-west-2"), "{not json", px=3000)
        await store.publish("report:us-west-2")
    finally:
        await store.aclose()


async def _until_all_return(prom: Prometheus, queries: list[tuple[str, str]], timeout: float) -> list[Any]:
    """Re-run the queries that returned nothing until each has returned a series once (rates need
    two samples in their window); returns those that never did, with their last answer."""
    import asyncio

    pending = dict.fromkeys(queries, "")
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for q in list(pending):
            result = await prom.query(q[1])
            if result:
                del pending[q]
            else:
                pending[q] = "empty"
        if pending:
            await asyncio.sleep(0.5)
    return [(title, expr, why) for (title, expr), why in pending.items()]


async def _wait_alert(prom: Prometheus, name: str, timeout: float) -> dict[str, Any]:
    import asyncio

    deadline = time.monotonic() + timeout
    alerts: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        alerts = (await prom.api("alerts"))["alerts"]
        for a in alerts:
            if a["labels"]["alertname"] == name and a["state"] == "firing":
                return a
        await asyncio.sleep(0.25)
    raise AssertionError(f"{name} never fired; alerts: {alerts}")


def _check_json_logs(c: Cluster) -> None:
    """Every line the controller and an agent wrote is one JSON object with the four fields; the
    controller's plan audit lines carry the audit's field names; no Redis password leaks."""
    for key in ("controller", "agent-eu-west-1"):
        lines = [line for line in c.log(key).splitlines() if line.strip()]
        assert lines, key
        docs = []
        for line in lines:
            try:
                docs.append(json.loads(line))
            except ValueError:
                pytest.fail(f"{key} wrote a line that is not JSON: {line[:300]}")
        assert all({"ts", "level", "logger", "message"} <= set(d) for d in docs), key
        if key == "controller":
            plans = [d for d in docs if d["logger"] == "gtm.audit" and "generation" in d]
            assert plans, "the controller logs its plan audit entries"
            assert {"via", "actor", "fencing_token", "policy_digest", "generation"} <= set(plans[-1])
            assert plans[-1]["via"] == "controller"
