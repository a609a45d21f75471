"""Region health judged with the other regions' vantage points: quorum, unknown-is-not-unhealthy
(grace), vantage reports that lapse together, and flap damping that counts confirmed failures only.

Every test passes an explicit ``now``; nothing reads the clock.
"""

from __future__ import annotations

from collections.abc import Mapping

from gtm.engine import plan
from gtm.models.plan import DesiredState
from gtm.models.policy import HealthThresholds, Policy
from gtm.models.report import FleetReport, VantageCheck, VantageReport
from tests.factories import FOUR_REGIONS, T0, healthy_reports, make_inventory, make_policy, make_report, weights

CHAT = "chat.gtm.example.com"
INV = make_inventory()
TARGET = "us-west-2"
OTHERS = tuple(r for r in sorted(FOUR_REGIONS) if r != TARGET)  # its three vantage points


def policy_with(**health: object) -> Policy:
    """The default test policy with these ``HealthThresholds`` fields (report timeout 6 s)."""
    base = make_policy()
    return base.model_copy(update={"health": HealthThresholds(**{**base.health.model_dump(), **health})})


def vantage_report(
    vantage: str, now: float, fails: Mapping[str, int] | None = None, *, age: float = 0.0,
    oks: Mapping[str, int] | None = None, reason: str = "timeout",
) -> VantageReport:
    """``vantage``'s probes of every other region, ``age`` seconds old: ``fails[target]``
    consecutive failed probes (0 = reachable, with ``oks[target]`` or 10 consecutive good ones)."""
    fails, oks = fails or {}, oks or {}
    checks = {}
    for t in FOUR_REGIONS:
        if t == vantage:
            continue
        f = fails.get(t, 0)
        checks[t] = VantageCheck(
            target=t, reachable=f == 0, consecutive_ok=0 if f else oks.get(t, 10), consecutive_fail=f,
            latency_ms=None if f else 12.0, reason=reason if f else "",
        )
    return VantageReport(vantage=vantage, agent_id=f"{vantage}-agent", seq=1, observed_at=now - age,
                         interval_s=2.0, checks=checks)


def views(now: float, failing: Mapping[str, int], **kw: object) -> dict[str, VantageReport]:
    """Every region's vantage report; ``failing`` maps a vantage region to its consecutive
    failed probes of TARGET."""
    return {v: vantage_report(v, now, {TARGET: failing.get(v, 0)}, **kw)  # type: ignore[arg-type]
            for v in FOUR_REGIONS}


def run(policy: Policy, reports: Mapping[str, FleetReport], now: float, previous: DesiredState | None = None,
        vantage: Mapping[str, VantageReport] | None = None) -> DesiredState:
    return plan(policy, INV, reports, {}, previous, now, digest="d", vantage=vantage)


def steady(policy: Policy) -> DesiredState:
    return run(policy, healthy_reports(T0), T0, None, views(T0, {}))


# -- quorum -----------------------------------------------------------------------------------


def test_unreachable_from_a_quorum_fails_over_while_its_agent_says_healthy() -> None:
    policy = policy_with()
    prev = steady(policy)
    assert weights(prev, CHAT, "default")[TARGET] > 0
    now = T0 + 1
    state = run(policy, healthy_reports(now), now, prev, views(now, dict.fromkeys(OTHERS, 2)))
    st = state.regions[TARGET]
    assert st.state == "unhealthy" and st.unreachable and st.confirmed_failure
    assert st.reason.startswith("unreachable from 3/3 vantage points (quorum > 50%): eu-central-1: timeout")
    assert "its own agent reports healthy" in st.reason
    assert weights(state, CHAT, "default")[TARGET] == 0
    assert weights(state, CHAT, "default")["us-east-1"] == 255
    # Two of three is a strict majority too.
    two = run(policy, healthy_reports(now), now, prev, views(now, dict.fromkeys(OTHERS[:2], 2)))
    assert two.regions[TARGET].state == "unhealthy"
    assert "unreachable from 2/3 vantage points" in two.regions[TARGET].reason


