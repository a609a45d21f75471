"""The engine's output: the desired routing, with a reason for every decision.

Plain frozen dataclasses (not pydantic models) because ``plan()`` builds tens of thousands of them
per call; a pydantic ``TypeAdapter`` serialises them to and from JSON-ready dicts
(``to_dict``/``from_dict``). Pools are shared between services with the same eligible regions, so
a service refers to its pools by id.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

HealthState = Literal["healthy", "degraded", "unhealthy", "unknown"]
"""``healthy`` and ``degraded`` take traffic; ``unhealthy`` and ``unknown`` (no fresh report) do not."""

SERVING_STATES: frozenset[str] = frozenset({"healthy", "degraded"})


@dataclass(frozen=True, slots=True)
class RegionStatus:
    """The engine's view of one region after this plan.

    Attributes:
        region: region name.
        state: health state after hysteresis.
        reason: why it is in that state.
        observed_at: time of the report used, unix seconds (None if none).
        seq: that report's sequence number (-1 if none).
        spare_capacity: spare capacity from the report (0 if none), in ``capacity_unit``.
        capacity_unit: ``replicas`` or ``tokens/s``.
        override: ``drain``, ``cordon`` or None.
        override_reason: the operator's reason, when overridden.
        since: when ``state`` was entered, unix seconds.
        load: smoothed capacity in use (EWMA), in ``capacity_unit``; the region's demand.
        transitions: times (unix seconds) the region went in or out of service, within the
            policy's flap window.
        damped_until: flap damping keeps the region out until this time (0 if not damped).
        confirmed_failure: the region is out of service for a confirmed failure (its agent's
            ``consecutive_fail >= fall``, or the vantage quorum cannot reach it); kept while it
            stays out. Only such outages (and the return from one) count toward flap damping.
        unreachable: a quorum of the other regions' vantage points cannot reach the region.
        lapsed_at: when the region's report lapsed (its last ``observed_at`` + the report
            timeout), unix seconds; 0 while its report is fresh.
        grace_until: an ``unknown`` region that the vantage quorum still reaches keeps its
            previous weight until this time, unix seconds; 0 when no grace is granted.
        vantage: what the other regions' vantage points saw of it, one line ("" without any).
    """

    region: str
    state: HealthState
    reason: str
    observed_at: float | None = None
    seq: int = -1
    spare_capacity: float = 0.0
    capacity_unit: str = "replicas"
    override: str | None = None
    override_reason: str = ""
    since: float = 0.0
    load: float = 0.0
    transitions: tuple[float, ...] = ()
    damped_until: float = 0.0
    confirmed_failure: bool = False
    unreachable: bool = False
    lapsed_at: float = 0.0
    grace_until: float = 0.0
    vantage: str = ""

    @property
    def serving(self) -> bool:
        """Whether the region takes traffic by its health: ``healthy`` or ``degraded``, or
        ``unknown`` within its grace (kept at its previous weight)."""
        return self.state in SERVING_STATES or (self.state == "unknown" and self.grace_until > 0)


@dataclass(frozen=True, slots=True)
class PoolMember:
    """One region's place in a pool.

    Attributes:
        region: region name.
        weight: 0-255; 0 means the region receives nothing and renderers leave it out.
        reason: why this weight.
        changed_at: when the weight last changed, unix seconds (paces planned steps).
    """

    region: str
    weight: int
    reason: str
    changed_at: float


@dataclass(frozen=True, slots=True)
class PoolPlan:
    """The weighted set of regions that answers one segment.

    Attributes:
        pool_id: stable id: ``<segment>-<digest of the eligible regions and routing>``.
        segment: the segment name this pool serves.
        members: every eligible region, sorted by name, including those at weight 0.
        reason: summary of the pool's state; says loudly when dark or held.
        mode: ``normal``, ``fail-static`` (held last good), ``fail-open``, ``spill`` (a pinned
            segment explicitly allowed to spill to other jurisdictions) or ``dark``.
    """

    pool_id: str
    segment: str
    members: tuple[PoolMember, ...]
    reason: str
    mode: Literal["normal", "fail-static", "fail-open", "spill", "dark"] = "normal"

    @property
    def active(self) -> tuple[PoolMember, ...]:
        """Members with weight > 0: what a renderer publishes."""
        return tuple(m for m in self.members if m.weight > 0)

    @property
    def dark(self) -> bool:
        """No region takes traffic."""
        return not any(m.weight > 0 for m in self.members)

    def weight_of(self, region: str) -> int:
        """The region's weight in this pool (0 if not a member)."""
        for m in self.members:
            if m.region == region:
                return m.weight
        return 0


