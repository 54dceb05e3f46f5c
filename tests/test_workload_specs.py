"""Unit tests: architectures (shapes, counts, FLOPs, weights), datasets, the journal."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from harness import track
from harness.spec import TrialResult, TrialSpec
from workloads import datasets
from workloads.architectures import ARCHITECTURES, Architecture, Conv, Dense, Flatten


@pytest.mark.parametrize("arch", ARCHITECTURES.values(), ids=list(ARCHITECTURES))
def test_params_match_layout_and_count(arch: Architecture) -> None:
    p = arch.init_params(0)
    layout = arch.param_layout()
    assert {k: v.shape for k, v in p.items()} == layout
    assert sum(v.size for v in p.values()) == arch.param_count() == sum(math.prod(s) for s in layout.values())
    assert all(v.dtype == np.float32 for v in p.values())
    assert all(not v.any() for k, v in p.items() if k.endswith("bias"))
    again, other = arch.init_params(0), arch.init_params(1)
    assert all(np.array_equal(p[k], again[k]) for k in p)
    assert any(not np.array_equal(p[k], other[k]) for k in p if k.endswith("kernel"))
    assert arch.flops_per_sample("train") == 3 * arch.forward_flops() == 3 * arch.flops_per_sample("infer")


def test_counts_by_hand() -> None:
    assert ARCHITECTURES["mlp_shallow"].param_count() == 40 * 256 + 256 + 256 * 10 + 10
    assert ARCHITECTURES["mlp_shallow"].forward_flops() == 2 * (40 * 256 + 256 * 10)
    cnn = ARCHITECTURES["cnn_small"]  # (1,40) -conv k5 s2-> (32,20) -conv k5 s2-> (64,10)
    assert cnn.shapes()[:3] == [(1, 40), (32, 20), (64, 10)]
    assert cnn.forward_flops() == 2 * (1 * 5 * 32 * 20 + 32 * 5 * 64 * 10 + 640 * 128 + 128 * 10)


def test_zoo_shapes() -> None:
    deep = ARCHITECTURES["mlp_deep"]
    assert sum(isinstance(layer, Dense) for layer in deep.layers[:-1]) >= 6
    assert sum(isinstance(layer, Conv) for layer in ARCHITECTURES["cnn_small"].layers) == 2


def test_invalid_architectures() -> None:
    with pytest.raises(ValueError, match="last layer"):
        Architecture("x", "", (1, 40), (Flatten(), Dense(10)))
    with pytest.raises(ValueError, match="empty output"):
        Architecture("x", "", (1, 4), (Conv(4, (9,), (1,), (0,)), Flatten(), Dense(10, activation="none")))


def test_synthetic_is_deterministic() -> None:
    x, y = datasets.synthetic((1, 40), 10, 16, seed=3)
    x2, y2 = datasets.synthetic((1, 40), 10, 16, seed=3)
    assert x.shape == (16, 1, 40) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.array_equal(x, x2) and np.array_equal(y, y2) and y.max() < 10


def test_content_hash() -> None:
    a = {"x": np.arange(6, dtype=np.float32)}
    h = datasets.content_hash(a)
    assert h == datasets.content_hash({"x": np.arange(6, dtype=np.float32)})
    b = {"x": np.arange(6, dtype=np.float32)}
    b["x"][3] = 9
    assert datasets.content_hash(b) != h


def test_prepare_mnist1d_once(tmp_path: Path) -> None:
    first = datasets.prepare("mnist1d", tmp_path)
    mtime = first.path.stat().st_mtime_ns
    second = datasets.prepare("mnist1d", tmp_path)
    assert second.sha256 == first.sha256 and second.path.stat().st_mtime_ns == mtime
    d = datasets.load("mnist1d", first.path)
    assert d.x_train.shape == (4000, 1, 40) and d.x_val.shape == (1000, 1, 40)
    assert set(np.unique(d.y_train)) == set(range(10))
    assert datasets.content_hash(d.arrays()) == first.sha256
    with pytest.raises(KeyError, match="choose from synthetic, mnist1d"):
        datasets.prepare("cifar10", tmp_path)


def _result(key_seed: int, status: str) -> TrialResult:
    s = TrialSpec(architecture="mlp_shallow", framework="torch", mode="train", batch_size=8, threads=1, seed=key_seed)
    return TrialResult(trial_key=s.trial_key, spec=s, status=status)  # type: ignore[arg-type]


def test_journal(tmp_path: Path) -> None:
    b = track.Batch(tmp_path, "b1")
    b.append(_result(0, "crash"))
    b.append(_result(1, "ok"))
    assert [r.status for r in b.results()] == ["crash", "ok"]
    b.append(_result(0, "ok"))  # a later attempt replaces the earlier one
    assert sorted(r.status for r in b.results()) == ["ok", "ok"]
    with open(b.journal, "a") as f:
        f.write('{"trial_key": "torn')  # a crash mid-write
    assert len(b.results()) == 2
    b.append(_result(2, "timeout"))
    assert set(b.finished_keys()) == {_result(0, "ok").trial_key, _result(1, "ok").trial_key}
