"""Amazon Route 53: weighted pools joined by geolocation aliases, applied in atomic batches.

Rendering (``render``, pure), for each service ``<fqdn>`` of the zone:

- **Pool name** ``<segment>.pool.<fqdn>`` per segment (segment names are unique within a
  service and match ``[a-z0-9][a-z0-9-]*``, so they are valid labels). It holds one **weighted**
  record set per region with weight > 0 and per record type: ``SetIdentifier`` = region,
  ``Weight`` = the plan's weight, values = the region's endpoints of that type. A region at
  weight 0 (drained, failed) is *left out*, never written with weight 0: Route 53 answers
  zero-weight records when the others are unhealthy, and every record when all weights are 0.
- **Service name** ``<fqdn>``: one **geolocation alias** record set per location and type
  (``continent:EU`` / ``country:DE`` → ``SetIdentifier`` ``continent-EU`` / ``country-DE``;
  the catch-all segment → ``*``, ``SetIdentifier`` ``default``) pointing at the segment's pool
  name, with ``EvaluateTargetHealth`` false, so Route 53 never walks from a pinned segment to a
  larger area or to ``*`` on its own. Segments are taken most specific first; the first
  segment to claim a location keeps it (as the embedded server does). No catch-all segment
  means no ``*`` record: unmatched clients get NODATA.
- **Dark pools**. A pool with no region of weight > 0 for a record type (the whole pool dark,
  or say an EU pool with no AAAA while the default pool has AAAA) keeps its geolocation alias
  and gets a **dark sentinel** at the pool name instead of weighted records: one
  *geolocation* record set (``SetIdentifier`` ``gtm-dark``) for a location that no client
  reaching this pool through the service name can be in, and **no** ``*`` default. Route 53
  answers "no answer" (NOERROR/NODATA) to every client whose location matches no record, so
  every client of a dark segment gets NODATA and never the default pool. The location is
  ``continent:AN`` for a continent or country segment (unless it covers Antarctica), and for
  a dark catch-all it is a location another segment of the service claims (those clients never
  reach ``*``). Only a service whose *sole* segment is the catch-all falls back to
  ``continent:AN``, where a client located in Antarctica would get the sentinel value, a
  documentation or discard address (``192.0.2.1``, ``100::1``, ``dark.gtm.invalid.``) and
  never a region. Why not "an alias to a pool name that holds no records": Route 53 refuses to
  create an alias whose same-zone target (name and type) does not exist
  (``InvalidChangeBatch: ... but that target was not found``), so a pool that is dark on first
  apply, or a type a pool never had, could not be rendered that way.
- Alias record sets carry ``ttl`` 0 in ``RecordSet`` (Route 53 answers with the target's TTL);
  the service TTL is on the pool's weighted and sentinel record sets.
- A hostname endpoint renders CNAME record sets (and CNAME aliases at the service name). A
  service cannot mix hostname and address endpoints (a CNAME cannot share a name with A/AAAA)
  nor be a CNAME at the zone apex: both go through ``supports_warn_or_except``.
- Names are normalised once (lower case, no trailing dot, IDN → punycode), values too (AAAA
  compressed, CNAME lower case with a trailing dot), so an existing record set is never
  re-created because of spelling. Route 53's octal escapes (``\\052``) are decoded on read.

Ownership: ``_gtm-owner.<name>`` TXT markers (``Provider.with_markers``). Record sets at names
gtm does not own are foreign: never changed; a service with any of its names held by someone
else is held unchanged as a whole (``plan``), so no alias ever points at a foreign target.

Applying (``_apply``): changes are grouped into *logical changes* (names connected through
alias targets and ownership markers: a service, its pools and their markers), and each group
goes into one ``ChangeResourceRecordSets`` call, atomic, whenever it fits Route 53's limits
(1,000 ``ResourceRecord`` elements, an UPSERT counting twice, an alias counted as one; 32,000
characters of ``Value``, UPSERT twice). Inside a call: deletes first (aliases before their
targets), then creates/UPSERTs of targets, then of aliases. Calls are paced client-side
(``max_requests_per_s``; Route 53 allows 5 per second per account); ``Throttling`` and
``PriorRequestNotComplete`` are retried by botocore's retry mode; anything else maps to
``TemporaryProviderError`` or ``PermanentProviderError``.

Failure isolation: a batch Route 53 refuses for its content (``InvalidChangeBatch``, or
``InvalidInput``, which is what it answers for some malformed changes) is bisected
(``gtm.providers.bisect``) over its logical changes: halves are re-sent until every logical
change is applied or refused on its own, at most ``2 * ceil(log2(n))`` extra calls per refused
logical change (``max_isolated`` of them per batch; past that budget the undecided ones are not
sent), each paced and retried like any call. The unit is the logical change, not the single
record set, because that is what the provider writes atomically: a pool's weighted record sets
(every ``SetIdentifier`` of a name and type), a DELETE/CREATE pair of one key, an alias and its
target, and the ownership marker of a name stay together (a marker applied without its record
sets, or the reverse, would leave them looking foreign). The batches behind a refused one are
still sent. Then ``PartialApplyError`` (``temporary=False``) names every record set of the
refused logical changes (``name type [set identifier]``) with Route 53's message, and lists
what was applied. Any other error stops the apply: raised as it is when nothing was applied or
refused before it, else reported in the ``PartialApplyError`` as not sent (a partial apply
skips the INSYNC wait below: the worker retries it anyway). With ``wait_insync``
the last change is awaited with the ``resource_record_sets_changed`` waiter, bounded by
``insync_timeout_s`` (Route 53 applies a zone's changes in submission order).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    WaiterError,
)

from gtm.errors import PartialApplyError, PermanentProviderError, ProviderError, TemporaryProviderError
from gtm.models.plan import DesiredState, PoolPlan, SegmentRoute, ServicePlan
from gtm.models.published import ROUTE53_POOL_LABEL, route53_pool_name
from gtm.providers.base import Provider
from gtm.providers.bisect import Isolation, isolate, isolation_budget
from gtm.providers.records import (
    OWNER_PREFIX,
    Change,
    Observed,
    Plan,
    RecordSet,
    blocked_by_foreign,
    diff,
    dns_services,
    normalize_name,
    split_ownership,
)

POOL_LABEL = ROUTE53_POOL_LABEL
"""Pool record sets live at ``<segment>.pool.<service fqdn>``."""

DARK_SET_ID = "gtm-dark"
"""``SetIdentifier`` of a dark pool's sentinel record set."""

