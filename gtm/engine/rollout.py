"""The rollout state machine: pure functions of (state, reports, now). No I/O, no clock.

A rollout moves a service's regions to ``target_version`` wave by wave, one wave in flight.
Per region of the wave in flight::

    pending ─► draining ─► ready-for-deploy ─► canary ─► ramping ─► done
               (drain_first)   (cap 0 if drained)   │ bake, gates
                                                    └─ gate failed ─► rolled-back (cap 0; rollout halted)

* ``draining`` (only with ``drain_first``): cap 0; after the service's DNS TTL +
  ``drain_grace_s`` the region is ``ready-for-deploy`` (still cap 0). Without ``drain_first`` a
  region is ready for deploy as soon as its wave starts, and keeps its traffic while deployed.
* ``ready-for-deploy`` → ``canary`` once a fresh report shows the target version on at least
  ``min_healthy_replicas`` healthy replicas (``ModelStats.healthy_on``).
* ``canary``: cap ``canary_fraction``; every new report (by ``seq``) of the canary and of the
  baseline regions adds one sample per gate metric. After ``bake_time_s`` the gates judge
  (``gtm.engine.gates``) on every tick until they pass (→ ``ramping``) or fail (→
  ``rolled-back``, the rollout ``halted`` with the failing metric, value and threshold).
* ``ramping``: cap ``ramp_steps[i]``, one step per ``ramp_interval_s``; after the last (1.0)
  has held for an interval the region is ``done`` (no cap).
* When every region of the wave is done the next wave starts; after the last the rollout is
  ``done``.

**Baseline**: healthy regions of the service, not in the wave in flight, that report no
healthy replica on the target version (still on the old one). When none is left (the last
wave covers every old region) the regions already promoted serve as baseline, and the reason
says so.

Operator actions: ``pause`` freezes every transition (caps hold; bake and ramp clocks stop),
``resume`` continues a paused rollout, or retries a halted one (a rolled-back region goes back
to ``ready-for-deploy`` and bakes again with fresh samples); ``abort`` ends it: regions in
flight are ``reverting`` (cap 0) until no healthy replica reports the target version any more
(``reverted``, no cap), so an abort never sends traffic back to the new version.

Every transition increments ``step`` and appends a :class:`StepRecord` (the audit of the
rollout); a leader that loses its lease cannot write one (see ``gtm.controller.rollout``), so
a new leader continues from the stored state without repeating or skipping a step. Bake and
ramp clocks are wall-clock times stored in the state, so they survive a restart too.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from gtm.engine.gates import ceiling_breach, evaluate
from gtm.errors import RolloutError
from gtm.models.plan import DesiredState
from gtm.models.report import FleetReport, ModelStats
from gtm.models.rollout import RolloutSpec, WeightCap

Phase = Literal[
    "pending", "draining", "ready-for-deploy", "canary", "ramping", "done",
    "rolled-back", "reverting", "reverted",
]
Status = Literal["running", "paused", "halted", "done", "aborted"]

ACTIVE: frozenset[str] = frozenset({"running", "paused", "halted"})
"""Statuses of a rollout that still drives caps and blocks another rollout of its service."""
IN_FLIGHT: frozenset[str] = frozenset({"draining", "ready-for-deploy", "canary", "ramping", "rolled-back"})
"""Region phases between the start of the region's wave and its end."""
PAST_READY: frozenset[str] = frozenset({"ready-for-deploy", "canary", "ramping", "done"})
"""Phases in which a region is (or has been) ready for deploy (``gtm rollout wait-ready``)."""
SAMPLE_KEEP_MIN = 200
"""Samples kept per metric and side: the newest ``max(4 × min_samples, SAMPLE_KEEP_MIN)``."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepRecord(_Model):
    """One transition of a rollout.

    Attributes:
        step: the step number (1, 2, ...; contiguous).
        at: when, unix seconds.
        wave: wave index (0-based) at the time; -1 before the first.
        region: the region that moved, or "" for the rollout itself.
        phase: the region's new phase, or the rollout's new status.
        reason: why.
        actor: ``controller`` (with ``token``) or the operator's name.
        token: the leader's fencing token when the controller made the step.
    """

    step: int
    at: float
    wave: int
    region: str = ""
    phase: str
    reason: str
    actor: str = "controller"
    token: int | None = None


class RegionProgress(_Model):
    """Where one region is in the rollout.

    Attributes:
        phase: see the module docstring.
        since: when the phase was entered (shifted by pauses), unix seconds.
        ramp_index: index into ``ramp_steps`` while ramping, else -1.
        reason: why the region is where it is (updated while it waits).
        canary: canary samples per gate metric, collected while baking.
        baseline: baseline samples per gate metric, over the same window.
        baseline_regions: the regions sampled as baseline, and on what basis.
        seen: last report ``seq`` sampled per region (each report counts once).
        gate: the last gate verdict's reason.
        planned_rollback: rolled back because another region of its wave failed (its own
            gates did not): routed away as a planned move (paced, held without headroom)
            rather than at once.
        drained_at: while draining, when the routing in force first showed the region at
            weight 0 in every pool of the service (unix seconds); the TTL + grace wait counts
            from here, and restarts if the weight comes back (a held or lifted drain).
    """

    phase: Phase = "pending"
    since: float = 0.0
    ramp_index: int = -1
    reason: str = ""
    canary: dict[str, list[float]] = Field(default_factory=dict)
    baseline: dict[str, list[float]] = Field(default_factory=dict)
    baseline_regions: str = ""
    seen: dict[str, int] = Field(default_factory=dict)
    gate: str = ""
    planned_rollback: bool = False
    drained_at: float | None = None


class RolloutState(_Model):
    """A rollout as stored in Redis (``gtm:{ns}:rollout:<name>``).

    The spec and the service facts the machine needs are copied in at start, so a policy
    edit never changes a rollout in flight and every controller replica sees the same one.

    Attributes:
        name: rollout name.
        spec: the rollout's spec at start.
        model: the service's model (None: the region's only / largest model).
        service_regions: every region of the service (baseline candidates).
        ttl_s: the service's DNS TTL, seconds (drain wait = TTL + ``drain_grace_s``).
        report_timeout_s: a report older than this is not used, seconds.
        status: ``running``, ``paused``, ``halted``, ``done`` or ``aborted``.
        reason: the latest decision's reason.
        wave: the wave in flight (0-based); -1 before the first tick.
        regions: progress of every region named in a wave.
        step: transitions so far (the last ``history`` entry's ``step``).
        rev: writes so far (compare-and-set guard; grows with sample updates too).
        history: every transition, in order.
        started_at: when started, unix seconds.
        updated_at: last write, unix seconds.
        started_by: who started it.
        paused_at: when paused (while paused), unix seconds.
    """

    name: str
    spec: RolloutSpec
    model: str | None = None
    service_regions: tuple[str, ...] = ()
    ttl_s: float = 0.0
    report_timeout_s: float = 10.0
    status: Status = "running"
    reason: str = ""
    wave: int = -1
    regions: dict[str, RegionProgress] = Field(default_factory=dict)
    step: int = 0
    rev: int = 0
    history: list[StepRecord] = Field(default_factory=list)
    started_at: float = 0.0
    updated_at: float = 0.0
    started_by: str = ""
    paused_at: float | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def ready_for_deploy(self, region: str) -> bool:
        """Whether ``region`` is (or has been) ready for deploy in this rollout."""
        p = self.regions.get(region)
        return p is not None and p.phase in PAST_READY

    def record(
        self, now: float, phase: str, reason: str, *, region: str = "", actor: str = "controller",
        token: int | None = None,
    ) -> None:
        """Append one transition (mutates; used on a copy by the functions below)."""
        self.step += 1
        self.history.append(
            StepRecord(step=self.step, at=now, wave=self.wave, region=region, phase=phase, reason=reason,
                       actor=actor, token=token)
        )
        self.reason = f"{region}: {reason}" if region else reason


# -- construction and operator actions -------------------------------------------------------


def start(
    spec: RolloutSpec,
    now: float,
    *,
    model: str | None,
    service_regions: tuple[str, ...],
    ttl_s: float,
    report_timeout_s: float,
    actor: str,
    reason: str = "",
) -> RolloutState:
    """A new rollout (status running, no wave yet: the controller's next tick starts wave 1)."""
    st = RolloutState(
        name=spec.name, spec=spec, model=model, service_regions=tuple(service_regions), ttl_s=ttl_s,
        report_timeout_s=report_timeout_s, started_at=now, updated_at=now, started_by=actor,
        regions={r: RegionProgress(since=now, reason="waiting for its wave") for w in spec.waves for r in w},
    )
    waves = " → ".join("[" + ", ".join(w) + "]" for w in spec.waves)
    st.record(now, "running", f"started by {actor}: {spec.target_version} over {waves}"
              + (f" ({reason})" if reason else ""), actor=actor)
    return st


def pause(state: RolloutState, now: float, *, actor: str, reason: str = "") -> RolloutState:
    """Freeze a running rollout. Raises ``RolloutError`` unless it is running."""
    if state.status != "running":
        raise RolloutError(f"rollout {state.name} is {state.status}, not running")
    st = state.model_copy(deep=True)
    st.status, st.paused_at = "paused", now
    st.record(now, "paused", f"paused by {actor}" + (f": {reason}" if reason else "") + "; caps hold", actor=actor)
    return st


def resume(state: RolloutState, now: float, *, actor: str, reason: str = "") -> RolloutState:
    """Continue a paused rollout, or retry a halted one. Raises ``RolloutError`` otherwise."""
    if state.status not in ("paused", "halted"):
        raise RolloutError(f"rollout {state.name} is {state.status}: only a paused or halted rollout resumes")
    st = state.model_copy(deep=True)
    why = f" ({reason})" if reason else ""
    if st.status == "paused":
        held = max(0.0, now - (st.paused_at or now))
        for p in st.regions.values():
            if p.phase in IN_FLIGHT:
                p.since += held  # bake and ramp clocks stop while paused
                if p.drained_at is not None:
                    p.drained_at += held
        st.status, st.paused_at = "running", None
        st.record(now, "running", f"resumed by {actor} after {held:.0f}s paused{why}", actor=actor)
        return st
    st.status = "running"
    for region in _wave_regions(st):
        p = st.regions[region]
        if p.phase == "rolled-back":
            _enter(st, region, "ready-for-deploy", now,
                   f"retry after the halt (resumed by {actor}): canary again with fresh samples", actor=actor)
    st.record(now, "running", f"resumed by {actor} after a halt{why}", actor=actor)
    return st


def abort(state: RolloutState, now: float, *, actor: str, reason: str = "") -> RolloutState:
    """End an active rollout. Regions in flight are routed away until they no longer serve
    the target version. Raises ``RolloutError`` if it already ended."""
    if not state.active:
        raise RolloutError(f"rollout {state.name} already {state.status}")
    st = state.model_copy(deep=True)
    st.status, st.paused_at = "aborted", None
    for region in _wave_regions(st):
        if st.regions[region].phase in IN_FLIGHT:
            _enter(st, region, "reverting", now,
                   f"aborted: routed away until no healthy replica serves {st.spec.target_version}", actor=actor)
    st.record(now, "aborted", f"aborted by {actor}" + (f": {reason}" if reason else ""), actor=actor)
    return st


def already_deployed(
    spec: RolloutSpec, model: str | None, reports: Mapping[str, FleetReport], now: float, report_timeout_s: float
) -> str | None:
    """Why starting ``spec`` would be pointless, or None when there is something to roll out.

    It is pointless when every region of its waves has a fresh report whose healthy replicas
    all serve ``spec.target_version`` (at least one of them): no region would change, and no
    region is left on the old version to serve as the canary's baseline. A region without a
    fresh report, or with any replica on another version, leaves the start allowed.

    Args:
        spec: the rollout.
        model: the service's model (None: the report's only or largest model).
        reports: latest report per region.
        now: unix seconds; reports older than ``report_timeout_s`` seconds do not count.
    """
    regions = sorted({r for wave in spec.waves for r in wave})
    for region in regions:
        rep = reports.get(region)
        if rep is None or now - rep.observed_at > report_timeout_s or not rep.healthy:
            return None
        stats = stats_for(rep, model)
        if stats is None or stats.replicas_healthy <= 0:
            return None
        if stats.healthy_on(spec.target_version) < stats.replicas_healthy:
            return None
    return (
        f"every region of rollout {spec.name} ({', '.join(regions)}) already serves only "
        f"{spec.target_version}: nothing to roll out, and no region is left on the old version "
        "as the canary's baseline"
    )


def release(state: RolloutState, region: str, now: float, *, actor: str, reason: str = "") -> RolloutState:
    """Let a region of an aborted rollout back into normal routing although its replicas may
    still serve the target version (the operator has judged that version acceptable there, or
    the region is needed for capacity). Without it the region stays routed away until no
    healthy replica serves the target version.

    Raises:
        RolloutError: the rollout is not aborted, or ``region`` is not one of its reverting
            regions (the message lists them).
    """
    if state.status != "aborted":
        raise RolloutError(f"rollout {state.name} is {state.status}; only an aborted rollout's regions can be released")
    reverting = sorted(r for r, p in state.regions.items() if p.phase == "reverting")
    if region not in state.regions:
        raise RolloutError(f"unknown region {region!r}: rollout {state.name} covers {', '.join(sorted(state.regions))}")
    if region not in reverting:
        held = ", ".join(reverting) or "none"
        raise RolloutError(f"region {region} is not routed away by rollout {state.name} (reverting: {held})")
    st = state.model_copy(deep=True)
    why = f"released by {actor}" + (f": {reason}" if reason else "")
    _enter(st, region, "reverted", now, f"{why}; normal routing, may still serve {st.spec.target_version}",
           actor=actor)
    return st


# -- the controller's tick --------------------------------------------------------------------


def advance(
    state: RolloutState,
    reports: Mapping[str, FleetReport],
    now: float,
    *,
    token: int | None = None,
    weights: Mapping[str, int] | None = None,
) -> RolloutState:
    """One tick: collect samples and make every transition that is due.

    Args:
        state: the stored state (not modified).
        reports: latest report per region (stale ones are ignored here).
        now: the controller's clock, unix seconds.
        token: the leader's fencing token, recorded in each step.
        weights: region → its largest weight (0-255) in the service's pools in the routing in
            force (``service_weights``). A draining region is ready for deploy only after it
            has shown 0 here for TTL + grace; None (routing unknown) keeps it draining.

    Returns:
        The new state; ``state`` itself when nothing changed.
    """
    if state.status in ("halted", "done"):
        return state
    if state.status == "paused":
        # Frozen, except for safety: a canary breaking an absolute ceiling still rolls back.
        st = state.model_copy(deep=True)
        fresh = {r: rep for r, rep in reports.items() if now - rep.observed_at <= st.report_timeout_s}
        for region in _wave_regions(st):
            if st.regions[region].phase in ("canary", "ramping") and _breached(st, region, fresh, now, token):
                break
        return state if st == state else st
    if state.status == "aborted" and all(p.phase != "reverting" for p in state.regions.values()):
        return state
    st = state.model_copy(deep=True)
    fresh = {r: rep for r, rep in reports.items() if now - rep.observed_at <= st.report_timeout_s}
    if st.status == "aborted":
        _revert(st, fresh, now, token)
    else:
        _run(st, fresh, now, token, weights)
    return state if st == state else st


def service_weights(routing: DesiredState | None, service: str) -> dict[str, int] | None:
    """Region → its largest weight over the pools of ``service`` (by name) in ``routing``;
    None when there is no routing yet or the service is not in it."""
    if routing is None:
        return None
    out: dict[str, int] = {}
    found = False
    for svc in routing.services.values():
        if svc.name != service:
            continue
        found = True
        for route in svc.segments:
            pool = routing.pools.get(route.pool_id)
            for m in pool.members if pool is not None else ():
                out[m.region] = max(out.get(m.region, 0), m.weight)
    return out if found else None


def _run(st: RolloutState, fresh: Mapping[str, FleetReport], now: float, token: int | None,
         weights: Mapping[str, int] | None) -> None:
    spec = st.spec
    if st.wave < 0:
        _start_wave(st, 0, now, token)
    for region in _wave_regions(st):
        _tick_region(st, region, fresh, now, token, weights)
        if st.status == "halted":
            return
    if all(st.regions[r].phase == "done" for r in _wave_regions(st)):
        if st.wave + 1 < len(spec.waves):
            _start_wave(st, st.wave + 1, now, token)
        else:
            st.status = "done"
            st.record(now, "done", f"every wave done: {spec.target_version} on "
                      f"{', '.join(r for w in spec.waves for r in w)}", token=token)


def _start_wave(st: RolloutState, wave: int, now: float, token: int | None) -> None:
    st.wave = wave
    first: Phase = "draining" if st.spec.drain_first else "ready-for-deploy"
    for region in st.spec.waves[wave]:
        why = (
            f"wave {wave + 1}/{len(st.spec.waves)}: routed away, waiting TTL {st.ttl_s:g}s + grace "
            f"{st.spec.drain_grace_s:g}s before deploy"
            if first == "draining"
            else f"wave {wave + 1}/{len(st.spec.waves)}: ready for deploy of {st.spec.target_version} (no drain)"
        )
        _enter(st, region, first, now, why, token=token)


def _enter(
    st: RolloutState, region: str, phase: Phase, now: float, reason: str, *, token: int | None = None,
    actor: str = "controller",
) -> None:
    p = st.regions[region]
    p.phase, p.since, p.reason = phase, now, reason
    p.planned_rollback, p.drained_at = False, None
    p.ramp_index = 0 if phase == "ramping" else -1
    if phase in ("canary", "ready-for-deploy"):
        p.canary, p.baseline, p.seen, p.gate, p.baseline_regions = {}, {}, {}, "", ""
    label = f"ramping {st.spec.ramp_steps[0]:.0%}" if phase == "ramping" else phase
    st.record(now, label, reason, region=region, actor=actor, token=token)


def _tick_region(st: RolloutState, region: str, fresh: Mapping[str, FleetReport], now: float,
                 token: int | None, weights: Mapping[str, int] | None = None) -> None:
    spec, p = st.spec, st.regions[region]
    if p.phase == "draining":
        wait = st.ttl_s + spec.drain_grace_s
        w = None if weights is None else weights.get(region, 0)
        if w is None or w > 0:
            # Not yet (or no longer) out of the routing: a paced, held or lifted drain.
            p.drained_at = None
            p.reason = (f"draining for deploy: weight {'unknown' if w is None else w} in the routing in force; "
                        f"TTL {st.ttl_s:g}s + grace {spec.drain_grace_s:g}s count from weight 0")
            return
        if p.drained_at is None:
            p.drained_at = now
        held = now - p.drained_at
        if held >= wait:
            _enter(st, region, "ready-for-deploy", now,
                   f"drained: weight 0 held {held:.0f}s ≥ TTL {st.ttl_s:g}s + grace "
                   f"{spec.drain_grace_s:g}s; ready for deploy of {spec.target_version}", token=token)
        else:
            p.reason = f"drained: weight 0 for {held:.0f}/{wait:g}s (TTL + grace) before deploy"
        return
    if p.phase == "ready-for-deploy":
        w = None if weights is None else weights.get(region, 0)
        if spec.drain_first and w is not None and w > 0:
            # The safety rules lifted the drain (a failure elsewhere): the region serves again,
            # so it is not ready for a deploy any more; `wait-ready` waits again.
            _enter(st, region, "draining", now,
                   f"drain lifted before deploy: the region serves again (weight {w}); not ready for deploy "
                   f"until it is back at weight 0 for TTL {st.ttl_s:g}s + grace {spec.drain_grace_s:g}s",
                   token=token)
            return
        on, seen = _on_target(st, fresh.get(region))
        if on >= spec.min_healthy_replicas:
            _enter(st, region, "canary", now,
                   f"{spec.target_version} on {on} healthy replicas (≥ {spec.min_healthy_replicas}); canary at "
                   f"{spec.canary_fraction:.0%}, baking {spec.bake_time_s:g}s", token=token)
        else:
            p.reason = (f"waiting for deploy: {spec.target_version} on {on}/{spec.min_healthy_replicas} healthy "
                        f"replicas (reported: {seen})")
        return
    if p.phase == "canary":
        if _breached(st, region, fresh, now, token):
            return
        baked = now - p.since
        if baked < spec.bake_time_s:
            p.reason = f"baking at {spec.canary_fraction:.0%}: {baked:.0f}/{spec.bake_time_s:g}s"
            return
        result = evaluate(spec.gates, p.canary, p.baseline)
        p.gate = result.reason
        if result.verdict == "pass":
            _enter(st, region, "ramping", now,
                   f"{result.reason} (baseline: {p.baseline_regions}); ramp to {spec.ramp_steps[0]:.0%}",
                   token=token)
        elif result.verdict == "fail":
            _rollback(st, region, result.reason, now, token)
        elif spec.gates.max_wait_s is not None and baked - spec.bake_time_s >= spec.gates.max_wait_s:
            _rollback(st, region, f"gates gave no verdict {baked - spec.bake_time_s:.0f}s after the bake "
                      f"(max_wait_s {spec.gates.max_wait_s:g}): {result.reason}; unproven", now, token)
        else:
            p.reason = f"baked {baked:.0f}s; gates wait: {result.reason}"
        return
    if p.phase == "ramping":
        if _breached(st, region, fresh, now, token):
            return
        if now - p.since < spec.ramp_interval_s:
            return
        # Judged again before every step up, on each side's newest ``min_samples`` samples: a
        # version that degrades under more traffic is rolled back before it gets more.
        n = spec.gates.min_samples
        result = evaluate(spec.gates, {m: xs[-n:] for m, xs in p.canary.items()},
                          {m: xs[-n:] for m, xs in p.baseline.items()})
        if result.verdict == "fail":
            _rollback(st, region, f"{result.reason} (at ramp {spec.ramp_steps[p.ramp_index]:.0%})", now, token)
            return
        p.gate = result.reason
        nxt = p.ramp_index + 1
        if nxt < len(spec.ramp_steps):
            p.ramp_index, p.since = nxt, now
            reason = f"ramp step {nxt + 1}/{len(spec.ramp_steps)}: {spec.ramp_steps[nxt]:.0%} of normal weight"
            p.reason = reason
            st.record(now, f"ramping {spec.ramp_steps[nxt]:.0%}", reason, region=region, token=token)
        else:
            _enter(st, region, "done", now, f"promoted: {spec.target_version} at full weight", token=token)


def _breached(st: RolloutState, region: str, fresh: Mapping[str, FleetReport], now: float,
              token: int | None) -> bool:
    """Sample ``region`` (canary or ramping) and roll it back if its newest samples break an
    absolute ceiling; returns whether it did."""
    _sample(st, region, fresh)
    why = ceiling_breach(st.spec.gates, st.regions[region].canary)
    if why is None:
        return False
    phase = st.regions[region].phase
    _rollback(st, region, f"{why}, during {'bake' if phase == 'canary' else 'ramp'}"
              + (" while paused" if st.status == "paused" else ""), now, token)
    return True


def _rollback(st: RolloutState, region: str, why: str, now: float, token: int | None) -> None:
    """Route ``region`` away at once, and its wave's other regions on the target version
    (canary or ramping) as planned moves, then halt for an operator."""
    _enter(st, region, "rolled-back", now, f"{why}; routed away (baseline: "
           f"{st.regions[region].baseline_regions})", token=token)
    st.regions[region].gate = why
    for sibling in _wave_regions(st):
        p = st.regions[sibling]
        if sibling != region and p.phase in ("canary", "ramping"):
            _enter(st, sibling, "rolled-back", now,
                   f"{region} of the same wave failed ({why}); routed away in planned steps", token=token)
            p.gate, p.planned_rollback = f"wave sibling {region} failed", True
    st.status = "halted"
    st.record(now, "halted", f"{region} {why}; waiting for an operator (resume or abort)", token=token)


def _revert(st: RolloutState, fresh: Mapping[str, FleetReport], now: float, token: int | None) -> None:
    for region, p in st.regions.items():
        if p.phase != "reverting":
            continue
        rep = fresh.get(region)
        on, seen = _on_target(st, rep)
        if rep is not None and on == 0:
            _enter(st, region, "reverted", now,
                   f"no healthy replica serves {st.spec.target_version} any more (reported: {seen}); "
                   "normal routing", token=token)
        else:
            p.reason = f"aborted: routed away while {on} healthy replicas serve {st.spec.target_version}"


# -- samples -----------------------------------------------------------------------------------


def stats_for(report: FleetReport | None, model: str | None) -> ModelStats | None:
    """The report's stats of ``model`` (None: its only, else its largest, model)."""
    if report is None or not report.models:
        return None
    if model is not None:
        return report.models.get(model)
    return max(report.models.values(), key=lambda m: (m.replicas_total, m.model))


def metric_value(stats: ModelStats, metric: str) -> float | None:
    """One gate metric from a report's model stats, or None when not reported."""
    return {
        "error_rate": stats.error_rate,
        "ttft": stats.ttft_s,
        "itl": stats.itl_s,
        "kv_cache": stats.kv_cache_usage,
        "probe_ttft": stats.probe_ttft_s,
        "probe_failure": None if stats.probe_success is None else 1.0 - stats.probe_success,
    }.get(metric)


def _on_target(st: RolloutState, report: FleetReport | None) -> tuple[int, str]:
    """(healthy replicas on the target version, versions reported) of a fresh report."""
    stats = stats_for(report, st.model)
    if report is None or stats is None:
        return 0, "no fresh report"
    seen = ", ".join(f"{v}×{n}" for v, n in sorted((stats.replicas_by_version or {}).items())) or stats.version or "?"
    return (stats.healthy_on(st.spec.target_version) if report.healthy else 0), seen


def baseline_regions(
    st: RolloutState, region: str, fresh: Mapping[str, FleetReport]
) -> tuple[list[str], str]:
    """Baseline regions for ``region``'s canary, and the basis (see the module docstring)."""
    in_wave = set(_wave_regions(st))
    old, promoted = [], []
    for r in st.service_regions:
        rep = fresh.get(r)
        stats = stats_for(rep, st.model)
        if r == region or r in in_wave or rep is None or stats is None or not rep.healthy:
            continue
        if stats.replicas_healthy <= 0:
            continue
        phase = st.regions[r].phase if r in st.regions else "pending"
        if phase in ("rolled-back", "reverting"):
            continue
        if stats.healthy_on(st.spec.target_version) == 0:
            old.append(r)
        elif phase == "done":
            promoted.append(r)
    if old:
        return old, "old version on " + ", ".join(old)
    if promoted:
        return promoted, "no old-version region left; promoted regions " + ", ".join(promoted)
    return [], "none available"


def _sample(st: RolloutState, region: str, fresh: Mapping[str, FleetReport]) -> None:
    """Add one sample per metric from each new report of the canary and its baseline."""
    p = st.regions[region]
    rep = fresh.get(region)
    on, _ = _on_target(st, rep)
    if rep is None or on < st.spec.min_healthy_replicas:
        return  # only the target version's behaviour counts as canary
    keep = max(4 * st.spec.gates.min_samples, SAMPLE_KEEP_MIN)
    bases, basis = baseline_regions(st, region, fresh)
    p.baseline_regions = basis
    for r, side in [(region, p.canary)] + [(b, p.baseline) for b in bases]:
        rep_r = fresh[r]
        if p.seen.get(r) == rep_r.seq:
            continue  # this report was sampled already
        p.seen[r] = rep_r.seq
        stats = stats_for(rep_r, st.model)
        if stats is None:
            continue
        for metric in st.spec.gates.metrics:
            v = metric_value(stats, metric)
            if v is not None:
                xs = side.setdefault(metric, [])
                xs.append(round(v, 9))
                del xs[:-keep]


# -- caps ---------------------------------------------------------------------------------------


def caps(state: RolloutState) -> dict[str, WeightCap]:
    """Weight caps per region for the rollout's service (empty once done)."""
    spec, out = state.spec, {}
    tag = f"rollout {state.name}"
    if state.status == "done":
        return {}
    for region, p in state.regions.items():
        if state.status == "aborted" and p.phase != "reverting":
            continue
        if p.phase == "draining":
            out[region] = WeightCap(0.0, f"{tag}: draining for deploy of {spec.target_version}")
        elif p.phase == "ready-for-deploy" and spec.drain_first:
            out[region] = WeightCap(0.0, f"{tag}: drained, ready for deploy of {spec.target_version}")
        elif p.phase == "canary":
            out[region] = WeightCap(spec.canary_fraction, f"{tag}: canary {spec.canary_fraction:.0%} "
                                    f"of {spec.target_version}")
        elif p.phase == "ramping":
            f = spec.ramp_steps[p.ramp_index]
            out[region] = WeightCap(f, f"{tag}: ramp {p.ramp_index + 1}/{len(spec.ramp_steps)} at {f:.0%}")
        elif p.phase == "rolled-back":
            out[region] = WeightCap(0.0, f"{tag}: ROLLED BACK: {p.gate}", immediate=not p.planned_rollback)
        elif p.phase == "reverting":
            out[region] = WeightCap(0.0, f"{tag}: aborted, routed away while serving {spec.target_version}",
                                    immediate=True)
    return out


def _wave_regions(st: RolloutState) -> tuple[str, ...]:
    return st.spec.waves[st.wave] if 0 <= st.wave < len(st.spec.waves) else ()


def summary(state: RolloutState) -> dict[str, object]:
    """A JSON-ready view for ``gtm rollout status`` (samples summarised, not listed)."""
    regions = {}
    for r, p in state.regions.items():
        regions[r] = {
            "phase": p.phase if p.phase != "ramping" else f"ramping {state.spec.ramp_steps[p.ramp_index]:.0%}",
            "since": p.since,
            "reason": p.reason,
            "gate": p.gate,
            "baseline": p.baseline_regions,
            "samples": {
                m: {
                    "canary": len(p.canary.get(m, [])),
                    "baseline": len(p.baseline.get(m, [])),
                    "canary_median": statistics.median(p.canary[m]) if p.canary.get(m) else None,
                    "baseline_median": statistics.median(p.baseline[m]) if p.baseline.get(m) else None,
                }
                for m in state.spec.gates.metrics
            } if p.phase in ("canary", "rolled-back") or p.canary else {},
        }
    return {
        "name": state.name,
        "service": state.spec.service,
        "target_version": state.spec.target_version,
        "status": state.status,
        "reason": state.reason,
        "wave": state.wave + 1,
        "waves": [list(w) for w in state.spec.waves],
        "step": state.step,
        "started_at": state.started_at,
        "started_by": state.started_by,
        "regions": regions,
        "caps": {r: {"fraction": c.fraction, "reason": c.reason} for r, c in caps(state).items()},
        "history": [h.model_dump() for h in state.history],
    }
