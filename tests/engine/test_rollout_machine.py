"""The rollout state machine (pure): waves, drain wait, deploy observed, canary, bake, gates,
ramp, rollback, pause / resume / abort, and that a stored state continues identically."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from gtm.engine import plan
from gtm.engine import rollout as machine
from gtm.engine.rollout import IN_FLIGHT, RolloutState
from gtm.errors import RolloutError
from gtm.models.report import FleetReport, ModelStats
from gtm.models.rollout import GateSpec, RolloutSpec
from tests.factories import FOUR_REGIONS, MODEL, T0, eu_segment, make_inventory, make_policy, make_service

WAVES = (("eu-west-1",), ("eu-central-1",), ("us-east-1", "us-west-2"))
PHASES = ["draining", "ready-for-deploy", "canary", "ramping 50%", "ramping 100%", "done"]


def make_spec(**kw: object) -> RolloutSpec:
    base: dict[str, object] = dict(
        name="llama-v2", service="chat", target_version="v2", waves=WAVES, drain_first=True,
        drain_grace_s=5, canary_fraction=0.1, bake_time_s=60, ramp_steps=(0.5, 1.0), ramp_interval_s=10,
        gates=GateSpec(metrics=("error_rate", "ttft"), min_samples=10, max_error_rate=0.05),
    )
    base.update(kw)
    return RolloutSpec.model_validate(base)


def new_state(spec: RolloutSpec, now: float = T0) -> RolloutState:
    return machine.start(spec, now, model=MODEL, service_regions=tuple(sorted(FOUR_REGIONS)), ttl_s=30,
                         report_timeout_s=6, actor="alice")


@dataclass
class World:
    """Four regions' fleets: what each serves and how it behaves; reports on demand."""

    now: float = T0
    version: dict[str, str] = field(default_factory=lambda: dict.fromkeys(FOUR_REGIONS, "v1"))
    bad: dict[str, dict[str, float]] = field(default_factory=dict)  # version → metric overrides
    bad_in: dict[str, dict[str, float]] = field(default_factory=dict)  # region → overrides on the target
    seq: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(7))
    with_metrics: bool = True

    def reports(self) -> dict[str, FleetReport]:
        self.seq += 1
        out = {}
        for r, v in self.version.items():
            q = {"ttft": 0.2, "error_rate": 0.0, **self.bad.get(v, {}),
                 **(self.bad_in.get(r, {}) if v == "v2" else {})}
            j = 1 + 0.1 * self.rng.uniform(-1, 1)
            stats = ModelStats(
                model=MODEL, version=v, replicas_total=2, replicas_healthy=2, spare_capacity=5,
                replicas_by_version={v: 2},
                ttft_s=q["ttft"] * j if self.with_metrics else None,
                error_rate=q["error_rate"] if self.with_metrics else None,
            )
            out[r] = FleetReport(region=r, agent_id=f"{r}-a", seq=self.seq, observed_at=self.now, interval_s=1,
                                 healthy=True, consecutive_ok=10, models={MODEL: stats}, spare_capacity=5)
        return out


def routed(state: RolloutState) -> dict[str, int]:
    """The routing a planner would settle on under the rollout's caps: 0 where capped to 0."""
    caps = machine.caps(state)
    return {r: 0 if r in caps and caps[r].fraction == 0 else 255 for r in FOUR_REGIONS}


def drive(state: RolloutState, world: World, *, deploy: str | None = "v2", until: str | None = "done",
          max_ticks: int = 2000, dt: float = 1.0) -> RolloutState:
    """Tick every ``dt`` s; a region that is ready for deploy gets ``deploy`` at once (the CD
    pipeline); every state goes through JSON, as it does through Redis. ``until=None``: run
    ``max_ticks`` ticks."""
    for _ in range(max_ticks):
        if state.status == until:
            return state
        world.now += dt
        state = machine.advance(state, world.reports(), world.now, token=1, weights=routed(state))
        state = RolloutState.model_validate_json(state.model_dump_json())
        waves_in_flight = {i for i, w in enumerate(WAVES) for r in w if state.regions[r].phase in IN_FLIGHT}
        assert len(waves_in_flight) <= 1, f"more than one wave in flight: {waves_in_flight}"
        for r, p in state.regions.items():
            if deploy and p.phase == "ready-for-deploy":
                world.version[r] = deploy
    if until is None:
        return state
    raise AssertionError(f"not {until} after {max_ticks} ticks: {state.status}, {state.reason}")


