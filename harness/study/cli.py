"""``harness study NAME``: the command line of the studies (see :mod:`harness.study`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from adapters import FRAMEWORKS
from harness import batch, plan, report
from harness.contract import DEVICES, unknown_choice
from harness.spec import SpecError
from harness.study import STUDIES
from harness.study import deep_vs_shallow as dvs
from harness.study import run as study_run
from harness.study.evidence import VERDICTS


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    st = sub.add_parser(
        "study",
        help="run a study: batches that test stated claims, with a verdict for each (deep-vs-shallow)",
        description=(
            "Run a study's batches through Ray and MLflow (journal and --resume as for run) and write its "
            "report: one section per claim, each with a verdict (supported, contradicted, depends, "
            "inconclusive) from the intervals, the numbers, the figures and the command that reproduces them. "
            "deep-vs-shallow tests six common claims about deep against shallow networks: computation, data "
            "hunger, overfitting, interpretability (a saliency proxy), transfer and hardware acceleration."
        ),
    )
    st.add_argument("study", choices=sorted(STUDIES), metavar="STUDY", help=f"one of: {', '.join(sorted(STUDIES))}")
    st.add_argument(
        "--frameworks",
        "--framework",
        action="append",
        metavar="A,B",
        help=f"frameworks (default: all: {', '.join(FRAMEWORKS)}); those not installed are skipped, saying why",
    )
    size = st.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="the quick scale: under 15 minutes on a 2-core machine, fewer seeds and sizes, verdicts marked quick",
    )
    size.add_argument(
        "--scale",
        choices=tuple(dvs.SCALES),
        help="tiny (a minute: trying it, tests), quick (= --quick), full (default; sized for a cluster: "
        "--dry-run shows its trial count)",
    )
    st.add_argument(
        "--devices",
        "--device",
        action="append",
        metavar="A,B",
        help="devices of the timing batch (default cpu; cpu,gpu on a cluster with GPU nodes adds GPU against CPU)",
    )
    st.add_argument("-o", "--output", metavar="FILE", help="the report's HTML file (default: STUDY_ID.html)")
    st.add_argument("--resume", metavar="STUDY_ID", help="continue a study: its batches resume where they stopped")
    st.add_argument("--dry-run", action="store_true", help="print each batch's cells and trial count; run nothing")
    st.add_argument("--seed", type=int, help="seed of each batch's randomised trial order (default: random)")
    st.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster address (default: $RAY_ADDRESS or an embedded local Ray)",
    )
    common(st)
    st.set_defaults(func=cmd_study)


def _list(values: list[str] | None, choices: Any, kind: str, default: list[str]) -> list[str]:
    items = [v.strip() for value in values or [] for v in value.split(",") if v.strip()] or default
    for item in items:
        if item not in choices:
            raise SpecError(unknown_choice(kind, item, choices))
    return list(dict.fromkeys(items))


def cmd_study(args: argparse.Namespace) -> int:
    from harness.cli import _run_batch, _runs_dir, console, err_console

    runs_dir = _runs_dir(args)
    if args.resume:
        record = study_run.load_record(runs_dir, args.resume)
        given = [a for a in ("frameworks", "devices", "scale") if getattr(args, a)] + (["quick"] if args.quick else [])
        if given:
            raise SpecError(f"--resume continues the study as it was asked; drop {', '.join('--' + g for g in given)}")
    else:
        scale = "quick" if args.quick else args.scale or "full"
        frameworks = _list(args.frameworks, FRAMEWORKS, "framework", list(FRAMEWORKS))
        devices = _list(args.devices, DEVICES, "device", ["cpu"])
        uri = batch.resolve_uri(args.tracking_uri, {})
        record = study_run.new_record(scale, frameworks, devices, uri, args.address)
    output = Path(args.output or f"{record['study_id']}.html")
    if output.parent and not output.parent.exists():
        raise SpecError(f"cannot write {output}: folder {output.parent} does not exist")
    if args.dry_run:
        return _dry_run(console, record, args.address)

    def run_batch(p: plan.Plan, batch_id: str, resume: bool, extra: dict[str, Any]) -> batch.BatchOutcome | None:
        return _run_batch(
            p,
            args,
            f"study {record['study_id']}: {p.suite.name}, Ray {args.address or 'embedded'}",
            runs_dir=runs_dir,
            resume=batch_id if resume else None,
            batch_id=None if resume else batch_id,
            tracking_uri=record["tracking_uri"],
            extra_meta=extra,
        )

    console.print(
        f"[bold]study {record['study_id']}[/]: {record['study']} at scale {record['scale']}, frameworks "
        f"{', '.join(record['frameworks'])}",
        soft_wrap=True,
    )
    try:
        outcome = study_run.run(
            record,
            runs_dir,
            run_batch,
            resume=bool(args.resume),
            output=output,
            address=args.address,
            say=lambda line: console.print(escape(line)),
        )
    except KeyboardInterrupt:
        outcome = None
    if outcome is None or outcome.interrupted:
        err_console.print(
            f"\ninterrupted: finished trials are in the batch journals; continue with "
            f"harness study {record['study']} --resume {record['study_id']}",
            soft_wrap=True,
        )
        return 130
    assert outcome.report is not None
    table = Table(title=f"study {record['study_id']} ({record['scale']})", header_style="bold")
    for col in ("#", "claim", "verdict", "why"):
        table.add_column(col, overflow="fold")
    colors = dict(zip(VERDICTS, ("green", "red", "yellow", "grey50"), strict=True))
    for s in outcome.report.sections:
        v = s.finding.verdict
        claim = f"[bold]{escape(s.title)}[/]: {escape(s.claim)}"
        table.add_row(str(s.number), claim, f"[{colors[v]}]{v}[/]", escape(s.finding.because))
    console.print(table)
    console.print(f"report: {output}", soft_wrap=True)
    if outcome.tracking_error:
        err_console.print(f"[yellow]the study's MLflow run is incomplete:[/] {escape(outcome.tracking_error)}")
    elif record.get("study_run_id"):
        from harness import track

        tracker = track.Tracker(record["tracking_uri"], create=False)
        ui = track.ui_base(record["tracking_uri"])
        console.print(f"MLflow: {report.mlflow_ui_command(record['tracking_uri'])}", soft_wrap=True)
        console.print(f"  the study: {tracker.run_url(record['study_run_id'], ui)}", soft_wrap=True)
    return 0 if outcome.ok else 1


def _dry_run(console: Console, record: dict[str, Any], address: str | None) -> int:
    table = Table(title=f"study {record['study']} at scale {record['scale']}: nothing is run", header_style="bold")
    for col in ("batch", "cells", "processes per cell", "trials", "skipped"):
        table.add_column(col)
    total = 0
    for name, (specs, repeats, skipped) in study_run.planned(record, address).items():
        table.add_row(name, str(len(specs)), str(repeats), str(len(specs) * repeats), str(skipped))
        total += len(specs) * repeats
    console.print(table)
    console.print(f"{total} trials in all; dry run: nothing was run")
    return 0
