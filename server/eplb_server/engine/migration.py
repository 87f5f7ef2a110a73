"""Keeps what can stay of the current placement when re-planning (see issue 5)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MigrationOptions:
    """Movement limits; zero means unlimited."""

    max_moved_slots_per_layer: int = 0
    max_moved_slots_total: int = 0
    min_balancedness_gain: float = 0.0


def keep_current(new_phy2log: np.ndarray, current_phy2log: np.ndarray, load: np.ndarray,
                 num_nodes: int, num_gpus: int, options: MigrationOptions) -> np.ndarray:
    """new_phy2log, current_phy2log: [L, P], load: [L, E] -> the phy2log [L, P] to serve."""
    return new_phy2log
