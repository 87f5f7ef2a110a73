"""The server's configuration (everything it can be told) and the device it resolves to: light
to import, for the CLI before it starts the engine worker and for the worker itself."""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass, field
from typing import Optional

from .limits import Limits


@dataclass
class Config:
    """Everything the server can be told; the CLI fills it from flags and EPLB_* variables."""

    listen: list = field(default_factory=lambda: ["127.0.0.1:50051"])
    metrics_host: str = "127.0.0.1"
    metrics_port: Optional[int] = 9090  # None: no metrics endpoint; 0: an ephemeral port
    device: str = "auto"
    max_concurrent: int = 16
    limits: Limits = field(default_factory=Limits)
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    tls_client_ca: Optional[str] = None
    reflection: bool = True
    grace_period: float = 10.0
    warmup_shapes: list = field(default_factory=lambda: ["2x16:32:8:2:4"])
    unix_socket_mode: int = 0o600
    isolation: str = "process"  # "process": the engine in a supervised worker; "thread": here
    engine_module: str = "eplb_server"  # what the worker process imports as its engine
    threads: int = 1  # the most threads one plan uses (parallel only for large requests)
    plan_time_limit: float = 120.0  # seconds; a worker still busy then is killed and restarted
    coalesce_seconds: float = 5.0  # identical requests within this time share one answer
    # Connections (issue 22, case 6): idle ones are closed (GOAWAY), every one is recycled after
    # its maximum age (in-flight RPCs get the grace to finish), at most max_connections are
    # accepted per listener and max_streams RPCs run on one at a time; keepalive pings find
    # peers that vanished without closing.
    max_connection_idle: float = 300.0  # seconds
    max_connection_age: float = 1800.0
    max_connection_age_grace: float = 60.0
    max_connections: int = 256
    max_streams: int = 64
    keepalive_time: float = 60.0
    keepalive_timeout: float = 20.0


# Files a host with a GPU driver has (NVIDIA's, or ROCm's, which torch also calls CUDA).
GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd")


def resolve_device(name: str) -> str:
    """"cpu" or "cuda:N". auto: the first CUDA device when torch sees one, else the CPU. Torch
    (seconds to import) is asked only where a GPU driver is present."""
    if name == "auto":
        if not any(os.path.exists(path) for path in GPU_DRIVER_FILES):
            return "cpu"
        import torch

        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda: torch sees no CUDA device")
        return str(torch.device(name if ":" in name else "cuda:0"))
    if name != "cpu":
        raise ValueError(f"unknown device {name!r}: use auto, cpu or cuda")
    return "cpu"


def torch_version() -> str:
    """The installed torch's version, read without importing it."""
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return ""
