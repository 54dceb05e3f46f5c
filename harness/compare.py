"""Verdicts: is NEW faster, slower or the same as BASE, cell by cell, and can that be told from noise?

Two kinds of comparison, one machinery:

- ``harness compare BASE NEW``: cells of two batches matched by what they measure (architecture,
  framework, mode, device, batch size, dataset), not by batch;
- ``harness compare BATCH --by framework [--baseline torch]``: within one batch, every other value of
  an axis (framework, compile, batch_size, device) against the baseline value, cell by cell.

Per pair of cells: the throughput ratio NEW/BASE (> 1: NEW is faster) with a 95% interval from
independent hierarchical bootstraps of both sides' processes, Welch's t-test on the logs of the
per-process throughputs (which decides significance) and a Mann-Whitney U test (reported), and a
verdict (:func:`harness.stats.verdict`): ``same`` when the interval lies inside ±threshold,
``faster``/``slower`` when the difference is significant after Holm's correction over every pair of
the comparison and beyond the threshold, otherwise ``inconclusive`` with the processes per side that
would likely decide it. Holm's correction keeps the chance of any false alarm in the whole comparison
at 5%, so the exit code (1 when a cell is ``slower``) can gate CI.

Verdicts are refused when the two sides ran in different environments (framework versions, CPU or
GPU model, threads, precision, compile mode, measurement protocol, reserved cores): the differences
are listed and ``--allow-mismatch`` overrides, saying so in the output. The git commit is
informational only: it is what a regression check compares.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from harness import stats
from harness.cells import Cell
from harness.spec import SpecError

MATCH = ("architecture", "framework", "mode", "device", "batch_size", "dataset", "precision", "workers", "scaling",
         "tpu_slice", "accelerator_type")  # fmt: skip
AXES = ("framework", "compile", "batch_size", "device", "precision", "workers")
# what differs by design when comparing along an axis (with the framework: its version)
EXPECTED = {
    "framework": {"framework_version", "compile mode", "options"},  # each its own path and build options
    "compile": {"compile mode"},
    "device": {"device_name"},
}
ALPHA = 0.05
DEFAULT_THRESHOLD = 0.05


def parse_threshold(text: str) -> float | None:
    """``5%`` or ``0.05`` as a fraction; ``auto`` as None (the node's calibrated noise)."""
    if text == "auto":
        return None
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise SpecError(
            f"threshold must be a percentage like 5%, a fraction like 0.05, or auto; got {text!r}"
        ) from None
    if not 0 <= value < 1:
        raise SpecError(f"threshold must be between 0% and 100%, got {text!r}")
    return value


def _spec_value(cell: Cell, name: str) -> Any:
    """The cell's value of a spec field (``compile``: as asked; what ran is in :func:`environment`)."""
    value = getattr(cell.spec, name)
    return value.to_dict() if hasattr(value, "to_dict") else value


def environment(cell: Cell) -> dict[str, Any]:
    """What must be equal on both sides for a verdict to mean what it says."""
    r, s = cell.representative, cell.spec
    env = r.environment
    runtime = env.get("framework_runtime", {})
    return {
        "framework_version": f"{s.framework} {r.framework_version}",
        "cpu_model": env.get("cpu_model", ""),
        "device_name": runtime.get("device_name", "") if isinstance(runtime, dict) else "",
        "threads": s.threads,
        "precision": s.precision,
        "compile mode": r.compile_mode or s.compile,  # what ran: auto resolves per framework and device
        "measurement protocol": json.dumps(s.measure.to_dict(), sort_keys=True),
        "training setup": json.dumps(s.train.to_dict(), sort_keys=True),
        "options": json.dumps(s.options, sort_keys=True),
        "reserved cores": len(env.get("reserved_cores", [])),
    }


@dataclass
class Row:
    """One pair of cells."""

    label: str
    base: Cell
    new: Cell
    ratio: stats.Interval  # throughput NEW/BASE
    p_welch: float
    p_mann_whitney: float
    p_adjusted: float = 1.0
    verdict: stats.Verdict = "inconclusive"
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "cell": self.label,
            "base_trial_key": self.base.trial_key,
            "new_trial_key": self.new.trial_key,
            "ratio": self.ratio.estimate,
            "ratio_ci_low": self.ratio.low,
            "ratio_ci_high": self.ratio.high,
            "base_processes": self.base.repeats,
            "new_processes": self.new.repeats,
            "base_cv_between": self.base.cv_between,
            "new_cv_between": self.new.cv_between,
            "p_welch": self.p_welch,
            "p_mann_whitney": self.p_mann_whitney,
            "p_holm": self.p_adjusted,
            "verdict": self.verdict,
            "note": self.note,
        }


