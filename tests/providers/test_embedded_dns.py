"""The embedded authoritative server, over real UDP and TCP sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import AsyncIterator, Mapping

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dns.update
import pytest

from gtm.config.loader import Config
from gtm.controller.loop import Controller
from gtm.models.plan import (
    DesiredState,
    PoolMember,
    PoolPlan,
    RegionStatus,
    SegmentRoute,
    ServicePlan,
)
from gtm.models.policy import Zone
from gtm.models.region import Inventory, Region
from gtm.providers.dnsclient import answer_shares, query, region_of
from gtm.providers.embedded_dns import EmbeddedDnsServer
from gtm.providers.geo import PrefixTable

# The controller's loop also answers DNS: a test fails when it was blocked (see conftest.py).
pytestmark = pytest.mark.usefixtures("loop_watchdog")

HOST = "127.0.0.1"
APEX = "gtm.example.com"
CHAT = "chat.gtm.example.com"
GEO = "geo.gtm.example.com"
EDGE = "edge.cdn.gtm.example.com"
DARK = "dark.gtm.example.com"

ZONE = Zone(
    name=APEX,
    nameservers=("ns1.gtm.example.com", "ns2.dns.example.net"),
    nameserver_addresses={"ns1.gtm.example.com": "192.0.2.53"},
    hostmaster="hostmaster@example.com",
    negative_ttl=45,
)

ADDRESSES = {
    "us-east-1": "192.0.2.10",
    "us-west-2": "192.0.2.20",
    "eu-west-1": "192.0.2.30",
    "eu-central-1": "192.0.2.40",
}
REGION_OF = {a: r for r, a in ADDRESSES.items()}
NETWORKS = {
    "us-east-1": ("NA", "100.64.0.0/16"),
    "us-west-2": ("NA", "100.65.0.0/16"),
    "eu-west-1": ("EU", "100.96.0.0/16"),
    "eu-central-1": ("EU", "100.97.0.0/16"),
}
EU_SUBNET = "100.96.5.0/24"
NA_SUBNET = "100.64.1.0/24"
DE_SUBNET = "198.51.100.0/24"  # located in Germany by an explicit entry
UNKNOWN_SUBNET = "203.0.113.0/24"

EU_WEIGHTS = {"eu-west-1": 100, "eu-central-1": 100}
DEFAULT_WEIGHTS = {"us-east-1": 120, "us-west-2": 60, "eu-west-1": 20, "eu-central-1": 0}


def _pool(pool_id: str, segment: str, weights: Mapping[str, int]) -> PoolPlan:
    members = tuple(
        PoolMember(region=r, weight=w, reason="test", changed_at=0.0)
        for r, w in sorted(weights.items())
    )
    return PoolPlan(pool_id=pool_id, segment=segment, members=members, reason="test")


def make_state(
    *,
    generation: int = 7,
    eu: Mapping[str, int] = EU_WEIGHTS,
    default: Mapping[str, int] = DEFAULT_WEIGHTS,
    policy_digest: str = "policy-1",
    us_east_1: tuple[tuple[str, str], ...] = (("A", "192.0.2.10"), ("AAAA", "2001:db8::10")),
) -> DesiredState:
    """A hand-built plan for zone gtm.example.com.

    - chat: ``eu`` segment (continent EU, pinned to EU) and ``default`` over four regions;
    - geo: ``eu`` (continent EU) → eu-west-1, ``de`` (country DE) → eu-central-1, default →
      us-east-1 (the continent segment is listed first on purpose);
    - edge.cdn: one region whose endpoint is a CNAME;
    - dark: a pool with every weight at 0.
    """
    pools = [
        _pool("eu-chat", "eu", eu),
        _pool("default-chat", "default", default),
        _pool("eu-geo", "eu", {"eu-west-1": 1}),
        _pool("de-geo", "de", {"eu-central-1": 1}),
        _pool("default-geo", "default", {"us-east-1": 1}),
        _pool("default-edge", "default", {"cdn-1": 10}),
        _pool("default-dark", "default", {"us-east-1": 0, "us-west-2": 0}),
    ]
    services = [
        ServicePlan(
            name="chat",
            fqdn=CHAT,
            zone=APEX,
            ttl=30,
            segments=(
                SegmentRoute("eu", ("EU",), (), "eu-chat", jurisdictions=("EU",)),
                SegmentRoute("default", (), (), "default-chat"),
            ),
        ),
        ServicePlan(
            name="geo",
            fqdn=GEO,
            zone=APEX,
            ttl=20,
            segments=(
                SegmentRoute("eu", ("EU",), (), "eu-geo"),
                SegmentRoute("de", (), ("DE",), "de-geo"),
                SegmentRoute("default", (), (), "default-geo"),
            ),
        ),
        ServicePlan("edge", EDGE, APEX, 60, (SegmentRoute("default", (), (), "default-edge"),)),
        ServicePlan("dark", DARK, APEX, 30, (SegmentRoute("default", (), (), "default-dark"),)),
    ]
    endpoints: dict[str, tuple[tuple[str, str], ...]] = {
        r: (("A", a),) for r, a in ADDRESSES.items()
    }
    endpoints["us-east-1"] = us_east_1
    endpoints["cdn-1"] = (("CNAME", "lb.cdn.example.net."),)
    return DesiredState(
        generation=generation,
        generated_at=1000.0,
        policy_digest=policy_digest,
        held=False,
        hold_reason="",
        regions={r: RegionStatus(region=r, state="healthy", reason="test") for r in endpoints},
        pools={p.pool_id: p for p in pools},
        services={s.fqdn: s for s in services},
        endpoints=endpoints,
    )


def make_regions(networks: Mapping[str, tuple[str, str]] = NETWORKS) -> list[Region]:
    return [
        Region.model_validate(
            {
                "name": name,
                "jurisdiction": "EU" if continent == "EU" else "US",
                "geography": {"continent": continent, "client_networks": [net]},
                "endpoints": [{"address": ADDRESSES[name]}],
            }
        )
        for name, (continent, net) in networks.items()
    ]


def make_table(*extra: tuple[str, str, str | None]) -> PrefixTable:
    table = PrefixTable.from_regions(make_regions())
    table.add(DE_SUBNET, "EU", "DE")
    for prefix, continent, country in extra:
        table.add(prefix, continent, country)
    return table


@pytest.fixture
async def server() -> AsyncIterator[EmbeddedDnsServer]:
    srv = EmbeddedDnsServer([ZONE], make_table(), rng=random.Random(20260509))
    assert srv.update(make_state())
    await srv.start(HOST, 0)
    try:
        yield srv
    finally:
        await srv.stop()


async def ask(
    srv: EmbeddedDnsServer, name: str, rdtype: str = "A", **kw: object
) -> dns.message.Message:
    return await query(HOST, srv.port, name, rdtype, **kw)  # type: ignore[arg-type]


def _values(response: dns.message.Message, rdtype: int) -> list[str]:
    return [rd.to_text() for rrset in response.answer if rrset.rdtype == rdtype for rd in rrset]


def _assert_negative(response: dns.message.Message, rcode: int) -> None:
    assert response.rcode() == rcode
    assert response.flags & dns.flags.AA
    assert response.answer == []
    (soa,) = response.authority
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.ttl == ZONE.negative_ttl
    assert soa[0].minimum == ZONE.negative_ttl


async def _udp_exchange(port: int, payload: bytes, timeout: float = 0.5) -> bytes | None:
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    class _Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: object) -> None:
            if not got.done():
                got.set_result(data)

    transport, _ = await loop.create_datagram_endpoint(_Client, remote_addr=(HOST, port))
    try:
        transport.sendto(payload)
        try:
            return await asyncio.wait_for(got, timeout)
        except TimeoutError:
            return None
    finally:
        transport.close()


async def _tcp_exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes
) -> bytes:
    writer.write(struct.pack("!H", len(payload)) + payload)
    await writer.drain()
    (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 2))
    return await asyncio.wait_for(reader.readexactly(length), 2)


# -- zone apex, negative answers, refusals -------------------------------------------------


async def test_apex_soa_and_ns_are_authoritative_with_glue(server: EmbeddedDnsServer) -> None:
    soa_resp = await ask(server, APEX, "SOA")
    assert soa_resp.rcode() == dns.rcode.NOERROR
    assert soa_resp.flags & dns.flags.AA
    (soa_rrset,) = soa_resp.answer
    soa = soa_rrset[0]
    assert soa.mname.to_text() == "ns1.gtm.example.com."
    assert soa.rname.to_text() == "hostmaster.example.com."
    assert soa.serial == 7 == server.serial  # the state's generation
    assert soa.minimum == 45

    ns_resp = await ask(server, APEX, "NS")
    assert ns_resp.flags & dns.flags.AA
    assert sorted(_values(ns_resp, dns.rdatatype.NS)) == [
        "ns1.gtm.example.com.",
        "ns2.dns.example.net.",
    ]
    glue = [(r.name.to_text(), rd.to_text()) for r in ns_resp.additional for rd in r]
    assert glue == [("ns1.gtm.example.com.", "192.0.2.53")]  # no glue for the out-of-zone NS

    host = await ask(server, "ns1.gtm.example.com", "A")
    assert host.flags & dns.flags.AA
    assert _values(host, dns.rdatatype.A) == ["192.0.2.53"]


async def test_nxdomain_versus_nodata(server: EmbeddedDnsServer) -> None:
    _assert_negative(await ask(server, "nope.gtm.example.com"), dns.rcode.NXDOMAIN)
    _assert_negative(await ask(server, "x.chat.gtm.example.com"), dns.rcode.NXDOMAIN)
    # Existing names asked for a type they do not have: NODATA.
    _assert_negative(await ask(server, CHAT, "TXT"), dns.rcode.NOERROR)
    _assert_negative(await ask(server, APEX, "MX"), dns.rcode.NOERROR)
    _assert_negative(await ask(server, "ns1.gtm.example.com", "AAAA"), dns.rcode.NOERROR)
    # An empty non-terminal (parent of edge.cdn) exists too (RFC 8020).
    _assert_negative(await ask(server, "cdn.gtm.example.com"), dns.rcode.NOERROR)


async def test_names_outside_every_zone_are_refused(server: EmbeddedDnsServer) -> None:
    for name in ("example.org", "example.com", "notgtm.example.com"):
        response = await ask(server, name)
        assert response.rcode() == dns.rcode.REFUSED
        assert not response.flags & dns.flags.AA
        assert response.answer == [] and response.authority == []


async def test_before_any_update_in_zone_queries_get_servfail_not_negative_answers() -> None:
    srv = EmbeddedDnsServer([ZONE], make_table())
    await srv.start(HOST, 0)
    try:
        # No routing yet: nothing may be cached as nonexistent, so resolvers retry.
        for name, rdtype in (
            (CHAT, "A"),
            (CHAT, "AAAA"),
            ("nope.gtm.example.com", "A"),
            (APEX, "MX"),
            (APEX, "ANY"),
            ("ns1.gtm.example.com", "AAAA"),
        ):
            for tcp in (False, True):
                response = await ask(srv, name, rdtype, client_subnet=EU_SUBNET, tcp=tcp)
                assert response.rcode() == dns.rcode.SERVFAIL, (name, rdtype, tcp)
                assert response.answer == [] and response.authority == []
                assert not response.flags & dns.flags.AA
        # What the zone configuration alone says is answered: apex SOA/NS, name-server address.
        soa = await ask(srv, APEX, "SOA")
        assert soa.rcode() == dns.rcode.NOERROR and soa.flags & dns.flags.AA
        assert soa.answer[0][0].serial == 0
        assert sorted(_values(await ask(srv, APEX, "NS"), dns.rdatatype.NS)) == [
            "ns1.gtm.example.com.",
            "ns2.dns.example.net.",
        ]
        assert _values(await ask(srv, "ns1.gtm.example.com"), dns.rdatatype.A) == ["192.0.2.53"]
        assert (await ask(srv, "example.org")).rcode() == dns.rcode.REFUSED
        # A reconfiguration does not make the server ready; the first state does.
        srv.reconfigure([ZONE.model_copy(update={"negative_ttl": 60})], make_table())
        assert (await ask(srv, CHAT)).rcode() == dns.rcode.SERVFAIL
        assert srv.update(make_state())
        assert region_of(await ask(srv, CHAT, client_subnet=EU_SUBNET), REGION_OF) in {
            "eu-west-1",
            "eu-central-1",
        }
        nx = await ask(srv, "nope.gtm.example.com")
        assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0][0].minimum == 60
    finally:
        await srv.stop()


# -- service answers -----------------------------------------------------------------------


async def test_service_answer_uses_service_ttl_and_ignores_case(
    server: EmbeddedDnsServer,
) -> None:
    response = await ask(server, "CHAT.Gtm.Example.COM", client_subnet=NA_SUBNET)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    (rrset,) = response.answer
    assert rrset.ttl == 30
    assert rrset.rdtype == dns.rdatatype.A
    assert len(rrset) == 1  # one region per answer
    assert rrset[0].to_text() in ADDRESSES.values()
    assert response.authority == []


async def test_eu_client_subnet_only_ever_gets_eu_regions(server: EmbeddedDnsServer) -> None:
    shares = await answer_shares(HOST, server.port, CHAT, EU_SUBNET, 300, REGION_OF)
    assert set(shares) == {"eu-west-1", "eu-central-1"}
    assert 0.35 < shares["eu-west-1"] < 0.65  # 100:100
    counts = server.answer_counts
    assert counts[(CHAT, "eu", "eu-west-1")] + counts[(CHAT, "eu", "eu-central-1")] == 300


async def test_weighted_shares_follow_the_weights(server: EmbeddedDnsServer) -> None:
    n = 3000
    shares = await answer_shares(HOST, server.port, CHAT, NA_SUBNET, n, REGION_OF)
    total = sum(w for w in DEFAULT_WEIGHTS.values())
    # 4 standard deviations of the largest share at n=3000 is ~0.036; the expected shares
    # (0.6, 0.3, 0.1) are 0.2-0.3 apart, so a wrong proportion cannot pass.
    for region, weight in DEFAULT_WEIGHTS.items():
        if weight:
            assert shares[region] == pytest.approx(weight / total, abs=0.035), (region, shares)
    assert "eu-central-1" not in shares  # weight 0: never answered
    assert "none" not in shares
    assert sum(shares.values()) == pytest.approx(1.0)


async def test_unknown_location_and_no_ecs_go_to_the_default_segment(
    server: EmbeddedDnsServer,
) -> None:
    for subnet in (UNKNOWN_SUBNET, None):  # 127.0.0.1 itself is in no prefix
        shares = await answer_shares(HOST, server.port, CHAT, subnet, 200, REGION_OF)
        assert set(shares) <= {"us-east-1", "us-west-2", "eu-west-1"}
        assert shares.get("us-east-1", 0) > 0.4
    assert not any(seg == "eu" for (_, seg, _) in server.answer_counts)


async def test_country_segment_beats_continent_segment(server: EmbeddedDnsServer) -> None:
    for subnet, region in (
        (DE_SUBNET, "eu-central-1"),  # EU and DE: the country segment wins
        (EU_SUBNET, "eu-west-1"),  # EU, no country
        (UNKNOWN_SUBNET, "us-east-1"),  # unknown: default
    ):
        shares = await answer_shares(HOST, server.port, GEO, subnet, 20, REGION_OF)
        assert shares == {region: 1.0}, subnet


async def test_aaaa_draws_only_among_members_with_aaaa(server: EmbeddedDnsServer) -> None:
    for _ in range(20):
        response = await ask(server, CHAT, "AAAA", client_subnet=NA_SUBNET)
        assert _values(response, dns.rdatatype.AAAA) == ["2001:db8::10"]
    # No EU region has an AAAA endpoint: NODATA, never a non-EU address.
    _assert_negative(await ask(server, CHAT, "AAAA", client_subnet=EU_SUBNET), dns.rcode.NOERROR)


async def test_cname_endpoint_answers_any_query_type(server: EmbeddedDnsServer) -> None:
    for rdtype in ("A", "AAAA", "TXT", "CNAME"):
        response = await ask(server, EDGE, rdtype)
        assert response.rcode() == dns.rcode.NOERROR
        (rrset,) = response.answer
        assert rrset.rdtype == dns.rdatatype.CNAME
        assert rrset.ttl == 60
        assert rrset[0].to_text() == "lb.cdn.example.net."


async def test_dark_pool_is_nodata_and_never_falls_back(server: EmbeddedDnsServer) -> None:
    _assert_negative(await ask(server, DARK), dns.rcode.NOERROR)

    assert server.update(make_state(generation=8, eu={"eu-west-1": 0, "eu-central-1": 0}))
    for _ in range(20):  # EU clients: dark, not sent to the default pool's US regions
        _assert_negative(await ask(server, CHAT, client_subnet=EU_SUBNET), dns.rcode.NOERROR)
    na = await ask(server, CHAT, client_subnet=NA_SUBNET)
    assert region_of(na, REGION_OF) in {"us-east-1", "us-west-2", "eu-west-1"}
    assert server.answer_counts[(CHAT, "eu", "none")] == 20


async def test_ecs_is_echoed_with_a_scope(server: EmbeddedDnsServer) -> None:
    response = await ask(server, CHAT, client_subnet=EU_SUBNET)
    (ecs,) = [o for o in response.options if isinstance(o, dns.edns.ECSOption)]
    assert (ecs.address, ecs.srclen, ecs.scopelen) == ("100.96.5.0", 24, 24)
    # Answers that do not depend on the client's location are valid for everyone: scope 0.
    for name, rdtype in ((APEX, "SOA"), (EDGE, "A"), ("nope.gtm.example.com", "A")):
        response = await ask(server, name, rdtype, client_subnet=EU_SUBNET)
        (ecs,) = [o for o in response.options if isinstance(o, dns.edns.ECSOption)]
        assert (ecs.srclen, ecs.scopelen) == (24, 0), name


async def test_source_address_locates_the_client_without_ecs() -> None:
    srv = EmbeddedDnsServer(
        [ZONE], make_table(("127.0.0.0/8", "EU", None)), rng=random.Random(1)
    )
    srv.update(make_state())
    await srv.start(HOST, 0)
    try:
        shares = await answer_shares(HOST, srv.port, CHAT, None, 50, REGION_OF)
        assert set(shares) <= {"eu-west-1", "eu-central-1"}
        # ECS /0 means "do not use my subnet": the resolver's address decides, scope 0.
        response = await ask(srv, CHAT, client_subnet="0.0.0.0/0")
        assert region_of(response, REGION_OF) in {"eu-west-1", "eu-central-1"}
        (ecs,) = [o for o in response.options if isinstance(o, dns.edns.ECSOption)]
        assert (ecs.srclen, ecs.scopelen) == (0, 0)
    finally:
        await srv.stop()


# -- transports and robustness --------------------------------------------------------------


async def test_tcp_answers_and_serves_several_queries_per_connection(
    server: EmbeddedDnsServer,
) -> None:
    response = await ask(server, CHAT, client_subnet=EU_SUBNET, tcp=True)
    assert region_of(response, REGION_OF) in {"eu-west-1", "eu-central-1"}

    reader, writer = await asyncio.open_connection(HOST, server.port)
    try:
        first = dns.message.make_query(APEX, "SOA", id=101)
        second = dns.message.make_query(CHAT, "A", id=202, use_edns=0)
        for q in (first, second):
            reply = dns.message.from_wire(await _tcp_exchange(reader, writer, q.to_wire()))
            assert reply.id == q.id
            assert reply.rcode() == dns.rcode.NOERROR
            assert reply.flags & dns.flags.AA
            assert reply.answer
    finally:
        writer.close()
        await writer.wait_closed()


async def test_malformed_packets_do_not_kill_the_server(server: EmbeddedDnsServer) -> None:
    # Too short to carry a header: dropped.
    assert await _udp_exchange(server.port, b"\x01", timeout=0.2) is None
    # A header followed by garbage: FORMERR with the same id.
    garbage = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\xff\x00\x13"
    reply = await _udp_exchange(server.port, garbage)
    assert reply is not None
    qid, flags = struct.unpack("!HH", reply[:4])
    assert qid == 0xBEEF and flags & dns.flags.QR and flags & 0xF == dns.rcode.FORMERR
    # A response (QR set) is never answered, so two servers cannot ping-pong.
    not_a_query = dns.message.make_query(APEX, "SOA")
    not_a_query.flags |= dns.flags.QR
    assert await _udp_exchange(server.port, not_a_query.to_wire(), timeout=0.2) is None
    # The server still answers over UDP...
    assert (await ask(server, APEX, "SOA")).rcode() == dns.rcode.NOERROR

    # ...and over TCP, on the same connection that carried garbage.
    reader, writer = await asyncio.open_connection(HOST, server.port)
    try:
        reply = await _tcp_exchange(reader, writer, garbage)
        assert struct.unpack("!HH", reply[:4])[1] & 0xF == dns.rcode.FORMERR
        ok = dns.message.from_wire(
            await _tcp_exchange(reader, writer, dns.message.make_query(APEX, "NS").to_wire())
        )
        assert ok.rcode() == dns.rcode.NOERROR and ok.answer
    finally:
        writer.close()
        await writer.wait_closed()


async def test_unsupported_requests_get_proper_rcodes(server: EmbeddedDnsServer) -> None:
    axfr = await ask(server, APEX, "AXFR", tcp=True)
    assert axfr.rcode() == dns.rcode.REFUSED
    notify = dns.message.make_query(APEX, "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    reply = await _udp_exchange(server.port, notify.to_wire())
    assert reply is not None
    assert dns.message.from_wire(reply).rcode() == dns.rcode.NOTIMP


async def test_update_opcode_gets_notimp_even_when_unparsable(server: EmbeddedDnsServer) -> None:
    plain = dns.update.UpdateMessage(APEX)
    plain.add("x", 30, "A", "192.0.2.99")
    signed = dns.update.UpdateMessage(  # TSIG with a key the server does not know
        APEX, keyring=dns.tsigkeyring.from_text({"k.": "c2VjcmV0c2VjcmV0"})
    )
    signed.add("x", 30, "A", "192.0.2.99")
    bad_zone = plain.to_wire()
    bad_zone = bad_zone[: 12 + len(APEX) + 2] + b"\x00\x01\x00\x01" + bad_zone[12 + len(APEX) + 6 :]
    for wire in (plain.to_wire(), signed.to_wire(), bad_zone):
        for transport in ("udp", "tcp"):
            if transport == "udp":
                reply = await _udp_exchange(server.port, wire)
                assert reply is not None
            else:
                reader, writer = await asyncio.open_connection(HOST, server.port)
                try:
                    reply = await _tcp_exchange(reader, writer, wire)
                finally:
                    writer.close()
                    await writer.wait_closed()
            qid, flags = struct.unpack("!HH", reply[:4])
            assert qid == struct.unpack("!H", wire[:2])[0]
            assert flags & dns.flags.QR
            assert dns.opcode.from_flags(flags) == dns.opcode.UPDATE
            assert flags & 0xF == dns.rcode.NOTIMP, transport
    assert (await ask(server, "x.gtm.example.com")).rcode() == dns.rcode.NXDOMAIN  # nothing added


async def test_client_subnet_with_a_nonzero_scope_is_formerr(server: EmbeddedDnsServer) -> None:
    for scope in (1, 16, 24):
        bad = dns.message.make_query(
            CHAT, "A", use_edns=0, options=[dns.edns.ECSOption("100.96.5.0", 24, scope)]
        )
        for tcp in (False, True):
            response = await ask_message(server, bad, tcp=tcp)
            assert response.id == bad.id
            assert response.rcode() == dns.rcode.FORMERR, (scope, tcp)
            assert response.answer == []
    good = dns.message.make_query(
        CHAT, "A", use_edns=0, options=[dns.edns.ECSOption("100.96.5.0", 24, 0)]
    )
    response = await ask_message(server, good)
    assert response.rcode() == dns.rcode.NOERROR
    assert region_of(response, REGION_OF) in {"eu-west-1", "eu-central-1"}


async def ask_message(
    srv: EmbeddedDnsServer, message: dns.message.Message, *, tcp: bool = False
) -> dns.message.Message:
    wire = message.to_wire()
    if not tcp:
        reply = await _udp_exchange(srv.port, wire)
        assert reply is not None
        return dns.message.from_wire(reply)
    reader, writer = await asyncio.open_connection(HOST, srv.port)
    try:
        return dns.message.from_wire(await _tcp_exchange(reader, writer, wire))
    finally:
        writer.close()
        await writer.wait_closed()


# -- updates --------------------------------------------------------------------------------


async def test_update_with_the_same_routing_is_a_no_op(server: EmbeddedDnsServer) -> None:
    applied, serial = server.updates_applied, server.serial
    assert server.update(make_state()) is False  # an equal state, another object
    assert server.update(make_state(generation=7)) is False
    assert (server.updates_applied, server.serial) == (applied, serial)
    assert (await ask(server, APEX, "SOA")).answer[0][0].serial == serial

    # A routing change bumps the serial even if the generation did not grow...
    assert server.update(make_state(default={"us-east-1": 1}))
    assert server.serial == serial + 1
    # ...and follows the generation when it did.
    assert server.update(make_state(generation=42))
    assert server.serial == 42
    assert server.updates_applied == applied + 2


async def test_an_updated_state_changes_answers(server: EmbeddedDnsServer) -> None:
    before = await answer_shares(HOST, server.port, CHAT, EU_SUBNET, 100, REGION_OF)
    assert set(before) == {"eu-west-1", "eu-central-1"}
    assert server.update(make_state(generation=8, eu={"eu-west-1": 0, "eu-central-1": 255}))
    after = await answer_shares(HOST, server.port, CHAT, EU_SUBNET, 100, REGION_OF)
    assert after == {"eu-central-1": 1.0}
    assert (await ask(server, APEX, "SOA")).answer[0][0].serial == 8


async def test_stop_is_idempotent_and_frees_the_port() -> None:
    srv = EmbeddedDnsServer([ZONE], make_table())
    await srv.start(HOST, 0)
    port = srv.port
    reader, writer = await asyncio.open_connection(HOST, port)  # an idle client
    await srv.stop()
    await srv.stop()
    with pytest.raises(RuntimeError):
        _ = srv.port
    assert await reader.read() == b""  # the server closed the idle connection
    writer.close()
    again = EmbeddedDnsServer([ZONE], make_table())
    await again.start(HOST, port)
    await again.stop()


async def test_udp_answer_too_big_is_truncated_and_tcp_carries_it(
    server: EmbeddedDnsServer,
) -> None:
    many = tuple(("A", f"198.18.0.{i}") for i in range(1, 121))  # ~1.9 kB of answers
    assert server.update(make_state(generation=9, us_east_1=many))
    udp = await ask(server, GEO, client_subnet=UNKNOWN_SUBNET)  # default segment: us-east-1
    assert udp.flags & dns.flags.TC
    tcp = await ask(server, GEO, client_subnet=UNKNOWN_SUBNET, tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert len(_values(tcp, dns.rdatatype.A)) == 120


# -- reconfiguration (policy / inventory reload) ---------------------------------------------

NEW_EU_NETWORK = "100.98.0.0/16"
NEW_EU_SUBNET = "100.98.7.0/24"


async def test_reconfigure_swaps_zone_and_prefix_table(server: EmbeddedDnsServer) -> None:
    # Before: the new network is unknown, so it is answered from the default segment.
    before = await answer_shares(HOST, server.port, CHAT, NEW_EU_SUBNET, 100, REGION_OF)
    assert "us-east-1" in before
    soa = (await ask(server, APEX, "SOA")).answer[0][0]
    assert soa.minimum == 45
    serial, applied = server.serial, server.updates_applied

    zone = ZONE.model_copy(update={"negative_ttl": 120})
    server.reconfigure([zone], make_table((NEW_EU_NETWORK, "EU", None)))

    assert server.serial == serial + 1  # the answers changed
    assert server.updates_applied == applied  # same state, no update counted
    soa = (await ask(server, APEX, "SOA")).answer[0][0]
    assert (soa.minimum, soa.serial) == (120, serial + 1)
    nx = await ask(server, "nope.gtm.example.com")
    assert nx.rcode() == dns.rcode.NXDOMAIN
    assert nx.authority[0].ttl == 120 and nx.authority[0][0].minimum == 120
    # The last applied state is still served, now with the new table: EU regions only.
    after = await answer_shares(HOST, server.port, CHAT, NEW_EU_SUBNET, 200, REGION_OF)
    assert set(after) == {"eu-west-1", "eu-central-1"}
    shares = await answer_shares(HOST, server.port, CHAT, NA_SUBNET, 100, REGION_OF)
    assert "us-east-1" in shares  # other clients unchanged

    # The same configuration again changes nothing.
    server.reconfigure([zone], make_table((NEW_EU_NETWORK, "EU", None)))
    assert server.serial == serial + 1
    # A later update still works and keeps the new configuration.
    assert server.update(make_state(generation=3, eu={"eu-west-1": 0, "eu-central-1": 1}))
    assert server.serial == serial + 2
    after = await answer_shares(HOST, server.port, CHAT, NEW_EU_SUBNET, 20, REGION_OF)
    assert after == {"eu-central-1": 1.0}
    assert (await ask(server, APEX, "SOA")).answer[0][0].minimum == 120


async def test_reconfigure_rejects_no_zones_and_keeps_serving(server: EmbeddedDnsServer) -> None:
    serial = server.serial
    with pytest.raises(ValueError):
        server.reconfigure([], make_table())
    bad_glue = ZONE.model_copy(update={"nameserver_addresses": {"ns1.gtm.example.com": "nope"}})
    with pytest.raises(ValueError):
        server.reconfigure([bad_glue], make_table())
    assert server.serial == serial
    assert (await ask(server, APEX, "SOA")).answer[0][0].minimum == 45


def _config(zone: Zone, networks: Mapping[str, tuple[str, str]], digest: str) -> Config:
    from tests.factories import make_policy

    policy = make_policy().model_copy(update={"zones": (zone,)})
    inventory = Inventory(regions={r.name: r for r in make_regions(networks)})
    return Config(policy=policy, inventory=inventory, digest=digest, files=())


async def test_controller_policy_reload_reconfigures_the_dns_server(
    server: EmbeddedDnsServer,
) -> None:
    configs = [_config(ZONE, NETWORKS, "sha256:one")]
    ctl = Controller(None, lambda: configs[-1], [server])  # type: ignore[arg-type]
    await ctl._reload_config()  # the initial config, equal to what the server was built with...
    serial = server.serial
    # (the fixture's table has an extra DE entry the inventory does not: that is the change)

    networks = dict(NETWORKS)
    networks["eu-west-1"] = ("EU", NEW_EU_NETWORK)
    zone = ZONE.model_copy(update={"negative_ttl": 90})
    configs.append(_config(zone, networks, "sha256:two"))
    await ctl._reload_config()
    assert ctl.config is configs[-1]
    assert server.serial > serial
    assert (await ask(server, APEX, "SOA")).answer[0][0].minimum == 90
    shares = await answer_shares(HOST, server.port, CHAT, NEW_EU_SUBNET, 100, REGION_OF)
    assert set(shares) == {"eu-west-1", "eu-central-1"}

    # Conflicting client networks: the config may come into force, the DNS keeps its own.
    serial = server.serial
    clash = dict(networks)
    clash["us-east-1"] = ("NA", NEW_EU_NETWORK)
    configs.append(_config(ZONE, clash, "sha256:three"))
    await ctl._reload_config()  # logs, does not raise
    assert ctl.config is configs[-1]
    assert server.serial == serial
    assert (await ask(server, APEX, "SOA")).answer[0][0].minimum == 90
