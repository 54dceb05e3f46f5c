"""The trial contract both sides share: a trial in, a result out (standard library only).

One definition, used on both sides of the process boundary: the driver builds and validates a
:class:`TrialSpec` (from a suite and the command line), sends a :class:`TrialRequest` as JSON to a
worker process, and the worker decodes it into the same typed objects and writes a
:class:`TrialResult`. Renaming a field is a type error on both sides. Validation lives here too
(choices, bounds, types), so the worker rejects a malformed request exactly as the driver would.

The worker side runs in every framework's interpreter (the MXNet one has numpy 1.23 and no pydantic),
so this module imports only the standard library, the framework registry (plain data) and the
workload registries (numpy).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Self, TypeVar, get_args, get_origin

from adapters import FRAMEWORKS
from adapters.base import PRECISIONS as PRECISIONS  # float32, or mixed: the contract in adapters/base.py
from adapters.base import CompileChoice as CompileChoice
from adapters.base import Device as Device
from adapters.base import Optimization
from workloads.architectures import canonical as canonical_architecture
from workloads.architectures import get as get_architecture
from workloads.datasets import DATASETS, SYNTHETIC

Mode = Literal["train", "infer", "serve"]
Scaling = Literal["weak", "strong"]
Status = Literal["ok", "failed", "timeout", "oom", "crash", "unsupported", "diverged"]
Scenario = Literal["train_throughput", "train_to_accuracy", "infer_offline", "infer_single_stream", "infer_server"]
MODES: tuple[str, ...] = get_args(Mode)
DEVICES: tuple[str, ...] = get_args(Device)
COMPILE: tuple[str, ...] = get_args(CompileChoice)
SCALINGS: tuple[str, ...] = get_args(Scaling)
STATUSES: tuple[str, ...] = get_args(Status)
# Outcomes that are deterministic: ``--resume`` skips them. Others (crash, timeout, ...) run again.
FINAL: tuple[str, ...] = ("ok", "unsupported", "diverged")
# What ``run`` counts as success (exit 0); anything else makes the batch exit 1.
OK_STATUSES: tuple[str, ...] = ("ok", "unsupported")

# The MLflow ``scenario`` param of each mode (kept from before scenarios were units).
SCENARIO_PARAM = {"train": "train", "infer": "offline+single_stream", "serve": "server"}


class ContractError(ValueError):
    """A value that breaks the contract: wrong type, unknown choice, out of bounds, unknown field."""


def unknown_choice(kind: str, value: object, choices: Iterable[object]) -> str:
    """The one wording of an unknown name, with the valid ones (contract, suites, CLI)."""
    return f"unknown {kind} {value!r}; choose from {', '.join(map(str, choices))}"


# --- validation and decoding (generic over the dataclasses below) ---------------------------------


_CHECKS: tuple[tuple[str, str, Callable[[Any, Any], bool]], ...] = (
    ("gt", "greater than", lambda v, b: v > b),
    ("ge", "greater than or equal to", lambda v, b: v >= b),
    ("lt", "less than", lambda v, b: v < b),
    ("le", "less than or equal to", lambda v, b: v <= b),
)


def _bounds(name: str, value: Any, meta: Mapping[str, Any]) -> None:
    for key, words, ok in _CHECKS:
        if key in meta and value is not None and not ok(value, meta[key]):
            raise ContractError(f"{name}: input should be {words} {meta[key]}, got {value!r}")
    check = meta.get("check")
    if check is not None and value is not None:
        try:
            check(value)
        except ValueError as e:
            raise ContractError(f"{name}: {e}") from None
    choices = meta.get("choices")
    if choices is not None and value is not None and value not in choices:
        raise ContractError(f"{name}: {unknown_choice(meta.get('kind', name), value, choices)}")


def _decode(tp: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON or already typed) as an instance of the type annotation ``tp``."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ContractError(f"{where}: expected an object, got {type(value).__name__}")
        return _from_mapping(tp, value, where)
    if origin is Literal:
        if value not in args:
            raise ContractError(f"{where}: {unknown_choice('value', value, args)}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return _decode(option, value, where)
            except ContractError:
                continue
        raise ContractError(f"{where}: {value!r} is none of {tp}")
    if tp is type(None):
        if value is not None:
            raise ContractError(f"{where}: expected null, got {value!r}")
        return None
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ContractError(f"{where}: expected an object, got {type(value).__name__}")
        return {_decode(args[0], k, where): _decode(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ContractError(f"{where}: expected a list, got {type(value).__name__}")
        items = [_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ContractError(f"{where}: input should be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ContractError(f"{where}: input should be an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if type(value) is not tp:
            raise ContractError(f"{where}: input should be a {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"{where}: the contract has no decoder for {tp}")


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _from_mapping(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ContractError(f"{where + '.' if where else ''}{unknown[0]}: extra inputs are not permitted")
    hints = _hints(cls)
    kwargs = {k: _decode(hints[k], v, f"{where + '.' if where else ''}{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ContractError(f"{where or cls.__name__}: {e}") from None


def _validate(obj: Any) -> None:
    """Types and bounds of every field of a contract dataclass (run by ``__post_init__``)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        typed = _decode(hints[f.name], value, f.name)
        if typed is not value:  # an int given for a float, a mapping for a nested record
            object.__setattr__(obj, f.name, typed)
        _bounds(f.name, value, f.metadata)


