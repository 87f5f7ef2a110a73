"""The sparse maximum-weight assignment: optimal against brute force, a permutation always."""

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_server.engine.matching import sparse_max_weight_assignment


def listed_pairs(score):
    """Dense [n, n] scores -> (row_start, edge_col, edge_weight) of the positive entries."""
    rows, cols = np.nonzero(score)
    row_start = np.searchsorted(rows, np.arange(score.shape[0] + 1))
    return row_start.astype(np.int64), cols.astype(np.int64), score[rows, cols].astype(np.int64)


def best_total(score):
    n = score.shape[0]
    return max(sum(score[i, p[i]] for i in range(n)) for p in itertools.permutations(range(n)))


def test_optimal_on_small_problems_dense_and_sparse():
    rng = np.random.default_rng(0)
    for n in range(1, 8):
        for density in (0.2, 0.5, 1.0):
            for _ in range(12):
                score = rng.integers(1, 9, (n, n)) * (rng.random((n, n)) < density)
                cols = sparse_max_weight_assignment(*listed_pairs(score))
                assert sorted(cols) == list(range(n))
                assert score[np.arange(n), cols].sum() == best_total(score)


def test_no_pairs_gives_the_identity():
    cols = sparse_max_weight_assignment(np.zeros(5, np.int64), np.zeros(0, np.int64),
                                        np.zeros(0, np.int64))
    assert cols.tolist() == [0, 1, 2, 3]


def test_a_hidden_permutation_is_found():
    rng = np.random.default_rng(1)
    n = 300
    perm = rng.permutation(n)
    score = np.zeros((n, n), np.int64)
    score[np.arange(n), perm] = 2
    noise = rng.integers(0, n, (n, 2))  # weaker pairs that tempt a greedy choice
    score[np.arange(n)[:, None], noise] = np.maximum(score[np.arange(n)[:, None], noise], 1)
    cols = sparse_max_weight_assignment(*listed_pairs(score))
    assert (cols == perm).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(0, 2**32 - 1), st.floats(0.05, 1.0))
def test_matches_brute_force(n, seed, density):
    rng = np.random.default_rng(seed)
    score = rng.integers(1, 4, (n, n)) * (rng.random((n, n)) < density)
    cols = sparse_max_weight_assignment(*listed_pairs(score))
    assert sorted(cols) == list(range(n))
    assert score[np.arange(n), cols].sum() == best_total(score)
    assert (cols == sparse_max_weight_assignment(*listed_pairs(score))).all()
