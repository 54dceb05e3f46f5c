"""Multi-worker trials: gang-scheduled on a Ray placement group, started together, ended together.

A trial of W workers (``TrialSpec.workers``) asks Ray for one placement-group bundle per worker
(its CPUs, its GPU or TPU chips, its accelerator type). ``STRICT_PACK`` keeps the workers on one
node when one node holds them all; otherwise ``SPREAD`` places them across nodes, and a TPU slice
is ``STRICT_SPREAD`` over its hosts, worker ``i`` on the host whose ``ray.io/tpu-worker-id`` is
``i`` (the one holding ``TPU-<type>-head`` is worker 0). Either every bundle is placed or none is:
nothing starts before the group is ready.

Once placed, a task on each bundle picks the ports of its worker (the framework's endpoint; on
worker 0 also the harness's channel, :mod:`harness.worker.group`), so the coordinator address and
the ranks come from the harness. The W trial tasks then run on their bundles. The first worker
that ends without a result ends the trial: the others get a short grace to report their own end,
then are cancelled (their worker processes die with them), and the trial's result names the worker
that failed first for a cause of its own (a peer that only reports a lost peer is not the cause),
its node and its stderr tail.
"""

from __future__ import annotations

import functools
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import ray

from harness.contract import Status, TrialResult, TrialSpec

DEVICE_RESOURCE = {"gpu": "GPU", "tpu": "TPU"}
PLACEMENT_TIMEOUT_S = 60.0  # how often a waiting group checks that the live nodes can still hold it
GRACE_S = 5.0  # after the first failure, how long the other workers may take to report their own end
SLICE_LABEL = "ray.io/tpu-slice-name"
WORKER_ID_LABEL = "ray.io/tpu-worker-id"


class Unplaceable(ValueError):
    """No node set of the cluster can hold this trial's workers (a user error: exit 2 before anything runs)."""


def accelerator_resource(accelerator_type: str) -> str:
    """Ray's resource for nodes of one accelerator type (what ``@ray.remote(accelerator_type=...)`` uses)."""
    return f"accelerator_type:{accelerator_type}"


