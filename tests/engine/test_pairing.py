"""Replica counts at two slots per GPU: the threshold search is sound and finds what the count
search misses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from eplb_server import evaluate, plan
from eplb_server.engine import pairing
from tests.conftest import sorted_pairing_peak


@st.composite
def pair_problems(draw):
    num_experts = draw(st.integers(1, 12))
    num_slots = 2 * draw(st.integers(-(-num_experts // 2), 2 * num_experts))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    weight = rng.lognormal(0, 1.5, num_experts) if draw(st.booleans()) \
        else rng.integers(0, 5, num_experts).astype(float)
    return weight, num_slots, draw(st.floats(0.3, 1.5))


@settings(max_examples=300, deadline=None)
@given(pair_problems())
def test_counts_said_to_fit_do_fit(problem):
    weight, num_slots, scale = problem
    mean = weight.sum() / (num_slots // 2)
    limit = mean + scale * (weight.max() - mean) if weight.max() > 0 else 1.0
    n = weight.size
    counts = np.empty(n, np.int64)
    fits = pairing._fits(weight, num_slots, limit, counts, np.empty(n), np.empty(n, np.int64),
                         np.empty(n), np.empty(n), np.argsort(weight, kind="mergesort"),
                         np.empty(n, np.int64))
    assume(fits)
    assert (counts >= 1).all() and counts.sum() <= num_slots
    assert sorted_pairing_peak(weight, counts) <= limit * (1 + 1e-12)


@settings(max_examples=300, deadline=None)
@given(pair_problems())
def test_threshold_counts_fill_every_slot_and_report_their_peak(problem):
    weight, num_slots, _ = problem
    high = sorted_pairing_peak(weight, np.ones_like(weight, dtype=np.int64)) * 1.5 + 1.0
    counts, peak = pairing.threshold_counts(weight, num_slots, weight.sum() / (num_slots // 2),
                                            high, 12)
    assume(counts.size)
    assert counts.sum() == num_slots and (counts >= 1).all()
    assert peak == pytest.approx(sorted_pairing_peak(weight, counts), rel=1e-12)
    assert peak < high


def single_move_counts(weight, num_slots):
    """Replica counts from the reference's (Adams) by single replica moves, steepest first,
    while the sorted pairing peak drops: a count search without the threshold search."""
    counts = np.ones(weight.size, np.int64)
    for _ in range(num_slots - weight.size):
        counts[np.argmax(weight / counts)] += 1
    best = sorted_pairing_peak(weight, counts)
    while True:
        found = None
        for a in np.flatnonzero(counts > 1):
            for b in np.argsort(-(weight / counts))[:24]:
                if a != b:
                    counts[a] -= 1
                    counts[b] += 1
                    peak = sorted_pairing_peak(weight, counts)
                    if peak < best * (1 - 1e-12):
                        best, found = peak, (a, b)
                    counts[a] += 1
                    counts[b] -= 1
        if found is None:
            return counts, best
        counts[found[0]] -= 1
        counts[found[1]] += 1


def test_threshold_search_passes_where_single_count_moves_stop_on_a_real_layer(snapshot_paths):
    """Layer 10 of decode_in1000out1000 at 288 slots on 144 GPUs: single replica moves from the
    reference's counts (searched here) stop at a local optimum that the engine's plan beats, and
    that beats the reference. (An integer program, HiGHS, solved offline once, put the best
    counts at balancedness 0.9792; no exact solver for 256 experts runs here.)"""
    from tests.conftest import load_snapshot

    layer = np.asarray(load_snapshot(snapshot_paths[0])[10], dtype=np.float64)
    weight = torch.from_numpy(layer[None])
    refined = plan(weight, 288, 1, 1, 144, policy="global").phy2log
    reference = plan(weight, 288, 1, 1, 144, policy="deepseek").phy2log
    counts = np.bincount(refined[0].numpy(), minlength=layer.size)
    refined_peak = evaluate(weight, refined, 1, 1, 144).layer_max_load.item()
    assert refined_peak == pytest.approx(sorted_pairing_peak(layer, counts), rel=1e-12)
    _, local_peak = single_move_counts(layer, 288)
    reference_peak = evaluate(weight, reference, 1, 1, 144).layer_max_load.item()
    assert refined_peak < local_peak * (1 - 0.01) and local_peak <= reference_peak