@dataclass(frozen=True, slots=True)
class SegmentRoute:
    """Which clients go to which pool, for one service.

    Attributes:
        segment: segment name.
        continents: client continents matched (empty with ``countries`` empty: catch-all).
        countries: client countries matched.
        pool_id: the pool answering these clients.
        jurisdictions: residency pin, empty if none.
        note: set when the route is not the service's own pool (``FALLBACK ...``).
    """

    segment: str
    continents: tuple[str, ...]
    countries: tuple[str, ...]
    pool_id: str
    jurisdictions: tuple[str, ...] = ()
    note: str = ""

    @property
    def is_default(self) -> bool:
        return not self.continents and not self.countries


@dataclass(frozen=True, slots=True)
class ServicePlan:
    """A service's routing: its name, TTL and a pool per segment (most specific first).

    ``dns`` is False for an anycast-only service (``data_planes: [anycast]``): its pools drive
    the announcements, and DNS providers publish no record for it.
    """

    name: str
    fqdn: str
    zone: str
    ttl: int
    segments: tuple[SegmentRoute, ...]
    dns: bool = True


@dataclass(frozen=True, slots=True)
class Decision:
    """One thing the engine decided and why (shown by ``gtm plan`` and written to the audit)."""

    subject: str
    action: str
    reason: str


AnnounceAction = Literal["announce", "withdraw"]


@dataclass(frozen=True, slots=True)
class Announcement:
    """What one region's BGP speaker should do with one anycast prefix.

    Attributes:
        prefix: the anycast prefix (CIDR), e.g. ``198.51.100.0/24``.
        region: the region whose speaker announces it.
        action: ``announce`` or ``withdraw``.
        prepend: extra copies of the region's own ASN prepended to the AS path (0 at full share;
            more makes the region less preferred: reduced share, canary, ramping back).
        med: MULTI_EXIT_DISC sent with the route (lower is preferred).
        communities: communities attached (``ASN:value``; ``65535:0`` is GRACEFUL_SHUTDOWN, RFC 8326).
        share: the region's share of the prefix's traffic the preference was derived from,
            fraction 0..1.
        planned: a planned move (drain, rollback, planned step): before withdrawing, the speaker
            announces with GRACEFUL_SHUTDOWN (65535:0) and holds it so peers move traffic
            first; False for failures (withdrawn at once).
        reason: why, in words.
        changed_at: unix seconds the action or preference last changed.
    """

    prefix: str
    region: str
    action: AnnounceAction
    prepend: int = 0
    med: int = 0
    communities: tuple[str, ...] = ()
    share: float = 0.0
    planned: bool = False
    reason: str = ""
    changed_at: float = 0.0


