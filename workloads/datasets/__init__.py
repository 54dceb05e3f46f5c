"""Datasets: synthetic shape-correct batches and real offline data, cached as plain arrays.

``prepare`` runs on the driver (a generator may import packages such as ``mnist1d`` or ``sklearn``);
``load``, ``synthetic``, ``fit_channels`` and the ``INFO`` registry are worker-side (numpy and the
standard library only). Generators live in :mod:`workloads.datasets.generators`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from . import generators as gen
from .base import SPLITS, VAL_MASK, Dataset, DatasetInfo

__all__ = [
    "CACHE_FORMAT",
    "DATASETS",
    "GENERATORS",
    "INFO",
    "SYNTHETIC",
    "Dataset",
    "DatasetInfo",
    "Prepared",
    "cache_dir",
    "content_hash",
    "fit_channels",
    "load",
    "prepare",
    "save",
    "select_classes",
    "stratified_subset",
    "synthetic",
]

SYNTHETIC = "synthetic"
_SPLITS = SPLITS
CACHE_FORMAT = 2
"""The layout of a cached data set (``format`` in its ``<name>.json``): ``prepare`` regenerates a cache
written with another (or none: before formats, 1). 2: ``val_mask`` where the generator knows it."""


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the arrays, in a fixed order."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _info(
    source: str,
    sample_shape: tuple[int, ...],
    num_classes: int,
    n_train: int,
    n_val: int,
    dtype: Literal["float32", "int32"] = "float32",
    vocab_size: int | None = None,
) -> DatasetInfo:
    kind = f"int32 tokens, vocab {vocab_size}" if vocab_size else "float32"
    shape = "x".join(map(str, sample_shape))
    description = f"{source}: {n_train} train / {n_val} val, {shape} {kind}, {num_classes} classes"
    return DatasetInfo(description, sample_shape, num_classes, dtype, vocab_size, n_train, n_val)


# Every generated data set's shape, classes and sizes, known without generating it (tests check the
# generated arrays against it).
INFO: dict[str, DatasetInfo] = {
    "mnist1d": _info("MNIST-1D (mnist1d package defaults, seed 42)", (1, 40), 10, 4000, 1000),
    "mnist1d_shuffled": _info(
        f"MNIST-1D with one fixed permutation of the 40 positions (numpy seed {gen.MNIST1D_PERMUTATION_SEED})",
        (1, 40),
        10,
        4000,
        1000,
    ),
    "digits": _info("scikit-learn digits scaled to [0,1], stratified 80/20 split", (1, 8, 8), 10, 1438, 359),
    "digits32": _info(
        "scikit-learn digits, bilinear upsample to 32x32 (half-pixel centres), same split as digits",
        (1, 32, 32),
        10,
        1438,
        359,
    ),
    "tokens": _info(
        "marker copy (label = the token after the marker; token counts carry no label information)",
        (gen.TOKENS_LENGTH,),
        gen.TOKENS_CLASSES,
        gen.TOKENS_TRAIN,
        gen.TOKENS_VAL,
        dtype="int32",
        vocab_size=gen.TOKENS_VOCAB,
    ),
}

_GENERATE: dict[str, Callable[[], Dataset]] = {
    "mnist1d": gen.mnist1d,
    "mnist1d_shuffled": gen.mnist1d_shuffled,
    "digits": gen.digits,
    "digits32": gen.digits32,
    "tokens": gen.tokens,
}

# name -> (generator, one-line description). A generator is deterministic: same call, same arrays.
GENERATORS: dict[str, tuple[Callable[[], Dataset], str]] = {k: (f, INFO[k].description) for k, f in _GENERATE.items()}
DATASETS = {SYNTHETIC: "random samples and labels in each architecture's input shape (N(0,1), or uniform tokens)"} | {
    k: v[1] for k, v in GENERATORS.items()
}


def cache_dir() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness")) / "datasets"


@dataclass(frozen=True)
class Prepared:
    name: str
    path: Path
    sha256: str


def prepare(name: str, directory: Path | None = None) -> Prepared:
    """Generate ``name`` once and cache it as ``<name>.npz`` plus its content hash (in ``<name>.json``,
    with the cache's :data:`CACHE_FORMAT`: a cache in another format is generated again)."""
    if name not in GENERATORS:
        raise KeyError(f"no generated dataset {name!r}; choose from {', '.join(GENERATORS)}")
    directory = directory or cache_dir()
    path = directory / f"{name}.npz"
    meta_path = directory / f"{name}.json"
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("format", 1) == CACHE_FORMAT:
            return Prepared(name, path, meta["sha256"])
    directory.mkdir(parents=True, exist_ok=True)
    arrays = GENERATORS[name][0]().arrays()
    digest = content_hash(arrays)
    save(path, arrays)
    meta = {"sha256": digest, "format": CACHE_FORMAT, "shapes": {k: list(v.shape) for k, v in arrays.items()}}
    tmp = meta_path.with_suffix(f".{os.getpid()}.tmp.json")
    tmp.write_text(json.dumps(meta))
    tmp.replace(meta_path)  # written last and atomically: a reader sees both files complete or regenerates
    return Prepared(name, path, digest)


def save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as ``.npz`` atomically (readers never see a half-written file)."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)


def load(name: str, path: str | Path) -> Dataset:
    """The data set cached at ``path`` (its ``val_mask`` when the file has one)."""
    with np.load(path) as f:
        mask = f[VAL_MASK] if VAL_MASK in f.files else None
        return Dataset(name, **{k: f[k] for k in _SPLITS}, val_mask=mask)


def synthetic(
    sample_shape: tuple[int, ...],
    num_classes: int,
    batch_size: int,
    seed: int,
    vocab_size: int | None = None,
    label_shape: tuple[int, ...] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """One shape-correct random batch: int64 labels ``(batch_size, *label_shape)`` (a language model's
    ``Architecture.label_shape`` is a label per position), and float32 N(0,1) inputs or, when
    ``vocab_size`` is given, int32 token ids uniform in ``[0, vocab_size)``. The same seed gives the
    same batch."""
    rng = np.random.default_rng(seed)
    x: np.ndarray
    if vocab_size is None:
        x = rng.standard_normal((batch_size, *sample_shape), dtype=np.float32)
    else:
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be positive, got {vocab_size}")
        x = rng.integers(0, vocab_size, size=(batch_size, *sample_shape), dtype=np.int32)
    y = rng.integers(0, num_classes, size=(batch_size, *label_shape), dtype=np.int64)
    return x, y


def fit_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """A channel-first batch ``(N, C, ...)`` with ``channels`` channels: ``x`` itself when ``C`` already
    matches, a single channel repeated (greyscale -> RGB, e.g. digits32 into a 3x32x32 ResNet-20);
    ``ValueError`` otherwise."""
    if x.ndim < 2:
        raise ValueError(f"fit_channels needs a channel-first batch (N, C, ...), got shape {x.shape}")
    have = x.shape[1]
    if have == channels:
        return x
    if have == 1 and channels > 1:
        return np.repeat(x, channels, axis=1)
    raise ValueError(f"cannot fit {have} channel(s) to {channels}: only 1 -> C is supported (shape {x.shape})")


def select_classes(data: Dataset, classes: tuple[int, ...] | list[int], num_classes: int) -> Dataset:
    """The samples of ``classes`` only (train and val, and the val mask's rows), in their order, labelled
    ``0..k-1`` in the order ``classes`` lists them; ``data`` itself when ``classes`` is empty.

    ``num_classes``: the data set's; an index outside ``[0, num_classes)`` is a ValueError."""
    if not classes:
        return data
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(
            f"class {bad[0]} is not a class of {data.name}: it has {num_classes} classes, 0..{num_classes - 1}"
        )
    if data.y_train.ndim != 1:
        raise ValueError(f"{data.name} has a label per position: classes select whole samples of a classifier")
    relabel = np.full(num_classes, -1, dtype=np.int64)
    relabel[list(classes)] = np.arange(len(classes))
    train, val = relabel[data.y_train] >= 0, relabel[data.y_val] >= 0
    return replace(
        data,
        x_train=data.x_train[train],
        y_train=relabel[data.y_train[train]],
        x_val=data.x_val[val],
        y_val=relabel[data.y_val[val]],
        val_mask=None if data.val_mask is None else data.val_mask[val],
    )


def stratified_subset(y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of a stratified share of the labels ``y``, in ascending order: of each class ``c`` (in
    ascending order) ``round(fraction * n_c)`` samples, at least 1, the first of ``rng.permutation`` of
    its indices (the permutation numpy's data order also uses, the same in every numpy here)."""
    keep = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        keep.append(rng.permutation(idx)[: max(1, round(fraction * len(idx)))])
    return np.sort(np.concatenate(keep))
