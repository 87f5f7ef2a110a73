"""Checks and decodes placement requests into numpy arrays; every failure names its field."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from eplb_client.tensors import TensorError, from_tensor
from eplb_client.v1 import placement_pb2 as pb

from .engine.api import MAX_LAYER_LOAD
from .engine.history import MAX_ROBUST_K
from .limits import MAX_DIMENSION, MAX_REQUEST_BYTES, Limits  # noqa: F401 (re-exported)

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
EMPTY_SLOT = -1  # vLLM's and SGLang's mark for a slot that holds no expert
MAX_MODEL_NAME = 256
# LOG2PHY_FORMAT_UNSPECIFIED sends the padded log2phy only where the worst-case response fits
# gRPC's default client receive limit: a default client can always read a default answer.
DEFAULT_PADDED_RESPONSE_BYTES = 4 << 20
LOG2PHY_FORMATS = {pb.LOG2PHY_FORMAT_UNSPECIFIED: "auto", pb.LOG2PHY_FORMAT_PADDED: "padded",
                   pb.LOG2PHY_FORMAT_COMPACT: "compact"}
TRANSFER_FORMATS = {pb.TRANSFER_FORMAT_UNSPECIFIED: "messages",
                    pb.TRANSFER_FORMAT_MESSAGES: "messages", pb.TRANSFER_FORMAT_TABLE: "table"}


class ResponseTooLarge(Exception):
    """The response's worst case exceeds Limits.max_response_bytes: RESOURCE_EXHAUSTED."""


def _tensor_bytes(entries: int, packed: bool, itemsize: int) -> int:
    """Worst-case encoded size of a Tensor holding `entries` integers in [-1, 2**21)."""
    per_entry = 10 if packed else itemsize  # a packed -1 is a ten-byte varint
    return entries * per_entry + 64  # tags, dtype, shape, length prefixes


def response_bound(layers: int, experts: int, slots: int, windows: int, *, current: bool,
                   padded_log2phy: bool, packed: bool, itemsize: int) -> int:
    """An upper bound on a RebalanceResponse's encoded size, from the request's shapes alone.

    log2phy's width is at most P - E + 1 (every spare slot on one expert); its compact form,
    replica_rank, is [L, P]; a migration has at most one transfer per slot (each at most 20
    bytes, see wire.py).
    """
    size = _tensor_bytes(layers * slots, packed, itemsize)  # phy2log
    size += _tensor_bytes(layers * experts, packed, itemsize)  # logcnt
    if padded_log2phy:
        size += _tensor_bytes(layers * experts * (slots - experts + 1), packed, itemsize)
    else:
        size += _tensor_bytes(layers * slots, packed, itemsize)  # replica_rank
    score = 3 * (layers * 8 + 8) + windows * 8 + 64  # three [L] doubles, window balancedness
    size += score * (2 if current else 1)
    if current:
        size += layers * (4 + 1 + 2 * 8) + 64 + layers * slots * 20  # per layer + transfers
    return size + 256  # enums, compute_seconds, device


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
    current_mapping: int = pb.CURRENT_MAPPING_UNSPECIFIED  # what became of current_phy2log
    current_empty_slots: int = 0  # its -1 entries
    log2phy: bool = True  # send the padded log2phy (LOG2PHY_FORMAT_PADDED), else replica_rank
    time_budget_ms: float = 0.0  # refinement's time limit (0: none)
    transfer_table: bool = False  # the migration's transfers as one array (TRANSFER_FORMAT_TABLE)


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


def _check_mapping(phy2log, num_experts, field, empty_ok=False):
    """Every entry names an expert in [0, E) (or is -1 where empty_ok) and every expert keeps at
    least one slot per layer (checked only without empty slots)."""
    outside = ((phy2log < 0) & ~(empty_ok & (phy2log == EMPTY_SLOT))) | (phy2log >= num_experts)
    if outside.any():
        layer, slot = np.unravel_index(int(np.argmax(outside)), phy2log.shape)
        _fail(field, f"entry {int(phy2log[layer, slot])} at [{layer}, {slot}] is outside "
              f"[0, {num_experts})")
    if empty_ok and (phy2log == EMPTY_SLOT).any():
        return
    layers = phy2log.shape[0]
    flat = (phy2log + np.arange(layers)[:, None] * num_experts).ravel()
    counts = np.bincount(flat, minlength=layers * num_experts).reshape(layers, num_experts)
    missing = counts == 0
    if missing.any():
        layer, expert = np.unravel_index(int(np.argmax(missing)), missing.shape)
        _fail(field, f"layer {layer} leaves expert {expert} without a slot")


