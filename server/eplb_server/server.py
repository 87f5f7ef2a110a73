"""Assembles the grpc.aio server: service, health, reflection, metrics, warm-up, shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from typing import Optional

import grpc
from eplb_client.v1 import placement_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from . import __version__
from .coalescing import Coalescer
from .config import Config, resolve_device  # noqa: F401 (resolve_device: re-exported)
from .engine_process import EngineFailed, ProcessEngine, Stopped, default_settings
from .metrics import Metrics, MetricsInterceptor
from .metrics_http import MetricsHTTPServer
from .transport import SERVICE_NAME, PlacementTransport
from .warmup import Shape
from .worker import ThreadEngine

log = logging.getLogger("eplb_server")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def grpc_options(cfg: Config) -> list:
    """The server's channel arguments: message sizes, connection lifetimes and caps."""
    ms = lambda seconds: max(1, int(seconds * 1000))  # noqa: E731
    return [
        ("grpc.max_receive_message_length", cfg.limits.max_request_bytes),
        ("grpc.max_send_message_length", cfg.limits.max_response_bytes),
        ("grpc.max_connection_idle_ms", ms(cfg.max_connection_idle)),
        ("grpc.max_connection_age_ms", ms(cfg.max_connection_age)),
        ("grpc.max_connection_age_grace_ms", ms(cfg.max_connection_age_grace)),
        ("grpc.max_allowed_incoming_connections", cfg.max_connections),
        ("grpc.max_concurrent_streams", cfg.max_streams),
        ("grpc.keepalive_time_ms", ms(cfg.keepalive_time)),
        ("grpc.keepalive_timeout_ms", ms(cfg.keepalive_timeout)),
        # Clients' keepalive pings (ours send none) no more often than every 10 s.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _unix_path(address: str) -> Optional[str]:
    if not address.startswith("unix:"):
        return None
    path = address[len("unix:"):]
    return path[2:] if path.startswith("//") else path


class PlacementServer:
    """The running service. `engine` (an object with plan and evaluate) runs in this process on
    an engine thread; by default the eplb_server engine runs in a supervised worker process."""

    def __init__(self, config: Config, engine=None, worker=None):
        self.config = config
        self.engine = engine
        self.worker = worker  # an engine worker process already started (engine_process)
        self.addresses = []  # bound targets a client can dial, e.g. "127.0.0.1:50051"
        self.metrics_port = None
        self.warmup_error = None
        self.stop_requested = None
        self._stopping = False
        self._server = self._health = self._worker = self._http = self._warmup = None

    async def start(self):
        """Binds every listener and starts serving; health stays NOT_SERVING until warm-up ends."""
        cfg = self.config
        shapes = [Shape.parse(spec) for spec in cfg.warmup_shapes]
        self.stop_requested = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        metrics = self.metrics = Metrics()
        self._worker = self._engine_host(shapes)
        metrics.pending.set_function(lambda: self._worker.pending)
        metrics.max_pending.set(cfg.max_concurrent)
        metrics.job_seconds.set_function(lambda: self._worker.job_seconds())
        transport = PlacementTransport(self._worker, metrics, Coalescer(cfg.coalesce_seconds))

        self._server = grpc.aio.server(
            interceptors=[MetricsInterceptor(metrics)],
            options=grpc_options(cfg))
        self._server.add_generic_rpc_handlers((transport.handler(),))
        self._health = health.aio.HealthServicer()
        for service in ("", SERVICE_NAME):
            await self._health.set(service, NOT_SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        if cfg.reflection:
            names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self._server)
        umask = os.umask(0o777 & ~cfg.unix_socket_mode)  # sockets are born with their mode
        try:
            self._bind()
        finally:
            os.umask(umask)
        await self._server.start()
        if cfg.metrics_port is not None:
            self._http = MetricsHTTPServer(metrics.registry, cfg.metrics_host, cfg.metrics_port)
            self.metrics_port = self._http.server_port
        log.info("eplb-server %s on %s (device %s, engine %s, metrics %s)", __version__,
                 ", ".join(self.addresses), cfg.device,
                 "in this process" if isinstance(self._worker, ThreadEngine) else "worker process",
                 f"{cfg.metrics_host}:{self.metrics_port}" if self._http else "off")
        self._warmup = asyncio.create_task(self._warm_up())

    def _engine_host(self, shapes):
        cfg = self.config
        if self.engine is None and cfg.isolation == "process":
            return ProcessEngine(default_settings(cfg), cfg.max_concurrent, cfg.plan_time_limit,
                                 self.metrics, self._engine_state, self.worker)
        from . import warmup
        from .engine.threads import set_max_threads
        from .service import PlacementServicer

        engine = self.engine
        if engine is None:
            import eplb_server as engine
        servicer = PlacementServicer(engine, resolve_device(cfg.device), cfg.limits)
        set_max_threads(cfg.threads)

        def warm_up():
            for step, total, what in warmup.warm_up(servicer, shapes):
                log.info("warm-up %d/%d: %s", step, total, what)
        self._engine_state(True)
        return ThreadEngine(servicer, cfg.max_concurrent, warm_up)

    def _engine_state(self, up: bool):
        """From the engine thread: the worker became ready (up) or went away."""
        self.metrics.engine_up.set(1 if up else 0)
        if self._warmup is not None and self._warmup.done() and not self._stopping:
            status = SERVING if up else NOT_SERVING
            try:
                asyncio.run_coroutine_threadsafe(self._set_health(status), self._loop)
            except RuntimeError:  # the loop has closed
                return
            log.info("engine %s", "ready: serving" if up else "down: not serving until it restarts")

    async def _set_health(self, status):
        for service in ("", SERVICE_NAME):
            await self._health.set(service, status)
        self.metrics.serving.set(1 if status == SERVING else 0)

    def _bind(self):
        cfg = self.config
        credentials = None
        if cfg.tls_cert or cfg.tls_key:
            ca = _read(cfg.tls_client_ca) if cfg.tls_client_ca else None
            credentials = grpc.ssl_server_credentials(
                [(_read(cfg.tls_key), _read(cfg.tls_cert))], root_certificates=ca,
                require_client_auth=ca is not None)
        for address in cfg.listen:
            if _unix_path(address) is not None:  # local socket: guarded by its file mode, no TLS
                self._server.add_insecure_port(address)
                self.addresses.append(address)
                continue
            if credentials is not None:
                port = self._server.add_secure_port(address, credentials)
            else:
                port = self._server.add_insecure_port(address)
            host = address.rsplit(":", 1)[0]
            self.addresses.append(f"{host}:{port}")

    async def _warm_up(self):
        start = time.perf_counter()
        try:
            await self._worker.start()
        except Stopped:
            return
        except Exception as e:  # a server that cannot compute must not report SERVING
            if isinstance(e, EngineFailed):
                log.error("%s", e)
            else:
                log.exception("warm-up failed")
            self.warmup_error = e
            self.stop_requested.set()
            return
        if self.stop_requested.is_set():
            return
        ready = self._worker.ready_info
        self.metrics.info.info({
            "version": __version__, "device": ready["device"],
            "torch_version": ready["torch_version"],
            "isolation": "process" if isinstance(self._worker, ProcessEngine) else "thread"})
        await self._set_health(SERVING)
        later = ready.get("steps_later", 0)
        log.info("serving (warm-up %.1f s%s)", time.perf_counter() - start,
                 f"; {later} more steps load from the cache between requests" if later else "")

    async def wait_until_warm(self):
        """Returns once warm-up has finished (or failed: see warmup_error)."""
        await asyncio.shield(self._warmup)

    async def stop(self, grace: Optional[float] = None):
        """NOT_SERVING, refuse new RPCs, let in-flight ones finish within `grace` seconds."""
        grace = self.config.grace_period if grace is None else grace
        self._stopping = True
        await self._health.enter_graceful_shutdown()
        self.metrics.serving.set(0)
        if not self._warmup.done():
            self._worker.shutdown()  # a worker still warming up has nothing to drain
        await self._server.stop(grace)
        self._worker.shutdown()
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        log.info("stopped")


async def serve(config: Config, engine=None, worker=None) -> int:
    """Runs until SIGTERM or SIGINT, then drains; returns the process exit status."""
    server = PlacementServer(config, engine, worker)
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stop_requested.set)
    await server.stop_requested.wait()
    # Draining has begun: a repeated signal must not turn a clean exit into a kill.
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
        signal.signal(sig, signal.SIG_IGN)
    log.info("shutting down (grace %.1f s)", config.grace_period)
    await server.stop()
    return 1 if server.warmup_error is not None else 0
