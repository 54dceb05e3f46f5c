"""Framework-neutral layer specs: shapes, canonical variable layout, FLOPs, initial weights.

Worker-side module: numpy and the standard library only.

Canonical layout (every adapter converts to and from it itself):
- image-like tensors are channel-first: a sample is ``(C, L)`` for 1-D and ``(C, H, W)`` for 2-D data;
- sequence tensors are ``(T, features)`` per sample (batch-first, time-major inside a sample);
  token inputs are int32 ids of shape ``(T,)``; an image becomes a sequence of its positions in
  row-major order (``ToSequence``);
- a dense kernel is ``(in, out)`` and its bias ``(out,)``;
- a convolution kernel is ``(out, in, *kernel)`` (OIW / OIHW) and its bias ``(out,)``;
- a recurrent layer follows the cuDNN convention (the one torch, MXNet and Keras ``reset_after``
  implement natively): two biases per gate, ``w_ih (G*H, F)``, ``w_hh (G*H, H)``, ``b_ih (G*H,)``,
  ``b_hh (G*H,)``; gate order GRU ``(r, z, n)``, LSTM ``(i, f, g, o)``; the reverse direction of a
  bidirectional layer has the same names with ``_rev``. GRU:
  ``r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)``, ``z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)``,
  ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
  LSTM: ``i, f, g, o = sigmoid, sigmoid, tanh, sigmoid (W_i* x + b_i* + W_h* h + b_h*)``, ``c' = f c + i g``,
  ``h' = o tanh(c')``. Initial states are zero;
- batch normalisation (torch's convention): training normalises with the batch mean and *biased*
  batch variance over every axis but the channel axis, and updates
  ``running = (1 - momentum) * running + momentum * batch_stat`` with the *unbiased* variance;
  evaluation normalises with the running statistics. ``running_mean``/``running_var`` are state:
  exported and loaded with the weights, never trained.

A variable is named ``"{path}.{kind}"`` where ``path`` is the layer's index (``"3"``) or, inside a
residual block, ``"{index}.body.{j}"`` / ``"{index}.shortcut.{j}"``. A variable belongs to one layer;
the one exception reads another's: a language model's ``LMHead`` multiplies by the first layer's
embedding table (tied weights, ``TIED_TABLE``) and has none of its own.

Outputs: a classifier gives logits ``(classes,)`` per sample and takes one int label; a language model
(last layer ``LMHead``) gives ``(T, vocab)`` and takes a label per position ``(T,)``. The loss is the
mean softmax cross-entropy over every label of the batch (every position of every sample).

FLOPs count 2 per multiply-add of the matrix products (dense, convolution, recurrent gates,
attention projections, scores and weighted sums, the tied output projection); bias adds,
normalisation, activations, pooling and the class token's additions are left out, the convention of
most published FLOP counts. Training costs 3x the forward pass.

The model made of these layers: ``architecture.py``; how the framework layer modules turn it into
native models: ``compose.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, TypeAlias

import numpy as np

Activation = Literal["relu", "tanh", "gelu", "none"]
Init = Literal["auto", "he", "lecun"]
Shape: TypeAlias = tuple[int, ...]
ParamShapes: TypeAlias = dict[str, Shape]
Rng: TypeAlias = np.random.Generator

LAYER_NORM_EPS = 1e-5  # ``LayerNorm``'s default and the two layer norms inside a ``TransformerBlock``


def _expect_rank(layer: object, in_shape: Shape, rank: int) -> None:
    if len(in_shape) != rank:
        raise ValueError(f"{layer} expects a rank-{rank} sample, got shape {in_shape}")


def _normal(rng: Rng, shape: Shape, std: float) -> np.ndarray:
    return (rng.standard_normal(shape) * std).astype(np.float32)


def _kernel_std(init: Init, activation: str, fan_in: int) -> float:
    """He normal (sqrt(2 / fan_in)) before a ReLU or when asked, LeCun normal (sqrt(1 / fan_in)) otherwise."""
    he = init == "he" or (init == "auto" and activation == "relu")
    return math.sqrt((2.0 if he else 1.0) / fan_in)


class _Leaf:
    """Defaults for layers without parameters, state or FLOPs."""

    def param_shapes(self, in_shape: Shape) -> ParamShapes:
        return {}

    def state_shapes(self, in_shape: Shape) -> ParamShapes:
        return {}

    def forward_flops(self, in_shape: Shape) -> int:
        return 0

    def init(self, in_shape: Shape, rng: Rng) -> dict[str, np.ndarray]:
        """Initial trainable parameters and state, drawn from ``rng`` in layout order."""
        return {}


@dataclass(frozen=True)
class Dense(_Leaf):
    """Fully connected layer on a flat feature vector: ``y = act(x @ W + b)``."""

    units: int
    activation: Activation = "relu"
    bias: bool = True
    init_rule: Init = "auto"

    def out_shape(self, in_shape: Shape) -> Shape:
        _expect_rank(self, in_shape, 1)
        return (self.units,)

    def param_shapes(self, in_shape: Shape) -> ParamShapes:
        return {"kernel": (in_shape[0], self.units)} | ({"bias": (self.units,)} if self.bias else {})

    def forward_flops(self, in_shape: Shape) -> int:
        return 2 * in_shape[0] * self.units

    def init(self, in_shape: Shape, rng: Rng) -> dict[str, np.ndarray]:
        shapes = self.param_shapes(in_shape)
        out = {"kernel": _normal(rng, shapes["kernel"], _kernel_std(self.init_rule, self.activation, in_shape[0]))}
        return out | ({"bias": np.zeros((self.units,), np.float32)} if self.bias else {})


@dataclass(frozen=True)
class Conv(_Leaf):
    """Convolution over 1 or 2 spatial dims (by the length of ``kernel``), zero padding."""

    filters: int
    kernel: Shape
    stride: Shape
    padding: Shape
    activation: Activation = "relu"
    bias: bool = True
    init_rule: Init = "auto"

    @property
    def spatial_dims(self) -> int:
        return len(self.kernel)

    def out_shape(self, in_shape: Shape) -> Shape:
        _expect_rank(self, in_shape, 1 + self.spatial_dims)
        spatial = tuple(
            (n + 2 * p - k) // s + 1
            for n, k, s, p in zip(in_shape[1:], self.kernel, self.stride, self.padding, strict=True)
        )
        if min(spatial) < 1:
            raise ValueError(f"{self} turns input {in_shape} into an empty output {spatial}")
        return (self.filters, *spatial)

    def param_shapes(self, in_shape: Shape) -> ParamShapes:
        kernel = {"kernel": (self.filters, in_shape[0], *self.kernel)}
        return kernel | ({"bias": (self.filters,)} if self.bias else {})

    def forward_flops(self, in_shape: Shape) -> int:
        out = self.out_shape(in_shape)
        return 2 * in_shape[0] * math.prod(self.kernel) * math.prod(out[1:]) * self.filters

    def init(self, in_shape: Shape, rng: Rng) -> dict[str, np.ndarray]:
        shape = (self.filters, in_shape[0], *self.kernel)
        std = _kernel_std(self.init_rule, self.activation, math.prod(shape[1:]))
        out = {"kernel": _normal(rng, shape, std)}
        return out | ({"bias": np.zeros((self.filters,), np.float32)} if self.bias else {})


@dataclass(frozen=True)
class Flatten(_Leaf):
    """Channel-first flatten: ``(C, *spatial) -> (C * prod(spatial),)`` (row-major)."""

    def out_shape(self, in_shape: Shape) -> Shape:
        return (math.prod(in_shape),)


@dataclass(frozen=True)
class Pool(_Leaf):
    """Max or average pooling over 1 or 2 spatial dims (floor output size: ``(n + 2p - w) // s + 1``).

    ``padding`` per spatial dim (``()``: none) is for max pooling only; it pads with -inf, so a padded
    position is never the maximum (at most half a window, so that no window is padding alone).
    Average pooling with padding is not in the contract (frameworks disagree on the divisor).
    """

    kind: Literal["max", "avg"]
    window: Shape
    stride: Shape
    padding: Shape = ()

    @property
    def pads(self) -> Shape:
        """The padding of every spatial dim (zeros when ``padding`` is ``()``)."""
        return self.padding or (0,) * len(self.window)

    def out_shape(self, in_shape: Shape) -> Shape:
        _expect_rank(self, in_shape, 1 + len(self.window))
        if len(self.pads) != len(self.window) or any(2 * p > w for p, w in zip(self.pads, self.window, strict=True)):
            raise ValueError(f"{self}: padding must give each spatial dim at most half its window")
        if self.kind == "avg" and any(self.pads):
            raise ValueError(f"{self}: average pooling with padding is not in the contract")
        spatial = tuple(
            (n + 2 * p - w) // s + 1
            for n, w, s, p in zip(in_shape[1:], self.window, self.stride, self.pads, strict=True)
        )
        if min(spatial) < 1:
            raise ValueError(f"{self} turns input {in_shape} into an empty output {spatial}")
        return (in_shape[0], *spatial)


@dataclass(frozen=True)
class GlobalAvgPool(_Leaf):
    """Mean over the spatial dims of a channel-first sample: ``(C, *spatial) -> (C,)``."""

    def out_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) < 2:
            raise ValueError(f"{self} expects a channel-first sample with spatial dims, got {in_shape}")
        return (in_shape[0],)


@dataclass(frozen=True)
class BatchNorm(_Leaf):
    """Batch normalisation over axis 0 of the sample (channels, or features of a flat vector), then ``act``.

    Parameters ``gamma``/``beta``; state ``running_mean``/``running_var`` (see the module docstring).
    """

    activation: Activation = "none"
    eps: float = 1e-5
    momentum: float = 0.1

    def out_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def param_shapes(self, in_shape: Shape) -> ParamShapes:
        return {"gamma": (in_shape[0],), "beta": (in_shape[0],)}

    def state_shapes(self, in_shape: Shape) -> ParamShapes:
        return {"running_mean": (in_shape[0],), "running_var": (in_shape[0],)}

    def init(self, in_shape: Shape, rng: Rng) -> dict[str, np.ndarray]:
        c = in_shape[0]
        ones, zeros = np.ones((c,), np.float32), np.zeros((c,), np.float32)
        return {"gamma": ones, "beta": zeros, "running_mean": zeros.copy(), "running_var": ones.copy()}


@dataclass(frozen=True)
class LayerNorm(_Leaf):
    """Normalisation over the last axis of each position (biased variance), scale ``gamma``, shift ``beta``."""

    eps: float = LAYER_NORM_EPS

    def out_shape(self, in_shape: Shape) -> Shape:
        return in_shape

    def param_shapes(self, in_shape: Shape) -> ParamShapes:
        return {"gamma": (in_shape[-1],), "beta": (in_shape[-1],)}

    def init(self, in_shape: Shape, rng: Rng) -> dict[str, np.ndarray]:
        d = in_shape[-1]
        return {"gamma": np.ones((d,), np.float32), "beta": np.zeros((d,), np.float32)}


@dataclass(frozen=True)
class PadShortcut(_Leaf):
    """The parameter-free "option A" shortcut of He et al. (2016) for CIFAR ResNets.

    Subsample every spatial dim by ``stride`` (``x[:, ::s, ::s]``), then zero-pad the channels to
    ``filters``: ``(filters - C) // 2`` zero channels before, the rest after.
    """

    filters: int
    stride: int

    def out_shape(self, in_shape: Shape) -> Shape:
        if len(in_shape) < 2 or self.filters < in_shape[0]:
            raise ValueError(f"{self} cannot map {in_shape}")
        return (self.filters, *(-(-n // self.stride) for n in in_shape[1:]))

    def channel_padding(self, channels: int) -> tuple[int, int]:
        """Zero channels added ``(before, after)`` the ``channels`` of the input."""
        before = (self.filters - channels) // 2
        return before, self.filters - channels - before


@dataclass(frozen=True)
class ToSequence(_Leaf):
    """Channel-first sample to a sequence: ``(C, *spatial) -> (prod(spatial), C)``, the positions in
    row-major order of the spatial dims (``(C, L) -> (L, C)``; ``(C, H, W) -> (H * W, C)``).

    ``spatial_dims`` is the rank it takes (1: a 1-D signal, as the recurrent MNIST-1D models read it;
    2: an image's patches, as a vision transformer reads them), so a model never silently turns an
    image into a sequence of thousands of pixels."""

    spatial_dims: int = 1

    def out_shape(self, in_shape: Shape) -> Shape:
        _expect_rank(self, in_shape, 1 + self.spatial_dims)
        return (math.prod(in_shape[1:]), in_shape[0])


@dataclass(frozen=True)
class Recurrent(_Leaf):
    """GRU or LSTM over a ``(T, F)`` sequence (cuDNN convention, see the module docstring).

    ``sequences=True`` returns every step's output ``(T, D*H)`` (forward then reverse features);
    otherwise the final state of each direction ``(D*H,)`` (the reverse direction's final state is
    the one after it has read step 0).
    """

    cell: Literal["gru", "lstm"]
    hidden: int
    bidirectional: bool = False
    sequences: bool = True

    @property
    def gates(self) -> int:
        return 3 if self.cell == "gru" else 4

    @property
    def directions(self) -> tuple[str, ...]:
        return ("", "_rev") if self.bidirectional else ("",)

    def out_shape(self, in_shape: Shape) -> Shape:
        _expect_rank(self, in_shape, 2)
        width = len(self.directions) * self.hidden
        return (in_shape[0], width) if self.sequences else (width,)

    def param_shapes(self, in_shape: Shape) -> ParamShapes:
        gh, f = self.gates * self.hidden, in_shape[1]
        shapes: ParamShapes = {}
        for d in self.directions:
            shapes |= {f"w_ih{d}": (gh, f), f"w_hh{d}": (gh, self.hidden), f"b_ih{d}": (gh,), f"b_hh{d}": (gh,)}
        return shapes

    def forward_flops(self, in_shape: Shape) -> int:
        t, f = in_shape
        return len(self.directions) * t * 2 * self.gates * self.hidden * (f + self.hidden)

    def init(self, in_shape: Shape, rng: Rng) -> dict[str, np.ndarray]:
        """Every weight and bias uniform in ``±1/sqrt(hidden)`` (torch's and Keras-cuDNN's default range)."""
        k = 1.0 / math.sqrt(self.hidden)
        return {
            name: rng.uniform(-k, k, size=shape).astype(np.float32)
            for name, shape in self.param_shapes(in_shape).items()
        }


@dataclass(frozen=True)
class Embedding(_Leaf):
    """Token ids ``(T,)`` to vectors ``(T, dim)``: ``table[ids]``, plus learned ``positions (T, dim)`` if asked.

    Both are initialised N(0, 1/dim).
    """

    vocab: int
    dim: int
    positions: bool = False

    def out_shape(self, in_shape: Shape) -> Shape:
        _expect_rank(self, in_shape, 1)
        return (in_shape[0], self.dim)

    def param_shapes(self, in_shape: Shape) -> ParamShapes:
        shapes: ParamShapes = {"table": (self.vocab, self.dim)}
        return shapes | ({"positions": (in_shape[0], self.dim)} if self.positions else {})

    def init(self, in_shape: Shape, rng: Rng) -> dict[str, np.ndarray]:
        std = 1.0 / math.sqrt(self.dim)
        return {name: _normal(rng, shape, std) for name, shape in self.param_shapes(in_shape).items()}


@dataclass(frozen=True)
class TransformerBlock(_Leaf):
    """Pre-norm transformer block on ``(T, D)``: ``x += MHA(LN1(x))``; ``x += W2 gelu(W1 LN2(x) + b1) + b2``.

    Attention: ``q, k, v = x Wq + bq, x Wk + bk, x Wv + bv`` split into ``heads`` contiguous slices of
    ``D / heads`` features; ``softmax(q k^T / sqrt(D / heads)) v`` per head (no dropout); heads
    concatenated, then ``Wo, bo``. No mask (an encoder block), or, with ``causal``, position ``i``
    attends to positions ``j <= i`` only: the scores of later positions are left out of the softmax
    (a decoder block). The FLOPs count every one of the ``T * T`` scores either way (what a fused
    kernel computes, and the usual published count). GELU is the exact (erf) form; LayerNorm eps is
    ``LAYER_NORM_EPS``. Kernels are ``(in, out)``, LeCun normal; biases zero; LayerNorm gamma one, beta zero.
    """

    heads: int
    mlp_dim: int
    causal: bool = False

    def out_shape(self, in_shape: Shape) -> Shape:
        _expect_rank(self, in_shape, 2)
        if in_shape[1] % self.heads:
            raise ValueError(f"{self}: model width {in_shape[1]} is not divisible by {self.heads} heads")
        return in_shape

    def attention_scale(self, width: int) -> float:
        """The factor on the attention scores: ``1 / sqrt(D / heads)`` for model width ``D``."""
        return 1.0 / math.sqrt(width // self.heads)

    def param_shapes(self, in_shape: Shape) -> ParamShapes:
        d, m = in_shape[1], self.mlp_dim
        shapes: ParamShapes = {"ln1.gamma": (d,), "ln1.beta": (d,)}
        for w in ("q", "k", "v", "o"):
            shapes |= {f"w{w}": (d, d), f"b{w}": (d,)}
        return shapes | {"ln2.gamma": (d,), "ln2.beta": (d,), "w1": (d, m), "b1": (m,), "w2": (m, d), "b2": (d,)}

    def forward_flops(self, in_shape: Shape) -> int:
        t, d = in_shape
        projections = 2 * t * d * d * 4
        attention = 2 * 2 * t * t * d
        mlp = 2 * 2 * t * d * self.mlp_dim
        return projections + attention + mlp

    def init(self, in_shape: Shape, rng: Rng) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for name, shape in self.param_shapes(in_shape).items():
            if name.endswith("gamma"):
                out[name] = np.ones(shape, np.float32)
            elif len(shape) == 2:
                out[name] = _normal(rng, shape, 1.0 / math.sqrt(shape[0]))
            else:
                out[name] = np.zeros(shape, np.float32)
        return out


@dataclass(frozen=True)
class TokenMeanPool(_Leaf):
    """Mean over the positions of a sequence: ``(T, D) -> (D,)``."""

    def out_shape(self, in_shape: Shape) -> Shape:
        _expect_rank(self, in_shape, 2)
        return (in_shape[1],)


@dataclass(frozen=True)
class ClassToken(_Leaf):
    """ViT's class token: ``(T, D) -> (T + 1, D)``: ``concat([cls], x) + positions``.

    A learned vector ``cls (D,)`` goes in front of the sequence (position 0), then learned
    ``positions (T + 1, D)`` are added; both are initialised N(0, 1/D), like :class:`Embedding`.
    """

    def out_shape(self, in_shape: Shape) -> Shape:
        _expect_rank(self, in_shape, 2)
        return (in_shape[0] + 1, in_shape[1])

    def param_shapes(self, in_shape: Shape) -> ParamShapes:
        t, d = in_shape
        return {"cls": (d,), "positions": (t + 1, d)}

    def init(self, in_shape: Shape, rng: Rng) -> dict[str, np.ndarray]:
        std = 1.0 / math.sqrt(in_shape[1])
        return {name: _normal(rng, shape, std) for name, shape in self.param_shapes(in_shape).items()}


@dataclass(frozen=True)
class FirstToken(_Leaf):
    """The vector at position 0: ``(T, D) -> (D,)`` (the class token's readout)."""

    def out_shape(self, in_shape: Shape) -> Shape:
        _expect_rank(self, in_shape, 2)
        return (in_shape[1],)


TIED_TABLE = "0.table"  # the canonical variable an ``LMHead`` reads: the first layer's embedding table


@dataclass(frozen=True)
class LMHead(_Leaf):
    """A language model's output with tied weights: ``(T, D) -> (T, vocab)``, ``logits = x @ table^T``.

    ``table`` is the ``(vocab, D)`` table of the model's first layer, an :class:`Embedding` (the
    variable ``TIED_TABLE``); the head has no parameters of its own and no bias. Its gradient adds to
    the embedding's.
    """

    vocab: int

    def out_shape(self, in_shape: Shape) -> Shape:
        _expect_rank(self, in_shape, 2)
        return (in_shape[0], self.vocab)

    def forward_flops(self, in_shape: Shape) -> int:
        t, d = in_shape
        return 2 * t * d * self.vocab


@dataclass(frozen=True)
class Residual:
    """``act(body(x) + shortcut(x))``; an empty ``shortcut`` is the identity."""

    body: tuple[Layer, ...]
    shortcut: tuple[Layer, ...] = ()
    activation: Activation = "relu"

    def out_shape(self, in_shape: Shape) -> Shape:
        body = chain_shapes(self.body, in_shape)[-1]
        short = chain_shapes(self.shortcut, in_shape)[-1]
        if body != short:
            raise ValueError(f"residual body gives {body} but the shortcut gives {short}")
        return body


Leaf: TypeAlias = (
    Dense
    | Conv
    | Flatten
    | Pool
    | GlobalAvgPool
    | BatchNorm
    | LayerNorm
    | PadShortcut
    | ToSequence
    | Recurrent
    | Embedding
    | TransformerBlock
    | TokenMeanPool
    | ClassToken
    | FirstToken
    | LMHead
)
Layer: TypeAlias = Leaf | Residual


def chain_shapes(layers: tuple[Layer, ...], in_shape: Shape) -> list[Shape]:
    """Input shape of each of ``layers`` in turn, then the output shape."""
    shapes = [in_shape]
    for layer in layers:
        shapes.append(layer.out_shape(shapes[-1]))
    return shapes


def walk(layers: tuple[Layer, ...], in_shape: Shape, prefix: str = "") -> Iterator[tuple[str, Leaf, Shape]]:
    """Every leaf layer with its path (``"3"``, ``"4.body.1"``) and input shape, in layout order."""
    for i, (layer, shape) in enumerate(zip(layers, chain_shapes(layers, in_shape), strict=False)):
        path = f"{prefix}{i}"
        if isinstance(layer, Residual):
            yield from walk(layer.body, shape, f"{path}.body.")
            yield from walk(layer.shortcut, shape, f"{path}.shortcut.")
        else:
            yield path, layer, shape


def variable_name(path: str, kind: str) -> str:
    """The canonical variable name of a layer's ``kind`` (``"4.body.1"``, ``"gamma"`` -> ``"4.body.1.gamma"``)."""
    return f"{path}.{kind}"


def variable_kinds(layer: Leaf, in_shape: Shape) -> tuple[str, ...]:
    """A leaf's canonical variable kinds, parameters then state (``("gamma", "beta", "running_mean", ...)``)."""
    return (*layer.param_shapes(in_shape), *layer.state_shapes(in_shape))