DARK_VALUES: Mapping[str, str] = {
    "A": "192.0.2.1",  # RFC 5737 TEST-NET-1: never routed
    "AAAA": "100::1",  # RFC 6666 discard-only prefix
    "CNAME": "dark.gtm.invalid.",  # RFC 6761: .invalid never resolves
}
"""Sentinel values, only ever answered to clients at the sentinel's location (see module doc)."""

MAX_BATCH_RECORDS = 1000
"""``ResourceRecord`` elements per ``ChangeResourceRecordSets`` call (UPSERT counts twice)."""

MAX_BATCH_CHARS = 32000
"""Characters of ``Value`` elements per call (UPSERT counts twice)."""

_ADDRESS_TYPES = ("A", "AAAA")
_TEMPORARY_CODES = frozenset({
    "Throttling", "ThrottlingException", "PriorRequestNotComplete", "ServiceUnavailable",
    "InternalFailure", "InternalError", "RequestTimeout", "RequestTimeoutException",
})
_REFUSAL_CODES = frozenset({"InvalidChangeBatch", "InvalidInput"})
"""Error codes that refuse a batch's content (one or more of its changes): the batch is bisected."""
_PERMANENT_BOTOCORE = (NoCredentialsError, PartialCredentialsError, NoRegionError, ParamValidationError)
_OCTAL = re.compile(r"\\(\d{3})")

_Atom = list[tuple[tuple[int, int], dict[str, Any]]]
"""One logical change of a batch: its ``Changes`` items with their order keys (``_batch_order``)."""


