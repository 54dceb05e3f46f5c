"""Replicated cells end to end: real Ray, real worker processes, a real SQLite MLflow store.

- K = 1 is labelled "1 process: run-to-run spread unknown" (table and MLflow), with no interval;
- ``--resume --repeats 2 --until-stable --max-repeats 3`` continues a partially replicated cell and
  adds processes to unstable cells; MLflow keeps one child run per cell, replaced as it grows;
- the processes run in the seeded interleaved order, on cores outside the reserved one;
- ``compare BASE NEW`` exits 1 on a slowdown (a copy of the batch with every step made 10x slower),
  0 on an A/A copy, 2 with the differences listed when the environments differ, and logs its verdict
  table onto NEW's parent run; ``calibrate`` stores a noise threshold that ``--threshold auto`` uses.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from harness import metrics as M
from harness.cells import ONE_PROCESS
from tests.conftest import harness_in_process  # compare and sync: harness.cli.main, in this process
from tests.test_batch import _child_runs
from tests.test_cli import TINY, Run, harness

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Run, Run, str]:
    """One torch-only tiny batch at K = 1, then resumed to 2 processes and grown until stable (cap 3)."""
    cwd = tmp_path_factory.mktemp("replicated")
    first = harness(cwd, "run", TINY, "--framework", "torch", "--repeats", "1", "--seed", "7")
    assert first.proc.returncode == 0, first.proc.stdout[-3000:] + first.proc.stderr[-3000:]
    grown = harness(
        cwd,
        "run",
        TINY,
        "--framework",
        "torch",
        "--resume",
        first.batch_id,
        "--repeats",
        "2",
        "--until-stable",
        "--max-repeats",
        "3",
        "--seed",
        "8",
    )
    assert grown.proc.returncode == 0, grown.proc.stdout[-3000:] + grown.proc.stderr[-3000:]
    return first, grown, first.batch_id  # the id before other tests copy the batch


def test_one_process_is_labelled_and_has_no_interval(replicated: tuple[Run, Run, str]) -> None:
    first, _, _ = replicated
    assert ONE_PROCESS in first.proc.stdout


def test_resume_and_until_stable_grow_every_cell_to_the_cap(replicated: tuple[Run, Run, str]) -> None:
    _, grown, grown_id = replicated
    assert "resuming: 2 processes already finished, 2 to run" in grown.proc.stdout
    assert "until stable: 2 more processes for unstable cells" in grown.proc.stdout  # 2 processes < 3
    rows = grown.journal()
    per_cell: dict[str, list[int]] = {}
    for r in rows:
        per_cell.setdefault(str(r["trial_key"]), []).append(int(r["replica"]))  # type: ignore[call-overload]
    assert len(per_cell) == 2 and all(sorted(v) == [0, 1, 2] for v in per_cell.values())
    replicas = [int(r["replica"]) for r in rows]  # type: ignore[call-overload]
    assert replicas == sorted(replicas)  # interleaved by rounds: every cell's replica r before any r + 1
    meta = json.loads((grown.cwd / "runs" / grown_id / "batch.json").read_text())
    assert meta["order_seeds"] == [7, 8] and meta["repeats"] == 2 and meta["reserve_cores"] == 1


def test_processes_run_outside_the_reserved_core(replicated: tuple[Run, Run, str]) -> None:
    _, grown, _ = replicated
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores to reserve one")
    for r in grown.journal():
        env: dict[str, Any] = r["environment"]  # type: ignore[assignment]
        assert env["reserved_cores"] and not set(env["reserved_cores"]) & set(env["cpus"])
        assert r["spec"]["threads"] == len(os.sched_getaffinity(0)) - 1  # type: ignore[index]


def test_mlflow_has_one_run_per_cell_with_between_process_figures(replicated: tuple[Run, Run, str]) -> None:
    _, grown, grown_id = replicated
    runs = _child_runs(grown.uri, grown_id)
    assert len(runs) == 2  # one per cell: the K = 1 and K = 2 runs were replaced
    client = MlflowClient(grown.uri)
    for run in runs:
        assert run.data.params["repeats"] == "3"
        m = run.data.metrics
        assert m[M.REPEATS] == 3
        assert m[M.THROUGHPUT_CI_LOW] <= m[M.THROUGHPUT] <= m[M.THROUGHPUT_CI_HIGH]
        assert m[M.THROUGHPUT_CV_BETWEEN] >= 0
        assert run.data.tags["interval"].startswith("95% between processes")
        table = json.loads(Path(client.download_artifacts(run.info.run_id, "processes.json")).read_text())
        assert sorted(row[0] for row in table["data"]) == [0, 1, 2]  # one row per process (replica first)


def test_k1_batch_says_spread_unknown_in_mlflow_and_in_compare(
    replicated: tuple[Run, Run, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, base, base_id = replicated
    before = {p.parent.name for p in (base.cwd / "runs").glob("*/batch.json")}
    run = harness(base.cwd, "run", TINY, "--framework", "torch", "--mode", "infer")  # an independent batch, K = 1
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    (single,) = {p.parent.name for p in (base.cwd / "runs").glob("*/batch.json")} - before
    (child,) = _child_runs(run.uri, single)
    assert child.data.tags["interval"] == ONE_PROCESS and child.data.tags["unstable"] == ONE_PROCESS
    assert M.THROUGHPUT_CI_LOW not in child.data.metrics
    verdicts = harness_in_process(monkeypatch, capsys, base.cwd, "compare", base_id, single, "--json")
    assert verdicts.code == 0, verdicts.stderr  # no verdict from one process: no gate
    (row,) = json.loads(verdicts.stdout)["rows"]
    assert row["verdict"] == "inconclusive" and "run-to-run spread unknown" in row["note"]
    assert json.loads(verdicts.stdout)["unmatched"] == ["BASE mlp_shallow torch train bs32 cpu mnist1d"]


def _copy_batch(run: Run, batch_id: str, name: str, change: Any) -> str:
    """A copy of batch ``batch_id`` under a new id, every journal entry passed through ``change``."""
    source = run.cwd / "runs" / batch_id
    target = run.cwd / "runs" / name
    shutil.copytree(source, target)
    (target / "mlflow.jsonl").unlink(missing_ok=True)
    rows = [change(json.loads(line)) for line in (source / "journal.jsonl").read_text().splitlines()]
    (target / "journal.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return name


def _slower(row: dict[str, Any]) -> dict[str, Any]:
    # every step 10x slower: far beyond the tiny suite's between-process spread (CV up to ~50% at K = 3)
    row["samples"] = {k: [10 * v for v in vs] for k, vs in row["samples"].items()}
    return row


def test_compare_gates_on_a_slowdown_and_passes_an_aa_copy(
    replicated: tuple[Run, Run, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, base, base_id = replicated
    slow = _copy_batch(base, base_id, "20990101-000000-slow", _slower)
    gate = harness_in_process(monkeypatch, capsys, base.cwd, "compare", base_id, slow, "--json")
    assert gate.code == 1, gate.stdout + gate.stderr
    verdicts = json.loads(gate.stdout)
    assert {r["verdict"] for r in verdicts["rows"]} == {"slower"}
    assert all(r["ratio"] == pytest.approx(0.1) for r in verdicts["rows"])
    assert "Holm" in verdicts["correction"]
    same = _copy_batch(base, base_id, "20990101-000000-same", lambda r: r)
    aa = harness_in_process(monkeypatch, capsys, base.cwd, "compare", base_id, same, "--markdown")
    assert aa.code == 0, aa.stdout + aa.stderr
    assert "0 slower" in aa.stdout and "| **slower** |" not in aa.stdout


def test_compare_refuses_mismatched_environments_unless_allowed(
    replicated: tuple[Run, Run, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, base, base_id = replicated

    def other_cpu(row: dict[str, Any]) -> dict[str, Any]:
        row["environment"]["cpu_model"] = "Some Other CPU"
        return row

    other = _copy_batch(base, base_id, "20990101-000000-cpu", other_cpu)
    refused = harness_in_process(monkeypatch, capsys, base.cwd, "compare", base_id, other)
    assert refused.code == 2
    assert "cpu_model" in refused.stderr and "Some Other CPU" in refused.stderr
    allowed = harness_in_process(monkeypatch, capsys, base.cwd, "compare", base_id, other, "--allow-mismatch")
    assert allowed.code == 0, allowed.stderr
    assert "allowed by --allow-mismatch" in allowed.stderr


def test_compare_logs_verdicts_on_the_new_batch_parent_run(
    replicated: tuple[Run, Run, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, base, base_id = replicated
    harness_in_process(monkeypatch, capsys, base.cwd, "sync", base_id)  # the parent run exists already; idempotent
    run = harness_in_process(monkeypatch, capsys, base.cwd, "compare", base_id, "--by", "mode", "--baseline", "train")
    assert run.code == 2  # mode is not an axis to compare by
    assert "invalid choice: 'mode'" in run.stderr and "framework" in run.stderr
    by = harness_in_process(monkeypatch, capsys, base.cwd, "compare", base_id, base_id)
    assert by.code == 0, by.stderr
    client = MlflowClient(base.uri)
    exp = client.get_experiment_by_name("harness")
    assert exp is not None
    (parent,) = client.search_runs([exp.experiment_id], f"tags.batch_id = '{base_id}' and tags.harness_kind = 'batch'")
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "compare")}
    assert {f"compare/vs-{base_id}.{ext}" for ext in ("md", "json", "png", "svg")} <= logged  # table and chart


def test_calibrate_then_threshold_auto(
    replicated: tuple[Run, Run, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, base, base_id = replicated
    cal = harness(
        base.cwd, "calibrate", "--arch", "mlp_shallow", "--batch-size", "32", "--repeats", "2", "--mode", "infer"
    )
    assert cal.proc.returncode == 0, cal.proc.stdout[-3000:] + cal.proc.stderr[-3000:]
    assert "noise threshold" in cal.proc.stdout
    saved = list((Path(os.environ["HARNESS_CACHE"]) / "noise").glob("*-cpu.json"))
    assert saved and json.loads(saved[0].read_text())["threshold"] >= 0.01
    client = MlflowClient(base.uri)
    exp = client.get_experiment_by_name("harness")
    assert exp is not None
    assert client.search_runs([exp.experiment_id], "tags.harness_kind = 'calibration'")
    auto = harness_in_process(
        monkeypatch, capsys, base.cwd, "compare", base_id, base_id, "--threshold", "auto", "--json"
    )
    assert auto.code == 0, auto.stderr
    verdicts = json.loads(auto.stdout)
    assert verdicts["threshold_source"].startswith("auto: calibrated noise of")
    assert verdicts["threshold"] == max(json.loads(p.read_text())["threshold"] for p in saved)
