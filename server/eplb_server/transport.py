"""The gRPC side of PlacementService: request bytes -> coalescing and admission -> the engine
(which decodes, validates and plans off the event loop) -> response bytes or a status."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import traceback
import uuid

import grpc
from eplb_client.v1 import placement_pb2 as pb
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from .coalescing import Coalescer
from .engine_process import EngineFailed, Stopped
from .lograte import RateLimitedLog
from .worker import DeadlineExpired, Overloaded

log = logging.getLogger("eplb_server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PlacementService"].full_name
ATTEMPT_HEADER = "x-eplb-attempt"  # the client's try number, 1 for the first


def bad_request_status(violations) -> grpc.Status:
    """INVALID_ARGUMENT carrying a google.rpc.BadRequest with one FieldViolation per problem."""
    detail = error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field=field, description=why)
        for field, why in violations])
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT,
                               message="; ".join(f"{f}: {why}" for f, why in violations))
    status.details.add().Pack(detail)
    return rpc_status.to_status(status)


def _status(code: grpc.StatusCode, message: str) -> grpc.Status:
    return rpc_status.to_status(status_pb2.Status(code=code.value[0], message=message))


def _internal(faults: RateLimitedLog, key, detail: str) -> grpc.Status:
    """INTERNAL with an id to find the logged detail by; nothing internal reaches the caller.
    The detail (often a traceback) is logged for the first few faults of a kind per minute."""
    error_id = uuid.uuid4().hex[:12]
    faults.log(logging.ERROR, key, "internal error %s: %s", error_id, detail)
    return _status(grpc.StatusCode.INTERNAL, f"internal error (id {error_id}); the request was "
                   "not planned. The server keeps serving; report the id to its operator.")


async def _digest(data: bytes) -> bytes:
    """The coalescing key's hash; off the event loop for large requests (hashlib releases the
    GIL there), so a 64 MiB history does not stall health checks."""
    if len(data) < 1 << 20:
        return hashlib.blake2b(data, digest_size=20).digest()
    return await asyncio.get_running_loop().run_in_executor(
        None, lambda: hashlib.blake2b(data, digest_size=20).digest())


def _attempt(context) -> int:
    for key, value in context.invocation_metadata() or ():
        if key == ATTEMPT_HEADER:
            try:
                return int(value)
            except ValueError:
                return 1
    return 1


class PlacementTransport:
    """Rebalance and Evaluate as raw-bytes handlers over an engine host (ProcessEngine or
    ThreadEngine), sharing identical requests' computations."""

    def __init__(self, engine, metrics, coalescer: Coalescer):
        self.engine = engine
        self.metrics = metrics
        self.coalescer = coalescer
        self.faults = RateLimitedLog(log, burst=5)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE_NAME, {
            "Rebalance": grpc.unary_unary_rpc_method_handler(self.Rebalance),
            "Evaluate": grpc.unary_unary_rpc_method_handler(self.Evaluate)})

    async def Rebalance(self, data: bytes, context) -> bytes:
        return await self._serve("Rebalance", data, context)

    async def Evaluate(self, data: bytes, context) -> bytes:
        return await self._serve("Evaluate", data, context)

    async def _serve(self, method: str, data: bytes, context) -> bytes:
        self.metrics.observe_request_size(method, len(data))
        if _attempt(context) > 1:
            self.metrics.retried.labels(method).inc()
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        key = (method, await _digest(data))

        async def compute(latest_deadline):
            outcome = await self.engine.run(method, data, latest_deadline)
            self.metrics.computations.labels(method).inc()
            for stage, seconds in outcome.timings.items():
                self.metrics.stage.labels(method, stage).observe(seconds)
            return outcome

        try:
            outcome, source = await self.coalescer.run(
                key, compute, deadline,
                size=lambda outcome: len(outcome.data) if outcome.kind == "ok" else None)
        except Overloaded as e:
            status = _status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except DeadlineExpired as e:
            status = _status(grpc.StatusCode.DEADLINE_EXCEEDED, str(e))
        except Stopped as e:
            status = _status(grpc.StatusCode.UNAVAILABLE, str(e))
        except EngineFailed as e:
            status = _internal(self.faults, (method, e.reason), f"{method}: {e}")
        except Exception as e:  # an in-process engine's fault: answer INTERNAL, keep serving
            status = _internal(self.faults, (method, type(e).__name__),
                               f"{method}: {traceback.format_exc()}")
        else:
            if source != "computed":
                self.metrics.coalesced.labels(source).inc()
            if outcome.kind == "ok":
                if outcome.summary is not None and source == "computed":
                    self.metrics.observe_rebalance(outcome.summary)
                return outcome.data
            if outcome.kind in ("invalid", "undecodable"):
                if outcome.kind == "undecodable":
                    self.metrics.undecodable.labels(method).inc()
                status = bad_request_status(outcome.violations)
            elif outcome.kind == "too_large":
                status = _status(grpc.StatusCode.RESOURCE_EXHAUSTED, outcome.violations[0][1])
            else:
                kind = outcome.violations[0][0] if outcome.violations else "error"
                status = _internal(self.faults, (method, kind), f"{method}: " + "; ".join(
                    f"{kind}: {detail}" for kind, detail in outcome.violations))
        await context.abort_with_status(status)