class Route53Provider(Provider):
    """Route 53 through boto3 (every call in a worker thread).

    Args:
        name, owner_id, zones, max_change_fraction, strict: see ``Provider``.
        hosted_zone_ids: zone name → hosted zone id; zones not listed are looked up by name
            (exactly one public hosted zone must match). Only ``zones`` are ever touched.
        endpoint_url: API endpoint override (a moto server in tests).
        region_name: signing region (Route 53 is global: ``us-east-1``).
        max_requests_per_s: client-side pace of API calls (Route 53 allows 5/s per account).
        wait_insync: after applying, wait until Route 53 reports the change ``INSYNC``.
        insync_timeout_s: bound of that wait; past it, ``TemporaryProviderError``.
        insync_poll_s: delay between ``GetChange`` polls while waiting.
        retry_mode: botocore retry mode, ``standard`` or ``adaptive``.
        max_attempts: botocore's ``max_attempts``: retries after the first attempt (so up to
            ``max_attempts + 1`` HTTP requests per call), with backoff and jitter.
        max_isolated: refused logical changes a rejected batch is bisected for: at most
            ``2 * ceil(log2(n)) * max_isolated`` extra calls for a batch of ``n`` logical changes.

    Credentials come only from boto3's standard chain (environment, shared files, instance
    role); whether they were found is logged, never their values.
    """

    SUPPORTS: ClassVar[frozenset[str]] = frozenset({"A", "AAAA", "CNAME", "WEIGHTED", "GEO", "ALIAS"})
    KIND: ClassVar[str] = "route53"

    def __init__(
        self,
        name: str,
        *,
        owner_id: str,
        zones: Sequence[str],
        max_change_fraction: float = 0.5,
        strict: bool = True,
        hosted_zone_ids: Mapping[str, str] | None = None,
        endpoint_url: str | None = None,
        region_name: str = "us-east-1",
        max_requests_per_s: float = 5.0,
        wait_insync: bool = False,
        insync_timeout_s: float = 120.0,
        insync_poll_s: float = 5.0,
        retry_mode: str = "standard",
        max_attempts: int = 8,
        max_isolated: int = 3,
    ) -> None:
        super().__init__(
            name, owner_id=owner_id, zones=[normalize_name(z) for z in zones],
            max_change_fraction=max_change_fraction, strict=strict,
        )
        if max_requests_per_s <= 0:
            raise ValueError(f"max_requests_per_s must be > 0, got {max_requests_per_s}")
        if retry_mode not in ("standard", "adaptive"):
            raise ValueError(f"retry_mode must be 'standard' or 'adaptive', got {retry_mode!r}")
        if max_attempts < 0:
            raise ValueError(f"max_attempts must be >= 0, got {max_attempts}")
        if max_isolated < 1:
            raise ValueError(f"max_isolated must be >= 1, got {max_isolated}")
        self.hosted_zone_ids = {normalize_name(z): _bare_zone_id(i) for z, i in (hosted_zone_ids or {}).items()}
        self.endpoint_url = endpoint_url
        self.region_name = region_name
        self.max_requests_per_s = float(max_requests_per_s)
        self.wait_insync = wait_insync
        self.insync_timeout_s = float(insync_timeout_s)
        self.insync_poll_s = float(insync_poll_s)
        self.retry_mode = retry_mode
        self.max_attempts = max_attempts
        self.max_isolated = max_isolated
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._pace_lock = asyncio.Lock()
        self._next_slot = 0.0
        self._calls = 0
        self._calls_lock = threading.Lock()
        self._zone_id_cache: dict[str, str] = {}
        self._raw: dict[str, dict[tuple[str, str, str], dict[str, Any]]] = {}

    # -- client, pacing, error mapping ---------------------------------------------------

    @property
    def server_text(self) -> str:
        """``endpoint_url``, else Route 53's global endpoint."""
        return self.endpoint_url or "https://route53.amazonaws.com"

    @property
    def api_calls(self) -> int:
        """API calls made so far (each logical call once, retries not counted)."""
        return self._calls

    async def client(self) -> Any:
        """The boto3 Route 53 client, created on first use (in a worker thread)."""
        async with self._client_lock:
            if self._client is None:
                self._client = await asyncio.to_thread(self._make_client)
        return self._client

    def _make_client(self) -> Any:
        session = boto3.session.Session(region_name=self.region_name)
        creds = session.get_credentials()
        self.log.info(
            "client: endpoint %s, region %s, credentials %s, retries %s x%d",
            self.endpoint_url or "default", self.region_name,
            f"set (from {creds.method})" if creds is not None else "NOT set",
            self.retry_mode, self.max_attempts,
        )
        client = session.client(
            "route53",
            endpoint_url=self.endpoint_url,
            config=Config(
                retries={"mode": self.retry_mode, "max_attempts": self.max_attempts},
                connect_timeout=10,
                read_timeout=60,
                user_agent_extra="gtm",
            ),
        )
        service = client.meta.service_model.service_id.hyphenize()
        client.meta.events.register(f"after-call.{service}", self._count_call)
        return client

    def _count_call(self, **_: Any) -> None:
        with self._calls_lock:
            self._calls += 1

    async def _pace(self) -> None:
        """Wait for the next slot of the client-side rate limit."""
        async with self._pace_lock:
            now = time.monotonic()
            if self._next_slot > now:
                await asyncio.sleep(self._next_slot - now)
                now = time.monotonic()
            self._next_slot = max(now, self._next_slot) + 1.0 / self.max_requests_per_s

    async def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        client = await self.client()
        await self._pace()
        try:
            result: dict[str, Any] = await asyncio.to_thread(getattr(client, operation), **params)
        except (ClientError, BotoCoreError) as exc:
            api = client.meta.method_to_api_mapping.get(operation, operation)
            raise self.context(_map_error(exc), api) from exc
        return result

    # -- zones ------------------------------------------------------------------------------

    def _managed_zone(self, zone: str) -> str:
        z = normalize_name(zone)
        if z not in self.zones:
            raise PermanentProviderError(f"{self.name}: zone {z!r} is not one of this provider's zones {self.zones}")
        return z

    async def zone_id(self, zone: str) -> str:
        """The hosted zone id of ``zone`` (configured, else looked up by name once)."""
        z = self._managed_zone(zone)
        if z in self.hosted_zone_ids:
            return self.hosted_zone_ids[z]
        if z not in self._zone_id_cache:
            resp = await self._call("list_hosted_zones_by_name", DNSName=z + ".", MaxItems="100")
            found = [
                _bare_zone_id(hz["Id"]) for hz in resp.get("HostedZones", [])
                if _norm_name(hz["Name"]) == z and not hz.get("Config", {}).get("PrivateZone", False)
            ]
            if len(found) != 1:
                raise PermanentProviderError(
                    f"{self.name}: {len(found)} public hosted zones named {z!r}; set hosted_zone_ids"
                )
            self._zone_id_cache[z] = found[0]
        return self._zone_id_cache[z]

    def zones_of(self, state: DesiredState) -> list[str]:
        """Managed zones of ``state``, compared normalised (``Provider.zones_of`` compares as spelt)."""
        return sorted({_norm_name(s.zone) for s in state.services.values()} & set(self.zones))

    # -- render (pure) ---------------------------------------------------------------------

    def render(self, state: DesiredState, zone: str) -> list[RecordSet]:
        """Record sets for every service of ``state`` in ``zone`` (see the module doc).

        Raises:
            PermanentProviderError: names collide (a pool name equals another record's name),
                a name is too long, or (when strict) a capability gap.
        """
        z = normalize_name(zone)
        services = sorted(
            (s for s in dns_services(state).values() if _norm_name(s.zone) == z), key=lambda s: _norm_name(s.fqdn)
        )
        service_names = {_norm_name(s.fqdn) for s in services}
        out: list[RecordSet] = []
        for svc in services:
            out.extend(self._render_service(state, svc, z, service_names))
        seen: dict[tuple[str, str, str], RecordSet] = {}
        for rs in out:
            if rs.key in seen:
                raise PermanentProviderError(f"{self.name}: {rs.name} {rs.rdtype} {rs.set_identifier} rendered twice")
            seen[rs.key] = rs
        return out

    def _render_service(
        self, state: DesiredState, svc: ServicePlan, zone: str, service_names: set[str]
    ) -> list[RecordSet]:
        fqdn = _norm_name(svc.fqdn)
        claims: list[tuple[str, SegmentRoute]] = []
        claimed: set[str] = set()
        segments: set[str] = set()
        for route in svc.segments:  # most specific first: the first claim of a location wins
            if route.segment in segments:
                raise PermanentProviderError(f"{self.name}: {fqdn} lists segment {route.segment!r} twice")
            segments.add(route.segment)
            for loc in _locations(route):
                if loc not in claimed:
                    claimed.add(loc)
                    claims.append((loc, route))
        routes = [r for r in svc.segments if any(c is r for _, c in claims)]
        pools: dict[str, PoolPlan | None] = {}
        for route in routes:
            pools[route.segment] = state.pools.get(route.pool_id)
            if pools[route.segment] is None:
                self.log.warning("render: %s segment %s names unknown pool %s; rendered dark",
                                 fqdn, route.segment, route.pool_id)
        types = self._service_types(state, fqdn, zone, pools.values())
        if not types:
            if routes:
                self.log.warning("render: %s has no endpoints to render; left out", fqdn)
            return []
        records: list[RecordSet] = []
        for loc, route in claims:
            target = _pool_name(route.segment, fqdn)
            for t in types:
                records.append(RecordSet(
                    name=fqdn, rdtype=t, ttl=0, set_identifier=_geo_set_id(loc), geo=loc, alias_target=target,
                ))
        for route in routes:
            name = _pool_name(route.segment, fqdn)
            if name in service_names:
                raise PermanentProviderError(f"{self.name}: pool name {name} of {fqdn} is also a service name")
            if len(name) > 253:
                raise PermanentProviderError(f"{self.name}: pool name {name} is longer than 253 characters")
            pool = pools[route.segment]
            active = pool.active if pool is not None else ()
            for t in types:
                weighted = []
                for m in active:
                    values = sorted({_norm_value(t, v) for rt, v in state.endpoints.get(m.region, ()) if rt == t})
                    if t == "CNAME" and len(values) > 1:
                        self.log.warning("render: region %s has %d hostname endpoints; %s uses only %s",
                                         m.region, len(values), fqdn, values[0])
                        values = values[:1]
                    if values:
                        weighted.append(RecordSet(
                            name=name, rdtype=t, ttl=svc.ttl, values=tuple(values),
                            set_identifier=m.region, weight=m.weight,
                        ))
                if weighted:
                    records.extend(weighted)
                else:
                    records.append(RecordSet(
                        name=name, rdtype=t, ttl=svc.ttl, values=(DARK_VALUES[t],),
                        set_identifier=DARK_SET_ID, geo=_sentinel_location(route, claims),
                    ))
        return records

    def _service_types(
        self, state: DesiredState, fqdn: str, zone: str, pools: Iterable[PoolPlan | None]
    ) -> list[str]:
        """Record types of every member of the service's pools, whatever their weight, so a
        failover never changes the set of types (and no alias loses its target)."""
        types = {rt for p in pools if p is not None for m in p.members for rt, _ in state.endpoints.get(m.region, ())}
        for t in sorted(types - {"A", "AAAA", "CNAME"}):
            self.supports_warn_or_except(f"{fqdn}: endpoint type {t} is not supported; left out")
            types.discard(t)
        if "CNAME" in types and types & set(_ADDRESS_TYPES):
            self.supports_warn_or_except(
                f"{fqdn}: mixes hostname and address endpoints; Route 53 cannot hold a CNAME beside "
                "A/AAAA at one name; hostname endpoints left out"
            )
            types.discard("CNAME")
        if types == {"CNAME"} and fqdn == zone:
            self.supports_warn_or_except(f"{fqdn}: a CNAME cannot sit at the zone apex; service left out")
            return []
        return sorted(types)

    # -- observe -----------------------------------------------------------------------------

    async def observe(self, zone: str, managed_names: Iterable[str] | None = None) -> Observed:
        """List the zone (paginated) and split it by ownership.

        Args:
            zone: one of ``zones``.
            managed_names: names gtm wants; record sets at them that gtm does not own are
                foreign. Default: every name of the zone, so anything not ours blocks.

        The zone apex's SOA and NS record sets are Route 53's and never considered.
        """
        z = self._managed_zone(zone)
        zid = await self.zone_id(z)
        raw: dict[tuple[str, str, str], dict[str, Any]] = {}
        records: list[RecordSet] = []
        for item in await self._list(zid):
            rs = _from_api(item)
            if rs.name == z and rs.rdtype in ("SOA", "NS"):
                continue
            if rs.key in raw:  # Route 53 never repeats one; moto's pagination can
                continue
            raw[rs.key] = item
            records.append(rs)
        self._raw[z] = raw
        if managed_names is None:
            managed_names = {r.name for r in records if not r.name.startswith(OWNER_PREFIX + ".")}
        observed = split_ownership(z, records, self.owner_id, managed_names)
        self.log.debug("observe: %s: %d owned, %d foreign, %d names of other installations",
                       z, len(observed.owned), len(observed.foreign), len(observed.other_owners))
        return observed

    async def _list(self, zone_id: str) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"HostedZoneId": zone_id, "MaxItems": "300"}
        out: list[dict[str, Any]] = []
        seen: set[tuple[str, str, str]] = set()
        while True:
            resp = await self._call("list_resource_record_sets", **params)
            out.extend(resp.get("ResourceRecordSets", []))
            if not resp.get("IsTruncated"):
                return out
            cursor = (resp["NextRecordName"], resp.get("NextRecordType", ""), resp.get("NextRecordIdentifier", ""))
            if cursor in seen:
                raise PermanentProviderError(f"{self.name}: listing {zone_id} does not advance past {cursor}")
            seen.add(cursor)
            params["StartRecordName"], params["StartRecordType"] = cursor[0], cursor[1]
            params.pop("StartRecordIdentifier", None)
            if cursor[2]:
                params["StartRecordIdentifier"] = cursor[2]

    # -- plan --------------------------------------------------------------------------------

    def plan(self, desired: Sequence[RecordSet], observed: Observed) -> Plan:
        """``diff``, except that a service with any name held by someone else is held as is.

        A service's names are linked by aliases; planning only the names gtm owns could point
        a geolocation alias at a foreign pool name, or delete the alias and let a pinned
        segment fall through to ``*``. So the whole linked group keeps its owned record sets.
        """
        # A name is held when a foreign record set has a type gtm wants there (a foreign TXT
        # next to gtm's A records holds nothing), or another installation owns it.
        foreign_types = blocked_by_foreign(observed)
        blocked = {
            rs.name for rs in desired if rs.rdtype in foreign_types.get(rs.name, ())
        } | set(observed.other_owners)
        groups = _groups(rs for rs in desired)
        held_roots = {groups.find(_base(rs.name)) for rs in desired if _base(rs.name) in blocked}
        if not held_roots:
            return diff(self.name, observed.zone, desired, observed)
        keep = [rs for rs in desired if groups.find(_base(rs.name)) not in held_roots]
        held_names = {n for n in groups.names() if groups.find(n) in held_roots}
        keep.extend(rs for rs in observed.owned if _base(rs.name) in held_names)
        conflicts = {
            f"{rs.name} {rs.rdtype}: held by another owner; left alone"
            for rs in desired if _base(rs.name) in blocked
        }
        for root in held_roots:
            names = sorted(n for n in held_names if groups.find(n) == root)
            conflicts.add(f"{', '.join(names)}: linked to a name held by another owner; held unchanged")
        plan = diff(self.name, observed.zone, keep, observed)
        return dataclasses.replace(plan, conflicts=tuple(sorted(conflicts | set(plan.conflicts))))

    # -- apply -------------------------------------------------------------------------------

    async def _apply(self, plan: Plan) -> int:
        z = self._managed_zone(plan.zone)
        zid = await self.zone_id(z)
        batches = self._atom_batches(plan, zid)
        start = self._calls
        applied: list[str] = []
        failed: dict[str, str] = {}
        temporary = True
        last_change: list[str] = []

        async def send(atoms: Sequence[_Atom], label: str) -> None:
            resp = await self._call(
                "change_resource_record_sets",
                HostedZoneId=zid,
                ChangeBatch={"Comment": f"gtm {self.name} owner={self.owner_id} {label}", "Changes": _flat(atoms)},
            )
            last_change[:] = [resp["ChangeInfo"]["Id"]]
            self.log.debug("apply: %s %s: %d change(s), %s",
                           z, label, sum(len(a) for a in atoms), resp["ChangeInfo"]["Status"])

        try:
            for i, atoms in enumerate(batches):
                label = f"{i + 1}/{len(batches)}"
                try:
                    await send(atoms, label)
                except ProviderError as exc:
                    if not _is_refusal(exc):
                        if not applied and not failed:
                            exc.detail += (
                                f"; batch {label} for zone {z} rejected, {i} applied before it, "
                                f"{len(batches) - i - 1} not sent; re-plan to converge"
                            )
                            raise
                        rest = sum(len(a) for b in batches[i:] for a in b)
                        failed[f"batches {i + 1}-{len(batches)} of {z} ({rest} changes)"] = f"not sent: {exc.detail}"
                        temporary = temporary and isinstance(exc, TemporaryProviderError)
                        break
                    found = await self._isolate(atoms, exc, send, label)
                    applied.extend(_units(found.applied))
                    for atom, why in found.refused:
                        failed.update(dict.fromkeys(_units([atom]), why))
                        temporary = False
                    for atom in found.unsent:
                        why = f"not sent: {found.stopped.detail}" if found.stopped else "not sent: not isolated in time"
                        failed.update(dict.fromkeys(_units([atom]), why))
                    if found.stopped is not None:
                        temporary = temporary and isinstance(found.stopped, TemporaryProviderError)
                        rest = sum(len(a) for b in batches[i + 1:] for a in b)
                        if rest:
                            failed[f"batches {i + 2}-{len(batches)} of {z} ({rest} changes)"] = (
                                f"not sent: {found.stopped.detail}"
                            )
                        break
                else:
                    applied.extend(_units(atoms))
        finally:
            self._raw.pop(z, None)  # stale now; the next observe refills it
        if failed:
            raise PartialApplyError(list(dict.fromkeys(applied)), failed, temporary=temporary)
        if self.wait_insync and last_change:
            await self._wait_insync(last_change[0])
        return self._calls - start

    async def _isolate(
        self, atoms: Sequence[_Atom], exc: ProviderError,
        send: Callable[[Sequence[_Atom], str], Awaitable[None]], label: str,
    ) -> Isolation[_Atom]:
        """Bisect a refused batch (``gtm.providers.bisect``): apply every logical change Route 53
        accepts, name the ones it refuses."""
        budget = isolation_budget(len(atoms), self.max_isolated)
        self.log.warning("apply: batch %s refused (%s); isolating among %d logical change(s), at most %d call(s)",
                         label, exc.detail, len(atoms), budget)
        parts = iter(range(1, budget + 1))

        async def send_part(part: Sequence[_Atom]) -> None:
            await send(part, f"{label} part {next(parts)}")

        found = await isolate(atoms, exc.detail, send_part, _is_refusal, max_calls=budget)
        self.log.warning("apply: batch %s: %d logical change(s) applied, %d refused, %d not sent, in %d call(s)",
                         label, len(found.applied), len(found.refused), len(found.unsent), found.calls)
        return found

    def batches(self, plan: Plan, zone_id: str) -> list[list[dict[str, Any]]]:
        """The ``Changes`` lists ``_apply`` sends for ``plan`` (pure apart from the read cache).

        Each logical change (names linked by aliases and markers) goes whole into one batch
        when it fits the limits; one that cannot fit is split in order, with a warning.
        """
        return [_flat(atoms) for atoms in self._atom_batches(plan, zone_id)]

    def _atom_batches(self, plan: Plan, zone_id: str) -> list[list[_Atom]]:
        """``batches``, each batch as its logical changes (the part of a logical change that
        went into this batch, for one too big for a batch): the units ``_isolate`` splits."""
        raw = self._raw.get(plan.zone, {})
        groups = _groups(rs for c in plan.changes for rs in (c.old, c.new) if rs is not None)
        by_root: dict[str, list[tuple[int, Change]]] = {}
        for i, c in enumerate(plan.changes):  # plan order: deletes first; groups keep it
            by_root.setdefault(groups.find(_base(c.record.name)), []).append((i, c))
        out: list[list[_Atom]] = []
        cur: list[_Atom] = []
        cur_rr = cur_chars = 0
        for members in by_root.values():
            items = sorted((_batch_order(i, c), _change_to_api(c, zone_id, raw)) for i, c in members)
            costs = [_cost(item) for _, item in items]
            g_rr, g_chars = sum(c[0] for c in costs), sum(c[1] for c in costs)
            if g_rr <= MAX_BATCH_RECORDS and g_chars <= MAX_BATCH_CHARS:
                if cur_rr + g_rr > MAX_BATCH_RECORDS or cur_chars + g_chars > MAX_BATCH_CHARS:
                    out.append(cur)
                    cur, cur_rr, cur_chars = [], 0, 0
                cur.append(items)
                cur_rr += g_rr
                cur_chars += g_chars
                continue
            self.log.warning("apply: a logical change of %d record sets (%s) exceeds one batch; split, not atomic",
                             len(items), items[0][1]["ResourceRecordSet"]["Name"])
            piece: _Atom = []
            for item, (rr, chars) in zip(items, costs, strict=True):
                if rr > MAX_BATCH_RECORDS or chars > MAX_BATCH_CHARS:
                    raise PermanentProviderError(
                        f"{self.name}: {item[1]['ResourceRecordSet']['Name']} alone exceeds Route 53's batch limits"
                    )
                if cur_rr + rr > MAX_BATCH_RECORDS or cur_chars + chars > MAX_BATCH_CHARS:
                    if piece:
                        cur.append(piece)
                    out.append(cur)
                    cur, piece, cur_rr, cur_chars = [], [], 0, 0
                piece.append(item)
                cur_rr += rr
                cur_chars += chars
            if piece:
                cur.append(piece)
        if cur:
            out.append(cur)
        return [batch for batch in out if batch]

    async def _wait_insync(self, change_id: str) -> None:
        client = await self.client()
        delay = max(self.insync_poll_s, 1.0 / self.max_requests_per_s)
        attempts = max(1, math.ceil(self.insync_timeout_s / delay))
        waiter = client.get_waiter("resource_record_sets_changed")
        try:
            await asyncio.to_thread(waiter.wait, Id=change_id, WaiterConfig={"Delay": delay, "MaxAttempts": attempts})
        except WaiterError as exc:
            raise TemporaryProviderError(
                f"{self.name}: change {change_id} not INSYNC within {self.insync_timeout_s:g}s: {exc}", delay=delay
            ) from exc
        self.log.info("apply: change %s INSYNC", change_id)