@dataclass(frozen=True)
class DesiredState:
    """The whole desired routing at one instant.

    Attributes:
        generation: grows by one each time the routing changes (not on every plan).
        generated_at: the ``now`` passed to ``plan()``, unix seconds.
        policy_digest: digest of the policy in force.
        held: True when inputs were stale and the previous routing was kept (static stability).
        hold_reason: why it was held.
        regions: per region status.
        pools: pools by id.
        services: service plans by fqdn.
        endpoints: per region, the (rdtype, value) pairs its members render to.
        decisions: the changes made by this plan relative to the previous one.
        rejoin_since: while held after a mass lapse of reports, when the first regions reported
            again (unix seconds): the hold lasts one lapse window more for the stragglers
            (``gtm.engine.staleness``); 0 otherwise.
        announcements: anycast: per prefix, one ``Announcement`` per region that may announce
            it (sorted by region); empty when no service uses anycast.
    """

    generation: int
    generated_at: float
    policy_digest: str
    held: bool
    hold_reason: str
    regions: dict[str, RegionStatus]
    pools: dict[str, PoolPlan]
    services: dict[str, ServicePlan]
    endpoints: dict[str, tuple[tuple[str, str], ...]]
    decisions: tuple[Decision, ...] = ()
    rejoin_since: float = 0.0
    announcements: dict[str, tuple[Announcement, ...]] = field(default_factory=dict)
    _digest: Annotated[list[str], Field(exclude=True)] = field(  # memo of routing_digest(), never stored
        default_factory=list, init=False, repr=False, compare=False
    )

    def routing_digest(self) -> str:
        """Digest of what providers publish: pools' weights, services, endpoints and policy.

        Two states with the same digest render identically, so no provider write is needed.
        """
        if not self._digest:
            h = hashlib.blake2b(digest_size=12)
            h.update(self.policy_digest.encode())
            for pid in sorted(self.pools):
                h.update(pid.encode())
                for m in self.pools[pid].members:
                    h.update(f"{m.region}={m.weight};".encode())
            for region in sorted(self.endpoints):
                h.update(f"{region}:{self.endpoints[region]}".encode())
            h.update(_services_digest(self.services).encode())
            for prefix in sorted(self.announcements):
                for a in self.announcements[prefix]:
                    h.update(f"{prefix}|{a.region}|{a.action}|{a.prepend}|{a.med}|{a.communities}|{a.planned};".encode())
            self._digest.append(h.hexdigest())
        return self._digest[0]

    def pool_for(self, fqdn: str, segment: str) -> PoolPlan | None:
        """The pool answering ``segment`` of service ``fqdn``, or None."""
        svc = self.services.get(fqdn)
        if svc is None:
            return None
        for route in svc.segments:
            if route.segment == segment:
                return self.pools.get(route.pool_id)
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (pydantic's serializer for these dataclasses, plus ``routing_digest``
        for readers); ``from_dict`` reads it back."""
        d: dict[str, Any] = _adapter().dump_python(self, mode="json")
        d["routing_digest"] = self.routing_digest()
        return d

    def to_json(self) -> str:
        """The stored form (``gtm:{ns}:desired``): ``to_dict`` as compact JSON, keys sorted."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DesiredState:
        """Rebuild a state from ``to_dict`` output (also what earlier versions stored, whose
        hand-written format is the same); ``routing_digest`` is recomputed, not read.

        Raises:
            pydantic.ValidationError (a ``ValueError``): missing or malformed fields.
        """
        return _adapter().validate_python(d)

    @classmethod
    def from_json(cls, text: str) -> DesiredState:
        """``from_dict`` of the JSON ``text``; raises ``ValueError`` if malformed."""
        return _adapter().validate_json(text)


@functools.cache
def _adapter() -> TypeAdapter[DesiredState]:
    """The pydantic (de)serializer of ``DesiredState`` and its parts (built on first use)."""
    return TypeAdapter(DesiredState)


_SERVICES_DIGESTS: dict[int, tuple[dict[str, ServicePlan], str]] = {}


def _services_digest(services: dict[str, ServicePlan]) -> str:
    """Digest of the services (names, TTLs, segments → pools).

    Plans made from the same policy share one services dict, so this is memoised on the
    dict's identity (a handful of entries are kept; the dict is kept alive with its digest).
    """
    hit = _SERVICES_DIGESTS.get(id(services))
    if hit is not None and hit[0] is services:
        return hit[1]
    h = hashlib.blake2b(digest_size=12)
    for fqdn in sorted(services):
        s = services[fqdn]
        h.update(f"{fqdn}|{s.zone}|{s.ttl}|{'' if s.dns else 'no-dns|'}".encode())
        for r in s.segments:
            h.update(f"{r.segment}:{r.continents}:{r.countries}:{r.pool_id}:{r.jurisdictions};".encode())
    digest = h.hexdigest()
    if len(_SERVICES_DIGESTS) >= 8:
        _SERVICES_DIGESTS.clear()
    _SERVICES_DIGESTS[id(services)] = (services, digest)
    return digest
