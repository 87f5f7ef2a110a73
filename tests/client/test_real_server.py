"""Client paths that test_client_offline.py checks against the fake server, against real ones:
every option reaches the engine, and a call a draining server drops is retried elsewhere."""

from __future__ import annotations

import threading

import eplb_server
import grpc
import numpy as np
import pytest
import torch
from eplb_client import EplbClient, RetryPolicy

from tests.service.servicekit import (SMALL, ControlledEngine, ServerThread, loads,
                                      rebalance_request, stub)

OLD, NEW = loads(seed=1), loads(seed=2)  # [4, 16] on SMALL: 32 slots, 4 groups, 2 nodes, 8 GPUs
HISTORY = loads(seed=3, windows=5)
HISTORY[-1] *= loads(seed=4)
CURRENT = eplb_server.plan(torch.from_numpy(OLD), **SMALL).phy2log.numpy()
# option: (client and engine keyword arguments with it, without it); `model` is for logs only.
CASES = {
    "policy": (dict(policy="global"), dict()),
    "current_phy2log": (dict(current_phy2log=CURRENT), dict()),
    "from_scratch": (dict(current_phy2log=CURRENT, from_scratch=True),
                     dict(current_phy2log=CURRENT)),
    "max_moved_slots_per_layer": (dict(current_phy2log=CURRENT, max_moved_slots_per_layer=3),
                                  dict(current_phy2log=CURRENT)),
    "max_moved_slots_total": (dict(current_phy2log=CURRENT, max_moved_slots_total=7),
                              dict(current_phy2log=CURRENT)),
    "min_balancedness_gain": (dict(current_phy2log=CURRENT, min_balancedness_gain=0.2),
                              dict(current_phy2log=CURRENT)),
    "objective": (dict(objective="sum"), dict()),
    "half_life": (dict(objective="recency", half_life=0.25), dict(objective="recency")),
    "robust_k": (dict(objective="robust", robust_k=4.0), dict(objective="robust")),
}
HISTORY_OPTIONS = {"objective", "half_life", "robust_k"}


@pytest.mark.parametrize("option", list(CASES))
def test_every_option_reaches_the_engine(server, option):
    with_it, without = CASES[option]
    weight = HISTORY if option in HISTORY_OPTIONS else NEW
    with EplbClient(server[0], timeout=60) as c:
        answer = c.rebalance(weight, **SMALL, **with_it, model="options")
        plain = c.rebalance(weight, **SMALL, **without)
    expected = eplb_server.plan(torch.from_numpy(weight), **SMALL, **with_it)
    np.testing.assert_array_equal(answer.phy2log, expected.phy2log.numpy())
    np.testing.assert_array_equal(answer.logcnt, expected.logcnt.numpy())
    assert answer.policy == expected.policy and answer.objective == expected.objective
    if expected.migration is not None:
        assert answer.migration.slots_changed == expected.migration.slots_changed
    assert not np.array_equal(answer.phy2log, plain.phy2log), f"{option} changes nothing here"


def test_slot_loads_and_expert_count_reach_the_server(server):
    slot_loads = np.arange(1.0, 1.0 + 4 * 32).reshape(4, 32) ** 2
    expert_loads = np.zeros((4, 16))
    for layer in range(4):
        np.add.at(expert_loads[layer], CURRENT[layer], slot_loads[layer])
    expected = eplb_server.plan(torch.from_numpy(expert_loads), **SMALL, current_phy2log=CURRENT)
    with EplbClient(server[1], timeout=60) as c:
        for experts in (None, 16):
            r = c.rebalance(slot_loads, **SMALL, slot_loads=True, current_phy2log=CURRENT,
                            num_logical_experts=experts)
            np.testing.assert_array_equal(r.phy2log, expected.phy2log.numpy())
        with pytest.raises(Exception) as info:  # experts 16-19 would have no slot
            c.rebalance(slot_loads, **SMALL, slot_loads=True, current_phy2log=CURRENT,
                        num_logical_experts=20)
    assert info.value.fields == ("current_phy2log",)


def test_a_draining_servers_dropped_call_is_retried_on_the_next_server(tmp_path):
    """Server A holds a call in its engine and the client's call in its queue, and is stopped
    with a short grace period: gRPC drops both ("Cancelling all calls"), and the client retries
    on server B. grpcio 1.85 reports that drop as UNAVAILABLE over TCP and Unix sockets alike;
    the CANCELLED a draining server may send instead is retried by the same rule (RETRYABLE)
    but could not be produced by a real server here: only the fake server sends it
    (test_client_offline.py)."""
    from eplb_client._retry import RETRYABLE

    from eplb_server.server import Config

    engine = ControlledEngine()
    engine.gate.clear()
    draining = ServerThread(Config(listen=["127.0.0.1:0"], metrics_port=None, warmup_shapes=[]),
                            engine)
    serving = ServerThread(Config(listen=[f"unix://{tmp_path}/b.sock"], metrics_port=None,
                                  warmup_shapes=[]))
    outcome = {}
    pending = lambda: draining.server.metrics.registry.get_sample_value(  # noqa: E731
        "eplb_engine_pending_requests")
    client = EplbClient([draining.addresses[0], serving.addresses[0]], timeout=60,
                        retry=RetryPolicy(max_attempts=2, initial_backoff=0.01))
    channel, raw = stub(draining.addresses[0])
    try:
        raw_call = raw.Rebalance.future(rebalance_request(NEW), timeout=60)
        assert engine.entered.wait(30)

        def call():
            try:
                outcome["result"] = client.rebalance(NEW, **SMALL)
            except Exception as e:  # reported below
                outcome["error"] = e

        caller = threading.Thread(target=call)
        caller.start()
        while pending() < 2 and caller.is_alive():  # the client's call waits behind the raw one
            caller.join(0.05)
        assert pending() == 2  # the client's first attempt is on A
        stopping = draining.submit(draining.server.stop(0.2))
        with pytest.raises(grpc.RpcError) as cancelled:
            raw_call.result(30)
        assert cancelled.value.code() in RETRYABLE, cancelled.value
        assert "Cancelling all calls" in cancelled.value.details()
        caller.join(60)
        engine.gate.set()
        stopping.result(30)
    finally:
        engine.gate.set()
        channel.close()
        client.close()
        draining.loop.call_soon_threadsafe(draining.loop.stop)  # stopped above
        draining.thread.join(10)
        serving.close()
    assert "error" not in outcome, outcome.get("error")
    expected = eplb_server.plan(torch.from_numpy(NEW), **SMALL).phy2log.numpy()
    np.testing.assert_array_equal(outcome["result"].phy2log, expected)
