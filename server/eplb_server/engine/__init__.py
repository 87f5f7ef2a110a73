"""The placement engine: pure functions over tensors (see CONTRACT.md)."""

from .api import Plan, evaluate, plan, rebalance_experts
from .scoring import Score

__all__ = ["Plan", "Score", "evaluate", "plan", "rebalance_experts"]
