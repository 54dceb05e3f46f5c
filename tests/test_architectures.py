"""The architecture zoo: parameter counts (analytic and published), FLOPs by hand, resizing for data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workloads.architectures import ARCHITECTURES, get
from workloads.architectures.architecture import Architecture
from workloads.architectures.layers import BatchNorm, Dense, Recurrent, Residual
from workloads.architectures.reference import forward

ZOO = [
    "logreg",
    "mlp_shallow",
    "mlp_deep",
    "mlp_residual",
    "cnn1d",
    "lenet5",
    "resnet20",
    "gru",
    "lstm",
    "transformer",
]


def test_zoo_has_every_architecture_the_issue_names() -> None:
    assert set(ZOO) <= set(ARCHITECTURES)


@pytest.mark.parametrize(("name", "published"), [("lenet5", 61_706), ("resnet20", 269_722)])
def test_published_parameter_counts(name: str, published: int) -> None:
    """LeNet-5 (LeCun et al. 1998, full C3) and CIFAR ResNet-20 (He et al. 2016, option A: "0.27M")."""
    arch = get(name)
    assert arch.param_count() == published == arch.published_params


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("logreg", 40 * 10 + 10),
        ("mlp_shallow", 40 * 100 + 100 + 100 * 10 + 10),
        ("cnn1d", (1 * 25 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + (125 * 10 + 10)),  # MNIST-1D ConvBase
        ("gru", 2 * (3 * 6 * 1 + 3 * 6 * 6 + 2 * 3 * 6) + (2 * 6 * 40 * 10 + 10)),  # MNIST-1D GRUBase: 5,134
        ("lstm", 16 * 64 + (4 * 128 * 64 + 4 * 128 * 128 + 2 * 4 * 128) + 128 * 10 + 10),
    ],
)
def test_parameter_counts_by_hand(name: str, count: int) -> None:
    assert get(name).param_count() == count


@pytest.mark.parametrize("name", ZOO)
def test_variables_match_layout_and_are_deterministic(name: str) -> None:
    arch = get(name)
    a, b, c = arch.init_variables(3), arch.init_variables(3), arch.init_variables(4)
    assert list(a) == list(arch.variable_layout())
    assert arch.param_count() == sum(v.size for k, v in a.items() if k in arch.param_layout())
    for key, value in a.items():
        assert value.dtype == np.float32 and value.shape == arch.variable_layout()[key]
        np.testing.assert_array_equal(value, b[key])
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_only_batch_norm_models_carry_state() -> None:
    for arch in ARCHITECTURES.values():
        has_bn = any(isinstance(layer, BatchNorm) for _, layer, _ in arch.leaves())
        assert bool(arch.state_layout()) == has_bn, arch.name
    state = get("resnet20").state_layout()
    assert len(state) == 2 * 19  # one batch norm after each of the 19 convolutions
    init = get("resnet20").init_variables(0)
    assert all(init[k].mean() == (0.0 if k.endswith("mean") else 1.0) for k in state)


def test_resnet20_structure() -> None:
    """3 stages x 3 blocks of two 3x3 convolutions, plus stem and classifier: 20 weighted layers."""
    arch = get("resnet20")
    blocks = [layer for layer in arch.layers if isinstance(layer, Residual)]
    assert len(blocks) == 9
    kernels = [k for k, shape in arch.param_layout().items() if k.endswith("kernel") and len(shape) == 4]
    assert len(kernels) == 19 and all(arch.param_layout()[k][2:] == (3, 3) for k in kernels)
    assert [len(b.shortcut) for b in blocks] == [0, 0, 0, 1, 0, 0, 1, 0, 0]  # option A where the shape changes
    assert arch.shapes()[-2] == (64,)


def test_forward_flops_by_hand() -> None:
    """2 FLOPs per multiply-add."""
    lenet = 2 * (1 * 25 * 6 * 28 * 28 + 6 * 25 * 16 * 10 * 10 + 400 * 120 + 120 * 84 + 84 * 10)
    assert get("lenet5").forward_flops() == lenet
    macs = 3 * 9 * 16 * 32 * 32  # stem
    macs += 6 * 16 * 9 * 16 * 32 * 32  # stage 1
    macs += 16 * 9 * 32 * 16 * 16 + 5 * 32 * 9 * 32 * 16 * 16  # stage 2
    macs += 32 * 9 * 64 * 8 * 8 + 5 * 64 * 9 * 64 * 8 * 8  # stage 3
    macs += 64 * 10
    assert get("resnet20").forward_flops() == 2 * macs  # ~40.6M multiply-adds, the "41M" usually quoted
    gru = 2 * 40 * 2 * 3 * 6 * (1 + 6) + 2 * 480 * 10
    assert get("gru").forward_flops() == gru
    t, d, m = 32, 64, 256
    block = 2 * t * d * d * 4 + 2 * 2 * t * t * d + 2 * 2 * t * d * m
    assert get("transformer").forward_flops() == 2 * block + 2 * d * 10
    assert get("mlp_residual").forward_flops() == 2 * (40 * 256 + 8 * 256 * 256 + 256 * 10)


@pytest.mark.parametrize("name", ZOO)
def test_train_flops_are_three_forward_passes(name: str) -> None:
    arch = get(name)
    assert arch.flops_per_sample("train") == 3 * arch.flops_per_sample("infer") > 0


def test_depth_ladder() -> None:
    """Shallow to deep: hidden dense layers of the MLP family."""

    def hidden(arch: Architecture) -> int:
        return sum(isinstance(layer, Dense) for _, layer, _ in arch.leaves()) - 1

    assert hidden(get("logreg")) == 0
    assert hidden(get("mlp_shallow")) == 1
    assert hidden(get("mlp_deep")) >= 6
    assert hidden(get("mlp_residual")) >= hidden(get("mlp_deep"))


def test_recurrent_models() -> None:
    gru = next(layer for _, layer, _ in get("gru").leaves() if isinstance(layer, Recurrent))
    assert gru.cell == "gru" and gru.bidirectional and gru.hidden == 6
    assert {"1.w_ih_rev", "1.b_hh_rev"} <= set(get("gru").param_layout())
    lstm = next(layer for _, layer, _ in get("lstm").leaves() if isinstance(layer, Recurrent))
    assert lstm.cell == "lstm" and not lstm.bidirectional and not lstm.sequences
    assert get("lstm").input_dtype == get("transformer").input_dtype == "int32"


def test_for_data_resizes_input_widths() -> None:
    mlp = get("mlp_shallow").for_data((1, 8, 8), "float32")
    assert mlp.param_layout()["1.kernel"] == (64, 100)
    tok = get("transformer").for_data((24,), "int32", vocab_size=20)
    assert tok.param_layout()["0.table"] == (20, 64) and tok.param_layout()["0.positions"] == (24, 64)
    # input channels do not adapt: a greyscale 32x32 image is repeated to ResNet-20's three channels
    assert get("resnet20").for_data((1, 32, 32), "float32").param_count() == 269_722


@pytest.mark.parametrize(
    ("name", "shape", "dtype", "match"),
    [
        ("lenet5", (1, 40), "float32", "rank-3"),
        ("cnn1d", (1, 8, 8), "float32", "rank-2"),
        ("gru", (1, 8, 8), "float32", "rank-2"),  # never read as a sequence of 64 pixels
        ("transformer", (1, 40), "float32", "int32"),
        ("mlp_shallow", (32,), "int32", "float32"),
        ("lenet5", (1, 8, 8), "float32", "empty output"),
    ],
)
def test_for_data_rejects_what_cannot_fit(name: str, shape: tuple[int, ...], dtype: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get(name).for_data(shape, dtype)


def test_last_layer_must_be_logits() -> None:
    with pytest.raises(ValueError, match="logits"):
        Architecture("bad", "", (4,), (Dense(3),))


def test_residual_shapes_must_agree() -> None:
    with pytest.raises(ValueError, match="residual"):
        Architecture("bad", "", (4,), (Residual((Dense(8),)), Dense(2, activation="none")))


@pytest.mark.parametrize("name", ZOO)
def test_reference_forward_is_finite_and_batch_norm_updates(name: str) -> None:
    arch = get(name)
    rng = np.random.default_rng(0)
    if arch.input_dtype == "int32":
        x = rng.integers(0, arch.vocab_size or 1, (4, *arch.input_shape)).astype(np.int32)
    else:
        x = rng.standard_normal((4, *arch.input_shape)).astype(np.float32)
    variables = arch.init_variables(0)
    logits, state = forward(arch, variables, x, training=True)
    assert logits.shape == (4, arch.num_classes) and np.isfinite(logits).all()
    for key in arch.state_layout():
        assert not np.array_equal(state[key], variables[key])
    eval_logits, same = forward(arch, variables, x, training=False)
    assert all(np.array_equal(same[k], variables[k]) for k in arch.state_layout())
    assert math.isclose(float(np.abs(eval_logits - logits).max()), 0.0) == (not arch.state_layout())
