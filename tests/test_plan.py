"""Unit tests for harness.plan: matrix expansion, overrides, skipped cells. Pure: no Ray, no frameworks."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import pytest

from adapters import FRAMEWORKS
from harness import plan
from harness.contract import COMPILE, DEVICES, MODES, MeasureSpec, TrainSpec
from harness.plan import Overrides
from harness.spec import SpecError, SuiteSpec, load_suite
from workloads.architectures import ARCHITECTURES

SUITE: dict[str, Any] = {
    "name": "unit",
    "frameworks": ["torch", "jax"],
    "architectures": ["mlp_shallow", "mlp_deep", "cnn1d"],
    "modes": ["train", "infer"],
    "devices": ["cpu", "gpu"],
    "batch_sizes": [8, 32, 128],
    "datasets": ["mnist1d"],
    "seed": 5,
    "timeout_s": 90.0,
    "train": {"optimizer": "adam", "learning_rate": 0.01, "steps": 100},
    "measure": {"min_steps": 7, "window_steps": 7},
}


def suite(**changes: Any) -> SuiteSpec:
    return SuiteSpec.model_validate(SUITE | changes)


def cells(p: plan.Plan) -> list[Any]:
    return p.trials + [spec for spec, _ in p.skipped]


AXES = ("architectures", "frameworks", "modes", "devices", "batch_sizes")


def test_matrix_size_is_the_product_of_the_axes() -> None:
    s = suite()
    p = plan.expand(s, Overrides(), default_threads=2)
    expected = math.prod(len(getattr(s, axis)) for axis in AXES)
    assert expected == 3 * 2 * 2 * 2 * 3
    assert len(cells(p)) == expected
    assert not p.skipped  # torch and jax both support cpu and gpu in float32
    combos = {(t.architecture, t.framework, t.mode, t.device, t.batch_size) for t in p.trials}
    assert len(combos) == expected


def test_smoke_suite_expands_to_its_product() -> None:
    s = load_suite("smoke")
    p = plan.expand(s, Overrides(), default_threads=1)
    assert len(cells(p)) == math.prod(len(getattr(s, axis)) for axis in AXES)


def test_cells_carry_the_suite_settings() -> None:
    s = suite()
    p = plan.expand(s, Overrides(), default_threads=3)
    for t in p.trials:
        assert t.threads == 3
        assert t.seed == 5
        assert t.timeout_s == 90.0
        assert t.compile == "auto"
        assert t.precision == "float32"
        assert t.measure == s.measure == MeasureSpec(min_steps=7, window_steps=7)


@pytest.mark.parametrize(
    ("overrides", "axis", "expected"),
    [
        (Overrides(frameworks=["jax"]), "framework", {"jax"}),
        (Overrides(architectures=["cnn1d", "mlp_deep"]), "architecture", {"cnn1d", "mlp_deep"}),
        (Overrides(modes=["infer"]), "mode", {"infer"}),
        (Overrides(devices=["cpu"]), "device", {"cpu"}),
        (Overrides(batch_sizes=[1, 3, 5, 7]), "batch_size", {1, 3, 5, 7}),
    ],
    ids=["frameworks", "architectures", "modes", "devices", "batch_sizes"],
)
def test_overrides_replace_suite_axes(overrides: Overrides, axis: str, expected: set[Any]) -> None:
    s = suite()
    p = plan.expand(s, overrides, default_threads=2)
    assert {getattr(t, axis) for t in cells(p)} == expected
    others = math.prod(len(getattr(s, a)) for a in AXES if a != axis + "s")
    assert len(cells(p)) == others * len(expected)


def test_overrides_can_name_values_outside_the_suite() -> None:
    s = suite(frameworks=["torch"], batch_sizes=[64])
    p = plan.expand(s, Overrides(frameworks=["jax"], batch_sizes=[2]), default_threads=1)
    assert {t.framework for t in p.trials} == {"jax"}
    assert {t.batch_size for t in p.trials} == {2}


def test_scalar_overrides_replace_suite_settings() -> None:
    p = plan.expand(suite(), Overrides(compile="off", threads=7, timeout_s=12.0), default_threads=2)
    assert p.trials
    for t in p.trials:
        assert t.compile == "off"
        assert t.threads == 7
        assert t.timeout_s == 12.0


def test_infer_cells_use_synthetic_data_and_train_cells_the_suite_dataset() -> None:
    s = suite()
    p = plan.expand(s, Overrides(), default_threads=2)
    train = [t for t in p.trials if t.mode == "train"]
    infer = [t for t in p.trials if t.mode == "infer"]
    assert train and infer
    assert {t.dataset for t in train} == {"mnist1d"}
    assert {t.dataset for t in infer} == {"synthetic"}
    assert all(t.train == s.train for t in train)
    assert all(t.train == TrainSpec() for t in infer)
    assert all(t.trains_to_accuracy for t in train)
    assert not any(t.trains_to_accuracy for t in infer)


def test_synthetic_suite_trains_on_synthetic_data() -> None:
    p = plan.expand(suite(datasets=["synthetic"]), Overrides(modes=["train"]), default_threads=2)
    assert {t.dataset for t in p.trials} == {"synthetic"}
    assert not any(t.trains_to_accuracy for t in p.trials)


@pytest.mark.parametrize(
    ("overrides", "kind", "valid"),
    [
        (Overrides(frameworks=["pytorch"]), "framework", list(FRAMEWORKS)),
        (Overrides(frameworks=["jax", "mxnet2"]), "framework", list(FRAMEWORKS)),
        (Overrides(architectures=["resnet9000"]), "architecture", list(ARCHITECTURES)),
        (Overrides(modes=["predict"]), "mode", MODES),
        (Overrides(devices=["npu"]), "device", DEVICES),
        (Overrides(compile="max"), "compile mode", COMPILE),
    ],
    ids=["framework", "framework-second", "architecture", "mode", "device", "compile"],
)
def test_unknown_override_names_are_rejected_with_choices(overrides: Overrides, kind: str, valid: Any) -> None:
    pattern = re.escape(f"unknown {kind} ") + r"'\w+'; " + re.escape(f"choose from {', '.join(valid)}")
    with pytest.raises(SpecError, match=pattern):
        plan.expand(suite(), overrides, default_threads=2)
    with pytest.raises(SpecError, match=pattern):
        plan.validate(overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (Overrides(batch_sizes=[0]), "batch size must be a positive integer, got 0"),
        (Overrides(batch_sizes=[16, -4]), "batch size must be a positive integer, got -4"),
        (Overrides(threads=0), "threads must be a positive integer"),
        (Overrides(timeout_s=0.0), "timeout must be positive"),
        (Overrides(timeout_s=-5.0), "timeout must be positive"),
    ],
    ids=["bs0", "bs-neg", "threads0", "timeout0", "timeout-neg"],
)
def test_non_positive_overrides_are_rejected(overrides: Overrides, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        plan.expand(suite(), overrides, default_threads=2)


def test_bad_default_threads_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="threads"):
        plan.expand(suite(), Overrides(), default_threads=0)


def test_unavailable_framework_cells_are_skipped_with_the_reason() -> None:
    reason = "jax is not installed in .venvs/jax; run make setup"
    p = plan.expand(suite(), Overrides(), default_threads=2, unavailable={"jax": reason})
    assert p.trials and p.skipped
    assert {t.framework for t in p.trials} == {"torch"}
    assert {s.framework for s, _ in p.skipped} == {"jax"}
    assert {r for _, r in p.skipped} == {reason}
    assert len(p.skipped) == len(p.trials)  # the two frameworks have the same number of cells


def test_all_frameworks_unavailable_leaves_no_trials() -> None:
    p = plan.expand(suite(), Overrides(), default_threads=2, unavailable=dict.fromkeys(FRAMEWORKS, "missing"))
    assert p.trials == []
    assert len(p.skipped) == math.prod(len(getattr(suite(), axis)) for axis in AXES)


def test_unsupported_device_is_skipped_with_a_reason() -> None:
    assert "tpu" not in FRAMEWORKS["torch"].devices
    assert "tpu" in FRAMEWORKS["jax"].devices
    p = plan.expand(suite(), Overrides(devices=["tpu"]), default_threads=2)
    assert p.skipped
    assert {s.framework for s, _ in p.skipped} == {"torch"}
    assert all("tpu" in reason for _, reason in p.skipped)
    assert {t.framework for t in p.trials} == {"jax"}
    assert all(t.device == "tpu" for t in p.trials)


def test_a_mode_a_framework_lacks_is_skipped_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    infer_only = dataclasses.replace(FRAMEWORKS["jax"], modes=("infer",))
    monkeypatch.setitem(FRAMEWORKS, "jax", infer_only)
    p = plan.expand(suite(devices=["cpu"]), Overrides(), default_threads=2)
    assert {(s.framework, s.mode) for s, _ in p.skipped} == {("jax", "train")}
    assert all("does not support mode 'train'" in reason for _, reason in p.skipped)
    assert {(t.framework, t.mode) for t in p.trials} == {("torch", "train"), ("torch", "infer"), ("jax", "infer")}


def test_unavailable_reason_wins_over_capability_reason() -> None:
    p = plan.expand(suite(), Overrides(devices=["tpu"]), default_threads=2, unavailable={"torch": "not installed"})
    assert {r for s, r in p.skipped if s.framework == "torch"} == {"not installed"}


@pytest.mark.parametrize(
    "overrides",
    [Overrides(), Overrides(devices=["cpu", "gpu", "tpu"]), Overrides(batch_sizes=[1, 2, 4, 8, 16])],
    ids=["suite", "all-devices", "batch-sizes"],
)
def test_trial_keys_in_one_plan_are_unique(overrides: Overrides) -> None:
    p = plan.expand(suite(), overrides, default_threads=2)
    keys = [t.trial_key for t in cells(p)]
    assert len(keys) > 1
    assert len(set(keys)) == len(keys)


def test_expansion_is_deterministic() -> None:
    a = plan.expand(suite(), Overrides(), default_threads=2)
    b = plan.expand(suite(), Overrides(), default_threads=2)
    assert [t.trial_key for t in a.trials] == [t.trial_key for t in b.trials]


def test_repeated_override_values_do_not_duplicate_cells() -> None:
    p = plan.expand(suite(), Overrides(frameworks=["torch", "torch"], batch_sizes=[8, 8]), default_threads=2)
    counts = Counter(t.trial_key for t in cells(p))
    assert max(counts.values()) == 1


# --- datasets axis and architecture x dataset compatibility --------------------------------------


def test_train_cells_run_on_every_dataset_infer_cells_once() -> None:
    s = suite(datasets=["mnist1d", "mnist1d_shuffled", "synthetic"], devices=["cpu"], batch_sizes=[32])
    p = plan.expand(s, Overrides(), default_threads=2)
    assert not p.skipped  # the MLPs and cnn1d take 1x40 samples
    train = Counter((t.architecture, t.framework) for t in p.trials if t.mode == "train")
    infer = Counter((t.architecture, t.framework) for t in p.trials if t.mode == "infer")
    assert set(train.values()) == {3} and set(infer.values()) == {1}
    assert {t.dataset for t in p.trials if t.mode == "infer"} == {"synthetic"}
    names = [t.name for t in p.trials]
    assert len(set(names)) == len(names)  # unique names: the dataset is in the name of real-data cells
    assert "cnn1d-jax-train-mnist1d_shuffled" in names and "cnn1d-jax-train" in names and "cnn1d-jax-infer" in names


def test_each_train_cell_carries_its_datasets_target() -> None:
    s = suite(datasets=["mnist1d", "mnist1d_shuffled", "synthetic"], targets={"mnist1d": 0.7})
    p = plan.expand(s, Overrides(), default_threads=2)
    targets = {(t.mode, t.dataset): t.train.target_accuracy for t in p.trials}
    assert targets == {
        ("train", "mnist1d"): 0.7,
        ("train", "mnist1d_shuffled"): None,
        ("train", "synthetic"): None,
        ("infer", "synthetic"): None,
    }
    trained = [t for t in p.trials if t.dataset == "mnist1d"]
    assert all(t.train.replace(target_accuracy=None) == s.train for t in trained)


def test_incompatible_architecture_dataset_pairs_are_skipped_with_the_reason() -> None:
    s = suite(architectures=["mlp_shallow", "lenet5", "gru"], datasets=["mnist1d", "digits32"], devices=["cpu"])
    p = plan.expand(s, Overrides(modes=["train"], batch_sizes=[32]), default_threads=2)
    run = {(t.architecture, t.dataset) for t in p.trials}
    assert run == {("mlp_shallow", "mnist1d"), ("mlp_shallow", "digits32"), ("gru", "mnist1d"), ("lenet5", "digits32")}
    skipped = {(t.architecture, t.dataset): reason for t, reason in p.skipped}
    assert set(skipped) == {("lenet5", "mnist1d"), ("gru", "digits32")}
    assert skipped[("lenet5", "mnist1d")].startswith("mnist1d: lenet5 cannot take samples of shape (1, 40)")
    assert skipped[("gru", "digits32")].startswith("digits32: gru cannot take samples of shape (1, 32, 32)")
    assert len(p.skipped) == 2 * 2  # both frameworks


def test_token_and_float_models_are_not_mixed() -> None:
    assert plan.data_problem("transformer", "tokens", 32) is None
    assert plan.data_problem("lstm", "tokens", 32) is None
    assert (
        plan.data_problem("transformer", "mnist1d", 32)
        == "mnist1d: transformer takes int32 inputs, the dataset has float32"
    )
    assert (
        plan.data_problem("mlp_shallow", "tokens", 32)
        == "tokens: mlp_shallow takes float32 inputs, the dataset has int32"
    )
    assert plan.data_problem("lenet5", "synthetic", 32) is None  # synthetic data comes in the architecture's shape
    assert "exceeds the 1438 training samples of digits" in str(plan.data_problem("logreg", "digits", 5000))


def test_resnet20_takes_single_channel_digits32() -> None:
    assert plan.data_problem("resnet20", "digits32", 32) is None  # the channel is repeated to 3 by the worker


def test_all_impossible_cells_is_a_spec_error() -> None:
    s = suite(architectures=["lenet5", "resnet20"], datasets=["mnist1d"])
    with pytest.raises(
        SpecError, match=r"no selected architecture can train on the selected datasets: mnist1d: lenet5"
    ):
        plan.expand(s, Overrides(modes=["train"]), default_threads=2)
    p = plan.expand(s, Overrides(), default_threads=2)  # infer cells are possible: not an error
    assert {t.mode for t in p.trials} == {"infer"} and {t.mode for t, _ in p.skipped} == {"train"}


def test_dataset_override_replaces_the_suite_datasets() -> None:
    p = plan.expand(suite(), Overrides(datasets=["digits", "digits"], modes=["train"]), default_threads=2)
    assert {t.dataset for t in p.trials} == {"digits"}
    assert {t.architecture for t, _ in p.skipped} == {"cnn1d"}  # a 1-D convolution cannot take 8x8 images


def test_unknown_dataset_override_is_rejected_with_choices() -> None:
    from workloads.datasets import DATASETS

    message = "unknown dataset 'cifar10'; choose from " + ", ".join(DATASETS)
    with pytest.raises(SpecError, match=re.escape(message)):
        plan.validate(Overrides(datasets=["mnist1d", "cifar10"]))


def test_suite_threads_is_the_default_and_the_override_wins() -> None:
    assert {t.threads for t in plan.expand(suite(threads=1), Overrides(), default_threads=2).trials} == {1}
    assert {t.threads for t in plan.expand(suite(threads=1), Overrides(threads=3), default_threads=2).trials} == {3}


def test_accuracy_suite_plan() -> None:
    s = load_suite("accuracy")
    p = plan.expand(s, Overrides(), default_threads=2)
    pairs = {(t.architecture, t.dataset) for t in p.trials}
    for arch in ("logreg", "mlp_shallow", "cnn1d", "gru"):
        assert {(arch, "mnist1d"), (arch, "mnist1d_shuffled")} <= pairs
    assert {("mlp_shallow", "digits"), ("logreg", "digits"), ("lenet5", "digits32")} <= pairs
    assert all(t.trains_to_accuracy and t.train.target_accuracy == s.targets[t.dataset] for t in p.trials)
    assert {t.framework for t in p.trials} == set(FRAMEWORKS)
    assert all(plan.data_problem(t.architecture, t.dataset, t.batch_size) for t, _ in p.skipped)


def test_throughput_suite_plan() -> None:
    s = load_suite("throughput")
    p = plan.expand(s, Overrides(), default_threads=2)
    assert not p.skipped
    assert len(p.trials) == len(ARCHITECTURES) * len(FRAMEWORKS) * 2 * 2
    assert {t.dataset for t in p.trials} == {"synthetic"}
    assert not any(t.trains_to_accuracy for t in p.trials)
