"""Planning from a load history [T, L, E] (issue 6).

Objectives (names as the API and the RPC spell them):

- ``"sum"``: plan on the summed load (what every published planner does today).
- ``"recency"``: plan on an exponentially recency-weighted load; window ``t`` (oldest first) of
  ``T`` weighs ``0.5 ** ((T - 1 - t) / half_life)``.
- ``"robust"``: plan on ``mean + robust_k * std`` per expert over the windows, so volatile experts
  earn replicas.
- ``"expected_peak"``: minimise the sum over windows of each window's peak GPU load. The engine
  plans the summed load, then slots are swapped between GPUs (within a node for hierarchical
  plans) while that value drops (`refine_windows`), so that GPU loads are even in every window,
  not only on average. Only strictly improving steps are taken from the sum plan, so the result
  is never worse than the sum plan on those windows.
- ``"adaptive"`` (issue 24): per request, and per layer where that pays, the forecast (sum,
  recency with half-lives 1, 2 and 4, last window, robust, expected peak) that did best when
  backtested inside the history: plan on windows up to t, score on t + 1 (engine/backtest.py).
  Histories of fewer than 3 windows have nothing to backtest on and get "expected_peak".
- ``"default"``: the objective chosen by measurement (bench/history.py), see DEFAULT_OBJECTIVE.

A history with T = 1 is planned exactly like the single window it holds, whatever the objective.
"""

from __future__ import annotations

from typing import Callable

import numba
import numpy as np

from . import rows
from .mapping import replica_ranks
from .scoring import gpu_loads

OBJECTIVES = ("sum", "expected_peak", "recency", "robust", "adaptive")
# Chosen on bench/history.py (next-window balancedness, T = 8); see docs/history.md.
DEFAULT_OBJECTIVE = "adaptive"
MIN_BACKTEST_WINDOWS = 3  # one step: plan on windows 0..1, score on window 2
DEFAULT_HALF_LIFE = 2.0  # windows
DEFAULT_ROBUST_K = 1.0
# Beyond a few standard deviations the mean no longer matters; 100 leaves room and keeps
# mean + k * std of any valid history far from float overflow (checked again after reducing).
MAX_ROBUST_K = 100.0
# Same limit as api.MAX_LAYER_LOAD (api imports this module): a reduced layer total fits float32.
MAX_LAYER_LOAD = float(np.finfo(np.float32).max)
REFINE_MOVES_PER_SLOT = 2  # multi-window swap moves per layer, per slot of a GPU
# GPUs tried as swap partners of the peak GPU per move; on bench/history.py 4 closed 0.50 of
# the distance, 3 closes 0.49 (2.8-3.0x a single plan's time once single plans got faster),
# 2 closes 0.47 at 2.5x (next-window balancedness 0.9202 instead of 0.9212).
REFINE_PARTNERS = 2

PlanArrays = Callable[..., tuple]


def resolve_objective(objective: str) -> str:
    if objective == "default":
        return DEFAULT_OBJECTIVE
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES + ('default',)}, got {objective!r}")
    return objective


def _check_params(half_life: float, robust_k: float) -> tuple[float, float]:
    if not np.isfinite(half_life) or half_life < 0:
        raise ValueError(f"half_life must be a finite number >= 0 (0: default), got {half_life}")
    if not np.isfinite(robust_k) or not 0 <= robust_k <= MAX_ROBUST_K:
        raise ValueError(f"robust_k must be a number in [0, {MAX_ROBUST_K:g}] (0: default), "
                         f"got {robust_k}")
    return (half_life or DEFAULT_HALF_LIFE), (robust_k or DEFAULT_ROBUST_K)


