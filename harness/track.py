"""Results journal (durable, on disk) and MLflow logging; the driver is the only writer.

Every result is appended to ``<runs>/<batch_id>/journal.jsonl`` first, then logged to MLflow: one
parent run per batch, one child run per trial named ``{architecture}-{framework}-{mode}`` (plus
``-{dataset}`` when it trains on a real dataset). Training curves are step metrics. Logging
is idempotent (a child run is found by its ``batch_id`` + ``trial_key`` tags), so ``harness sync``
can replay a journal into MLflow without duplicates.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.envs import PROJECT_ROOT
from harness.spec import TrialResult

EXPERIMENT = "harness"
# Outcomes that are deterministic: ``--resume`` skips them. Others (crash, timeout, ...) run again.
FINAL = ("ok", "unsupported", "diverged")


def new_batch_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


@dataclass
class Batch:
    """A batch's folder: ``batch.json`` (what was asked) and ``journal.jsonl`` (what happened)."""

    root: Path
    batch_id: str

    @property
    def dir(self) -> Path:
        return self.root / self.batch_id

    @property
    def journal(self) -> Path:
        return self.dir / "journal.jsonl"

    @property
    def meta_path(self) -> Path:
        return self.dir / "batch.json"

    def exists(self) -> bool:
        return self.meta_path.exists()

    def meta(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.meta_path.read_text())
        return data

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(self.meta_path)

    def append(self, result: TrialResult) -> None:
        """Durably append one result (flushed and fsynced before MLflow sees it)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.journal, "a+b") as f:
            torn = False
            if f.seek(0, os.SEEK_END) > 0:  # a crash mid-write leaves a line without its newline
                f.seek(-1, os.SEEK_END)
                torn = f.read(1) != b"\n"
            f.write((b"\n" if torn else b"") + result.to_json().encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def results(self) -> list[TrialResult]:
        """The latest result per trial key, in journal order (a torn last line is ignored)."""
        latest: dict[str, TrialResult] = {}
        if self.journal.exists():
            for line in self.journal.read_text().splitlines():
                try:
                    r = TrialResult.from_json(line)
                except ValueError:
                    continue
                latest.pop(r.trial_key, None)
                latest[r.trial_key] = r
        return list(latest.values())

    def finished_keys(self) -> dict[str, TrialResult]:
        return {r.trial_key: r for r in self.results() if r.status in FINAL}


def latest_batch(root: Path) -> Batch | None:
    batches = sorted((p for p in root.glob("*/batch.json")), key=lambda p: p.stat().st_mtime)
    return Batch(root, batches[-1].parent.name) if batches else None


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}


def _metrics(result: TrialResult, timestamp_ms: int) -> list[Any]:
    """Scalar metrics at step 0 and history series as step metrics (x axis: the training step).

    A scalar that is also a stepped series (``val_accuracy``: the final evaluation is the series'
    last point) is logged only as the series, so MLflow's latest value of the key is the final one.
    A series without steps that shares a scalar's name (journals from before ``history_steps``) is
    logged as ``{key}_curve`` so it cannot shadow the scalar.
    """
    from mlflow.entities import Metric

    out: list[Metric] = []
    stepped: set[str] = set()
    for key, series in result.history.items():
        steps = result.history_steps.get(key)
        if steps is not None and len(steps) == len(series):
            stepped.add(key)
        else:
            steps = list(range(len(series)))
            key = f"{key}_curve" if key in result.metrics else key
        out += [Metric(key, v, timestamp_ms, step) for v, step in zip(series, steps, strict=True) if math.isfinite(v)]
    out += [Metric(k, v, timestamp_ms, 0) for k, v in _finite(result.metrics).items() if k not in stepped]
    return out


class Tracker:
    """MLflow writer for one tracking URI (SQLite file, or a tracking server)."""

    def __init__(self, uri: str, experiment: str = EXPERIMENT):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(experiment)

    def _find(self, filter_string: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1)
        return runs[0].info.run_id if runs else None

    def parent_run(self, batch_id: str, suite: str, meta: dict[str, Any]) -> str:
        found = self._find(f"tags.batch_id = '{batch_id}' and tags.harness_kind = 'batch'")
        if found:
            return found
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"batch-{suite}-{batch_id}",
            tags={
                "batch_id": batch_id,
                "harness_kind": "batch",
                "suite": suite,
                "git_commit": meta.get("git_commit", ""),
            },
        )
        self.client.log_dict(run.info.run_id, meta, "batch.json")
        return str(run.info.run_id)

    def finish_parent(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    def log_result(self, parent_id: str, batch_id: str, result: TrialResult) -> str:
        """One child run for the result; returns the existing one if it was logged before."""
        from mlflow.entities import Param, RunTag

        key, attempt = result.trial_key, result.attempt
        found = self._find(f"tags.batch_id = '{batch_id}' and tags.trial_key = '{key}' and tags.attempt = '{attempt}'")
        if found:
            return found
        s = result.spec
        start_ms = int((result.started_at or time.time()) * 1000)
        run = self.client.create_run(
            self.experiment_id,
            run_name=s.name,
            start_time=start_ms,
            tags={"mlflow.parentRunId": parent_id},
        )
        run_id = str(run.info.run_id)
        params = {
            "architecture": s.architecture,
            "framework": s.framework,
            "framework_version": result.framework_version,
            "mode": s.mode,
            "scenario": s.scenario,
            "device": s.device,
            "batch_size": s.batch_size,
            "precision": s.precision,
            "compile": result.compile_mode or s.compile,
            "compile_requested": s.compile,
            "threads": s.threads,
            "dataset": s.dataset,
            "optimizer": s.train.optimizer,
            "learning_rate": s.train.learning_rate,
            "train_steps": s.train.steps,
            "eval_every": s.train.eval_every,
            "target_accuracy": s.train.target_accuracy if s.train.target_accuracy is not None else "none",
            "seed": s.seed,
        }
        if s.options:
            params["options"] = json.dumps(s.options, sort_keys=True)
        tags = {
            "trial_key": result.trial_key,
            "batch_id": batch_id,
            "harness_kind": "trial",
            "status": result.status,
            "attempt": str(result.attempt),
            "host": str(result.environment.get("hostname", "")),
            "git_commit": str(result.environment.get("git_commit", "")),
            "reason": result.reason[:5000],
        }
        metrics = _metrics(result, start_ms)
        for i in range(0, max(len(metrics), 1), 1000):
            self.client.log_batch(
                run_id,
                metrics=metrics[i : i + 1000],
                params=[Param(k, str(v)) for k, v in params.items()] if i == 0 else [],
                tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [],
            )
        self.client.log_dict(run_id, json.loads(result.to_json()), "result.json")
        end_ms = start_ms + int(result.wall_s * 1000)
        self.client.set_terminated(run_id, "FINISHED" if result.status == "ok" else "FAILED", end_time=end_ms)
        return run_id

    def batch_results(self, batch_id: str) -> list[TrialResult]:
        """Results of a batch read back from MLflow (each child run's result.json artifact)."""
        import tempfile

        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.batch_id = '{batch_id}' and tags.harness_kind = 'trial'",
            max_results=5000,
        )
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            for run in runs:
                path = self.client.download_artifacts(run.info.run_id, "result.json", tmp)
                results.append(TrialResult.from_json(Path(path).read_text()))
        return sorted(results, key=lambda r: r.started_at)
