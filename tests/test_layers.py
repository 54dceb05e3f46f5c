"""The layer specs of the newer model families (``workloads/architectures/layers.py``) and their float64
reference: shapes, variables, FLOPs, the language-model contract, and what the reference computes.

Every framework against that reference and against each other: ``test_parity.py`` (tests/layer_archs.py).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from harness.worker.scenarios import evaluate
from tests.layer_archs import LAYER_ARCHITECTURES
from workloads import datasets
from workloads.architectures import (
    Architecture,
    ClassToken,
    Dense,
    Embedding,
    FirstToken,
    Flatten,
    LMHead,
    Pool,
    Recurrent,
    ToSequence,
    TransformerBlock,
    get,
    reference,
)
from workloads.architectures.reference import cross_entropy, forward

GPT = LAYER_ARCHITECTURES["tiny_gpt"]
VIT = LAYER_ARCHITECTURES["tiny_vit"]


def _pool_arch(pool: Pool, shape: tuple[int, ...]) -> Architecture:
    return Architecture("pool", "", shape, (pool, Flatten(), Dense(2, activation="none")))


def _pooled(pool: Pool, x: np.ndarray) -> np.ndarray:
    """The reference's output of ``pool`` alone (a Dense with an identity kernel after it)."""
    arch = _pool_arch(pool, x.shape[1:])
    width = math.prod(pool.out_shape(x.shape[1:]))
    arch = dataclasses.replace(arch, layers=(pool, Flatten(), Dense(width, activation="none")))
    variables = {"2.kernel": np.eye(width, dtype=np.float32), "2.bias": np.zeros(width, np.float32)}
    return forward(arch, variables, x)[0].reshape(len(x), *pool.out_shape(x.shape[1:]))


def test_pool_padding_sizes_and_what_is_not_in_the_contract() -> None:
    assert Pool("max", (3, 3), (2, 2), (1, 1)).out_shape((8, 112, 112)) == (8, 56, 56)  # the ResNet stem
    assert Pool("max", (3,), (2,), (1,)).out_shape((4, 7)) == (4, 4)
    assert Pool("avg", (2, 2), (2, 2)) == Pool("avg", (2, 2), (2, 2), ())  # old specs: unchanged
    assert Pool("avg", (2, 2), (2, 2), (0, 0)).out_shape((3, 8, 8)) == (3, 4, 4)
    with pytest.raises(ValueError, match="not in the contract"):
        Pool("avg", (3, 3), (2, 2), (1, 1)).out_shape((3, 8, 8))
    with pytest.raises(ValueError, match="half its window"):
        Pool("max", (3, 3), (2, 2), (2, 2)).out_shape((3, 8, 8))
    with pytest.raises(ValueError, match="half its window"):
        Pool("max", (3, 3), (2, 2), (1,)).out_shape((3, 8, 8))


def test_reference_max_pool_never_selects_the_padding() -> None:
    """On negative inputs a zero padding would win at the borders; the contract pads with -inf."""
    rng = np.random.default_rng(0)
    x = -np.abs(rng.standard_normal((2, 3, 7, 7))) - 0.1
    pool = Pool("max", (3, 3), (2, 2), (1, 1))
    got = _pooled(pool, x)
    for i, j in np.ndindex(4, 4):
        rows = slice(max(2 * i - 1, 0), 2 * i + 2)
        cols = slice(max(2 * j - 1, 0), 2 * j + 2)
        np.testing.assert_allclose(got[:, :, i, j], x[:, :, rows, cols].max(axis=(2, 3)))
    assert (got < 0).all()
    one_d = _pooled(Pool("max", (3,), (2,), (1,)), x[:, :, 0])
    np.testing.assert_allclose(one_d[:, :, 0], x[:, :, 0, :2].max(-1))


