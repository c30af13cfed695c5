"""Cancellation and run deadlines, end to end: ``stepflow.cancel_run``, the worker, the stores.

Tests taking ``make_store`` run on a MemoryStore, on a SQLite file and on a fresh
PostgreSQL schema. A cancellation is an event kept in the run's inbox under the
reserved name ``stepflow:cancel``; the worker delivers it as ``CancelRequested``
and the pure core unwinds the run (``stepflow.core.cleanup``). Deadlines are driven
with a ``FakeClock``: a worker on it jumps straight to the next due time.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest

import stepflow
from stepflow import FakeClock, RunContext, Worker
from stepflow.codec import loads, loads_batch
from stepflow.core.messages import CancelRequested
from stepflow.errors import ConfigurationError, UnknownRunError
from stepflow.history import history, replay
from stepflow.runtime import start_run, store_wake_at
from stepflow.runtime.runs import deadline_at
from stepflow.stores import MemoryStore, PostgresStore, Save, SQLiteStore, Store
from stepflow.stores._inbox import CANCEL_EVENT

START = 1_700_000_000.0


class Calls:
    """What the handlers of the test flows did, in order."""

    def __init__(self) -> None:
        self.log: list[str] = []

    def __call__(self, name: str, value: Any = None) -> Callable[[RunContext], Any]:
        def handler(ctx: RunContext) -> Any:
            self.log.append(name)
            return value

        return handler


def approval(calls: Calls, *, deadline: float | None = None) -> stepflow.Flow:
    """Ask, then wait for an approval (as long as it takes), then record it."""
    spec = (
        stepflow.named("approval/v1", deadline=deadline)
        .do("ask", calls("ask", "asked"))
        .wait_event("approved")
        .do("record", calls("record"))
    )
    return stepflow.new(spec)


def drain(store: Store, flow: stepflow.Flow, clock: FakeClock) -> Any:
    return Worker(store, [flow], clock=clock).run_sync(until_idle=True, handle_signals=False)


def cancels(store: Store, run_id: str) -> list[CancelRequested]:
    """The cancellations the run's journal holds, in order."""
    batches = [loads_batch(entry.batch) for entry in store.history(run_id)]
    return [e for b in batches for e in b.effects if type(e) is CancelRequested]


def error_of(store: Store, flow: stepflow.Flow, run_id: str) -> tuple[str, str]:
    state = loads(store.load(run_id).state, flow.definition)
    assert state.error is not None
    return state.error.type, state.error.message


# -- cancel_run: the request ------------------------------------------------------------------


def test_a_cancellation_waits_in_the_inbox_and_makes_the_run_due(store: Store) -> None:
    flow = approval(Calls())
    clock = FakeClock(START)
    start_run(store, flow, run_id="r1", clock=clock)
    drain(store, flow, clock)  # resting at the wait
    rested = store.load("r1")
    assert rested.wake_at is None
    clock.advance(60)
    assert stepflow.cancel_run(store, "r1", "no longer needed", clock=clock) is True
    run = store.load("r1")
    # The state, version and status are untouched; the run is due now.
    assert (run.status, run.version, run.state, run.inbox) == (
        "running",
        rested.version,
        rested.state,
        1,
    )
    assert run.wake_at == START + 60
    (pending,) = store.pending_events("r1", limit=10)
    assert (pending.name, pending.payload, pending.sent_at) == (
        CANCEL_EVENT,
        "no longer needed",
        START + 60,
    )
    # A second cancellation changes nothing.
    assert stepflow.cancel_run(store, "r1", "again", clock=clock) is False
    assert store.load("r1").inbox == 1


def test_a_cancellation_is_accepted_while_a_worker_holds_the_run(store: Store) -> None:
    flow = approval(Calls())
    clock = FakeClock(START)
    start_run(store, flow, run_id="r1", clock=clock)
    (lease,) = store.claim_due(now=START, limit=1, owner="w", lease_seconds=30.0)
    assert stepflow.cancel_run(store, "r1", clock=clock) is True  # no StaleWriteError
    # The holder's save goes through, and the run stays due for the cancellation.
    held = lease.run
    save = Save("r1", held.version, lease.token, held.state, "running", START + 99, release=True)
    saved = store.save(save, now=START + 1)
    assert (saved.inbox, saved.wake_at) == (1, START + 1)


