"""Compiled kernels of the refined engine: replication, LPT packing, swap refinement.

Each kernel solves one independent problem (a layer, or a layer's node; `refined` runs them in
parallel). Replication and the LPT start make the reference's decisions (in float32, lowest
index among equals), and every later step only lowers the peak (other replica counts too:
at two slots per pack those that `pairing` searches, at more `capped_counts` and
`_count_moves`), so a refined plan is never worse than the reference's for the same problem.
Pure functions of their arrays.
"""

from __future__ import annotations

import numba
import numpy as np

from .pairing import COUNT_SEARCH_WIDTH, THRESHOLD_STEPS, count_search_pairs, threshold_counts
from .sorting import ascending_into, descending_into, descending_order, resort


# Refinement stops within this fraction of the lower bound (mean pack load, largest piece):
# measured on the real snapshots at EP32 (mean gap; time per layer against 3e-4): 1e-4 0.012%
# (twice the refinement time), 3e-4 0.028%, 5e-4 0.045% (0.83x), 1e-3 0.073% (0.74x).
REFINE_TOLERANCE = 5e-4
PAIR_SWAP_ALL_MAX_CAP = 5  # most slots per pack at which 2-for-2 swaps try every pack
# ... and at which refinement stops within this fraction instead: there most of the time goes
# to the last 2-for-2 searches (issue 23, real snapshots at 4 per GPU, side by side: 5e-4 0.067%
# mean gap, 7e-4 0.074% in 0.87x the time, 8e-4 0.080% in 0.80x, 1e-3 0.096% in 0.70x; worst
# 0.100% throughout; synthetic: 0.091% -> 0.092% mean, 0.145% worst either way).
FEW_SLOTS_REFINE_TOLERANCE = 8e-4
# ... and at which a refined packing still this far above its bound gets `balance_pairs` and more
# refinement (measured, issue 23, real snapshots at 4 per GPU: mean gap 0.060% -> 0.068%, worst
# 0.148% either way, in 0.75x the time of balancing every packing above the target).
BALANCE_PAIRS_GAP = 1e-3
# Above this many slots per pack, 2-for-2 swaps (O(c^2) pair sums per move) and the spreading
# pass (O(m c^2)) are skipped: they would dominate, and such packs hold many experts anyway.
SMALL_PACK_MAX_CAP = 32
# Replica counts are searched with the packing (`_count_moves`) while the peak stays this far
# above its bound, within this many slots of extra packings per problem, for this many experts
# of the heaviest pack (measured: 2 gave the quality of all at half the time).
COUNT_MOVE_GAP = 0.01
COUNT_MOVE_SLOTS = 1024
COUNT_MOVE_TAKERS = 2


@numba.njit(cache=True, nogil=True, _nrt=False)
def _before(key, ids, a, b):
    """Heap order: larger key first, then lower id."""
    return key[a] > key[b] or (key[a] == key[b] and ids[a] < ids[b])


@numba.njit(cache=True, nogil=True, _nrt=False)
def sift_down(heap, size, key, ids, i):
    """Restores the heap order (`_before`) of heap[:size] below position i."""
    while True:
        child = 2 * i + 1
        if child >= size:
            return
        if child + 1 < size and _before(key, ids, heap[child + 1], heap[child]):
            child += 1
        if not _before(key, ids, heap[child], heap[i]):
            return
        heap[i], heap[child] = heap[child], heap[i]
        i = child


@numba.njit(cache=True, nogil=True)
def adams_counts(weight, num_slots):
    """Replica counts attaining R* = min over counts of max w/c: each extra replica goes to the
    expert with the largest load per replica, the lower index among equals.

    weight: [E] (float32 reproduces the reference's choices) -> counts [E] int64
    """
    return ordered_adams_counts(weight, descending_order(weight), num_slots)


