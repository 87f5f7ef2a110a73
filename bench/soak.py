"""Soak: bounded loopback load on a subprocess server, mixed request sizes, answers checked.

    python -m bench.soak [--requests 10000] [--clients 32] [--max-concurrent 16]
                         [--warmup-requests 1000] [--target HOST:PORT --server-pid PID]

Starts `python -m eplb_server` on 127.0.0.1 (unless --target names a running one), then
`--clients` concurrent clients (one gRPC channel each) send `--requests` Rebalance calls drawn
from a fixed mix of shapes, from 4x16 -> 32 up to the largest engine shape 61x512 -> 640 G320.
Every answer is compared with the in-process engine (`eplb_server.plan`) on the same request.
`RESOURCE_EXHAUSTED` is the designed answer to more than --max-concurrent requests at once;
the client counts it, backs off (20 ms doubling to 320 ms, jittered) and sends its next request. Prints p50/p99 latency (OK calls), throughput,
errors by status code, mismatches, and the server's resident memory after the warm-up requests
and at the end. The default size finishes in a few minutes on two cores.

The harness (`Shape`, `build_cases`, `run_load`) is shared with tests/reliability/test_load.py,
which runs it with small shapes only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import pathlib
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Optional

import grpc
import numpy as np

from eplb_client.tensors import from_tensor, to_tensor
from eplb_client.v1 import placement_pb2 as pb
from eplb_client.v1 import placement_pb2_grpc as pb_grpc

ROOT = pathlib.Path(__file__).resolve().parent.parent
_POLICIES = {"auto": pb.POLICY_AUTO, "hierarchical": pb.POLICY_HIERARCHICAL,
             "global": pb.POLICY_GLOBAL, "deepseek": pb.POLICY_DEEPSEEK}
_OBJECTIVES = {"default": pb.OBJECTIVE_UNSPECIFIED, "sum": pb.OBJECTIVE_SUM,
               "expected_peak": pb.OBJECTIVE_EXPECTED_PEAK, "recency": pb.OBJECTIVE_RECENCY,
               "robust": pb.OBJECTIVE_ROBUST}


@dataclass(frozen=True)
class Shape:
    """One kind of request: loads [windows, ]layers x experts onto P slots of G GPUs."""

    name: str
    layers: int
    experts: int
    replicas: int
    groups: int
    nodes: int
    gpus: int
    policy: str = "auto"
    windows: Optional[int] = None  # a load history [T, L, E]
    objective: str = "default"
    with_mapping: bool = False  # send a current mapping (migration-aware plan)
    share: float = 1.0  # relative frequency in the mix

    @property
    def warmup_spec(self) -> str:
        """The server's --warmup-shapes form LxE:P:G:N:K."""
        return (f"{self.layers}x{self.experts}:{self.replicas}:{self.gpus}:{self.nodes}:"
                f"{self.groups}")


# Small shapes: fast enough for a CI test with 32 clients.
SMALL_MIX = [
    Shape("4x16->32 auto", 4, 16, 32, 4, 2, 8, share=4),
    Shape("4x16->32 deepseek", 4, 16, 32, 4, 2, 8, policy="deepseek", share=2),
    Shape("4x16->32 global, mapping", 4, 16, 32, 4, 2, 8, policy="global", with_mapping=True,
          share=2),
    Shape("3x4x16->32 history", 4, 16, 32, 4, 2, 8, windows=3, objective="expected_peak",
          share=1),
    Shape("8x64->80 G8 global", 8, 64, 80, 8, 2, 8, policy="global", share=2),
    Shape("16x128->160 hier", 16, 128, 160, 8, 2, 16, policy="hierarchical", share=1),
]
# The soak adds the production shapes, up to the largest engine shape.
SOAK_MIX = SMALL_MIX + [
    Shape("58x256->288 G32 hier", 58, 256, 288, 8, 4, 32, share=1.0),
    Shape("58x256->288 G32 mapping", 58, 256, 288, 8, 4, 32, with_mapping=True, share=0.5),
    Shape("61x512->640 G320 global", 61, 512, 640, 16, 40, 320, policy="global", share=0.15),
]


@dataclass
class Case:
    shape: Shape
    request: pb.RebalanceRequest
    expected: tuple  # (phy2log, log2phy, logcnt) from the in-process engine


