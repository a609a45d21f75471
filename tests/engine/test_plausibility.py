"""Plausibility of agent reports (gtm.engine.plausibility): each rule, its boundary and its reason."""

from __future__ import annotations

import pytest

from gtm.engine.plausibility import MAX_TTL_FACTOR, REASON_CODES, Rejection, check_report, inventory_replicas
from gtm.models.policy import HealthThresholds
from gtm.models.region import Endpoint, FleetSource, Geography, Region
from gtm.models.report import FleetReport, ModelStats
from tests.factories import T0, make_region, make_report

TH = HealthThresholds()  # report timeout 6 s, skew bound 5 s, margin 25 %


def region(replicas: int = 3, capacity_per_replica: float | None = None, dcgm: bool = True) -> Region:
    fleet = [FleetSource(name="vllm-a", kind="vllm", url="http://127.0.0.1:1", replicas=replicas)]
    if dcgm:  # GPU telemetry sources hold no replicas
        fleet.append(FleetSource(name="gpu", kind="dcgm", url="http://127.0.0.1:2/metrics", replicas=8))
    return Region(name="eu-west-1", jurisdiction="EU", geography=Geography(continent="EU"),
                  endpoints=(Endpoint(address="192.0.2.30"),), fleet=tuple(fleet),
                  capacity_per_replica=capacity_per_replica)


def honest(observed_at: float = T0) -> FleetReport:
    return make_report("eu-west-1", observed_at, spare=2.0, replicas=(3, 3))


def check(report: FleetReport, reg: Region | None = None, *, server_time: float = T0, ttl_ms: int | None = 6000,
          th: HealthThresholds = TH) -> Rejection | None:
    return check_report(report, reg if reg is not None else region(), th, server_time=server_time, ttl_ms=ttl_ms)


def test_an_honest_report_is_accepted() -> None:
    rep = make_report("eu-west-1", T0, spare=2.9, replicas=(3, 3))
    assert check(rep) is None
    assert inventory_replicas(region()) == 3  # the DCGM source's 8 are not serving replicas


def test_forged_spare_capacity_is_rejected_with_the_figures() -> None:
    rep = make_report("eu-west-1", T0, spare=1e9, replicas=(3, 3))
    got = check(rep)
    assert got is not None and got.code == "capacity"
    assert got.reason == ("spare capacity 1e+09 idle-replica equivalents above what the inventory allows: "
                          "the inventory's 3 replicas × (1 + margin 0.25) = 3.75")


def test_capacity_bound_is_replicas_times_one_plus_margin() -> None:
    assert check(make_report("eu-west-1", T0, spare=3.75, replicas=(3, 3))) is None
    assert check(make_report("eu-west-1", T0, spare=3.76, replicas=(3, 3))) is not None
    strict = HealthThresholds(capacity_margin=0.0)
    assert check(make_report("eu-west-1", T0, spare=3.0), th=strict) is None
    assert check(make_report("eu-west-1", T0, spare=3.01), th=strict) is not None


def test_a_models_spare_capacity_is_bounded_too() -> None:
    # The region total looks fine, one model's figure does not.
    rep = make_report("eu-west-1", T0, spare=1.0, models={"llama": 50.0}, replicas=(3, 3))
    got = check(rep)
    assert got is not None and got.code == "capacity"
    assert got.reason.startswith("model llama: spare capacity 50 idle-replica equivalents")


def test_replicas_above_the_inventory_are_rejected() -> None:
    got = check(make_report("eu-west-1", T0, spare=1.0, replicas=(4, 3)))
    assert got == Rejection("replicas", "4 replicas reported, above the inventory's 3 replicas × (1 + margin 0.25) "
                                        "= 3.75")
    # Healthy replicas above the total (and above the bound) are caught per model.
    got = check(make_report("eu-west-1", T0, spare=1.0, replicas=(3, 9)))
    assert got is not None and got.code == "replicas" and got.reason.startswith("model llama")
    # Summed over models: two models of 3 replicas each on a 3-replica region.
    two = make_report("eu-west-1", T0, spare=1.0, models={"a": 0.5, "b": 0.5}, replicas=(3, 3))
    got = check(two)
    assert got is not None and got.code == "replicas" and got.reason.startswith("6 replicas reported")


