"""MemoryStore: the reference store, in dicts, under one lock.

It applies the save rule shared by every store (:mod:`stepflow.stores._rules`)
and keeps the same journal, lease and status semantics as the SQL stores, so
tests and single-process tools can use it in their place.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from typing import Any

import attrs

from stepflow.errors import StoreError
from stepflow.stores._inbox import (
    CHILD_EVENT,
    Listeners,
    dump_event,
    inbox_wake_at,
    load_payload,
    refusal,
)
from stepflow.stores._rules import (
    WAKEABLE,
    apply_save,
    check_prune,
    check_save,
    dump_input,
    dump_progress,
    lease_is_live,
    load_input,
    load_progress,
    new_lease_token,
    run_exists,
    unknown_run,
    woken,
)
from stepflow.stores._schedules import MemorySchedules
from stepflow.stores.base import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
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

__all__ = ["MemoryStore"]

# The statuses claimed, in the order claimed: running runs first, then cancelling
# ones, then parked ones (as the SQL stores' index scans go).
_CLAIMABLE = {"running": 0, "cancelling": 1, "parked": 2}


def _due_order(run: RunRecord) -> tuple[float, str]:
    assert run.wake_at is not None  # only due runs are sorted
    return (run.wake_at, run.run_id)


@attrs.define
class _Sent:
    """An event in a memory store's inbox (its payload as JSON text)."""

    event: InboxEvent
    delivered_at: float | None = None


