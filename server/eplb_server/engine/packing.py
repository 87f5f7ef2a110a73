"""Compiled kernels of the refined engine: replication, LPT packing, swap refinement, count search.

Each kernel solves one independent problem (a layer, or a layer's node); `solve_batch` runs a
batch of them in parallel. Pure functions of their array arguments.
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def adams_counts(weight, num_slots):
    """Replica counts attaining R* = min over counts of max w/c (greedy apportionment).

    weight: [E] float64 -> counts [E] int64 summing to num_slots; ties go to the lower index.
    """
    num_experts = weight.size
    counts = np.ones(num_experts, np.int64)
    # Binary max-heap of experts keyed by (w/c, -index).
    heap = np.arange(num_experts)
    value = weight.copy()

    def above(a, b):
        return value[a] > value[b] or (value[a] == value[b] and a < b)

    for start in range(num_experts // 2 - 1, -1, -1):
        i = start
        while True:
            child = 2 * i + 1
            if child >= num_experts:
                break
            if child + 1 < num_experts and above(heap[child + 1], heap[child]):
                child += 1
            if above(heap[child], heap[i]):
                heap[i], heap[child] = heap[child], heap[i]
                i = child
            else:
                break
    for _ in range(num_slots - num_experts):
        top = heap[0]
        counts[top] += 1
        value[top] = weight[top] / counts[top]
        i = 0
        while True:
            child = 2 * i + 1
            if child >= num_experts:
                break
            if child + 1 < num_experts and above(heap[child + 1], heap[child]):
                child += 1
            if above(heap[child], heap[i]):
                heap[i], heap[child] = heap[child], heap[i]
                i = child
            else:
                break
    return counts


@numba.njit(cache=True, nogil=True)
def _pair_peak(order, piece, counts, num_pairs):
    """Peak of largest-with-smallest pairing. order: experts by piece size, largest first."""
    front, back = 0, order.size - 1
    front_left, back_left = counts[order[front]], counts[order[back]]
    peak = 0.0
    done = 0
    while done < num_pairs:
        while front_left == 0:
            front += 1
            front_left = counts[order[front]]
        while back_left == 0:
            back -= 1
            back_left = counts[order[back]]
        if front == back:
            take = min(front_left // 2, num_pairs - done)
            take = max(take, 1)
        else:
            take = min(front_left, back_left, num_pairs - done)
        peak = max(peak, piece[order[front]] + piece[order[back]])
        front_left -= take
        back_left -= take
        if front == back:
            front_left -= take
        done += take
    return peak


@numba.njit(cache=True, nogil=True)
def _sorted_by_piece(piece):
    return np.argsort(-piece, kind="mergesort")


@numba.njit(cache=True, nogil=True)
def _move_replica(weight, counts, piece, donor, receiver):
    counts[donor] -= 1
    counts[receiver] += 1
    piece[donor] = weight[donor] / counts[donor]
    piece[receiver] = weight[receiver] / counts[receiver]


@numba.njit(cache=True, nogil=True)
def _best_replica_move(weight, counts, piece, num_pairs, width):
    """The replica move (donor -> receiver) whose pairing has the lowest peak.

    Receivers: the `width` experts with the largest pieces; donors: the 2 * `width` experts
    whose pieces grow least when they give up a replica. Returns (peak, donor, receiver).
    """
    order = _sorted_by_piece(piece)
    donor_cost = np.full(weight.size, np.inf)
    for e in range(weight.size):
        if counts[e] > 1:
            donor_cost[e] = weight[e] / (counts[e] - 1)
    donors = np.argsort(donor_cost, kind="mergesort")[:2 * width]
    best_peak, best_donor, best_receiver = np.inf, -1, -1
    for r in order[:width]:
        for d in donors:
            if d == r or counts[d] <= 1:
                continue
            _move_replica(weight, counts, piece, d, r)
            trial = _pair_peak(_sorted_by_piece(piece), piece, counts, num_pairs)
            _move_replica(weight, counts, piece, r, d)
            if trial < best_peak:
                best_peak, best_donor, best_receiver = trial, d, r
    return best_peak, best_donor, best_receiver


@numba.njit(cache=True, nogil=True)
def count_search_pairs(weight, counts, max_steps):
    """Moves replicas between experts while that lowers the peak of a 2-slots-per-GPU packing
    (largest piece with smallest is the optimal pairing for given counts). When no single move
    helps, problems of at most 64 experts try two moves in a row (the first may raise the peak).

    weight: [E] float64, counts: [E] int64 (updated in place) -> peak load
    """
    num_pairs = counts.sum() // 2
    piece = weight / counts
    peak = _pair_peak(_sorted_by_piece(piece), piece, counts, num_pairs)
    width = 4
    for _ in range(max_steps):
        trial, donor, receiver = _best_replica_move(weight, counts, piece, num_pairs, width)
        if donor >= 0 and trial < peak * (1.0 - 1e-12):
            _move_replica(weight, counts, piece, donor, receiver)
            peak = trial
            continue
        if weight.size > 64:  # two-move lookahead costs O(E^2 log E): small problems only
            break
        best, first, second = peak * (1.0 - 1e-12), (-1, -1), (-1, -1)
        order = _sorted_by_piece(piece)
        for r in order[:width]:
            for d in range(weight.size):
                if d == r or counts[d] <= 1:
                    continue
                _move_replica(weight, counts, piece, d, r)
                trial, d2, r2 = _best_replica_move(weight, counts, piece, num_pairs, width)
                _move_replica(weight, counts, piece, r, d)
                if d2 >= 0 and trial < best:
                    best, first, second = trial, (d, r), (d2, r2)
        if first[0] < 0:
            break
        _move_replica(weight, counts, piece, first[0], first[1])
        _move_replica(weight, counts, piece, second[0], second[1])
        peak = best
    return peak


@numba.njit(cache=True, nogil=True)
def _crowded(pack_items, pack, item_expert, expert_limit, expert, skip):
    """Whether the pack (ignoring slot `skip`) already holds as many replicas of `expert` as
    its fair share allows (1 unless the expert has more replicas than there are packs)."""
    held = 0
    for j in range(pack_items.shape[1]):
        if j != skip and item_expert[pack_items[pack, j]] == expert:
            held += 1
    return held >= expert_limit[expert]


@numba.njit(cache=True, nogil=True)
def _sift_down(heap, size, key, i):
    while True:
        child = 2 * i + 1
        if child >= size:
            return
        if child + 1 < size and (key[heap[child + 1]], heap[child + 1]) < (key[heap[child]],
                                                                           heap[child]):
            child += 1
        if (key[heap[child]], heap[child]) < (key[heap[i]], heap[i]):
            heap[i], heap[child] = heap[child], heap[i]
            i = child
        else:
            return


@numba.njit(cache=True, nogil=True)
def _sift_up(heap, key, i):
    while i > 0:
        parent = (i - 1) // 2
        if (key[heap[i]], heap[i]) < (key[heap[parent]], heap[parent]):
            heap[i], heap[parent] = heap[parent], heap[i]
            i = parent
        else:
            return


@numba.njit(cache=True, nogil=True)
def lpt(item_weight, item_expert, expert_limit, num_packs):
    """Heaviest item to the lightest pack with room, avoiding packs that hold the same expert.

    Items must be sorted heaviest first with each expert's replicas adjacent (as `_items_of`
    makes them), so a pack holds the current expert iff it was the last one placed there.
    item_weight, item_expert: [n]; expert_limit: [E] replicas of an expert one pack may hold
    -> (pack_items [m, n/m] item ids, loads [m])
    """
    n = item_weight.size
    cap = n // num_packs
    pack_items = np.empty((num_packs, cap), np.int64)
    loads = np.zeros(num_packs)
    filled = np.zeros(num_packs, np.int64)
    last_expert = np.full(num_packs, -1, np.int64)
    heap = np.arange(num_packs)
    size = num_packs
    skipped = np.empty(num_packs, np.int64)
    for item in range(n):
        expert = item_expert[item]
        # Set aside the lightest packs that already hold this expert, while others remain.
        num_skipped = 0
        while last_expert[heap[0]] == expert and expert_limit[expert] == 1 and size > 1:
            skipped[num_skipped] = heap[0]
            num_skipped += 1
            heap[0] = heap[size - 1]
            size -= 1
            _sift_down(heap, size, loads, 0)
        pack = heap[0]
        pack_items[pack, filled[pack]] = item
        filled[pack] += 1
        loads[pack] += item_weight[item]
        last_expert[pack] = expert
        if filled[pack] == cap:
            heap[0] = heap[size - 1]
            size -= 1
        _sift_down(heap, size, loads, 0)
        for k in range(num_skipped):
            heap[size] = skipped[k]
            size += 1
            _sift_up(heap, loads, size - 1)
    return pack_items, loads


@numba.njit(cache=True, nogil=True)
def _best_single_swap(item_weight, item_expert, expert_limit, pack_items, loads, by_load, heavy,
                      enough):
    """Best 1-for-1 swap between the heaviest pack and any other, lightest packs first.

    Stops early once a swap brings both touched packs down to `enough` (no lower peak is
    reachable by this move). Returns (objective, other pack, slot in heavy, slot in other).
    """
    num_packs, cap = pack_items.shape
    top = loads[heavy]
    best = top - 1e-12 * abs(top)
    other, a_best, b_best = -1, -1, -1
    for k in range(num_packs):
        o = by_load[k]
        if o == heavy:
            continue
        low = loads[o]
        if 0.5 * (top + low) >= best:
            break
        gap = top - low
        for a in range(cap):
            wa = item_weight[pack_items[heavy, a]]
            for b in range(cap):
                delta = wa - item_weight[pack_items[o, b]]
                if delta <= 0.0 or delta >= gap:
                    continue
                objective = max(top - delta, low + delta)
                if objective < best and not _crowded(
                        pack_items, o, item_expert, expert_limit,
                        item_expert[pack_items[heavy, a]], b) and not _crowded(
                        pack_items, heavy, item_expert, expert_limit,
                        item_expert[pack_items[o, b]], a):
                    best, other, a_best, b_best = objective, o, a, b
        if best <= enough:
            break
    return best, other, a_best, b_best


@numba.njit(cache=True, nogil=True)
def _best_pair_swap(item_weight, item_expert, expert_limit, pack_items, loads, heavy, light):
    """Best 2-for-2 swap between the heaviest and the lightest pack: (objective, slots x4)."""
    cap = pack_items.shape[1]
    top, low = loads[heavy], loads[light]
    best = top - 1e-12 * abs(top)
    gap = top - low
    found = (-1, -1, -1, -1)
    for x in range(cap):
        for y in range(x + 1, cap):
            pair_heavy = item_weight[pack_items[heavy, x]] + item_weight[pack_items[heavy, y]]
            for u in range(cap):
                for v in range(u + 1, cap):
                    delta = pair_heavy - (item_weight[pack_items[light, u]]
                                          + item_weight[pack_items[light, v]])
                    if delta <= 0.0 or delta >= gap:
                        continue
                    objective = max(top - delta, low + delta)
                    if objective < best and _pair_swap_ok(
                            pack_items, item_expert, expert_limit, heavy, x, y, light, u, v):
                        best, found = objective, (x, y, u, v)
    return best, found


@numba.njit(cache=True, nogil=True)
def refine(item_weight, item_expert, expert_limit, pack_items, loads, max_moves):
    """Local search on the heaviest pack: 1-for-1 swaps with any pack, else 2-for-2 with the
    lightest, until no move lowers the peak. pack_items [m, c] and loads [m] change in place.

    The floor max(second-heaviest load, mean load) ends a scan early: a swap that brings the
    heaviest pack below it cannot lower this step's peak further. Returns the moves made.
    """
    num_packs, cap = pack_items.shape
    mean = loads.sum() / num_packs
    for move in range(max_moves):
        by_load = np.argsort(loads)
        heavy = by_load[num_packs - 1]
        enough = max(loads[by_load[num_packs - 2]], mean)
        best, other, a, b = _best_single_swap(
            item_weight, item_expert, expert_limit, pack_items, loads, by_load, heavy, enough)
        if other >= 0:
            moved = item_weight[pack_items[heavy, a]] - item_weight[pack_items[other, b]]
            pack_items[heavy, a], pack_items[other, b] = pack_items[other, b], pack_items[heavy, a]
        else:
            light = by_load[0]
            if cap < 2 or light == heavy:
                return move
            best, (x, y, u, v) = _best_pair_swap(
                item_weight, item_expert, expert_limit, pack_items, loads, heavy, light)
            if x < 0:
                return move
            other = light
            moved = (item_weight[pack_items[heavy, x]] + item_weight[pack_items[heavy, y]]
                     - item_weight[pack_items[light, u]] - item_weight[pack_items[light, v]])
            pack_items[heavy, x], pack_items[light, u] = pack_items[light, u], pack_items[heavy, x]
            pack_items[heavy, y], pack_items[light, v] = pack_items[light, v], pack_items[heavy, y]
        loads[heavy] -= moved
        loads[other] += moved
    return max_moves


@numba.njit(cache=True, nogil=True)
def _pair_swap_ok(pack_items, item_expert, expert_limit, heavy, x, y, light, u, v):
    """Whether swapping slots (x, y) of `heavy` with (u, v) of `light` keeps shares fair."""
    for pack, p, q, incoming in ((light, u, v, (x, y)), (heavy, x, y, (u, v))):
        source = heavy if pack == light else light
        for slot in incoming:
            expert = item_expert[pack_items[source, slot]]
            held = 0
            for j in range(pack_items.shape[1]):
                if j != p and j != q and item_expert[pack_items[pack, j]] == expert:
                    held += 1
            for other in incoming:
                if item_expert[pack_items[source, other]] == expert:
                    held += 1
            if held > expert_limit[expert]:
                return False
    return True


@numba.njit(cache=True, nogil=True)
def _separate_pairs(item_weight, item_expert, pack_items):
    """Splits pairs that hold one expert twice by swaps that do not raise the peak."""
    num_packs = pack_items.shape[0]
    loads = item_weight[pack_items[:, 0]] + item_weight[pack_items[:, 1]]
    peak = loads.max()
    for p in range(num_packs):
        if item_expert[pack_items[p, 0]] != item_expert[pack_items[p, 1]]:
            continue
        keep, spare = item_weight[pack_items[p, 0]], pack_items[p, 1]
        for q in range(num_packs):
            done = False
            for j in range(2):
                y = pack_items[q, j]
                mate = pack_items[q, 1 - j]
                if (item_expert[y] == item_expert[spare] or item_expert[mate] == item_expert[spare]
                        or keep + item_weight[y] > peak
                        or loads[q] - item_weight[y] + item_weight[spare] > peak):
                    continue
                pack_items[p, 1], pack_items[q, j] = y, spare
                loads[p] = keep + item_weight[y]
                loads[q] += item_weight[spare] - item_weight[y]
                done = True
                break
            if done:
                break


@numba.njit(cache=True, nogil=True)
def _items_of(weight, counts):
    """Replicas as items, heaviest first, each expert's replicas adjacent."""
    n = counts.sum()
    item_weight = np.empty(n)
    item_expert = np.empty(n, np.int64)
    k = 0
    for e in np.argsort(-(weight / counts)):
        for _ in range(counts[e]):
            item_weight[k] = weight[e] / counts[e]
            item_expert[k] = e
            k += 1
    return item_weight, item_expert


