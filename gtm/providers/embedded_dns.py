"""An authoritative DNS server that answers straight from a ``DesiredState``.

The embedded provider needs no DNS vendor: the controller calls ``update(state)`` and the next
query sees the new routing. Per query the server

1. finds the zone (longest match among the configured zones; REFUSED outside all of them),
   and answers SERVFAIL for anything but the zone's own apex SOA/NS and name-server addresses
   until the first state is applied (see below),
2. answers the apex SOA and NS (with glue for in-zone name servers) and the name servers'
   addresses,
3. for a service name, locates the client (EDNS Client Subnet when present, else the source
   address): first in the ``PrefixTable`` of hand-listed client networks (the inventory's
   ``client_networks``, which override the GeoIP table), then in the ``GeoIpTable`` if one is
   given; then picks the segment: a segment listing the client's country beats one listing its
   continent, which beats the default segment; a client neither table locates gets the
   service's unlocated segment (policy ``unlocated_segment``; the default segment unless set),
4. draws one region from the segment's pool, with probability weight / sum over the members
   with weight > 0 that have records of the query type (or a CNAME), like a Route 53 weighted
   record set, and answers that region's endpoints with the service's TTL.

A dark pool (no member with weight > 0) answers NODATA with the SOA; it never falls back to
another segment, because a segment's pool carries its residency pin. Names that do not exist
get NXDOMAIN, existing names without the asked type NODATA; both carry the SOA with TTL =
``Zone.negative_ttl`` (RFC 2308). The answer data is rebuilt off to the side on ``update`` and
swapped in with one assignment, so a query sees either the old state or the new one, never a
mix. ``reconfigure`` swaps the zones and the prefix table the same way (policy reload) and
rebuilds the answers from the last applied state.

Before the first ``update`` the server knows no routing, so it must not claim that service names
do not exist (resolvers would cache that NXDOMAIN for the negative TTL): every in-zone query is
answered SERVFAIL, which resolvers do not cache for long and retry elsewhere, except the
positive answers that come from the zone configuration alone: the apex SOA and NS and the
in-zone name servers' own A/AAAA records (so the delegation can be checked). A negative answer
(NXDOMAIN or NODATA) is never given before a state is applied.

Each located query is counted by how it was located (``location_counts``: ``ecs``, ``source``
or ``unlocated``), exported on ``/metrics`` with the answer and rcode counters through
``metrics_collector()``. An ECS subnet is located by its first address in the GeoIP table (a
table entry longer than the subnet still decides: GeoIP data is per allocation, rarely split
below a /24) and by a covering prefix in the hand-listed table.

Requests: any opcode other than QUERY gets NOTIMP (also when the rest of the message, e.g. an
UPDATE's zone section or TSIG, cannot be parsed); an EDNS Client Subnet option with a non-zero
SCOPE PREFIX-LENGTH gets FORMERR (RFC 7871 §7.1.2: it must be 0 in queries).

Not supported (by design, for now): zone transfers (REFUSED), DNSSEC, wildcards, delegations
below a zone, chasing in-zone CNAME targets, and TSIG-signed queries (FORMERR).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import ipaddress
import random
import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from gtm.errors import PermanentProviderError
from gtm.log import get_logger
from gtm.models.plan import DesiredState, PoolPlan, SegmentRoute, ServicePlan
from gtm.models.policy import Zone
from gtm.providers.geo import Location, PrefixTable
from gtm.providers.geoip import REFRESH_INTERVAL_S, GeoIpTable
from gtm.providers.records import dns_services

if TYPE_CHECKING:
    from gtm.providers.dns_metrics import EmbeddedDnsCollector

__all__ = [
    "APEX_TTL",
    "EDNS_PAYLOAD",
    "TCP_IDLE_TIMEOUT",
    "EmbeddedDnsServer",
    "unlocated_segments",
]

log = get_logger("provider.embedded_dns")

APEX_TTL = 3600
"""TTL of the apex SOA and NS records and of name-server addresses, seconds."""
SOA_REFRESH, SOA_RETRY, SOA_EXPIRE = 3600, 600, 1_209_600
"""SOA timers, seconds (informational: the server does not offer zone transfers)."""
EDNS_PAYLOAD = 1232
"""The UDP payload size advertised and honoured, bytes (DNS flag day 2020)."""
TCP_IDLE_TIMEOUT = 10.0
"""A TCP connection idle this long (seconds) between or inside messages is closed."""
TCP_MAX_CONNECTIONS = 512
"""Concurrent TCP connections served; further ones are closed at once."""

_A, _AAAA, _CNAME, _NS, _SOA, _ANY = (
    dns.rdatatype.A,
    dns.rdatatype.AAAA,
    dns.rdatatype.CNAME,
    dns.rdatatype.NS,
    dns.rdatatype.SOA,
    dns.rdatatype.ANY,
)
_ZONE_TRANSFERS = frozenset({dns.rdatatype.AXFR, dns.rdatatype.IXFR})
_NODATA = "none"
"""Region label counted for an answer with no region (NODATA: dark pool or no records)."""


@dataclass(frozen=True, slots=True)
class _Choice:
    """A weighted draw among regions: region i with probability weight_i / total."""

    regions: tuple[str, ...]
    cumulative: tuple[int, ...]

    @classmethod
    def of(cls, weighted: Iterable[tuple[str, int]]) -> _Choice | None:
        regions: list[str] = []
        cumulative: list[int] = []
        total = 0
        for region, weight in weighted:
            if weight > 0:
                total += weight
                regions.append(region)
                cumulative.append(total)
        return cls(tuple(regions), tuple(cumulative)) if regions else None

    def pick(self, rng: random.Random) -> str:
        if len(self.regions) == 1:
            return self.regions[0]
        draw = rng.randrange(self.cumulative[-1])
        return self.regions[bisect.bisect_right(self.cumulative, draw)]


@dataclass(frozen=True, slots=True)
class _Route:
    """One segment of one service, ready to answer.

    Attributes:
        segment: segment name (for counters).
        by_type: per query type, the draw among active members that can answer it (their own
            records of that type, else a CNAME); ``ANY`` draws among members with any record.
        cname_only: the draw for other types: active members with a CNAME.
    """

    segment: str
    by_type: dict[int, _Choice]
    cname_only: _Choice | None


@dataclass(frozen=True, slots=True)
class _Service:
    """A service name's answers: segment routes and each region's record sets."""

    fqdn: str
    by_country: dict[str, _Route]
    by_continent: dict[str, _Route]
    default: _Route | None
    records: dict[str, dict[int, dns.rrset.RRset]]
    unlocated: _Route | None = None

    @property
    def geo(self) -> bool:
        """Whether the answer depends on where the client is."""
        return bool(self.by_country or self.by_continent)

    def route_for(self, where: Location | None) -> _Route | None:
        if where is None:
            return self.unlocated
        if where.country is not None:
            route = self.by_country.get(where.country)
            if route is not None:
                return route
        route = self.by_continent.get(where.continent)
        if route is not None:
            return route
        return self.default


@dataclass(frozen=True, slots=True)
class _ZoneData:
    """One zone's complete answer data for one applied state."""

    origin: dns.name.Name
    soa: dns.rrset.RRset
    negative_soa: dns.rrset.RRset
    ns: dns.rrset.RRset
    glue: tuple[dns.rrset.RRset, ...]
    hosts: dict[dns.name.Name, dict[int, dns.rrset.RRset]]
    services: dict[dns.name.Name, _Service]
    names: frozenset[dns.name.Name]


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """Everything a query reads, swapped as one object on ``update``."""

    serial: int
    generation: int | None
    digest: str | None
    zones: dict[dns.name.Name, _ZoneData]
    config: tuple[Zone, ...]
    table: PrefixTable
    state: DesiredState | None = None
    services: tuple[str, ...] = field(default=())
    unlocated: Mapping[str, str] = field(default_factory=dict)

    @property
    def ready(self) -> bool:
        """Whether a state has been applied (before that, only config answers are given)."""
        return self.state is not None


