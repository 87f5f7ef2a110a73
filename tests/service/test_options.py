"""Every RebalanceRequest option reaches the engine: on inputs where the option changes the plan,
the server's answer equals the engine called with that option and differs from the answer
without it (a server that dropped the option would answer the latter)."""

from __future__ import annotations

import eplb_server
import grpc
import numpy as np
import pytest
import torch
from eplb_client.tensors import from_tensor, to_tensor
from eplb_client.v1 import placement_pb2 as pb

from .servicekit import SMALL, loads, rebalance_request, stub, violations

OLD, NEW = loads(seed=1), loads(seed=2)  # [4, 16], unrelated: the new plan moves many slots
HISTORY = loads(seed=3, windows=5)  # [5, 4, 16]
HISTORY[-1] *= loads(seed=4)  # the last window differs from the others
POLICY = {"auto": pb.POLICY_AUTO, "hierarchical": pb.POLICY_HIERARCHICAL,
          "global": pb.POLICY_GLOBAL, "deepseek": pb.POLICY_DEEPSEEK}
OBJECTIVE = {"sum": pb.OBJECTIVE_SUM, "expected_peak": pb.OBJECTIVE_EXPECTED_PEAK,
             "recency": pb.OBJECTIVE_RECENCY, "robust": pb.OBJECTIVE_ROBUST,
             "adaptive": pb.OBJECTIVE_ADAPTIVE}
CURRENT = eplb_server.plan(torch.from_numpy(OLD), **SMALL).phy2log.numpy()


@pytest.fixture(scope="module")
def placement(server):
    channel, client = stub(server.addresses[0])
    yield client
    channel.close()


def engine(weight, topology=SMALL, **options):
    """The engine's plan for these options, as arrays (and the migration's slots changed)."""
    result = eplb_server.plan(torch.from_numpy(weight), **topology, **options)
    moved = None if result.migration is None else int(result.migration.slots_changed)
    return result.phy2log.numpy(), result.logcnt.numpy(), result.policy, result.objective, moved


def rpc(placement, weight, topology=SMALL, policy="auto", current=None, migration=None,
        history=None):
    request = rebalance_request(weight, **topology)
    request.policy = POLICY[policy]
    if current is not None:
        request.current_phy2log.CopyFrom(to_tensor(current))
    if migration:
        request.migration.CopyFrom(pb.MigrationOptions(**migration))
    if history:
        request.history.CopyFrom(pb.HistoryOptions(**{
            **history, "objective": OBJECTIVE[history["objective"]]}))
    response = placement.Rebalance(request, timeout=60)
    moved = response.migration.slots_changed if response.HasField("migration") else None
    names = {v: k for k, v in POLICY.items()}
    objectives = {v: k for k, v in OBJECTIVE.items()}
    return (from_tensor(response.phy2log), from_tensor(response.logcnt), names[response.policy],
            objectives[response.objective], moved)


def same(a, b) -> bool:
    return all(np.array_equal(x, y) if isinstance(x, np.ndarray) else x == y
               for x, y in zip(a, b))


# (option, server call kwargs with it, without it, engine kwargs with it)
CASES = {
    "policy global": (dict(policy="global"), dict(), dict(policy="global")),
    "policy deepseek": (dict(policy="deepseek"), dict(), dict(policy="deepseek")),
    "policy hierarchical": (dict(policy="hierarchical"), dict(policy="global"),
                            dict(policy="hierarchical")),
    "topology.num_groups": (dict(topology={**SMALL, "num_groups": 2}), dict(),
                            dict(topology={**SMALL, "num_groups": 2})),
    "topology.num_nodes": (dict(topology={**SMALL, "num_nodes": 4}), dict(),
                           dict(topology={**SMALL, "num_nodes": 4})),
    "topology.num_gpus": (dict(topology={**SMALL, "num_gpus": 16}), dict(),
                          dict(topology={**SMALL, "num_gpus": 16})),
    "topology.num_replicas": (dict(topology={**SMALL, "num_replicas": 48}), dict(),
                              dict(topology={**SMALL, "num_replicas": 48})),
    "current_phy2log": (dict(current=CURRENT), dict(), dict(current_phy2log=CURRENT)),
    "migration.from_scratch": (dict(current=CURRENT, migration=dict(from_scratch=True)),
                               dict(current=CURRENT),
                               dict(current_phy2log=CURRENT, from_scratch=True)),
    "migration.max_moved_slots_per_layer": (
        dict(current=CURRENT, migration=dict(max_moved_slots_per_layer=3)),
        dict(current=CURRENT), dict(current_phy2log=CURRENT, max_moved_slots_per_layer=3)),
    "migration.max_moved_slots_total": (
        dict(current=CURRENT, migration=dict(max_moved_slots_total=7)),
        dict(current=CURRENT), dict(current_phy2log=CURRENT, max_moved_slots_total=7)),
    "migration.min_balancedness_gain": (
        dict(current=CURRENT, migration=dict(min_balancedness_gain=0.2)),
        dict(current=CURRENT), dict(current_phy2log=CURRENT, min_balancedness_gain=0.2)),
}
HISTORY_CASES = {
    "history.objective sum": (dict(history=dict(objective="sum")), dict(),
                              dict(objective="sum")),
    "history.objective recency": (dict(history=dict(objective="recency")), dict(),
                                  dict(objective="recency")),
    "history.objective robust": (dict(history=dict(objective="robust")), dict(),
                                 dict(objective="robust")),
    "history.objective adaptive": (dict(history=dict(objective="adaptive")),
                                   dict(history=dict(objective="sum")),
                                   dict(objective="adaptive")),
    "history.objective expected_peak": (dict(history=dict(objective="expected_peak")),
                                        dict(history=dict(objective="sum")),
                                        dict(objective="expected_peak")),
    "history.half_life": (dict(history=dict(objective="recency", half_life=0.25)),
                          dict(history=dict(objective="recency")),
                          dict(objective="recency", half_life=0.25)),
    "history.robust_k": (dict(history=dict(objective="robust", robust_k=4.0)),
                         dict(history=dict(objective="robust")),
                         dict(objective="robust", robust_k=4.0)),
}


