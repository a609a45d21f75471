"""The stored desired state (``gtm:{ns}:desired``): pydantic's ``TypeAdapter`` round trip over
realistic plans from the engine, and the format earlier versions (a hand-written serializer)
stored, which a running installation still has in Redis."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pydantic
import pytest

from gtm.engine import plan
from gtm.models.plan import DesiredState
from tests.factories import (
    FOUR_REGIONS,
    T0,
    eu_segment,
    healthy_reports,
    make_inventory,
    make_override,
    make_policy,
    make_report,
    make_service,
)

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "desired_state_v1.json"
"""States written by the hand-written ``to_json`` of earlier versions (one per scenario)."""


def scenarios() -> dict[str, DesiredState]:
    """Realistic plans: steady state, failover with a cordon, a drain step, held (stale inputs),
    static weights, dark pool."""
    inv = make_inventory()
    policy = make_policy([
        make_service(segments=[eu_segment()]),
        make_service("embed", ["us-east-1", "eu-west-1"], routing="static",
                     static_weights={"us-east-1": 200, "eu-west-1": 55}, model=None),
    ])
    spare = {"us-east-1": 100.0, "eu-central-1": 60.0, "us-west-2": 40.0, "eu-west-1": 20.0}

    def run(reports, now, previous=None, overrides=None):  # type: ignore[no-untyped-def]
        return plan(policy, inv, reports, overrides or {}, previous, now, digest="sha256:golden")

    out: dict[str, DesiredState] = {}
    out["steady"] = steady = run(healthy_reports(T0, spare), T0)
    reps = healthy_reports(T0 + 1, spare)
    reps["us-west-2"] = make_report("us-west-2", T0 + 1, healthy=False, fail=3, reason="/health 503")
    out["failover-cordon"] = failover = run(reps, T0 + 1, steady, {"eu-west-1": make_override("eu-west-1", "cordon")})
    out["drain-step"] = run(healthy_reports(T0 + 2, spare), T0 + 2, failover,
                            {"us-east-1": make_override("us-east-1", "drain", reason="maintenance")})
    out["held"] = run({}, T0 + 100, failover)
    dark = {r: make_report(r, T0 + 3, healthy=False, fail=3) for r in FOUR_REGIONS}
    out["all-down"] = run(dark, T0 + 3, steady)
    return out


STATES = scenarios()


@pytest.mark.parametrize("name", sorted(STATES))
def test_round_trip(name: str) -> None:
    state = STATES[name]
    back = DesiredState.from_json(state.to_json())
    assert back == state
    assert back.routing_digest() == state.routing_digest()
    assert DesiredState.from_dict(state.to_dict()) == state
    assert state.to_dict()["routing_digest"] == state.routing_digest()
    assert "_digest" not in state.to_dict()


def test_the_scenarios_cover_what_the_format_carries() -> None:
    assert STATES["held"].held and STATES["held"].hold_reason
    assert any(p.mode == "dark" for p in STATES["all-down"].pools.values())
    assert any(r.override for r in STATES["failover-cordon"].regions.values())
    assert all(s.decisions for n, s in STATES.items() if n != "held")
    assert any(r.note or r.jurisdictions for s in STATES["steady"].services.values() for r in s.segments)


@pytest.mark.parametrize("name", sorted(STATES))
def test_reads_what_earlier_versions_stored_and_writes_the_same_text(name: str) -> None:
    """The stored format is unchanged: old and new replicas read each other's states."""
    golden = json.loads(GOLDEN.read_text())[name]
    # Later versions added fields with defaults (issue 8: vantage quorum, unknown grace, the
    # lapse window): an old state reads with their defaults, and the new text is the old text
    # plus those fields.
    state = STATES[name]
    old = dataclasses.replace(
        state, rejoin_since=0.0,
        regions={r: dataclasses.replace(st, **NEW_REGION_FIELDS) for r, st in state.regions.items()},
    )
    assert DesiredState.from_json(golden) == old
    d = json.loads(state.to_json())
    del d["rejoin_since"], d["announcements"]  # later fields (issue 9: anycast)
    for svc in d["services"].values():
        del svc["dns"]  # issue 9: False for an anycast-only service
    for st in d["regions"].values():
        for k in NEW_REGION_FIELDS:
            del st[k]
    assert json.dumps(d, sort_keys=True, separators=(",", ":")) == golden


NEW_REGION_FIELDS: dict[str, object] = {
    "confirmed_failure": False, "unreachable": False, "lapsed_at": 0.0, "grace_until": 0.0, "vantage": "",
}
"""``RegionStatus`` fields added after the golden states were written, with their defaults."""


def test_reads_an_older_state_without_the_later_optional_fields() -> None:
    d = json.loads(STATES["failover-cordon"].to_json())
    for r in d["regions"].values():
        for k in ("transitions", "damped_until", "load"):
            del r[k]
    for s in d["services"].values():
        for r in s["segments"]:
            del r["note"]
    del d["decisions"]
    back = DesiredState.from_dict(d)
    assert back.routing_digest() == STATES["failover-cordon"].routing_digest()
    assert back.decisions == ()


@pytest.mark.parametrize("damage", ["missing pools", "bad mode", "weight not a number", "not json"])
def test_malformed_states_are_rejected(damage: str) -> None:
    d = json.loads(STATES["steady"].to_json())
    pool = next(iter(d["pools"].values()))
    if damage == "missing pools":
        del d["pools"]
    elif damage == "bad mode":
        pool["mode"] = "sideways"
    elif damage == "weight not a number":
        pool["members"][0]["weight"] = "heavy"
    text = "{not json" if damage == "not json" else json.dumps(d)
    with pytest.raises(pydantic.ValidationError):
        DesiredState.from_json(text)
    assert issubclass(pydantic.ValidationError, ValueError)  # what Store.get_desired catches
