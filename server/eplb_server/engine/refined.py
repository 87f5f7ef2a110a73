"""The refined engine: groups to nodes, then replication and packing per node."""

from __future__ import annotations

import numba
import numpy as np

from . import packing, rows
from .budget import Budget, refine_in_chunks
from .hierarchy import assignment_peak, best_node_loads
from .reference import reference_group_packing
from .scoring import gpu_loads

MAX_MOVES_PER_ITEM = 4  # refinement cap: moves per replica ...
MAX_MOVES = 1024  # ... and per problem, which bounds the time of the largest requests
COUNT_SEARCH_STEPS = 64  # replica-count moves per problem at 2 slots per GPU
# Hierarchical plans refine a node down to its own target or to this fraction below the mean GPU
# load of the layer's heaviest node, whichever is higher: the layer's peak cannot be lower.
LIGHT_NODE_MARGIN = 0.01


def _plan_nodes(weight: np.ndarray, node_groups: np.ndarray, num_replicas: int,
                num_gpus: int, budget: Budget | None = None) -> np.ndarray:
    """weight: [L, E], node_groups: [L, N, K/N] groups of each node in order -> phy2log [L, P].

    Node n owns slots [n * P/N, (n + 1) * P/N); every replica of a group stays on its node.
    Layers left when `budget` runs out keep their start packing (no refinement, no count search).
    """
    num_nodes = node_groups.shape[1]
    slots = num_replicas // num_nodes
    margin = LIGHT_NODE_MARGIN if num_nodes > 1 else 1.0  # one node: no floor
    weight, node_groups = np.ascontiguousarray(weight), np.ascontiguousarray(node_groups)
    moves = min(MAX_MOVES_PER_ITEM * slots, MAX_MOVES)

    def layers(start: int, stop: int, refine: bool) -> np.ndarray:
        return _solve_nodes(weight[start:stop], node_groups[start:stop], slots,
                            num_gpus // num_nodes, moves if refine else 0,
                            COUNT_SEARCH_STEPS if refine else 0, margin)
    return refine_in_chunks(layers, weight.shape[0], budget)


def _solve_nodes(weight, node_groups, slots_per_node, gpus_per_node, max_moves, count_steps,
                 margin):
    """Each node of each layer replicated and packed on its own, the (layer, node) rows in
    parallel where the plan's thread count allows (rows.run).

    weight: [L, E] (any finite non-negative loads, subnormal and all-zero layers included),
    node_groups: [L, N, K/N] -> phy2log [L, N * slots_per_node]. Lighter nodes
    need not be refined far below the layer's heaviest node's mean GPU load, less `margin`
    (measured: the same layer peaks on 2380 layers, hierarchical plans in 0.70x the time).
    """
    num_layers, num_nodes = node_groups.shape[:2]
    phy2log = np.empty((num_layers, num_nodes * slots_per_node), np.int64)
    rows.run(_solve_node_rows, num_layers * num_nodes, weight, node_groups, slots_per_node,
             gpus_per_node, max_moves, count_steps, margin, phy2log)
    return phy2log


