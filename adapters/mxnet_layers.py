"""Gluon blocks for the architecture spec, and where each canonical variable lives in them.

``build(arch)`` returns a ``HybridSequential`` that mirrors the spec (a ``_Residual`` block per
residual, a ``HybridSequential`` per body and shortcut) and a binding per canonical variable: the
Gluon parameter holding it, whether the canonical array is its transpose (dense kernels are
``(in, out)``, Gluon's ``Dense.weight`` is ``(out, in)``) and, for the fused attention projection,
which rows of the parameter it is. Every op is a native MXNet operator (``FullyConnected``,
``Convolution``, ``Pooling``, ``BatchNorm``, ``LayerNorm``, the fused ``RNN`` kernel, ``Embedding``,
``batch_dot``/``softmax``), so a hybridized net is one static graph.

Conventions checked numerically against the canonical contract (``workloads/architectures/reference.py``):
Gluon's recurrent layers use the cuDNN layout (``l0_i2h_weight (G*H, F)`` ... ``r0_*`` for the reverse
direction), gate orders GRU ``(r, z, n)`` with the reset gate applied after ``W_hn h + b_hn``, LSTM
``(i, f, g, o)``; ``LeakyReLU(act_type="gelu")`` is the exact erf form. Gluon's ``BatchNorm``
momentum is the weight of the *old* running value (``1 - momentum`` of the contract) and its running
variance update uses the *biased* batch variance; the adapter corrects for that (see
:class:`adapters.mxnet_adapter.MxnetAdapter`).

Shape shared with the other ``*_layers`` modules (see ``workloads.architectures.compose``):
``ACTIVATIONS``, ``BUILDERS`` (one builder ``(path, layer, shape, ctx) -> block`` per leaf type,
recording its bindings in ``ctx``), the build context ``_Ctx`` and ``build(arch)`` through ``compose``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from mxnet import gluon
from mxnet.gluon import nn
from mxnet.gluon.contrib.nn import Identity

from workloads.architectures import Architecture
from workloads.architectures.compose import BindingComposer, Builder, compose
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
    variable_kinds,
)

Block = Any  # gluon.HybridBlock (MXNet ships no type hints)


@dataclass(frozen=True)
class Binding:
    """Where a canonical variable lives: ``param`` (or rows ``rows`` of it), transposed or not."""

    param: Any  # gluon.Parameter
    transposed: bool = False
    rows: slice | None = None  # part of a fused parameter (the q/k/v projection)


Bindings = dict[str, Binding]  # canonical kind ("kernel", "running_var", "w_ih_rev") -> binding

ACTIVATIONS: dict[Activation, Callable[[], Block]] = {
    "relu": partial(nn.Activation, "relu"),
    "tanh": partial(nn.Activation, "tanh"),
    "gelu": nn.GELU,  # LeakyReLU(act_type="gelu"), the erf form
    "none": Identity,
}

# The parameter of Dense/Conv/BatchNorm/LayerNorm blocks that holds each canonical kind.
_NATIVE = {
    "kernel": "weight",
    "bias": "bias",
    "gamma": "gamma",
    "beta": "beta",
    "running_mean": "running_mean",
    "running_var": "running_var",
}


def _sequential(*blocks: Block) -> Block:
    seq = nn.HybridSequential()
    seq.add(*blocks)
    return seq


def _with_activation(block: Block, activation: Activation) -> Block:
    return block if activation == "none" else _sequential(block, ACTIVATIONS[activation]())


def _native(block: Block, kinds: tuple[str, ...], transposed: bool = False) -> Bindings:
    """Bindings of ``kinds`` to their parameter of ``block`` (``transposed``: the kernel is its transpose)."""
    return {kind: Binding(getattr(block, _NATIVE[kind]), transposed and kind == "kernel") for kind in kinds}


class _Ctx(BindingComposer[Block, Binding]):
    """Build context: the bindings recorded so far; pieces chain in ``HybridSequential``."""

    def sequence(self, parts: list[Block]) -> Block:
        return _sequential(*parts)

    def residual(self, layer: Residual, body: Block, shortcut: Block) -> Block:
        return _Residual(body, shortcut, ACTIVATIONS[layer.activation]())


class _Residual(gluon.HybridBlock):  # type: ignore[misc]
    """``act(body(x) + shortcut(x))``; an empty shortcut ``HybridSequential`` is the identity."""

    def __init__(self, body: Block, shortcut: Block, act: Block):
        super().__init__()
        self.body, self.shortcut, self.act = body, shortcut, act

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        return self.act(self.body(x) + self.shortcut(x))


class _PadShortcut(gluon.HybridBlock):  # type: ignore[misc]
    """Option-A shortcut: strided subsampling, then zero channels before and after."""

    def __init__(self, layer: PadShortcut, shape: Shape):
        super().__init__()
        self._ndim, self._stride = len(shape) + 1, layer.stride
        self._pad = layer.channel_padding(shape[0])

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        ends = (None,) * self._ndim
        x = F.slice(x, begin=ends, end=ends, step=(1, 1) + (self._stride,) * (self._ndim - 2))
        zero = F.zeros_like(F.slice_axis(x, axis=1, begin=0, end=1))
        before, after = ([F.broadcast_axis(zero, axis=1, size=n)] if n else [] for n in self._pad)
        return F.concat(*before, x, *after, dim=1)


class _FinalStates(gluon.HybridBlock):  # type: ignore[misc]
    """A recurrent layer's final state per direction, ``(N, D*H)``, sliced from its ``(N, T, D*H)`` outputs."""

    def __init__(self, rnn: Block, hidden: int, bidirectional: bool):
        super().__init__()
        self.rnn, self._hidden, self._bidirectional = rnn, hidden, bidirectional

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        out = self.rnn(x)
        last = F.slice_axis(out, axis=1, begin=-1, end=None)  # forward direction: after step T-1
        if self._bidirectional:  # reverse direction: after step 0
            forward = F.slice_axis(last, axis=2, begin=0, end=self._hidden)
            reverse = F.slice_axis(F.slice_axis(out, axis=1, begin=0, end=1), axis=2, begin=self._hidden, end=None)
            last = F.concat(forward, reverse, dim=2)
        return F.reshape(last, shape=(0, -1))


