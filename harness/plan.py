"""Suite file + CLI filters -> the list of TrialSpecs to run, and the cells skipped with a reason."""

from __future__ import annotations

import itertools
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from adapters import FRAMEWORKS
from harness.contract import (
    COMPILE,
    DEVICES,
    MODES,
    PRECISIONS,
    SCALINGS,
    ContractError,
    TrainSpec,
    TrialSpec,
    unknown_choice,
)
from harness.spec import SpecError, SuiteSpec, check_slice_type
from workloads.architectures import canonical, get
from workloads.datasets import DATASETS, INFO, SYNTHETIC

T = TypeVar("T")


@dataclass(frozen=True)
class Overrides:
    """CLI selections; ``None`` keeps the suite's value."""

    frameworks: Sequence[str] | None = None
    architectures: Sequence[str] | None = None
    modes: Sequence[str] | None = None
    batch_sizes: Sequence[int] | None = None
    devices: Sequence[str] | None = None
    datasets: Sequence[str] | None = None
    precisions: Sequence[str] | None = None
    compile: str | None = None
    threads: int | None = None
    timeout_s: float | None = None
    memory_limit_mb: int | None = None
    repeats: int | None = None
    reserve_cores: int | None = None
    workers: Sequence[int] | None = None
    scaling: str | None = None
    tpu_slices: Sequence[str] | None = None
    accelerator_types: Sequence[str] | None = None


@dataclass
class Plan:
    suite: SuiteSpec
    trials: list[TrialSpec] = field(default_factory=list)
    skipped: list[tuple[TrialSpec, str]] = field(default_factory=list)
    repeats: int = 1  # independent processes per cell
    reserve_cores: int = 0  # per node, for the driver and Ray's processes
    warnings: list[str] = field(default_factory=list)
    # log each cell to MLflow as it finishes (a cluster batch always does): MLflow's writes then share
    # the node with running trials, so a local batch of timing cells logs at the end instead
    log_live: bool = False

    def rounds(self, seed: int, done: Collection[tuple[str, int]] = ()) -> list[tuple[TrialSpec, int]]:
        """Every (cell, replica) still to run, in a randomised interleaved order: round ``r`` holds each
        cell's replica ``r`` in a fresh random permutation of the cells (seeded), so a slow moment of
        the machine lands on processes of many cells, never on all processes of one."""
        rng = random.Random(seed)
        order: list[tuple[TrialSpec, int]] = []
        for replica in range(self.repeats):
            cells = [s for s in self.trials if (s.trial_key, replica) not in done]
            rng.shuffle(cells)
            order += [(s, replica) for s in cells]
        return order


def default_reserve(node_cores: int) -> int:
    """Cores kept for the driver and Ray's daemons: 1 (none on a 1-core node, 2 from 32 cores on)."""
    return 0 if node_cores <= 1 else 1 if node_cores < 32 else 2


def cores(suite: SuiteSpec, o: Overrides, node_cores: int) -> tuple[int, int]:
    """``(reserved cores, default threads per trial)`` on a node of ``node_cores`` cores."""
    reserve = next((v for v in (o.reserve_cores, suite.reserve_cores) if v is not None), default_reserve(node_cores))
    if reserve < 0:
        raise SpecError(f"reserve cores must be 0 or more, got {reserve}")
    if reserve >= node_cores:
        raise SpecError(
            f"reserving {reserve} cores leaves none for trials on this {node_cores}-core node; "
            f"use --reserve-cores {node_cores - 1} or less"
        )
    return reserve, node_cores - reserve


def core_warnings(threads: set[int], reserve: int, node_cores: int) -> list[str]:
    """What the plan and ``doctor`` say when trials would share their cores with the harness and Ray."""
    out = []
    if reserve == 0:
        out.append(
            "no cores reserved (--reserve-cores 0): trials share their cores with the driver and Ray's "
            "processes, which preempt them; expect several times the run-to-run spread"
        )
    full = sorted(t for t in threads if t >= node_cores)
    if full:
        out.append(
            f"trials with {full[0]} threads use every core of this {node_cores}-core node: the driver, Ray and "
            "MLflow writes preempt them and a step waits for its slowest thread (on a 2-core VM once measured: "
            "11-37% between-process spread against 2.5-16% with a core left free; `make bench` measures yours); "
            f"use --threads {max(1, node_cores - 1)}"
        )
    return out


