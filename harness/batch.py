"""The batch lifecycle, in one place: plan -> resume/attempts -> schedule -> journal -> MLflow -> summary.

Used by the CLI (``harness run``, ``harness sync``) and by ``benchmarks/``. What happens, in order:

1. checks, before any trial runs or anything is written: the MLflow store answers, Ray is
   reachable, every trial fits some node (each a one-line :class:`~harness.spec.SpecError`, exit
   code 2); meanwhile Ray starts and, once the store answered, this node's fork servers import
   their frameworks (embedded Ray);
2. the batch folder (``batch.json``); on ``--resume`` the journal says which processes are finished
   (statuses in ``FINAL``) and which attempt the others are on; a cell with fewer processes than
   ``repeats`` gets the missing ones;
3. catch-up: cells the store does not have in their journaled state (a driver killed before it
   logged them) are logged now, before any trial runs;
4. the driver, Ray's daemons and the fork servers are pinned to the reserved cores (embedded Ray);
   the cells' processes run on Ray in a seeded, randomised, interleaved order (round ``r``: every
   cell's replica ``r``); each result goes to the journal first; a cell goes to MLflow (one child
   run per cell) when its processes are done: as they finish on a cluster, after the last one with
   an embedded Ray (the driver shares the node with the trials); with ``until_stable``, unstable
   cells get one more process per round up to ``max_repeats``;
5. the summary: the whole batch from the journal (earlier runs included) and the outcome.

If the store fails during the batch, trials keep running and stay in the journal; the first failure
stops further MLflow writes, and :attr:`BatchOutcome.tracking_error` says which command replays them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import forking, journal, track
from harness import metrics as M
from harness.cells import Cell, cells
from harness.contract import FINAL, TrialResult, TrialSpec
from harness.plan import Plan
from harness.spec import SpecError

if TYPE_CHECKING:
    from harness.document import Writeup

BATCH_ID_ENV = "HARNESS_BATCH_ID"  # a new batch's id chosen beforehand (`harness submit` sets it for its job)


@dataclass
class Events:
    """What the lifecycle tells its caller (the CLI prints these; benchmarks ignore them)."""

    started: Callable[[journal.Batch, list[TrialSpec], int], None] = lambda batch, todo, finished: None
    result: Callable[[TrialResult], None] = lambda result: None
    logging: Callable[[int, str], None] = lambda count, uri: None


class Phases(dict[str, float]):
    """Wall seconds per phase of a batch, in the order they ran (``with phases("ray start"): ...``)."""

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - t0


@dataclass
class BatchOutcome:
    batch: journal.Batch
    results: list[TrialResult]  # the latest attempt of every process of the batch, earlier runs included
    uri: str
    tracking_error: str | None = None  # MLflow failed; the journal has everything
    report_error: str | None = None  # the parent run's description, figures or report failed (the cells are logged)
    phases: Phases = field(default_factory=Phases)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @functools.cached_property
    def cells(self) -> list[Cell]:
        """The batch's cells (computed once: their intervals are bootstraps)."""
        return cells(self.results, float(self.batch.meta().get("unstable_cv", 0.10)))

    def writeup(self) -> Writeup:
        """The batch written up: the description, report and figures of its parent run."""
        from harness.document import Writeup

        return Writeup(self.batch.batch_id, self.cells, self.batch.meta() if self.batch.exists() else {})

    @property
    def sync_command(self) -> str:
        return f"harness sync {self.batch.batch_id} --tracking-uri {self.uri}"


