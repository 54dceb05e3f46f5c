"""Worker entry point: ``python -m harness.worker --request REQ.json --out RESULT.json``.

Runs one trial in this (fresh) process and writes its result as JSON. Imports numpy, the standard
library and the one framework the trial uses, nothing else: it runs in every framework's
interpreter, including ones without Ray, MLflow or pydantic.

The request is ``{"spec": TrialSpec JSON, "trial_key": str, "cpus": [int] | null,
"dataset_path": str | null, "cache_dir": str | null, "fault": str | null, "parent_pid": int | null}``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

Json = dict[str, Any]


def _inject(fault: str | None) -> None:
    """Test hook: make this trial crash, hang or raise (set by the driver, never by default)."""
    if fault == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    elif fault == "hang":
        while True:
            time.sleep(1)
    elif fault == "raise":
        raise RuntimeError("injected failure")


def _die_with_parent(parent_pid: int | None) -> None:
    """Ask the kernel to SIGKILL this worker if its launcher dies (Ctrl-C, Ray shutdown, lost node).

    The worker runs in its own session so a timeout can kill its whole group; that also means it
    would outlive a killed launcher without this.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if parent_pid is not None and os.getppid() != parent_pid:  # the launcher died before prctl
        os._exit(1)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _latency_metrics(prefix: str, step_s: Any) -> dict[str, float]:
    from harness.measure import summarize

    s = summarize(step_s * 1000.0)
    return {f"{prefix}_p{q}": s[f"p{q}"] for q in (50, 90, 95, 99)}


def run_trial(request: Json) -> Json:
    """Build the model, run the trial's scenario, measure. Returns the result dict (status ok)."""
    # numpy (and its BLAS threads) load only after main() has applied the CPU set: threads started
    # earlier would keep the whole machine's affinity.
    import numpy as np

    from harness.measure import Budget, current_rss_mb, gemm_peak_gflops, peak_rss_mb, run_timed, summarize
    from workloads import datasets
    from workloads.architectures import get

    spec: Json = request["spec"]
    threads: int = spec["threads"]
    cache_dir = Path(request["cache_dir"]) if request.get("cache_dir") else None
    peak_gflops = gemm_peak_gflops(threads, cache_dir)  # before the framework loads: nothing else runs

    t0 = time.perf_counter()
    from adapters import load_adapter
    from adapters.base import BuildOptions

    adapter_cls = load_adapter(spec["framework"])
    import_s = time.perf_counter() - t0

    arch = get(spec["architecture"])
    train = spec["train"]
    data = None
    if spec["dataset"] != datasets.SYNTHETIC:  # sized for the dataset's samples (the planner checked it can be)
        info = datasets.INFO[spec["dataset"]]
        arch = arch.for_data(info.sample_shape, info.dtype, info.vocab_size)
        if spec["mode"] == "train" and train["steps"] > 0:
            data = _fit(datasets.load(spec["dataset"], request["dataset_path"]), arch.input_shape)
    params = arch.init_variables(spec["seed"])
    # Timing batch: synthetic, in the (resized) architecture's input shape; int ids for token models.
    x, y = datasets.synthetic(
        arch.input_shape, arch.num_classes, spec["batch_size"], spec["seed"] + 1, vocab_size=arch.vocab_size
    )
    baseline_mb = current_rss_mb()

    options = BuildOptions(
        device=spec["device"],
        precision=spec["precision"],
        compile=spec["compile"],
        optimizer=train["optimizer"],
        learning_rate=train["learning_rate"],
        momentum=train["momentum"],
        threads=threads,
        trainable=spec["mode"] == "train",
        extra=spec.get("options", {}),
    )
    adapter = adapter_cls(arch, params, options)
    if adapter.native_param_count() != arch.param_count():
        raise RuntimeError(
            f"{spec['framework']} built {adapter.native_param_count()} parameters, spec has {arch.param_count()}"
        )

    m = spec["measure"]
    budget = Budget(m["warmup_steps"], m["min_steps"], m["min_time_s"], m["window_steps"])
    xd = adapter.to_device(x)
    metrics: dict[str, float] = {"param_count": float(arch.param_count()), "import_s": import_s}
    samples: dict[str, list[float]] = {}
    history: dict[str, list[float]] = {}
    status, reason = "ok", ""

    if spec["mode"] == "train":
        yd = adapter.to_device(y)
        last: list[Any] = [None]

        def train_step() -> None:
            last[0] = adapter.train_step(xd, yd)

        timing = run_timed(train_step, adapter.sync, budget)
        final = float(adapter.to_numpy(last[0]))
        metrics |= _latency_metrics("latency_ms", timing.step_s)
        samples["train_window_s"] = timing.window_s
        if not math.isfinite(final):
            status, reason = "diverged", f"training loss became {final} on the synthetic batch"
    else:
        timing = run_timed(lambda: adapter.infer(xd), adapter.sync, budget)
        x1 = adapter.to_device(x[:1])
        single = run_timed(
            lambda: adapter.infer(x1),
            adapter.sync,
            Budget(m["warmup_steps"], m["latency_requests"], m["min_time_s"], 1),
        )
        metrics |= _latency_metrics("latency_ms", single.step_s)
        metrics |= _latency_metrics("batch_latency_ms", timing.step_s)
        metrics["compile_s_single_stream"] = single.compile_s
        samples["offline_window_s"] = timing.window_s
        samples["single_stream_request_s"] = single.window_s

    step_stats = summarize(timing.step_s)
    throughput = spec["batch_size"] / step_stats["median"]
    flops = arch.flops_per_sample(spec["mode"])
    metrics |= {
        "throughput_samples_per_s": throughput,
        "throughput_ci_low": spec["batch_size"] / step_stats["ci_high"],
        "throughput_ci_high": spec["batch_size"] / step_stats["ci_low"],
        "step_time_cv": step_stats["cv"],
        "timed_steps": float(timing.steps),
        "compile_s": timing.compile_s,
        "flops_per_sample": float(flops),
        "achieved_gflops": flops * throughput / 1e9,
        "node_peak_gflops": peak_gflops,
        "peak_fraction": flops * throughput / 1e9 / peak_gflops,
    }

    history_steps: dict[str, list[int]] = {}
    if data is not None and status == "ok":
        acc_metrics, history, history_steps = _train_to_accuracy(adapter, params, data, spec)
        metrics |= acc_metrics
        if not math.isfinite(acc_metrics["final_loss"]):
            status, reason = "diverged", f"training loss became {acc_metrics['final_loss']} on {spec['dataset']}"

    metrics["peak_host_rss_mb"] = peak_rss_mb()
    metrics["host_mem_delta_mb"] = metrics["peak_host_rss_mb"] - baseline_mb
    device_peak = adapter.device_memory_peak_mb()
    if device_peak is not None:
        metrics["peak_device_mem_mb"] = device_peak

    return {
        "status": status,
        "reason": reason,
        "metrics": metrics,
        "samples": samples,
        "history": history,
        "history_steps": history_steps,
        "compile_mode": adapter.compile_mode,
        "framework_version": adapter.framework_version(),
        "environment": _environment(adapter.runtime_info(), threads, np.__version__),
    }


