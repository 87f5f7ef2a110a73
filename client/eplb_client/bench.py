"""Latency benchmark against a running server: percentiles over N requests, progress bar."""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def synthetic_loads(layers: int, experts: int, seed: int = 0) -> np.ndarray:
    """Skewed (lognormal) integer token counts [layers, experts]."""
    rng = np.random.default_rng(seed)
    return np.round(rng.lognormal(mean=8.0, sigma=1.2, size=(layers, experts)))


class Progress:
    """A one-line progress bar on a terminal (stderr), redrawn at most 20 times a second; on a
    stream that is not a terminal (a log file, a pipe) it draws nothing."""

    def __init__(self, total: int, stream=None, width: int = 30, label: str = ""):
        self.total, self.width, self.label = max(total, 1), width, label
        self.stream = stream if stream is not None else sys.stderr
        self.done, self._last = 0, 0.0
        self._lock = threading.Lock()
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = bool(isatty and isatty())

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            if not self.enabled:
                return
            now = time.monotonic()
            if self.done >= self.total or now - self._last >= 0.05:
                self._last = now
                filled = int(self.width * self.done / self.total)
                bar = "#" * filled + "." * (self.width - filled)
                self.stream.write(f"\r{self.label}[{bar}] {self.done}/{self.total}")
                self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        self.stream.write("\n")
        self.stream.flush()


def percentiles(values_s) -> dict:
    """Latency summary in milliseconds."""
    a = np.asarray(values_s, dtype=np.float64) * 1e3
    if a.size == 0:
        return {}
    p = np.percentile(a, [50, 90, 99])
    return {"min": float(a.min()), "p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2]),
            "max": float(a.max()), "mean": float(a.mean())}


def run(client, request, *, requests: int, warmup: int = 3, concurrency: int = 1,
        progress: bool = True) -> dict:
    """Sends `request` (a RebalanceRequest) `requests` times after `warmup` untimed ones."""
    for _ in range(warmup):
        client.rebalance_raw(request)
    bar = Progress(requests, label="bench ") if progress else None

    def one(_):
        t0 = time.perf_counter()
        resp = client.rebalance_raw(request)
        elapsed = time.perf_counter() - t0
        if bar is not None:
            bar.update()
        return elapsed, resp.compute_seconds, resp.device

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(concurrency, 1)) as pool:
        rows = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    latency = [r[0] for r in rows]
    return {
        "requests": requests,
        "concurrency": concurrency,
        "device": rows[-1][2] if rows else "",
        "throughput_rps": requests / wall if wall > 0 else 0.0,
        "latency_ms": percentiles(latency),
        "server_compute_ms": percentiles([r[1] for r in rows]),
        "overhead_ms": percentiles([r[0] - r[1] for r in rows]),
    }
