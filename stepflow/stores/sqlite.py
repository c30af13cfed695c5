"""SQLiteStore: runs in one SQLite file, for a single machine.

One connection, shared by the worker's thread and the caller's, is guarded by a
lock. The database runs in WAL mode, so readers in other processes never block
the writer. Every write starts with ``BEGIN IMMEDIATE``, which takes SQLite's
single write lock up front: writers (in this process or another) are serialized,
and two workers can never claim the same run.

A save is one conditional ``UPDATE ... RETURNING`` whose ``WHERE`` clause is the
compare-and-swap (version and lease, the rule of
:func:`~stepflow.stores._rules.check_save`); only when it matches no row is the
row read, to explain why in the same words as the other stores. SQLite older than
3.35 has no ``RETURNING``: there a save reads the row, checks it with
:func:`~stepflow.stores._rules.check_save` and writes it, which the write lock
makes just as safe.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import attrs

from stepflow.errors import ConfigurationError, StaleWriteError, StoreError, UnreadableRunError
from stepflow.stores._inbox import CHILD_EVENT, Listeners, dump_event, load_payload, refusal
from stepflow.stores._rules import (
    WAKEABLE,
    apply_save,
    check_prune,
    check_save,
    dump_input,
    dump_progress,
    load_input,
    load_progress,
    new_lease_token,
    run_exists,
    unknown_run,
)
from stepflow.stores._schedules import SQLITE_MIGRATION, SQLiteSchedules
from stepflow.stores.base import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    RUN_COLUMNS,
    InboxEvent,
    JournalEntry,
    Lease,
    LeaseHolder,
    PruneResult,
    RunKey,
    RunNotes,
    RunRecord,
    RunStatus,
    Save,
    prefix_upper_bound,
)

__all__ = ["SCHEMA_VERSION", "SYNCHRONOUS_LEVELS", "SQLiteStore"]

#: The values accepted for ``synchronous`` (SQLite's ``PRAGMA synchronous``).
SYNCHRONOUS_LEVELS = ("off", "normal", "full", "extra")

# How often opening a new file retries switching it to WAL (about 30 s in all).
_WAL_ATTEMPTS = 310

# How long a statement waits for another connection's write lock before failing.
_BUSY_TIMEOUT_S = 30.0

# Journal retention and progress (Store.prune, Store.report_progress): a run's last
# progress report, and how far its journal was pruned; finished runs are found by
# status and age. One step, named, so that renumbering it when another step lands
# first is moving one line of _MIGRATIONS.
_RETENTION_AND_PROGRESS = (
    "ALTER TABLE runs ADD COLUMN progress TEXT",
    "ALTER TABLE runs ADD COLUMN progress_at REAL",
    "ALTER TABLE runs ADD COLUMN journal_pruned_seq INTEGER",
    "ALTER TABLE runs ADD COLUMN journal_pruned_at REAL",
    "CREATE INDEX runs_retention ON runs (status, updated_at, run_id)",
)

# Events sent to runs (Store.send_event): each run's inbox, numbered per run, a key
# unique per run (NULL keys never clash), the undelivered ones found through a
# partial index; and the count of undelivered events on the run's row, which a save
# reads for free. One named step, as above.
_INBOX = (
    "ALTER TABLE runs ADD COLUMN inbox INTEGER NOT NULL DEFAULT 0",
    """CREATE TABLE inbox (
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            name TEXT NOT NULL,
            payload TEXT NOT NULL,
            key TEXT,
            sent_at REAL NOT NULL,
            delivered_at REAL,
            PRIMARY KEY (run_id, seq)
        )""",
    "CREATE UNIQUE INDEX inbox_key ON inbox (run_id, key)",
    "CREATE INDEX inbox_pending ON inbox (run_id, seq) WHERE delivered_at IS NULL",
)

# Migration steps: _MIGRATIONS[n] takes the schema from version n to n + 1. Append
# new steps; never edit a released one.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            flow TEXT NOT NULL,
            status TEXT NOT NULL,
            state TEXT NOT NULL,
            version INTEGER NOT NULL,
            wake_at REAL,
            input TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            lease_owner TEXT,
            lease_token TEXT,
            lease_expires_at REAL
        )""",
        "CREATE INDEX runs_due ON runs (status, wake_at)",
        "CREATE INDEX runs_flow ON runs (flow)",
        """CREATE TABLE journal (
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            at REAL NOT NULL,
            batch TEXT NOT NULL,
            PRIMARY KEY (run_id, seq)
        )""",
    ),
    # The console's runs page: newest-first keyset pages, alone or by status or
    # flow, and counts by status, each answered from an index (runs_flow is a
    # prefix of runs_flow_page, so it goes).
    (
        "CREATE INDEX runs_page ON runs (created_at, run_id)",
        "CREATE INDEX runs_status_page ON runs (status, created_at, run_id)",
        "CREATE INDEX runs_flow_page ON runs (flow, created_at, run_id)",
        "CREATE INDEX runs_flow_status_page ON runs (flow, status, created_at, run_id)",
        "DROP INDEX runs_flow",
    ),
    # 3: runs a worker parked (status 'parked') say why.
    ("ALTER TABLE runs ADD COLUMN parked_reason TEXT",),
    # 4: schedules (stepflow.stores._schedules).
    SQLITE_MIGRATION,
    # 5: journal retention (prune) and progress documents.
    _RETENTION_AND_PROGRESS,
    # 6: a wake pending until a worker takes it in (Store.wake).
    ("ALTER TABLE runs ADD COLUMN woken_at REAL",),
    # 7: events sent to runs.
    _INBOX,
    # 8: run deadlines (start_run(deadline=)); the runtime keeps wake_at no later.
    ("ALTER TABLE runs ADD COLUMN deadline_at REAL",),
    # 9: child runs (call steps): each child names its parent and the parent's
    # command; a parent's children are found through a partial index.
    (
        "ALTER TABLE runs ADD COLUMN parent_run_id TEXT",
        "ALTER TABLE runs ADD COLUMN parent_command INTEGER",
        "CREATE INDEX runs_parent ON runs (parent_run_id, created_at, run_id)"
        " WHERE parent_run_id IS NOT NULL",
    ),
)

