"""Device telemetry (harness.worker.telemetry): NVML memory and energy, RAPL on a fake powercap tree."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from harness import metrics as M
from harness.worker import node, telemetry
from harness.worker.measure import Timing
from harness.worker.scenarios import Energy


def _domain(root: Path, name: str, label: str, energy_uj: int, max_uj: int = 10_000_000) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(f"{label}\n")
    (d / "energy_uj").write_text(f"{energy_uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


@pytest.fixture
def powercap(tmp_path: Path) -> Path:
    """Two packages, a core subdomain and an MMIO domain (neither is a package, neither is added)."""
    root = tmp_path / "powercap"
    _domain(root, "intel-rapl:0", "package-0", 1_000_000)
    _domain(root, "intel-rapl:1", "package-1", 9_000_000)
    _domain(root, "intel-rapl:0:0", "core", 500_000)
    _domain(root, "intel-rapl-mmio:0", "package-0", 0)
    return root


def _set(root: Path, name: str, energy_uj: int) -> None:
    (root / name / "energy_uj").write_text(f"{energy_uj}\n")


def test_rapl_adds_the_packages_and_their_wrap_around(powercap: Path) -> None:
    meter, what = telemetry.rapl(powercap)
    assert meter is not None and what.startswith("rapl: 2 package domain(s)") and "package-1" in what
    assert meter.joules() == 0.0
    _set(powercap, "intel-rapl:0", 3_000_000)  # +2 J
    _set(powercap, "intel-rapl:0:0", 9_000_000)  # a subdomain: already in its package
    assert meter.joules() == pytest.approx(2.0)
    _set(powercap, "intel-rapl:1", 500_000)  # wrapped at 10 J: +1.5 J
    assert meter.joules() == pytest.approx(3.5)
    _set(powercap, "intel-rapl:0", 3_250_000)
    assert meter.joules() == pytest.approx(3.75)


def test_rapl_says_why_it_cannot_read(tmp_path: Path, powercap: Path) -> None:
    assert telemetry.rapl(tmp_path / "nope") == (None, f"RAPL: {tmp_path / 'nope'} does not exist")
    empty = tmp_path / "empty"
    empty.mkdir()
    meter, why = telemetry.rapl(empty)
    assert meter is None and "no package domains" in why
    (powercap / "intel-rapl:1" / "energy_uj").unlink()  # what a non-root worker meets: energy_uj unreadable
    meter, why = telemetry.rapl(powercap)
    assert meter is None and why.startswith(f"RAPL: {powercap} is not readable")


def test_the_powercap_root_is_overridable(monkeypatch: pytest.MonkeyPatch, powercap: Path) -> None:
    monkeypatch.setenv(telemetry.POWERCAP_ENV, str(powercap))
    meter, _ = telemetry.open_energy("cpu")
    assert isinstance(meter, telemetry.Rapl) and meter.source == "rapl"
    telemetry.energy_info.cache_clear()
    try:
        assert telemetry.energy_info()["cpu"].startswith("rapl: 2 package domain(s)")
    finally:
        telemetry.energy_info.cache_clear()


def test_the_node_record_says_where_energy_comes_from_or_why_not() -> None:
    energy = node.node_info()["energy"]
    assert set(energy) == {"cpu", "gpu"} and all(isinstance(v, str) and v for v in energy.values())
    if not Path(telemetry.POWERCAP_ROOT).exists():  # this VM: the reason, once per node
        assert energy["cpu"] == "RAPL: /sys/class/powercap does not exist"
    assert telemetry.open_energy("tpu") == (None, "no energy counter for tpu trials")


def test_energy_per_sample_over_the_timed_part(powercap: Path) -> None:
    meter, _ = telemetry.rapl(powercap)
    energy = Energy(meter)
    energy.begin()
    _set(powercap, "intel-rapl:0", 5_000_000)  # 4 J over 2 windows of 10 steps x 8 samples in 2 s
    got = energy.metrics(Timing(0.1, [1.0, 1.0], 10), samples_per_step=8)
    assert got == {M.ENERGY_J_PER_SAMPLE: pytest.approx(4.0 / 160), M.POWER_W: pytest.approx(2.0)}
    assert Energy(None).metrics(Timing(0.1, [1.0], 1), 8) == {}
    still = Energy(meter)
    still.begin()
    assert still.metrics(Timing(0.1, [1.0], 1), 8) == {}  # a counter that did not advance: no figure


def test_nvml_memory_without_a_gpu_is_absent_with_a_reason() -> None:
    if telemetry._nvml()[0] is not None:
        pytest.skip("NVML starts here")
    sampler = telemetry.NvmlMemory().start()
    assert sampler.stop() is None
    assert sampler.reason and ("NVML did not start" in sampler.reason or "not installed" in sampler.reason)
    meter, why = telemetry.open_energy("gpu")
    assert meter is None and why == sampler.reason


def test_without_pynvml_nvml_is_absent_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    sampler = telemetry.NvmlMemory().start()
    assert sampler.stop() is None and sampler.reason == "pynvml (nvidia-ml-py) is not installed in this interpreter"


@pytest.mark.gpu
def test_nvml_sees_this_process_s_gpu_memory_and_energy() -> None:
    import torch

    sampler = telemetry.NvmlMemory(interval_s=0.01).start()
    meter, what = telemetry.open_energy("gpu")
    assert meter is not None, what
    a = torch.ones((8192, 8192), device="cuda")  # 256 MiB
    for _ in range(50):
        a = (a @ a).clamp(-1, 1)
    torch.cuda.synchronize()
    peak = sampler.stop()
    assert peak is not None and peak >= 256, sampler.reason
    assert meter.joules() > 0
    assert float(np.asarray(a.cpu()).mean()) <= 1
