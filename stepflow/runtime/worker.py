"""The worker: one asyncio event loop driving many runs through a store.

Theory of operation
-------------------
The worker repeats: claim due runs (``wake_at <= now``) from the store with a
lease, and for each claimed run start a task that

1. decodes the state and asks the pure core for the command in flight;
2. executes it: an ``async def`` handler on the loop, a plain one in a bounded
   thread pool, a due timer by firing it; at most ``concurrency`` at once;
3. applies the effect with :func:`stepflow.advance` and saves the new state,
   with the effect batch in the run's journal, in one compare-and-swap
   transaction under the lease;
4. goes on with the next command while the run is due, and releases the lease
   (in the same save) once it is finished or waits for a later ``wake_at``.

A ``do`` with a ``timeout=`` is timed on the loop (an ``async def`` handler
cancelled, a plain one abandoned on its own thread at the deadline; the step
fails with ``StepTimeoutError``), so :meth:`Worker.stop` waits no longer than the
longest timeout in flight. A run claimed with a pending wake (:func:`stepflow.wake`)
has the wake journaled (op ``"wake"``) and taken in first; then its commands that
wait on a poll interval or a backoff run at once (a timer keeps its time).

Events sent to a run (:func:`stepflow.send_event`) wait in its store's inbox;
the store counts them on the run's row and makes the run due. A task driving a
run with events waiting delivers them before its next command: one save applies
them (an effects batch of :class:`~stepflow.core.messages.EventReceived`, in the
journal) and marks them delivered, in the same transaction. A wait for an event
(:class:`~stepflow.core.messages.AwaitEvent`) is never executed; a timed one is
answered with ``TimerFired`` once its timeout is due, as a ``sleep`` is. The
worker listens to its store object's sends (``Store.subscribe``), so a send in
the same process wakes it at once instead of at its next look.

A cancellation (:func:`stepflow.cancel_run`) waits in the inbox too, under a
reserved name; it is delivered on its own, after the events sent before it, as
a :class:`~stepflow.core.messages.CancelRequested` effect. A run past its
deadline (the record's ``deadline_at``, which the store's ``wake_at`` never
passes while the run is running) is sent ``CancelRequested(deadline=True)``
once, journaled likewise. The run's store status follows its state's:
``"cancelling"`` runs are claimed and driven like running ones (their commands
in flight finish, their cleanups run), until they are ``"cancelled"``, saved
finished and never claimed again.

When nothing is due it sleeps until the store's next ``wake_at`` (bounded by
``idle_interval`` on the system clock; a virtual clock, such as a
:class:`~stepflow.clock.FakeClock`, jumps straight to it), so a waiting run
never spins. Saves of many runs are grouped into one transaction (group commit)
while a previous one is being written; a run waits for its own save before
executing its next command, so no step is ever acted on before it is durable.

Leases end by the worker's clock and are renewed by it: every third of
``lease_seconds`` on that clock, and at once when the clock passed a lease's
end during a step (a virtual clock moved on by a handler), before the step is
saved and before the worker claims again. A worker never claims its own runs
back, so a clock jump never makes it drop a run or run a step twice.

Guarantees: handlers run at least once, with an idempotency key that is the same
on every execution of a command; state transitions happen exactly once (a stale
writer's save is refused); a worker killed at any moment loses nothing: its
leases expire and another worker continues from the last save.

No run can stop a worker. A run it cannot drive (a row that cannot be read, a
state that does not decode, a flow it does not serve) is *parked*: set aside
with its reason (status ``"parked"``, see :meth:`Store.park
<stepflow.stores.base.Store.park>`), its lease released, untouched otherwise,
and tried again every ``park_seconds``; once repaired, it is driven again.

Restarting without the lease wait: a worker given a stable ``worker_id`` signs
its leases ``ID@HOST:PID:START``. When it starts (and whenever it waits on
leases) it looks at who holds due runs; leases signed with its own id by a
process that is gone (see :mod:`stepflow.runtime._owner`) are expired at once
and claimed again, so a restarted worker resumes its runs in well under a
second instead of after ``lease_seconds``. A live holder is never robbed, and
the lease token fences off any save a holder judged gone could still attempt.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import inspect
import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import attrs
import orjson

from stepflow.clock import Clock, SystemClock
from stepflow.codec import Batch, dumps, dumps_batch, loads, structure_state
from stepflow.core.advance import advance
from stepflow.core.cleanup import cancel_record, may_run
from stepflow.core.definition import template_of
from stepflow.core.events import MAILBOX_LIMIT, mailbox_room, untimed_wait, with_events
from stepflow.core.groups import command_times, item_of
from stepflow.core.messages import (
    AwaitEvent,
    CallHandler,
    CancelRequested,
    ChildEnded,
    Command,
    Effect,
    EventReceived,
    HandlerRaised,
    StartChild,
    TimerFired,
    Wake,
)
from stepflow.core.scopes import handler_error
from stepflow.core.spec import Call
from stepflow.core.state import CANCELLING, RUNNING, ErrorRecord, State
from stepflow.errors import (
    ConfigurationError,
    CorruptStateError,
    InterpreterError,
    StaleWriteError,
    StepflowError,
    StoreError,
    UnknownRunError,
    UnreadableRunError,
)
from stepflow.flow import Flow
from stepflow.interpreter import Interpreter
from stepflow.runtime import _owner
from stepflow.runtime.context import RunContext
from stepflow.runtime.metrics import WorkerMetrics
from stepflow.runtime.runs import (
    cancel_run,
    child_ended,
    child_note,
    child_run,
    deadline_reason,
    store_wake_at,
)
from stepflow.runtime.schedules import Schedule, Scheduler
from stepflow.stores._inbox import CANCEL_EVENT, CHILD_EVENT
from stepflow.stores.base import (
    FINISHED_STATUSES,
    RUN_STATUSES,
    ChildRun,
    InboxEvent,
    Lease,
    RunRecord,
    Save,
    Store,
)
from stepflow.versioning import Migration, migrate

__all__ = ["StepReport", "Worker", "WorkerStats"]

# The most runs claimed at once.
_CLAIM_BATCH = 100

# How often (real seconds) the leases held are looked at when the clock is virtual:
# such a clock jumps when told, so its thirds of a lease cannot be timed.
_VIRTUAL_RENEWAL_LOOK = 0.05

# The journal entry of a save that applied no effect: an empty batch keeps the
# journal's sequence contiguous (replay applies it as a no-op).
_NOTHING = dumps_batch(Batch("effects", None))

log = logging.getLogger("stepflow.worker")
_T = TypeVar("_T")


@attrs.frozen
class StepReport:
    """What the worker reports after each saved step (see ``Worker(on_step=...)``).

    Attributes:
        run_id: The run.
        flow: The flow's name.
        command: The command that was executed.
        effect: Its outcome.
        state: The state saved after applying it.

    """

    run_id: str
    flow: str
    command: Command
    effect: Effect
    state: State


@attrs.define
class WorkerStats:
    """Counters of one worker's life.

    Attributes:
        steps: Commands executed and saved.
        claimed: Leases taken.
        completed: Runs the worker saw complete.
        failed: Runs the worker saw fail.
        cancelled: Runs the worker saw end cancelled (their cleanups done).
        stale: Saves refused because the run moved on (lease lost).
        commits: Store transactions used to save steps.
        parked: Runs parked because the worker could not drive them.
        taken_back: Runs whose leases, held under this worker's ``worker_id`` by
            a process that is gone, were taken back at once.
        events: Events delivered to runs (see :func:`stepflow.send_event`).

    """

    steps: int = 0
    claimed: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    stale: int = 0
    commits: int = 0
    parked: int = 0
    taken_back: int = 0
    events: int = 0


class _Stop(Exception):
    """Internal: the run's task ends here (lease released or lost)."""


