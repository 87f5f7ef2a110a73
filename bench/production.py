"""Production fit, as tables: start-up, plan time beside busy neighbours, and rank storms.

    python -m bench.production [--part start|busy|storm|recovery|all] [--repeats 30]
                               [--write docs/production.md]

start: process start to SERVING of `python -m eplb_server` with an empty numba cache, with the
cache it left, with a portable cache (NUMBA_CPU_NAME=x86-64-v3, NUMBA_CPU_FEATURES empty: the
cache any AVX2 host loads), and with a native cache read by a host that reports another CPU
(NUMBA_CPU_NAME=haswell: what an image built on one CPU model did on another).
busy: the EP32 plan (real snapshots, hierarchical and global) in this process, quiet and with a
busy-loop process on every core, with the default thread choice (one thread at this size), and
forced to 1 and 2 threads, the three taking turns.
storm: 32 and 64 callers at once against a default server, each on its own channel as EP ranks
are: identical requests (one computation expected) and distinct ones (60 s deadline).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

import grpc
import numpy as np

from .common import fully_warm, real_snapshots
from .docs import write_section

ROOT = pathlib.Path(__file__).resolve().parent.parent
EP32 = dict(num_replicas=288, num_groups=8, num_nodes=4, num_gpus=32)
PORTABLE = {"NUMBA_CPU_NAME": "x86-64-v3", "NUMBA_CPU_FEATURES": ""}


def ep32_loads():
    real = list(real_snapshots().values())
    if real:
        return real
    rng = np.random.default_rng(0)
    return [np.round(rng.lognormal(0, 1.2, (58, 256)) * 1000) for _ in range(6)]


# ---------------------------------------------------------------------------------- start-up

def time_to_serving(env: dict, timeout: float = 1200.0) -> tuple[float, str, int]:
    """Seconds from process start to health SERVING, the metrics address, and the pid."""
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "eplb_server", "--listen", "127.0.0.1:0",
                             "--metrics-port", "0"], stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT, env={**os.environ, **env})
    try:
        while time.monotonic() - start < timeout:
            text = pathlib.Path(log.name).read_text()
            if proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{text}")
            if "serving (warm-up" in text:
                return time.monotonic() - start, text, proc.pid
            time.sleep(0.05)
        raise RuntimeError("no SERVING within the timeout")
    finally:
        proc.terminate()
        proc.wait(30)


WARM_STARTS = 5  # starts timed on each built cache (one on each empty one)


def start_rows():
    rows = []
    with tempfile.TemporaryDirectory() as native, tempfile.TemporaryDirectory() as portable:
        cases = [
            ("empty cache (first start on a host)", {"NUMBA_CACHE_DIR": native}, 1),
            ("cache left by that start", {"NUMBA_CACHE_DIR": native}, WARM_STARTS),
            ("native cache read as another CPU model (haswell)",
             {"NUMBA_CACHE_DIR": native, "NUMBA_CPU_NAME": "haswell"}, 1),
            ("portable cache: empty (x86-64-v3)", {"NUMBA_CACHE_DIR": portable, **PORTABLE}, 1),
            ("portable cache: built (any x86-64-v3 host loads it)",
             {"NUMBA_CACHE_DIR": portable, **PORTABLE}, WARM_STARTS),
        ]
        for name, env, repeats in cases:
            times = [time_to_serving(env)[0] for _ in range(repeats)]
            shown = f"{np.median(times):.1f}" if len(times) == 1 else \
                f"{np.median(times):.2f} (median of {len(times)}, {min(times):.2f}-{max(times):.2f})"
            rows.append((name, shown))
            print(f"  {name}: {shown} s", file=sys.stderr, flush=True)
        for name, env in (("native", {"NUMBA_CACHE_DIR": native}),
                          ("portable x86-64-v3", {"NUMBA_CACHE_DIR": portable, **PORTABLE})):
            rows.append((f"EP32 plan, {name} kernels: hierarchical / global ms",
                         plan_time_in(env)))
    return rows


PLAN_TIMER = """
import time, numpy as np, torch, eplb_server
from bench.production import EP32, ep32_loads
loads = [torch.from_numpy(w) for w in ep32_loads()]
out = []
for policy in ("hierarchical", "global"):
    eplb_server.plan(loads[0], **EP32, policy=policy)
    times = []
    for i in range(60):
        start = time.perf_counter()
        eplb_server.plan(loads[i % len(loads)], **EP32, policy=policy)
        times.append(time.perf_counter() - start)
    out.append(f"{np.median(times) * 1e3:.2f}")
