"""The refined engine: groups to nodes, then replication and packing per node."""

from __future__ import annotations

import numba
import numpy as np

from . import packing
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
                num_gpus: int) -> np.ndarray:
    """weight: [L, E], node_groups: [L, N, K/N] groups of each node in order -> phy2log [L, P].

    Node n owns slots [n * P/N, (n + 1) * P/N); every replica of a group stays on its node.
    """
    num_layers, num_nodes, _ = node_groups.shape
    node_experts, node_weight = _node_problems(weight, np.ascontiguousarray(node_groups))
    # Lighter nodes need not be refined far below the heaviest node's mean (LIGHT_NODE_MARGIN;
    # measured: the same layer peaks on 2380 layers, hierarchical plans in 0.70x the time).
    heaviest = node_weight.sum(1).reshape(num_layers, num_nodes).max(1) * num_nodes / num_gpus
    heaviest *= 1.0 - LIGHT_NODE_MARGIN
    local = _pack(node_weight, num_replicas // num_nodes, num_gpus // num_nodes,
                  np.repeat(heaviest, num_nodes))
    return _to_layers(node_experts, local, num_layers)


@numba.njit(cache=True, nogil=True)
def _node_problems(weight, node_groups):
    """weight: [L, E], node_groups: [L, N, K/N] -> (node_experts [L * N, E/N] int64 (each
    node's experts, its groups in order), node_weight [L * N, E/N])."""
    num_layers, num_nodes, groups_per_node = node_groups.shape
    group_size = weight.shape[1] // (num_nodes * groups_per_node)
    node_experts = np.empty((num_layers * num_nodes, groups_per_node * group_size), np.int64)
    node_weight = np.empty((num_layers * num_nodes, groups_per_node * group_size))
    for layer in range(num_layers):
        for node in range(num_nodes):
            row, j = layer * num_nodes + node, 0
            for k in range(groups_per_node):
                first = node_groups[layer, node, k] * group_size
                for expert in range(first, first + group_size):
                    node_experts[row, j] = expert
                    node_weight[row, j] = weight[layer, expert]
                    j += 1
    return node_experts, node_weight


@numba.njit(cache=True, nogil=True)
def _to_layers(node_experts, local, num_layers):
    """node_experts: [L * N, E/N], local: [L * N, P/N] node-local expert per slot -> [L, P]."""
    rows, slots = local.shape
    num_nodes = rows // num_layers
    phy2log = np.empty((num_layers, num_nodes * slots), np.int64)
    for row in range(rows):
        layer, node = row // num_nodes, row % num_nodes
        for s in range(slots):
            phy2log[layer, node * slots + s] = node_experts[row, local[row, s]]
    return phy2log


def _pack(weight: np.ndarray, num_slots: int, num_gpus: int,
          enough: np.ndarray | None = None) -> np.ndarray:
    """weight: [B, E] -> phy2log [B, num_slots]: each row replicated and packed on its own.
    enough: [B], a peak below which a row needs no refinement (default: none)."""
    enough = np.zeros(weight.shape[0]) if enough is None else enough
    return packing.solve_batch(np.ascontiguousarray(weight), num_slots, num_gpus,
                               min(MAX_MOVES_PER_ITEM * num_slots, MAX_MOVES), COUNT_SEARCH_STEPS,
                               np.ascontiguousarray(enough, dtype=np.float64))


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
                 keep_tolerance: float = 0.0) -> np.ndarray:
    """Hierarchical plan (num_nodes == 1 and num_groups == 1 give the global one).

    weight: [L, E] float64 -> phy2log [L, P] int64. Groups go to nodes as the reference puts
    them, so each layer's plan is never worse than the reference's; where the exact
    assignment (least loaded heaviest node) differs, both are planned and the better is kept.
    current_node_of_group: [L, K], the current mapping's node of each group (rows of -1:
    none); a layer keeps it where its heaviest node is within keep_tolerance of the exact
    assignment's, and such layers are not compared with the reference.
    """
    num_layers, num_experts = weight.shape
    if num_groups == 1:  # global; with groups, even one node orders them as the reference does
        return _pack(weight, num_replicas, num_gpus)
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
    phy2log = _plan_nodes(weight, _groups_by_node(node, rank, num_nodes), num_replicas, num_gpus)
    differ = np.flatnonzero((exact_peak < assignment_peak(group_load, node, num_nodes)) & ~fixed)
    if differ.size:
        by_node = _groups_by_node(exact_node[differ], _load_rank(group_load[differ]), num_nodes)
        other = _plan_nodes(weight[differ], by_node, num_replicas, num_gpus)
        better = gpu_loads(weight[differ], other, num_gpus).max(1) \
            < gpu_loads(weight[differ], phy2log[differ], num_gpus).max(1)
        phy2log[differ[better]] = other[better]
    return phy2log
