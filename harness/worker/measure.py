"""The measurement protocol: compile time, warm-up, timed windows, statistics, memory, GEMM peak.

Worker-side (numpy and the standard library only); the budgets are the contract's ``MeasureSpec``.
Every clock read is preceded by ``sync()``, so
asynchronous frameworks (JAX, CUDA) are timed on finished work, not on dispatch.

Protocol for one scenario:
1. the first call (tracing, XLA/inductor compilation, autotuning) is timed alone -> ``compile_s``;
2. ``warmup_steps`` untimed calls;
3. window calibration: one untimed window of ``window_steps`` calls is timed; if it took less than
   ``min_window_s``, the steps per window grow so that one clock read covers at least that long
   (timer resolution and the dispatch jitter of a tiny model then stay small against a window);
4. timed windows of that many calls each, one clock read per window, until at least ``min_steps``
   calls AND ``min_time_s`` seconds are done. Per-window seconds are the raw samples.
"""

from __future__ import annotations

import json
import math
import os
import resource
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.contract import MeasureSpec

Clock = Callable[[], float]
Agree = Callable[[Sequence[float]], list[float]]
MAX_WINDOW_STEPS = 100_000


@dataclass(frozen=True)
class Timing:
    compile_s: float
    window_s: list[float]  # raw samples: seconds per window
    window_steps: int

    @property
    def step_s(self) -> np.ndarray:
        return np.asarray(self.window_s) / self.window_steps

    @property
    def steps(self) -> int:
        return len(self.window_s) * self.window_steps


def run_timed(
    step: Callable[[], object],
    sync: Callable[[], None],
    budget: MeasureSpec,
    clock: Clock = time.perf_counter,
    agree: Agree | None = None,
    on_start: Callable[[], None] | None = None,
) -> Timing:
    """Time ``step`` by the protocol above; ``sync`` is called before every clock read.

    ``agree`` (the workers of a multi-worker trial, :class:`harness.worker.group.Group.max`): the
    element-wise maximum over every worker. The workers then use the same steps per window, start
    the timed windows together, stop after the same window, and record each window as the slowest
    worker's; the exchange happens between windows, untimed. ``on_start`` is called just before
    the first timed window (e.g. to reset counters that should cover the timed steps only).
    """
    same = agree or (lambda values: list(values))
    sync()
    t0 = clock()
    step()
    sync()
    compile_s = same([clock() - t0])[0]
    for _ in range(budget.warmup_steps):
        step()
    per_window = int(same([calibrate_window(step, sync, budget, clock)])[0])
    windows: list[float] = []
    sync()
    same([0.0])  # a barrier: every worker starts its first window now
    if on_start is not None:
        on_start()
    start = last = clock()
    while True:
        for _ in range(per_window):
            step()
        sync()
        now = clock()
        more = (len(windows) + 1) * per_window < budget.min_steps or now - start < budget.min_time_s
        window, go_on = same([now - last, float(more)])
        windows.append(window)
        if not go_on:
            break
        last = now if agree is None else clock()
    return Timing(compile_s, windows, per_window)


def calibrate_window(step: Callable[[], object], sync: Callable[[], None], budget: MeasureSpec, clock: Clock) -> int:
    """Steps per timed window: ``window_steps``, or more so that a window lasts ``min_window_s``."""
    if budget.min_window_s <= 0:
        return budget.window_steps
    sync()
    t0 = clock()
    for _ in range(budget.window_steps):
        step()
    sync()
    took = clock() - t0
    if took >= budget.min_window_s:
        return budget.window_steps
    per_step = max(took / budget.window_steps, 1e-9)
    return min(MAX_WINDOW_STEPS, max(budget.window_steps, math.ceil(budget.min_window_s / per_step)))


def summarize(samples: np.ndarray | list[float], seed: int = 0, resamples: int = 1000) -> dict[str, float]:
    """Median, mean, percentiles, coefficient of variation and a 95% bootstrap CI of the median."""
    a = np.asarray(samples, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no samples to summarize")
    p50, p90, p95, p99 = np.percentile(a, [50, 90, 95, 99])
    mean = float(a.mean())
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(a, size=(resamples, a.size), replace=True), axis=1)
    lo, hi = np.percentile(medians, [2.5, 97.5])
    return {
        "median": float(p50),
        "mean": mean,
        "p50": float(p50),
        "p90": float(p90),
        "p95": float(p95),
        "p99": float(p99),
        "cv": float(a.std(ddof=1) / mean) if a.size > 1 and mean > 0 else 0.0,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "n": float(a.size),
    }


def peak_rss_mb() -> float:
    """Kernel high-water mark of this process's resident set (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def _gemm_gflops(n: int = 1024, min_time_s: float = 0.3) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b  # warm-up
    best = float("inf")
    start = time.perf_counter()
    while time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def gemm_peak_gflops(threads: int, cache_dir: Path | None) -> float:
    """This node's float32 GEMM peak for ``threads`` threads on this CPU set.

    Measured with numpy's BLAS (1024^3 matmul, best of ~0.3 s) so the reference is the same for
    every framework; the thread count comes from the BLAS environment the launcher set. A peak is a
    maximum: the cache keeps the best measurement and is refreshed (max of old and new) after an
    hour, so one measurement disturbed by a busy moment does not stick.
    """
    cpus = sorted(os.sched_getaffinity(0))
    # keyed by node, CPU set and threads only: every framework's environment shares (and raises) it
    key = f"{socket.gethostname()}-t{threads}-c{'_'.join(map(str, cpus))}"
    path = cache_dir / f"gemm-peak-{key}.json" if cache_dir else None
    previous = 0.0
    if path and path.exists():
        try:
            cached = json.loads(path.read_text())
            previous = float(cached["gflops"])
            if time.time() - float(cached["measured_at"]) < 3600:
                return previous
        except (ValueError, KeyError, OSError):
            pass
    gflops = max(previous, _gemm_gflops())
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"gflops": gflops, "measured_at": time.time()}))
        tmp.replace(path)
    return gflops
