"""Engine jobs: serialized request -> validated arrays -> engine -> serialized response."""

from __future__ import annotations

import re
import time

import numpy as np
from eplb_client.tensors import as_numpy, to_tensor
from eplb_client.v1 import placement_pb2 as pb

from . import validation, wire
from .engine.api import resolve_policy
from .outcome import Outcome
from .validation import InvalidRequest


SERVICE_NAME = pb.DESCRIPTOR.services_by_name["PlacementService"].full_name
_POLICY_ENUM = {"hierarchical": pb.POLICY_HIERARCHICAL, "global": pb.POLICY_GLOBAL,
                "deepseek": pb.POLICY_DEEPSEEK}
_MIGRATION_FIELD = pb.RebalanceResponse.DESCRIPTOR.fields_by_name["migration"].number
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


def rebalance_summary(response: pb.RebalanceResponse) -> dict:
    """The few numbers metrics record of a RebalanceResponse (not the whole message)."""
    summary = dict(policy=int(response.policy), device=response.device,
                   compute_seconds=response.compute_seconds,
                   balancedness=response.plan.balancedness, mean_gap=response.plan.mean_gap,
                   current_balancedness=None, slots_changed=None)
    if response.HasField("current"):
        summary["current_balancedness"] = response.current.balancedness
    if response.HasField("migration"):
        m = response.migration
        summary.update(slots_changed=m.slots_changed, cross_node_copies=m.cross_node_copies,
                       layers_kept=m.layers_kept_for_lack_of_gain)
    return summary


class EngineRejected(Exception):
    """The engine's ValueError (its contract for invalid input); the message names the argument."""


def _engine_call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except ValueError as e:
        raise EngineRejected(str(e)) from e


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


def migration_message(m, table=None) -> tuple[pb.Migration, bytes]:
    """A Migration message from the engine's, and the wire bytes of its transfers as SlotTransfer
    messages (encoded in bulk: parsed, the two make the whole message); with `table` (a Tensor
    encoder), the transfers go in transfer_table instead and the bytes are empty."""
    transfers, cross = as_numpy(m.transfers), as_numpy(m.transfer_cross_node)
    message = pb.Migration(
        slots_changed=int(m.slots_changed), cross_node_copies=int(m.cross_node_copies),
        layer_slots_changed=m.layer_slots_changed.tolist(), layer_changed=m.layer_changed.tolist(),
        layers_kept_for_lack_of_gain=int(m.layers_kept_for_lack_of_gain),
        layer_balancedness_before=m.layer_balancedness_before.tolist(),
        layer_balancedness_after=m.layer_balancedness_after.tolist())
    if table is not None:
        rows = np.column_stack([transfers, cross]).astype(np.int32)
        message.transfer_table.CopyFrom(table(rows))
        return message, b""
    return message, wire.encode_transfers(transfers, cross)


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


