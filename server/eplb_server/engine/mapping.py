"""Conversions between the placement representations: phy2log, replica ranks, log2phy, logcnt."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _ranks_and_counts(phy2log, num_experts):
    num_layers, num_slots = phy2log.shape
    rank = np.empty_like(phy2log)
    counts = np.zeros((num_layers, num_experts), np.int64)
    for layer in range(num_layers):
        for slot in range(num_slots):
            expert = phy2log[layer, slot]
            rank[layer, slot] = counts[layer, expert]
            counts[layer, expert] += 1
    return rank, counts


def ranks_and_counts(phy2log: np.ndarray, num_experts: int) -> tuple[np.ndarray, np.ndarray]:
    """`replica_ranks` and `expert_counts` in one pass."""
    return _ranks_and_counts(np.ascontiguousarray(phy2log, dtype=np.int64), num_experts)


def replica_ranks(phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """Rank of each slot among its expert's replicas, in slot order. phy2log: [L, P] -> [L, P]."""
    return _ranks_and_counts(np.ascontiguousarray(phy2log, dtype=np.int64), num_experts)[0]


def expert_counts(phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """phy2log: [L, P] -> logcnt [L, E] int64, replicas of each expert (entries in [0, E))."""
    return _ranks_and_counts(np.ascontiguousarray(phy2log, dtype=np.int64), num_experts)[1]


def build_log2phy(phy2log: np.ndarray, rank: np.ndarray, logcnt: np.ndarray) -> np.ndarray:
    """log2phy [L, E, W] (W = max logcnt, -1 padded) from phy2log [L, P] and ranks [L, P]."""
    width = int(logcnt.max()) if logcnt.size else 1
    return _log2phy(np.ascontiguousarray(phy2log, dtype=np.int64),
                    np.ascontiguousarray(rank, dtype=np.int64), logcnt.shape[1], width)


@numba.njit(cache=True, parallel=True)
def _log2phy(phy2log, rank, num_experts, width):
    num_layers, num_slots = phy2log.shape
    log2phy = np.empty((num_layers, num_experts, width), np.int64)
    for layer in numba.prange(num_layers):  # mostly padding to write: in parallel
        log2phy[layer] = -1
        for slot in range(num_slots):
            log2phy[layer, phy2log[layer, slot], rank[layer, slot]] = slot
    return log2phy
