"""The engine leaves its host's thread settings as it found them and threads only large plans."""

import subprocess
import sys

import numba
import numpy as np
import pytest
import torch
from eplb_server.engine import rows, threads

import eplb_server

HOST = """
import torch, numpy as np
torch.set_num_threads({torch_threads})
import eplb_server
w = np.random.default_rng(0).lognormal(0, 1, (3, 2, 16)) * 100
eplb_server.plan(w, 32, 4, 2, 8, objective="expected_peak")
p = eplb_server.plan(w[0], 32, 4, 2, 8)
eplb_server.plan(w[0], 32, 4, 2, 8, current_phy2log=p.phy2log)
eplb_server.evaluate(w[0], p.phy2log, 4, 2, 8)
import numba
try:
    numba.threading_layer()
    print("numba threading layer launched")
except ValueError:  # "Threading layer is not initialized."
    pass
print(torch.get_num_threads())
"""


@pytest.mark.parametrize("torch_threads", [1, 2])
def test_an_in_process_plan_leaves_torch_threads_as_the_host_set_them(torch_threads):
    """In a fresh process, as inside a serving engine: numba's OpenMP layer, which shares
    libgomp with torch, is never launched, and torch's thread count stays the host's."""
    done = subprocess.run([sys.executable, "-c", HOST.format(torch_threads=torch_threads)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "launched" not in done.stdout
    assert int(done.stdout.split()[-1]) == torch_threads


def test_only_large_requests_use_more_than_one_thread(monkeypatch):
    most = numba.config.NUMBA_NUM_THREADS
    monkeypatch.setattr(threads, "_max_threads", most)
    assert threads.threads_for(58 * 288) == 1
    assert threads.threads_for(threads.PARALLEL_MIN_WORK) == most
    with threads.engine_threads(threads.PARALLEL_MIN_WORK):
        assert rows.thread_count() == most
        with threads.engine_threads(100):
            assert rows.thread_count() == 1
        assert rows.thread_count() == most
    assert rows.thread_count() == 1


def test_plans_are_the_same_with_one_thread_or_several(monkeypatch):
    rng = np.random.default_rng(4)
    weight = torch.from_numpy(rng.lognormal(0, 1.5, (8, 64)) * 100)
    current = eplb_server.plan(weight.flip(1), 128, 8, 2, 16).phy2log
    plans = []
    for most in (1, numba.config.NUMBA_NUM_THREADS):
        monkeypatch.setattr(threads, "_max_threads", most)
        monkeypatch.setattr(threads, "PARALLEL_MIN_WORK", 1)
        plans.append(eplb_server.plan(weight, 128, 8, 2, 16, current_phy2log=current).phy2log)
    torch.testing.assert_close(plans[0], plans[1], rtol=0, atol=0)


def test_max_threads_must_be_positive():
    with pytest.raises(ValueError, match="threads"):
        threads.set_max_threads(0)
