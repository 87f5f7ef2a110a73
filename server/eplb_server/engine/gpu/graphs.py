"""CUDA graphs of the GPU plan, one per shape and topology, captured at first use (warm-up) and
replayed after: a plan is then one graph launch and two copies."""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch

from .planner import plan_tensors

MAX_GRAPHS = 64  # captured shapes kept; each holds its own memory pool


class GraphPlanner:
    """plan_tensors on CUDA, through a graph per (shape, dtype, device, topology)."""

    def __init__(self, max_graphs: int = MAX_GRAPHS):
        self.max_graphs = max_graphs
        self._graphs: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, weight: torch.Tensor, num_replicas: int, num_groups: int,
                 num_nodes: int, num_gpus: int):
        """weight: [L, E] on a CUDA device -> (phy2log, replica_rank, logcnt), as plan_tensors."""
        key = (tuple(weight.shape), weight.dtype, weight.device, num_replicas, num_groups,
               num_nodes, num_gpus)
        with self._lock:
            entry = self._graphs.get(key)
            if entry is None:
                entry = self._capture(weight, num_replicas, num_groups, num_nodes, num_gpus)
                self._graphs[key] = entry
                while len(self._graphs) > self.max_graphs:
                    self._graphs.popitem(last=False)
            self._graphs.move_to_end(key)
            graph, static, outputs = entry
            static.copy_(weight)
            graph.replay()
            return tuple(out.clone() for out in outputs)

    def __len__(self):
        return len(self._graphs)

    @staticmethod
    def _capture(weight, *topology):
        static = weight.clone()
        side = torch.cuda.Stream(device=weight.device)
        side.wait_stream(torch.cuda.current_stream(weight.device))
        with torch.cuda.stream(side):  # compiles the kernels; capture must not
            plan_tensors(static, *topology)
        torch.cuda.current_stream(weight.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            outputs = plan_tensors(static, *topology)
        return graph, static, outputs
