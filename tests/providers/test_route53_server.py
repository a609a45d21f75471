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

from gtm.errors import PartialApplyError
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


async def test_a_refused_service_is_isolated_and_the_other_applied_over_http(aws: Aws) -> None:
    """Between observe and apply another writer creates a record set gtm planned to create (same
    name, type and SetIdentifier): moto refuses the batch (``InvalidChangeBatch ... already
    exists``). The provider bisects: the ``api`` service is refused whole, ``chat`` is applied; the
    next plan leaves the foreign record set alone and has nothing else to do."""
    provider = aws.provider()
    state = engine_state(make_policy([make_service(segments=[eu_segment()]), make_service("api")]))
    (plan,) = await provider.plan_state(state)
    api_pool = f"default.pool.api.{ZONE}"
    aws.add({"Name": api_pool + ".", "Type": "A", "SetIdentifier": "us-east-1", "Weight": 9, "TTL": 60,
             "ResourceRecords": [{"Value": "198.51.100.9"}]})
    calls = provider.api_calls
    with pytest.raises(PartialApplyError) as err:
        await provider.apply(plan, dry_run=False)
    assert provider.api_calls - calls == 3  # the batch, then api alone (refused), then chat alone
    failed, applied = err.value.failed, err.value.applied
    assert f"{api_pool} A us-east-1" in failed and not err.value.temporary
    assert all(u.split()[0].removeprefix("_gtm-owner.").endswith(f"api.{ZONE}") for u in failed)
    assert all(why.startswith("InvalidChangeBatch: Tried to create resource record set") for why in failed.values())
    assert {u.split()[0] for u in applied} >= {CHAT, EU_POOL, DEFAULT_POOL}
    records = aws.records()
    assert resolve(records, CHAT, "A", "EU", "DE") == {ADDR["eu-central-1"], ADDR["eu-west-1"]}
    assert weights_at(records, api_pool) == {"us-east-1": 9}  # the other writer's, untouched
    (again,) = await provider.plan_state(state)
    assert again.empty and any(api_pool in c for c in again.conflicts)


async def test_deleting_a_record_set_someone_removed_is_refused_and_isolated_over_http(aws: Aws) -> None:
    """After observe, another writer deletes one region's weighted record set of ``api``; the
    failover plan deletes it too: Route 53 (moto with ``MOTO_FIX``) refuses the batch (``not
    found``). ``api`` is refused whole, ``chat``'s failover applied; the next plan converges."""
    provider = aws.provider()
    policy = make_policy([make_service(segments=[eu_segment()]), make_service("api")])
    healthy = engine_state(policy)
    await converge(provider, healthy)
    failed = engine_state(policy, unhealthy=["us-east-1"], previous=healthy, now=T0 + 1)
    (plan,) = await provider.plan_state(failed)
    api_pool = f"default.pool.api.{ZONE}"
    (gone,) = [r for r in aws.records() if r["Name"] == api_pool + "." and r.get("SetIdentifier") == "us-east-1"]
    aws.client.change_resource_record_sets(HostedZoneId=aws.zone_id, ChangeBatch={"Changes": [
        {"Action": "DELETE", "ResourceRecordSet": gone}]})
    with pytest.raises(PartialApplyError) as err:
        await provider.apply(plan, dry_run=False)
    assert err.value.failed == {f"{api_pool} A us-east-1": (
        f"InvalidChangeBatch: [Tried to delete resource record set [name='{api_pool}.', type='A', "
        "set-identifier='us-east-1'] but it was not found]")}
    assert f"{DEFAULT_POOL} A us-east-1" in err.value.applied
    records = aws.records()
    assert weights_at(records, DEFAULT_POOL) == {r: 255 for r in REGIONS if r != "us-east-1"}
    assert "us-east-1" not in weights_at(records, api_pool)
    assert await converge(provider, failed) == 0  # what was refused is already so
