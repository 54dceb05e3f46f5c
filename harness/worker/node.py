"""The node a trial ran on: host, CPU, memory, GPUs (NVML), TPU; recorded in every result's environment.

Worker side: the standard library only (it imports in every framework's interpreter, MXNet's
included). GPUs come from NVML through ``pynvml`` (the nvidia-ml-py package) when it is installed
and a driver answers; otherwise from ``/proc/driver/nvidia`` (names and driver, no memory), and
``nvml`` says why NVML was not used. TPU facts come from the variables TPU hosts set (GKE sets
``TPU_ACCELERATOR_TYPE``, ``TPU_TOPOLOGY``, ``TPU_WORKER_ID``, ``TPU_NAME``, as Ray's
``ray/_private/accelerators/tpu.py`` reads them) and the chips from ``/dev/accel*`` or VFIO groups
of Google's PCI vendor; the GCE metadata server is never asked. ``energy`` says, per device kind,
which counter a trial's energy comes from or why there is none (:mod:`harness.worker.telemetry`).
Computed once per process.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import glob
import os
import platform
import socket
from pathlib import Path
from typing import Any

from harness.worker.telemetry import energy_info

TPU_ENV = {  # result field: environment variable
    "accelerator_type": "TPU_ACCELERATOR_TYPE",
    "topology": "TPU_TOPOLOGY",
    "worker_id": "TPU_WORKER_ID",
    "name": "TPU_NAME",
    "worker_hostnames": "TPU_WORKER_HOSTNAMES",
    "visible_chips": "TPU_VISIBLE_CHIPS",
    "chips_per_host_bounds": "TPU_CHIPS_PER_HOST_BOUNDS",
    "host_bounds": "TPU_HOST_BOUNDS",
}
TPU_PCI_VENDOR = "0x1ae0"  # Google
NVIDIA_PROC = Path("/proc/driver/nvidia")


def node_info() -> dict[str, Any]:
    """This node: hostname, kernel, CPU model and cores, memory, GPUs, TPU (a copy of the cached record)."""
    return copy.deepcopy(_node_info())


@functools.cache
def _node_info() -> dict[str, Any]:
    physical, sockets = physical_cores()
    gpus, driver, why = gpu_info()
    return {
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_logical": os.cpu_count() or 0,
        "cpu_physical": physical,  # None: the topology is not readable here
        "cpu_sockets": sockets,
        "memory_total_mb": memory_total_mb(),
        "gpu": gpus,
        **driver,
        "nvml": why,
        "tpu": tpu_info(),
        "energy": energy_info(),
    }


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model") and value.strip():  # x86, ARM, others
            return value.strip()
    return platform.processor() or platform.machine()


def physical_cores() -> tuple[int | None, int | None]:
    """``(physical cores, sockets)`` of the node: distinct (package, core) pairs of its CPUs in sysfs,
    else in /proc/cpuinfo; ``(None, None)`` when neither says."""
    pairs: set[tuple[str, str]] = set()
    for topo in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/topology"):
        package, core = _read(f"{topo}/physical_package_id").strip(), _read(f"{topo}/core_id").strip()
        if package and core:
            pairs.add((package, core))
    if not pairs:
        package = ""
        for line in _read("/proc/cpuinfo").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "physical id":
                package = value.strip()
            elif key.strip() == "core id":
                pairs.add((package, value.strip()))
    if not pairs:
        return None, None
    return len(pairs), len({p for p, _ in pairs})


def memory_total_mb() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024, 1)  # kB
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _visible(index: int, uuid: str, visible: str | None) -> bool:
    """Whether CUDA_VISIBLE_DEVICES (unset: all) lets this process see the GPU (by index or UUID prefix)."""
    if visible is None:
        return True
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    return any(e == str(index) or (not e.isdigit() and uuid.startswith(e)) for e in entries)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_info() -> tuple[list[dict[str, Any]], dict[str, str], str]:
    """``(GPUs, driver fields, nvml)``: each GPU's index, name, UUID, memory and whether this process
    sees it; the driver and CUDA driver versions; ``"ok"`` or why NVML was not used."""
    try:
        import pynvml  # the nvidia-ml-py package: optional, absent in some framework environments
    except ImportError:
        gpus, driver = _proc_gpus()
        return gpus, driver, "pynvml (nvidia-ml-py) is not installed in this interpreter"
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound (no driver), NVMLError_DriverNotLoaded, ...
        gpus, driver = _proc_gpus()
        return gpus, driver, f"NVML did not start: {type(e).__name__}: {e}"
    try:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        driver = {"gpu_driver": _text(pynvml.nvmlSystemGetDriverVersion())}
        with contextlib.suppress(Exception):  # older drivers lack it
            cuda = int(pynvml.nvmlSystemGetCudaDriverVersion())  # e.g. 12040
            driver["cuda_driver"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
        gpus = []
        for index in range(int(pynvml.nvmlDeviceGetCount())):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
            gpus.append({
                "index": index,
                "name": _text(pynvml.nvmlDeviceGetName(handle)),
                "uuid": uuid,
                "memory_total_mb": round(int(pynvml.nvmlDeviceGetMemoryInfo(handle).total) / 2**20, 1),
                "visible": _visible(index, uuid, visible),
            })  # fmt: skip
        return gpus, driver, "ok"
    except Exception as e:
        return [], {}, f"NVML failed: {type(e).__name__}: {e}"
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _proc_gpus() -> tuple[list[dict[str, Any]], dict[str, str]]:
    """GPUs and driver version from the NVIDIA kernel module's procfs (no memory figures there)."""
    root = NVIDIA_PROC
    driver: dict[str, str] = {}
    version = _read(root / "version").split()
    if "Module" in version and version.index("Module") + 1 < len(version):  # "... Kernel Module  550.54.15 ..."
        driver["gpu_driver"] = version[version.index("Module") + 1]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    gpus: list[dict[str, Any]] = []
    for index, info in enumerate(sorted((root / "gpus").glob("*/information"))):
        fields = {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in _read(info).splitlines())}
        uuid = fields.get("GPU UUID", "")
        gpus.append({
            "index": index,
            "name": fields.get("Model", ""),
            "uuid": uuid,
            "memory_total_mb": None,
            "visible": _visible(index, uuid, visible),
        })  # fmt: skip
    return gpus, driver


def tpu_chips() -> int:
    """TPU chips on this host: ``/dev/accel*`` devices (not NVIDIA's /dev/accel folder), else VFIO
    groups whose devices are Google's (as Ray counts them)."""
    accel = [p for p in glob.glob("/dev/accel*") if not os.path.isdir(p)]
    if accel:
        return len(accel)
    vendors = (
        glob.glob(f"/sys/kernel/iommu_groups/{Path(g).name}/devices/*/vendor") for g in glob.glob("/dev/vfio/[0-9]*")
    )
    return sum(any(_read(v).strip() == TPU_PCI_VENDOR for v in group) for group in vendors)


def tpu_info() -> dict[str, Any]:
    """The TPU host's accelerator type, topology, worker id, slice name, visible chips (from the
    environment) and chip count; empty on a node without a TPU."""
    out: dict[str, Any] = {field: os.environ[var] for field, var in TPU_ENV.items() if os.environ.get(var)}
    if "worker_id" in out and out["worker_id"].isdigit():
        out["worker_id"] = int(out["worker_id"])
    chips = tpu_chips()
    if chips:
        out["chips"] = chips
    return out
