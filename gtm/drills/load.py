"""A drill's client load: populations of clients that resolve the service through a caching
resolver and send small completion requests to the answered endpoint, and a sampler of the
authoritative answers.

Each population (``Population``) has a client subnet, sent as EDNS Client Subnet, so the
resolver (Unbound, caching per subnet) and the authoritative server answer it as a client of
that network; ``default_populations`` makes one per segment of the service from the policy and
the inventory's ``geography.client_networks``. Every request is recorded as a
``RequestRecord``: the address answered, the region it belongs to (the inventory's endpoint
addresses), the outcome, latency and time to first token, and whether the answer kept the
population's residency.

The load is open-loop: a population starts a request every ``1 / rps`` seconds whether or not
the previous ones finished (a slow region must not slow the load down and hide its errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from gtm.drills._interim import complete, resolve
from gtm.drills.judge import AnswerSample
from gtm.errors import UsageError
from gtm.models.drill import RequestOutcome, RequestRecord
from gtm.models.policy import Segment, Service
from gtm.models.region import Inventory


@dataclass(frozen=True)
class Population:
    """Clients of one network: ``name`` (e.g. the segment ``eu``), ``subnet`` (a CIDR sent as
    ECS, e.g. ``100.96.0.0/24``) and the ``jurisdictions`` every answer must stay in (empty:
    any)."""

    name: str
    subnet: str
    jurisdictions: tuple[str, ...] = ()


@dataclass
class LoadSettings:
    """How the clients reach the service.

    Attributes:
        fqdn: the service's name.
        resolver: the caching resolver, (host, port).
        authoritative: the authoritative server sampled each second, bypassing the cache
            (host, port); None: the answers are judged from what clients were answered.
        rps: requests per second per population.
        max_requests: stop sending after this many requests in total.
        endpoint_port / endpoint_scheme: the URL an answered address is reached at
            (``scheme://address:port``).
        connect: answered address → base URL, for setups where the address itself is not
            reachable (overrides port and scheme for that address).
        model / prompt / max_tokens: the completion request (small on purpose).
        timeout_s: per DNS lookup and per request, seconds.
        samples_per_s: authoritative queries per population per second.
    """

    fqdn: str
    resolver: tuple[str, int]
    authoritative: tuple[str, int] | None = None
    rps: float = 5.0
    max_requests: int = 100_000
    endpoint_port: int = 443
    endpoint_scheme: str = "https"
    connect: dict[str, str] = field(default_factory=dict)
    model: str | None = None
    prompt: str = "Say OK."
    max_tokens: int = 4
    timeout_s: float = 3.0
    samples_per_s: int = 8


def _client_subnet(network: str) -> str:
    """A /24 (IPv4) or /56 (IPv6) inside ``network`` (the ECS a resolver forwards)."""
    net = ipaddress.ip_network(network, strict=False)
    size = 24 if net.version == 4 else 56
    if net.prefixlen >= size:
        return str(net)
    return str(next(net.subnets(new_prefix=size)))


def _located(segment: Segment, continent: str, countries: tuple[str, ...]) -> bool:
    m = segment.match
    return continent in m.continents or bool(set(countries) & set(m.countries))


def default_populations(service: Service, inventory: Inventory) -> list[Population]:
    """One population per segment of ``service``: a segment that matches continents or
    countries gets a client subnet from a region located there; the default segment (no match)
    one from a region located outside every other segment. Regions of the service are preferred.

    Raises:
        UsageError: no region has a client network for a segment (use ``--population``).
    """
    regions = sorted(inventory.regions.values(), key=lambda r: (r.name not in service.regions, r.name))
    matched = [s for s in service.segments if s.match.continents or s.match.countries]
    out = []
    segments = service.segments or (Segment(name="default"),)
    for seg in segments:
        for reg in regions:
            geo = reg.geography
            if not geo.client_networks:
                continue
            if seg in matched:
                if not _located(seg, geo.continent, geo.countries):
                    continue
            elif any(_located(s, geo.continent, geo.countries) for s in matched):
                continue
            jur = seg.residency.jurisdictions if seg.residency is not None else ()
            out.append(Population(seg.name, _client_subnet(geo.client_networks[0]), tuple(jur)))
            break
        else:
            raise UsageError(f"no region has a client network for segment {seg.name} of {service.name}: "
                             f"give one with --population {seg.name}=SUBNET")
    return out


def parse_population(text: str, service: Service) -> Population:
    """``NAME=SUBNET`` (``--population``); NAME a segment of ``service`` takes its residency.

    Raises:
        UsageError: not NAME=SUBNET, or SUBNET not a network.
    """
    name, sep, subnet = text.partition("=")
    if not sep or not name or not subnet:
        raise UsageError(f"--population wants NAME=SUBNET (e.g. eu=100.96.0.0/24), got {text!r}")
    try:
        ipaddress.ip_network(subnet, strict=False)
    except ValueError as exc:
        raise UsageError(f"--population {name}: {exc}") from None
    seg = next((s for s in service.segments if s.name == name), None)
    jur = seg.residency.jurisdictions if seg is not None and seg.residency is not None else ()
    return Population(name, subnet, tuple(jur))


def address_regions(inventory: Inventory) -> dict[str, str]:
    """Endpoint address (or hostname) → region, from the inventory."""
    return {ep.value: name for name, reg in inventory.regions.items() for ep in reg.endpoints}


class ClientLoad:
    """The drill's clients and the answer sampler. ``run(stop)`` until ``stop`` is set (or
    ``max_requests`` were sent); ``records`` and ``answers`` grow as it runs.

    Args:
        settings: how to reach the service.
        populations: who sends.
        inventory: to name the region an address belongs to, its jurisdiction, and the
            completion API of its fleet.
        session: the one HTTP session (its connector's limits bound concurrency).
        on_record: called with every finished request (e.g. progress).
    """

    def __init__(self, settings: LoadSettings, populations: list[Population], inventory: Inventory,
                 session: aiohttp.ClientSession, on_record: Callable[[RequestRecord], None] | None = None) -> None:
        self.settings = settings
        self.populations = populations
        self.inventory = inventory
        self.session = session
        self.on_record = on_record
        self.records: list[RequestRecord] = []
        self.answers: list[AnswerSample] = []
        self.sent = 0
        self._regions = address_regions(inventory)
        self._tasks: set[asyncio.Task[None]] = set()

    def region_of(self, address: str) -> str | None:
        return self._regions.get(address)

    def _kind(self, region: str | None) -> str:
        reg = self.inventory.regions.get(region) if region is not None else None
        return reg.fleet[0].kind if reg is not None and reg.fleet else "vllm"

    def _url(self, address: str) -> str:
        s = self.settings
        if address in s.connect:
            return s.connect[address]
        host = f"[{address}]" if ":" in address else address
        return f"{s.endpoint_scheme}://{host}:{s.endpoint_port}"

    async def request(self, pop: Population) -> RequestRecord:
        """One client request: resolve, then complete. Never raises."""
        s = self.settings
        t = time.time()
        res = await resolve(s.resolver, s.fqdn, pop.subnet, s.timeout_s)
        if res.error or not res.addresses:
            return RequestRecord(t=t, population=pop.name, outcome="dns_error", resolve_ms=res.elapsed_ms,
                                 detail=(res.error or f"no address ({res.rcode})")[:300])
        address = res.addresses[0]
        region = self.region_of(address)
        jur = self.inventory.jurisdiction_of(region) if region is not None else None
        residency_ok = not pop.jurisdictions or jur in pop.jurisdictions
        c = await complete(self.session, self._url(address), self._kind(region), model=s.model, prompt=s.prompt,
                           max_tokens=s.max_tokens, timeout_s=s.timeout_s)
        outcome: RequestOutcome
        if c.ok:
            outcome = "ok"
        elif c.refused:
            outcome = "refused"
        elif c.timed_out:
            outcome = "timeout"
        elif c.status is not None:
            outcome = "http_error"
        else:
            outcome = "error"
        return RequestRecord(t=t, population=pop.name, address=address, region=region, outcome=outcome,
                             status=c.status, latency_ms=c.latency_ms, ttft_ms=c.ttft_ms,
                             resolve_ms=res.elapsed_ms, residency_ok=residency_ok, detail=c.error[:300])

    async def _one(self, pop: Population) -> None:
        rec = await self.request(pop)
        self.records.append(rec)
        if self.on_record is not None:
            self.on_record(rec)

    async def _population(self, pop: Population, stop: asyncio.Event) -> None:
        period = 1.0 / self.settings.rps
        nxt = time.monotonic()
        while not stop.is_set() and self.sent < self.settings.max_requests:
            self.sent += 1
            task = asyncio.create_task(self._one(pop), name=f"drill-client-{pop.name}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            nxt += period
            delay = nxt - time.monotonic()
            if delay < -1.0:  # fell behind (a stalled loop): do not burst to catch up
                nxt, delay = time.monotonic(), 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, delay))

    async def _sample(self, stop: asyncio.Event) -> None:
        s = self.settings
        if s.authoritative is None:
            return
        while not stop.is_set():
            t0 = time.monotonic()
            for pop in self.populations:
                for _ in range(s.samples_per_s):
                    t = time.time()
                    res = await resolve(s.authoritative, s.fqdn, pop.subnet, min(1.0, s.timeout_s))
                    region = self.region_of(res.addresses[0]) if res.addresses else None
                    self.answers.append(AnswerSample(t, pop.name, region))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, 1.0 - (time.monotonic() - t0)))

    async def run(self, stop: asyncio.Event) -> None:
        """Send and sample until ``stop`` is set, then wait for the requests in flight (each is
        bounded by ``timeout_s`` twice: lookup and request)."""
        try:
            await asyncio.gather(*(self._population(p, stop) for p in self.populations), self._sample(stop))
        finally:
            if self._tasks:
                await asyncio.wait(set(self._tasks), timeout=2 * self.settings.timeout_s + 1)

    def client_answers(self) -> list[AnswerSample]:
        """What clients were answered, as samples (when no authoritative server is sampled)."""
        return [AnswerSample(r.t, r.population, r.region) for r in self.records if r.address]


__all__ = ["ClientLoad", "LoadSettings", "Population", "address_regions", "default_populations",
           "parse_population"]
