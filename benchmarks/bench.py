"""``make bench``: trust (noise, replication, power, overhead), fast paths, smoke wall time, the zoo;
writes benchmarks/results.json.

1. Trust (:mod:`benchmarks.trust`): the node's between-process noise with and without a reserved
   core; interval coverage, A/A verdicts and cost of replicated batches; power of the verdicts on a
   real slowdown; the harness against a minimal hand-written loop (benchmarks/handloop.py), both
   replicated and interleaved on the same core, as a ratio with its interval. Target: >= 0.99.
3. Fast path against eager: each framework's compiled mode (torch.compile/inductor, XLA, jax.jit,
   hybridize) against its eager mode on mlp_deep and cnn1d, train and infer.
4. Smoke: wall time of ``harness run smoke`` in a fresh directory after set-up (all four frameworks,
   target < 60 s), over ``--smoke-repeats`` runs, with where the time goes (driver phases from the
   batch, trial phases summed over the journal).
5. Zoo: training throughput of every architecture in every framework at one batch size (default
   compile mode, synthetic data), with achieved GFLOP/s and the fraction of the node's measured
   GEMM peak.
6. GEMM-bound: the ``mlp_wide`` preset, train and infer, in every framework on one core (one left to
   the driver), ``--repeats`` processes each in an interleaved order: the fraction of the node's
   measured GEMM peak (numpy's BLAS, same core, same threads) each reaches; target: the best framework
   >= 85%.

``--sections`` runs a subset; sections not run keep their previous values in the results file.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import trust
from harness import batch as lifecycle
from harness import metrics as M
from harness.contract import MeasureSpec, TrialResult, TrialSpec
from harness.envs import interpreter

HERE = Path(__file__).resolve().parent
SECTIONS = ("noise", "replication", "power", "overhead", "fast", "smoke", "zoo", "gemm")
GEMM_PRESET = "mlp_wide"  # four 2048x2048 dense layers on 2048 features: every step is large square GEMMs
GEMM_TARGET = 0.85  # the best framework's fraction of the node's measured GEMM peak (issue #12)


def fast_vs_eager(frameworks: list[str], batch: int, threads: int, seconds: float) -> list[dict[str, Any]]:
    """Each framework's fast path (compile=on: inductor, XLA, jit, hybridize) against its eager mode."""
    specs = [
        TrialSpec(
            architecture=arch,
            framework=fw,
            mode=mode,
            batch_size=batch,
            threads=threads,
            compile=compile_,
            timeout_s=900,
            measure=MeasureSpec(warmup_steps=10, min_steps=50, min_time_s=seconds, window_steps=10),
        )
        for fw in frameworks
        for arch in ("mlp_deep", "cnn1d")
        for mode in ("train", "infer")
        for compile_ in ("on", "off")
    ]
    results: dict[tuple[str, str, str, str], TrialResult] = {}

    def keep(r: TrialResult) -> None:
        results[(r.spec.framework, r.spec.architecture, r.spec.mode, r.spec.compile)] = r
        print(f"  {r.spec.name} compile={r.spec.compile}: {r.status} {r.metrics.get(M.THROUGHPUT, 0):,.0f}")

    with lifecycle.Untracked() as runner:
        runner.run(specs, keep)
    rows = []
    for fw in frameworks:
        for arch in ("mlp_deep", "cnn1d"):
            for mode in ("train", "infer"):
                fast, eager = results[(fw, arch, mode, "on")], results[(fw, arch, mode, "off")]
                tf, te = (r.metrics.get(M.THROUGHPUT) for r in (fast, eager))
                rows.append({
                    "framework": fw, "architecture": arch, "mode": mode,
                    "fast_mode": fast.compile_mode, "fast_samples_per_s": tf,
                    "fast_compile_s": fast.metrics.get("compile_s"),
                    "eager_samples_per_s": te, "speedup": tf / te if tf and te else None,
                    "status": f"{fast.status}/{eager.status}",
                })  # fmt: skip
    return rows


def zoo_throughput(frameworks: list[str], batch: int, threads: int, seconds: float) -> list[dict[str, Any]]:
    """Every architecture x framework, train mode, default compile mode, one trial at a time."""
    from workloads.architectures import ARCHITECTURES

    specs = [
        TrialSpec(
            architecture=arch,
            framework=fw,
            mode="train",
            batch_size=batch,
            threads=threads,
            timeout_s=900,
            measure=MeasureSpec(warmup_steps=5, min_steps=20, min_time_s=seconds, window_steps=5),
        )
        for arch in ARCHITECTURES
        for fw in frameworks
    ]
    rows: list[dict[str, Any]] = []

    def keep(r: TrialResult) -> None:
        m = r.metrics
        rows.append({
            "architecture": r.spec.architecture, "framework": r.spec.framework, "status": r.status,
            "compile_mode": r.compile_mode, "samples_per_s": m.get(M.THROUGHPUT),
            "step_time_cv": m.get("step_time_cv"), "compile_s": m.get("compile_s"),
            "gflops_per_sample": m.get("flops_per_sample", 0) / 1e9, "achieved_gflops": m.get("achieved_gflops"),
            "peak_fraction": m.get("peak_fraction"), "node_peak_gflops": m.get("node_peak_gflops"),
            "reason": r.reason,
        })  # fmt: skip
        print(f"  {r.spec.name}: {r.status} {m.get(M.THROUGHPUT, 0):,.0f} samples/s")

    with lifecycle.Untracked() as runner:
        runner.run(specs, keep)
    order = {(s.architecture, s.framework): i for i, s in enumerate(specs)}
    return sorted(rows, key=lambda r: order[(r["architecture"], r["framework"])])


