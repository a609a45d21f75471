"""Unbound as a drill's caching resolver, in front of the real embedded DNS: ECS is forwarded and
cached per subnet, TTLs count down and hold the old answer until they run out."""

from __future__ import annotations

import asyncio
import random
import shutil
import time
from collections.abc import AsyncIterator

import pytest

from gtm.drills.resolve import resolve
from gtm.drills.unbound import Unbound, render_config
from gtm.errors import StartupError
from gtm.models.plan import DesiredState, PoolMember, PoolPlan, RegionStatus, SegmentRoute, ServicePlan
from gtm.models.policy import Zone
from gtm.providers.embedded_dns import EmbeddedDnsServer
from tests.factories import skip_or_fail
from tests.providers.test_embedded_dns import ADDRESSES, EU_SUBNET, NA_SUBNET, REGION_OF, make_table

APEX = "gtm.example.com"
CHAT = "chat.gtm.example.com"
ZONE = Zone(name=APEX, nameservers=("ns1.gtm.example.com",), nameserver_addresses={"ns1.gtm.example.com": "127.0.0.1"})
TTL = 3


def _state(generation: int, eu_region: str, us_region: str = "us-east-1") -> DesiredState:
    """chat.gtm.example.com: the EU segment answered by ``eu_region`` alone, the rest by
    ``us_region``; TTL ``TTL``."""
    pools = {
        "eu-chat": PoolPlan("eu-chat", "eu", (PoolMember(eu_region, 100, "test", 0.0),), "test"),
        "default-chat": PoolPlan("default-chat", "default", (PoolMember(us_region, 100, "test", 0.0),), "test"),
    }
    service = ServicePlan("chat", CHAT, APEX, TTL, (
        SegmentRoute("eu", ("EU",), (), "eu-chat", jurisdictions=("EU",)),
        SegmentRoute("default", (), (), "default-chat"),
    ))
    return DesiredState(
        generation=generation, generated_at=1000.0, policy_digest="p", held=False, hold_reason="",
        regions={r: RegionStatus(region=r, state="healthy", reason="test") for r in ADDRESSES},
        pools=pools, services={CHAT: service}, endpoints={r: (("A", a),) for r, a in ADDRESSES.items()},
    )


@pytest.fixture
async def auth() -> AsyncIterator[EmbeddedDnsServer]:
    srv = EmbeddedDnsServer([ZONE], make_table(), rng=random.Random(7))
    assert srv.update(_state(1, "eu-west-1"))
    await srv.start("127.0.0.1", 0)
    try:
        yield srv
    finally:
        await srv.stop()


@pytest.fixture
async def resolver(auth: EmbeddedDnsServer) -> AsyncIterator[Unbound]:
    if shutil.which("unbound") is None and shutil.which("/usr/sbin/unbound") is None:
        skip_or_fail("unbound is not installed (scripts/ensure-unbound.sh)")
    async with Unbound(APEX, [("127.0.0.1", auth.port)]) as ub:
        yield ub


async def _region(ub: Unbound, subnet: str) -> tuple[str, int]:
    res = await resolve(ub.address, CHAT, subnet, 2.0)
    assert res.error == "" and res.rcode == "NOERROR", res
    assert len(res.addresses) == 1
    return REGION_OF[res.addresses[0]], res.ttl


async def test_each_subnet_gets_its_segment_and_its_own_cache_entry(auth: EmbeddedDnsServer,
                                                                    resolver: Unbound) -> None:
    assert resolver.describe() == (f"unbound {resolver.version} on 127.0.0.1:{resolver.port}, "
                                   f"stub {APEX} → 127.0.0.1:{auth.port}")
    assert resolver.version.startswith("1.")
    before = auth.location_counts.get("ecs", 0)
    assert (await _region(resolver, EU_SUBNET))[0] == "eu-west-1"
    assert (await _region(resolver, NA_SUBNET))[0] == "us-east-1"
    # The authoritative server located both by the subnet Unbound forwarded (ECS), not by
    # Unbound's own address.
    assert auth.location_counts.get("ecs", 0) == before + 2
    # Asked again, from a host in the same /24: answered from the cache (Unbound cuts the /32 to
    # /24), the server is not asked.
    assert (await _region(resolver, EU_SUBNET.replace(".0/24", ".77/32")))[0] == "eu-west-1"
    assert (await _region(resolver, NA_SUBNET))[0] == "us-east-1"
    assert auth.location_counts.get("ecs", 0) == before + 2


async def test_ttl_counts_down_and_holds_the_old_answer_until_it_runs_out(auth: EmbeddedDnsServer,
                                                                          resolver: Unbound) -> None:
    region, ttl0 = await _region(resolver, EU_SUBNET)
    t0 = time.monotonic()
    assert (region, ttl0) == ("eu-west-1", TTL)
    # The plan moves the EU segment to eu-central-1; the server answers that at once...
    assert auth.update(_state(2, "eu-central-1"))
    # ...but the resolver keeps its cached answer, with the TTL counting down.
    await asyncio.sleep(1.1)
    region, ttl1 = await _region(resolver, EU_SUBNET)
    assert region == "eu-west-1"
    assert 0 <= ttl1 < ttl0
    # Once the TTL has run out the next query is asked anew and gets the new answer.
    while (await _region(resolver, EU_SUBNET))[0] == "eu-west-1":
        assert time.monotonic() - t0 < TTL + 1.5, "the old answer outlived its TTL"
        await asyncio.sleep(0.05)
    assert time.monotonic() - t0 >= TTL - 1  # Unbound counts whole seconds
    region, ttl2 = await _region(resolver, EU_SUBNET)
    assert (region, ttl2 <= TTL) == ("eu-central-1", True)


async def test_failures_are_reported_not_raised(resolver: Unbound) -> None:
    outside = await resolve(resolver.address, "www.example.org", None, 1.0)
    assert (outside.addresses, outside.rcode, outside.error) == ([], "REFUSED", "rcode REFUSED")
    nothing = await resolve(("127.0.0.1", 9), CHAT, EU_SUBNET, 0.3)
    assert nothing.addresses == [] and nothing.rcode == "" and "no response" in nothing.error
    assert nothing.elapsed_ms >= 300.0


async def test_missing_binary_says_how_to_install() -> None:
    with pytest.raises(StartupError, match="apt-get install unbound"):
        async with Unbound(APEX, [("127.0.0.1", 53)], binary="/nonexistent/unbound"):
            pass


def test_config_forwards_ecs_to_each_stub_and_keeps_ttls(tmp_path: object) -> None:
    text = render_config(tmp_path, APEX, [("127.0.0.1", 4000), ("127.0.0.2", 4001)], "127.0.0.1", 5353)  # type: ignore[arg-type]
    for line in ('module-config: "subnetcache iterator"', "send-client-subnet: 127.0.0.1",
                 "send-client-subnet: 127.0.0.2", "client-subnet-always-forward: yes", "max-client-subnet-ipv4: 24",
                 "do-not-query-localhost: no", "cache-min-ttl: 0", "prefetch: no", "serve-expired: no",
                 "stub-addr: 127.0.0.1@4000", "stub-addr: 127.0.0.2@4001", "control-enable: no"):
        assert line in text
    with pytest.raises(ValueError):
        render_config(tmp_path, 'x"; include: "/etc/passwd', [("127.0.0.1", 1)], "127.0.0.1", 1)  # type: ignore[arg-type]
