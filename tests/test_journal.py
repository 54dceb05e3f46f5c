"""Unit tests for harness.journal: the durable results journal, batch metadata and the MLflow sync state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness import journal
from harness.contract import FINAL, TrialResult, TrialSpec


def result(batch_size: int, status: str = "ok", **extra: object) -> TrialResult:
    spec = TrialSpec(architecture="mlp_shallow", framework="torch", mode="infer", batch_size=batch_size, threads=1)
    return TrialResult.from_dict({"trial_key": spec.trial_key, "spec": spec.to_dict(), "status": status} | extra)


@pytest.fixture
def batch(tmp_path: Path) -> journal.Batch:
    return journal.Batch(tmp_path / "runs", "20260101-000000-abcd")


def test_empty_journal_has_no_results(batch: journal.Batch) -> None:
    assert batch.results() == []
    assert batch.finished_keys() == {}
    assert not batch.exists()


def test_appended_results_are_read_back_in_order(batch: journal.Batch) -> None:
    a, b = result(8, metrics={"x": 1.0}), result(16, status="crash", reason="boom")
    batch.append(a)
    batch.append(b)
    assert batch.journal == batch.dir / "journal.jsonl"
    assert len(batch.journal.read_text().splitlines()) == 2
    assert batch.results() == [a, b]


def test_a_newer_result_replaces_the_older_one(batch: journal.Batch) -> None:
    old, other, new = result(8, status="crash"), result(16), result(8, status="ok", attempt=2)
    for r in (old, other, new):
        batch.append(r)
    results = batch.results()
    assert results == [other, new]  # latest per key, placed where it was last written
    assert [r.trial_key for r in results].count(old.trial_key) == 1


def test_a_torn_last_line_is_ignored(batch: journal.Batch) -> None:
    a, b = result(8), result(16)
    batch.append(a)
    batch.append(b)
    torn = result(32).to_json()
    with open(batch.journal, "a") as f:
        f.write(torn[: len(torn) // 2])
    assert batch.results() == [a, b]
    assert set(batch.finished_keys()) == {a.trial_key, b.trial_key}


def test_blank_and_garbage_lines_are_skipped(batch: journal.Batch) -> None:
    a = result(8)
    batch.dir.mkdir(parents=True)
    batch.journal.write_text("\n" + "not json\n" + a.to_json() + "\n" + '{"trial_key": "x"}\n')
    assert batch.results() == [a]


def test_a_result_appended_after_a_torn_line_is_kept(batch: journal.Batch) -> None:
    a, b = result(8), result(16)
    batch.append(a)
    torn = result(32).to_json()
    with open(batch.journal, "a") as f:
        f.write(torn[: len(torn) // 2])
    batch.append(b)
    assert batch.results() == [a, b]


@pytest.mark.parametrize("status", ["ok", "failed", "timeout", "oom", "crash", "unsupported", "diverged"])
def test_finished_keys_holds_only_final_statuses(batch: journal.Batch, status: str) -> None:
    r = result(8, status=status)
    batch.append(r)
    finished = batch.finished_keys()
    if status in FINAL:
        assert finished == {r.trial_key: r}
    else:
        assert finished == {}


def test_finished_keys_follow_the_latest_result(batch: journal.Batch) -> None:
    ok_then_crash = [result(8, status="ok"), result(8, status="crash", attempt=2)]
    crash_then_ok = [result(16, status="timeout"), result(16, status="ok", attempt=2)]
    for r in (*ok_then_crash, *crash_then_ok):
        batch.append(r)
    assert set(batch.finished_keys()) == {crash_then_ok[0].trial_key}
    assert batch.finished_keys()[crash_then_ok[0].trial_key].attempt == 2


def test_final_statuses_are_the_deterministic_ones() -> None:
    assert set(FINAL) == {"ok", "unsupported", "diverged"}


def test_batch_meta_round_trip(batch: journal.Batch) -> None:
    meta = {"batch_id": batch.batch_id, "suite": "smoke", "argv": ["harness", "run"]}
    batch.write_meta(meta)
    assert batch.exists()
    assert batch.meta() == meta
    assert not list(batch.dir.glob("*.tmp"))
    assert os.path.basename(batch.meta_path) == "batch.json"


def test_unsynced_is_every_entry_the_store_lacks_each_once(batch: journal.Batch) -> None:
    crash, ok, other = result(8, status="crash"), result(8, status="ok", attempt=2), result(16)
    for r in (crash, ok, other):
        batch.append(r)
    uri = "sqlite:///a.db"
    assert batch.unsynced(uri) == [crash, ok, other]  # every attempt is its own MLflow run
    batch.mark_synced(uri, crash, "run-1")
    batch.mark_synced(uri, other, "run-3")
    assert batch.unsynced(uri) == [ok]
    assert batch.synced(uri) == {(crash.trial_key, 1): "run-1", (other.trial_key, 1): "run-3"}
    assert batch.unsynced("http://127.0.0.1:5000") == [crash, ok, other]  # per store
    batch.mark_synced(uri, ok, "run-2")
    assert batch.unsynced(uri) == []


def test_a_torn_sync_line_counts_as_not_synced(batch: journal.Batch) -> None:
    a, b = result(8), result(16)
    batch.append(a)
    batch.append(b)
    batch.mark_synced("u", a, "run-1")
    with open(batch.sync_path, "a") as f:
        f.write('{"uri": "u", "trial_key": "')
    assert batch.unsynced("u") == [b]
    batch.mark_synced("u", b, "run-2")  # appended after the torn line, on its own line
    assert batch.unsynced("u") == []
