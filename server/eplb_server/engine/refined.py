"""The refined engine: groups to nodes, then replication and packing per node."""

from __future__ import annotations

import numpy as np

from . import packing
from .hierarchy import assignment_peak, best_node_loads
from .reference import reference_group_packing
from .scoring import gpu_loads

MAX_MOVES_PER_ITEM = 4  # refinement cap: moves per replica ...
MAX_MOVES = 1024  # ... and per problem, which bounds the time of the largest requests
COUNT_SEARCH_STEPS = 64  # replica-count moves per problem at 2 slots per GPU


def _plan_nodes(weight: np.ndarray, node_groups: np.ndarray, num_replicas: int,
                num_gpus: int) -> np.ndarray:
    """weight: [L, E], node_groups: [L, N, K/N] groups of each node in order -> phy2log [L, P].

    Node n owns slots [n * P/N, (n + 1) * P/N); every replica of a group stays on its node.
    """
    num_layers, num_nodes, _ = node_groups.shape
    group_size = weight.shape[1] // (node_groups.shape[1] * node_groups.shape[2])
    node_experts = (node_groups[..., None] * group_size + np.arange(group_size))
    node_experts = node_experts.reshape(num_layers * num_nodes, -1)
    layer_of_row = np.repeat(np.arange(num_layers), num_nodes)
    node_weight = weight[layer_of_row[:, None], node_experts]
    local = _pack(node_weight, num_replicas // num_nodes, num_gpus // num_nodes)
    return np.take_along_axis(node_experts, local, 1).reshape(num_layers, num_replicas)


def _pack(weight: np.ndarray, num_slots: int, num_gpus: int) -> np.ndarray:
    """weight: [B, E] -> phy2log [B, num_slots]: each row replicated and packed on its own."""
    return packing.solve_batch(np.ascontiguousarray(weight), num_slots, num_gpus,
                               min(MAX_MOVES_PER_ITEM * num_slots, MAX_MOVES), COUNT_SEARCH_STEPS)


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
    load_rank = np.argsort(np.argsort(-group_load, axis=1, kind="stable"), axis=1)
    node, rank = reference_group_packing(weight.astype(np.float32), num_groups, num_nodes)
    exact_node, exact_peak = best_node_loads(group_load, num_nodes)
    fixed = np.zeros(num_layers, bool)
    if current_node_of_group is not None:
        kept = current_node_of_group
        fixed = (kept >= 0).all(1) & (assignment_peak(group_load, np.maximum(kept, 0), num_nodes)
                                      <= exact_peak * (1.0 + keep_tolerance))
        node = np.where(fixed[:, None], kept, node)
        rank = np.where(fixed[:, None], load_rank, rank)
    phy2log = _plan_nodes(weight, _groups_by_node(node, rank, num_nodes), num_replicas, num_gpus)
    differ = np.flatnonzero((exact_peak < assignment_peak(group_load, node, num_nodes)) & ~fixed)
    if differ.size:
        other = _plan_nodes(weight[differ],
                            _groups_by_node(exact_node[differ], load_rank[differ], num_nodes),
                            num_replicas, num_gpus)
        better = gpu_loads(weight[differ], other, num_gpus).max(1) \
            < gpu_loads(weight[differ], phy2log[differ], num_gpus).max(1)
        phy2log[differ[better]] = other[better]
    return phy2log
