"""``harness submit | jobs | logs | stop`` against a real local Ray head with its job server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from harness import jobs
from harness.cli import build_parser
from harness.spec import SpecError
from tests.test_cli import TINY, Run, harness

pytestmark = pytest.mark.slow
RAY = str(Path(sys.executable).parent / "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Head:
    url: str
    token: str
    uri: str  # the MLflow store the jobs write to (same machine: a SQLite file is fine)
    runs: Path  # where the jobs' journals go ("on the cluster")
    cwd: Path  # where the client commands run

    def harness(self, *args: str, timeout: float = 300) -> Run:
        return harness(self.cwd, *args, env={"RAY_AUTH_TOKEN": self.token}, timeout=timeout)


def _ready(url: str, token: str, timeout_s: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(f"{url}/api/jobs/", headers={"Authorization": f"Bearer {token}"})
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(request, timeout=5):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise RuntimeError(f"the job server at {url} did not answer within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End the head and everything it started (never `ray stop`: it would end every Ray of this user)."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its processes
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    _, alive = psutil.wait_procs(family, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    """A Ray head with its dashboard (job server) on 127.0.0.1 and token authentication (Ray's default);
    its own temp dir, short enough for Ray's socket paths."""
    temp = Path(tempfile.mkdtemp(prefix="rj", dir="/tmp"))
    work = tmp_path_factory.mktemp("jobs")
    token = secrets.token_hex(16)
    dashboard = _free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",  # the job's `python`
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
    }
    env.pop("RAY_ADDRESS", None)
    ports = {
        "--port": _free_port(),
        "--dashboard-port": dashboard,
        "--ray-client-server-port": _free_port(),
        "--dashboard-agent-listen-port": _free_port(),
        "--dashboard-agent-grpc-port": _free_port(),
        "--runtime-env-agent-port": _free_port(),
        "--metrics-export-port": _free_port(),
    }
    command = [RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--dashboard-host", "127.0.0.1"]
    command += ["--include-dashboard", "true", "--num-cpus", "2", "--temp-dir", str(temp), "--disable-usage-stats"]
    command += ["--object-store-memory", str(100 * 1024 * 1024)]
    for flag, port in ports.items():
        command += [flag, str(port)]
    log = work / "ray-start.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        _ready(url, token, 120, proc, log)
        (work / "client").mkdir()
        yield Head(url, token, f"sqlite:///{work / 'mlflow.db'}", work / "cluster-runs", work / "client")
    finally:
        _stop(proc)
        shutil.rmtree(temp, ignore_errors=True)


@dataclass
class Submitted:
    job_id: str
    batch_id: str
    submit: Run


def _submit(head: Head, *args: str) -> Submitted:
    run = head.harness(
        "submit", TINY, "--framework", "torch", "--mode", "infer", "--address", head.url,
        "--tracking-uri", head.uri, "--runs-dir", str(head.runs), *args,
    )  # fmt: skip
    assert run.proc.returncode == 0, run.proc.stdout + run.proc.stderr
    job = re.search(r"^job (\S+)$", run.proc.stdout, re.M)
    batch = re.search(r"^batch (\S+)$", run.proc.stdout, re.M)
    assert job and batch, run.proc.stdout
    return Submitted(job.group(1), batch.group(1), run)


@pytest.fixture(scope="module")
def finished(head: Head) -> Submitted:
    """The tiny suite's torch inference cell submitted as a job and followed to its end."""
    submitted = _submit(head)
    follow = head.harness("logs", submitted.job_id, "--follow", "--address", head.url)
    assert follow.proc.returncode == 0, follow.proc.stdout + follow.proc.stderr
    assert f"batch {submitted.batch_id}" in follow.proc.stdout  # the driver's output, as it came
    assert "ok mlp_shallow-torch-infer" in follow.proc.stdout
    assert "SUCCEEDED" in follow.proc.stderr
    return submitted


def test_submit_prints_ids_and_returns(finished: Submitted, head: Head) -> None:
    out = finished.submit.proc.stdout
    assert finished.job_id == f"harness-{finished.batch_id}"
    assert "shipping the project as the job's working directory" in out
    size_kib = float(re.search(r"(\d[\d,]*) KiB", out).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert size_kib < 5000  # no venvs, caches, stores
    assert f"harness logs {finished.job_id} --follow" in finished.submit.proc.stderr


def test_the_journal_lives_on_the_cluster(finished: Submitted, head: Head) -> None:
    assert (head.runs / finished.batch_id / "journal.jsonl").exists()
    assert not (head.cwd / "runs").exists()  # not in the client's runs dir


def test_trial_runs_are_in_mlflow(finished: Submitted, head: Head) -> None:
    client = MlflowClient(head.uri)
    exp = client.get_experiment_by_name("harness")
    assert exp is not None
    query = f"tags.batch_id = '{finished.batch_id}' and tags.harness_kind = 'trial'"
    runs = client.search_runs([exp.experiment_id], query)
    assert [r.data.tags["status"] for r in runs] == ["ok"]
    assert runs[0].data.params["framework"] == "torch" and runs[0].data.params["mode"] == "infer"
    parent = client.search_runs(
        [exp.experiment_id], f"tags.batch_id = '{finished.batch_id}' and tags.harness_kind = 'batch'"
    )
    assert [p.info.status for p in parent] == ["FINISHED"]


def test_jobs_lists_it(finished: Submitted, head: Head) -> None:
    run = head.harness("jobs", "--address", head.url)
    assert run.proc.returncode == 0, run.proc.stderr
    row = next(line for line in run.proc.stdout.splitlines() if finished.job_id in line)
    assert "SUCCEEDED" in row and finished.batch_id in row and "tiny" in row


def test_compare_reads_the_batch_from_mlflow(finished: Submitted, head: Head, tmp_path: Path) -> None:
    empty = tmp_path / "no-journals"
    empty.mkdir()
    run = head.harness("compare", finished.batch_id, "--tracking-uri", head.uri, "--runs-dir", str(empty))
    assert run.proc.returncode == 0, run.proc.stderr
    assert f"batch {finished.batch_id}" in run.proc.stdout
    assert "mlp_shallow" in run.proc.stdout and "torch" in run.proc.stdout and "ok" in run.proc.stdout


def test_logs_without_follow_prints_what_there_is(finished: Submitted, head: Head) -> None:
    run = head.harness("logs", finished.job_id, "--address", head.url)
    assert run.proc.returncode == 0
    assert "ok mlp_shallow-torch-infer" in run.proc.stdout


def test_bad_input_submits_nothing(head: Head) -> None:
    before = head.harness("jobs", "--address", head.url).proc.stdout.count("harness-")
    run = head.harness("submit", TINY, "--framework", "nope", "--address", head.url, "--tracking-uri", head.uri)
    assert run.proc.returncode == 2
    assert "unknown framework 'nope'" in run.proc.stderr and "torch" in run.proc.stderr
    assert head.harness("jobs", "--address", head.url).proc.stdout.count("harness-") == before


def _job_logs(head: Head, job_id: str) -> str:
    """The job's log, straight from the job server: a bounded wait's probe, without a ``harness`` process per
    look (``harness logs`` itself is checked in the tests around)."""
    request = urllib.request.Request(
        f"{head.url}/api/jobs/{job_id}/logs", headers={"Authorization": f"Bearer {head.token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["logs"])


def test_stop_ends_a_running_job(head: Head) -> None:
    hang = "HARNESS_INJECT_FAULTS=mlp_shallow-torch-infer=hang"  # its one trial never ends (until the timeout)
    submitted = _submit(head, "--env", hang)
    deadline = time.monotonic() + 120
    while "processes to run" not in _job_logs(head, submitted.job_id):
        assert time.monotonic() < deadline, "the batch did not start"
        time.sleep(0.5)
    stop = head.harness("stop", submitted.job_id, "--address", head.url)
    assert stop.proc.returncode == 0, stop.proc.stdout + stop.proc.stderr
    assert "STOPPED" in stop.proc.stdout
    follow = head.harness("logs", submitted.job_id, "--follow", "--address", head.url)
    assert follow.proc.returncode == 1 and "STOPPED" in follow.proc.stderr
    again = head.harness("stop", submitted.job_id, "--address", head.url)
    assert again.proc.returncode == 0 and "nothing to stop" in again.proc.stdout


def test_unknown_job_exits_2(head: Head) -> None:
    for command in ("logs", "stop"):
        run = head.harness(command, "raysubmit_nosuchjob", "--address", head.url)
        assert run.proc.returncode == 2
        assert "no job 'raysubmit_nosuchjob'" in run.proc.stderr


def test_unreachable_or_missing_address_is_one_line_fast(tmp_path: Path) -> None:
    t0 = time.monotonic()
    run = harness(tmp_path, "jobs", "--address", f"http://127.0.0.1:{_free_port()}")
    assert run.proc.returncode == 2 and "cannot reach the Ray job server" in run.proc.stderr
    assert len(run.proc.stderr.strip().splitlines()) == 1
    assert time.monotonic() - t0 < 30
    env = {"RAY_DASHBOARD_ADDRESS": ""}
    run = harness(tmp_path, "submit", TINY, env=env)
    assert run.proc.returncode == 2 and "--address http://HEAD:8265" in run.proc.stderr


def test_a_local_store_needs_a_head_on_this_machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    remote = "203.0.113.7"  # TEST-NET-3: never this machine
    with pytest.raises(SpecError, match="store on local disk"):
        jobs.tracking_uri("sqlite:///mlflow.db", remote, store_on_cluster=False)
    with pytest.raises(SpecError, match="--tracking-uri http://"):
        jobs.tracking_uri(None, remote, store_on_cluster=False)
    assert jobs.tracking_uri("sqlite:///mlflow.db", "127.0.0.1", False) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert jobs.tracking_uri("sqlite:///mlflow.db", remote, True) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert jobs.tracking_uri("http://mlflow:5000", remote, False) == "http://mlflow:5000"


def test_run_options_are_forwarded() -> None:
    args = build_parser().parse_args(
        ["submit", "smoke", "--framework", "torch,jax", "--mode", "infer", "--repeats", "3", "--until-stable",
         "--address", "http://h:8265", "--env", "A=1"]
    )  # fmt: skip
    assert jobs._forwarded(args.run_actions, args) == [
        "--framework", "torch,jax", "--mode", "infer", "--repeats", "3", "--until-stable"]  # fmt: skip