def test_cancelling_a_finished_or_unknown_run(store: Store) -> None:
    calls = Calls()
    flow = stepflow.new(stepflow.named("quick/v1").do("one", calls("one")))
    clock = FakeClock(START)
    start_run(store, flow, run_id="done", clock=clock)
    drain(store, flow, clock)
    before = store.load("done")
    assert before.status == "completed"
    assert stepflow.cancel_run(store, "done", "late", clock=clock) is False
    assert store.load("done") == before
    assert store.pending_events("done", limit=5) == []
    with pytest.raises(UnknownRunError, match="'ghost'"):
        stepflow.cancel_run(store, "ghost", clock=clock)
    with pytest.raises(ConfigurationError, match="reason is a str"):
        stepflow.cancel_run(store, "done", 42, clock=clock)  # type: ignore[arg-type]


def test_a_failed_run_is_abandoned_at_once(store: Store) -> None:
    def boom(ctx: RunContext) -> None:
        raise RuntimeError("down")

    flow = stepflow.new(stepflow.named("fragile/v1").do("boom", boom))
    clock = FakeClock(START)
    start_run(store, flow, run_id="f1", clock=clock)
    drain(store, flow, clock)
    failed = store.load("f1")
    assert failed.status == "failed"
    assert stepflow.cancel_run(store, "f1", clock=clock) is True
    run = store.load("f1")
    assert (run.status, run.state, run.wake_at, run.inbox) == ("cancelled", failed.state, None, 0)
    assert loads_batch(store.history("f1")[-1].batch).op == "cancel"
    assert stepflow.cancel_run(store, "f1", clock=clock) is False


def test_a_cancelling_run_is_claimed_woken_and_counted_like_a_running_one(store: Store) -> None:
    flow = approval(Calls())
    run = start_run(store, flow, run_id="c1", clock=FakeClock(START))
    saved = store.save(
        Save("c1", run.version, None, run.state, "cancelling", START + 10), now=START
    )
    assert saved.status == "cancelling"
    assert store.next_due() == START + 10
    assert store.claim_due(now=START + 5, limit=5, owner="w", lease_seconds=30.0) == []
    assert store.wake("c1", now=START + 5) is True
    (lease,) = store.claim_due(now=START + 5, limit=5, owner="w", lease_seconds=30.0)
    assert lease.run.run_id == "c1"
    assert [h.owner for h in store.lease_holders(now=START + 5)] == ["w"]
    assert store.count(status="cancelling") == 1
    assert store.count_by_status() == {"cancelling": 1}
    assert [r.run_id for r in store.page_runs(status="cancelling")] == ["c1"]
    # A cancelling run is not finished: another cancellation changes nothing.
    assert stepflow.cancel_run(store, "c1", clock=FakeClock(START + 6)) is False
    assert store.load("c1").inbox == 0


def test_a_user_event_may_not_take_the_cancellation_name(store: Store) -> None:
    start_run(store, approval(Calls()), run_id="r1", clock=FakeClock(START))
    with pytest.raises(stepflow.errors.EventError, match="stepflow:cancel"):
        stepflow.send_event(store, "r1", CANCEL_EVENT, "x")
    assert store.load("r1").inbox == 0


# -- the worker delivers it -------------------------------------------------------------------


def test_a_run_resting_at_a_wait_event_is_cancelled(store: Store) -> None:
    calls = Calls()
    flow = approval(calls)
    clock = FakeClock(START)
    start_run(store, flow, run_id="r1", clock=clock)
    drain(store, flow, clock)
    clock.advance(30)
    stepflow.cancel_run(store, "r1", "customer left", clock=clock)
    stats = drain(store, flow, clock)
    run = store.load("r1")
    assert (run.status, run.wake_at, run.inbox, run.lease_token) == ("cancelled", None, 0, None)
    assert error_of(store, flow, "r1") == ("stepflow.errors.RunCancelled", "customer left")
    assert cancels(store, "r1") == [CancelRequested("customer left", START + 30)]
    assert calls.log == ["ask"]  # the record step never ran
    assert stats.cancelled == 1
    # Finished: never claimed again, and a later cancellation is a no-op.
    assert store.claim_due(now=START + 1e9, limit=5, owner="w", lease_seconds=30.0) == []
    assert stepflow.cancel_run(store, "r1", clock=clock) is False


