"""Reduces a load history [T, L, E] to the load a plan is fitted to (see issue 6)."""

from __future__ import annotations

import numpy as np

OBJECTIVES = ("sum",)
DEFAULT_OBJECTIVE = "sum"


def reduce_history(history: np.ndarray, objective: str, half_life: float = 0.0,
                   robust_k: float = 0.0) -> tuple[np.ndarray, str]:
    """history: [T, L, E] -> (load [L, E], the objective used)."""
    if objective == "default":
        objective = DEFAULT_OBJECTIVE
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES + ('default',)}, got {objective!r}")
    return history.sum(0), objective
