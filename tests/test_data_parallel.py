"""Multi-worker (data-parallel) trials: parity of the native collectives, gang scheduling, faults.

Parity: from the canonical weights, one SGD step of W = 2 processes, each on its half of the batch,
must give the weights of one process's step on the whole batch. Averaging two half-batch mean
gradients is the whole-batch mean gradient up to float32 reassociation (the sums run in another
order), so the tolerance is float32's: measured here, the largest difference after the step was
3e-8 absolute in every framework (weights of order 0.1-1, lr 0.05); ``atol=1e-6, rtol=1e-5``
leaves a factor of 30 for other kernel paths (AVX-512 vs AVX2 reorder the same sums).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from adapters import FRAMEWORKS
from harness import gang
from harness.contract import TrialResult, TrialSpec
from tests.conftest import REPO
from tests.test_cli import TINY, harness

DP_FRAMEWORKS = [fw for fw, info in FRAMEWORKS.items() if info.data_parallel]


def _ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _probe(framework: str, arch: str, peers: list[str], out: Path) -> None:
    """Run ``tests.dp_probe`` as ``len(peers)`` processes; rank 0 writes ``out``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.dp_probe", framework, arch, str(rank), ",".join(peers), str(out)],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(len(peers))
    ]
    errors = [p.communicate(timeout=180)[1] for p in procs]
    for p, err in zip(procs, errors, strict=True):
        assert p.returncode == 0, err[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("framework", DP_FRAMEWORKS)
def test_two_workers_on_halves_take_the_one_worker_step_on_the_whole_batch(framework: str, tmp_path: Path) -> None:
    one, two = tmp_path / "w1.npz", tmp_path / "w2.npz"
    with ThreadPoolExecutor(max_workers=2) as pool:  # independent processes: weights, not timings
        done = [pool.submit(_probe, framework, "mlp_deep", ["127.0.0.1:1"], one),
                pool.submit(_probe, framework, "mlp_deep", [f"127.0.0.1:{p}" for p in _ports(2)], two)]  # fmt: skip
    for probe in done:
        probe.result()
    a, b = np.load(one), np.load(two)
    names = [k for k in a.files if k != "loss"]
    assert names and set(names) == {k for k in b.files if k != "loss"}
    for k in names:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=f"{framework}: {k}")
    # the step really happened (the weights are not the initial ones in either run)
    from workloads.architectures import get

    initial = get("mlp_deep").init_variables(0)
    assert max(float(np.max(np.abs(a[k] - initial[k]))) for k in names) > 1e-3


def test_mxnet_multi_worker_cells_are_unsupported_with_the_reason() -> None:
    reason = FRAMEWORKS["mxnet"].multi_worker_reason(2, "train", False)
    assert reason is not None and "dist_sync" in reason
    assert FRAMEWORKS["torch"].multi_worker_reason(2, "infer", False) is not None
    assert FRAMEWORKS["torch"].multi_worker_reason(2, "train", True) is not None
    assert FRAMEWORKS["torch"].multi_worker_reason(2, "train", False) is None
    assert FRAMEWORKS["mxnet"].multi_worker_reason(1, "train", False) is None


def _spec(**kw: object) -> TrialSpec:
    base: dict[str, object] = {"architecture": "mlp_shallow", "framework": "jax", "mode": "train", "batch_size": 8}
    return TrialSpec.from_dict(base | {"threads": 1} | kw)


def _node(resources: dict[str, float], labels: dict[str, str] | None = None) -> dict[str, object]:
    return {"Alive": True, "Resources": resources, "Labels": labels or {}}


