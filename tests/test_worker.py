"""The worker side: imports without the driver's packages, runs a trial from a request file, and has
one unit per scenario of the contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

from harness.contract import Scenario, TrialRequest, TrialResult, TrialSpec
from harness.worker.scenarios import SCENARIOS
from tests.conftest import REPO

DRIVER_ONLY = ("pydantic", "ray", "mlflow", "rich", "psutil", "sklearn", "mnist1d")

BLOCK = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {DRIVER_ONLY!r}:
            raise ImportError(f"driver-only package {{name}} imported on the worker side")
sys.meta_path.insert(0, Block())
"""


def test_every_scenario_of_the_contract_has_one_unit() -> None:
    assert set(SCENARIOS) == set(get_args(Scenario))


def test_trial_scenarios_follow_its_mode_and_data() -> None:
    base = {"architecture": "mlp_shallow", "framework": "torch", "batch_size": 8, "threads": 1}
    assert TrialSpec(mode="infer", **base).scenarios == ("infer_offline", "infer_single_stream")  # type: ignore[arg-type]
    assert TrialSpec(mode="train", **base).scenarios == ("train_throughput",)  # type: ignore[arg-type]
    assert TrialSpec(mode="serve", **base).scenarios == ("infer_server",)  # type: ignore[arg-type]
    trained = TrialSpec(mode="train", dataset="mnist1d", train={"steps": 2}, **base)  # type: ignore[arg-type]
    assert trained.scenarios == ("train_throughput", "train_to_accuracy")


def test_worker_side_imports_and_runs_without_driver_packages(tmp_path: Path) -> None:
    spec = TrialSpec(
        architecture="mlp_shallow", framework="torch", mode="infer", batch_size=8, threads=1,
        measure={"warmup_steps": 0, "min_steps": 2, "min_time_s": 0.0, "window_steps": 1, "latency_requests": 2},
    )  # type: ignore[arg-type]  # fmt: skip
    request = tmp_path / "request.json"
    request.write_text(TrialRequest(spec=spec, cache_dir=str(tmp_path)).to_json())
    out = tmp_path / "result.json"
    code = BLOCK + (
        "import harness.contract, harness.metrics, harness.worker.trial, harness.worker.scenarios\n"
        "import adapters, workloads.datasets, workloads.architectures.reference\n"
        "from harness.worker.__main__ import main\n"
        f"sys.exit(main(['--request', {str(request)!r}, '--out', {str(out)!r}]))\n"
    )
    package = tmp_path / "powercap" / "intel-rapl:0"  # a RAPL package whose counter stands still
    package.mkdir(parents=True)
    for name, value in (("name", "package-0"), ("energy_uj", "5"), ("max_energy_range_uj", "100")):
        (package / name).write_text(value)
    env = {**os.environ, "HARNESS_POWERCAP_ROOT": str(package.parent)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = TrialResult.from_json(out.read_text())
    assert result.status == "ok", result.reason
    assert result.trial_key == spec.trial_key and result.metrics["throughput_samples_per_s"] > 0
    loaded = json.loads(out.read_text())
    assert set(loaded["samples"]) == {"offline_window_s", "single_stream_request_s"}
    assert result.environment["energy_source"] == "rapl"  # read before and after the timed windows ...
    assert result.environment["node"]["energy"]["cpu"].startswith("rapl: 1 package domain(s)")
    assert "energy_j_per_sample" not in result.metrics  # ... but it did not advance: no figure


def test_a_malformed_request_is_rejected_by_the_worker(tmp_path: Path) -> None:
    spec = TrialSpec(architecture="mlp_shallow", framework="torch", mode="infer", batch_size=8, threads=1)
    data = TrialRequest(spec=spec).to_dict()
    data["spec"]["batch_size"] = 0  # the same validation as on the driver
    request = tmp_path / "request.json"
    request.write_text(json.dumps(data))
    proc = subprocess.run(
        [sys.executable, "-m", "harness.worker", "--request", str(request), "--out", str(tmp_path / "r.json")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "batch_size: input should be greater than 0" in proc.stderr
