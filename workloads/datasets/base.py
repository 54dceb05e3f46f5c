"""The data set container and its metadata (numpy and the standard library only)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

SPLITS = ("x_train", "y_train", "x_val", "y_val")


@dataclass(frozen=True)
class Dataset:
    """A classification data set: channel-first float32 samples (or int32 token ids) and int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in SPLITS}


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
