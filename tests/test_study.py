"""``harness study deep-vs-shallow`` end to end at the tiny scale: a real embedded Ray, real workers,
a real SQLite MLflow store. The study is killed mid-way, resumed, and then: every section is there,
every number the report used is the one its cell's MLflow run holds, nothing finished ran twice.
Bad input: exit 2, the choices listed, nothing run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness import journal
from tests.conftest import harness_in_process
from tests.test_batch import _wait_for
from tests.test_cli import harness

pytestmark = pytest.mark.slow

FRAMEWORKS = "jax"  # fast to compile both ways; the batch machinery is tested in every framework elsewhere


def _record(runs: Path) -> dict[str, object] | None:
    found = list((runs / "studies").glob("*.json"))
    return json.loads(found[0].read_text()) if found else None


def _lines(runs: Path, batch_id: str) -> list[dict[str, object]]:
    path = runs / batch_id / "journal.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object], subprocess.CompletedProcess[str]]:
    """A tiny study, killed once its learning batch has results, then resumed to the end."""
    cwd = tmp_path_factory.mktemp("study")
    runs = cwd / "runs"
    env = {**os.environ, "HARNESS_RUNS_DIR": str(runs), "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}"}
    env.pop("RAY_ADDRESS", None)
    args = ["study", "deep-vs-shallow", "--scale", "tiny", "--frameworks", FRAMEWORKS, "-o", "report.html"]
    driver = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def learning_started() -> bool:
        rec = _record(runs)
        return rec is not None and len(_lines(runs, rec["batches"]["learning"])) >= 3  # type: ignore[index]

    try:
        _wait_for(learning_started, "three results of the learning batch")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    record = _record(runs)
    assert record is not None
    before = {name: _lines(runs, bid) for name, bid in record["batches"].items()}  # type: ignore[attr-defined]
    assert before["compute"] and before["learning"]
    assert not (cwd / "report.html").exists()  # killed before the end

    resumed = harness(cwd, "study", "deep-vs-shallow", "--resume", str(record["study_id"]), "-o", "report.html")
    assert resumed.proc.returncode == 0, resumed.proc.stdout[-3000:] + resumed.proc.stderr[-3000:]
    record = _record(runs)
    assert record is not None
    return cwd, record, resumed.proc


def test_resumed_study_runs_each_trial_once_and_reports_every_claim(
    study: tuple[Path, dict[str, object], subprocess.CompletedProcess[str]],
) -> None:
    cwd, record, proc = study
    runs = cwd / "runs"
    batches: dict[str, str] = record["batches"]  # type: ignore[assignment]
    for name, batch_id in batches.items():
        results = journal.Batch(runs, batch_id).results()
        attempts = Counter((r.trial_key, r.replica) for r in _journal_ok(runs, batch_id))
        assert attempts and max(attempts.values()) == 1, f"{name}: a finished trial ran again"
        assert all(r.status == "ok" for r in results), [(r.spec.name, r.reason) for r in results if r.status != "ok"]
    assert "finished earlier, nothing to run" in proc.stdout  # the compute batch was complete
    page = (cwd / "report.html").read_text()
    for number in range(1, 7):
        assert f'data-claim="{number}"' in page and f'id="claim-{number}"' in page
    assert page.count("<img ") >= 5 and "<script" not in page
    for title in ("Computation", "Data hunger", "Overfitting", "Interpretability", "Transfer", "Hardware acceleration"):
        assert title in page and title in proc.stdout


def _journal_ok(runs: Path, batch_id: str) -> list[journal.TrialResult]:
    return [r for r in journal.Batch(runs, batch_id).entries() if r.status == "ok"]


def test_report_numbers_are_the_ones_in_mlflow(
    study: tuple[Path, dict[str, object], subprocess.CompletedProcess[str]],
) -> None:
    cwd, record, _ = study
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name("harness")
    assert exp is not None
    (study_run,) = client.search_runs(
        [exp.experiment_id], f"tags.study_id = '{record['study_id']}' and tags.harness_kind = 'study'"
    )
    assert study_run.info.run_id == record["study_run_id"] and study_run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(study_run.info.run_id)}
    assert {"report.html", "report.json", "study.json", "figures"} <= artifacts
    figures = {a.path for a in client.list_artifacts(study_run.info.run_id, "figures")}
    assert {"figures/learning_curves.png", "figures/computation.svg"} <= figures
    description = study_run.data.tags["mlflow.note.content"]
    assert "| 1 | Deep models need far more computation." in description and "(tiny)" in description
    report = json.loads(Path(client.download_artifacts(study_run.info.run_id, "report.json", str(cwd))).read_text())
    assert [s["number"] for s in report["sections"]] == [1, 2, 3, 4, 5, 6]

    batches: dict[str, str] = record["batches"]  # type: ignore[assignment]
    for batch_id in batches.values():  # each batch's parent run nests under the study's run
        (parent,) = client.search_runs(
            [exp.experiment_id], f"tags.batch_id = '{batch_id}' and tags.harness_kind = 'batch'"
        )
        assert parent.data.tags["mlflow.parentRunId"] == study_run.info.run_id
    children = client.search_runs([exp.experiment_id], "tags.harness_kind = 'trial'", max_results=1000)
    by_key = {r.data.tags["trial_key"]: r for r in children if r.data.tags.get("batch_id") in batches.values()}
    compared = 0
    for section in report["sections"]:
        assert section["evidence"], section["title"]
        for ev in section["evidence"]:
            assert ev["inputs"], ev["condition"]
            for key, value in ev["inputs"].items():
                assert by_key[key].data.metrics[section["metric"]] == pytest.approx(value, rel=1e-9, abs=1e-12)
                compared += 1
    assert compared >= 20
    # the tables show the same numbers: each learning curve point is the mean of its runs' metric
    assert report["sections"][1]["verdict"] in ("supported", "contradicted", "depends", "inconclusive")


def test_bad_input_exits_2_with_the_choices_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = harness_in_process(monkeypatch, capsys, tmp_path, "study", "deep-vs-shallow", "--frameworks", "torch,caffe")
    assert bad.code == 2 and "caffe" in bad.stderr and "torch, tensorflow, jax, mxnet" in bad.stderr
    unknown = harness_in_process(monkeypatch, capsys, tmp_path, "study", "shallow-vs-deep")
    assert unknown.code == 2 and "deep-vs-shallow" in unknown.stderr
    missing = harness_in_process(monkeypatch, capsys, tmp_path, "study", "deep-vs-shallow", "--resume", "study-x")
    assert missing.code == 2 and "no study 'study-x'" in missing.stderr
    both = harness_in_process(monkeypatch, capsys, tmp_path, "study", "deep-vs-shallow", "--quick", "--scale", "full")
    assert both.code == 2
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()

    dry = harness_in_process(monkeypatch, capsys, tmp_path, "study", "deep-vs-shallow", "--quick", "--dry-run")
    assert dry.code == 0 and "nothing was run" in dry.stdout
    assert "compute" in dry.stdout and "learning" in dry.stdout
    assert not (tmp_path / "runs" / "studies").exists() or not list((tmp_path / "runs" / "studies").iterdir())
