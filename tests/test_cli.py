"""End to end through the CLI: a real embedded Ray, real worker processes, a real SQLite MLflow store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO, is_trial_worker
from workloads.architectures import get

TINY = str(REPO / "tests" / "suites" / "tiny.toml")
PARAMS = {"architecture", "framework", "framework_version", "mode", "scenario", "device", "batch_size",
          "precision", "compile", "threads", "dataset"}  # fmt: skip
METRICS = {"param_count", "throughput_samples_per_s", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99",
           "compile_s", "peak_host_rss_mb", "host_mem_delta_mb", "flops_per_sample", "achieved_gflops",
           "peak_fraction"}  # fmt: skip
TRAINED = {"train_accuracy", "val_accuracy", "final_loss"}

pytestmark = pytest.mark.slow


@dataclass
class Run:
    proc: subprocess.CompletedProcess[str]
    cwd: Path
    uri: str

    @property
    def batch_id(self) -> str:
        (meta,) = (self.cwd / "runs").glob("*/batch.json")
        return meta.parent.name

    def journal(self) -> list[dict[str, object]]:
        path = self.cwd / "runs" / self.batch_id / "journal.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


def harness(cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 400) -> Run:
    uri = f"sqlite:///{cwd / 'mlflow.db'}"
    full_env = {**os.environ, "HARNESS_RUNS_DIR": str(cwd / "runs"), "MLFLOW_TRACKING_URI": uri, **(env or {})}
    full_env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(proc, cwd, uri)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = harness(tmp_path_factory.mktemp("tiny"), "run", TINY)
    assert run.proc.returncode == 0, run.proc.stdout + run.proc.stderr
    return run


def test_run_prints_table_and_ui_hint(tiny_run: Run) -> None:
    out = tiny_run.proc.stdout
    for fw in ("torch", "jax"):
        assert f"mlp_shallow-{fw}-train" in out
    table = out[out.index("batch " + tiny_run.batch_id + " (tiny)") : out.index("journal:")]
    assert "samples/s [95% CI]" in table and "acc" in table and "p50/p99 ms" in table
    assert max(map(len, table.splitlines())) <= 100, table  # fits a terminal
    assert f"mlflow ui --backend-store-uri {tiny_run.uri}" in out
    assert re.search(r"\(ETA \d+[hms]", out)  # on each finished trial's line while trials remain


def _client(run: Run) -> tuple[MlflowClient, str]:
    client = MlflowClient(run.uri)
    exp = client.get_experiment_by_name("harness")
    assert exp is not None
    return client, exp.experiment_id


def test_mlflow_ui_gets_kind_description_figures_and_datasets(tiny_run: Run) -> None:
    from harness import track
    from workloads import datasets

    client, exp_id = _client(tiny_run)
    assert client.get_experiment(exp_id).tags[track.EXPERIMENT_KIND_TAG] == track.EXPERIMENT_KIND
    runs = client.search_runs([exp_id], f"tags.batch_id = '{tiny_run.batch_id}'")
    (parent,) = [r for r in runs if r.data.tags["harness_kind"] == "batch"]
    children = [r for r in runs if r.data.tags["harness_kind"] == "trial"]
    note = parent.data.tags[track.NOTE_TAG]
    assert f"**Batch `{tiny_run.batch_id}`** · suite `tiny`" in note
    assert note.count("| mlp_shallow |") == 4 and "harness run " in note and "--seed" in note
    assert "Verdicts, other values of framework" in note  # torch and jax, cell by cell
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "figures")}
    for name in ("throughput", "latency", "curves", "memory", "verdicts"):
        assert {f"figures/{name}.png", f"figures/{name}.svg"} <= artifacts, name
    assert "report.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    mnist1d = datasets.prepare("mnist1d").sha256[: track.DIGEST]
    for r in children:
        assert r.inputs is not None
        inputs = {d.dataset.name: d for d in r.inputs.dataset_inputs}
        assert f"synthetic-{r.data.params['architecture']}" in inputs
        if r.data.params["mode"] == "train":
            assert inputs["mnist1d"].dataset.digest == mnist1d
            assert [t.value for t in inputs["mnist1d"].tags if t.key == "mlflow.data.context"] == ["training"]
    lines = tiny_run.proc.stdout.splitlines()
    url = next(line for line in lines if "compare-runs" in line)
    assert url.startswith("  compare the batch's runs: http://127.0.0.1:5000/#/compare-runs?runs=")
    assert all(r.info.run_id in url for r in children)
    assert f"  runs: http://127.0.0.1:5000/#/experiments/{exp_id}?workflowType=machine_learning" in lines
    assert any(parent.info.run_id in line for line in lines if line.startswith("  the batch:"))


def test_report_writes_one_self_contained_file(tiny_run: Run, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    run = harness(tiny_run.cwd, "report", tiny_run.batch_id, "-o", str(out))
    assert run.proc.returncode == 0, run.proc.stderr
    page = out.read_text()
    assert page.count("data-trial-key=") == 4 and "<script" not in page
    assert page.count('src="data:image/png;base64,') >= 5
    # the same from MLflow alone (no journal here), against the batch itself: every cell "same" or inconclusive
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = harness(elsewhere, "report", tiny_run.batch_id, "--against", tiny_run.batch_id, "--tracking-uri",
                    tiny_run.uri, "-o", "r.html")  # fmt: skip
    assert again.proc.returncode == 0, again.proc.stderr
    page = (elsewhere / "r.html").read_text()
    assert page.count("data-trial-key=") == 4 and f"Verdicts: batch {tiny_run.batch_id} against" in page
    client, exp_id = _client(tiny_run)
    (parent,) = client.search_runs([exp_id], f"tags.batch_id = '{tiny_run.batch_id}' and tags.harness_kind = 'batch'")
    assert f"report-vs-{tiny_run.batch_id}.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_journal_has_every_trial(tiny_run: Run) -> None:
    rows = tiny_run.journal()
    assert {(r["spec"]["framework"], r["spec"]["mode"]) for r in rows} == {  # type: ignore[index]
        ("torch", "train"), ("torch", "infer"), ("jax", "train"), ("jax", "infer")}  # fmt: skip
    assert all(r["status"] == "ok" for r in rows)
    for r in rows:
        env = r["environment"]
        assert env["threads"] == len(env["cpus"])  # type: ignore[index]
        assert env["niceness"] == 0  # type: ignore[index]


def test_mlflow_runs_params_metrics_tags(tiny_run: Run) -> None:
    client = MlflowClient(tiny_run.uri)
    exp = client.get_experiment_by_name("harness")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], f"tags.batch_id = '{tiny_run.batch_id}'")
    parents = [r for r in runs if r.data.tags.get("harness_kind") == "batch"]
    children = [r for r in runs if r.data.tags.get("harness_kind") == "trial"]
    assert len(parents) == 1 and len(children) == 4
    names = {r.info.run_name for r in children}
    assert names == {f"mlp_shallow-{fw}-{mode}" for fw in ("torch", "jax") for mode in ("train-mnist1d", "infer")}
    for r in children:
        assert r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert set(r.data.params) >= PARAMS
        assert r.data.params["framework"] in ("torch", "jax")
        assert set(r.data.metrics) >= METRICS, METRICS - set(r.data.metrics)
        assert r.data.metrics["throughput_samples_per_s"] > 0
        assert r.data.metrics["param_count"] == get("mlp_shallow").param_count()  # 1x40 -> 100 -> 10: 5110
        assert {"trial_key", "batch_id", "status"} <= set(r.data.tags)
        assert r.data.tags["status"] == "ok"
        artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"results.json", "processes.json"} <= artifacts
        if r.data.params["mode"] == "train":
            assert set(r.data.metrics) >= TRAINED
            assert r.data.metrics["val_accuracy"] > 0.2  # 10 classes: chance is 0.1
            loss = client.get_metric_history(r.info.run_id, "loss")
            assert [m.step for m in loss] == list(range(40))
            for key in ("val_accuracy", "val_loss", "train_accuracy"):  # evaluated every 20 steps
                assert [m.step for m in client.get_metric_history(r.info.run_id, key)] == [20, 40], key


def test_same_weights_same_accuracy_across_frameworks(tiny_run: Run) -> None:
    train = [r for r in tiny_run.journal() if r["spec"]["mode"] == "train"]  # type: ignore[index]
    accs = [r["metrics"]["val_accuracy"] for r in train]  # type: ignore[index]
    assert abs(accs[0] - accs[1]) <= 0.02  # same data order and weights: only float noise differs


def test_compare_reprints_table(tiny_run: Run) -> None:
    out = harness(tiny_run.cwd, "compare", tiny_run.batch_id).proc
    assert out.returncode == 0
    assert out.stdout.count("mlp_shallow") == 4


def test_compare_reads_mlflow_when_journal_is_gone(tiny_run: Run, tmp_path: Path) -> None:
    run = harness(tmp_path, "compare", tiny_run.batch_id, "--tracking-uri", tiny_run.uri)
    assert run.proc.returncode == 0, run.proc.stderr
    assert run.proc.stdout.count("mlp_shallow") == 4


def test_resume_skips_finished_trials(tiny_run: Run) -> None:
    again = harness(tiny_run.cwd, "run", TINY, "--resume", tiny_run.batch_id)
    assert again.proc.returncode == 0, again.proc.stderr
    assert "4 processes already finished, 0 to run" in again.proc.stdout
    client = MlflowClient(tiny_run.uri)
    exp = client.get_experiment_by_name("harness")
    assert exp is not None
    runs = client.search_runs(
        [exp.experiment_id], f"tags.batch_id = '{tiny_run.batch_id}' and tags.harness_kind = 'trial'"
    )
    assert len(runs) == 4  # no duplicates


def test_crash_and_hang_end_with_status_and_batch_finishes(tmp_path: Path) -> None:
    faults = "mlp_shallow-jax-train-mnist1d=crash,mlp_shallow-torch-infer=hang,mlp_shallow-jax-infer=raise"
    # the hang costs the whole timeout; the trials that end (forked from a fork server with the framework
    # imported) take well under a second, and the timeout's clock starts at the fork
    run = harness(tmp_path, "run", TINY, "--timeout", "10", env={"HARNESS_INJECT_FAULTS": faults})
    assert run.proc.returncode == 1  # some trials failed, the batch still completed
    status = {f"{r['spec']['framework']}-{r['spec']['mode']}": r for r in run.journal()}  # type: ignore[index]
    assert status["jax-train"]["status"] == "crash"
    assert "SIGSEGV" in status["jax-train"]["reason"]  # type: ignore[operator]
    assert status["torch-infer"]["status"] == "timeout"
    assert status["jax-infer"]["status"] == "failed"
    assert "injected failure" in status["jax-infer"]["stderr_tail"]  # type: ignore[operator]
    assert status["torch-train"]["status"] == "ok"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "smoke", "--framework", "pytorch"],
            "unknown framework 'pytorch'; choose from torch, tensorflow, jax, mxnet",
        ),
        (["run", "smoke", "--arch", "vgg"], "unknown architecture 'vgg'; choose from"),
        (["run", "smoke", "--mode", "predict"], "unknown mode 'predict'; choose from train, infer, serve"),
        (["run", "smoke", "--batch-size", "0"], "batch size must be a positive integer"),
        (["run", "smoke", "--batch-size", "x"], "batch sizes must be integers"),
        (["run", "smoke", "--device", "npu"], "unknown device 'npu'; choose from cpu, gpu, tpu"),
        (["run", "smoke", "--dataset", "mnist1d,cifar10"], "unknown dataset 'cifar10'; choose from synthetic, mnist1d"),
        (
            ["run", "smoke", "--arch", "lenet5", "--mode", "train", "--dataset", "mnist1d", "--dataset", "digits"],
            "no selected architecture can train on the selected datasets: mnist1d: lenet5 cannot take samples",
        ),
        (["run", "nosuchsuite"], "unknown suite 'nosuchsuite'; choose from"),
        (["run", "smoke", "--resume", "nope"], "no batch 'nope'"),
        (["compare", "nope"], "no batch 'nope'"),
        (["run", "smoke", "--repeats", "0"], "repeats must be a positive integer"),
        (["run", "smoke", "--reserve-cores", "-1"], "reserve cores must be 0 or more"),
        (["run", "smoke", "--reserve-cores", "512"], "leaves none for trials"),
        (["compare", "a", "b", "c"], "compare takes one batch"),
        (["compare", "a", "--threshold", "five"], "threshold must be a percentage"),
        (["calibrate", "--framework", "caffe"], "unknown framework 'caffe'"),
    ],
)
def test_bad_input_exits_2_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    from tests.conftest import harness_in_process  # harness.cli.main here: no interpreter start-up per case

    run = harness_in_process(monkeypatch, capsys, tmp_path, *args)
    assert run.code == 2
    assert message in run.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*/journal.jsonl"))


def test_malformed_suite_file_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import harness_in_process  # harness.cli.main here: no interpreter start-up per case

    bad = tmp_path / "bad.toml"
    bad.write_text('frameworks = ["torch"\n')
    run = harness_in_process(monkeypatch, capsys, tmp_path, "run", str(bad))
    assert run.code == 2 and "not valid TOML" in run.stderr
    bad.write_text('frameworks = ["torch"]\narchitectures = ["mlp_shallow"]\nbatch_sizes = [-4]\n')
    run = harness_in_process(monkeypatch, capsys, tmp_path, "run", str(bad))
    assert run.code == 2 and "batch_sizes" in run.stderr


def test_device_no_node_has_exits_2(tmp_path: Path) -> None:
    run = harness(tmp_path, "run", TINY, "--device", "gpu", "--framework", "torch", timeout=120)
    assert run.proc.returncode == 2
    assert "no node in the Ray cluster has a GPU" in run.proc.stderr
    assert not list((tmp_path / "runs").glob("*/journal.jsonl"))


def test_dry_run_shows_matrix_and_skips(tmp_path: Path) -> None:
    run = harness(tmp_path, "run", TINY, "--device", "cpu,tpu", "--framework", "torch", "--dry-run", timeout=60)
    assert run.proc.returncode == 0, run.proc.stderr
    out = run.proc.stdout
    assert "2 cells x 1 process(es) to run, 2 skipped" in out
    assert "torch does not support device 'tpu'" in out
    assert "nothing was run" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_dry_run_with_datasets_shows_incompatible_pairs(tmp_path: Path) -> None:
    args = ["--arch", "mlp_shallow,lenet5", "--framework", "torch", "--mode", "train", "--dry-run"]
    run = harness(tmp_path, "run", TINY, "--dataset", "mnist1d", "--dataset", "digits32", *args, timeout=60)
    assert run.proc.returncode == 0, run.proc.stderr
    out = run.proc.stdout
    assert "3 cells x 1 process(es) to run, 1 skipped" in out
    for name in ("mlp_shallow-torch-train-mnist1d", "mlp_shallow-torch-train-digits32", "lenet5-torch-train-digits32"):
        assert name in out
    assert "mnist1d: lenet5 cannot take samples of shape (1, 40)" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()


def test_list_and_help(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import harness_in_process  # harness.cli.main here: no interpreter start-up per command

    out = harness_in_process(monkeypatch, capsys, tmp_path, "list")
    assert out.code == 0
    mxnet_python = str(REPO / ".venvs" / "mxnet" / "bin" / "python")
    for word in ("torch", "tensorflow", "jax", "mxnet", "2.13.0", "2.21.0", "0.10.2", "1.9.1", mxnet_python,
                 "mlp_deep", "cnn1d", "mnist1d", "smoke", sys.executable,
                 "gpt2_small", "124,439,808", "resnet50", "25,557,032", "vit_b16",  # presets, with their sizes
                 "NAME[key=value,...]", "[depth=8,width=256,input=40,classes=10]"):  # fmt: skip
        assert word in out.stdout, word
    for cmd in ("run", "list", "doctor", "compare", "sync"):
        h = harness_in_process(monkeypatch, capsys, tmp_path, cmd, "--help")
        assert h.code == 0 and "usage: harness" in h.stdout


def test_doctor_checks_everything(doctors: dict[str, Run]) -> None:
    out = doctors["ok"].proc  # run beside the next test's doctor (tests/conftest.py)
    assert out.returncode == 0, out.stdout + out.stderr
    for word in ("torch 2.13.0", "tensorflow 2.21.0", "jax 0.10.2", "mxnet 1.9.1", "Ray starts", "is writable"):
        assert word in out.stdout, word


def test_doctor_reports_missing_framework_with_fix(doctors: dict[str, Run]) -> None:
    out = doctors["no_jax"].proc  # HARNESS_PYTHON_JAX: a python that does not exist
    assert out.returncode == 1
    assert "does not exist" in out.stdout and "make setup" in out.stdout


def test_worker_dies_with_its_launcher(tmp_path: Path) -> None:
    """A worker whose launcher is killed does not linger (it runs in its own session)."""
    import signal
    import time

    import psutil

    script = (
        "from harness.launch import launch\n"
        "from harness.contract import TrialSpec\n"
        "spec = TrialSpec(architecture='mlp_shallow', framework='torch', mode='infer', batch_size=8, threads=1)\n"
        "launch(spec, cpus=None, fault='hang')\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    deadline = time.monotonic() + 60
    worker = None
    while worker is None and time.monotonic() < deadline:  # bounded wait for the worker to appear
        kids = psutil.Process(launcher.pid).children(recursive=True)
        worker = next((k for k in kids if is_trial_worker(k)), None)
        time.sleep(0.2)
    assert worker is not None, "worker never started"
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    gone, alive = psutil.wait_procs([worker], timeout=30)
    assert worker in gone and not alive


def test_same_cpu_set_and_threads_in_every_framework(tmp_path: Path) -> None:
    """Thread parity: what each framework's worker reports about its CPU set and thread pools."""
    frameworks = "torch,tensorflow,jax,mxnet"
    run = harness(tmp_path, "run", TINY, "--framework", frameworks, "--mode", "infer", "--threads", "1")
    assert run.proc.returncode == 0, run.proc.stdout[-3000:] + run.proc.stderr[-3000:]
    envs = {r["spec"]["framework"]: r["environment"] for r in run.journal()}  # type: ignore[index]
    assert set(envs) == set(frameworks.split(","))
    for fw, env in envs.items():
        assert len(env["cpus"]) == 1 and env["threads"] == 1, fw  # type: ignore[index]
        assert env["thread_env"]["OMP_NUM_THREADS"] == "1", fw  # type: ignore[index]
    runtime = {fw: env["framework_runtime"] for fw, env in envs.items()}  # type: ignore[index]
    assert all(r["threads"] == 1 for r in runtime.values()), runtime  # the common key, in every framework
    assert runtime["torch"]["intra_op_threads"] == 1
    assert runtime["tensorflow"]["intra_op_threads"] == 1
    assert runtime["jax"]["schedulable_cpus"] == 1
    assert "intra_op_parallelism_threads=1" in runtime["jax"]["xla_flags"]
    assert runtime["mxnet"]["omp_threads"] == "1" and runtime["mxnet"]["engine_threads"] == "1"
    assert {r["compile_mode"] for r in run.journal()} == {"eager", "xla", "jit", "hybridize"}


