"""What the CLI shows: cell tables (estimates with intervals), verdict tables and the progress of a batch (rich)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from rich import box
from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from harness import batch, journal
from harness import metrics as M
from harness.cells import ONE_PROCESS, Cell, cells
from harness.compare import Comparison, cell_label
from harness.contract import TrialResult, TrialSpec
from harness.track import UI_DEFAULT

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


def significant(x: float, digits: int = 3) -> str:
    """``x`` to about ``digits`` significant digits, never in exponent form (1500 -> 1500, 0.0507 -> 0.0507)."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    rounded = float(f"{x:.{digits}g}")  # 0.9997 is 1.00, not 1.000
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(rounded))))
    return f"{x:.{decimals}f}"


def compact(x: float, digits: int = 3) -> str:
    """Large numbers with a k/M/G suffix (144 -> 144, 12345 -> 12.3k, 995000 -> 995k)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale * 0.9995:  # what would round up to 1000 of the smaller unit takes this one
            return significant(x / scale, digits) + suffix
    return significant(x, digits)


def _workers(c: Cell) -> str:
    return str(c.spec.workers) if c.spec.workers == 1 else f"{c.spec.workers} {c.spec.scaling}"


def _interval(c: Cell) -> str:
    t = c.throughput
    if t is None:
        return "-"
    if not t.between_known:
        return "[dim]unknown[/]"
    return f"{compact(t.low)}-{compact(t.high)}"


def _cv(c: Cell) -> str:
    cv = c.cv_between
    return "-" if cv is None else f"{cv:.1%}"


@dataclass(frozen=True)
class Column:
    """One column of the cell table: its name, alignment and the text of a cell (rich markup)."""

    name: str
    justify: str
    get: Callable[[Cell], str]


P50, P99 = M.percentile_keys(M.LATENCY)[50], M.percentile_keys(M.LATENCY)[99]
SERVER_P50, SERVER_P99 = M.percentile_keys(M.SERVER_LATENCY)[50], M.percentile_keys(M.SERVER_LATENCY)[99]


def _latency(c: Cell, q: int) -> float | None:
    """Latency percentile ``q`` (50 or 99) in ms: per request (serve: at the target rate, queueing included)."""
    serve = c.spec.mode == "serve"
    return c.metrics.get((SERVER_P50 if serve else P50) if q == 50 else (SERVER_P99 if serve else P99))


def _max_rate(c: Cell) -> str:
    """A serve cell's highest request rate under its p99 bound ("none": no rate met it)."""
    rate = c.metrics.get(M.SERVER_MAX_RATE)
    if rate is None:
        return "none met" if c.ok_processes else "-"
    return (">=" if c.metrics.get(M.SERVER_MAX_RATE_LOWER_BOUND) else "") + f"{compact(rate)} max"


def _peak(c: Cell) -> str:
    frac = c.metrics.get(M.PEAK_FRACTION)
    return _num(None if frac is None else 100 * frac, ".1f")


def _throughput(c: Cell) -> str:
    """Throughput with its interval in one column (the narrow table); serve cells: the max request rate."""
    if c.spec.mode == "serve":
        return _max_rate(c)
    value = c.metrics.get(M.THROUGHPUT)
    if value is None:
        return "-"
    t = c.throughput
    known = t is not None and t.between_known
    if not known:
        return f"{compact(value)} (n=1)"
    assert t is not None
    return f"{compact(value)} [{compact(t.low, 2)}-{compact(t.high, 2)}]"


def _latencies(c: Cell) -> str:
    p50, p99 = _latency(c, 50), _latency(c, 99)
    return "-" if p50 is None or p99 is None else f"{significant(p50)}/{significant(p99)}"


def _wide_throughput(c: Cell) -> str:
    return _num(c.metrics.get(M.THROUGHPUT), ",.0f")


def _processes(c: Cell) -> str:
    failed = len(c.processes) - c.repeats
    return f"{c.repeats} (+{failed} failed)" if failed and c.status != "unsupported" else str(c.repeats or 1)


