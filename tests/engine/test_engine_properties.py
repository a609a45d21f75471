"""Property tests of ``gtm.engine.plan`` over random fleets, policies, reports and overrides.

Each example is a sequence of plans over increasing ``now``; every invariant of DESIGN.md that
the engine alone can hold is checked on every plan against the one before it.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gtm.engine import PlanCache, plan
from gtm.engine.health import is_fresh
from gtm.models.plan import SERVING_STATES, DesiredState
from gtm.models.policy import Policy
from gtm.models.region import Inventory
from gtm.models.report import FleetReport
from tests.factories import MODELS, Scenario, Step, examples, make_report, reports_for, scenarios

SETTINGS = settings(
    max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _plan(sc: Scenario, step: Step, previous: DesiredState | None) -> DesiredState:
    return plan(sc.policy, sc.inventory, step.reports, step.overrides, previous, step.now, digest="d")


def _stale(policy: Policy, inventory: Inventory, step: Step) -> tuple[bool, bool]:
    """(more than stale_fraction of the regions stale, the same judged over the lapse window:
    once one report lapsed, those older than timeout − window count too)."""
    regions = [r for r in policy.region_names if r in inventory.regions]
    stale = [r for r in regions if not is_fresh(step.reports.get(r), policy.health, step.now)]
    window = policy.safety.lapse_window_s
    if window is None:
        window = 2 * max((step.reports[r].interval_s for r in regions if r in step.reports), default=0.0)
    cutoff = policy.health.report_timeout_s - window
    lapsing = [r for r in regions if r not in stale and step.now - step.reports[r].observed_at > cutoff]
    fraction = policy.safety.stale_fraction
    now_stale = bool(regions) and len(stale) / len(regions) > fraction
    over_window = bool(stale) and (len(stale) + len(lapsing)) / len(regions) > fraction
    return now_stale, over_window


def _check_residency(sc: Scenario, state: DesiredState) -> None:
    """(1) A pinned segment's pool never weighs a region outside its jurisdictions."""
    for svc in state.services.values():
        for route in svc.segments:
            pool = state.pools[route.pool_id]
            if not route.jurisdictions:
                continue
            for m in pool.members:
                juris = sc.inventory.regions[m.region].jurisdiction
                assert juris in route.jurisdictions or m.weight == 0, (
                    f"{svc.fqdn}/{route.segment} pinned to {route.jurisdictions} gives "
                    f"{m.region} ({juris}) weight {m.weight} in mode {pool.mode}"
                )
                # Stronger: such a region is never even a member.
                assert juris in route.jurisdictions


def _check_weights_and_failures(sc: Scenario, state: DesiredState) -> None:
    """Weights in 0..255; (5) an unhealthy/unknown region has weight 0 unless the pool fails
    static or open."""
    for pool in state.pools.values():
        assert [m.region for m in pool.members] == sorted(m.region for m in pool.members)
        for m in pool.members:
            assert 0 <= m.weight <= 255
            st_ = state.regions[m.region]
            if not st_.serving and pool.mode not in ("fail-static", "fail-open"):
                assert m.weight == 0, (m, st_, pool.mode)
        if pool.mode == "dark":
            assert pool.dark
        if pool.mode == "normal":
            assert not pool.dark


def _check_step(sc: Scenario, step: Step, prev: DesiredState, cur: DesiredState) -> None:
    rules = sc.policy.safety
    if cur.held:
        # (3) static stability: the routing is the previous routing.
        assert cur.routing_digest() == prev.routing_digest()
        assert cur.pools == prev.pools and cur.services == prev.services
        assert cur.generation == prev.generation
        assert "static stability" in cur.hold_reason
        return
    active = {r: o for r, o in step.overrides.items() if o.active(step.now)}
    for pid, pool in cur.pools.items():
        before = prev.pools.get(pid)
        if before is None:
            continue
        for m in pool.members:
            was = before.weight_of(m.region)
            ov = active.get(m.region)
            # (2) a drained or cordoned region never gains weight while the override stands.
            if ov is not None:
                assert m.weight <= was, (
                    f"{ov.kind}ed {m.region} rose {was}→{m.weight} in {pid} ({pool.mode})"
                )
            # (5) a drain step is taken only with the capacity to absorb it: the other serving
            # regions' spare covers the region's load × (1 + headroom), and enough of them remain.
            # A region that cannot serve (failed, no healthy replica of the model) leaves at
            # once whatever its override: that is a failure move, not a drain step.
            if (
                ov is not None and ov.kind == "drain" and not ov.force and m.weight < was
                and pool.mode == "normal" and cur.regions[m.region].state in SERVING_STATES
                and not m.reason.startswith("failover:")
            ):
                others = [o for o in pool.members if o.region != m.region and o.weight > 0]
                units = {cur.regions[o.region].capacity_unit for o in [*others, m]}
                assert len(others) >= rules.min_healthy_regions, (m, others)
                if len(units) == 1:
                    spare = sum(cur.regions[o.region].spare_capacity for o in others)
                    need = cur.regions[m.region].load * (1 + rules.headroom)
                    assert spare + 1e-6 >= need, (
                        f"drain of {m.region} stepped {was}→{m.weight} with {spare:.2f} spare < {need:.2f}"
                    )
            # (5) planned moves up: at most one step per plan, except when failing open.
            if pool.mode != "fail-open":
                assert m.weight - was <= rules.planned_step, (
                    f"{m.region} rose {was}→{m.weight} > step {rules.planned_step} ({pool.mode})"
                )
    # Generation grows exactly when the routing changes.
    if prev.generation == 0:
        assert cur.generation == 1
    elif cur.routing_digest() == prev.routing_digest():
        assert cur.generation == prev.generation
    else:
        assert cur.generation == prev.generation + 1


