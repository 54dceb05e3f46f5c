"""harness.stats: calibration by simulation (coverage, A/A false verdicts, power) and the small pieces by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from harness.stats import (
    Interval,
    between_cv,
    cell_interval,
    geomean,
    holm,
    mann_whitney_p,
    process_value,
    ratio_interval,
    repeats_needed,
    simulate,
    verdict,
    welch_p,
)

RESAMPLES = 1000
K = 5
WINDOWS = 20
PROCESS_CV = 0.08
WINDOW_CV = 0.05


def _values(groups: list[np.ndarray]) -> list[float]:
    return [process_value(g) for g in groups]


# --- calibration by simulation ---------------------------------------------------------------------------------------


def test_ratio_interval_covers_true_ratio() -> None:
    """K=5 per side, true throughput ratio 1.2 (BASE's step time 1.2x NEW's): ~95% of 95% intervals cover it."""
    rng = np.random.default_rng(20240601)
    experiments = 600
    covered = 0
    for i in range(experiments):
        base = simulate(rng, 1.2e-3, K, WINDOWS, PROCESS_CV, WINDOW_CV)
        new = simulate(rng, 1.0e-3, K, WINDOWS, PROCESS_CV, WINDOW_CV)
        iv = ratio_interval(base, new, resamples=RESAMPLES, seed=i)
        assert iv.between_known and iv.processes == K
        covered += iv.low <= 1.2 <= iv.high
    assert 0.93 <= covered / experiments <= 0.97, covered / experiments


def test_cell_interval_covers_true_step_time() -> None:
    """The median of lognormal windows around a process level is that level, so the cell's true value is true_step_s."""
    rng = np.random.default_rng(20240602)
    experiments = 600
    covered = 0
    for i in range(experiments):
        groups = simulate(rng, 2.0e-3, K, WINDOWS, PROCESS_CV, WINDOW_CV)
        iv = cell_interval(groups, resamples=RESAMPLES, seed=i)
        covered += iv.low <= 2.0e-3 <= iv.high
    assert 0.93 <= covered / experiments <= 0.97, covered / experiments


@pytest.mark.parametrize("k", [3, 5, 10])
def test_cell_interval_width_matches_student_t(k: int) -> None:
    """The small-K correction widens the bootstrap interval to about the Student-t interval on the per-process logs
    (a plain percentile interval would be ~sqrt((K-1)/K) z/t of it: 0.47 at K=3, 0.63 at K=5)."""
    rng = np.random.default_rng(100 + k)
    ratios = []
    for i in range(40):
        groups = simulate(rng, 1.0, k, WINDOWS, PROCESS_CV, WINDOW_CV)
        iv = cell_interval(groups, resamples=RESAMPLES, seed=i)
        logs = np.log(_values(groups))
        t_half = float(sps.t.ppf(0.975, k - 1)) * float(np.std(logs, ddof=1)) / math.sqrt(k)
        ratios.append(math.log(iv.high / iv.low) / 2.0 / t_half)
    assert 0.85 <= float(np.median(ratios)) <= 1.2, float(np.median(ratios))


def test_aa_false_verdicts() -> None:
    """Equal true step times: a single cell (no Holm) is called faster or slower at most ~5% of the time."""
    rng = np.random.default_rng(20240603)
    experiments = 500
    decided_zero = decided_band = 0
    for i in range(experiments):
        base = simulate(rng, 1.0e-3, K, WINDOWS, PROCESS_CV, WINDOW_CV)
        new = simulate(rng, 1.0e-3, K, WINDOWS, PROCESS_CV, WINDOW_CV)
        iv = ratio_interval(base, new, resamples=RESAMPLES, seed=i)
        p = welch_p(_values(base), _values(new))
        decided_zero += verdict(iv, p, threshold=0.0) in ("faster", "slower")
        decided_band += verdict(iv, p, threshold=0.05) in ("faster", "slower")
    assert decided_zero / experiments <= 0.07, decided_zero / experiments
    assert decided_band / experiments <= 0.05, decided_band / experiments


def test_power_for_a_clear_slowdown() -> None:
    """NEW's step time 1.5x BASE's, K=5, process CV 0.10: 'slower' nearly always."""
    rng = np.random.default_rng(20240604)
    experiments = 200
    slower = 0
    for i in range(experiments):
        base = simulate(rng, 1.0e-3, K, WINDOWS, 0.10, WINDOW_CV)
        new = simulate(rng, 1.5e-3, K, WINDOWS, 0.10, WINDOW_CV)
        iv = ratio_interval(base, new, resamples=RESAMPLES, seed=i)
        p = welch_p(_values(base), _values(new))
        slower += verdict(iv, p, threshold=0.05) == "slower"
    assert slower / experiments >= 0.99, slower / experiments


# --- the pieces ------------------------------------------------------------------------------------------------------


