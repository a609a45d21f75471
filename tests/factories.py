"""Shared test builders: regions, inventories, policies, reports, overrides, and hypothesis
strategies that generate whole planning scenarios.

Everything here builds validated models (pydantic), so a builder that produces an invalid
object fails loudly in the test that used it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from gtm.models.override import Override, OverrideKind
from gtm.models.plan import DesiredState
from gtm.models.policy import (
    HealthThresholds,
    Policy,
    Residency,
    SafetyRules,
    Segment,
    SegmentMatch,
    Service,
    Zone,
)
from gtm.models.region import Endpoint, Geography, Inventory, Region
from gtm.models.report import FleetReport, ModelStats

T0 = 1_700_000_000.0
"""A fixed, realistic unix time for deterministic tests."""

ZONE = "gtm.example.com"
MODEL = "llama"

JURISDICTION_CONTINENT = {"EU": "EU", "US": "NA", "APAC": "AS"}

FOUR_REGIONS: dict[str, str] = {
    "eu-central-1": "EU",
    "eu-west-1": "EU",
    "us-east-1": "US",
    "us-west-2": "US",
}
"""The example fleet: two EU and two US regions (name → jurisdiction)."""


# -- inventory -------------------------------------------------------------------------------


def make_region(name: str, jurisdiction: str, index: int = 0) -> Region:
    """A region with one IPv4 endpoint (192.0.2.<10+index>) in its jurisdiction's continent."""
    return Region(
        name=name,
        jurisdiction=jurisdiction,
        geography=Geography(continent=JURISDICTION_CONTINENT.get(jurisdiction, "EU")),
        endpoints=(Endpoint(address=f"192.0.2.{10 + index}"),),
    )


def make_inventory(regions: Mapping[str, str] = FOUR_REGIONS) -> Inventory:
    """An inventory from ``{name: jurisdiction}``."""
    return Inventory(
        regions={n: make_region(n, j, i) for i, (n, j) in enumerate(sorted(regions.items()))}
    )


# -- policy ----------------------------------------------------------------------------------


def eu_segment(name: str = "eu", regions: Sequence[str] | None = None) -> Segment:
    """EU clients, pinned to EU jurisdiction."""
    return Segment(
        name=name,
        match=SegmentMatch(continents=("EU",)),
        residency=Residency(jurisdictions=("EU",)),
        regions=tuple(regions) if regions is not None else None,
    )


def make_service(
    name: str = "chat",
    regions: Sequence[str] = tuple(sorted(FOUR_REGIONS)),
    *,
    segments: Sequence[Segment] = (),
    routing: str = "capacity",
    static_weights: Mapping[str, int] | None = None,
    model: str | None = MODEL,
    ttl: int = 30,
) -> Service:
    return Service(
        name=name,
        fqdn=f"{name}.{ZONE}",
        zone=ZONE,
        ttl=ttl,
        model=model,
        routing=routing,  # type: ignore[arg-type]
        regions=tuple(regions),
        static_weights=dict(static_weights or {}),
        segments=tuple(segments),
    )


def make_policy(
    services: Sequence[Service] | None = None,
    *,
    fall: int = 2,
    rise: int = 3,
    report_timeout_s: float = 6.0,
    stale_fraction: float = 0.5,
    planned_step: int = 64,
    step_interval_s: float = 1.0,
    weight_deadband: int = 8,
    on_all_unhealthy: str = "fail-static",
    **safety: object,
) -> Policy:
    """A policy; by default one capacity-routed ``chat`` service over the four example regions
    with an EU-pinned segment and the default catch-all."""
    if services is None:
        services = [make_service(segments=[eu_segment()])]
    return Policy(
        name="test",
        zones=(Zone(name=ZONE, nameservers=(f"ns1.{ZONE}",)),),
        services=tuple(services),
        health=HealthThresholds(fall=fall, rise=rise, report_timeout_s=report_timeout_s),
        safety=SafetyRules(
            stale_fraction=stale_fraction,
            planned_step=planned_step,
            step_interval_s=step_interval_s,
            weight_deadband=weight_deadband,
            on_all_unhealthy=on_all_unhealthy,  # type: ignore[arg-type]
            **safety,  # type: ignore[arg-type]
        ),
    )


# -- reports and overrides -------------------------------------------------------------------


