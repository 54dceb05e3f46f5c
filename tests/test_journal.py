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
    assert batch.finished() == {}
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
    assert set(batch.finished()) == {(a.trial_key, 0), (b.trial_key, 0)}


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
def test_finished_holds_only_final_statuses(batch: journal.Batch, status: str) -> None:
    r = result(8, status=status)
    batch.append(r)
    finished = batch.finished()
    if status in FINAL:
        assert finished == {(r.trial_key, 0): r}
    else:
        assert finished == {}


def test_finished_follows_the_latest_attempt_of_each_replica(batch: journal.Batch) -> None:
    ok_then_crash = [result(8, status="ok"), result(8, status="crash", attempt=2)]
    crash_then_ok = [result(16, status="timeout"), result(16, status="ok", attempt=2)]
    for r in (*ok_then_crash, *crash_then_ok):
        batch.append(r)
    key = crash_then_ok[0].trial_key
    assert set(batch.finished()) == {(key, 0)}
    assert batch.finished()[(key, 0)].attempt == 2


def test_replicas_of_a_cell_are_separate_processes(batch: journal.Batch) -> None:
    r0, r1, r1_again = result(8, replica=0), result(8, replica=1, status="crash"), result(8, replica=1, attempt=2)
    for r in (r0, r1, r1_again):
        batch.append(r)
    assert batch.results() == [r0, r1_again]
    assert set(batch.finished()) == {(r0.trial_key, 0), (r0.trial_key, 1)}
    assert journal.group_cells(batch.results()) == {r0.trial_key: [r0, r1_again]}


def test_the_processes_digest_changes_when_a_process_is_added_or_rerun() -> None:
    r0, r1 = result(8, replica=0), result(8, replica=1)
    one, two = journal.processes_digest([r0]), journal.processes_digest([r0, r1])
    assert one != two
    assert journal.processes_digest([r1, r0]) == two  # order does not matter
    assert journal.processes_digest([r0, result(8, replica=1, attempt=2)]) != two


def test_final_statuses_are_the_deterministic_ones() -> None:
    assert set(FINAL) == {"ok", "unsupported", "diverged"}


def test_batch_meta_round_trip(batch: journal.Batch) -> None:
    meta = {"batch_id": batch.batch_id, "suite": "smoke", "argv": ["harness", "run"]}
    batch.write_meta(meta)
    assert batch.exists()
    assert batch.meta() == meta
    assert not list(batch.dir.glob("*.tmp"))
    assert os.path.basename(batch.meta_path) == "batch.json"


def test_unsynced_is_every_cell_the_store_lacks_in_its_current_state(batch: journal.Batch) -> None:
    a0, b0 = result(8), result(16)
    for r in (a0, b0):
        batch.append(r)
    uri = "sqlite:///a.db"
    assert batch.unsynced(uri) == [[a0], [b0]]  # one MLflow run per cell
    batch.mark_synced(uri, [a0], "run-1")
    assert batch.unsynced(uri) == [[b0]]
    assert batch.synced(uri) == {a0.trial_key: (journal.processes_digest([a0]), "run-1")}
    assert batch.unsynced("http://127.0.0.1:5000") == [[a0], [b0]]  # per store
    assert batch.unsynced(uri, {a0.trial_key}) == []  # only the cells asked for
    a1 = result(8, replica=1)
    batch.append(a1)  # a process added (resume, --until-stable): the cell's run is out of date
    assert batch.unsynced(uri) == [[a0, a1], [b0]]
    batch.mark_synced(uri, [a0, a1], "run-2")
    batch.mark_synced(uri, [b0], "run-3")
    assert batch.unsynced(uri) == []


def test_a_torn_sync_line_counts_as_not_synced(batch: journal.Batch) -> None:
    a, b = result(8), result(16)
    batch.append(a)
    batch.append(b)
    batch.mark_synced("u", [a], "run-1")
    with open(batch.sync_path, "a") as f:
        f.write('{"uri": "u", "trial_key": "')
    assert batch.unsynced("u") == [[b]]
    batch.mark_synced("u", [b], "run-2")  # appended after the torn line, on its own line
    assert batch.unsynced("u") == []
