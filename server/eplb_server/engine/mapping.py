"""Conversions between the placement representations: phy2log, replica ranks, log2phy, logcnt."""

from __future__ import annotations

import numpy as np


def replica_ranks(phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """Rank of each slot among its expert's replicas, in slot order.

    phy2log: [L, P] -> [L, P] int64
    """
    num_layers, num_slots = phy2log.shape
    order = np.argsort(phy2log, axis=1, kind="stable")
    sorted_experts = np.take_along_axis(phy2log, order, 1)
    first = np.zeros_like(sorted_experts)
    starts = np.ones_like(sorted_experts, dtype=bool)
    starts[:, 1:] = sorted_experts[:, 1:] != sorted_experts[:, :-1]
    position = np.broadcast_to(np.arange(num_slots), phy2log.shape)
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    rank = np.empty_like(phy2log)
    np.put_along_axis(rank, order, position - first, 1)
    return rank


def expert_counts(phy2log: np.ndarray, num_experts: int) -> np.ndarray:
    """logcnt: [L, P] -> [L, E] int64, replicas of each expert."""
    num_layers = phy2log.shape[0]
    counts = np.zeros((num_layers, num_experts), np.int64)
    np.add.at(counts, (np.arange(num_layers)[:, None], phy2log), 1)
    return counts


def build_log2phy(phy2log: np.ndarray, rank: np.ndarray, logcnt: np.ndarray) -> np.ndarray:
    """log2phy [L, E, W] (W = max logcnt, -1 padded) from phy2log [L, P] and ranks [L, P]."""
    num_layers, num_slots = phy2log.shape
    num_experts = logcnt.shape[1]
    width = int(logcnt.max()) if logcnt.size else 1
    log2phy = np.full((num_layers, num_experts * width), -1, np.int64)
    np.put_along_axis(log2phy, phy2log * width + rank,
                      np.broadcast_to(np.arange(num_slots, dtype=np.int64), phy2log.shape), 1)
    return log2phy.reshape(num_layers, num_experts, width)
