"""Size limits on L, E, P, T and on the message are enforced before any allocation that depends
on the declared sizes: declared giants are refused with a few KiB allocated."""

import tracemalloc

import grpc
import psutil
import pytest
from eplb_client.tensors import TensorError, from_tensor, to_tensor
from eplb_client.v1 import placement_pb2 as pb
from eplb_server.validation import InvalidRequest, Limits, parse_evaluate, parse_rebalance

from ..service.servicekit import SMALL, loads, rebalance_request, stub

F64 = pb.DTYPE_FLOAT64
LIMITS = Limits()  # the production defaults


def declared(shape, dtype=F64, **values):
    """A tensor that declares `shape` but carries (almost) nothing."""
    return pb.Tensor(dtype=dtype, shape=shape, **values)


def giant_requests():
    """(name, request): each declares far more than it carries."""
    top = pb.Topology(num_replicas=LIMITS.max_replicas, num_groups=1, num_nodes=1, num_gpus=1)
    # Every dimension at its limit (128 MiB of float64 at the defaults), almost nothing sent.
    at_limit = [LIMITS.max_windows, LIMITS.max_layers, LIMITS.max_experts]
    out = {
        "2^40 layers": pb.RebalanceRequest(topology=top, expert_loads=declared([1 << 40, 16])),
        "2^40 x 2^40": pb.RebalanceRequest(topology=top,
                                           expert_loads=declared([1 << 40, 1 << 40])),
        "2^62 windows": pb.RebalanceRequest(topology=top,
                                            expert_loads=declared([1 << 62, 4, 16])),
        "all at the limits, 8 bytes sent": pb.RebalanceRequest(
            topology=top, expert_loads=declared(at_limit, data=b"\0" * 8)),
        "all at the limits, 3 packed values": pb.RebalanceRequest(
            topology=top, expert_loads=declared(at_limit, float_values=[1, 2, 3])),
        "2^40 slots in the mapping": pb.RebalanceRequest(
            topology=top, expert_loads=to_tensor(loads()),
            current_phy2log=declared([4, 1 << 40], pb.DTYPE_INT64)),
        "2^40 slot loads": pb.RebalanceRequest(
            topology=pb.Topology(num_replicas=1 << 30, num_groups=1, num_nodes=1, num_gpus=1),
            slot_loads=declared([4, 1 << 40])),
        "2^31 experts by topology": pb.RebalanceRequest(
            topology=pb.Topology(num_replicas=32, num_groups=1, num_nodes=1, num_gpus=1,
                                 num_logical_experts=(1 << 31) - 1),
            slot_loads=declared([4, 32]), current_phy2log=declared([4, 32], pb.DTYPE_INT64)),
    }
    return out


def peak_allocation_while_refused(parse, request) -> int:
    """Bytes allocated at the peak while `parse` rejects the request as invalid."""
    tracemalloc.start()
    try:
        with pytest.raises(InvalidRequest):
            parse(request, LIMITS)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name", list(giant_requests()))
def test_declared_giants_are_refused_before_allocation(name):
    peak = peak_allocation_while_refused(parse_rebalance, giant_requests()[name])
    assert peak < 256 << 10, f"{peak} bytes allocated for {name}"


def test_evaluate_giants_are_refused_before_allocation():
    request = pb.EvaluateRequest(
        topology=pb.Topology(num_groups=1, num_nodes=1, num_gpus=1),
        expert_loads=declared([LIMITS.max_layers, LIMITS.max_experts], data=b"\0" * 8),
        phy2log=declared([LIMITS.max_layers, LIMITS.max_replicas], pb.DTYPE_INT64))
    assert peak_allocation_while_refused(parse_evaluate, request) < 256 << 10


def test_tensor_decoding_checks_sizes_before_allocating():
    tracemalloc.start()
    try:
        for tensor in (declared([1 << 40, 1 << 40]), declared([1 << 30], data=b"\0" * 8),
                       declared([-1, 1 << 62])):
            with pytest.raises(TensorError):
                from_tensor(tensor)
        with pytest.raises(TensorError):
            from_tensor(declared([1 << 20, 1 << 20]), max_elements=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 10


def test_server_memory_does_not_follow_declared_sizes(subprocess_server):
    """Over RPC to a subprocess server with the default limits: every giant is INVALID_ARGUMENT
    and the server's resident memory stays within 64 MiB of where it was (8 EiB declared)."""
    process = psutil.Process(subprocess_server.server.proc.pid)
    channel, client = stub(subprocess_server.tcp)
    try:
        client.Rebalance(rebalance_request(loads(), **SMALL), timeout=60)
        before = process.memory_info().rss
        for _ in range(5):
            for name, request in giant_requests().items():
                with pytest.raises(grpc.RpcError) as caught:
                    client.Rebalance(request, timeout=60)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        after = process.memory_info().rss
        assert client.Rebalance(rebalance_request(loads(), **SMALL), timeout=60).HasField(
            "phy2log")
    finally:
        channel.close()
    assert after - before < 64 << 20, (before, after)
