"""Unit tests of the pure planning engine: ``gtm.engine.plan`` and its parts.

Every test passes an explicit ``now``; nothing reads the clock.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from gtm.engine import plan
from gtm.engine.capacity import capacity_weights
from gtm.engine.health import region_health
from gtm.models.override import Override
from gtm.models.plan import DesiredState, RegionStatus
from gtm.models.policy import HealthThresholds, Policy
from gtm.models.region import Inventory
from gtm.models.report import FleetReport
from tests.factories import (
    FOUR_REGIONS,
    MODEL,
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

CHAT = "chat.gtm.example.com"
EMBED = "embed.gtm.example.com"
EU = ("eu-central-1", "eu-west-1")
US = ("us-east-1", "us-west-2")

INV = make_inventory()

# Spare capacities chosen so the weights are exact integers (no .5 rounding).
SPARE = {"us-east-1": 100.0, "eu-central-1": 60.0, "us-west-2": 40.0, "eu-west-1": 20.0}


def run(
    policy: Policy,
    reports: Mapping[str, FleetReport],
    now: float,
    previous: DesiredState | None = None,
    overrides: Mapping[str, Override] | None = None,
    inventory: Inventory = INV,
) -> DesiredState:
    return plan(policy, inventory, reports, overrides or {}, previous, now, digest="sha256:test")


def all_equal(now: float) -> dict[str, FleetReport]:
    return healthy_reports(now, dict.fromkeys(FOUR_REGIONS, 10.0))


# -- capacity --------------------------------------------------------------------------------


def test_capacity_weights_proportional_largest_255() -> None:
    w = capacity_weights(SPARE, list(SPARE))
    assert w == {"us-east-1": 255, "eu-central-1": 153, "us-west-2": 102, "eu-west-1": 51}


def test_capacity_weights_full_region_keeps_one_and_all_empty_is_equal() -> None:
    assert capacity_weights({"a": 10.0, "b": 0.0}, ["a", "b"]) == {"a": 255, "b": 1}
    assert capacity_weights({"a": 0.0, "b": 0.0}, ["a", "b"]) == {"a": 255, "b": 255}
    assert capacity_weights({}, []) == {}


def test_plan_weights_follow_spare_capacity_per_pool() -> None:
    state = run(make_policy(), healthy_reports(T0, SPARE), T0)
    assert not state.held
    assert weights(state, CHAT, "default") == {
        "us-east-1": 255, "eu-central-1": 153, "us-west-2": 102, "eu-west-1": 51,
    }
    # The EU pool is normalised among EU regions only: its top region gets 255.
    assert weights(state, CHAT, "eu") == {"eu-central-1": 255, "eu-west-1": 85}
    assert all(s.state == "healthy" for s in state.regions.values())
    assert state.generation == 1
    assert state.policy_digest == "sha256:test"
    assert state.endpoints["us-east-1"] == (("A", INV.regions["us-east-1"].endpoints[0].address),)


def test_static_weights() -> None:
    embed = make_service(
        "embed", ["us-east-1", "eu-west-1"], routing="static",
        static_weights={"us-east-1": 200, "eu-west-1": 55}, model=None,
    )
    policy = make_policy([embed])
    state = run(policy, healthy_reports(T0, SPARE), T0)
    assert weights(state, EMBED, "default") == {"eu-west-1": 55, "us-east-1": 200}
    # Capacity does not move static weights.
    later = run(policy, healthy_reports(T0 + 5, {r: 1.0 for r in SPARE}), T0 + 5, state)
    assert weights(later, EMBED, "default") == {"eu-west-1": 55, "us-east-1": 200}
    assert later.generation == state.generation
    # A failed region still drops out at once.
    reps = healthy_reports(T0 + 6, SPARE)
    reps["us-east-1"] = make_report("us-east-1", T0 + 6, healthy=False, fail=2)
    failed = run(policy, reps, T0 + 6, later)
    assert weights(failed, EMBED, "default") == {"eu-west-1": 55, "us-east-1": 0}


def test_static_weight_zero_is_left_out() -> None:
    svc = make_service(
        "embed", ["us-east-1", "eu-west-1"], routing="static",
        static_weights={"us-east-1": 0, "eu-west-1": 10}, model=None,
    )
    state = run(make_policy([svc]), healthy_reports(T0, SPARE), T0)
    pool = state.pool_for(EMBED, "default")
    assert pool is not None
    assert weights(state, EMBED, "default") == {"eu-west-1": 10, "us-east-1": 0}
    assert [m.region for m in pool.active] == ["eu-west-1"]
    assert "static weight 0" in next(m.reason for m in pool.members if m.region == "us-east-1")


# -- health and hysteresis -------------------------------------------------------------------


def test_hysteresis_fall_then_rise() -> None:
    policy = make_policy(fall=3, rise=2)
    now = T0
    state = run(policy, all_equal(now), now)
    assert state.regions["us-east-1"].state == "healthy"

    # Failing checks below `fall`: degraded, still serving.
    for fails in (1, 2):
        now += 2
        reps = all_equal(now)
        reps["us-east-1"] = make_report("us-east-1", now, healthy=False, fail=fails)
        state = run(policy, reps, now, state)
        assert state.regions["us-east-1"].state == "degraded", fails
        assert weights(state, CHAT, "default")["us-east-1"] == 255

    # The `fall`-th consecutive failure: unhealthy, weight 0.
    now += 2
    reps = all_equal(now)
    reps["us-east-1"] = make_report("us-east-1", now, healthy=False, fail=3)
    state = run(policy, reps, now, state)
    assert state.regions["us-east-1"].state == "unhealthy"
    assert "3 consecutive failed checks" in state.regions["us-east-1"].reason
    assert weights(state, CHAT, "default")["us-east-1"] == 0

    # One good check is not enough to come back (rise 2).
    now += 2
    reps = all_equal(now)
    reps["us-east-1"] = make_report("us-east-1", now, ok=1)
    state = run(policy, reps, now, state)
    assert state.regions["us-east-1"].state == "unhealthy"
    assert "recovering: 1/2" in state.regions["us-east-1"].reason
    assert weights(state, CHAT, "default")["us-east-1"] == 0

    # `rise` good checks: back, ramping up by planned_step.
    now += 2
    reps = all_equal(now)
    reps["us-east-1"] = make_report("us-east-1", now, ok=2)
    state = run(policy, reps, now, state)
    assert state.regions["us-east-1"].state == "healthy"
    assert weights(state, CHAT, "default")["us-east-1"] == 64


def test_unhealthy_region_with_short_failure_stays_out() -> None:
    """A region that is out and fails again (counts reset below fall) stays out."""
    th = HealthThresholds(fall=2, rise=2)
    prev = RegionStatus(region="a", state="unhealthy", reason="x")
    rep = make_report("a", T0, healthy=False, fail=1)
    assert region_health("a", prev, rep, th, T0)[0] == "unhealthy"
    prev_ok = RegionStatus(region="a", state="healthy", reason="x")
    assert region_health("a", prev_ok, rep, th, T0)[0] == "degraded"


def test_impaired_region_is_degraded_and_serves() -> None:
    reps = all_equal(T0)
    reps["us-west-2"] = make_report("us-west-2", T0, spare=10.0, replicas=(4, 3))
    state = run(make_policy(), reps, T0)
    assert state.regions["us-west-2"].state == "degraded"
    assert "3/4 replicas healthy" in state.regions["us-west-2"].reason
    assert weights(state, CHAT, "default")["us-west-2"] == 255


def test_lapsed_report_is_unknown_with_weight_zero() -> None:
    policy = make_policy(report_timeout_s=6.0)
    state = run(policy, all_equal(T0), T0)
    now = T0 + 10
    reps = all_equal(now)
    reps["us-west-2"] = make_report("us-west-2", now, age=7.0)
    state = run(policy, reps, now, state)
    assert not state.held  # 1/4 stale is below stale_fraction 0.5
    st = state.regions["us-west-2"]
    assert st.state == "unknown"
    assert "7.0s old" in st.reason
    assert weights(state, CHAT, "default")["us-west-2"] == 0
    # A missing report is unknown as well.
    del reps["us-west-2"]
    state = run(policy, reps, now + 1, state)
    assert state.regions["us-west-2"].state == "unknown"
    assert state.regions["us-west-2"].seq == -1
    assert weights(state, CHAT, "default")["us-west-2"] == 0


def test_immediate_failover_others_keep_serving() -> None:
    policy = make_policy()
    before = run(policy, healthy_reports(T0, SPARE), T0)
    now = T0 + 0.1  # well inside one step interval: failure moves do not wait
    reps = healthy_reports(now, SPARE)
    reps["us-east-1"] = make_report("us-east-1", now, healthy=False, fail=2)
    after = run(policy, reps, now, before)
    assert after.regions["us-east-1"].state == "unhealthy"
    w = weights(after, CHAT, "default")
    assert w["us-east-1"] == 0
    # Others keep serving; their weights stay within pacing (no increase > planned_step).
    assert all(w[r] > 0 for r in ("eu-central-1", "us-west-2", "eu-west-1"))
    assert weights(after, CHAT, "eu") == weights(before, CHAT, "eu")
    pool = after.pool_for(CHAT, "default")
    assert pool is not None and pool.mode == "normal"
    reason = next(m.reason for m in pool.members if m.region == "us-east-1")
    assert reason.startswith("failover:")
    assert any(d.action == "healthy → unhealthy" for d in after.decisions)


def test_report_for_model_not_served_leaves_pool() -> None:
    reps = all_equal(T0)
    reps["us-west-2"] = make_report("us-west-2", T0, models={"other-model": 10.0})
    state = run(make_policy(), reps, T0)
    assert state.regions["us-west-2"].state == "healthy"
    pool = state.pool_for(CHAT, "default")
    assert pool is not None
    assert pool.weight_of("us-west-2") == 0
    assert "us-west-2" not in [m.region for m in pool.active]
    assert MODEL in next(m.reason for m in pool.members if m.region == "us-west-2")
    # A service without a model still uses the region.
    anymodel = make_service("any", list(FOUR_REGIONS), model=None)
    state2 = run(make_policy([anymodel]), reps, T0)
    assert weights(state2, "any.gtm.example.com", "default")["us-west-2"] > 0


def test_zero_healthy_replicas_of_the_model_leaves_pool() -> None:
    reps = all_equal(T0)
    reps["us-east-1"] = make_report("us-east-1", T0, replicas=(2, 0))
    state = run(make_policy(), reps, T0)
    assert weights(state, CHAT, "default")["us-east-1"] == 0


# -- residency -------------------------------------------------------------------------------


def test_eu_segment_never_holds_us_regions() -> None:
    state = run(make_policy(), healthy_reports(T0, SPARE), T0)
    pool = state.pool_for(CHAT, "eu")
    assert pool is not None
    assert {m.region for m in pool.members} == set(EU)
    route = next(r for r in state.services[CHAT].segments if r.segment == "eu")
    assert route.jurisdictions == ("EU",)
    assert route.continents == ("EU",)
    # Most specific first: the EU segment precedes the catch-all.
    assert [r.segment for r in state.services[CHAT].segments] == ["eu", "default"]


@pytest.mark.parametrize("mode", ["fail-static", "fail-open"])
def test_pinned_segment_with_no_healthy_eu_region_never_spills(mode: str) -> None:
    policy = make_policy(on_all_unhealthy=mode)
    reps = healthy_reports(T0, SPARE)
    for r in EU:
        reps[r] = make_report(r, T0, healthy=False, fail=2)
    state = run(policy, reps, T0)  # no previous: nothing to hold
    eu = state.pool_for(CHAT, "eu")
    assert eu is not None
    assert {m.region for m in eu.members} == set(EU)
    # A pinned segment follows on_unavailable (default fail-closed), not on_all_unhealthy:
    # explicitly dark, whatever the default pool's panic mode.
    assert eu.dark and eu.mode == "dark"
    assert "DARK (fail-closed)" in eu.reason
    for m in eu.members:
        assert m.region in EU
    # US regions are healthy and serve the default pool.
    default = weights(state, CHAT, "default")
    assert default["us-east-1"] == 255 and default["eu-west-1"] == 0


def test_pinned_segment_dark_after_previous_when_all_eu_drained() -> None:
    # Safety rules off: the operator really wants the EU dark (see test_safety.py for holds).
    policy = make_policy(min_healthy_regions=0, max_drained=4, headroom=0.0)
    state = run(policy, all_equal(T0), T0)
    ovs = {r: make_override(r, "drain") for r in EU}
    now = T0
    for _ in range(6):
        now += 1
        state = run(policy, all_equal(now), now, state, ovs)
    eu = state.pool_for(CHAT, "eu")
    assert eu is not None and eu.dark and eu.mode == "dark"
    assert "every eligible region is drained" in eu.reason
    assert all(w == 0 for w in weights(state, CHAT, "eu").values())


# -- overrides: drain and cordon -------------------------------------------------------------


def test_drain_steps_down_and_never_up_then_undrain_ramps() -> None:
    policy = make_policy(planned_step=64, step_interval_s=1.0)
    state = run(policy, all_equal(T0), T0)
    assert weights(state, CHAT, "default")["us-east-1"] == 255
    ovs = {"us-east-1": make_override("us-east-1", "drain", since=T0 + 1)}
    seen = []
    for dt in (1.0, 1.5, 2.0, 3.0, 4.0, 5.0):
        now = T0 + dt
        reps = all_equal(now)
        # The drained region reports ever more spare capacity: it must not pull weight back.
        reps["us-east-1"] = make_report("us-east-1", now, spare=10.0 * (1 + dt))
        state = run(policy, reps, now, state, ovs)
        seen.append(weights(state, CHAT, "default")["us-east-1"])
        assert state.regions["us-east-1"].override == "drain"
    assert seen == [191, 191, 127, 63, 0, 0]
    # The drain itself is a planned move: others are not disturbed.
    assert weights(state, CHAT, "default")["us-west-2"] == 255

    # Undrain: ramps back one step per interval.
    seen = []
    for dt in (10.0, 10.5, 11.0, 12.0, 13.0, 14.0):
        now = T0 + dt
        state = run(policy, all_equal(now), now, state, {})
        seen.append(weights(state, CHAT, "default")["us-east-1"])
    assert seen == [64, 64, 128, 192, 255, 255]


def test_drained_region_spare_capacity_does_not_shrink_others() -> None:
    """Traffic leaves a drained region, so its spare capacity grows; that must not shrink the
    other regions' weights (which would hand the drained region a larger share)."""
    policy = make_policy()
    state = run(policy, all_equal(T0), T0)
    ovs = {"us-east-1": make_override("us-east-1", "drain")}
    now = T0 + 1
    reps = all_equal(now)
    reps["us-east-1"] = make_report("us-east-1", now, spare=1000.0)
    state = run(policy, reps, now, state, ovs)
    w = weights(state, CHAT, "default")
    assert w["us-east-1"] == 191
    assert w["us-west-2"] == w["eu-west-1"] == w["eu-central-1"] == 255
    share = w["us-east-1"] / sum(w.values())
    assert share < 0.25


