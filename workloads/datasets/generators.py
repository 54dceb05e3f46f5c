"""Generators of the offline data sets: deterministic, nothing downloaded.

Driver-side: a generator may import ``mnist1d`` or ``sklearn``, lazily inside the function, so this
module itself imports with numpy and the standard library only.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

from .base import Dataset

# --- MNIST-1D ------------------------------------------------------------------------------------

MNIST1D_LENGTH = 40
MNIST1D_PERMUTATION_SEED = 1234
"""``np.random.default_rng(MNIST1D_PERMUTATION_SEED).permutation(40)`` reorders the positions of
every ``mnist1d_shuffled`` example (train and val alike)."""


class _Mnist1d(NamedTuple):
    x: np.ndarray  # float64 (n, 40), as the package makes it
    y: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    val_mask: np.ndarray  # float64 (n_val, 40): share of each position covered by the template


@functools.cache
def _mnist1d_raw() -> _Mnist1d:
    """The mnist1d package's reference data set (its defaults, seed 42), generated once per process,
    with where each held-out sample's template sits (:func:`mnist1d_make_dataset`)."""
    from mnist1d.data import get_dataset_args

    d = mnist1d_make_dataset(get_dataset_args())  # generated, not downloaded
    return _Mnist1d(d["x"], d["y"], d["x_test"], d["y_test"], d["mask_test"])


def mnist1d_make_dataset(args: Any) -> dict[str, np.ndarray]:
    """``mnist1d.data.make_dataset(args)`` (default templates) replicated step by step, with the mask.

    The same calls to numpy's global generator in the same order, through the package's own
    transformation steps (``pad``, ``interpolate``, ``translate``, the noises, ``shear``), so ``x``,
    ``y``, ``x_test`` and ``y_test`` equal the package's exactly (tests check it). Also
    ``mask`` / ``mask_test``: per sample and final position, the share covered by the digit's
    template (:func:`mnist1d_transform`), permuted and split like the samples. The global numpy
    generator's state is restored afterwards (the package leaves it seeded).
    """
    from mnist1d.data import get_templates

    templates = get_templates()
    state = np.random.get_state()
    try:
        np.random.seed(args.seed)  # the package's set_seed (its Python ``random`` seeding draws nothing here)
        xs, ys, masks = [], [], []
        samples_per_class = args.num_samples // len(templates["y"])
        for label_ix in range(len(templates["y"])):
            for _ in range(samples_per_class):
                x, mask = mnist1d_transform(templates["x"][label_ix], args)
                xs.append(x)
                ys.append(templates["y"][label_ix])
                masks.append(mask)
        batch_shuffle = np.random.permutation(len(ys))  # shuffle batch dimension
        x_all, y_all, mask_all = (np.stack(a)[batch_shuffle] for a in (xs, ys, masks))
        if args.shuffle_seq:  # maybe shuffle the spatial dimension
            seq_shuffle = np.random.permutation(args.final_seq_length)
            x_all, mask_all = x_all[..., seq_shuffle], mask_all[..., seq_shuffle]
    finally:
        np.random.set_state(state)
    x_all = (x_all - x_all.mean()) / x_all.std()  # center the dataset & set standard deviation to 1
    split_ix = int(len(y_all) * args.train_split)
    return {
        "x": x_all[:split_ix],
        "x_test": x_all[split_ix:],
        "y": y_all[:split_ix],
        "y_test": y_all[split_ix:],
        "mask": mask_all[:split_ix],
        "mask_test": mask_all[split_ix:],
    }


