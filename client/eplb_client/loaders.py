"""Reads load matrices and mappings from files (.json, .npy, .npz, .safetensors) and SGLang dumps.

Public API (also exported by `eplb_client`): `load_loads`, `load_mapping`, `LoadError`.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np

LOGICAL_COUNT = "logical_count"


class LoadError(ValueError):
    """A file that does not hold the expected array."""


def _check_npy_header(fp, available: int, where) -> None:
    """Raises LoadError unless the .npy header at fp's position declares at most `available`
    bytes of data: a header's shape is never trusted with an allocation the file cannot fill."""
    start = fp.tell()
    version = np.lib.format.read_magic(fp)
    if version not in ((1, 0), (2, 0), (3, 0)):
        raise LoadError(f"{where}: unsupported .npy format version {version}")
    # Versions 2.0 and 3.0 share a header layout (3.0 allows utf-8 field names).
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    try:
        shape, _, dtype = read(fp)
    except Exception as e:  # numpy parses the header as Python source: many error types
        raise LoadError(f"{where}: malformed .npy header: {e}") from None
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if needed > available - (fp.tell() - start):
        raise LoadError(f"{where}: header declares shape {list(shape)} of {dtype}, "
                        f"more data than the file holds")


def _checked_npy(path):
    with open(path, "rb") as f:
        _check_npy_header(f, os.fstat(f.fileno()).st_size, path)


def _checked_npz(path):
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            if info.filename.endswith(".npy"):
                with z.open(info) as member:
                    _check_npy_header(member, info.file_size, f"{path}[{info.filename}]")


def _pick(mapping: dict, key: str | None, path, default_keys=()) -> tuple[str, object]:
    if key is not None:
        if key not in mapping:
            raise LoadError(f"{path}: no key {key!r}; keys: {', '.join(sorted(mapping))}")
        return key, mapping[key]
    for k in default_keys:
        if k in mapping:
            return k, mapping[k]
    if len(mapping) == 1:
        return next(iter(mapping.items()))
    raise LoadError(f"{path}: several arrays ({', '.join(sorted(mapping))}); choose one with "
                    "--key (key= in Python)")


def _ragged(data, where) -> str | None:
    """Where nested lists stop being rectangular: 'row 3 has 255 values, row 0 has 256'."""
    def walk(x, path):
        if not isinstance(x, (list, tuple)) or not x:
            return None
        lengths = [len(v) if isinstance(v, (list, tuple)) else None for v in x]
        first = lengths[0]
        for i, n in enumerate(lengths):
            if n != first:
                at = "".join(f"[{k}]" for k in path)
                what = lambda m: "a number" if m is None else f"{m} values"  # noqa: E731
                return f"{where}: ragged: row {at}[{i}] has {what(n)}, row {at}[0] has " \
                       f"{what(first)}; every layer needs the same number of values"
        for i, v in enumerate(x):
            found = walk(v, path + [i])
            if found:
                return found
        return None
    return walk(data, [])


def as_array(data, where="loads") -> np.ndarray:
    """np.asarray with a readable LoadError for ragged nested lists."""
    try:
        return np.asarray(data)
    except ValueError:
        try:
            message = _ragged(data, where)
        except RecursionError:
            message = None
        if message is None:
            raise
        raise LoadError(message) from None


def drop_zero_layers(a: np.ndarray) -> np.ndarray:
    """Drops layers whose loads are all zero (dense layers in SGLang's statistics files)."""
    if a.ndim == 2:
        return a[a.any(axis=1)]
    if a.ndim == 3:
        return a[:, a.any(axis=(0, 2))]
    return a


def read_array(path, key: str | None = None, default_keys=()) -> tuple[np.ndarray, str | None]:
    """Reads one array; returns it and the key it came from (None for a bare array)."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".json":
            with open(path) as f:
                data = json.load(f)
            if isinstance(data, dict):
                k, v = _pick(data, key, path, default_keys)
                return as_array(v, path), k
            return as_array(data, path), None
        if ext == ".npy":
            _checked_npy(path)
            return np.load(path, allow_pickle=False), None
        if ext == ".npz":
            _checked_npz(path)
            with np.load(path, allow_pickle=False) as z:
                k, v = _pick(dict(z.items()), key, path, default_keys)
                return np.asarray(v), k
        if ext == ".safetensors":
            try:
                from safetensors.numpy import load_file
            except ImportError:
                raise LoadError("reading .safetensors needs the safetensors package") from None
            try:
                tensors = load_file(path)
            except OSError:
                raise
            except Exception as e:  # SafetensorError and kin: a malformed file
                raise LoadError(f"{path}: not a valid safetensors file: {e}") from None
            k, v = _pick(tensors, key, path, default_keys)
            return np.asarray(v), k
    except LoadError:
        raise
    except RecursionError:
        raise LoadError(f"{path}: nested too deeply") from None
    # Malformed content: bad JSON or text encoding, ragged lists, broken .npy headers, truncated
    # data, bad zip archives, pickled objects.
    except (OSError, ValueError, EOFError, SyntaxError, zipfile.BadZipFile) as e:
        raise LoadError(f"{path}: {e}") from None
    raise LoadError(f"{path}: unsupported file type {ext or '(none)'}; "
                    "use .json, .npy, .npz or .safetensors")


def load_loads(source, key: str | None = None) -> np.ndarray:
    """Expert loads [L, E] or a history [T, L, E] from a file path, or from an already parsed
    SGLang dump (a dict such as `json.load` gives).

    Files: .json (a plain array, or an object: SGLang's {"logical_count": [[...]], ...} is
    found by itself, other keys need `key`), .npy, .npz and .safetensors (`key` picks one of
    several arrays). In the SGLang form, all-zero (dense) layers are dropped, so DeepSeek-V3's 61
    rows become its 58 MoE layers. Raises LoadError (a ValueError) naming what is wrong.
    """
    if isinstance(source, dict):
        path = "loads"
        k, v = _pick(source, key, path, (LOGICAL_COUNT,))
        a = as_array(v, f"loads[{k!r}]")
    else:
        path = source
        a, k = read_array(source, key, default_keys=(LOGICAL_COUNT,))
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise LoadError(f"{path}: loads must be a numeric array, not {a.dtype}")
    if a.ndim not in (2, 3):
        raise LoadError(f"{path}: loads must be [layers, experts] or [windows, layers, experts]; "
                        f"got shape {list(a.shape)}")
    if k == LOGICAL_COUNT:
        a = drop_zero_layers(a)
    return a


def load_mapping(path, key: str | None = None) -> np.ndarray:
    """A phy2log mapping [L, P] (int64) from a file: a bare array, or the "phy2log" of a plan that
    `eplb-client rebalance` saved. Raises LoadError."""
    a, _ = read_array(path, key, default_keys=("phy2log",))
    if a.dtype == object or a.dtype.kind not in "biuf" or a.ndim != 2:
        raise LoadError(f"{path}: a mapping must be an integer [layers, slots] array")
    if a.dtype.kind == "f":
        if not (np.all(np.isfinite(a)) and np.all(a == np.round(a))):
            raise LoadError(f"{path}: a mapping must hold whole numbers")
    return a.astype(np.int64)


def saved_policy(path) -> str | None:
    """The "policy" a plan saved by `eplb-client rebalance` was made with; None for other files."""
    if os.path.splitext(os.fspath(path))[1].lower() != ".json":
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError):
        return None
    policy = data.get("policy") if isinstance(data, dict) else None
    return policy if isinstance(policy, str) else None
