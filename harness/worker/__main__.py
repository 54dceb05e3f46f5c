"""``python -m harness.worker --request REQ.json --out RESULT.json``: run one trial, write its result.

The request is a :class:`harness.contract.TrialRequest` and the result a
:class:`harness.contract.TrialResult`, both as JSON. The CPU set is applied before any thread pool
starts (threads started earlier would keep the whole machine's affinity): before numpy or the
framework loads in a new interpreter; in a fork of a fork server they are loaded, but a fork has no
threads and the pools start on first use.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path


def die_with_parent(parent_pid: int | None) -> None:
    """Ask the kernel to SIGKILL this worker if its launcher dies (Ctrl-C, Ray shutdown, lost node).

    The worker runs in its own session so a timeout can kill its whole group; that also means it
    would outlive a killed launcher without this.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if parent_pid is not None and os.getppid() != parent_pid:  # the launcher died before prctl
        os._exit(1)


def _inject(fault: str | None) -> None:
    """Test hook: make this trial crash, hang, raise or eat memory (set by the driver, never by default)."""
    if fault == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif fault == "hang":
        while True:
            time.sleep(1)
    elif fault == "raise":
        raise RuntimeError("injected failure")
    elif fault == "alloc":  # 64 MiB a step, every page touched, until something stops it
        hoard = []
        while True:
            hoard.append(bytearray(b"\1" * (64 << 20)))
            time.sleep(0.02)


def _status_for(exc: BaseException) -> str:
    from harness.worker.group import PeerLost

    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "oom"
    if isinstance(exc, PeerLost):  # a peer of a multi-worker trial died or hung: this one gave up
        return "crash"
    return "failed"


def run(request_path: Path, out: Path, preloaded: dict[str, float] | None = None) -> int:
    """Run the trial of ``request_path`` in this process and write its result to ``out``.

    ``preloaded`` (fork server children): what the server imported before forking, with its seconds.
    """
    raw = json.loads(request_path.read_text())  # stdlib only until the CPU set is applied
    die_with_parent(raw.get("parent_pid"))
    if raw.get("cpus"):
        os.sched_setaffinity(0, raw["cpus"])
    if os.getpriority(os.PRIO_PROCESS, 0) > 0:  # inherited from a niced parent (Ray's default is 15)
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
        except PermissionError:
            print("warning: running niced; timings may suffer from other processes", file=sys.stderr)

    from harness.contract import TrialRequest, TrialResult
    from harness.worker.trial import run_trial

    request = TrialRequest.from_dict(raw)
    started = time.time()
    try:
        _inject(request.fault)
        result = run_trial(request, preloaded)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        traceback.print_exc()  # the launcher keeps the stderr tail
        result = TrialResult(
            trial_key=request.spec.trial_key,
            spec=request.spec,
            status=_status_for(exc),  # type: ignore[arg-type]
            reason=f"{type(exc).__name__}: {exc}",
        )
    result.started_at, result.wall_s = started, time.time() - started
    tmp = out.with_suffix(".tmp")
    tmp.write_text(result.to_json())
    tmp.replace(out)
    return 0


def exit_now(code: int) -> None:
    """The result is on disk: skip the interpreter's teardown, where the frameworks' exit handlers and
    thread joins take 0.5-2 s per trial (TensorFlow the most) and measure nothing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.worker", description=__doc__)
    parser.add_argument("--request", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    return run(args.request, args.out)


if __name__ == "__main__":
    exit_now(main())
