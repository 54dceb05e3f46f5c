"""MLflow logging; the driver is the only writer (the journal, :mod:`harness.journal`, comes first).

One parent run per batch, one child run per cell (not per process: the UI slows past a few hundred
runs) named ``{architecture}-{framework}-{mode}`` (plus ``-{dataset}`` when it trains on a real
dataset), with the cell's figures (:mod:`harness.cells`: estimates over its processes, the
between-process interval as ``throughput_ci_low/high``, ``throughput_cv_between``, ``repeats``, the
``unstable`` tag), each process's values as a table artifact (``processes.json``) and every process's
raw result (``results.json``). Training curves are step metrics. Logging is idempotent: a child run
is found by its ``batch_id`` + ``trial_key`` tags and the digest of its processes; one left
half-written by an interrupted driver (still ``RUNNING``) or from fewer processes is replaced, so a
journal can be replayed into MLflow any number of times without duplicates.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.cells import ONE_PROCESS, Cell
from harness.contract import TrialResult, TrialSpec
from harness.envs import PROJECT_ROOT
from harness.journal import processes_digest
from harness.spec import SpecError

if TYPE_CHECKING:
    from mlflow.entities import DatasetInput

    from harness.figures import Figure

EXPERIMENT = "harness"
# MLflow's UI opens an experiment on its training runs (not the GenAI overview) for this kind
# (the experiment tag its 3.x UI reads and sets: ``ExperimentKind.CUSTOM_MODEL_DEVELOPMENT``)
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # a run's Markdown description in the UI
PARENT_TAG = "mlflow.parentRunId"  # nests a run under another in the UI
UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` serves a local store
COMPARE_MAX_RUNS = 100  # runs on one compare page (its URL lists them; the page is slow beyond)
TRAINING_VIEW = "workflowType=machine_learning"  # MLflow 3.x UI: the model-training pages, not GenAI's
# MLflow's HTTP client retries for minutes by default; a store that went away should cost seconds.
for _var, _value in (
    ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),
    ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
    ("MLFLOW_HTTP_REQUEST_TIMEOUT", "30"),
    ("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true"),  # the CLI prints the batch's pages itself
):
    os.environ.setdefault(_var, _value)


def default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


GIT_COMMIT_ENV = "HARNESS_GIT_COMMIT"  # images and Ray job working dirs ship the code without .git


def git_commit() -> str:
    """The project's commit (``-dirty`` with local changes); ``$HARNESS_GIT_COMMIT`` where there is no
    ``.git`` (container images built with ``--build-arg GIT_COMMIT=...``, a Ray job's working dir)."""
    given = os.environ.get(GIT_COMMIT_ENV)
    if given:
        return given
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


def check_store(uri: str, timeout_s: float = 5.0, create: bool = True) -> Tracker:
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
        return Tracker(uri, create=create)
    except LookupError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise SpecError(f"MLflow store {uri} does not work ({type(e).__name__}: {first}); {local_fix}") from None


def ui_base(uri: str) -> str:
    """Where the MLflow UI of a store is: the tracking server itself, or `mlflow ui`'s default address."""
    return uri.rstrip("/") if uri.startswith(("http://", "https://")) else UI_DEFAULT


def _tensor_schema(sample: tuple[int, ...], dtype: str, label: tuple[int, ...] = ()) -> str:
    """The schema MLflow's dataset view shows (its ``mlflow_tensorspec`` form): samples and labels."""

    def spec(shape: list[int], kind: str) -> str:
        return json.dumps([{"type": "tensor", "tensor-spec": {"dtype": kind, "shape": shape}}])

    features, targets = spec([-1, *sample], dtype), spec([-1, *label], "int64")
    return json.dumps({"mlflow_tensorspec": {"features": features, "targets": targets}})


@lru_cache(maxsize=256)
def _synthetic_input(architecture: str, dataset: str, batch: int, seed: int) -> tuple[str, str, str, str]:
    """(digest, source, schema, profile) of a trial's synthetic timing batch (as the worker makes it)."""
    from workloads import datasets
    from workloads.architectures import get

    arch = get(architecture)
    if dataset != datasets.SYNTHETIC:
        info = datasets.INFO[dataset]
        arch = arch.for_data(info.sample_shape, info.dtype, info.vocab_size)
    x, y = datasets.synthetic(
        arch.input_shape, arch.num_classes, batch, seed, vocab_size=arch.vocab_size, label_shape=arch.label_shape
    )
    source = {"tags": {"generator": "workloads.datasets.synthetic", "seed": str(seed), "samples": str(batch)}}
    profile = {"features_shape": list(x.shape), "targets_shape": list(y.shape)}
    digest = datasets.content_hash({"x": x, "y": y})[:DIGEST]
    schema = _tensor_schema(arch.input_shape, str(x.dtype), arch.label_shape)
    return digest, json.dumps(source), schema, json.dumps(profile)


DIGEST = 16  # hex digits of the content hash shown as a dataset's digest (MLflow allows 36)


def dataset_inputs(spec: TrialSpec) -> list[DatasetInput]:
    """The data a cell ran on, as MLflow run inputs (the runs table's Dataset column): the synthetic
    timing batch, and the real data set a train-to-accuracy cell learned from. Digests are the
    content hashes the harness computes (:func:`workloads.datasets.content_hash`)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    from workloads import datasets

    try:
        digest, source, schema, profile = _synthetic_input(
            spec.architecture, spec.dataset, spec.global_batch, spec.seed + 1
        )
    except ValueError:  # a cell skipped because the model cannot take the data set: it ran on nothing
        return []
    out = [
        DatasetInput(
            Dataset(f"synthetic-{spec.architecture}", digest, "code", source, schema, profile),
            [InputTag("mlflow.data.context", "benchmark")],
        )
    ]
    if spec.trains_to_accuracy:
        info = datasets.INFO[spec.dataset]
        prepared = datasets.prepare(spec.dataset)  # cached: the hash of the arrays every worker loaded
        generator = datasets.GENERATORS[spec.dataset][0]
        made_by = f"{generator.__module__}.{generator.__name__}"
        real_source = {"tags": {"generator": made_by, "description": info.description}}
        sizes = {"num_train": info.n_train, "num_val": info.n_val, "num_classes": info.num_classes}
        out.append(
            DatasetInput(
                Dataset(
                    spec.dataset,
                    prepared.sha256[:DIGEST],
                    "code",
                    json.dumps(real_source),
                    _tensor_schema(info.sample_shape, info.dtype),
                    json.dumps(sizes),
                ),
                [InputTag("mlflow.data.context", "training")],
            )
        )
    return out


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}


def _metrics(result: TrialResult, timestamp_ms: int, scalars: dict[str, float] | None = None) -> list[Any]:
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
    values = result.metrics if scalars is None else scalars
    out += [Metric(k, v, timestamp_ms, 0) for k, v in _finite(values).items() if k not in stepped]
    return out


class Tracker:
    """MLflow writer for one tracking URI (SQLite file, or a tracking server)."""

    def __init__(self, uri: str, experiment: str = EXPERIMENT, create: bool = True):
        """``create=False``: only read (LookupError when the store has no such experiment)."""
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None and not create:
            raise LookupError(f"no experiment {experiment!r} in {uri}")
        if exp is None:
            kind = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            self.experiment_id = str(self.client.create_experiment(experiment, tags=kind))
        else:
            self.experiment_id = str(exp.experiment_id)
            if create and EXPERIMENT_KIND_TAG not in exp.tags:  # created before the tag; one set by hand is kept
                self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)

    def _find(self, filter_string: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1)
        return runs[0].info.run_id if runs else None

    def parent_run(self, batch_id: str, suite: str, meta: dict[str, Any]) -> str:
        found = self._find(f"tags.batch_id = '{batch_id}' and tags.harness_kind = 'batch'")
        if found:
            return found
        tags = {
            "batch_id": batch_id,
            "harness_kind": "batch",
            "suite": suite,
            "git_commit": meta.get("git_commit", ""),
        }
        if meta.get("study_run_id"):  # a study's batch: nested under the study's run
            tags |= {"study_id": str(meta.get("study_id", "")), PARENT_TAG: str(meta["study_run_id"])}
        run = self.client.create_run(self.experiment_id, run_name=f"batch-{suite}-{batch_id}", tags=tags)
        self.client.log_dict(run.info.run_id, meta, "batch.json")
        return str(run.info.run_id)

    def study_run(self, study_id: str, study: str, record: dict[str, Any]) -> str:
        """The study's own run (found again on resume): its batches' parent runs nest under it."""
        found = self._find(f"tags.study_id = '{study_id}' and tags.harness_kind = 'study'")
        if found:
            return found
        tags = {"study_id": study_id, "harness_kind": "study", "study": study, "git_commit": git_commit()}
        run = self.client.create_run(self.experiment_id, run_name=f"study-{study}-{study_id}", tags=tags)
        self.client.log_dict(run.info.run_id, record, "study.json")
        return str(run.info.run_id)

    def finish_parent(self, run_id: str, ok: bool) -> None:
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")

    def log_cell(self, parent_id: str, batch_id: str, cell: Cell) -> str:
        """One child run for the cell; returns the existing one if it was logged from the same processes."""
        from mlflow.entities import Param, RunTag

        key, digest = cell.trial_key, processes_digest(cell.processes)
        query = f"tags.batch_id = '{batch_id}' and tags.trial_key = '{key}' and tags.harness_kind = 'trial'"
        runs = self.client.search_runs([self.experiment_id], filter_string=query, max_results=50)
        for run in runs:
            if run.info.status != "RUNNING" and run.data.tags.get("processes_digest") == digest:
                return str(run.info.run_id)
            self.client.delete_run(run.info.run_id)  # half-written, or from fewer processes
        s, first = cell.spec, cell.representative
        start_ms = int((min(p.started_at for p in cell.processes) or time.time()) * 1000)
        identity = {"batch_id": batch_id, "trial_key": key, "processes_digest": digest, "harness_kind": "trial"}
        run = self.client.create_run(  # findable from the start: a half-written run is found and replaced
            self.experiment_id,
            run_name=s.name,
            start_time=start_ms,
            tags={PARENT_TAG: parent_id, **identity},
        )
        run_id = str(run.info.run_id)
        params = {
            "architecture": s.architecture,
            "framework": s.framework,
            "framework_version": first.framework_version,
            "mode": s.mode,
            "scenario": s.scenario,
            "device": s.device,
            "batch_size": s.batch_size,
            "precision": s.precision,
            "compile": first.compile_mode or s.compile,
            "compile_requested": s.compile,
            "threads": s.threads,
            "dataset": s.dataset,
            "optimizer": s.train.optimizer,
            "learning_rate": s.train.learning_rate,
            "train_steps": s.train.steps,
            "eval_every": s.train.eval_every,
            "target_accuracy": s.train.target_accuracy if s.train.target_accuracy is not None else "none",
            "seed": s.seed,
            "repeats": cell.repeats,  # processes the figures come from (failed ones: tags.reason)
            "workers": s.workers,  # data-parallel processes per trial (throughput is global)
        }
        if s.workers > 1:
            params["scaling"] = s.scaling
        if s.tpu_slice:
            params["tpu_slice"] = s.tpu_slice
        if s.accelerator_type:
            params["accelerator_type"] = s.accelerator_type
        if s.options:
            params["options"] = json.dumps(s.options, sort_keys=True)
        tags = {  # besides the identity tags the run was created with
            "status": cell.status,
            "host": ",".join(sorted({str(p.environment.get("hostname", "")) for p in cell.processes} - {""})),
            "git_commit": str(first.environment.get("git_commit", "")),
            "reason": cell.reason[:5000],
            "attempts": str(max(p.attempt for p in cell.processes)),
        }
        unstable = cell.unstable
        if unstable:
            tags["unstable"] = unstable
        if cell.throughput is not None:
            between = "95% between processes (hierarchical bootstrap)"
            tags["interval"] = ONE_PROCESS if unstable == ONE_PROCESS else between
        metrics = _metrics(first, start_ms, cell.metrics)
        inputs = dataset_inputs(s)
        if inputs:
            self.client.log_inputs(run_id, datasets=inputs)
        for i in range(0, max(len(metrics), 1), 1000):
            self.client.log_batch(
                run_id,
                metrics=metrics[i : i + 1000],
                params=[Param(k, str(v)) for k, v in params.items()] if i == 0 else [],
                tags=[RunTag(k, v) for k, v in tags.items()] if i == 0 else [],
            )
        rows = cell.process_rows()
        self.client.log_table(run_id, {k: [r[k] for r in rows] for k in rows[0]}, "processes.json")
        self.client.log_dict(run_id, {"processes": [json.loads(p.to_json()) for p in cell.processes]}, "results.json")
        end_ms = int(max(p.started_at + p.wall_s for p in cell.processes) * 1000)
        status = "FINISHED" if cell.status == "ok" else "FAILED"
        self.client.set_terminated(run_id, status, end_time=max(end_ms, start_ms))
        return run_id

    def describe(self, parent_id: str, markdown: str, figures: list[Figure], report_html: str) -> None:
        """The batch's parent run: its description (Markdown), figures (``figures/NAME.png`` and
        ``.svg``) and the self-contained report (``report.html``)."""
        import tempfile

        self.client.set_tag(parent_id, NOTE_TAG, markdown)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "figures"
            folder.mkdir()
            for fig in figures:
                (folder / f"{fig.name}.png").write_bytes(fig.png)
                (folder / f"{fig.name}.svg").write_text(fig.svg)
            if figures:
                self.client.log_artifacts(parent_id, str(folder), "figures")
        self.client.log_text(parent_id, report_html, "report.html")

    def log_report(self, batch_id: str, name: str, report_html: str) -> bool:
        """A report onto the batch's parent run (``NAME``); False without one."""
        parent = self.parent_of(batch_id)
        if parent is None:
            return False
        self.client.log_text(parent, report_html, name)
        return True

    def _cell_runs(self, batch_id: str) -> list[Any]:
        """The MLflow runs of a batch's cells."""
        return list(
            self.client.search_runs(
                [self.experiment_id],
                filter_string=f"tags.batch_id = '{batch_id}' and tags.harness_kind = 'trial'",
                max_results=5000,
            )
        )

    def batch_runs(self, batch_id: str) -> list[str]:
        """The run ids of a batch's cells."""
        return [str(r.info.run_id) for r in self._cell_runs(batch_id)]

    def compare_url(self, run_ids: list[str], ui: str) -> str | None:
        """The MLflow UI page comparing these runs, the first :data:`COMPARE_MAX_RUNS` (None without any)."""
        if not run_ids:
            return None
        ids = json.dumps(run_ids[:COMPARE_MAX_RUNS], separators=(",", ":"))
        experiments = json.dumps([self.experiment_id], separators=(",", ":"))
        query = urllib.parse.urlencode(
            {"runs": ids, "experiments": experiments, "workflowType": "machine_learning"}, quote_via=urllib.parse.quote
        )
        return f"{ui.rstrip('/')}/#/compare-runs?{query}"

    def run_url(self, run_id: str, ui: str) -> str:
        return f"{ui.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}?{TRAINING_VIEW}"

    def experiment_url(self, ui: str) -> str:
        """The experiment's runs: MLflow 3.x's UI opens an experiment on its GenAI overview unless
        the page is asked for the model-training workflow (its ``workflowType`` parameter wins over
        the browser's remembered choice; the experiment kind tag counts where that switch is absent)."""
        return f"{ui.rstrip('/')}/#/experiments/{self.experiment_id}?{TRAINING_VIEW}"

    def parent_of(self, batch_id: str) -> str | None:
        return self._find(f"tags.batch_id = '{batch_id}' and tags.harness_kind = 'batch'")

    def log_comparison(
        self, batch_id: str, name: str, markdown: str, data: dict[str, Any], chart: Figure | None = None
    ) -> bool:
        """A verdict table onto the batch's parent run (``compare/NAME.md`` and ``.json``, and the chart
        as ``compare/NAME.png`` and ``.svg``); False without one."""
        import tempfile

        parent = self.parent_of(batch_id)
        if parent is None:
            return False
        self.client.log_text(parent, markdown, f"compare/{name}.md")
        self.client.log_dict(parent, data, f"compare/{name}.json")
        if chart is not None:
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / f"{name}.png").write_bytes(chart.png)
                (Path(tmp) / f"{name}.svg").write_text(chart.svg)
                self.client.log_artifacts(parent, tmp, "compare")
        return True

    def log_calibration(self, record: dict[str, Any]) -> str:
        """A node's noise calibration as its own run (``harness_kind = calibration``)."""
        from mlflow.entities import Metric, Param, RunTag

        run = self.client.create_run(
            self.experiment_id,
            run_name=f"calibrate-{record['host']}-{record['device']}",
            tags={"harness_kind": "calibration", "host": str(record["host"]), "device": str(record["device"])},
        )
        run_id = str(run.info.run_id)
        now = int(time.time() * 1000)
        numbers = {k: float(v) for k, v in record.items() if isinstance(v, int | float) and k != "measured_at"}
        words = {k: str(v) for k, v in record.items() if k not in numbers}
        self.client.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in numbers.items()],
            params=[Param(k, v) for k, v in words.items()],
            tags=[RunTag("noise_threshold", f"{record['threshold']:.1%}")],
        )
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def batch_results(self, batch_id: str) -> list[TrialResult]:
        """Every process's result of a batch, read back from MLflow (each cell run's results.json)."""
        import tempfile

        runs = self._cell_runs(batch_id)
        results = []
        with tempfile.TemporaryDirectory() as tmp:
            for run in runs:
                names = {a.path for a in self.client.list_artifacts(run.info.run_id)}
                if "results.json" in names:  # one run per cell: every process
                    path = self.client.download_artifacts(run.info.run_id, "results.json", tmp)
                    results += [TrialResult.from_dict(d) for d in json.loads(Path(path).read_text())["processes"]]
                elif "result.json" in names:  # logged before cells: one run per process
                    path = self.client.download_artifacts(run.info.run_id, "result.json", tmp)
                    results.append(TrialResult.from_json(Path(path).read_text()))
        return sorted(results, key=lambda r: r.started_at)
