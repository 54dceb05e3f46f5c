"""A fork server: one framework imported once per node, a fresh forked process per trial.

``python -m harness.worker.forkserver --framework FW --socket PATH`` imports the framework's adapter
(the framework itself), numpy and the worker's modules, then serves a Unix socket. Each connection
asks for one trial (``{"request": path, "out": path, "log": path, "cgroup": path | null}``, one JSON
line); the server forks, and the child runs that trial exactly as a freshly started worker would
(:func:`harness.worker.__main__.run`): its own session (the launcher kills its process group on a
timeout or the memory cap), stdout and stderr to the log, the trial's folder as its working
directory, its CPU set, and nothing of other trials (they ran in other children; their connections
are closed in the child). The server answers ``{"pid": N}`` at once and ``{"status": S}`` (the
``waitpid`` status) when the child is gone; if the launcher hangs up first, the child's group is
killed. A request it cannot serve (a failed fork, say) is answered ``{"error": ...}`` and the
launcher starts a fresh interpreter instead. The server holds no trial state; it exits after
``--idle-s`` seconds without a trial, or when idle and the process that started it is gone.

Why: importing a framework costs 1-5 s per process (TensorFlow the most), which dominated short
trials (the smoke suite). Forking after the import keeps one process per trial and pays it once.
Thread-count variables are read at import, so a server serves one environment: the launcher keys
servers by interpreter, environment (less Ray's per-process variables) and the project's source.
Linux only; the launcher falls back to a fresh interpreter per trial elsewhere or when a server
cannot start.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.worker.__main__ import exit_now, run

POLL_S = 0.2  # without a pidfd: how often a child's exit is looked for
TRIAL_PROCESS_NAME = "harness-trial"  # a forked worker's name in ps/top (its command line is the server's)


def _name_process(name: str) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_name = 15
        ctypes.CDLL(None).prctl(pr_set_name, name.encode()[:15])


@dataclass
class _State:
    """The server's bookkeeping: children running (and their launcher connections), last activity."""

    busy: dict[int, socket.socket] = field(default_factory=dict)
    last: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def done(self, pid: int) -> None:
        with self.lock:
            self.busy.pop(pid, None)
            self.last = time.monotonic()  # the idle clock starts when the last trial ends

    def idle_for(self) -> float | None:
        with self.lock:
            return None if self.busy else time.monotonic() - self.last


def _child(msg: dict[str, Any], preloaded: dict[str, float], inherited: list[socket.socket]) -> None:
    """In the forked child: become a fresh worker and run the trial; never returns."""
    code = 1
    try:
        for sock in inherited:  # the server's socket and other trials' launcher connections
            sock.close()
        log = os.open(msg["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        os.setsid()  # its own process group: the launcher's timeout and memory cap kill the group
        if msg.get("cgroup"):
            Path(msg["cgroup"], "cgroup.procs").write_text(str(os.getpid()))
        os.chdir(Path(msg["request"]).parent)  # the trial's private folder, as a spawned worker's
        _name_process(TRIAL_PROCESS_NAME)
        # run() ties the child to its parent, the server (the request has no launcher pid), which kills
        # the child's group if the launcher goes
        code = run(Path(msg["request"]), Path(msg["out"]), preloaded)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        exit_now(code)


def send_line(conn: socket.socket, data: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall((json.dumps(data) + "\n").encode())


def read_line(conn: socket.socket, buffer: bytes = b"", timeout_s: float | None = None) -> tuple[bytes, bytes]:
    """One newline-terminated line from ``conn`` (after what ``buffer`` holds), and what follows it.

    Raises ``TimeoutError`` when nothing complete arrives in ``timeout_s``, ``EOFError`` when the peer
    hangs up first.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while b"\n" not in buffer:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        readable, _, _ = select.select([conn], [], [], left)
        if not readable:
            raise TimeoutError("no complete line")
        chunk = conn.recv(4096)
        if not chunk:
            raise EOFError("peer hung up")
        buffer += chunk
        if len(buffer) > 1 << 16:
            raise ValueError("line too long")
    line, _, rest = buffer.partition(b"\n")
    return line, rest


def _kill(pid: int) -> None:
    """The child's group (after its setsid), or the child alone (before it)."""
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(target, signal.SIGKILL)


def _watch(conn: socket.socket, pid: int, state: _State) -> None:
    """Report the child's exit status, or kill its group when the launcher hangs up first."""
    exited = _exit_fd(pid)  # readable when the child exits: its status is reported at once, not at a poll
    try:
        try:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    send_line(conn, {"status": status})
                    return
                watched = [conn.fileno()] if exited is None else [conn.fileno(), exited]
                readable, _, _ = select.select(watched, [], [], POLL_S)
                if conn.fileno() in readable and not conn.recv(1, socket.MSG_PEEK):  # EOF: the launcher is gone
                    break
        except OSError:
            pass
        _kill(pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    finally:
        if exited is not None:
            os.close(exited)
        conn.close()
        state.done(pid)


def _exit_fd(pid: int) -> int | None:
    """A pidfd of the child (Linux 5.3+), or None: then the exit is found by polling every ``POLL_S``."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _serve_one(server: socket.socket, conn: socket.socket, state: _State, preloaded: dict[str, float]) -> None:
    """Read one request and fork its worker; any problem is answered (the launcher then spawns)."""
    try:
        try:
            line, _ = read_line(conn, timeout_s=10.0)
        except EOFError:
            conn.close()  # a readiness probe: nothing to do
            return
        msg = json.loads(line)
        if not isinstance(msg, dict) or not all(isinstance(msg.get(k), str) for k in ("request", "out", "log")):
            raise ValueError(f"not a trial request: {line[:200]!r}")
        with state.lock:
            inherited = [server, conn, *state.busy.values()]
            pid = os.fork()
            if pid == 0:
                _child(msg, preloaded, inherited)
            state.busy[pid] = conn
    except (OSError, ValueError, EOFError, TimeoutError) as e:  # fork failed (ENOMEM, EAGAIN), bad request
        send_line(conn, {"error": f"{type(e).__name__}: {e}"})
        conn.close()
        return
    send_line(conn, {"pid": pid, "server_pid": os.getpid()})
    threading.Thread(target=_watch, args=(conn, pid, state), daemon=True).start()


def serve(framework: str, path: str, idle_s: float, starter: int) -> None:
    t0 = time.perf_counter()
    import gc
    import importlib

    from adapters import FRAMEWORKS, load_adapter

    load_adapter(framework)
    preloaded = {framework: time.perf_counter() - t0}
    # what trials would import lazily: the framework's own list, numpy, the workloads, the scenarios
    for module in (*FRAMEWORKS[framework].preload, "harness.worker.trial", "workloads.architectures.reference"):
        importlib.import_module(module)
    gc.freeze()  # a child's garbage collections skip (and so do not copy) the server's objects

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server.bind(path)
    server.listen(16)
    print("ready", flush=True)
    state = _State()
    try:
        while True:
            readable, _, _ = select.select([server], [], [], 1.0)
            if readable:
                conn, _ = server.accept()
                _serve_one(server, conn, state, preloaded)
                continue
            idle = state.idle_for()
            if idle is not None and (idle > idle_s or not _alive(starter)):
                return
    finally:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.worker.forkserver", description=__doc__)
    parser.add_argument("--framework", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--idle-s", type=float, default=600.0)
    parser.add_argument("--starter", type=int, default=os.getppid(), help="pid whose exit (when idle) ends the server")
    args = parser.parse_args(argv)
    serve(args.framework, args.socket, args.idle_s, args.starter)
    return 0


if __name__ == "__main__":
    exit_now(main())
