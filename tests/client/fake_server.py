"""An in-process stand-in PlacementService (plain grpcio, no torch) for client and compat tests."""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import numpy as np

from eplb_client.tensors import from_tensor, to_tensor
from eplb_client.v1 import placement_pb2 as pb
from eplb_client.v1 import placement_pb2_grpc as pb_grpc

BAD_REPLICAS = 13  # a Rebalance with this num_replicas fails with a BadRequest on it


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _field(number: int, payload) -> bytes:
    if isinstance(payload, int):
        return _varint(number << 3) + _varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def bad_request_details(code: int, message: str, violations) -> bytes:
    """google.rpc.Status{code, message, details=[Any(BadRequest)]}, encoded by hand."""
    bad = b"".join(_field(1, _field(1, f) + _field(2, d)) for f, d in violations)
    any_msg = _field(1, "type.googleapis.com/google.rpc.BadRequest") + _field(2, bad)
    return _field(1, code) + _field(2, message) + _field(3, any_msg)


def simple_plan(loads: np.ndarray, num_replicas: int):
    """Slot p holds expert p % E: a valid (not balanced) mapping."""
    layers, experts = loads.shape[-2:]
    phy2log = np.tile(np.arange(num_replicas) % experts, (layers, 1)).astype(np.int64)
    logcnt = np.stack([np.bincount(r, minlength=experts) for r in phy2log]).astype(np.int64)
    width = int(logcnt.max())
    log2phy = -np.ones((layers, experts, width), dtype=np.int64)
    for layer in range(layers):
        for slot, e in enumerate(phy2log[layer]):
            log2phy[layer, e, np.argmax(log2phy[layer, e] < 0)] = slot
    return phy2log, log2phy, logcnt


def score(layers: int) -> pb.Score:
    return pb.Score(balancedness=0.5, layer_balancedness=[0.5] * layers,
                    layer_max_load=[2.0] * layers, layer_lower_bound=[1.0] * layers,
                    mean_gap=1.0, max_gap=1.0)


class FakePlacement(pb_grpc.PlacementServiceServicer):
    """Answers with simple_plan; `unavailable` counts calls to fail with UNAVAILABLE first,
    `cancelled` (after those) calls to fail with CANCELLED, as a draining server does."""

    def __init__(self):
        self.unavailable = 0
        self.cancelled = 0
        self.calls = 0
        self.last_request = None
        self._lock = threading.Lock()

    def _maybe_fail(self, context):
        with self._lock:
            self.calls += 1
            fail = self.unavailable > 0
            self.unavailable -= fail
            cancel = not fail and self.cancelled > 0
            self.cancelled -= cancel
        if fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        if cancel:
            context.abort(grpc.StatusCode.CANCELLED, "Cancelling all calls")

    def Rebalance(self, request, context):
        self._maybe_fail(context)
        self.last_request = request
        topo = request.topology
        if topo.num_replicas == BAD_REPLICAS:
            why = f"num_gpus ({topo.num_gpus}) must divide num_replicas ({BAD_REPLICAS})"
            message = f"topology.num_gpus: {why}"
            context.set_trailing_metadata([("grpc-status-details-bin", bad_request_details(
                grpc.StatusCode.INVALID_ARGUMENT.value[0], message, [("topology.num_gpus", why)]))])
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        loads = from_tensor(request.expert_loads)
        phy2log, log2phy, logcnt = simple_plan(loads, topo.num_replicas)
        if request.mapping_dtype == pb.DTYPE_INT32:  # as the real server answers
            phy2log, log2phy, logcnt = (a.astype(np.int32) for a in (phy2log, log2phy, logcnt))
        resp = pb.RebalanceResponse(
            phy2log=to_tensor(phy2log), log2phy=to_tensor(log2phy), logcnt=to_tensor(logcnt),
            policy=pb.POLICY_GLOBAL, objective=pb.OBJECTIVE_SUM, plan=score(len(phy2log)),
            compute_seconds=0.001, device="fake")
        if request.HasField("current_phy2log"):
            resp.current.CopyFrom(score(len(phy2log)))
            resp.migration.CopyFrom(pb.Migration(
                slots_changed=1, cross_node_copies=1, layer_slots_changed=[1],
                layer_changed=[True], transfers=[pb.SlotTransfer(
                    layer=0, slot=1, expert=2, source_slot=3, cross_node=True)]))
        return resp

    def Evaluate(self, request, context):
        self._maybe_fail(context)
        self.last_request = request
        return pb.EvaluateResponse(score=score(request.phy2log.shape[0]), policy=pb.POLICY_GLOBAL)


def _health(request: bytes, context) -> bytes:
    if request not in (b"", b"\x0a\x18eplb.v1.PlacementService"):
        context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
    return b"\x08\x01"  # status: SERVING


def start(address: str = "127.0.0.1:0"):
    """Starts the fake server; returns (server, target, servicer)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = FakePlacement()
    pb_grpc.add_PlacementServiceServicer_to_server(servicer, server)
    health = grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(_health)})
    server.add_generic_rpc_handlers((health,))
    port = server.add_insecure_port(address)
    server.start()
    target = address if address.startswith("unix:") else f"127.0.0.1:{port}"
    return server, target, servicer
