"""Device telemetry of a trial: this process's GPU memory from NVML, and energy counters.

Worker side: the standard library only. ``pynvml`` (the nvidia-ml-py package) is imported lazily:
an interpreter without it, or a node without a driver, has no NVML figures, and the reason says so.

- GPU memory: :class:`NvmlMemory` polls NVML's compute processes of every GPU from a thread (every
  ``NVML_POLL_S``, from before the model is built to the end of the trial) and keeps the highest sum
  of this process's ``usedGpuMemory``: what the driver holds for the process (the framework's cached
  and reserved memory and its context included), beside the framework's own peak counter. A sampled
  peak: allocations that come and go between two polls are missed (the caching allocators of torch,
  XLA and TF rarely give memory back, so their high-water mark stays visible). Inside a container
  with its own PID namespace NVML reports host PIDs, and the process is never found: the reason says so.
- Energy: a cumulative counter in joules over the devices a trial runs on. GPU trials: NVML's
  ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since the driver loaded; Volta and later) summed over
  the GPUs this process sees. CPU trials: RAPL through powercap (``energy_uj`` of each package
  domain, ``intel-rapl:N``; subdomains are parts of their package and not added), which wraps at
  ``max_energy_range_uj`` (at most one wrap between two reads is assumed: minutes at full power).
  A package counter covers the whole socket, other processes included. The powercap root is
  ``$HARNESS_POWERCAP_ROOT`` when set (tests), else ``/sys/class/powercap``. Since 2020 kernels
  make ``energy_uj`` readable by root only, so unprivileged workers usually get the reason.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

POWERCAP_ENV = "HARNESS_POWERCAP_ROOT"
POWERCAP_ROOT = "/sys/class/powercap"
NVML_POLL_S = 0.05
PACKAGE = re.compile(r"intel-rapl:\d+")  # a package domain; "intel-rapl:0:1" is a subdomain of package 0


def _nvml() -> tuple[Any, str | None]:
    """``(pynvml, None)`` with NVML initialised (pair it with ``nvmlShutdown``), or ``(None, why not)``."""
    try:
        import pynvml  # the nvidia-ml-py package: absent in some framework environments
    except ImportError:
        return None, "pynvml (nvidia-ml-py) is not installed in this interpreter"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound (no driver), NVMLError_DriverNotLoaded, ...
        return None, f"NVML did not start: {type(e).__name__}: {e}"
    return pynvml, None


def _visible_handles(nvml: Any) -> list[Any]:
    """Handles of the GPUs CUDA_VISIBLE_DEVICES lets this process see (unset: all)."""
    from harness.worker.node import _text, _visible

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(int(nvml.nvmlDeviceGetCount()))]
    return [h for i, h in enumerate(handles) if _visible(i, _text(nvml.nvmlDeviceGetUUID(h)), visible)]


class NvmlMemory:
    """Peak GPU memory of process ``pid`` as NVML reports it, sampled by a thread between start and stop."""

    def __init__(self, pid: int | None = None, interval_s: float = NVML_POLL_S) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.interval_s = interval_s
        self.peak_bytes: int | None = None
        self.reason: str | None = None  # why there is no peak
        self._nvml: Any = None
        self._handles: list[Any] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> NvmlMemory:
        self._nvml, self.reason = _nvml()
        if self._nvml is None:
            return self
        try:
            self._handles = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(self._nvml.nvmlDeviceGetCount())]
        except Exception as e:
            self.reason = f"NVML failed: {type(e).__name__}: {e}"
            return self
        self._thread = threading.Thread(target=self._poll, name="nvml-memory", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        nvml, used, found = self._nvml, 0, False
        for handle in self._handles:
            for proc in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                if proc.pid == self.pid and proc.usedGpuMemory is not None:
                    used, found = used + int(proc.usedGpuMemory), True
        if found:
            self.peak_bytes = max(self.peak_bytes or 0, used)

    def _poll(self) -> None:
        while True:
            try:
                self._sample()
            except Exception as e:  # keep the trial going; say why the figure is missing or partial
                self.reason = f"NVML failed while sampling: {type(e).__name__}: {e}"
                return
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> float | None:
        """Stop sampling (one last sample); the peak in MB, or None (``reason`` says why)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            with contextlib.suppress(Exception):
                self._sample()
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
            self._nvml = None
        if self.peak_bytes is None and self.reason is None:
            self.reason = (
                f"process {self.pid} was never among NVML's compute processes "
                "(no GPU work, or a container's PID namespace: NVML reports host PIDs)"
            )
        return None if self.peak_bytes is None else self.peak_bytes / 2**20


