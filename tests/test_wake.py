"""``stepflow.wake``: a resting run made due now, on every store, in the worker, on the CLI.

The worker tests wait on polls an hour apart (``every=3600``) on the system clock:
only a wake can make them finish within the test's bound, so a test that passes
shows the wake worked, and no assertion is about how long anything took.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import test_cli
import test_worker
from test_cli import db_args, ok, stepflow_cli
from test_worker import StoreMaker

import stepflow
from stepflow import RetryPolicy, RunContext, Worker
from stepflow.codec import loads_batch
from stepflow.errors import UnknownRunError
from stepflow.runtime import start_run
from stepflow.stores import Save, Store

# The fixtures of the worker's and the CLI's tests: stores of every kind, a project.
make_store = test_worker.make_store
project = test_cli.project

HOUR = 3600.0
T0 = 1_700_000_000.0


def waiting_flow(polls: list[float], *, true_from: int = 2) -> stepflow.Flow:
    """A flow that waits for a condition polled hourly, true from its ``true_from``-th poll."""

    def ready(ctx: RunContext) -> bool:
        polls.append(ctx.now)
        return len(polls) >= true_from

    return stepflow.new(
        stepflow.named("w").wait_for("ready", ready, every=HOUR).do("done", lambda ctx: "done")
    )


def ops(store: Store, run_id: str) -> list[str]:
    return [loads_batch(entry.batch).op for entry in store.history(run_id)]


# -- the store -------------------------------------------------------------------


def test_wake_makes_a_resting_run_due_without_touching_state_version_or_lease(
    make_store: StoreMaker,
) -> None:
    store = make_store()
    flow = waiting_flow([])
    clock = stepflow.FakeClock(T0)
    run_id = start_run(store, flow, {}, clock=clock).run_id
    before = store.load(run_id)
    later = attrs_evolve_wake(store, before, T0 + HOUR)
    assert later.wake_at == T0 + HOUR
    assert store.wake(run_id, now=T0 + 5) is True
    woken = store.load(run_id)
    assert (woken.wake_at, woken.woken_at) == (T0 + 5, T0 + 5)
    assert (woken.version, woken.state, woken.status) == (later.version, later.state, "running")
    # A wake never delays: an earlier wake_at stays.
    assert store.wake(run_id, now=T0 + 10) is True
    assert store.load(run_id).wake_at == T0 + 5


def attrs_evolve_wake(store: Store, record: Any, wake_at: float) -> Any:
    """Save ``record`` unchanged but resting until ``wake_at`` (as a worker would)."""
    save = Save(record.run_id, record.version, None, record.state, "running", wake_at)
    return store.save(save, now=T0)


def test_wake_of_a_finished_run_changes_nothing_and_of_an_unknown_one_raises(
    make_store: StoreMaker,
) -> None:
    store = make_store()
    flow = stepflow.new(stepflow.named("w").do("a", lambda ctx: "a"))
    clock = stepflow.FakeClock(T0)
    run_id = start_run(store, flow, {}, clock=clock).run_id
    stepflow.cancel_run(store, run_id, clock=clock)
    Worker(store, [flow], clock=clock).run_sync(until_idle=True, handle_signals=False)
    before = store.load(run_id)
    assert before.status == "cancelled"
    assert store.wake(run_id, now=T0 + 1) is False
    assert store.load(run_id) == before
    with pytest.raises(UnknownRunError):
        store.wake("nobody", now=T0)
    with pytest.raises(UnknownRunError):
        stepflow.wake(store, "nobody")


def test_a_wake_during_a_lease_is_never_refused_and_survives_the_holders_saves(
    make_store: StoreMaker,
) -> None:
    store = make_store()
    flow = waiting_flow([])
    run_id = start_run(store, flow, {}, clock=stepflow.FakeClock(T0)).run_id
    (lease,) = store.claim_due(now=T0, limit=1, owner="w1", lease_seconds=60)
    assert store.wake(run_id, now=T0 + 1) is True  # no StaleWriteError
    record = store.load(run_id)
    assert (record.lease_token, record.version) == (lease.token, lease.run.version)
    # The holder saves a state resting an hour later and lets the run go: the
    # pending wake keeps it due at the wake's time.
    rest = Save(run_id, record.version, lease.token, record.state, "running", T0 + HOUR)
    saved = store.save(attrs_release(rest), now=T0 + 2)
    assert (saved.wake_at, saved.woken_at, saved.lease_token) == (T0 + 1, T0 + 1, None)
    # The next holder takes the wake in: cleared, and its own wake_at kept.
    (lease,) = store.claim_due(now=T0 + 3, limit=1, owner="w2", lease_seconds=60)
    taken = Save(run_id, saved.version, lease.token, saved.state, "running", T0 + HOUR)
    taken = attrs_takes_wake(taken)
    after = store.save_many([taken], now=T0 + 3)[0]
    assert not isinstance(after, BaseException)
    assert (after.wake_at, after.woken_at) == (T0 + HOUR, None)
    # A finishing save clears a pending wake too.
    store.wake(run_id, now=T0 + 4)
    done = Save(run_id, after.version, lease.token, after.state, "completed", None)
    assert store.save(done, now=T0 + 5).woken_at is None


def attrs_release(save: Save) -> Save:
    import attrs

    return attrs.evolve(save, release=True)


def attrs_takes_wake(save: Save) -> Save:
    import attrs

    return attrs.evolve(save, takes_wake=True)


# -- the worker --------------------------------------------------------------------


def drive_until(store: Store, flows: list[stepflow.Flow], done: Callable[[], bool]) -> None:
    """Run a worker on the system clock until ``done()``, then stop it."""
    worker = Worker(store, flows, idle_interval=0.02, lease_seconds=60)

    async def main() -> None:
        task = asyncio.create_task(worker.run())
        try:
            for _ in range(3000):  # 30 s: far less than the hour a poll waits
                if done():
                    return
                await asyncio.sleep(0.01)
            raise AssertionError("the worker never got there")
        finally:
            worker.stop()
            await asyncio.wait_for(task, timeout=30)

    asyncio.run(main())


def test_a_woken_wait_for_polls_now_and_the_journal_shows_the_wake(
    make_store: StoreMaker,
) -> None:
    store = make_store()
    polls: list[float] = []
    flow = waiting_flow(polls)
    run_id = start_run(store, flow, {}).run_id
    drive_until(store, [flow], lambda: len(polls) == 1 and store.load(run_id).lease_token is None)
    assert store.load(run_id).wake_at == pytest.approx(polls[0] + HOUR, abs=5)
    assert stepflow.wake(store, run_id) is True
    drive_until(store, [flow], lambda: store.load(run_id).status == "completed")
    assert len(polls) == 2
    assert ops(store, run_id) == ["start", "effects", "wake", "effects", "effects"]


def test_a_wake_while_a_step_runs_takes_effect_once_the_holder_lets_go(
    make_store: StoreMaker,
) -> None:
    store = make_store()
    polls: list[float] = []
    running, go = threading.Event(), threading.Event()

    def first(ctx: RunContext) -> None:
        running.set()
        assert go.wait(30)

    def ready(ctx: RunContext) -> bool:
        polls.append(ctx.now)
        return len(polls) >= 2

    spec = stepflow.named("w").do("first", first).wait_for("ready", ready, every=HOUR)
    flow = stepflow.new(spec)
    run_id = start_run(store, flow, {}).run_id

    def wake_mid_step() -> bool:
        if running.is_set() and not go.is_set():
            assert stepflow.wake(store, run_id) is True  # leased: still accepted
            go.set()
        return store.load(run_id).status == "completed"

    drive_until(store, [flow], wake_mid_step)
    assert len(polls) == 2  # the first poll found it false; the wake polled again
    assert "wake" in ops(store, run_id)


def test_a_woken_retry_backoff_ends_now() -> None:
    store = stepflow.stores.MemoryStore()
    attempts: list[int] = []

    def flaky(ctx: RunContext) -> str:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            raise RuntimeError("down")
        return "up"

    policy = RetryPolicy(max_attempts=3, initial_interval=HOUR, jitter=0)
    flow = stepflow.new(stepflow.named("r").retry("r", policy, stepflow.steps().do("a", flaky)))
    run_id = start_run(store, flow, {}).run_id
    drive_until(store, [flow], lambda: attempts == [1] and store.load(run_id).lease_token is None)
    stepflow.wake(store, run_id)
    drive_until(store, [flow], lambda: store.load(run_id).status == "completed")
    assert attempts == [1, 2]


def test_a_sleep_is_never_cut_short_by_a_wake() -> None:
    store = stepflow.stores.MemoryStore()
    spec = stepflow.named("s").do("before", lambda ctx: 1).sleep("nap", HOUR)
    flow = stepflow.new(spec.do("after", lambda ctx: "after"))
    run_id = start_run(store, flow, {}).run_id
    drive_until(store, [flow], lambda: store.load(run_id).version == 2)
    resting = store.load(run_id)
    assert stepflow.wake(store, run_id) is True
    drive_until(store, [flow], lambda: "wake" in ops(store, run_id))
    after = store.load(run_id)
    assert after.status == "running"
    assert after.wake_at == resting.wake_at  # the timer keeps its time
    assert after.woken_at is None
    state = stepflow.loads(after.state, flow.definition)
    assert state.in_flight[0].kind == "sleep"


# -- the CLI -----------------------------------------------------------------------


def test_cli_wake(project: Path) -> None:
    db = db_args(project)
    start = ["start", "flows:hello", "--input", '{"name": "x"}', "--id", "wake-1", *db]
    ok(stepflow_cli(*start, cwd=project))
    assert "Woke run wake-1" in ok(stepflow_cli("wake", "wake-", *db, cwd=project))
    ok(stepflow_cli("cancel", "wake-1", *db, cwd=project))
    ok(stepflow_cli("worker", "flows:hello", "--until-idle", *db, cwd=project))
    finished = stepflow_cli("wake", "wake-1", *db, cwd=project)
    assert "Run wake-1 is cancelled: nothing to wake." in ok(finished)
    unknown = stepflow_cli("wake", "nobody", *db, cwd=project)
    assert unknown.returncode == 1
    assert "Error" in unknown.stderr
    assert "Traceback" not in unknown.stderr