@dataclass
class Comparison:
    base_label: str
    new_label: str
    threshold: float
    threshold_source: str
    rows: list[Row] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    allow_mismatch: bool = False
    unmatched: list[str] = field(default_factory=list)
    not_compared: list[str] = field(default_factory=list)  # a side without a throughput (failed, unsupported)

    @property
    def refused(self) -> bool:
        return bool(self.mismatches) and not self.allow_mismatch

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.verdict == "slower"]

    @property
    def correction(self) -> str:
        m = sum(1 for r in self.rows if r.ratio.between_known)
        return (
            f"significance: Welch's t-test on log per-process throughput, Holm-corrected over {m} pairs "
            f"(family-wise false-alarm rate {ALPHA:.0%}); Mann-Whitney U p reported alongside"
        )

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(("faster", "slower", "same", "inconclusive"), 0)
        for r in self.rows:
            out[r.verdict] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base_label,
            "new": self.new_label,
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "correction": self.correction,
            "mismatches": self.mismatches,
            "allow_mismatch": self.allow_mismatch,
            "refused": self.refused,
            "counts": self.counts(),
            "rows": [r.to_dict() for r in self.rows],
            "unmatched": self.unmatched,
            "not_compared": self.not_compared,
        }

    def to_markdown(self) -> str:
        lines = [f"## {self.new_label} against {self.base_label}", ""]
        if self.mismatches:
            head = "Environments differ (allowed with --allow-mismatch)" if self.allow_mismatch else "Refused"
            lines += [f"**{head}:**", ""] + [f"- {m}" for m in self.mismatches] + [""]
            if self.refused:
                return "\n".join(lines)
        c = self.counts()
        lines += [
            f"Threshold ±{self.threshold:.1%} ({self.threshold_source}). {self.correction}.",
            "",
            f"{c['faster']} faster, {c['slower']} slower, {c['same']} same, {c['inconclusive']} inconclusive.",
            "",
            "| cell | NEW/BASE throughput | 95% interval | processes | p (Holm) | p (MWU) | verdict | note |",
            "|---|---:|---|---:|---:|---:|---|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.label} | {r.ratio.estimate:.3f} | {r.ratio.low:.3f} - {r.ratio.high:.3f} | "
                f"{r.base.repeats} / {r.new.repeats} | {r.p_adjusted:.3g} | {r.p_mann_whitney:.3g} | "
                f"**{r.verdict}** | {r.note} |"
            )
        for what, items in (("Only on one side", self.unmatched), ("Not compared", self.not_compared)):
            if items:
                lines += ["", f"{what}: " + "; ".join(items)]
        return "\n".join(lines)


def cell_label(cell: Cell, skip: str | None = None) -> str:
    """What a cell measures in one line (``mlp train bs32 cpu``), without ``skip``'s value."""
    s = cell.spec
    parts = [s.architecture, s.framework, s.mode, f"bs{s.batch_size}", s.device]
    if s.workers > 1:
        parts.append(f"w{s.workers}-{s.scaling}")
    parts += [v for v in (s.tpu_slice, s.accelerator_type) if v]
    if s.dataset != "synthetic":
        parts.append(s.dataset)
    if s.precision != "float32":
        parts.append(s.precision)
    if skip is not None:
        value = str(_spec_value(cell, skip))
        parts = [p for p in parts if p not in (value, f"bs{value}")]
    return " ".join(parts)


def _identity(cell: Cell, fields: Iterable[str]) -> tuple[Any, ...]:
    return tuple(str(_spec_value(cell, f)) for f in fields)


def _differences(pairs: list[tuple[Cell, Cell]], ignore: set[str]) -> list[str]:
    """Environment fields that differ between the sides, with both values (each difference once)."""
    seen: dict[str, set[tuple[str, str]]] = {}
    for base, new in pairs:
        a, b = environment(base), environment(new)
        for key in a:
            if key not in ignore and a[key] != b[key]:
                seen.setdefault(key, set()).add((str(a[key]), str(b[key])))
    out = []
    for key, values in seen.items():
        shown = "; ".join(f"{x!r} vs {y!r}" for x, y in sorted(values)[:3])
        more = f" (+{len(values) - 3} more)" if len(values) > 3 else ""
        out.append(f"{key}: {shown}{more}")
    return out


def _row(label: str, base: Cell, new: Cell, seed: int) -> Row:
    # seconds per sample: cells of different (global) batch sizes compare by samples per second
    b_steps, n_steps = ([g / c.spec.global_batch for g in c.step_groups] for c in (base, new))
    ratio = stats.ratio_interval(b_steps, n_steps, 50.0, higher_is_better=True, seed=seed)
    b, n = base.process_throughputs, new.process_throughputs
    return Row(label, base, new, ratio, stats.welch_p(b, n), stats.mann_whitney_p(b, n))


def _decide(comparison: Comparison) -> Comparison:
    testable = [r for r in comparison.rows if r.ratio.between_known]
    for row, p in zip(testable, stats.holm([r.p_welch for r in testable]), strict=True):
        row.p_adjusted = p
    for row in comparison.rows:
        if not row.ratio.between_known:
            row.verdict, row.note = "inconclusive", "1 process on a side: run-to-run spread unknown; use --repeats 5"
            continue
        row.verdict = stats.verdict(row.ratio, row.p_adjusted, comparison.threshold, ALPHA)
        unstable = [f"{side} {c.unstable}" for side, c in (("BASE", row.base), ("NEW", row.new)) if c.unstable]
        if row.verdict == "inconclusive":
            k = stats.repeats_needed(row.ratio, comparison.threshold, row.ratio.processes)
            row.note = (
                f"about {k} processes per side would likely decide it"
                if k < 100
                else "more than 100 processes per side: reduce the noise first (--reserve-cores, fewer threads)"
            )
        if unstable:
            row.note = "; ".join([*unstable, row.note]) if row.note else "; ".join(unstable)
    return comparison


