"""A real Prometheus scrapes a running server; a hang injected into the engine fires the
stuck-engine alert of deploy/prometheus/alerts.yml (its threshold and duration shortened for
the test)."""

import json
import pathlib
import shutil
import socket
import subprocess
import time
import urllib.request

import pytest
from eplb_server.server import Config

from ..service import faulty_engine
from ..service.servicekit import ServerThread, loads, rebalance_request, stub

REPO = pathlib.Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = shutil.which("prometheus")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def firing(port):
    url = f"http://127.0.0.1:{port}/api/v1/alerts"
    try:
        alerts = json.load(urllib.request.urlopen(url, timeout=5))["data"]["alerts"]
    except OSError:
        return set()
    return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}


@pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (Debian's prometheus)")
def test_an_injected_hang_fires_the_stuck_engine_alert(tmp_path):
    rules = RULES.read_text()
    stuck = "expr: eplb_engine_job_seconds > 30\n        for: 15s"
    assert stuck in rules
    (tmp_path / "alerts.yml").write_text(rules.replace(
        stuck, "expr: eplb_engine_job_seconds > 2\n        for: 2s", 1))
    metrics_port, prometheus_port = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{tmp_path / 'alerts.yml'}]
scrape_configs:
  - job_name: eplb
    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]
""")
    running = ServerThread(Config(listen=["127.0.0.1:0"], metrics_port=metrics_port,
                                  warmup_shapes=[], plan_time_limit=120.0,
                                  engine_module="tests.service.faulty_engine"))
    prometheus = subprocess.Popen(
        [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    channel, placement = stub(running.addresses[0])
    try:
        running.wait_warm()
        placement.Rebalance(rebalance_request(), timeout=60)
        time.sleep(3)  # a few scrapes of a healthy server: nothing fires
        assert "EplbEngineStuck" not in firing(prometheus_port)
        weight = loads()
        weight[0, 0] = faulty_engine.HANG
        hung = placement.Rebalance.future(rebalance_request(weight), timeout=120)
        deadline = time.monotonic() + 90
        while "EplbEngineStuck" not in firing(prometheus_port):
            assert time.monotonic() < deadline, "EplbEngineStuck never fired"
            time.sleep(1)
        hung.cancel()
    finally:
        channel.close()
        prometheus.terminate()
        prometheus.wait(30)
        running.close()
