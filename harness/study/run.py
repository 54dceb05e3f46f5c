"""A study on disk and in MLflow: its record, its batches, its report.

``runs_dir/studies/STUDY_ID.json`` records what was asked (study, scale, frameworks, devices) and
the ids of its batches, chosen up front, so that ``--resume STUDY_ID`` finds them whether they
finished, were interrupted, or never started. Each batch is a normal batch (journal, resume, Ray,
MLflow) whose parent run nests under the study's own MLflow run; the study's run gets the
description, the figures, ``report.html`` and ``report.json`` (every number with the trial keys it
came from).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import batch, envs, journal, plan, track
from harness.cells import Cell, cells
from harness.contract import FINAL, TrialResult, TrialSpec
from harness.launch import node_cpus
from harness.spec import SpecError, SuiteSpec
from harness.study import deep_vs_shallow as dvs
from harness.study.render import StudyReport

RunBatch = Callable[[plan.Plan, str, bool, dict[str, Any]], "batch.BatchOutcome | None"]


def studies_dir(runs_dir: Path) -> Path:
    return runs_dir / "studies"


def record_path(runs_dir: Path, study_id: str) -> Path:
    return studies_dir(runs_dir) / f"{study_id}.json"


def load_record(runs_dir: Path, study_id: str) -> dict[str, Any]:
    path = record_path(runs_dir, study_id)
    if not path.exists():
        known = ", ".join(p.stem for p in sorted(studies_dir(runs_dir).glob("*.json"))) or "none"
        raise SpecError(f"no study {study_id!r} in {studies_dir(runs_dir)}/; studies there: {known}")
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def write_record(runs_dir: Path, record: dict[str, Any]) -> None:
    path = record_path(runs_dir, record["study_id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)


def new_record(
    scale: str, frameworks: Sequence[str], devices: Sequence[str], tracking_uri: str, address: str | None
) -> dict[str, Any]:
    study_id = "study-" + journal.new_batch_id()
    return {
        "study_id": study_id,
        "study": dvs.NAME,
        "scale": scale,
        "frameworks": list(frameworks),
        "devices": list(devices),
        "created_at": time.time(),
        "argv": sys.argv,
        "tracking_uri": tracking_uri,
        "address": address,
        "git_commit": track.git_commit(),
        # one batch per kind of measurement, ids fixed now: --resume finds them in any state
        "batches": {name: f"{journal.new_batch_id()}-{name}" for name in (dvs.COMPUTE, dvs.LEARNING)},
    }


def reproduce(record: dict[str, Any]) -> str:
    parts = ["harness", "study", record["study"], "--scale", record["scale"]]
    parts += ["--frameworks", ",".join(record["frameworks"]), "--devices", ",".join(record["devices"])]
    return shlex.join(parts)


def plans(record: dict[str, Any], address: str | None) -> dict[str, plan.Plan]:
    """Each batch's plan: the study's cells, those of frameworks this node cannot run skipped with why."""
    scale = dvs.SCALES[record["scale"]]
    if "threads" not in record:  # fixed when the study starts: threads are part of every timing cell's key
        suite = _suite(record, "compute", [scale.timing_batch])
        record["reserve_cores"], record["threads"] = plan.cores(suite, plan.Overrides(), len(node_cpus()))
    reserve, threads = int(record["reserve_cores"]), int(record["threads"])
    study = dvs.build(scale, record["frameworks"], record["devices"], threads)
    # on a cluster the workers' environments decide (the batch reports them)
    unavailable = {} if address else envs.unavailable(record["frameworks"])
    out = {}
    for name, specs in study.batches.items():
        batch_sizes = sorted({s.batch_size for s in specs})
        p = plan.Plan(
            _suite(record, name, batch_sizes),
            repeats=study.repeats[name],
            reserve_cores=reserve if name == dvs.COMPUTE else 0,  # accuracy runs time nothing that matters
            log_live=name == dvs.LEARNING,  # ... so MLflow's writes may run beside them
        )
        for spec in specs:
            reason = plan.skip_reason(spec, unavailable)
            if reason:
                p.skipped.append((spec, reason))
            else:
                p.trials.append(spec)
        out[name] = p
    return out


def _suite(record: dict[str, Any], name: str, batch_sizes: list[int]) -> SuiteSpec:
    return SuiteSpec(
        name=f"{record['study']}-{name}",
        description=f"study {record['study_id']} ({record['scale']}): the {name} batch",
        frameworks=record["frameworks"],
        architectures=["logreg"],  # the plan's cells are the study's; the suite names the batch
        batch_sizes=batch_sizes,
    )


@dataclass
class StudyOutcome:
    record: dict[str, Any]
    report: StudyReport | None = None
    outcomes: dict[str, batch.BatchOutcome] = field(default_factory=dict)
    interrupted: bool = False
    tracking_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(o.ok for o in self.outcomes.values())


def _finished(runs_dir: Path, batch_id: str, p: plan.Plan, uri: str) -> bool:
    """Every planned process of the batch has a final result in its journal (nothing left to run)."""
    b = journal.Batch(runs_dir, batch_id)
    if not b.exists():
        return False
    done = {k for k, r in b.finished().items() if r.status in FINAL}
    wanted = {(s.trial_key, r) for s in p.trials for r in range(p.repeats)}
    wanted |= {(s.trial_key, 0) for s, _ in p.skipped}
    return wanted <= done and not b.unsynced(uri)  # MLflow has every cell too (a resume logs what it lacks)


def run(
    record: dict[str, Any],
    runs_dir: Path,
    run_batch: RunBatch,
    *,
    resume: bool,
    output: Path | None,
    address: str | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> StudyOutcome:
    """Run (or resume) the study's batches, then write its report and log it to the study's run."""
    write_record(runs_dir, record)
    uri = record["tracking_uri"]
    out = StudyOutcome(record)
    tracker: track.Tracker | None = None
    try:
        tracker = track.Tracker(uri)
        record["study_run_id"] = tracker.study_run(record["study_id"], record["study"], record)
        write_record(runs_dir, record)
    except Exception as e:  # the batches log their own runs; the study's run is missing
        out.tracking_error = f"{type(e).__name__}: {str(e)[:200]}"
    the_plans = plans(record, address)
    write_record(runs_dir, record)  # with the threads and reserved cores the plan fixed
    for name, p in the_plans.items():
        batch_id = record["batches"][name]
        exists = journal.Batch(runs_dir, batch_id).exists()
        if exists and _finished(runs_dir, batch_id, p, uri):
            say(f"batch {batch_id} ({name}): finished earlier, nothing to run")
            continue
        extra = {"study_id": record["study_id"], "study_run_id": record.get("study_run_id")}
        outcome = run_batch(p, batch_id, exists, extra)
        if outcome is None:
            out.interrupted = True
            return out
        out.outcomes[name] = outcome
    results = {name: journal.Batch(runs_dir, record["batches"][name]).results() for name in the_plans}
    out.report = report_for(record, results)
    if output is not None:
        output.write_text(out.report.html())
    if tracker is not None and record.get("study_run_id"):
        try:
            tracker.describe(record["study_run_id"], out.report.markdown(), out.report.figures, out.report.html())
            tracker.client.log_dict(record["study_run_id"], out.report.data(), "report.json")
            tracker.finish_parent(record["study_run_id"], out.ok)
        except Exception as e:
            out.tracking_error = f"{type(e).__name__}: {str(e)[:200]}"
    return out


def report_for(record: dict[str, Any], results: dict[str, list[TrialResult]]) -> StudyReport:
    """The study's report from its batches' results (journals, or MLflow's copy)."""
    batch_cells: dict[str, list[Cell]] = {name: cells(rs) for name, rs in results.items()}
    scale = dvs.SCALES[record["scale"]]
    sections = dvs.analyse(
        batch_cells.get(dvs.COMPUTE, []), batch_cells.get(dvs.LEARNING, []), scale, record["devices"]
    )
    agreement = dvs.agreement(batch_cells.get(dvs.LEARNING, []))
    return StudyReport(record, sections, batch_cells, agreement, reproduce(record))


def planned(record: dict[str, Any], address: str | None) -> dict[str, tuple[list[TrialSpec], int, int]]:
    """Per batch: the cells to run, the processes per cell and the cells skipped (for --dry-run)."""
    return {name: (p.trials, p.repeats, len(p.skipped)) for name, p in plans(record, address).items()}