# -- helpers ---------------------------------------------------------------------------------


def _map_error(exc: ClientError | BotoCoreError) -> ProviderError:
    """The provider error for a botocore exception (the caller adds provider, server, operation)."""
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "Unknown"))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        msg = f"{code}: {err.get('Message', '')}"
        if code in _TEMPORARY_CODES or status >= 500:
            return TemporaryProviderError(msg, delay=5.0 if "Throttl" in code else 1.0)
        return PermanentProviderError(msg)
    msg = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, _PERMANENT_BOTOCORE):
        return PermanentProviderError(msg)
    return TemporaryProviderError(msg)


def _is_refusal(exc: ProviderError) -> bool:
    """Whether Route 53 refused the content of a batch (``InvalidChangeBatch``, ``InvalidInput``)."""
    cause = exc.__cause__
    return isinstance(cause, ClientError) and cause.response.get("Error", {}).get("Code") in _REFUSAL_CODES


def _flat(atoms: Sequence[_Atom]) -> list[dict[str, Any]]:
    """One call's ``Changes``: deletes (aliases first), then targets, then aliases."""
    return [item for _, item in sorted((x for atom in atoms for x in atom), key=lambda x: x[0])]


def _units(atoms: Iterable[_Atom]) -> list[str]:
    """``name type [set identifier]`` of every record set the atoms change, in order, once each."""
    out: dict[str, None] = {}
    for atom in atoms:
        for _, item in atom:
            rrs = item["ResourceRecordSet"]
            unit = f"{_norm_name(rrs['Name'])} {rrs['Type']}"
            out[unit + (f" {rrs['SetIdentifier']}" if rrs.get("SetIdentifier") else "")] = None
    return list(out)


