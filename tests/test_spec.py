"""Unit tests for harness.spec: TrialSpec / SuiteSpec / TrialResult validation, JSON round-trips,
trial keys and suite loading. Pure: no Ray, no MLflow, no frameworks."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from adapters import FRAMEWORKS
from harness.spec import (
    PRECISIONS,
    MeasureSpec,
    SpecError,
    SuiteSpec,
    TrainSpec,
    TrialResult,
    TrialSpec,
    load_suite,
    suite_names,
)
from workloads.architectures import ARCHITECTURES
from workloads.datasets import DATASETS

BASE: dict[str, Any] = {
    "architecture": "mlp_shallow",
    "framework": "torch",
    "mode": "train",
    "batch_size": 32,
    "threads": 2,
}


def make(**changes: Any) -> TrialSpec:
    return TrialSpec.model_validate(BASE | changes)


def choices(names: Any) -> str:
    return re.escape(f"choose from {', '.join(names)}")


# --- TrialSpec validation ------------------------------------------------------------------------


def test_base_spec_is_valid_with_defaults() -> None:
    s = make()
    assert s.device == "cpu"
    assert s.precision == "float32"
    assert s.dataset == "synthetic"
    assert s.name == "mlp_shallow-torch-train"
    assert s.scenario == "train"
    assert make(mode="infer").scenario == "offline+single_stream"


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [
        ("framework", "pytorch", FRAMEWORKS),
        ("architecture", "resnet50", ARCHITECTURES),
        ("dataset", "imagenet", DATASETS),
        ("precision", "bfloat16", PRECISIONS),
    ],
)
def test_unknown_choice_is_rejected_listing_valid_choices(field: str, value: str, valid: Any) -> None:
    with pytest.raises(ValidationError, match=choices(valid)) as info:
        make(**{field: value})
    assert repr(value) in str(info.value)
    assert len(list(valid)) >= 1


@pytest.mark.parametrize("field", ["mode", "device", "compile"])
def test_literal_fields_reject_unknown_values(field: str) -> None:
    with pytest.raises(ValidationError):
        make(**{field: "bogus"})


@pytest.mark.parametrize("batch_size", [0, -1, -64])
def test_non_positive_batch_size_is_rejected(batch_size: int) -> None:
    with pytest.raises(ValidationError, match="greater than 0"):
        make(batch_size=batch_size)


@pytest.mark.parametrize("threads", [0, -2])
def test_non_positive_threads_is_rejected(threads: int) -> None:
    with pytest.raises(ValidationError, match="greater than 0"):
        make(threads=threads)


@pytest.mark.parametrize(
    "data",
    [
        BASE | {"gpus": 1},
        BASE | {"measure": {"min_steps": 3, "max_steps": 9}},
        BASE | {"train": {"optimizer": "sgd", "nesterov": True}},
    ],
    ids=["top-level", "measure", "train"],
)
def test_extra_fields_are_rejected(data: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        TrialSpec.model_validate(data)


def test_missing_required_field_is_rejected() -> None:
    data = dict(BASE)
    del data["batch_size"]
    with pytest.raises(ValidationError, match="batch_size"):
        TrialSpec.model_validate(data)


def test_spec_is_frozen() -> None:
    s = make()
    with pytest.raises(ValidationError):
        s.batch_size = 64  # type: ignore[misc]


@pytest.mark.parametrize(
    "nested",
    [
        {"measure": {"min_steps": 0}},
        {"measure": {"window_steps": 0}},
        {"measure": {"min_time_s": -1.0}},
        {"train": {"learning_rate": 0.0}},
        {"train": {"momentum": 1.0}},
        {"train": {"optimizer": "rmsprop"}},
    ],
)
def test_nested_specs_validate_their_bounds(nested: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TrialSpec.model_validate(BASE | nested)


# --- JSON round-trip and trial keys --------------------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        make(),
        make(mode="infer", device="gpu", compile="off", seed=7, timeout_s=12.5),
        make(
            dataset="mnist1d",
            train=TrainSpec(optimizer="adam", learning_rate=1e-3, steps=300, eval_every=50),
            measure=MeasureSpec(warmup_steps=0, min_steps=3, min_time_s=0.0, window_steps=1, latency_requests=2),
        ),
    ],
    ids=["defaults", "infer-gpu", "nested"],
)
def test_json_round_trip_is_lossless(spec: TrialSpec) -> None:
    again = TrialSpec.model_validate_json(spec.model_dump_json())
    assert again == spec
    assert again.trial_key == spec.trial_key
    assert again.canonical_json() == spec.canonical_json()


def test_trial_key_is_a_short_hex_digest() -> None:
    key = make().trial_key
    assert re.fullmatch(r"[0-9a-f]{16}", key)


def test_trial_key_is_stable_and_independent_of_key_order() -> None:
    data = BASE | {"train": {"steps": 5, "learning_rate": 0.1}, "measure": {"min_steps": 4, "warmup_steps": 1}}
    reordered = dict(reversed(list(data.items())))
    reordered["train"] = dict(reversed(list(data["train"].items())))
    reordered["measure"] = dict(reversed(list(data["measure"].items())))
    assert list(reordered) != list(data)
    a, b = TrialSpec.model_validate(data), TrialSpec.model_validate(reordered)
    assert a.trial_key == b.trial_key == TrialSpec.model_validate(data).trial_key


def test_defaults_given_explicitly_give_the_same_key() -> None:
    explicit = make(device="cpu", precision="float32", compile="auto", dataset="synthetic", seed=0)
    assert explicit.trial_key == make().trial_key


KEY_CHANGES: dict[str, dict[str, Any]] = {
    "batch_size": {"batch_size": 33},
    "framework": {"framework": "jax"},
    "architecture": {"architecture": "cnn1d"},
    "mode": {"mode": "infer"},
    "device": {"device": "gpu"},
    "seed": {"seed": 1},
    "threads": {"threads": 3},
    "compile": {"compile": "on"},
    "dataset": {"dataset": "mnist1d"},
    "timeout_s": {"timeout_s": 601.0},
    "measure.min_steps": {"measure": {"min_steps": 21}},
    "train.learning_rate": {"train": {"learning_rate": 0.051}},
}


@pytest.mark.parametrize("change", list(KEY_CHANGES.values()), ids=list(KEY_CHANGES))
def test_trial_key_changes_when_any_field_changes(change: dict[str, Any]) -> None:
    assert make(**change).trial_key != make().trial_key


# --- TrialResult ---------------------------------------------------------------------------------


def test_trial_result_json_round_trip() -> None:
    s = make(dataset="mnist1d", train=TrainSpec(steps=10))
    r = TrialResult(
        trial_key=s.trial_key,
        spec=s,
        status="ok",
        reason="",
        metrics={"samples_per_s": 1234.5, "compile_s": 0.25},
        samples={"window_s": [0.1, 0.11, 0.09]},
        history={"loss": [2.3, 1.9, 1.2]},
        compile_mode="inductor",
        framework_version="2.13.0",
        environment={"hostname": "node-1", "cpus": [0, 1], "nested": {"a": 1}},
        stderr_tail="warning: x",
        started_at=1700000000.5,
        wall_s=3.25,
        attempt=2,
    )
    again = TrialResult.from_json(r.to_json())
    assert again == r
    assert again.spec.trial_key == r.trial_key


def test_trial_result_defaults_do_not_share_state() -> None:
    s = make()
    a = TrialResult(trial_key=s.trial_key, spec=s, status="ok")
    b = TrialResult(trial_key=s.trial_key, spec=s, status="ok")
    a.metrics["x"] = 1.0
    a.environment["y"] = 2
    assert b.metrics == {} and b.environment == {}


@pytest.mark.parametrize(
    "change",
    [{"status": "exploded"}, {"unknown": 1}, {"metrics": {"x": "fast"}}],
    ids=["status", "extra", "metric-type"],
)
def test_trial_result_rejects_bad_fields(change: dict[str, Any]) -> None:
    s = make()
    data = {"trial_key": s.trial_key, "spec": s.model_dump(), "status": "ok"} | change
    with pytest.raises(ValidationError):
        TrialResult.model_validate(data)


def test_trial_result_from_torn_json_raises_value_error() -> None:
    s = make()
    text = TrialResult(trial_key=s.trial_key, spec=s, status="ok").to_json()
    with pytest.raises(ValueError):
        TrialResult.from_json(text[: len(text) // 2])


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
        ("modes", 'modes = ["serve"]', "modes", "'train' or 'infer'"),
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
    path = write_toml(tmp_path, 'precision = "float16"\n' + GOOD_TOML)
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


def test_trial_name_appends_a_real_dataset() -> None:
    assert make(dataset="synthetic").name == "mlp_shallow-torch-train"
    assert make(dataset="mnist1d").name == "mlp_shallow-torch-train-mnist1d"
    assert make(mode="infer").name == "mlp_shallow-torch-infer"


@pytest.mark.parametrize("target", [0.0, -0.5, 1.01])
def test_target_accuracy_must_be_in_unit_interval(target: float) -> None:
    with pytest.raises(ValidationError, match="target_accuracy"):
        TrainSpec(target_accuracy=target)


def test_unset_target_keeps_the_keys_of_earlier_journals() -> None:
    import hashlib
    import json

    spec = make(dataset="mnist1d", train=TrainSpec(steps=10))
    earlier = spec.model_dump(mode="json")
    del earlier["train"]["target_accuracy"]  # the spec as it was before targets existed
    text = json.dumps(earlier, sort_keys=True, separators=(",", ":"))
    assert spec.trial_key == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_target_accuracy_is_optional_and_part_of_the_key() -> None:
    assert TrainSpec().target_accuracy is None
    assert TrainSpec(target_accuracy=1.0).target_accuracy == 1.0
    with_target = make(dataset="mnist1d", train=TrainSpec(steps=10, target_accuracy=0.5))
    without = make(dataset="mnist1d", train=TrainSpec(steps=10))
    assert with_target.trial_key != without.trial_key


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


def test_trial_result_history_steps_round_trip() -> None:
    s = make(dataset="mnist1d", train=TrainSpec(steps=4, eval_every=2))
    r = TrialResult(
        trial_key=s.trial_key,
        spec=s,
        status="ok",
        history={"loss": [2.0, 1.5, 1.2, 1.0], "val_accuracy": [0.3, 0.5]},
        history_steps={"val_accuracy": [2, 4]},
    )
    assert TrialResult.from_json(r.to_json()).history_steps == {"val_accuracy": [2, 4]}
    legacy = r.model_dump(mode="json")
    del legacy["history_steps"]  # journals written before history_steps existed still load
    assert TrialResult.model_validate(legacy).history_steps == {}
