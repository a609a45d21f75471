"""Safety rules, panic/dark states, spill, fallback services, flap damping and demand."""

from __future__ import annotations

from gtm.engine import plan
from gtm.models.override import Override
from gtm.models.plan import DesiredState
from gtm.models.policy import Policy, Segment, SegmentMatch
from gtm.models.report import FleetReport
from tests.factories import (
    T0,
    eu_segment,
    make_inventory,
    make_override,
    make_policy,
    make_report,
    make_service,
    weights,
)

CHAT = "chat.gtm.example.com"
INV = make_inventory()
ALL = ("eu-central-1", "eu-west-1", "us-east-1", "us-west-2")


def reps(now: float, spare: dict[str, float] | None = None, replicas: int = 4, seq: int = 1,
         **fail: int) -> dict[str, FleetReport]:
    spare = spare or {}
    out = {}
    for r in ALL:
        nfail = fail.get(r.replace("-", "_"), 0)
        out[r] = make_report(r, now, spare=spare.get(r, 2.0), replicas=(replicas, replicas), seq=seq,
                             healthy=nfail == 0, fail=nfail or None, ok=None if nfail else 10)
    return out


def step(policy: Policy, state: DesiredState | None, now: float, reports: dict[str, FleetReport],
         ovs: dict[str, Override] | None = None) -> DesiredState:
    return plan(policy, INV, reports, ovs or {}, state, now)


def test_headroom_holds_a_drain_with_numbers() -> None:
    policy = make_policy(headroom=0.2, max_drained=4, min_healthy_regions=1)
    # us-east-1 carries 4 - 0.5 = 3.5 replicas of load; others have 0.5 + 0.5 + 0.5 = 1.5 spare.
    spare = {"us-east-1": 0.5, "us-west-2": 0.5, "eu-west-1": 0.5, "eu-central-1": 0.5}
    state = step(policy, None, T0, reps(T0, spare))
    before = weights(state, CHAT, "default")["us-east-1"]
    ovs = {"us-east-1": make_override("us-east-1")}
    for i in range(1, 4):
        state = step(policy, state, T0 + i, reps(T0 + i, spare, seq=1 + i), ovs)
    pool = state.pool_for(CHAT, "default")
    assert pool is not None
    member = next(m for m in pool.members if m.region == "us-east-1")
    assert member.weight == before, "the drain must be held, not executed"
    assert "held" in member.reason and "3.50 replicas" in member.reason and "1.50" in member.reason
    assert "4.20 needed" in member.reason and "20%" in member.reason


def test_forced_drain_bypasses_headroom() -> None:
    policy = make_policy(headroom=0.2, max_drained=4)
    spare = {"us-east-1": 0.5, "us-west-2": 0.5, "eu-west-1": 0.5, "eu-central-1": 0.5}
    state = step(policy, None, T0, reps(T0, spare))
    ovs = {"us-east-1": Override(region="us-east-1", reason="fire", actor="oncall", since=T0, force=True)}
    for i in range(1, 6):
        state = step(policy, state, T0 + i, reps(T0 + i, spare, seq=1 + i), ovs)
    assert weights(state, CHAT, "default")["us-east-1"] == 0
    pool = state.pool_for(CHAT, "default")
    assert pool is not None
    member = next(m for m in pool.members if m.region == "us-east-1")
    assert "[forced]" in member.reason


def test_drain_proceeds_with_enough_headroom() -> None:
    policy = make_policy(headroom=0.2)
    state = step(policy, None, T0, reps(T0))  # every region 2.0 spare of 4: load 2.0
    ovs = {"us-west-2": make_override("us-west-2")}
    for i in range(1, 6):
        state = step(policy, state, T0 + i, reps(T0 + i, seq=1 + i), ovs)
    assert weights(state, CHAT, "default")["us-west-2"] == 0


