"""Cells from processes, verdicts between cells, noise calibration and the interleaved order (no Ray).

Processes are built from :func:`harness.stats.simulate` draws with known noise, so every expected
verdict follows from the simulated truth.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from harness import compare, noise, plan
from harness import metrics as M
from harness.cells import ONE_PROCESS, Cell, cells
from harness.contract import TrialResult, TrialSpec
from harness.spec import SpecError, SuiteSpec
from harness.stats import simulate

BATCH = 64


def process(
    spec: TrialSpec, replica: int, step_s: np.ndarray, env: dict[str, Any] | None = None, **extra: Any
) -> TrialResult:
    """An ok process whose train windows (1 step each) are ``step_s``."""
    return TrialResult(
        trial_key=spec.trial_key,
        spec=spec,
        status="ok",
        replica=replica,
        metrics={M.THROUGHPUT: BATCH / float(np.median(step_s)), M.WINDOW_STEPS: 1.0, M.COMPILE_S: 0.5},
        samples={M.TRAIN_WINDOW_S: [float(x) for x in step_s]},
        framework_version="1.0",
        environment={"hostname": "node-a", "cpu_model": "CPU X", "reserved_cores": [0]} | (env or {}),
        **extra,
    )


def spec(framework: str = "torch", **changes: Any) -> TrialSpec:
    base: dict[str, Any] = {
        "architecture": "mlp_deep",
        "framework": framework,
        "mode": "train",
        "batch_size": BATCH,
        "threads": 1,
    }
    return TrialSpec.from_dict(base | changes)


def cell(
    step_s: float, k: int, seed: int, framework: str = "torch", process_cv: float = 0.05, **env: Any
) -> list[TrialResult]:
    rng = np.random.default_rng(seed)
    s = spec(framework)
    draws = simulate(rng, step_s, k, 20, process_cv, 0.03)
    return [process(s, i, d, env) for i, d in enumerate(draws)]


def test_a_cell_summarises_its_processes_with_a_between_process_interval() -> None:
    (c,) = cells(cell(0.01, 5, seed=1))
    m = c.metrics
    assert m[M.REPEATS] == 5
    assert m[M.THROUGHPUT_CI_LOW] < m[M.THROUGHPUT] < m[M.THROUGHPUT_CI_HIGH]
    assert m[M.THROUGHPUT] == pytest.approx(BATCH / 0.01, rel=0.1)  # the simulated truth, within the noise
    assert m[M.THROUGHPUT_CV_BETWEEN] == pytest.approx(c.cv_between)
    assert m[M.percentile_keys(M.LATENCY)[99] + "_ci_low"] <= m[M.percentile_keys(M.LATENCY)[99]]
    assert c.unstable is None  # 5 processes, 5% process noise


def test_one_process_has_no_interval_and_says_so() -> None:
    (c,) = cells(cell(0.01, 1, seed=2))
    assert c.unstable == ONE_PROCESS
    assert M.THROUGHPUT_CI_LOW not in c.metrics and M.THROUGHPUT_CV_BETWEEN not in c.metrics
    assert c.throughput is not None and not c.throughput.between_known


@pytest.mark.parametrize(("k", "cv", "why"), [(2, 0.01, "2 processes (< 3)"), (5, 0.4, "CV")])
def test_unstable_cells_say_why(k: int, cv: float, why: str) -> None:
    (c,) = cells(cell(0.01, k, seed=3, process_cv=cv))
    assert c.unstable is not None and c.unstable.startswith(why)


def test_a_failed_process_marks_the_cell_and_the_rest_still_count() -> None:
    processes = cell(0.01, 3, seed=4)
    processes[1] = processes[1].replace(status="crash", reason="worker died from SIGSEGV", samples={})
    (c,) = cells(processes)
    assert c.status == "crash" and not c.ok
    assert c.reason == "1 of 3 processes crash: worker died from SIGSEGV; figures from the 2 ok"
    assert c.metrics[M.REPEATS] == 2


def _cells(*groups: list[TrialResult]) -> list[Cell]:
    return cells([p for g in groups for p in g])


def test_compare_finds_a_real_slowdown_and_gates_on_it() -> None:
    base = _cells(cell(0.010, 5, seed=10), cell(0.020, 5, seed=11, framework="jax"))
    new = _cells(cell(0.015, 5, seed=12), cell(0.020, 5, seed=13, framework="jax"))  # torch 1.5x slower
    c = compare.between_batches(base, new, 0.05, "given", base_label="A", new_label="B")
    verdicts = {r.new.spec.framework: r for r in c.rows}
    assert verdicts["torch"].verdict == "slower"
    assert verdicts["torch"].ratio.high < 1 / 1.3
    assert verdicts["jax"].verdict in ("same", "inconclusive")
    assert [r.new.spec.framework for r in c.regressions] == ["torch"]
    assert "Holm-corrected over 2 pairs" in c.correction
    assert "| torch" not in c.to_markdown() and "**slower**" in c.to_markdown()


def test_compare_says_how_many_processes_would_decide_an_inconclusive_cell() -> None:
    base, new = _cells(cell(0.010, 3, seed=20, process_cv=0.15)), _cells(cell(0.0108, 3, seed=21, process_cv=0.15))
    (row,) = compare.between_batches(base, new, 0.05, "given", base_label="A", new_label="B").rows
    assert row.verdict == "inconclusive"
    assert "processes per side would likely decide it" in row.note or "more than 100" in row.note


def test_compare_lists_environment_differences_and_refuses() -> None:
    base = _cells(cell(0.01, 3, seed=30))
    new = _cells(cell(0.01, 3, seed=31, cpu_model="CPU Y"))
    c = compare.between_batches(base, new, 0.05, "given", base_label="A", new_label="B")
    assert c.refused and c.mismatches == ["cpu_model: 'CPU X' vs 'CPU Y'"]
    allowed = compare.between_batches(base, new, 0.05, "given", base_label="A", new_label="B", allow_mismatch=True)
    assert not allowed.refused and "allowed with --allow-mismatch" in allowed.to_markdown()
    commit = _cells(cell(0.01, 3, seed=31, git_commit="other"))  # informational only
    assert not compare.between_batches(base, commit, 0.05, "given", base_label="A", new_label="B").mismatches


def test_compare_by_framework_pairs_every_framework_with_the_baseline() -> None:
    batch = _cells(
        cell(0.010, 5, seed=40),
        cell(0.005, 5, seed=41, framework="jax"),
        cell(0.010, 5, seed=42, framework="tensorflow"),
    )
    c = compare.within_batch(batch, "framework", "torch", 0.05, "given", label="b1")
    assert not c.refused  # framework versions differ by design
    rows = {r.new.spec.framework: r for r in c.rows}
    assert set(rows) == {"jax", "tensorflow"}
    assert rows["jax"].verdict == "faster" and rows["jax"].ratio.estimate == pytest.approx(2.0, rel=0.15)
    with pytest.raises(SpecError, match="choose from torch, jax, tensorflow"):
        compare.within_batch(batch, "framework", "mxnet", 0.05, "given", label="b1")
    with pytest.raises(SpecError, match="unknown axis"):
        compare.within_batch(batch, "architecture", None, 0.05, "given", label="b1")


def test_compare_by_workers_and_batch_size_compares_samples_per_second() -> None:
    """Cells of different global batches: the ratio is of throughputs, not of step times."""
    rng = np.random.default_rng(50)
    one, two, big = spec(), spec(workers=2), spec(batch_size=2 * BATCH)
    # two workers: each step takes 1.6x as long but moves twice the samples -> 1.25x the throughput
    procs = [process(one, i, d) for i, d in enumerate(simulate(rng, 0.010, 5, 20, 0.03, 0.02))]
    procs += [process(two, i, d) for i, d in enumerate(simulate(rng, 0.016, 5, 20, 0.03, 0.02))]
    procs += [process(big, i, d) for i, d in enumerate(simulate(rng, 0.016, 5, 20, 0.03, 0.02))]
    found = cells(procs)
    by_workers = compare.within_batch(found, "workers", "1", 0.05, "given", label="b")
    (row,) = [r for r in by_workers.rows if r.new.spec.workers == 2]
    assert row.ratio.estimate == pytest.approx(1.25, rel=0.1) and row.verdict == "faster"
    eff = next(c for c in found if c.spec.workers == 2).metrics[M.SCALING_EFFICIENCY]
    assert eff == pytest.approx(0.625, rel=0.1)  # 1.25x the throughput on 2 workers
    by_batch = compare.within_batch(found, "batch_size", str(BATCH), 0.05, "given", label="b")
    (row,) = [r for r in by_batch.rows if r.new.spec.batch_size == 2 * BATCH]
    assert row.ratio.estimate == pytest.approx(1.25, rel=0.1)


def test_threshold_parsing() -> None:
    assert compare.parse_threshold("5%") == pytest.approx(0.05)
    assert compare.parse_threshold("0.02") == pytest.approx(0.02)
    assert compare.parse_threshold("auto") is None
    for bad in ("five", "150%", "-1%"):
        with pytest.raises(SpecError):
            compare.parse_threshold(bad)


def test_noise_calibration_is_an_aa_of_even_against_odd_processes(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    (c,) = cells(cell(0.01, 10, seed=50))
    record = noise.measure(c)
    assert record["processes_per_group"] == 5
    assert record["ratio_ci_low"] < 1 < record["ratio_ci_high"]  # nothing differs: the interval covers 1
    assert record["threshold"] >= max(1 - record["ratio_ci_low"], record["ratio_ci_high"] - 1, 0.01)
    noise.save(record)
    assert noise.lookup("node-a", "cpu") == record["threshold"]
    assert noise.lookup("node-b", "cpu") is None
    value, source = compare.noise_threshold([c], noise.lookup)
    assert value == record["threshold"] and "node-a" in source
    (other,) = cells(cell(0.01, 3, seed=51, hostname="node-b"))
    with pytest.raises(SpecError, match=r"node 'node-b' .* has no noise calibration"):
        compare.noise_threshold([other], noise.lookup)


# --- the interleaved order and the core reservation ------------------------------------------------


def _plan(repeats: int) -> plan.Plan:
    suite = SuiteSpec(
        name="t", frameworks=["torch", "jax"], architectures=["mlp_shallow", "cnn1d"], batch_sizes=[8], repeats=repeats
    )
    return plan.expand(suite, plan.Overrides(), default_threads=1)


def test_rounds_interleave_cells_in_a_seeded_random_order() -> None:
    p = _plan(3)
    order = p.rounds(seed=1)
    assert len(order) == 3 * len(p.trials)
    assert [r for _, r in order] == sorted(r for _, r in order)  # round r: every cell's replica r
    rounds = [[s.trial_key for s, r in order if r == i] for i in range(3)]
    assert all(sorted(x) == sorted(s.trial_key for s in p.trials) for x in rounds)
    assert len({tuple(x) for x in rounds}) > 1  # each round its own permutation (seed 1)
    assert order == p.rounds(seed=1) and order != p.rounds(seed=2)
    done = {(p.trials[0].trial_key, 0), (p.trials[1].trial_key, 2)}
    left = p.rounds(seed=1, done=done)
    assert len(left) == len(order) - 2 and not {(s.trial_key, r) for s, r in left} & done


def test_default_reserve_and_threads() -> None:
    suite = SuiteSpec(name="t", frameworks=["torch"], architectures=["mlp_shallow"], batch_sizes=[8])
    assert [plan.default_reserve(n) for n in (1, 2, 16, 64)] == [0, 1, 1, 2]
    assert plan.cores(suite, plan.Overrides(), 2) == (1, 1)
    assert plan.cores(suite, plan.Overrides(reserve_cores=0), 2) == (0, 2)
    assert plan.cores(suite.model_copy(update={"reserve_cores": 2}), plan.Overrides(), 8) == (2, 6)
    with pytest.raises(SpecError, match="leaves none for trials"):
        plan.cores(suite, plan.Overrides(reserve_cores=2), 2)


def test_plan_warns_when_a_trial_takes_every_core_or_nothing_is_reserved() -> None:
    assert plan.core_warnings({1}, 1, 2) == []
    (full,) = plan.core_warnings({2}, 1, 2)
    assert "use every core" in full and "--threads 1" in full
    assert any("no cores reserved" in w for w in plan.core_warnings({1}, 0, 2))


def test_leases_skip_the_reserved_cores(tmp_path: Any) -> None:
    from harness.launch import lease_cores, node_cpus

    cpus = node_cpus()
    if len(cpus) < 2:
        pytest.skip("needs 2 cores to reserve one")
    with lease_cores(len(cpus) - 1, lock_dir=tmp_path, reserve=1) as leased:
        assert leased == cpus[1:]


PIN = """
import os, subprocess, sys, time
from harness.schedule import pin_to_reserved
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
time.sleep(0.2)
undo = pin_to_reserved(1)
print(sorted(os.sched_getaffinity(0)), sorted(os.sched_getaffinity(child.pid)))
undo()
print(sorted(os.sched_getaffinity(0)))
child.kill()
"""


def test_pinning_keeps_the_driver_and_its_children_on_the_reserved_cores() -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs 2 cores to reserve one")
    out = subprocess.run([sys.executable, "-c", PIN], capture_output=True, text=True, timeout=60, check=True)
    pinned, restored = out.stdout.strip().splitlines()
    assert pinned == f"{[cpus[0]]} {[cpus[0]]}"  # driver and child: the first core only
    assert restored == str(cpus)
