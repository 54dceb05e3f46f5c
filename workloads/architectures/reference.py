"""An independent numpy (float64) forward pass of the canonical contract in ``layers.py``.

It is the ground truth the adapters are tested against: written from the contract, with no
framework in it, slow and plain. ``forward`` returns the logits and, in training mode, the batch-norm
running statistics after the update.
"""

from __future__ import annotations

import math

import numpy as np

from workloads.architectures.architecture import Architecture
from workloads.architectures.layers import (
    TIED_TABLE,
    BatchNorm,
    ClassToken,
    Conv,
    Dense,
    Embedding,
    FirstToken,
    Flatten,
    GlobalAvgPool,
    Layer,
    LayerNorm,
    LMHead,
    PadShortcut,
    Pool,
    Recurrent,
    Residual,
    TokenMeanPool,
    ToSequence,
    TransformerBlock,
)

Vars = dict[str, np.ndarray]


def _erf(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = np.vectorize(math.erf, otypes=[np.float64])(x)
    return out


def activate(x: np.ndarray, name: str) -> np.ndarray:
    out: np.ndarray = x
    if name == "relu":
        out = np.maximum(x, 0.0)
    elif name == "tanh":
        out = np.tanh(x)
    elif name == "gelu":
        out = 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 1.0 / (1.0 + np.exp(-x))
    return out


def _windows(x: np.ndarray, kernel: tuple[int, ...], stride: tuple[int, ...]) -> np.ndarray:
    """(N, C, *spatial) -> (N, C, *out_spatial, *kernel) strided windows."""
    view = np.lib.stride_tricks.sliding_window_view(x, kernel, axis=tuple(range(2, x.ndim)))
    index = (slice(None), slice(None), *(slice(None, None, s) for s in stride))
    return view[index]


def conv(x: np.ndarray, w: np.ndarray, stride: tuple[int, ...], padding: tuple[int, ...]) -> np.ndarray:
    x = np.pad(x, ((0, 0), (0, 0), *((p, p) for p in padding)))
    win = _windows(x, tuple(w.shape[2:]), stride)  # (N, C, *out, *k)
    d = len(stride)
    axes_x = [1, *range(2 + d, 2 + 2 * d)]
    axes_w = [1, *range(2, 2 + d)]
    out = np.tensordot(win, w, axes=(axes_x, axes_w))  # (N, *out, O)
    return np.moveaxis(out, -1, 1)


def _recurrent(layer: Recurrent, v: Vars, p: str, x: np.ndarray) -> np.ndarray:
    n, t, _ = x.shape
    h_size = layer.hidden
    outs, finals = [], []
    for d in layer.directions:
        w_ih, w_hh = v[f"{p}.w_ih{d}"], v[f"{p}.w_hh{d}"]
        b_ih, b_hh = v[f"{p}.b_ih{d}"], v[f"{p}.b_hh{d}"]
        h = np.zeros((n, h_size))
        c = np.zeros((n, h_size))
        steps = range(t - 1, -1, -1) if d else range(t)
        seq = np.zeros((n, t, h_size))
        for s in steps:
            gi = x[:, s] @ w_ih.T + b_ih
            gh = h @ w_hh.T + b_hh
            if layer.cell == "gru":
                r = _sigmoid(gi[:, :h_size] + gh[:, :h_size])
                z = _sigmoid(gi[:, h_size : 2 * h_size] + gh[:, h_size : 2 * h_size])
                new = np.tanh(gi[:, 2 * h_size :] + r * gh[:, 2 * h_size :])
                h = (1 - z) * new + z * h
            else:
                g = gi + gh
                i, f = _sigmoid(g[:, :h_size]), _sigmoid(g[:, h_size : 2 * h_size])
                cand, o = np.tanh(g[:, 2 * h_size : 3 * h_size]), _sigmoid(g[:, 3 * h_size :])
                c = f * c + i * cand
                h = o * np.tanh(c)
            seq[:, s] = h
        outs.append(seq)
        finals.append(h)
    out: np.ndarray = np.concatenate(outs if layer.sequences else finals, axis=-1)
    return out


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    out: np.ndarray = (x - mean) / np.sqrt(var + eps) * gamma + beta
    return out


def _transformer(layer: TransformerBlock, v: Vars, p: str, x: np.ndarray) -> np.ndarray:
    n, t, d = x.shape
    hd = d // layer.heads
    y = _layer_norm(x, v[f"{p}.ln1.gamma"], v[f"{p}.ln1.beta"], 1e-5)

    def heads(w: str) -> np.ndarray:
        return (y @ v[f"{p}.w{w}"] + v[f"{p}.b{w}"]).reshape(n, t, layer.heads, hd).transpose(0, 2, 1, 3)

    q, k, val = heads("q"), heads("k"), heads("v")
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hd)
    if layer.causal:  # position i sees j <= i: exp(-inf) = 0 leaves the later ones out of the softmax
        scores = np.where(np.tri(t, dtype=bool), scores, -np.inf)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    att = (scores / scores.sum(-1, keepdims=True)) @ val  # (n, heads, t, hd)
    x = x + att.transpose(0, 2, 1, 3).reshape(n, t, d) @ v[f"{p}.wo"] + v[f"{p}.bo"]
    y = _layer_norm(x, v[f"{p}.ln2.gamma"], v[f"{p}.ln2.beta"], 1e-5)
    hidden = activate(y @ v[f"{p}.w1"] + v[f"{p}.b1"], "gelu")
    out: np.ndarray = x + hidden @ v[f"{p}.w2"] + v[f"{p}.b2"]
    return out


