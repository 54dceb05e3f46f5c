"""Which Python interpreter serves each framework, and whether it can.

Resolution order for framework ``fw``: the ``HARNESS_PYTHON_<FW>`` environment variable, then a
per-framework venv at ``$HARNESS_VENVS/<fw>/bin/python`` (default ``<project>/.venvs``), then the
interpreter running the harness. Probes run in a subprocess of that interpreter, so a framework that
cannot live beside the driver (MXNet needs numpy 1.23) is still found and checked.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from adapters import FRAMEWORKS

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def venvs_dir() -> Path:
    return Path(os.environ.get("HARNESS_VENVS", PROJECT_ROOT / ".venvs"))


def interpreter(framework: str) -> str:
    override = os.environ.get(f"HARNESS_PYTHON_{framework.upper()}")
    if override:
        return override
    venv_python = venvs_dir() / framework / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


@dataclass(frozen=True)
class EnvStatus:
    framework: str
    interpreter: str
    version: str | None
    problem: str | None  # None: usable
    fix: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


def probe(framework: str, import_it: bool = False, timeout_s: float = 120.0) -> EnvStatus:
    """Find the framework's version in its interpreter; with ``import_it`` really import it."""
    info = FRAMEWORKS[framework]
    python = interpreter(framework)
    fix = f"run `make setup` (or set HARNESS_PYTHON_{framework.upper()} to an interpreter that has it)"
    if import_it:
        code = f"import {info.import_name} as m; print(m.__version__)"
    else:  # metadata only: fast, and finds tensorflow whether it came as tensorflow or tensorflow-cpu
        code = (
            "import importlib.metadata as m, sys\n"
            f"d = m.packages_distributions().get({info.import_name!r})\n"
            "print(m.version(d[0])) if d else sys.exit('no distribution provides it')"
        )
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        return EnvStatus(framework, python, None, f"interpreter {python} does not exist", fix)
    except subprocess.TimeoutExpired:
        return EnvStatus(framework, python, None, f"importing {framework} took over {timeout_s:.0f} s", fix)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        what = "cannot import" if import_it else "is not installed in"
        return EnvStatus(framework, python, None, f"{framework} {what} {python}: {last}", fix)
    return EnvStatus(framework, python, proc.stdout.strip(), None, None)


def unavailable(frameworks: Iterable[str]) -> dict[str, str]:
    """Framework -> why this node cannot run it and how to fix that (only those it cannot run)."""
    return {fw: f"{st.problem}; {st.fix}" for fw, st in probe_many(frameworks).items() if not st.ok}


def probe_many(frameworks: Iterable[str], import_it: bool = False) -> dict[str, EnvStatus]:
    """:func:`probe` for several frameworks at once (each is a subprocess: they run side by side)."""
    names = list(dict.fromkeys(frameworks))
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        return dict(zip(names, pool.map(lambda fw: probe(fw, import_it), names), strict=True))


def probe_all(import_it: bool = False) -> dict[str, EnvStatus]:
    return probe_many(FRAMEWORKS, import_it)
