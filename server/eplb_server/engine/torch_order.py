"""The order torch's CPU sort gives equal keys (`sort(descending=True)`, not stable: libstdc++'s
introsort), so that the reference's tie order needs no torch in the process."""

from __future__ import annotations

import numba
import numpy as np

_THRESHOLD = 16  # ranges this short are left to the final insertion sort
_STACK = 2 * 64  # the depth limit of any int64-sized sort: pending ranges never exceed it


@numba.njit(cache=True, nogil=True)
def _before(a, b):
    """torch's descending comparator: NaN first, then larger first."""
    return (np.isnan(a) and not np.isnan(b)) or a > b


@numba.njit(cache=True, nogil=True)
def _swap(key, order, i, j):
    key[i], key[j] = key[j], key[i]
    order[i], order[j] = order[j], order[i]


@numba.njit(cache=True, nogil=True)
def _partition(key, order, first, last):
    """Median of three moved to `first`, then an unguarded partition of [first + 1, last)."""
    a, b, c = first + 1, first + (last - first) // 2, last - 1
    if _before(key[a], key[b]):
        median = b if _before(key[b], key[c]) else (c if _before(key[a], key[c]) else a)
    else:
        median = a if _before(key[a], key[c]) else (c if _before(key[b], key[c]) else b)
    _swap(key, order, first, median)
    lo, hi = first + 1, last
    while True:
        while _before(key[lo], key[first]):
            lo += 1
        hi -= 1
        while _before(key[first], key[hi]):
            hi -= 1
        if not lo < hi:
            return lo
        _swap(key, order, lo, hi)
        lo += 1


@numba.njit(cache=True, nogil=True)
def _sift(key, order, base, hole, size, value_key, value_order):
    """Moves the hole at base + hole down to a leaf, then the value up to its place."""
    top, child = hole, hole
    while child < (size - 1) // 2:
        child = 2 * (child + 1)
        if _before(key[base + child], key[base + child - 1]):
            child -= 1
        key[base + hole], order[base + hole] = key[base + child], order[base + child]
        hole = child
    if size % 2 == 0 and child == (size - 2) // 2:
        child = 2 * (child + 1)
        key[base + hole], order[base + hole] = key[base + child - 1], order[base + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2
    while hole > top and _before(key[base + parent], value_key):
        key[base + hole], order[base + hole] = key[base + parent], order[base + parent]
        hole = parent
        parent = (hole - 1) // 2
    key[base + hole], order[base + hole] = value_key, value_order


@numba.njit(cache=True, nogil=True)
def _heapsort(key, order, first, last):
    """The introsort's fallback once its depth limit is spent."""
    size = last - first
    for parent in range((size - 2) // 2, -1, -1):
        _sift(key, order, first, parent, size, key[first + parent], order[first + parent])
    for end in range(last - 1, first, -1):
        value_key, value_order = key[end], order[end]
        key[end], order[end] = key[first], order[first]
        _sift(key, order, first, 0, end - first, value_key, value_order)


@numba.njit(cache=True, nogil=True)
def _insert(key, order, i, first):
    """Inserts element i into the sorted [first, i); `first` bounds the scan only when the
    element goes first (the unguarded insertion relies on a smaller element before it)."""
    value_key, value_order = key[i], order[i]
    if first >= 0 and _before(value_key, key[first]):
        for j in range(i, first, -1):
            key[j], order[j] = key[j - 1], order[j - 1]
        key[first], order[first] = value_key, value_order
        return
    while _before(value_key, key[i - 1]):
        key[i], order[i] = key[i - 1], order[i - 1]
        i -= 1
    key[i], order[i] = value_key, value_order


@numba.njit(cache=True, nogil=True)
def _sort(key, order, stack):
    """Sorts key (and order alongside) in place as torch's CPU sort does. stack: [_STACK, 3]
    int64 scratch for the ranges the introsort leaves for later (at most its depth limit)."""
    n = key.size
    if n > _THRESHOLD:
        depth, m = 0, n
        while m > 1:  # depth limit: twice floor(log2(n))
            depth, m = depth + 2, m >> 1
        stack[0, 0], stack[0, 1], stack[0, 2] = 0, n, depth
        top = 1
        while top:
            top -= 1
            first, last, depth = stack[top, 0], stack[top, 1], stack[top, 2]
            while last - first > _THRESHOLD:
                if depth == 0:
                    _heapsort(key, order, first, last)
                    break
                depth -= 1
                cut = _partition(key, order, first, last)
                stack[top, 0], stack[top, 1], stack[top, 2] = cut, last, depth
                top += 1
                last = cut
    for i in range(1, min(n, _THRESHOLD)):
        _insert(key, order, i, 0)
    for i in range(_THRESHOLD, n):
        _insert(key, order, i, -1)


@numba.njit(cache=True, nogil=True)
def descending_orders(rows):
    """rows: [L, n] float -> [L, n] int64, torch.sort(rows, -1, descending=True).indices."""
    num_rows, n = rows.shape
    orders = np.empty((num_rows, n), np.int64)
    key, stack = np.empty(n, rows.dtype), np.empty((_STACK, 3), np.int64)
    for r in range(num_rows):
        key[:] = rows[r]
        for i in range(n):
            orders[r, i] = i
        _sort(key, orders[r], stack)
    return orders
