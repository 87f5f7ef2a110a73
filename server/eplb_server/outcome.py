"""The result of an engine job as it crosses from the worker process to the server: plain data,
so that unpickling it imports nothing heavy (no torch) in the server process."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Outcome:
    """What a job returns across the process boundary: kind "ok" (data: the serialized
    response; summary: what metrics record), "invalid" or "undecodable" (violations: (field,
    description)), "too_large" (the response's worst case is over the limit), or "error" (an
    engine fault: violations holds (type, traceback))."""

    kind: str
    data: bytes = b""
    violations: list = field(default_factory=list)
    summary: dict | None = None
    timings: dict = field(default_factory=dict)
