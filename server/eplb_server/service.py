"""The PlacementService servicer: request -> validated arrays -> engine thread -> response."""

from __future__ import annotations

import logging
import re
import time

import grpc
import numpy as np
import torch
from eplb_client.tensors import to_tensor
from eplb_client.v1 import placement_pb2 as pb
from eplb_client.v1 import placement_pb2_grpc as pb_grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from . import validation, wire
from .engine.api import resolve_policy
from .validation import InvalidRequest
from .worker import DeadlineExpired, Overloaded

log = logging.getLogger("eplb_server")

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PlacementService"].full_name
_POLICY_ENUM = {"hierarchical": pb.POLICY_HIERARCHICAL, "global": pb.POLICY_GLOBAL,
                "deepseek": pb.POLICY_DEEPSEEK}
_OBJECTIVE_ENUM = {name: value for value, name in validation.OBJECTIVES.items() if value}
# Engine argument names (as its ValueError messages name them) -> request field paths.
_ENGINE_FIELDS = {
    "current_phy2log": "current_phy2log", "phy2log": "phy2log", "weight": "expert_loads",
    "num_replicas": "topology.num_replicas", "num_groups": "topology.num_groups",
    "num_nodes": "topology.num_nodes", "num_gpus": "topology.num_gpus", "policy": "policy",
    "max_moved_slots_per_layer": "migration.max_moved_slots_per_layer",
    "max_moved_slots_total": "migration.max_moved_slots_total",
    "min_balancedness_gain": "migration.min_balancedness_gain",
    "objective": "history.objective", "half_life": "history.half_life",
    "robust_k": "history.robust_k",
}


class EngineRejected(Exception):
    """The engine's ValueError (its contract for invalid input); the message names the argument."""


def _engine_call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        raise EngineRejected(str(e)) from e


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


def _engine_field(message: str, method: str) -> str:
    for name, field in _ENGINE_FIELDS.items():
        if re.search(rf"\b{name}\b", message):
            return "current_phy2log" if (field == "phy2log" and method == "Rebalance") else field
    return ""


def score_message(score) -> pb.Score:
    """Fills a Score message from the engine's Score."""
    message = pb.Score(
        balancedness=float(score.balancedness),
        layer_balancedness=score.layer_balancedness.tolist(),
        layer_max_load=score.layer_max_load.tolist(),
        layer_lower_bound=score.layer_lower_bound.tolist(),
        mean_gap=float(score.mean_gap), max_gap=float(score.max_gap))
    if score.window_balancedness is not None:
        message.window_balancedness.extend(score.window_balancedness.tolist())
    return message


def migration_message(m) -> pb.Migration:
    """Fills a Migration message (one SlotTransfer per copy, encoded in bulk) from the engine's."""
    message = pb.Migration(
        slots_changed=int(m.slots_changed), cross_node_copies=int(m.cross_node_copies),
        layer_slots_changed=m.layer_slots_changed.tolist(), layer_changed=m.layer_changed.tolist(),
        layers_kept_for_lack_of_gain=int(m.layers_kept_for_lack_of_gain),
        layer_balancedness_before=m.layer_balancedness_before.tolist(),
        layer_balancedness_after=m.layer_balancedness_after.tolist())
    transfers = wire.encode_transfers(_numpy(m.transfers), _numpy(m.transfer_cross_node))
    message.MergeFromString(transfers)
    return message


def _bound_policy(policy: str) -> str:
    """The bound a plan is scored against: the reference mode is hierarchical when it can be."""
    return "auto" if policy == "deepseek" else policy


def backtest_message(b) -> pb.Backtest:
    """Fills a Backtest message from the engine's (the adaptive objective's choices)."""
    return pb.Backtest(candidates=list(b.candidates), balancedness=b.balancedness.tolist(),
                       layer_choice=b.layer_choice.tolist(), chosen=b.chosen, steps=b.steps,
                       adaptive_balancedness=b.adaptive, layers=b.layers)


def _packed_tensor(array: np.ndarray) -> pb.Tensor:
    """An integer Tensor in int_values: readable for JSON clients such as grpcurl."""
    dtype = pb.DTYPE_INT32 if array.dtype == np.int32 else pb.DTYPE_INT64
    return pb.Tensor(dtype=dtype, shape=array.shape, int_values=array.ravel().tolist())


