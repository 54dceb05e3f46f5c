"""Between-process statistics for benchmark cells (driver side; numpy and scipy).

Unit of replication: the worker *process*. A cell is measured by K independent processes, each giving per-step
times from its timed windows. Windows inside one process share that process's state (allocator, clocks, placement,
warm caches), so they are not independent replicates: K processes give K replicates, however many windows each has.
A process's value is a percentile of its window times (the median by default); a cell's value is the geometric mean
of its processes' values (step times are ratio-scale, and comparisons are ratios).

Intervals come from a hierarchical bootstrap: resample processes with replacement, then windows with replacement
inside each chosen process, take each chosen process's percentile and combine them with the geometric mean (on the
log scale: a mean). With few processes the plain percentile interval is too narrow: the bootstrap spread of a mean
of K values is that of the sample shrunk by (K-1)/K, and a normal quantile stands where a Student one belongs.
Hesterberg (2015) corrects this with the 'expanded percentile': quantiles at alpha' = 2 Phi(-sqrt(K/(K-1))
t_{K-1,1-alpha/2}) (for a ratio: the two-sample variance factor and Welch-Satterthwaite df). Measured here, that
undercovers at small K: at K=5, alpha'/2 = 0.001, and a bootstrap of K values has almost no mass so far out (it
cannot pass the sample's extremes; all K draws on the largest has probability K^-K = 0.0003), so the tails it reads
are cut short: 93% coverage for a cell at K=5, 87% at K=3. So the expansion is applied as a stretch instead: the
bootstrap's own alpha/2 quantiles, their distances from the estimate multiplied by z_{1-alpha'/2} / z_{1-alpha/2} =
factor * t / z. For a normal bootstrap distribution this is the same interval (and the Student/Welch t interval); it
keeps the bootstrap's asymmetry and reads it where it is populated. With K = 1 no between-process spread is seen:
the interval (plain percentile) reflects window jitter only and is flagged ``between_known=False``.

Significance is decided by Welch's t-test on the logs of the per-process values (the model the intervals share). The
Mann-Whitney U p-value is reported beside it but decides nothing: with K = 5 per side its smallest exact two-sided
value is 2/252 = 0.0079, which Holm's correction across more than 6 cells (0.05/7 = 0.0071) can never reach.

Measured (``simulate``: 20 windows, process CV 0.08, window CV 0.05, 1000 resamples; ratio / cell coverage of 95%
intervals): K=5, 5000 experiments: 95.6% / 95.8% (expanded percentile: 95.4% / 93.1%; plain percentile: 89% / 84%);
K=3: 97.3% / 97.0% (expanded: 93% / 87%); K=10: ~95% / ~95%; K=2: 99.5% / 99.7% (conservative). A/A at K=5: 3.7% of
cells called faster or slower. Resampling windows as well as processes counts window jitter twice (it is already in the
spread of the process values); with ~20 windows per process that errs wide by a few percent of the variance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

LEVEL = 0.95
MAX_PROCESSES = 100  # repeats_needed's cap
_CHUNK_ELEMENTS = 4_000_000  # bound on one bootstrap draw (resampled windows), to bound memory
_ORDER_STATISTIC_FROM = 256  # more windows than this: a resample's percentile is drawn as an order statistic

Verdict = Literal["faster", "slower", "same", "inconclusive"]


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    processes: int  # K (for a ratio: min of the two sides)
    between_known: bool  # False when any side has K == 1: the interval then reflects window jitter only


def _scipy_stats() -> Any:
    """scipy.stats, imported on first use: it takes most of a CLI start (0.7 s) that many commands never need."""
    from scipy import stats

    return stats


def _windows(windows: ArrayLike) -> NDArray[np.float64]:
    w = np.asarray(windows, dtype=np.float64).ravel()
    if w.size == 0:
        raise ValueError("a process needs at least one window")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("per-step times must be finite and positive")
    return w


def _positive(values: ArrayLike) -> NDArray[np.float64]:
    v = np.asarray(values, dtype=np.float64).ravel()
    if not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise ValueError("per-process values must be finite and positive")
    return v


def _groups(groups: Sequence[ArrayLike]) -> list[NDArray[np.float64]]:
    out = [_windows(g) for g in groups]
    if not out:
        raise ValueError("a cell needs at least one process")
    return out


def process_value(windows: ArrayLike, q: float = 50.0) -> float:
    """The q-th percentile of one process's per-step times (q=50: the median)."""
    return float(np.percentile(_windows(windows), q))


