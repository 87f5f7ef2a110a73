"""Every class of invalid request gets INVALID_ARGUMENT naming its field; the next call succeeds."""

import grpc
import numpy as np
import pytest
from eplb_client.tensors import to_tensor
from eplb_client.v1 import placement_pb2 as pb
from .servicekit import SMALL, loads, poke, rebalance_request, two_per_expert_mapping, violations

GOOD = loads()
MAPPING = two_per_expert_mapping()  # [4, 32], 2 per expert


def with_loads(array):
    return lambda r: r.expert_loads.CopyFrom(to_tensor(array))


def topology(**fields):
    return lambda r: [setattr(r.topology, k, v) for k, v in fields.items()]


def mapping(array):
    return lambda r: r.current_phy2log.CopyFrom(to_tensor(array))


def slot_loads_only(r):
    r.slot_loads.CopyFrom(to_tensor(loads(layers=4, experts=32)))
    r.ClearField("current_phy2log")


def without_mapping(mutate):
    return lambda r: (r.ClearField("current_phy2log"), mutate(r))


REBALANCE_CASES = {
    "nan load": (with_loads(poke(GOOD, (1, 3), np.nan)), "expert_loads"),
    "inf load": (with_loads(poke(GOOD, (0, 0), np.inf)), "expert_loads"),
    "negative load": (with_loads(poke(GOOD, (2, 5), -1.0)), "expert_loads"),
    "negative int load": (with_loads(poke(GOOD.astype(np.int32), (2, 5), -4)), "expert_loads"),
    "layer total beyond float32": (with_loads(poke(GOOD, (3, 1), 1e308)), "expert_loads"),
    "loads not 2-d or 3-d": (with_loads(GOOD.ravel()), "expert_loads.shape"),
    "zero-sized loads": (with_loads(np.zeros((4, 0))), "expert_loads.shape"),
    "data shorter than shape": (lambda r: setattr(r.expert_loads, "data", r.expert_loads.data[:-8]),
                                "expert_loads"),
    "unspecified dtype": (lambda r: setattr(r.expert_loads, "dtype", 0), "expert_loads.dtype"),
    "data and values both set": (lambda r: r.expert_loads.float_values.append(1.0),
                                 "expert_loads"),
    "no loads": (lambda r: r.ClearField("expert_loads"), "expert_loads"),
    "no topology": (lambda r: r.ClearField("topology"), "topology.num_replicas"),
    "gpus do not divide slots": (topology(num_gpus=6), "topology.num_gpus"),
    "nodes do not divide gpus": (topology(num_nodes=3), "topology.num_nodes"),
    # 6 groups over 2 nodes: hierarchical, where groups must divide the 16 experts (a global
    # plan ignores groups that do not, as the reference does: see tests/integrations).
    "groups do not divide experts": (topology(num_groups=6), "topology.num_groups"),
    "negative groups": (topology(num_groups=-4), "topology.num_groups"),
    "fewer slots than experts": (without_mapping(topology(num_replicas=8)),
                                 "topology.num_replicas"),
    "negative gpus": (topology(num_gpus=-8), "topology.num_gpus"),
    "hierarchical with groups not over nodes": (
        lambda r: (topology(num_nodes=8)(r), setattr(r, "policy", pb.POLICY_HIERARCHICAL)),
        "topology.num_groups"),
    "expert count disagrees": (topology(num_logical_experts=15), "topology.num_logical_experts"),
    "unknown policy": (lambda r: setattr(r, "policy", 99), "policy"),
    "mapping entry too large": (mapping(poke(MAPPING, (1, 2), 16)), "current_phy2log"),
    # -1 marks an empty slot (accepted); other negative entries are not experts.
    "mapping entry negative": (mapping(poke(MAPPING, (3, 31), -2)), "current_phy2log"),
    "empty slot with slot loads": (
        lambda r: (r.slot_loads.CopyFrom(to_tensor(loads(4, 32))),
                   mapping(poke(MAPPING, (0, 0), -1))(r)), "current_phy2log"),
    "mapping leaves an expert without a slot": (
        mapping(np.where(MAPPING == 5, 6, MAPPING)), "current_phy2log"),
    # Another slot count is accepted (elastic EP: planned from scratch); other layers are not.
    "mapping of the wrong shape": (mapping(MAPPING[:3]), "current_phy2log.shape"),
    "slot loads with a mapping of another width": (
        lambda r: (r.slot_loads.CopyFrom(to_tensor(loads(4, 32))),
                   mapping(MAPPING[:, :16])(r)), "current_phy2log.shape"),
    "mapping of floats": (mapping(MAPPING.astype(np.float64)), "current_phy2log.dtype"),
    "slot loads without a mapping": (slot_loads_only, "current_phy2log"),
    "slot loads of the wrong width": (
        lambda r: (r.slot_loads.CopyFrom(to_tensor(loads(4, 30))), mapping(MAPPING)(r)),
        "slot_loads.shape"),
    "negative move budget": (lambda r: setattr(r.migration, "max_moved_slots_per_layer", -1),
                             "migration.max_moved_slots_per_layer"),
    "nan balancedness gain": (lambda r: setattr(r.migration, "min_balancedness_gain", np.nan),
                              "migration.min_balancedness_gain"),
    "negative half-life": (lambda r: setattr(r.history, "half_life", -2.0), "history.half_life"),
    "unknown objective": (lambda r: setattr(r.history, "objective", 42), "history.objective"),
    "robust objective with one window": (
        lambda r: setattr(r.history, "objective", pb.OBJECTIVE_ROBUST), "history.objective"),
    "float mapping dtype": (lambda r: setattr(r, "mapping_dtype", pb.DTYPE_FLOAT32),
                            "mapping_dtype"),
    "unknown mapping dtype": (lambda r: setattr(r, "mapping_dtype", 17), "mapping_dtype"),
    "unknown transfer format": (lambda r: setattr(r, "transfer_format", 9), "transfer_format"),
    # Size limits (the test server allows 64 layers, 512 experts, 1024 slots, 8 windows).
    "too many layers": (with_loads(loads(layers=65)), "expert_loads.shape"),
    "too many experts": (
        lambda r: (with_loads(loads(experts=1024))(r), topology(num_replicas=1024)(r)),
        "expert_loads.shape"),
    "too many slots": (topology(num_replicas=2048), "topology.num_replicas"),
    "too many windows": (with_loads(loads(windows=9)), "expert_loads.shape"),
    "huge declared shape, no data": (
        lambda r: r.expert_loads.CopyFrom(pb.Tensor(dtype=pb.DTYPE_FLOAT64,
                                                    shape=[1 << 40, 1 << 40])),
        "expert_loads.shape"),
}