def test_a_run_resting_at_a_sleep_is_cancelled_before_its_next_step(store: Store) -> None:
    calls = Calls()
    sent = threading.Event()

    def one(ctx: RunContext) -> str:
        calls.log.append("one")
        return "ok"

    def two(ctx: RunContext) -> None:
        calls.log.append("two")

    flow = stepflow.new(stepflow.named("nap/v1").do("one", one).sleep("nap", 3600).do("two", two))
    clock = FakeClock(START)
    start_run(store, flow, run_id="s1", clock=clock)

    def on_step(report: stepflow.runtime.StepReport) -> None:
        if report.command.step.endswith("/one") and not sent.is_set():
            sent.set()
            stepflow.cancel_run(store, "s1", "enough", clock=clock)

    Worker(store, [flow], clock=clock, on_step=on_step).run_sync(
        until_idle=True, handle_signals=False
    )
    assert store.load("s1").status == "cancelled"
    assert calls.log == ["one"]
    assert clock.now() < START + 3600  # the timer never fired


def test_a_run_cancelled_mid_step_finishes_the_step_then_is_cancelled(
    make_store: Callable[[], Store],
) -> None:
    store = make_store()
    started, release = threading.Event(), threading.Event()
    calls = Calls()

    def slow(ctx: RunContext) -> str:
        started.set()
        assert release.wait(30)
        return "finished"

    spec = stepflow.named("slow/v1").do("slow", slow).do("after", calls("after"))
    flow = stepflow.new(spec)
    start_run(store, flow, run_id="m1")
    worker = Worker(store, [flow], idle_interval=0.05)
    thread = threading.Thread(
        target=worker.run_sync, kwargs={"until_idle": True, "handle_signals": False}
    )
    thread.start()
    try:
        assert started.wait(30)
        # The worker holds the run's lease mid-step: the cancellation is still accepted.
        caller = make_store() if isinstance(store, PostgresStore) else store
        assert stepflow.cancel_run(caller, "m1", "operator") is True
        assert store.load("m1").lease_token is not None
        release.set()
    finally:
        release.set()
        thread.join(60)
    assert not thread.is_alive()
    run = store.load("m1")
    assert run.status == "cancelled"
    state = loads(run.state, flow.definition)
    assert state.outputs["slow/v1/slow"] == "finished"  # the step in flight was recorded
    assert calls.log == []  # and no new step started
    assert state.error is not None
    assert (state.error.type, state.error.message) == ("stepflow.errors.RunCancelled", "operator")


def test_an_event_sent_before_the_cancellation_is_delivered_first(store: Store) -> None:
    flow = approval(Calls())
    clock = FakeClock(START)
    start_run(store, flow, run_id="r1", clock=clock)
    drain(store, flow, clock)
    stepflow.send_event(store, "r1", "noise", 1, clock=clock)
    stepflow.cancel_run(store, "r1", "stop", clock=clock)
    drain(store, flow, clock)
    batches = [loads_batch(e.batch) for e in store.history("r1")]
    kinds = [[type(x).__name__ for x in b.effects] for b in batches if b.effects]
    assert kinds[-2:] == [["EventReceived"], ["CancelRequested"]]
    assert store.load("r1").status == "cancelled"


def test_cleanup_and_compensation_run_exactly_once_when_cancelled_through_the_worker(
    store: Store,
) -> None:
    calls = Calls()
    body = (
        stepflow.steps()
        .do("reserve", calls("reserve"), compensate=calls("release"))
        .wait_event("paid")
        .do("ship", calls("ship"))
    )
    spec = stepflow.named("order/v1").finally_(
        "guarded",
        stepflow.steps().saga("booking", body),
        stepflow.steps().do("unlock", calls("unlock")),
    )
    flow = stepflow.new(spec)
    clock = FakeClock(START)
    start_run(store, flow, run_id="o1", clock=clock)
    drain(store, flow, clock)
    assert calls.log == ["reserve"]
    stepflow.cancel_run(store, "o1", "customer cancelled", clock=clock)
    drain(store, flow, clock)
    drain(store, flow, clock)  # nothing more happens
    assert calls.log == ["reserve", "release", "unlock"]
    assert store.load("o1").status == "cancelled"
    assert error_of(store, flow, "o1") == ("stepflow.errors.RunCancelled", "customer cancelled")
    assert_replays(store, flow, "o1")


