"""The JAX adapter's layers: one pure function per leaf type, composed into a forward at build time.

Layout: a channel-first sample ``(C, *spatial)`` lives channel-last inside (``(N, *spatial, C)``, XLA's
preferred convolution layout on CPU and GPU); sequences ``(N, T, F)``, flat vectors and token ids keep
the canonical layout. The layers that work along the channel axis read channel-last data, every other
layer canonical data; ``compose`` inserts a transpose only where a layer needs the other layout
(Flatten after a convolution, so dense layers see the channel-first order). A ``ToSequence`` after
channel-last data is a reshape: ``(N, *spatial, C)`` already is the sequence, positions row-major.

Precision (the contract in ``adapters/base.py``): ``Run.compute`` is the dtype of the matrix products;
they cast their inputs, weights and biases with :meth:`Run.low` (a no-op in float32). Batch norm and
layer norm cast their input to float32; the attention softmax is float32 inside
``jax.nn.dot_product_attention``; everything else follows jnp's promotion.

Batch norm reads its running statistics from :class:`Run` and, in training mode, writes the updated
ones to ``Run.new_state``: the forward stays a pure function of ``(params, state, x)``.

Shape shared with the other ``*_layers`` modules (see ``workloads.architectures.compose``):
``ACTIVATIONS``, ``BUILDERS`` (one builder ``(path, layer, shape, ctx) -> fn`` per leaf type), the
build context (a ``FunctionComposer``) and ``build(arch)`` through ``compose``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from workloads.architectures.architecture import Architecture
from workloads.architectures.compose import Builder, FunctionComposer, compose
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
    Shape,
    TokenMeanPool,
    ToSequence,
    TransformerBlock,
    variable_name,
)

Params = dict[str, jax.Array]
Forward = Callable[[Params, Params, jax.Array, bool], tuple[jax.Array, Params]]

ACTIVATIONS: dict[Activation, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "none": lambda x: x,
}
_DIMS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}


@dataclass
class Run:
    """One forward pass: the variables it reads, its mode, and the batch-norm state it produces."""

    params: Params
    state: Params
    training: bool
    compute: Any = jnp.float32  # the matrix products' dtype
    new_state: Params = field(default_factory=dict)

    def var(self, path: str, kind: str) -> jax.Array:
        return self.params[variable_name(path, kind)]

    def low(self, x: jax.Array) -> jax.Array:
        """``x`` in the matrix products' dtype."""
        return x.astype(self.compute)


LayerFn = Callable[[Run, jax.Array], jax.Array]


def _to_channel_last(run: Run, x: jax.Array) -> jax.Array:
    return jnp.moveaxis(x, 1, -1)


def _to_channel_first(run: Run, x: jax.Array) -> jax.Array:
    return jnp.moveaxis(x, -1, 1)


def _normalise_last(x: jax.Array, gamma: jax.Array, beta: jax.Array, eps: float) -> jax.Array:
    x = x.astype(jnp.float32)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * gamma + beta