@numba.njit(cache=True, nogil=True)
def _solve_node_rows(weight, node_groups, slots_per_node, gpus_per_node, max_moves, count_steps,
                     margin, phy2log, start, stop):
    """_solve_nodes' rows layer * N + node in [start, stop), into phy2log [L, N * slots]."""
    num_layers, num_nodes, groups_per_node = node_groups.shape
    group_size = weight.shape[1] // (num_nodes * groups_per_node)
    node_size = groups_per_node * group_size
    heaviest = np.zeros(num_layers)  # each layer's heaviest node load (this range's layers)
    for layer in range(start // num_nodes, (stop + num_nodes - 1) // num_nodes):
        for n in range(num_nodes):
            load = 0.0
            for k in range(groups_per_node):
                first = node_groups[layer, n, k] * group_size
                for expert in range(first, first + group_size):
                    load += weight[layer, expert]
            heaviest[layer] = max(heaviest[layer], load)
    for row in range(start, stop):
        layer, node = row // num_nodes, row % num_nodes
        experts = np.empty(node_size, np.int64)
        for k in range(groups_per_node):
            for j in range(group_size):
                experts[k * group_size + j] = node_groups[layer, node, k] * group_size + j
        local = packing.solve_one(weight[layer][experts], slots_per_node, gpus_per_node,
                                  max_moves, count_steps,
                                  heaviest[layer] / gpus_per_node * (1.0 - margin))
        for s in range(slots_per_node):
            phy2log[layer, node * slots_per_node + s] = experts[local[s]]


def _load_rank(group_load: np.ndarray) -> np.ndarray:
    """[L, K] -> each group's place by load, heaviest 0 (lower index first among equals)."""
    return np.argsort(np.argsort(-group_load, axis=1, kind="stable"), axis=1)


def _groups_by_node(node_of_group: np.ndarray, order_key: np.ndarray, num_nodes: int):
    """[L, K] node of each group, [L, K] key ordering groups within a node -> [L, N, K/N]."""
    num_layers, num_groups = node_of_group.shape
    order = np.argsort(node_of_group * num_groups + order_key, axis=1, kind="stable")
    return order.reshape(num_layers, num_nodes, num_groups // num_nodes)


def refined_plan(weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int,
                 num_gpus: int, current_node_of_group: np.ndarray | None = None,
                 keep_tolerance: float = 0.0, budget: Budget | None = None) -> np.ndarray:
    """Hierarchical plan (num_nodes == 1 and num_groups == 1 give the global one).

    weight: [L, E] float64 -> phy2log [L, P] int64. Groups go to nodes as the reference puts
    them, so each layer's plan is never worse than the reference's; where the exact
    assignment (least loaded heaviest node) differs, both are planned and the better is kept.
    current_node_of_group: [L, K], the current mapping's node of each group (rows of -1:
    none); a layer keeps it where its heaviest node is within keep_tolerance of the exact
    assignment's, and such layers are not compared with the reference.
    budget: refinement stops when it runs out (then budget.finished is False); the layers left
    keep their start packings, the reference's or better.
    """
    num_layers, num_experts = weight.shape
    if num_groups == 1:  # global; with groups, even one node orders them as the reference does
        return _plan_nodes(weight, np.zeros((num_layers, 1, 1), np.int64), num_replicas,
                           num_gpus, budget)
    group_load = weight.reshape(num_layers, num_groups, -1).sum(-1)
    node, rank = reference_group_packing(weight.astype(np.float32), num_groups, num_nodes)
    exact_node, exact_peak = best_node_loads(group_load, num_nodes)
    fixed = np.zeros(num_layers, bool)
    if current_node_of_group is not None:
        kept = current_node_of_group
        fixed = (kept >= 0).all(1) & (assignment_peak(group_load, np.maximum(kept, 0), num_nodes)
                                      <= exact_peak * (1.0 + keep_tolerance))
        node = np.where(fixed[:, None], kept, node)
        rank = np.where(fixed[:, None], _load_rank(group_load), rank)
    phy2log = _plan_nodes(weight, _groups_by_node(node, rank, num_nodes), num_replicas, num_gpus,
                          budget)
    differ = np.flatnonzero((exact_peak < assignment_peak(group_load, node, num_nodes)) & ~fixed)
    if differ.size:
        by_node = _groups_by_node(exact_node[differ], _load_rank(group_load[differ]), num_nodes)
        other = _plan_nodes(weight[differ], by_node, num_replicas, num_gpus, budget)
        better = gpu_loads(weight[differ], other, num_gpus).max(1) \
            < gpu_loads(weight[differ], phy2log[differ], num_gpus).max(1)
        phy2log[differ[better]] = other[better]
    return phy2log
