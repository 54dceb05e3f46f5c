"""GPU check: every installed adapter's conformance on one device, then a short sweep, without Ray or MLflow.

``infra/gpu-check.sh`` runs it on a machine with one NVIDIA GPU where torch and/or jax with CUDA are
already installed (no network, no TensorFlow, Ray, MLflow or pydantic needed): only the worker side of
the harness runs, each sweep trial a fresh ``python -m harness.worker`` process as under Ray.

1. Conformance, per framework that imports: small zoo models and small members of every family built on
   the device, the parameter count as the spec says, an exact export round trip, logits against the
   float64 numpy reference (float32 and bfloat16, each within its tolerance), and one training step
   that keeps float32 master weights and a finite loss.
2. Sweep: two presets x float32/bfloat16 x train/infer x framework, each trial timed by the harness's
   protocol; a table of throughput, compile time, device memory (the framework's counter and NVML's
   per-process peak) and energy per sample.

``--device cpu --quick`` runs the same code on tiny models on a CPU (the project's tests do).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adapters import FRAMEWORKS, load_adapter
from adapters.base import BuildOptions
from harness import metrics as M
from harness.contract import MeasureSpec, TrialRequest, TrialResult, TrialSpec
from workloads.architectures import get, reference
from workloads.datasets import synthetic

PROJECT = Path(__file__).resolve().parent.parent
CONFORMANCE = (
    "mlp_deep",
    "cnn1d",
    "resnet20",
    "gru",
    "transformer",
    "resnet[depth=14,width=8,image=32,classes=10]",
    "vit[patch=4,layers=1,d_model=32,heads=2,image=16,classes=10]",
    "encoder[layers=1,d_model=32,heads=2,seq=16,vocab=64]",
    "decoder[layers=1,d_model=32,heads=2,seq=16,vocab=64]",
)
QUICK_CONFORMANCE = ("mlp_deep", "decoder[layers=1,d_model=32,heads=2,seq=16,vocab=64]")
SWEEP = (("resnet50", 64), ("gpt2_small[seq=256]", 16))  # (preset, batch size)
QUICK_SWEEP = (("decoder[layers=1,d_model=32,heads=2,seq=16,vocab=64]", 8),)
MEASURE = MeasureSpec(warmup_steps=3, min_steps=10, min_time_s=1.0, latency_requests=20)
QUICK_MEASURE = MeasureSpec(warmup_steps=1, min_steps=3, min_time_s=0.05, latency_requests=5)
# logits against the float64 reference, relative to their scale: float32 as the CPU conformance suite
# (tests/tolerances.py); bfloat16 (8 significant bits) as tests/test_precision.py
TOLERANCE = {"float32": 1e-4, "bfloat16": 5e-2}


@dataclass
class Check:
    framework: str
    what: str
    ok: bool
    detail: str = ""


def _scale_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got.astype(np.float64) - want)) / max(float(np.max(np.abs(want))), 1e-12))


def conformance(framework: str, device: str, names: tuple[str, ...]) -> list[Check]:
    cls = load_adapter(framework)
    checks: list[Check] = []
    for name in names:
        arch = get(name)
        params = arch.init_variables(0)
        x, y = synthetic(arch.input_shape, arch.num_classes, 8, 1, arch.vocab_size, arch.label_shape)
        want = reference.forward(arch, params, x)[0]
        try:
            for precision in ("float32", "bfloat16"):
                opts = BuildOptions(device=device, precision=precision, compile="auto", trainable=True)  # type: ignore[arg-type]
                adapter = cls(arch, params, opts)
                if precision == "float32":
                    count = adapter.native_param_count()
                    checks.append(Check(framework, f"{name}: {count:,} parameters", count == arch.param_count()))
                    back = adapter.export_params()
                    exact = all(np.array_equal(back[k], params[k]) for k in params)
                    checks.append(Check(framework, f"{name}: export round trip", exact))
                got = adapter.to_numpy(adapter.infer(adapter.to_device(x)))
                err = _scale_error(got, want)
                what = f"{name}: {precision} logits vs float64"
                checks.append(Check(framework, what, err <= TOLERANCE[precision], f"{err:.1e}"))
                loss = float(adapter.to_numpy(adapter.train_step(adapter.to_device(x), adapter.to_device(y))))
                adapter.sync()
                weights = adapter.export_params()
                ok = bool(np.isfinite(loss)) and all(w.dtype == np.float32 for w in weights.values())
                checks.append(Check(framework, f"{name}: {precision} train step", ok, f"loss {loss:.3f}"))
        except Exception as e:  # one model failing must not hide the others
            checks.append(Check(framework, f"{name}: build and run", False, f"{type(e).__name__}: {e}"[:200]))
    return checks


def sweep_trial(
    arch: str, framework: str, mode: str, precision: str, batch: int, device: str, work: Path, measure: MeasureSpec
) -> TrialResult:
    spec = TrialSpec(
        architecture=arch,
        framework=framework,
        mode=mode,  # type: ignore[arg-type]
        device=device,  # type: ignore[arg-type]
        batch_size=batch,
        precision=precision,
        threads=max(1, min(8, (os.cpu_count() or 2) - 1)),
        timeout_s=240,
        measure=measure,
    )
    request = work / f"{spec.trial_key}.request.json"
    out = work / f"{spec.trial_key}.result.json"
    request.write_text(TrialRequest(spec=spec, cache_dir=str(work)).to_json())
    env = os.environ | FRAMEWORKS[framework].worker_env(spec.threads, os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT), env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "harness.worker", "--request", str(request), "--out", str(out)]
    try:
        done = subprocess.run(cmd, env=env, cwd=PROJECT, capture_output=True, text=True, timeout=spec.timeout_s)
    except subprocess.TimeoutExpired:
        return TrialResult(trial_key=spec.trial_key, spec=spec, status="timeout", reason=f"over {spec.timeout_s:.0f} s")
    if not out.exists():
        tail = (done.stderr or "").strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        return TrialResult(trial_key=spec.trial_key, spec=spec, status="crash", reason=tail[0])
    return TrialResult.from_json(out.read_text())


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: list[TrialResult]) -> str:
    head = "| model | framework | mode | precision | status | samples/s | compile s | framework peak MB | NVML peak MB | J/sample |"  # noqa: E501
    lines = [head, "|" + "---|" * 10]
    for r in results:
        m, s = r.metrics, r.spec
        status = r.status if r.status == "ok" else f"{r.status}: {r.reason[:60]}"
        lines.append(
            f"| {s.architecture} | {s.framework} | {s.mode} | {s.precision} | {status} "
            f"| {_fmt(m.get(M.THROUGHPUT), ',.0f')} | {_fmt(m.get(M.COMPILE_S), '.1f')} "
            f"| {_fmt(m.get(M.PEAK_DEVICE_MEM_MB), ',.0f')} | {_fmt(m.get(M.PEAK_DEVICE_MEM_NVML_MB), ',.0f')} "
            f"| {_fmt(m.get(M.ENERGY_J_PER_SAMPLE), '.3g')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="gpu", choices=("gpu", "cpu"), help="device to check (default gpu)")
    parser.add_argument("--frameworks", default="torch,jax", help="comma list; those that do not import are skipped")
    parser.add_argument("--quick", action="store_true", help="tiny models (a CPU rehearsal of the script)")
    parser.add_argument("--json", type=Path, help="also write the checks and results here")
    args = parser.parse_args(argv)
    wanted = [f for f in args.frameworks.split(",") if f]
    unknown = [f for f in wanted if f not in FRAMEWORKS]
    if unknown:
        print(f"unknown framework {unknown[0]!r}; choose from {', '.join(FRAMEWORKS)}", file=sys.stderr)
        return 2
    present = [f for f in wanted if importlib.util.find_spec(FRAMEWORKS[f].import_name)]
    for f in sorted(set(wanted) - set(present)):
        print(f"skipped {f}: it does not import in {sys.executable}")
    if not present:
        print("no framework to check", file=sys.stderr)
        return 2
    started = time.time()
    checks = [c for f in present for c in conformance(f, args.device, QUICK_CONFORMANCE if args.quick else CONFORMANCE)]
    for c in checks:
        print(f"{'ok  ' if c.ok else 'FAIL'} {c.framework:<10} {c.what} {c.detail}")
    results: list[TrialResult] = []
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for arch, batch in QUICK_SWEEP if args.quick else SWEEP:
            for framework in present:
                for precision in ("bfloat16",) if args.quick else ("float32", "bfloat16"):
                    for mode in ("train", "infer"):
                        measure = QUICK_MEASURE if args.quick else MEASURE
                        r = sweep_trial(arch, framework, mode, precision, batch, args.device, Path(tmp), measure)
                        print(f"{r.status:>8} {r.spec.name} {_fmt(r.metrics.get(M.THROUGHPUT), ',.0f')} samples/s")
                        results.append(r)
    print()
    print(table(results))
    failed = [c for c in checks if not c.ok] + [r for r in results if r.status not in ("ok", "unsupported")]
    print(f"\n{len(checks)} checks, {len(results)} trials, {len(failed)} failed, {time.time() - started:.0f} s")
    if args.json:
        data = {"checks": [c.__dict__ for c in checks], "results": [r.to_dict() for r in results]}
        args.json.write_text(json.dumps(data, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
