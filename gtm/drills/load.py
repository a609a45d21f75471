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

from gtm.agent.completion import CLIENT_HEADER, complete
from gtm.drills.judge import AnswerSample
from gtm.drills.resolve import resolve
from gtm.errors import UsageError
from gtm.models.drill import RequestOutcome, RequestRecord
from gtm.models.policy import Segment, Service
from gtm.models.region import DEFAULT_PROBE_API, Inventory

CLIENT_SUBNETS = 16
"""ECS subnets (/24) a population's clients are spread over."""


@dataclass(frozen=True)
class Population:
    """Clients of one network: ``name`` (e.g. the segment ``eu``), ``subnet`` (a CIDR, e.g.
    ``100.96.0.0/16``) and the ``jurisdictions`` every answer must stay in (empty: any).

    Clients sit behind many resolvers: the load sends ECS subnets taken in turn from the first
    ``CLIENT_SUBNETS`` /24s (IPv6: /56s) of ``subnet`` (just ``subnet`` when it is that small),
    so a caching resolver holds one answer per /24, as it does for real clients.
    """

    name: str
    subnet: str
    jurisdictions: tuple[str, ...] = ()

    def client_subnets(self, n: int = 0) -> list[str]:
        """Up to ``n`` (default ``CLIENT_SUBNETS``) ECS subnets inside ``subnet``."""
        net = ipaddress.ip_network(self.subnet, strict=False)
        size = 24 if net.version == 4 else 56
        if net.prefixlen >= size:
            return [str(net)]
        return [str(s) for s, _ in zip(net.subnets(new_prefix=size), range(n or CLIENT_SUBNETS), strict=False)]


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
        samples_per_s: authoritative queries per population per second (spread over the
            second).
        client_id: sent as ``X-GTM-Client`` (the simulator counts requests per client).
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
    client_id: str = "gtm-drill"


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
            out.append(Population(seg.name, geo.client_networks[0], tuple(jur)))
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
        self._subnets = {p.name: p.client_subnets() for p in populations}
        self._turn: dict[str, int] = {}

    def region_of(self, address: str) -> str | None:
        return self._regions.get(address)

    def _kind(self, region: str | None) -> str:
        """The completion API kind of the region's first serving source (OpenAI-style by default)."""
        reg = self.inventory.regions.get(region) if region is not None else None
        kinds = [src.kind for src in reg.fleet if src.kind in DEFAULT_PROBE_API] if reg is not None else []
        return kinds[0] if kinds else "vllm"

    def _url(self, address: str) -> str:
        s = self.settings
        if address in s.connect:
            return s.connect[address]
        host = f"[{address}]" if ":" in address else address
        return f"{s.endpoint_scheme}://{host}:{s.endpoint_port}"

    def _next_subnet(self, pop: Population, turn: str = "client") -> str:
        subnets = self._subnets.get(pop.name) or pop.client_subnets()
        i = self._turn.get(f"{turn}:{pop.name}", 0)
        self._turn[f"{turn}:{pop.name}"] = i + 1
        return subnets[i % len(subnets)]

    async def request(self, pop: Population) -> RequestRecord:
        """One client request: resolve, then complete. Never raises."""
        s = self.settings
        t = time.time()
        res = await resolve(s.resolver, s.fqdn, self._next_subnet(pop), s.timeout_s)
        if res.error or not res.addresses:
            return RequestRecord(t=t, population=pop.name, outcome="dns_error", resolve_ms=res.elapsed_ms,
                                 detail=(res.error or f"no address ({res.rcode})")[:300])
        address = res.addresses[0]
        region = self.region_of(address)
        jur = self.inventory.jurisdiction_of(region) if region is not None else None
        residency_ok = not pop.jurisdictions or jur in pop.jurisdictions
        c = await complete(self.session, self._url(address), self._kind(region), model=s.model, prompt=s.prompt,
                           max_tokens=s.max_tokens, timeout_s=s.timeout_s, headers={CLIENT_HEADER: s.client_id})
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
        period = 1.0 / s.samples_per_s
        while not stop.is_set():
            t0 = time.monotonic()
            for pop in self.populations:
                t = time.time()
                res = await resolve(s.authoritative, s.fqdn, self._next_subnet(pop, "sample"), min(1.0, s.timeout_s))
                region = self.region_of(res.addresses[0]) if res.addresses else None
                self.answers.append(AnswerSample(t, pop.name, region))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, period - (time.monotonic() - t0)))

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