def _bare_zone_id(zone_id: str) -> str:
    return zone_id.rsplit("/", 1)[-1]


def _norm_name(name: str) -> str:
    """``normalize_name`` after decoding Route 53's octal escapes; odd names kept lower-cased."""
    name = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), name)
    try:
        return normalize_name(name)
    except ValueError:
        return name.strip().rstrip(".").lower()


def _norm_value(rdtype: str, value: str) -> str:
    try:
        if rdtype in _ADDRESS_TYPES:
            return ipaddress.ip_address(value).compressed
        if rdtype == "CNAME":
            return _norm_name(value) + "."
    except ValueError:
        pass
    return value


def _base(name: str) -> str:
    """The name an ownership marker is for (the name itself for other records)."""
    prefix = OWNER_PREFIX + "."
    return name[len(prefix):] if name.startswith(prefix) else name


def _pool_name(segment: str, fqdn: str) -> str:
    return route53_pool_name(fqdn, segment)


def _locations(route: SegmentRoute) -> list[str]:
    if route.is_default:
        return ["*"]
    return [f"country:{c}" for c in route.countries] + [f"continent:{c}" for c in route.continents]


def _geo_set_id(loc: str) -> str:
    return "default" if loc == "*" else loc.replace(":", "-")


def _sentinel_location(route: SegmentRoute, claims: Sequence[tuple[str, SegmentRoute]]) -> str:
    """A location no client reaching ``route``'s pool through the service name is in."""
    if route.is_default:
        for loc, _ in claims:  # clients there match that record, never ``*``
            if loc != "*":
                return loc
        return "continent:AN"
    if "AN" not in route.continents and "AQ" not in route.countries:
        return "continent:AN"
    for c in ("OC", "SA", "AF", "AS", "NA", "EU"):
        if c not in route.continents:
            return f"continent:{c}"
    return "continent:AN"


