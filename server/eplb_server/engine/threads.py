"""How many threads a plan may use, chosen per request size. The count lives in engine.rows,
not in numba's settings: numba.set_num_threads launches numba's OpenMP layer, which shares the
process's libgomp with torch (launching it changed a host's torch thread count), and no kernel
uses numba's own parallelism."""

from __future__ import annotations

import contextlib

import numba

from . import rows

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
    """Runs the block with threads_for(work) threads for the engine's layer-parallel kernels
    (engine.rows); numba's and torch's thread settings are not touched."""
    with rows.threads(threads_for(work)):
        yield
