"""Node faults: the reason a trial gets when its Ray task dies (:mod:`harness.faults`), and, on a real
multi-node ``ray.cluster_utils.Cluster``, a node removed while its trial runs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ray.exceptions import NodeDiedError, RayTaskError, WorkerCrashedError

from harness import faults
from harness.launch import NODE_CPUS_ENV
from tests.conftest import is_trial_worker
from tests.test_cli import TINY, Run, harness

NODE_ID = "c94ab2ca18266d7066803e0d51ec1fbacfcf2c99d211e5fb07ad0bec"
NODE_DIED = (  # what Ray 2.60 raises on ray.get of a task whose node was removed
    "Task failed because the node it was running on is dead or unavailable. Node IP: 192.0.2.2, node ID: "
    f"{NODE_ID}. This can happen if the node was preempted, had a hardware failure, or its raylet crashed "
    f"unexpectedly. To see node death information, use `ray list nodes --filter node_id={NODE_ID}`, check "
    "the Ray dashboard cluster page, search the node ID in the GCS logs, or use `ray logs raylet.out -ip 192.0.2.2`."
)


def _died() -> BaseException:
    return NodeDiedError(NODE_DIED)  # type: ignore[no-untyped-call]


def _in_task(cause: BaseException, pid: int) -> BaseException:
    """What ray.get raises for a task that raised ``cause``."""
    trace = "Traceback (most recent call last):\n ..."
    return RayTaskError("_run_trial", trace, cause, "ray::_run_trial", pid, "10.0.0.3")  # type: ignore[no-untyped-call]


def test_node_died_names_the_node() -> None:
    assert faults.task_failure_reason(_died()) == "node lost: 192.0.2.2, node c94ab2ca"


def test_node_died_with_ray_s_record_of_the_node(monkeypatch: pytest.MonkeyPatch) -> None:
    dead = faults.Node(NODE_ID, "192.0.2.2", "worker-7", alive=False, death="received SIGTERM")
    monkeypatch.setattr(faults, "lookup", lambda node_id: dead if NODE_ID.startswith(node_id) else None)
    reason = faults.task_failure_reason(_died())
    assert reason == "node lost: worker-7 (192.0.2.2), node c94ab2ca: received SIGTERM"


def test_node_died_inside_the_task_is_a_lost_node_too() -> None:
    assert faults.task_failure_reason(_in_task(_died(), 42)).startswith("node lost: 192.0.2.2, node c94ab2ca")


def test_other_failures_are_one_line() -> None:
    assert faults.task_failure_reason(WorkerCrashedError()) == (
        "Ray task failed: WorkerCrashedError: The worker died unexpectedly while executing this task. "
        "Check python-core-worker-*.log files for more information."
    )
    raised = _in_task(RuntimeError("trial needs 4 cores\nmore"), 7)
    assert faults.task_failure_reason(raised) == (
        "Ray task failed: RuntimeError: trial needs 4 cores (in _run_trial, pid 7 on 10.0.0.3)"
    )
    assert len(faults.task_failure_reason(ValueError("x" * 5000))) == faults.REASON_CHARS


def test_worker_crash_on_a_dead_node_is_a_lost_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """The node the task announced is dead: its node was lost, though Ray reported the worker's end."""
    states = {NODE_ID: faults.Node(NODE_ID, "192.0.2.2", "worker-7", alive=False)}
    monkeypatch.setattr(faults, "lookup", states.get)
    assert faults.task_failure_reason(WorkerCrashedError(), NODE_ID) == "node lost: worker-7 (192.0.2.2), node c94ab2ca"
    states[NODE_ID] = faults.Node(NODE_ID, "192.0.2.2", "worker-7", alive=True)
    reason = faults.task_failure_reason(WorkerCrashedError(), NODE_ID, wait_s=0.2)
    assert reason.startswith("Ray task failed: WorkerCrashedError")
    assert faults.task_failure_reason(WorkerCrashedError(), "unknown").startswith("Ray task failed")


