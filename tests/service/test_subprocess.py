"""`python -m eplb_server` as a process: TCP and Unix socket, metrics, SIGTERM -> exit 0."""

import os
import pathlib
import re
import signal
import stat
import time

import eplb_server
import grpc
import numpy as np
import pytest
import torch
from eplb_client.tensors import from_tensor
from eplb_client.v1 import placement_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .servicekit import (SMALL, ServerProcess, free_port, loads, rebalance_request, scrape,
                         snapshot_loads, stub)


@pytest.fixture(scope="module")
def process(tmp_path_factory):
    """A server started by flags: (ServerProcess, tcp target, unix target, metrics port)."""
    base = tmp_path_factory.mktemp("proc")
    socket_path, metrics_port = base / "eplb.sock", free_port()
    server = ServerProcess(["--listen", "127.0.0.1:0", "--listen", f"unix://{socket_path}",
                            "--metrics-port", str(metrics_port), "--device", "cpu",
                            "--grace-period", "5"], base / "server.log")
    try:
        unix = f"unix://{socket_path}"
        server.wait_serving(unix)
        yield server, server.tcp_address(), unix, metrics_port
    finally:
        assert server.stop() == 0, server.log()


def test_round_trip_on_tcp_and_unix_equals_the_engine(process):
    _, tcp, unix, _ = process
    weight = snapshot_loads()
    topology = dict(num_replicas=288, num_groups=8, num_nodes=4, num_gpus=32)
    if weight is None:  # ../shared absent: a synthetic request of the same shape
        weight = loads(layers=58, experts=256)
    expected = eplb_server.plan(torch.from_numpy(weight), **topology).phy2log.numpy()
    for target in (tcp, unix):
        channel, client = stub(target)
        response = client.Rebalance(rebalance_request(weight, **topology), timeout=60)
        channel.close()
        np.testing.assert_array_equal(from_tensor(response.phy2log), expected)


def test_neither_process_loads_torch_on_the_cpu(process):
    """The gRPC process stays small and the CPU engine worker plans on numpy arrays: after a
    request and the whole warm-up (every request kind), no process has torch's library mapped
    (its import is most of a start-up) while the worker has numba's LLVM."""
    server, tcp, _, _ = process
    channel, client = stub(tcp)
    client.Rebalance(rebalance_request(), timeout=60)
    channel.close()
    deadline = time.monotonic() + 300
    while "warm-up finished" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "warm-up finished" in server.log(), server.log()
    pathlib.Path(f"/proc/{server.proc.pid}/maps").stat()  # Linux only, as the image is
    tasks = pathlib.Path(f"/proc/{server.proc.pid}/task").glob("*/children")
    (worker,) = [int(pid) for task in tasks for pid in task.read_text().split()]

    def libraries(pid):
        return pathlib.Path(f"/proc/{pid}/maps").read_text()
    assert "libtorch" not in libraries(server.proc.pid)
    assert "libtorch" not in libraries(worker) and "llvmlite" in libraries(worker)


def test_a_warm_cache_serves_after_the_common_requests_and_loads_the_rest_later(process):
    """Kernels are in numba's cache (compiled at session start): health says SERVING after the
    default policy's warm-up requests, the rest load between requests, and a request of a later
    warm-up kind (a history with the robust objective) is answered."""
    server, tcp, _, _ = process
    assert re.search(r"serving \(warm-up [\d.]+ s; \d+ more steps load", server.log()), \
        server.log()
    request = rebalance_request(loads(windows=3))
    request.history.objective = pb.OBJECTIVE_ROBUST
    request.history.robust_k = 1.0
    channel, client = stub(tcp)
    response = client.Rebalance(request, timeout=60)
    channel.close()
    assert response.objective == pb.OBJECTIVE_ROBUST
    assert from_tensor(response.phy2log).shape == (4, 32)
    deadline = time.monotonic() + 120
    while "warm-up finished" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "warm-up finished" in server.log()
    assert "warm-up step failed" not in server.log()


def test_unix_socket_is_private_by_default(process):
    _, _, unix, _ = process
    mode = stat.S_IMODE(os.stat(unix[len("unix://"):]).st_mode)
    assert mode == 0o600


def test_metrics_endpoint_after_calls(process):
    _, tcp, _, port = process
    channel, client = stub(tcp)
    client.Rebalance(rebalance_request(), timeout=30)
    with pytest.raises(grpc.RpcError):
        client.Rebalance(rebalance_request(loads(), **dict(SMALL, num_nodes=3)), timeout=30)
    client.Rebalance(rebalance_request(), timeout=30)
    channel.close()
    samples = scrape(port)
    labels = (("grpc_method", "Rebalance"), ("grpc_service", "eplb.v1.PlacementService"),
              ("grpc_type", "unary"))
    handled = {code: samples.get(("grpc_server_handled_total",
                                  tuple(sorted(labels + (("grpc_code", code),)))), 0)
               for code in ("OK", "InvalidArgument")}
    assert handled["OK"] >= 2 and handled["InvalidArgument"] >= 1
    assert samples[("grpc_server_started_total", labels)] >= 3
    names = {name for name, _ in samples}
    assert {"grpc_server_handling_seconds_bucket", "eplb_plan_compute_seconds_bucket",
            "eplb_plan_balancedness_bucket", "eplb_plan_gap_ratio_bucket",
            "eplb_request_size_bytes_bucket", "eplb_server_info"} <= names


def test_sigterm_turns_health_off_drains_and_exits_zero(tmp_path):
    """Configured by EPLB_* variables alone; SIGTERM -> NOT_SERVING on a Watch -> exit 0."""
    socket_path = tmp_path / "eplb.sock"
    server = ServerProcess([], tmp_path / "server.log", env={
        "EPLB_LISTEN": f"127.0.0.1:0,unix://{socket_path}", "EPLB_METRICS_PORT": "0",
        "EPLB_GRACE_PERIOD": "5", "EPLB_UNIX_SOCKET_MODE": "660", "EPLB_DEVICE": "cpu"})
    try:
        unix = f"unix://{socket_path}"
        server.wait_serving(unix)
        assert stat.S_IMODE(os.stat(socket_path).st_mode) == 0o660
        channel = grpc.insecure_channel(server.tcp_address())
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        server.proc.send_signal(signal.SIGTERM)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
        channel.close()
    finally:
        status = server.stop()
    assert status == 0, server.log()
    assert "shutting down" in server.log()
    assert not socket_path.exists()


def test_repeated_sigterm_while_draining_still_exits_zero(tmp_path):
    """Orchestrators may signal twice; the second SIGTERM must not kill the draining server."""
    server = ServerProcess([], tmp_path / "server.log", env={
        "EPLB_LISTEN": "127.0.0.1:0", "EPLB_METRICS_PORT": "0", "EPLB_GRACE_PERIOD": "2",
        "EPLB_DEVICE": "cpu"})
    try:
        server.wait_serving(server.tcp_address())
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while "shutting down" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.01)
        repeated = 0
        for _ in range(20):  # keep signalling through the drain and the interpreter's exit
            if server.proc.poll() is not None:
                break
            server.proc.send_signal(signal.SIGTERM)
            repeated += 1
            time.sleep(0.02)
    finally:
        status = server.stop()
    assert repeated > 0, "the server exited before a second SIGTERM reached it"
    assert status == 0, server.log()