def phases_of(state: RolloutState, region: str) -> list[str]:
    return [h.phase for h in state.history if h.region == region]


def test_good_version_completes_every_wave_in_order() -> None:
    world = World()
    st = drive(new_state(make_spec()), world)
    assert st.status == "done" and machine.caps(st) == {}
    assert [h.step for h in st.history] == list(range(1, len(st.history) + 1))
    for r in FOUR_REGIONS:
        assert phases_of(st, r) == PHASES, r
    # Waves strictly in order: a wave's first step comes after the previous wave's last.
    first = {r: min(h.step for h in st.history if h.region == r) for r in FOUR_REGIONS}
    last = {r: max(h.step for h in st.history if h.region == r) for r in FOUR_REGIONS}
    assert last["eu-west-1"] < first["eu-central-1"]
    assert last["eu-central-1"] < min(first["us-east-1"], first["us-west-2"])
    # Drain waited TTL (30 s) + grace (5 s); bake waited 60 s before ramping.
    at = {(h.region, h.phase): h.at for h in st.history}
    assert at[("eu-west-1", "ready-for-deploy")] - at[("eu-west-1", "draining")] >= 35
    assert at[("eu-west-1", "ramping 50%")] - at[("eu-west-1", "canary")] >= 60
    ramp = next(h for h in st.history if h.region == "eu-west-1" and h.phase == "ramping 50%")
    assert ramp.reason.startswith("gates passed") and "old version on" in ramp.reason
    last_wave = next(h for h in st.history if h.region == "us-east-1" and h.phase == "ramping 50%")
    assert "promoted regions" in last_wave.reason, "no old-version region left in the last wave"
    assert st.history[-1].phase == "done"


def test_caps_follow_the_phases() -> None:
    world = World()
    st = new_state(make_spec())
    st = machine.advance(st, world.reports(), world.now)
    assert machine.caps(st)["eu-west-1"].fraction == 0.0
    assert "draining" in machine.caps(st)["eu-west-1"].reason
    st = drive(st, world, until=None, max_ticks=40)  # past TTL + grace, deployed, canary
    cap = machine.caps(st)["eu-west-1"]
    assert st.regions["eu-west-1"].phase == "canary" and cap.fraction == 0.1
    assert cap.reason == "rollout llama-v2: canary 10% of v2"
    assert set(machine.caps(st)) == {"eu-west-1"}, "later waves are not capped yet"


def test_region_waits_for_the_deployed_version() -> None:
    world = World()
    st = drive(new_state(make_spec()), world, deploy=None, until=None, max_ticks=100)
    p = st.regions["eu-west-1"]
    assert p.phase == "ready-for-deploy"
    assert p.reason == "waiting for deploy: v2 on 0/1 healthy replicas (reported: v1×2)"
    assert machine.caps(st)["eu-west-1"].fraction == 0.0, "a drained region stays drained until deployed"


def test_without_drain_a_region_is_ready_at_once_and_keeps_traffic() -> None:
    world = World()
    st = new_state(make_spec(drain_first=False))
    st = machine.advance(st, world.reports(), world.now)
    assert st.regions["eu-west-1"].phase == "ready-for-deploy" and st.ready_for_deploy("eu-west-1")
    assert machine.caps(st) == {}
    st = drive(st, world)
    assert phases_of(st, "eu-west-1") == PHASES[1:]