def test_expired_override_no_longer_applies() -> None:
    policy = make_policy()
    state = run(policy, all_equal(T0), T0)
    ovs = {"us-east-1": make_override("us-east-1", "drain", expires_at=T0 + 0.5)}
    state = run(policy, all_equal(T0 + 1), T0 + 1, state, ovs)
    assert weights(state, CHAT, "default")["us-east-1"] == 255
    assert state.regions["us-east-1"].override is None


def test_cordon_never_raises_weight() -> None:
    policy = make_policy()
    state = run(policy, healthy_reports(T0, SPARE), T0)
    assert weights(state, CHAT, "default")["us-west-2"] == 102
    ovs = {"us-west-2": make_override("us-west-2", "cordon")}
    now = T0
    seen = []
    for spare in (100.0, 100.0, 20.0, 100.0, 100.0):
        now += 2
        reps = healthy_reports(now, {**SPARE, "us-west-2": spare})
        state = run(policy, reps, now, state, ovs)
        seen.append(weights(state, CHAT, "default")["us-west-2"])
    # Held at 102 although it could take 255; may go down (to 51); never back up.
    assert seen == [102, 102, 51, 51, 51]
    assert state.regions["us-west-2"].override == "cordon"
    pool = state.pool_for(CHAT, "default")
    assert pool is not None
    assert "cordoned by tester" in next(m.reason for m in pool.members if m.region == "us-west-2")


