"""Planned-move pacing: drains, cordons and ramps move a weight at most one step per interval.

Failure moves (a region turning unhealthy) are immediate and do not pass through here.
"""

from __future__ import annotations

from collections.abc import Mapping

from gtm.models.override import Override
from gtm.models.plan import PoolMember
from gtm.models.policy import SafetyRules


def step_due(prev: PoolMember, rules: SafetyRules, now: float) -> bool:
    """Whether a planned step may be taken now (one per ``step_interval_s``)."""
    return now - prev.changed_at >= rules.step_interval_s - 1e-9


def drain_weight(prev: PoolMember | None, rules: SafetyRules, now: float) -> int:
    """Next weight of a drained region: one step toward 0, never up."""
    if prev is None or prev.weight == 0:
        return 0
    if not step_due(prev, rules, now):
        return prev.weight
    return max(0, prev.weight - rules.planned_step)


def paced_weight(prev: PoolMember | None, target: int, rules: SafetyRules, now: float) -> int:
    """Move from the previous weight toward ``target`` within the safety rules.

    - no previous member (first plan): the target at once;
    - up: at most ``planned_step`` per ``step_interval_s`` (recovery and undrain ramps, and
      capacity growth alike), so a weight never rises faster than the policy allows;
    - down: at once (shedding load is never held back);
    - within the deadband of a non-zero weight: unchanged (no DNS churn on capacity wobble).
    """
    if prev is None:
        return target
    p = prev.weight
    if p > 0 and target > 0 and abs(target - p) < rules.weight_deadband:
        return p
    if target > p:
        return min(target, p + rules.planned_step) if step_due(prev, rules, now) else p
    return target


def admitted_drains(drains: Mapping[str, Override], max_drained: int) -> set[str]:
    """Which drains may proceed: forced ones always, then the oldest up to ``max_drained``.

    A drain beyond the limit is held (its weight is not lowered) until another one is lifted.
    """
    forced = {r for r, o in drains.items() if o.force}
    admitted = set(forced)
    for r, _o in sorted(((r, o) for r, o in drains.items() if not o.force), key=lambda x: (x[1].since, x[0])):
        if len(admitted) >= max_drained:
            break
        admitted.add(r)
    return admitted


def drain_hold(
    region: str,
    others_serving: int,
    load: float,
    others_spare: float,
    unit: str | None,
    rules: SafetyRules,
) -> str | None:
    """Why a drain step of ``region`` must wait, or None when it may proceed.

    Args:
        region: the region being drained.
        others_serving: serving regions in the pool besides it.
        load: its smoothed load, in ``unit``.
        others_spare: spare capacity of those other regions, in ``unit``.
        unit: the common capacity unit, or None when the regions report different units
            (the headroom check is then skipped, and said so by the caller).
        rules: the policy's safety rules.
    """
    if others_serving < rules.min_healthy_regions:
        return (
            f"drain of {region} held: it would leave {others_serving} serving region(s) "
            f"< min_healthy_regions {rules.min_healthy_regions}"
        )
    if unit is not None:
        need = load * (1 + rules.headroom)
        if others_spare + 1e-9 < need:
            return (
                f"drain of {region} held: it carries {load:.2f} {unit} of load; the other "
                f"{others_serving} region(s) have {others_spare:.2f} {unit} spare < {need:.2f} needed "
                f"(headroom {rules.headroom:.0%})"
            )
    return None
