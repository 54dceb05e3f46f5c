"""``python -m benchmarks.cluster [--trials N]``: the harness's scheduling overhead per trial and the
driver's memory over a batch of short trials on a fake 4-node Ray cluster; writes the ``cluster``
entry of benchmarks/results.json. Target: under 50 ms per trial beyond the trial's own time.

The cluster is ``ray.cluster_utils.Cluster`` on this machine: a head without CPUs (the GCS; the
driver joins there) and ``--nodes`` worker nodes of one CPU each. Each worker node gets its own temp
folder, so its own core locks and fork servers as on a machine of its own, and one of this
machine's cores (``HARNESS_NODE_CPUS``, round robin: with more nodes than cores, nodes share one).

The batch is ``harness run --address CLUSTER`` (the CLI, as a user runs it) of a generated suite of
the cheapest real trial, ``--trials`` processes: mlp_shallow, torch, infer, synthetic data, one
warm-up step, one timed step, one latency request, one thread; distinct batch sizes make distinct
cells (``--repeats`` processes each), and on a cluster each cell goes to MLflow (SQLite) as it ends.

Figures, from the batch's own records:

- ``T``: the driver's ``trials`` phase (``batch.json``): first submission to the last result
  recorded (journal and MLflow included);
- a trial's own time: its journal ``wall_s``, measured by the worker from its start to its result
  written (model build, calibration, measurement);
- ``overhead_ms_per_trial_all_in = (slots * T - sum(own)) / N``, ``slots`` = trials the cluster runs
  at once (one per node): slot time not spent inside a trial, per trial. Besides the per-trial costs
  below it counts each node's fork-server start (a framework import, ``fork_server_start_s``: the
  ``worker_start_s`` of each server's first trial) and the slots idle meanwhile and at the end;
- ``overhead_ms_per_trial`` (the figure the target is for): the same in the steady state, from the
  first trial of the last fork server to start until the last trial starts (the queue is empty from
  then on), on the workers' clocks (one machine): ``(slots * window - own time inside it) / trials
  started inside it``. It counts
  Ray's dispatch, the core lease, the worker's start (a fork), returning the result, and the
  driver's journal and MLflow writes while a slot waits for the next trial;
- the driver's RSS (the ``harness run`` process), sampled every 0.1 s: peak over the run, at the
  first and at the last result, the growth between them and per 100 trials.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from harness import metrics as M
from harness.launch import NODE_CPUS_ENV

HERE = Path(__file__).resolve().parent
TARGET_MS = 50.0
SAMPLE_S = 0.1


def suite_toml(cells: int, repeats: int, timeout_s: float) -> str:
    """The cheapest real trial, ``cells`` batch sizes of it."""
    sizes = ", ".join(str(b) for b in range(1, cells + 1))
    return f"""description = "benchmarks/cluster.py: the cheapest real trial, {cells} cells x {repeats}"
frameworks = ["torch"]
architectures = ["mlp_shallow"]
modes = ["infer"]
batch_sizes = [{sizes}]
repeats = {repeats}
timeout_s = {timeout_s:g}

[measure]
warmup_steps = 1
min_steps = 1
min_time_s = 0
window_steps = 1
min_window_s = 0
latency_requests = 1
"""


@dataclass
class Sampler:
    """The driver's RSS every ``SAMPLE_S`` seconds, with how many results its journal has by then."""

    pid: int
    runs: Path
    samples: list[tuple[float, float, int]] = field(default_factory=list)  # (s since start, RSS MB, results)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _results(self) -> int:
        journals = list(self.runs.glob("*/journal.jsonl"))
        try:
            return journals[0].read_bytes().count(b"\n") if journals else 0
        except OSError:
            return 0

    def run(self) -> None:
        proc, t0 = psutil.Process(self.pid), time.perf_counter()
        while not self._stop.is_set():
            try:
                rss = proc.memory_info().rss / 2**20
            except psutil.Error:
                return
            self.samples.append((time.perf_counter() - t0, rss, self._results()))
            self._stop.wait(SAMPLE_S)

    def stop(self) -> None:
        self._stop.set()

    def memory(self, trials: int) -> dict[str, Any]:
        """Peak RSS; RSS when the first result and when the last result reached the journal; growth."""
        samples = [(rss, n) for _, rss, n in self.samples if rss > 0]  # a zombie reads 0
        if not samples:
            return {}
        out: dict[str, Any] = {"peak_mb": round(max(rss for rss, _ in samples), 1), "samples": len(samples)}
        done = max(n for _, n in samples)
        first = next((rss for rss, n in samples if n > 0), None)
        last = next((rss for rss, n in samples if n == done), None)
        if first is not None and last is not None and done > 0:
            out |= {
                "at_first_result_mb": round(first, 1),
                "at_last_result_mb": round(last, 1),
                "growth_mb": round(last - first, 1),
                "growth_mb_per_100_trials": round(100 * (last - first) / max(1, trials - 1), 2),
            }
        return out


