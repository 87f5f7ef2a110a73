"""`eplb-client rebalance --format sglang` (a real subprocess against the test server) writes
what SGLang 0.5.23's --init-expert-location reads: a JSON object whose only key,
physical_to_logical_map, becomes init_by_mapping's argument, one row per model layer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ..client.conftest import run_cli
from ..conftest import SNAPSHOTS

V3 = ["--num-replicas", "288", "--num-groups", "8", "--num-nodes", "4", "--num-gpus", "32"]


@pytest.fixture
def snapshot():
    path = SNAPSHOTS / "prefill_in512.json"
    if not path.exists():
        pytest.skip("real snapshots in ../shared/data/deepseek-v3 are absent")
    return path


def rebalance(target, *args):
    out = run_cli("rebalance", *args, "--target", target, "--quiet")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout) if out.stdout else None


def check_sglang_file(data, layers, dense):
    assert list(data) == ["physical_to_logical_map"]  # init_by_mapping(**data) takes no other
    mapping = np.asarray(data["physical_to_logical_map"])
    assert mapping.shape == (layers, 288)
    for row in mapping:
        assert (np.bincount(row, minlength=256) >= 1).all() and row.max() < 256
    assert (mapping[dense] == np.arange(288) % 256).all()  # SGLang's own placement there
    return mapping


def test_sglang_file_has_every_model_layer(server, snapshot, tmp_path):
    target = server.addresses[0]
    plan = rebalance(target, snapshot, *V3)
    out = tmp_path / "location.json"
    rebalance(target, snapshot, *V3, "--format", "sglang", "--out", out)
    counts = np.asarray(json.loads(snapshot.read_text())["logical_count"])
    dense = ~counts.any(axis=1)
    assert dense.sum() == 3  # DeepSeek-V3: first_k_dense_replace = 3
    mapping = check_sglang_file(json.loads(out.read_text()), 61, dense)
    assert np.array_equal(mapping[~dense], plan["phy2log"])  # the plan on the MoE layers
    # The file serves as --current for the next plan (its dense rows are left out).
    again = rebalance(target, snapshot, *V3, "--current", out)
    assert again["migration"]["slots_changed"] == 0


def test_dense_layers_can_be_named(server, snapshot, tmp_path):
    counts = np.asarray(json.loads(snapshot.read_text())["logical_count"], dtype=np.float64)
    moe_only = tmp_path / "moe.npy"
    np.save(moe_only, counts[3:])
    data = rebalance(server.addresses[0], moe_only, *V3, "--format", "sglang",
                     "--dense-layers", "0,1,2")
    check_sglang_file(data, 61, np.arange(61) < 3)


def test_bad_dense_layers_are_a_clear_error(server, snapshot):
    out = run_cli("rebalance", snapshot, *V3, "--format", "sglang", "--dense-layers", "x",
                  "--target", server.addresses[0])
    assert out.returncode == 1 and "--dense-layers" in out.stderr