def test_gate_failure_rolls_back_halts_and_waits_for_an_operator() -> None:
    world = World(bad={"v2": {"error_rate": 0.2}})
    st = drive(new_state(make_spec()), world, until="halted")
    p = st.regions["eu-west-1"]
    assert p.phase == "rolled-back"
    cap = machine.caps(st)["eu-west-1"]
    assert cap.fraction == 0.0
    assert "gate error_rate failed: canary mean 20.00% > ceiling 5.00%" in cap.reason
    assert "gate error_rate failed" in st.reason and "20.00%" in st.reason and "5.00%" in st.reason
    assert st.history[-1].phase == "halted" and st.history[-2].phase == "rolled-back"
    # Halted: nothing moves on its own, whatever happens.
    world.now += 3600
    assert machine.advance(st, world.reports(), world.now) is st
    assert st.regions["eu-central-1"].phase == "pending"

    # An operator resumes: the region bakes again from scratch (and fails again).
    resumed = machine.resume(st, world.now, actor="bob", reason="retry")
    assert resumed.status == "running" and resumed.regions["eu-west-1"].phase == "ready-for-deploy"
    assert resumed.regions["eu-west-1"].canary == {}
    # ... or aborts: the region stays routed away until it no longer serves v2.
    aborted = machine.abort(st, world.now, actor="bob", reason="bad build")
    assert aborted.regions["eu-west-1"].phase == "reverting"
    assert machine.caps(aborted)["eu-west-1"].fraction == 0.0
    world.now += 1
    aborted = machine.advance(aborted, world.reports(), world.now)
    assert aborted.regions["eu-west-1"].phase == "reverting"
    world.version["eu-west-1"] = "v1"
    world.now += 1
    aborted = machine.advance(aborted, world.reports(), world.now)
    assert aborted.regions["eu-west-1"].phase == "reverted" and machine.caps(aborted) == {}
    with pytest.raises(RolloutError, match="already aborted"):
        machine.abort(aborted, world.now, actor="bob")


def test_release_lets_an_aborted_region_serve_the_target_version() -> None:
    world = World(bad={"v2": {"error_rate": 0.2}})
    st = drive(new_state(make_spec()), world, until="halted")
    with pytest.raises(RolloutError, match="only an aborted rollout"):
        machine.release(st, "eu-west-1", world.now, actor="carol")
    aborted = machine.abort(st, world.now, actor="bob", reason="bad build")
    with pytest.raises(RolloutError, match=r"region us-east-1 is not routed away .*\(reverting: eu-west-1\)"):
        machine.release(aborted, "us-east-1", world.now, actor="carol")
    released = machine.release(aborted, "eu-west-1", world.now + 1, actor="carol", reason="needed for capacity")
    assert aborted.regions["eu-west-1"].phase == "reverting", "the stored state is not modified"
    p = released.regions["eu-west-1"]
    assert p.phase == "reverted" and p.reason.startswith("released by carol: needed for capacity")
    assert "may still serve v2" in p.reason
    assert machine.caps(released) == {}, "no cap: the region is back in normal routing"
    assert released.history[-1].actor == "carol" and released.history[-1].region == "eu-west-1"
    # The region still serves v2; the controller's tick must not route it away again.
    world.now += 5
    assert machine.advance(released, world.reports(), world.now) is released


def test_already_deployed_refuses_only_when_every_wave_region_serves_only_the_target() -> None:
    spec = make_spec()
    world = World()
    world.version = dict.fromkeys(FOUR_REGIONS, "v2")
    reports = world.reports()
    why = machine.already_deployed(spec, MODEL, reports, world.now, 6.0)
    assert why is not None and "already serves only v2" in why and "no region is left on the old" in why
    # One region still (partly) on v1: there is something to roll out.
    mixed = dict(reports)
    stats = mixed["us-west-2"].models[MODEL].model_copy(update={"replicas_by_version": {"v2": 1, "v1": 1}})
    mixed["us-west-2"] = mixed["us-west-2"].model_copy(update={"models": {MODEL: stats}})
    assert machine.already_deployed(spec, MODEL, mixed, world.now, 6.0) is None
    # A stale or missing report proves nothing either.
    assert machine.already_deployed(spec, MODEL, reports, world.now + 60, 6.0) is None
    partial = {r: rep for r, rep in reports.items() if r != "eu-central-1"}
    assert machine.already_deployed(spec, MODEL, partial, world.now, 6.0) is None
    world.version = dict.fromkeys(FOUR_REGIONS, "v1")
    assert machine.already_deployed(spec, MODEL, world.reports(), world.now, 6.0) is None


