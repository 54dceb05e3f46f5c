"""Why a trial's Ray task ended without a result, and which node it lost: the driver's side of node faults.

When the node running a task goes away (removed, preempted, its raylet killed), ``ray.get`` on the
task's result raises :class:`ray.exceptions.NodeDiedError` (measured on Ray 2.60 with
``ray.cluster_utils.Cluster.remove_node``, graceful or not, within a second). It carries no fields,
only a message that names the node::

    Task failed because the node it was running on is dead or unavailable. Node IP: 192.0.2.2,
    node ID: c94ab2ca18266d70.... This can happen if the node was preempted, ...

:func:`task_failure_reason` turns that into ``node lost: vm (192.0.2.2), node c94ab2ca: received
SIGTERM`` (hostname and Ray's death reason from ``ray.nodes()``, which keeps dead nodes). A worker
process that dies while its node lives raises :class:`ray.exceptions.WorkerCrashedError` instead,
with no node in it; so can a node's death when the worker's end is noticed before the node's. For
that case a task may :func:`announce` the node it started on, and the driver reads it back with
:func:`started_on` and passes it: a task that failed on a node that is no longer alive lost its node.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

NODE_LOST = "node lost: "
TASK_FAILED = "Ray task failed: "
REASON_CHARS = 2000

_IN_MESSAGE = re.compile(r"Node IP:\s*(?P<ip>[^\s,]+),\s*node ID:\s*(?P<id>[0-9a-fA-F]+)")
_KV_NAMESPACE = "harness"
_KV_PREFIX = "task-node:"


@dataclass(frozen=True)
class Node:
    """A Ray node as a reason names it."""

    node_id: str
    ip: str = ""
    hostname: str = ""
    alive: bool | None = None  # None: not known to ray.nodes() (or Ray not connected)
    death: str = ""  # Ray's death reason, when dead and known

    def __str__(self) -> str:
        where = f"{self.hostname} ({self.ip})" if self.hostname and self.ip else self.hostname or self.ip
        text = f"{where}, node {self.node_id[:8]}" if where else f"node {self.node_id[:8]}"
        return f"{text}: {self.death}" if self.death else text


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it wraps: a RayTaskError's ``cause``, then ``__cause__`` / ``__context__``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        wrapped = getattr(current, "cause", None)
        current = wrapped if isinstance(wrapped, BaseException) else current.__cause__ or current.__context__


def _node_died(exc: BaseException) -> BaseException | None:
    from ray.exceptions import NodeDiedError

    return next((e for e in _causes(exc) if isinstance(e, NodeDiedError)), None)


def lost_node(exc: BaseException) -> Node | None:
    """The node a NodeDiedError (raised, or wrapped in a RayTaskError) names; None for other failures.

    The node's IP and id come from the message; hostname, liveness and death reason from
    ``ray.nodes()`` when the driver is connected.
    """
    died = _node_died(exc)
    if died is None:
        return None
    match = _IN_MESSAGE.search(str(died))
    if match is None:
        return Node(node_id="?")
    return lookup(match["id"]) or Node(node_id=match["id"], ip=match["ip"])


def lookup(node_id: str) -> Node | None:
    """The node of this id (hex, or a prefix of it) as ``ray.nodes()`` has it; None if Ray does not know it."""
    import ray

    if not node_id or not ray.is_initialized():
        return None
    try:
        nodes: list[dict[str, Any]] = ray.nodes()  # type: ignore[no-untyped-call]
    except Exception:  # the GCS went away too: name the node from what we have
        return None
    for n in nodes:
        if str(n.get("NodeID", "")).startswith(node_id.lower()):
            alive = bool(n.get("Alive"))
            return Node(
                node_id=str(n["NodeID"]),
                ip=str(n.get("NodeManagerAddress", "")),
                hostname=str(n.get("NodeManagerHostname", "")),
                alive=alive,
                death="" if alive else str(n.get("DeathReasonMessage") or "").strip(),
            )
    return None


def _first_line(exc: BaseException) -> str:
    """The failure in one line: a RayTaskError's cause (its own first line is only the proctitle)."""
    from ray.exceptions import RayTaskError

    where = ""
    if isinstance(exc, RayTaskError) and isinstance(exc.cause, BaseException):
        where = f" (in {exc.function_name}, pid {exc.pid} on {exc.ip})"
        exc = exc.cause
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return (f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__) + where


def _dead(node_id: str, wait_s: float) -> Node | None:
    """The node, if ``ray.nodes()`` has it dead within ``wait_s`` (Ray may learn of it after the task failed)."""
    deadline = time.monotonic() + wait_s
    while True:
        node = lookup(node_id)
        if node is None or node.alive is False or time.monotonic() >= deadline:
            return node if node is not None and node.alive is False else None
        time.sleep(0.1)


def task_failure_reason(exc: BaseException, node: str | None = None, wait_s: float = 2.0) -> str:
    """The ``reason`` of a trial whose Ray task raised ``exc`` on ``ray.get``.

    ``"node lost: <hostname> (<ip>), node <id prefix>[: <Ray's death reason>]"`` when the task's node
    died: named by a NodeDiedError, or ``node`` (the Ray node id the task started on, see
    :func:`started_on`) is dead in ``ray.nodes()`` within ``wait_s``. Otherwise
    ``"Ray task failed: <exception type>: <first line>"``.
    """
    lost = lost_node(exc)
    if lost is None and node:
        from ray.exceptions import LocalRayletDiedError, ObjectLostError, WorkerCrashedError

        # what the loss of a task's node looks like when Ray notices the worker's end first
        worker_gone = (WorkerCrashedError, LocalRayletDiedError, ObjectLostError)
        lost = _dead(node, wait_s if isinstance(exc, worker_gone) else 0.0)
    reason = f"{NODE_LOST}{lost}" if lost is not None else f"{TASK_FAILED}{_first_line(exc)}"
    return reason[:REASON_CHARS]


def _key(task_id: str) -> str:
    return f"{_KV_PREFIX}{task_id}"


@contextlib.contextmanager
def announced() -> Iterator[str]:
    """In a Ray task: record which node this task runs on (GCS key-value store) while the block runs,
    so the driver can name the node if the task dies with it; yields the node id. Removed again on a
    normal exit: only tasks that died leave a key, and :func:`started_on` removes those."""
    import ray
    from ray.experimental import internal_kv

    ctx = ray.get_runtime_context()
    node_id, task_id = ctx.get_node_id(), ctx.get_task_id()
    if not task_id:  # not in a task (the driver): nothing to announce
        yield node_id
        return
    internal_kv._internal_kv_put(_key(task_id), node_id, namespace=_KV_NAMESPACE)
    try:
        yield node_id
    finally:
        with contextlib.suppress(Exception):  # best effort: the key only names a node
            internal_kv._internal_kv_del(_key(task_id), namespace=_KV_NAMESPACE)


def started_on(ref: Any, forget: bool = True) -> str | None:
    """The node id the task of ``ref`` (an ObjectRef it returns) announced, or None; removes the key."""
    from ray.experimental import internal_kv

    try:
        key = _key(ref.task_id().hex())
        value = internal_kv._internal_kv_get(key, namespace=_KV_NAMESPACE)
        if value is not None and forget:
            internal_kv._internal_kv_del(key, namespace=_KV_NAMESPACE)
    except Exception:  # the GCS is unreachable: the exception alone has to do
        return None
    return value.decode() if isinstance(value, bytes) else None
