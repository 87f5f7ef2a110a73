"""Replay simulator, engine in process (issue 24): `python -m bench.replay`.

Runs a cluster through a trace of windows [T, L, E] (a file, or a series bench/history.py
generates), re-planning every `--interval` windows two ways: as vLLM and SGLang do today (the
DeepSeek reference on the windows summed since the last re-plan, from scratch) and as this
service can (the last `--history` windows with the default objective, the current mapping kept,
at most `--max-moved-slots-per-layer` slots moved per layer). Prints each policy's mean
balancedness over the windows it served and the slots moved per re-plan, and draws the timeline
(--png). A plan only ever serves windows after the ones it was made from (eplb_client.replay).
`eplb-client replay` does the same against a running server.
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from eplb_client.loaders import load_loads
from eplb_client.replay import render_timeline, replay, summary_lines
from eplb_server.engine import api

from .common import real_snapshots
from .history import FAMILIES, NUM_GROUPS, real_pair


def make_trace(family: str, windows: int, layers: int, seed: int) -> np.ndarray:
    """A generated trace: a bench/history.py family, or "real" (two real snapshots mixed with a
    drifting share; the generated "drift medium" where the snapshots are absent)."""
    rng = np.random.default_rng(seed)
    if family == "real":
        snaps = real_snapshots()
        if len(snaps) >= 2:
            pairs = list(itertools.combinations(sorted(snaps), 2))
            a, b = pairs[int(rng.integers(len(pairs)))]
            return real_pair(rng, snaps[a], snaps[b], windows, step=0.15)
        family = "drift medium"
    return FAMILIES[family](rng, windows, layers)


def planners(interval: int, history: int, budget: int, topo, policy: str, objective: str):
    """The two policies as replay planners: (reference, service)."""
    def reference(seen, current):
        return np.asarray(api.plan(seen[-interval:].sum(0), *topo, policy="deepseek").phy2log)

    def service(seen, current):
        return np.asarray(api.plan(seen[-history:], *topo, policy=policy, current_phy2log=current,
                                   max_moved_slots_per_layer=budget, objective=objective).phy2log)

    return reference, service


def bounds(trace, runs, topo, policy) -> np.ndarray:
    """[T] the lower bound's balancedness of every window served (nan elsewhere)."""
    num_replicas, num_groups, num_nodes, num_gpus = topo
    anyone = np.tile(np.arange(num_replicas) % trace.shape[2], (trace.shape[1], 1))
    out = np.full(trace.shape[0], np.nan)
    for t in np.flatnonzero(next(iter(runs.values())).served_by >= 0):
        score = api.evaluate(trace[t], anyone, num_groups, num_nodes, num_gpus, policy=policy)
        out[t] = float((score.gpu_load.mean(1).sum() / score.layer_lower_bound.sum()).item())
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", help="[T, L, E] file (.npy, .npz, .safetensors, .json); "
                                        "default: a generated trace (--family)")
    parser.add_argument("--key", help="array name inside the trace file")
    parser.add_argument("--family", default="real", choices=("real",) + tuple(FAMILIES))
    parser.add_argument("--windows", type=int, default=40, help="generated trace length")
    parser.add_argument("--layers", type=int, default=16, help="generated trace layers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--interval", type=int, default=4, help="windows between re-plans")
    parser.add_argument("--history", type=int, default=8, help="windows the service plans from")
    parser.add_argument("--max-moved-slots-per-layer", type=int, default=16)
    parser.add_argument("--objective", default="default")
    parser.add_argument("--policy", default="auto",
                        choices=("auto", "hierarchical", "global"))
    parser.add_argument("--replicas", type=int, default=288)
    parser.add_argument("--gpus", type=int, default=32)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--groups", type=int, default=NUM_GROUPS)
    parser.add_argument("--png", help="write the timeline here")
    args = parser.parse_args(argv)
    trace = (load_loads(args.trace, args.key).astype(np.float64) if args.trace
             else make_trace(args.family, args.windows, args.layers, args.seed))
    topo = (args.replicas, args.groups, args.nodes, args.gpus)
    budget = (f", at most {args.max_moved_slots_per_layer} slots per layer"
              if args.max_moved_slots_per_layer else "")
    names = ("reference on the summed windows (vLLM/SGLang)",
             f"service: history of {args.history}, mapping kept{budget}")
    plans = planners(args.interval, args.history, args.max_moved_slots_per_layer, topo,
                     args.policy, args.objective)
    runs = replay(trace, args.interval, dict(zip(names, plans)), args.gpus)
    bound = bounds(trace, runs, topo, args.policy)
    source = args.trace or f"{args.family} (seed {args.seed})"
    print(f"{source}: {trace.shape[0]} windows of {trace.shape[1]}x{trace.shape[2]}, re-planned "
          f"every {args.interval}; P={args.replicas} G={args.gpus} N={args.nodes} "
          f"K={args.groups}, policy {args.policy}")
    print("\n".join(summary_lines(runs, bound)))
    if args.png:
        render_timeline(args.png, runs, f"{source}: re-plan every {args.interval} windows, "
                        f"P={args.replicas} on {args.gpus} GPUs ({args.policy})", bound)
        print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
