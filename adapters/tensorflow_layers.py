"""The TensorFlow adapter's layers: one builder per leaf type, composed into a forward function.

A builder turns a layer spec into ``fn(run, x) -> y`` made of raw ``tf.nn`` ops (traced into the
adapter's XLA-compiled functions); ``run`` holds the variables and the mode of the pass. Image-like
activations are channel-last inside (``(N, *spatial, C)``): the layers that work along the channel
axis read channel-last data, every other one the canonical layout, and ``compose`` puts a transpose
where the layout changes (before a ``Flatten`` after a convolution). Batch-norm running statistics
are non-trainable variables, updated with ``assign`` in training mode.

Precision (the contract in ``adapters/base.py``): ``Run.compute`` is the dtype of the matrix products;
they cast their inputs, weights and biases with :meth:`Run.low` (a no-op in float32). Batch norm, layer
norm and the attention softmax cast their input to float32. TensorFlow does not promote mixed dtypes,
so the adds that meet a low and a float32 operand (residuals) promote explicitly (:func:`_add`).

Shape shared with the other ``*_layers`` modules (see ``workloads.architectures.compose``):
``ACTIVATIONS``, ``BUILDERS`` (one builder ``(path, layer, shape, ctx) -> fn`` per leaf type), the
build context (a ``FunctionComposer``) and ``build(arch)`` through ``compose``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf

from workloads.architectures.architecture import Architecture
from workloads.architectures.compose import Builder, FunctionComposer, compose
from workloads.architectures.compose import LayerFn as Piece
from workloads.architectures.layers import (
    LAYER_NORM_EPS,
    TIED_TABLE,
    Activation,
    BatchNorm,
    ClassToken,
    Conv,
    Dense,
    Embedding,
    FirstToken,
    Flatten,
    GlobalAvgPool,
    LayerNorm,
    LMHead,
    PadShortcut,
    Pool,
    Recurrent,
    Residual,
    Shape,
    TokenMeanPool,
    ToSequence,
    TransformerBlock,
    variable_name,
)

Variables = Mapping[str, tf.Variable]
Forward = Callable[[Variables, tf.Tensor, bool], tf.Tensor]  # (variables, x, training) -> logits

ACTIVATIONS: dict[Activation, Callable[[tf.Tensor], tf.Tensor]] = {
    "relu": tf.nn.relu,
    "tanh": tf.math.tanh,
    "gelu": lambda x: tf.nn.gelu(x, approximate=False),
    "none": tf.identity,
}


@dataclass(frozen=True)
class Run:
    """One forward pass: the variables it reads and its mode."""

    variables: Variables
    training: bool
    compute: tf.DType = tf.float32  # the matrix products' dtype

    def var(self, path: str, kind: str) -> tf.Variable:
        return self.variables[variable_name(path, kind)]

    def low(self, x: tf.Tensor) -> tf.Tensor:
        """``x`` in the matrix products' dtype."""
        return tf.cast(x, self.compute)


LayerFn = Callable[[Run, tf.Tensor], tf.Tensor]


def _to_channel_last(run: Run, x: tf.Tensor) -> tf.Tensor:
    return tf.transpose(x, [0, *range(2, len(x.shape)), 1])


def _to_channel_first(run: Run, x: tf.Tensor) -> tf.Tensor:
    rank = len(x.shape)
    return tf.transpose(x, [0, rank - 1, *range(1, rank - 1)])


def _bias_act(x: tf.Tensor, bias: tf.Variable | None, activation: Activation) -> tf.Tensor:
    return ACTIVATIONS[activation](x if bias is None else x + bias)


