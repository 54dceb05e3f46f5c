"""A batch on disk: what was asked (``batch.json``), what happened (``journal.jsonl``) and what
MLflow has (``mlflow.jsonl``).

The journal is the source of truth: every process's result is appended (flushed and fsynced) before
anything else sees it. A cell (one trial key) is measured by ``repeats`` independent processes
(replicas); each replica's latest attempt counts. MLflow is a copy of it with one child run per
cell, and which state of each cell a tracking store holds is explicit: ``mlflow.jsonl`` gets one
line per cell logged (tracking URI, trial key, the digest of its processes, run id) after the child
run is complete. :meth:`Batch.unsynced` is what a store still lacks (cells it has not seen, or seen
with fewer or other processes), so every run, ``--resume`` and ``harness sync`` log exactly those,
whatever interrupted the batch before.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.contract import FINAL, ContractError, TrialResult

ReplicaKey = tuple[str, int]  # (trial key, replica): one of a cell's processes


def processes_digest(results: list[TrialResult]) -> str:
    """Which processes (replica, attempt) a cell's figures come from: changes when one is added or rerun."""
    ids = sorted(f"{r.replica}:{r.attempt}" for r in results)
    return hashlib.sha256(",".join(ids).encode()).hexdigest()[:16]


def new_batch_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def _append_line(path: Path, line: str) -> None:
    """Durably append one line; a crash mid-write leaves a line without its newline, which is closed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        torn = False
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        f.write((b"\n" if torn else b"") + line.encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


@dataclass
class Batch:
    """A batch's folder under the runs directory."""

    root: Path
    batch_id: str

    @property
    def dir(self) -> Path:
        return self.root / self.batch_id

    @property
    def journal(self) -> Path:
        return self.dir / "journal.jsonl"

    @property
    def meta_path(self) -> Path:
        return self.dir / "batch.json"

    @property
    def sync_path(self) -> Path:
        return self.dir / "mlflow.jsonl"

    def exists(self) -> bool:
        return self.meta_path.exists()

    def meta(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.meta_path.read_text())
        return data

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.meta_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(meta, indent=2))
        tmp.replace(self.meta_path)

    def append(self, result: TrialResult) -> None:
        """Durably append one result (flushed and fsynced before MLflow sees it)."""
        _append_line(self.journal, result.to_json())

    def entries(self) -> Iterator[TrialResult]:
        """Every readable journal entry, every attempt, in journal order (torn or foreign lines skipped)."""
        if not self.journal.exists():
            return
        for line in self.journal.read_text().splitlines():
            try:
                yield TrialResult.from_json(line)
            except ContractError:
                continue

    def results(self) -> list[TrialResult]:
        """The latest attempt of every process (trial key, replica), in journal order."""
        latest: dict[ReplicaKey, TrialResult] = {}
        for r in self.entries():
            key = (r.trial_key, r.replica)
            latest.pop(key, None)
            latest[key] = r
        return list(latest.values())

    def finished(self) -> dict[ReplicaKey, TrialResult]:
        """Processes that need not run again (statuses in ``FINAL``)."""
        return {(r.trial_key, r.replica): r for r in self.results() if r.status in FINAL}

    # --- MLflow sync state (one child run per cell) --------------------------------------------

    def synced(self, uri: str) -> dict[str, tuple[str, str]]:
        """Cells the store at ``uri`` holds: trial key -> (processes digest, child run id)."""
        out: dict[str, tuple[str, str]] = {}
        if self.sync_path.exists():
            for line in self.sync_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    if row["uri"] == uri:
                        out[row["trial_key"]] = (str(row["digest"]), str(row["run_id"]))
                except (ValueError, KeyError, TypeError):
                    continue
        return out

    def mark_synced(self, uri: str, cell: list[TrialResult], run_id: str) -> None:
        row = {"uri": uri, "trial_key": cell[0].trial_key, "digest": processes_digest(cell), "run_id": run_id}
        _append_line(self.sync_path, json.dumps(row))

    def unsynced(
        self, uri: str, keys: set[str] | None = None, results: list[TrialResult] | None = None
    ) -> list[list[TrialResult]]:
        """Cells (each its processes) that the store at ``uri`` lacks in their current state, in journal order;
        ``keys``: only these cells; ``results``: the latest results when the caller holds them."""
        done = self.synced(uri)
        return [
            cell
            for key, cell in group_cells(self.results() if results is None else results).items()
            if (keys is None or key in keys) and done.get(key, ("", ""))[0] != processes_digest(cell)
        ]


def group_cells(results: list[TrialResult]) -> dict[str, list[TrialResult]]:
    """Results grouped by cell (trial key), cells in order of first appearance, processes by replica."""
    cells: dict[str, list[TrialResult]] = {}
    for r in results:
        cells.setdefault(r.trial_key, []).append(r)
    return {k: sorted(v, key=lambda r: r.replica) for k, v in cells.items()}


def latest_batch(root: Path) -> Batch | None:
    batches = sorted((p for p in root.glob("*/batch.json")), key=lambda p: p.stat().st_mtime)
    return Batch(root, batches[-1].parent.name) if batches else None
