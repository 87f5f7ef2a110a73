"""What both engine adapters share: settings from the environment, the call, and the fallback."""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from dataclasses import dataclass

import numpy as np

from ..tensors import as_numpy as to_numpy  # noqa: F401 - torch tensors without importing torch

log = logging.getLogger("eplb_client.integrations")

POLICIES = ("auto", "hierarchical", "global", "deepseek")
OBJECTIVES = ("sum", "expected_peak", "recency", "robust")
DEFAULT_DEADLINE = 5.0  # seconds; a rebalance runs every few minutes, a plan takes milliseconds
REASONS = ("unavailable", "deadline", "overloaded", "error")


@dataclass(frozen=True)
class Settings:
    """The adapters' configuration, read from the environment of each engine process.

    EPLB_TARGET      host:port or unix:///path, comma-separated for several (localhost:50051)
    EPLB_POLICY      auto | hierarchical | global | deepseek; unset: follow the engine's choice
    EPLB_DEADLINE    seconds per rebalance, retries included, before falling back (5)
    EPLB_FALLBACK    engine (run the engine's own algorithm on failure) | raise
    EPLB_OBJECTIVE   SGLang's window history: sum | expected_peak | recency | robust (server's)
    EPLB_MAX_WINDOWS SGLang's window history is summed into at most this many windows (32)
    EPLB_DISABLE     1: the plugin leaves the engine's algorithm in place
    """

    target: str = "localhost:50051"
    policy: str | None = None
    deadline: float = DEFAULT_DEADLINE
    fallback: str = "engine"
    objective: str | None = None
    max_windows: int = 32
    disabled: bool = False

    @classmethod
    def from_env(cls, env=None) -> "Settings":
        """Raises ValueError naming the variable that holds a bad value."""
        env = os.environ if env is None else env

        def choice(name, allowed):
            value = (env.get(name) or "").strip().lower() or None
            if value is not None and value not in allowed:
                raise ValueError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
            return value

        def number(name, kind, default, low):
            raw = (env.get(name) or "").strip()
            try:
                value = kind(raw) if raw else default
            except ValueError:
                raise ValueError(f"{name}={raw!r}: expected a number") from None
            if not value >= low:
                raise ValueError(f"{name}={raw!r}: must be at least {low}")
            return value

        return cls(
            target=(env.get("EPLB_TARGET") or "").strip() or cls.target,
            policy=choice("EPLB_POLICY", POLICIES),
            deadline=number("EPLB_DEADLINE", float, DEFAULT_DEADLINE, 0.001),
            fallback=choice("EPLB_FALLBACK", ("engine", "raise")) or "engine",
            objective=choice("EPLB_OBJECTIVE", OBJECTIVES),
            max_windows=number("EPLB_MAX_WINDOWS", int, cls.max_windows, 1),
            disabled=(env.get("EPLB_DISABLE") or "").strip().lower() in ("1", "true", "yes"),
        )


