"""The warm-up's helper process (compiling beside the first one on an empty cache) never outlives
the process that started it, and starts only where it can help."""

import os
import subprocess
import sys
import time

import pytest
import torch
from eplb_server import warmup
from eplb_server.limits import Limits
from eplb_server.service import PlacementServicer

import eplb_server

PARENT = """
import time
from eplb_server import warmup
helper = warmup._start_helper([warmup.Shape.parse("2x16:32:8:2:4")])
print(helper.pid, flush=True)
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_the_helper_dies_with_the_process_that_started_it(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), NUMBA_NUM_THREADS="1")
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, env=env,
                              text=True)
    helper = int(parent.stdout.readline())
    time.sleep(5)  # compiling by now (an empty cache)
    assert _alive(helper)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(helper) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(helper)


HELPS = """
import torch, eplb_server
from eplb_server import warmup
from eplb_server.limits import Limits
from eplb_server.service import PlacementServicer
print(warmup._helps(PlacementServicer(eplb_server, torch.device("cpu"), Limits())))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: no helper")
def test_a_helper_where_the_cache_lacks_this_cpus_kernels_and_for_this_engine_only(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), NUMBA_NUM_THREADS="1")
    empty = subprocess.run([sys.executable, "-c", HELPS], capture_output=True, text=True,
                           env=env, timeout=120)
    assert empty.stdout.split()[-1] == "True", empty.stderr[-2000:]
    servicer = PlacementServicer(eplb_server, torch.device("cpu"), Limits())
    for _ in warmup.warm_up(servicer, [warmup.Shape.parse("2x16:32:8:2:4")], helper=False):
        pass
    assert not warmup._helps(servicer)  # the session's warm-up filled the cache
    assert not warmup._helps(PlacementServicer(warmup, torch.device("cpu"), Limits()))
    # the same cache read as another CPU model (an image built elsewhere) holds none of its
    # kernels: the helper starts there too
    other = dict(os.environ, NUMBA_NUM_THREADS="1", NUMBA_CPU_NAME="x86-64",
                 NUMBA_CPU_FEATURES="")
    foreign = subprocess.run([sys.executable, "-c", HELPS], capture_output=True, text=True,
                             env=other, timeout=120)
    assert foreign.stdout.split()[-1] == "True", foreign.stderr[-2000:]
