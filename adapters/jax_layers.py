"""The JAX adapter's layers: one pure function per leaf kind, composed into a forward at build time.

Layout: a channel-first sample ``(C, *spatial)`` lives channel-last inside (``(N, *spatial, C)``, XLA's
preferred convolution layout on CPU and GPU); sequences ``(N, T, F)``, flat vectors and token ids keep
the canonical layout. Convolution, pooling, batch norm and the padding shortcut read channel-last
data, every other layer canonical data; :func:`build` inserts a transpose only where a layer needs
the other layout (Flatten after a convolution, so dense layers see the channel-first order). A
``ToSequence`` after channel-last data is free: ``(N, L, C)`` already is the sequence.

Batch norm reads its running statistics from :class:`Run` and, in training mode, writes the updated
ones to ``Run.new_state``: the forward stays a pure function of ``(params, state, x)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from workloads.architectures.layers import (
    Architecture,
    BatchNorm,
    Conv,
    Dense,
    Embedding,
    Flatten,
    GlobalAvgPool,
    Layer,
    LayerNorm,
    PadShortcut,
    Pool,
    Recurrent,
    Residual,
    Shape,
    TokenMeanPool,
    ToSequence,
    TransformerBlock,
)

Params = dict[str, jax.Array]
Forward = Callable[[Params, Params, jax.Array, bool], tuple[jax.Array, Params]]

_ACT: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "none": lambda x: x,
}
_DIMS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}
_CHANNEL_LAST = (Conv, Pool, GlobalAvgPool, BatchNorm, PadShortcut)  # layers that read channel-last data


@dataclass
class Run:
    """One forward pass: the variables it reads, its mode, and the batch-norm state it produces."""

    params: Params
    state: Params
    training: bool
    new_state: Params = field(default_factory=dict)


LayerFn = Callable[[Run, jax.Array], jax.Array]


def _layer_norm(x: jax.Array, gamma: jax.Array, beta: jax.Array, eps: float) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * gamma + beta


def _dense(path: str, layer: Dense, shape: Shape) -> LayerFn:
    act = _ACT[layer.activation]

    def f(run: Run, x: jax.Array) -> jax.Array:
        x = x @ run.params[f"{path}.kernel"]
        return act(x + run.params[f"{path}.bias"] if layer.bias else x)

    return f


def _conv(path: str, layer: Conv, shape: Shape) -> LayerFn:
    act, padding = _ACT[layer.activation], [(p, p) for p in layer.padding]

    def f(run: Run, x: jax.Array) -> jax.Array:
        x = jax.lax.conv_general_dilated(
            x,
            run.params[f"{path}.kernel"],
            window_strides=layer.stride,
            padding=padding,
            dimension_numbers=_DIMS[layer.spatial_dims],
        )
        return act(x + run.params[f"{path}.bias"] if layer.bias else x)

    return f


def _flatten(path: str, layer: Flatten, shape: Shape) -> LayerFn:
    return lambda run, x: x.reshape(x.shape[0], -1)


def _pool(path: str, layer: Pool, shape: Shape) -> LayerFn:
    window, strides = (1, *layer.window, 1), (1, *layer.stride, 1)
    size = math.prod(layer.window)

    def f(run: Run, x: jax.Array) -> jax.Array:
        if layer.kind == "max":
            return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, "VALID")
        return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, "VALID") / size

    return f


def _global_avg_pool(path: str, layer: GlobalAvgPool, shape: Shape) -> LayerFn:
    return lambda run, x: jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


def _batch_norm(path: str, layer: BatchNorm, shape: Shape) -> LayerFn:
    act, m = _ACT[layer.activation], layer.momentum
    mean_key, var_key = f"{path}.running_mean", f"{path}.running_var"

    def f(run: Run, x: jax.Array) -> jax.Array:
        if run.training:
            axes = tuple(range(x.ndim - 1))  # every axis but the (last) channel axis
            mean = jnp.mean(x, axis=axes)
            var = jnp.mean(jnp.square(x - mean), axis=axes)  # biased: normalises the batch
            n = x.size // x.shape[-1]
            unbiased = var * (n / max(n - 1, 1))
            run.new_state[mean_key] = (1 - m) * run.state[mean_key] + m * mean
            run.new_state[var_key] = (1 - m) * run.state[var_key] + m * unbiased
        else:
            mean, var = run.state[mean_key], run.state[var_key]
        scale = run.params[f"{path}.gamma"] * jax.lax.rsqrt(var + layer.eps)
        return act((x - mean) * scale + run.params[f"{path}.beta"])

    return f


def _layer_norm_layer(path: str, layer: LayerNorm, shape: Shape) -> LayerFn:
    return lambda run, x: _layer_norm(x, run.params[f"{path}.gamma"], run.params[f"{path}.beta"], layer.eps)


def _pad_shortcut(path: str, layer: PadShortcut, shape: Shape) -> LayerFn:
    s, before = layer.stride, (layer.filters - shape[0]) // 2
    pad = [(0, 0)] * len(shape) + [(before, layer.filters - shape[0] - before)]

    def f(run: Run, x: jax.Array) -> jax.Array:
        return jnp.pad(x[(slice(None), *[slice(None, None, s)] * (x.ndim - 2))], pad)

    return f


def _recurrent(path: str, layer: Recurrent, shape: Shape) -> LayerFn:
    """Both directions in one ``lax.scan`` (the reverse one reads the time-flipped input).

    The input projections of every step are one matmul outside the loop; the loop body holds only
    the batched ``h @ W_hh^T`` and the gate arithmetic. LSTM folds ``b_hh`` into the input projection.
    """
    dirs, gru, seq = layer.directions, layer.cell == "gru", layer.sequences

    def gru_step(w_hh: jax.Array, b_hh: jax.Array) -> Callable[[Any, jax.Array], tuple[Any, Any]]:
        def step(h: jax.Array, xw: jax.Array) -> tuple[jax.Array, jax.Array | None]:
            hw = jnp.einsum("dnh,dhg->dng", h, w_hh) + b_hh
            xr, xz, xn = jnp.split(xw, 3, axis=-1)
            hr, hz, hn = jnp.split(hw, 3, axis=-1)
            r, z = jax.nn.sigmoid(xr + hr), jax.nn.sigmoid(xz + hz)
            n = jnp.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
            return h, h if seq else None  # stack the outputs only when the layer returns them

        return step

    def lstm_step(w_hh: jax.Array) -> Callable[[Any, jax.Array], tuple[Any, Any]]:
        def step(hc: tuple[jax.Array, jax.Array], xw: jax.Array) -> tuple[tuple[jax.Array, jax.Array], Any]:
            h, c = hc
            i, f, g, o = jnp.split(xw + jnp.einsum("dnh,dhg->dng", h, w_hh), 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h if seq else None

        return step

    def f(run: Run, x: jax.Array) -> jax.Array:
        p = run.params
        xs = []
        for d in dirs:
            bias = p[f"{path}.b_ih{d}"] if gru else p[f"{path}.b_ih{d}"] + p[f"{path}.b_hh{d}"]
            xw = jnp.einsum("ntf,gf->tng", x, p[f"{path}.w_ih{d}"]) + bias
            xs.append(jnp.flip(xw, 0) if d else xw)
        w_hh = jnp.stack([p[f"{path}.w_hh{d}"].T for d in dirs])  # (D, H, G*H)
        h0 = jnp.zeros((len(dirs), x.shape[0], layer.hidden), x.dtype)
        if gru:
            b_hh = jnp.stack([p[f"{path}.b_hh{d}"] for d in dirs])[:, None, :]
            h, ys = jax.lax.scan(gru_step(w_hh, b_hh), h0, jnp.stack(xs, axis=1))
        else:
            (h, _), ys = jax.lax.scan(lstm_step(w_hh), (h0, h0), jnp.stack(xs, axis=1))
        if not seq:
            return jnp.concatenate(list(h), axis=-1)  # final states (N, D*H)
        outs = [jnp.flip(ys[:, j], 0) if d else ys[:, j] for j, d in enumerate(dirs)]
        return jnp.swapaxes(jnp.concatenate(outs, axis=-1), 0, 1)  # (T, N, D*H) -> (N, T, D*H)

    return f


def _embedding(path: str, layer: Embedding, shape: Shape) -> LayerFn:
    def f(run: Run, x: jax.Array) -> jax.Array:
        out = jnp.take(run.params[f"{path}.table"], x, axis=0)
        return out + run.params[f"{path}.positions"] if layer.positions else out

    return f


def _transformer_block(path: str, layer: TransformerBlock, shape: Shape) -> LayerFn:
    heads = layer.heads

    def f(run: Run, x: jax.Array) -> jax.Array:
        def p(name: str) -> jax.Array:
            return run.params[f"{path}.{name}"]

        h = _layer_norm(x, p("ln1.gamma"), p("ln1.beta"), 1e-5)
        q, k, v = ((h @ p(f"w{c}") + p(f"b{c}")).reshape(*x.shape[:-1], heads, -1) for c in "qkv")
        attn = jax.nn.dot_product_attention(q, k, v).reshape(x.shape)  # (N, T, heads, D/heads) -> (N, T, D)
        x = x + attn @ p("wo") + p("bo")
        h = _layer_norm(x, p("ln2.gamma"), p("ln2.beta"), 1e-5)
        return x + jax.nn.gelu(h @ p("w1") + p("b1"), approximate=False) @ p("w2") + p("b2")

    return f


def _token_mean_pool(path: str, layer: TokenMeanPool, shape: Shape) -> LayerFn:
    return lambda run, x: jnp.mean(x, axis=1)


_BUILDERS: dict[type, Callable[[str, Any, Shape], LayerFn]] = {
    Dense: _dense,
    Conv: _conv,
    Flatten: _flatten,
    Pool: _pool,
    GlobalAvgPool: _global_avg_pool,
    BatchNorm: _batch_norm,
    LayerNorm: _layer_norm_layer,
    PadShortcut: _pad_shortcut,
    Recurrent: _recurrent,
    Embedding: _embedding,
    TransformerBlock: _transformer_block,
    TokenMeanPool: _token_mean_pool,
}


def _to_channel_last(run: Run, x: jax.Array) -> jax.Array:
    return jnp.moveaxis(x, 1, -1)


def _to_channel_first(run: Run, x: jax.Array) -> jax.Array:
    return jnp.moveaxis(x, -1, 1)


def _chain(fns: list[LayerFn]) -> LayerFn:
    def f(run: Run, x: jax.Array) -> jax.Array:
        for fn in fns:
            x = fn(run, x)
        return x

    return f


def _residual(path: str, layer: Residual, shape: Shape, cl: bool) -> tuple[LayerFn, bool]:
    body, body_cl = build(layer.body, shape, cl, f"{path}.body.")
    shortcut, short_cl = build(layer.shortcut, shape, cl, f"{path}.shortcut.")
    if short_cl != body_cl:
        shortcut = _chain([shortcut, _to_channel_last if body_cl else _to_channel_first])
    act = _ACT[layer.activation]
    return (lambda run, x: act(body(run, x) + shortcut(run, x))), body_cl


def build(layers: tuple[Layer, ...], in_shape: Shape, cl: bool, prefix: str = "") -> tuple[LayerFn, bool]:
    """The layers as one function of ``(run, x)``; ``cl``: is ``x`` (and then the output) channel-last."""
    fns: list[LayerFn] = []
    shape = in_shape
    for i, layer in enumerate(layers):
        path, out_shape = f"{prefix}{i}", layer.out_shape(shape)
        if isinstance(layer, Residual):
            fn, cl = _residual(path, layer, shape, cl)
            fns.append(fn)
        elif isinstance(layer, ToSequence):
            if not cl:  # (N, C, L) -> (N, L, C); channel-last data already is the sequence
                fns.append(lambda run, x: jnp.swapaxes(x, 1, 2))
            cl = False
        else:
            want = len(shape) >= 2 and isinstance(layer, _CHANNEL_LAST)
            if len(shape) >= 2 and want != cl:
                fns.append(_to_channel_last if want else _to_channel_first)
            fns.append(_BUILDERS[type(layer)](path, layer, shape))
            cl = want and len(out_shape) >= 2
        shape = out_shape
    return _chain(fns), cl


def channel_last_input(arch: Architecture) -> bool:
    """Whether ``to_device`` hands this architecture channel-last data (float samples of rank >= 2)."""
    return arch.input_dtype == "float32" and len(arch.input_shape) >= 2


def forward_fn(arch: Architecture) -> Forward:
    """``forward(params, state, x, training) -> (logits, state after the pass)``."""
    body, _ = build(arch.layers, arch.input_shape, channel_last_input(arch))

    def forward(params: Params, state: Params, x: jax.Array, training: bool) -> tuple[jax.Array, Params]:
        run = Run(params, state, training)
        logits = body(run, x)
        return logits, state | run.new_state

    return forward