def test_slower_ttft_fails_the_statistical_gate() -> None:
    world = World(bad={"v2": {"ttft": 0.6}})
    spec = make_spec(gates=GateSpec(metrics=("error_rate", "ttft"), min_samples=10, max_error_rate=0.05))
    st = drive(new_state(spec), world, until="halted")
    assert "gate ttft failed: canary median" in st.reason and "Mann-Whitney U" in st.reason


def test_gates_wait_without_samples() -> None:
    world = World(with_metrics=False)
    st = drive(new_state(make_spec()), world, until=None, max_ticks=200)
    p = st.regions["eu-west-1"]
    assert p.phase == "canary", "no metric samples: the gates never pass by default"
    assert "waiting for samples (canary 0/10, baseline 0/10)" in p.reason


def test_gates_that_never_get_samples_roll_back_after_max_wait() -> None:
    world = World(with_metrics=False)
    spec = make_spec(gates=GateSpec(metrics=("error_rate", "ttft"), min_samples=10, max_wait_s=100))
    st = drive(new_state(spec), world, until="halted")
    p = st.regions["eu-west-1"]
    assert p.phase == "rolled-back" and machine.caps(st)["eu-west-1"].immediate
    assert "gates gave no verdict 100s after the bake (max_wait_s 100)" in p.gate and "unproven" in p.gate
    canary = next(h.at for h in st.history if h.region == "eu-west-1" and h.phase == "canary")
    rolled = next(h.at for h in st.history if h.region == "eu-west-1" and h.phase == "rolled-back")
    assert rolled - canary == pytest.approx(60 + 100, abs=1.0)  # bake 60 s + max_wait 100 s


def tick_until(state: RolloutState, world: World, done: object, max_ticks: int = 2000) -> RolloutState:
    """Like ``drive`` for any wave layout: tick every second, deploy v2 where ready, stop when
    ``done(state)``."""
    for _ in range(max_ticks):
        if done(state):  # type: ignore[operator]
            return state
        world.now += 1
        state = machine.advance(state, world.reports(), world.now, token=1, weights=routed(state))
        for r, p in state.regions.items():
            if p.phase == "ready-for-deploy":
                world.version[r] = "v2"
    raise AssertionError(f"not done after {max_ticks} ticks: {state.status}, {state.reason}")


def test_a_version_that_degrades_while_ramping_is_rolled_back_before_the_next_step() -> None:
    world = World()
    st = tick_until(new_state(make_spec()), world, lambda s: s.regions["eu-west-1"].phase == "ramping")
    world.bad = {"v2": {"error_rate": 0.2}}  # worse under more traffic
    st = tick_until(st, world, lambda s: s.status == "halted")
    p = st.regions["eu-west-1"]
    assert p.phase == "rolled-back"
    # The ceiling is checked on every tick: caught during the ramp, before the next step.
    assert "gate error_rate failed" in p.gate and "ceiling 5.00%" in p.gate and "during ramp" in p.gate
    assert not any(h.phase == "ramping 100%" for h in st.history), "it never got the next step"


def test_a_failed_region_rolls_back_its_wave_siblings_as_planned_moves() -> None:
    spec = make_spec(waves=(("eu-west-1", "eu-central-1"), ("us-east-1", "us-west-2")))
    world = World(bad_in={"eu-west-1": {"error_rate": 0.2}})
    st = tick_until(new_state(spec), world, lambda s: s.status == "halted")
    caps = machine.caps(st)
    assert st.regions["eu-west-1"].phase == "rolled-back" and caps["eu-west-1"].immediate
    sib = st.regions["eu-central-1"]
    assert sib.phase == "rolled-back" and sib.planned_rollback and not caps["eu-central-1"].immediate
    assert "eu-west-1 of the same wave failed" in sib.reason
    assert "wave sibling eu-west-1 failed" in caps["eu-central-1"].reason
    assert st.regions["us-east-1"].phase == "pending"
    # In the plan: the failed region leaves at once; its sibling is a planned move, so the EU
    # pool (these two regions only) keeps it rather than go dark, and elsewhere it steps down.
    policy = make_policy([make_service(segments=[eu_segment()])])
    before = plan(policy, make_inventory(), world.reports(), {}, None, world.now)
    after = plan(policy, make_inventory(), world.reports(), {}, before, world.now + 1, caps={"chat": caps})
    eu, default = after.pool_for("chat.gtm.example.com", "eu"), after.pool_for("chat.gtm.example.com", "default")
    assert eu is not None and default is not None
    assert eu.weight_of("eu-west-1") == 0 and default.weight_of("eu-west-1") == 0
    assert eu.weight_of("eu-central-1") > 0
    assert "LIFTED" in next(m.reason for m in eu.members if m.region == "eu-central-1")
    was = before.pool_for("chat.gtm.example.com", "default").weight_of("eu-central-1")  # type: ignore[union-attr]
    assert default.weight_of("eu-central-1") == max(0, was - policy.safety.planned_step)
    # Resume retries the whole wave.
    resumed = machine.resume(st, world.now, actor="bob")
    assert {resumed.regions[r].phase for r in ("eu-west-1", "eu-central-1")} == {"ready-for-deploy"}
    assert not resumed.regions["eu-central-1"].planned_rollback
    # The stored state reads back with the flag.
    assert RolloutState.model_validate_json(st.model_dump_json()) == st


