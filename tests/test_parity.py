"""Cross-framework parity: the same canonical weights give the same computation in every framework.

Each framework runs ``tests/parity_probe.py`` in its own interpreter (MXNet lives in its own venv);
the results are compared here, every pair of frameworks, every architecture.

Tolerance: float32 has a unit roundoff of 6e-8; a dot product of length K accumulated in a
different order (BLAS blocking, XLA fusion, oneDNN) differs by up to about K * 6e-8 relative. The
widest reductions are K = 576 (ResNet-20: 64 channels x 3x3) and K = 480 (the GRU's head), so 3e-5
relative; logits are O(1-10), hence rtol = 1e-4 and atol = 1e-5, with headroom for stacked layers.

Adam is the exception for weights: its update m / (sqrt(v) + eps) is about +-lr whatever the
gradient's size, so a gradient that is pure rounding noise (an exact cancellation computed in a
different order) moves a weight by up to lr in a direction that differs between frameworks. For
Adam we require the tight tolerance on all but 0.1% of the model's weights and |diff| <= steps * lr on all.
The attention key bias ``bk`` is the extreme case: its true gradient is identically zero (adding the
same vector to every key shifts each softmax row by a constant), so its whole Adam update is noise;
it is held to the ``steps * lr`` bound only.

Batch norm (ResNet-20) loosens what follows training steps, and only that: its backward pass
subtracts the batch means of the incoming gradient, a cancellation that leaves float32 gradients of
the early layers about 1e-3 relative from the float64 truth in every framework (measured: torch
3e-3, MXNet and JAX alike). After three SGD steps (lr 0.02) weights differ by up to 1.1e-4 and eval
logits by 1.3e-3 of their scale (measured), so batch-norm models get atol 3e-4 on trained weights and
running statistics, and 3e-3 of the logits' scale on eval logits after training. Adam makes it worse
in the way described above: batch norm makes each convolution's loss invariant to the scale of its
kernel, so many kernel gradients are near zero and Adam moves those weights by +-lr on noise. That is
not even repeatable within one framework (multi-threaded reductions sum in a varying order): over
two runs, 0.04% and then 12% of the weights differed. For batch-norm models under Adam we check the
losses only (rtol 1e-3; measured 1.6e-4 after three steps). The forward pass keeps the tight
tolerance.
"""

from __future__ import annotations

import itertools
import subprocess
from pathlib import Path

import numpy as np
import pytest

from adapters import FRAMEWORKS
from harness.envs import interpreter
from tests.conftest import REPO
from tests.parity_probe import TRAINING
from workloads.architectures import ARCHITECTURES

RTOL, ATOL = 1e-4, 1e-5
BN_WEIGHT_ATOL, BN_LOGIT_SCALE = 3e-4, 3e-3  # after training steps, batch-norm models only (see above)
BN_ADAM_RTOL = 1e-3  # batch norm under Adam: losses only (see above)
PAIRS = list(itertools.combinations(FRAMEWORKS, 2))
ARCHS = list(ARCHITECTURES)
BN_ARCHS = [a for a in ARCHS if ARCHITECTURES[a].state_layout()]


@pytest.fixture(scope="module")
def probes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for fw in FRAMEWORKS:
        path = tmp_path_factory.mktemp("parity") / f"{fw}.npz"
        proc = subprocess.run(
            [interpreter(fw), "-m", "tests.parity_probe", fw, str(path)], cwd=REPO, capture_output=True, text=True
        )
        assert proc.returncode == 0, f"{fw} probe failed:\n{proc.stderr[-3000:]}"
        with np.load(path) as f:
            out[fw] = dict(f)
    return out


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("fw", list(FRAMEWORKS))
def test_param_count_and_exact_roundtrip(probes: dict[str, dict[str, np.ndarray]], fw: str, arch: str) -> None:
    spec = ARCHITECTURES[arch]
    assert int(probes[fw][f"{arch}/param_count"]) == spec.param_count()
    params = spec.init_variables(13)
    for key, value in params.items():
        np.testing.assert_array_equal(probes[fw][f"{arch}/roundtrip/{key}"], value, err_msg=key)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("fw_a", "fw_b"), PAIRS)
