"""Test helpers: an in-process server on a background event loop, a switchable engine, requests."""

from __future__ import annotations

import asyncio
import json
import pathlib
import socket
import threading
import urllib.request

import grpc
import numpy as np
from eplb_client.tensors import to_tensor
from eplb_client.v1 import placement_pb2 as pb
from eplb_client.v1 import placement_pb2_grpc as pb_grpc
from eplb_server.server import Config, PlacementServer
from google.rpc import error_details_pb2
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
