"""``--address``: an existing Ray cluster with a (fake) GPU node; missing framework environments."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.test_cli import TINY, harness

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A real local Ray cluster; the head advertises one GPU it does not have (a Ray resource)."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 2, "num_gpus": 1})
    yield str(c.address)
    c.shutdown()  # type: ignore[no-untyped-call]


def test_gpu_trial_is_scheduled_on_the_gpu_node(cluster: str, tmp_path: Path) -> None:
    run = harness(
        tmp_path, "run", TINY, "--address", cluster, "--framework", "torch", "--mode", "infer", "--device", "cpu,gpu"
    )
    rows = {r["spec"]["device"]: r for r in run.journal()}  # type: ignore[index]
    assert rows["cpu"]["status"] == "ok"
    # Ray placed it (the node has a GPU resource) and the worker ran; the GPU itself is fake here
    assert rows["gpu"]["status"] == "failed"
    assert "cuda" in str(rows["gpu"]["reason"]).lower() or "cuda" in str(rows["gpu"]["stderr_tail"]).lower()
    assert run.proc.returncode == 1
    # on a cluster, results go to MLflow as they arrive: both runs are there
    client = MlflowClient(run.uri)
    exp = client.get_experiment_by_name("harness")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], f"tags.batch_id = '{run.batch_id}' and tags.harness_kind = 'trial'")
    assert sorted(r.data.tags["status"] for r in runs) == ["failed", "ok"]


def test_tpu_nobody_has_exits_2(cluster: str, tmp_path: Path) -> None:
    run = harness(tmp_path, "run", TINY, "--address", cluster, "--framework", "jax", "--device", "tpu")
    assert run.proc.returncode == 2
    assert "no node in the Ray cluster has a TPU" in run.proc.stderr


def test_missing_framework_env_is_unsupported_rest_runs(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-venv" / "bin" / "python")
    run = harness(tmp_path, "run", TINY, "--mode", "infer", env={"HARNESS_PYTHON_JAX": missing})
    assert run.proc.returncode == 0, run.proc.stderr
    rows = {r["spec"]["framework"]: r for r in run.journal()}  # type: ignore[index]
    assert rows["torch"]["status"] == "ok"
    assert rows["jax"]["status"] == "unsupported"
    assert "does not exist" in str(rows["jax"]["reason"]) and "make setup" in str(rows["jax"]["reason"])