def _mapping_gaps(r):
    r.phy2log.CopyFrom(to_tensor(np.where(MAPPING == 0, 1, MAPPING)))


EVALUATE_CASES = {
    "no mapping": (lambda r: r.ClearField("phy2log"), "phy2log"),
    "no loads": (lambda r: r.ClearField("expert_loads"), "expert_loads"),
    "mapping entry out of range": (
        lambda r: r.phy2log.CopyFrom(to_tensor(poke(MAPPING, (0, 0), 99))), "phy2log"),
    "mapping leaves an expert without a slot": (_mapping_gaps, "phy2log"),
    "mapping rows disagree with layers": (
        lambda r: r.phy2log.CopyFrom(to_tensor(MAPPING[:3])), "phy2log.shape"),
    "replica count disagrees": (lambda r: setattr(r.topology, "num_replicas", 64),
                                "topology.num_replicas"),
    "nan load": (lambda r: r.expert_loads.CopyFrom(to_tensor(poke(GOOD, (0, 1), np.nan))),
                 "expert_loads"),
    "gpus do not divide slots": (lambda r: setattr(r.topology, "num_gpus", 5),
                                 "topology.num_gpus"),
}


def evaluate_request():
    return pb.EvaluateRequest(topology=pb.Topology(num_groups=4, num_nodes=2, num_gpus=8),
                              expert_loads=to_tensor(GOOD), phy2log=to_tensor(MAPPING))


def expect_invalid(call, request, field):
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    fields = [f for f, _ in violations(caught.value)]
    assert field in fields, (fields, caught.value.details())
    assert all(why for _, why in violations(caught.value))


