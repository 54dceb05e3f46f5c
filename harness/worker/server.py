"""The server scenario (MLPerf's "server"): Poisson arrivals of single-sample requests, dynamic batching.

Worker side: numpy and the standard library only. The adapter is the server:

- Buckets: a batch of ``n`` requests is padded to the smallest bucket that holds it, the powers of two
  below ``batch_size`` and ``batch_size`` itself. Every bucket runs once before anything is timed (a
  jit framework compiles one program per shape, never inside a measurement); those first calls
  together are ``compile_s``. A few more calls per bucket give its latency: bucket 1's is the
  single-request latency, the full bucket's gives the capacity estimate ``batch_size / latency``.
- A probe at rate ``r``: ``n`` requests whose inter-arrival times are exponential with mean ``1/r``
  (seeded: every probe scales the same unit-rate draws, so probes differ only in rate). Whenever the
  server is free it takes every request that has arrived, up to ``batch_size``, as one batch: the
  host array of its bucket goes to the device (``to_device``), ``infer``, ``sync``. A request's
  latency is the batch's completion time minus the request's arrival time, on the real clock
  (``time.perf_counter``): queueing is included, and an idle server really waits for the next
  arrival. The request contents are the synthetic timing batch's samples (a bucket's host array is
  prepared once; a real server would also copy each request's sample into it).
- The search for the highest rate whose p99 latency is at most the bound: probe the capacity
  estimate; while that meets the bound, double it (at most ``EXPAND`` times: if every rate met it,
  the result is a lower bound and says so). Otherwise start from half the smaller of the capacity
  and the single-request rate, quartering it (at most ``SHRINK`` times) until a probe meets the
  bound (a server that misses it when mostly idle misses it through the machine's stalls, and a
  probe lasts ``requests / rate``: lower rates cost much and tell little). Then bisect
  geometrically between the highest rate met and the lowest missed for ``server_search_steps``
  steps. Each probe has ``max(server_requests, QUEUE_DEPTH * batch_size)`` requests, so that an
  overloaded server's queue grows deeper than the default bound allows; fewer (never fewer than
  ``MIN_PROBE_REQUESTS``) where they would arrive over more than ``MAX_PROBE_S``: a slow model's
  low rates would otherwise take minutes per probe, and a queue only builds at high rates anyway.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from adapters.base import Adapter
from harness.contract import MeasureSpec

SERVER_P99_FACTOR = 10.0  # default bound: this many times the single-request latency ...
SERVER_P99_FLOOR_MS = 2.0  # ... and at least this: below it a bound measures the OS's scheduling jitter
SERVER_RATE_FRACTION = 0.8  # default target rate: this fraction of the highest rate found
CAPACITY_FRACTION = 0.5  # default target rate when no rate met the bound: this fraction of the capacity
EXPAND, SHRINK = 2, 1  # bracketing steps above the capacity estimate / below the low start
QUEUE_DEPTH = 32  # a probe has at least this many full batches of requests ...
MAX_PROBE_S, MIN_PROBE_REQUESTS = 5.0, 100  # ... unless they would arrive over longer than this
BUCKET_CALLS = 3  # timed calls per bucket (at least; warmup_steps when more) for its latency
SPIN_S = 1e-3  # the last stretch of an idle wait is spun, not slept (sleep overshoots)

Clock = Callable[[], float]


def buckets(batch_size: int) -> list[int]:
    """The padded batch sizes: powers of two below ``batch_size``, and ``batch_size``."""
    out = [1 << k for k in range(batch_size.bit_length()) if 1 << k < batch_size]
    return [*out, batch_size]


def arrivals(rate: float, requests: int, seed: int) -> np.ndarray:
    """Arrival times (seconds from the probe's start) of a Poisson process of ``rate`` per second."""
    return np.cumsum(np.random.default_rng(seed).standard_exponential(requests)) / rate


@dataclass(frozen=True)
class Probe:
    """What one probe measured: per-request latency (seconds) and the size of each dynamic batch."""

    rate: float
    latency_s: np.ndarray
    batch_sizes: np.ndarray
    elapsed_s: float  # from the probe's start (time 0 of the arrivals) to the last completion

    @property
    def p99_s(self) -> float:
        return float(np.percentile(self.latency_s, 99))

    @property
    def achieved_rate(self) -> float:
        return len(self.latency_s) / self.elapsed_s

    @property
    def mean_batch(self) -> float:
        return float(self.batch_sizes.mean())


class Server:
    """An adapter serving single-sample requests in dynamic batches of at most ``batch_size``."""

    def __init__(
        self,
        adapter: Adapter,
        x: np.ndarray,
        batch_size: int,
        clock: Clock = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.adapter, self.batch_size, self.clock, self.sleep = adapter, batch_size, clock, sleep
        self.buckets = buckets(batch_size)
        reps = -(-batch_size // len(x))  # the timing batch has batch_size samples; repeat if short
        host = np.concatenate([x] * reps) if reps > 1 else x
        self.host = {b: np.ascontiguousarray(host[:b]) for b in self.buckets}
        self.latency_s: dict[int, float] = {}  # each bucket's median latency, after warm()

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def _call(self, n: int) -> None:
        self.adapter.infer(self.adapter.to_device(self.host[self.bucket(n)]))
        self.adapter.sync()

    def warm(self, calls: int = BUCKET_CALLS) -> float:
        """Run every bucket (first call timed alone), then time ``calls`` more each; returns the
        first calls' seconds together (``compile_s``)."""
        compile_s = 0.0
        for b in self.buckets:
            self.adapter.sync()
            t0 = self.clock()
            self._call(b)
            compile_s += self.clock() - t0
        for b in self.buckets:
            times = []
            for _ in range(calls):
                t0 = self.clock()
                self._call(b)
                times.append(self.clock() - t0)
            self.latency_s[b] = float(np.median(times))
        return compile_s

    @property
    def single_s(self) -> float:
        return self.latency_s[1]

    @property
    def capacity(self) -> float:
        """Requests per second with every batch full (an estimate: the full bucket's latency)."""
        return self.batch_size / self.latency_s[self.batch_size]

    def _wait_until(self, deadline: float) -> None:
        while (left := deadline - self.clock()) > 0:
            if left > 2 * SPIN_S:
                self.sleep(left - SPIN_S)

    def run(self, rate: float, requests: int, seed: int) -> Probe:
        """Serve ``requests`` Poisson arrivals at ``rate`` per second (see the module docstring)."""
        arrive = arrivals(rate, requests, seed)
        latency = np.empty(requests)
        sizes: list[int] = []
        i, clock = 0, self.clock
        self.adapter.sync()
        start = clock()
        done = 0.0
        while i < requests:
            if arrive[i] > clock() - start:  # idle: wait for the next request
                self._wait_until(start + arrive[i])
            now = clock() - start
            j = min(requests, i + self.batch_size, max(i + 1, int(np.searchsorted(arrive, now, side="right"))))
            self._call(j - i)
            done = clock() - start
            latency[i:j] = done - arrive[i:j]
            sizes.append(j - i)
            i = j
        return Probe(rate, latency, np.asarray(sizes), done)


@dataclass(frozen=True)
class Search:
    """The probes of a search in the order run, and the highest rate that met the bound (None: none did)."""

    probes: list[Probe]
    max_rate: float | None
    lower_bound: bool  # every rate tried met the bound: the true maximum is higher


def search(server: Server, bound_s: float, requests: int, steps: int, seed: int) -> Search:
    """The highest rate whose p99 latency is at most ``bound_s`` (see the module docstring)."""
    probes: list[Probe] = []

    def meets(rate: float) -> bool:
        probes.append(server.run(rate, probe_size(requests, rate), seed))
        return probes[-1].p99_s <= bound_s

    if bound_s <= server.single_s:  # one request alone already takes longer: no rate can meet it
        return Search(probes, None, False)
    hi, lo = server.capacity, None
    if meets(hi):
        lo = hi
        for _ in range(EXPAND):
            hi = 2 * lo
            if not meets(hi):
                break
            lo = hi
        else:
            return Search(probes, lo, True)
    else:
        rate = min(server.capacity, 1 / server.single_s) / 2
        for _ in range(SHRINK + 1):
            if meets(rate):
                lo = rate
                break
            hi, rate = rate, rate / 4
        if lo is None:
            return Search(probes, None, False)
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        if meets(mid):
            lo = mid
        else:
            hi = mid
    return Search(probes, lo, False)


def p99_bound_s(budget: MeasureSpec, single_s: float) -> float:
    """The p99 bound: ``server_p99_ms``, else the default (factor x single request, at least the floor)."""
    if budget.server_p99_ms is not None:
        return budget.server_p99_ms / 1e3
    return max(SERVER_P99_FACTOR * single_s, SERVER_P99_FLOOR_MS / 1e3)


def probe_requests(budget: MeasureSpec, batch_size: int) -> int:
    """Requests per probe at high rates (see the module docstring)."""
    return max(budget.server_requests, QUEUE_DEPTH * batch_size)


def probe_size(requests: int, rate: float) -> int:
    """The requests of a probe at ``rate``: ``requests``, or as many as arrive in ``MAX_PROBE_S``."""
    return min(requests, max(MIN_PROBE_REQUESTS, math.ceil(rate * MAX_PROBE_S)))