class _PositionalEmbedding(gluon.HybridBlock):  # type: ignore[misc]
    """``table[ids] + positions``."""

    def __init__(self, layer: Embedding, length: int):
        super().__init__()
        with self.name_scope():
            self.table = nn.Embedding(layer.vocab, layer.dim)
            self.positions = self.params.get("positions", shape=(length, layer.dim))

    def hybrid_forward(self, F: Any, x: Any, positions: Any) -> Any:
        return F.broadcast_add(self.table(x), F.expand_dims(positions, axis=0))


class _TransformerBlock(gluon.HybridBlock):  # type: ignore[misc]
    """Pre-norm transformer block; q/k/v are one fused ``Dense(3D)``, heads contiguous slices of D; a
    causal block sets the scores of later positions to -inf (a mask made in the graph from ``arange``)."""

    def __init__(self, layer: TransformerBlock, shape: Shape):
        super().__init__()
        length, width = shape
        self._heads, self._scale = layer.heads, layer.attention_scale(width)
        self._causal_length = length if layer.causal else 0
        with self.name_scope():
            self.ln1 = nn.LayerNorm(epsilon=LAYER_NORM_EPS, in_channels=width)
            self.qkv = nn.Dense(3 * width, flatten=False, in_units=width)
            self.out = nn.Dense(width, flatten=False, in_units=width)
            self.ln2 = nn.LayerNorm(epsilon=LAYER_NORM_EPS, in_channels=width)
            self.fc1 = nn.Dense(layer.mlp_dim, flatten=False, in_units=width)
            self.fc2 = nn.Dense(width, flatten=False, in_units=layer.mlp_dim)

    def _split_heads(self, F: Any, t: Any) -> Any:  # (N, T, D) -> (N * heads, T, D / heads)
        t = F.transpose(F.reshape(t, shape=(0, 0, self._heads, -1)), axes=(0, 2, 1, 3))
        return F.reshape(t, shape=(-3, -2))

    def hybrid_forward(self, F: Any, x: Any) -> Any:
        q, k, v = (self._split_heads(F, t) for t in F.split(self.qkv(self.ln1(x)), num_outputs=3, axis=-1))
        scores = F.batch_dot(q * self._scale, k, transpose_b=True)  # (N * heads, T, T)
        if self._causal_length:  # query i sees keys j <= i; exp(-inf) = 0 leaves the later ones out
            positions = F.arange(self._causal_length)
            later = F.broadcast_greater(F.reshape(positions, shape=(1, -1)), F.reshape(positions, shape=(-1, 1)))
            later = F.broadcast_like(F.expand_dims(later, axis=0), scores)
            scores = F.where(later, F.ones_like(scores) * -np.inf, scores)
        scores = F.softmax(scores, axis=-1)
        att = F.reshape(F.batch_dot(scores, v), shape=(-4, -1, self._heads, -2))  # (N, heads, T, D / heads)
        x = x + self.out(F.reshape(F.transpose(att, axes=(0, 2, 1, 3)), shape=(0, 0, -1)))
        return x + self.fc2(F.LeakyReLU(self.fc1(self.ln2(x)), act_type="gelu"))


