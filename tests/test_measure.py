"""Unit tests for harness.worker.measure: the timing protocol (with a fake clock), statistics and memory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.contract import MeasureSpec as Budget
from harness.worker import measure


class FakeRun:
    """A step, sync and clock that share one simulated time and log every call in order.

    Each ``step`` costs ``costs[i]`` simulated seconds (the last cost repeats); the clock reads the
    simulated time and never advances by itself. Costs below are dyadic fractions, so the simulated
    sums are exact in floating point and the stopping rule is tested without rounding effects.
    """

    def __init__(self, costs: list[float], sync_cost: float = 0.0) -> None:
        self.costs = costs
        self.sync_cost = sync_cost
        self.now = 0.0
        self.events: list[str] = []
        self.steps = 0

    def step(self) -> None:
        cost = self.costs[min(self.steps, len(self.costs) - 1)]
        self.steps += 1
        self.now += cost
        self.events.append("step")

    def sync(self) -> None:
        self.now += self.sync_cost
        self.events.append("sync")

    def clock(self) -> float:
        self.events.append("clock")
        return self.now

    def run(self, budget: Budget) -> measure.Timing:
        return measure.run_timed(self.step, self.sync, budget, clock=self.clock)


def budget(warmup: int = 2, min_steps: int = 10, min_time_s: float = 0.0, window: int = 5) -> Budget:
    return Budget(
        warmup_steps=warmup, min_steps=min_steps, min_time_s=min_time_s, window_steps=window, min_window_s=0.0
    )


# --- run_timed -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "b",
    [budget(), budget(warmup=0, min_steps=1, window=1), budget(warmup=3, min_steps=7, min_time_s=2.0, window=3)],
    ids=["default", "minimal", "time-bound"],
)
def test_sync_precedes_every_clock_read(b: Budget) -> None:
    fake = FakeRun([0.5, 0.1])
    fake.run(b)
    clock_reads = [i for i, e in enumerate(fake.events) if e == "clock"]
    assert len(clock_reads) >= 3  # compile start/end and at least one window
    for i in clock_reads:
        assert i > 0 and fake.events[i - 1] == "sync", fake.events[: i + 1]


def test_event_sequence_of_the_protocol() -> None:
    fake = FakeRun([1.0])
    fake.run(budget(warmup=2, min_steps=4, window=2))
    # compile: sync clock step sync clock; warm-up: 2 steps; start: sync clock; 2 windows of 2 steps.
    window = ["step", "step", "sync", "clock"]
    expected = ["sync", "clock", "step", "sync", "clock", "step", "step", "sync", "clock", *window, *window]
    assert fake.events == expected


def test_min_steps_is_binding() -> None:
    fake = FakeRun([0.015625])  # fast steps: min_time_s is met after the first 5-step window
    t = fake.run(budget(warmup=0, min_steps=23, min_time_s=0.0625, window=5))
    assert t.steps == 25  # ceil(23 / 5) windows
    assert len(t.window_s) == 5
    assert sum(t.window_s) > 0.0625


def test_min_time_is_binding() -> None:
    fake = FakeRun([0.125])  # min_steps (4) alone would stop after one window
    t = fake.run(budget(warmup=0, min_steps=4, min_time_s=2.0, window=4))
    assert sum(t.window_s) == 2.0
    assert len(t.window_s) == 4  # 4 windows x 4 steps x 0.125 s = 2.0 s
    assert t.steps == 16


def test_does_not_stop_one_window_early_on_time() -> None:
    fake = FakeRun([0.125])
    t = fake.run(budget(warmup=0, min_steps=1, min_time_s=1.25, window=4))
    assert len(t.window_s) == 3  # 1.0 s after two windows is not enough
    assert sum(t.window_s) == 1.5


def test_stops_as_soon_as_both_are_met() -> None:
    fake = FakeRun([0.125])
    t = fake.run(budget(warmup=0, min_steps=8, min_time_s=1.0, window=4))
    assert len(t.window_s) == 2  # 8 steps and 1.0 s, both met exactly after two windows


def test_first_call_is_timed_alone_as_compile_and_warmup_is_not_in_the_windows() -> None:
    # call 1 (compile) 3 s; calls 2..4 (warm-up) 1 s each; timed calls 0.25 s each
    fake = FakeRun([3.0, 1.0, 1.0, 1.0, 0.25])
    t = fake.run(budget(warmup=3, min_steps=8, min_time_s=0.0, window=4))
    assert t.compile_s == pytest.approx(3.0)
    assert t.window_s == pytest.approx([1.0, 1.0])  # 4 x 0.25 s each, no 1 s warm-up step in them
    assert fake.steps == 1 + 3 + t.steps
    assert np.allclose(t.step_s, 0.25)


def test_compile_time_includes_the_sync_after_the_first_call() -> None:
    fake = FakeRun([2.0, 0.5], sync_cost=0.125)
    t = fake.run(budget(warmup=0, min_steps=1, window=1))
    # sync (before t0) is not counted; step (2.0) and the sync after it (0.125) are
    assert t.compile_s == pytest.approx(2.125)
    assert t.window_s == pytest.approx([0.625])


@pytest.mark.parametrize(("min_steps", "window"), [(1, 1), (5, 5), (6, 5), (20, 3), (9, 10)])
def test_one_sample_per_window(min_steps: int, window: int) -> None:
    fake = FakeRun([0.5, 0.01])
    t = fake.run(budget(warmup=1, min_steps=min_steps, window=window))
    expected_windows = -(-min_steps // window)
    assert len(t.window_s) == expected_windows
    assert t.steps == len(t.window_s) * window == len(t.window_s) * t.window_steps
    assert t.steps >= min_steps
    assert fake.steps == 1 + 1 + t.steps
    assert t.step_s.shape == (expected_windows,)
    assert fake.events.count("clock") == 2 + 1 + expected_windows


def test_window_samples_follow_the_step_costs() -> None:
    costs = [0.0] + [0.125] * 2 + [0.25] * 2 + [0.5] * 2
    fake = FakeRun(costs)
    t = fake.run(budget(warmup=0, min_steps=6, window=2))
    assert t.window_s == [0.25, 0.5, 1.0]
    assert t.step_s.tolist() == [0.125, 0.25, 0.5]


# --- summarize -----------------------------------------------------------------------------------

SAMPLES = [0.9, 1.3, 1.1, 5.0, 1.0, 1.2, 0.95, 1.05, 1.15, 2.5, 1.0, 0.98]


def test_summarize_known_values() -> None:
    s = measure.summarize(SAMPLES)
    a = np.asarray(SAMPLES)
    assert s["median"] == pytest.approx(float(np.median(a)))
    assert s["p50"] == s["median"]
    for q in (50, 90, 95, 99):
        assert s[f"p{q}"] == pytest.approx(float(np.percentile(a, q)))
    assert s["mean"] == pytest.approx(float(a.mean()))
    assert s["cv"] == pytest.approx(float(a.std(ddof=1) / a.mean()))
    assert s["n"] == len(SAMPLES)
    assert s["p50"] <= s["p90"] <= s["p95"] <= s["p99"] <= max(SAMPLES)


def test_summarize_hand_computed() -> None:
    s = measure.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["median"] == 3.0
    assert s["mean"] == 3.0
    assert s["p90"] == pytest.approx(4.6)  # linear interpolation between 4 and 5
    assert s["cv"] == pytest.approx(np.sqrt(2.5) / 3.0)


def test_summarize_accepts_arrays_and_lists_alike() -> None:
    assert measure.summarize(np.asarray(SAMPLES, dtype=np.float32)) == pytest.approx(measure.summarize(SAMPLES))


@pytest.mark.parametrize("value", [0.25, 3.0])
@pytest.mark.parametrize("n", [1, 2, 17])
def test_cv_of_constant_samples_is_zero(value: float, n: int) -> None:
    s = measure.summarize([value] * n)
    assert s["cv"] == 0.0
    assert s["median"] == s["mean"] == s["ci_low"] == s["ci_high"] == pytest.approx(value)


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_bootstrap_ci_contains_the_median_and_is_deterministic(seed: int) -> None:
    a = measure.summarize(SAMPLES, seed=seed)
    b = measure.summarize(SAMPLES, seed=seed)
    assert a == b
    assert a["ci_low"] <= a["median"] <= a["ci_high"]
    assert a["ci_low"] < a["ci_high"]
    assert min(SAMPLES) <= a["ci_low"] and a["ci_high"] <= max(SAMPLES)


def test_bootstrap_ci_depends_on_the_seed() -> None:
    rng = np.random.default_rng(123)
    samples = rng.lognormal(size=41)
    cis = {(s["ci_low"], s["ci_high"]) for s in (measure.summarize(samples, seed=k) for k in range(8))}
    assert len(cis) > 1


@pytest.mark.parametrize("empty", [[], np.array([]), np.zeros((0,))])
def test_summarize_empty_raises(empty: object) -> None:
    with pytest.raises(ValueError, match="no samples"):
        measure.summarize(empty)  # type: ignore[arg-type]


# --- memory --------------------------------------------------------------------------------------


def test_rss_readings_are_positive() -> None:
    current = measure.current_rss_mb()
    peak = measure.peak_rss_mb()
    assert current > 0
    assert peak > 0
    assert current <= peak + 1.0  # the high-water mark is never below the current resident set


def test_peak_rss_rises_after_a_large_allocation() -> None:
    before = measure.peak_rss_mb()
    # Allocate past the current high-water mark: 200 MB beyond whatever the process already peaked at.
    gap_mb = max(0.0, before - measure.current_rss_mb())
    n = int((200 + gap_mb) * 2**20 / 8)
    block = np.ones(n, dtype=np.float64)  # np.ones writes every page, so they are resident
    try:
        assert block[-1] == 1.0
        after = measure.peak_rss_mb()
        assert after - before >= 150
        assert measure.current_rss_mb() >= 150
    finally:
        del block


def test_gemm_peak_is_cached_as_a_maximum(tmp_path: Path) -> None:
    first = measure.gemm_peak_gflops(1, tmp_path)
    assert first > 0.1
    (path,) = tmp_path.glob("gemm-peak-*.json")
    path.write_text(json.dumps({"gflops": 1e6, "measured_at": 0}))  # stale but higher: kept
    assert measure.gemm_peak_gflops(1, tmp_path) == 1e6


# --- window calibration --------------------------------------------------------------------------


def test_windows_grow_until_one_clock_read_covers_min_window_s() -> None:
    # 1/1024 s per step: 5 steps take ~4.9 ms < 20 ms, so a window needs ceil(0.02 * 1024) = 21 steps
    fake = FakeRun([1 / 1024])
    b = Budget(warmup_steps=0, min_steps=40, min_time_s=0.0, window_steps=5, min_window_s=0.02)
    t = fake.run(b)
    assert t.window_steps == 21
    assert all(w >= 0.02 for w in t.window_s)
    assert fake.steps == 1 + 5 + t.steps  # compile call, the calibration window (untimed), the windows


def test_windows_keep_their_size_when_already_long_enough() -> None:
    fake = FakeRun([0.25])
    t = fake.run(Budget(warmup_steps=0, min_steps=10, min_time_s=0.0, window_steps=5, min_window_s=0.02))
    assert t.window_steps == 5


def test_calibration_is_capped() -> None:
    fake = FakeRun([0.0])  # a step that costs nothing on the clock: the cap, not an endless window
    t = fake.run(Budget(warmup_steps=0, min_steps=1, min_time_s=0.0, window_steps=1, min_window_s=0.02))
    assert t.window_steps == measure.MAX_WINDOW_STEPS