def _geo_to_api(geo: str) -> dict[str, str]:
    if geo == "*":
        return {"CountryCode": "*"}
    kind, _, code = geo.partition(":")
    if kind == "continent":
        return {"ContinentCode": code}
    if kind == "subdivision":
        country, _, sub = code.partition("-")
        return {"CountryCode": country, "SubdivisionCode": sub}
    return {"CountryCode": code}


def _geo_from_api(geo: Mapping[str, str] | None) -> str | None:
    if not geo:
        return None
    if "ContinentCode" in geo:
        return f"continent:{geo['ContinentCode']}"
    country = geo.get("CountryCode", "")
    if country == "*":
        return "*"
    if "SubdivisionCode" in geo:
        return f"subdivision:{country}-{geo['SubdivisionCode']}"
    return f"country:{country}"


def _from_api(item: Mapping[str, Any]) -> RecordSet:
    rdtype = item["Type"]
    alias = item.get("AliasTarget")
    return RecordSet(
        name=_norm_name(item["Name"]),
        rdtype=rdtype,
        ttl=0 if alias else int(item.get("TTL", 0)),
        values=tuple(sorted(_norm_value(rdtype, r["Value"]) for r in item.get("ResourceRecords", []))),
        set_identifier=item.get("SetIdentifier"),
        weight=item.get("Weight"),
        geo=_geo_from_api(item.get("GeoLocation")),
        alias_target=_norm_name(alias["DNSName"]) if alias else None,
    )


