"""eplb-client as a real subprocess against a real server."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from .conftest import run_cli

TOPO = ["--num-replicas", "48", "--num-groups", "4", "--num-nodes", "2", "--num-gpus", "8"]
V3 = ["--num-replicas", "288", "--num-groups", "8", "--num-nodes", "4", "--num-gpus", "32"]


@pytest.fixture
def loads_file(tmp_path, skewed):
    p = tmp_path / "loads.json"
    p.write_text(json.dumps({"logical_count": [[0.0] * 32] + skewed.tolist()}))
    return p


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert data[-8:-4] == b"IEND"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("command", ["rebalance", "evaluate", "report", "bench", "health", None])
def test_help_has_an_example(command):
    out = run_cli(*([command] if command else []), "--help")
    assert out.returncode == 0
    assert "example" in out.stdout and "eplb-client" in out.stdout


def test_every_help_example_parses():
    from eplb_client.cli import EXAMPLES, build_parser

    parser = build_parser()
    for name, text in EXAMPLES.items():
        for line in text.splitlines():
            words = line.split("#")[0].split("&&")[0].split()
            assert words[0] == "eplb-client" and words[1] == name
            assert parser.parse_args(words[1:]).command == name


def test_rebalance_json_and_chaining(server, loads_file, tmp_path, skewed):
    out = run_cli("rebalance", loads_file, *TOPO, "--policy", "global", "--target", server[0])
    assert out.returncode == 0, out.stderr
    plan = json.loads(out.stdout)
    assert np.asarray(plan["phy2log"]).shape == (6, 48)
    assert np.asarray(plan["logcnt"]).sum(axis=1).tolist() == [48] * 6
    assert plan["policy"] == "global" and plan["current"] is None
    assert 0 < plan["plan"]["balancedness"] <= 1 and "balancedness" in out.stderr
    saved = tmp_path / "plan.json"
    saved.write_text(out.stdout)
    out2 = run_cli("rebalance", loads_file, *TOPO, "--current", saved, "--out",
                   tmp_path / "next.json", "--quiet", env={"EPLB_TARGET": server[1]})
    assert out2.returncode == 0, out2.stderr
    assert out2.stdout == "" and out2.stderr == ""
    nxt = json.loads((tmp_path / "next.json").read_text())
    assert nxt["current"]["balancedness"] == pytest.approx(plan["plan"]["balancedness"], rel=1e-9)


def test_evaluate(server, loads_file, tmp_path):
    mapping = tmp_path / "m.npy"
    np.save(mapping, np.tile(np.arange(48) % 32, (6, 1)))
    out = run_cli("evaluate", loads_file, "--phy2log", mapping, "--num-groups", "4",
                  "--num-nodes", "2", "--num-gpus", "8", "--policy", "global",
                  "--target", server[1])
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["policy"] == "global"
    assert len(result["score"]["layer_balancedness"]) == 6 and result["score"]["mean_gap"] > 0


def test_invalid_request_exits_1_naming_the_field(server, loads_file):
    out = run_cli("rebalance", loads_file, "--num-replicas", "50", *TOPO[2:],
                  "--target", server[0])
    assert out.returncode == 1 and out.stdout == ""
    assert "INVALID_ARGUMENT" in out.stderr and "topology.num_gpus" in out.stderr


def test_missing_file_exits_1(server, tmp_path):
    out = run_cli("rebalance", tmp_path / "absent.json", *TOPO, "--target", server[0])
    assert out.returncode == 1 and "absent.json" in out.stderr


def test_health_exit_codes(server, tmp_path):
    ok = run_cli("health", "--target", server[1])
    assert (ok.returncode, ok.stdout.strip()) == (0, "SERVING")
    unknown = run_cli("health", "--service", "no.Such", "--target", server[0])
    assert (unknown.returncode, unknown.stdout.strip()) == (4, "SERVICE_UNKNOWN")
    dead = run_cli("health", "--target", f"unix://{tmp_path}/none.sock", "--timeout", "2")
    assert dead.returncode == 3 and "UNAVAILABLE" in dead.stderr


def test_usage_error_exits_2():
    assert run_cli("rebalance", "x.json").returncode == 2


def test_bench_prints_percentiles(server):
    out = run_cli("bench", "--requests", "12", "--warmup", "1", "--layers", "4", "--experts", "16",
                  "--num-replicas", "32", "--num-groups", "4", "--num-nodes", "2", "--num-gpus",
                  "8", "--concurrency", "2", "--target", server[0])
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout)
    assert stats["requests"] == 12 and stats["shape"] == [4, 16]
    lat = stats["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    # stderr is a pipe here: no progress bar (test_frictions draws one on a terminal)
    assert "\r" not in out.stderr and "p99" in out.stderr


def test_report_png_size(server, loads_file, tmp_path):
    png = tmp_path / "r.png"
    out = run_cli("report", loads_file, *TOPO, "--png", png, "--size", "900x600",
                  "--target", server[0])
    assert out.returncode == 0, out.stderr
    assert png_size(png) == (900, 600)


def test_report_from_real_snapshot(server, snapshot_path, tmp_path):
    png = tmp_path / "v3.png"
    out = run_cli("report", snapshot_path, *V3, "--png", png, "--target", server[1])
    assert out.returncode == 0, out.stderr
    assert png_size(png) == (1600, 1000)
    assert png.stat().st_size > 20_000  # a drawn figure, not a blank canvas
    assert "deepseek reference plan" in out.stderr