def _pair(comparison: Comparison, pairs: list[tuple[str, Cell, Cell]], name: str, base: Cell, new: Cell) -> None:
    """``(name, base, new)`` joins the pairs, or the comparison notes why it cannot (a side without throughput)."""
    for side, cell in (("BASE", base), ("NEW", new)):
        if cell.throughput is None:
            comparison.not_compared.append(f"{name}: {side} has no throughput ({cell.status}: {cell.reason[:80]})")
            return
    pairs.append((name, base, new))


def between_batches(
    base: list[Cell],
    new: list[Cell],
    threshold: float,
    threshold_source: str,
    *,
    base_label: str,
    new_label: str,
    allow_mismatch: bool = False,
) -> Comparison:
    """NEW's cells against BASE's, matched by what they measure."""
    comparison = Comparison(base_label, new_label, threshold, threshold_source, allow_mismatch=allow_mismatch)
    by_id = {_identity(c, MATCH): c for c in base}
    new_ids = {_identity(c, MATCH) for c in new}
    pairs: list[tuple[str, Cell, Cell]] = []
    for cell in new:
        other = by_id.get(_identity(cell, MATCH))
        if other is None:
            comparison.unmatched.append(f"NEW {cell_label(cell)}")
            continue
        _pair(comparison, pairs, cell_label(cell), other, cell)
    comparison.unmatched += [f"BASE {cell_label(c)}" for c in base if _identity(c, MATCH) not in new_ids]
    return _finish(comparison, pairs, ignore=set())


def within_batch(
    cells: list[Cell],
    axis: str,
    baseline: str | None,
    threshold: float,
    threshold_source: str,
    *,
    label: str,
    allow_mismatch: bool = False,
) -> Comparison:
    """Every value of ``axis`` against ``baseline`` (default: the first value seen), cell by cell."""
    if axis not in AXES:
        raise SpecError(f"unknown axis {axis!r}; choose from {', '.join(AXES)}")
    values = list(dict.fromkeys(str(_spec_value(c, axis)) for c in cells))
    if baseline is None:
        baseline = values[0] if values else ""
    if baseline not in values:
        raise SpecError(f"baseline {baseline!r} is not a {axis} of batch {label}; choose from {', '.join(values)}")
    if len(values) < 2:
        raise SpecError(f"batch {label} has only one {axis} ({baseline}): nothing to compare --by {axis}")
    # along workers, the 1-worker cell is compared with every multi-worker cell, weak or strong
    rest = [f for f in (*MATCH, "threads", "compile") if f != axis and (axis, f) != ("workers", "scaling")]
    groups: dict[tuple[Any, ...], dict[str, Cell]] = {}
    for c in cells:
        groups.setdefault(_identity(c, rest), {})[str(_spec_value(c, axis))] = c
    comparison = Comparison(
        f"{axis}={baseline}",
        f"other values of {axis} ({label})",
        threshold,
        threshold_source,
        allow_mismatch=allow_mismatch,
    )
    pairs: list[tuple[str, Cell, Cell]] = []
    for members in groups.values():
        base = members.get(baseline)
        for value, cell in members.items():
            if value == baseline:
                continue
            name = f"{cell_label(cell, skip=axis)}: {value} / {baseline}"
            if base is None:
                comparison.unmatched.append(f"{name} (no {baseline} cell)")
                continue
            _pair(comparison, pairs, name, base, cell)
    return _finish(comparison, pairs, ignore=EXPECTED.get(axis, set()))


def _finish(comparison: Comparison, pairs: list[tuple[str, Cell, Cell]], ignore: set[str]) -> Comparison:
    comparison.mismatches = _differences([(b, n) for _, b, n in pairs], ignore)
    comparison.rows = [_row(label, b, n, seed=i) for i, (label, b, n) in enumerate(pairs)]
    return _decide(comparison)


def noise_threshold(cells: list[Cell], lookup: Callable[[str, str], float | None]) -> tuple[float, str]:
    """``--threshold auto``: the largest calibrated noise threshold of the nodes and devices these cells ran on."""
    nodes = sorted(
        {(str(p.environment.get("hostname", "")), c.spec.device) for c in cells for p in c.ok_processes} - {("", "")}
    )
    found = []
    for host, device in nodes:
        value = lookup(host, device)
        if value is None:
            raise SpecError(
                f"--threshold auto: node {host!r} ({device}) has no noise calibration; run `harness calibrate` "
                "there first (with --address for a cluster), or give a threshold such as --threshold 5%"
            )
        found.append((value, host, device))
    if not found:
        raise SpecError("--threshold auto: no cell of the NEW batch ran; give a threshold such as --threshold 5%")
    value, host, device = max(found)
    return value, f"auto: calibrated noise of {host} ({device})"
