"""The Worker, in process, on real stores: what it drives, what handlers see, how it waits.

Tests taking ``make_store`` run on a MemoryStore, on SQLite files in ``tmp_path`` and
on fresh schemas of a real PostgreSQL server; each call of ``make_store()`` gives a
new, empty store of that kind. The subprocess tests (crashes, many workers, a
paused worker) are in ``test_recovery.py``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import attrs
import pytest
from postgres import fresh_schema

import stepflow
from stepflow import FakeClock, Flow, RetryPolicy, RunContext, Worker
from stepflow.codec import loads_batch
from stepflow.core.messages import HandlerRaised, HandlerReturned, TimerFired
from stepflow.errors import ConfigurationError
from stepflow.runtime import _owner, cancel_run, read_run, resume_run, start_run
from stepflow.runtime import worker as worker_module
from stepflow.stores import Lease, MemoryStore, PostgresStore, SQLiteStore, Store

START = 1_700_000_000.0


class StoreMaker:
    """Fresh, empty stores of one kind, and more store objects on their databases."""

    def __init__(self, make: Callable[[], Store]) -> None:
        self._make = make
        self.opened: list[Store] = []

    def __call__(self) -> Store:
        """Return a new store on a new, empty database."""
        self.opened.append(self._make())
        return self.opened[-1]

    def reopen(self, store: Store) -> Store:
        """Return another store object on ``store``'s database (the same for memory)."""
        if isinstance(store, SQLiteStore):
            self.opened.append(SQLiteStore(store.path))
        elif isinstance(store, PostgresStore):
            self.opened.append(PostgresStore(store.dsn, schema=store.schema))
        else:
            return store
        return self.opened[-1]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreMaker]:
    """A factory of fresh, empty stores of one kind (all closed after the test)."""
    with ExitStack() as schemas:
        if request.param == "memory":
            maker = StoreMaker(MemoryStore)
        elif request.param == "sqlite":
            maker = StoreMaker(lambda: SQLiteStore(tmp_path / f"runs{len(maker.opened)}.db"))
        else:
            dsn: str = request.getfixturevalue("postgres_dsn")
            first: list[str] = [request.getfixturevalue("postgres_schema")]

            def make() -> Store:
                schema = first.pop() if first else schemas.enter_context(fresh_schema(dsn))
                return PostgresStore(dsn, schema=schema)

            maker = StoreMaker(make)
        try:
            yield maker
        finally:  # before the schemas are dropped
            for store in maker.opened:
                store.close()


def echo(ctx: RunContext) -> Any:
    return {"step": ctx.step, "n": ctx.input["n"], "seen": len(ctx.outputs)}


def chain(name: str = "work/v1", size: int = 4, fn: Callable[[RunContext], Any] = echo) -> Flow:
    """A flow of ``size`` ``do`` steps, each calling ``fn``."""
    spec = stepflow.named(name)
    for index in range(size):
        spec = spec.do(f"s{index}", fn)
    return stepflow.new(spec)


def drive(store: Store, flows: Collection[Flow], **options: Any) -> stepflow.runtime.WorkerStats:
    """Run a worker on ``store`` until no run of ``flows`` is running."""
    options.setdefault("clock", FakeClock(START))
    return Worker(store, flows, **options).run_sync(until_idle=True, handle_signals=False)


def start_many(store: Store, flow: Flow, count: int, clock: Any = None) -> list[str]:
    clock = clock or FakeClock(START)
    return [
        start_run(store, flow, {"n": n}, run_id=f"run-{n:03}", clock=clock).run_id
        for n in range(count)
    ]


def check_journal(store: Store, run_id: str) -> list[stepflow.codec.Batch]:
    """Check the journal is the start, then seq 2..version of effect batches; return those."""
    entries = store.history(run_id)
    version = store.load(run_id).version
    assert [entry.seq for entry in entries] == list(range(1, version + 1))
    start, *batches = [loads_batch(entry.batch) for entry in entries]
    assert start.op == "start"
    assert start.state is not None
    assert all(batch.op == "effects" and len(batch.effects) == 1 for batch in batches)
    return batches


# -- driving runs ------------------------------------------------------------------


def test_a_worker_rejects_bad_settings() -> None:
    store, flow = MemoryStore(), chain()
    with pytest.raises(ConfigurationError, match="concurrency"):
        Worker(store, [flow], concurrency=0)
    with pytest.raises(ConfigurationError, match="lease_seconds"):
        Worker(store, [flow], lease_seconds=0)
    with pytest.raises(ConfigurationError, match="two flows named"):
        Worker(store, [flow, chain()])
    with pytest.raises(ConfigurationError, match="at least one flow"):
        Worker(store, [])


def test_a_worker_drives_every_run_to_completion_with_or_without_group_commit(
    make_store: StoreMaker,
) -> None:
    flow = chain(size=5)
    finals: dict[bool, dict[str, str]] = {}
    for group_commit in (True, False):
        store = make_store()
        run_ids = start_many(store, flow, 12)
        stats = drive(store, [flow], concurrency=4, group_commit=group_commit)
        assert (stats.completed, stats.failed, stats.stale, stats.steps) == (12, 0, 0, 60)
        assert stats.claimed >= 12
        if not group_commit:
            assert stats.commits == stats.steps
        assert store.count(status="completed") == 12
        finals[group_commit] = {}
        for run_id in run_ids:
            record = store.load(run_id)
            assert (record.status, record.wake_at, record.lease_token) == ("completed", None, None)
            batches = check_journal(store, run_id)
            assert len(batches) == 5
            assert all(type(batch.effects[0]) is HandlerReturned for batch in batches)
            view = read_run(store, run_id, flow)
            assert view.state is not None
            last = {"step": "work/v1/s4", "n": int(run_id[-3:]), "seen": 4}
            assert view.state.outputs["work/v1/s4"] == last
            finals[group_commit][run_id] = record.state
    # The same runs, on the same clock, reach the very same states either way.
    assert finals[True] == finals[False]