class EnergyMeter(Protocol):
    source: str

    def joules(self) -> float:
        """Cumulative joules since the meter opened (raises OSError or NVML errors when unreadable)."""
        ...


class NvmlEnergy:
    """NVML's total energy counters of the GPUs this process sees."""

    source = "nvml"

    def __init__(self, nvml: Any, handles: list[Any]) -> None:
        self.nvml, self.handles = nvml, handles
        self.start = self._mj()

    def _mj(self) -> int:
        return sum(int(self.nvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self.handles)

    def joules(self) -> float:
        return (self._mj() - self.start) / 1e3


class Rapl:
    """RAPL package counters under a powercap root, each wrap-around added back."""

    source = "rapl"

    def __init__(self, domains: list[Path]) -> None:
        self.domains = domains
        self.ranges = [int((d / "max_energy_range_uj").read_text()) for d in domains]
        self.last = [self._raw(d) for d in domains]
        self.total_uj = 0

    @staticmethod
    def _raw(domain: Path) -> int:
        return int((domain / "energy_uj").read_text())

    def joules(self) -> float:
        for i, domain in enumerate(self.domains):
            now = self._raw(domain)
            delta = now - self.last[i]
            self.total_uj += delta if delta >= 0 else delta + self.ranges[i]
            self.last[i] = now
        return self.total_uj / 1e6


def powercap_root() -> Path:
    return Path(os.environ.get(POWERCAP_ENV) or POWERCAP_ROOT)


def rapl(root: Path | None = None) -> tuple[Rapl | None, str]:
    """A RAPL meter over the package domains under ``root`` (default :func:`powercap_root`), or why not."""
    root = powercap_root() if root is None else root
    if not root.is_dir():
        return None, f"RAPL: {root} does not exist"
    domains = sorted(d for d in root.iterdir() if PACKAGE.fullmatch(d.name))
    if not domains:
        return None, f"RAPL: no package domains (intel-rapl:N) under {root}"
    try:
        meter = Rapl(domains)
    except (OSError, ValueError) as e:
        return None, f"RAPL: {root} is not readable: {type(e).__name__}: {e}"
    names = ", ".join(_name(d) for d in domains)
    return meter, f"rapl: {len(domains)} package domain(s) under {root} ({names})"


def _name(domain: Path) -> str:
    try:
        return (domain / "name").read_text().strip() or domain.name
    except OSError:
        return domain.name


def nvml_energy() -> tuple[NvmlEnergy | None, str]:
    """An NVML energy meter over this process's visible GPUs, or why not."""
    nvml, why = _nvml()
    if nvml is None:
        return None, why or ""
    try:
        handles = _visible_handles(nvml)
        if not handles:
            raise RuntimeError("no visible GPU")
        meter = NvmlEnergy(nvml, handles)
    except Exception as e:  # NVMLError_NotSupported before Volta
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()
        return None, f"NVML energy counter: {type(e).__name__}: {e}"
    return meter, f"nvml: total energy of {len(handles)} visible GPU(s)"


OPENERS: dict[str, Callable[[], tuple[EnergyMeter | None, str]]] = {"cpu": rapl, "gpu": nvml_energy}


def open_energy(device: str) -> tuple[EnergyMeter | None, str]:
    """The energy meter of a trial on ``device`` and what it reads, or None and why there is none."""
    opener = OPENERS.get(device)
    if opener is None:
        return None, f"no energy counter for {device} trials"
    return opener()


@functools.cache
def energy_info() -> dict[str, str]:
    """What each device kind's trials on this node measure energy with, or why they cannot (the node record)."""
    out = {}
    for device, opener in OPENERS.items():
        meter, what = opener()
        out[device] = what
        if isinstance(meter, NvmlEnergy):
            with contextlib.suppress(Exception):
                meter.nvml.nvmlShutdown()
    return out
