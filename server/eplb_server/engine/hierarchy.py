"""Group-to-node assignment for hierarchical plans: exact by pairing or enumeration."""

from __future__ import annotations

import functools
import math

import numba
import numpy as np

from . import packing
from .sorting import descending_into

MAX_PARTITIONS = 20000


def partition_count(num_groups: int, num_nodes: int) -> int:
    """Ways to split num_groups groups into num_nodes unlabelled nodes of equal size."""
    size = num_groups // num_nodes
    return math.factorial(num_groups) // (math.factorial(size) ** num_nodes
                                           * math.factorial(num_nodes))


@functools.lru_cache(maxsize=16)
def node_partitions(num_groups: int, num_nodes: int):
    """All group-to-node assignments up to relabelling nodes: [count, K] node ids, or None
    when there are more than MAX_PARTITIONS."""
    if partition_count(num_groups, num_nodes) > MAX_PARTITIONS:
        return None
    size = num_groups // num_nodes
    out, node_of, filled = [], [-1] * num_groups, [0] * num_nodes

    def place(group: int, opened: int) -> None:
        if group == num_groups:
            out.append(list(node_of))
            return
        for node in range(min(opened + 1, num_nodes)):
            if filled[node] < size:
                node_of[group], filled[node] = node, filled[node] + 1
                place(group + 1, max(opened, node + 1))
                filled[node] -= 1
        node_of[group] = -1

    place(0, 0)
    return np.array(out, dtype=np.int64)


def best_node_loads(group_load: np.ndarray, num_nodes: int):
    """Assignment minimising the heaviest node, and that node's load.

    group_load: [L, K] -> (node_of_group [L, K] int64, min max node load [L])
    Exact where `exact_node_loads` is; otherwise the refined packer's answer.
    """
    exact = exact_node_loads(group_load, num_nodes)
    if exact is not None:
        return exact
    return _packed_node_loads(np.ascontiguousarray(group_load, dtype=np.float64), num_nodes)


@numba.njit(cache=True, nogil=True)
def _packed_node_loads(group_load, num_nodes):
    """`packing.pack_distinct` of each layer's groups onto nodes.
    [L, K] -> (node_of_group [L, K] int64, heaviest node load [L])"""
    num_layers, num_groups = group_load.shape
    node_of = np.empty((num_layers, num_groups), np.int64)
    peak = np.empty(num_layers)
    for layer in range(num_layers):
        node_of[layer], loads = packing.pack_distinct(group_load[layer], num_nodes)
        peak[layer] = loads.max()
    return node_of, peak


def exact_node_loads(group_load: np.ndarray, num_nodes: int):
    """`best_node_loads` with two groups per node (by pairing) or when the partitions can be
    enumerated; None otherwise."""
    num_groups = group_load.shape[1]
    load = np.ascontiguousarray(group_load, dtype=np.float64)
    if num_groups == 2 * num_nodes:
        return _best_pairing(load)
    parts = node_partitions(num_groups, num_nodes)
    if parts is None:
        return None
    choice, peak = _best_partition(load, parts, num_nodes)
    return parts[choice], peak


@numba.njit(cache=True, nogil=True)
def _best_pairing(group_load):
    """Two groups per node: the i-th heaviest group with the i-th lightest gives the lightest
    heaviest pair (an exchange argument). [L, K] -> (node_of_group [L, K] int64, peak [L])."""
    num_layers, num_groups = group_load.shape
    node_of = np.empty((num_layers, num_groups), np.int64)
    peak = np.zeros(num_layers)
    order = np.empty(num_groups, np.int64)
    for layer in range(num_layers):
        descending_into(order, group_load[layer])
        for node in range(num_groups // 2):
            heavy, light = order[node], order[num_groups - 1 - node]
            node_of[layer, heavy] = node_of[layer, light] = node
            peak[layer] = max(peak[layer], group_load[layer, heavy] + group_load[layer, light])
    return node_of, peak


@numba.njit(cache=True, nogil=True)
def _best_partition(group_load, parts, num_nodes):
    """group_load: [L, K], parts: [C, K] -> (first partition with the lightest heaviest node
    [L] int64, that node's load [L])."""
    num_layers, num_groups = group_load.shape
    num_parts = parts.shape[0]
    size = num_groups // num_nodes
    members = np.empty((num_parts, num_nodes, size), np.int64)  # each node's groups, ascending
    filled = np.zeros(num_nodes, np.int64)
    for c in range(num_parts):
        filled[:] = 0
        for k in range(num_groups):
            members[c, parts[c, k], filled[parts[c, k]]] = k
            filled[parts[c, k]] += 1
    choice = np.zeros(num_layers, np.int64)
    peak = np.full(num_layers, np.inf)
    for layer in range(num_layers):
        best, best_c = np.inf, 0
        for c in range(num_parts):
            heaviest = 0.0
            for n in range(num_nodes):
                load = 0.0
                for j in range(size):
                    load += group_load[layer, members[c, n, j]]
                heaviest = max(heaviest, load)
                if heaviest >= best:  # cannot be strictly lighter
                    break
            if heaviest < best:
                best, best_c = heaviest, c
        peak[layer], choice[layer] = best, best_c
    return choice, peak


def assignment_peak(group_load: np.ndarray, node_of_group: np.ndarray, num_nodes: int):
    """The heaviest node's load under an assignment. group_load, node_of_group: [L, K] -> [L]."""
    return _assignment_peak(np.ascontiguousarray(group_load, dtype=np.float64),
                            np.ascontiguousarray(node_of_group, dtype=np.int64), num_nodes)


@numba.njit(cache=True, nogil=True)
def _assignment_peak(group_load, node_of_group, num_nodes):
    num_layers, num_groups = group_load.shape
    peak = np.empty(num_layers)
    node_load = np.empty(num_nodes)
    for layer in range(num_layers):
        node_load[:] = 0.0
        for k in range(num_groups):
            node_load[node_of_group[layer, k]] += group_load[layer, k]
        peak[layer] = node_load.max()
    return peak


def node_peak_bound(group_load: np.ndarray, num_nodes: int) -> np.ndarray:
    """A lower bound on the heaviest node's load over all assignments. group_load: [L, K] -> [L].

    Exact where `exact_node_loads` is; else the mean node load, or the heaviest group beside the
    lightest ones that fill its node, whichever is larger.
    """
    exact = exact_node_loads(group_load, num_nodes)
    if exact is not None:
        return exact[1]
    num_groups = group_load.shape[1]
    lightest = np.sort(group_load, axis=1)[:, :num_groups // num_nodes - 1].sum(1)
    return np.maximum(group_load.sum(1) / num_nodes, group_load.max(1) + lightest)