def test_min_healthy_regions_holds_the_last_drain() -> None:
    policy = make_policy(min_healthy_regions=1, headroom=0.0, max_drained=4)
    state = step(policy, None, T0, reps(T0))
    ovs = {r: make_override(r, since=T0 + i) for i, r in enumerate(("eu-west-1", "eu-central-1"))}
    for i in range(1, 8):
        state = step(policy, state, T0 + i, reps(T0 + i, seq=1 + i), ovs)
    eu = weights(state, CHAT, "eu")
    assert sorted(eu.values())[0] == 0 and sorted(eu.values())[1] > 0, eu
    pool = state.pool_for(CHAT, "eu")
    assert pool is not None
    held = [m for m in pool.members if m.weight > 0]
    assert "min_healthy_regions 1" in held[0].reason


def test_max_drained_holds_later_drains() -> None:
    policy = make_policy(max_drained=1, headroom=0.0)
    state = step(policy, None, T0, reps(T0))
    ovs = {"us-east-1": make_override("us-east-1", since=T0), "us-west-2": make_override("us-west-2", since=T0 + 5)}
    for i in range(1, 6):
        state = step(policy, state, T0 + i, reps(T0 + i, seq=1 + i), ovs)
    w = weights(state, CHAT, "default")
    assert w["us-east-1"] == 0
    assert w["us-west-2"] > 0
    pool = state.pool_for(CHAT, "default")
    assert pool is not None
    assert "max_drained 1" in next(m.reason for m in pool.members if m.region == "us-west-2")


def test_flapping_region_is_damped() -> None:
    policy = make_policy(flap_threshold=3, flap_window_s=60, flap_penalty_s=100, rise=1, fall=1)
    state = step(policy, None, T0, reps(T0))
    now = T0
    seq = 1
    for bad in (True, False, True, False):
        now += 1
        seq += 1
        state = step(policy, state, now, reps(now, seq=seq, us_west_2=1 if bad else 0))
    # Four transitions (out, in, out, in): damped at the third; healthy now but kept out.
    assert state.regions["us-west-2"].state == "healthy"
    assert state.regions["us-west-2"].damped_until > now
    assert weights(state, CHAT, "default")["us-west-2"] == 0
    pool = state.pool_for(CHAT, "default")
    assert pool is not None
    assert "flap damping" in next(m.reason for m in pool.members if m.region == "us-west-2")
    later = now + 101
    state = step(policy, state, later, reps(later, seq=seq + 1))
    assert weights(state, CHAT, "default")["us-west-2"] > 0


def _flapped(policy: Policy) -> tuple[DesiredState, float, int]:
    state = step(policy, None, T0, reps(T0))
    now, seq = T0, 1
    for bad in (True, False, True, False):
        now += 1
        seq += 1
        state = step(policy, state, now, reps(now, seq=seq, us_west_2=1 if bad else 0))
    assert state.regions["us-west-2"].damped_until > now
    return state, now, seq


def test_operator_clears_flap_damping() -> None:
    policy = make_policy(flap_threshold=3, flap_window_s=60, flap_penalty_s=100, rise=1, fall=1, planned_step=64)
    state, now, seq = _flapped(policy)
    # Cleared: the penalty is lifted and the past transitions stop counting; the weight ramps
    # back in planned steps like any recovery.
    cleared = {"us-west-2": now + 1}
    now += 1
    state = plan(policy, INV, reps(now, seq=seq + 1), {}, state, now, damping_cleared=cleared)
    st = state.regions["us-west-2"]
    assert st.damped_until == 0.0 and st.transitions == ()
    assert weights(state, CHAT, "default")["us-west-2"] == 64
    # One new flap after the clear does not damp it again at once: only 2 transitions count.
    for bad in (True, False):
        now += 1
        seq += 1
        state = plan(policy, INV, reps(now, seq=seq + 1, us_west_2=1 if bad else 0), {}, state, now,
                     damping_cleared=cleared)
    assert state.regions["us-west-2"].damped_until == 0.0
    assert len(state.regions["us-west-2"].transitions) == 2


