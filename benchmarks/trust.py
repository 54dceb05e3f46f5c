"""``make bench`` sections about trust: how noisy one node is, and whether the harness's intervals and
verdicts hold there. Every batch runs through the CLI as a user would (``harness run``, ``harness
compare``), in a temporary runs folder and SQLite store; the figures come from the journals.

- ``noise``: the same 8 cells (torch, jax x mlp_deep, cnn1d x train, infer, batch 128) as K
  processes each, trials holding every core (``--threads`` = cores, ``--reserve-cores 0``) against
  one thread with a core reserved (the default): between-process CV per cell, and how often the 95%
  interval of half of the processes misses the other half's estimate.
- ``replication``: the ``compare`` suite (24 cells, K = 5) twice, independently: coverage (a cell's
  interval in one batch contains the other batch's estimate), A/A verdicts of ``harness compare`` on
  the two, and the cost of K = 5 against K = 1 (wall time).
- ``power``: training with 2 threads (every core) against 1 (mlp_deep batch 128, resnet20 batch 32,
  every framework, K = 5): where the difference is >= 1.5x, is it called ``slower``?
- ``overhead``: the harness's mlp_deep training throughput against a minimal hand-written loop
  (benchmarks/handloop.py), both as K processes, interleaved, on the same leased core: the ratio with
  its 95% interval.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness import stats
from harness.cells import Cell, cells, step_times
from harness.contract import TrialResult
from harness.journal import Batch

HERE = Path(__file__).resolve().parent


class Runs:
    """A temporary runs folder and MLflow store; ``harness`` invocations against them."""

    def __init__(self, root: Path):
        self.root = root
        self.env = {
            **os.environ,
            "HARNESS_RUNS_DIR": str(root / "runs"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        }
        self.env.pop("RAY_ADDRESS", None)

    def harness(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [sys.executable, "-m", "harness.cli", *args], env=self.env, cwd=self.root, capture_output=True, text=True
        )
        if check and proc.returncode not in (0, 1):
            raise RuntimeError(f"harness {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc

    def run(self, *args: str) -> tuple[str, list[Cell], float]:
        """``harness run ARGS``: the new batch's id, its cells and the wall time."""
        before = set(self.batches())
        start = time.perf_counter()
        proc = self.harness("run", *args)
        wall = time.perf_counter() - start
        (batch_id,) = set(self.batches()) - before
        found = cells(Batch(self.root / "runs", batch_id).results())
        bad = [c for c in found if c.status not in ("ok", "unsupported")]
        if bad:
            print(f"  warning: {len(bad)} cells not ok: {bad[0].spec.name}: {bad[0].reason[:200]}", file=sys.stderr)
        print(f"  {batch_id}: {len(found)} cells in {wall:.0f} s ({proc.stdout.strip().splitlines()[-1][:150]})")
        return batch_id, found, wall

    def batches(self) -> list[str]:
        return [p.parent.name for p in (self.root / "runs").glob("*/batch.json")]

    def compare(self, *args: str) -> dict[str, Any]:
        proc = self.harness("compare", *args, "--json")
        data: dict[str, Any] = json.loads(proc.stdout)
        data["exit_code"] = proc.returncode
        return data


def _ok(found: list[Cell]) -> dict[str, Cell]:
    return {c.spec.name: c for c in found if c.throughput is not None}


def _half_misses(c: Cell) -> bool:
    """The 95% interval of the even processes misses the odd processes' estimate (or vice versa)."""
    groups = [
        [g for p in c.ok_processes if p.replica % 2 == side and (g := step_times(p)) is not None] for side in (0, 1)
    ]
    a, b = (stats.cell_interval(g) for g in groups)
    return not (a.low <= b.estimate <= a.high and b.low <= a.estimate <= b.high)