def _check(kind: str, values: Sequence[str] | None, choices: Sequence[str]) -> None:
    for v in values or ():
        if v not in choices:
            raise SpecError(unknown_choice(kind, v, choices))


def validate(o: Overrides) -> None:
    """Reject bad CLI selections before anything runs (one line, the valid choices)."""
    _check("framework", o.frameworks, list(FRAMEWORKS))
    for name in o.architectures or ():
        try:
            get(name)
        except ValueError as e:
            raise SpecError(str(e)) from None
    _check("mode", o.modes, MODES)
    _check("device", o.devices, DEVICES)
    _check("dataset", o.datasets, list(DATASETS))
    _check("precision", o.precisions, PRECISIONS)
    if o.compile is not None:
        _check("compile mode", [o.compile], COMPILE)
    for b in o.batch_sizes or ():
        if b <= 0:
            raise SpecError(f"batch size must be a positive integer, got {b}")
    if o.threads is not None and o.threads <= 0:
        raise SpecError(f"threads must be a positive integer, got {o.threads}")
    if o.timeout_s is not None and o.timeout_s <= 0:
        raise SpecError(f"timeout must be positive, got {o.timeout_s}")
    if o.memory_limit_mb is not None and o.memory_limit_mb <= 0:
        raise SpecError(f"memory limit must be a positive number of MB, got {o.memory_limit_mb}")
    if o.repeats is not None and o.repeats <= 0:
        raise SpecError(f"repeats must be a positive integer, got {o.repeats}")
    if o.reserve_cores is not None and o.reserve_cores < 0:
        raise SpecError(f"reserve cores must be 0 or more, got {o.reserve_cores}")
    for w in o.workers or ():
        if w <= 0:
            raise SpecError(f"workers must be a positive integer, got {w}")
    if o.scaling is not None:
        _check("scaling", [o.scaling], SCALINGS)
    for t in o.tpu_slices or ():
        try:
            check_slice_type(t)
        except ValueError as e:
            raise SpecError(str(e)) from None


def _slice_hosts(slice_type: str) -> int:
    """Hosts of a TPU slice type: one worker each."""
    from harness.gang import Unplaceable, tpu_hosts

    try:
        return tpu_hosts(slice_type)[0]
    except Unplaceable as e:
        raise SpecError(str(e)) from None


def _unique(values: Sequence[T]) -> list[T]:
    return list(dict.fromkeys(values))


def data_problem(architecture: str, dataset: str, batch_size: int) -> str | None:
    """Why ``architecture`` cannot train on ``dataset`` at ``batch_size`` (None when it can)."""
    if dataset == SYNTHETIC:
        return None
    info, arch = INFO[dataset], get(architecture)
    try:
        arch.for_data(info.sample_shape, info.dtype, info.vocab_size)
    except ValueError as e:
        return f"{dataset}: {e}"
    if info.num_classes > arch.num_classes:
        return f"{dataset} has {info.num_classes} classes, {architecture} outputs {arch.num_classes}"
    if batch_size > info.n_train:
        return f"batch size {batch_size} exceeds the {info.n_train} training samples of {dataset}"
    return None


def skip_reason(spec: TrialSpec, unavailable: Mapping[str, str]) -> str | None:
    """Why a cell cannot run here (reported as ``unsupported``): its framework's environment
    (``unavailable``), its capabilities (device, precision, mode, workers) or its data (None: it can)."""
    info = FRAMEWORKS[spec.framework]
    return (
        unavailable.get(spec.framework)
        or info.unsupported_reason(spec.device, spec.precision, spec.mode)
        or info.multi_worker_reason(spec.workers, spec.mode, spec.trains_to_accuracy)
        or data_problem(spec.architecture, spec.dataset, spec.batch_size)
    )


