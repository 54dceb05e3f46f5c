"""Layout conversions shared by channel-last adapters (JAX, TensorFlow). Numpy only.

Canonical data is channel-first ``(N, C, *spatial)`` and canonical conv kernels ``(O, I, *k)``;
channel-last frameworks want ``(N, *spatial, C)`` and ``(*k, I, O)``. Only conv kernels have rank > 2
among the parameters, so the kernel functions leave every other parameter as it is.
"""

from __future__ import annotations

import numpy as np


def to_channel_last(x: np.ndarray) -> np.ndarray:
    """Float samples ``(N, C, *spatial)`` -> ``(N, *spatial, C)``; labels and flat data unchanged."""
    if x.ndim > 2 and x.dtype.kind == "f":
        x = np.moveaxis(x, 1, -1)
    return np.ascontiguousarray(x)


def to_native_kernel(value: np.ndarray) -> np.ndarray:
    """``(O, I, *k)`` -> ``(*k, I, O)``."""
    return np.ascontiguousarray(np.transpose(value, (*range(2, value.ndim), 1, 0))) if value.ndim > 2 else value


def to_canonical_kernel(value: np.ndarray) -> np.ndarray:
    """``(*k, I, O)`` -> ``(O, I, *k)``."""
    n = value.ndim
    return np.ascontiguousarray(np.transpose(value, (n - 1, n - 2, *range(n - 2)))) if n > 2 else value
