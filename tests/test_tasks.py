"""The training task (TrainSpec: classes, train_fraction, pretraining, saliency) on the worker side,
and the data set's informative positions (``Dataset.val_mask``: MNIST-1D's replica generator).

Frameworks importable here run in this process on small hand-built data sets; MXNet (its own venv)
runs this same file under its interpreter (``-k mxnet``), from the last test. Tests that need the
driver's packages (mnist1d) skip there.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from adapters import FRAMEWORKS, load_adapter
from adapters.base import Adapter, BuildOptions
from harness import metrics as M
from harness.contract import TrainSpec, TrialSpec
from harness.envs import interpreter
from harness.worker.saliency import saliency
from harness.worker.scenarios import Outcome, TrialData, output_layer_variables, train_to_accuracy
from harness.worker.trial import prepare, task_data
from workloads import datasets
from workloads.architectures import get

FWS = [fw for fw, info in FRAMEWORKS.items() if importlib.util.find_spec(info.import_name)]
ELSEWHERE = [fw for fw in FRAMEWORKS if fw not in FWS and interpreter(fw) != sys.executable]
REPO = Path(__file__).resolve().parent.parent
LENGTH, CLASSES = 40, 10  # the shape of MNIST-1D, whose name the hand-built data sets borrow
WINDOW = slice(10, 20)  # the informative positions of the hand-built val_mask


def fake(counts: list[int] | None = None, n_val: int = 100, seed: int = 0) -> datasets.Dataset:
    """A small learnable MNIST-1D-shaped data set: class means plus noise; ``counts`` per class (train)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((CLASSES, 1, LENGTH))
    counts = counts or [30] * CLASSES
    y_train = rng.permutation(np.repeat(np.arange(CLASSES), counts))
    y_val = rng.permutation(np.arange(n_val) % CLASSES)

    def x(y: np.ndarray) -> np.ndarray:
        out: np.ndarray = (means[y] + 0.7 * rng.standard_normal((len(y), 1, LENGTH))).astype(np.float32)
        return out

    mask = np.zeros((n_val, LENGTH), np.float32)
    mask[:, WINDOW] = 1.0
    return datasets.Dataset("mnist1d", x(y_train), y_train.astype(np.int64), x(y_val), y_val.astype(np.int64), mask)


def saved(tmp_path: Path, data: datasets.Dataset) -> str:
    path = tmp_path / "data.npz"
    datasets.save(path, data.arrays())
    return str(path)


def spec(fw: str, arch: str = "logreg", batch_size: int = 20, **train: Any) -> TrialSpec:
    train = {"optimizer": "adam", "learning_rate": 0.01, "steps": 30, "eval_every": 10} | train
    return TrialSpec(
        architecture=arch, framework=fw, mode="train", batch_size=batch_size, threads=1, dataset="mnist1d",
        train=TrainSpec.from_dict(train),
    )  # fmt: skip


def build(trial: TrialSpec, data: TrialData) -> Adapter:
    options = BuildOptions.for_training(trial.train, compile=trial.compile, threads=trial.threads)
    return load_adapter(trial.framework)(data.arch, data.params, options)


def run(trial: TrialSpec, path: str) -> Outcome:
    """The trial's ``train_to_accuracy`` as the worker runs it: ``prepare`` from the cached file, then
    the adapter, in this process."""
    data = prepare(trial, path, 1.0)
    return train_to_accuracy(build(trial, data), trial, data)


# --- the task's data (numpy only) -----------------------------------------------------------------


def test_classes_are_selected_and_relabelled_in_the_listed_order() -> None:
    data = fake()
    task, pre = task_data(data, TrainSpec(classes=(7, 2)), seed=0, num_classes=CLASSES)
    assert pre is None
    for split in ("train", "val"):
        x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
        keep = (y == 7) | (y == 2)
        np.testing.assert_array_equal(getattr(task, f"x_{split}"), x[keep])  # in their order
        np.testing.assert_array_equal(getattr(task, f"y_{split}"), np.where(y[keep] == 7, 0, 1))
        assert getattr(task, f"y_{split}").dtype == np.int64
    assert data.val_mask is not None and task.val_mask is not None
    np.testing.assert_array_equal(task.val_mask, data.val_mask[(data.y_val == 7) | (data.y_val == 2)])
    whole, _ = task_data(data, TrainSpec(), seed=0, num_classes=CLASSES)
    assert whole is data


