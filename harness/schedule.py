"""Ray scheduling: one task per trial, holding its CPUs (and GPU/TPU) exclusively.

``connect(None)`` starts an embedded local Ray; an address joins an existing cluster. Every task
has ``max_retries=0``: the harness, not Ray, decides about retries and records the attempt. A CPU
trial asks Ray for ``threads`` CPUs and then leases that many distinct cores of its node
(:func:`harness.launch.lease_cores`), so timing trials never share a core. GPU trials add
``num_gpus=1``; TPU trials the ``TPU`` resource.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import ray

from harness import faults, gang
from harness.contract import TrialResult, TrialSpec
from harness.launch import NODE_CPUS_ENV, launch, lease_cores, node_cpus
from harness.spec import SpecError
from workloads import datasets

DEVICE_RESOURCE = gang.DEVICE_RESOURCE


CONNECT_TIMEOUT_S = 30.0


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of a GCS (``host:port``) or Ray Client (``ray://host:port``) address; None for
    addresses Ray resolves itself (``auto``, ``local``)."""
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep:
        if address in ("auto", "local"):
            return None
        raise SpecError(f"Ray address {address!r} is not host:port, ray://host:port or auto")
    try:
        return host.strip("[]") or "127.0.0.1", int(port)
    except ValueError:
        raise SpecError(f"Ray address {address!r} has no valid port") from None


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail in one line, fast, when nothing listens at a cluster address (Ray itself retries for minutes)."""
    target = _host_port(address)
    if target is None:
        return
    try:
        socket.create_connection(target, timeout=timeout_s).close()
    except OSError as e:
        raise SpecError(
            f"cannot reach the Ray cluster at {address} ({e.strerror or e}); start it with `ray start --head` "
            "or check --address / RAY_ADDRESS (omit both for an embedded local Ray)"
        ) from None


def connect(address: str | None, reserve: int = 0) -> None:
    """Join the cluster at ``address`` (checked first, bounded) or start an embedded local Ray that
    offers the node's cores less the ``reserve`` kept for the driver and Ray's own processes."""
    if ray.is_initialized():
        return
    os.environ.setdefault(NODE_CPUS_ENV, ",".join(map(str, node_cpus())))  # Ray's workers inherit it
    # Ray starts task workers at nice 15; trial processes inherit it and then lose the CPU to any
    # other process (the driver logging to MLflow, Ray's own daemons), ruining timings.
    os.environ.setdefault("RAY_worker_niceness", "0")
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "error"}
    if address:
        check_reachable(address)
        _bounded(lambda: ray.init(address=address, **kwargs), CONNECT_TIMEOUT_S, address)
    else:
        # "local": always a fresh embedded instance, never a cluster that happens to run on this machine
        ray.init(address="local", num_cpus=max(1, len(node_cpus()) - reserve), **kwargs)
        ray.get(ray.remote(_noop).options(num_cpus=1).remote())  # a task worker is up before timing starts


def _noop() -> None:
    return None


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return []


def _fork_server(proc: Any) -> bool:
    """Fork servers stay unpinned: a fork of a process holding a framework, done on the reserved core
    beside the driver and Ray, took ~0.5 s per trial instead of ~20 ms (their children pin themselves)."""
    try:
        return "forkserver" in " ".join(proc.cmdline())
    except Exception:  # gone, or not ours
        return False


def pin_to_reserved(reserve: int) -> Callable[[], None]:
    """Keep this driver and every process it started (Ray's daemons and workers; not the fork servers)
    on the node's first ``reserve`` cores, every thread of each; returns what undoes it.

    Trials lease only the other cores (:func:`harness.launch.lease_cores`) and set their own CPU set,
    so the driver's MLflow writes and Ray's heartbeats no longer preempt a timed step. Linux only; a
    no-op without a reserve, and best effort for processes that are gone or not ours. New threads of
    the driver started while pinned stay pinned after the undo (the undo restores the masks it saw).
    """
    if reserve <= 0 or not hasattr(os, "sched_setaffinity"):
        return lambda: None
    import psutil

    reserved = set(node_cpus()[:reserve])
    me = psutil.Process()
    pids = [me.pid] + [p.pid for p in me.children(recursive=True) if not _fork_server(p)]
    before: list[tuple[int, set[int]]] = []
    for pid in pids:
        for tid in _threads(pid):
            try:
                before.append((tid, os.sched_getaffinity(tid)))
                os.sched_setaffinity(tid, reserved)
            except OSError:
                continue

    def restore() -> None:
        """Every pinned thread still alive (the driver's, fork servers that outlive the batch) as it was."""
        for tid, mask in before:
            try:
                os.sched_setaffinity(tid, mask)
            except OSError:
                continue

    return restore


def _bounded(init: Callable[[], object], timeout_s: float, address: str) -> None:
    """``ray.init`` in a daemon thread with a deadline: something listens but is not a Ray cluster."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            init()
        except BaseException as e:
            failure.append(e)

    thread = threading.Thread(target=run, daemon=True, name="ray-connect")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise SpecError(f"no Ray cluster answered at {address} within {timeout_s:g} s; check --address / RAY_ADDRESS")
    if failure:
        raise SpecError(f"cannot join the Ray cluster at {address}: {str(failure[0]).splitlines()[0][:300]}")


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


def resources(spec: TrialSpec) -> dict[str, Any]:
    """Ray's options for one worker of ``spec`` (from its placement-group bundle)."""
    b = gang.bundle(spec)
    req: dict[str, Any] = {"num_cpus": b.pop("CPU")}
    if "GPU" in b:
        req["num_gpus"] = b.pop("GPU")
    if b:
        req["resources"] = b
    return req


def unschedulable(specs: Iterable[TrialSpec], reserve: int = 0) -> list[str]:
    """Why some trials could run on no node (set) of the cluster (empty when all can)."""
    alive = [n for n in ray.nodes() if n.get("Alive")]
    nodes = [n["Resources"] for n in alive]
    problems: list[str] = []
    wanted = sorted({s.accelerator_type for s in specs if s.accelerator_type})
    have_types = sorted({k.split(":", 1)[1] for r in nodes for k in r if k.startswith("accelerator_type:")})
    for kind in wanted:
        if kind not in have_types:
            problems.append(
                f"no node in the Ray cluster has accelerator type {kind} "
                f"(cluster has: {', '.join(have_types) or 'no typed accelerators'})"
            )
    checked: set[tuple[str, int, int, str | None, str | None]] = set()
    for s in specs:
        key = (s.device, s.threads, s.workers, s.tpu_slice, s.accelerator_type)
        if key in checked or (s.accelerator_type and s.accelerator_type not in have_types):
            continue
        checked.add(key)
        device = DEVICE_RESOURCE.get(s.device)
        if device and not any(r.get(device, 0) >= 1 for r in nodes):
            have = ", ".join(sorted({k for r in nodes for k in r if k in ("CPU", "GPU", "TPU")}))
            problems.append(f"no node in the Ray cluster has a {s.device.upper()} (cluster has: {have})")
            continue
        if s.workers > 1 or s.tpu_slice:
            try:
                gang.placement(s, alive)
            except gang.Unplaceable as e:
                kept = f" after {reserve} reserved per node (--reserve-cores)" if reserve else ""
                hint = "" if s.tpu_slice else f"{kept}; use fewer --workers or --threads, or more nodes"
                problems.append(f"{e}{hint}")
        elif not any(r.get("CPU", 0) >= s.threads and (not device or r.get(device, 0) >= 1) for r in nodes):
            most = max((int(r.get("CPU", 0)) for r in nodes), default=0)
            kept = f" after {reserve} reserved for the harness (--reserve-cores)" if reserve else ""
            problems.append(
                f"trials need {s.threads} CPUs on one node; the largest node offers {most}{kept} (use --threads)"
            )
    return list(dict.fromkeys(problems))


def _materialize(name: str, sha256: str, arrays_ref: list[Any]) -> str:
    """This node's cached copy of a data set, written from the object store on first use."""
    path = datasets.cache_dir() / f"{name}-{sha256[:16]}.npz"
    if not path.exists():
        arrays: dict[str, np.ndarray] = ray.get(arrays_ref[0])
        path.parent.mkdir(parents=True, exist_ok=True)
        datasets.save(path, arrays)
    return str(path)


def _run_trial(
    spec_json: str,
    replica: int,
    dataset: tuple[str, str, list[Any]] | None,
    fault: str | None,
    reserve: int,
    rank: int = 0,
    peers: list[str] | None = None,
    group: str | None = None,
) -> str:
    task_started = time.time()
    with faults.announced() as node_id:  # the driver names this node if the task dies with it
        spec = TrialSpec.from_json(spec_json)
        path = _materialize(*dataset) if dataset else None
        cache = str(datasets.cache_dir().parent)
        with lease_cores(spec.threads, reserve=reserve) as cpus:
            cores = len(node_cpus()) - reserve  # the trials that fit share the node's memory (default cap)
            result = launch(
                spec,
                cpus=cpus,
                dataset_path=path,
                cache_dir=cache,
                fault=fault,
                cores=cores,
                rank=rank,
                peers=peers,
                group=group,
            )
        result.replica = replica
        result.environment["reserved_cores"] = node_cpus()[:reserve]
        result.environment["ray_node_id"] = node_id
        # where a trial's time outside its worker went (scheduling overhead: benchmarks/cluster.py)
        result.environment["task_span"] = [task_started, time.time()]
        return result.to_json()


Run = tuple[TrialSpec, int]  # a cell and which of its processes (replica)


def _task_failed(spec: TrialSpec, replica: int, e: BaseException, ref: Any = None) -> TrialResult:
    """The result of a trial's Ray task that died without one (its node lost, its worker killed)."""
    node = faults.started_on(ref) if ref is not None else None
    return TrialResult(
        trial_key=spec.trial_key,
        spec=spec,
        status="crash",
        reason=faults.task_failure_reason(e, node)[:2000],
        replica=replica,
    )


def _needs(spec: TrialSpec) -> dict[str, float]:
    """What a run holds while in flight: every worker's bundle (CPUs, GPUs, TPU chips)."""
    return {k: v * spec.workers for k, v in gang.bundle(spec).items() if k in ("CPU", "GPU", "TPU")}


class _InFlight:
    """Runs in flight and the resources they hold, against what the cluster has."""

    def __init__(self) -> None:
        self.capacity = {k: float(v) for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "TPU")}
        self.used: dict[str, float] = {}
        self.count = 0
        self.refs: set[Any] = set()  # Ray tasks running, cancelled on interrupt
        self.lock = threading.Lock()

    def fits(self, spec: TrialSpec) -> bool:
        """Another run may start: it fits beside the others (or nothing runs: Ray queues it)."""
        need = _needs(spec)
        return self.count == 0 or all(self.used.get(k, 0.0) + v <= self.capacity.get(k, 0.0) for k, v in need.items())

    def take(self, spec: TrialSpec, sign: int = 1) -> None:
        for k, v in _needs(spec).items():
            self.used[k] = self.used.get(k, 0.0) + sign * v
        self.count += sign


def run_all(
    runs: list[Run],
    on_result: Callable[[TrialResult], None],
    faults_by_name: dict[str, str] | None = None,
    reserve: int = 0,
) -> None:
    """Run every (cell, replica) in the given order and hand each result to ``on_result`` as it completes.

    At most as many run at once as the cluster holds (CPUs, GPUs, TPU chips; a multi-worker trial
    counts all its workers), and the next is submitted as one finishes, so they start in the given
    (interleaved) order rather than in Ray's. Each run is driven by a daemon thread of this driver: a
    single-process trial is one Ray task; a multi-worker trial is gang-scheduled
    (:func:`harness.gang.run_gang`). An interrupt (Ctrl-C) cancels the tasks in flight and returns at
    once. A fault (test hook) goes to a single-process trial, or to the last worker of a multi-worker one.
    """
    injected = faults_by_name or {}
    specs = [s for s, _ in runs]
    shared: dict[str, tuple[str, str, list[Any]]] = {}
    for name in {s.dataset for s in specs if s.trains_to_accuracy}:
        prepared = datasets.prepare(name)
        arrays = dict(np.load(prepared.path))
        shared[name] = (name, prepared.sha256, [ray.put(arrays)])
    task = ray.remote(max_retries=0)(_run_trial)
    flight = _InFlight()

    def execute(spec: TrialSpec, replica: int) -> TrialResult:
        ds = shared.get(spec.dataset) if spec.trains_to_accuracy else None
        fault = injected.get(spec.name)
        mine: list[Any] = []

        def watched(ref: Any) -> Any:
            mine.append(ref)
            with flight.lock:
                flight.refs.add(ref)
            return ref

        def start(rank: int, peers: list[str], group: str, options: dict[str, Any]) -> Any:
            last = rank == spec.workers - 1
            return watched(
                task.options(**resources(spec), **options).remote(
                    spec.to_json(), replica, ds, fault if last else None, reserve, rank, peers, group
                )
            )

        try:
            if spec.workers == 1 and not spec.tpu_slice:
                ref = watched(task.options(**resources(spec)).remote(spec.to_json(), replica, ds, fault, reserve))
                try:
                    return TrialResult.from_json(ray.get(ref))
                except Exception as e:  # the Ray task itself died (node lost, worker killed)
                    return _task_failed(spec, replica, e, ref)
            result = gang.run_gang(spec, start, lambda ref, e: _task_failed(spec, replica, e, ref))
            result.replica = replica
            return result
        finally:
            with flight.lock:  # finished: nothing to cancel, and their results may be freed
                flight.refs.difference_update(mine)

    done: queue.Queue[tuple[Run, TrialResult]] = queue.Queue()

    def drive(spec: TrialSpec, replica: int) -> None:
        submitted = time.time()
        try:
            result = execute(spec, replica)
        except Exception as e:  # a bug in the driver's own code: recorded, the batch goes on
            result = _task_failed(spec, replica, e)
        result.environment["driver_span"] = [submitted, time.time()]  # submitted, its result back
        done.put(((spec, replica), result))

    todo = list(runs)

    def submit() -> None:
        while todo and flight.fits(todo[0][0]):
            spec, replica = todo.pop(0)
            flight.take(spec)
            threading.Thread(target=drive, args=(spec, replica), daemon=True, name=f"trial-{spec.name}").start()

    try:
        submit()
        while flight.count:
            try:
                (spec, _), result = done.get(timeout=0.5)  # a timeout: Ctrl-C is handled between waits
            except queue.Empty:
                continue
            flight.take(spec, -1)
            submit()  # the next one starts while this result is recorded
            on_result(result)
    except BaseException:
        with flight.lock:
            for ref in flight.refs:
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)
        raise