def test_damping_start_and_end_are_decisions() -> None:
    policy = make_policy(flap_threshold=3, flap_window_s=60, flap_penalty_s=100, rise=1, fall=1)
    state = step(policy, None, T0, reps(T0))
    now, seq, started = T0, 1, []
    for bad in (True, False, True, False):
        now += 1
        seq += 1
        state = step(policy, state, now, reps(now, seq=seq, us_west_2=1 if bad else 0))
        started += [d for d in state.decisions if d.action == "flap damping"]
    assert len(started) == 1 and started[0].subject == "region us-west-2"
    assert "kept out for 100s" in started[0].reason and "gtm undamp us-west-2" in started[0].reason
    state = plan(policy, INV, reps(now + 1, seq=seq + 1), {}, state, now + 1, damping_cleared={"us-west-2": now + 1})
    over = [d for d in state.decisions if d.action == "flap damping over"]
    assert [d.reason for d in over] == ["lifted by an operator"]


def test_a_clear_older_than_the_damping_does_not_lift_it() -> None:
    policy = make_policy(flap_threshold=3, flap_window_s=60, flap_penalty_s=100, rise=1, fall=1)
    state, now, seq = _flapped(policy)
    before = state.regions["us-west-2"].damped_until
    state = plan(policy, INV, reps(now + 1, seq=seq + 1), {}, state, now + 1, damping_cleared={"us-west-2": T0})
    assert state.regions["us-west-2"].damped_until == before
    assert weights(state, CHAT, "default")["us-west-2"] == 0


def _spill_policy() -> Policy:
    seg = Segment(name="eu", match=SegmentMatch(continents=("EU",)),
                  residency=eu_segment().residency, on_unavailable="spill", spill_to=("US",))
    return make_policy([make_service(segments=[seg])])


def test_spill_only_when_the_policy_says_so_and_loudly() -> None:
    policy = _spill_policy()
    r = reps(T0, eu_west_1=2, eu_central_1=2)
    state = step(policy, None, T0, r)
    eu = state.pool_for(CHAT, "eu")
    assert eu is not None and eu.mode == "spill"
    assert "SPILL" in eu.reason and "on_unavailable: spill" in eu.reason
    active = {m.region for m in eu.active}
    assert active == {"us-east-1", "us-west-2"}
    # Without the explicit spill, the same failure leaves the segment dark.
    state = step(make_policy(), None, T0, r)
    eu = state.pool_for(CHAT, "eu")
    assert eu is not None and eu.mode == "dark" and not eu.active


def test_fallback_service_answers_a_dark_segment_within_residency() -> None:
    small = make_service("chat-small", regions=("eu-central-1", "us-east-1"), segments=[eu_segment()], model="small")
    main = make_service(segments=[eu_segment()], regions=("eu-west-1", "us-west-2")).model_copy(
        update={"fallback": "chat-small"}
    )
    policy = make_policy([main, small])
    r = {k: make_report(k, T0, models={"llama": 2.0, "small": 2.0}) for k in ALL}
    r["eu-west-1"] = make_report("eu-west-1", T0, healthy=False, fail=3, models={"llama": 0.0, "small": 0.0})
    state = step(policy, None, T0, r)
    route = next(x for x in state.services[CHAT].segments if x.segment == "eu")
    assert route.note.startswith("FALLBACK")
    pool = state.pools[route.pool_id]
    assert {m.region for m in pool.active} == {"eu-central-1"}
    assert any("fallback chat-small" in d.action for d in state.decisions)
    # The default segment still has us-west-2 of its own: no fallback there.
    default = next(x for x in state.services[CHAT].segments if x.segment == "default")
    assert default.note == ""


def test_fallback_refused_when_it_would_break_residency() -> None:
    small = make_service("chat-small", regions=("us-east-1",), model="small")
    main = make_service(segments=[eu_segment()], regions=("eu-west-1", "us-west-2")).model_copy(
        update={"fallback": "chat-small"}
    )
    policy = make_policy([main, small])
    r = {k: make_report(k, T0, models={"llama": 2.0, "small": 2.0}) for k in ALL}
    r["eu-west-1"] = make_report("eu-west-1", T0, healthy=False, fail=3)
    state = step(policy, None, T0, r)
    route = next(x for x in state.services[CHAT].segments if x.segment == "eu")
    assert route.note == ""
    assert state.pools[route.pool_id].dark
    assert any("not used" in d.action and "us-east-1" in d.reason for d in state.decisions)


