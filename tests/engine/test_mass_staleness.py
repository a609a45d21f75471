"""Mass staleness judged over the lapse window: agents that stop (and resume) within one
heartbeat of each other never fail a region over.

The agents are modelled as they behave: each writes its report (and its vantage report) every
heartbeat at its own phase, with a key expiry; all stop within one heartbeat of each other and,
later, resume within one heartbeat of each other. The planner is stepped at fine, uneven time
increments from before the stop to long after the resumption, and every plan must keep every
region in every pool it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gtm.engine import PlanCache, plan
from gtm.models.plan import DesiredState
from gtm.models.policy import Policy
from gtm.models.region import Inventory
from gtm.models.report import FleetReport, VantageCheck, VantageReport
from tests.factories import T0, eu_segment, examples, make_inventory, make_policy, make_report, make_service

TIMEOUT = 6.0
"""``health.report_timeout_s`` (the default)."""


@dataclass(frozen=True)
class Agent:
    """One region's agent: writes every ``heartbeat`` seconds at ``phase``; stops at ``stop``,
    resumes at ``resume`` (its first write), counting ``ok_after`` good checks then."""

    region: str
    phase: float
    stop: float
    resume: float
    ok_after: int

    def last_write(self, t: float, heartbeat: float) -> float | None:
        """The time of the latest write at or before ``t`` (None if none yet)."""
        if t >= self.resume:
            return self.resume + ((t - self.resume) // heartbeat) * heartbeat
        upto = min(t, self.stop)
        k = (upto - self.phase) // heartbeat
        return self.phase + k * heartbeat if k >= 0 else None


@dataclass(frozen=True)
class Outage:
    regions: tuple[str, ...]
    heartbeat: float
    key_ttl: float
    agents: tuple[Agent, ...]
    vantage: bool
    steps: tuple[float, ...]


@st.composite
def outages(draw: st.DrawFn) -> Outage:
    n = draw(st.integers(2, 7))
    regions = tuple(f"r{i}" for i in range(n))
    heartbeat = draw(st.floats(0.25, 2.5))
    stop = T0 + 20 + draw(st.floats(0, heartbeat))
    resume = stop + 2 * heartbeat + TIMEOUT + draw(st.floats(0, 30))  # after a lapse
    agents = tuple(
        Agent(
            r,
            phase=T0 + draw(st.floats(0, heartbeat, exclude_max=True)),
            stop=stop + draw(st.floats(0, heartbeat)),   # all within one heartbeat of each other
            resume=max(resume, stop + heartbeat) + draw(st.floats(0, heartbeat)),
            ok_after=draw(st.sampled_from([1, 10])),    # restarted process, or resumed (SIGCONT)
        )
        for r in regions
    )
    # Fine, uneven steps from before the stop to long after the resumption.
    t, steps = stop - 3 * heartbeat, []
    end = max(a.resume for a in agents) + 3 * TIMEOUT
    gaps = draw(st.lists(st.floats(0.005, 0.3), min_size=8, max_size=8))
    i = 0
    while t < end:
        steps.append(t)
        t += gaps[i % len(gaps)]
        i += 1
    return Outage(regions, heartbeat, draw(st.sampled_from([TIMEOUT, 4 * TIMEOUT])), agents,
                  draw(st.booleans()), tuple(steps))


def _setup(regions: tuple[str, ...]) -> tuple[Policy, Inventory]:
    juris = {r: ("EU" if i % 2 == 0 else "US") for i, r in enumerate(regions)}
    policy = make_policy([make_service(regions=regions, segments=[eu_segment()])], report_timeout_s=TIMEOUT)
    return policy, make_inventory(juris)


def _inputs(o: Outage, t: float) -> tuple[dict[str, FleetReport], dict[str, VantageReport]]:
    reports: dict[str, FleetReport] = {}
    vantage: dict[str, VantageReport] = {}
    for a in o.agents:
        w = a.last_write(t, o.heartbeat)
        if w is None or t - w >= o.key_ttl:  # never written, or the key expired
            continue
        ok = a.ok_after if w >= a.resume else 10
        reports[a.region] = make_report(a.region, w, ok=ok).model_copy(update={"interval_s": o.heartbeat})
        if o.vantage:
            checks = {r: VantageCheck(target=r, reachable=True, consecutive_ok=ok) for r in o.regions if r != a.region}
            vantage[a.region] = VantageReport(vantage=a.region, agent_id="a", seq=1, observed_at=w,
                                              interval_s=o.heartbeat, checks=checks)
    return reports, vantage


SETTINGS = settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(outages())
def test_agents_stopping_within_one_heartbeat_never_fail_a_region_over(o: Outage) -> None:
    policy, inventory = _setup(o.regions)
    cache = PlanCache()
    # Steady state first: every region serving.
    start = max(a.phase for a in o.agents) + 0.01
    reports, vantage = _inputs(o, start)
    state: DesiredState = plan(policy, inventory, reports, {}, None, start, digest="d", cache=cache, vantage=vantage)
    assert not state.held and all(m.weight > 0 for p in state.pools.values() for m in p.members)
    held = 0
    for t in o.steps:
        reports, vantage = _inputs(o, t)
        state = plan(policy, inventory, reports, {}, state, t, digest="d", cache=cache, vantage=vantage)
        held += state.held
        for pool in state.pools.values():
            out = [m.region for m in pool.members if m.weight == 0]
            assert not out, (
                f"t={t - o.agents[0].stop:+.3f}s after the first stop: {out} out of {pool.pool_id}: "
                f"{[state.regions[r].reason for r in out]}"
            )
    assert held, "the outage never lapsed a report: the example tested nothing"
    assert not state.held and all(st_.state == "healthy" for st_ in state.regions.values())


def test_one_agent_alone_lapsing_is_still_judged() -> None:
    """The window widens the hold only for agents that lapse together: one silent agent among
    fresh ones (last reports well within the heartbeat) is judged as unknown, not held."""
    regions = ("r0", "r1", "r2", "r3")
    policy, inventory = _setup(regions)
    now = T0 + 100
    reports = {r: make_report(r, now, age=0.5) for r in regions[1:]}
    first = plan(policy, inventory, {r: make_report(r, T0 + 90) for r in regions}, {}, None, T0 + 90, digest="d")
    state = plan(policy, inventory, reports, {}, first, now, digest="d")
    assert not state.held
    assert state.regions["r0"].state == "unknown"
    # r0's report lapsed and two others are about to (older than 6 - 4 s): that is a mass lapse.
    reports = {"r1": make_report("r1", now, age=2.5), "r2": make_report("r2", now, age=3.9),
               "r3": make_report("r3", now, age=0.1)}
    held = plan(policy, inventory, reports, {}, first, now, digest="d")
    assert held.held
    assert "1/4 regions have no fresh report + 2 lapsing within the 4s lapse window (r1, r2)" in held.hold_reason
