"""A node's noise, measured (``harness calibrate``) and used by ``harness compare --threshold auto``.

An A/A measurement: one reference cell run as two interleaved groups of K processes (replicas
0, 2, 4, ... against 1, 3, 5, ...) on the same node, the same code and the same settings. Nothing
differs, so the ratio of the two groups' throughputs is 1 and its 95% interval shows how far apart
two K-process measurements of identical work land on this node. Its largest deviation from 1
(at least 1%, rounded up to half a percent) is the node's noise threshold: a difference smaller than
that cannot be told from noise by a comparison of about K processes per side. Stored per node
(hostname) and device under ``$HARNESS_CACHE/noise/`` and logged to MLflow as its own run.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from harness import stats
from harness.cells import Cell, step_times

MIN_THRESHOLD = 0.01


def _root() -> Path:
    return Path(os.environ.get("HARNESS_CACHE", Path.home() / ".cache" / "harness")) / "noise"


def path(host: str, device: str) -> Path:
    return _root() / f"{host}-{device}.json"


def lookup(host: str, device: str) -> float | None:
    """The stored threshold of ``host``'s ``device`` (None when it was never calibrated)."""
    p = path(host, device)
    try:
        return float(json.loads(p.read_text())["threshold"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def measure(cell: Cell) -> dict[str, Any]:
    """The A/A figures of a calibration cell (its even against its odd replicas)."""
    ok = cell.ok_processes
    groups = [[p for p in ok if p.replica % 2 == side] for side in (0, 1)]
    if min(len(g) for g in groups) < 2:
        raise ValueError(f"calibration needs at least 2 ok processes per group, got {[len(g) for g in groups]}")
    a, b = ([g for g in map(step_times, side) if g is not None] for side in groups)
    ratio = stats.ratio_interval(a, b, 50.0, higher_is_better=True)
    deviation = max(1 - ratio.low, ratio.high - 1, MIN_THRESHOLD)
    threshold = math.ceil(deviation * 200) / 200  # up to half a percent
    hosts = sorted({str(p.environment.get("hostname", "")) for p in ok})
    return {
        "host": hosts[0] if len(hosts) == 1 else ",".join(hosts),
        "device": cell.spec.device,
        "cell": cell.spec.name,
        "batch_size": cell.spec.batch_size,
        "threads": cell.spec.threads,
        "processes_per_group": min(len(g) for g in groups),
        "ratio": ratio.estimate,
        "ratio_ci_low": ratio.low,
        "ratio_ci_high": ratio.high,
        "cv_between": cell.cv_between or 0.0,
        "threshold": threshold,
        "measured_at": time.time(),
        "trial_key": cell.trial_key,
    }


def save(record: dict[str, Any]) -> Path:
    p = path(str(record["host"]), str(record["device"]))
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(p)
    return p
