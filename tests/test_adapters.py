"""Conformance suite: the same assertions for every adapter and every architecture."""

from __future__ import annotations

import functools
import importlib.util
import subprocess
import sys

import numpy as np
import pytest

from adapters import FRAMEWORKS, load_adapter
from adapters.base import RUNTIME_KEYS, Adapter, BuildOptions
from harness.envs import interpreter
from tests.tolerances import REFERENCE_LOGITS, REFERENCE_LOSS, REFERENCE_STATS
from workloads.architectures import ARCHITECTURES, Architecture
from workloads.architectures.reference import cross_entropy, forward
from workloads.datasets import synthetic

# Frameworks importable here run in this process; the others (MXNet: its own venv) run this same
# file under their own interpreter, from test_conformance_in_framework_env below.
FWS = [fw for fw, info in FRAMEWORKS.items() if importlib.util.find_spec(info.import_name)]
ELSEWHERE = [fw for fw in FRAMEWORKS if fw not in FWS and interpreter(fw) != sys.executable]
ARCHS = list(ARCHITECTURES)


def build(fw: str, arch: Architecture, seed: int = 0, **opts: object) -> Adapter:
    options = BuildOptions(threads=2, **opts)  # type: ignore[arg-type]
    return load_adapter(fw)(arch, arch.init_variables(seed), options)


# The LSTM's small embeddings and saturating gates make plain SGD slow at 0.05 (torch: 5% in 20 steps).
FIT_LR = {("lstm", "sgd"): 1.0}


def perturbed_state(arch: Architecture, seed: int) -> dict[str, np.ndarray]:
    """Canonical initial weights with running statistics away from their (0, 1) start."""
    variables = arch.init_variables(seed)
    rng = np.random.default_rng(seed)
    for key, shape in arch.state_layout().items():
        low, high = (-0.5, 0.5) if key.endswith("mean") else (0.5, 2.0)
        variables[key] = rng.uniform(low, high, shape).astype(np.float32)
    return variables


@functools.cache
def reference_eval(arch_name: str) -> tuple[np.ndarray, np.ndarray]:
    """A batch and its float64 reference logits in eval mode (shared by every framework's test)."""
    arch = ARCHITECTURES[arch_name]
    x, _ = synthetic(arch.input_shape, arch.num_classes, 8, seed=9, vocab_size=arch.vocab_size)
    return x, forward(arch, perturbed_state(arch, seed=8), x, training=False)[0]


@functools.cache
def reference_train(arch_name: str) -> tuple[np.ndarray, np.ndarray, float, dict[str, np.ndarray]]:
    """A training batch, its reference loss in training mode and the running statistics after it."""
    arch = ARCHITECTURES[arch_name]
    x, y = synthetic(arch.input_shape, arch.num_classes, 32, seed=3, vocab_size=arch.vocab_size)
    logits, state = forward(arch, perturbed_state(arch, seed=10), x, training=True)
    return x, y, cross_entropy(logits, y), state


def assert_close_to_reference(got: np.ndarray, expected: np.ndarray) -> None:
    """float32 against float64, relative to the logits' scale (see tests/tolerances.py)."""
    assert got.shape == expected.shape
    REFERENCE_LOGITS.check(got, expected)