def test_process_value_geomean_between_cv() -> None:
    assert process_value([3.0, 1.0, 2.0]) == 2.0
    assert process_value([1.0, 2.0, 3.0, 4.0, 5.0], q=100.0) == 5.0
    assert geomean([1.0, 4.0]) == pytest.approx(2.0)
    assert geomean([2.0, 2.0, 2.0]) == pytest.approx(2.0)
    assert between_cv([1.0]) == 0.0
    assert between_cv([]) == 0.0
    assert between_cv([1.0, 3.0]) == pytest.approx(math.sqrt(2.0) / 2.0)
    with pytest.raises(ValueError):
        process_value([])
    with pytest.raises(ValueError):
        geomean([1.0, 0.0])


def test_cell_interval_estimate_and_unequal_groups() -> None:
    rng = np.random.default_rng(3)
    groups = [rng.lognormal(0.0, 0.05, n) * level for n, level in [(5, 1.0), (50, 1.1), (17, 0.95)]]
    iv = cell_interval(groups, resamples=500, seed=1)
    assert iv.estimate == pytest.approx(geomean(_values(groups)))
    assert iv.low < iv.estimate < iv.high
    assert (iv.processes, iv.between_known) == (3, True)
    assert cell_interval(groups, resamples=500, seed=1) == iv  # deterministic for a seed
    assert cell_interval(groups, resamples=500, seed=2) != iv
    p90 = cell_interval(groups, q=90.0, resamples=500, seed=1)
    assert p90.estimate == pytest.approx(geomean([process_value(g, 90.0) for g in groups]))
    assert p90.estimate > iv.estimate


def test_single_process_is_flagged_and_inconclusive() -> None:
    rng = np.random.default_rng(4)
    one = simulate(rng, 1.0, 1, WINDOWS, PROCESS_CV, WINDOW_CV)
    many = simulate(rng, 2.0, K, WINDOWS, PROCESS_CV, WINDOW_CV)
    cell = cell_interval(one, resamples=RESAMPLES)
    assert (cell.processes, cell.between_known) == (1, False)
    assert cell.low <= cell.estimate <= cell.high
    ratio = ratio_interval(one, many, resamples=RESAMPLES)
    assert (ratio.processes, ratio.between_known) == (1, False)
    assert ratio.estimate == pytest.approx(0.5, rel=0.3)  # NEW's step time ~2x BASE's: throughput ratio ~0.5
    # even a 2x difference with p = 0 is not a verdict when the between-process spread is unknown
    assert verdict(ratio, 0.0, threshold=0.05) == "inconclusive"
    assert welch_p(_values(one), _values(many)) == 1.0


def test_higher_is_better_false_flips_the_ratio() -> None:
    rng = np.random.default_rng(5)
    base = simulate(rng, 1.0, K, WINDOWS, 0.02, WINDOW_CV)
    new = simulate(rng, 1.5, K, WINDOWS, 0.02, WINDOW_CV)  # NEW takes 1.5x as long
    throughput = ratio_interval(base, new, resamples=RESAMPLES, seed=9)
    latency = ratio_interval(base, new, higher_is_better=False, resamples=RESAMPLES, seed=9)
    assert throughput.estimate == pytest.approx(1.0 / 1.5, rel=0.05)
    assert latency.estimate == pytest.approx(1.0 / throughput.estimate)
    assert latency.low == pytest.approx(1.0 / throughput.high)
    assert latency.high == pytest.approx(1.0 / throughput.low)
    p = welch_p(_values(base), _values(new))
    assert p < 0.001
    assert verdict(throughput, p, threshold=0.05) == "slower"
    assert verdict(latency, p, threshold=0.05, higher_is_better=False) == "slower"
    assert verdict(latency, p, threshold=0.05) == "faster"  # read as a throughput ratio it would be wrong way round


def test_verdict_rules() -> None:
    same = Interval(1.0, 0.98, 1.03, 5, True)
    assert verdict(same, 1.0, threshold=0.05) == "same"
    assert verdict(same, 1.0, threshold=0.01) == "inconclusive"
    up = Interval(1.3, 1.1, 1.5, 5, True)
    assert verdict(up, 0.001, threshold=0.05) == "faster"
    assert verdict(up, 0.2, threshold=0.05) == "inconclusive"  # not significant
    assert verdict(up, 0.001, threshold=0.4) == "inconclusive"  # significant but under the threshold
    assert verdict(up, 0.001, threshold=0.05, higher_is_better=False) == "slower"
    down = Interval(0.7, 0.6, 0.8, 5, True)
    assert verdict(down, 0.001, threshold=0.05) == "slower"
    assert verdict(down, 0.001, threshold=0.05, higher_is_better=False) == "faster"
    assert verdict(Interval(0.7, 0.6, 1.01, 5, True), 0.001, threshold=0.05) == "inconclusive"  # interval holds 1
    assert verdict(Interval(1.0, 0.99, 1.01, 1, False), 0.0, threshold=0.05) == "inconclusive"


