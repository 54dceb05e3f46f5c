"""What the CLI shows: comparison tables of trial results and the progress of a running batch (rich)."""

from __future__ import annotations

from collections.abc import Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from harness import batch, journal
from harness import metrics as M
from harness.contract import TrialResult

STATUS_STYLE = {"ok": "green", "unsupported": "yellow", "diverged": "magenta"}


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _to_target(r: TrialResult) -> str:
    t = r.metrics.get(M.TIME_TO_TARGET_S)
    if t is not None:
        return f"{t:.2f}"
    reached_none = r.status == "ok" and r.spec.train.target_accuracy is not None and M.VAL_ACCURACY in r.metrics
    return "never" if reached_none else "-"


def comparison_table(results: Iterable[TrialResult], title: str = "") -> Table:
    """One row per (architecture, framework, mode[, dataset, batch size, device]).

    The accuracy columns (dataset, val acc, target, s to target) appear when some trial trained to
    accuracy; "s to target" is the training time until the held-out accuracy first reached the
    target ("never": not within the step budget).
    """
    results = list(results)
    trained = any(M.VAL_ACCURACY in r.metrics or r.spec.trains_to_accuracy for r in results)
    columns = [
        ("architecture", "left"),
        ("framework", "left"),
        ("mode", "left"),
        ("device", "left"),
        ("batch", "right"),
        ("exec", "left"),
        ("samples/s", "right"),
        ("lat p50 ms", "right"),
        ("lat p99 ms", "right"),
        ("compile s", "right"),
        ("peak RSS MB", "right"),
        ("GFLOP/s", "right"),
        ("% peak", "right"),
    ]
    if trained:
        columns[3:3] = [("dataset", "left")]
        columns += [("val acc", "right"), ("target", "right"), ("s to target", "right")]
    table = Table(title=title or None, header_style="bold", show_lines=False)
    for col, justify in [*columns, ("status", "left")]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    ordered = sorted(
        results,
        key=lambda r: (
            r.spec.architecture,
            r.spec.mode,
            r.spec.dataset,
            r.spec.batch_size,
            r.spec.device,
            r.spec.framework,
        ),
    )
    for r in ordered:
        m, s = r.metrics, r.spec
        frac = m.get(M.PEAK_FRACTION)
        status = r.status if r.status == "ok" else f"{r.status}: {r.reason[:60]}"
        cells = [
            s.architecture,
            s.framework,
            s.mode,
            s.device,
            str(s.batch_size),
            r.compile_mode or "-",
            _num(m.get(M.THROUGHPUT), ",.0f"),
            _num(m.get(M.percentile_keys(M.LATENCY)[50]), ".3f"),
            _num(m.get(M.percentile_keys(M.LATENCY)[99]), ".3f"),
            _num(m.get(M.COMPILE_S), ".2f"),
            _num(m.get(M.PEAK_HOST_RSS_MB), ".0f"),
            _num(m.get(M.ACHIEVED_GFLOPS), ".1f"),
            _num(None if frac is None else 100 * frac, ".1f"),
        ]
        if trained:
            cells[3:3] = [s.dataset]
            cells += [_num(m.get(M.VAL_ACCURACY), ".3f"), _num(s.train.target_accuracy, ".2f"), _to_target(r)]
        table.add_row(*cells, f"[{STATUS_STYLE.get(r.status, 'red')}]{status}[/]")
    return table


def skipped_table(results: Iterable[TrialResult]) -> Table:
    """The cells that did not run (``unsupported``), one line each with the reason."""
    rows = sorted((r for r in results if r.status == "unsupported"), key=lambda r: r.spec.name)
    table = Table(title=f"{len(rows)} cells not run (unsupported)", header_style="bold")
    table.add_column("trial")
    table.add_column("reason")
    for r in rows:
        table.add_row(r.spec.name, r.reason)
    return table


def tables(results: Iterable[TrialResult], title: str = "") -> list[Table]:
    """What ``run`` and ``compare`` print: the comparison of the cells that ran, then the skipped cells."""
    results = list(results)
    ran = [r for r in results if r.status != "unsupported"]
    out = [comparison_table(ran, title)] if ran or len(ran) == len(results) else []
    return out + ([skipped_table(results)] if len(ran) < len(results) else [])


def result_line(r: TrialResult) -> str:
    """One progress line per finished trial (rich markup)."""
    tput, acc = r.metrics.get(M.THROUGHPUT), r.metrics.get(M.VAL_ACCURACY)
    detail = f"{tput:,.0f} samples/s" if tput else r.reason[:80]
    detail += f", val acc {acc:.3f}" if acc is not None else ""
    style = STATUS_STYLE.get(r.status, "red")
    return f"[{style}]{r.status:>11}[/] {r.spec.name} bs={r.spec.batch_size}  {detail}"


def mlflow_ui_command(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"


class BatchProgress:
    """A progress bar and one line per finished trial, fed by the batch lifecycle's events."""

    def __init__(self, console: Console, what: str):
        self.console, self.what = console, what
        self.batch_id: str | None = None
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            refresh_per_second=2,
        )
        self.bar = self.progress.add_task("running trials", total=None, visible=False)

    def __enter__(self) -> BatchProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _started(self, b: journal.Batch, todo: int, finished: int) -> None:
        self.batch_id = b.batch_id
        self.console.print(f"[bold]batch {b.batch_id}[/]: {self.what}; {todo} trials to run")
        if finished:
            self.console.print(f"resuming: {finished} trials already finished, {todo} to run")
        self.progress.update(self.bar, total=todo, visible=True)

    def _result(self, r: TrialResult) -> None:
        self.console.print(f"  {result_line(r)}")
        self.progress.advance(self.bar)

    def _logging(self, count: int, uri: str) -> None:
        self.console.print(f"logging {count} results to MLflow ({uri})")

    def events(self) -> batch.Events:
        return batch.Events(started=self._started, result=self._result, logging=self._logging)
