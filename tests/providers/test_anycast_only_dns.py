"""An anycast-only service (``data_planes: [anycast]``) publishes no DNS record: the embedded
server, over a real UDP socket, answers NXDOMAIN for it while the DNS service beside it answers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import dns.rcode
import dns.rdatatype
import pytest

from gtm.engine import plan
from gtm.models.plan import DesiredState
from gtm.providers.dnsclient import query
from gtm.providers.embedded_dns import EmbeddedDnsServer
from gtm.providers.geo import PrefixTable
from gtm.providers.records import dns_services
from tests.factories import T0, eu_segment, healthy_reports, make_inventory, make_policy, make_service
from tests.support.anycast import EU_PREFIX, SERVICE_PREFIX, actions, with_anycast, with_bgp

pytestmark = pytest.mark.usefixtures("loop_watchdog")

EDGE_PREFIX = "192.0.2.128/25"


@pytest.fixture
async def server() -> AsyncIterator[tuple[EmbeddedDnsServer, DesiredState]]:
    inv = with_bgp(make_inventory())
    chat = with_anycast(make_service(segments=[eu_segment()]), SERVICE_PREFIX, {"eu": EU_PREFIX})
    edge = with_anycast(make_service("edge"), EDGE_PREFIX, data_planes=("anycast",))
    policy = make_policy([chat, edge])
    state = plan(policy, inv, healthy_reports(T0), {}, None, T0)
    srv = EmbeddedDnsServer(policy.zones, PrefixTable.from_regions(inv.regions.values()))
    assert srv.update(state)
    await srv.start("127.0.0.1", 0)
    try:
        yield srv, state
    finally:
        await srv.stop()


async def test_anycast_only_service_is_not_in_dns(server: tuple[EmbeddedDnsServer, DesiredState]) -> None:
    srv, state = server
    edge = await query("127.0.0.1", srv.port, "edge.gtm.example.com", "A")
    assert edge.rcode() == dns.rcode.NXDOMAIN and edge.answer == []
    chat = await query("127.0.0.1", srv.port, "chat.gtm.example.com", "A")
    assert chat.rcode() == dns.rcode.NOERROR
    assert [rr.rdtype for rr in chat.answer] == [dns.rdatatype.A]
    # The plan still announces its prefix from every region, and keeps its pools.
    assert sorted(actions(state, EDGE_PREFIX).values()) == ["announce"] * 4
    assert "edge.gtm.example.com" not in dns_services(state)
