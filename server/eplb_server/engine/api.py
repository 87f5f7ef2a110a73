"""Public engine API: `plan`, `rebalance_experts` and `evaluate` over torch tensors or numpy
arrays (results come back as the loads came)."""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np

from .arrays import as_numpy, like, record_like
from .budget import Budget
from .gpu.device import graph_planner, planning_device
from .history import history_planner
from .loads import checked_copy
from .mapping import build_log2phy, expert_counts, ranks_and_counts
from .reference import reference_plan
from .migration import MigrationOptions, keep_current, migration_summary, plan_keeping_nodes
from .refined import refined_plan
from .scoring import Score, score
from .threads import engine_threads

if TYPE_CHECKING:
    import torch

    Tensor = Union[torch.Tensor, np.ndarray]

NODE_TOLERANCE = 0.01  # issue 5: slack on the heaviest node for keeping the current assignment
# A layer's total load (summed over windows too) must fit in float32, in which the reference
# computes: beyond it pieces and sums overflow to inf and the kernels' invariants break.
MAX_LAYER_LOAD = float(np.finfo(np.float32).max)
POLICIES = ("auto", "hierarchical", "global", "deepseek")
# device="auto" plans on the GPU from this many slots per GPU: below, the Triton planner lacks
# the CPU engine's count moves and differencing start, and its peaks trail (docs/gpu.md).
GPU_AUTO_MIN_SLOTS_PER_GPU = 9  # where agreement was checked (real EP32 layers)
# Numba's threading layers must not be entered from two threads at once.
_ENGINE_LOCK = threading.Lock()


@dataclass(frozen=True)
class Plan:
    """A placement in deepseek-ai/EPLB's conventions: tensors on the weight's device where the
    weight was a torch tensor, else numpy arrays."""

    phy2log: Tensor  # [L, P] int64
    log2phy: Tensor | None  # [L, E, W] int64, -1 padded, W = max logcnt (None: not asked)
    logcnt: Tensor  # [L, E] int64
    policy: str  # the policy that ran: "hierarchical", "global" or "deepseek"
    objective: str = "sum"  # what a load history was reduced to
    migration: object | None = None
    # [L, P] int64: each slot's rank among its expert's replicas, the compact log2phy:
    # log2phy[l, phy2log[l, p], replica_rank[l, p]] = p.
    replica_rank: Tensor | None = None
    backtest: object | None = None  # engine.backtest.Backtest, for the adaptive objective
    # False when time_budget_ms ran out before every layer was refined (those layers keep their
    # start packing, never worse than the reference's); True otherwise.
    refinement_finished: bool = True
    device: str = "cpu"  # where the plan was computed: "cpu" or a CUDA device, e.g. "cuda:0"


def check_topology(num_experts: int, num_replicas: int, num_groups: int, num_nodes: int,
                   num_gpus: int) -> None:
    """Raises ValueError naming the first argument that breaks the conventions.

    num_gpus % num_nodes is checked by `resolve_policy`, only where nodes matter (hierarchical,
    and deepseek when groups divide over nodes): the reference plans globally (ignoring nodes)
    when groups do not divide over nodes.
    """
    for name, value in (("num_replicas", num_replicas), ("num_groups", num_groups),
                        ("num_nodes", num_nodes), ("num_gpus", num_gpus)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value}")
    if num_experts < 1:
        raise ValueError("weight must have at least one expert")
    if num_replicas % num_gpus:
        raise ValueError(f"num_replicas ({num_replicas}) must be a multiple of num_gpus ({num_gpus})")
    if num_experts % num_groups:
        raise ValueError(f"num_groups ({num_groups}) must divide the {num_experts} experts")
    if num_replicas < num_experts:
        raise ValueError(f"num_replicas ({num_replicas}) must be at least the {num_experts} experts")


