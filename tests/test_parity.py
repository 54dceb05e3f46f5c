"""Cross-framework parity: the same canonical weights give the same computation everywhere.

Tolerance: float32 has a unit roundoff of 6e-8; a dot product of length K accumulated in a
different order (BLAS blocking, XLA fusion) differs by up to about K * 6e-8 relative. The widest
reduction here is K = 640 (cnn_small's dense input), so 4e-5 relative; logits are O(1-10), hence
rtol = 1e-4 and atol = 1e-5 with headroom for a few stacked layers.

Adam is the exception for weights: its update m / (sqrt(v) + eps) is about +-lr whatever the
gradient's size, so a gradient that is pure rounding noise (an exact cancellation computed in a
different order) moves a weight by up to lr in a direction that differs between frameworks. For
Adam we require the tight tolerance on all but 0.1% of the weights and |diff| <= steps * lr on all.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from adapters import FRAMEWORKS, load_adapter
from adapters.base import BuildOptions
from workloads.architectures import ARCHITECTURES
from workloads.datasets import synthetic

RTOL, ATOL = 1e-4, 1e-5
PAIRS = list(itertools.combinations(FRAMEWORKS, 2))


@pytest.mark.parametrize("arch_name", list(ARCHITECTURES))
@pytest.mark.parametrize(("fw_a", "fw_b"), PAIRS)
def test_forward_parity(fw_a: str, fw_b: str, arch_name: str) -> None:
    arch = ARCHITECTURES[arch_name]
    params = arch.init_params(11)
    x, _ = synthetic(arch.input_shape, arch.num_classes, 64, seed=12)
    outs = []
    for fw in (fw_a, fw_b):
        a = load_adapter(fw)(arch, params, BuildOptions(threads=2, trainable=False))
        outs.append(a.to_numpy(a.infer(a.to_device(x))))
    assert np.abs(outs[0]).max() > 0.1  # not trivially zero
    np.testing.assert_allclose(outs[0], outs[1], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize(("optimizer", "steps", "lr"), [("sgd", 1, 0.1), ("adam", 3, 1e-3)])
@pytest.mark.parametrize("arch_name", list(ARCHITECTURES))
@pytest.mark.parametrize(("fw_a", "fw_b"), PAIRS)
def test_training_parity(fw_a: str, fw_b: str, arch_name: str, optimizer: str, steps: int, lr: float) -> None:
    arch = ARCHITECTURES[arch_name]
    params = arch.init_params(13)
    x, y = synthetic(arch.input_shape, arch.num_classes, 32, seed=14)
    results = []
    for fw in (fw_a, fw_b):
        a = load_adapter(fw)(arch, params, BuildOptions(threads=2, optimizer=optimizer, learning_rate=lr))  # type: ignore[arg-type]
        xd, yd = a.to_device(x), a.to_device(y)
        losses = [float(a.to_numpy(a.train_step(xd, yd))) for _ in range(steps)]
        results.append((losses, a.export_params()))
    (loss_a, w_a), (loss_b, w_b) = results
    np.testing.assert_allclose(loss_a, loss_b, rtol=RTOL)
    moved = 0.0
    for key in params:
        if optimizer == "adam":
            close = np.isclose(w_a[key], w_b[key], rtol=RTOL, atol=ATOL)
            assert close.mean() >= 0.999, f"{key}: {np.size(close) - close.sum()} weights differ"
            assert np.abs(w_a[key] - w_b[key]).max() <= steps * lr
        else:
            np.testing.assert_allclose(w_a[key], w_b[key], rtol=RTOL, atol=ATOL, err_msg=key)
        moved = max(moved, float(np.abs(w_a[key] - params[key]).max()))
    assert moved > 1e-4  # the step really changed the weights
