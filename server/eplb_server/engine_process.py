"""The engine in a supervised worker process: a crash or a hang costs the request that caused it.

Jobs go one at a time over a socket pair as pickled tuples: the supervisor sends (method,
request bytes), the worker answers an outcome.Outcome. During warm-up the worker sends
("progress", text) and finally ("ready", seconds), or ("failed", traceback). A worker that dies
or overruns the per-job time limit is killed and started again on its warm numba cache; the
jobs queued behind it wait for the new worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection

from .worker import EngineHost

log = logging.getLogger("eplb_server")


class EngineFailed(Exception):
    """The worker process died, overran its time limit, or failed to warm up."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason  # "crash", "timeout" or "warm-up"


class Stopped(Exception):
    """The supervisor is shutting down."""


class ProcessEngine(EngineHost):
    """Runs service.PlacementServicer.execute in a worker process, one job at a time.

    `settings` (JSON-able) reaches engine_main: engine_module, device, limits, warmup_shapes,
    threads. `on_state(up)` is called from the engine thread when the worker becomes ready or
    goes away (the server maps it to health). `worker`: one already started by spawn_worker
    with the same settings (the CLI starts it first thing, so that its imports overlap ours).
    """

    def __init__(self, settings: dict, max_pending: int, time_limit: float, metrics=None,
                 on_state=None, worker=None):
        super().__init__(max_pending)
        self._first_worker = worker  # (process, connection) from spawn_worker, started early
        self.settings = settings
        self.time_limit = time_limit
        self.metrics = metrics
        self.on_state = on_state or (lambda up: None)
        self.ready_info = {}  # the worker's: seconds (of warm-up), device, torch_version
        self._proc = self._conn = None
        self._stopping = threading.Event()

    async def start(self):
        """Starts the worker and waits for its warm-up; raises EngineFailed if it fails."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._launch)

    def shutdown(self):
        """Ends the worker now (a running job fails with Stopped) and drops queued jobs."""
        self._stopping.set()
        if self._first_worker is not None:  # started early, never launched
            self._proc, self._conn = self._first_worker
            self._first_worker = None
        self._kill()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # On the engine thread.

    def _before_job(self):
        self._ensure_running()

    def _serve(self, method, data):
        """Raises EngineFailed (after killing the worker) or Stopped besides what run() does.
        The outcome's timings gain "handoff": the round trip to the worker process less its
        stages (pickling, the socket both ways, waking the worker)."""
        conn = self._conn
        start = time.perf_counter()
        try:
            conn.send((method, data))
            if not conn.poll(self.time_limit):
                self._fail("timeout", f"the engine ran past its {self.time_limit:g} s limit")
            outcome = conn.recv()
        except (EOFError, OSError) as e:
            if self._stopping.is_set():
                raise Stopped("the server is shutting down") from e
            self._fail("crash", f"the engine process ended ({self._exit_description()})")
        spent = time.perf_counter() - start
        outcome.timings["handoff"] = max(spent - sum(outcome.timings.values()), 0.0)
        return outcome

    def _fail(self, reason, message):
        log.error("%s; restarting it", message)
        self._kill()
        if self.metrics is not None:
            self.metrics.engine_restarts.labels(reason).inc()
        self._executor.submit(self._ensure_running)  # come back even if no job follows
        raise EngineFailed(reason, message)

    def _ensure_running(self):
        while self._conn is None:
            if self._stopping.is_set():
                raise Stopped("the server is shutting down")
            try:
                self._launch()
            except EngineFailed as e:
                log.error("engine restart failed: %s; trying again in 5 s", e)
                if self._stopping.wait(5):
                    raise Stopped("the server is shutting down") from e

    def _launch(self):
        proc, conn = self._first_worker or spawn_worker(self.settings)
        self._first_worker = None
        self._proc = proc
        try:
            self.ready_info = self._await_ready(conn, proc)
        except BaseException:
            conn.close()
            self._kill()
            raise
        self._conn = conn
        self.on_state(True)

    def _await_ready(self, conn, proc) -> dict:
        while not self._stopping.is_set():
            if not conn.poll(0.1):
                continue
            try:
                kind, value = conn.recv()
            except (EOFError, OSError):
                raise EngineFailed("warm-up", "the engine process ended during warm-up "
                                   f"({self._exit_description()})") from None
            if kind == "progress":
                log.info("%s", value)
            elif kind == "ready":
                return value
            else:
                raise EngineFailed("warm-up", f"engine warm-up failed:\n{value}")
        raise Stopped("the server is shutting down")

    def _exit_description(self) -> str:
        proc = self._proc
        code = None if proc is None else proc.poll()
        if code is None and proc is not None:
            try:
                code = proc.wait(1)
            except subprocess.TimeoutExpired:
                return "no exit status"
        if code is not None and code < 0:
            return f"signal {signal.Signals(-code).name}"
        return f"exit status {code}"

    def _kill(self):
        proc, conn = self._proc, self._conn
        self._conn = None
        if proc is not None and proc.poll() is None:
            self.on_state(False)
            proc.kill()
            proc.wait()
        elif proc is not None:
            self.on_state(False)
        if conn is not None:
            conn.close()


def spawn_worker(settings: dict):
    """Starts an engine worker process (it warms up on its own): -> (Popen, Connection)."""
    parent, child = socket.socketpair()
    settings = dict(settings, log_level=log.getEffectiveLevel())
    command = [sys.executable, "-m", "eplb_server.engine_main", str(child.fileno()),
               json.dumps(settings)]
    proc = subprocess.Popen(command, pass_fds=[child.fileno()], stdin=subprocess.DEVNULL)
    child.close()
    return proc, Connection(parent.detach())


def default_settings(config) -> dict:
    """The worker's settings from the server's Config."""
    limits = config.limits
    return dict(engine_module=config.engine_module, device=config.device,
                limits={name: getattr(limits, name) for name in limits.__dataclass_fields__},
                warmup_shapes=list(config.warmup_shapes), threads=config.threads)
