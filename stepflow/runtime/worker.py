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

When nothing is due it sleeps until the store's next ``wake_at`` (bounded by
``idle_interval``), so a waiting run never spins. Saves of many runs are grouped
into one transaction (group commit) while a previous one is being written; a
run waits for its own save before executing its next command, so no step is
ever acted on before it is durable.

Guarantees: handlers run at least once, with an idempotency key that is the same
on every execution of a command; state transitions happen exactly once (a stale
writer's save is refused); a worker killed at any moment loses nothing: its
leases expire and another worker continues from the last save.
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
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import attrs
import orjson

from stepflow.clock import Clock, SystemClock
from stepflow.codec import Batch, dumps, dumps_batch, loads, structure_state
from stepflow.core.advance import advance
from stepflow.core.groups import command_times, item_of
from stepflow.core.messages import CallHandler, Command, Effect, Wake
from stepflow.core.state import State
from stepflow.errors import (
    ConfigurationError,
    InterpreterError,
    StaleWriteError,
    StepflowError,
    StoreError,
)
from stepflow.flow import Flow
from stepflow.interpreter import Interpreter
from stepflow.runtime.context import RunContext
from stepflow.runtime.runs import store_wake_at
from stepflow.stores.base import Lease, RunRecord, RunStatus, Save, Store
from stepflow.versioning import Migration, migrate

__all__ = ["StepReport", "Worker", "WorkerStats"]

# The most runs claimed at once.
_CLAIM_BATCH = 100

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
        stale: Saves refused because the run moved on (lease lost).
        commits: Store transactions used to save steps.

    """

    steps: int = 0
    claimed: int = 0
    completed: int = 0
    failed: int = 0
    stale: int = 0
    commits: int = 0


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
        lease_seconds: How long a claim lasts without renewal; a dead worker's
            runs are taken over this long after its last renewal.
        group_commit: Save the steps of several runs in one transaction.
        idle_interval: The longest the worker sleeps before looking for due runs
            again (runs started by others become due at once).
        threads: Size of the thread pool for plain (non-async) handlers
            (default: ``min(concurrency, 32)``).
        on_step: Called after every saved step with a :class:`StepReport`.
        owner: This worker's name in leases (default: host and pid).

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
    ) -> None:
        if concurrency < 1:
            raise ConfigurationError(f"concurrency must be >= 1, got {concurrency!r}")
        if lease_seconds <= 0:
            raise ConfigurationError(f"lease_seconds must be > 0, got {lease_seconds!r}")
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
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stats = WorkerStats()
        self._threads = threads or min(concurrency, 32)
        self._stopping = False
        self._wakeup: asyncio.Event | None = None
        self._leases: dict[str, str] = {}  # run id -> lease token, for renewal
        self._pending: list[tuple[Save, asyncio.Future[RunRecord]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._store_pool: _Threads | None = None
        self._active: set[asyncio.Task[None]] = set()
        self._handler_pool: _Threads | None = None
        self._slots: asyncio.Semaphore | None = None

    # -- control ---------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop: finish the steps in flight, save, release, return."""
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
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop)
        renewer = asyncio.create_task(self._renew_leases())
        active = self._active
        try:
            await self._loop(until_idle)
        finally:
            if active:
                await asyncio.gather(*active, return_exceptions=True)
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            if self._flusher is not None:
                await self._flusher
            if handle_signals:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(signum)
            self._store_pool.close()
            self._handler_pool.close()
        return self.stats

    async def _loop(self, until_idle: bool) -> None:
        assert self._wakeup is not None
        names = (*self.flows, *self._adopt)
        active = self._active
        while not self._stopping:
            self._wakeup.clear()
            free = self.concurrency - len(active)
            leases: list[Lease] = []
            try:
                if free > 0:
                    leases = await self._store(
                        self.store.claim_due,
                        now=self.clock.now(),
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
            for lease in leases:
                self.stats.claimed += 1
                run_id = lease.run.run_id
                if run_id in self._leases:
                    # Our own run, claimed again because its lease lapsed while a
                    # step ran (a blocked loop, a slow store): the task driving it
                    # goes on under the new token instead of a second task.
                    self._leases[run_id] = lease.token
                    continue
                self._leases[run_id] = lease.token
                task = asyncio.create_task(self._drive(lease))
                active.add(task)
                task.add_done_callback(self._finished)
            if leases and len(leases) == min(free, _CLAIM_BATCH):
                await asyncio.sleep(0)
                continue
            if free <= 0:
                await self._wakeup.wait()
                continue
            if until_idle and not active and next_due is None and not leases:
                return
            delay = self.idle_interval
            if next_due is not None:
                delay = min(delay, max(0.0, next_due - self.clock.now()))
            if delay <= 0 and leases:
                continue
            await self._sleep(delay, busy=bool(active))

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
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            held = list(self._leases.items())
            if not held:
                continue
            try:
                kept = await self._store(
                    self.store.renew, held, now=self.clock.now(), lease_seconds=self.lease_seconds
                )
            except StepflowError:
                log.exception("renewing leases failed; will try again")
                continue
            for run_id, token in held:
                if run_id not in kept and self._leases.get(run_id) == token:
                    log.warning("lost the lease of run %s", run_id)

    # -- one run ---------------------------------------------------------------

    async def _drive(self, lease: Lease) -> None:
        record = lease.run
        run_id, token, version, run_input = record.run_id, lease.token, record.version, record.input
        try:
            if record.flow in self.flows:
                flow = self.flows[record.flow]
                state = loads(record.state, flow.definition)
            else:
                flow, migration = self._adopt[record.flow]
                state, version = await self._migrate(record, token, flow, migration)
        except StepflowError as exc:
            # Never erase what cannot be read: leave the run as it is, out of the
            # way for a while, and say why.
            log.error("run %s cannot be loaded by this worker: %s", run_id, exc)
            await self._park(run_id, version, token, record.state, record.status)
            return
        # The record (with its state text) is not needed any more: with a thousand
        # runs in flight, keeping it would be most of the worker's memory.
        del lease, record
        # The commands of this run being executed, by id: one per position at most.
        running: dict[int, asyncio.Task[Effect]] = {}
        try:
            while True:
                now = self.clock.now()
                state, commands = advance(flow.definition, state, now=now)
                due = [c for c in commands if c[0] not in running and _due(state, c, now)]
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
                try:
                    if len(due) == 1 and not running:  # one position: no task needed
                        answered = due
                        effects = [await self._execute(flow, run_id, run_input, state, due[0])]
                    else:
                        answered, effects = await self._gather(
                            flow, run_id, run_input, state, commands, due, running
                        )
                except InterpreterError as exc:
                    log.error("run %s cannot be executed by this worker: %s", run_id, exc)
                    token = self._token(run_id, token)
                    await self._park(run_id, version, token, dumps(state), state.status)
                    return
                if not effects:
                    continue  # a waiting command came due
                new_state, _ = advance(flow.definition, state, effects)
                at = effects[-1].at if len(effects) == 1 else max(_times(effects), default=None)
                batch = dumps_batch(Batch("effects", at, tuple(effects), tuple(answered)))
                now = self.clock.now()
                wake_at = store_wake_at(new_state, now)
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
                )
                saved = await self._save(save, now)
                version = saved.version
                state = new_state
                for command, effect in zip(answered, effects, strict=True):
                    self._count(new_state)
                    if self.on_step is not None:
                        self.on_step(StepReport(run_id, flow.name, command, effect, new_state))
                if release:
                    return
        except StaleWriteError as exc:
            self.stats.stale += 1
            log.warning("run %s moved on without this worker (%s); dropping it", run_id, exc)
        finally:
            for task in running.values():
                task.cancel()
            self._leases.pop(run_id, None)  # one task per run: this one ends

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
            store_wake_at(state, now),
            batch,
            flow=flow.name,
        )
        saved = await self._save(save, now)
        log.info("run %s migrated from %s to %s", record.run_id, record.flow, flow.name)
        return state, saved.version

    def _count(self, state: State) -> None:
        self.stats.steps += 1
        if state.status == "completed":
            self.stats.completed += 1
        elif state.status == "failed":
            self.stats.failed += 1

    def _token(self, run_id: str, claimed: str) -> str:
        """Return the lease token this worker holds on the run now (it may be re-claimed)."""
        return self._leases.get(run_id, claimed)

    async def _save_last(
        self, run_id: str, version: int, token: str, state: State, now: float
    ) -> None:
        """Save a state reached without an effect (rare: a clock skew) and release the lease.

        The journal gets an empty batch, so its sequence stays contiguous.
        """
        wake_at = store_wake_at(state, now)
        save = Save(run_id, version, token, dumps(state), state.status, wake_at, _NOTHING, True)
        await self._save(save, now)

    async def _park(
        self, run_id: str, version: int, token: str, text: str, status: RunStatus
    ) -> None:
        """Leave a run this worker cannot drive untouched, out of the way for a while."""
        now = self.clock.now()
        later = now + max(60.0, self.lease_seconds)
        save = Save(run_id, version, token, text, status, later, _NOTHING, True)
        with contextlib.suppress(StaleWriteError):
            await self._save(save, now)

    async def _execute(
        self, flow: Flow, run_id: str, run_input: Any, state: State, command: Command
    ) -> Effect:
        interpreter = self._interpreters[flow.name]
        if type(command) is Wake:
            return interpreter.fire(command)
        assert type(command) is CallHandler
        assert self._slots is not None
        retries = flow.definition.enclosing_retries(command.event)
        attempt = state.attempts.get(retries[0], 0) + 1 if retries else 1
        index, item = (None, None)
        if state.groups:
            found = item_of(state, command.step)
            if found is not None:
                index, item = found
        ctx = RunContext(
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
        )
        async with self._slots:
            if self._on_loop.get((flow.name, command.kind, command.step), False):
                return await interpreter.execute_async(command, ctx)
            assert self._handler_pool is not None
            return await self._handler_pool.submit(
                functools.partial(interpreter.execute, command, ctx)
            )

    # -- saving ----------------------------------------------------------------

    async def _save(self, save: Save, now: float) -> RunRecord:
        if not self.group_commit:
            self.stats.commits += 1
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


def _due(state: State, command: Command, now: float) -> bool:
    """Whether ``command`` may be carried out at ``now``: its position's ``wake_at`` came."""
    wake_at = command_times(state, command)[0]
    return wake_at is None or wake_at <= now


def _times(effects: list[Effect]) -> list[float]:
    return [effect.at for effect in effects if effect.at is not None]


class _Threads:
    """A few threads running calls for one event loop; each call resolves a future.

    ``loop.run_in_executor`` chains a ``concurrent.futures.Future`` to an asyncio
    one for every call, which costs more than a no-op step's whole work; a queue
    and one ``call_soon_threadsafe`` per call cost a fraction of it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, count: int, name: str) -> None:
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
