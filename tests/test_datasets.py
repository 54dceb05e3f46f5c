"""Unit tests for the generated data sets and the worker-side data helpers (workloads.datasets).

Pure: numpy only, plus the generator packages (mnist1d, scikit-learn) that ``prepare`` uses.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from workloads import datasets
from workloads.datasets import generators as gen

NAMES = list(datasets.GENERATORS)


@pytest.fixture(scope="module")
def generated() -> dict[str, datasets.Dataset]:
    return {name: generate() for name, (generate, _) in datasets.GENERATORS.items()}


# --- registry ------------------------------------------------------------------------------------


def test_registry_covers_every_generated_dataset() -> None:
    assert {"mnist1d", "mnist1d_shuffled", "digits", "digits32", "tokens"} <= set(datasets.GENERATORS)
    assert set(datasets.INFO) == set(datasets.GENERATORS)
    assert set(datasets.DATASETS) == {datasets.SYNTHETIC, *datasets.GENERATORS}
    assert datasets.DATASETS[datasets.SYNTHETIC]


@pytest.mark.parametrize("name", NAMES)
def test_description_says_sizes_shape_and_classes(name: str) -> None:
    info = datasets.INFO[name]
    text = datasets.DATASETS[name]
    assert text == info.description == datasets.GENERATORS[name][1]
    assert "\n" not in text
    assert f"{info.n_train} train / {info.n_val} val" in text
    assert "x".join(map(str, info.sample_shape)) in text
    assert f"{info.num_classes} classes" in text
    if info.vocab_size is not None:
        assert f"vocab {info.vocab_size}" in text


def test_info_requires_vocab_exactly_for_tokens() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        datasets.DatasetInfo("x", (4,), 2, "int32", None, 1, 1)
    with pytest.raises(ValueError, match="vocab_size"):
        datasets.DatasetInfo("x", (4,), 2, "float32", 8, 1, 1)


@pytest.mark.parametrize("name", NAMES)
def test_generated_arrays_match_info(name: str, generated: dict[str, datasets.Dataset]) -> None:
    info, data = datasets.INFO[name], generated[name]
    assert data.name == name
    assert data.sample_shape == info.sample_shape
    for x, y, n in ((data.x_train, data.y_train, info.n_train), (data.x_val, data.y_val, info.n_val)):
        assert x.shape == (n, *info.sample_shape)
        assert x.dtype == np.dtype(info.dtype)
        assert y.shape == (n,) and y.dtype == np.int64
        assert set(np.unique(y).tolist()) == set(range(info.num_classes))
        if info.vocab_size is None:
            assert np.isfinite(x).all()
        else:
            assert x.min() >= 0 and x.max() < info.vocab_size


def test_generation_is_deterministic_and_datasets_differ(generated: dict[str, datasets.Dataset]) -> None:
    first = {name: datasets.content_hash(d.arrays()) for name, d in generated.items()}
    gen._mnist1d_raw.cache_clear()  # really generate MNIST-1D a second time
    again = {name: datasets.content_hash(generate().arrays()) for name, (generate, _) in datasets.GENERATORS.items()}
    assert again == first
    assert len(set(first.values())) == len(first)


def test_prepare_and_load_keep_token_dtype(tmp_path: Path, generated: dict[str, datasets.Dataset]) -> None:
    prepared = datasets.prepare("tokens", tmp_path)
    data = datasets.load("tokens", prepared.path)
    assert data.x_train.dtype == np.int32 and data.y_train.dtype == np.int64
    assert prepared.sha256 == datasets.content_hash(generated["tokens"].arrays())
    assert datasets.content_hash(data.arrays()) == prepared.sha256
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tokens.json", "tokens.npz"]


# --- mnist1d_shuffled ----------------------------------------------------------------------------


def test_mnist1d_shuffled_keeps_every_value_and_label(generated: dict[str, datasets.Dataset]) -> None:
    base, shuffled = generated["mnist1d"], generated["mnist1d_shuffled"]
    perm = gen.mnist1d_permutation()
    assert sorted(perm.tolist()) == list(range(40))
    assert not np.array_equal(perm, np.arange(40))
    np.testing.assert_array_equal(perm, gen.mnist1d_permutation())
    for split in ("train", "val"):
        x, xs = getattr(base, f"x_{split}"), getattr(shuffled, f"x_{split}")
        np.testing.assert_array_equal(getattr(base, f"y_{split}"), getattr(shuffled, f"y_{split}"))
        np.testing.assert_array_equal(np.sort(xs, axis=-1), np.sort(x, axis=-1))  # the information is kept
        np.testing.assert_array_equal(xs, x[..., perm])  # by one permutation, the same for every example
        assert not np.array_equal(xs, x)


# --- digits --------------------------------------------------------------------------------------


def test_stratified_split_is_a_partition_with_each_class_in_proportion() -> None:
    y = np.repeat(np.arange(4), [10, 21, 5, 40])
    train, val = gen.stratified_split(y, 0.2, seed=3)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(y)))
    assert np.bincount(y[val], minlength=4).tolist() == [2, 4, 1, 8]
    assert not np.all(np.diff(y[train]) >= 0)  # shuffled, not sorted by class
    again = gen.stratified_split(y, 0.2, seed=3)
    np.testing.assert_array_equal(train, again[0])
    np.testing.assert_array_equal(val, again[1])


def test_digits_is_the_sklearn_set_scaled_and_split(generated: dict[str, datasets.Dataset]) -> None:
    from sklearn.datasets import load_digits

    d = generated["digits"]
    full = np.concatenate([d.x_train, d.x_val])
    assert full.min() == 0.0 and full.max() == 1.0
    ref = load_digits()
    expect = (ref.images / 16.0).astype(np.float32)[:, None]
    as_rows = {(r.tobytes(), int(c)) for r, c in zip(expect, ref.target, strict=True)}
    assert {(r.tobytes(), int(c)) for r, c in zip(full, np.concatenate([d.y_train, d.y_val]), strict=True)} == as_rows
    counts = np.bincount(ref.target)
    np.testing.assert_array_equal(np.bincount(d.y_val), np.round(0.2 * counts))


def test_digits32_is_digits_upsampled_bilinearly(generated: dict[str, datasets.Dataset]) -> None:
    small, big = generated["digits"], generated["digits32"]
    np.testing.assert_array_equal(big.y_train, small.y_train)
    np.testing.assert_array_equal(big.y_val, small.y_val)
    np.testing.assert_array_equal(big.x_val, gen.bilinear_resize(small.x_val, 32))
    assert big.x_train.min() >= 0.0 and big.x_train.max() <= 1.0
    # an integer upscale with half-pixel centres keeps each image's mean
    np.testing.assert_allclose(big.x_train.mean(axis=(2, 3)), small.x_train.mean(axis=(2, 3)), atol=1e-6)


def test_bilinear_matrix_half_pixel_centres() -> None:
    np.testing.assert_allclose(gen.bilinear_matrix(2, 4), [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    m = gen.bilinear_matrix(8, 32)
    np.testing.assert_allclose(m.sum(axis=1), 1.0)
    np.testing.assert_allclose(m.sum(axis=0), 4.0)
    assert (m >= 0).all()
    np.testing.assert_allclose(gen.bilinear_resize(np.full((2, 8, 8), 0.3), 32), 0.3, rtol=1e-6)


# --- tokens --------------------------------------------------------------------------------------


def test_tokens_label_is_the_token_after_the_one_marker(generated: dict[str, datasets.Dataset]) -> None:
    d = generated["tokens"]
    for x, y in ((d.x_train, d.y_train), (d.x_val, d.y_val)):
        is_marker = x == gen.TOKENS_MARKER
        assert (is_marker.sum(axis=1) == 1).all()
        pos = np.argmax(is_marker, axis=1)
        assert pos.max() < gen.TOKENS_LENGTH - 1
        np.testing.assert_array_equal(x[np.arange(len(x)), pos + 1], y)
        # both copies of the label token are used as the target, anywhere in the sequence
        assert len(np.unique(pos)) == gen.TOKENS_LENGTH - 1


def test_tokens_counts_carry_no_label_information(generated: dict[str, datasets.Dataset]) -> None:
    d = generated["tokens"]
    counts = {
        s: np.stack([np.bincount(r, minlength=gen.TOKENS_VOCAB) for r in x])
        for s, x in (("train", d.x_train), ("val", d.x_val))
    }
    for c in counts.values():
        assert (c[:, : gen.TOKENS_CLASSES] == gen.TOKENS_COPIES).all()
        assert (c[:, gen.TOKENS_MARKER] == 1).all()
    for y in (d.y_train, d.y_val):
        assert len(set(np.bincount(y).tolist())) == 1  # exactly balanced
    # a nearest-centroid classifier on token counts is at chance
    centroids = np.stack([counts["train"][d.y_train == k].mean(axis=0) for k in range(gen.TOKENS_CLASSES)])
    dist = ((counts["val"][:, None, :] - centroids[None]) ** 2).sum(axis=-1)
    assert (dist.argmin(axis=1) == d.y_val).mean() < 0.15


# --- worker-side helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "vocab"), [((32,), 16), ((4, 5), 3), ((7,), 1)])
def test_synthetic_tokens(shape: tuple[int, ...], vocab: int) -> None:
    x, y = datasets.synthetic(shape, 10, 64, seed=1, vocab_size=vocab)
    assert x.shape == (64, *shape) and x.dtype == np.int32
    assert x.min() >= 0 and x.max() < vocab
    assert y.shape == (64,) and y.dtype == np.int64 and y.max() < 10
    x2, y2 = datasets.synthetic(shape, 10, 64, seed=1, vocab_size=vocab)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    if vocab > 1:
        assert len(np.unique(x)) == vocab
        assert not np.array_equal(x, datasets.synthetic(shape, 10, 64, seed=2, vocab_size=vocab)[0])


def test_synthetic_floats_unchanged_by_the_token_option() -> None:
    x, y = datasets.synthetic((1, 40), 10, 8, seed=7)
    x2, y2 = datasets.synthetic((1, 40), 10, 8, seed=7, vocab_size=None)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    with pytest.raises(ValueError, match="vocab_size"):
        datasets.synthetic((4,), 2, 1, seed=0, vocab_size=0)


def test_fit_channels() -> None:
    grey = np.arange(2 * 1 * 3 * 3, dtype=np.float32).reshape(2, 1, 3, 3)
    assert datasets.fit_channels(grey, 1) is grey
    rgb = datasets.fit_channels(grey, 3)
    assert rgb.shape == (2, 3, 3, 3) and rgb.dtype == grey.dtype
    for c in range(3):
        np.testing.assert_array_equal(rgb[:, c], grey[:, 0])
    assert datasets.fit_channels(rgb, 3) is rgb
    with pytest.raises(ValueError, match=re.escape("cannot fit 3 channel(s) to 1")):
        datasets.fit_channels(rgb, 1)
    with pytest.raises(ValueError, match="cannot fit 2"):
        datasets.fit_channels(np.zeros((1, 2, 4)), 3)
    with pytest.raises(ValueError, match="channel-first"):
        datasets.fit_channels(np.zeros(5), 3)
