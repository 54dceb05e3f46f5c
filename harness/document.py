"""A batch written up: the MLflow parent run's description (Markdown) and ``harness report``'s HTML.

Both come from one :class:`Writeup`: the batch's cells (:mod:`harness.cells`), its verdicts
(:mod:`harness.compare`: frameworks against each other within the batch when it has several, and
the batch against a base batch when given) and its figures (:mod:`harness.figures`). The HTML is one
self-contained file: figures inlined as PNG data, the style inline, no script and no link to fetch.
It holds the summary table (one row per cell), the verdict tables, the figures, the environment of
every node the batch ran on, and every cell that was skipped, failed, diverged or is unstable, with
its reason.
"""

from __future__ import annotations

import base64
import html
import shlex
import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from rich.text import Text

from harness import compare as cmp
from harness import figures as F
from harness import report
from harness.cells import ONE_PROCESS, Cell

DESCRIPTION_LIMIT = 8000  # MLflow's longest tag value (mlflow.note.content is a tag)
BASELINES = ("torch", "jax", "tensorflow", "mxnet")  # the framework the others are compared against, if present


def reproduce(meta: dict[str, Any], batch_id: str) -> str:
    """The command that runs the batch's matrix again (in the recorded order, ``--seed``)."""
    argv = [str(a) for a in meta.get("argv", [])]
    if "run" in argv[:3]:
        args = argv[argv.index("run") + 1 :]
        kept: list[str] = []
        skip = False
        for a in args:
            if skip:
                skip = False
                continue
            if a in ("--resume", "--seed"):
                skip = True
                continue
            if not a.startswith(("--resume=", "--seed=")):
                kept.append(a)
        args = kept
    else:
        args = [str(meta.get("suite", "SUITE"))]
    seeds = meta.get("order_seeds") or []
    seed = ["--seed", str(seeds[0])] if seeds else []
    return shlex.join(["harness", "run", *args, *seed])


