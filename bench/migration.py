"""Migration-aware re-planning vs from-scratch planning on drifting workloads (issue 5).

    python -m bench.migration [--steps 6] [--drift 0.15] [--repeat 3] [--gpus 32] [--write-docs]

Per step: slots moved and cross-node copies, balancedness on the window planned for and on the
next one, planning time, for a chain that re-plans from scratch and one that passes its current
mapping; 58x256 -> 288 slots, G32 N4 K8 (--gpus: another GPU count), hierarchical and global.
Real snapshots are read from ../shared/data/deepseek-v3 when present (consecutive files form the
pairs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from eplb_server.engine.api import evaluate, plan

from .docs import write_section

SHAPE = dict(num_replicas=288, num_groups=8, num_nodes=4, num_gpus=32)
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "deepseek-v3"


def drifting(steps: int, step_size: float, seed: int = 0, layers: int = 58, experts: int = 256):
    """[steps + 1, L, E]: lognormal popularity whose log does a random walk window to window,
    sampled as token counts (multinomial noise)."""
    rng = np.random.default_rng(seed)
    log_pop = rng.normal(0.0, 1.0, (layers, experts))
    out = []
    for _ in range(steps + 1):
        p = np.exp(log_pop)
        p /= p.sum(1, keepdims=True)
        out.append(np.stack([rng.multinomial(200_000, row) for row in p]).astype(np.float64))
        log_pop = log_pop + rng.normal(0.0, step_size, log_pop.shape)
    return out


def snapshots():
    if not DATA.is_dir():
        return None
    windows = []
    for path in sorted(DATA.glob("*.json")):
        w = np.asarray(json.loads(path.read_text())["logical_count"], dtype=np.float64)
        windows.append(w[w.sum(1) > 0])
    return windows if len(windows) > 1 else None


def timed_pair(repeat, first, second):
    """Calls first and second alternately, `repeat` times each, so that the machine's drift
    falls on both alike. -> (first's result, its best ms, second's result, its best ms)"""
    best, out = [np.inf, np.inf], [None, None]
    for _ in range(repeat):
        for k, fn in enumerate((first, second)):
            start = time.perf_counter()
            out[k] = fn()
            best[k] = min(best[k], time.perf_counter() - start)
    return out[0], best[0] * 1e3, out[1], best[1] * 1e3


def run_chain(windows, policy, repeat, shape=SHAPE):
    """Rows per step i >= 1: plans on window i given the plan of step i - 1."""
    kw = dict(shape, policy=policy)
    bal = lambda w, m: evaluate(torch.tensor(w), m, shape["num_groups"], shape["num_nodes"],  # noqa
                                shape["num_gpus"], policy=policy).balancedness
    scratch_prev = mig_prev = plan(torch.tensor(windows[0]), **kw).phy2log
    rows = []
    for i in range(1, len(windows)):
        w = torch.tensor(windows[i])
        nxt = windows[i + 1] if i + 1 < len(windows) else None
        scratch, t_s, mig, t_m = timed_pair(repeat, lambda: plan(w, **kw),
                                            lambda: plan(w, current_phy2log=mig_prev, **kw))
        per_node = shape["num_replicas"] // shape["num_nodes"]
        diff = scratch.phy2log != scratch_prev
        node = torch.arange(shape["num_replicas"]) // per_node
        # from-scratch copies: cross-node unless some slot on the node held the expert
        cross_s = 0
        for layer, slot in diff.nonzero().tolist():
            e = scratch.phy2log[layer, slot]
            cross_s += int(not (scratch_prev[layer][node == node[slot]] == e).any())
        rows.append(dict(
            step=i, moved_s=int(diff.sum()), moved_m=mig.migration.slots_changed,
            cross_s=cross_s, cross_m=mig.migration.cross_node_copies,
            kept=mig.migration.layers_kept_for_lack_of_gain,
            bal_s=bal(windows[i], scratch.phy2log), bal_m=bal(windows[i], mig.phy2log),
            next_s=bal(nxt, scratch.phy2log) if nxt is not None else float("nan"),
            next_m=bal(nxt, mig.phy2log) if nxt is not None else float("nan"),
            ms_s=t_s, ms_m=t_m))
        scratch_prev, mig_prev = scratch.phy2log, mig.phy2log
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--drift", type=float, default=0.15)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--gpus", type=int, default=SHAPE["num_gpus"],
                        help="a multiple of 4 dividing 288 (e.g. 144: 2 slots per GPU)")
    parser.add_argument("--write-docs", action="store_true",
                        help="also write the summary into docs/benchmarks.md")
    args = parser.parse_args(argv)
    shape = dict(SHAPE, num_gpus=args.gpus)
    plan(torch.tensor(drifting(1, 0.1)[0]), **shape)  # compile
    suites = [(f"drift{args.drift}", drifting(args.steps, args.drift))]
    real = snapshots()
    if real is None:
        print(f"(no snapshots at {DATA}: real pairs skipped)")
    else:
        suites.append(("real", real))
    head = (f"{'workload':>10} {'policy':>12} {'step':>4} | {'moved scr':>9} {'mig':>6} {'ratio':>6}"
            f" | {'xnode scr':>9} {'mig':>6} | {'kept':>4} | {'bal scr':>7} {'mig':>7} {'d%':>6}"
            f" | {'next scr':>8} {'mig':>7} | {'ms scr':>7} {'mig':>7} {'x':>5}")
    print(head)
    print("-" * len(head))
    summary = []
    for name, windows in suites:
        for policy in ("hierarchical", "global"):
            rows = run_chain(windows, policy, args.repeat, shape)
            for r in rows:
                print(f"{name:>10} {policy:>12} {r['step']:>4} | {r['moved_s']:>9} {r['moved_m']:>6}"
                      f" {r['moved_m'] / max(r['moved_s'], 1):>6.1%} | {r['cross_s']:>9}"
                      f" {r['cross_m']:>6} | {r['kept']:>4} | {r['bal_s']:>7.4f} {r['bal_m']:>7.4f}"
                      f" {100 * (r['bal_m'] / r['bal_s'] - 1):>6.2f} | {r['next_s']:>8.4f}"
                      f" {r['next_m']:>7.4f} | {r['ms_s']:>7.1f} {r['ms_m']:>7.1f}"
                      f" {r['ms_m'] / r['ms_s']:>5.2f}")
            tot = lambda k: sum(r[k] for r in rows)  # noqa: E731
            summary.append((name, policy, tot("moved_m") / max(tot("moved_s"), 1),
                            tot("bal_m") / tot("bal_s") - 1, tot("ms_m") / tot("ms_s")))
    print("\nsummary: workload policy | moved mig/scratch | balancedness mig vs scratch | time x")
    for name, policy, ratio, dbal, slow in summary:
        print(f"  {name:>10} {policy:>12} | {ratio:7.1%} | {100 * dbal:+.2f}% | {slow:.2f}x")
    if args.write_docs:
        table = ["| workload | policy | slots moved vs from scratch | balancedness vs from scratch "
                 "| planning time vs from scratch |", "|---|---|---|---|---|"]
        table += [f"| {name} | {policy} | {ratio:.1%} | {100 * dbal:+.2f}% | {slow:.2f}x |"
                  for name, policy, ratio, dbal, slow in summary]
        write_section("migration",
                      f"Migration: re-planning from the current mapping, {args.gpus} GPUs",
                      DOC_TEXT.format(steps=args.steps, drift=args.drift, gpus=args.gpus,
                                      repeat=args.repeat) + "\n" + "\n".join(table),
                      argv=argv, key=f"migration-g{args.gpus}")


DOC_TEXT = """58x256 -> 288 slots on {gpus} GPUs in 4 nodes (K = 8). Each chain plans window i
once from scratch and once from the plan it made for window i - 1 (`current_phy2log`), over
{steps} steps: a generated workload whose log-popularity drifts (step {drift}) and consecutive
pairs of the real snapshots. Sums over the steps; the two plans are timed alternately (best of
{repeat} each), so the machine's drift falls on both.
"""


if __name__ == "__main__":
    main()
