"""PNG report: per-GPU load heatmaps before and after, per-layer balancedness and its bound."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def gpu_loads(loads, phy2log, num_gpus: int) -> np.ndarray:
    """GPU load [L, G] of a mapping: each replica carries its expert's load / replica count."""
    w = np.asarray(loads, dtype=np.float64)
    if w.ndim == 3:
        w = w.sum(axis=0)
    phy = np.asarray(phy2log, dtype=np.int64)
    layers, slots = phy.shape
    count = np.zeros_like(w)
    np.add.at(count, (np.arange(layers)[:, None], phy), 1.0)
    rows = np.arange(layers)[:, None]
    slot_load = w[rows, phy] / count[rows, phy]
    return slot_load.reshape(layers, num_gpus, slots // num_gpus).sum(axis=2)


def aggregate_bound(score) -> float:
    """Best aggregate balancedness the score's bounds allow: sum of means / sum of bounds."""
    mean = score.layer_balancedness * score.layer_max_load
    total = float(score.layer_lower_bound.sum())
    return float(mean.sum()) / total if total > 0 else 1.0


@dataclass(frozen=True)
class Panel:
    """One mapping to draw: its label, phy2log [L, P] and Score."""

    label: str
    phy2log: np.ndarray
    score: object


def render(path, loads, num_gpus: int, before: Panel, after: Panel, title: str, *,
           num_nodes: int = 1, global_score=None, size=(1600, 1000), dpi: int = 100) -> None:
    """Writes the PNG at exactly `size` pixels (width, height)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.figure import Figure

    rel = []
    for panel in (before, after):
        g = gpu_loads(loads, panel.phy2log, num_gpus)
        mean = g.mean(axis=1, keepdims=True)
        rel.append(np.divide(g, mean, out=np.ones_like(g), where=mean > 0))
    lo, hi = min(float(r.min()) for r in rel), max(float(r.max()) for r in rel)
    norm = TwoSlopeNorm(vcenter=1.0, vmin=min(lo, 1.0 - 1e-3), vmax=max(hi, 1.0 + 1e-3))

    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(2, 3, width_ratios=[1, 1, 0.04], height_ratios=[3, 2],
                            left=0.05, right=0.95, top=0.88, bottom=0.07, hspace=0.35, wspace=0.12)
    image = None
    for col, (panel, r) in enumerate(zip((before, after), rel)):
        ax = fig.add_subplot(grid[0, col])
        image = ax.imshow(r, aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest")
        ax.set_title(f"{panel.label}: balancedness {panel.score.balancedness:.4f}, "
                     f"hottest GPU {r.max():.2f}x mean", fontsize=10)
        for edge in range(1, num_nodes):
            ax.axvline(edge * num_gpus / num_nodes - 0.5, color="black", lw=0.8)
        ax.set_xlabel("GPU" + (" (lines: node boundaries)" if num_nodes > 1 else ""))
        ax.set_ylabel("MoE layer")
    cbar = fig.colorbar(image, cax=fig.add_subplot(grid[0, 2]))
    cbar.set_label("GPU load / layer mean")

    ax = fig.add_subplot(grid[1, :2])
    x = np.arange(len(after.score.layer_balancedness))
    ax.plot(x, before.score.layer_balancedness, "o-", ms=3, color="tab:red", label=before.label)
    ax.plot(x, after.score.layer_balancedness, "o-", ms=3, color="tab:blue", label=after.label)
    ax.plot(x, after.score.layer_balancedness_bound, "--", color="black",
            label="bound (best possible under the policy)")
    if global_score is not None:
        ax.plot(x, global_score.layer_balancedness_bound, ":", color="tab:green", lw=2,
                label="bound without node constraint (global policy)")
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("balancedness (mean / max GPU load)")
    ax.set_ylim(top=1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=12)
    fig.savefig(path, dpi=dpi, format="png")


def make_report(client, loads, png, *, num_replicas: int, num_groups: int, num_nodes: int,
                num_gpus: int, policy: str = "auto", current_phy2log=None, name: str = "",
                size=(1600, 1000), **rebalance_options) -> dict:
    """Plans with `client`, draws the report to `png` and returns its headline numbers.

    Before is the current mapping when given, else the service's policy="deepseek" plan."""
    topo = dict(num_replicas=num_replicas, num_groups=num_groups, num_nodes=num_nodes,
                num_gpus=num_gpus)
    after = client.rebalance(loads, policy=policy, current_phy2log=current_phy2log,
                             **topo, **rebalance_options)
    if current_phy2log is not None:
        before = Panel("current mapping", np.asarray(current_phy2log), after.current)
    else:
        ref = client.rebalance(loads, policy="deepseek", **topo)
        before = Panel("deepseek reference plan", ref.phy2log, ref.plan)
    global_score = None
    if after.policy == "hierarchical":
        global_score = client.evaluate(loads, after.phy2log, num_groups=num_groups,
                                       num_nodes=num_nodes, num_gpus=num_gpus,
                                       policy="global").score
    w = np.asarray(loads)
    bound = aggregate_bound(after.plan)
    summary = {
        "png": str(png), "layers": int(w.shape[-2]), "experts": int(w.shape[-1]), **topo,
        "policy": after.policy, "before": before.label,
        "balancedness_before": before.score.balancedness,
        "balancedness_after": after.plan.balancedness, "balancedness_bound": bound,
        "mean_gap_before": before.score.mean_gap, "mean_gap_after": after.plan.mean_gap,
        "slots_changed": after.migration.slots_changed if after.migration else None,
        "cross_node_copies": after.migration.cross_node_copies if after.migration else None,
        "compute_seconds": after.compute_seconds, "device": after.device,
    }
    if global_score is not None:
        summary["balancedness_bound_global"] = aggregate_bound(global_score)
    render(png, loads, num_gpus, before, Panel(f"{after.policy} plan", after.phy2log, after.plan),
           _title(summary, name), num_nodes=num_nodes, global_score=global_score, size=size)
    return summary


def _title(s: dict, name: str) -> str:
    head = (f"{name + ': ' if name else ''}{s['layers']} layers x {s['experts']} experts -> "
            f"{s['num_replicas']} slots on {s['num_gpus']} GPUs / {s['num_nodes']} nodes "
            f"({s['num_groups']} groups), {s['policy']} policy")
    nums = (f"balancedness {s['balancedness_before']:.4f} -> {s['balancedness_after']:.4f} "
            f"(bound {s['balancedness_bound']:.4f}"
            + (f"; {s['balancedness_bound_global']:.4f} without node constraint"
               if "balancedness_bound_global" in s else "") + ")"
            f" | mean gap {s['mean_gap_before']:.2%} -> {s['mean_gap_after']:.2%}")
    tail = f" | planned in {s['compute_seconds'] * 1e3:.1f} ms on {s['device'] or '?'}"
    if s["slots_changed"] is not None:
        tail = (f" | {s['slots_changed']} slots moved ({s['cross_node_copies']} cross-node)"
                + tail)
    return f"{head}\n{nums}{tail}"
