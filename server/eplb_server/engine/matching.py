"""Maximum-weight assignment of n rows to n columns when few pairs score above zero."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True, _nrt=False)
def _push(heap_key, heap_col, size, key, col):
    """Adds (key, col) to the min-heap heap_*[:size] (ties: lower col first) -> new size."""
    i = size
    while i > 0:
        parent = (i - 1) // 2
        if heap_key[parent] < key or (heap_key[parent] == key and heap_col[parent] < col):
            break
        heap_key[i], heap_col[i] = heap_key[parent], heap_col[parent]
        i = parent
    heap_key[i], heap_col[i] = key, col
    return size + 1


@numba.njit(cache=True, nogil=True, _nrt=False)
def _pop(heap_key, heap_col, size):
    """Removes the smallest entry of heap_*[:size] into position size - 1 -> new size."""
    size -= 1
    top_key, top_col = heap_key[0], heap_col[0]
    key, col = heap_key[size], heap_col[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and (heap_key[child + 1] < heap_key[child] or (
                heap_key[child + 1] == heap_key[child] and heap_col[child + 1] < heap_col[child])):
            child += 1
        if key < heap_key[child] or (key == heap_key[child] and col < heap_col[child]):
            break
        heap_key[i], heap_col[i] = heap_key[child], heap_col[child]
        i = child
    heap_key[i], heap_col[i] = key, col
    heap_key[size], heap_col[size] = top_key, top_col
    return size


@numba.njit(cache=True, nogil=True)
def sparse_max_weight_assignment(row_start, edge_col, edge_weight):
    """Permutation maximising the total weight, every pair not listed weighing 0.

    row_start: [n + 1], edge_col, edge_weight: [m] int64 (weights > 0): row i's pairs are
    edge_*[row_start[i]:row_start[i + 1]]. -> col_of_row [n] int64.

    Shortest augmenting paths (Dijkstra on reduced costs, one row at a time) over the listed
    pairs only, with a private zero-weight column per row standing for "no listed pair": the
    best matching of the listed pairs, its rows left over then take the free columns in order.
    O(n m log m) at worst; searches stay local when rows have few pairs (the relabelling's
    overlaps), where the dense O(n^3) algorithm took ~10 ms per layer at n = 320.
    """
    n = row_start.size - 1
    cols = 2 * n  # column n + i: row i's private "unmatched" column
    # Costs are -weight; potentials keep every reduced cost >= 0 and free columns at 0, so the
    # nearest free column in reduced costs is the cheapest in true costs.
    u = np.zeros(n, np.int64)
    for i in range(n):
        for e in range(row_start[i], row_start[i + 1]):
            u[i] = min(u[i], -edge_weight[e])
    v = np.zeros(cols, np.int64)
    row_of_col = np.full(cols, -1, np.int64)
    col_of_row = np.full(n, -1, np.int64)
    inf = np.iinfo(np.int64).max
    dist = np.full(cols, inf)
    came_from = np.empty(cols, np.int64)  # the row a column was reached from
    done = np.zeros(cols, np.bool_)
    reached = np.empty(cols, np.int64)  # columns whose dist was set, to reset
    heap_key = np.empty(edge_col.size + 2 * n + 1, np.int64)
    heap_col = np.empty(edge_col.size + 2 * n + 1, np.int64)
    for start in range(n):
        num_reached, size, row, base = 0, 0, start, 0
        while True:  # relax row's pairs and its private column, then settle the nearest column
            for k in range(row_start[row + 1] - row_start[row] + 1):
                e = row_start[row] + k
                col, cost = (edge_col[e], -edge_weight[e]) if e < row_start[row + 1] \
                    else (n + row, 0)
                d = base + cost - u[row] - v[col]
                if not done[col] and d < dist[col]:
                    if dist[col] == inf:
                        reached[num_reached] = col
                        num_reached += 1
                    dist[col], came_from[col] = d, row
                    # Heap key 2d + matched: among equal distances a free column ends the search.
                    size = _push(heap_key, heap_col, size, 2 * d + (row_of_col[col] >= 0), col)
            while True:  # the nearest column not yet settled (stale entries skipped)
                size = _pop(heap_key, heap_col, size)
                col = heap_col[size]
                if not done[col] and heap_key[size] == 2 * dist[col] + (row_of_col[col] >= 0):
                    break
            done[col] = True
            if row_of_col[col] < 0:
                break
            row, base = row_of_col[col], dist[col]
        total = dist[col]
        for k in range(num_reached):
            c = reached[k]
            if done[c] and c != col:
                v[c] -= total - dist[c]
                u[row_of_col[c]] += total - dist[c]
            dist[c], done[c] = inf, False
        u[start] += total
        while True:  # augment along the path back to start
            row = came_from[col]
            previous = col_of_row[row]
            col_of_row[row], row_of_col[col] = col, row
            if row == start:
                break
            col = previous
    free = 0
    for i in range(n):
        if col_of_row[i] >= n:
            while row_of_col[free] >= 0:
                free += 1
            col_of_row[i], row_of_col[free] = free, i
    return col_of_row