def _numpy(tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


class PlacementServicer(pb_grpc.PlacementServiceServicer):
    """Thin servicer: validation and engine calls live elsewhere; this wires them to gRPC."""

    def __init__(self, engine, worker, device: torch.device, limits: validation.Limits, metrics):
        self.engine = engine
        self.worker = worker
        self.device = device
        self.limits = limits
        self.metrics = metrics

    async def Rebalance(self, request, context):
        response = await self._serve("Rebalance", request, context, validation.parse_rebalance,
                                     self.rebalance)
        self.metrics.observe_rebalance(response)
        return response

    async def Evaluate(self, request, context):
        return await self._serve("Evaluate", request, context, validation.parse_evaluate,
                                 self.evaluate)

    async def _serve(self, method, request, context, parse, job):
        self.metrics.observe_request_size(method, request.ByteSize())
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining
        try:
            args = parse(request, self.limits)
            return await self.worker.run(job, args, deadline=deadline)
        except InvalidRequest as e:
            status = bad_request_status(e.violations)
        except EngineRejected as e:
            status = bad_request_status([(_engine_field(str(e), method), str(e))])
        except Overloaded as e:
            status = _status(grpc.StatusCode.RESOURCE_EXHAUSTED, str(e))
        except DeadlineExpired as e:
            status = _status(grpc.StatusCode.DEADLINE_EXCEEDED, str(e))
        except Exception as e:  # an engine fault: answer INTERNAL and keep serving
            log.exception("%s failed", method)
            status = _status(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")
        await context.abort_with_status(status)

    # Engine jobs: run on the engine thread, return the response message.

    def rebalance(self, a: validation.RebalanceArgs) -> pb.RebalanceResponse:
        """Plans, scores the plan (and the current mapping) and builds the response."""
        start = time.perf_counter()
        weight = torch.from_numpy(a.weight).to(self.device)
        current = (None if a.current_phy2log is None
                   else torch.from_numpy(a.current_phy2log).to(self.device))
        plan = _engine_call(
            self.engine.plan, weight, a.num_replicas, a.num_groups, a.num_nodes, a.num_gpus,
            policy=a.policy, current_phy2log=current,
            max_moved_slots_per_layer=a.max_moved_slots_per_layer,
            max_moved_slots_total=a.max_moved_slots_total,
            min_balancedness_gain=a.min_balancedness_gain, from_scratch=a.from_scratch,
            objective=a.objective, half_life=a.half_life, robust_k=a.robust_k)
        topology = (a.num_groups, a.num_nodes, a.num_gpus)
        bound = _bound_policy(plan.policy)
        plan_score = _engine_call(self.engine.evaluate, weight, plan.phy2log, *topology,
                                  policy=bound)
        current_score = (None if current is None else _engine_call(
            self.engine.evaluate, weight, current, *topology, policy=bound,
            lower_bound=plan_score.layer_lower_bound))
        seconds = time.perf_counter() - start
        phy2log, log2phy, logcnt = (_numpy(t).astype(a.mapping_dtype, copy=False)
                                    for t in (plan.phy2log, plan.log2phy, plan.logcnt))
        encode = _packed_tensor if a.packed else to_tensor
        response = pb.RebalanceResponse(
            phy2log=encode(phy2log), log2phy=encode(log2phy), logcnt=encode(logcnt),
            policy=_POLICY_ENUM[plan.policy], plan=score_message(plan_score),
            objective=_OBJECTIVE_ENUM[plan.objective], compute_seconds=seconds,
            device=str(self.device))
        if current_score is not None:
            response.current.CopyFrom(score_message(current_score))
        if plan.migration is not None:
            response.migration.CopyFrom(migration_message(plan.migration))
        if plan.backtest is not None:
            response.backtest.CopyFrom(backtest_message(plan.backtest))
        return response

    def evaluate(self, a: validation.EvaluateArgs) -> pb.EvaluateResponse:
        """Scores the given mapping."""
        weight = torch.from_numpy(a.weight).to(self.device)
        phy2log = torch.from_numpy(a.phy2log).to(self.device)
        policy = resolve_policy(_bound_policy(a.policy), a.num_groups, a.num_nodes)
        score = _engine_call(self.engine.evaluate, weight, phy2log, a.num_groups, a.num_nodes,
                             a.num_gpus, policy=policy)
        return pb.EvaluateResponse(score=score_message(score), policy=_POLICY_ENUM[policy])