def make_report(
    region: str,
    now: float,
    *,
    healthy: bool = True,
    spare: float = 10.0,
    ok: int | None = None,
    fail: int | None = None,
    age: float = 0.0,
    seq: int = 1,
    models: Mapping[str, float] | None = None,
    replicas: tuple[int, int] = (2, 2),
    reason: str = "",
) -> FleetReport:
    """A report observed ``age`` seconds before ``now``.

    Args:
        healthy: the agent's verdict for this check.
        spare: the region's (and, by default, model ``MODEL``'s) spare capacity.
        ok / fail: consecutive good / failed checks; default 10/0 when healthy, 0/1 when not.
        models: spare capacity per served model; default ``{MODEL: spare}``.
        replicas: (total, healthy) replicas of each model.
    """
    if ok is None:
        ok = 10 if healthy else 0
    if fail is None:
        fail = 0 if healthy else 1
    if models is None:
        models = {MODEL: spare}
    total, good = replicas
    return FleetReport(
        region=region,
        agent_id=f"{region}-agent",
        seq=seq,
        observed_at=now - age,
        interval_s=2.0,
        healthy=healthy,
        consecutive_ok=ok,
        consecutive_fail=fail,
        reason=reason or ("" if healthy else "probe failed"),
        models={
            m: ModelStats(model=m, replicas_total=total, replicas_healthy=good, spare_capacity=s)
            for m, s in models.items()
        },
        spare_capacity=spare,
    )


def healthy_reports(
    now: float, spare: Mapping[str, float] | Iterable[str] = tuple(FOUR_REGIONS)
) -> dict[str, FleetReport]:
    """Fresh healthy reports: ``spare`` maps region → spare capacity (or lists regions: 10 each)."""
    if not isinstance(spare, Mapping):
        spare = dict.fromkeys(spare, 10.0)
    return {r: make_report(r, now, spare=s) for r, s in spare.items()}


def make_override(
    region: str,
    kind: OverrideKind = "drain",
    *,
    since: float = T0,
    expires_at: float | None = None,
    reason: str = "maintenance",
) -> Override:
    return Override(
        region=region, kind=kind, reason=reason, actor="tester", since=since, expires_at=expires_at
    )


# -- plan helpers ----------------------------------------------------------------------------


def weights(state: DesiredState, fqdn: str, segment: str) -> dict[str, int]:
    """``{region: weight}`` of the pool answering ``segment`` of ``fqdn`` (every member)."""
    pool = state.pool_for(fqdn, segment)
    assert pool is not None, f"no pool for {fqdn}/{segment}"
    return {m.region: m.weight for m in pool.members}


# -- hypothesis strategies -------------------------------------------------------------------

JURISDICTIONS = ("EU", "US", "APAC")
SEGMENT_CONTINENTS = {"eu": "EU", "us": "NA", "apac": "AS"}
MODELS = ("m1", "m2")


@st.composite
def inventories(draw: st.DrawFn, min_regions: int = 2, max_regions: int = 10) -> Inventory:
    """2-10 regions named ``r0``..``rN`` with random jurisdictions among EU/US/APAC."""
    n = draw(st.integers(min_regions, max_regions))
    juris = draw(st.lists(st.sampled_from(JURISDICTIONS), min_size=n, max_size=n))
    return make_inventory({f"r{i}": j for i, j in enumerate(juris)})


def _subset(names: Sequence[str], min_size: int = 1) -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(st.sampled_from(list(names)), min_size=min_size, unique=True).map(
        lambda xs: tuple(sorted(xs))
    )


@st.composite
def segments_for(draw: st.DrawFn, regions: tuple[str, ...]) -> tuple[Segment, ...]:
    """0-3 segments: continent-matched ones with random residency pins, optionally a pinned or
    restricted catch-all."""
    out: list[Segment] = []
    names = draw(st.lists(st.sampled_from(sorted(SEGMENT_CONTINENTS)), unique=True, max_size=2))
    for name in names:
        pin = draw(st.none() | _subset(JURISDICTIONS))
        sub = draw(st.none() | _subset(regions))
        out.append(
            Segment(
                name=name,
                match=SegmentMatch(continents=(SEGMENT_CONTINENTS[name],)),
                residency=Residency(jurisdictions=pin) if pin else None,
                regions=sub,
            )
        )
    if draw(st.booleans()):
        pin = draw(st.none() | _subset(JURISDICTIONS))
        out.append(
            Segment(name="default", residency=Residency(jurisdictions=pin) if pin else None)
        )
    return tuple(out)


@st.composite
def services_for(draw: st.DrawFn, inventory: Inventory, index: int) -> Service:
    regions = draw(_subset(sorted(inventory.regions)))
    routing = draw(st.sampled_from(["capacity", "static"]))
    static: dict[str, int] = {}
    if routing == "static":
        static = {r: draw(st.integers(0, 255)) for r in regions}
        if not any(static.values()):  # an all-zero static service is refused by validation
            static[regions[0]] = draw(st.integers(1, 255))
    return make_service(
        f"svc{index}",
        regions,
        segments=draw(segments_for(regions)),
        routing=routing,
        static_weights=static,
        model=draw(st.sampled_from([None, *MODELS])),
    )


