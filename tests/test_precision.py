"""Mixed precision (``bfloat16``/``float16`` with float32 master weights; the contract in ``adapters/base.py``).

Every framework that supports a low precision on CPU runs ``tests/precision_probe.py`` in its own
interpreter (``tests/probes.py``: in the background from the session's start, in the same interpreter
as that framework's parity probe); its results are checked here against the float64 reference
(``workloads/architectures/reference.py``) and against the same framework's float32 step.

Tolerance. A mixed-precision forward pass rounds the inputs, weights and biases of every matrix product
to the low dtype and its output too, relative error up to the unit roundoff ``u`` (bfloat16: 8
significant bits, ``u = 2**-8``; float16: ``2**-11``) each, while every kernel accumulates in float32.
The errors of one product partly cancel and those of successive products add up like a random walk,
so the logits' error relative to their scale grows as ``u * sqrt(depth)``, ``depth`` the number of
matrix products on the longest path (:func:`depth`). Measured on this CPU (AMD EPYC, AVX2 without
AVX512-BF16: torch's bfloat16 matmuls run ATen's float32-accumulating fallback, XLA upcasts bfloat16
dots to float32), ``max |logits - ref| / max |ref|`` in units of ``u * sqrt(depth)``:

    model (depth)          torch   jax     tensorflow
    mlp_deep (9)           0.62    0.62    0.62         bfloat16
    lenet5 (5)             0.73    0.90    0.91         (eager builds: torch 0.73, JAX 0.90, TF 1.39)
    resnet20 (20)          0.26    0.18    0.20
    gru (3)                0.61    0.88    0.91
    transformer (13)       0.74    0.83    0.64
    mlp_deep (9)           0.56    0.56    0.56         float16
    transformer (13)       0.68    0.74    0.78

(The probe now runs ``resnet_cifar[n=1]`` (depth 8) and a one-block ``encoder`` (depth 7) in place of
resnet20 and the two-block transformer: the same layers at a fraction of the compile time; the bound
scales with the depth.) The bound is ``3 * u * sqrt(depth)`` of the scale: 3.3x the worst compiled
path, 2.2x TensorFlow's eager CPU
kernels (which round partial sums more often). It rests on the roundings the contract itself
prescribes, the same on every CPU; what another CPU changes (AVX512-BF16 or AMX dot products, oneDNN's
blocking, XLA's emitters) is the float32 accumulation order, worth ~1e-6 here (the float32 suite's
tolerances), so it holds there too. ``python -m tests.isa_sweep --precision`` under the kernel variants
this CPU can force (torch: oneDNN/ATen at AVX and SSE4.1, MKL's compatible path; JAX: Eigen for
YNNPACK) found at most 0.28 (torch) and 0.30 (JAX) of the bound on the logits, as by default. A
kernel that accumulated a long sum in the low dtype would not: 256 bfloat16 terms err by ~``16 u``.
Conversely the error must be at least ``u / 10`` of the scale (measured: 0.8 u and more), or the
model did not run in the low dtype at all (float32's error is 1e-7).

One training step is not held to that bound weight by weight: the gradients of the deep ReLU models
are ill-conditioned with respect to the weights' own rounding (in float64 with only the weights rounded
to bfloat16, mlp_deep's first-layer gradient moves by 25%: pre-activations near zero flip ReLU masks).
So the step is checked where it is well-conditioned: the training-mode loss against the reference
(its error is at most ``2 max |d logits|``); the output layer's update against the float32 step, within
twice the logits bound (it is ``h^T (softmax - onehot) / N``, both factors as far off as the logits);
the batch-norm running statistics against the reference, in units of each channel's batch standard
deviation, within the bound; and the whole update against float32's in relative L2 norm, within 0.5
(measured: at most 0.19, mlp_deep and resnet20; a dropped, doubled, unscaled or sign-flipped update
is 1 or more).
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from adapters import FRAMEWORKS, load_adapter
from adapters.base import LOSS_SCALE_INIT, PRECISIONS, BuildOptions
from tests.precision_probe import ARCHS, EAGER_ARCHS, ENCODER, FLOAT16_ARCHS, batch
from tests.probes import Background
from tests.tolerances import Tol
from workloads.architectures import ARCHITECTURES, Architecture, get
from workloads.architectures.layers import BatchNorm, Conv, Dense, Layer, Recurrent, Residual, TransformerBlock
from workloads.architectures.reference import cross_entropy, forward

LOW_FWS = [fw for fw, info in FRAMEWORKS.items() if info.unsupported_reason("cpu", "bfloat16") is None]
UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11}
BOUND = 3.0  # times u * sqrt(depth), of the logits' scale (module docstring)
UPDATE_L2 = 0.5  # the whole SGD update against float32's, relative L2 (module docstring)
PRODUCTS: dict[type, int] = {Dense: 1, Conv: 1, Recurrent: 2, TransformerBlock: 6}  # on the longest path


def depth(layers: tuple[Layer, ...]) -> int:
    """Matrix products on the longest path: a recurrent layer's input and recurrent products; a
    transformer block's projection, q.k, p.v, output projection and two MLP products."""
    total = 0
    for layer in layers:
        if isinstance(layer, Residual):
            total += max(depth(layer.body), depth(layer.shortcut))
        else:
            total += PRODUCTS.get(type(layer), 0)
    return total


