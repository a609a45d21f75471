"""Route 53 provider against moto's server, over HTTP with ``endpoint_url``.

The server is ``gtm.testing.moto.ThreadedMoto`` (moto's ``ThreadedMotoServer`` in a thread of
this process, with ``MOTO_FIX`` applied in-process): the HTTP path is the point here, not a
process boundary (the provider drill runs moto as a child process). Started once per module;
each test resets it with ``POST /moto-api/reset``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gtm.testing.moto import ThreadedMoto
from tests.factories import T0, ZONE, eu_segment, make_policy, make_service
from tests.providers.test_route53 import (
    ADDR,
    CHAT,
    DEFAULT_POOL,
    EU_POOL,
    REGIONS,
    Aws,
    aws_env,  # noqa: F401 - autouse fixture: fake credentials from the environment only
    converge,
    engine_state,
    make_aws,
    measure_big_change,
    resolve,
    weights_at,
)


@pytest.fixture(scope="module")
def moto_server() -> Iterator[ThreadedMoto]:
    with ThreadedMoto() as server:
        yield server


@pytest.fixture
def aws(moto_server: ThreadedMoto) -> Aws:
    moto_server.reset()
    return make_aws(moto_server.url)


async def test_apply_failover_steady_state_and_dry_run_over_http(aws: Aws) -> None:
    provider = aws.provider()
    healthy = engine_state()
    assert await converge(provider, healthy) == 1
    records = aws.records()
    assert weights_at(records, EU_POOL) == {"eu-central-1": 255, "eu-west-1": 255}
    assert resolve(records, CHAT, "A", "NA") == set(ADDR.values())
    (plan,) = await provider.plan_state(healthy)
    assert plan.empty and (await provider.apply(plan, dry_run=False)).api_calls == 0

    failed = engine_state(unhealthy=["us-east-1"], previous=healthy, now=T0 + 1)
    (plan,) = await provider.plan_state(failed)
    calls = provider.api_calls
    assert (await provider.apply(plan)).dry_run  # dry run: nothing sent
    assert provider.api_calls == calls and aws.records() == records
    assert (await provider.apply(plan, dry_run=False)).api_calls == 1
    assert weights_at(aws.records(), DEFAULT_POOL) == {r: 255 for r in REGIONS if r != "us-east-1"}


async def test_dark_eu_pool_over_http(aws: Aws) -> None:
    provider = aws.provider()
    await converge(provider, engine_state())
    await converge(provider, engine_state(unhealthy=["eu-west-1", "eu-central-1"]))
    records = aws.records()
    assert resolve(records, CHAT, "A", "EU", "DE") == set()
    assert resolve(records, CHAT, "A", "NA") == {ADDR["us-east-1"], ADDR["us-west-2"]}


async def test_two_installations_over_http(aws: Aws) -> None:
    a = aws.provider(owner_id="team-a")
    state_a = engine_state()
    await converge(a, state_a)
    mine = aws.records()
    b = aws.provider(owner_id="team-b")
    policy_b = make_policy([make_service(segments=[eu_segment()]), make_service("batch")])
    await converge(b, engine_state(policy_b))
    await converge(b, engine_state(policy_b, unhealthy=["us-east-1"], now=T0 + 1), force=True)
    after = aws.records()
    assert [r for r in after if r in mine] == mine
    assert "us-east-1" not in weights_at(after, f"default.pool.batch.{ZONE}")
    (plan,) = await a.plan_state(state_a)
    assert plan.empty


@pytest.mark.e2e  # a scale run (2,500 record sets): left out of the fast loop
async def test_2500_record_sets_over_http(aws: Aws, capsys: pytest.CaptureFixture[str]) -> None:
    provider = aws.provider(max_requests_per_s=5.0)
    figures: dict[str, Any] = await measure_big_change(provider)
    assert figures["steady"]["apply_calls"] == 0
    with capsys.disabled():
        print(f"\nroute53 (moto server) 2,500-record figures: {figures}")
