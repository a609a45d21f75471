"""Google Cloud DNS provider: weighted and geo routing through record-set routing policies.

Client approach
    Raw v1 REST JSON through google-cloud-dns' authenticated connection
    (``Client._connection.api_request``), kept inside this module. google-cloud-dns is already a
    dependency; its connection brings the credentials (a credentials file, Application Default
    Credentials, or anonymous for the local fake), the user agent, JSON error mapping into
    google-api-core exceptions and the endpoint override (``client_options`` ``api_endpoint``).
    Its record-set model is not used at all: 0.37 drops ``routingPolicy`` and its zone listing
    fails with ``KeyError: 'rrdatas'`` on WRR/GEO sets. google-api-python-client would also
    work (its bundled discovery document knows ``wrr``/``geo``), but adds a large dependency and
    a second HTTP stack (httplib2) for four REST calls. The price is relying on ``_connection``,
    a private attribute; ``tests/test_clouddns.py`` runs the real stack against
    ``tests/support/clouddns_server.py`` so a change there fails loudly.

Rendering
    Cloud DNS routing policies do not nest (a ``geo`` item cannot hold a ``wrr`` policy), so a
    service with segments renders as Route 53's shape with a CNAME hop:

    - per segment, ``<segment>.gtm-pool.<fqdn>``: one record set per record type (A, AAAA or
      CNAME) with a ``wrr`` policy, one item per active region (its endpoints of that type as
      the item's rrdatas, our 0-255 weight as the item's weight; weight-0 regions are left out);
    - at ``<fqdn>``: a CNAME with a ``geo`` policy whose items map GCP locations to the
      segment names.

    A service with a single catch-all segment skips the hop: the ``wrr`` sets sit at ``<fqdn>``.

    Trade-offs: the CNAME costs resolvers one more lookup (same zone, same answer) and a CNAME
    at the zone apex is impossible (refused). The alternative, geo items holding each
    segment's endpoints directly, saves the hop but loses weights inside a segment (Cloud DNS
    answers a geo item's rrdatas with equal weight), so drains and capacity weighting would not
    be rendered.

    Cloud DNS geo items are keyed by GCP locations (``europe-west1``), not continents, and a
    client matching no item exactly gets the *nearest* item. ``geo_locations`` maps our match
    codes (``continent:EU``, ``country:DE``, ``*`` for the catch-all) to one or more locations;
    list enough locations that each segment's clients are nearest to its own. Consequences held
    here: a pool with no serving region is rendered as a TXT-only name (``DARK_VALUE``) so its
    geo item stays and its clients get an empty answer, never the nearest other segment's
    regions; a residency-pinned segment without a location, or whose location another segment
    already holds, is refused even when not ``strict``; with no catch-all segment, the ``*``
    locations point at a dark ``nomatch`` name.

RecordSet encoding (reversible)
    One Cloud DNS record set is one ``RecordSet``: ``set_identifier`` names the policy
    (``wrr``, ``geo``; None for plain rrdatas) and ``values`` holds one sorted string per item,
    ``weight=<w> <rrdata> ...`` or ``location=<loc> <rrdata> ...``. ``observe`` parses the API's
    JSON back into the same form, so an unchanged zone diffs empty. Policies gtm never writes
    (health-checked items, ``primaryBackup``, fencing) parse as ``set_identifier="policy"`` with
    the JSON as the value, so they never compare equal to a rendering and are replaced when
    owned. Deletions are sent as the exact JSON last listed (Cloud DNS requires an exact match).

Writes
    One change per zone and plan: ``deletions`` + ``additions`` (an update is the delete and the
    add of one name/type), then ``changes.get`` every ``poll_interval_s`` until ``done`` or
    ``poll_timeout_s`` (``TemporaryProviderError``). A 5xx, 429 or transport error may hide a
    committed change, so the zone is re-read and only the remaining difference is re-sent
    (nothing when it committed: no 409 storm), at most ``max_attempts`` sends. A 412, 409 or
    404 on the change means our view was stale: exactly one re-observe and re-send. When that
    is refused too, the zone is re-read once more and what is still needed goes as one change
    per name (a record set and its ownership marker together): one record set that keeps being
    refused fails alone, the others are applied, and ``PartialApplyError`` names the refused
    record sets with Cloud DNS's message (everything at one name: ``TemporaryProviderError``).
    Other 4xx raise ``PermanentProviderError``. Blocking HTTP runs in ``asyncio.to_thread``;
    credentials are never logged (only which kind is used).
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote

import google.auth
import google.auth.exceptions
import requests
from google.api_core import exceptions as api_exceptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import dns
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_incrementing

from gtm.errors import ConfigError, PartialApplyError, PermanentProviderError, TemporaryProviderError
from gtm.models.plan import DesiredState, PoolPlan, SegmentRoute, ServicePlan
from gtm.models.published import CLOUDDNS_NO_MATCH, CLOUDDNS_POOL_LABEL, clouddns_hops, clouddns_pool_name
from gtm.providers.base import Provider
from gtm.providers.records import (
    OWNER_PREFIX,
    Observed,
    Plan,
    RecordSet,
    blocked_by_foreign,
    dns_services,
    normalize_name,
    split_ownership,
)

__all__ = ["DARK_VALUE", "POOL_LABEL", "CloudDnsProvider"]

POOL_LABEL = CLOUDDNS_POOL_LABEL
"""Segment pools live at ``<segment>.gtm-pool.<service fqdn>``."""

NO_MATCH = CLOUDDNS_NO_MATCH
"""Segment name of the dark target for clients no segment matches (no catch-all segment)."""

DARK_VALUE = '"gtm: no region serves this pool"'
"""TXT data of a pool name that must answer nothing (a dark pool)."""

WRR, GEO, OTHER = "wrr", "geo", "policy"
"""``RecordSet.set_identifier`` values: the routing policy a record set holds."""

ROUTED_TYPES = frozenset({"A", "AAAA", "CNAME"})

_REQUEST_IN_MESSAGE = re.compile(r"^(\d+ )?(?:GET|POST) \S+: ")
"""The ``POST <url>: `` google-api-core puts before the service's message."""