def test_cordoned_region_on_first_plan_gets_no_weight() -> None:
    ovs = {"us-west-2": make_override("us-west-2", "cordon")}
    state = run(make_policy(), all_equal(T0), T0, None, ovs)
    assert weights(state, CHAT, "default")["us-west-2"] == 0


# -- pacing ----------------------------------------------------------------------------------


def test_deadband_holds_small_capacity_changes() -> None:
    policy = make_policy(weight_deadband=8)
    state = run(policy, healthy_reports(T0, SPARE), T0)
    assert weights(state, CHAT, "default")["us-west-2"] == 102
    gen = state.generation
    # 42/100*255 = 107.1 → 107: a change of 5 < 8 is ignored.
    state = run(policy, healthy_reports(T0 + 2, {**SPARE, "us-west-2": 42.0}), T0 + 2, state)
    assert weights(state, CHAT, "default")["us-west-2"] == 102
    assert state.generation == gen
    pool = state.pool_for(CHAT, "default")
    assert pool is not None
    assert "deadband" in next(m.reason for m in pool.members if m.region == "us-west-2")
    # 44/100*255 = 112.2 → 112: a change of 10 >= 8 is applied.
    state = run(policy, healthy_reports(T0 + 4, {**SPARE, "us-west-2": 44.0}), T0 + 4, state)
    assert weights(state, CHAT, "default")["us-west-2"] == 112
    assert state.generation == gen + 1
    # Downward, also outside the deadband: at once.
    state = run(policy, healthy_reports(T0 + 4.1, {**SPARE, "us-west-2": 20.0}), T0 + 4.1, state)
    assert weights(state, CHAT, "default")["us-west-2"] == 51


