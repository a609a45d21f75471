"""Region inventory: one YAML file per region under ``regions/``.

A region is a deployment location with a jurisdiction (for data residency), the geography
it serves, the endpoints clients are sent to, and the fleet sources its agent scrapes.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from gtm.models.dnsname import a_label_name

FleetKind = Literal["vllm", "tgi", "sglang", "triton", "dcgm"]
"""Kinds of fleet source an agent knows how to scrape (see ``gtm.agent.scrape``)."""

CONTINENTS = frozenset({"AF", "AN", "AS", "EU", "NA", "OC", "SA"})
"""Continent codes, as Route 53 geolocation uses them."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Endpoint(_Strict):
    """Where clients of a region are sent: an IPv4/IPv6 address or a hostname (CNAME target)."""

    address: str | None = None
    hostname: str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Endpoint:
        if (self.address is None) == (self.hostname is None):
            raise ValueError("give exactly one of 'address' or 'hostname'")
        if self.address is not None:
            ipaddress.ip_address(self.address)
        return self

    @field_validator("hostname")
    @classmethod
    def _one_spelling(cls, v: str | None) -> str | None:
        """The CNAME target in the spelling providers publish (``a_label_name``)."""
        return None if v is None else a_label_name(v)

    @property
    def rdtype(self) -> str:
        """DNS record type this endpoint renders as: ``A``, ``AAAA`` or ``CNAME``."""
        if self.hostname is not None:
            return "CNAME"
        assert self.address is not None
        return "AAAA" if ipaddress.ip_address(self.address).version == 6 else "A"

    @property
    def value(self) -> str:
        """The record data: the address, or the hostname with a trailing dot."""
        if self.address is not None:
            return self.address
        assert self.hostname is not None
        return self.hostname if self.hostname.endswith(".") else self.hostname + "."


ProbeApi = Literal["completions", "chat", "tgi", "triton"]
"""Which completion API a synthetic probe calls: OpenAI-compatible ``/v1/completions`` or
``/v1/chat/completions`` (vLLM, SGLang), TGI ``/generate_stream``, Triton
``/v2/models/<model>/generate_stream``."""

DEFAULT_PROBE_API: dict[str, ProbeApi] = {
    "vllm": "completions",
    "sglang": "completions",
    "tgi": "tgi",
    "triton": "triton",
}
"""The probe API used per fleet kind when the inventory does not name one (dcgm: no probe)."""


class ProbeSpec(_Strict):
    """The synthetic completion probe of one fleet source (``FleetSource.probe``).

    ``probe: false`` in the inventory disables it; ``probe: true`` or no entry uses these
    defaults (a DCGM exporter is never probed).

    Attributes:
        enabled: whether the agent probes this source.
        api: which completion API to call; None picks the kind's (``DEFAULT_PROBE_API``).
        prompt: the prompt sent (keep it short: it runs every ``probe_interval_s``).
        max_tokens: tokens asked for (1..64).
        expect: a regular expression the generated text must contain (``re.search``); the
            default asks for at least one non-blank character.
        model: model name sent in the request (OpenAI ``model``, Triton's URL); None uses
            ``FleetSource.model``, else the model the engine says it serves (Triton: required
            through one of these).
    """

    enabled: bool = True
    api: ProbeApi | None = None
    prompt: str = Field(default="Say OK.", min_length=1, max_length=2000)
    max_tokens: int = Field(default=4, ge=1, le=64)
    expect: str = Field(default=r"\S", min_length=1, max_length=500)
    model: str | None = None

    @field_validator("expect")
    @classmethod
    def _valid_regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"expect is not a valid regular expression: {exc}") from exc
        return v


class FleetSource(_Strict):
    """One scrape target of a region's fleet.

    Attributes:
        name: unique within the region, e.g. ``vllm-a``.
        kind: which parser to use.
        url: base URL of the server (``http://10.0.0.5:8000``); the agent appends ``/metrics``
            and the kind's health path. For ``dcgm`` the full metrics URL is accepted too.
        model: the served model's name, if the server does not say it itself.
        version: the model version this source serves (the agent reports it).
        replicas: how many replicas stand behind this URL (1 for one server).
        probe: the synthetic completion probe (``false`` disables it; default: on with the
            kind's defaults, off for ``dcgm``); see :meth:`probe_spec`.
    """

    name: str = Field(min_length=1, pattern=r"^[a-z0-9][a-z0-9-]*$")
    kind: FleetKind
    url: str = Field(pattern=r"^https?://")
    model: str | None = None
    version: str | None = None
    replicas: int = Field(default=1, ge=1)
    probe: ProbeSpec | None = None

    @field_validator("probe", mode="before")
    @classmethod
    def _probe_flag(cls, v: object) -> object:
        if isinstance(v, bool):
            return {"enabled": v}
        return v

    def probe_spec(self) -> ProbeSpec | None:
        """The probe to run against this source, or None (disabled, or a DCGM exporter)."""
        if self.kind == "dcgm":
            return None
        spec = self.probe if self.probe is not None else ProbeSpec()
        if not spec.enabled:
            return None
        if spec.api is None:
            spec = spec.model_copy(update={"api": DEFAULT_PROBE_API[self.kind]})
        return spec


