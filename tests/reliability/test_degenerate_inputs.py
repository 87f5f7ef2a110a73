"""Issue 22, cases 1 and 5, at the engine: degenerate valid loads (subnormal, all equal, all
zero, one hot expert, near the float32 limit) plan on every policy and slot count, and history
parameters that would break the kernels are refused naming the argument."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_client.results import log2phy_from_ranks
from eplb_server.engine import api
from eplb_server.engine.history import MAX_ROBUST_K

TINY = 5e-324  # the smallest subnormal double
LIMIT = api.MAX_LAYER_LOAD
# (E, P, K, N, G): two slots per GPU (the pairing kernels) and more; the issue's shape first.
TOPOLOGIES = [(8, 32, 1, 1, 16), (16, 32, 4, 2, 16), (16, 24, 4, 2, 4), (12, 48, 3, 1, 8)]
POLICIES = ("global", "hierarchical", "deepseek")


def degenerate(kind: str, layers: int, experts: int, rng) -> np.ndarray:
    if kind == "subnormal":
        return np.full((layers, experts), TINY)
    if kind == "subnormal_mixed":  # a few smallest subnormals among zeros
        return rng.integers(0, 3, (layers, experts)) * TINY
    if kind == "subnormal_and_normal":
        w = np.full((layers, experts), TINY)
        w[:, 0] = 1.0
        return w
    if kind == "equal":
        return np.full((layers, experts), 7.0)
    if kind == "zero":
        return np.zeros((layers, experts))
    if kind == "one_hot":
        w = np.zeros((layers, experts))
        w[:, rng.integers(experts)] = 1e6
        return w
    if kind == "near_limit":  # each layer totals just under float32's maximum
        w = rng.uniform(0, 1, (layers, experts))
        return w / w.sum(1, keepdims=True) * (LIMIT * 0.999)
    raise ValueError(kind)


KINDS = ("subnormal", "subnormal_mixed", "subnormal_and_normal", "equal", "zero", "one_hot",
         "near_limit")


def check_plan(result, weight, replicas):
    layers, experts = weight.shape[-2:]
    phy2log, logcnt = result.phy2log.numpy(), result.logcnt.numpy()
    assert phy2log.shape == (layers, replicas) and phy2log.min() >= 0 and phy2log.max() < experts
    assert (logcnt >= 1).all() and (logcnt.sum(1) == replicas).all()
    for layer in range(layers):
        assert (np.bincount(phy2log[layer], minlength=experts) == logcnt[layer]).all()
    rank = result.replica_rank.numpy()
    assert np.array_equal(result.log2phy.numpy(), log2phy_from_ranks(phy2log, rank, logcnt))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("topology", TOPOLOGIES, ids=lambda t: "x".join(map(str, t)))
def test_degenerate_loads_plan(kind, topology):
    experts, replicas, groups, nodes, gpus = topology
    weight = degenerate(kind, 2, experts, np.random.default_rng(experts))
    for policy in POLICIES:
        if policy == "hierarchical" and groups % nodes:
            continue
        result = api.plan(torch.from_numpy(weight), replicas, groups, nodes, gpus, policy=policy)
        check_plan(result, weight, replicas)
        score = api.evaluate(torch.from_numpy(weight), result.phy2log, groups, nodes, gpus)
        assert np.isfinite(score.balancedness) or weight.sum() == 0


def test_issue_case_5_subnormal_loads_at_two_slots_per_gpu():
    """P=32, K=1, N=1, G=16, loads [1, 8] of 5e-324: a ZeroDivisionError in the pairing
    bisection (0.5 * (0 + 5e-324) == 0.0) became INTERNAL, or a crash."""
    weight = torch.full((1, 8), TINY, dtype=torch.float64)
    result = api.plan(weight, 32, 1, 1, 16)
    check_plan(result, weight.numpy(), 32)


@settings(max_examples=40, deadline=None)
@given(exponent=st.integers(-1074, -1000), spread=st.integers(0, 60), seed=st.integers(0, 99),
       topology=st.sampled_from(TOPOLOGIES))
def test_tiny_loads_plan(exponent, spread, seed, topology):
    """Loads of every magnitude among the subnormals and just above them."""
    experts, replicas, groups, nodes, gpus = topology
    rng = np.random.default_rng(seed)
    weight = np.ldexp(1.0, exponent) * rng.integers(0, 1 << min(spread, 52), (2, experts))
    result = api.plan(torch.from_numpy(weight.astype(np.float64)), replicas, 1, 1, gpus)
    check_plan(result, weight, replicas)


def history(scale, windows=4, layers=2, experts=16, seed=0):
    return np.random.default_rng(seed).uniform(0, scale, (windows, layers, experts))


@pytest.mark.parametrize("robust_k", [1e35, MAX_ROBUST_K * 1.01, float("inf"), -1.0])
def test_robust_k_out_of_range_is_refused(robust_k):
    """The issue's crash: plan(H, 32, 4, 2, 8, objective="robust", robust_k=1e35)."""
    with pytest.raises(ValueError, match=r"\brobust_k\b"):
        api.plan(torch.from_numpy(history(1e4)), 32, 4, 2, 8, objective="robust",
                 robust_k=robust_k)


def test_robust_load_over_float32_is_refused():
    """mean + k std checked where it is formed: loads whose windows total 3e38 with k = 40."""
    h = history(1.0)
    h = h / h.sum(axis=(0, 2), keepdims=True) * 3e38
    with pytest.raises(ValueError, match=r"\brobust_k\b"):
        api.plan(torch.from_numpy(h), 32, 4, 2, 8, objective="robust", robust_k=40.0)
    result = api.plan(torch.from_numpy(h), 32, 4, 2, 8, objective="sum")  # the same loads plan
    check_plan(result, h, 32)


@pytest.mark.parametrize("half_life", [TINY, 1e-300, 1e300, 1.7e308])
@pytest.mark.parametrize("scale", [TINY, 1.0, LIMIT / 64])
def test_recency_extremes_plan(half_life, scale):
    h = history(1.0) * scale
    result = api.plan(torch.from_numpy(h), 32, 4, 2, 8, objective="recency", half_life=half_life)
    check_plan(result, h, 32)


@pytest.mark.parametrize("objective", ["sum", "expected_peak", "robust", "recency"])
@pytest.mark.parametrize("kind", ["subnormal", "zero", "equal", "near_limit"])
def test_degenerate_histories_plan(objective, kind):
    rng = np.random.default_rng(1)
    h = np.stack([degenerate(kind, 2, 16, rng) / 4 for _ in range(4)])
    result = api.plan(torch.from_numpy(h), 32, 4, 2, 8, objective=objective)
    check_plan(result, h, 32)


def test_without_log2phy():
    weight = torch.from_numpy(degenerate("one_hot", 2, 16, np.random.default_rng(0)))
    full = api.plan(weight, 64, 4, 1, 8, policy="deepseek")
    bare = api.plan(weight, 64, 4, 1, 8, policy="deepseek", with_log2phy=False)
    assert bare.log2phy is None and torch.equal(bare.phy2log, full.phy2log)
    assert full.log2phy.shape[2] == 64 - 16 + 1  # the hot expert takes every spare slot