def test_capacity_rise_beyond_a_step_is_paced() -> None:
    policy = make_policy(planned_step=64, step_interval_s=1.0, weight_deadband=0)
    state = run(policy, healthy_reports(T0, {**SPARE, "eu-west-1": 1.0}), T0)
    assert weights(state, CHAT, "default")["eu-west-1"] == 3
    seen = []
    for dt in (0.5, 1.0, 1.5, 2.0, 3.0, 4.0):
        now = T0 + dt
        state = run(policy, healthy_reports(now, {**SPARE, "eu-west-1": 100.0}), now, state)
        seen.append(weights(state, CHAT, "default")["eu-west-1"])
    # changed_at=T0: the first step is due at T0+1, the next a full interval later.
    assert seen == [3, 67, 67, 131, 195, 255]


# -- static stability ------------------------------------------------------------------------


def test_static_stability_holds_previous_routing() -> None:
    policy = make_policy(stale_fraction=0.5, report_timeout_s=6.0)
    good = run(policy, healthy_reports(T0, SPARE), T0)
    now = T0 + 30
    reps = {
        "us-east-1": make_report("us-east-1", now),               # fresh
        "us-west-2": make_report("us-west-2", now, age=20.0),     # stale
        "eu-west-1": make_report("eu-west-1", now, age=6.5),      # stale
        # eu-central-1: missing
    }
    held = run(policy, reps, now, good)
    assert held.held
    assert held.routing_digest() == good.routing_digest()
    assert held.pools == good.pools and held.services == good.services
    assert held.generation == good.generation
    assert held.generated_at == now
    assert "static stability" in held.hold_reason
    assert "3/4 regions have no fresh report" in held.hold_reason
    for r in ("eu-central-1", "eu-west-1", "us-west-2"):
        assert r in held.hold_reason
    assert [d.action for d in held.decisions] == ["hold"]

    # Holding a hold keeps the same routing.
    again = run(policy, reps, now + 5, held)
    assert again.held and again.routing_digest() == good.routing_digest()


