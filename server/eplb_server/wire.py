"""Vectorised protobuf encoding of Migration.transfers (16k transfers: ~4 ms instead of ~25 ms)."""

from __future__ import annotations

import numpy as np

MAX_VALUE = (1 << 21) - 1  # three varint bytes; the server's size limits stay below this
_TRANSFERS_TAG = (6 << 3) | 2  # Migration.transfers, length-delimited
_FIELD_TAGS = np.array([1 << 3, 2 << 3, 3 << 3, 4 << 3], np.uint8)  # layer, slot, expert, source
_CROSS_TAG = 5 << 3


def encode_transfers(transfers: np.ndarray, cross_node: np.ndarray) -> bytes:
    """Wire bytes of `repeated SlotTransfer transfers = 6` for rows (layer, slot, expert, source).

    Parsing them with Migration.MergeFromString gives the same message as adding each transfer
    by hand (fields 1-4 are written even when zero: valid proto3, equal once parsed).
    """
    v = np.asarray(transfers, dtype=np.int64).reshape(-1, 4)
    if v.size and (v.min() < 0 or v.max() > MAX_VALUE):
        raise RuntimeError(f"transfer fields must lie in [0, {MAX_VALUE}]")
    m = len(v)
    cross = np.asarray(cross_node, dtype=bool).reshape(m)
    out = np.zeros((m, 20), np.uint8)  # tag, length, 4 x (tag + 3 varint bytes), cross tag + byte
    used = np.ones((m, 20), bool)
    fields = out[:, 2:18].reshape(m, 4, 4)
    fields_used = used[:, 2:18].reshape(m, 4, 4)
    fields[:, :, 0] = _FIELD_TAGS
    fields[:, :, 1] = (v & 0x7F) | ((v >= 1 << 7) << 7)
    fields[:, :, 2] = ((v >> 7) & 0x7F) | ((v >= 1 << 14) << 7)
    fields[:, :, 3] = v >> 14
    fields_used[:, :, 2] = v >= 1 << 7
    fields_used[:, :, 3] = v >= 1 << 14
    out[:, 18] = _CROSS_TAG
    out[:, 19] = 1
    used[:, 18] = used[:, 19] = cross  # proto3 writes a bool only when true
    out[:, 0] = _TRANSFERS_TAG
    out[:, 1] = used[:, 2:].sum(axis=1)  # at most 18 bytes: a one-byte length prefix
    return out[used].tobytes()
