"""The serve mode's scenario (harness.worker.server): real servers on the CPU with a tiny model.

Request counts are small, so every assertion is about effects far larger than the jitter of a shared
machine (stalls of several ms): a queue that grows with the number of requests above capacity,
latency near one request's alone when the server is mostly idle, a p99 bound met at the rate found
and missed well above it. Two requests per batch keep the server slow enough for a few thousand
requests to queue for tens of milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from adapters import load_adapter
from adapters.base import BuildOptions
from harness import metrics as M
from harness.contract import ContractError, MeasureSpec, TrialSpec
from harness.worker import server as S
from harness.worker.scenarios import infer_server
from harness.worker.trial import prepare

BATCH = 2
SPEC = TrialSpec(
    architecture="logreg", framework="torch", mode="serve", batch_size=BATCH, threads=1,
    measure={"warmup_steps": 1, "server_requests": 10, "server_search_steps": 3},
)  # type: ignore[arg-type]  # fmt: skip


def build(framework: str) -> tuple[Any, Any]:
    spec = SPEC.replace(framework=framework)
    data = prepare(spec, None, node_peak_gflops=1.0)
    options = BuildOptions.for_training(
        spec.train, device="cpu", precision="float32", compile="auto", threads=1, trainable=False, extra={}, workers=1
    )
    return load_adapter(framework)(data.arch, data.params, options), data


@pytest.fixture(scope="module")
def torch_server() -> tuple[S.Server, Any, Any]:
    adapter, data = build("torch")
    server = S.Server(adapter, data.x, BATCH)
    server.warm()
    return server, adapter, data


def test_buckets_are_powers_of_two_up_to_the_batch_size() -> None:
    assert S.buckets(1) == [1]
    assert S.buckets(8) == [1, 2, 4, 8]
    assert S.buckets(48) == [1, 2, 4, 8, 16, 32, 48]


def test_a_probe_at_a_low_rate_is_cut_to_a_few_seconds_of_arrivals() -> None:
    assert S.probe_size(3000, 10_000.0) == 3000
    assert S.probe_size(3000, 100.0) == 100 * S.MAX_PROBE_S
    assert S.probe_size(3000, 1.0) == S.MIN_PROBE_REQUESTS
    assert S.probe_size(50, 1.0) == 50


def test_arrivals_are_seeded_poisson_and_scale_with_the_rate() -> None:
    a = S.arrivals(1000.0, 20_000, seed=3)
    assert np.array_equal(a, S.arrivals(1000.0, 20_000, seed=3))
    assert not np.array_equal(a, S.arrivals(1000.0, 20_000, seed=4))
    assert np.allclose(S.arrivals(2000.0, 20_000, seed=3), a / 2)  # probes differ only in rate
    gaps = np.diff(a)
    assert gaps.mean() == pytest.approx(1e-3, rel=0.05)  # mean 1 / rate
    assert gaps.std() == pytest.approx(1e-3, rel=0.05)  # exponential: std = mean


def test_above_capacity_the_queue_grows_with_the_requests(torch_server: Any) -> None:
    server = torch_server[0]
    rate = 4 * server.capacity
    # the best of three short probes: one stall of the shared machine is as long as a short queue
    short = min(server.run(rate, 100, seed=0).p99_s for _ in range(3))
    long = server.run(rate, 2000, seed=0)
    assert long.p99_s > 2 * short  # the last requests waited behind 20x as many batches
    first, last = np.median(long.latency_s[:500]), np.median(long.latency_s[-500:])
    assert last > 2 * first  # and within one probe, later requests wait longer
    assert long.mean_batch > 1.5  # the queue fills the batches
    assert long.achieved_rate < rate / 2


def test_at_a_low_rate_a_request_waits_for_nobody(torch_server: Any) -> None:
    server = torch_server[0]
    probes = [server.run(0.05 / server.single_s, 40, seed=1) for _ in range(2)]
    assert all(np.median(p.batch_sizes) == 1 for p in probes)
    assert min(float(np.median(p.latency_s)) for p in probes) < 3 * server.single_s + 1e-3
    assert all(p.achieved_rate < 0.1 / server.single_s for p in probes)  # arrivals, not the server, set the pace


# The bound is far above this shared machine's stalls, so that only queueing misses it: 3000 requests
# at 8x the rate found leave the last ones ~90 ms behind.
SEARCHED = SPEC.replace(
    measure=MeasureSpec(warmup_steps=1, server_requests=3000, server_search_steps=3, server_p99_ms=30.0)
)


def test_the_scenario_finds_a_rate_under_the_bound_and_a_higher_one_misses_it(torch_server: Any) -> None:
    _, adapter, data = torch_server
    out = infer_server(adapter, SEARCHED, data)
    m = out.metrics
    bound_ms, top = m[M.SERVER_P99_BOUND], m[M.SERVER_MAX_RATE]
    assert bound_ms == 30.0
    rates, p99s = out.history[M.SERVER_PROBE_RATE], out.history[M.SERVER_PROBE_P99]
    assert len(rates) == len(p99s) == m[M.SERVER_PROBES] >= 2
    assert p99s[rates.index(top)] <= bound_ms  # the probe at the rate found met the bound
    assert all(p > bound_ms for r, p in zip(rates, p99s, strict=True) if r > top)
    assert m[M.SERVER_MAX_RATE_LOWER_BOUND] == 0.0
    assert m[M.SERVER_PROBE_REQUESTS] == 3000 and len(out.samples[M.SERVER_REQUEST_S]) == 3000
    assert m[M.SERVER_RATE] == pytest.approx(S.SERVER_RATE_FRACTION * top)
    assert m[M.SERVER_LATENCY + "_p50"] <= m[M.SERVER_LATENCY + "_p99"]
    assert 1 <= m[M.SERVER_MEAN_BATCH] <= 2 and m[M.COMPILE_S] > 0 and m[M.SERVER_BUCKETS] == 2
    server = S.Server(adapter, data.x, BATCH)
    server.warm()
    assert server.run(8 * top, 3000, seed=SEARCHED.seed).p99_s * 1e3 > bound_ms  # clearly above: missed


def test_the_default_bound_is_a_multiple_of_one_request_alone(torch_server: Any) -> None:
    _, adapter, data = torch_server
    m = infer_server(adapter, SPEC.replace(measure=SPEC.measure.replace(server_search_steps=0)), data).metrics
    single = m[M.SERVER_SINGLE_REQUEST]
    assert m[M.SERVER_P99_BOUND] == pytest.approx(max(S.SERVER_P99_FACTOR * single, S.SERVER_P99_FLOOR_MS))
    assert m[M.SERVER_PROBE_REQUESTS] == S.QUEUE_DEPTH * BATCH  # more than server_requests (10)


def test_an_impossible_bound_finds_no_rate_without_probing(torch_server: Any) -> None:
    server = torch_server[0]
    found = S.search(server, server.single_s / 2, 20, steps=3, seed=0)
    assert found.max_rate is None and found.probes == []


@pytest.fixture
def compilations() -> Iterator[list[str]]:
    import jax.monitoring

    events: list[str] = []

    def listen(event: str, duration: float, **kwargs: Any) -> None:
        if event.endswith("backend_compile_duration"):
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listen)
    yield events
    jax.monitoring.unregister_event_duration_listener(listen)


def test_jax_compiles_every_bucket_before_anything_is_timed(compilations: list[str]) -> None:
    adapter, data = build("jax")
    server = S.Server(adapter, data.x, 8)  # the 2 samples of the timing batch, repeated
    compile_s = server.warm()
    assert len(compilations) >= len(server.buckets) == 4 and compile_s > 0
    compilations.clear()
    server.run(4 * server.capacity, 64, seed=0)  # batches of every size from 1 to 8
    server.run(0.2 / server.single_s, 16, seed=0)
    assert compilations == []


@pytest.mark.parametrize(
    ("knob", "value", "words"),
    [
        ("server_requests", 5, "greater than or equal to 10"),
        ("server_search_steps", 21, "less than or equal to 20"),
        ("server_search_steps", -1, "greater than or equal to 0"),
        ("server_p99_ms", 0.0, "greater than 0"),
        ("server_rate_qps", -5.0, "greater than 0"),
        ("server_rate_qps", "fast", "none of"),
    ],
)
def test_bad_server_knobs_are_rejected(knob: str, value: object, words: str) -> None:
    with pytest.raises(ContractError, match=f"{knob}.*{words}"):
        MeasureSpec.from_dict({knob: value})


def test_server_knobs_at_their_defaults_keep_older_trial_keys() -> None:
    spec = SPEC.replace(mode="infer", measure=MeasureSpec())
    assert "server_" not in spec.canonical_json()
    assert spec.replace(measure=MeasureSpec(server_p99_ms=5.0)).trial_key != spec.trial_key
    assert SPEC.scenarios == ("infer_server",) and SPEC.scenario == "server"
