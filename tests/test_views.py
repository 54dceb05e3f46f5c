"""What users look at, from batches built here: figures, the terminal table, the ETA, the MLflow
description and the HTML report (no Ray, no worker: the cells are made of result records)."""

from __future__ import annotations

import functools
import io
import re
from typing import Any

import numpy as np
import pytest
from matplotlib import image
from rich.console import Console

from harness import compare, document, figures, report
from harness import metrics as M
from harness.cells import Cell, cells
from harness.contract import TrainSpec, TrialResult, TrialSpec
from harness.stats import simulate

FRAMEWORKS = ("torch", "tensorflow", "jax", "mxnet")
LONGEST = ("mlp_residual", "transformer", "resnet20")  # the zoo's longest names


def _result(spec: TrialSpec, replica: int, step_s: float, rng: np.random.Generator, **extra: Any) -> TrialResult:
    windows = simulate(rng, step_s, 1, 20, 0.05, 0.03)[0]
    requests = rng.lognormal(np.log(step_s / 10), 0.2, 50)
    metrics = {
        M.THROUGHPUT: spec.global_batch / float(np.median(windows)),
        M.WINDOW_STEPS: 1.0,
        M.COMPILE_S: 0.5,
        M.PEAK_HOST_RSS_MB: 300 + 100 * FRAMEWORKS.index(spec.framework),
    }
    samples: dict[str, list[float]] = {
        M.TRAIN_WINDOW_S if spec.mode == "train" else M.OFFLINE_WINDOW_S: [float(w) for w in windows]
    }
    if spec.mode == "infer":
        samples[M.SINGLE_STREAM_REQUEST_S] = [float(r) for r in requests]
    history: dict[str, list[float]] = {}
    steps: dict[str, list[int]] = {}
    if spec.trains_to_accuracy:
        history[M.LOSS] = [2.3 * 0.97**i for i in range(60)]
        history[M.VAL_ACCURACY] = [0.3, 0.6, 0.8]
        steps[M.VAL_ACCURACY] = [20, 40, 60]
        metrics |= {M.VAL_ACCURACY: 0.8, M.TIME_TO_TARGET_S: 1.5 + FRAMEWORKS.index(spec.framework)}
    node = {"hostname": "node-a", "cpu_model": "CPU X", "cpu_logical": 2, "memory_total_mb": 24000, "gpu": []}
    return TrialResult(
        trial_key=spec.trial_key,
        spec=spec,
        status="ok",
        replica=replica,
        metrics=metrics,
        samples=samples,
        history=history,
        history_steps=steps,
        framework_version="1.0",
        environment={"hostname": "node-a", "cpu_model": "CPU X", "node": node},
        **extra,
    )


def _spec(arch: str, fw: str, mode: str, **changes: Any) -> TrialSpec:
    base: dict[str, Any] = {"architecture": arch, "framework": fw, "mode": mode, "batch_size": 64, "threads": 1}
    return TrialSpec.from_dict(base | changes)


@functools.cache
def batch(repeats: int = 3, seed: int = 0, workers: bool = True) -> list[Cell]:
    """Three architectures x four frameworks x train/infer, a train-to-accuracy cell per framework,
    2-worker cells, a crash and a skipped cell."""
    rng = np.random.default_rng(seed)
    results = []
    for arch in LONGEST:
        for fw in FRAMEWORKS:
            for mode in ("train", "infer"):
                spec = _spec(arch, fw, mode)
                results += [_result(spec, i, 0.01 * (1 + LONGEST.index(arch)), rng) for i in range(repeats)]
    for fw in FRAMEWORKS[:3]:
        spec = _spec("mlp_shallow", fw, "train", dataset="mnist1d", train=TrainSpec(steps=60, target_accuracy=0.7))
        results += [_result(spec, i, 0.002, rng) for i in range(repeats)]
        if workers:
            multi = _spec("mlp_residual", fw, "train", workers=2)
            results += [_result(multi, i, 0.012, rng) for i in range(repeats)]
    crashed = _spec("transformer", "mxnet", "train", batch_size=512)
    why = "worker died: SIGSEGV (signal 11)"
    results.append(TrialResult(trial_key=crashed.trial_key, spec=crashed, status="crash", reason=why))
    skipped = _spec("transformer", "mxnet", "infer", batch_size=512)
    why = "no MXNet build for this"
    results.append(TrialResult(trial_key=skipped.trial_key, spec=skipped, status="unsupported", reason=why))
    return cells(results)


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(image.imread(io.BytesIO(png), format="png"))


