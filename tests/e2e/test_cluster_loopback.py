"""A loopback Cluster, as a drill's clients see it: the service name resolves (directly and through
Unbound) to a region's own 127.0.1.x address, and a completion sent to ``http://<answer>:P``
reaches that region's fleet, which counts it."""

from __future__ import annotations

import shutil

import aiohttp
import pytest

from gtm.agent.completion import CLIENT_HEADER, complete
from gtm.drills.resolve import resolve
from gtm.drills.unbound import Unbound
from gtm.testing.cluster import EU_CLIENT, FQDN, US_CLIENT, Cluster
from gtm.testing.redis import RedisProcess
from tests.factories import skip_or_fail

pytestmark = pytest.mark.e2e

EU_REGIONS = {"eu-west-1", "eu-central-1"}


@pytest.fixture
def redis_proc():
    with RedisProcess() as r:
        yield r


async def _served(http: aiohttp.ClientSession, c: Cluster, client: str) -> dict[str, int]:
    """Completions each region's fleet served for ``client``."""
    out = {}
    for region in c.fleet_ports:
        async with http.get(c.fleet_url(region) + "/_sim/state") as resp:
            state = await resp.json()
        out[region] = state["completions_by_client"].get(client, {}).get("served", 0)
    return out


async def test_answer_leads_to_the_answered_regions_fleet(redis_proc: RedisProcess) -> None:
    if shutil.which("unbound") is None and shutil.which("/usr/sbin/unbound") is None:
        skip_or_fail("unbound is not installed (scripts/ensure-unbound.sh)")
    async with Cluster(redis_proc.url, endpoints="loopback", ttl=5) as c, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        port = c.endpoint_port
        assert set(c.fleet_ports.values()) == {port}
        assert c.address_to_region == {"127.0.1.1": "us-east-1", "127.0.1.2": "us-west-2",
                                       "127.0.1.3": "eu-west-1", "127.0.1.4": "eu-central-1"}
        assert c.fleet_url("eu-west-1") == f"http://127.0.1.3:{port}"
        async with Unbound("gtm.example.com", [c.dns_address]) as ub:
            for subnet, allowed, client in ((EU_CLIENT, EU_REGIONS, "test/eu"),
                                            (US_CLIENT, set(c.address_to_region.values()), "test/us")):
                direct = await resolve(c.dns_address, FQDN, subnet, 1.0)
                cached = await resolve(ub.address, FQDN, subnet, 2.0)
                for res in (direct, cached):
                    assert res.error == "" and len(res.addresses) == 1, res
                    assert c.address_to_region[res.addresses[0]] in allowed
                assert direct.ttl == 5 and 0 <= cached.ttl <= 5
                answered = c.address_to_region[cached.addresses[0]]
                before = await _served(http, c, client)
                done = await complete(http, f"http://{cached.addresses[0]}:{port}", "vllm",
                                      model="llama-3.1-8b", timeout_s=3, headers={CLIENT_HEADER: client})
                assert done.ok, done.error
                after = await _served(http, c, client)
                # exactly the answered region's fleet served it
                assert {r: after[r] - before[r] for r in after} == {r: int(r == answered) for r in after}
