"""Prometheus series: go-grpc-prometheus's server metrics and the planner's own, one registry."""

from __future__ import annotations

import asyncio
import inspect
import time

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

_RPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BALANCE_BUCKETS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.999, 1.0)
_GAP_BUCKETS = (0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
_SLOT_BUCKETS = (0, 1, 10, 30, 100, 300, 1000, 3000, 10000, 30000, 100000)
_SIZE_BUCKETS = tuple(2 ** k for k in range(8, 28, 2))  # 256 B .. 64 MiB
# The client's deadline fires a little before the server's copy of it (which starts when the
# request arrives); the client then cancels. A cancel this close to the deadline is its expiry.
_DEADLINE_SLACK = 0.05
# gRPC sends a timeout in the grpc-timeout header rounded up (to 100 ms from 10 s, to 1 s from
# 100 s, coarser beyond: about 1%), so the server's copy can end that much after the client's.
_DEADLINE_ROUNDING = 0.02
_POLICY_NAMES = {2: "hierarchical", 3: "global", 4: "deepseek"}  # eplb.v1.Policy values


def go_code_name(code: grpc.StatusCode) -> str:
    """The status code as Go's codes.Code.String() spells it ("OK", "InvalidArgument", ...)."""
    if code == grpc.StatusCode.CANCELLED:
        return "Canceled"
    if code == grpc.StatusCode.OK:
        return "OK"
    return "".join(word.capitalize() for word in code.name.split("_"))


class Metrics:
    """All series, registered on a registry of their own (not the process-global one)."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.started = Counter("grpc_server_started_total", "RPCs started on the server.",
                               _RPC_LABELS, registry=r)
        self.handled = Counter("grpc_server_handled_total",
                               "RPCs completed on the server, regardless of success or failure.",
                               _RPC_LABELS + ("grpc_code",), registry=r)
        self.handling = Histogram("grpc_server_handling_seconds",
                                  "Response latency of RPCs handled by the server.",
                                  _RPC_LABELS, buckets=_LATENCY_BUCKETS, registry=r)
        self.compute = Histogram("eplb_plan_compute_seconds",
                                 "Engine time of a Rebalance (plan, scoring), without transport.",
                                 ("policy", "device"), buckets=_LATENCY_BUCKETS, registry=r)
        self.plan_balancedness = Histogram(
            "eplb_plan_balancedness", "Aggregate balancedness (mean / max GPU load) of new plans.",
            ("policy",), buckets=_BALANCE_BUCKETS, registry=r)
        self.current_balancedness = Histogram(
            "eplb_current_balancedness",
            "Aggregate balancedness of the cluster's current mapping on the same loads.",
            ("policy",), buckets=_BALANCE_BUCKETS, registry=r)
        self.gap = Histogram("eplb_plan_gap_ratio",
                             "Mean over layers of a new plan's peak GPU load / lower bound - 1.",
                             ("policy",), buckets=_GAP_BUCKETS, registry=r)
        self.slots_changed = Histogram("eplb_migration_slots_changed",
                                       "Slots whose expert changes, per Rebalance with a mapping.",
                                       buckets=_SLOT_BUCKETS, registry=r)
        self.cross_node_copies = Counter("eplb_migration_cross_node_copies",
                                         "Expert copies between nodes in returned transfer plans.",
                                         registry=r)
        self.layers_kept = Counter("eplb_migration_layers_kept_for_lack_of_gain",
                                   "Layers that kept their current mapping although a better "
                                   "plan existed (gain below the minimum or over budget).",
                                   registry=r)
        self.request_size = Histogram("eplb_request_size_bytes", "Serialized request size.",
                                      ("grpc_method",), buckets=_SIZE_BUCKETS, registry=r)
        self.pending = Gauge("eplb_engine_pending_requests",
                             "Engine jobs running or queued.", registry=r)
        self.max_pending = Gauge("eplb_engine_max_pending",
                                 "Admission bound: engine jobs running or queued at most.",
                                 registry=r)
        self.engine_up = Gauge("eplb_engine_up",
                               "1 while the engine (its worker process) is ready for jobs.",
                               registry=r)
        self.engine_restarts = Counter("eplb_engine_restarts",
                                       "Engine process restarts, by reason (crash, timeout).",
                                       ("reason",), registry=r)
        self.job_seconds = Gauge("eplb_engine_job_seconds",
                                 "Seconds the engine job running now has run (0 when idle).",
                                 registry=r)
        self.serving = Gauge("eplb_serving", "1 while health reports SERVING.", registry=r)
        self.computations = Counter("eplb_engine_computations",
                                    "Engine jobs run (identical requests coalesced count once).",
                                    ("grpc_method",), registry=r)
        self.coalesced = Counter("eplb_coalesced_requests",
                                 "Requests answered by another identical request's computation: "
                                 "one in flight, or a recent answer.", ("source",), registry=r)
        self.retried = Counter("eplb_retried_requests",
                               "Requests that the client marked as a retry (x-eplb-attempt > 1).",
                               ("grpc_method",), registry=r)
        self.undecodable = Counter("eplb_undecodable_requests",
                                   "Requests whose bytes are not the method's message.",
                                   ("grpc_method",), registry=r)
        self.stage = Histogram("eplb_stage_seconds",
                               "Seconds of each stage of a computed request: queue (for the "
                               "engine thread), handoff (to the worker process and back), and "
                               "in the engine: decode, validate, plan, score, encode.",
                               ("grpc_method", "stage"), buckets=_LATENCY_BUCKETS, registry=r)
        self.info = Info("eplb_server", "Server version, engine device and torch version.",
                         registry=r)

    def observe_request_size(self, method: str, size: int):
        self.request_size.labels(method).observe(size)

    def observe_rebalance(self, summary: dict):
        """Records a successful Rebalance's compute time, quality and movement (service.py's
        rebalance_summary of the response)."""
        policy = _POLICY_NAMES.get(summary["policy"], "unknown")
        self.compute.labels(policy, summary["device"]).observe(summary["compute_seconds"])
        self.plan_balancedness.labels(policy).observe(summary["balancedness"])
        self.gap.labels(policy).observe(summary["mean_gap"])
        if summary["current_balancedness"] is not None:
            self.current_balancedness.labels(policy).observe(summary["current_balancedness"])
        if summary["slots_changed"] is not None:
            self.slots_changed.observe(summary["slots_changed"])
            self.cross_node_copies.inc(summary["cross_node_copies"])
            self.layers_kept.inc(summary["layers_kept"])


def _rpc_type(handler) -> str:
    if handler.request_streaming and handler.response_streaming:
        return "bidi_stream"
    if handler.request_streaming:
        return "client_stream"
    return "server_stream" if handler.response_streaming else "unary"


def _final_code(context, error, timeout=None) -> grpc.StatusCode:
    """timeout: the RPC's time remaining when it started (None: no deadline)."""
    if isinstance(error, asyncio.CancelledError):
        remaining = context.time_remaining()
        slack = _DEADLINE_SLACK + _DEADLINE_ROUNDING * (timeout or 0.0)
        expired = remaining is not None and remaining <= slack
        return grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    return grpc.StatusCode.UNKNOWN if error is not None else grpc.StatusCode.OK


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every RPC, labelled as go-grpc-prometheus labels them."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        service, _, method = details.method.lstrip("/").rpartition("/")
        labels = (_rpc_type(handler), service, method)
        kind = ("stream" if handler.request_streaming else "unary") + "_" + (
            "stream" if handler.response_streaming else "unary")
        behavior = getattr(handler, kind)
        if inspect.isasyncgenfunction(behavior):
            wrapped = self._wrap_generator(behavior, labels)
        elif inspect.iscoroutinefunction(behavior):
            wrapped = self._wrap_coroutine(behavior, labels)
        else:
            return handler
        return handler._replace(**{kind: wrapped})

    def _start(self, labels):
        self.metrics.started.labels(*labels).inc()
        return time.perf_counter()

    def _finish(self, labels, start, context, error, timeout=None):
        code = go_code_name(_final_code(context, error, timeout))
        self.metrics.handled.labels(*labels, code).inc()
        self.metrics.handling.labels(*labels).observe(time.perf_counter() - start)

    def _wrap_coroutine(self, behavior, labels):
        async def observed(request, context):
            start, error, timeout = self._start(labels), None, context.time_remaining()
            try:
                return await behavior(request, context)
            except BaseException as e:
                error = e
                raise
            finally:
                self._finish(labels, start, context, error, timeout)
        return observed

    def _wrap_generator(self, behavior, labels):
        async def observed(request, context):
            start, error, timeout = self._start(labels), None, context.time_remaining()
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as e:
                error = e
                raise
            finally:
                self._finish(labels, start, context, error, timeout)
        return observed