class _ClassToken(gluon.HybridBlock):  # type: ignore[misc]
    """``concat([cls], x) + positions`` along the positions."""

    def __init__(self, shape: Shape):
        super().__init__()
        t, d = shape
        with self.name_scope():
            self.cls = self.params.get("cls", shape=(d,))
            self.positions = self.params.get("positions", shape=(t + 1, d))

    def hybrid_forward(self, F: Any, x: Any, cls: Any, positions: Any) -> Any:
        first = F.broadcast_like(F.reshape(cls, shape=(1, 1, -1)), F.slice_axis(x, axis=1, begin=0, end=1))
        return F.broadcast_add(F.concat(first, x, dim=1), F.expand_dims(positions, axis=0))


class _LMHead(gluon.HybridBlock):  # type: ignore[misc]
    """``x @ table^T`` with the embedding's own Gluon parameter (tied: one variable in the graph).

    Assigned as an attribute, the parameter reaches ``hybrid_forward`` but stays out of this block's
    ``params``, so ``collect_params`` lists it once (in the embedding).
    """

    def __init__(self, table: Any, vocab: int):
        super().__init__()
        self.table, self._vocab = table, vocab

    def hybrid_forward(self, F: Any, x: Any, table: Any) -> Any:
        return F.FullyConnected(x, table, no_bias=True, num_hidden=self._vocab, flatten=False)


# Builders: (path, layer, input sample shape, ctx) -> native block; its bindings go to ``ctx``.


def _dense(path: str, layer: Dense, shape: Shape, ctx: _Ctx) -> Block:
    block = nn.Dense(layer.units, use_bias=layer.bias, flatten=False, in_units=shape[0])
    ctx.bind(path, _native(block, variable_kinds(layer, shape), transposed=True))
    return _with_activation(block, layer.activation)


def _conv(path: str, layer: Conv, shape: Shape, ctx: _Ctx) -> Block:
    conv = {1: nn.Conv1D, 2: nn.Conv2D}[layer.spatial_dims]
    block = conv(
        layer.filters, layer.kernel, layer.stride, layer.padding, use_bias=layer.bias, in_channels=shape[0],
        layout={1: "NCW", 2: "NCHW"}[layer.spatial_dims],
    )  # fmt: skip
    ctx.bind(path, _native(block, variable_kinds(layer, shape)))
    return _with_activation(block, layer.activation)


def _flatten(path: str, layer: Flatten, shape: Shape, ctx: _Ctx) -> Block:
    return nn.Flatten()


def _pool(path: str, layer: Pool, shape: Shape, ctx: _Ctx) -> Block:
    pools = {"max": (nn.MaxPool1D, nn.MaxPool2D), "avg": (nn.AvgPool1D, nn.AvgPool2D)}[layer.kind]
    return pools[len(layer.window) - 1](layer.window, layer.stride, layer.pads)  # max: padding never selected


def _global_avg_pool(path: str, layer: GlobalAvgPool, shape: Shape, ctx: _Ctx) -> Block:
    pool = {2: nn.GlobalAvgPool1D, 3: nn.GlobalAvgPool2D}[len(shape)]
    return _sequential(pool(), nn.Flatten())


def _batch_norm(path: str, layer: BatchNorm, shape: Shape, ctx: _Ctx) -> Block:
    block = nn.BatchNorm(axis=1, momentum=1.0 - layer.momentum, epsilon=layer.eps, in_channels=shape[0])
    ctx.bind(path, _native(block, variable_kinds(layer, shape)))
    return _with_activation(block, layer.activation)


def _layer_norm(path: str, layer: LayerNorm, shape: Shape, ctx: _Ctx) -> Block:
    block = nn.LayerNorm(axis=-1, epsilon=layer.eps, in_channels=shape[-1])
    ctx.bind(path, _native(block, variable_kinds(layer, shape)))
    return block


def _pad_shortcut(path: str, layer: PadShortcut, shape: Shape, ctx: _Ctx) -> Block:
    return _PadShortcut(layer, shape)


def _to_sequence(path: str, layer: ToSequence, shape: Shape, ctx: _Ctx) -> Block:
    return nn.HybridLambda(lambda F, x: F.swapaxes(F.reshape(x, shape=(0, 0, -1)), 1, 2))


