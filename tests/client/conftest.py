"""Fixtures: a real eplb_server subprocess (TCP and Unix socket), a fake in-process server, data."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent.parent
DATA = REPO.parent / "shared" / "data" / "deepseek-v3"


def snapshot_paths():
    """The real DeepSeek-V3 snapshots in ../shared/data, if present."""
    return sorted(DATA.glob("*.json")) if DATA.is_dir() else []


@pytest.fixture(scope="session")
def snapshot_path():
    paths = snapshot_paths()
    if not paths:
        pytest.skip(f"no snapshots in {DATA}")
    return paths[0]


@pytest.fixture(scope="session")
def snapshot(snapshot_path):
    """A real [58, 256] load matrix (dense layers dropped)."""
    w = np.asarray(json.loads(snapshot_path.read_text())["logical_count"], dtype=np.float64)
    return w[w.any(axis=1)]


@pytest.fixture(scope="session")
def skewed():
    """A small skewed workload [6, 32] with integer counts, ties and a zero."""
    rng = np.random.default_rng(7)
    w = np.round(rng.lognormal(5.0, 1.3, size=(6, 32)))
    w[0, :4] = w[0, 4]
    w[1, 3] = 0
    return w


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A real `python -m eplb_server` on an ephemeral port and a Unix socket: (tcp, unix)."""
    sock = tmp_path_factory.mktemp("sock") / "eplb.sock"
    log_path = tmp_path_factory.mktemp("log") / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "eplb_server", "--listen", "127.0.0.1:0", "--listen",
         f"unix://{sock}", "--metrics-port", "0", "--grace-period", "1", "--device", "cpu"],
        stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        tcp = _wait_for_address(proc, log_path)
        targets = (tcp, f"unix://{sock}")
        _wait_serving(targets[0], proc, log_path)
        yield targets
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_for_address(proc, log_path, limit=90.0) -> str:
    end = time.monotonic() + limit
    while time.monotonic() < end:
        text = log_path.read_text()
        found = re.search(r" on (127\.0\.0\.1:\d+)", text)
        if found:
            return found.group(1)
        if proc.poll() is not None:
            pytest.fail(f"eplb_server exited ({proc.returncode}):\n{text}")
        time.sleep(0.1)
    pytest.fail(f"eplb_server printed no address:\n{log_path.read_text()}")


def _wait_serving(target, proc, log_path, limit=300.0) -> None:
    """Up to 300 s: on a fresh checkout the first server compiles every kernel (~90 s here)."""
    from eplb_client import EplbClient, EplbError

    end = time.monotonic() + limit
    with EplbClient(target, timeout=5) as c:
        while time.monotonic() < end:
            try:
                if c.health() == "SERVING":
                    return
            except EplbError:
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.2)
    pytest.fail(f"eplb_server never reported SERVING:\n{log_path.read_text()}")


@pytest.fixture
def fake():
    """The in-process stand-in server: (target, servicer)."""
    from . import fake_server

    srv, target, servicer = fake_server.start()
    yield target, servicer
    srv.stop(None)


def run_cli(*args, env=None, timeout=120):
    """Runs `python -m eplb_client.cli ARGS` as a subprocess; returns CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "eplb_client.cli", *map(str, args)],
                          capture_output=True, text=True, env=full_env, timeout=timeout,
                          cwd=REPO)
