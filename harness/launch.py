"""Run one trial in a fresh process of its framework's interpreter (spawned, or forked by a fork server).

The worker gets its own session (process group), so a timeout or the memory cap kills it and
everything it spawned (compiler workers included). Thread counts are set in the environment before
any library loads, and the CPU set is applied by the worker before it imports anything heavy. A
crash, a signal, a timeout or the memory cap becomes a :class:`TrialResult` with the status, the
reason and the stderr tail.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from adapters import FRAMEWORKS
from harness import forking
from harness import metrics as M
from harness.contract import Status, TrialRequest, TrialResult, TrialSpec
from harness.envs import PROJECT_ROOT, interpreter
from harness.memcap import MemoryCap, default_limit_mb

STDERR_TAIL_CHARS = 4000
# numpy's BLAS (the GEMM peak calibration runs in every worker) and OpenMP pools, whatever the framework
BLAS_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def worker_env(spec: TrialSpec) -> dict[str, str]:
    """The worker's environment: thread counts (BLAS and the framework's own, from its
    ``FrameworkInfo``) set before any library loads, and the project on the path."""
    env = dict(os.environ)
    env.update(dict.fromkeys(BLAS_THREAD_VARS, str(spec.threads)))
    env.update(FRAMEWORKS[spec.framework].worker_env(spec.threads, os.environ))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


NODE_CPUS_ENV = "HARNESS_NODE_CPUS"  # the node's CPU set, set by the driver before it pins itself


def node_cpus() -> list[int]:
    """This node's CPUs: the driver's set before it pinned itself and Ray to the reserved cores."""
    given = os.environ.get(NODE_CPUS_ENV)
    if given:
        return [int(c) for c in given.split(",")]
    return sorted(os.sched_getaffinity(0))


@contextlib.contextmanager
def lease_cores(
    count: int, lock_dir: Path | None = None, poll_s: float = 0.05, reserve: int = 0
) -> Iterator[list[int]]:
    """Hold ``count`` distinct cores of this node exclusively (flock; freed when the holder dies).

    Ray admits a task only when the node has ``count`` logical CPUs free; the locks decide *which*
    cores, so two timing trials on one node never share a core. The node's first ``reserve`` cores
    are never leased: they belong to the driver and Ray's processes.
    """
    lock_dir = lock_dir or Path(tempfile.gettempdir()) / f"harness-cores-{os.getuid()}"
    lock_dir.mkdir(parents=True, exist_ok=True)
    cores = node_cpus()[reserve:]
    if count > len(cores):
        raise RuntimeError(
            f"trial needs {count} cores, this node has {len(cores)} after the {reserve} reserved for the harness "
            f"(--reserve-cores); use --threads {max(1, len(cores))} or less, or start Ray with "
            f"--num-cpus {len(cores)} on such nodes"
        )
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
    cores: int | None = None,
    rank: int = 0,
    peers: list[str] | None = None,
    group: str | None = None,
) -> TrialResult:
    """Run ``spec`` in a fresh worker process and return its result, whatever happened to it.

    The process is forked by this node's fork server for the trial's environment where it can be
    (:mod:`harness.forking`: CPU trials on Linux), otherwise a freshly started interpreter.
    """
    started = time.time()
    python = python or interpreter(spec.framework)
    request = TrialRequest(
        spec=spec,
        cpus=cpus,
        dataset_path=dataset_path,
        cache_dir=cache_dir,
        fault=fault,  # type: ignore[arg-type]
        parent_pid=os.getpid(),
        rank=rank,
        peers=peers or [],
        group=group,
    )
    cap = MemoryCap(spec.memory_limit_mb or default_limit_mb(spec.threads, cores=cores))
    with tempfile.TemporaryDirectory(prefix="harness-trial-") as tmp:
        req_path, out_path, log_path = Path(tmp, "request.json"), Path(tmp, "result.json"), Path(tmp, "stderr.log")
        env = worker_env(spec)
        try:
            proc: subprocess.Popen[bytes] | forking.ForkedWorker | None = None
            if forking.enabled(spec):
                req_path.write_text(request.replace(parent_pid=None).to_json())  # its parent is the server
                proc = forking.fork(python, spec, env, req_path, out_path, log_path, cap.cgroup_path)
            if proc is None:
                req_path.write_text(request.to_json())
                try:
                    proc = _spawn(python, req_path, out_path, log_path, env, tmp, cap)
                except (OSError, subprocess.SubprocessError) as e:
                    return _result(spec, "failed", f"cannot start {python}: {e}", started)
            cap.watch(proc.pid)
            timed_out = False
            try:
                proc.wait(timeout=spec.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the worker and anything it left behind
            proc.wait()
        finally:
            cap.finish()
        tail = log_path.read_text(errors="replace")[-STDERR_TAIL_CHARS:] if log_path.exists() else ""
        if cap.tripped:
            return _result(spec, "oom", cap.reason(), started, tail)
        if timed_out:
            reason = f"no result after the {spec.timeout_s:g} s timeout; process group killed"
            return _result(spec, "timeout", reason, started, tail)
        if out_path.exists():
            result = TrialResult.from_json(out_path.read_text())
            if result.status != "ok" and not result.stderr_tail:
                result.stderr_tail = tail
            result.metrics.setdefault(M.PEAK_GROUP_RSS_MB, cap.peak_mb)
            result.metrics[M.WORKER_START_S] = max(0.0, result.started_at - started)
            return result
        return _died(spec, proc, cap, started, tail)


def _died(
    spec: TrialSpec, proc: subprocess.Popen[bytes] | forking.ForkedWorker, cap: MemoryCap, started: float, tail: str
) -> TrialResult:
    """The result of a worker that ended without writing one."""
    returncode = proc.returncode
    assert returncode is not None
    if isinstance(proc, forking.ForkedWorker) and proc.server_lost:
        reason = f"the fork server {proc.server_pid} went away during the trial (its workers go with it)"
        return _result(spec, "crash", reason, started, tail)
    if returncode == -signal.SIGKILL:
        reason = (
            "killed by SIGKILL from outside the harness, possibly the kernel's OOM killer "
            f"(peak {cap.peak_mb:,.0f} MB of the {cap.limit_mb} MB limit)"
        )
        return _result(spec, "crash", reason, started, tail)
    if returncode < 0:
        return _result(spec, "crash", f"worker died from {_signal_name(returncode)}", started, tail)
    return _result(spec, "failed", f"worker exited with code {returncode} and no result", started, tail)


def _spawn(
    python: str, request: Path, out: Path, log_path: Path, env: dict[str, str], cwd: str, cap: MemoryCap
) -> subprocess.Popen[bytes]:
    """A fresh interpreter for the trial, in its own session, output to the log."""
    cmd = [python, "-m", "harness.worker", "--request", str(request), "--out", str(out)]
    with open(log_path, "w") as log:
        return subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            cwd=cwd,
            preexec_fn=cap.preexec if cap.in_cgroup else None,
        )


def _result(spec: TrialSpec, status: Status, reason: str, started: float, tail: str = "") -> TrialResult:
    return TrialResult(
        trial_key=spec.trial_key,
        spec=spec,
        status=status,
        reason=reason,
        stderr_tail=tail,
        started_at=started,
        wall_s=time.time() - started,
    )
