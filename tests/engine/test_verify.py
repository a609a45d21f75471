"""``gtm policy verify``: failure combinations, drains, invariant checks, scaling."""

from __future__ import annotations

from dataclasses import replace

from gtm.config.loader import load_config
from gtm.engine.verify import Scenario, _check, verify
from gtm.models.plan import PoolMember
from gtm.models.policy import Segment, SegmentMatch
from tests.factories import T0, eu_segment, make_inventory, make_policy, make_service


def test_example_policy_holds_and_reports_dark_eu() -> None:
    cfg = load_config("policies", "regions")
    res = verify(cfg.policy, cfg.inventory)
    assert res.exhaustive and res.broken == 0
    assert res.scenarios >= 2 ** len(res.regions)
    both_eu = next(s for s in res.notable if set(s.failed) == {"eu-west-1", "eu-central-1"})
    assert "chat/eu" in both_eu.dark
    # One EU region failing leaves the EU segment served but over capacity at 50 % load.
    one = next(s for s in res.notable if s.failed == ("eu-west-1",))
    assert any(o.startswith("chat/eu") for o in one.over_capacity)


def test_spill_is_reported_not_broken() -> None:
    seg = Segment(name="eu", match=SegmentMatch(continents=("EU",)), residency=eu_segment().residency,
                  on_unavailable="spill", spill_to=("US",))
    res = verify(make_policy([make_service(segments=[seg])]), make_inventory())
    assert res.broken == 0
    all_eu = next(s for s in res.notable if set(s.failed) == {"eu-central-1", "eu-west-1"})
    assert any(r.startswith("spill at chat/eu") for r in all_eu.relies_on)
    assert "chat/eu" not in all_eu.dark


def test_checker_flags_a_residency_break() -> None:
    from gtm.engine import plan
    from tests.factories import healthy_reports

    policy, inv = make_policy(), make_inventory()
    state = plan(policy, inv, healthy_reports(T0), {}, None, T0)
    eu_id = next(r.pool_id for r in state.services["chat.gtm.example.com"].segments if r.segment == "eu")
    pool = state.pools[eu_id]
    bad = replace(pool, members=(*pool.members, PoolMember("us-east-1", 10, "bug", T0)))
    broken_state = replace(state, pools={**state.pools, eu_id: bad})
    sc = Scenario(failed=())
    loads = dict.fromkeys(inv.regions, 0.0)
    _check(policy, inv, broken_state, set(), sc, loads, dict.fromkeys(inv.regions, 1.0))
    assert sc.broken and "residency" in sc.broken[0] and "us-east-1" in sc.broken[0]


def test_scales_past_sixteen_regions_with_bounded_failure_sets() -> None:
    regions = {f"r{i:02d}": ("EU" if i % 2 else "US") for i in range(18)}
    inv = make_inventory(regions)
    policy = make_policy([make_service(regions=tuple(sorted(regions)), segments=[eu_segment()])])
    res = verify(policy, inv, max_exhaustive=10)
    assert not res.exhaustive
    assert res.max_failures == 3  # 1 + 18 + 153 + 816 = 988 ≤ 1024 < 988 + 3060
    assert res.broken == 0
