"""The compiled packing kernels: refinement keeps items, order and fair shares, never raises the peak."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from eplb_server.engine import packing, pairing, sorting
from tests.conftest import sorted_pairing_peak


@st.composite
def packings(draw):
    num_packs = draw(st.integers(2, 8))
    cap = draw(st.integers(2, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    num_experts = draw(st.integers(1, num_packs * cap))
    experts = np.concatenate([np.arange(num_experts),
                              rng.integers(0, num_experts, num_packs * cap - num_experts)])
    rng.shuffle(experts)
    expert_weight = rng.lognormal(0, 1, num_experts)
    counts = np.bincount(experts, minlength=num_experts)
    weight = expert_weight[experts] / counts[experts]
    pack_weight = weight.reshape(num_packs, cap)
    pack_expert = experts.reshape(num_packs, cap)
    order = np.argsort(-pack_weight, axis=1, kind="stable")
    pack_weight = np.take_along_axis(pack_weight, order, 1).copy()
    pack_expert = np.take_along_axis(pack_expert, order, 1).copy()
    limit = np.full(num_experts, num_packs * cap, np.int64) if draw(st.booleans()) \
        else (counts + num_packs - 1) // num_packs
    return pack_weight, pack_expert, limit.astype(np.int64)


def held_over_limit(pack_expert, limit):
    return sum(max(0, np.count_nonzero(row == e) - limit[e])
               for row in pack_expert for e in set(row.tolist()))


@settings(max_examples=200, deadline=None)
@given(packings(), st.sampled_from([1, 100]))
def test_refine_and_spread_preserve_items_and_never_raise_the_peak(packing_case, partners):
    pack_weight, pack_expert, limit = packing_case
    before = sorted(zip(pack_weight.ravel().tolist(), pack_expert.ravel().tolist()))
    loads = pack_weight.sum(1)
    peak, excess = loads.max(), held_over_limit(pack_expert, limit)
    packing.refine(pack_weight, pack_expert, limit, loads, 1000, partners, 0.0)
    packing.spread(pack_weight, pack_expert, limit, loads)
    assert sorted(zip(pack_weight.ravel().tolist(), pack_expert.ravel().tolist())) == before
    assert np.allclose(loads, pack_weight.sum(1))
    assert (np.diff(pack_weight, axis=1) <= 0).all()
    assert loads.max() <= peak * (1 + 1e-12)
    assert held_over_limit(pack_expert, limit) <= excess
    settled = pack_weight.copy()
    assert packing.refine(pack_weight, pack_expert, limit, loads, 1000, partners,
                          loads.max()) == 0  # already good enough: no move
    assert (pack_weight == settled).all()


def test_pair_swaps_with_every_pack_beat_pair_swaps_with_the_lightest_only():
    start = np.array([[24.0, 23, 17, 2], [28, 15, 8, 3], [24, 22, 22, 10], [29, 12, 4, 4]])
    peaks = []
    for partners in (1, 4):
        pack_weight, loads = start.copy(), start.sum(1)
        pack_expert = np.arange(16).reshape(4, 4)
        packing.refine(pack_weight, pack_expert, np.ones(16, np.int64), loads, 50, partners, 0.0)
        peaks.append(loads.max())
    assert peaks == [63.0, 62.0]


@pytest.mark.parametrize("num_slots", [8, 16, 24])
def test_adams_counts_attain_the_replication_bound(num_slots):
    rng = np.random.default_rng(num_slots)
    weight = rng.lognormal(0, 1, 8)
    counts = packing.adams_counts(weight, num_slots)
    assert counts.sum() == num_slots and (counts >= 1).all()
    best = (weight / counts).max()
    for donor in range(8):  # no single move of a replica lowers the largest piece
        for receiver in range(8):
            if donor != receiver and counts[donor] > 1:
                moved = counts.copy()
                moved[donor] -= 1
                moved[receiver] += 1
                assert (weight / moved).max() >= best


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 600), st.integers(0, 2**31), st.booleans())
def test_descending_order_is_a_stable_sort_largest_first(size, seed, with_ties):
    rng = np.random.default_rng(seed)
    key = rng.integers(0, 4, size) if with_ties else rng.lognormal(0, 3, size)
    for dtype in (np.float32, np.float64):
        typed = key.astype(dtype)
        assert (sorting.descending_order(typed) == np.argsort(-typed, kind="stable")).all()


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 40), st.integers(0, 2**31), st.booleans())
def test_pair_peak_of_a_moved_replica_matches_a_full_sort(num_experts, seed, with_ties):
    rng = np.random.default_rng(seed)
    weight = (rng.integers(1, 5, num_experts) if with_ties else rng.lognormal(0, 1, num_experts))
    weight = weight.astype(np.float64)
    counts = np.ones(num_experts, np.int64)
    counts[rng.integers(0, num_experts, num_experts + 2 * rng.integers(0, 3))] += 1
    if counts.sum() % 2:
        counts[0] += 1
    piece = weight / counts
    order = np.argsort(-piece, kind="stable")
    donor, receiver = rng.choice(num_experts, 2, replace=False)
    if counts[donor] == 1:
        donor, receiver = receiver, donor
    assume(counts[donor] > 1)
    moved = counts.copy()
    moved[donor] -= 1
    moved[receiver] += 1
    piece = weight / moved
    exact = sorted_pairing_peak(weight, moved)
    num_pairs = counts.sum() // 2
    position = np.argsort(order)
    got = pairing._pair_peak(order, position, piece, moved, num_pairs, np.inf, donor, receiver)
    assert got == pytest.approx(exact, rel=1e-12)
    stop = exact * (0.5 + rng.random())  # below the peak: reports at least stop; above: exact
    early = pairing._pair_peak(order, position, piece, moved, num_pairs, stop, donor, receiver)
    assert early >= stop if exact >= stop else early == pytest.approx(exact, rel=1e-12)


def naive_lpt(weight, num_packs):
    cap, loads = weight.size // num_packs, np.zeros(num_packs, np.float32)
    packs = [[] for _ in range(num_packs)]
    for item, w in enumerate(weight):
        pack = min((p for p in range(num_packs) if len(packs[p]) < cap), key=lambda p: loads[p])
        packs[pack].append(item)
        loads[pack] = np.float32(loads[pack] + w)
    return np.array(packs)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.integers(1, 6), st.integers(0, 2**31), st.booleans())
def test_lpt_puts_each_item_on_the_lightest_pack_lowest_index_first(packs, cap, seed, ties):
    rng = np.random.default_rng(seed)
    weight = rng.integers(0, 5, packs * cap) if ties else rng.lognormal(0, 1, packs * cap)
    weight = np.sort(weight.astype(np.float32))[::-1].copy()
    assert (packing.lpt(weight, packs) == naive_lpt(weight, packs)).all()
