"""Engine benchmark: time, balancedness and gap of the deepseek and refined policies, side by side.

    python -m bench.engine [--repeats 5] [--quick] [--write-docs]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from eplb_server import evaluate, plan

from .common import call_times, real_snapshots
from .docs import write_section
# (name, layers, experts, replicas, groups, nodes, gpus, policy)
SHAPES = [
    ("58x256->288 K8 N4 G32 hier", 58, 256, 288, 8, 4, 32, "hierarchical"),
    ("58x256->288 G32 global", 58, 256, 288, 8, 4, 32, "global"),
    ("58x256->288 G72 (4/GPU)", 58, 256, 288, 8, 4, 72, "global"),
    ("58x256->288 G144 (2/GPU)", 58, 256, 288, 8, 4, 144, "global"),
    ("58x256->320 K8 N8 G64 hier", 58, 256, 320, 8, 8, 64, "hierarchical"),
    ("94x128->160 G16", 94, 128, 160, 1, 1, 16, "global"),
    ("60x384->480 G96", 60, 384, 480, 1, 1, 96, "global"),
    ("61x512->640 K16 N40 G320", 61, 512, 640, 16, 40, 320, "global"),
]


def synthetic(layers: int, experts: int, seed: int = 0) -> torch.Tensor:
    """Skewed popularity (lognormal) with a hot group, as token counts."""
    rng = np.random.default_rng(seed)
    weight = rng.lognormal(0.0, 1.2, (layers, experts))
    weight[:, : max(1, experts // 8)] *= 2.0
    return torch.from_numpy(np.round(weight * 1000))


def measure(weights, shape, policy, repeats):
    _, _, _, replicas, groups, nodes, gpus, constraint = shape
    if constraint == "global":  # the reference's global policy: one node, one group
        groups, nodes = 1, 1
    times, bal, gaps, worst = [], [], [], []
    for weight in weights:
        run = lambda: plan(weight, replicas, groups, nodes, gpus, policy=policy)  # noqa: E731
        times += call_times(run, repeats)
        result = run()
        score = evaluate(weight, result.phy2log, groups, nodes, gpus, policy=constraint)
        bal.append(score.balancedness)
        gaps.append(score.mean_gap)
        worst.append(score.max_gap)
    return statistics.median(times) * 1e3, np.mean(bal), np.mean(gaps) * 100, max(worst) * 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="first two shapes only")
    parser.add_argument("--write-docs", action="store_true",
                        help="also write the table into docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shapes = SHAPES[:2] if args.quick else SHAPES
    real = [torch.from_numpy(w) for w in real_snapshots().values()]
    lines = ["| workload | shape | policy | ms (median) | balancedness | mean gap % "
             "| worst gap % |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines))
    for shape in shapes:
        name, layers, experts = shape[0], shape[1], shape[2]
        workloads = [("synthetic", [synthetic(layers, experts, s) for s in range(3)])]
        if real and (layers, experts) == (58, 256):
            workloads.append((f"real x{len(real)}", real))
        for label, weights in workloads:
            for policy in ("deepseek", shape[7]):
                ms, bal, gap, worst = measure(weights, shape, policy, args.repeats)
                lines.append(f"| {label} | {name} | {policy} | {ms:.2f} | {bal:.4f} | {gap:.3f} | "
                             f"{worst:.3f} |")
                print(lines[-1], flush=True)
    if args.write_docs:
        write_section("engine", "Engine: time and quality against the reference", DOC_TEXT + "\n"
                      + "\n".join(lines))


DOC_TEXT = """Real rows: the DeepSeek-V3 snapshots of `../shared/data` (absent: synthetic only);
synthetic: three lognormal workloads with a hot group. ms: median time of one `plan()` call
over all layers. Gap = peak GPU load / lower bound - 1: global rows against max(W / G, R*),
hierarchical rows against LB_hier (see [engine.md](engine.md)). Global rows compare with the
reference's global policy (one node, one group); `deepseek` is the reference's exact output.
"""


if __name__ == "__main__":
    main()
