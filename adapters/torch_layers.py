"""Native torch modules for the architecture spec, and where each canonical variable lives in them.

``build(arch)`` returns an ``nn.Module`` tree that mirrors the spec (one submodule per ``Residual``,
an ``nn.Sequential`` per body and shortcut) and a binding per canonical variable: the module and
attribute holding it, and whether the canonical array is the transpose of the native one (dense
kernels are ``(in, out)``, ``nn.Linear.weight`` is ``(out, in)``). Batch-norm running statistics are
module buffers, so they are bound like parameters but never reach the optimiser.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workloads.architectures import Architecture, Layer
from workloads.architectures.layers import (
    BatchNorm,
    Conv,
    Dense,
    Embedding,
    Flatten,
    GlobalAvgPool,
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


_ACT: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def _with_activation(module: nn.Module, activation: str) -> nn.Module:
    return module if activation == "none" else nn.Sequential(module, _ACT[activation]())


def _affine(module: nn.Module, weight: str = "kernel", transposed: bool = False) -> Bindings:
    """Weight and (when the module has one) bias bindings of a Linear/Conv/norm module."""
    out = {weight: Binding(module, "weight", transposed)}
    bias = "beta" if weight == "gamma" else "bias"
    return out | ({bias: Binding(module, "bias")} if getattr(module, "bias", None) is not None else {})


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
    """ResNet option A: ``x[:, :, ::s, ::s]``, zero channels ``(filters - C) // 2`` before, the rest after."""

    def __init__(self, channels: int, filters: int, stride: int, spatial_dims: int):
        super().__init__()
        self.stride, self.spatial_dims = stride, spatial_dims
        before = (filters - channels) // 2
        self.pad = [0, 0] * spatial_dims + [before, filters - channels - before]

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
        self.heads = layer.heads
        self.ln1, self.ln2 = nn.LayerNorm(width, eps=1e-5), nn.LayerNorm(width, eps=1e-5)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(width, width) for _ in range(4))
        self.w1, self.w2 = nn.Linear(width, layer.mlp_dim), nn.Linear(layer.mlp_dim, width)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        return x.view(n, t, self.heads, d // self.heads).transpose(1, 2)  # (N, heads, T, d/heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        a = F.scaled_dot_product_attention(self._split(self.wq(h)), self._split(self.wk(h)), self._split(self.wv(h)))
        x = x + self.wo(a.transpose(1, 2).reshape(x.shape))
        return x + self.w2(F.gelu(self.w1(self.ln2(x)), approximate="none"))

    def bindings(self) -> Bindings:
        out: Bindings = {}
        for ln in ("ln1", "ln2"):
            out |= {f"{ln}.{k}": b for k, b in _affine(getattr(self, ln), "gamma").items()}
        for w in ("q", "k", "v", "o", "1", "2"):
            linear = getattr(self, f"w{w}")
            out |= {f"w{w}": Binding(linear, "weight", transposed=True), f"b{w}": Binding(linear, "bias")}
        return out


class _Residual(nn.Module):
    def __init__(self, body: nn.Sequential, shortcut: nn.Sequential, activation: str):
        super().__init__()
        self.body, self.shortcut = body, shortcut
        self.act = _ACT[activation]() if activation != "none" else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))  # an empty shortcut Sequential is the identity


# Builders: (layer, input sample shape) -> (native module, bindings of its canonical variables).


def _dense(layer: Dense, shape: Shape) -> tuple[nn.Module, Bindings]:
    linear = nn.Linear(shape[0], layer.units, bias=layer.bias)
    return _with_activation(linear, layer.activation), _affine(linear, transposed=True)


def _conv(layer: Conv, shape: Shape) -> tuple[nn.Module, Bindings]:
    cls = {1: nn.Conv1d, 2: nn.Conv2d}[layer.spatial_dims]
    conv = cls(shape[0], layer.filters, layer.kernel, layer.stride, layer.padding, bias=layer.bias)  # type: ignore[arg-type]
    return _with_activation(conv, layer.activation), _affine(conv)


def _pool(layer: Pool, shape: Shape) -> tuple[nn.Module, Bindings]:
    cls = {
        ("max", 1): nn.MaxPool1d,
        ("max", 2): nn.MaxPool2d,
        ("avg", 1): nn.AvgPool1d,
        ("avg", 2): nn.AvgPool2d,
    }[layer.kind, len(layer.window)]
    return cls(layer.window, layer.stride), {}