def mnist1d_transform(x: np.ndarray, args: Any, eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    """``mnist1d.transform.transform`` on a template ``x``, and where the template ends up.

    The package pads the template with zeros, dilates it, scales it and translates it (length 72),
    then fills the positions where the signal is exactly 0 (``mask = new_x != 0``: everything but
    the template) with correlated noise, adds i.i.d. noise everywhere, shears and subsamples to 40
    positions. The mask, as 0/1 floats, goes unchanged through the shear and through the same
    linear interpolation to 40 positions: a position's share of the template. (The template's time
    axis, which the package also interpolates, draws nothing and is left out.)
    """
    from mnist1d.transform import corr_noise_like, iid_noise_like, interpolate, pad, shear, translate

    new_x = pad(x + eps, args.padding)  # pad
    new_x = interpolate(new_x, args.template_len + args.padding[-1])  # dilate
    new_x *= 1 + args.scale_coeff * (np.random.rand() - 0.5)  # scale
    new_x = translate(new_x, args.max_translation)  # translate
    mask = new_x != 0  # the template's positions
    new_x = mask * new_x + (1 - mask) * corr_noise_like(new_x, args.corr_noise_scale)
    new_x = new_x + iid_noise_like(new_x, args.iid_noise_scale)
    new_x = shear(new_x, args.shear_scale)
    new_x = interpolate(new_x, args.final_seq_length)  # subsample
    share = interpolate(mask.astype(np.float64), args.final_seq_length)
    return new_x, np.clip(share, 0.0, 1.0)


def mnist1d() -> Dataset:
    raw = _mnist1d_raw()
    return Dataset(
        "mnist1d",
        x_train=raw.x.astype(np.float32)[:, None, :],
        y_train=raw.y.astype(np.int64),
        x_val=raw.x_val.astype(np.float32)[:, None, :],
        y_val=raw.y_val.astype(np.int64),
        val_mask=raw.val_mask.astype(np.float32),
    )


def mnist1d_permutation() -> np.ndarray:
    """The fixed order of the 40 positions used by ``mnist1d_shuffled``: sample ``i`` is old ``perm[i]``."""
    return np.random.default_rng(MNIST1D_PERMUTATION_SEED).permutation(MNIST1D_LENGTH)


def mnist1d_shuffled() -> Dataset:
    """MNIST-1D with one fixed permutation of the 40 positions applied to every example.

    The values (so the information) of each example are kept, the labels are the same; only the
    spatial order is lost, so locality priors (convolutions) no longer help and an MLP does as well.
    """
    base, perm = mnist1d(), mnist1d_permutation()
    return Dataset(
        "mnist1d_shuffled",
        x_train=np.ascontiguousarray(base.x_train[..., perm]),
        y_train=base.y_train,
        x_val=np.ascontiguousarray(base.x_val[..., perm]),
        y_val=base.y_val,
        val_mask=None if base.val_mask is None else np.ascontiguousarray(base.val_mask[..., perm]),
    )


# --- scikit-learn digits -------------------------------------------------------------------------

DIGITS_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0


def stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and val indices: ``round(val_fraction * n_c)`` of each class ``c`` go to val.

    Within each class the indices are drawn by ``np.random.default_rng(seed)`` (classes in ascending
    order); each split is then shuffled by the same generator, so neither is sorted by class.
    """
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = round(val_fraction * len(idx))
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(val))


def _digits(name: str, side: int) -> Dataset:
    from sklearn.datasets import load_digits  # ships with scikit-learn: nothing downloaded

    d = load_digits()
    x = (np.asarray(d.images, dtype=np.float64) / 16.0).astype(np.float32)  # 1797 x 8 x 8, 0..16 -> [0, 1]
    if side != x.shape[-1]:
        x = bilinear_resize(x, side)
    x = x[:, None]  # channel first: 1 x side x side
    y = np.asarray(d.target, dtype=np.int64)
    train, val = stratified_split(y, DIGITS_VAL_FRACTION, DIGITS_SPLIT_SEED)
    return Dataset(
        name,
        x_train=np.ascontiguousarray(x[train]),
        y_train=y[train],
        x_val=np.ascontiguousarray(x[val]),
        y_val=y[val],
    )


def digits() -> Dataset:
    return _digits("digits", 8)


def digits32() -> Dataset:
    return _digits("digits32", 32)


def bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """The ``(n_out, n_in)`` matrix of 1-D linear interpolation with half-pixel centres.

    Output pixel ``o`` samples the input at ``(o + 0.5) * n_in / n_out - 0.5``, clamped to the edge
    pixels (``align_corners=False``: the convention of ``torch.nn.functional.interpolate(mode="bilinear")``
    and OpenCV's ``INTER_LINEAR``). Every row is a convex combination (sums to 1); for an integer
    upscale every column sums to ``n_out / n_in``, so the mean of an image is kept exactly.
    """
    src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    w = src - lo
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), lo), 1.0 - w)
    np.add.at(m, (np.arange(n_out), hi), w)
    return m


def bilinear_resize(images: np.ndarray, side: int) -> np.ndarray:
    """Resize ``(..., h, w)`` images to ``(..., side, side)`` by separable bilinear interpolation.

    Values stay within the input's range (convex combinations); the result is float32.
    """
    rows = bilinear_matrix(images.shape[-2], side)
    cols = bilinear_matrix(images.shape[-1], side)
    out: np.ndarray = rows @ images.astype(np.float64) @ cols.T
    return out.astype(np.float32)


# --- token sequences -----------------------------------------------------------------------------

TOKENS_LENGTH = 32
TOKENS_CLASSES = 10
TOKENS_MARKER = 10
TOKENS_VOCAB = 16
TOKENS_COPIES = 2
TOKENS_TRAIN, TOKENS_VAL = 32000, 2000  # 8000 train: a small transformer memorises it instead of learning
TOKENS_SEED = 0


def tokens() -> Dataset:
    """Marker copy: the label is the token right after the one marker token in the sequence.

    Vocabulary (16): ids 0-9 are class tokens, 10 is the marker, 11-15 are filler. A sequence has
    length 32: each of the 10 class tokens exactly twice (20), 11 filler tokens drawn uniformly from
    11-15, and one marker, in a uniformly random order except that the marker is placed directly
    before one of the two copies of the label's class token (which copy: a fair coin). So:

        label(x) = x[i + 1] where x[i] == 10   (always one marker, and never in the last position)

    What a model must learn: find the marker and read out the token that follows it, ignoring the
    other copy of that token and every other class token (the two copies of each class token are
    indistinguishable except by what precedes them). An LSTM must latch the token after the marker and
    keep it to the end; attention must relate positions (which token sits one after the marker).

    Why a bag of tokens cannot solve it: the token counts are independent of the label. Every sequence
    holds each class token exactly twice and exactly one marker; the filler counts are drawn
    independently of the label. Any function of the counts (a linear model on a count vector, a mean
    of embeddings without positions) is therefore at chance, 10%. The marker's position is also
    independent of the label, by symmetry.

    Labels are exactly balanced (3200 train / 200 val per class). Train and val come from one generator
    (``np.random.default_rng(0)``): 32000 train sequences, then 2000 val. (With 8000 train sequences a
    small transformer memorised them before it found the rule; an LSTM learns it either way.)
    """
    rng = np.random.default_rng(TOKENS_SEED)
    x_train, y_train = _marker_copy(rng, TOKENS_TRAIN)
    x_val, y_val = _marker_copy(rng, TOKENS_VAL)
    return Dataset("tokens", x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)


def _marker_copy(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = rng.permutation(np.arange(n, dtype=np.int64) % TOKENS_CLASSES)
    n_filler = TOKENS_LENGTH - 1 - TOKENS_CLASSES * TOKENS_COPIES
    filler = rng.integers(TOKENS_MARKER + 1, TOKENS_VOCAB, size=(n, n_filler))
    classes = np.broadcast_to(np.repeat(np.arange(TOKENS_CLASSES), TOKENS_COPIES), (n, TOKENS_CLASSES * TOKENS_COPIES))
    body = rng.permuted(np.concatenate([classes, filler], axis=1), axis=1)  # n x 31, no marker yet
    # the position in ``body`` of the chosen copy of each row's label token; the marker goes before it
    which = rng.integers(0, TOKENS_COPIES, size=n)
    hits = body == y[:, None]
    rank = np.cumsum(hits, axis=1) - 1
    pos = np.argmax(hits & (rank == which[:, None]), axis=1)
    j = np.arange(TOKENS_LENGTH)[None, :]
    p = pos[:, None]
    gathered = np.take_along_axis(body, np.clip(j - (j > p), 0, TOKENS_LENGTH - 2), axis=1)
    x = np.where(j == p, TOKENS_MARKER, gathered)
    return x.astype(np.int32), y
