"""The drill preflight (pure): each refusal with its message, and the plan it shows."""

from __future__ import annotations

from typing import Any

from gtm.config.loader import Config
from gtm.drills.preflight import PreflightFacts, check
from gtm.engine import plan
from gtm.models.drill import BlockedWindow, DrillLimits, DrillLock
from gtm.models.policy import Policy
from gtm.models.region import FleetSource, Inventory
from gtm.store.inputs import PlanInputs
from tests.factories import (
    T0,
    eu_segment,
    healthy_reports,
    make_inventory,
    make_override,
    make_policy,
    make_report,
    make_service,
)

EU = "eu-west-1"


def _inventory() -> Inventory:
    inv = make_inventory()
    regions = {}
    for i, (name, reg) in enumerate(sorted(inv.regions.items())):
        fleet = (FleetSource(name="vllm-a", kind="vllm", url=f"http://127.0.0.1:{18000 + i}"),)
        regions[name] = reg.model_copy(update={"fleet": fleet})
    return Inventory(regions=regions)


def _setup(policy: Policy | None = None, *, reports: Any = None, overrides: Any = None) -> tuple[Config, PlanInputs]:
    policy = policy or make_policy([make_service(segments=[eu_segment()], routing="static",
                                                 static_weights=dict.fromkeys(make_inventory().regions, 100))],
                                   planned_step=255)
    cfg = Config(policy=policy, inventory=_inventory(), digest="sha256:test", files=())
    reps = reports if reports is not None else healthy_reports(T0)
    ovs = overrides or {}
    state = None
    for i in range(5):  # a few cycles: health settles, weights converge
        state = plan(policy, cfg.inventory, reps, ovs, state, T0 - 5 + i)
    return cfg, PlanInputs(reports=reps, overrides=ovs, previous=state)


def _facts(inputs: PlanInputs, **kw: Any) -> PreflightFacts:
    return PreflightFacts(now=T0, inputs=inputs, **kw)


def test_drain_plan_moves_the_region_out_of_its_pools() -> None:
    cfg, inputs = _setup()
    pf = check(cfg, "drain", EU, _facts(inputs), hold_s=30)
    assert pf.ok, pf.refusals
    eu_pool = next(p for p, s in pf.before.items() if set(s) == {EU, "eu-central-1"})
    assert pf.before[eu_pool] == {EU: 0.5, "eu-central-1": 0.5}
    assert pf.after[eu_pool] == {"eu-central-1": 1.0}
    assert pf.plan[0].startswith(f"drain {EU}: weight to 0 in 1 planned step(s)") and "hold 30 s" in pf.plan[0]
    assert any("eu-central-1 50%, eu-west-1 50% → eu-central-1 100%" in line for line in pf.plan)


def test_failover_plan_is_one_failure_move() -> None:
    cfg, inputs = _setup()
    pf = check(cfg, "failover", EU, _facts(inputs), hold_s=10)
    assert pf.ok, pf.refusals
    assert all(EU not in shares for shares in pf.after.values())
    assert "treat it as unhealthy" in pf.plan[0]


def test_unknown_region() -> None:
    cfg, inputs = _setup()
    pf = check(cfg, "drain", "mars-1", _facts(inputs))
    assert pf.refusals == ["unknown region 'mars-1'; the policy plans eu-central-1, eu-west-1, us-east-1, us-west-2"]


def test_region_not_serving() -> None:
    reps = healthy_reports(T0)
    reps[EU] = make_report(EU, T0, healthy=False, fail=5)
    cfg, inputs = _setup(reports=reps)
    pf = check(cfg, "failover", EU, _facts(inputs))
    assert f"{EU} is not serving now (unhealthy): a drill of a region that takes no traffic proves nothing" \
        in pf.refusals


def test_region_with_an_override() -> None:
    cfg, inputs = _setup()
    inputs = inputs.with_override(make_override(EU, "cordon"))
    pf = check(cfg, "drain", EU, _facts(inputs))
    assert f"{EU} already has a cordon override (tester: maintenance); undrain it first" in pf.refusals


def test_an_expired_override_does_not_refuse() -> None:
    cfg, inputs = _setup()
    inputs = inputs.with_override(make_override(EU, "drain", expires_at=T0 - 1))
    assert check(cfg, "drain", EU, _facts(inputs)).ok


def test_another_drill_running() -> None:
    cfg, inputs = _setup()
    lock = DrillLock(id="drill-kill-us-east-1-1", kind="kill", region="us-east-1", actor="ann", started=T0 - 10,
                     phase="hold", expires_at=T0 + 20)
    pf = check(cfg, "drain", EU, _facts(inputs, running=lock))
    assert pf.refusals == ["another drill is running: drill-kill-us-east-1-1 (kill us-east-1 by ann, phase hold)"]


def test_rollout_in_flight() -> None:
    cfg, inputs = _setup()
    pf = check(cfg, "failover", EU, _facts(inputs, rollouts={"llama-nov": "paused"}))
    assert pf.refusals == ["rollout llama-nov is in flight (paused); drill after it is done or aborted"]


def test_blocked_window() -> None:
    base = make_policy([make_service(segments=[eu_segment()])], planned_step=255)
    window = BlockedWindow(start="22:00", end="23:00", reason="launch")  # T0 is 22:13 UTC
    policy = base.model_copy(update={"drills": DrillLimits(blocked_windows=(window,))})
    cfg, inputs = _setup(policy)
    pf = check(cfg, "drain", EU, _facts(inputs))
    assert pf.refusals == ["a blocked window covers now: daily 22:00-23:00 UTC (launch) "
                                  "(policy drills.blocked_windows)"]


def test_drain_held_by_safety_rules() -> None:
    policy = make_policy([make_service(segments=[eu_segment()])], planned_step=255, max_drained=0)
    cfg, inputs = _setup(policy)
    pf = check(cfg, "drain", EU, _facts(inputs))
    assert pf.refusals and all(r.startswith("the safety rules would hold the drain: ") for r in pf.refusals)
    assert "max_drained" in pf.refusals[0]


def test_failover_would_leave_a_residency_pool_dark() -> None:
    policy = make_policy([make_service(segments=[eu_segment(regions=[EU])])], planned_step=255)
    cfg, inputs = _setup(policy)
    pf = check(cfg, "failover", EU, _facts(inputs))
    assert any(r.startswith("pool ") and "would be left with no serving region" in r for r in pf.refusals)
    assert any(r.startswith("residency-pinned segment chat/eu (EU) would go ") for r in pf.refusals)


def test_failover_below_min_healthy_regions() -> None:
    policy = make_policy([make_service(segments=[eu_segment()])], planned_step=255, min_healthy_regions=2)
    cfg, inputs = _setup(policy)
    pf = check(cfg, "kill", EU, _facts(inputs, sim_sources={"vllm-a": None}))
    assert any("would be left with 1 serving region(s), fewer than safety.min_healthy_regions (2)" in r
               for r in pf.refusals), pf.refusals


def test_kill_only_for_simulated_fleets() -> None:
    cfg, inputs = _setup()
    ok = check(cfg, "kill", EU, _facts(inputs, sim_sources={"vllm-a": None}))
    assert ok.ok and "really dies for" in ok.plan[0]
    pf = check(cfg, "kill", EU, _facts(inputs, sim_sources={"vllm-a": "GET /_sim/state answered 404"}))
    assert pf.refusals == ["kill only for fleets gtm runs: source vllm-a is not a gtm simulator "
                           "(GET /_sim/state answered 404)"]
