"""Native torch modules for the architecture spec, and where each canonical variable lives in them.

``build(arch)`` returns an ``nn.Module`` tree that mirrors the spec (one submodule per ``Residual``,
an ``nn.Sequential`` per body and shortcut) and a binding per canonical variable: the module and
attribute holding it, and whether the canonical array is the transpose of the native one (dense
kernels are ``(in, out)``, ``nn.Linear.weight`` is ``(out, in)``). Batch-norm running statistics are
module buffers, so they are bound like parameters but never reach the optimiser.

Shape shared with the other ``*_layers`` modules (see ``workloads.architectures.compose``):
``ACTIVATIONS``, ``BUILDERS`` (one builder ``(path, layer, shape, ctx) -> nn.Module`` per leaf type,
recording its bindings in ``ctx``), the build context ``_Ctx`` and ``build(arch)`` through ``compose``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

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


@dataclass(frozen=True)
class Binding:
    """Where a canonical variable lives: ``getattr(module, attr)``, transposed or not."""

    module: nn.Module
    attr: str
    transposed: bool = False

    def tensor(self) -> torch.Tensor:
        value: torch.Tensor = getattr(self.module, self.attr)
        return value


Bindings = dict[str, Binding]  # canonical kind ("kernel", "running_mean", "w_ih_rev") -> binding

ACTIVATIONS: dict[Activation, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "none": nn.Identity,
}

# The attribute of Linear/Conv/BatchNorm/LayerNorm modules that holds each canonical kind.
_NATIVE = {
    "kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "running_mean": "running_mean",
    "running_var": "running_var",
}


def _with_activation(module: nn.Module, activation: Activation) -> nn.Module:
    return module if activation == "none" else nn.Sequential(module, ACTIVATIONS[activation]())


def _native(module: nn.Module, kinds: tuple[str, ...], transposed: bool = False) -> Bindings:
    """Bindings of ``kinds`` to their attribute of ``module`` (``transposed``: the kernel is its transpose)."""
    return {kind: Binding(module, _NATIVE[kind], transposed and kind == "kernel") for kind in kinds}


class _Ctx(BindingComposer[nn.Module, Binding]):
    """Build context: the bindings recorded so far; pieces chain in ``nn.Sequential``."""

    def sequence(self, parts: list[nn.Module]) -> nn.Module:
        return nn.Sequential(*parts)

    def residual(self, layer: Residual, body: nn.Module, shortcut: nn.Module) -> nn.Module:
        return _Residual(body, shortcut, ACTIVATIONS[layer.activation]())


class _Residual(nn.Module):
    def __init__(self, body: nn.Module, shortcut: nn.Module, act: nn.Module):
        super().__init__()
        self.body, self.shortcut, self.act = body, shortcut, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))  # an empty shortcut Sequential is the identity


class _Lambda(nn.Module):
    """A parameter-free reshaping step (its ``fn`` must be traceable by dynamo)."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str):
        super().__init__()
        self.fn, self.name = fn, name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


