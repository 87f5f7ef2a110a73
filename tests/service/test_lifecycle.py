"""Health, reflection, overload, deadlines, engine faults and draining, on in-process servers."""

import re
import time

import grpc
import pytest
from eplb_client.v1 import placement_pb2 as pb
from eplb_server.server import Config
from eplb_server.service import SERVICE_NAME
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from .servicekit import (ControlledEngine, ServerThread, loads, rebalance_request, stub,
                         violations)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def controlled(tmp_path):
    """A fresh server over a ControlledEngine; yields (server, engine, client stub)."""
    servers = []

    def start(warmup=(), hold_engine=False, **config):
        engine = ControlledEngine()
        if hold_engine:
            engine.gate.clear()
        config.setdefault("listen", ["127.0.0.1:0"])
        running = ServerThread(Config(metrics_port=None, warmup_shapes=list(warmup), **config),
                               engine)
        servers.append(running)
        channel, placement = stub(running.addresses[0])
        running.channel = channel
        return running, engine, placement

    yield start
    for running in servers:
        running.channel.close()
        running.close()


def health_of(channel, service=""):
    request = health_pb2.HealthCheckRequest(service=service)
    return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


def handled(running, code):
    """grpc_server_handled_total for Rebalance with this code, read from the server's registry.

    A failed call's client may see its status a moment before the server counts it: read this
    after a later successful call (counted before its response is sent).
    """
    labels = dict(grpc_type="unary", grpc_service=SERVICE_NAME, grpc_method="Rebalance",
                  grpc_code=code)
    return running.server.metrics.registry.get_sample_value("grpc_server_handled_total", labels)


def test_health_not_serving_until_warm_and_again_on_shutdown(controlled):
    running, engine, placement = controlled(warmup=["2x16:32:8:2:4"], hold_engine=True)
    assert engine.entered.wait(30)  # warm-up is running, held at the engine's gate
    assert health_of(running.channel) == NOT_SERVING
    assert health_of(running.channel, SERVICE_NAME) == NOT_SERVING
    engine.gate.set()
    running.wait_warm()
    assert health_of(running.channel) == SERVING
    assert health_of(running.channel, SERVICE_NAME) == SERVING

    watch = health_pb2_grpc.HealthStub(running.channel).Watch(
        health_pb2.HealthCheckRequest(service=SERVICE_NAME))
    assert next(watch).status == SERVING
    stopping = running.submit(running.server.stop(5.0))
    assert next(watch).status == NOT_SERVING
    watch.cancel()
    stopping.result(30)


def test_reflection_lists_the_service(controlled):
    running, _, _ = controlled()
    database = ProtoReflectionDescriptorDatabase(running.channel)
    services = set(database.get_services())
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= services
    file = database.FindFileContainingSymbol(SERVICE_NAME)
    assert [m.name for m in file.service[0].method] == ["Rebalance", "Evaluate"]


def test_reflection_can_be_switched_off(controlled):
    running, _, _ = controlled(reflection=False)
    with pytest.raises(grpc.RpcError) as caught:
        list(ProtoReflectionDescriptorDatabase(running.channel).get_services())
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def fail_once(engine, placement, fault):
    """One Rebalance with the engine raising `fault`, then one that succeeds. -> the error."""
    engine.fail = fault
    with pytest.raises(grpc.RpcError) as caught:
        placement.Rebalance(rebalance_request(), timeout=30)
    engine.fail = None
    assert placement.Rebalance(rebalance_request(), timeout=30).HasField("phy2log")
    return caught.value


def test_engine_fault_is_internal_and_the_server_keeps_serving(controlled, caplog):
    running, engine, placement = controlled()
    error = fail_once(engine, placement, RuntimeError("injected fault at 0x7f00deadbeef"))
    assert error.code() == grpc.StatusCode.INTERNAL
    # The caller gets an id, not the fault's text; the log has both.
    assert "injected" not in error.details() and "0x" not in error.details()
    error_id = re.search(r"\(id ([0-9a-f]+)\)", error.details()).group(1)
    assert any(error_id in r.getMessage() and "injected fault" in r.getMessage()
               for r in caplog.records)
    assert handled(running, "Internal") == 1
    assert health_of(running.channel) == SERVING


def test_engine_value_error_is_invalid_argument_naming_the_field(controlled):
    _, engine, placement = controlled()
    error = fail_once(engine, placement, ValueError("num_gpus (8) cannot host this placement"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in violations(error)] == ["topology.num_gpus"]


def test_overload_is_resource_exhausted(controlled):
    running, engine, placement = controlled(max_concurrent=1)
    engine.gate.clear()
    first = placement.Rebalance.future(rebalance_request(), timeout=60)
    assert engine.entered.wait(30)
    with pytest.raises(grpc.RpcError) as caught:  # a different request: not coalesced
        placement.Rebalance(rebalance_request(loads(seed=1)), timeout=30)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert health_of(running.channel) == SERVING  # health is answered while the engine is busy
    engine.gate.set()
    assert first.result().HasField("phy2log")
    assert placement.Rebalance(rebalance_request(), timeout=30).HasField("phy2log")
    assert handled(running, "ResourceExhausted") == 1


def test_expired_requests_are_dropped_and_the_next_succeeds(controlled):
    running, engine, placement = controlled(max_concurrent=4)
    engine.gate.clear()
    running_call = placement.Rebalance.future(rebalance_request(), timeout=1.0)
    assert engine.entered.wait(30)
    queued_call = placement.Rebalance.future(rebalance_request(loads(seed=1)), timeout=1.0)
    for call in (running_call, queued_call):
        with pytest.raises(grpc.RpcError) as caught:
            call.result()
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server's copy of a deadline expires a moment after the client's: free the engine
    # only once the server has dropped the queued job (pending 1: the held one still runs).
    for _ in range(1000):
        if running.server._worker.pending == 1:
            break
        time.sleep(0.01)
    assert running.server._worker.pending == 1
    engine.gate.set()
    assert placement.Rebalance(rebalance_request(), timeout=30).HasField("phy2log")
    assert engine.plan_calls == 2  # the queued request never reached the engine
    assert handled(running, "DeadlineExceeded") == 2


def test_stop_drains_in_flight_requests(controlled):
    running, engine, placement = controlled()
    engine.gate.clear()
    in_flight = placement.Rebalance.future(rebalance_request(), timeout=60)
    assert engine.entered.wait(30)
    stopping = running.submit(running.server.stop(30.0))
    late_channel, late = stub(running.addresses[0])
    with pytest.raises(grpc.RpcError):  # new calls are refused once draining starts
        late.Rebalance(rebalance_request(), timeout=5)
    late_channel.close()
    engine.gate.set()
    response = in_flight.result()
    assert response.HasField("phy2log") and response.policy == pb.POLICY_HIERARCHICAL
    stopping.result(30)
