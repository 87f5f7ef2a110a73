"""Predictive benchmark for planning from a load history (issue 6): `python -m bench.history`.

Plan on windows i-T+1..i (T = 8), score on window i+1, and print one table of next-window
balancedness (sum over layers of mean GPU load / sum over layers of peak GPU load) per objective,
for single-window planning (window i only) and for the oracle bound (the next window's own lower
bound: sum of means / sum of per-layer lower bounds).

Series: generated drifting workloads (popularity random walk, bursts of a few hot experts, phase
changes between prefill-like and decode-like mixes) and the real DeepSeek-V3 snapshots in
../shared/data/deepseek-v3 taken pairwise (each window a mix of two snapshots whose share drifts;
skipped when the data is absent; the data is read in place, never copied).

"closed" = (default - sum) / (oracle - sum): the share of the distance between the summed-load
plan and the next window's lower bound that the default objective closes.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from eplb_server.engine import api
from eplb_server.engine.history import DEFAULT_OBJECTIVE, OBJECTIVES
from eplb_server.engine.scoring import gpu_loads, lower_bound

from .common import SNAPSHOTS, call_times, real_snapshots
from .docs import write_section

NUM_EXPERTS, NUM_GROUPS = 256, 8


# ---------------------------------------------------------------- generated series [W, L, E]
def _sample(rng, popularity, tokens):
    """Token counts per expert for one window: Poisson around the popularity share."""
    share = popularity / popularity.sum(-1, keepdims=True)
    return rng.poisson(share * tokens).astype(np.float64)


def random_walk(rng, windows, layers, tokens=2e5, step=0.25):
    log_pop = rng.normal(0.0, 1.0, (layers, NUM_EXPERTS))
    out = []
    for _ in range(windows):
        log_pop = log_pop + rng.normal(0.0, step, log_pop.shape)
        out.append(_sample(rng, np.exp(log_pop), tokens))
    return np.stack(out)


def bursts(rng, windows, layers, tokens=2e5, hot=3, factor=(4.0, 12.0), length=(1, 4)):
    base = np.exp(rng.normal(0.0, 0.8, (layers, NUM_EXPERTS)))
    boost = np.ones((windows, layers, NUM_EXPERTS))
    for layer in range(layers):
        t = 0
        while t < windows:
            if rng.random() < 0.5:
                experts = rng.choice(NUM_EXPERTS, hot, replace=False)
                span = rng.integers(length[0], length[1] + 1)
                boost[t:t + span, layer, experts] *= rng.uniform(*factor, hot)
            t += 1
    return np.stack([_sample(rng, base * boost[t], tokens) for t in range(windows)])


def phases(rng, windows, layers, tokens=2e5, switch=0.3):
    """Two mixes (prefill-like: flatter; decode-like: more skewed, hot groups) and phase changes."""
    prefill = np.exp(rng.normal(0.0, 0.6, (layers, NUM_EXPERTS)))
    group_heat = np.exp(rng.normal(0.0, 0.8, (layers, NUM_GROUPS)))
    decode = np.exp(rng.normal(0.0, 1.2, (layers, NUM_EXPERTS))) * np.repeat(
        group_heat, NUM_EXPERTS // NUM_GROUPS, axis=1)
    prefill /= prefill.sum(1, keepdims=True)
    decode /= decode.sum(1, keepdims=True)
    phase, out = 0, []
    for _ in range(windows):
        if rng.random() < switch:
            phase = 1 - phase
        share = rng.uniform(0.7, 0.95) if phase == 0 else rng.uniform(0.05, 0.3)
        out.append(_sample(rng, share * prefill + (1 - share) * decode, tokens))
    return np.stack(out)


def real_pair(rng, a, b, windows, step=0.2):
    """Each window a mix s * a + (1 - s) * b of two real snapshots; s drifts as a random walk."""
    a, b = a / a.sum(1, keepdims=True), b / b.sum(1, keepdims=True)
    share, out = rng.uniform(0, 1), []
    for _ in range(windows):
        share = float(np.clip(share + rng.normal(0, step), 0, 1))
        out.append((share * a + (1 - share) * b) * 6.7e7)
    return np.stack(out)


# ---------------------------------------------------------------- scoring
def balancedness(load, phy2log, num_gpus):
    gpu = gpu_loads(load, phy2log, num_gpus)
    return gpu.mean(1).sum() / gpu.max(1).sum()


def oracle(load, topo, hierarchical):
    num_replicas, num_groups, num_nodes, num_gpus = topo
    bound = lower_bound(load, num_replicas, num_groups, num_nodes, num_gpus, hierarchical)
    return (load.sum(1) / num_gpus).sum() / bound.sum()


COLUMNS = ("single",) + OBJECTIVES + ("oracle",)


def evaluate_series(series, topo, policy, history, points):
    """Mean next-window balancedness per column over the last `points` plan/score steps."""
    num_replicas, num_groups, num_nodes, num_gpus = topo
    hierarchical = policy == "hierarchical"
    rows = {c: [] for c in COLUMNS}
    for i in range(series.shape[0] - points - 1, series.shape[0] - 1):
        window, nxt = series[i - history + 1:i + 1], series[i + 1]
        single = api.plan(series[i], *topo, policy=policy)
        rows["single"].append(balancedness(nxt, single.phy2log.numpy(), num_gpus))
        for objective in OBJECTIVES:
            p = api.plan(window, *topo, policy=policy, objective=objective)
            rows[objective].append(balancedness(nxt, p.phy2log.numpy(), num_gpus))
        rows["oracle"].append(oracle(nxt, topo, hierarchical))
    return {c: float(np.mean(v)) for c, v in rows.items()}


def timing(series, topo, policy, history, repeats=15):
    def best(fn):
        return min(call_times(fn, repeats)) * 1e3

    single = best(lambda: api.plan(series[-1], *topo, policy=policy))
    return single, {o: best(lambda o=o: api.plan(series[-history:], *topo, policy=policy,
                                                  objective=o)) for o in OBJECTIVES}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policy", default="global", choices=("global", "hierarchical"))
    parser.add_argument("--history", type=int, default=8, help="windows T planned on")
    parser.add_argument("--points", type=int, default=6, help="plan/score steps per series")
    parser.add_argument("--layers", type=int, default=16, help="layers of generated series")
    parser.add_argument("--seeds", type=int, default=2, help="generated series per kind")
    parser.add_argument("--replicas", type=int, default=288)
    parser.add_argument("--gpus", type=int, default=32)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--write-docs", action="store_true",
                        help="also write the summary into docs/benchmarks.md")
    args = parser.parse_args(argv)
    topo = (args.replicas, NUM_GROUPS, args.nodes, args.gpus)
    windows = args.history + args.points + 1
    series = {}
    for seed in range(args.seeds):
        for name, make in (("random walk", random_walk), ("bursts", bursts), ("phases", phases)):
            rng = np.random.default_rng(1000 * seed + len(name))
            series[f"{name} #{seed}"] = make(rng, windows, args.layers)
    snaps = real_snapshots()
    if snaps:
        rng = np.random.default_rng(7)
        for a, b in itertools.combinations(sorted(snaps), 2):
            series[f"real {a[:14]}|{b[:14]}"] = real_pair(rng, snaps[a], snaps[b], windows)
    else:
        print(f"(real snapshots absent at {SNAPSHOTS}: skipped)")

    print(f"policy={args.policy} P={args.replicas} G={args.gpus} N={args.nodes} K={NUM_GROUPS} "
          f"T={args.history}; next-window balancedness, mean of {args.points} steps per series; "
          f"default = {DEFAULT_OBJECTIVE}")
    header = f"{'series':<34}" + "".join(f"{c:>14}" for c in COLUMNS) + f"{'closed':>9}"
    print(header)
    print("-" * len(header))
    results = {}
    for name, s in series.items():
        r = evaluate_series(s, topo, args.policy, args.history, args.points)
        results[name] = r
        gap = r["oracle"] - r["sum"]
        closed = (r[DEFAULT_OBJECTIVE] - r["sum"]) / gap if gap > 0 else float("nan")
        r["closed"] = closed
        print(f"{name:<34}" + "".join(f"{r[c]:>14.4f}" for c in COLUMNS) + f"{closed:>9.2f}")
    print("-" * len(header))
    for label, names in (("mean generated", [n for n in results if not n.startswith("real")]),
                         ("mean real pairs", [n for n in results if n.startswith("real")]),
                         ("mean all", list(results))):
        if not names:
            continue
        mean = {c: np.mean([results[n][c] for n in names]) for c in COLUMNS + ("closed",)}
        print(f"{label:<34}" + "".join(f"{mean[c]:>14.4f}" for c in COLUMNS)
              + f"{mean['closed']:>9.2f}")
    beats = {o: sum(results[n][o] > results[n]["sum"] for n in results) for o in OBJECTIVES}
    print("series where the objective beats the summed-load plan: "
          + ", ".join(f"{o} {beats[o]}/{len(results)}" for o in OBJECTIVES if o != "sum"))
    closed = {o: np.mean([(results[n][o] - results[n]["sum"]) / (results[n]["oracle"] - results[n]["sum"])
                          for n in results]) for o in OBJECTIVES if o != "sum"}
    print("mean share of the sum->oracle distance closed: "
          + ", ".join(f"{o} {v:.2f}" for o, v in closed.items()))
    name = next(iter(series))
    single, per_objective = timing(series[name][:, :, :], topo, args.policy, args.history)
    print(f"time per plan ({series[name].shape[1]} layers): single window {single:.1f} ms; T="
          f"{args.history}: " + ", ".join(f"{o} {t:.1f} ms ({t / single:.2f}x)"
                                          for o, t in per_objective.items()))
    if args.write_docs:
        groups = (("generated", [n for n in results if not n.startswith("real")]),
                  ("real snapshot mixtures", [n for n in results if n.startswith("real")]))
        table = ["| series | count | " + " | ".join(COLUMNS) + " | closed |",
                 "|---|---|" + "---|" * (len(COLUMNS) + 1)]
        for label, names in groups:
            if names:
                mean = {c: np.mean([results[n][c] for n in names]) for c in COLUMNS + ("closed",)}
                table.append(f"| {label} | {len(names)} | "
                             + " | ".join(f"{mean[c]:.4f}" for c in COLUMNS)
                             + f" | {mean['closed']:.2f} |")
        times = ", ".join(f"{o} {t / single:.2f}x" for o, t in per_objective.items())
        write_section("history", "Planning from a load history", DOC_TEXT.format(
            policy=args.policy, T=args.history, back=args.history - 1, points=args.points,
            default=DEFAULT_OBJECTIVE)
            + "\n" + "\n".join(table) + f"\n\nTime of a T={args.history} plan against a "
            f"single-window plan ({single:.1f} ms, {series[name].shape[1]} layers): {times}.",
            argv=argv)


DOC_TEXT = """Plan on the last {T} windows i-{back}..i, score balancedness on window i+1 ({policy}
policy, {points} steps per series, means over the series). Columns: `single` (plan on window i
alone), the objectives on the T windows, and `oracle` (the next window's own bound). closed: the
share of the distance from the summed-load plan (`sum`) to the oracle that the default
objective (`{default}`) closes.
"""


if __name__ == "__main__":
    main()