def _weight(shape: Shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dims = (shape.layers, shape.experts)
    dims = dims if shape.windows is None else (shape.windows,) + dims
    return np.round(rng.lognormal(0.0, 1.2, dims) * 1000)


def build_cases(mix, variants: int = 2, seed: int = 0) -> list[Case]:
    """`variants` distinct requests per shape, each with the in-process engine's answer."""
    import torch

    import eplb_server

    cases = []
    for k, shape in enumerate(mix):
        topology = (shape.replicas, shape.groups, shape.nodes, shape.gpus)
        for v in range(variants):
            weight = _weight(shape, seed + 1000 * k + v)
            current = None
            if shape.with_mapping:  # the plan of other loads is the cluster's mapping now
                other = _weight(shape, seed + 1000 * k + v + 500)
                current = eplb_server.plan(torch.from_numpy(other), *topology).phy2log
            plan = eplb_server.plan(torch.from_numpy(weight), *topology, policy=shape.policy,
                                    current_phy2log=current, objective=shape.objective)
            request = pb.RebalanceRequest(
                model="soak", policy=_POLICIES[shape.policy], expert_loads=to_tensor(weight),
                topology=pb.Topology(num_replicas=shape.replicas, num_groups=shape.groups,
                                     num_nodes=shape.nodes, num_gpus=shape.gpus))
            request.history.objective = _OBJECTIVES[shape.objective]
            if current is not None:
                request.current_phy2log.CopyFrom(to_tensor(current.numpy()))
            expected = tuple(t.numpy() for t in (plan.phy2log, plan.log2phy, plan.logcnt))
            cases.append(Case(shape, request, expected))
    return cases


def schedule(cases, count: int, seed: int = 0) -> np.ndarray:
    """`count` case indices drawn by the shapes' shares (a fixed sequence for a seed)."""
    weights = np.array([c.shape.share for c in cases], dtype=np.float64)
    return np.random.default_rng(seed).choice(len(cases), size=count, p=weights / weights.sum())


def matches(response: pb.RebalanceResponse, expected) -> bool:
    got = (from_tensor(response.phy2log), from_tensor(response.log2phy),
           from_tensor(response.logcnt))
    return all(g.shape == e.shape and np.array_equal(g, e) for g, e in zip(got, expected))


@dataclass
class LoadResult:
    latencies: list  # seconds, OK calls
    codes: collections.Counter  # status code name -> count (OK included)
    mismatches: list  # shape names of OK answers that differ from the engine
    ok_by_shape: collections.Counter
    seconds: float  # wall time of the whole run


async def _load(targets, cases, order, clients, timeout, backoff) -> LoadResult:
    result = LoadResult([], collections.Counter(), [], collections.Counter(), 0.0)
    counter = itertools.count()
    channels = [grpc.aio.insecure_channel(targets[k % len(targets)], options=[
        ("grpc.max_receive_message_length", 256 << 20),
        ("grpc.max_send_message_length", 256 << 20)]) for k in range(clients)]

    async def client(channel):
        placement = pb_grpc.PlacementServiceStub(channel)
        delay = backoff
        while True:
            i = next(counter)
            if i >= len(order):
                return
            case = cases[order[i]]
            start = time.perf_counter()
            try:
                response = await placement.Rebalance(case.request, timeout=timeout)
            except grpc.aio.AioRpcError as e:
                result.codes[e.code().name] += 1
                if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:  # back off, doubling
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(2 * delay, 16 * backoff)
                continue
            delay = backoff
            result.latencies.append(time.perf_counter() - start)
            result.codes["OK"] += 1
            result.ok_by_shape[case.shape.name] += 1
            if not matches(response, case.expected):
                result.mismatches.append(case.shape.name)

    start = time.perf_counter()
    try:
        await asyncio.gather(*(client(c) for c in channels))
    finally:
        for c in channels:
            await c.close()
    result.seconds = time.perf_counter() - start
    return result


def run_load(targets, cases, count: int, clients: int = 32, timeout: float = 120.0,
             backoff: float = 0.02, seed: int = 0) -> LoadResult:
    """`count` Rebalance calls from `clients` concurrent clients (channels spread over
    `targets`), each answer compared with its case's expected plan."""
    if isinstance(targets, str):
        targets = [targets]
    order = schedule(cases, count, seed)
    return asyncio.run(_load(list(targets), cases, order, clients, timeout, backoff))


def percentile_ms(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q)) if values else float("nan")