@dataclass
class _Tracking:
    """MLflow writes for one batch; the first failure is kept and later writes are skipped."""

    batch: journal.Batch
    uri: str
    tracker: track.Tracker
    parent: str | None = None
    error: str | None = None
    # cells finished while trials run are logged by one background thread, off the scheduling path
    _writer: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="mlflow"))
    _writes: list[Future[int]] = field(default_factory=list)

    def _guard(self, what: Callable[[], None]) -> None:
        if self.error is not None:
            return
        try:
            what()
        except Exception as e:  # the journal has the results; `harness sync` replays them
            self.error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"

    def open(self, suite: str, meta: dict[str, Any]) -> None:
        def create() -> None:
            self.parent = self.tracker.parent_run(self.batch.batch_id, suite, meta)

        self._guard(create)

    def log_soon(self, keys: set[str], results: list[TrialResult]) -> None:
        """:meth:`log` in the background; ``results``: the batch's latest results (no journal re-read)."""
        self._writes.append(self._writer.submit(self.log, keys, results))

    def drain(self) -> None:
        """Wait for the background writes (before anything else logs)."""
        for write in self._writes:
            write.result()
        self._writes.clear()

    def log(self, keys: set[str] | None = None, results: list[TrialResult] | None = None) -> int:
        """Log the cells (all, or those of ``keys``) the store lacks in their journaled state; how many.
        ``results``: the batch's latest results when the caller has them (else the journal is read)."""
        if self.error is not None:
            return 0
        results = self.batch.results() if results is None else results
        pending = self.batch.unsynced(self.uri, keys, results)
        unstable_cv = float(self.batch.meta().get("unstable_cv", 0.10)) if self.batch.exists() else 0.10

        def write() -> None:
            assert self.parent is not None
            # through cells(): a multi-worker cell is linked to its 1-worker cell (scaling efficiency)
            every = {c.trial_key: c for c in cells(results, unstable_cv)}
            logged = {processes[0].trial_key for processes in pending}
            for processes in pending:
                cell = every.get(processes[0].trial_key) or Cell(processes, unstable_cv)
                run_id = self.tracker.log_cell(self.parent, self.batch.batch_id, cell)
                self.batch.mark_synced(self.uri, processes, run_id)
            # a multi-worker cell logged before its 1-worker cell gets its scaling efficiency now
            runs = self.batch.synced(self.uri)
            for c in every.values():
                if c.single is not None and c.single.trial_key in logged and c.trial_key not in logged:
                    efficiency = c.metrics.get(M.SCALING_EFFICIENCY)
                    if efficiency is not None and c.trial_key in runs:
                        self.tracker.client.log_metric(runs[c.trial_key][1], M.SCALING_EFFICIENCY, efficiency)

        if pending:
            self._guard(write)
        return len(pending)

    def close(self, outcome: BatchOutcome) -> None:
        """The parent run's description, figures and report (a failure there is reported, and the
        cells stay logged), then the run ends."""

        def finish() -> None:
            assert self.parent is not None
            self.tracker.finish_parent(self.parent, outcome.ok)

        self.drain()
        if self.parent is not None and self.error is None:
            try:
                writeup = outcome.writeup()
                self.tracker.describe(self.parent, writeup.markdown(), writeup.figures, writeup.html())
            except Exception as e:
                outcome.report_error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"
        self._guard(finish)
        self._writer.shutdown()


def _open_batch(
    runs_dir: Path, resume: str | None, batch_id: str | None = None
) -> tuple[journal.Batch, dict[str, Any]]:
    if not resume:
        preset = batch_id or os.environ.get(BATCH_ID_ENV)  # chosen by a study, or by `harness submit`
        if preset and journal.Batch(runs_dir, preset).exists():
            raise SpecError(f"batch {preset!r} ({BATCH_ID_ENV}) is already in {runs_dir}/; continue it with --resume")
        return journal.Batch(runs_dir, preset or journal.new_batch_id()), {}
    batch = journal.Batch(runs_dir, resume)
    if not batch.exists():
        known = ", ".join(p.parent.name for p in sorted(runs_dir.glob("*/batch.json"))) or "none"
        raise SpecError(f"no batch {resume!r} in {runs_dir}/; batches there: {known}")
    return batch, batch.meta()


def resolve_uri(explicit: str | None, meta: Mapping[str, Any]) -> str:
    return explicit or meta.get("tracking_uri") or track.default_tracking_uri()


