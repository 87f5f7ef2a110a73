"""Retry policy for both clients: UNAVAILABLE, RESOURCE_EXHAUSTED and CANCELLED, with backoff
and jitter, within the caller's deadline."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import grpc

# CANCELLED reaches a caller that did not cancel when a draining server drops a call it had
# not started (gRPC's shutdown); RESOURCE_EXHAUSTED is a full admission queue (every rank of a
# cluster asking at once). Rebalance and Evaluate have no side effects, so they are retried.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                       grpc.StatusCode.RESOURCE_EXHAUSTED})
ATTEMPT_HEADER = "x-eplb-attempt"  # the server counts retries by it (eplb_retried_requests_total)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; `max_attempts` counts the first try."""

    max_attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 1.0
    multiplier: float = 2.0

    def delay(self, attempt: int) -> float:
        """Sleep before retry number `attempt` (1 = the first retry)."""
        cap = min(self.max_backoff, self.initial_backoff * self.multiplier ** (attempt - 1))
        return random.uniform(cap / 2, cap)


NO_RETRY = RetryPolicy(max_attempts=1)


class Attempts:
    """Tracks one call's deadline and attempts; `next_timeout` is the time left for a try."""

    def __init__(self, policy: RetryPolicy, timeout: float | None):
        self.policy = policy
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.attempt = 0

    def next_timeout(self) -> float | None:
        self.attempt += 1
        if self.deadline is None:
            return None
        return max(self.deadline - time.monotonic(), 0.001)

    def metadata(self):
        """Call metadata naming this try's number (1 for the first)."""
        return ((ATTEMPT_HEADER, str(self.attempt)),)

    def backoff(self, code) -> float | None:
        """Seconds to wait before retrying after `code`, or None when the call must fail now."""
        if code not in RETRYABLE or self.attempt >= self.policy.max_attempts:
            return None
        delay = self.policy.delay(self.attempt)
        if self.deadline is not None and time.monotonic() + delay >= self.deadline:
            return None
        return delay
