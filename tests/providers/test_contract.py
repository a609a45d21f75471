"""The contract every DNS provider passes, against its real or local counterpart.

Parametrised over the provider registry (``gtm.providers.registry.KINDS``) plus the embedded
server (a ``Publisher`` the controller runs itself, not in the registry), so a new provider kind
gets every case: it needs a counterpart in ``COUNTERPARTS`` or an entry in ``EXCEPTIONS`` saying
why it has none (``test_every_registered_kind_has_a_counterpart_or_an_exception`` fails
otherwise, and so does every case of a kind with neither). Counterparts:

- ``rfc2136``: a real BIND 9 (``gtm.testing.bind.BindServer``), read back over DNS; writes
  counted as UPDATE messages received (BIND's statistics channel);
- ``route53``: moto's server over HTTP (``gtm.testing.moto.ThreadedMoto``); writes counted in
  its change journal;
- ``clouddns``: the local v1 REST server (``tests/support/clouddns_server.py``); writes counted
  as change creations received;
- ``embedded``: the embedded authoritative server, queried over UDP; writes counted as updates
  applied.

The cases:

- ``converge``: plan → apply → plan gives no change (and a second publish writes nothing);
- ``dry_run``: a dry run of a plan with changes makes no write on the counterpart;
- ``values``: a weight of 0 and every TTL (0, 1, 30, 86400; ``ttl: 0`` is accepted, see the
  README's policy section) reach the provider as values: read back from the counterpart, each
  service's TTL is its own, the region at weight 0 is served by no record (providers never
  write a weight of 0: Route 53 would answer it when the others are unhealthy), and providers
  that hold weights hold the plan's;
- ``isolation``: a unit the provider refuses is named in ``PartialApplyError`` and the others
  are applied: a BIND zone whose update-policy does not allow the key (REFUSED), a Route 53
  batch refused for one service (another writer created one of its record sets: moto answers
  ``InvalidChangeBatch``; the three-batch Stubber case is in ``test_route53.py``), a Cloud DNS
  record set answered 412 every time.

A case that cannot apply to a counterpart is listed in ``NOT_APPLICABLE`` with the reason; it is
not generated (never skipped).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import dns.name
import dns.rcode
import pytest

from gtm.engine.planner import plan as engine_plan
from gtm.errors import PartialApplyError
from gtm.models.plan import DesiredState
from gtm.models.policy import Policy, Zone
from gtm.models.published import clouddns_pool_name, route53_pool_name
from gtm.providers.base import Provider, Publisher
from gtm.providers.clouddns import CloudDnsProvider
from gtm.providers.dnsclient import query
from gtm.providers.embedded_dns import EmbeddedDnsServer
from gtm.providers.geo import PrefixTable
from gtm.providers.registry import KINDS
from gtm.providers.rfc2136 import Rfc2136Provider
from gtm.providers.route53 import Route53Provider
from gtm.testing.bind import BindServer, find_named
from gtm.testing.moto import ThreadedMoto
from tests.factories import FOUR_REGIONS, T0, ZONE, eu_segment, healthy_reports, make_inventory, make_policy
from tests.factories import make_service as _make_service
from tests.providers.test_route53 import aws_env  # noqa: F401 - autouse: fake AWS credentials from the environment
from tests.support.clouddns_server import FakeCloudDns

TTLS = (0, 1, 30, 86400)
REFUSED_ZONE = "alpha.example.com"
"""A second BIND zone whose update-policy grants another key (sorts before ``ZONE``)."""
WEIGHTS = {"eu-central-1": 0, "eu-west-1": 100, "us-east-1": 50, "us-west-2": 200}
ADDR = {"eu-central-1": "192.0.2.10", "eu-west-1": "192.0.2.11", "us-east-1": "192.0.2.12", "us-west-2": "192.0.2.13"}
SERVED = {ADDR[r]: w for r, w in WEIGHTS.items() if w > 0}
"""What every provider serves for the default segment: the weight-0 region by no record."""

EXCEPTIONS: dict[str, str] = {
    "globalaccelerator": (
        "no local counterpart: moto does not implement Global Accelerator; it publishes traffic "
        "dials, not record sets; its contract (converge in zero calls, dry run, weight 0 sent as an "
        "explicit 0, one endpoint group's failure never stops the others) runs against botocore "
        "Stubber, which checks requests against the real service model, in test_globalaccelerator.py"
    ),
}
"""Registered kinds with no local counterpart, each with the reason and where it is tested."""

PUBLISHERS = ("embedded",)
"""Publishers outside the registry that take the contract too."""

CASES = ("converge", "dry_run", "values", "isolation")

NOT_APPLICABLE: dict[tuple[str, str], str] = {
    ("embedded", "dry_run"): "a Publisher only publishes: it has no plan to dry-run (gtm apply never reaches it)",
    ("embedded", "isolation"): "it swaps one in-memory snapshot in one assignment: no unit can fail apart from others",
}

# -- states ----------------------------------------------------------------------------------


def make_service(name: str, ttl: int = 30, weights: dict[str, int] = WEIGHTS) -> Any:
    return _make_service(name, routing="static", static_weights=weights, segments=[eu_segment()], ttl=ttl)


def state_of(*services: Any) -> DesiredState:
    return engine_plan(make_policy(list(services)), make_inventory(), healthy_reports(T0, list(FOUR_REGIONS)),
                       {}, None, T0)


def ttl_state() -> DesiredState:
    """One static service per TTL, ``eu-central-1`` at weight 0 in every pool."""
    return state_of(*(make_service(f"ttl{t}", ttl=t) for t in TTLS))


def fqdn(name: str) -> str:
    return f"{name}.{ZONE}"


def zoned_state(zones: dict[str, str]) -> DesiredState:
    """One service per name, in the zone given (``<name>.<zone>``)."""
    base = make_policy([make_service("chat")])
    services = [make_service(n).model_copy(update={"fqdn": f"{n}.{z}", "zone": z}) for n, z in zones.items()]
    policy = Policy.model_validate({
        **base.model_dump(), "services": [svc.model_dump() for svc in services],
        "zones": [Zone(name=z, nameservers=(f"ns1.{z}",)).model_dump() for z in sorted(set(zones.values()))],
    })
    return engine_plan(policy, make_inventory(), healthy_reports(T0, list(FOUR_REGIONS)), {}, None, T0)


# -- counterparts ------------------------------------------------------------------------------


@dataclass
class Served:
    """What the counterpart serves for a service's default segment.

    Attributes:
        ttls: the TTLs of the record sets (seconds).
        weights: address → weight; None where the provider holds no weights (plain RRsets).
    """

    ttls: set[int]
    weights: dict[str, int | None]


@dataclass
class Isolated:
    """What an isolation case did: the error, the unit expected refused, the calls made."""

    error: PartialApplyError
    refused: str
    calls: list[str] = field(default_factory=list)


class Counterpart:
    """A publisher wired to its local counterpart. Subclasses plan, read back and count writes there."""

    kind = ""

    def __init__(self, publisher: Publisher) -> None:
        self.publisher = publisher

    async def publish(self, state: DesiredState) -> bool:
        return await self.publisher.publish(state)

    async def pending(self, state: DesiredState) -> int:
        """Changes a fresh plan would make (0: converged)."""
        raise NotImplementedError

    async def dry_run(self, state: DesiredState) -> int:
        """Plan and apply as a dry run; the changes the plan held."""
        raise NotImplementedError

    async def writes(self) -> int:
        """Writes the counterpart has received (a counter that only grows)."""
        raise NotImplementedError

    async def served(self, name: str) -> Served:
        raise NotImplementedError

    async def isolation(self) -> Isolated:
        raise NotImplementedError


class ProviderCounterpart(Counterpart):
    """A record-holding ``Provider``: planned, dry-run and applied through its own API."""

    def __init__(self, provider: Provider) -> None:
        super().__init__(provider)
        self.provider = provider

    async def pending(self, state: DesiredState) -> int:
        return sum(len(p.changes) for p in await self.provider.plan_state(state))

    async def dry_run(self, state: DesiredState) -> int:
        plans = await self.provider.plan_state(state)
        for p in plans:
            result = await self.provider.apply(p, dry_run=True)
            assert result.dry_run and result.api_calls == 0
        return sum(len(p.changes) for p in plans)


class Route53Counterpart(ProviderCounterpart):
    kind = "route53"

    def __init__(self, moto: ThreadedMoto) -> None:
        self.client = boto3.client("route53", endpoint_url=moto.url, region_name="us-east-1")
        hz = self.client.create_hosted_zone(Name=ZONE, CallerReference=f"contract-{random.random()}")
        self.zone_id = hz["HostedZone"]["Id"].rsplit("/", 1)[-1]
        super().__init__(Route53Provider("r53", owner_id="gtm", zones=[ZONE], endpoint_url=moto.url,
                                         hosted_zone_ids={ZONE: self.zone_id}, max_requests_per_s=1000.0))

    def records(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for page in self.client.get_paginator("list_resource_record_sets").paginate(HostedZoneId=self.zone_id):
            out.extend(page["ResourceRecordSets"])
        return out

    async def writes(self) -> int:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.route53.models import route53_backends

        return len(route53_backends[DEFAULT_ACCOUNT_ID]["global"].zones[self.zone_id].rr_changes)

    async def served(self, name: str) -> Served:
        pool = route53_pool_name(fqdn(name), "default") + "."
        weighted = [r for r in self.records() if r["Name"] == pool and r["Type"] == "A" and "Weight" in r]
        return Served({r["TTL"] for r in weighted},
                      {v["Value"]: r["Weight"] for r in weighted for v in r["ResourceRecords"]})

    async def isolation(self) -> Isolated:
        """Another writer creates a record set gtm planned to create, between observe and apply:
        the batch is refused (``InvalidChangeBatch ... already exists``) and bisected."""
        state = state_of(make_service("api"), make_service("chat"))
        (plan,) = await self.provider.plan_state(state)
        pool = route53_pool_name(fqdn("api"), "default")
        self.client.change_resource_record_sets(HostedZoneId=self.zone_id, ChangeBatch={"Changes": [{
            "Action": "CREATE", "ResourceRecordSet": {"Name": pool + ".", "Type": "A", "SetIdentifier": "us-east-1",
                                                      "Weight": 9, "TTL": 60,
                                                      "ResourceRecords": [{"Value": "198.51.100.9"}]}}]})
        calls: list[str] = []
        client = await self.provider.client()  # type: ignore[attr-defined]

        def record(params: dict[str, Any], **_: Any) -> None:
            names = sorted({c["ResourceRecordSet"]["Name"].split(".pool.")[-1].removeprefix("_gtm-owner.").rstrip(".")
                            for c in params["ChangeBatch"]["Changes"]})
            calls.append(f"ChangeResourceRecordSets [{', '.join(names)}]")

        client.meta.events.register("provide-client-params.route-53.ChangeResourceRecordSets", record)
        with pytest.raises(PartialApplyError) as err:
            await self.provider.apply(plan, dry_run=False)
        return Isolated(err.value, f"{pool} A us-east-1", calls)


class CloudDnsCounterpart(ProviderCounterpart):
    kind = "clouddns"
    MZ = "gtm-zone"

    def __init__(self, fake: FakeCloudDns) -> None:
        self.fake = fake
        fake.add_zone(self.MZ, ZONE)
        super().__init__(CloudDnsProvider(
            "gcp", owner_id="gtm", zones=[ZONE], project=fake.project, api_endpoint=fake.url, anonymous=True,
            poll_interval_s=0.01, poll_timeout_s=5.0,
            geo_locations={"continent:EU": "europe-west1", "*": "us-central1"},
        ))

    async def writes(self) -> int:
        return self.fake.change_posts

    async def served(self, name: str) -> Served:
        rs = self.fake.rrsets(self.MZ).get((clouddns_pool_name(fqdn(name), "default") + ".", "A"))
        assert rs is not None
        return Served({rs["ttl"]}, {i["rrdatas"][0]: i["weight"] for i in rs["routingPolicy"]["wrr"]["items"]})

    async def isolation(self) -> Isolated:
        """Cloud DNS answers 412 to every change touching one record set (scripted three times:
        the zone's change, its re-send after one re-observe, whose second 412 makes the provider
        send one change per name, then that record set's own change)."""
        pool = clouddns_pool_name(fqdn("api"), "default")
        self.fake.inject(412, times=3, rrset=(pool, "A"))
        posts, done = self.fake.change_posts, len(self.fake.committed_changes)
        with pytest.raises(PartialApplyError) as err:
            await self.publish(state_of(make_service("api"), make_service("chat")))
        committed = [
            sorted({r["name"].rstrip(".").removeprefix("_gtm-owner.") for r in (*c["additions"], *c["deletions"])})
            for c in self.fake.committed_changes[done:]
        ]
        calls = [f"{self.fake.change_posts - posts} change POSTs; committed: {committed}"]
        return Isolated(err.value, f"{pool} A", calls)


class Rfc2136Counterpart(ProviderCounterpart):
    kind = "rfc2136"

    def __init__(self, bind: BindServer) -> None:
        self.bind = bind
        super().__init__(Rfc2136Provider("bind", owner_id="gtm", zones=[ZONE], **bind.provider_options()))

    async def isolation(self) -> Isolated:
        """``REFUSED_ZONE`` (sorted before ``ZONE``) grants updates to another key only: its UPDATE
        is REFUSED, ``ZONE``'s is applied (UPDATEs counted by BIND's statistics channel)."""
        both = Rfc2136Provider("bind", owner_id="gtm", zones=[REFUSED_ZONE, ZONE], **self.bind.provider_options())
        self.publisher = self.provider = both
        before = await self.writes()
        with pytest.raises(PartialApplyError) as err:
            await self.publish(zoned_state({"api": REFUSED_ZONE, "chat": ZONE}))
        updates = await self.writes() - before
        return Isolated(err.value, f"zone {REFUSED_ZONE}", [f"{updates} UPDATE messages ({REFUSED_ZONE}, {ZONE})"])

    async def writes(self) -> int:
        """UPDATE messages BIND received (its statistics channel)."""
        counts = await asyncio.to_thread(self.bind.opcode_counts)
        return counts.get("UPDATE", 0)

    async def served(self, name: str) -> Served:
        response = await query(self.bind.host, self.bind.port, fqdn(name), "A")
        assert response.rcode() == dns.rcode.NOERROR
        (rrset,) = [r for r in response.answer if r.name == dns.name.from_text(fqdn(name))]
        return Served({rrset.ttl}, {rd.to_text(): None for rd in rrset})


class EmbeddedCounterpart(Counterpart):
    kind = "embedded"

    def __init__(self, server: EmbeddedDnsServer) -> None:
        super().__init__(server)
        self.server = server

    async def pending(self, state: DesiredState) -> int:
        """The embedded server serves a state or not: 1 when its routing differs from ``state``'s."""
        return int(self.server.routing_digest != state.routing_digest())

    async def writes(self) -> int:
        return self.server.updates_applied

    async def served(self, name: str) -> Served:
        """60 unlocated queries (the default segment) with the server's seeded draws."""
        ttls: set[int] = set()
        seen: dict[str, int | None] = {}
        for _ in range(60):
            response = await query("127.0.0.1", self.server.port, fqdn(name), "A")
            for rrset in response.answer:
                ttls.add(rrset.ttl)
                seen.update({rd.to_text(): None for rd in rrset})
        return Served(ttls, seen)


@asynccontextmanager
async def _route53() -> AsyncIterator[Counterpart]:
    with ThreadedMoto() as moto:
        moto.reset()  # moto's state is per process: start from no hosted zone
        yield Route53Counterpart(moto)


@asynccontextmanager
async def _clouddns() -> AsyncIterator[Counterpart]:
    with FakeCloudDns("contract-project") as fake:
        cp = CloudDnsCounterpart(fake)
        try:
            yield cp
        finally:
            await cp.provider.aclose()  # type: ignore[attr-defined]


@asynccontextmanager
async def _rfc2136(directory: Path) -> AsyncIterator[Counterpart]:
    assert find_named() is not None, "named is missing: run scripts/ensure-bind.sh"
    with BindServer.start([REFUSED_ZONE, ZONE], directory=directory, refuse_updates=[REFUSED_ZONE],
                          statistics=True) as bind:
        yield Rfc2136Counterpart(bind)


@asynccontextmanager
async def _embedded() -> AsyncIterator[Counterpart]:
    policy = make_policy([make_service("chat")])
    server = EmbeddedDnsServer(list(policy.zones), PrefixTable(), rng=random.Random(20261208))
    await server.start("127.0.0.1", 0)
    try:
        yield EmbeddedCounterpart(server)
    finally:
        await server.stop()


COUNTERPARTS: dict[str, Callable[[Path], AbstractAsyncContextManager[Counterpart]]] = {
    "route53": lambda _: _route53(),
    "clouddns": lambda _: _clouddns(),
    "rfc2136": _rfc2136,
    "embedded": lambda _: _embedded(),
}
"""Kind → its local counterpart (given a scratch directory)."""


def _params() -> list[Any]:
    kinds = [k for k in sorted(KINDS) if k not in EXCEPTIONS] + list(PUBLISHERS)
    return [pytest.param(k, c, id=f"{k}-{c}") for k in kinds for c in CASES if (k, c) not in NOT_APPLICABLE]


@pytest.fixture
async def counterpart(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Counterpart]:
    kind = request.node.callspec.params["kind"]
    if kind not in COUNTERPARTS:
        pytest.fail(f"provider kind {kind!r} has no contract counterpart: add one to COUNTERPARTS or list it in "
                    "EXCEPTIONS with the reason")
    async with COUNTERPARTS[kind](tmp_path) as cp:
        yield cp


# -- the registry check -----------------------------------------------------------------------


def test_every_registered_kind_has_a_counterpart_or_an_exception() -> None:
    kinds = set(KINDS) | set(PUBLISHERS)
    assert kinds - set(COUNTERPARTS) - set(EXCEPTIONS) == set(), "a provider kind without a contract counterpart"
    assert not set(COUNTERPARTS) & set(EXCEPTIONS)
    assert set(COUNTERPARTS) | set(EXCEPTIONS) <= kinds, "a counterpart or exception for a kind no longer registered"
    assert {k for k, _ in NOT_APPLICABLE} <= set(COUNTERPARTS) and {c for _, c in NOT_APPLICABLE} <= set(CASES)


# -- the contract -------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "case"), _params())
async def test_contract(kind: str, case: str, counterpart: Counterpart, capsys: pytest.CaptureFixture[str]) -> None:
    assert counterpart.kind == kind
    await CONTRACT[case](counterpart, capsys)


async def converge(cp: Counterpart, _: Any) -> None:
    """plan → apply → plan gives no change; publishing again writes nothing."""
    state = ttl_state()
    assert await cp.pending(state) > 0
    assert await cp.publish(state) is True
    assert await cp.pending(state) == 0
    writes = await cp.writes()
    assert await cp.publish(state) is False
    assert await cp.writes() == writes


async def dry_run(cp: Counterpart, _: Any) -> None:
    """A dry run of a plan with changes writes nothing (counted on the counterpart)."""
    first = state_of(make_service("chat"))
    await cp.publish(first)
    writes, before = await cp.writes(), await cp.served("chat")
    moved = state_of(make_service("chat", weights={**WEIGHTS, "us-west-2": 0}))
    assert await cp.dry_run(moved) > 0
    assert await cp.writes() == writes
    assert await cp.served("chat") == before
    assert await cp.pending(moved) > 0


async def values(cp: Counterpart, _: Any) -> None:
    """Every TTL and a weight of 0 reach the provider as values (read back)."""
    await cp.publish(ttl_state())
    for ttl in TTLS:
        served = await cp.served(f"ttl{ttl}")
        assert served.ttls == {ttl}, f"ttl{ttl}: served with TTL {served.ttls}"
        assert set(served.weights) == set(SERVED), f"ttl{ttl}: {served.weights}"  # weight 0: no record
        if any(w is not None for w in served.weights.values()):
            assert served.weights == SERVED


async def isolation(cp: Counterpart, capsys: pytest.CaptureFixture[str]) -> None:
    """A refused unit is named; the others are applied."""
    found = await cp.isolation()
    err = found.error
    assert found.refused in err.failed and err.applied
    assert err.provider == cp.publisher.name and err.kind == cp.kind
    assert set(err.failed).isdisjoint(err.applied)
    served = await cp.served("chat")
    assert set(served.weights) == set(SERVED)
    with capsys.disabled():
        print(f"\n{cp.kind} isolation: calls {found.calls}; applied {len(err.applied)} unit(s) at "
              f"{_where(err.applied)}; refused {len(err.failed)} unit(s) at {_where(err.failed)}: "
              f"{err.failed[found.refused]}")


def _where(units: Any) -> list[str]:
    """The names (or zones) a list of units is at."""
    return sorted({u.split()[1] if u.startswith("zone ") else u.split()[0] for u in units})


CONTRACT: dict[str, Callable[[Counterpart, Any], Any]] = {
    "converge": converge, "dry_run": dry_run, "values": values, "isolation": isolation,
}
