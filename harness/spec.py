"""Trial, suite and result specs: typed, validated, JSON round-trip (driver side, pydantic).

A :class:`TrialSpec` is one cell of the matrix; its ``trial_key`` is the SHA-256 of its canonical
JSON, so the same cell has the same key in every batch (resume and de-duplication rely on it).
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adapters import FRAMEWORKS
from workloads.architectures import ARCHITECTURES
from workloads.datasets import DATASETS, SYNTHETIC

Mode = Literal["train", "infer"]
Device = Literal["cpu", "gpu", "tpu"]
Status = Literal["ok", "failed", "timeout", "oom", "crash", "unsupported", "diverged"]
MODES: tuple[str, ...] = ("train", "infer")
DEVICES: tuple[str, ...] = ("cpu", "gpu", "tpu")
PRECISIONS: tuple[str, ...] = ("float32",)
COMPILE: tuple[str, ...] = ("auto", "on", "off")

SCENARIOS = {"train": "train", "infer": "offline+single_stream"}


def _choice(kind: str, value: str, choices: Any) -> str:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; choose from {', '.join(choices)}")
    return value


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MeasureSpec(Frozen):
    """The timing protocol's budgets (see harness.measure)."""

    warmup_steps: int = Field(5, ge=0)
    min_steps: int = Field(20, ge=1)
    min_time_s: float = Field(1.0, ge=0)
    window_steps: int = Field(5, ge=1, description="steps per timed window (one clock read each)")
    latency_requests: int = Field(50, ge=1, description="minimum single-stream requests (infer)")


