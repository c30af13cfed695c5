"""Schedules in the store: one row per schedule, the same contract in every backend.

A schedule's row holds its definition (flow, cron expression, timezone, input,
overlap and catch-up policies), whether it is paused, and its cursor: the next
fire time not handled yet (``next_fire_at``), the run its last fire time started
(``last_run_id``) and the fire time waiting for that run to end (``buffered_at``,
overlap ``"buffer_one"``). Every write is a compare-and-swap on ``version``, so
of several workers handling the same fire time, one moves the cursor and the
others find it moved (:class:`~stepflow.errors.StaleWriteError`).

What makes a fire time start at most one run is not this row but the run's id,
``<schedule>/<fire time>``, unique in the store: see
:mod:`stepflow.runtime.schedules`.

Each backend gets its schedule operations from a mixin here
(:class:`MemorySchedules`, :class:`SQLiteSchedules`, :class:`PostgresSchedules`),
and its table from the migration step :data:`SQLITE_MIGRATION` or
:data:`POSTGRES_MIGRATION` (schema version 4).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Collection, Iterator
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from stepflow.errors import (
    ScheduleExistsError,
    StaleWriteError,
    UnknownScheduleError,
)

if TYPE_CHECKING:
    import psycopg

__all__ = [
    "POSTGRES_MIGRATION",
    "SCHEDULE_COLUMNS",
    "SQLITE_MIGRATION",
    "MemorySchedules",
    "PostgresSchedules",
    "SQLiteSchedules",
    "ScheduleRecord",
    "ScheduleStore",
]


@attrs.frozen
class ScheduleRecord:
    """One schedule as stored (see :class:`stepflow.Schedule` for its definition).

    Attributes:
        name: The schedule's name, unique in the store; its runs' ids start with it.
        flow: The name of the flow it starts runs of (``"report/v1"``).
        cron: The cron expression.
        timezone: The IANA timezone the expression is read in.
        input: The JSON input of every run it starts.
        overlap: ``"skip"``, ``"allow"`` or ``"buffer_one"``.
        catch_up: How far back missed fire times are still started, in seconds
            (``None``: only the most recent one).
        paused: Whether it is paused (no run starts; resuming moves
            ``next_fire_at`` to the next fire time from then).
        next_fire_at: The earliest fire time not handled yet (seconds since the epoch).
        last_run_id: The run started by the last fire time handled, or ``None``.
        buffered_at: A fire time waiting for ``last_run_id`` to end, or ``None``.
        version: Compare-and-swap version: 1 when created, +1 on every save.
        created_at: When it was added.
        updated_at: When it was last saved.
        unreadable: Why the row cannot be used (its input is not JSON: a row
            edited by hand), or ``None``. Not a column; never part of equality.
            Workers skip such a schedule (logged); the others go on.

    """

    name: str
    flow: str
    cron: str
    timezone: str
    input: Any
    overlap: str
    catch_up: float | None
    paused: bool
    next_fire_at: float
    last_run_id: str | None = None
    buffered_at: float | None = None
    version: int = 1
    created_at: float = 0.0
    updated_at: float = 0.0
    unreadable: str | None = attrs.field(default=None, eq=False)


#: The columns of a schedule's row, in :class:`ScheduleRecord`'s order.
SCHEDULE_COLUMNS: tuple[str, ...] = tuple(
    field.name for field in attrs.fields(ScheduleRecord) if field.name != "unreadable"
)
_COLUMNS = ", ".join(SCHEDULE_COLUMNS)


class ScheduleStore(Protocol):
    """The schedule operations every :class:`~stepflow.stores.base.Store` implements."""

    def create_schedule(self, record: ScheduleRecord, *, now: float) -> ScheduleRecord:
        """Add a schedule at version 1 and return it.

        Raises:
            ScheduleExistsError: a schedule has this name.

        """
        ...

    def load_schedule(self, name: str) -> ScheduleRecord:
        """Return the schedule as stored now.

        Raises:
            UnknownScheduleError: no schedule has this name.

        """
        ...

    def save_schedule(
        self, record: ScheduleRecord, *, expected_version: int, now: float
    ) -> ScheduleRecord:
        """Write every column of ``record`` but its name and creation time; return the new row.

        A compare-and-swap: it succeeds only if the stored version is
        ``expected_version``, and the new version is one more.

        Raises:
            StaleWriteError: the version moved on; nothing was written.
            UnknownScheduleError: no schedule has this name.

        """
        ...

    def delete_schedule(self, name: str) -> None:
        """Remove a schedule (the runs it started stay).

        Raises:
            UnknownScheduleError: no schedule has this name.

        """
        ...

    def schedules(self, *, flows: Collection[str] | None = None) -> list[ScheduleRecord]:
        """Return the schedules (of ``flows``), by name."""
        ...


def dump_input(value: Any) -> str:
    """Return a schedule's input as JSON text (as :func:`stepflow.stores._rules.dump_input`)."""
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def _unknown(name: str) -> UnknownScheduleError:
    return UnknownScheduleError(
        f"no schedule is named {name!r} in this store: 'stepflow schedule list' lists them",
        name,
    )