# -- deadlines -------------------------------------------------------------------------------


def test_a_flow_deadline_cancels_a_resting_run_with_deadline_exceeded(store: Store) -> None:
    calls = Calls()
    flow = approval(calls, deadline=3600)
    clock = FakeClock(START)
    record = start_run(store, flow, run_id="d1", clock=clock)
    assert record.deadline_at == START + 3600
    drain(store, flow, clock)
    run = store.load("d1")
    assert run.status == "cancelled"
    assert clock.now() == START + 3600  # handed over at its deadline, though resting
    kind, message = error_of(store, flow, "d1")
    assert kind == "stepflow.errors.DeadlineExceeded"
    assert message == "the deadline of 2023-11-14T23:13:20Z passed"
    (cancel,) = cancels(store, "d1")
    assert (cancel.deadline, cancel.at) == (True, START + 3600)
    assert calls.log == ["ask"]
    assert_replays(store, flow, "d1")


def test_start_run_deadline_wins_over_the_flows(store: Store) -> None:
    flow = approval(Calls(), deadline=3600)
    clock = FakeClock(START)
    record = start_run(store, flow, run_id="d2", clock=clock, deadline=dt.timedelta(minutes=5))
    assert record.deadline_at == START + 300
    drain(store, flow, clock)
    assert (store.load("d2").status, clock.now()) == ("cancelled", START + 300)
    assert error_of(store, flow, "d2")[0] == "stepflow.errors.DeadlineExceeded"


def test_a_run_that_ends_before_its_deadline_keeps_no_wake(store: Store) -> None:
    calls = Calls()
    flow = stepflow.new(stepflow.named("quick/v1").do("one", calls("one")))
    clock = FakeClock(START)
    start_run(store, flow, run_id="q1", clock=clock, deadline=60)
    drain(store, flow, clock)
    run = store.load("q1")
    assert (run.status, run.wake_at, run.deadline_at) == ("completed", None, START + 60)
    assert clock.now() == START
    assert cancels(store, "q1") == []


def test_store_wake_at_keeps_a_running_run_due_by_its_deadline(store: Store) -> None:
    flow = stepflow.new(stepflow.named("wait/v1").do("ask", Calls()("ask")).wait_event("go"))
    clock = FakeClock(START)
    started = start_run(store, flow, run_id="r1", clock=clock)
    due = loads(started.state, flow.definition)
    assert store_wake_at(due, START, START + 5) == START  # its first step is due now
    drain(store, flow, clock)
    resting = loads(store.load("r1").state, flow.definition)
    assert store_wake_at(resting, START) is None  # an untimed wait: nothing to do
    assert store_wake_at(resting, START, START + 5) == START + 5
    # Once cancelling, the deadline was delivered: it counts no more.
    assert store_wake_at(due._replace(status="cancelling"), START + 1, START - 5) == START + 1
    assert store_wake_at(resting._replace(status="cancelled"), START, START + 5) is None


@pytest.mark.parametrize(
    ("deadline", "message"),
    [
        (0, "seconds > 0"),
        (-5, "seconds > 0"),
        (float("nan"), "seconds > 0"),
        (float("inf"), "seconds > 0"),
        (True, "seconds > 0"),
        ("30m", "seconds > 0"),
        (dt.timedelta(0), "seconds > 0"),
        (dt.datetime(2030, 1, 1), "timezone-aware"),
        (dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc), "has passed already"),
    ],
)
def test_a_bad_deadline_is_refused_and_starts_nothing(deadline: Any, message: str) -> None:
    store = MemoryStore()
    with pytest.raises(ConfigurationError, match=message):
        start_run(store, approval(Calls()), run_id="x", deadline=deadline, clock=FakeClock(START))
    assert store.runs() == []


def test_a_deadline_at_an_aware_datetime() -> None:
    when = dt.datetime.fromtimestamp(START + 90, dt.timezone.utc)
    assert deadline_at(when, START) == START + 90
    assert deadline_at(2.5, START) == START + 2.5


