"""The engine worker process: an injected crash or hang costs only the request that caused it."""

import time

import grpc
import numpy as np
import pytest
from eplb_client.tensors import from_tensor
from eplb_server.server import Config
from grpc_health.v1 import health_pb2, health_pb2_grpc

import eplb_server

from . import faulty_engine
from .servicekit import SMALL, ServerThread, loads, rebalance_request, stub

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@pytest.fixture
def supervised():
    """A server whose worker process runs faulty_engine, with a 3 s limit per job."""
    running = ServerThread(Config(listen=["127.0.0.1:0"], metrics_port=None, warmup_shapes=[],
                                  engine_module="tests.service.faulty_engine",
                                  plan_time_limit=3.0))
    running.wait_warm()
    channel, placement = stub(running.addresses[0])
    health = health_pb2_grpc.HealthStub(channel)
    yield running, placement, health
    channel.close()
    running.close()


def marked(value):
    weight = loads()
    weight[0, 0] = value
    return rebalance_request(weight)


def restarts(running, reason):
    return running.server.metrics.registry.get_sample_value(
        "eplb_engine_restarts_total", {"reason": reason}) or 0


def wait_serving(health, timeout=120):
    """Seconds until health says SERVING again."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError("the server never reported SERVING again")


def expected_plan():
    return eplb_server.plan(loads(), **SMALL).phy2log


@pytest.mark.parametrize("fault, reason", [(faulty_engine.CRASH, "crash"),
                                           (faulty_engine.HANG, "timeout")])
def test_a_crash_or_hang_fails_one_request_and_the_worker_comes_back(supervised, fault, reason):
    running, placement, health = supervised
    pid = running.server._worker._proc.pid
    queued = None
    with pytest.raises(grpc.RpcError) as caught:
        failing = placement.Rebalance.future(marked(fault), timeout=60)
        time.sleep(0.2)
        queued = placement.Rebalance.future(rebalance_request(), timeout=60)  # behind the fault
        failing.result()
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "id" in caught.value.details() and "SIGSEGV" not in caught.value.details()
    assert restarts(running, reason) == 1
    # The request queued behind the fault is served by the new worker.
    np.testing.assert_array_equal(from_tensor(queued.result().phy2log), expected_plan())
    wait_serving(health)
    assert running.server._worker._proc.pid != pid
    assert running.server.metrics.registry.get_sample_value("eplb_engine_up") == 1
    response = placement.Rebalance(rebalance_request(loads(seed=3)), timeout=60)
    np.testing.assert_array_equal(from_tensor(response.phy2log),
                                  eplb_server.plan(loads(seed=3), **SMALL).phy2log)


def test_health_is_not_serving_while_the_worker_restarts(supervised):
    running, placement, health = supervised
    with pytest.raises(grpc.RpcError):
        placement.Rebalance(marked(faulty_engine.CRASH), timeout=60)
    statuses = set()
    start = time.monotonic()
    while time.monotonic() - start < 60:
        status = health.Check(health_pb2.HealthCheckRequest(), timeout=5).status
        statuses.add(status)
        if status == SERVING:
            break
        time.sleep(0.02)
    assert statuses == {NOT_SERVING, SERVING}
    assert running.server.metrics.registry.get_sample_value("eplb_serving") == 1


def test_a_running_job_reports_its_age(supervised):
    running, placement, _ = supervised
    call = placement.Rebalance.future(marked(faulty_engine.HANG), timeout=60)
    time.sleep(1.5)
    age = running.server.metrics.registry.get_sample_value("eplb_engine_job_seconds")
    assert 1.0 <= age < 3.5
    with pytest.raises(grpc.RpcError):
        call.result()
    assert running.server.metrics.registry.get_sample_value("eplb_engine_job_seconds") == 0


def test_undecodable_bytes_are_invalid_argument_and_counted(supervised):
    running, _, _ = supervised
    channel = grpc.insecure_channel(running.addresses[0])
    call = channel.unary_unary("/eplb.v1.PlacementService/Rebalance")
    with pytest.raises(grpc.RpcError) as caught:
        call(b"\xff\xff\xff\xff not a protobuf", timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a RebalanceRequest" in caught.value.details()
    assert running.server.metrics.registry.get_sample_value(
        "eplb_undecodable_requests_total", {"grpc_method": "Rebalance"}) == 1
    # The worker is the same one: bad bytes never reach the engine.
    assert restarts(running, "crash") == 0
    channel.close()
