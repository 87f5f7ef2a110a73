"""Layer-parallel kernels without numba's prange (a prange kernel compiles its call tree 3x)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading

import numba

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_count = threading.local()  # threads `run` uses in this thread: a plan's own setting


def thread_count() -> int:
    return getattr(_count, "value", 1)


@contextlib.contextmanager
def threads(count: int):
    """`run` uses `count` threads (this one included) within the block, in this thread."""
    before = thread_count()
    _count.value = count
    try:
        yield
    finally:
        _count.value = before


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(1, numba.config.NUMBA_NUM_THREADS - 1),
                thread_name_prefix="eplb-rows")
        return _pool


def run(kernel, num_rows: int, *args) -> None:
    """kernel(*args, start, stop) over row ranges that cover [0, num_rows) once each, on
    thread_count() threads (this one included); the kernel must release the GIL (nogil) and
    write each row's results only."""
    threads = min(thread_count(), num_rows)
    if threads <= 1:
        kernel(*args, 0, num_rows)
        return
    bounds = [num_rows * k // threads for k in range(threads + 1)]
    pool = _executor()
    others = [pool.submit(kernel, *args, bounds[k], bounds[k + 1]) for k in range(1, threads)]
    try:
        kernel(*args, bounds[0], bounds[1])
    finally:
        for future in others:
            future.result()
