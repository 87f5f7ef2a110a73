"""Test helpers: an in-process server on a background event loop, a switchable engine, requests."""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
from eplb_client.tensors import to_tensor
from eplb_client.v1 import placement_pb2 as pb
from eplb_client.v1 import placement_pb2_grpc as pb_grpc
from eplb_server.server import Config, PlacementServer
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

REPO = pathlib.Path(__file__).resolve().parents[2]
SNAPSHOTS = REPO.parent / "shared" / "data" / "deepseek-v3"
# Small topology used by most tests: L=4 layers, E=16 experts in K=4 groups, P=32 slots on G=8
# GPUs in N=2 nodes.
SMALL = dict(num_replicas=32, num_groups=4, num_nodes=2, num_gpus=8)


class ServerThread:
    """A PlacementServer running on its own event loop in a daemon thread."""

    def __init__(self, config: Config, engine=None):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = PlacementServer(config, engine)
        self.call(self.server.start())

    def call(self, coroutine, timeout=120):
        """Runs a coroutine on the server's loop and waits for its result."""
        return self.submit(coroutine).result(timeout)

    def submit(self, coroutine):
        """Schedules a coroutine on the server's loop; returns a concurrent Future."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def wait_warm(self):
        self.call(self.server.wait_until_warm())

    @property
    def addresses(self):
        return self.server.addresses

    def close(self, grace=0.0):
        if not self.loop.is_closed():
            self.call(self.server.stop(grace))
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class ControlledEngine:
    """The real engine behind switches: hold `plan` calls at a gate, or make them fail."""

    def __init__(self):
        import eplb_server

        self.real = eplb_server
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail = None
        self.plan_calls = 0

    def plan(self, *args, **kwargs):
        self.plan_calls += 1
        self.entered.set()
        assert self.gate.wait(60), "test gate never opened"
        if self.fail is not None:
            raise self.fail
        return self.real.plan(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        return self.real.evaluate(*args, **kwargs)


def loads(layers=4, experts=16, seed=0, windows=None):
    """Skewed (lognormal) synthetic expert loads, float64."""
    rng = np.random.default_rng(seed)
    shape = (layers, experts) if windows is None else (windows, layers, experts)
    return np.round(rng.lognormal(0.0, 1.0, size=shape) * 1000)


def two_per_expert_mapping(layers=4, experts=16):
    """A valid current_phy2log for `loads()` at SMALL's 32 slots: [layers, 2 * experts]."""
    return np.tile(np.concatenate([np.arange(experts), np.arange(experts)]), (layers, 1))


def poke(array, index, value):
    """A copy of array with one entry changed."""
    out = array.copy()
    out[index] = value
    return out


def rebalance_request(weight=None, **topology) -> pb.RebalanceRequest:
    weight = loads() if weight is None else weight
    return pb.RebalanceRequest(model="test", topology=pb.Topology(**(topology or SMALL)),
                               expert_loads=to_tensor(weight))


def snapshot_loads(name="prefill_in512.json"):
    """A real DeepSeek-V3 snapshot without its all-zero (dense) layers: [58, 256], or None."""
    path = SNAPSHOTS / name
    if not path.exists():
        return None
    counts = np.asarray(json.loads(path.read_text())["logical_count"], dtype=np.float64)
    return counts[counts.sum(axis=1) > 0]


def stub(target, credentials=None):
    channel = (grpc.secure_channel(target, credentials) if credentials
               else grpc.insecure_channel(target))
    return channel, pb_grpc.PlacementServiceStub(channel)


def violations(error: grpc.RpcError):
    """(field, description) pairs of the google.rpc.BadRequest carried by a failed call."""
    status = rpc_status.from_call(error)
    assert status is not None, "no google.rpc.Status in the trailers"
    found = []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found += [(v.field, v.description) for v in bad.field_violations]
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict:
    """Samples of the metrics endpoint over HTTP: {(name, sorted label items): value}."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


class ServerProcess:
    """`python -m eplb_server` with the given flags and EPLB_* variables, its log in a file
    (run in `cwd`, the repository by default)."""

    def __init__(self, args, log_path, env=None, cwd=None):
        self.log_path = log_path
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "eplb_server", *args], stdout=self._log,
            stderr=subprocess.STDOUT, cwd=cwd or REPO, env={**os.environ, **(env or {})})

    def log(self) -> str:
        return self.log_path.read_text()

    def tcp_address(self, limit=120.0) -> str:
        """The 127.0.0.1:PORT the server logged once bound."""
        def logged():
            found = re.search(r" on (127\.0\.0\.1:\d+)", self.log())
            return found and found.group(1)
        return self._wait(logged, limit)

    def wait_serving(self, target, limit=300.0):
        """Up to 300 s: on a fresh checkout the first server compiles every kernel (~90 s here)."""
        request = health_pb2.HealthCheckRequest()

        def serving():
            with grpc.insecure_channel(target) as channel:
                try:
                    status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=2).status
                except grpc.RpcError:
                    return False
                return status == health_pb2.HealthCheckResponse.SERVING
        self._wait(serving, limit)

    def _wait(self, probe, limit):
        end = time.monotonic() + limit
        while time.monotonic() < end:
            found = probe()
            if found:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"eplb_server exited ({self.proc.returncode}):\n{self.log()}")
            time.sleep(0.1)
        raise AssertionError(f"eplb_server not ready after {limit} s:\n{self.log()}")

    def stop(self) -> int:
        """SIGTERM, then the exit status (killed after 30 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()


def issue_certificates(directory: pathlib.Path) -> dict:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eplb test CA")])
    paths = {}

    def write(name, data):
        paths[name] = directory / f"{name}.pem"
        paths[name].write_bytes(data)

    def issue(name, key, subject, issuer_key, ca=False, san=None):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        write(f"{name}-cert", builder.sign(issuer_key, hashes.SHA256())
              .public_bytes(serialization.Encoding.PEM))
        write(f"{name}-key", key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))

    issue("ca", ca_key, ca_name, ca_key, ca=True)
    for name in ("server", "client"):
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))] if name == "server" else None
        issue(name, ec.generate_private_key(ec.SECP256R1()), subject, ca_key, san=san)
    return paths