def _fit(data: Any, input_shape: tuple[int, ...]) -> Any:
    """The dataset with its samples in the architecture's input shape (1 channel repeated to C)."""
    from dataclasses import replace

    from workloads.datasets import fit_channels

    if tuple(data.x_train.shape[1:]) == tuple(input_shape):
        return data
    channels = input_shape[0]
    return replace(data, x_train=fit_channels(data.x_train, channels), x_val=fit_channels(data.x_val, channels))


Metrics = dict[str, float]
Series = dict[str, list[float]]
Steps = dict[str, list[int]]


def _train_to_accuracy(adapter: Any, params: Any, data: Any, spec: Json) -> tuple[Metrics, Series, Steps]:
    """Train for the step budget from the canonical weights; evaluate on the side, untimed.

    Identical in every framework: the initial weights, optimiser, learning rate, batch size and the
    data order (``numpy.random.default_rng(seed)``: a permutation of the training split per epoch,
    the incomplete last batch of an epoch dropped). Evaluation after every ``eval_every`` steps and
    after the last one: accuracy and mean cross-entropy (numpy, float64, from the logits) on the
    whole held-out split and accuracy on the whole training split, in inference mode. Only training
    steps are timed (``sync()`` before each clock read), so ``train_time_s`` and
    ``time_to_target_s`` (training time at the first evaluation reaching ``target_accuracy``; absent
    when none does) exclude evaluation. History: ``loss`` at every step (step ``i``: the batch loss of
    the weights after ``i`` updates) and ``val_loss``, ``val_accuracy``, ``train_accuracy`` at each
    evaluation's step (``history_steps``); the last evaluation is the final value.
    """
    import numpy as np

    adapter.load_params(params)
    train, bs = spec["train"], spec["batch_size"]
    steps, every, target = train["steps"], train["eval_every"] or train["steps"], train.get("target_accuracy")
    n = len(data.x_train)
    if bs > n:
        raise ValueError(f"batch size {bs} exceeds the {n} training samples of {spec['dataset']}")
    rng = np.random.default_rng(spec["seed"])
    order, pos = rng.permutation(n), 0
    loss: list[float] = []
    history: Series = {"val_loss": [], "val_accuracy": [], "train_accuracy": []}
    eval_steps: list[int] = []
    metrics: Metrics = {}
    train_time_s, step = 0.0, 0
    while step < steps:
        pending: list[Any] = []
        adapter.sync()
        t0 = time.perf_counter()
        for _ in range(min(every, steps - step)):
            if pos + bs > n:
                order, pos = rng.permutation(n), 0
            idx = order[pos : pos + bs]
            pos += bs
            pending.append(
                adapter.train_step(adapter.to_device(data.x_train[idx]), adapter.to_device(data.y_train[idx]))
            )
        adapter.sync()
        train_time_s += time.perf_counter() - t0
        step += len(pending)
        # untimed from here: read the losses back, evaluate
        loss += [float(adapter.to_numpy(v)) for v in pending]
        val_acc, val_loss = _evaluate(adapter, data.x_val, data.y_val)
        train_acc, _ = _evaluate(adapter, data.x_train, data.y_train)
        for key, value in (("val_loss", val_loss), ("val_accuracy", val_acc), ("train_accuracy", train_acc)):
            history[key].append(value)
        eval_steps.append(step)
        if target is not None and "time_to_target_s" not in metrics and val_acc >= target:
            metrics |= {"time_to_target_s": train_time_s, "steps_to_target": float(step)}
        if not all(math.isfinite(v) for v in loss[-len(pending) :]):
            break  # diverged: the rest of the budget would only repeat NaNs
    metrics |= {
        "train_accuracy": history["train_accuracy"][-1],
        "val_accuracy": history["val_accuracy"][-1],
        "val_loss": history["val_loss"][-1],
        "train_val_gap": history["train_accuracy"][-1] - history["val_accuracy"][-1],
        "final_loss": loss[-1],
        "train_steps": float(len(loss)),
        "train_time_s": train_time_s,
        "evaluations": float(len(eval_steps)),
    }
    if target is not None:
        metrics["target_accuracy"] = float(target)
    return metrics, {"loss": loss} | history, dict.fromkeys(history, eval_steps)