_STALE = frozenset({404, 409, 412})
"""Answers to changes.create that mean our view of the zone was stale."""


class _ApiError(Exception):
    """An HTTP failure of one request: status (None for transport errors) and message."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status == 429 or self.status >= 500


@dataclass
class _Calls:
    n: int = 0


class CloudDnsProvider(Provider):
    """Google Cloud DNS (v1 REST): ``wrr`` and ``geo`` routing policies, ownership markers.

    Args:
        name, owner_id, zones, max_change_fraction, strict: see ``Provider``.
        project: the GCP project holding the managed zones.
        managed_zones: zone name → managed zone name; zones not listed are looked up by
            ``dnsName`` (exactly one public managed zone must match).
        api_endpoint: API root, e.g. ``http://127.0.0.1:8085`` for the local fake; default
            ``https://dns.googleapis.com``.
        credentials_file: a service-account or external-account JSON file; default ADC.
        anonymous: send no credentials (the local fake only).
        poll_interval_s: seconds between ``changes.get`` polls and between retries.
        poll_timeout_s: how long a change may stay ``pending`` before ``TemporaryProviderError``.
        geo_locations: match code (``continent:EU``, ``country:DE``, ``*``) → GCP location or
            locations (``europe-west1``); Cloud DNS geo items are keyed by GCP locations.
        request_timeout_s: per HTTP request.
        max_attempts: sends of one change (and reads) on 5xx/429/transport errors.

    Raises:
        ConfigError: an option is invalid (every reason at once).
    """

    SUPPORTS: ClassVar[frozenset[str]] = frozenset({"A", "AAAA", "CNAME", "WEIGHTED", "GEO"})
    KIND: ClassVar[str] = "clouddns"

    @property
    def server_text(self) -> str:
        """``api_endpoint``, else the Cloud DNS API."""
        return self.api_endpoint or "https://dns.googleapis.com"

    def __init__(
        self,
        name: str,
        *,
        owner_id: str,
        zones: Sequence[str],
        project: str,
        max_change_fraction: float = 0.5,
        strict: bool = True,
        managed_zones: Mapping[str, str] | None = None,
        api_endpoint: str | None = None,
        credentials_file: str | None = None,
        anonymous: bool = False,
        poll_interval_s: float = 0.5,
        poll_timeout_s: float = 60.0,
        geo_locations: Mapping[str, str | Sequence[str]] | None = None,
        request_timeout_s: float = 30.0,
        max_attempts: int = 3,
    ) -> None:
        super().__init__(
            name,
            owner_id=owner_id,
            zones=[normalize_name(z) for z in zones],
            max_change_fraction=max_change_fraction,
            strict=strict,
        )
        reasons: list[str] = []
        if not project:
            reasons.append(f"provider {name!r}: 'project' is required")
        if credentials_file and anonymous:
            reasons.append(f"provider {name!r}: give 'credentials_file' or 'anonymous', not both")
        if poll_interval_s <= 0 or poll_timeout_s <= 0 or request_timeout_s <= 0:
            reasons.append(f"provider {name!r}: poll_interval_s, poll_timeout_s, request_timeout_s must be > 0")
        if max_attempts < 1:
            reasons.append(f"provider {name!r}: max_attempts must be >= 1")
        self.geo_locations = _parse_geo_locations(name, geo_locations or {}, reasons)
        if reasons:
            raise ConfigError(reasons)
        self.project = project
        self.managed_zones = {normalize_name(k): v for k, v in (managed_zones or {}).items()}
        self.api_endpoint = api_endpoint
        self.poll_interval_s = poll_interval_s
        self.poll_timeout_s = poll_timeout_s
        self.request_timeout_s = request_timeout_s
        self.max_attempts = max_attempts
        self._credentials_file = credentials_file
        self._anonymous = anonymous
        self._client: dns.Client | None = None
        self._client_lock = threading.Lock()
        self._mz: dict[str, str] = {}
        self._raw: dict[str, dict[tuple[str, str], tuple[RecordSet, dict[str, Any]]]] = {}
        self.log.debug(
            "init: project %s endpoint %s credentials %s",
            project,
            api_endpoint or "default",
            "file" if credentials_file else "anonymous" if anonymous else "application default",
        )

    # -- rendering (pure) ------------------------------------------------------------------

    def render(self, state: DesiredState, zone: str) -> list[RecordSet]:
        """The record sets ``state`` needs in ``zone`` (see the module docstring for the shape).

        Raises:
            PermanentProviderError: a residency-pinned segment cannot be given its own geo
                location, or (when ``strict``) another capability gap.
        """
        zone = normalize_name(zone)
        out: list[RecordSet] = []
        published = dns_services(state)
        for fqdn in sorted(published):
            svc = published[fqdn]
            if normalize_name(svc.zone) == zone:
                out.extend(self._render_service(state, svc, zone))
        return out

    def _render_service(self, state: DesiredState, svc: ServicePlan, zone: str) -> list[RecordSet]:
        name = normalize_name(svc.fqdn)
        routes = svc.segments
        if not clouddns_hops([(r.segment, r.is_default) for r in routes]):
            return self._render_pool(name, state.pools.get(routes[0].pool_id), state, svc.ttl)
        if name == zone:
            raise PermanentProviderError(f"{self.name}: {name} is the zone apex; segments need a CNAME there")
        out: list[RecordSet] = []
        items: dict[str, str] = {}
        for route in routes:
            target = clouddns_pool_name(name, route.segment)
            out.extend(self._render_pool(target, state.pools.get(route.pool_id), state, svc.ttl))
            locations, missing = self._locations_of(route)
            if missing:
                self._gap(route, f"{name} segment {route.segment!r}: no geo_locations entry for {', '.join(missing)}")
            for loc in locations:
                holder = items.setdefault(loc, target)
                if holder != target:
                    self._gap(route, f"{name} segment {route.segment!r}: location {loc} already answers {holder}")
        if not any(r.is_default for r in routes):
            nomatch = clouddns_pool_name(name, NO_MATCH)
            catch_all = self.geo_locations.get("*", ())
            if not catch_all:
                self.supports_warn_or_except(
                    f"{name}: no catch-all segment and no '*' in geo_locations; Cloud DNS answers "
                    "unmatched clients from the nearest segment"
                )
            if [loc for loc in catch_all if items.setdefault(loc, nomatch) == nomatch]:
                out.append(RecordSet(name=nomatch, rdtype="TXT", ttl=svc.ttl, values=(DARK_VALUE,)))
        if items:
            values = tuple(sorted(_item_value("location", loc, [t + "."]) for loc, t in items.items()))
            out.append(RecordSet(name=name, rdtype="CNAME", ttl=svc.ttl, values=values, set_identifier=GEO))
        return out

    def _render_pool(self, name: str, pool: PoolPlan | None, state: DesiredState, ttl: int) -> list[RecordSet]:
        groups: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
        for member in pool.active if pool is not None else ():
            by_type: dict[str, list[str]] = {}
            for rdtype, value in state.endpoints.get(member.region, ()):
                by_type.setdefault(rdtype, []).append(value)
            for rdtype, values in sorted(by_type.items()):
                if rdtype not in ROUTED_TYPES:
                    self.supports_warn_or_except(f"{name}: {member.region} endpoint type {rdtype} not supported")
                    continue
                if rdtype == "CNAME" and len(values) > 1:
                    self.supports_warn_or_except(f"{name}: {member.region} has several hostnames; using the first")
                    values = sorted(values)[:1]
                groups.setdefault(rdtype, []).append((member.weight, tuple(sorted(values))))
        if "CNAME" in groups and len(groups) > 1:
            self.supports_warn_or_except(f"{name}: pool mixes hostname and address endpoints; hostnames left out")
            del groups["CNAME"]
        if not groups:  # dark: answer nothing, explicitly, so the geo item keeps these clients
            return [RecordSet(name=name, rdtype="TXT", ttl=ttl, values=(DARK_VALUE,))]
        return [
            RecordSet(
                name=name,
                rdtype=rdtype,
                ttl=ttl,
                set_identifier=WRR,
                values=tuple(sorted(_item_value("weight", _num(w), list(v)) for w, v in items)),
            )
            for rdtype, items in sorted(groups.items())
        ]

    def _locations_of(self, route: SegmentRoute) -> tuple[list[str], list[str]]:
        if route.is_default:
            codes = ["*"]
        else:
            codes = [f"country:{c}" for c in route.countries] + [f"continent:{c}" for c in route.continents]
        locations: list[str] = []
        missing: list[str] = []
        for code in codes:
            if code not in self.geo_locations:
                missing.append(code)
            for loc in self.geo_locations.get(code, ()):
                if loc not in locations:
                    locations.append(loc)
        return locations, missing

    def _gap(self, route: SegmentRoute, message: str) -> None:
        """A geo gap: fatal for a residency-pinned segment (its clients would reach the nearest
        other segment's regions), else ``supports_warn_or_except``."""
        if route.jurisdictions:
            raise PermanentProviderError(f"{self.name}: {message} (segment pinned to {', '.join(route.jurisdictions)})")
        self.supports_warn_or_except(message)

    # -- observe -----------------------------------------------------------------------------

    async def observe(self, zone: str, managed_names: Iterable[str] | None = None) -> Observed:
        """List the zone's record sets (every page) and split them by ownership.

        Args:
            zone: a zone this provider manages.
            managed_names: names gtm wants; record sets there without our marker are
                ``foreign``. None (the base's call) counts every non-apex name.
        """
        return await self._observe(normalize_name(zone), managed_names, _Calls())

    async def _observe(self, zone: str, managed_names: Iterable[str] | None, calls: _Calls) -> Observed:
        self._check_zone(zone)
        mz = await self._managed_zone(zone, calls)
        raws = await self._list(f"{self._zone_path(mz)}/rrsets", "rrsets", calls)
        records: list[RecordSet] = []
        raw_by_key: dict[tuple[str, str], tuple[RecordSet, dict[str, Any]]] = {}
        for raw in raws:
            rs = _from_api(raw)
            records.append(rs)
            raw_by_key[(rs.name, rs.rdtype)] = (rs, raw)
        self._raw[zone] = raw_by_key
        managed = {rs.name for rs in records if rs.name != zone} if managed_names is None else set(managed_names)
        return split_ownership(zone, records, self.owner_id, managed)

    # -- apply -------------------------------------------------------------------------------

    async def _apply(self, plan: Plan) -> int:
        calls = _Calls()
        zone = normalize_name(plan.zone)
        self._check_zone(zone)
        mz = await self._managed_zone(zone, calls)
        target: dict[tuple[str, str], RecordSet | None] = {}
        for c in plan.changes:  # deletes sort first, so a later create/update of the same name/type wins
            target[(c.record.name, c.record.rdtype)] = c.new
        deletions = [c.old for c in plan.changes if c.old is not None]
        additions = [c.new for c in plan.changes if c.new is not None]
        path = f"{self._zone_path(mz)}/changes"
        sends = 0
        stale_retried = False
        while True:
            sends += 1
            try:
                change = await self._request("POST", path, calls, data=self._change_body(zone, deletions, additions))
                break
            except _ApiError as err:
                if err.status in _STALE:
                    if stale_retried:
                        return await self._apply_split(zone, mz, target, calls, err)
                    stale_retried = True
                    self.log.warning("apply: %s stale view (%s); re-observing once", zone, err.status)
                elif err.retryable:
                    if sends >= self.max_attempts:
                        raise TemporaryProviderError(
                            f"{self.name}: change to {zone} failed {sends} times: {err.message}",
                            delay=self.poll_interval_s * sends,
                        ) from err
                    self.log.warning(
                        "apply: %s change failed (%s); re-reading the zone before any retry",
                        zone,
                        err.status or "transport",
                    )
                    await asyncio.sleep(self.poll_interval_s * sends)
                else:
                    raise PermanentProviderError(f"{self.name}: change to {zone} refused: {err.message}") from err
            deletions, additions = await self._reconcile(zone, target, calls)
            if not deletions and not additions:
                self.log.info("apply: %s already holds the planned record sets; nothing resent", zone)
                return calls.n
        await self._wait_done(mz, change, calls)
        return calls.n

    async def _apply_split(
        self,
        zone: str,
        mz: str,
        target: Mapping[tuple[str, str], RecordSet | None],
        calls: _Calls,
        cause: _ApiError,
    ) -> int:
        """After a second 412/409/404 on the whole change: re-read the zone and send what is
        still needed as one change per name (its record sets and their ownership marker stay
        together, so a record set never lands without its marker), so that one refused record
        set holds back nothing else. Returns the API calls made.

        Raises:
            TemporaryProviderError: everything still needed is at one name (nothing to split).
            PartialApplyError: some names were refused (``failed``: ``<name> <types>`` → HTTP
                status and message), the others applied; ``temporary`` unless one was refused
                for good (a 4xx other than 404/409/412).
        """
        deletions, additions = await self._reconcile(zone, target, calls)
        groups: dict[str, tuple[list[RecordSet], list[RecordSet]]] = {}
        for rs in deletions:
            groups.setdefault(_base_name(rs.name), ([], []))[0].append(rs)
        for rs in additions:
            groups.setdefault(_base_name(rs.name), ([], []))[1].append(rs)
        if len(groups) <= 1:
            if not groups:
                self.log.info("apply: %s already holds the planned record sets; nothing resent", zone)
                return calls.n
            raise TemporaryProviderError(
                f"{self.name}: {zone} changed again under us after one re-observe: {cause.message}",
                delay=self.poll_interval_s,
            ) from cause
        self.log.warning("apply: %s refused twice (%s); sending one change per name (%d)", zone, cause.status,
                         len(groups))
        path = f"{self._zone_path(mz)}/changes"
        applied: list[str] = []
        failed: dict[str, str] = {}
        temporary = True
        sent: list[dict[str, Any]] = []
        # Targets before the CNAMEs that point at them (the geo CNAME last), so a pool name
        # exists before it is answered. A pool refused here leaves the geo item pointing at a
        # name with nothing: its clients get no answer, never another segment's regions.
        for name in sorted(groups, key=lambda n: (any(rs.rdtype == "CNAME" for rs in groups[n][1]), n)):
            dels, adds = groups[name]
            unit = _unit_name(name, [*dels, *adds])
            try:
                sent.append(await self._request("POST", path, calls, data=self._change_body(zone, dels, adds)))
            except _ApiError as err:
                failed[unit] = _REQUEST_IN_MESSAGE.sub(r"\1", err.message)  # "412 Precondition not met ..."
                temporary = temporary and (err.status in _STALE or err.retryable)
                continue
            applied.append(unit)
        for change in sent:
            await self._wait_done(mz, change, calls)
        if failed:
            raise PartialApplyError(applied, failed, temporary=temporary)
        return calls.n

    async def _reconcile(
        self, zone: str, target: Mapping[tuple[str, str], RecordSet | None], calls: _Calls
    ) -> tuple[list[RecordSet], list[RecordSet]]:
        """Re-read the zone; the deletions and additions still needed to reach ``target``,
        skipping names that meanwhile became foreign."""
        observed = await self._observe(zone, {_base_name(n) for n, _ in target}, calls)
        have = {(rs.name, rs.rdtype): rs for rs in observed.owned}
        foreign_types = blocked_by_foreign(observed)
        others = set(observed.other_owners)
        deletions: list[RecordSet] = []
        additions: list[RecordSet] = []
        for key in sorted(target):
            want = target[key]
            if _base_name(key[0]) in others or key[1] in foreign_types.get(key[0], ()):
                self.log.warning("apply: %s %s now held by another owner; left alone", *key)
                continue
            current = have.get(key)
            if current == want:
                continue
            if current is not None:
                deletions.append(current)
            if want is not None:
                additions.append(want)
        return deletions, additions

    async def _wait_done(self, mz: str, change: dict[str, Any], calls: _Calls) -> None:
        cid = str(change.get("id", ""))
        status = change.get("status")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.poll_timeout_s
        while status != "done":
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TemporaryProviderError(
                    f"{self.name}: change {cid} in {mz} still {status!r} after {self.poll_timeout_s}s",
                    delay=self.poll_interval_s,
                )
            await asyncio.sleep(min(self.poll_interval_s, remaining))
            change = await self._get(f"{self._zone_path(mz)}/changes/{quote(cid, safe='')}", calls)
            status = change.get("status")
        self.log.debug("apply: change %s in %s done", cid, mz)

    def _change_body(self, zone: str, deletions: Sequence[RecordSet], additions: Sequence[RecordSet]) -> dict[str, Any]:
        raw = self._raw.get(zone, {})

        def exact(rs: RecordSet) -> dict[str, Any]:
            hit = raw.get((rs.name, rs.rdtype))
            return hit[1] if hit is not None and hit[0] == rs else _to_api(rs)

        return {
            "kind": "dns#change",
            "deletions": [exact(rs) for rs in deletions],
            "additions": [_to_api(rs) for rs in additions],
        }

    # -- HTTP ----------------------------------------------------------------------------------

    def _check_zone(self, zone: str) -> None:
        if zone not in self.zones:
            raise PermanentProviderError(f"{self.name}: zone {zone} is not managed by this provider")

    def _zone_path(self, mz: str) -> str:
        return f"/projects/{quote(self.project, safe='')}/managedZones/{quote(mz, safe='')}"

    async def _managed_zone(self, zone: str, calls: _Calls) -> str:
        """The managed zone name for ``zone`` (checked once, then cached)."""
        if zone in self._mz:
            return self._mz[zone]
        if zone in self.managed_zones:
            mz = self.managed_zones[zone]
            info = await self._get(self._zone_path(mz), calls)
            if normalize_name(str(info.get("dnsName", "."))) != zone:
                raise PermanentProviderError(
                    f"{self.name}: managed zone {mz} serves {info.get('dnsName')!r}, not {zone}"
                )
        else:
            found = [
                z
                for z in await self._list(
                    f"/projects/{quote(self.project, safe='')}/managedZones",
                    "managedZones",
                    calls,
                    {"dnsName": zone + "."},
                )
                if normalize_name(str(z.get("dnsName", "."))) == zone and z.get("visibility", "public") == "public"
            ]
            if len(found) != 1:
                raise PermanentProviderError(
                    f"{self.name}: {len(found)} public managed zones for {zone} in {self.project}; set managed_zones"
                )
            mz = str(found[0]["name"])
        self._mz[zone] = mz
        return mz

    async def _list(
        self, path: str, key: str, calls: _Calls, query: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            q = dict(query or {})
            if token:
                q["pageToken"] = token
            page = await self._get(path, calls, q)
            out.extend(page.get(key) or [])
            token = page.get("nextPageToken")
            if not token:
                return out

    async def _get(self, path: str, calls: _Calls, query: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A read, retried on 5xx/429/transport errors (up to ``max_attempts``, waiting
        ``poll_interval_s`` times the attempt number in between); failures mapped to provider errors."""
        retrying = AsyncRetrying(
            retry=retry_if_exception(lambda e: isinstance(e, _ApiError) and e.retryable),
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_incrementing(start=self.poll_interval_s, increment=self.poll_interval_s),
            reraise=True,
        )
        try:
            return await retrying(self._request, "GET", path, calls, query=query)
        except _ApiError as err:
            if not err.retryable:
                raise PermanentProviderError(f"{self.name}: GET {path}: {err.message}") from err
            attempts = retrying.statistics.get("attempt_number", self.max_attempts)
            raise TemporaryProviderError(
                f"{self.name}: GET {path} failed {attempts} times: {err.message}",
                delay=self.poll_interval_s * attempts,
            ) from err

    async def _request(
        self,
        method: str,
        path: str,
        calls: _Calls,
        *,
        query: Mapping[str, str] | None = None,
        data: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        calls.n += 1
        return await asyncio.to_thread(self._request_sync, method, path, query, data)

    def _request_sync(
        self, method: str, path: str, query: Mapping[str, str] | None, data: dict[str, Any] | None
    ) -> dict[str, Any]:
        client = self._get_client()
        try:
            result = client._connection.api_request(
                method=method,
                path=path,
                query_params=dict(query or {}),
                data=data,
                timeout=self.request_timeout_s,
            )
        except api_exceptions.GoogleAPICallError as exc:
            status = exc.code if isinstance(exc.code, int) else None
            raise _ApiError(status, f"{status} {exc.message}") from exc
        except (requests.ConnectionError, requests.Timeout, google.auth.exceptions.TransportError) as exc:
            raise _ApiError(None, f"transport error: {type(exc).__name__}") from exc
        except google.auth.exceptions.RefreshError as exc:
            raise PermanentProviderError(f"{self.name}: credentials refused ({type(exc).__name__})") from exc
        return result if isinstance(result, dict) else {}

    def _get_client(self) -> dns.Client:
        """The google-cloud-dns client, built on first use (in a worker thread: ADC may read
        files or ask the metadata server)."""
        with self._client_lock:
            if self._client is None:
                try:
                    if self._anonymous:
                        credentials: Any = AnonymousCredentials()  # type: ignore[no-untyped-call]
                    elif self._credentials_file:
                        credentials, _ = google.auth.load_credentials_from_file(  # type: ignore[no-untyped-call]
                            self._credentials_file, scopes=dns.Client.SCOPE
                        )
                    else:
                        credentials = None  # Application Default Credentials, resolved by the client
                    options = {"api_endpoint": self.api_endpoint} if self.api_endpoint else None
                    self._client = dns.Client(project=self.project, credentials=credentials, client_options=options)
                except google.auth.exceptions.GoogleAuthError as exc:
                    raise PermanentProviderError(
                        f"{self.name}: no usable credentials ({type(exc).__name__}); set credentials_file or ADC"
                    ) from exc
            return self._client

    async def aclose(self) -> None:
        """Close the HTTP session (the provider can be used again; a new one is opened)."""
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client._http.close)


# -- encoding between RecordSet and Cloud DNS JSON ------------------------------------------------


def _num(weight: float | int) -> int | float:
    w = float(weight)
    return int(w) if w.is_integer() else w


def _item_value(key: str, head: object, rrdatas: Sequence[str]) -> str:
    return f"{key}={head} " + " ".join(sorted(rrdatas))


def _parse_item(value: str) -> tuple[str, str, list[str]]:
    head, _, rest = value.partition(" ")
    key, _, val = head.partition("=")
    return key, val, rest.split(" ") if rest else []


def _base_name(name: str) -> str:
    return name[len(OWNER_PREFIX) + 1 :] if name.startswith(OWNER_PREFIX + ".") else name


def _unit_name(name: str, records: Sequence[RecordSet]) -> str:
    """How a per-name change is named in errors: ``<name> <types>`` of the record sets other
    than the ownership marker (``eu.gtm-pool.chat.example.com A``), else the marker itself."""
    types = sorted({rs.rdtype for rs in records if not rs.name.startswith(OWNER_PREFIX + ".")})
    return f"{name} {'+'.join(types)}" if types else f"{OWNER_PREFIX}.{name} TXT"


def _to_api(rs: RecordSet) -> dict[str, Any]:
    """The Cloud DNS JSON of a rendered or observed ``RecordSet``."""
    body: dict[str, Any] = {"name": rs.name + ".", "type": rs.rdtype, "ttl": rs.ttl}
    if rs.set_identifier == WRR:
        items: list[dict[str, Any]] = []
        for v in rs.values:
            _, w, rrdatas = _parse_item(v)
            items.append({"weight": _num(float(w)), "rrdatas": rrdatas})
        body["routingPolicy"] = {"wrr": {"items": items}}
    elif rs.set_identifier == GEO:
        items = []
        for v in rs.values:
            _, loc, rrdatas = _parse_item(v)
            items.append({"location": loc, "rrdatas": rrdatas})
        body["routingPolicy"] = {"geo": {"items": items}}
    elif rs.set_identifier == OTHER:
        body["routingPolicy"] = json.loads(rs.values[0])
    else:
        body["rrdatas"] = list(rs.values)
    return body


def _plain_items(policy: Any, key: str) -> list[dict[str, Any]] | None:
    """The items of a ``wrr``/``geo`` policy when they use nothing but ``key`` and rrdatas."""
    if not isinstance(policy, dict) or set(policy) - {"items", "kind", "enableFencing"} or policy.get("enableFencing"):
        return None
    items = policy.get("items")
    if not isinstance(items, list) or not items:
        return None
    for item in items:
        if not isinstance(item, dict) or set(item) - {key, "rrdatas", "kind"} or key not in item:
            return None
        rrdatas = item.get("rrdatas")
        if not isinstance(rrdatas, list) or not rrdatas or any(not isinstance(r, str) or " " in r for r in rrdatas):
            return None
    return items


def _from_api(raw: dict[str, Any]) -> RecordSet:
    """Parse one listed record set (``kind`` fields and double weights tolerated)."""
    name = normalize_name(str(raw["name"]))
    rdtype = str(raw["type"])
    ttl = int(raw.get("ttl") or 0)
    policy = raw.get("routingPolicy")
    if policy is None:
        return RecordSet(name=name, rdtype=rdtype, ttl=ttl, values=tuple(sorted(raw.get("rrdatas") or ())))
    if isinstance(policy, dict) and not set(policy) - {"wrr", "geo", "kind"} and len(set(policy) - {"kind"}) == 1:
        wrr = _plain_items(policy.get("wrr"), "weight")
        if wrr is not None:
            values = tuple(sorted(_item_value("weight", _num(i["weight"]), i["rrdatas"]) for i in wrr))
            return RecordSet(name=name, rdtype=rdtype, ttl=ttl, values=values, set_identifier=WRR)
        geo = _plain_items(policy.get("geo"), "location")
        if geo is not None:
            values = tuple(sorted(_item_value("location", i["location"], i["rrdatas"]) for i in geo))
            return RecordSet(name=name, rdtype=rdtype, ttl=ttl, values=values, set_identifier=GEO)
    return RecordSet(
        name=name, rdtype=rdtype, ttl=ttl, values=(json.dumps(policy, sort_keys=True),), set_identifier=OTHER
    )


def _parse_geo_locations(
    provider: str, raw: Mapping[str, str | Sequence[str]], reasons: list[str]
) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for code, locs in raw.items():
        kind, _, value = code.partition(":")
        if not (code == "*" or (kind in ("continent", "country") and value.isalpha() and value.isupper())):
            reasons.append(
                f"provider {provider!r}: geo_locations key {code!r} must be '*', 'continent:XX' or 'country:XX'"
            )
            continue
        values = (locs,) if isinstance(locs, str) else tuple(locs)
        if not values or any(not isinstance(v, str) or not v or " " in v for v in values):
            reasons.append(f"provider {provider!r}: geo_locations[{code!r}] must name GCP locations, got {locs!r}")
            continue
        out[code] = values
    return out