def test_static_stability_threshold_is_strictly_more_than_fraction() -> None:
    policy = make_policy(stale_fraction=0.5)
    good = run(policy, all_equal(T0), T0)
    reps = all_equal(T0 + 1)
    del reps["us-east-1"], reps["eu-west-1"]  # exactly 2/4 = 0.5: not more than 0.5
    state = run(policy, reps, T0 + 1, good)
    assert not state.held
    assert state.regions["us-east-1"].state == "unknown"
    assert weights(state, CHAT, "default")["us-east-1"] == 0


def test_static_stability_without_previous_publishes_nothing() -> None:
    state = run(make_policy(), {"us-east-1": make_report("us-east-1", T0)}, T0)
    assert state.held
    assert state.pools == {} and state.services == {} and state.endpoints == {}
    assert state.generation == 0
    assert "publishing nothing" in state.hold_reason
    # The first real plan after it starts at generation 1.
    nxt = run(make_policy(), all_equal(T0 + 1), T0 + 1, state)
    assert not nxt.held and nxt.generation == 1
    assert weights(nxt, CHAT, "default")["us-east-1"] == 255


# -- every region of a pool down -------------------------------------------------------------


def _all_failing(now: float) -> dict[str, FleetReport]:
    return {r: make_report(r, now, healthy=False, fail=5) for r in FOUR_REGIONS}


