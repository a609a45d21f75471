"""Policy files under ``policies/``: services, segments with residency pins, health thresholds
and safety rules. Validated by these models; cross-file checks live in ``gtm.config``.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from gtm.models.accelerator import check_against_services, provider_kind_settings
from gtm.models.dnsname import a_label_name
from gtm.models.drill import DrillLimits
from gtm.models.region import CONTINENTS
from gtm.models.rollout import RolloutSpec

RoutingMode = Literal["capacity", "static"]
AllUnhealthy = Literal["fail-static", "fail-open"]
DataPlane = Literal["dns", "anycast"]
"""How clients reach a service: weighted DNS answers, or one anycast prefix announced by BGP."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _norm_name(v: str) -> str:
    """One spelling per name (``gtm.models.dnsname.a_label_name``): a Unicode name and its
    punycode are the same name. Raises ValueError for an invalid name."""
    return a_label_name(v)


class HealthThresholds(_Strict):
    """When a region's health state changes.

    Attributes:
        fall: consecutive failed checks that make a healthy region unhealthy.
        rise: consecutive good checks that bring an unhealthy region back.
        report_timeout_s: a report older than this (seconds) is a lapsed heartbeat: the
            region is ``unknown`` (see ``unknown_grace_s``). Vantage reports older than this
            give no opinion.
        vantage_quorum: a region is ``unreachable`` (failed over at once) when MORE than this
            fraction (0..1) of its vantage points (the other regions' fresh vantage reports
            that probe it) fail to reach it, each by ``fall`` consecutive failed probes.
            Default 0.5: a strict majority. Route 53 calls a check unhealthy only when 82 % or
            more of its checkers fail (``gtm.engine.vantage`` compares the two).
        vantage_min: at least this many vantage points must have an opinion of a region;
            with fewer, the vantage points say nothing about it (neither way).
        unknown_grace_s: an ``unknown`` region (its agent silent) that a majority of its
            vantage points still reach keeps its previous weight for this long, seconds,
            counted from when its report lapsed; then it goes out. 0 disables the grace.
        max_clock_skew_s: a report timestamped more than this many seconds ahead of the Redis
            server's clock is rejected (``gtm.engine.plausibility``).
        capacity_margin: a report claiming more replicas or spare capacity than the inventory
            lists × (1 + this fraction; 0.25 = 25 %) is rejected.
    """

    fall: int = Field(default=2, ge=1, le=100)
    rise: int = Field(default=3, ge=1, le=100)
    report_timeout_s: float = Field(default=6.0, gt=0, le=3600)
    vantage_quorum: float = Field(default=0.5, ge=0, lt=1)
    vantage_min: int = Field(default=2, ge=1, le=100)
    unknown_grace_s: float = Field(default=60.0, ge=0, le=3600)
    max_clock_skew_s: float = Field(default=5.0, gt=0, le=3600)
    capacity_margin: float = Field(default=0.25, ge=0, le=10)


class SafetyRules(_Strict):
    """Limits that keep the engine from making things worse.

    Attributes:
        stale_fraction: when more than this fraction (0..1) of the policy's regions have no
            fresh report, the inputs are stale and the previous plan is held (static stability).
            Judged over ``lapse_window_s``: once any report has lapsed, regions whose report
            will lapse within the window count as lapsing too.
        lapse_window_s: seconds; agents that stop together lapse up to this far apart. None
            (default): twice the largest heartbeat (``interval_s``) of the reports.
        planned_step: the most a planned move (drain, undrain, recovery ramp) changes one
            region's weight per ``step_interval_s``; failure moves are immediate.
        step_interval_s: seconds between planned steps.
        weight_deadband: capacity-driven weight changes smaller than this (0-255 scale) are
            ignored, so a wobbling fleet does not rewrite DNS every tick.
        on_all_unhealthy: when every region of a pool is unhealthy: ``fail-static`` keeps the
            previous pool; ``fail-open`` serves all non-drained regions equally (as Envoy's
            panic threshold and Route 53 do).
        min_healthy_regions: a drain step that would leave a pool with fewer serving regions
            than this is held (failures are not held: they are facts, not plans).
        max_drained: at most this many regions drained at once; later drains are held.
        headroom: a drain step is held unless the pool's other serving regions have spare
            capacity ≥ the drained region's load × (1 + headroom); fraction, 0.2 = 20 %.
        flap_threshold: health transitions (in ↔ out) within ``flap_window_s`` that mark a
            region as flapping; it then stays out for ``flap_penalty_s``. 0 disables damping.
        flap_window_s: the window, seconds.
        flap_penalty_s: how long a flapping region stays out, seconds.
        demand_smoothing: EWMA factor (0..1] applied to each region's load per new report;
            1 means no smoothing.
    """

    stale_fraction: float = Field(default=0.5, ge=0, le=1)
    lapse_window_s: float | None = Field(default=None, ge=0, le=3600)
    planned_step: int = Field(default=64, ge=1, le=255)
    step_interval_s: float = Field(default=1.0, gt=0, le=3600)
    weight_deadband: int = Field(default=8, ge=0, le=255)
    on_all_unhealthy: AllUnhealthy = "fail-static"
    min_healthy_regions: int = Field(default=1, ge=0, le=100)
    max_drained: int = Field(default=2, ge=0, le=1000)
    headroom: float = Field(default=0.2, ge=0, le=10)
    flap_threshold: int = Field(default=4, ge=0, le=100)
    flap_window_s: float = Field(default=300.0, gt=0)
    flap_penalty_s: float = Field(default=600.0, ge=0)
    demand_smoothing: float = Field(default=0.3, gt=0, le=1)


