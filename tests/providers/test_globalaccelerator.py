"""Global Accelerator provider with botocore ``Stubber`` (moto has no Global Accelerator).

``Stubber`` checks every request against botocore's real service model for
``globalaccelerator`` (names, types, ranges: a dial above 100 or a weight above 255 would be
refused) and, with ``expected_params``, that each request is exactly the one written here. It
answers at botocore's ``before-call`` event, *before* the retry loop, so it cannot show a retry:
the botocore-retry test serves canned HTTP responses at ``before-send`` instead, inside the loop.

The desired states come from the real engine (``gtm.engine.planner.plan``) over the four
example regions; ``FakeListener`` only plays Global Accelerator's side of the conversation
(what ``ListEndpointGroups`` returns after each accepted update).
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import botocore.retries.standard
import pytest
from botocore.awsrequest import AWSResponse
from botocore.stub import Stubber
from pydantic import ValidationError

from gtm.controller.provider_plan import plan_providers
from gtm.controller.provider_worker import ProviderWorker
from gtm.engine.planner import plan as engine_plan
from gtm.errors import ConfigError, PermanentProviderError, TemporaryProviderError
from gtm.models.override import Override
from gtm.models.plan import DesiredState
from gtm.models.policy import Policy, ProviderConfig
from gtm.providers.globalaccelerator import GlobalAcceleratorProvider, traffic_dial
from gtm.providers.registry import build_providers
from tests.factories import (
    FOUR_REGIONS,
    T0,
    eu_segment,
    healthy_reports,
    make_inventory,
    make_override,
    make_policy,
    make_report,
    make_service,
)
from tests.support.wait import wait_until

REGIONS = sorted(FOUR_REGIONS)
ACCOUNT = "123456789012"
LISTENER = f"arn:aws:globalaccelerator::{ACCOUNT}:accelerator/1234abcd-abcd-1234-abcd-1234abcdefgh/listener/0123vxyz"
GROUP = {r: f"{LISTENER}/endpoint-group/{r.replace('-', '')}0a1b" for r in REGIONS}
ALB = {r: f"arn:aws:elasticloadbalancing:{r}:{ACCOUNT}:loadbalancer/app/chat/50dc6c495c0c9188" for r in REGIONS}
EIP = {r: f"eipalloc-0{i}23456789abcdef0" for i, r in enumerate(REGIONS)}


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Fake credentials from the environment only (never the user's files or a metadata service)."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-west-2",
        "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def settings(**kw: Any) -> dict[str, Any]:
    """Provider options: every region behind the accelerator with an ALB and an EIP."""
    out: dict[str, Any] = {
        "listener_arn": LISTENER,
        "service": "chat",
        "endpoint_groups": {r: {"arn": GROUP[r], "endpoints": [ALB[r], EIP[r]]} for r in REGIONS},
    }
    out.update(kw)
    return out


def groups_of(*regions: str) -> dict[str, Any]:
    """Options with only ``regions`` behind the accelerator (an EIP each)."""
    return settings(endpoint_groups={r: {"arn": GROUP[r], "endpoints": [EIP[r]]} for r in regions})


def provider(**kw: Any) -> GlobalAcceleratorProvider:
    return GlobalAcceleratorProvider("ga", owner_id="gtm", **settings(**kw))


def chat_policy(*, segments: Sequence[Any] = (), providers: Sequence[ProviderConfig] = ()) -> Policy:
    base = make_policy([make_service(segments=list(segments))])
    return Policy(**{**dict(base), "providers": tuple(providers)})  # validated, cross-checks included


def state_at(
    now: float,
    previous: DesiredState | None = None,
    *,
    policy: Policy | None = None,
    unhealthy: Sequence[str] = (),
    overrides: Mapping[str, Override] | None = None,
) -> DesiredState:
    reports = healthy_reports(now, REGIONS)
    for r in unhealthy:
        reports[r] = make_report(r, now, healthy=False, fail=5)
    return engine_plan(policy or chat_policy(), make_inventory(), reports, dict(overrides or {}), previous, now)


class FakeListener:
    """Global Accelerator's side: the listener's endpoint groups, changed by accepted updates."""

    def __init__(self, dial: float = 100.0, weight: int = 128, extra: Mapping[str, list[dict[str, Any]]] | None = None):
        self.groups: dict[str, dict[str, Any]] = {}
        for r in REGIONS:
            descs = [
                {"EndpointId": ALB[r], "Weight": weight, "HealthState": "HEALTHY", "ClientIPPreservationEnabled": True},
                {"EndpointId": EIP[r], "Weight": weight, "HealthState": "HEALTHY"},
                *(extra or {}).get(r, []),
            ]
            self.groups[GROUP[r]] = {
                "EndpointGroupArn": GROUP[r], "EndpointGroupRegion": r, "TrafficDialPercentage": dial,
                "EndpointDescriptions": descs, "HealthCheckProtocol": "TCP", "HealthCheckPort": 443,
                "HealthCheckIntervalSeconds": 30, "ThresholdCount": 3,
            }

    def listing(self) -> dict[str, Any]:
        return {"EndpointGroups": copy.deepcopy([self.groups[GROUP[r]] for r in REGIONS if GROUP[r] in self.groups])}

    def accept(self, params: Mapping[str, Any]) -> dict[str, Any]:
        g = self.groups[params["EndpointGroupArn"]]
        if "TrafficDialPercentage" in params:
            g["TrafficDialPercentage"] = params["TrafficDialPercentage"]
        if "EndpointConfigurations" in params:
            health = {d["EndpointId"]: d["HealthState"] for d in g["EndpointDescriptions"]}
            g["EndpointDescriptions"] = [
                {"EndpointId": c["EndpointId"], "Weight": c.get("Weight", 128), "HealthState": health[c["EndpointId"]],
                 **({"ClientIPPreservationEnabled": c["ClientIPPreservationEnabled"]}
                    if "ClientIPPreservationEnabled" in c else {})}
                for c in params["EndpointConfigurations"]
            ]
        return {"EndpointGroup": copy.deepcopy(g)}

    def dials(self) -> dict[str, float]:
        return {r: self.groups[GROUP[r]]["TrafficDialPercentage"] for r in REGIONS}

    def weights(self, region: str) -> dict[str, int]:
        return {d["EndpointId"]: d["Weight"] for d in self.groups[GROUP[region]]["EndpointDescriptions"]}


def expect_cycle(stub: Stubber, ga: FakeListener, updates: Sequence[Mapping[str, Any]] = ()) -> None:
    """One publish: the listing as GA holds it now, then exactly ``updates``, each accepted."""
    stub.add_response("list_endpoint_groups", ga.listing(), {"ListenerArn": LISTENER, "MaxResults": 100})
    for params in updates:
        stub.add_response("update_endpoint_group", ga.accept(params), dict(params))


def dial_only(region: str, dial: float) -> dict[str, Any]:
    return {"EndpointGroupArn": GROUP[region], "TrafficDialPercentage": dial}


def with_weights(region: str, dial: float, weight: int) -> dict[str, Any]:
    """An update that resends the group's endpoint list (client IP preservation kept on the ALB)."""
    return {
        "EndpointGroupArn": GROUP[region], "TrafficDialPercentage": dial,
        "EndpointConfigurations": [
            {"EndpointId": ALB[region], "Weight": weight, "ClientIPPreservationEnabled": True},
            {"EndpointId": EIP[region], "Weight": weight},
        ],
    }