class TrainSpec(Frozen):
    """How a model learns; the same in every framework."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    learning_rate: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    steps: int = Field(0, ge=0, description="accuracy step budget on the dataset (0: throughput only)")
    eval_every: int = Field(0, ge=0, description="evaluate every N steps (0: only at the end)")
    target_accuracy: float | None = Field(
        None, gt=0, le=1, description="held-out accuracy whose first crossing gives time_to_target_s"
    )


class TrialSpec(Frozen):
    """One cell: architecture x framework x mode x device x batch size, and how to run it."""

    architecture: str
    framework: str
    mode: Mode
    device: Device = "cpu"
    batch_size: int = Field(..., gt=0)
    precision: str = "float32"
    compile: Literal["auto", "on", "off"] = "auto"
    dataset: str = SYNTHETIC
    threads: int = Field(..., gt=0)
    seed: int = 0
    timeout_s: float = Field(600.0, gt=0)
    train: TrainSpec = TrainSpec()
    measure: MeasureSpec = MeasureSpec()
    options: dict[str, bool | int | float | str] = Field(default_factory=dict, description="framework build options")

    @field_validator("architecture")
    @classmethod
    def _arch(cls, v: str) -> str:
        return _choice("architecture", v, ARCHITECTURES)

    @field_validator("framework")
    @classmethod
    def _fw(cls, v: str) -> str:
        return _choice("framework", v, FRAMEWORKS)

    @field_validator("precision")
    @classmethod
    def _prec(cls, v: str) -> str:
        return _choice("precision", v, PRECISIONS)

    @field_validator("dataset")
    @classmethod
    def _ds(cls, v: str) -> str:
        return _choice("dataset", v, DATASETS)

    @property
    def scenario(self) -> str:
        return SCENARIOS[self.mode]

    @property
    def name(self) -> str:
        """``{arch}-{fw}-{mode}``, plus ``-{dataset}`` for cells on a real dataset (unique per suite)."""
        base = f"{self.architecture}-{self.framework}-{self.mode}"
        return base if self.dataset == SYNTHETIC else f"{base}-{self.dataset}"

    @property
    def trains_to_accuracy(self) -> bool:
        return self.mode == "train" and self.dataset != SYNTHETIC and self.train.steps > 0

    def canonical_json(self) -> str:
        data = self.model_dump(mode="json")
        if data["train"]["target_accuracy"] is None:  # unset: the key stays what it was before targets existed
            del data["train"]["target_accuracy"]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @property
    def trial_key(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]


class SuiteSpec(Frozen):
    """A suite file (``workloads/suites/*.toml``): the matrix and its shared settings."""

    name: str
    description: str = ""
    frameworks: list[str]
    architectures: list[str]
    modes: list[Mode] = ["train", "infer"]
    devices: list[Device] = ["cpu"]
    batch_sizes: list[int]
    precision: str = "float32"
    compile: Literal["auto", "on", "off"] = "auto"
    datasets: list[str] = Field(
        default_factory=lambda: [SYNTHETIC], description="train cells run on each (infer cells: synthetic)"
    )
    targets: dict[str, float] = Field(default_factory=dict, description="dataset -> target held-out accuracy")
    threads: int | None = Field(None, gt=0, description="cores per trial (default: all of the driver's; --threads)")
    seed: int = 0
    timeout_s: float = Field(600.0, gt=0)
    train: TrainSpec = TrainSpec()
    measure: MeasureSpec = MeasureSpec()
    options: dict[str, dict[str, bool | int | float | str]] = Field(
        default_factory=dict, description="per framework: build options it declares, e.g. [options.mxnet]"
    )

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for fw, opts in v.items():
            _choice("framework", fw, FRAMEWORKS)
            for key in opts:
                allowed = FRAMEWORKS[fw].options
                if key not in allowed:
                    raise ValueError(f"unknown {fw} option {key!r}; choose from {', '.join(allowed) or 'none'}")
        return v

    @field_validator("frameworks")
    @classmethod
    def _fws(cls, v: list[str]) -> list[str]:
        return [_choice("framework", x, FRAMEWORKS) for x in v]

    @field_validator("architectures")
    @classmethod
    def _archs(cls, v: list[str]) -> list[str]:
        return [_choice("architecture", x, ARCHITECTURES) for x in v]

    @field_validator("batch_sizes")
    @classmethod
    def _bs(cls, v: list[int]) -> list[int]:
        if not v or any(b <= 0 for b in v):
            raise ValueError(f"batch sizes must be positive integers, got {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _single_dataset(cls, data: Any) -> Any:
        """The older ``dataset = "name"`` key is a one-element ``datasets`` list."""
        if isinstance(data, dict) and "dataset" in data:
            if "datasets" in data:
                raise ValueError("give either dataset or datasets, not both")
            data = dict(data)
            single = data.pop("dataset")
            data["datasets"] = [single] if isinstance(single, str) else single
        return data

    @field_validator("datasets")
    @classmethod
    def _dss(cls, v: list[str]) -> list[str]:
        return [_choice("dataset", x, DATASETS) for x in v]

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: dict[str, float]) -> dict[str, float]:
        real = [d for d in DATASETS if d != SYNTHETIC]
        for name, target in v.items():
            _choice("dataset", name, real)
            if not 0 < target <= 1:
                raise ValueError(f"target accuracy for {name!r} must be in (0, 1], got {target}")
        return v

    @field_validator("precision")
    @classmethod
    def _prec(cls, v: str) -> str:
        return _choice("precision", v, PRECISIONS)

    @model_validator(mode="after")
    def _non_empty(self) -> SuiteSpec:
        for axis in ("frameworks", "architectures", "modes", "devices", "datasets"):
            if not getattr(self, axis):
                raise ValueError(f"suite {self.name!r}: {axis} is empty")
        return self


class SpecError(ValueError):
    """Bad user input: reported in one line, exit code 2, nothing run."""


def first_error(err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e["loc"])
    msg = str(e["msg"]).removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


SUITES_DIR = Path(__file__).resolve().parent.parent / "workloads" / "suites"


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def load_suite(name_or_path: str) -> SuiteSpec:
    """A suite by name (``workloads/suites/NAME.toml``) or by file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SUITES_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise SpecError(
                f"unknown suite {name_or_path!r}; choose from {', '.join(suite_names())} or give a .toml file"
            )
    if not path.exists():
        raise SpecError(f"suite file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SpecError(f"suite file {str(path)!r} is not valid TOML: {e}") from None
    data.setdefault("name", path.stem)
    try:
        return SuiteSpec.model_validate(data)
    except ValidationError as e:
        raise SpecError(f"suite file {str(path)!r}: {first_error(e)}") from None


class TrialResult(BaseModel):
    """What a trial produced: status, metrics, raw samples and the environment it ran in."""

    model_config = ConfigDict(extra="forbid")

    trial_key: str
    spec: TrialSpec
    status: Status
    reason: str = ""
    metrics: dict[str, float] = {}
    samples: dict[str, list[float]] = Field(default_factory=dict, description="raw timings, seconds")
    history: dict[str, list[float]] = Field(
        default_factory=dict, description="series: loss (every step), val_loss, val_accuracy, train_accuracy"
    )
    history_steps: dict[str, list[int]] = Field(
        default_factory=dict, description="training step of each point of a series; absent: 0, 1, 2, ..."
    )
    compile_mode: str = ""
    framework_version: str = ""
    environment: dict[str, Any] = {}
    stderr_tail: str = ""
    started_at: float = 0.0
    wall_s: float = 0.0
    attempt: int = 1

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> TrialResult:
        return cls.model_validate_json(text)
