"""Round trips over TCP and a Unix socket equal the in-process engine's results."""

import eplb_server
import numpy as np
import pytest
import torch
from eplb_client.tensors import from_tensor, to_tensor
from eplb_client.v1 import placement_pb2 as pb
from .servicekit import SMALL, loads, rebalance_request, snapshot_loads

POLICIES = {pb.POLICY_AUTO: "auto", pb.POLICY_HIERARCHICAL: "hierarchical",
            pb.POLICY_GLOBAL: "global", pb.POLICY_DEEPSEEK: "deepseek"}
POLICY_ENUM = {"hierarchical": pb.POLICY_HIERARCHICAL, "global": pb.POLICY_GLOBAL,
               "deepseek": pb.POLICY_DEEPSEEK}


def assert_plan_equal(response, plan):
    np.testing.assert_array_equal(from_tensor(response.phy2log), plan.phy2log.numpy())
    np.testing.assert_array_equal(from_tensor(response.log2phy), plan.log2phy.numpy())
    np.testing.assert_array_equal(from_tensor(response.logcnt), plan.logcnt.numpy())
    assert response.policy == POLICY_ENUM[plan.policy]


def assert_score_equal(message, score):
    assert message.balancedness == pytest.approx(float(score.balancedness), rel=1e-12)
    np.testing.assert_allclose(message.layer_balancedness, score.layer_balancedness.numpy())
    np.testing.assert_allclose(message.layer_max_load, score.layer_max_load.numpy())
    np.testing.assert_allclose(message.layer_lower_bound, score.layer_lower_bound.numpy())
    assert message.mean_gap == pytest.approx(float(score.mean_gap), rel=1e-12, abs=1e-15)
    assert message.max_gap == pytest.approx(float(score.max_gap), rel=1e-12, abs=1e-15)


def bound_policy(policy):
    return "auto" if policy == "deepseek" else policy


@pytest.mark.parametrize("policy", list(POLICIES))
def test_rebalance_equals_engine(client, policy):
    weight = loads(seed=policy)
    request = rebalance_request(weight)
    request.policy = policy
    response = client.Rebalance(request, timeout=30)
    expected = eplb_server.plan(torch.from_numpy(weight), **SMALL, policy=POLICIES[policy])
    assert_plan_equal(response, expected)
    score = eplb_server.evaluate(torch.from_numpy(weight), expected.phy2log, 4, 2, 8,
                                 policy=bound_policy(expected.policy))
    assert_score_equal(response.plan, score)
    assert response.device == "cpu"
    assert response.compute_seconds > 0
    assert not response.HasField("current") and not response.HasField("migration")


def test_real_snapshot_58x256_to_288(client):
    weight = snapshot_loads()
    if weight is None:
        pytest.skip("../shared/data/deepseek-v3 is absent")
    assert weight.shape == (58, 256)
    topology = dict(num_replicas=288, num_groups=8, num_nodes=4, num_gpus=32)
    response = client.Rebalance(rebalance_request(weight, **topology), timeout=60)
    expected = eplb_server.plan(torch.from_numpy(weight), **topology)
    assert_plan_equal(response, expected)
    assert len(response.plan.layer_balancedness) == 58
    assert 0 < response.plan.balancedness <= 1


@pytest.mark.timeout(120)
def test_negative_zero_loads_are_zeros_and_the_server_keeps_serving(client):
    weight = np.random.default_rng(0).lognormal(0, 1, (4, 128)) * 100
    weight[:, :10] = -0.0  # hung the engine thread before the engine entry normalised it
    topology = dict(num_replicas=160, num_groups=8, num_nodes=4, num_gpus=16)
    response = client.Rebalance(rebalance_request(weight, **topology), timeout=60)
    assert_plan_equal(response, eplb_server.plan(torch.from_numpy(np.abs(weight)), **topology))
    assert client.Rebalance(rebalance_request(), timeout=30).HasField("plan")


def test_current_mapping_is_scored_and_migration_reported(client):
    old, new = loads(seed=1), loads(seed=2)
    current = eplb_server.plan(torch.from_numpy(old), **SMALL).phy2log
    request = rebalance_request(new)
    request.current_phy2log.CopyFrom(to_tensor(current.numpy()))
    response = client.Rebalance(request, timeout=30)
    expected = eplb_server.plan(torch.from_numpy(new), **SMALL, current_phy2log=current)
    assert_plan_equal(response, expected)
    bound = bound_policy(expected.policy)
    assert_score_equal(response.current, eplb_server.evaluate(torch.from_numpy(new), current,
                                                              4, 2, 8, policy=bound))
    assert response.HasField("migration") == (expected.migration is not None)
    if expected.migration is not None:
        m = expected.migration
        assert response.migration.slots_changed == m.slots_changed
        assert len(response.migration.transfers) == len(m.transfers)
        got = [(t.layer, t.slot, t.expert, t.source_slot) for t in response.migration.transfers]
        assert got == [tuple(row) for row in m.transfers.tolist()]
        assert [t.cross_node for t in response.migration.transfers] == \
            m.transfer_cross_node.tolist()


