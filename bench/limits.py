"""Peak server memory and response size for the largest requests the configured limits admit.

    python -m bench.limits [--max-concurrent 8] [--cases hot16,hot256,...] [--concurrent 8]
                           [--history-windows 63] [--max-request-bytes N]

Starts `python -m eplb_server` with the default limits (256 layers, 1024 experts, 2048 slots,
64 windows, 16 MiB requests, 64 MiB responses), samples the resident memory of the server and its
children every 20 ms, and sends each case alone, then `--concurrent` copies of the largest
request at once. Prints one table: request and response bytes, status, seconds, the server's
peak RSS during the case and its RSS afterwards (the sidecar manifest's limit is sized on it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np
import psutil
from eplb_client.tensors import to_tensor
from eplb_client.v1 import placement_pb2 as pb
from eplb_client.v1 import placement_pb2_grpc as pb_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

MIB = 1 << 20


def hot(layers, experts=1024, slots=2048, seed=0):
    rng = np.random.default_rng(seed)
    weight = np.round(rng.lognormal(0, 1, (layers, experts)) * 100)
    weight[:, 7] = weight.sum(1) * 50  # one hot expert: every spare slot goes to it
    return weight


def lognormal(shape, sigma=2.0, seed=1):
    return np.round(np.random.default_rng(seed).lognormal(0, sigma, shape) * 100)


def request(weight, slots=2048, gpus=64, policy=pb.POLICY_GLOBAL, current=None, fmt=0,
            objective=0, dtype=pb.DTYPE_INT64):
    r = pb.RebalanceRequest(
        topology=pb.Topology(num_replicas=slots, num_groups=1, num_nodes=1, num_gpus=gpus),
        policy=policy, expert_loads=to_tensor(weight), log2phy_format=fmt, mapping_dtype=dtype,
        history=pb.HistoryOptions(objective=objective))
    if current is not None:
        r.current_phy2log.CopyFrom(to_tensor(current))
    return r


def mapping(layers, experts=1024, slots=2048, seed=2):
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(np.concatenate([np.arange(experts), rng.integers(
        0, experts, slots - experts)])) for _ in range(layers)]).astype(np.int64)


HISTORY_WINDOWS = [15]  # --history-windows: [15, 256, 1024] float32 is 15 MiB, under 16 MiB


def largest_history():
    """The largest float32 history under the request limit: [T, 256, 1024]."""
    return lognormal((HISTORY_WINDOWS[0], 256, 1024), 1.0, 3).astype(np.float32)


CASES = {
    # the 135 MB answer to a 131 KB request
    "hot16": lambda: request(hot(16)),
    "hot16-padded": lambda: request(hot(16), fmt=pb.LOG2PHY_FORMAT_PADDED,
                                    policy=pb.POLICY_DEEPSEEK),
    # the INTERNAL after 17 s at 6.1 GB
    "hot256": lambda: request(hot(256)),
    "hot256-deepseek": lambda: request(hot(256), policy=pb.POLICY_DEEPSEEK),
    "lognormal256+current": lambda: request(lognormal((256, 1024)), current=mapping(256)),
    "history-sum": lambda: request(largest_history(), objective=pb.OBJECTIVE_SUM),
    "history-default": lambda: request(largest_history()),
}


class Sampler:
    """The peak RSS of a process and its children, sampled on a thread."""

    def __init__(self, pid):
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def rss(self):
        total = 0
        for p in [self.process] + self.process.children(recursive=True):
            try:
                total += p.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(0.02)

    def reset(self):
        self.peak = self.rss()

    def close(self):
        self._stop.set()
        self._thread.join()


def start_server(max_concurrent, log, extra=()):
    socket = pathlib.Path(tempfile.mkdtemp()) / "eplb.sock"
    target = f"unix://{socket}"
    process = subprocess.Popen(
        [sys.executable, "-m", "eplb_server", "--listen", target, "--metrics-port", "0",
         "--device", "cpu", "--max-concurrent", str(max_concurrent), "--warmup-shapes",
         "2x16:32:8:2:4", *extra], stdout=log, stderr=subprocess.STDOUT)
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(1200):
            try:
                if health.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    break
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    return process, target


def call(stub, req, timeout):
    start = time.perf_counter()
    try:
        response = stub.Rebalance(req, timeout=timeout)
        return "OK", response.ByteSize(), time.perf_counter() - start, response
    except grpc.RpcError as e:
        return e.code().name, 0, time.perf_counter() - start, None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-concurrent", type=int, default=8)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--concurrent", type=int, default=8,
                        help="copies of the largest request in flight at once (0: skip)")
    parser.add_argument("--concurrent-case", default="history-sum")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--history-windows", type=int, default=15)
    parser.add_argument("--max-request-bytes", type=int, default=None)
    args = parser.parse_args(argv)
    HISTORY_WINDOWS[0] = args.history_windows
    log = open(tempfile.mktemp(suffix=".log"), "w")
    extra = () if args.max_request_bytes is None else (
        "--max-request-bytes", str(args.max_request_bytes))
    process, target = start_server(args.max_concurrent, log, extra)
    channel = grpc.insecure_channel(target, [("grpc.max_receive_message_length", 256 * MIB),
                                             ("grpc.max_send_message_length", 256 * MIB)])
    stub = pb_grpc.PlacementServiceStub(channel)
    sampler = Sampler(process.pid)
    idle = sampler.rss()
    print(f"server warm: RSS {idle / MIB:.0f} MiB (max-concurrent {args.max_concurrent})")
    print(f"{'case':<24} {'request':>10} {'response':>10} {'status':>18} {'seconds':>8} "
          f"{'peak RSS':>9} {'RSS after':>9}")
    rows = [(name, CASES[name]) for name in args.cases.split(",") if name]
    if args.concurrent:
        rows.append((f"{args.concurrent} x {args.concurrent_case}", None))
    for name, make in rows:
        sampler.reset()
        if make is not None:
            req = make()
            status, size, seconds, _ = call(stub, req, args.timeout)
            req_size = req.ByteSize()
        else:
            req = CASES[args.concurrent_case]()
            req_size = req.ByteSize() * args.concurrent
            copies = []
            for i in range(args.concurrent):  # distinct bytes: the server shares identical ones
                copies.append(pb.RebalanceRequest())
                copies[-1].CopyFrom(req)
                copies[-1].model = f"copy {i}"
            with concurrent.futures.ThreadPoolExecutor(args.concurrent) as pool:
                start = time.perf_counter()
                results = list(pool.map(lambda r: call(stub, r, args.timeout), copies))
            del copies
            statuses = sorted({r[0] for r in results})
            status, size = "/".join(statuses), sum(r[1] for r in results)
            seconds = time.perf_counter() - start
        del req
        time.sleep(1.0)
        print(f"{name:<24} {req_size / MIB:>8.2f}Mi {size / MIB:>8.2f}Mi {status:>18} "
              f"{seconds:>8.1f} {sampler.peak / MIB:>7.0f}Mi {sampler.rss() / MIB:>7.0f}Mi",
              flush=True)
    sampler.close()
    channel.close()
    process.terminate()
    process.wait(60)


if __name__ == "__main__":
    main()
