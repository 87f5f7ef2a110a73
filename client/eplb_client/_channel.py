"""Target parsing, channel options and credentials shared by the sync and asyncio clients."""

from __future__ import annotations

import os
from dataclasses import dataclass

import grpc

DEFAULT_TARGET = "localhost:50051"
DEFAULT_TIMEOUT = 30.0
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def default_target() -> str:
    """EPLB_TARGET from the environment, else localhost:50051."""
    return os.environ.get("EPLB_TARGET") or DEFAULT_TARGET


def split_targets(target) -> list[str]:
    """'a:1,b:2', ['a:1', 'b:2'] or 'unix:///path' -> a list of gRPC targets."""
    if target is None:
        target = default_target()
    items = target.split(",") if isinstance(target, str) else list(target)
    out = [t.strip() for t in items if t and t.strip()]
    if not out:
        raise ValueError("no target given")
    for t in out:
        if t.startswith(("http://", "https://")):
            host = t.split("://", 1)[1].rstrip("/")
            raise ValueError(f"target {t!r} is a URL: give host:port (--target {host}) "
                             "or unix:///path; TLS is --tls, not https://")
    return out


def channel_options(max_message_bytes: int = MAX_MESSAGE_BYTES, server_name: str | None = None,
                    extra=()) -> list[tuple[str, object]]:
    """Options for a long-lived sidecar connection: large messages, fast reconnect, keepalive.

    Keepalive pings run only while a call is in flight (a dead peer fails the call in ~80 s
    instead of hanging), so servers with default ping policies never see too many pings; an
    idle connection is closed after two minutes instead, and the next call reconnects, so a
    connection that a middlebox dropped while idle is never reused."""
    opts = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.keepalive_permit_without_calls", 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.client_idle_timeout_ms", 120_000),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 5_000),
        ("grpc.enable_retries", 0),
    ]
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return opts + list(extra)


@dataclass(frozen=True)
class Tls:
    """TLS material (PEM bytes, or paths to PEM files); all None means plaintext."""

    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None
    server_name: str | None = None

    @staticmethod
    def _pem(value):
        if value is None or isinstance(value, bytes):
            return value
        with open(os.fspath(value), "rb") as f:
            return f.read()

    def credentials(self, force: bool = False):
        """grpc.ChannelCredentials, or None for a plaintext channel."""
        material = (self.root_certificates, self.private_key, self.certificate_chain)
        if not force and all(m is None for m in material):
            return None
        if (self.private_key is None) != (self.certificate_chain is None):
            raise ValueError("private_key and certificate_chain (CLI: --tls-key and --tls-cert) "
                             "go together (mutual TLS)")
        return grpc.ssl_channel_credentials(*(self._pem(m) for m in material))
