"""Load arrays checked and copied in one compiled pass."""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def checked_copy(weight):
    """weight: [T, L, E] float64 -> (copy with -0.0 as 0.0, whether every entry is >= 0 (not
    NaN), largest layer total summed over T).

    -0.0 passes as non-negative but sets the sign bit, by which the kernels order loads (it hung
    the packer); adding 0.0 makes it 0.0.
    """
    windows, num_layers, num_experts = weight.shape
    copy = np.empty_like(weight)
    non_negative, largest = True, 0.0
    for layer in range(num_layers):
        total = 0.0
        for t in range(windows):
            for e in range(num_experts):
                value = weight[t, layer, e] + 0.0
                non_negative &= value >= 0.0
                total += value
                copy[t, layer, e] = value
        largest = max(largest, total)
    return copy, non_negative, largest
