"""The figures of a batch (matplotlib, no display): one module for MLflow and the HTML report.

:func:`figures` draws what a batch has data for, each figure once, rendered as PNG and SVG:

- ``throughput``: samples/s per cell, one bar per framework within each architecture/mode/batch
  group, with the cell's 95% between-process interval (hatched bars: one process, no interval);
- ``latency``: p50, p90 and p99 per cell (infer: per single-stream request; train: per step), with
  the p50 and p99 intervals where processes vary;
- ``curves``: training loss and held-out accuracy against the step, every framework on the same axes;
- ``memory``: peak host RSS (and peak device memory where a framework reports it) per cell;
- ``time_to_target``: training seconds until the held-out accuracy first reached the target;
- ``scaling``: throughput against data-parallel workers, with the ideal (linear) line;
- ``verdicts``: a comparison's ratios NEW/BASE with their intervals, the ±threshold band and verdicts.

The same :class:`Figure` objects go to the MLflow parent run (``figures/NAME.png`` and ``.svg``)
and into ``harness report``'s HTML (the PNG, inlined), so both show the same picture.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from harness import metrics as M
from harness.cells import Cell
from harness.compare import Comparison, cell_label
from harness.report import compact
from harness.stats import Interval

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure as MplFigure

COLORS = {"torch": "#d9480f", "tensorflow": "#f59f00", "jax": "#1971c2", "mxnet": "#2f9e44"}
VERDICT_COLORS = {"faster": "#2f9e44", "slower": "#e03131", "same": "#1971c2", "inconclusive": "#868e96"}
WIDTH_IN = 8.0
DPI = 100
MAX_CURVE_PANELS = 8  # groups of training curves drawn (the rest are in MLflow's per-run charts)
MAX_GROUPS = 40  # cell groups drawn per figure: a readable height (the tables have every cell)
MAX_VERDICT_ROWS = 120


@dataclass(frozen=True)
class Figure:
    name: str  # file stem: figures/NAME.png and .svg
    title: str
    caption: str
    png: bytes
    svg: str


def _color(framework: str) -> str:
    return COLORS.get(framework, "#495057")


def _group(cell: Cell) -> str:
    """The cell's label without its framework: what the frameworks are compared on."""
    return cell_label(cell, skip="framework")


def _frameworks(cells: Sequence[Cell]) -> list[str]:
    order = list(COLORS)
    found = {c.spec.framework for c in cells}
    return sorted(found, key=lambda f: (order.index(f) if f in order else len(order), f))


def _new(rows: int, row_in: float = 0.32, min_in: float = 2.4) -> MplFigure:
    """An empty figure as tall as ``rows`` rows of bars (callers add their axes)."""
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(WIDTH_IN, max(min_in, 1.3 + row_in * rows)), dpi=DPI, layout="constrained")


