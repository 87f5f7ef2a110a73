"""The deepseek-ai/EPLB algorithm, reproduced exactly (float32 arithmetic, same tie order), batched."""

from __future__ import annotations

import numba
import numpy as np
import torch

from . import packing
from .sorting import descending_order


@numba.njit(cache=True, nogil=True)
def _lpt_float32(weight, order, num_packs):
    """Greedy LPT with cardinality in float32, lowest pack index among equals.

    weight: [B, n] float32, order: [B, n] items heaviest first
    -> (pack_index [B, n], rank_in_pack [B, n]) int64

    The lightest pack with room comes from a tournament tree (`packing.lpt`'s): O(n log m)
    per row where the reference scans every pack for every item (issue 23: 61x512 -> 640 slots
    on 320 GPUs spent most of the reference mode's time there).
    """
    num_rows, n = weight.shape
    cap = n // num_packs
    pack_index = np.empty((num_rows, n), np.int64)
    rank_in_pack = np.empty((num_rows, n), np.int64)
    loads = np.empty(num_packs, np.float32)
    load_bits = loads.view(np.uint32)
    counts = np.empty(num_packs, np.int64)
    for r in range(num_rows):
        if cap == 1:
            for i in range(n):
                pack_index[r, i] = i
                rank_in_pack[r, i] = 0
            continue
        loads[:] = 0.0
        counts[:] = 0
        tree, leaves = packing.pack_tree(num_packs)
        for item in order[r]:
            best = np.int64(tree[1] & np.uint64(0xFFFFFFFF))
            pack_index[r, item] = best
            rank_in_pack[r, item] = counts[best]
            loads[best] += weight[r, item]
            counts[best] += 1
            key = packing.FULL if counts[best] == cap else packing.pack_key(load_bits, best)
            packing.set_key(tree, leaves, best, key)
    return pack_index, rank_in_pack


@numba.njit(cache=True, nogil=True)
def _replicate_float32(weight, num_phy):
    """Adds replicas one at a time to the expert with the largest float32 load per replica
    (lowest index among equals), in the reference's order.

    weight: [B, E] float32 -> (phy2log [B, P], rank [B, P], logcnt [B, E]) int64

    A heap over the P - E heaviest experts (only they can gain a replica: see
    `packing.ordered_adams_counts`) instead of the reference's scan of every expert per slot.
    """
    num_rows, num_log = weight.shape
    phy2log = np.empty((num_rows, num_phy), np.int64)
    rank = np.zeros((num_rows, num_phy), np.int64)
    logcnt = np.ones((num_rows, num_log), np.int64)
    size = min(num_phy - num_log, num_log)
    for r in range(num_rows):
        for i in range(num_log):
            phy2log[r, i] = i
        if size <= 0:
            continue
        row = weight[r]
        expert = descending_order(row)[:size].copy()
        key = np.empty(size, np.float32)
        for k in range(size):
            key[k] = row[expert[k]]
        heap = np.arange(size)
        for k in range(size // 2 - 1, -1, -1):
            packing.sift_down(heap, size, key, expert, k)
        for i in range(num_log, num_phy):
            top = heap[0]
            best = expert[top]
            phy2log[r, i] = best
            rank[r, i] = logcnt[r, best]
            logcnt[r, best] += 1
            key[top] = row[best] / np.float32(logcnt[r, best])
            packing.sift_down(heap, size, key, expert, 0)
    return phy2log, rank, logcnt


def _lpt(weight: np.ndarray, num_packs: int):
    # torch's (unstable) sort decides the order of equal replicas, as in the reference.
    order = torch.from_numpy(weight).sort(-1, descending=True).indices.numpy()
    return _lpt_float32(weight, order, num_packs)


def _inverse(perm: np.ndarray) -> np.ndarray:
    inv = np.empty_like(perm)
    np.put_along_axis(inv, perm, np.broadcast_to(np.arange(perm.shape[1]), perm.shape), axis=1)
    return inv


def reference_group_packing(weight: np.ndarray, num_groups: int, num_nodes: int):
    """The reference's groups-to-nodes LPT. weight: [L, E] float32 -> (node [L, K], rank [L, K])."""
    group_load = weight.reshape(weight.shape[0], num_groups, -1).sum(-1, dtype=np.float32)
    return _lpt(group_load, num_nodes)


def reference_plan(weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int,
                   num_gpus: int):
    """deepseek-ai/EPLB's rebalance_experts, policy chosen as the reference does.

    weight: [L, E] -> (phy2log [L, P], phyrank [L, P], logcnt [L, E]) int64 numpy arrays
    """
    if num_groups % num_nodes != 0:
        num_groups, num_nodes = 1, 1
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    num_layers, num_experts = weight.shape
    group_size = num_experts // num_groups
    groups_per_node = num_groups // num_nodes
    experts_per_node = num_experts // num_nodes
    slots_per_gpu = num_replicas // num_gpus

    group_pack, group_rank = reference_group_packing(weight, num_groups, num_nodes)
    log2mlog = ((group_pack * groups_per_node + group_rank) * group_size)[:, :, None] \
        + np.arange(group_size)
    log2mlog = log2mlog.reshape(num_layers, num_experts)
    mlog2log = _inverse(log2mlog)

    mlog_load = np.take_along_axis(weight, mlog2log, 1).reshape(-1, experts_per_node)
    phy2mlog, phyrank, mlogcnt = _replicate_float32(mlog_load, num_replicas // num_nodes)

    phy_load = np.take_along_axis(mlog_load / mlogcnt.astype(np.float32), phy2mlog, 1)
    pack, rank = _lpt(np.ascontiguousarray(phy_load), num_gpus // num_nodes)
    pphy2phy = _inverse(pack * slots_per_gpu + rank)

    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, 1).reshape(num_layers, num_nodes, -1)
    pphy2mlog = (pphy2mlog + (np.arange(num_nodes) * experts_per_node)[:, None])
    pphy2log = np.take_along_axis(mlog2log, pphy2mlog.reshape(num_layers, -1), 1)
    pphyrank = np.take_along_axis(phyrank, pphy2phy, 1).reshape(num_layers, -1)
    logcnt = np.take_along_axis(mlogcnt.reshape(num_layers, -1), log2mlog, 1)
    return pphy2log, pphyrank, logcnt
