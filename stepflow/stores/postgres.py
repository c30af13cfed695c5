"""PostgresStore: runs in PostgreSQL, shared by workers on several machines.

The store keeps its tables in one schema (``stepflow`` unless told otherwise) and
talks to the server through one psycopg 3 connection, guarded by a lock, with
every call in one explicit transaction, or in one statement (atomic by itself):

* :meth:`PostgresStore.claim_due` selects due runs ``FOR UPDATE SKIP LOCKED``,
  so concurrent workers skip each other's rows instead of claiming them twice.
* :meth:`PostgresStore.save` is one statement, run in autocommit: a conditional
  ``UPDATE`` whose ``WHERE`` clause is the compare-and-swap (version and lease),
  and the journal ``INSERT`` of the row it returns. When it matches no row, the
  row is read to explain why, with the same words as the other stores.
* :meth:`PostgresStore.save_many` applies a whole group in one such statement,
  over arrays of the saves' fields, and reads back only the rows it refused.
* The schema is created and upgraded under ``pg_advisory_xact_lock``, so workers
  starting together do not race to create it.

psycopg is imported only when a store is made: ``pip install 'stepflow[postgres]'``.
A call that finds the connection broken raises :class:`~stepflow.errors.StoreError`
and the next call reconnects; a failed write is never retried behind the caller's
back, since whether it committed is unknown.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import attrs

from stepflow.errors import ConfigurationError, StaleWriteError, StoreError
from stepflow.stores._inbox import CHILD_EVENT, Listeners, dump_event, load_payload, refusal
from stepflow.stores._rules import (
    WAKEABLE,
    check_prune,
    check_save,
    dump_input,
    dump_progress,
    load_progress,
    new_lease_token,
    run_exists,
    unknown_run,
)
from stepflow.stores._schedules import POSTGRES_MIGRATION, PostgresSchedules
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
)

if TYPE_CHECKING:
    import psycopg

__all__ = ["INSTALL_HINT", "SCHEMA_VERSION", "PostgresStore"]

log = logging.getLogger("stepflow.stores")

#: How to install what :class:`PostgresStore` needs.
INSTALL_HINT = "pip install 'stepflow[postgres]'"

# Journal retention and progress (Store.prune, Store.report_progress): a run's last
# progress report, and how far its journal was pruned; finished runs are found by
# status and age. One step, named, so that renumbering it when another step lands
# first is moving one line of _MIGRATIONS. Progress is text, not jsonb, so that its
# size is the size checked.
_RETENTION_AND_PROGRESS = (
    "ALTER TABLE runs ADD COLUMN progress text",
    "ALTER TABLE runs ADD COLUMN progress_at double precision",
    "ALTER TABLE runs ADD COLUMN journal_pruned_seq bigint",
    "ALTER TABLE runs ADD COLUMN journal_pruned_at double precision",
    "CREATE INDEX runs_retention ON runs (status, updated_at, run_id)",
)

# Events sent to runs (Store.send_event): each run's inbox, numbered per run, a key
# unique per run (NULL keys never clash), the undelivered ones found through a
# partial index; and the count of undelivered events on the run's row, which a save
# reads for free. One named step, as above.
_INBOX = (
    "ALTER TABLE runs ADD COLUMN inbox bigint NOT NULL DEFAULT 0",
    """CREATE TABLE inbox (
            run_id text NOT NULL,
            seq bigint NOT NULL,
            name text NOT NULL,
            payload text NOT NULL,
            key text,
            sent_at double precision NOT NULL,
            delivered_at double precision,
            PRIMARY KEY (run_id, seq)
        )""",
    "CREATE UNIQUE INDEX inbox_key ON inbox (run_id, key)",
    "CREATE INDEX inbox_pending ON inbox (run_id, seq) WHERE delivered_at IS NULL",
)

# Migration steps: _MIGRATIONS[n] takes the schema from version n to n + 1. Append
# new steps; never edit a released one. Tables are found through search_path,
# which the connection sets to the store's schema.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE runs (
            run_id text PRIMARY KEY,
            flow text NOT NULL,
            status text NOT NULL,
            state text NOT NULL,
            version bigint NOT NULL,
            wake_at double precision,
            input jsonb NOT NULL,
            created_at double precision NOT NULL,
            updated_at double precision NOT NULL,
            lease_owner text,
            lease_token text,
            lease_expires_at double precision
        )""",
        "CREATE INDEX runs_due ON runs (status, wake_at)",
        "CREATE INDEX runs_flow ON runs (flow)",
        """CREATE TABLE journal (
            run_id text NOT NULL,
            seq bigint NOT NULL,
            at double precision NOT NULL,
            batch text NOT NULL,
            PRIMARY KEY (run_id, seq)
        )""",
    ),
    # The console's runs page: newest-first keyset pages, alone or by status or
    # flow, and counts by status, each answered from an index (runs_flow is a
    # prefix of runs_flow_page, so it goes); ids by prefix through text_pattern_ops.
    (
        "CREATE INDEX runs_page ON runs (created_at, run_id)",
        "CREATE INDEX runs_status_page ON runs (status, created_at, run_id)",
        "CREATE INDEX runs_flow_page ON runs (flow, created_at, run_id)",
        "CREATE INDEX runs_flow_status_page ON runs (flow, status, created_at, run_id)",
        "CREATE INDEX runs_id_prefix ON runs (run_id text_pattern_ops)",
        "DROP INDEX runs_flow",
    ),
    # 3: runs a worker parked (status 'parked') say why.
    ("ALTER TABLE runs ADD COLUMN parked_reason text",),
    # 4: schedules (stepflow.stores._schedules).
    POSTGRES_MIGRATION,
    # 5: journal retention (prune) and progress documents.
    _RETENTION_AND_PROGRESS,
    # 6: a wake pending until a worker takes it in (Store.wake).
    ("ALTER TABLE runs ADD COLUMN woken_at double precision",),
    # 7: events sent to runs.
    _INBOX,
    # 8: run deadlines (start_run(deadline=)); the runtime keeps wake_at no later.
    ("ALTER TABLE runs ADD COLUMN deadline_at double precision",),
    # 9: child runs (call steps): each child names its parent and the parent's
    # command; a parent's children are found through a partial index.
    (
        "ALTER TABLE runs ADD COLUMN parent_run_id text",
        "ALTER TABLE runs ADD COLUMN parent_command bigint",
        "CREATE INDEX runs_parent ON runs (parent_run_id, created_at, run_id)"
        " WHERE parent_run_id IS NOT NULL",
    ),
)