def noise(repeats: int = 8) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    select = ["--framework", "torch,jax", "--arch", "mlp_deep,cnn1d", "--batch-size", "128"]
    out: dict[str, Any] = {"repeats": repeats, "cells": {}}
    with tempfile.TemporaryDirectory() as tmp:
        runs = Runs(Path(tmp))
        configs = {
            f"{cores} threads, no core reserved": ["--threads", str(cores), "--reserve-cores", "0"],
            f"{max(1, cores - 1)} thread(s), 1 core reserved": [],
        }
        for label, extra in configs.items():
            print(f"noise: {label}")
            _, found, wall = runs.run("compare", *select, "--repeats", str(repeats), *extra)
            ok = _ok(found)
            cvs = {name: c.cv_between or 0.0 for name, c in ok.items()}
            out["cells"][label] = {
                "cv_between": cvs,
                "median_cv": float(np.median(list(cvs.values()))),
                "min_cv": min(cvs.values()),
                "max_cv": max(cvs.values()),
                "half_interval_misses": sum(_half_misses(c) for c in ok.values() if len(c.ok_processes) >= 2),
                "cells": len(ok),
                "wall_s": wall,
            }
    return out


def replication(repeats: int = 5) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        runs = Runs(Path(tmp))
        print("replication: the compare suite twice, then once at K = 1")
        a_id, a_cells, a_wall = runs.run("compare", "--repeats", str(repeats), "--seed", "1")
        b_id, b_cells, b_wall = runs.run("compare", "--repeats", str(repeats), "--seed", "2")
        _, _, one_wall = runs.run("compare", "--repeats", "1", "--seed", "3")
        a, b = _ok(a_cells), _ok(b_cells)
        both = sorted(set(a) & set(b))
        covered: dict[str, dict[str, Any]] = {}
        for name in both:
            ia, ib = a[name].throughput, b[name].throughput
            assert ia is not None and ib is not None
            covered[name] = {
                "a": [ia.low, ia.estimate, ia.high],
                "b": [ib.low, ib.estimate, ib.high],
                "a_covers_b": ia.low <= ib.estimate <= ia.high,
                "b_covers_a": ib.low <= ia.estimate <= ib.high,
                "cv_a": a[name].cv_between,
                "cv_b": b[name].cv_between,
            }
        directions = [bool(v[k]) for v in covered.values() for k in ("a_covers_b", "b_covers_a")]
        aa = runs.compare(a_id, b_id)
        return {
            "repeats": repeats,
            "cells": len(both),
            "coverage": float(np.mean(directions)),
            "per_cell": covered,
            "aa_counts": aa["counts"],
            "aa_false_alarms": aa["counts"]["faster"] + aa["counts"]["slower"],
            "aa_exit_code": aa["exit_code"],
            "aa_rows": aa["rows"],
            "wall_s": {f"K={repeats} (first)": a_wall, f"K={repeats} (second)": b_wall, "K=1": one_wall},
            "cost_ratio": (a_wall + b_wall) / 2 / one_wall,
        }


def power(repeats: int = 5) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = Runs(Path(tmp))
        for arch, batch in (("mlp_deep", "128"), ("resnet20", "32")):
            print(f"power: {arch} training, {cores} threads against 1")
            common = ["--arch", arch, "--mode", "train", "--batch-size", batch, "--repeats", str(repeats)]
            base, _, _ = runs.run("compare", *common, "--threads", str(cores), "--reserve-cores", "0", "--seed", "4")
            new, _, _ = runs.run("compare", *common, "--threads", "1", "--seed", "5")
            result = runs.compare(base, new, "--allow-mismatch")
            rows += [r | {"architecture": arch} for r in result["rows"]]
    real = [r for r in rows if r["ratio"] <= 1 / 1.5]  # measured >= 1.5x slower
    return {
        "repeats": repeats,
        "rows": rows,
        "cells_at_least_1_5x": len(real),
        "called_slower": sum(r["verdict"] == "slower" for r in real),
        "all_verdicts": {v: sum(r["verdict"] == v for r in rows) for v in ("faster", "slower", "same", "inconclusive")},
    }


def _hand_loop(fw: str, batch: int, seconds: float, cpu: int) -> float:
    from harness.contract import TrialSpec
    from harness.envs import interpreter
    from harness.launch import worker_env

    spec = TrialSpec(architecture="mlp_deep", framework=fw, mode="train", batch_size=batch, threads=1)
    proc = subprocess.run(
        ["taskset", "-c", str(cpu), interpreter(fw), "-m", "benchmarks.handloop", fw, str(batch), str(seconds)],
        env=worker_env(spec),
        capture_output=True,
        text=True,
        check=True,
        cwd=HERE.parent,
    )
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["samples_per_s"])


