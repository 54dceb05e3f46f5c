"""Scenarios: one unit each, one signature ``(adapter, trial, data) -> Outcome``.

A trial runs the scenarios its spec names (:attr:`harness.contract.TrialSpec.scenarios`), in order,
on one built adapter. Adding a scenario is adding one function here, one name to the contract's
``Scenario`` literal and to :data:`SCENARIOS`. Worker side: numpy and the standard library only.

- ``train_throughput``: optimiser steps on one synthetic batch, timed by the protocol.
- ``train_to_accuracy``: from the canonical weights, the step budget on the trial's dataset with
  untimed evaluations on the side; time to the target accuracy.
- ``infer_offline``: batched inference, timed by the protocol.
- ``infer_single_stream``: one sample per request, synced after every request (latency).
- ``infer_server``: Poisson arrivals of single-sample requests served in dynamic batches; the
  highest rate whose p99 latency meets a bound, and the latencies at a target rate
  (:mod:`harness.worker.server`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from adapters.base import Adapter
from harness import metrics as M
from harness.contract import Scenario, TrialSpec
from harness.worker import server as S
from harness.worker.measure import Agree, Timing, run_timed, summarize
from harness.worker.saliency import saliency
from harness.worker.telemetry import EnergyMeter
from workloads.architectures import Architecture
from workloads.datasets import Dataset

Series = dict[str, list[float]]


@dataclass(frozen=True)
class TrialData:
    """What the scenarios work on: the (resized) architecture, its canonical weights, the timing batch."""

    arch: Architecture
    params: dict[str, np.ndarray]
    x: np.ndarray  # synthetic timing batch, the architecture's input shape
    y: np.ndarray
    dataset: Dataset | None  # the real dataset, in the architecture's input shape (train_to_accuracy)
    node_peak_gflops: float
    agree: Agree | None = None  # multi-worker trials: the maximum over every worker (measure.run_timed)
    energy: EnergyMeter | None = None  # the trial's device energy counter, where one is readable
    pretrain: Dataset | None = None  # the pretraining classes' data (train_to_accuracy with pretrain_steps)


@dataclass
class Outcome:
    """A scenario's contribution to the trial's result."""

    metrics: dict[str, float] = field(default_factory=dict)
    samples: Series = field(default_factory=dict)
    history: Series = field(default_factory=dict)
    history_steps: dict[str, list[int]] = field(default_factory=dict)
    diverged: str | None = None  # why, when the training loss stopped being finite


def _latency(prefix: str, step_s: np.ndarray) -> dict[str, float]:
    s = summarize(step_s * 1000.0)
    return {key: s[f"p{q}"] for q, key in M.percentile_keys(prefix).items()}


def _throughput(timing: Timing, trial: TrialSpec, data: TrialData) -> dict[str, float]:
    """Throughput (median step), its within-process interval, FLOP rate and fraction of the node's peak.

    Multi-worker trials: samples of the global batch per second, and the FLOP rate of all workers
    against the peak of one worker's cores (so the peak fraction is summed over the workers)."""
    stats = summarize(timing.step_s)
    bs = trial.global_batch
    throughput = bs / stats["median"]
    flops = data.arch.flops_per_sample(trial.mode)
    gflops = flops * throughput / 1e9
    return {
        M.THROUGHPUT: throughput,
        M.THROUGHPUT_WITHIN_CI_LOW: bs / stats["ci_high"],
        M.THROUGHPUT_WITHIN_CI_HIGH: bs / stats["ci_low"],
        M.STEP_TIME_CV: stats["cv"],
        M.TIMED_STEPS: float(timing.steps),
        M.WINDOW_STEPS: float(timing.window_steps),
        M.COMPILE_S: timing.compile_s,
        M.FLOPS_PER_SAMPLE: float(flops),
        M.ACHIEVED_GFLOPS: gflops,
        M.NODE_PEAK_GFLOPS: data.node_peak_gflops,
        M.PEAK_FRACTION: gflops / data.node_peak_gflops,
    }


