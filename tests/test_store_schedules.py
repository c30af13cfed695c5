"""The schedules table: the same contract on every store (memory, SQLite, PostgreSQL).

Run through the backends of ``test_stores``; the upgrade tests on the durable ones.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import attrs
import pytest
from test_stores import Backend, _backend, create

import stepflow
from stepflow import FakeClock, Schedule
from stepflow.errors import (
    ScheduleError,
    ScheduleExistsError,
    StaleWriteError,
    UnknownScheduleError,
)
from stepflow.runtime import Scheduler
from stepflow.stores import ScheduleRecord, SQLiteStore, Store
from stepflow.stores import sqlite as sqlite_module


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    for backend in _backend(request.param, request, tmp_path):
        yield backend.open()


@pytest.fixture(params=["sqlite", "postgres"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _backend(request.param, request, tmp_path)


def record(name: str = "nightly", **changes: object) -> ScheduleRecord:
    base = ScheduleRecord(
        name=name,
        flow="report/v1",
        cron="0 9 * * *",
        timezone="Europe/Paris",
        input={"to": ["ops"], "n": 1.5},
        overlap="skip",
        catch_up=3600.0,
        paused=False,
        next_fire_at=1_000.0,
    )
    return attrs.evolve(base, **changes)


def test_a_created_schedule_reads_back_whole_at_version_1(store: Store) -> None:
    made = store.create_schedule(record(version=7, created_at=0.0), now=5.0)
    assert made == record(version=1, created_at=5.0, updated_at=5.0)
    assert store.load_schedule("nightly") == made
    assert store.schedules() == [made]


def test_a_taken_name_is_refused_and_the_first_schedule_kept(store: Store) -> None:
    store.create_schedule(record(), now=1.0)
    with pytest.raises(ScheduleExistsError, match="'nightly' already exists"):
        store.create_schedule(record(cron="* * * * *"), now=2.0)
    assert store.load_schedule("nightly").cron == "0 9 * * *"


def test_save_is_a_compare_and_swap_on_the_version(store: Store) -> None:
    made = store.create_schedule(record(), now=1.0)
    moved = attrs.evolve(made, next_fire_at=2_000.0, last_run_id="nightly/x", buffered_at=9.0)
    saved = store.save_schedule(moved, expected_version=1, now=3.0)
    assert saved == attrs.evolve(moved, version=2, updated_at=3.0)
    assert store.load_schedule("nightly") == saved
    with pytest.raises(StaleWriteError, match="expected version 1, but the store holds version 2"):
        store.save_schedule(attrs.evolve(made, paused=True), expected_version=1, now=4.0)
    assert store.load_schedule("nightly") == saved


def test_unknown_schedules_raise_unknown_schedule_error(store: Store) -> None:
    with pytest.raises(UnknownScheduleError, match="no schedule is named 'gone'"):
        store.load_schedule("gone")
    with pytest.raises(UnknownScheduleError):
        store.save_schedule(record("gone"), expected_version=1, now=1.0)
    with pytest.raises(UnknownScheduleError):
        store.delete_schedule("gone")
    assert isinstance(UnknownScheduleError("m", "gone"), LookupError)


def test_delete_removes_the_schedule_and_keeps_its_runs(store: Store) -> None:
    store.create_schedule(record(), now=1.0)
    create(store, "nightly/2026-01-01T08:00:00Z")
    store.delete_schedule("nightly")
    assert store.schedules() == []
    assert store.load("nightly/2026-01-01T08:00:00Z").run_id == "nightly/2026-01-01T08:00:00Z"


def test_schedules_are_listed_by_name_and_filtered_by_flow(store: Store) -> None:
    store.create_schedule(record("b", flow="x/v1"), now=1.0)
    store.create_schedule(record("a", flow="y/v1", paused=True, catch_up=None), now=1.0)
    assert [s.name for s in store.schedules()] == ["a", "b"]
    assert [s.name for s in store.schedules(flows=["x/v1"])] == ["b"]
    assert store.schedules(flows=[]) == []
    (a,) = store.schedules(flows={"y/v1"})
    assert a.paused is True
    assert a.catch_up is None


def test_a_version_3_database_is_upgraded_with_schedules_and_its_runs(durable: Backend) -> None:
    store = durable.open()
    create(store, "old")
    store.close()
    durable.raw("DROP TABLE schedules")  # version 4's, and version 5's retention columns:
    durable.raw("DROP INDEX runs_retention")
    for column in ("progress", "progress_at", "journal_pruned_seq", "journal_pruned_at"):
        durable.raw(f"ALTER TABLE runs DROP COLUMN {column}")
    durable.raw("ALTER TABLE runs DROP COLUMN woken_at")  # version 6's
    durable.raw("DROP TABLE inbox")  # and version 7's inbox
    durable.raw("ALTER TABLE runs DROP COLUMN inbox")
    durable.raw("ALTER TABLE runs DROP COLUMN deadline_at")  # version 8's
    durable.raw("DROP INDEX runs_parent")  # and version 9's
    durable.raw("ALTER TABLE runs DROP COLUMN parent_run_id")
    durable.raw("ALTER TABLE runs DROP COLUMN parent_command")
    durable.raw("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    again = durable.open()
    ((version,),) = durable.raw("SELECT value FROM meta WHERE key = 'schema_version'")
    assert version == "9"
    assert again.load("old").run_id == "old"
    assert again.create_schedule(record(), now=1.0).version == 1


def test_sqlite_creates_the_latest_version_with_schedules_from_nothing(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with closing(SQLiteStore(path)):
        pass
    with closing(sqlite3.connect(path)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        assert db.execute("SELECT value FROM meta").fetchall() == [("9",)]
    assert "schedules" in tables
    assert sqlite_module.SCHEMA_VERSION == 9


def test_a_schedule_row_whose_input_is_not_json_is_marked_and_stops_nobody(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def send(ctx: object) -> str:
        return "sent"

    flow = stepflow.new(stepflow.named("report/v1").do("send", send))
    path = tmp_path / "runs.db"
    with closing(SQLiteStore(path)) as store:
        for name in ("bad", "good"):
            stepflow.add_schedule(store, Schedule(name, flow, cron="* * * * *"), clock=FakeClock(0))
        with closing(sqlite3.connect(path)) as db, db:
            db.execute("UPDATE schedules SET input = '{nope' WHERE name = 'bad'")
        bad, good = store.schedules()
        assert bad.unreadable is not None
        assert "schedule 'bad' cannot be read: its input is not valid JSON" in bad.unreadable
        assert good.unreadable is None
        looker = Scheduler(store, {flow.name: flow}, (), clock=FakeClock(60), interval=1.0)
        with caplog.at_level("ERROR", "stepflow.schedules"):
            looker.look(60.0)
        assert [run.run_id for run in store.runs()] == ["good/1970-01-01T00:01:00Z"]
        assert "this worker skips it" in caplog.text
        with pytest.raises(ScheduleError, match="not valid JSON"):
            stepflow.pause_schedule(store, "bad")
        store.delete_schedule("bad")  # the way out: delete it and add it again
        assert [s.name for s in store.schedules()] == ["good"]
