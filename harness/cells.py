"""A cell's figures from its processes (driver side).

A cell is one trial key measured by K independent worker processes (``repeats``). What one process
measured (its median step time, its latency percentiles) is a sample of what the cell does; the
cell's figures are the geometric mean over its processes with a 95% interval from a hierarchical
bootstrap (processes, then windows within each: :mod:`harness.stats`). So the interval describes
the spread users meet between runs, not the jitter inside one process.

A cell is ``unstable`` (with the reason) when its processes disagree by more than ``unstable_cv``
(between-process coefficient of variation of throughput, 10% by default) or when it has fewer than
3 processes: with 1 the run-to-run spread is unknown, and no interval is presented as if it were.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from harness import metrics as M
from harness import stats
from harness.contract import OK_STATUSES, TrialResult, TrialSpec
from harness.journal import group_cells

UNSTABLE_CV = 0.10  # default: between-process CV of throughput above this flags the cell
MIN_PROCESSES = 3  # fewer: no usable run-to-run interval
ONE_PROCESS = "1 process: run-to-run spread unknown"


def step_times(r: TrialResult) -> np.ndarray | None:
    """One process's per-step seconds of its throughput scenario (one value per timed window)."""
    key = M.TRAIN_WINDOW_S if r.spec.mode == "train" else M.OFFLINE_WINDOW_S
    windows = r.samples.get(key)
    if not windows:
        return None
    per_window = r.metrics.get(M.WINDOW_STEPS) or r.metrics.get(M.TIMED_STEPS, len(windows)) / len(windows)
    return np.asarray(windows, dtype=np.float64) / per_window


def latency_times(r: TrialResult) -> np.ndarray | None:
    """One process's latency samples in seconds: per request (infer, single stream) or per step (train)."""
    if r.spec.mode == "infer":
        requests = r.samples.get(M.SINGLE_STREAM_REQUEST_S)
        return np.asarray(requests, dtype=np.float64) if requests else None
    return step_times(r)


