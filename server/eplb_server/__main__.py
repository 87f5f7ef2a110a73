"""`eplb-server` / `python -m eplb_server`: flags, each with an EPLB_* environment equivalent."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

# gRPC's core logs every failed TLS handshake and connection GOAWAY at INFO: a scan or a
# misconfigured client floods the log. ERROR keeps real faults; set GRPC_VERBOSITY to see more.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

# Light imports only: the engine worker starts before the gRPC server's modules load.
from .config import Config, resolve_device  # noqa: E402 (after GRPC_VERBOSITY)
from .engine_main import LOG_FORMAT  # noqa: E402
from .limits import Limits  # noqa: E402
from .warmup import Shape  # noqa: E402


def _env(name, default):
    return os.environ.get("EPLB_" + name, default)


def _env_list(name, default):
    value = os.environ.get("EPLB_" + name)
    return default if value is None else [v for v in value.split(",") if v.strip()]


def _env_bool(name):
    return os.environ.get("EPLB_" + name, "").lower() in ("1", "true", "yes", "on")


def _octal(text):
    return int(text, 8)


def parser() -> argparse.ArgumentParser:
    """The CLI; every default comes from the EPLB_<FLAG> variable when it is set (argparse
    converts string defaults with the flag's type, so a bad variable is a usage error)."""
    limits = Limits()
    p = argparse.ArgumentParser(
        prog="eplb-server", description="EPLB placement service (gRPC). Every flag can also be "
        "set by an environment variable: --max-layers is EPLB_MAX_LAYERS, list flags take "
        "comma-separated values.")
    p.add_argument("--listen", action="append", default=None, metavar="ADDR",
                   help="host:port or unix:///path, repeatable (EPLB_LISTEN; "
                   "default 127.0.0.1:50051)")
    p.add_argument("--metrics-port", type=int, default=_env("METRICS_PORT", "9090"),
                   help="Prometheus HTTP port, 0 disables (default 9090)")
    p.add_argument("--metrics-host", default=_env("METRICS_HOST", "127.0.0.1"),
                   help="address the metrics endpoint binds (default 127.0.0.1)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=_env("DEVICE", "auto"))
    p.add_argument("--max-concurrent", type=int, default=_env("MAX_CONCURRENT", "16"),
                   help="engine requests running or queued; more get RESOURCE_EXHAUSTED "
                   "(default 16)")
    p.add_argument("--max-layers", type=int, default=_env("MAX_LAYERS", str(limits.max_layers)))
    p.add_argument("--max-experts", type=int,
                   default=_env("MAX_EXPERTS", str(limits.max_experts)))
    p.add_argument("--max-replicas", type=int,
                   default=_env("MAX_REPLICAS", str(limits.max_replicas)))
    p.add_argument("--max-windows", type=int,
                   default=_env("MAX_WINDOWS", str(limits.max_windows)),
                   help="load-history windows T in a [T, L, E] request")
    p.add_argument("--max-request-bytes", type=int,
                   default=_env("MAX_REQUEST_BYTES", str(limits.max_request_bytes)))
    p.add_argument("--max-response-bytes", type=int,
                   default=_env("MAX_RESPONSE_BYTES", str(limits.max_response_bytes)),
                   help="a response's worst case above this is RESOURCE_EXHAUSTED up front")
    p.add_argument("--tls-cert", default=_env("TLS_CERT", None), help="PEM server certificate")
    p.add_argument("--tls-key", default=_env("TLS_KEY", None), help="PEM server private key")
    p.add_argument("--tls-client-ca", default=_env("TLS_CLIENT_CA", None),
                   help="PEM CA bundle: require client certificates signed by it (mutual TLS)")
    p.add_argument("--no-reflection", action="store_true", default=_env_bool("NO_REFLECTION"))
    p.add_argument("--grace-period", type=float, default=_env("GRACE_PERIOD", "10"),
                   help="seconds in-flight RPCs get to finish after SIGTERM (default 10)")
    p.add_argument("--warmup-shapes", action="append", default=None, metavar="LxE:P:G:N:K",
                   help="shapes run once at start-up, repeatable (EPLB_WARMUP_SHAPES; "
                   "default 2x16:32:8:2:4; 'none' skips warm-up)")
    p.add_argument("--unix-socket-mode", type=_octal,
                   default=_env("UNIX_SOCKET_MODE", "600"),
                   help="octal file mode of Unix sockets (default 600)")
    p.add_argument("--threads", type=int, default=_env("THREADS", "1"),
                   help="most threads one plan uses; only large requests (layers x slots x "
                   "windows >= 262144) use more than one (default 1: a sidecar shares its "
                   "node's cores with the serving engine)")
    p.add_argument("--isolation", choices=("process", "thread"),
                   default=_env("ISOLATION", "process"),
                   help="process (default): the engine runs in a supervised worker process that "
                   "is restarted after a crash or a time-out; thread: in the server process")
    p.add_argument("--plan-time-limit", type=float, default=_env("PLAN_TIME_LIMIT", "120"),
                   help="seconds one engine job may run before its worker is restarted "
                   "(default 120)")
    p.add_argument("--coalesce-seconds", type=float, default=_env("COALESCE_SECONDS", "5"),
                   help="identical requests share one computation while it runs and for this "
                   "long after (default 5; 0 shares only computations in flight)")
    p.add_argument("--compile-only", action="store_true",
                   help="compile (or load) every kernel the warm-up shapes reach into numba's "
                   "cache, then exit: for image builds and init containers")
    p.add_argument("--log-level", default=_env("LOG_LEVEL", "INFO"))
    return p


def config_from(args: argparse.Namespace) -> Config:
    """Builds the server Config from parsed flags."""
    listen = args.listen or _env_list("LISTEN", ["127.0.0.1:50051"])
    shapes = args.warmup_shapes or _env_list("WARMUP_SHAPES", ["2x16:32:8:2:4"])
    return Config(
        listen=listen, metrics_host=args.metrics_host,
        metrics_port=args.metrics_port or None, device=args.device,
        max_concurrent=args.max_concurrent,
        limits=Limits(max_layers=args.max_layers, max_experts=args.max_experts,
                      max_replicas=args.max_replicas, max_windows=args.max_windows,
                      max_request_bytes=args.max_request_bytes,
                      max_response_bytes=args.max_response_bytes),
        tls_cert=args.tls_cert, tls_key=args.tls_key, tls_client_ca=args.tls_client_ca,
        reflection=not args.no_reflection, grace_period=args.grace_period,
        warmup_shapes=[] if shapes == ["none"] else shapes,
        unix_socket_mode=args.unix_socket_mode, threads=args.threads,
        isolation=args.isolation, plan_time_limit=args.plan_time_limit,
        coalesce_seconds=args.coalesce_seconds)


def compile_only(config: Config) -> int:
    """Runs the warm-up in this process (filling numba's cache); 0 when every request planned."""
    import time

    from . import warmup
    from .service import PlacementServicer

    import eplb_server

    start = time.perf_counter()
    servicer = PlacementServicer(eplb_server, resolve_device(config.device), config.limits)
    shapes = [Shape.parse(spec) for spec in config.warmup_shapes]
    for step, total, what in warmup.warm_up(servicer, shapes):
        logging.getLogger("eplb_server").info("compile %d/%d: %s (%.1f s)", step, total, what,
                                              time.perf_counter() - start)
    return 0


def main(argv=None) -> int:
    """Parses flags, serves until SIGTERM, returns the exit status."""
    p = parser()
    args = p.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        p.error("--tls-client-ca needs --tls-cert and --tls-key")
    if args.max_concurrent < 1:
        p.error("--max-concurrent must be at least 1")
    if args.threads < 1:
        p.error("--threads must be at least 1")
    if not args.plan_time_limit > 0:
        p.error("--plan-time-limit must be positive")
    if not args.coalesce_seconds >= 0:
        p.error("--coalesce-seconds must be zero or positive")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format=LOG_FORMAT)
    try:
        config = config_from(args)
        if config.device == "cuda":  # fail fast; auto and cpu need no torch in this process
            resolve_device(config.device)
        for spec in config.warmup_shapes:
            Shape.parse(spec)
    except ValueError as e:
        p.error(str(e))
    if args.compile_only:
        return compile_only(config)
    worker = None
    if config.isolation == "process":  # its imports and warm-up overlap ours and the binding
        from .engine_process import default_settings, spawn_worker

        worker = spawn_worker(default_settings(config))
    from .server import serve

    code = asyncio.run(serve(config, worker=worker))
    # Drained and stopped: leave at once instead of waiting seconds for gRPC's and the
    # executors' threads to wind down (past a pod's grace period on a busy node).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
