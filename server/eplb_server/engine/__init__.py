"""The placement engine: pure functions over tensors (see CONTRACT.md)."""

import pathlib

from ..numba_cache import install

# Before any kernel module is imported: numba picks a kernel's cache locator when it is defined.
install(pathlib.Path(__file__).parent)

from .api import Plan, evaluate, plan, rebalance_experts  # noqa: E402
from .scoring import Score  # noqa: E402

__all__ = ["Plan", "Score", "evaluate", "plan", "rebalance_experts"]