def test_one_vantage_point_failing_is_never_a_failover() -> None:
    policy = policy_with()
    prev = steady(policy)
    now = T0 + 1
    state = run(policy, healthy_reports(now), now, prev, views(now, {"eu-west-1": 5}))
    st = state.regions[TARGET]
    assert st.state == "healthy" and not st.unreachable
    assert "1/3 vantage points cannot reach it (below quorum > 50%, not a failover): eu-west-1: timeout" in st.reason
    assert weights(state, CHAT, "default")[TARGET] == weights(prev, CHAT, "default")[TARGET] > 0


def test_a_vantage_point_fails_only_after_fall_consecutive_probes() -> None:
    policy = policy_with(fall=3)
    prev = steady(policy)
    now = T0 + 1
    below = run(policy, healthy_reports(now), now, prev, views(now, dict.fromkeys(OTHERS, 2)))
    assert below.regions[TARGET].state == "healthy"
    at = run(policy, healthy_reports(now), now, prev, views(now, dict.fromkeys(OTHERS, 3)))
    assert at.regions[TARGET].state == "unhealthy"


def test_exactly_half_is_not_a_quorum_and_stale_vantage_points_do_not_count() -> None:
    policy = policy_with()
    prev = steady(policy)
    now = T0 + 1
    vs = views(now, {"eu-west-1": 2, "us-east-1": 2})
    vs["us-east-1"] = vantage_report("us-east-1", now, {TARGET: 2}, age=6.5)  # stale: no say
    state = run(policy, healthy_reports(now), now, prev, vs)
    st = state.regions[TARGET]
    assert st.state == "healthy"  # 1 of 2 fresh vantage points: 50 % is not more than 50 %
    assert "1/2 vantage points cannot reach it" in st.reason


def test_fewer_than_vantage_min_vantage_points_say_nothing() -> None:
    policy = policy_with(vantage_min=2)
    prev = steady(policy)
    now = T0 + 1
    vs = views(now, {"eu-west-1": 9})
    for v in ("eu-central-1", "us-east-1"):  # fresh, but they do not probe TARGET
        vs[v] = vs[v].model_copy(update={"checks": {t: c for t, c in vs[v].checks.items() if t != TARGET}})
    state = run(policy, healthy_reports(now), now, prev, vs)
    assert state.regions[TARGET].state == "healthy"
    assert weights(state, CHAT, "default")[TARGET] > 0
    # The same single vantage point decides once vantage_min is 1 (1/1 > 50 %).
    one = policy_with(vantage_min=1)
    assert run(one, healthy_reports(now), now, steady(one), vs).regions[TARGET].state == "unhealthy"


def test_a_route53_like_quorum_needs_more_than_80_percent() -> None:
    policy = policy_with(vantage_quorum=0.8)
    prev = steady(policy)
    now = T0 + 1
    two = run(policy, healthy_reports(now), now, prev, views(now, dict.fromkeys(OTHERS[:2], 2)))
    assert two.regions[TARGET].state == "healthy"  # 2/3 = 67 % ≤ 80 %
    three = run(policy, healthy_reports(now), now, prev, views(now, dict.fromkeys(OTHERS, 2)))
    assert three.regions[TARGET].state == "unhealthy"
    assert "(quorum > 80%)" in three.regions[TARGET].reason


def test_recovery_from_unreachable_needs_rise_good_probes_from_the_quorum() -> None:
    policy = policy_with(rise=3)
    prev = steady(policy)
    now = T0 + 1
    out = run(policy, healthy_reports(now), now, prev, views(now, dict.fromkeys(OTHERS, 2)))
    assert out.regions[TARGET].unreachable
    # Reachable again, but only 1 good probe each: still out, and it says why.
    now += 1
    back1 = run(policy, healthy_reports(now), now, out, views(now, {}, oks={TARGET: 1}))
    st = back1.regions[TARGET]
    assert st.state == "unhealthy" and st.unreachable
    assert "recovering: 1/3 good probes" in st.reason
    assert weights(back1, CHAT, "default")[TARGET] == 0
    # rise good probes from a majority: the quorum is lifted and the region serves again.
    now += 1
    back = run(policy, healthy_reports(now), now, back1, views(now, {}, oks={TARGET: 3}))
    assert back.regions[TARGET].state == "healthy" and not back.regions[TARGET].unreachable
    assert weights(back, CHAT, "default")[TARGET] > 0


