"""Fixtures: a `python -m eplb_server` subprocess run in an empty working directory, and a warm
in-process server with the service tests' small limits (for fuzzing)."""

from dataclasses import dataclass
import pathlib

import pytest
from eplb_server.server import Config

from ..service.conftest import LIMITS
from ..service.servicekit import ServerProcess, ServerThread, free_port


@dataclass
class Subprocess:
    server: ServerProcess
    tcp: str
    unix: str
    metrics_port: int
    cwd: pathlib.Path  # the server's working directory: empty, and must stay so


def start_subprocess(base: pathlib.Path, *extra) -> Subprocess:
    """A CPU server on an ephemeral port and a Unix socket, cwd an empty directory."""
    cwd = base / "cwd"
    cwd.mkdir()
    socket_path, port = base / "eplb.sock", free_port()
    server = ServerProcess(["--listen", "127.0.0.1:0", "--listen", f"unix://{socket_path}",
                            "--metrics-port", str(port), "--device", "cpu", *extra],
                           base / "server.log", cwd=cwd)
    unix = f"unix://{socket_path}"
    try:
        server.wait_serving(unix)
        return Subprocess(server, server.tcp_address(), unix, port, cwd)
    except BaseException:
        server.stop()
        raise


@pytest.fixture(scope="session")
def subprocess_server(tmp_path_factory):
    """One shared subprocess server (default limits, --max-concurrent 16)."""
    running = start_subprocess(tmp_path_factory.mktemp("proc"), "--grace-period", "10")
    yield running
    assert running.server.stop() == 0, running.server.log()


@pytest.fixture(scope="session")
def fuzz_server():
    """An in-process server with small limits (64 layers, 512 experts, 1024 slots, 1 MiB)."""
    running = ServerThread(Config(listen=["127.0.0.1:0"], metrics_port=None, limits=LIMITS))
    running.wait_warm()
    yield running
    running.close()


def pytest_terminal_summary(terminalreporter):
    """The RPC fuzz suite's outcomes, per family of inputs and status code."""
    from .outcomes import OUTCOMES

    if not OUTCOMES:
        return
    terminalreporter.section("RPC fuzz outcomes")
    for (family, code), count in sorted(OUTCOMES.items()):
        terminalreporter.write_line(f"{family:<24} {code:<20} {count:>7}")
    terminalreporter.write_line(f"{'total':<45} {sum(OUTCOMES.values()):>7}")