def _exists(name: str) -> ScheduleExistsError:
    return ScheduleExistsError(
        f"a schedule named {name!r} already exists: choose another name, or delete it first "
        "('stepflow schedule delete')",
        name,
    )


def _stale(name: str, expected: int, found: int) -> StaleWriteError:
    return StaleWriteError(
        f"cannot save schedule {name!r}: expected version {expected}, but the store holds "
        f"version {found} (another worker or command saved it first); reload it",
        name,
    )


def _with_input(record: ScheduleRecord) -> ScheduleRecord:
    """Return ``record`` with its input (JSON text) decoded, or marked ``unreadable``."""
    try:
        return attrs.evolve(record, input=json.loads(record.input))
    except (ValueError, TypeError) as exc:
        reason = (
            f"schedule {record.name!r} cannot be read: its input is not valid JSON ({exc}); "
            "delete it and add it again"
        )
        return attrs.evolve(record, input=None, unreadable=reason)


def _filtered(
    records: Iterator[ScheduleRecord], flows: Collection[str] | None
) -> list[ScheduleRecord]:
    chosen = (r for r in records if flows is None or r.flow in flows)
    return sorted(chosen, key=lambda r: r.name)


class MemorySchedules:
    """Schedule operations for :class:`~stepflow.stores.memory.MemoryStore`."""

    _lock: threading.Lock

    @property
    def _schedule_rows(self) -> dict[str, ScheduleRecord]:
        # Made on first use: the store's own __init__ need not know of schedules.
        rows: dict[str, ScheduleRecord] | None = self.__dict__.get("_schedule_dict")
        if rows is None:
            rows = self.__dict__.setdefault("_schedule_dict", {})
        return rows

    @staticmethod
    def _schedule_out(record: ScheduleRecord) -> ScheduleRecord:
        return _with_input(record)

    def create_schedule(self, record: ScheduleRecord, *, now: float) -> ScheduleRecord:
        """Add a schedule (see :meth:`ScheduleStore.create_schedule`)."""
        row = attrs.evolve(
            record, input=dump_input(record.input), version=1, created_at=now, updated_at=now
        )
        with self._lock:
            if record.name in self._schedule_rows:
                raise _exists(record.name)
            self._schedule_rows[record.name] = row
        return self._schedule_out(row)

    def load_schedule(self, name: str) -> ScheduleRecord:
        """Return a schedule (see :meth:`ScheduleStore.load_schedule`)."""
        with self._lock:
            row = self._schedule_rows.get(name)
        if row is None:
            raise _unknown(name)
        return self._schedule_out(row)

    def save_schedule(
        self, record: ScheduleRecord, *, expected_version: int, now: float
    ) -> ScheduleRecord:
        """Compare-and-swap a schedule (see :meth:`ScheduleStore.save_schedule`)."""
        text = dump_input(record.input)
        with self._lock:
            row = self._schedule_rows.get(record.name)
            if row is None:
                raise _unknown(record.name)
            if row.version != expected_version:
                raise _stale(record.name, expected_version, row.version)
            new = attrs.evolve(
                record,
                input=text,
                unreadable=None,
                version=row.version + 1,
                created_at=row.created_at,
                updated_at=now,
            )
            self._schedule_rows[record.name] = new
        return self._schedule_out(new)

    def delete_schedule(self, name: str) -> None:
        """Remove a schedule (see :meth:`ScheduleStore.delete_schedule`)."""
        with self._lock:
            if self._schedule_rows.pop(name, None) is None:
                raise _unknown(name)

    def schedules(self, *, flows: Collection[str] | None = None) -> list[ScheduleRecord]:
        """Return the schedules, by name (see :meth:`ScheduleStore.schedules`)."""
        with self._lock:
            rows = list(self._schedule_rows.values())
        return [self._schedule_out(row) for row in _filtered(iter(rows), flows)]


