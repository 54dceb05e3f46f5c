"""Unit tests for workloads (architectures, datasets).

Pure: numpy only, plus the mnist1d generator package for ``datasets.prepare``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from workloads import datasets
from workloads.architectures import ARCHITECTURES, Architecture, Conv, Dense, Flatten, get

ARCH_NAMES = list(ARCHITECTURES)


@pytest.fixture(params=ARCH_NAMES)
def arch(request: pytest.FixtureRequest) -> Architecture:
    return ARCHITECTURES[request.param]


# --- architectures -------------------------------------------------------------------------------


def test_zoo_is_not_empty_and_named_consistently() -> None:
    assert {"mlp_shallow", "mlp_deep", "cnn1d"} <= set(ARCHITECTURES)
    for name, a in ARCHITECTURES.items():
        assert a.name == name
        assert get(name) is a


def test_get_unknown_architecture_lists_choices() -> None:
    with pytest.raises(ValueError, match=re.escape(", ".join(ARCHITECTURES))):
        get("resnet9000")


def test_param_count_matches_init_variables_and_layout(arch: Architecture) -> None:
    variables = arch.init_variables(0)
    layout = arch.variable_layout()
    assert list(variables) == list(layout)
    for key, shape in layout.items():
        assert variables[key].shape == shape, key
    trainable = arch.param_layout()
    assert arch.param_count() == sum(variables[k].size for k in trainable)
    assert arch.param_count() == sum(math.prod(s) for s in trainable.values())
    assert arch.param_count() > 0


def test_init_variables_deterministic_per_seed(arch: Architecture) -> None:
    a, b = arch.init_variables(3), arch.init_variables(3)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_init_variables_differ_across_seeds(arch: Architecture) -> None:
    a, b = arch.init_variables(0), arch.init_variables(1)
    weights = [k for k, v in a.items() if v.ndim >= 2]
    assert weights
    for key in weights:
        assert not np.array_equal(a[key], b[key]), key


def test_init_variables_are_float32_with_zero_dense_and_conv_biases(arch: Architecture) -> None:
    variables = arch.init_variables(0)
    for key, value in variables.items():
        assert value.dtype == np.float32, key
        assert np.all(np.isfinite(value)), key
        if value.ndim >= 2:
            assert np.any(value), key
    for path, layer, _ in arch.leaves():
        if isinstance(layer, Dense | Conv) and layer.bias:
            assert not np.any(variables[f"{path}.bias"]), path


def test_init_scale_is_he_before_relu_and_lecun_for_logits() -> None:
    params = ARCHITECTURES["mlp_deep"].init_variables(0)
    hidden, logits = params["1.kernel"], params["9.kernel"]  # layer 0 is Flatten
    assert hidden.shape == (40, 256) and logits.shape == (256, 10)
    assert float(hidden.std()) == pytest.approx(math.sqrt(2 / 40), rel=0.05)
    assert float(logits.std()) == pytest.approx(math.sqrt(1 / 256), rel=0.1)
    conv = ARCHITECTURES["cnn1d"].init_variables(0)["1.kernel"]  # fan_in = 25 channels x 3 taps
    assert conv.shape == (25, 25, 3)
    assert float(conv.std()) == pytest.approx(math.sqrt(2 / (25 * 3)), rel=0.1)
    tanh = ARCHITECTURES["lenet5"].init_variables(0)["5.kernel"]  # tanh: LeCun, fan_in 400
    assert float(tanh.std()) == pytest.approx(math.sqrt(1 / 400), rel=0.05)


def test_mlp_shallow_forward_flops_by_hand() -> None:
    a = ARCHITECTURES["mlp_shallow"]
    assert a.forward_flops() == 2 * (40 * 100 + 100 * 10)
    assert a.flops_per_sample("infer") == 2 * (40 * 100 + 100 * 10)


def test_cnn1d_shapes_and_flops_by_hand() -> None:
    a = ARCHITECTURES["cnn1d"]
    # (1, 40) -k5 s2 p1-> (25, 19) -k3 s2 p1-> (25, 10) -k3 s2 p1-> (25, 5) -flatten-> 125 -> 10
    assert a.shapes() == [(1, 40), (25, 19), (25, 10), (25, 5), (125,), (10,)]
    convs = 2 * (1 * 5 * 25 * 19 + 25 * 3 * 25 * 10 + 25 * 3 * 25 * 5)
    assert a.forward_flops() == convs + 2 * 125 * 10


def test_train_flops_are_three_forward_passes(arch: Architecture) -> None:
    assert arch.forward_flops() > 0
    assert arch.flops_per_sample("train") == 3 * arch.forward_flops()
    assert arch.flops_per_sample("infer") == arch.forward_flops()


def test_every_architecture_predicts_ten_classes(arch: Architecture) -> None:
    assert arch.num_classes == 10
    assert arch.shapes()[-1] == (10,)


def test_mlp_deep_has_at_least_six_hidden_dense_layers() -> None:
    a = ARCHITECTURES["mlp_deep"]
    hidden = [layer for layer in a.layers[:-1] if isinstance(layer, Dense)]
    assert len(hidden) >= 6
    assert all(layer.activation == "relu" for layer in hidden)


def test_cnn1d_has_exactly_three_conv_layers() -> None:
    a = ARCHITECTURES["cnn1d"]
    assert sum(isinstance(layer, Conv) for layer in a.layers) == 3


@pytest.mark.parametrize(
    "last",
    [Dense(10), Dense(10, activation="tanh"), Flatten(), Conv(10, kernel=(1,), stride=(1,), padding=(0,))],
    ids=["dense-relu", "dense-tanh", "flatten", "conv"],
)
def test_last_layer_must_be_dense_logits(last: Dense | Conv | Flatten) -> None:
    layers = (Flatten(), last) if not isinstance(last, Conv) else (last,)
    with pytest.raises(ValueError, match="last layer must be Dense"):
        Architecture("bad", "", (1, 40), layers)


def test_empty_architecture_raises_value_error() -> None:
    with pytest.raises(ValueError):
        Architecture("empty", "", (1, 40), ())


@pytest.mark.parametrize(
    ("conv", "in_shape"),
    [
        (Conv(4, kernel=(50,), stride=(1,), padding=(0,)), (1, 40)),
        (Conv(4, kernel=(7,), stride=(1,), padding=(0,)), (1, 5)),
        (Conv(4, kernel=(3, 9), stride=(1, 1), padding=(0, 0)), (1, 8, 8)),
    ],
    ids=["1d-kernel-too-large", "1d-short-input", "2d-one-axis-empty"],
)
def test_conv_with_empty_output_raises(conv: Conv, in_shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="empty output"):
        conv.out_shape(in_shape)
    with pytest.raises(ValueError, match="empty output"):
        Architecture("empty-conv", "", in_shape, (conv, Flatten(), Dense(10, activation="none")))


def test_conv_output_of_exactly_one_is_allowed() -> None:
    assert Conv(4, kernel=(40,), stride=(1,), padding=(0,)).out_shape((1, 40)) == (4, 1)


def test_rank_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="rank-1"):
        Architecture("no-flatten", "", (1, 40), (Dense(10, activation="none"),))
    with pytest.raises(ValueError, match="rank-2"):
        Conv(4, kernel=(3,), stride=(1,), padding=(1,)).out_shape((40,))


# --- datasets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "classes", "batch"), [((1, 40), 10, 16), ((3, 8, 8), 4, 1), ((5,), 2, 7)])
def test_synthetic_is_shape_correct(shape: tuple[int, ...], classes: int, batch: int) -> None:
    x, y = datasets.synthetic(shape, classes, batch, seed=0)
    assert x.shape == (batch, *shape) and x.dtype == np.float32
    assert y.shape == (batch,) and y.dtype == np.int64
    assert y.min() >= 0 and y.max() < classes


def test_synthetic_is_deterministic_per_seed() -> None:
    x1, y1 = datasets.synthetic((1, 40), 10, 64, seed=7)
    x2, y2 = datasets.synthetic((1, 40), 10, 64, seed=7)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    x3, y3 = datasets.synthetic((1, 40), 10, 64, seed=8)
    assert not np.array_equal(x1, x3)
    assert not np.array_equal(y1, y3)


def _arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.standard_normal((6, 1, 4)).astype(np.float32),
        "y_train": np.arange(6, dtype=np.int64) % 3,
        "x_val": rng.standard_normal((2, 1, 4)).astype(np.float32),
        "y_val": np.array([0, 2], dtype=np.int64),
    }


def test_content_hash_is_deterministic_and_order_independent() -> None:
    a = _arrays()
    h = datasets.content_hash(a)
    assert re.fullmatch(r"[0-9a-f]{64}", h)
    assert datasets.content_hash(_arrays()) == h
    assert datasets.content_hash(dict(reversed(list(a.items())))) == h
    assert datasets.content_hash({k: np.asfortranarray(v) for k, v in a.items()}) == h


@pytest.mark.parametrize(
    "change",
    [
        lambda a: a["x_train"].__setitem__((3, 0, 2), a["x_train"][3, 0, 2] + 1e-3),
        lambda a: a["y_val"].__setitem__(1, 1),
        lambda a: a.__setitem__("x_val", a["x_val"].reshape(2, 4, 1)),
        lambda a: a.__setitem__("y_train", a["y_train"].astype(np.int32)),
        lambda a: a.__setitem__("x_test", a.pop("x_val")),
    ],
    ids=["one-value", "one-label", "shape", "dtype", "name"],
)
def test_content_hash_changes_with_any_change(change: object) -> None:
    a = _arrays()
    before = datasets.content_hash(a)
    change(a)  # type: ignore[operator]
    assert datasets.content_hash(a) != before


@pytest.fixture(scope="module")
def mnist1d_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, datasets.Prepared]:
    directory = tmp_path_factory.mktemp("datasets")
    return directory, datasets.prepare("mnist1d", directory)


def test_prepare_mnist1d_is_cached_and_not_regenerated(
    mnist1d_dir: tuple[Path, datasets.Prepared], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, first = mnist1d_dir
    assert first.path == directory / "mnist1d.npz"
    assert first.path.exists()
    mtimes = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}

    def no_regeneration() -> datasets.Dataset:
        raise AssertionError("the cached data set was generated again")

    monkeypatch.setitem(datasets.GENERATORS, "mnist1d", (no_regeneration, "stub"))
    second = datasets.prepare("mnist1d", directory)
    assert second == first
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == mtimes


def test_prepare_mnist1d_arrays(mnist1d_dir: tuple[Path, datasets.Prepared]) -> None:
    _, prepared = mnist1d_dir
    data = datasets.load("mnist1d", prepared.path)
    assert data.x_train.shape == (4000, 1, 40) and data.x_train.dtype == np.float32
    assert data.x_val.shape == (1000, 1, 40) and data.x_val.dtype == np.float32
    assert data.y_train.shape == (4000,) and data.y_val.shape == (1000,)
    for y in (data.y_train, data.y_val):
        assert y.dtype == np.int64
        assert set(np.unique(y).tolist()) == set(range(10))
    assert data.sample_shape == (1, 40)
    assert datasets.content_hash(data.arrays()) == prepared.sha256
    meta = json.loads((prepared.path.parent / "mnist1d.json").read_text())
    assert meta["sha256"] == prepared.sha256
    assert meta["shapes"]["x_train"] == [4000, 1, 40]


def test_prepare_uses_the_cache_dir_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tiny = datasets.Dataset("tiny", **_arrays())
    calls: list[int] = []

    def generate() -> datasets.Dataset:
        calls.append(1)
        return tiny

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    monkeypatch.setitem(datasets.GENERATORS, "tiny", (generate, "a tiny test set"))
    first = datasets.prepare("tiny")
    second = datasets.prepare("tiny")
    assert first.path == tmp_path / "datasets" / "tiny.npz"
    assert first == second
    assert calls == [1]
    assert first.sha256 == datasets.content_hash(tiny.arrays())
    assert not list((tmp_path / "datasets").glob("*.tmp*"))


@pytest.mark.parametrize("name", ["cifar10", "MNIST1D", ""])
def test_prepare_unknown_dataset_lists_choices(name: str, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match=re.escape("choose from " + ", ".join(datasets.GENERATORS))):
        datasets.prepare(name, tmp_path)
    assert not any(tmp_path.iterdir())
