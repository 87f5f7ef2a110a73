"""Client behaviour against an in-process fake server: retries, errors, requests, results."""

from __future__ import annotations

import dataclasses
import json
import sys

import grpc
import numpy as np
import pytest

from . import fake_server
from eplb_client import AsyncEplbClient, EplbClient, EplbError, RetryPolicy
from eplb_client.results import Migration
from eplb_client.tensors import from_tensor, to_tensor
from eplb_client.v1 import placement_pb2 as pb

TOPO = dict(num_replicas=16, num_groups=4, num_nodes=2, num_gpus=4)
LOADS = np.arange(24, dtype=np.float64).reshape(2, 12) + 1


def test_unavailable_is_retried_until_it_succeeds(fake):
    target, servicer = fake
    servicer.unavailable = 2
    with EplbClient(target, timeout=10) as c:
        r = c.rebalance(LOADS, **TOPO)
    assert servicer.calls == 3
    assert r.phy2log.shape == (2, 16)


def test_a_draining_servers_cancelled_is_retried(fake):
    target, servicer = fake
    servicer.unavailable, servicer.cancelled = 1, 2
    with EplbClient(target, timeout=10) as c:
        r = c.rebalance(LOADS, **TOPO)
    assert servicer.calls == 4
    assert r.phy2log.shape == (2, 16)
    servicer.cancelled = 10
    with EplbClient(target, timeout=10, retry=RetryPolicy(max_attempts=2)) as c:
        with pytest.raises(EplbError) as info:
            c.evaluate(LOADS, r.phy2log, num_groups=4, num_nodes=2, num_gpus=4)
    assert info.value.code == grpc.StatusCode.CANCELLED and servicer.calls == 6


def test_unavailable_gives_up_after_max_attempts(fake):
    target, servicer = fake
    servicer.unavailable = 100
    policy = RetryPolicy(max_attempts=3, initial_backoff=0.01)
    with EplbClient(target, timeout=10, retry=policy) as c:
        with pytest.raises(EplbError) as info:
            c.rebalance(LOADS, **TOPO)
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert info.value.message == "warming up"
    assert servicer.calls == 3


def test_retries_stop_at_the_deadline(fake):
    target, servicer = fake
    servicer.unavailable = 10**6
    policy = RetryPolicy(max_attempts=10**6, initial_backoff=0.05, max_backoff=0.05)
    with EplbClient(target, timeout=0.5, retry=policy) as c:
        with pytest.raises(EplbError) as info:
            c.rebalance(LOADS, **TOPO)
    assert info.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    assert 2 <= servicer.calls < 1000


def test_invalid_argument_is_not_retried_and_names_the_field(fake):
    target, servicer = fake
    with EplbClient(target) as c:
        with pytest.raises(EplbError) as info:
            c.rebalance(LOADS, **{**TOPO, "num_replicas": fake_server.BAD_REPLICAS})
    e = info.value
    assert servicer.calls == 1
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.fields == ("topology.num_gpus",)
    assert "must divide num_replicas (13)" in e.field_violations[0].description


def test_field_violations_without_grpcio_status(fake, monkeypatch):
    target, _ = fake
    monkeypatch.setitem(sys.modules, "grpc_status", None)
    with EplbClient(target) as c:
        with pytest.raises(EplbError) as info:
            c.rebalance(LOADS, **{**TOPO, "num_replicas": fake_server.BAD_REPLICAS})
    assert info.value.fields == ("topology.num_gpus",)


@pytest.mark.parametrize("bad, field", [
    (dict(policy="fastest"), "policy"),
    (dict(objective="median"), "history.objective"),
    (dict(num_gpus=4.5), "topology.num_gpus"),
    (dict(max_moved_slots_per_layer="x"), "migration.max_moved_slots_per_layer"),
    (dict(current_phy2log=np.full((2, 16), 0.5)), "current_phy2log"),
])
def test_client_side_errors_name_the_field_and_send_nothing(fake, bad, field):
    target, servicer = fake
    with EplbClient(target) as c:
        with pytest.raises(EplbError) as info:
            c.rebalance(LOADS, **{**TOPO, **bad})
    assert info.value.fields == (field,)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert servicer.calls == 0


