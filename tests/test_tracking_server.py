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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 with a SQLite store under ``root``; stop and start again
    (same port, same store) to simulate a store that goes away and comes back."""

    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        mlflow = Path(sys.executable).parent / "mlflow"
        with (self.root / "server.log").open("a") as log:
            self.proc = subprocess.Popen(
                [str(mlflow), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
                 "--artifacts-destination", str(self.root / "artifacts")],
                cwd=self.root, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while True:  # wait for readiness (bounded), not a timing assertion
            with contextlib.suppress(OSError):
                if urllib.request.urlopen(f"{self.url}/health", timeout=2).status == 200:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), free_port())
    srv.start()
    yield srv.url
    srv.stop()


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
    assert {"results.json", "processes.json"} <= {a.path for a in client.list_artifacts(runs[0].info.run_id)}

    # sync replays the journal into the same server without duplicating the run
    synced = harness(tmp_path, "sync", run.batch_id, "--tracking-uri", server)
    assert synced.proc.returncode == 0, synced.proc.stderr
    again = client.search_runs([exp.experiment_id], f"tags.batch_id = '{run.batch_id}' and tags.harness_kind = 'trial'")
    assert len(again) == 1