def test_group_commit_saves_several_runs_per_transaction() -> None:
    gate = threading.Barrier(4)

    def together(ctx: RunContext) -> None:
        gate.wait(timeout=10)  # four handlers end together: their saves queue up

    store = MemoryStore()
    flow = chain(size=3, fn=together)
    start_many(store, flow, 4)
    stats = drive(store, [flow], concurrency=4, threads=4, group_commit=True)
    assert (stats.completed, stats.steps) == (4, 12)
    assert stats.commits < stats.steps


# -- what handlers see ---------------------------------------------------------------


def test_handlers_see_the_run_context() -> None:
    clock = FakeClock(START)
    app = object()
    seen: list[tuple[RunContext, float]] = []
    failures = iter([RuntimeError("flaky")])

    def record(ctx: RunContext) -> Any:
        seen.append((ctx, clock.now()))
        with pytest.raises(TypeError):
            ctx.outputs["mine"] = 1  # type: ignore[index]
        return ctx.step.rsplit("/", 1)[-1]

    def flaky(ctx: RunContext) -> Any:
        record(ctx)
        error = next(failures, None)
        if error is not None:
            raise error
        return "ok"

    flow = stepflow.new(
        stepflow.named("ctx/v1")
        .do("first", record)
        .retry(
            "again",
            RetryPolicy(max_attempts=3, initial_interval=30, jitter=0),
            stepflow.steps().do("inner", record).do("flaky", flaky),
        )
        .do("last", record)
    )
    store = MemoryStore()
    run_id = start_run(store, flow, {"who": "me", "n": [1, 2]}, run_id="r1", clock=clock).run_id
    stats = drive(store, [flow], clock=clock, context=app)
    assert stats.completed == 1

    steps = [(ctx.step, ctx.attempt) for ctx, _ in seen]
    assert steps == [
        ("ctx/v1/first", 1),
        ("ctx/v1/againRetry/inner", 1),
        ("ctx/v1/againRetry/flaky", 1),
        ("ctx/v1/againRetry/inner", 2),
        ("ctx/v1/againRetry/flaky", 2),
        ("ctx/v1/last", 1),
    ]
    for ctx, now in seen:
        assert ctx.run_id == run_id
        assert ctx.flow == "ctx/v1"
        assert ctx.kind == "do"
        assert ctx.idempotency_key == f"{run_id}/{ctx.step}#{ctx.command.id}"
        assert ctx.input == {"who": "me", "n": [1, 2]}
        assert ctx.app is app
        assert ctx.now == now
    keys = [ctx.idempotency_key for ctx, _ in seen]
    assert len(set(keys)) == len(keys)  # each attempt is a new command
    # Outputs of earlier steps, by path; the failed attempt left none behind.
    assert dict(seen[0][0].outputs) == {}
    assert dict(seen[3][0].outputs) == {"ctx/v1/first": "first", "ctx/v1/againRetry/inner": "inner"}
    assert seen[-1][0].outputs["ctx/v1/againRetry/flaky"] == "ok"
    # The retry's backoff was honoured on the clock.
    assert seen[3][1] - seen[2][1] == 30


def test_sync_handlers_run_in_the_pool_and_async_ones_on_the_loop() -> None:
    threads: dict[str, list[threading.Thread]] = {"sync": [], "async": []}
    loop_threads: list[threading.Thread] = []

    def plain(ctx: RunContext) -> None:
        threads["sync"].append(threading.current_thread())

    async def coroutine(ctx: RunContext) -> None:
        asyncio.get_running_loop()  # raises unless on a loop
        threads["async"].append(threading.current_thread())

    async def main() -> None:
        loop_threads.append(threading.current_thread())
        await Worker(store, [flow], clock=FakeClock(START)).run(until_idle=True)

    flow = stepflow.new(stepflow.named("mix/v1").do("plain", plain).do("coro", coroutine))
    store = MemoryStore()
    start_many(store, flow, 3)
    asyncio.run(main())
    (loop_thread,) = loop_threads
    assert len(threads["sync"]) == len(threads["async"]) == 3
    assert all(thread is not loop_thread for thread in threads["sync"])
    assert all(thread.name.startswith("stepflow-handler") for thread in threads["sync"])
    assert all(thread is loop_thread for thread in threads["async"])


def test_no_more_than_concurrency_handlers_run_at_once() -> None:
    lock = threading.Lock()
    running = [0]
    peak = [0]

    def enter() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])

    def leave() -> None:
        with lock:
            running[0] -= 1

    def plain(ctx: RunContext) -> None:
        enter()
        time.sleep(0.02)
        leave()

    async def coroutine(ctx: RunContext) -> None:
        enter()
        await asyncio.sleep(0.02)
        leave()

    flow = stepflow.new(stepflow.named("busy/v1").do("a", plain).do("b", coroutine).do("c", plain))
    store = MemoryStore()
    start_many(store, flow, 12)
    # More threads than slots: only the worker's own bound can hold handlers to 3.
    stats = drive(store, [flow], concurrency=3, threads=8, clock=stepflow.SystemClock())
    assert stats.completed == 12
    assert peak[0] == 3


# -- routing ---------------------------------------------------------------------------