def test_pretraining_data_is_the_whole_of_its_classes() -> None:
    data = fake()
    cfg = TrainSpec(classes=(5, 6), train_fraction=0.5, pretrain_classes=(0, 1, 2), pretrain_steps=3)
    task, pre = task_data(data, cfg, seed=0, num_classes=CLASSES)
    assert pre is not None
    assert len(pre.y_train) == 90 and sorted(set(pre.y_train.tolist())) == [0, 1, 2]
    assert len(pre.y_val) == int(np.isin(data.y_val, [0, 1, 2]).sum())
    assert len(task.y_train) == 30 and len(task.y_val) == 20  # the fraction is the task's only


@pytest.mark.parametrize("field", ["classes", "pretrain_classes"])
def test_a_class_the_data_set_lacks_is_a_clear_error(field: str) -> None:
    cfg = TrainSpec.from_dict({field: (3, 10)} | ({"pretrain_steps": 5} if field == "pretrain_classes" else {}))
    with pytest.raises(ValueError, match=rf"^{field}: class 10 is not a class of mnist1d: it has 10 classes, 0\.\.9$"):
        task_data(fake(), cfg, seed=0, num_classes=CLASSES)


def test_train_fraction_is_stratified_ordered_and_seeded() -> None:
    counts = [40, 25, 10, 3, 1, 17, 30, 8, 50, 16]
    data = fake(counts)
    cfg = TrainSpec(train_fraction=0.1)
    task, _ = task_data(data, cfg, seed=0, num_classes=CLASSES)
    expected = [max(1, round(0.1 * c)) for c in counts]  # [4, 2, 1, 1, 1, 2, 3, 1, 5, 2]: round half to even
    assert np.bincount(task.y_train, minlength=CLASSES).tolist() == expected
    kept = [int(np.flatnonzero((data.x_train == row).all(axis=(1, 2)))[0]) for row in task.x_train]
    assert kept == sorted(kept)  # a subsequence of the training split, in its order
    np.testing.assert_array_equal(task.y_train, data.y_train[kept])
    np.testing.assert_array_equal(task.x_val, data.x_val)  # the held-out split stays whole
    again, _ = task_data(data, cfg, seed=0, num_classes=CLASSES)
    np.testing.assert_array_equal(again.x_train, task.x_train)
    other, _ = task_data(data, cfg, seed=1, num_classes=CLASSES)
    assert not np.array_equal(other.x_train, task.x_train)
    np.testing.assert_array_equal(np.bincount(other.y_train, minlength=CLASSES), expected)
    # its own stream: default_rng([seed, 1]), not the data order's default_rng(seed)
    picked = datasets.stratified_subset(data.y_train, 0.1, np.random.default_rng([0, 1]))
    np.testing.assert_array_equal(task.x_train, data.x_train[picked])


