"""The memory-budget planner: FTTE's memory model, the choice of w*, and the plan's fragments."""

from tinyfed.planner.config import TrainingConfig
from tinyfed.planner.plan import ModelSource, Plan, make_plan

__all__ = ["ModelSource", "Plan", "TrainingConfig", "make_plan"]
