"""Datasets: synthetic shape-correct batches and real offline data, cached as plain arrays.

``prepare`` runs on the driver (it may import generator packages such as ``mnist1d``); ``load`` and
``synthetic`` are worker-side (numpy and the standard library only).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SYNTHETIC = "synthetic"
_SPLITS = ("x_train", "y_train", "x_val", "y_val")


@dataclass(frozen=True)
class Dataset:
    """A classification data set as channel-first float32 samples and int64 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: getattr(self, k) for k in _SPLITS}


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the arrays, in a fixed order."""
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _mnist1d() -> Dataset:
    from mnist1d.data import get_dataset_args, make_dataset  # driver-side only

    d = make_dataset(get_dataset_args())  # the reference defaults, seed 42; generated, not downloaded
    return Dataset(
        "mnist1d",
        x_train=d["x"].astype(np.float32)[:, None, :],
        y_train=d["y"].astype(np.int64),
        x_val=d["x_test"].astype(np.float32)[:, None, :],
        y_val=d["y_test"].astype(np.int64),
    )


# name -> (generator, one-line description). A generator is deterministic: same call, same arrays.
GENERATORS: dict[str, tuple[Callable[[], Dataset], str]] = {
    "mnist1d": (_mnist1d, "MNIST-1D (mnist1d package defaults, seed 42): 4000 train / 1000 val, 1x40, 10 classes"),
}
DATASETS = {SYNTHETIC: "random N(0,1) samples and labels in each architecture's input shape"} | {
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
    """Generate ``name`` once and cache it as ``<name>.npz`` plus its content hash."""
    if name not in GENERATORS:
        raise KeyError(f"no generated dataset {name!r}; choose from {', '.join(GENERATORS)}")
    directory = directory or cache_dir()
    path = directory / f"{name}.npz"
    meta_path = directory / f"{name}.json"
    if path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return Prepared(name, path, meta["sha256"])
    directory.mkdir(parents=True, exist_ok=True)
    arrays = GENERATORS[name][0]().arrays()
    digest = content_hash(arrays)
    save(path, arrays)
    meta_path.write_text(json.dumps({"sha256": digest, "shapes": {k: list(v.shape) for k, v in arrays.items()}}))
    return Prepared(name, path, digest)


def save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays as ``.npz`` atomically (readers never see a half-written file)."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)  # type: ignore[arg-type]
    tmp.replace(path)


def load(name: str, path: str | Path) -> Dataset:
    with np.load(path) as f:
        return Dataset(name, **{k: f[k] for k in _SPLITS})


def synthetic(
    sample_shape: tuple[int, ...], num_classes: int, batch_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """One shape-correct random batch (float32 inputs, int64 labels)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, *sample_shape), dtype=np.float32)
    y = rng.integers(0, num_classes, size=batch_size, dtype=np.int64)
    return x, y