def run(
    the_plan: Plan,
    *,
    runs_dir: Path,
    resume: str | None = None,
    tracking_uri: str | None = None,
    address: str | None = None,
    faults: Mapping[str, str] | None = None,
    events: Events | None = None,
    until_stable: bool = False,
    max_repeats: int = 10,
    seed: int | None = None,
    batch_id: str | None = None,
    extra_meta: Mapping[str, Any] | None = None,
) -> BatchOutcome:
    """Run (or resume) a batch of ``the_plan``'s cells; see the module docstring for the order.

    ``batch_id``: the new batch's id (default: a fresh one); ``extra_meta``: recorded in its
    ``batch.json`` (a study's id and MLflow run, under which the batch's parent run nests)."""
    from harness import schedule  # Ray: imported only when a batch really runs

    events = events or Events()
    phases = Phases()
    batch, meta = _open_batch(runs_dir, resume, batch_id)
    uri = resolve_uri(tracking_uri, meta)
    if address:
        schedule.check_reachable(address)  # before the store: a failed check leaves nothing behind
    previous = {(r.trial_key, r.replica): r for r in batch.results()}  # the journal so far
    finished = {k for k, r in previous.items() if r.status in FINAL}
    if resume:  # a resumed batch keeps the processes per cell it was started with (or more, if asked)
        the_plan.repeats = max(the_plan.repeats, int(meta.get("repeats", 1)))
    order_seed = seed if seed is not None else random.SystemRandom().randrange(2**31)
    todo = the_plan.rounds(order_seed, finished)
    to_fork = [] if address else [s for s, _ in todo]
    reserve = the_plan.reserve_cores

    def store_then_servers() -> track.Tracker:
        tracker = track.check_store(uri)  # a new SQLite store migrates for seconds
        forking.prestart(to_fork)  # then each framework imports once for its fork server on this node
        return tracker

    with phases("start (Ray, MLflow store, fork servers)"), ThreadPoolExecutor(1) as pool:
        store = pool.submit(store_then_servers)  # beside Ray's start
        try:
            schedule.connect(address, reserve)
        finally:
            tracker = _result_or_shutdown(store)
    unpin: Callable[[], None] = _nothing
    closer, closing = ThreadPoolExecutor(1, thread_name_prefix="close"), None
    try:
        if not address:
            unpin = schedule.pin_to_reserved(reserve)
        problems = schedule.unschedulable(the_plan.trials, reserve if not address else 0)
        if problems:
            raise SpecError("; ".join(problems))
        commit = track.git_commit()
        meta = meta or {
            "batch_id": batch.batch_id,
            "suite": the_plan.suite.name,
            "created_at": time.time(),
            "argv": sys.argv,
            "tracking_uri": uri,
            "git_commit": commit,
            "repeats": the_plan.repeats,
            "reserve_cores": reserve,
            "unstable_cv": the_plan.suite.unstable_cv,
            **(extra_meta or {}),
        }
        meta["order_seeds"] = [*meta.get("order_seeds", []), order_seed]  # one per invocation (resumes too)
        meta["repeats"] = the_plan.repeats
        batch.write_meta(meta)
        tracking = _Tracking(batch, uri, tracker)
        with phases("mlflow"):
            tracking.open(the_plan.suite.name, meta)
            caught_up = tracking.log()
        if caught_up:
            events.logging(caught_up, uri)

        events.started(batch, [s for s, _ in todo], len(finished))
        live = bool(address) or the_plan.log_live
        waiting: dict[str, int] = {}  # processes of each cell still running in this invocation

        def record(result: TrialResult) -> None:
            prior = previous.get((result.trial_key, result.replica))
            result.attempt = prior.attempt + 1 if prior and prior.status not in FINAL else 1
            result.environment.setdefault("git_commit", commit)
            batch.append(result)
            previous[(result.trial_key, result.replica)] = result
            waiting[result.trial_key] = waiting.get(result.trial_key, 1) - 1
            if live and waiting[result.trial_key] <= 0:
                tracking.log_soon({result.trial_key}, list(previous.values()))

        for spec, reason in the_plan.skipped:
            if (spec.trial_key, 0) not in finished:
                record(_unsupported(spec, reason))

        def on_result(result: TrialResult) -> None:
            record(result)
            events.result(result)

        def run_round(runs: list[schedule.Run]) -> None:
            for spec, _ in runs:
                waiting[spec.trial_key] = waiting.get(spec.trial_key, 0) + 1
            schedule.run_all(runs, on_result, dict(faults or {}), reserve)

        try:
            with phases("trials"):
                run_round(todo)
                rng = random.Random(order_seed + 1)
                while until_stable:
                    extra = _unstable_runs(batch, the_plan, max_repeats)
                    if not extra:
                        break
                    rng.shuffle(extra)
                    events.started(batch, [s for s, _ in extra], 0)
                    run_round(extra)
        finally:
            tracking.drain()
            pending = len(batch.unsynced(uri)) if tracking.error is None else 0
            if pending:
                events.logging(pending, uri)
            with phases("mlflow"):
                tracking.log()
        outcome = BatchOutcome(batch, batch.results(), uri, phases=phases)

        # beside Ray's shutdown: the figures take seconds of CPU, the shutdown mostly waits
        closing = closer.submit(tracking.close, outcome)
    finally:
        unpin()
        with phases("ray shutdown" if closing is None else "ray shutdown | parent run: description, figures, report"):
            schedule.shutdown()
            if closing is not None:
                closing.result()
        closer.shutdown()
    outcome.tracking_error = tracking.error
    batch.write_meta(meta | {"phases_s": dict(phases)})  # the last run's (resume: this invocation's)
    return outcome


