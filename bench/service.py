"""Service benchmark: end-to-end Rebalance latency beside the engine's own time, as one table.

    python -m bench.service [--requests 200] [--concurrency 8] [--target HOST:PORT]

Starts `python -m eplb_server` (warm on 58x256:288:32:4:8) unless --target names a running one,
then times the 58x256 -> 288 request (G=32, N=4, K=8) sequentially over TCP and a Unix socket
and from concurrent clients, from scratch and with a current mapping. "server compute" is the
engine time the server reports (compute_seconds: plan and scoring, no transport); "overhead" is
each call's latency minus it: validation, encoding, transport. The engine row times the same work
in-process; the encode/decode rows time the client's side of the wire. Requests are built as
eplb_client builds them (int32 mappings, compact log2phy); one row sends a bare protobuf request
(int64 mappings, padded log2phy [L, E, W]).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

import grpc
import numpy as np
import torch
from eplb_client._request import rebalance_request
from eplb_client.results import RebalanceResult
from eplb_client.tensors import from_tensor, to_tensor
from eplb_client.v1 import placement_pb2 as pb
from eplb_client.v1 import placement_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from .common import call_times, fully_warm, real_snapshots
from .docs import write_section

ROOT = pathlib.Path(__file__).resolve().parent.parent
TOPOLOGY = dict(num_replicas=288, num_groups=8, num_nodes=4, num_gpus=32)
WARMUP_SHAPE = "58x256:288:32:4:8"


def workloads():
    """[58, 256] loads: the real snapshots (dense layers dropped), else synthetic lognormal."""
    real = list(real_snapshots().values())
    if real:
        return real, f"{len(real)} real DeepSeek-V3 snapshots"
    rng = np.random.default_rng(0)
    return [np.round(rng.lognormal(0, 1.2, (58, 256)) * 1000) for _ in range(6)], "synthetic"


def requests(loads, with_mapping, client_format=True):
    """One request per snapshot; with a mapping, the plan of the previous snapshot is current.
    client_format: as eplb_client sends it (int32 mappings both ways, compact log2phy [L, P]);
    else a bare protobuf request's defaults (int64 mappings, padded log2phy [L, E, W])."""
    from eplb_server import plan

    out = []
    for i, weight in enumerate(loads):
        current = (plan(torch.from_numpy(loads[i - 1]), **TOPOLOGY).phy2log.numpy()
                   if with_mapping else None)
        if client_format:
            request = rebalance_request(weight, current_phy2log=current, model="bench",
                                        **TOPOLOGY)
        else:
            request = pb.RebalanceRequest(model="bench", topology=pb.Topology(**TOPOLOGY),
                                          expert_loads=to_tensor(weight))
            if current is not None:
                request.current_phy2log.CopyFrom(to_tensor(current))
        out.append(request)
    return out


def engine_times(reqs, repeats):
    """The engine's own work for each request: plan, then score the plan (and the mapping)."""
    from eplb_server import evaluate, plan

    times = []
    for request in reqs:
        weight = torch.from_numpy(from_tensor(request.expert_loads))
        current = (torch.from_numpy(from_tensor(request.current_phy2log))
                   if request.HasField("current_phy2log") else None)

        def work():
            result = plan(weight, **TOPOLOGY, current_phy2log=current)
            evaluate(weight, result.phy2log, 8, 4, 32, policy=result.policy)
            if current is not None:
                evaluate(weight, current, 8, 4, 32, policy=result.policy)
        times += call_times(work, repeats)
    return times


def sequential(target, reqs, count):
    """Latency of `count` Rebalance calls one after another, and the server's compute times."""
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.PlacementServiceStub(channel)
        stub.Rebalance(reqs[0], timeout=60)
        latencies, computes = [], []
        for i in range(count):
            start = time.perf_counter()
            response = stub.Rebalance(reqs[i % len(reqs)], timeout=60)
            latencies.append(time.perf_counter() - start)
            computes.append(response.compute_seconds)
    return latencies, computes


async def _concurrent(target, reqs, count, clients):
    latencies = []

    async def client(k):
        async with grpc.aio.insecure_channel(target) as channel:
            stub = pb_grpc.PlacementServiceStub(channel)
            await stub.Rebalance(reqs[k % len(reqs)], timeout=120)
            for i in range(k, count, clients):
                start = time.perf_counter()
                await stub.Rebalance(reqs[i % len(reqs)], timeout=120)
                latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(client(k) for k in range(clients)))
    return latencies, count / (time.perf_counter() - start)


def codec_times(reqs, target, repeats):
    """Client-side encode (arrays -> bytes) and decode (bytes -> arrays) of one round trip."""
    request = reqs[0]
    weight = from_tensor(request.expert_loads)
    current = (from_tensor(request.current_phy2log)
               if request.HasField("current_phy2log") else None)

    def encode():
        return rebalance_request(weight, current_phy2log=current, model="bench",
                                 **TOPOLOGY).SerializeToString()

    with grpc.insecure_channel(target) as channel:
        raw = channel.unary_unary("/eplb.v1.PlacementService/Rebalance")(encode(), timeout=60)

    def decode():  # as EplbClient.rebalance: int64 arrays, log2phy rebuilt from its compact form
        RebalanceResult.from_proto(pb.RebalanceResponse.FromString(raw))
    return call_times(encode, repeats), call_times(decode, repeats), len(encode()), len(raw)


