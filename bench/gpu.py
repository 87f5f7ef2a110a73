"""GPU planner benchmark: the GPU plan's time beside the CPU engine's and the reference's, per
engine benchmark shape (bench.engine.SHAPES) and the service's largest request, and the RPC p50
of a server started with --device cuda. Needs a CUDA device and triton (bench/gpu.sh runs it).

    python -m bench.gpu [--repeats 5] [--quick] [--no-rpc] [--out FILE]
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from eplb_server import evaluate, plan

from .engine import SHAPES, synthetic

ROOT = pathlib.Path(__file__).resolve().parent.parent
LARGEST = ("256x1024->2048 G256 (largest request)", 256, 1024, 2048, 1, 1, 256, "global")
RPC_SHAPE = ("58x256:288:32:4:8", dict(num_replicas=288, num_groups=8, num_nodes=4, num_gpus=32))
SLOW_SECONDS = 5.0  # a side slower than this per call is timed once


def _times(fn, repeats, sync=False):
    """Median milliseconds of `repeats` calls after one untimed call."""
    fn()
    first = time.perf_counter()
    fn()
    if sync:
        torch.cuda.synchronize()
    if time.perf_counter() - first > SLOW_SECONDS:
        repeats = 1
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(shape, repeats):
    """One table row: times (ms) and plan quality of the GPU planner, CPU engine, reference."""
    from eplb_server.engine.gpu.device import graph_planner

    name, layers, experts, replicas, groups, nodes, gpus, constraint = shape
    if constraint == "global":
        groups, nodes = 1, 1
    weight = synthetic(layers, experts)
    on_gpu = weight.cuda()
    args = (replicas, groups, nodes, gpus)
    planner = graph_planner()
    graph_ms = _times(lambda: planner(on_gpu.double(), *args), repeats, sync=True)
    api_ms = _times(lambda: plan(on_gpu, *args, policy=constraint, device="cuda"), repeats,
                    sync=True)
    cpu_ms = _times(lambda: plan(weight, *args, policy=constraint, device="cpu"), repeats)
    ref_ms = _times(lambda: plan(weight, *args, policy="deepseek"), repeats)
    ours = plan(on_gpu, *args, policy=constraint, device="cuda")
    assert ours.device.startswith("cuda"), ours.device
    cpu = plan(weight, *args, policy=constraint, device="cpu")
    ref = plan(weight, *args, policy="deepseek")
    scores = [evaluate(weight, p.phy2log.cpu(), groups, nodes, gpus, policy=constraint)
              for p in (ours, cpu, ref)]
    bound = np.asarray(scores[1].layer_lower_bound)
    peak = [np.asarray(s.layer_max_load) for s in scores]
    return dict(name=name, policy=constraint, graph_ms=graph_ms, api_ms=api_ms, cpu_ms=cpu_ms,
                ref_ms=ref_ms, gap_gpu=scores[0].mean_gap * 100, gap_cpu=scores[1].mean_gap * 100,
                worst_vs_cpu=float(((peak[0] - peak[1]) / bound).max() * 100),
                worse_than_ref=int((peak[0] > peak[2] * (1 + 1e-9)).sum()), layers=layers)


def rpc_p50(device, requests=50):
    """(p50 latency ms, p50 server compute ms, response device) of sequential 58x256 -> 288
    Rebalances against `python -m eplb_server --device DEVICE`; None when it cannot start."""
    missing = [m for m in ("grpc_health", "grpc_reflection", "grpc_status", "prometheus_client")
               if importlib.util.find_spec(m) is None]
    if missing:
        print(f"RPC {device}: skipped, missing {', '.join(missing)}")
        return None
    import grpc
    from eplb_client.tensors import to_tensor
    from eplb_client.v1 import placement_pb2 as pb
    from eplb_client.v1 import placement_pb2_grpc as pb_grpc

    from .service import _free_port, _serving, sequential

    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "eplb_server", "--listen", "127.0.0.1:0", "--metrics-port",
         str(_free_port()), "--warmup-shapes", RPC_SHAPE[0], "--coalesce-seconds", "0",
         "--device", device], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        deadline, target = time.monotonic() + 300, None
        while time.monotonic() < deadline and target is None:
            if proc.poll() is not None:
                print(f"RPC {device}: server exited:\n{pathlib.Path(log.name).read_text()}")
                return None
            found = re.search(r" on (127\.0\.0\.1:\d+)", pathlib.Path(log.name).read_text())
            if found and _serving(found.group(1)):
                target = found.group(1)
            time.sleep(0.2)
        if target is None:
            print(f"RPC {device}: not SERVING within 300 s")
            return None
        loads = [synthetic(58, 256, seed).numpy() for seed in range(4)]
        reqs = [pb.RebalanceRequest(model="bench", topology=pb.Topology(**RPC_SHAPE[1]),
                                    expert_loads=to_tensor(w)) for w in loads]
        with grpc.insecure_channel(target) as channel:
            device_used = pb_grpc.PlacementServiceStub(channel).Rebalance(
                reqs[0], timeout=120).device
        latency, compute = sequential(target, reqs, requests)
        return statistics.median(latency) * 1e3, statistics.median(compute) * 1e3, device_used
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="first two shapes and the largest")
    parser.add_argument("--no-rpc", action="store_true")
    parser.add_argument("--out", type=pathlib.Path, help="also write the tables here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench.gpu needs a CUDA device")
    shapes = (SHAPES[:2] if args.quick else SHAPES) + [LARGEST]
    lines = [f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}",
             "",
             "| shape | policy | GPU graph ms | GPU plan() ms | CPU engine ms | reference ms "
             "| CPU / GPU plan() | gap % GPU | gap % CPU | worst layer GPU - CPU (% of bound) "
             "| layers GPU worse than reference |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for shape in shapes:
        r = measure(shape, args.repeats)
        lines.append(f"| {r['name']} | {r['policy']} | {r['graph_ms']:.3f} | {r['api_ms']:.2f} | "
                     f"{r['cpu_ms']:.2f} | {r['ref_ms']:.2f} | {r['cpu_ms'] / r['api_ms']:.1f}x "
                     f"| {r['gap_gpu']:.3f} | {r['gap_cpu']:.3f} | {r['worst_vs_cpu']:.3f} | "
                     f"{r['worse_than_ref']} of {r['layers']} |")
        print(lines[-1], flush=True)
        if args.out:
            args.out.write_text("\n".join(lines) + "\n")
    if not args.no_rpc:
        lines += ["", "| server | RPC p50 ms | server compute p50 ms | response device |",
                  "|---|---|---|---|"]
        for device in ("cuda", "cpu"):
            try:
                result = rpc_p50(device)
            except Exception as e:  # e.g. a protobuf runtime older than the generated code
                print(f"RPC {device}: failed: {type(e).__name__}: {e}")
                result = None
            if result is not None:
                lines.append(f"| --device {device} | {result[0]:.2f} | {result[1]:.2f} | "
                             f"{result[2]} |")
                print(lines[-1], flush=True)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
