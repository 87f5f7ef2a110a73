"""Every rank at once: identical requests computed once; the client retries a full queue."""

import concurrent.futures
import threading
import time

import grpc
import numpy as np
import pytest
from eplb_client import EplbClient, RetryPolicy
from eplb_client.tensors import from_tensor
from eplb_server.coalescing import Coalescer
from eplb_server.server import Config

from .servicekit import SMALL, ControlledEngine, ServerThread, loads, rebalance_request, stub


@pytest.fixture
def held_server():
    servers = []

    def start(**config):
        engine = ControlledEngine()
        running = ServerThread(Config(listen=["127.0.0.1:0"], metrics_port=None,
                                      warmup_shapes=[], **config), engine)
        servers.append(running)
        return running, engine
    yield start
    for running in servers:
        running.close()


def sample(running, name, **labels):
    return running.server.metrics.registry.get_sample_value(name, labels) or 0


def test_identical_requests_in_flight_are_computed_once(held_server):
    running, engine = held_server()
    engine.gate.clear()
    channel, placement = stub(running.addresses[0])
    calls = [placement.Rebalance.future(rebalance_request(), timeout=60) for _ in range(64)]
    assert engine.entered.wait(30)
    time.sleep(0.5)  # let every call reach the server while the first one is held
    engine.gate.set()
    answers = [call.result() for call in calls]
    assert engine.plan_calls == 1
    assert all(a.SerializeToString() == answers[0].SerializeToString() for a in answers)
    assert sample(running, "eplb_engine_computations_total", grpc_method="Rebalance") == 1
    assert sample(running, "eplb_coalesced_requests_total", source="inflight") == 63
    # A recent answer is reused; a different request is computed.
    placement.Rebalance(rebalance_request(), timeout=30)
    assert engine.plan_calls == 1
    assert sample(running, "eplb_coalesced_requests_total", source="recent") == 1
    placement.Rebalance(rebalance_request(loads(seed=1)), timeout=30)
    assert engine.plan_calls == 2
    channel.close()


def test_recent_answers_are_not_kept_when_coalescing_time_is_zero(held_server):
    running, engine = held_server(coalesce_seconds=0)
    channel, placement = stub(running.addresses[0])
    for _ in range(2):
        placement.Rebalance(rebalance_request(), timeout=30)
    assert engine.plan_calls == 2
    channel.close()


def test_a_caller_leaving_does_not_cancel_the_others(held_server):
    running, engine = held_server()
    engine.gate.clear()
    channel, placement = stub(running.addresses[0])
    leaving = placement.Rebalance.future(rebalance_request(), timeout=60)
    assert engine.entered.wait(30)
    staying = placement.Rebalance.future(rebalance_request(), timeout=60)
    time.sleep(0.3)
    leaving.cancel()
    engine.gate.set()
    np.testing.assert_array_equal(from_tensor(staying.result().phy2log),
                                  engine.real.plan(loads(), **SMALL).phy2log)
    channel.close()


def test_the_client_retries_a_full_queue_within_its_deadline(held_server):
    running, engine = held_server(max_concurrent=1)
    engine.gate.clear()
    channel, placement = stub(running.addresses[0])
    first = placement.Rebalance.future(rebalance_request(), timeout=60)
    assert engine.entered.wait(30)
    threading.Timer(0.5, engine.gate.set).start()
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.2, max_backoff=1.0)
    with EplbClient(running.addresses[0], retry=policy) as client:
        result = client.rebalance(loads(seed=2), **SMALL, timeout=30)
    assert result.phy2log.shape == (4, 32)
    assert first.result().HasField("phy2log")
    assert sample(running, "grpc_server_handled_total", grpc_type="unary",
                  grpc_service="eplb.v1.PlacementService", grpc_method="Rebalance",
                  grpc_code="ResourceExhausted") >= 1
    assert sample(running, "eplb_retried_requests_total", grpc_method="Rebalance") >= 1
    channel.close()


def test_the_client_gives_up_on_a_full_queue_at_its_deadline(held_server):
    running, engine = held_server(max_concurrent=1)
    engine.gate.clear()
    channel, placement = stub(running.addresses[0])
    first = placement.Rebalance.future(rebalance_request(), timeout=60)
    assert engine.entered.wait(30)
    start = time.monotonic()
    with EplbClient(running.addresses[0]) as client:
        with pytest.raises(Exception) as caught:
            client.rebalance(loads(seed=2), **SMALL, timeout=1.0)
    assert time.monotonic() - start < 2.0
    assert caught.value.code in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                 grpc.StatusCode.DEADLINE_EXCEEDED)
    engine.gate.set()
    first.result()
    channel.close()


async def test_coalescer_keeps_recent_answers_for_ttl_within_its_bounds():
    now = [0.0]
    coalescer = Coalescer(ttl=5.0, max_entries=2, max_bytes=100, clock=lambda: now[0])
    computed = []

    def compute(value):
        async def run(_deadline):
            computed.append(value)
            return value
        return run

    assert await coalescer.run("a", compute(b"1" * 10)) == (b"1" * 10, "computed")
    assert await coalescer.run("a", compute(b"x")) == (b"1" * 10, "recent")
    now[0] = 5.0  # expired
    assert (await coalescer.run("a", compute(b"2" * 10)))[1] == "computed"
    await coalescer.run("b", compute(b"3" * 10))
    await coalescer.run("c", compute(b"4" * 10))  # over max_entries: "a" goes
    assert (await coalescer.run("a", compute(b"5")))[1] == "computed"
    await coalescer.run("big", compute(b"6" * 101))  # over max_bytes: never kept
    assert (await coalescer.run("big", compute(b"7")))[1] == "computed"


def test_many_distinct_callers_all_succeed_with_retries():
    """64 distinct requests at once against a 4-deep queue: every one answered in time."""
    running = ServerThread(Config(listen=["127.0.0.1:0"], metrics_port=None, warmup_shapes=[],
                                  max_concurrent=4, isolation="thread"))
    try:
        running.wait_warm()
        with EplbClient(running.addresses[0]) as client:
            def one(seed):
                return client.rebalance(loads(seed=seed), **SMALL, timeout=60).phy2log
            with concurrent.futures.ThreadPoolExecutor(64) as pool:
                plans = list(pool.map(one, range(64)))
        assert len(plans) == 64 and all(p.shape == (4, 32) for p in plans)
        assert running.server.metrics.registry.get_sample_value(
            "eplb_engine_computations_total", {"grpc_method": "Rebalance"}) == 64
    finally:
        running.close()
