"""Every framework's probes for the test suite, one interpreter per framework, run in the background.

``python -m tests.probes FRAMEWORK OUTDIR KIND ...`` runs, in that framework's interpreter, the probes
named (``parity``: :mod:`tests.parity_probe` over its default architectures; ``precision``:
:mod:`tests.precision_probe`) one after the other and writes ``OUTDIR/KIND-FRAMEWORK.npz`` for each:
the same numbers as each probe's own ``python -m``, with TensorFlow, JAX, torch or MXNet imported and
warmed up once for both.

The session fixture ``framework_probes`` (``tests/conftest.py``) starts them all as the session starts,
as :class:`Background`: two interpreters at a time, longest first, at idle CPU priority, so they use
what the other tests leave of the cores (those wait on Ray, MLflow and subprocesses much of the time)
and slow them by next to nothing; ``tests/test_parity.py`` and ``tests/test_precision.py`` then wait
only for what is left. They compute the same numbers whatever runs beside them (parity and precision
are numeric, not timings). The probes are no descendants of the test process: tests that look through
its children (``psutil``), or pin them to a driver's reserved cores (``harness.schedule``), never
meet them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

KINDS = ("parity", "precision")
LONGEST_FIRST = ("tensorflow", "jax", "torch", "mxnet")  # both probes: about 170, 110, 50 and 10 s alone here


def frameworks(kind: str) -> list[str]:
    """The frameworks a probe runs in: parity in every one, precision where a low precision runs on CPU."""
    from adapters import FRAMEWORKS

    if kind == "parity":
        return list(FRAMEWORKS)
    assert kind == "precision", kind
    return [fw for fw, info in FRAMEWORKS.items() if info.unsupported_reason("cpu", "bfloat16") is None]


def run_probes(framework: str, outdir: Path, kinds: list[str]) -> None:
    """In the framework's interpreter: each probe named, its results to ``outdir/KIND-FRAMEWORK.npz``."""
    for kind in kinds:
        if kind == "parity":
            from tests.parity_probe import PROBED
            from tests.parity_probe import probe as parity

            out = parity(framework, PROBED)
        elif kind == "precision":
            from tests.precision_probe import probe as precision

            out = precision(framework)
        else:
            raise ValueError(f"no probe {kind!r} (one of {', '.join(KINDS)})")
        np.savez(outdir / f"{kind}-{framework}.npz", **out)  # type: ignore[arg-type]


# The background runner, started by Background in two steps (``python -c`` of this text under the test's
# interpreter, ``sys.argv[1:]``: the test process's pid, the folder, then FRAMEWORK=PYTHON:KIND,KIND
# per framework, longest first). It forks and exits, so the runner left is an orphan and no descendant
# of the test process; the runner, at idle priority (its probes inherit it), runs the probes two at a
# time, each writing its log to FOLDER/FRAMEWORK.log and, when done, its exit code to FRAMEWORK.rc. It
# kills its probes on SIGTERM (the session's end) and when the test process is gone; on SIGUSR1 (a test
# waits for them) it puts itself and its probes back at normal priority where it may.
RUNNER = r"""
import os, signal, subprocess, sys, threading, time
from concurrent.futures import ThreadPoolExecutor
parent, root, jobs = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
running, done, promoted = {}, threading.Event(), threading.Event()

def normal_priority(*_):
    promoted.set()
    for pid in [os.getpid(), *(p.pid for p in list(running.values()))]:
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            tids = [pid]
        for tid in tids:
            try:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, tid, 0)
            except (AttributeError, OSError):
                pass

def stop(*_):
    done.set()
    for p in list(running.values()):
        p.kill()

def run(job):
    fw, rest = job.split("=", 1)
    python, kinds = rest.split(":", 1)
    rc = -1
    if not done.is_set():
        with open(os.path.join(root, fw + ".log"), "w") as log:
            p = running[fw] = subprocess.Popen(
                [python, "-m", "tests.probes", fw, root, *kinds.split(",")], stdout=log, stderr=log
            )
            if promoted.is_set():  # perhaps since the fork
                normal_priority()
            if done.is_set():
                p.kill()
            rc = p.wait()
    with open(os.path.join(root, fw + ".rc.tmp"), "w") as f:
        f.write(str(rc))
    os.replace(os.path.join(root, fw + ".rc.tmp"), os.path.join(root, fw + ".rc"))

def watch_parent():
    while not done.wait(1):
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            stop()

signal.signal(signal.SIGUSR1, normal_priority)  # before the fork: the runner has them from its start
signal.signal(signal.SIGTERM, stop)
child = os.fork()
if child:
    with open(os.path.join(root, "runner.pid.tmp"), "w") as f:
        f.write(str(child))
    os.replace(os.path.join(root, "runner.pid.tmp"), os.path.join(root, "runner.pid"))
    os._exit(0)
log = os.open(os.path.join(root, "runner.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
os.dup2(log, 1)  # not the caller's pipes: it waits for them to close
os.dup2(log, 2)
try:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
except (AttributeError, OSError):
    os.nice(19)
threading.Thread(target=watch_parent, daemon=True).start()
with ThreadPoolExecutor(max_workers=2) as pool:
    futures = [pool.submit(run, job) for job in jobs]
    while not all(f.done() for f in futures):
        time.sleep(0.2)  # not a blocking wait: the main thread runs the signal handlers
done.set()
"""


