"""The GPU plan: groups to nodes, replication, LPT and swap refinement as Triton kernels (one
program per layer or layer x node), torch ops between them; no host sync inside a plan."""

from __future__ import annotations

import functools

import torch

from ..hierarchy import node_partitions
from ..refined import COUNT_SEARCH_STEPS, LIGHT_NODE_MARGIN

from . import kernels
from .count_moves import count_moves
from .packing import lpt, pack_counts, pow2, warps
from .pairing import search_counts


def _node_experts(weight32: torch.Tensor, num_groups: int, num_nodes: int) -> torch.Tensor:
    """The reference's groups-to-nodes LPT. weight32 [L, E] -> experts [L, N, E/N] of each node,
    groups in the order the reference numbers them (by node, then by arrival)."""
    layers, experts = weight32.shape
    arange = torch.arange(experts, device=weight32.device)
    if num_groups == 1:
        return arange.expand(layers, 1, experts)
    size = experts // num_groups
    group_load = weight32.view(layers, num_groups, size).sum(-1)
    loads, order = group_load.sort(dim=-1, descending=True, stable=True)
    pack, rank = lpt(loads.contiguous(), num_nodes)
    key = torch.empty_like(order).scatter_(1, order, pack.long() * num_groups + rank.long())
    return _experts_of(key.argsort(-1), size, num_nodes)


def _experts_of(groups: torch.Tensor, size: int, num_nodes: int) -> torch.Tensor:
    """groups [L, K] ordered by node (K/N each) -> experts [L, N, E/N]"""
    arange = torch.arange(size, device=groups.device)
    return (groups[..., None] * size + arange).view(groups.shape[0], num_nodes, -1)


def _exact_node_experts(weight64: torch.Tensor, num_groups: int, num_nodes: int):
    """The group-to-node assignment with the lightest heaviest node (as engine.hierarchy: the
    i-th heaviest group with the i-th lightest at two per node, else every partition when there
    are few enough), groups heaviest first within a node -> experts [L, N, E/N], or None."""
    layers, experts = weight64.shape
    size = experts // num_groups
    group_load = weight64.view(layers, num_groups, size).sum(-1)
    by_load = group_load.sort(dim=-1, descending=True, stable=True).indices
    if num_groups == 2 * num_nodes:
        groups = torch.stack([by_load[:, :num_nodes], by_load.flip(-1)[:, :num_nodes]], -1)
        return _experts_of(groups.reshape(layers, num_groups), size, num_nodes)
    cached = _partitions(num_groups, num_nodes, weight64.device)
    if cached is None:
        return None
    parts, one_hot = cached  # [A, K], [A, K, N]
    peak = torch.einsum("lk,akn->lan", group_load, one_hot).amax(-1)  # [L, A]
    node = parts[peak.argmin(-1)]  # [L, K]
    rank = torch.empty_like(by_load).scatter_(
        1, by_load, torch.arange(num_groups, device=node.device).expand(layers, -1))
    return _experts_of((node * num_groups + rank).argsort(-1), size, num_nodes)


@functools.lru_cache(maxsize=16)
def _partitions(num_groups: int, num_nodes: int, device: torch.device):
    """engine.hierarchy.node_partitions on the device, made once (a host copy, and one_hot's
    range check, would wait on the device inside a plan) -> ([A, K] int64, [A, K, N] float64
    one-hot) or None."""
    parts = node_partitions(num_groups, num_nodes)
    if parts is None:
        return None
    parts = torch.from_numpy(parts)
    one_hot = torch.nn.functional.one_hot(parts, num_nodes).to(torch.float64)
    return parts.to(device), one_hot.to(device)


