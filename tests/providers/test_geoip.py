"""Client location from a GeoIP table (MaxMind DB): records, reloads, overrides, the unlocated
segment, the bundled default table, and the embedded DNS answering over real UDP.

Small tables are written by ``mmdb-writer`` in MaxMind's record shape; the default table is the
one ``python-geoacumen`` ships. The real networks used are well-known allocations: Deutsche
Telekom 80.128.0.0/11 and 2003::/19, Orange France 90.0.0.0/9, BT 81.128.0.0/12.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from ipaddress import ip_address
from pathlib import Path

import dns.message
import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet
from prometheus_client import CollectorRegistry, generate_latest

from gtm.errors import ConfigError
from gtm.models.policy import Service
from gtm.providers.dnsclient import answer_shares, query, region_of
from gtm.providers.embedded_dns import EmbeddedDnsServer, unlocated_segments
from gtm.providers.geo import Location, PrefixTable
from gtm.providers.geoip import GeoIpTable, location_of
from tests.providers.test_embedded_dns import CHAT, HOST, REGION_OF, ZONE, make_state, make_table

# Tests that run the embedded DNS in their event loop fail when something blocked it.
watched = pytest.mark.usefixtures("loop_watchdog")

EU_REGIONS = {"eu-west-1", "eu-central-1"}
US_REGIONS = {"us-east-1", "us-west-2"}
# Real European networks (ECS subnets and single addresses inside them).
DE_SUBNET, DE_ADDR = "80.128.5.0/24", "80.150.1.1"  # Deutsche Telekom
DE_V6_SUBNET = "2003:e0:1::/48"  # Deutsche Telekom IPv6
FR_SUBNET, FR_ADDR = "90.0.5.0/24", "90.100.1.1"  # Orange France
GB_SUBNET, GB_ADDR = "81.128.5.0/24", "81.140.1.1"  # BT
US_SUBNET = "8.8.8.0/24"  # Google, United States
UNLOCATED_SUBNET = "203.0.113.0/24"  # TEST-NET-3: in no table
N = 40  # queries per client subnet


def _record(country: str | None, continent: str | None = None) -> dict[str, object]:
    rec: dict[str, object] = {}
    if country is not None:
        rec["country"] = {"iso_code": country}
    if continent is not None:
        rec["continent"] = {"code": continent}
    return rec


def write_table(path: Path, entries: Mapping[str, dict[str, object]], kind: str = "GeoLite2-Country") -> None:
    """Write a MaxMind DB with ``entries`` (prefix → record) atomically (write, then rename)."""
    writer = MMDBWriter(6, database_type=kind, ipv4_compatible=True, languages=["en"], description="gtm test")
    for prefix, rec in entries.items():
        writer.insert_network(IPSet([prefix]), rec)
    tmp = path.with_suffix(".tmp")
    writer.to_db_file(str(tmp))
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def default_table() -> GeoIpTable:
    return GeoIpTable.default()  # read here, not inside a test's event loop (10 MB)


# -- records and tables ---------------------------------------------------------------------


def test_location_of_reads_maxmind_dbip_and_country_only_records() -> None:
    # MaxMind GeoLite2 / DB-IP Lite: the record's continent is used as given.
    assert location_of(_record("DE", "EU")) == Location("EU", "DE")
    assert location_of(_record("TR", "EU")) == Location("EU", "TR")
    # Country only (Geoacumen): the continent comes from the country.
    assert location_of(_record("GB")) == Location("EU", "GB")
    assert location_of(_record("JP")) == Location("AS", "JP")
    assert location_of(_record("US")) == Location("NA", "US")
    # No country but a registered country (GeoLite2 satellite and anycast networks).
    assert location_of({"registered_country": {"iso_code": "FR"}}) == Location("EU", "FR")
    # A continent without a country still places the client on the continent.
    assert location_of(_record(None, "OC")) == Location("OC", None)
    # RIR allocations for all of Europe carry the region-wide code EU.
    assert location_of(_record("EU")) == Location("EU", None)
    for unknown in (_record("ZZ"), _record("None"), _record("Unknown"), {}, None, "DE", _record(None, "XX")):
        assert location_of(unknown) is None, unknown


def test_table_locates_ipv4_ipv6_and_mapped_addresses(tmp_path: Path) -> None:
    path = tmp_path / "t.mmdb"
    write_table(path, {"198.51.100.0/24": _record("DE", "EU"), "2001:db8::/32": _record("FR", "EU"),
                       "198.51.100.128/25": _record("JP", "AS")})
    table = GeoIpTable(path)
    assert table.database_type == "GeoLite2-Country"
    assert table.lookup(ip_address("198.51.100.7")) == Location("EU", "DE")
    assert table.lookup(ip_address("198.51.100.200")) == Location("AS", "JP")  # the longer entry
    assert table.lookup(ip_address("::ffff:198.51.100.7")) == Location("EU", "DE")
    assert table.lookup(ip_address("2001:db8:5::1")) == Location("EU", "FR")
    assert table.lookup(ip_address("192.0.2.1")) is None
    assert table.lookup(ip_address("2001:db9::1")) is None


def test_a_table_that_does_not_load_is_a_config_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mmdb"
    broken.write_bytes(b"not a MaxMind DB" * 64)
    for path in (broken, tmp_path / "missing.mmdb"):
        with pytest.raises(ConfigError) as err:
            GeoIpTable(path)
        assert str(path) in err.value.reasons[0]


def test_refresh_swaps_in_a_new_file_and_keeps_the_old_table_when_the_new_one_is_broken(tmp_path: Path) -> None:
    path = tmp_path / "country.mmdb"
    addr = ip_address("198.51.100.9")
    write_table(path, {"198.51.100.0/24": _record("DE", "EU")})
    table = GeoIpTable(path)
    assert table.lookup(addr) == Location("EU", "DE")  # now cached
    assert table.refresh() is False  # unchanged file: nothing read
    write_table(path, {"198.51.100.0/24": _record("FR", "EU")})
    assert table.refresh() is True
    assert table.lookup(addr) == Location("EU", "FR")  # the new table, not the old cache
    assert (table.reloads, table.reload_errors) == (1, 0)

    tmp = tmp_path / "garbage"
    tmp.write_bytes(b"\x00garbage" * 1000)
    os.replace(tmp, path)
    assert table.refresh() is False
    assert table.lookup(addr) == Location("EU", "FR")  # the old table stays
    assert table.refresh() is False  # the same broken file is not retried (nor logged) again
    assert (table.reloads, table.reload_errors) == (1, 1)

    path.unlink()
    assert table.refresh() is False
    assert table.lookup(addr) == Location("EU", "FR")
    assert table.reload_errors == 2
    write_table(path, {"198.51.100.0/24": _record("GB")})
    assert table.refresh() is True
    assert table.lookup(addr) == Location("EU", "GB")


def test_default_table_places_german_french_and_uk_networks_in_europe(default_table: GeoIpTable) -> None:
    assert default_table.database_type == "Geoacumen-Country"
    for addr, country in (
        ("80.128.0.1", "DE"), (DE_ADDR, "DE"), ("2003:e0::1", "DE"),
        ("90.0.0.1", "FR"), (FR_ADDR, "FR"),
        ("81.128.0.1", "GB"), (GB_ADDR, "GB"),
    ):
        assert default_table.lookup(ip_address(addr)) == Location("EU", country), addr
    assert default_table.lookup(ip_address("8.8.8.8")) == Location("NA", "US")
    assert default_table.lookup(ip_address("203.0.113.1")) is None
    assert default_table.lookup(ip_address("127.0.0.1")) is None


# -- the policy option ------------------------------------------------------------------------


def _service(**kw: object) -> Service:
    return Service.model_validate({
        "name": "chat", "fqdn": CHAT, "zone": "gtm.example.com", "regions": ["eu-west-1", "us-east-1"],
        "segments": [{"name": "eu", "match": {"continents": ["EU"]}, "residency": {"jurisdictions": ["EU"]}}],
        **kw,
    })


def test_unlocated_segment_must_name_a_segment_of_the_service() -> None:
    assert _service().unlocated_segment is None
    assert _service(unlocated_segment="eu").unlocated_segment == "eu"
    assert _service(unlocated_segment="default").unlocated_segment == "default"  # the implicit catch-all
    with pytest.raises(ValueError, match=r"unlocated_segment 'us' is not a segment of this service.*'eu', 'default'"):
        _service(unlocated_segment="us")
    assert unlocated_segments([_service(unlocated_segment="eu"), _service(name="other")]) == {CHAT: "eu"}


# -- the embedded DNS, over real UDP -----------------------------------------------------------


async def _server(table: PrefixTable, geoip: GeoIpTable | None, **kw: object) -> EmbeddedDnsServer:
    srv = EmbeddedDnsServer([ZONE], table, rng=random.Random(8), geoip=geoip, **kw)  # type: ignore[arg-type]
    assert srv.update(make_state())
    await srv.start(HOST, 0)
    return srv


@pytest.fixture
async def default_server(default_table: GeoIpTable) -> AsyncIterator[EmbeddedDnsServer]:
    srv = await _server(make_table(), default_table)
    try:
        yield srv
    finally:
        await srv.stop()


@watched
async def test_default_table_answers_german_french_and_uk_clients_with_the_eu_segment(
    default_server: EmbeddedDnsServer,
) -> None:
    for subnet in (DE_SUBNET, DE_V6_SUBNET, FR_SUBNET, GB_SUBNET):
        shares = await answer_shares(HOST, default_server.port, CHAT, subnet, N, REGION_OF)
        assert set(shares) <= EU_REGIONS, (subnet, shares)
        assert sum(shares.values()) == pytest.approx(1.0), subnet  # every query was answered
    # The control: a US client gets the default segment, mostly US regions.
    us = await answer_shares(HOST, default_server.port, CHAT, US_SUBNET, N, REGION_OF)
    assert sum(us.get(r, 0.0) for r in US_REGIONS) > 0.5, us
    assert default_server.location_counts == {"ecs": 5 * N}
    assert default_server.answer_counts[(CHAT, "eu", "eu-west-1")] > 0


@watched
async def test_source_address_is_located_in_the_table_without_ecs(default_server: EmbeddedDnsServer) -> None:
    # Queries over loopback come from 127.0.0.1, which no table places; a German, French or
    # British resolver address goes through the same entry point the UDP listener calls.
    for source in (DE_ADDR, FR_ADDR, GB_ADDR):
        for i in range(10):
            wire = dns.message.make_query(CHAT, "A", id=i).to_wire()
            out = default_server.handle(wire, source)
            assert out is not None
            assert region_of(dns.message.from_wire(out), REGION_OF) in EU_REGIONS, source
    assert default_server.location_counts == {"source": 30}
    response = await query(HOST, default_server.port, CHAT)  # real UDP from 127.0.0.1: unlocated
    assert region_of(response, REGION_OF) in REGION_OF.values()
    assert default_server.location_counts == {"source": 30, "unlocated": 1}


@watched
async def test_client_networks_override_the_geoip_table(tmp_path: Path) -> None:
    path = tmp_path / "t.mmdb"
    # The table puts all of 100.96.0.0/12 in the US; the inventory lists 100.96.0.0/16 as EU.
    write_table(path, {"100.96.0.0/12": _record("US", "NA")})
    srv = await _server(make_table(), GeoIpTable(path))
    try:
        eu = await answer_shares(HOST, srv.port, CHAT, "100.96.5.0/24", N, REGION_OF)
        assert set(eu) <= EU_REGIONS, eu  # the hand-listed prefix wins
        us = await answer_shares(HOST, srv.port, CHAT, "100.100.5.0/24", N, REGION_OF)
        assert sum(us.get(r, 0.0) for r in US_REGIONS) > 0.5, us  # the table decides elsewhere
        assert srv.location_counts == {"ecs": 2 * N}
    finally:
        await srv.stop()


@watched
async def test_unlocated_clients_get_the_default_segment_or_the_one_the_policy_names(
    default_table: GeoIpTable,
) -> None:
    srv = await _server(make_table(), default_table)
    try:
        shares = await answer_shares(HOST, srv.port, CHAT, UNLOCATED_SUBNET, N, REGION_OF)
        assert sum(shares.get(r, 0.0) for r in US_REGIONS) > 0.5, shares  # the default segment
        assert srv.answer_counts.get((CHAT, "eu", "eu-west-1"), 0) == 0
        # The policy now keeps unlocated clients in the EU (a policy reload reconfigures).
        srv.reconfigure([ZONE], make_table(), unlocated={CHAT: "eu"})
        shares = await answer_shares(HOST, srv.port, CHAT, UNLOCATED_SUBNET, N, REGION_OF)
        assert set(shares) <= EU_REGIONS, shares
        shares = await answer_shares(HOST, srv.port, CHAT, None, N, REGION_OF)  # 127.0.0.1, no ECS
        assert set(shares) <= EU_REGIONS, shares
        # Located clients are unaffected: a US client still gets the default segment.
        us = await answer_shares(HOST, srv.port, CHAT, US_SUBNET, N, REGION_OF)
        assert sum(us.get(r, 0.0) for r in US_REGIONS) > 0.5, us
        assert srv.location_counts == {"unlocated": 3 * N, "ecs": N}
    finally:
        await srv.stop()


@watched
async def test_without_a_geoip_table_only_client_networks_locate(default_table: GeoIpTable) -> None:
    srv = await _server(make_table(), None, unlocated={CHAT: "eu"})
    try:
        # Germany is unknown without the table: it gets the unlocated segment (EU here).
        shares = await answer_shares(HOST, srv.port, CHAT, DE_SUBNET, N, REGION_OF)
        assert set(shares) <= EU_REGIONS, shares
        shares = await answer_shares(HOST, srv.port, CHAT, US_SUBNET, N, REGION_OF)
        assert set(shares) <= EU_REGIONS, shares  # so is the US client: nothing locates it
        assert srv.location_counts == {"unlocated": 2 * N}
    finally:
        await srv.stop()


@watched
async def test_metrics_count_queries_by_how_the_client_was_located(default_server: EmbeddedDnsServer) -> None:
    await answer_shares(HOST, default_server.port, CHAT, DE_SUBNET, 3, REGION_OF)
    await answer_shares(HOST, default_server.port, CHAT, UNLOCATED_SUBNET, 2, REGION_OF)
    await answer_shares(HOST, default_server.port, CHAT, None, 1, REGION_OF)  # source 127.0.0.1: unlocated
    reg = CollectorRegistry()
    reg.register(default_server.metrics_collector())
    text = generate_latest(reg).decode()
    assert 'gtm_dns_client_location_total{by="ecs"} 3.0' in text
    assert 'gtm_dns_client_location_total{by="source"} 0.0' in text
    assert 'gtm_dns_client_location_total{by="unlocated"} 3.0' in text
    assert 'gtm_dns_responses_total{rcode="NOERROR"} 6.0' in text
    assert 'gtm_geoip_build_timestamp_seconds{database_type="Geoacumen-Country"}' in text
    assert "gtm_geoip_reload_errors_total 0.0" in text


@pytest.fixture
def table_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "country.mmdb"
    write_table(path, {"100.100.0.0/16": _record("US", "NA")})
    yield path


@watched
async def test_a_started_server_picks_up_a_new_table_file(table_file: Path) -> None:
    srv = await _server(make_table(), GeoIpTable(table_file), geoip_refresh_s=0.05)
    subnet = "100.100.0.0/16"
    try:
        us = await answer_shares(HOST, srv.port, CHAT, subnet, N, REGION_OF)
        assert sum(us.get(r, 0.0) for r in US_REGIONS) > 0.5, us
        await asyncio.to_thread(write_table, table_file, {"100.100.0.0/16": _record("DE", "EU")})
        deadline = time.monotonic() + 10
        while srv.geoip is not None and srv.geoip.reloads == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert srv.geoip is not None and srv.geoip.reloads == 1
        eu = await answer_shares(HOST, srv.port, CHAT, subnet, N, REGION_OF)
        assert set(eu) <= EU_REGIONS, eu
    finally:
        await srv.stop()


def test_controller_refuses_a_geoip_table_that_does_not_load(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from gtm.cli.main import app

    missing = tmp_path / "GeoLite2-Country.mmdb"
    result = CliRunner().invoke(app, ["controller", "--geoip-db", str(missing), "--api-listen", "off"])
    assert result.exit_code == 2, result.output
    assert f"GeoIP table {missing}" in result.output
