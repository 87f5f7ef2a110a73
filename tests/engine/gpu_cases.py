"""Small problems for the GPU planner's tests, shared by the interpreter's child process, the
tests that check its answers and the CUDA tests: (name, L, E, P, K, N, G, policy, loads)."""

from __future__ import annotations

import numpy as np

from tests.engine.hard_cases import hard_loads

# (name, layers, experts, replicas, groups, nodes, gpus, policy, loads): loads "smooth" are
# continuous lognormal (tie-free), "hard" the engine tests' families (ties, zeros, hot experts).
CASES = [
    ("global 6/GPU", 3, 16, 24, 1, 1, 4, "global", "smooth"),
    ("global 4/GPU", 2, 16, 32, 1, 1, 8, "global", "smooth"),
    ("global 3/GPU", 2, 24, 36, 1, 1, 12, "global", "smooth"),
    ("global 2/GPU", 2, 16, 32, 1, 1, 16, "global", "smooth"),
    ("global 1/GPU", 2, 16, 16, 1, 1, 16, "global", "smooth"),
    ("hierarchical K4 N2 G8", 2, 32, 48, 4, 2, 8, "hierarchical", "smooth"),
    ("hierarchical K4 N4 G8", 1, 16, 32, 4, 4, 8, "hierarchical", "smooth"),
    ("global hard", 5, 16, 24, 4, 2, 4, "global", "hard"),
    ("hierarchical hard", 5, 16, 24, 4, 2, 4, "hierarchical", "hard"),
    ("global 2/GPU 32->64 a", 3, 32, 64, 1, 1, 32, "global", "smooth"),
    ("global 2/GPU 32->64 b", 3, 32, 64, 1, 1, 32, "global", "smooth"),
    ("global 2/GPU 64->128", 2, 64, 128, 1, 1, 64, "global", "smooth"),
    ("hierarchical 2/GPU K4 N2 G16", 2, 24, 32, 4, 2, 16, "hierarchical", "smooth"),
]

# The "the same peaks as the CPU engine within 0.05%", in units of the layer's bound, on
# tie-free loads: the planners make the same count decisions at two slots per GPU, and above it
# the same starts, swaps (the CPU engine's candidates and search order), balancing and count moves.
AGREEMENT = 5e-4


def agrees_with_cpu(case) -> bool:
    """A global tie-free case, where the GPU planner's peaks must match the CPU engine's within
    AGREEMENT."""
    return case[7] == "global" and case[8] == "smooth"


def case_loads(case) -> np.ndarray:
    """[L, E] float64 loads of a case, the same in every process."""
    name, layers, experts, _, groups, *_, kind = case
    rng = np.random.default_rng(list(name.encode()))
    if kind == "hard":
        return hard_loads(rng, layers, experts, groups)
    return rng.lognormal(0.0, 1.2, (layers, experts)) * 1000.0


def constraint(case) -> tuple[int, int]:
    """(groups, nodes) the planner sees: (1, 1) for the global policy."""
    _, _, _, _, groups, nodes, _, policy, _ = case
    return (groups, nodes) if policy == "hierarchical" else (1, 1)
