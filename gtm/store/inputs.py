"""The one reader of the engine's inputs from Redis.

``engine.plan(policy, inventory, reports, overrides, previous, now, caps=..., damping_cleared=...)``
takes everything as arguments. Whoever plans (the controller's loop, ``gtm plan``, ``gtm
status``, the drain projection of the CLI and the API, the routing diff) reads those arguments
here, so a new input (anycast state, vantage-point probes) is added in one place.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from gtm.engine.plausibility import Rejection, check_report
from gtm.models.override import Override
from gtm.models.plan import DesiredState
from gtm.models.policy import HealthThresholds, Policy
from gtm.models.region import Inventory
from gtm.models.report import FleetReport, VantageReport
from gtm.store.rollouts import Caps, current_caps
from gtm.store.store import Store


@dataclass(frozen=True)
class PlanInputs:
    """What Redis holds for one plan.

    Attributes:
        reports: latest valid report per region (stale ones included: the engine judges age).
        vantage: latest vantage report per vantage region (each agent's probes of the other
            regions' public endpoints; stale ones included).
        rejected: one message per newly seen rejected report (already counted in Redis).
        rejected_reasons: region → why the report under its key is rejected now (malformed
            or implausible, see ``gtm.engine.plausibility``); such a region's entry in
            ``reports`` is the last report accepted earlier by the same store, if any.
        server_time: the Redis server's clock when the reports were read, unix seconds (0
            when no report was read).
        overrides: operator overrides (drain, cordon) per region, expired ones included.
        damping_cleared: region → unix seconds an operator last cleared its flap damping.
        caps: rollout weight caps, service → region → ``WeightCap``, of the stored rollouts
            (not advanced; the controller's rollout driver advances them and passes its own).
        previous: the stored desired state (the routing in force), or None.
    """

    reports: dict[str, FleetReport] = field(default_factory=dict)
    vantage: dict[str, VantageReport] = field(default_factory=dict)
    rejected: list[str] = field(default_factory=list)
    rejected_reasons: dict[str, str] = field(default_factory=dict)
    server_time: float = 0.0
    overrides: dict[str, Override] = field(default_factory=dict)
    damping_cleared: dict[str, float] = field(default_factory=dict)
    caps: Caps = field(default_factory=dict)
    previous: DesiredState | None = None

    def plan_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``engine.plan`` these inputs fill (besides the policy,
        inventory, ``now`` and ``digest``): ``reports``, ``vantage``, ``overrides``, ``previous``,
        ``caps``, ``damping_cleared``."""
        return {
            "reports": self.reports, "vantage": self.vantage, "overrides": self.overrides, "previous": self.previous,
            "caps": self.caps or None, "damping_cleared": self.damping_cleared,
        }

    def with_override(self, override: Override) -> PlanInputs:
        """These inputs with ``override`` in force for its region (a projection's what-if)."""
        return replace(self, overrides={**self.overrides, override.region: override})


def planned_regions(policy: Policy, inventory_regions: Iterable[str]) -> list[str]:
    """The regions a plan covers: named by the policy and present in the inventory, sorted."""
    return sorted(policy.region_names & set(inventory_regions))


async def read_plan_inputs(
    store: Store,
    regions: Iterable[str],
    *,
    rollouts: Iterable[str] = (),
    previous: bool = True,
    inventory: Inventory | None = None,
    thresholds: HealthThresholds | None = None,
) -> PlanInputs:
    """Read the engine's inputs.

    Every report is checked for plausibility (``gtm.engine.plausibility``) against the Redis
    server's clock, its key's expiry, ``thresholds`` and the region's ``inventory`` entry
    before it is used; a rejected one is counted and treated as no new report
    (``PlanInputs.rejected_reasons`` says why).

    Args:
        store: the Redis store.
        regions: whose reports to read (usually ``planned_regions(policy, inventory)``).
        rollouts: names of the rollouts whose caps apply (the policy's ``rollouts``); their
            stored states are read, not advanced.
        previous: whether to read the stored desired state too (the controller's loop keeps
            its own between cycles).
        inventory: bounds each region's claimed replicas and spare capacity; None skips those
            bounds (the timestamp and expiry rules still apply).
        thresholds: the policy's health thresholds (report timeout, clock-skew bound,
            capacity margin); None uses the defaults.

    Raises:
        StoreError: Redis could not be read.
    """
    names_ = sorted(set(regions))
    th = thresholds if thresholds is not None else HealthThresholds()
    known = inventory.regions if inventory is not None else {}

    def check(report: FleetReport, ttl_ms: int, server_time: float) -> Rejection | None:
        return check_report(report, known.get(report.region), th, server_time=server_time, ttl_ms=ttl_ms)

    read = await store.read_reports(names_, check)
    vantage = await store.get_vantage(names_)
    overrides = await store.get_overrides()
    cleared = await store.get_damping_cleared()
    names = sorted(set(rollouts))
    caps = await current_caps(store, names) if names else {}
    stored = await store.get_desired() if previous else None
    return PlanInputs(reports=read.reports, vantage=vantage, rejected=read.rejected,
                      rejected_reasons=read.reasons, server_time=read.server_time, overrides=overrides,
                      damping_cleared=cleared, caps=caps, previous=stored)
