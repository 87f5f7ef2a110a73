"""The engine's edge: numpy arrays in, numpy arrays out; torch tensors in, torch tensors out.
Torch is never imported here, so a process that plans on numpy arrays never loads it."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np
from eplb_client.tensors import as_numpy, is_torch as is_tensor

__all__ = ["as_numpy", "is_tensor", "like", "record_like"]


def like(array: np.ndarray, template):
    """`array` as a tensor on `template`'s device where `template` is a tensor, else as is."""
    if not is_tensor(template):
        return array
    return sys.modules["torch"].from_numpy(np.ascontiguousarray(array)).to(template.device)


def record_like(record, template):
    """A dataclass whose numpy fields become CPU tensors where `template` is a tensor."""
    if record is None or not is_tensor(template):
        return record
    torch = sys.modules["torch"]
    return dataclasses.replace(record, **{
        field.name: torch.from_numpy(np.ascontiguousarray(value))
        for field in dataclasses.fields(record)
        if isinstance(value := getattr(record, field.name), np.ndarray)})
