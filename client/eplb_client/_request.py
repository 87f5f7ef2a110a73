"""Builds RebalanceRequest and EvaluateRequest messages from Python arguments."""

from __future__ import annotations

import os

import grpc
import numpy as np

from .errors import EplbError, FieldViolation
from .loaders import as_array, load_loads
from .names import objective_value, policy_value
from .tensors import TensorError, as_numpy, to_tensor
from .v1 import placement_pb2 as pb


def invalid(field: str, description: str) -> EplbError:
    """A client-side INVALID_ARGUMENT error naming the field, shaped like the server's."""
    return EplbError(grpc.StatusCode.INVALID_ARGUMENT, f"invalid {field}: {description}",
                     [FieldViolation(field, description)])


def _int(name: str, value) -> int:
    try:
        out = int(value)
        if out != value:
            raise ValueError
    except (TypeError, ValueError):
        raise invalid(name, f"must be an integer; got {value!r}") from None
    if abs(out) >= 2**31 and not name.endswith("_total"):
        raise invalid(name, f"{out} is out of range")
    return out


def _array(name: str, value):
    """A numpy array from an array-like, a file path or a parsed SGLang dump (dict)."""
    if isinstance(value, (str, os.PathLike, dict)):
        if name not in ("expert_loads", "slot_loads"):
            raise TensorError(f"got a {type(value).__name__}; pass an array (read a saved "
                              "mapping with eplb_client.load_mapping(path))")
        return load_loads(value)
    a = as_numpy(value) if not isinstance(value, list) else as_array(value, name)
    if a.dtype.kind not in "biuf":
        raise TensorError(f"got an array of {a.dtype}, not numbers; pass a numeric array, or a "
                          "file path or SGLang dump (dict), which eplb_client.load_loads reads")
    return a


def _tensor(name: str, value, *, integer: bool = False) -> pb.Tensor:
    """Sent in 4-byte elements where that loses nothing (half the bytes): integers that int32
    holds, floats that float32 holds exactly (token counts do). integer: whole numbers only."""
    try:
        a = _array(name, value)
        if integer and a.dtype.kind == "f":
            if a.size and not (a == a.round()).all():
                raise TensorError("must hold whole numbers")
            a = a.astype("int64")
        if a.dtype.kind in "iu" and a.size and a.dtype.itemsize > 4 \
                and -2**31 <= a.min() and a.max() < 2**31:
            a = a.astype("int32")
        elif a.dtype == np.float64 and a.size:
            with np.errstate(over="ignore"):
                narrow = a.astype(np.float32)
            if np.array_equal(narrow, a):  # never for NaN: sent as is, for the server to refuse
                a = narrow
        return to_tensor(a)
    except (TensorError, ValueError, TypeError) as e:  # LoadError included
        raise invalid(name, str(e)) from None


def _choice(name, fn, value):
    try:
        return fn(value)
    except ValueError as e:
        raise invalid(name, str(e)) from None


def topology(num_replicas, num_groups, num_nodes, num_gpus, num_logical_experts=0) -> pb.Topology:
    # num_groups None (SGLang, models without groups) goes as 0, which the server reads as 1.
    values = dict(num_replicas=num_replicas, num_groups=num_groups or 0, num_nodes=num_nodes,
                  num_gpus=num_gpus, num_logical_experts=num_logical_experts or 0)
    return pb.Topology(**{k: _int(f"topology.{k}", v) for k, v in values.items()})


def rebalance_request(loads, *, num_replicas, num_groups, num_nodes, num_gpus, policy="auto",
                      current_phy2log=None, num_logical_experts=None, slot_loads=False,
                      max_moved_slots_per_layer=0, max_moved_slots_total=0,
                      min_balancedness_gain=0.0, from_scratch=False, objective=None,
                      half_life=0.0, robust_k=0.0, model="",
                      time_budget_ms=0.0) -> pb.RebalanceRequest:
    """The request for EplbClient.rebalance (see its docstring)."""
    req = pb.RebalanceRequest(
        model=str(model or ""),
        topology=topology(num_replicas, num_groups, num_nodes, num_gpus, num_logical_experts),
        policy=_choice("policy", policy_value, policy),
        migration=pb.MigrationOptions(
            from_scratch=bool(from_scratch),
            max_moved_slots_per_layer=_int("migration.max_moved_slots_per_layer",
                                           max_moved_slots_per_layer),
            max_moved_slots_total=_int("migration.max_moved_slots_total",
                                       max_moved_slots_total),
            min_balancedness_gain=float(min_balancedness_gain)),
        history=pb.HistoryOptions(
            objective=_choice("history.objective", objective_value, objective),
            half_life=float(half_life), robust_k=float(robust_k)),
        mapping_dtype=pb.DTYPE_INT32,  # half the response; results are int64 (see results.py)
        log2phy_format=pb.LOG2PHY_FORMAT_COMPACT,  # [L, P], not [L, E, W]: see results.py
        transfer_format=pb.TRANSFER_FORMAT_TABLE,  # one array: microseconds to decode
        time_budget_ms=float(time_budget_ms),
    )
    field = "slot_loads" if slot_loads else "expert_loads"
    getattr(req, field).CopyFrom(_tensor(field, loads))
    if req.history.objective == pb.OBJECTIVE_ROBUST and len(getattr(req, field).shape) != 3:
        raise invalid("history.objective", "robust needs a history of loads [T, L, E] (several "
                      "windows); with one window [L, E] use the default objective")
    if current_phy2log is not None:
        req.current_phy2log.CopyFrom(_tensor("current_phy2log", current_phy2log, integer=True))
    return req


def bound_policy(plan_policy: str | None, policy: str | None) -> str:
    """The policy whose bound an evaluation reports: `policy` unless it is None or "auto",
    then that of the plan being scored (a deepseek plan: "auto")."""
    if policy not in (None, "auto") or plan_policy in (None, "deepseek"):
        return policy or "auto"
    return plan_policy


def plan_mapping(phy2log, policy):
    """(mapping, bound policy) for evaluate: a RebalanceResult gives its phy2log and policy."""
    if hasattr(phy2log, "phy2log") and hasattr(phy2log, "policy"):
        return phy2log.phy2log, bound_policy(phy2log.policy, policy)
    return phy2log, policy


def evaluate_request(loads, phy2log, *, num_groups, num_nodes, num_gpus,
                     policy="auto") -> pb.EvaluateRequest:
    """The request for EplbClient.evaluate: P and E are taken from the arrays' shapes."""
    loads_t = _tensor("expert_loads", loads)
    phy_t = _tensor("phy2log", phy2log, integer=True)
    num_replicas = phy_t.shape[-1] if phy_t.shape else 0
    num_experts = loads_t.shape[-1] if loads_t.shape else 0
    return pb.EvaluateRequest(
        topology=topology(num_replicas, num_groups, num_nodes, num_gpus, num_experts),
        expert_loads=loads_t, phy2log=phy_t, policy=_choice("policy", policy_value, policy))
