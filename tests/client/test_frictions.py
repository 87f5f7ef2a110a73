"""A newcomer's first mistakes each get one line naming what to change (issue 26)."""

from __future__ import annotations

import io
import json

import grpc
import numpy as np
import pytest

import eplb_client
from eplb_client import EplbClient, EplbError, LoadError, load_loads
from eplb_client.bench import Progress

from .conftest import run_cli

TOPO = dict(num_replicas=48, num_groups=4, num_nodes=2, num_gpus=8)
CLI_TOPO = ["--num-replicas", "48", "--num-groups", "4", "--num-nodes", "2", "--num-gpus", "8"]
W = np.arange(1, 6 * 32 + 1, dtype=np.float64).reshape(6, 32)


def sglang_dump() -> dict:
    """The shape of SGLang's expert-distribution dump: dense layers all zero, a string field."""
    return {"logical_count": [[0] * 32] + W.tolist() + [[0] * 32],
            "timestamp": "2026-12-07 14:00:00.000000 expert distribution recorder"}


def assert_one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def loads_json(tmp_path):
    p = tmp_path / "loads.json"
    p.write_text(json.dumps(W.tolist()))
    return p


def test_url_target_says_host_port(loads_json):
    out = run_cli("rebalance", loads_json, *CLI_TOPO, "--target", "http://localhost:50051")
    assert out.returncode == 1
    line = assert_one_line(out.stderr)
    assert "is a URL" in line and "--target localhost:50051" in line


def test_loaders_are_public_api():
    assert {"load_loads", "load_mapping", "LoadError"} <= set(eplb_client.__all__)
    assert eplb_client.load_loads is load_loads and issubclass(LoadError, ValueError)


def test_sglang_dump_path_and_dict_go_to_the_client(fake, tmp_path):
    target, servicer = fake
    path = tmp_path / "expert_distribution.json"
    path.write_text(json.dumps(sglang_dump()))
    np.testing.assert_array_equal(load_loads(sglang_dump()), W)  # dense layers dropped
    with EplbClient(target, timeout=10) as c:
        for source in (str(path), path, sglang_dump()):
            r = c.rebalance(source, **TOPO)
            assert r.phy2log.shape == (6, 48)  # the 6 MoE layers, not 8 rows


def test_arrays_of_strings_or_objects_say_what_to_call(fake):
    target, servicer = fake
    with EplbClient(target, timeout=10) as c:
        for bad in (np.array([["a", "b"]]), np.array([{"x": 1}], dtype=object)):
            with pytest.raises(EplbError) as info:
                c.rebalance(bad, **TOPO)
            assert info.value.fields == ("expert_loads",)
            assert "load_loads" in str(info.value) and "\n" not in str(info.value)
    assert servicer.calls == 0


def test_ragged_json_names_the_row(tmp_path, fake):
    p = tmp_path / "ragged.json"
    p.write_text(json.dumps([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3]]))
    with pytest.raises(LoadError, match=r"ragged: row \[2\] has 3 values, row \[0\] has 4"):
        load_loads(p)
    out = run_cli("rebalance", p, *CLI_TOPO, "--target", fake[0])
    assert out.returncode == 1
    line = assert_one_line(out.stderr)
    assert "ragged" in line and "inhomogeneous" not in line
    with EplbClient(fake[0], timeout=10) as c, pytest.raises(EplbError, match="ragged") as info:
        c.rebalance([[1.0, 2.0], [3.0]], **TOPO)
    assert info.value.fields == ("expert_loads",)


def test_robust_needs_a_history_client_side(fake):
    target, servicer = fake
    with EplbClient(target, timeout=10) as c:
        with pytest.raises(EplbError) as info:
            c.rebalance(W, **TOPO, objective="robust")
        assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.fields == ("history.objective",) and "[T, L, E]" in str(info.value)
        assert servicer.calls == 0
        c.rebalance(np.stack([W, W + 1]), **TOPO, objective="robust")  # a history is fine
        assert servicer.calls == 1


def test_progress_bar_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    log, tty = io.StringIO(), Tty()
    for stream in (log, tty):
        bar = Progress(3, stream=stream)
        for _ in range(3):
            bar.update()
        bar.close()
    assert log.getvalue() == ""
    assert "\r" in tty.getvalue() and tty.getvalue().endswith("3/3\n")


def test_bench_to_a_pipe_has_no_carriage_returns(fake):
    out = run_cli("bench", "-n", "5", "--warmup", "0", "--layers", "4", "--experts", "32",
                  *CLI_TOPO, "--target", fake[0])
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr
    assert_one_line(out.stderr)


def test_tls_against_plaintext_is_one_quiet_line(server):
    out = run_cli("health", "--tls", "--target", server[0], "--timeout", "5")
    assert out.returncode == 3
    line = assert_one_line(out.stderr)  # no gRPC core handshake log lines
    assert "TLS handshake failed" in line and "drop --tls" in line


def test_no_server_says_so(tmp_path):
    out = run_cli("health", "--target", f"unix://{tmp_path}/none.sock", "--timeout", "2")
    assert out.returncode == 3
    assert "no server at" in assert_one_line(out.stderr)


def test_evaluate_uses_the_saved_plans_bound(server, tmp_path, skewed):
    loads = tmp_path / "loads.json"
    loads.write_text(json.dumps(skewed.tolist()))
    plan = tmp_path / "plan.json"
    out = run_cli("rebalance", loads, *CLI_TOPO, "--policy", "global", "--out", plan,
                  "--target", server[0])
    assert out.returncode == 0, out.stderr
    planned = json.loads(plan.read_text())["plan"]
    topo = CLI_TOPO[2:]  # evaluate takes no --num-replicas
    out = run_cli("evaluate", loads, "--phy2log", plan, *topo, "--target", server[0])
    assert out.returncode == 0, out.stderr
    scored = json.loads(out.stdout)
    assert scored["policy"] == "global" and "global bound" in out.stderr
    assert "saved plan" in out.stderr
    assert scored["score"]["mean_gap"] == pytest.approx(planned["mean_gap"], rel=1e-9)
    out = run_cli("evaluate", loads, "--phy2log", plan, *topo, "--policy", "auto",
                  "--target", server[0])
    assert json.loads(out.stdout)["policy"] == "hierarchical" and "hierarchical bound" in out.stderr
    with EplbClient(server[0], timeout=60) as c:  # the Python client: a result carries its policy
        r = c.rebalance(skewed, **TOPO, policy="global")
        assert c.evaluate(skewed, r, **{k: TOPO[k] for k in topo_keys()}).policy == "global"


def topo_keys():
    return ("num_groups", "num_nodes", "num_gpus")


def test_tls_files_half_a_pair_or_missing(tmp_path):
    out = run_cli("health", "--tls-cert", tmp_path / "client.pem", "--target", "localhost:1")
    assert out.returncode == 3 and "--tls-key and --tls-cert" in assert_one_line(out.stderr)
    out = run_cli("health", "--tls-ca", tmp_path / "none.pem", "--target", "localhost:1")
    assert out.returncode == 3 and "cannot read" in assert_one_line(out.stderr)
