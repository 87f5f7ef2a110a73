"""Engine benchmark: this engine against the reference (and published planners) per topology, its
quality against a time budget (the anytime curve), and time and gap per shape.

    python -m bench.engine [--part all|topologies|anytime|shapes] [--repeats 5] [--quick]
                           [--published NAME=PATH ...] [--write-docs]

--published runs a planner from a local copy the user points to (a Python file defining
deepseek-ai/EPLB's `rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_gpus)`,
as vLLM's, SGLang's and the ADRS benchmark's planners do); nothing of it is kept here.
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import statistics
import time

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
# Issue 23's table: (name, replicas, groups, nodes, gpus, policy), on the real snapshots.
TOPOLOGIES = [
    ("EP32 global, 9 slots/GPU", 288, 8, 4, 32, "global"),
    ("EP72 global, 4 slots/GPU", 288, 8, 4, 72, "global"),
    ("EP144 global, 2 slots/GPU", 288, 8, 4, 144, "global"),
    ("EP32 hierarchical", 288, 8, 4, 32, "hierarchical"),
    ("EP64 hierarchical, P = 512", 512, 8, 8, 64, "hierarchical"),
]
BUDGETS_MS = (0.25, 0.5, 1.0, 2.0, 5.0)


def synthetic(layers: int, experts: int, seed: int = 0) -> torch.Tensor:
    """Skewed popularity (lognormal) with a hot group, as token counts."""
    rng = np.random.default_rng(seed)
    weight = rng.lognormal(0.0, 1.2, (layers, experts))
    weight[:, : max(1, experts // 8)] *= 2.0
    return torch.from_numpy(np.round(weight * 1000))


def load_published(spec: str):
    """NAME=PATH -> (name, rebalance_experts) imported from the user's local file PATH."""
    name, _, path = spec.partition("=")
    if not path:
        raise SystemExit(f"--published takes NAME=PATH, got {spec!r}")
    file = pathlib.Path(path).expanduser()
    module_spec = importlib.util.spec_from_file_location(f"published_{name}", file)
    if module_spec is None or not file.is_file():
        raise SystemExit(f"--published {name}: no Python file at {file}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "rebalance_experts"):
        raise SystemExit(f"--published {name}: {file} defines no rebalance_experts")
    return name, module.rebalance_experts


def _constraint(groups, nodes, policy):
    """The reference's global policy is its one node, one group."""
    return (groups, nodes) if policy == "hierarchical" else (1, 1)


def _side_by_side(planners, weights, groups, nodes, gpus, policy, repeats):
    """planners: [planner(weight) -> phy2log]; -> per planner (median ms per call, aggregate
    balancedness over every snapshot's layers, mean gap %). The planners take turns on each
    snapshot (one untimed call each first), so that the machine's drifts in speed (up to 1.5x
    here within minutes) fall on all of them alike."""
    times = [[] for _ in planners]
    quality = [[0.0, 0.0, []] for _ in planners]  # mean load, peak, gaps
    for weight in weights:
        for planner in planners:
            planner(weight)
        for _ in range(repeats):
            for planner, spent in zip(planners, times):
                start = time.perf_counter()
                planner(weight)
                spent.append(time.perf_counter() - start)
        for planner, cell in zip(planners, quality):
            score = evaluate(weight, planner(weight), groups, nodes, gpus, policy=policy)
            layer_peak = float(score.layer_max_load.sum())
            cell[0] += score.balancedness * layer_peak
            cell[1] += layer_peak
            cell[2].append(score.mean_gap)
    return [(statistics.median(spent) * 1e3, mean_load / peak, float(np.mean(gaps)) * 100)
            for spent, (mean_load, peak, gaps) in zip(times, quality)]


def topology_table(real, published, repeats) -> list[str]:
    """Issue 23's table: ms (balancedness) of this engine, each published planner and the
    reference, side by side on the real snapshots."""
    names = ["this engine", *(name for name, _ in published), "DeepSeek reference (compiled here)"]
    lines = ["| topology | " + " | ".join(names) + " | mean gap % (this engine) |",
             "|---" * (len(names) + 2) + "|"]
    print("\n".join(lines), flush=True)
    for name, replicas, groups, nodes, gpus, policy in TOPOLOGIES:
        k, n = _constraint(groups, nodes, policy)
        planners = [lambda w: plan(w, replicas, k, n, gpus, policy=policy).phy2log]
        planners += [lambda w, f=f: f(w, replicas, k, n, gpus)[0] for _, f in published]
        planners.append(lambda w: plan(w, replicas, k, n, gpus, policy="deepseek").phy2log)
        results = _side_by_side(planners, real, k, n, gpus, policy, repeats)
        cells = [f"{ms:.2f} ({bal:.4f})" for ms, bal, _ in results]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {results[0][2]:.3f} |")
        print(lines[-1], flush=True)
    return lines


def anytime_curve(real, repeats) -> list[str]:
    """Balancedness (and the share of calls whose refinement finished) against time_budget_ms."""
    head = " | ".join(f"{b:g} ms" for b in BUDGETS_MS)
    lines = [f"| topology | {head} | no budget | reference |",
             "|---" * (len(BUDGETS_MS) + 3) + "|"]
    print("\n".join(lines), flush=True)
    for name, replicas, groups, nodes, gpus, policy in TOPOLOGIES:
        k, n = _constraint(groups, nodes, policy)
        cells = []
        for budget in (*BUDGETS_MS, 0.0):
            finished, times = 0, []
            results = {}
            for index, weight in enumerate(real):
                for _ in range(max(1, repeats)):
                    start = time.perf_counter()
                    result = plan(weight, replicas, k, n, gpus, policy=policy,
                                  time_budget_ms=budget)
                    times.append(time.perf_counter() - start)
                results[index] = result
                finished += result.refinement_finished
            bal = _aggregate(real, results, k, n, gpus, policy)
            cells.append(f"{bal:.4f} / {statistics.median(times) * 1e3:.1f} ms"
                         + ("" if finished == len(real) else f" ({finished}/{len(real)} done)"))
        reference = {i: plan(w, replicas, k, n, gpus, policy="deepseek")
                     for i, w in enumerate(real)}
        cells.append(f"{_aggregate(real, reference, k, n, gpus, policy):.4f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    return lines


def _aggregate(weights, results, groups, nodes, gpus, policy) -> float:
    mean_load, peak = 0.0, 0.0
    for index, weight in enumerate(weights):
        score = evaluate(weight, results[index].phy2log, groups, nodes, gpus, policy=policy)
        layer_peak = float(score.layer_max_load.sum())
        peak += layer_peak
        mean_load += score.balancedness * layer_peak
    return mean_load / peak


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


def shape_table(real, quick, repeats) -> list[str]:
    shapes = SHAPES[:2] if quick else SHAPES
    lines = ["| workload | shape | policy | ms (median) | balancedness | mean gap % "
             "| worst gap % |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for shape in shapes:
        name, layers, experts = shape[0], shape[1], shape[2]
        workloads = [("synthetic", [synthetic(layers, experts, s) for s in range(3)])]
        if real and (layers, experts) == (58, 256):
            workloads.append((f"real x{len(real)}", real))
        for label, weights in workloads:
            for policy in ("deepseek", shape[7]):
                ms, bal, gap, worst = measure(weights, shape, policy, repeats)
                lines.append(f"| {label} | {name} | {policy} | {ms:.2f} | {bal:.4f} | {gap:.3f} | "
                             f"{worst:.3f} |")
                print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "topologies", "anytime", "shapes"),
                        default="all")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="shapes: first two only")
    parser.add_argument("--published", action="append", default=[], metavar="NAME=PATH",
                        help="also time a published planner from a local file (repeatable)")
    parser.add_argument("--write-docs", action="store_true",
                        help="also write the tables into docs/benchmarks.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    published = [load_published(spec) for spec in args.published]
    real = [torch.from_numpy(w) for w in real_snapshots().values()]
    parts = ("topologies", "anytime", "shapes") if args.part == "all" else (args.part,)
    sections = []
    if real and "topologies" in parts:
        print(f"\nPer topology, {len(real)} real snapshots: median ms per call (aggregate "
              "balancedness)")
        sections.append(("engine-topologies", "Engine: per topology, against the reference",
                         TOPOLOGY_TEXT, topology_table(real, published, args.repeats)))
    if real and "anytime" in parts:
        print("\nAnytime: aggregate balancedness / median ms per call against time_budget_ms")
        sections.append(("engine-anytime", "Engine: quality against a time budget",
                         ANYTIME_TEXT, anytime_curve(real, max(1, args.repeats // 2))))
    if not real and parts != ("shapes",):
        print("no real snapshots in ../shared/data: the topology table and the anytime curve "
              "need them")
    if "shapes" in parts:
        print()
        sections.append(("engine", "Engine: time and quality against the reference", DOC_TEXT,
                         shape_table(real, args.quick, args.repeats)))
    if args.write_docs:
        for key, title, text, lines in sections:
            write_section("engine", title, text + "\n" + "\n".join(lines), key=key)


DOC_TEXT = """Real rows: the DeepSeek-V3 snapshots of `../shared/data` (absent: synthetic only);
synthetic: three lognormal workloads with a hot group. ms: median time of one `plan()` call
over all layers. Gap = peak GPU load / lower bound - 1: global rows against max(W / G, R*),
hierarchical rows against LB_hier (see [engine.md](engine.md)). Global rows compare with the
reference's global policy (one node, one group); `deepseek` is the reference's exact output.
"""
TOPOLOGY_TEXT = """The real DeepSeek-V3 snapshots (58 layers x 256 experts, 288 slots unless
said), one thread, in one process: median ms of one call over all layers, aggregate
balancedness in brackets (sum of mean GPU loads / sum of peaks over every snapshot's layers).
The reference is deepseek-ai/EPLB's algorithm compiled here (`policy="deepseek"`, exact
output). Published planners appear only as columns run from a local copy (`--published
NAME=PATH`); none is kept in this project.
"""
ANYTIME_TEXT = """Aggregate balancedness / median ms per call of `plan(..., time_budget_ms=b)` on
the real snapshots; "(k/6 done)": refinement finished on k of the 6 snapshots within the
budget. Layers refined before the budget runs out keep their refined plan, the others their
start packing (the reference's or better), so every column is at least the reference's.
The start packings are always made: a budget below their time still costs it.
"""


if __name__ == "__main__":
    main()
