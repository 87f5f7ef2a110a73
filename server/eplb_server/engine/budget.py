"""A caller's time budget for refinement: planners refine layers in chunks while it lasts."""

from __future__ import annotations

import math
import time

import numpy as np


class Budget:
    """time_budget_ms > 0: a deadline that many ms after `start` (default: now); 0: none.

    Planners ask `layers_to_refine` before each chunk of layers; the layers left when the
    deadline has passed get the unrefined start (the reference's packing or better) and
    `finished` turns False. With no deadline every layer is refined and `finished` stays True.
    """

    def __init__(self, time_budget_ms: float = 0.0, start: float | None = None):
        if not math.isfinite(time_budget_ms) or time_budget_ms < 0:
            raise ValueError(f"time_budget_ms must be finite and >= 0, got {time_budget_ms}")
        begin = time.perf_counter() if start is None else start
        self.deadline = begin + time_budget_ms / 1e3 if time_budget_ms > 0 else None
        self.finished = True

    def layers_to_refine(self, remaining: int, seconds_per_layer: float | None) -> int:
        """How many of `remaining` layers the next chunk refines: all without a deadline, 0 once
        it has passed, else those the time left allows at seconds_per_layer (measured on
        earlier chunks; None: one layer, to measure)."""
        if self.deadline is None:
            return remaining
        left = self.deadline - time.perf_counter()
        if left <= 0:
            return 0
        if seconds_per_layer is None or seconds_per_layer <= 0:
            return 1
        return max(1, min(remaining, int(left / seconds_per_layer)))


def refine_in_chunks(plan_layers, num_layers: int, budget: Budget | None):
    """Calls plan_layers(start, stop, refine) over [0, num_layers) in chunks that `budget`
    allows, the layers left after its deadline with refine=False; collects the rows.

    plan_layers(start, stop, refine: bool) -> [stop - start, P] -> [num_layers, P]
    """
    if budget is None or budget.deadline is None:
        return plan_layers(0, num_layers, True)
    rows, start, per_layer = [], 0, None
    while start < num_layers:
        count = budget.layers_to_refine(num_layers - start, per_layer)
        if count == 0:
            rows.append(plan_layers(start, num_layers, False))
            budget.finished = False
            break
        began = time.perf_counter()
        rows.append(plan_layers(start, start + count, True))
        spent = (time.perf_counter() - began) / count
        per_layer = spent if per_layer is None else max(spent, 0.5 * per_layer)
        start += count
    return rows[0] if len(rows) == 1 else np.concatenate(rows)
