"""Client location from a GeoIP table in the MaxMind DB format (``.mmdb``).

The embedded DNS locates a client that no inventory ``client_networks`` entry covers here. The
table is any MaxMind DB whose records carry ``country.iso_code`` and, ideally,
``continent.code``: MaxMind GeoLite2-Country/City, GeoIP2-Country, DB-IP Lite (country or
city), or the bundled default (see ``default_table_path``). A record without a continent gets
it from its country (``gtm.providers.countries``); a record with neither, or an address the
table does not cover, is unlocated (None).

Lookups are on the DNS hot path: the pure-Python reader costs tens of microseconds per lookup,
so results are kept in an LRU cache per loaded table (resolvers and ECS subnets repeat, so most
queries hit it); a reload starts a fresh cache with the new table.

Reloading is off the hot path: ``refresh()`` compares the file's inode, size and mtime with the
table in use and, when they changed, reads the whole new file into memory and swaps it in with
one assignment. A file that cannot be read or is not a MaxMind DB is logged as an error and the
table in use stays (it is retried when the file changes again). The table is read into memory,
so a file rewritten in place can never be seen half-written by a lookup; replace it atomically
anyway (write, then rename, as ``geoipupdate`` does) so that ``refresh`` never reads one.
``watch()`` runs ``refresh`` in a worker thread on a timer.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import maxminddb

from gtm.errors import ConfigError
from gtm.log import get_logger
from gtm.models.region import CONTINENTS
from gtm.providers.countries import CONTINENT_OF_COUNTRY
from gtm.providers.geo import IPAddress, Location

__all__ = [
    "CACHE_SIZE",
    "DEFAULT_TABLE_PACKAGE",
    "REFRESH_INTERVAL_S",
    "GeoIpTable",
    "default_table_path",
    "location_of",
]

log = get_logger("provider.geoip")

CACHE_SIZE = 65_536
"""Addresses whose location is cached per loaded table (about 10 MB when full)."""
REFRESH_INTERVAL_S = 10.0
"""Default seconds between checks of the table file for a new version (``watch``)."""
DEFAULT_TABLE_PACKAGE = "python-geoacumen"
"""The PyPI package whose IP-to-country table is the default (Apache-2.0, Geoacumen data)."""

_COUNTRY = re.compile(r"^[A-Z]{2}$")
_REGION_WIDE = {"EU": "EU"}
"""Registry codes that name a continent, not a country (RIR allocations for all of Europe)."""


def default_table_path() -> Path:
    """The bundled default table: ``Geoacumen-Country.mmdb`` from ``python-geoacumen``.

    Raises:
        ConfigError: the package is not installed (install it, or give a table's path).
    """
    try:
        path = Path(str(resources.files("geoacumen").joinpath("db/Geoacumen-Country.mmdb")))
    except ModuleNotFoundError as exc:
        raise ConfigError(
            [f"the default GeoIP table needs the {DEFAULT_TABLE_PACKAGE} package "
             f"(pip install {DEFAULT_TABLE_PACKAGE}), or point --geoip-db at a .mmdb file"]
        ) from exc
    return path


def location_of(record: object) -> Location | None:
    """Where a MaxMind DB record says its network is.

    Uses ``country.iso_code`` (else ``registered_country.iso_code``) and ``continent.code``;
    a missing continent comes from the country. The region-wide code ``EU`` (Europe, no
    country) locates on the continent only.

    Args:
        record: the record the table holds for an address (a dict, or None).

    Returns:
        The location, or None when the record names no known continent.
    """
    if not isinstance(record, Mapping):
        return None
    country = _code(record, "country", "iso_code") or _code(record, "registered_country", "iso_code")
    continent = _code(record, "continent", "code")
    if country in _REGION_WIDE:
        return Location(continent or _REGION_WIDE[country], None)
    if country is not None and not _COUNTRY.match(country):
        country = None
    if continent is None and country is not None:
        continent = CONTINENT_OF_COUNTRY.get(country)
    if continent not in CONTINENTS:
        return None
    return Location(continent, country)


def _code(record: Mapping[str, Any], key: str, field: str) -> str | None:
    part = record.get(key)
    value = part.get(field) if isinstance(part, Mapping) else None
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class _Loaded:
    """One version of the table file, read into memory, with its own lookup cache."""

    signature: tuple[int, int, int, int]
    database_type: str
    build_epoch: int
    lookup: Callable[[IPAddress], Location | None]


class GeoIpTable:
    """A MaxMind DB table, read into memory, reloaded by ``refresh`` when the file changes.

    ``lookup`` may be called from the event loop while ``refresh`` runs in a worker thread:
    a lookup sees the old table or the new one, never a mix.

    Args:
        path: the ``.mmdb`` file.
        cache_size: addresses whose location is cached per loaded table.

    Raises:
        ConfigError: the file cannot be read or is not a MaxMind DB (the first load must work).
    """

    def __init__(self, path: str | os.PathLike[str], *, cache_size: int = CACHE_SIZE) -> None:
        self.path = Path(path)
        self._cache_size = cache_size
        self._tried: tuple[int, int, int, int] | None = None
        self.reloads = 0
        """New versions of the file swapped in since the first load."""
        self.reload_errors = 0
        """New versions that could not be loaded (the previous table stayed)."""
        try:
            self._loaded = self._load()
        except Exception as exc:  # OSError, InvalidDatabaseError, or garbage the reader chokes on
            raise ConfigError([f"GeoIP table {self.path}: {_why(exc)}"]) from exc
        self._tried = self._loaded.signature
        log.info(
            "load: %s (%s, built %s)", self.path, self._loaded.database_type, self._loaded.build_epoch
        )

    @classmethod
    def default(cls, *, cache_size: int = CACHE_SIZE) -> GeoIpTable:
        """The bundled default table (``default_table_path``).

        Raises:
            ConfigError: the default table's package is missing or its file does not load.
        """
        return cls(default_table_path(), cache_size=cache_size)

    @property
    def database_type(self) -> str:
        """The table's ``database_type`` metadata (``GeoLite2-Country``, ``DBIP-Country-Lite``...)."""
        return self._loaded.database_type

    @property
    def build_epoch(self) -> int:
        """When the table in use was built, unix seconds (from its metadata)."""
        return self._loaded.build_epoch

    def lookup(self, address: IPAddress) -> Location | None:
        """The location of ``address`` (an IPv4-mapped IPv6 address is looked up as IPv4).

        Returns:
            The location, or None when the table does not cover the address or its record
            names no continent.
        """
        return self._loaded.lookup(address)

    def refresh(self) -> bool:
        """Load the file again if it changed (inode, size or mtime) since the last attempt.

        Blocking (reads the whole file): call it from a worker thread, as ``watch`` does.
        Never raises: a missing, unreadable or broken file is logged as an error, counted in
        ``reload_errors``, and the table in use stays.

        Returns:
            True when a new version was swapped in.
        """
        try:
            signature = _signature(self.path)
        except OSError as exc:
            if self._tried is not None:
                log.error("refresh: %s: %s; keeping the table loaded before", self.path, _why(exc))
                self.reload_errors += 1
                self._tried = None  # log once, retry when the file is back
            return False
        if signature == self._tried:
            return False
        self._tried = signature
        try:
            loaded = self._load()
        except Exception as exc:  # whatever a broken file makes the reader raise
            self.reload_errors += 1
            log.error("refresh: %s is not a usable GeoIP table (%s); keeping %s built %s",
                      self.path, _why(exc), self._loaded.database_type, self._loaded.build_epoch)
            return False
        self._loaded = loaded  # one assignment: lookups see the old table or the new one
        self.reloads += 1
        log.info("refresh: loaded %s (%s, built %s)", self.path, loaded.database_type, loaded.build_epoch)
        return True

    async def watch(self, stop: asyncio.Event, interval_s: float = REFRESH_INTERVAL_S) -> None:
        """Call ``refresh`` in a worker thread every ``interval_s`` seconds until ``stop`` is set."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), interval_s)
            except TimeoutError:
                await asyncio.to_thread(self.refresh)

    def _load(self) -> _Loaded:
        signature = _signature(self.path)
        reader = maxminddb.open_database(str(self.path), maxminddb.MODE_MEMORY)
        meta = reader.metadata()
        reader.get("1.1.1.1" if meta.ip_version == 4 else "::1.1.1.1")  # the search tree is readable

        @functools.lru_cache(maxsize=self._cache_size)
        def lookup(address: IPAddress) -> Location | None:
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            if address.version == 6 and meta.ip_version == 4:
                return None
            try:
                return location_of(reader.get(address))
            except (maxminddb.InvalidDatabaseError, ValueError):  # a corrupt record: unlocated
                return None

        return _Loaded(signature, str(meta.database_type), int(meta.build_epoch), lookup)


def _signature(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return f"{type(exc).__name__}: {exc}"