def start_cluster(nodes: int, root: Path) -> Any:
    """A head without CPUs and ``nodes`` one-CPU worker nodes, each its own temp folder and core."""
    from ray.cluster_utils import Cluster

    cores = sorted(os.sched_getaffinity(0))
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 0})
    for i in range(nodes):
        tmp = root / f"n{i}"  # short: fork servers' socket paths must fit
        tmp.mkdir()
        cluster.add_node(num_cpus=1, env_vars={"TMPDIR": str(tmp), NODE_CPUS_ENV: str(cores[i % len(cores)])})
    cluster.wait_for_nodes()
    return cluster


def overhead(rows: list[dict[str, Any]], trials_s: float, slots: int) -> dict[str, Any]:
    """Slot time outside the trials' own time, per trial: all in, and in the steady state (see the
    module docstring)."""
    n = len(rows)
    spans = sorted((float(r["started_at"]), float(r["started_at"]) + float(r["wall_s"])) for r in rows)
    own = sum(end - start for start, end in spans)
    first_of_server: dict[int, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: float(r["started_at"])):
        server = r["environment"].get("fork_server_pid")
        if server is not None:
            first_of_server.setdefault(int(server), r)
    server_start = sum(float(r["metrics"].get(M.WORKER_START_S, 0.0)) for r in first_of_server.values())
    # steady state: from the first trial of the last fork server to start, to the last trial's start
    # (then the queue is empty: slots idle while the last trials run is not a per-trial cost)
    t0 = max((float(r["started_at"]) for r in first_of_server.values()), default=spans[0][0])
    t1 = spans[-1][0]
    inside = [span for span in spans if t0 < span[0] <= t1]  # the gap before each lies in the window
    busy = sum(max(0.0, min(end, t1) - max(start, t0)) for start, end in spans)
    steady = (slots * (t1 - t0) - busy) / len(inside) if len(inside) >= slots and t1 > t0 else None
    starts = [float(r["metrics"][M.WORKER_START_S]) for r in rows if M.WORKER_START_S in r["metrics"]]
    breakdown = _breakdown([r for r in rows if t0 < float(r["started_at"]) <= t1])
    return {
        "trials": n,
        "slots": slots,
        "trials_phase_s": round(trials_s, 3),
        "own_s_total": round(own, 3),
        "own_ms_per_trial_median": round(1000 * statistics.median(end - start for start, end in spans), 1),
        "overhead_ms_per_trial_all_in": round(1000 * (slots * trials_s - own) / n, 1),
        "fork_servers": len(first_of_server),
        "fork_server_start_s": round(server_start, 2),
        "steady_window_s": round(t1 - t0, 3),
        "steady_trials": len(inside),
        "overhead_ms_per_trial": round(1000 * steady, 1) if steady is not None else None,
        "worker_start_ms_median": round(1000 * statistics.median(starts), 1) if starts else None,
        "target_ms": TARGET_MS,
        "meets_target": steady is not None and steady < TARGET_MS / 1000,
        "steady_breakdown_ms_median": breakdown,
    }


