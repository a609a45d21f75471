"""The prefix→geography table: where a DNS client is, by longest-prefix match.

The embedded DNS server locates each query's client (its EDNS Client Subnet, else its source
address) here to pick a segment, so a lookup runs once per query and must be cheap: entries
are kept per address family in one dict per prefix length, keyed by the prefix's leading bits,
and a lookup probes the lengths present from the longest down. That is at most 33 (IPv4) or
129 (IPv6) dict probes, and in practice a handful, since real tables use few distinct lengths.

The table is built from the region inventory (``Geography.client_networks`` of every region,
located on the region's continent) plus explicit entries, e.g. from a GeoIP export.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from gtm.errors import ConfigError
from gtm.models.region import CONTINENTS, Region

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_COUNTRY = re.compile(r"^[A-Z]{2}$")
_BITS = {4: 32, 6: 128}


@dataclass(frozen=True, slots=True)
class Location:
    """Where a client network is.

    Attributes:
        continent: continent code (``EU``, ``NA``...), as in ``gtm.models.region.CONTINENTS``.
        country: ISO 3166-1 alpha-2 code, or None when only the continent is known.
    """

    continent: str
    country: str | None = None


class PrefixTable:
    """Longest-prefix match of IPv4/IPv6 addresses and networks to a ``Location``.

    Adding the same prefix twice replaces the earlier entry. Not thread-safe for concurrent
    ``add`` and ``lookup``; build the table first, then share it read-only.
    """

    __slots__ = ("_lengths", "_tables")

    def __init__(self) -> None:
        # version -> prefix length -> leading bits of the prefix -> (network, location)
        self._tables: dict[int, dict[int, dict[int, tuple[IPNetwork, Location]]]] = {4: {}, 6: {}}
        # version -> prefix lengths present, longest first
        self._lengths: dict[int, list[int]] = {4: [], 6: []}

    @classmethod
    def from_regions(cls, regions: Iterable[Region]) -> PrefixTable:
        """Build the table from the inventory's ``geography.client_networks``.

        Each client network is located on its region's continent; the country is unknown
        (``Geography`` does not say which of its countries a network is in).

        Args:
            regions: the inventory's regions.

        Returns:
            A new table.

        Raises:
            ConfigError: two regions place the same prefix on different continents (every
                conflict is listed).
        """
        table = cls()
        owner: dict[IPNetwork, tuple[str, str]] = {}
        reasons: list[str] = []
        for region in regions:
            continent = region.geography.continent
            for text in region.geography.client_networks:
                net = ipaddress.ip_network(text, strict=False)
                seen = owner.get(net)
                if seen is not None and seen[1] != continent:
                    reasons.append(
                        f"client network {net} is in region {seen[0]!r} ({seen[1]}) and in "
                        f"region {region.name!r} ({continent})"
                    )
                    continue
                owner[net] = (region.name, continent)
                table.add(net, continent)
        if reasons:
            raise ConfigError(reasons)
        return table

    def add(self, prefix: str | IPNetwork, continent: str, country: str | None = None) -> None:
        """Locate every address in ``prefix`` (unless a longer prefix says otherwise).

        Args:
            prefix: ``"100.96.0.0/16"``, ``"2001:db8::/32"`` or a network object; host bits
                are ignored.
            continent: continent code, one of ``CONTINENTS``.
            country: optional ISO 3166-1 alpha-2 code (upper case).

        Raises:
            ConfigError: unknown continent code or malformed country code.
            ValueError: ``prefix`` is not a valid IPv4/IPv6 network.
        """
        if continent not in CONTINENTS:
            raise ConfigError(
                [f"prefix {prefix}: unknown continent code {continent!r}; "
                 f"use one of {sorted(CONTINENTS)}"]
            )
        if country is not None and not _COUNTRY.match(country):
            raise ConfigError(
                [f"prefix {prefix}: country {country!r} is not an ISO 3166-1 alpha-2 code"]
            )
        net = prefix if not isinstance(prefix, str) else ipaddress.ip_network(prefix, strict=False)
        version, length = net.version, net.prefixlen
        by_len = self._tables[version].setdefault(length, {})
        key = int(net.network_address) >> (_BITS[version] - length)
        by_len[key] = (net, Location(continent, country))
        if length not in self._lengths[version]:
            self._lengths[version] = sorted([*self._lengths[version], length], reverse=True)

    def match(self, target: str | IPAddress | IPNetwork) -> tuple[IPNetwork, Location] | None:
        """The most specific entry containing ``target``.

        For a network (an ECS subnet), only entries at least as short as it count: a longer
        entry covers part of the network, not all of it. IPv4-mapped IPv6 addresses
        (``::ffff:a.b.c.d``) are looked up as IPv4.

        Args:
            target: an address or network, as text (``"100.96.1.2"``, ``"100.96.1.0/24"``)
                or an ``ipaddress`` object.

        Returns:
            The matching prefix and its location, or None when nothing covers ``target``.

        Raises:
            ValueError: ``target`` is not a valid address or network.
        """
        if isinstance(target, str):
            target = (
                ipaddress.ip_network(target, strict=False)
                if "/" in target
                else ipaddress.ip_address(target)
            )
        if isinstance(target, ipaddress.IPv4Network | ipaddress.IPv6Network):
            addr: IPAddress = target.network_address
            limit = target.prefixlen
        else:
            addr = target
            limit = _BITS[target.version]
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
            limit = max(0, limit - 96)
        version = addr.version
        bits = _BITS[version]
        value = int(addr)
        tables = self._tables[version]
        for length in self._lengths[version]:
            if length > limit:
                continue
            hit = tables[length].get(value >> (bits - length))
            if hit is not None:
                return hit
        return None

    def lookup(self, target: str | IPAddress | IPNetwork) -> Location | None:
        """The location of ``target`` by longest-prefix match; see ``match``.

        Returns:
            The location, or None when no entry covers ``target``.

        Raises:
            ValueError: ``target`` is not a valid address or network.
        """
        hit = self.match(target)
        return None if hit is None else hit[1]

    def entries(self) -> Iterator[tuple[IPNetwork, Location]]:
        """Every entry, IPv4 first, longest prefixes first."""
        for version in (4, 6):
            for length in self._lengths[version]:
                yield from self._tables[version][length].values()

    def __len__(self) -> int:
        return sum(len(t) for v in self._tables.values() for t in v.values())