def _check_reduced(load: np.ndarray, name: str) -> np.ndarray:
    """The reduced load [L, E] meets the engine's input contract (finite, non-negative, each
    layer's total within float32), or ValueError naming the parameter that broke it."""
    with np.errstate(over="ignore", invalid="ignore"):
        totals = load.sum(1)
    if not (np.isfinite(load).all() and (load >= 0).all() and (totals <= MAX_LAYER_LOAD).all()):
        raise ValueError(f"{name} is too large for these loads: the reduced load of a layer must "
                         f"total at most {MAX_LAYER_LOAD:.4g} (float32)")
    return np.ascontiguousarray(load + 0.0)  # -0.0 becomes 0.0 (see loads.checked_copy)


def recency_load(history: np.ndarray, half_life: float) -> np.ndarray:
    """[T, L, E] -> [L, E]: recency-weighted mean, weights 0.5 ** (age / half_life)."""
    num_windows = history.shape[0]
    age = np.arange(num_windows - 1, -1, -1, dtype=np.float64)
    with np.errstate(over="ignore", divide="ignore"):  # a tiny half-life: old windows weigh 0
        weights = 0.5 ** (age / half_life)
    return np.tensordot(weights / weights.sum(), history, axes=1)


def robust_load(history: np.ndarray, robust_k: float) -> np.ndarray:
    """[T, L, E] -> [L, E]: mean + k * std per expert."""
    return history.mean(0) + robust_k * history.std(0)


def reduce_history(history: np.ndarray, objective: str, half_life: float = 0.0,
                   robust_k: float = 0.0) -> tuple[np.ndarray, str]:
    """history: [T, L, E] -> (load [L, E] a plan is fitted to, the objective used).

    For "expected_peak" the load returned is the summed one (the plan itself comes from
    `history_planner`'s planner, `plan_expected_peak`). "adaptive" needs the topology (its
    backtest plans): here it is reduced as "expected_peak", as a history too short to backtest.
    """
    objective = resolve_objective(objective)
    half_life, robust_k = _check_params(half_life, robust_k)
    if objective == "adaptive":
        objective = "expected_peak"
    if history.shape[0] == 1:
        return history[0], objective
    if objective == "recency":
        return _check_reduced(recency_load(history, half_life), "half_life"), objective
    if objective == "robust":
        with np.errstate(over="ignore", invalid="ignore"):
            load = robust_load(history, robust_k)
        return _check_reduced(load, "robust_k"), objective
    return history.sum(0), objective


def window_peaks(history: np.ndarray, phy2log: np.ndarray, num_gpus: int) -> np.ndarray:
    """[T, L, E], [L, P] -> [T, L]: each window's peak GPU load per layer."""
    return np.stack([gpu_loads(w, phy2log, num_gpus).max(1) for w in history])


def expected_peak(history: np.ndarray, phy2log: np.ndarray, num_gpus: int) -> np.ndarray:
    """The expected-peak objective per layer: sum over windows of the peak GPU load. -> [L]."""
    return window_peaks(history, phy2log, num_gpus).sum(0)


def plan_expected_peak(history: np.ndarray, load: np.ndarray, plan_arrays: PlanArrays,
                       num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int,
                       policy: str):
    """The summed-load plan, then swaps that lower the sum over windows of the peak GPU load.

    history: [T, L, E]; load: [L, E], its sum over windows. -> (phy2log, rank, logcnt) as
    plan_arrays returns them. A recency-weighted candidate plan, chosen per layer, gained only
    0.01 of the sum->bound distance on bench/history.py for one more plan: the swaps are what
    pay.
    """
    phy2log, rank, logcnt = plan_arrays(np.ascontiguousarray(load), num_replicas, num_groups,
                                        num_nodes, num_gpus, policy)
    if policy == "deepseek" or num_replicas == num_gpus:  # reference mode / nothing to swap
        return phy2log, rank, logcnt
    phy2log = refine_layers(history, phy2log, logcnt, np.arange(phy2log.shape[0]), num_replicas,
                            num_nodes, num_gpus, policy)
    return phy2log, replica_ranks(phy2log, history.shape[2]), logcnt