# -- unknown is not unhealthy -----------------------------------------------------------------


def _silent(now: float) -> dict[str, FleetReport]:
    """Every region reporting but TARGET, whose report is gone (expired)."""
    reps = healthy_reports(now)
    del reps[TARGET]
    return reps


def test_silent_region_the_quorum_reaches_keeps_its_weight_for_the_grace() -> None:
    policy = policy_with(unknown_grace_s=60.0, report_timeout_s=6.0)
    prev = steady(policy)
    w0 = weights(prev, CHAT, "default")[TARGET]
    # Its last report (observed at T0) lapses at T0 + 6: the grace runs to T0 + 66.
    now = T0 + 6.5
    reps = healthy_reports(now)
    reps[TARGET] = make_report(TARGET, now, age=6.5)
    state = run(policy, reps, now, prev, views(now, {}))
    st = state.regions[TARGET]
    assert st.state == "unknown"
    assert st.lapsed_at == T0 + 6 and st.grace_until == T0 + 66
    assert "reachable from 3/3 vantage points: keeping its weight for 60s more" in st.reason
    assert weights(state, CHAT, "default")[TARGET] == w0
    # The key expires: the lapse time is carried over from the previous plan.
    for now in (T0 + 20, T0 + 65.9):
        state = run(policy, _silent(now), now, state, views(now, {}))
        assert state.regions[TARGET].state == "unknown"
        assert weights(state, CHAT, "default")[TARGET] == w0, now
    now = T0 + 66.1
    state = run(policy, _silent(now), now, state, views(now, {}))
    st = state.regions[TARGET]
    assert st.state == "unknown" and st.grace_until == 0
    assert "unknown_grace_s 60s is over: out" in st.reason
    assert weights(state, CHAT, "default")[TARGET] == 0
    # Its agent back with good checks: in again at once (it never went out for a failure).
    now += 1
    state = run(policy, healthy_reports(now), now, state, views(now, {}))
    assert state.regions[TARGET].state == "healthy"
    assert state.regions[TARGET].transitions == ()


def test_silent_region_the_quorum_cannot_reach_is_failed_over_at_once() -> None:
    policy = policy_with()
    prev = steady(policy)
    now = T0 + 7
    state = run(policy, _silent(now), now, prev, views(now, dict.fromkeys(OTHERS, 2)))
    st = state.regions[TARGET]
    assert st.state == "unhealthy" and st.unreachable and st.confirmed_failure
    assert st.reason.endswith("its agent is silent")
    assert weights(state, CHAT, "default")[TARGET] == 0


def test_silent_region_without_vantage_opinion_goes_out() -> None:
    policy = policy_with()
    prev = steady(policy)
    now = T0 + 7
    state = run(policy, _silent(now), now, prev, {})
    st = state.regions[TARGET]
    assert st.state == "unknown" and not st.confirmed_failure
    assert "no vantage opinion (0 fresh vantage point(s) < vantage_min 2): out" in st.reason
    assert weights(state, CHAT, "default")[TARGET] == 0
    # Vantage points split 1 reach / 1 fail (the third stale): no majority reaches it, out.
    vs = views(now, {"eu-west-1": 2})
    vs["us-east-1"] = vantage_report("us-east-1", now, age=7)
    split = run(policy, _silent(now), now, prev, vs)
    assert "no majority reaches it, out" in split.regions[TARGET].reason
    assert weights(split, CHAT, "default")[TARGET] == 0


