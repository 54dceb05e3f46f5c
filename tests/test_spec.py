"""Unit tests for harness.spec: suite files validated into the trial contract, suite loading.
Pure: no Ray, no MLflow, no frameworks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from adapters import FRAMEWORKS
from harness.contract import PRECISIONS, MeasureSpec
from harness.spec import SpecError, SuiteSpec, load_suite, suite_names
from workloads.architectures import ARCHITECTURES
from workloads.datasets import DATASETS


def choices(names: Any) -> str:
    return re.escape(f"choose from {', '.join(names)}")


# --- suites --------------------------------------------------------------------------------------


def write_toml(tmp_path: Path, text: str, name: str = "mysuite.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD_TOML = """
description = "test suite"
frameworks = ["torch", "jax"]
architectures = ["mlp_shallow", "cnn1d"]
modes = ["infer"]
batch_sizes = [8, 16]
seed = 3

[measure]
min_steps = 4
"""


def test_load_suite_by_name() -> None:
    assert "smoke" in suite_names()
    suite = load_suite("smoke")
    assert isinstance(suite, SuiteSpec)
    assert suite.name == "smoke"
    assert suite.frameworks
    assert set(suite.frameworks) <= set(FRAMEWORKS)
    assert set(suite.architectures) <= set(ARCHITECTURES)
    assert all(b > 0 for b in suite.batch_sizes)


def test_load_suite_by_path(tmp_path: Path) -> None:
    path = write_toml(tmp_path, GOOD_TOML)
    suite = load_suite(str(path))
    assert suite.name == "mysuite"  # from the file stem
    assert suite.frameworks == ["torch", "jax"]
    assert suite.architectures == ["mlp_shallow", "cnn1d"]
    assert suite.modes == ["infer"]
    assert suite.devices == ["cpu"]
    assert suite.batch_sizes == [8, 16]
    assert suite.seed == 3
    assert suite.measure.min_steps == 4
    assert suite.measure.window_steps == MeasureSpec().window_steps


def test_load_suite_keeps_an_explicit_name(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'name = "explicit"\n' + GOOD_TOML)
    assert load_suite(str(path)).name == "explicit"


def test_unknown_suite_name_lists_available_suites() -> None:
    with pytest.raises(SpecError) as info:
        load_suite("no_such_suite")
    message = str(info.value)
    assert "no_such_suite" in message
    for name in suite_names():
        assert name in message
    assert "smoke" in message


def test_missing_suite_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="does not exist"):
        load_suite(str(tmp_path / "absent.toml"))


@pytest.mark.parametrize(
    "text",
    ['frameworks = ["torch"\n', "frameworks = \n", "[measure\nmin_steps = 1\n", 'a = "unterminated\n'],
)
def test_malformed_toml_is_a_spec_error(tmp_path: Path, text: str) -> None:
    path = write_toml(tmp_path, text)
    with pytest.raises(SpecError, match="not valid TOML"):
        load_suite(str(path))


def test_non_utf8_suite_file_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SpecError):
        load_suite(str(path))


def _replace_line(text: str, prefix: str, new: str) -> str:
    """``text`` with its top-level line starting with ``prefix`` replaced by ``new`` (prepended if absent)."""
    lines = [new if line.startswith(prefix) else line for line in text.splitlines()]
    if new not in lines:
        lines.insert(0, new)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("prefix", "line", "field", "expected"),
    [
        ("frameworks", 'frameworks = ["pytorch"]', "frameworks", choices(FRAMEWORKS)),
        ("architectures", 'architectures = ["vgg16"]', "architectures", choices(ARCHITECTURES)),
        ("batch_sizes", "batch_sizes = [0]", "batch_sizes", "positive integers"),
        ("batch_sizes", "batch_sizes = [8, -1]", "batch_sizes", "positive integers"),
        ("batch_sizes", "batch_sizes = []", "batch_sizes", "positive integers"),
        ("modes", 'modes = ["predict"]', "modes", "'train', 'infer' or 'serve'"),
        ("dataset", 'dataset = "cifar10"', "dataset", choices(DATASETS)),
    ],
)
def test_bad_suite_field_names_field_and_choices(
    tmp_path: Path, prefix: str, line: str, field: str, expected: str
) -> None:
    path = write_toml(tmp_path, _replace_line(GOOD_TOML, prefix, line))
    with pytest.raises(SpecError, match=expected) as info:
        load_suite(str(path))
    message = str(info.value)
    assert field in message
    assert str(path) in message


def test_empty_axis_is_a_spec_error(tmp_path: Path) -> None:
    path = write_toml(tmp_path, _replace_line(GOOD_TOML, "frameworks", "frameworks = []"))
    with pytest.raises(SpecError, match="frameworks is empty"):
        load_suite(str(path))


def test_extra_suite_field_is_a_spec_error(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "gpus = 4\n" + GOOD_TOML)
    with pytest.raises(SpecError, match="gpus"):
        load_suite(str(path))


def test_bad_suite_precision_is_rejected_at_load(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'precision = "float8"\n' + GOOD_TOML)
    with pytest.raises(SpecError, match=choices(PRECISIONS)):
        load_suite(str(path))


def test_suite_framework_options(tmp_path: Path) -> None:
    base = 'frameworks = ["mxnet"]\narchitectures = ["cnn1d"]\nbatch_sizes = [8]\n'
    good = tmp_path / "good.toml"
    good.write_text(base + "[options.mxnet]\nstatic_alloc = false\n")
    assert load_suite(str(good)).options == {"mxnet": {"static_alloc": False}}
    for bad_options, message in [
        ("[options.mxnet]\nstatic = true\n", "unknown mxnet option 'static'; choose from static_alloc, static_shape"),
        ("[options.torch]\nfuse = true\n", "unknown torch option 'fuse'; choose from none"),
        ("[options.caffe]\nx = 1\n", "unknown framework 'caffe'"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(base + bad_options)
        with pytest.raises(SpecError, match=re.escape(message)):
            load_suite(str(bad))


# --- datasets axis, targets, threads (workload zoo) ----------------------------------------------


SUITE_BASE = 'frameworks = ["torch"]\narchitectures = ["mlp_shallow"]\nbatch_sizes = [8]\n'


def test_suite_datasets_list_and_targets(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path, SUITE_BASE + 'datasets = ["mnist1d", "digits"]\n[targets]\nmnist1d = 0.6\ndigits = 0.9\n'
    )
    suite = load_suite(str(path))
    assert suite.datasets == ["mnist1d", "digits"]
    assert suite.targets == {"mnist1d": 0.6, "digits": 0.9}


def test_suite_single_dataset_key_is_a_one_element_list(tmp_path: Path) -> None:
    assert load_suite(str(write_toml(tmp_path, SUITE_BASE + 'dataset = "mnist1d"\n'))).datasets == ["mnist1d"]
    assert load_suite(str(write_toml(tmp_path, SUITE_BASE))).datasets == ["synthetic"]
    assert load_suite("smoke").datasets == ["mnist1d"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('datasets = ["mnist1d", "cifar10"]\n', "unknown dataset 'cifar10'; " + "choose from " + ", ".join(DATASETS)),
        ("datasets = []\n", "datasets is empty"),
        ('dataset = "mnist1d"\ndatasets = ["digits"]\n', "either dataset or datasets"),
        ("[targets]\nmnist1d = 0.0\n", "must be in (0, 1]"),
        ("[targets]\nmnist1d = 1.5\n", "must be in (0, 1]"),
        ("[targets]\nmnist2d = 0.5\n", "unknown dataset 'mnist2d'"),
        ("[targets]\nsynthetic = 0.5\n", "unknown dataset 'synthetic'"),
        ("threads = 0\n", "threads"),
    ],
    ids=["unknown", "empty", "both-keys", "target-0", "target-1.5", "target-unknown", "target-synthetic", "threads"],
)
def test_bad_datasets_and_targets_are_spec_errors(tmp_path: Path, extra: str, message: str) -> None:
    path = write_toml(tmp_path, SUITE_BASE + extra)
    with pytest.raises(SpecError, match=re.escape(message)):
        load_suite(str(path))


def test_zoo_suites_load() -> None:
    assert {"smoke", "accuracy", "throughput"} <= set(suite_names())
    acc = load_suite("accuracy")
    assert set(acc.frameworks) == set(FRAMEWORKS) and acc.modes == ["train"]
    assert {"mnist1d", "mnist1d_shuffled", "digits", "digits32"} <= set(acc.datasets)
    assert {"logreg", "mlp_shallow", "cnn1d", "gru", "lenet5"} <= set(acc.architectures)
    assert set(acc.targets) == set(acc.datasets)  # every dataset has its documented target
    assert acc.train.steps > 0 and acc.train.eval_every > 0
    tput = load_suite("throughput")
    assert set(tput.architectures) == set(ARCHITECTURES) and set(tput.frameworks) == set(FRAMEWORKS)
    assert tput.datasets == ["synthetic"] and set(tput.modes) == {"train", "infer"} and len(tput.batch_sizes) == 2
