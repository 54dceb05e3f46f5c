"""Suite files and command-line input, validated into the trial contract (driver side, pydantic).

The trial itself (:class:`~harness.contract.TrialSpec`, its ``TrainSpec`` and ``MeasureSpec``, and
:class:`~harness.contract.TrialResult`) is defined once in :mod:`harness.contract`, which the
worker shares; this module validates what users write (suite TOML files) into it, with one-line
errors that name the valid choices.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adapters import FRAMEWORKS
from harness.contract import (
    PRECISIONS,
    CompileChoice,
    ContractError,
    Device,
    MeasureSpec,
    Mode,
    Scaling,
    TrainSpec,
    unknown_choice,
)
from workloads.architectures import canonical, get
from workloads.datasets import DATASETS, SYNTHETIC

TPU_GENERATIONS = ("v2", "v3", "v4", "v5p", "v5litepod", "v6e", "v7x")


def check_slice_type(value: str) -> str:
    """A TPU pod slice type: generation and TensorCore/chip count, e.g. ``v4-16`` or ``v6e-8``."""
    generation, _, size = value.partition("-")
    if generation not in TPU_GENERATIONS or not size.isdigit() or int(size) <= 0:
        raise ValueError(
            f"unknown TPU slice type {value!r}; give GENERATION-SIZE with GENERATION one of "
            f"{', '.join(TPU_GENERATIONS)} (e.g. v4-16)"
        )
    return value


def _choice(kind: str, value: str, choices: Any) -> str:
    if value not in choices:
        raise ValueError(unknown_choice(kind, value, choices))
    return value


def _architecture(name: str) -> str:
    """A zoo name, preset or sized family member (``mlp[depth=16,width=512]``), in canonical spelling."""
    get(name)  # raises ValueError naming the valid names or keys
    return canonical(name)


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SuiteSpec(Frozen):
    """A suite file (``workloads/suites/*.toml``): the matrix and its shared settings."""

    name: str
    description: str = ""
    frameworks: list[str]
    architectures: list[str]
    modes: list[Mode] = ["train", "infer"]
    devices: list[Device] = ["cpu"]
    batch_sizes: list[int]
    precisions: list[str] = Field(
        default_factory=lambda: ["float32"],
        description="float32, or bfloat16/float16 mixed precision with float32 master weights (--precision)",
    )
    compile: CompileChoice = "auto"
    datasets: list[str] = Field(
        default_factory=lambda: [SYNTHETIC], description="train cells run on each (infer cells: synthetic)"
    )
    targets: dict[str, float] = Field(default_factory=dict, description="dataset -> target held-out accuracy")
    threads: int | None = Field(
        None, gt=0, description="cores per trial (default: the node's cores left after reserve_cores; --threads)"
    )
    reserve_cores: int | None = Field(
        None,
        ge=0,
        description="cores per node kept for the driver and Ray (default 1; 0 on 1 core, 2 from 32; --reserve-cores)",
    )
    repeats: int = Field(1, ge=1, description="independent worker processes per cell (--repeats)")
    workers: list[int] = Field(
        default_factory=lambda: [1], description="data-parallel workers per train cell, each a process (--workers)"
    )
    scaling: Scaling = Field("weak", description="weak: batch size per worker; strong: global batch (--scaling)")
    tpu_slices: list[str] = Field(
        default_factory=list, description="TPU pod slice types for device tpu, e.g. v4-16: one worker per host"
    )
    accelerator_types: list[str] = Field(
        default_factory=list, description="Ray accelerator types for GPU/TPU cells, e.g. A100, H100 (an axis)"
    )
    unstable_cv: float = Field(0.10, gt=0, description="a cell whose processes' throughput CV exceeds this is unstable")
    seed: int = 0
    timeout_s: float = Field(600.0, gt=0)
    memory_limit_mb: int | None = Field(
        None, gt=0, description="per-trial memory cap (default: the node's memory / trials that fit on it)"
    )
    train: TrainSpec = TrainSpec()
    measure: MeasureSpec = MeasureSpec()
    options: dict[str, dict[str, bool | int | float | str]] = Field(
        default_factory=dict, description="per framework: build options it declares, e.g. [options.mxnet]"
    )

    @field_validator("train", "measure", mode="before")
    @classmethod
    def _contract(cls, v: Any, info: Any) -> Any:
        """The contract's own decoder and validation (the same the worker runs)."""
        record = TrainSpec if info.field_name == "train" else MeasureSpec
        if isinstance(v, dict):
            try:
                return record.from_dict(v)
            except ContractError as e:
                raise ValueError(str(e)) from None
        return v

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
        return [_architecture(x) for x in v]

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: list[int]) -> list[int]:
        if not v or any(w <= 0 for w in v):
            raise ValueError(f"workers must be positive integers, got {v}")
        return v

    @field_validator("tpu_slices")
    @classmethod
    def _slices(cls, v: list[str]) -> list[str]:
        for t in v:
            check_slice_type(t)
        return v

    @field_validator("batch_sizes")
    @classmethod
    def _bs(cls, v: list[int]) -> list[int]:
        if not v or any(b <= 0 for b in v):
            raise ValueError(f"batch sizes must be positive integers, got {v}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _single_values(cls, data: Any) -> Any:
        """The older ``dataset = "name"`` and ``precision = "name"`` keys are one-element lists."""
        for single, axis in (("dataset", "datasets"), ("precision", "precisions")):
            if isinstance(data, dict) and single in data:
                if axis in data:
                    raise ValueError(f"give either {single} or {axis}, not both")
                data = dict(data)
                value = data.pop(single)
                data[axis] = [value] if isinstance(value, str) else value
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

    @field_validator("precisions")
    @classmethod
    def _prec(cls, v: list[str]) -> list[str]:
        return [_choice("precision", x, PRECISIONS) for x in v]

    @model_validator(mode="after")
    def _non_empty(self) -> SuiteSpec:
        for axis in ("frameworks", "architectures", "modes", "devices", "datasets", "precisions"):
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