def test_every_figure_is_drawn_and_not_blank() -> None:
    batch_cells = batch()
    ran = [c for c in batch_cells if c.status != "unsupported"]
    by_fw = compare.within_batch(ran, "framework", "torch", 0.05, "default", label="b")
    drawn = figures.figures(ran, by_fw)
    assert [f.name for f in drawn] == [
        "throughput", "latency", "curves", "memory", "time_to_target", "scaling", "verdicts"]  # fmt: skip
    for fig in drawn:
        pixels = _pixels(fig.png)
        assert pixels.shape[0] >= 200 and pixels.shape[1] >= 600, fig.name
        assert float(pixels[..., :3].std()) > 0.05, f"{fig.name} is blank"
        assert fig.svg.lstrip().startswith("<?xml") and "<svg" in fig.svg
        assert fig.caption and fig.title


def test_a_big_batch_is_drawn_for_its_first_groups_and_says_so() -> None:
    rng = np.random.default_rng(2)
    many = cells([_result(_spec("mlp_deep", "torch", "infer", batch_size=b), 0, 0.01, rng) for b in range(1, 50)])
    (drawn, *_) = figures.figures(many)
    assert drawn.name == "throughput" and "the first 40 of 49 groups" in drawn.caption
    assert _pixels(drawn.png).shape[0] < 2000


def test_figures_only_for_what_the_batch_has() -> None:
    rng = np.random.default_rng(1)
    infer_only = cells([_result(_spec("mlp_deep", fw, "infer"), 0, 0.01, rng) for fw in ("torch", "jax")])
    assert [f.name for f in figures.figures(infer_only)] == ["throughput", "latency", "memory"]
    assert figures.figures([]) == []


@pytest.mark.parametrize("repeats", [1, 3])
def test_the_default_table_fits_100_columns_and_cuts_no_name(repeats: int) -> None:
    batch_cells = batch(repeats)
    console = Console(width=200, record=True)  # as wide as a pipe: nothing wraps but what the table makes
    for part in report.tables(batch_cells, "batch 20261129-120000-abcdef (throughput)"):
        console.print(part)
    out = console.export_text()
    table = out.split("  transformer mxnet train bs512")[0]  # the reasons under the table are free text
    assert max(len(line) for line in table.splitlines()) <= 100, table
    for name in (*LONGEST, *FRAMEWORKS):
        assert re.search(rf"(^|\s){name}\s", table), name
    assert "crash" in table and "unstable" not in table.split("status")[0]
    assert "transformer mxnet train bs512 cpu: crash: worker died: SIGSEGV" in out  # the reason, under the table
    assert "[" in table if repeats > 1 else "(n=1)" in table


def test_wide_shows_every_column() -> None:
    console = Console(width=400, record=True)
    for part in report.tables(batch(), "wide", wide=True):
        console.print(part)
    out = console.export_text()
    for column in ("exec", "95% CI", "CV", "compile s", "% peak", "scaling eff", "to target s", "SIGSEGV"):
        assert column in out, column


def test_eta_follows_the_plan_and_the_finished_trials() -> None:
    now = [100.0]
    eta = report.Eta(clock=lambda: now[0])
    torch_spec, tf_spec = _spec("mlp_deep", "torch", "train"), _spec("mlp_deep", "tensorflow", "train")
    eta.add([torch_spec, torch_spec, tf_spec, tf_spec])
    assert eta.seconds() is None and eta.text() == "ETA after the first trial"
    now[0] = 110.0  # 10 s for a torch trial of 8 s wall: 1.25 s of batch per second of trial
    eta.done(TrialResult(trial_key=torch_spec.trial_key, spec=torch_spec, status="ok", wall_s=8.0))
    assert eta.seconds() == pytest.approx(1.25 * 3 * 8.0)  # no TF trial finished: the mean of all
    now[0] = 140.0
    eta.done(TrialResult(trial_key=tf_spec.trial_key, spec=tf_spec, status="ok", wall_s=24.0))
    assert eta.seconds() == pytest.approx(40 / 32 * (8.0 + 24.0))  # one of each left, at its own mean
    assert eta.text() == "ETA 40s"


