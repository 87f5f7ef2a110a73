"""The refined engine: exact group-to-node assignment, then replication and packing per node."""

from __future__ import annotations

import numpy as np

from . import packing
from .hierarchy import best_node_loads

MAX_MOVES_PER_ITEM = 4  # refinement cap: moves per replica
COUNT_SEARCH_STEPS = 64  # replica-count moves per problem at 2 slots per GPU


def refined_plan(weight: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int,
                 num_gpus: int) -> np.ndarray:
    """Hierarchical plan (num_nodes == 1 and num_groups == 1 give the global one).

    weight: [L, E] float64 -> phy2log [L, P] int64. Every replica of a group's experts stays on
    the group's node; node n owns slots [n * P/N, (n + 1) * P/N).
    """
    num_layers, num_experts = weight.shape
    group_size = num_experts // num_groups
    if num_nodes > 1:
        group_load = weight.reshape(num_layers, num_groups, group_size).sum(-1)
        node_of_group, _ = best_node_loads(group_load, num_nodes)
        # Node n's experts: its groups in ascending order, each group's experts in order.
        group_order = np.argsort(node_of_group * num_groups + np.arange(num_groups), axis=1)
        node_experts = (group_order[:, :, None] * group_size + np.arange(group_size))
        node_experts = node_experts.reshape(num_layers * num_nodes, -1)
    else:
        node_experts = np.broadcast_to(np.arange(num_experts), (num_layers, num_experts))
    layer_of_row = np.repeat(np.arange(num_layers), num_nodes)
    node_weight = np.ascontiguousarray(weight[layer_of_row[:, None], node_experts])
    slots_per_node = num_replicas // num_nodes
    local = packing.solve_batch(node_weight, slots_per_node, num_gpus // num_nodes,
                                MAX_MOVES_PER_ITEM * slots_per_node, COUNT_SEARCH_STEPS)
    phy2log = np.take_along_axis(node_experts, local, 1)
    return phy2log.reshape(num_layers, num_replicas)