@pytest.mark.parametrize("arch_name", ARCHS)
@pytest.mark.parametrize("fw", FWS)
class TestConformance:
    def test_param_count_matches_spec(self, fw: str, arch_name: str) -> None:
        arch = ARCHITECTURES[arch_name]
        assert build(fw, arch).native_param_count() == arch.param_count()

    def test_export_of_load_is_identity(self, fw: str, arch_name: str) -> None:
        arch = ARCHITECTURES[arch_name]
        params = arch.init_variables(7)
        adapter = build(fw, arch)
        adapter.load_params(params)
        exported = adapter.export_params()
        assert set(exported) == set(params)
        for key, value in params.items():
            assert exported[key].dtype == np.float32
            np.testing.assert_array_equal(exported[key], value, err_msg=key)

    def test_infer_matches_numpy_reference_fast_and_eager(self, fw: str, arch_name: str) -> None:
        """Eval mode, in the default (fast) and the eager build, against the float64 reference."""
        arch = ARCHITECTURES[arch_name]
        variables = perturbed_state(arch, seed=8)
        x, expected = reference_eval(arch_name)
        for compile_ in ("auto", "off"):
            options = BuildOptions(threads=2, trainable=False, compile=compile_)
            adapter = load_adapter(fw)(arch, variables, options)
            assert adapter.compile_mode in FRAMEWORKS[fw].compile_modes
            if compile_ == "off":
                assert adapter.compile_mode == "eager"
            assert_close_to_reference(adapter.to_numpy(adapter.infer(adapter.to_device(x))), expected)

    def test_rejects_wrong_params(self, fw: str, arch_name: str) -> None:
        arch = ARCHITECTURES[arch_name]
        adapter = build(fw, arch)
        params = arch.init_variables(0)
        params.pop(next(iter(params)))
        with pytest.raises(ValueError, match="expected parameters"):
            adapter.load_params(params)

    @pytest.mark.parametrize("optimizer", ["sgd", "adam"])
    def test_training(self, fw: str, arch_name: str, optimizer: str) -> None:
        """One build per optimiser (a compile each for XLA/jit) checks, on one fixed batch:

        the first loss (training mode) and the updated running statistics against the reference;
        twenty steps bring the loss well down (the model can fit the batch); load_params resets
        weights, state and optimiser (the first loss comes back).
        """
        arch = ARCHITECTURES[arch_name]
        variables = perturbed_state(arch, seed=10)
        lr = FIT_LR.get((arch_name, optimizer), 0.05 if optimizer == "sgd" else 5e-3)
        options = BuildOptions(threads=2, optimizer=optimizer, learning_rate=lr)  # type: ignore[arg-type]
        adapter = load_adapter(fw)(arch, variables, options)
        x, y, expected_loss, expected_state = reference_train(arch_name)
        xd, yd = adapter.to_device(x), adapter.to_device(y)
        losses = [float(adapter.to_numpy(adapter.train_step(xd, yd)))]
        REFERENCE_LOSS.check(np.array(losses[0]), np.array(expected_loss))
        exported = adapter.export_params()
        for key, value in expected_state.items():
            assert not np.array_equal(value, variables[key])
            REFERENCE_STATS.check(exported[key], value, err_msg=key)
        losses += [float(adapter.to_numpy(adapter.train_step(xd, yd))) for _ in range(19)]
        assert np.isfinite(losses).all()
        assert min(losses[-5:]) < 0.8 * losses[0], losses
        adapter.load_params(variables)
        again = float(adapter.to_numpy(adapter.train_step(xd, yd)))
        assert again == pytest.approx(losses[0], rel=1e-6)


@pytest.mark.parametrize("fw", FWS)
def test_sync_leaves_no_pending_work(fw: str) -> None:
    """After sync() every output is finished: the clock may be read."""
    arch = ARCHITECTURES["mlp_deep"]
    adapter = build(fw, arch)
    x, y = synthetic(arch.input_shape, arch.num_classes, 4096, seed=6, vocab_size=arch.vocab_size)
    xd, yd = adapter.to_device(x), adapter.to_device(y)
    for _ in range(3):
        adapter.train_step(xd, yd)
    adapter.sync()
    assert adapter.ready()
    adapter.infer(xd)
    adapter.sync()
    assert adapter.ready()


@pytest.mark.parametrize("fw", FWS)
def test_runtime_reports_threads_and_precision(fw: str) -> None:
    adapter = build(fw, ARCHITECTURES["mlp_shallow"])
    info = adapter.runtime()
    assert set(RUNTIME_KEYS) <= set(info)  # the keys every framework reports
    assert info["threads"] == adapter.options.threads == 2
    assert info["execution_mode"] == adapter.compile_mode
    assert "highest" in str(info["matmul_precision"]).lower()  # float32 matmul precision pinned


@pytest.mark.parametrize("fw", [fw for fw in FWS if FRAMEWORKS[fw].options])
def test_framework_options_are_applied(fw: str) -> None:
    arch = ARCHITECTURES["cnn1d"]
    for value in (True, False):
        adapter = build(fw, arch, trainable=False, extra=dict.fromkeys(FRAMEWORKS[fw].options, value))
        info = adapter.runtime_info()
        assert all(info[k] is value for k in FRAMEWORKS[fw].options), info
        x, _ = synthetic(arch.input_shape, arch.num_classes, 4, seed=2, vocab_size=arch.vocab_size)
        assert adapter.to_numpy(adapter.infer(adapter.to_device(x))).shape == (4, arch.num_classes)


@pytest.mark.parametrize("fw", ELSEWHERE)
def test_conformance_in_framework_env(fw: str) -> None:
    """The conformance suite above, run by the framework's own interpreter."""
    proc = subprocess.run(
        [interpreter(fw), "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", fw],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


@pytest.mark.gpu
@pytest.mark.parametrize("fw", [fw for fw in FWS if "gpu" in FRAMEWORKS[fw].devices])
def test_gpu_train_step(fw: str) -> None:
    arch = ARCHITECTURES["cnn1d"]
    adapter = build(fw, arch, device="gpu")
    x, y = synthetic(arch.input_shape, arch.num_classes, 64, seed=1, vocab_size=arch.vocab_size)
    loss = adapter.train_step(adapter.to_device(x), adapter.to_device(y))
    adapter.sync()
    assert np.isfinite(adapter.to_numpy(loss))
    assert (adapter.device_memory_peak_mb() or 0) > 0