def test_demand_is_smoothed_per_new_report() -> None:
    policy = make_policy(demand_smoothing=0.5)
    state = step(policy, None, T0, reps(T0, {"us-east-1": 3.0}))  # load 4 - 3 = 1
    assert state.regions["us-east-1"].load == 1.0
    state = step(policy, state, T0 + 1, reps(T0 + 1, {"us-east-1": 1.0}, seq=2))  # instant load 3
    assert state.regions["us-east-1"].load == 2.0
    state = step(policy, state, T0 + 2, reps(T0 + 2, {"us-east-1": 1.0}, seq=2))  # same report
    assert state.regions["us-east-1"].load == 2.0


def test_demand_in_tokens_per_s_comes_from_the_measured_rate() -> None:
    from gtm.engine.demand import instant_load
    from gtm.models.report import ModelStats

    region = INV.regions["us-east-1"]
    rep = make_report("us-east-1", T0).model_copy(update={
        "capacity_unit": "tokens/s",
        "models": {"llama": ModelStats(model="llama", replicas_total=2, replicas_healthy=2,
                                       tokens_per_s=1234.5, spare_capacity=500.0)},
    })
    assert instant_load(rep, region) == 1234.5


def _cap(fraction: float, immediate: bool = False) -> dict[str, dict[str, object]]:
    from gtm.models.rollout import WeightCap

    return {"chat": {"eu-central-1": WeightCap(fraction, "rollout r", immediate=immediate)}}


def test_rollout_deploy_drain_is_paced_and_rollback_is_immediate() -> None:
    policy = make_policy(headroom=0.0)
    state = step(policy, None, T0, reps(T0))
    assert weights(state, CHAT, "eu")["eu-central-1"] == 255
    state = plan(policy, INV, reps(T0 + 1, seq=2), {}, state, T0 + 1, caps=_cap(0.0))  # type: ignore[arg-type]
    assert weights(state, CHAT, "eu")["eu-central-1"] == 255 - 64, "a deploy drain steps like any drain"
    state = plan(policy, INV, reps(T0 + 2, seq=3), {}, state, T0 + 2, caps=_cap(0.0, immediate=True))  # type: ignore[arg-type]
    assert weights(state, CHAT, "eu")["eu-central-1"] == 0, "a rollback acts at once"


def test_rollout_never_darkens_a_pool_for_a_deploy() -> None:
    policy = make_policy(headroom=0.0, min_healthy_regions=1)
    state = step(policy, None, T0, reps(T0))
    # eu-west-1 fails while eu-central-1 is routed away for its deploy: the cap is lifted.
    r = reps(T0 + 1, seq=2, eu_west_1=3)
    state = plan(policy, INV, r, {}, state, T0 + 1, caps=_cap(0.0))  # type: ignore[arg-type]
    pool = state.pool_for(CHAT, "eu")
    assert pool is not None and not pool.dark
    member = next(m for m in pool.members if m.region == "eu-central-1")
    assert member.weight > 0 and "LIFTED" in member.reason


def test_rollout_drain_held_without_headroom() -> None:
    policy = make_policy(headroom=0.2)
    spare = {"us-east-1": 0.5, "us-west-2": 0.5, "eu-west-1": 0.5, "eu-central-1": 0.5}
    state = step(policy, None, T0, reps(T0, spare))
    state = plan(policy, INV, reps(T0 + 1, spare, seq=2), {}, state, T0 + 1, caps=_cap(0.0))  # type: ignore[arg-type]
    member = next(m for m in state.pool_for(CHAT, "eu").members if m.region == "eu-central-1")  # type: ignore[union-attr]
    assert member.weight == 255 and "held" in member.reason and "needed" in member.reason