def test_ragged_loads_are_rejected_client_side(fake):
    target, servicer = fake
    with EplbClient(target) as c:
        with pytest.raises(EplbError) as info:
            c.rebalance([[1.0, 2.0], [3.0]], **TOPO)
    assert info.value.fields == ("expert_loads",)


def test_request_carries_every_option(fake):
    target, servicer = fake
    current = np.zeros((2, 16), dtype=np.int32)
    history = np.stack([LOADS, LOADS + 1]).astype(np.float32)  # robust needs [T, L, E]
    with EplbClient(target) as c:
        c.rebalance(history, **TOPO, policy="hierarchical",
                    current_phy2log=current, max_moved_slots_per_layer=3,
                    max_moved_slots_total=7, min_balancedness_gain=0.01, from_scratch=True,
                    objective="robust", robust_k=1.5, half_life=2.0, model="m")
    req = servicer.last_request
    assert req.model == "m" and req.policy == pb.POLICY_HIERARCHICAL
    assert (req.topology.num_replicas, req.topology.num_gpus) == (16, 4)
    assert req.migration.from_scratch and req.migration.max_moved_slots_per_layer == 3
    assert req.migration.max_moved_slots_total == 7
    assert req.migration.min_balancedness_gain == pytest.approx(0.01)
    assert req.history.objective == pb.OBJECTIVE_ROBUST and req.history.robust_k == 1.5
    assert req.expert_loads.dtype == pb.DTYPE_FLOAT32
    np.testing.assert_array_equal(from_tensor(req.expert_loads), history)
    np.testing.assert_array_equal(from_tensor(req.current_phy2log), current)
    assert req.mapping_dtype == pb.DTYPE_INT32
    assert req.transfer_format == pb.TRANSFER_FORMAT_TABLE


@pytest.mark.parametrize("top, dtype", [(15, pb.DTYPE_INT32), (2**31, pb.DTYPE_INT64)])
def test_mappings_travel_as_int32_and_come_back_as_int64(fake, top, dtype):
    target, servicer = fake
    current = np.tile(np.arange(16, dtype=np.int64) % 12, (2, 1))
    current[1, 15] = top
    with EplbClient(target) as c:
        r = c.rebalance(LOADS, current_phy2log=current, **TOPO)
    req = servicer.last_request
    assert req.current_phy2log.dtype == dtype  # int32 only where every entry fits
    np.testing.assert_array_equal(from_tensor(req.current_phy2log), current)
    assert r.phy2log.dtype == r.log2phy.dtype == r.logcnt.dtype == np.int64
    np.testing.assert_array_equal(r.phy2log, np.tile(np.arange(16) % 12, (2, 1)))


@pytest.mark.parametrize("loads, dtype", [
    (np.full((2, 12), 1234.0), pb.DTYPE_FLOAT32),  # token counts: float32 holds them exactly
    (np.full((2, 12), 0.1), pb.DTYPE_FLOAT64),  # float32 would round 0.1
    (np.full((2, 12), 2.0**25 + 1), pb.DTYPE_FLOAT64),  # past float32's whole numbers
    (np.full((2, 12), 1e300), pb.DTYPE_FLOAT64),  # past float32's range
    (np.full((2, 12), 7, dtype=np.int64), pb.DTYPE_INT32),
    (np.full((2, 12), 2**40, dtype=np.int64), pb.DTYPE_INT64),
])
def test_loads_travel_in_four_bytes_only_where_nothing_is_lost(fake, loads, dtype):
    target, servicer = fake
    with EplbClient(target) as c:
        c.rebalance(loads, **TOPO)
    sent = servicer.last_request.expert_loads
    assert sent.dtype == dtype
    assert np.array_equal(from_tensor(sent).astype(np.float64), loads.astype(np.float64))


def test_nan_loads_reach_the_server_as_nan(fake):
    """Narrowing never hides a bad value: NaN goes as float64 for the server to name."""
    target, servicer = fake
    loads = np.ones((2, 12))
    loads[1, 3] = np.nan
    with EplbClient(target) as c:
        c.rebalance(loads, **TOPO)
    sent = from_tensor(servicer.last_request.expert_loads)
    assert sent.dtype == np.float64 and np.isnan(sent[1, 3])


