"""The deepseek-ai/EPLB algorithm, reproduced exactly (float32 arithmetic, same tie order), batched."""

from __future__ import annotations

import numba
import numpy as np

from . import packing, torch_order
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
    order = torch_order.descending_orders(weight)
    return _lpt_float32(weight, order, num_packs)


def reference_group_packing(weight: np.ndarray, num_groups: int, num_nodes: int):
    """The reference's groups-to-nodes LPT. weight: [L, E] float32 -> (node [L, K], rank [L, K])."""
    group_load = weight.reshape(weight.shape[0], num_groups, -1).sum(-1, dtype=np.float32)
    return _lpt(group_load, num_nodes)


@numba.njit(cache=True, nogil=True)
def _node_major(weight, group_pack, group_rank, groups_per_node, num_nodes):
    """Experts renumbered node by node, as the reference's gathers do it.

    weight: [L, E] float32, group_pack, group_rank: [L, K] (the groups' LPT over nodes)
    -> (log2mlog [L, E], mlog2log [L, E] int64, mlog_load [L * N, E / N] float32)
    """
    num_layers, num_experts = weight.shape
    group_size = num_experts // group_pack.shape[1]
    per_node = num_experts // num_nodes
    log2mlog = np.empty((num_layers, num_experts), np.int64)
    mlog2log = np.empty((num_layers, num_experts), np.int64)
    mlog_load = np.empty((num_layers * num_nodes, per_node), np.float32)
    for layer in range(num_layers):
        for g in range(group_pack.shape[1]):
            first = (group_pack[layer, g] * groups_per_node + group_rank[layer, g]) * group_size
            for j in range(group_size):
                log2mlog[layer, g * group_size + j] = first + j
                mlog2log[layer, first + j] = g * group_size + j
        for m in range(num_experts):
            mlog_load[layer * num_nodes + m // per_node, m % per_node] = \
                weight[layer, mlog2log[layer, m]]
    return log2mlog, mlog2log, mlog_load


@numba.njit(cache=True, nogil=True)
def _replica_loads(mlog_load, phy2mlog, mlogcnt):
    """[B, n] float32, [B, S], [B, n] -> each replica's load [B, S] float32, as the reference
    divides (float32)."""
    out = np.empty(phy2mlog.shape, np.float32)
    for b in range(phy2mlog.shape[0]):
        for p in range(phy2mlog.shape[1]):
            m = phy2mlog[b, p]
            out[b, p] = mlog_load[b, m] / np.float32(mlogcnt[b, m])
    return out


@numba.njit(cache=True, nogil=True)
def _assemble(pack, rank, slots_per_gpu, phy2mlog, phyrank, mlogcnt, log2mlog, mlog2log,
              num_nodes):
    """The reference's final gathers in one pass: each node's replicas to their GPU slots, then
    back to logical expert ids. pack, rank, phy2mlog, phyrank: [L * N, S]; mlogcnt: [L * N, E/N];
    log2mlog, mlog2log: [L, E] -> (phy2log [L, N * S], phyrank [L, N * S], logcnt [L, E])"""
    rows, slots = pack.shape
    num_layers, num_experts = log2mlog.shape
    per_node = num_experts // num_nodes
    phy2log = np.empty((num_layers, num_nodes * slots), np.int64)
    out_rank = np.empty((num_layers, num_nodes * slots), np.int64)
    for b in range(rows):
        layer, node = b // num_nodes, b % num_nodes
        for p in range(slots):
            slot = node * slots + pack[b, p] * slots_per_gpu + rank[b, p]
            phy2log[layer, slot] = mlog2log[layer, node * per_node + phy2mlog[b, p]]
            out_rank[layer, slot] = phyrank[b, p]
    logcnt = np.empty((num_layers, num_experts), np.int64)
    for layer in range(num_layers):
        for e in range(num_experts):
            m = log2mlog[layer, e]
            logcnt[layer, e] = mlogcnt[layer * num_nodes + m // per_node, m % per_node]
    return phy2log, out_rank, logcnt


def reference_plan(weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int,
                   num_gpus: int):
    """deepseek-ai/EPLB's rebalance_experts, policy chosen as the reference does.

    weight: [L, E] -> (phy2log [L, P], phyrank [L, P], logcnt [L, E]) int64 numpy arrays
    """
    if num_groups % num_nodes != 0:
        num_groups, num_nodes = 1, 1
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    group_pack, group_rank = reference_group_packing(weight, num_groups, num_nodes)
    log2mlog, mlog2log, mlog_load = _node_major(weight, group_pack, group_rank,
                                                num_groups // num_nodes, num_nodes)
    phy2mlog, phyrank, mlogcnt = _replicate_float32(mlog_load, num_replicas // num_nodes)
    pack, rank = _lpt(_replica_loads(mlog_load, phy2mlog, mlogcnt), num_gpus // num_nodes)
    return _assemble(pack, rank, num_replicas // num_gpus, phy2mlog, phyrank, mlogcnt,
                     log2mlog, mlog2log, num_nodes)
