"""One engine thread with bounded admission: the GPU (or CPU engine) serves one job at a time."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time


class Overloaded(Exception):
    """More jobs are admitted (running or queued) than the configured bound."""


class DeadlineExpired(Exception):
    """A queued job whose caller's deadline passed before it could start."""


class EngineWorker:
    """Runs engine jobs on a single thread; at most `max_pending` jobs are running or queued."""

    def __init__(self, max_pending: int):
        self.max_pending = max_pending
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="eplb-engine")
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Jobs running or queued now."""
        return self._pending

    def _release(self, _future):
        with self._lock:
            self._pending -= 1

    async def run(self, fn, *args, deadline: float | None = None):
        """Runs fn(*args) on the engine thread; `deadline` is a time.monotonic() instant.

        Raises Overloaded at once when the queue is full, DeadlineExpired when the deadline
        passed while the job waited. Cancelling the caller drops a job that has not started.
        """
        with self._lock:
            if self._pending >= self.max_pending:
                raise Overloaded(f"{self.max_pending} requests are already running or queued")
            self._pending += 1
        try:
            future = self._executor.submit(_run_before, deadline, fn, *args)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def shutdown(self):
        """Drops queued jobs; a running job finishes in its thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def _run_before(deadline, fn, *args):
    if deadline is not None and time.monotonic() >= deadline:
        raise DeadlineExpired("the deadline passed while the request was queued")
    return fn(*args)
