"""Unit tests for harness.contract: TrialSpec / TrialResult validation (the same on the driver and in
the worker), JSON round-trips and trial keys. Pure: no Ray, no MLflow, no frameworks."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from adapters import FRAMEWORKS
from harness.contract import PRECISIONS, ContractError, MeasureSpec, TrainSpec, TrialResult, TrialSpec
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
    return TrialSpec.from_dict(BASE | changes)


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
        ("architecture", "resnet9000", ARCHITECTURES),
        ("dataset", "imagenet", DATASETS),
        ("precision", "float8", PRECISIONS),
    ],
)
def test_unknown_choice_is_rejected_listing_valid_choices(field: str, value: str, valid: Any) -> None:
    with pytest.raises(ContractError, match=choices(valid)) as info:
        make(**{field: value})
    assert repr(value) in str(info.value)
    assert len(list(valid)) >= 1


@pytest.mark.parametrize("field", ["mode", "device", "compile"])
def test_literal_fields_reject_unknown_values(field: str) -> None:
    with pytest.raises(ContractError):
        make(**{field: "bogus"})


@pytest.mark.parametrize("batch_size", [0, -1, -64])
def test_non_positive_batch_size_is_rejected(batch_size: int) -> None:
    with pytest.raises(ContractError, match="greater than 0"):
        make(batch_size=batch_size)


@pytest.mark.parametrize("threads", [0, -2])
def test_non_positive_threads_is_rejected(threads: int) -> None:
    with pytest.raises(ContractError, match="greater than 0"):
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
    with pytest.raises(ContractError, match="extra inputs are not permitted"):
        TrialSpec.from_dict(data)


def test_missing_required_field_is_rejected() -> None:
    data = dict(BASE)
    del data["batch_size"]
    with pytest.raises(ContractError, match="batch_size"):
        TrialSpec.from_dict(data)


def test_spec_is_frozen() -> None:
    s = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
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
    with pytest.raises(ContractError):
        TrialSpec.from_dict(BASE | nested)


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
    again = TrialSpec.from_json(spec.to_json())
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
    a, b = TrialSpec.from_dict(data), TrialSpec.from_dict(reordered)
    assert a.trial_key == b.trial_key == TrialSpec.from_dict(data).trial_key


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
    data = {"trial_key": s.trial_key, "spec": s.to_dict(), "status": "ok"} | change
    with pytest.raises(ContractError):
        TrialResult.from_dict(data)


def test_trial_result_from_torn_json_raises_value_error() -> None:
    s = make()
    text = TrialResult(trial_key=s.trial_key, spec=s, status="ok").to_json()
    with pytest.raises(ValueError):
        TrialResult.from_json(text[: len(text) // 2])


def test_trial_name_appends_a_real_dataset() -> None:
    assert make(dataset="synthetic").name == "mlp_shallow-torch-train"
    assert make(dataset="mnist1d").name == "mlp_shallow-torch-train-mnist1d"
    assert make(mode="infer").name == "mlp_shallow-torch-infer"


@pytest.mark.parametrize("target", [0.0, -0.5, 1.01])
def test_target_accuracy_must_be_in_unit_interval(target: float) -> None:
    with pytest.raises(ContractError, match="target_accuracy"):
        TrainSpec(target_accuracy=target)


def test_unset_target_keeps_the_keys_of_earlier_journals() -> None:
    import hashlib
    import json

    spec = make(dataset="mnist1d", train=TrainSpec(steps=10))
    earlier = spec.to_dict()
    del earlier["train"]["target_accuracy"]  # the spec as it was before targets existed
    for key in ("train_fraction", "classes", "pretrain_classes", "pretrain_steps", "saliency"):  # ... and tasks
        del earlier["train"][key]
    del earlier["memory_limit_mb"]  # ... and before memory limits
    for key in ("workers", "scaling", "tpu_slice", "accelerator_type"):  # ... and multi-worker trials
        del earlier[key]
    for key in ("server_requests", "server_search_steps", "server_p99_ms", "server_rate_qps"):  # ... and serve
        del earlier["measure"][key]
    text = json.dumps(earlier, sort_keys=True, separators=(",", ":"))
    assert spec.trial_key == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_multi_worker_fields_change_the_key_only_when_set() -> None:
    one = make()
    assert one.replace(workers=1, scaling="weak").trial_key == one.trial_key
    keys = {one.replace(**c).trial_key for c in ({"workers": 2}, {"tpu_slice": "v4-16"}, {"accelerator_type": "A100"})}
    assert len(keys) == 3 and one.trial_key not in keys
    two = make(batch_size=8, workers=2)
    assert (two.global_batch, two.local_batch, two.name.endswith("-w2")) == (16, 8, True)
    strong = two.replace(scaling="strong")
    assert (strong.global_batch, strong.local_batch) == (8, 4)
    with pytest.raises(ContractError, match="multiple of 3"):
        make(batch_size=8, workers=3, scaling="strong")
    with pytest.raises(ContractError, match="greater than or equal to 1"):
        make(workers=0)


def test_memory_limit_is_optional_and_not_part_of_the_key() -> None:
    assert make().memory_limit_mb is None
    assert make(memory_limit_mb=512).trial_key == make().trial_key  # resuming with a higher limit: same cell
    with pytest.raises(ContractError, match="greater than 0"):
        make(memory_limit_mb=0)


def test_trial_keys_are_pinned() -> None:
    """Pinned: a key changes only when what is measured changes (journals must resume across versions).

    Last changed deliberately when timed windows became calibrated (``measure.min_window_s``): a cell
    measured with the old protocol is a different cell. Before that, keys matched the pydantic
    TrialSpec this contract replaced ("ea64d61d6e48dceb", "bf0c740d34f182b3").
    """
    assert make().trial_key == "2411e36335e71738"
    trained = make(dataset="mnist1d", train=TrainSpec(steps=10, target_accuracy=0.5), measure=MeasureSpec(min_time_s=2))
    assert trained.trial_key == "844b43d7b8128150"


def test_worker_decodes_the_request_into_typed_objects() -> None:
    """The request crosses the process boundary as JSON and comes back as the same typed objects."""
    from harness.contract import TrialRequest

    spec = make(dataset="mnist1d", train=TrainSpec(steps=10, target_accuracy=0.5))
    req = TrialRequest(spec=spec, cpus=[1], dataset_path="/x.npz", fault="crash", parent_pid=7)
    again = TrialRequest.from_json(req.to_json())
    assert again == req and isinstance(again.spec.train, TrainSpec) and again.spec.trial_key == spec.trial_key
    with pytest.raises(ContractError, match="fault"):
        TrialRequest.from_dict(req.to_dict() | {"fault": "explode"})


def test_target_accuracy_is_optional_and_part_of_the_key() -> None:
    assert TrainSpec().target_accuracy is None
    assert TrainSpec(target_accuracy=1.0).target_accuracy == 1.0
    with_target = make(dataset="mnist1d", train=TrainSpec(steps=10, target_accuracy=0.5))
    without = make(dataset="mnist1d", train=TrainSpec(steps=10))
    assert with_target.trial_key != without.trial_key


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
    legacy = r.to_dict()
    del legacy["history_steps"]  # journals written before history_steps existed still load
    assert TrialResult.from_dict(legacy).history_steps == {}


def test_a_task_changes_the_key_and_the_name_only_when_set() -> None:
    plain = make(dataset="mnist1d", train=TrainSpec(steps=10))
    task = TrainSpec(
        steps=10, train_fraction=0.0625, classes=(5, 6, 7, 8, 9), pretrain_classes=(0, 1, 2, 3, 4), pretrain_steps=5
    )
    with pytest.raises(ContractError, match="give both"):
        TrainSpec(steps=10, pretrain_classes=(0, 1))
    with pytest.raises(ContractError, match="distinct"):
        TrainSpec(classes=(1, 1))
    with pytest.raises(ContractError, match="train_fraction"):
        TrainSpec(train_fraction=0.0)
    spec = make(dataset="mnist1d", train=task)
    assert spec.name == "mlp_shallow-torch-train-mnist1d-pre0-4-c5-9-frac0.0625"
    assert spec.trial_key != plain.trial_key
    assert TrialSpec.from_json(spec.to_json()) == spec  # tuples survive the JSON round trip
    assert make(dataset="mnist1d", train=TrainSpec(steps=10, saliency=True)).trial_key != plain.trial_key
    assert make(dataset="mnist1d", train=TrainSpec(steps=10, classes=(0, 3))).name.endswith("-c0.3")
