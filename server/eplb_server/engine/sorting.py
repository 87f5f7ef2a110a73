"""Sorting kernels: stable sorts of non-negative floats, largest first (radix; insertion for few
keys; numba's argsort is several times slower at a few hundred keys), and restoring an order
after one key changed."""

from __future__ import annotations

import numba
import numpy as np

# Up to this many keys insertion sort is faster than the radix sort's 4 or 8 passes over 256
# buckets (measured: 0.4 vs 0.9 us for 32 float32 keys, 1.5 vs 1.7 us for 64).
SMALL_SORT = 64


@numba.njit(cache=True, nogil=True)
def _descending_by_insertion(key):
    """Stable insertion sort, largest first. key: [n] -> [n] int64"""
    order = np.arange(key.size)
    for k in range(1, key.size):
        i, j = order[k], k
        while j > 0 and key[order[j - 1]] < key[i]:
            order[j] = order[j - 1]
            j -= 1
        order[j] = i
    return order


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
def descending_order(key):
    """Indices by key, largest first, lower index first among equals.
    key: [n] non-negative float32 or float64 -> [n] int64"""
    if key.size <= SMALL_SORT:
        return _descending_by_insertion(key)
    if key.itemsize == 4:
        return _descending_by_bits(key.view(np.uint32))
    return _descending_by_bits(key.view(np.uint64))


@numba.njit(cache=True, nogil=True, _nrt=False)
def ascending_into(order, key):
    """Fills order [n] with 0 .. n - 1 by key [n], smallest first, lower index first among
    equals (insertion sort: for few keys, without allocating)."""
    for k in range(order.size):
        j = k
        while j > 0 and key[order[j - 1]] > key[k]:
            order[j] = order[j - 1]
            j -= 1
        order[j] = k


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
