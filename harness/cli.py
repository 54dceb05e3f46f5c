"""``harness run | list | doctor | compare | report | calibrate | sync``: the command line (parses and prints only).

The batch lifecycle is :mod:`harness.batch`, verdicts :mod:`harness.compare`. Bad input (unknown
names, non-positive sizes, malformed suites, devices no node has, an MLflow store or Ray cluster that
does not answer) is reported in one line with the valid choices or the fix, exit code 2, and nothing
runs. ``run`` exits 1 when any process ended other than ``ok`` or ``unsupported``, 3 when the results
could not all be logged to MLflow (they are in the journal: ``harness sync`` replays them), 130 when
interrupted. ``compare BASE NEW`` exits 1 when a cell is ``slower`` beyond the threshold (a CI gate),
2 when it refuses (mismatched environments) or the input is bad.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness import batch, envs, jobs, journal, plan, report, track
from harness import compare as cmp
from harness.cells import Cell, cells
from harness.contract import MODES
from harness.launch import node_cpus
from harness.spec import SpecError, SuiteSpec, first_error, load_suite, suite_names
from harness.study import cli as study_cli

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
    # commas inside brackets belong to a sized architecture: mlp[depth=16,width=512]
    return [v.strip() for part in parts for v in re.split(r",(?![^\[]*\])", part) if v.strip()] or None


def _ints(value: str | Sequence[str] | None, what: str = "batch sizes") -> list[int] | None:
    items = _csv(value)
    if items is None:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        raise SpecError(f"{what} must be integers, got {value!r}") from None


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
        precisions=_csv(args.precision),
        compile=args.compile,
        threads=args.threads,
        timeout_s=args.timeout,
        memory_limit_mb=args.memory_limit,
        repeats=args.repeats,
        reserve_cores=args.reserve_cores,
        workers=_ints(args.workers, "workers"),
        scaling=args.scaling,
        tpu_slices=_csv(args.tpu_slice),
        accelerator_types=_csv(args.accelerator_type),
    )
    if args.max_repeats is not None and args.max_repeats <= 0:
        raise SpecError(f"max repeats must be a positive integer, got {args.max_repeats}")
    the_plan, plan_s = _plan(suite, overrides)
    if args.dry_run:
        _print_plan(the_plan)
        return 0
    return _run(the_plan, args, plan_s, suite.name)


def _plan(suite: SuiteSpec, overrides: plan.Overrides) -> tuple[plan.Plan, float]:
    """The suite's plan for this node (its cores, the frameworks installed), warnings printed."""
    plan.validate(overrides)
    t0 = time.perf_counter()
    node_cores = len(node_cpus())
    reserve, default_threads = plan.cores(suite, overrides, node_cores)
    frameworks = overrides.frameworks or suite.frameworks
    unavailable = envs.unavailable(frameworks)
    the_plan = plan.expand(suite, overrides, default_threads, unavailable, reserve_cores=reserve, node_cores=node_cores)
    for warning in the_plan.warnings:
        err_console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    if not the_plan.trials and not the_plan.skipped:
        raise SpecError("the selection is empty: nothing to run")
    return the_plan, time.perf_counter() - t0