def geomean(values: ArrayLike) -> float:
    """Geometric mean of positive values."""
    v = _positive(values)
    if v.size == 0:
        raise ValueError("geomean of no values")
    return float(np.exp(np.mean(np.log(v))))


def between_cv(values: ArrayLike) -> float:
    """Coefficient of variation (sample std, ddof=1, / mean) of per-process values; 0.0 for fewer than 2 values."""
    v = np.asarray(values, dtype=np.float64).ravel()
    if v.size < 2:
        return 0.0
    return float(np.std(v, ddof=1) / np.mean(v))


def _bootstrap_logs(
    groups: list[NDArray[np.float64]], q: float, resamples: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """Hierarchical bootstrap: (resamples, K) logs of the chosen processes' q-th percentiles of resampled windows.

    Processes are drawn with replacement for every resample at once; then, per group, every slot that chose that
    group gets its own window resample (one vectorised draw per group, chunked to bound memory)."""
    k = len(groups)
    choice = np.zeros((resamples, 1), dtype=np.intp) if k == 1 else rng.integers(0, k, size=(resamples, k))
    out = np.empty(choice.shape, dtype=np.float64)
    for g, w in enumerate(groups):
        mask = choice == g
        slots = int(np.count_nonzero(mask))
        if slots == 0:
            continue
        n = w.size
        if n > _ORDER_STATISTIC_FROM:
            out[mask] = np.log(_order_statistic_draws(np.sort(w), q, slots, rng))
            continue
        rows = max(1, _CHUNK_ELEMENTS // n)
        logs = np.empty(slots, dtype=np.float64)
        for start in range(0, slots, rows):
            stop = min(slots, start + rows)
            draws = w[rng.integers(0, n, size=(stop - start, n))]
            logs[start:stop] = np.log(np.percentile(draws, q, axis=1))
        out[mask] = logs
    return out


def _order_statistic_draws(
    w_sorted: NDArray[np.float64], q: float, count: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    """``count`` draws of a resample's q-th percentile, without resampling: exact for one order statistic.

    With U_1..U_n uniform, floor(n U_i) are n uniform draws of an index (a bootstrap resample), and the
    (j+1)-th smallest of them is floor(n U_(j+1)) with U_(j+1) ~ Beta(j+1, n-j). So the resample's order
    statistic j (j = round((n-1) q/100), the one nearest the interpolated percentile) is
    ``w_sorted[floor(n B)]``, B ~ Beta(j+1, n-j): O(count) instead of O(count * n log n). Used for long
    processes (thousands of single-stream requests), where one order statistic and the interpolated
    percentile differ by less than the spacing of neighbouring samples."""
    n = w_sorted.size
    j = round((n - 1) * q / 100.0)
    u = rng.beta(j + 1, n - j, size=count)
    return w_sorted[np.minimum((u * n).astype(np.intp), n - 1)]


def _stretch(alpha: float, factor: float, df: float) -> float:
    """Stretch of the bootstrap's alpha/2 quantiles from the estimate: factor * t_{df,1-alpha/2} / z_{1-alpha/2}.

    This is z_{1-alpha'/2} / z_{1-alpha/2} for Hesterberg's expanded alpha' = 2 Phi(-factor * t_{df,1-alpha/2}): the
    same interval as the expanded percentile when the bootstrap distribution is normal, read where it is populated."""
    sps = _scipy_stats()
    return factor * float(sps.t.ppf(1.0 - alpha / 2.0, df)) / float(sps.norm.ppf(1.0 - alpha / 2.0))


def _interval_logs(
    estimate: float, boot_logs: NDArray[np.float64], alpha: float, stretch: float | None
) -> tuple[float, float]:
    """(low, high) from the bootstrap's alpha/2 and 1-alpha/2 quantiles of a log statistic, their distances from the
    log estimate multiplied by ``stretch`` (None: the plain percentile interval)."""
    q_low, q_high = (float(x) for x in np.quantile(boot_logs, [alpha / 2.0, 1.0 - alpha / 2.0]))
    if stretch is None:
        return math.exp(q_low), math.exp(q_high)
    low = estimate - stretch * max(0.0, estimate - q_low)
    high = estimate + stretch * max(0.0, q_high - estimate)
    return math.exp(low), math.exp(high)


def _check(resamples: int, level: float) -> None:
    if resamples < 1:
        raise ValueError("resamples must be >= 1")
    if not 0.0 < level < 1.0:
        raise ValueError("level must lie in (0, 1)")


def cell_interval(
    groups: Sequence[ArrayLike],
    q: float = 50.0,
    *,
    resamples: int = 2000,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval:
    """Estimate and interval of a cell's per-step time at percentile q.

    estimate = geometric mean over processes of process_value(group, q). Interval: hierarchical bootstrap (processes,
    then windows within each chosen process; vectorised over resamples, deterministic for a seed) with the small-K
    correction (Hesterberg's expanded percentile, applied as a stretch of the alpha/2 quantiles: see the module
    docstring); with K == 1 the plain within-process bootstrap percentile interval at ``level`` and
    ``between_known=False``. Groups may have different lengths."""
    _check(resamples, level)
    gs = _groups(groups)
    k = len(gs)
    log_estimate = float(np.mean(np.log([process_value(g, q) for g in gs])))
    boot = _bootstrap_logs(gs, q, resamples, np.random.default_rng(seed)).mean(axis=1)
    alpha = 1.0 - level
    stretch = _stretch(alpha, math.sqrt(k / (k - 1)), k - 1) if k > 1 else None
    low, high = _interval_logs(log_estimate, boot, alpha, stretch)
    return Interval(math.exp(log_estimate), low, high, k, k > 1)


def _welch_expansion(la: NDArray[np.float64], lb: NDArray[np.float64]) -> tuple[float, float]:
    """(variance factor, Welch-Satterthwaite df) for the two-sample expanded percentile, from per-process logs."""
    ka, kb = la.size, lb.size
    va, vb = float(np.var(la, ddof=1)), float(np.var(lb, ddof=1))
    v_unbiased = va / ka + vb / kb
    v_boot = va * (ka - 1) / ka**2 + vb * (kb - 1) / kb**2
    factor = math.sqrt(v_unbiased / v_boot) if v_boot > 0 else 1.0
    denominator = (va / ka) ** 2 / (ka - 1) + (vb / kb) ** 2 / (kb - 1)
    df = v_unbiased**2 / denominator if denominator > 0 else float(ka + kb - 2)
    return factor, df


def ratio_interval(
    base: Sequence[ArrayLike],
    new: Sequence[ArrayLike],
    q: float = 50.0,
    *,
    higher_is_better: bool = True,
    resamples: int = 2000,
    level: float = LEVEL,
    seed: int = 0,
) -> Interval:
    """NEW relative to BASE for per-step times at percentile q.

    higher_is_better=True (throughputs): estimate = geomean(base) / geomean(new) of step times, > 1 means NEW is
    faster. higher_is_better=False (latencies): estimate = geomean(new) / geomean(base), > 1 means NEW's latency is
    higher. Interval: independent hierarchical bootstraps of both sides, ratio of their geomeans, with the two-sample
    small-K correction (variance factor sqrt(v_unbiased / v_boot) from the per-process logs, Welch-Satterthwaite df,
    applied as a stretch like ``cell_interval``'s); plain percentile and ``between_known=False`` if either side has
    K == 1. ``processes`` is min(K_base, K_new)."""
    _check(resamples, level)
    gb, gn = _groups(base), _groups(new)
    lb = np.log([process_value(g, q) for g in gb])
    ln = np.log([process_value(g, q) for g in gn])
    rng = np.random.default_rng(seed)
    boot_b = _bootstrap_logs(gb, q, resamples, rng).mean(axis=1)
    boot_n = _bootstrap_logs(gn, q, resamples, rng).mean(axis=1)
    sign = 1.0 if higher_is_better else -1.0
    log_estimate = sign * float(np.mean(lb) - np.mean(ln))
    boot = sign * (boot_b - boot_n)
    known = lb.size > 1 and ln.size > 1
    alpha = 1.0 - level
    stretch = _stretch(alpha, *_welch_expansion(lb, ln)) if known else None
    low, high = _interval_logs(log_estimate, boot, alpha, stretch)
    return Interval(math.exp(log_estimate), low, high, min(lb.size, ln.size), known)


def welch_p(base_values: ArrayLike, new_values: ArrayLike) -> float:
    """Two-sided Welch t-test p-value on the logs of per-process values.

    1.0 when either side has < 2 values or both have zero variance and equal means; 0.0 when both have zero variance
    and different means."""
    la, lb = np.log(_positive(base_values)), np.log(_positive(new_values))
    if la.size < 2 or lb.size < 2:
        return 1.0
    if np.ptp(la) == 0 and np.ptp(lb) == 0:  # exact test: a mean of equal floats can differ from them in the last bit
        return 1.0 if la[0] == lb[0] else 0.0
    ka, kb = la.size, lb.size
    va, vb = float(np.var(la, ddof=1)) / ka, float(np.var(lb, ddof=1)) / kb
    difference = float(np.mean(la) - np.mean(lb))
    df = (va + vb) ** 2 / (va**2 / (ka - 1) + vb**2 / (kb - 1))
    return float(2.0 * _scipy_stats().t.sf(abs(difference) / math.sqrt(va + vb), df))


def mann_whitney_p(base_values: ArrayLike, new_values: ArrayLike) -> float:
    """Two-sided Mann-Whitney U p-value on per-process values; 1.0 with < 1 value per side.

    Exact unless there are ties (scipy's exact distribution is not corrected for ties) or the samples are large."""
    a = np.asarray(base_values, dtype=np.float64).ravel()
    b = np.asarray(new_values, dtype=np.float64).ravel()
    if a.size < 1 or b.size < 1:
        return 1.0
    ties = np.unique(np.concatenate([a, b])).size < a.size + b.size
    method = "asymptotic" if ties or a.size * b.size > 10_000 else "exact"
    return float(_scipy_stats().mannwhitneyu(a, b, alternative="two-sided", method=method).pvalue)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given, monotone, capped at 1)."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    if m == 0:
        return []
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    adjusted = np.empty(m, dtype=np.float64)
    adjusted[order] = stepped
    return [float(x) for x in adjusted]


def repeats_needed(interval: Interval, threshold: float, processes: int) -> int:
    """How many processes per side would make a verdict likely.

    The interval's half-width on the log scale is taken to scale as 1/sqrt(K). If the estimate lies outside
    [1-threshold, 1+threshold]: the K at which the half-width falls below |log(estimate)| (the interval then excludes
    1); otherwise the K at which it falls below log(1+threshold) - |log(estimate)| (the interval then fits inside the
    threshold band), or the cap when that is <= 0. Never less than processes + 1, never more than 100."""
    floor = min(MAX_PROCESSES, processes + 1)
    half = (math.log(interval.high) - math.log(interval.low)) / 2.0
    distance = abs(math.log(interval.estimate))
    outside = not 1.0 - threshold <= interval.estimate <= 1.0 + threshold
    target = distance if outside else math.log(1.0 + threshold) - distance
    if target <= 0:
        return MAX_PROCESSES
    if half <= 0:
        return floor
    needed = math.floor(processes * (half / target) ** 2) + 1  # smallest K with half * sqrt(processes / K) < target
    return max(floor, min(MAX_PROCESSES, needed))


def verdict(
    interval: Interval,
    p_adjusted: float,
    threshold: float,
    alpha: float = 0.05,
    higher_is_better: bool = True,
) -> Verdict:
    """'faster', 'slower', 'same' or 'inconclusive' for a ratio interval (from ``ratio_interval`` with the same
    ``higher_is_better``) and its (adjusted) p-value.

    - not interval.between_known -> 'inconclusive'
    - 'same' when 1-threshold <= low and high <= 1+threshold
    - throughput: 'slower' when p_adjusted < alpha, high < 1 and estimate < 1 - threshold; 'faster' when
      p_adjusted < alpha, low > 1 and estimate > 1 + threshold
    - latency (higher_is_better=False, the ratio is of latencies): the same with 'faster' and 'slower' swapped
    - else 'inconclusive'."""
    if not interval.between_known:
        return "inconclusive"
    if 1.0 - threshold <= interval.low and interval.high <= 1.0 + threshold:
        return "same"
    significant = p_adjusted < alpha
    below = significant and interval.high < 1.0 and interval.estimate < 1.0 - threshold
    above = significant and interval.low > 1.0 and interval.estimate > 1.0 + threshold
    if below:
        return "slower" if higher_is_better else "faster"
    if above:
        return "faster" if higher_is_better else "slower"
    return "inconclusive"


def simulate(
    rng: np.random.Generator,
    true_step_s: float,
    processes: int,
    windows: int,
    process_cv: float,
    window_cv: float,
) -> list[NDArray[np.float64]]:
    """Per-process arrays of per-step times: process level = true * exp(N(0, process_cv)), windows = process level *
    exp(N(0, window_cv))."""
    levels = true_step_s * np.exp(rng.normal(0.0, process_cv, size=processes))
    return [level * np.exp(rng.normal(0.0, window_cv, size=windows)) for level in levels]