def refine_layers(history: np.ndarray, phy2log: np.ndarray, logcnt: np.ndarray, layers,
                  num_replicas: int, num_nodes: int, num_gpus: int, policy: str) -> np.ndarray:
    """Expected-peak swaps on the given layers of phy2log [L, P] (a copy); history [T, L, E]."""
    phy2log = np.array(phy2log, dtype=np.int64, order="C")
    layers = np.asarray(layers, dtype=np.int64)
    if policy == "deepseek" or num_replicas == num_gpus or not layers.size:
        return phy2log
    gpus_per_node = num_gpus // num_nodes if policy == "hierarchical" else num_gpus
    part = np.ascontiguousarray(phy2log[layers])
    refine_windows(np.ascontiguousarray(history[:, layers]), part,
                   np.ascontiguousarray(logcnt[layers]), num_gpus, gpus_per_node,
                   REFINE_MOVES_PER_SLOT * (num_replicas // num_gpus), REFINE_PARTNERS)
    phy2log[layers] = part
    return phy2log


def history_planner(history: np.ndarray, objective: str, half_life: float, robust_k: float,
                    plan_arrays: PlanArrays, num_replicas: int, num_gpus: int,
                    num_groups: int = 1, num_nodes: int = 1):
    """The hook api.plan calls for a [T, L, E] weight (under the engine lock: the adaptive
    objective's backtest runs here; num_groups, num_nodes: the node constraint it plans under,
    1 and 1 for global plans).

    -> (load [L, E] for what follows planning (migration), objective used, planner, backtest:
    a backtest.Backtest for "adaptive", else None), where planner(load, P, K, N, G, policy) ->
    (phy2log, rank, logcnt).
    """
    resolved = resolve_objective(objective)
    if resolved == "adaptive" and history.shape[0] >= MIN_BACKTEST_WINDOWS:
        _check_params(half_life, robust_k)
        from .backtest import adaptive_planner
        return adaptive_planner(history, plan_arrays, num_replicas, num_gpus, num_groups,
                                num_nodes)
    load, objective = reduce_history(history, objective, half_life, robust_k)
    if objective != "expected_peak" or history.shape[0] == 1:
        return load, objective, plan_arrays, None

    def planner(summed, num_replicas, num_groups, num_nodes, num_gpus, policy):
        return plan_expected_peak(history, summed, plan_arrays, num_replicas, num_groups,
                                  num_nodes, num_gpus, policy)

    return load, objective, planner, None


# ---------------------------------------------------------------- multi-window packing
# reassoc lets the sums over windows vectorise (measured: 0.86-0.90x the plan time, same plans).
@numba.njit(cache=True, nogil=True, fastmath={"reassoc", "nsz"})
def _refine_layer(history, phy2log, counts, num_gpus, gpus_per_node, max_moves, max_partners):
    """Swaps slots between GPUs (within a node) while the sum over windows of the peak drops.

    history: [T, E] float64, phy2log: [P] int64 (changed in place), counts: [E] int64.
    Each move takes the GPU that is the peak in the most windows and the best swap of one of
    its slots with a slot of one of the `max_partners` GPUs of its node that are lightest where
    it peaks. Replica counts do not change.
    """
    num_windows = history.shape[0]
    num_slots = phy2log.size
    per_gpu = num_slots // num_gpus
    slot_load = np.empty((num_slots, num_windows))  # window-minor: the scans run over t
    for t in range(num_windows):
        for p in range(num_slots):
            e = phy2log[p]
            slot_load[p, t] = history[t, e] / counts[e]
    load = np.zeros((num_gpus, num_windows))
    for t in range(num_windows):
        for p in range(num_slots):
            load[p // per_gpu, t] += slot_load[p, t]
    top = np.empty((num_windows, 3), np.int64)  # the three heaviest GPUs per window
    for t in range(num_windows):
        _top_three(load, t, top)
    peak_count = np.zeros(num_gpus, np.int64)
    light = np.empty(gpus_per_node)
    rest = np.empty(num_windows)  # a window's peak among the GPUs a swap leaves alone
    peak = np.empty(num_windows)
    num_partners = min(max_partners, gpus_per_node - 1)
    partners = np.empty(max(1, num_partners), np.int64)
    for _ in range(max_moves):
        peak_count[:] = 0
        for t in range(num_windows):
            peak[t] = load[top[t, 0], t]
            peak_count[top[t, 0]] += 1
        src = np.argmax(peak_count)
        node = src // gpus_per_node
        best_delta, best_a, best_b = -1e-12, -1, -1
        # Partners: the GPUs of src's node that are lightest in the windows where src peaks.
        first = node * gpus_per_node
        light[:] = 0.0
        for t in range(num_windows):
            if top[t, 0] == src:
                for k in range(gpus_per_node):
                    light[k] += load[first + k, t]
        light[src - first] = np.inf
        for k in range(num_partners):  # the lightest, lightest first
            pick = np.argmin(light)
            partners[k] = first + pick
            light[pick] = np.inf
        for dst in partners[:num_partners]:
            for t in range(num_windows):
                rest[t] = 0.0
                for k in range(3):
                    g = top[t, k]
                    if g >= 0 and g != src and g != dst:
                        rest[t] = load[g, t]
                        break
            for a in range(src * per_gpu, (src + 1) * per_gpu):
                for b in range(dst * per_gpu, (dst + 1) * per_gpu):
                    if phy2log[a] == phy2log[b]:
                        continue
                    delta = 0.0
                    for t in range(num_windows):
                        d = slot_load[b, t] - slot_load[a, t]
                        delta += max(load[src, t] + d, load[dst, t] - d, rest[t]) - peak[t]
                    if delta < best_delta:
                        best_delta, best_a, best_b = delta, a, b
        if best_a < 0:
            break
        dst = best_b // per_gpu
        for t in range(num_windows):
            d = slot_load[best_b, t] - slot_load[best_a, t]
            load[src, t] += d
            load[dst, t] -= d
            slot_load[best_a, t], slot_load[best_b, t] = slot_load[best_b, t], slot_load[best_a, t]
        phy2log[best_a], phy2log[best_b] = phy2log[best_b], phy2log[best_a]
        for t in range(num_windows):  # only src and dst moved: elsewhere the top three stay
            third = top[t, 2]
            if third < 0 or src == top[t, 0] or src == top[t, 1] or src == third \
                    or dst == top[t, 0] or dst == top[t, 1] or dst == third \
                    or load[src, t] >= load[third, t] or load[dst, t] >= load[third, t]:
                _top_three(load, t, top)
    return phy2log


@numba.njit(cache=True, nogil=True, _nrt=False)
def _top_three(load, t, top):
    """top[t] = the three heaviest GPUs of window t in load [G, T], lower index among equals
    (-1 where there are fewer GPUs)."""
    a = b = c = -1
    for g in range(load.shape[0]):
        x = load[g, t]
        if a < 0 or x > load[a, t]:
            c, b, a = b, a, g
        elif b < 0 or x > load[b, t]:
            c, b = b, g
        elif c < 0 or x > load[c, t]:
            c = g
    top[t, 0], top[t, 1], top[t, 2] = a, b, c


def refine_windows(history, phy2log, counts, num_gpus, gpus_per_node, max_moves, max_partners):
    """[T, L, E], [L, P] (changed in place), [L, E] -> phy2log, refined layer by layer (in
    parallel where the plan's thread count allows: rows.run)."""
    rows.run(_refine_window_rows, phy2log.shape[0], history, phy2log, counts, num_gpus,
             gpus_per_node, max_moves, max_partners)
    return phy2log


@numba.njit(cache=True, nogil=True)
def _refine_window_rows(history, phy2log, counts, num_gpus, gpus_per_node, max_moves,
                        max_partners, start, stop):
    """refine_windows' layers [start, stop)."""
    for layer in range(start, stop):
        _refine_layer(np.ascontiguousarray(history[:, layer]), phy2log[layer], counts[layer],
                      num_gpus, gpus_per_node, max_moves, max_partners)
