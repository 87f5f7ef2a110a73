"""EplbClient: the blocking client for the EPLB placement service."""

from __future__ import annotations

import itertools
import threading
import time

import grpc

from . import _channel, _request, _wire
from ._retry import Attempts, RetryPolicy
from .errors import EplbError, from_rpc_error
from .results import EvaluateResult, RebalanceResult
from .v1 import placement_pb2 as pb
from .v1 import placement_pb2_grpc as pb_grpc

HEALTH_METHOD = "/grpc.health.v1.Health/Check"


class EplbClient:
    """Blocking client. `target` is "host:port", "unix:///path", or a list (or comma-separated
    string) of targets that calls rotate over, retrying UNAVAILABLE on the next one.

    TLS: pass `root_certificates` (PEM bytes or a path; with `tls=True` alone the system roots
    are used), and `private_key` + `certificate_chain` for mutual TLS.

        with EplbClient("localhost:50051") as c:
            r = c.rebalance(loads, num_replicas=288, num_groups=8, num_nodes=4, num_gpus=32)
            r.phy2log, r.plan.balancedness
    """

    def __init__(self, target=None, *, timeout: float | None = _channel.DEFAULT_TIMEOUT,
                 root_certificates=None, private_key=None, certificate_chain=None,
                 tls: bool = False, tls_server_name: str | None = None,
                 max_message_bytes: int = _channel.MAX_MESSAGE_BYTES,
                 retry: RetryPolicy | None = None, options=()):
        self.targets = _channel.split_targets(target)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        creds = _channel.Tls(root_certificates, private_key, certificate_chain).credentials(tls)
        opts = _channel.channel_options(max_message_bytes, tls_server_name, options)
        self._channels = [grpc.secure_channel(t, creds, opts) if creds else
                          grpc.insecure_channel(t, opts) for t in self.targets]
        self._stubs = [pb_grpc.PlacementServiceStub(c) for c in self._channels]
        self._health = [c.unary_unary(HEALTH_METHOD,
                                      request_serializer=_wire.encode_health_request,
                                      response_deserializer=_wire.decode_health_response)
                        for c in self._channels]
        self._next = itertools.count()
        self._lock = threading.Lock()

    def _call(self, pick, request, timeout):
        attempts = Attempts(self.retry, self.timeout if timeout is None else timeout)
        with self._lock:
            start = next(self._next)
        while True:
            index = (start + attempts.attempt) % len(self._channels)
            try:
                return pick(index)(request, timeout=attempts.next_timeout(),
                                            metadata=attempts.metadata())
            except grpc.RpcError as err:
                delay = attempts.backoff(err.code())
                if delay is None:
                    raise from_rpc_error(err) from None
            time.sleep(delay)

    def rebalance(self, loads, *, num_replicas, num_groups, num_nodes, num_gpus, policy="auto",
                  current_phy2log=None, num_logical_experts=None, slot_loads=False,
                  max_moved_slots_per_layer=0, max_moved_slots_total=0,
                  min_balancedness_gain=0.0, from_scratch=False, objective=None,
                  half_life=0.0, robust_k=0.0, model="", time_budget_ms=0.0,
                  timeout=None) -> RebalanceResult:
        """Plans a placement for `loads` [L, E] (or a history [T, L, E]; with `slot_loads=True`,
        per-slot loads [L, P] that need `current_phy2log`). With `current_phy2log` [L, P] the plan
        moves few experts (limits: `max_moved_slots_*`, `min_balancedness_gain`) and the result
        scores the current mapping and lists the migration. `time_budget_ms` > 0 bounds the
        server's refinement (result.refinement_finished says whether it ran out). Raises
        EplbError."""
        req = _request.rebalance_request(
            loads, num_replicas=num_replicas, num_groups=num_groups, num_nodes=num_nodes,
            num_gpus=num_gpus, policy=policy, current_phy2log=current_phy2log,
            num_logical_experts=num_logical_experts, slot_loads=slot_loads,
            max_moved_slots_per_layer=max_moved_slots_per_layer,
            max_moved_slots_total=max_moved_slots_total,
            min_balancedness_gain=min_balancedness_gain, from_scratch=from_scratch,
            objective=objective, half_life=half_life, robust_k=robust_k, model=model,
            time_budget_ms=time_budget_ms)
        return RebalanceResult.from_proto(self.rebalance_raw(req, timeout=timeout))

    def rebalance_raw(self, request: pb.RebalanceRequest, *, timeout=None) -> pb.RebalanceResponse:
        """Sends a prepared RebalanceRequest; returns the response message."""
        return self._call(lambda i: self._stubs[i].Rebalance, request, timeout)

    def evaluate(self, loads, phy2log, *, num_groups, num_nodes, num_gpus, policy="auto",
                 timeout=None) -> EvaluateResult:
        """Scores mapping `phy2log` [L, P] against `loads` [L, E] (or [T, L, E]) without planning;
        `policy` picks the lower bound reported. `phy2log` may be a RebalanceResult: then "auto"
        takes the bound of the policy it was planned with. Raises EplbError."""
        phy2log, policy = _request.plan_mapping(phy2log, policy)
        req = _request.evaluate_request(loads, phy2log, num_groups=num_groups,
                                        num_nodes=num_nodes, num_gpus=num_gpus, policy=policy)
        return EvaluateResult.from_proto(
            self._call(lambda i: self._stubs[i].Evaluate, req, timeout))

    def health(self, service: str = "", *, timeout=None) -> str:
        """The grpc.health.v1 status of `service` ("" for the whole server): "SERVING",
        "NOT_SERVING", "UNKNOWN" or "SERVICE_UNKNOWN" (a name the server does not know)."""
        try:
            return self._call(lambda i: self._health[i], service, timeout)
        except EplbError as e:
            if e.code == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise

    def close(self) -> None:
        for c in self._channels:
            c.close()

    def __enter__(self) -> "EplbClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EplbClient({','.join(self.targets)!r})"