#: The schema version this code creates and understands.
SCHEMA_VERSION = len(_MIGRATIONS)

_COLUMNS = ", ".join(RUN_COLUMNS)

# The statuses claim_due hands out, in the order it does (see Store.claim_due).
_CLAIMED: tuple[RunStatus, ...] = (*ACTIVE_STATUSES, "parked")
_CLAIMED_SQL = "(" + ", ".join(f"'{status}'" for status in _CLAIMED) + ")"
_ACTIVE_SQL = "(" + ", ".join(f"'{status}'" for status in ACTIVE_STATUSES) + ")"
_SET_LEASE = (
    "UPDATE runs SET lease_owner = ?, lease_token = ?, lease_expires_at = ? WHERE run_id = ?"
)

# How a prune shares SQLite's one write lock: it holds it (in back-to-back short
# transactions) for at most _PRUNE_BURST_S, then leaves it alone for _PRUNE_PAUSE_S.
# A writer waiting on the lock sleeps in SQLite's busy handler, whose sleeps are at
# most 25 ms in its first 100 ms of waiting: a pause that long always lets it in, so
# a worker's save waits at most a burst and a pause (benchmarks/prune.py measures it).
_PRUNE_BURST_S = 0.030
_PRUNE_PAUSE_S = 0.025

# Whether this SQLite has UPDATE ... RETURNING (3.35 and later).
_HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)

# The compare-and-swap: the rule of stepflow.stores._rules.check_save and apply_save,
# in SQL. Parameters: state, status, wake_at, now, keep_lease, run_id,
# expected_version, lease_token, flow, takes_wake, how many inbox events the save
# delivers, and mailbox_full. (The right-hand sides read the row as it was.) A
# pending wake keeps wake_at no later than itself; a running run with events left
# in its inbox is due by now, unless its mailbox is full
# (stepflow.stores._inbox.inbox_wake_at).
_SAVE = f"""
UPDATE runs SET
    state = ?1, status = ?2, version = version + 1, updated_at = ?4,
    wake_at = CASE
        WHEN inbox - ?11 > 0 AND ?2 IN ('running', 'cancelling') AND NOT ?12
            THEN MIN(COALESCE(?3, ?4), ?4)
        WHEN ?3 IS NULL OR ?10 OR woken_at IS NULL THEN ?3
        ELSE MIN(?3, woken_at) END,
    woken_at = CASE WHEN ?3 IS NULL OR ?10 THEN NULL ELSE woken_at END,
    inbox = inbox - ?11,
    flow = COALESCE(?9, flow), parked_reason = NULL,
    lease_owner = CASE WHEN ?5 THEN lease_owner END,
    lease_token = CASE WHEN ?5 THEN lease_token END,
    lease_expires_at = CASE WHEN ?5 THEN lease_expires_at END
WHERE run_id = ?6 AND version = ?7
    AND (lease_token = ?8
         OR (?8 IS NULL
             AND (lease_token IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= ?4)))
RETURNING {_COLUMNS}"""

_JOURNAL = "INSERT INTO journal (run_id, seq, at, batch) VALUES (?, ?, ?, ?)"


def _child_conflict(db: sqlite3.Connection, save: Save) -> StoreError | None:
    """Return the error of a child id of ``save`` that names a run not its child, if any."""
    for child in save.children:
        row = db.execute(
            "SELECT parent_run_id FROM runs WHERE run_id = ?", (child.run_id,)
        ).fetchone()
        if row is not None and row[0] != save.run_id:
            return run_exists(child.run_id)
    return None


def _create_children(db: sqlite3.Connection, save: Save, now: float) -> None:
    """Create the child runs of ``save`` not created yet, with their first journal entry."""
    for child in save.children:
        inserted = db.execute(
            f"INSERT INTO runs ({_COLUMNS})"
            " VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, 0, NULL, ?, ?)"
            " ON CONFLICT (run_id) DO NOTHING",
            (
                child.run_id,
                child.flow,
                child.status,
                child.state,
                child.wake_at,
                dump_input(child.input),
                now,
                now,
                save.run_id,
                child.command,
            ),
        ).rowcount
        if inserted and child.batch is not None:
            db.execute(_JOURNAL, (child.run_id, 1, now, child.batch))


