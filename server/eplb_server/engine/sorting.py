"""Sorting kernels: stable sorts of non-negative floats (counting places for few keys; largest
first by buckets, else by radix, several times faster than numba's argsort at a few hundred keys;
smallest first, needed only for orders of GPUs, by the argsort), and restoring an order after one
key changed."""

from __future__ import annotations

import numba
import numpy as np

# Up to this many keys counting each key's place is faster than the radix sort's 4 or 8 passes
# over 256 buckets (measured on float32 loads: 1.6 vs 2.5 us for 64 keys, 5.2 vs 2.5 for 128).
SMALL_SORT = 64
# Descending sorts of more keys than this first try a bucket pass and an insertion pass: 0.6x
# counting places at 64 keys and 0.7x the radix sort at 256 on the real snapshots' loads (whose
# buckets hold at most 10; the same speed at 48 keys), unless ties or tight clusters crowd a
# bucket past MAX_BUCKET.
BUCKETS_ABOVE = 48
MAX_BUCKET = 16


@numba.njit(cache=True, nogil=True, _nrt=False)
def _count_places(order, key, descending):
    """Stable sort of few keys: each key's place is counted without branches (O(n^2): an
    insertion sort mispredicts about once per key and takes twice as long at 16 to 64 keys)."""
    for i in range(key.size):
        place = 0
        for j in range(key.size):
            before = key[j] > key[i] if descending else key[j] < key[i]
            place += before | ((key[j] == key[i]) & (j < i))
        order[place] = i


@numba.njit(cache=True, nogil=True)
def _descending_by_bits(bits):
    """Stable LSD radix sort, largest first, of the bit patterns of non-negative floats (which
    order as the floats do). bits: [n] uint32 or uint64 -> [n] int64"""
    n = bits.size
    counts = np.zeros((bits.itemsize, 257), np.int64)  # per byte: bucket starts, largest first
    for i in range(n):  # all histograms in one pass: they do not depend on the order
        for d in range(bits.itemsize):
            counts[d, 256 - ((bits[i] >> (8 * d)) & 255)] += 1
    order, spare = np.arange(n), np.empty(n, np.int64)
    for d in range(bits.itemsize):
        if counts[d, 256 - ((bits[0] >> (8 * d)) & 255)] == n:
            continue  # every key has this byte: the pass would keep the order
        for digit in range(256):
            counts[d, digit + 1] += counts[d, digit]
        for i in range(n):
            digit = 255 - ((bits[order[i]] >> (8 * d)) & 255)
            spare[counts[d, digit]] = order[i]
            counts[d, digit] += 1
        order, spare = spare, order
    return order


@numba.njit(cache=True, nogil=True)
def _descending_by_buckets(order, bits):
    """Stable sort, largest first, of the bit patterns of non-negative floats: keys are dealt
    into about 2n buckets by their distance below the largest, then an insertion pass orders
    each bucket. Returns False, leaving `order` unfinished, when a bucket would hold more than
    MAX_BUCKET keys (ties, tight clusters). bits: [n] uint32 or uint64."""
    n = bits.size
    high, low = np.int64(bits[0]), np.int64(bits[0])  # int64 throughout (uint mixes were slower)
    for i in range(1, n):
        high, low = max(high, np.int64(bits[i])), min(low, np.int64(bits[i]))
    if low < 0:  # a float64 with its sign bit set: not a key this sort takes
        return False
    num_buckets, shift = 2 * n, 0
    while (high - low) >> shift >= num_buckets:
        shift += 1
    start = np.zeros(num_buckets + 1, np.int64)
    for i in range(n):
        start[((high - np.int64(bits[i])) >> shift) + 1] += 1
    crowd = 0
    for b in range(num_buckets):
        crowd = max(crowd, start[b + 1])
        start[b + 1] += start[b]
    if crowd > MAX_BUCKET:
        return False
    sorted_bits = np.empty_like(bits)
    for i in range(n):
        b = (high - np.int64(bits[i])) >> shift
        order[start[b]], sorted_bits[start[b]] = i, bits[i]
        start[b] += 1
    for i in range(1, n):  # keys are out of order only within their bucket
        item, item_bits, j = order[i], sorted_bits[i], i
        while j > 0 and sorted_bits[j - 1] < item_bits:
            order[j], sorted_bits[j] = order[j - 1], sorted_bits[j - 1]
            j -= 1
        order[j], sorted_bits[j] = item, item_bits
    return True


@numba.njit(cache=True, nogil=True)
def descending_into(order, key):
    """Fills order [n] with 0 .. n - 1 by key [n] (non-negative floats), largest first, lower
    index first among equals."""
    if key.size <= BUCKETS_ABOVE:
        _count_places(order, key, True)
    elif key.itemsize == 4:
        _descending_many_into(order, key, key.view(np.uint32))
    else:
        _descending_many_into(order, key, key.view(np.uint64))


@numba.njit(cache=True, nogil=True)
def _descending_many_into(order, key, bits):
    """`descending_into` for more than BUCKETS_ABOVE keys (bits: their bit patterns): buckets,
    else counting places or the radix sort."""
    if not _descending_by_buckets(order, bits):
        if key.size <= SMALL_SORT:
            _count_places(order, key, True)
        else:
            order[:] = _descending_by_bits(bits)


@numba.njit(cache=True, nogil=True)
def descending_order(key):
    """`descending_into`, allocating the order. key: [n] -> [n] int64"""
    order = np.empty(key.size, np.int64)
    descending_into(order, key)
    return order


@numba.njit(cache=True, nogil=True)
def ascending_into(order, key):
    """`descending_into`, smallest first."""
    if key.size <= SMALL_SORT:
        _count_places(order, key, False)
    else:
        order[:] = np.argsort(key, kind="mergesort")


@numba.njit(cache=True, nogil=True, _nrt=False)
def resort(by_load, loads, moved):
    """Restores ascending order of by_load (indices into loads) after loads[moved] changed."""
    m = by_load.size
    i = 0
    while by_load[i] != moved:
        i += 1
    while i > 0 and loads[by_load[i - 1]] > loads[moved]:
        by_load[i] = by_load[i - 1]
        i -= 1
    while i < m - 1 and loads[by_load[i + 1]] < loads[moved]:
        by_load[i] = by_load[i + 1]
        i += 1
    by_load[i] = moved
