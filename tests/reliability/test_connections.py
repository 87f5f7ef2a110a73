"""Issue 22, cases 6 and 7 on the gRPC port: idle connections are reaped and their number
capped; engine faults answer a generic INTERNAL and log once per interval; a deadline of 10 s
or more that expires in the queue counts as DeadlineExceeded."""

import logging
import re
import threading
import time

import grpc
import pytest
from eplb_server.lograte import RateLimitedLog
from eplb_server.server import Config, grpc_options
from eplb_server.service import SERVICE_NAME
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..service.servicekit import ControlledEngine, ServerThread, loads, rebalance_request, stub


@pytest.fixture
def controlled():
    servers = []

    def start(**config):
        engine = ControlledEngine()
        running = ServerThread(Config(listen=["127.0.0.1:0"], metrics_port=None, warmup_shapes=[],
                                      **config), engine)
        servers.append(running)
        return running, engine

    yield start
    for running in servers:
        running.close()


def own_channel(address):
    """A channel with a connection of its own (not shared through the subchannel pool)."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def health(channel):
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(), timeout=5).status
    except grpc.RpcError as e:
        return e.code()


def test_options_reach_grpc():
    options = dict(grpc_options(Config(max_connections=7, max_streams=5)))
    assert options["grpc.max_allowed_incoming_connections"] == 7
    assert options["grpc.max_concurrent_streams"] == 5
    assert options["grpc.max_connection_idle_ms"] == 300_000
    assert options["grpc.max_connection_age_ms"] == 1_800_000


def test_connections_over_the_cap_are_refused(controlled):
    running, _ = controlled(max_connections=3)
    channels = [own_channel(running.addresses[0]) for _ in range(5)]
    try:
        codes = [health(c) for c in channels]
        assert codes[:3] == [health_pb2.HealthCheckResponse.SERVING] * 3
        assert codes[3:] == [grpc.StatusCode.UNAVAILABLE] * 2
        for c in channels[:3]:
            c.close()
        time.sleep(0.5)
        fresh = own_channel(running.addresses[0])
        assert health(fresh) == health_pb2.HealthCheckResponse.SERVING  # slots come back
        fresh.close()
    finally:
        for c in channels:
            c.close()


def test_idle_connections_are_reaped(controlled):
    running, _ = controlled(max_connection_idle=1.0)
    channel = own_channel(running.addresses[0])
    states, idle = [], threading.Event()

    def seen(state):
        states.append(state)
        if state == grpc.ChannelConnectivity.IDLE and grpc.ChannelConnectivity.READY in states:
            idle.set()

    channel.subscribe(seen)
    try:
        assert health(channel) == health_pb2.HealthCheckResponse.SERVING
        assert idle.wait(10), states  # the server's GOAWAY after a second without calls
    finally:
        channel.close()


def test_internal_errors_are_generic_and_logged_once_per_interval(controlled, caplog):
    running, engine = controlled()
    channel, placement = stub(running.addresses[0])
    engine.fail = RuntimeError("fault at 0x7f00deadbeef in _secret_kernel")
    ids = []
    with caplog.at_level(logging.ERROR, logger="eplb_server"):
        for _ in range(8):
            with pytest.raises(grpc.RpcError) as failure:
                placement.Rebalance(rebalance_request(), timeout=30)
            assert failure.value.code() == grpc.StatusCode.INTERNAL
            details = failure.value.details()
            assert "0x" not in details and "secret" not in details and "Error" not in details
            ids.append(re.match(r"internal error \(id ([0-9a-f]{12})\)", details)[1])
    channel.close()
    assert len(set(ids)) == 8
    logged = [r.getMessage() for r in caplog.records if "internal error" in r.getMessage()]
    # The first five of a kind in a minute, each with its id and traceback; then none.
    assert len(logged) == 5
    for error_id, message in zip(ids, logged):
        assert error_id in message and "Traceback" in message and "_secret_kernel" in message


def test_rate_limited_log_counts_what_it_suppressed(caplog):
    now = [0.0]
    limited = RateLimitedLog(logging.getLogger("eplb_server.test"), interval=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="eplb_server.test"):
        for t in range(0, 150, 10):  # 15 records over 150 s, and one of another kind
            now[0] = float(t)
            limited.warning("handshake", "handshake failed")
        limited.warning("other", "other failure")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["handshake failed",
                        "handshake failed (5 more like it in the last 60 s not logged)",
                        "handshake failed (5 more like it in the last 60 s not logged)",
                        "other failure"]


def test_long_deadline_expiring_in_the_queue_counts_as_deadline_exceeded(controlled):
    """gRPC rounds a timeout of 10 s or more up on the wire (10.01 s is sent as 10.1 s), so the
    server's copy outlives the client's: the client's cancel at its deadline counted as
    Canceled."""
    running, engine = controlled()
    channel, placement = stub(running.addresses[0])
    engine.gate.clear()
    try:
        first = placement.Rebalance.future(rebalance_request(), timeout=60)
        assert engine.entered.wait(30)
        with pytest.raises(grpc.RpcError) as failure:  # another request: queued, not shared
            placement.Rebalance(rebalance_request(loads(seed=1)), timeout=10.01)
        assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        engine.gate.set()
    first.result(60)
    placement.Rebalance(rebalance_request(), timeout=60)  # counted before it answers
    channel.close()
    registry = running.server.metrics.registry
    labels = dict(grpc_type="unary", grpc_service=SERVICE_NAME, grpc_method="Rebalance")
    count = lambda code: registry.get_sample_value(  # noqa: E731
        "grpc_server_handled_total", dict(labels, grpc_code=code)) or 0
    assert (count("DeadlineExceeded"), count("Canceled"), count("OK")) == (1, 0, 2)


def test_failed_tls_handshakes_do_not_flood_the_log(tmp_path):
    """gRPC's core logs each failed handshake (a port scan, a plaintext client) at INFO; the
    server runs it at ERROR unless GRPC_VERBOSITY says otherwise."""
    import socket

    from ..service.servicekit import issue_certificates
    from .conftest import start_subprocess

    certs = issue_certificates(tmp_path)
    running = start_subprocess(tmp_path, "--tls-cert", str(certs["server-cert"]),
                               "--tls-key", str(certs["server-key"]))
    try:
        host, port = running.tcp.rsplit(":", 1)
        for _ in range(20):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\0" * 64)
                s.recv(1024)
        time.sleep(0.5)
    finally:
        assert running.server.stop() == 0
    log = running.server.log()
    assert "serving" in log and "Handshake failed" not in log