def _evaluate(adapter: Any, x: Any, y: Any, batch: int = 500) -> tuple[float, float]:
    """Accuracy and mean softmax cross-entropy of the model on ``(x, y)``, in inference mode."""
    import numpy as np

    from workloads.architectures.reference import cross_entropy

    correct, loss_sum = 0, 0.0
    for i in range(0, len(x), batch):
        logits = adapter.to_numpy(adapter.infer(adapter.to_device(x[i : i + batch]))).astype(np.float64)
        labels = y[i : i + batch]
        loss_sum += cross_entropy(logits, labels) * len(labels)
        correct += int((logits.argmax(axis=-1) == labels).sum())
    return correct / len(x), loss_sum / len(x)


def _environment(runtime: Json, threads: int, numpy_version: str) -> Json:
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS", "CUDA_VISIBLE_DEVICES")
    return {
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "interpreter": sys.executable,
        "numpy": numpy_version,
        "cpu_model": _cpu_model(),
        "cpus": sorted(os.sched_getaffinity(0)),
        "threads": threads,
        "niceness": os.getpriority(os.PRIO_PROCESS, 0),
        "thread_env": {k: os.environ[k] for k in keys if k in os.environ},
        "framework_runtime": runtime,
    }


def _status_for(exc: BaseException) -> str:
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "oom"
    return "failed"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.worker", description=__doc__)
    parser.add_argument("--request", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    request: Json = json.loads(args.request.read_text())
    _die_with_parent(request.get("parent_pid"))
    if request.get("cpus"):
        os.sched_setaffinity(0, request["cpus"])
    if os.getpriority(os.PRIO_PROCESS, 0) > 0:  # inherited from a niced parent (Ray's default is 15)
        try:
            os.setpriority(os.PRIO_PROCESS, 0, 0)
        except PermissionError:
            print("warning: running niced; timings may suffer from other processes", file=sys.stderr)
    started = time.time()
    try:
        _inject(request.get("fault"))
        result = run_trial(request)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            raise
        traceback.print_exc()  # the launcher keeps the stderr tail
        result = {"status": _status_for(exc), "reason": f"{type(exc).__name__}: {exc}"}
    result |= {"trial_key": request["trial_key"], "started_at": started, "wall_s": time.time() - started}
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