def _note_parent(db: sqlite3.Connection, child: RunRecord, note: str, now: float) -> bool:
    """Leave a finished child's outcome in its parent's inbox, once; return whether it was."""
    parent = child.parent_run_id
    row = db.execute("SELECT status FROM runs WHERE run_id = ?", (parent,)).fetchone()
    if row is None or row[0] in FINISHED_STATUSES:
        return False
    inserted = db.execute(
        "INSERT INTO inbox (run_id, seq, name, payload, key, sent_at)"
        " SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4, ?5 FROM inbox WHERE run_id = ?1"
        " ON CONFLICT DO NOTHING",
        (parent, CHILD_EVENT, note, child.run_id, now),
    ).rowcount
    if inserted:
        db.execute(
            "UPDATE runs SET inbox = inbox + 1, wake_at = MIN(COALESCE(wake_at, ?1), ?1)"
            " WHERE run_id = ?2",
            (now, parent),
        )
    return bool(inserted)


def _record(row: Sequence[Any], *, lenient: bool = False) -> RunRecord:
    """Build a record from a row of ``_COLUMNS`` (input is JSON text in SQLite).

    A column that cannot be read makes the record ``unreadable``, not the call fail;
    ``lenient`` rows (see :func:`_records`) may hold text that is not UTF-8.
    """
    values = list(row)
    unreadable = _undecodable(values) if lenient else None
    values[6], bad_input = load_input(values[0], values[6])
    values.append(unreadable or bad_input)
    return RunRecord(*values)


def _lenient_text(raw: bytes) -> str:
    """Decode TEXT that may not be UTF-8, keeping its bytes (as surrogates) to report it."""
    return raw.decode("utf-8", "surrogateescape")


