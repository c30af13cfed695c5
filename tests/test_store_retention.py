"""Journal retention (``Store.prune``) and progress documents (``Store.report_progress``).

Run on every store (memory, SQLite with and without ``RETURNING``, PostgreSQL),
through the backends of ``test_stores``; the schema upgrade on the durable ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from test_stores import Backend, _backend, claim, create, save_of

from stepflow.errors import ConfigurationError, ProgressError, StaleWriteError, UnknownRunError
from stepflow.stores import JournalEntry, RunRecord, Store
from stepflow.stores import postgres as postgres_module
from stepflow.stores import sqlite as sqlite_module
from stepflow.stores.base import MAX_PROGRESS_BYTES, PruneResult, RunNotes


@pytest.fixture(params=["memory", "sqlite", "sqlite-no-returning", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    yield from _backend(request.param, request, tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    yield from _backend(request.param, request, tmp_path)


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


def finished(
    store: Store, run_id: str, status: Any = "completed", *, entries: int = 3, at: float = 10.0
) -> RunRecord:
    """A run with a journal of ``entries`` entries, finished (saved last) at ``at``."""
    run = store.create_run(
        run_id, "deploy/v1", "s0", input=None, status="running", wake_at=1.0, now=1.0, batch="b1"
    )
    for n in range(2, entries):
        run = store.save(save_of(run, batch=f"b{n}"), now=2.0)
    return store.save(save_of(run, status=status, wake_at=None, batch=f"b{entries}"), now=at)


def seqs(store: Store, run_id: str) -> list[int]:
    return [entry.seq for entry in store.history(run_id)]


# -- prune -----------------------------------------------------------------------------------


def test_prune_removes_the_journals_of_old_completed_runs_only(store: Store) -> None:
    old = finished(store, "old", entries=4, at=10.0)
    finished(store, "new", at=30.0)
    finished(store, "failed", "failed", at=10.0)
    create(store, "running", now=1.0)  # created long ago, still running
    result = store.prune(20.0, now=100.0)
    assert result == PruneResult(runs=1, journal_entries=4, runs_deleted=0, transactions=2)
    assert store.history("old") == []
    assert store.load("old") == old  # the run itself is whole: state, status, version
    assert store.notes("old") == RunNotes(pruned_through=4, pruned_at=100.0)
    assert seqs(store, "new") == [1, 2, 3]
    assert seqs(store, "failed") == [1, 2, 3]
    assert store.notes("new") == RunNotes()
    assert store.load("running").status == "running"


def test_prune_of_every_finished_status_never_touches_running_or_parked_runs(
    store: Store,
) -> None:
    for status in ("completed", "failed", "cancelled"):
        finished(store, status, status, at=10.0)
    # Every journal of an unfinished run is kept, however old.
    store.save(save_of(create(store, "running", now=1.0), batch="kept"), now=2.0)
    create(store, "parked", now=1.0)
    (lease,) = claim(store)  # "running" waits until 50
    assert store.park("parked", lease.token, until=5.0, reason="bad row")
    result = store.prune(1e12, now=100.0, status=None)
    assert (result.runs, result.journal_entries) == (3, 9)
    for status in ("completed", "failed", "cancelled"):
        assert store.history(status) == []
    assert seqs(store, "running") == [2]
    assert store.notes("running").pruned_through is None
    assert store.notes("parked").pruned_through is None
    assert store.load("parked").status == "parked"


def test_prune_with_runs_deletes_the_runs_too(store: Store) -> None:
    finished(store, "a", at=10.0)
    finished(store, "b", "cancelled", at=10.0)
    finished(store, "c", at=50.0)
    result = store.prune(20.0, now=100.0, status=None, runs=True)
    assert (result.runs, result.journal_entries, result.runs_deleted) == (2, 6, 2)
    for gone in ("a", "b"):
        with pytest.raises(UnknownRunError):
            store.load(gone)
        with pytest.raises(UnknownRunError):
            store.notes(gone)
    assert store.match_run_ids("") == ["c"]
    assert seqs(store, "c") == [1, 2, 3]
    # The ids are free again.
    create(store, "a", now=200.0)


def test_small_batches_take_more_transactions_and_remove_the_same(store: Store) -> None:
    for n in range(7):
        finished(store, f"r{n}", entries=5, at=10.0)
    result = store.prune(20.0, now=100.0, batch=2)
    assert (result.runs, result.journal_entries) == (7, 35)
    # Runs are marked 2 at a time (4 rounds); each round removes its 10 (or 5)
    # entries 2 at a time: 6 (or 3) deletes, the last one finding fewer than 2.
    assert result.transactions == 4 + 3 * 6 + 3
    assert all(store.history(f"r{n}") == [] for n in range(7))
    assert store.prune(20.0, now=101.0, batch=2) == PruneResult()


def test_a_second_prune_finds_nothing_more(store: Store) -> None:
    finished(store, "old", at=10.0)
    store.prune(20.0, now=100.0)
    assert store.prune(20.0, now=200.0) == PruneResult()
    assert store.notes("old").pruned_at == 100.0


def test_a_run_resumed_after_its_prune_keeps_its_new_entries(store: Store) -> None:
    run = finished(store, "r", "failed", entries=3, at=10.0)
    store.prune(20.0, now=100.0, status="failed")
    resumed = store.save(save_of(run, batch="resume"), now=110.0)
    again = store.save(save_of(resumed, status="failed", wake_at=None, batch="b5"), now=120.0)
    assert seqs(store, "r") == [4, 5]
    assert store.notes("r").pruned_through == 3
    assert store.prune(20.0, now=200.0, status="failed", runs=True) == PruneResult()
    assert store.load("r") == again
    result = store.prune(130.0, now=200.0, status="failed")
    assert (result.runs, result.journal_entries) == (1, 2)
    assert store.notes("r") == RunNotes(pruned_through=5, pruned_at=200.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"status": "running"}, r"only finished runs"),
        ({"status": "parked"}, r"only finished runs"),
        ({"batch": 0}, r"batch is a number of entries >= 1"),
        ({"batch": True}, r"batch is a number of entries >= 1"),
        ({"older_than": math.nan}, r"older_than is a time"),
        ({"older_than": math.inf}, r"older_than is a time"),
        ({"older_than": "30d"}, r"older_than is a time"),
    ],
)
def test_bad_prune_arguments_are_refused_and_change_nothing(
    store: Store, kwargs: dict[str, Any], message: str
) -> None:
    finished(store, "old", at=10.0)
    arguments: dict[str, Any] = {"older_than": 20.0, **kwargs}
    with pytest.raises(ConfigurationError, match=message):
        store.prune(arguments.pop("older_than"), now=100.0, **arguments)
    assert seqs(store, "old") == [1, 2, 3]
    assert store.notes("old") == RunNotes()


def test_an_interrupted_prune_is_finished_by_the_next(durable: Backend) -> None:
    store = durable.open()
    finished(store, "old", entries=4, at=10.0)
    # As if a prune had marked the run and died before removing its entries.
    durable.raw("UPDATE runs SET journal_pruned_seq = version, journal_pruned_at = 50")
    assert store.history("old") != []
    result = store.prune(20.0, now=100.0)
    assert (result.runs, result.journal_entries) == (1, 4)
    assert store.history("old") == []


def test_the_journals_of_many_runs_are_pruned_in_rounds(store: Store) -> None:
    for n in range(1203):
        store.create_run(
            f"r{n:05}", "f", "s", input=None, status="completed", wake_at=None, now=1.0, batch="b"
        )
    result = store.prune(2.0, now=3.0, batch=1000, runs=True)
    assert (result.runs, result.journal_entries, result.runs_deleted) == (1203, 1203, 1203)
    assert store.count() == 0


# -- progress ----------------------------------------------------------------------------------


def test_progress_is_kept_last_one_wins_and_never_moves_the_version(store: Store) -> None:
    run = create(store, "r1", now=1.0)
    assert store.notes("r1") == RunNotes()
    assert store.report_progress("r1", {"copied": 1, "of": 10, "unit": "GB"}, now=2.0)
    assert store.report_progress("r1", {"copied": 3, "of": 10, "unit": "GB"}, now=3.0)
    assert store.notes("r1") == RunNotes({"copied": 3, "of": 10, "unit": "GB"}, 3.0)
    assert store.load("r1") == run  # no version, state or lease change
    assert store.history("r1") == []  # not in the journal
    saved = store.save(save_of(run, batch="b2"), now=4.0)  # the CAS save still goes through
    assert saved.version == 2
    assert store.notes("r1").progress == {"copied": 3, "of": 10, "unit": "GB"}


def test_progress_under_a_lease_is_written_only_by_its_holder(store: Store) -> None:
    create(store, "r1", now=1.0)
    (lease,) = claim(store)
    assert store.report_progress("r1", "phase 1", now=21.0, token=lease.token)
    assert not store.report_progress("r1", "stale", now=22.0, token="not-the-token")
    assert store.notes("r1").progress == "phase 1"
    # A save under the lease is not disturbed by the progress write.
    store.save(save_of(lease.run, token=lease.token), now=23.0)
    assert store.notes("r1").progress == "phase 1"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"ratio": math.nan}, r"must be JSON data"),
        ([math.inf], r"must be JSON data"),
        ({1, 2}, r"must be JSON data"),
        (object(), r"must be JSON data"),
        ("x" * MAX_PROGRESS_BYTES, r"takes 4098 bytes of JSON, more than the 4096"),
        ("\ud800", r"lone surrogate"),
    ],
)
def test_a_bad_progress_document_is_refused_and_changes_nothing(
    store: Store, document: Any, message: str
) -> None:
    create(store, "r1", now=1.0)
    store.report_progress("r1", {"ok": True}, now=2.0)
    with pytest.raises(ProgressError, match=message):
        store.report_progress("r1", document, now=3.0)
    assert store.notes("r1") == RunNotes({"ok": True}, 2.0)


def test_progress_of_exactly_the_limit_is_kept(store: Store) -> None:
    create(store, "r1", now=1.0)
    document = "é" * ((MAX_PROGRESS_BYTES - 2) // 2)  # two bytes each, and two quotes
    assert store.report_progress("r1", document, now=2.0)
    assert store.notes("r1").progress == document


def test_progress_and_notes_of_an_unknown_run_are_refused(store: Store) -> None:
    with pytest.raises(UnknownRunError, match="'nope'"):
        store.report_progress("nope", 1, now=1.0)
    with pytest.raises(UnknownRunError, match="'nope'"):
        store.report_progress("nope", 1, now=1.0, token="t")
    with pytest.raises(UnknownRunError):
        store.notes("nope")


def test_a_stale_save_is_still_stale_after_a_progress_report(store: Store) -> None:
    run = create(store, "r1", now=1.0)
    store.save(save_of(run), now=2.0)
    store.report_progress("r1", 50, now=3.0)
    with pytest.raises(StaleWriteError):
        store.save(save_of(run), now=4.0)


# -- schema ------------------------------------------------------------------------------------


def test_a_database_of_the_schema_before_retention_is_upgraded_with_its_runs(
    durable: Backend,
) -> None:
    # The retention and progress step (then pending wakes, the inbox, deadlines, child
    # runs): undo all five, say so, reopen.
    module = sqlite_module if durable.kind == "sqlite" else postgres_module
    assert module._MIGRATIONS[-5] is module._RETENTION_AND_PROGRESS
    store = durable.open()
    finished(store, "old", at=10.0)
    store.close()
    durable.raw("DROP INDEX runs_retention")
    for column in ("progress", "progress_at", "journal_pruned_seq", "journal_pruned_at", "inbox"):
        durable.raw(f"ALTER TABLE runs DROP COLUMN {column}")
    durable.raw("ALTER TABLE runs DROP COLUMN woken_at")
    durable.raw("DROP TABLE inbox")
    durable.raw("ALTER TABLE runs DROP COLUMN deadline_at")
    durable.raw("DROP INDEX runs_parent")  # version 9's child runs
    durable.raw("ALTER TABLE runs DROP COLUMN parent_run_id")
    durable.raw("ALTER TABLE runs DROP COLUMN parent_command")
    before = module.SCHEMA_VERSION - 5
    durable.raw(f"UPDATE meta SET value = '{before}' WHERE key = 'schema_version'")
    again = durable.open()
    ((version,),) = durable.raw("SELECT value FROM meta WHERE key = 'schema_version'")
    assert int(version) == module.SCHEMA_VERSION
    assert again.notes("old") == RunNotes()
    assert again.history("old") == [
        JournalEntry("old", 1, 1.0, "b1"),
        JournalEntry("old", 2, 2.0, "b2"),
        JournalEntry("old", 3, 10.0, "b3"),
    ]
    assert again.prune(20.0, now=100.0).journal_entries == 3
