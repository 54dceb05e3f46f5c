"""A study written up: the HTML report (#8's format), the MLflow description, the figures, the JSON.

One :class:`StudyReport` makes all of them from the same sections, so the numbers in the report,
in ``report.json`` and in the MLflow description are the same numbers; ``report.json`` also names
the trial keys (and so the MLflow child runs) every number came from.
"""

from __future__ import annotations

import base64
import html
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from harness import metrics as M
from harness import report as R
from harness.cells import Cell
from harness.document import DESCRIPTION_LIMIT, page
from harness.figures import COLORS, Figure, _log, _new, _render
from harness.study import deep_vs_shallow as dvs
from harness.study.evidence import Effect, mean_effect

VERDICT_STYLE = {"supported": "#2b8a3e", "contradicted": "#c92a2a", "depends": "#e67700", "inconclusive": "#868e96"}
MODEL_COLORS = ("#495057", "#1971c2", "#d9480f", "#2f9e44", "#ae3ec9", "#f59f00", "#0c8599")


@dataclass
class StudyReport:
    record: dict[str, Any]
    sections: list[dvs.Section]
    cells: dict[str, list[Cell]]  # batch name -> its cells
    agreement: dvs.Table
    reproduce: str

    @property
    def scale(self) -> dvs.Scale:
        return dvs.SCALES[self.record["scale"]]

    @property
    def quick(self) -> bool:
        return self.scale.name != "full"

    def _qualified(self, verdict: str) -> str:
        return f"{verdict} ({self.scale.name})" if self.quick else verdict

    # --- JSON ----------------------------------------------------------------------------------

    def data(self) -> dict[str, Any]:
        """Every verdict and number, with the trial keys each came from."""

        def effect(e: Effect) -> dict[str, Any]:
            return {"estimate": e.estimate, "low": e.low, "high": e.high, "replicates": e.replicates, "note": e.note}

        return {
            "study": self.record["study"],
            "study_id": self.record["study_id"],
            "scale": self.scale.name,
            "frameworks": self.record["frameworks"],
            "batches": self.record["batches"],
            "reproduce": self.reproduce,
            "sections": [
                {
                    "number": s.number,
                    "title": s.title,
                    "claim": s.claim,
                    "verdict": s.finding.verdict,
                    "metric": s.metric,
                    "because": s.finding.because,
                    "by_framework": {fw: f.verdict for fw, f in s.by_framework.items()},
                    "evidence": [
                        {
                            "condition": e.condition,
                            "state": e.state,
                            "null": e.null,
                            "margin": e.margin,
                            "unit": e.unit,
                            "effect": effect(e.effect),
                            "inputs": e.inputs,
                        }
                        for e in s.evidence
                    ],
                    "tables": [{"title": t.title, "columns": t.columns, "rows": t.rows} for t in s.tables],
                    "notes": s.notes,
                }
                for s in self.sections
            ],
        }

    # --- Markdown (the MLflow description) -----------------------------------------------------

    def markdown(self, limit: int = DESCRIPTION_LIMIT) -> str:
        r = self.record
        lines = [
            f"**Study `{r['study_id']}`** · {r['study']} · scale `{self.scale.name}` · frameworks "
            f"{', '.join(r['frameworks'])} · commit `{r.get('git_commit', '')}`",
            "",
            "| # | claim | verdict | why |",
            "|---|---|---|---|",
        ]
        for s in self.sections:
            why = s.finding.because.replace("|", "/")
            lines.append(f"| {s.number} | {s.claim} | **{self._qualified(s.finding.verdict)}** | {why[:400]} |")
        lines += [
            "",
            "Batches: " + ", ".join(f"{k} `{v}`" for k, v in r["batches"].items()) + ".",
            "",
            "**Reproduce:**",
            "",
            f"    {self.reproduce}",
            "",
            "Every number, table and figure: `report.html`; the numbers with the trial keys they came from: "
            "`report.json`; figures: `figures/`.",
        ]
        text = "\n".join(lines)
        return text if len(text) <= limit else text[: limit - 40] + "\n\n… (cut: see `report.html`)"

    # --- HTML ----------------------------------------------------------------------------------

    def html(self) -> str:
        e = html.escape
        r = self.record
        facts = [
            ("study", f"{r['study']} ({r['study_id']})"),
            ("scale", self.scale.name + (": quick verdicts, fewer seeds and sizes" if self.quick else "")),
            ("frameworks", ", ".join(r["frameworks"])),
            ("devices", ", ".join(r["devices"])),
            ("created", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(r.get("created_at", 0)))),
            ("git commit", str(r.get("git_commit", "-"))),
            ("batches", ", ".join(f"{k}: {v}" for k, v in r["batches"].items())),
            ("tracking URI", str(r.get("tracking_uri", "-"))),
            ("reproduce", self.reproduce),
        ]
        parts = [
            f"<h1>Deep vs shallow: six claims, measured ({e(self.scale.name)})</h1>",
            "<table class=facts>" + "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in facts) + "</table>",
            "<h2>Verdicts</h2>",
            self._summary_html(),
            f"<p class=caption>{e(_verdict_rules())}</p>",
        ]
        figures = {f.name: f for f in self.figures}
        for s in self.sections:
            parts.append(self._section_html(s, figures.get(s.figure)))
        parts.append("<h2>Where the frameworks agree</h2>")
        parts.append(_table_html(self.agreement))
        parts.append(self._problems_html())
        return page(f"harness study {r['study']} {r['study_id']}", parts)

    def _summary_html(self) -> str:
        e = html.escape
        fws = sorted({fw for s in self.sections for fw in s.by_framework}, key=list(COLORS).index)
        head = "".join(f"<th>{e(x)}</th>" for x in ["#", "claim", "verdict", "why", *fws])
        rows = []
        for s in self.sections:
            v = s.finding.verdict
            per_fw = "".join(
                f'<td style="color:{VERDICT_STYLE[s.by_framework[fw].verdict]}">{e(s.by_framework[fw].verdict)}</td>'
                if fw in s.by_framework
                else "<td>-</td>"
                for fw in fws
            )
            rows.append(
                f'<tr data-claim="{s.number}" data-verdict="{e(v)}"><td>{s.number}</td><td>{e(s.claim)}</td>'
                f'<td style="color:{VERDICT_STYLE[v]};font-weight:bold">{e(self._qualified(v))}</td>'
                f"<td>{e(s.finding.because)}</td>{per_fw}</tr>"
            )
        return f"<table class=summary><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"

    def _section_html(self, s: dvs.Section, figure: Figure | None) -> str:
        e = html.escape
        v = s.finding.verdict
        out = [
            f'<h2 id="claim-{s.number}">{s.number}. {e(s.title)}: '
            f'<span style="color:{VERDICT_STYLE[v]}">{e(self._qualified(v))}</span></h2>',
            f"<p><b>Claim.</b> {e(s.claim)}</p>",
            f"<p><b>Measured.</b> {e(s.method)}</p>",
        ]
        rows = []
        for ev in s.evidence:
            eff = ev.effect
            ci = f"[{_num(eff.low)}, {_num(eff.high)}]" if eff.known else "-"
            expects = f"{'>' if ev.direction > 0 else '<'} {_num(ev.null)}"
            rows.append(
                f'<tr data-state="{e(ev.state)}"><td>{e(ev.condition)}</td><td class=num>{_num(eff.estimate)}</td>'
                f"<td class=num>{ci}</td><td>{e(expects)} (margin {_num(ev.margin)} {e(ev.unit)})</td>"
                f"<td>{e(eff.note)}</td><td>{e(ev.state)}</td></tr>"
            )
        out.append(
            "<table class=evidence><thead><tr><th>condition</th><th>effect</th><th>95% interval</th>"
            f"<th>the claim expects</th><th>replicates</th><th>state</th></tr></thead><tbody>{''.join(rows)}"
            "</tbody></table>"
        )
        out.append(f"<p><b>Verdict: {e(self._qualified(v))}.</b> {e(s.finding.because)}.</p>")
        for t in s.tables:
            out.append(_table_html(t))
        for note in s.notes:
            out.append(f"<p class=caption>{e(note)}</p>")
        if figure is not None:
            data = base64.b64encode(figure.png).decode()
            out.append(
                f'<figure id="fig-{e(figure.name)}"><img alt="{e(figure.title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{e(figure.caption)}</figcaption></figure>"
            )
        batch_name = dvs.COMPUTE if s.number in (1, 6) else dvs.LEARNING
        out.append(
            f"<p class=caption>Reproduce: <code>{e(self.reproduce)}</code>; this section's cells: batch "
            f"<code>{e(self.record['batches'][batch_name])}</code> (<code>harness report "
            f"{e(self.record['batches'][batch_name])}</code>).</p>"
        )
        return "\n".join(out)

    def _problems_html(self) -> str:
        e = html.escape
        rows = [
            f"<tr><td>{e(name)}</td><td>{e(batch)}</td><td>{e(what)}</td><td>{e(why)}</td></tr>"
            for batch, cs in self.cells.items()
            for name, what, why in R.problems(cs)
            if what != "unstable"
        ]
        if not rows:
            return "<h2>Not run or failed</h2><p>None: every planned cell ran.</p>"
        return (
            "<h2>Not run or failed</h2><table><thead><tr><th>cell</th><th>batch</th><th>status</th><th>why</th>"
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )

    # --- figures -------------------------------------------------------------------------------

    @cached_property
    def figures(self) -> list[Figure]:
        made = [
            self._computation(),
            self._curves(M.VAL_ACCURACY, "learning_curves", "Held-out accuracy against training-set share"),
            self._curves(M.TRAIN_VAL_GAP, "generalisation_gap", "Train minus held-out accuracy against share"),
            self._saliency(),
            self._transfer(),
            self._acceleration(),
        ]
        return [f for f in made if f is not None]

    def _ok(self, name: str) -> list[Cell]:
        return [c for c in self.cells.get(name, []) if c.status == "ok"]

    def _computation(self) -> Figure | None:
        timing = dvs.Timing(self._ok(dvs.COMPUTE))
        scale = self.scale
        families = [("MLP", [dvs.mlp(d, scale.mlp_width) for d in scale.mlp_depths])]
        if scale.resnet_ns:
            families.append(("CIFAR ResNet", [dvs.resnet(n) for n in scale.resnet_ns]))
        fws = sorted({c.spec.framework for c in timing.cells}, key=list(COLORS).index)
        if not fws:
            return None
        from matplotlib.ticker import LogLocator

        fig = _new(10)
        axes = fig.subplots(1, len(families), squeeze=False)[0]
        for ax, (family, archs) in zip(axes, families, strict=True):
            for fw in fws:
                default = dvs.FRAMEWORKS[fw].resolve_compile("auto", "cpu")
                for mode, style in (("infer", "-"), ("train", "--")):
                    pts = [timing.find(a, fw, mode, scale.timing_batch, default) for a in archs]
                    xy = [
                        (c.metrics[M.FLOPS_PER_SAMPLE] / 1e6, 1e6 / c.metrics[M.THROUGHPUT])
                        for c in pts
                        if c is not None and c.metrics.get(M.THROUGHPUT)
                    ]
                    if xy:
                        x, y = zip(*xy, strict=True)
                        ax.plot(x, y, style, marker="o", color=COLORS[fw], label=f"{fw} {mode}")
            _log(ax, "x")
            _log(ax, "y")
            ax.xaxis.set_major_locator(LogLocator(10))  # decades only: the 1-2-5 labels collide here
            ax.set_xlabel("MFLOP per sample")
            ax.set_ylabel("us per sample")
            ax.set_title(family, fontsize=9)
            ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize=7)
        return _render(
            fig,
            "computation",
            "Time per sample against FLOPs per sample",
            "Each point is one depth (shallow at the left). Where a line is flatter than the FLOPs grow, "
            "dispatch and framework overhead, not arithmetic, set the time.",
        )

    def _curves(self, metric: str, name: str, title: str) -> Figure | None:
        learn = dvs.Learning(self._ok(dvs.LEARNING))
        scale = self.scale
        fig = _new(10)
        axes = fig.subplots(1, len(scale.models), squeeze=False)[0]
        drawn = False
        for ax, (dataset, models) in zip(axes, scale.models.items(), strict=True):
            for i, arch in enumerate(models):
                xs, ys, lo, hi = [], [], [], []
                for f in scale.fractions:
                    seeds, _ = learn.value(metric, arch, dataset, fraction=float(f))
                    eff = mean_effect(dvs.seed_means(seeds))
                    if not math.isfinite(eff.estimate):
                        continue
                    xs.append(float(f))
                    ys.append(eff.estimate)
                    lo.append(eff.estimate - (eff.low if eff.low is not None else eff.estimate))
                    hi.append((eff.high if eff.high is not None else eff.estimate) - eff.estimate)
                if xs:
                    drawn = True
                    style = "--" if arch in (dvs.LINEAR, dvs.SHALLOW) else "-"
                    color = MODEL_COLORS[i % len(MODEL_COLORS)]
                    ax.errorbar(xs, ys, yerr=[lo, hi], fmt=style, marker="o", color=color, capsize=3, label=arch)
            _log(ax, "x", base=2)
            ax.set_xlabel("share of the training split")
            ax.set_ylabel("held-out accuracy" if metric == M.VAL_ACCURACY else "train - held-out accuracy")
            ax.set_title(dataset, fontsize=9)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        if not drawn:
            return None
        return _render(
            fig,
            name,
            title,
            "Mean over seeds (a seed: the mean over the frameworks that ran it) with 95% t intervals; dashed: the "
            "shallow models.",
        )

    def _bars(
        self, name: str, title: str, caption: str, groups: Sequence[tuple[str, list[tuple[str, Effect]]]], ylabel: str
    ) -> Figure | None:
        if not any(bars for _, bars in groups):
            return None
        fig = _new(10)
        ax = fig.subplots()
        labels = sorted({label for _, bars in groups for label, _ in bars}, key=lambda x: (x != "from scratch", x))
        width = 0.8 / max(1, len(labels))
        for j, label in enumerate(labels):
            xs: list[float] = []
            ys: list[float] = []
            err: tuple[list[float], list[float]] = ([], [])
            for i, (_, bars) in enumerate(groups):
                for lab, eff in bars:
                    if lab != label or not math.isfinite(eff.estimate):
                        continue
                    xs.append(i + (j - (len(labels) - 1) / 2) * width)
                    ys.append(eff.estimate)
                    err[0].append(eff.estimate - (eff.low if eff.low is not None else eff.estimate))
                    err[1].append((eff.high if eff.high is not None else eff.estimate) - eff.estimate)
            ax.bar(xs, ys, width, yerr=err, capsize=3, color=MODEL_COLORS[(j + 1) % len(MODEL_COLORS)], label=label)
        ax.set_xticks(range(len(groups)), [g for g, _ in groups], fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
        if len(labels) > 1:
            ax.legend(fontsize=7)
        return _render(fig, name, title, caption)

    def _saliency(self) -> Figure | None:
        learn = dvs.Learning(self._ok(dvs.LEARNING))
        groups = []
        for dataset, models in self.scale.models.items():
            if not dataset.startswith("mnist1d"):
                continue
            for arch in models:
                seeds, _ = learn.value(M.SALIENCY_AUC, arch, dataset)
                if seeds:
                    groups.append((arch, [("saliency AUC", mean_effect(dvs.seed_means(seeds)))]))
        fig = self._bars(
            "saliency",
            "Does the saliency fall on the digit? (MNIST-1D, held-out samples)",
            "AUC of |d logit / d x_i| ranking the template's positions above the rest; 0.5 is chance. Mean over "
            "seeds with 95% t intervals.",
            groups,
            "saliency AUC",
        )
        return fig

    def _transfer(self) -> Figure | None:
        learn = dvs.Learning(self._ok(dvs.LEARNING))
        f = float(self.scale.transfer_fraction)
        groups = []
        for arch in self.scale.transfer_models:
            bars = []
            for label, pre in (("from scratch", False), ("pretrained on 0-4", True)):
                seeds, _ = learn.value(M.VAL_ACCURACY, arch, "mnist1d", fraction=f, transfer=True, pretrain=pre)
                if seeds:
                    bars.append((label, mean_effect(dvs.seed_means(seeds))))
            groups.append((arch, bars))
        return self._bars(
            "transfer",
            f"MNIST-1D classes 5-9 from {dvs.frac_label(self.scale.transfer_fraction)} of their data",
            "Held-out accuracy on classes 5-9: fine-tuned after pretraining on classes 0-4 (output layer reset) "
            "against trained from scratch; mean over seeds with 95% t intervals.",
            groups,
            "held-out accuracy",
        )

    def _acceleration(self) -> Figure | None:
        timing = dvs.Timing(self._ok(dvs.COMPUTE))
        scale = self.scale
        archs = [dvs.mlp(d, scale.mlp_width) for d in scale.mlp_depths]
        fws = sorted({c.spec.framework for c in timing.cells}, key=list(COLORS).index)
        if not fws:
            return None
        fig = _new(10)
        axes = fig.subplots(1, len(scale.accel_batches), squeeze=False)[0]
        for ax, batch in zip(axes, scale.accel_batches, strict=True):
            for fw in fws:
                for mode, style in (("infer", "-"), ("train", "--")):
                    if mode not in scale.accel_modes:
                        continue
                    xs, ys = [], []
                    for depth, arch in zip(scale.mlp_depths, archs, strict=True):
                        off, on = (timing.find(arch, fw, mode, batch, c) for c in ("off", "on"))
                        if off is None or on is None:
                            continue
                        xs.append(depth)
                        ys.append(on.metrics[M.THROUGHPUT] / off.metrics[M.THROUGHPUT])
                    if xs:
                        ax.plot(xs, ys, style, marker="o", color=COLORS[fw], label=f"{fw} {mode}")
            _log(ax, "x", base=2)
            _log(ax, "y")
            ax.axhline(1.0, color="#868e96", lw=0.8)
            ax.set_xlabel(f"MLP depth (width {scale.mlp_width})")
            ax.set_ylabel("compiled / eager throughput")
            ax.set_title(f"batch {batch}", fontsize=9)
            ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize=7)
        return _render(
            fig,
            "acceleration",
            "Speed-up of each framework's compiler over its eager path, against depth",
            "Above 1: compiled is faster. A line that rises with depth means the gain grows with depth.",
        )


def _num(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def _table_html(t: dvs.Table) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in t.columns)
    rows = "".join("<tr>" + "".join(f"<td>{e(str(x))}</td>" for x in row) + "</tr>" for row in t.rows)
    return f"<p><b>{e(t.title)}</b></p><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _verdict_rules() -> str:
    return (
        "Each condition's effect has a 95% interval, oriented so that the claim predicts it above the null. "
        "supports: the interval lies above null + margin (the smallest effect that would matter); contradicts: it "
        "lies below null + margin (the claimed effect is absent, too small to matter, or reversed); otherwise "
        "within noise. A claim is supported when every condition supports it, "
        "contradicted when every condition contradicts it, depends when some do each (the verdict says which), "
        "inconclusive otherwise. Accuracy intervals are over seeds (Student t); timing intervals over processes "
        "(harness.stats); at one process per cell they show window jitter only."
    )
