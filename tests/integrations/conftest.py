"""Fixtures: a warm in-process server whose engine can be held or made to fail, a closed port,
the real engine modules from $EPLB_ENGINE_WHEELS, and real DeepSeek-V3 snapshots."""

from __future__ import annotations

import json

import numpy as np
import pytest
from eplb_server.server import Config

from ..conftest import SNAPSHOTS
from ..service.servicekit import ControlledEngine, ServerThread, free_port
from . import engines


@pytest.fixture(scope="session")
def engine():
    return ControlledEngine()


@pytest.fixture(scope="session")
def server(engine):
    # No reuse of recent answers: a test's request must reach the engine even when an earlier
    # test's identical call (abandoned at its deadline) was answered after it left.
    running = ServerThread(Config(listen=["127.0.0.1:0"], metrics_port=None,
                                  coalesce_seconds=0), engine)
    running.wait_warm()
    yield running
    running.close()


@pytest.fixture
def target(server, engine):
    """The server's address, its engine reset to answer normally after the test."""
    yield server.addresses[0]
    engine.fail = None
    engine.gate.set()


@pytest.fixture
def closed_port():
    """host:port where nothing listens (a port just freed)."""
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def snapshots():
    """Real SGLang statistics files [61, 256] (dense layers all zero), oldest first, or skip."""
    paths = sorted(SNAPSHOTS.glob("*.json"))
    if not paths:
        pytest.skip("real snapshots in ../shared/data/deepseek-v3 are absent")
    return [np.asarray(json.loads(p.read_text())["logical_count"], dtype=np.int64)
            for p in paths]


@pytest.fixture(scope="session", params=[w.name for w in engines.wheels("vllm")] or
                [pytest.param(None, marks=pytest.mark.skip(
                    reason="no vLLM wheel in $EPLB_ENGINE_WHEELS"))])
def vllm_policy(request, tmp_path_factory):
    """(version, AbstractEplbPolicy, DefaultEplbPolicy) of each vLLM wheel found."""
    (wheel,) = [w for w in engines.wheels("vllm") if w.name == request.param]
    abstract, default = engines.load_vllm_policy(wheel, tmp_path_factory.mktemp("vllm"))
    return engines.version_of(wheel), abstract, default


@pytest.fixture(scope="module")
def sglang_modules(tmp_path_factory):
    """SGLang's real eplb_algorithms module and plugin loader (the newest wheel found)."""
    found = engines.wheels("sglang")
    if not found:
        pytest.skip("no SGLang wheel in $EPLB_ENGINE_WHEELS")
    algorithms, plugins = engines.load_sglang(found[-1], tmp_path_factory.mktemp("sglang"))
    yield engines.version_of(found[-1]), algorithms, plugins
    engines.unload("sglang")
