"""Property tests of the anycast announcements over random fleets, policies, reports and overrides.

The scenarios are ``tests.factories.scenarios`` (random inventories, policies, report sequences,
drains and cordons) with BGP sides on a random subset of the regions and anycast prefixes on
random services and segments. Every plan of a sequence is checked against the one before it.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gtm.engine import plan
from gtm.engine.anycast import PrefixSpec, prefix_specs
from gtm.models.override import Override
from gtm.models.plan import DesiredState
from gtm.models.policy import Policy
from tests.factories import Scenario, examples, reports_for, scenarios
from tests.support.anycast import with_bgp

SETTINGS = settings(max_examples=examples(120), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def anycast_scenarios(draw: st.DrawFn, max_steps: int = 6) -> Scenario:
    """A random scenario whose regions (some) have a BGP side and whose services (some) take
    anycast: a service-level prefix and/or prefixes of their own on segments."""
    sc = draw(scenarios(max_steps=max_steps))
    names = sorted(sc.inventory.regions)
    bgp = draw(st.lists(st.sampled_from(names), unique=True, min_size=1))
    inventory = with_bgp(sc.inventory, bgp)
    doc = sc.policy.model_dump()
    n = 0
    for svc in doc["services"]:
        if not draw(st.booleans()):
            continue
        service_level = draw(st.booleans())
        if service_level:
            svc["anycast"] = {"prefix": f"10.{n}.0.0/16"}
            n += 1
        for seg in svc["segments"]:
            is_default = not seg["match"]["continents"] and not seg["match"]["countries"]
            if (is_default and service_level) or not draw(st.booleans()):
                continue
            seg["anycast"] = {"prefix": f"10.{n}.0.0/16"}
            n += 1
    return Scenario(inventory, Policy.model_validate(doc), sc.steps)


def _pool_weights(state: DesiredState, spec: PrefixSpec) -> dict[str, int]:
    pool = state.pool_for(spec.fqdn, spec.segment)
    assert pool is not None
    return {r: pool.weight_of(r) for r in spec.eligible}


def _announcing(state: DesiredState, prefix: str) -> set[str]:
    return {a.region for a in state.announcements.get(prefix, ()) if a.action == "announce"}


def _check_plan(sc: Scenario, specs: tuple[PrefixSpec, ...], state: DesiredState) -> None:
    """Residency, eligibility, agreement with the DNS weights, never withdrawn everywhere."""
    for spec in specs:
        anns = state.announcements.get(spec.prefix, ())
        if not spec.eligible:
            assert anns == ()
            continue
        if not state.held:  # a held plan carries what the previous one had (maybe nothing yet)
            assert [a.region for a in anns] == list(spec.eligible)
        announcing = _announcing(state, spec.prefix)
        for r in announcing:
            assert sc.inventory.regions[r].bgp is not None
            if spec.jurisdictions:
                # Residency holds in every failure combination: never announced outside the pin.
                assert sc.inventory.regions[r].jurisdiction in spec.jurisdictions, (spec, r)
        if state.held:
            continue
        w = _pool_weights(state, spec)
        if any(v > 0 for v in w.values()):
            # Announcements agree with the DNS weights: weight > 0 ⇔ announce.
            assert announcing == {r for r, v in w.items() if v > 0}, (spec.prefix, w, anns)
            assert all(not a.reason.startswith(("FAIL-", "WITHDRAWN")) for a in anns)
        else:
            drained = {r for r in spec.eligible if state.regions[r].override == "drain"}
            assert not announcing & drained, "a drained region is never kept or opened"
            if sc.policy.safety.on_all_unhealthy == "fail-open":
                cordoned = {r for r in spec.eligible if state.regions[r].override == "cordon"}
                assert set(spec.eligible) - drained - cordoned <= announcing


def _check_step(
    sc: Scenario, specs: tuple[PrefixSpec, ...], prev: DesiredState, cur: DesiredState,
    prev_ov: dict[str, Override], ov: dict[str, Override], prev_now: float, now: float,
) -> None:
    if cur.held:
        assert cur.announcements == prev.announcements
        return
    for spec in specs:
        before = {a.region: a for a in prev.announcements.get(spec.prefix, ())}
        w = _pool_weights(cur, spec)
        fallback = not any(v > 0 for v in w.values())
        for a in cur.announcements.get(spec.prefix, ()):
            b = before.get(a.region)
            same = b is not None and (b.action, b.prepend, b.med) == (a.action, a.prepend, a.med)
            assert a.changed_at == (b.changed_at if same and b is not None else now)
            o, po = ov.get(a.region), prev_ov.get(a.region)
            draining = (o is not None and o.kind == "drain" and o.active(now)
                        and po == o and po.active(prev_now))
            if draining and b is not None and a.action == "announce":
                # A draining region never comes back nor announces more preferred.
                assert b.action == "announce", (a, b)
                assert a.prepend >= b.prepend and a.med >= b.med, (a, b)
            if fallback and a.action == "announce" and sc.policy.safety.on_all_unhealthy == "fail-static":
                # Fail-static only keeps what was announced.
                assert b is not None and b.action == "announce" and (a.prepend, a.med) == (b.prepend, b.med)


@SETTINGS
@given(anycast_scenarios())
def test_announcement_invariants_over_plan_sequences(sc: Scenario) -> None:
    specs = prefix_specs(sc.policy, sc.inventory)
    previous: DesiredState | None = None
    prev_ov: dict[str, Override] = {}
    prev_now = 0.0
    for step in sc.steps:
        state = plan(sc.policy, sc.inventory, step.reports, step.overrides, previous, step.now, digest="d")
        again = plan(sc.policy, sc.inventory, step.reports, step.overrides, previous, step.now, digest="d")
        assert again.announcements == state.announcements  # determinism
        if state.held and previous is None:
            assert state.announcements == {}
        else:
            _check_plan(sc, specs, state)
        if previous is not None:
            _check_step(sc, specs, previous, state, prev_ov, step.overrides, prev_now, step.now)
            # Generation grows exactly when the routing (announcements included) changes.
            if previous.generation and previous.routing_digest() == state.routing_digest():
                assert state.generation == previous.generation
        previous, prev_ov, prev_now = state, step.overrides, step.now
        back = DesiredState.from_json(state.to_json())
        assert back.announcements == state.announcements


@settings(max_examples=examples(100), deadline=None)
@given(data=st.data(), sc=anycast_scenarios(max_steps=1))
def test_residency_of_announcements_in_any_failure_combination(data: st.DataObject, sc: Scenario) -> None:
    """From a cold start, with failures drawn at random and the failure mode forced to
    fail-open (the mode that announces widest): a pinned prefix stays inside its pin."""
    policy = sc.policy.model_copy(
        update={"safety": sc.policy.safety.model_copy(update={"on_all_unhealthy": "fail-open"})}
    )
    step = sc.steps[0]
    reports = data.draw(reports_for(sc.inventory, policy, step.now))
    state = plan(policy, sc.inventory, reports, step.overrides, None, step.now)
    _check_plan(Scenario(sc.inventory, policy, sc.steps), prefix_specs(policy, sc.inventory), state)