def test_fail_static_holds_previous_pool() -> None:
    policy = make_policy(on_all_unhealthy="fail-static")
    good = run(policy, healthy_reports(T0, SPARE), T0)
    state = run(policy, _all_failing(T0 + 1), T0 + 1, good)
    assert not state.held  # the reports are fresh: this is not static stability
    assert all(s.state == "unhealthy" for s in state.regions.values())
    pool = state.pool_for(CHAT, "default")
    assert pool is not None
    assert pool.mode == "fail-static"
    assert "FAIL-STATIC" in pool.reason
    assert weights(state, CHAT, "default") == weights(good, CHAT, "default")
    # The EU-pinned segment follows on_unavailable (fail-closed), not on_all_unhealthy.
    eu = state.pool_for(CHAT, "eu")
    assert eu is not None and eu.mode == "dark" and "fail-closed" in eu.reason


def test_fail_open_serves_all_non_drained_equally() -> None:
    policy = make_policy(on_all_unhealthy="fail-open")
    good = run(policy, healthy_reports(T0, SPARE), T0)
    ovs = {"us-east-1": make_override("us-east-1", "drain")}
    state = run(policy, _all_failing(T0 + 1), T0 + 1, good, ovs)
    pool = state.pool_for(CHAT, "default")
    assert pool is not None and pool.mode == "fail-open"
    assert "FAIL-OPEN" in pool.reason
    assert weights(state, CHAT, "default") == {
        "eu-central-1": 255, "eu-west-1": 255, "us-east-1": 0, "us-west-2": 255,
    }
    # The EU-pinned segment is fail-closed: dark, never opened.
    assert weights(state, CHAT, "eu") == {"eu-central-1": 0, "eu-west-1": 0}