def test_two_versions_are_served_side_by_side_and_routed_by_flow_name(
    make_store: StoreMaker,
) -> None:
    served: list[tuple[str, str]] = []

    def version(tag: str) -> Callable[[RunContext], Any]:
        def handler(ctx: RunContext) -> str:
            served.append((ctx.run_id, tag))
            return tag

        return handler

    v1 = stepflow.new(stepflow.named("deploy/v1").do("push", version("v1")))
    v2 = stepflow.new(
        stepflow.named("deploy/v2").do("push", version("v2")).do("verify", version("v2"))
    )
    store = make_store()
    clock = FakeClock(START)
    old = [start_run(store, v1, run_id=f"old-{n}", clock=clock).run_id for n in range(3)]
    new = [start_run(store, v2, run_id=f"new-{n}", clock=clock).run_id for n in range(3)]

    # A worker that serves only v2 never claims a v1 run.
    stats = drive(store, [v2], clock=clock)
    assert (stats.claimed, stats.completed) == (3, 3)
    assert {run_id for run_id, _ in served} == set(new)
    for run_id in old:
        record = store.load(run_id)
        assert (record.status, record.version, record.lease_token) == ("running", 1, None)
        assert [loads_batch(e.batch).op for e in store.history(run_id)] == ["start"]

    served.clear()
    stats = drive(store, [v1, v2], clock=clock)
    assert stats.completed == 3
    assert sorted(served) == sorted((run_id, "v1") for run_id in old)
    assert store.count(status="completed", flow="deploy/v1") == 3
    assert store.count(status="completed", flow="deploy/v2") == 3


# -- time --------------------------------------------------------------------------------


class CountingStore(MemoryStore):
    """A MemoryStore that counts the worker's claims (how often it looked for work)."""

    def __init__(self) -> None:
        super().__init__()
        self.claims = 0

    def claim_due(self, **kwargs: Any) -> list[Lease]:
        self.claims += 1
        return super().claim_due(**kwargs)


def test_a_waiting_run_makes_the_worker_sleep_on_the_clock_not_spin() -> None:
    clock = FakeClock(START)
    polls: list[float] = []

    def ready(ctx: RunContext) -> bool:
        polls.append(clock.now())
        return len(polls) == 5

    flow = stepflow.new(stepflow.named("poll/v1").wait_for("ready", ready, every=60))
    store = CountingStore()
    run_id = start_run(store, flow, clock=clock).run_id
    began = time.monotonic()
    stats = drive(store, [flow], clock=clock, idle_interval=3600)
    assert time.monotonic() - began < 5  # virtual minutes, not real ones
    assert stats.completed == 1
    assert polls == [START + 60 * n for n in range(5)]
    # Between two polls the worker slept until the run was due: it looked for work
    # when a poll's task ended and when the next poll was due, no more.
    assert store.claims <= 2 * len(polls) + 2
    assert len(check_journal(store, run_id)) == 5


def test_a_sleep_step_resumes_at_its_deadline() -> None:
    clock = FakeClock(START)
    woke: list[float] = []
    flow = stepflow.new(
        stepflow.named("nap/v1")
        .do("before", lambda ctx: None)
        .sleep("nap", 3600)
        .do("after", lambda ctx: woke.append(ctx.now))
    )
    store = CountingStore()
    run_id = start_run(store, flow, clock=clock).run_id
    stats = drive(store, [flow], clock=clock, idle_interval=600)
    assert stats.completed == 1
    assert woke == [START + 3600]
    batches = check_journal(store, run_id)
    assert [type(batch.effects[0]) for batch in batches] == [
        HandlerReturned,
        TimerFired,
        HandlerReturned,
    ]
    assert batches[1].effects[0].at == START + 3600
    assert store.claims <= 3600 / 600 + 4


def test_a_short_wait_on_the_system_clock_is_honoured() -> None:
    polls: list[float] = []

    def ready(ctx: RunContext) -> bool:
        polls.append(time.monotonic())
        return len(polls) == 4

    flow = stepflow.new(stepflow.named("poll/v1").wait_for("ready", ready, every=0.05))
    store = CountingStore()
    start_run(store, flow)
    stats = drive(store, [flow], clock=stepflow.SystemClock())
    assert stats.completed == 1
    gaps = [b - a for a, b in itertools.pairwise(polls)]
    assert len(polls) == 4
    assert all(gap >= 0.04 for gap in gaps), gaps
    assert polls[-1] - polls[0] < 2
    assert store.claims < 20  # it slept between polls


# -- stopping, failing, cancelling ------------------------------------------------------


def test_stop_lets_in_flight_steps_finish_saves_them_and_releases_the_leases(
    make_store: StoreMaker,
) -> None:
    gate = threading.Event()
    started: list[str] = []

    def slow(ctx: RunContext) -> str:
        started.append(ctx.run_id)
        assert gate.wait(timeout=30)
        return "done"

    flow = chain(size=3, fn=slow)
    store = make_store()
    run_ids = start_many(store, flow, 3, clock=stepflow.SystemClock())
    worker = Worker(store, [flow], concurrency=3, lease_seconds=60)

    async def main() -> stepflow.runtime.WorkerStats:
        task = asyncio.create_task(worker.run())
        while len(started) < 3:
            await asyncio.sleep(0.01)
        for run_id in run_ids:
            assert store.load(run_id).lease_owner == worker.owner
        worker.stop()
        await asyncio.sleep(0.2)
        assert not task.done()  # it waits for the handlers in flight
        gate.set()
        return await asyncio.wait_for(task, timeout=30)

    stats = asyncio.run(main())
    assert sorted(started) == run_ids  # no step was started after stop()
    assert (stats.steps, stats.completed) == (3, 0)
    for run_id in run_ids:
        record = store.load(run_id)
        assert (record.status, record.version) == ("running", 2)
        assert record.lease_owner is record.lease_token is record.lease_expires_at is None
        assert len(check_journal(store, run_id)) == 1
    # Another worker continues where the stopped one left off.
    stats = drive(store, [flow], clock=stepflow.SystemClock())
    assert (stats.steps, stats.completed) == (6, 3)


