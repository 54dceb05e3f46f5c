"""A per-trial memory cap on a worker's whole process group: cgroup v2 where writable, else a watchdog.

The cap is ``TrialSpec.memory_limit_mb`` or, by default, the node's memory divided by the trials that
can run on it at once (:func:`default_limit_mb`). Either way the harness knows when *it* ended a
trial for memory (status ``oom``, with the limit and the peak), so a SIGKILL it did not send can be
reported as coming from outside (possibly the kernel's OOM killer), not as a certain OOM.

- cgroup v2: the worker starts inside a fresh child cgroup of the launcher's with ``memory.max`` =
  the limit and no swap; the kernel reclaims and then kills inside that group only. Needs a unified
  hierarchy with the memory controller delegated to the launcher's cgroup.
- watchdog: a thread polls the resident set of the worker (every ``poll_s``) and its descendants
  (found once a second) with psutil; over the limit it SIGKILLs the process group. A fast
  allocation can overshoot by what it allocates in one poll interval, which the node's headroom
  must absorb.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

POLL_S = 0.05
DESCENDANTS_EVERY_S = 1.0
_SEQUENCE = itertools.count()


def default_limit_mb(threads: int, cores: int | None = None, total_mb: float | None = None) -> int:
    """The node's memory divided by the trials of ``threads`` cores that can run on it at once."""
    cores = cores or len(os.sched_getaffinity(0))
    total_mb = total_mb or psutil.virtual_memory().total / 2**20
    return int(total_mb // max(1, cores // threads))


def cgroup2_dir(proc: Path = Path("/proc")) -> Path | None:
    """This process's cgroup v2 directory, when a v2 hierarchy holds it and delegates the memory
    controller to its children (``memory`` in ``cgroup.subtree_control``) and it is writable."""
    try:
        rel = next(
            line[3:] for line in (proc / "self" / "cgroup").read_text().splitlines() if line.startswith("0::")
        ).strip()
        mounts = (line.split() for line in (proc / "self" / "mounts").read_text().splitlines())
        mount = next(m[1] for m in mounts if len(m) > 2 and m[2] == "cgroup2")
    except (OSError, StopIteration, IndexError):
        return None
    here = Path(mount) / rel.lstrip("/")
    try:
        if "memory" not in (here / "cgroup.subtree_control").read_text().split():
            return None
    except OSError:
        return None
    return here if os.access(here, os.W_OK) else None


@dataclass
class MemoryCap:
    """Caps one worker; use :meth:`preexec` when starting it and :meth:`watch` once it runs."""

    limit_mb: int
    poll_s: float = POLL_S
    cgroup_parent: Path | None = field(default_factory=cgroup2_dir)  # None: the watchdog alone
    peak_mb: float = 0.0
    tripped: bool = False  # the harness killed the group for memory
    mechanism: str = "watchdog"
    _cgroup: Path | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        parent = self.cgroup_parent
        if parent is None:
            return
        group = parent / f"harness-trial-{os.getpid()}-{next(_SEQUENCE)}-{secrets.token_hex(3)}"
        try:
            group.mkdir()
            (group / "memory.max").write_text(str(self.limit_mb * 2**20))
            with contextlib.suppress(OSError):
                (group / "memory.swap.max").write_text("0")
        except OSError:
            with contextlib.suppress(OSError):
                group.rmdir()
            return
        self._cgroup, self.mechanism = group, "cgroup v2"
        self.poll_s = max(self.poll_s, 1.0)  # the kernel enforces; polling only adds the group's view of the peak

    @property
    def in_cgroup(self) -> bool:
        return self._cgroup is not None

    @property
    def cgroup_path(self) -> Path | None:
        """The trial's cgroup (a forked worker joins it itself), or None for the watchdog."""
        return self._cgroup

    def preexec(self) -> None:
        """Runs in the forked child before exec: join the trial's cgroup."""
        assert self._cgroup is not None
        (self._cgroup / "cgroup.procs").write_text(str(os.getpid()))

    def watch(self, pid: int) -> None:
        """Start polling the worker's group (peak tracking; and the limit itself without a cgroup)."""
        self._thread = threading.Thread(target=self._poll, args=(pid,), daemon=True)
        self._thread.start()

    def _poll(self, pid: int) -> None:
        """Sum the resident sets of the worker and its descendants every ``poll_s``. Finding the
        descendants scans every process of the node (about 2 ms), so that list is refreshed once a
        second; the worker itself, where allocations happen, is read at every poll (a few µs)."""
        try:
            root = psutil.Process(pid)
        except psutil.Error:
            return
        members: list[psutil.Process] = []
        refreshed = float("-inf")
        while not self._stop.wait(self.poll_s):
            try:
                if time.monotonic() - refreshed >= DESCENDANTS_EVERY_S:
                    members, refreshed = root.children(recursive=True), time.monotonic()
                rss = root.memory_info().rss
            except psutil.Error:  # the worker is gone
                return
            for p in members:
                with contextlib.suppress(psutil.Error):
                    rss += p.memory_info().rss
            rss_mb = rss / 2**20
            self.peak_mb = max(self.peak_mb, rss_mb)
            if self._cgroup is None and rss_mb > self.limit_mb:
                self.tripped = True
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                return

    def finish(self) -> None:
        """Stop watching; read the cgroup's verdict and peak; remove the cgroup."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        group = self._cgroup
        if group is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.peak_mb = max(self.peak_mb, int((group / "memory.peak").read_text()) / 2**20)
        with contextlib.suppress(OSError, ValueError):
            events = dict(line.split() for line in (group / "memory.events").read_text().splitlines())
            self.tripped = self.tripped or int(events.get("oom_kill", 0)) > 0
        for _ in range(50):  # a killed group empties asynchronously
            try:
                group.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.02)

    def reason(self) -> str:
        return (
            f"exceeded the trial's memory limit of {self.limit_mb} MB (peak {self.peak_mb:,.0f} MB, "
            f"enforced by {self.mechanism}); raise it with --memory-limit or memory_limit_mb, or lower the batch size"
        )
