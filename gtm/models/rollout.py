"""Staggered per-region rollouts: the policy's ``rollouts:`` entries and the weight caps the
rollout driver hands to the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

GateMetric = Literal["error_rate", "ttft", "itl", "kv_cache", "probe_ttft", "probe_failure"]
"""Gate metrics; ``probe_ttft`` (seconds) and ``probe_failure`` (share 0..1) come from the
agents' synthetic completion probes (``ModelStats.probe_ttft_s`` / ``probe_success``)."""


class GateSpec(BaseModel):
    """How a canary region is judged against the baseline regions still on the old version.

    Attributes:
        metrics: which metrics are compared.
        min_samples: samples needed per side before a gate may judge; until then it waits
            (never passes by default).
        confidence: Mann-Whitney U confidence (0..1) that the canary is worse before failing.
        tolerance: relative degradation allowed before the statistical test counts it
            (0.1 = 10 % worse median still passes).
        max_error_rate: absolute ceiling on the canary's error rate, fraction 0..1.
        max_ttft_s: absolute ceiling on the canary's time to first token, seconds.
        max_itl_s: absolute ceiling on the canary's inter-token latency, seconds.
        max_kv_cache: absolute ceiling on KV-cache usage, fraction 0..1.
        max_wait_s: after the bake time, how long the gates may keep waiting for samples
            before the canary is rolled back as unproven (e.g. an engine that does not export
            a gate metric), seconds; None waits for ever.

    The gates judge the canary when its bake time is over (every sample since it started), and
    again before every ramp step on each side's newest ``min_samples`` samples: a failure at any
    of these points rolls back. Before a ramp step, too few samples do not hold the ramp.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    metrics: tuple[GateMetric, ...] = ("error_rate", "ttft", "itl")
    min_samples: int = Field(default=50, ge=5)
    confidence: float = Field(default=0.95, gt=0.5, lt=1)
    tolerance: float = Field(default=0.1, ge=0, le=10)
    max_error_rate: float | None = Field(default=0.05, ge=0, le=1)
    max_ttft_s: float | None = Field(default=None, gt=0)
    max_itl_s: float | None = Field(default=None, gt=0)
    max_kv_cache: float | None = Field(default=None, gt=0, le=1)
    max_wait_s: float | None = Field(default=1800.0, gt=0)


class RolloutSpec(BaseModel):
    """One rollout of a model version across a service's regions, wave by wave.

    Attributes:
        name: rollout name (``gtm rollout start NAME``).
        service: the service's name in the policy.
        target_version: the model version the agents must report on the canary regions.
        waves: lists of regions; one wave in flight at a time.
        drain_first: step a region's weight to 0 and wait TTL + grace before deploy.
        drain_grace_s: extra wait after the TTL, seconds.
        min_healthy_replicas: replicas that must report the target version before canary.
        canary_fraction: canary weight as a fraction (0..1) of the region's normal weight.
        bake_time_s: time at canary weight before gates judge, seconds.
        ramp_steps: fractions of normal weight after the gates pass, in order, ending at 1.
        ramp_interval_s: time between ramp steps, seconds.
        gates: the canary analysis.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    service: str
    target_version: str = Field(min_length=1)
    waves: tuple[tuple[str, ...], ...] = Field(min_length=1)
    drain_first: bool = False
    drain_grace_s: float = Field(default=30.0, ge=0)
    min_healthy_replicas: int = Field(default=1, ge=1)
    canary_fraction: float = Field(default=0.05, gt=0, le=1)
    bake_time_s: float = Field(default=300.0, ge=0)
    ramp_steps: tuple[float, ...] = (0.25, 0.5, 1.0)
    ramp_interval_s: float = Field(default=60.0, ge=0)
    gates: GateSpec = GateSpec()

    @model_validator(mode="after")
    def _check(self) -> RolloutSpec:
        seen: list[str] = [r for wave in self.waves for r in wave]
        if any(not wave for wave in self.waves):
            raise ValueError("a wave must name at least one region")
        twice = sorted({r for wave in self.waves for r in wave if wave.count(r) > 1})
        if twice:
            raise ValueError(f"regions named twice in one wave: {twice}")
        dup = sorted({r for r in seen if seen.count(r) > 1})
        if dup:
            raise ValueError(f"regions in more than one wave: {dup}")
        if not self.ramp_steps or self.ramp_steps[-1] != 1.0 or any(
            not 0 < s <= 1 for s in self.ramp_steps
        ) or list(self.ramp_steps) != sorted(self.ramp_steps):
            raise ValueError("ramp_steps must be increasing fractions in (0, 1] ending at 1.0")
        return self


@dataclass(frozen=True, slots=True)
class WeightCap:
    """A rollout's limit on one region's weight for one service.

    Attributes:
        fraction: 0..1 of the weight the region would otherwise get; 0 routes it away.
        reason: shown in the plan (e.g. ``rollout llama-nov: canary 5 %``).
        immediate: a failure move (rollback, abort): applied at once. Otherwise a planned
            move: paced by the safety rules' step, and a route-away is held while the pool's
            other regions lack headroom or would fall under ``min_healthy_regions``.
    """

    fraction: float
    reason: str
    immediate: bool = False