@dataclass
class Writeup:
    """What is known about one batch, and the views of it."""

    batch_id: str
    cells: list[Cell]
    meta: dict[str, Any] = field(default_factory=dict)
    against: cmp.Comparison | None = None  # this batch (NEW) against a base batch
    threshold: float = cmp.DEFAULT_THRESHOLD

    @property
    def suite(self) -> str:
        return str(self.meta.get("suite") or "?")

    @property
    def ran(self) -> list[Cell]:
        return [c for c in self.cells if c.status != "unsupported"]

    @cached_property
    def by_framework(self) -> cmp.Comparison | None:
        """Every framework against the baseline framework, cell by cell (None with one framework)."""
        present = {c.spec.framework for c in self.ran if c.throughput is not None}
        if len(present) < 2:
            return None
        baseline = next(f for f in (*BASELINES, *sorted(present)) if f in present)
        measured = [c for c in self.cells if c.spec.framework in present]
        return cmp.within_batch(
            measured, "framework", baseline, self.threshold, "default", label=self.batch_id, allow_mismatch=False
        )

    @property
    def comparisons(self) -> list[cmp.Comparison]:
        return [c for c in (self.against, self.by_framework) if c is not None]

    @cached_property
    def figures(self) -> list[F.Figure]:
        usable = [c for c in self.comparisons if not c.refused and c.rows]
        return F.figures(self.ran, usable[0] if usable else None)

    # --- what went wrong -----------------------------------------------------------------------

    def problems(self) -> list[tuple[str, str, str]]:
        """(what, status, why): see :func:`harness.report.problems`."""
        return report.problems(self.cells)

    def nodes(self) -> list[dict[str, Any]]:
        """Each node the batch ran on (the first record of each host), with the frameworks it ran."""
        found: dict[str, dict[str, Any]] = {}
        for c in self.cells:
            for p in c.processes:
                env = p.environment
                records = [w.get("node") or {} for w in env.get("workers", [])] or [env.get("node") or {}]
                for node in records:
                    host = str(node.get("hostname") or env.get("hostname") or "")
                    if not host:
                        continue
                    entry = found.setdefault(host, {"node": dict(node) or {"hostname": host}, "frameworks": set()})
                    if p.framework_version:
                        entry["frameworks"].add(f"{p.spec.framework} {p.framework_version}")
                    if not entry["node"].get("cpu_model") and env.get("cpu_model"):
                        entry["node"]["cpu_model"] = env["cpu_model"]
        return [found[h] for h in sorted(found)]

    # --- Markdown (the parent run's description) -------------------------------------------------

    def _matrix(self) -> str:
        def values(get: Any) -> str:
            return ", ".join(str(v) for v in dict.fromkeys(get(c.spec) for c in self.cells))

        repeats = self.meta.get("repeats", max((len(c.processes) for c in self.cells), default=1))
        return (
            f"frameworks {values(lambda s: s.framework)}; architectures {values(lambda s: s.architecture)}; "
            f"modes {values(lambda s: s.mode)}; batch sizes {values(lambda s: s.batch_size)}; "
            f"devices {values(lambda s: s.device)}; {repeats} process(es) per cell; {len(self.cells)} cells "
            f"({len(self.ran)} ran, {len(self.cells) - len(self.ran)} not run)"
        )

    def markdown(self, limit: int = DESCRIPTION_LIMIT) -> str:
        """The description: what ran, the table with intervals and verdicts, what did not, how to rerun.

        Within ``limit`` characters (an MLflow tag), every section keeps its head: the table, the
        verdict tables and the list of problems are cut to the rows that fit, each saying how many
        more ``report.html`` has."""
        created = self.meta.get("created_at")
        when = time.strftime(" · %Y-%m-%d %H:%M UTC", time.gmtime(created)) if created else ""
        commit = self.meta.get("git_commit")
        head = [
            f"**Batch `{self.batch_id}`** · suite `{self.suite}`" + (f" · commit `{commit}`" if commit else "") + when,
            "",
            f"Matrix: {self._matrix()}.",
        ]
        tail = [
            "**Reproduce:**",
            "",
            f"    {reproduce(self.meta, self.batch_id)}",
            "",
            "Figures: the `figures/` artifacts (PNG and SVG); everything, with each node's environment: `report.html`.",
        ]
        problems = self.problems()
        # (title lines, rows, footer lines) of each section that can be cut
        sections = [self._table_markdown()]
        sections += [self._verdicts_markdown(c) for c in self.comparisons]
        if problems:
            rows = [f"- `{name}`: {what}: {_one_line(why, 200)}" for name, what, why in problems]
            sections.append((["**Not run, failed or unstable:**", ""], rows, []))
        rows_kept = [len(rows) for _, rows, _ in sections]

        def render() -> str:
            parts = ["\n".join(head)]
            for (title, rows, footer), kept in zip(sections, rows_kept, strict=True):
                more = [f"… {len(rows) - kept} more rows in `report.html`"] if kept < len(rows) else []
                parts.append("\n".join([*title, *rows[:kept], *more, *footer]))
            parts.append("\n".join(tail))
            return "\n\n".join(parts)

        text = render()
        while len(text) > limit and any(rows_kept):
            longest = max(range(len(sections)), key=lambda k: rows_kept[k])
            rows_kept[longest] = rows_kept[longest] // 2 if rows_kept[longest] > 4 else rows_kept[longest] - 1
            text = render()
        return text if len(text) <= limit else text[: limit - 40] + "\n\n… (cut: see `report.html`)"

    def _table_markdown(self) -> tuple[list[str], list[str], list[str]]:
        ran = self.ran
        if not ran:
            return ["No cell ran."], [], []
        shown = report.columns(ran, wide=False)
        title = [
            "| " + " | ".join(col.name for col in shown) + " |",
            "|" + "|".join("---:" if col.justify == "right" else "---" for col in shown) + "|",
        ]
        rows = [
            "| " + " | ".join(_plain(col.get(c)).replace("|", "/") for col in shown) + " |" for c in report.ordered(ran)
        ]
        caption = report.caption(ran, wide=False).replace("; --wide: every column", "").replace("\n", "; ")
        return title, rows, ["", caption]

    @staticmethod
    def _verdicts_markdown(c: cmp.Comparison) -> tuple[list[str], list[str], list[str]]:
        if c.refused:
            return (
                [f"**{c.new_label} against {c.base_label}:** refused, environments differ: " + "; ".join(c.mismatches)],
                [],
                [],
            )
        counts = c.counts()
        title = [
            f"**Verdicts, {c.new_label} against {c.base_label}** (threshold ±{c.threshold:.1%}): "
            + ", ".join(f"{n} {v}" for v, n in counts.items()),
        ]
        if c.mismatches:
            title.append("Environments differ (compared with --allow-mismatch): " + "; ".join(c.mismatches))
        title += ["", "| cell | NEW/BASE | 95% interval | verdict |", "|---|---:|---|---|"]
        rows = [
            f"| {r.label} | {r.ratio.estimate:.3f} | {r.ratio.low:.3f} - {r.ratio.high:.3f} | {r.verdict} |"
            for r in c.rows
        ]
        footer = [
            f"{what}: {len(items)} (listed in `report.html`)"
            for what, items in (("Only on one side", c.unmatched), ("Not compared", c.not_compared))
            if items
        ]
        return title, rows, (["", *footer] if footer else [])

    # --- HTML ----------------------------------------------------------------------------------------

    def html(self) -> str:
        """The self-contained report."""
        e = html.escape
        created = self.meta.get("created_at")
        facts = [
            ("suite", self.suite),
            ("created", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(created)) if created else "-"),
            ("git commit", str(self.meta.get("git_commit", "-"))),
            ("matrix", self._matrix()),
            ("tracking URI", str(self.meta.get("tracking_uri", "-"))),
            ("reproduce", reproduce(self.meta, self.batch_id)),
        ]
        parts = [
            f"<h1>Batch {e(self.batch_id)}</h1>",
            "<table class=facts>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts) + "</table>",
            "<h2>Cells</h2>",
            self._cells_html(),
        ]
        for comparison in self.comparisons:
            parts.append(self._verdicts_html(comparison))
        if self.figures:
            parts.append("<h2>Figures</h2>")
            for fig in self.figures:
                data = base64.b64encode(fig.png).decode()
                parts.append(
                    f'<figure id="fig-{e(fig.name)}"><img alt="{e(fig.title)}" src="data:image/png;base64,{data}">'
                    f"<figcaption>{e(fig.caption)}</figcaption></figure>"
                )
        parts.append(self._problems_html())
        parts.append(self._nodes_html())
        return page(f"harness report: batch {self.batch_id} ({self.suite})", parts)

    def _cells_html(self) -> str:
        shown = report.columns(self.cells, wide=True)
        head = "".join(f"<th>{html.escape(col.name)}</th>" for col in shown)
        rows = []
        for c in report.ordered(self.cells):
            tds = "".join(
                f'<td class="{"num" if col.justify == "right" else ""}">{html.escape(_plain(col.get(c)))}</td>'
                for col in shown
            )
            rows.append(f'<tr data-trial-key="{c.trial_key}" class="status-{html.escape(c.status)}">{tds}</tr>')
        caption = html.escape(report.caption(self.cells)).replace("\n", "<br>")
        return (
            f'<table class="cells"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
            f"<p class=caption>{caption}</p>"
        )

    @staticmethod
    def _verdicts_html(c: cmp.Comparison) -> str:
        e = html.escape
        title = f"<h2>Verdicts: {e(c.new_label)} against {e(c.base_label)}</h2>"
        if c.refused:
            listed = "".join(f"<li>{e(m)}</li>" for m in c.mismatches)
            return f"{title}<p>Refused, environments differ:</p><ul>{listed}</ul>"
        counts = ", ".join(f"{n} {v}" for v, n in c.counts().items())
        differ = (
            "<p><strong>Environments differ (compared with --allow-mismatch):</strong> "
            f"{e('; '.join(c.mismatches))}</p>"
            if c.mismatches
            else ""
        )
        head = "".join(
            f"<th>{h}</th>" for h in ("cell", "NEW/BASE", "95% interval", "processes", "p Holm", "verdict", "note")
        )
        rows = "".join(
            f'<tr class="verdict-{r.verdict}"><td>{e(r.label)}</td><td class=num>{r.ratio.estimate:.3f}</td>'
            f"<td class=num>{r.ratio.low:.3f} - {r.ratio.high:.3f}</td><td class=num>{r.base.repeats} / "
            f"{r.new.repeats}</td><td class=num>{r.p_adjusted:.2g}</td><td>{r.verdict}</td><td>{e(r.note)}</td></tr>"
            for r in c.rows
        )
        extra = "".join(
            f"<p>{what}: {e('; '.join(items))}</p>"
            for what, items in (("Only on one side", c.unmatched), ("Not compared", c.not_compared))
            if items
        )
        return (
            f"{title}{differ}<p>Threshold ±{c.threshold:.1%} ({e(c.threshold_source)}): {counts}. "
            f"{e(c.correction)}.</p>"
            f'<table class="verdicts"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>{extra}'
        )

    def _problems_html(self) -> str:
        problems = self.problems()
        if not problems:
            single = sum(1 for c in self.cells if c.unstable == ONE_PROCESS)
            if single:
                return (
                    f"<h2>Problems</h2><p>Every cell ran and finished ok. {single} cell(s) ran in one process: "
                    "their run-to-run spread is unknown (--repeats 3 or more gives an interval).</p>"
                )
            return "<h2>Problems</h2><p>Every cell ran, finished ok and is stable.</p>"
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(what)}</td><td>{html.escape(why)}</td></tr>"
            for name, what, why in problems
        )
        return (
            "<h2>Problems</h2><p>Cells skipped, failed, diverged or unstable, with the reason.</p>"
            f'<table class="problems"><thead><tr><th>cell</th><th>what</th><th>why</th></tr></thead>'
            f"<tbody>{rows}</tbody></table>"
        )

    def _nodes_html(self) -> str:
        items = []
        for entry in self.nodes():
            node = entry["node"]
            gpus = node.get("gpu") or []
            gpu = ", ".join(f"{g.get('name', '?')} ({g.get('memory_total_mb', '?')} MB)" for g in gpus) or "none"
            tpu = node.get("tpu") or {}
            facts = {
                "CPU": f"{node.get('cpu_model', '?')}: {node.get('cpu_logical', '?')} logical cores",
                "memory": f"{node.get('memory_total_mb', '?')} MB",
                "kernel": f"{node.get('kernel', '?')} ({node.get('machine', '?')})",
                "GPUs": gpu,
                "TPU": ", ".join(f"{k} {v}" for k, v in tpu.items()) if tpu else "none",
                "frameworks": ", ".join(sorted(entry["frameworks"])) or "-",
            }
            rows = "".join(f"<tr><th>{k}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items())
            items.append(f"<h3>{html.escape(str(node.get('hostname', '?')))}</h3><table class=facts>{rows}</table>")
        return "<h2>Nodes</h2>" + ("".join(items) or "<p>No node record.</p>")


def page(title: str, parts: list[str]) -> str:
    """A self-contained HTML page: the style inline, no script, nothing to fetch."""
    return (
        f"<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )


def _plain(markup: str) -> str:
    return Text.from_markup(markup).plain


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#212529;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #dee2e6}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #dee2e6;padding:.25em .5em;text-align:left;vertical-align:top}
thead th{background:#f1f3f5}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.facts th{background:#f8f9fa;width:9em}
tr.status-ok td:last-child{color:#2b8a3e}tr.status-unsupported{color:#868e96}
tr.verdict-faster td:nth-child(6){color:#2b8a3e}tr.verdict-slower td:nth-child(6){color:#c92a2a}
figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #dee2e6}
figcaption,.caption{font-size:.85em;color:#495057}
"""