@st.composite
def policies(draw: st.DrawFn, inventory: Inventory) -> Policy:
    """1-3 services over random region subsets, random health thresholds and safety rules."""
    n = draw(st.integers(1, 3))
    return make_policy(
        [draw(services_for(inventory, i)) for i in range(n)],
        fall=draw(st.integers(1, 4)),
        rise=draw(st.integers(1, 4)),
        report_timeout_s=draw(st.sampled_from([5.0, 10.0, 30.0])),
        stale_fraction=draw(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])),
        planned_step=draw(st.integers(1, 255)),
        step_interval_s=draw(st.sampled_from([0.5, 1.0, 5.0])),
        weight_deadband=draw(st.integers(0, 32)),
        on_all_unhealthy=draw(st.sampled_from(["fail-static", "fail-open"])),
    )


@st.composite
def reports_for(
    draw: st.DrawFn, inventory: Inventory, policy: Policy, now: float
) -> dict[str, FleetReport]:
    """Per region: missing, stale or fresh; healthy or failing; random counts and capacity."""
    out: dict[str, FleetReport] = {}
    timeout = policy.health.report_timeout_s
    for r in sorted(inventory.regions):
        kind = draw(st.sampled_from(["fresh", "fresh", "fresh", "stale", "missing"]))
        if kind == "missing":
            continue
        age = (
            draw(st.floats(0, timeout))
            if kind == "fresh"
            else draw(st.floats(timeout + 0.01, timeout + 600))
        )
        healthy = draw(st.booleans())
        served = draw(st.lists(st.sampled_from(MODELS), unique=True))
        total = draw(st.integers(1, 4))
        out[r] = make_report(
            r,
            now,
            healthy=healthy,
            spare=draw(st.floats(0, 100, allow_nan=False)),
            ok=draw(st.integers(1, 6)) if healthy else 0,
            fail=0 if healthy else draw(st.integers(1, 6)),
            age=age,
            models={m: draw(st.floats(0, 100, allow_nan=False)) for m in served},
            replicas=(total, draw(st.integers(0, total))),
        )
    return out


@st.composite
def overrides_for(draw: st.DrawFn, inventory: Inventory, now: float) -> dict[str, Override]:
    """Random drains and cordons, some with an expiry."""
    out: dict[str, Override] = {}
    for r in sorted(inventory.regions):
        kind = draw(st.sampled_from([None, None, "drain", "cordon"]))
        if kind is None:
            continue
        expires = draw(st.none() | st.floats(now - 10, now + 60))
        out[r] = make_override(r, kind, since=now - 1, expires_at=expires)
    return out


@dataclass
class Step:
    """One plan call's inputs."""

    now: float
    reports: dict[str, FleetReport]
    overrides: dict[str, Override]


@dataclass
class Scenario:
    """An inventory, a policy and a sequence of plan inputs over increasing ``now``."""

    inventory: Inventory
    policy: Policy
    steps: list[Step] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "regions": {n: r.jurisdiction for n, r in self.inventory.regions.items()},
            "policy": self.policy.model_dump(mode="json"),
        }


@st.composite
def scenarios(draw: st.DrawFn, max_steps: int = 6) -> Scenario:
    inventory = draw(inventories())
    policy = draw(policies(inventory))
    sc = Scenario(inventory, policy)
    now = T0
    for _ in range(draw(st.integers(1, max_steps))):
        now += draw(st.sampled_from([0.25, 0.5, 1.0, 2.0, 7.0, 60.0]))
        # Overrides persist from step to step most of the time, so "while it stands" holds
        # over several plans; sometimes they change.
        if sc.steps and draw(st.booleans()):
            overrides = dict(sc.steps[-1].overrides)
        else:
            overrides = draw(overrides_for(inventory, now))
        sc.steps.append(Step(now, draw(reports_for(inventory, policy, now)), overrides))
    return sc


def skip_or_fail(reason: str) -> None:
    """Skip when pytest runs bare on a developer's machine without the component; fail under
    ``make test`` (which sets ``GTM_REQUIRE_SERVICES=1`` after installing and starting every
    component) and in CI (``CI`` set): there a missing component is an error, never a skip."""
    import os

    import pytest

    if os.environ.get("GTM_REQUIRE_SERVICES") or os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must provide it: see scripts/ensure-services.sh)")
    pytest.skip(reason)


def examples(n: int) -> int:
    """Hypothesis ``max_examples``: ``n`` scaled by ``GTM_HYPOTHESIS_SCALE`` (default 1).

    CI runs the default; a soak (``GTM_HYPOTHESIS_SCALE=50 pytest tests/test_engine_properties.py``)
    searches much further for counter-examples.
    """
    return max(1, int(n * float(os.environ.get("GTM_HYPOTHESIS_SCALE", "1"))))
