"""deploy/: the Prometheus alert rules pass `promtool check rules` and their unit tests
(`promtool test rules`), and the rules and the Grafana dashboard name only series the server
exports."""

import json
import re
import shutil
import subprocess

import pytest
from eplb_server.metrics import Metrics

from ..service.servicekit import REPO

RULES = REPO / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "alerts.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "eplb.json"
# Series of the supervised engine process (issue 22), exported by the engine supervisor's
# metrics rather than by Metrics: they count as known until they are registered there too.
SERIES = re.compile(r"\b((?:eplb|grpc_server)_[a-z0-9_]+|up)\s*(?=[{\[)]|\s*(?:[<>=!]|$))")
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed "
                                    "(Debian: apt-get install prometheus; scripts/test.sh does)")


def promtool(*args):
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120,
                          cwd=RULES.parent)


@needs_promtool
def test_rules_are_valid():
    result = promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


@needs_promtool
def test_rule_unit_tests_pass():
    """alerts.test.yml: each alert fires on the series that should fire it, at the time it
    should, with its labels and text, and stays quiet on the healthy instance beside it."""
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def exported_series():
    """Every sample name the server's registry exposes (with _total, _bucket, ... suffixes)."""
    suffixes = {"counter": ("_total",), "gauge": ("",), "info": ("_info",),
                "histogram": ("_bucket", "_count", "_sum")}
    names = {family.name + suffix for family in Metrics().registry.collect()
             for suffix in suffixes[family.type]}
    return names | {"up"}


def rule_expressions():
    return re.findall(r"expr: (?:\|\n)?((?:.+\n?)+?)(?=\s+(?:for|labels):)", RULES.read_text())


def dashboard_expressions():
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]


@pytest.mark.parametrize("source", ["rules", "dashboard"])
def test_expressions_name_exported_series(source):
    expressions = rule_expressions() if source == "rules" else dashboard_expressions()
    assert len(expressions) >= (10 if source == "rules" else 12)
    known = exported_series()
    used = {name for e in expressions for name in SERIES.findall(e)}
    assert used - known == set(), f"unknown series in {source}"
    assert {"grpc_server_handled_total", "eplb_engine_pending_requests"} <= used


def test_dashboard_is_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(set(ids)) == len(ids)
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert {"x", "y", "w", "h"} <= panel["gridPos"].keys()
