"""Anycast announcements from the pool plan (``gtm.engine.anycast`` through ``plan()``)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import pytest

from gtm.engine import plan
from gtm.engine.anycast import preference, prefix_specs
from gtm.engine.verify import Scenario, _check_anycast, verify
from gtm.models.plan import Announcement, DesiredState
from gtm.models.policy import Policy
from gtm.models.region import Inventory
from gtm.models.rollout import WeightCap
from gtm.providers.records import dns_services
from tests.factories import (
    T0,
    eu_segment,
    healthy_reports,
    make_inventory,
    make_override,
    make_policy,
    make_report,
    make_service,
    weights,
)
from tests.support.anycast import EU_PREFIX, SERVICE_PREFIX, actions, by_region, with_anycast, with_bgp

EU = ("eu-central-1", "eu-west-1")
ALL = ("eu-central-1", "eu-west-1", "us-east-1", "us-west-2")
CHAT = "chat.gtm.example.com"


def anycast_policy(**safety: object) -> Policy:
    svc = with_anycast(make_service(segments=[eu_segment()]), SERVICE_PREFIX, {"eu": EU_PREFIX})
    return make_policy([svc], **safety)


def inventory(regions: tuple[str, ...] | None = None) -> Inventory:
    return with_bgp(make_inventory(), regions)


def first(policy: Policy | None = None, inv: Inventory | None = None,
          spare: Mapping[str, float] | None = None) -> DesiredState:
    policy = policy or anycast_policy()
    return plan(policy, inv or inventory(), healthy_reports(T0, spare or ALL), {}, None, T0)


@pytest.mark.parametrize(
    ("weight", "expected"),
    [
        (255, (0, 0)),
        (192, (0, 25)),   # r = 0.753: still full preference by prepends, MED 25
        (191, (1, 25)),   # r = 0.749
        (102, (1, 60)),   # r = 0.4
        (101, (2, 60)),   # r = 0.396
        (39, (2, 85)),    # r = 0.153
        (38, (3, 85)),    # r = 0.149
        (1, (3, 100)),
    ],
)
def test_preference_mapping_of_the_share(weight: int, expected: tuple[int, int]) -> None:
    assert preference(weight, 255) == expected


def test_steady_state_announces_every_eligible_region_at_full_preference() -> None:
    state = first()
    eu = by_region(state, EU_PREFIX)
    assert sorted(eu) == list(EU), "the EU segment's prefix is only ever announced from EU regions"
    assert all((a.action, a.prepend, a.med, a.share) == ("announce", 0, 0, 0.5) for a in eu.values())
    default = by_region(state, SERVICE_PREFIX)
    assert sorted(default) == list(ALL)
    assert all((a.action, a.prepend, a.med, a.share) == ("announce", 0, 0, 0.25) for a in default.values())
    assert all("weight 255 of 255" in a.reason for a in default.values())
    changes = [d for d in state.decisions if d.subject == f"anycast {EU_PREFIX}"]
    assert sorted(d.action for d in changes) == [
        "eu-central-1 - → announce (prepend 0, MED 0)", "eu-west-1 - → announce (prepend 0, MED 0)"]


def test_a_reduced_share_is_announced_less_preferred() -> None:
    state = first(spare={"eu-central-1": 10.0, "eu-west-1": 5.0, "us-east-1": 10.0, "us-west-2": 10.0})
    w = weights(state, CHAT, "eu")
    assert w == {"eu-central-1": 255, "eu-west-1": 128}
    eu = by_region(state, EU_PREFIX)
    assert (eu["eu-central-1"].prepend, eu["eu-central-1"].med) == (0, 0)
    assert (eu["eu-west-1"].prepend, eu["eu-west-1"].med) == (1, 50)  # r = 128/255 = 0.502
    assert eu["eu-west-1"].share == pytest.approx(128 / 383, abs=1e-4)


def test_a_failed_region_withdraws_at_once_and_not_as_a_planned_move() -> None:
    policy, inv = anycast_policy(), inventory()
    prev = first(policy, inv)
    reports = healthy_reports(T0 + 1, ALL)
    reports["eu-west-1"] = make_report("eu-west-1", T0 + 1, healthy=False, fail=2)  # fall = 2
    state = plan(policy, inv, reports, {}, prev, T0 + 1)
    for prefix in (EU_PREFIX, SERVICE_PREFIX):
        a = by_region(state, prefix)["eu-west-1"]
        assert (a.action, a.planned, a.changed_at) == ("withdraw", False, T0 + 1)
        assert a.reason.startswith("weight 0: failover: unhealthy")
    assert by_region(state, EU_PREFIX)["eu-central-1"].action == "announce"
    assert any(d.subject == f"anycast {EU_PREFIX}" and d.action == "eu-west-1 announce (prepend 0, MED 0) → withdraw"
               for d in state.decisions)
    assert state.generation == prev.generation + 1


def test_a_drain_is_paced_by_the_pool_then_withdrawn_as_planned() -> None:
    policy, inv = anycast_policy(), inventory()
    ov = {"eu-west-1": make_override("eu-west-1", since=T0)}
    state = first(policy, inv)
    seen: list[tuple[str, int]] = []
    for i in range(1, 8):
        prev = state
        state = plan(policy, inv, healthy_reports(T0 + i, ALL), ov, prev, T0 + i)
        a = by_region(state, EU_PREFIX)["eu-west-1"]
        w = weights(state, CHAT, "eu")["eu-west-1"]
        assert (a.action == "announce") == (w > 0), (w, a)
        before = by_region(prev, EU_PREFIX)["eu-west-1"]
        if a.action == "announce":
            assert before.action == "announce" and a.prepend >= before.prepend and a.med >= before.med
        else:
            assert a.planned, "a drain withdraws with GRACEFUL_SHUTDOWN first"
            assert "drained by tester" in a.reason
        seen.append((a.action, a.prepend))
    # 255 → 191 (r 0.75: 1 prepend) → 127 (r 0.5: 1) → 63 (r 0.25: 2) → 0: withdrawn
    assert seen[:4] == [("announce", 1), ("announce", 1), ("announce", 2), ("withdraw", 0)]
    assert seen[4:] == [("withdraw", 0)] * 3


def test_changed_at_carries_over_while_the_announcement_is_unchanged() -> None:
    policy, inv = anycast_policy(), inventory()
    prev = first(policy, inv)
    state = plan(policy, inv, healthy_reports(T0 + 30, ALL), {}, prev, T0 + 30)
    assert all(a.changed_at == T0 for anns in state.announcements.values() for a in anns)
    assert state.generation == prev.generation
    assert not [d for d in state.decisions if d.subject.startswith("anycast")]


def test_regions_without_a_bgp_side_never_announce() -> None:
    state = first(inv=inventory(("eu-central-1", "us-east-1")))
    assert actions(state, EU_PREFIX) == {"eu-central-1": "announce"}
    assert actions(state, SERVICE_PREFIX) == {"eu-central-1": "announce", "us-east-1": "announce"}
    assert [p.eligible for p in prefix_specs(anycast_policy(), inventory(("eu-central-1", "us-east-1")))] == [
        ("eu-central-1",), ("eu-central-1", "us-east-1")]


@pytest.mark.parametrize("mode", ["fail-static", "fail-open"])
def test_when_no_announcing_region_can_serve_on_all_unhealthy_decides(mode: str) -> None:
    """Only eu-west-1 can announce; it fails while the DNS pool still serves elsewhere."""
    policy, inv = anycast_policy(on_all_unhealthy=mode), inventory(("eu-west-1",))
    prev = first(policy, inv)
    reports = healthy_reports(T0 + 1, ALL)
    reports["eu-west-1"] = make_report("eu-west-1", T0 + 1, healthy=False, fail=2)
    state = plan(policy, inv, reports, {}, prev, T0 + 1)
    a = by_region(state, SERVICE_PREFIX)["eu-west-1"]
    assert weights(state, CHAT, "default")["eu-west-1"] == 0
    assert a.action == "announce", "never withdrawn everywhere: on_all_unhealthy decides"
    assert a.reason.startswith(mode.upper())
    # A drained region is never kept or opened.
    ov = {"eu-west-1": make_override("eu-west-1", since=T0 + 2)}
    state = plan(policy, inv, healthy_reports(T0 + 2, ALL) | {"eu-west-1": reports["eu-west-1"]}, ov, state, T0 + 2)
    a = by_region(state, SERVICE_PREFIX)["eu-west-1"]
    assert a.action == "withdraw" and "drained" in a.reason


def test_fail_static_with_nothing_to_keep_withdraws_loudly() -> None:
    policy, inv = anycast_policy(), inventory(("eu-west-1",))
    reports = healthy_reports(T0, ALL)
    reports["eu-west-1"] = make_report("eu-west-1", T0, healthy=False, fail=2)
    state = plan(policy, inv, reports, {}, None, T0)
    a = by_region(state, SERVICE_PREFIX)["eu-west-1"]
    assert a.action == "withdraw" and a.reason.startswith("WITHDRAWN EVERYWHERE")


def test_a_pool_failing_static_keeps_its_announcements_and_a_dark_pool_withdraws() -> None:
    policy, inv = anycast_policy(), inventory()
    prev = first(policy, inv)
    reports = {r: make_report(r, T0 + 1, healthy=False, fail=2) for r in ALL}
    state = plan(policy, inv, reports, {}, prev, T0 + 1)
    assert state.pool_for(CHAT, "default").mode == "fail-static"  # type: ignore[union-attr]
    default = by_region(state, SERVICE_PREFIX)
    assert all(a.action == "announce" and "fail-static" in a.reason and not a.planned for a in default.values())
    # The EU segment is pinned: it fails closed (dark), and so does its prefix.
    assert state.pool_for(CHAT, "eu").mode == "dark"  # type: ignore[union-attr]
    eu = by_region(state, EU_PREFIX)
    assert all(a.action == "withdraw" and "DARK (fail-closed)" in a.reason and not a.planned for a in eu.values())


def test_a_pinned_prefix_is_never_announced_outside_its_jurisdiction_even_failing_open() -> None:
    policy, inv = anycast_policy(on_all_unhealthy="fail-open"), inventory()
    reports = healthy_reports(T0, ALL)
    for r in EU:
        reports[r] = make_report(r, T0, healthy=False, fail=2)
    state = plan(policy, inv, reports, {}, None, T0)
    assert actions(state, EU_PREFIX) == {"eu-central-1": "withdraw", "eu-west-1": "withdraw"}
    reports = {r: make_report(r, T0, healthy=False, fail=2) for r in ALL}
    state = plan(policy, inv, reports, {}, None, T0)
    assert state.pool_for(CHAT, "default").mode == "fail-open"  # type: ignore[union-attr]
    assert set(actions(state, SERVICE_PREFIX).values()) == {"announce"}
    assert actions(state, EU_PREFIX) == {"eu-central-1": "withdraw", "eu-west-1": "withdraw"}


def test_a_held_plan_keeps_the_previous_announcements() -> None:
    policy, inv = anycast_policy(), inventory()
    prev = first(policy, inv)
    later = T0 + 600  # every report lapsed: static stability holds the last routing
    state = plan(policy, inv, healthy_reports(T0, ALL), {}, prev, later)
    assert state.held
    assert state.announcements == prev.announcements


def test_rollout_caps_route_away_as_planned_and_roll_back_at_once() -> None:
    policy, inv = anycast_policy(), inventory()
    prev = first(policy, inv)
    rollback = {"chat": {"eu-west-1": WeightCap(0.0, "rollout x: rolled back", immediate=True)}}
    state = plan(policy, inv, healthy_reports(T0 + 1, ALL), {}, prev, T0 + 1, caps=rollback)
    a = by_region(state, EU_PREFIX)["eu-west-1"]
    assert (a.action, a.planned) == ("withdraw", False)
    away = {"chat": {"eu-west-1": WeightCap(0.0, "rollout x: route away for deploy")}}
    state = prev
    for i in range(1, 8):
        state = plan(policy, inv, healthy_reports(T0 + i, ALL), {}, state, T0 + i, caps=away)
    a = by_region(state, EU_PREFIX)["eu-west-1"]
    assert (a.action, a.planned) == ("withdraw", True), a


def test_announcements_survive_the_json_round_trip() -> None:
    state = first()
    back = DesiredState.from_json(state.to_json())
    assert back.announcements == state.announcements
    assert back.routing_digest() == state.routing_digest()


def test_an_anycast_only_service_publishes_no_dns_records() -> None:
    edge = with_anycast(make_service("edge", segments=[]), "192.0.2.128/25", data_planes=("anycast",))
    policy = make_policy([with_anycast(make_service(segments=[eu_segment()]), SERVICE_PREFIX, {"eu": EU_PREFIX}),
                          edge])
    state = first(policy)
    assert state.services["edge.gtm.example.com"].dns is False
    assert set(dns_services(state)) == {CHAT}
    assert sorted(actions(state, "192.0.2.128/25")) == list(ALL)


def test_verify_covers_announcements() -> None:
    policy, inv = anycast_policy(), inventory()
    res = verify(policy, inv, max_exhaustive=4)
    assert res.broken == 0, [sc.broken for sc in res.notable]
    both_eu = next(sc for sc in res.notable if sc.failed == EU)
    assert both_eu.dark == ["chat/eu", "anycast 198.51.100.0/24 (chat/eu)"]
    # A state announcing the EU prefix from a US region breaks residency; verify says so.
    state = first(policy, inv)
    bad = dict(state.announcements)
    bad[EU_PREFIX] = (*bad[EU_PREFIX], Announcement(EU_PREFIX, "us-east-1", "announce"))
    sc = Scenario(failed=())
    _check_anycast(inv, dataclasses.replace(state, announcements=bad), prefix_specs(policy, inv), set(), sc)
    assert any(b.startswith("residency: anycast 198.51.100.0/24") and "us-east-1" in b for b in sc.broken), sc.broken
    # A region the DNS weights leave out but that still announces disagrees with the plan.
    reports = healthy_reports(T0, ALL)
    reports["eu-west-1"] = make_report("eu-west-1", T0, healthy=False, fail=2)
    state = plan(policy, inv, reports, {}, None, T0)
    bad = dict(state.announcements)
    bad[EU_PREFIX] = tuple(dataclasses.replace(a, action="announce") for a in bad[EU_PREFIX])
    sc = Scenario(failed=("eu-west-1",))
    _check_anycast(inv, dataclasses.replace(state, announcements=bad), prefix_specs(policy, inv), {"eu-west-1"}, sc)
    assert any(b.startswith("failover: anycast 198.51.100.0/24") for b in sc.broken), sc.broken
    assert any("disagrees with the DNS weights for ['eu-west-1']" in b for b in sc.broken), sc.broken