class MemoryStore(Listeners, MemorySchedules):
    """A :class:`~stepflow.stores.base.Store` in process memory, for tests and trials.

    It keeps the same rules as the durable stores (compare-and-swap, leases, an
    append-only journal) under one :class:`threading.Lock`, and loses everything
    when the process ends. Inputs are kept as JSON text, so a caller never shares
    a mutable document with the store.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Records here hold their input as JSON text; _out decodes a fresh copy.
        self._runs: dict[str, RunRecord] = {}
        self._journal: dict[str, list[JournalEntry]] = {}
        # Progress (as JSON text) and prune marks, by run id; absent: none yet.
        self._notes: dict[str, RunNotes] = {}
        # Each run's inbox, in seq order (seq = place + 1), and its keys' seqs.
        self._inbox: dict[str, list[_Sent]] = {}
        self._keys: dict[tuple[str, str], int] = {}
        # Parents a save left a child's outcome for: told after the lock is let go.
        self._noted: list[str] = []

    @staticmethod
    def _out(run: RunRecord) -> RunRecord:
        value, unreadable = load_input(run.run_id, run.input)
        return attrs.evolve(run, input=value, unreadable=unreadable)

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
        run = RunRecord(
            run_id=run_id,
            flow=flow,
            status=status,
            state=state,
            version=1,
            wake_at=None if wake_at is None else float(wake_at),
            input=dump_input(input),
            created_at=float(now),
            updated_at=float(now),
            deadline_at=None if deadline_at is None else float(deadline_at),
        )
        with self._lock:
            if run_id in self._runs:
                raise run_exists(run_id)
            self._runs[run_id] = run
            self._journal[run_id] = (
                [] if batch is None else [JournalEntry(run_id, 1, float(now), batch)]
            )
        return self._out(run)

    def load(self, run_id: str) -> RunRecord:
        """Return the run as stored now (see :meth:`Store.load`)."""
        with self._lock:
            run = self._runs.get(run_id)
        if run is None:
            raise unknown_run(run_id)
        return self._out(run)

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
        leases = []
        with self._lock:
            due = sorted(
                (
                    run
                    for run in self._runs.values()
                    if run.status in _CLAIMABLE
                    and run.wake_at is not None
                    and run.wake_at <= now
                    and not lease_is_live(run, now)
                    and (flows is None or run.flow in flows)
                ),
                # Active runs first, then parked ones (see Store.park).
                key=lambda run: (_CLAIMABLE[run.status], *_due_order(run)),
            )
            for run in due[: max(limit, 0)]:
                token = new_lease_token()
                claimed = attrs.evolve(
                    run, lease_owner=owner, lease_token=token, lease_expires_at=expires_at
                )
                self._runs[run.run_id] = claimed
                leases.append(
                    Lease(self._out(claimed), token, expires_at, taken_from=run.lease_owner)
                )
        return leases

    def _save(self, save: Save, now: float) -> RunRecord | StoreError:
        """Apply ``save``, or return why it may not be applied (writing nothing)."""
        run = self._runs.get(save.run_id)
        error = check_save(run, save, now)
        if error is not None:
            return error
        assert run is not None  # check_save refuses a missing run
        for child in save.children:
            found = self._runs.get(child.run_id)
            if found is not None and found.parent_run_id != save.run_id:
                return run_exists(child.run_id)
        for child in save.children:
            if child.run_id not in self._runs:
                self._runs[child.run_id] = RunRecord(
                    run_id=child.run_id,
                    flow=child.flow,
                    status=child.status,
                    state=child.state,
                    version=1,
                    wake_at=child.wake_at,
                    input=dump_input(child.input),
                    created_at=float(now),
                    updated_at=float(now),
                    parent_run_id=save.run_id,
                    parent_command=child.command,
                )
                entries = [] if child.batch is None else [child.batch]
                self._journal[child.run_id] = [
                    JournalEntry(child.run_id, 1, float(now), b) for b in entries
                ]
        sent = self._inbox.get(run.run_id, ()) if save.delivered is not None else ()
        delivered = [one for one in sent[: save.delivered] if one.delivered_at is None]
        new = apply_save(run, save, float(now), len(delivered))
        for one in delivered:
            one.delivered_at = float(now)
        self._runs[run.run_id] = new
        if save.batch is not None:
            self._journal[run.run_id].append(
                JournalEntry(run_id=run.run_id, seq=new.version, at=float(now), batch=save.batch)
            )
        parent = new.parent_run_id
        if parent is not None and save.parent_note is not None and new.status in FINISHED_STATUSES:
            self._note_parent(parent, new.run_id, save.parent_note, float(now))
        return self._out(new)

    def _note_parent(self, parent_id: str, child_id: str, note: str, now: float) -> None:
        """Leave a finished child's outcome in its parent's inbox (the caller holds the lock)."""
        parent = self._runs.get(parent_id)
        if parent is None or parent.status in FINISHED_STATUSES:
            return
        if (parent_id, child_id) in self._keys:
            return
        sent = self._inbox.setdefault(parent_id, [])
        event = InboxEvent(len(sent) + 1, CHILD_EVENT, note, child_id, now)
        sent.append(_Sent(event))
        self._keys[(parent_id, child_id)] = event.seq
        inbox = parent.inbox + 1
        wake_at = now if parent.wake_at is None else min(parent.wake_at, now)
        self._runs[parent_id] = attrs.evolve(parent, inbox=inbox, wake_at=wake_at)
        self._noted.append(parent_id)

    def children(self, run_id: str) -> list[RunRecord]:
        """Return the child runs of ``run_id``, oldest first (see :meth:`Store.children`)."""
        with self._lock:
            found = [r for r in self._runs.values() if r.parent_run_id == run_id]
        return [self._out(r) for r in sorted(found, key=lambda r: (r.created_at, r.run_id))]

    def save(self, save: Save, *, now: float) -> RunRecord:
        """Apply one compare-and-swap save (see :meth:`Store.save`)."""
        with self._lock:
            result = self._save(save, now)
            noted, self._noted = self._noted, []
        for parent in noted:
            self._tell(parent)
        if isinstance(result, StoreError):
            raise result
        return result

    def save_many(self, saves: Sequence[Save], *, now: float) -> list[RunRecord | BaseException]:
        """Apply several saves at once (see :meth:`Store.save_many`)."""
        with self._lock:
            results: list[RunRecord | BaseException] = [self._save(save, now) for save in saves]
            noted, self._noted = self._noted, []
        for parent in noted:
            self._tell(parent)
        return results

    def renew(
        self, leases: Sequence[tuple[str, str]], *, now: float, lease_seconds: float
    ) -> set[str]:
        """Extend the leases still held (see :meth:`Store.renew`)."""
        renewed = set()
        with self._lock:
            for run_id, token in leases:
                run = self._runs.get(run_id)
                if run is not None and run.lease_token == token:
                    self._runs[run_id] = attrs.evolve(
                        run, lease_expires_at=float(now + lease_seconds)
                    )
                    renewed.add(run_id)
        return renewed

    def wake(self, run_id: str, *, now: float) -> bool:
        """Make a resting run due at ``now`` (see :meth:`Store.wake`)."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise unknown_run(run_id)
            if run.status not in WAKEABLE:
                return False
            self._runs[run_id] = woken(run, now)
        return True

    def release(self, run_id: str, token: str) -> None:
        """Give up a lease, if still held (see :meth:`Store.release`)."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is not None and run.lease_token == token:
                self._runs[run_id] = attrs.evolve(
                    run, lease_owner=None, lease_token=None, lease_expires_at=None
                )

    def park(self, run_id: str, token: str, *, until: float, reason: str) -> bool:
        """Set a run aside until ``until`` and release its lease (see :meth:`Store.park`)."""
        with self._lock:
            run = self._runs.get(run_id)
            if run is None or run.lease_token != token:
                return False
            self._runs[run_id] = attrs.evolve(
                run,
                status="parked",
                wake_at=float(until),
                parked_reason=reason,
                lease_owner=None,
                lease_token=None,
                lease_expires_at=None,
            )
        return True

    def lease_holders(
        self, *, now: float, flows: Collection[str] | None = None
    ) -> list[LeaseHolder]:
        """Return who holds live leases on due runs (see :meth:`Store.lease_holders`)."""
        held: dict[str, tuple[int, float]] = {}
        with self._lock:
            for run in self._runs.values():
                if (
                    run.status in _CLAIMABLE
                    and run.wake_at is not None
                    and run.wake_at <= now
                    and lease_is_live(run, now)
                    and (flows is None or run.flow in flows)
                ):
                    assert run.lease_owner is not None
                    assert run.lease_expires_at is not None
                    count, until = held.get(run.lease_owner, (0, run.lease_expires_at))
                    held[run.lease_owner] = (count + 1, max(until, run.lease_expires_at))
        return [LeaseHolder(owner, count, until) for owner, (count, until) in sorted(held.items())]

    def expire_leases(self, owner: str, *, now: float) -> int:
        """Let ``owner``'s live leases expire now (see :meth:`Store.expire_leases`)."""
        expired = 0
        with self._lock:
            for run in list(self._runs.values()):
                if run.lease_owner == owner and lease_is_live(run, now):
                    self._runs[run.run_id] = attrs.evolve(run, lease_expires_at=float(now))
                    expired += 1
        return expired

    def next_due(self, *, flows: Collection[str] | None = None) -> float | None:
        """Return when an active run next becomes claimable (see :meth:`Store.next_due`)."""
        with self._lock:
            times = [
                run.wake_at
                if run.lease_expires_at is None
                else max(run.wake_at, run.lease_expires_at)
                for run in self._runs.values()
                if run.status in ACTIVE_STATUSES
                and run.wake_at is not None
                and (flows is None or run.flow in flows)
            ]
        return min(times, default=None)

    def _select(self, status: RunStatus | None, flow: str | None) -> list[RunRecord]:
        return [
            run
            for run in self._runs.values()
            if (status is None or run.status == status) and (flow is None or run.flow == flow)
        ]

    def runs(
        self,
        *,
        status: RunStatus | None = None,
        flow: str | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Return runs, filtered, oldest first (see :meth:`Store.runs`)."""
        with self._lock:
            selected = sorted(self._select(status, flow), key=lambda r: (r.created_at, r.run_id))
        return [self._out(run) for run in selected[: None if limit is None else max(limit, 0)]]

    def count(self, *, status: RunStatus | None = None, flow: str | None = None) -> int:
        """Count runs, filtered by status and flow (see :meth:`Store.count`)."""
        with self._lock:
            return len(self._select(status, flow))

    def history(self, run_id: str) -> list[JournalEntry]:
        """Return the run's journal in ``seq`` order (see :meth:`Store.history`)."""
        with self._lock:
            if run_id not in self._runs:
                raise unknown_run(run_id)
            return list(self._journal[run_id])

    def close(self) -> None:
        """Do nothing: a memory store holds no connections or files."""

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
        with self._lock:
            selected = [
                run
                for run in self._select(status, flow)
                if (id_prefix is None or run.run_id.startswith(id_prefix))
                and (older_than is None or (run.created_at, run.run_id) < older_than)
                and (newer_than is None or (run.created_at, run.run_id) > newer_than)
            ]
        # Newer-than pages are the runs just above the key: take them from the bottom.
        selected.sort(key=lambda r: (r.created_at, r.run_id), reverse=newer_than is None)
        page = selected[: max(limit, 0)]
        if newer_than is not None:
            page.reverse()
        return [self._out(run) for run in page]

    def count_by_status(
        self, *, flow: str | None = None, id_prefix: str | None = None
    ) -> dict[str, int]:
        """Count runs by status (see :meth:`Store.count_by_status`)."""
        counts: dict[str, int] = {}
        with self._lock:
            for run in self._select(None, flow):
                if id_prefix is None or run.run_id.startswith(id_prefix):
                    counts[run.status] = counts.get(run.status, 0) + 1
        return counts

    def match_run_ids(self, prefix: str, *, limit: int | None = None) -> list[str]:
        """Return the ids starting with ``prefix``, sorted (see :meth:`Store.match_run_ids`)."""
        with self._lock:
            ids = sorted(run_id for run_id in self._runs if run_id.startswith(prefix))
        return ids[: None if limit is None else max(limit, 0)]

    def prune(
        self,
        older_than: float,
        *,
        now: float,
        status: RunStatus | None = "completed",
        runs: bool = False,
        batch: int = 1000,
    ) -> PruneResult:
        """Remove old finished runs' journals, a batch at a time (see :meth:`Store.prune`)."""
        statuses = check_prune(older_than, status, batch)

        def old(run: RunRecord | None) -> bool:
            return run is not None and run.status in statuses and run.updated_at < older_than

        pruned = removed = deleted = transactions = 0
        while True:
            with self._lock:
                marked = []
                for run in self._runs.values():
                    through = self._notes.get(run.run_id, RunNotes()).pruned_through
                    journal = self._journal[run.run_id]
                    if old(run) and (
                        runs
                        or through is None
                        or through < run.version
                        or (journal and journal[0].seq <= through)  # an interrupted prune
                    ):
                        marked.append(run.run_id)
                        if len(marked) == batch:
                            break
                for run_id in marked:
                    notes = self._notes.get(run_id, RunNotes())
                    self._notes[run_id] = attrs.evolve(
                        notes, pruned_through=self._runs[run_id].version, pruned_at=float(now)
                    )
                    self._forget_inbox(run_id)
            if not marked:
                return PruneResult(pruned, removed, deleted, transactions)
            pruned += len(marked)
            transactions += 1
            for run_id in marked:  # batch entries per hold of the lock
                while True:
                    with self._lock:
                        transactions += 1
                        journal = self._journal.get(run_id, [])
                        through = self._notes.get(run_id, RunNotes()).pruned_through or 0
                        gone = [entry for entry in journal[:batch] if entry.seq <= through]
                        del journal[: len(gone)]
                    removed += len(gone)
                    if len(gone) < batch:
                        break
            if runs:
                with self._lock:
                    transactions += 1
                    for run_id in marked:
                        found = self._runs.get(run_id)
                        notes = self._notes.get(run_id, RunNotes())
                        if old(found) and found and notes.pruned_through == found.version:
                            del self._runs[run_id], self._journal[run_id], self._notes[run_id]
                            deleted += 1

    def report_progress(
        self, run_id: str, progress: Any, *, now: float, token: str | None = None
    ) -> bool:
        """Keep the run's progress document (see :meth:`Store.report_progress`)."""
        text = dump_progress(progress)
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise unknown_run(run_id)
            if token is not None and run.lease_token != token:
                return False
            notes = self._notes.get(run_id, RunNotes())
            self._notes[run_id] = attrs.evolve(notes, progress=text, progress_at=float(now))
        return True

    def notes(self, run_id: str) -> RunNotes:
        """Return the run's progress and prune mark (see :meth:`Store.notes`)."""
        with self._lock:
            if run_id not in self._runs:
                raise unknown_run(run_id)
            notes = self._notes.get(run_id, RunNotes())
        return attrs.evolve(notes, progress=load_progress(notes.progress))

    # -- events sent to runs ----------------------------------------------------

    def send_event(
        self, run_id: str, name: str, payload: Any, *, key: str | None = None, now: float
    ) -> bool:
        """Keep an event for the run; make it due now (see :meth:`Store.send_event`)."""
        text = dump_event(name, payload)
        with self._lock:
            run = self._runs.get(run_id)
            if run is None:
                raise unknown_run(run_id)
            if key is not None and (run_id, key) in self._keys:
                return False
            error = refusal(run_id, run.status, run.inbox, name)
            if error is not None:
                raise error
            sent = self._inbox.setdefault(run_id, [])
            event = InboxEvent(len(sent) + 1, name, text, key, float(now))
            sent.append(_Sent(event))
            if key is not None:
                self._keys[(run_id, key)] = event.seq
            inbox = run.inbox + 1
            wake_at = inbox_wake_at(run.status, run.wake_at, inbox, float(now))
            self._runs[run_id] = attrs.evolve(run, inbox=inbox, wake_at=wake_at)
        self._tell(run_id)
        return True

    def pending_events(self, run_id: str, *, limit: int) -> list[InboxEvent]:
        """Return the run's undelivered events, oldest first (see :meth:`Store.pending_events`)."""
        with self._lock:
            if run_id not in self._runs:
                raise unknown_run(run_id)
            waiting = [one.event for one in self._inbox.get(run_id, ()) if one.delivered_at is None]
        return [
            attrs.evolve(event, payload=load_payload(event.payload))
            for event in waiting[: max(limit, 0)]
        ]

    def _forget_inbox(self, run_id: str) -> None:
        """Drop a pruned run's inbox (the caller holds the lock)."""
        for one in self._inbox.pop(run_id, ()):
            if one.event.key is not None:
                self._keys.pop((run_id, one.event.key), None)
        run = self._runs.get(run_id)
        if run is not None and run.inbox:
            self._runs[run_id] = attrs.evolve(run, inbox=0)