def _affine(run: Run, x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
    """``x @ w + b``, a matrix product: in the compute dtype."""
    return run.low(x) @ run.low(w) + run.low(b)


def _dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, **options: Any) -> jax.Array:
    """``jax.nn.dot_product_attention`` (scores accumulated float32 into a float32 softmax, probabilities
    back in the input dtype for p.v). For float16 its own XLA path's steps written out: it asks for the
    ``F16_F16_F32`` dot algorithm, which XLA:CPU does not have; a float32-accumulating dot is the same."""
    if q.dtype != jnp.float16:
        return jax.nn.dot_product_attention(q, k, v, **options)
    logits = jnp.einsum("nthd,nshd->nhts", q, k, preferred_element_type=jnp.float32) * options["scale"]
    if options.get("is_causal"):
        t = logits.shape[-1]
        logits = jnp.where(jnp.tril(jnp.ones((t, t), bool)), logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    return jnp.einsum("nhts,nshd->nthd", probs, v)


# Builders: (path, layer, input sample shape, ctx) -> fn(run, x).


def _dense(path: str, layer: Dense, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    act = ACTIVATIONS[layer.activation]

    def f(run: Run, x: jax.Array) -> jax.Array:
        x = run.low(x) @ run.low(run.var(path, "kernel"))
        return act(x + run.low(run.var(path, "bias")) if layer.bias else x)

    return f


def _conv(path: str, layer: Conv, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    act, padding = ACTIVATIONS[layer.activation], [(p, p) for p in layer.padding]

    def f(run: Run, x: jax.Array) -> jax.Array:
        x = jax.lax.conv_general_dilated(
            run.low(x),
            run.low(run.var(path, "kernel")),
            window_strides=layer.stride,
            padding=padding,
            dimension_numbers=_DIMS[layer.spatial_dims],
        )
        return act(x + run.low(run.var(path, "bias")) if layer.bias else x)

    return f


def _flatten(path: str, layer: Flatten, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    return lambda run, x: x.reshape(x.shape[0], -1)  # reads channel-first: row-major canonical order


def _pool(path: str, layer: Pool, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    window, strides = (1, *layer.window, 1), (1, *layer.stride, 1)
    size, padding = math.prod(layer.window), [(0, 0), *((p, p) for p in layer.pads), (0, 0)]

    def f(run: Run, x: jax.Array) -> jax.Array:
        if layer.kind == "max":  # padding takes the initial value, -inf
            return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, padding)
        return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, "VALID") / size

    return f


def _global_avg_pool(path: str, layer: GlobalAvgPool, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    return lambda run, x: jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))


def _batch_norm(path: str, layer: BatchNorm, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    act, m = ACTIVATIONS[layer.activation], layer.momentum
    mean_key, var_key = variable_name(path, "running_mean"), variable_name(path, "running_var")

    def f(run: Run, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
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
        scale = run.var(path, "gamma") * jax.lax.rsqrt(var + layer.eps)
        return act((x - mean) * scale + run.var(path, "beta"))

    return f


def _layer_norm(path: str, layer: LayerNorm, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    return lambda run, x: _normalise_last(x, run.var(path, "gamma"), run.var(path, "beta"), layer.eps)


def _pad_shortcut(path: str, layer: PadShortcut, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    s, pad = layer.stride, [(0, 0)] * len(shape) + [layer.channel_padding(shape[0])]

    def f(run: Run, x: jax.Array) -> jax.Array:
        return jnp.pad(x[(slice(None), *[slice(None, None, s)] * (x.ndim - 2))], pad)

    return f


def _to_sequence(path: str, layer: ToSequence, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    return lambda run, x: x.reshape(x.shape[0], -1, x.shape[-1])  # reads channel-last: (N, *spatial, C)


def _recurrent(path: str, layer: Recurrent, shape: Shape, ctx: FunctionComposer) -> LayerFn:
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
        def p(kind: str) -> jax.Array:
            return run.low(run.var(path, kind))

        x = run.low(x)
        xs = []
        for d in dirs:
            bias = p(f"b_ih{d}") if gru else p(f"b_ih{d}") + p(f"b_hh{d}")
            xw = jnp.einsum("ntf,gf->tng", x, p(f"w_ih{d}")) + bias
            xs.append(jnp.flip(xw, 0) if d else xw)
        w_hh = jnp.stack([p(f"w_hh{d}").T for d in dirs])  # (D, H, G*H)
        h0 = jnp.zeros((len(dirs), x.shape[0], layer.hidden), x.dtype)
        if gru:
            b_hh = jnp.stack([p(f"b_hh{d}") for d in dirs])[:, None, :]
            h, ys = jax.lax.scan(gru_step(w_hh, b_hh), h0, jnp.stack(xs, axis=1))
        else:
            (h, _), ys = jax.lax.scan(lstm_step(w_hh), (h0, h0), jnp.stack(xs, axis=1))
        if not seq:
            return jnp.concatenate(list(h), axis=-1)  # final states (N, D*H)
        outs = [jnp.flip(ys[:, j], 0) if d else ys[:, j] for j, d in enumerate(dirs)]
        return jnp.swapaxes(jnp.concatenate(outs, axis=-1), 0, 1)  # (T, N, D*H) -> (N, T, D*H)

    return f


def _embedding(path: str, layer: Embedding, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    def f(run: Run, x: jax.Array) -> jax.Array:
        out = jnp.take(run.var(path, "table"), x, axis=0)
        return out + run.var(path, "positions") if layer.positions else out

    return f


def _transformer_block(path: str, layer: TransformerBlock, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    heads, scale = layer.heads, layer.attention_scale(shape[1])

    def f(run: Run, x: jax.Array) -> jax.Array:
        def p(kind: str) -> jax.Array:
            return run.var(path, kind)

        h = _normalise_last(x, p("ln1.gamma"), p("ln1.beta"), LAYER_NORM_EPS)
        q, k, v = (_affine(run, h, p(f"w{c}"), p(f"b{c}")).reshape(*x.shape[:-1], heads, -1) for c in "qkv")
        attn = _dot_product_attention(q, k, v, scale=scale, is_causal=layer.causal)  # (N, T, heads, D / heads)
        attn = attn.reshape(x.shape)
        x = x + _affine(run, attn, p("wo"), p("bo"))
        h = _normalise_last(x, p("ln2.gamma"), p("ln2.beta"), LAYER_NORM_EPS)
        return x + _affine(run, ACTIVATIONS["gelu"](_affine(run, h, p("w1"), p("b1"))), p("w2"), p("b2"))

    return f


def _token_mean_pool(path: str, layer: TokenMeanPool, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    return lambda run, x: jnp.mean(x, axis=1)


def _class_token(path: str, layer: ClassToken, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    def f(run: Run, x: jax.Array) -> jax.Array:
        cls = jnp.broadcast_to(run.var(path, "cls"), (x.shape[0], 1, x.shape[-1]))
        return jnp.concatenate([cls, x], axis=1) + run.var(path, "positions")

    return f


def _first_token(path: str, layer: FirstToken, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    return lambda run, x: x[:, 0]


def _lm_head(path: str, layer: LMHead, shape: Shape, ctx: FunctionComposer) -> LayerFn:
    # the embedding's table (its gradient adds up), a matrix product: in the compute dtype
    return lambda run, x: run.low(x) @ run.low(run.params[TIED_TABLE]).T


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


def build(arch: Architecture, compute: Any = jnp.float32) -> Forward:
    """``forward(params, state, x, training) -> (logits, state after the pass)``, its matrix products in
    ``compute`` (float32 parameters; the logits come in the last layer's dtype)."""
    body = compose(arch, BUILDERS, FunctionComposer(ACTIVATIONS, _to_channel_last, _to_channel_first))

    def forward(params: Params, state: Params, x: jax.Array, training: bool) -> tuple[jax.Array, Params]:
        run = Run(params, state, training, compute)
        logits = body(run, x)
        return logits, state | run.new_state

    return forward
