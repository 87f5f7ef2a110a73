"""The GPU planner's replica counts at two slots per GPU (engine/gpu/pairing.py): plain torch
ops, so checked here on CPU tensors (no triton needed) against the CPU engine's numba search
(engine/pairing.py) and brute force; the same functions run on CUDA inside a plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_server.engine import pairing
from eplb_server.engine.packing import _replica_counts, ordered_adams_counts
from eplb_server.engine.refined import COUNT_SEARCH_STEPS
from eplb_server.engine.sorting import descending_order
from eplb_server.engine.gpu import pairing as gpu_pairing
from tests.conftest import sorted_pairing_peak
from tests.engine.gpu_cases import AGREEMENT
from tests.engine.hard_cases import min_max_piece


@st.composite
def counted(draw):
    num_experts = draw(st.integers(1, 24))
    num_slots = 2 * draw(st.integers(-(-num_experts // 2), 2 * num_experts))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    weight = rng.lognormal(0, 1.5, num_experts) if draw(st.booleans()) \
        else rng.integers(0, 5, num_experts).astype(float) + 0.5  # ties
    counts = np.ones(num_experts, np.int64)
    np.add.at(counts, rng.integers(0, num_experts, num_slots - num_experts), 1)
    return weight, counts, num_slots


@settings(max_examples=200, deadline=None)
@given(counted())
def test_pair_peaks_is_largest_with_smallest(problem):
    weight, counts, num_slots = problem
    got = gpu_pairing.pair_peaks(torch.from_numpy(weight)[None], torch.from_numpy(counts)[None],
                                 num_slots)
    assert got.item() == pytest.approx(sorted_pairing_peak(weight, counts), rel=1e-12)


def _lognormal(seed, layers, experts):
    return np.random.default_rng(seed).lognormal(0.0, 1.2, (layers, experts)) * 1000.0


def _reference_counts(weight, num_slots):
    """[L, E] -> the reference's counts (Adams in float32, as the replication kernel)"""
    return np.stack([ordered_adams_counts(row.astype(np.float32),
                                          descending_order(row.astype(np.float32)), num_slots)
                     for row in weight])


@pytest.mark.parametrize("experts", [16, 32, 64])
def test_threshold_counts_are_the_cpu_engines(experts):
    """The batched bisection makes the numba threshold_counts' decisions: the same counts and
    peak on every row (or nothing found on the same rows)."""
    num_slots = 2 * experts
    weight = _lognormal(experts, 6, experts)
    high = np.array([pairing.pair_peak(row, c)
                     for row, c in zip(weight, _reference_counts(weight, num_slots))])
    low = weight.sum(1) / experts
    counts, peak = gpu_pairing.threshold_counts(torch.from_numpy(weight), num_slots,
                                                torch.from_numpy(low), torch.from_numpy(high))
    found = 0
    for i, row in enumerate(weight):
        theirs, their_peak = pairing.threshold_counts(row, num_slots, low[i], high[i],
                                                      pairing.THRESHOLD_STEPS)
        if theirs.size == 0:
            assert peak[i] == np.inf
            continue
        found += 1
        assert (counts[i].numpy() == theirs).all()
        assert peak[i].item() == pytest.approx(their_peak, rel=1e-12)
    assert found >= 4  # skewed loads: the reference's counts leave room on most rows


@pytest.mark.parametrize("experts,seed", [(32, 0), (32, 1), (32, 2), (64, 0), (64, 1)])
def test_search_counts_peak_as_the_cpu_engines(experts, seed):
    """At two slots per GPU, lognormal (tie-free) loads: the counts' pairing peaks within 0.05%
    of the bound of the CPU engine's counts, never above the reference's; valid and the same
    on a second call."""
    num_slots, packs = 2 * experts, experts
    weight = _lognormal(100 + seed, 3 if experts == 32 else 2, experts)
    reference = _reference_counts(weight, num_slots)
    w64 = torch.from_numpy(weight)
    counts = gpu_pairing.search_counts(w64, torch.from_numpy(reference), num_slots, packs,
                                       COUNT_SEARCH_STEPS)
    again = gpu_pairing.search_counts(w64, torch.from_numpy(reference), num_slots, packs,
                                      COUNT_SEARCH_STEPS)
    assert torch.equal(counts, again)
    counts = counts.long().numpy()
    assert (counts >= 1).all() and (counts.sum(1) == num_slots).all()
    for row, ours, ref in zip(weight, counts, reference):
        w32 = row.astype(np.float32)
        cpu = _replica_counts(row, w32, descending_order(w32), num_slots, packs,
                              COUNT_SEARCH_STEPS)
        bound = max(row.sum() / packs, min_max_piece(row, num_slots))
        peak = sorted_pairing_peak(row, ours)
        assert peak <= sorted_pairing_peak(row, ref) * (1 + 1e-9)
        assert peak <= sorted_pairing_peak(row, cpu) + AGREEMENT * bound, \
            (peak, sorted_pairing_peak(row, cpu))