def bound(arch: Architecture, precision: str) -> float:
    return BOUND * UNIT_ROUNDOFF[precision] * math.sqrt(depth(arch.layers))


PROBE = "precision"  # what this module's tests read of the session's probes (tests/conftest.py)


@pytest.fixture(scope="module")
def probes(framework_probes: Background) -> dict[str, dict[str, np.ndarray]]:
    """The probe of every framework in ``LOW_FWS``, started as the session started (``tests/probes.py``)."""
    out = framework_probes.result(PROBE)
    assert set(out) == set(LOW_FWS)
    return out


def test_depths() -> None:
    assert {a: depth(get(a).layers) for a in ARCHS} == {
        "mlp_deep": 9,
        "lenet5": 5,
        "resnet_cifar[n=1]": 8,
        "gru": 3,
        ENCODER: 7,
    }


FORWARD = [(a, "bfloat16") for a in ARCHS] + [(a, "float16") for a in FLOAT16_ARCHS]


@pytest.mark.parametrize(("arch_name", "precision"), FORWARD)
@pytest.mark.parametrize("fw", LOW_FWS)
def test_forward_matches_float64_reference(
    probes: dict[str, dict[str, np.ndarray]], fw: str, arch_name: str, precision: str
) -> None:
    arch = get(arch_name)
    x, _ = batch(arch_name)
    expected = forward(arch, arch.init_variables(13), x)[0]
    got = probes[fw][f"{arch_name}/{precision}/logits"]
    assert got.dtype == np.float32  # logits come back float32
    Tol(scale=bound(arch, precision)).check(got, expected)
    assert np.abs(got - expected).max() >= UNIT_ROUNDOFF[precision] / 10 * np.abs(expected).max()  # ran low
    if arch_name in EAGER_ARCHS and precision == "bfloat16":
        Tol(scale=bound(arch, precision)).check(probes[fw][f"{arch_name}/{precision}/logits_eager"], expected)


