"""Converts numpy arrays to and from the eplb.v1.Tensor message (little-endian, row-major)."""

from __future__ import annotations

import math

import numpy as np

from .v1 import placement_pb2 as pb

_NUMPY_OF = {
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
    pb.DTYPE_FLOAT64: np.dtype("<f8"),
    pb.DTYPE_INT32: np.dtype("<i4"),
    pb.DTYPE_INT64: np.dtype("<i8"),
}
_DTYPE_OF = {np.dtype(v).newbyteorder("="): k for k, v in _NUMPY_OF.items()}


class TensorError(ValueError):
    """A Tensor message that does not describe a valid array."""


def is_torch(x) -> bool:
    """True for a torch.Tensor, detected without importing torch."""
    return type(x).__module__.split(".")[0] == "torch" and hasattr(x, "detach")


def as_numpy(x) -> np.ndarray:
    """Converts a numpy array, torch tensor (any device) or nested list to a numpy array."""
    if is_torch(x):
        t = x.detach().cpu()
        if str(t.dtype) in ("torch.float16", "torch.bfloat16"):
            t = t.double()
        return t.numpy()
    return np.asarray(x)


def to_tensor(array) -> pb.Tensor:
    """Encodes an array-like as raw little-endian bytes; bools and other ints become int64."""
    a = as_numpy(array)
    if a.dtype.kind in "biu" and a.dtype.newbyteorder("=") not in _DTYPE_OF:
        a = a.astype(np.int64)
    elif a.dtype.kind == "f" and a.dtype.newbyteorder("=") not in _DTYPE_OF:
        a = a.astype(np.float64)
    dtype = _DTYPE_OF.get(a.dtype.newbyteorder("="))
    if dtype is None:
        raise TensorError(f"unsupported dtype {a.dtype}")
    data = np.ascontiguousarray(a, dtype=_NUMPY_OF[dtype]).tobytes()
    return pb.Tensor(dtype=dtype, shape=list(a.shape), data=data)


def from_tensor(t: pb.Tensor, *, max_elements: int | None = None) -> np.ndarray:
    """Decodes a Tensor message; raises TensorError on any inconsistency, before allocating."""
    if t.dtype not in _NUMPY_OF:
        raise TensorError(f"unknown dtype {t.dtype}")
    shape = tuple(int(d) for d in t.shape)
    if any(d < 0 for d in shape):
        raise TensorError(f"negative dimension in shape {list(shape)}")
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise TensorError(f"{count} elements exceed the limit of {max_elements}")
    sources = [bool(t.data), len(t.float_values) > 0, len(t.int_values) > 0]
    if sum(sources) > 1:
        raise TensorError("set only one of data, float_values, int_values")
    dtype = _NUMPY_OF[t.dtype]
    if t.float_values:
        values = np.asarray(t.float_values, dtype=np.float64)
        if dtype.kind == "i" and values.size and not (
                np.isfinite(values).all() and (values == np.round(values)).all()):
            raise TensorError(f"float_values of a {dtype.name} tensor must be whole numbers")
    elif t.int_values:
        values = np.asarray(t.int_values, dtype=np.int64)
    else:
        if len(t.data) != count * dtype.itemsize:
            raise TensorError(
                f"data has {len(t.data)} bytes, shape {list(shape)} of {dtype.name} needs "
                f"{count * dtype.itemsize}")
        return np.frombuffer(t.data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    if values.size != count:
        raise TensorError(f"{values.size} values given, shape {list(shape)} needs {count}")
    if dtype.kind == "i" and values.size:  # no silent wrap-around into the integer type
        bits = dtype.itemsize * 8 - 1  # [-2^bits, 2^bits): exact as Python ints and as floats
        low, high = values.min(), values.max()
        if int(low) < -(1 << bits) or (high >= 2.0 ** bits if values.dtype.kind == "f"
                                         else int(high) >= 1 << bits):
            raise TensorError(f"values outside the range of {dtype.name}")
    with np.errstate(over="ignore"):  # a float beyond float32 becomes inf, refused by the caller
        return values.astype(dtype.newbyteorder("=")).reshape(shape)
