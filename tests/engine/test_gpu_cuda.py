"""The GPU planner on a CUDA device: the same checks as under the interpreter, on the compiled
kernels, plus the API's device choice, CUDA graphs and no host sync inside a plan. Skips
without a CUDA device or triton; `device=` is checked on any machine."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eplb_server import plan
from tests.engine.gpu_cases import (AGREEMENT, CASES, agrees_with_cpu, case_loads,
                                    constraint)
from tests.engine.hard_cases import global_bound, gpu_peaks, groups_stay_on_nodes

TOLERANCE = 1e-9
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _triton():
    return pytest.importorskip("triton", reason="the GPU planner needs triton")


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match="device must be one of"):
        plan(torch.ones(1, 4), 4, 1, 1, 2, device="tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_is_refused():
    with pytest.raises(ValueError, match="no CUDA device"):
        plan(torch.ones(1, 4), 4, 1, 1, 2, device="cuda")


def test_auto_on_a_cpu_weight_plans_on_the_cpu():
    result = plan(torch.arange(1.0, 9.0).view(1, 8), 12, 1, 1, 4)
    assert result.device == "cpu"


@cuda
def test_auto_plans_few_slots_per_gpu_on_the_cpu_engine():
    """Below GPU_AUTO_MIN_SLOTS_PER_GPU the CPU engine's plans peak lower: auto takes it there,
    and the GPU from that many slots; an explicit cuda always takes the GPU."""
    _triton()
    from eplb_server.engine.api import GPU_AUTO_MIN_SLOTS_PER_GPU

    weight = torch.rand(2, 16, generator=torch.Generator().manual_seed(0)).cuda() * 1000
    assert plan(weight, 32, 1, 1, 16).device == "cpu"  # 2 slots per GPU
    assert plan(weight, 32, 1, 1, 16, device="cuda").device.startswith("cuda")
    assert plan(weight, 4 * GPU_AUTO_MIN_SLOTS_PER_GPU, 1, 1, 4).device.startswith("cuda")


@cuda
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cuda_plans_match_the_invariants(case):
    _triton()
    from eplb_server.engine.gpu.planner import plan_tensors

    name, layers, experts, replicas, groups, nodes, gpus, policy, _ = case
    weight = case_loads(case)
    phy2log, rank, logcnt = (t.cpu().numpy() for t in plan_tensors(
        torch.from_numpy(weight).cuda(), replicas, *constraint(case), gpus))
    counts = np.stack([np.bincount(row, minlength=experts) for row in phy2log])
    assert (counts == logcnt).all() and (logcnt >= 1).all()
    if policy == "hierarchical":
        assert groups_stay_on_nodes(phy2log, groups, nodes, experts)
    else:
        groups, nodes = 1, 1
    reference = plan(torch.from_numpy(weight), replicas, groups, nodes, gpus, policy="deepseek")
    ours, theirs = gpu_peaks(weight, phy2log, gpus), gpu_peaks(
        weight, reference.phy2log.numpy(), gpus)
    assert (ours <= theirs * (1 + TOLERANCE)).all()


TIE_FREE = [c for c in CASES if agrees_with_cpu(c)]


@cuda
@pytest.mark.parametrize("case", TIE_FREE, ids=[c[0] for c in TIE_FREE])
def test_peaks_as_the_cpu_engine(case):
    """As under the interpreter: on tie-free loads, every layer's peak within AGREEMENT of the
    bound of the CPU engine's."""
    _triton()
    from eplb_server.engine.gpu.planner import plan_tensors

    _, _, _, replicas, _, _, gpus, _, _ = case
    weight = case_loads(case)
    phy2log = plan_tensors(torch.from_numpy(weight).cuda(), replicas, 1, 1, gpus)[0]
    cpu = plan(torch.from_numpy(weight), replicas, 1, 1, gpus, policy="global", device="cpu")
    bound = global_bound(weight, replicas, gpus)
    ours = gpu_peaks(weight, phy2log.cpu().numpy(), gpus)
    theirs = gpu_peaks(weight, cpu.phy2log.numpy(), gpus)
    assert (ours <= theirs + AGREEMENT * bound).all(), ((ours - theirs) / bound).max()


@cuda
def test_api_plans_on_the_gpu_and_says_so():
    _triton()
    case = CASES[0]
    weight = torch.from_numpy(case_loads(case)).cuda()
    result = plan(weight, case[3], 1, 1, case[6], policy="global")
    assert result.device.startswith("cuda") and result.phy2log.device.type == "cuda"
    again = plan(weight, case[3], 1, 1, case[6], policy="global")  # a graph replay
    assert torch.equal(result.phy2log, again.phy2log)
    cpu = plan(weight.cpu(), case[3], 1, 1, case[6], policy="global", device="cpu")
    assert cpu.device == "cpu"
    assert plan(weight, case[3], 1, 1, case[6], policy="deepseek").device == "cpu"


@cuda
def test_graph_replay_matches_eager_and_does_not_sync():
    _triton()
    from eplb_server.engine.gpu.graphs import GraphPlanner
    from eplb_server.engine.gpu.planner import plan_tensors

    case = CASES[5]
    weight = torch.from_numpy(case_loads(case)).cuda()
    topology = (case[3], *constraint(case), case[6])
    eager = plan_tensors(weight, *topology)
    planner = GraphPlanner()
    planner(weight, *topology)  # captures
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        replayed = planner(weight, *topology)
        eager_again = plan_tensors(weight, *topology)  # no host sync in the eager plan either
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(planner) == 1
    for a, b, c in zip(eager, replayed, eager_again):
        assert torch.equal(a, b) and torch.equal(a, c)
