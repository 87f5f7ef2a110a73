"""Bounded admission of engine jobs, what both engine hosts share, and the in-process engine
thread (tests, `--isolation thread`): the engine serves one job at a time."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time


class Overloaded(Exception):
    """More jobs are admitted (running or queued) than the configured bound."""


class DeadlineExpired(Exception):
    """A queued job whose caller's deadline passed before it could start."""


class Admission:
    """At most `max_pending` jobs running or queued on an executor."""

    def __init__(self, max_pending: int):
        self.max_pending = max_pending
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Jobs running or queued now."""
        return self._pending

    def _release(self, _future):
        with self._lock:
            self._pending -= 1

    async def run(self, executor, fn, *args):
        """Runs fn(*args) on the executor; raises Overloaded at once when the queue is full.
        Cancelling the caller drops a job that has not started."""
        with self._lock:
            if self._pending >= self.max_pending:
                raise Overloaded(f"{self.max_pending} requests are already running or queued")
            self._pending += 1
        try:
            future = executor.submit(fn, *args)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)


class EngineHost:
    """What both engine hosts share: one engine thread, bounded admission, and the age of the
    job running now. Subclasses serve a job in `_serve(method, data)`."""

    def __init__(self, max_pending: int):
        self.admission = Admission(max_pending)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="eplb-engine")
        self._job_started = None

    @property
    def pending(self) -> int:
        return self.admission.pending

    def job_seconds(self) -> float:
        """How long the job running now has run; 0 when idle."""
        started = self._job_started
        return 0.0 if started is None else time.monotonic() - started

    async def run(self, method: str, data: bytes, deadline=None):
        """-> outcome.Outcome. `deadline`: a time.monotonic() instant, or a function giving one
        when the job starts. Raises Overloaded at once when the queue is full, DeadlineExpired
        when the deadline passed while the job waited, and whatever `_serve` raises."""
        return await self.admission.run(self._executor, self._job, method, data, deadline,
                                        time.monotonic())

    def _job(self, method, data, deadline, submitted):
        """The outcome's timings gain "queue": seconds from run() until the engine thread
        took the job (behind other jobs, or a worker restart)."""
        self._before_job()
        if callable(deadline):
            deadline = deadline()
        started = time.monotonic()
        if deadline is not None and started >= deadline:
            raise DeadlineExpired("the deadline passed while the request was queued")
        self._job_started = started
        try:
            outcome = self._serve(method, data)
        finally:
            self._job_started = None
        outcome.timings["queue"] = started - submitted
        return outcome

    def _before_job(self):
        """Runs on the engine thread before each job (ProcessEngine restarts its worker)."""

    def _serve(self, method, data):
        raise NotImplementedError


class ThreadEngine(EngineHost):
    """Runs servicer.execute on one thread of this process (no crash or hang containment)."""

    def __init__(self, servicer, max_pending: int, warm_up=None):
        from .config import torch_version

        super().__init__(max_pending)
        self.servicer = servicer
        self.ready_info = dict(device=str(servicer.device), torch_version=torch_version())
        self.warm_up = warm_up

    async def start(self):
        if self.warm_up is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self.warm_up)

    def _serve(self, method, data):
        return self.servicer.execute(method, data)

    def shutdown(self):
        """Drops queued jobs; a running job finishes in its thread."""
        self._executor.shutdown(wait=False, cancel_futures=True)