def _unstable_runs(batch: journal.Batch, the_plan: Plan, max_repeats: int) -> list[tuple[TrialSpec, int]]:
    """One more process for every planned cell that is unstable and below ``max_repeats`` processes."""
    planned = {s.trial_key for s in the_plan.trials}
    out = []
    for cell in cells(batch.results(), the_plan.suite.unstable_cv):
        if cell.trial_key in planned and cell.status == "ok" and cell.unstable and len(cell.processes) < max_repeats:
            out.append((cell.spec, max(p.replica for p in cell.processes) + 1))
    return out


def _result_or_shutdown(store: Future[track.Tracker]) -> track.Tracker:
    """The store check's tracker; if it failed, Ray goes down again and the check's error is raised."""
    from harness import schedule

    try:
        return store.result()
    except BaseException:
        schedule.shutdown()
        raise


def _unsupported(spec: TrialSpec, reason: str) -> TrialResult:
    return TrialResult(trial_key=spec.trial_key, spec=spec, status="unsupported", reason=reason, started_at=time.time())


def sync(runs_dir: Path, batch_id: str, tracking_uri: str | None = None) -> tuple[BatchOutcome, int]:
    """Log the journal entries the store lacks (``harness sync``); returns the outcome and how many."""
    batch, meta = _open_batch(runs_dir, batch_id)
    uri = resolve_uri(tracking_uri, meta)
    tracking = _Tracking(batch, uri, track.check_store(uri))
    tracking.open(meta.get("suite", "?"), meta)
    count = tracking.log()
    outcome = BatchOutcome(batch, batch.results(), uri)
    tracking.close(outcome)
    outcome.tracking_error = tracking.error
    return outcome, count


class Untracked:
    """Trials without a journal or MLflow (``benchmarks/``): Ray is up for the ``with`` block and
    :meth:`run` schedules any number of trial lists through the same path as a batch."""

    def __init__(self, address: str | None = None, reserve: int = 0):
        self.address, self.reserve = address, reserve
        self._unpin: Callable[[], None] = lambda: None

    def __enter__(self) -> Untracked:
        from harness import schedule

        schedule.connect(self.address, self.reserve)
        if not self.address:
            self._unpin = schedule.pin_to_reserved(self.reserve)
        return self

    def __exit__(self, *exc: object) -> None:
        from harness import schedule

        self._unpin()
        schedule.shutdown()

    def run(
        self,
        specs: list[TrialSpec] | list[tuple[TrialSpec, int]],
        on_result: Callable[[TrialResult], None] | None = None,
    ) -> list[TrialResult]:
        """Run trials (replica 0 each) or (trial, replica) pairs in the given order."""
        from harness import schedule

        out: list[TrialResult] = []

        def keep(result: TrialResult) -> None:
            out.append(result)
            if on_result is not None:
                on_result(result)

        runs = [r if isinstance(r, tuple) else (r, 0) for r in specs]
        schedule.run_all(runs, keep, reserve=self.reserve)
        return out


def _nothing() -> None:
    return None
