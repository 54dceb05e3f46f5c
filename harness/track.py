"""MLflow logging; the driver is the only writer (the journal, :mod:`harness.journal`, comes first).

One parent run per batch, one child run per journal entry named ``{architecture}-{framework}-{mode}``
(plus ``-{dataset}`` when it trains on a real dataset). Training curves are step metrics. Logging is
idempotent: a child run is found by its ``batch_id`` + ``trial_key`` + ``attempt`` tags, and one left
half-written by an interrupted driver (still ``RUNNING``) is replaced, so a journal can be replayed
into MLflow any number of times without duplicates.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from harness.contract import TrialResult
from harness.envs import PROJECT_ROOT
from harness.spec import SpecError

EXPERIMENT = "harness"
# MLflow's HTTP client retries for minutes by default; a store that went away should cost seconds.
for _var, _value in (
    ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
    ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
    ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30"),
):
    os.environ.setdefault(_var, _value)


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


def check_store(uri: str, timeout_s: float = 5.0) -> Tracker:
    """A tracker for ``uri``, or a one-line :class:`SpecError` saying what failed and how to fix it."""
    local_fix = "or use a local store (--tracking-uri sqlite:///mlflow.db)"
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
                pass
        except (urllib.error.URLError, OSError) as e:
            why = getattr(e, "reason", e)
            why = getattr(why, "strerror", None) or why
            port = uri.rsplit(":", 1)[-1].split("/")[0]
            start = f"`mlflow server --host 127.0.0.1 --port {port}`" if port.isdigit() else "the tracking server"
            problem = f"cannot reach the MLflow tracking server at {uri} ({why})"
            raise SpecError(f"{problem}; start {start} {local_fix}") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        if not os.access(folder, os.W_OK):
            raise SpecError(f"MLflow store {uri}: folder {folder} is not writable; pass a writable --tracking-uri")
    try:
        return Tracker(uri)
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise SpecError(f"MLflow store {uri} does not work ({type(e).__name__}: {first}); {local_fix}") from None


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
        query = f"tags.batch_id = '{batch_id}' and tags.trial_key = '{key}' and tags.attempt = '{attempt}'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=10)
        for run in runs:
            if run.info.status != "RUNNING":
                return str(run.info.run_id)
            self.client.delete_run(run.info.run_id)  # half-written by an interrupted driver
        s = result.spec
        start_ms = int((result.started_at or time.time()) * 1000)
        identity = {"batch_id": batch_id, "trial_key": key, "attempt": str(attempt), "harness_kind": "trial"}
        run = self.client.create_run(  # findable from the start: a half-written run is found and replaced
            self.experiment_id,
            run_name=s.name,
            start_time=start_ms,
            tags={"mlflow.parentRunId": parent_id, **identity},
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
        tags = {  # besides the identity tags the run was created with
            "status": result.status,
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
