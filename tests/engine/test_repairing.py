"""Re-pairing at two slots per GPU: the given counts, the target, distinct pairs, few moves."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_server.engine.api import evaluate, plan
from eplb_server.engine.mapping import expert_counts
from eplb_server.engine.migration import relabel
from eplb_server.engine.repairing import repair_pairs
from eplb_server.engine.scoring import gpu_loads


def two_per_gpu_case(seed, num_gpus, num_experts, step):
    """(new weight [1, E], current [1, P] planned for an older weight, new plan [1, P])."""
    rng = np.random.default_rng(seed)
    old = rng.lognormal(0.0, 1.0, (1, num_experts)) * 100.0
    new = old * np.exp(rng.normal(0.0, step, old.shape))
    kw = dict(num_replicas=2 * num_gpus, num_groups=1, num_nodes=1, num_gpus=num_gpus,
              policy="global")
    current = plan(torch.tensor(old), **kw).phy2log.numpy()
    return new, current, plan(torch.tensor(new), **kw).phy2log.numpy()


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), num_gpus=st.integers(2, 24), extra=st.integers(0, 24),
       step=st.sampled_from([0.0, 0.1, 0.5, 2.0]), slack=st.sampled_from([0.0, 0.002, 0.05]))
def test_found_plans_have_the_counts_meet_the_target_and_pair_no_expert_with_itself(
        seed, num_gpus, extra, step, slack):
    num_experts = num_gpus + min(extra, num_gpus)  # 1 to 2 slots per expert
    weight, current, new = two_per_gpu_case(seed, num_gpus, num_experts, step)
    counts = expert_counts(new, num_experts)
    target = gpu_loads(weight, new, num_gpus).max(1) * (1.0 + slack)
    out, found = repair_pairs(weight, current, new, target, 1)
    if not found[0]:
        assert (out == current).all()
        return
    assert (expert_counts(out, num_experts) == counts).all()
    pairs = out.reshape(num_gpus, 2)
    doubled = pairs[:, 0] == pairs[:, 1]  # only where the current mapping had the same pair
    assert (pairs[doubled] == current.reshape(num_gpus, 2)[doubled]).all()
    loads = (weight[0] / counts[0])[pairs].sum(1)
    assert loads.max() <= target[0]


def test_same_counts_and_room_keep_every_slot():
    weight, current, _ = two_per_gpu_case(1, 8, 12, 0.0)
    out, found = repair_pairs(weight, current, current, np.array([np.inf]), 1)
    assert found[0] and (out == current).all()


def test_one_replica_handed_over_moves_one_slot():
    weight = np.array([[40.0, 10.0, 30.0, 20.0, 5.0, 2.0]])
    current = np.array([[0, 1, 0, 2, 3, 4, 3, 5]])  # experts 0 and 3 hold two replicas
    new = np.array([[0, 2, 1, 0, 2, 3, 4, 5]])  # 3 gives a replica to 2
    counts = expert_counts(new, 6)
    out, found = repair_pairs(weight, current, new, np.array([np.inf]), 1)
    assert found[0]
    assert (out != current).sum() == 1
    assert (expert_counts(out, 6) == counts).all()
    # the replica leaves the heavier of expert 3's GPUs (at the new counts 20 + 5 against 20 + 2)
    assert out[0, 4] == 2


def test_plans_with_a_mapping_move_fewer_slots_than_the_relabelled_new_plan():
    rng = np.random.default_rng(5)
    old = rng.lognormal(0.0, 1.0, (6, 128)) * 100.0
    new = old * np.exp(rng.normal(0.0, 0.15, old.shape))
    kw = dict(num_replicas=144, num_groups=8, num_nodes=4, num_gpus=72, policy="global")
    current = plan(torch.tensor(old), **kw).phy2log
    scratch = plan(torch.tensor(new), **kw).phy2log.numpy()
    result = plan(torch.tensor(new), current_phy2log=current, **kw)
    relabelled = relabel(scratch, current.numpy(), 128, 4, 72, False)
    assert result.migration.slots_changed < 0.5 * (relabelled != current.numpy()).sum()
    a = evaluate(torch.tensor(new), torch.tensor(scratch), 8, 4, 72, policy="global")
    b = evaluate(torch.tensor(new), result.phy2log, 8, 4, 72, policy="global")
    assert (b.layer_max_load <= a.layer_max_load * (1.0 + 0.002) * (1.0 + 1e-12)).all()


def test_hierarchical_layers_re_pair_within_nodes_only_where_the_nodes_hold_the_same_experts():
    rng = np.random.default_rng(3)
    old = rng.lognormal(0.0, 1.0, (8, 64)) * 100.0
    new_weight = old * np.exp(rng.normal(0.0, 0.15, old.shape))
    kw = dict(num_replicas=96, num_groups=8, num_nodes=2, num_gpus=48, policy="hierarchical")
    current = plan(torch.tensor(old), **kw).phy2log.numpy()
    new = plan(torch.tensor(new_weight), **kw).phy2log.numpy()
    target = gpu_loads(new_weight, new, 48).max(1) * 1.002
    out, found = repair_pairs(new_weight, current, new, target, 2)
    same_nodes = [all(set(c[n * 48:(n + 1) * 48]) == set(m[n * 48:(n + 1) * 48]) for n in (0, 1))
                  for c, m in zip(current, new)]
    assert not (found & ~np.array(same_nodes)).any()
    assert found.any()
    for layer in np.flatnonzero(found):
        for n in (0, 1):  # every expert stays on its node, with the new plan's counts
            block = slice(n * 48, (n + 1) * 48)
            assert (expert_counts(out[layer:layer + 1, block], 64)
                    == expert_counts(new[layer:layer + 1, block], 64)).all()
    assert (out[~found] == current[~found]).all()
