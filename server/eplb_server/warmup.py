"""Start-up warm-up: every kind of request an RPC can make, once through the whole path, so that
no caller pays a kernel compile (numba compiles per function and argument types, on first use)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
from eplb_client.tensors import to_tensor
from eplb_client.v1 import placement_pb2 as pb

_SPEC = re.compile(r"^(\d+)x(\d+):(\d+):(\d+):(\d+):(\d+)$")
_POLICIES = (pb.POLICY_AUTO, pb.POLICY_GLOBAL, pb.POLICY_DEEPSEEK, pb.POLICY_HIERARCHICAL)
_OBJECTIVES = (pb.OBJECTIVE_UNSPECIFIED, pb.OBJECTIVE_SUM, pb.OBJECTIVE_EXPECTED_PEAK,
               pb.OBJECTIVE_RECENCY, pb.OBJECTIVE_ROBUST)


@dataclass(frozen=True)
class Shape:
    """A warm-up shape, written LxE:P:G:N:K (layers x experts : replicas : gpus : nodes : groups).
    """

    layers: int
    experts: int
    replicas: int
    gpus: int
    nodes: int
    groups: int

    @classmethod
    def parse(cls, spec: str) -> "Shape":
        match = _SPEC.match(spec.strip())
        if not match:
            raise ValueError(f"warm-up shape {spec!r} is not LxE:P:G:N:K, e.g. 58x256:288:32:4:8")
        return cls(*map(int, match.groups()))

    def __str__(self):
        return (f"{self.layers}x{self.experts}:{self.replicas}:{self.gpus}:{self.nodes}:"
                f"{self.groups}")

    def topology(self, replicas=None, gpus=None) -> pb.Topology:
        return pb.Topology(num_replicas=replicas or self.replicas, num_groups=self.groups,
                           num_nodes=self.nodes, num_gpus=gpus or self.gpus)

    def few_slot_topologies(self):
        """The same experts at 1 and 2 slots per GPU where the shape allows (other kernels run
        there: count moves, pairing), as (replicas, gpus)."""
        out = []
        own = (self.gpus, self.replicas // self.gpus)
        for per_gpu in (2, 1):
            gpus = self.experts // per_gpu
            if gpus % self.nodes == 0 and (gpus, per_gpu) != own:
                out.append((self.experts, gpus))
        return out


def _loads(shape: Shape, rng, windows=None) -> np.ndarray:
    size = (shape.layers, shape.experts) if windows is None else (windows, shape.layers,
                                                                  shape.experts)
    return np.round(rng.lognormal(0.0, 1.0, size=size) * 1000)


def _plans(shape: Shape, rng):
    """(what, request, use the answer as the next request's current mapping) for one topology."""
    weight = to_tensor(_loads(shape, rng))
    history = to_tensor(_loads(shape, rng, windows=3))
    for policy in _POLICIES:
        yield (f"policy {pb.Policy.Name(policy)}", pb.RebalanceRequest(
            model="warm-up", topology=shape.topology(), policy=policy, expert_loads=weight))
    for groups in (shape.nodes, 3 * shape.nodes, shape.experts):  # other node-assignment kernels
        if groups != shape.groups and shape.experts % groups == 0 and groups % shape.nodes == 0:
            topology = shape.topology()
            topology.num_groups = groups
            yield (f"{groups} groups", pb.RebalanceRequest(
                model="warm-up", topology=topology, policy=pb.POLICY_HIERARCHICAL,
                expert_loads=weight))
    for objective in _OBJECTIVES:
        yield (f"history {pb.Objective.Name(objective)}", pb.RebalanceRequest(
            model="warm-up", topology=shape.topology(), expert_loads=history,
            history=pb.HistoryOptions(objective=objective, half_life=2.0, robust_k=1.0)))


def requests(shape: Shape, seed: int = 0):
    """Yields (what, method, build): build(base_request, base_response) makes the request, where
    base is the last from-scratch Rebalance (its plan serves as a current mapping)."""
    rng = np.random.default_rng(seed)
    topologies = [(shape.replicas, shape.gpus)] + shape.few_slot_topologies()
    for replicas, gpus in topologies:
        sub = Shape(shape.layers, shape.experts, replicas, gpus, shape.nodes, shape.groups)
        for what, request in _plans(sub, rng):
            if sub.groups % sub.nodes and request.policy == pb.POLICY_HIERARCHICAL:
                continue
            yield f"{sub} {what}", "Rebalance", lambda base, answer, r=request: r
            for kind, options in _FOLLOW_UPS:
                yield (f"{sub} {what}, {kind}", "Rebalance",
                       lambda base, answer, o=options: _keeping(base, answer, **o))
            yield f"{sub} {what}, evaluate", "Evaluate", _evaluate
        yield f"{sub} scrambled mapping", "Rebalance", _scrambled(rng)


def _packed_assignment(base, answer):
    """Too many group-to-node assignments to enumerate: the packed assignment's kernel."""
    many = Shape(1, 32, 32, 2, 2, 32)
    return pb.RebalanceRequest(model="warm-up", topology=many.topology(),
                               policy=pb.POLICY_HIERARCHICAL,
                               expert_loads=to_tensor(_loads(many, np.random.default_rng(0))))


_FOLLOW_UPS = (
    ("keeping the mapping", {}),
    ("movement budgets", dict(migration=pb.MigrationOptions(
        max_moved_slots_per_layer=2, max_moved_slots_total=3, min_balancedness_gain=0.001))),
    ("from scratch", dict(migration=pb.MigrationOptions(from_scratch=True))),
)


# The first shape's default-policy requests (plan, the follow-ups, evaluate): what most callers
# send. On a warm cache the worker serves after these and loads the rest between jobs.
COMMON_STEPS = 2 + len(_FOLLOW_UPS)


def _keeping(base, answer, migration=None):
    """The base request with the answer's plan as its current mapping."""
    follow = pb.RebalanceRequest()
    follow.CopyFrom(base)
    follow.current_phy2log.CopyFrom(answer.phy2log)
    if migration is not None:
        follow.migration.CopyFrom(migration)
    return follow


def _evaluate(base, answer):
    return pb.EvaluateRequest(topology=base.topology, expert_loads=base.expert_loads,
                              phy2log=answer.phy2log)


def _scrambled(rng):
    """A valid mapping unrelated to the loads: the repair kernels' worst case."""
    def build(base, answer):
        replicas = base.topology.num_replicas
        layers, experts = base.expert_loads.shape[-2:]
        rows = [np.concatenate([rng.permutation(experts),
                                rng.integers(0, experts, replicas - experts)])
                for _ in range(layers)]
        return pb.RebalanceRequest(model="warm-up", topology=base.topology,
                                   expert_loads=base.expert_loads,
                                   current_phy2log=to_tensor(np.array(rows, dtype=np.int32)))
    return build


def warm_up(servicer, shapes, helper: bool = True):
    """Serves every warm-up request of each shape; yields (step, total, what) as it goes.

    On an empty kernel cache with a spare core (and `helper`), a second process meanwhile
    serves the same requests planned by the reference policy: it compiles the kernels that do
    not pack (repair, relabelling, scores, backtests) into numba's cache while this one
    compiles the packing kernels, then loads the rest (measured: 154 -> 100 s). It ends with
    the warm-up. Raises RuntimeError if a warm-up request is not answered with a plan."""
    jobs = [job for shape in shapes for job in requests(shape)]
    if jobs:
        jobs.append(("32 groups packed onto 2 nodes", "Rebalance", _packed_assignment))
    ahead = _start_helper(shapes) if helper and jobs and _helps(servicer) else None
    try:
        yield from _serve(servicer, jobs)
    finally:
        if ahead is not None:
            ahead.kill()
            ahead.wait()


def _serve(servicer, jobs, policy=None):
    """Serves jobs in order (every Rebalance planned with `policy` where given)."""
    base = answer = None
    for step, (what, method, build) in enumerate(jobs, 1):
        request = build(base, answer)
        if policy is not None and method == "Rebalance":
            request.policy = policy
        outcome = servicer.execute(method, request.SerializeToString())
        if outcome.kind != "ok":
            raise RuntimeError(f"warm-up request {what!r} failed: {outcome.violations}")
        if method == "Rebalance" and not request.HasField("current_phy2log"):
            base, answer = request, pb.RebalanceResponse.FromString(outcome.data)
        yield step, len(jobs), what


def _helps(servicer) -> bool:
    """This package's engine, a spare core, and no kernel of the first plan's cached for this
    CPU (a cache built on another CPU model holds only that model's: numba's private index
    API, whose keys are (signature, the codegen's CPU tuple, ...); anything unexpected: no
    helper)."""
    if getattr(getattr(servicer, "engine", None), "__name__", "") != "eplb_server" \
            or len(os.sched_getaffinity(0)) < 2:
        return False
    try:
        from .engine import refined

        kernel = refined._solve_node_rows
        cpu = kernel.targetctx.codegen().magic_tuple()
        return not any(key[1] == cpu for key in kernel._cache._cache_file._load_index())
    except Exception:
        return False


def _start_helper(shapes):
    return subprocess.Popen(
        [sys.executable, "-m", "eplb_server.warmup", str(os.getpid()), *map(str, shapes)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _helper_main(parent: int, specs) -> None:
    """The helper process: dies with its parent (Linux), serves the reference-policy jobs."""
    from .engine_main import _die_with_parent

    _die_with_parent()
    if os.getppid() != parent:
        return
    import eplb_server

    from .limits import Limits
    from .service import PlacementServicer

    servicer = PlacementServicer(eplb_server, "cpu", Limits())
    shapes = [Shape.parse(spec) for spec in specs]
    for _ in _serve(servicer, [job for shape in shapes for job in requests(shape)],
                    policy=pb.POLICY_DEEPSEEK):
        pass


if __name__ == "__main__":
    _helper_main(int(sys.argv[1]), sys.argv[2:])