def _run(the_plan: plan.Plan, args: argparse.Namespace, plan_s: float, suite: str) -> int:
    """Run the plan as a batch with progress, print its tables; the exit code."""
    outcome = _run_batch(the_plan, args)
    if outcome is None:
        return 130
    for table in report.tables(outcome.cells, f"batch {outcome.batch.batch_id} ({suite})", args.wide):
        console.print(table)
    phases = {"plan": plan_s, **outcome.phases}
    console.print(f"journal: {outcome.batch.journal}", soft_wrap=True)
    if outcome.tracking_error is None:
        _print_links(outcome.uri, outcome.batch.batch_id)
    if outcome.report_error:
        err_console.print(f"[yellow]the batch's description, figures or report failed:[/] {outcome.report_error}")
    console.print(f"wall time {sum(phases.values()):.1f} s: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))
    return _exit_code(outcome)


def _print_links(uri: str, batch_id: str) -> None:
    """Where the batch is in MLflow's UI: its runs, their comparison, its parent run (description,
    figures, report); for a local store, the command that serves it first."""
    ui = track.ui_base(uri)
    try:
        tracker = track.Tracker(uri, create=False)
        runs = tracker.batch_runs(batch_id)
        compare_url = tracker.compare_url(runs, ui)
        parent = tracker.parent_of(batch_id)
    except LookupError:  # no experiment in that store: nothing to link to
        return
    except Exception as e:  # the links are a convenience; the runs are logged
        err_console.print(f"[yellow]could not read the batch's runs from MLflow:[/] {type(e).__name__}: {str(e)[:200]}")
        return
    if not runs and parent is None:
        return
    console.print(f"MLflow: {report.mlflow_ui_command(uri)}", soft_wrap=True)
    links = [("runs", tracker.experiment_url(ui))]
    if compare_url:
        shown = f" (the first {track.COMPARE_MAX_RUNS} of {len(runs)})" if len(runs) > track.COMPARE_MAX_RUNS else ""
        links.append((f"compare the batch's runs{shown}", compare_url))
    if parent:
        links.append(("the batch: description, figures, report", tracker.run_url(parent, ui)))
    for what, url in links:
        console.print(f"  {what}: {url}", soft_wrap=True)


def _run_batch(
    the_plan: plan.Plan, args: argparse.Namespace, what: str | None = None, **batch_args: Any
) -> batch.BatchOutcome | None:
    """``batch.run`` with a progress view, from the command line's options; ``batch_args`` replace them
    (a study gives each batch its id, store and record). None when interrupted (the caller says how to
    continue when ``what`` is given; else this says ``--resume BATCH_ID``)."""
    where = f"Ray {args.address or 'embedded'}"
    view = report.BatchProgress(
        console, what or f"suite {the_plan.suite.name}, {the_plan.repeats} process(es) per cell, {where}"
    )
    options: dict[str, Any] = {
        "runs_dir": _runs_dir(args),
        "resume": getattr(args, "resume", None),
        "tracking_uri": args.tracking_uri,
        "address": args.address,
        "faults": _faults(),
        "until_stable": getattr(args, "until_stable", False),
        "max_repeats": getattr(args, "max_repeats", None) or 10,
        "seed": getattr(args, "seed", None),
    }
    try:
        with view:
            return batch.run(the_plan, events=view.events(), **(options | batch_args))
    except KeyboardInterrupt:
        if what is None:
            where = f"--resume {view.batch_id}" if view.batch_id else "--resume BATCH_ID"
            err_console.print(f"\ninterrupted: finished trials are in the batch journal; continue with {where}")
        return None


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
    title = (
        f"suite {p.suite.name}: {len(p.trials)} cells x {p.repeats} process(es) to run, {len(p.skipped)} skipped; "
        f"{p.reserve_cores} core(s) reserved per node"
    )
    table = Table(title=title, header_style="bold")
    for col in ("trial", "device", "batch", "workers", "threads", "dataset", "compile", "trial key", "skip reason"):
        table.add_column(col)
    rows = [(s, "") for s in p.trials] + p.skipped
    for s, reason in rows:
        workers = f"{s.workers} ({s.scaling})" if s.workers > 1 else "1"
        device = f"{s.device} {s.tpu_slice or s.accelerator_type or ''}".strip()
        cells = (device, str(s.batch_size), workers, str(s.threads), s.dataset, s.compile, s.trial_key, reason)
        table.add_row(escape(s.name), *cells)
    console.print(table)
    console.print("dry run: nothing was run")


def cmd_list(args: argparse.Namespace) -> int:
    from adapters import FRAMEWORKS
    from workloads.architectures import ARCHITECTURES, families, get
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
    for a in [*ARCHITECTURES.values(), *map(get, families.PRESETS)]:
        arch.add_row(escape(a.name), f"{a.param_count():,}", f"{a.forward_flops() / 1e6:,.3f}", a.description)
    title = escape("sized families (--arch 'NAME[key=value,...]'; presets take keys too)")
    fam = Table(title=title, header_style="bold")
    for col in ("family", "keys (defaults)", "description"):
        fam.add_column(col)
    for f in families.FAMILIES.values():
        fam.add_row(f.name, escape(f.signature().removeprefix(f.name)), f.description)
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
    for t in (fw, arch, fam, ds, suites):
        console.print(t)
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from harness import schedule

    checks: list[tuple[str, str | None, str | None]] = []  # (what, problem, fix)
    uri = args.tracking_uri or track.default_tracking_uri()
    # the frameworks' imports (subprocesses) and the store check run while Ray starts here
    pool = ThreadPoolExecutor(max_workers=2)
    probes = pool.submit(envs.probe_all, import_it=True)
    store = pool.submit(track.check_store, uri)

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
    frameworks = [
        (f"{name} {st.version or ''} imports in {st.interpreter}", st.problem, st.fix)
        for name, st in probes.result().items()
    ]
    checks[:0] = frameworks
    node_cores = len(node_cpus())
    reserve = args.reserve_cores if args.reserve_cores is not None else plan.default_reserve(node_cores)
    threads = max(1, node_cores - reserve)
    warnings = plan.core_warnings({threads}, reserve, node_cores)
    checks.append(
        (
            f"cores: {node_cores} on this node, {reserve} reserved for the driver and Ray, trials get {threads}",
            None,
            None,
        )
    )
    try:
        store.result()
        checks.append((f"MLflow store {uri} is writable", None, None))
    except SpecError as e:
        checks.append((f"MLflow store {uri}", str(e), "start the tracking server or pass a writable --tracking-uri"))
    pool.shutdown()
    table = Table(title="harness doctor", header_style="bold")
    for col in ("check", "result", "what to do"):
        table.add_column(col)
    for what, problem, fix in checks:
        table.add_row(what, "[green]ok[/]" if problem is None else f"[red]{problem}[/]", fix or "")
    console.print(table)
    for warning in warnings:
        console.print(f"[yellow]warning:[/] {warning}", soft_wrap=True)
    return 0 if all(p is None for _, p, _ in checks) else 1


def _batch_cells(args: argparse.Namespace, batch_id: str | None) -> tuple[str, list[Cell]]:
    """A batch's cells, from its journal, or from MLflow when the journal is gone."""
    runs = _runs_dir(args)
    found = journal.Batch(runs, batch_id) if batch_id else journal.latest_batch(runs)
    if found and found.journal.exists():
        unstable_cv = float(found.meta().get("unstable_cv", 0.10)) if found.exists() else 0.10
        return found.batch_id, cells(found.results(), unstable_cv)
    if not batch_id:
        raise SpecError(f"no batches in {runs}/ yet; run `harness run smoke` first or give a BATCH_ID")
    try:
        results = track.check_store(_batch_uri(args, batch_id), create=False).batch_results(batch_id)
    except LookupError:
        results = []
    if not results:
        raise SpecError(f"no batch {batch_id!r} in {runs}/ or in MLflow")
    return batch_id, cells(results)


def _batch_uri(args: argparse.Namespace, batch_id: str) -> str:
    """The MLflow store of a batch: --tracking-uri, else the one its journal recorded, else the default."""
    found = journal.Batch(_runs_dir(args), batch_id)
    return batch.resolve_uri(args.tracking_uri, found.meta() if found.exists() else {})


def cmd_compare(args: argparse.Namespace) -> int:
    ids: list[str] = args.batch_ids
    if len(ids) > 2:
        raise SpecError(f"compare takes one batch (a table, or --by AXIS) or two (BASE NEW), got {len(ids)}")
    if len(ids) == 2 and args.by:
        raise SpecError("--by compares within one batch; give one BATCH_ID, or drop --by to compare BASE NEW")
    threshold = cmp.parse_threshold(args.threshold)
    if len(ids) < 2 and not args.by:
        batch_id, batch_cells = _batch_cells(args, ids[0] if ids else None)
        for table in report.tables(batch_cells, f"batch {batch_id}", args.wide):
            console.print(table)
        _print_links(_batch_uri(args, batch_id), batch_id)
        return 0
    if args.by:
        batch_id, batch_cells = _batch_cells(args, ids[0] if ids else None)
        value, source = _threshold(threshold, batch_cells)
        comparison = cmp.within_batch(
            batch_cells, args.by, args.baseline, value, source, label=batch_id, allow_mismatch=args.allow_mismatch
        )
        target, name = batch_id, f"by-{args.by}"
        gate = False  # a comparison of frameworks (or compile modes...) describes; it does not gate
    else:
        new_id, new_cells = _batch_cells(args, ids[1])
        comparison, base_id = _against(args, ids[0], threshold, new_id, new_cells)
        target, name, gate = new_id, f"vs-{base_id}", True
    return _print_comparison(comparison, args, target, name, gate)


def _against(
    args: argparse.Namespace, base: str, threshold: float | None, new_id: str, new_cells: list[Cell]
) -> tuple[cmp.Comparison, str]:
    """NEW's cells against batch ``base``'s (``compare BASE NEW``, ``report --against``); and BASE's id."""
    base_id, base_cells = _batch_cells(args, base)
    value, source = _threshold(threshold, new_cells)
    comparison = cmp.between_batches(
        base_cells,
        new_cells,
        value,
        source,
        base_label=f"batch {base_id}",
        new_label=f"batch {new_id}",
        allow_mismatch=args.allow_mismatch,
    )
    return comparison, base_id


def _threshold(given: float | None, against: list[Cell]) -> tuple[float, str]:
    from harness import noise

    if given is not None:
        return given, "given" if given != cmp.DEFAULT_THRESHOLD else "default"
    return cmp.noise_threshold(against, noise.lookup)


def _print_comparison(
    comparison: cmp.Comparison, args: argparse.Namespace, batch_id: str, name: str, gate: bool
) -> int:
    if args.json:
        console.print_json(data=comparison.to_dict())
    elif args.markdown:
        console.print(comparison.to_markdown(), markup=False, highlight=False, soft_wrap=True)
    else:
        if comparison.mismatches:
            head = "environments differ (allowed by --allow-mismatch)" if comparison.allow_mismatch else "refused"
            err_console.print(f"[{'yellow' if comparison.allow_mismatch else 'red'}]{head}:[/]")
            for m in comparison.mismatches:
                err_console.print(f"  {m}", soft_wrap=True)
        if not comparison.refused:
            console.print(report.verdict_table(comparison))
            for what, items in (("only on one side", comparison.unmatched), ("not compared", comparison.not_compared)):
                for item in items:
                    console.print(f"{what}: {item}", soft_wrap=True)
    if comparison.refused:
        err_console.print("no verdicts across mismatched environments; --allow-mismatch compares anyway")
        return 2
    uri = _batch_uri(args, batch_id)
    try:
        from harness.figures import verdicts

        chart = verdicts(comparison)
        if track.Tracker(uri).log_comparison(batch_id, name, comparison.to_markdown(), comparison.to_dict(), chart):
            err_console.print(
                f"verdict table logged to batch {batch_id}'s parent run in {uri} (compare/{name}.md"
                + (", the chart as .png and .svg)" if chart else ")")
            )
    except Exception as e:  # the verdict stands without MLflow
        err_console.print(f"[yellow]could not log the verdicts to MLflow:[/] {type(e).__name__}: {str(e)[:200]}")
    if not args.json and not args.markdown:
        _print_links(uri, batch_id)
    regressions = comparison.regressions
    if regressions and gate:
        err_console.print(f"[red]{len(regressions)} cell(s) slower beyond ±{comparison.threshold:.1%}[/]")
        return 1
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``harness report``: the batch as one self-contained HTML file, also logged on its parent run."""
    from harness.document import Writeup

    batch_id, batch_cells = _batch_cells(args, args.batch_id)
    found = journal.Batch(_runs_dir(args), batch_id)
    uri = _batch_uri(args, batch_id)
    meta = found.meta() if found.exists() else _meta_from_mlflow(uri, batch_id)
    against = None
    if args.against:
        against, _ = _against(args, args.against, cmp.parse_threshold(args.threshold), batch_id, batch_cells)
    writeup = Writeup(batch_id, batch_cells, meta, against)
    out = Path(args.output or f"report-{batch_id}.html")
    if out.parent and not out.parent.exists():
        raise SpecError(f"cannot write {out}: folder {out.parent} does not exist")
    page = writeup.html()
    try:
        out.write_text(page)
    except OSError as e:
        raise SpecError(f"cannot write {out}: {e.strerror or e}; pass a writable -o FILE") from None
    console.print(
        f"report: {out} ({len(page) / 1e3:.0f} kB, {len(writeup.figures)} figures, {len(batch_cells)} cells)",
        soft_wrap=True,
    )
    name = f"report-vs-{args.against}.html" if args.against else "report.html"
    try:
        if track.Tracker(uri).log_report(batch_id, name, page):
            err_console.print(f"logged to batch {batch_id}'s parent run in {uri} ({name})")
    except Exception as e:  # the file stands without MLflow
        err_console.print(f"[yellow]could not log the report to MLflow:[/] {type(e).__name__}: {str(e)[:200]}")
    return 0


def _meta_from_mlflow(uri: str, batch_id: str) -> dict[str, Any]:
    """A batch's ``batch.json`` from its parent run, when its journal is not here ({} without one)."""
    import json
    import tempfile

    try:
        tracker = track.Tracker(uri)
        parent = tracker.parent_of(batch_id)
        if parent is None:
            return {}
        with tempfile.TemporaryDirectory() as tmp:
            path = tracker.client.download_artifacts(parent, "batch.json", tmp)
            loaded: dict[str, Any] = json.loads(Path(path).read_text())
        return loaded
    except Exception:
        return {}


def cmd_calibrate(args: argparse.Namespace) -> int:
    """A/A noise measurement of this node (or the cluster node Ray picks), stored for --threshold auto."""
    from harness import noise

    if args.repeats < 2:
        raise SpecError(f"calibrate needs at least 2 processes per group, got --repeats {args.repeats}")
    try:
        suite = SuiteSpec(
            name="calibrate",
            description="A/A noise calibration: one reference cell, two interleaved groups of processes",
            frameworks=[args.framework],
            architectures=[args.arch],
            modes=[args.mode],
            devices=[args.device],
            batch_sizes=[args.batch_size],
            repeats=2 * args.repeats,
        )
    except ValidationError as e:
        raise SpecError(first_error(e)) from None
    overrides = plan.Overrides(threads=args.threads, reserve_cores=args.reserve_cores)
    the_plan, _ = _plan(suite, overrides)
    if not the_plan.trials:
        reasons = "; ".join(reason for _, reason in the_plan.skipped)
        raise SpecError(f"the reference cell cannot run here: {reasons}")
    outcome = _run_batch(the_plan, args)
    if outcome is None:
        return 130
    (cell,) = [c for c in outcome.cells if c.trial_key == the_plan.trials[0].trial_key]
    try:
        record = noise.measure(cell)
    except ValueError as e:
        err_console.print(f"[red]calibration failed:[/] {e} ({cell.status}: {cell.reason[:200]})")
        return 1
    record["batch_id"] = outcome.batch.batch_id
    where = noise.save(record)
    try:
        track.Tracker(outcome.uri).log_calibration(record)
    except Exception as e:
        err_console.print(f"[yellow]could not log the calibration to MLflow:[/] {type(e).__name__}: {str(e)[:200]}")
    console.print(
        f"node {record['host']} ({record['device']}): A/A ratio {record['ratio']:.3f} "
        f"[{record['ratio_ci_low']:.3f}, {record['ratio_ci_high']:.3f}] from {record['processes_per_group']} "
        f"processes per group, between-process CV {record['cv_between']:.1%}; noise threshold "
        f"±{record['threshold']:.1%} saved to {where} (used by compare --threshold auto)"
    )
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    outcome, count = batch.sync(_runs_dir(args), args.batch_id, args.tracking_uri)
    if outcome.tracking_error:
        return _exit_code(outcome)
    total = len(journal.group_cells(outcome.results))
    console.print(
        f"synced batch {outcome.batch.batch_id} to {outcome.uri}: {count} cells logged, {total - count} already there"
    )
    if outcome.report_error:
        err_console.print(f"[yellow]the batch's description, figures or report failed:[/] {outcome.report_error}")
    return 0


def reserve_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reserve-cores",
        type=int,
        metavar="N",
        help="cores per node kept for the driver and Ray's processes, never given to trials (default: the "
        "suite's reserve_cores, else 1: 0 on a 1-core node, 2 from 32 cores; 0 lets trials share cores with "
        "them: several times the noise)",
    )


