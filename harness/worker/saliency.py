"""Input-gradient saliency against the positions a data set's generator knows to be informative.

Worker side: numpy and the standard library only; the model is used only through ``adapter.infer``.
"""

from __future__ import annotations

import numpy as np

from adapters.base import Adapter
from harness import metrics as M

H = 1e-2  # the central difference's step, on the inputs' scale (MNIST-1D: standard deviation 1)
SAMPLES = 500  # held-out samples scored: the first this many
INFORMATIVE = 0.5  # a position is informative when the signal covers more than this share of it


def saliency(
    adapter: Adapter,
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    *,
    h: float = H,
    samples: int = SAMPLES,
    batch: int = 500,
) -> dict[str, float]:
    """How well the model's input-gradient saliency picks out the informative positions.

    On the first ``min(samples, N)`` samples of ``x`` (``(N, ..., L)``; labels ``y``, ``(N,)``):
    the saliency of position ``i`` of the last axis is ``|d logit_y / d x_i|``, by central
    differences of the framework's own inference (``adapter.infer``, inference mode: the logits of
    ``x + h e_i`` and ``x - h e_i``, ``h`` added to every channel of position ``i``, in batches of
    at most ``batch`` rows). ``mask`` (``(N, L)``) says per sample how much of each position the
    informative signal covers; informative: more than ``INFORMATIVE``. Per sample (those with both
    informative and uninformative positions):

    - AUC: the probability that an informative position's saliency exceeds an uninformative one's
      (ties count 1/2); 0.5 is chance, 1 every informative position above every other;
    - mass: the share of the total saliency on informative positions (samples of zero total
      saliency left out), against the chance mass, the share of positions that are informative.

    Returns the means over the samples: ``SALIENCY_AUC``, ``SALIENCY_MASS`` and
    ``SALIENCY_CHANCE_MASS`` (none when no sample qualifies).

    What it shows: whether the true class's logit is locally sensitive where the generator put the
    signal rather than in the noise around it. What it does not: sensitivity is not reliance (a model
    may read the template only through a few of its positions, or use the background's statistics
    to judge where the template is, and score low); a finite difference of size ``h`` is a local,
    first-order probe that ReLU kinks and saturation can hide; channels are perturbed together, so
    it says nothing about which channel matters; and the mask marks where the template is, not
    which of its positions tell one class from another.
    """
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"saliency perturbs real-valued inputs, not {x.dtype} ones (token ids)")
    n = min(samples, len(x))
    length = x.shape[-1]
    if mask.shape != (len(x), length) or y.shape != (len(x),):
        raise ValueError(f"saliency needs labels (N,) and a mask (N, {length}); got {y.shape} and {mask.shape}")
    x, y, informative = x[:n], y[:n], mask[:n] > INFORMATIVE
    # rows 0..L-1 of a sample: x + h e_i; rows L..2L-1: x - h e_i (h on every channel of position i)
    step = np.concatenate([np.eye(length), -np.eye(length)]).reshape(2 * length, *(1,) * (x.ndim - 2), length)
    step = (h * step).astype(x.dtype)
    per_call = max(1, batch // (2 * length))  # samples per inference call; the last call is padded
    grad = np.empty((n, length))
    for start in range(0, n, per_call):
        chunk = x[start : start + per_call]
        m = len(chunk)
        rows = chunk[:, None] + step[None]  # (m, 2L, ..., L)
        if m < per_call:  # every call the same shape (a compiled model compiles once)
            rows = np.concatenate([rows, np.repeat(rows[-1:], per_call - m, axis=0)])
        logits = adapter.to_numpy(adapter.infer(adapter.to_device(rows.reshape(-1, *x.shape[1:]))))
        logits = logits.astype(np.float64).reshape(per_call, 2 * length, -1)[:m]
        true = logits[np.arange(m), :, y[start : start + m]]  # (m, 2L)
        grad[start : start + m] = np.abs(true[:, :length] - true[:, length:]) / (2 * h)
    aucs, masses, chances = [], [], []
    for g, inf in zip(grad, informative, strict=True):
        a, b = g[inf], g[~inf]
        if not len(a) or not len(b):
            continue
        aucs.append((a[:, None] > b[None, :]).mean() + 0.5 * (a[:, None] == b[None, :]).mean())
        total = g.sum()
        if total > 0:
            masses.append(a.sum() / total)
            chances.append(len(a) / length)
    if not aucs:
        return {}
    out = {M.SALIENCY_AUC: float(np.mean(aucs))}
    if masses:
        out |= {M.SALIENCY_MASS: float(np.mean(masses)), M.SALIENCY_CHANCE_MASS: float(np.mean(chances))}
    return out