def _log(ax: Axes, axis: str = "x", base: float = 10) -> None:
    """A log axis labelled in plain text (matplotlib's default 10^n labels are mathtext: slow to lay out)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    scale = ax.set_xscale if axis == "x" else ax.set_yscale
    scale("log", base=base)
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(LogLocator(base, subs=(1.0, 2.0, 5.0) if base == 10 else (1.0,)))
    target.set_major_formatter(FuncFormatter(lambda x, _pos: compact(x)))
    target.set_minor_formatter(NullFormatter())


def _render(fig: MplFigure, name: str, title: str, caption: str) -> Figure:
    fig.suptitle(title, fontsize=11, fontweight="bold")
    png, svg = io.BytesIO(), io.StringIO()
    fig.savefig(png, format="png", dpi=DPI, metadata={"Software": None})
    fig.set_layout_engine("none")  # the PNG's layout stands: the SVG does not lay the figure out again
    fig.savefig(svg, format="svg", metadata={"Date": None})
    return Figure(name, title, caption, png.getvalue(), svg.getvalue())


BarValue = tuple[float, float | None, float | None, bool]  # value, low, high, has an interval


def _grouped_bars(ax: Axes, cells: Sequence[Cell], value: Callable[[Cell], BarValue | None], log: bool) -> int:
    """Horizontal bars: one row group per :func:`_group`, one bar per framework; the rows drawn."""
    rows = [(c, bar) for c in cells if (bar := value(c)) is not None]
    groups = sorted({_group(c) for c, _ in rows})
    frameworks = _frameworks([c for c, _ in rows])
    height = 0.8 / max(1, len(frameworks))
    for i, fw in enumerate(frameworks):  # one call per framework: few artists, quick to draw
        mine = [(groups.index(_group(c)) + (i - (len(frameworks) - 1) / 2) * height, b) for c, b in rows
                if c.spec.framework == fw]  # fmt: skip
        for known in (True, False):
            part = [(y, b) for y, b in mine if b[3] is known]
            if part:
                ax.barh(
                    [y for y, _ in part],
                    [b[0] for _, b in part],
                    height=height * 0.92,
                    color=_color(fw),
                    hatch=None if known else "//",
                    edgecolor="white",
                )
        spread = [(y, b) for y, b in mine if b[3] and b[1] is not None and b[2] is not None]
        if spread:
            ax.errorbar(
                [b[0] for _, b in spread],
                [y for y, _ in spread],
                xerr=[[b[0] - (b[1] or 0) for _, b in spread], [(b[2] or 0) - b[0] for _, b in spread]],
                fmt="none",
                ecolor="#212529",
                capsize=2,
                lw=1,
            )
    ax.set_yticks(range(len(groups)), groups, fontsize=8)
    ax.invert_yaxis()
    if log:
        _log(ax)
    ax.grid(axis="x", alpha=0.3)
    _legend(ax, frameworks)
    return len(groups) * max(1, len(frameworks))


def _legend(ax: Axes, frameworks: Sequence[str]) -> None:
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color=_color(f), label=f) for f in frameworks],
        fontsize=8,
        loc="lower right",
        framealpha=0.9,
    )


def _throughput(cells: Sequence[Cell]) -> Figure | None:
    def value(c: Cell) -> BarValue | None:
        t = c.throughput
        return None if t is None else (t.estimate, t.low, t.high, t.between_known)

    measured = [c for c in cells if c.throughput is not None]
    if not measured:
        return None
    fig = _new(len(measured))
    ax = fig.subplots()
    _grouped_bars(ax, measured, value, log=True)
    ax.set_xlabel("samples/s (log scale)")
    single = sum(1 for c in measured if not c.throughput or not c.throughput.between_known)
    caption = "Throughput per cell: geometric mean over the cell's processes, bars: 95% interval between processes." + (
        f" Hatched: {single} cell(s) with one process (run-to-run spread unknown)." if single else ""
    )
    return _render(fig, "throughput", "Throughput", caption)


def _known(interval: Interval | None) -> Interval:
    assert interval is not None  # a cell with latency samples has every percentile
    return interval


def _latency(cells: Sequence[Cell]) -> Figure | None:
    rows = [c for c in cells if c.latency_groups]
    if not rows:
        return None
    rows.sort(key=lambda c: (_group(c), _frameworks([c])[0]))
    fig = _new(len(rows))
    ax = fig.subplots()
    percentiles = [[_known(c.latency(q)) for q in (50, 90, 99)] for c in rows]
    for fw in _frameworks(rows):
        mine = [(y, p) for y, (c, p) in enumerate(zip(rows, percentiles, strict=True)) if c.spec.framework == fw]
        ys = [y for y, _ in mine]
        color = _color(fw)
        ax.hlines(ys, [p[0].estimate for _, p in mine], [p[2].estimate for _, p in mine], color=color, lw=2, alpha=0.5)
        for k, marker in enumerate("osD"):
            ax.plot([p[k].estimate for _, p in mine], ys, ls="none", marker=marker, color=color, ms=5)
        for k in (0, 2):
            known = [(y, p[k]) for y, p in mine if p[k].between_known]
            if known:
                ax.errorbar(
                    [p.estimate for _, p in known],
                    [y for y, _ in known],
                    xerr=[[p.estimate - p.low for _, p in known], [p.high - p.estimate for _, p in known]],
                    fmt="none",
                    ecolor="#212529",
                    capsize=2,
                    lw=0.8,
                )
    labels = [f"{_group(c)} · {c.spec.framework}" for c in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    _log(ax)
    ax.set_xlabel("milliseconds (log scale): ● p50  ■ p90  ◆ p99")
    ax.grid(axis="x", alpha=0.3)
    caption = (
        "Latency percentiles per cell: infer cells per single-stream request, train cells per step; "
        "bars: 95% interval of p50 and p99 between processes."
    )
    return _render(fig, "latency", "Latency percentiles", caption)


def _curves(cells: Sequence[Cell]) -> Figure | None:
    trained = [c for c in cells if M.LOSS in c.representative.history and c.ok_processes]
    if not trained:
        return None
    groups: dict[str, list[Cell]] = {}
    for c in sorted(trained, key=_group):
        groups.setdefault(_group(c), []).append(c)
    shown = list(groups.items())[:MAX_CURVE_PANELS]
    with_val = any(M.VAL_ACCURACY in c.representative.history for c in trained)
    columns = 2 if with_val else 1
    fig = _new(len(shown), row_in=2.0, min_in=2.6)
    axes = fig.subplots(len(shown), columns, squeeze=False)
    for row, (label, members) in enumerate(shown):
        for c in members:
            r = c.representative
            for col, key in enumerate((M.LOSS, M.VAL_ACCURACY)[:columns]):
                series = r.history.get(key)
                if not series:
                    continue
                steps = r.history_steps.get(key) or list(range(len(series)))
                axes[row][col].plot(steps, series, color=_color(c.spec.framework), lw=1.2, label=c.spec.framework)
        axes[row][0].set_title(f"{label}: training loss", fontsize=9)
        _log(axes[row][0], "y")
        if columns > 1:
            axes[row][1].set_title(f"{label}: held-out accuracy", fontsize=9)
            axes[row][1].set_ylim(0, 1)
        for ax in axes[row]:
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=8)
        axes[row][0].legend(fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("training step", fontsize=8)
    more = len(groups) - len(shown)
    caption = (
        "Training loss and held-out accuracy against the step, every framework from the same initial weights "
        "on the same axes (one process per cell: the first that finished ok)."
        + (f" {more} more group(s) in MLflow's per-run charts." if more else "")
    )
    return _render(fig, "curves", "Training curves", caption)


def _memory(cells: Sequence[Cell]) -> Figure | None:
    def metric(key: str) -> Callable[[Cell], BarValue | None]:
        def value(c: Cell) -> BarValue | None:
            v = c.metrics.get(key) if c.ok_processes else None
            return None if v is None else (v, None, None, True)

        return value

    host = [c for c in cells if c.ok_processes and M.PEAK_HOST_RSS_MB in c.metrics]
    device = [c for c in cells if c.ok_processes and M.PEAK_DEVICE_MEM_MB in c.metrics]
    nvml = [c for c in cells if c.ok_processes and M.PEAK_DEVICE_MEM_NVML_MB in c.metrics]
    if not host:
        return None
    panels = [(host, M.PEAK_HOST_RSS_MB, "peak host RSS, MB")]
    if device:
        panels.append((device, M.PEAK_DEVICE_MEM_MB, "peak device memory, MB (framework's counter)"))
    if nvml:
        panels.append((nvml, M.PEAK_DEVICE_MEM_NVML_MB, "peak device memory, MB (NVML, the process)"))
    fig = _new(len(host))
    for ax, (members, key, xlabel) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        _grouped_bars(ax, members, metric(key), log=False)
        ax.set_xlabel(xlabel)
    caption = (
        "Peak memory per cell (median over its processes): host RSS of the worker process"
        + ("; device memory as the framework reports it." if device else ".")
        + (" NVML: what the driver holds for the worker process (sampled every 50 ms)." if nvml else "")
    )
    return _render(fig, "memory", "Memory", caption)


def _time_to_target(cells: Sequence[Cell]) -> Figure | None:
    trained = [c for c in cells if c.ok_processes and c.spec.trains_to_accuracy and c.spec.train.target_accuracy]
    reached = [c for c in trained if M.TIME_TO_TARGET_S in c.metrics]
    if not reached:
        return None

    def value(c: Cell) -> BarValue | None:
        v = c.metrics.get(M.TIME_TO_TARGET_S)
        return None if v is None else (v, None, None, True)

    fig = _new(len(reached))
    ax = fig.subplots()
    _grouped_bars(ax, reached, value, log=False)
    ax.set_xlabel("training seconds to the target held-out accuracy")
    never = [f"{_group(c)} · {c.spec.framework}" for c in trained if M.TIME_TO_TARGET_S not in c.metrics]
    targets = sorted({f"{c.spec.train.target_accuracy:.2f} on {c.spec.dataset}" for c in trained})
    caption = f"Time to target ({', '.join(targets)}), median over each cell's processes." + (
        f" Not reached by every process within the step budget: {'; '.join(never)}." if never else ""
    )
    return _render(fig, "time_to_target", "Time to target accuracy", caption)


def _scaling(cells: Sequence[Cell]) -> Figure | None:
    multi = [c for c in cells if c.spec.workers > 1 and c.throughput is not None]
    if not multi:
        return None
    lines: dict[tuple[str, str], list[tuple[int, float, float, float]]] = {}
    for c in multi:
        base = c.single
        s = c.spec
        key = (f"{s.architecture} {s.mode} bs{s.batch_size} {s.device} {s.scaling}", s.framework)
        t = c.throughput
        assert t is not None
        points = lines.setdefault(key, [])
        if base is not None and base.throughput is not None and not any(w == 1 for w, *_ in points):
            b = base.throughput
            points.append((1, b.estimate, b.low, b.high))
        points.append((c.spec.workers, t.estimate, t.low, t.high))
    fig = _new(len(lines), row_in=0.4, min_in=3.2)
    ax = fig.subplots()
    for (label, fw), points in sorted(lines.items()):
        points.sort()
        w = [p[0] for p in points]
        ax.errorbar(
            w,
            [p[1] for p in points],
            yerr=[[p[1] - p[2] for p in points], [p[3] - p[1] for p in points]],
            color=_color(fw),
            marker="o",
            capsize=2,
            label=f"{label} · {fw}",
        )
        if points[0][0] == 1:
            ax.plot(w, [points[0][1] * k for k in w], color=_color(fw), ls=":", lw=1)
    _log(ax, "x", base=2)
    _log(ax, "y")
    ax.set_xlabel("workers (data-parallel processes)")
    ax.set_ylabel("samples/s, all workers")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    caption = "Throughput against workers with 95% intervals; dotted: ideal (linear from the 1-worker cell)."
    return _render(fig, "scaling", "Scaling", caption)


def verdicts(comparison: Comparison | None) -> Figure | None:
    """The verdict chart of a comparison (None when it was refused or has no pair)."""
    if comparison is None or comparison.refused or not comparison.rows:
        return None
    rows = comparison.rows[:MAX_VERDICT_ROWS]
    fig = _new(len(rows))
    ax = fig.subplots()
    t = comparison.threshold
    ax.axvspan(1 - t, 1 + t, color="#e9ecef", zorder=0)
    ax.axvline(1, color="#495057", lw=1)
    for verdict, color in VERDICT_COLORS.items():
        mine = [(y, r.ratio) for y, r in enumerate(rows) if r.verdict == verdict]
        if not mine:
            continue
        ax.errorbar(
            [x.estimate for _, x in mine],
            [y for y, _ in mine],
            xerr=[[x.estimate - x.low for _, x in mine], [x.high - x.estimate for _, x in mine]],
            fmt="o",
            color=color,
            capsize=3,
            label=verdict,
        )
    ax.legend(fontsize=8, loc="best", framealpha=0.9)
    ax.set_yticks(range(len(rows)), [r.label for r in rows], fontsize=8)
    ax.invert_yaxis()
    _log(ax)
    ax.set_xlabel(f"throughput ratio NEW/BASE (> 1: NEW faster); band: ±{t:.1%}")
    ax.grid(axis="x", alpha=0.3)
    caption = (
        f"{comparison.new_label} against {comparison.base_label}: ratio and 95% interval per pair of cells; "
        f"{comparison.correction}."
    )
    if len(comparison.rows) > len(rows):
        caption += f" Drawn: the first {len(rows)} of {len(comparison.rows)} pairs; the verdict table has them all."
    return _render(fig, "verdicts", "Verdicts", caption)


def figures(cells: Sequence[Cell], comparison: Comparison | None = None) -> list[Figure]:
    """Every figure the batch (and the comparison, if given) has data for, in a fixed order; a batch of
    more than :data:`MAX_GROUPS` groups (architecture, mode, batch size...) is drawn for the first ones."""
    groups = sorted({_group(c) for c in cells})
    note = ""
    if len(groups) > MAX_GROUPS:
        kept = set(groups[:MAX_GROUPS])
        cells = [c for c in cells if _group(c) in kept]
        note = f" Drawn: the first {MAX_GROUPS} of {len(groups)} groups; the tables have every cell."
    drawn = (
        _throughput(cells),
        _latency(cells),
        _curves(cells),
        _memory(cells),
        _time_to_target(cells),
        _scaling(cells),
    )
    out = [replace(f, caption=f.caption + note) for f in drawn if f is not None]
    chart = verdicts(comparison)
    return out + ([chart] if chart is not None else [])
