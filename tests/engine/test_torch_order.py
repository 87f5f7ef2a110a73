"""The reference's tie order without torch: engine.torch_order against torch's CPU sort and
against libstdc++'s own introsort and heap sort (compiled here when a C++ compiler is present)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eplb_server.engine.torch_order import _heapsort, descending_orders

SIZES = [1, 2, 15, 16, 17, 18, 33, 64, 72, 257, 1024, 5000]


def patterns(rng, n):
    """Tie-heavy rows: few distinct values, sorted, reversed, periodic, organ pipes, random."""
    yield rng.integers(0, 3, n)
    yield np.sort(rng.integers(0, 5, n))
    yield np.sort(rng.integers(0, 5, n))[::-1]
    yield np.arange(n) % 7
    yield np.concatenate([np.arange(n // 2), np.arange(n - n // 2)[::-1]])
    yield rng.random(n)


def descending_order(row):
    return descending_orders(row[None])[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", SIZES)
def test_orders_equal_torch_cpu_sort_descending(n, dtype):
    rng = np.random.default_rng(n)
    for row in patterns(rng, n):
        rows = np.ascontiguousarray(np.stack([row, row[::-1]]).astype(dtype))
        expected = torch.from_numpy(rows).sort(-1, descending=True).indices.numpy()
        assert (descending_orders(rows) == expected).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=300))
def test_random_tied_rows_equal_torch(values):
    row = np.asarray(values, dtype=np.float32)
    expected = torch.from_numpy(row).sort(descending=True).indices.numpy()
    assert (descending_order(row) == expected).all()


HARNESS = r"""
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>
struct P { double key; long index; };
int main(int argc, char** argv) {
  bool heap = argc > 1;
  int n;
  while (std::scanf("%d", &n) == 1) {
    std::vector<P> v(n);
    for (int j = 0; j < n; ++j) { std::scanf("%lf", &v[j].key); v[j].index = j; }
    auto before = [](const P& a, const P& b) {
      return (std::isnan(a.key) && !std::isnan(b.key)) || a.key > b.key; };
    if (heap) { std::make_heap(v.begin(), v.end(), before); std::sort_heap(v.begin(), v.end(), before); }
    else std::sort(v.begin(), v.end(), before);
    for (const P& p : v) std::printf("%ld ", p.index);
    std::printf("\n");
  }
}
"""


@pytest.fixture(scope="module")
def libstdcxx(tmp_path_factory):
    """Runs libstdc++'s std::sort (or make_heap + sort_heap) on rows, as torch's CPU sort does."""
    compiler = shutil.which("g++")
    if compiler is None:
        pytest.skip("no g++ to build the libstdc++ harness")
    folder = tmp_path_factory.mktemp("libstdcxx")
    (folder / "sort.cpp").write_text(HARNESS)
    subprocess.run([compiler, "-O1", "-o", str(folder / "sort"), str(folder / "sort.cpp")],
                   check=True)

    def run(rows, heap=False):
        lines = "".join(f"{len(r)} " + " ".join(map(repr, map(float, r))) + "\n" for r in rows)
        out = subprocess.run([str(folder / "sort")] + (["heap"] if heap else []), input=lines,
                             capture_output=True, text=True, check=True).stdout.splitlines()
        return [np.array(line.split(), dtype=np.int64) for line in out]
    return run


def test_orders_equal_libstdcxx_introsort(libstdcxx):
    rng = np.random.default_rng(7)
    rows = [row.astype(np.float64) for n in SIZES for row in patterns(rng, n)]
    for row, expected in zip(rows, libstdcxx(rows)):
        assert (descending_order(row) == expected).all()


def test_depth_limit_fallback_equals_libstdcxx_heap_sort(libstdcxx):
    """The heap sort runs only once the introsort's depth limit is spent (rare): checked
    directly against std::make_heap + std::sort_heap."""
    rng = np.random.default_rng(8)
    rows = [rng.integers(0, int(rng.integers(1, 6)), int(rng.integers(1, 90))).astype(np.float64)
            for _ in range(300)]
    for row, expected in zip(rows, libstdcxx(rows, heap=True)):
        key, order = row.copy(), np.arange(row.size)
        _heapsort(key, order, 0, row.size)
        assert (order == expected).all()
        assert (np.diff(key) <= 0).all()