WIDE = (
    Column("architecture", "left", lambda c: escape(c.spec.architecture)),  # sized names carry [keys]
    Column("framework", "left", lambda c: c.spec.framework),
    Column("mode", "left", lambda c: c.spec.mode),
    Column("dataset", "left", lambda c: c.spec.dataset),
    Column("device", "left", lambda c: c.spec.device),
    Column("batch", "right", lambda c: str(c.spec.batch_size)),
    Column("workers", "right", _workers),
    Column("exec", "left", lambda c: c.representative.compile_mode or "-"),
    Column("samples/s", "right", lambda c: _max_rate(c) if c.spec.mode == "serve" else _wide_throughput(c)),
    Column("95% CI", "right", _interval),
    Column("CV", "right", _cv),
    Column("n", "right", _processes),
    Column("p50 ms", "right", lambda c: _num(_latency(c, 50), ".3f")),
    Column("p99 ms", "right", lambda c: _num(_latency(c, 99), ".3f")),
    Column("compile s", "right", lambda c: _num(c.metrics.get(M.COMPILE_S), ".2f")),
    Column("RSS MB", "right", lambda c: _num(c.metrics.get(M.PEAK_HOST_RSS_MB), ".0f")),
    Column("% peak", "right", _peak),
    Column("scaling eff", "right", lambda c: _num(c.metrics.get(M.SCALING_EFFICIENCY), ".2f")),
    Column("val acc", "right", lambda c: _num(c.metrics.get(M.VAL_ACCURACY), ".3f")),
    Column("to target s", "right", _to_target),
    Column("status", "left", lambda c: _status(c)),
)
# the default table fits 100 columns: the columns that decide, the status without its reason (listed below)
NARROW = (
    *(c for c in WIDE if c.name in ("architecture", "framework", "mode")),
    Column("samples/s [95% CI]", "right", _throughput),
    Column("p50/p99 ms", "right", _latencies),
    Column("RSS MB", "right", lambda c: _num(c.metrics.get(M.PEAK_HOST_RSS_MB), ".0f")),
    Column("acc", "right", lambda c: _num(c.metrics.get(M.VAL_ACCURACY), ".3f")),
    Column("status", "left", lambda c: _status(c, short=True)),
)
NARROW_WIDTH = 100  # terminal columns the default table fits in
# what the narrow table adds to the mode where cells of the batch differ in it (else the title says it)
SETUP: dict[str, Callable[[TrialSpec], str]] = {
    "batch": lambda s: f"bs{s.batch_size}",
    "dataset": lambda s: "" if s.dataset == "synthetic" else s.dataset,
    "workers": lambda s: "" if s.workers == 1 else f"w{s.workers}-{s.scaling}",
    "device": lambda s: s.device,
    "precision": lambda s: s.precision,
}


def _setup(rows: list[Cell]) -> list[str]:
    return [k for k, get in SETUP.items() if len({get(c.spec) for c in rows}) > 1]


def _mode_with(varying: list[str]) -> Column:
    def get(c: Cell) -> str:
        return " ".join(p for p in (c.spec.mode, *(SETUP[k](c.spec) for k in varying)) if p)

    return Column("mode", "left", get)


def columns(rows: list[Cell], wide: bool = False) -> list[Column]:
    """The columns of a table of ``rows``: those with something to say about them."""
    trained = any(M.VAL_ACCURACY in c.metrics or c.spec.trains_to_accuracy for c in rows)
    hidden = set() if trained else {"dataset", "val acc", "to target s"}
    if len({c.spec.device for c in rows}) <= 1:
        hidden.add("device")  # one device: the title says it
    if all(c.spec.workers == 1 for c in rows):
        hidden |= {"workers", "scaling eff"}
    if wide:
        return [col for col in WIDE if col.name not in hidden]
    if not trained:
        hidden.add("acc")
    mode = _mode_with(_setup(rows))
    return [mode if col.name == "mode" else col for col in NARROW if col.name not in hidden]