class GatedStore(MemoryStore):
    """A MemoryStore whose claims wait for the test's go-ahead once ``gated`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.claiming = threading.Event()
        self.go = threading.Event()

    def claim_due(self, **kwargs: Any) -> list[Lease]:
        self.claiming.set()
        assert self.go.wait(timeout=30)
        return super().claim_due(**kwargs)


def test_runs_claimed_while_stopping_are_released_without_executing_a_step() -> None:
    called: list[str] = []
    flow = chain(size=2, fn=lambda ctx: called.append(ctx.run_id))
    store = GatedStore()
    run_ids = start_many(store, flow, 3, clock=stepflow.SystemClock())
    worker = Worker(store, [flow], lease_seconds=60)

    async def main() -> stepflow.runtime.WorkerStats:
        task = asyncio.create_task(worker.run())
        while not store.claiming.is_set():
            await asyncio.sleep(0.005)
        worker.stop()  # while the claim is being made
        store.go.set()
        return await asyncio.wait_for(task, timeout=30)

    stats = asyncio.run(main())
    assert called == []
    assert (stats.claimed, stats.steps) == (3, 0)
    for run_id in run_ids:
        record = store.load(run_id)
        assert (record.status, record.version, record.lease_token) == ("running", 1, None)


def test_a_failed_run_records_its_error_and_completes_once_resumed(
    make_store: StoreMaker,
) -> None:
    clock = FakeClock(START)
    broken = [True]

    def push(ctx: RunContext) -> str:
        if broken[0]:
            raise ValueError("registry unreachable")
        return "pushed"

    flow = stepflow.new(stepflow.named("deploy/v1").do("build", echo).do("push", push))
    store = make_store()
    run_id = start_run(store, flow, {"n": 1}, run_id="r1", clock=clock).run_id
    stats = drive(store, [flow], clock=clock)
    assert (stats.failed, stats.completed) == (1, 0)
    record = store.load(run_id)
    assert (record.status, record.wake_at, record.lease_token) == ("failed", None, None)
    view = read_run(store, run_id, flow)
    assert view.state is not None
    assert view.state.status == "failed"
    assert view.state.error is not None
    assert (view.state.error.type, view.state.error.message, view.state.error.step) == (
        "ValueError",
        "registry unreachable",
        "deploy/v1/push",
    )
    failed_at = record.version

    # A failed run is not due: another pass does nothing.
    assert drive(store, [flow], clock=clock).claimed == 0

    broken[0] = False
    resume_run(store, flow, run_id, clock=clock)
    stats = drive(store, [flow], clock=clock)
    assert (stats.completed, stats.failed) == (1, 0)
    view = read_run(store, run_id, flow)
    assert view.record.status == "completed"
    assert view.state is not None
    assert view.state.outputs["deploy/v1/push"] == "pushed"
    ops = [(entry.seq, batch.op, [type(e) for e in batch.effects]) for entry, batch in view.journal]
    assert ops == [
        (1, "start", []),
        (2, "effects", [HandlerReturned]),
        (3, "effects", [HandlerRaised]),
        (4, "resume", []),
        (5, "effects", [HandlerReturned]),
    ]
    assert failed_at == 3


def test_a_run_cancelled_before_its_first_step_runs_none(make_store: StoreMaker) -> None:
    clock = FakeClock(START)
    called: list[str] = []
    flow = chain(size=2, fn=lambda ctx: called.append(ctx.run_id))
    store = make_store()
    kept = start_run(store, flow, {"n": 0}, run_id="kept", clock=clock).run_id
    gone = start_run(store, flow, {"n": 1}, run_id="gone", clock=clock).run_id
    assert cancel_run(store, gone, clock=clock) is True
    stats = drive(store, [flow], clock=clock)
    assert (stats.claimed, stats.completed, stats.cancelled) == (2, 1, 1)
    assert called == [kept, kept]
    after = store.load(gone)
    assert (after.status, after.version, after.lease_token, after.wake_at) == (
        "cancelled",
        2,
        None,
        None,
    )
    assert [loads_batch(entry.batch).op for entry in store.history(gone)] == ["start", "effects"]
    # Never claimed again.
    assert drive(store, [flow], clock=clock).claimed == 0


# -- a lost lease -------------------------------------------------------------------------


@pytest.mark.parametrize("group_commit", [True, False])
def test_a_worker_that_lost_its_lease_drops_the_run_and_writes_nothing(
    make_store: StoreMaker, group_commit: bool
) -> None:
    """A second claimer takes the run while a handler runs; the first save is refused.

    The handler of ``b`` is then executed again by the next lease holder, with the
    same idempotency key and attempt: at-least-once handlers, exactly-once
    transitions.
    """
    clock = FakeClock(START)
    lease_seconds = 30.0
    store = make_store()
    thief_store = make_store.reopen(store)
    calls: list[RunContext] = []
    stolen: list[tuple[Lease, Any, Any]] = []

    def b(ctx: RunContext) -> str:
        calls.append(ctx)
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        if not stolen:
            # This worker stalls past its lease (as another worker's clock sees it),
            # and the other worker claims the run.
            (lease,) = thief_store.claim_due(
                now=clock.now() + lease_seconds + 1, limit=5, owner="thief", lease_seconds=1e6
            )
            stolen.append((lease, thief_store.load(ctx.run_id), thief_store.history(ctx.run_id)))
        return "b done"

    flow = stepflow.new(
        stepflow.named("lease/v1")
        .do("a", lambda ctx: "a done")
        .retry(
            "r",
            RetryPolicy(max_attempts=3, initial_interval=1, jitter=0),
            stepflow.steps().do("b", b),
        )
        .do("c", lambda ctx: "c done")
    )
    run_id = start_run(store, flow, run_id="r1", clock=clock).run_id
    worker = Worker(
        store, [flow], clock=clock, lease_seconds=lease_seconds, group_commit=group_commit
    )

    class StopWhenStale(logging.Handler):
        # Stop at once: on the FakeClock, the worker would otherwise jump to the
        # end of the thief's lease and take the run over itself.
        def emit(self, record: logging.LogRecord) -> None:
            if "moved on without this worker" in record.getMessage():
                worker.stop()

    async def main() -> None:
        task = asyncio.create_task(worker.run())
        for _ in range(3000):
            if worker.stats.stale or task.done():
                break
            await asyncio.sleep(0.01)
        worker.stop()
        await asyncio.wait_for(task, timeout=30)

    stop_when_stale = StopWhenStale()
    logging.getLogger("stepflow.worker").addHandler(stop_when_stale)
    try:
        asyncio.run(main())
    finally:
        logging.getLogger("stepflow.worker").removeHandler(stop_when_stale)
    assert worker.stats.stale == 1
    assert worker.stats.completed == 0
    ((lease, at_steal, journal_at_steal),) = stolen
    # The stale writer changed nothing: the run is as the thief's claim left it.
    after = store.load(run_id)
    assert after == at_steal
    assert (after.lease_owner, after.lease_token) == ("thief", lease.token)
    assert store.history(run_id) == journal_at_steal

    # The thief gives the run up; the next worker executes b's command again.
    thief_store.release(run_id, lease.token)
    stats = drive(store, [flow], clock=clock)
    assert (stats.completed, stats.stale) == (1, 0)
    first, lost, again = calls
    assert (first.attempt, lost.attempt, again.attempt) == (1, 2, 2)
    assert again.idempotency_key == lost.idempotency_key != first.idempotency_key
    assert again.command == lost.command
    batches = check_journal(store, run_id)
    # a, b (raised), b (returned), c: the lost execution left no trace.
    assert [type(batch.effects[0]) for batch in batches] == [
        HandlerReturned,
        HandlerRaised,
        HandlerReturned,
        HandlerReturned,
    ]
    answered = [batch.answered[0].id for batch in batches]
    assert len(answered) == len(set(answered))


def test_a_lease_that_lapsed_mid_step_is_renewed_by_its_worker_not_claimed_again() -> None:
    """A step outlives the lease (the clock jumps while it runs): when the worker
    next claims, it first renews its own lease at the claim's time, so it does not
    claim its own run back; no second task, no step run twice, no stale save.
    """
    clock = FakeClock(START)
    calls: list[str] = []

    async def step(ctx: RunContext) -> None:
        calls.append(ctx.idempotency_key)
        if ctx.idempotency_key == "slow/work/v1/s0#1":
            clock.advance(120)  # far past the 30 s lease, while this step runs
            await asyncio.sleep(0.2)  # "quick" finishes meanwhile: the worker claims
        return None

    flow = chain(size=2, fn=step)
    store = MemoryStore()
    start_run(store, flow, None, run_id="slow", clock=clock)
    start_run(store, flow, None, run_id="quick", clock=clock)
    worker = Worker(store, [flow], clock=clock, lease_seconds=30)
    stats = worker.run_sync(until_idle=True, handle_signals=False)

    assert (stats.completed, stats.stale) == (2, 0)
    assert stats.claimed == 2  # "slow" was renewed, not claimed again, while its step ran
    assert sorted(calls) == sorted(
        ["slow/work/v1/s0#1", "slow/work/v1/s1#2", "quick/work/v1/s0#1", "quick/work/v1/s1#2"]
    )  # each step ran once
    assert {store.load(r).status for r in ("slow", "quick")} == {"completed"}


# -- runs that cannot be driven: parked, never in the way -----------------------------------


def _set_column(store: Store, run_id: str, column: str, value: Any) -> Any:
    """Write ``value`` into a column of a run's row by hand; return what was there."""
    if isinstance(store, SQLiteStore):
        with closing(sqlite3.connect(store.path)) as db, db:
            (old,) = db.execute(f"SELECT {column} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            db.execute(f"UPDATE runs SET {column} = ? WHERE run_id = ?", (value, run_id))
        return old
    if isinstance(store, PostgresStore):
        import psycopg
        from psycopg import sql

        with psycopg.connect(store.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(store.schema)))
            query = sql.SQL("SELECT {} FROM runs WHERE run_id = %s").format(sql.Identifier(column))
            (old,) = conn.execute(query, (run_id,)).fetchone()  # type: ignore[misc]
            conn.execute(
                sql.SQL("UPDATE runs SET {} = %s WHERE run_id = %s").format(sql.Identifier(column)),
                (value, run_id),
            )
        return old
    assert isinstance(store, MemoryStore)
    record = store._runs[run_id]
    old = getattr(record, column)
    store._runs[run_id] = attrs.evolve(record, **{column: value})
    return old


