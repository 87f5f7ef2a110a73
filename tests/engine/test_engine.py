"""The placement engine: reference-exact mode, invariants of refined plans, scoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eplb_server import evaluate, plan, rebalance_experts

README_WEIGHT = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                 [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]


def peaks(weight, phy2log, num_gpus):
    return evaluate(weight, phy2log, 1, 1, num_gpus).layer_max_load


def check_plan(weight, phy2log, log2phy, logcnt, num_replicas, num_groups, num_nodes, num_gpus,
               hierarchical):
    num_layers, num_experts = weight.shape[-2:]
    assert phy2log.shape == (num_layers, num_replicas) and phy2log.dtype == torch.int64
    assert logcnt.shape == (num_layers, num_experts) and logcnt.dtype == torch.int64
    assert log2phy.shape == (num_layers, num_experts, int(logcnt.max()))
    assert (logcnt >= 1).all() and (logcnt.sum(1) == num_replicas).all()
    counts = torch.zeros_like(logcnt).scatter_add_(1, phy2log, torch.ones_like(phy2log))
    assert torch.equal(counts, logcnt)
    for layer in range(num_layers):
        for expert in range(num_experts):
            slots = log2phy[layer, expert]
            valid = slots[slots >= 0]
            assert len(valid) == logcnt[layer, expert]
            assert (slots[len(valid):] == -1).all()
            assert (phy2log[layer, valid] == expert).all()
    if hierarchical:
        group_size = num_experts // num_groups
        node_of_slot = torch.arange(num_replicas) // (num_replicas // num_nodes)
        for layer in range(num_layers):
            group = phy2log[layer] // group_size
            for g in range(num_groups):
                assert len(set(node_of_slot[group == g].tolist())) == 1


def test_readme_example_matches_reference(device):
    weight = torch.tensor(README_WEIGHT, device=device)
    phy2log, log2phy, logcnt = rebalance_experts(weight, 16, 4, 2, 8, policy="deepseek")
    assert phy2log.device.type == device
    assert phy2log.tolist() == [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                                [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]
    assert logcnt.tolist() == [[1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1],
                               [1, 2, 1, 1, 1, 2, 2, 1, 2, 1, 1, 1]]


def test_conformance_cases_match_reference_exactly(conformance_cases, device):
    for case in conformance_cases:
        weight = torch.tensor(case["weight"], dtype=torch.float32, device=device)
        phy2log, log2phy, logcnt = rebalance_experts(
            weight, case["num_replicas"], case["num_groups"], case["num_nodes"],
            case["num_gpus"], policy="deepseek")
        assert phy2log.tolist() == case["phy2log"], case["name"]
        assert log2phy.tolist() == case["log2phy"], case["name"]
        assert logcnt.tolist() == case["logcnt"], case["name"]


def test_count_search_beats_reference_on_two_slots_per_gpu():
    weight = torch.tensor([[600, 560, 120, 120, 20, 10, 10, 10]], dtype=torch.float64)
    reference = plan(weight, 16, 1, 1, 8, policy="deepseek").phy2log
    refined = plan(weight, 16, 1, 1, 8, policy="global").phy2log
    assert peaks(weight, reference, 8).item() == pytest.approx(232.0)
    assert peaks(weight, refined, 8).item() == pytest.approx(590 / 3)


@st.composite
def problems(draw):
    num_nodes = draw(st.sampled_from([1, 2, 4]))
    gpus_per_node = draw(st.sampled_from([1, 2, 3, 4]))
    num_gpus = num_nodes * gpus_per_node
    groups_per_node = draw(st.sampled_from([1, 2, 3]))
    num_groups = num_nodes * groups_per_node * draw(st.sampled_from([1, 2]))
    group_size = draw(st.sampled_from([1, 2, 4]))
    num_experts = num_groups * group_size
    slots_per_gpu = draw(st.integers(1, 6))
    num_replicas = num_gpus * slots_per_gpu
    if num_replicas < num_experts:
        num_replicas = num_gpus * -(-num_experts // num_gpus)
    num_layers = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["lognormal", "integers", "zeros", "equal", "dominant"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    if kind == "lognormal":
        weight = rng.lognormal(0, 1.5, (num_layers, num_experts))
    elif kind == "integers":  # many ties
        weight = rng.integers(0, 4, (num_layers, num_experts)).astype(float)
    elif kind == "zeros":
        weight = np.zeros((num_layers, num_experts))
    elif kind == "equal":
        weight = np.full((num_layers, num_experts), 7.0)
    else:
        weight = rng.random((num_layers, num_experts))
        weight[:, rng.integers(num_experts)] = 1000.0
    return torch.tensor(weight), num_replicas, num_groups, num_nodes, num_gpus


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems(), st.sampled_from(["hierarchical", "global"]))
def test_refined_plans_are_valid_and_never_worse_than_reference(problem, policy):
    weight, num_replicas, num_groups, num_nodes, num_gpus = problem
    phy2log, log2phy, logcnt = rebalance_experts(
        weight, num_replicas, num_groups, num_nodes, num_gpus, policy=policy)
    check_plan(weight, phy2log, log2phy, logcnt, num_replicas, num_groups, num_nodes, num_gpus,
               hierarchical=policy == "hierarchical")
    reference = plan(weight, num_replicas, 1 if policy == "global" else num_groups,
                     1 if policy == "global" else num_nodes, num_gpus, policy="deepseek").phy2log
    refined_peak = peaks(weight, phy2log, num_gpus)
    assert (refined_peak <= peaks(weight, reference, num_gpus) * (1 + 1e-9) + 1e-9).all()
    score = evaluate(weight, phy2log, num_groups, num_nodes, num_gpus, policy=policy)
    assert (score.layer_lower_bound <= refined_peak * (1 + 1e-9) + 1e-9).all()
    assert 0.0 <= score.balancedness <= 1.0 + 1e-12
    again = rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus, policy=policy)
    assert torch.equal(again[0], phy2log)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_light_nodes_refined_less_leave_every_layer_peak_unchanged(problem):
    from eplb_server.engine import refined
    weight, num_replicas, num_groups, num_nodes, num_gpus = problem
    weight = weight * torch.linspace(1.0, 1.3, weight.shape[1], dtype=weight.dtype)  # node skew
    kw = dict(num_groups=num_groups, num_nodes=num_nodes, num_gpus=num_gpus)
    with_floor = plan(weight, num_replicas, policy="hierarchical", **kw).phy2log
    saved, refined.LIGHT_NODE_MARGIN = refined.LIGHT_NODE_MARGIN, 1.0  # every node fully refined
    try:
        without = plan(weight, num_replicas, policy="hierarchical", **kw).phy2log
    finally:
        refined.LIGHT_NODE_MARGIN = saved
    assert torch.equal(peaks(weight, with_floor, num_gpus), peaks(weight, without, num_gpus))


def test_strided_read_only_and_integer_loads_plan_as_their_contiguous_float_copies():
    weight = np.round(np.random.default_rng(1).lognormal(0, 1, (128, 6)) * 100)
    args = (160, 8, 4, 16)
    expected = plan(torch.tensor(np.ascontiguousarray(weight.T)), *args)
    read_only = np.frombuffer(np.ascontiguousarray(weight.T).tobytes()).reshape(6, 128)
    for strided in (torch.tensor(weight).t(), weight.T, torch.tensor(weight, dtype=torch.int64).t(),
                    np.repeat(weight.T, 2, axis=1)[:, ::2], read_only):
        assert np.array_equal(np.asarray(plan(strided, *args).phy2log), expected.phy2log)
    history = np.stack([weight, weight]).transpose(0, 2, 1)  # [T, L, E], strided
    assert np.array_equal(plan(history, *args, objective="sum").phy2log,
                          plan(torch.tensor(2 * np.ascontiguousarray(weight.T)), *args).phy2log)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("policy", ["hierarchical", "global", "deepseek"])
def test_negative_zero_loads_plan_as_zeros(policy):
    weight = np.random.default_rng(0).lognormal(0, 1, (4, 128)) * 100
    weight[:, :10] = 0.0
    negative_zero = weight.copy()
    negative_zero[:, :10] = -0.0
    args = (160, 8, 4, 16)
    expected = plan(torch.tensor(weight), *args, policy=policy)
    got = plan(torch.tensor(negative_zero), *args, policy=policy)
    assert torch.equal(got.phy2log, expected.phy2log)
    assert torch.equal(plan(torch.tensor(negative_zero), *args, policy=policy,
                            current_phy2log=expected.phy2log).phy2log, expected.phy2log)
    assert np.signbit(negative_zero[:, :10]).all()  # the caller's array is left as it was


@pytest.mark.parametrize("policy", ["hierarchical", "global", "deepseek"])
def test_one_gpu_one_layer_and_p_equals_e(policy, device):
    weight = torch.arange(1.0, 9.0, device=device).reshape(1, 8)
    for num_replicas, num_gpus in ((8, 1), (8, 8), (8, 4)):
        phy2log, log2phy, logcnt = rebalance_experts(weight, num_replicas, 2, 1, num_gpus,
                                                     policy=policy)
        assert sorted(phy2log[0].tolist()) == list(range(8))
        assert (logcnt == 1).all()


def test_spread_separates_replicas_when_the_peak_allows():
    from eplb_server.engine.packing import spread

    pack_weight = np.array([[10.0, 10.0], [10.0, 10.0], [12.0, 1.0]])
    pack_expert = np.array([[0, 0], [1, 2], [3, 4]])
    limit = np.ones(5, np.int64)
    loads = pack_weight.sum(1)
    spread(pack_weight, pack_expert, limit, loads)
    for row in pack_expert:
        assert len(set(row.tolist())) == 2
    assert loads.max() == 20.0


def test_spread_keeps_duplicates_that_would_raise_the_peak():
    from eplb_server.engine.packing import spread

    pack_weight = np.array([[10.0, 10.0], [20.0, 0.0]])
    pack_expert = np.array([[0, 0], [1, 2]])
    loads = pack_weight.sum(1)
    spread(pack_weight, pack_expert, np.ones(3, np.int64), loads)
    assert pack_expert[0].tolist() == [0, 0] and loads.tolist() == [20.0, 20.0]


def test_global_plan_is_near_bound_on_real_snapshot(snapshot_paths):
    from tests.conftest import load_snapshot

    weight = torch.tensor(load_snapshot(snapshot_paths[0]), dtype=torch.float64)
    phy2log, _, _ = rebalance_experts(weight, 288, 8, 4, 32, policy="global")
    refined = evaluate(weight, phy2log, 8, 4, 32, policy="global")
    reference = evaluate(weight, plan(weight, 288, 1, 1, 32, policy="deepseek").phy2log,
                         8, 4, 32, policy="global")
    assert refined.mean_gap < reference.mean_gap
    assert refined.mean_gap < 0.005


def test_hierarchical_bound_is_tighter_and_met(snapshot_paths):
    from tests.conftest import load_snapshot

    weight = torch.tensor(load_snapshot(snapshot_paths[0]), dtype=torch.float64)
    phy2log, _, _ = rebalance_experts(weight, 288, 8, 4, 32, policy="hierarchical")
    hier = evaluate(weight, phy2log, 8, 4, 32, policy="hierarchical")
    flat = evaluate(weight, phy2log, 8, 4, 32, policy="global")
    assert (hier.layer_lower_bound >= flat.layer_lower_bound).all()
    assert (hier.layer_lower_bound <= hier.layer_max_load * (1 + 1e-9)).all()


def test_hierarchical_bound_counts_only_the_node_slots_a_group_can_use():
    # Node 0 holds experts [100, 1, 1] in 4 slots: the hot expert gets at most 2 replicas, so
    # no hierarchical plan peaks under 50 (the global R*, 3 replicas of the 8 slots, is 33.3).
    weight = torch.tensor([[100.0, 1, 1, 1, 1, 1]])
    phy2log, _, _ = rebalance_experts(weight, 8, 2, 2, 8, policy="hierarchical")
    hier = evaluate(weight, phy2log, 2, 2, 8, policy="hierarchical")
    flat = evaluate(weight, phy2log, 2, 2, 8, policy="global")
    assert flat.layer_lower_bound.tolist() == pytest.approx([100 / 3])
    assert hier.layer_lower_bound.tolist() == [50.0] == hier.layer_max_load.tolist()


@pytest.mark.parametrize("bad, message", [
    (dict(weight=torch.tensor([[float("nan"), 1.0]])), "finite"),
    (dict(weight=torch.tensor([[1.0, float("inf")]])), "finite"),
    (dict(weight=torch.tensor([[float("-inf"), 1.0]])), "finite"),
    (dict(weight=torch.tensor([[-1.0, 1.0]])), "non-negative"),
    (dict(weight=torch.full((2, 4), 1e38, dtype=torch.float64)), "too large"),  # total 4e38
    (dict(weight=torch.full((3, 2, 4), 3e37, dtype=torch.float64)), "too large"),  # 3.6e38
    (dict(weight=torch.ones(4)), "shape"),
    (dict(num_replicas=5), "multiple of num_gpus"),
    (dict(num_gpus=3, num_replicas=12), "multiple of num_nodes"),
    (dict(num_groups=3), "divide"),
    (dict(num_replicas=2, num_gpus=2, num_nodes=1), "at least"),
    (dict(policy="fastest"), "policy"),
])
def test_invalid_arguments_raise_value_error(bad, message):
    args = dict(weight=torch.ones(2, 4), num_replicas=8, num_groups=2, num_nodes=2, num_gpus=4)
    args.update(bad)
    weight = args.pop("weight")
    policy = args.pop("policy", "auto")
    with pytest.raises(ValueError, match=message):
        rebalance_experts(weight, **args, policy=policy)


def test_evaluate_with_a_known_bound_matches_a_full_evaluation():
    rng = np.random.default_rng(5)
    weight = torch.from_numpy(rng.lognormal(0, 1, (3, 32)))
    first = plan(weight, 48, 4, 2, 8).phy2log
    second = plan(weight * torch.from_numpy(rng.lognormal(0, 0.3, (3, 32))), 48, 4, 2, 8).phy2log
    known = evaluate(weight, first, 4, 2, 8).layer_lower_bound
    full = evaluate(weight, second, 4, 2, 8)
    reused = evaluate(weight, second, 4, 2, 8, lower_bound=known)
    assert torch.equal(full.layer_lower_bound, reused.layer_lower_bound)
    assert torch.equal(full.layer_gap, reused.layer_gap) and full.max_gap == reused.max_gap
    doubled = evaluate(weight, second, 4, 2, 8, lower_bound=known * 2)  # the bound given is used
    assert torch.equal(doubled.layer_lower_bound, known * 2)
    assert torch.allclose(doubled.layer_gap, full.layer_max_load / (known * 2) - 1)
    with pytest.raises(ValueError, match="lower_bound"):
        evaluate(weight, second, 4, 2, 8, lower_bound=known[:1])


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5), st.integers(1, 4), st.booleans(), st.integers(0, 2**31))
def test_pairing_two_groups_per_node_matches_the_enumeration(num_nodes, layers, ties, seed):
    from eplb_server.engine import hierarchy
    rng = np.random.default_rng(seed)
    shape = (layers, 2 * num_nodes)
    group_load = rng.integers(0, 4, shape).astype(float) if ties else rng.lognormal(0, 1, shape)
    node_of, peak = hierarchy.best_node_loads(group_load, num_nodes)
    parts = hierarchy.node_partitions(2 * num_nodes, num_nodes)
    _, enumerated = hierarchy._best_partition(group_load, parts, num_nodes)
    assert (peak == enumerated).all()
    assert (hierarchy.assignment_peak(group_load, node_of, num_nodes) == peak).all()
    assert all(np.bincount(row, minlength=num_nodes).tolist() == [2] * num_nodes
               for row in node_of)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from([(16, 8), (32, 16), (24, 8), (30, 6)]), st.booleans(),
       st.integers(0, 2**31))
def test_node_peak_bound_is_exact_for_pairs_and_below_every_assignment(shape, ties, seed):
    from eplb_server.engine import hierarchy
    num_groups, num_nodes = shape  # too many partitions to enumerate, all four
    rng = np.random.default_rng(seed)
    group_load = rng.integers(0, 4, (3, num_groups)).astype(float) if ties \
        else rng.lognormal(0, 1.5, (3, num_groups))
    bound = hierarchy.node_peak_bound(group_load, num_nodes)
    per_node = num_groups // num_nodes
    for _ in range(20):
        node_of = np.stack([rng.permutation(np.arange(num_groups) // per_node) for _ in range(3)])
        assert (bound <= hierarchy.assignment_peak(group_load, node_of, num_nodes) + 1e-9).all()
    node_of, peak = hierarchy.best_node_loads(group_load, num_nodes)
    assert all(np.bincount(row, minlength=num_nodes).tolist() == [per_node] * num_nodes
               for row in node_of)
    assert np.allclose(hierarchy.assignment_peak(group_load, node_of, num_nodes), peak,
                       rtol=1e-12, atol=0)  # the packer's loads change by swaps, in place
    if per_node == 2:  # the pairing is exact: the bound is attained
        assert (bound == peak).all()
    else:  # the packer's assignment; the heaviest group with the lightest ones, or the mean
        assert (bound <= peak + 1e-9).all()
        lightest = np.sort(group_load, axis=1)[:, :per_node - 1].sum(1)
        assert (bound >= group_load.max(1) + lightest).all()
        assert (bound >= group_load.sum(1) / num_nodes - 1e-9).all()


def test_gpu_loads_and_exact_node_assignment_match_direct_formulas():
    import itertools

    from eplb_server.engine.hierarchy import best_node_loads
    from eplb_server.engine.scoring import gpu_loads
    rng = np.random.default_rng(3)
    weight = rng.lognormal(0, 1, (5, 12))
    phy2log = np.stack([rng.permutation(np.arange(16) % 12) for _ in range(5)])
    counts = np.stack([np.bincount(row, minlength=12) for row in phy2log])
    direct = (np.take_along_axis(weight / counts, phy2log, 1)).reshape(5, 4, 4).sum(-1)
    assert np.allclose(gpu_loads(weight, phy2log, 4), direct)
    group_load = weight[:, :6]  # 6 groups onto 3 nodes of 2 groups
    node_of, peak = best_node_loads(group_load, 3)
    for layer in range(5):
        best = min(max(group_load[layer, list(p[2 * n:2 * n + 2])].sum() for n in range(3))
                   for p in itertools.permutations(range(6)))
        assert peak[layer] == pytest.approx(best)
        assert np.bincount(node_of[layer], minlength=3).tolist() == [2, 2, 2]
        assert max(group_load[layer, node_of[layer] == n].sum() for n in range(3)) \
            == pytest.approx(best)


def test_results_come_back_as_the_loads_came():
    """numpy loads: numpy results (the service's worker never imports torch); tensors: tensors
    on the weight's device, the same values."""
    weight = np.asarray(README_WEIGHT, dtype=np.float64)
    current = plan(weight, 16, 4, 2, 4, policy="global").phy2log
    drifted = weight[:, ::-1].copy()
    arrays = plan(drifted, 16, 4, 2, 4, current_phy2log=current)
    tensors = plan(torch.from_numpy(drifted), 16, 4, 2, 4,
                   current_phy2log=torch.from_numpy(current))
    for name in ("phy2log", "log2phy", "logcnt", "replica_rank"):
        array, tensor = getattr(arrays, name), getattr(tensors, name)
        assert isinstance(array, np.ndarray) and array.dtype == np.int64
        assert isinstance(tensor, torch.Tensor) and np.array_equal(array, tensor.numpy())
    assert isinstance(arrays.migration.transfers, np.ndarray)
    assert np.array_equal(arrays.migration.transfers, tensors.migration.transfers.numpy())
    score_a, score_t = (evaluate(w, p.phy2log, 4, 2, 4) for w, p in
                        ((drifted, arrays), (torch.from_numpy(drifted), tensors)))
    assert isinstance(score_a.layer_gap, np.ndarray)
    assert isinstance(score_t.layer_gap, torch.Tensor)
    assert np.array_equal(score_a.gpu_load, score_t.gpu_load.numpy())
