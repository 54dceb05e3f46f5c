"""Unit tests: spec validation, JSON round-trip, trial keys, suites, planning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from harness import plan
from harness.spec import MeasureSpec, SpecError, TrainSpec, TrialResult, TrialSpec, load_suite

BASE = {"architecture": "mlp_deep", "framework": "torch", "mode": "train", "batch_size": 64, "threads": 2}


def spec(**changes: object) -> TrialSpec:
    return TrialSpec.model_validate(BASE | changes)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("framework", "pytorch", "choose from torch, jax"),
        ("architecture", "vgg", "choose from mlp_shallow, mlp_deep, cnn_small"),
        ("dataset", "imagenet", "choose from synthetic, mnist1d"),
        ("precision", "float16", "choose from float32"),
        ("mode", "serve", "'train' or 'infer'"),
        ("batch_size", 0, "greater than 0"),
        ("threads", -1, "greater than 0"),
        ("unknown_field", 1, "Extra inputs are not permitted"),
    ],
)
def test_trial_spec_rejects_bad_values(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(**{field: value})


def test_json_round_trip() -> None:
    s = spec(train=TrainSpec(steps=10, optimizer="adam"), measure=MeasureSpec(min_steps=3))
    again = TrialSpec.model_validate_json(s.model_dump_json())
    assert again == s and again.trial_key == s.trial_key
    r = TrialResult(trial_key=s.trial_key, spec=s, status="ok", metrics={"a": 1.5}, samples={"w": [0.1, 0.2]})
    assert TrialResult.from_json(r.to_json()) == r


def test_trial_key_is_stable_and_order_independent() -> None:
    reordered = TrialSpec.model_validate(dict(reversed(list(BASE.items()))))
    assert spec().trial_key == reordered.trial_key == spec().trial_key
    assert len(spec().trial_key) == 16


@pytest.mark.parametrize(
    "change",
    [
        {"batch_size": 65},
        {"framework": "jax"},
        {"seed": 1},
        {"mode": "infer"},
        {"measure": MeasureSpec(min_steps=21)},
        {"train": TrainSpec(learning_rate=0.01)},
    ],
)
def test_trial_key_changes_with_any_field(change: dict[str, object]) -> None:
    assert spec(**change).trial_key != spec().trial_key


def test_load_suite_by_name_and_path(tmp_path: Path) -> None:
    smoke = load_suite("smoke")
    assert smoke.name == "smoke" and set(smoke.frameworks) == {"torch", "jax"}
    f = tmp_path / "mine.toml"
    f.write_text('frameworks = ["jax"]\narchitectures = ["cnn_small"]\nbatch_sizes = [8, 16]\n')
    mine = load_suite(str(f))
    assert mine.name == "mine" and mine.batch_sizes == [8, 16] and mine.modes == ["train", "infer"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'frameworks = ["pytorch"]\narchitectures = ["mlp_deep"]\nbatch_sizes = [1]',
            "frameworks: unknown framework .pytorch.; choose from torch, jax",
        ),
        ('frameworks = ["torch"]\narchitectures = ["mlp_deep"]\nbatch_sizes = [0]', "batch_sizes"),
        ('frameworks = ["torch"]\narchitectures = []\nbatch_sizes = [1]', "architectures is empty"),
        ('frameworks = ["torch"]\nbatch_sizes = [1]', "architectures: Field required"),
        ("frameworks = [", "not valid TOML"),
    ],
)
def test_bad_suite_files(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(SpecError, match=message):
        load_suite(str(f))


def test_unknown_suite_lists_choices() -> None:
    with pytest.raises(SpecError, match="unknown suite 'nope'; choose from smoke"):
        load_suite("nope")


def test_expand_is_the_product_of_axes() -> None:
    suite = load_suite("smoke")
    p = plan.expand(suite, plan.Overrides(batch_sizes=[8, 16]), default_threads=2)
    assert len(p.trials) == 3 * 2 * 2 * 2 and not p.skipped
    assert len({t.trial_key for t in p.trials}) == len(p.trials)
    assert {t.dataset for t in p.trials if t.mode == "infer"} == {"synthetic"}
    assert {t.dataset for t in p.trials if t.mode == "train"} == {"mnist1d"}
    assert {t.threads for t in p.trials} == {2}


def test_overrides_replace_axes() -> None:
    o = plan.Overrides(frameworks=["jax"], architectures=["cnn_small"], modes=["infer"], threads=1, compile="off")
    p = plan.expand(load_suite("smoke"), o, default_threads=2)
    assert [(t.framework, t.architecture, t.mode, t.threads, t.compile) for t in p.trials] == [
        ("jax", "cnn_small", "infer", 1, "off")
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (plan.Overrides(frameworks=["tf"]), "unknown framework 'tf'; choose from torch, jax"),
        (plan.Overrides(architectures=["x"]), "unknown architecture 'x'"),
        (plan.Overrides(modes=["eval"]), "unknown mode 'eval'; choose from train, infer"),
        (plan.Overrides(devices=["npu"]), "unknown device 'npu'; choose from cpu, gpu, tpu"),
        (plan.Overrides(batch_sizes=[0]), "batch size must be a positive integer"),
        (plan.Overrides(compile="max"), "unknown compile mode 'max'"),
        (plan.Overrides(threads=0), "threads must be a positive integer"),
    ],
)
def test_bad_overrides(overrides: plan.Overrides, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        plan.expand(load_suite("smoke"), overrides, default_threads=2)


def test_unsupported_cells_are_skipped_with_reason() -> None:
    o = plan.Overrides(devices=["cpu", "tpu"], architectures=["mlp_shallow"], modes=["infer"])
    p = plan.expand(load_suite("smoke"), o, default_threads=2, unavailable={"jax": "jax env broken"})
    assert [(t.framework, t.device) for t in p.trials] == [("torch", "cpu")]
    reasons = {(s.framework, s.device): r for s, r in p.skipped}
    assert "does not support device 'tpu'" in reasons[("torch", "tpu")]
    assert reasons[("jax", "cpu")] == reasons[("jax", "tpu")] == "jax env broken"


def test_dry_run_keys_are_json_stable() -> None:
    p = plan.expand(load_suite("smoke"), plan.Overrides(), default_threads=2)
    canon = [json.loads(t.canonical_json()) for t in p.trials]
    assert all(list(c) == sorted(c) for c in canon)