def _not_utf8(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _undecodable(values: Sequence[Any]) -> UnreadableRunError | None:
    """Return the error for the first column of a leniently read row that is not UTF-8."""
    for name, value in zip(RUN_COLUMNS, values, strict=True):
        if _not_utf8(value):
            return UnreadableRunError(str(values[0]), name, "is not valid UTF-8 text")
    return None


def _fetch(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> tuple[list[Any], bool]:
    """Run a query; return its rows, and whether they were read leniently.

    sqlite3 fails a whole fetch on one TEXT value that is not UTF-8 (a row edited
    by hand): the query is then run again keeping such bytes as surrogates, for
    the caller to report. A plain read costs nothing extra. The caller holds the
    store's lock.
    """
    try:
        return db.execute(sql, params).fetchall(), False
    except sqlite3.OperationalError as exc:
        if "decode" not in str(exc):
            raise
    db.text_factory = _lenient_text
    try:
        return db.execute(sql, params).fetchall(), True
    finally:
        db.text_factory = str


def _records(db: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[RunRecord]:
    """Run a query of ``_COLUMNS`` and return its records, unreadable ones marked."""
    rows, lenient = _fetch(db, sql, params)
    return [_record(row, lenient=lenient) for row in rows]


def _where(
    *,
    status: str | None = None,
    flow: str | None = None,
    flows: Collection[str] | None = None,
    extra: str = "",
) -> tuple[str, list[Any]]:
    """Return a ``WHERE`` clause for the filters given, and its parameters."""
    clauses = [extra] if extra else []
    params: list[Any] = []
    if status is not None:
        clauses.append("status = ?")
        params.append(status)
    if flow is not None:
        clauses.append("flow = ?")
        params.append(flow)
    if flows is not None:
        names = sorted(flows)
        clauses.append(f"flow IN ({', '.join('?' * len(names))})")
        params.extend(names)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _wal(db: sqlite3.Connection) -> None:
    """Put the database in WAL mode, waiting out other connections doing the same.

    Several processes opening a new file at once race to switch its journal mode,
    and SQLite answers the losers "database is locked" at once, without waiting
    for its busy timeout: so wait here, a little at a time.
    """
    for attempt in range(_WAL_ATTEMPTS):
        try:
            db.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:  # noqa: PERF203 - only while another opens it
            if "locked" not in str(exc) or attempt == _WAL_ATTEMPTS - 1:
                raise
            time.sleep(0.01 * min(attempt + 1, 10))


class SQLiteStore(Listeners, SQLiteSchedules):
    """A :class:`~stepflow.stores.base.Store` in one SQLite file.

    Args:
        path: The database file, created with its schema if missing.
        synchronous: SQLite's ``PRAGMA synchronous``: ``"full"`` (the default)
            makes every commit durable across a power loss; ``"normal"`` is
            faster and can lose the last commits, never consistency.

    Attributes:
        path: The database file, as given.
        synchronous: The ``synchronous`` level, in lower case.

    Raises:
        ConfigurationError: ``synchronous`` is not one of :data:`SYNCHRONOUS_LEVELS`.
        StoreError: the file cannot be opened, is not a database, or holds a
            schema newer than this version of stepflow knows.

    """

    def __init__(self, path: str | os.PathLike[str], *, synchronous: str = "full") -> None:
        if synchronous.lower() not in SYNCHRONOUS_LEVELS:
            raise ConfigurationError(
                f"unknown SQLite synchronous level {synchronous!r}: "
                f"use one of {', '.join(SYNCHRONOUS_LEVELS)}"
            )
        self.path = os.fspath(path)
        self.synchronous = synchronous.lower()
        self._lock = threading.Lock()
        self._noted: list[str] = []  # parents told of a child's end after a commit
        try:
            self._db = sqlite3.connect(
                self.path,
                timeout=_BUSY_TIMEOUT_S,  # SQLite's busy_timeout
                isolation_level=None,  # no implicit transactions: this class opens them
                check_same_thread=False,  # calls come from several threads, under _lock
            )
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open SQLite database {self.path!r}: {exc}; check the path and "
                "its directory's permissions"
            ) from exc
        try:
            with self._locked() as db:
                _wal(db)
                db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    @contextmanager
    def _locked(self) -> Iterator[sqlite3.Connection]:
        """Hold the lock; turn SQLite's errors into :class:`StoreError`."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite database {self.path!r} failed: {exc}") from exc

    @contextmanager
    def _transaction(self, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """Run the block in one transaction, rolled back if it raises."""
        with self._locked() as db:
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _migrate(self) -> None:
        with self._transaction() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
            )
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            found = int(row[0]) if row else 0
            if found > SCHEMA_VERSION:
                raise StoreError(
                    f"SQLite database {self.path!r} has schema version {found}, but this "
                    f"stepflow knows versions up to {SCHEMA_VERSION}: upgrade stepflow "
                    "(pip install -U stepflow)"
                )
            if found == SCHEMA_VERSION:
                return
            for step in _MIGRATIONS[found:]:
                for statement in step:
                    db.execute(statement)
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )

    def integrity_check(self) -> str:
        """Return the result of ``PRAGMA integrity_check``: ``"ok"`` for a sound database."""
        with self._locked() as db:
            return "\n".join(str(row[0]) for row in db.execute("PRAGMA integrity_check"))

    def create_run(
        self,
        run_id: str,
        flow: str,
        state: str,
        *,
        input: Any,
        status: RunStatus,
        wake_at: float | None,
        now: float,
        batch: str | None = None,
        deadline_at: float | None = None,
    ) -> RunRecord:
        """Create a run at version 1 and return it (see :meth:`Store.create_run`)."""
        text = dump_input(input)
        with self._transaction() as db:
            inserted = db.execute(
                f"INSERT INTO runs ({_COLUMNS})"
                " VALUES (?, ?, ?, ?, 1, ?, ?, ?, ?,"
                " NULL, NULL, NULL, NULL, NULL, 0, ?, NULL, NULL)"
                " ON CONFLICT (run_id) DO NOTHING",
                (run_id, flow, status, state, wake_at, text, now, now, deadline_at),
            ).rowcount
            if not inserted:
                raise run_exists(run_id)
            if batch is not None:
                db.execute(_JOURNAL, (run_id, 1, now, batch))
            return self._load(db, run_id)

    @staticmethod
    def _find(db: sqlite3.Connection, run_id: str) -> RunRecord | None:
        found = _records(db, f"SELECT {_COLUMNS} FROM runs WHERE run_id = ?", (run_id,))
        return found[0] if found else None

    def _load(self, db: sqlite3.Connection, run_id: str) -> RunRecord:
        run = self._find(db, run_id)
        if run is None:
            raise unknown_run(run_id)
        return run

    def load(self, run_id: str) -> RunRecord:
        """Return the run as stored now (see :meth:`Store.load`)."""
        with self._locked() as db:
            return self._load(db, run_id)

    def claim_due(
        self,
        *,
        now: float,
        limit: int,
        owner: str,
        lease_seconds: float,
        flows: Collection[str] | None = None,
    ) -> list[Lease]:
        """Lease up to ``limit`` due runs, earliest first (see :meth:`Store.claim_due`)."""
        expires_at = float(now + lease_seconds)
        with self._transaction() as db:
            # Running runs first, then cancelling ones, then parked ones: index range
            # scans, each in wake_at order (an IN over the statuses would sort every
            # due row).
            runs: list[RunRecord] = []
            for status in _CLAIMED:
                if len(runs) < limit:
                    runs += self._due(db, status, now, flows, limit - len(runs))
            leases = [
                Lease(
                    run=attrs.evolve(
                        run, lease_owner=owner, lease_token=token, lease_expires_at=expires_at
                    ),
                    token=token,
                    expires_at=expires_at,
                    taken_from=run.lease_owner,
                )
                for run, token in ((run, new_lease_token()) for run in runs)
            ]
            db.executemany(
                _SET_LEASE, [(owner, lease.token, expires_at, lease.run.run_id) for lease in leases]
            )
        return leases

    @staticmethod
    def _due(
        db: sqlite3.Connection,
        status: str,
        now: float,
        flows: Collection[str] | None,
        limit: int,
    ) -> list[RunRecord]:
        """Return up to ``limit`` claimable runs of ``status``, earliest first."""
        where, params = _where(
            status=status,
            flows=flows,
            extra="wake_at <= ? AND (lease_token IS NULL OR lease_expires_at <= ?)",
        )
        return _records(
            db,
            f"SELECT {_COLUMNS} FROM runs{where} ORDER BY wake_at, run_id LIMIT ?",
            (now, now, *params, max(limit, 0)),
        )

    def _explain(self, db: sqlite3.Connection, save: Save, now: float) -> StoreError:
        """Return why ``save``'s ``UPDATE`` matched no row (the write lock is held)."""
        error = check_save(self._find(db, save.run_id), save, now)
        # Under the write lock the row cannot have changed since the UPDATE: a None
        # here would mean the SQL and Python rules disagree.
        return error or StaleWriteError(
            f"cannot save run {save.run_id!r}: it changed while saving; reload it and retry",
            save.run_id,
        )

    def _update(self, db: sqlite3.Connection, save: Save, now: float) -> RunRecord | StoreError:
        """Apply ``save`` to the run's row but write no journal entry, or return why not.

        The inbox events it delivers are marked delivered with it.
        """
        if save.children:
            conflict = _child_conflict(db, save)
            if conflict is not None:
                return conflict
        delivered = 0 if save.delivered is None else _undelivered(db, save)
        if not _HAS_RETURNING:
            result = self._update_checked(db, save, now, delivered)
        else:
            result = self._update_returning(db, save, now, delivered)
        if isinstance(result, StoreError):
            return result
        if delivered:
            _mark_delivered(db, save, now)
        if save.children:
            _create_children(db, save, now)
        parent, note = result.parent_run_id, save.parent_note
        if parent is None or note is None or result.status not in FINISHED_STATUSES:
            return result
        if _note_parent(db, result, note, now):
            self._noted.append(parent)
        return result

    def _tell_noted(self) -> None:
        """Tell the listeners of the parents the last transaction left a child's outcome for."""
        noted, self._noted = self._noted, []
        for parent in noted:
            self._tell(parent)

    def children(self, run_id: str) -> list[RunRecord]:
        """Return the child runs of ``run_id``, oldest first (see :meth:`Store.children`)."""
        with self._locked() as db:
            return _records(
                db,
                f"SELECT {_COLUMNS} FROM runs WHERE parent_run_id = ? ORDER BY created_at, run_id",
                (run_id,),
            )

    def _update_returning(
        self, db: sqlite3.Connection, save: Save, now: float, delivered: int
    ) -> RunRecord | StoreError:
        """:meth:`_update`'s one ``UPDATE ... RETURNING``."""
        row = db.execute(
            _SAVE,
            (
                save.state,
                save.status,
                save.wake_at,
                now,
                save.lease_token is not None and not save.release,
                save.run_id,
                save.expected_version,
                save.lease_token,
                save.flow,
                save.takes_wake,
                delivered,
                save.mailbox_full,
            ),
        ).fetchone()
        if row is None:
            return self._explain(db, save, now)
        return _record(row)

    def _update_checked(
        self, db: sqlite3.Connection, save: Save, now: float, delivered: int
    ) -> RunRecord | StoreError:
        """:meth:`_update` for SQLite before 3.35: read, check in Python, write."""
        # BEGIN IMMEDIATE holds the write lock: the row cannot change between the
        # check and the update.
        run = self._find(db, save.run_id)
        error = check_save(run, save, now)
        if error is not None:
            return error
        assert run is not None  # check_save refuses a missing run
        new = apply_save(run, save, now, delivered)
        db.execute(
            "UPDATE runs SET state = ?, status = ?, wake_at = ?, version = ?, updated_at = ?,"
            " lease_owner = ?, lease_token = ?, lease_expires_at = ?, flow = ?,"
            " parked_reason = NULL, woken_at = ?, inbox = ? WHERE run_id = ?",
            (
                new.state,
                new.status,
                new.wake_at,
                new.version,
                new.updated_at,
                new.lease_owner,
                new.lease_token,
                new.lease_expires_at,
                new.flow,
                new.woken_at,
                new.inbox,
                new.run_id,
            ),
        )
        return new

    def save(self, save: Save, *, now: float) -> RunRecord:
        """Apply one compare-and-swap save in its own transaction (see :meth:`Store.save`)."""
        with self._transaction() as db:
            result = self._update(db, save, now)
            if save.batch is not None and not isinstance(result, StoreError):
                db.execute(_JOURNAL, (save.run_id, result.version, now, save.batch))
        self._tell_noted()
        if isinstance(result, StoreError):
            raise result
        return result

    def save_many(self, saves: Sequence[Save], *, now: float) -> list[RunRecord | BaseException]:
        """Apply several saves in one transaction (see :meth:`Store.save_many`).

        Each save is applied in turn, so a later save of the same run sees the
        earlier one; the journal entries are written together at the end.
        """
        if not saves:
            return []
        with self._transaction() as db:
            results: list[RunRecord | BaseException] = [
                self._update(db, save, now) for save in saves
            ]
            db.executemany(
                _JOURNAL,
                [
                    (save.run_id, result.version, now, save.batch)
                    for save, result in zip(saves, results, strict=True)
                    if save.batch is not None and isinstance(result, RunRecord)
                ],
            )
        self._tell_noted()
        return results

    def renew(
        self, leases: Sequence[tuple[str, str]], *, now: float, lease_seconds: float
    ) -> set[str]:
        """Extend the leases still held (see :meth:`Store.renew`)."""
        with self._transaction() as db:
            return {
                run_id
                for run_id, token in leases
                if db.execute(
                    "UPDATE runs SET lease_expires_at = ? WHERE run_id = ? AND lease_token = ?",
                    (now + lease_seconds, run_id, token),
                ).rowcount
            }

    def wake(self, run_id: str, *, now: float) -> bool:
        """Make a resting run due at ``now`` (see :meth:`Store.wake`)."""
        statuses = ", ".join(f"'{status}'" for status in WAKEABLE)
        with self._transaction() as db:
            woke = db.execute(
                "UPDATE runs SET woken_at = ?1,"
                " wake_at = CASE WHEN wake_at IS NULL OR wake_at > ?1 THEN ?1 ELSE wake_at END"
                f" WHERE run_id = ?2 AND status IN ({statuses})",
                (float(now), run_id),
            ).rowcount
            if not woke and self._find_id(db, run_id) is None:
                raise unknown_run(run_id)
        return bool(woke)

    def release(self, run_id: str, token: str) -> None:
        """Give up a lease, if still held (see :meth:`Store.release`)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE runs SET lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"
                " WHERE run_id = ? AND lease_token = ?",
                (run_id, token),
            )

    def park(self, run_id: str, token: str, *, until: float, reason: str) -> bool:
        """Set a run aside until ``until`` and release its lease (see :meth:`Store.park`)."""
        with self._transaction() as db:
            return bool(
                db.execute(
                    "UPDATE runs SET status = 'parked', wake_at = ?, parked_reason = ?,"
                    " lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"
                    " WHERE run_id = ? AND lease_token = ?",
                    (float(until), reason, run_id, token),
                ).rowcount
            )

    def lease_holders(
        self, *, now: float, flows: Collection[str] | None = None
    ) -> list[LeaseHolder]:
        """Return who holds live leases on due runs (see :meth:`Store.lease_holders`)."""
        where, params = _where(
            flows=flows,
            extra=f"status IN {_CLAIMED_SQL} AND wake_at <= ? AND lease_expires_at > ?",
        )
        with self._locked() as db:
            rows = db.execute(
                "SELECT lease_owner, COUNT(*), MAX(lease_expires_at) FROM runs"
                f"{where} GROUP BY lease_owner ORDER BY lease_owner",
                (now, now, *params),
            ).fetchall()
        return [LeaseHolder(str(owner), int(count), float(until)) for owner, count, until in rows]

    def expire_leases(self, owner: str, *, now: float) -> int:
        """Let ``owner``'s live leases expire now (see :meth:`Store.expire_leases`)."""
        with self._transaction() as db:
            return int(
                db.execute(
                    "UPDATE runs SET lease_expires_at = ?"
                    " WHERE lease_owner = ? AND lease_expires_at > ?",
                    (float(now), owner, float(now)),
                ).rowcount
            )

    def next_due(self, *, flows: Collection[str] | None = None) -> float | None:
        """Return when an active run next becomes claimable (see :meth:`Store.next_due`)."""
        where, params = _where(
            flows=flows, extra=f"status IN {_ACTIVE_SQL} AND wake_at IS NOT NULL"
        )
        with self._locked() as db:
            (due,) = db.execute(
                "SELECT MIN(CASE WHEN lease_expires_at IS NULL THEN wake_at"
                f" ELSE MAX(wake_at, lease_expires_at) END) FROM runs{where}",
                params,
            ).fetchone()
        return None if due is None else float(due)

    def runs(
        self,
        *,
        status: RunStatus | None = None,
        flow: str | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Return runs, filtered, oldest first (see :meth:`Store.runs`)."""
        where, params = _where(status=status, flow=flow)
        with self._locked() as db:
            return _records(
                db,
                f"SELECT {_COLUMNS} FROM runs{where} ORDER BY created_at, run_id LIMIT ?",
                (*params, -1 if limit is None else max(limit, 0)),
            )

    def count(self, *, status: RunStatus | None = None, flow: str | None = None) -> int:
        """Count runs, filtered by status and flow (see :meth:`Store.count`)."""
        where, params = _where(status=status, flow=flow)
        with self._locked() as db:
            (count,) = db.execute(f"SELECT COUNT(*) FROM runs{where}", params).fetchone()
        return int(count)

    def history(self, run_id: str) -> list[JournalEntry]:
        """Return the run's journal in ``seq`` order (see :meth:`Store.history`)."""
        with self._transaction(write=False) as db:
            self._load(db, run_id)
            rows, lenient = _fetch(
                db,
                "SELECT run_id, seq, at, batch FROM journal WHERE run_id = ? ORDER BY seq",
                (run_id,),
            )
        entries = [JournalEntry(*row) for row in rows]
        if lenient:
            for entry in entries:
                if _not_utf8(entry.batch):
                    raise UnreadableRunError(
                        run_id, "journal", f"entry {entry.seq} is not valid UTF-8 text"
                    )
        return entries

    def close(self) -> None:
        """Close the connection; the store cannot be used afterwards."""
        with self._lock:
            self._db.close()

    def page_runs(
        self,
        *,
        status: RunStatus | None = None,
        flow: str | None = None,
        id_prefix: str | None = None,
        older_than: RunKey | None = None,
        newer_than: RunKey | None = None,
        limit: int = 50,
    ) -> list[RunRecord]:
        """Return one page of runs, newest first (see :meth:`Store.page_runs`)."""
        where, params = _where(status=status, flow=flow, extra=_prefix_clause(id_prefix))
        params = [*_prefix_params(id_prefix), *params]
        keyed = []
        if older_than is not None:
            keyed.append("(created_at, run_id) < (?, ?)")
            params.extend(older_than)
        if newer_than is not None:
            keyed.append("(created_at, run_id) > (?, ?)")
            params.extend(newer_than)
        if keyed:
            where += (" AND " if where else " WHERE ") + " AND ".join(keyed)
        order = "DESC" if newer_than is None else "ASC"
        with self._locked() as db:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM runs{where}"
                f" ORDER BY created_at {order}, run_id {order} LIMIT ?",
                (*params, max(limit, 0)),
            ).fetchall()
        if newer_than is not None:
            rows.reverse()
        return [_record(row) for row in rows]

    def count_by_status(
        self, *, flow: str | None = None, id_prefix: str | None = None
    ) -> dict[str, int]:
        """Count runs by status (see :meth:`Store.count_by_status`)."""
        where, params = _where(flow=flow, extra=_prefix_clause(id_prefix))
        with self._locked() as db:
            rows = db.execute(
                f"SELECT status, COUNT(*) FROM runs{where} GROUP BY status",
                (*_prefix_params(id_prefix), *params),
            ).fetchall()
        return {str(status): int(count) for status, count in rows}

    def match_run_ids(self, prefix: str, *, limit: int | None = None) -> list[str]:
        """Return the ids starting with ``prefix``, sorted (see :meth:`Store.match_run_ids`).

        A range on the primary key (``prefix <= run_id < successor``), not a scan:
        SQLite compares text as UTF-8 bytes, which orders it by code point.
        """
        upper = prefix_upper_bound(prefix)
        below = "" if upper is None else " AND run_id < ?"
        params = (prefix,) if upper is None else (prefix, upper)
        with self._locked() as db:
            rows = db.execute(
                f"SELECT run_id FROM runs WHERE run_id >= ?{below} ORDER BY run_id LIMIT ?",
                (*params, -1 if limit is None else max(limit, 0)),
            ).fetchall()
        return [row[0] for row in rows]

    def prune(
        self,
        older_than: float,
        *,
        now: float,
        status: RunStatus | None = "completed",
        runs: bool = False,
        batch: int = 1000,
    ) -> PruneResult:
        """Remove old finished runs' journals, a batch at a time (see :meth:`Store.prune`).

        Runs are found through the ``(status, updated_at, run_id)`` index, in that
        order, outside any write transaction (WAL readers block no writer); each
        write is one short ``BEGIN IMMEDIATE`` transaction: marking up to
        ``batch`` runs (at most 500), removing ``batch`` journal entries, or
        deleting the marked runs, so another connection's commit waits at most
        for one of them.
        """
        statuses = check_prune(older_than, status, batch)
        totals = PruneResult()
        for one in statuses:
            totals = self._prune_status(one, float(older_than), float(now), runs, batch, totals)
        return totals

    def _prune_status(
        self,
        status: str,
        older_than: float,
        now: float,
        runs: bool,
        batch: int,
        totals: PruneResult,
    ) -> PruneResult:
        """Prune the runs of one status, walking the retention index by keyset."""
        pruned, removed, deleted, transactions = attrs.astuple(totals)
        pace = _Pace(self)
        # Runs whose journal is whole, was saved to since its prune, or still holds
        # entries a prune marked but did not remove (it was interrupted).
        pending = (
            ""
            if runs
            else " AND (journal_pruned_seq IS NULL OR journal_pruned_seq < version"
            " OR EXISTS (SELECT 1 FROM journal WHERE journal.run_id = runs.run_id"
            " AND journal.seq <= runs.journal_pruned_seq))"
        )
        after: tuple[float, str] = (float("-inf"), "")
        while True:
            with self._locked() as db:
                found = db.execute(
                    "SELECT updated_at, run_id FROM runs WHERE status = ? AND updated_at < ?"
                    f" AND (updated_at, run_id) > (?, ?){pending}"
                    " ORDER BY updated_at, run_id LIMIT ?",
                    (status, older_than, *after, min(batch, 500)),
                ).fetchall()
            if not found:
                return PruneResult(pruned, removed, deleted, transactions)
            after = (float(found[-1][0]), str(found[-1][1]))
            ids = [str(row[1]) for row in found]
            listed = ", ".join("?" * len(ids))
            # The age and status are checked again under the write lock: a run
            # resumed since it was found is left alone.
            still_old = f"run_id IN ({listed}) AND status = ? AND updated_at < ?"
            with pace.transaction() as db:
                pruned += db.execute(
                    "UPDATE runs SET journal_pruned_seq = version, journal_pruned_at = ?,"
                    f" inbox = 0 WHERE {still_old}",
                    (now, *ids, status, older_than),
                ).rowcount
                db.execute(
                    "DELETE FROM inbox WHERE run_id IN"
                    f" (SELECT run_id FROM runs WHERE {still_old})",
                    (*ids, status, older_than),
                )
            transactions += 1
            while True:
                with pace.transaction() as db:
                    gone = db.execute(
                        "DELETE FROM journal WHERE rowid IN (SELECT journal.rowid FROM journal"
                        " JOIN runs ON runs.run_id = journal.run_id"
                        f" WHERE journal.run_id IN ({listed})"
                        " AND journal.seq <= runs.journal_pruned_seq LIMIT ?)",
                        (*ids, batch),
                    ).rowcount
                transactions += 1
                removed += gone
                if gone < batch:
                    break
            if runs:
                with pace.transaction() as db:
                    deleted += db.execute(
                        f"DELETE FROM runs WHERE {still_old} AND journal_pruned_seq = version",
                        (*ids, status, older_than),
                    ).rowcount
                transactions += 1

    def report_progress(
        self, run_id: str, progress: Any, *, now: float, token: str | None = None
    ) -> bool:
        """Keep the run's progress document (see :meth:`Store.report_progress`).

        One ``UPDATE`` of the two progress columns: the version, state and lease
        are not touched, so the worker's compare-and-swap saves never see it.
        """
        text = dump_progress(progress)
        leased = "" if token is None else " AND lease_token = ?"
        with self._transaction() as db:
            written = db.execute(
                f"UPDATE runs SET progress = ?, progress_at = ? WHERE run_id = ?{leased}",
                (text, float(now), run_id, *(() if token is None else (token,))),
            ).rowcount
            if not written and self._find_id(db, run_id) is None:
                raise unknown_run(run_id)
        return bool(written)

    @staticmethod
    def _find_id(db: sqlite3.Connection, run_id: str) -> str | None:
        row = db.execute("SELECT run_id FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else str(row[0])

    def notes(self, run_id: str) -> RunNotes:
        """Return the run's progress and prune mark (see :meth:`Store.notes`)."""
        with self._locked() as db:
            rows, _ = _fetch(
                db,
                "SELECT progress, progress_at, journal_pruned_seq, journal_pruned_at"
                " FROM runs WHERE run_id = ?",
                (run_id,),
            )
        if not rows:
            raise unknown_run(run_id)
        progress, progress_at, through, pruned_at = rows[0]
        return RunNotes(load_progress(progress), progress_at, through, pruned_at)

    # -- events sent to runs ----------------------------------------------------

    def send_event(
        self, run_id: str, name: str, payload: Any, *, key: str | None = None, now: float
    ) -> bool:
        """Keep an event for the run; make it due now (see :meth:`Store.send_event`).

        ``BEGIN IMMEDIATE`` holds SQLite's write lock: the run's row and its inbox
        cannot change between the checks and the writes, and the event's ``seq``
        follows commit order.
        """
        text = dump_event(name, payload)
        with self._transaction() as db:
            row = db.execute(
                "SELECT status, inbox FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise unknown_run(run_id)
            if (
                key is not None
                and db.execute(
                    "SELECT 1 FROM inbox WHERE run_id = ? AND key = ?", (run_id, key)
                ).fetchone()
            ):
                return False
            error = refusal(run_id, row[0], row[1], name)
            if error is not None:
                raise error
            db.execute(
                "INSERT INTO inbox (run_id, seq, name, payload, key, sent_at)"
                " SELECT ?1, COALESCE(MAX(seq), 0) + 1, ?2, ?3, ?4, ?5 FROM inbox"
                " WHERE run_id = ?1",
                (run_id, name, text, key, float(now)),
            )
            db.execute(
                "UPDATE runs SET inbox = inbox + 1,"
                " wake_at = CASE WHEN status IN ('running', 'cancelling')"
                " THEN MIN(COALESCE(wake_at, ?1), ?1) ELSE wake_at END WHERE run_id = ?2",
                (float(now), run_id),
            )
        self._tell(run_id)
        return True

    def pending_events(self, run_id: str, *, limit: int) -> list[InboxEvent]:
        """Return the run's undelivered events, oldest first (see :meth:`Store.pending_events`)."""
        with self._transaction(write=False) as db:
            rows = db.execute(
                "SELECT seq, name, payload, key, sent_at FROM inbox"
                " WHERE run_id = ? AND delivered_at IS NULL ORDER BY seq LIMIT ?",
                (run_id, max(limit, 0)),
            ).fetchall()
            if not rows and self._find_id(db, run_id) is None:
                raise unknown_run(run_id)
        return [
            InboxEvent(seq, name, load_payload(payload), key, sent_at)
            for seq, name, payload, key, sent_at in rows
        ]


def _undelivered(db: sqlite3.Connection, save: Save) -> int:
    """Count the run's undelivered inbox events up to ``save.delivered`` (the lock is held)."""
    (count,) = db.execute(
        "SELECT COUNT(*) FROM inbox WHERE run_id = ? AND seq <= ? AND delivered_at IS NULL",
        (save.run_id, save.delivered),
    ).fetchone()
    return int(count)


def _mark_delivered(db: sqlite3.Connection, save: Save, now: float) -> None:
    """Mark the inbox events ``save`` delivered (in its transaction)."""
    db.execute(
        "UPDATE inbox SET delivered_at = ? WHERE run_id = ? AND seq <= ? AND delivered_at IS NULL",
        (now, save.run_id, save.delivered),
    )


class _Pace:
    """A prune's write transactions, paced to let other writers in (see _PRUNE_BURST_S)."""

    def __init__(self, store: SQLiteStore) -> None:
        self._store = store
        self._since = time.perf_counter()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, after a pause if the lock was held for a burst."""
        if time.perf_counter() - self._since >= _PRUNE_BURST_S:
            # Fold the WAL back into the database meanwhile (PASSIVE: it takes no
            # write lock), so a worker's commit does not meet a long checkpoint.
            with self._store._locked() as db:
                db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            time.sleep(_PRUNE_PAUSE_S)
            self._since = time.perf_counter()
        with self._store._transaction() as db:
            yield db


def _prefix_clause(id_prefix: str | None) -> str:
    """Return the ``WHERE`` clause selecting ids that start with ``id_prefix``.

    A range of the primary key, which its index answers (``LIKE`` and ``GLOB``
    would need their wildcards escaped, and ``LIKE`` ignores case).
    """
    if not id_prefix:
        return ""
    if prefix_upper_bound(id_prefix) is None:
        return "run_id >= ?"
    return "run_id >= ? AND run_id < ?"


def _prefix_params(id_prefix: str | None) -> list[Any]:
    """Return the parameters of :func:`_prefix_clause`."""
    if not id_prefix:
        return []
    bound = prefix_upper_bound(id_prefix)
    return [id_prefix] if bound is None else [id_prefix, bound]