def _columns_to_break(store: Store) -> list[str]:
    # PostgreSQL keeps inputs as jsonb, which cannot hold bad JSON.
    return ["state"] if isinstance(store, PostgresStore) else ["state", "input"]


def test_a_run_that_cannot_be_read_is_parked_and_every_other_run_completes(
    make_store: StoreMaker, caplog: pytest.LogCaptureFixture
) -> None:
    flow = chain(size=3)
    for column in _columns_to_break(make_store()):
        store = make_store()
        clock = FakeClock(START)
        start_many(store, flow, 6, clock)
        original = _set_column(store, "run-002", column, "{not json")

        worker = Worker(store, [flow], clock=clock, park_seconds=600)
        stats = worker.run_sync(until_idle=True, handle_signals=False)

        assert (stats.completed, stats.parked, stats.steps) == (5, 1, 15), column
        assert worker._leases == {}  # nothing left to renew
        parked = store.load("run-002")
        assert parked.status == "parked"
        assert parked.parked_reason is not None
        assert f"its {column} " in parked.parked_reason
        assert parked.wake_at is not None
        assert START + 600 <= parked.wake_at <= clock.now() + 600
        assert (parked.lease_owner, parked.lease_token, parked.version) == (None, None, 1)
        assert [r.run_id for r in store.runs(status="parked")] == ["run-002"]
        assert "run run-002 parked until" in caplog.text

        # Before its park interval is over, workers leave it be.
        clock.advance(parked.wake_at - clock.now() - 300)
        assert drive(store, [flow], clock=clock).claimed == 0
        assert store.load("run-002").status == "parked"

        # Repaired by hand, it is driven again at its next retry, to completion.
        _set_column(store, "run-002", column, original)
        clock.advance(parked.wake_at - clock.now() + 1)
        stats = drive(store, [flow], clock=clock)
        assert (stats.completed, stats.parked) == (1, 0)
        record = store.load("run-002")
        assert (record.status, record.parked_reason, record.lease_token) == (
            "completed",
            None,
            None,
        )
        assert len(check_journal(store, "run-002")) == 3


