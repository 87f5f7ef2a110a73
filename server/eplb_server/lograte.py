"""Rate-limited logging: a repeated error is logged in full once per interval, then counted."""

from __future__ import annotations

import logging
import threading
import time


class RateLimitedLog:
    """Logs at most `burst` records per key per `interval` seconds; the next record logged for
    that key says how many were suppressed in between. Thread-safe."""

    def __init__(self, logger: logging.Logger, interval: float = 60.0, burst: int = 1,
                 clock=time.monotonic):
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict = {}  # key -> [window start, records logged, records suppressed]

    def allow(self, key) -> tuple[bool, int]:
        """Whether a record for `key` may be logged now, and how many were suppressed before."""
        now = self._clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None or now - window[0] >= self.interval:
                suppressed = window[2] if window is not None else 0
                self._windows[key] = [now, 1, 0]
                if len(self._windows) > 1024:  # keys are few; never let them grow unbounded
                    self._forget(now)
                return True, suppressed
            if window[1] < self.burst:
                window[1] += 1
                return True, 0
            window[2] += 1
            return False, 0

    def _forget(self, now):
        for key in [k for k, w in self._windows.items() if now - w[0] >= self.interval]:
            del self._windows[key]

    def log(self, level: int, key, msg: str, *args, exc_info=None):
        allowed, suppressed = self.allow(key)
        if not allowed:
            return
        if suppressed:
            msg += f" ({suppressed} more like it in the last {self.interval:g} s not logged)"
        self.logger.log(level, msg, *args, exc_info=exc_info)

    def warning(self, key, msg: str, *args):
        self.log(logging.WARNING, key, msg, *args)

    def error(self, key, msg: str, *args):
        self.log(logging.ERROR, key, msg, *args)

    def exception(self, key, msg: str, *args):
        """An error with the current exception's traceback (only when it is logged)."""
        self.log(logging.ERROR, key, msg, *args, exc_info=True)