def test_fail_open_never_raises_a_cordoned_region() -> None:
    policy = make_policy(on_all_unhealthy="fail-open")
    good = run(policy, healthy_reports(T0, SPARE), T0)
    assert weights(good, CHAT, "default")["us-west-2"] == 102
    ovs = {"us-west-2": make_override("us-west-2", "cordon")}
    state = run(policy, _all_failing(T0 + 1), T0 + 1, good, ovs)
    pool = state.pool_for(CHAT, "default")
    assert pool is not None and pool.mode == "fail-open"
    assert weights(state, CHAT, "default")["us-west-2"] <= 102


def test_fail_static_drained_region_keeps_stepping_down() -> None:
    """In fail-static, a drained region still drains one step per interval, even when the
    controller plans more often than once per interval."""
    policy = make_policy(on_all_unhealthy="fail-static", planned_step=64, step_interval_s=1.0)
    state = run(policy, all_equal(T0), T0)
    ovs = {"us-east-1": make_override("us-east-1", "drain")}
    now = T0
    for _ in range(6):
        now += 0.5
        state = run(policy, _all_failing(now), now, state, ovs)
        pool = state.pool_for(CHAT, "default")
        assert pool is not None and pool.mode == "fail-static"
    # Three full intervals have passed since T0: at least three steps taken.
    assert weights(state, CHAT, "default")["us-east-1"] <= 255 - 3 * 64


# -- generation, determinism, serialisation --------------------------------------------------


def test_generation_grows_only_when_routing_changes() -> None:
    policy = make_policy()
    s1 = run(policy, all_equal(T0), T0)
    assert s1.generation == 1
    s2 = run(policy, all_equal(T0 + 2), T0 + 2, s1)
    assert s2.generation == 1
    assert s2.routing_digest() == s1.routing_digest()
    assert s2.decisions == ()
    reps = all_equal(T0 + 4)
    reps["eu-west-1"] = make_report("eu-west-1", T0 + 4, healthy=False, fail=2)
    s3 = run(policy, reps, T0 + 4, s2)
    assert s3.generation == 2
    assert s3.routing_digest() != s2.routing_digest()
    s4 = run(policy, reps, T0 + 6, s3)
    assert s4.generation == 2


def test_plan_is_deterministic() -> None:
    policy = make_policy()
    prev = run(policy, healthy_reports(T0, SPARE), T0)
    reps = healthy_reports(T0 + 3, {**SPARE, "us-west-2": 90.0})
    reps["eu-west-1"] = make_report("eu-west-1", T0 + 3, healthy=False, fail=1)
    ovs = {"us-east-1": make_override("us-east-1", "drain")}
    a = run(policy, reps, T0 + 3, prev, ovs)
    b = run(policy, dict(reversed(list(reps.items()))), T0 + 3, prev, ovs)
    assert a.routing_digest() == b.routing_digest()
    assert a.to_json() == b.to_json()
    assert a == b


def test_desired_state_round_trip() -> None:
    policy = make_policy(
        [
            make_service(segments=[eu_segment()]),
            make_service(
                "embed", ["us-east-1", "eu-west-1"], routing="static",
                static_weights={"us-east-1": 200, "eu-west-1": 55}, model=None,
            ),
        ]
    )
    prev = run(policy, healthy_reports(T0, SPARE), T0)
    reps = healthy_reports(T0 + 1, SPARE)
    reps["us-west-2"] = make_report("us-west-2", T0 + 1, healthy=False, fail=3)
    state = run(policy, reps, T0 + 1, prev, {"eu-west-1": make_override("eu-west-1", "cordon")})
    assert state.decisions  # something to carry
    back = DesiredState.from_dict(state.to_dict())
    assert back == state
    assert back.routing_digest() == state.routing_digest()
    assert DesiredState.from_json(state.to_json()) == state
    assert state.to_dict()["routing_digest"] == state.routing_digest()
    held = run(policy, {}, T0 + 100, state)
    assert DesiredState.from_json(held.to_json()) == held


def test_from_dict_rejects_malformed() -> None:
    d = run(make_policy(), all_equal(T0), T0).to_dict()
    del d["pools"]
    with pytest.raises(ValueError, match="pools"):  # pydantic's ValidationError
        DesiredState.from_dict(d)