#: Schema version 4 of :class:`~stepflow.stores.sqlite.SQLiteStore`: the schedules table.
SQLITE_MIGRATION: tuple[str, ...] = (
    """CREATE TABLE schedules (
        name TEXT PRIMARY KEY,
        flow TEXT NOT NULL,
        cron TEXT NOT NULL,
        timezone TEXT NOT NULL,
        input TEXT NOT NULL,
        overlap TEXT NOT NULL,
        catch_up REAL,
        paused INTEGER NOT NULL,
        next_fire_at REAL NOT NULL,
        last_run_id TEXT,
        buffered_at REAL,
        version INTEGER NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    )""",
)

#: Schema version 4 of :class:`~stepflow.stores.postgres.PostgresStore`: the schedules table.
POSTGRES_MIGRATION: tuple[str, ...] = (
    """CREATE TABLE schedules (
        name text PRIMARY KEY,
        flow text NOT NULL,
        cron text NOT NULL,
        timezone text NOT NULL,
        input jsonb NOT NULL,
        overlap text NOT NULL,
        catch_up double precision,
        paused boolean NOT NULL,
        next_fire_at double precision NOT NULL,
        last_run_id text,
        buffered_at double precision,
        version bigint NOT NULL,
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL
    )""",
)

# The columns a save writes (all but name, version and created_at), in record order.
_SAVED = tuple(c for c in SCHEDULE_COLUMNS if c not in ("name", "version", "created_at"))


def _row(record: ScheduleRecord, text: str) -> list[Any]:
    """Return ``record``'s column values, its input as the JSON ``text``."""
    values = [getattr(record, column) for column in SCHEDULE_COLUMNS]
    values[SCHEDULE_COLUMNS.index("input")] = text
    return values


def _sqlite_record(row: Any) -> ScheduleRecord:
    values = list(row)
    values[7] = bool(values[7])
    return _with_input(ScheduleRecord(*values))


class SQLiteSchedules:
    """Schedule operations for :class:`~stepflow.stores.sqlite.SQLiteStore`."""

    if TYPE_CHECKING:

        def _transaction(
            self, *, write: bool = True
        ) -> AbstractContextManager[sqlite3.Connection]: ...

    def create_schedule(self, record: ScheduleRecord, *, now: float) -> ScheduleRecord:
        """Add a schedule (see :meth:`ScheduleStore.create_schedule`)."""
        row = attrs.evolve(record, version=1, created_at=now, updated_at=now)
        values = _row(row, dump_input(record.input))
        with self._transaction() as db:
            inserted = db.execute(
                f"INSERT INTO schedules ({_COLUMNS}) VALUES ({', '.join('?' * len(values))})"
                " ON CONFLICT (name) DO NOTHING",
                values,
            ).rowcount
        if not inserted:
            raise _exists(record.name)
        return attrs.evolve(row, input=json.loads(values[4]))

    def load_schedule(self, name: str) -> ScheduleRecord:
        """Return a schedule (see :meth:`ScheduleStore.load_schedule`)."""
        with self._transaction(write=False) as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM schedules WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise _unknown(name)
        return _sqlite_record(row)

    def save_schedule(
        self, record: ScheduleRecord, *, expected_version: int, now: float
    ) -> ScheduleRecord:
        """Compare-and-swap a schedule (see :meth:`ScheduleStore.save_schedule`)."""
        new = attrs.evolve(record, updated_at=now)
        values = dict(zip(SCHEDULE_COLUMNS, _row(new, dump_input(record.input)), strict=True))
        assignments = ", ".join(f"{column} = :{column}" for column in _SAVED)
        with self._transaction() as db:
            found = db.execute(
                "SELECT version FROM schedules WHERE name = ?", (record.name,)
            ).fetchone()
            if found is None:
                raise _unknown(record.name)
            if found[0] != expected_version:
                raise _stale(record.name, expected_version, int(found[0]))
            # BEGIN IMMEDIATE holds the write lock: the version cannot move before this.
            db.execute(
                f"UPDATE schedules SET {assignments}, version = version + 1 WHERE name = :name",
                values,
            )
            row = db.execute(
                f"SELECT {_COLUMNS} FROM schedules WHERE name = ?", (record.name,)
            ).fetchone()
        return _sqlite_record(row)

    def delete_schedule(self, name: str) -> None:
        """Remove a schedule (see :meth:`ScheduleStore.delete_schedule`)."""
        with self._transaction() as db:
            deleted = db.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount
        if not deleted:
            raise _unknown(name)

    def schedules(self, *, flows: Collection[str] | None = None) -> list[ScheduleRecord]:
        """Return the schedules, by name (see :meth:`ScheduleStore.schedules`)."""
        with self._transaction(write=False) as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM schedules ORDER BY name").fetchall()
        return _filtered((_sqlite_record(row) for row in rows), flows)