# --- a real cluster: one node removed while its trial hangs ---------------------------------------------

NODE_ENV = "HARNESS_TEST_NODE"  # which fake node a process belongs to (its raylet's environment)
HANG = "mlp_shallow-torch-infer"
FLAGS = ("--reserve-cores", "0", "--threads", "1", "--seed", "7", "--timeout", "120")


@dataclass
class FakeCluster:
    """A head without CPUs (the driver's node) and one-CPU worker nodes, each with its own temp folder
    (core locks, fork servers: a node's own, as on separate machines) and one of this machine's cores."""

    cluster: Any
    root: Path
    workers: dict[str, Any] = field(default_factory=dict)  # name -> ray._private.node.Node, live ones
    added: int = 0

    def top_up(self, count: int) -> dict[str, Any]:
        """``count`` live worker nodes (removed ones replaced by new ones)."""
        cores = sorted(os.sched_getaffinity(0))
        self.workers = {k: n for k, n in self.workers.items() if n in self.cluster.worker_nodes}
        while len(self.workers) < count:
            name, core = f"worker{self.added}", cores[self.added % len(cores)]
            (self.root / name).mkdir()
            env = {"TMPDIR": str(self.root / name), NODE_ENV: name, NODE_CPUS_ENV: str(core)}
            self.workers[name] = self.cluster.add_node(num_cpus=1, env_vars=env)
            self.added += 1
        self.cluster.wait_for_nodes()
        return dict(self.workers)


@pytest.fixture(scope="module")
def fake_cluster() -> Iterator[FakeCluster]:
    from ray.cluster_utils import Cluster

    root = Path(tempfile.mkdtemp(prefix="hf-"))  # short: fork servers' socket paths must fit
    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    try:
        yield FakeCluster(c, root)
    finally:
        c.shutdown()  # type: ignore[no-untyped-call]
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def cluster(fake_cluster: FakeCluster) -> tuple[Any, dict[str, Any]]:
    """The cluster and its two live worker nodes by name (a test may remove one)."""
    return fake_cluster.cluster, fake_cluster.top_up(2)


def _hanging_worker(run: subprocess.Popen[str], timeout_s: float) -> tuple[Any, str]:
    """The trial worker injected with ``hang`` (its request says so), and the fake node it runs on."""
    import psutil

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and run.poll() is None:
        for proc in psutil.process_iter():
            try:
                if not is_trial_worker(proc):
                    continue
                request = json.loads((Path(proc.cwd()) / "request.json").read_text())
                if request.get("fault") == "hang" and request["spec"]["framework"] == "torch":
                    return proc, proc.environ()[NODE_ENV]
            except (psutil.Error, OSError, ValueError, KeyError):
                continue
        time.sleep(0.5)
    out, err = run.communicate(timeout=60) if run.poll() is not None else ("", "")
    raise AssertionError(f"the hanging trial never started on a worker node\n{out[-2000:]}\n{err[-2000:]}")