def _to_api(rs: RecordSet, zone_id: str) -> dict[str, Any]:
    item: dict[str, Any] = {"Name": rs.name + ".", "Type": rs.rdtype}
    if rs.set_identifier is not None:
        item["SetIdentifier"] = rs.set_identifier
    if rs.weight is not None:
        item["Weight"] = rs.weight
    if rs.geo is not None:
        item["GeoLocation"] = _geo_to_api(rs.geo)
    if rs.alias_target:
        item["AliasTarget"] = {"HostedZoneId": zone_id, "DNSName": rs.alias_target + ".", "EvaluateTargetHealth": False}
    else:
        item["TTL"] = rs.ttl
        item["ResourceRecords"] = [{"Value": v} for v in rs.values]
    return item


def _change_to_api(change: Change, zone_id: str, raw: Mapping[tuple[str, str, str], dict[str, Any]]) -> dict[str, Any]:
    if change.action == "delete":
        assert change.old is not None
        # Route 53 deletes only on an exact match: send what was listed when it still matches.
        listed = raw.get(change.old.key)
        item = listed if listed is not None and _from_api(listed) == change.old else _to_api(change.old, zone_id)
        return {"Action": "DELETE", "ResourceRecordSet": item}
    assert change.new is not None
    action = "CREATE" if change.action == "create" else "UPSERT"
    return {"Action": action, "ResourceRecordSet": _to_api(change.new, zone_id)}


