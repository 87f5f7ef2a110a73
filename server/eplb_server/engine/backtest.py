"""Choosing a history's forecast by backtesting inside it (issue 24): plan on windows up to t,
score on window t + 1.

A forecast turns the windows seen so far [t, E] into the load [E] a plan is fitted to
(`FORECASTS`). Each candidate is backtested on the last `MAX_STEPS` steps of the history with the
fast plan (`_fast_plan`: Adams replica counts and LPT, the reference's algorithm, no refinement;
plus the candidate's own swaps for the peak forecasts), which ranks forecasts by what decides
them: how far the next window's GPU loads stray from the forecast's, not the last 0.01% of
packing. A bound-only proxy (max of mean load and largest piece, no packing) ranked them wrong:
0.764 mean next-window balancedness of its choices against 0.827 for the fast plan's on the
design series of bench/history.py. `run_backtest` picks one forecast for the whole model
(backtested on `MAX_LAYERS` evenly spaced layers), or per layer with a margin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from . import rows
from .history import REFINE_PARTNERS, _refine_layer, refine_layers
from .mapping import replica_ranks
from .packing import ordered_adams_counts
from .sorting import descending_order

# (name, kind, parameter). Kinds: 0 sum, 1 recency (half-life in windows), 2 last window,
# 3 robust (mean + k std), 4 expected peak (the sum plan, swapped to lower the windows' peaks),
# 5 drift peak (the last window's plan, swapped to lower the peaks of the last window moved by
# each of the last `parameter` window-to-window change ratios: headroom for drift, which the
# expected peak over stale windows does not give; additive changes instead of ratios closed
# 0.34 of the distance over families instead of 0.35 on the design series).
FORECASTS = (("sum", 0, 0.0), ("recency:1", 1, 1.0), ("recency:2", 1, 2.0),
             ("recency:4", 1, 4.0), ("last", 2, 0.0), ("robust:1", 3, 1.0),
             ("expected_peak", 4, 0.0), ("drift_peak", 5, 5.0))
NAMES = tuple(name for name, _, _ in FORECASTS)
EXPECTED_PEAK, DRIFT_PEAK = NAMES.index("expected_peak"), NAMES.index("drift_peak")
DRIFT_FLOOR = 0.05  # of the mean expert load: added to both sides of a change ratio
MAX_STEPS = 4  # backtest steps, the most recent (6 chose as well as 4 on bench/history.py, at 1.5x)
# Per-layer choices (a layer departing from the whole model's choice where its own backtest peak
# is lower by a margin) did not pay on bench/history.py: 4 steps per layer are noisy. Mean
# next-window balancedness on the design series, margins 0 / 0.01 / 0.03 / whole model only:
# 0.8242 / 0.8264 / 0.8286 / 0.8309. None: one forecast for the whole model.
LAYER_MARGIN = None
MAX_LAYERS = 16  # layers a whole-model choice is backtested on (evenly spaced)
# Near-ties over 4 backtest steps are noise: the choice is the first forecast of PREFERENCE whose
# backtest cost is within this fraction of the best one's. First the expected peak (the hedged
# incumbent, the best single objective on average), then the simple baselines, then the rest.
INCUMBENT_MARGIN = 0.005
PREFERENCE = tuple(NAMES.index(n) for n in ("expected_peak", "last", "sum", "recency:1",
                                            "recency:2", "recency:4", "robust:1", "drift_peak"))
# Swap moves per layer and slot of a GPU for the two peak candidates in the backtest.
BACKTEST_REFINE_MOVES_PER_SLOT = 1


@dataclass(frozen=True)
class Backtest:
    """What the backtest found. candidates: forecast names; balancedness [C]: each forecast's
    backtest balancedness (sum over steps and layers of mean / of peak GPU load, fast plans);
    layer_choice [L]: index of the forecast each layer was planned with; chosen: the forecast
    for the whole model; steps: backtest steps; layers: layers backtested; adaptive: the
    backtest balancedness of the per-layer choices."""

    candidates: tuple[str, ...]
    balancedness: np.ndarray
    layer_choice: np.ndarray
    chosen: str
    steps: int
    layers: int
    adaptive: float


@numba.njit(cache=True, nogil=True)
def _forecast(windows, kind, param, out):
    """windows: [t, E] (oldest first) -> out [E], on the scale of their sum."""
    num_windows, num_experts = windows.shape
    if kind == 2 or kind == 5:
        for e in range(num_experts):
            out[e] = windows[num_windows - 1, e] * num_windows
        return
    if kind == 1:
        total = 0.0
        for t in range(num_windows):
            total += 0.5 ** ((num_windows - 1 - t) / param)
        out[:] = 0.0
        for t in range(num_windows):
            w = 0.5 ** ((num_windows - 1 - t) / param) * num_windows / total
            for e in range(num_experts):
                out[e] += w * windows[t, e]
        return
    out[:] = 0.0
    for t in range(num_windows):
        for e in range(num_experts):
            out[e] += windows[t, e]
    if kind == 3:
        for e in range(num_experts):
            mean = out[e] / num_windows
            var = 0.0
            for t in range(num_windows):
                var += (windows[t, e] - mean) ** 2
            out[e] = (mean + param * np.sqrt(var / num_windows)) * num_windows


@numba.njit(cache=True, nogil=True)
def drift_scenarios(windows, changes):
    """windows: [t, E] (oldest first) -> [m + 1, E]: the last window moved by each of the last
    m = min(changes, t - 1) window-to-window change ratios, then the last window itself."""
    num_windows, num_experts = windows.shape
    m = min(int(changes), num_windows - 1)
    last = windows[num_windows - 1]
    floor = DRIFT_FLOOR * last.sum() / num_experts + 1e-300
    out = np.empty((m + 1, num_experts))
    for j in range(m):
        before, after = windows[num_windows - 1 - m + j], windows[num_windows - m + j]
        for e in range(num_experts):
            out[j, e] = last[e] * (after[e] + floor) / (before[e] + floor)
    out[m] = last
    return out


@numba.njit(cache=True, nogil=True, _nrt=False)
def _sift_lightest(heap, size, gpu_load, i):
    """Restores a min-heap of GPU ids by load (lower id among equals) below position i."""
    while True:
        child = 2 * i + 1
        if child >= size:
            return
        a, b = heap[child], heap[child + 1] if child + 1 < size else -1
        if b >= 0 and (gpu_load[b] < gpu_load[a] or (gpu_load[b] == gpu_load[a] and b < a)):
            child, a = child + 1, b
        g = heap[i]
        if gpu_load[g] < gpu_load[a] or (gpu_load[g] == gpu_load[a] and g < a):
            return
        heap[i], heap[child] = a, g
        i = child


@numba.njit(cache=True, nogil=True)
def _pack(load, experts, num_slots, first_gpu, num_gpus, per_gpu, phy2log, counts, piece):
    """Adams counts of load[experts] [n] over num_slots slots into counts, and LPT of their
    pieces (heaviest to the lightest GPU with room) over GPUs first_gpu .. + num_gpus of
    phy2log [P] (slot p on GPU p // per_gpu); piece [>= n] is scratch. Replicas of one expert
    are equal pieces: the experts are sorted once, by piece."""
    n = experts.size
    sub = load[experts]
    sub_counts = ordered_adams_counts(sub, descending_order(sub), num_slots)
    for i in range(n):
        counts[experts[i]] = sub_counts[i]
        piece[i] = sub[i] / sub_counts[i]
    gpu_load = np.zeros(num_gpus)
    filled = np.zeros(num_gpus, np.int64)
    heap = np.arange(num_gpus)
    size = num_gpus
    for i in descending_order(piece[:n]):
        for _ in range(sub_counts[i]):
            g = heap[0]
            phy2log[(first_gpu + g) * per_gpu + filled[g]] = experts[i]
            filled[g] += 1
            gpu_load[g] += piece[i]
            if filled[g] == per_gpu:
                size -= 1
                heap[0] = heap[size]
            _sift_lightest(heap, size, gpu_load, 0)


@numba.njit(cache=True, nogil=True)
def _fast_plan(load, num_slots, num_groups, num_nodes, num_gpus, phy2log, counts, piece):
    """The fast plan of load [E] into phy2log [P] and counts [E]: global (num_nodes 1), or
    hierarchical: groups to nodes by LPT on group load (K / N per node), then each node's
    experts packed on its P / N slots and G / N GPUs."""
    num_experts = load.size
    per_gpu = num_slots // num_gpus
    if num_nodes == 1:
        _pack(load, np.arange(num_experts), num_slots, np.int64(0), num_gpus, per_gpu, phy2log,
              counts, piece)
        return
    per_group = num_experts // num_groups
    groups_per_node = num_groups // num_nodes
    group_load = np.zeros(num_groups)
    for e in range(num_experts):
        group_load[e // per_group] += load[e]
    node_load = np.zeros(num_nodes)
    taken = np.zeros(num_nodes, np.int64)
    node_groups = np.empty((num_nodes, groups_per_node), np.int64)
    for k in descending_order(group_load):
        best = -1
        for node in range(num_nodes):
            if taken[node] < groups_per_node and (best < 0 or node_load[node] < node_load[best]):
                best = node
        node_groups[best, taken[best]] = k
        taken[best] += 1
        node_load[best] += group_load[k]
    experts = np.empty(groups_per_node * per_group, np.int64)
    gpus_per_node = num_gpus // num_nodes
    for node in range(num_nodes):
        for j in range(groups_per_node):
            for i in range(per_group):
                experts[j * per_group + i] = node_groups[node, j] * per_group + i
        _pack(load, experts, num_slots // num_nodes, node * gpus_per_node, gpus_per_node,
              per_gpu, phy2log, counts, piece)


@numba.njit(cache=True, nogil=True)
def _peak_on(actual, phy2log, counts, num_gpus):
    per_gpu = phy2log.size // num_gpus
    peak = 0.0
    for g in range(num_gpus):
        total = 0.0
        for p in range(g * per_gpu, (g + 1) * per_gpu):
            total += actual[phy2log[p]] / counts[phy2log[p]]
        peak = max(peak, total)
    return peak


def backtest_peaks(history, kinds, params, num_steps, num_slots, num_groups, num_nodes, num_gpus,
                   refine_moves):
    """history: [T, L, E] float64 -> peaks [S, C, L]: the peak GPU load on window
    T - S + s of the fast plan fitted to forecast c of windows 0 .. T - S - 1 + s
    (hierarchical where num_nodes > 1: swaps stay within a node). Layers in parallel where
    the plan's thread count allows (rows.run)."""
    num_layers = history.shape[1]
    peaks = np.zeros((num_steps, kinds.size, num_layers))
    rows.run(_backtest_rows, num_layers, history, kinds, params, num_steps, num_slots,
             num_groups, num_nodes, num_gpus, refine_moves, peaks)
    return peaks


@numba.njit(cache=True, nogil=True)
def _backtest_rows(history, kinds, params, num_steps, num_slots, num_groups, num_nodes, num_gpus,
                   refine_moves, peaks, start, stop):
    """backtest_peaks' layers [start, stop), into peaks [S, C, L]."""
    gpus_per_node = num_gpus // num_nodes
    num_windows, num_layers, num_experts = history.shape
    num_candidates = kinds.size
    partners = np.int64(REFINE_PARTNERS)  # not a literal: _refine_layer compiles once
    for layer in range(start, stop):
        windows = np.ascontiguousarray(history[:, layer])
        load = np.empty(num_experts)
        phy2log = np.empty(num_slots, np.int64)
        counts = np.empty(num_experts, np.int64)
        piece = np.empty(num_experts)
        for s in range(num_steps):
            seen = num_windows - num_steps + s  # windows the plan is made from
            actual = windows[seen]
            for c in range(num_candidates):
                _forecast(windows[:seen], kinds[c], params[c], load)
                _fast_plan(load, num_slots, num_groups, num_nodes, num_gpus, phy2log, counts,
                           piece)
                if kinds[c] == 4 and seen > 1:
                    _refine_layer(windows[:seen], phy2log, counts, num_gpus, gpus_per_node,
                                  refine_moves, partners)
                elif kinds[c] == 5 and seen > 1:
                    _refine_layer(drift_scenarios(windows[:seen], params[c]), phy2log, counts,
                                  num_gpus, gpus_per_node, refine_moves, partners)
                peaks[s, c, layer] = _peak_on(actual, phy2log, counts, num_gpus)


def forecast(history: np.ndarray, name: str) -> np.ndarray:
    """history: [T, L, E] -> [L, E], forecast `name` on the scale of the summed load (the sum
    itself for "sum" and "expected_peak", the last window for "drift_peak": their swaps come
    with the plan)."""
    _, kind, param = FORECASTS[NAMES.index(name)]
    if kind in (0, 4):
        return history.sum(0)
    num_windows, num_layers, num_experts = history.shape
    out = np.empty((num_layers, num_experts))
    for layer in range(num_layers):
        _forecast(np.ascontiguousarray(history[:, layer]), kind, param, out[layer])
    return out


def scenarios(history: np.ndarray) -> np.ndarray:
    """history: [T, L, E] -> the drift_peak forecast's scenarios [m + 1, L, E]."""
    changes = FORECASTS[DRIFT_PEAK][2]
    return np.stack([drift_scenarios(np.ascontiguousarray(history[:, layer]), changes)
                     for layer in range(history.shape[1])], axis=1)


def backtest_layers(num_layers: int, max_layers: int = MAX_LAYERS) -> np.ndarray:
    """The layers a whole-model choice is backtested on: all, or `max_layers` evenly spaced."""
    if num_layers <= max_layers:
        return np.arange(num_layers)
    return np.unique(np.linspace(0, num_layers - 1, max_layers).round().astype(np.int64))


def run_backtest(history: np.ndarray, num_slots: int, num_gpus: int, num_groups: int = 1,
                 num_nodes: int = 1, layer_margin: float | None = LAYER_MARGIN,
                 max_steps: int = MAX_STEPS, max_layers: int = MAX_LAYERS) -> Backtest:
    """history: [T, L, E] with T >= 3 -> the Backtest of every forecast and the choices.
    num_groups, num_nodes: the node constraint of hierarchical plans (1, 1: global).

    Steps are scored like aggregate balancedness: per step, the sum over layers of the peak over
    the sum over layers of the mean GPU load, so every step weighs the same. With layer_margin
    None one forecast serves every layer, backtested on `backtest_layers`; with a margin, every
    layer is backtested and departs from the whole model's choice where its own forecast's
    backtest peak is lower by that fraction.
    """
    num_windows, num_layers = history.shape[:2]
    steps = min(max_steps, num_windows - 2)
    layers = backtest_layers(num_layers, num_layers if layer_margin is not None else max_layers)
    kinds = np.array([k for _, k, _ in FORECASTS], np.int64)
    params = np.array([p for _, _, p in FORECASTS])
    moves = BACKTEST_REFINE_MOVES_PER_SLOT * (num_slots // num_gpus)
    part = np.ascontiguousarray(history[:, layers], dtype=np.float64)
    peaks = backtest_peaks(part, kinds, params, steps, num_slots, num_groups, num_nodes,
                           num_gpus, moves)
    mean = part[num_windows - steps:].sum(2).sum(1) / num_gpus  # [S], summed over layers
    mean = np.where(mean > 0, mean, 1.0)
    cost = (peaks / mean[:, None, None]).sum(0)  # [C, layers]
    total = cost.sum(1)
    chosen = next(c for c in PREFERENCE if total[c] * (1.0 - INCUMBENT_MARGIN) <= total.min())
    layer_choice = np.full(num_layers, chosen, np.int64)
    if layer_margin is not None:
        best = np.argmin(cost, 0)
        departs = cost[best, np.arange(num_layers)] < cost[chosen] * (1.0 - layer_margin)
        layer_choice = np.where(departs, best, chosen)
    adaptive = cost[layer_choice[layers], np.arange(layers.size)].sum()
    with np.errstate(divide="ignore"):
        return Backtest(candidates=NAMES, balancedness=np.where(total > 0, steps / total, 1.0),
                        layer_choice=layer_choice, chosen=NAMES[chosen], steps=steps,
                        layers=int(layers.size),
                        adaptive=float(steps / adaptive) if adaptive > 0 else 1.0)


def adaptive_planner(history: np.ndarray, plan_arrays, num_replicas: int, num_gpus: int,
                     num_groups: int = 1, num_nodes: int = 1,
                     layer_margin: float | None = LAYER_MARGIN):
    """history: [T, L, E], T >= 3 -> (load [L, E]: each layer's chosen forecast, "adaptive",
    planner, Backtest), as `history.history_planner` returns them. Layers that chose a peak
    forecast are planned on its load and then swapped for its windows' peaks (the history's,
    or the drift scenarios')."""
    backtest = run_backtest(history, num_replicas, num_gpus, num_groups, num_nodes, layer_margin)
    load = np.empty(history.shape[1:])
    for index in np.unique(backtest.layer_choice):
        layers = backtest.layer_choice == index
        load[layers] = forecast(history[:, layers], NAMES[index])
    peak_layers = np.flatnonzero(backtest.layer_choice == EXPECTED_PEAK)
    drift_layers = np.flatnonzero(backtest.layer_choice == DRIFT_PEAK)

    def planner(load, num_replicas, num_groups, num_nodes, num_gpus, policy):
        phy2log, rank, logcnt = plan_arrays(np.ascontiguousarray(load), num_replicas,
                                            num_groups, num_nodes, num_gpus, policy)
        for layers, windows in ((peak_layers, lambda: history), (drift_layers,
                                                                 lambda: scenarios(history))):
            if layers.size:
                phy2log = refine_layers(windows(), phy2log, logcnt, layers, num_replicas,
                                        num_nodes, num_gpus, policy)
        return phy2log, replica_ranks(phy2log, history.shape[2]), logcnt

    return load, "adaptive", planner, backtest
