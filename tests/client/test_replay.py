"""The replay simulator (issue 24): its accounting, and `eplb-client replay` as a real
subprocess against a real server."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from eplb_client.replay import replay, window_balancedness

from .conftest import run_cli
from .test_cli import TOPO, png_size


def trace_of(windows=11, layers=3, experts=32, seed=0):
    rng = np.random.default_rng(seed)
    log_pop = rng.normal(0, 1, (layers, experts))
    out = []
    for _ in range(windows):
        log_pop = log_pop + rng.normal(0, 0.3, log_pop.shape)
        out.append(rng.poisson(np.exp(log_pop) * 100).astype(np.float64))
    return np.stack(out)


@pytest.mark.parametrize("interval", [1, 3, 4, 10])
def test_a_plan_is_scored_only_on_windows_after_those_it_was_made_from(interval):
    trace = trace_of()
    seen_lengths = []

    def spy(seen, current):
        seen_lengths.append(len(seen))
        np.testing.assert_array_equal(seen, trace[:len(seen)])  # exactly the past, no more
        with pytest.raises(ValueError):
            seen[0, 0, 0] = -1.0  # the planner cannot change the trace
        rng = np.random.default_rng(len(seen))  # any valid mapping, different per re-plan
        return np.stack([rng.permutation(np.arange(48) % 32) for _ in range(trace.shape[1])])

    run = replay(trace, interval, {"spy": spy}, num_gpus=8)["spy"]
    assert seen_lengths == list(range(interval, trace.shape[0], interval))
    for t in range(trace.shape[0]):
        k = run.served_by[t]
        if t < interval:
            assert k == -1 and np.isnan(run.balancedness[t])
            continue
        made_from = run.replans[k].made_from_last
        assert made_from < t <= made_from + interval  # served next, until the next re-plan
        assert seen_lengths[k] == made_from + 1
    assert run.replans[0].moved is None and len(run.moved) == len(run.replans) - 1


def test_balancedness_and_moves_are_those_of_the_mappings_served():
    trace = trace_of(windows=7)
    a = np.tile(np.arange(48) % 32, (3, 1))
    b = a.copy()
    b[:, [0, 40]] = b[:, [40, 0]]  # two slots per layer change expert
    mappings = [a, b, b]

    def fixed(seen, current):
        return mappings[len(seen) // 2 - 1]

    run = replay(trace, 2, {"fixed": fixed}, num_gpus=8)["fixed"]
    assert [r.moved for r in run.replans] == [None, 6, 0]
    for t in range(2, 7):
        want = window_balancedness(trace[t], mappings[t // 2 - 1], 8)
        assert run.balancedness[t] == pytest.approx(want, rel=1e-12)
    assert run.mean_balancedness == pytest.approx(np.mean(run.balancedness[2:]), rel=1e-12)
    assert run.mean_moved == 3.0


@pytest.mark.parametrize("interval", [0, 11])
def test_bad_interval_is_refused(interval):
    with pytest.raises(ValueError, match="interval"):
        replay(trace_of(), interval, {}, num_gpus=8)


def test_replay_cli_against_a_real_server(server, tmp_path):
    trace = tmp_path / "trace.npz"
    history = trace_of(windows=12, layers=4)
    np.savez(trace, logical_count=np.concatenate([np.zeros((12, 1, 32)), history], axis=1))
    png, out = tmp_path / "replay.png", tmp_path / "replay.json"
    result = run_cli("replay", "--trace", trace, "--interval", "3", "--history", "6",
                     "--max-moved-slots-per-layer", "4", *TOPO, "--png", png, "--out", out,
                     "--target", server[0], timeout=300)
    assert result.returncode == 0, result.stderr
    assert "mean balancedness" in result.stdout and "slots moved per re-plan" in result.stdout
    assert png_size(png)[0] > 0
    report = json.loads(out.read_text())
    reference, service = report["policies"].values()
    assert "reference" in next(iter(report["policies"]))
    served = [t for t, b in enumerate(service["balancedness"]) if b is not None]
    assert served == list(range(3, 12))  # windows 0-2 come before the first plan
    assert all(m <= 4 * 4 for m in service["moved"]) and len(service["moved"]) == 2
    for policy in (reference, service):
        for t in served:  # nothing beats the window's own bound
            assert policy["balancedness"][t] <= report["bound"][t] + 1e-9
        assert 0 < policy["mean_balancedness"] <= 1


def test_replay_cli_refuses_a_single_window_file(tmp_path):
    path = tmp_path / "one.npy"
    np.save(path, trace_of(windows=1)[0])
    result = run_cli("replay", "--trace", path, "--interval", "2", *TOPO,
                     "--target", "127.0.0.1:1")
    assert result.returncode == 1 and "[windows, layers, experts]" in result.stderr


def test_replay_does_not_import_torch():
    code = ("import sys, eplb_client.cli, eplb_client._commands, eplb_client.replay; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_rebalance_cli_says_what_the_adaptive_objective_chose(server, tmp_path):
    path = tmp_path / "history.npy"
    np.save(path, trace_of(windows=6, layers=4))
    result = run_cli("rebalance", path, *TOPO, "--policy", "global", "--target", server[0],
                     "--out", tmp_path / "plan.json")
    assert result.returncode == 0, result.stderr
    assert "objective adaptive" in result.stderr and "backtest (4 steps): chose" in result.stderr
    backtest = json.loads((tmp_path / "plan.json").read_text())["backtest"]
    assert backtest["chosen"] in backtest["candidates"] and backtest["steps"] == 4
    assert len(backtest["layer_choice"]) == 4 and len(backtest["balancedness"]) == 8