class Energy:
    """Joules over the timed part of a throughput scenario: read just before the first timed window
    (``run_timed``'s ``on_start``) and just after the last one; no figure when the counter is
    unreadable or did not advance (coarser than the timed part)."""

    def __init__(self, meter: EnergyMeter | None) -> None:
        self.meter = meter
        self.start: float | None = None

    def begin(self) -> None:
        try:
            self.start = None if self.meter is None else self.meter.joules()
        except Exception:
            self.start = None

    def metrics(self, timing: Timing, samples_per_step: int) -> dict[str, float]:
        if self.meter is None or self.start is None:
            return {}
        try:
            joules = self.meter.joules() - self.start
        except Exception:
            return {}
        if joules <= 0:
            return {}
        return {
            M.ENERGY_J_PER_SAMPLE: joules / (timing.steps * samples_per_step),
            M.POWER_W: joules / sum(timing.window_s),
        }


def train_throughput(adapter: Adapter, trial: TrialSpec, data: TrialData) -> Outcome:
    xd, yd = adapter.to_device(data.x), adapter.to_device(data.y)
    last: list[Any] = [None]
    energy = Energy(data.energy)

    def step() -> None:
        last[0] = adapter.train_step(xd, yd)

    def timed_from_here() -> None:  # the all-reduce time and the energy over the timed steps only
        adapter.comm_s, adapter.comm_steps = 0.0, 0
        energy.begin()

    timing = run_timed(step, adapter.sync, trial.measure, agree=data.agree, on_start=timed_from_here)
    out = Outcome(
        metrics=_latency(M.LATENCY, timing.step_s)
        | _throughput(timing, trial, data)
        | energy.metrics(timing, trial.local_batch),
        samples={M.TRAIN_WINDOW_S: timing.window_s},
    )
    comm = adapter.comm_s_per_step()
    if comm is not None:
        out.metrics[M.COMM_S_PER_STEP] = comm
    final = float(adapter.to_numpy(last[0]))
    if not math.isfinite(final):
        out.diverged = f"training loss became {final} on the synthetic batch"
    return out


def infer_offline(adapter: Adapter, trial: TrialSpec, data: TrialData) -> Outcome:
    xd = adapter.to_device(data.x)
    energy = Energy(data.energy)
    timing = run_timed(lambda: adapter.infer(xd), adapter.sync, trial.measure, on_start=energy.begin)
    return Outcome(
        metrics=_latency(M.BATCH_LATENCY, timing.step_s)
        | _throughput(timing, trial, data)
        | energy.metrics(timing, trial.local_batch),
        samples={M.OFFLINE_WINDOW_S: timing.window_s},
    )


def infer_single_stream(adapter: Adapter, trial: TrialSpec, data: TrialData) -> Outcome:
    x1 = adapter.to_device(data.x[:1])
    budget = trial.measure.replace(min_steps=trial.measure.latency_requests, window_steps=1, min_window_s=0.0)
    timing = run_timed(lambda: adapter.infer(x1), adapter.sync, budget)
    return Outcome(
        metrics=_latency(M.LATENCY, timing.step_s) | {M.COMPILE_S_SINGLE_STREAM: timing.compile_s},
        samples={M.SINGLE_STREAM_REQUEST_S: timing.window_s},
    )