def plan_tensors(weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int,
                 num_gpus: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """weight: [L, E] on a CUDA device (or the CPU under TRITON_INTERPRET=1); num_groups and
    num_nodes are the constraint (1, 1: global). -> (phy2log [L, P], replica_rank [L, P],
    logcnt [L, E]) int64 on weight's device.

    Replica counts and the LPT start make the reference's decisions (float32, lowest index among
    equals; groups to nodes as it puts them); refinement only lowers a pack's peak.
    """
    layers = weight.shape[0]
    weight64 = weight.to(torch.float64)
    weight32 = weight64.to(torch.float32)
    experts = _node_experts(weight32, num_groups, num_nodes)  # [L, N, n]
    exact = _exact_node_experts(weight64, num_groups, num_nodes) if num_nodes > 1 else None
    if exact is None:
        phy2log, logcnt, _ = _plan_nodes(weight64, weight32, experts, num_replicas, num_gpus)
    else:  # both assignments in one batch; the exact one where its plan peaks lower
        skip = _node_peak(weight64, exact) >= _node_peak(weight64, experts)  # nothing to gain
        phy2log, logcnt, peak = _plan_nodes(
            weight64.repeat(2, 1), weight32.repeat(2, 1), torch.cat([experts, exact]),
            num_replicas, num_gpus, torch.cat([torch.zeros_like(skip), skip]))
        better = (peak[layers:] < peak[:layers])[:, None]
        phy2log = torch.where(better, phy2log[layers:], phy2log[:layers])
        logcnt = torch.where(better, logcnt[layers:], logcnt[:layers])
    return phy2log, replica_ranks(phy2log, logcnt), logcnt


def _node_peak(weight64, experts):
    """[L, E], each node's experts [L, N, n] -> [L] heaviest node's load"""
    layers = experts.shape[0]
    return weight64.gather(1, experts.reshape(layers, -1)).view(experts.shape).sum(-1).amax(-1)


def _per_node(values: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """[L] -> [L * N], each layer's value for each of its nodes (repeat_interleave, no sync)"""
    return values[:, None].expand(-1, num_nodes).reshape(-1)


def _plan_nodes(weight64, weight32, experts, num_replicas, num_gpus, skip=None):
    """Replicates and packs each node's experts [L, N, n]; layers where skip [L] is set are not
    planned (their peak is inf). -> (phy2log [L, P], logcnt [L, E], peak [L] heaviest GPU)"""
    layers, num_nodes, n = experts.shape
    num_experts = num_nodes * n
    device = weight64.device
    rows = layers * num_nodes
    slots, packs = num_replicas // num_nodes, num_gpus // num_nodes
    flat = experts.reshape(layers, num_experts)
    w32 = weight32.gather(1, flat).view(rows, n)
    w64 = weight64.gather(1, flat).view(rows, n)

    skip = torch.zeros(rows, dtype=torch.bool, device=device) if skip is None \
        else _per_node(skip, num_nodes)
    counts = torch.empty((2 * rows, n), dtype=torch.int32, device=device)
    kernels._replicate[(rows,)](w32, counts, counts[rows:], n, slots - n,
                                packs, BLOCK_E=pow2(n), num_warps=warps(n), **kernels.EXACT)
    if slots == 2 * packs:
        counts[:rows] = search_counts(w64, counts[:rows], slots, packs, COUNT_SEARCH_STEPS)
    enough = torch.zeros(rows, dtype=torch.float64, device=device)
    if num_nodes > 1:  # a lighter node need not go far below the heaviest node's mean
        heaviest = w64.sum(1).view(layers, num_nodes).max(1).values / packs
        enough = _per_node(heaviest * (1.0 - LIGHT_NODE_MARGIN), num_nodes)
    # rows: the reference's counts, then the capped ones (packed too where they differ)
    same = (counts[:rows] == counts[rows:]).all(1) | skip
    pack_expert, peak = pack_counts(w32.repeat(2, 1), w64.repeat(2, 1), counts, slots, packs,
                                    torch.cat([skip, same]), enough.repeat(2))
    capped = (~same & (peak[rows:] < peak[:rows]))[:, None]
    pack_expert = torch.where(capped[..., None], pack_expert[rows:], pack_expert[:rows])
    counts = torch.where(capped, counts[rows:], counts[:rows])
    peak = torch.where(skip, torch.inf, torch.where(capped[:, 0], peak[rows:], peak[:rows]))
    counts, pack_expert, peak = count_moves(w32, w64, counts, pack_expert, peak, slots, packs,
                                            enough)
    local = pack_expert.long().sort(-1).values.view(rows, slots)  # a pack's experts ascending
    phy2log = experts.reshape(rows, n).gather(1, local).view(layers, num_replicas)
    logcnt = torch.zeros((layers, num_experts), dtype=torch.int64, device=device)
    logcnt.scatter_(1, flat, counts.view(layers, num_experts).long())
    return phy2log, logcnt, peak.view(layers, num_nodes).amax(1)


def replica_ranks(phy2log: torch.Tensor, logcnt: torch.Tensor) -> torch.Tensor:
    """phy2log [L, P], logcnt [L, E] -> each slot's rank among its expert's replicas [L, P],
    in slot order."""
    layers, slots = phy2log.shape
    positions = torch.arange(slots, device=phy2log.device).expand(layers, slots)
    order = (phy2log * slots + positions).argsort(1)
    expert = phy2log.gather(1, order)
    start = (logcnt.cumsum(1) - logcnt).gather(1, expert)
    return torch.empty_like(phy2log).scatter_(1, order, positions - start)
