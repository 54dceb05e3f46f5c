"""Evidence for a claim and the verdict it supports (driver side; numpy and scipy).

A claim is tested under several *conditions* (a data set and model, a framework and batch size...).
Under each, the study measures one effect with a 95% interval, oriented so that the claim predicts
the effect lies above a null value (0 for a difference, 1 for a ratio). Each condition's state:

- ``supports``: the whole interval lies above ``null + margin``, where ``margin`` is the smallest effect
  that would matter (1 accuracy point, 5% of a time): the claimed effect is there and large enough;
- ``contradicts``: the whole interval lies below ``null + margin``: the claimed effect is absent,
  too small to matter, or reversed;
- ``within noise``: neither (the interval is too wide to tell, or there is no interval).

The claim's verdict from its conditions:

- ``supported``: every condition supports it;
- ``contradicted``: every condition contradicts it;
- ``depends``: some support and some contradict it; the verdict names which (the "on what");
- ``inconclusive``: anything else (some condition within noise and no split between the others);
  it says which conditions are within noise, so that more seeds or processes can be run for them.

Intervals of a mean over seeds are Student t intervals (seeds are the replicates); ratios of timing
cells come from :func:`harness.stats.ratio_interval` (processes are the replicates).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

State = Literal["supports", "contradicts", "within noise"]
Verdict = Literal["supported", "contradicted", "depends", "inconclusive"]
VERDICTS: tuple[Verdict, ...] = ("supported", "contradicted", "depends", "inconclusive")
LEVEL = 0.95


@dataclass(frozen=True)
class Effect:
    """An estimate and its interval (``low``/``high`` None: no interval, e.g. one replicate)."""

    estimate: float
    low: float | None
    high: float | None
    replicates: int
    note: str = ""  # how the interval was made ("5 seeds", "1 process: window jitter only")

    @property
    def known(self) -> bool:
        return self.low is not None and self.high is not None


@dataclass(frozen=True)
class Evidence:
    """One condition of a claim: what was compared, the effect and how to read it."""

    condition: str  # e.g. "mnist1d, cnn1d vs mlp_shallow at 1/32 of the data"
    effect: Effect
    null: float = 0.0  # no effect
    margin: float = 0.0  # the smallest effect that would matter, in the effect's units
    direction: Literal[1, -1] = 1  # 1: the claim predicts effect > null; -1: effect < null
    unit: str = ""  # "accuracy points", "x"
    inputs: dict[str, float] = field(default_factory=dict)  # trial key -> the number it contributed
    factors: dict[str, str] = field(default_factory=dict)  # what the condition is: {"batch": "32", ...}

    @property
    def state(self) -> State:
        e = self.effect
        if e.low is None or e.high is None:
            return "within noise"
        # on the claim's side: d > 0 means "as the claim says"
        lo, hi = sorted(((e.low - self.null) * self.direction, (e.high - self.null) * self.direction))
        if lo > self.margin:
            return "supports"
        if hi < self.margin:
            return "contradicts"
        return "within noise"


@dataclass(frozen=True)
class Finding:
    """A claim's verdict and the sentence that says why."""

    verdict: Verdict
    because: str


def verdict(evidence: Sequence[Evidence]) -> Finding:
    """The claim's verdict from its conditions (see the module docstring)."""
    if not evidence:
        return Finding("inconclusive", "nothing was measured for it")
    by: dict[State, list[str]] = {"supports": [], "contradicts": [], "within noise": []}
    for e in evidence:
        by[e.state].append(e.condition)
    yes, no, unsure = by["supports"], by["contradicts"], by["within noise"]
    n = len(evidence)
    if len(yes) == n:
        return Finding("supported", f"all {n} condition(s) support it")
    if len(no) == n:
        return Finding("contradicted", f"all {n} condition(s) contradict it")
    if yes and no:
        rest = f"; within noise: {_list(unsure)}" if unsure else ""
        on = _split_by(evidence)
        if on is not None:
            return Finding("depends", on + rest)
        return Finding("depends", f"holds for {_list(yes)}; not for {_list(no)}{rest}")
    decided = [f"{len(yes)} support it"] if yes else [f"{len(no)} contradict it"] if no else []
    return Finding(
        "inconclusive",
        ", ".join([*decided, f"{len(unsure)} of {n} within noise ({_list(unsure)})"]) + ": more seeds or processes",
    )


def _split_by(evidence: Sequence[Evidence]) -> str | None:
    """``on the batch: holds at 1, not at 32``: the factor whose values separate the conditions that
    support the claim from those that contradict it (the one with the fewest values; None if none)."""
    decided = [e for e in evidence if e.state != "within noise"]
    common = set.intersection(*(set(e.factors) for e in evidence)) if evidence else set()
    found: list[tuple[int, str, list[str], list[str]]] = []
    for factor in common:
        yes = list(dict.fromkeys(e.factors[factor] for e in decided if e.state == "supports"))
        no = list(dict.fromkeys(e.factors[factor] for e in decided if e.state == "contradicts"))
        if not set(yes) & set(no):
            found.append((len(set(yes) | set(no)), factor, yes, no))
    if not found:
        return None
    _, factor, yes, no = min(found)
    return f"depends on the {factor}: holds for {', '.join(yes)}; not for {', '.join(no)}"


def _list(items: Sequence[str], limit: int = 6) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def mean_effect(values: Sequence[float], note: str = "seeds") -> Effect:
    """The mean of independent replicates (one per seed) with its Student t 95% interval."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return Effect(math.nan, None, None, 0, "no replicate")
    mean = float(x.mean())
    if x.size < 2:
        return Effect(mean, None, None, 1, f"1 {note.rstrip('s')}: no interval")
    from harness.stats import _scipy_stats

    t = float(_scipy_stats().t.ppf(0.5 + LEVEL / 2, x.size - 1))
    half = t * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Effect(mean, mean - half, mean + half, int(x.size), f"{x.size} {note}")


def log_ratio_of_ratios(a: Effect, b: Effect) -> Effect:
    """``a / b`` for two independent ratio intervals (e.g. the compiled path's speed-up at two depths):
    on the log scale the estimates subtract and the half-widths add in quadrature (each interval taken
    as symmetric in the log around its estimate: the wider side). Approximate, and says so."""
    est = a.estimate / b.estimate
    if not (a.known and b.known) or min(a.estimate, b.estimate) <= 0:
        return Effect(est, None, None, min(a.replicates, b.replicates), "no interval on one side")

    def half(e: Effect) -> float:
        assert e.low is not None and e.high is not None
        return max(math.log(e.estimate / e.low), math.log(e.high / e.estimate))

    h = math.hypot(half(a), half(b))
    note = "ratio of two ratio intervals (log half-widths in quadrature)"
    jitter = [e.note for e in (a, b) if "window jitter" in e.note]
    note = f"{jitter[0]}; {note}" if jitter else note
    return Effect(est, est * math.exp(-h), est * math.exp(h), min(a.replicates, b.replicates), note)
