"""What the CLI shows: cell tables (estimates with intervals), verdict tables and the progress of a batch (rich)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from harness import batch, journal
from harness import metrics as M
from harness.cells import ONE_PROCESS, Cell, cells
from harness.compare import Comparison
from harness.contract import TrialResult

STATUS_STYLE = {"ok": "green", "unsupported": "yellow", "diverged": "magenta"}


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _to_target(c: Cell) -> str:
    m = c.metrics
    t = m.get(M.TIME_TO_TARGET_S)
    if t is not None:
        return f"{t:.2f}"
    frac = m.get(M.REACHED_TARGET_FRACTION)
    if frac:
        return f"{frac:.0%} reached"
    reached_none = c.status == "ok" and c.spec.train.target_accuracy is not None and M.VAL_ACCURACY in m
    return "never" if reached_none else "-"


def _compact(x: float) -> str:
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def _workers(c: Cell) -> str:
    return str(c.spec.workers) if c.spec.workers == 1 else f"{c.spec.workers} {c.spec.scaling}"


def _interval(c: Cell) -> str:
    t = c.throughput
    if t is None:
        return "-"
    if not t.between_known:
        return "[dim]unknown[/]"
    return f"{_compact(t.low)}-{_compact(t.high)}"


def _cv(c: Cell) -> str:
    cv = c.cv_between
    return "-" if cv is None else f"{cv:.1%}"


def comparison_table(results: Iterable[TrialResult] | Iterable[Cell], title: str = "") -> Table:
    """One row per cell (architecture, framework, mode[, dataset], batch size, device).

    Throughput is the geometric mean over the cell's processes with its 95% between-process interval
    ("1 process: run-to-run spread unknown" with one), ``CV`` the processes' spread and ``n`` their
    number. The accuracy columns (dataset, val acc, target, s to target) appear when some trial
    trained to accuracy; "s to target" is the training time until the held-out accuracy first
    reached the target ("never": not within the step budget).
    """
    items = list(results)
    rows: list[Cell] = [i for i in items if isinstance(i, Cell)] or cells(
        [i for i in items if isinstance(i, TrialResult)]
    )
    trained = any(M.VAL_ACCURACY in c.metrics or c.spec.trains_to_accuracy for c in rows)
    p50, p99 = M.percentile_keys(M.LATENCY)[50], M.percentile_keys(M.LATENCY)[99]

    def peak(c: Cell) -> str:
        frac = c.metrics.get(M.PEAK_FRACTION)
        return _num(None if frac is None else 100 * frac, ".1f")

    Column = tuple[str, str, Callable[[Cell], str]]
    columns: list[Column] = [
        ("architecture", "left", lambda c: c.spec.architecture),
        ("framework", "left", lambda c: c.spec.framework),
        ("mode", "left", lambda c: c.spec.mode),
        ("dataset", "left", lambda c: c.spec.dataset),
        ("device", "left", lambda c: c.spec.device),
        ("batch", "right", lambda c: str(c.spec.batch_size)),
        (
            "workers",
            "right",
            lambda c: str(c.spec.workers) if c.spec.workers == 1 else f"{c.spec.workers} {c.spec.scaling}",
        ),
        ("exec", "left", lambda c: c.representative.compile_mode or "-"),
        ("samples/s", "right", lambda c: _num(c.metrics.get(M.THROUGHPUT), ",.0f")),
        ("95% CI", "right", _interval),
        ("CV", "right", _cv),
        ("n", "right", _processes),
        ("p50 ms", "right", lambda c: _num(c.metrics.get(p50), ".3f")),
        ("p99 ms", "right", lambda c: _num(c.metrics.get(p99), ".3f")),
        ("compile s", "right", lambda c: _num(c.metrics.get(M.COMPILE_S), ".2f")),
        ("RSS MB", "right", lambda c: _num(c.metrics.get(M.PEAK_HOST_RSS_MB), ".0f")),
        ("% peak", "right", peak),
        ("scaling eff", "right", lambda c: _num(c.metrics.get(M.SCALING_EFFICIENCY), ".2f")),
        ("val acc", "right", lambda c: _num(c.metrics.get(M.VAL_ACCURACY), ".3f")),
        ("to target s", "right", _to_target),
        ("status", "left", _status),
    ]
    hidden = set() if trained else {"dataset", "val acc", "to target s"}
    if len({c.spec.device for c in rows}) <= 1:
        hidden.add("device")  # one device: the title says it
    if all(c.spec.workers == 1 for c in rows):
        hidden |= {"workers", "scaling eff"}
    columns = [col for col in columns if col[0] not in hidden]
    single = sum(1 for c in rows if c.unstable == ONE_PROCESS)
    caption = "samples/s: geometric mean over the cell's n processes; 95% interval and CV between processes"
    if single:
        caption += f"\n{single} cell(s) with {ONE_PROCESS} (--repeats 3 or more for an interval)"
    if any(c.spec.workers > 1 for c in rows):
        caption += (
            "\nworkers: samples/s of all workers (weak: batch per worker; strong: global batch); "
            "scaling eff: samples/s / (workers x the 1-worker cell's)"
        )
    targets = sorted({(c.spec.dataset, c.spec.train.target_accuracy) for c in rows if c.spec.train.target_accuracy})
    if trained and targets:
        caption += "\nto target s: training seconds to held-out accuracy " + ", ".join(
            f"{t:.2f} on {d}" for d, t in targets
        )
    devices = ", ".join(sorted({c.spec.device for c in rows}))
    title = f"{title} on {devices}" if title and "device" in hidden and devices else title
    table = Table(title=title or None, header_style="bold", show_lines=False, caption=caption)
    for name, justify, get in columns:
        # names and numbers are never cut: every column but the status keeps its full width
        width = None if name == "status" else max([len(name), *(len(Text.from_markup(get(c))) for c in rows)])
        table.add_column(name, justify=justify, min_width=width)  # type: ignore[arg-type]
    ordered = sorted(
        rows,
        key=lambda c: (
            c.spec.architecture,
            c.spec.mode,
            c.spec.dataset,
            c.spec.batch_size,
            c.spec.device,
            c.spec.framework,
            c.spec.workers,
        ),
    )
    for c in ordered:
        table.add_row(*(get(c) for _, _, get in columns))
    return table


def _processes(c: Cell) -> str:
    failed = len(c.processes) - c.repeats
    return f"{c.repeats} (+{failed} failed)" if failed and c.status != "unsupported" else str(c.repeats or 1)


def _status(c: Cell) -> str:
    text = c.status if c.status == "ok" else f"{c.status}: {c.reason[:60]}"
    unstable = c.unstable
    if c.status == "ok" and unstable and unstable != ONE_PROCESS:
        text = f"unstable ({unstable})"
        return f"[yellow]{text}[/]"
    return f"[{STATUS_STYLE.get(c.status, 'red')}]{text}[/]"


def skipped_table(results: Iterable[TrialResult]) -> Table:
    """The cells that did not run (``unsupported``), one line each with the reason."""
    rows = sorted((r for r in results if r.status == "unsupported"), key=lambda r: r.spec.name)
    table = Table(title=f"{len(rows)} cells not run (unsupported)", header_style="bold")
    table.add_column("trial")
    table.add_column("reason")
    for r in rows:
        table.add_row(r.spec.name, r.reason)
    return table


def tables(batch_cells: list[Cell], title: str = "") -> list[Table]:
    """What ``run`` and ``compare`` print: the cells that ran (one row each), then the skipped cells."""
    ran = [c for c in batch_cells if c.status != "unsupported"]
    out = [comparison_table(ran, title)] if ran or len(ran) == len(batch_cells) else []
    skipped = [p for c in batch_cells if c.status == "unsupported" for p in c.processes]
    return out + ([skipped_table(skipped)] if skipped else [])


VERDICT_STYLE = {"faster": "green", "slower": "red", "same": "cyan", "inconclusive": "yellow"}


def verdict_table(c: Comparison) -> Table:
    """The verdicts of a comparison, one row per pair of cells."""
    counts = c.counts()
    title = (
        f"{c.new_label} against {c.base_label}: {counts['faster']} faster, {counts['slower']} slower, "
        f"{counts['same']} same, {counts['inconclusive']} inconclusive (threshold ±{c.threshold:.1%}, "
        f"{c.threshold_source})"
    )
    table = Table(title=title, header_style="bold", caption=c.correction)
    for col, justify in (
        ("cell", "left"),
        ("NEW/BASE", "right"),
        ("95% interval", "right"),
        ("n", "right"),
        ("p Holm", "right"),
        ("p MWU", "right"),
        ("verdict", "left"),
        ("note", "left"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in c.rows:
        table.add_row(
            r.label,
            f"{r.ratio.estimate:.3f}",
            f"{r.ratio.low:.3f} - {r.ratio.high:.3f}",
            f"{r.base.repeats}/{r.new.repeats}",
            f"{r.p_adjusted:.2g}",
            f"{r.p_mann_whitney:.2g}",
            f"[{VERDICT_STYLE[r.verdict]}]{r.verdict}[/]",
            r.note,
        )
    return table


def result_line(r: TrialResult) -> str:
    """One progress line per finished trial (rich markup)."""
    tput, acc = r.metrics.get(M.THROUGHPUT), r.metrics.get(M.VAL_ACCURACY)
    detail = f"{tput:,.0f} samples/s" if tput else r.reason[:80]
    detail += f", val acc {acc:.3f}" if acc is not None else ""
    style = STATUS_STYLE.get(r.status, "red")
    return f"[{style}]{r.status:>11}[/] {r.spec.name} bs={r.spec.batch_size} #{r.replica}  {detail}"


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
        if self.batch_id == b.batch_id:  # --until-stable: another round for the unstable cells
            self.console.print(f"until stable: {todo} more processes for unstable cells")
            task = self.progress.tasks[0]
            self.progress.update(self.bar, total=(task.total or 0) + todo)
            return
        self.batch_id = b.batch_id
        self.console.print(f"[bold]batch {b.batch_id}[/]: {self.what}; {todo} processes to run")
        if finished:
            self.console.print(f"resuming: {finished} processes already finished, {todo} to run")
        self.progress.update(self.bar, total=todo, visible=True)

    def _result(self, r: TrialResult) -> None:
        self.console.print(f"  {result_line(r)}")
        self.progress.advance(self.bar)

    def _logging(self, count: int, uri: str) -> None:
        self.console.print(f"logging {count} cells to MLflow ({uri})")

    def events(self) -> batch.Events:
        return batch.Events(started=self._started, result=self._result, logging=self._logging)
