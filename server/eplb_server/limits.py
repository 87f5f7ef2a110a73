"""Request size limits, checked on the shapes before any request-sized allocation."""

from __future__ import annotations

from dataclasses import dataclass

MAX_DIMENSION = 1 << 20  # transfers are encoded with three-byte varints (see wire.py)
MAX_REQUEST_BYTES = (1 << 31) - 1  # gRPC's message length is an int32


@dataclass(frozen=True)
class Limits:
    """Size limits, checked on the shapes before any request-sized allocation."""

    # Defaults cover today's largest MoE shapes (Kimi K2: 60 x 384 -> 480; the largest
    # benchmark shape, 61 x 512 -> 640 on 320 GPUs) with room, and bound a plan's time to
    # about a second.
    max_layers: int = 256
    max_experts: int = 1024
    max_replicas: int = 2048
    max_windows: int = 64
    # Enforced by gRPC (RESOURCE_EXHAUSTED) before parsing. A request takes about 4x its size in
    # server memory while it is decoded and planned (bench/limits.py): 16 MiB keeps 16 of them
    # in flight under 1.6 GB, and holds 64 windows of a 58 x 256 history in float64 (7.3 MiB).
    max_request_bytes: int = 16 << 20
    # A response's worst case (computed from the request's shapes before any work) above this
    # is refused with RESOURCE_EXHAUSTED. With the compact log2phy the largest response within
    # the limits above is under 24 MiB (256 x 2048 int64 slots, a transfer for each).
    max_response_bytes: int = 64 << 20

    def __post_init__(self):
        for name in ("max_layers", "max_experts", "max_replicas", "max_windows"):
            if not 1 <= getattr(self, name) <= MAX_DIMENSION:
                raise ValueError(f"{name} must lie in [1, {MAX_DIMENSION}]")
        for name in ("max_request_bytes", "max_response_bytes"):
            if not 1 <= getattr(self, name) <= MAX_REQUEST_BYTES:
                raise ValueError(f"{name} must lie in [1, {MAX_REQUEST_BYTES}]")