def _add(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """``a + b``, a low-precision and a float32 operand promoted to float32 (as torch and jnp do)."""
    if a.dtype != b.dtype:
        a, b = tf.cast(a, tf.float32), tf.cast(b, tf.float32)
    return a + b


def _affine(run: Run, x: tf.Tensor, w: tf.Variable, b: tf.Variable) -> tf.Tensor:
    """``x @ w + b``, a matrix product: in the compute dtype."""
    return tf.matmul(run.low(x), run.low(w)) + run.low(b)


class _Composer(FunctionComposer):
    """Residual joins that promote mixed dtypes (a float32 shortcut meeting a low-precision body)."""

    def residual(self, layer: Residual, body: Piece, shortcut: Piece) -> Piece:
        act = self.activations[layer.activation]
        return lambda run, x: act(_add(body(run, x), shortcut(run, x)))


def _normalise_last(x: tf.Tensor, gamma: tf.Variable, beta: tf.Variable, eps: float) -> tf.Tensor:
    x = tf.cast(x, tf.float32)
    mean, var = tf.nn.moments(x, [-1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(var + eps) * gamma + beta


# Builders: (path, layer, input sample shape, ctx) -> fn(run, x).


def _dense(path: str, layer: Dense, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    def fn(run: Run, x: tf.Tensor) -> tf.Tensor:
        bias = run.low(run.var(path, "bias")) if layer.bias else None
        return _bias_act(tf.matmul(run.low(x), run.low(run.var(path, "kernel"))), bias, layer.activation)

    return fn


def _conv(path: str, layer: Conv, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    pad = [[0, 0], *[[p, p] for p in layer.padding], [0, 0]]
    explicit = any(layer.padding)

    def fn(run: Run, x: tf.Tensor) -> tf.Tensor:
        x = tf.pad(run.low(x), pad) if explicit else run.low(x)
        y = tf.nn.convolution(x, run.low(run.var(path, "kernel")), list(layer.stride), "VALID")
        return _bias_act(y, run.low(run.var(path, "bias")) if layer.bias else None, layer.activation)

    return fn


def _flatten(path: str, layer: Flatten, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    return lambda run, x: tf.reshape(x, [tf.shape(x)[0], -1])  # reads channel-first: row-major canonical order


def _pool(path: str, layer: Pool, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    op = tf.nn.max_pool if layer.kind == "max" else tf.nn.avg_pool
    pad = [[0, 0], *[[p, p] for p in layer.pads], [0, 0]]

    def fn(run: Run, x: tf.Tensor) -> tf.Tensor:
        if any(layer.pads):  # max pooling only: -inf is never the maximum
            x = tf.pad(x, pad, constant_values=-math.inf)
        return op(x, list(layer.window), list(layer.stride), "VALID")

    return fn


def _global_avg_pool(path: str, layer: GlobalAvgPool, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    return lambda run, x: tf.reduce_mean(x, axis=list(range(1, len(x.shape) - 1)))


def _batch_norm(path: str, layer: BatchNorm, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    """torch's convention: biased batch variance to normalise, unbiased one in the running update.

    The channel axis is the last one: channel-last images, flat ``(N, C)`` vectors.
    """
    m = layer.momentum

    def fn(run: Run, x: tf.Tensor) -> tf.Tensor:
        x = tf.cast(x, tf.float32)
        rank = len(x.shape)
        axes, shape = list(range(rank - 1)), [1] * (rank - 1) + [-1]
        mean_run, var_run = run.var(path, "running_mean"), run.var(path, "running_var")
        if run.training:
            mean, var = tf.nn.moments(x, axes)
            n = tf.cast(tf.size(x) // tf.shape(x)[rank - 1], x.dtype)
            mean_run.assign((1 - m) * mean_run + m * mean)
            var_run.assign((1 - m) * var_run + m * var * (n / (n - 1)))
        else:
            mean, var = mean_run, var_run
        scale = tf.reshape(run.var(path, "gamma") * tf.math.rsqrt(var + layer.eps), shape)
        y = (x - tf.reshape(mean, shape)) * scale + tf.reshape(run.var(path, "beta"), shape)
        return ACTIVATIONS[layer.activation](y)

    return fn


def _layer_norm(path: str, layer: LayerNorm, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    return lambda run, x: _normalise_last(x, run.var(path, "gamma"), run.var(path, "beta"), layer.eps)


def _pad_shortcut(path: str, layer: PadShortcut, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    """Option A: subsample the spatial dims by the stride, zero-pad the (last) channel axis."""
    s, (before, after) = layer.stride, layer.channel_padding(shape[0])

    def fn(run: Run, x: tf.Tensor) -> tf.Tensor:
        spatial = len(x.shape) - 2
        x = x[(slice(None), *[slice(None, None, s)] * spatial, slice(None))]
        return tf.pad(x, [[0, 0]] * (spatial + 1) + [[before, after]])

    return fn


def _to_sequence(path: str, layer: ToSequence, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    # reads channel-last: (N, *spatial, C) already is the sequence, positions row-major
    return lambda run, x: tf.reshape(x, [tf.shape(x)[0], -1, x.shape[-1]])


def _gru_cell(x_t: tf.Tensor, state: tuple[tf.Tensor, ...], w_hh: tf.Tensor, b_hh: tf.Tensor) -> tuple[tf.Tensor, ...]:
    (h,) = state
    xr, xz, xn = tf.split(x_t, 3, axis=-1)
    hr, hz, hn = tf.split(tf.matmul(h, w_hh, transpose_b=True) + b_hh, 3, axis=-1)
    r = tf.math.sigmoid(xr + hr)
    z = tf.math.sigmoid(xz + hz)
    n = tf.math.tanh(xn + r * hn)
    return ((1 - z) * n + z * h,)


def _lstm_cell(x_t: tf.Tensor, state: tuple[tf.Tensor, ...], w_hh: tf.Tensor, b_hh: tf.Tensor) -> tuple[tf.Tensor, ...]:
    h, c = state
    i, f, g, o = tf.split(x_t + tf.matmul(h, w_hh, transpose_b=True) + b_hh, 4, axis=-1)
    c = tf.math.sigmoid(f) * c + tf.math.sigmoid(i) * tf.math.tanh(g)
    return tf.math.sigmoid(o) * tf.math.tanh(c), c


def _recurrent(path: str, layer: Recurrent, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    """GRU/LSTM over ``(N, T, F)``, both directions of a bidirectional layer in one recurrence.

    The input projection of every step is one matmul per direction; the reverse direction's steps are
    laid out in its reading order (time reversed). The directions are stacked on a leading axis ``D``
    and a ``tf.scan`` over time (an XLA while loop) runs the cell on state ``(D, N, H)`` with batched
    matmuls, so a bidirectional layer costs ``T`` sequential steps, not ``2T``.
    """
    cell = _gru_cell if layer.cell == "gru" else _lstm_cell

    def fn(run: Run, x: tf.Tensor) -> tf.Tensor:
        def v(kind: str) -> tf.Tensor:
            return run.low(run.var(path, kind))

        x, projected = run.low(x), []
        for d in layer.directions:
            p = tf.einsum("ntf,gf->tng", x, v(f"w_ih{d}")) + v(f"b_ih{d}")  # (T, N, G*H)
            projected.append(tf.reverse(p, [0]) if d else p)
        w_hh = tf.stack([v(f"w_hh{d}") for d in layer.directions])  # (D, G*H, H)
        b_hh = tf.stack([v(f"b_hh{d}") for d in layer.directions])[:, None, :]  # (D, 1, G*H)
        zeros = tf.zeros([len(layer.directions), tf.shape(x)[0], layer.hidden], x.dtype)
        init: tuple[tf.Tensor, ...] = (zeros,) if layer.cell == "gru" else (zeros, zeros)
        steps = tf.scan(lambda state, x_t: cell(x_t, state, w_hh, b_hh), tf.stack(projected, axis=1), init)
        hs = steps[0]  # (T, D, N, H), each direction in its reading order
        if not layer.sequences:
            return tf.concat(tf.unstack(hs[-1]), axis=-1)  # final states: forward, then reverse after step 0
        outputs = [hs[:, 0], *([tf.reverse(hs[:, 1], [0])] if layer.bidirectional else [])]
        return tf.transpose(tf.concat(outputs, axis=-1), [1, 0, 2])

    return fn


def _embedding(path: str, layer: Embedding, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    def fn(run: Run, ids: tf.Tensor) -> tf.Tensor:
        x = tf.gather(run.var(path, "table"), ids)
        return x + run.var(path, "positions") if layer.positions else x

    return fn


def _transformer_block(path: str, layer: TransformerBlock, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    """Pre-norm encoder block; attention heads are contiguous slices of the model width."""
    t, d = shape
    split, scale = [-1, t, layer.heads, d // layer.heads], layer.attention_scale(d)

    def fn(run: Run, x: tf.Tensor) -> tf.Tensor:
        def p(kind: str) -> tf.Variable:
            return run.var(path, kind)

        h = _normalise_last(x, p("ln1.gamma"), p("ln1.beta"), LAYER_NORM_EPS)
        q, k, v = (tf.reshape(_affine(run, h, p(f"w{c}"), p(f"b{c}")), split) for c in "qkv")
        scores = tf.cast(tf.einsum("nqhd,nkhd->nhqk", q, k), tf.float32) * scale
        if layer.causal:  # query i sees keys j <= i; exp(-inf) = 0 leaves the later ones out of the softmax
            visible = tf.linalg.band_part(tf.ones([t, t], scores.dtype), -1, 0) > 0
            scores = tf.where(visible, scores, -math.inf)
        mixed = tf.einsum("nhqk,nkhd->nqhd", run.low(tf.nn.softmax(scores, axis=-1)), v)
        x = _add(x, _affine(run, tf.reshape(mixed, [-1, t, d]), p("wo"), p("bo")))
        h = _normalise_last(x, p("ln2.gamma"), p("ln2.beta"), LAYER_NORM_EPS)
        h = ACTIVATIONS["gelu"](_affine(run, h, p("w1"), p("b1")))
        return _add(x, _affine(run, h, p("w2"), p("b2")))

    return fn


def _token_mean_pool(path: str, layer: TokenMeanPool, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    return lambda run, x: tf.reduce_mean(x, axis=1)


def _class_token(path: str, layer: ClassToken, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    def fn(run: Run, x: tf.Tensor) -> tf.Tensor:
        cls = tf.broadcast_to(run.var(path, "cls"), [tf.shape(x)[0], 1, x.shape[-1]])
        # low-precision patches join the float32 token as float32 (the promotion torch and jnp apply)
        return tf.concat([cls, tf.cast(x, cls.dtype)], axis=1) + run.var(path, "positions")

    return fn


def _first_token(path: str, layer: FirstToken, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    return lambda run, x: x[:, 0]


def _lm_head(path: str, layer: LMHead, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    # the embedding's table, a matrix product: in the compute dtype
    return lambda run, x: tf.einsum("ntd,vd->ntv", run.low(x), run.low(run.variables[TIED_TABLE]))


BUILDERS: dict[type, Builder[LayerFn]] = {
    Dense: _dense,
    Conv: _conv,
    Flatten: _flatten,
    Pool: _pool,
    GlobalAvgPool: _global_avg_pool,
    BatchNorm: _batch_norm,
    LayerNorm: _layer_norm,
    PadShortcut: _pad_shortcut,
    ToSequence: _to_sequence,
    Recurrent: _recurrent,
    Embedding: _embedding,
    TransformerBlock: _transformer_block,
    TokenMeanPool: _token_mean_pool,
    ClassToken: _class_token,
    FirstToken: _first_token,
    LMHead: _lm_head,
}


def build(arch: Architecture, compute: tf.DType = tf.float32) -> Forward:
    """``forward(variables, x, training) -> logits``; float inputs with spatial dims arrive channel-last
    (``adapters.layout``), batch-norm running statistics are updated in place when ``training``; the
    matrix products run in ``compute`` (the logits come in the last layer's dtype).
    """
    body = compose(arch, BUILDERS, _Composer(ACTIVATIONS, _to_channel_last, _to_channel_first))
    return lambda variables, x, training: body(Run(variables, training, compute), x)
