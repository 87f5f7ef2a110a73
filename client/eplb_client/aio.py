"""AsyncEplbClient: the asyncio client, with the same methods as EplbClient."""

from __future__ import annotations

import asyncio
import itertools

import grpc
import grpc.aio

from . import _channel, _request, _wire
from ._retry import Attempts, RetryPolicy
from .client import HEALTH_METHOD
from .errors import EplbError, from_rpc_error
from .results import EvaluateResult, RebalanceResult
from .v1 import placement_pb2 as pb
from .v1 import placement_pb2_grpc as pb_grpc


class AsyncEplbClient:
    """Asyncio client; arguments as for EplbClient. Create it inside a running event loop.

        async with AsyncEplbClient("unix:///run/eplb.sock") as c:
            r = await c.rebalance(loads, num_replicas=288, num_groups=8, num_nodes=4, num_gpus=32)
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
        self._channels = [grpc.aio.secure_channel(t, creds, opts) if creds else
                          grpc.aio.insecure_channel(t, opts) for t in self.targets]
        self._stubs = [pb_grpc.PlacementServiceStub(c) for c in self._channels]
        self._health = [c.unary_unary(HEALTH_METHOD,
                                      request_serializer=_wire.encode_health_request,
                                      response_deserializer=_wire.decode_health_response)
                        for c in self._channels]
        self._next = itertools.count()

    async def _call(self, pick, request, timeout):
        attempts = Attempts(self.retry, self.timeout if timeout is None else timeout)
        start = next(self._next)
        while True:
            index = (start + attempts.attempt) % len(self._channels)
            try:
                return await pick(index)(request, timeout=attempts.next_timeout(),
                                            metadata=attempts.metadata())
            except grpc.RpcError as err:
                delay = attempts.backoff(err.code())
                if delay is None:
                    raise from_rpc_error(err) from None
            await asyncio.sleep(delay)

    async def rebalance(self, loads, *, num_replicas, num_groups, num_nodes, num_gpus,
                        policy="auto", current_phy2log=None, num_logical_experts=None,
                        slot_loads=False, max_moved_slots_per_layer=0, max_moved_slots_total=0,
                        min_balancedness_gain=0.0, from_scratch=False, objective=None,
                        half_life=0.0, robust_k=0.0, model="", time_budget_ms=0.0,
                        timeout=None) -> RebalanceResult:
        """As EplbClient.rebalance."""
        req = _request.rebalance_request(
            loads, num_replicas=num_replicas, num_groups=num_groups, num_nodes=num_nodes,
            num_gpus=num_gpus, policy=policy, current_phy2log=current_phy2log,
            num_logical_experts=num_logical_experts, slot_loads=slot_loads,
            max_moved_slots_per_layer=max_moved_slots_per_layer,
            max_moved_slots_total=max_moved_slots_total,
            min_balancedness_gain=min_balancedness_gain, from_scratch=from_scratch,
            objective=objective, half_life=half_life, robust_k=robust_k, model=model,
            time_budget_ms=time_budget_ms)
        return RebalanceResult.from_proto(await self.rebalance_raw(req, timeout=timeout))

    async def rebalance_raw(self, request: pb.RebalanceRequest, *,
                            timeout=None) -> pb.RebalanceResponse:
        """As EplbClient.rebalance_raw."""
        return await self._call(lambda i: self._stubs[i].Rebalance, request, timeout)

    async def evaluate(self, loads, phy2log, *, num_groups, num_nodes, num_gpus, policy="auto",
                       timeout=None) -> EvaluateResult:
        """As EplbClient.evaluate."""
        phy2log, policy = _request.plan_mapping(phy2log, policy)
        req = _request.evaluate_request(loads, phy2log, num_groups=num_groups,
                                        num_nodes=num_nodes, num_gpus=num_gpus, policy=policy)
        return EvaluateResult.from_proto(
            await self._call(lambda i: self._stubs[i].Evaluate, req, timeout))

    async def health(self, service: str = "", *, timeout=None) -> str:
        """As EplbClient.health."""
        try:
            return await self._call(lambda i: self._health[i], service, timeout)
        except EplbError as e:
            if e.code == grpc.StatusCode.NOT_FOUND:
                return "SERVICE_UNKNOWN"
            raise

    async def close(self) -> None:
        for c in self._channels:
            await c.close()

    async def __aenter__(self) -> "AsyncEplbClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncEplbClient({','.join(self.targets)!r})"
