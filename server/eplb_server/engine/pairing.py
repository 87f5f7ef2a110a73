"""Replica counts for two slots per GPU, where each GPU's load is the sum of a pair of pieces.

For given counts, pairing the largest piece with the smallest is optimal, so only the counts
are searched: `count_search_pairs` moves one replica at a time while that lowers the peak, and
`threshold_counts` bisects on the peak, deciding each candidate with Hall's condition (every
piece above half the candidate needs its own partner no larger than the rest). Pure functions
of their arrays, compiled with numba.
"""

from __future__ import annotations

import numba
import numpy as np

from .sorting import descending_order, resort

COUNT_SEARCH_WIDTH = 4  # receivers per replica-count step: this many largest and smallest pieces
THRESHOLD_STEPS = 8  # bisection steps of threshold_counts
SKIP_MARGIN = 1e-3  # threshold_counts gives up unless it can beat the given peak by this much
# threshold_counts costs up to (spare replicas x experts) per bisection step: above this it is
# skipped (61x512 -> 640 is 6.6e4; 1024 experts -> 2048 slots, 1e6, took 25 ms per layer).
THRESHOLD_MAX_WORK = 2**18
_NONE = np.int64(-1)  # no expert; a numpy scalar, not the literal -1 (one compile per callee)


@numba.njit(cache=True, nogil=True, inline="always")
def _without(order, r1, r2, j):
    """The j-th expert of `order` without the ones at positions r1 < r2."""
    if j >= r1:
        j += 1
    if j >= r2:
        j += 1
    return order[j]


@numba.njit(cache=True, nogil=True, _nrt=False)
def _insertion_index(order, r1, r2, piece, e):
    """How many experts of `order` without positions r1, r2 come ahead of e (binary search)."""
    lo, hi = 0, order.size - 2
    while lo < hi:
        mid = (lo + hi) // 2
        if _ahead(piece, _without(order, r1, r2, mid), e):
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True, inline="always")
def _moved(order, r1, r2, a, ia, b, ib, k):
    """The k-th expert of `order` with a and b taken out (positions r1 < r2) and put back at
    ia and ib + 1 (a ahead of b)."""
    if k < ia:
        return _without(order, r1, r2, k)
    if k == ia:
        return a
    if k <= ib:
        return _without(order, r1, r2, k - 1)
    if k == ib + 1:
        return b
    return _without(order, r1, r2, k - 2)