def test_to_sequence_takes_the_positions_row_major() -> None:
    assert ToSequence().out_shape((4, 40)) == (40, 4)
    assert ToSequence(spatial_dims=2).out_shape((16, 14, 14)) == (196, 16)
    for layer, shape in ((ToSequence(), (16,)), (ToSequence(), (16, 14, 14)), (ToSequence(spatial_dims=2), (4, 40))):
        with pytest.raises(ValueError, match="expects a rank"):  # an image is never read as a pixel sequence
            layer.out_shape(shape)
    seq2 = ToSequence(spatial_dims=2)
    arch = Architecture("seq", "", (3, 2, 4), (seq2, Flatten(), Dense(24, activation="none")))
    eye = {"2.kernel": np.eye(24, dtype=np.float32), "2.bias": np.zeros(24, np.float32)}
    x = np.random.default_rng(1).standard_normal((2, 3, 2, 4))
    seq = forward(arch, eye, x)[0].reshape(2, 8, 3)
    for h, w in np.ndindex(2, 4):
        np.testing.assert_array_equal(seq[:, h * 4 + w], x[:, :, h, w])


def test_class_token_and_first_token_specs() -> None:
    token = ClassToken()
    assert token.out_shape((4, 16)) == (5, 16)
    assert token.param_shapes((4, 16)) == {"cls": (16,), "positions": (5, 16)}
    assert token.forward_flops((4, 16)) == 0 and token.state_shapes((4, 16)) == {}
    values = token.init((196, 768), np.random.default_rng(0))
    assert list(values) == ["cls", "positions"] and all(v.dtype == np.float32 for v in values.values())
    assert np.std(values["positions"]) == pytest.approx(1 / math.sqrt(768), rel=0.02)
    assert FirstToken().out_shape((5, 16)) == (16,) and FirstToken().forward_flops((5, 16)) == 0
    with pytest.raises(ValueError, match="rank-2"):
        FirstToken().out_shape((16,))


def test_reference_class_token_goes_first_and_is_read_out() -> None:
    arch = Architecture(
        "cls", "", (4, 3), (ToSequence(), ClassToken(), FirstToken(), Dense(4, activation="none"))
    )  # (4, 3) -> (3, 4) -> (4, 4) -> (4,)
    variables = arch.init_variables(0) | {"3.kernel": np.eye(4, dtype=np.float32)}
    x = np.random.default_rng(2).standard_normal((2, 4, 3))
    out = forward(arch, variables, x)[0]
    expected = variables["1.cls"].astype(np.float64) + variables["1.positions"][0]  # no input at position 0
    np.testing.assert_allclose(out, np.broadcast_to(expected, (2, 4)), rtol=1e-12)
    assert arch.param_count() == 4 + 4 * 4 + 4 * 4 + 4


def test_vit_readout_sees_the_patches_through_attention() -> None:
    x, _ = datasets.synthetic(VIT.input_shape, 10, 2, seed=0)
    variables = VIT.init_variables(0)
    changed = x.copy()
    changed[:, :, 4:, 4:] += 1.0  # the last patch only
    assert not np.allclose(forward(VIT, variables, x)[0], forward(VIT, variables, changed)[0])


def test_causal_block_spec_and_flops() -> None:
    encoder, decoder = TransformerBlock(2, 32), TransformerBlock(2, 32, causal=True)
    assert encoder == TransformerBlock(2, 32, causal=False)
    assert decoder.forward_flops((8, 16)) == encoder.forward_flops((8, 16))  # the full T*T count
    assert decoder.param_shapes((8, 16)) == encoder.param_shapes((8, 16))


@pytest.mark.parametrize("causal", [True, False])
def test_reference_causal_mask_blocks_the_future(causal: bool) -> None:
    """A later token changes no earlier position's logits in a causal model (and does without the mask)."""
    arch = GPT if causal else dataclasses.replace(GPT, layers=(GPT.layers[0], TransformerBlock(2, 32), *GPT.layers[2:]))
    variables = arch.init_variables(3)
    x, _ = datasets.synthetic(arch.input_shape, 16, 4, seed=1, vocab_size=16)
    changed = x.copy()
    changed[:, 5] = (x[:, 5] + 1) % 16
    before, after = forward(arch, variables, x)[0], forward(arch, variables, changed)[0]
    assert not np.allclose(before[:, 5:], after[:, 5:])
    if causal:
        np.testing.assert_array_equal(before[:, :5], after[:, :5])
    else:
        assert not np.allclose(before[:, :5], after[:, :5])


