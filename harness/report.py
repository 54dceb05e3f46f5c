"""Comparison tables of trial results (rich)."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table

from harness.spec import TrialResult

STATUS_STYLE = {"ok": "green", "unsupported": "yellow", "diverged": "magenta"}


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _to_target(r: TrialResult) -> str:
    t = r.metrics.get("time_to_target_s")
    if t is not None:
        return f"{t:.2f}"
    reached_none = r.status == "ok" and r.spec.train.target_accuracy is not None and "val_accuracy" in r.metrics
    return "never" if reached_none else "-"


def comparison_table(results: Iterable[TrialResult], title: str = "") -> Table:
    """One row per (architecture, framework, mode[, dataset, batch size, device]).

    The accuracy columns (dataset, val acc, target, s to target) appear when some trial trained to
    accuracy; "s to target" is the training time until the held-out accuracy first reached the
    target ("never": not within the step budget).
    """
    results = list(results)
    trained = any("val_accuracy" in r.metrics or r.spec.trains_to_accuracy for r in results)
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
        frac = m.get("peak_fraction")
        status = r.status if r.status == "ok" else f"{r.status}: {r.reason[:60]}"
        cells = [
            s.architecture,
            s.framework,
            s.mode,
            s.device,
            str(s.batch_size),
            r.compile_mode or "-",
            _num(m.get("throughput_samples_per_s"), ",.0f"),
            _num(m.get("latency_ms_p50"), ".3f"),
            _num(m.get("latency_ms_p99"), ".3f"),
            _num(m.get("compile_s"), ".2f"),
            _num(m.get("peak_host_rss_mb"), ".0f"),
            _num(m.get("achieved_gflops"), ".1f"),
            _num(None if frac is None else 100 * frac, ".1f"),
        ]
        if trained:
            cells[3:3] = [s.dataset]
            cells += [_num(m.get("val_accuracy"), ".3f"), _num(s.train.target_accuracy, ".2f"), _to_target(r)]
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


def mlflow_ui_command(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"open {uri} in a browser"
    return f"mlflow ui --backend-store-uri {uri}"