def resolve_policy(policy: str, num_groups: int, num_nodes: int, num_gpus: int | None = None) -> str:
    """'auto' becomes 'hierarchical' when groups divide over nodes, else 'global'."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    if policy == "auto":
        policy = "hierarchical" if num_groups % num_nodes == 0 else "global"
    if policy == "hierarchical" and num_groups % num_nodes:
        raise ValueError(f"hierarchical policy needs num_groups ({num_groups}) to be a multiple "
                         f"of num_nodes ({num_nodes})")
    if policy in ("hierarchical", "deepseek") and num_groups % num_nodes == 0 \
            and num_gpus is not None and num_gpus % num_nodes:
        raise ValueError(f"num_gpus ({num_gpus}) must be a multiple of num_nodes ({num_nodes})")
    return policy


def _loads(weight) -> np.ndarray:
    array = np.asarray(as_numpy(weight), dtype=np.float64)
    if array.ndim not in (2, 3):
        raise ValueError(f"weight must be [L, E] or [T, L, E], got shape {list(array.shape)}")
    copy, non_negative, total = checked_copy(array if array.ndim == 3 else array[None])
    if not non_negative:  # false for NaN and -inf too
        raise ValueError("weight must be finite (no NaN or inf)" if not np.isfinite(array).all()
                         else "weight must be non-negative")
    if not total <= MAX_LAYER_LOAD:  # inf where a load is +inf
        raise ValueError("weight must be finite (no NaN or inf)" if np.isinf(array).any() else
                         f"weight is too large: a layer's total load is {total:.4g}, at most "
                         f"{MAX_LAYER_LOAD:.4g} is planned (float32, as the reference computes)")
    return copy if array.ndim == 3 else copy[0]


def _constraint(policy: str, num_groups: int, num_nodes: int) -> tuple[int, int]:
    return (num_groups, num_nodes) if policy == "hierarchical" else (1, 1)


def _plan_arrays(load: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int,
                 num_gpus: int, policy: str, current: np.ndarray | None = None,
                 budget: Budget | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """current [L, P]: a hierarchical plan keeps its group-to-node assignment where that costs
    no balance (issue 5), so that migration need not move whole groups between nodes."""
    if policy == "deepseek":
        return reference_plan(load, num_replicas, num_groups, num_nodes, num_gpus)
    groups, nodes = _constraint(policy, num_groups, num_nodes)
    if current is not None and nodes > 1:
        phy2log = plan_keeping_nodes(load, num_replicas, groups, nodes, num_gpus, current,
                                     NODE_TOLERANCE, budget=budget)
    else:
        phy2log = refined_plan(load, num_replicas, groups, nodes, num_gpus, budget=budget)
    num_experts = load.shape[1]
    return (phy2log, *ranks_and_counts(phy2log, num_experts))


def _gpu_plan_arrays(load: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int,
                     num_gpus: int, policy: str, current: np.ndarray | None = None, *,
                     gpu) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`_plan_arrays` by the GPU planner (engine.gpu), one CUDA graph per shape; the reference
    and keeping a hierarchical mapping's nodes stay on the CPU."""
    groups, nodes = _constraint(policy, num_groups, num_nodes)
    if not _gpu_plans(policy, current is not None, nodes):
        return _plan_arrays(load, num_replicas, num_groups, num_nodes, num_gpus, policy, current)
    import torch

    weight = torch.from_numpy(np.ascontiguousarray(load)).to(gpu)
    outputs = graph_planner()(weight, num_replicas, groups, nodes, num_gpus)
    return tuple(t.cpu().numpy() for t in outputs)


def _gpu_plans(policy: str, keep: bool, nodes: int) -> bool:
    return policy != "deepseek" and not (keep and nodes > 1)


def _current_mapping(current_phy2log, num_layers: int, num_replicas: int,
                     num_experts: int) -> np.ndarray:
    mapping = as_numpy(current_phy2log)
    if mapping.shape != (num_layers, num_replicas):
        raise ValueError(f"current_phy2log must be [{num_layers}, {num_replicas}], "
                         f"got shape {list(mapping.shape)}")
    mapping = np.ascontiguousarray(mapping, dtype=np.int64)
    if mapping.size and (mapping.min() < 0 or mapping.max() >= num_experts):
        raise ValueError(f"current_phy2log entries must lie in [0, {num_experts})")
    if (expert_counts(mapping, num_experts) == 0).any():
        raise ValueError("current_phy2log leaves an expert without a slot")
    return mapping


