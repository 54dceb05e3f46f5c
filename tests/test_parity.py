"""Cross-framework parity: the same canonical weights give the same computation in every framework.

Each framework runs ``tests/parity_probe.py`` in its own interpreter (MXNet lives in its own venv;
``tests/probes.py`` runs it in the background from the session's start, beside the precision probe);
the results are compared here, every pair of frameworks, every architecture. The tolerances, why
they take the form they do (relative to the output's scale; Adam and batch norm) and the measurements
under other CPUs' kernel paths behind them are in ``tests/tolerances.py``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from adapters import FRAMEWORKS
from harness.envs import interpreter
from tests.layer_archs import LAYER_ARCHITECTURES, resolve
from tests.parity_probe import PROBED, TRAINING, probe_batch
from tests.probes import Background
from tests.tolerances import ADAM_NOISY_SHARE, BN_ARCHS, REFERENCE_LOGITS, REFERENCE_LOSS, tolerance
from workloads.architectures.reference import cross_entropy, forward

PAIRS = list(itertools.combinations(FRAMEWORKS, 2))
ARCHS = PROBED  # the zoo and the tiny models of the newer layers (tests/layer_archs.py)


PROBE = "parity"  # what this module's tests read of the session's probes (tests/conftest.py)


@pytest.fixture(scope="module")
def probes(framework_probes: Background) -> dict[str, dict[str, np.ndarray]]:
    """Every framework's probe: each its own interpreter, started as the session started and run in the
    background (``tests/probes.py``); they compute the same numbers whatever runs beside them (parity
    is numeric, not a timing)."""
    return framework_probes.result(PROBE)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("fw", list(FRAMEWORKS))
def test_param_count_and_exact_roundtrip(probes: dict[str, dict[str, np.ndarray]], fw: str, arch: str) -> None:
    spec = resolve(arch)
    assert int(probes[fw][f"{arch}/param_count"]) == spec.param_count()
    params = spec.init_variables(13)
    for key, value in params.items():
        np.testing.assert_array_equal(probes[fw][f"{arch}/roundtrip/{key}"], value, err_msg=key)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("fw_a", "fw_b"), PAIRS)
def test_forward_parity(probes: dict[str, dict[str, np.ndarray]], fw_a: str, fw_b: str, arch: str) -> None:
    a, b = probes[fw_a][f"{arch}/logits"], probes[fw_b][f"{arch}/logits"]
    assert np.abs(a).max() > 0.01  # not trivially zero
    tolerance("logits", arch).check(a, b)


@pytest.mark.parametrize("optimizer", list(TRAINING))
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("fw_a", "fw_b"), PAIRS)
def test_training_parity(
    probes: dict[str, dict[str, np.ndarray]], fw_a: str, fw_b: str, arch: str, optimizer: str
) -> None:
    steps, lr = TRAINING[optimizer]
    pa, pb = probes[fw_a], probes[fw_b]
    bn = arch in BN_ARCHS
    tolerance("loss", arch, optimizer).check(pa[f"{arch}/{optimizer}/loss"], pb[f"{arch}/{optimizer}/loss"])
    params = resolve(arch).init_variables(13)
    tol = tolerance("weights", arch, optimizer)
    moved, close, total = 0.0, 0, 0
    for key in params:
        wa, wb = pa[f"{arch}/{optimizer}/w/{key}"], pb[f"{arch}/{optimizer}/w/{key}"]
        if optimizer == "adam" and bn:
            pass  # noise-driven, even between two runs of one framework (tests/tolerances.py): the losses are checked
        elif optimizer == "adam":
            assert np.abs(wa - wb).max() <= steps * lr, key
            if not key.endswith(".bk"):
                close += int((np.abs(wa - wb) <= tol.allowed(wa, wb)).sum())
                total += wa.size
        else:
            tol.check(wa, wb, err_msg=key)
        moved = max(moved, float(np.abs(wa - params[key]).max()))
    if optimizer == "adam" and not bn:
        assert close / total >= 1 - ADAM_NOISY_SHARE, f"{total - close} of {total} weights differ"
    assert moved > 1e-4  # the step really changed the weights


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(("fw_a", "fw_b"), PAIRS)
def test_eval_after_training_parity(probes: dict[str, dict[str, np.ndarray]], fw_a: str, fw_b: str, arch: str) -> None:
    """Inference after an SGD step: the trained weights and, for batch norm, the updated running statistics."""
    a, b = probes[fw_a][f"{arch}/sgd/logits_after"], probes[fw_b][f"{arch}/sgd/logits_after"]
    assert not np.array_equal(a, probes[fw_a][f"{arch}/logits"])  # training changed what inference computes
    tolerance("logits_after", arch).check(a, b)


@pytest.mark.parametrize("optimizer", ["sgd"])
@pytest.mark.parametrize("arch", BN_ARCHS)
@pytest.mark.parametrize(("fw_a", "fw_b"), PAIRS)
def test_batchnorm_running_stats_agree(
    probes: dict[str, dict[str, np.ndarray]], fw_a: str, fw_b: str, arch: str, optimizer: str
) -> None:
    """Running mean and (unbiased) variance move identically in every framework while training."""
    initial = resolve(arch).init_variables(13)
    tol = tolerance("weights", arch, optimizer)  # batch norm: after steps on trained weights (tests/tolerances.py)
    for key in resolve(arch).state_layout():
        wa, wb = probes[fw_a][f"{arch}/{optimizer}/w/{key}"], probes[fw_b][f"{arch}/{optimizer}/w/{key}"]
        assert not np.array_equal(wa, initial[key]), f"{key} never updated"
        tol.check(wa, wb, err_msg=key)


@pytest.mark.parametrize("arch", list(LAYER_ARCHITECTURES))
@pytest.mark.parametrize("fw", list(FRAMEWORKS))
def test_layer_models_match_the_reference(probes: dict[str, dict[str, np.ndarray]], fw: str, arch: str) -> None:
    """The tiny models of the newer layers against the float64 reference (the zoo's are in test_adapters):
    eval-mode logits, and the first training-mode loss (over every position for a language model)."""
    spec = resolve(arch)
    x, y = probe_batch(arch)
    params = spec.init_variables(13)
    logits = probes[fw][f"{arch}/logits"]
    assert logits.shape == (len(x), *spec.shapes()[-1])
    REFERENCE_LOGITS.check(logits, forward(spec, params, x)[0])
    expected = cross_entropy(forward(spec, params, x, training=True)[0], y)
    REFERENCE_LOSS.check(probes[fw][f"{arch}/sgd/loss"][0], np.array(expected))


def test_zoo_has_batchnorm() -> None:
    assert "resnet20" in BN_ARCHS and "tiny_resnet_stem" in BN_ARCHS


def test_probe_covers_every_framework(probes: dict[str, dict[str, np.ndarray]]) -> None:
    assert set(probes) == set(FRAMEWORKS) == {"torch", "tensorflow", "jax", "mxnet"}
    assert Path(interpreter("mxnet")).parent.parent.name == "mxnet"  # MXNet runs from its own venv
