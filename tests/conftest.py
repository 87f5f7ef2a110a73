"""Shared fixtures: devices, paths to ../shared data, the real DeepSeek-V3 snapshots; a
brute-force pairing peak."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
SNAPSHOTS = SHARED / "data" / "deepseek-v3"
CONFORMANCE = SHARED / "conformance" / "deepseek_reference.json"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not _cuda_available(), reason="no CUDA device"))]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


def load_snapshot(path: pathlib.Path):
    """[L, E] nested list of one SGLang statistics file, all-zero (dense) layers dropped."""
    rows = json.loads(path.read_text())["logical_count"]
    return [row for row in rows if any(row)]


@pytest.fixture(scope="session")
def snapshot_paths():
    paths = sorted(SNAPSHOTS.glob("*.json"))
    if not paths:
        pytest.skip("real snapshots in ../shared/data/deepseek-v3 are absent")
    return paths


@pytest.fixture(scope="session")
def conformance_cases():
    if not CONFORMANCE.exists():
        pytest.skip("../shared/conformance is absent")
    return json.loads(CONFORMANCE.read_text())["cases"]


def sorted_pairing_peak(weight, counts):
    """Peak pair sum of the pieces weight / counts, largest with smallest (a piece alone on a
    GPU when their number is odd): the brute-force reference for the pairing kernels."""
    items = np.sort(np.repeat(weight / counts, counts))
    if items.size % 2:
        items = np.concatenate([[0.0], items])
    return (items + items[::-1]).max()


INTERPRETED_PLANS = ROOT / "tests" / "engine" / "test_gpu_interpreter.py"
early_children = {}  # test file -> (process, output path), started at session start


def start_interpreter_child(output: pathlib.Path):
    """The Triton interpreter's run of the GPU planner (tests/engine/gpu_interpret_child.py)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1", NUMBA_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "tests.engine.gpu_interpret_child",
                             str(output)], cwd=ROOT, env=env)


def _selected(config, path: pathlib.Path) -> bool:
    """Whether the command line's test paths include `path` (none given: the whole suite)."""
    targets = [pathlib.Path(arg.split("::")[0]).resolve() for arg in config.args] or [ROOT]
    return any(path == t or t in path.parents for t in targets)


def pytest_sessionstart(session):
    """Compiles the engine's kernels once, before any test, and says so: every later test and
    every engine worker process the service tests start loads them from numba's cache. Then
    the Triton interpreter's few minutes start in a child process, which the other tests run
    beside (its own run last): on an empty cache the compile has both cores to itself (the
    warm-up's helper process takes the second)."""
    import importlib.util
    import tempfile
    import time

    from eplb_server import warmup
    from eplb_server.limits import Limits
    from eplb_server.server import Config
    from eplb_server.service import PlacementServicer

    import eplb_server

    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    say = reporter.write_line if reporter is not None else print
    start = time.perf_counter()
    servicer = PlacementServicer(eplb_server, "cpu", Limits())
    shapes = [warmup.Shape.parse(spec) for spec in Config().warmup_shapes]
    for _ in warmup.warm_up(servicer, shapes):
        pass
    say(f"engine kernels ready in {time.perf_counter() - start:.1f} s (compiled on the first run "
        "on this machine, loaded from numba's cache after)")
    if importlib.util.find_spec("triton") and _selected(session.config, INTERPRETED_PLANS):
        output = pathlib.Path(tempfile.mkdtemp()) / "plans.npz"
        early_children[INTERPRETED_PLANS] = (start_interpreter_child(output), output)


def pytest_collection_modifyitems(session, config, items):
    """The interpreter's tests last, so that the others run while its child computes."""
    items.sort(key=lambda item: pathlib.Path(item.path).resolve() == INTERPRETED_PLANS)


def pytest_sessionfinish(session):
    """An early child whose tests did not run (deselected, or the session stopped) ends here."""
    for child, _ in early_children.values():
        child.kill()
