"""A batch on disk: what was asked (``batch.json``), what happened (``journal.jsonl``) and what
MLflow has (``mlflow.jsonl``).

The journal is the source of truth: every result is appended (flushed and fsynced) before anything
else sees it. MLflow is a copy of it, and which journal entries each tracking store holds is
explicit: ``mlflow.jsonl`` gets one line per entry logged (tracking URI, trial key, attempt, run id)
after the child run is complete. :meth:`Batch.unsynced` is what a store still lacks, so every run,
``--resume`` and ``harness sync`` can log exactly those, whatever interrupted the batch before.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.contract import FINAL, ContractError, TrialResult

EntryKey = tuple[str, int]  # (trial key, attempt): one journal entry


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
        """The latest result per trial key, in journal order."""
        latest: dict[str, TrialResult] = {}
        for r in self.entries():
            latest.pop(r.trial_key, None)
            latest[r.trial_key] = r
        return list(latest.values())

    def finished_keys(self) -> dict[str, TrialResult]:
        return {r.trial_key: r for r in self.results() if r.status in FINAL}

    # --- MLflow sync state ---------------------------------------------------------------------

    def synced(self, uri: str) -> dict[EntryKey, str]:
        """Journal entries the store at ``uri`` holds: (trial key, attempt) -> child run id."""
        out: dict[EntryKey, str] = {}
        if self.sync_path.exists():
            for line in self.sync_path.read_text().splitlines():
                try:
                    row = json.loads(line)
                    if row["uri"] == uri:
                        out[(row["trial_key"], int(row["attempt"]))] = str(row["run_id"])
                except (ValueError, KeyError, TypeError):
                    continue
        return out

    def mark_synced(self, uri: str, result: TrialResult, run_id: str) -> None:
        row = {"uri": uri, "trial_key": result.trial_key, "attempt": result.attempt, "run_id": run_id}
        _append_line(self.sync_path, json.dumps(row))

    def unsynced(self, uri: str) -> list[TrialResult]:
        """Journal entries not yet in the store at ``uri``, each once, in journal order."""
        done = self.synced(uri)
        pending: dict[EntryKey, TrialResult] = {}
        for r in self.entries():
            key = (r.trial_key, r.attempt)
            if key not in done:
                pending[key] = r  # a rewritten entry (same key and attempt): the last one counts
        return list(pending.values())


def latest_batch(root: Path) -> Batch | None:
    batches = sorted((p for p in root.glob("*/batch.json")), key=lambda p: p.stat().st_mtime)
    return Batch(root, batches[-1].parent.name) if batches else None