class Fallbacks:
    """Counts fallbacks per (engine, reason) and logs once per episode: the first failure after a
    success (or start) warns, later failures stay quiet, the next success says it recovered.

    `counts()` is what a host reads; where prometheus_client is installed the same numbers go to
    the counter eplb_client_fallbacks_total{engine, reason} in its default registry."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = {}
        self._failing: dict[str, float] = {}  # engine -> when its episode started

    def failed(self, engine: str, reason: str, error: BaseException) -> None:
        with self._lock:
            key = (engine, reason)
            self._counts[key] = self._counts.get(key, 0) + 1
            first = engine not in self._failing
            if first:
                self._failing[engine] = time.monotonic()
        self._export(engine, reason)
        if first:
            log.warning("EPLB service failed (%s: %s); %s falls back to its own algorithm until "
                        "the service answers again", reason, _short(error), engine)

    def succeeded(self, engine: str) -> None:
        with self._lock:
            started = self._failing.pop(engine, None)
        if started is not None:
            log.info("EPLB service answers again; %s plans through it after %.1f s of "
                     "fallbacks", engine, time.monotonic() - started)

    def counts(self) -> dict[tuple[str, str], int]:
        """{(engine, reason): fallbacks} in this process; reason is one of REASONS."""
        with self._lock:
            return dict(self._counts)

    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def _export(self, engine, reason):
        counter = _prometheus_counter()
        if counter is not None:
            counter.labels(engine, reason).inc()


_PROMETHEUS = []  # [Counter] once made, [None] where prometheus_client is absent
_PROMETHEUS_LOCK = threading.Lock()


def _prometheus_counter():
    """eplb_client_fallbacks_total in prometheus_client's default registry, made on first use;
    None without prometheus_client (engine environments may lack it)."""
    with _PROMETHEUS_LOCK:
        if not _PROMETHEUS:
            _PROMETHEUS.append(_make_counter())
    return _PROMETHEUS[0]


def _make_counter():
    try:
        from prometheus_client import Counter

        return Counter("eplb_client_fallbacks", "Rebalances an engine adapter planned with the "
                       "engine's own algorithm because the EPLB service failed",
                       ["engine", "reason"])
    except Exception:  # noqa: BLE001 - absent, or the name is taken in this registry
        return None


FALLBACKS = Fallbacks()


def _short(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:200]


def reason_of(error: BaseException) -> str:
    """'unavailable', 'deadline', 'overloaded' or 'error' for an exception from the call."""
    import grpc

    code = getattr(error, "code", None)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "deadline"
    if code == grpc.StatusCode.UNAVAILABLE:
        return "unavailable"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return "overloaded"
    return "error"


class ServiceCaller:
    """One client per process (engines fork workers: it is created on first use, after the
    fork), calls within the deadline, and checks the answer's shape. With several targets an
    UNAVAILABLE one is retried once on the next; with one, the first failure falls back (a retry
    after backoff would only add its 25-50 ms to every fallback)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._client = None
        self._pid = None
        self._lock = threading.Lock()

    def client(self):
        from .._retry import RetryPolicy
        from ..client import EplbClient

        with self._lock:
            if self._client is None or self._pid != os.getpid():
                several = "," in self.settings.target
                self._client = EplbClient(self.settings.target, timeout=self.settings.deadline,
                                          retry=RetryPolicy(max_attempts=2 if several else 1))
                self._pid = os.getpid()
            return self._client

    def rebalance(self, loads: np.ndarray, *, num_replicas, num_groups, num_nodes, num_gpus,
                  policy, current=None, objective=None):
        """The service's RebalanceResult; raises on any failure, including a malformed answer.

        RESOURCE_EXHAUSTED (every EP rank asks at once and the server's queue is full) is retried
        with jittered backoff until the deadline: a rank that fell back while the others got the
        service's plan would disagree with them about the placement."""
        import grpc

        from ..errors import EplbError

        end = time.monotonic() + self.settings.deadline
        pause = 0.01
        while True:
            try:
                result = self.client().rebalance(
                    loads, num_replicas=num_replicas, num_groups=num_groups,
                    num_nodes=num_nodes, num_gpus=num_gpus, policy=policy,
                    current_phy2log=current, objective=objective,
                    model="eplb-client integration", timeout=max(end - time.monotonic(), 0.001))
                break
            except EplbError as e:
                wait = random.uniform(pause / 2, pause)
                if e.code != grpc.StatusCode.RESOURCE_EXHAUSTED or \
                        time.monotonic() + wait >= end:
                    raise
                time.sleep(wait)
                pause = min(pause * 2, 0.2)
        layers, experts = loads.shape[-2:]
        if result.phy2log.shape != (layers, num_replicas) or \
                result.logcnt.shape != (layers, experts):
            raise ValueError(f"service answered phy2log {list(result.phy2log.shape)}, expected "
                             f"[{layers}, {num_replicas}]")
        return result

    def close(self):
        with self._lock:
            if self._client is not None:
                self._client.close()
            self._client = None


def to_torch_int64(a: np.ndarray):
    """An int64 CPU torch tensor of `a` (torch is imported only here, inside the engine)."""
    import torch

    return torch.from_numpy(np.array(a, dtype=np.int64))  # a writable copy


def pad_log2phy(log2phy: np.ndarray, width: int) -> np.ndarray:
    """log2phy [L, E, W] -> [L, E, width] padded with -1 (width >= W, the largest replica count)."""
    layers, experts, have = log2phy.shape
    if have > width:
        raise ValueError(f"log2phy has {have} replicas for an expert, more than {width}")
    out = np.full((layers, experts, width), -1, dtype=np.int64)
    out[:, :, :have] = log2phy
    return out


def plugin_settings(engine: str, logger: logging.Logger) -> Settings | None:
    """The settings a plugin entry point installs the adapter with, or None (logged) when the
    engine keeps its own algorithm: settings that do not parse (a plugin must not stop the
    engine) or EPLB_DISABLE."""
    try:
        settings = Settings.from_env()
    except ValueError as e:
        logger.error("EPLB service adapter not installed: %s", e)
        return None
    if settings.disabled:
        logger.info("EPLB_DISABLE is set: %s keeps its own EPLB algorithm", engine)
        return None
    return settings