#: The schema version this code creates and understands.
SCHEMA_VERSION = len(_MIGRATIONS)

_COLUMNS = ", ".join(RUN_COLUMNS)

# The statuses claim_due hands out, in the order it does (see Store.claim_due).
_CLAIMED: tuple[RunStatus, ...] = (*ACTIVE_STATUSES, "parked")
_FLOWS = "(%(flows)s::text[] IS NULL OR flow = ANY(%(flows)s::text[]))"

# The compare-and-swap: the same rule as stepflow.stores._rules.check_save and
# apply_save, in SQL, with the journal entry written from the row it returns (the
# statement is atomic by itself, so it needs no explicit transaction). ``delivered``
# is how many inbox events the save delivers; a running run with events left is due
# by now (stepflow.stores._inbox.inbox_wake_at). Otherwise a pending wake
# (``woken_at``) keeps ``wake_at`` no later than itself until a save takes it in.
_SAVE = f"""
WITH saved AS (
    UPDATE runs SET
        state = %(state)s, status = %(status)s,
        wake_at = CASE
            WHEN inbox - %(delivered)s > 0 AND %(status)s IN ('running', 'cancelling')
                AND NOT %(mailbox_full)s
                THEN LEAST(COALESCE(%(wake_at)s::double precision, %(now)s), %(now)s)
            WHEN %(wake_at)s::double precision IS NULL OR %(takes_wake)s OR woken_at IS NULL
                THEN %(wake_at)s::double precision
            ELSE LEAST(%(wake_at)s::double precision, woken_at) END,
        woken_at = CASE WHEN %(wake_at)s::double precision IS NULL OR %(takes_wake)s
                        THEN NULL ELSE woken_at END,
        inbox = inbox - %(delivered)s,
        version = version + 1, updated_at = %(now)s,
        lease_owner = CASE WHEN %(keep_lease)s THEN lease_owner END,
        lease_token = CASE WHEN %(keep_lease)s THEN lease_token END,
        lease_expires_at = CASE WHEN %(keep_lease)s THEN lease_expires_at END,
        flow = COALESCE(%(flow)s::text, flow), parked_reason = NULL
    WHERE run_id = %(run_id)s AND version = %(expected_version)s
        AND (lease_token = %(lease_token)s::text
             OR (%(lease_token)s::text IS NULL
                 AND (lease_token IS NULL OR lease_expires_at IS NULL
                      OR lease_expires_at <= %(now)s)))
    RETURNING {_COLUMNS}
), journaled AS (
    INSERT INTO journal (run_id, seq, at, batch)
    SELECT run_id, version, %(now)s, %(batch)s::text FROM saved
    WHERE %(batch)s::text IS NOT NULL
)
SELECT {_COLUMNS} FROM saved"""

# The same for a group of saves of distinct runs, given as arrays. The rows that
# pass the version check are locked first, in run_id order, so two groups touching
# the same runs lock them in the same order and cannot deadlock.
_SAVE_MANY = f"""
WITH given AS (
    SELECT * FROM unnest(
        %(run_id)b::text[], %(expected_version)b::bigint[], %(lease_token)b::text[],
        %(state)b::text[], %(status)b::text[], %(wake_at)b::double precision[],
        %(batch)b::text[], %(keep_lease)b::boolean[], %(flow)b::text[],
        %(takes_wake)b::boolean[], %(delivered)b::bigint[], %(mailbox_full)b::boolean[]
    ) AS given (
        run_id, expected_version, lease_token, state, status, wake_at, batch, keep_lease, flow,
        takes_wake, delivered, mailbox_full
    )
), locked AS MATERIALIZED (
    SELECT given.* FROM runs JOIN given
        ON runs.run_id = given.run_id AND runs.version = given.expected_version
    ORDER BY runs.run_id
    FOR UPDATE OF runs
), saved AS (
    UPDATE runs SET
        state = s.state, status = s.status,
        wake_at = CASE
            WHEN runs.inbox - s.delivered > 0 AND s.status IN ('running', 'cancelling')
                AND NOT s.mailbox_full
                THEN LEAST(COALESCE(s.wake_at, %(now)s), %(now)s)
            WHEN s.wake_at IS NULL OR s.takes_wake OR runs.woken_at IS NULL THEN s.wake_at
            ELSE LEAST(s.wake_at, runs.woken_at) END,
        woken_at = CASE WHEN s.wake_at IS NULL OR s.takes_wake THEN NULL ELSE runs.woken_at END,
        inbox = runs.inbox - s.delivered,
        version = runs.version + 1, updated_at = %(now)s,
        lease_owner = CASE WHEN s.keep_lease THEN runs.lease_owner END,
        lease_token = CASE WHEN s.keep_lease THEN runs.lease_token END,
        lease_expires_at = CASE WHEN s.keep_lease THEN runs.lease_expires_at END,
        flow = COALESCE(s.flow, runs.flow), parked_reason = NULL
    FROM locked AS s
    WHERE runs.run_id = s.run_id AND runs.version = s.expected_version
        AND (runs.lease_token = s.lease_token
             OR (s.lease_token IS NULL
                 AND (runs.lease_token IS NULL OR runs.lease_expires_at IS NULL
                      OR runs.lease_expires_at <= %(now)s)))
    RETURNING {", ".join(f"runs.{name}" for name in _COLUMNS.split(", "))}, s.batch
), journaled AS (
    INSERT INTO journal (run_id, seq, at, batch)
    SELECT run_id, version, %(now)s, batch FROM saved WHERE batch IS NOT NULL
)
SELECT {_COLUMNS} FROM saved"""