def _fill_empty_slots(phy2log, loads):
    """phy2log [L, P] with -1 entries, loads [[T,] L, E] -> [L, P] with every -1 filled: first by
    the experts the layer lacks, then by the heaviest experts in turn; None where a layer lacks
    more experts than it has empty slots."""
    weight = loads.sum(axis=0) if loads.ndim == 3 else loads
    layers, num_experts = weight.shape
    out = phy2log.copy()
    for layer in range(layers):
        row = out[layer]
        empty = np.flatnonzero(row == EMPTY_SLOT)
        if not empty.size:
            continue
        held = np.zeros(num_experts, dtype=bool)
        held[row[row != EMPTY_SLOT]] = True
        missing = np.flatnonzero(~held)
        if missing.size > empty.size:
            return None
        heaviest = np.argsort(-weight[layer], kind="stable")
        rest = empty.size - missing.size
        row[empty] = np.concatenate([missing, heaviest[np.arange(rest) % num_experts]])
    return out


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
    if h.robust_k > MAX_ROBUST_K:  # the engine checks it too, and the reduced loads
        violations.append(("history.robust_k", f"must be at most {MAX_ROBUST_K:g} standard "
                           f"deviations, got {h.robust_k:g}"))
    return violations


def _log2phy_format(value):
    if value not in LOG2PHY_FORMATS:
        _fail("log2phy_format", f"unknown format {value}")
    return LOG2PHY_FORMATS[value]


def _transfer_format(value):
    if value not in TRANSFER_FORMATS:
        _fail("transfer_format", f"unknown format {value}")
    return TRANSFER_FORMATS[value]


def _padded_log2phy(fmt, layers, experts, slots, windows, current, packed, itemsize, limits):
    """Whether to send the padded log2phy (else replica_rank); ResponseTooLarge when the
    chosen format's worst case exceeds the limit."""
    def bound(padded):
        return response_bound(layers, experts, slots, windows, current=current,
                              padded_log2phy=padded, packed=packed, itemsize=itemsize)
    if fmt == "auto":
        return bound(True) <= min(DEFAULT_PADDED_RESPONSE_BYTES, limits.max_response_bytes)
    worst = bound(fmt == "padded")
    if worst > limits.max_response_bytes:
        hint = " (LOG2PHY_FORMAT_COMPACT sends log2phy in [L, P])" if fmt == "padded" else ""
        raise ResponseTooLarge(f"the response could take up to {worst} bytes, over the server's "
                               f"limit of {limits.max_response_bytes}{hint}")
    return fmt == "padded"


