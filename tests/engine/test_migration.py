"""Migration-aware re-planning (issue 5): invariants, transfer plans, budgets, free wins."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eplb_server.engine.api import evaluate, plan
from eplb_server.engine.migration import (MigrationOptions, _budgeted, keep_current,
                                          kept_slots_bound, relabel)


def workload(seed, layers=4, experts=32, sigma=1.0):
    rng = np.random.default_rng(seed)
    return rng.lognormal(0.0, sigma, (layers, experts)) * 100.0


def drift(weight, seed, step=0.3):
    rng = np.random.default_rng(seed)
    return weight * np.exp(rng.normal(0.0, step, weight.shape))


def node_of_slot(num_slots, num_nodes):
    return np.arange(num_slots) // (num_slots // num_nodes)


def check_plan(result, current, weight, num_replicas, num_groups, num_nodes, num_gpus,
               hierarchical, options=None):
    phy2log, cur = result.phy2log.numpy(), np.asarray(current)
    num_layers, num_experts = weight.shape
    counts = np.zeros((num_layers, num_experts), int)
    np.add.at(counts, (np.arange(num_layers)[:, None], phy2log), 1)
    assert (counts >= 1).all() and (counts.sum(1) == num_replicas).all()
    assert (result.logcnt.numpy() == counts).all()
    if hierarchical:
        group = phy2log // (num_experts // num_groups)
        node = node_of_slot(num_replicas, num_nodes)
        for layer in range(num_layers):
            for g in range(num_groups):
                assert len(set(node[group[layer] == g])) == 1
    m = result.migration
    moves = m.transfers.numpy()
    applied = cur.copy()
    for layer, slot, expert, source in moves:
        assert cur[layer, source] == expert  # the source holds it before the move
        applied[layer, slot] = expert
    assert (applied == phy2log).all()
    changed = (phy2log != cur).sum(1)
    assert (m.layer_slots_changed.numpy() == changed).all()
    assert (m.layer_changed.numpy() == (changed > 0)).all()
    assert m.slots_changed == changed.sum() == len(moves)
    node = node_of_slot(num_replicas, num_nodes)
    cross = node[moves[:, 3]] != node[moves[:, 1]] if len(moves) else np.zeros(0, bool)
    assert (m.transfer_cross_node.numpy() == cross).all()
    assert m.cross_node_copies == cross.sum()
    # a same-node source is used whenever one exists
    for (layer, slot, expert, source), far in zip(moves, cross):
        if far:
            assert not (cur[layer][node == node[slot]] == expert).any()
    if options:
        if options.get("max_moved_slots_per_layer"):
            assert changed.max() <= options["max_moved_slots_per_layer"]
        if options.get("max_moved_slots_total"):
            assert changed.sum() <= options["max_moved_slots_total"]


SHAPES = [  # (experts, replicas, groups, nodes, gpus, policy)
    (32, 48, 4, 2, 8, "hierarchical"),
    (32, 48, 4, 2, 8, "global"),
    (16, 24, 4, 4, 8, "hierarchical"),
    (24, 24, 1, 2, 4, "global"),
    (16, 24, 4, 2, 12, "global"),  # two slots per GPU: re-pairing
    (16, 24, 4, 2, 12, "hierarchical"),
]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), shape=st.sampled_from(SHAPES),
       per_layer=st.sampled_from([0, 1, 3, 10]), total=st.sampled_from([0, 2, 7, 40]),
       gain=st.sampled_from([0.0, 0.01, 0.2]), step=st.sampled_from([0.0, 0.05, 0.5, 2.0]))
def test_invariants_transfers_and_budgets(seed, shape, per_layer, total, gain, step):
    experts, replicas, groups, nodes, gpus, policy = shape
    old = workload(seed, 3, experts)
    new = drift(old, seed + 1, step)
    current = plan(torch.tensor(old), replicas, groups, nodes, gpus, policy=policy).phy2log
    options = dict(max_moved_slots_per_layer=per_layer, max_moved_slots_total=total,
                   min_balancedness_gain=gain)
    result = plan(torch.tensor(new), replicas, groups, nodes, gpus, policy=policy,
                  current_phy2log=current, **options)
    check_plan(result, current, new, replicas, groups, nodes, gpus, policy == "hierarchical",
               options)
    # never worse than the current mapping on the loads planned for
    before = evaluate(torch.tensor(new), current, groups, nodes, gpus, policy=policy)
    after = evaluate(torch.tensor(new), result.phy2log, groups, nodes, gpus, policy=policy)
    assert (after.layer_max_load <= before.layer_max_load * (1 + 1e-9)).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), shape=st.sampled_from(SHAPES))
def test_relabelling_never_changes_a_peak(seed, shape):
    experts, replicas, groups, nodes, gpus, policy = shape
    rng = np.random.default_rng(seed)
    weight = workload(seed, 3, experts)
    new = plan(torch.tensor(weight), replicas, groups, nodes, gpus, policy=policy).phy2log.numpy()
    current = plan(torch.tensor(drift(weight, seed, 1.0)), replicas, groups, nodes, gpus,
                   policy=policy).phy2log.numpy()
    out = relabel(new, current, experts, nodes, gpus, policy == "hierarchical")
    per_gpu = replicas // gpus
    for layer in range(new.shape[0]):
        before = sorted(tuple(sorted(new[layer, g * per_gpu:(g + 1) * per_gpu]))
                        for g in range(gpus))
        after = sorted(tuple(sorted(out[layer, g * per_gpu:(g + 1) * per_gpu]))
                       for g in range(gpus))
        assert before == after  # GPUs renamed, contents unchanged
    a = evaluate(torch.tensor(weight), torch.tensor(new), groups, nodes, gpus, policy=policy)
    b = evaluate(torch.tensor(weight), torch.tensor(out), groups, nodes, gpus, policy=policy)
    assert torch.allclose(a.layer_max_load, b.layer_max_load, rtol=1e-12, atol=0)  # sum order
    assert ((out != current).sum() <= (new != current).sum())
    # a scrambled copy of the current mapping relabels back to it exactly
    perm = rng.permutation(gpus) if policy == "global" else np.concatenate(
        [n * (gpus // nodes) + rng.permutation(gpus // nodes) for n in rng.permutation(nodes)])
    scrambled = current.reshape(current.shape[0], gpus, per_gpu)[:, perm]
    scrambled = scrambled[:, :, ::-1].reshape(current.shape).copy()
    assert (relabel(scrambled, current, experts, nodes, gpus, policy == "hierarchical")
            == current).all()
    # the bound that caps repair never undercounts what relabelling keeps
    kept = (out == current).sum(1)
    assert (kept_slots_bound(new, current, experts, gpus) >= kept).all()
    assert (kept_slots_bound(scrambled, current, experts, gpus) == replicas).all()


@pytest.mark.parametrize("policy", ["hierarchical", "global", "deepseek"])
def test_same_loads_own_answer_moves_nothing(policy):
    """Its own plan, with GPUs relabelled within nodes and slots reordered within GPUs (the
    same GPU loads, so as good as any new plan): a planner that ignored the current mapping
    would move most slots; this one keeps every slot."""
    weight = torch.tensor(workload(1, 6, 64))
    first = plan(weight, 96, 8, 4, 16, policy=policy).phy2log.numpy()
    rng = np.random.default_rng(0)
    slots = np.arange(96).reshape(4, 4, 6)  # node, GPU in node, slot in GPU
    current = np.stack([row[np.stack([rng.permutation(g)[:, rng.permutation(6)]
                                      for g in slots]).ravel()] for row in first])
    assert (current != first).mean() > 0.5
    again = plan(weight, 96, 8, 4, 16, policy=policy, current_phy2log=current)
    assert again.migration.slots_changed == 0
    assert np.array_equal(again.phy2log.numpy(), current)
    assert again.migration.transfers.shape == (0, 4)


@pytest.mark.parametrize("policy", ["hierarchical", "global"])
def test_noise_moves_almost_nothing(policy):
    weight = workload(2, 8, 64)
    first = plan(torch.tensor(weight), 96, 8, 4, 16, policy=policy)
    noisy = drift(weight, 3, 0.002)
    scratch = plan(torch.tensor(noisy), 96, 8, 4, 16, policy=policy)
    again = plan(torch.tensor(noisy), 96, 8, 4, 16, policy=policy,
                 current_phy2log=first.phy2log)
    moved_scratch = int((scratch.phy2log != first.phy2log).sum())
    assert again.migration.slots_changed <= max(2, first.phy2log.numel() // 50)  # 2% of slots
    assert again.migration.slots_changed * 10 <= moved_scratch
    a = evaluate(torch.tensor(noisy), scratch.phy2log, 8, 4, 16, policy=policy).balancedness
    b = evaluate(torch.tensor(noisy), again.phy2log, 8, 4, 16, policy=policy).balancedness
    assert b >= a * (1 - 0.005)


def test_from_scratch_ignores_the_current_mapping():
    weight = torch.tensor(workload(4, 2, 32))
    current = plan(torch.tensor(drift(workload(4, 2, 32), 5, 1.0)), 48, 4, 2, 8).phy2log
    result = plan(weight, 48, 4, 2, 8, current_phy2log=current, from_scratch=True)
    assert torch.equal(result.phy2log, plan(weight, 48, 4, 2, 8).phy2log)
    # Still says what moving to the plan costs.
    assert result.migration.slots_changed == int((result.phy2log != current).sum())
    assert result.migration.layer_changed.tolist() == (result.phy2log != current).any(1).tolist()


def test_drift_keeps_balance_and_moves_less():
    weight = workload(6, 6, 64)
    current = plan(torch.tensor(weight), 96, 8, 4, 16, policy="global").phy2log
    new = drift(weight, 7, 0.2)
    scratch = plan(torch.tensor(new), 96, 8, 4, 16, policy="global")
    result = plan(torch.tensor(new), 96, 8, 4, 16, policy="global", current_phy2log=current)
    a = evaluate(torch.tensor(new), scratch.phy2log, 8, 4, 16, policy="global").balancedness
    b = evaluate(torch.tensor(new), result.phy2log, 8, 4, 16, policy="global").balancedness
    assert b >= a * (1 - 0.005)
    assert result.migration.slots_changed < int((scratch.phy2log != current).sum())


def test_min_gain_keeps_every_layer():
    weight = workload(8, 4, 32)
    current = plan(torch.tensor(weight), 48, 4, 2, 8).phy2log
    new = drift(weight, 9, 1.0)
    result = plan(torch.tensor(new), 48, 4, 2, 8, current_phy2log=current,
                  min_balancedness_gain=2.0)
    assert result.migration.slots_changed == 0
    assert result.migration.layers_kept_for_lack_of_gain == int(
        (plan(torch.tensor(new), 48, 4, 2, 8).phy2log != current).any(1).sum())


def test_keep_current_direct_call_zero_budget_default_tolerance():
    weight = workload(10, 2, 16)
    current = plan(torch.tensor(weight), 24, 4, 2, 4).phy2log.numpy()
    out, migration = keep_current(current.copy(), current, weight, 2, 4, MigrationOptions(),
                                  num_groups=4, hierarchical=True)
    assert (out == current).all() and migration.slots_changed == 0


@pytest.mark.parametrize("policy", ["hierarchical", "global"])
def test_layer_balancedness_before_and_after(policy):
    weight = workload(11, 4, 64)
    current = plan(torch.tensor(weight), 96, 8, 4, 16, policy=policy).phy2log
    new = drift(weight, 12, 0.5)
    result = plan(torch.tensor(new), 96, 8, 4, 16, policy=policy, current_phy2log=current)
    m = result.migration
    before = evaluate(torch.tensor(new), current, 8, 4, 16, policy=policy).layer_balancedness
    after = evaluate(torch.tensor(new), result.phy2log, 8, 4, 16,
                     policy=policy).layer_balancedness
    assert m.layer_balancedness_before.dtype == torch.float64
    assert m.layer_balancedness_before.shape == m.layer_balancedness_after.shape == (4,)
    assert torch.allclose(m.layer_balancedness_before, before.double(), rtol=1e-9)
    assert torch.allclose(m.layer_balancedness_after, after.double(), rtol=1e-9)
    assert (m.layer_balancedness_after >= m.layer_balancedness_before * (1 - 1e-9)).all()


def test_plan_keeping_nodes_keeps_the_current_group_assignment():
    from eplb_server.engine.migration import current_node_of_group, plan_keeping_nodes
    weight = workload(13, 6, 64)
    current = plan(torch.tensor(weight), 96, 8, 4, 16, policy="hierarchical").phy2log.numpy()
    kept = current_node_of_group(current, 8, 4, 64)
    assert kept.shape == (6, 8) and (kept >= 0).all()
    # unlimited slack: every layer keeps its assignment, and the plan stays hierarchical
    out = plan_keeping_nodes(drift(weight, 14, 0.5), 96, 8, 4, 16, current, tolerance=np.inf)
    assert (current_node_of_group(out, 8, 4, 64) == kept).all()
    counts = np.zeros((6, 64), int)
    np.add.at(counts, (np.arange(6)[:, None], out), 1)
    assert (counts >= 1).all()
    # a mapping whose groups span nodes has no assignment to keep
    assert (current_node_of_group(np.tile(np.arange(96) % 64, (2, 1)), 8, 4, 64) == -1).all()


def test_uneven_group_counts_per_node_are_not_kept():
    """Groups each on one node, but 3 groups on node 0 and 1 on node 1: no assignment to keep,
    so the plan is as good as one made from scratch (review finding)."""
    from eplb_server.engine.migration import current_node_of_group, plan_keeping_nodes
    weight = np.array([[10.0, 9.0, 1.0, 1.0]])
    current = np.array([[0, 0, 0, 0, 1, 2, 3, 3]])
    assert (current_node_of_group(current, 4, 2, 4) == -1).all()
    kept = plan_keeping_nodes(weight, 8, 4, 2, 2, current, tolerance=np.inf)
    scratch = plan(torch.tensor(weight), 8, 4, 2, 2, policy="hierarchical").phy2log.numpy()
    assert np.array_equal(kept, scratch)


def test_global_repair_prefers_moves_inside_a_node():
    from eplb_server.engine import migration
    weight = workload(15, 6, 64)
    current = plan(torch.tensor(weight), 96, 8, 4, 16, policy="global").phy2log.numpy()
    new_load = drift(weight, 16, 0.3)
    new = plan(torch.tensor(new_load), 96, 8, 4, 16, policy="global").phy2log.numpy()
    cross = []
    for factor in (1.0, 0.5):
        old, migration.CROSS_NODE_FACTOR = migration.CROSS_NODE_FACTOR, factor
        try:
            _, m = keep_current(new, current, new_load, 4, 16, MigrationOptions(), num_groups=8)
        finally:
            migration.CROSS_NODE_FACTOR = old
        cross.append(m.cross_node_copies / max(m.slots_changed, 1))
    assert cross[1] <= cross[0]


def sequential_budgeted(peak_cur, peak_new, new_moves, steps, peak_after, peak_paired, paired_moves,
              tolerance, per_layer, total):
    """The budget sharing as first written, in Python: every grant rescans every layer."""
    num_layers = peak_cur.shape[0]
    # Options per layer: (moves, peak, kind, repair steps); kinds as in _cheapest_within.
    menus = []
    for layer in range(num_layers):
        menu = [(0, peak_cur[layer], 0, 0)]
        for k in range(int(steps[layer])):
            if np.isfinite(peak_after[layer, k]):
                menu.append((k + 1, peak_after[layer, k], 1, k + 1))
        menu.append((int(new_moves[layer]), peak_new[layer], 2, 0))
        if np.isfinite(peak_paired[layer]):
            menu.append((int(paired_moves[layer]), peak_paired[layer], 3, 0))
        if per_layer > 0:
            menu = [m for m in menu if m[0] <= per_layer]
        # Pareto front in moves: each entry strictly lowers the peak.
        menu.sort(key=lambda m: (m[0], m[1]))
        front = []
        for m in menu:
            if not front or m[1] < front[-1][1]:
                front.append(m)
        menus.append(front)

    chosen = [0] * num_layers  # index into each layer's front
    if total > 0:
        budget = total
        while True:
            best, best_ratio = None, 0.0
            for layer, front in enumerate(menus):
                here = front[chosen[layer]]
                for index in range(chosen[layer] + 1, len(front)):
                    extra = front[index][0] - here[0]
                    if extra > budget:
                        break
                    ratio = (here[1] - front[index][1]) / extra
                    if ratio > best_ratio:
                        best, best_ratio = (layer, index), ratio
            if best is None:
                break
            layer, index = best
            budget -= menus[layer][index][0] - menus[layer][chosen[layer]][0]
            chosen[layer] = index
        # Within what was granted, the cheapest option inside the tolerance.
        for layer, front in enumerate(menus):
            granted = front[chosen[layer]][1]
            chosen[layer] = next(i for i, m in enumerate(front)
                                 if m[1] <= granted * (1.0 + tolerance))
    else:
        for layer, front in enumerate(menus):
            best_peak = front[-1][1]
            chosen[layer] = next(i for i, m in enumerate(front)
                                 if m[1] <= best_peak * (1.0 + tolerance))
    picked = [front[chosen[layer]] for layer, front in enumerate(menus)]
    kind = np.array([m[2] for m in picked], np.int64)
    count = np.array([m[3] for m in picked], np.int64)
    peak = np.array([m[1] for m in picked], np.float64)
    return kind, count, peak


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6), st.integers(1, 12), st.integers(0, 2**31), st.booleans(),
       st.sampled_from([0, 3, 8]), st.sampled_from([0, 5, 20, 60]), st.sampled_from([0.0, 0.01]))
def test_budget_sharing_matches_the_sequential_greedy(layers, width, seed, ties, per_layer,
                                                      total, tolerance):
    rng = np.random.default_rng(seed)
    peak = (lambda shape: rng.integers(10, 14, shape).astype(float)) if ties \
        else (lambda shape: rng.uniform(10.0, 14.0, shape))
    peak_cur, peak_new, peak_paired = peak(layers) + 1.0, peak(layers), peak(layers)
    peak_after = peak((layers, width))
    peak_after[rng.random((layers, width)) < 0.3] = np.inf  # mid-swap steps
    peak_paired[rng.random(layers) < 0.5] = np.inf  # no re-pairing
    steps = rng.integers(0, width + 1, layers)
    new_moves = rng.integers(0, 2 * width, layers)
    paired_moves = rng.integers(0, 2 * width, layers)
    args = (peak_cur, peak_new, new_moves, steps, peak_after, peak_paired, paired_moves,
            tolerance, per_layer, total)
    got = _budgeted(*args)
    expected = sequential_budgeted(*args)
    for a, b in zip(got, expected):
        assert (a == b).all()
