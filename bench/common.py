"""Shared by the benchmarks: the real DeepSeek-V3 snapshots and a per-call timer."""

from __future__ import annotations

import pathlib
import time

import numpy as np

from eplb_client.loaders import load_loads

SNAPSHOTS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "deepseek-v3"


def real_snapshots() -> dict[str, np.ndarray]:
    """name -> [58, 256] float64 loads of each ../shared snapshot (dense layers dropped);
    empty when ../shared is absent."""
    return {path.stem: load_loads(path).astype(np.float64)
            for path in sorted(SNAPSHOTS.glob("*.json"))}


def call_times(fn, repeats: int) -> list[float]:
    """Seconds per call of `fn`, `repeats` calls after one untimed (warm) call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def fully_warm(log_text: str) -> bool:
    """Whether a server's log says it serves and has loaded all its warm-up kernels (on a warm
    cache it serves first and loads the rest between requests: timings wait for that)."""
    return "serving (warm-up" in log_text and (
        "more steps load" not in log_text or "warm-up finished" in log_text)
