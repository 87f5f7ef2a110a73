"""Issue 22, case 6: the metrics endpoint is bounded: slow and half-sent requests cost no
thread and are dropped at their deadline, connections beyond the cap are closed, and scrapes
keep being answered meanwhile."""

import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families

from eplb_server.metrics_http import MetricsHTTPServer


@pytest.fixture
def endpoint():
    registry = CollectorRegistry()
    Counter("probe_calls", "A test counter.", registry=registry).inc(3)
    server = MetricsHTTPServer(registry, "127.0.0.1", 0, threads=2, queued=4,
                               max_connections=64, request_timeout=1.5)
    yield server
    server.shutdown()


def get(port, path="/metrics", method="GET", headers=None, timeout=5):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, dict(response.headers), response.read()


def samples(body: bytes) -> dict:
    return {s.name: s.value for f in text_string_to_metric_families(body.decode())
            for s in f.samples}


def test_scrape(endpoint):
    status, headers, body = get(endpoint.server_port)
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert samples(body)["probe_calls_total"] == 3.0
    _, headers, body = get(endpoint.server_port, headers={"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and body[:2] == b"\x1f\x8b"
    status, _, body = get(endpoint.server_port, method="HEAD")
    assert status == 200 and body == b""
    _, headers, _ = get(endpoint.server_port, headers={
        "Accept": "application/openmetrics-text; version=1.0.0"})
    assert headers["Content-Type"].startswith("application/openmetrics-text")


@pytest.mark.parametrize("path,method,code", [("/other", "GET", 404), ("/metrics", "POST", 405)])
def test_other_requests_refused(endpoint, path, method, code):
    with pytest.raises(urllib.error.HTTPError) as failure:
        get(endpoint.server_port, path, method)
    assert failure.value.code == code


def half_sent(port, n):
    out = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never the blank line
        out.append(s)
    return out


def test_half_sent_requests_cost_no_thread_and_expire(endpoint):
    threads = threading.active_count()
    held = half_sent(endpoint.server_port, 40)
    try:
        start = time.monotonic()
        status, _, body = get(endpoint.server_port, timeout=5)  # answered beside them
        assert status == 200 and time.monotonic() - start < 1.0
        assert threading.active_count() == threads
        for s in held:  # each is answered 408 and closed at its deadline
            s.settimeout(5)
            data = s.recv(4096)
            assert data.startswith(b"HTTP/1.1 408") or data == b""
            assert s.recv(4096) == b""
        assert time.monotonic() - start < 4.5
    finally:
        for s in held:
            s.close()


def test_connections_beyond_the_cap_are_closed(endpoint):
    held = half_sent(endpoint.server_port, endpoint.max_connections)
    try:
        time.sleep(0.3)
        extra = socket.create_connection(("127.0.0.1", endpoint.server_port), timeout=5)
        extra.sendall(b"GET /metrics HTTP/1.1\r\n\r\n")
        try:  # closed without an answer (a reset, as the request was left unread)
            assert extra.recv(4096) == b""
        except ConnectionResetError:
            pass
        extra.close()
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)  # their slots free up as the server sees them close
    assert get(endpoint.server_port)[0] == 200


def test_oversized_head_is_refused(endpoint):
    s = socket.create_connection(("127.0.0.1", endpoint.server_port), timeout=5)
    s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000)
    assert s.recv(4096).startswith(b"HTTP/1.1 431")
    s.close()


def test_listen_backlog_and_shutdown():
    server = MetricsHTTPServer(CollectorRegistry(), "127.0.0.1", 0, backlog=128)
    port = server.server_port
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(100)]
    server.shutdown()
    for s in sockets:
        s.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