@numba.njit(cache=True, nogil=True, _nrt=False)
def _pair_peak(order, position, piece, counts, num_pairs, stop, a, b):
    """Peak of largest-with-smallest pairing, or a value >= stop as soon as a pair reaches stop.

    order: experts by piece size, largest first, except experts a and b (-1: none), whose
    pieces changed; position: [E] each expert's index in order. a and b are taken in their
    sorted places (found by binary search) without re-sorting.
    """
    n = order.size
    if n == 1:  # nothing to move: positions past the end leave `order` as it is
        a, b, r1, r2, ia, ib = order[0], order[0], 1, 1, 1, 1
    else:
        if a < 0:  # no move: the first and last stand in their own places
            a, b = order[0], order[n - 1]
        else:
            if _ahead(piece, b, a):
                a, b = b, a
            first_pair = _first_pair(order, piece, a, b)
            if first_pair >= stop:  # most rejected moves (measured: 59% at 288 -> 144 pairs)
                return first_pair
        r1, r2 = min(position[a], position[b]), max(position[a], position[b])
        ia = _insertion_index(order, r1, r2, piece, a)
        ib = _insertion_index(order, r1, r2, piece, b)
    front_k, back_k = 0, n - 1
    front = _moved(order, r1, r2, a, ia, b, ib, front_k)
    back = _moved(order, r1, r2, a, ia, b, ib, back_k)
    front_left, back_left = counts[front], counts[back]
    peak = 0.0
    done = 0
    while done < num_pairs:
        while front_left == 0:
            front_k += 1
            front = _moved(order, r1, r2, a, ia, b, ib, front_k)
            front_left = counts[front]
        while back_left == 0:
            back_k -= 1
            back = _moved(order, r1, r2, a, ia, b, ib, back_k)
            back_left = counts[back]
        if front == back:
            take = max(min(front_left // 2, num_pairs - done), 1)
        else:
            take = min(front_left, back_left, num_pairs - done)
        peak = max(peak, piece[front] + piece[back])
        if peak >= stop:
            return peak
        front_left -= take
        back_left -= take
        if front == back:
            front_left -= take
        done += take
    return peak


@numba.njit(cache=True, nogil=True, _nrt=False)
def _first_pair(order, piece, a, b):
    """The first pair's load in `_pair_peak`: largest piece plus smallest, with a (ahead of b)
    and b in their sorted places, without finding those places."""
    first, last = 0, order.size - 1
    while first <= last and (order[first] == a or order[first] == b):
        first += 1
    while last >= first and (order[last] == a or order[last] == b):
        last -= 1
    front, back = a, b
    if first <= last:
        if _ahead(piece, order[first], a):
            front = order[first]
        if _ahead(piece, b, order[last]):
            back = order[last]
    return piece[front] + piece[back]


@numba.njit(cache=True, nogil=True, _nrt=False)
def _ahead(piece, a, b):
    return piece[a] > piece[b] or (piece[a] == piece[b] and a < b)


@numba.njit(cache=True, nogil=True)
def _positions(order):
    """[E] the index of each expert in order."""
    position = np.empty_like(order)
    for k in range(order.size):
        position[order[k]] = k
    return position


@numba.njit(cache=True, nogil=True)
def _resorted(order, piece, a, b):
    """`order` (experts by piece, largest first) re-sorted after the pieces of a and b changed:
    the sorted order in O(E)."""
    if _ahead(piece, b, a):
        a, b = b, a
    out = np.empty_like(order)
    k, pending = 0, 0
    for e in order:
        if e == a or e == b:
            continue
        while pending < 2 and _ahead(piece, a if pending == 0 else b, e):
            out[k] = a if pending == 0 else b
            k += 1
            pending += 1
        out[k] = e
        k += 1
    while pending < 2:
        out[k] = a if pending == 0 else b
        k += 1
        pending += 1
    return out


@numba.njit(cache=True, nogil=True, _nrt=False)
def _move_replica(weight, counts, piece, donor, receiver):
    counts[donor] -= 1
    counts[receiver] += 1
    piece[donor] = weight[donor] / counts[donor]
    piece[receiver] = weight[receiver] / counts[receiver]


@numba.njit(cache=True, nogil=True)
def _cheapest_donors(weight, counts, size):
    """The `size` experts (fewer if fewer can give) whose pieces grow least when they give up
    a replica, cheapest first."""
    donors = np.full(size, -1)
    cost = np.full(size, np.inf)
    for e in range(weight.size):
        if counts[e] <= 1:
            continue
        grown = weight[e] / (counts[e] - 1)
        if grown >= cost[size - 1]:
            continue
        k = size - 1
        while k > 0 and cost[k - 1] > grown:
            cost[k], donors[k] = cost[k - 1], donors[k - 1]
            k -= 1
        cost[k], donors[k] = grown, e
    return donors


@numba.njit(cache=True, nogil=True)
def _best_replica_move(weight, counts, piece, order, position, num_pairs, width, stop):
    """The replica move (donor -> receiver) whose pairing has the lowest peak below `stop`.

    Receivers: the `width` experts with the largest pieces (to shrink them) and the `width`
    with the smallest (to make small partners for large pieces); donors: the 2 * `width`
    experts whose pieces grow least when they give up a replica. order: experts by piece,
    largest first. Returns (peak, donor, receiver), donor < 0 if no move gets below `stop`.
    """
    num_experts = weight.size
    donors = _cheapest_donors(weight, counts, 2 * width)
    best_peak, best_donor, best_receiver = stop, -1, -1
    for k in range(min(2 * width, num_experts)):
        r = order[k] if k < width else order[num_experts - 1 - (k - width)]
        for d in donors:
            if d < 0 or d == r:
                continue
            _move_replica(weight, counts, piece, d, r)
            trial = _pair_peak(order, position, piece, counts, num_pairs, best_peak, d, r)
            _move_replica(weight, counts, piece, r, d)
            if trial < best_peak:
                best_peak, best_donor, best_receiver = trial, d, r
    return best_peak, best_donor, best_receiver


@numba.njit(cache=True, nogil=True)
def count_search_pairs(weight, counts, max_steps, width):
    """Moves replicas between experts while that lowers the peak of a 2-slots-per-GPU packing
    (largest piece with smallest is the optimal pairing for given counts). When no single move
    helps, problems of at most 64 experts try two moves in a row (the first may raise the peak).

    weight: [E] float64, counts: [E] int64 (updated in place); width: receivers tried per
    step -> peak load
    """
    num_pairs = counts.sum() // 2
    piece = weight / counts
    order = descending_order(piece)
    position = _positions(order)
    peak = _pair_peak(order, position, piece, counts, num_pairs, np.inf, _NONE, _NONE)
    for _ in range(max_steps):
        trial, donor, receiver = _best_replica_move(weight, counts, piece, order, position,
                                                    num_pairs, width, peak * (1.0 - 1e-12))
        if donor >= 0:
            _move_replica(weight, counts, piece, donor, receiver)
            order = _resorted(order, piece, donor, receiver)
            position = _positions(order)
            peak = trial
            continue
        if weight.size > 64:  # two-move lookahead costs O(E^3): small problems only
            break
        best, first, second = peak * (1.0 - 1e-12), (_NONE, _NONE), (_NONE, _NONE)
        for r in order[:width]:
            for d in range(weight.size):
                if d == r or counts[d] <= 1:
                    continue
                _move_replica(weight, counts, piece, d, r)
                moved = _resorted(order, piece, d, r)
                trial, d2, r2 = _best_replica_move(weight, counts, piece, moved,
                                                   _positions(moved), num_pairs, width, best)
                _move_replica(weight, counts, piece, r, d)
                if d2 >= 0:
                    best, first, second = trial, (d, r), (d2, r2)
        if first[0] < 0:
            break
        _move_replica(weight, counts, piece, first[0], first[1])
        _move_replica(weight, counts, piece, second[0], second[1])
        order = descending_order(piece)
        position = _positions(order)
        peak = best
    return peak


@numba.njit(cache=True, nogil=True)
def pair_peak(weight, counts):
    """Peak GPU load of the best pairing of the pieces. weight, counts: [E] -> float."""
    piece = weight / counts
    order = descending_order(piece)
    return _pair_peak(order, _positions(order), piece, counts, counts.sum() // 2, np.inf, _NONE,
                      _NONE)


@numba.njit(cache=True, nogil=True, _nrt=False)
def _level(piece, count, limit):
    """An expert's place in Hall's condition for pairs under `limit`: pieces of at most
    limit / 2 offer `count` partners of their size; larger ones need `count` partners of at
    most limit - piece. -> (level, +count offered or -count needed)"""
    if piece <= 0.5 * limit:
        return piece, count
    return limit - piece, -count


@numba.njit(cache=True, nogil=True, _nrt=False)
def _offered_at(piece, count, limit, level):
    """Partners offered minus needed by an expert's pieces at levels up to `level`."""
    own, change = _level(piece, count, limit)
    return change if own <= level else 0


@numba.njit(cache=True, nogil=True, _nrt=False)
def _count_within(values, order, bound, per):
    """How many entries of `order` (ascending values) have values / per <= bound."""
    lo, hi = 0, order.size
    while lo < hi:
        mid = (lo + hi) // 2
        if values[order[mid]] / per <= bound:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(cache=True, nogil=True)
def _order_by_level(level, by_weight, offering, single, by_level):
    """Fills by_level with the experts by ascending level (equal levels: offering, needing,
    split). by_weight: experts by ascending weight, whose first `offering` are single pieces
    that offer partners (ascending levels), the next up to `single` single pieces that need
    one (descending levels), the rest split experts (few, sorted here)."""
    num_experts = by_weight.size
    split = by_weight[single:].copy()
    for k in range(1, split.size):  # insertion sort by level
        e, j = split[k], k
        while j > 0 and level[split[j - 1]] > level[e]:
            split[j] = split[j - 1]
            j -= 1
        split[j] = e
    a, b, k = 0, single - 1, 0  # cursors: offering, needing (backwards), by_level
    while a < offering or b >= offering:
        if a == offering or (b >= offering and level[by_weight[b]] < level[by_weight[a]]):
            by_level[k] = by_weight[b]
            b -= 1
        else:
            by_level[k] = by_weight[a]
            a += 1
        k += 1
    i, k = single - 1, num_experts - 1  # the split ones merged in from the back
    for j in range(split.size - 1, -1, -1):
        while i >= 0 and level[split[j]] < level[by_level[i]]:
            by_level[k] = by_level[i]
            i -= 1
            k -= 1
        by_level[k] = split[j]
        k -= 1


@numba.njit(cache=True, nogil=True)
def _fits(weight, num_slots, limit, counts, level, change, piece, next_piece, by_weight,
          by_level):
    """Whether some counts (written to `counts`) with at most num_slots replicas pair every
    piece under `limit`. Greedy: from the fewest replicas that keep each piece under the limit,
    repeatedly find the lowest level where fewer partners are offered than needed and give one
    replica to the expert that helps there most (the largest new piece among equals). A
    replica never hurts lower levels, so levels are scanned in order.

    by_weight: experts by ascending weight; level, change, piece, next_piece (each expert's
    piece with one replica more), by_level: [E] scratch.
    """
    num_experts = weight.size
    # Experts by ascending weight: single pieces offering partners, single pieces needing one,
    # then split ones (weight / limit rounds above 1).
    offering = _count_within(weight, by_weight, 0.5 * limit, 1.0)
    single = max(offering, _count_within(weight, by_weight, 1.0, limit))
    total = single
    for k in range(single):
        e = by_weight[k]
        counts[e], piece[e], next_piece[e] = 1, weight[e], weight[e] / 2
        level[e], change[e] = _level(piece[e], counts[e], limit)
    for k in range(single, num_experts):
        e = by_weight[k]
        pieces = np.ceil(weight[e] / limit)  # limit > 0 (threshold_counts keeps it so)
        if pieces > num_slots:  # also before int(): a huge float has no int64 value
            return False
        counts[e] = max(1, int(pieces))
        total += counts[e]
        piece[e], next_piece[e] = weight[e] / counts[e], weight[e] / (counts[e] + 1)
        level[e], change[e] = _level(piece[e], counts[e], limit)
    if total > num_slots:
        return False
    _order_by_level(level, by_weight, offering, single, by_level)
    balance, i = 0, 0
    while i < num_experts:  # levels in order, all equal levels together
        here = level[by_level[i]]
        while i < num_experts and level[by_level[i]] == here:
            balance += change[by_level[i]]
            i += 1
        while balance < 0:  # short of partners at `here`
            if total == num_slots:
                return False
            e, gain = _best_helper(counts, piece, next_piece, level, by_level, limit, here)
            if e < 0:
                return False
            balance += gain
            counts[e] += 1
            total += 1
            piece[e], next_piece[e] = next_piece[e], weight[e] / (counts[e] + 1)
            level[e], change[e] = _level(piece[e], counts[e], limit)
            resort(by_level, level, e)
            # resume after every level up to `here`: those are all counted
            i = _count_within(level, by_level, here, 1.0)
    return True


@numba.njit(cache=True, nogil=True, _nrt=False)
def _best_helper(counts, piece, next_piece, level, by_level, limit, short):
    """The expert whose next replica adds most partners at level `short` (the largest new piece
    among equals), -1 if none helps, and the partners it adds there. Only experts at levels up
    to 2 * short can: a replica at most halves a piece. -> (expert, gain)"""
    best, best_gain, best_piece = -1, 0, 0.0
    for k in range(by_level.size):
        e = by_level[k]
        if level[e] > 2.0 * short:
            break
        gain = _offered_at(next_piece[e], counts[e] + 1, limit, short) \
            - _offered_at(piece[e], counts[e], limit, short)
        if gain > best_gain or (gain == best_gain and gain > 0 and next_piece[e] > best_piece):
            best, best_gain, best_piece = e, gain, next_piece[e]
    return best, best_gain


@numba.njit(cache=True, nogil=True)
def threshold_counts(weight, num_slots, low, high, steps):
    """Counts for num_slots / 2 pairs whose best pairing peaks below `high`, by bisection on the
    peak over [low, high]; spare replicas go to the pieces that stay small.

    weight: [E] float64 -> (counts [E] int64, peak), or (empty, inf) if none was found.
    """
    num_experts = weight.size
    if not high > 0.0 or (num_slots - num_experts) * num_experts > THRESHOLD_MAX_WORK:
        return np.empty(0, np.int64), np.inf
    counts = np.empty(num_experts, np.int64)
    level, change = np.empty(num_experts), np.empty(num_experts, np.int64)
    piece, next_piece = np.empty(num_experts), np.empty(num_experts)
    by_level = np.empty(num_experts, np.int64)
    by_weight = np.ascontiguousarray(descending_order(weight)[::-1])
    best = np.empty(0, np.int64)
    best_limit = high
    for step in range(steps):
        # First just below `high`: where even that fails (most layers that the count search
        # already solved well), one test settles it.
        limit = high * (1.0 - SKIP_MARGIN) if step == 0 else 0.5 * (low + high)
        if not (low <= limit < high and limit > 0.0):
            break  # the interval no longer shrinks (subnormal loads): 0.5 * 5e-324 is 0.0
        if _fits(weight, num_slots, limit, counts, level, change, piece, next_piece, by_weight,
                 by_level):
            high, best, best_limit = limit, counts.copy(), limit
        elif step == 0:
            break
        else:
            low = limit
    if best.size == 0:
        return best, np.inf
    for _ in range(num_slots - best.sum()):  # splitting a small piece keeps every pair fitting
        spare = -1
        for e in range(num_experts):
            if weight[e] / best[e] <= 0.5 * best_limit and (
                    spare < 0 or weight[e] / best[e] > weight[spare] / best[spare]):
                spare = e
        if spare < 0:
            return np.empty(0, np.int64), np.inf
        best[spare] += 1
    return best, pair_peak(weight, best)