def plan(weight, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int, *,
         policy: str = "auto", current_phy2log=None, from_scratch: bool = False,
         max_moved_slots_per_layer: int = 0, max_moved_slots_total: int = 0,
         min_balancedness_gain: float = 0.0, objective: str = "default",
         half_life: float = 0.0, robust_k: float = 0.0, with_log2phy: bool = True,
         time_budget_ms: float = 0.0, device: str = "auto") -> Plan:
    """Plans a placement. weight: [L, E] (or a history [T, L, E], reduced by `objective`).

    device: "cpu" (the numba engine), "cuda" (the Triton planner, engine.gpu) or "auto" (cuda
    when weight is a CUDA tensor, triton is installed and a GPU holds at least
    GPU_AUTO_MIN_SLOTS_PER_GPU slots); Plan.device says which ran.

    With current_phy2log [L, P], keeps what can stay of it (unless from_scratch).
    with_log2phy=False leaves Plan.log2phy None: the padded tensor can take L * E * (P - E + 1)
    entries, and Plan.replica_rank (with phy2log) determines it.
    time_budget_ms > 0: refinement stops that long after the call began; layers not refined by
    then keep their start packing (the reference's or better) and Plan.refinement_finished is
    False. 0: no limit (every layer refined, the default plan). The start packings are always
    made, so a tiny budget still costs about the reference's time.
    """
    budget = Budget(time_budget_ms)
    load = _loads(weight)
    num_layers, num_experts = load.shape[-2:]
    num_groups = num_groups or 1  # None or 0: a model without expert groups (SGLang passes None)
    check_topology(num_experts, num_replicas, num_groups, num_nodes, num_gpus)
    work = load.size // num_experts * num_replicas  # layer-slots, times windows
    resolved = resolve_policy(policy, num_groups, num_nodes, num_gpus)
    current = None if current_phy2log is None else _current_mapping(
        current_phy2log, num_layers, num_replicas, num_experts)
    keep = current is not None and not from_scratch
    gpu = planning_device(device, weight)
    if device == "auto" and num_replicas // num_gpus < GPU_AUTO_MIN_SLOTS_PER_GPU:
        gpu = None
    if gpu is not None and _gpu_plans(resolved, keep, _constraint(resolved, num_groups,
                                                                  num_nodes)[1]):
        planner, planned_on = functools.partial(_gpu_plan_arrays, gpu=gpu), str(gpu)
    else:  # the time budget bounds the CPU engine's refinement
        planner, planned_on = functools.partial(_plan_arrays, budget=budget), "cpu"
    if keep:
        planner = functools.partial(planner, current=current)
    objective_used, backtest, migration = "sum", None, None
    with _ENGINE_LOCK, engine_threads(work):
        if load.ndim == 3:  # issue 6: the objective picks the load and, for some, the planner
            load, objective_used, planner, backtest = history_planner(
                load, objective, half_life, robust_k, planner, num_replicas, num_gpus,
                *_constraint(resolved, num_groups, num_nodes))
        phy2log, rank, logcnt = planner(load, num_replicas, num_groups, num_nodes,
                                num_gpus, resolved)
        if keep:
            options = MigrationOptions(max_moved_slots_per_layer, max_moved_slots_total,
                                       min_balancedness_gain)
            hierarchical = resolved == "hierarchical" or (
                resolved == "deepseek" and num_groups % num_nodes == 0)
            phy2log, migration = keep_current(phy2log, current, load, num_nodes, num_gpus,
                                              options, num_groups=num_groups,
                                              hierarchical=hierarchical)
            rank, logcnt = ranks_and_counts(phy2log, num_experts)
        elif current is not None:  # from scratch: still say what moving to the plan costs
            migration = migration_summary(current, phy2log, num_nodes, num_gpus, 0, load)
        log2phy = build_log2phy(phy2log, rank, logcnt) if with_log2phy else None  # parallel
    to = lambda a: like(np.asarray(a, dtype=np.int64), weight)  # noqa: E731
    return Plan(phy2log=to(phy2log), log2phy=None if log2phy is None else to(log2phy),
                logcnt=to(logcnt), policy=resolved, objective=objective_used,
                migration=record_like(migration, weight), replica_rank=to(rank),
                backtest=backtest,
                refinement_finished=budget.finished, device=planned_on)


def rebalance_experts(weight, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int,
                      *, policy: str = "auto", **options):
    """deepseek-ai/EPLB's entry point: -> (phy2log [L, P], log2phy [L, E, W], logcnt [L, E])."""
    result = plan(weight, num_replicas, num_groups, num_nodes, num_gpus, policy=policy, **options)
    return result.phy2log, result.log2phy, result.logcnt


def evaluate(weight, phy2log, num_groups: int, num_nodes: int, num_gpus: int, *,
             policy: str = "auto", lower_bound=None) -> Score:
    """Scores phy2log [L, P] on weight [L, E] (or [T, L, E]); the bound follows `policy`.

    lower_bound: [L], the layer_lower_bound of an earlier Score of the same loads, topology and
    policy, to skip recomputing it.
    """
    load = _loads(weight)
    mapping = np.ascontiguousarray(as_numpy(phy2log), dtype=np.int64)
    num_layers, num_experts = load.shape[-2:]
    if mapping.ndim != 2 or mapping.shape[0] != num_layers:
        raise ValueError(f"phy2log must be [{num_layers}, P], got shape {list(mapping.shape)}")
    check_topology(num_experts, mapping.shape[1], num_groups, num_nodes, num_gpus)
    if mapping.size and (mapping.min() < 0 or mapping.max() >= num_experts):
        raise ValueError(f"phy2log entries must lie in [0, {num_experts})")
    hierarchical = resolve_policy(policy, num_groups, num_nodes, num_gpus) == "hierarchical"
    bound = None if lower_bound is None else np.asarray(lower_bound, dtype=np.float64)
    if bound is not None and bound.shape != (num_layers,):
        raise ValueError(f"lower_bound must be [{num_layers}], got shape {list(bound.shape)}")
    with _ENGINE_LOCK, engine_threads(load.size // num_experts * mapping.shape[1]):
        result = score(load, mapping, num_groups, num_nodes, num_gpus, hierarchical, bound)
    return record_like(result, weight)