def _batch_norm(layer: BatchNorm, v: Vars, p: str, x: np.ndarray, training: bool, state: Vars) -> np.ndarray:
    axes = (0, *range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    if training:
        mean, var = x.mean(axes), x.var(axes)
        count = x.size // x.shape[1]
        m = layer.momentum
        state[f"{p}.running_mean"] = (1 - m) * v[f"{p}.running_mean"] + m * mean
        state[f"{p}.running_var"] = (1 - m) * v[f"{p}.running_var"] + m * var * count / (count - 1)
    else:
        mean, var = v[f"{p}.running_mean"], v[f"{p}.running_var"]
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + layer.eps)
    return activate(y * v[f"{p}.gamma"].reshape(shape) + v[f"{p}.beta"].reshape(shape), layer.activation)


def _run(layers: tuple[Layer, ...], v: Vars, x: np.ndarray, training: bool, state: Vars, prefix: str) -> np.ndarray:
    for i, layer in enumerate(layers):
        p = f"{prefix}{i}"
        if isinstance(layer, Residual):
            body = _run(layer.body, v, x, training, state, f"{p}.body.")
            x = activate(body + _run(layer.shortcut, v, x, training, state, f"{p}.shortcut."), layer.activation)
        elif isinstance(layer, Dense):
            x = activate(x @ v[f"{p}.kernel"] + (v[f"{p}.bias"] if layer.bias else 0.0), layer.activation)
        elif isinstance(layer, Conv):
            x = conv(x, v[f"{p}.kernel"], layer.stride, layer.padding)
            if layer.bias:
                x = x + v[f"{p}.bias"].reshape((1, -1) + (1,) * layer.spatial_dims)
            x = activate(x, layer.activation)
        elif isinstance(layer, Flatten):
            x = x.reshape(x.shape[0], -1)
        elif isinstance(layer, Pool):
            x = np.pad(x, ((0, 0), (0, 0), *((p, p) for p in layer.pads)), constant_values=-np.inf)
            win = _windows(x, layer.window, layer.stride)
            axes = tuple(range(-len(layer.window), 0))
            x = win.max(axes) if layer.kind == "max" else win.mean(axes)
        elif isinstance(layer, GlobalAvgPool):
            x = x.mean(tuple(range(2, x.ndim)))
        elif isinstance(layer, BatchNorm):
            x = _batch_norm(layer, v, p, x, training, state)
        elif isinstance(layer, LayerNorm):
            x = _layer_norm(x, v[f"{p}.gamma"], v[f"{p}.beta"], layer.eps)
        elif isinstance(layer, PadShortcut):
            x = x[(slice(None), slice(None), *(slice(None, None, layer.stride),) * (x.ndim - 2))]
            extra = layer.filters - x.shape[1]
            x = np.pad(x, ((0, 0), (extra // 2, extra - extra // 2), *((0, 0),) * (x.ndim - 2)))
        elif isinstance(layer, ToSequence):
            x = x.reshape(x.shape[0], x.shape[1], -1).transpose(0, 2, 1)
        elif isinstance(layer, Recurrent):
            x = _recurrent(layer, v, p, x)
        elif isinstance(layer, Embedding):
            ids = x.astype(np.int64)
            x = v[f"{p}.table"][ids] + (v[f"{p}.positions"] if layer.positions else 0.0)
        elif isinstance(layer, TransformerBlock):
            x = _transformer(layer, v, p, x)
        elif isinstance(layer, TokenMeanPool):
            x = x.mean(1)
        elif isinstance(layer, ClassToken):
            cls = np.broadcast_to(v[f"{p}.cls"], (x.shape[0], 1, x.shape[2]))
            x = np.concatenate([cls, x], axis=1) + v[f"{p}.positions"]
        elif isinstance(layer, FirstToken):
            x = x[:, 0]
        elif isinstance(layer, LMHead):
            x = x @ v[TIED_TABLE].T
        else:  # pragma: no cover - the Layer union is exhaustive
            raise TypeError(f"no reference for {layer}")
    return x


def forward(arch: Architecture, variables: Vars, x: np.ndarray, training: bool = False) -> tuple[np.ndarray, Vars]:
    """Logits (float64) and the state after the pass (updated running statistics when ``training``)."""
    v = {k: np.asarray(a, np.float64) for k, a in variables.items()}
    state = {k: v[k] for k in arch.state_layout()}
    inputs = x if arch.input_dtype == "int32" else np.asarray(x, np.float64)
    return _run(arch.layers, v, inputs, training, state, ""), state


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross-entropy over every label, the canonical loss: logits ``(N, *P, C)``, labels
    ``(N, *P)`` (``P`` is ``()`` for a classifier, the positions ``(T,)`` for a language model)."""
    flat = logits.reshape(-1, logits.shape[-1])
    shifted = flat - flat.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return float(-log_probs[np.arange(len(flat)), labels.reshape(-1)].mean())
