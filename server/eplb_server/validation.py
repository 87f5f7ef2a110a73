"""Checks and decodes placement requests into numpy arrays; every failure names its field."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from eplb_client.tensors import TensorError, from_tensor
from eplb_client.v1 import placement_pb2 as pb

from .engine.api import MAX_LAYER_LOAD

POLICIES = {
    pb.POLICY_UNSPECIFIED: "auto",
    pb.POLICY_AUTO: "auto",
    pb.POLICY_HIERARCHICAL: "hierarchical",
    pb.POLICY_GLOBAL: "global",
    pb.POLICY_DEEPSEEK: "deepseek",
}
OBJECTIVES = {
    pb.OBJECTIVE_UNSPECIFIED: "default",
    pb.OBJECTIVE_SUM: "sum",
    pb.OBJECTIVE_EXPECTED_PEAK: "expected_peak",
    pb.OBJECTIVE_RECENCY: "recency",
    pb.OBJECTIVE_ROBUST: "robust",
    pb.OBJECTIVE_ADAPTIVE: "adaptive",
}
_INT_DTYPES = (pb.DTYPE_INT32, pb.DTYPE_INT64)
_LOAD_DTYPES = (pb.DTYPE_FLOAT32, pb.DTYPE_FLOAT64) + _INT_DTYPES
MAPPING_DTYPES = {pb.DTYPE_UNSPECIFIED: "int64", pb.DTYPE_INT64: "int64", pb.DTYPE_INT32: "int32"}
MAX_MODEL_NAME = 256
MAX_DIMENSION = 1 << 20  # transfers are encoded with three-byte varints (see wire.py)
MAX_REQUEST_BYTES = (1 << 31) - 1  # gRPC's message length is an int32


@dataclass(frozen=True)
class Limits:
    """Size limits, checked on the shapes before any request-sized allocation."""

    # Defaults cover today's largest MoE shapes (Kimi K2: 60 x 384 -> 480; the largest
    # benchmark shape, 61 x 512 -> 640 on 320 GPUs) with room, and bound a plan's time to
    # about a second.
    max_layers: int = 256
    max_experts: int = 1024
    max_replicas: int = 2048
    max_windows: int = 64
    max_request_bytes: int = 64 << 20  # enforced by gRPC (RESOURCE_EXHAUSTED) before parsing

    def __post_init__(self):
        for name in ("max_layers", "max_experts", "max_replicas", "max_windows"):
            if not 1 <= getattr(self, name) <= MAX_DIMENSION:
                raise ValueError(f"{name} must lie in [1, {MAX_DIMENSION}]")
        if not 1 <= self.max_request_bytes <= MAX_REQUEST_BYTES:
            raise ValueError(f"max_request_bytes must lie in [1, {MAX_REQUEST_BYTES}]")


class InvalidRequest(ValueError):
    """A request that cannot be served; `violations` is a list of (field path, description)."""

    def __init__(self, violations):
        self.violations = list(violations)
        super().__init__("; ".join(f"{field}: {why}" for field, why in self.violations))


@dataclass(frozen=True)
class RebalanceArgs:
    """A validated Rebalance request, as the engine's `plan` arguments."""

    weight: np.ndarray  # [L, E] or [T, L, E]
    num_replicas: int
    num_groups: int
    num_nodes: int
    num_gpus: int
    policy: str
    current_phy2log: Optional[np.ndarray]  # [L, P] int64
    from_scratch: bool
    max_moved_slots_per_layer: int
    max_moved_slots_total: int
    min_balancedness_gain: float
    objective: str
    half_life: float
    robust_k: float
    packed: bool = False  # the loads came as float_values/int_values: answer in int_values too
    mapping_dtype: str = "int64"  # of the response's phy2log, log2phy and logcnt


@dataclass(frozen=True)
class EvaluateArgs:
    """A validated Evaluate request, as the engine's `evaluate` arguments."""

    weight: np.ndarray
    phy2log: np.ndarray
    num_groups: int
    num_nodes: int
    num_gpus: int
    policy: str


