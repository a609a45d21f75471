"""Planned-move pacing: drains, cordons and ramps move a weight at most one step per interval.

Failure moves (a region turning unhealthy) are immediate and do not pass through here.
"""

from __future__ import annotations

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
