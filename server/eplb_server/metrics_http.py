"""The Prometheus endpoint: a small HTTP server with bounded threads, connections and deadlines."""

from __future__ import annotations

import gzip
import logging
import queue
import selectors
import socket
import threading
import time
from urllib.parse import urlsplit

from prometheus_client.exposition import choose_encoder

from .lograte import RateLimitedLog

log = logging.getLogger("eplb_server")
_rate_limited = RateLimitedLog(log)

MAX_HEAD_BYTES = 8192  # request line and headers; a scrape sends a few hundred bytes
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            408: "Request Timeout", 431: "Request Header Fields Too Large",
            503: "Service Unavailable"}


class MetricsHTTPServer:
    """Serves `registry` at /metrics (and /) over HTTP/1.1, one request per connection.

    Bounded where prometheus_client.start_http_server is not (a thread per connection, no
    timeout, a listen backlog of 5): one I/O thread reads every request head without blocking
    and drops those not complete within `request_timeout` seconds; at most `max_connections`
    are open at once (more are closed at once); `threads` workers render and send answers,
    with at most `queued` complete requests waiting for them (more get 503), each answer
    taken within `request_timeout` too; the listen backlog is `backlog`.
    """

    def __init__(self, registry, host: str = "127.0.0.1", port: int = 0, *, threads: int = 2,
                 queued: int = 16, max_connections: int = 128, request_timeout: float = 10.0,
                 backlog: int = 128):
        self.registry = registry
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        self._socket = socket.socket(family, kind, proto)
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._socket.bind(address)
            self._socket.listen(backlog)
            self._socket.setblocking(False)
        except BaseException:
            self._socket.close()
            raise
        self.server_port = self._socket.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._socket, selectors.EVENT_READ)
        self._reading: dict = {}  # socket -> [deadline, bytes so far]
        self._queue: queue.Queue = queue.Queue(queued)
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._io, name="eplb-metrics-io", daemon=True)]
        self._threads += [threading.Thread(target=self._work, name=f"eplb-metrics-{i}",
                                           daemon=True) for i in range(threads)]
        for thread in self._threads:
            thread.start()

    # The I/O thread: accepts, reads request heads, expires slow ones.

    def _io(self):
        while not self._stopping.is_set():
            for key, _ in self._selector.select(timeout=0.25):
                if key.fileobj is self._socket:
                    self._accept()
                else:
                    self._read(key.fileobj)
            now = time.monotonic()
            for conn in [c for c, (deadline, _) in self._reading.items() if deadline <= now]:
                self._drop(conn, 408, b"request timeout\n")
        for conn in list(self._reading):
            self._drop(conn)
        self._selector.close()

    def _accept(self):
        for _ in range(64):  # a burst of connections, without starving the readers
            try:
                conn, _ = self._socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # e.g. EMFILE: try again on the next round
                _rate_limited.warning("metrics-accept", "metrics endpoint cannot accept: %s",
                                      "out of descriptors or closed")
                return
            if len(self._reading) >= self.max_connections:
                _rate_limited.warning("metrics-busy", "metrics endpoint: %d connections open, "
                                      "refusing more", len(self._reading))
                conn.close()
                continue
            conn.setblocking(False)
            self._reading[conn] = [time.monotonic() + self.request_timeout, b""]
            self._selector.register(conn, selectors.EVENT_READ)

    def _read(self, conn):
        state = self._reading.get(conn)
        if state is None:
            return
        try:
            chunk = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            return self._drop(conn)
        state[1] += chunk
        if b"\r\n\r\n" in state[1]:
            self._selector.unregister(conn)
            del self._reading[conn]
            try:
                self._queue.put_nowait((conn, state[1].split(b"\r\n\r\n", 1)[0], state[0]))
            except queue.Full:
                _rate_limited.warning("metrics-queue", "metrics endpoint busy: request refused")
                _send_quietly(conn, _response(503, b"busy\n"))
                conn.close()
        elif len(state[1]) > MAX_HEAD_BYTES:
            self._drop(conn, 431, b"request head too large\n")

    def _drop(self, conn, status=None, body=b""):
        self._selector.unregister(conn)
        del self._reading[conn]
        if status is not None:
            _send_quietly(conn, _response(status, body))
        conn.close()

    # Workers: render the registry and send it.

    def _work(self):
        while True:
            item = self._queue.get()
            if item is None:
                return
            conn, head, deadline = item
            try:
                conn.setblocking(True)
                _send(conn, self._answer(head), deadline)
            except Exception:  # a client gone mid-answer, or too slow to read it
                _rate_limited.exception("metrics-error", "metrics request failed")
            finally:
                conn.close()

    def _answer(self, head: bytes) -> bytes:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response(400, b"bad request\n")
        method, target = parts[0], urlsplit(parts[1]).path
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            return _response(405, b"method not allowed\n")
        if target not in ("/metrics", "/"):
            return _response(404, b"not found\n")
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        body = encoder(self.registry)
        extra = {}
        if "gzip" in headers.get("accept-encoding", ""):
            body, extra = gzip.compress(body), {"Content-Encoding": "gzip"}
        return _response(200, body, content_type, extra, head_only=method == "HEAD")

    def shutdown(self):
        """Stops accepting, closes unfinished requests, lets workers finish what they hold."""
        self._stopping.set()
        self._threads[0].join(5)
        self._socket.close()
        while True:  # requests no worker has taken yet
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].close()
        for _ in self._threads[1:]:
            self._queue.put(None)
        for thread in self._threads[1:]:
            thread.join(self.request_timeout + 1)

    def server_close(self):
        """Kept for http.server's interface (shutdown has closed the socket)."""


def _response(status, body, content_type="text/plain; charset=utf-8", extra=None,
              head_only=False) -> bytes:
    headers = {"Content-Type": content_type, "Content-Length": str(len(body)),
               "Connection": "close", **(extra or {})}
    head = f"HTTP/1.1 {status} {_REASONS[status]}\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    return head.encode("latin-1") + (b"" if head_only else body)


def _send(conn, data: bytes, deadline: float):
    """Sends in pieces while the deadline allows (a reader that stalls is dropped)."""
    view = memoryview(data)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("metrics client did not read the answer in time")
        conn.settimeout(remaining)
        sent = conn.send(view[:65536])
        view = view[sent:]


def _send_quietly(conn, data: bytes):
    """A short error answer on a non-blocking socket: what fits in the buffer, or nothing."""
    try:
        conn.send(data)
    except OSError:
        pass