def test_tokens_per_second_are_bounded_by_capacity_per_replica() -> None:
    reg = region(replicas=2, capacity_per_replica=1000.0)
    ok = make_report("eu-west-1", T0, spare=2400.0, replicas=(2, 2)).model_copy(update={"capacity_unit": "tokens/s"})
    assert check(ok, reg) is None  # 2 × 1000 × 1.25 = 2500
    forged = ok.model_copy(update={"spare_capacity": 2600.0})
    got = check(forged, reg)
    assert got is not None and got.code == "capacity"
    assert got.reason == ("spare capacity 2600 tokens/s above what the inventory allows: the inventory's 2 replicas "
                          "× (1 + margin 0.25) × 1000 tokens/s = 2500")


def test_tokens_per_second_without_a_per_replica_figure_skip_the_capacity_bound() -> None:
    rep = make_report("eu-west-1", T0, spare=1e6, replicas=(3, 3)).model_copy(update={"capacity_unit": "tokens/s"})
    assert check(rep, region(capacity_per_replica=None)) is None
    # ...but the replica bound still holds.
    assert check(make_report("eu-west-1", T0, spare=1.0, replicas=(9, 9)).model_copy(
        update={"capacity_unit": "tokens/s"}), region()) is not None


def test_no_inventory_figure_skips_the_replica_and_capacity_bounds() -> None:
    huge = make_report("eu-west-1", T0, spare=1e9, replicas=(100, 100))
    assert check_report(huge, None, TH, server_time=T0, ttl_ms=6000) is None
    assert check(huge, make_region("eu-west-1", "EU")) is None  # an inventory entry with no fleet
    assert check(huge, region(replicas=1, dcgm=True).model_copy(update={"fleet": ()})) is None


def test_a_key_without_expiry_is_rejected() -> None:
    got = check(honest(T0), ttl_ms=-1)
    assert got == Rejection("no-expiry", "report key has no expiry")


def test_a_ttl_far_above_the_report_timeout_is_rejected() -> None:
    bound_ms = int(MAX_TTL_FACTOR * TH.report_timeout_s * 1000)
    assert check(honest(T0), ttl_ms=bound_ms) is None
    got = check(honest(T0), ttl_ms=3_600_000)
    assert got is not None and got.code == "ttl"
    assert got.reason == "report key expires in 3600s, far above the report timeout (10 × 6s = 60s)"
    # A key that vanished since it was read (-2) or an unknown TTL is not held against the report.
    assert check(honest(T0), ttl_ms=-2) is None
    assert check(honest(T0), ttl_ms=None) is None


def test_a_report_from_the_future_beyond_the_skew_bound_is_rejected() -> None:
    assert check(honest(T0 + 5.0), server_time=T0) is None
    got = check(honest(T0 + 3600.0), server_time=T0)
    assert got == Rejection("future", "report timestamp is 3600.0s ahead of the Redis server's clock "
                                      "(max_clock_skew_s 5s)")
    # The bound is the policy's.
    assert check(honest(T0 + 5.0), server_time=T0,
                 th=HealthThresholds(max_clock_skew_s=1.0)) is not None


def test_an_old_report_is_not_rejected_the_engine_judges_its_age() -> None:
    assert check(honest(T0 - 3600.0), server_time=T0) is None


def test_the_expiry_rule_is_judged_before_the_timestamp_and_the_capacity() -> None:
    forged = make_report("eu-west-1", T0 + 3600.0, spare=1e9)
    got = check(forged, ttl_ms=-1)
    assert got is not None and got.code == "no-expiry"
    got = check(forged)
    assert got is not None and got.code == "future"


def test_every_code_is_listed() -> None:
    assert set(REASON_CODES) == {"malformed", "no-expiry", "ttl", "future", "replicas", "capacity"}


@pytest.mark.parametrize("spare", [0.0, 1.5, 3.0])
def test_whatever_an_agent_computes_passes(spare: float) -> None:
    # The agent's own figure is replicas × (1 − load) ≤ replicas: never rejected.
    models = {"llama": ModelStats(model="llama", replicas_total=3, replicas_healthy=3, spare_capacity=spare)}
    rep = make_report("eu-west-1", T0, spare=spare, replicas=(3, 3)).model_copy(update={"models": models})
    assert check(rep) is None
