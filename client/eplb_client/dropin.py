"""rebalance_experts: deepseek-ai/EPLB's function, computed by the service."""

from __future__ import annotations

import threading

import numpy as np

from ._channel import default_target
from .tensors import is_torch

_clients: dict = {}
_lock = threading.Lock()


def _client_for(target):
    from .client import EplbClient

    key = target if isinstance(target, str) else ",".join(target)
    with _lock:
        if key not in _clients:
            _clients[key] = EplbClient(target)
        return _clients[key]


def rebalance_experts(weight, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int,
                      *, target=None, policy: str = "auto", current_phy2log=None, client=None,
                      timeout: float | None = None):
    """Drop-in for deepseek-ai/EPLB's `rebalance_experts`: returns (phy2log [L, P],
    log2phy [L, E, W] padded with -1, logcnt [L, E]) as int64 torch tensors on `weight`'s device
    when `weight` is a torch tensor, else as numpy arrays.

    The plan comes from the service at `target` (default: $EPLB_TARGET, else localhost:50051;
    a cached client per target) or from `client`. `policy="deepseek"` reproduces the reference
    bit for bit; "auto" (the default) runs the service's refined planner. Raises EplbError.
    """
    c = client if client is not None else _client_for(target or default_target())
    r = c.rebalance(weight, num_replicas=num_replicas, num_groups=num_groups,
                    num_nodes=num_nodes, num_gpus=num_gpus, policy=policy,
                    current_phy2log=current_phy2log, timeout=timeout)
    arrays = (r.phy2log, r.log2phy, r.logcnt)
    if is_torch(weight):
        import torch

        return tuple(torch.from_numpy(np.array(a, dtype=np.int64)).to(weight.device)
                     for a in arrays)
    return tuple(np.array(a, dtype=np.int64) for a in arrays)


def close_cached_clients() -> None:
    """Closes the clients that rebalance_experts cached (e.g. before forking)."""
    with _lock:
        for c in _clients.values():
            c.close()
        _clients.clear()
