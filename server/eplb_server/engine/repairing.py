"""Re-pairing at two slots per GPU: the new plan's replica counts on the current mapping's pairs."""

from __future__ import annotations

import numba
import numpy as np

from . import rows
from .sorting import ascending_into, descending_order


def repair_pairs(weight, current, new, target, num_nodes):
    """Per layer, the current mapping re-paired under the new plan's counts, peak <= target.

    At two slots per GPU a greedy repair of the current mapping stalls (a lighter GPU holds two
    single-replica experts, so no one move helps), and every layer would take the new plan.
    Re-pairing keeps each GPU's pair unless it must change: replicas the new counts drop leave
    the heaviest GPUs, pairs over the target give up their heavier expert, and the loose
    replicas (added ones and those given up) go into the freed slots, heaviest beside lightest.
    When they do not fit, more slots are freed, twice as many each round, until every pair is
    formed anew.

    weight: [L, E]; current, new: [L, P] two slots per GPU; target: [L]; num_nodes: slot
    blocks (node n owns [n P/N, (n + 1) P/N)) re-paired apart, which needs every expert on
    the same node in both mappings (1 for a global plan)
    -> (phy2log [L, P], found [L] bool; rows not found are the current mapping).
    Layers in parallel where the plan's thread count allows (rows.run).
    """
    out = current.copy()
    found = np.zeros(current.shape[0], np.bool_)
    rows.run(_repair_pairs_rows, current.shape[0], weight, current, new, target, num_nodes, out,
             found)
    return out, found


@numba.njit(cache=True, nogil=True)
def _repair_pairs_rows(weight, current, new, target, num_nodes, out, found, start, stop):
    """repair_pairs' layers [start, stop), into out [L, P] (the current mapping) and found [L]."""
    num_slots = current.shape[1]
    num_experts = weight.shape[1]
    block = num_slots // num_nodes
    for layer in range(start, stop):
        node_of = np.full(num_experts, -1, np.int64)  # in the current mapping; -2: several
        for s in range(num_slots):
            e = current[layer, s]
            node_of[e] = s // block if node_of[e] in (-1, s // block) else -2
        counts = np.zeros(num_experts, np.int64)
        same_nodes = True
        for s in range(num_slots):
            counts[new[layer, s]] += 1
            same_nodes = same_nodes and node_of[new[layer, s]] == s // block
        if not same_nodes:
            continue
        piece = weight[layer] / counts
        found[layer] = True
        for n in range(num_nodes):
            node_counts = np.where(node_of == n, counts, 0)
            slots = slice(n * block, (n + 1) * block)
            found[layer] = found[layer] and _repair_pairs_layer(
                piece, current[layer, slots], node_counts, target[layer], out[layer, slots])
        if not found[layer]:
            out[layer] = current[layer]


@numba.njit(cache=True, nogil=True)
def _repair_pairs_layer(piece, row, counts, target, out):
    """piece [E]: each expert's load per replica under counts [E]; row [P]: the current
    mapping; fills out [P] and returns True when every GPU ends at or below target."""
    num_slots = row.size
    num_gpus = num_slots // 2
    free = np.zeros(num_slots, np.bool_)
    held = np.zeros(counts.size, np.int64)
    for s in range(num_slots):
        held[row[s]] += 1
    pair_load = np.empty(num_gpus)
    for g in range(num_gpus):
        pair_load[g] = piece[row[2 * g]] + piece[row[2 * g + 1]]
    loose = np.empty(num_slots, np.int64)
    num_loose = 0
    for g in descending_order(pair_load):  # replicas the counts drop leave the heaviest GPUs
        for s in (2 * g, 2 * g + 1):
            if held[row[s]] > counts[row[s]]:
                held[row[s]] -= 1
                free[s] = True
    for e in range(counts.size):
        for _ in range(counts[e] - held[e]):
            loose[num_loose] = e
            num_loose += 1
    for g in range(num_gpus):  # full pairs over the target give up their heavier expert
        if not free[2 * g] and not free[2 * g + 1] and pair_load[g] > target:
            s = _heavier_slot(piece, row, g)
            free[s] = True
            loose[num_loose] = row[s]
            num_loose += 1
    # When the loose replicas do not fit, more slots are freed, twice as many each round: first
    # the heavier slot of the lightest full GPUs (room beside a light replica), then any slot,
    # heaviest replica first (so that at the end every pair is formed anew).
    to_free = np.empty(num_gpus + num_slots, np.int64)
    ascending_into(to_free[:num_gpus], pair_load)
    for i in range(num_gpus):
        to_free[i] = _heavier_slot(piece, row, to_free[i])
    to_free[num_gpus:] = descending_order(piece[row])
    next_free, batch = 0, 1
    while True:
        if _place_loose(piece, row, free, loose[:num_loose], target, out):
            return True
        freed = 0
        while freed < batch and next_free < to_free.size:
            s = to_free[next_free]
            next_free += 1
            if free[s] or (next_free <= num_gpus and free[s ^ 1]):  # first full GPUs only
                continue
            free[s] = True
            loose[num_loose] = row[s]
            num_loose += 1
            freed += 1
        if freed == 0:
            out[:] = row
            return False
        batch *= 2