@numba.njit(cache=True, nogil=True)
def ordered_adams_counts(weight, by_weight, num_slots):
    """`adams_counts` given by_weight [E], the experts by weight, largest first, lower index
    first among equals. Only the S = num_slots - E heaviest can gain a replica: until S have
    been given, one of them still has its whole weight as its piece and goes first."""
    num_experts = weight.size
    counts = np.ones(num_experts, np.int64)
    size = min(num_slots - num_experts, num_experts)
    expert = by_weight[:size]
    key = weight[expert]
    divisor = np.ones(size, weight.dtype)
    heap = np.arange(size)  # positions in `expert`; `key` and ids order them as `_before`
    for i in range(size // 2 - 1, -1, -1):
        sift_down(heap, size, key, expert, i)
    for _ in range(num_slots - num_experts):
        top = heap[0]
        counts[expert[top]] += 1
        divisor[top] += 1
        key[top] = weight[expert[top]] / divisor[top]
        sift_down(heap, size, key, expert, 0)
    return counts


@numba.njit(cache=True, nogil=True)
def _items_of(weight, weight32, counts, by_weight):
    """Replicas as items, heaviest piece (in float32) first, lower expert first among equals,
    each expert's replicas adjacent. by_weight [E]: experts by weight32, as `descending_order`.

    Experts with one replica keep their order; the replicated ones are sorted apart and merged.
    -> (item weight [n] float64, item weight [n] float32, item expert [n] int64)
    """
    num_experts = weight.size
    num_replicated, n = 0, 0
    for e in range(num_experts):
        num_replicated += counts[e] > 1
        n += counts[e]
    replicated = np.empty(num_replicated, np.int64)  # ascending ids, then by piece
    piece32 = np.empty(num_replicated, np.float32)
    j = 0
    for e in range(num_experts):
        if counts[e] > 1:
            replicated[j], piece32[j] = e, weight32[e] / np.float32(counts[e])
            j += 1
    by_piece = descending_order(piece32)
    item_weight = np.empty(n)
    item_weight32 = np.empty(n, np.float32)
    item_expert = np.empty(n, np.int64)
    k, i, j = 0, 0, 0
    while k < n:
        while i < num_experts and counts[by_weight[i]] > 1:
            i += 1
        r = by_piece[j] if j < num_replicated else -1
        if r >= 0 and (
                i == num_experts or piece32[r] > weight32[by_weight[i]]
                or (piece32[r] == weight32[by_weight[i]] and replicated[r] < by_weight[i])):
            e, piece = replicated[r], piece32[r]
            j += 1
        else:
            e, piece = by_weight[i], weight32[by_weight[i]]
            i += 1
        for _ in range(counts[e]):
            item_weight[k] = weight[e] / counts[e]
            item_weight32[k] = piece
            item_expert[k] = e
            k += 1
    return item_weight, item_weight32, item_expert


FULL = np.uint64(0xFFFFFFFFFFFFFFFF)  # the key of a pack that takes no more items


@numba.njit(cache=True, nogil=True)
def pack_tree(num_packs):
    """A tournament tree over num_packs empty packs for `lpt` and `distinct_lpt`: each node
    holds the least key below it, a pack's key being (float32 load bits << 32 | pack), so the
    root names the lightest pack, lowest index among equals (non-negative floats order as
    their bit patterns). -> (tree [2 * leaves] uint64, leaves: the first leaf's index)"""
    leaves = 1
    while leaves < num_packs:
        leaves *= 2
    tree = np.full(2 * leaves, FULL, np.uint64)
    for pack in range(num_packs):
        tree[leaves + pack] = pack
    for i in range(leaves - 1, 0, -1):
        tree[i] = min(tree[2 * i], tree[2 * i + 1])
    return tree, leaves


@numba.njit(cache=True, nogil=True, _nrt=False)
def pack_key(load_bits, pack):
    return (np.uint64(load_bits[pack]) << np.uint64(32)) | np.uint64(pack)


@numba.njit(cache=True, nogil=True, _nrt=False)
def set_key(tree, leaves, pack, key):
    """Sets a pack's key and the minima above it, each from its sibling (not re-read)."""
    i = leaves + pack
    tree[i] = key
    while i > 1:
        key = min(key, tree[i ^ 1])
        i >>= 1
        tree[i] = key


@numba.njit(cache=True, nogil=True)
def lpt(item_weight32, num_packs):
    """Heaviest item to the lightest pack with room (float32 loads, lowest index among equals),
    as the reference packs. Items must come heaviest first.

    item_weight32: [n] float32 -> pack_items [m, n/m] item ids, each row ascending
    """
    n = item_weight32.size
    cap = n // num_packs
    pack_items = np.empty((num_packs, cap), np.int64)
    loads = np.zeros(num_packs, np.float32)
    load_bits = loads.view(np.uint32)
    filled = np.zeros(num_packs, np.int64)
    tree, leaves = pack_tree(num_packs)
    for item in range(n):
        pack = np.int64(tree[1] & np.uint64(0xFFFFFFFF))
        pack_items[pack, filled[pack]] = item
        filled[pack] += 1
        loads[pack] += item_weight32[item]
        # `set_key`, written out: as calls, it and `pack_key` cost lpt 8% (measured)
        i = leaves + pack
        key = FULL if filled[pack] == cap \
            else (np.uint64(load_bits[pack]) << np.uint64(32)) | np.uint64(pack)
        tree[i] = key
        while i > 1:
            key = min(key, tree[i ^ 1])
            i >>= 1
            tree[i] = key
    return pack_items


@numba.njit(cache=True, nogil=True)
def distinct_lpt(item_weight, item_weight32, item_expert, num_packs, enough):
    """`lpt`, except that each replica of an expert goes to the lightest pack with room that
    holds none of it yet. Where every pack ends at most `enough`, that is a lighter node's
    plan: its hierarchical layer peaks on another node (see `solve_one`).

    item_weight(32), item_expert: [n] as `_items_of` gives them (an expert's replicas
    adjacent) -> pack_expert [m, n/m], or empty where a pack ends above `enough` or an
    expert's replicas find too few packs.
    """
    n = item_weight.size
    cap = n // num_packs
    pack_expert = np.empty((num_packs, cap), np.int64)
    loads = np.zeros(num_packs)
    loads32 = np.zeros(num_packs, np.float32)
    load_bits = loads32.view(np.uint32)
    filled = np.zeros(num_packs, np.int64)
    taken = np.empty(num_packs, np.int64)  # the packs given the current expert's replicas
    num_taken = 0
    tree, leaves = pack_tree(num_packs)
    for item in range(n):
        if item > 0 and item_expert[item] != item_expert[item - 1]:  # reopen those packs
            for t in range(num_taken):
                if filled[taken[t]] < cap:
                    set_key(tree, leaves, taken[t], pack_key(load_bits, taken[t]))
            num_taken = 0
        if tree[1] == FULL:
            return np.empty((0, cap), np.int64)
        pack = np.int64(tree[1] & np.uint64(0xFFFFFFFF))
        pack_expert[pack, filled[pack]] = item_expert[item]
        filled[pack] += 1
        loads[pack] += item_weight[item]
        if loads[pack] > enough:
            return np.empty((0, cap), np.int64)
        loads32[pack] += item_weight32[item]
        taken[num_taken] = pack
        num_taken += 1
        set_key(tree, leaves, pack, FULL)
    return pack_expert


@numba.njit(cache=True, nogil=True)
def differencing(item_weight, num_packs):
    """Balanced largest differencing (Karmarkar-Karp for equal-count packs): each run of m
    consecutive items is a partial packing of one item per pack; the two partials whose
    largest and smallest packs differ most are merged, largest pack with smallest, until one
    is left. Items must come heaviest first.

    item_weight: [n] float64 -> pack_items [m, n/m] item ids, each row ascending
    """
    n = item_weight.size
    cap = n // num_packs
    total = np.empty((cap, num_packs))  # per partial: its packs' loads, largest first
    head = np.empty((cap, num_packs), np.int64)  # the first item of each of its packs
    last = np.arange(n)  # of a pack's first item: the pack's last item
    after = np.full(n, -1, np.int64)  # the next item in the same pack
    for r in range(cap):
        for p in range(num_packs):
            total[r, p] = item_weight[r * num_packs + p]
            head[r, p] = r * num_packs + p
    alive = np.ones(cap, np.bool_)
    merged, merged_head = np.empty(num_packs), np.empty(num_packs, np.int64)
    by_load = np.empty(num_packs, np.int64)
    for _ in range(cap - 1):
        a, b, spread_a, spread_b = -1, -1, -1.0, -1.0
        for r in range(cap):
            spread_r = total[r, 0] - total[r, num_packs - 1]
            if alive[r] and spread_r > spread_a:
                b, spread_b, a, spread_a = a, spread_a, r, spread_r
            elif alive[r] and spread_r > spread_b:
                b, spread_b = r, spread_r
        for p in range(num_packs):
            q = num_packs - 1 - p
            after[last[head[a, p]]] = head[b, q]
            last[head[a, p]] = last[head[b, q]]
            merged[p], merged_head[p] = total[a, p] + total[b, q], head[a, p]
        descending_into(by_load, merged)
        for p in range(num_packs):
            total[a, p], head[a, p] = merged[by_load[p]], merged_head[by_load[p]]
        alive[b] = False
    final = np.flatnonzero(alive)[0]
    pack_of = np.empty(n, np.int64)
    for p in range(num_packs):
        item = head[final, p]
        while item >= 0:
            pack_of[item] = p
            item = after[item]
    pack_items = np.empty((num_packs, cap), np.int64)
    filled = np.zeros(num_packs, np.int64)
    for item in range(n):  # ascending ids in each row
        pack_items[pack_of[item], filled[pack_of[item]]] = item
        filled[pack_of[item]] += 1
    return pack_items


@numba.njit(cache=True, nogil=True, _nrt=False)
def _held(pack_expert, pack, expert, skip):
    held = 0
    for j in range(pack_expert.shape[1]):
        if j != skip and pack_expert[pack, j] == expert:
            held += 1
    return held


@numba.njit(cache=True, nogil=True, _nrt=False)
def _insert_sorted(pack_weight, pack_expert, pack, slot, weight, expert):
    """Puts (weight, expert) into `slot` of the pack and restores descending weight order."""
    cap = pack_weight.shape[1]
    j = slot
    while j > 0 and pack_weight[pack, j - 1] < weight:
        pack_weight[pack, j] = pack_weight[pack, j - 1]
        pack_expert[pack, j] = pack_expert[pack, j - 1]
        j -= 1
    while j < cap - 1 and pack_weight[pack, j + 1] > weight:
        pack_weight[pack, j] = pack_weight[pack, j + 1]
        pack_expert[pack, j] = pack_expert[pack, j + 1]
        j += 1
    pack_weight[pack, j] = weight
    pack_expert[pack, j] = expert


@numba.njit(cache=True, nogil=True, _nrt=False)
def _swap(pack_weight, pack_expert, loads, p, a, q, b):
    wa, ea = pack_weight[p, a], pack_expert[p, a]
    wb, eb = pack_weight[q, b], pack_expert[q, b]
    loads[p] += wb - wa
    loads[q] += wa - wb
    _insert_sorted(pack_weight, pack_expert, p, a, wb, eb)
    _insert_sorted(pack_weight, pack_expert, q, b, wa, ea)


@numba.njit(cache=True, nogil=True, _nrt=False)
def _best_single_swap(pack_weight, pack_expert, limit, loads, by_load, enough):
    """Best 1-for-1 swap between the heaviest pack and another, lightest packs first.

    Per item of the heaviest pack only the partner closest to halving the gap is tried (items
    are sorted, so one pass over both packs finds them all). Stops once a swap brings both
    packs down to `enough`. Returns (objective, other pack, slot in heaviest, slot in other),
    other < 0 if none.
    """
    num_packs, cap = pack_weight.shape
    heavy = by_load[num_packs - 1]
    top = loads[heavy]
    best = top - 1e-12 * abs(top)
    other, a_best, b_best = -1, -1, -1
    for k in range(num_packs - 1):
        o = by_load[k]
        low = loads[o]
        if 0.5 * (top + low) >= best:
            break
        gap = top - low
        lo = 0  # first slot of o with weight <= ideal, which falls as a rises
        for a in range(cap):
            wa = pack_weight[heavy, a]
            ideal = wa - 0.5 * gap
            while lo < cap and pack_weight[o, lo] > ideal:
                lo += 1
            for b in (lo - 1, lo):
                if b < 0 or b >= cap:
                    continue
                delta = wa - pack_weight[o, b]
                if delta <= 0.0 or delta >= gap:
                    continue
                objective = max(top - delta, low + delta)
                if objective < best \
                        and _held(pack_expert, o, pack_expert[heavy, a], b) \
                        < limit[pack_expert[heavy, a]] \
                        and _held(pack_expert, heavy, pack_expert[o, b], a) \
                        < limit[pack_expert[o, b]]:
                    best, other, a_best, b_best = objective, o, a, b
        if best <= enough:
            break
    return best, other, a_best, b_best


@numba.njit(cache=True, nogil=True, _nrt=False)
def _pair_swap_fits(pack_expert, limit, p, x, y, q, u, v):
    """Whether experts from slots x, y of p fit into q in place of slots u, v (fair shares)."""
    for s in (x, y):
        expert = pack_expert[p, s]
        held = 0
        for j in range(pack_expert.shape[1]):
            if j != u and j != v and pack_expert[q, j] == expert:
                held += 1
        if pack_expert[p, x] == expert:
            held += 1
        if pack_expert[p, y] == expert:
            held += 1
        if held > limit[expert]:
            return False
    return True


@numba.njit(cache=True, nogil=True, _nrt=False)
def _pair_sums(pack_weight, pack, sums, first, second):
    """Fills sums, first, second [c(c-1)/2] with the sums of every two slots of a pack and
    their slots, ascending (insertion sort: a pack has few slots)."""
    cap = pack_weight.shape[1]
    k = 0
    for x in range(cap):
        for y in range(x + 1, cap):
            total = pack_weight[pack, x] + pack_weight[pack, y]
            j = k
            while j > 0 and sums[j - 1] > total:
                sums[j], first[j], second[j] = sums[j - 1], first[j - 1], second[j - 1]
                j -= 1
            sums[j], first[j], second[j] = total, x, y
            k += 1


@numba.njit(cache=True, nogil=True)
def _pair_sum_cache(num_packs, cap):
    """Empty (sums, first, second) [m, c(c-1)/2] for `_sum_pairs_once`, and summed [m] False."""
    num_pairs = cap * (cap - 1) // 2
    return np.empty((num_packs, num_pairs)), np.empty((num_packs, num_pairs), np.int64), \
        np.empty((num_packs, num_pairs), np.int64), np.zeros(num_packs, np.bool_)


@numba.njit(cache=True, nogil=True, _nrt=False)
def _sum_pairs_once(pack_weight, pack, sums, first, second, summed):
    """`_pair_sums` into row `pack` of sums, first, second [m, c(c-1)/2] unless summed[pack]."""
    if not summed[pack]:
        _pair_sums(pack_weight, pack, sums[pack], first[pack], second[pack])
        summed[pack] = True


@numba.njit(cache=True, nogil=True, _nrt=False)
def _best_pair_swap_any(pack_weight, pack_expert, limit, loads, by_load, partners, sums, first,
                        second, summed):
    """Best 2-for-2 swap between the heaviest pack and the `partners` lightest others, lightest
    first, skipping packs that cannot beat the best found. For each pair of the heaviest pack
    only the other pack's pair closest to halving the gap is tried: with both packs' pair sums
    sorted (sums, first, second [m, c(c-1)/2]: `_pair_sums` of the packs marked in summed [m],
    filled here for the others), one pass finds them.

    Returns (objective, other pack, (x, y, u, v)): slots x, y of the heaviest pack go to slots
    u, v of the other; other < 0 when no swap lowers the peak.
    """
    num_packs, cap = pack_weight.shape
    num_pairs = sums.shape[1]
    heavy = by_load[num_packs - 1]
    top = loads[heavy]
    best, other, found = top - 1e-12 * abs(top), -1, (-1, -1, -1, -1)
    _sum_pairs_once(pack_weight, heavy, sums, first, second, summed)
    for k in range(min(partners, num_packs - 1)):
        o = by_load[k]
        low = loads[o]
        if 0.5 * (top + low) >= best:
            break
        gap = top - low
        _sum_pairs_once(pack_weight, o, sums, first, second, summed)
        j = 0  # first pair of o with sum >= ideal, which rises with the heaviest pack's sum
        for h in range(num_pairs):
            heavy_sum = sums[heavy, h]
            ideal = heavy_sum - 0.5 * gap
            while j < num_pairs and sums[o, j] < ideal:
                j += 1
            for c in (j - 1, j):
                if c < 0 or c >= num_pairs:
                    continue
                delta = heavy_sum - sums[o, c]
                if delta <= 0.0 or delta >= gap:
                    continue
                objective = max(top - delta, low + delta)
                x, y, u, v = first[heavy, h], second[heavy, h], first[o, c], second[o, c]
                if objective < best \
                        and _pair_swap_fits(pack_expert, limit, heavy, x, y, o, u, v) \
                        and _pair_swap_fits(pack_expert, limit, o, u, v, heavy, x, y):
                    best, other, found = objective, o, (x, y, u, v)
    return best, other, found


@numba.njit(cache=True, nogil=True, _nrt=False)
def _slot_of(pack_weight, pack_expert, pack, weight, expert):
    for j in range(pack_weight.shape[1]):
        if pack_weight[pack, j] == weight and pack_expert[pack, j] == expert:
            return j
    return -1


@numba.njit(cache=True, nogil=True, _nrt=False)
def _swap_two(pack_weight, pack_expert, loads, p, x, y, q, u, v):
    """Swaps slots x < y of pack p with slots u < v of pack q."""
    # The higher slot first, so that re-sorting keeps the lower slot's item in place.
    wx, ex = pack_weight[p, x], pack_expert[p, x]
    wu, eu = pack_weight[q, u], pack_expert[q, u]
    _swap(pack_weight, pack_expert, loads, p, y, q, v)
    _swap(pack_weight, pack_expert, loads, p, _slot_of(pack_weight, pack_expert, p, wx, ex),
          q, _slot_of(pack_weight, pack_expert, q, wu, eu))


@numba.njit(cache=True, nogil=True, _nrt=False)
def _closest_exchange(pack_weight, pack_expert, limit, p, q, gap, sums, first, second):
    """The 1-for-1 or 2-for-2 exchange that brings pack p, heavier than pack q by `gap`, closest
    to q's load, as (delta, x, y, u, v): p's slots x (and y) trade with q's u (and v), y = v = -1
    for 1-for-1, and p's load falls by delta; delta = 0 when no exchange narrows the gap.
    sums, first, second: [m, c(c-1)/2], every pack's pair sums ascending (`_pair_sums`).
    """
    cap = pack_weight.shape[1]
    half = 0.5 * gap
    best, found = half, (0.0, -1, -1, -1, -1)  # best: distance of delta from half the gap
    lo = 0  # as in `_best_single_swap`
    for a in range(cap):
        wa = pack_weight[p, a]
        while lo < cap and pack_weight[q, lo] > wa - half:
            lo += 1
        for b in (lo - 1, lo):
            if 0 <= b < cap:
                delta = wa - pack_weight[q, b]
                if abs(delta - half) < best \
                        and _held(pack_expert, q, pack_expert[p, a], b) < limit[pack_expert[p, a]] \
                        and _held(pack_expert, p, pack_expert[q, b], a) < limit[pack_expert[q, b]]:
                    best, found = abs(delta - half), (delta, a, -1, b, -1)
    j = 0  # as in `_best_pair_swap_any`
    for h in range(sums.shape[1]):
        while j < sums.shape[1] and sums[q, j] < sums[p, h] - half:
            j += 1
        for c in (j - 1, j):
            if 0 <= c < sums.shape[1]:
                delta = sums[p, h] - sums[q, c]
                x, y, u, v = first[p, h], second[p, h], first[q, c], second[q, c]
                if abs(delta - half) < best \
                        and _pair_swap_fits(pack_expert, limit, p, x, y, q, u, v) \
                        and _pair_swap_fits(pack_expert, limit, q, u, v, p, x, y):
                    best, found = abs(delta - half), (delta, x, y, u, v)
    return found


@numba.njit(cache=True, nogil=True)
def balance_pairs(pack_weight, pack_expert, limit, loads):
    """One sweep of pairwise balancing: every two packs further apart than the heaviest is above
    the mean, the heaviest with the lightest first, take the 1-for-1 or 2-for-2 exchange that
    brings their loads closest. No pack ends above the heavier of its pair, so the peak never
    rises; it leaves the heaviest pack more partners for `refine` where that is stuck (measured
    at 4 per GPU, synthetic: mean gap 0.14% -> 0.086%; every pair: 0.080% in 3x the time).

    pack_weight [m, c] (rows sorted descending), pack_expert [m, c], loads [m] change in place.
    """
    num_packs, cap = pack_weight.shape
    sums, first, second, summed = _pair_sum_cache(num_packs, cap)
    order = np.empty(num_packs, np.int64)
    descending_into(order, loads)
    least_gap = loads.max() - loads.sum() / num_packs
    for i in range(num_packs):
        for k in range(num_packs - 1, i, -1):
            p, q = order[i], order[k]
            if loads[p] < loads[q]:
                p, q = q, p
            if loads[p] - loads[q] <= least_gap:
                continue
            _sum_pairs_once(pack_weight, p, sums, first, second, summed)
            _sum_pairs_once(pack_weight, q, sums, first, second, summed)
            delta, x, y, u, v = _closest_exchange(pack_weight, pack_expert, limit, p, q,
                                                  loads[p] - loads[q], sums, first, second)
            if delta == 0.0:
                continue
            if y < 0:
                _swap(pack_weight, pack_expert, loads, p, x, q, u)
            else:
                _swap_two(pack_weight, pack_expert, loads, p, x, y, q, u, v)
            summed[p] = summed[q] = False


@numba.njit(cache=True, nogil=True)
def refine(pack_weight, pack_expert, limit, loads, max_moves, pair_partners, good_enough):
    """Local search on the heaviest pack: 1-for-1 swaps with any pack, else 2-for-2 with one of
    the `pair_partners` lightest packs (none when 0), until no move lowers the peak or the peak
    is at most `good_enough`. Never raises the peak.

    pack_weight [m, c] (each row sorted descending), pack_expert [m, c], loads [m] change in
    place; limit [E]: most replicas of an expert a pack may hold. Returns the moves made.
    """
    num_packs, cap = pack_weight.shape
    if cap < 2 or num_packs < 2 or loads.max() <= good_enough:
        return 0
    mean = loads.sum() / num_packs
    by_load = np.empty(num_packs, np.int64)
    ascending_into(by_load, loads)  # numba's argsort costs ~1 us for 32 keys
    sums, first, second, summed = _pair_sum_cache(num_packs, cap)
    for move in range(max_moves):
        heavy = by_load[num_packs - 1]
        if loads[heavy] <= good_enough:
            return move
        enough = max(loads[by_load[num_packs - 2]], mean, good_enough)
        best, other, a, b = _best_single_swap(pack_weight, pack_expert, limit, loads, by_load,
                                              enough)
        if other >= 0:
            _swap(pack_weight, pack_expert, loads, heavy, a, other, b)
        else:
            if pair_partners == 0:
                return move
            best, other, (x, y, u, v) = _best_pair_swap_any(
                pack_weight, pack_expert, limit, loads, by_load, pair_partners, sums, first,
                second, summed)
            if other < 0:
                return move
            _swap_two(pack_weight, pack_expert, loads, heavy, x, y, other, u, v)
        summed[heavy] = summed[other] = False
        _resort_last(by_load, loads)
        resort(by_load, loads, other)
    return max_moves


@numba.njit(cache=True, nogil=True, _nrt=False)
def _resort_last(by_load, loads):
    """`resort` of the pack last in by_load (the heaviest, whose load fell): the same order
    without first searching for it (measured: refinement at 4 per GPU in 0.93x the time)."""
    m = by_load.size
    moved = by_load[m - 1]
    i = m - 1
    while i > 0 and loads[by_load[i - 1]] > loads[moved]:
        by_load[i] = by_load[i - 1]
        i -= 1
    by_load[i] = moved


@numba.njit(cache=True, nogil=True)
def spread(pack_weight, pack_expert, limit, loads):
    """Moves replicas out of packs holding more of one expert than its fair share, by swaps
    that keep both packs at or below the current peak."""
    num_packs, cap = pack_weight.shape
    peak = loads.max()
    held = np.zeros(limit.size, np.int64)  # replicas of each expert in pack p
    for p in range(num_packs):
        for a in range(cap):
            held[pack_expert[p, a]] += 1
        for a in range(cap):
            expert = pack_expert[p, a]
            if held[expert] <= limit[expert]:
                continue
            done = False
            for q in range(num_packs):
                if q == p or _held(pack_expert, q, expert, -1) >= limit[expert]:
                    continue
                for b in range(cap):
                    other = pack_expert[q, b]
                    delta = pack_weight[p, a] - pack_weight[q, b]
                    if other != expert and _held(pack_expert, p, other, a) < limit[other] \
                            and loads[p] - delta <= peak and loads[q] + delta <= peak:
                        _swap(pack_weight, pack_expert, loads, p, a, q, b)
                        held[expert] -= 1
                        held[other] += 1
                        done = True
                        break
                if done:
                    break
        for a in range(cap):
            held[pack_expert[p, a]] = 0


@numba.njit(cache=True, nogil=True)
def _replica_counts(weight, weight32, by_weight, num_slots, num_packs, count_steps):
    """The reference's counts (R*); at two slots per pack, the best of up to `count_steps`
    replica moves and the threshold search (which gives up on loads too small to bisect, such
    as subnormal ones). by_weight: as `ordered_adams_counts`.
    -> counts [E] int64"""
    counts = ordered_adams_counts(weight32, by_weight, num_slots)
    if num_slots == 2 * num_packs and count_steps > 0:
        peak = count_search_pairs(weight, counts, count_steps, COUNT_SEARCH_WIDTH)
        other, other_peak = threshold_counts(weight, num_slots, weight.sum() / num_packs, peak,
                                             THRESHOLD_STEPS)
        if other_peak < peak:
            return other
    return counts


@numba.njit(cache=True, nogil=True)
def solve_one(weight, num_slots, num_packs, max_moves, count_steps, enough=0.0):
    """Replicates and packs one problem. weight: [E] float64 -> slot_expert [num_slots] int64.

    Slot s sits in pack s // (num_slots / num_packs); within a pack, slots go by expert id.
    `enough`: a peak that the whole plan exceeds anyway (a hierarchical layer's lighter nodes:
    under its heaviest node's mean GPU load). A problem whose mean is below it first tries
    `distinct_lpt` (measured: final for 95-98% of a hierarchical EP32 layer's lighter nodes);
    otherwise refinement stops there if that is above its own target, and differencing is
    skipped when the reference's LPT start already peaks below it.
    Where the reference's counts give an expert more replicas than packs, `capped_counts` are
    packed too and the better plan kept.
    """
    weight32 = weight.astype(np.float32)
    by_weight = descending_order(weight32)
    counts = _replica_counts(weight, weight32, by_weight, num_slots, num_packs, count_steps)
    if 0.0 < enough and weight.sum() <= enough * num_packs:
        item_weight, item_weight32, item_expert = _items_of(weight, weight32, counts, by_weight)
        pack_expert = distinct_lpt(item_weight, item_weight32, item_expert, num_packs, enough)
        if pack_expert.size:
            return _slots_by_pack(pack_expert, weight.size)
    best_expert, best_peak = _replicas_packed(weight, weight32, by_weight, counts, num_packs,
                                              max_moves, enough)
    if counts.max() > num_packs:
        capped = capped_counts(weight, counts, num_packs)
        if (capped != counts).any():
            pack_expert, peak = _replicas_packed(weight, weight32, by_weight, capped, num_packs,
                                                 max_moves, enough)
            if peak < best_peak:
                best_expert, best_peak, counts = pack_expert, peak, capped
    if num_slots > 2 * num_packs and max_moves > 0:
        best_expert = _count_moves(weight, weight32, by_weight, counts, num_packs, max_moves,
                                   enough, best_expert, best_peak)
    return _slots_by_pack(best_expert, weight.size)


@numba.njit(cache=True, nogil=True)
def _count_moves(weight, weight32, by_weight, counts, num_packs, max_moves, enough, best_expert,
                 best_peak):
    """While the peak stays COUNT_MOVE_GAP above its bound, single replica moves that lower it:
    from an expert on the heaviest pack to the one of largest load per replica, or to one of
    the heaviest pack's COUNT_MOVE_TAKERS largest experts from the one that loses least. Each
    candidate is packed in full, COUNT_MOVE_SLOTS slots' worth of them per problem at most
    (a 40-slot node: 25; 288 slots: 3; none from 1025 slots up, where one packing of a skewed
    layer costs ~14 ms). -> pack_expert [m, c]"""
    num_experts = weight.size
    mean = weight.sum() / num_packs
    if best_peak <= max(mean * (1.0 + COUNT_MOVE_GAP), enough):  # most problems: nothing to do
        return best_expert
    counts = counts.copy()
    budget = COUNT_MOVE_SLOTS // counts.sum()  # packings left
    while budget > 0:
        bound = mean
        for e in range(num_experts):
            bound = max(bound, weight[e] / counts[e])
        if best_peak <= max(bound * (1.0 + COUNT_MOVE_GAP), enough):
            break
        heavy, heavy_load = 0, -1.0
        for p in range(num_packs):
            load = 0.0
            for e in best_expert[p]:
                load += weight[e] / counts[e]
            if load > heavy_load:
                heavy, heavy_load = p, load
        found, found_peak, found_expert = -1, best_peak, best_expert
        moves = np.empty((2 * best_expert.shape[1], 2), np.int64)
        num_moves = 0
        takers = 0
        for j in range(best_expert.shape[1]):  # heaviest piece first, an expert's adjacent
            e = best_expert[heavy, j]
            if j > 0 and best_expert[heavy, j - 1] == e:
                continue
            if counts[e] > 1:  # e gives a replica to the expert of largest piece
                to, piece = -1, -1.0
                for f in range(num_experts):
                    if f != e and weight[f] / counts[f] > piece:
                        to, piece = f, weight[f] / counts[f]
                moves[num_moves] = (e, to)
                num_moves += 1
            if takers >= COUNT_MOVE_TAKERS:
                continue
            takers += 1
            source, cost = -1, np.inf  # e takes a replica from the one that loses least
            for f in range(num_experts):
                if f != e and counts[f] > 1 and weight[f] / (counts[f] - 1) < cost:
                    source, cost = f, weight[f] / (counts[f] - 1)
            if source >= 0:
                moves[num_moves] = (source, e)
                num_moves += 1
        for k in range(min(num_moves, budget)):
            budget -= 1
            counts[moves[k, 0]] -= 1
            counts[moves[k, 1]] += 1
            pack_expert, peak = _replicas_packed(weight, weight32, by_weight, counts, num_packs,
                                                 max_moves, enough)
            if peak < found_peak:
                found, found_peak, found_expert = k, peak, pack_expert
            counts[moves[k, 0]] += 1
            counts[moves[k, 1]] -= 1
        if found < 0:
            break
        counts[moves[found, 0]] -= 1
        counts[moves[found, 1]] += 1
        best_expert, best_peak = found_expert, found_peak
    return best_expert


@numba.njit(cache=True, nogil=True)
def capped_counts(weight, counts, num_packs):
    """counts [E] with no expert above one replica per pack, the slots this frees given one at
    a time to the expert of largest load per replica (lower index among equals) still below
    that. More replicas than packs put two on some pack: ceil(c / m) w / c >= w / m, so they
    never lower the expert's load on its heaviest pack, and other experts want the slots.
    -> counts [E] int64 (a copy; unchanged where every expert reaches the cap)"""
    capped = np.minimum(counts, num_packs)
    free = counts.sum() - capped.sum()
    if free > (num_packs - capped).sum():
        return counts.copy()
    for _ in range(free):
        best, best_piece = -1, -1.0
        for e in range(weight.size):
            if capped[e] < num_packs and weight[e] / capped[e] > best_piece:
                best, best_piece = e, weight[e] / capped[e]
        capped[best] += 1
    return capped


@numba.njit(cache=True, nogil=True)
def _replicas_packed(weight, weight32, by_weight, counts, num_packs, max_moves, enough):
    """Packs counts [E] replicas of each expert onto num_packs packs (see `solve_one`).
    -> (pack_expert [m, c], peak)"""
    num_slots = counts.sum()
    cap = num_slots // num_packs
    item_weight, item_weight32, item_expert = _items_of(weight, weight32, counts, by_weight)
    starts = _first_packings(item_weight, item_weight32, num_packs, enough)
    limit = (counts + num_packs - 1) // num_packs
    # 2-for-2 swaps with every pack pay off where packs hold few items (measured: at 4 per
    # GPU they cut the mean gap 0.26% -> 0.08%); with more items, the lightest pack suffices.
    pair_partners = num_packs if cap <= PAIR_SWAP_ALL_MAX_CAP \
        else 1 if cap <= SMALL_PACK_MAX_CAP else 0
    best_expert, best_peak = np.empty((num_packs, cap), np.int64), np.inf
    # A later start is refined only where the earlier ones stay above this; without refinement
    # (max_moves 0) the first, the lower, is the plan.
    good = max(max(item_weight.sum() / num_packs, item_weight[0]) * (1.0 + BALANCE_PAIRS_GAP),
               enough) if max_moves > 0 else 1.7976931348623157e308
    for pack_items in starts:
        if best_peak <= good:  # best_peak is inf before the first
            break
        pack_weight, pack_expert, loads = _packed(item_weight, item_expert, pack_items)
        if cap > 2:  # two per pack are already paired optimally
            bound = max(loads.sum() / num_packs, pack_weight[:, 0].max())
            tolerance = FEW_SLOTS_REFINE_TOLERANCE if cap <= PAIR_SWAP_ALL_MAX_CAP \
                else REFINE_TOLERANCE
            target = max(bound * (1.0 + tolerance), enough)
            refine(pack_weight, pack_expert, limit, loads, max_moves, pair_partners, target)
            if cap <= PAIR_SWAP_ALL_MAX_CAP and max_moves > 0 \
                    and loads.max() > max(bound * (1.0 + BALANCE_PAIRS_GAP), target):
                balance_pairs(pack_weight, pack_expert, limit, loads)
                refine(pack_weight, pack_expert, limit, loads, max_moves, pair_partners, target)
        if cap <= SMALL_PACK_MAX_CAP:
            spread(pack_weight, pack_expert, limit, loads)
        peak = loads.max()
        if peak < best_peak:
            best_expert, best_peak = pack_expert, peak
    return best_expert, best_peak


@numba.njit(cache=True, nogil=True)
def _first_packings(item_weight, item_weight32, num_packs, enough):
    """Packings to refine, as item ids [m, c] each: at one or two per pack, the reference's
    (largest with smallest: optimal for given counts); else its LPT or `differencing`,
    whichever peaks lower, LPT alone if it peaks at or below `enough` (see `solve_one`). Up to
    PAIR_SWAP_ALL_MAX_CAP per pack, where refinement is strong, both, the lower first:
    `_replicas_packed` refines the second only where the first stays BALANCE_PAIRS_GAP above
    its bound (issue 23: refining both everywhere took twice the time for 0.054% instead of
    0.060% mean gap on the real snapshots at 4 per GPU; some problems need the second, see
    tests/engine/test_packing.py).
    item_weight(32): [n], heaviest first -> list of [m, c] item ids"""
    num_slots = item_weight.size
    cap = num_slots // num_packs
    if cap <= 2:
        pack_items = np.empty((num_packs, cap), np.int64)
        for p in range(num_packs):
            pack_items[p, 0] = p
            if cap == 2:
                pack_items[p, 1] = num_slots - 1 - p
        return [pack_items]
    pack_items = lpt(item_weight32, num_packs)
    lpt_peak = _peak(item_weight, pack_items)
    if lpt_peak <= enough:
        return [pack_items]
    other = differencing(item_weight, num_packs)
    if cap <= PAIR_SWAP_ALL_MAX_CAP:  # the lower first
        return [other, pack_items] if _peak(item_weight, other) < lpt_peak \
            else [pack_items, other]
    return [other if _peak(item_weight, other) <= lpt_peak else pack_items]


@numba.njit(cache=True, nogil=True)
def _packed(item_weight, item_expert, pack_items):
    """pack_items [m, c] (rows heaviest first) -> (pack_weight [m, c], pack_expert [m, c],
    loads [m])"""
    num_packs, cap = pack_items.shape
    pack_weight = np.empty((num_packs, cap))
    pack_expert = np.empty((num_packs, cap), np.int64)
    loads = np.zeros(num_packs)
    for p in range(num_packs):
        for j in range(cap):
            pack_weight[p, j] = item_weight[pack_items[p, j]]
            pack_expert[p, j] = item_expert[pack_items[p, j]]
            loads[p] += pack_weight[p, j]
    return pack_weight, pack_expert, loads


@numba.njit(cache=True, nogil=True, _nrt=False)
def _peak(item_weight, pack_items):
    """item_weight [n], pack_items [m, c] -> the heaviest pack's load"""
    peak = 0.0
    for p in range(pack_items.shape[0]):
        load = 0.0
        for j in range(pack_items.shape[1]):
            load += item_weight[pack_items[p, j]]
        peak = max(peak, load)
    return peak


@numba.njit(cache=True, nogil=True)
def _slots_by_pack(pack_expert, num_experts):
    """pack_expert [m, c] -> slot_expert [m * c], each pack's experts ascending.

    Counting sort: the packs of each expert's replicas are listed, then experts are dealt to
    their packs in ascending order.
    """
    num_packs, cap = pack_expert.shape
    start = np.zeros(num_experts + 1, np.int64)
    for expert in pack_expert.ravel():
        start[expert + 1] += 1
    for e in range(num_experts):
        start[e + 1] += start[e]
    pack_of_replica = np.empty(num_packs * cap, np.int64)
    for p in range(num_packs):
        for j in range(cap):
            pack_of_replica[start[pack_expert[p, j]]] = p
            start[pack_expert[p, j]] += 1
    filled = np.arange(0, num_packs * cap, cap)
    slot_expert = np.empty(num_packs * cap, np.int64)
    replica = 0
    for e in range(num_experts):
        while replica < start[e]:  # start[e] now ends expert e's replicas
            p = pack_of_replica[replica]
            slot_expert[filled[p]] = e
            filled[p] += 1
            replica += 1
    return slot_expert


@numba.njit(cache=True, nogil=True)
def pack_distinct(weight, num_packs):
    """LPT and refinement of distinct items into equal-count packs.

    weight: [n] float64 -> (pack of each item [n] int64, pack loads [m])
    """
    n = weight.size
    cap = n // num_packs
    order = np.argsort(-weight, kind="mergesort")
    pack_items = lpt(weight[order].astype(np.float32), num_packs)
    pack_weight = np.empty((num_packs, cap))
    pack_item = np.empty((num_packs, cap), np.int64)
    loads = np.zeros(num_packs)
    for p in range(num_packs):
        for j in range(cap):
            pack_item[p, j] = order[pack_items[p, j]]
            pack_weight[p, j] = weight[pack_item[p, j]]
            loads[p] += pack_weight[p, j]
    refine(pack_weight, pack_item, np.ones(n, np.int64), loads, 10 * n, num_packs, 0.0)
    pack_of = np.empty(n, np.int64)
    for p in range(num_packs):
        for j in range(cap):
            pack_of[pack_item[p, j]] = p
    return pack_of, loads
