"""One trial in this process: build the framework's model, run the trial's scenarios, measure memory.

``run_trial`` only prepares the data, builds the adapter and runs the scenarios the spec names
(:mod:`harness.worker.scenarios`); everything measured comes from those units.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from adapters import load_adapter
from adapters.base import BuildOptions
from harness import metrics as M
from harness.contract import TrainSpec, TrialRequest, TrialResult, TrialSpec
from harness.worker.group import Group
from harness.worker.measure import current_rss_mb, gemm_peak_gflops, peak_rss_mb
from harness.worker.node import node_info
from harness.worker.scenarios import SCENARIOS, TrialData
from harness.worker.telemetry import NvmlMemory, open_energy
from workloads import datasets
from workloads.architectures import get

THREAD_ENV_KEYS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "XLA_FLAGS", "CUDA_VISIBLE_DEVICES")


def prepare(spec: TrialSpec, dataset_path: str | None, node_peak_gflops: float, rank: int = 0) -> TrialData:
    """The architecture (resized for the trial's dataset), canonical weights, timing batch and data.

    The timing batch is the global batch (``spec.global_batch`` samples); worker ``rank`` of a
    multi-worker trial keeps its consecutive share of it, so the workers together see that batch.
    A trial that trains to accuracy gets its task's data (:func:`task_data`)."""
    arch = get(spec.architecture)
    data = pretrain = None
    if spec.dataset != datasets.SYNTHETIC:  # sized for the dataset's samples (the planner checked it can be)
        info = datasets.INFO[spec.dataset]
        arch = arch.for_data(info.sample_shape, info.dtype, info.vocab_size)
        if spec.trains_to_accuracy:
            if dataset_path is None:
                raise ValueError(f"{spec.name} trains on {spec.dataset}, but the request has no dataset path")
            whole = _fit(datasets.load(spec.dataset, dataset_path), arch.input_shape)
            data, pretrain = task_data(whole, spec.train, spec.seed, info.num_classes)
    # timing batch: synthetic, in the (resized) architecture's input shape; int ids for token models
    x, y = datasets.synthetic(
        arch.input_shape,
        arch.num_classes,
        spec.global_batch,
        spec.seed + 1,
        vocab_size=arch.vocab_size,
        label_shape=arch.label_shape,
    )
    share = slice(rank * spec.local_batch, (rank + 1) * spec.local_batch)
    params = arch.init_variables(spec.seed)
    return TrialData(arch, params, x[share], y[share], data, node_peak_gflops, pretrain=pretrain)


def task_data(
    data: datasets.Dataset, train: TrainSpec, seed: int, num_classes: int
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The task's data set and, when it pretrains, the pretraining data set (else None).

    The task: the samples of ``train.classes`` (all when empty), relabelled ``0..k-1`` in that order,
    in train and val (and the val mask's rows); then, when ``train.train_fraction < 1``, a stratified
    share of its training split (:func:`workloads.datasets.stratified_subset`, drawn by
    ``numpy.random.default_rng([seed, 1])``, a stream apart from the data order's
    ``default_rng(seed)``), kept in its order; the held-out split stays whole. Pretraining: the
    whole of both splits of ``train.pretrain_classes``, relabelled likewise. ``num_classes``: the
    data set's; a class index outside it is a ValueError naming the field.
    """

    def select(field: str, classes: tuple[int, ...]) -> datasets.Dataset:
        try:
            return datasets.select_classes(data, classes, num_classes)
        except ValueError as e:
            raise ValueError(f"{field}: {e}") from None

    task = select("classes", train.classes)
    pretrain = select("pretrain_classes", train.pretrain_classes) if train.pretrain_steps else None
    if train.train_fraction < 1:
        keep = datasets.stratified_subset(task.y_train, train.train_fraction, np.random.default_rng([seed, 1]))
        task = replace(task, x_train=task.x_train[keep], y_train=task.y_train[keep])
    return task, pretrain


def _fit(data: datasets.Dataset, input_shape: tuple[int, ...]) -> datasets.Dataset:
    """The dataset with its samples in the architecture's input shape (1 channel repeated to C)."""
    if tuple(data.x_train.shape[1:]) == tuple(input_shape):
        return data
    channels = input_shape[0]
    fit = datasets.fit_channels
    return replace(data, x_train=fit(data.x_train, channels), x_val=fit(data.x_val, channels))


def run_trial(request: TrialRequest, preloaded: dict[str, float] | None = None) -> TrialResult:
    """Build the model and run the trial's scenarios; the result has status ok or diverged.

    ``preloaded``: the fork server's imports and their seconds, when this process is its fresh fork
    (the framework is then already imported; ``import_s`` reports the server's import).
    """
    spec = request.spec
    cache_dir = Path(request.cache_dir) if request.cache_dir else None
    peak = gemm_peak_gflops(spec.threads, cache_dir)  # before any framework work: nothing else runs
    t0 = time.perf_counter()
    adapter_cls = load_adapter(spec.framework)
    import_s = (preloaded or {}).get(spec.framework, time.perf_counter() - t0)
    group = None
    if spec.distributed:
        if request.group is None or len(request.peers) != spec.workers:
            raise ValueError(f"{spec.name}: {spec.workers} workers need {spec.workers} peers and a group address")
        timeout = collective_timeout_s(spec.timeout_s)
        group = Group(request.rank, spec.workers, request.group, timeout)  # every worker is up, or PeerLost
        adapter_cls.init_distributed(request.rank, request.peers, timeout, backend_device(spec.device))
    data = prepare(spec, request.dataset_path, peak, request.rank)
    if group is not None:
        data = replace(data, agree=group.max)
    baseline_mb = current_rss_mb()
    device = backend_device(spec.device)
    nvml_memory = NvmlMemory().start() if device == "gpu" else None  # from before the build to the end
    meter, _ = open_energy(device)
    data = replace(data, energy=meter)
    options = BuildOptions.for_training(
        spec.train,
        device=backend_device(spec.device),
        precision=spec.precision,
        compile=spec.compile,
        threads=spec.threads,
        trainable=spec.mode == "train",
        extra=spec.options,
        workers=spec.workers,
    )
    adapter = adapter_cls(data.arch, data.params, options)
    if adapter.native_param_count() != data.arch.param_count():
        raise RuntimeError(
            f"{spec.framework} built {adapter.native_param_count()} parameters, spec has {data.arch.param_count()}"
        )
    result = TrialResult(
        trial_key=spec.trial_key,
        spec=spec,
        status="ok",
        metrics={M.PARAM_COUNT: float(data.arch.param_count()), M.IMPORT_S: import_s, M.WORKERS: float(spec.workers)},
        compile_mode=adapter.compile_mode,
        framework_version=adapter.framework_version(),
    )
    for name in spec.scenarios:
        out = SCENARIOS[name](adapter, spec, data)
        result.metrics |= out.metrics
        result.samples |= out.samples
        result.history |= out.history
        result.history_steps |= out.history_steps
        if out.diverged:
            result.status, result.reason = "diverged", out.diverged
            break
    result.metrics[M.PEAK_HOST_RSS_MB] = peak_rss_mb()
    result.metrics[M.HOST_MEM_DELTA_MB] = result.metrics[M.PEAK_HOST_RSS_MB] - baseline_mb
    result.environment = environment(adapter.runtime(), spec.threads)
    try:  # a counter a backend lacks (TF's get_memory_info on some devices) costs the figure, not the trial
        device_peak = adapter.device_memory_peak_mb()
    except Exception as e:
        device_peak, result.environment["device_memory_framework"] = None, f"{type(e).__name__}: {e}"
    if device_peak is not None:
        result.metrics[M.PEAK_DEVICE_MEM_MB] = device_peak
    if nvml_memory is not None:
        nvml_peak = nvml_memory.stop()
        if nvml_peak is not None:
            result.metrics[M.PEAK_DEVICE_MEM_NVML_MB] = nvml_peak
        else:
            result.environment["device_memory_nvml"] = nvml_memory.reason
    # the counter the energy figures come from ("none": the node record's energy says why)
    result.environment["energy_source"] = meter.source if meter is not None else "none"
    result.environment["process"] = "fork" if preloaded else "spawn"  # of a fork server / a fresh interpreter
    if preloaded:
        result.environment["fork_server_pid"] = os.getppid()
    if options.device != spec.device:
        result.environment[TPU_AS_CPU_ENV] = f"ran on the {options.device} backend: a fake {spec.device} (test hook)"
    if group is not None:
        result.environment["rank"] = request.rank
        group.max([0.0])  # every worker is done measuring: leave the framework's job together
        adapter_cls.shutdown_distributed()
        group.close()
    return result


TPU_AS_CPU_ENV = "HARNESS_TPU_AS_CPU"  # test hook: fake TPU nodes (Ray resources only) run on the CPU backend


def backend_device(device: str) -> str:
    """The device the adapter builds on: the trial's, except that with ``HARNESS_TPU_AS_CPU=1`` a TPU
    trial runs on the CPU backend. Only tests of TPU placement on fake Ray nodes set it (they prove
    placement, coordination and result collection, not TPU numbers); results then say so."""
    return "cpu" if device == "tpu" and os.environ.get(TPU_AS_CPU_ENV) == "1" else device


def collective_timeout_s(trial_timeout_s: float) -> float:
    """How long a worker of a multi-worker trial waits for its peers (joining, each exchange, each
    collective): a third of the trial's timeout, 10 s to 5 min, so that a dead or hung peer ends the
    trial with its name well before the launcher's timeout would."""
    return min(300.0, max(10.0, trial_timeout_s / 3))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def environment(runtime: dict[str, Any], threads: int) -> dict[str, Any]:
    """Where the trial ran: host, interpreter, CPU set, thread settings, the framework's runtime."""
    return {
        "hostname": socket.gethostname(),
        "python": sys.version.split()[0],
        "interpreter": sys.executable,
        "numpy": np.__version__,
        "cpu_model": _cpu_model(),
        "cpus": sorted(os.sched_getaffinity(0)),
        "threads": threads,
        "niceness": os.getpriority(os.PRIO_PROCESS, 0),
        "thread_env": {k: os.environ[k] for k in THREAD_ENV_KEYS if k in os.environ},
        "framework_runtime": runtime,
        "node": node_info(),
    }