def test_a_run_still_unreadable_at_its_retry_is_parked_again() -> None:
    flow = chain(size=2)
    store = MemoryStore()
    clock = FakeClock(START)
    start_many(store, flow, 2, clock)
    _set_column(store, "run-001", "input", "[1, 2")
    # (On a virtual clock the worker jumps to each next due time: while it drives
    # the other run it may reach the parked run's retry and park it once more.)
    assert drive(store, [flow], clock=clock, park_seconds=10).parked >= 1
    first = store.load("run-001").wake_at
    assert first is not None
    clock.advance(11)
    stats = drive(store, [flow], clock=clock, park_seconds=10)
    assert (stats.claimed, stats.parked, stats.steps) == (1, 1, 0)
    again = store.load("run-001")
    assert again.status == "parked"
    assert again.wake_at is not None
    assert again.wake_at >= first + 10  # parked anew, from the time of its retry


def test_a_run_of_a_flow_the_worker_adopts_but_cannot_read_is_parked_not_a_crash() -> None:
    """A worker that serves only another flow's runs never claims this one at all."""
    served, other = chain("served/v1"), chain("other/v1")
    store = MemoryStore()
    clock = FakeClock(START)
    start_run(store, other, {"n": 1}, run_id="o", clock=clock)
    start_run(store, served, {"n": 1}, run_id="s", clock=clock)
    _set_column(store, "s", "state", '{"format": 999}')
    stats = drive(store, [served], clock=clock)
    assert (stats.parked, stats.completed) == (1, 0)
    assert store.load("o").status == "running"  # not this worker's flow
    reason = store.load("s").parked_reason
    assert reason is not None
    assert "run 's' cannot be read: its state cannot be decoded" in reason


def test_a_parked_run_can_be_cancelled() -> None:
    flow = chain(size=2)
    store = MemoryStore()
    clock = FakeClock(START)
    start_many(store, flow, 1, clock)
    _set_column(store, "run-000", "input", "nope")
    drive(store, [flow], clock=clock)
    assert store.load("run-000").status == "parked"
    # It cannot be driven: it is abandoned at once, as a failed run is.
    assert cancel_run(store, "run-000", clock=clock) is True
    assert store.load("run-000").status == "cancelled"


def test_on_step_raising_is_logged_and_the_run_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    def on_step(report: stepflow.runtime.StepReport) -> None:
        raise RuntimeError("observer bug")

    store = MemoryStore()
    flow = chain(size=2)
    start_many(store, flow, 1)
    assert drive(store, [flow], on_step=on_step).completed == 1
    assert "on_step raised on run run-000" in caplog.text


# -- logging ---------------------------------------------------------------------------------


def test_the_worker_logs_its_start_its_stop_and_the_leases_it_waits_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="stepflow.worker")
    flow = chain(size=2)
    store = MemoryStore()
    clock = FakeClock(START)
    start_many(store, flow, 12, clock)
    store.claim_due(now=START, limit=12, owner="vm:17108", lease_seconds=30)

    stats = drive(store, [flow], clock=clock, owner="here:1:abc")

    assert stats.completed == 12  # once the other worker's leases expired
    until = time.strftime("%H:%M:%S", time.localtime(START + 30))
    messages = [r.getMessage() for r in caplog.records if r.name == "stepflow.worker"]
    assert messages[0] == (
        "worker here:1:abc started: serving work/v1 (concurrency 64, leases of 30 s, until idle)"
    )
    assert f"12 runs are leased by vm:17108 until {until}" in messages
    assert messages.count(f"12 runs are leased by vm:17108 until {until}") == 1  # said once
    assert messages[-1] == (
        "worker here:1:abc stopped after 24 steps: 12 runs completed, 0 failed, 0 parked"
    )
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "stepflow.worker")


# -- worker ids: taking back a dead incarnation's leases ------------------------------------


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_worker_id_is_validated() -> None:
    store, flow = MemoryStore(), chain()
    with pytest.raises(ConfigurationError, match="not both"):
        Worker(store, [flow], worker_id="a", owner="b")
    for bad in ("", "a@b", "a b"):
        with pytest.raises(ConfigurationError, match="worker id"):
            Worker(store, [flow], worker_id=bad)
    worker = Worker(store, [flow], worker_id="vm-1")
    assert worker.owner.startswith(f"vm-1@{socket.gethostname()}:{os.getpid()}:")
    assert Worker(store, [flow], worker_id="vm-1").owner == worker.owner  # stable in a process


