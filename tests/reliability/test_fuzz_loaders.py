"""Fuzzing of the client's file loaders: any file gives an array of the promised form or a
LoadError, never another exception, a hang or an allocation the file cannot fill."""

import io
import json
import tracemalloc
import zipfile

import numpy as np
import pytest
from eplb_client.loaders import LoadError, load_loads, load_mapping
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
EXTENSIONS = [".json", ".npy", ".npz", ".safetensors"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("files")


def load_each_way(path):
    """Both loaders on one file: their promise or a LoadError."""
    for loader, ranks in ((load_loads, (2, 3)), (load_mapping, (2,))):
        try:
            array = loader(path)
        except LoadError as e:
            assert str(e)
            continue
        assert isinstance(array, np.ndarray) and array.ndim in ranks
        assert array.dtype.kind in "biuf"


def npy_bytes(array) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def npy_header(shape, descr="<f8") -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False,
                                               "shape": tuple(shape)})
    return out.getvalue()


def npz_bytes(members: dict) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def safetensors_bytes(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + payload


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.sampled_from(["logical_count", "phy2log", "a"]),
                                            inner, max_size=3)),
    max_leaves=40)
dims = st.one_of(st.integers(0, 8), st.integers(1 << 20, 1 << 62))


def valid_file_bytes(ext):
    array = np.arange(12, dtype=np.float64).reshape(3, 4)
    if ext == ".json":
        return json.dumps({"logical_count": array.tolist()}).encode()
    if ext == ".npy":
        return npy_bytes(array)
    if ext == ".npz":
        return npz_bytes({"loads.npy": npy_bytes(array)})
    return safetensors_bytes({"w": {"dtype": "F64", "shape": [3, 4], "data_offsets": [0, 96]}},
                             array.tobytes())


@st.composite
def malformed_file(draw):
    """(extension, bytes): a valid file damaged, a forged header, structured junk or noise."""
    ext = draw(st.sampled_from(EXTENSIONS))
    kind = draw(st.sampled_from(["damaged", "forged", "json", "noise"]))
    if kind == "damaged":
        data = bytearray(valid_file_bytes(ext))
        for _ in range(draw(st.integers(1, 4))):
            if draw(st.booleans()):  # truncate
                del data[draw(st.integers(0, len(data))):]
            elif data:  # overwrite a byte
                data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return ext, bytes(data)
    if kind == "forged":  # headers declaring arrays the file does not hold
        shape = draw(st.lists(dims, min_size=0, max_size=4))
        descr = draw(st.sampled_from(["<f8", "<i4", "|b1", "<c16", "|O", "<U3", "V8"]))
        payload = draw(st.binary(max_size=64))
        if ext == ".safetensors":
            header = {"w": {"dtype": draw(st.sampled_from(["F64", "I64", "F32", "XX"])),
                            "shape": shape, "data_offsets": [0, draw(st.integers(-8, 1 << 40))]}}
            return ext, safetensors_bytes(header, payload)
        try:
            header = npy_header(shape, descr)
        except (ValueError, TypeError):
            header = npy_header([1, 1])
        return ext, (npz_bytes({"w.npy": header + payload}) if ext == ".npz"
                     else header + payload)
    if kind == "json":
        return ".json", json.dumps(draw(json_values)).encode()
    return ext, draw(st.binary(max_size=512))


@FUZZ
@given(malformed_file())
def test_malformed_files_give_load_error_or_an_array(folder, case):
    ext, data = case
    path = folder / f"fuzz{ext}"
    path.write_bytes(data)
    load_each_way(path)


@pytest.mark.parametrize("ext", [".json", ".npy"])
def test_pathological_files(folder, ext):
    """Deep nesting, ragged rows, binary junk in JSON; an empty file."""
    cases = [b"[" * 100_000 + b"]" * 100_000, b"[[1, 2], [3]]", b"\xff\xfe\x00\x01",
             b"", b"[[NaN, 1e999]]"] if ext == ".json" else [b"", b"\x93NUMPY\x01\x00"]
    for data in cases:
        path = folder / f"case{ext}"
        path.write_bytes(data)
        load_each_way(path)


@pytest.mark.parametrize("ext", [".npy", ".npz"])
def test_declared_huge_array_is_refused_without_allocating_it(folder, ext):
    """A header declaring 2^40 x 2^20 float64s (8 EiB) or 2^14 x 2^14 (2 GiB) over 64 bytes."""
    for shape in ([1 << 40, 1 << 20], [1 << 14, 1 << 14]):
        data = npy_header(shape) + b"\0" * 64
        if ext == ".npz":
            data = npz_bytes({"w.npy": data})
        path = folder / f"huge{ext}"
        path.write_bytes(data)
        tracemalloc.start()
        try:
            with pytest.raises(LoadError, match="more data than the file holds"):
                load_loads(path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, f"{peak} bytes allocated"
