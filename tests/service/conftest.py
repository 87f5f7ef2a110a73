"""Fixtures: one warm in-process server (TCP and Unix socket) shared by the service tests."""

import pytest
from eplb_server.server import Config
from eplb_server.validation import Limits
from .servicekit import ServerThread, stub

# Small limits so that the limit tests stay small; the real 58x256 -> 288 request fits.
LIMITS = Limits(max_layers=64, max_experts=512, max_replicas=1024, max_windows=8,
                max_request_bytes=1 << 20)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    socket_path = tmp_path_factory.mktemp("sock") / "eplb.sock"
    config = Config(listen=["127.0.0.1:0", f"unix://{socket_path}"], metrics_port=0,
                    limits=LIMITS)
    running = ServerThread(config)
    running.wait_warm()
    yield running
    running.close()


@pytest.fixture(scope="session", params=["tcp", "unix"])
def target(request, server):
    """Each test using it runs once over TCP and once over the Unix socket."""
    return server.addresses[0 if request.param == "tcp" else 1]


@pytest.fixture
def client(target):
    channel, placement = stub(target)
    yield placement
    channel.close()
