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
from harness.cells import ONE_PROCESS, Cell, cells
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


def painted(pixels: np.ndarray, colour: str) -> int:
    """Pixels of ``colour`` (#rrggbb, within a little anti-aliasing): data, where axes and text are grey."""
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)]) / 255
    return int((np.abs(pixels[..., :3] - rgb).max(axis=-1) < 0.06).sum())


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
        colours = figures.VERDICT_COLORS.values() if fig.name == "verdicts" else figures.COLORS.values()
        assert max(painted(pixels, c) for c in colours) > 30, f"{fig.name}: no data drawn"  # not just axes
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
    unstable = sum(1 for c in batch_cells if c.status == "ok" and c.unstable and c.unstable != ONE_PROCESS)
    assert "crash" in table and table.count(" unstable") == unstable
    assert "transformer mxnet train bs512 cpu: crash: worker died: SIGSEGV" in out  # the reason, under the table
    assert "[" in table if repeats > 1 else "(n=1)" in table


def test_varied_setups_wrap_the_mode_column_not_the_numbers() -> None:
    rng = np.random.default_rng(6)
    results = []
    for fw in FRAMEWORKS:
        for data, workers, scaling in (("mnist1d_shuffled", 2, "strong"), ("synthetic", 1, "weak")):
            spec = _spec("mlp_residual", fw, "train", batch_size=128, dataset=data, workers=workers, scaling=scaling)
            results += [_result(spec, i, 0.02, rng) for i in range(3)]
        results += [_result(_spec("mlp_residual", fw, "infer", batch_size=1), i, 0.001, rng) for i in range(3)]
    console = Console(width=200, record=True)
    console.print(report.comparison_table(cells(results), "batch x", wide=False))
    out = console.export_text()
    assert max(len(line) for line in out.splitlines()) <= 100, out
    for word in ("mnist1d_shuffled", "w2-strong", "bs128", "tensorflow", "mlp_residual"):
        assert word in out, word
    assert "e+" not in out  # no exponent anywhere


def test_numbers_keep_their_digits_without_exponents() -> None:
    assert [report.compact(x) for x in (144, 12345, 995000, 999700, 0.0507)] == [
        "144",
        "12.3k",
        "995k",
        "1.00M",
        "0.0507",
    ]
    assert [report.compact(x, 2) for x in (144, 5200)] == ["144", "5.2k"]
    assert report.significant(1500) == "1500" and report.significant(0.99997) == "1.00"


def test_reasons_with_brackets_are_shown_as_written() -> None:
    spec = _spec("mlp_deep", "torch", "train")
    why = "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory [/tmp/x]"
    failed = cells([TrialResult(trial_key=spec.trial_key, spec=spec, status="oom", reason=why)])
    console = Console(width=400, record=True)
    for part in report.tables(failed, "t", wide=True) + report.tables(failed, "t"):
        console.print(part)
    assert console.export_text().count("[enforce fail at alloc_cpu.cpp:117]") == 2
    page = document.Writeup("b", failed, {}).html()
    assert "[enforce fail at alloc_cpu.cpp:117]" in page and "[/tmp/x]" in page


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
    assert "transformer mxnet infer bs512 cpu" in text and "no MXNet build" in text  # skipped, with the reason
    assert "SIGSEGV" in text
    assert "Verdicts" in text and "against framework=torch" in text


def test_a_big_batch_description_keeps_every_section_within_mlflow_s_limit() -> None:
    rng = np.random.default_rng(4)
    results = []  # 160 cells, 2 processes each (so every one is "unstable": fewer than 3), a failure per framework
    for fw in FRAMEWORKS:
        for b in range(1, 21):
            for mode in ("train", "infer"):
                spec = _spec("mlp_deep", fw, mode, batch_size=b)
                results += [_result(spec, i, 0.001 * b, rng) for i in range(2)]
        crashed = _spec("resnet20", fw, "train")
        results.append(TrialResult(trial_key=crashed.trial_key, spec=crashed, status="crash", reason="died"))
    text = document.Writeup("big", cells(results), {"suite": "big", "order_seeds": [1]}).markdown()
    assert len(text) <= document.DESCRIPTION_LIMIT
    sections = ("| architecture |", "**Verdicts, other values of framework", "**Not run, failed or unstable:**",
                "resnet20 jax train bs64 cpu`: crash: died", "**Reproduce:**", "harness run big --seed 1")  # fmt: skip
    for section in sections:
        assert section in text, section
    more = [int(n) for n in re.findall(r"… (\d+) more rows in `report.html`", text)]
    assert more and all(n > 0 for n in more)


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


