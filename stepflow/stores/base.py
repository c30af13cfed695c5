"""The storage contract every run store implements.

A store keeps, for each run: its serialized state (the text :func:`stepflow.dumps`
wrote), a compare-and-swap ``version``, a few indexed columns copied out of the
state (status, flow, ``wake_at``), the run's JSON input, a lease, and an
append-only journal of the effect batches applied to it.

Rules every implementation keeps:

* **Compare-and-swap.** :meth:`Store.save` succeeds only when the stored version
  equals ``expected_version`` *and* the caller still holds the lease it names (or
  names none and the run is not leased by anyone else). Otherwise it raises
  :class:`~stepflow.errors.StaleWriteError` and changes nothing.
* **One transaction per save.** The new state, its columns and the journal entry
  are written together or not at all. :meth:`Store.save_many` writes several
  saves in one transaction (group commit); each save in it is still checked on
  its own, and a stale one is reported without failing the others.
* **Leases expire.** :meth:`Store.claim_due` hands out runs whose ``wake_at`` is
  due and whose lease is free or expired; a worker that died loses its runs when
  its leases expire, and another worker claims them.
* **Nothing is deleted, but by a prune.** Journal entries are never changed or
  removed, except by :meth:`Store.prune`, which removes the journals (and, if
  asked, the rows) of *finished* runs past their retention, a small batch per
  transaction, and marks each such run (see :class:`RunNotes`).
* **Progress is beside the state.** :meth:`Store.report_progress` keeps one
  small JSON document per run (the last one reported), outside the journal and
  the compare-and-swap: it never changes a run's version.
* **A bad row stops nobody.** A column of one run that cannot be read (input
  that is not JSON, text that is not UTF-8) never fails a call about other runs:
  the run's record comes back with ``unreadable`` set to an
  :class:`~stepflow.errors.UnreadableRunError`, and a worker parks it.
* **Events wait in an inbox.** :meth:`Store.send_event` keeps an event for a
  run beside it (never touching its state, version or lease, so it never meets
  a :class:`~stepflow.errors.StaleWriteError`), counts it in the run's
  ``inbox`` and makes a running run due at once; a worker delivers it in a save
  naming it (``Save.delivered``), which marks it delivered in the same
  transaction. A run saved while events wait for it stays due (its ``wake_at``
  is at most the save's time), so no event is stranded.
* **Parked runs wait aside.** :meth:`Store.park` sets a run's status to
  ``"parked"`` with a reason, out of the way until a later ``wake_at``, and
  releases its lease, changing neither its state nor its version. A parked run
  is claimed again when that time comes (after the running ones), and its next
  save makes it running (or whatever its state says) again.

Times are floats, seconds since the Unix epoch, passed in by the caller: a store
never reads a clock, so tests can drive it with a fake one.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, Literal, Protocol, runtime_checkable

import attrs

from stepflow.errors import UnreadableRunError
from stepflow.stores._schedules import ScheduleStore

__all__ = [
    "ACTIVE_STATUSES",
    "FINISHED_STATUSES",
    "INBOX_LIMIT",
    "MAX_EVENT_BYTES",
    "MAX_PROGRESS_BYTES",
    "RUN_COLUMNS",
    "RUN_STATUSES",
    "ChildRun",
    "InboxEvent",
    "JournalEntry",
    "Lease",
    "LeaseHolder",
    "PruneResult",
    "RunKey",
    "RunNotes",
    "RunRecord",
    "RunStatus",
    "Save",
    "Store",
    "prefix_upper_bound",
]

#: A run's status in the store: its state's status (``"running"``, ``"cancelling"``,
#: ``"completed"``, ``"failed"``, ``"cancelled"``), or ``"parked"`` (set aside by a
#: worker that could not drive it; see :meth:`Store.park`).
RunStatus = Literal["running", "cancelling", "completed", "failed", "cancelled", "parked"]

#: Every store status, in the order listings show them.
RUN_STATUSES: tuple[RunStatus, ...] = (
    "running",
    "cancelling",
    "parked",
    "failed",
    "completed",
    "cancelled",
)

#: The statuses of runs a worker advances: claimed when due, like a running run.
#: A ``"cancelling"`` run has commands in flight and cleanups to run.
ACTIVE_STATUSES: tuple[RunStatus, ...] = ("running", "cancelling")

#: The statuses of finished runs: the only runs :meth:`Store.prune` touches.
FINISHED_STATUSES: tuple[RunStatus, ...] = ("completed", "failed", "cancelled")

#: The largest progress document a store keeps, in bytes of compact UTF-8 JSON.
MAX_PROGRESS_BYTES = 4096

#: The most events a run may hold undelivered; :meth:`Store.send_event` refuses
#: more with :class:`~stepflow.errors.InboxFullError`.
INBOX_LIMIT = 1000

#: The largest event payload a store keeps, in bytes of compact UTF-8 JSON.
MAX_EVENT_BYTES = 64 * 1024

#: Where a run sits in the newest-first order of :meth:`Store.page_runs`: its
#: ``(created_at, run_id)``. A page's last run's key asks for the page after it.
RunKey = tuple[float, str]


def prefix_upper_bound(prefix: str) -> str | None:
    """Return the least string above every string that starts with ``prefix``.

    The SQL stores select ids by prefix as a range of their primary key,
    ``prefix <= run_id < bound``, which an index answers; ``None`` means no upper
    bound (a prefix of only the highest code point). Code point order is the
    order of SQLite's binary collation (UTF-8 bytes compare in code point order).

    >>> prefix_upper_bound("ab")
    'ac'
    >>> prefix_upper_bound("a\U0010ffff")
    'b'
    """
    chars = list(prefix)
    while chars and chars[-1] == "\U0010ffff":
        chars.pop()
    if not chars:
        return None
    last = ord(chars[-1])
    # Surrogates cannot be stored as UTF-8 text: the next code point above U+D7FF is U+E000.
    chars[-1] = chr(0xE000 if last == 0xD7FF else last + 1)
    return "".join(chars)


@attrs.frozen
class RunRecord:
    """One run as stored.

    Attributes:
        run_id: The run's id, unique in the store.
        flow: The flow's name (its versioned root scope, ``"deploy/v1"``).
        status: ``"running"``, ``"cancelling"``, ``"completed"``, ``"failed"``,
            ``"cancelled"`` or ``"parked"`` (see :data:`RunStatus`).
        state: The serialized state (:func:`stepflow.dumps`).
        version: Compare-and-swap version: 1 when created, +1 on every save.
        wake_at: When the run next wants to run (``None``: never, it is finished
            or cancelled). A running run that can run now has ``wake_at <= now``.
        input: The JSON document given when the run was started.
        created_at: When the run was created.
        updated_at: When it was last saved.
        lease_owner: The worker holding the lease, or ``None``.
        lease_token: The token of the current lease, or ``None``.
        lease_expires_at: When the current lease expires, or ``None``.
        parked_reason: Why a worker parked the run (``status == "parked"``), or
            ``None``.
        woken_at: When :meth:`Store.wake` last woke the run, until a worker
            takes the wake in (see :attr:`Save.takes_wake`); ``None`` otherwise.
        inbox: How many events sent to the run wait to be delivered (see
            :meth:`Store.send_event`).
        deadline_at: When the run must be over (``start_run(deadline=)``), or
            ``None``. The store only keeps it: the runtime keeps the run's
            ``wake_at`` no later than it while the run is running, and the
            worker that claims it past it cancels it.
        parent_run_id: For a child run (a ``call`` step's), its parent's id;
            ``None`` otherwise. Indexed: :meth:`Store.children` lists a run's
            children.
        parent_command: For a child run, the id of the parent's
            :class:`~stepflow.core.messages.StartChild` command that started it.
        unreadable: Why a column of the row cannot be read, or ``None``: the
            record is then incomplete (an unreadable input reads as ``None``).
            Not a column; never part of equality.

    """

    run_id: str
    flow: str
    status: RunStatus
    state: str
    version: int
    wake_at: float | None
    input: Any
    created_at: float
    updated_at: float
    lease_owner: str | None = None
    lease_token: str | None = None
    lease_expires_at: float | None = None
    parked_reason: str | None = None
    woken_at: float | None = None
    inbox: int = 0
    deadline_at: float | None = None
    parent_run_id: str | None = None
    parent_command: int | None = None
    unreadable: UnreadableRunError | None = attrs.field(default=None, eq=False)


#: The columns of a run's row, in :class:`RunRecord`'s order (``unreadable`` is not one).
RUN_COLUMNS: tuple[str, ...] = tuple(
    field.name for field in attrs.fields(RunRecord) if field.name != "unreadable"
)


@attrs.frozen
class LeaseHolder:
    """A worker holding live leases on due runs (see :meth:`Store.lease_holders`).

    Attributes:
        owner: The worker's name in its leases (``Worker.owner``).
        runs: How many due runs it holds.
        until: When the last of those leases expires unless renewed.

    """

    owner: str
    runs: int
    until: float


@attrs.frozen
class Lease:
    """A claim on a run, handed out by :meth:`Store.claim_due`.

    Attributes:
        run: The run as it was when claimed (its ``version`` is what the next save
            must name as ``expected_version``).
        token: The lease token, named by every save made under this lease.
        expires_at: When the lease lapses unless renewed.
        taken_from: The owner whose lease on the run had expired without being
            released (a takeover), or ``None``.

    """

    run: RunRecord
    token: str
    expires_at: float
    taken_from: str | None = None


@attrs.frozen
class JournalEntry:
    """One effect batch applied to a run: an append-only history record.

    Attributes:
        run_id: The run.
        seq: The run's version after this batch was applied. Unique per run: the
            journal's primary key is ``(run_id, seq)``, so a batch can never be
            recorded (or applied) twice.
        at: When the batch was applied.
        batch: The batch as JSON text (:func:`stepflow.codec.dumps_batch`).

    """

    run_id: str
    seq: int
    at: float
    batch: str


@attrs.frozen
class ChildRun:
    """A child run a parent's :class:`Save` creates, in the same transaction.

    Attributes:
        run_id: The child's id.
        flow: Its flow's name.
        state: Its first serialized state (its first command issued).
        status: Its status (``"running"``).
        wake_at: When it is due (usually the save's time).
        input: Its JSON input.
        command: The id of the parent's ``StartChild`` command.
        batch: Its first journal entry (seq 1), or ``None``.

    """

    run_id: str
    flow: str
    state: str
    status: RunStatus
    wake_at: float | None
    input: Any
    command: int
    batch: str | None = None


@attrs.frozen
class Save:
    """One compare-and-swap write of a run's new state.

    Attributes:
        run_id: The run to write.
        expected_version: The version the writer read; the save fails if the
            stored version differs.
        lease_token: The writer's lease token, or ``None`` for a write outside a
            lease (the CLI's resume and cancel), which fails while another
            holder's lease is live.
        state: The new serialized state.
        status: The run's new status.
        wake_at: When the run next wants to run, or ``None``.
        batch: The journal entry's batch text, or ``None`` to write no entry (a
            save that applied no effects, such as the first issue of a command).
        release: Whether to give up the lease in the same transaction.
        flow: The run's new flow name, when a newer version of its flow adopts
            it (a migration); ``None`` keeps the name.
        takes_wake: Whether the writer takes in the run's pending wake (it
            read ``woken_at`` and acts on it): ``woken_at`` is cleared. Any
            other save of a running run keeps a pending wake, and its
            ``wake_at`` is then no later than ``woken_at`` (see
            :meth:`Store.wake`).
        delivered: The ``seq`` of the last inbox event this save's batch
            delivered (see :meth:`Store.pending_events`), or ``None``. The
            run's undelivered events up to it are marked delivered in the same
            transaction, and its ``inbox`` count goes down by as many.
        mailbox_full: The new state's mailbox can take no more events: the
            events still undelivered do not make the run due by this save (a
            later send still does). Otherwise a running (or cancelling) run
            that still has undelivered events after the save is due by the
            save's time.
        children: Child runs to create in the same transaction, with this run
            as their parent (a ``call`` step's, see :class:`ChildRun`). A child
            id that already names a child of this run is not created again; one
            that names any other run fails the save with
            :class:`~stepflow.errors.RunExistsError`, writing nothing.
        parent_note: For a save that finishes a child run (completed, failed
            or cancelled): the JSON text of its outcome, left in its parent's
            inbox under the name :data:`~stepflow.stores._inbox.CHILD_EVENT`
            (keyed by the child's id: once) in the same transaction, which
            makes the parent due. Ignored for a run with no parent, or whose
            parent is finished.

    """

    run_id: str
    expected_version: int
    lease_token: str | None
    state: str
    status: RunStatus
    wake_at: float | None
    batch: str | None = None
    release: bool = False
    flow: str | None = None
    takes_wake: bool = False
    delivered: int | None = None
    mailbox_full: bool = False
    children: tuple[ChildRun, ...] = ()
    parent_note: str | None = None


@attrs.frozen
class InboxEvent:
    """An event sent to a run and not delivered yet (see :meth:`Store.pending_events`).

    Attributes:
        seq: Its place in the run's inbox: 1, 2, ... in the order sent.
        name: The event's name.
        payload: Its JSON payload.
        key: The sender's idempotency key, or ``None``.
        sent_at: When it was sent.

    """

    seq: int
    name: str
    payload: Any
    key: str | None
    sent_at: float


@attrs.frozen
class PruneResult:
    """What :meth:`Store.prune` removed.

    Attributes:
        runs: How many runs had their journal pruned.
        journal_entries: How many journal entries were removed.
        runs_deleted: How many runs were removed altogether (``runs=True``).
        transactions: How many write transactions the prune took (each one short).

    """

    runs: int = 0
    journal_entries: int = 0
    runs_deleted: int = 0
    transactions: int = 0


@attrs.frozen
class RunNotes:
    """What a store keeps beside a run's state: its progress, and its journal's retention.

    Attributes:
        progress: The last progress document reported for the run (JSON data),
            or ``None`` when none was.
        progress_at: When it was reported, or ``None``.
        pruned_through: The journal entries up to this ``seq`` were removed by
            :meth:`Store.prune` (``None``: the journal is whole).
        pruned_at: When they were removed, or ``None``.

    """

    progress: Any = None
    progress_at: float | None = None
    pruned_through: int | None = None
    pruned_at: float | None = None


@runtime_checkable
class Store(ScheduleStore, Protocol):
    """Durable storage for runs: the contract the worker and the CLI rely on.

    Implementations: :class:`~stepflow.stores.memory.MemoryStore`,
    :class:`~stepflow.stores.sqlite.SQLiteStore`,
    :class:`~stepflow.stores.postgres.PostgresStore`. Open one from a URL with
    :func:`stepflow.stores.open_store`. Methods are synchronous; the worker calls
    them from one dedicated thread. The schedule operations come from
    :class:`~stepflow.stores._schedules.ScheduleStore`.
    """

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
        """Create a run at version 1 and return it.

        With ``batch``, the run's journal starts with that entry, at seq 1 (the
        runtime records the run's first state there, so its history is whole).
        ``deadline_at`` is kept as the run's :attr:`RunRecord.deadline_at`.

        Raises:
            RunExistsError: a run with this id exists.

        """
        ...

    def load(self, run_id: str) -> RunRecord:
        """Return the run as stored now.

        Raises:
            UnknownRunError: no run has this id.

        """
        ...

    def claim_due(
        self,
        *,
        now: float,
        limit: int,
        owner: str,
        lease_seconds: float,
        flows: Collection[str] | None = None,
    ) -> list[Lease]:
        """Lease up to ``limit`` active runs with ``wake_at <= now``, earliest first.

        Active: running or cancelling (:data:`ACTIVE_STATUSES`); then parked
        ones, if there is room (see :meth:`park`).

        Only runs whose lease is free or expired (``lease_expires_at <= now``) are
        claimed; with ``flows``, only runs of those flow names (an empty collection
        claims nothing). Ties in ``wake_at`` go by ``run_id``. Each gets a new,
        unique lease token; the claim does not change the run's version. On
        PostgreSQL this is ``FOR UPDATE SKIP LOCKED``, so concurrent workers never
        claim the same run.
        """
        ...

    def save(self, save: Save, *, now: float) -> RunRecord:
        """Apply one compare-and-swap save in its own transaction; return the new run.

        A lease is held until it is released or another claim replaces it, so its
        holder may still save after its expiry if nobody claimed the run. A save
        naming no lease clears any (expired) lease left on the run; ``release``
        clears the lease in the same transaction.

        Raises:
            StaleWriteError: the version moved on, or the lease was lost; nothing
                was written.
            UnknownRunError: no run has this id.

        """
        ...

    def save_many(self, saves: Sequence[Save], *, now: float) -> list[RunRecord | BaseException]:
        """Apply several saves in one transaction (group commit).

        Returns, in order, the new run or the error (``StaleWriteError``,
        ``UnknownRunError``) of each save; a stale save changes nothing and does not
        stop the others.
        """
        ...

    def renew(
        self, leases: Sequence[tuple[str, str]], *, now: float, lease_seconds: float
    ) -> set[str]:
        """Extend the leases ``(run_id, token)`` still held; return the run ids renewed.

        Each renewed lease then expires at ``now + lease_seconds``.
        """
        ...

    def wake(self, run_id: str, *, now: float) -> bool:
        """Make a resting run due at ``now``, without touching its state or its lease.

        Sets ``woken_at`` to ``now`` and brings ``wake_at`` forward to ``now``.
        Never refused by a lease (no version change, no
        :class:`~stepflow.errors.StaleWriteError`): while a worker holds the
        run, the wake stays pending, and every save of the run keeps its
        ``wake_at`` no later than the wake, so the run is due again as soon as
        the holder releases it (or its lease ends). A worker that claims a
        woken run journals the wake and takes it in (``Save.takes_wake``).

        Returns:
            ``True`` if the run was woken; ``False`` if it is finished
            (completed, failed or cancelled): nothing to wake, nothing changed.

        Raises:
            UnknownRunError: no run has this id.

        """
        ...

    def release(self, run_id: str, token: str) -> None:
        """Give up a lease (a no-op if it was already lost)."""
        ...

    def park(self, run_id: str, token: str, *, until: float, reason: str) -> bool:
        """Set a run this lease holder cannot drive aside until ``until``; release the lease.

        The status becomes ``"parked"`` and ``parked_reason`` says why; the state,
        the version and the journal are not touched, so nothing is lost. The run
        is claimed again from ``until`` on, and its next save (by a worker that
        can drive it) clears the mark.

        Returns:
            Whether the run was parked (``False``: the lease was lost already).

        """
        ...

    def lease_holders(
        self, *, now: float, flows: Collection[str] | None = None
    ) -> list[LeaseHolder]:
        """Return who holds live leases on due runs (of ``flows``), by owner.

        These are the runs a worker would claim but must wait for: it logs them,
        and takes back those held under its own ``worker_id`` by a process that
        is gone (see :meth:`expire_leases`).
        """
        ...

    def expire_leases(self, owner: str, *, now: float) -> int:
        """Let every live lease held by ``owner`` expire at ``now``; return how many.

        For a worker that knows ``owner`` is a process that is gone: its runs can
        be claimed at once instead of after the lease length. The lease tokens are
        kept until the runs are claimed, so a save naming one is refused from then
        on (the fence); a live holder would lose its runs, never corrupt them.
        """
        ...

    def next_due(self, *, flows: Collection[str] | None = None) -> float | None:
        """Return the earliest time an active run becomes claimable, or ``None``.

        That is ``wake_at`` for an unleased run and ``max(wake_at,
        lease_expires_at)`` for a leased one; the worker sleeps until then.
        """
        ...

    def children(self, run_id: str) -> list[RunRecord]:
        """Return the child runs ``run_id`` started (``call`` steps), oldest first.

        Read through the index on :attr:`RunRecord.parent_run_id`; an unknown
        run has none.
        """
        ...

    def runs(
        self,
        *,
        status: RunStatus | None = None,
        flow: str | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Return runs, filtered by status and flow, oldest first."""
        ...

    def count(self, *, status: RunStatus | None = None, flow: str | None = None) -> int:
        """Count runs, filtered by status and flow."""
        ...

    def history(self, run_id: str) -> list[JournalEntry]:
        """Return the run's journal, in ``seq`` order.

        Raises:
            UnknownRunError: no run has this id.
            UnreadableRunError: an entry of the journal cannot be read.

        """
        ...

    def close(self) -> None:
        """Release connections and files."""
        ...

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
        """Return one page of runs, newest first: keyset pagination for the console.

        Runs are ordered by ``(created_at, run_id)`` descending. With
        ``older_than``, the page holds the ``limit`` runs just after that key in
        this order (the next page); with ``newer_than``, the ``limit`` runs just
        before it (the previous page), still newest first. Filters combine: a
        status, a flow name, and a prefix of the run id (``""`` matches every id).
        The SQL stores answer through indexes on ``(created_at, run_id)``, by
        status and by flow, and the id's primary key for a prefix, so a page
        costs the same at the first run and at the millionth, where ``OFFSET``
        would scan every run before it.
        """
        ...

    def count_by_status(
        self, *, flow: str | None = None, id_prefix: str | None = None
    ) -> dict[str, int]:
        """Count runs by status, filtered by flow name and id prefix.

        Returns ``{status: count}`` with only the statuses that have runs.
        """
        ...

    def match_run_ids(self, prefix: str, *, limit: int | None = None) -> list[str]:
        """Return the ids of the runs whose id starts with ``prefix``, in code point order.

        The empty prefix matches every run. With ``limit``, at most that many ids
        are returned (the first ones in that order). Only the ``run_id`` column is
        read, so a run whose other columns cannot be decoded is still found: the
        CLI resolves the short ids it prints with this, and lists unreadable runs.
        """
        ...

    def prune(
        self,
        older_than: float,
        *,
        now: float,
        status: RunStatus | None = "completed",
        runs: bool = False,
        batch: int = 1000,
    ) -> PruneResult:
        """Remove the journals of finished runs last saved before ``older_than``.

        Only runs of ``status`` (``None``: every finished status, see
        :data:`FINISHED_STATUSES`) whose ``updated_at`` is before ``older_than``
        are touched; a running or parked run never is. Each such run is marked
        pruned through its current version (at ``now``, see :meth:`notes`), then
        its journal entries up to that version are removed, ``batch`` entries per
        transaction, so no write lock is held for long and workers saving other
        runs wait at most one small transaction. A run saved again meanwhile (a
        failed run resumed) keeps its later entries and is not deleted. With
        ``runs``, the runs themselves are then deleted too (their rows, progress
        and all). A prune interrupted halfway leaves every run either whole or
        marked, and a second prune finishes the job.

        Raises:
            ConfigurationError: ``status`` is not a finished status, ``batch`` is
                below 1, or ``older_than`` is not a finite number.

        """
        ...

    def report_progress(
        self, run_id: str, progress: Any, *, now: float, token: str | None = None
    ) -> bool:
        """Keep ``progress`` as the run's progress document, replacing the previous one.

        The document is written in its own small update of the run's row that
        leaves its state, version and lease alone, so it never conflicts with the
        compare-and-swap saves of the worker driving the run. With ``token``, it
        is written only while that lease is held (a worker that lost the run
        cannot overwrite its new holder's progress).

        Returns:
            Whether it was written (``False``: ``token`` is not the run's lease).

        Raises:
            ProgressError: ``progress`` is not JSON data, holds NaN or an
                infinity, or takes more than :data:`MAX_PROGRESS_BYTES`.
            UnknownRunError: no run has this id.

        """
        ...

    def notes(self, run_id: str) -> RunNotes:
        """Return the run's progress document and whether its journal was pruned.

        Raises:
            UnknownRunError: no run has this id.

        """
        ...

    # -- events sent to runs (stepflow.send_event) --------------------------------

    def send_event(
        self, run_id: str, name: str, payload: Any, *, key: str | None = None, now: float
    ) -> bool:
        """Keep an event for the run until a worker delivers it; make the run due now.

        It is accepted whatever the run is doing, leased or not: it touches
        neither the run's state, nor its version, nor its lease, only its
        ``inbox`` count and, for a running run, its ``wake_at`` (which becomes
        ``now`` unless earlier), in one transaction. With ``key``, a second send
        of the same key to the same run changes nothing, even once the first
        was delivered or the run finished. Listeners (see :meth:`subscribe`)
        are told after the commit.

        Returns:
            ``True`` when the event was kept; ``False`` for a duplicate ``key``.

        Raises:
            UnknownRunError: no run has this id.
            RunFinishedError: the run is completed, failed or cancelled.
            InboxFullError: the run holds :data:`INBOX_LIMIT` undelivered events.
            EventError: the name is empty or holds ``:``, or the payload is not
                JSON data or takes more than :data:`MAX_EVENT_BYTES`.

        """
        ...

    def pending_events(self, run_id: str, *, limit: int) -> list[InboxEvent]:
        """Return up to ``limit`` of the run's undelivered events, oldest first.

        Raises:
            UnknownRunError: no run has this id.

        """
        ...

    def subscribe(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(run_id)`` after each event sent through this store object commits.

        For a worker in the same process to wake at once instead of at its
        next poll. The listener runs on the sender's thread: it must be quick
        and thread-safe (``loop.call_soon_threadsafe``). Other processes'
        sends are heard only where the database can tell (PostgreSQL's
        ``LISTEN/NOTIFY``); elsewhere their runs are found due by ``wake_at``.

        Returns:
            A function that removes the listener.

        """
        ...