def test_placement_packs_on_one_node_when_it_fits_else_spreads() -> None:
    big, small = _node({"CPU": 4.0}), _node({"CPU": 1.0})
    assert gang.placement(_spec(workers=2), [big]).strategy == "STRICT_PACK"
    assert gang.placement(_spec(workers=2), [small, small]).strategy == "SPREAD"
    with pytest.raises(gang.Unplaceable, match="fit nowhere"):
        gang.placement(_spec(workers=3), [small, small])
    gpu = gang.placement(_spec(workers=2, device="gpu", accelerator_type="A100"), [
        _node({"CPU": 8.0, "GPU": 2.0, "accelerator_type:A100": 1.0})
    ])  # fmt: skip
    assert gpu.bundles == [{"CPU": 1.0, "GPU": 1.0, "accelerator_type:A100": 0.001}] * 2


def test_tpu_slice_bundles_target_each_host_of_one_slice() -> None:
    assert gang.tpu_hosts("v4-16") == (2, 4) and gang.tpu_hosts("v4-8") == (1, 4)
    labels = {"ray.io/tpu-slice-name": "s1", "ray.io/tpu-pod-type": "v4-16"}
    hosts = [
        _node({"CPU": 2.0, "TPU": 4.0, "s1": 1.0, "TPU-v4-16-head": 1.0}, labels | {"ray.io/tpu-worker-id": "0"}),
        _node({"CPU": 2.0, "TPU": 4.0, "s1": 1.0}, labels | {"ray.io/tpu-worker-id": "1"}),
    ]
    p = gang.placement(_spec(device="tpu", tpu_slice="v4-16", workers=2), hosts)
    assert p.strategy == "STRICT_SPREAD"
    assert p.bundles[0] == {"CPU": 1.0, "TPU": 4.0, "s1": 1.0, "TPU-v4-16-head": 1.0}
    assert p.bundles[1] == {"CPU": 1.0, "TPU": 4.0, "s1": 1.0}
    assert p.label_selectors == [{**labels_of(0)}, {**labels_of(1)}]
    with pytest.raises(gang.Unplaceable, match=r"no TPU slice of type v4-8 .*slices: v4-16"):
        gang.placement(_spec(device="tpu", tpu_slice="v4-8", workers=1), hosts)


def _ended(status: str, reason: str) -> TrialResult:
    spec = _spec(workers=3)
    return TrialResult(trial_key=spec.trial_key, spec=spec, status=status, reason=reason)  # type: ignore[arg-type]


def test_the_worker_at_fault_is_named_not_the_peers_that_noticed() -> None:
    spec, hosts = _spec(workers=3), ["h0", "h1", "h2"]
    gloo = "RuntimeError: [../gloo/transport/tcp/pair.cc:538] Connection closed by peer [10.0.0.2]:1234"
    # a crash, whose gloo error in a peer arrived first
    crashed = gang._failure(spec, {0: _ended("failed", gloo), 2: _ended("crash", "worker died from SIGSEGV")},
                            [0, 2], hosts)  # fmt: skip
    assert crashed.status == "crash" and crashed.reason.startswith("worker 2 of 3 (h2): crash: worker died")
    assert "workers [1] were stopped" in crashed.reason
    # only peers' reports, and a worker that had to be stopped: it hung
    hung = gang._failure(spec, {0: _ended("crash", "PeerLost: rank 1 sent nothing for 10 s (hung or stalled)"),
                                2: _ended("failed", gloo)}, [0, 2], hosts)  # fmt: skip
    assert hung.status == "timeout" and hung.reason.startswith("worker 1 of 3 (h1): timeout: stopped answering")
    # a failure of its own (an exception in the model) is named before anything else
    own = gang._failure(spec, {1: _ended("failed", "ValueError: bad shape"), 0: _ended("failed", gloo)}, [0, 1], hosts)
    assert own.reason.startswith("worker 1 of 3 (h1): failed: ValueError")


def labels_of(worker: int) -> dict[str, str]:
    return {"ray.io/tpu-slice-name": "s1", "ray.io/tpu-worker-id": str(worker)}


# --- end to end on the embedded Ray: two workers on the node's two cores --------------------------

DP_RUN = ("--mode", "train", "--dataset", "synthetic", "--reserve-cores", "0", "--threads", "1")


