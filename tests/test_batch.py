"""The batch lifecycle's faults, end to end through the CLI: a real embedded Ray, real workers, a real
SQLite store and a real ``mlflow server`` on 127.0.0.1 (loopback only).

1. a driver SIGKILLed mid-batch, then ``--resume``: MLflow ends with every cell exactly once, from
   exactly the processes the journal has;
2. an MLflow store that does not answer: exit 2 before anything runs; one that goes away during the
   batch: trials finish, the journal has them, the user is told once to run ``harness sync``, exit 3;
3. an unreachable ``--address``: one line, exit 2, no hang.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness import journal
from tests.conftest import harness_in_process  # sync: harness.cli.main, in this process
from tests.test_cli import TINY, harness
from tests.test_tracking_server import MlflowServer, free_port

pytestmark = pytest.mark.slow


def _child_runs(uri: str, batch_id: str) -> list[object]:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("harness")
    assert exp is not None
    query = f"tags.batch_id = '{batch_id}' and tags.harness_kind = 'trial'"
    return list(client.search_runs([exp.experiment_id], query, max_results=100))


def _journal(runs: Path) -> list[dict[str, object]]:
    paths = list(runs.glob("*/journal.jsonl"))
    if not paths:
        return []
    return [json.loads(line) for line in paths[0].read_text().splitlines() if line.endswith("}")]


def _wait_for(condition: object, what: str, timeout_s: float = 300) -> None:
    """Bounded polling for a state (not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_driver_killed_then_resumed_logs_every_result_exactly_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "HARNESS_RUNS_DIR": str(tmp_path / "runs"), "MLFLOW_TRACKING_URI": uri}
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", TINY],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: len(_journal(tmp_path / "runs")) >= 2, "two journaled results")
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    journaled = len(_journal(tmp_path / "runs"))
    assert 2 <= journaled <= 4
    (meta,) = (tmp_path / "runs").glob("*/batch.json")
    batch_id = meta.parent.name

    resumed = harness(tmp_path, "run", TINY, "--resume", batch_id)
    assert resumed.proc.returncode == 0, resumed.proc.stdout[-3000:] + resumed.proc.stderr[-3000:]
    rows = _journal(tmp_path / "runs")
    entries = {(r["trial_key"], r["attempt"]) for r in rows}
    assert len({key for key, _ in entries}) == 4  # the whole batch ran
    runs = _child_runs(uri, batch_id)
    logged = [(r.data.tags["trial_key"], r.data.tags["processes_digest"]) for r in runs]  # type: ignore[attr-defined]
    cells = journal.group_cells(journal.Batch(tmp_path / "runs", batch_id).results())
    assert sorted(logged) == sorted((k, journal.processes_digest(c)) for k, c in cells.items())  # each cell once
    assert all(r.info.status == "FINISHED" for r in runs)  # type: ignore[attr-defined]
    rows_shown = [line for line in resumed.proc.stdout.splitlines() if line.startswith("mlp_shallow ")]  # table rows
    assert len(rows_shown) == 4  # the final table shows the whole batch, earlier rows included

    again = harness_in_process(monkeypatch, capsys, tmp_path, "sync", batch_id)
    assert again.code == 0, again.stderr
    assert "0 cells logged" in again.stdout
    assert len(_child_runs(uri, batch_id)) == len(cells)


def test_unreachable_tracking_server_is_a_one_line_error_before_anything_runs(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    run = harness(tmp_path, "run", TINY, "--tracking-uri", url, timeout=120)
    assert run.proc.returncode == 2
    err = run.proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert url in err and "mlflow server" in err and "sqlite:///" in err
    assert not (tmp_path / "runs").exists()  # nothing ran, nothing written


def test_tracking_server_lost_mid_batch_keeps_results_and_sync_replays_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    server = MlflowServer(tmp_path / "server", port)
    server.start()
    try:
        env = {**os.environ, "HARNESS_RUNS_DIR": str(tmp_path / "runs")}
        env.pop("RAY_ADDRESS", None)
        env.pop("MLFLOW_TRACKING_URI", None)
        driver = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "run", TINY, "--mode", "infer", "--tracking-uri", server.url],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_for(lambda: len(_journal(tmp_path / "runs")) >= 1, "the first journaled result")
        server.stop()  # the store goes away while the batch runs
        out, err = driver.communicate(timeout=400)
    finally:
        server.stop()
    assert driver.returncode == 3, out[-2000:] + err[-2000:]
    assert len(_journal(tmp_path / "runs")) == 2  # every trial ran and is in the journal
    assert err.count("harness sync") == 1  # told once, with the command
    (meta,) = (tmp_path / "runs").glob("*/batch.json")
    batch_id = meta.parent.name
    assert f"harness sync {batch_id} --tracking-uri {server.url}" in " ".join(err.split())

    server.start()  # the same store comes back
    try:
        synced = harness_in_process(monkeypatch, capsys, tmp_path, "sync", batch_id, "--tracking-uri", server.url)
        assert synced.code == 0, synced.stdout + synced.stderr
        assert "2 cells logged" in synced.stdout
        runs = _child_runs(server.url, batch_id)
        assert sorted(r.info.run_name for r in runs) == ["mlp_shallow-jax-infer", "mlp_shallow-torch-infer"]  # type: ignore[attr-defined]
    finally:
        server.stop()


def test_unreachable_address_is_a_one_line_error_without_hanging(tmp_path: Path) -> None:
    run = harness(tmp_path, "run", TINY, "--address", f"127.0.0.1:{free_port()}", timeout=30)
    assert run.proc.returncode == 2
    err = run.proc.stderr.strip()
    assert len(err.splitlines()) == 1 and "cannot reach the Ray cluster" in err, err
    assert not (tmp_path / "runs").exists()
