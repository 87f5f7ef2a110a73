"""Every load and mapping file format the CLI reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import snapshot_paths
from eplb_client.loaders import LoadError, load_loads, load_mapping

W = np.arange(12, dtype=np.float64).reshape(3, 4) + 1


def test_plain_json(tmp_path):
    p = tmp_path / "w.json"
    p.write_text(json.dumps(W.tolist()))
    np.testing.assert_array_equal(load_loads(p), W)


def test_logical_count_json_drops_zero_layers(tmp_path):
    p = tmp_path / "stats.json"
    rows = [[0.0] * 4, W[0].tolist(), [0.0] * 4, W[1].tolist(), W[2].tolist()]
    p.write_text(json.dumps({"logical_count": rows}))
    np.testing.assert_array_equal(load_loads(p), W)


def test_plain_json_keeps_zero_layers(tmp_path):
    p = tmp_path / "w.json"
    p.write_text(json.dumps([[0, 0, 0, 0]] + W.tolist()))
    assert load_loads(p).shape == (4, 4)


def test_json_object_with_key(tmp_path):
    p = tmp_path / "w.json"
    p.write_text(json.dumps({"a": W.tolist(), "b": (2 * W).tolist()}))
    np.testing.assert_array_equal(load_loads(p, key="b"), 2 * W)
    with pytest.raises(LoadError, match="--key"):
        load_loads(p)
    with pytest.raises(LoadError, match="no key 'c'"):
        load_loads(p, key="c")


def test_npy_and_history(tmp_path):
    p = tmp_path / "w.npy"
    hist = np.stack([W, W + 1])
    np.save(p, hist)
    np.testing.assert_array_equal(load_loads(p), hist)


def test_npz_with_key(tmp_path):
    p = tmp_path / "w.npz"
    np.savez(p, loads=W, other=W[:1])
    np.testing.assert_array_equal(load_loads(p, key="loads"), W)


def test_safetensors_single_and_keyed(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    one, many = tmp_path / "one.safetensors", tmp_path / "many.safetensors"
    st.save_file({"w": W.astype(np.float32)}, one)
    st.save_file({"w": W.astype(np.float32), "layer_loads": (3 * W).astype(np.int64)}, many)
    np.testing.assert_array_equal(load_loads(one), W)
    got = load_loads(many, key="layer_loads")
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, 3 * W)
    with pytest.raises(LoadError, match="--key"):
        load_loads(many)


@pytest.mark.parametrize("content, match", [
    ("[1, 2, 3]", "shape"),
    ('[["a", "b"]]', "numeric"),
    ("{not json", "Expecting"),
])
def test_bad_json_is_a_load_error(tmp_path, content, match):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(LoadError, match=match):
        load_loads(p)


def test_unknown_extension_and_missing_file(tmp_path):
    with pytest.raises(LoadError, match="unsupported"):
        load_loads(tmp_path / "w.csv")
    with pytest.raises(LoadError, match="No such file"):
        load_loads(tmp_path / "absent.json")


def test_mapping_from_saved_plan_and_array(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"phy2log": [[0, 1, 2], [2, 1, 0]], "policy": "global"}))
    m = load_mapping(plan)
    assert m.dtype == np.int64 and m.tolist() == [[0, 1, 2], [2, 1, 0]]
    arr = tmp_path / "m.npy"
    np.save(arr, np.array([[0.0, 1.0]]))
    assert load_mapping(arr).dtype == np.int64
    np.save(arr, np.array([[0.5, 1.0]]))
    with pytest.raises(LoadError, match="whole numbers"):
        load_mapping(arr)


@pytest.mark.parametrize("path", snapshot_paths() or [None], ids=lambda p: p.name if p else "none")
def test_real_snapshot(path):
    if path is None:
        pytest.skip("no snapshots in ../shared/data/deepseek-v3")
    w = load_loads(path)
    assert w.shape == (58, 256)
    assert w.any(axis=1).all() and (w >= 0).all()
    raw = np.asarray(json.loads(path.read_text())["logical_count"])
    np.testing.assert_array_equal(w, raw[3:])


def test_mapping_with_infinity_is_a_load_error(tmp_path):
    p = tmp_path / "m.npy"
    np.save(p, np.array([[0.0, 1.0, np.inf]]))
    with pytest.raises(LoadError, match="whole numbers"):
        load_mapping(p)
