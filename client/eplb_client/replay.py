"""Replays a trace of load windows [T, L, E] through re-planning policies and scores what each
policy's cluster actually served (issue 24). numpy only; matplotlib for the PNG."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .report import gpu_loads

# planner(seen [b, L, E]: every window before the re-plan, current phy2log [L, P] or None)
# -> the new phy2log [L, P]
Planner = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


@dataclass(frozen=True)
class Replan:
    """One re-plan: made from windows 0 .. made_from_last (the planner saw no later window),
    serving windows made_from_last + 1 onwards until the next; moved: slots whose expert
    changed (None for the first plan, which has no mapping before it)."""

    made_from_last: int
    moved: int | None


@dataclass
class PolicyRun:
    """What one policy served: balancedness [T] per window (nan before its first plan) and
    served_by [T], the index into `replans` of the plan that served each window (-1: none)."""

    name: str
    balancedness: np.ndarray
    served_by: np.ndarray
    replans: list = field(default_factory=list)

    @property
    def mean_balancedness(self) -> float:
        served = self.served_by >= 0
        return float(self.balancedness[served].mean()) if served.any() else float("nan")

    @property
    def moved(self) -> list:
        """Slots moved per re-plan after the first."""
        return [r.moved for r in self.replans if r.moved is not None]

    @property
    def mean_moved(self) -> float:
        return float(np.mean(self.moved)) if self.moved else 0.0


def window_balancedness(load: np.ndarray, phy2log: np.ndarray, num_gpus: int) -> float:
    """Aggregate balancedness of a mapping on one window [L, E]: sum of mean / sum of max."""
    gpu = gpu_loads(load, phy2log, num_gpus)
    peak = gpu.max(1).sum()
    return float(gpu.mean(1).sum() / peak) if peak > 0 else 1.0


def replay(trace, interval: int, planners: dict, num_gpus: int) -> dict:
    """Runs each policy through trace [T, L, E]: after windows interval - 1, 2 interval - 1, ...
    the planner gets the windows seen so far (never a later one) and the mapping in service, and
    its plan serves the next `interval` windows. -> name -> PolicyRun. Windows before the first
    plan are served by no plan and left out of the means."""
    trace = np.asarray(trace, dtype=np.float64)
    if trace.ndim != 3:
        raise ValueError(f"a trace must be [windows, layers, experts], got shape {list(trace.shape)}")
    if not 1 <= interval < trace.shape[0]:
        raise ValueError(f"interval must be in [1, {trace.shape[0] - 1}] for a trace of "
                         f"{trace.shape[0]} windows, got {interval}")
    runs = {}
    for name, planner in planners.items():
        run = runs[name] = PolicyRun(name, np.full(trace.shape[0], np.nan),
                                     np.full(trace.shape[0], -1, np.int64))
        current = None
        for start in range(interval, trace.shape[0], interval):
            seen = trace[:start]
            seen.setflags(write=False)
            phy2log = np.asarray(planner(seen, current), dtype=np.int64)
            moved = None if current is None else int((phy2log != current).sum())
            run.replans.append(Replan(made_from_last=start - 1, moved=moved))
            for t in range(start, min(start + interval, trace.shape[0])):
                run.balancedness[t] = window_balancedness(trace[t], phy2log, num_gpus)
                run.served_by[t] = len(run.replans) - 1
            current = phy2log
    return runs


def summary_lines(runs: dict, bound: np.ndarray | None = None) -> list:
    """One line per policy: mean balancedness served, slots moved per re-plan."""
    width = max(len(n) for n in runs)
    lines = [f"{'policy':<{width}}  {'mean balancedness':>17}  {'re-plans':>8}  "
             f"{'slots moved per re-plan':>23}"]
    for run in runs.values():
        lines.append(f"{run.name:<{width}}  {run.mean_balancedness:>17.4f}  "
                     f"{len(run.replans):>8d}  {run.mean_moved:>23.1f}")
    if bound is not None:
        served = next(iter(runs.values())).served_by >= 0
        lines.append(f"{'bound (each window planned on itself)':<{width}}  "
                     f"{float(np.nanmean(bound[served])):>17.4f}")
    return lines


def render_timeline(path, runs: dict, title: str, bound: np.ndarray | None = None,
                    size=(1400, 800), dpi: int = 100) -> None:
    """PNG: balancedness of every window served per policy (re-plans marked), and the slots
    each re-plan moved."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 2], sharex=True)
    colors = ("tab:red", "tab:blue", "tab:green", "tab:purple")
    windows = np.arange(len(next(iter(runs.values())).balancedness))
    if bound is not None:
        top.plot(windows, bound, ":", color="black", label="bound (window planned on itself)")
    runs_list = list(runs.values())
    for i, (run, color) in enumerate(zip(runs_list, colors)):
        top.plot(windows, run.balancedness, "o-", ms=3, color=color,
                 label=f"{run.name}: mean {run.mean_balancedness:.4f}")
        starts = [r.made_from_last + 1 for r in run.replans]
        moved = [r.moved if r.moved is not None else 0 for r in run.replans]
        offset = (i - (len(runs_list) - 1) / 2) * 0.8 / len(runs_list)
        bottom.bar(np.array(starts) + offset, moved, width=0.8 / len(runs_list), color=color,
                   label=f"{run.name}: mean {run.mean_moved:.0f} per re-plan")
    for start in (r.made_from_last + 1 for r in runs_list[0].replans):
        top.axvline(start - 0.5, color="grey", lw=0.5, ls="--")
    top.set_ylabel("balancedness of the window served")
    top.set_title(title, fontsize=11)
    top.legend(loc="best", fontsize=9, framealpha=0.8)
    top.grid(alpha=0.3)
    bottom.set_yscale("symlog", linthresh=10)  # budgeted and unbudgeted moves differ 10-100x
    most = max([m for run in runs_list for m in run.moved] + [10])
    bottom.set_ylim(0, most * 40)  # room for the legend above the bars
    bottom.set_ylabel("slots moved by the re-plan")
    bottom.set_xlabel("window (dashed lines: re-plans, made from the windows before them)")
    bottom.legend(loc="best", fontsize=9, framealpha=0.8)
    bottom.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