@pytest.mark.slow
def test_two_worker_cells_run_gang_scheduled_with_scaling_efficiency(tmp_path: Path) -> None:
    run = harness(tmp_path, "run", TINY, "--framework", "torch", "--workers", "1,2", *DP_RUN)
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    rows = {int(r["spec"].get("workers", 1)): r for r in run.journal()}  # type: ignore[attr-defined]
    assert set(rows) == {1, 2} and all(r["status"] == "ok" for r in rows.values())
    two = rows[2]
    workers = two["environment"]["workers"]  # type: ignore[index]
    assert [w["rank"] for w in workers] == [0, 1]
    assert {tuple(w["cpus"]) for w in workers} == {(0,), (1,)}  # each worker leased its own core
    assert two["metrics"]["comm_s_per_step"] > 0  # type: ignore[index]
    # throughput is global: the step's samples of both workers
    assert two["metrics"]["workers"] == 2  # type: ignore[index]
    client = MlflowClient(run.uri)
    exp = client.get_experiment_by_name("harness")
    assert exp is not None
    (child,) = client.search_runs([exp.experiment_id], "params.workers = '2'")
    eff = child.data.metrics["scaling_efficiency"]
    thr = {w: client.search_runs([exp.experiment_id], f"params.workers = '{w}'")[0] for w in (1, 2)}
    expected = thr[2].data.metrics["throughput_samples_per_s"] / (2 * thr[1].data.metrics["throughput_samples_per_s"])
    assert eff == pytest.approx(expected, rel=1e-9)
    assert child.data.params["scaling"] == "weak"


@pytest.mark.slow
def test_one_worker_dying_or_hanging_ends_the_trial_and_names_it(tmp_path: Path) -> None:
    """torch: the last worker segfaults; jax: the last worker hangs before joining. Both trials end
    (no hang), naming worker 1, and no worker process is left behind."""
    faults = "mlp_shallow-torch-train-w2=crash,mlp_shallow-jax-train-w2=hang"
    run = harness(tmp_path, "run", TINY, "--framework", "torch,jax", "--workers", "2", "--timeout", "30", *DP_RUN,
                  env={"HARNESS_INJECT_FAULTS": faults})  # fmt: skip
    assert run.proc.returncode == 1
    rows = {r["spec"]["framework"]: r for r in run.journal()}  # type: ignore[index]
    crashed, hung = rows["torch"], rows["jax"]
    assert crashed["status"] == "crash", crashed["reason"]
    assert str(crashed["reason"]).startswith("worker 1 of 2 (") and "SIGSEGV" in str(crashed["reason"])
    # a hung worker is found by its peers: rank 0 gave up waiting for rank 1 after the collective timeout;
    # the hung one is named (it had to be stopped), with what its peer reported
    assert hung["status"] == "timeout", hung["reason"]
    reason = str(hung["reason"])
    assert reason.startswith("worker 1 of 2 (") and "stopped answering" in reason, reason
    assert "worker 0 reported" in reason and "rank(s) [1]" in reason and "never joined" in reason
    workers = {w["rank"]: w["status"] for w in hung["environment"]["workers"]}  # type: ignore[index]
    assert workers == {0: "crash", 1: "stopped"}
    out = subprocess.run(["pgrep", "-f", "harness.worker --request"], capture_output=True, text=True)
    assert out.stdout.strip() == ""


@pytest.mark.slow
def test_workers_that_fit_nowhere_exit_2_before_anything_runs(tmp_path: Path) -> None:
    run = harness(tmp_path, "run", TINY, "--framework", "torch", "--workers", "2", "--mode", "train",
                  "--dataset", "synthetic", "--reserve-cores", "1")  # fmt: skip
    assert run.proc.returncode == 2
    assert "fit nowhere" in run.proc.stderr
    assert not list((tmp_path / "runs").glob("*/journal.jsonl")) or not run.journal()


# --- a fake TPU pod slice and typed GPU nodes: a real Ray cluster of several nodes on this machine --