def parse_rebalance(request: pb.RebalanceRequest, limits: Limits) -> RebalanceArgs:
    """Validates a RebalanceRequest; raises InvalidRequest naming the offending fields."""
    topo = request.topology
    violations = []
    _positive(topo, ("num_replicas", "num_nodes", "num_gpus"), violations)
    if topo.num_groups < 0:
        violations.append(("topology.num_groups", "must be non-negative (0: no groups, as 1)"))
    if topo.num_logical_experts < 0:
        violations.append(("topology.num_logical_experts", "must be non-negative"))
    if topo.num_replicas > limits.max_replicas:
        violations.append(("topology.num_replicas", f"{topo.num_replicas} exceeds the server "
                           f"limit of {limits.max_replicas}"))
    if len(request.model) > MAX_MODEL_NAME:
        violations.append(("model", f"longer than {MAX_MODEL_NAME} characters"))
    violations += _migration_options(request.migration) + _history_options(request.history)
    if not math.isfinite(request.time_budget_ms) or request.time_budget_ms < 0:
        violations.append(("time_budget_ms", "must be finite and non-negative (0: no limit)"))
    _raise_any(violations)
    policy = _policy(request.policy)
    mapping_dtype = _mapping_dtype(request.mapping_dtype)
    log2phy_format = _log2phy_format(request.log2phy_format)
    transfer_format = _transfer_format(request.transfer_format)
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
    if request.history.objective == pb.OBJECTIVE_ROBUST and len(shape) != 3:
        _fail("history.objective", f"robust needs a history of loads [T, L, E]; {which} has "
              f"shape {list(shape)} (one window): use the default objective")

    phy2log, current_mapping = None, pb.CURRENT_MAPPING_UNSPECIFIED
    if request.HasField("current_phy2log"):
        slots = _mapping_shape(request.current_phy2log, "current_phy2log", layers, limits)
        if slots != p and which == "slot_loads":
            _fail("current_phy2log.shape", f"{slots} slots, num_replicas is {p}")
        if slots == p:  # another slot count (elastic EP): plan from scratch
            phy2log = _decode(request.current_phy2log, "current_phy2log").astype(np.int64)
            current_mapping = pb.CURRENT_MAPPING_USED
        else:
            current_mapping = pb.CURRENT_MAPPING_IGNORED

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
    k, n = topo.num_groups or 1, topo.num_nodes
    if e % k and n > 0 and (policy == "global" or (policy in ("auto", "deepseek") and k % n)):
        k = 1  # a global plan ignores groups; the reference does not check them there
    _check_divisions(p, k, n, topo.num_gpus, e, policy, violations)
    _raise_any(violations)
    packed = not getattr(request, which).data
    padded = _padded_log2phy(log2phy_format, layers, e, p, shape[0] if len(shape) == 3 else 1,
                             phy2log is not None, packed, 4 if mapping_dtype == "int32" else 8,
                             limits)

    loads = _decode(getattr(request, which), which)
    _check_loads(loads, which)
    empty_slots = 0
    if phy2log is not None:
        _check_mapping(phy2log, e, "current_phy2log", empty_ok=which == "expert_loads")
        empty_slots = int((phy2log == EMPTY_SLOT).sum())
        if empty_slots:
            phy2log = _fill_empty_slots(phy2log, loads)
            current_mapping = (pb.CURRENT_MAPPING_IGNORED if phy2log is None
                               else pb.CURRENT_MAPPING_EMPTY_SLOTS_FILLED)
    if which == "slot_loads":
        loads = _slot_to_expert_loads(loads, phy2log, e)

    m, h = request.migration, request.history
    return RebalanceArgs(
        weight=loads, num_replicas=p, num_groups=k, num_nodes=topo.num_nodes,
        num_gpus=topo.num_gpus, policy=policy, current_phy2log=phy2log,
        from_scratch=m.from_scratch, max_moved_slots_per_layer=m.max_moved_slots_per_layer,
        max_moved_slots_total=m.max_moved_slots_total,
        min_balancedness_gain=m.min_balancedness_gain, objective=OBJECTIVES[h.objective],
        half_life=h.half_life, robust_k=h.robust_k, packed=packed,
        mapping_dtype=mapping_dtype, log2phy=padded, current_mapping=current_mapping,
        current_empty_slots=empty_slots, time_budget_ms=request.time_budget_ms,
        transfer_table=transfer_format == "table")


def parse_evaluate(request: pb.EvaluateRequest, limits: Limits) -> EvaluateArgs:
    """Validates an EvaluateRequest; raises InvalidRequest naming the offending fields."""
    topo = request.topology
    violations = []
    _positive(topo, ("num_nodes", "num_gpus"), violations)
    if topo.num_groups < 0:
        violations.append(("topology.num_groups", "must be non-negative (0: no groups, as 1)"))
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
    _check_divisions(p, topo.num_groups or 1, topo.num_nodes, topo.num_gpus, e, policy,
                     violations)
    _raise_any(violations)

    loads = _decode(request.expert_loads, "expert_loads")
    _check_loads(loads, "expert_loads")
    phy2log = _decode(request.phy2log, "phy2log").astype(np.int64)
    _check_mapping(phy2log, e, "phy2log")
    return EvaluateArgs(weight=loads, phy2log=phy2log, num_groups=topo.num_groups or 1,
                        num_nodes=topo.num_nodes, num_gpus=topo.num_gpus, policy=policy)