def start_server(socket_path):
    """A warm `python -m eplb_server` on 127.0.0.1:<ephemeral> and a Unix socket."""
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "eplb_server", "--listen", "127.0.0.1:0", "--listen",
         f"unix://{socket_path}", "--metrics-port", str(_free_port()), "--warmup-shapes",
         WARMUP_SHAPE, "--coalesce-seconds", "0"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"eplb_server exited:\n{pathlib.Path(log.name).read_text()}")
        text = pathlib.Path(log.name).read_text()
        found = re.search(r" on (127\.0\.0\.1:\d+)", text)
        if found and fully_warm(text) and _serving(found.group(1)):
            return proc, found.group(1), re.search(r"metrics (127\.0\.0\.1:\d+)", text).group(1)
        time.sleep(0.2)
    proc.kill()
    sys.exit("eplb_server did not become SERVING within 300 s")


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_means(metrics_address):
    """Mean seconds per stage (eplb_stage_seconds) of the server's computed Rebalances so far,
    as {stage: (sum, count)}."""
    import urllib.request

    text = urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        found = re.match(r'eplb_stage_seconds_(sum|count)\{grpc_method="Rebalance",'
                         r'stage="(\w+)"\} (\S+)', line)
        if found:
            total, count = out.get(found.group(2), (0.0, 0.0))
            value = float(found.group(3))
            out[found.group(2)] = (total + value, count) if found.group(1) == "sum" \
                else (total, count + value)
    return out


def _serving(target):
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                               timeout=2)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def ms(values, q):
    return float(np.percentile(values, q)) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="timed calls per row")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--target", help="a running server (host:port) instead of starting one")
    parser.add_argument("--write-docs", action="store_true",
                        help="also write the table into docs/benchmarks.md")
    args = parser.parse_args()

    loads, source = workloads()
    proc = metrics = None
    with tempfile.TemporaryDirectory() as tmp:
        unix = None
        if args.target:
            tcp = args.target
        else:
            socket_path = os.path.join(tmp, "eplb.sock")
            proc, tcp, metrics = start_server(socket_path)
            unix = f"unix://{socket_path}"
        try:
            rows = run(args, loads, tcp, unix, metrics)
        finally:
            if proc is not None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(60)
    intro = (f"Rebalance 58x256 -> 288 (G=32, N=4, K=8), {source}, {args.requests} calls per row, "
             f"torch {torch.__version__}")
    table = ["| case | path | p50 ms | p99 ms | server compute p50 ms | overhead p50 ms | "
             "target: p50 <= engine in-process + 1 ms |", "|---|---|---|---|---|---|---|"]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    print(intro + f", {os.cpu_count()} CPUs")
    print("\n".join(table))
    if args.write_docs:
        write_section("service", "Service: end-to-end latency", intro + ". Overhead = latency - "
                      "the server's compute time (plan and score): decoding, validation, encoding, "
                      "the queue for the engine thread, the handoff to the engine worker process "
                      "and back, and gRPC; the breakdown rows split it (the server's "
                      "eplb_stage_seconds).\n\n"
                      + "\n".join(table))


def run(args, loads, tcp, unix, metrics=None):
    rows = []
    for label, with_mapping in (("from scratch", False), ("with current mapping", True)):
        reqs = requests(loads, with_mapping)
        engine = engine_times(reqs, max(1, args.requests // len(reqs)))
        rows.append([label, "engine in-process (plan + scoring)", f"{ms(engine, 50):.2f}",
                     f"{ms(engine, 99):.2f}", "", "", ""])
        engine_p50 = ms(engine, 50)
        encode, decode, request_bytes, response_bytes = codec_times(reqs, tcp, args.requests)
        rows.append([label, f"client encode request ({request_bytes / 1024:.0f} KiB)",
                     f"{ms(encode, 50):.3f}", f"{ms(encode, 99):.3f}", "", "", ""])
        rows.append([label, f"client decode response ({response_bytes / 1024:.0f} KiB)",
                     f"{ms(decode, 50):.3f}", f"{ms(decode, 99):.3f}", "", "", ""])
        wide = requests(loads, with_mapping, client_format=False)
        paths = [("TCP, sequential", tcp, reqs)] + (
            [("Unix socket, sequential", unix, reqs)] if unix else []) + [
            ("TCP, sequential, int64 and padded log2phy", tcp, wide)]
        for name, target, batch in paths:
            before = stage_means(metrics) if metrics else {}
            latencies, computes = sequential(target, batch, args.requests)
            p50, c50 = ms(latencies, 50), ms(computes, 50)
            overhead = np.subtract(latencies, computes)
            limit = engine_p50 + 1
            rows.append([label, name, f"{p50:.2f}", f"{ms(latencies, 99):.2f}", f"{c50:.2f}",
                         f"{ms(overhead, 50):.2f}",
                         f"{'met' if p50 <= limit else 'MISSED'} ({limit:.2f})"])
            if metrics:
                after = stage_means(metrics)
                stages = {k: (after[k][0] - before.get(k, (0, 0))[0])
                          / max(after[k][1] - before.get(k, (0, 0))[1], 1) * 1e3 for k in after}
                inside = sum(stages.values())
                rows.append([label, f"  breakdown, mean ms: {name}", "", "", "", "",
                             ", ".join(f"{k} {v:.2f}" for k, v in stages.items())
                             + f", gRPC both ways and the server's event loop "
                             f"{np.mean(latencies) * 1e3 - inside:.2f}"])
        latencies, rate = asyncio.run(_concurrent(tcp, reqs, args.requests, args.concurrency))
        rows.append([label, f"TCP, {args.concurrency} concurrent clients ({rate:.0f} req/s)",
                     f"{ms(latencies, 50):.2f}", f"{ms(latencies, 99):.2f}", "", "",
                     "queued behind one engine thread"])
    return rows


if __name__ == "__main__":
    main()