def overhead(frameworks: list[str], repeats: int = 5, batch: int = 128, seconds: float = 2.0) -> dict[str, Any]:
    """Harness against hand loop, K processes each, alternating, on the same (non-reserved) core."""
    from harness import batch as lifecycle
    from harness.contract import MeasureSpec, TrialSpec
    from harness.launch import node_cpus

    cpu = node_cpus()[1]  # the first core trials lease with 1 reserved
    rows: dict[str, Any] = {}
    with lifecycle.Untracked(reserve=1) as runner:
        for fw in frameworks:
            spec = TrialSpec(
                architecture="mlp_deep",
                framework=fw,
                mode="train",
                batch_size=batch,
                threads=1,
                measure=MeasureSpec(warmup_steps=10, min_steps=50, min_time_s=seconds, window_steps=10),
            )
            harness_runs: list[TrialResult] = []
            hand: list[float] = []
            for i in range(repeats):
                (r,) = runner.run([(spec, i)])
                if r.status != "ok":
                    raise RuntimeError(f"{fw}: {r.status}: {r.reason}")
                harness_runs.append(r)
                hand.append(_hand_loop(fw, batch, seconds, cpu))
            ours = [g for p in harness_runs if (g := step_times(p)) is not None]
            theirs = [np.array([batch / h]) for h in hand]  # one value per process: its whole timed loop
            ratio = stats.ratio_interval(theirs, ours)  # > 1: the harness reports more samples/s
            rows[fw] = {
                "harness_samples_per_s": [batch / stats.process_value(g) for g in ours],
                "hand_loop_samples_per_s": hand,
                "ratio": ratio.estimate,
                "ratio_ci_low": ratio.low,
                "ratio_ci_high": ratio.high,
            }
            print(f"  {fw}: harness/hand loop {ratio.estimate:.3f} [{ratio.low:.3f}, {ratio.high:.3f}]")
    return rows


def tables(results: dict[str, Any]) -> str:
    """Markdown for the README from the trust sections of the results file."""
    out: list[str] = []
    if "noise" in results:
        n = results["noise"]
        out += [
            f"| configuration ({n['repeats']} processes per cell) | between-process CV: median | range "
            "| half-sample interval misses |",
            "|---|---|---|---|",
        ]
        for label, r in n["cells"].items():
            out.append(
                f"| {label} | {r['median_cv']:.1%} | {r['min_cv']:.1%} - {r['max_cv']:.1%} "
                f"| {r['half_interval_misses']} of {r['cells']} |"
            )
        out.append("")
    if "replication" in results:
        r = results["replication"]
        walls = ", ".join(f"{k} {v:.0f} s" for k, v in r["wall_s"].items())
        out += [
            f"- coverage: {r['coverage']:.0%} of {2 * r['cells']} interval/estimate pairs (two batches of "
            f"{r['cells']} cells, K = {r['repeats']}, each interval against the other batch's estimate)",
            f"- A/A: `harness compare` of the two batches: {r['aa_counts']} (false alarms {r['aa_false_alarms']} of "
            f"{r['cells']}), exit code {r['aa_exit_code']}",
            f"- cost: {walls}; K = {r['repeats']} costs {r['cost_ratio']:.1f}x the K = 1 batch",
        ]
    if "power" in results:
        p = results["power"]
        out.append(
            f"- power: {p['called_slower']} of {p['cells_at_least_1_5x']} cells with a >= 1.5x slowdown (1 thread "
            f"against every core) called slower; all verdicts {p['all_verdicts']}"
        )
    if "overhead_replicated" in results:
        for fw, r in results["overhead_replicated"].items():
            interval = f"[{r['ratio_ci_low']:.3f}, {r['ratio_ci_high']:.3f}]"
            out.append(f"- overhead {fw}: harness/hand loop {r['ratio']:.3f} {interval}")
    return "\n".join(out)
