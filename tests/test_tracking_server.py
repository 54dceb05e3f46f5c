"""Tracking to a real ``mlflow server`` on 127.0.0.1 (loopback only)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.test_cli import TINY, harness

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    mlflow = Path(sys.executable).parent / "mlflow"
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(
        [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--artifacts-destination", str(root / "artifacts")],
        cwd=root, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:  # wait for readiness (bounded), not a timing assertion
        with contextlib.suppress(OSError):
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)
    log.close()


def test_run_logs_to_tracking_server(server: str, tmp_path: Path) -> None:
    run = harness(tmp_path, "run", TINY, "--framework", "jax", "--mode", "infer", "--tracking-uri", server)
    assert run.proc.returncode == 0, run.proc.stdout + run.proc.stderr
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local default store
    client = MlflowClient(server)
    exp = client.get_experiment_by_name("harness")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], f"tags.batch_id = '{run.batch_id}' and tags.harness_kind = 'trial'")
    assert [r.info.run_name for r in runs] == ["mlp_shallow-jax-infer"]
    assert runs[0].data.metrics["throughput_samples_per_s"] > 0
    assert "result.json" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}

    # sync replays the journal into the same server without duplicating the run
    synced = harness(tmp_path, "sync", run.batch_id, "--tracking-uri", server)
    assert synced.proc.returncode == 0, synced.proc.stderr
    again = client.search_runs([exp.experiment_id], f"tags.batch_id = '{run.batch_id}' and tags.harness_kind = 'trial'")
    assert len(again) == 1
