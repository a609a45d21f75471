"""``routing_diff``: the pure comparison of two desired states behind ``gtm plan --candidate``."""

from __future__ import annotations

from gtm.config.loader import Config, policy_digest
from gtm.controller.routing_diff import (
    RoutingChange,
    diff_report,
    nominal_reports,
    plan_pair,
    render_lines,
    routing_diff,
)
from gtm.engine import plan
from gtm.models.plan import DesiredState
from gtm.models.policy import Policy, Residency, Segment, SegmentMatch
from tests.factories import (
    FOUR_REGIONS,
    T0,
    ZONE,
    eu_segment,
    healthy_reports,
    make_inventory,
    make_override,
    make_policy,
    make_service,
)

CHAT = f"chat.{ZONE}"
EMBED = f"embed.{ZONE}"
ALL = tuple(sorted(FOUR_REGIONS))


def cfg(policy: Policy) -> Config:
    inv = make_inventory()
    return Config(policy=policy, inventory=inv, digest=policy_digest(policy, inv), files=())


def state(policy: Policy, **spare: float) -> DesiredState:
    inv = make_inventory()
    reports = healthy_reports(T0, {r: spare.get(r.replace("-", "_"), 10.0) for r in FOUR_REGIONS})
    return plan(policy, inv, reports, {}, None, T0, digest=policy_digest(policy, inv))


def static_embed(weights: dict[str, int], regions: tuple[str, ...] = ("eu-west-1", "us-east-1")) -> Policy:
    return make_policy([
        make_service(segments=[eu_segment()]),
        make_service("embed", regions, routing="static", static_weights=weights),
    ])


def kinds(changes: list[RoutingChange]) -> list[str]:
    return [c.kind for c in changes]


def test_identical_states_have_no_difference() -> None:
    p = static_embed({"us-east-1": 200, "eu-west-1": 55})
    assert routing_diff(state(p), state(p)) == []


def test_static_weight_change_is_one_weight_change_and_a_pool_swap() -> None:
    before = state(static_embed({"us-east-1": 200, "eu-west-1": 55}))
    after = state(static_embed({"us-east-1": 100, "eu-west-1": 55}))
    changes = routing_diff(before, after)
    weight = [c for c in changes if c.kind == "weight"]
    assert weight == [
        RoutingChange(
            "weight", EMBED, "default", "us-east-1", before=200, after=100,
            share_before=round(200 / 255, 4), share_after=round(100 / 155, 4),
            pool_id=after.services[EMBED].segments[0].pool_id, detail="loses weight",
        )
    ]
    # The static weights are part of the pool's identity: the old pool goes, a new one comes.
    assert kinds(changes) == ["weight", "pool-removed", "pool-added"]
    assert changes[1].pool_id == before.services[EMBED].segments[0].pool_id
    assert "embed" in changes[2].detail
    assert "us-east-1 200 (78%) → 100 (65%)" in weight[0].describe()


def test_region_removed_from_a_service() -> None:
    before = state(make_policy([make_service(segments=[eu_segment()])]))
    after = state(make_policy([make_service(regions=("eu-central-1", "eu-west-1", "us-east-1"),
                                            segments=[eu_segment()])]))
    changes = routing_diff(before, after)
    weight = [c for c in changes if c.kind == "weight"]
    assert [(c.fqdn, c.segment, c.region, c.before, c.after, c.detail) for c in weight] == [
        (CHAT, "default", "us-west-2", 255, None, "left the pool")
    ]
    # The EU pool is unchanged (us-west-2 was never eligible there); only the default pool is replaced.
    assert kinds(changes) == ["weight", "pool-removed", "pool-added"]


def test_capacity_weights_gained_and_lost_per_segment() -> None:
    p = make_policy([make_service(segments=[eu_segment()])])
    before = state(p)
    after = state(p, eu_west_1=5.0)  # same policy, less spare in eu-west-1: weights move
    changes = routing_diff(before, after)
    assert {(c.segment, c.region, c.detail) for c in changes} == {
        ("eu", "eu-west-1", "loses weight"),
        ("default", "eu-west-1", "loses weight"),
    }
    assert all(c.before == 255 and c.after is not None and c.after < 255 for c in changes)