def infer_server(adapter: Adapter, trial: TrialSpec, data: TrialData) -> Outcome:
    """Warm every bucket, search the highest rate under the p99 bound, then serve the target rate.

    Defaults (:class:`harness.contract.MeasureSpec`): the bound is ``SERVER_P99_FACTOR`` times the
    single-request latency (at least ``SERVER_P99_FLOOR_MS``), the target rate
    ``SERVER_RATE_FRACTION`` of the highest rate found (or ``CAPACITY_FRACTION`` of the capacity
    estimate when no rate met the bound)."""
    budget, bs = trial.measure, trial.batch_size
    server = S.Server(adapter, data.x, bs)
    compile_s = server.warm(max(S.BUCKET_CALLS, budget.warmup_steps))
    bound_s = S.p99_bound_s(budget, server.single_s)
    requests = S.probe_requests(budget, bs)
    found = S.search(server, bound_s, requests, budget.server_search_steps, trial.seed)
    rate = budget.server_rate_qps
    if rate is None:
        rate = (
            S.SERVER_RATE_FRACTION * found.max_rate
            if found.max_rate is not None
            else S.CAPACITY_FRACTION * server.capacity
        )
    target = server.run(rate, S.probe_size(requests, rate), trial.seed)
    metrics = {
        M.COMPILE_S: compile_s,
        M.SERVER_BUCKETS: float(len(server.buckets)),
        M.SERVER_SINGLE_REQUEST: server.single_s * 1e3,
        M.SERVER_CAPACITY: server.capacity,
        M.SERVER_P99_BOUND: bound_s * 1e3,
        M.SERVER_PROBES: float(len(found.probes)),
        M.SERVER_PROBE_REQUESTS: float(requests),  # at high rates; at most MAX_PROBE_S of arrivals
        M.SERVER_RATE: rate,
        M.SERVER_ACHIEVED_RATE: target.achieved_rate,
        M.SERVER_MEAN_BATCH: target.mean_batch,
        M.FLOPS_PER_SAMPLE: float(data.arch.flops_per_sample("infer")),
    } | _latency(M.SERVER_LATENCY, target.latency_s)
    if found.max_rate is not None:
        metrics[M.SERVER_MAX_RATE] = found.max_rate
        metrics[M.SERVER_MAX_RATE_LOWER_BOUND] = float(found.lower_bound)
    steps = list(range(len(found.probes)))
    return Outcome(
        metrics=metrics,
        samples={M.SERVER_REQUEST_S: target.latency_s.tolist()},
        history={
            M.SERVER_PROBE_RATE: [p.rate for p in found.probes],
            M.SERVER_PROBE_P99: [p.p99_s * 1e3 for p in found.probes],
        },
        history_steps={M.SERVER_PROBE_RATE: steps, M.SERVER_PROBE_P99: steps},
    )


