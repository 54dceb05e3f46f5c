"""The launcher's side of the fork server (:mod:`harness.worker.forkserver`): find or start this node's
server for a trial's interpreter and environment, and have it fork the trial's worker.

Only CPU trials on Linux are forked (a CUDA or TPU runtime must not cross a fork, and Ray gives each
GPU task its own ``CUDA_VISIBLE_DEVICES``); ``HARNESS_PROCESS=spawn`` starts a fresh interpreter for
every trial instead. Any problem with a server (it cannot start, it went away) falls back to that.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.contract import TrialSpec

PROCESS_ENV = "HARNESS_PROCESS"  # "spawn": a fresh interpreter per trial (default on Linux CPU: "fork")
START_TIMEOUT_S = 300.0  # a framework import on a busy node


def enabled(spec: TrialSpec) -> bool:
    return sys.platform.startswith("linux") and spec.device == "cpu" and os.environ.get(PROCESS_ENV) != "spawn"


def _folder() -> Path:
    path = Path(tempfile.gettempdir()) / f"harness-fork-{os.getuid()}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# set per Ray worker process (or by importing Ray in the driver); no trial reads them
VOLATILE = ("RAY_", "SPT_NOENV", "PYTHONBREAKPOINT")


def _key(python: str, env: Mapping[str, str]) -> str:
    """Servers are shared by trials whose interpreter and environment (thread variables included) match."""
    stable = sorted((k, v) for k, v in env.items() if not k.startswith(VOLATILE))
    return hashlib.sha256(json.dumps([python, stable]).encode()).hexdigest()[:16]


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return sock
    except OSError:
        sock.close()
        return None


def _server(python: str, framework: str, env: Mapping[str, str]) -> socket.socket | None:
    """A connection to a running server for this environment, starting one if there is none."""
    folder = _folder()
    key = _key(python, env)
    path = folder / f"{framework}-{key}.sock"
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter per environment on this node
        conn = _connect(path)
        if conn is not None:
            return conn
        with open(folder / f"{framework}-{key}.log", "w") as log:
            proc = subprocess.Popen(
                [python, "-m", "harness.worker.forkserver", "--framework", framework, "--socket", str(path),
                 "--starter", str(os.getpid())],
                env=dict(env), stdout=subprocess.PIPE, stderr=log, start_new_session=True, cwd=folder,
            )  # fmt: skip
        assert proc.stdout is not None
        readable, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
        if not readable or proc.stdout.readline().strip() != b"ready":
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            return None
        proc.stdout.close()
        return _connect(path)


def prestart(specs: Iterable[TrialSpec]) -> int:
    """Start this node's servers for these trials' environments side by side, and wait until they
    are ready (the driver does this while Ray starts, so no import runs beside a timed trial).
    Returns how many servers are up."""
    from harness.envs import interpreter
    from harness.launch import worker_env

    wanted: dict[str, tuple[str, str, dict[str, str]]] = {}
    for spec in specs:
        if enabled(spec):
            env, python = worker_env(spec), interpreter(spec.framework)
            wanted[_key(python, env)] = (python, spec.framework, env)
    if not wanted:
        return 0
    with ThreadPoolExecutor(len(wanted)) as pool:
        conns = list(pool.map(lambda args: _server(*args), wanted.values()))
    for conn in conns:
        if conn is not None:
            conn.close()
    return sum(conn is not None for conn in conns)


class ForkedWorker:
    """A trial's worker forked by a server; waited on like a ``subprocess.Popen``."""

    def __init__(self, conn: socket.socket, pid: int, server_pid: int):
        self.conn, self.pid, self.server_pid = conn, pid, server_pid
        self.returncode: int | None = None
        self._buffer = b""

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._buffer.endswith(b"\n"):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self.conn], [], [], left)
            if not readable:
                raise subprocess.TimeoutExpired(f"forked worker {self.pid}", timeout or 0.0)
            chunk = self.conn.recv(4096)
            if not chunk:  # the server died with the worker (its children die with it)
                self.returncode = -9
                break
            self._buffer += chunk
        else:
            self.returncode = os.waitstatus_to_exitcode(json.loads(self._buffer)["status"])
        self.conn.close()
        return self.returncode


def fork(
    python: str, spec: TrialSpec, env: Mapping[str, str], request: Path, out: Path, log: Path, cgroup: Path | None
) -> ForkedWorker | None:
    """The trial's worker, forked by this node's server for its environment (None: start it fresh)."""
    conn = _server(python, spec.framework, env)
    if conn is None:
        return None
    msg = {"request": str(request), "out": str(out), "log": str(log), "cgroup": str(cgroup) if cgroup else None}
    try:
        conn.sendall((json.dumps(msg) + "\n").encode())
        reply = b""
        while not reply.endswith(b"\n"):
            readable, _, _ = select.select([conn], [], [], 30.0)
            chunk = conn.recv(4096) if readable else b""
            if not chunk:
                raise OSError("the fork server did not answer")
            reply += chunk
        first, _, rest = reply.partition(b"\n")
        answer = json.loads(first)
    except (OSError, ValueError):
        conn.close()
        return None
    worker = ForkedWorker(conn, int(answer["pid"]), int(answer["server_pid"]))
    worker._buffer = rest
    return worker