def test_description_fits_mlflow_and_says_what_ran() -> None:
    batch_cells = batch()
    meta = {
        "suite": "throughput",
        "argv": ["/x/harness", "run", "throughput", "--repeats", "3", "--resume", "abc"],
        "order_seeds": [1234, 99],
        "git_commit": "abcdef123456",
        "created_at": 1_790_000_000,
        "repeats": 3,
    }
    writeup = document.Writeup("20261129-120000-abcdef", batch_cells, meta)
    text = writeup.markdown()
    assert len(text) <= document.DESCRIPTION_LIMIT
    assert "harness run throughput --repeats 3 --seed 1234" in text and "--resume" not in text
    assert "suite `throughput`" in text and "abcdef123456" in text
    assert "transformer-mxnet-infer" in text and "no MXNet build" in text  # skipped, with the reason
    assert "SIGSEGV" in text
    assert "Verdicts" in text and "against framework=torch" in text
    big = list(batch_cells) * 20  # hundreds of cells: the table is cut, the description still fits
    short = document.Writeup("b", big, meta).markdown()
    assert len(short) <= document.DESCRIPTION_LIMIT and "more rows in `report.html`" in short


def test_reproduce_without_argv_names_the_suite() -> None:
    assert document.reproduce({"suite": "smoke", "order_seeds": [7]}, "b") == "harness run smoke --seed 7"
    argv = ["harness", "run", "s.toml", "--seed", "3", "--framework", "torch,jax"]
    assert document.reproduce({"argv": argv, "order_seeds": [3]}, "b") == (
        "harness run s.toml --framework torch,jax --seed 3"
    )


def test_report_is_self_contained_with_one_row_per_cell() -> None:
    batch_cells = batch()
    base = batch(seed=5, workers=False)
    against = compare.between_batches(base, batch_cells, 0.05, "default", base_label="batch A", new_label="batch B")
    page = document.Writeup("B", batch_cells, {"suite": "throughput"}, against).html()
    assert "<script" not in page.lower() and "<link" not in page.lower()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing to fetch
    assert page.count("data-trial-key=") == len(batch_cells)
    assert page.count('src="data:image/png;base64,') == 7
    assert "Verdicts: batch B against batch A" in page and "Verdicts: other values of framework" in page
    assert "node-a" in page and "CPU X" in page  # the node's environment
    for reason in ("SIGSEGV", "no MXNet build"):
        assert reason in page


def test_report_command_bad_input_exits_2_and_a_journal_alone_is_enough(
    tmp_path: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness import cli, journal

    runs, uri = tmp_path / "runs", f"sqlite:///{tmp_path / 'mlflow.db'}"
    written = journal.Batch(runs, "b1")
    written.write_meta({"batch_id": "b1", "suite": "views", "argv": ["harness", "run", "views"], "order_seeds": [3]})
    for c in batch(1, seed=3, workers=False):
        for p in c.processes:
            written.append(p)
    common = ["--runs-dir", str(runs), "--tracking-uri", uri]
    assert cli.main(["report", "nope", *common]) == 2
    assert "no batch 'nope'" in capsys.readouterr().err
    assert cli.main(["report", "b1", "-o", str(tmp_path / "missing" / "r.html"), *common]) == 2
    assert "folder" in capsys.readouterr().err
    out = tmp_path / "r.html"
    assert cli.main(["report", "b1", "-o", str(out), *common]) == 0  # no MLflow run: the file alone
    assert out.read_text().count("data-trial-key=") == len(batch(1, seed=3, workers=False))
    assert "harness run views --seed 3" in out.read_text()