def test_a_worker_takes_back_at_once_the_leases_of_its_id_held_by_a_dead_process(
    make_store: StoreMaker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stepflow.worker")
    flow = chain(size=2)
    store = make_store()
    start_many(store, flow, 5)
    dead = f"vm-1@{socket.gethostname()}:{_dead_pid()}:x.1"
    store.claim_due(now=time.time(), limit=5, owner=dead, lease_seconds=300)
    began = time.monotonic()
    worker = Worker(store, [flow], worker_id="vm-1", lease_seconds=300, idle_interval=0.05)
    stats = worker.run_sync(until_idle=True, handle_signals=False)
    assert time.monotonic() - began < 10  # not the 300 s lease
    assert (stats.taken_back, stats.completed) == (5, 5)
    assert f"took back 5 runs leased by {dead}" in caplog.text


def test_a_live_holder_with_the_same_id_is_never_robbed(caplog: pytest.LogCaptureFixture) -> None:
    flow = chain(size=1)
    store = MemoryStore()
    start_many(store, flow, 2)
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) as alive:
        try:
            start = _owner._start(alive.pid)
            assert start is not None
            holder = f"vm-1@{socket.gethostname()}:{alive.pid}:{start}"
            assert _owner.holder_is_gone(holder) is False
            store.claim_due(now=time.time(), limit=2, owner=holder, lease_seconds=1.0)
            worker = Worker(store, [flow], worker_id="vm-1", idle_interval=0.05)
            stats = worker.run_sync(until_idle=True, handle_signals=False)
        finally:
            alive.kill()
    assert (stats.taken_back, stats.completed) == (0, 2)  # after the 1 s lease expired
    assert "two workers share the id" in caplog.text


def test_whether_a_lease_holder_is_gone() -> None:
    host = socket.gethostname()
    me = _owner.owner_for("w")
    assert _owner.holder_is_gone(me) is False  # this very process
    assert _owner.holder_is_gone(f"w@{host}:{_dead_pid()}:x.1") is True
    # The pid runs, but started at another time: it was reused by another process.
    assert _owner.holder_is_gone(f"w@{host}:{os.getpid()}:x.1") is True
    assert _owner.holder_is_gone(f"w@another-host:{_dead_pid()}:x.1") is None
    assert _owner.holder_is_gone("vm:17108:abc") is None  # not a worker id's lease
    assert _owner.split_owner(me) == ("w", host, os.getpid(), me.rsplit(":", 1)[1])


def test_an_unforeseen_error_in_one_run_parks_that_run_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_advance = worker_module.advance

    def advance(definition: Any, state: Any, *args: Any, **kwargs: Any) -> Any:
        if state.run_id == "run-001":
            raise TypeError("a state the runtime did not foresee")
        return real_advance(definition, state, *args, **kwargs)

    monkeypatch.setattr(worker_module, "advance", advance)
    flow = chain(size=2)
    store = MemoryStore()
    clock = FakeClock(START)
    start_many(store, flow, 3, clock)
    stats = drive(store, [flow], clock=clock)
    assert (stats.completed, stats.parked) == (2, 1)
    assert store.load("run-001").parked_reason == "TypeError: a state the runtime did not foresee"
    assert "run run-001 failed in the worker; parking it" in caplog.text


# -- outputs a loop counts with -----------------------------------------------------------


def test_a_loop_counts_with_its_own_output_and_a_none_keeps_the_count() -> None:
    """The ``do`` of a loop reads its own output and returns it plus one, or ``None``
    every third call: ``None`` keeps the count, so the loop ends when it reaches 10.
    """
    count_path = "count/v1/tickLoopUntil/steps/count"
    seen: list[int] = []

    def count(ctx: RunContext) -> int | None:
        n = ctx.outputs.get(count_path, 0)
        seen.append(n)
        if len(seen) > 50:
            raise RuntimeError(f"the count never reached 10: {seen}")
        return None if len(seen) % 3 == 0 else n + 1

    flow = stepflow.new(
        stepflow.named("count/v1").loop_until(
            "tick",
            lambda ctx: ctx.outputs.get(count_path) == 10,
            stepflow.steps().do("count", count),
        )
    )
    store = MemoryStore()
    run_id = start_run(store, flow, clock=FakeClock(START)).run_id
    stats = drive(store, [flow])
    expected: list[int] = []
    n = 0
    while n < 10:
        expected.append(n)
        n += 1 if len(expected) % 3 else 0
    assert stats.completed == 1
    assert seen == expected  # 0, 1, 2, 2, 3, 4, 4, ...: a None skipped a turn
    state = read_run(store, run_id, flow).state
    assert state is not None
    assert state.outputs[count_path] == 10


# -- a virtual clock: idle time, leases and renewals by the worker's clock --------------------


@pytest.mark.parametrize("kind", ["sleep", "wait_for"])
def test_a_hundred_virtual_hours_take_no_real_time(kind: str) -> None:
    """On a FakeClock the idle worker jumps straight to the next due time: 100 hourly
    iterations are 100 rounds, not 360,000 rounds of ``idle_interval``.
    """
    clock = FakeClock(START)
    hours: list[float] = []

    def tick(ctx: RunContext) -> int:
        hours.append((ctx.now - START) / 3600)
        return len(hours)

    if kind == "sleep":
        body = stepflow.steps().do("tick", tick).sleep("hour", 3600)
        spec = stepflow.named("hourly/v1").loop_until("hours", lambda ctx: len(hours) == 100, body)
    else:
        spec = stepflow.named("hourly/v1").wait_for(
            "hours", lambda ctx: tick(ctx) == 100, every=3600
        )
    flow = stepflow.new(spec)
    store = CountingStore()
    start_run(store, flow, clock=clock)
    began = time.monotonic()
    stats = drive(store, [flow], clock=clock, idle_interval=1.0)
    assert time.monotonic() - began < 5
    assert stats.completed == 1
    assert hours == [float(n) for n in range(100)]
    assert store.claims <= 2 * 100 + 4  # one look when a step ends, one when the next is due