def _params(save: Save, now: float, delivered: int = 0) -> dict[str, Any]:
    """Return the parameters of :data:`_SAVE` for ``save`` (delivering ``delivered`` events)."""
    return {
        "delivered": delivered,
        "mailbox_full": save.mailbox_full,
        "run_id": save.run_id,
        "expected_version": save.expected_version,
        "lease_token": save.lease_token,
        "state": save.state,
        "status": save.status,
        "wake_at": save.wake_at,
        "now": now,
        "keep_lease": save.lease_token is not None and not save.release,
        "batch": save.batch,
        "flow": save.flow,
        "takes_wake": save.takes_wake,
    }


def _changed_while_saving(save: Save) -> StaleWriteError:
    """Return the error for a save the ``UPDATE`` refused but the row read after accepts.

    The row changed again between the ``UPDATE`` and the read.
    """
    return StaleWriteError(
        f"cannot save run {save.run_id!r}: it changed while saving; reload it and retry",
        save.run_id,
    )


def _child_conflict(cur: psycopg.Cursor[tuple[Any, ...]], save: Save) -> StoreError | None:
    """Return the error of a child id of ``save`` that names a run not its child, if any."""
    cur.execute(
        "SELECT run_id, parent_run_id FROM runs WHERE run_id = ANY(%s::text[])",
        ([child.run_id for child in save.children],),
    )
    for run_id, parent in cur.fetchall():
        if parent != save.run_id:
            return run_exists(run_id)
    return None


def _create_children(cur: psycopg.Cursor[tuple[Any, ...]], save: Save, now: float) -> None:
    """Create the child runs of ``save`` not created yet, with their first journal entry."""
    for child in save.children:
        cur.execute(
            f"INSERT INTO runs ({_COLUMNS})"
            " VALUES (%s, %s, %s, %s, 1, %s, %s::jsonb, %s, %s,"
            " NULL, NULL, NULL, NULL, NULL, 0, NULL, %s, %s)"
            " ON CONFLICT (run_id) DO NOTHING RETURNING run_id",
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
        )
        if cur.fetchone() is not None and child.batch is not None:
            cur.execute(
                "INSERT INTO journal (run_id, seq, at, batch) VALUES (%s, 1, %s, %s)",
                (child.run_id, now, child.batch),
            )


def _note_parent(
    cur: psycopg.Cursor[tuple[Any, ...]], child: RunRecord, note: str, now: float
) -> bool:
    """Leave a finished child's outcome in its parent's inbox, once; return whether it was."""
    parent = child.parent_run_id
    cur.execute("SELECT status FROM runs WHERE run_id = %s FOR UPDATE", (parent,))
    row = cur.fetchone()
    if row is None or row[0] in FINISHED_STATUSES:
        return False
    cur.execute(
        "INSERT INTO inbox (run_id, seq, name, payload, key, sent_at)"
        " SELECT %(run_id)s, COALESCE(max(seq), 0) + 1, %(name)s, %(payload)s,"
        " %(key)s, %(now)s FROM inbox WHERE run_id = %(run_id)s"
        " ON CONFLICT DO NOTHING RETURNING seq",
        {"run_id": parent, "name": CHILD_EVENT, "payload": note, "key": child.run_id, "now": now},
    )
    if cur.fetchone() is None:
        return False
    cur.execute(
        "UPDATE runs SET inbox = inbox + 1, wake_at = LEAST(COALESCE(wake_at, %(now)s), %(now)s)"
        " WHERE run_id = %(run_id)s",
        {"run_id": parent, "now": now},
    )
    return True


def _flows(flows: Collection[str] | None) -> list[str] | None:
    return None if flows is None else sorted(flows)