def _postgres_record(row: Any) -> ScheduleRecord:
    return ScheduleRecord(*row)


class PostgresSchedules:
    """Schedule operations for :class:`~stepflow.stores.postgres.PostgresStore`."""

    if TYPE_CHECKING:

        def _transaction(
            self, *, autocommit: bool = False
        ) -> AbstractContextManager[psycopg.Cursor[tuple[Any, ...]]]: ...

    def create_schedule(self, record: ScheduleRecord, *, now: float) -> ScheduleRecord:
        """Add a schedule (see :meth:`ScheduleStore.create_schedule`)."""
        row = attrs.evolve(record, version=1, created_at=now, updated_at=now)
        values = _row(row, dump_input(record.input))
        placeholders = ", ".join(
            "%s::jsonb" if column == "input" else "%s" for column in SCHEDULE_COLUMNS
        )
        with self._transaction() as cur:
            cur.execute(
                f"INSERT INTO schedules ({_COLUMNS}) VALUES ({placeholders})"
                f" ON CONFLICT (name) DO NOTHING RETURNING {_COLUMNS}",
                values,
            )
            inserted = cur.fetchone()
        if inserted is None:
            raise _exists(record.name)
        return _postgres_record(inserted)

    def load_schedule(self, name: str) -> ScheduleRecord:
        """Return a schedule (see :meth:`ScheduleStore.load_schedule`)."""
        with self._transaction() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM schedules WHERE name = %s", (name,))
            row = cur.fetchone()
        if row is None:
            raise _unknown(name)
        return _postgres_record(row)

    def save_schedule(
        self, record: ScheduleRecord, *, expected_version: int, now: float
    ) -> ScheduleRecord:
        """Compare-and-swap a schedule (see :meth:`ScheduleStore.save_schedule`)."""
        new = attrs.evolve(record, updated_at=now)
        values = dict(zip(SCHEDULE_COLUMNS, _row(new, dump_input(record.input)), strict=True))
        values["expected_version"] = expected_version
        assignments = ", ".join(
            f"{column} = %({column})s" + ("::jsonb" if column == "input" else "")
            for column in _SAVED
        )
        with self._transaction() as cur:
            cur.execute(
                f"UPDATE schedules SET {assignments}, version = version + 1"
                " WHERE name = %(name)s AND version = %(expected_version)s"
                f" RETURNING {_COLUMNS}",
                values,
            )
            row = cur.fetchone()
            if row is None:
                cur.execute("SELECT version FROM schedules WHERE name = %s", (record.name,))
                found = cur.fetchone()
        if row is not None:
            return _postgres_record(row)
        if found is None:
            raise _unknown(record.name)
        raise _stale(record.name, expected_version, int(found[0]))

    def delete_schedule(self, name: str) -> None:
        """Remove a schedule (see :meth:`ScheduleStore.delete_schedule`)."""
        with self._transaction() as cur:
            cur.execute("DELETE FROM schedules WHERE name = %s", (name,))
            deleted = cur.rowcount
        if not deleted:
            raise _unknown(name)

    def schedules(self, *, flows: Collection[str] | None = None) -> list[ScheduleRecord]:
        """Return the schedules, by name (see :meth:`ScheduleStore.schedules`)."""
        with self._transaction() as cur:
            cur.execute(f"SELECT {_COLUMNS} FROM schedules ORDER BY name")
            rows = cur.fetchall()
        return _filtered((_postgres_record(row) for row in rows), flows)
