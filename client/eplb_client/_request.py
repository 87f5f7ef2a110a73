"""Builds RebalanceRequest and EvaluateRequest messages from Python arguments."""

from __future__ import annotations

import grpc

from .errors import EplbError, FieldViolation
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


def _tensor(name: str, value, *, integer: bool = False) -> pb.Tensor:
    """integer: whole numbers, sent as int32 when they fit (half the bytes of int64)."""
    try:
        a = as_numpy(value)
        if integer and a.dtype.kind == "f":
            if a.size and not (a == a.round()).all():
                raise TensorError("must hold whole numbers")
            a = a.astype("int64")
        if integer and a.dtype.kind in "iu" and a.size and a.dtype.itemsize > 4 \
                and -2**31 <= a.min() and a.max() < 2**31:
            a = a.astype("int32")
        return to_tensor(a)
    except (TensorError, ValueError, TypeError) as e:
        raise invalid(name, str(e)) from None


def _choice(name, fn, value):
    try:
        return fn(value)
    except ValueError as e:
        raise invalid(name, str(e)) from None


def topology(num_replicas, num_groups, num_nodes, num_gpus, num_logical_experts=0) -> pb.Topology:
    values = dict(num_replicas=num_replicas, num_groups=num_groups, num_nodes=num_nodes,
                  num_gpus=num_gpus, num_logical_experts=num_logical_experts or 0)
    return pb.Topology(**{k: _int(f"topology.{k}", v) for k, v in values.items()})


def rebalance_request(loads, *, num_replicas, num_groups, num_nodes, num_gpus, policy="auto",
                      current_phy2log=None, num_logical_experts=None, slot_loads=False,
                      max_moved_slots_per_layer=0, max_moved_slots_total=0,
                      min_balancedness_gain=0.0, from_scratch=False, objective=None,
                      half_life=0.0, robust_k=0.0, model="") -> pb.RebalanceRequest:
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
    )
    field = "slot_loads" if slot_loads else "expert_loads"
    getattr(req, field).CopyFrom(_tensor(field, loads))
    if current_phy2log is not None:
        req.current_phy2log.CopyFrom(_tensor("current_phy2log", current_phy2log, integer=True))
    return req


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