@pytest.mark.parametrize("case", list(CASES) + list(HISTORY_CASES))
def test_option_changes_the_answer_as_it_changes_the_engines(placement, case):
    with_it, without, engine_options = {**CASES, **HISTORY_CASES}[case]
    weight = HISTORY if case in HISTORY_CASES else NEW
    engine_options = dict(engine_options)
    topology = engine_options.pop("topology", SMALL)
    answer = rpc(placement, weight, **with_it)
    expected = engine(weight, topology, **engine_options)
    assert same(answer, expected), case
    assert not same(answer, rpc(placement, weight, **without)), f"{case} changes nothing here"


def test_slot_loads_are_summed_per_expert_through_the_current_mapping(placement, server):
    slot_loads = np.arange(1.0, 1.0 + 4 * 32).reshape(4, 32) ** 2  # a different load per slot
    expert_loads = np.zeros((4, 16))
    for layer in range(4):
        np.add.at(expert_loads[layer], CURRENT[layer], slot_loads[layer])
    request = pb.RebalanceRequest(topology=pb.Topology(**SMALL), slot_loads=to_tensor(slot_loads),
                                  current_phy2log=to_tensor(CURRENT))
    response = placement.Rebalance(request, timeout=60)
    expected = eplb_server.plan(torch.from_numpy(expert_loads), **SMALL, current_phy2log=CURRENT)
    np.testing.assert_array_equal(from_tensor(response.phy2log), expected.phy2log.numpy())
    # num_logical_experts: 0 reads E from the mapping; 20 (K divides it) leaves 16-19 no slot.
    request.topology.num_logical_experts = 16
    assert np.array_equal(from_tensor(placement.Rebalance(request, timeout=60).phy2log),
                          expected.phy2log.numpy())
    request.topology.num_logical_experts = 20
    with pytest.raises(grpc.RpcError) as info:
        placement.Rebalance(request, timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(info.value)[0][0] == "current_phy2log"
    assert "expert 16" in violations(info.value)[0][1]


def test_mapping_dtype_and_packed_loads_choose_the_answers_encoding(placement):
    expected = eplb_server.plan(torch.from_numpy(NEW), **SMALL)
    request = rebalance_request(NEW)
    answers = {}
    for dtype in (pb.DTYPE_UNSPECIFIED, pb.DTYPE_INT64, pb.DTYPE_INT32):
        request.mapping_dtype = dtype
        answers[dtype] = placement.Rebalance(request, timeout=60)
    for dtype, numpy_dtype in ((pb.DTYPE_UNSPECIFIED, np.int64), (pb.DTYPE_INT64, np.int64),
                               (pb.DTYPE_INT32, np.int32)):
        for name in ("phy2log", "log2phy", "logcnt"):
            array = from_tensor(getattr(answers[dtype], name))
            assert array.dtype == numpy_dtype, (dtype, name)
            np.testing.assert_array_equal(array, getattr(expected, name).numpy())
    packed = pb.RebalanceRequest(topology=pb.Topology(**SMALL), expert_loads=pb.Tensor(
        dtype=pb.DTYPE_FLOAT64, shape=NEW.shape, float_values=NEW.ravel().tolist()))
    answer = placement.Rebalance(packed, timeout=60)
    assert not answer.phy2log.data and len(answer.phy2log.int_values) == NEW.shape[0] * 32
    np.testing.assert_array_equal(from_tensor(answer.phy2log), expected.phy2log.numpy())