def _fail(field, why):
    raise InvalidRequest([(field, why)])


def _raise_any(violations):
    if violations:
        raise InvalidRequest(violations)


def _positive(topology, names, violations):
    for name in names:
        value = getattr(topology, name)
        if value <= 0:
            violations.append((f"topology.{name}", f"must be positive, got {value}"))


def _check_divisions(p, k, n, g, e, policy, violations):
    """The EPLB shape rules: P % G, G % N, E % K, P >= E, and K % N for the hierarchical policy."""
    if p % g:
        violations.append(("topology.num_gpus", f"num_gpus ({g}) must divide num_replicas ({p})"))
    if g % n:
        violations.append(("topology.num_nodes", f"num_nodes ({n}) must divide num_gpus ({g})"))
    if e % k:
        violations.append(("topology.num_groups",
                           f"num_groups ({k}) must divide the number of experts ({e})"))
    if p < e:
        violations.append(("topology.num_replicas",
                           f"num_replicas ({p}) must be at least the number of experts ({e})"))
    if policy == "hierarchical" and k % n:
        violations.append(("topology.num_groups", f"the hierarchical policy needs num_nodes ({n}) "
                           f"to divide num_groups ({k})"))


def _policy(value):
    if value not in POLICIES:
        _fail("policy", f"unknown policy {value}")
    return POLICIES[value]


def _mapping_dtype(value):
    if value not in MAPPING_DTYPES:
        _fail("mapping_dtype", f"must be DTYPE_INT32 or DTYPE_INT64, got {value}")
    return MAPPING_DTYPES[value]


def _loads_shape(tensor, field, limits, last_name, last_limit):
    """Returns ([T,] L, X) from a loads tensor's declared shape, within the limits."""
    if tensor.dtype not in _LOAD_DTYPES:
        _fail(f"{field}.dtype", "must be one of FLOAT32, FLOAT64, INT32, INT64")
    shape = list(tensor.shape)
    if len(shape) not in (2, 3):
        _fail(f"{field}.shape", f"must be [layers, {last_name}] or [windows, layers, {last_name}], "
              f"got {shape}")
    if any(d <= 0 for d in shape):
        _fail(f"{field}.shape", f"dimensions must be positive, got {shape}")
    bounds = [("windows", limits.max_windows)] * (len(shape) - 2)
    bounds += [("layers", limits.max_layers), (last_name, last_limit)]
    for d, (name, bound) in zip(shape, bounds):
        if d > bound:
            _fail(f"{field}.shape", f"{d} {name} exceed the server limit of {bound}")
    return shape


def _decode(tensor, field):
    try:
        return from_tensor(tensor)
    except TensorError as e:
        _fail(field, str(e))


def _check_loads(loads, field):
    """Rejects NaN, infinite and negative loads, naming the first offending index, and layers
    whose total overflows float32 (the engine's limit), naming the layer."""
    if loads.dtype.kind == "f":
        bad = ~np.isfinite(loads)
        if bad.any():
            index = np.unravel_index(int(np.argmax(bad)), loads.shape)
            _fail(field, f"{loads[index]} at {list(map(int, index))}: loads must be finite")
    negative = loads < 0
    if negative.any():
        index = np.unravel_index(int(np.argmax(negative)), loads.shape)
        _fail(field, f"{loads[index]} at {list(map(int, index))}: loads must be non-negative")
    with np.errstate(over="ignore"):
        totals = loads.sum(axis=(0, 2) if loads.ndim == 3 else 1, dtype=np.float64)
    if totals.size and totals.max() > MAX_LAYER_LOAD:
        layer = int(np.argmax(totals))
        _fail(field, f"layer {layer} sums to {totals[layer]:.4g}: a layer's total load must be "
              f"at most {MAX_LAYER_LOAD:.4g} (float32)")