@numba.njit(cache=True, nogil=True, _nrt=False)
def _heavier_slot(piece, row, gpu):
    a, b = 2 * gpu, 2 * gpu + 1
    return a if piece[row[a]] >= piece[row[b]] else b


@numba.njit(cache=True, nogil=True)
def _place_loose(piece, row, free, loose, target, out):
    """Places the loose experts, heaviest first, each into a free slot whose GPU stays at or
    below target and does not hold it yet: its own former slot if one fits, else the slot
    that leaves the most room (an empty GPU, else beside the lightest replica: heaviest with
    lightest, as the pairing of a new plan). Writes out [P] (row with the placements) and
    returns whether all fitted.

    Free slots beside a kept replica are ordered by its piece, with a union-find skipping the
    ones taken; a slot whose partner is filled joins a second list, in placing order, whose
    pieces never increase.
    """
    num_slots = row.size
    out[:] = row
    open_slot = free.copy()
    kept_beside = np.empty(num_slots, np.int64)  # free slots beside a kept replica, by its piece
    num_kept = 0
    for s in range(num_slots):
        if free[s] and not free[s ^ 1]:
            kept_beside[num_kept] = s
            num_kept += 1
    kept_beside = kept_beside[:num_kept]
    by_piece = np.empty(num_kept, np.int64)
    ascending_into(by_piece, piece[row[kept_beside ^ 1]])
    kept_beside = kept_beside[by_piece]
    kept_piece = piece[row[kept_beside ^ 1]]
    kept_at = np.full(num_slots, -1, np.int64)
    kept_at[kept_beside] = np.arange(num_kept)
    right = np.arange(num_kept + 1)  # union-find: taken entries point higher
    placed_beside = np.empty(num_slots, np.int64)  # slots beside a placed replica ...
    placed_piece = np.empty(num_slots)  # ... and its piece, never increasing
    placed_at = np.full(num_slots, -1, np.int64)
    left = np.arange(num_slots + 1)  # union-find: entry j is at j + 1, taken ones point lower
    num_placed = 0
    empty_gpu = 0  # the lowest GPU with both slots free, once checked
    home = np.full(piece.size, -1, np.int64)  # each expert's free former slots, ascending
    next_home = np.full(num_slots, -1, np.int64)
    for s in range(num_slots - 1, -1, -1):
        if free[s]:
            next_home[s], home[row[s]] = home[row[s]], s
    for i in descending_order(piece[loose]):
        expert = loose[i]
        p = piece[expert]
        best, best_total = -1, np.inf
        s = home[expert]
        while s >= 0:
            if open_slot[s]:
                total = p if open_slot[s ^ 1] else piece[out[s ^ 1]] + p
                if total <= target and total < best_total and \
                        (open_slot[s ^ 1] or out[s ^ 1] != expert):
                    best, best_total = s, total
            s = next_home[s]
        if best < 0:
            k = _find(right, 0)
            while k < num_kept and row[kept_beside[k] ^ 1] == expert:
                k = _find(right, k + 1)
            if k < num_kept and kept_piece[k] + p <= target:
                best, best_total = kept_beside[k], kept_piece[k] + p
            j = _find(left, num_placed)
            while j > 0 and out[placed_beside[j - 1] ^ 1] == expert:
                j = _find(left, j - 1)
            if j > 0 and placed_piece[j - 1] + p <= target and (
                    placed_piece[j - 1] + p < best_total or (
                    placed_piece[j - 1] + p == best_total and placed_beside[j - 1] < best)):
                best, best_total = placed_beside[j - 1], placed_piece[j - 1] + p
            if p <= target and (best < 0 or p < best_total):
                while empty_gpu < num_slots // 2 and not (
                        open_slot[2 * empty_gpu] and open_slot[2 * empty_gpu + 1]):
                    empty_gpu += 1
                if empty_gpu < num_slots // 2:
                    best = 2 * empty_gpu
        if best < 0:
            return False
        out[best] = expert
        open_slot[best] = False
        if kept_at[best] >= 0:
            right[kept_at[best]] = kept_at[best] + 1
        elif placed_at[best] >= 0:
            left[placed_at[best] + 1] = placed_at[best]
        if open_slot[best ^ 1]:
            placed_beside[num_placed], placed_piece[num_placed] = best ^ 1, p
            placed_at[best ^ 1] = num_placed
            num_placed += 1
    return True


@numba.njit(cache=True, nogil=True, _nrt=False)
def _find(parent, i):
    """The root of i in a union-find array, halving the path."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i
