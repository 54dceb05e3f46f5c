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
        return f"{self.architecture}-{self.framework}-{self.mode}"

    @property
    def trains_to_accuracy(self) -> bool:
        return self.mode == "train" and self.dataset != SYNTHETIC and self.train.steps > 0

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

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
    dataset: str = SYNTHETIC
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

    @field_validator("dataset")
    @classmethod
    def _ds(cls, v: str) -> str:
        return _choice("dataset", v, DATASETS)

    @field_validator("precision")
    @classmethod
    def _prec(cls, v: str) -> str:
        return _choice("precision", v, PRECISIONS)

    @model_validator(mode="after")
    def _non_empty(self) -> SuiteSpec:
        for axis in ("frameworks", "architectures", "modes", "devices"):
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
    history: dict[str, list[float]] = Field(default_factory=dict, description="per-step series: loss, ...")
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