def _breakdown(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Where a steady-state trial's time outside its worker went (medians, ms), from the spans the
    driver (``driver_span``: submitted, result back) and the Ray task (``task_span``) record."""
    parts: dict[str, list[float]] = {
        "ray_dispatch": [],  # submitted -> the task runs on its node
        "lease_and_start": [],  # core lease, memory cap, request, fork -> the worker's first line
        "worker": [],  # the trial's own time
        "worker_exit_and_return": [],  # result written -> the task returns it
        "result_to_driver": [],  # the task returned -> the driver's thread has it
    }
    for r in rows:
        env = r["environment"]
        if "driver_span" not in env or "task_span" not in env:
            continue
        (submitted, back), (task_start, task_end) = env["driver_span"], env["task_span"]
        start, end = float(r["started_at"]), float(r["started_at"]) + float(r["wall_s"])
        for key, value in zip(parts, (task_start - submitted, start - task_start, end - start, task_end - end,
                                      back - task_end), strict=True):  # fmt: skip
            parts[key].append(value)
    return {k: round(1000 * statistics.median(v), 1) for k, v in parts.items() if v}


def bench(trials: int, nodes: int, repeats: int, timeout_s: float) -> dict[str, Any]:
    if trials % repeats:
        raise SystemExit(f"--trials {trials} is not a multiple of --repeats {repeats}")
    root = Path(tempfile.mkdtemp(prefix="hc-"))
    cluster = None
    try:
        cache = root / "cache"  # data sets and GEMM calibrations: this run's, not the user's
        os.environ["HARNESS_CACHE"] = str(cache)  # the nodes inherit it from this process
        t0 = time.perf_counter()
        cluster = start_cluster(nodes, root)
        cluster_start_s = time.perf_counter() - t0
        suite = root / "cluster-bench.toml"
        suite.write_text(suite_toml(trials // repeats, repeats, timeout_s))
        env = {
            **os.environ,
            "HARNESS_RUNS_DIR": str(root / "runs"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
        }
        env.pop("RAY_ADDRESS", None)
        env.pop("HARNESS_INJECT_FAULTS", None)
        cmd = [sys.executable, "-m", "harness.cli", "run", str(suite), "--address", str(cluster.address)]
        cmd += ["--reserve-cores", "0", "--threads", "1", "--seed", "0"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        sampler = Sampler(proc.pid, root / "runs")
        thread = threading.Thread(target=sampler.run, daemon=True)
        thread.start()
        out, err = proc.communicate()
        wall = time.perf_counter() - t0
        sampler.stop()
        thread.join()
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"harness run exited {proc.returncode}:\n{out[-2000:]}\n{err[-3000:]}")
        (meta_path,) = (root / "runs").glob("*/batch.json")
        phases: dict[str, float] = json.loads(meta_path.read_text())["phases_s"]
        rows = [json.loads(line) for line in meta_path.with_name("journal.jsonl").read_text().splitlines()]
        statuses: dict[str, int] = {}
        for r in rows:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        return {
            "nodes": nodes,
            "repeats": repeats,
            "cores": len(os.sched_getaffinity(0)),
            "statuses": statuses,
            "cluster_start_s": round(cluster_start_s, 2),
            "harness_run_wall_s": round(wall, 2),
            "driver_phases_s": {k: round(v, 3) for k, v in phases.items()},
            **overhead(rows, phases["trials"], nodes),
            "driver_rss": sampler.memory(len(rows)),
            "date": time.strftime("%Y-%m-%d"),
        }
    finally:
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)


SCALING_FRAMEWORKS = ("torch", "jax", "tensorflow")  # MXNet has no multi-worker path (unsupported)


def scaling(repeats: int, frameworks: tuple[str, ...] = SCALING_FRAMEWORKS) -> dict[str, Any]:
    """Weak-scaling efficiency of W = 2 against W = 1 on a fake cluster of two one-CPU nodes (one core of
    this machine each): ``harness run compare --workers 1,2`` (mlp_deep and cnn1d training, batch 128
    per worker, K processes per cell). Efficiency = the W = 1 cell's step time / the W = 2 cell's (the
    global throughput over 2x the 1-worker throughput), with a 95% interval from the processes of both
    cells (``stats.ratio_interval``). On this 2-core VM the driver and Ray share the cores with the
    workers (``--reserve-cores 0``): the figures include that contention."""
    from harness import stats
    from harness.cells import cells, single_worker
    from harness.journal import Batch

    root = Path(tempfile.mkdtemp(prefix="hs-"))
    cluster = None
    try:
        os.environ["HARNESS_CACHE"] = str(root / "cache")
        cluster = start_cluster(2, root)
        env = {
            **os.environ,
            "HARNESS_RUNS_DIR": str(root / "runs"),
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'm.db'}",
        }
        env.pop("RAY_ADDRESS", None)
        cmd = [sys.executable, "-m", "harness.cli", "run", "compare", "--address", str(cluster.address)]
        cmd += ["--framework", ",".join(frameworks), "--arch", "mlp_deep,cnn1d", "--mode", "train"]
        cmd += ["--workers", "1,2", "--repeats", str(repeats), "--reserve-cores", "0", "--threads", "1", "--seed", "0"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode not in (0, 1):
            raise RuntimeError(f"harness run exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        (meta_path,) = (root / "runs").glob("*/batch.json")
        found = cells(Batch(root / "runs", meta_path.parent.name).results())
        by_key = {c.trial_key: c for c in found}
        rows = []
        for c in found:
            if c.spec.workers != 2:
                continue
            one = by_key.get(single_worker(c.spec).trial_key)
            row: dict[str, Any] = {"framework": c.spec.framework, "architecture": c.spec.architecture,
                                   "status": c.status, "reason": c.reason[:300]}  # fmt: skip
            if one is not None and c.step_groups and one.step_groups:
                eff = stats.ratio_interval(one.step_groups, c.step_groups)
                row |= {
                    "samples_per_s_w1": one.throughput.estimate if one.throughput else None,
                    "samples_per_s_w2": c.throughput.estimate if c.throughput else None,
                    "efficiency": eff.estimate,
                    "efficiency_ci": [eff.low, eff.high],
                    "processes": eff.processes,
                    "comm_s_per_step": c.metrics.get(M.COMM_S_PER_STEP),
                }
            rows.append(row)
        return {"repeats": repeats, "wall_s": round(wall, 1), "rows": rows, "date": time.strftime("%Y-%m-%d")}
    finally:
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=200, help="trial processes in the batch")
    p.add_argument("--nodes", type=int, default=4, help="worker nodes of the fake cluster (one CPU each)")
    p.add_argument("--repeats", type=int, default=1, help="processes per cell (--trials / --repeats cells)")
    p.add_argument("--timeout", type=float, default=120.0, help="per-trial timeout, seconds")
    p.add_argument("--out", type=Path, default=HERE / "results.json")
    p.add_argument("--sections", default="overhead,scaling", help="comma list of overhead, scaling")
    p.add_argument("--scaling-repeats", type=int, default=3, help="processes per cell of the scaling section")
    args = p.parse_args(argv)
    sections = args.sections.split(",")
    if "scaling" in sections:
        print(f"weak scaling W = 1, 2 on a fake 2-node cluster ({args.scaling_repeats} processes per cell)")
        found = scaling(args.scaling_repeats)
        results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
        results["scaling"] = found
        args.out.write_text(json.dumps(results, indent=2))
        for r in found["rows"]:
            if "efficiency" in r:
                lo, hi = r["efficiency_ci"]
                print(f"  {r['framework']} {r['architecture']}: efficiency {r['efficiency']:.2f} [{lo:.2f}, {hi:.2f}]")
            else:
                print(f"  {r['framework']} {r['architecture']}: {r['status']} {r['reason']}")
    if "overhead" not in sections:
        return 0
    if args.trials < 2 or args.nodes < 1 or args.repeats < 1:
        p.error("--trials must be at least 2, --nodes and --repeats at least 1")
    print(f"{args.trials} trials on a fake {args.nodes}-node cluster (harness run --address)")
    result = bench(args.trials, args.nodes, args.repeats, args.timeout)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["cluster"] = result
    args.out.write_text(json.dumps(results, indent=2))
    rss = result["driver_rss"]
    steady = "n/a" if result["overhead_ms_per_trial"] is None else f"{result['overhead_ms_per_trial']:.1f}"
    print(
        f"  statuses {result['statuses']}; trials phase {result['trials_phase_s']:.1f} s on {result['slots']} slots; "
        f"own time median {result['own_ms_per_trial_median']:.0f} ms\n"
        f"  overhead {steady} ms/trial in the steady state ({result['steady_trials']} trials), "
        f"{result['overhead_ms_per_trial_all_in']:.1f} ms/trial all in ({result['fork_servers']} fork-server "
        f"start(s), {result['fork_server_start_s']:.1f} s); target < {TARGET_MS:.0f} ms: "
        f"{'met' if result['meets_target'] else 'MISSED'}\n"
        f"  driver RSS peak {rss.get('peak_mb', 0):.0f} MB, {rss.get('at_first_result_mb', 0):.0f} -> "
        f"{rss.get('at_last_result_mb', 0):.0f} MB over the batch ({rss.get('growth_mb_per_100_trials', 0):+.1f} MB "
        f"per 100 trials); results in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