print(" / ".join(out))
"""


def plan_time_in(env) -> str:
    """Median EP32 plan times in a fresh process with the given cache settings."""
    done = subprocess.run([sys.executable, "-c", PLAN_TIMER], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **env, "NUMBA_NUM_THREADS": "1"},
                          timeout=1200, check=True)
    return done.stdout.strip().splitlines()[-1]


# ---------------------------------------------------------------------------- busy neighbours

def _spin():
    while True:
        pass


@contextlib.contextmanager
def busy_cores(count):
    procs = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(count)]
    for p in procs:
        p.start()
    try:
        time.sleep(3.0)  # new processes run ahead of old ones for a while (the scheduler's credit)
        yield
    finally:
        for p in procs:
            p.kill()
            p.join()


def plan_times(policy, threads_mode, repeats):
    import torch

    import eplb_server
    from eplb_server.engine import threads

    loads = [torch.from_numpy(w) for w in ep32_loads()]
    saved = threads._max_threads, threads.PARALLEL_MIN_WORK
    if threads_mode == "default":
        threads.set_max_threads(1)
    else:
        threads._max_threads, threads.PARALLEL_MIN_WORK = int(threads_mode), 0
    try:
        eplb_server.plan(loads[0], **EP32, policy=policy)
        out = []
        for i in range(repeats):
            start = time.perf_counter()
            eplb_server.plan(loads[i % len(loads)], **EP32, policy=policy)
            out.append(time.perf_counter() - start)
        return out
    finally:
        threads._max_threads, threads.PARALLEL_MIN_WORK = saved


THREAD_MODES = ("default", "1", "2")
PLANS_PER_TURN = 10


def interleaved_medians(policy, rounds) -> dict:
    """Median ms per thread mode, the modes taking turns of PLANS_PER_TURN plans for `rounds`
    rounds: beside busy cores a 2 ms plan waits for a core or not by luck of the moment, and one
    mode's plans in one stretch measured that moment (last session: 1.05x and 3.37x for the
    same setting in one run)."""
    times = {mode: [] for mode in THREAD_MODES}
    for _ in range(rounds):
        for mode in THREAD_MODES:
            times[mode] += plan_times(policy, mode, PLANS_PER_TURN)
    return {mode: np.median(values) * 1e3 for mode, values in times.items()}


def busy_rows(repeats):
    rows = []
    cores = os.cpu_count() or 1
    for policy in ("hierarchical", "global"):
        quiet = interleaved_medians(policy, repeats)
        with busy_cores(cores):
            busy = interleaved_medians(policy, repeats)
        for mode in THREAD_MODES:
            rows.append((policy, mode, f"{quiet[mode]:.2f}", f"{busy[mode]:.2f}",
                         f"{busy[mode] / quiet['1']:.2f}"))
    return rows


# ------------------------------------------------------------------------------- rank storms

async def _storm(target, requests, deadline):
    barrier = asyncio.Event()

    async def rank(request):
        async with grpc.aio.insecure_channel(target) as channel:
            await channel.channel_ready()
            call = channel.unary_unary("/eplb.v1.PlacementService/Rebalance")
            await barrier.wait()
            start = time.perf_counter()
            try:
                await call(request, timeout=deadline)
                return time.perf_counter() - start, "OK"
            except grpc.RpcError as e:
                return time.perf_counter() - start, e.code().name

    tasks = [asyncio.ensure_future(rank(r)) for r in requests]
    await asyncio.sleep(1.0)
    barrier.set()
    return await asyncio.gather(*tasks)


def _retrying_storm(target, requests, deadline):
    """The same storm through eplb_client's retries (RESOURCE_EXHAUSTED, UNAVAILABLE)."""
    from concurrent.futures import ThreadPoolExecutor

    from eplb_client import EplbClient
    from eplb_client.v1 import placement_pb2 as pb

    clients = [EplbClient(target) for _ in requests]
    start_at = time.monotonic() + 1.0

    def rank(i):
        request = pb.RebalanceRequest.FromString(requests[i])
        time.sleep(max(0.0, start_at - time.monotonic()))
        start = time.perf_counter()
        try:
            clients[i].rebalance_raw(request, timeout=deadline)
            return time.perf_counter() - start, "OK"
        except Exception as e:  # EplbError
            return time.perf_counter() - start, str(getattr(e, "code", e))
    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(rank, range(len(requests))))
    for c in clients:
        c.close()
    return results