def _batch_order(index: int, change: Change) -> tuple[int, int]:
    alias = change.record.alias_target is not None
    if change.action == "delete":
        return (0 if alias else 1, index)
    return (3 if alias else 2, index)


def _cost(item: Mapping[str, Any]) -> tuple[int, int]:
    """(``ResourceRecord`` elements, ``Value`` characters) of one change, UPSERT counted twice."""
    values = [r["Value"] for r in item["ResourceRecordSet"].get("ResourceRecords", [])]
    factor = 2 if item["Action"] == "UPSERT" else 1
    return max(1, len(values)) * factor, sum(len(v) for v in values) * factor


class _Groups:
    """Union-find over names: a service, its pools and their markers end up in one group."""

    def __init__(self) -> None:
        self._parent: dict[str, str] = {}

    def find(self, name: str) -> str:
        parent = self._parent.setdefault(name, name)
        if parent != name:
            parent = self._parent[name] = self.find(parent)
        return parent

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self._parent[max(ra, rb)] = min(ra, rb)

    def names(self) -> list[str]:
        return list(self._parent)


def _groups(records: Iterable[RecordSet]) -> _Groups:
    groups = _Groups()
    for rs in records:
        base = _base(rs.name)
        groups.find(base)
        if rs.alias_target:
            groups.union(base, rs.alias_target)
    return groups