def test_forward_parity(probes: dict[str, dict[str, np.ndarray]], fw_a: str, fw_b: str, arch: str) -> None:
    a, b = probes[fw_a][f"{arch}/logits"], probes[fw_b][f"{arch}/logits"]
    assert np.abs(a).max() > 0.01  # not trivially zero
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("optimizer", list(TRAINING))
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("fw_a", "fw_b"), PAIRS)
def test_training_parity(
    probes: dict[str, dict[str, np.ndarray]], fw_a: str, fw_b: str, arch: str, optimizer: str
) -> None:
    steps, lr = TRAINING[optimizer]
    pa, pb = probes[fw_a], probes[fw_b]
    bn = arch in BN_ARCHS
    loss_rtol = BN_ADAM_RTOL if bn and optimizer == "adam" else RTOL
    np.testing.assert_allclose(pa[f"{arch}/{optimizer}/loss"], pb[f"{arch}/{optimizer}/loss"], rtol=loss_rtol)
    params = ARCHITECTURES[arch].init_variables(13)
    atol = BN_WEIGHT_ATOL if bn else ATOL
    moved, close, total = 0.0, 0, 0
    for key in params:
        wa, wb = pa[f"{arch}/{optimizer}/w/{key}"], pb[f"{arch}/{optimizer}/w/{key}"]
        if optimizer == "adam" and bn:
            pass  # noise-driven, even between two runs of one framework (see above): the losses are checked
        elif optimizer == "adam":
            assert np.abs(wa - wb).max() <= steps * lr, key
            if not key.endswith(".bk"):
                close += int(np.isclose(wa, wb, rtol=RTOL, atol=atol).sum())
                total += wa.size
        else:
            np.testing.assert_allclose(wa, wb, rtol=RTOL, atol=atol, err_msg=key)
        moved = max(moved, float(np.abs(wa - params[key]).max()))
    if optimizer == "adam" and not bn:
        assert close / total >= 0.999, f"{total - close} of {total} weights differ"
    assert moved > 1e-4  # the step really changed the weights


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("fw_a", "fw_b"), PAIRS)
def test_eval_after_training_parity(probes: dict[str, dict[str, np.ndarray]], fw_a: str, fw_b: str, arch: str) -> None:
    """Inference after an SGD step: the trained weights and, for batch norm, the updated running statistics."""
    a, b = probes[fw_a][f"{arch}/sgd/logits_after"], probes[fw_b][f"{arch}/sgd/logits_after"]
    assert not np.array_equal(a, probes[fw_a][f"{arch}/logits"])  # training changed what inference computes
    atol = BN_LOGIT_SCALE * float(np.abs(a).max()) if arch in BN_ARCHS else ATOL
    np.testing.assert_allclose(a, b, rtol=RTOL, atol=atol)


@pytest.mark.parametrize("optimizer", ["sgd"])
@pytest.mark.parametrize("arch", BN_ARCHS)
@pytest.mark.parametrize(("fw_a", "fw_b"), PAIRS)
def test_batchnorm_running_stats_agree(
    probes: dict[str, dict[str, np.ndarray]], fw_a: str, fw_b: str, arch: str, optimizer: str
) -> None:
    """Running mean and (unbiased) variance move identically in every framework while training."""
    initial = ARCHITECTURES[arch].init_variables(13)
    steps, _ = TRAINING[optimizer]
    atol = ATOL if steps == 1 else BN_WEIGHT_ATOL  # later steps see weights already trained (see above)
    for key in ARCHITECTURES[arch].state_layout():
        wa, wb = probes[fw_a][f"{arch}/{optimizer}/w/{key}"], probes[fw_b][f"{arch}/{optimizer}/w/{key}"]
        assert not np.array_equal(wa, initial[key]), f"{key} never updated"
        np.testing.assert_allclose(wa, wb, rtol=RTOL, atol=atol, err_msg=key)


def test_zoo_has_batchnorm() -> None:
    assert "resnet20" in BN_ARCHS


def test_probe_covers_every_framework(probes: dict[str, dict[str, np.ndarray]]) -> None:
    assert set(probes) == set(FRAMEWORKS) == {"torch", "tensorflow", "jax", "mxnet"}
    assert Path(interpreter("mxnet")).parent.parent.name == "mxnet"  # MXNet runs from its own venv