def test_services_added_and_removed() -> None:
    one = state(make_policy([make_service(segments=[eu_segment()])]))
    two = state(static_embed({"us-east-1": 200, "eu-west-1": 55}))
    added = routing_diff(one, two)
    assert kinds(added) == ["service-added", "pool-added"]
    assert added[0].fqdn == EMBED and added[0].after == {"default": {"eu-west-1": 55, "us-east-1": 200}}
    removed = routing_diff(two, one)
    assert kinds(removed) == ["service-removed", "pool-removed"]
    assert removed[0].before == {"default": {"eu-west-1": 55, "us-east-1": 200}}


def test_residency_pin_and_match_changes() -> None:
    pinned = make_policy([make_service(segments=[eu_segment()])])
    unpinned = make_policy([make_service(segments=[Segment(name="eu", match=SegmentMatch(continents=("EU",)))])])
    changes = routing_diff(state(pinned), state(unpinned))
    res = [c for c in changes if c.kind == "residency"]
    assert [(c.fqdn, c.segment, c.before, c.after) for c in res] == [(CHAT, "eu", ["EU"], [])]
    # Without the pin, the EU segment may use the US regions too.
    gained = {c.region for c in changes if c.kind == "weight" and c.segment == "eu"}
    assert gained == {"us-east-1", "us-west-2"}

    moved = make_policy([make_service(segments=[
        Segment(name="eu", match=SegmentMatch(continents=("EU", "AF")), residency=Residency(jurisdictions=("EU",)))
    ])])
    match = [c for c in routing_diff(state(pinned), state(moved)) if c.kind == "match"]
    assert [(c.before, c.after) for c in match] == [(["EU"], ["EU", "AF"])]


def test_segment_added_and_removed() -> None:
    plain = make_policy([make_service()])
    with_eu = make_policy([make_service(segments=[eu_segment()])])
    changes = routing_diff(state(plain), state(with_eu))
    assert kinds(changes)[:1] == ["segment-added"]
    assert changes[0].segment == "eu" and changes[0].after == {"eu-central-1": 255, "eu-west-1": 255}
    back = routing_diff(state(with_eu), state(plain))
    assert "segment-removed" in kinds(back)


def test_ttl_and_mode_changes() -> None:
    a = state(make_policy([make_service(ttl=30)]))
    b = state(make_policy([make_service(ttl=60)]))
    assert [(c.kind, c.before, c.after) for c in routing_diff(a, b)] == [("ttl", 30, 60)]
    # Every region drained in the candidate's plan: the pool goes dark, said as a mode change.
    p = make_policy([make_service()])
    inv = make_inventory()
    reports = healthy_reports(T0, ALL)
    overrides = {r: make_override(r) for r in ALL}
    dark = plan(p, inv, reports, overrides, None, T0)
    changes = routing_diff(plan(p, inv, reports, {}, None, T0), dark)
    assert changes[0].kind == "mode" and changes[0].before == "normal" and changes[0].after == "dark"
    assert {c.region for c in changes if c.kind == "weight"} == set(ALL)


def test_plan_pair_with_nominal_reports_and_report_document() -> None:
    in_force = cfg(static_embed({"us-east-1": 200, "eu-west-1": 55}))
    candidate = cfg(static_embed({"us-east-1": 200, "eu-west-1": 55, "us-west-2": 0},
                                 regions=("eu-west-1", "us-east-1", "us-west-2")))
    reports = nominal_reports([in_force, candidate], T0)
    assert set(reports) == set(FOUR_REGIONS) and all(r.healthy for r in reports.values())
    before, after = plan_pair(in_force, candidate, reports, {}, None, T0)
    assert not before.held and not after.held
    changes = routing_diff(before, after)
    # us-west-2 joins embed parked (static weight 0), so no routing difference for it.
    assert [c for c in changes if c.kind == "weight"] == []
    doc = diff_report(in_force, candidate, before, after, changes)
    assert doc["differs"] is True  # the pool id changed (new eligible set)
    assert render_lines(doc)[-1] == f"{len(changes)} routing change(s)"
    same = diff_report(in_force, in_force, before, before, [])
    assert same["differs"] is False and render_lines(same)[-1] == "no routing difference"