class Background:
    """Every framework's probes (``kinds``: framework -> the probes it runs), started now in the
    background (module docstring); :meth:`result` waits for those of one kind."""

    def __init__(self, root: Path, kinds: dict[str, list[str]]) -> None:
        from harness.envs import interpreter
        from tests.conftest import REPO

        self.root, self.kinds = root, kinds
        order = sorted(kinds, key=lambda fw: LONGEST_FIRST.index(fw) if fw in LONGEST_FIRST else len(LONGEST_FIRST))
        jobs = [f"{fw}={interpreter(fw)}:{','.join(kinds[fw])}" for fw in order]
        cmd = [sys.executable, "-c", RUNNER, str(os.getpid()), str(root), *jobs]
        kw = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL}
        subprocess.run(cmd, cwd=REPO, stderr=subprocess.PIPE, check=True, text=True, **kw)  # type: ignore[call-overload]
        self.runner = int((root / "runner.pid").read_text())
        self._promoted = False

    def _alive(self) -> bool:
        try:
            os.kill(self.runner, 0)
        except ProcessLookupError:
            return False
        return True

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):  # else finished
            os.kill(self.runner, sig)

    def wait(self, frameworks: list[str]) -> dict[str, str]:
        """Each framework's probe log once its interpreter has exited 0 (else the test fails with the log)."""
        if not self._promoted:  # a test waits for them: nothing else to leave the cores to
            self._signal(signal.SIGUSR1)
            self._promoted = True
        logs = {}
        for fw in frameworks:
            rc = self.root / f"{fw}.rc"
            while not rc.exists():
                assert self._alive() or rc.exists(), f"the probes' runner is gone before {fw}'s probe ended"
                time.sleep(0.2)
            logs[fw] = (self.root / f"{fw}.log").read_text()
            assert rc.read_text() == "0", f"{fw} probe failed (exit code {rc.read_text()}):\n{logs[fw][-3000:]}"
        return logs

    def result(self, kind: str) -> dict[str, dict[str, np.ndarray]]:
        """``kind``'s results, framework -> name -> array, for every framework that runs it."""
        frameworks = [fw for fw, kinds in self.kinds.items() if kind in kinds]
        self.wait(frameworks)
        out: dict[str, dict[str, np.ndarray]] = {}
        for fw in frameworks:
            with np.load(self.root / f"{kind}-{fw}.npz") as f:
                out[fw] = dict(f)
        return out

    def close(self) -> None:
        """Kill whatever still runs (a session that ends early, or never asked)."""
        self._signal(signal.SIGTERM)


if __name__ == "__main__":
    run_probes(sys.argv[1], Path(sys.argv[2]), sys.argv[3:])
