"""Runs the GPU planner's Triton kernels under the interpreter on every case of gpu_cases and
saves the plans: `TRITON_INTERPRET=1 python -m tests.engine.gpu_interpret_child OUT.npz`.

A process of its own: triton reads TRITON_INTERPRET once, when it is imported."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _Ops(TorchDispatchMode):
    """Records the name of every aten op called inside it."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def skip_repatching() -> None:
    """triton 3.9's interpreter patches triton.language again at every call of a device function
    (its own tl.sum, tl.argmin... included: inspect.getmembers over the modules, about 2 ms a
    call, 40% of a plan's time here). A device call's patches are never undone, and a kernel's
    own are made at each launch, so after the first call of a module's functions the call goes
    straight to the function."""
    from triton.runtime.interpreter import InterpretedFunction

    patching = InterpretedFunction.__call__
    patched = set()

    def call(self, *args, **kwargs):
        if id(self.fn.__globals__) in patched:
            return self.rewrite()(*args, **kwargs)
        patched.add(id(self.fn.__globals__))
        return patching(self, *args, **kwargs)
    InterpretedFunction.__call__ = call


def main(path: str) -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1")
    skip_repatching()
    from eplb_server.engine.gpu.planner import plan_tensors
    from tests.engine.gpu_cases import CASES, case_loads, constraint

    out = {}
    for i, case in enumerate(CASES):
        _, _, _, replicas, _, _, gpus, _, _ = case
        weight = torch.from_numpy(case_loads(case))
        start = time.perf_counter()
        phy2log, rank, logcnt = plan_tensors(weight, replicas, *constraint(case), gpus)
        out[f"seconds_{i}"] = np.array(time.perf_counter() - start)
        out[f"phy2log_{i}"], out[f"rank_{i}"], out[f"logcnt_{i}"] = (
            t.numpy() for t in (phy2log, rank, logcnt))
        if case[7] == "hierarchical" or case[3] == 2 * case[6]:  # every torch op a plan calls
            with _Ops() as ops:
                again = plan_tensors(weight, replicas, *constraint(case), gpus)
            out[f"ops_{i}"] = np.array(sorted(ops.names))
            out[f"again_{i}"] = again[0].numpy()  # determinism: the same request, the same plan
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
