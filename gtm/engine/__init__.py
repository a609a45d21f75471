"""The policy engine: pure functions from inputs to desired routing. No I/O imports here."""

from gtm.engine.planner import PlanCache, plan

__all__ = ["PlanCache", "plan"]