@numba.njit(cache=True, nogil=True)
def solve_one(weight, num_slots, num_packs, max_moves, count_steps):
    """Replicates and packs one problem. weight: [E] -> slot_expert [num_slots] int64.

    Slot s sits in pack s // (num_slots / num_packs); within a pack, slots go by expert id.
    """
    cap = num_slots // num_packs
    counts = adams_counts(weight, num_slots)
    if cap == 2 and count_steps > 0:
        count_search_pairs(weight, counts, count_steps)
    item_weight, item_expert = _items_of(weight, counts)
    if cap == 2:
        pack_items = np.empty((num_packs, 2), np.int64)
        for p in range(num_packs):
            pack_items[p, 0] = p
            pack_items[p, 1] = num_slots - 1 - p
        _separate_pairs(item_weight, item_expert, pack_items)
    else:
        expert_limit = (counts + num_packs - 1) // num_packs
        pack_items, loads = lpt(item_weight, item_expert, expert_limit, num_packs)
        if cap > 1:
            refine(item_weight, item_expert, expert_limit, pack_items, loads, max_moves)
    slot_expert = np.empty(num_slots, np.int64)
    for p in range(num_packs):
        experts = np.sort(item_expert[pack_items[p]])
        for j in range(cap):
            slot_expert[p * cap + j] = experts[j]
    return slot_expert


@numba.njit(cache=True, parallel=True)
def solve_batch(weight, num_slots, num_packs, max_moves, count_steps):
    """Independent problems in parallel. weight: [B, E] float64 -> slot_expert [B, num_slots]."""
    out = np.empty((weight.shape[0], num_slots), np.int64)
    for b in numba.prange(weight.shape[0]):
        out[b] = solve_one(weight[b], num_slots, num_packs, max_moves, count_steps)
    return out
