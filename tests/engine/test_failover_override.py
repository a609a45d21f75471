"""A ``failover`` override (``gtm drill failover``) is planned exactly as an unhealthy region:
a failure move, immediate, DNS and anycast alike; it never counts toward flap damping, and the
region comes back as a recovered region does once the override is lifted or expires."""

from __future__ import annotations

from gtm.models.plan import DesiredState
from gtm.models.policy import Policy
from tests.engine.test_engine import CHAT, all_equal, run
from tests.factories import T0, make_override, make_policy, make_report, weights


def _failed(policy: Policy, state: DesiredState, now: float) -> DesiredState:
    reps = all_equal(now)
    reps["us-east-1"] = make_report("us-east-1", now, healthy=False, fail=5)
    return run(policy, reps, now, state, {})


def test_failover_override_moves_traffic_like_a_failure_at_once() -> None:
    policy = make_policy(planned_step=16, step_interval_s=1.0)
    state = run(policy, all_equal(T0), T0)
    assert weights(state, CHAT, "default")["us-east-1"] == 255

    # The same step with a real failure, and with the drill's override on a healthy fleet.
    failed = _failed(policy, state, T0 + 1)
    ov = make_override("us-east-1", "failover", since=T0 + 1, expires_at=T0 + 31)
    drilled = run(policy, all_equal(T0 + 1), T0 + 1, state, {"us-east-1": ov})

    assert weights(failed, CHAT, "default")["us-east-1"] == 0  # immediate, not planned steps
    assert weights(drilled, CHAT, "default") == weights(failed, CHAT, "default")
    st = drilled.regions["us-east-1"]
    assert st.state == "unhealthy" and not st.serving
    assert st.override == "failover"
    assert "failover drill" in st.reason and "the fleet itself: healthy" in st.reason
    assert not st.confirmed_failure  # a drill never feeds flap damping


def test_failover_override_lifts_at_expiry_and_the_region_returns() -> None:
    policy = make_policy(planned_step=255, step_interval_s=1.0)
    state = run(policy, all_equal(T0), T0)
    ovs = {"us-east-1": make_override("us-east-1", "failover", since=T0, expires_at=T0 + 10)}
    state = run(policy, all_equal(T0 + 1), T0 + 1, state, ovs)
    assert weights(state, CHAT, "default")["us-east-1"] == 0
    # The drill process died: nobody lifts the override, its expiry does.
    state = run(policy, all_equal(T0 + 11), T0 + 11, state, ovs)
    assert state.regions["us-east-1"].override is None
    assert state.regions["us-east-1"].serving
    assert weights(state, CHAT, "default")["us-east-1"] == 255
