"""The launcher's side of the fork server (:mod:`harness.worker.forkserver`): find or start this node's
server for a trial's interpreter and environment, and have it fork the trial's worker.

Only CPU trials on Linux are forked (a CUDA or TPU runtime must not cross a fork, and Ray gives each
GPU task its own ``CUDA_VISIBLE_DEVICES``); ``HARNESS_PROCESS=spawn`` starts a fresh interpreter for
every trial instead. A server that cannot start or cannot fork falls back to that too.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from harness.contract import TrialSpec
from harness.worker.forkserver import read_line

PROCESS_ENV = "HARNESS_PROCESS"  # "spawn": a fresh interpreter per trial (default on Linux CPU: "fork")
START_TIMEOUT_S = 300.0  # a framework import on a busy node


def enabled(spec: TrialSpec) -> bool:
    # multi-worker trials start fresh: a fork would inherit a framework runtime their collectives must set up first
    return (
        sys.platform.startswith("linux")
        and spec.device == "cpu"
        and spec.workers == 1
        and os.environ.get(PROCESS_ENV) != "spawn"
    )


def _folder() -> Path:
    """This user's private folder of server sockets, locks and logs (0700, owned by us, or refused)."""
    path = Path(tempfile.gettempdir()) / f"harness-fork-{os.getuid()}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if info.st_uid != os.getuid() or path.is_symlink() or not path.is_dir():
        raise OSError(f"{path} is not a folder of this user; not using fork servers")
    if info.st_mode & 0o077:
        path.chmod(0o700)
    return path


# set per Ray worker process (or by importing Ray in the driver); no trial reads them
VOLATILE = ("RAY_", "SPT_NOENV", "PYTHONBREAKPOINT", "HARNESS_NODE_CPUS")
_FAILED: set[str] = set()  # environments whose server would not start (in this process): spawn instead


def _code_version() -> str:
    """The project's source as a server would have imported it: a server never runs stale code."""
    from harness.envs import PROJECT_ROOT

    h = hashlib.sha256()
    for package in ("harness", "adapters", "workloads"):
        for f in sorted((PROJECT_ROOT / package).rglob("*.py")):
            st = f.stat()
            h.update(f"{f}:{st.st_mtime_ns}:{st.st_size}".encode())
    return h.hexdigest()


def _key(python: str, env: Mapping[str, str]) -> str:
    """Servers are shared by trials whose interpreter, environment (thread variables included) and
    project code match."""
    stable = sorted((k, v) for k, v in env.items() if not k.startswith(VOLATILE))
    return hashlib.sha256(json.dumps([python, stable, _code_version()]).encode()).hexdigest()[:16]


def _connect(path: Path) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(str(path))
        return sock
    except OSError:
        sock.close()
        return None


def _start(python: str, framework: str, env: Mapping[str, str], folder: Path, key: str) -> socket.socket | None:
    path = folder / f"{framework}-{key}.sock"
    with open(folder / f"{framework}-{key}.log", "w") as log:
        proc = subprocess.Popen(
            [python, "-m", "harness.worker.forkserver", "--framework", framework, "--socket", str(path),
             "--starter", str(os.getpid())],
            env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            start_new_session=True, cwd=folder,
        )  # fmt: skip
    assert proc.stdout is not None
    with proc.stdout:
        readable, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
        ready = bool(readable) and proc.stdout.readline().strip() == b"ready"
    if not ready:
        proc.kill()
        proc.wait()
        _FAILED.add(key)
        return None
    return _connect(path)


def _server(python: str, framework: str, env: Mapping[str, str]) -> socket.socket | None:
    """A connection to a running server for this environment, starting one if there is none."""
    key = _key(python, env)
    if key in _FAILED:
        return None
    folder = _folder()
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one starter per environment on this node
        return _connect(folder / f"{framework}-{key}.sock") or _start(python, framework, env, folder, key)


def prestart(specs: Iterable[TrialSpec]) -> int:
    """Start this node's servers for these trials' environments side by side, and wait until they
    are ready (the driver does this while Ray starts, so no import runs beside a timed trial).
    Returns how many servers are up; problems only mean trials will be spawned instead."""
    from harness.envs import interpreter
    from harness.launch import worker_env

    wanted: dict[str, tuple[str, str, dict[str, str]]] = {}
    for spec in specs:
        if enabled(spec):
            env, python = worker_env(spec), interpreter(spec.framework)
            wanted[_key(python, env)] = (python, spec.framework, env)
    if not wanted:
        return 0

    def up(args: tuple[str, str, dict[str, str]]) -> bool:
        try:
            conn = _server(*args)
        except (OSError, subprocess.SubprocessError):
            return False
        if conn is not None:
            conn.close()
        return conn is not None

    with ThreadPoolExecutor(len(wanted)) as pool:
        return sum(pool.map(up, wanted.values()))


class ForkedWorker:
    """A trial's worker forked by a server; waited on like a ``subprocess.Popen``."""

    def __init__(self, conn: socket.socket, pid: int, server_pid: int, buffer: bytes):
        self.conn, self.pid, self.server_pid, self._buffer = conn, pid, server_pid, buffer
        self.returncode: int | None = None
        self.server_lost = False  # the server died before reporting (its children die with it)

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        try:
            line, self._buffer = read_line(self.conn, self._buffer, timeout)
        except TimeoutError:
            raise subprocess.TimeoutExpired(f"forked worker {self.pid}", timeout or 0.0) from None
        except (EOFError, OSError, ValueError):
            self.server_lost, self.returncode = True, -9
        else:
            self.returncode = os.waitstatus_to_exitcode(json.loads(line)["status"])
        self.conn.close()
        return self.returncode


def fork(
    python: str, spec: TrialSpec, env: Mapping[str, str], request: Path, out: Path, log: Path, cgroup: Path | None
) -> ForkedWorker | None:
    """The trial's worker, forked by this node's server for its environment (None: start it fresh)."""
    try:
        conn = _server(python, spec.framework, env)
    except (OSError, subprocess.SubprocessError):
        return None
    if conn is None:
        return None
    msg = {"request": str(request), "out": str(out), "log": str(log), "cgroup": str(cgroup) if cgroup else None}
    try:
        conn.sendall((json.dumps(msg) + "\n").encode())
        line, rest = read_line(conn, timeout_s=30.0)
        answer = json.loads(line)
        return ForkedWorker(conn, int(answer["pid"]), int(answer["server_pid"]), rest)
    except (OSError, ValueError, KeyError, EOFError, TimeoutError):  # an "error" answer has no pid
        conn.close()
        return None