def test_a_serve_cell_runs_end_to_end(tmp_path: Path) -> None:
    """``--mode serve``: the worker's server scenario, its row in the table, its metrics and search in MLflow."""
    run = harness(tmp_path, "run", TINY, "--framework", "torch", "--mode", "serve")
    out = run.proc.stdout
    assert run.proc.returncode == 0, out[-3000:] + run.proc.stderr[-3000:]
    (result,) = run.journal()
    metrics: dict[str, float] = result["metrics"]  # type: ignore[assignment]
    assert result["status"] == "ok" and result["spec"]["mode"] == "serve"  # type: ignore[index]
    for key in ("server_p99_bound_ms", "server_latency_ms_p99", "server_capacity_qps", "server_rate_qps"):
        assert metrics[key] > 0, key
    assert metrics["server_buckets"] == 6  # 1, 2, 4, 8, 16, 32
    assert 0 < len(result["samples"]["server_request_s"]) <= metrics["server_probe_requests"]  # type: ignore[index]
    row = next(line for line in out.splitlines() if line.split()[:3] == ["mlp_shallow", "torch", "serve"])
    assert ("max" in row or "none met" in row) and row.split()[-1] == "ok", row
    client, exp_id = _client(run)
    (child,) = client.search_runs([exp_id], "tags.harness_kind = 'trial'")
    assert child.data.params["scenario"] == "server" and "server_latency_ms_p50" in child.data.metrics
    probes = client.get_metric_history(child.info.run_id, "server_probe_p99_ms")
    assert len(probes) == metrics["server_probes"] and [p.step for p in probes] == list(range(len(probes)))
