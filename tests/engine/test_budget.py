"""time_budget_ms: a budget that runs out still gives a valid plan, never worse than the reference
per layer, and says so; budget 0 (and one that never runs out) gives the default plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eplb_server import plan
from tests.engine.hard_cases import (gpu_peaks, groups_stay_on_nodes, hard_loads,
                                     plan_is_valid)

TOLERANCE = 1e-9
# (E, P, K, N, G, policy): 4 and 9 slots per GPU global, 2 per GPU, a hierarchical one.
SHAPES = [(64, 96, 8, 4, 24, "global"), (64, 144, 8, 4, 16, "global"),
          (32, 48, 4, 2, 24, "global"), (64, 96, 8, 4, 16, "hierarchical")]
LAYERS = 40
TINY_MS = 1e-3  # runs out before the first layer is refined


def loads(shape) -> np.ndarray:
    experts, _, groups = shape[:3]
    return hard_loads(np.random.default_rng(list(shape[:5])), LAYERS, experts, groups)


def constraint(shape):
    _, replicas, groups, nodes, gpus, policy = shape
    return (replicas, groups, nodes, gpus) if policy == "hierarchical" \
        else (replicas, 1, 1, gpus)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_a_budget_that_runs_out_gives_a_valid_plan_never_worse_than_the_reference(shape):
    experts, policy = shape[0], shape[5]
    replicas, groups, nodes, gpus = constraint(shape)
    weight = torch.from_numpy(loads(shape))
    tight = plan(weight, replicas, groups, nodes, gpus, policy=policy, time_budget_ms=TINY_MS)
    full = plan(weight, replicas, groups, nodes, gpus, policy=policy)
    reference = plan(weight, replicas, groups, nodes, gpus, policy="deepseek")
    assert not tight.refinement_finished and full.refinement_finished
    phy2log = tight.phy2log.numpy()
    plan_is_valid(phy2log, tight.log2phy.numpy(), tight.logcnt.numpy(), experts, replicas)
    if policy == "hierarchical":
        assert groups_stay_on_nodes(phy2log, groups, nodes, experts)
    w = weight.numpy()
    peak = gpu_peaks(w, phy2log, gpus)
    assert (peak <= gpu_peaks(w, reference.phy2log.numpy(), gpus) * (1 + TOLERANCE)).all()
    # the refined plan is at least as good on every layer, and better on some: the budget
    # really cut refinement short
    full_peak = gpu_peaks(w, full.phy2log.numpy(), gpus)
    assert (full_peak <= peak * (1 + TOLERANCE)).all()
    assert (full_peak < peak * (1 - 1e-6)).any()


@pytest.mark.parametrize("shape", SHAPES[:2] + SHAPES[3:], ids=str)
def test_budget_zero_or_ample_is_the_default_plan(shape):
    policy = shape[5]
    replicas, groups, nodes, gpus = constraint(shape)
    weight = torch.from_numpy(loads(shape))
    default = plan(weight, replicas, groups, nodes, gpus, policy=policy)
    for budget in (0.0, 1e6):
        again = plan(weight, replicas, groups, nodes, gpus, policy=policy,
                     time_budget_ms=budget)
        assert again.refinement_finished
        assert torch.equal(again.phy2log, default.phy2log), budget


def test_a_budget_that_runs_out_mid_way_refines_a_prefix_of_the_layers():
    """Layers are refined in order while the budget lasts, the rest keep the unrefined start:
    the plan is the default plan's first k layers and the start's others (layers never depend
    on one another)."""
    shape = SHAPES[0]
    replicas, groups, nodes, gpus = constraint(shape)
    weight = torch.from_numpy(np.concatenate([loads(shape)] * 8))
    default = plan(weight, replicas, groups, nodes, gpus, policy="global").phy2log
    start = plan(weight, replicas, groups, nodes, gpus, policy="global",
                 time_budget_ms=TINY_MS).phy2log
    for budget in (0.5, 2.0, 8.0):
        result = plan(weight, replicas, groups, nodes, gpus, policy="global",
                      time_budget_ms=budget)
        as_default = (result.phy2log == default).all(1).numpy()
        k = int(np.argmin(as_default)) if not as_default.all() else len(as_default)
        assert (result.phy2log[k:] == start[k:]).all(), budget
        if result.refinement_finished:
            assert as_default.all(), budget


@pytest.mark.parametrize("budget", [-1.0, float("nan"), float("inf")])
def test_bad_budgets_are_refused(budget):
    with pytest.raises(ValueError, match="time_budget_ms"):
        plan(torch.ones(2, 8), 8, 1, 1, 2, time_budget_ms=budget)