def train_to_accuracy(adapter: Adapter, trial: TrialSpec, data: TrialData) -> Outcome:
    """Train for the step budget from the canonical weights; evaluate on the side, untimed.

    Identical in every framework: the initial weights, optimiser, learning rate, batch size and the
    data order (``numpy.random.default_rng(seed)``: a permutation of the training split per epoch,
    the incomplete last batch of an epoch dropped). Evaluation after every ``eval_every`` steps and
    after the last one: accuracy and mean cross-entropy (numpy, float64, from the logits) on the
    whole held-out split and accuracy on the whole training split, in inference mode. Only training
    steps are timed (``sync()`` before each clock read), so ``train_time_s`` and
    ``time_to_target_s`` (training time at the first evaluation reaching ``target_accuracy``; absent
    when none does) exclude evaluation. History: ``loss`` at every step (step ``i``: the batch loss of
    the weights after ``i`` updates) and ``val_loss``, ``val_accuracy``, ``train_accuracy`` at each
    evaluation's step (``history_steps``); the last evaluation is the final value.

    The task (``TrainSpec``; its data comes from :func:`harness.worker.trial.task_data`): the data
    set is the task's classes and share of the training split (``train_samples`` says how many
    samples were kept). With pretraining, before all of the above and untimed: ``pretrain_steps``
    on the pretraining classes (same optimiser, batch size and rules of data order, drawn by
    ``default_rng([seed, 2])``), ``pretrain_val_accuracy`` on their held-out samples, then the
    output layer's variables back to the canonical initial ones (:func:`output_layer_variables`)
    and ``load_params``, which also starts the optimiser afresh. A model whose only layer is the
    output layer (logreg) therefore trains exactly as from scratch. With ``saliency``: after the
    final evaluation, :func:`harness.worker.saliency.saliency` on the task's held-out samples.
    """
    ds, cfg = data.dataset, trial.train
    if ds is None:
        raise ValueError(f"train_to_accuracy needs a dataset; {trial.name} has none")
    if cfg.saliency and ds.val_mask is None:
        raise ValueError(
            f"{trial.name}: saliency needs a data set whose generator knows the informative positions "
            "(mnist1d, mnist1d_shuffled)"
        )
    bs = trial.batch_size
    task = [f"classes {list(cfg.classes)}"] if cfg.classes else []
    task += [f"train_fraction {cfg.train_fraction:g}"] if cfg.train_fraction < 1 else []
    where = trial.dataset + (f" ({', '.join(task)})" if task else "")
    _check_batch(bs, ds, where)
    pre, pre_where = data.pretrain, f"{trial.dataset} (pretraining classes {list(cfg.pretrain_classes)})"
    if cfg.pretrain_steps:
        if pre is None:
            raise ValueError(f"{trial.name} pretrains, but its trial data has no pretraining data set")
        _check_batch(bs, pre, pre_where)
    adapter.load_params(data.params)
    steps, every, target = cfg.steps, cfg.eval_every or cfg.steps, cfg.target_accuracy
    metrics: dict[str, float] = {M.TRAIN_SAMPLES: float(len(ds.x_train))}
    if cfg.pretrain_steps and pre is not None:
        pre_steps, pre_loss = cfg.pretrain_steps, []
        for _, chunk, _ in _train_steps(adapter, pre, bs, pre_steps, pre_steps, [trial.seed, 2]):
            pre_loss += chunk
        if not math.isfinite(pre_loss[-1]):
            return Outcome(metrics=metrics, diverged=f"training loss became {pre_loss[-1]} pretraining on {pre_where}")
        metrics[M.PRETRAIN_VAL_ACCURACY] = evaluate(adapter, pre.x_val, pre.y_val)[0]
        initial = {k: data.params[k] for k in output_layer_variables(data.arch)}
        adapter.load_params(adapter.export_params() | initial)  # and a fresh optimiser
    loss: list[float] = []
    history: Series = {key: [] for key in M.EVAL_SERIES}
    eval_steps: list[int] = []
    train_time_s = 0.0
    for step, chunk, elapsed in _train_steps(adapter, ds, bs, steps, every, trial.seed):
        train_time_s += elapsed
        loss += chunk
        # untimed from here: evaluate
        val_acc, val_loss = evaluate(adapter, ds.x_val, ds.y_val)
        train_acc, _ = evaluate(adapter, ds.x_train, ds.y_train)
        for key, value in zip(M.EVAL_SERIES, (val_loss, val_acc, train_acc), strict=True):
            history[key].append(value)
        eval_steps.append(step)
        if target is not None and M.TIME_TO_TARGET_S not in metrics and val_acc >= target:
            metrics |= {M.TIME_TO_TARGET_S: train_time_s, M.STEPS_TO_TARGET: float(step)}
        if not all(math.isfinite(v) for v in chunk):
            break  # diverged: the rest of the budget would only repeat NaNs
    train_acc, val_acc = history[M.TRAIN_ACCURACY][-1], history[M.VAL_ACCURACY][-1]
    metrics |= {
        M.TRAIN_ACCURACY: train_acc,
        M.VAL_ACCURACY: val_acc,
        M.VAL_LOSS: history[M.VAL_LOSS][-1],
        M.TRAIN_VAL_GAP: train_acc - val_acc,
        M.FINAL_LOSS: loss[-1],
        M.TRAIN_STEPS: float(len(loss)),
        M.TRAIN_TIME_S: train_time_s,
        M.EVALUATIONS: float(len(eval_steps)),
    }
    if target is not None:
        metrics[M.TARGET_ACCURACY] = float(target)
    diverged = None if math.isfinite(loss[-1]) else f"training loss became {loss[-1]} on {trial.dataset}"
    if cfg.saliency and diverged is None:
        assert ds.val_mask is not None  # checked above
        metrics |= saliency(adapter, ds.x_val, ds.y_val, ds.val_mask)
    return Outcome(
        metrics=metrics,
        history={M.LOSS: loss} | history,
        history_steps=dict.fromkeys(history, eval_steps),
        diverged=diverged,
    )


