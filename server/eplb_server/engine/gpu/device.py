"""Which device plans: `device` of engine.plan ("auto", "cpu" or "cuda") and the weight's."""

from __future__ import annotations

import functools
import importlib.util

from ..arrays import is_tensor

DEVICES = ("auto", "cpu", "cuda")


@functools.lru_cache(maxsize=1)
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def planning_device(device: str, weight):
    """The CUDA device the GPU planner runs on, or None for the CPU engine.

    auto: the weight's CUDA device when it is on one and triton is installed; cuda: the
    weight's CUDA device, else the current one (ValueError when there is none or no triton).
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    on_cuda = is_tensor(weight) and weight.device.type == "cuda"
    if device == "cpu" or (device == "auto" and not (on_cuda and triton_installed())):
        return None
    import torch

    if not torch.cuda.is_available():
        raise ValueError("device 'cuda': torch sees no CUDA device")
    if not triton_installed():
        raise ValueError("device 'cuda': the GPU planner needs triton (pip install "
                         "'eplb-service[gpu]')")
    return weight.device if on_cuda else torch.device("cuda", torch.cuda.current_device())


@functools.lru_cache(maxsize=1)
def graph_planner():
    """The process's GraphPlanner (imports triton: only called for a plan on the GPU)."""
    from .graphs import GraphPlanner

    return GraphPlanner()
