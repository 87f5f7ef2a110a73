"""Scores a placement: GPU loads, balancedness, lower bounds and the gap (BRIEF's definitions)."""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from . import packing
from .hierarchy import node_peak_bound


@dataclass(frozen=True)
class Score:
    """How good a mapping is for the loads it is scored on: float64 arrays (numpy here; CPU torch
    tensors where engine.evaluate was given torch tensors)."""

    gpu_load: np.ndarray  # [L, G]
    layer_balancedness: np.ndarray  # [L], mean / max GPU load
    balancedness: float  # sum over layers of mean / sum of max
    layer_max_load: np.ndarray  # [L]
    layer_lower_bound: np.ndarray  # [L]
    layer_gap: np.ndarray  # [L], max / bound - 1
    mean_gap: float
    max_gap: float
    window_balancedness: np.ndarray | None = None  # [T], for a load history


def gpu_loads(weight: np.ndarray, phy2log: np.ndarray, num_gpus: int) -> np.ndarray:
    """weight: [L, E], phy2log: [L, P] -> [L, G], each replica carrying w / logcnt."""
    return _gpu_loads(np.ascontiguousarray(weight, dtype=np.float64),
                      np.ascontiguousarray(phy2log, dtype=np.int64), num_gpus)


@numba.njit(cache=True, nogil=True)
def _gpu_loads(weight, phy2log, num_gpus):
    num_layers, num_slots = phy2log.shape
    per_gpu = num_slots // num_gpus
    loads = np.zeros((num_layers, num_gpus))
    counts = np.zeros(weight.shape[1])
    for layer in range(num_layers):
        row = phy2log[layer]
        counts[:] = 0.0
        for slot in range(num_slots):
            counts[row[slot]] += 1.0
        slot = 0
        for gpu in range(num_gpus):  # (no integer division per slot: it costs more than the sum)
            total = 0.0
            for _ in range(per_gpu):
                total += weight[layer, row[slot]] / counts[row[slot]]
                slot += 1
            loads[layer, gpu] = total
    return loads


@numba.njit(cache=True, nogil=True, _nrt=False)
def _sift_down_smallest(heap, i):
    """Restores a min-heap of values below position i."""
    size = heap.size
    while True:
        child = 2 * i + 1
        if child >= size:
            return
        if child + 1 < size and heap[child + 1] < heap[child]:
            child += 1
        if heap[child] >= heap[i]:
            return
        heap[i], heap[child] = heap[child], heap[i]
        i = child


@numba.njit(cache=True, nogil=True, _nrt=False)
def _largest(values, top):
    """Fills top [k] with the k largest of values [n] (k <= n), in no particular order."""
    k = top.size
    for i in range(k):
        top[i] = values[i]
    for i in range(k // 2 - 1, -1, -1):
        _sift_down_smallest(top, i)
    for i in range(k, values.size):
        if values[i] > top[0]:
            top[0] = values[i]
            _sift_down_smallest(top, 0)


@numba.njit(cache=True, nogil=True)
def _replication_bound(weight, num_slots):
    """The largest piece once each extra slot has gone to the expert with the largest piece,
    as `packing.adams_counts` gives them. Only the S + 1 heaviest experts can matter (one of
    them gets no extra slot and keeps its whole weight, at least any other expert's), and the
    value does not depend on ties: heaps over their weights, no sort."""
    num_layers, num_experts = weight.shape
    bound = np.zeros(num_layers)
    extra = num_slots - num_experts
    size = min(max(extra, 0) + 1, num_experts)
    if size == 0:
        return bound
    ids = np.arange(size)
    top, piece = np.empty(size), np.empty(size)
    heap, count = np.empty(size, np.int64), np.empty(size)
    for layer in range(num_layers):
        _largest(weight[layer], top)
        piece[:] = top
        count[:] = 1.0
        heap[:] = ids
        for i in range(size // 2 - 1, -1, -1):
            packing.sift_down(heap, size, piece, ids, i)
        for _ in range(extra):
            first = heap[0]
            count[first] += 1.0
            piece[first] = top[first] / count[first]
            packing.sift_down(heap, size, piece, ids, 0)
        bound[layer] = piece[heap[0]]
    return bound


def replication_bound(weight: np.ndarray, num_slots: int) -> np.ndarray:
    """R* per layer: the smallest possible largest replica load. weight: [L, E] -> [L]."""
    return _replication_bound(np.ascontiguousarray(weight, dtype=np.float64), num_slots)


def lower_bound(weight: np.ndarray, num_slots: int, num_groups: int, num_nodes: int,
                num_gpus: int, hierarchical: bool) -> np.ndarray:
    """Lower bound on any plan's peak GPU load per layer. weight: [L, E] -> [L].

    Global: max(W / G, R*). Hierarchical also: the lightest possible heaviest node / GPUs per
    node, and each group's R* with the slots its node has beyond one per expert (a node's
    P / N slots hold its E / N experts, so no group gets more extra replicas than that).
    """
    weight = np.ascontiguousarray(weight, dtype=np.float64)
    bound = np.maximum(weight.sum(1) / num_gpus, replication_bound(weight, num_slots))
    if hierarchical and num_nodes > 1:
        num_layers, num_experts = weight.shape
        group_weight = weight.reshape(num_layers * num_groups, -1)
        group_slots = group_weight.shape[1] + (num_slots - num_experts) // num_nodes
        group_bound = replication_bound(group_weight, group_slots).reshape(num_layers, -1)
        group_load = group_weight.sum(1).reshape(num_layers, num_groups)
        bound = np.maximum.reduce([
            bound, group_bound.max(1),
            node_peak_bound(group_load, num_nodes) / (num_gpus // num_nodes)])
    return bound


def balance_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 1 where den is 0 (a layer with no load is balanced)."""
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 1.0)


def score(weight: np.ndarray, phy2log: np.ndarray, num_groups: int, num_nodes: int,
          num_gpus: int, hierarchical: bool, bound: np.ndarray | None = None) -> Score:
    """weight: [L, E] or a history [T, L, E] (scored on its sum, plus per window); phy2log: [L, P].

    bound: [L], the lower bound when already known for these loads and topology.
    """
    window_balancedness = None
    if weight.ndim == 3:
        per_window = [gpu_loads(w, phy2log, num_gpus) for w in weight]
        window_balancedness = np.array(
            [float(balance_ratio(g.mean(1).sum(), g.max(1).sum())) for g in per_window])
        weight = weight.sum(0)
    load = gpu_loads(weight, phy2log, num_gpus)
    peak, mean = load.max(1), load.mean(1)
    if bound is None:
        bound = lower_bound(weight, phy2log.shape[1], num_groups, num_nodes, num_gpus,
                            hierarchical)
    gap = balance_ratio(peak, bound) - 1.0
    return Score(
        gpu_load=load,
        layer_balancedness=balance_ratio(mean, peak),
        balancedness=float(balance_ratio(mean.sum(), peak.sum())),
        layer_max_load=peak,
        layer_lower_bound=np.asarray(bound, dtype=np.float64),
        layer_gap=gap,
        mean_gap=float(gap.mean()) if gap.size else 0.0,
        max_gap=float(gap.max()) if gap.size else 0.0,
        window_balancedness=window_balancedness,
    )
