"""How many threads a plan may use, chosen per request size, and leaving the host's settings as
they were: numba's OpenMP layer shares the process's libgomp with torch, so launching it or
changing its thread count changes torch's."""

from __future__ import annotations

import contextlib
import sys

import numba

# Layer-parallel kernels (relabelling, log2phy, window refinement) pay for a thread pool only on
# large requests; below this many layer-slots (x windows) one thread is faster, and on a node
# whose cores a serving engine keeps busy any extra thread waits for a core (measured: EP32
# plans 4-40x slower with two threads beside busy processes).
PARALLEL_MIN_WORK = 1 << 18
_max_threads = 1


def set_max_threads(threads: int) -> None:
    """The most threads one plan uses (default 1); a server sets it from --threads."""
    global _max_threads
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    _max_threads = min(int(threads), numba.config.NUMBA_NUM_THREADS)


def max_threads() -> int:
    return _max_threads


def threads_for(work: int) -> int:
    """Threads for a request of `work` layer-slots (times windows for a history)."""
    return _max_threads if work >= PARALLEL_MIN_WORK else 1


@contextlib.contextmanager
def engine_threads(work: int):
    """Runs the block with threads_for(work) numba threads; restores numba's and torch's counts
    (torch's only where the process has imported it)."""
    torch = sys.modules.get("torch")
    torch_threads = torch.get_num_threads() if torch else None
    numba_threads = numba.get_num_threads()
    numba.set_num_threads(threads_for(work))
    try:
        yield
    finally:
        numba.set_num_threads(numba_threads)
        if torch and torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