def test_drain_is_held_when_the_only_other_region_is_held_at_weight_zero() -> None:
    # eu-central-1 was drained to 0, is undrained while failing one check (below `fall`), so
    # hysteresis keeps it at 0. Draining eu-west-1 now would leave the EU pool with no region
    # carrying weight: the drain must wait, whatever eu-central-1's capacity target says.
    policy = make_policy(min_healthy_regions=1, headroom=0.0, max_drained=4)
    state = step(policy, None, T0, reps(T0))
    ovs = {"eu-central-1": make_override("eu-central-1", since=T0)}
    for i in range(1, 8):
        state = step(policy, state, T0 + i, reps(T0 + i, seq=1 + i), ovs)
    assert weights(state, CHAT, "eu")["eu-central-1"] == 0
    before = weights(state, CHAT, "eu")["eu-west-1"]
    assert before > 0
    ovs = {"eu-west-1": make_override("eu-west-1", since=T0 + 9)}
    for i in range(10, 14):
        state = step(policy, state, T0 + i, reps(T0 + i, seq=1 + i, eu_central_1=1), ovs)
        eu = weights(state, CHAT, "eu")
        assert eu == {"eu-central-1": 0, "eu-west-1": before}, eu
    pool = state.pool_for(CHAT, "eu")
    assert pool is not None
    west = next(m for m in pool.members if m.region == "eu-west-1")
    assert "held" in west.reason and "min_healthy_regions 1" in west.reason, west.reason


def test_cordoned_region_beside_a_nearly_full_fleet_gets_a_bounded_weight() -> None:
    # Found by `make soak`: the free regions' largest spare is a subnormal float, so the
    # cordoned region's spare / top overflowed to infinity and plan() raised OverflowError.
    policy = make_policy(headroom=0.0)
    spare = {"us-east-1": 5e-324, "us-west-2": 0.0, "eu-west-1": 0.0, "eu-central-1": 1.0}
    ovs = {"eu-central-1": make_override("eu-central-1", "cordon")}
    state = step(policy, None, T0, reps(T0, spare), ovs)
    eu = weights(state, CHAT, "eu")
    assert eu["eu-central-1"] == 0, "cold start: a cordoned region has no weight to keep"
    state = step(policy, None, T0, reps(T0, spare))
    state = step(policy, state, T0 + 1, reps(T0 + 1, spare, seq=2), ovs)
    w = weights(state, CHAT, "default")
    assert w["eu-central-1"] == 255, "cordoned: held at its previous weight, never above"
    assert w["us-east-1"] > 1 and all(0 <= v <= 255 for v in w.values()), w  # ramping to the top


def test_drain_projection_counts_the_rollouts_in_force_and_cordons_move_nothing() -> None:
    from gtm.config.loader import Config, policy_digest
    from gtm.controller.drain import project_drain
    from gtm.models.rollout import WeightCap
    from gtm.store.inputs import PlanInputs

    policy = make_policy(min_healthy_regions=1, headroom=0.0, max_drained=4)
    cfg = Config(policy=policy, inventory=INV, digest=policy_digest(policy, INV), files=())
    caps = {"chat": {"eu-west-1": WeightCap(0.0, "rollout x: draining for deploy of v2")}}
    state = plan(policy, INV, reps(T0), {}, None, T0, caps=caps)
    for i in range(1, 6):  # the rollout's deploy drain has taken eu-west-1 out
        state = plan(policy, INV, reps(T0 + i, seq=1 + i), {}, state, T0 + i, caps=caps)
    assert weights(state, CHAT, "eu")["eu-west-1"] == 0
    ov = make_override("eu-central-1", since=T0 + 6)
    blind = project_drain(cfg, PlanInputs(reports=reps(T0 + 6, seq=8), previous=state), ov, T0 + 6)
    with_caps = PlanInputs(reports=reps(T0 + 6, seq=8), previous=state, caps=caps)
    seen = project_drain(cfg, with_caps, ov, T0 + 6)
    assert seen.held and any("min_healthy_regions 1" in h for h in seen.held), seen.held
    assert not blind.held, "without the rollout's caps the projection would wave it through"
    cordon = project_drain(cfg, with_caps, make_override("eu-central-1", "cordon"), T0 + 6)
    assert cordon.loads == {} and not cordon.held