def expand(
    suite: SuiteSpec,
    o: Overrides,
    default_threads: int,
    unavailable: Mapping[str, str] | None = None,
    *,
    reserve_cores: int = 0,
    node_cores: int | None = None,
) -> Plan:
    """The matrix of the suite narrowed or replaced by ``o``.

    Train cells run on each selected dataset (a real dataset: trained to accuracy, the architecture
    resized to its samples; ``synthetic``: throughput only); infer cells always on synthetic data in
    the architecture's default shape, once whatever the datasets. ``unavailable`` maps a framework to
    why its environment cannot run it; such cells, cells a framework's capabilities exclude and
    architecture x dataset pairs that cannot work are skipped with the reason (reported as
    ``unsupported``). If every cell is such an impossible pair, that is bad input (SpecError).
    ``node_cores``: the cores of the node trials run on, for the warnings of :func:`core_warnings`.
    """
    validate(o)
    unavailable = unavailable or {}
    plan = Plan(suite, repeats=o.repeats or suite.repeats, reserve_cores=reserve_cores)
    slices: list[str | None] = list(_unique(o.tpu_slices or suite.tpu_slices)) or [None]
    kinds: list[str | None] = list(_unique(o.accelerator_types or suite.accelerator_types)) or [None]
    axes = itertools.product(  # each axis de-duplicated, order kept: one trial per cell
        _unique([canonical(a) for a in o.architectures or suite.architectures]),
        _unique(o.datasets or suite.datasets),
        _unique(o.precisions or suite.precisions),
        _unique(o.frameworks or suite.frameworks),
        _unique(o.modes or suite.modes),
        _unique(o.devices or suite.devices),
        _unique(o.batch_sizes or suite.batch_sizes),
        _unique(o.workers or suite.workers),
        slices,
        kinds,
    )
    seen: set[str] = set()
    impossible: list[str] = []
    for arch, dataset, precision, fw, mode, device, batch, workers, tpu_slice, kind in axes:
        dataset = dataset if mode == "train" else SYNTHETIC
        tpu_slice = tpu_slice if device == "tpu" else None  # slices and accelerator types: device cells only
        kind = kind if device != "cpu" else None
        if tpu_slice:
            workers = _slice_hosts(tpu_slice)
        elif mode != "train":
            workers = 1  # inference runs in one process (one cell, whatever the workers axis)
        train = TrainSpec()
        if mode == "train":
            train = suite.train.replace(target_accuracy=suite.targets.get(dataset))
        try:
            spec = TrialSpec.from_dict(
                {
                    "architecture": arch,
                    "framework": fw,
                    "mode": mode,
                    "device": device,
                    "batch_size": batch,
                    "precision": precision,
                    "compile": o.compile or suite.compile,
                    "dataset": dataset,
                    "threads": o.threads or suite.threads or default_threads,
                    "seed": suite.seed,
                    "timeout_s": o.timeout_s or suite.timeout_s,
                    "memory_limit_mb": o.memory_limit_mb or suite.memory_limit_mb,
                    "train": train,
                    "measure": suite.measure,
                    "options": suite.options.get(fw, {}),
                    "workers": workers,
                    # scaling only means something for several workers: 1-worker cells keep one key
                    "scaling": (o.scaling or suite.scaling) if workers > 1 else "weak",
                    "tpu_slice": tpu_slice,
                    "accelerator_type": kind,
                }
            )
        except ContractError as e:
            raise SpecError(str(e)) from None
        if spec.trial_key in seen:  # an infer cell, already planned for another dataset
            continue
        seen.add(spec.trial_key)
        problem = data_problem(arch, dataset, batch)
        if problem:
            impossible.append(problem)
        reason = skip_reason(spec, unavailable)
        if reason:
            plan.skipped.append((spec, reason))
        else:
            plan.trials.append(spec)
    if impossible and len(impossible) == len(plan.trials) + len(plan.skipped):
        reasons = "; ".join(_unique(impossible)[:3])
        raise SpecError(f"no selected architecture can train on the selected datasets: {reasons}")
    if node_cores is not None:
        plan.warnings = core_warnings({s.threads for s in plan.trials}, reserve_cores, node_cores)
    return plan