@dataclass
class Cell:
    """One cell of a batch and the processes that measured it (latest attempt of each replica)."""

    processes: list[TrialResult]
    unstable_cv: float = UNSTABLE_CV
    seed: int = 0
    _metrics: dict[str, float] | None = field(default=None, repr=False)
    # multi-worker cells: the batch's 1-worker cell of the same spec (scaling efficiency), set by cells()
    single: Cell | None = field(default=None, repr=False)

    @property
    def spec(self) -> TrialSpec:
        return self.processes[0].spec

    @property
    def trial_key(self) -> str:
        return self.processes[0].trial_key

    @property
    def ok_processes(self) -> list[TrialResult]:
        return [p for p in self.processes if p.status == "ok"]

    @property
    def status(self) -> str:
        """``ok`` when every process is; otherwise the first other status (``run`` then exits 1)."""
        bad = [p for p in self.processes if p.status != "ok"]
        return bad[0].status if bad else "ok"

    @property
    def ok(self) -> bool:
        return all(p.status in OK_STATUSES for p in self.processes)

    @property
    def reason(self) -> str:
        bad = [p for p in self.processes if p.status != "ok"]
        if not bad:
            return ""
        if len(self.processes) == 1:
            return bad[0].reason
        good = len(self.processes) - len(bad)
        figures = f"; figures from the {good} ok" if good else ""
        return f"{len(bad)} of {len(self.processes)} processes {bad[0].status}: {bad[0].reason}{figures}"

    @property
    def repeats(self) -> int:
        return len(self.ok_processes)

    @property
    def representative(self) -> TrialResult:
        """The process whose curves, environment and versions stand for the cell (the first ok one)."""
        ok = self.ok_processes
        return ok[0] if ok else self.processes[-1]

    @cached_property
    def step_groups(self) -> list[np.ndarray]:
        """Per-step seconds of each ok process that timed its throughput scenario (one array per process)."""
        return [g for g in map(step_times, self.ok_processes) if g is not None and g.size]

    @cached_property
    def latency_groups(self) -> list[np.ndarray]:
        """Latency seconds of each ok process (see :func:`latency_times`)."""
        return [g for g in map(latency_times, self.ok_processes) if g is not None and g.size]

    @cached_property
    def throughput(self) -> stats.Interval | None:
        """Samples per second: estimate and 95% interval (between processes when K >= 2)."""
        if not self.step_groups:
            return None
        t = stats.cell_interval(self.step_groups, 50.0, seed=self.seed)
        bs = self.spec.global_batch
        return stats.Interval(bs / t.estimate, bs / t.high, bs / t.low, t.processes, t.between_known)

    @cached_property
    def process_throughputs(self) -> list[float]:
        bs = self.spec.global_batch
        return [bs / stats.process_value(g) for g in self.step_groups]

    @property
    def cv_between(self) -> float | None:
        values = self.process_throughputs
        return stats.between_cv(values) if len(values) >= 2 else None

    @property
    def unstable(self) -> str | None:
        """Why this cell's figures should not be trusted for a decision (None: they can be)."""
        if self.throughput is None:
            return None
        k = len(self.process_throughputs)
        if k == 1:
            return ONE_PROCESS
        cv = self.cv_between or 0.0
        if cv > self.unstable_cv:
            return f"CV {cv:.1%} > {self.unstable_cv:.0%}"
        if k < MIN_PROCESSES:
            return f"{k} processes (< {MIN_PROCESSES})"
        return None

    def latency(self, q: float) -> stats.Interval | None:
        """Latency percentile ``q`` in milliseconds over processes (the ``latency_ms`` metric)."""
        if not self.latency_groups:
            return None
        t = stats.cell_interval(self.latency_groups, q, seed=self.seed)
        return stats.Interval(t.estimate * 1e3, t.low * 1e3, t.high * 1e3, t.processes, t.between_known)

    @property
    def metrics(self) -> dict[str, float]:
        """The cell's metrics: interval figures where processes vary, else the median over its processes."""
        if self._metrics is None:
            self._metrics = self._compute()
        return self._metrics

    def _compute(self) -> dict[str, float]:
        ok = self.ok_processes
        source = ok or self.processes
        keys = dict.fromkeys(k for p in source for k in p.metrics)
        out = {k: float(statistics.median(p.metrics[k] for p in source if k in p.metrics)) for k in keys}
        if not ok:
            return out
        out[M.REPEATS] = float(len(ok))
        reached = sum(M.TIME_TO_TARGET_S in p.metrics for p in ok)
        if 0 < reached < len(ok):  # a median over the processes that got there would flatter the cell
            out.pop(M.TIME_TO_TARGET_S, None)
            out.pop(M.STEPS_TO_TARGET, None)
        if reached < len(ok) and self.spec.train.target_accuracy is not None and M.VAL_ACCURACY in out:
            out[M.REACHED_TARGET_FRACTION] = reached / len(ok)
        thr = self.throughput
        if thr is not None:
            out[M.THROUGHPUT] = thr.estimate
            flops = out.get(M.FLOPS_PER_SAMPLE)
            if flops:
                out[M.ACHIEVED_GFLOPS] = flops * thr.estimate / 1e9
                if out.get(M.NODE_PEAK_GFLOPS):
                    out[M.PEAK_FRACTION] = out[M.ACHIEVED_GFLOPS] / out[M.NODE_PEAK_GFLOPS]
            if thr.between_known:
                out[M.THROUGHPUT_CI_LOW], out[M.THROUGHPUT_CI_HIGH] = thr.low, thr.high
                out[M.THROUGHPUT_CV_BETWEEN] = self.cv_between or 0.0
            if len(ok) > 1:  # one process's own window jitter says nothing about the cell
                out.pop(M.THROUGHPUT_WITHIN_CI_LOW, None)
                out.pop(M.THROUGHPUT_WITHIN_CI_HIGH, None)
            base = self.single.throughput if self.single is not None else None
            if base is not None:
                out[M.SCALING_EFFICIENCY] = thr.estimate / (self.spec.workers * base.estimate)
        for q, key in M.percentile_keys(M.LATENCY).items():
            lat = self.latency(q)
            if lat is None:
                continue
            out[key] = lat.estimate
            if lat.between_known:
                out[f"{key}_ci_low"], out[f"{key}_ci_high"] = lat.low, lat.high
        return out

    def process_rows(self) -> list[dict[str, object]]:
        """One row per process: what it measured and where (the table artifact in MLflow)."""
        rows: list[dict[str, object]] = []
        serve = self.spec.mode == "serve"  # the max request rate, and latency per request at the target rate
        rate = M.SERVER_MAX_RATE if serve else M.THROUGHPUT
        latency = M.percentile_keys(M.SERVER_LATENCY if serve else M.LATENCY)
        p50, p99 = latency[50], latency[99]
        for p in self.processes:
            rows.append(
                {
                    "replica": p.replica,
                    "attempt": p.attempt,
                    "status": p.status,
                    rate: p.metrics.get(rate, float("nan")),
                    p50: p.metrics.get(p50, float("nan")),
                    p99: p.metrics.get(p99, float("nan")),
                    M.COMPILE_S: p.metrics.get(M.COMPILE_S, float("nan")),
                    M.PEAK_HOST_RSS_MB: p.metrics.get(M.PEAK_HOST_RSS_MB, float("nan")),
                    "host": str(p.environment.get("hostname", "")),
                    "cpus": ",".join(map(str, p.environment.get("cpus", []))),
                    "started_at": p.started_at,
                    "wall_s": p.wall_s,
                }
            )
        return rows


def cells(results: list[TrialResult], unstable_cv: float = UNSTABLE_CV) -> list[Cell]:
    """The cells of a batch's results (latest attempt per replica), in order of first appearance."""
    out = [Cell(group, unstable_cv) for group in group_cells(results).values()]
    by_key = {c.trial_key: c for c in out}
    for c in out:
        if c.spec.workers > 1:
            c.single = by_key.get(single_worker(c.spec).trial_key)
    return out


def single_worker(spec: TrialSpec) -> TrialSpec:
    """The 1-worker cell a multi-worker cell's scaling efficiency is measured against: the same spec
    in one process, on the per-worker batch (weak scaling) or the same global batch (strong)."""
    return spec.replace(workers=1, scaling="weak", tpu_slice=None)