class PostgresStore(Listeners, PostgresSchedules):
    """A :class:`~stepflow.stores.base.Store` in a PostgreSQL schema.

    Args:
        dsn: A libpq connection string or URL (``postgresql://user@host/db``).
        schema: The schema holding the store's tables; created if missing.

    Raises:
        ConfigurationError: psycopg is not installed.
        StoreError: the server cannot be reached, or the schema was written by a
            newer version of stepflow.

    """

    def __init__(self, dsn: str, *, schema: str = "stepflow") -> None:
        try:
            import psycopg  # noqa: F401 - only checks that it is there
        except ImportError as exc:
            raise ConfigurationError(
                f"PostgresStore needs psycopg 3, which is not installed: {INSTALL_HINT}"
            ) from exc
        self.dsn = dsn
        self.schema = schema
        # Sends are announced on this channel (NOTIFY) to the store objects of other
        # processes that listen (see subscribe); a hash keeps it a short identifier.
        self._channel = "stepflow_events_" + hashlib.sha256(schema.encode()).hexdigest()[:16]
        self._listening: threading.Event | None = None
        self._lock = threading.Lock()
        self._noted: list[str] = []  # parents told of a child's end after a commit
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        try:
            with self._transaction() as cur:
                self._migrate(cur)
        except BaseException:
            self.close()
            raise

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        """Return the connection, (re)connecting if there is none or it broke."""
        import psycopg
        from psycopg import sql

        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            conn = psycopg.connect(self.dsn, autocommit=False)
            try:
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
                conn.commit()
            except BaseException:
                conn.close()
                raise
        except psycopg.Error as exc:
            raise StoreError(
                f"cannot connect to PostgreSQL: {exc}; check the DSN and that the server is up"
            ) from exc
        self._conn = conn
        return conn

    @contextmanager
    def _transaction(
        self, *, autocommit: bool = False
    ) -> Iterator[psycopg.Cursor[tuple[Any, ...]]]:
        """Run the block in one transaction; turn psycopg's errors into StoreError.

        With ``autocommit``, each statement of the block commits by itself instead.
        """
        import psycopg

        with self._lock:
            conn = self._connection()
            try:
                if autocommit:
                    conn.autocommit = True
                    try:
                        with conn.cursor() as cur:
                            yield cur
                    finally:
                        if not conn.closed:
                            conn.autocommit = False
                else:
                    with conn.transaction(), conn.cursor() as cur:
                        yield cur
            except psycopg.Error as exc:
                if conn.broken or conn.closed:
                    conn.close()
                    self._conn = None
                    raise StoreError(
                        f"lost the connection to PostgreSQL: {exc}; the next call reconnects"
                    ) from exc
                raise StoreError(f"PostgreSQL refused a statement: {exc}") from exc

    def _migrate(self, cur: psycopg.Cursor[tuple[Any, ...]]) -> None:
        from psycopg import sql

        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"stepflow:{self.schema}",))
        cur.execute(
            "SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'meta'", (self.schema,)
        )
        found = 0
        if cur.fetchone() is not None:
            cur.execute("SELECT value FROM meta WHERE key = 'schema_version'")
            row = cur.fetchone()
            found = int(row[0]) if row else 0
        if found > SCHEMA_VERSION:
            raise StoreError(
                f"PostgreSQL schema {self.schema!r} has schema version {found}, but this "
                f"stepflow knows versions up to {SCHEMA_VERSION}: upgrade stepflow "
                "(pip install -U stepflow)"
            )
        if found == SCHEMA_VERSION:
            return
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
        cur.execute("CREATE TABLE IF NOT EXISTS meta (key text PRIMARY KEY, value text NOT NULL)")
        for step in _MIGRATIONS[found:]:
            for statement in step:
                cur.execute(statement)
        cur.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', %s)"
            " ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            (str(SCHEMA_VERSION),),
        )

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
        with self._transaction() as cur:
            cur.execute(
                f"INSERT INTO runs ({_COLUMNS})"
                " VALUES (%s, %s, %s, %s, 1, %s, %s::jsonb, %s, %s,"
                " NULL, NULL, NULL, NULL, NULL, 0, %s, NULL, NULL)"
                f" ON CONFLICT (run_id) DO NOTHING RETURNING {_COLUMNS}",
                (run_id, flow, status, state, wake_at, text, now, now, deadline_at),
            )
            row = cur.fetchone()
            if row is not None and batch is not None:
                cur.execute(
                    "INSERT INTO journal (run_id, seq, at, batch) VALUES (%s, 1, %s, %s)",
                    (run_id, now, batch),
                )
        if row is None:
            raise run_exists(run_id)
        return RunRecord(*row)

    @staticmethod
    def _find(cur: psycopg.Cursor[tuple[Any, ...]], run_id: str) -> RunRecord | None:
        cur.execute(f"SELECT {_COLUMNS} FROM runs WHERE run_id = %s", (run_id,))
        row = cur.fetchone()
        return None if row is None else RunRecord(*row)

    def load(self, run_id: str) -> RunRecord:
        """Return the run as stored now (see :meth:`Store.load`)."""
        with self._transaction() as cur:
            run = self._find(cur, run_id)
        if run is None:
            raise unknown_run(run_id)
        return run

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
        with self._transaction() as cur:
            # Running runs first, then cancelling ones, then parked ones, each in
            # wake_at order.
            runs: list[RunRecord] = []
            for status in _CLAIMED:
                if len(runs) < limit:
                    runs += self._due(cur, status, now, flows, limit - len(runs))
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
            cur.executemany(
                "UPDATE runs SET lease_owner = %s, lease_token = %s, lease_expires_at = %s"
                " WHERE run_id = %s",
                [(owner, lease.token, expires_at, lease.run.run_id) for lease in leases],
            )
        return leases

    @staticmethod
    def _due(
        cur: psycopg.Cursor[tuple[Any, ...]],
        status: str,
        now: float,
        flows: Collection[str] | None,
        limit: int,
    ) -> list[RunRecord]:
        """Lock and return up to ``limit`` claimable runs of ``status``, earliest first."""
        cur.execute(
            f"SELECT {_COLUMNS} FROM runs WHERE status = %(status)s AND wake_at <= %(now)s"
            f" AND (lease_token IS NULL OR lease_expires_at <= %(now)s) AND {_FLOWS}"
            " ORDER BY wake_at, run_id LIMIT %(limit)s FOR UPDATE SKIP LOCKED",
            {"status": status, "now": now, "flows": _flows(flows), "limit": max(limit, 0)},
        )
        return [RunRecord(*row) for row in cur.fetchall()]

    def _explain(
        self, cur: psycopg.Cursor[tuple[Any, ...]], saves: Sequence[Save], now: float
    ) -> list[StoreError]:
        """Return why each of ``saves`` (of distinct runs) matched no row, reading them once."""
        cur.execute(
            f"SELECT {_COLUMNS} FROM runs WHERE run_id = ANY(%s::text[])",
            ([save.run_id for save in saves],),
        )
        found = {row[0]: RunRecord(*row) for row in cur.fetchall()}
        return [
            check_save(found.get(save.run_id), save, now) or _changed_while_saving(save)
            for save in saves
        ]

    def _save(
        self, cur: psycopg.Cursor[tuple[Any, ...]], save: Save, now: float
    ) -> RunRecord | StoreError:
        """Apply ``save``, or return why it may not be applied (writing nothing).

        A save that delivers inbox events must run inside a transaction: they are
        counted first, and marked delivered once the save went through.
        """
        if save.children:
            conflict = _child_conflict(cur, save)
            if conflict is not None:
                return conflict
        delivered = 0
        if save.delivered is not None:
            delivered = _undelivered(cur, [save])[save.run_id]
        cur.execute(_SAVE, _params(save, now, delivered))
        row = cur.fetchone()
        if row is None:
            (error,) = self._explain(cur, [save], now)
            return error
        if delivered:
            _mark_delivered(cur, [save], now)
        saved = RunRecord(*row)
        if save.children:
            _create_children(cur, save, now)
        parent, note = saved.parent_run_id, save.parent_note
        if parent is None or note is None or saved.status not in FINISHED_STATUSES:
            return saved
        if _note_parent(cur, saved, note, now):
            cur.execute("SELECT pg_notify(%s, %s)", (self._channel, parent))  # at commit
            self._noted.append(parent)
        return saved

    def _tell_noted(self) -> None:
        """Tell the listeners of the parents the last transaction left a child's outcome for."""
        noted, self._noted = self._noted, []
        for parent in noted:
            self._tell(parent)

    def children(self, run_id: str) -> list[RunRecord]:
        """Return the child runs of ``run_id``, oldest first (see :meth:`Store.children`)."""
        with self._transaction() as cur:
            cur.execute(
                f"SELECT {_COLUMNS} FROM runs WHERE parent_run_id = %s ORDER BY created_at, run_id",
                (run_id,),
            )
            return [RunRecord(*row) for row in cur.fetchall()]

    def save(self, save: Save, *, now: float) -> RunRecord:
        """Apply one compare-and-swap save in its own transaction (see :meth:`Store.save`).

        One statement in autocommit, but for a save delivering inbox events: then
        one transaction of three (count, save, mark).
        """
        plain = save.delivered is None and not save.children and save.parent_note is None
        with self._transaction(autocommit=plain) as cur:
            result = self._save(cur, save, now)
        self._tell_noted()
        if isinstance(result, StoreError):
            raise result
        return result

    def save_many(self, saves: Sequence[Save], *, now: float) -> list[RunRecord | BaseException]:
        """Apply several saves in one transaction (see :meth:`Store.save_many`).

        Saves of distinct runs go in one statement (:data:`_SAVE_MANY`); a refused
        save matched no row, so it wrote nothing, and the rows of the refused ones
        are then read to explain them. When a run is saved more than once, each
        save must see the one before it, so the group is applied one save at a
        time instead, in ``run_id`` order. Either way rows are locked in ``run_id``
        order, so two groups touching the same runs cannot deadlock.
        """
        if not saves:
            return []
        if len({save.run_id for save in saves}) < len(saves) or any(
            save.children or save.parent_note is not None for save in saves
        ):
            return self._save_each(saves, now)
        with self._transaction() as cur:
            counts = _undelivered(cur, [save for save in saves if save.delivered is not None])
            cur.execute(
                _SAVE_MANY,
                {
                    "delivered": [counts.get(save.run_id, 0) for save in saves],
                    "mailbox_full": [save.mailbox_full for save in saves],
                    "run_id": [save.run_id for save in saves],
                    "expected_version": [save.expected_version for save in saves],
                    "lease_token": [save.lease_token for save in saves],
                    "state": [save.state for save in saves],
                    "status": [save.status for save in saves],
                    "wake_at": [
                        None if save.wake_at is None else float(save.wake_at) for save in saves
                    ],
                    "batch": [save.batch for save in saves],
                    "keep_lease": [
                        save.lease_token is not None and not save.release for save in saves
                    ],
                    "flow": [save.flow for save in saves],
                    "takes_wake": [save.takes_wake for save in saves],
                    "now": now,
                },
            )
            saved = {row[0]: RunRecord(*row) for row in cur.fetchall()}
            _mark_delivered(
                cur,
                [save for save in saves if counts.get(save.run_id) and save.run_id in saved],
                now,
            )
            refused = [save for save in saves if save.run_id not in saved]
            errors = self._explain(cur, refused, now) if refused else []
        explained = {save.run_id: error for save, error in zip(refused, errors, strict=True)}
        return [
            saved[save.run_id] if save.run_id in saved else explained[save.run_id] for save in saves
        ]

    def _save_each(self, saves: Sequence[Save], now: float) -> list[RunRecord | BaseException]:
        """:meth:`save_many` one save at a time, in ``run_id`` order."""
        order = sorted(range(len(saves)), key=lambda index: saves[index].run_id)
        with self._transaction() as cur:
            results = {index: self._save(cur, saves[index], now) for index in order}
        self._tell_noted()
        return [results[index] for index in range(len(saves))]

    def renew(
        self, leases: Sequence[tuple[str, str]], *, now: float, lease_seconds: float
    ) -> set[str]:
        """Extend the leases still held (see :meth:`Store.renew`)."""
        if not leases:
            return set()
        with self._transaction() as cur:
            cur.execute(
                "UPDATE runs SET lease_expires_at = %s"
                " FROM unnest(%s::text[], %s::text[]) AS held (run_id, token)"
                " WHERE runs.run_id = held.run_id AND runs.lease_token = held.token"
                " RETURNING runs.run_id",
                (now + lease_seconds, [run_id for run_id, _ in leases], [t for _, t in leases]),
            )
            return {row[0] for row in cur.fetchall()}

    def wake(self, run_id: str, *, now: float) -> bool:
        """Make a resting run due at ``now`` (see :meth:`Store.wake`)."""
        with self._transaction() as cur:
            cur.execute(
                "UPDATE runs SET woken_at = %(now)s, wake_at = CASE"
                " WHEN wake_at IS NULL OR wake_at > %(now)s THEN %(now)s ELSE wake_at END"
                " WHERE run_id = %(run_id)s AND status = ANY(%(statuses)s::text[])",
                {"now": float(now), "run_id": run_id, "statuses": list(WAKEABLE)},
            )
            if cur.rowcount:
                return True
            if self._find(cur, run_id) is None:
                raise unknown_run(run_id)
        return False

    def release(self, run_id: str, token: str) -> None:
        """Give up a lease, if still held (see :meth:`Store.release`)."""
        with self._transaction() as cur:
            cur.execute(
                "UPDATE runs SET lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"
                " WHERE run_id = %s AND lease_token = %s",
                (run_id, token),
            )

    def park(self, run_id: str, token: str, *, until: float, reason: str) -> bool:
        """Set a run aside until ``until`` and release its lease (see :meth:`Store.park`)."""
        with self._transaction() as cur:
            cur.execute(
                "UPDATE runs SET status = 'parked', wake_at = %s, parked_reason = %s,"
                " lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"
                " WHERE run_id = %s AND lease_token = %s",
                (float(until), reason, run_id, token),
            )
            return bool(cur.rowcount)

    def lease_holders(
        self, *, now: float, flows: Collection[str] | None = None
    ) -> list[LeaseHolder]:
        """Return who holds live leases on due runs (see :meth:`Store.lease_holders`)."""
        with self._transaction() as cur:
            cur.execute(
                "SELECT lease_owner, count(*), max(lease_expires_at) FROM runs"
                " WHERE status = ANY(%(statuses)s::text[]) AND wake_at <= %(now)s"
                f" AND lease_expires_at > %(now)s AND {_FLOWS}"
                " GROUP BY lease_owner ORDER BY lease_owner",
                {"now": now, "flows": _flows(flows), "statuses": list(_CLAIMED)},
            )
            rows = cur.fetchall()
        return [LeaseHolder(str(owner), int(count), float(until)) for owner, count, until in rows]

    def expire_leases(self, owner: str, *, now: float) -> int:
        """Let ``owner``'s live leases expire now (see :meth:`Store.expire_leases`)."""
        with self._transaction() as cur:
            cur.execute(
                "UPDATE runs SET lease_expires_at = %(now)s"
                " WHERE lease_owner = %(owner)s AND lease_expires_at > %(now)s",
                {"now": float(now), "owner": owner},
            )
            return int(cur.rowcount)

    def next_due(self, *, flows: Collection[str] | None = None) -> float | None:
        """Return when an active run next becomes claimable (see :meth:`Store.next_due`)."""
        with self._transaction() as cur:
            # GREATEST ignores NULLs: an unleased run is due at its wake_at.
            cur.execute(
                "SELECT min(GREATEST(wake_at, lease_expires_at)) FROM runs"
                " WHERE status = ANY(%(statuses)s::text[]) AND wake_at IS NOT NULL"
                f" AND {_FLOWS}",
                {"flows": _flows(flows), "statuses": list(ACTIVE_STATUSES)},
            )
            row = cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    _FILTER = (
        " WHERE (%(status)s::text IS NULL OR status = %(status)s)"
        " AND (%(flow)s::text IS NULL OR flow = %(flow)s)"
    )

    def runs(
        self,
        *,
        status: RunStatus | None = None,
        flow: str | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Return runs, filtered, oldest first (see :meth:`Store.runs`)."""
        with self._transaction() as cur:
            cur.execute(
                f"SELECT {_COLUMNS} FROM runs{self._FILTER}"
                " ORDER BY created_at, run_id LIMIT %(limit)s",
                {"status": status, "flow": flow, "limit": None if limit is None else max(limit, 0)},
            )
            return [RunRecord(*row) for row in cur.fetchall()]

    def count(self, *, status: RunStatus | None = None, flow: str | None = None) -> int:
        """Count runs, filtered by status and flow (see :meth:`Store.count`)."""
        with self._transaction() as cur:
            cur.execute(
                f"SELECT count(*) FROM runs{self._FILTER}", {"status": status, "flow": flow}
            )
            row = cur.fetchone()
        return 0 if row is None else int(row[0])

    def history(self, run_id: str) -> list[JournalEntry]:
        """Return the run's journal in ``seq`` order (see :meth:`Store.history`)."""
        with self._transaction() as cur:
            if self._find(cur, run_id) is None:
                raise unknown_run(run_id)
            cur.execute(
                "SELECT run_id, seq, at, batch FROM journal WHERE run_id = %s ORDER BY seq",
                (run_id,),
            )
            return [JournalEntry(*row) for row in cur.fetchall()]

    def close(self) -> None:
        """Close the connection; a later call would open a new one."""
        self._stop_listening()
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # A prefix as LIKE sees it: its wildcards and the escape character escaped.
    _PREFIX = (
        " AND (%(prefix)s::text IS NULL"
        " OR run_id LIKE replace(replace(replace(%(prefix)s::text, '\\', '\\\\'),"
        " '%%', '\\%%'), '_', '\\_') || '%%')"
    )

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
        query = f"SELECT {_COLUMNS} FROM runs{self._FILTER}{self._PREFIX}"
        params: dict[str, Any] = {
            "status": status,
            "flow": flow,
            "prefix": id_prefix or None,
            "limit": max(limit, 0),
        }
        if older_than is not None:
            query += " AND (created_at, run_id) < (%(old_at)s, %(old_id)s::text)"
            params["old_at"], params["old_id"] = older_than
        if newer_than is not None:
            query += " AND (created_at, run_id) > (%(new_at)s, %(new_id)s::text)"
            params["new_at"], params["new_id"] = newer_than
        order = "DESC" if newer_than is None else "ASC"
        query += f" ORDER BY created_at {order}, run_id {order} LIMIT %(limit)s"
        with self._transaction() as cur:
            cur.execute(query, params)
            rows = cur.fetchall()
        if newer_than is not None:
            rows.reverse()
        return [RunRecord(*row) for row in rows]

    def count_by_status(
        self, *, flow: str | None = None, id_prefix: str | None = None
    ) -> dict[str, int]:
        """Count runs by status (see :meth:`Store.count_by_status`)."""
        with self._transaction() as cur:
            cur.execute(
                f"SELECT status, count(*) FROM runs{self._FILTER}{self._PREFIX} GROUP BY status",
                {"status": None, "flow": flow, "prefix": id_prefix or None},
            )
            return {str(status): int(count) for status, count in cur.fetchall()}

    def match_run_ids(self, prefix: str, *, limit: int | None = None) -> list[str]:
        """Return the ids starting with ``prefix``, sorted (see :meth:`Store.match_run_ids`).

        Sorted by code point (``COLLATE "C"``), as the other stores sort them,
        whatever the database's collation.
        """
        with self._transaction() as cur:
            cur.execute(
                'SELECT run_id FROM runs WHERE starts_with(run_id, %s) ORDER BY run_id COLLATE "C"'
                " LIMIT %s",
                (prefix, None if limit is None else max(limit, 0)),
            )
            return [row[0] for row in cur.fetchall()]

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

        Runs are found through the ``(status, updated_at, run_id)`` index by
        keyset; each write is one short transaction (marking up to ``batch`` runs,
        at most 500; removing ``batch`` journal entries; deleting the marked runs)
        that locks only the rows it changes, all of finished runs, which no
        worker saves.
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
        pending = (
            ""
            if runs
            else " AND (journal_pruned_seq IS NULL OR journal_pruned_seq < version"
            " OR EXISTS (SELECT 1 FROM journal WHERE journal.run_id = runs.run_id"
            " AND journal.seq <= runs.journal_pruned_seq))"
        )
        after: tuple[float, str] = (float("-inf"), "")
        still_old = "run_id = ANY(%(ids)s::text[]) AND status = %(status)s AND updated_at < %(old)s"
        while True:
            with self._transaction() as cur:
                cur.execute(
                    "SELECT updated_at, run_id FROM runs WHERE status = %(status)s"
                    " AND updated_at < %(old)s AND (updated_at, run_id) > (%(at)s, %(id)s::text)"
                    f"{pending} ORDER BY updated_at, run_id LIMIT %(limit)s",
                    {
                        "status": status,
                        "old": older_than,
                        "at": after[0],
                        "id": after[1],
                        "limit": min(batch, 500),
                    },
                )
                found = cur.fetchall()
            if not found:
                return PruneResult(pruned, removed, deleted, transactions)
            after = (float(found[-1][0]), str(found[-1][1]))
            params = {
                "ids": [str(row[1]) for row in found],
                "status": status,
                "old": older_than,
                "now": now,
                "batch": batch,
            }
            with self._transaction() as cur:
                cur.execute(
                    "UPDATE runs SET journal_pruned_seq = version, journal_pruned_at = %(now)s,"
                    f" inbox = 0 WHERE {still_old}",
                    params,
                )
                pruned += cur.rowcount
                cur.execute(
                    "DELETE FROM inbox WHERE run_id IN (SELECT run_id FROM runs"
                    f" WHERE {still_old})",
                    params,
                )
            transactions += 1
            while True:
                with self._transaction() as cur:
                    cur.execute(
                        "DELETE FROM journal WHERE (run_id, seq) IN ("
                        "SELECT journal.run_id, journal.seq FROM journal"
                        " JOIN runs ON runs.run_id = journal.run_id"
                        " WHERE journal.run_id = ANY(%(ids)s::text[])"
                        " AND journal.seq <= runs.journal_pruned_seq LIMIT %(batch)s)",
                        params,
                    )
                    gone = cur.rowcount
                transactions += 1
                removed += gone
                if gone < batch:
                    break
            if runs:
                with self._transaction() as cur:
                    cur.execute(
                        f"DELETE FROM runs WHERE {still_old} AND journal_pruned_seq = version",
                        params,
                    )
                    deleted += cur.rowcount
                transactions += 1

    def report_progress(
        self, run_id: str, progress: Any, *, now: float, token: str | None = None
    ) -> bool:
        """Keep the run's progress document (see :meth:`Store.report_progress`).

        One ``UPDATE`` of the two progress columns: the version, state and lease
        are not touched, so the worker's compare-and-swap saves never see it.
        """
        text = dump_progress(progress)
        with self._transaction() as cur:
            cur.execute(
                "UPDATE runs SET progress = %(text)s, progress_at = %(now)s"
                " WHERE run_id = %(run_id)s"
                " AND (%(token)s::text IS NULL OR lease_token = %(token)s::text)",
                {"text": text, "now": float(now), "run_id": run_id, "token": token},
            )
            written = cur.rowcount
            if not written:
                cur.execute("SELECT 1 FROM runs WHERE run_id = %s", (run_id,))
                if cur.fetchone() is None:
                    raise unknown_run(run_id)
        return bool(written)

    def notes(self, run_id: str) -> RunNotes:
        """Return the run's progress and prune mark (see :meth:`Store.notes`)."""
        with self._transaction() as cur:
            cur.execute(
                "SELECT progress, progress_at, journal_pruned_seq, journal_pruned_at"
                " FROM runs WHERE run_id = %s",
                (run_id,),
            )
            row = cur.fetchone()
        if row is None:
            raise unknown_run(run_id)
        progress, progress_at, through, pruned_at = row
        return RunNotes(load_progress(progress), progress_at, through, pruned_at)

    # -- events sent to runs ----------------------------------------------------

    def send_event(
        self, run_id: str, name: str, payload: Any, *, key: str | None = None, now: float
    ) -> bool:
        """Keep an event for the run; make it due now (see :meth:`Store.send_event`).

        The run's row is locked (``FOR UPDATE``) before the event is numbered, so
        sends to one run are serialized and their ``seq`` follows commit order.
        A worker's save of the run waits for the lock, never fails on it.
        """
        text = dump_event(name, payload)
        with self._transaction() as cur:
            cur.execute("SELECT status, inbox FROM runs WHERE run_id = %s FOR UPDATE", (run_id,))
            row = cur.fetchone()
            if row is None:
                raise unknown_run(run_id)
            if key is not None:
                cur.execute("SELECT 1 FROM inbox WHERE run_id = %s AND key = %s", (run_id, key))
                if cur.fetchone() is not None:
                    return False
            error = refusal(run_id, row[0], row[1], name)
            if error is not None:
                raise error
            cur.execute(
                "INSERT INTO inbox (run_id, seq, name, payload, key, sent_at)"
                " SELECT %(run_id)s, COALESCE(max(seq), 0) + 1, %(name)s, %(payload)s,"
                " %(key)s, %(now)s FROM inbox WHERE run_id = %(run_id)s",
                {"run_id": run_id, "name": name, "payload": text, "key": key, "now": float(now)},
            )
            cur.execute("SELECT pg_notify(%s, %s)", (self._channel, run_id))  # at commit
            cur.execute(
                "UPDATE runs SET inbox = inbox + 1,"
                " wake_at = CASE WHEN status IN ('running', 'cancelling')"
                " THEN LEAST(COALESCE(wake_at, %(now)s), %(now)s) ELSE wake_at END"
                " WHERE run_id = %(run_id)s",
                {"run_id": run_id, "now": float(now)},
            )
        self._tell(run_id)
        return True

    def subscribe(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(run_id)`` after each send commits, from any process.

        Besides the sends through this object (see :meth:`Store.subscribe`),
        the sends of other processes to this schema are heard: each send
        notifies a channel (``pg_notify``, delivered at its commit), and while
        this object has listeners, a thread of its own holds a connection that
        listens on it (``LISTEN``). A send through this object may be heard twice.
        Notices sent while that connection is down (it reconnects) are lost:
        workers still find their runs due at their next look.
        """
        remove = Listeners.subscribe(self, listener)
        with self._listeners_lock:
            if self._listening is None:
                self._listening = threading.Event()
                threading.Thread(
                    target=self._listen,
                    args=(self._listening,),
                    name=f"stepflow-listen-{self.schema}",
                    daemon=True,
                ).start()

        def unsubscribe() -> None:
            remove()
            if not self._listeners:
                self._stop_listening()

        return unsubscribe

    def _stop_listening(self) -> None:
        with self._listeners_lock:
            if self._listening is not None:
                self._listening.set()
                self._listening = None

    def _listen(self, stop: threading.Event) -> None:
        """Tell the listeners of each send notified on the channel, until ``stop``."""
        import psycopg
        from psycopg import sql

        while not stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    while not stop.is_set():
                        for notice in conn.notifies(timeout=0.5):
                            self._tell(notice.payload)
            except psycopg.Error as exc:  # noqa: PERF203 - a reconnection, rare
                if stop.is_set():
                    return
                log.warning("listening for sent events failed (%s); listening again", exc)
                stop.wait(1.0)

    def pending_events(self, run_id: str, *, limit: int) -> list[InboxEvent]:
        """Return the run's undelivered events, oldest first (see :meth:`Store.pending_events`)."""
        with self._transaction() as cur:
            cur.execute(
                "SELECT seq, name, payload, key, sent_at FROM inbox"
                " WHERE run_id = %s AND delivered_at IS NULL ORDER BY seq LIMIT %s",
                (run_id, max(limit, 0)),
            )
            rows = cur.fetchall()
            if not rows:
                cur.execute("SELECT 1 FROM runs WHERE run_id = %s", (run_id,))
                if cur.fetchone() is None:
                    raise unknown_run(run_id)
        return [
            InboxEvent(int(seq), name, load_payload(payload), key, float(sent_at))
            for seq, name, payload, key, sent_at in rows
        ]


def _undelivered(cur: psycopg.Cursor[tuple[Any, ...]], saves: Sequence[Save]) -> dict[str, int]:
    """Count each save's run's undelivered inbox events up to its ``delivered``."""
    if not saves:
        return {}
    cur.execute(
        "SELECT given.run_id, count(inbox.seq) FROM unnest(%s::text[], %s::bigint[])"
        " AS given (run_id, upto) LEFT JOIN inbox ON inbox.run_id = given.run_id"
        " AND inbox.seq <= given.upto AND inbox.delivered_at IS NULL GROUP BY given.run_id",
        ([save.run_id for save in saves], [save.delivered for save in saves]),
    )
    return {str(run_id): int(count) for run_id, count in cur.fetchall()}


def _mark_delivered(
    cur: psycopg.Cursor[tuple[Any, ...]], saves: Sequence[Save], now: float
) -> None:
    """Mark the inbox events ``saves`` delivered (in their transaction)."""
    if not saves:
        return
    cur.execute(
        "UPDATE inbox SET delivered_at = %s FROM unnest(%s::text[], %s::bigint[])"
        " AS given (run_id, upto) WHERE inbox.run_id = given.run_id"
        " AND inbox.seq <= given.upto AND inbox.delivered_at IS NULL",
        (now, [save.run_id for save in saves], [save.delivered for save in saves]),
    )