def _check_batch(bs: int, ds: Dataset, where: str) -> None:
    n = len(ds.x_train)
    if bs > n:
        raise ValueError(f"batch size {bs} exceeds the {n} training samples of {where}")


def _train_steps(
    adapter: Adapter, ds: Dataset, bs: int, steps: int, every: int, seed: int | list[int]
) -> Iterator[tuple[int, list[float], float]]:
    """``steps`` optimiser steps on the training split of ``ds`` in batches of ``bs``, in chunks of at
    most ``every`` steps: after each chunk, the steps so far, the chunk's losses and its training time.

    The data order: ``numpy.random.default_rng(seed)``, a permutation of the training split per
    epoch, the incomplete last batch of an epoch dropped. Only the steps are timed (``sync()``
    before each clock read); what the caller does between chunks (evaluation) is not. The caller may
    stop early. The batch fits the split (``_check_batch``).
    """
    n = len(ds.x_train)
    rng = np.random.default_rng(seed)
    order, pos, step = rng.permutation(n), 0, 0
    while step < steps:
        pending: list[Any] = []
        adapter.sync()
        t0 = time.perf_counter()
        for _ in range(min(every, steps - step)):
            if pos + bs > n:
                order, pos = rng.permutation(n), 0
            idx = order[pos : pos + bs]
            pos += bs
            pending.append(adapter.train_step(adapter.to_device(ds.x_train[idx]), adapter.to_device(ds.y_train[idx])))
        adapter.sync()
        elapsed = time.perf_counter() - t0
        step += len(pending)
        yield step, [float(adapter.to_numpy(v)) for v in pending], elapsed


def output_layer_variables(arch: Architecture) -> list[str]:
    """The canonical names of the output layer's variables: those of the last top-level layer that has
    parameters (names are ``"{path}.{kind}"``, the path's first part the top-level index: ``"3.kernel"``).
    For a model whose one layer with parameters is its output layer (logreg) that is every variable."""
    top = max(int(name.split(".", 1)[0]) for name in arch.param_layout())
    return [name for name in arch.variable_layout() if int(name.split(".", 1)[0]) == top]


def evaluate(adapter: Adapter, x: np.ndarray, y: np.ndarray, batch: int = 500) -> tuple[float, float]:
    """Accuracy and mean softmax cross-entropy of the model on ``(x, y)``, in inference mode, over every
    label (``y`` is ``(N,)`` for a classifier, ``(N, T)`` for a language model)."""
    from workloads.architectures.reference import cross_entropy

    correct, loss_sum = 0, 0.0
    for i in range(0, len(x), batch):
        logits = adapter.to_numpy(adapter.infer(adapter.to_device(x[i : i + batch]))).astype(np.float64)
        labels = y[i : i + batch]
        loss_sum += cross_entropy(logits, labels) * labels.size
        correct += int((logits.argmax(axis=-1) == labels).sum())
    return correct / y.size, loss_sum / y.size


ScenarioFn = Callable[[Adapter, TrialSpec, TrialData], Outcome]
SCENARIOS: dict[Scenario, ScenarioFn] = {
    "train_throughput": train_throughput,
    "train_to_accuracy": train_to_accuracy,
    "infer_offline": infer_offline,
    "infer_single_stream": infer_single_stream,
    "infer_server": infer_server,
}