def _start(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """``harness`` as tests/test_cli.py's ``harness()`` runs it, without waiting."""
    full_env = {
        **os.environ,
        "HARNESS_RUNS_DIR": str(cwd / "runs"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
    }
    full_env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=cwd,
        env={**full_env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
# the node killed outright (SIGKILL: nothing of it says goodbye); a graceful removal (SIGTERM) took the
# same path when both ran (about 40 s each), so one keeps the suite's time in bounds
@pytest.mark.parametrize("graceful", [False], ids=["sigkill"])
def test_node_lost_during_a_trial_then_resume(
    cluster: tuple[Any, dict[str, Any]], tmp_path: Path, graceful: bool
) -> None:
    """The lost node's trial ends ``crash`` with "node lost: ...", the others finish, ``--resume`` reruns
    only it, and MLflow has each cell once."""
    from mlflow.tracking import MlflowClient

    c, workers = cluster
    address = str(c.address)
    started = _start(tmp_path, "run", TINY, "--address", address, *FLAGS, env={"HARNESS_INJECT_FAULTS": f"{HANG}=hang"})
    try:
        hanging, lost = _hanging_worker(started, 240)
        c.remove_node(workers[lost], allow_graceful=graceful)  # SIGTERM, or SIGKILL
        out, err = started.communicate(timeout=300)
    finally:
        if started.poll() is None:
            started.kill()
            started.communicate()
    run = Run(
        subprocess.CompletedProcess(started.args, started.returncode, out, err),
        tmp_path,
        f"sqlite:///{tmp_path / 'mlflow.db'}",
    )
    assert run.proc.returncode == 1, out[-3000:] + err[-3000:]  # a trial did not finish ok; the batch did

    import psutil

    _, alive = psutil.wait_procs([hanging], timeout=30)
    assert not alive, "the lost node's trial worker outlived its node"
    rows = {f"mlp_shallow-{r['spec']['framework']}-{r['spec']['mode']}": r for r in run.journal()}  # type: ignore[index]
    assert len(rows) == 4
    assert rows[HANG]["status"] == "crash", rows[HANG]
    reason = str(rows[HANG]["reason"])
    assert reason.startswith("node lost: "), reason
    assert workers[lost].node_id[:8] in reason
    for name, row in rows.items():
        if name != HANG:
            assert row["status"] == "ok", (name, row["status"], row["reason"])
            assert row["environment"]["node"]["hostname"]  # type: ignore[index]

    again = harness(tmp_path, "run", TINY, "--address", address, *FLAGS, "--resume", run.batch_id)
    assert again.proc.returncode == 0, again.proc.stdout[-3000:] + again.proc.stderr[-3000:]
    assert "3 processes already finished, 1 to run" in again.proc.stdout
    journal = again.journal()
    assert len(journal) == 5
    reruns = [r for r in journal if r["trial_key"] == rows[HANG]["trial_key"]]
    assert [(r["status"], r["attempt"]) for r in reruns] == [("crash", 1), ("ok", 2)]

    client = MlflowClient(run.uri)
    exp = client.get_experiment_by_name("harness")
    assert exp is not None
    query = f"tags.batch_id = '{run.batch_id}' and tags.harness_kind = 'trial'"
    logged = client.search_runs([exp.experiment_id], query)
    assert sorted(r.data.tags["trial_key"] for r in logged) == sorted(str(r["trial_key"]) for r in rows.values())
    assert {r.data.tags["status"] for r in logged} == {"ok"}


@pytest.mark.slow
def test_a_task_names_its_node_for_the_driver(cluster: tuple[Any, dict[str, Any]]) -> None:
    """``announced`` in a task, ``started_on`` in the driver: the node even when Ray's error lacks it."""
    import ray

    c, workers = cluster

    def stay(seconds: float) -> str:
        with faults.announced() as node_id:
            time.sleep(seconds)
            return node_id

    ray.init(address=str(c.address), include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        task = ray.remote(max_retries=0)(stay)
        quick = task.remote(0.0)
        assert ray.get(quick) in {w.node_id for w in workers.values()}
        assert faults.started_on(quick) is None  # a task that ended normally leaves nothing behind

        slow = task.remote(300.0)
        deadline = time.monotonic() + 60
        node_id: str | None = None
        while (node_id := faults.started_on(slow, forget=False)) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert node_id is not None, "the task never announced its node"
        (lost,) = [w for w in workers.values() if w.node_id == node_id]
        c.remove_node(lost)
        with pytest.raises(Exception) as failure:
            ray.get(slow, timeout=60)
        assert faults.task_failure_reason(failure.value).startswith("node lost: ")
        # as if Ray had reported the worker's end before the node's
        worker_crash = WorkerCrashedError()
        reason = faults.task_failure_reason(worker_crash, faults.started_on(slow))
        assert reason.startswith("node lost: ") and node_id[:8] in reason, reason
        assert faults.started_on(slow) is None  # read once, then removed
    finally:
        ray.shutdown()