def test_a_ceiling_breach_rolls_back_during_the_bake_and_while_paused() -> None:
    world = World()
    st = tick_until(new_state(make_spec()), world, lambda s: s.regions["eu-west-1"].phase == "canary")
    world.bad = {"v2": {"error_rate": 0.2}}
    st = tick_until(st, world, lambda s: s.status == "halted")
    canary = next(h.at for h in st.history if h.region == "eu-west-1" and h.phase == "canary")
    assert st.regions["eu-west-1"].phase == "rolled-back" and "during bake" in st.regions["eu-west-1"].gate
    assert world.now - canary < make_spec().bake_time_s, "before the bake time is over"
    # Paused, it still rolls back.
    world = World()
    st = tick_until(new_state(make_spec()), world, lambda s: s.regions["eu-west-1"].phase == "canary")
    st = machine.pause(st, world.now, actor="bob")
    world.bad = {"v2": {"error_rate": 0.2}}
    for _ in range(30):
        world.now += 1
        st = machine.advance(st, world.reports(), world.now, token=1)
    assert st.status == "halted" and st.regions["eu-west-1"].phase == "rolled-back"
    assert "during bake while paused" in st.regions["eu-west-1"].gate
    assert machine.caps(st)["eu-west-1"].fraction == 0.0


def test_pause_freezes_and_resume_keeps_the_bake_clock() -> None:
    world = World()
    st = drive(new_state(make_spec()), world, until=None, max_ticks=45)
    assert st.regions["eu-west-1"].phase == "canary"
    since = st.regions["eu-west-1"].since
    st = machine.pause(st, world.now, actor="bob")
    world.now += 500
    paused = machine.advance(st, world.reports(), world.now)
    # Frozen: no transition, no history, the same caps; only the canary's samples grow.
    assert paused.status == "paused" and paused.history == st.history and machine.caps(paused) == machine.caps(st)
    assert paused.regions["eu-west-1"].phase == "canary" and paused.regions["eu-west-1"].since == since
    st = machine.resume(paused, world.now, actor="bob")
    assert st.regions["eu-west-1"].since == since + 500
    with pytest.raises(RolloutError, match="only a paused or halted rollout resumes"):
        machine.resume(machine.abort(st, world.now, actor="x"), world.now, actor="x")


def test_stored_state_continues_identically() -> None:
    """A new leader that reloads the stored state makes exactly the same steps."""
    w1, w2 = World(), World()
    st = drive(new_state(make_spec()), w1, until=None, max_ticks=50)
    drive(new_state(make_spec()), w2, until=None, max_ticks=50)
    reloaded = RolloutState.model_validate_json(st.model_dump_json())
    assert reloaded == st
    a = drive(st, w1)
    b = drive(reloaded, w2)
    assert a.history == b.history


def test_caps_route_a_rolled_back_region_away_in_the_plan() -> None:
    world = World(bad={"v2": {"error_rate": 0.2}})
    st = drive(new_state(make_spec()), world, until="halted")
    policy = make_policy([make_service(segments=[eu_segment()])])
    inv = make_inventory()
    reports = world.reports()
    state = plan(policy, inv, reports, {}, None, world.now, caps={"chat": machine.caps(st)})
    pool = state.pool_for("chat.gtm.example.com", "eu")
    assert pool is not None
    member = next(m for m in pool.members if m.region == "eu-west-1")
    assert member.weight == 0 and "ROLLED BACK" in member.reason and "error_rate" in member.reason
    assert pool.weight_of("eu-central-1") > 0


