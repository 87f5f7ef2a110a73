"""Policy and objective names <-> the eplb.v1 enum values."""

from __future__ import annotations

from .v1 import placement_pb2 as pb

POLICIES = ("auto", "hierarchical", "global", "deepseek")
OBJECTIVES = ("sum", "expected_peak", "recency", "robust", "adaptive")


def policy_value(name: str) -> int:
    """'auto' -> POLICY_AUTO; raises ValueError naming the choices."""
    key = str(name).lower()
    if key not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}; got {name!r}")
    return pb.Policy.Value(f"POLICY_{key.upper()}")


def objective_value(name: str | None) -> int:
    """None or 'default' -> OBJECTIVE_UNSPECIFIED (the server's default)."""
    if name is None or str(name).lower() == "default":
        return pb.OBJECTIVE_UNSPECIFIED
    key = str(name).lower()
    if key not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}; got {name!r}")
    return pb.Objective.Value(f"OBJECTIVE_{key.upper()}")


def policy_name(value: int) -> str:
    try:
        return pb.Policy.Name(value).removeprefix("POLICY_").lower()
    except ValueError:
        return f"policy_{value}"


def objective_name(value: int) -> str:
    try:
        return pb.Objective.Name(value).removeprefix("OBJECTIVE_").lower()
    except ValueError:
        return f"objective_{value}"