def start_server(directory: pathlib.Path, mix, max_concurrent: int):
    """`python -m eplb_server` warm on the mix's shapes: (process, tcp target, log path)."""
    log_path = directory / "server.log"
    log = open(log_path, "w")
    shapes = sorted({s.warmup_spec for s in mix if s.windows is None})
    args = [sys.executable, "-m", "eplb_server", "--listen", "127.0.0.1:0", "--metrics-port",
            "0", "--device", "cpu", "--max-concurrent", str(max_concurrent),
            "--grace-period", "10"]
    for spec in shapes:
        args += ["--warmup-shapes", spec]
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=directory)
    end = time.monotonic() + 300
    while time.monotonic() < end:
        text = log_path.read_text()
        found = re.search(r" on (127\.0\.0\.1:\d+)", text)
        if found and "serving" in text.split(found.group(0), 1)[1]:
            return proc, found.group(1), log_path
        if proc.poll() is not None:
            raise SystemExit(f"eplb_server exited ({proc.returncode}):\n{text}")
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"eplb_server not serving after 300 s:\n{log_path.read_text()}")


def rss_mib(pid: Optional[int]) -> Optional[float]:
    if pid is None:
        return None
    import psutil

    return psutil.Process(pid).memory_info().rss / (1 << 20)


def report(title, result: LoadResult, clients):
    ok = result.codes.get("OK", 0)
    total = sum(result.codes.values())
    print(f"{title}: {total} calls from {clients} clients in {result.seconds:.1f} s "
          f"({total / result.seconds:.0f} calls/s, {ok / result.seconds:.0f} OK/s)")
    print(f"  latency (OK calls): p50 {percentile_ms(result.latencies, 50):.2f} ms, "
          f"p99 {percentile_ms(result.latencies, 99):.2f} ms, "
          f"max {percentile_ms(result.latencies, 100):.1f} ms")
    print("  status codes: " + ", ".join(f"{k} {v}" for k, v in sorted(result.codes.items())))
    print(f"  answers differing from the in-process engine: {len(result.mismatches)}")
    print("  OK by shape: " + ", ".join(f"{k} {v}" for k, v in sorted(result.ok_by_shape.items())))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=10000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-concurrent", type=int, default=16, help="the server's bound")
    p.add_argument("--warmup-requests", type=int, default=1000,
                   help="requests before the first memory reading")
    p.add_argument("--small", action="store_true", help="small shapes only")
    p.add_argument("--target", help="a running server (default: start one)")
    p.add_argument("--server-pid", type=int, help="with --target: its pid, for memory readings")
    args = p.parse_args()
    mix = SMALL_MIX if args.small else SOAK_MIX

    t0 = time.perf_counter()
    cases = build_cases(mix)
    print(f"{len(cases)} distinct requests over {len(mix)} shapes; expected answers computed "
          f"in-process in {time.perf_counter() - t0:.1f} s")
    with tempfile.TemporaryDirectory() as tmp:
        proc = None
        if args.target:
            target, pid = args.target, args.server_pid
        else:
            proc, target, log_path = start_server(pathlib.Path(tmp), mix, args.max_concurrent)
            pid = proc.pid
        try:
            warm = run_load(target, cases, args.warmup_requests, args.clients, seed=1)
            report("warm-up", warm, args.clients)
            rss_warm = rss_mib(pid)
            main_run = run_load(target, cases, args.requests, args.clients, seed=2)
            rss_end = rss_mib(pid)
            report("soak", main_run, args.clients)
            if rss_warm is not None:
                print(f"  server resident memory: {rss_warm:.1f} MiB after warm-up, "
                      f"{rss_end:.1f} MiB at the end "
                      f"({100 * (rss_end - rss_warm) / rss_warm:+.2f} %)")
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                status = proc.wait(60)
                print(f"  server exit status after SIGTERM: {status}")
    bad = {k: v for k, v in main_run.codes.items() if k not in ("OK", "RESOURCE_EXHAUSTED")}
    if bad or main_run.mismatches:
        sys.exit(1)


if __name__ == "__main__":
    main()
