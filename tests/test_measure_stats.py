"""Unit tests: the timing protocol (with an injected clock), statistics, memory, GEMM calibration."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness import measure
from harness.measure import Budget


class Fake:
    """A clock that only moves when a step runs; records step/sync/clock events in order."""

    def __init__(self, step_s: float = 0.01, first_s: float = 1.0) -> None:
        self.t, self.step_s, self.first_s, self.events, self.calls = 0.0, step_s, first_s, [], 0

    def step(self) -> None:
        self.t += self.first_s if self.calls == 0 else self.step_s
        self.calls += 1
        self.events.append("step")

    def sync(self) -> None:
        self.events.append("sync")

    def clock(self) -> float:
        self.events.append("clock")
        return self.t


def test_sync_precedes_every_clock_read() -> None:
    f = Fake()
    measure.run_timed(f.step, f.sync, Budget(2, 10, 0.0, 3), clock=f.clock)
    clocks = [i for i, e in enumerate(f.events) if e == "clock"]
    assert len(clocks) >= 3
    assert all(f.events[i - 1] == "sync" for i in clocks)


def test_first_call_is_compile_and_warmup_is_untimed() -> None:
    f = Fake(step_s=0.01, first_s=2.5)
    t = measure.run_timed(f.step, f.sync, Budget(4, 10, 0.0, 5), clock=f.clock)
    assert t.compile_s == pytest.approx(2.5)
    assert f.calls == 1 + 4 + t.steps
    assert t.window_s == pytest.approx([0.05] * len(t.window_s))  # no compile or warm-up inside


@pytest.mark.parametrize(
    ("budget", "expected_steps"),
    [
        (Budget(0, 40, 0.0, 4), 40),  # min_steps binds
        (Budget(0, 4, 1.0, 4), 100),  # min_time_s binds: 1 s / 0.01 s per step
    ],
)
def test_stops_when_both_budgets_are_met(budget: Budget, expected_steps: int) -> None:
    f = Fake(step_s=0.01)
    t = measure.run_timed(f.step, f.sync, budget, clock=f.clock)
    assert t.steps == expected_steps == len(t.window_s) * budget.window_steps
    assert np.allclose(t.step_s, 0.01)


def test_summarize_matches_numpy() -> None:
    a = np.random.default_rng(0).lognormal(size=101)
    s = measure.summarize(a)
    for q in (50, 90, 95, 99):
        assert s[f"p{q}"] == pytest.approx(np.percentile(a, q))
    assert s["median"] == pytest.approx(np.median(a))
    assert s["cv"] == pytest.approx(a.std(ddof=1) / a.mean())
    assert s["ci_low"] <= s["median"] <= s["ci_high"]
    assert measure.summarize(a) == s  # deterministic bootstrap


def test_summarize_edge_cases() -> None:
    assert measure.summarize([2.0, 2.0, 2.0])["cv"] == 0.0
    with pytest.raises(ValueError):
        measure.summarize([])


def test_memory_high_water_mark_rises() -> None:
    before = measure.peak_rss_mb()
    assert before > 0 and measure.current_rss_mb() > 0
    block = np.ones(200 * 2**20 // 8)  # 200 MB, touched
    assert measure.peak_rss_mb() - before >= 150
    del block


def test_gemm_peak_is_cached_as_a_maximum(tmp_path: Path) -> None:
    first = measure.gemm_peak_gflops(1, tmp_path)
    assert first > 0.1
    (path,) = tmp_path.glob("gemm-peak-*.json")
    path.write_text(json.dumps({"gflops": 1e6, "measured_at": 0}))  # stale but higher: kept
    assert measure.gemm_peak_gflops(1, tmp_path) == 1e6