@pytest.mark.parametrize("case", list(REBALANCE_CASES))
def test_rebalance_rejects(client, case):
    mutate, field = REBALANCE_CASES[case]
    request = rebalance_request(GOOD)
    request.current_phy2log.CopyFrom(to_tensor(MAPPING))
    client.Rebalance(request, timeout=30)  # the unmutated request is valid
    mutate(request)
    expect_invalid(client.Rebalance, request, field)
    assert client.Rebalance(rebalance_request(GOOD), timeout=30).HasField("phy2log")


@pytest.mark.parametrize("case", list(EVALUATE_CASES))
def test_evaluate_rejects(client, case):
    mutate, field = EVALUATE_CASES[case]
    request = evaluate_request()
    client.Evaluate(request, timeout=30)
    mutate(request)
    expect_invalid(client.Evaluate, request, field)
    assert client.Evaluate(evaluate_request(), timeout=30).score.balancedness > 0


def test_several_topology_faults_are_reported_together(client):
    request = rebalance_request(GOOD, num_replicas=32, num_groups=3, num_nodes=3, num_gpus=6)
    with pytest.raises(grpc.RpcError) as caught:
        client.Rebalance(request, timeout=30)
    fields = {f for f, _ in violations(caught.value)}
    assert {"topology.num_gpus", "topology.num_groups"} <= fields


def test_message_over_the_byte_limit_is_refused_before_parsing(client):
    big = loads(layers=64, experts=512).astype(np.float64)  # 256 KiB: under the layer limits
    request = rebalance_request(np.tile(big, (1, 1)), num_replicas=512, num_groups=1,
                                num_nodes=1, num_gpus=8)
    request.model = "x" * (1 << 20)  # pushes the message over the 1 MiB limit
    with pytest.raises(grpc.RpcError) as caught:
        client.Rebalance(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.Rebalance(rebalance_request(GOOD, **SMALL), timeout=30).HasField("phy2log")


@pytest.mark.parametrize("value, index, words", [
    (np.nan, (1, 3), ["nan at [1, 3]", "finite"]),
    (np.inf, (0, 0), ["inf at [0, 0]", "finite"]),
    (-np.inf, (3, 15), ["-inf at [3, 15]", "finite"]),
    (-2.5, (2, 5), ["-2.5 at [2, 5]", "non-negative"]),
    (np.nan, (2, 1, 3), ["nan at [2, 1, 3]", "finite"]),  # a history [T, L, E]
])
def test_bad_load_messages_name_the_value_and_its_index(client, value, index, words):
    weight = loads(windows=3) if len(index) == 3 else GOOD
    with pytest.raises(grpc.RpcError) as caught:
        client.Rebalance(rebalance_request(poke(weight, index, value)), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(violations(caught.value)) == 1
    field, why = violations(caught.value)[0]
    assert field == "expert_loads" and all(w in why for w in words), why


def test_bad_slot_and_evaluate_loads_name_their_index(client):
    request = rebalance_request(GOOD)
    request.ClearField("expert_loads")
    request.slot_loads.CopyFrom(to_tensor(poke(loads(layers=4, experts=32), (3, 30), np.nan)))
    request.current_phy2log.CopyFrom(to_tensor(MAPPING))
    with pytest.raises(grpc.RpcError) as caught:
        client.Rebalance(request, timeout=30)
    assert [(f, "[3, 30]" in why) for f, why in violations(caught.value)] == [("slot_loads", True)]
    request = evaluate_request()
    request.expert_loads.CopyFrom(to_tensor(poke(GOOD, (0, 1), np.inf)))
    with pytest.raises(grpc.RpcError) as caught:
        client.Evaluate(request, timeout=30)
    assert [(f, "inf at [0, 1]" in why) for f, why in violations(caught.value)] \
        == [("expert_loads", True)]


def test_model_names_up_to_256_characters(client):
    request = rebalance_request(GOOD)
    request.model = "m" * 256
    assert client.Rebalance(request, timeout=30).HasField("phy2log")
    request.model = "m" * 257
    with pytest.raises(grpc.RpcError) as caught:
        client.Rebalance(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in violations(caught.value)] == ["model"]