@pytest.mark.skipif("mxnet" not in ELSEWHERE, reason="no separate MXNet interpreter")
def test_train_fraction_draws_the_same_subset_under_numpy_1_23() -> None:
    y = np.repeat(np.arange(CLASSES), [40, 25, 10, 3, 1, 17, 30, 8, 50, 16])
    code = (
        "import json, numpy as np\nfrom workloads import datasets\n"
        f"y = np.array({y.tolist()})\n"
        "print(json.dumps(datasets.stratified_subset(y, 0.3, np.random.default_rng([4, 1])).tolist()))"
    )
    proc = subprocess.run([interpreter("mxnet"), "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    here = datasets.stratified_subset(y, 0.3, np.random.default_rng([4, 1])).tolist()
    assert json.loads(proc.stdout) == here


def test_output_layer_is_the_last_top_level_layer_with_parameters() -> None:
    assert output_layer_variables(get("logreg")) == ["1.kernel", "1.bias"]  # every variable
    assert output_layer_variables(get("mlp_shallow")) == ["2.kernel", "2.bias"]
    assert output_layer_variables(get("resnet20")) == ["12.kernel", "12.bias"]  # after its global pooling


# --- training on the task, in each framework --------------------------------------------------------


def test_train_samples_and_the_batch_error_follow_the_fraction(tmp_path: Path) -> None:
    path, fw = saved(tmp_path, fake()), FWS[0]  # the task's data is numpy's: one framework shows it
    whole = run(spec(fw, steps=2, eval_every=0), path)
    assert whole.metrics[M.TRAIN_SAMPLES] == 300
    part = run(spec(fw, batch_size=5, steps=2, eval_every=0, train_fraction=0.1, classes=(4, 5, 6)), path)
    assert part.metrics[M.TRAIN_SAMPLES] == 9  # 3 of each of the 3 classes
    with pytest.raises(ValueError, match=r"batch size 20 exceeds the 9 training samples of mnist1d \(classes"):
        run(spec(fw, steps=2, train_fraction=0.1, classes=(4, 5, 6)), path)


@pytest.mark.parametrize("fw", FWS)
def test_pretrained_logreg_trains_exactly_as_from_scratch(fw: str, tmp_path: Path) -> None:
    """The reset output layer is the whole logreg, and the optimiser (Adam: moments and step count)
    starts afresh: the same losses and evaluations as without pretraining, bit for bit."""
    path = saved(tmp_path, fake())
    task: dict[str, Any] = {"classes": (5, 6, 7, 8, 9)}
    scratch = run(spec(fw, **task), path)
    pretrained = run(spec(fw, pretrain_classes=(0, 1, 2, 3, 4), pretrain_steps=20, **task), path)
    assert pretrained.history == scratch.history
    assert pretrained.history_steps == scratch.history_steps == {k: [10, 20, 30] for k in M.EVAL_SERIES}
    assert pretrained.metrics[M.VAL_ACCURACY] == scratch.metrics[M.VAL_ACCURACY] > 0.4  # 5 classes: chance 0.2
    assert pretrained.metrics[M.PRETRAIN_VAL_ACCURACY] > 0.4
    assert M.PRETRAIN_VAL_ACCURACY not in scratch.metrics
    assert pretrained.metrics[M.TRAIN_SAMPLES] == scratch.metrics[M.TRAIN_SAMPLES] == 150


@pytest.mark.parametrize("fw", FWS)
def test_pretrained_mlp_keeps_its_hidden_layer(fw: str, tmp_path: Path) -> None:
    path = saved(tmp_path, fake())
    task: dict[str, Any] = {"classes": (5, 6, 7, 8, 9)}
    scratch = run(spec(fw, "mlp_shallow", **task), path)
    pre: dict[str, Any] = {"pretrain_classes": (0, 1, 2, 3, 4), "pretrain_steps": 20}
    pretrained = run(spec(fw, "mlp_shallow", **pre, **task), path)
    assert pretrained.history[M.LOSS] != scratch.history[M.LOSS]
    assert pretrained.metrics[M.PRETRAIN_VAL_ACCURACY] > 0.4  # 5 classes: chance 0.2
    # the same batches (the task's data order), other hidden weights: the pretrained ones
    assert len(pretrained.history[M.LOSS]) == len(scratch.history[M.LOSS]) == 30


def test_pretraining_is_neither_timed_nor_in_the_series(tmp_path: Path) -> None:
    path = saved(tmp_path, fake())
    trial = spec(FWS[0], steps=2, eval_every=0, pretrain_classes=(0, 1), pretrain_steps=1000)
    t0 = time.perf_counter()
    out = run(trial, path)
    wall = time.perf_counter() - t0
    assert out.metrics[M.TRAIN_STEPS] == 2 and len(out.history[M.LOSS]) == 2
    assert out.metrics[M.TRAIN_TIME_S] < wall / 10  # 2 of 1002 steps


# --- saliency ---------------------------------------------------------------------------------------


def linear(fw: str, weights: np.ndarray) -> Adapter:
    """A logreg whose class-c logit is ``weights[:, c] . x`` (no bias)."""
    arch = get("logreg")
    params = {"1.kernel": weights.astype(np.float32), "1.bias": np.zeros(CLASSES, np.float32)}
    return load_adapter(fw)(arch, params, BuildOptions(threads=1, trainable=False))


@pytest.mark.parametrize("fw", FWS)
def test_saliency_of_a_linear_model_with_known_answers(fw: str) -> None:
    data = fake(n_val=60)
    assert data.val_mask is not None
    x, y, mask = data.x_val, data.y_val, data.val_mask
    on_mask = np.zeros((LENGTH, CLASSES))
    on_mask[WINDOW] = np.arange(1, CLASSES + 1)  # the true class's weight only on informative positions
    out = saliency(linear(fw, on_mask), x, y, mask)
    assert out[M.SALIENCY_AUC] == 1.0
    assert out[M.SALIENCY_MASS] == pytest.approx(1.0, abs=1e-6)
    assert out[M.SALIENCY_CHANCE_MASS] == 0.25  # 10 of 40 positions
    off_mask = np.roll(on_mask, 15, axis=0)  # the same weights, shifted off the informative positions
    out = saliency(linear(fw, off_mask), x, y, mask)
    assert out[M.SALIENCY_MASS] == pytest.approx(0.0, abs=1e-6)
    assert out[M.SALIENCY_AUC] == pytest.approx(1 / 3)  # 0 saliency, above none, tied with 20 of the 30 others
    uniform = saliency(linear(fw, np.ones((LENGTH, CLASSES))), x, y, mask)
    assert uniform[M.SALIENCY_AUC] == pytest.approx(0.5, abs=0.1)  # equal up to float32 rounding
    assert uniform[M.SALIENCY_MASS] == pytest.approx(0.25, abs=0.01)
    # the gradient's size, not only its ranks: |w_true| at every position, the true class's column;
    # 6 samples per inference call (480 rows), the last call padded
    ramp = np.stack([np.roll(np.linspace(-2.0, 2.0, LENGTH), 3 * c) for c in range(CLASSES)], axis=1)
    share = np.abs(ramp[WINDOW]).sum(axis=0) / np.abs(ramp).sum(axis=0)  # per class
    few = saliency(linear(fw, ramp), x, y, mask, samples=7, batch=480)
    assert few[M.SALIENCY_MASS] == pytest.approx(share[y[:7]].mean(), rel=1e-3)


def test_saliency_skips_samples_without_both_kinds_of_position() -> None:
    data = fake(n_val=10)
    assert data.val_mask is not None
    mask = data.val_mask.copy()
    mask[:4] = 1.0  # every position informative
    mask[4:8] = 0.3  # none (not above 0.5)
    out = saliency(linear(FWS[0], np.ones((LENGTH, CLASSES))), data.x_val, data.y_val, mask)
    assert out[M.SALIENCY_CHANCE_MASS] == 0.25  # from the last two samples only
    assert saliency(linear(FWS[0], np.ones((LENGTH, CLASSES))), data.x_val[:8], data.y_val[:8], mask[:8]) == {}


def test_saliency_after_training(tmp_path: Path) -> None:
    path, fw = saved(tmp_path, fake()), FWS[0]  # each framework's inference: the linear models above
    out = run(spec(fw, saliency=True, classes=(1, 2, 3)), path)
    assert 0 <= out.metrics[M.SALIENCY_AUC] <= 1 and 0 <= out.metrics[M.SALIENCY_MASS] <= 1
    assert out.metrics[M.SALIENCY_CHANCE_MASS] == 0.25
    d = fake()
    path = saved(tmp_path, datasets.Dataset("mnist1d", d.x_train, d.y_train, d.x_val, d.y_val))
    with pytest.raises(ValueError, match=r"saliency needs a data set whose generator knows the informative positions"):
        run(spec(fw, saliency=True), path)


# --- the data sets' masks and cache ------------------------------------------------------------------


def test_load_reads_the_val_mask_when_the_file_has_one(tmp_path: Path) -> None:
    data = fake()
    loaded = datasets.load("mnist1d", saved(tmp_path, data))
    assert loaded.val_mask is not None and data.val_mask is not None
    np.testing.assert_array_equal(loaded.val_mask, data.val_mask)
    bare = datasets.Dataset("mnist1d", data.x_train, data.y_train, data.x_val, data.y_val)
    assert "val_mask" not in bare.arrays()
    assert datasets.load("mnist1d", saved(tmp_path, bare)).val_mask is None


def test_caches_of_an_older_format_are_generated_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def generate() -> datasets.Dataset:
        calls.append(1)
        return fake()

    monkeypatch.setitem(datasets.GENERATORS, "tiny", (generate, "a tiny test set"))
    first = datasets.prepare("tiny", tmp_path)
    meta_path = tmp_path / "tiny.json"
    meta = json.loads(meta_path.read_text())
    assert meta["format"] == datasets.CACHE_FORMAT == 2 and "val_mask" in meta["shapes"]
    assert datasets.prepare("tiny", tmp_path) == first and calls == [1]  # current: kept
    for old in ({k: v for k, v in meta.items() if k != "format"}, meta | {"format": 1}):  # before formats; 1
        meta_path.write_text(json.dumps(old | {"sha256": "stale"}))
        assert datasets.prepare("tiny", tmp_path) == first  # generated again: the true hash
        assert json.loads(meta_path.read_text())["format"] == 2
    assert calls == [1, 1, 1]


@pytest.fixture(scope="module")
def mnist1d() -> datasets.Dataset:
    pytest.importorskip("mnist1d")
    from workloads.datasets import generators as gen

    return gen.mnist1d()


def test_mnist1d_replica_equals_the_package(mnist1d: datasets.Dataset) -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    from workloads.datasets import generators as gen

    package = make_dataset(get_dataset_args())
    replica = gen._mnist1d_raw()
    for ours, theirs in (("x", "x"), ("y", "y"), ("x_val", "x_test"), ("y_val", "y_test")):
        np.testing.assert_array_equal(getattr(replica, ours), package[theirs])
    np.testing.assert_array_equal(mnist1d.x_val[:, 0], package["x_test"].astype(np.float32))


def test_mnist1d_mask_covers_five_to_twenty_positions(mnist1d: datasets.Dataset) -> None:
    mask = mnist1d.val_mask
    assert mask is not None and mask.shape == (1000, 40) and mask.dtype == np.float32
    assert mask.min() >= 0 and mask.max() <= 1
    informative = (mask > 0.5).sum(axis=1)
    assert informative.min() >= 5 and informative.max() <= 20
    assert "val_mask" in mnist1d.arrays()


def test_mnist1d_mask_marks_the_template_exactly() -> None:
    """Without noise, a sample outside its template is only the shear (a line): the positions the mask
    leaves out fit a line to rounding, those it marks do not. A mask shifted by one position, or
    random, fails the first."""
    pytest.importorskip("mnist1d")
    from mnist1d.data import get_dataset_args

    from workloads.datasets import generators as gen

    args = SimpleNamespace(**get_dataset_args(as_dict=True) | {"num_samples": 200})
    args.corr_noise_scale = args.iid_noise_scale = 0.0
    d = gen.mnist1d_make_dataset(args)
    positions = np.arange(40)
    inside_residuals, shifted_fits = [], 0
    for x, mask in zip(d["x_test"], d["mask_test"], strict=True):
        outside = mask == 0
        assert outside.sum() >= 10
        line = np.polyfit(positions[outside], x[outside], 1)
        residual = np.abs(x - np.polyval(line, positions))
        assert residual[outside].max() < 1e-9
        shifted = np.roll(outside, 2)
        fit = np.polyfit(positions[shifted], x[shifted], 1)
        shifted_fits += np.abs(x - np.polyval(fit, positions))[shifted].max() < 1e-6
        inside_residuals.append(residual[mask > 0.5].mean())
    assert shifted_fits == 0  # the mask shifted by two positions: no sample's outside is a line
    assert np.mean(inside_residuals) > 0.1


def test_mnist1d_shuffled_mask_is_permuted_like_its_samples(mnist1d: datasets.Dataset) -> None:
    from workloads.datasets import generators as gen

    shuffled = gen.mnist1d_shuffled()
    assert shuffled.val_mask is not None and mnist1d.val_mask is not None
    np.testing.assert_array_equal(shuffled.val_mask, mnist1d.val_mask[..., gen.mnist1d_permutation()])


def test_digits_and_tokens_have_no_mask() -> None:
    pytest.importorskip("sklearn")
    from workloads.datasets import generators as gen

    assert gen.digits().val_mask is None and gen.tokens().val_mask is None


# --- MXNet: this file under its own interpreter -------------------------------------------------------


@pytest.mark.parametrize("fw", ELSEWHERE)
def test_tasks_in_framework_env(fw: str) -> None:
    proc = subprocess.run(
        [interpreter(fw), "-m", "pytest", __file__, "-q", "-p", "no:cacheprovider", "-k", f"{fw} and not env"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
