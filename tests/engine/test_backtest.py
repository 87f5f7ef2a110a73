"""The adaptive objective's backtest (issue 24): what it chooses, what it may look at."""

import numpy as np
import pytest

from eplb_server.engine import api
from eplb_server.engine.backtest import (FORECASTS, NAMES, _fast_plan, backtest_layers,
                                         backtest_peaks, forecast, run_backtest, scenarios)
from eplb_server.engine.history import DEFAULT_OBJECTIVE, reduce_history, refine_layers

AVERAGING = ("sum", "recency:4", "robust:1", "expected_peak")  # weigh every window alike
RECENT = ("last", "recency:1", "drift_peak")  # the last window weighs the most
TOPO = (48, 4, 2, 8)  # P, K, N, G for 32 experts


def stationary(seed, windows=8, layers=4, experts=32, tokens=400):
    """Fixed popularity, few tokens per window: the windows differ only by sampling noise."""
    rng = np.random.default_rng(seed)
    pop = np.exp(rng.normal(0, 1, (layers, experts)))
    share = pop / pop.sum(1, keepdims=True)
    return rng.poisson(share * tokens, (windows, layers, experts)).astype(np.float64)


def drifting(seed, windows=8, layers=4, experts=32, step=0.6, tokens=2e5):
    """Popularity a fast random walk with many tokens: the latest window says the most."""
    rng = np.random.default_rng(seed)
    log_pop = rng.normal(0, 1, (layers, experts))
    out = []
    for _ in range(windows):
        log_pop = log_pop + rng.normal(0, step, log_pop.shape)
        share = np.exp(log_pop) / np.exp(log_pop).sum(1, keepdims=True)
        out.append(rng.poisson(share * tokens).astype(np.float64))
    return np.stack(out)


@pytest.mark.parametrize("seed", range(4))
def test_stationary_series_picks_an_averaging_forecast(seed):
    b = run_backtest(stationary(seed), TOPO[0], TOPO[3])
    assert b.chosen in AVERAGING, (b.chosen, dict(zip(b.candidates, b.balancedness.round(4))))
    assert b.balancedness[NAMES.index(b.chosen)] > b.balancedness[NAMES.index("last")]


@pytest.mark.parametrize("seed", range(4))
def test_drifting_series_picks_a_recent_forecast(seed):
    b = run_backtest(drifting(seed), TOPO[0], TOPO[3])
    assert b.chosen in RECENT, (b.chosen, dict(zip(b.candidates, b.balancedness.round(4))))
    assert b.balancedness[NAMES.index(b.chosen)] > b.balancedness[NAMES.index("sum")]


@pytest.mark.parametrize("steps", [1, 3, 4])
def test_a_backtest_step_sees_only_windows_before_the_one_it_is_scored_on(steps):
    history = drifting(7, windows=steps + 2)
    kinds = np.array([k for _, k, _ in FORECASTS], np.int64)
    params = np.array([p for _, _, p in FORECASTS])
    args = (kinds, params, steps, TOPO[0], 1, 1, TOPO[3], 6)
    peaks = backtest_peaks(history, *args)
    first = history.shape[0] - steps  # step s plans on windows < first + s, scores on first + s
    for s in range(steps):
        later = history.copy()
        later[first + s + 1:] = np.random.default_rng(s).permuted(later[first + s + 1:], axis=2)
        np.testing.assert_array_equal(backtest_peaks(later, *args)[:s + 1], peaks[:s + 1])
        scored = history.copy()  # the window scored on does change that step's figures
        scored[first + s] = scored[first + s, :, ::-1]
        assert not np.array_equal(backtest_peaks(scored, *args)[s], peaks[s])


def test_the_default_is_adaptive_and_plans_with_the_chosen_forecast():
    assert DEFAULT_OBJECTIVE == "adaptive"
    for history in (stationary(1), drifting(1)):
        p = api.plan(history, *TOPO, policy="global")
        assert p.objective == "adaptive" and p.backtest is not None
        chosen = p.backtest.chosen
        assert (p.backtest.layer_choice == NAMES.index(chosen)).all()
        if chosen in ("sum", "expected_peak"):
            same = api.plan(history, *TOPO, policy="global", objective=chosen).phy2log
        else:
            same = api.plan(forecast(history, chosen), *TOPO, policy="global")
            if chosen == "drift_peak":  # the last window's plan, swapped against drift
                same = refine_layers(scenarios(history), np.asarray(same.phy2log),
                                     np.asarray(same.logcnt), range(4), TOPO[0], TOPO[2], TOPO[3],
                                     "global")
            else:
                same = np.asarray(same.phy2log)
        np.testing.assert_array_equal(np.asarray(p.phy2log), same, err_msg=chosen)


def test_forecasts_match_the_objectives_reductions():
    history = drifting(3, windows=5)
    num_windows = history.shape[0]
    np.testing.assert_allclose(forecast(history, "sum"), history.sum(0))
    np.testing.assert_allclose(forecast(history, "last"), history[-1] * num_windows)
    for name, objective, kw in (("recency:2", "recency", dict(half_life=2.0)),
                                ("robust:1", "robust", dict(robust_k=1.0))):
        load, _ = reduce_history(history, objective, **kw)
        np.testing.assert_allclose(forecast(history, name), load * num_windows, rtol=1e-12)


def test_short_histories_fall_back_to_expected_peak():
    for windows in (1, 2):
        p = api.plan(drifting(0, windows=windows), *TOPO, policy="global")
        assert p.objective == "expected_peak" and p.backtest is None


def test_per_layer_choice_and_layer_sample():
    # Half the layers stationary, half drifting: with a margin each half gets its own kind.
    history = np.concatenate([stationary(2, layers=3), drifting(2, layers=3)], axis=1)
    b = run_backtest(history, TOPO[0], TOPO[3], layer_margin=0.0)
    kinds = [NAMES[i] for i in b.layer_choice]
    assert all(k in RECENT for k in kinds[3:]), kinds
    assert b.layers == 6 and b.adaptive >= b.balancedness.max() - 1e-12
    assert backtest_layers(58).tolist()[:3] == [0, 4, 8] and backtest_layers(58).size == 16
    assert backtest_layers(58)[-1] == 57 and backtest_layers(10).tolist() == list(range(10))


@pytest.mark.parametrize("groups,nodes,gpus", [(1, 1, 8), (4, 2, 8), (8, 4, 32), (4, 4, 4)])
def test_fast_plan_is_a_placement_that_keeps_groups_on_their_node(groups, nodes, gpus):
    rng = np.random.default_rng(groups * nodes)
    experts, slots = 32, 96 if gpus == 32 else 48
    for _ in range(5):
        load = rng.lognormal(0, 1.5, experts)
        phy2log, counts = np.empty(slots, np.int64), np.empty(experts, np.int64)
        _fast_plan(load, slots, groups, nodes, gpus, phy2log, counts, np.empty(experts))
        assert (np.bincount(phy2log, minlength=experts) == counts).all() and counts.min() >= 1
        node_of_slot = np.arange(slots) // (slots // nodes)
        group = phy2log // (experts // groups)
        for g in range(groups):  # every replica of a group's experts on one node
            assert np.unique(node_of_slot[group == g]).size == 1
