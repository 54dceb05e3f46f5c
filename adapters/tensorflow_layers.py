"""The TensorFlow adapter's layers: one builder per leaf kind, composed into a forward function.

A builder turns a layer spec and its variables into ``fn(x, training) -> y`` made of raw ``tf.nn``
ops (traced into the adapter's XLA-compiled functions). Image-like activations are channel-last
inside (``(N, *spatial, C)``); every other tensor (flat vectors, ``(N, T, F)`` sequences, token ids)
already has its canonical layout. Batch-norm running statistics are non-trainable variables,
updated with ``assign`` in training mode.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf

from workloads.architectures.layers import (
    BatchNorm,
    Conv,
    Dense,
    Embedding,
    Flatten,
    GlobalAvgPool,
    Layer,
    LayerNorm,
    Leaf,
    PadShortcut,
    Pool,
    Recurrent,
    Residual,
    Shape,
    TokenMeanPool,
    ToSequence,
    TransformerBlock,
)

Fn = Callable[[tf.Tensor, bool], tf.Tensor]  # (x, training) -> y

ACTIVATIONS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "relu": tf.nn.relu,
    "tanh": tf.math.tanh,
    "gelu": lambda x: tf.nn.gelu(x, approximate=False),
    "none": tf.identity,
}


@dataclass(frozen=True)
class _Vars:
    """One layer's variables, looked up by kind (``v["kernel"]`` is ``"{path}.kernel"``)."""

    table: Mapping[str, tf.Variable]
    path: str

    def __getitem__(self, kind: str) -> tf.Variable:
        return self.table[f"{self.path}.{kind}"]

    def get(self, kind: str) -> tf.Variable | None:
        return self.table.get(f"{self.path}.{kind}")


def _bias_act(x: tf.Tensor, bias: tf.Variable | None, activation: str) -> tf.Tensor:
    return ACTIVATIONS[activation](x if bias is None else x + bias)


def _dense(v: _Vars, layer: Dense, image: bool) -> Fn:
    return lambda x, training: _bias_act(tf.matmul(x, v["kernel"]), v.get("bias"), layer.activation)


def _conv(v: _Vars, layer: Conv, image: bool) -> Fn:
    pad = [[0, 0], *[[p, p] for p in layer.padding], [0, 0]]
    explicit = any(layer.padding)

    def fn(x: tf.Tensor, training: bool) -> tf.Tensor:
        x = tf.pad(x, pad) if explicit else x
        y = tf.nn.convolution(x, v["kernel"], list(layer.stride), "VALID")
        return _bias_act(y, v.get("bias"), layer.activation)

    return fn


def _flatten(v: _Vars, layer: Flatten, image: bool) -> Fn:
    """Channel-first row-major flatten: a channel-last image is moved back to ``(N, C, *spatial)`` first."""

    def fn(x: tf.Tensor, training: bool) -> tf.Tensor:
        rank = len(x.shape)
        if image and rank > 2:
            x = tf.transpose(x, [0, rank - 1, *range(1, rank - 1)])
        return tf.reshape(x, [tf.shape(x)[0], -1])

    return fn


def _pool(v: _Vars, layer: Pool, image: bool) -> Fn:
    op = tf.nn.max_pool if layer.kind == "max" else tf.nn.avg_pool
    return lambda x, training: op(x, list(layer.window), list(layer.stride), "VALID")


def _global_avg_pool(v: _Vars, layer: GlobalAvgPool, image: bool) -> Fn:
    return lambda x, training: tf.reduce_mean(x, axis=list(range(1, len(x.shape) - 1)))


