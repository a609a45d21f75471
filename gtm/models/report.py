"""What a region agent reports to Redis on every heartbeat (and at once on a state change).

Units are in the field names' docstrings: fractions are 0..1 (never percent), rates are per
second, times are unix seconds unless a name ends in ``_ms``.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

CapacityUnit = Literal["replicas", "tokens/s"]

MAX_CAPACITY = 1e9
"""Upper bound on any reported capacity (replicas or tokens/s): larger values are rejected as
malformed, so products with the 0-255 weight scale stay finite."""


class _Report(BaseModel):
    # NaN and ±Inf are refused everywhere: one bad number must not poison the engine's arithmetic.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SourceStatus(_Report):
    """The outcome of scraping one fleet source.

    Attributes:
        name: the source's name from the inventory.
        kind: ``vllm``, ``tgi``, ``sglang``, ``triton`` or ``dcgm``.
        up: the metrics endpoint answered and parsed.
        healthy: the source is fit to serve (health endpoint OK, not wedged, GPU not degraded).
        reason: why not healthy; empty when healthy.
        latency_ms: scrape wall time, milliseconds.
        probe_ok: whether the newest synthetic completion probe succeeded; None when the
            source is not probed or no probe has finished yet.
        probe_ttft_ms: the newest successful probe's time to first token, milliseconds, or None.
        probe_consecutive_fail: consecutive failed probes up to the newest one.
        probe_reason: why the newest probe failed; empty when it succeeded.
    """

    name: str
    kind: str
    up: bool
    healthy: bool
    reason: str = ""
    latency_ms: float = Field(default=0.0, ge=0)
    probe_ok: bool | None = None
    probe_ttft_ms: float | None = Field(default=None, ge=0)
    probe_consecutive_fail: int = Field(default=0, ge=0)
    probe_reason: str = ""


class ModelStats(_Report):
    """A region's serving fleet for one model, summed over its replicas.

    Counters and queue gauges are summed over every series; fractions take the maximum
    (never summed; see TELEMETRY.md).

    Attributes:
        model: served model name (vLLM/SGLang ``model_name`` label, TGI ``/info`` model_id).
        version: model version the fleet reports it serves ("" if unknown).
        replicas_total: replicas configured behind the region's sources.
        replicas_healthy: replicas that passed every check.
        running: requests in running batches.
        waiting: queued requests (queue depth).
        kv_cache_usage: highest KV-cache usage over healthy replicas, fraction 0..1, or None.
        generation_tokens_total: decode-token counter summed over replicas.
        tokens_per_s: decode tokens/s measured between the last two scrapes, or None.
        errors_total: failed or aborted requests (counter).
        spare_capacity: what the model's fleet can still take, in ``FleetReport.capacity_unit``.
        ttft_s: mean time to first token over the last scrape interval, seconds (Δ``_sum`` /
            Δ``_count`` of the engine's TTFT histogram; TGI: queue + prefill approximation), or
            None when no request finished in the interval or the engine does not export it.
        itl_s: mean inter-token latency over the last scrape interval, seconds, or None.
        requests_per_s: finished requests per second over the last scrape interval, or None.
        error_rate: failed or aborted share of the requests finished in the last scrape
            interval, fraction 0..1, or None (no request finished, or no error counter).
        replicas_by_version: healthy replicas per model version they serve (versions the
            engine reports, else the inventory's), or None when no version is known.
        probe_ttft_s: mean time to first token of the newest successful synthetic probes of
            the model's healthy sources, seconds, or None (no probe result yet).
        probe_success: share of the model's probed sources whose newest probe succeeded,
            fraction 0..1, or None (no probe result yet).
    """

    model: str
    version: str = ""
    replicas_total: int = Field(ge=0, le=1_000_000)
    replicas_healthy: int = Field(ge=0, le=1_000_000)
    running: float = Field(default=0.0, ge=0)
    waiting: float = Field(default=0.0, ge=0)
    kv_cache_usage: float | None = Field(default=None, ge=0, le=1)
    generation_tokens_total: float = Field(default=0.0, ge=0)
    tokens_per_s: float | None = Field(default=None, ge=0)
    errors_total: float = Field(default=0.0, ge=0)
    spare_capacity: float = Field(default=0.0, ge=0, le=MAX_CAPACITY)
    ttft_s: float | None = Field(default=None, ge=0)
    itl_s: float | None = Field(default=None, ge=0)
    requests_per_s: float | None = Field(default=None, ge=0)
    error_rate: float | None = Field(default=None, ge=0, le=1)
    replicas_by_version: dict[str, int] | None = None
    probe_ttft_s: float | None = Field(default=None, ge=0)
    probe_success: float | None = Field(default=None, ge=0, le=1)

    def healthy_on(self, version: str) -> int:
        """Healthy replicas serving ``version`` (from ``replicas_by_version`` when reported,
        else all healthy replicas when ``version`` is the only one reported)."""
        if self.replicas_by_version is not None:
            return self.replicas_by_version.get(version, 0)
        return self.replicas_healthy if self.version == version else 0


class GpuStats(_Report):
    """GPU telemetry from DCGM exporter (or NVML), summed over the region's GPUs.

    Attributes:
        count: GPUs seen.
        utilization: mean busy fraction 0..1 (DCGM_FI_DEV_GPU_UTIL / 100).
        memory_used_mib: framebuffer used, MiB (not a capacity signal for vLLM/SGLang).
        memory_total_mib: framebuffer total, MiB.
        degraded: GPUs with a critical XID, failed row remap or failing DCGM health watch.
        xids: distinct critical XID codes currently reported.
    """

    count: int = Field(ge=0)
    utilization: float | None = Field(default=None, ge=0, le=1)
    memory_used_mib: float | None = Field(default=None, ge=0)
    memory_total_mib: float | None = Field(default=None, ge=0)
    degraded: int = Field(default=0, ge=0)
    xids: tuple[int, ...] = ()


class FleetReport(_Report):
    """One region agent's report: the unit written to Redis.

    Attributes:
        region: region name from the inventory.
        agent_id: unique id of the reporting agent process (host:pid or configured).
        seq: grows by one with each check; lets the engine count checks once.
        observed_at: when the check finished, unix seconds.
        interval_s: the agent's heartbeat interval, seconds.
        healthy: the agent's verdict for this check (at least one healthy replica and no
            source failure that takes the region out).
        consecutive_ok: consecutive healthy checks up to and including this one.
        consecutive_fail: consecutive failed checks up to and including this one.
        reason: why the check failed; empty when healthy.
        models: per served model, keyed by model name.
        gpu: GPU telemetry, when the region has a DCGM source.
        sources: one status per fleet source scraped.
        spare_capacity: the region's total spare capacity, in ``capacity_unit``.
        capacity_unit: ``replicas`` (idle-replica equivalents) or ``tokens/s``.
        clock_skew_s: the agent's clock minus the Redis server's clock (``TIME``), seconds, as
            the agent last measured it; None before its first measurement.
    """

    region: str = Field(min_length=1, max_length=64)
    agent_id: str = Field(min_length=1, max_length=200)
    seq: int = Field(ge=0)
    observed_at: float
    interval_s: float = Field(gt=0)
    healthy: bool
    consecutive_ok: int = Field(default=0, ge=0)
    consecutive_fail: int = Field(default=0, ge=0)
    reason: str = ""
    models: dict[str, ModelStats] = Field(default_factory=dict)
    gpu: GpuStats | None = None
    sources: tuple[SourceStatus, ...] = ()
    spare_capacity: float = Field(default=0.0, ge=0, le=MAX_CAPACITY)
    capacity_unit: CapacityUnit = "replicas"
    clock_skew_s: float | None = None

    @field_validator("observed_at")
    @classmethod
    def _finite_time(cls, v: float) -> float:
        if not math.isfinite(v) or v <= 0:
            raise ValueError("observed_at must be a positive unix time in seconds")
        return v

    def spare_for(self, model: str | None) -> float:
        """Spare capacity for one model (or the whole region when ``model`` is None).

        A model the region does not serve has no spare capacity.
        """
        if model is None:
            return self.spare_capacity
        stats = self.models.get(model)
        return stats.spare_capacity if stats is not None else 0.0

    def serves(self, model: str | None) -> bool:
        """Whether the region reports at least one healthy replica of ``model`` (any if None)."""
        if model is None:
            return any(m.replicas_healthy > 0 for m in self.models.values()) or not self.models
        stats = self.models.get(model)
        return stats is not None and stats.replicas_healthy > 0


class VantageCheck(_Report):
    """What one vantage point saw of one other region's public endpoint.

    Attributes:
        target: the region probed.
        reachable: the last probe got a well-formed answer within its timeout.
        consecutive_ok: consecutive successful probes up to and including the last one.
        consecutive_fail: consecutive failed probes up to and including the last one.
        latency_ms: the last probe's round trip, milliseconds (None when it failed).
        reason: why the last probe failed; empty when it succeeded.
    """

    target: str = Field(min_length=1, max_length=64)
    reachable: bool
    consecutive_ok: int = Field(default=0, ge=0)
    consecutive_fail: int = Field(default=0, ge=0)
    latency_ms: float | None = Field(default=None, ge=0)
    reason: str = ""


class VantageReport(_Report):
    """One region agent's view of the other regions, from outside (a vantage point).

    Written under ``gtm:{ns}:vantage:<vantage>`` with an expiry, by that region's agent only.

    Attributes:
        vantage: the region the probes ran from.
        agent_id: the reporting agent process.
        seq: grows by one with each round of probes.
        observed_at: when the round finished, unix seconds.
        interval_s: seconds between rounds.
        checks: one ``VantageCheck`` per region probed, keyed by region name.
    """

    vantage: str = Field(min_length=1, max_length=64)
    agent_id: str = Field(min_length=1, max_length=200)
    seq: int = Field(ge=0)
    observed_at: float
    interval_s: float = Field(gt=0)
    checks: dict[str, VantageCheck] = Field(default_factory=dict)

    @field_validator("observed_at")
    @classmethod
    def _finite_time(cls, v: float) -> float:
        if not math.isfinite(v) or v <= 0:
            raise ValueError("observed_at must be a positive unix time in seconds")
        return v


BgpAck = Literal["done", "error", "pending"]


class BgpRouteState(_Report):
    """One anycast prefix on a region's BGP speaker: what the plan wants, what the agent wants
    (plan + own fleet + graceful drain), what it sent to ExaBGP and what ExaBGP acknowledged.

    Attributes:
        prefix: the anycast prefix (CIDR).
        plan_action: what the controller's plan says (None: the plan names no such prefix now).
        wanted: what the agent wants announced now.
        reason: why ``wanted`` is what it is, in words.
        sent_action: the last command sent to the current ExaBGP (None: nothing sent yet).
        sent_next_hop: its next hop.
        sent_prepend: extra copies of the local ASN on the AS path.
        sent_med: MED sent (None: none).
        sent_communities: communities sent (``65535:0`` while a planned withdrawal is held).
        sent_at: unix seconds it was written.
        acked: ExaBGP's answer: ``done``, ``error`` or ``pending`` (no answer yet).
        acked_at: unix seconds of the answer.
    """

    prefix: str = Field(min_length=1, max_length=64)
    plan_action: Literal["announce", "withdraw"] | None = None
    wanted: Literal["announce", "withdraw"]
    reason: str = Field(default="", max_length=500)
    sent_action: Literal["announce", "withdraw"] | None = None
    sent_next_hop: str | None = None
    sent_prepend: int = Field(default=0, ge=0)
    sent_med: int | None = None
    sent_communities: tuple[str, ...] = ()
    sent_at: float | None = None
    acked: BgpAck | None = None
    acked_at: float | None = None


class BgpPeerState(_Report):
    """A BGP session of a region's speaker, as ExaBGP reported it.

    Attributes:
        address: the peer's address.
        up: whether the session is established.
        event: ExaBGP's last event line about it.
        changed_at: unix seconds of that event (0: none yet).
    """

    address: str
    up: bool
    event: str = Field(default="", max_length=300)
    changed_at: float = 0.0


class BgpState(_Report):
    """What a region agent's BGP speaker does (``gtm:{ns}:bgp:<region>``, with an expiry).

    Attributes:
        region: the agent's region.
        agent_id: the reporting agent process.
        observed_at: when written, unix seconds.
        speaker: ``exabgp``.
        connected: whether ExaBGP's API process is connected to the agent now.
        restarts: bridge connections after the first (ExaBGP restarts or reloads).
        fleet_up: the agent's own fleet verdict with fall/rise hysteresis (None: no check yet).
        plan_generation: generation of the last plan read (None: none yet).
        plan_reachable: False while Redis cannot be read (the last plan is kept).
        last_ack_at: unix seconds of ExaBGP's last acknowledgement.
        routes: per prefix.
        peers: per peer address.
    """

    region: str = Field(min_length=1, max_length=64)
    agent_id: str = Field(min_length=1, max_length=200)
    observed_at: float
    speaker: str = "exabgp"
    connected: bool
    restarts: int = Field(default=0, ge=0)
    fleet_up: bool | None = None
    plan_generation: int | None = None
    plan_reachable: bool = True
    last_ack_at: float | None = None
    routes: dict[str, BgpRouteState] = Field(default_factory=dict)
    peers: dict[str, BgpPeerState] = Field(default_factory=dict)
