"""Placement files that engines read at start-up: SGLang's --init-expert-location."""

from __future__ import annotations

import numpy as np

from ..loaders import LOGICAL_COUNT, LoadError, read_array


def dense_layers(path, key, moe_layers: int, given: str | None = None) -> np.ndarray:
    """[model layers] bool, True where a layer has no experts: from `given` ("0,1,2"), else the
    all-zero layers of an SGLang statistics file (which load_loads dropped), else none."""
    if given is not None:
        try:
            picked = sorted({int(x) for x in given.split(",") if x.strip()})
        except ValueError:
            raise LoadError(f"--dense-layers {given!r}: expected comma-separated layer numbers")
        total = moe_layers + len(picked)
        if picked and (picked[0] < 0 or picked[-1] >= total):
            raise LoadError(f"--dense-layers {given!r}: layers must lie in [0, {total})")
        mask = np.zeros(total, dtype=bool)
        mask[picked] = True
        return mask
    raw, found = read_array(path, key, default_keys=(LOGICAL_COUNT,))
    if found != LOGICAL_COUNT:
        return np.zeros(moe_layers, dtype=bool)
    raw = np.asarray(raw)
    return ~(raw.any(axis=1) if raw.ndim == 2 else raw.any(axis=(0, 2)))


def moe_rows(mapping: np.ndarray, dense: np.ndarray) -> np.ndarray:
    """A mapping with a row per model layer (an SGLang file) -> its MoE layers' rows; a mapping
    of the MoE layers alone is returned as it is."""
    if dense.any() and mapping.shape[0] == dense.size:
        return mapping[~dense]
    return mapping


def sglang_expert_location(phy2log: np.ndarray, dense: np.ndarray, num_experts: int) -> dict:
    """{"physical_to_logical_map": [model layers][P]}: the plan's rows on the MoE layers, and on
    dense layers the placement SGLang gives them itself (slot p holds expert p mod E)."""
    layers, slots = phy2log.shape
    if int((~dense).sum()) != layers:
        raise LoadError(f"{layers} planned layers do not fill the {int((~dense).sum())} MoE "
                        f"layers of a {dense.size}-layer model")
    out = np.empty((dense.size, slots), dtype=np.int64)
    out[dense] = np.arange(slots) % num_experts
    out[~dense] = phy2log
    return {"physical_to_logical_map": out.tolist()}
