"""Partial success shown per provider: the worker records what applied and what failed (status,
``/metrics``, audit) and retries only what failed, proven against a real BIND and the local
Cloud DNS server by counting what they received."""

from __future__ import annotations

import asyncio
import html
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from rich.console import Console

from gtm.api.app import build_app
from gtm.api.status_page import render_status_page
from gtm.cli.render import render_status
from gtm.controller.loop import Controller, ControllerSettings
from gtm.controller.provider_worker import ProviderWorker
from gtm.controller.status import gather_status
from gtm.providers.clouddns import CloudDnsProvider
from gtm.providers.rfc2136 import Rfc2136Provider
from gtm.store import connect
from gtm.testing.bind import BindServer
from tests.controller.test_controller import make_config
from tests.factories import FOUR_REGIONS, T0, ZONE, make_report
from tests.providers.test_rfc2136 import ALL, answer, named_installed  # noqa: F401 (fixture)
from tests.providers.test_rfc2136_isolation import ALPHA, BETA, two_zone_state
from tests.support.clouddns_server import FakeCloudDns
from tests.support.wait import wait_until

FQDN = f"chat.{ZONE}"
EU_POOL = f"eu.gtm-pool.{FQDN}"


@pytest.fixture
def fake() -> Iterator[FakeCloudDns]:
    with FakeCloudDns("test-project") as f:
        f.add_zone("gtm-zone", ZONE)
        yield f


async def metric(client: TestClient, line_start: str) -> float:
    text = await (await client.get("/metrics")).text()
    return next(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_start))


@pytest.mark.usefixtures("loop_watchdog")  # the controller's loop also answers DNS: nothing may block it
async def test_partial_apply_is_shown_then_only_the_failed_record_set_is_resent(fake: FakeCloudDns) -> None:
    store = connect("embedded://", ns="partial-gcp")
    provider = CloudDnsProvider(
        "gcp", owner_id="gtm", zones=[ZONE], project="test-project", api_endpoint=fake.url, anonymous=True,
        poll_interval_s=0.01, geo_locations={"continent:EU": "europe-west1", "*": "us-central1"},
    )
    fake.inject(412, times=3, rrset=(EU_POOL, "A"))  # the whole change twice, then that record set alone
    ctl = Controller(store, make_config, [], ControllerSettings(owner="a", tick_s=0.05), providers=[provider],
                     clock=lambda: T0)
    worker = ctl.workers[0]
    worker.retry_initial_s = 1.0  # the window in which the partial state is read below
    for r in FOUR_REGIONS:
        await store.put_report(make_report(r, T0), ttl_s=60, changed=True)
    client = TestClient(TestServer(build_app(store, make_config, ctl)))
    await client.start_server()
    stop = asyncio.Event()
    task = asyncio.create_task(ctl.run(stop))
    try:
        async def partial_seen() -> bool:
            return worker.partials == 1

        await wait_until(partial_seen, timeout=10)
        posts = fake.change_posts
        assert posts == 5  # 2 whole changes refused, then one per name (3)
        info = await store.get_applied("gcp")
        assert info is not None
        assert info["partial"]["failed"] == {f"{EU_POOL} A": "412 injected 412 (nothing committed)"}
        assert info["partial"]["applied"] == [f"default.gtm-pool.{FQDN} A", f"{FQDN} CNAME"]
        assert info["last_error"].startswith("PartialApplyError: gcp (clouddns) at http://127.0.0.1:")
        assert await metric(client, 'gtm_provider_failed_units{provider="gcp"}') == 1
        assert await metric(client, 'gtm_provider_partial_applies_total{provider="gcp"}') == 1
        audit = [f for _id, f in await store.read_audit(20) if f.get("action") == "provider partial"]
        assert len(audit) == 1
        assert audit[0]["reason"] == "gcp: 2 applied, 1 failed"
        assert audit[0]["note"] == f"failed: {EU_POOL} A (412 injected 412 (nothing committed))"
        status = await gather_status(store, make_config(), now=T0)
        status["providers"]["gcp"] = info
        buf = io.StringIO()
        render_status(Console(file=buf, width=400, color_system=None), status)
        line = f"partial: 2 applied, 1 failed: {EU_POOL} A (412 injected 412 (nothing committed)); retrying what failed"
        assert line in buf.getvalue()
        page = render_status_page(status, overrides={}, rollouts={}, drill=None, audit=[], desired=None, now=T0)
        assert html.escape(line, quote=False) in page

        async def converged() -> bool:
            got = await store.get_applied("gcp")
            return got is not None and got.get("partial") is None and not got.get("last_error")

        await wait_until(converged, timeout=10)
        assert fake.change_posts - posts == 1  # the retry re-sent only the refused record set
        last = fake.committed_changes[-1]
        assert sorted(r["name"] for r in last["additions"]) == [f"_gtm-owner.{EU_POOL}.", f"{EU_POOL}."]
        assert await metric(client, 'gtm_provider_failed_units{provider="gcp"}') == 0
        assert await metric(client, 'gtm_provider_partial_applies_total{provider="gcp"}') == 1
        actions = [f.get("action") for _id, f in await store.read_audit(20)]
        assert actions.count("provider partial") == 1 and actions.count("provider partial cleared") == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await client.close()
        await provider.aclose()
        await store.aclose()


@pytest.fixture
def refusing_bind(named_installed: None, tmp_path: Path) -> Iterator[BindServer]:  # noqa: F811
    server = BindServer.start([ALPHA, BETA], directory=tmp_path / "bind", refuse_updates=[ALPHA], statistics=True)
    try:
        yield server
    finally:
        server.stop()


async def test_retries_send_only_the_refused_zone(refusing_bind: BindServer) -> None:
    bind = refusing_bind
    store = connect("embedded://", ns="partial-bind")
    provider = Rfc2136Provider("bind", owner_id="gtm", zones=[ALPHA, BETA], **bind.provider_options())
    worker = ProviderWorker(provider, store, retry_initial_s=0.05, retry_max_s=0.1)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    worker.submit(two_zone_state())

    async def retried() -> bool:
        return worker.partials >= 3

    try:
        await wait_until(retried, timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    updates = bind.opcode_counts()["UPDATE"]
    # The first publish sends both zones; every retry re-observes both and re-sends only ALPHA.
    assert updates == 1 + worker.attempts
    assert await answer(bind, f"chat.{BETA}") == ("NOERROR", ALL)
    info = await store.get_applied("bind")
    assert info is not None and info["partial"]["applied"] == [f"zone {BETA}"]
    assert "REFUSED" in info["partial"]["failed"][f"zone {ALPHA}"] and info["partial"]["temporary"] is False
    audit = [f for _id, f in await store.read_audit(50) if f.get("action") == "provider partial"]
    assert len(audit) == 1  # the same failure retried is audited once
    print(f"rfc2136 worker: {worker.attempts} publishes, {updates} UPDATE messages")
    await store.aclose()