class _PadShortcut(nn.Module):
    """ResNet option A: ``x[:, :, ::s, ::s]``, then zero channels before and after."""

    def __init__(self, layer: PadShortcut, shape: Shape):
        super().__init__()
        self.stride, self.spatial_dims = layer.stride, len(shape) - 1
        self.pad = [0, 0] * self.spatial_dims + list(layer.channel_padding(shape[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        if s != 1:
            x = x[(slice(None), slice(None), *[slice(None, None, s)] * self.spatial_dims)]
        return F.pad(x, self.pad)


class _Recurrent(nn.Module):
    """``nn.GRU``/``nn.LSTM`` (the fused cuDNN/oneDNN kernels); all steps or the final states."""

    def __init__(self, layer: Recurrent, features: int):
        super().__init__()
        rnn = nn.GRU if layer.cell == "gru" else nn.LSTM
        self.rnn = rnn(features, layer.hidden, batch_first=True, bidirectional=layer.bidirectional)
        self.sequences = layer.sequences

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if torch.is_autocast_enabled(device):
            # mixed precision: the whole recurrence in the low dtype (autocast leaves nn.GRU float32 and
            # sends nn.LSTM to oneDNN's bfloat16 primitive, which needs AVX-512): weights cast here
            low = torch.get_autocast_dtype(device)
            weights = {k: w.to(low) for k, w in self.rnn.named_parameters()}
            with torch.autocast(device, enabled=False):
                out, state = torch.func.functional_call(self.rnn, weights, (x.to(low),))
        else:
            out, state = self.rnn(x)
        if self.sequences:
            return out
        h = state[0] if isinstance(state, tuple) else state  # (D, N, H); LSTM returns (h, c)
        return h.transpose(0, 1).reshape(x.shape[0], -1)


class _Embedding(nn.Module):
    def __init__(self, layer: Embedding, length: int):
        super().__init__()
        self.table = nn.Embedding(layer.vocab, layer.dim)
        self.positions = nn.Parameter(torch.empty(length, layer.dim)) if layer.positions else None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.table(ids)
        return x if self.positions is None else x + self.positions


class _TransformerBlock(nn.Module):
    """Pre-norm encoder block: separate q/k/v/o projections, fused scaled-dot-product attention, erf GELU."""

    def __init__(self, layer: TransformerBlock, width: int):
        super().__init__()
        self.heads, self.scale, self.causal = layer.heads, layer.attention_scale(width), layer.causal
        self.ln1, self.ln2 = nn.LayerNorm(width, eps=LAYER_NORM_EPS), nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(width, width) for _ in range(4))
        self.w1, self.w2 = nn.Linear(width, layer.mlp_dim), nn.Linear(layer.mlp_dim, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        return x.view(n, t, self.heads, d // self.heads).transpose(1, 2)  # (N, heads, T, d/heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        q, k, v = self._split(self.wq(h)), self._split(self.wk(h)), self._split(self.wv(h))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=self.scale)
        x = x + self.wo(a.transpose(1, 2).reshape(x.shape))
        return x + self.w2(F.gelu(self.w1(self.ln2(x)), approximate="none"))

    def bindings(self) -> Bindings:
        out: Bindings = {}
        for ln in ("ln1", "ln2"):
            out |= {f"{ln}.{k}": b for k, b in _native(getattr(self, ln), ("gamma", "beta")).items()}
        for w in ("q", "k", "v", "o", "1", "2"):
            linear = getattr(self, f"w{w}")
            out |= {f"w{w}": Binding(linear, "weight", transposed=True), f"b{w}": Binding(linear, "bias")}
        return out


class _ClassToken(nn.Module):
    """``concat([cls], x) + positions`` along the positions."""

    def __init__(self, shape: Shape):
        super().__init__()
        t, d = shape
        self.cls, self.positions = nn.Parameter(torch.empty(d)), nn.Parameter(torch.empty(t + 1, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cls.expand(x.shape[0], 1, -1), x], dim=1) + self.positions


class _LMHead(nn.Module):
    """``x @ table^T`` with the embedding's own ``nn.Parameter`` (tied: registered here too, counted once)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.weight = table

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


# Builders: (path, layer, input sample shape, ctx) -> native module; its bindings go to ``ctx``.


def _dense(path: str, layer: Dense, shape: Shape, ctx: _Ctx) -> nn.Module:
    linear = nn.Linear(shape[0], layer.units, bias=layer.bias)
    ctx.bind(path, _native(linear, variable_kinds(layer, shape), transposed=True))
    return _with_activation(linear, layer.activation)


def _conv(path: str, layer: Conv, shape: Shape, ctx: _Ctx) -> nn.Module:
    cls = {1: nn.Conv1d, 2: nn.Conv2d}[layer.spatial_dims]
    conv = cls(shape[0], layer.filters, layer.kernel, layer.stride, layer.padding, bias=layer.bias)  # type: ignore[arg-type]
    ctx.bind(path, _native(conv, variable_kinds(layer, shape)))
    return _with_activation(conv, layer.activation)


def _flatten(path: str, layer: Flatten, shape: Shape, ctx: _Ctx) -> nn.Module:
    return nn.Flatten()


def _pool(path: str, layer: Pool, shape: Shape, ctx: _Ctx) -> nn.Module:
    if layer.kind == "max":  # pads with -inf
        return {1: nn.MaxPool1d, 2: nn.MaxPool2d}[len(layer.window)](layer.window, layer.stride, layer.pads)
    return {1: nn.AvgPool1d, 2: nn.AvgPool2d}[len(layer.window)](layer.window, layer.stride)


def _global_avg_pool(path: str, layer: GlobalAvgPool, shape: Shape, ctx: _Ctx) -> nn.Module:
    dims = tuple(range(2, len(shape) + 1))
    return _Lambda(lambda x: x.mean(dims), f"mean over dims {dims}")


def _batch_norm(path: str, layer: BatchNorm, shape: Shape, ctx: _Ctx) -> nn.Module:
    cls = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d  # (C,) and (C, L) samples: BatchNorm1d
    bn = cls(shape[0], eps=layer.eps, momentum=layer.momentum)
    ctx.bind(path, _native(bn, variable_kinds(layer, shape)))
    return _with_activation(bn, layer.activation)


def _layer_norm(path: str, layer: LayerNorm, shape: Shape, ctx: _Ctx) -> nn.Module:
    ln = nn.LayerNorm(shape[-1], eps=layer.eps)
    ctx.bind(path, _native(ln, variable_kinds(layer, shape)))
    return ln


def _pad_shortcut(path: str, layer: PadShortcut, shape: Shape, ctx: _Ctx) -> nn.Module:
    return _PadShortcut(layer, shape)


def _to_sequence(path: str, layer: ToSequence, shape: Shape, ctx: _Ctx) -> nn.Module:
    return _Lambda(lambda x: x.flatten(2).transpose(1, 2), "(N, C, *spatial) -> (N, prod(spatial), C)")


def _recurrent(path: str, layer: Recurrent, shape: Shape, ctx: _Ctx) -> nn.Module:
    module = _Recurrent(layer, shape[1])
    ctx.bind(
        path,
        {
            f"{kind}{d}": Binding(module.rnn, f"{'weight' if kind[0] == 'w' else 'bias'}_{kind[2:]}_l0{native}")
            for d, native in zip(layer.directions, ("", "_reverse"), strict=False)
            for kind in ("w_ih", "w_hh", "b_ih", "b_hh")
        },
    )
    return module


def _embedding(path: str, layer: Embedding, shape: Shape, ctx: _Ctx) -> nn.Module:
    module = _Embedding(layer, shape[0])
    positions = {"positions": Binding(module, "positions")} if layer.positions else {}
    ctx.bind(path, {"table": Binding(module.table, "weight")} | positions)
    return module


def _transformer_block(path: str, layer: TransformerBlock, shape: Shape, ctx: _Ctx) -> nn.Module:
    block = _TransformerBlock(layer, shape[1])
    ctx.bind(path, block.bindings())
    return block


def _token_mean_pool(path: str, layer: TokenMeanPool, shape: Shape, ctx: _Ctx) -> nn.Module:
    return _Lambda(lambda x: x.mean(1), "mean over positions")


def _class_token(path: str, layer: ClassToken, shape: Shape, ctx: _Ctx) -> nn.Module:
    module = _ClassToken(shape)
    ctx.bind(path, {"cls": Binding(module, "cls"), "positions": Binding(module, "positions")})
    return module


def _first_token(path: str, layer: FirstToken, shape: Shape, ctx: _Ctx) -> nn.Module:
    return _Lambda(lambda x: x[:, 0], "position 0")


def _lm_head(path: str, layer: LMHead, shape: Shape, ctx: _Ctx) -> nn.Module:
    return _LMHead(ctx.bindings[TIED_TABLE].tensor())  # bound when the first layer was built


BUILDERS: dict[type, Builder[nn.Module]] = {
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


def build(arch: Architecture) -> tuple[nn.Module, dict[str, Binding]]:
    """The native model and canonical variable name -> binding, in ``arch.variable_layout()`` order."""
    ctx = _Ctx()
    model = compose(arch, BUILDERS, ctx)
    return model, ctx.in_layout_order(arch, "torch")
