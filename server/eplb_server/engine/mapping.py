"""Conversions between the placement representations: phy2log, replica ranks, log2phy, logcnt."""

from __future__ import annotations

import numba
import numpy as np

from . import rows


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
    phy2log = np.ascontiguousarray(phy2log, dtype=np.int64)
    log2phy = np.empty((phy2log.shape[0], logcnt.shape[1], width), np.int64)
    rows.run(_log2phy_rows, phy2log.shape[0], phy2log,  # mostly padding to write: in parallel
             np.ascontiguousarray(rank, dtype=np.int64), log2phy)
    return log2phy


@numba.njit(cache=True, nogil=True)
def _log2phy_rows(phy2log, rank, log2phy, start, stop):
    """Layers [start, stop) of log2phy [L, E, W] from phy2log [L, P] and rank [L, P]."""
    for layer in range(start, stop):
        log2phy[layer] = -1
        for slot in range(phy2log.shape[1]):
            log2phy[layer, phy2log[layer, slot], rank[layer, slot]] = slot
