"""The node record of every result (:mod:`harness.worker.node`): fields here, TPU from the environment,
GPUs through a stand-in NVML, and what is said when NVML is absent."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from harness.worker import node
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def _fresh() -> Any:
    node._node_info.cache_clear()
    yield
    node._node_info.cache_clear()


def test_fields_present_on_this_machine() -> None:
    info = node.node_info()
    assert json.loads(json.dumps(info)) == info  # goes into the journal and MLflow as it is
    assert info["hostname"] == socket.gethostname()
    assert info["cpu_model"]
    assert info["cpu_logical"] == os.cpu_count()
    if sys.platform.startswith("linux"):
        assert 1 <= info["cpu_physical"] <= info["cpu_logical"]
        assert 1 <= info["cpu_sockets"] <= info["cpu_physical"]
        assert info["memory_total_mb"] > 100
    assert isinstance(info["gpu"], list) and isinstance(info["tpu"], dict)
    assert isinstance(info["nvml"], str) and info["nvml"]
    assert info["nvml"] == "ok" or not any(g["memory_total_mb"] for g in info["gpu"])  # memory comes from NVML


def test_cached_per_process_and_a_copy() -> None:
    first = node.node_info()
    first["gpu"].append({"name": "changed by a caller"})
    assert node.node_info()["gpu"] != first["gpu"]
    assert node._node_info.cache_info().hits >= 1


TPU_VARS = {
    "TPU_ACCELERATOR_TYPE": "v4-16",
    "TPU_TOPOLOGY": "2x2x2",
    "TPU_WORKER_ID": "1",
    "TPU_NAME": "my-slice",
    "TPU_WORKER_HOSTNAMES": "host-0,host-1",
}


def test_tpu_fields_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in node.TPU_ENV.values():
        monkeypatch.delenv(var, raising=False)
    for var, value in TPU_VARS.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(node, "tpu_chips", lambda: 4)
    tpu = node.node_info()["tpu"]
    assert tpu == {
        "accelerator_type": "v4-16",
        "topology": "2x2x2",
        "worker_id": 1,
        "name": "my-slice",
        "worker_hostnames": "host-0,host-1",
        "chips": 4,
    }


def test_no_tpu_is_an_empty_record(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in node.TPU_ENV.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(node, "tpu_chips", lambda: 0)
    assert node.node_info()["tpu"] == {}


def test_nvml_absent_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    monkeypatch.setattr(node, "NVIDIA_PROC", tmp_path / "no-driver")
    info = node.node_info()
    assert info["gpu"] == []
    assert "not installed" in info["nvml"]
    assert "gpu_driver" not in info


def test_nvml_that_does_not_start_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class LibraryNotFound(Exception):
        pass

    def init() -> None:
        raise LibraryNotFound("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=init))
    monkeypatch.setattr(node, "NVIDIA_PROC", tmp_path / "no-driver")
    info = node.node_info()
    assert info["gpu"] == [] and info["nvml"] == "NVML did not start: LibraryNotFound: NVML Shared Library Not Found"


def _fake_nvml() -> types.SimpleNamespace:
    gpus = [("NVIDIA H200", "GPU-aaaa-1111", 143771 * 2**20), ("NVIDIA H200", "GPU-bbbb-2222", 143771 * 2**20)]
    return types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: b"570.86.15",  # bytes in older bindings
        nvmlSystemGetCudaDriverVersion=lambda: 12080,
        nvmlDeviceGetCount=lambda: len(gpus),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: gpus[h][0],
        nvmlDeviceGetUUID=lambda h: gpus[h][1],
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=gpus[h][2], used=0, free=gpus[h][2]),
    )


def test_gpus_from_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    info = node.node_info()
    assert info["nvml"] == "ok"
    assert info["gpu_driver"] == "570.86.15" and info["cuda_driver"] == "12.8"
    assert [(g["index"], g["name"], g["memory_total_mb"], g["visible"]) for g in info["gpu"]] == [
        (0, "NVIDIA H200", 143771.0, False),
        (1, "NVIDIA H200", 143771.0, True),
    ]


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, [True, True]),
        ("", [False, False]),
        ("0", [True, False]),
        ("GPU-bbbb", [False, True]),
        ("-1", [False, False]),
    ],
)
def test_cuda_visible_devices(visible: str | None, expected: list[bool]) -> None:
    assert [node._visible(i, u, visible) for i, u in enumerate(("GPU-aaaa-1111", "GPU-bbbb-2222"))] == expected


def test_gpus_from_procfs_without_nvml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = tmp_path / "nvidia"
    (root / "gpus" / "0000:17:00.0").mkdir(parents=True)
    (root / "version").write_text(
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\nGCC version:\n"
    )
    (root / "gpus" / "0000:17:00.0" / "information").write_text(
        "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 16\nGPU UUID: \t GPU-1234\nBus Location: \t 0000:17:00.0\n"
    )
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setattr(node, "NVIDIA_PROC", root)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    info = node.node_info()
    assert info["gpu_driver"] == "550.54.15"
    assert info["gpu"] == [
        {"index": 0, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1234", "memory_total_mb": None, "visible": True}
    ]
    assert "not installed" in info["nvml"]


def test_imports_in_the_mxnet_interpreter() -> None:
    """Worker side: the standard library only, so it loads in MXNet's older-numpy environment too."""
    python = REPO / ".venvs" / "mxnet" / "bin" / "python"
    if not python.exists():
        pytest.skip("no MXNet environment (make setup)")
    code = "import json; from harness.worker.node import node_info; print(json.dumps(node_info()))"
    out = subprocess.run([str(python), "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["hostname"] == socket.gethostname()