def _served(fw: str, replica: int, rng: np.random.Generator, max_rate: float | None) -> TrialResult:
    spec = _spec("mlp_residual", fw, "serve", batch_size=32)
    latency = rng.lognormal(np.log(2e-3), 0.3, 400)
    metrics = {M.SERVER_P99_BOUND: 20.0, M.SERVER_RATE: 9000.0, M.COMPILE_S: 0.4, M.PEAK_HOST_RSS_MB: 400.0}
    metrics |= {key: float(np.percentile(latency, q)) * 1e3 for q, key in M.percentile_keys(M.SERVER_LATENCY).items()}
    if max_rate is not None:
        metrics |= {M.SERVER_MAX_RATE: max_rate, M.SERVER_MAX_RATE_LOWER_BOUND: 0.0}
    samples = {M.SERVER_REQUEST_S: latency.tolist()}
    history = {M.SERVER_PROBE_RATE: [20000.0, 10000.0], M.SERVER_PROBE_P99: [40.0, 10.0]}
    return TrialResult(
        trial_key=spec.trial_key, spec=spec, status="ok", replica=replica, metrics=metrics, samples=samples,
        history=history, history_steps={key: [0, 1] for key in history},
        environment={"hostname": "node-a", "node": {"hostname": "node-a", "gpu": []}},
    )  # fmt: skip


def test_serve_cells_show_their_max_rate_and_latencies_at_the_target_rate() -> None:
    rng = np.random.default_rng(8)
    results = [_served("torch", i, rng, 12345.0) for i in range(3)] + [_served("jax", 0, rng, None)]
    results += [_result(_spec("mlp_residual", fw, "infer", batch_size=32), 0, 0.01, rng) for fw in FRAMEWORKS]
    batch_cells = cells(results)
    console = Console(width=200, record=True)
    for wide in (False, True):
        for part in report.tables(batch_cells, "batch s", wide=wide):
            console.print(part)
    out = console.export_text()
    narrow = out.split("serve: samples/s is")[0]
    assert max(len(line) for line in narrow.splitlines()) <= 100, narrow
    torch_row = next(line for line in narrow.splitlines() if "torch" in line and "serve" in line)
    p50, p99 = (batch_cells[0].metrics[k] for k in (report.SERVER_P50, report.SERVER_P99))
    assert "12.3k max" in torch_row and f"{report.significant(p50)}/{report.significant(p99)}" in torch_row
    assert "none met" in next(line for line in narrow.splitlines() if "jax" in line and "serve" in line)
    assert "max 12,345 requests/s with p99 <= 20.0 ms" in report.result_line(results[0])
    assert [f.name for f in figures.figures(batch_cells)] == ["throughput", "latency", "memory"]  # serve: no crash
    (row, *_) = batch_cells[0].process_rows()  # MLflow's table of the cell's processes
    assert row[M.SERVER_MAX_RATE] == 12345.0 and row[report.SERVER_P99] == batch_cells[0].metrics[report.SERVER_P99]


def test_the_memory_figure_shows_nvml_s_figure_beside_the_framework_s() -> None:
    rng = np.random.default_rng(9)
    results = [_result(_spec("mlp_deep", fw, "infer", device="gpu"), 0, 0.01, rng) for fw in ("torch", "jax")]
    for r in results:
        r.metrics |= {M.PEAK_DEVICE_MEM_MB: 300.0, M.PEAK_DEVICE_MEM_NVML_MB: 800.0}
    (memory,) = [f for f in figures.figures(cells(results)) if f.name == "memory"]
    assert "framework reports" in memory.caption and "NVML" in memory.caption
