"""Shared fixtures: an isolated cache, and GPU/TPU markers that skip cleanly without the device."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest


def _has_cuda() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _has_tpu() -> bool:
    try:
        import jax

        return any(d.platform == "tpu" for d in jax.devices())
    except (ImportError, RuntimeError):
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    checks = {"gpu": _has_cuda, "tpu": _has_tpu}
    available: dict[str, bool] = {}
    for item in items:
        for marker, check in checks.items():
            if marker in item.keywords:
                if marker not in available:
                    available[marker] = check()
                if not available[marker]:
                    item.add_marker(pytest.mark.skip(reason=f"needs a {marker.upper()}; none on this machine"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Datasets and GEMM calibrations go to a per-session cache, not the user's."""
    os.environ["HARNESS_CACHE"] = str(tmp_path_factory.mktemp("cache"))


REPO = Path(__file__).resolve().parent.parent


def is_trial_worker(proc: Any) -> bool:
    """A trial's worker process (psutil): a fresh ``python -m harness.worker`` or a fork server's child."""
    cmdline = " ".join(proc.cmdline())
    return proc.name() == "harness-trial" or ("harness.worker" in cmdline and "forkserver" not in cmdline)
