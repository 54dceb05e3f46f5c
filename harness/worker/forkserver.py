"""A fork server: one framework imported once per node, a fresh forked process per trial.

``python -m harness.worker.forkserver --framework FW --socket PATH`` imports the framework's adapter
(the framework itself), numpy and the worker's modules, then serves a Unix socket. Each connection
asks for one trial (``{"request": path, "out": path, "log": path, "cgroup": path | null}``, one JSON
line); the server forks, and the child runs that trial exactly as a freshly started worker would
(:func:`harness.worker.__main__.run`): its own session (the launcher kills its process group on a
timeout or the memory cap), stdout and stderr to the log, its CPU set, nothing inherited from other
trials, which all ran in other children. The server answers ``{"pid": N}`` at once and
``{"status": S}`` (the ``waitpid`` status) when the child is gone; if the launcher hangs up first,
the child's group is killed. The server holds no trial state and exits after ``--idle-s`` seconds
without a trial, or with the launcher that started it is gone and it is idle.

Why: importing a framework costs 1-5 s per process (TensorFlow the most), which dominated short
trials (the smoke suite). Forking after the import keeps one process per trial and pays it once.
Thread-count variables are read at import, so a server serves one environment (the launcher keys
servers by interpreter, framework and those variables). Linux only; the launcher falls back to a
fresh interpreter per trial elsewhere or when a server cannot start.
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
from pathlib import Path
from typing import Any

from harness.worker.__main__ import die_with_parent, exit_now, run

POLL_S = 0.2
TRIAL_PROCESS_NAME = "harness-trial"  # a forked worker's name in ps/top (its command line is the server's)


def _name_process(name: str) -> None:
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_name = 15
        ctypes.CDLL(None).prctl(pr_set_name, name.encode()[:15])


def _child(conn: socket.socket, server: socket.socket, msg: dict[str, Any], preloaded: dict[str, float]) -> None:
    """In the forked child: become a fresh worker and run the trial; never returns."""
    code = 1
    try:
        server.close()
        conn.close()
        os.setsid()  # its own process group: the launcher's timeout and memory cap kill the group
        if msg.get("cgroup"):
            Path(msg["cgroup"], "cgroup.procs").write_text(str(os.getpid()))
        log = os.open(msg["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        die_with_parent(None)  # dies with the server (which kills it if the launcher goes)
        _name_process(TRIAL_PROCESS_NAME)
        code = run(Path(msg["request"]), Path(msg["out"]), preloaded)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        exit_now(code)


def _send(conn: socket.socket, data: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        conn.sendall((json.dumps(data) + "\n").encode())


def _watch(conn: socket.socket, pid: int, busy: set[int]) -> None:
    """Report the child's exit status, or kill its group when the launcher hangs up first."""
    try:
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                _send(conn, {"status": status})
                return
            readable, _, _ = select.select([conn], [], [], POLL_S)
            if readable and not conn.recv(1, socket.MSG_PEEK):  # EOF: the launcher is gone
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
    finally:
        conn.close()
        busy.discard(pid)


def _recv_line(conn: socket.socket, limit: int = 1 << 16) -> bytes:
    data = b""
    while not data.endswith(b"\n") and len(data) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def serve(framework: str, path: str, idle_s: float, starter: int) -> None:
    t0 = time.perf_counter()
    import importlib

    from adapters import FRAMEWORKS, load_adapter

    load_adapter(framework)
    preloaded = {framework: time.perf_counter() - t0}
    # what trials would import lazily: the framework's own list, numpy, the workloads, the scenarios
    for module in (*FRAMEWORKS[framework].preload, "harness.worker.trial", "workloads.architectures.reference"):
        importlib.import_module(module)

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    server.bind(path)
    server.listen(16)
    print("ready", flush=True)
    busy: set[int] = set()
    last = time.monotonic()
    try:
        while True:
            readable, _, _ = select.select([server], [], [], 1.0)
            if not readable:
                idle = not busy and time.monotonic() - last > idle_s
                starter_gone = not busy and not _alive(starter)
                if idle or starter_gone:
                    return
                continue
            conn, _ = server.accept()
            msg = json.loads(_recv_line(conn) or b"{}")
            if "request" not in msg:
                conn.close()
                continue
            pid = os.fork()
            if pid == 0:
                _child(conn, server, msg, preloaded)
            busy.add(pid)
            last = time.monotonic()
            _send(conn, {"pid": pid, "server_pid": os.getpid()})
            threading.Thread(target=_watch, args=(conn, pid, busy), daemon=True).start()
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
