"""Hard planning problems and checks derived without the engine: loads, GPU peaks, lower bounds."""

from __future__ import annotations

import heapq

import numpy as np

FAMILIES = ("lognormal", "pareto", "hot group", "hot experts", "small integers", "two values",
            "many zeros", "equal but one", "zipf", "lognormal tokens")


def hard_loads(rng: np.random.Generator, layers: int, experts: int, groups: int) -> np.ndarray:
    """[layers, experts] float64, layer i of family i % len(FAMILIES): skewed and heavy-tailed
    loads, hot groups, hot experts, ties, zeros."""
    group_size = experts // groups
    out = np.empty((layers, experts))
    for layer in range(layers):
        family = FAMILIES[layer % len(FAMILIES)]
        if family == "lognormal":
            w = rng.lognormal(0.0, rng.choice([0.5, 1.0, 2.0, 3.0]), experts)
        elif family == "pareto":
            w = rng.pareto(rng.choice([0.7, 1.0, 1.5, 3.0]), experts) + 1.0
        elif family == "hot group":
            w = rng.lognormal(0.0, 1.0, experts)
            g = rng.integers(groups)
            w[g * group_size:(g + 1) * group_size] *= rng.choice([3.0, 10.0, 30.0])
        elif family == "hot experts":
            w = rng.lognormal(0.0, 0.5, experts)
            hot = rng.choice(experts, size=rng.integers(1, 4), replace=False)
            w[hot] *= rng.choice([5.0, 30.0, 200.0, 1000.0], size=hot.size)
        elif family == "small integers":  # many ties, some zeros
            w = rng.integers(0, 4, experts).astype(np.float64)
        elif family == "two values":  # ties only
            w = np.where(rng.random(experts) < 0.5, 10.0, 20.0)
        elif family == "many zeros":
            w = rng.lognormal(0.0, 1.5, experts) * (rng.random(experts) < rng.uniform(0.2, 0.6))
        elif family == "equal but one":
            w = np.full(experts, 7.0)
            w[rng.integers(experts)] = rng.choice([14.0, 70.0, 700.0])
        elif family == "zipf":
            w = 1.0 / (1.0 + rng.permutation(experts)) ** rng.choice([0.8, 1.2, 2.0])
        else:  # token counts
            w = np.round(rng.lognormal(0.0, 1.2, experts) * 100)
        if not w.any():
            w[rng.integers(experts)] = 1.0
        out[layer] = w
    return out


def gpu_peaks(weight: np.ndarray, phy2log: np.ndarray, num_gpus: int) -> np.ndarray:
    """[L, E], [L, P] -> [L] peak GPU load, each replica carrying w / (its expert's replicas)."""
    layers, slots = phy2log.shape
    counts = np.stack([np.bincount(row, minlength=weight.shape[1]) for row in phy2log])
    piece = np.take_along_axis(weight / np.maximum(counts, 1), phy2log, axis=1)
    return piece.reshape(layers, num_gpus, slots // num_gpus).sum(-1).max(-1)


def min_max_piece(weight: np.ndarray, num_slots: int) -> float:
    """R* = min over replica counts (>= 1, summing to num_slots) of max w / c: each extra replica
    to the largest piece (Adams' method attains it)."""
    heap = [(-w, i, 1) for i, w in enumerate(weight)]
    heapq.heapify(heap)
    for _ in range(num_slots - weight.size):
        w, i, c = heapq.heappop(heap)
        heapq.heappush(heap, (w * c / (c + 1), i, c + 1))
    return -heap[0][0]


def global_bound(weight: np.ndarray, num_slots: int, num_gpus: int) -> np.ndarray:
    """[L, E] -> [L] max(W / G, R*), the BRIEF's bound on any plan's peak."""
    return np.array([max(w.sum() / num_gpus, min_max_piece(w, num_slots)) for w in weight])


def plan_is_valid(phy2log, log2phy, logcnt, num_experts: int, num_slots: int) -> None:
    """Asserts the DeepSeek conventions: counts match phy2log and log2phy points back at it."""
    phy2log, log2phy, logcnt = (np.asarray(a) for a in (phy2log, log2phy, logcnt))
    layers = phy2log.shape[0]
    assert phy2log.shape == (layers, num_slots) and logcnt.shape == (layers, num_experts)
    counts = np.stack([np.bincount(row, minlength=num_experts) for row in phy2log])
    assert (counts == logcnt).all() and (logcnt >= 1).all()
    assert log2phy.shape == (layers, num_experts, logcnt.max())
    valid = log2phy >= 0
    assert (valid.sum(-1) == logcnt).all()
    assert (np.sort(valid, axis=-1)[..., ::-1] == valid).all()  # -1 only as padding
    layer, expert, _ = np.nonzero(valid)
    assert (phy2log[layer, log2phy[valid]] == expert).all()


def groups_stay_on_nodes(phy2log: np.ndarray, num_groups: int, num_nodes: int,
                         num_experts: int) -> bool:
    """Every replica of a group's experts sits on one node (slot p on node p // (P / N))."""
    layers, slots = phy2log.shape
    group = phy2log // (num_experts // num_groups)
    node = np.broadcast_to(np.arange(slots) // (slots // num_nodes), group.shape)
    first = np.full((layers, num_groups), -1)
    for layer in range(layers):
        first[layer, group[layer]] = node[layer]  # any one node of each group
    return bool((np.take_along_axis(first, group, axis=1) == node).all())