T = TypeVar("T")


def _range(**bounds: float) -> dict[str, float]:
    return bounds


def _one_of(kind: str, choices: Any) -> dict[str, Any]:
    return {"kind": kind, "choices": tuple(choices)}


class Record:
    """JSON round trip and validation for the contract's dataclasses."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        return _from_mapping(cls, data)

    @classmethod
    def from_json(cls, text: str) -> Self:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ContractError(f"not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ContractError(f"expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)


# --- the trial ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MeasureSpec(Record):
    """The timing protocol's budgets (see :mod:`harness.worker.measure`).

    The ``server_*`` knobs are the ``serve`` mode's (``infer_server``, :mod:`harness.worker.server`):
    single-sample requests arrive as a seeded Poisson process and the adapter serves them in
    dynamic batches of at most ``batch_size``.

    - ``server_requests`` (default 400): requests per probe (each search probe and the run at the
      target rate), at least; a probe has at least 32 full batches (``QUEUE_DEPTH x batch_size``),
      so that an overloaded server's queue outgrows the default bound, but at low rates no more
      than arrive in 5 s (``MAX_PROBE_S``; at least 100).
    - ``server_search_steps`` (default 5): bisection steps of the search for the highest rate whose
      p99 latency stays under the bound, after bracketing it around the capacity estimate.
    - ``server_p99_ms`` (default None): the p99 bound; None: ``SERVER_P99_FACTOR`` (10) times the
      measured latency of one single-sample request, and at least ``SERVER_P99_FLOOR_MS`` (2 ms).
    - ``server_rate_qps`` (default None): the target rate whose latencies are reported; None:
      ``SERVER_RATE_FRACTION`` (0.8) of the highest rate found (``CAPACITY_FRACTION``, 0.5, of the
      capacity estimate when no rate met the bound).
    """

    warmup_steps: int = field(default=5, metadata=_range(ge=0))
    min_steps: int = field(default=20, metadata=_range(ge=1))
    min_time_s: float = field(default=1.0, metadata=_range(ge=0))
    window_steps: int = field(default=5, metadata=_range(ge=1))  # steps per timed window (one clock read), at least
    min_window_s: float = field(default=0.005, metadata=_range(ge=0))  # a window lasts at least this (calibrated)
    latency_requests: int = field(default=50, metadata=_range(ge=1))  # minimum single-stream requests
    server_requests: int = field(default=400, metadata=_range(ge=10, le=1_000_000))
    server_search_steps: int = field(default=5, metadata=_range(ge=0, le=20))
    server_p99_ms: float | None = field(default=None, metadata=_range(gt=0))
    server_rate_qps: float | None = field(default=None, metadata=_range(gt=0))

    # fields left out of a trial's canonical JSON while they hold these values (the keys of older journals)
    _KEY_DEFAULTS: ClassVar[dict[str, object]] = {
        "server_requests": 400,
        "server_search_steps": 5,
        "server_p99_ms": None,
        "server_rate_qps": None,
    }


@dataclass(frozen=True, kw_only=True)
class TrainSpec(Optimization, Record):
    """How a model learns (the optimiser fields come from :class:`adapters.base.Optimization`)."""

    steps: int = field(default=0, metadata=_range(ge=0))  # accuracy step budget on the dataset (0: none)
    eval_every: int = field(default=0, metadata=_range(ge=0))  # evaluate every N steps (0: only at the end)
    target_accuracy: float | None = field(default=None, metadata=_range(gt=0, le=1))
    # The task (see harness.worker.scenarios.train_to_accuracy): the share of the training split kept
    # (stratified by class, drawn with the trial's seed; the held-out split is always whole) ...
    train_fraction: float = field(default=1.0, metadata=_range(gt=0, le=1))
    # ... the classes trained and evaluated on, relabelled 0..k-1 in this order (empty: every class) ...
    classes: tuple[int, ...] = ()
    # ... pretraining first: ``pretrain_steps`` on the whole training split of ``pretrain_classes``
    # (relabelled likewise), then the output layer back to its initial weights and a fresh optimiser ...
    pretrain_classes: tuple[int, ...] = ()
    pretrain_steps: int = field(default=0, metadata=_range(ge=0))
    # ... and, after training, how well input-gradient saliency finds the informative positions of the
    # held-out samples (data sets whose generator knows them: ``Dataset.val_mask``)
    saliency: bool = False

    # fields left out of a trial's canonical JSON while they hold these values (the keys of older journals)
    _KEY_DEFAULTS: ClassVar[dict[str, object]] = {
        "target_accuracy": None,
        "train_fraction": 1.0,
        "classes": (),
        "pretrain_classes": (),
        "pretrain_steps": 0,
        "saliency": False,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("classes", "pretrain_classes"):
            values = getattr(self, name)
            if any(c < 0 for c in values) or len(set(values)) != len(values):
                raise ContractError(f"{name}: distinct class indices >= 0, got {list(values)}")
        if bool(self.pretrain_steps) != bool(self.pretrain_classes):
            raise ContractError("pretrain_steps and pretrain_classes: give both (pretraining) or neither")

    @property
    def task_suffix(self) -> str:
        """What a trial's name adds for a task other than the whole data set: ``-pre0-4-c5-9-frac0.0625``."""
        parts = [f"pre{_classes(self.pretrain_classes)}"] if self.pretrain_steps else []
        parts += [f"c{_classes(self.classes)}"] if self.classes else []
        parts += [f"frac{self.train_fraction:g}"] if self.train_fraction < 1 else []
        return "".join(f"-{p}" for p in parts)