def ordered(rows: Iterable[Cell]) -> list[Cell]:
    """Cells in table order: architecture, mode, dataset, batch size, device, framework, workers."""
    return sorted(
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


def _as_cells(results: Iterable[TrialResult] | Iterable[Cell]) -> list[Cell]:
    items = list(results)
    return [i for i in items if isinstance(i, Cell)] or cells([i for i in items if isinstance(i, TrialResult)])


def caption(rows: list[Cell], wide: bool = True) -> str:
    """What the table's numbers are (printed under it)."""
    trained = any(M.VAL_ACCURACY in c.metrics or c.spec.trains_to_accuracy for c in rows)
    single = sum(1 for c in rows if c.unstable == ONE_PROCESS)
    lines = ["samples/s: geometric mean over the cell's n processes; 95% interval and CV between processes"]
    if not wide:
        lines = ["samples/s: geometric mean over the cell's processes [95% interval between processes]"]
    if single:
        lines.append(f"{single} cell(s) with {ONE_PROCESS} (--repeats 3 or more for an interval)")
    if any(c.spec.mode == "serve" for c in rows):
        lines.append(
            "serve: samples/s is the highest request rate (Poisson arrivals, dynamic batching) whose p99 "
            "latency met the bound; p50/p99 at the target rate, queueing included"
        )
    if any(c.spec.workers > 1 for c in rows):
        lines.append("workers: samples/s of all workers (weak: batch per worker; strong: global batch)")
        if wide:
            lines[-1] += "; scaling eff: samples/s / (workers x the 1-worker cell's)"
    targets = sorted({(c.spec.dataset, c.spec.train.target_accuracy) for c in rows if c.spec.train.target_accuracy})
    if wide and trained and targets:
        lines.append(
            "to target s: training seconds to held-out accuracy " + ", ".join(f"{t:.2f} on {d}" for d, t in targets)
        )
    if not wide:
        varying = _setup(rows)
        with_setup = f" with the {', '.join(varying)} where cells differ in it" if varying else ""
        lines.append(
            f"mode{with_setup}; p50/p99 ms: latency percentiles"
            + ("; acc: held-out accuracy" if trained else "")
            + "; n=1: one process; --wide: every column"
        )
    return "\n".join(lines)


def comparison_table(results: Iterable[TrialResult] | Iterable[Cell], title: str = "", wide: bool = True) -> Table:
    """One row per cell (architecture, framework, mode[, dataset], batch size, device).

    Throughput is the geometric mean over the cell's processes with its 95% between-process interval
    ("1 process: run-to-run spread unknown" with one), ``CV`` the processes' spread and ``n`` their
    number. The accuracy columns (dataset, val acc, target, s to target) appear when some trial
    trained to accuracy; "s to target" is the training time until the held-out accuracy first
    reached the target ("never": not within the step budget). ``wide=False``: the columns that
    decide, within 100 terminal columns (:data:`NARROW`); names and numbers are never cut.
    """
    rows = _as_cells(results)
    shown = columns(rows, wide)
    text = caption(rows, wide)
    devices = ", ".join(sorted({c.spec.device for c in rows}))
    hidden_device = all(col.name != "device" for col in shown)
    title = f"{title} on {devices}" if title and hidden_device and devices else title
    box_style = box.HEAVY_HEAD if wide else box.SIMPLE_HEAD
    table = Table(
        title=title or None,
        header_style="bold",
        show_lines=False,
        caption=text,
        box=box_style,
        show_edge=wide,
        collapse_padding=not wide,
        pad_edge=wide,
    )
    texts = {col.name: [Text.from_markup(col.get(c)).plain for c in rows] for col in shown}
    widths = {name: max([len(name), *map(len, values)]) for name, values in texts.items()}
    # the narrow table within NARROW_WIDTH: the mode column (its setup words) wraps between words if need be
    over = sum(widths.values()) + 2 * (len(shown) - 1) - NARROW_WIDTH
    words = [w for value in texts.get("mode", []) for w in value.split()]
    mode_width = max([len("mode"), *map(len, words)], default=0)
    for col in shown:
        # names and numbers are never cut: every column but the wide status keeps its full width
        full = not (wide and col.name == "status")
        width: int | None = widths[col.name] if full else None
        wraps = not wide and col.name == "mode" and over > 0
        if wraps:
            width = max(mode_width, widths["mode"] - over)
        table.add_column(
            col.name,
            justify=col.justify,  # type: ignore[arg-type]
            min_width=width,
            max_width=width if wraps else None,
            no_wrap=full and not wraps,
        )
    for c in ordered(rows):
        table.add_row(*(col.get(c) for col in shown))
    return table


def problems(rows: Iterable[Cell]) -> list[tuple[str, str, str]]:
    """(what, status, why), most pressing first: every process of ``rows`` that did not end ok (each
    replica of a cell with several), every skipped cell, every cell unstable beyond having one process."""
    failed, skipped, unstable = [], [], []
    for c in ordered(rows):
        label = cell_label(c)
        bad = [p for p in c.processes if p.status != "ok"]
        if c.status == "unsupported":
            skipped.append((label, c.status, c.reason))
        elif bad:
            several = len(c.processes) > 1
            failed += [(f"{label} #{p.replica}" if several else label, p.status, p.reason) for p in bad]
        elif c.unstable and c.unstable != ONE_PROCESS:  # one process: the caption says it once
            unstable.append((label, "unstable", c.unstable))
    return failed + skipped + unstable


def notes(rows: list[Cell]) -> list[str]:
    """Why each cell that is not plainly ok is not (under the narrow table, whose status is one word)."""
    return [f"{label}: {what}: {why}" for label, what, why in problems(rows)]


def _status(c: Cell, short: bool = False) -> str:
    text = c.status if c.status == "ok" or short else f"{c.status}: {escape(c.reason[:60])}"
    unstable = c.unstable
    if c.status == "ok" and unstable and unstable != ONE_PROCESS:
        text = "unstable" if short else f"unstable ({unstable})"
        return f"[yellow]{text}[/]"
    return f"[{STATUS_STYLE.get(c.status, 'red')}]{text}[/]"


def skipped_table(results: Iterable[TrialResult]) -> Table:
    """The cells that did not run (``unsupported``), one line each with the reason."""
    rows = sorted((r for r in results if r.status == "unsupported"), key=lambda r: r.spec.name)
    table = Table(title=f"{len(rows)} cells not run (unsupported)", header_style="bold")
    table.add_column("trial")
    table.add_column("reason")
    for r in rows:
        table.add_row(escape(r.spec.name), escape(r.reason))
    return table


def tables(batch_cells: list[Cell], title: str = "", wide: bool = False) -> list[RenderableType]:
    """What ``run`` and ``compare`` print: the cells that ran (one row each; the narrow table with
    the reasons of the cells not plainly ok under it), then the skipped cells."""
    ran = [c for c in batch_cells if c.status != "unsupported"]
    out: list[RenderableType] = [comparison_table(ran, title, wide)] if ran or len(ran) == len(batch_cells) else []
    if not wide and (reasons := notes(ran)):
        out.append(Text("\n".join(f"  {line}" for line in reasons), overflow="fold"))
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
            escape(r.label),
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
    detail = f"{tput:,.0f} samples/s" if tput else escape(r.reason[:80])
    rate, bound = r.metrics.get(M.SERVER_MAX_RATE), r.metrics.get(M.SERVER_P99_BOUND)
    if r.status == "ok" and bound is not None:
        detail = f"max {rate:,.0f} requests/s" if rate is not None else "no rate"
        detail += f" with p99 <= {significant(bound)} ms"
    detail += f", val acc {acc:.3f}" if acc is not None else ""
    style = STATUS_STYLE.get(r.status, "red")
    return f"[{style}]{r.status:>11}[/] {escape(r.spec.name)} bs={r.spec.batch_size} #{r.replica}  {detail}"


def mlflow_ui_command(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"the tracking server at {uri}; open these pages in a browser:"
    return f"mlflow ui --backend-store-uri {uri} (serves {UI_DEFAULT}), then open:"


class Eta:
    """The batch's remaining time, from the plan and the trials finished so far in this invocation.

    A trial still to run is expected to take as long (in its own wall time) as the finished trials
    of its architecture, framework and mode took on average (else those of its framework, else all
    of them); the elapsed time per second of finished trials' wall time turns that into batch time,
    so trials running side by side and the scheduling between them are counted as they happened.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.todo: dict[tuple[str, int], TrialSpec] = {}
        self.walls: dict[tuple[str, ...], list[float]] = {}

    def add(self, specs: Iterable[TrialSpec]) -> None:
        for s in specs:
            key = (s.trial_key, sum(1 for k in self.todo if k[0] == s.trial_key))
            self.todo[key] = s

    @staticmethod
    def _keys(s: TrialSpec) -> tuple[tuple[str, ...], ...]:
        return ((s.architecture, s.framework, s.mode), (s.framework,), ())

    def done(self, r: TrialResult) -> None:
        key = next((k for k in self.todo if k[0] == r.trial_key), None)
        if key is not None:
            del self.todo[key]
        for k in self._keys(r.spec):
            self.walls.setdefault(k, []).append(r.wall_s)

    def seconds(self) -> float | None:
        """Seconds to the end of the batch; None before the first trial finished."""
        finished = self.walls.get(())
        if not finished or sum(finished) <= 0:
            return None
        per_wall = (self.clock() - self.started) / sum(finished)

        def expected(s: TrialSpec) -> float:
            walls = next(w for k in self._keys(s) if (w := self.walls.get(k)))
            return sum(walls) / len(walls)

        return per_wall * sum(expected(s) for s in self.todo.values())

    def text(self) -> str:
        left = self.seconds()
        if left is None:
            return "ETA after the first trial" if self.todo else ""
        return f"ETA {_duration(left)}"


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class BatchProgress:
    """A progress bar with the batch's ETA and one line per finished trial, fed by the batch lifecycle's events."""

    def __init__(self, console: Console, what: str):
        self.console, self.what = console, what
        self.batch_id: str | None = None
        self.eta = Eta()
        self.progress = Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[eta]}"),
            console=console,
            refresh_per_second=2,
        )
        self.bar = self.progress.add_task("running trials", total=None, visible=False, eta="")

    def __enter__(self) -> BatchProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _started(self, b: journal.Batch, todo: list[TrialSpec], finished: int) -> None:
        if self.batch_id is None:  # trials start now: Ray's and the store's start-up is not trial time
            self.eta.started = self.eta.clock()
        self.eta.add(todo)
        if self.batch_id == b.batch_id:  # --until-stable: another round for the unstable cells
            self.console.print(f"until stable: {len(todo)} more processes for unstable cells")
            task = self.progress.tasks[0]
            self.progress.update(self.bar, total=(task.total or 0) + len(todo), eta=self.eta.text())
            return
        self.batch_id = b.batch_id
        self.console.print(f"[bold]batch {b.batch_id}[/]: {self.what}; {len(todo)} processes to run")
        if finished:
            self.console.print(f"resuming: {finished} processes already finished, {len(todo)} to run")
        self.progress.update(self.bar, total=len(todo), visible=True, eta=self.eta.text())

    def _result(self, r: TrialResult) -> None:
        self.eta.done(r)
        left = self.eta.text()
        self.console.print(f"  {result_line(r)}" + (f"  [dim]({left})[/]" if left and self.eta.todo else ""))
        self.progress.update(self.bar, advance=1, eta=left)

    def _logging(self, count: int, uri: str) -> None:
        self.console.print(f"logging {count} cells to MLflow ({uri})")

    def events(self) -> batch.Events:
        return batch.Events(started=self._started, result=self._result, logging=self._logging)