def test_transfer_table_holds_the_same_transfers_as_the_messages(client):
    """TRANSFER_FORMAT_TABLE: one [M, 5] int32 array, the messages' rows and cross-node flags
    in the same order, and no SlotTransfer messages; the rest of the response is unchanged."""
    current = eplb_server.plan(loads(seed=1), **SMALL).phy2log
    request = rebalance_request(loads(seed=2))
    request.current_phy2log.CopyFrom(to_tensor(current))
    messages = client.Rebalance(request, timeout=30)
    request.transfer_format = pb.TRANSFER_FORMAT_TABLE
    table = client.Rebalance(request, timeout=30)
    rows = from_tensor(table.migration.transfer_table)
    assert rows.dtype == np.int32 and rows.shape == (len(messages.migration.transfers), 5)
    assert len(rows) > 0 and len(table.migration.transfers) == 0
    assert rows.tolist() == [[t.layer, t.slot, t.expert, t.source_slot, int(t.cross_node)]
                             for t in messages.migration.transfers]
    table.migration.ClearField("transfer_table")
    messages.migration.ClearField("transfers")
    table.compute_seconds = messages.compute_seconds = 0
    assert table == messages


def test_slot_loads_are_summed_through_the_mapping(client):
    weight = loads(seed=3)
    mapping = eplb_server.plan(torch.from_numpy(weight), **SMALL).phy2log.numpy()
    slot_loads = loads(layers=4, experts=32, seed=4)  # any per-slot loads, [L, P]
    expert_loads = np.zeros_like(weight)
    for layer in range(4):
        np.add.at(expert_loads[layer], mapping[layer], slot_loads[layer])
    request = pb.RebalanceRequest(topology=pb.Topology(**SMALL), slot_loads=to_tensor(slot_loads),
                                  current_phy2log=to_tensor(mapping))
    response = client.Rebalance(request, timeout=30)
    expected = eplb_server.plan(torch.from_numpy(expert_loads), **SMALL,
                                current_phy2log=torch.from_numpy(mapping))
    assert_plan_equal(response, expected)


def test_history_reports_each_window(client):
    history = loads(windows=3, seed=5)
    response = client.Rebalance(rebalance_request(history), timeout=30)
    expected = eplb_server.plan(torch.from_numpy(history), **SMALL)
    assert_plan_equal(response, expected)
    assert len(response.plan.window_balancedness) == 3
    assert pb.Objective.Name(response.objective) == "OBJECTIVE_" + expected.objective.upper()
    assert response.objective == pb.OBJECTIVE_ADAPTIVE  # the default, with its backtest
    b, want = response.backtest, expected.backtest
    assert list(b.candidates) == list(want.candidates) and b.chosen == want.chosen
    assert list(b.layer_choice) == want.layer_choice.tolist() and b.steps == want.steps == 1
    np.testing.assert_allclose(b.balancedness, want.balancedness)


def test_packed_values_equal_raw_bytes(client):
    weight = loads(seed=6)
    raw = client.Rebalance(rebalance_request(weight), timeout=30)
    assert raw.phy2log.data and not raw.phy2log.int_values
    packed = rebalance_request(weight)
    for values in (dict(dtype=pb.DTYPE_INT64, int_values=weight.astype(np.int64).ravel()),
                   dict(dtype=pb.DTYPE_FLOAT32, float_values=weight.ravel())):
        packed.expert_loads.CopyFrom(pb.Tensor(shape=[4, 16], **values))
        response = client.Rebalance(packed, timeout=30)
        assert not response.phy2log.data  # packed in, packed out (readable as JSON)
        for name in ("phy2log", "log2phy", "logcnt"):
            np.testing.assert_array_equal(from_tensor(getattr(response, name)),
                                          from_tensor(getattr(raw, name)))


@pytest.mark.parametrize("policy", [pb.POLICY_DEEPSEEK, pb.POLICY_AUTO])
@pytest.mark.parametrize("packed", [False, True])
def test_int32_mappings_on_request(client, policy, packed):
    weight = loads(seed=7)
    request = rebalance_request(weight)
    request.policy = policy
    if packed:
        request.expert_loads.CopyFrom(pb.Tensor(dtype=pb.DTYPE_FLOAT64, shape=[4, 16],
                                                float_values=weight.ravel()))
    default = client.Rebalance(request, timeout=30)
    request.mapping_dtype = pb.DTYPE_INT32
    narrow = client.Rebalance(request, timeout=30)
    for name in ("phy2log", "log2phy", "logcnt"):
        wide, small = getattr(default, name), getattr(narrow, name)
        assert (wide.dtype, small.dtype) == (pb.DTYPE_INT64, pb.DTYPE_INT32)
        assert bool(small.data) != packed
        np.testing.assert_array_equal(from_tensor(small), from_tensor(wide))
    if not packed:
        assert narrow.log2phy.ByteSize() < 0.6 * default.log2phy.ByteSize()


@pytest.mark.parametrize("policy", [pb.POLICY_AUTO, pb.POLICY_GLOBAL])
def test_evaluate_equals_engine(client, policy):
    weight = loads(seed=7)
    mapping = eplb_server.plan(torch.from_numpy(loads(seed=8)), **SMALL).phy2log
    request = pb.EvaluateRequest(topology=pb.Topology(num_groups=4, num_nodes=2, num_gpus=8),
                                 expert_loads=to_tensor(weight), phy2log=to_tensor(mapping.numpy()),
                                 policy=policy)
    response = client.Evaluate(request, timeout=30)
    name = "hierarchical" if policy == pb.POLICY_AUTO else "global"
    assert response.policy == POLICY_ENUM[name]
    assert_score_equal(response.score, eplb_server.evaluate(torch.from_numpy(weight), mapping,
                                                            4, 2, 8, policy=name))