def test_welch_p() -> None:
    a, b = [1.0, 1.1, 0.95, 1.05, 1.02], [1.2, 1.3, 1.25, 1.15, 1.22]
    expected = sps.ttest_ind(np.log(a), np.log(b), equal_var=False).pvalue
    assert welch_p(a, b) == pytest.approx(float(expected))
    assert welch_p(a, b) == welch_p(b, a)
    assert welch_p([1.0], b) == 1.0
    assert welch_p([2.0, 2.0, 2.0], [2.0, 2.0]) == 1.0
    assert welch_p([2.0, 2.0, 2.0], [3.0, 3.0]) == 0.0
    assert welch_p([0.1] * 7, [0.1] * 3) == 1.0
    assert 0.0 < welch_p([2.0, 2.0, 2.0], [1.9, 2.1, 2.0]) <= 1.0


def test_mann_whitney_p() -> None:
    low, high = [1.0, 1.1, 1.2, 1.3, 1.4], [2.0, 2.1, 2.2, 2.3, 2.4]
    assert mann_whitney_p(low, high) == pytest.approx(2.0 / 252.0)
    assert mann_whitney_p(high, low) == pytest.approx(2.0 / 252.0)
    assert mann_whitney_p([], high) == 1.0
    assert mann_whitney_p([1.0, 2.0, 3.0], [1.5, 2.5, 3.5]) > 0.5
    # the point of the module docstring: Holm over 7 cells cannot reach 0.05 with the smallest K=5 p-value
    assert min(holm([2.0 / 252.0] * 7)) > 0.05


def test_holm_by_hand() -> None:
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped
    assert holm([0.02]) == [0.02]
    assert holm([]) == []


def test_holm_is_monotone() -> None:
    rng = np.random.default_rng(6)
    p = rng.uniform(0.0, 0.2, 30) ** 2
    adjusted = holm(list(p))
    assert all(a >= raw for a, raw in zip(adjusted, p, strict=True))
    assert all(a <= 1.0 for a in adjusted)
    order = np.argsort(p)
    in_order = np.asarray(adjusted)[order]
    assert np.all(np.diff(in_order) >= 0)


def _log_interval(log_estimate: float, half: float) -> Interval:
    return Interval(math.exp(log_estimate), math.exp(log_estimate - half), math.exp(log_estimate + half), 5, True)


def test_repeats_needed() -> None:
    # outside the band: half-width 0.25 must fall below |log estimate| = 0.1: 5 * (0.25 / 0.1)^2 = 31.25 -> 32
    assert repeats_needed(_log_interval(0.1, 0.25), threshold=0.05, processes=5) == 32
    # inside: below log(1.05) - 0 = 0.04879: 5 * (0.1 / 0.04879)^2 = 21.004 -> 22
    assert repeats_needed(_log_interval(0.0, 0.1), threshold=0.05, processes=5) == 22
    # closer to the band's edge needs more
    assert repeats_needed(_log_interval(0.03, 0.1), threshold=0.05, processes=5) > 22
    # no room left inside the band, or a hopeless width: the cap
    assert repeats_needed(Interval(1.05, 1.0, 1.1, 5, True), threshold=0.05, processes=5) == 100
    assert repeats_needed(_log_interval(0.1, 10.0), threshold=0.05, processes=5) == 100
    # already narrow enough: one more than we have, never fewer
    assert repeats_needed(_log_interval(0.5, 0.01), threshold=0.05, processes=5) == 6
    assert repeats_needed(_log_interval(0.5, 0.0), threshold=0.05, processes=5) == 6
    assert repeats_needed(_log_interval(0.5, 0.01), threshold=0.05, processes=200) == 100


def test_simulate() -> None:
    rng = np.random.default_rng(8)
    groups = simulate(rng, 2.0, 4, 30, 0.1, 0.0)
    assert len(groups) == 4
    assert all(g.shape == (30,) for g in groups)
    assert all(np.ptp(g) == pytest.approx(0.0) for g in groups)  # no window jitter: each process is flat
    assert len({float(g[0]) for g in groups}) == 4  # process jitter: the levels differ
    many = simulate(np.random.default_rng(9), 2.0, 4000, 1, 0.1, 0.0)
    assert geomean([g[0] for g in many]) == pytest.approx(2.0, rel=0.01)


def test_long_processes_draw_percentiles_as_order_statistics() -> None:
    """Above 256 windows a resample's percentile is drawn from Beta order statistics: the same distribution as
    resampling the windows (which costs O(n log n) per draw: seconds for thousands of single-stream requests)."""
    from harness.stats import _order_statistic_draws

    rng = np.random.default_rng(7)
    w = np.sort(rng.lognormal(-7.0, 0.3, size=1000))
    for q in (50.0, 99.0):
        resampled = np.percentile(w[rng.integers(0, w.size, size=(3000, w.size))], q, axis=1)
        drawn = _order_statistic_draws(w, q, 30000, rng)
        spread = resampled.std()
        assert abs(np.median(drawn) - np.median(resampled)) < 0.15 * spread, q
        assert abs(drawn.std() / spread - 1) < 0.15, q
    groups = simulate(np.random.default_rng(8), 1e-4, 5, 5000, 0.05, 0.2)  # 5 processes x 5000 requests
    iv = cell_interval(groups, 99.0, seed=1)
    assert iv.low < iv.estimate < iv.high and iv.between_known
