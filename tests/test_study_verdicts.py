"""The study's verdict logic: one synthetic case per verdict, at the evidence level and through the
deep-vs-shallow analysis on synthetic results (real cells, real analysis; the numbers chosen)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from harness import metrics as M
from harness.cells import cells
from harness.contract import TrialResult, TrialSpec
from harness.study import deep_vs_shallow as dvs
from harness.study.evidence import Effect, Evidence, log_ratio_of_ratios, mean_effect, verdict


def ev(name: str, low: float | None, high: float | None, margin: float = 0.01, direction: int = 1) -> Evidence:
    est = (low + high) / 2 if low is not None and high is not None else 0.0
    return Evidence(name, Effect(est, low, high, 3), margin=margin, direction=direction)  # type: ignore[arg-type]


def test_condition_states_follow_the_interval_margin_and_direction() -> None:
    assert ev("a", 0.02, 0.10).state == "supports"
    assert ev("a", -0.10, -0.02).state == "contradicts"  # reversed
    assert ev("a", -0.004, 0.008).state == "contradicts"  # absent: the whole interval below the margin
    assert ev("a", -0.004, 0.02).state == "within noise"  # could still be a 2-point effect
    assert ev("a", None, None).state == "within noise"  # no interval (one seed)
    assert ev("a", 0.005, 0.02).state == "within noise"  # real, but maybe below the margin that matters
    assert ev("a", 0.002, 0.008).state == "contradicts"  # real and too small to matter
    assert ev("a", -0.10, -0.02, direction=-1).state == "supports"  # the claim predicts a drop
    ratio = Evidence("r", Effect(1.5, 1.2, 1.9, 3), null=1.0, margin=0.05)
    assert ratio.state == "supports"
    assert Evidence("r", Effect(1.02, 0.99, 1.04, 3), null=1.0, margin=0.05).state == "contradicts"


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        (["supports", "supports"], "supported"),
        (["contradicts", "contradicts"], "contradicted"),
        (["supports", "contradicts"], "depends"),
        (["supports", "contradicts", "within noise"], "depends"),
        (["supports", "within noise"], "inconclusive"),
        (["within noise"], "inconclusive"),
        ([], "inconclusive"),
    ],
)
def test_a_claims_verdict_from_its_conditions(states: list[str], expected: str) -> None:
    intervals = {"supports": (0.02, 0.05), "contradicts": (-0.05, -0.02), "within noise": (-0.05, 0.05)}
    evidence = [ev(f"c{i}", *intervals[s]) for i, s in enumerate(states)]
    found = verdict(evidence)
    assert found.verdict == expected
    if expected == "depends":  # says on what
        assert "holds for c0" in found.because and "not for c1" in found.because
    if expected == "inconclusive" and states:
        assert "within noise" in found.because and "c" in found.because


def test_mean_effect_is_the_student_t_interval() -> None:
    e = mean_effect([1.0, 2.0, 3.0])
    half = 4.302652729911275 * 1.0 / math.sqrt(3)  # t(0.975, 2) * sd / sqrt(n)
    assert e.estimate == pytest.approx(2.0)
    assert (e.low, e.high) == pytest.approx((2.0 - half, 2.0 + half))
    assert e.replicates == 3
    one = mean_effect([0.7])
    assert one.estimate == 0.7 and not one.known
    assert not mean_effect([]).known and math.isnan(mean_effect([]).estimate)


def test_ratio_of_ratios_adds_log_half_widths_in_quadrature() -> None:
    a = Effect(4.0, 2.0, 8.0, 3)  # half-width log 2
    b = Effect(2.0, 1.0, 4.0, 3)
    r = log_ratio_of_ratios(a, b)
    h = math.hypot(math.log(2), math.log(2))
    assert r.estimate == pytest.approx(2.0)
    assert (r.low, r.high) == pytest.approx((2.0 * math.exp(-h), 2.0 * math.exp(h)))
    assert not log_ratio_of_ratios(a, Effect(2.0, None, None, 1)).known


# --- the analysis on synthetic results ---------------------------------------------------------

SCALE = dvs.SCALES["tiny"]
FRAMEWORKS = ("torch", "jax")


def _results(metric: Callable[[TrialSpec], dict[str, float]]) -> list[TrialResult]:
    plan = dvs.build(SCALE, FRAMEWORKS, ("cpu",), threads=1)
    return [
        TrialResult(trial_key=s.trial_key, spec=s, status="ok", metrics=metric(s)) for s in plan.batches["learning"]
    ]


def _acc(
    shallow_small: float, deep_small: float, deep_large: float, noise: float = 0.0
) -> Callable[..., dict[str, float]]:
    """Held-out accuracies by model and share; ``noise`` varies them by seed."""

    def metric(s: TrialSpec) -> dict[str, float]:
        deep = s.architecture not in (dvs.LINEAR, dvs.SHALLOW)
        small = s.train.train_fraction < 1
        value = (deep_small if small else deep_large) if deep else (shallow_small if small else shallow_small + 0.05)
        value += noise * (1 if (s.seed + deep) % 2 else -1)  # not shared by the models of a seed
        return {
            M.VAL_ACCURACY: value,
            M.TRAIN_ACCURACY: value + (0.2 if deep else 0.05),
            M.TRAIN_VAL_GAP: 0.2 if deep else 0.05,
        }

    return metric


@pytest.mark.parametrize(
    ("accuracies", "expected"),
    [
        ((0.60, 0.50, 0.90), "supported"),  # shallow ahead on little data, deep gains more
        ((0.50, 0.60, 0.62), "contradicted"),  # deep ahead on little data, and gains less
        ((0.60, 0.50, 0.52), "depends"),  # shallow ahead on little data, deep gains no more
    ],
)
def test_data_hunger_verdicts_follow_the_numbers(accuracies: tuple[float, float, float], expected: str) -> None:
    learning = cells(_results(_acc(*accuracies, noise=0.001)))
    section = dvs.data_hunger(dvs.Learning(learning), SCALE)
    assert section.finding.verdict == expected
    assert len(section.evidence) == 2 and all(e.effect.replicates == SCALE.seeds for e in section.evidence)
    # every number came from the cells it names
    keys = {c.trial_key for c in learning}
    assert all(set(e.inputs) <= keys and e.inputs for e in section.evidence)


def test_noisy_seeds_give_inconclusive_and_overfitting_reads_the_gap() -> None:
    learning = cells(_results(_acc(0.60, 0.50, 0.90, noise=0.2)))  # seed noise swamps the difference
    assert dvs.data_hunger(dvs.Learning(learning), SCALE).finding.verdict == "inconclusive"
    gap = dvs.overfitting(dvs.Learning(learning), SCALE)
    assert gap.finding.verdict == "supported"  # the deep model's gap is 0.15 above, at every seed
    assert all(e.effect.estimate == pytest.approx(0.15) for e in gap.evidence)


def test_transfer_and_saliency_sections_pair_by_seed() -> None:
    rng = np.random.default_rng(0)

    def metric(s: TrialSpec) -> dict[str, float]:
        base = float(rng.normal(0.5, 0.1))  # seed-to-seed spread, paired away
        gain = 0.1 if s.train.pretrain_steps and s.architecture != dvs.LINEAR else 0.0
        return {
            M.VAL_ACCURACY: base + gain,
            M.TRAIN_VAL_GAP: 0.0,
            M.SALIENCY_AUC: 0.9 if s.architecture == "cnn1d" else 0.6,
        }

    results = _results(metric)
    by_seed: dict[tuple[str, int, bool], float] = {}
    for r in results:  # the same base for a model's pretrained and scratch runs of one seed and framework
        key = (r.spec.architecture + r.spec.framework, r.spec.seed, bool(r.spec.train.classes))
        base = by_seed.setdefault(key, r.metrics[M.VAL_ACCURACY] - (0.1 if r.spec.train.pretrain_steps else 0))
        gain = 0.1 if r.spec.train.pretrain_steps and r.spec.architecture != dvs.LINEAR else 0.0
        r.metrics[M.VAL_ACCURACY] = base + gain
    learning = dvs.Learning(cells(results))
    transfer = dvs.transfer(learning, SCALE)
    assert transfer.finding.verdict == "supported"
    assert transfer.evidence[0].effect.estimate == pytest.approx(0.1)
    saliency = dvs.interpretability(learning, SCALE)
    assert saliency.finding.verdict == "contradicted"  # the deep model localises better, not worse


def test_depends_names_the_factor_that_splits_the_conditions() -> None:
    def cond(fw: str, batch: int, low: float, high: float) -> Evidence:
        effect = Effect((low + high) / 2, low, high, 3)
        factors = {"framework": fw, "batch size": str(batch)}
        return Evidence(f"{fw} batch {batch}", effect, null=1.0, margin=0.05, factors=factors)

    evidence = [cond(fw, 1, 1.3, 1.6) for fw in ("torch", "jax")]
    evidence += [cond("torch", 32, 1.2, 1.4), cond("jax", 32, 0.2, 0.3), cond("mxnet", 32, 0.3, 0.4)]
    found = verdict(evidence)  # torch gains at both sizes: only the framework splits them
    assert found.verdict == "depends"
    assert found.because == "holds for torch batch 1; jax batch 1; torch batch 32; not for jax batch 32; mxnet batch 32"
    evidence[2] = cond("torch", 32, 0.5, 0.6)  # now the batch size splits them cleanly
    found = verdict(evidence)
    assert found.because == "depends on the batch size: holds for 1; not for 32"