def _batch_norm(v: _Vars, layer: BatchNorm, image: bool) -> Fn:
    """torch's convention: biased batch variance to normalise, unbiased one in the running update."""
    gamma, beta, mean_run, var_run = v["gamma"], v["beta"], v["running_mean"], v["running_var"]
    m = layer.momentum

    def fn(x: tf.Tensor, training: bool) -> tf.Tensor:
        rank = len(x.shape)
        channel = rank - 1 if image or rank == 2 else 1  # a plain (N, C, ...) sample normalises axis 1
        axes = [a for a in range(rank) if a != channel]
        shape = [-1 if a == channel else 1 for a in range(rank)]
        if training:
            mean, var = tf.nn.moments(x, axes)
            n = tf.cast(tf.size(x) // tf.shape(x)[channel], x.dtype)
            mean_run.assign((1 - m) * mean_run + m * mean)
            var_run.assign((1 - m) * var_run + m * var * (n / (n - 1)))
        else:
            mean, var = mean_run, var_run
        scale = tf.reshape(gamma * tf.math.rsqrt(var + layer.eps), shape)
        y = (x - tf.reshape(mean, shape)) * scale + tf.reshape(beta, shape)
        return ACTIVATIONS[layer.activation](y)

    return fn


def _normalise_last(x: tf.Tensor, gamma: tf.Variable, beta: tf.Variable, eps: float) -> tf.Tensor:
    mean, var = tf.nn.moments(x, [-1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(var + eps) * gamma + beta


def _layer_norm(v: _Vars, layer: LayerNorm, image: bool) -> Fn:
    return lambda x, training: _normalise_last(x, v["gamma"], v["beta"], layer.eps)


def _pad_shortcut(v: _Vars, layer: PadShortcut, image: bool) -> Fn:
    """Option A: subsample the spatial dims by the stride, zero-pad the (last) channel axis."""
    s = layer.stride

    def fn(x: tf.Tensor, training: bool) -> tf.Tensor:
        spatial = len(x.shape) - 2
        x = x[(slice(None), *[slice(None, None, s)] * spatial, slice(None))]
        before = (layer.filters - x.shape[-1]) // 2
        after = layer.filters - x.shape[-1] - before
        return tf.pad(x, [[0, 0]] * (spatial + 1) + [[before, after]])

    return fn


def _to_sequence(v: _Vars, layer: ToSequence, image: bool) -> Fn:
    return lambda x, training: x  # a channel-last (N, L, C) image already is the (N, T, F) sequence


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


def _recurrent(v: _Vars, layer: Recurrent, image: bool) -> Fn:
    """GRU/LSTM over ``(N, T, F)``, both directions of a bidirectional layer in one recurrence.

    The input projection of every step is one matmul per direction; the reverse direction's steps are
    laid out in its reading order (time reversed). The directions are stacked on a leading axis ``D``
    and a ``tf.scan`` over time (an XLA while loop) runs the cell on state ``(D, N, H)`` with batched
    matmuls, so a bidirectional layer costs ``T`` sequential steps, not ``2T``.
    """
    cell = _gru_cell if layer.cell == "gru" else _lstm_cell

    def fn(x: tf.Tensor, training: bool) -> tf.Tensor:
        projected = []
        for d in layer.directions:
            p = tf.einsum("ntf,gf->tng", x, v[f"w_ih{d}"]) + v[f"b_ih{d}"]  # time-major (T, N, G*H)
            projected.append(tf.reverse(p, [0]) if d else p)
        w_hh = tf.stack([v[f"w_hh{d}"] for d in layer.directions])  # (D, G*H, H)
        b_hh = tf.stack([v[f"b_hh{d}"] for d in layer.directions])[:, None, :]  # (D, 1, G*H)
        zeros = tf.zeros([len(layer.directions), tf.shape(x)[0], layer.hidden], x.dtype)
        init: tuple[tf.Tensor, ...] = (zeros,) if layer.cell == "gru" else (zeros, zeros)
        steps = tf.scan(lambda state, x_t: cell(x_t, state, w_hh, b_hh), tf.stack(projected, axis=1), init)
        hs = steps[0]  # (T, D, N, H), each direction in its reading order
        if not layer.sequences:
            return tf.concat(tf.unstack(hs[-1]), axis=-1)  # final states: forward, then reverse after step 0
        outputs = [hs[:, 0], *([tf.reverse(hs[:, 1], [0])] if layer.bidirectional else [])]
        return tf.transpose(tf.concat(outputs, axis=-1), [1, 0, 2])

    return fn


def _embedding(v: _Vars, layer: Embedding, image: bool) -> Fn:
    def fn(ids: tf.Tensor, training: bool) -> tf.Tensor:
        x = tf.gather(v["table"], ids)
        return x + v["positions"] if layer.positions else x

    return fn


def _attention(v: _Vars, x: tf.Tensor, heads: int) -> tf.Tensor:
    """Multi-head self-attention; heads are contiguous slices of the model width."""
    t, d = x.shape[1], x.shape[2]
    split = [-1, t, heads, d // heads]
    q, k, val = (tf.reshape(tf.matmul(x, v[f"w{n}"]) + v[f"b{n}"], split) for n in "qkv")
    scores = tf.einsum("nqhd,nkhd->nhqk", q, k) / math.sqrt(d // heads)
    mixed = tf.einsum("nhqk,nkhd->nqhd", tf.nn.softmax(scores, axis=-1), val)
    return tf.matmul(tf.reshape(mixed, [-1, t, d]), v["wo"]) + v["bo"]


def _transformer_block(v: _Vars, layer: TransformerBlock, image: bool) -> Fn:
    def fn(x: tf.Tensor, training: bool) -> tf.Tensor:
        x = x + _attention(v, _normalise_last(x, v["ln1.gamma"], v["ln1.beta"], 1e-5), layer.heads)
        h = _normalise_last(x, v["ln2.gamma"], v["ln2.beta"], 1e-5)
        h = tf.nn.gelu(tf.matmul(h, v["w1"]) + v["b1"], approximate=False)
        return x + tf.matmul(h, v["w2"]) + v["b2"]

    return fn


def _token_mean_pool(v: _Vars, layer: TokenMeanPool, image: bool) -> Fn:
    return lambda x, training: tf.reduce_mean(x, axis=1)


# Leaves whose output is no longer a channel-last image (flat vectors and sequences keep their canonical layout).
_LEAVES_IMAGE = (Conv, Pool, BatchNorm, PadShortcut)


def _chain(table: Mapping[str, tf.Variable], layers: tuple[Layer, ...], image: bool, prefix: str) -> tuple[Fn, bool]:
    """Compose ``layers`` (paths ``{prefix}{i}``); returns the function and whether its output is an image."""
    fns: list[Fn] = []
    for i, layer in enumerate(layers):
        path = f"{prefix}{i}"
        if isinstance(layer, Residual):
            fn, image = _residual(table, layer, image, path)
        else:
            fn = _build_leaf(table, layer, image, path)
            image = image and isinstance(layer, _LEAVES_IMAGE)
        fns.append(fn)

    def chained(x: tf.Tensor, training: bool) -> tf.Tensor:
        for f in fns:
            x = f(x, training)
        return x

    return chained, image


def _build_leaf(table: Mapping[str, tf.Variable], layer: Leaf, image: bool, path: str) -> Fn:
    """Dispatch on the leaf's kind to its builder."""
    v = _Vars(table, path)
    match layer:
        case Dense():
            return _dense(v, layer, image)
        case Conv():
            return _conv(v, layer, image)
        case Flatten():
            return _flatten(v, layer, image)
        case Pool():
            return _pool(v, layer, image)
        case GlobalAvgPool():
            return _global_avg_pool(v, layer, image)
        case BatchNorm():
            return _batch_norm(v, layer, image)
        case LayerNorm():
            return _layer_norm(v, layer, image)
        case PadShortcut():
            return _pad_shortcut(v, layer, image)
        case ToSequence():
            return _to_sequence(v, layer, image)
        case Recurrent():
            return _recurrent(v, layer, image)
        case Embedding():
            return _embedding(v, layer, image)
        case TransformerBlock():
            return _transformer_block(v, layer, image)
        case TokenMeanPool():
            return _token_mean_pool(v, layer, image)
    raise TypeError(f"no TensorFlow builder for {layer!r}")


def _residual(table: Mapping[str, tf.Variable], layer: Residual, image: bool, path: str) -> tuple[Fn, bool]:
    body, out_image = _chain(table, layer.body, image, f"{path}.body.")
    shortcut, _ = _chain(table, layer.shortcut, image, f"{path}.shortcut.")
    act = ACTIVATIONS[layer.activation]
    return (lambda x, training: act(body(x, training) + shortcut(x, training))), out_image


def build_forward(table: Mapping[str, tf.Variable], layers: tuple[Layer, ...], input_shape: Shape) -> Fn:
    """The whole model; float inputs with spatial dims arrive channel-last (``adapters.layout``)."""
    fn, _ = _chain(table, layers, len(input_shape) > 1, "")
    return fn
