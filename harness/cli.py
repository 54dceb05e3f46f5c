"""``harness run | list | doctor | compare | sync``: the command line.

Bad input (unknown names, non-positive sizes, malformed suites, devices no node has) is reported in
one line with the valid choices, exit code 2, and nothing runs. ``run`` exits 1 when any trial
ended other than ``ok`` or ``unsupported``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness import envs, plan, report, track
from harness.spec import SpecError, TrialResult, load_suite, suite_names

_WIDTH = None if sys.stdout.isatty() else 200  # pipes and CI logs get full tables
console = Console(highlight=False, width=_WIDTH)
err_console = Console(stderr=True, highlight=False, width=_WIDTH)
OK_STATUSES = ("ok", "unsupported")
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


def _failed(results: Sequence[TrialResult]) -> bool:
    return any(r.status not in OK_STATUSES for r in results)


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
    )
    plan.validate(overrides)
    runs = _runs_dir(args)
    batch = track.Batch(runs, args.resume or track.new_batch_id())
    meta: dict[str, Any] = {}
    if args.resume:
        if not batch.exists():
            known = ", ".join(p.parent.name for p in sorted(runs.glob("*/batch.json"))) or "none"
            raise SpecError(f"no batch {args.resume!r} in {runs}/; batches there: {known}")
        meta = batch.meta()
    uri = args.tracking_uri or meta.get("tracking_uri") or track.default_tracking_uri()
    frameworks = overrides.frameworks or suite.frameworks
    unavailable = {fw: f"{st.problem}; {st.fix}" for fw in frameworks if not (st := envs.probe(fw)).ok}
    the_plan = plan.expand(suite, overrides, args.threads or len(os.sched_getaffinity(0)), unavailable)

    if args.dry_run:
        _print_plan(the_plan)
        return 0
    if not the_plan.trials and not the_plan.skipped:
        raise SpecError("the selection is empty: nothing to run")

    from harness import schedule

    console.print(
        f"[bold]batch {batch.batch_id}[/]: suite {suite.name}, {len(the_plan.trials)} trials, "
        f"{len(the_plan.skipped)} unsupported; Ray {'at ' + args.address if args.address else 'embedded'}"
    )
    schedule.connect(args.address)
    try:
        problems = schedule.unschedulable(the_plan.trials)
        if problems:
            raise SpecError("; ".join(problems))
        commit = track.git_commit()
        meta = meta or {
            "batch_id": batch.batch_id,
            "suite": suite.name,
            "created_at": time.time(),
            "argv": sys.argv,
            "tracking_uri": uri,
            "git_commit": commit,
        }
        batch.write_meta(meta)
        tracker = track.Tracker(uri)
        parent = tracker.parent_run(batch.batch_id, suite.name, meta)
        previous = {r.trial_key: r for r in batch.results()}
        finished = batch.finished_keys()
        todo = [s for s in the_plan.trials if s.trial_key not in finished]
        if finished:
            console.print(f"resuming: {len(the_plan.trials) - len(todo)} trials already finished, {len(todo)} to run")

        # With an embedded Ray the driver shares the cores with the trials: MLflow writes wait until
        # the trials are done. On a cluster they go in as results arrive. The journal is always first.
        live = bool(args.address)
        unlogged: list[TrialResult] = []

        def log(results: list[TrialResult]) -> None:
            try:
                for r in results:
                    tracker.log_result(parent, batch.batch_id, r)
            except Exception as e:  # the journal has them; `harness sync` replays it later
                err_console.print(f"[yellow]MLflow logging failed ({e}); run `harness sync {batch.batch_id}` later[/]")

        def record(result: TrialResult) -> None:
            prior = previous.get(result.trial_key)
            result.attempt = prior.attempt + 1 if prior and prior.status not in track.FINAL else 1
            result.environment.setdefault("git_commit", commit)
            batch.append(result)
            if live:
                log([result])
            else:
                unlogged.append(result)

        for spec, reason in the_plan.skipped:
            if spec.trial_key not in finished:
                record(
                    TrialResult(
                        trial_key=spec.trial_key, spec=spec, status="unsupported", reason=reason, started_at=time.time()
                    )
                )
        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=2,
        ) as progress:
            bar = progress.add_task("running trials", total=len(todo))

            def on_result(result: TrialResult) -> None:
                record(result)
                tput = result.metrics.get("throughput_samples_per_s")
                acc = result.metrics.get("val_accuracy")
                style = report.STATUS_STYLE.get(result.status, "red")
                detail = f"{tput:,.0f} samples/s" if tput else result.reason[:80]
                detail += f", val acc {acc:.3f}" if acc is not None else ""
                progress.console.print(
                    f"  [{style}]{result.status:>11}[/] {result.spec.name} bs={result.spec.batch_size}  {detail}"
                )
                progress.advance(bar)

            try:
                schedule.run_all(todo, on_result, _faults())
            finally:
                if unlogged:
                    progress.console.print(f"logging {len(unlogged)} results to MLflow ({uri})")
                    log(unlogged)
        results = batch.results()
        ok = not _failed(results)
        tracker.finish_parent(parent, ok)
    except KeyboardInterrupt:
        err_console.print(
            f"\ninterrupted: finished trials are in {batch.journal}; continue with --resume {batch.batch_id}"
        )
        return 130
    finally:
        schedule.shutdown()
    for table in report.tables(results, f"batch {batch.batch_id} ({suite.name})"):
        console.print(table)
    console.print(f"journal: {batch.journal}\nMLflow: {report.mlflow_ui_command(uri)}")
    return 0 if ok else 1


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
        if uri.startswith("sqlite:///"):
            folder = Path(uri.removeprefix("sqlite:///")).parent
            if not os.access(folder, os.W_OK):
                raise PermissionError(f"{folder} is not writable")
        track.Tracker(uri)
        checks.append((f"MLflow store {uri} is writable", None, None))
    except Exception as e:
        checks.append(
            (
                f"MLflow store {uri}",
                f"{type(e).__name__}: {e}"[:300],
                "pass a writable --tracking-uri or start the tracking server",
            )
        )
    table = Table(title="harness doctor", header_style="bold")
    for col in ("check", "result", "what to do"):
        table.add_column(col)
    for what, problem, fix in checks:
        table.add_row(what, "[green]ok[/]" if problem is None else f"[red]{problem}[/]", fix or "")
    console.print(table)
    return 0 if all(p is None for _, p, _ in checks) else 1


def _batch_results(args: argparse.Namespace) -> tuple[str, list[TrialResult]]:
    runs = _runs_dir(args)
    batch = track.Batch(runs, args.batch_id) if args.batch_id else track.latest_batch(runs)
    if batch and batch.journal.exists():
        return batch.batch_id, batch.results()
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
    batch = track.Batch(_runs_dir(args), args.batch_id)
    if not batch.exists():
        raise SpecError(f"no batch {args.batch_id!r} in {batch.root}/")
    meta = batch.meta()
    uri = args.tracking_uri or meta.get("tracking_uri") or track.default_tracking_uri()
    tracker = track.Tracker(uri)
    parent = tracker.parent_run(batch.batch_id, meta.get("suite", "?"), meta)
    results = batch.results()
    for r in results:
        tracker.log_result(parent, batch.batch_id, r)
    tracker.finish_parent(parent, not _failed(results))
    console.print(f"synced {len(results)} results of batch {batch.batch_id} to {uri}")
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
    try:
        code: int = args.func(args)
        return code
    except SpecError as e:
        err_console.print(f"[red]error:[/] {e}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
