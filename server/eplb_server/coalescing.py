"""Identical requests computed once: every EP rank of a vLLM or SGLang cluster asks for the same
placement at the same moment, with the same all-reduced loads."""

from __future__ import annotations

import asyncio
import collections
import time


class _Flight:
    """One computation in flight and the callers waiting for it."""

    def __init__(self, deadline):
        self.task = None
        self.waiters = 0
        self.deadline = deadline

    def wait_longer(self, deadline):
        """A new waiter: the job may start as late as the latest caller's deadline."""
        if self.deadline is not None:
            self.deadline = None if deadline is None else max(self.deadline, deadline)

    def latest_deadline(self):
        return self.deadline


class Coalescer:
    """Shares a computation among callers with the same key: those that arrive while it runs,
    and those within `ttl` seconds after it answered (at most `max_entries` answers and
    `max_bytes` of them kept; `ttl` 0 keeps none)."""

    def __init__(self, ttl: float = 5.0, max_entries: int = 32, max_bytes: int = 64 << 20,
                 clock=time.monotonic):
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        self._flights: dict = {}
        self._recent: collections.OrderedDict = collections.OrderedDict()
        self._recent_bytes = 0

    async def run(self, key, compute, deadline=None, size=len):
        """-> (result, source): source is "computed", "inflight" or "recent".

        compute(latest_deadline) is a coroutine function; latest_deadline() is the latest
        deadline of the callers waiting (None: one has none). A result is kept for later
        callers unless size(result) is None.
        """
        hit = self._recent.get(key)
        if hit is not None:
            expires, result, _ = hit
            if self.clock() < expires:
                return result, "recent"
            self._forget(key)
        flight = self._flights.get(key)
        source = "inflight"
        if flight is None:
            flight = self._flights[key] = _Flight(deadline)
            flight.task = asyncio.ensure_future(compute(flight.latest_deadline))
            flight.task.add_done_callback(lambda task: self._landed(key, flight, task, size))
            source = "computed"
        else:
            flight.wait_longer(deadline)
        flight.waiters += 1
        try:
            return await asyncio.shield(flight.task), source
        except asyncio.CancelledError:
            if not flight.task.done() and flight.waiters == 1:
                flight.task.cancel()  # the last caller left: a job not started yet is dropped
            raise
        finally:
            flight.waiters -= 1

    def _landed(self, key, flight, task, size):
        if self._flights.get(key) is flight:
            del self._flights[key]
        if self.ttl <= 0 or task.cancelled() or task.exception() is not None:
            return
        nbytes = size(task.result())
        if nbytes is None or nbytes > self.max_bytes:
            return
        self._forget(key)
        self._recent[key] = (self.clock() + self.ttl, task.result(), nbytes)
        self._recent_bytes += nbytes
        while len(self._recent) > self.max_entries or self._recent_bytes > self.max_bytes:
            self._forget(next(iter(self._recent)))

    def _forget(self, key):
        entry = self._recent.pop(key, None)
        if entry is not None:
            self._recent_bytes -= entry[2]