class ClaimGate(MemoryStore):
    """A MemoryStore whose first claim once ``jumped`` is set holds the store's thread.

    That claim waits until the step that jumped the clock has returned, then a little
    more: the step's save is queued behind the claim, as when a worker claims at
    the very moment one of its steps ends.
    """

    def __init__(self) -> None:
        super().__init__()
        self.jumped = threading.Event()
        self.claiming = threading.Event()
        self.returned = threading.Event()

    def claim_due(self, **kwargs: Any) -> list[Lease]:
        if self.jumped.is_set() and not self.claiming.is_set():
            self.claiming.set()
            self.returned.wait(5)
            time.sleep(0.3)  # the step's task applies its effect and asks to save
        return super().claim_due(**kwargs)


def test_a_clock_jump_past_the_lease_during_a_step_never_runs_the_step_twice() -> None:
    """A handler moves the FakeClock past ``lease_seconds``; the worker claims while
    the step's save is on its way. The worker renews its own lease first, so the run
    is neither claimed back nor dropped: the handler ran once, the run completed.
    """
    clock = FakeClock(START)
    store = ClaimGate()
    calls: list[str] = []

    def jump(ctx: RunContext) -> str:
        calls.append(ctx.idempotency_key)
        if ctx.run_id == "slow":
            clock.advance(31)  # past the 30 s lease, while this step runs
            store.jumped.set()
            store.claiming.wait(5)  # "quick" ended: the worker is claiming
            store.returned.set()
        else:
            store.jumped.wait(5)
        return "done"

    flow = stepflow.new(stepflow.named("jump/v1").do("jump", jump).do("after", echo))
    start_run(store, flow, {"n": 0}, run_id="slow", clock=clock)
    quick = stepflow.new(stepflow.named("quick/v1").do("jump", jump))
    start_run(store, quick, {"n": 1}, run_id="quick", clock=clock)
    worker = Worker(store, [flow, quick], clock=clock, lease_seconds=30)

    async def main() -> stepflow.runtime.WorkerStats:
        return await asyncio.wait_for(worker.run(until_idle=True), timeout=30)

    stats = asyncio.run(main())
    assert store.claiming.is_set()  # the worker did claim while the step ran
    assert calls.count("slow/jump/v1/jump#1") == 1
    assert (stats.completed, stats.stale, stats.claimed) == (2, 0, 2)
    assert store.load("slow").status == "completed"
    batches = check_journal(store, "slow")
    assert [b.answered[0].step for b in batches] == ["jump/v1/jump", "jump/v1/after"]


@pytest.mark.parametrize("group_commit", [True, False])
def test_a_step_that_moves_the_clock_past_its_lease_runs_once(
    make_store: StoreMaker, group_commit: bool
) -> None:
    """Runs whose steps each jump the FakeClock past ``lease_seconds`` while others
    are claimed and saved: every handler runs once, and every run completes.
    """
    clock = FakeClock(START)
    store = make_store()
    calls: list[str] = []

    def jump(ctx: RunContext) -> int:
        calls.append(ctx.idempotency_key)
        if ctx.input["n"] % 3 == 0:
            clock.advance(45)
        return ctx.input["n"]

    flow = chain(size=3, fn=jump)
    run_ids = start_many(store, flow, 30, clock)
    stats = drive(store, [flow], clock=clock, lease_seconds=30, group_commit=group_commit)
    assert (stats.completed, stats.stale) == (30, 0)
    assert len(calls) == len(set(calls)) == 90
    assert {store.load(run_id).status for run_id in run_ids} == {"completed"}


def test_leases_are_renewed_by_the_workers_clock() -> None:
    """While a step runs, the FakeClock moves in steps of half a lease: the worker
    renews the lease by that clock, so the store never sees it lapse.
    """
    clock = FakeClock(START)
    store = MemoryStore()
    seen: list[tuple[float, float | None]] = []

    def long_step(ctx: RunContext) -> None:
        for _ in range(6):
            clock.advance(15)  # half of the 30 s lease
            time.sleep(0.3)  # real time for the worker to look at its leases
            seen.append((clock.now(), store.load(ctx.run_id).lease_expires_at))

    flow = stepflow.new(stepflow.named("long/v1").do("long", long_step))
    start_run(store, flow, run_id="long", clock=clock)
    stats = drive(store, [flow], clock=clock, lease_seconds=30)
    assert (stats.completed, stats.stale, stats.claimed) == (1, 0, 1)
    assert len(seen) == 6
    for now, expires in seen:
        assert expires is not None
        assert expires > now  # renewed in time, by the clock's measure


def _raise_lookup(ctx: RunContext) -> None:
    raise LookupError("x")


def test_the_worker_gives_handlers_ctx_error() -> None:
    seen: list[stepflow.ErrorRecord | None] = []

    def record(ctx: RunContext) -> None:
        seen.append(ctx.error)

    flow = stepflow.new(
        stepflow.named("w/v1")
        .switch("s", lambda ctx: 1, {1: stepflow.steps().do("a", record)})
        .catch("c", stepflow.steps().do("b", _raise_lookup), stepflow.steps().do("h", record))
    )
    store, clock = MemoryStore(), FakeClock(1000)
    start_run(store, flow, {}, run_id="r1", clock=clock)
    Worker(store, [flow], clock=clock).run_sync(until_idle=True, handle_signals=False)
    assert seen == [None, stepflow.ErrorRecord("LookupError", "x", "w/v1/cCatch/steps/b")]
    assert store.load("r1").status == "completed"