def _mapping_shape(tensor, field, layers, limits):
    """Returns P from a mapping's declared [L, P] shape."""
    if tensor.dtype not in _INT_DTYPES:
        _fail(f"{field}.dtype", "must be INT32 or INT64")
    shape = list(tensor.shape)
    if len(shape) != 2 or shape[0] != layers or shape[1] <= 0:
        _fail(f"{field}.shape", f"must be [layers={layers}, slots], got {shape}")
    if shape[1] > limits.max_replicas:
        _fail(f"{field}.shape",
              f"{shape[1]} slots exceed the server limit of {limits.max_replicas}")
    return shape[1]


def _check_mapping(phy2log, num_experts, field):
    """Every entry names an expert in [0, E) and every expert keeps at least one slot per layer."""
    outside = (phy2log < 0) | (phy2log >= num_experts)
    if outside.any():
        layer, slot = np.unravel_index(int(np.argmax(outside)), phy2log.shape)
        _fail(field, f"entry {int(phy2log[layer, slot])} at [{layer}, {slot}] is outside "
              f"[0, {num_experts})")
    layers = phy2log.shape[0]
    flat = (phy2log + np.arange(layers)[:, None] * num_experts).ravel()
    counts = np.bincount(flat, minlength=layers * num_experts).reshape(layers, num_experts)
    missing = counts == 0
    if missing.any():
        layer, expert = np.unravel_index(int(np.argmax(missing)), missing.shape)
        _fail(field, f"layer {layer} leaves expert {expert} without a slot")


def _slot_to_expert_loads(slot_loads, phy2log, num_experts):
    """Sums [..., L, P] slot loads into [..., L, E] expert loads through the mapping."""
    lead = slot_loads.shape[:-2]
    layers, slots = phy2log.shape
    flat = (phy2log + np.arange(layers)[:, None] * num_experts).ravel()
    rows = slot_loads.reshape(-1, layers * slots).astype(np.float64)
    out = np.stack([np.bincount(flat, weights=r, minlength=layers * num_experts) for r in rows])
    return out.reshape(*lead, layers, num_experts)


def _migration_options(m):
    violations = []
    for name in ("max_moved_slots_per_layer", "max_moved_slots_total"):
        if getattr(m, name) < 0:
            violations.append((f"migration.{name}", "must be non-negative (0: unlimited)"))
    if not (math.isfinite(m.min_balancedness_gain) and m.min_balancedness_gain >= 0):
        violations.append(("migration.min_balancedness_gain", "must be finite and non-negative"))
    return violations


def _history_options(h):
    violations = []
    if h.objective not in OBJECTIVES:
        violations.append(("history.objective", f"unknown objective {h.objective}"))
    for name in ("half_life", "robust_k"):
        value = getattr(h, name)
        if not (math.isfinite(value) and value >= 0):
            violations.append((f"history.{name}", "must be finite and non-negative (0: default)"))
    return violations


