"""``make bench``: harness overhead, repeatability and smoke wall time; writes benchmarks/results.json.

1. Overhead: for each framework, mlp_deep training throughput as the harness reports it (a Ray task,
   worker subprocess, adapter, timing protocol) against a minimal hand-written loop of the same
   framework, model and batch size (benchmarks/handloop.py), interleaved in one invocation with the
   same thread count and CPU set. Target: >= 97%.
2. Repeatability: coefficient of variation of the reported throughput over the repeats. Target: <= 3%.
3. Fast path against eager: each framework's compiled mode (torch.compile/inductor, XLA, jax.jit,
   hybridize) against its eager mode on mlp_deep and cnn1d, train and infer.
4. Smoke: wall time of ``harness run smoke`` in a fresh directory after set-up (all four frameworks;
   the foundation's target was < 60 s for torch + jax).
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

from harness import schedule
from harness.envs import interpreter
from harness.launch import worker_env
from harness.spec import MeasureSpec, TrialResult, TrialSpec

HERE = Path(__file__).resolve().parent


def _harness_trial(fw: str, batch: int, threads: int, seconds: float) -> TrialResult:
    spec = TrialSpec(
        architecture="mlp_deep",
        framework=fw,
        mode="train",
        batch_size=batch,
        threads=threads,
        measure=MeasureSpec(warmup_steps=10, min_steps=50, min_time_s=seconds, window_steps=10),
    )
    out: list[TrialResult] = []
    schedule.run_all([spec], out.append)
    if out[0].status != "ok":
        raise RuntimeError(f"{fw} trial failed: {out[0].reason}\n{out[0].stderr_tail}")
    return out[0]


def _hand_loop(fw: str, batch: int, threads: int, seconds: float) -> float:
    spec = TrialSpec(architecture="mlp_deep", framework=fw, mode="train", batch_size=batch, threads=threads)
    cpus = ",".join(map(str, sorted(os.sched_getaffinity(0))[:threads]))
    proc = subprocess.run(
        ["taskset", "-c", cpus, interpreter(fw), "-m", "benchmarks.handloop", fw, str(batch), str(seconds)],
        env=worker_env(spec),
        capture_output=True,
        text=True,
        check=True,
        cwd=HERE.parent,
    )
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["samples_per_s"])


def overhead(frameworks: list[str], repeats: int, batch: int, threads: int, seconds: float) -> dict[str, Any]:
    schedule.connect(None)
    rows: dict[str, Any] = {}
    try:
        for fw in frameworks:
            reported, mean_based, hand = [], [], []
            for i in range(repeats):
                r = _harness_trial(fw, batch, threads, seconds)
                reported.append(r.metrics["throughput_samples_per_s"])
                window = np.asarray(r.samples["train_window_s"])
                mean_based.append(batch * 10 * len(window) / window.sum())
                hand.append(_hand_loop(fw, batch, threads, seconds))
                print(f"  {fw} repeat {i + 1}: harness {reported[-1]:,.0f}  hand loop {hand[-1]:,.0f} samples/s")
            rep = np.asarray(reported)
            rows[fw] = {
                "harness_samples_per_s": reported,
                "harness_mean_based_samples_per_s": mean_based,
                "hand_loop_samples_per_s": hand,
                "ratio_median": float(np.median(rep) / np.median(hand)),
                "ratio_mean_based": float(np.median(mean_based) / np.median(hand)),
                "cv": float(rep.std(ddof=1) / rep.mean()),
            }
    finally:
        schedule.shutdown()
    return rows


def fast_vs_eager(frameworks: list[str], batch: int, threads: int, seconds: float) -> list[dict[str, Any]]:
    """Each framework's fast path (compile=on: inductor, XLA, jit, hybridize) against its eager mode."""
    specs = [
        TrialSpec(
            architecture=arch,
            framework=fw,
            mode=mode,  # type: ignore[arg-type]
            batch_size=batch,
            threads=threads,
            compile=compile_,  # type: ignore[arg-type]
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
        print(
            f"  {r.spec.name} compile={r.spec.compile}: {r.status} {r.metrics.get('throughput_samples_per_s', 0):,.0f}"
        )

    schedule.connect(None)
    try:
        schedule.run_all(specs, keep)
    finally:
        schedule.shutdown()
    rows = []
    for fw in frameworks:
        for arch in ("mlp_deep", "cnn1d"):
            for mode in ("train", "infer"):
                fast, eager = results[(fw, arch, mode, "on")], results[(fw, arch, mode, "off")]
                tf, te = (r.metrics.get("throughput_samples_per_s") for r in (fast, eager))
                rows.append({
                    "framework": fw, "architecture": arch, "mode": mode,
                    "fast_mode": fast.compile_mode, "fast_samples_per_s": tf,
                    "fast_compile_s": fast.metrics.get("compile_s"),
                    "eager_samples_per_s": te, "speedup": tf / te if tf and te else None,
                    "status": f"{fast.status}/{eager.status}",
                })  # fmt: skip
    return rows


def smoke_wall_s() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HARNESS_RUNS_DIR": f"{tmp}/runs", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "harness.cli", "run", "smoke"], env=env, cwd=tmp, check=True, capture_output=True
        )
        return time.perf_counter() - start


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
    p.add_argument("--out", type=Path, default=HERE / "results.json")
    args = p.parse_args()
    print("overhead and repeatability (mlp_deep, train)")
    results: dict[str, Any] = {"machine": machine(), "batch_size": args.batch_size, "threads": args.threads}
    results["overhead"] = overhead(
        args.frameworks.split(","), args.repeats, args.batch_size, args.threads, args.seconds
    )
    print("fast path against eager (mlp_deep, cnn1d; train, infer)")
    frameworks = args.frameworks.split(",")
    results["fast_vs_eager"] = fast_vs_eager(frameworks, args.batch_size, args.threads, args.seconds)
    print("smoke suite wall time")
    results["smoke_wall_s"] = smoke_wall_s()
    args.out.write_text(json.dumps(results, indent=2))
    print(
        f"\n| framework | harness samples/s (median of {args.repeats}) | hand loop | ratio | ratio (mean-based) | CV |"
    )
    print("|---|---|---|---|---|---|")
    for fw, r in results["overhead"].items():
        print(
            f"| {fw} | {np.median(r['harness_samples_per_s']):,.0f} | {np.median(r['hand_loop_samples_per_s']):,.0f} "
            f"| {100 * r['ratio_median']:.1f}% | {100 * r['ratio_mean_based']:.1f}% | {100 * r['cv']:.1f}% |"
        )
    print("\n| framework | architecture | mode | fast path | fast samples/s | compile s | eager samples/s | speedup |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["fast_vs_eager"]:
        speed = f"{r['speedup']:.2f}x" if r["speedup"] else r["status"]
        print(
            f"| {r['framework']} | {r['architecture']} | {r['mode']} | {r['fast_mode']} "
            f"| {r['fast_samples_per_s'] or 0:,.0f} | {r['fast_compile_s'] or 0:.2f} "
            f"| {r['eager_samples_per_s'] or 0:,.0f} | {speed} |"
        )
    print(f"\nsmoke suite wall time: {results['smoke_wall_s']:.1f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