def wide_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wide",
        action="store_true",
        help="every column of the cell table (exec mode, CV, compile s, %% of peak, time to target, the status "
        "reason...); by default the table fits 100 terminal columns",
    )


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
    axis(
        "--arch",
        "architectures (default: the suite's): zoo names, presets (resnet50, gpt2_small, vit_b16, ...) or sized "
        "family members, e.g. 'mlp[depth=16,width=512]' or 'gpt2_small[seq=256]' (harness list shows them)",
    )
    axis("--mode", f"modes: {', '.join(MODES)} (serve: Poisson requests, dynamic batching, max rate under a p99 bound)")
    axis("--batch-size", "batch sizes")
    axis("--device", "devices: cpu, gpu, tpu")
    axis(
        "--precision",
        "precisions: float32, bfloat16, float16 (the low ones: mixed precision with float32 master weights; "
        "default: the suite's)",
    )
    axis("--dataset", "datasets train cells run on (default: the suite's); infer cells always use synthetic data")
    axis(
        "--workers",
        "data-parallel workers per train cell, e.g. 1,2,4: each a process of its framework, gang-scheduled on a "
        "Ray placement group (default: the suite's, else 1)",
    )
    r.add_argument(
        "--scaling",
        choices=("weak", "strong"),
        help="multi-worker cells: weak keeps --batch-size per worker (default), strong splits it over the workers",
    )
    axis("--tpu-slice", "TPU pod slice types for --device tpu, e.g. v4-8,v4-16: one worker per host of one slice")
    axis("--accelerator-type", "Ray accelerator types for gpu/tpu cells, e.g. A100,H100 (only nodes of that type)")
    r.add_argument("--compile", help="auto (each framework's fast path where it pays), on, off (eager)")
    r.add_argument(
        "--threads",
        type=int,
        help="threads and cores per trial (default: the suite's threads, else the cores left after --reserve-cores)",
    )
    r.add_argument(
        "--repeats",
        type=int,
        metavar="K",
        help="independent worker processes per cell, run interleaved (default: the suite's repeats; "
        "3 or more give a run-to-run interval, 5 to compare)",
    )
    r.add_argument(
        "--until-stable",
        action="store_true",
        help="after the K processes, add one process per round to unstable cells (CV above the suite's "
        "unstable_cv, or fewer than 3 processes) up to --max-repeats",
    )
    r.add_argument("--max-repeats", type=int, metavar="N", help="cap for --until-stable (default 10)")
    r.add_argument("--seed", type=int, help="seed of the randomised interleaved order (default: random, recorded)")
    r.add_argument("--timeout", type=float, help="seconds before a trial is killed (default: the suite's)")
    r.add_argument(
        "--memory-limit",
        type=int,
        metavar="MB",
        help="memory cap per trial, its whole process group (default: the suite's memory_limit_mb, else the "
        "node's memory divided by the trials that fit on it at once); over it the trial ends as oom",
    )
    reserve_arg(r)
    wide_arg(r)
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
    reserve_arg(d)
    common(d)
    d.set_defaults(func=cmd_doctor)

    c = sub.add_parser(
        "compare",
        help="a batch's table; BASE NEW verdicts per cell (exit 1 on a slowdown); one batch --by AXIS",
        description="With one batch (default: the latest): its table of cells. With BASE NEW: per cell the "
        "throughput ratio NEW/BASE with a 95%% interval, Welch and Mann-Whitney tests (Holm-corrected over all "
        "cells) and a verdict: faster, slower, same or inconclusive; exit 1 when any cell is slower beyond the "
        "threshold, 2 when the environments differ (--allow-mismatch) or the input is bad. With --by AXIS: every "
        "other value of the axis against --baseline, cell by cell, within one batch.",
    )
    c.add_argument("batch_ids", nargs="*", metavar="BATCH_ID", help="one batch, or BASE and NEW")
    c.add_argument("--by", choices=cmp.AXES, help="compare within one batch along this axis")
    c.add_argument("--baseline", help="the --by value the others are compared against (default: the first)")
    c.add_argument(
        "--threshold",
        default="5%",
        help="differences within ±threshold are 'same'; a percentage (5%%), a fraction, or 'auto' for this node's "
        "noise as measured by `harness calibrate` (default 5%%)",
    )
    c.add_argument("--allow-mismatch", action="store_true", help="give verdicts even across different environments")
    wide_arg(c)
    out = c.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the verdicts as JSON")
    out.add_argument("--markdown", action="store_true", help="print the verdicts as a Markdown table")
    common(c)
    c.set_defaults(func=cmd_compare)

    rep = sub.add_parser(
        "report",
        help="a batch as one self-contained HTML file: tables, verdicts, figures, nodes, problems",
        description="Write one HTML file (figures inlined, no network, no scripts) with the batch's cells, the "
        "verdicts of its frameworks against each other and, with --against, of the batch against a base batch, "
        "its figures, the environment of every node and every cell skipped, failed, diverged or unstable with "
        "the reason; also logged on the batch's MLflow parent run.",
    )
    rep.add_argument("batch_id", nargs="?", metavar="BATCH_ID", help="the batch (default: the latest)")
    rep.add_argument("--against", metavar="BASE", help="a base batch: verdicts of BATCH against it, cell by cell")
    rep.add_argument("-o", "--output", metavar="FILE", help="where to write it (default: ./report-BATCH_ID.html)")
    rep.add_argument("--threshold", default="5%", help="--against: as for compare (default 5%%)")
    rep.add_argument("--allow-mismatch", action="store_true", help="--against: verdicts across environments")
    common(rep)
    rep.set_defaults(func=cmd_report)

    cal = sub.add_parser(
        "calibrate",
        help="measure this node's noise (A/A) for compare --threshold auto",
        description="Run one reference cell as two interleaved groups of K processes (identical work), and store "
        "how far apart the groups land as this node's noise threshold (per node and device), also in MLflow.",
    )
    cal.add_argument("--arch", default="mlp_deep", help="reference architecture (default mlp_deep)")
    cal.add_argument("--framework", default="torch", help="reference framework (default torch)")
    cal.add_argument("--mode", default="train", choices=("train", "infer"), help="reference mode (default train)")
    cal.add_argument("--device", default="cpu", help="device to calibrate (default cpu)")
    cal.add_argument("--batch-size", type=int, default=128, help="reference batch size (default 128)")
    cal.add_argument("--repeats", type=int, default=5, metavar="K", help="processes per group (default 5)")
    cal.add_argument("--threads", type=int, help="threads per trial (default: the cores left after the reserve)")
    reserve_arg(cal)
    cal.add_argument("--address", default=os.environ.get("RAY_ADDRESS"), help="Ray cluster address (default: embedded)")
    common(cal)
    cal.set_defaults(func=cmd_calibrate)

    s = sub.add_parser("sync", help="replay a batch journal into MLflow (no duplicates)")
    s.add_argument("batch_id", metavar="BATCH_ID")
    common(s)
    s.set_defaults(func=cmd_sync)

    study_cli.add_parser(sub, common)  # harness study NAME: batches that test claims, with verdicts
    jobs.add_parsers(sub)  # submit, jobs, logs, stop: a batch as a Ray Job (after run: submit takes its options)
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