_RNN_NAMES = (("w_ih", "i2h_weight"), ("w_hh", "h2h_weight"), ("b_ih", "i2h_bias"), ("b_hh", "h2h_bias"))


def _recurrent(path: str, layer: Recurrent, shape: Shape, ctx: _Ctx) -> Block:
    cell = {"gru": gluon.rnn.GRU, "lstm": gluon.rnn.LSTM}[layer.cell]
    rnn = cell(layer.hidden, layout="NTC", bidirectional=layer.bidirectional, input_size=shape[1])
    ctx.bind(
        path,
        {
            f"{canonical}{suffix}": Binding(getattr(rnn, f"{prefix}0_{native}"))
            for suffix, prefix in zip(layer.directions, "lr", strict=False)
            for canonical, native in _RNN_NAMES
        },
    )
    return rnn if layer.sequences else _FinalStates(rnn, layer.hidden, layer.bidirectional)


def _embedding(path: str, layer: Embedding, shape: Shape, ctx: _Ctx) -> Block:
    if not layer.positions:
        block = nn.Embedding(layer.vocab, layer.dim)
        ctx.bind(path, {"table": Binding(block.weight)})
        return block
    pos = _PositionalEmbedding(layer, shape[0])
    ctx.bind(path, {"table": Binding(pos.table.weight), "positions": Binding(pos.positions)})
    return pos


def _transformer_block(path: str, layer: TransformerBlock, shape: Shape, ctx: _Ctx) -> Block:
    block, d = _TransformerBlock(layer, shape), shape[1]
    bindings: Bindings = {}
    for j, w in enumerate("qkv"):
        rows = slice(j * d, (j + 1) * d)
        bindings |= {f"w{w}": Binding(block.qkv.weight, True, rows), f"b{w}": Binding(block.qkv.bias, rows=rows)}
    for prefix, sub in (("ln1.", block.ln1), ("ln2.", block.ln2)):
        bindings |= {prefix + k: v for k, v in _native(sub, ("gamma", "beta")).items()}
    for weight, bias, sub in (("wo", "bo", block.out), ("w1", "b1", block.fc1), ("w2", "b2", block.fc2)):
        bindings |= {weight: Binding(sub.weight, True), bias: Binding(sub.bias)}
    ctx.bind(path, bindings)
    return block


def _token_mean_pool(path: str, layer: TokenMeanPool, shape: Shape, ctx: _Ctx) -> Block:
    return nn.HybridLambda(lambda F, x: F.mean(x, axis=1))


def _class_token(path: str, layer: ClassToken, shape: Shape, ctx: _Ctx) -> Block:
    block = _ClassToken(shape)
    ctx.bind(path, {"cls": Binding(block.cls), "positions": Binding(block.positions)})
    return block


def _first_token(path: str, layer: FirstToken, shape: Shape, ctx: _Ctx) -> Block:
    return nn.HybridLambda(lambda F, x: F.reshape(F.slice_axis(x, axis=1, begin=0, end=1), shape=(0, -1)))


def _lm_head(path: str, layer: LMHead, shape: Shape, ctx: _Ctx) -> Block:
    return _LMHead(ctx.bindings[TIED_TABLE].param, layer.vocab)  # bound when the first layer was built


BUILDERS: dict[type, Builder[Block]] = {
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


def build(arch: Architecture) -> tuple[Block, Bindings]:
    """The Gluon net and canonical variable name -> binding (``"4.body.1.gamma"``), in layout order."""
    ctx = _Ctx()
    net = compose(arch, BUILDERS, ctx)
    return net, ctx.in_layout_order(arch, "mxnet")


def to_native(bindings: Bindings, variables: dict[str, np.ndarray]) -> list[tuple[Any, np.ndarray]]:
    """Each bound Gluon parameter with its value assembled from the canonical variables."""
    native: dict[int, tuple[Any, np.ndarray]] = {}
    for name, b in bindings.items():
        value = variables[name].T if b.transposed else variables[name]
        if b.rows is None:
            native[id(b.param)] = (b.param, np.ascontiguousarray(value, np.float32))
        else:
            _, full = native.setdefault(id(b.param), (b.param, np.empty(b.param.shape, np.float32)))
            full[b.rows] = value
    return list(native.values())


def to_canonical(bindings: Bindings, values: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    """Canonical variables from the native values of the bound parameters (keyed by ``id(param)``)."""
    out: dict[str, np.ndarray] = {}
    for name, b in bindings.items():
        value = values[id(b.param)]
        value = value[b.rows] if b.rows is not None else value
        out[name] = np.ascontiguousarray(value.T if b.transposed else value, np.float32)
    return out