def _metric(address, name, **labels):
    text = urllib.request.urlopen(f"http://{address}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A gRPC server that answers every Rebalance with the same bytes and does nothing else: the
# floor the storm rows are set against (same machine, same callers, same message sizes).
ECHO_SERVER = """
import asyncio, sys, grpc
answer = open(sys.argv[1], "rb").read()
async def main():
    server = grpc.aio.server()
    async def rebalance(request, context):
        return answer
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "eplb.v1.PlacementService",
        {"Rebalance": grpc.unary_unary_rpc_method_handler(rebalance)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()
asyncio.run(main())
"""


def _single_p50(target, requests):
    times = [t for r in requests for t, _ in asyncio.run(_storm(target, [r], 60))]
    return float(np.median(times))


def _storm_row(target, kind, batch, single_p50, metrics=None):
    before = _metric(metrics, "eplb_engine_computations_total") if metrics else 0.0
    results = _retrying_storm(target, batch, 60)
    times = [t for t, _ in results]
    ok = sum(code == "OK" for _, code in results)
    computed = f"{_metric(metrics, 'eplb_engine_computations_total') - before:.0f}" \
        if metrics else ""
    p99 = np.percentile(times, 99)
    return (kind, len(batch), f"{ok}/{len(batch)}", f"{np.median(times) * 1e3:.1f}",
            f"{p99 * 1e3:.1f}", computed,
            f"max {max(times):.2f} s" if kind == "distinct" else f"{p99 / single_p50:.2f}x")


def storm_rows():
    from eplb_client._request import rebalance_request

    loads = ep32_loads()
    env = dict(os.environ)
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "eplb_server", "--listen", "127.0.0.1:0",
                             "--metrics-port", str(_free_port()),
                             "--warmup-shapes", "58x256:288:32:4:8"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 1200
        while not fully_warm(pathlib.Path(log.name).read_text()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(pathlib.Path(log.name).read_text())
            time.sleep(0.1)
        text = pathlib.Path(log.name).read_text()
        target = re.search(r" on (127\.0\.0\.1:\d+)", text).group(1)
        metrics = re.search(r"metrics (127\.0\.0\.1:\d+)", text).group(1)

        def request(weight):  # as eplb_client sends it
            return rebalance_request(weight, **EP32, model="storm").SerializeToString()

        # distinct single calls, so nothing is reused
        single_p50 = _single_p50(target, [request(loads[0] + 1000 + i) for i in range(15)])
        rows = [("single call", 1, "", f"{single_p50 * 1e3:.1f}", "", "1", "")]
        seed = 0
        for callers in (32, 64):
            for kind in ("identical", "distinct"):
                seed += 1
                batch = [request(loads[1] + seed)] * callers if kind == "identical" else \
                    [request(loads[i % len(loads)] + seed * 100 + i) for i in range(callers)]
                rows.append(_storm_row(target, kind, batch, single_p50, metrics))
                time.sleep(6)  # past the recent-answer window
        retried = _metric(metrics, "eplb_retried_requests_total")
        rows.append(("retried attempts (all storms)", "", "", "", "", "", f"{retried:.0f}"))
        with grpc.insecure_channel(target) as channel:
            answer = channel.unary_unary("/eplb.v1.PlacementService/Rebalance")(
                request(loads[2]), timeout=60)
    finally:
        proc.terminate()
        proc.wait(30)
    return rows + _echo_rows(request(loads[2]), answer)


def _echo_rows(request, answer):
    """The single call and the identical storms against ECHO_SERVER answering `answer`."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as saved:
        saved.write(answer)
        saved.flush()
        echo = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, saved.name],
                                stdout=subprocess.PIPE, text=True)
        try:
            target = f"127.0.0.1:{echo.stdout.readline().strip()}"
            single_p50 = _single_p50(target, [request] * 15)
            rows = [(f"floor: a bare gRPC server answering the same {len(answer) >> 10} KiB, "
                     "single call", 1, "", f"{single_p50 * 1e3:.1f}", "", "", "")]
            for callers in (32, 64):
                rows.append(_storm_row(target, "floor: identical", [request] * callers,
                                       single_p50))
            return rows
        finally:
            echo.terminate()
            echo.wait(30)


# ---------------------------------------------------------------------------------- recovery

def recovery_rows():
    """Seconds from an injected crash / hang (tests.service.faulty_engine) to SERVING again,
    with a 5 s plan time limit, in-process server."""
    import threading

    from eplb_client.tensors import to_tensor
    from eplb_client.v1 import placement_pb2 as pb
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from eplb_server.server import Config, PlacementServer

    from tests.service import faulty_engine

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    server = PlacementServer(Config(listen=["127.0.0.1:0"], metrics_port=None,
                                    engine_module="tests.service.faulty_engine",
                                    plan_time_limit=5.0))
    run = lambda coroutine: asyncio.run_coroutine_threadsafe(coroutine, loop).result(600)  # noqa
    run(server.start())
    run(server.wait_until_warm())
    channel = grpc.insecure_channel(server.addresses[0])
    call = channel.unary_unary("/eplb.v1.PlacementService/Rebalance")
    health = health_pb2_grpc.HealthStub(channel)
    rows = []
    for name, marker in (("crash (SIGSEGV in a plan)", faulty_engine.CRASH),
                         ("hang (plan past the 5 s limit)", faulty_engine.HANG)):
        weight = np.round(np.random.default_rng(0).lognormal(0, 1, (2, 16)) * 100)
        weight[0, 0] = marker
        request = pb.RebalanceRequest(topology=pb.Topology(num_replicas=32, num_groups=4,
                                                           num_nodes=2, num_gpus=8),
                                      expert_loads=to_tensor(weight))
        start = time.monotonic()
        try:
            call(request.SerializeToString(), timeout=60)
        except grpc.RpcError as e:
            answered, code = time.monotonic() - start, e.code().name
        while health.Check(health_pb2.HealthCheckRequest(), timeout=5).status != \
                health_pb2.HealthCheckResponse.SERVING:
            time.sleep(0.02)
        rows.append((name, code, f"{answered:.2f}", f"{time.monotonic() - start:.2f}"))
    channel.close()
    run(server.stop(0))
    return rows


def table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("start", "busy", "storm", "recovery", "all"),
                        default="all")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--write", metavar="PATH",
                        help="also write each part's section (table, command, machine, date) "
                        "into this file, keeping its other sections")
    args = parser.parse_args()
    parts = PARTS if args.part == "all" else (args.part,)
    for part in parts:
        title, text = globals()[f"{part}_section"](args.repeats)
        print(f"## {title}\n\n{text}", flush=True)
        if args.write:
            write_section("production", title, text, path=pathlib.Path(args.write),
                          key=f"production-{part}", head=HEAD)


PARTS = ("start", "busy", "storm", "recovery")
HEAD = """# Production fit: measured

Each section is written by `python -m bench.production --part PART --write docs/production.md`
(`--part all` writes them all), never by hand: the table, the command, the machine and the date.
"""


def start_section(repeats):
    return "Start-up", ("Process start to health SERVING (default warm-up shape):\n\n"
                        + table(("start", "seconds to SERVING"), start_rows()))


def busy_section(repeats):
    return "Busy neighbours", (
        "EP32 plan time in-process (median of real snapshots; the thread settings take turns "
        f"of {PLANS_PER_TURN} plans, {repeats} rounds), quiet and beside a busy-loop process on "
        "every core:\n\n"
        + table(("EP32 policy", "threads", "quiet ms", f"{os.cpu_count()} busy cores ms",
                 "busy / quiet 1 thread"), busy_rows(repeats)))


def storm_section(repeats):
    return "Every rank at once", (
        "Callers on their own channels through eplb_client (retries on), EP32 requests:\n\n"
        + table(("requests", "callers", "answered", "p50 ms", "p99 ms", "engine computations",
                 "p99 / single, or slowest"), storm_rows()))


def recovery_section(repeats):
    return "Engine faults", (
        "An injected engine fault: the request's answer, and the time until health is SERVING "
        "again (worker restarted on its warm cache):\n\n"
        + table(("fault", "answer", "answered after s", "SERVING again after s"),
                recovery_rows()))


if __name__ == "__main__":
    main()
