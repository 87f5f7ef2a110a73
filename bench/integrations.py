"""Engine adapters: one EP32 rebalance through each adapter beside the engine's own algorithm,
and the time to fall back when the service is down, as one table.

    python -m bench.integrations [--repeats 15] [--target HOST:PORT] [--wheels DIR]

Starts `python -m eplb_server` (warm on 58x256:288:32:4:8) unless --target names a running one.
vLLM: the policy's rebalance_experts on a real window [58, 256] with the current map [58, 288];
SGLang: rebalance_experts on 4 real windows [4, 61, 256] (dense layers included) with the current
map read from its metadata. With --wheels (or $EPLB_ENGINE_WHEELS) holding the vLLM / SGLang
wheels, the engines' own algorithms run beside the adapters and serve as their fallbacks.
Every timed call sends loads of its own (a server may share answers among identical requests);
the 32 ranks send one request, as the ranks of a cluster do. "Down" rows call an adapter whose
target is a closed port; their fallback returns at once, so the
time is what detecting the failure costs: a fresh client (first call) and a reused one.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import tempfile
import time
import types

import numpy as np
import torch
from eplb_client import EplbClient
from eplb_client.integrations import sglang, vllm
from eplb_client.integrations._service import Settings

from .common import SNAPSHOTS
from .service import start_server

EP32 = (288, 8, 4, 32)


def snapshots():
    import json

    paths = sorted(SNAPSHOTS.glob("*.json"))
    if not paths:
        raise SystemExit(f"no snapshots in {SNAPSHOTS}")
    return [np.asarray(json.loads(p.read_text())["logical_count"], dtype=np.int64)
            for p in paths]


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


class Fresh:
    """Loads that differ on every call (one count in layer 0 grows by one), so that a server
    that shares answers among identical requests plans each call anew."""

    def __init__(self, loads):
        self.loads = loads
        self.calls = 0

    def __call__(self):
        self.calls += 1
        out = self.loads.clone()
        out[..., 0, 0] += self.calls
        return out


def timed(fn, repeats):
    fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


class Instant:
    """A fallback that answers at once, so that a 'down' row times the failure alone."""

    @classmethod
    def rebalance_experts(cls, weight, num_replicas, *rest) -> torch.Tensor:
        return torch.zeros(weight.shape[0], num_replicas, dtype=torch.int64)


def instant_sglang(tokens_per_expert, num_physical_experts, *rest):
    return None


def engines(folder):
    """(vLLM DefaultEplbPolicy or None, its version, SGLang eplb_algorithms or None, version)."""
    if folder:
        os.environ["EPLB_ENGINE_WHEELS"] = folder
    from tests.integrations import engines as e

    out = tempfile.mkdtemp(prefix="eplb-engines-")
    policy = algorithms = None
    vllm_version = sglang_version = "-"
    if e.wheels("vllm"):
        wheel = e.wheels("vllm")[-1]
        _, policy = e.load_vllm_policy(wheel, e.pathlib.Path(out) / "vllm")
        vllm_version = e.version_of(wheel)
    if e.wheels("sglang"):
        wheel = e.wheels("sglang")[-1]
        algorithms, _ = e.load_sglang(wheel, e.pathlib.Path(out) / "sglang")
        sglang_version = e.version_of(wheel)
    return policy, vllm_version, algorithms, sglang_version


def all_ranks_at_once(fallback, settings, window, current, count):
    """Every EP rank's policy (a thread with its own channel, as each rank is a process) asks at
    once; -> (per-rank ms, fallbacks, distinct plans)."""
    import threading

    from eplb_client.integrations import _service

    policies = [vllm.make_policy(fallback, settings) for _ in range(count)]
    for p in policies:  # connect first, as ranks that have planned before are connected
        p.eplb_service_caller.client().health()
    before = _service.FALLBACKS.total()
    times, plans = [0.0] * count, [None] * count
    start = threading.Barrier(count)

    def rank(i):
        start.wait()
        t = time.perf_counter()
        plans[i] = policies[i].rebalance_experts(window, *EP32, current)
        times[i] = (time.perf_counter() - t) * 1e3

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    distinct = len({p.numpy().tobytes() for p in plans})
    return times, _service.FALLBACKS.total() - before, distinct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--target")
    parser.add_argument("--wheels", default=os.environ.get("EPLB_ENGINE_WHEELS"))
    args = parser.parse_args()
    snaps = snapshots()
    proc = None
    target = args.target
    if target is None:
        proc, target = start_server(tempfile.mktemp(suffix=".sock"))
    try:
        run(args, snaps, target)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)


def run(args, snaps, target):
    own_policy, vllm_version, algorithms, sglang_version = engines(args.wheels)
    settings = Settings(target=target, deadline=30)
    moe = [torch.from_numpy(s[s.any(axis=1)]) for s in snaps]
    window, previous = moe[1], moe[0]
    rows = []

    fallback = own_policy or Instant
    policy = vllm.make_policy(fallback, settings)
    current = policy.rebalance_experts(previous, *EP32, None)
    current = current[0] if isinstance(current, tuple) else current
    fresh = Fresh(window)
    vllm_name = f"DefaultEplbPolicy {vllm_version}" if own_policy else "stand-in"
    rows.append((f"vLLM adapter ({vllm_name})",
                 timed(lambda: policy.rebalance_experts(fresh(), *EP32, current), args.repeats)))
    if own_policy is not None:
        rows.append((f"  vLLM {vllm_version} DefaultEplbPolicy itself",
                     timed(lambda: own_policy.rebalance_experts(window, *EP32, current),
                           args.repeats)))
    with EplbClient(target) as c:
        rows.append(("  EplbClient.rebalance, the same request", timed(
            lambda: c.rebalance(fresh().numpy(), num_replicas=288, num_groups=8, num_nodes=4,
                                num_gpus=32, current_phy2log=current.numpy()), args.repeats)))

    history = torch.from_numpy(np.stack(snaps[:4]))
    first = policy.rebalance_experts(torch.from_numpy(snaps[0]), *EP32, None)
    sglang_current = (first[0] if isinstance(first, tuple) else first).numpy()
    around = sglang.make_around(settings, placement=lambda layers: sglang_current)
    own = algorithms.rebalance_experts if algorithms is not None else instant_sglang
    algorithm = (algorithms.EplbAlgorithm.deepseek_hierarchical if algorithms is not None
                 else types.SimpleNamespace(name="deepseek_hierarchical"))
    sglang_args = (history, 288, 9, 8, 4, algorithm)
    fresh_history = Fresh(history)
    sglang_name = f", {sglang_version}" if algorithms else ""
    rows.append((f"SGLang adapter (4 windows x 61 layers{sglang_name})",
                 timed(lambda: around(own, fresh_history(), *sglang_args[1:]), args.repeats)))
    if algorithms is not None:
        rows.append((f"  SGLang {sglang_version} deepseek_hierarchical itself",
                     timed(lambda: own(*sglang_args), args.repeats)))

    ranks = all_ranks_at_once(fallback, settings, fresh(), current, 32)

    down = closed_port()
    down_settings = Settings(target=down, deadline=5)

    def fresh_vllm():
        vllm.make_policy(Instant, down_settings).rebalance_experts(window, *EP32, current)

    reused = vllm.make_policy(Instant, down_settings)
    rows.append(("vLLM adapter, service down: fresh client", timed(fresh_vllm, args.repeats)))
    rows.append(("vLLM adapter, service down: reused client",
                 timed(lambda: reused.rebalance_experts(window, *EP32, current), args.repeats)))
    down_around = sglang.make_around(down_settings, placement=lambda layers: None)
    rows.append(("SGLang adapter, service down: reused client",
                 timed(lambda: down_around(instant_sglang, *sglang_args), args.repeats)))

    times, fell_back, distinct = ranks
    rows.append((f"vLLM adapter, 32 ranks at once ({fell_back} fell back, {distinct} plan"
                 f"{'s' if distinct > 1 else ''})", times))
    print(f"EP32 (288 slots, 32 GPUs, 4 nodes, 8 groups), {args.repeats} calls each, ms")
    print(f"| {'call':58s} | median |   p10 |   p90 |   max |")
    print(f"| {'-' * 58} | ------ | ----- | ----- | ----- |")
    for name, values in rows:
        q = np.percentile(values, [10, 90])
        print(f"| {name:58s} | {statistics.median(values):6.1f} | {q[0]:5.1f} | {q[1]:5.1f} "
              f"| {max(values):5.1f} |")


if __name__ == "__main__":
    main()