class Worker:
    """Drive the runs of ``flows`` stored in ``store``, on one event loop.

    Args:
        store: Where runs live (see :func:`stepflow.stores.open_store`).
        flows: The flows this worker serves. Runs are routed by their flow name
            (``"deploy/v1"``), so several versions can be served side by side.
        context: The application's own object, handed to every handler as
            ``ctx.app``.
        concurrency: How many commands may execute at once (and how many runs
            the worker holds).
        clock: Where time is read (a :class:`~stepflow.clock.FakeClock` in tests).
        lease_seconds: How long a claim lasts without renewal (renewed every
            third of it while the worker lives). Leases end and are renewed by
            the worker's ``clock``: a lease the clock passed during a step (a
            virtual clock moved on by a handler) is renewed before the step is
            saved and before the worker claims again, so the worker never loses
            or re-runs its own step. A worker that dies without a
            ``worker_id`` successor loses its runs to other workers this long
            after its last renewal: shorter means a faster takeover, longer
            means fewer renewals and more tolerance of a stalled process.
        group_commit: Save the steps of several runs in one transaction.
        idle_interval: The longest the worker sleeps before looking for due runs
            again (runs started by others become due at once). On a virtual
            clock, the worker jumps straight to the next due run instead.
        threads: Size of the thread pool for plain (non-async) handlers
            (default: ``min(concurrency, 32)``).
        on_step: Called on the event loop after every saved step with a
            :class:`StepReport` (the run, the command, its effect, the state
            saved); a ``wait_event`` step that a delivered event answers is
            reported with its ``AwaitEvent`` and the ``EventReceived``. It must
            be quick and must not block: it runs between steps.
            An exception it raises is logged, never stops the run.
        owner: This worker's name in leases, as given (default: ``HOST:PID:RANDOM``,
            or ``ID@HOST:PID:START`` with ``worker_id``).
        worker_id: A stable name for this worker across restarts (``"vm-1"``).
            A worker started with it takes back, at once, the leases held under
            the same id by a process of this host that is gone, instead of
            waiting ``lease_seconds`` for them (see the module's doc). Give each
            worker its own id; never both ``worker_id`` and ``owner``.
        park_seconds: How long a run the worker cannot drive stays parked
            before it is tried again.
        metrics: A :class:`~stepflow.runtime.metrics.WorkerMetrics` hook (such
            as :class:`~stepflow.runtime.metrics.PrometheusMetrics`) told of
            every step, claim, commit, stale write, takeover and parked run.
        metrics_interval: How often the runs are counted by flow and status
            for ``metrics.runs`` (seconds).
        tracer: An OpenTelemetry tracer for one span per step (default: the
            global tracer provider's, when ``opentelemetry-api`` is installed
            and a provider is configured; else no spans, at no cost).
        schedules: :class:`~stepflow.Schedule` values to put in the store when
            the worker starts (added, or their definitions updated). Every
            worker fires the store's schedules of the flows it serves, whoever
            added them (see :mod:`stepflow.runtime.schedules`); its
            :class:`~stepflow.runtime.schedules.Scheduler` is ``worker.scheduler``.

    Logging: the worker logs to the ``"stepflow.worker"`` logger (standard
    :mod:`logging`; nothing shows unless the application configures logging,
    as ``stepflow worker`` does at INFO): INFO when it starts and stops, when it
    waits on runs leased by other workers (``"12 runs are leased by vm:17108
    until 05:43:02"``) and when it takes back its own; WARNING when it loses a
    lease or a save goes stale; ERROR when it parks a run (with the reason) or
    cannot reach the store.

    """

    def __init__(
        self,
        store: Store,
        flows: Iterable[Flow],
        *,
        context: Any = None,
        concurrency: int = 64,
        clock: Clock | None = None,
        lease_seconds: float = 30.0,
        group_commit: bool = True,
        idle_interval: float = 1.0,
        threads: int | None = None,
        on_step: Callable[[StepReport], None] | None = None,
        owner: str | None = None,
        worker_id: str | None = None,
        park_seconds: float = 60.0,
        metrics: WorkerMetrics | None = None,
        metrics_interval: float = 5.0,
        tracer: Any = None,
        schedules: Iterable[Schedule] = (),
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {concurrency!r}")
        if lease_seconds <= 0:
            raise ConfigurationError(f"lease_seconds must be > 0, got {lease_seconds!r}")
        if park_seconds <= 0:
            raise ConfigurationError(f"park_seconds must be > 0, got {park_seconds!r}")
        if metrics_interval <= 0:
            raise ConfigurationError(f"metrics_interval must be > 0, got {metrics_interval!r}")
        if worker_id is not None:
            if owner is not None:
                raise ConfigurationError(
                    "give a worker either worker_id (a stable name it signs its leases "
                    "with) or owner (the exact lease name), not both"
                )
            if not worker_id or "@" in worker_id or any(c.isspace() for c in worker_id):
                raise ConfigurationError(
                    f"a worker id is a non-empty name without '@' or spaces, got {worker_id!r}"
                )
        self.store = store
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.flows: dict[str, Flow] = {}
        for flow in flows:
            if flow.name in self.flows:
                raise ConfigurationError(
                    f'two flows named {flow.name!r}; version the names ("deploy/v1", '
                    '"deploy/v2") to serve both'
                )
            self.flows[flow.name] = flow
        if not self.flows:
            raise ConfigurationError("a worker needs at least one flow to serve")
        # Runs of earlier versions this worker adopts (unless it serves them as such).
        self._adopt: dict[str, tuple[Flow, Migration]] = {}
        for flow in self.flows.values():
            for migration in flow.migrations:
                if migration.source in self.flows:
                    continue
                if migration.source in self._adopt:
                    raise ConfigurationError(
                        f"two flows migrate runs of {migration.source!r}; let one adopt them"
                    )
                self._adopt[migration.source] = (flow, migration)
        self._interpreters = {name: Interpreter(f, self.clock) for name, f in self.flows.items()}
        # Decided once per handler, not on every step: is it awaited on the loop?
        self._on_loop = {
            (name, kind, step): inspect.iscoroutinefunction(fn)
            for name, f in self.flows.items()
            for (kind, step), fn in f.handlers.items()
        }
        self.context = context
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.group_commit = group_commit
        self.idle_interval = idle_interval
        self.on_step = on_step
        self.worker_id = worker_id
        if worker_id is not None:
            owner = _owner.owner_for(worker_id)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.park_seconds = park_seconds
        self.metrics = metrics
        self.metrics_interval = metrics_interval
        self._tracer_given = tracer
        self._tracer: Any = None
        self.stats = WorkerStats()
        # Lease holders this worker has said it waits on (logged once per stretch).
        self._waiting_on: set[str] = set()
        self._holders_due = float("-inf")
        self._threads = threads or min(concurrency, 32)
        self._stopping = False
        self._wakeup: asyncio.Event | None = None
        self._leases: dict[str, str] = {}  # run id -> lease token, for renewal
        self._deadlines: dict[str, float | None] = {}  # run id -> its deadline_at
        # Run id -> (the parent's StartChild id, the parent's run id), for child runs.
        self._parents: dict[str, tuple[int, str]] = {}
        # Run id -> the StartChild ids whose child this drive started (see _drive).
        self._started: dict[str, set[int]] = {}
        # run id -> when its lease ends by this worker's clock (the store's measure).
        self._expires: dict[str, float] = {}
        self._pending: list[tuple[Save, asyncio.Future[RunRecord]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._store_pool: _Threads | None = None
        self._active: set[asyncio.Task[None]] = set()
        self._handler_pool: _Threads | None = None
        self._slots: asyncio.Semaphore | None = None
        # Schedules: fired from the loop, looked at again at the next fire time.
        self.scheduler = Scheduler(
            store, self.flows, schedules, clock=self.clock, interval=idle_interval
        )
        self._schedules_due = float("-inf")

    # -- control ---------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop: finish the steps in flight, save, release, return.

        No new step starts. A step with a ``timeout=`` ends by its deadline (its
        handler cancelled or abandoned, the step failed with
        :class:`~stepflow.errors.StepTimeoutError` and saved), so the worker
        never waits longer than the longest timeout of the steps in flight (plus
        the saves). A step with no timeout is waited for, however long it takes:
        give long or possibly hung handlers a ``timeout=``.
        """
        self._stopping = True
        if self._wakeup is not None:
            self._wakeup.set()

    def run_sync(self, *, until_idle: bool = False, handle_signals: bool = True) -> WorkerStats:
        """Run the worker on a new event loop (see :meth:`run`)."""
        return asyncio.run(self.run(until_idle=until_idle, handle_signals=handle_signals))

    async def run(self, *, until_idle: bool = False, handle_signals: bool = False) -> WorkerStats:
        """Drive runs until :meth:`stop` is called (or SIGTERM/SIGINT, with ``handle_signals``).

        Args:
            until_idle: Return once no run of the served flows is running (all
                completed, failed or cancelled).
            handle_signals: Stop gracefully on SIGTERM and SIGINT.

        Returns:
            The worker's counters.

        """
        loop = asyncio.get_running_loop()
        self._stopping = False
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._store_pool = _Threads(loop, 1, "stepflow-store")
        self._handler_pool = _Threads(loop, self._threads, "stepflow-handler")
        self._tracer = self._tracer_given if self._tracer_given is not None else _global_tracer()
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop)
        stop_listening = self._listen(loop)
        helpers = [asyncio.create_task(self._renew_leases())]
        if self.metrics is not None:
            helpers.append(asyncio.create_task(self._count_runs()))
        active = self._active
        log.info(
            "worker %s started: serving %s (concurrency %d, leases of %g s%s)",
            self.owner,
            ", ".join(self.flows),
            self.concurrency,
            self.lease_seconds,
            ", until idle" if until_idle else "",
        )
        try:
            await self._loop(until_idle)
        finally:
            if active:
                await asyncio.gather(*active, return_exceptions=True)
            for helper in helpers:
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
            if self._flusher is not None:
                await self._flusher
            if self.metrics is not None:
                await self._count_runs_once()  # the figures as the worker leaves them
            if handle_signals:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(signum)
            if stop_listening is not None:
                stop_listening()
            self._store_pool.close()
            self._handler_pool.close()
            stats = self.stats
            log.info(
                "worker %s stopped after %d steps: %d runs completed, %d failed, %d parked",
                self.owner,
                stats.steps,
                stats.completed,
                stats.failed,
                stats.parked,
            )
        return self.stats

    def _listen(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None] | None:
        """Wake the loop whenever an event is sent through this store object.

        Returns the function that stops listening (``None``: the store cannot
        tell; its runs are then found due at the next look).
        """
        subscribe = getattr(self.store, "subscribe", None)
        if subscribe is None:
            return None
        wakeup = self._wakeup
        assert wakeup is not None

        def heard(run_id: str) -> None:
            # On the sender's thread: the event is set on the loop's.
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(wakeup.set)

        stop: Callable[[], None] = subscribe(heard)
        return stop

    async def _loop(self, until_idle: bool) -> None:
        assert self._wakeup is not None
        names = (*self.flows, *self._adopt)
        active = self._active
        if self.worker_id is not None:
            # Take back what a previous incarnation left before claiming anything.
            try:
                await self._look_at_holders(names)
            except StoreError as exc:
                log.error("reading lease holders failed (%s); trying again", exc)
        while not self._stopping:
            self._wakeup.clear()
            if self.clock.now() >= self._schedules_due:
                await self._fire_schedules()
            free = self.concurrency - len(active)
            leases: list[Lease] = []
            try:
                if free > 0:
                    now = self.clock.now()
                    # Leases of this worker's own runs that the clock passed (it
                    # jumped during a step) are renewed first, at the same time
                    # as the claim: this worker never claims its own runs back.
                    await self._renew_lapsed(now)
                    leases = await self._store(
                        self.store.claim_due,
                        now=now,
                        # Claimed records are held until their tasks start: small
                        # batches keep that transient memory small.
                        limit=min(free, _CLAIM_BATCH),
                        owner=self.owner,
                        lease_seconds=self.lease_seconds,
                        flows=names,
                    )
                next_due = None
                if len(leases) < min(free, _CLAIM_BATCH):
                    next_due = await self._store(self.store.next_due, flows=names)
            except StoreError as exc:
                # A database restart or a lock timeout: keep the runs in hand going,
                # and look again after a pause instead of dying.
                log.error("claiming runs failed (%s); trying again", exc)
                await self._sleep(self.idle_interval, busy=bool(active))
                continue
            if leases and self.metrics is not None:
                self._report_claim(leases)
            for lease in leases:
                self.stats.claimed += 1
                run_id = lease.run.run_id
                if run_id in self._leases:
                    # Our own run, claimed again because its lease lapsed while a
                    # step ran (a blocked loop, a slow store): the task driving it
                    # goes on under the new token instead of a second task.
                    self._leases[run_id] = lease.token
                    self._expires[run_id] = lease.expires_at
                    continue
                self._leases[run_id] = lease.token
                self._expires[run_id] = lease.expires_at
                task = asyncio.create_task(self._drive(lease))
                active.add(task)
                task.add_done_callback(self._finished)
            if leases and len(leases) == min(free, _CLAIM_BATCH):
                await asyncio.sleep(0)
                continue
            if free <= 0:
                await self._wakeup.wait()
                continue
            if not leases and self.clock.now() >= self._holders_due:
                try:
                    if await self._look_at_holders(names):
                        continue  # took back our own runs: claim them now
                except StoreError as exc:
                    log.error("reading lease holders failed (%s); trying again", exc)
            if until_idle and not active and next_due is None and not leases:
                return
            delay = self.idle_interval
            if next_due is not None:
                until_due = max(0.0, next_due - self.clock.now())
                # A virtual clock jumps straight to the next due time: bounded by
                # idle_interval, a virtual hour would cost thousands of empty rounds.
                virtual = not isinstance(self.clock, SystemClock)
                delay = until_due if virtual else min(delay, until_due)
            delay = min(delay, max(0.0, self._schedules_due - self.clock.now()))
            if delay <= 0 and leases:
                continue
            await self._sleep(delay, busy=bool(active))

    async def _fire_schedules(self) -> None:
        """Start the runs of the schedules' fire times that have come (see Scheduler)."""
        now = self.clock.now()
        try:
            self._schedules_due = await self._store(self.scheduler.look, now)
        except Exception as exc:  # no schedule row may stop the worker
            log.error("firing schedules failed (%s); trying again", exc)
            self._schedules_due = now + self.idle_interval

    async def _look_at_holders(self, names: tuple[str, ...]) -> int:
        """Log who holds the due runs this worker waits on; take back its own dead ones.

        Returns:
            How many runs were taken back (their leases expired at once).

        """
        now = self.clock.now()
        self._holders_due = now + max(self.idle_interval, 1.0)
        holders = await self._store(self.store.lease_holders, now=now, flows=names)
        taken = 0
        waiting = set()
        for holder in holders:
            if holder.owner == self.owner:
                continue
            parts = _owner.split_owner(holder.owner)
            if self.worker_id is not None and parts is not None and parts[0] == self.worker_id:
                gone = _owner.holder_is_gone(holder.owner)
                if gone:
                    expired = await self._store(self.store.expire_leases, holder.owner, now=now)
                    taken += expired
                    self.stats.taken_back += expired
                    log.info(
                        "took back %d runs leased by %s, an earlier process of worker id %r "
                        "that is gone",
                        expired,
                        holder.owner,
                        self.worker_id,
                    )
                    continue
                if gone is False and holder.owner not in self._waiting_on:
                    log.warning(
                        "%d runs are leased under this worker id %r by %s, a live process: "
                        "two workers share the id; give each its own --worker-id",
                        holder.runs,
                        self.worker_id,
                        holder.owner,
                    )
            waiting.add(holder.owner)
            if holder.owner not in self._waiting_on:
                log.info(
                    "%d %s leased by %s until %s",
                    holder.runs,
                    "run is" if holder.runs == 1 else "runs are",
                    holder.owner,
                    time.strftime("%H:%M:%S", time.localtime(holder.until)),
                )
        self._waiting_on = waiting
        return taken

    def _report_claim(self, leases: list[Lease]) -> None:
        assert self.metrics is not None
        now = self.clock.now()
        lag = max(now - (lease.run.wake_at or now) for lease in leases)
        self.metrics.claimed(len(leases), lag)
        taken = sum(1 for lease in leases if lease.taken_from not in (None, self.owner))
        if taken:
            self.metrics.takeovers(taken)

    async def _count_runs(self) -> None:
        """Every ``metrics_interval``, count the served flows' runs by status for the hook."""
        while True:
            await self._count_runs_once()
            await asyncio.sleep(self.metrics_interval)

    async def _count_runs_once(self) -> None:
        assert self.metrics is not None
        try:
            counts: dict[tuple[str, str], int] = {}
            for flow in (*self.flows, *self._adopt):
                for status in RUN_STATUSES:
                    count = await self._store(self.store.count, status=status, flow=flow)
                    if count:
                        counts[(flow, status)] = count
        except StepflowError as exc:
            log.error("counting runs for metrics failed (%s); will try again", exc)
            return
        self.metrics.runs(counts)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._active.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("a run's task crashed", exc_info=task.exception())
        assert self._wakeup is not None
        self._wakeup.set()

    async def _sleep(self, seconds: float, *, busy: bool) -> None:
        """Sleep on the clock, or until woken (a task ended, or stop)."""
        assert self._wakeup is not None
        if isinstance(self.clock, SystemClock):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=max(seconds, 0.0))
        elif busy:
            # A virtual clock must not race ahead of handlers still running:
            # wait for one of them instead.
            await self._wakeup.wait()
        else:
            await self.clock.sleep(seconds)  # virtual time: skip to the next wake

    async def _store(self, method: Callable[..., _T], /, *args: Any, **kwargs: Any) -> _T:
        """Run a store call on the store's own thread (stores are synchronous)."""
        assert self._store_pool is not None
        return await self._store_pool.submit(functools.partial(method, *args, **kwargs))

    async def _renew_leases(self) -> None:
        """Renew the leases held each time a third of ``lease_seconds`` passes on the clock.

        Leases end by the worker's clock, so they are renewed by it too. The
        system clock's thirds are a real-time timer; a virtual clock moves only
        when told, at any moment, so it is looked at often, and a lease is
        renewed once a third of it has passed on that clock.
        """
        third = self.lease_seconds / 3
        real = isinstance(self.clock, SystemClock)
        pause = third if real else min(third, _VIRTUAL_RENEWAL_LOOK)
        while True:
            await asyncio.sleep(pause)
            now = self.clock.now()
            expires = self._expires
            held = [
                (run_id, token)
                for run_id, token in self._leases.items()
                if real or expires.get(run_id, now) - now <= 2 * third
            ]
            if not held:
                continue
            try:
                await self._renew(held, now)
            except StepflowError:
                log.exception("renewing leases failed; will try again")

    async def _renew_lapsed(self, now: float) -> None:
        """Renew the leases held that end at ``now`` or before by the worker's clock."""
        expires = self._expires
        lapsed = [
            (run_id, token)
            for run_id, token in self._leases.items()
            if expires.get(run_id, now) <= now
        ]
        if lapsed:
            await self._renew(lapsed, now)

    async def _renew(self, held: list[tuple[str, str]], now: float) -> None:
        """Renew the leases ``(run_id, token)`` at ``now``; note their new ends, or their loss."""
        kept = await self._store(self.store.renew, held, now=now, lease_seconds=self.lease_seconds)
        for run_id, token in held:
            if self._leases.get(run_id) != token:
                continue  # claimed again meanwhile: the new lease is the one to keep
            if run_id in kept:
                self._expires[run_id] = now + self.lease_seconds
            else:
                log.warning("lost the lease of run %s", run_id)

    # -- one run ---------------------------------------------------------------

    async def _drive(self, lease: Lease) -> None:
        record = lease.run
        run_id, token, version, run_input = record.run_id, lease.token, record.version, record.input
        flow_name = record.flow
        deadline = record.deadline_at
        # The commands of this run being executed, by id: one per position at most,
        # each with when it started and its trace span.
        running: dict[int, asyncio.Task[Effect]] = {}
        watching: dict[int, tuple[float, Any]] = {}
        self._deadlines[run_id] = deadline
        if record.parent_run_id is not None and record.parent_command is not None:
            self._parents[run_id] = (record.parent_command, record.parent_run_id)
        # The StartChild commands of this run whose child was started (or asked
        # to cancel) in this drive: they rest until the child's end comes.
        started: set[int] = set()
        self._started[run_id] = started
        try:
            try:
                if record.unreadable is not None:
                    raise record.unreadable
                if record.flow in self.flows:
                    flow = self.flows[record.flow]
                    state = loads(record.state, flow.definition)
                else:
                    flow, migration = self._adopt[record.flow]
                    state, version = await self._migrate(record, token, flow, migration)
            except StaleWriteError:
                raise
            except StepflowError as exc:
                # Never erase what cannot be read: leave the run as it is, out of the
                # way for a while, and say why.
                if isinstance(exc, CorruptStateError):
                    exc = UnreadableRunError(run_id, "state", f"cannot be decoded: {exc}")
                await self._park(run_id, record.flow, token, exc)
                return
            woken_at = record.woken_at
            inbox = record.inbox  # events waiting to be delivered
            # The record (with its state text) is not needed any more: with a thousand
            # runs in flight, keeping it would be most of the worker's memory.
            del lease, record
            # Woken (stepflow.wake): journal the wake and take it in, then carry out
            # at once every command that waits on a poll or a backoff (never a timer).
            early = woken_at is not None
            if woken_at is not None:
                version = await self._take_wake(run_id, version, token, state, woken_at)
            while True:
                deadline = self._deadlines.get(run_id)
                active = state.status == RUNNING or state.status == CANCELLING
                if active and (inbox or _past(deadline, self.clock.now())):
                    delivered = await self._deliver(
                        flow, run_id, token, version, state, running, inbox=inbox > 0
                    )
                    inbox = 0
                    if delivered is not None:
                        state, version, inbox, released = delivered
                        if released:
                            return
                        continue  # more may wait: events sent meanwhile, a cancellation
                now = self.clock.now()
                state, commands = advance(flow.definition, state, now=now)
                due = [
                    c
                    for c in commands
                    if c[0] not in running
                    and c[0] not in started
                    and (_due(state, c, now) or (early and type(c) is CallHandler))
                ]
                early = False
                if not self._stopping and any(type(c) is StartChild for c in due):
                    children = [c for c in due if type(c) is StartChild]
                    state, version, inbox, released = await self._start_children(
                        flow, run_id, run_input, token, version, state, children, bool(running)
                    )
                    if released:
                        return
                    continue
                if not due and not running:
                    await self._save_last(run_id, version, self._token(run_id, token), state, now)
                    return
                if self._stopping:
                    # Told to stop: start nothing new; once what runs has ended (and
                    # been saved), leave the run to the next worker at once.
                    if not running:
                        await self._store(self.store.release, run_id, self._token(run_id, token))
                        return
                    due = []
                watched = self.metrics is not None or self._tracer is not None
                if watched:
                    for command in due:
                        span = self._span(flow, run_id, state, command) if self._tracer else None
                        watching[command[0]] = (time.perf_counter(), span)
                saved_effects: list[Effect] = []  # the spans' outcomes, once durable
                answered: list[Command] = []
                try:
                    try:
                        if len(due) == 1 and not running:  # one position: no task needed
                            answered = due
                            effects = [await self._execute(flow, run_id, run_input, state, due[0])]
                        else:
                            answered, effects = await self._gather(
                                flow, run_id, run_input, state, commands, due, running
                            )
                    except InterpreterError as exc:
                        token = self._token(run_id, token)
                        await self._park(run_id, flow.name, token, exc)
                        return
                    if not effects:
                        continue  # a waiting command came due
                    new_state, _ = advance(flow.definition, state, effects)
                    at = effects[0].at if len(effects) == 1 else max(_times(effects), default=None)
                    batch = dumps_batch(Batch("effects", at, tuple(effects), tuple(answered)))
                    saved, release = await self._save_batch(
                        run_id, version, token, new_state, batch, bool(running)
                    )
                    saved_effects = effects
                finally:
                    if watched:
                        self._watched(flow, watching, answered, saved_effects)
                version = saved.version
                inbox = saved.inbox
                state = new_state
                for command, effect in zip(answered, effects, strict=True):
                    self._count(new_state)
                    if self.on_step is not None:
                        self._report(StepReport(run_id, flow.name, command, effect, new_state))
                if release:
                    return
        except StaleWriteError as exc:
            self.stats.stale += 1
            if self.metrics is not None:
                self.metrics.stale()
            log.warning("run %s moved on without this worker (%s); dropping it", run_id, exc)
        except StoreError:
            # The store failed (a lost connection): the run is not at fault. Its
            # lease, no longer renewed, lapses and the run is claimed again.
            raise
        except Exception as exc:
            # Data or a state the runtime did not foresee: it stops this run alone.
            log.exception("run %s failed in the worker; parking it", run_id)
            await self._park(run_id, flow_name, token, exc)
        finally:
            for task in running.values():
                task.cancel()
            self._deadlines.pop(run_id, None)
            self._parents.pop(run_id, None)
            self._started.pop(run_id, None)
            self._leases.pop(run_id, None)  # one task per run: this one ends
            self._expires.pop(run_id, None)

    async def _gather(
        self,
        flow: Flow,
        run_id: str,
        run_input: Any,
        state: State,
        commands: tuple[Command, ...],
        due: list[Command],
        running: dict[int, asyncio.Task[Effect]],
    ) -> tuple[list[Command], list[Effect]]:
        """Start ``due`` beside the commands ``running``; return those that ended, with effects.

        Waits until at least one has ended, or until the next waiting command of
        the run comes due (then returns none).
        """
        for command in due:
            running[command[0]] = asyncio.create_task(
                self._execute(flow, run_id, run_input, state, command)
            )
        now = self.clock.now()
        later = [
            wake
            for c in commands
            if c[0] not in running and (wake := command_times(state, c)[0]) is not None
        ]
        # (A virtual clock's waits are not real time: wait for a command instead.)
        real = isinstance(self.clock, SystemClock)
        timeout = max(0.0, min(later) - now) if later and real else None
        done, _ = await asyncio.wait(
            running.values(), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        by_id = {c[0]: c for c in commands}
        answered = sorted((by_id[i] for i, t in running.items() if t in done), key=lambda c: c[0])
        return answered, [running.pop(command[0]).result() for command in answered]

    def _report(self, report: StepReport) -> None:
        assert self.on_step is not None
        try:
            self.on_step(report)
        except Exception:
            log.exception("on_step raised on run %s; the run goes on", report.run_id)

    def _span(self, flow: Flow, run_id: str, state: State, command: Command) -> Any:
        """Start the OpenTelemetry span of one step."""
        return self._tracer.start_span(
            f"stepflow {command.kind} {command.step}",
            attributes={
                "stepflow.run_id": run_id,
                "stepflow.flow": flow.name,
                "stepflow.step": command.step,
                "stepflow.kind": command.kind,
                "stepflow.attempt": _attempt(flow, state, command),
            },
        )

    def _watched(
        self,
        flow: Flow,
        watching: dict[int, tuple[float, Any]],
        answered: list[Command],
        saved: list[Effect],
    ) -> None:
        """End the spans and count the metrics of the commands ``answered``.

        ``saved`` holds their effects once the batch was saved; empty, the
        steps were interrupted (their spans say so, and no step is counted).
        """
        effects: list[Effect | None] = list(saved) if saved else [None] * len(answered)
        for command, effect in zip(answered, effects, strict=True):
            started, span = watching.pop(command[0], (None, None))
            if span is not None:
                _end_span(span, effect)
            if effect is not None and started is not None and self.metrics is not None:
                seconds = time.perf_counter() - started
                self.metrics.step(flow.name, command.kind, _outcome(effect), seconds)

    async def _migrate(
        self, record: RunRecord, token: str, flow: Flow, migration: Migration
    ) -> tuple[State, int]:
        """Adopt a run of an earlier version: migrate its state and save it, renamed."""
        state = migrate(flow.definition, structure_state(orjson.loads(record.state)), migration)
        now = self.clock.now()
        batch = dumps_batch(Batch("migrate", now, state=state))
        save = Save(
            record.run_id,
            record.version,
            token,
            dumps(state),
            state.status,
            store_wake_at(state, now, record.deadline_at),
            batch,
            flow=flow.name,
        )
        saved = await self._save(save, now)
        log.info("run %s migrated from %s to %s", record.run_id, record.flow, flow.name)
        return state, saved.version

    def _count(self, state: State) -> None:
        self.stats.steps += 1
        self._count_finish(state)

    def _count_finish(self, state: State) -> None:
        if state.status == "completed":
            self.stats.completed += 1
        elif state.status == "failed":
            self.stats.failed += 1
        elif state.status == "cancelled":
            self.stats.cancelled += 1

    def _token(self, run_id: str, claimed: str) -> str:
        """Return the lease token this worker holds on the run now (it may be re-claimed)."""
        return self._leases.get(run_id, claimed)

    async def _save_last(
        self, run_id: str, version: int, token: str, state: State, now: float
    ) -> None:
        """Save a state reached without an effect (rare: a clock skew) and release the lease.

        The journal gets an empty batch, so its sequence stays contiguous.
        """
        started = self._started.get(run_id, ())
        wake_at = store_wake_at(state, now, self._deadlines.get(run_id), started)
        full = len(state.mailbox) >= MAILBOX_LIMIT
        save = Save(
            run_id,
            version,
            token,
            dumps(state),
            state.status,
            wake_at,
            _NOTHING,
            True,
            mailbox_full=full,
            parent_note=self._note(run_id, state),
        )
        await self._save(save, now)

    async def _save_batch(
        self,
        run_id: str,
        version: int,
        token: str,
        new_state: State,
        batch: str,
        running: bool,
        *,
        delivered: int | None = None,
        children: tuple[ChildRun, ...] = (),
    ) -> tuple[RunRecord, bool]:
        """Save ``new_state`` with its journal ``batch``; return the record and whether it let go.

        The lease is released in the same save when nothing of the run is
        running and it has nothing to do now (or the worker is stopping).
        ``delivered`` is the last inbox event the batch delivered, if any;
        ``children`` the child runs the save creates.
        """
        now = self.clock.now()
        started = self._started.get(run_id, ())
        wake_at = store_wake_at(new_state, now, self._deadlines.get(run_id), started)
        release = not running and (self._stopping or wake_at is None or wake_at > now)
        save = Save(
            run_id,
            version,
            self._token(run_id, token),
            dumps(new_state),
            new_state.status,
            wake_at,
            batch,
            release,
            delivered=delivered,
            mailbox_full=len(new_state.mailbox) >= MAILBOX_LIMIT,
            children=children,
            parent_note=self._note(run_id, new_state),
        )
        return await self._save(save, now), release

    def _note(self, run_id: str, state: State) -> str | None:
        """Return what a child run that ``state`` finishes leaves in its parent's inbox."""
        parent = self._parents.get(run_id)
        if parent is None or state.status not in FINISHED_STATUSES:
            return None
        return child_note(state, run_id, parent[0])

    async def _start_children(
        self,
        flow: Flow,
        run_id: str,
        run_input: Any,
        token: str,
        version: int,
        state: State,
        commands: list[StartChild],
        running: bool,
    ) -> tuple[State, int, int, bool]:
        """Start the children of ``commands`` in one save (or answer those that cannot start).

        Returns the new state, its version, its inbox count and whether the
        lease was released, as :meth:`_deliver` does.
        """
        started = self._started[run_id]
        effects: list[Effect] = []
        answered: list[Command] = []
        children: list[ChildRun] = []
        for command in commands:
            outcome = await self._start_child(flow, run_id, run_input, state, command)
            if outcome is None or isinstance(outcome, ChildRun):
                started.add(command[0])
                if outcome is not None:
                    children.append(outcome)
            else:
                effects.append(outcome)
                answered.append(command)
        new_state, batch = state, _NOTHING
        if effects:
            new_state, _ = advance(flow.definition, state, effects)
            at = max(_times(effects), default=None)
            batch = dumps_batch(Batch("effects", at, tuple(effects), tuple(answered)))
        saved, release = await self._save_batch(
            run_id, version, token, new_state, batch, running, children=tuple(children)
        )
        for done, effect in zip(answered, effects, strict=True):
            self._count(new_state)
            if self.on_step is not None:
                self._report(StepReport(run_id, flow.name, done, effect, new_state))
        return new_state, saved.version, saved.inbox, release

    async def _start_child(
        self, flow: Flow, run_id: str, run_input: Any, state: State, command: StartChild
    ) -> Effect | ChildRun | None:
        """Start the child of ``command``: the child to create, ``None``, or the step's outcome.

        ``None``: the child exists already (started by an earlier drive) or
        was asked to cancel, as its cancelling parent is; nothing to create.
        A child id that names another run, a child flow this worker does not
        serve, or an ``input``/``id`` handler that raises fail the step.
        """
        now = self.clock.now()
        call = self.flows[flow.name].handlers.get(("call", template_of(command.step)))
        assert isinstance(call, Call)
        asked = CallHandler(command.id, "call", command.step, command.event, None)
        ctx = self._context(flow, run_id, run_input, state, asked)
        try:
            child_id = f"{run_id}/{command.key}" if call.id is None else call.id(ctx)
            if not isinstance(child_id, str) or not child_id:
                raise ConfigurationError(
                    f"the id handler of {command.step!r} returned {child_id!r:.80}; "
                    "a child run id is a non-empty str"
                )
            found = await self._store(self._find, child_id)
            if state.status == CANCELLING:  # the child stops with its parent
                if found is None or found.parent_run_id != run_id:
                    return ChildEnded(command.id, "cancelled", None, state.error, now, child_id)
                reason = state.error.message if state.error is not None else ""
                await self._store(cancel_run, self.store, child_id, reason, clock=self.clock)
                return None
            if found is not None:
                if found.parent_run_id == run_id and found.parent_command == command.id:
                    return None  # started by an earlier drive: its end will come
                message = (
                    f"the child run id {child_id!r} of step {command.step!r} is used by another "
                    "run; give each child its own id (id(ctx) must differ per parent and attempt)"
                )
                error = ErrorRecord("stepflow.errors.RunExistsError", message, command.step)
                return HandlerRaised(command.id, error, None, now)
            child_flow = self.flows.get(call.flow_name)
            if child_flow is None:
                raise ConfigurationError(
                    f"step {command.step!r} calls flow {call.flow_name!r}, which this worker "
                    f"does not serve (it serves {sorted(self.flows)!r}); add it to the "
                    "worker's flows"
                )
            child_input = call(ctx)
            if inspect.isawaitable(child_input):
                child_input = await child_input
            return child_run(child_flow, child_id, child_input, command.id, now)
        except StoreError:
            raise
        except Exception as exc:  # the step fails, recorded; the worker goes on
            error = ErrorRecord.from_exception(exc, command.step)
            return HandlerRaised(command.id, error, exc, self.clock.now())

    def _find(self, run_id: str) -> RunRecord | None:
        try:
            return self.store.load(run_id)
        except UnknownRunError:
            return None  # (a StoreError: the caller's except does not take it)

    async def _take_wake(
        self, run_id: str, version: int, token: str, state: State, woken_at: float
    ) -> int:
        """Journal a pending wake (op ``"wake"``, at when it was asked) and clear it.

        The state is saved as it is; returns the run's new version.
        """
        now = self.clock.now()
        batch = dumps_batch(Batch("wake", woken_at))
        wake_at = store_wake_at(state, now, self._deadlines.get(run_id))
        token = self._token(run_id, token)
        save = Save(run_id, version, token, dumps(state), state.status, wake_at, batch)
        saved = await self._save(attrs.evolve(save, takes_wake=True), now)
        log.info("run %s was woken: its polls and backoffs are due now", run_id)
        return saved.version

    async def _deliver(
        self,
        flow: Flow,
        run_id: str,
        token: str,
        version: int,
        state: State,
        running: dict[int, asyncio.Task[Effect]],
        *,
        inbox: bool,
    ) -> tuple[State, int, int, bool] | None:
        """Deliver what waits for the running run: a cancellation, or its inbox's events.

        Past the run's deadline, a ``CancelRequested(deadline=True)``. Else,
        with ``inbox``: as many events as the state's mailbox has room for,
        oldest first, as one journaled batch of ``EventReceived`` effects, up
        to a cancellation (:data:`~stepflow.stores._inbox.CANCEL_EVENT`), which
        goes in a batch of its own once the events before it are delivered.
        The save marks what it delivered; the lease is released in it when
        the run has nothing left to do now (as after a step).

        Returns:
            The new state, its version, how many inbox entries still wait, and
            whether the lease was released; ``None`` when nothing could be
            delivered (nothing waits any more, or the mailbox is full).

        """
        now = self.clock.now()
        deadline = self._deadlines.get(run_id)
        if _past(deadline, now):
            assert deadline is not None
            cancel = CancelRequested(deadline_reason(deadline), now, True)
            log.info("run %s passed its deadline; cancelling it", run_id)
            self._deadlines[run_id] = None  # delivered: once
            return await self._cancel(flow, run_id, token, version, state, running, cancel, None)
        if not inbox:
            return None
        room = mailbox_room(state)
        # A cancellation takes no room in the mailbox: look at one entry at least.
        pending = await self._store(self.store.pending_events, run_id, limit=max(room, 1))
        events: list[InboxEvent] = []
        ended: list[tuple[InboxEvent, ChildEnded]] = []
        for entry in pending:
            if entry.name == CHILD_EVENT:  # a child's end: it answers its StartChild
                found = child_ended(entry.payload, entry.sent_at)
                if found is not None:
                    ended.append((entry, found))
                continue
            if entry.name == CANCEL_EVENT:
                if not events and not ended:
                    reason = entry.payload if isinstance(entry.payload, str) else str(entry.payload)
                    cancel = CancelRequested(reason, entry.sent_at)
                    log.info("run %s: cancellation requested (%s)", run_id, reason or "no reason")
                    return await self._cancel(
                        flow, run_id, token, version, state, running, cancel, entry.seq
                    )
                break
            if len(events) >= room:
                break
            events.append(entry)
        if not events and not ended:
            return None
        children = {c[0] for c in state.in_flight if type(c) is StartChild}
        # (An end whose command is no longer in flight answers nothing: it is dropped.)
        ends = tuple(e for _, e in ended if e.command_id in children)
        received = tuple(EventReceived(e.name, e.payload, e.sent_at) for e in events)
        effects: tuple[Effect, ...] = (*received, *ends)
        delivered = [*events, *(entry for entry, _ in ended)]
        last_seq = max(event.seq for event in delivered)
        if not effects:
            saved, release = await self._save_batch(
                run_id, version, token, state, _NOTHING, bool(running), delivered=last_seq
            )
            return state, saved.version, saved.inbox, release
        new_state, _ = advance(flow.definition, state, effects)
        # The waits the events answer are recorded as answered, as a handler's
        # command is: a replay against a definition that no longer waits there
        # diverges at this batch.
        taken = {answer[0] for answer in with_events(flow.definition, state, effects, None)[1]}
        answered = tuple(c for c in state.in_flight if c[0] in taken)
        at = max(event.sent_at for event in delivered)
        batch = dumps_batch(Batch("effects", at, effects, answered))
        saved, release = await self._save_batch(
            run_id, version, token, new_state, batch, bool(running), delivered=last_seq
        )
        for end in ends:
            self._started[run_id].discard(end.command_id)
        self.stats.events += len(effects)
        self._count_finish(new_state)
        if self.on_step is not None:
            waits = tuple(c for c in answered if type(c) is AwaitEvent)
            if waits:
                self._report_waits(run_id, flow, waits, new_state, received)
            for end in ends:
                command = next(c for c in answered if c[0] == end.command_id)
                self._report(StepReport(run_id, flow.name, command, end, new_state))
        return new_state, saved.version, saved.inbox, release

    async def _cancel(
        self,
        flow: Flow,
        run_id: str,
        token: str,
        version: int,
        state: State,
        running: dict[int, asyncio.Task[Effect]],
        cancel: CancelRequested,
        delivered: int | None,
    ) -> tuple[State, int, int, bool]:
        """Apply ``cancel`` to the running run and save it, journaled as a batch of its own.

        ``delivered`` is the cancellation's inbox ``seq`` (``None`` for a
        deadline). The commands executing go on (``running``); the store
        status follows the new state: ``"cancelling"`` or ``"cancelled"``.

        The core keeps in flight every handler call that may be executing (one
        due when the request came), since it cannot know; this worker holds
        the run, so it knows which are: those in ``running``. Each other due
        call, outside a cleanup (cleanups are never cut short), never started
        and never will: it is answered in the same batch, after the
        cancellation, with the cancellation's record as its error, so its
        position unwinds at once instead of starting a new step.
        """
        definition = flow.definition
        unstarted = tuple(
            c
            for c in state.in_flight
            if type(c) is CallHandler
            and c[0] not in running
            and definition._node(c.event).shield < 0  # not inside a cleanup
            and may_run(c, command_times(state, c)[0], cancel.at)
        )
        at = cancel.at
        never = [HandlerRaised(c.id, cancel_record(cancel, c.step), None, at) for c in unstarted]
        effects: tuple[Effect, ...] = (cancel, *never)
        new_state, _ = advance(definition, state, effects)
        batch = dumps_batch(Batch("effects", cancel.at, effects, unstarted))
        saved, release = await self._save_batch(
            run_id, version, token, new_state, batch, bool(running), delivered=delivered
        )
        self._count_finish(new_state)
        return new_state, saved.version, saved.inbox, release

    def _report_waits(
        self,
        run_id: str,
        flow: Flow,
        answered: tuple[Command, ...],
        new_state: State,
        effects: tuple[EventReceived, ...],
    ) -> None:
        """Report each wait the delivered events answered as a step (``on_step``).

        Its effect is the event of its name delivered first (the one it took,
        unless the mailbox held an older one).
        """
        unused = list(effects)
        for command in answered:
            assert type(command) is AwaitEvent  # events answer waits only
            event = next((e for e in unused if e.name == command.name), effects[0])
            if event in unused:
                unused.remove(event)
            self._report(StepReport(run_id, flow.name, command, event, new_state))

    async def _park(self, run_id: str, flow: str, token: str, error: Exception) -> None:
        """Set a run this worker cannot drive aside, untouched, and release its lease."""
        until = self.clock.now() + self.park_seconds
        reason = (
            str(error) if isinstance(error, StepflowError) else f"{type(error).__name__}: {error}"
        )
        try:
            parked = await self._store(
                self.store.park, run_id, self._token(run_id, token), until=until, reason=reason
            )
        except StoreError as exc:
            log.error("run %s cannot be driven (%s), and parking it failed: %s", run_id, error, exc)
            return
        if not parked:
            log.warning("run %s cannot be driven (%s); its lease was lost already", run_id, error)
            return
        self.stats.parked += 1
        if self.metrics is not None:
            self.metrics.parked(flow)
        log.error(
            "run %s parked until %s: %s",
            run_id,
            time.strftime("%H:%M:%S", time.localtime(until)),
            reason,
        )

    async def _execute(
        self, flow: Flow, run_id: str, run_input: Any, state: State, command: Command
    ) -> Effect:
        interpreter = self._interpreters[flow.name]
        if type(command) is Wake or type(command) is AwaitEvent:
            return interpreter.fire(command)  # a timer, or a wait for an event timing out
        if type(command) is StartChild:  # (started by _start_children, never executed)
            raise InterpreterError(f"step {command.step!r}: a StartChild is not executed")
        assert type(command) is CallHandler
        assert self._slots is not None
        ctx = self._context(flow, run_id, run_input, state, command)
        async with self._slots:
            # A step with a timeout is timed on the loop: an async handler is
            # cancelled there, a plain one runs on a thread of its own that can
            # be abandoned (a hung handler must not hold a pool thread forever).
            if self._on_loop.get((flow.name, command.kind, command.step), False) or (
                interpreter.timeout_of(command) is not None
            ):
                return await interpreter.execute_async(command, ctx)
            assert self._handler_pool is not None
            return await self._handler_pool.submit(
                functools.partial(interpreter.execute, command, ctx)
            )

    def _context(
        self, flow: Flow, run_id: str, run_input: Any, state: State, command: CallHandler
    ) -> RunContext:
        """Return the context ``command``'s handler is called with."""
        attempt = _attempt(flow, state, command)
        index, item = (None, None)
        if state.groups:
            found = item_of(state, command.step)
            if found is not None:
                index, item = found
        return RunContext(
            run_id=run_id,
            flow=flow.name,
            step=command.step,
            kind=command.kind,
            attempt=attempt,
            idempotency_key=f"{run_id}/{command.key}",
            input=run_input,
            outputs=state.outputs,
            now=self.clock.now(),
            app=self.context,
            command=command,
            index=index,
            item=item,
            error=handler_error(flow.definition, state.outputs, command),
            reporter=functools.partial(self._report_progress, run_id),
        )

    def _report_progress(self, run_id: str, progress: Any) -> None:
        """Write a handler's progress document under this worker's lease (``ctx.report``).

        On the loop (an ``async def`` handler) the write is queued on the store's
        one thread, so it lands in order and before the step's save, and the
        loop never blocks; from a handler thread it is written there and then.
        """
        token = self._leases.get(run_id)
        if token is None:  # the lease is gone: the run is someone else's now
            return
        call = functools.partial(
            self._write_progress, run_id, progress, now=self.clock.now(), token=token
        )
        pool = self._store_pool
        try:
            on_loop = pool is not None and asyncio.get_running_loop() is pool.loop
        except RuntimeError:  # no loop in this thread: a plain handler's thread
            on_loop = False
        if on_loop:
            assert pool is not None
            pool.submit(call)
        else:
            call()

    def _write_progress(self, run_id: str, progress: Any, *, now: float, token: str) -> None:
        try:
            if not self.store.report_progress(run_id, progress, now=now, token=token):
                log.debug("run %s: progress not kept, the lease was lost", run_id)
        except StoreError as exc:  # advisory: never fails the step
            log.warning("run %s: progress not kept: %s", run_id, exc)

    # -- saving ----------------------------------------------------------------

    async def _save(self, save: Save, now: float) -> RunRecord:
        token = save.lease_token
        if token is not None and self._expires.get(save.run_id, now + 1) <= now:
            # The clock passed the lease's end during the step (a virtual clock
            # that jumped, a stalled loop): renew it before saving, so that the
            # step is saved by this worker, once, and not claimed and run again.
            await self._renew([(save.run_id, token)], now)
        if not self.group_commit:
            self.stats.commits += 1
            if self.metrics is not None:
                self.metrics.commit(1)
            return await self._store(self.store.save, save, now=now)
        future: asyncio.Future[RunRecord] = asyncio.get_running_loop().create_future()
        self._pending.append((save, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        """Write pending saves, many per transaction, until none are left."""
        while self._pending:
            batch, self._pending = self._pending, []
            saves = [save for save, _ in batch]
            self.stats.commits += 1
            if self.metrics is not None:
                self.metrics.commit(len(saves))
            try:
                results = await self._store(self.store.save_many, saves, now=self.clock.now())
            except BaseException as exc:  # the whole transaction failed: tell every waiter
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for (_, future), result in zip(batch, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)


def _past(deadline: float | None, now: float) -> bool:
    """Whether a run's deadline (``None``: none) has come at ``now``."""
    return deadline is not None and now >= deadline


def _due(state: State, command: Command, now: float) -> bool:
    """Whether ``command`` may be carried out at ``now``: its position's ``wake_at`` came.

    A wait for an event without a timeout never is: only an event moves it.
    """
    if untimed_wait(command):
        return False
    wake_at = command_times(state, command)[0]
    return wake_at is None or wake_at <= now


def _times(effects: list[Effect]) -> list[float]:
    return [effect.at for effect in effects if effect.at is not None]


def _attempt(flow: Flow, state: State, command: Command) -> int:
    """Return which attempt of its enclosing retry ``command`` is (1 outside a retry)."""
    if type(command) is not CallHandler:
        return 1
    retries = flow.definition.enclosing_retries(command.event)
    return state.attempts.get(retries[0], 0) + 1 if retries else 1


def _outcome(effect: Effect) -> str:
    """Return a step's outcome label: ``"returned"``, ``"raised"`` or ``"fired"``."""
    if type(effect) is HandlerRaised:
        return "raised"
    if type(effect) is TimerFired:
        return "fired"
    return "returned"


def _global_tracer() -> Any:
    """Return a tracer of the configured OpenTelemetry provider, or ``None``.

    ``None`` when ``opentelemetry-api`` is not installed or no tracer provider was
    set: steps then cost nothing for tracing.
    """
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    return provider.get_tracer("stepflow")


def _end_span(span: Any, effect: Effect | None) -> None:
    """Record the step's outcome on its span and end it (``None``: it was not saved)."""
    from opentelemetry.trace import Status, StatusCode

    if effect is None:
        span.set_attribute("stepflow.outcome", "interrupted")
        span.set_status(Status(StatusCode.ERROR, "the step was not saved"))
    else:
        span.set_attribute("stepflow.outcome", _outcome(effect))
        if type(effect) is HandlerRaised:
            message = f"{effect.error.type}: {effect.error.message}"
            span.set_status(Status(StatusCode.ERROR, message))
            if effect.exception is not None:
                span.record_exception(effect.exception)
    span.end()


class _Threads:
    """A few threads running calls for one event loop; each call resolves a future.

    ``loop.run_in_executor`` chains a ``concurrent.futures.Future`` to an asyncio
    one for every call, which costs more than a no-op step's whole work; a queue
    and one ``call_soon_threadsafe`` per call cost a fraction of it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int, name: str) -> None:
        self.loop = loop
        self._loop = loop
        self._calls: queue.SimpleQueue[tuple[asyncio.Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._done: collections.deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = (
            collections.deque()
        )
        self._wake_pending = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
            for n in range(count)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, call: Callable[[], _T]) -> asyncio.Future[_T]:
        """Run ``call()`` on one of the threads; return a future of its result."""
        future: asyncio.Future[_T] = self._loop.create_future()
        self._calls.put((future, call))
        return future

    def _work(self) -> None:
        while (item := self._calls.get()) is not None:
            future, call = item
            try:
                outcome: tuple[Any, BaseException | None] = (call(), None)
            except BaseException as exc:  # handed to the awaiting task, as an executor would
                outcome = (None, exc)
            self._done.append((future, *outcome))
            # One wake-up of the loop for a whole burst of results: each
            # call_soon_threadsafe writes to the loop's self-pipe.
            if not self._wake_pending:
                self._wake_pending = True
                self._loop.call_soon_threadsafe(self._settle_done)

    def _settle_done(self) -> None:
        """On the loop: resolve the futures of every finished call."""
        self._wake_pending = False  # before draining: a later result schedules again
        done = self._done
        while done:
            _settle(*done.popleft())

    def close(self) -> None:
        """Let the calls already queued finish, then stop the threads."""
        for _ in self._threads:
            self._calls.put(None)
        for thread in self._threads:
            thread.join()


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
