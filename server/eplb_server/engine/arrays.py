"""The engine's edge: numpy arrays in, numpy arrays out; torch tensors in, torch tensors out.
Torch is never imported here, so a process that plans on numpy arrays never loads it."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np


def is_tensor(x) -> bool:
    """True for a torch.Tensor (no tensor can exist before torch is imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def as_numpy(x) -> np.ndarray:
    """A numpy view or copy of an array-like or a tensor on any device."""
    return x.detach().cpu().numpy() if is_tensor(x) else np.asarray(x)


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
