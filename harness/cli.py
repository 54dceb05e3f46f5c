"""``harness run | list | doctor | compare | sync``: the command line (parses and prints only).

The batch lifecycle is :mod:`harness.batch`. Bad input (unknown names, non-positive sizes, malformed
suites, devices no node has, an MLflow store or Ray cluster that does not answer) is reported in one
line with the valid choices or the fix, exit code 2, and nothing runs. ``run`` exits 1 when any
trial ended other than ``ok`` or ``unsupported``, 3 when the results could not all be logged to
MLflow (they are in the journal: ``harness sync`` replays them), 130 when interrupted.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from harness import batch, envs, journal, plan, report, track
from harness.contract import TrialResult
from harness.spec import SpecError, load_suite, suite_names

_WIDTH = None if sys.stdout.isatty() else 200  # pipes and CI logs get full tables
console = Console(highlight=False, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, width=_WIDTH)
EXIT_UNTRACKED = 3  # the batch ran, but MLflow failed: the journal has every result (`harness sync`)
FAULTS_ENV = "HARNESS_INJECT_FAULTS"  # test hook: "arch-fw-mode=crash|hang|raise,..."


def _csv(value: str | Sequence[str] | None) -> list[str] | None:
    """Comma lists, possibly given several times (``--dataset a,b --dataset c``), as one list."""
    if not value:
        return None
    parts = [value] if isinstance(value, str) else value
    return [v.strip() for part in parts for v in part.split(",") if v.strip()] or None


def _ints(value: str | Sequence[str] | None) -> list[int] | None:
    items = _csv(value)
    if items is None:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        raise SpecError(f"batch sizes must be integers, got {value!r}") from None


def _runs_dir(args: argparse.Namespace) -> Path:
    return Path(args.runs_dir or os.environ.get("HARNESS_RUNS_DIR", "harness-runs"))


def _faults() -> dict[str, str]:
    pairs = (item.split("=", 1) for item in _csv(os.environ.get(FAULTS_ENV)) or [])
    return {k: v for k, v in pairs}


def cmd_run(args: argparse.Namespace) -> int:
    suite = load_suite(args.suite)
    overrides = plan.Overrides(
        frameworks=_csv(args.framework),
        architectures=_csv(args.arch),
        modes=_csv(args.mode),
        batch_sizes=_ints(args.batch_size),
        devices=_csv(args.device),
        datasets=_csv(args.dataset),
        compile=args.compile,
        threads=args.threads,
        timeout_s=args.timeout,
        memory_limit_mb=args.memory_limit,
    )
    plan.validate(overrides)
    t0 = time.perf_counter()
    frameworks = overrides.frameworks or suite.frameworks
    probed = envs.probe_many(frameworks)
    unavailable = {fw: f"{st.problem}; {st.fix}" for fw, st in probed.items() if not st.ok}
    the_plan = plan.expand(suite, overrides, args.threads or len(os.sched_getaffinity(0)), unavailable)
    if args.dry_run:
        _print_plan(the_plan)
        return 0
    if not the_plan.trials and not the_plan.skipped:
        raise SpecError("the selection is empty: nothing to run")
    plan_s = time.perf_counter() - t0

    view = report.BatchProgress(console, f"suite {suite.name}, Ray {args.address or 'embedded'}")
    try:
        with view:
            outcome = batch.run(
                the_plan,
                runs_dir=_runs_dir(args),
                resume=args.resume,
                tracking_uri=args.tracking_uri,
                address=args.address,
                faults=_faults(),
                events=view.events(),
            )
    except KeyboardInterrupt:
        where = f"--resume {view.batch_id}" if view.batch_id else "--resume BATCH_ID"
        err_console.print(f"\ninterrupted: finished trials are in the batch journal; continue with {where}")
        return 130
    for table in report.tables(outcome.results, f"batch {outcome.batch.batch_id} ({suite.name})"):
        console.print(table)
    phases = {"plan": plan_s, **outcome.phases}
    console.print(
        f"journal: {outcome.batch.journal}\nMLflow: {report.mlflow_ui_command(outcome.uri)}\n"
        f"wall time {sum(phases.values()):.1f} s: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items())
    )
    return _exit_code(outcome)


def _exit_code(outcome: batch.BatchOutcome) -> int:
    if outcome.tracking_error:
        err_console.print(
            f"[red]MLflow logging failed[/] ({outcome.tracking_error}); every result is in {outcome.batch.journal}. "
            f"Replay them into MLflow with: {outcome.sync_command}",
            soft_wrap=True,
        )
        return EXIT_UNTRACKED
    return 0 if outcome.ok else 1


def _print_plan(p: plan.Plan) -> None:
    table = Table(
        title=f"suite {p.suite.name}: {len(p.trials)} trials to run, {len(p.skipped)} skipped", header_style="bold"
    )
    for col in ("trial", "device", "batch", "threads", "dataset", "compile", "trial key", "skip reason"):
        table.add_column(col)
    rows = [(s, "") for s in p.trials] + p.skipped
    for s, reason in rows:
        table.add_row(s.name, s.device, str(s.batch_size), str(s.threads), s.dataset, s.compile, s.trial_key, reason)
    console.print(table)
    console.print("dry run: nothing was run")


def cmd_list(args: argparse.Namespace) -> int:
    from adapters import FRAMEWORKS
    from workloads.architectures import ARCHITECTURES
    from workloads.datasets import DATASETS

    fw = Table(title="frameworks", header_style="bold")
    for col in ("name", "installed", "version", "interpreter", "devices", "execution modes"):
        fw.add_column(col)
    for name, st in envs.probe_all().items():
        info = FRAMEWORKS[name]
        fw.add_row(
            name,
            "yes" if st.ok else "[red]no[/]",
            st.version or "-",
            st.interpreter,
            ", ".join(info.devices),
            ", ".join(info.compile_modes),
        )
    arch = Table(title="architectures", header_style="bold")
    for col in ("name", "parameters", "forward MFLOP/sample", "description"):
        arch.add_column(col)
    for a in ARCHITECTURES.values():
        arch.add_row(a.name, f"{a.param_count():,}", f"{a.forward_flops() / 1e6:.3f}", a.description)
    ds = Table(title="datasets", header_style="bold")
    ds.add_column("name")
    ds.add_column("description")
    for name, desc in DATASETS.items():
        ds.add_row(name, desc)
    suites = Table(title="suites", header_style="bold")
    for col in ("name", "cells", "description"):
        suites.add_column(col)
    for name in suite_names():
        s = load_suite(name)
        try:
            p = plan.expand(s, plan.Overrides(), default_threads=1)
            cells = f"{len(p.trials)}" + (f" (+{len(p.skipped)} skipped)" if p.skipped else "")
        except SpecError as e:
            cells = f"none: {e}"
        suites.add_row(name, cells, s.description)
    for t in (fw, arch, ds, suites):
        console.print(t)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    checks: list[tuple[str, str | None, str | None]] = []  # (what, problem, fix)
    for name, st in envs.probe_all(import_it=True).items():
        checks.append((f"{name} {st.version or ''} imports in {st.interpreter}", st.problem, st.fix))
    from harness import schedule

    try:
        schedule.connect(args.address)
        import ray

        cpus = ray.cluster_resources().get("CPU", 0)
        checks.append(
            (f"Ray starts ({'cluster ' + args.address if args.address else 'embedded'}, {cpus:g} CPUs)", None, None)
        )
    except Exception as e:
        checks.append(
            (
                "Ray starts",
                f"{type(e).__name__}: {e}",
                "check --address / RAY_ADDRESS, or `ray stop` a stale local cluster",
            )
        )
    finally:
        schedule.shutdown()
    uri = args.tracking_uri or track.default_tracking_uri()
    try:
        track.check_store(uri)
        checks.append((f"MLflow store {uri} is writable", None, None))
    except SpecError as e:
        checks.append((f"MLflow store {uri}", str(e), "start the tracking server or pass a writable --tracking-uri"))
    table = Table(title="harness doctor", header_style="bold")
    for col in ("check", "result", "what to do"):
        table.add_column(col)
    for what, problem, fix in checks:
        table.add_row(what, "[green]ok[/]" if problem is None else f"[red]{problem}[/]", fix or "")
    console.print(table)
    return 0 if all(p is None for _, p, _ in checks) else 1


def _batch_results(args: argparse.Namespace) -> tuple[str, list[TrialResult]]:
    runs = _runs_dir(args)
    found = journal.Batch(runs, args.batch_id) if args.batch_id else journal.latest_batch(runs)
    if found and found.journal.exists():
        return found.batch_id, found.results()
    if not args.batch_id:
        raise SpecError(f"no batches in {runs}/ yet; run `harness run smoke` first or give a BATCH_ID")
    results = track.Tracker(args.tracking_uri or track.default_tracking_uri()).batch_results(args.batch_id)
    if not results:
        raise SpecError(f"no batch {args.batch_id!r} in {runs}/ or in MLflow")
    return args.batch_id, results


def cmd_compare(args: argparse.Namespace) -> int:
    batch_id, results = _batch_results(args)
    for table in report.tables(results, f"batch {batch_id}"):
        console.print(table)
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    outcome, count = batch.sync(_runs_dir(args), args.batch_id, args.tracking_uri)
    if outcome.tracking_error:
        return _exit_code(outcome)
    total = sum(1 for _ in outcome.batch.entries())
    console.print(
        f"synced batch {outcome.batch.batch_id} to {outcome.uri}: {count} results logged, {total - count} already there"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="harness", description="Benchmark deep-learning frameworks on the same models, on Ray, tracked in MLflow."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)"
        )
        sp.add_argument("--runs-dir", help="where batch journals live (default: $HARNESS_RUNS_DIR or ./harness-runs)")

    r = sub.add_parser(
        "run",
        help="run a suite (name or .toml file)",
        description="Run a suite through Ray, log every trial to MLflow.",
    )
    r.add_argument(
        "suite", metavar="SUITE_OR_FILE", help=f"suite name ({', '.join(suite_names())}) or path to a suite .toml"
    )

    def axis(flag: str, help: str) -> None:  # repeatable, each a comma list
        r.add_argument(flag, action="append", metavar="A,B", help=help)

    axis("--framework", "frameworks (default: the suite's)")
    axis("--arch", "architectures (default: the suite's)")
    axis("--mode", "modes: train, infer")
    axis("--batch-size", "batch sizes")
    axis("--device", "devices: cpu, gpu, tpu")
    axis("--dataset", "datasets train cells run on (default: the suite's); infer cells always use synthetic data")
    r.add_argument("--compile", help="auto (each framework's fast path where it pays), on, off (eager)")
    r.add_argument(
        "--threads",
        type=int,
        help="threads and cores per trial (default: the suite's threads, else all cores of this machine)",
    )
    r.add_argument("--timeout", type=float, help="seconds before a trial is killed (default: the suite's)")
    r.add_argument(
        "--memory-limit",
        type=int,
        metavar="MB",
        help="memory cap per trial, its whole process group (default: the suite's memory_limit_mb, else the "
        "node's memory divided by the trials that fit on it at once); over it the trial ends as oom",
    )
    r.add_argument("--dry-run", action="store_true", help="print the expanded matrix and skipped cells; run nothing")
    r.add_argument("--resume", metavar="BATCH_ID", help="continue a batch, skipping trials already finished")
    r.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster address (default: $RAY_ADDRESS or an embedded local Ray)",
    )
    common(r)
    r.set_defaults(func=cmd_run)

    ls = sub.add_parser("list", help="frameworks, architectures, datasets and suites")
    ls.set_defaults(func=cmd_list)

    d = sub.add_parser("doctor", help="check frameworks, Ray and the MLflow store; say how to fix problems")
    d.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster address to check")
    common(d)
    d.set_defaults(func=cmd_doctor)

    c = sub.add_parser("compare", help="print a batch's comparison table (default: the latest batch)")
    c.add_argument("batch_id", nargs="?", metavar="BATCH_ID")
    common(c)
    c.set_defaults(func=cmd_compare)

    s = sub.add_parser("sync", help="replay a batch journal into MLflow (no duplicates)")
    s.add_argument("batch_id", metavar="BATCH_ID")
    common(s)
    s.set_defaults(func=cmd_sync)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # store creation and migrations log at INFO
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        code: int = args.func(args)
        return code
    except SpecError as e:
        err_console.print(f"[red]error:[/] {e}", soft_wrap=True)  # one line, whatever the terminal
        return 2


def entry() -> None:
    """The console script: everything is on disk (journal fsynced, MLflow committed, Ray stopped)
    when ``main`` returns, so the interpreter's teardown (about a second of MLflow's and SQLAlchemy's
    exit handlers) is skipped."""
    code = main()
    console.file.flush()
    err_console.file.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