@pytest.mark.parametrize(("arch_name", "precision"), FORWARD)
@pytest.mark.parametrize("fw", LOW_FWS)
def test_one_training_step(probes: dict[str, dict[str, np.ndarray]], fw: str, arch_name: str, precision: str) -> None:
    p, arch = probes[fw], get(arch_name)
    params, (x, y) = arch.init_variables(13), batch(arch_name)
    logits, state = forward(arch, params, x, training=True)
    tol = bound(arch, precision)
    loss = float(p[f"{arch_name}/{precision}/loss"])
    assert abs(loss - cross_entropy(logits, y)) <= 2 * tol * np.abs(logits).max()

    trainable = [k for k in params if k not in state]
    moved = {k: p[f"{arch_name}/{precision}/w/{k}"] - params[k] for k in trainable}
    moved32 = {k: p[f"{arch_name}/float32/w/{k}"] - params[k] for k in trainable}
    head = f"{len(arch.layers) - 1}.kernel"
    Tol(scale=2 * tol).check(moved[head], moved32[head], err_msg=head)  # h^T (softmax - onehot): both err
    diff = math.sqrt(sum(float(((moved[k] - moved32[k]) ** 2).sum()) for k in trainable))
    assert diff <= UPDATE_L2 * math.sqrt(sum(float((v**2).sum()) for v in moved32.values()))

    for k in trainable:  # master weights: float32 after the step, not values of the low dtype
        w = p[f"{arch_name}/{precision}/w/{k}"]
        assert w.dtype == np.float32
        assert np.any(moved[k] != 0), f"{k} did not move"
    values = np.concatenate([p[f"{arch_name}/{precision}/w/{k}"].ravel() for k in trainable])
    assert np.mean(values.view(np.uint32) & 0xFFFF != 0) > 0.9  # bfloat16 values have 16 zero low bits
    assert np.mean(values != values.astype(np.float16)) > 0.9

    for path, layer, _ in arch.leaves():  # running statistics: in units of the batch's per-channel spread
        if isinstance(layer, BatchNorm):
            m, mean, var = layer.momentum, f"{path}.running_mean", f"{path}.running_var"
            batch_var = (state[var] - (1 - m) * params[var]) / m
            spread = float(np.sqrt(batch_var.max()))
            assert np.abs(p[f"{arch_name}/{precision}/w/{mean}"] - state[mean]).max() <= m * tol * spread, mean
            assert np.abs(p[f"{arch_name}/{precision}/w/{var}"] - state[var]).max() <= 2 * m * tol * spread**2, var


@pytest.mark.parametrize("fw", LOW_FWS)
def test_float16_loss_scaling_skips_non_finite_steps(probes: dict[str, dict[str, np.ndarray]], fw: str) -> None:
    """An inf in the input makes every gradient non-finite: the step is skipped (no weight moves) and the
    scale halves; the next, finite, step updates and keeps the scale."""
    p = probes[fw]
    np.testing.assert_array_equal(p["scaling/scales"], [LOSS_SCALE_INIT, LOSS_SCALE_INIT / 2, LOSS_SCALE_INIT / 2])
    assert not np.isfinite(p["scaling/losses"][0]) and np.isfinite(p["scaling/losses"][1])
    assert p["scaling/moved"][0] == 0 and p["scaling/moved"][1] > 0
    # an overflow of the scaled backward pass (the residual MLP's at 2**15): skipped, or not, consistently
    assert (float(p["overflow/scale"]), float(p["overflow/moved"]) == 0) in (
        (LOSS_SCALE_INIT, False),
        (LOSS_SCALE_INIT / 2, True),
    )


@pytest.mark.parametrize("fw", LOW_FWS)
def test_runtime_records_precision(probes: dict[str, dict[str, np.ndarray]], fw: str) -> None:
    for precision in ("bfloat16", "float16"):
        info = json.loads(str(probes[fw][f"runtime/{precision}"]))
        assert info["precision"] == info["compute_dtype"] == precision
        assert info["loss_scaling"].startswith("dynamic") == (precision == "float16")


def test_capabilities_say_what_cannot_run_and_why() -> None:
    for fw, info in FRAMEWORKS.items():
        assert set(info.precisions) <= set(PRECISIONS) and "float32" in info.precisions
        for device, precision in itertools.product(info.devices, PRECISIONS):
            reason = info.unsupported_reason(device, precision)
            assert reason is None or (precision in reason and len(reason) > 60), (fw, device, precision)
    mxnet = FRAMEWORKS["mxnet"]
    assert "AVX-512" in str(mxnet.unsupported_reason("cpu", "bfloat16"))
    assert "FP16 gemm on cpu not implemented" in str(mxnet.unsupported_reason("cpu", "float16"))
    for fw in ("jax", "tensorflow"):
        assert "bfloat16" in str(FRAMEWORKS[fw].unsupported_reason("tpu", "float16"))
        assert FRAMEWORKS[fw].unsupported_reason("tpu", "bfloat16") is None
    assert set(LOW_FWS) == {"torch", "tensorflow", "jax"}


def test_adapter_refuses_what_its_framework_cannot_run() -> None:
    """The same reason at build time, before the framework does anything (torch on a TPU)."""
    arch = ARCHITECTURES["logreg"]
    with pytest.raises(ValueError, match="does not support device 'tpu'"):
        load_adapter("torch")(arch, arch.init_variables(0), BuildOptions(device="tpu", precision="bfloat16"))