def gemm_bound(frameworks: list[str], repeats: int, batch: int, seconds: float) -> list[dict[str, Any]]:
    """``GEMM_PRESET`` train and infer in every framework, ``repeats`` processes a cell, one thread."""
    import random

    specs = [
        TrialSpec(
            architecture=GEMM_PRESET,
            framework=fw,
            mode=mode,
            batch_size=batch,
            threads=1,
            timeout_s=900,
            measure=MeasureSpec(warmup_steps=3, min_steps=10, min_time_s=seconds, window_steps=1),
        )
        for fw in frameworks
        for mode in ("train", "infer")
    ]
    order = [(s, r) for r in range(repeats) for s in random.Random(0).sample(specs, len(specs))]
    fractions: dict[str, list[float]] = {s.trial_key: [] for s in specs}
    peaks: dict[str, list[float]] = {s.trial_key: [] for s in specs}
    failures: dict[str, str] = {}

    def keep(r: TrialResult) -> None:
        m = r.metrics
        if r.status == "ok":
            fractions[r.trial_key].append(m[M.PEAK_FRACTION])
            peaks[r.trial_key].append(m[M.NODE_PEAK_GFLOPS])
        else:
            failures[r.trial_key] = f"{r.status}: {r.reason[:80]}"
        print(f"  {r.spec.name} #{r.replica}: {r.status} {100 * m.get(M.PEAK_FRACTION, 0):.1f}% of peak")

    with lifecycle.Untracked(reserve=1) as runner:
        runner.run(order, keep)
    return [
        {
            "framework": s.framework, "mode": s.mode, "batch_size": batch,
            "peak_fraction": fractions[s.trial_key], "median_peak_fraction": _median(fractions[s.trial_key]),
            "node_peak_gflops": _median(peaks[s.trial_key]), "status": failures.get(s.trial_key, "ok"),
        }
        for s in specs
    ]  # fmt: skip


def _median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None


def gemm_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| framework | mode | % of GEMM peak (median; each process) | node peak GFLOP/s | status |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        each = ", ".join(f"{100 * f:.0f}" for f in r["peak_fraction"])
        med = "-" if r["median_peak_fraction"] is None else f"{100 * r['median_peak_fraction']:.1f}%"
        peak = "-" if r["node_peak_gflops"] is None else f"{r['node_peak_gflops']:.1f}"
        lines.append(f"| {r['framework']} | {r['mode']} | {med} ({each}) | {peak} | {r['status']} |")
    best = max((r["median_peak_fraction"] or 0 for r in rows), default=0.0)
    verdict = "met" if best >= GEMM_TARGET else "not met"
    lines.append(f"\nbest: {100 * best:.1f}% of the measured GEMM peak (target {100 * GEMM_TARGET:.0f}%: {verdict})")
    return "\n".join(lines)


