"""Sorting kernels: stable radix sorts of non-negative floats, largest first (numba's argsort is
several times slower at a few hundred keys), and restoring an order after one key changed."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _descending_by_bits(bits):
    """Stable LSD radix sort, largest first, of the bit patterns of non-negative floats (which
    order as the floats do). bits: [n] uint32 or uint64 -> [n] int64"""
    n = bits.size
    order, spare = np.arange(n), np.empty(n, np.int64)
    counts = np.empty(257, np.int64)
    for shift in range(0, 8 * bits.itemsize, 8):
        counts[:] = 0
        for i in range(n):
            counts[256 - ((bits[order[i]] >> shift) & 255)] += 1
        for digit in range(256):
            counts[digit + 1] += counts[digit]
        for i in range(n):
            digit = 255 - ((bits[order[i]] >> shift) & 255)
            spare[counts[digit]] = order[i]
            counts[digit] += 1
        order, spare = spare, order
    return order


@numba.njit(cache=True, nogil=True)
def descending_order(key):
    """Indices by key, largest first, lower index first among equals.
    key: [n] non-negative float32 or float64 -> [n] int64"""
    if key.itemsize == 4:
        return _descending_by_bits(key.view(np.uint32))
    return _descending_by_bits(key.view(np.uint64))


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