# -- settings and registry -------------------------------------------------------------------


def test_policy_declares_the_provider_and_the_registry_builds_it() -> None:
    cfg = ProviderConfig(name="ga-main", kind="globalaccelerator", options=settings(endpoint_weight=200))
    policy = chat_policy(providers=[cfg])
    (built,) = build_providers(policy)
    assert isinstance(built, GlobalAcceleratorProvider)
    assert built.name == "ga-main" and built.zones == () and built.zones_of(state_at(T0)) == [LISTENER]
    assert built.in_service["eu-west-1"] == {ALB["eu-west-1"]: 200, EIP["eu-west-1"]: 200}
    mapped = settings(endpoint_groups={"us-east-1": {"arn": GROUP["us-east-1"], "endpoints": {ALB["us-east-1"]: 10}}})
    assert provider(**mapped).in_service == {"us-east-1": {ALB["us-east-1"]: 10}}


@pytest.mark.parametrize(
    ("options", "error"),
    [
        (settings(listener_arn="arn:aws:globalaccelerator::123:accelerator/x"), "is not a listener ARN"),
        (settings(endpoint_groups={"us-east-1": {"arn": GROUP["us-east-1"].replace("0123vxyz", "other"),
                                                 "endpoints": ["eipalloc-1"]}}), "is not under listener"),
        (settings(endpoint_groups={"us-east-1": {"arn": GROUP["us-east-1"], "endpoints": ["a", "a"]}}), "repeat"),
        (settings(endpoint_groups={"us-east-1": {"arn": GROUP["us-east-1"], "endpoints": ["bad\nid"]}}),
         "control characters"),
        (settings(endpoint_weight=0), "greater than or equal to 1"),
        (settings(service="nope"), "fronts unknown service 'nope'"),
        (settings(segment="eu"), "has no segment 'eu'"),
        (settings(endpoint_groups={"ap-south-1": {"arn": GROUP["us-east-1"], "endpoints": ["x"]}}),
         "regions not serving 'chat': \\['ap-south-1'\\]"),
        (settings(retry_mode="legacy"), "retry_mode"),
    ],
)
def test_invalid_settings_are_refused_with_the_policy(options: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        chat_policy(providers=[ProviderConfig(name="ga", kind="globalaccelerator", options=options)])


def test_registry_reports_invalid_options_as_a_config_error() -> None:
    policy = chat_policy(providers=[ProviderConfig(name="ga", kind="globalaccelerator", options=settings())])
    bad = policy.providers[0].model_copy(update={"options": {**settings(), "typo": 1}})  # bypasses validation
    with pytest.raises(ConfigError, match=r"(?s)provider 'ga' \(globalaccelerator\).*typo"):
        build_providers(policy.model_copy(update={"providers": (bad,)}))


# -- the mapping (pure) ----------------------------------------------------------------------


def test_traffic_dial_is_the_share_relative_to_the_largest() -> None:
    assert [traffic_dial(w, 255) for w in (255, 191, 127, 63, 1, 0)] == [100, 75, 50, 25, 1, 0]
    assert traffic_dial(100, 200) == 50 and traffic_dial(0, 0) == 0 and traffic_dial(3, 0) == 0


def test_render_follows_the_pool_with_reasons() -> None:
    steady = state_at(T0)
    failed = state_at(T0 + 1, steady, unhealthy=["us-east-1"])
    by_region = {g.region: g for g in provider().group_settings(failed)}
    assert {r: g.dial for r, g in by_region.items()} == {
        "eu-central-1": 100.0, "eu-west-1": 100.0, "us-east-1": 0.0, "us-west-2": 100.0}
    assert by_region["us-east-1"].weights == tuple(sorted({ALB["us-east-1"]: 0, EIP["us-east-1"]: 0}.items()))
    assert by_region["eu-west-1"].weights == tuple(sorted({ALB["eu-west-1"]: 128, EIP["eu-west-1"]: 128}.items()))
    assert "unhealthy" in by_region["us-east-1"].reason or "fail" in by_region["us-east-1"].reason
    assert provider().render(failed) == provider().render(failed)  # deterministic


def test_a_residency_pinned_segment_cannot_be_fronted_by_an_accelerator_spanning_jurisdictions(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = chat_policy(segments=[eu_segment()])
    state = state_at(T0, policy=policy)
    with pytest.raises(PermanentProviderError, match=r"pinned to EU.*us-east-1, us-west-2.*never by client location"):
        provider().render(state)
    # Not strict: a warning, and the dials follow the catch-all pool.
    assert {g.dial for g in provider(strict=False).group_settings(state)} == {100.0}
    assert "cannot keep those clients in their jurisdiction" in caplog.text
    # An accelerator fronting only the EU regions breaks no pin.
    eu_only = groups_of("eu-central-1", "eu-west-1")
    assert len(provider(**eu_only).render(state)) == 2


def test_a_dark_pool_is_refused_rather_than_letting_the_accelerator_fail_open() -> None:
    policy = make_policy([make_service(segments=[])], on_all_unhealthy="fail-open")
    steady = state_at(T0, policy=policy)
    only_us = groups_of("us-east-1", "us-west-2")
    dark = state_at(T0 + 1, steady, policy=policy, unhealthy=["us-east-1", "us-west-2"])
    with pytest.raises(PermanentProviderError, match="cannot go dark"):
        provider(**only_us).render(dark)
    assert {g.dial for g in provider(strict=False, **only_us).group_settings(dark)} == {0.0}


# -- the exact call sequences (Stubber) ------------------------------------------------------


async def stubbed(p: GlobalAcceleratorProvider) -> Stubber:
    return Stubber(await p.client())


async def test_in_sync_makes_no_update_call() -> None:
    p, ga = provider(), FakeListener()
    with await stubbed(p) as stub:
        expect_cycle(stub, ga)  # every dial 100, every weight 128: what the healthy plan wants
        assert await p.publish(state_at(T0)) is False
        stub.assert_no_pending_responses()
    assert p.api_calls == 1


async def test_a_drain_steps_the_dial_down_then_sends_weight_zero() -> None:
    p, ga = provider(), FakeListener()
    steady = state_at(T0)
    drain = {"us-west-2": make_override("us-west-2", since=T0 + 1)}
    states = [steady]
    for i in range(1, 6):
        states.append(state_at(T0 + i, states[-1], overrides=drain))
    with await stubbed(p) as stub:
        expect_cycle(stub, ga)                                           # steady: in sync
        expect_cycle(stub, ga, [dial_only("us-west-2", 75.0)])           # 255 → 191
        expect_cycle(stub, ga, [dial_only("us-west-2", 50.0)])           # 191 → 127
        expect_cycle(stub, ga, [dial_only("us-west-2", 25.0)])           # 127 → 63
        expect_cycle(stub, ga, [with_weights("us-west-2", 0.0, 0)])      # 63 → 0: dial 0 and weight 0, explicit
        expect_cycle(stub, ga)                                           # drained and held: nothing sent
        wrote = [await p.publish(s) for s in states]
        stub.assert_no_pending_responses()
    assert wrote == [False, True, True, True, True, False]
    assert p.api_calls == 6 + 4
    assert ga.dials() == {"eu-central-1": 100.0, "eu-west-1": 100.0, "us-east-1": 100.0, "us-west-2": 0.0}
    assert ga.weights("us-west-2") == {ALB["us-west-2"]: 0, EIP["us-west-2"]: 0}
    assert ga.groups[GROUP["us-west-2"]]["EndpointDescriptions"][0]["ClientIPPreservationEnabled"] is True


async def test_a_failover_is_one_call_to_zero_and_the_return_ramps_back_in_steps() -> None:
    p, ga = provider(), FakeListener()
    steady = state_at(T0)
    back = [state_at(T0 + 1, steady, unhealthy=["eu-west-1"])]
    for i in range(2, 8):
        back.append(state_at(T0 + i, back[-1]))
    ramp = [s.pool_for("chat.gtm.example.com", "default").weight_of("eu-west-1") for s in back]  # type: ignore[union-attr]
    assert ramp == [0, 64, 128, 192, 255, 255, 255]  # the engine: out at once, back in planned steps
    with await stubbed(p) as stub:
        expect_cycle(stub, ga, [with_weights("eu-west-1", 0.0, 0)])     # failed: dial 0, weights 0, one call
        expect_cycle(stub, ga, [with_weights("eu-west-1", 25.0, 128)])  # back: weights restored, dial low
        expect_cycle(stub, ga, [dial_only("eu-west-1", 50.0)])
        expect_cycle(stub, ga, [dial_only("eu-west-1", 75.0)])
        expect_cycle(stub, ga, [dial_only("eu-west-1", 100.0)])
        expect_cycle(stub, ga)
        expect_cycle(stub, ga)
        wrote = [await p.publish(s) for s in back]
        stub.assert_no_pending_responses()
    assert wrote == [True, True, True, True, True, False, False]
    assert ga.dials()["eu-west-1"] == 100.0
    assert ga.weights("eu-west-1") == {ALB["eu-west-1"]: 128, EIP["eu-west-1"]: 128}


async def test_throttling_reported_by_the_api_is_temporary_and_the_next_cycle_sends_only_what_failed() -> None:
    """What ``Stubber`` can show: a ``ThrottlingException`` that reaches the provider (after
    botocore's retries, which ``Stubber`` bypasses) fails only that group's update; the other
    group is applied, the error is temporary, and the next publish resends only the group
    still out of line."""
    p, ga = provider(), FakeListener()
    failed = state_at(T0 + 1, state_at(T0), unhealthy=["eu-west-1", "us-east-1"])
    with await stubbed(p) as stub:
        stub.add_response("list_endpoint_groups", ga.listing(), {"ListenerArn": LISTENER, "MaxResults": 100})
        stub.add_client_error("update_endpoint_group", service_error_code="ThrottlingException",
                              service_message="Rate exceeded", http_status_code=400,
                              expected_params=with_weights("eu-west-1", 0.0, 0))
        stub.add_response("update_endpoint_group", ga.accept(with_weights("us-east-1", 0.0, 0)),
                          with_weights("us-east-1", 0.0, 0))
        with pytest.raises(TemporaryProviderError, match=r"1 of 2 endpoint group update\(s\) failed, 1 applied: "
                                                         r"eu-west-1: .*ThrottlingException") as err:
            await p.publish(failed)
        assert err.value.delay >= 5.0
        expect_cycle(stub, ga, [with_weights("eu-west-1", 0.0, 0)])  # the retry: only the group that failed
        assert await p.publish(failed) is True
        stub.assert_no_pending_responses()
    assert ga.dials() == {"eu-central-1": 100.0, "eu-west-1": 0.0, "us-east-1": 0.0, "us-west-2": 100.0}


async def test_a_permanent_failure_of_one_group_does_not_block_the_others() -> None:
    p, ga = provider(), FakeListener()
    failed = state_at(T0 + 1, state_at(T0), unhealthy=["eu-central-1", "us-west-2"])
    with await stubbed(p) as stub:
        stub.add_response("list_endpoint_groups", ga.listing(), {"ListenerArn": LISTENER, "MaxResults": 100})
        stub.add_client_error("update_endpoint_group", service_error_code="AccessDeniedException",
                              http_status_code=403, expected_params=with_weights("eu-central-1", 0.0, 0))
        stub.add_response("update_endpoint_group", ga.accept(with_weights("us-west-2", 0.0, 0)),
                          with_weights("us-west-2", 0.0, 0))
        with pytest.raises(PermanentProviderError, match=r"eu-central-1: .*AccessDeniedException") as err:
            await p.publish(failed)
        stub.assert_no_pending_responses()
    # The detail names only the failed group (str() also names the API endpoint, in us-west-2).
    assert "1 applied" in err.value.detail and "us-west-2" not in err.value.detail
    assert ga.dials()["us-west-2"] == 0.0 and p.api_calls == 3


async def test_foreign_endpoints_are_kept_and_missing_ones_never_created() -> None:
    foreign = {"us-east-1": [{"EndpointId": "i-0abc", "Weight": 7, "HealthState": "HEALTHY"}]}
    p, ga = provider(), FakeListener(extra=foreign)
    ga.groups[GROUP["eu-west-1"]]["EndpointDescriptions"].pop()  # the EIP is not attached there
    failed = state_at(T0 + 1, state_at(T0), unhealthy=["us-east-1", "eu-west-1"])
    with await stubbed(p) as stub:
        expect_cycle(stub, ga, [
            {"EndpointGroupArn": GROUP["eu-west-1"], "TrafficDialPercentage": 0.0,
             "EndpointConfigurations": [
                 {"EndpointId": ALB["eu-west-1"], "Weight": 0, "ClientIPPreservationEnabled": True}]},
            {**with_weights("us-east-1", 0.0, 0), "EndpointConfigurations": [
                *with_weights("us-east-1", 0.0, 0)["EndpointConfigurations"], {"EndpointId": "i-0abc", "Weight": 7}]},
        ])
        (plan,) = await p.plan_state(failed)
        assert any("i-0abc=7" in c and "kept at their weights" in c for c in plan.conflicts)
        assert any(EIP["eu-west-1"] in c and "not added" in c for c in plan.conflicts)
        await p.apply(plan, dry_run=False)
        stub.assert_no_pending_responses()


async def test_a_group_missing_from_the_listener_fails_the_publish_after_the_others() -> None:
    p, ga = provider(), FakeListener()
    del ga.groups[GROUP["eu-central-1"]]
    failed = state_at(T0 + 1, state_at(T0), unhealthy=["us-east-1"])
    with await stubbed(p) as stub:
        expect_cycle(stub, ga, [with_weights("us-east-1", 0.0, 0)])  # the other groups are still updated
        with pytest.raises(PermanentProviderError, match="eu-central-1: endpoint group not found"):
            await p.publish(failed)
        stub.assert_no_pending_responses()


async def test_listing_follows_next_token() -> None:
    p, ga = provider(), FakeListener()
    groups = ga.listing()["EndpointGroups"]
    with await stubbed(p) as stub:
        stub.add_response("list_endpoint_groups", {"EndpointGroups": groups[:2], "NextToken": "t1"},
                          {"ListenerArn": LISTENER, "MaxResults": 100})
        stub.add_response("list_endpoint_groups", {"EndpointGroups": groups[2:]},
                          {"ListenerArn": LISTENER, "MaxResults": 100, "NextToken": "t1"})
        observed = await p.observe()
        stub.assert_no_pending_responses()
    assert sorted(rs.set_identifier or "" for rs in observed.owned) == REGIONS


async def test_plan_providers_shows_the_dial_changes() -> None:
    policy = chat_policy(providers=[ProviderConfig(name="ga", kind="globalaccelerator", options=settings())])
    (p,) = build_providers(policy)
    assert isinstance(p, GlobalAcceleratorProvider)
    ga = FakeListener()
    failed = state_at(T0 + 1, state_at(T0), unhealthy=["us-east-1"])
    with await stubbed(p) as stub:
        expect_cycle(stub, ga)
        (outcome,) = await plan_providers(policy, failed, providers=[p])
        stub.assert_no_pending_responses()
    (zone,) = outcome.to_dict()["zones"]
    assert zone["zone"] == LISTENER and zone["summary"] == {"create": 0, "update": 1, "delete": 0}
    (change,) = zone["changes"]
    assert change["set_identifier"] == "us-east-1" and change["weight"] == 0
    assert change["old"][0] == "dial=100" and change["new"] == ["dial=0", *sorted(f"{e}=0" for e in (ALB["us-east-1"],
                                                                                                    EIP["us-east-1"]))]


async def test_the_provider_worker_records_the_error_then_the_applied_generation(redis_store: Any) -> None:
    """What ``gtm status`` shows: the worker publishing to the accelerator records a throttled
    publish as ``last_error`` in ``applied:ga``, retries after its backoff, and then records the
    applied generation with no error."""
    p, ga = provider(), FakeListener()
    failed = state_at(T0 + 1, state_at(T0), unhealthy=["us-east-1"])
    worker = ProviderWorker(p, redis_store, retry_initial_s=0.01, retry_max_s=0.05)
    stop = asyncio.Event()
    with await stubbed(p) as stub:
        stub.add_response("list_endpoint_groups", ga.listing(), {"ListenerArn": LISTENER, "MaxResults": 100})
        stub.add_client_error("update_endpoint_group", service_error_code="ThrottlingException", http_status_code=400,
                              expected_params=with_weights("us-east-1", 0.0, 0))
        expect_cycle(stub, ga, [with_weights("us-east-1", 0.0, 0)])
        task = asyncio.create_task(worker.run(stop))
        worker.submit(failed)

        async def applied() -> bool:
            info = await redis_store.get_applied("ga") or {}
            return info.get("generation") == failed.generation and info.get("last_error") == ""

        try:
            await wait_until(applied)
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
        stub.assert_no_pending_responses()
    assert worker.errors == 1 and worker.publishes == 1  # one throttled publish, then one that wrote
    info = await redis_store.get_applied("ga")
    assert info["wrote"] is True and info["last_error_at"] is not None  # the error was recorded, then cleared
    assert ga.dials()["us-east-1"] == 0.0


# -- throttling inside botocore's retry loop -------------------------------------------------


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


class HttpStubber:
    """Canned JSON-protocol HTTP responses served at ``before-send``, inside botocore's retry
    loop; every request must be expected and none reaches a network."""

    def __init__(self, client: Any) -> None:
        self.pending: list[tuple[str, int, dict[str, Any]]] = []
        self.attempts: list[str] = []
        client.meta.events.register_first("before-send", self._send)

    def add(self, operation: str, status: int, body: Mapping[str, Any]) -> None:
        self.pending.append((operation, status, dict(body)))

    def _send(self, request: Any, event_name: str = "", **_: Any) -> AWSResponse:
        operation = event_name.rsplit(".", 1)[-1]
        self.attempts.append(operation)
        assert self.pending, f"unexpected request {operation}"
        expected, status, body = self.pending.pop(0)
        assert operation == expected, f"expected {expected}, got {operation}"
        headers = {"Content-Type": "application/x-amz-json-1.1", "x-amzn-RequestId": "gtm-test"}
        return AWSResponse(request.url, status, headers, _Raw(json.dumps(body).encode()))


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """botocore's standard backoff without the seconds of sleep; records each retry."""
    delays: list[Any] = []

    def delay_amount(self: Any, context: Any) -> float:
        delays.append(context)
        return 0.001

    monkeypatch.setattr(botocore.retries.standard.ExponentialBackoff, "delay_amount", delay_amount)
    return delays


@pytest.mark.parametrize("mode", ["standard", "adaptive"])
async def test_throttling_is_retried_by_botocores_retry_mode(fast_backoff: list[Any], mode: str) -> None:
    p, ga = provider(retry_mode=mode, max_attempts=4), FakeListener()
    failed = state_at(T0 + 1, state_at(T0), unhealthy=["us-east-1"])
    http = HttpStubber(await p.client())
    throttled = {"__type": "ThrottlingException", "message": "Rate exceeded"}
    http.add("ListEndpointGroups", 200, json.loads(json.dumps(ga.listing())))
    http.add("UpdateEndpointGroup", 400, throttled)
    http.add("UpdateEndpointGroup", 400, throttled)
    http.add("UpdateEndpointGroup", 200, json.loads(json.dumps(ga.accept(with_weights("us-east-1", 0.0, 0)))))
    assert await p.publish(failed) is True
    assert not http.pending
    assert http.attempts == ["ListEndpointGroups"] + ["UpdateEndpointGroup"] * 3
    assert p.api_calls == 2 and len(fast_backoff) == 2  # two logical calls; two retries inside botocore


async def test_a_throttling_storm_longer_than_the_retries_is_temporary(fast_backoff: list[Any]) -> None:
    p = provider(max_attempts=2)
    http = HttpStubber(await p.client())
    for _ in range(3):
        http.add("ListEndpointGroups", 400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
    with pytest.raises(TemporaryProviderError, match="ThrottlingException"):
        await p.publish(state_at(T0))
    assert not http.pending and len(http.attempts) == 3