class SegmentMatch(_Strict):
    """Which clients belong to a segment: by continent or country of the client's network.

    An empty match (the default segment) catches every client no other segment takes.
    """

    continents: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()

    @field_validator("continents")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [c for c in v if c not in CONTINENTS]
        if bad:
            raise ValueError(f"unknown continent codes {bad}; use {sorted(CONTINENTS)}")
        return v


class Residency(_Strict):
    """A hard data-residency pin: the segment only ever routes to these jurisdictions."""

    jurisdictions: tuple[str, ...] = Field(min_length=1)


class Anycast(_Strict):
    """An anycast prefix: one prefix announced by BGP from several regions (``gtm.engine.anycast``).

    Attributes:
        prefix: the network, CIDR with the host bits zero (``198.51.100.0/24``,
            ``2001:db8:100::/48``); normalised (``str(ipaddress.ip_network(...))``).
    """

    prefix: str

    @field_validator("prefix")
    @classmethod
    def _network(cls, v: str) -> str:
        try:
            return str(ipaddress.ip_network(v.strip(), strict=True))
        except ValueError as exc:
            raise ValueError(
                f"{v!r} is not a network prefix ({exc}); write the network address with its length, "
                "e.g. 198.51.100.0/24"
            ) from None


class Segment(_Strict):
    """A slice of a service's clients with its own pool.

    Attributes:
        name: ``eu``, ``default``...
        match: which clients; empty for the catch-all segment.
        residency: optional hard pin to jurisdictions.
        regions: optional subset of the service's regions for this segment.
        on_unavailable: when a pinned segment has no eligible region that can serve:
            ``fail-closed`` (default) leaves it explicitly dark; ``spill`` sends it to the
            service's regions in ``spill_to`` jurisdictions, loudly. Never spills silently.
        spill_to: jurisdictions a pinned segment may spill to (needs ``on_unavailable: spill``).
        anycast: the segment's own anycast prefix, announced only from the segment's eligible
            regions (its residency pin holds for it in every failure; anycast never spills).
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    match: SegmentMatch = SegmentMatch()
    residency: Residency | None = None
    regions: tuple[str, ...] | None = None
    on_unavailable: Literal["fail-closed", "spill"] = "fail-closed"
    spill_to: tuple[str, ...] = ()
    anycast: Anycast | None = None

    @model_validator(mode="after")
    def _spill(self) -> Segment:
        if self.on_unavailable == "spill" and not self.spill_to:
            raise ValueError("on_unavailable 'spill' needs spill_to jurisdictions")
        if self.spill_to and self.on_unavailable != "spill":
            raise ValueError("spill_to is set but on_unavailable is not 'spill'")
        if self.spill_to and self.residency is None:
            raise ValueError("spill_to only applies to a segment with a residency pin")
        return self

    @property
    def is_default(self) -> bool:
        """Whether this segment catches every unmatched client."""
        return not self.match.continents and not self.match.countries


class Service(_Strict):
    """A public name served by fleets in several regions.

    Attributes:
        name: short name, unique in the policy.
        fqdn: the public name, e.g. ``chat.gtm.example.com`` (normalised: lower case, no dot).
        zone: the DNS zone it lives in (must be declared under ``zones``).
        ttl: record TTL, seconds (0..86400). 0 is legal DNS but means no resolver may cache
            the answer: every client lookup reaches the authoritative servers (and some
            resolvers raise it to their own minimum); ``gtm policy validate`` warns about it.
        model: the served model; capacity and health are read for this model.
        routing: ``capacity`` (weights follow spare capacity) or ``static`` (weights given).
        regions: the regions that serve it.
        static_weights: weight 0-255 per region, for ``routing: static``: every region of
            ``regions`` needs one (an explicit 0 parks a region; a missing one is an error,
            never a silent 0).
        segments: client segments; a default (empty-match) segment is added if none is given.
        fallback: another service (e.g. a smaller distilled model) whose pool answers a
            segment when no region of this service can serve it, within the same residency.
        unlocated_segment: the segment that answers clients whose location is unknown (no
            ``client_networks`` entry and no GeoIP record covers them); None means the
            default segment. Naming a pinned segment (``eu``) keeps unlocated clients of an
            EU-only deployment in the EU.
        anycast: the service's anycast prefix; it serves the catch-all (default) segment's
            pool. A segment may name its own prefix instead (``segments[].anycast``).
        data_planes: ``[dns]``, ``[anycast]`` or ``[dns, anycast]``. Default: ``dns``, plus
            ``anycast`` when the service or one of its segments names a prefix. An anycast-only
            service publishes no DNS records (providers skip it; its pools still drive the
            announcements).
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    fqdn: str
    zone: str
    ttl: int = Field(default=30, ge=0, le=86400, strict=True)
    model: str | None = None
    routing: RoutingMode = "capacity"
    regions: tuple[str, ...] = Field(min_length=1)
    static_weights: dict[str, Annotated[int, Field(ge=0, le=255, strict=True)]] = Field(default_factory=dict)
    segments: tuple[Segment, ...] = ()
    fallback: str | None = None
    unlocated_segment: str | None = None
    anycast: Anycast | None = None
    data_planes: tuple[DataPlane, ...] | None = None

    @field_validator("data_planes")
    @classmethod
    def _planes(cls, v: tuple[DataPlane, ...] | None) -> tuple[DataPlane, ...] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("data_planes is empty: the service would be unreachable; use [dns], [anycast] or both")
        if len(set(v)) != len(v):
            raise ValueError(f"data_planes lists a plane twice: {list(v)}")
        return v

    @field_validator("unlocated_segment")
    @classmethod
    def _unlocated_is_a_segment(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None or "segments" not in info.data:  # invalid segments are reported themselves
            return v
        segments: tuple[Segment, ...] = info.data["segments"]
        names = [s.name for s in segments]
        if not any(s.is_default for s in segments):
            names.append("default")  # added by all_segments
        if v not in names:
            raise ValueError(f"unlocated_segment {v!r} is not a segment of this service; use one of {names}")
        return v

    @field_validator("regions")
    @classmethod
    def _unique_regions(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        dup = sorted({r for r in v if v.count(r) > 1})
        if dup:
            raise ValueError(f"regions listed twice: {dup}")
        return v

    _fqdn = field_validator("fqdn", "zone")(classmethod(lambda cls, v: _norm_name(v)))

    @model_validator(mode="after")
    def _check(self) -> Service:
        if self.fqdn != self.zone and not self.fqdn.endswith("." + self.zone):
            raise ValueError(f"fqdn {self.fqdn!r} is not inside zone {self.zone!r}")
        for region in self.static_weights:
            if region not in self.regions:
                raise ValueError(f"static_weights names {region!r}, which is not in regions")
        if self.routing == "static" and not self.static_weights:
            raise ValueError("routing 'static' needs static_weights")
        missing = [r for r in self.regions if r not in self.static_weights]
        if self.routing == "static" and self.static_weights and missing:
            raise ValueError(
                f"service {self.name!r} (routing: static): static_weights gives no weight to regions {missing}; "
                "give every listed region a weight (0 parks a region)"
            )
        if self.routing == "static" and not any(self.static_weights.values()):
            raise ValueError("every static weight is 0: the service would always be dark")
        names = [s.name for s in self.segments]
        if len(set(names)) != len(names):
            raise ValueError(f"segment names repeat: {names}")
        defaults = [s.name for s in self.segments if s.is_default]
        if len(defaults) > 1:
            raise ValueError(f"more than one catch-all segment: {defaults}")
        for seg in self.segments:
            for r in seg.regions or ():
                if r not in self.regions:
                    raise ValueError(f"segment {seg.name!r} names region {r!r}, not in regions")
        self._check_anycast()
        return self

    def _check_anycast(self) -> None:
        own = [s.name for s in self.segments if s.anycast is not None]
        planes = self.planes
        if "anycast" in planes and self.anycast is None and not own:
            raise ValueError(
                "data_planes includes anycast but no prefix is named: add anycast: {prefix: ...} to the "
                "service or to its segments"
            )
        if "anycast" not in planes and (self.anycast is not None or own):
            raise ValueError(
                f"an anycast prefix is named but data_planes {list(planes)} leaves anycast out: add anycast "
                "to data_planes or remove the prefix"
            )
        default = next((s for s in self.all_segments if s.is_default), None)
        if self.anycast is not None and default is not None and default.anycast is not None:
            raise ValueError(
                f"both the service ({self.anycast.prefix}) and its catch-all segment {default.name!r} "
                f"({default.anycast.prefix}) name an anycast prefix for the same clients; keep one"
            )
        if planes == frozenset({"anycast"}):
            # No DNS answer places these clients: each segment is reached through a prefix.
            for seg in self.all_segments:
                if seg.anycast is not None:
                    continue
                if seg.residency is not None:
                    raise ValueError(
                        f"anycast-only service: segment {seg.name!r} is pinned to "
                        f"{list(seg.residency.jurisdictions)} but has no prefix of its own; an anycast "
                        "route cannot tell where a client is, so give the segment "
                        "anycast: {prefix: ...} (announced only from its jurisdictions)"
                    )
                if self.anycast is None:
                    raise ValueError(
                        f"anycast-only service: segment {seg.name!r} has no prefix and the service names "
                        "none, so its clients would have no way in; add anycast: {prefix: ...}"
                    )

    @property
    def planes(self) -> frozenset[DataPlane]:
        """The data planes in force: ``data_planes``, or its default (see the class)."""
        if self.data_planes is not None:
            return frozenset(self.data_planes)
        if self.anycast is not None or any(s.anycast is not None for s in self.segments):
            return frozenset({"dns", "anycast"})
        return frozenset({"dns"})

    def prefix_segments(self) -> tuple[tuple[str, Segment], ...]:
        """``(prefix, segment it serves)`` for each anycast prefix of the service: a segment's own,
        and the service's, which serves the catch-all segment. Empty without anycast."""
        if "anycast" not in self.planes:
            return ()
        out = []
        for seg in self.all_segments:
            if seg.anycast is not None:
                out.append((seg.anycast.prefix, seg))
            elif seg.is_default and self.anycast is not None:
                out.append((self.anycast.prefix, seg))
        return tuple(out)

    @property
    def all_segments(self) -> tuple[Segment, ...]:
        """The declared segments, plus a ``default`` catch-all if none was declared."""
        if any(s.is_default for s in self.segments):
            return self.segments
        return (*self.segments, Segment(name="default"))


class Zone(_Strict):
    """A DNS zone gtm answers for (embedded server) or publishes into (providers).

    Attributes:
        name: zone apex, e.g. ``gtm.example.com``.
        nameservers: NS host names at the apex.
        nameserver_addresses: optional glue: NS host name → address, for in-zone NS names.
        hostmaster: SOA RNAME as a mail address (``hostmaster@example.com``).
        negative_ttl: SOA minimum, the TTL of NXDOMAIN/NODATA answers, seconds.
    """

    name: str
    nameservers: tuple[str, ...] = Field(min_length=1)
    nameserver_addresses: dict[str, str] = Field(default_factory=dict)
    hostmaster: str = "hostmaster@example.invalid"
    negative_ttl: int = Field(default=30, ge=0, le=86400)

    _n = field_validator("name")(classmethod(lambda cls, v: _norm_name(v)))

    @field_validator("nameservers")
    @classmethod
    def _ns(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_norm_name(n) for n in v)

    @field_validator("nameserver_addresses")
    @classmethod
    def _glue(cls, v: dict[str, str]) -> dict[str, str]:
        out = {}
        for name, addr in v.items():
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                raise ValueError(f"glue address {addr!r} for {name!r} is not an IP address") from None
            out[_norm_name(name)] = addr
        return out


class ProviderConfig(BaseModel):
    """One DNS provider the policy publishes to.

    Attributes:
        name: provider id, unique in the policy (``route53-main``).
        kind: ``embedded``, ``route53``, ``clouddns``, ``rfc2136`` or ``globalaccelerator``
            (AWS Global Accelerator traffic dials; options: ``gtm.models.accelerator``).
        zones: zones it may change (default: every zone of the policy).
        max_change_fraction: refuse a plan that updates/deletes more than this share (0..1)
            of a zone's owned record sets, unless forced.
        options: provider-specific settings (endpoints, hosted zone ids, key *file* paths or
            env var names: never secrets themselves).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    kind: Literal["embedded", "route53", "clouddns", "rfc2136", "globalaccelerator"]
    zones: tuple[str, ...] = ()
    max_change_fraction: float = Field(default=0.5, gt=0, le=1)
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("zones")
    @classmethod
    def _zone_names(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_norm_name(z) for z in v)

    @model_validator(mode="after")
    def _kind_options(self) -> ProviderConfig:
        provider_kind_settings(self.kind, self.options)  # options gtm models are checked with the policy
        if self.kind == "globalaccelerator" and self.zones:
            raise ValueError("a globalaccelerator provider has no zones (it steers endpoint groups)")
        return self


class Policy(_Strict):
    """One policy: the whole routing intent of an installation.

    Attributes:
        name: policy name (file stem unless given).
        zones: zones served.
        services: services routed.
        health: health thresholds.
        safety: safety rules.
        providers: DNS providers to publish to (the embedded server needs none here).
        rollouts: staggered model-version rollouts (``gtm rollout start NAME``).
        drills: limits, allowances and blocked windows of ``gtm drill drain|failover|kill``.
        owner_id: this installation's id in ownership markers; two installations sharing a
            zone must use different ids.
    """

    name: str = "default"
    zones: tuple[Zone, ...] = Field(min_length=1)
    services: tuple[Service, ...] = Field(min_length=1)
    health: HealthThresholds = HealthThresholds()
    safety: SafetyRules = SafetyRules()
    providers: tuple[ProviderConfig, ...] = ()
    rollouts: tuple[RolloutSpec, ...] = ()
    drills: DrillLimits = DrillLimits()
    owner_id: str = Field(default="gtm", pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    @model_validator(mode="after")
    def _check(self) -> Policy:
        zones = {z.name for z in self.zones}
        pnames = [p.name for p in self.providers]
        if len(set(pnames)) != len(pnames):
            raise ValueError(f"provider names repeat: {sorted(n for n in pnames if pnames.count(n) > 1)}")
        services = {s.name: s for s in self.services}
        for s in self.services:
            if s.fallback is not None:
                if s.fallback not in services:
                    raise ValueError(f"service {s.name!r} falls back to unknown service {s.fallback!r}")
                if s.fallback == s.name or services[s.fallback].fallback is not None:
                    raise ValueError(f"service {s.name!r}: a fallback service must not fall back itself")
        rnames = [r.name for r in self.rollouts]
        if len(set(rnames)) != len(rnames):
            raise ValueError(f"rollout names repeat: {sorted(n for n in rnames if rnames.count(n) > 1)}")
        for ro in self.rollouts:
            svc = services.get(ro.service)
            if svc is None:
                raise ValueError(f"rollout {ro.name!r} names unknown service {ro.service!r}")
            stray = [r for wave in ro.waves for r in wave if r not in svc.regions]
            if stray:
                raise ValueError(f"rollout {ro.name!r} names regions not serving {svc.name!r}: {stray}")
        for p in self.providers:
            for z in p.zones:
                if _norm_name(z) not in zones:
                    raise ValueError(f"provider {p.name!r} names zone {z!r}, not declared in zones")
        shapes = {s.name: (s.fqdn, s.regions, tuple(g.name for g in s.all_segments)) for s in self.services}
        for p in self.providers:
            accel = provider_kind_settings(p.kind, p.options)
            problems = check_against_services(p.name, accel, shapes) if accel is not None else []
            if problems:
                raise ValueError("; ".join(problems))
        names = [s.name for s in self.services]
        fqdns = [s.fqdn for s in self.services]
        if len(set(names)) != len(names):
            raise ValueError(f"service names repeat: {sorted(n for n in names if names.count(n) > 1)}")
        if len(set(fqdns)) != len(fqdns):
            raise ValueError(f"service fqdns repeat: {sorted(f for f in fqdns if fqdns.count(f) > 1)}")
        for s in self.services:
            if s.zone not in zones:
                raise ValueError(f"service {s.name!r} is in zone {s.zone!r}, not declared in zones")
        self._check_prefixes()
        return self

    def _check_prefixes(self) -> None:
        """One prefix belongs to one service segment: no prefix repeats or overlaps another (the
        more specific one would take the other's traffic wherever both are announced)."""
        seen: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, str]] = []
        for s in self.services:
            for prefix, seg in s.prefix_segments():
                net = ipaddress.ip_network(prefix)
                for other, svc, segname in seen:
                    if net.version == other.version and net.overlaps(other):
                        what = "is also used by" if net == other else f"overlaps {other} of"
                        raise ValueError(
                            f"service {s.name!r}: anycast prefix {prefix} (segment {seg.name!r}) {what} "
                            f"service {svc!r} (segment {segname!r}); a prefix belongs to one service segment"
                        )
                seen.append((net, s.name, seg.name))

    @property
    def region_names(self) -> frozenset[str]:
        """Every region any service uses."""
        return frozenset(r for s in self.services for r in s.regions)