def tpu_hosts(slice_type: str) -> tuple[int, int]:
    """``(hosts, chips per host)`` of a TPU slice type such as ``v4-16`` (Ray's own TPU arithmetic)."""
    from ray._private.accelerators import tpu

    try:
        chips = tpu.get_total_chips_from_accelerator_type(slice_type)
        per_host = tpu.get_num_tpu_visible_chips_per_host(slice_type)
    except (ValueError, IndexError) as e:
        raise Unplaceable(f"unknown TPU slice type {slice_type!r} ({e}); e.g. v4-8, v4-16, v5p-16, v6e-16") from None
    return max(1, chips // per_host), min(per_host, chips)


def bundle(spec: TrialSpec) -> dict[str, float]:
    """What one worker of ``spec`` holds: its CPUs, its GPU or TPU chips, its accelerator type."""
    b: dict[str, float] = {"CPU": float(spec.threads)}
    if spec.device == "gpu":
        b["GPU"] = 1.0
    elif spec.device == "tpu":
        b["TPU"] = float(tpu_hosts(spec.tpu_slice)[1]) if spec.tpu_slice else 1.0
    if spec.accelerator_type:
        b[accelerator_resource(spec.accelerator_type)] = 0.001  # Ray's convention: a marker, not a count
    return b


def _alive() -> list[dict[str, Any]]:
    return [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]


def _fits(have: dict[str, float], need: dict[str, float], times: int = 1) -> bool:
    return all(have.get(k, 0.0) >= v * times - 1e-9 for k, v in need.items())


@dataclass(frozen=True)
class Placement:
    bundles: list[dict[str, float]]
    strategy: str
    label_selectors: list[dict[str, str]] | None = None


def find_slice(
    slice_type: str, nodes: Sequence[dict[str, Any]], available: dict[str, float] | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """A slice of ``slice_type``: its name and its hosts (worker 0 holds ``TPU-<type>-head``); with
    ``available`` (Ray's free resources), a slice no trial holds now where there is one."""
    head = f"TPU-{slice_type}-head"
    heads = [n for n in nodes if n["Resources"].get(head, 0) >= 1]
    if not heads:
        types = sorted(
            {
                k.removeprefix("TPU-").removesuffix("-head")
                for n in nodes
                for k in n["Resources"]
                if k.startswith("TPU-") and k.endswith("-head")
            }
        )
        have = ", ".join(types) or "none"
        raise Unplaceable(f"no TPU slice of type {slice_type} in the Ray cluster (no node has {head}; slices: {have})")
    names = [str(n.get("Labels", {}).get(SLICE_LABEL, "")) for n in heads]
    if not all(names):
        raise Unplaceable(f"the {slice_type} slice head has no {SLICE_LABEL} label (Ray sets it on TPU hosts)")
    # several slices of the type: one that is free now (its slice-name resource fully available)
    free = dict(available) if available is not None else {}
    name = next((n for n in names if free.get(n, 0.0) >= _hosts_of(n, nodes) - 1e-9), names[0])
    return name, [n for n in nodes if n.get("Labels", {}).get(SLICE_LABEL) == name]


def _hosts_of(name: str, nodes: Sequence[dict[str, Any]]) -> int:
    return sum(1 for n in nodes if n.get("Labels", {}).get(SLICE_LABEL) == name)


def placement(
    spec: TrialSpec, nodes: Sequence[dict[str, Any]] | None = None, available: dict[str, float] | None = None
) -> Placement:
    """The placement group of ``spec``'s workers on the live nodes (raises :class:`Unplaceable`).
    Packing is decided on the nodes' totals: whether the group can ever be placed, not whether now."""
    nodes = list(nodes if nodes is not None else _alive())
    one = bundle(spec)
    w = spec.workers
    if spec.tpu_slice:
        name, hosts = find_slice(spec.tpu_slice, nodes, available)
        if len(hosts) != w:
            raise Unplaceable(f"TPU slice {name} ({spec.tpu_slice}) has {len(hosts)} hosts in Ray, the type has {w}")
        head = f"TPU-{spec.tpu_slice}-head"
        bundles = [dict(one, **{name: 1.0}) for _ in range(w)]
        bundles[0][head] = 1.0
        selectors = [{SLICE_LABEL: name, WORKER_ID_LABEL: str(i)} for i in range(w)]
        short = [n for n in hosts if not _fits(n["Resources"], one)]
        if short:
            raise Unplaceable(f"TPU slice {name}: a host lacks {one} (has {short[0]['Resources']})")
        return Placement(bundles, "STRICT_SPREAD", selectors)
    if any(_fits(n["Resources"], one, w) for n in nodes):
        return Placement([one] * w, "STRICT_PACK")
    if sum(_max_copies(n["Resources"], one) for n in nodes) >= w:
        return Placement([one] * w, "SPREAD")
    most = max((_max_copies(n["Resources"], one) for n in nodes), default=0)
    raise Unplaceable(
        f"{spec.name}: {w} workers of {_describe(one)} fit nowhere: the {len(nodes)} live node(s) hold "
        f"{sum(_max_copies(n['Resources'], one) for n in nodes)} such workers in all, at most {most} on one"
    )


def _max_copies(have: dict[str, float], need: dict[str, float]) -> int:
    return int(min((have.get(k, 0.0) + 1e-9) // v for k, v in need.items() if v > 0)) if need else 0


def _describe(b: dict[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in b.items()) + "}"


def free_endpoint() -> tuple[str, int, int]:
    """This node's address and two free ports: the framework's endpoint and the harness channel."""
    ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    ports = []
    socks = [socket.socket() for _ in range(2)]
    for s in socks:
        s.bind(("", 0))
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ip, ports[0], ports[1]


@functools.cache
def _endpoint_task() -> Any:
    """:func:`free_endpoint` as a Ray task, defined once per driver (not once per trial)."""
    return ray.remote(num_cpus=0)(free_endpoint)


def run_gang(
    spec: TrialSpec,
    start: Callable[[int, list[str], str, dict[str, Any]], Any],
    failed: Callable[[Any, BaseException], TrialResult],
) -> TrialResult:
    """Place ``spec``'s workers, start them (``start(rank, peers, group, options)`` -> ObjectRef of a
    result's JSON) and return the trial's result; ``failed(ref, exception)`` describes a task that
    died without one."""
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    try:
        plan = placement(spec, available=ray.available_resources())  # type: ignore[no-untyped-call]
    except Unplaceable as e:  # the plan checked it could be placed: the cluster changed since
        return _end(spec, "failed", str(e))
    pg = placement_group(plan.bundles, strategy=plan.strategy, bundle_label_selector=plan.label_selectors)
    try:
        ready = pg.ready()
        while not ray.wait([ready], timeout=PLACEMENT_TIMEOUT_S)[0]:
            # other trials hold the resources: wait on, as long as the live nodes could ever hold the group
            try:
                placement(spec)
            except Unplaceable as e:
                return _end(spec, "failed", f"placement group never placed: {e}")

        def on(i: int) -> PlacementGroupSchedulingStrategy:
            return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i)

        probe = _endpoint_task()
        ends = ray.get([probe.options(scheduling_strategy=on(i)).remote() for i in range(spec.workers)])
        peers = [f"{ip}:{port}" for ip, port, _ in ends]
        group = f"{ends[0][0]}:{ends[0][2]}"
        refs = [start(i, peers, group, {"scheduling_strategy": on(i)}) for i in range(spec.workers)]
        return _collect(spec, refs, failed, [ip for ip, _, _ in ends])
    finally:
        remove_placement_group(pg)


def _collect(
    spec: TrialSpec, refs: list[Any], failed: Callable[[Any, BaseException], TrialResult], hosts: list[str]
) -> TrialResult:
    """Wait for every worker; on the first failure give the rest :data:`GRACE_S`, then cancel them."""
    pending = {ref: rank for rank, ref in enumerate(refs)}
    results: dict[int, TrialResult] = {}
    order: list[int] = []  # ranks in the order their results arrived

    def take(ref: Any) -> None:
        rank = pending.pop(ref)
        try:
            results[rank] = TrialResult.from_json(ray.get(ref))
        except Exception as e:
            results[rank] = failed(ref, e)
        order.append(rank)

    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        take(done[0])
        if not results[order[-1]].ok:
            done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=GRACE_S)
            for ref in done:
                take(ref)
            for ref in list(pending):
                ray.cancel(ref, force=True)  # its worker process dies with the Ray worker (PDEATHSIG)
                pending.pop(ref)
            break
    if all(r.ok for r in results.values()) and len(results) == spec.workers:
        return combine(spec, [results[i] for i in range(spec.workers)])
    return _failure(spec, results, order, hosts)


def combine(spec: TrialSpec, workers: list[TrialResult]) -> TrialResult:
    """One result for the trial: rank 0's (its windows are already every worker's slowest) and where
    every worker ran."""
    result = workers[0]
    result.environment["workers"] = [
        {
            "rank": i,
            "hostname": r.environment.get("hostname", ""),
            "node": r.environment.get("node", {}),
            "cpus": r.environment.get("cpus", []),
            "comm_s_per_step": r.metrics.get("comm_s_per_step"),
        }
        for i, r in enumerate(workers)
    ]
    result.wall_s = max(r.wall_s for r in workers)
    return result


# what a worker reports when a peer, not itself, went wrong: the harness channel, gloo, TF's collectives
PEER_SIGNS = ("PeerLost: ", "Connection closed by peer", "Connection reset by peer", "Timed out waiting",
              "DeadlineExceeded", "timed out after", "Socket Timeout")  # fmt: skip


def _peer_report(r: TrialResult) -> bool:
    return any(sign in r.reason for sign in PEER_SIGNS)


def _failure(spec: TrialSpec, results: dict[int, TrialResult], order: list[int], hosts: list[str]) -> TrialResult:
    """The trial's end when a worker failed: the worker at fault, its status and stderr tail.

    At fault: the first worker that failed for a reason of its own, a dead process first (a crash
    before the collective error it causes in its peers); else, when the others only report a lost or
    silent peer, a worker that had to be stopped (it hung: ``timeout``); else the first report."""
    failed = [i for i in order if not results[i].ok]
    own = sorted(
        (i for i in failed if not _peer_report(results[i])),
        key=lambda i: results[i].status not in ("crash", "oom", "timeout"),
    )
    stopped = sorted(set(range(spec.workers)) - set(results))
    first = failed[0]
    if own:
        culprit, status, what = own[0], results[own[0]].status, results[own[0]].reason
    elif stopped:
        culprit, status = stopped[0], "timeout"
        what = f"stopped answering; worker {first} reported: {results[first].reason}"
    else:
        culprit, status, what = first, results[first].status, results[first].reason
    rest = [i for i in stopped if i != culprit]
    tail = f"; workers {rest} were stopped" if rest else ""
    reason = f"worker {culprit} of {spec.workers} ({hosts[culprit]}): {status}: {what}{tail}"
    end = _end(spec, status, reason)
    end.stderr_tail = results[culprit].stderr_tail if culprit in results else results[first].stderr_tail
    end.environment = {
        "workers": [
            {"rank": i, "host": hosts[i], "status": results[i].status if i in results else "stopped",
             "reason": results[i].reason[:300] if i in results else ""}
            for i in range(spec.workers)
        ]
    }  # fmt: skip
    return end


def _end(spec: TrialSpec, status: Status, reason: str) -> TrialResult:
    return TrialResult(trial_key=spec.trial_key, spec=spec, status=status, reason=reason)
