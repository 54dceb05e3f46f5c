"""The data set container and its metadata (numpy and the standard library only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

SPLITS = ("x_train", "y_train", "x_val", "y_val")
VAL_MASK = "val_mask"


@dataclass(frozen=True)
class Dataset:
    """A classification data set: channel-first float32 samples (or int32 token ids) and int64 labels.

    ``val_mask`` (float32, ``(n_val, L)`` for samples whose last axis has ``L`` positions), where the
    generator knows it: per held-out sample and position of the last axis, the share in [0, 1] of
    that position covered by the informative signal (MNIST-1D: the digit's template, against the
    noise around it). None for data sets whose generator cannot say (digits, tokens).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    val_mask: np.ndarray | None = None

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def arrays(self) -> dict[str, np.ndarray]:
        """The splits by name, and ``val_mask`` when the data set has one."""
        out: dict[str, np.ndarray] = {k: getattr(self, k) for k in SPLITS}
        if self.val_mask is not None:
            out[VAL_MASK] = self.val_mask
        return out


@dataclass(frozen=True)
class DatasetInfo:
    """What a generated data set looks like, known without generating it.

    The driver checks architecture x data set compatibility from this: ``sample_shape`` against the
    architecture's input shape, ``num_classes`` against its output width, ``dtype`` and ``vocab_size``
    against its input layer (``"int32"`` samples are token ids in ``[0, vocab_size)`` for an embedding;
    ``"float32"`` samples are real-valued and ``vocab_size`` is ``None``). Labels are always int64 in
    ``[0, num_classes)``.
    """

    description: str
    sample_shape: tuple[int, ...]
    num_classes: int
    dtype: Literal["float32", "int32"]
    vocab_size: int | None
    n_train: int
    n_val: int

    def __post_init__(self) -> None:
        if (self.dtype == "int32") != (self.vocab_size is not None):
            raise ValueError("vocab_size is given exactly for int32 (token) data sets")