class Geography(_Strict):
    """The clients a region serves, and the client networks located there.

    Attributes:
        continent: continent code of the region's own location (``EU``, ``NA``...).
        countries: ISO 3166-1 alpha-2 codes the region serves (informational).
        client_networks: client prefixes located in this geography; together they form the
            prefix→geography table the embedded DNS uses to pick a segment.
    """

    continent: str
    countries: tuple[str, ...] = ()
    client_networks: tuple[str, ...] = ()

    @field_validator("continent")
    @classmethod
    def _known_continent(cls, v: str) -> str:
        if v not in CONTINENTS:
            raise ValueError(f"unknown continent code {v!r}; use one of {sorted(CONTINENTS)}")
        return v

    @field_validator("client_networks")
    @classmethod
    def _valid_networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for net in v:
            ipaddress.ip_network(net, strict=False)
        return v


COMMUNITY_RE = r"^\d{1,10}:\d{1,10}$"
"""A standard BGP community, ``ASN:value`` (RFC 1997), e.g. ``65001:100``."""

GRACEFUL_SHUTDOWN = "65535:0"
"""The GRACEFUL_SHUTDOWN well-known community (RFC 8326): peers lower the route's preference so
traffic moves before the route is withdrawn."""


class BgpPeer(_Strict):
    """One BGP neighbor of a region's speaker (ExaBGP on the region's agent host).

    Attributes:
        address: the neighbor's IP address.
        asn: the neighbor's AS number (1-4294967295).
        port: the neighbor's BGP port (179 unless a lab says otherwise).
    """

    address: str
    asn: int = Field(ge=1, le=4_294_967_295)
    port: int = Field(default=179, ge=1, le=65535)

    @field_validator("address")
    @classmethod
    def _ip(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v


class BgpSide(_Strict):
    """A region's side of anycast: how its agent's BGP speaker (ExaBGP) announces prefixes.

    Attributes:
        local_asn: the region's AS number (prepends repeat it).
        local_address: the address ExaBGP binds and peers from.
        router_id: BGP router id (defaults to ``local_address`` when it is IPv4).
        next_hop: the next hop announced for the region's anycast prefixes (its load balancer).
        peers: the routers ExaBGP peers with.
        communities: communities the region may attach (``ASN:value``); GRACEFUL_SHUTDOWN
            (65535:0) is always allowed for drains.
    """

    local_asn: int = Field(ge=1, le=4_294_967_295)
    local_address: str
    router_id: str | None = None
    next_hop: str
    peers: tuple[BgpPeer, ...] = Field(min_length=1)
    communities: tuple[str, ...] = ()

    @field_validator("local_address", "next_hop")
    @classmethod
    def _ip(cls, v: str) -> str:
        ipaddress.ip_address(v)
        return v

    @field_validator("router_id")
    @classmethod
    def _router_id(cls, v: str | None) -> str | None:
        if v is not None:
            ipaddress.IPv4Address(v)
        return v

    @field_validator("communities")
    @classmethod
    def _communities(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        import re

        for c in v:
            if not re.match(COMMUNITY_RE, c) or any(int(x) > 65535 for x in c.split(":")):
                raise ValueError(f"community {c!r} is not ASN:value with both parts 0-65535")
        return v


class Region(_Strict):
    """A deployment location.

    Attributes:
        name: region name, e.g. ``eu-west-1`` (must match the file name).
        jurisdiction: legal jurisdiction for data residency, e.g. ``EU``, ``US``.
        geography: where the region is and which client networks it sits with.
        endpoints: the addresses or hostnames answered for this region.
        fleet: fleet sources the region's agent scrapes.
        bgp: the region's BGP side for anycast (``BgpSide``), or None when it announces nothing.
            The anycast prefix itself is named by the policy's service (one prefix announced
            from several regions), not here.
        capacity_per_replica: optional tokens/s one fully idle replica can take; when set,
            spare capacity is reported in tokens/s instead of replica-equivalents.
        vantage_url: optional URL on the region's public endpoint that the OTHER regions'
            agents GET as vantage points (``https://api.eu-west-1.example.com/health``); a
            region without one is not probed from outside.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    jurisdiction: str = Field(pattern=r"^[A-Z]{2,8}$")
    geography: Geography
    endpoints: tuple[Endpoint, ...] = Field(min_length=1)
    fleet: tuple[FleetSource, ...] = ()
    bgp: BgpSide | None = None
    capacity_per_replica: float | None = Field(default=None, gt=0)
    vantage_url: str | None = Field(default=None, pattern=r"^https?://")

    @model_validator(mode="before")
    @classmethod
    def _no_anycast_prefix(cls, data: object) -> object:
        if isinstance(data, dict) and "anycast_prefix" in data:
            raise ValueError(
                "anycast_prefix is no longer a region field: a prefix announced by one region is unicast, "
                "not anycast. Name the prefix on the service in the policy (services[].anycast: {prefix: "
                f"{data['anycast_prefix']}}}) and give the region its BGP side here (bgp: {{local_asn, "
                "local_address, next_hop, peers: [{address, asn}]}})"
            )
        return data

    @model_validator(mode="after")
    def _unique_sources(self) -> Region:
        names = [s.name for s in self.fleet]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate fleet source names: {dup}")
        return self


class Inventory(_Strict):
    """All regions, keyed by name."""

    regions: dict[str, Region]

    def jurisdiction_of(self, region: str) -> str:
        """Jurisdiction of ``region``; raises ``KeyError`` if unknown."""
        return self.regions[region].jurisdiction