def test_the_deadline_column_survives_a_reopen(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    start_run(store, approval(Calls()), run_id="r1", clock=FakeClock(START), deadline=10)
    store.close()
    again = SQLiteStore(tmp_path / "runs.db")
    assert again.load("r1").deadline_at == START + 10
    assert attrs.fields_dict(type(again.load("r1")))["deadline_at"].default is None
    again.close()


def test_a_cleanup_step_due_when_the_cancellation_comes_runs_once(store: Store) -> None:
    calls = Calls()
    clock = FakeClock(START)

    def work(ctx: RunContext) -> str:
        calls.log.append("work")
        # The run is cancelled as its body ends: its cleanup is due, not started.
        stepflow.cancel_run(store, ctx.run_id, "late", clock=clock)
        return "done"

    spec = stepflow.named("guard/v1").finally_(
        "guarded", stepflow.steps().do("work", work), stepflow.steps().do("unlock", calls("unlock"))
    )
    spec = spec.do("after", calls("after"))
    flow = stepflow.new(spec)
    start_run(store, flow, run_id="g1", clock=clock)
    drain(store, flow, clock)
    assert calls.log == ["work", "unlock"]  # the cleanup is never cut short
    assert store.load("g1").status == "cancelled"
    assert error_of(store, flow, "g1") == ("stepflow.errors.RunCancelled", "late")
    assert_replays(store, flow, "g1")


def test_a_step_due_when_the_cancellation_comes_never_starts(store: Store) -> None:
    calls = Calls()
    clock = FakeClock(START)

    def first(ctx: RunContext) -> None:
        calls.log.append("first")
        stepflow.cancel_run(store, ctx.run_id, "stop", clock=clock)

    flow = stepflow.new(stepflow.named("two/v1").do("first", first).do("second", calls("second")))
    start_run(store, flow, run_id="t1", clock=clock)
    drain(store, flow, clock)
    assert calls.log == ["first"]
    assert store.load("t1").status == "cancelled"
    # The journal says so: the second step was answered with the cancellation.
    last = loads_batch(store.history("t1")[-1].batch)
    assert [type(e).__name__ for e in last.effects] == ["CancelRequested", "HandlerRaised"]
    assert [c.step for c in last.answered] == ["two/v1/second"]
    assert_replays(store, flow, "t1")


def assert_replays(store: Store, flow: stepflow.Flow, run_id: str) -> None:
    """The run's journal replays, without divergence, to the state stored."""
    result = replay(flow.definition, history(store, run_id))
    assert result.ok, result.divergences
    assert result.final == loads(store.load(run_id).state, flow.definition)


def test_a_parallel_run_cancelled_while_one_branch_executes(
    make_store: Callable[[], Store],
) -> None:
    store = make_store()
    started, release = threading.Event(), threading.Event()
    calls = Calls()

    def slow(ctx: RunContext) -> str:
        started.set()
        assert release.wait(30)
        return "slow done"

    branches = {
        "a": stepflow.steps().do("slow", slow).do("a2", calls("a2")),
        "b": stepflow.steps().do("quick", calls("quick")).sleep("nap", 3600).do("b2", calls("b2")),
    }
    guarded = stepflow.steps().parallel("both", branches)
    spec = stepflow.named("par/v1").finally_(
        "guarded", guarded, stepflow.steps().do("unlock", calls("unlock"))
    )
    flow = stepflow.new(spec)
    start_run(store, flow, run_id="p1")
    worker = Worker(store, [flow], idle_interval=0.05)
    thread = threading.Thread(
        target=worker.run_sync, kwargs={"until_idle": True, "handle_signals": False}
    )
    thread.start()
    try:
        assert started.wait(30)
        caller = make_store() if isinstance(store, PostgresStore) else store
        assert stepflow.cancel_run(caller, "p1", "halt") is True
    finally:
        release.set()
        thread.join(60)
    assert not thread.is_alive()
    run = store.load("p1")
    assert run.status == "cancelled"
    state = loads(run.state, flow.definition)
    assert state.outputs["par/v1/guardedFinally/steps/bothParallel/a/slow"] == "slow done"
    assert sorted(calls.log) == ["quick", "unlock"]  # no a2, no b2; the cleanup once
    assert_replays(store, flow, "p1")