def test_silent_region_that_was_out_stays_out() -> None:
    policy = policy_with()
    reps = healthy_reports(T0)
    reps[TARGET] = make_report(TARGET, T0, healthy=False, fail=5)
    prev = run(policy, reps, T0, None, views(T0, {}))
    assert prev.regions[TARGET].state == "unhealthy"
    now = T0 + 7
    state = run(policy, _silent(now), now, prev, views(now, {}))
    assert state.regions[TARGET].state == "unknown"
    assert "it was not serving: stays out" in state.regions[TARGET].reason
    assert weights(state, CHAT, "default")[TARGET] == 0


def test_vantage_reports_that_lapse_together_are_set_aside() -> None:
    """A staggered lapse must not hand the verdict to the last vantage point standing."""
    policy = policy_with(vantage_min=1)
    prev = steady(policy)
    now = T0 + 10
    vs = views(now, {"us-east-1": 2}, age=0)
    vs["us-east-1"] = vantage_report("us-east-1", now, {TARGET: 2}, age=5.0)  # lapsing (> 6 - 4)
    for v in ("eu-central-1", "eu-west-1"):  # the two that reach it lapsed first
        vs[v] = vantage_report(v, now, age=6.5)
    state = run(policy, healthy_reports(now), now, prev, vs)
    st = state.regions[TARGET]
    assert st.state == "healthy", st.reason
    assert ("vantage points set aside: 2/4 vantage reports lapsed + 1 lapsing within the 4s lapse "
            "window (us-east-1)") in st.reason
    # Without the lapse window, the one left would have failed it over (1/1 > 50 %).
    fixed = policy.model_copy(update={"safety": policy.safety.model_copy(update={"lapse_window_s": 0.0})})
    assert run(fixed, healthy_reports(now), now, steady(fixed), vs).regions[TARGET].state == "unhealthy"


# -- flap damping counts confirmed failures only ----------------------------------------------


def test_bursts_of_missing_reports_never_damp_a_region() -> None:
    """Four short bursts of missing reports (a few seconds each): with and without vantage points."""
    policy = make_policy(flap_threshold=3, flap_window_s=300, flap_penalty_s=600)
    for with_vantage in (False, True):
        state = run(policy, healthy_reports(T0), T0, None, views(T0, {}) if with_vantage else None)
        now, outs = T0, 0
        for _burst in range(4):
            for _ in range(3):  # reports present
                now += 2
                state = run(policy, healthy_reports(now), now, state, views(now, {}) if with_vantage else None)
                assert weights(state, CHAT, "default")[TARGET] > 0
            for _ in range(5):  # report absent for 10 s
                now += 2
                state = run(policy, _silent(now), now, state, views(now, {}) if with_vantage else None)
                outs += weights(state, CHAT, "default")[TARGET] == 0
        now += 2
        state = run(policy, healthy_reports(now), now, state, views(now, {}) if with_vantage else None)
        st = state.regions[TARGET]
        assert st.damped_until == 0 and st.transitions == ()
        assert weights(state, CHAT, "default")[TARGET] > 0
        assert not any(d.action == "flap damping" for d in state.decisions)
        # Without vantage points the silent region was out each time; with them, never.
        assert (outs > 0) is (not with_vantage)


def test_repeated_confirmed_failures_still_damp() -> None:
    """Two outages the vantage quorum confirmed (out, in, out, in): damped at the threshold."""
    policy = policy_with().model_copy(update={"safety": make_policy(
        flap_threshold=4, flap_window_s=300, flap_penalty_s=600).safety})
    state = steady(policy)
    now = T0
    for cut in (True, False, True, False):
        now += 1
        state = run(policy, healthy_reports(now), now, state,
                    views(now, dict.fromkeys(OTHERS, 2) if cut else {}, oks={TARGET: 5}))
    st = state.regions[TARGET]
    assert len(st.transitions) == 4 and st.damped_until == now + 600
    assert weights(state, CHAT, "default")[TARGET] == 0