def test_migration_reads_the_transfer_table_and_the_messages_alike():
    """A server that knows TRANSFER_FORMAT_TABLE sends one array; an older one, messages."""
    rows, cross = np.array([[0, 3, 7, 1], [2, 5, 0, 9], [1, 0, 4, 4]]), np.array([1, 0, 1])
    messages = pb.Migration(slots_changed=3)
    for (layer, slot, expert, source), c in zip(rows.tolist(), cross.tolist()):
        messages.transfers.add(layer=layer, slot=slot, expert=expert, source_slot=source,
                               cross_node=bool(c))
    table = pb.Migration(slots_changed=3, transfer_table=to_tensor(
        np.column_stack([rows, cross]).astype(np.int32)))
    for m in (Migration.from_proto(messages), Migration.from_proto(table)):
        assert m.transfers.dtype == np.int64 and np.array_equal(m.transfers, rows)
        assert m.transfer_cross_node.dtype == bool
        assert m.transfer_cross_node.tolist() == [True, False, True]
    empty = Migration.from_proto(pb.Migration())
    assert empty.transfers.shape == (0, 4) and empty.transfer_cross_node.shape == (0,)


def test_slot_loads_use_the_other_oneof_field(fake):
    target, servicer = fake
    with EplbClient(target) as c:
        with pytest.raises(EplbError):  # the fake does not plan from slot loads
            c.rebalance(np.ones((2, 16)), **TOPO, slot_loads=True, num_logical_experts=12,
                        current_phy2log=np.zeros((2, 16), np.int64))
    req = servicer.last_request
    assert req.WhichOneof("loads") == "slot_loads" and req.topology.num_logical_experts == 12


def test_results_are_frozen_and_serialise(fake):
    target, _ = fake
    with EplbClient(target) as c:
        r = c.rebalance(LOADS, current_phy2log=np.zeros((2, 16), np.int64), **TOPO)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.policy = "x"
    with pytest.raises(ValueError):
        r.phy2log[0, 0] = 5
    d = json.loads(json.dumps(r.to_dict()))
    assert d["policy"] == "global" and d["objective"] == "sum" and d["device"] == "fake"
    assert np.array_equal(d["phy2log"], r.phy2log)
    assert d["migration"]["transfers"] == [[0, 1, 2, 3]]
    assert d["migration"]["transfer_cross_node"] == [True]
    assert d["plan"]["layer_balancedness"] == [0.5, 0.5]
    assert r.log2phy.shape == (2, 12, 2) and (r.log2phy[:, :4] >= 0).all()


def test_unreachable_target_raises_unavailable(tmp_path):
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01)
    with EplbClient(f"unix://{tmp_path}/none.sock", timeout=5, retry=policy) as c:
        with pytest.raises(EplbError) as info:
            c.health()
    assert info.value.code == grpc.StatusCode.UNAVAILABLE


def test_targets_from_env_and_lists(monkeypatch, fake):
    target, _ = fake
    monkeypatch.setenv("EPLB_TARGET", target)
    with EplbClient() as c:
        assert c.targets == [target] and c.health() == "SERVING"
    assert EplbClient("a:1, unix:///s").targets == ["a:1", "unix:///s"]
    with pytest.raises(ValueError):
        EplbClient("http://a:1")


async def test_async_retries_and_errors(fake):
    target, servicer = fake
    servicer.unavailable = 1
    async with AsyncEplbClient(target, timeout=10) as c:
        r = await c.rebalance(LOADS, **TOPO)
        assert servicer.calls == 2 and r.logcnt.sum() == 32
        with pytest.raises(EplbError) as info:
            await c.rebalance(LOADS, **{**TOPO, "num_replicas": fake_server.BAD_REPLICAS})
        assert info.value.fields == ("topology.num_gpus",) and servicer.calls == 3
        assert await c.health("unknown") == "SERVICE_UNKNOWN"


def test_error_pickles_and_prints():
    import pickle

    from eplb_client import FieldViolation

    e = EplbError(grpc.StatusCode.INVALID_ARGUMENT, "bad", [FieldViolation("policy", "unknown")])
    back = pickle.loads(pickle.dumps(e))
    assert back.code == e.code and back.fields == ("policy",)
    assert str(back) == "INVALID_ARGUMENT: bad\n  policy: unknown"