class PlacementServicer:
    """Serves serialized requests with the engine; runs wherever the engine runs (transport.py
    holds the gRPC side). device: "cpu" (numpy arrays to the engine: torch is not imported) or
    a CUDA device ("cuda:0": tensors on it)."""

    def __init__(self, engine, device: str, limits: validation.Limits):
        self.engine = engine
        self.device = str(device)
        self.limits = limits

    def _on_device(self, array: np.ndarray | None):
        if array is None or self.device == "cpu":
            return array
        import torch

        return torch.from_numpy(array).to(self.device)

    def execute(self, method: str, data: bytes) -> Outcome:
        """Decodes, validates and serves one serialized request; never raises for bad input.
        The outcome's timings hold each stage's seconds: decode, validate, plan (Rebalance),
        score, encode."""
        parse, job, message = self._methods[method]
        clock = [time.perf_counter()]

        def lap():
            clock.append(time.perf_counter())
            return clock[-1] - clock[-2]
        try:
            request = message.FromString(data)
        except Exception:  # protobuf's DecodeError, or an unknown wire type
            return Outcome("undecodable",
                           violations=[("", f"the bytes are not a {message.__name__}")])
        timings = dict(decode=lap())
        try:
            args = parse(request, self.limits)
            timings["validate"] = lap()
            response, tail, stages = job(self, args)
        except InvalidRequest as e:
            return Outcome("invalid", violations=e.violations, timings=timings)
        except validation.ResponseTooLarge as e:
            return Outcome("too_large", violations=[("", str(e))], timings=timings)
        except EngineRejected as e:
            return Outcome("invalid", violations=[(_engine_field(str(e), method), str(e))],
                           timings=timings)
        encoded = response.SerializeToString() + tail
        total = lap()
        timings.update(stages, encode=max(total - sum(stages.values()), 0.0))
        summary = rebalance_summary(response) if method == "Rebalance" else None
        return Outcome("ok", data=encoded, summary=summary, timings=timings)

    # Engine jobs: run where the engine runs (its process or thread); return the response message.

    def rebalance(self, a: validation.RebalanceArgs):
        """Plans, scores the plan (and the current mapping): (response, bytes to append to its
        encoding: the migration's transfers, {"plan": seconds, "score": seconds})."""
        start = time.perf_counter()
        weight, current = self._on_device(a.weight), self._on_device(a.current_phy2log)
        plan = _engine_call(
            self.engine.plan, weight, a.num_replicas, a.num_groups, a.num_nodes, a.num_gpus,
            policy=a.policy, current_phy2log=current,
            max_moved_slots_per_layer=a.max_moved_slots_per_layer,
            max_moved_slots_total=a.max_moved_slots_total,
            min_balancedness_gain=a.min_balancedness_gain, from_scratch=a.from_scratch,
            objective=a.objective, half_life=a.half_life, robust_k=a.robust_k,
            with_log2phy=a.log2phy, time_budget_ms=a.time_budget_ms)
        topology = (a.num_groups, a.num_nodes, a.num_gpus)
        bound = _bound_policy(plan.policy)
        planned = time.perf_counter()
        plan_score = _engine_call(self.engine.evaluate, weight, plan.phy2log, *topology,
                                  policy=bound)
        current_score = (None if current is None else _engine_call(
            self.engine.evaluate, weight, current, *topology, policy=bound,
            lower_bound=plan_score.layer_lower_bound))
        scored = time.perf_counter()
        phy2log, logcnt = (as_numpy(t).astype(a.mapping_dtype, copy=False)
                           for t in (plan.phy2log, plan.logcnt))
        encode = _packed_tensor if a.packed else to_tensor
        response = pb.RebalanceResponse(
            phy2log=encode(phy2log), logcnt=encode(logcnt),
            policy=_POLICY_ENUM[plan.policy], plan=score_message(plan_score),
            objective=_OBJECTIVE_ENUM[plan.objective], compute_seconds=scored - start,
            device=plan.device, current_mapping=a.current_mapping,
            current_empty_slots=a.current_empty_slots,
            log2phy_format=pb.LOG2PHY_FORMAT_PADDED if a.log2phy else pb.LOG2PHY_FORMAT_COMPACT,
            time_budget_ran_out=not getattr(plan, "refinement_finished", True))
        log2phy = response.log2phy if a.log2phy else response.replica_rank
        log2phy.CopyFrom(encode(as_numpy(plan.log2phy if a.log2phy else plan.replica_rank)
                                .astype(a.mapping_dtype, copy=False)))
        if current_score is not None:
            response.current.CopyFrom(score_message(current_score))
        tail = b""
        if plan.migration is not None:
            migration, transfers = migration_message(
                plan.migration, encode if a.transfer_table else None)
            response.migration.CopyFrom(migration)
            tail = wire.embedded(_MIGRATION_FIELD, transfers) if transfers else b""
        if plan.backtest is not None:
            response.backtest.CopyFrom(backtest_message(plan.backtest))
        return response, tail, dict(plan=planned - start, score=scored - planned)

    def evaluate(self, a: validation.EvaluateArgs):
        """Scores the given mapping: (response, b"", {"score": seconds})."""
        start = time.perf_counter()
        weight, phy2log = self._on_device(a.weight), self._on_device(a.phy2log)
        policy = resolve_policy(_bound_policy(a.policy), a.num_groups, a.num_nodes)
        score = _engine_call(self.engine.evaluate, weight, phy2log, a.num_groups, a.num_nodes,
                             a.num_gpus, policy=policy)
        scored = time.perf_counter()
        return (pb.EvaluateResponse(score=score_message(score), policy=_POLICY_ENUM[policy]), b"",
                dict(score=scored - start))


PlacementServicer._methods = {
    "Rebalance": (validation.parse_rebalance, PlacementServicer.rebalance, pb.RebalanceRequest),
    "Evaluate": (validation.parse_evaluate, PlacementServicer.evaluate, pb.EvaluateRequest),
}
