"""``gtm plan --candidate``: a policy change that adds or moves anycast prefixes shows per prefix
and region how the announcement changes."""

from __future__ import annotations

from gtm.config.loader import Config, policy_digest
from gtm.controller.routing_diff import nominal_reports, plan_pair, routing_diff
from gtm.models.policy import Policy
from tests.factories import T0, eu_segment, make_inventory, make_policy, make_service
from tests.support.anycast import EU_PREFIX, SERVICE_PREFIX, with_anycast, with_bgp


def config(policy: Policy) -> Config:
    inv = with_bgp(make_inventory())
    return Config(policy=policy, inventory=inv, digest=policy_digest(policy, inv), files=())


def test_adding_an_anycast_prefix_is_a_routing_difference() -> None:
    in_force = config(make_policy([make_service(segments=[eu_segment()])]))
    candidate = config(make_policy([with_anycast(make_service(segments=[eu_segment()]), SERVICE_PREFIX,
                                                 {"eu": EU_PREFIX})]))
    before, after = plan_pair(in_force, candidate, nominal_reports([in_force, candidate], T0), {}, None, T0)
    changes = [c for c in routing_diff(before, after) if c.kind == "announcement"]
    assert {(c.detail, c.region, c.before, c.after) for c in changes} == {
        (EU_PREFIX, "eu-central-1", None, "announce +0 MED 0"), (EU_PREFIX, "eu-west-1", None, "announce +0 MED 0"),
        *{(SERVICE_PREFIX, r, None, "announce +0 MED 0")
          for r in ("eu-central-1", "eu-west-1", "us-east-1", "us-west-2")},
    }
    assert changes[0].describe() == f"anycast {EU_PREFIX}: eu-central-1 none → announce +0 MED 0"
    assert [c for c in routing_diff(after, after)] == []