class EmbeddedDnsServer:
    """Authoritative DNS over UDP and TCP for ``zones``, answering from a ``DesiredState``.

    Satisfies ``gtm.providers.base.Publisher``: ``publish(state)`` is ``update(state)``.

    Args:
        zones: the zones served; queries for names outside all of them are REFUSED.
        prefix_table: hand-listed client network → location, to pick segments; wins over
            ``geoip``.
        geoip: the GeoIP table for clients ``prefix_table`` does not cover (None: those are
            unlocated). Checked for a new version of its file every ``geoip_refresh_s``
            seconds while the server is started.
        unlocated: service fqdn → the segment that answers clients neither table locates;
            services not listed use their default segment (``unlocated_segments(policy)``).
        geoip_refresh_s: seconds between checks of the GeoIP table file.
        rng: source of the weighted draws; pass a seeded ``random.Random`` for reproducible
            answers (tests, benchmarks). Defaults to a fresh, OS-seeded one.
        name: provider id (``Publisher.name``).
    """

    def __init__(
        self,
        zones: Sequence[Zone],
        prefix_table: PrefixTable,
        *,
        rng: random.Random | None = None,
        name: str = "embedded-dns",
        geoip: GeoIpTable | None = None,
        unlocated: Mapping[str, str] | None = None,
        geoip_refresh_s: float = REFRESH_INTERVAL_S,
    ) -> None:
        if not zones:
            raise ValueError("EmbeddedDnsServer needs at least one zone")
        self.name = name
        self.geoip = geoip
        self._geoip_refresh_s = geoip_refresh_s
        self._geoip_task: asyncio.Task[None] | None = None
        self._geoip_stop = asyncio.Event()
        self._rng = rng if rng is not None else random.Random()
        self._snapshot = _build_snapshot(
            tuple(zones), prefix_table, None, serial=0, unlocated=dict(unlocated or {})
        )
        self._updates = 0
        self._answers: Counter[tuple[str, str, str]] = Counter()
        self._rcodes: Counter[str] = Counter()
        self._located: Counter[str] = Counter()
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_tasks: set[asyncio.Task[Any]] = set()
        self._port: int | None = None

    # -- state ---------------------------------------------------------------------------

    def update(self, state: DesiredState) -> bool:
        """Serve ``state`` from the next query on.

        The SOA serial becomes ``state.generation`` when that is greater than the current
        serial, else the current serial + 1, so it grows with every applied update.

        Args:
            state: the desired routing; services in zones this server does not serve are
                ignored (logged).

        Returns:
            False, changing nothing, when ``state.routing_digest()`` equals the digest served;
            True when the new answers were swapped in (counted in ``updates_applied``).

        Raises:
            PermanentProviderError: an endpoint does not render as a DNS record (e.g. a bad
                address); the previous answers keep being served.
        """
        digest = state.routing_digest()
        current = self._snapshot
        if digest == current.digest:
            return False
        generation = state.generation & 0xFFFFFFFF
        serial = generation if generation > current.serial else (current.serial + 1) & 0xFFFFFFFF
        snapshot = _build_snapshot(
            current.config, current.table, state, serial=serial, unlocated=current.unlocated
        )
        self._snapshot = snapshot  # one assignment: queries see the old or the new, never a mix
        self._updates += 1
        log.info(
            "update: generation %s serial %s digest %s services %s",
            state.generation,
            serial,
            digest,
            ",".join(snapshot.services) or "-",
        )
        return True

    def reconfigure(
        self,
        zones: Sequence[Zone],
        prefix_table: PrefixTable,
        *,
        unlocated: Mapping[str, str] | None = None,
    ) -> None:
        """Serve ``zones`` and locate clients with ``prefix_table`` from the next query on.

        For a policy/inventory reload: the answers are rebuilt from the last applied state
        (if any) and swapped in together with the new zones and table in one assignment. The
        SOA serial grows by one when the zones or the table changed; an identical
        configuration changes nothing. ``prefix_table`` must not be changed afterwards.

        Args:
            zones: the zones served from now on.
            prefix_table: client network → location from now on.
            unlocated: service fqdn → segment for unlocated clients from now on; None keeps
                the mapping in force.

        Raises:
            ValueError: ``zones`` is empty, or a zone does not render (e.g. a bad glue
                address).
            PermanentProviderError: the last state has a service, newly in a served zone,
                whose endpoints do not render.
            In both cases the previous configuration keeps being served.
        """
        if not zones:
            raise ValueError("EmbeddedDnsServer needs at least one zone")
        config = tuple(zones)
        current = self._snapshot
        mapping = dict(current.unlocated if unlocated is None else unlocated)
        if (
            config == current.config
            and mapping == current.unlocated
            and _table_key(prefix_table) == _table_key(current.table)
        ):
            return
        serial = (current.serial + 1) & 0xFFFFFFFF
        snapshot = _build_snapshot(config, prefix_table, current.state, serial=serial, unlocated=mapping)
        self._snapshot = snapshot  # zones, table and answers change together
        log.info(
            "reconfigure: zones %s, %d client prefixes, serial %s",
            ",".join(z.name for z in config),
            len(prefix_table),
            serial,
        )

    async def publish(self, state: DesiredState) -> bool:
        """``Publisher`` entry point; same as ``update``."""
        return self.update(state)

    @property
    def updates_applied(self) -> int:
        """How many ``update`` calls changed the answers (a steady state adds none)."""
        return self._updates

    @property
    def serial(self) -> int:
        """The SOA serial currently served."""
        return self._snapshot.serial

    @property
    def routing_digest(self) -> str | None:
        """``routing_digest()`` of the state served, None before the first update."""
        return self._snapshot.digest

    @property
    def answer_counts(self) -> dict[tuple[str, str, str], int]:
        """Answers given per (service fqdn, segment, region); region ``none`` for NODATA."""
        return dict(self._answers)

    @property
    def rcode_counts(self) -> dict[str, int]:
        """Responses sent per rcode name (``NOERROR``, ``NXDOMAIN``, ``REFUSED``...)."""
        return dict(self._rcodes)

    @property
    def location_counts(self) -> dict[str, int]:
        """Queries for location-dependent services by how the client was located: ``ecs``
        (its EDNS Client Subnet), ``source`` (the source address: no ECS, or ECS /0) or
        ``unlocated`` (neither table knows it: it got the unlocated segment)."""
        return dict(self._located)

    def metrics_collector(self) -> EmbeddedDnsCollector:
        """A Prometheus collector of this server's counters (for ``/metrics``)."""
        from gtm.providers.dns_metrics import EmbeddedDnsCollector

        return EmbeddedDnsCollector(self)

    # -- sockets -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port bound by ``start`` (UDP and TCP alike).

        Raises:
            RuntimeError: the server is not started.
        """
        if self._port is None:
            raise RuntimeError("EmbeddedDnsServer is not started")
        return self._port

    async def start(self, host: str, port: int) -> None:
        """Bind UDP and TCP on ``host``:``port`` and start answering.

        Args:
            host: address to bind, e.g. ``127.0.0.1``, ``0.0.0.0`` or ``::``.
            port: port to bind; 0 picks a port free for both UDP and TCP (see ``port``).

        Raises:
            RuntimeError: already started.
            OSError: the port could not be bound (after a few attempts when ``port`` is 0).
        """
        if self._udp is not None:
            raise RuntimeError("EmbeddedDnsServer is already started")
        loop = asyncio.get_running_loop()
        attempts = 20 if port == 0 else 1
        for attempt in range(attempts):
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), local_addr=(host, port)
            )
            bound = int(transport.get_extra_info("sockname")[1])
            try:
                self._tcp = await asyncio.start_server(self._serve_tcp, host, bound)
            except OSError:
                transport.close()
                if attempt == attempts - 1:
                    raise
                continue  # the free UDP port is taken for TCP: try another
            self._udp = transport
            self._port = bound
            break
        log.info("start: serving %s on %s port %s (udp+tcp)", self._zone_names(), host, self._port)
        if self.geoip is not None:
            self._geoip_stop.clear()
            self._geoip_task = asyncio.create_task(
                self.geoip.watch(self._geoip_stop, self._geoip_refresh_s), name=f"{self.name}-geoip"
            )
            self._geoip_task.add_done_callback(_log_crash)

    async def stop(self) -> None:
        """Stop answering, close every socket and end open TCP connections. Idempotent."""
        if self._geoip_task is not None:
            self._geoip_stop.set()
            await asyncio.gather(self._geoip_task, return_exceptions=True)
            self._geoip_task = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
        tasks = list(self._tcp_tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()
            self._tcp = None
        if self._port is not None:
            log.info("stop: port %s closed", self._port)
        self._port = None

    async def __aenter__(self) -> EmbeddedDnsServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        source = str(peer[0]) if peer else ""
        if len(self._tcp_tasks) >= TCP_MAX_CONNECTIONS:
            log.warning("tcp: %s connections open; refusing %s", len(self._tcp_tasks), source)
            writer.close()
            return
        self._tcp_tasks.add(task)
        try:
            while True:
                try:
                    header = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                    (length,) = struct.unpack("!H", header)
                    wire = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                out = self.handle(wire, source, max_size=65535)
                if out is None:
                    continue
                writer.write(struct.pack("!H", len(out)) + out)
                await asyncio.wait_for(writer.drain(), TCP_IDLE_TIMEOUT)
        except (TimeoutError, ConnectionError) as exc:
            log.debug("tcp: connection from %s ended: %r", source, exc)
        except Exception:
            log.exception("tcp: connection from %s failed", source)
        finally:
            self._tcp_tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # -- answering -----------------------------------------------------------------------

    def handle(self, wire: bytes, source: str, *, max_size: int | None = None) -> bytes | None:
        """Answer one DNS message in wire format (what the UDP and TCP listeners call).

        Never raises: a message that cannot be parsed gets FORMERR (NOTIMP when its opcode is
        not QUERY) when its header is readable, else nothing; an internal error gets SERVFAIL.
        Responses (QR set) are never answered.

        Args:
            wire: the query message.
            source: the client's (or its resolver's) address, used when there is no ECS.
            max_size: the most bytes to send, 65535 for TCP; None for UDP, which honours the
                query's EDNS payload size (at most ``EDNS_PAYLOAD``, at least 512) and sets TC
                when the answer does not fit.

        Returns:
            The response in wire format, or None to send nothing.
        """
        try:
            query = dns.message.from_wire(wire)
        except Exception as exc:
            log.debug("handle: malformed message from %s: %r", source, exc)
            return self._header_error(wire)
        if query.flags & dns.flags.QR:
            return None
        try:
            response = self._respond(query, source)
        except Exception:
            log.exception("handle: failed to answer %s from %s", query.question, source)
            response = dns.message.make_response(query, our_payload=EDNS_PAYLOAD)
            response.set_rcode(dns.rcode.SERVFAIL)
        self._rcodes[dns.rcode.to_text(response.rcode())] += 1
        if max_size is None:
            max_size = min(max(query.payload, 512), EDNS_PAYLOAD) if query.edns >= 0 else 512
        return response.to_wire(max_size=max_size, prefer_truncation=True)

    def _header_error(self, wire: bytes) -> bytes | None:
        """A header-only reply to an unparsable message: NOTIMP for opcodes other than QUERY."""
        if len(wire) < 12:
            return None
        qid, flags = struct.unpack("!HH", wire[:4])
        if flags & dns.flags.QR:
            return None
        opcode = dns.opcode.from_flags(flags)
        rcode = dns.rcode.FORMERR if opcode == dns.opcode.QUERY else dns.rcode.NOTIMP
        flags = dns.flags.QR | (flags & (0x7800 | dns.flags.RD)) | rcode
        self._rcodes[dns.rcode.to_text(rcode)] += 1
        return struct.pack("!HHHHHH", qid, flags, 0, 0, 0, 0)

    def _respond(self, query: dns.message.Message, source: str) -> dns.message.Message:
        response = dns.message.make_response(query, our_payload=EDNS_PAYLOAD)
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return response
        if query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)
            return response
        ecs = next((o for o in query.options if isinstance(o, dns.edns.ECSOption)), None)
        if ecs is not None and ecs.scopelen != 0:  # RFC 7871 §7.1.2: must be 0 in queries
            response.set_rcode(dns.rcode.FORMERR)
            return response
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        if question.rdclass != dns.rdataclass.IN or qtype in _ZONE_TRANSFERS:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        if dns.rdatatype.is_metatype(qtype) and qtype != _ANY:
            response.set_rcode(dns.rcode.FORMERR)
            return response

        snapshot = self._snapshot
        zone = _find_zone(snapshot.zones, qname)
        if zone is None:
            response.set_rcode(dns.rcode.REFUSED)
            return response
        if not snapshot.ready and not _config_answer(zone, qname, qtype):
            # No routing yet: a negative answer would be cached; SERVFAIL makes resolvers retry.
            response.set_rcode(dns.rcode.SERVFAIL)
            return response
        response.flags |= dns.flags.AA

        geo = False
        service = zone.services.get(qname)
        if qname == zone.origin and qtype in (_SOA, _NS, _ANY):
            if qtype in (_SOA, _ANY):
                response.answer.append(zone.soa)
            if qtype in (_NS, _ANY):
                response.answer.append(zone.ns)
                response.additional.extend(zone.glue)
        elif service is not None:
            geo = service.geo
            response.answer.extend(self._answer_service(service, qtype, ecs, source, snapshot.table))
        elif qname in zone.hosts:
            host = zone.hosts[qname]
            response.answer.extend(host.values() if qtype == _ANY else _one(host.get(qtype)))
        elif qname not in zone.names:
            response.set_rcode(dns.rcode.NXDOMAIN)
        if not response.answer:
            response.authority.append(zone.negative_soa)

        if ecs is not None:
            scope = ecs.srclen if geo else 0
            response.use_edns(
                0,
                0,
                EDNS_PAYLOAD,
                query.payload,
                options=[dns.edns.ECSOption(ecs.address, ecs.srclen, scope)],
            )
        return response

    def _answer_service(
        self,
        service: _Service,
        qtype: int,
        ecs: dns.edns.ECSOption | None,
        source: str,
        table: PrefixTable,
    ) -> list[dns.rrset.RRset]:
        if service.geo:
            where, how = _locate(table, self.geoip, ecs, source)
            self._located[how] += 1
            route = service.route_for(where)
        else:
            route = service.default
        if route is None:  # no segment takes this client and there is no default
            self._answers[(service.fqdn, "-", _NODATA)] += 1
            return []
        choice = route.by_type.get(qtype, route.cname_only)
        if choice is None:  # dark pool, or no active member has this type
            self._answers[(service.fqdn, route.segment, _NODATA)] += 1
            return []
        region = choice.pick(self._rng)
        self._answers[(service.fqdn, route.segment, region)] += 1
        records = service.records[region]
        if qtype == _ANY:
            return list(records.values())
        return _one(records.get(qtype) or records.get(_CNAME))

    def _zone_names(self) -> str:
        return ",".join(z.name for z in self._snapshot.config)


def _locate(
    table: PrefixTable,
    geoip: GeoIpTable | None,
    ecs: dns.edns.ECSOption | None,
    source: str,
) -> tuple[Location | None, str]:
    """Where the client is, and how it was located: ``ecs``, ``source`` or ``unlocated``."""
    try:
        if ecs is not None and ecs.srclen > 0:
            how = "ecs"
            net = ipaddress.ip_network(f"{ecs.address}/{ecs.srclen}", strict=False)
            where = table.lookup(net)
            if where is None and geoip is not None:
                where = geoip.lookup(net.network_address)
        else:  # No ECS, or ECS /0 (the client opted out): locate the resolver itself.
            how = "source"
            addr = ipaddress.ip_address(source.split("%", 1)[0])
            where = table.lookup(addr)
            if where is None and geoip is not None:
                where = geoip.lookup(addr)
    except ValueError:
        return None, "unlocated"
    return (where, how) if where is not None else (None, "unlocated")


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("geoip: the table watcher stopped: %r", task.exception(), exc_info=task.exception())


def unlocated_segments(services: Iterable[Any]) -> dict[str, str]:
    """Service fqdn → ``unlocated_segment`` for the policy services that set one.

    Args:
        services: ``Policy.services``.
    """
    return {s.fqdn: s.unlocated_segment for s in services if s.unlocated_segment is not None}


def _config_answer(zone: _ZoneData, qname: dns.name.Name, qtype: int) -> bool:
    """Whether the zone configuration alone gives a positive answer (apex SOA/NS, NS address)."""
    if qname == zone.origin:
        return qtype in (_SOA, _NS)
    return qtype in zone.hosts.get(qname, {})


def _table_key(table: PrefixTable) -> frozenset[tuple[Any, Location]]:
    return frozenset(table.entries())


class _UdpProtocol(asyncio.DatagramProtocol):
    """Feeds datagrams to ``EmbeddedDnsServer.handle`` and sends back what it returns."""

    def __init__(self, server: EmbeddedDnsServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Python 3.11's selector datagram transport does not subclass DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            out = self._server.handle(data, str(addr[0]))
            if out is not None and self._transport is not None:
                self._transport.sendto(out, addr)
        except Exception:
            log.exception("udp: failed to answer %s", addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("udp: socket error %r", exc)


# -- building answer data ----------------------------------------------------------------


def _one(rrset: dns.rrset.RRset | None) -> list[dns.rrset.RRset]:
    return [] if rrset is None else [rrset]


def _find_zone(
    zones: Mapping[dns.name.Name, _ZoneData], qname: dns.name.Name
) -> _ZoneData | None:
    name = qname
    while True:
        zone = zones.get(name)
        if zone is not None:
            return zone
        if name == dns.name.root or name == dns.name.empty:
            return None
        name = name.parent()


def _abs(name: str) -> dns.name.Name:
    return dns.name.from_text(name.rstrip(".").lower() + ".")


def _rname(hostmaster: str) -> dns.name.Name:
    """``hostmaster@example.com`` → ``hostmaster.example.com.`` (dots in the local part escaped)."""
    if "@" not in hostmaster:
        return _abs(hostmaster)
    local, domain = hostmaster.rsplit("@", 1)
    return dns.name.Name((local.encode(), *_abs(domain).labels))


def _rrset(name: dns.name.Name, ttl: int, rdtype: int, values: Iterable[str]) -> dns.rrset.RRset:
    return dns.rrset.from_text_list(
        name, ttl, dns.rdataclass.IN, dns.rdatatype.RdataType.make(rdtype), list(values)
    )


def _build_snapshot(
    zones: tuple[Zone, ...],
    table: PrefixTable,
    state: DesiredState | None,
    *,
    serial: int,
    unlocated: Mapping[str, str],
) -> _Snapshot:
    by_origin: dict[dns.name.Name, _ZoneData] = {}
    services_by_zone: dict[dns.name.Name, list[ServicePlan]] = {}
    for zone in zones:
        services_by_zone[_abs(zone.name)] = []
    served: list[str] = []
    if state is not None:
        for svc in dns_services(state).values():
            origin = _find_served_zone(services_by_zone, _abs(svc.fqdn))
            if origin is None:
                log.warning("update: service %s is in no zone served here; ignored", svc.fqdn)
                continue
            services_by_zone[origin].append(svc)
            served.append(svc.fqdn)
    for zone in zones:
        origin = _abs(zone.name)
        by_origin[origin] = _build_zone(zone, origin, services_by_zone[origin], state, serial, unlocated)
    return _Snapshot(
        serial=serial,
        generation=None if state is None else state.generation,
        digest=None if state is None else state.routing_digest(),
        zones=by_origin,
        config=zones,
        table=table,
        state=state,
        services=tuple(sorted(served)),
        unlocated=unlocated,
    )


def _find_served_zone(
    zones: Mapping[dns.name.Name, object], name: dns.name.Name
) -> dns.name.Name | None:
    while True:
        if name in zones:
            return name
        if name == dns.name.root:
            return None
        name = name.parent()


def _build_zone(
    zone: Zone,
    origin: dns.name.Name,
    services: Sequence[ServicePlan],
    state: DesiredState | None,
    serial: int,
    unlocated: Mapping[str, str],
) -> _ZoneData:
    mname = _abs(zone.nameservers[0])
    soa_text = (
        f"{mname} {_rname(zone.hostmaster)} {serial} {SOA_REFRESH} {SOA_RETRY} "
        f"{SOA_EXPIRE} {zone.negative_ttl}"
    )
    soa = _rrset(origin, APEX_TTL, _SOA, [soa_text])
    negative_soa = _rrset(origin, min(APEX_TTL, zone.negative_ttl), _SOA, [soa_text])
    ns = _rrset(origin, APEX_TTL, _NS, [str(_abs(n)) for n in zone.nameservers])

    hosts: dict[dns.name.Name, dict[int, dns.rrset.RRset]] = {}
    for host, address in zone.nameserver_addresses.items():
        hname = _abs(host)
        if not hname.is_subdomain(origin):
            continue  # out-of-zone name server: not ours to answer, no glue needed
        rdtype = _AAAA if ipaddress.ip_address(address).version == 6 else _A
        hosts.setdefault(hname, {})[rdtype] = _rrset(hname, APEX_TTL, rdtype, [address])
    glue = tuple(
        rrset
        for n in zone.nameservers
        for rrset in hosts.get(_abs(n), {}).values()
    )

    built: dict[dns.name.Name, _Service] = {}
    for svc in services:
        assert state is not None
        built[_abs(svc.fqdn)] = _build_service(svc, state, unlocated.get(svc.fqdn))

    names: set[dns.name.Name] = {origin}
    for name in (*hosts, *built):
        while name != origin and name.is_subdomain(origin):  # the name and its empty parents
            names.add(name)
            name = name.parent()
    return _ZoneData(
        origin=origin,
        soa=soa,
        negative_soa=negative_soa,
        ns=ns,
        glue=glue,
        hosts=hosts,
        services=built,
        names=frozenset(names),
    )


def _build_service(svc: ServicePlan, state: DesiredState, unlocated_segment: str | None) -> _Service:
    owner = _abs(svc.fqdn)
    records: dict[str, dict[int, dns.rrset.RRset]] = {}

    def region_records(region: str) -> dict[int, dns.rrset.RRset]:
        if region not in records:
            values: dict[int, list[str]] = {}
            for rdtype_text, value in state.endpoints.get(region, ()):
                try:
                    rdtype = dns.rdatatype.from_text(rdtype_text)
                except dns.exception.DNSException as exc:
                    raise PermanentProviderError(
                        f"region {region}: endpoint type {rdtype_text!r} is not a DNS type"
                    ) from exc
                values.setdefault(rdtype, []).append(value)
            if not values:
                log.warning("update: region %s of %s has no endpoints", region, svc.fqdn)
            cnames = values.get(_CNAME, [])
            if len(cnames) > 1:
                log.warning(
                    "update: region %s has %d CNAME endpoints; answering only %s",
                    region,
                    len(cnames),
                    cnames[0],
                )
                values[_CNAME] = cnames[:1]
            try:
                records[region] = {
                    rdtype: _rrset(owner, svc.ttl, rdtype, vals) for rdtype, vals in values.items()
                }
            except dns.exception.DNSException as exc:
                raise PermanentProviderError(
                    f"region {region}: endpoints {values} do not render for {svc.fqdn}: {exc}"
                ) from exc
        return records[region]

    def route(seg: SegmentRoute) -> _Route:
        pool: PoolPlan | None = state.pools.get(seg.pool_id)
        if pool is None:
            log.warning(
                "update: %s segment %s names unknown pool %s; answering NODATA",
                svc.fqdn,
                seg.segment,
                seg.pool_id,
            )
            return _Route(seg.segment, {}, None)
        active = [(m.region, m.weight) for m in pool.active]
        has = {region: region_records(region) for region, _ in active}
        types = {t for recs in has.values() for t in recs}
        by_type: dict[int, _Choice] = {}
        for rdtype in types:
            choice = _Choice.of((r, w) for r, w in active if rdtype in has[r] or _CNAME in has[r])
            if choice is not None:
                by_type[rdtype] = choice
        anything = _Choice.of((r, w) for r, w in active if has[r])
        if anything is not None:
            by_type[_ANY] = anything
        cname_only = _Choice.of((r, w) for r, w in active if _CNAME in has[r])
        return _Route(seg.segment, by_type, cname_only)

    by_country: dict[str, _Route] = {}
    by_continent: dict[str, _Route] = {}
    by_name: dict[str, _Route] = {}
    default: _Route | None = None
    for seg in svc.segments:  # most specific first: the first segment to claim a key keeps it
        r = route(seg)
        by_name.setdefault(seg.segment, r)
        for country in seg.countries:
            by_country.setdefault(country, r)
        for continent in seg.continents:
            by_continent.setdefault(continent, r)
        if seg.is_default and default is None:
            default = r
    if default is None:
        log.warning("update: %s has no default segment; unmatched clients get NODATA", svc.fqdn)
    unlocated = default
    if unlocated_segment is not None:
        if unlocated_segment in by_name:
            unlocated = by_name[unlocated_segment]
        else:
            log.warning("update: %s has no segment %r for unlocated clients; they get the default "
                        "segment", svc.fqdn, unlocated_segment)
    return _Service(
        fqdn=svc.fqdn,
        by_country=by_country,
        by_continent=by_continent,
        default=default,
        records=records,
        unlocated=unlocated,
    )
