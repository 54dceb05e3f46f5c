"""The batch lifecycle, in one place: plan -> resume/attempts -> schedule -> journal -> MLflow -> summary.

Used by the CLI (``harness run``, ``harness sync``) and by ``benchmarks/``. What happens, in order:

1. checks, before any trial runs or anything is written: the MLflow store answers, Ray is
   reachable, every trial fits some node (each a one-line :class:`~harness.spec.SpecError`, exit
   code 2); meanwhile Ray starts and, once the store answered, this node's fork servers import
   their frameworks (embedded Ray);
2. the batch folder (``batch.json``); on ``--resume`` the journal says which trials are finished
   (statuses in ``FINAL``) and which attempt the others are on;
3. catch-up: journal entries the store does not have yet (a driver killed before it logged them)
   are logged now, before any trial runs;
4. trials run on Ray; each result goes to the journal first, then to MLflow: as it arrives on a
   cluster, after the last trial with an embedded Ray (the driver shares the cores with the trials);
5. the summary: the whole batch from the journal (earlier runs included) and the outcome.

If the store fails during the batch, trials keep running and stay in the journal; the first failure
stops further MLflow writes, and :attr:`BatchOutcome.tracking_error` says which command replays them.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import forking, journal, track
from harness.contract import FINAL, TrialResult, TrialSpec
from harness.plan import Plan
from harness.spec import SpecError


@dataclass
class Events:
    """What the lifecycle tells its caller (the CLI prints these; benchmarks ignore them)."""

    started: Callable[[journal.Batch, int, int], None] = lambda batch, todo, finished: None
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
    results: list[TrialResult]  # the latest result of every trial of the batch, earlier runs included
    uri: str
    tracking_error: str | None = None  # MLflow failed; the journal has everything
    phases: Phases = field(default_factory=Phases)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

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
    deferred: list[TrialResult] = field(default_factory=list)

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

    def log(self, results: list[TrialResult]) -> None:
        def write() -> None:
            assert self.parent is not None
            for r in results:
                run_id = self.tracker.log_result(self.parent, self.batch.batch_id, r)
                self.batch.mark_synced(self.uri, r, run_id)

        if results:
            self._guard(write)

    def catch_up(self) -> int:
        """Log every journal entry the store lacks; returns how many there were."""
        pending = self.batch.unsynced(self.uri)
        self.log(pending)
        return len(pending)

    def close(self, ok: bool) -> None:
        def finish() -> None:
            assert self.parent is not None
            self.tracker.finish_parent(self.parent, ok)

        self._guard(finish)


def _open_batch(runs_dir: Path, resume: str | None) -> tuple[journal.Batch, dict[str, Any]]:
    if not resume:
        return journal.Batch(runs_dir, journal.new_batch_id()), {}
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
) -> BatchOutcome:
    """Run (or resume) a batch of ``the_plan``'s trials; see the module docstring for the order."""
    from harness import schedule  # Ray: imported only when a batch really runs

    events = events or Events()
    phases = Phases()
    batch, meta = _open_batch(runs_dir, resume)
    uri = resolve_uri(tracking_uri, meta)
    if address:
        schedule.check_reachable(address)  # before the store: a failed check leaves nothing behind
    previous = {r.trial_key: r for r in batch.results()}  # the journal so far (empty for a new batch)
    finished = {k for k, r in previous.items() if r.status in FINAL}
    todo = [s for s in the_plan.trials if s.trial_key not in finished]
    to_fork = [] if address else todo

    def store_then_servers() -> track.Tracker:
        tracker = track.check_store(uri)  # a new SQLite store migrates for seconds
        forking.prestart(to_fork)  # then each framework imports once for its fork server on this node
        return tracker

    with phases("start (Ray, MLflow store, fork servers)"), ThreadPoolExecutor(1) as pool:
        store = pool.submit(store_then_servers)  # beside Ray's start
        try:
            schedule.connect(address)
        finally:
            tracker = _result_or_shutdown(store)
    try:
        problems = schedule.unschedulable(the_plan.trials)
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
        }
        batch.write_meta(meta)
        tracking = _Tracking(batch, uri, tracker)
        with phases("mlflow"):
            tracking.open(the_plan.suite.name, meta)
            caught_up = tracking.catch_up()
        if caught_up:
            events.logging(caught_up, uri)

        events.started(batch, len(todo), len(the_plan.trials) - len(todo))
        live = bool(address)

        def record(result: TrialResult) -> None:
            prior = previous.get(result.trial_key)
            result.attempt = prior.attempt + 1 if prior and prior.status not in FINAL else 1
            result.environment.setdefault("git_commit", commit)
            batch.append(result)
            if live:
                tracking.log([result])
            else:
                tracking.deferred.append(result)

        for spec, reason in the_plan.skipped:
            if spec.trial_key not in finished:
                record(_unsupported(spec, reason))

        def on_result(result: TrialResult) -> None:
            record(result)
            events.result(result)

        try:
            with phases("trials"):
                schedule.run_all(todo, on_result, dict(faults or {}))
        finally:
            if tracking.deferred:
                events.logging(len(tracking.deferred), uri)
            with phases("mlflow"):
                tracking.log(tracking.deferred)
        outcome = BatchOutcome(batch, batch.results(), uri, phases=phases)
        with phases("mlflow"):
            tracking.close(outcome.ok)
        outcome.tracking_error = tracking.error
        batch.write_meta(meta | {"phases_s": dict(phases)})  # the last run's (resume: this invocation's)
        return outcome
    finally:
        with phases("ray shutdown"):
            schedule.shutdown()


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
    count = tracking.catch_up()
    outcome = BatchOutcome(batch, batch.results(), uri)
    tracking.close(outcome.ok)
    outcome.tracking_error = tracking.error
    return outcome, count


class Untracked:
    """Trials without a journal or MLflow (``benchmarks/``): Ray is up for the ``with`` block and
    :meth:`run` schedules any number of trial lists through the same path as a batch."""

    def __init__(self, address: str | None = None):
        self.address = address

    def __enter__(self) -> Untracked:
        from harness import schedule

        schedule.connect(self.address)
        return self

    def __exit__(self, *exc: object) -> None:
        from harness import schedule

        schedule.shutdown()

    def run(self, specs: list[TrialSpec], on_result: Callable[[TrialResult], None] | None = None) -> list[TrialResult]:
        from harness import schedule

        out: list[TrialResult] = []

        def keep(result: TrialResult) -> None:
            out.append(result)
            if on_result is not None:
                on_result(result)

        schedule.run_all(specs, keep)
        return out