def parse_rebalance(request: pb.RebalanceRequest, limits: Limits) -> RebalanceArgs:
    """Validates a RebalanceRequest; raises InvalidRequest naming the offending fields."""
    topo = request.topology
    violations = []
    _positive(topo, ("num_replicas", "num_groups", "num_nodes", "num_gpus"), violations)
    if topo.num_logical_experts < 0:
        violations.append(("topology.num_logical_experts", "must be non-negative"))
    if topo.num_replicas > limits.max_replicas:
        violations.append(("topology.num_replicas", f"{topo.num_replicas} exceeds the server "
                           f"limit of {limits.max_replicas}"))
    if len(request.model) > MAX_MODEL_NAME:
        violations.append(("model", f"longer than {MAX_MODEL_NAME} characters"))
    violations += _migration_options(request.migration) + _history_options(request.history)
    _raise_any(violations)
    policy = _policy(request.policy)
    mapping_dtype = _mapping_dtype(request.mapping_dtype)
    p = topo.num_replicas

    which = request.WhichOneof("loads")
    if which is None:
        _fail("expert_loads", "set expert_loads or slot_loads")
    if which == "slot_loads":
        shape = _loads_shape(request.slot_loads, "slot_loads", limits, "slots", limits.max_replicas)
        if shape[-1] != p:
            _fail("slot_loads.shape", f"last dimension {shape[-1]} must equal num_replicas ({p})")
        if not request.HasField("current_phy2log"):
            _fail("current_phy2log", "required with slot_loads")
    else:
        shape = _loads_shape(request.expert_loads, "expert_loads", limits, "experts",
                             limits.max_experts)
    layers = shape[-2]

    phy2log = None
    if request.HasField("current_phy2log"):
        slots = _mapping_shape(request.current_phy2log, "current_phy2log", layers, limits)
        if slots != p:
            _fail("current_phy2log.shape", f"{slots} slots, num_replicas is {p}")
        phy2log = _decode(request.current_phy2log, "current_phy2log").astype(np.int64)

    if which == "slot_loads":
        e = topo.num_logical_experts or int(phy2log.max()) + 1
        if e > limits.max_experts:
            _fail("topology.num_logical_experts",
                  f"{e} experts exceed the server limit of {limits.max_experts}")
    else:
        e = shape[-1]
        if topo.num_logical_experts not in (0, e):
            _fail("topology.num_logical_experts",
                  f"{topo.num_logical_experts} disagrees with expert_loads ({e} experts)")
    _check_divisions(p, topo.num_groups, topo.num_nodes, topo.num_gpus, e, policy, violations)
    _raise_any(violations)

    loads = _decode(getattr(request, which), which)
    _check_loads(loads, which)
    if phy2log is not None:
        _check_mapping(phy2log, e, "current_phy2log")
    if which == "slot_loads":
        loads = _slot_to_expert_loads(loads, phy2log, e)

    m, h = request.migration, request.history
    return RebalanceArgs(
        weight=loads, num_replicas=p, num_groups=topo.num_groups, num_nodes=topo.num_nodes,
        num_gpus=topo.num_gpus, policy=policy, current_phy2log=phy2log,
        from_scratch=m.from_scratch, max_moved_slots_per_layer=m.max_moved_slots_per_layer,
        max_moved_slots_total=m.max_moved_slots_total,
        min_balancedness_gain=m.min_balancedness_gain, objective=OBJECTIVES[h.objective],
        half_life=h.half_life, robust_k=h.robust_k, packed=not getattr(request, which).data,
        mapping_dtype=mapping_dtype)


def parse_evaluate(request: pb.EvaluateRequest, limits: Limits) -> EvaluateArgs:
    """Validates an EvaluateRequest; raises InvalidRequest naming the offending fields."""
    topo = request.topology
    violations = []
    _positive(topo, ("num_groups", "num_nodes", "num_gpus"), violations)
    _raise_any(violations)
    policy = _policy(request.policy)
    if not request.HasField("expert_loads"):
        _fail("expert_loads", "required")
    if not request.HasField("phy2log"):
        _fail("phy2log", "required")
    shape = _loads_shape(request.expert_loads, "expert_loads", limits, "experts",
                         limits.max_experts)
    layers, e = shape[-2], shape[-1]
    p = _mapping_shape(request.phy2log, "phy2log", layers, limits)
    if topo.num_replicas not in (0, p):
        _fail("topology.num_replicas", f"{topo.num_replicas} disagrees with phy2log ({p} slots)")
    if topo.num_logical_experts not in (0, e):
        _fail("topology.num_logical_experts",
              f"{topo.num_logical_experts} disagrees with expert_loads ({e} experts)")
    _check_divisions(p, topo.num_groups, topo.num_nodes, topo.num_gpus, e, policy, violations)
    _raise_any(violations)

    loads = _decode(request.expert_loads, "expert_loads")
    _check_loads(loads, "expert_loads")
    phy2log = _decode(request.phy2log, "phy2log").astype(np.int64)
    _check_mapping(phy2log, e, "phy2log")
    return EvaluateArgs(weight=loads, phy2log=phy2log, num_groups=topo.num_groups,
                        num_nodes=topo.num_nodes, num_gpus=topo.num_gpus, policy=policy)
