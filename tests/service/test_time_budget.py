"""RebalanceRequest.time_budget_ms reaches the engine over a real server: a budget that runs out
says so (and still beats the reference), none or an ample one does not, a bad one is refused."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from eplb_client import EplbClient
from eplb_client.tensors import from_tensor
from eplb_client.v1 import placement_pb2 as pb

from tests.engine.hard_cases import gpu_peaks

from .servicekit import loads, rebalance_request, stub, violations

# 48 layers, 4 slots per GPU: refinement takes far longer than 1 us
TOPOLOGY = dict(num_replicas=96, num_groups=1, num_nodes=1, num_gpus=24)
WEIGHT = loads(layers=48, experts=64, seed=7)


def ask(client, budget, policy=pb.POLICY_GLOBAL):
    request = rebalance_request(WEIGHT, **TOPOLOGY)
    request.policy = policy
    request.time_budget_ms = budget
    return client.Rebalance(request, timeout=120)


@pytest.fixture(scope="module")
def placement(server):
    channel, client = stub(server.addresses[0])
    yield client
    channel.close()


def test_a_budget_that_runs_out_is_reported_and_never_worse_than_the_reference(placement):
    tight, full = ask(placement, 1e-3), ask(placement, 0.0)
    reference = ask(placement, 0.0, pb.POLICY_DEEPSEEK)
    assert tight.time_budget_ran_out and not full.time_budget_ran_out
    assert not reference.time_budget_ran_out
    peak = gpu_peaks(WEIGHT, from_tensor(tight.phy2log), TOPOLOGY["num_gpus"])
    reference_peak = gpu_peaks(WEIGHT, from_tensor(reference.phy2log), TOPOLOGY["num_gpus"])
    assert (peak <= reference_peak * (1 + 1e-9)).all()
    assert full.plan.balancedness > tight.plan.balancedness


def test_an_ample_budget_gives_the_plan_without_one(placement):
    ample, none = ask(placement, 1e7), ask(placement, 0.0)
    assert not ample.time_budget_ran_out
    assert np.array_equal(from_tensor(ample.phy2log), from_tensor(none.phy2log))


@pytest.mark.parametrize("budget", [-1.0, float("nan"), float("inf")])
def test_bad_budgets_are_invalid_arguments_naming_the_field(placement, budget):
    with pytest.raises(grpc.RpcError) as caught:
        ask(placement, budget)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in violations(caught.value)] == ["time_budget_ms"]
    assert not ask(placement, 0.0).time_budget_ran_out  # the server still answers


def test_the_python_client_passes_the_budget_and_reports_it(server):
    with EplbClient(server.addresses[0], timeout=120) as client:
        tight = client.rebalance(WEIGHT, **TOPOLOGY, policy="global", time_budget_ms=1e-3)
        full = client.rebalance(WEIGHT, **TOPOLOGY, policy="global")
    assert not tight.refinement_finished and full.refinement_finished
