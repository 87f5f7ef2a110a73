"""The GPU planner's Triton kernels, run by triton's interpreter on CPU tensors (CI has no GPU),
checked against the CPU engine, the reference and the plan invariants.

The kernels run once, in a child process with TRITON_INTERPRET=1 (triton reads it when first
imported, so setting it here would turn every later kernel of this process into an interpreted
one); the tests below check its plans. About 4 minutes of interpreter time here, alone.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from eplb_server import evaluate, plan
from eplb_server.engine.packing import (COUNT_MOVE_GAP, FEW_SLOTS_REFINE_TOLERANCE,
                                        PAIR_SWAP_ALL_MAX_CAP, REFINE_TOLERANCE)
from tests.conftest import early_children, start_interpreter_child
from tests.engine.gpu_cases import AGREEMENT, CASES, agrees_with_cpu, case_loads
from tests.engine.hard_cases import global_bound, gpu_peaks, groups_stay_on_nodes

pytest.importorskip("triton", reason="the GPU planner needs triton (pip install '.[gpu]')")
TOLERANCE = 1e-9  # relative: float64 sums of the same pieces in another order
CASE_IDS = [case[0] for case in CASES]


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """{key: array} of the child's plans (phy2log_i, rank_i, logcnt_i, seconds_i, again_3);
    the child started at session start (tests/conftest.py) when this file was selected."""
    child, path = early_children.pop(pathlib.Path(__file__).resolve(), (None, None))
    if child is None:
        path = tmp_path_factory.mktemp("gpu") / "plans.npz"
        child = start_interpreter_child(path)
    try:
        assert child.wait(timeout=1500) == 0, "the interpreter's child process failed"
    finally:
        child.kill()
    with np.load(path) as data:
        return dict(data)


def _answers(interpreted, index):
    case = CASES[index]
    return case, case_loads(case), interpreted[f"phy2log_{index}"], \
        interpreted[f"rank_{index}"], interpreted[f"logcnt_{index}"]


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_plan_is_valid(interpreted, index):
    case, weight, phy2log, rank, logcnt = _answers(interpreted, index)
    _, layers, experts, replicas, groups, nodes, *_ = case
    assert phy2log.shape == (layers, replicas) and logcnt.shape == (layers, experts)
    assert phy2log.min() >= 0 and phy2log.max() < experts
    counts = np.stack([np.bincount(row, minlength=experts) for row in phy2log])
    assert (counts == logcnt).all() and (logcnt >= 1).all()
    for layer in range(layers):  # replica ranks 0..c-1 of each expert, in slot order
        for expert in range(experts):
            slots = np.flatnonzero(phy2log[layer] == expert)
            assert (rank[layer, slots] == np.arange(slots.size)).all()
    if case[7] == "hierarchical":
        assert groups_stay_on_nodes(phy2log, groups, nodes, experts)


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_never_worse_than_reference(interpreted, index):
    case, weight, phy2log, _, _ = _answers(interpreted, index)
    _, _, _, replicas, groups, nodes, gpus, policy, _ = case
    if policy == "global":  # the reference's global policy: one node, one group
        groups, nodes = 1, 1
    reference = plan(torch.from_numpy(weight), replicas, groups, nodes, gpus, policy="deepseek")
    ours = gpu_peaks(weight, phy2log, gpus)
    theirs = gpu_peaks(weight, reference.phy2log.numpy(), gpus)
    assert (ours <= theirs * (1 + TOLERANCE)).all(), (ours / theirs).max()


@pytest.mark.parametrize("index", [i for i, c in enumerate(CASES)
                                   if c[7] == "global" and c[3] // c[6] != 2],
                         ids=[c[0] for c in CASES if c[7] == "global" and c[3] // c[6] != 2])
def test_replica_counts_are_the_references(interpreted, index):
    """The replication kernel makes the reference's choices (float32, lowest index first); where
    those give an expert more replicas than GPUs, the capped counts may plan lower instead;
    where the plan stays COUNT_MOVE_GAP above the mean GPU load (so above the reference's), the
    count moves may change them. (At two slots per GPU the counts are searched:
    test_never_worse_than_reference holds them.)"""
    case, weight, _, _, logcnt = _answers(interpreted, index)
    gpus = case[6]
    reference = plan(torch.from_numpy(weight), case[3], 1, 1, gpus, policy="deepseek")
    theirs = reference.logcnt.numpy()
    same = (logcnt == theirs).all(1)
    moved = gpu_peaks(weight, reference.phy2log.numpy(), gpus) \
        > weight.sum(1) / gpus * (1 + COUNT_MOVE_GAP)
    assert (same | moved)[theirs.max(1) <= gpus].all()
    assert (same | moved | (logcnt.max(1) <= gpus)).all()
    assert (logcnt.sum(1) == case[3]).all()


def _heaviest_swap_gain(weight, phy2log, gpus):
    """Per layer, whether some 1-for-1 swap of a replica of the heaviest GPU with one of another
    GPU lowers the pair's peak, keeping each GPU to one replica per expert where the counts
    allow (the refinement's fair share)."""
    layers, slots = phy2log.shape
    cap = slots // gpus
    found = np.zeros(layers, bool)
    for layer in range(layers):
        counts = np.bincount(phy2log[layer], minlength=weight.shape[1])
        limit = -(-counts // gpus)
        packs = phy2log[layer].reshape(gpus, cap)
        piece = weight[layer] / counts
        loads = piece[packs].sum(1)
        heavy = int(np.argmax(loads))
        top = loads[heavy]
        for other in range(gpus):
            for a in range(cap):
                for b in range(cap):
                    ea, eb = packs[heavy, a], packs[other, b]
                    delta = piece[ea] - piece[eb]
                    if other == heavy or not 0 < delta < top - loads[other]:
                        continue
                    fits = (np.delete(packs[other], b) == ea).sum() < limit[ea] \
                        and (np.delete(packs[heavy], a) == eb).sum() < limit[eb]
                    if fits and max(top - delta, loads[other] + delta) < top * (1 - 1e-9):
                        found[layer] = True
    return found


@pytest.mark.parametrize("index", [i for i, c in enumerate(CASES)
                                   if c[7] == "global" and c[3] // c[6] > 2],
                         ids=[c[0] for c in CASES if c[7] == "global" and c[3] // c[6] > 2])
def test_refinement_ends_in_a_local_optimum(interpreted, index):
    """Above its target (the bound plus REFINE_TOLERANCE, or FEW_SLOTS_REFINE_TOLERANCE up to
    PAIR_SWAP_ALL_MAX_CAP per GPU), no 1-for-1 swap of the heaviest GPU helps: the kernel's scan
    misses none (whichever counts, the reference's, capped or moved, won)."""
    case, weight, phy2log, _, _ = _answers(interpreted, index)
    gpus = case[6]
    score = evaluate(torch.from_numpy(weight), torch.from_numpy(phy2log), 1, 1, gpus,
                     policy="global")
    peaks = gpu_peaks(weight, phy2log, gpus)
    tolerance = FEW_SLOTS_REFINE_TOLERANCE if case[3] // gpus <= PAIR_SWAP_ALL_MAX_CAP \
        else REFINE_TOLERANCE
    above = peaks > np.asarray(score.layer_lower_bound) * (1 + tolerance)
    assert not (_heaviest_swap_gain(weight, phy2log, gpus) & above).any()


def test_same_request_same_plan(interpreted):
    again = [key for key in interpreted if key.startswith("again_")]
    assert "again_3" in again and len(again) >= 5
    for key in again:
        assert (interpreted[key] == interpreted[key.replace("again", "phy2log")]).all(), key


TIE_FREE = [i for i, c in enumerate(CASES) if agrees_with_cpu(c)]


@pytest.mark.parametrize("index", TIE_FREE, ids=[CASE_IDS[i] for i in TIE_FREE])
def test_peaks_as_the_cpu_engine(interpreted, index):
    """On tie-free loads the GPU planner makes the CPU engine's decisions, so every layer's peak
    is within AGREEMENT (0.05% of the bound) of the CPU engine's: at two slots per GPU the count
    search and the bisection; above, both starts, refinement (the CPU engine's swap candidates
    and its stop at the first pack that reaches its target), pairwise balancing and the count
    moves (without them a skewed layer of few experts trailed by several percent)."""
    case, weight, phy2log, _, _ = _answers(interpreted, index)
    replicas, gpus = case[3], case[6]
    cpu = plan(torch.from_numpy(weight), replicas, 1, 1, gpus, policy="global", device="cpu")
    bound = global_bound(weight, replicas, gpus)
    ours, theirs = gpu_peaks(weight, phy2log, gpus), gpu_peaks(weight, cpu.phy2log.numpy(), gpus)
    assert (ours <= theirs + AGREEMENT * bound).all(), ((ours - theirs) / bound).max()


def test_count_search_at_two_slots_per_gpu_beats_the_reference(interpreted):
    """At two slots per GPU only the counts can improve on the reference's pairing: on skewed
    tie-free loads the search finds a lower peak on every layer here."""
    index = CASE_IDS.index("global 2/GPU")
    case, weight, phy2log, _, _ = _answers(interpreted, index)
    reference = plan(torch.from_numpy(weight), case[3], 1, 1, case[6], policy="deepseek")
    ours = gpu_peaks(weight, phy2log, case[6])
    assert (ours < gpu_peaks(weight, reference.phy2log.numpy(), case[6]) * (1 - 1e-6)).all()


# aten ops that read a device tensor's values on the host (a sync on CUDA), or whose output size
# depends on values (nonzero, masked_select, unique, tensor repeats): none may run in a plan.
SYNCING_OPS = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select",
               "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim",
               "repeat_interleave", "allclose", "tolist"}


def test_no_op_of_a_plan_waits_on_the_device(interpreted):
    """Structural check of 'no host sync inside a plan' on the CPU (torch's sync debug mode
    checks it on CUDA): the torch ops of hierarchical and 2-per-GPU plans."""
    recorded = [key for key in interpreted if key.startswith("ops_")]
    assert len(recorded) >= 3
    for key in recorded:
        names = set(interpreted[key].tolist())
        assert {"sort", "searchsorted", "gather"} <= names, names  # it saw the plan's ops
        assert not names & SYNCING_OPS, names & SYNCING_OPS