def test_lm_head_is_tied_to_the_embedding_table() -> None:
    assert GPT.lm_head == LMHead(16) and GPT.embedding == Embedding(16, 16, positions=True)
    assert all(not name.startswith("3.") for name in GPT.variable_layout())  # no variable of its own
    assert LMHead(16).forward_flops((8, 32)) == 2 * 8 * 32 * 16
    variables = GPT.init_variables(0)
    x, _ = datasets.synthetic(GPT.input_shape, 16, 2, seed=0, vocab_size=16)
    logits = forward(GPT, variables, x)[0]
    v64 = {k: v.astype(np.float64) for k, v in variables.items()}
    hidden = reference._run(GPT.layers[:3], v64, x, False, {}, "")  # the final LayerNorm's output
    np.testing.assert_allclose(logits, hidden @ v64["0.table"].T, rtol=1e-12)
    unused = sorted(set(range(16)) - set(x.ravel().tolist()))[0]  # a row no input token looks up
    edited = variables | {"0.table": variables["0.table"].copy()}
    edited["0.table"][unused] += np.linspace(-1, 1, 16, dtype=np.float32)  # not constant: LayerNorm sums to 0
    after = forward(GPT, edited, x)[0]
    np.testing.assert_array_equal(np.delete(after, unused, axis=-1), np.delete(logits, unused, axis=-1))
    assert not np.allclose(after[..., unused], logits[..., unused])  # only the head reads that row


def test_language_model_contract() -> None:
    assert GPT.label_shape == (8,) and GPT.num_classes == 16
    assert VIT.label_shape == () and get("mlp_shallow").label_shape == ()
    with pytest.raises(ValueError, match="synthetic next-token batches only"):
        GPT.for_data((8,), "int32", vocab_size=16)
    block = GPT.layers[1]
    with pytest.raises(ValueError, match="ties the table"):
        Architecture("lm", "", (8,), (Embedding(16, 16), block, LMHead(12)))
    with pytest.raises(ValueError, match="ties the table"):
        Architecture("lm", "", (8,), (Embedding(16, 16), Recurrent("gru", 8), LMHead(16)))  # width 8, not 16
    with pytest.raises(ValueError, match="ties the table"):
        Architecture("lm", "", (3, 8), (ToSequence(), LMHead(3)))
    with pytest.raises(ValueError, match="Dense with activation 'none'"):
        Architecture("lm", "", (8,), (Embedding(16, 16), FirstToken()))


def test_synthetic_labels_and_cross_entropy_per_position() -> None:
    x, y = datasets.synthetic(GPT.input_shape, 16, 5, seed=2, vocab_size=16, label_shape=GPT.label_shape)
    assert x.shape == (5, 8) and y.shape == (5, 8) and y.dtype == np.int64 and y.max() < 16
    _, y_flat = datasets.synthetic((4,), 10, 5, seed=2)
    _, y_old = datasets.synthetic((4,), 10, 5, seed=2, label_shape=())
    np.testing.assert_array_equal(y_flat, y_old)
    logits = np.random.default_rng(0).standard_normal((5, 8, 16))
    per_position = [cross_entropy(logits[:, t], y[:, t]) for t in range(8)]
    assert cross_entropy(logits, y) == pytest.approx(np.mean(per_position), rel=1e-12)


class _Fixed:
    """Just enough of an adapter for ``evaluate``: fixed logits per sample."""

    def __init__(self, logits: np.ndarray):
        self.logits = logits

    def to_device(self, x: np.ndarray) -> np.ndarray:
        return x

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self.logits[x[:, 0]]

    def to_numpy(self, value: np.ndarray) -> np.ndarray:
        return value


def test_evaluate_counts_every_position() -> None:
    logits = np.random.default_rng(1).standard_normal((6, 4, 5))
    x = np.arange(6)[:, None] * np.ones((1, 4), np.int64)
    y = logits.argmax(-1)
    y[0, :3] = (y[0, :3] + 1) % 5  # 3 of 24 labels wrong
    accuracy, loss = evaluate(_Fixed(logits), x, y, batch=4)  # type: ignore[arg-type]
    assert accuracy == pytest.approx(21 / 24)
    assert loss == pytest.approx(cross_entropy(logits, y), rel=1e-12)
