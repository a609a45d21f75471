"""PrefixTable: longest-prefix match, checked against a brute-force reference."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gtm.errors import ConfigError
from gtm.models.region import Region
from gtm.providers.geo import Location, PrefixTable
from tests.factories import examples

CONTINENT_CODES = ("AF", "AS", "EU", "NA", "OC", "SA")


def _region(name: str, continent: str, *networks: str) -> Region:
    return Region.model_validate(
        {
            "name": name,
            "jurisdiction": "EU" if continent == "EU" else "US",
            "geography": {"continent": continent, "client_networks": list(networks)},
            "endpoints": [{"address": "192.0.2.1"}],
        }
    )


def test_from_regions_locates_client_networks_on_the_region_continent() -> None:
    table = PrefixTable.from_regions(
        [
            _region("us-east-1", "NA", "100.64.0.0/16"),
            _region("eu-west-1", "EU", "100.96.0.0/16", "2001:db8:e0::/48"),
        ]
    )
    assert len(table) == 3
    assert table.lookup("100.64.7.9") == Location("NA")
    assert table.lookup("100.96.255.1") == Location("EU")
    assert table.lookup("2001:db8:e0::5") == Location("EU")
    assert table.lookup("100.65.0.1") is None
    assert table.lookup("2001:db8:e1::5") is None


def test_from_regions_reports_every_continent_conflict() -> None:
    with pytest.raises(ConfigError) as err:
        PrefixTable.from_regions(
            [
                _region("a", "NA", "10.0.0.0/8", "11.0.0.0/8"),
                _region("b", "EU", "10.0.0.0/8", "11.0.0.0/8"),
            ]
        )
    assert len(err.value.reasons) == 2
    assert "10.0.0.0/8" in err.value.reasons[0]


def test_longest_prefix_wins_and_networks_only_match_shorter_entries() -> None:
    table = PrefixTable()
    table.add("10.0.0.0/8", "NA")
    table.add("10.1.0.0/16", "EU", "DE")
    table.add("10.1.2.0/24", "AS", "JP")
    table.add("0.0.0.0/0", "OC")
    assert table.lookup("10.1.2.3") == Location("AS", "JP")
    assert table.lookup("10.1.3.3") == Location("EU", "DE")
    assert table.lookup("10.2.0.1") == Location("NA")
    assert table.lookup("11.0.0.1") == Location("OC")
    # An ECS /20 inside 10.1/16 is not wholly inside 10.1.2/24: the /16 answers.
    assert table.lookup("10.1.0.0/20") == Location("EU", "DE")
    assert table.lookup(ipaddress.ip_network("10.1.2.0/25")) == Location("AS", "JP")
    # IPv4-mapped IPv6 is looked up as IPv4; IPv6 does not fall into the IPv4 default.
    assert table.lookup("::ffff:10.1.2.3") == Location("AS", "JP")
    assert table.lookup("2001:db8::1") is None


def test_add_replaces_and_validates() -> None:
    table = PrefixTable()
    table.add("192.0.2.0/24", "NA")
    table.add("192.0.2.77/24", "EU", "FR")  # host bits ignored: same prefix, replaced
    assert len(table) == 1
    assert table.match("192.0.2.1") == (ipaddress.ip_network("192.0.2.0/24"), Location("EU", "FR"))
    with pytest.raises(ConfigError):
        table.add("192.0.2.0/24", "XX")
    with pytest.raises(ConfigError):
        table.add("192.0.2.0/24", "EU", "fr")
    with pytest.raises(ValueError):
        table.add("192.0.2.0/33", "EU")
    with pytest.raises(ValueError):
        table.lookup("not-an-address")


# -- property: longest-prefix match equals a brute-force scan ------------------------------

_entry4 = st.tuples(
    st.integers(0, 2**32 - 1), st.integers(0, 32), st.sampled_from(CONTINENT_CODES)
)
_entry6 = st.tuples(
    st.integers(0, 2**128 - 1), st.integers(0, 128), st.sampled_from(CONTINENT_CODES)
)


def _reference(
    entries: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Location]],
    target: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> Location | None:
    """The last-added entry among the longest prefixes that contain all of ``target``."""
    best: tuple[int, Location] | None = None
    for net, where in entries:
        if (
            net.version == target.version
            and target.subnet_of(net)  # type: ignore[arg-type]
            and (best is None or net.prefixlen >= best[0])
        ):
            best = (net.prefixlen, where)
    return None if best is None else best[1]


def _near(base: int, keep: int, noise: int, bits: int) -> int:
    """An address sharing the first ``keep`` bits of ``base``; the rest from ``noise``."""
    low = (1 << (bits - keep)) - 1
    return (base & ~low & ((1 << bits) - 1)) | (noise & low)


def _check(
    version: int,
    raw: list[tuple[int, int, str]],
    probes: list[tuple[int, int, int, int]],
) -> None:
    bits = 32 if version == 4 else 128
    make = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    table = PrefixTable()
    entries = []
    for value, length, continent in raw:
        net = make((value, length), strict=False)
        where = Location(continent, None)
        table.add(net, continent)
        entries.append((net, where))
    for pick, keep, noise, plen in probes:
        base = raw[pick % len(raw)][0] if raw else noise
        address = _near(base, min(keep, bits), noise, bits)
        host = make((address, bits))
        first = host.network_address
        if isinstance(first, ipaddress.IPv6Address) and first.ipv4_mapped is not None:
            continue  # looked up as IPv4 by design (tested above)
        assert table.lookup(host.network_address) == _reference(entries, host)
        assert table.lookup(str(host.network_address)) == _reference(entries, host)
        subnet = make((address, min(plen, bits)), strict=False)
        assert table.lookup(subnet) == _reference(entries, subnet)


@settings(max_examples=examples(300), deadline=None)
@given(
    raw=st.lists(_entry4, max_size=40),
    probes=st.lists(
        st.tuples(st.integers(0, 1000), st.integers(0, 32), st.integers(0, 2**32 - 1),
                  st.integers(0, 32)),
        min_size=1,
        max_size=20,
    ),
)
def test_ipv4_longest_prefix_match_equals_brute_force(
    raw: list[tuple[int, int, str]], probes: list[tuple[int, int, int, int]]
) -> None:
    _check(4, raw, probes)


@settings(max_examples=examples(150), deadline=None)
@given(
    raw=st.lists(_entry6, max_size=30),
    probes=st.lists(
        st.tuples(st.integers(0, 1000), st.integers(0, 128), st.integers(0, 2**128 - 1),
                  st.integers(0, 128)),
        min_size=1,
        max_size=15,
    ),
)
def test_ipv6_longest_prefix_match_equals_brute_force(
    raw: list[tuple[int, int, str]], probes: list[tuple[int, int, int, int]]
) -> None:
    _check(6, raw, probes)