def test_a_pool_entering_rollout_caps_reports_only_real_weight_changes() -> None:
    world = World(bad={"v2": {"error_rate": 0.2}})
    st = drive(new_state(make_spec()), world, until="halted")
    policy = make_policy([make_service(segments=[eu_segment()])])
    inv = make_inventory()
    reports = world.reports()
    before = plan(policy, inv, reports, {}, None, world.now)
    after = plan(policy, inv, reports, {}, before, world.now + 1, caps={"chat": machine.caps(st)})
    pool = after.pool_for("chat.gtm.example.com", "eu")
    assert pool is not None and "." in pool.pool_id, "the capped service has its own pool"
    moves = [d.action for d in after.decisions if d.subject == f"pool {pool.pool_id}"]
    assert moves and all(a.startswith("eu-west-1 weight ") and a.endswith("→ 0") for a in moves), moves
    assert not any("weight -" in d.action for d in after.decisions), "members are not new"


def test_a_region_is_ready_for_deploy_only_after_weight_0_held_for_ttl_plus_grace() -> None:
    """A deploy drain the safety rules hold or lift keeps serving: the region must not be
    announced ready for deploy (the CD pipeline would deploy onto live traffic)."""
    world = World()
    st = machine.advance(new_state(make_spec()), world.reports(), world.now, token=1, weights=None)
    assert st.regions["eu-west-1"].phase == "draining"
    serving = dict.fromkeys(FOUR_REGIONS, 255)
    for _ in range(120):  # two minutes, far past TTL 30 s + grace 5 s, still carrying traffic
        world.now += 1
        st = machine.advance(st, world.reports(), world.now, token=1, weights=serving)
    p = st.regions["eu-west-1"]
    assert p.phase == "draining" and p.drained_at is None
    assert "draining for deploy: weight 255 in the routing in force" in p.reason
    assert machine.advance(st, world.reports(), world.now + 1, token=1, weights=None).regions[
        "eu-west-1"].phase == "draining", "unknown routing: keep waiting"
    # Weight 0 at last: the TTL + grace wait starts now, and restarts if the weight comes back.
    out = {**serving, "eu-west-1": 0}
    zero_at = world.now + 1
    for _ in range(20):
        world.now += 1
        st = machine.advance(st, world.reports(), world.now, token=1, weights=out)
    assert st.regions["eu-west-1"].drained_at == zero_at and "weight 0 for 19/35s" in st.regions["eu-west-1"].reason
    world.now += 1
    st = machine.advance(st, world.reports(), world.now, token=1, weights=serving)  # lifted again
    assert st.regions["eu-west-1"].drained_at is None
    again_at = world.now + 1
    for _ in range(40):
        world.now += 1
        st = machine.advance(st, world.reports(), world.now, token=1, weights=out)
        if st.regions["eu-west-1"].phase == "ready-for-deploy":
            break
    ready = next(h for h in st.history if h.phase == "ready-for-deploy")
    assert ready.at - again_at == 35 and "weight 0 held 35s" in ready.reason
    assert st.ready_for_deploy("eu-west-1")
    # Lifted after it was announced ready (a failure elsewhere): no longer ready for deploy.
    world.now += 1
    st = machine.advance(st, world.reports(), world.now, token=1, weights=serving)
    p = st.regions["eu-west-1"]
    assert p.phase == "draining" and not st.ready_for_deploy("eu-west-1")
    assert "drain lifted before deploy: the region serves again (weight 255)" in p.reason


def test_service_weights_reads_the_routing_in_force() -> None:
    policy = make_policy([make_service(segments=[eu_segment()])])
    world = World()
    state = plan(policy, make_inventory(), world.reports(), {}, None, world.now)
    w = machine.service_weights(state, "chat")
    assert w is not None and set(w) == set(FOUR_REGIONS) and all(v > 0 for v in w.values())
    assert machine.service_weights(state, "nope") is None and machine.service_weights(None, "chat") is None