def _batch_norm(layer: BatchNorm, shape: Shape) -> tuple[nn.Module, Bindings]:
    cls = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d  # (C,) and (C, L) samples: BatchNorm1d
    bn = cls(shape[0], eps=layer.eps, momentum=layer.momentum)
    stats = {k: Binding(bn, k) for k in ("running_mean", "running_var")}
    return _with_activation(bn, layer.activation), _affine(bn, "gamma") | stats


def _layer_norm(layer: LayerNorm, shape: Shape) -> tuple[nn.Module, Bindings]:
    ln = nn.LayerNorm(shape[-1], eps=layer.eps)
    return ln, _affine(ln, "gamma")


def _recurrent(layer: Recurrent, shape: Shape) -> tuple[nn.Module, Bindings]:
    module = _Recurrent(layer, shape[1])
    bindings = {
        f"{kind}{d}": Binding(module.rnn, f"{'weight' if kind[0] == 'w' else 'bias'}_{kind[2:]}_l0{native}")
        for d, native in zip(layer.directions, ("", "_reverse"), strict=False)
        for kind in ("w_ih", "w_hh", "b_ih", "b_hh")
    }
    return module, bindings


def _embedding(layer: Embedding, shape: Shape) -> tuple[nn.Module, Bindings]:
    module = _Embedding(layer, shape[0])
    return module, {"table": Binding(module.table, "weight")} | (
        {"positions": Binding(module, "positions")} if layer.positions else {}
    )


def _leaf(layer: Leaf, shape: Shape) -> tuple[nn.Module, Bindings]:
    match layer:
        case Dense():
            return _dense(layer, shape)
        case Conv():
            return _conv(layer, shape)
        case Flatten():
            return nn.Flatten(), {}
        case Pool():
            return _pool(layer, shape)
        case GlobalAvgPool():
            dims = tuple(range(2, len(shape) + 1))
            return _Lambda(lambda x: x.mean(dims), f"mean over dims {dims}"), {}
        case BatchNorm():
            return _batch_norm(layer, shape)
        case LayerNorm():
            return _layer_norm(layer, shape)
        case PadShortcut():
            return _PadShortcut(shape[0], layer.filters, layer.stride, len(shape) - 1), {}
        case ToSequence():
            return _Lambda(lambda x: x.transpose(1, 2), "(N, C, L) -> (N, L, C)"), {}
        case Recurrent():
            return _recurrent(layer, shape)
        case Embedding():
            return _embedding(layer, shape)
        case TransformerBlock():
            block = _TransformerBlock(layer, shape[1])
            return block, block.bindings()
        case TokenMeanPool():
            return _Lambda(lambda x: x.mean(1), "mean over positions"), {}
    raise TypeError(f"torch adapter cannot build {layer}")


def _sequential(layers: tuple[Layer, ...], shape: Shape, prefix: str) -> tuple[nn.Sequential, dict[str, Binding]]:
    modules: list[nn.Module] = []
    bindings: dict[str, Binding] = {}
    for i, layer in enumerate(layers):
        path = f"{prefix}{i}"
        if isinstance(layer, Residual):
            body, b = _sequential(layer.body, shape, f"{path}.body.")
            shortcut, s = _sequential(layer.shortcut, shape, f"{path}.shortcut.")
            module: nn.Module = _Residual(body, shortcut, layer.activation)
            bindings |= b | s
        else:
            module, leaf = _leaf(layer, shape)
            bindings |= {f"{path}.{kind}": binding for kind, binding in leaf.items()}
        modules.append(module)
        shape = layer.out_shape(shape)
    return nn.Sequential(*modules), bindings


def build(arch: Architecture) -> tuple[nn.Sequential, dict[str, Binding]]:
    """The native model and canonical variable name -> binding, in ``arch.variable_layout()`` order."""
    model, bindings = _sequential(arch.layers, arch.input_shape, "")
    layout = arch.variable_layout()
    if set(bindings) != set(layout):
        raise AssertionError(f"torch build of {arch.name} binds {sorted(bindings)}, layout has {sorted(layout)}")
    return model, {name: bindings[name] for name in layout}