def _classes(values: tuple[int, ...]) -> str:
    """``(5, 6, 7, 8, 9)`` -> ``5-9``; other lists joined with ``.``."""
    if len(values) > 2 and list(values) == list(range(values[0], values[0] + len(values))):
        return f"{values[0]}-{values[-1]}"
    return ".".join(map(str, values))


@dataclass(frozen=True, kw_only=True)
class TrialSpec(Record):
    """One cell: architecture x framework x mode x device x batch size, and how to run it.

    ``trial_key`` is the SHA-256 of the canonical JSON, so the same cell has the same key in every
    batch (resume and de-duplication rely on it). Optional fields left unset stay out of the
    canonical JSON, so journals written before they existed keep their keys; ``memory_limit_mb``
    always does (after an ``oom``, ``--resume --memory-limit MORE`` runs the same cell again).
    """

    # a zoo name, a preset or a sized family member (``mlp[depth=16,width=512]``), kept in canonical spelling
    architecture: str = field(metadata={"check": get_architecture})
    framework: str = field(metadata=_one_of("framework", FRAMEWORKS))
    mode: Mode
    device: Device = "cpu"
    batch_size: int = field(metadata=_range(gt=0))
    precision: str = field(default="float32", metadata=_one_of("precision", PRECISIONS))
    compile: CompileChoice = "auto"
    dataset: str = field(default=SYNTHETIC, metadata=_one_of("dataset", DATASETS))
    threads: int = field(metadata=_range(gt=0))
    seed: int = 0
    timeout_s: float = field(default=600.0, metadata=_range(gt=0))
    memory_limit_mb: int | None = field(default=None, metadata=_range(gt=0))  # None: the node's share
    train: TrainSpec = TrainSpec()
    measure: MeasureSpec = MeasureSpec()
    options: dict[str, bool | int | float | str] = field(default_factory=dict)  # framework build options
    # data-parallel workers, each a process of the framework (gang-scheduled); see global_batch
    workers: int = field(default=1, metadata=_range(ge=1))
    scaling: Scaling = "weak"  # weak: batch_size per worker; strong: batch_size global, split over workers
    tpu_slice: str | None = None  # a TPU pod slice type ("v4-16"): one worker per host of one slice
    accelerator_type: str | None = None  # Ray's accelerator type ("A100", "H100", "TPU-V4"): only such nodes

    # fields left out of the canonical JSON while they hold these values (the keys of older journals)
    _KEY_DEFAULTS: ClassVar[dict[str, object]] = {
        "workers": 1,
        "scaling": "weak",
        "tpu_slice": None,
        "accelerator_type": None,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "architecture", canonical_architecture(self.architecture))
        if self.scaling == "strong" and self.batch_size % self.workers:
            raise ContractError(
                f"batch_size: strong scaling splits the global batch of {self.batch_size} over {self.workers} "
                f"workers; choose a multiple of {self.workers}"
            )

    @property
    def global_batch(self) -> int:
        """Samples one optimiser step consumes over all workers."""
        return self.batch_size * self.workers if self.scaling == "weak" else self.batch_size

    @property
    def local_batch(self) -> int:
        """Samples each worker computes on per step."""
        return self.global_batch // self.workers

    @property
    def distributed(self) -> bool:
        return self.workers > 1

    @property
    def name(self) -> str:
        """``{arch}-{fw}-{mode}``, plus ``-{dataset}`` for cells on a real dataset, ``-{precision}`` below
        float32, ``-w{workers}`` for multi-worker cells and ``-{tpu_slice}`` on a TPU slice."""
        base = f"{self.architecture}-{self.framework}-{self.mode}"
        base = base if self.dataset == SYNTHETIC else f"{base}-{self.dataset}{self.train.task_suffix}"
        if self.precision != "float32":
            base += f"-{self.precision}"
        if self.workers > 1:
            base += f"-w{self.workers}"
        return f"{base}-{self.tpu_slice}" if self.tpu_slice else base

    @property
    def trains_to_accuracy(self) -> bool:
        return self.mode == "train" and self.dataset != SYNTHETIC and self.train.steps > 0

    @property
    def scenarios(self) -> tuple[Scenario, ...]:
        """The worker's scenario units this trial runs, in order (see :mod:`harness.worker.scenarios`)."""
        if self.mode == "infer":
            return ("infer_offline", "infer_single_stream")
        if self.mode == "serve":
            return ("infer_server",)
        return ("train_throughput", "train_to_accuracy") if self.trains_to_accuracy else ("train_throughput",)

    @property
    def scenario(self) -> str:
        return SCENARIO_PARAM[self.mode]

    def canonical_json(self) -> str:
        data = self.to_dict()
        for key, default in TrainSpec._KEY_DEFAULTS.items():
            if data["train"][key] == default:
                del data["train"][key]
        del data["memory_limit_mb"]  # a resource limit, not what is measured: raising it resumes the same cell
        for key, default in self._KEY_DEFAULTS.items():
            if data[key] == default:
                del data[key]
        for key, default in MeasureSpec._KEY_DEFAULTS.items():
            if data["measure"][key] == default:
                del data["measure"][key]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @functools.cached_property
    def trial_key(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class TrialRequest(Record):
    """What the launcher hands a worker process (``python -m harness.worker --request FILE``)."""

    spec: TrialSpec
    cpus: list[int] | None = None  # the CPU set to pin to (None: inherit)
    dataset_path: str | None = None  # this node's cached copy of the trial's dataset
    cache_dir: str | None = None  # where the GEMM peak calibration is cached
    fault: Literal["crash", "hang", "raise", "alloc"] | None = None  # test hook, never set by default
    parent_pid: int | None = None  # the launcher: the worker dies with it
    rank: int = field(default=0, metadata=_range(ge=0))  # of spec.workers (0: the one whose result is kept)
    peers: list[str] = field(default_factory=list)  # "host:port" of each rank's framework endpoint (rank 0:
    # the coordinator); empty for a single-process trial
    group: str | None = None  # "host:port" of rank 0's harness channel (step agreement, failures)


@dataclass(kw_only=True)
class TrialResult(Record):
    """What a trial produced: status, metrics, raw samples and the environment it ran in."""

    trial_key: str
    spec: TrialSpec
    status: Status
    reason: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    samples: dict[str, list[float]] = field(default_factory=dict)  # raw timings, seconds
    history: dict[str, list[float]] = field(default_factory=dict)  # loss (every step), val_* (evaluations)
    history_steps: dict[str, list[int]] = field(default_factory=dict)  # step of each point; absent: 0, 1, ...
    compile_mode: str = ""
    framework_version: str = ""
    environment: dict[str, Any] = field(default_factory=dict)
    stderr_tail: str = ""
    started_at: float = 0.0
    wall_s: float = 0.0
    replica: int = 0  # which of the cell's independent processes (0 .. repeats-1)
    attempt: int = 1  # of this replica: a crash or timeout runs it again on --resume

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES
