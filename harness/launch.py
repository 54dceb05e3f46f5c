"""Run one trial in a fresh subprocess of its framework's interpreter.

The worker gets its own session (process group), so a timeout kills it and everything it spawned
(compiler workers included). Thread counts are set in the environment before any library loads, and
the CPU set is applied by the worker before it imports anything heavy. A crash, a signal or a
timeout becomes a :class:`TrialResult` with the status, the reason and the stderr tail.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from harness.envs import PROJECT_ROOT, interpreter
from harness.spec import TrialResult, TrialSpec

STDERR_TAIL_CHARS = 4000


def thread_env(threads: int) -> dict[str, str]:
    """The same thread count for every framework's pools, set before the framework initialises."""
    n = str(threads)
    env = {
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "TF_NUM_INTRAOP_THREADS": n,
        "TF_NUM_INTEROP_THREADS": n,
        "MXNET_CPU_WORKER_NTHREADS": n,
    }
    if threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    return env


def worker_env(spec: TrialSpec) -> dict[str, str]:
    env = dict(os.environ)
    env.update(thread_env(spec.threads))
    if "XLA_FLAGS" in os.environ and spec.threads == 1:
        env["XLA_FLAGS"] = f"{os.environ['XLA_FLAGS']} {env['XLA_FLAGS']}"
    # JAX/TF must not grab all device memory up front: peaks would be meaningless.
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    env.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@contextlib.contextmanager
def lease_cores(count: int, lock_dir: Path | None = None, poll_s: float = 0.05) -> Iterator[list[int]]:
    """Hold ``count`` distinct cores of this node exclusively (flock; freed when the holder dies).

    Ray admits a task only when the node has ``count`` logical CPUs free; the locks decide *which*
    cores, so two timing trials on one node never share a core.
    """
    lock_dir = lock_dir or Path(tempfile.gettempdir()) / f"harness-cores-{os.getuid()}"
    lock_dir.mkdir(parents=True, exist_ok=True)
    cores = sorted(os.sched_getaffinity(0))
    if count > len(cores):
        raise RuntimeError(f"trial needs {count} cores, this node has {len(cores)}")
    while True:
        held: list[tuple[int, IO[Any]]] = []
        for core in cores:
            f = open(lock_dir / f"core-{core}.lock", "w")  # noqa: SIM115 - closed below
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append((core, f))
                if len(held) == count:
                    break
            except BlockingIOError:
                f.close()
        if len(held) == count:
            try:
                yield [c for c, _ in held]
            finally:
                for _, handle in held:
                    handle.close()
            return
        for _, handle in held:
            handle.close()
        time.sleep(poll_s)


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def launch(
    spec: TrialSpec,
    *,
    cpus: list[int] | None,
    dataset_path: str | None = None,
    cache_dir: str | None = None,
    fault: str | None = None,
    python: str | None = None,
) -> TrialResult:
    """Run ``spec`` in a fresh worker process and return its result, whatever happened to it."""
    started = time.time()
    python = python or interpreter(spec.framework)
    request = {
        "spec": spec.model_dump(mode="json"),
        "trial_key": spec.trial_key,
        "cpus": cpus,
        "dataset_path": dataset_path,
        "cache_dir": cache_dir,
        "fault": fault,
        "parent_pid": os.getpid(),
    }
    with tempfile.TemporaryDirectory(prefix="harness-trial-") as tmp:
        req_path, out_path, log_path = Path(tmp, "request.json"), Path(tmp, "result.json"), Path(tmp, "stderr.log")
        req_path.write_text(json.dumps(request))
        cmd = [python, "-m", "harness.worker", "--request", str(req_path), "--out", str(out_path)]
        with open(log_path, "w") as log:
            try:
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=worker_env(spec), start_new_session=True, cwd=tmp
                )
            except OSError as e:
                return _result(spec, "failed", f"cannot start {python}: {e}", started)
            timed_out = False
            try:
                proc.wait(timeout=spec.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the worker and anything it left behind
            proc.wait()
        tail = log_path.read_text(errors="replace")[-STDERR_TAIL_CHARS:]
        if timed_out:
            return _result(
                spec,
                "timeout",
                f"no result after the {spec.timeout_s:g} s timeout; process group killed",
                started,
                tail,
            )
        if out_path.exists():
            data = json.loads(out_path.read_text())
            data["spec"] = spec.model_dump(mode="json")
            data.setdefault("stderr_tail", tail if data.get("status") != "ok" else "")
            return TrialResult.model_validate(data)
        if proc.returncode < 0:
            name = _signal_name(proc.returncode)
            if proc.returncode == -signal.SIGKILL:
                return _result(
                    spec, "oom", "killed by SIGKILL (most likely the kernel's out-of-memory killer)", started, tail
                )
            return _result(spec, "crash", f"worker died from {name}", started, tail)
        return _result(spec, "failed", f"worker exited with code {proc.returncode} and no result", started, tail)


def _result(spec: TrialSpec, status: str, reason: str, started: float, tail: str = "") -> TrialResult:
    return TrialResult.model_validate(
        {
            "trial_key": spec.trial_key,
            "spec": spec,
            "status": status,
            "reason": reason,
            "stderr_tail": tail,
            "started_at": started,
            "wall_s": time.time() - started,
        }
    )