@pytest.fixture(scope="module")
def tpu_cluster() -> Iterator[str]:
    """A head without CPUs, a v4-16 slice of two hosts advertising exactly what Ray gives TPU hosts
    (``TPU`` chips, the slice-name resource, ``TPU-v4-16-head`` on worker 0, the ``ray.io/tpu-*``
    labels), and a node of accelerator type A100. Nothing here has a TPU or a GPU: the trial's
    workers run JAX's CPU backend (``HARNESS_TPU_AS_CPU=1``, inherited by the nodes' workers), so the
    test proves placement, coordination and result collection on a slice, not TPU numbers."""
    from ray.cluster_utils import Cluster

    saved = os.environ.get("HARNESS_TPU_AS_CPU")
    os.environ["HARNESS_TPU_AS_CPU"] = "1"
    c = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    labels = {"ray.io/tpu-slice-name": "slice-a", "ray.io/tpu-pod-type": "v4-16", "ray.io/tpu-topology": "2x2x2"}
    for worker in range(2):
        head = {"TPU-v4-16-head": 1} if worker == 0 else {}
        c.add_node(
            num_cpus=1,
            resources={"TPU": 4, "slice-a": 1, **head},
            labels=labels | {"ray.io/tpu-worker-id": str(worker)},
        )
    c.add_node(num_cpus=1, num_gpus=1, resources={"accelerator_type:A100": 1})
    try:
        yield str(c.address)
    finally:
        c.shutdown()  # type: ignore[no-untyped-call]
        if saved is None:
            os.environ.pop("HARNESS_TPU_AS_CPU", None)
        else:
            os.environ["HARNESS_TPU_AS_CPU"] = saved


SLICE_RUN = ("--framework", "jax", "--device", "tpu", "--mode", "train", "--dataset", "synthetic",
             "--threads", "1", "--reserve-cores", "0")  # fmt: skip


@pytest.mark.slow
def test_a_tpu_slice_trial_runs_one_worker_per_host(tpu_cluster: str, tmp_path: Path) -> None:
    run = harness(tmp_path, "run", TINY, "--address", tpu_cluster, "--tpu-slice", "v4-16", *SLICE_RUN)
    assert run.proc.returncode == 0, run.proc.stderr[-3000:]
    (row,) = run.journal()
    assert row["status"] == "ok", row["reason"]
    spec = row["spec"]
    assert (spec["tpu_slice"], spec["workers"]) == ("v4-16", 2)  # type: ignore[index]
    env = row["environment"]
    assert "fake tpu" in env["HARNESS_TPU_AS_CPU"]  # type: ignore[index]  # the result says it was not a TPU
    workers = env["workers"]  # type: ignore[index]
    assert [w["rank"] for w in workers] == [0, 1]
    # worker i ran on the host whose tpu-worker-id is i (two distinct Ray nodes)
    assert len({w["cpus"][0] for w in workers}) == 2
    assert row["metrics"]["workers"] == 2  # type: ignore[index]
    assert row["environment"]["framework_runtime"]["processes"] == 2  # type: ignore[index]


@pytest.mark.slow
def test_a_slice_type_or_accelerator_type_the_cluster_lacks_exits_2(tpu_cluster: str, tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    with ThreadPoolExecutor(max_workers=2) as pool:  # two independent drivers of the cluster, side by side
        slice_run = pool.submit(harness, tmp_path, "run", TINY, "--address", tpu_cluster, "--tpu-slice", "v4-8",
                                *SLICE_RUN)  # fmt: skip
        gpu_run = pool.submit(harness, tmp_path / "b", "run", TINY, "--address", tpu_cluster, "--framework", "torch",
                              "--device", "gpu", "--accelerator-type", "H100", "--mode", "infer")  # fmt: skip
    run = slice_run.result()
    assert run.proc.returncode == 2
    assert "no TPU slice of type v4-8" in run.proc.stderr and "v4-16" in run.proc.stderr
    run = gpu_run.result()
    assert run.proc.returncode == 2
    assert "no node in the Ray cluster has accelerator type H100" in run.proc.stderr and "A100" in run.proc.stderr