def zoo_table(rows: list[dict[str, Any]], batch: int) -> str:
    lines = [
        f"| architecture | framework | mode | samples/s (batch {batch}) | GFLOP/sample | GFLOP/s | % of peak "
        "| compile s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(f"| {r['architecture']} | {r['framework']} | {r['status']} | | | | | |")
            continue
        lines.append(
            f"| {r['architecture']} | {r['framework']} | {r['compile_mode']} | {r['samples_per_s']:,.0f} "
            f"| {r['gflops_per_sample']:.5f} | {r['achieved_gflops']:.2f} | {100 * r['peak_fraction']:.1f}% "
            f"| {r['compile_s']:.2f} |"
        )
    return "\n".join(lines)


def smoke_run(frameworks: str | None = None) -> dict[str, Any]:
    """``harness run smoke`` in a fresh directory: wall time, and where it went (driver phases from
    ``batch.json``, trial phases summed over the journal)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HARNESS_RUNS_DIR": f"{tmp}/runs", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        env.pop("RAY_ADDRESS", None)
        cmd = [sys.executable, "-m", "harness.cli", "run", "smoke"] + (
            ["--framework", frameworks] if frameworks else []
        )
        start = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=tmp, check=True, capture_output=True)
        wall = time.perf_counter() - start
        (meta_path,) = Path(tmp, "runs").glob("*/batch.json")
        driver = json.loads(meta_path.read_text())["phases_s"]
        rows = [json.loads(line) for line in meta_path.with_name("journal.jsonl").read_text().splitlines()]
    trials: dict[str, float] = dict.fromkeys(
        ("process start", "framework import", "compile (first calls)", "timed windows", "accuracy training",
         "data, model build, evaluation, memory"), 0.0)  # fmt: skip
    worker_total = 0.0
    for r in rows:
        m = r["metrics"]
        forked = r["environment"].get("process") == "fork"  # its import ran once, in the start phase
        parts = {
            "process start": m.get(M.WORKER_START_S, 0.0),
            "framework import": 0.0 if forked else m.get(M.IMPORT_S, 0.0),
            "compile (first calls)": m.get(M.COMPILE_S, 0.0) + m.get(M.COMPILE_S_SINGLE_STREAM, 0.0),
            "timed windows": sum(sum(v) for v in r["samples"].values()),
            "accuracy training": m.get(M.TRAIN_TIME_S, 0.0),
        }
        parts["data, model build, evaluation, memory"] = r["wall_s"] - sum(parts.values()) + parts["process start"]
        for k, v in parts.items():
            trials[k] += v
        worker_total += r["wall_s"] + parts["process start"]
    trials["Ray task dispatch, launcher, between trials"] = driver["trials"] - worker_total
    return {
        "wall_s": wall,
        "trials": len(rows),
        "driver_phases_s": {"CLI start-up, plan, exit": wall - sum(driver.values()), **driver},
        "trial_phases_s": trials,
    }


def machine() -> dict[str, Any]:
    import jax
    import tensorflow as tf
    import torch

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "jax": jax.__version__,
        "tensorflow": tf.__version__,
        "mxnet": subprocess.run(
            [interpreter("mxnet"), "-c", "import mxnet; print(mxnet.__version__)"], capture_output=True, text=True
        ).stdout.strip(),
        "date": time.strftime("%Y-%m-%d"),
    }


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__)
    p.add_argument("--frameworks", default="torch,tensorflow,jax,mxnet")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--zoo-batch-size", type=int, default=64)
    p.add_argument("--gemm-batch-size", type=int, default=256)
    p.add_argument("--smoke-repeats", type=int, default=3, help="runs of the smoke suite (wall time: median)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)}")
    p.add_argument("--out", type=Path, default=HERE / "results.json")
    args = p.parse_args()
    sections = args.sections.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    frameworks = args.frameworks.split(",")
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    results |= {"machine": machine(), "batch_size": args.batch_size, "threads": args.threads}
    if "noise" in sections:
        results["noise"] = trust.noise()
    if "replication" in sections:
        results["replication"] = trust.replication()
    if "power" in sections:
        results["power"] = trust.power()
    if "overhead" in sections:
        print("overhead: harness against a hand-written loop (mlp_deep, train), replicated and interleaved")
        results.pop("overhead", None)  # the single-process figures this replaced
        results["overhead_replicated"] = trust.overhead(frameworks, args.repeats, args.batch_size, args.seconds)
    args.out.write_text(json.dumps(results, indent=2))  # each section is minutes: keep what is done
    if "fast" in sections:
        print("fast path against eager (mlp_deep, cnn1d; train, infer)")
        results["fast_vs_eager"] = fast_vs_eager(frameworks, args.batch_size, args.threads, args.seconds)
    if "smoke" in sections:
        print("smoke suite wall time")
        runs = [smoke_run() for _ in range(args.smoke_repeats)]
        walls = [r["wall_s"] for r in runs]
        results["smoke_wall_s"] = float(np.median(walls))
        results["smoke"] = {"wall_s": walls, "runs": runs}
        print(f"  {', '.join(f'{w:.1f}' for w in walls)} s")
    if "zoo" in sections:
        print(f"training throughput of every architecture (batch {args.zoo_batch_size})")
        results["zoo_batch_size"] = args.zoo_batch_size
        results["zoo"] = zoo_throughput(frameworks, args.zoo_batch_size, args.threads, args.seconds)
    if "gemm" in sections:
        print(f"GEMM-bound preset {GEMM_PRESET} (batch {args.gemm_batch_size}, one thread)")
        results["gemm"] = gemm_bound(frameworks, args.repeats, args.gemm_batch_size, args.seconds)
    args.out.write_text(json.dumps(results, indent=2))
    if "gemm" in results:
        print("\n" + gemm_table(results["gemm"]))
    if "zoo" in results:
        print("\n" + zoo_table(results["zoo"], results["zoo_batch_size"]))
    print("\n" + trust.tables(results))
    if "fast_vs_eager" not in results:
        return 0
    print("\n| framework | architecture | mode | fast path | fast samples/s | compile s | eager samples/s | speedup |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["fast_vs_eager"]:
        speed = f"{r['speedup']:.2f}x" if r["speedup"] else r["status"]
        print(
            f"| {r['framework']} | {r['architecture']} | {r['mode']} | {r['fast_mode']} "
            f"| {r['fast_samples_per_s'] or 0:,.0f} | {r['fast_compile_s'] or 0:.2f} "
            f"| {r['eager_samples_per_s'] or 0:,.0f} | {speed} |"
        )
    print(f"\nsmoke suite wall time: {results.get('smoke_wall_s', 0):.1f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