@SETTINGS
@given(scenarios())
def test_invariants_over_plan_sequences(sc: Scenario) -> None:
    previous: DesiredState | None = None
    for step in sc.steps:
        state = _plan(sc, step, previous)
        # (6) determinism: the same inputs give the same plan.
        again = _plan(sc, step, previous)
        assert again.routing_digest() == state.routing_digest()
        assert again == state

        now_stale, over_window = _stale(sc.policy, sc.inventory, step)
        any_stale = any(not is_fresh(step.reports.get(r), sc.policy.health, step.now)
                        for r in sc.policy.region_names if r in sc.inventory.regions)
        # Held when stale over the lapse window (so always when stale at this instant), or
        # while stragglers rejoin after a hold; never with every report fresh.
        assert over_window or not now_stale
        assert state.held == over_window or (previous is not None and previous.held and any_stale), (
            over_window, state.hold_reason)
        stale = state.held
        if stale and previous is None:
            assert state.pools == {} and state.services == {} and state.generation == 0
        if not state.held:
            assert set(state.services) == {s.fqdn for s in sc.policy.services}
            _check_weights_and_failures(sc, state)
        _check_residency(sc, state)
        if previous is not None:
            _check_step(sc, step, previous, state)
        previous = state


@settings(max_examples=examples(150), deadline=None)
@given(data=st.data(), sc=scenarios(max_steps=1))
def test_residency_in_any_failure_combination_without_previous(
    data: st.DataObject, sc: Scenario
) -> None:
    """(1) also from a cold start, with the failure mode forced to fail-open (the mode that
    spreads traffic widest)."""
    policy = sc.policy.model_copy(
        update={"safety": sc.policy.safety.model_copy(update={"on_all_unhealthy": "fail-open"})}
    )
    sc = Scenario(sc.inventory, policy, sc.steps)
    step = sc.steps[0]
    reports = data.draw(reports_for(sc.inventory, policy, step.now))
    state = plan(policy, sc.inventory, reports, step.overrides, None, step.now)
    _check_residency(sc, state)
    if not state.held:
        _check_weights_and_failures(sc, state)
        for svc in sc.policy.services:
            for route in state.services[svc.fqdn].segments:
                pool = state.pools[route.pool_id]
                for m in pool.active:
                    ov = step.overrides.get(m.region)
                    # Cold start: a drained or cordoned region has nothing to keep.
                    assert ov is None or not ov.active(step.now), (m, ov)


@settings(max_examples=examples(100), deadline=None)
@given(sc=scenarios())
def test_round_trip_preserves_every_plan(sc: Scenario) -> None:
    previous: DesiredState | None = None
    for step in sc.steps:
        state = _plan(sc, step, previous)
        back = DesiredState.from_json(state.to_json())
        assert back == state
        assert back.routing_digest() == state.routing_digest()
        # Planning from the deserialised previous gives the same result.
        if previous is not None:
            restored = DesiredState.from_json(previous.to_json())
            assert _plan(sc, step, restored) == state
        previous = state


def _calm(inventory: Inventory, spares: list[tuple[float, float]], t: float) -> dict[str, FleetReport]:
    """Every region fresh at ``t``, passing its checks and serving every model with the given
    spare capacity (the region's total stays 1.0, so only the per-model figures move): pools
    settle."""
    return {
        r: make_report(r, t, spare=1.0, ok=5, models=dict(zip(MODELS, s, strict=True)))
        for r, s in zip(sorted(inventory.regions), spares, strict=True)
    }


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), sc=scenarios())
def test_reusing_settled_pools_changes_nothing(data: st.DataObject, sc: Scenario) -> None:
    """The planner reuses a settled, unchanged pool while its inputs hold (a cache on the
    compiled policy, held in a ``PlanCache``). Planning every step several times over, the result
    must equal that of a planner that cannot reuse anything (no cache, and the previous pools are
    never its objects). Half the examples are calm (fresh, passing reports,
    overrides only now and then), where most pools settle and are reused."""
    calm = data.draw(st.booleans())
    cache = PlanCache()
    cached: DesiredState | None = None
    fresh: DesiredState | None = None
    t = sc.steps[0].now
    n = len(sc.inventory.regions)
    for i, step in enumerate(sc.steps):
        spare = st.sampled_from([0.0, 1.0, 2.5, 10.0])
        spares = data.draw(st.lists(st.tuples(spare, spare), min_size=n, max_size=n))
        # Calm examples take the step's drains and cordons now and then: onto settled pools.
        overrides = step.overrides if not calm or data.draw(st.booleans()) else {}
        for _ in range(3 if i < len(sc.steps) - 1 else 8):
            t += 0.3
            reports = _calm(sc.inventory, spares, t) if calm else step.reports
            a = plan(sc.policy, sc.inventory, reports, overrides, cached, t, digest="d", cache=cache)
            b = plan(sc.policy, sc.inventory, reports, overrides, fresh, t, digest="d")
            assert a == b
            assert a.routing_digest() == b.routing_digest() and a.generation == b.generation
            cached, fresh = a, DesiredState.from_json(b.to_json())
