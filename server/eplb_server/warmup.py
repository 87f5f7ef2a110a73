"""Start-up warm-up: synthetic requests of the configured shapes, once through the whole path."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

import numpy as np
from eplb_client.tensors import to_tensor
from eplb_client.v1 import placement_pb2 as pb

from . import validation

log = logging.getLogger("eplb_server")
_SPEC = re.compile(r"^(\d+)x(\d+):(\d+):(\d+):(\d+):(\d+)$")


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


def requests(shape: Shape, seed: int = 0):
    """A from-scratch RebalanceRequest per policy, and the loads used (lognormal popularity)."""
    rng = np.random.default_rng(seed)
    loads = rng.lognormal(0.0, 1.0, size=(shape.layers, shape.experts)) * 1000
    topology = pb.Topology(num_replicas=shape.replicas, num_groups=shape.groups,
                           num_nodes=shape.nodes, num_gpus=shape.gpus)
    policies = [pb.POLICY_AUTO, pb.POLICY_GLOBAL, pb.POLICY_DEEPSEEK]
    if shape.groups % shape.nodes == 0:
        policies.append(pb.POLICY_HIERARCHICAL)
    return [pb.RebalanceRequest(model="warm-up", topology=topology, policy=policy,
                                expert_loads=to_tensor(loads)) for policy in policies]


def warm_up(servicer, shapes, limits: validation.Limits):
    """Runs each shape's requests (from scratch, then from the plan just made) and an Evaluate."""
    for shape in shapes:
        start = time.perf_counter()
        for request in requests(shape):
            response = servicer.rebalance(validation.parse_rebalance(request, limits))
            request.current_phy2log.CopyFrom(response.phy2log)
            servicer.rebalance(validation.parse_rebalance(request, limits))
        evaluate = pb.EvaluateRequest(topology=request.topology, expert_loads=request.expert_loads,
                                      phy2log=response.phy2log)
        servicer.evaluate(validation.parse_evaluate(evaluate, limits))
        log.info("warmed up %s in %.2f s", shape, time.perf_counter() - start)
