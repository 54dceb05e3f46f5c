"""Shared fixtures: an isolated cache, and GPU/TPU markers that skip cleanly without the device."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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


@pytest.fixture(scope="session", autouse=True)
def framework_probes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, _isolated_cache: None
) -> Iterator[Any]:
    """Every framework's parity and precision probes (``tests/probes.py``), started in the background as
    the session starts, when a test that reads them was collected: ``tests.probes.Background``, whose
    ``result(KIND)`` waits for that probe in every framework. A module declares the probe its tests
    read as ``PROBE``, and its ``probes`` fixture reads it from this one; None when no such test runs."""
    from tests.probes import Background, frameworks

    modules = [
        getattr(item, "module", None) for item in request.session.items if "probes" in getattr(item, "fixturenames", ())
    ]
    needed = {str(getattr(module, "PROBE", "")) for module in modules} - {""}
    if not needed:
        yield None
        return
    kinds = {
        fw: [kind for kind in sorted(needed) if fw in frameworks(kind)]
        for fw in dict.fromkeys(fw for kind in sorted(needed) for fw in frameworks(kind))
    }
    background = Background(tmp_path_factory.mktemp("probes"), kinds)
    yield background
    background.close()


def is_trial_worker(proc: Any) -> bool:
    """A trial's worker process (psutil): a fresh ``python -m harness.worker`` or a fork server's child."""
    cmdline = " ".join(proc.cmdline())
    return proc.name() == "harness-trial" or ("harness.worker" in cmdline and "forkserver" not in cmdline)


@dataclass
class InProcess:
    """What ``harness ARGS`` did when run in this process: its exit code and what it printed."""

    code: int
    stdout: str
    stderr: str


def harness_in_process(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], cwd: Path, *args: str
) -> InProcess:
    """``harness ARGS`` through ``harness.cli.main`` in this process, as tests/test_cli.py's ``harness()``
    runs it in a subprocess: in ``cwd``, the runs and the MLflow store under it, no ``RAY_ADDRESS``, the
    consoles as a pipe gets them (200 columns, no colour), argparse's exits as exit codes. For commands
    that refuse their input or only print: the same code and words without an interpreter's start-up."""
    before = set(os.environ)
    from rich.console import Console

    from harness import cli

    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HARNESS_RUNS_DIR", str(cwd / "runs"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{cwd / 'mlflow.db'}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(cli, "console", Console(highlight=False, width=200))
    monkeypatch.setattr(cli, "err_console", Console(stderr=True, highlight=False, width=200))
    capsys.readouterr()  # only this command's output
    try:
        code = cli.main(list(args))
    except SystemExit as e:  # argparse: --help, or arguments it refuses
        code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    finally:  # the defaults harness.track and main set (MLflow's HTTP retries, log level): this test's only
        for key in set(os.environ) - before:
            monkeypatch.setenv(key, os.environ.pop(key))
    out = capsys.readouterr()
    return InProcess(code, out.out, out.err)


@pytest.fixture(scope="session")
def doctors(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``harness doctor`` as tests/test_cli.py runs it, twice at once, each in its own folder with its
    own embedded Ray: as set up (``"ok"``), and with JAX's interpreter missing (``"no_jax"``). Each
    imports every framework and starts a Ray; neither is timed, so they need not wait for each other."""
    from tests.test_cli import harness

    # the folders each test's tmp_path was (the table's columns, so where words wrap, follow the paths)
    ok, no_jax = (
        tmp_path_factory.mktemp(name) for name in ("test_doctor_checks_everything", "test_doctor_reports_missing_fr")
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        runs = {
            "ok": pool.submit(harness, ok, "doctor", timeout=180),
            "no_jax": pool.submit(
                harness, no_jax, "doctor", env={"HARNESS_PYTHON_JAX": str(no_jax / "nope" / "python")}, timeout=180
            ),
        }
        return {name: run.result() for name, run in runs.items()}
