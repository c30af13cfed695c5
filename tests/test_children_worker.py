"""Child runs in the runtime: a worker starts them in the parent's save, and their end wakes it.

Tests run on a MemoryStore, a SQLite file and a fresh PostgreSQL schema. A child
is created in the same transaction as the save of its parent that started it; a
child's end is left in its parent's inbox (``stepflow:child``) by the save that
finishes it, and the parent's worker delivers it as a ``ChildEnded`` effect.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import stepflow
from stepflow import FakeClock, RunContext, Worker
from stepflow.codec import loads_batch
from stepflow.runtime import cancel_run, start_run
from stepflow.stores import MemoryStore, PostgresStore, Save, SQLiteStore, Store
from stepflow.stores._inbox import CHILD_EVENT

START = 1_700_000_000.0


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        opened: Store = MemoryStore()
    elif request.param == "sqlite":
        opened = SQLiteStore(tmp_path / "runs.db")
    else:
        schema = request.getfixturevalue("postgres_schema")
        opened = PostgresStore(request.getfixturevalue("postgres_dsn"), schema=schema)
    yield opened
    opened.close()


def drive(store: Store, flows: list[stepflow.Flow], clock: FakeClock) -> Any:
    return Worker(store, flows, clock=clock).run_sync(until_idle=True, handle_signals=False)


def double() -> stepflow.Flow:
    return stepflow.new(stepflow.named("double/v1").do("x2", lambda ctx: ctx.input * 2))


def caller(child: Any = "double/v1", **kwargs: Any) -> stepflow.Flow:
    return stepflow.new(
        stepflow.named("caller/v1")
        .call("run", child, input=lambda ctx: ctx.input, **kwargs)
        .do("after", lambda ctx: ctx.outputs["caller/v1/runCall"])
    )


def test_a_parent_completes_with_its_childs_outputs(store: Store) -> None:
    clock = FakeClock(START)
    parent = caller()
    start_run(store, parent, 21, run_id="p", clock=clock)
    stats = drive(store, [parent, double()], clock)
    assert stats.completed == 2
    done = stepflow.loads(store.load("p").state, parent.definition)
    assert done.status == "completed"
    assert done.outputs["caller/v1/after"] == {"double/v1/x2": 42}
    (child,) = store.children("p")
    assert (child.run_id, child.parent_run_id, child.parent_command) == (
        "p/caller/v1/runCall#1",
        "p",
        1,
    )
    assert (child.status, child.input, child.flow) == ("completed", 21, "double/v1")
    assert store.children(child.run_id) == []
    # The child's end reached the parent as a journaled ChildEnded effect.
    effects = [e for entry in store.history("p") for e in loads_batch(entry.batch).effects]
    ended = [e for e in effects if type(e) is stepflow.ChildEnded]
    assert [(e.status, e.child) for e in ended] == [("completed", child.run_id)]


def test_the_child_is_created_in_the_parents_save_once(store: Store) -> None:
    clock = FakeClock(START)
    waits = stepflow.new(stepflow.named("waits/v1").wait_event("go"))
    parent = caller("waits/v1")
    start_run(store, parent, 1, run_id="p", clock=clock)
    drive(store, [parent, waits], clock)
    (child,) = store.children("p")
    assert child.status == "running"  # waiting for its event
    rested = store.load("p")
    assert (rested.status, rested.wake_at) == ("running", None)  # resting until the child ends
    # A worker re-driving the parent (after a crash, or woken by hand) finds its
    # child started and never doubles it.
    stepflow.wake(store, "p", clock=clock)
    drive(store, [parent, waits], clock)
    assert [c.run_id for c in store.children("p")] == [child.run_id]
    assert store.load("p").wake_at is None
    stepflow.send_event(store, child.run_id, "go", {"ok": True}, clock=clock)
    drive(store, [parent, waits], clock)
    done = stepflow.loads(store.load("p").state, parent.definition)
    assert done.outputs["caller/v1/after"] == {"waits/v1/goWaitEvent": {"ok": True}}


def boom(ctx: RunContext) -> None:
    raise ValueError(f"bad input {ctx.input}")


def test_a_failed_child_fails_the_step_and_a_retry_starts_a_new_child(store: Store) -> None:
    clock = FakeClock(START)
    child = stepflow.new(stepflow.named("boom/v1").do("boom", boom))
    policy = stepflow.RetryPolicy(max_attempts=2, initial_interval=0)
    parent = stepflow.new(
        stepflow.named("caller/v1").retry(
            "again", policy, stepflow.steps().call("run", child, input=lambda ctx: 7)
        )
    )
    start_run(store, parent, run_id="p", clock=clock)
    drive(store, [parent, child], clock)
    failed = stepflow.loads(store.load("p").state, parent.definition)
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.type == "stepflow.errors.ChildFailed"
    assert "ValueError: bad input 7" in failed.error.message
    children = store.children("p")
    assert len(children) == 2
    assert len({c.run_id for c in children}) == 2
    assert {c.status for c in children} == {"failed"}


def test_an_unknown_child_flow_fails_the_step_with_a_recorded_error(store: Store) -> None:
    clock = FakeClock(START)
    parent = caller("nowhere/v1")
    start_run(store, parent, 1, run_id="p", clock=clock)
    stats = drive(store, [parent], clock)
    assert (stats.failed, stats.parked) == (1, 0)
    state = stepflow.loads(store.load("p").state, parent.definition)
    assert state.error is not None
    assert state.error.type == "stepflow.errors.ConfigurationError"
    assert "'nowhere/v1', which this worker does not serve" in state.error.message
    assert store.children("p") == []


def test_a_child_id_used_by_another_run_fails_the_step(store: Store) -> None:
    clock = FakeClock(START)
    parent = caller(id=lambda ctx: "taken")
    start_run(store, double(), 1, run_id="taken", clock=clock)
    start_run(store, parent, 1, run_id="p", clock=clock)
    drive(store, [parent], clock)
    state = stepflow.loads(store.load("p").state, parent.definition)
    assert state.error is not None
    assert state.error.type == "stepflow.errors.RunExistsError"
    assert "'taken'" in state.error.message
    assert store.load("taken").parent_run_id is None


def test_cancelling_a_parent_cancels_its_child_with_its_cleanup(store: Store) -> None:
    clock = FakeClock(START)
    released: list[str] = []
    child = stepflow.new(
        stepflow.named("lease/v1").finally_(
            "hold",
            stepflow.steps().wait_event("go"),
            stepflow.steps().do("release", lambda ctx: released.append(ctx.run_id)),
        )
    )
    parent = stepflow.new(
        stepflow.named("caller/v1").finally_(
            "work",
            stepflow.steps().call("run", child),
            stepflow.steps().do("tidy", lambda ctx: released.append(ctx.run_id)),
        )
    )
    start_run(store, parent, run_id="p", clock=clock)
    drive(store, [parent, child], clock)
    (kid,) = store.children("p")
    assert kid.status == "running"  # waiting for its event
    assert cancel_run(store, "p", "not needed", clock=clock)
    drive(store, [parent, child], clock)
    assert store.load(kid.run_id).status == "cancelled"
    assert store.load("p").status == "cancelled"
    assert released == [kid.run_id, "p"]


def test_a_finished_parent_takes_no_child_end_and_the_child_event_is_reserved(
    store: Store,
) -> None:
    clock = FakeClock(START)
    parent = caller()
    start_run(store, parent, 2, run_id="p", clock=clock)
    drive(store, [parent, double()], clock)
    assert store.load("p").status == "completed"
    record = store.load(store.children("p")[0].run_id)
    save = Save(record.run_id, record.version, None, record.state, "completed", None)
    store.save(attrs.evolve(save, parent_note='{"command": 1}'), now=clock.now())
    assert store.load("p").inbox == 0
    with pytest.raises(stepflow.EventError):
        store.send_event("p", CHILD_EVENT, {}, now=clock.now())


def test_a_parent_with_many_children_in_a_map_collects_their_outputs(store: Store) -> None:
    clock = FakeClock(START)
    parent = stepflow.new(
        stepflow.named("fan/v1").map("each", lambda ctx: list(range(5)), call=double())
    )
    start_run(store, parent, run_id="p", clock=clock)
    drive(store, [parent, double()], clock)
    state = stepflow.loads(store.load("p").state, parent.definition)
    assert state.status == "completed"
    assert state.outputs["fan/v1/eachMap"] == [{"double/v1/x2": 2 * i} for i in range(5)]
    assert len(store.children("p")) == 5


def test_show_names_a_runs_parent_and_children(tmp_path: Path) -> None:
    from stepflow.cli import _read_shown, _show_document

    store = SQLiteStore(tmp_path / "runs.db")
    clock = FakeClock(START)
    parent = caller()
    start_run(store, parent, 3, run_id="p", clock=clock)
    drive(store, [parent, double()], clock)
    shown = _show_document(_read_shown(store, "p"))
    child = "p/caller/v1/runCall#1"
    assert (shown["parent_run_id"], shown["children"]) == (None, [child])
    outcomes = [e for entry in shown["journal"] for e in entry["effects"]]
    assert {"outcome": "child", "child": child, "status": "completed"} in outcomes
    kid = _show_document(_read_shown(store, child))
    assert (kid["parent_run_id"], kid["children"]) == ("p", [])
    store.close()


def test_a_parent_cancelled_before_its_child_started_starts_none(store: Store) -> None:
    clock = FakeClock(START)
    parent = caller()
    start_run(store, parent, 1, run_id="p", clock=clock)
    assert cancel_run(store, "p", "changed my mind", clock=clock)
    drive(store, [parent, double()], clock)
    record = store.load("p")
    assert record.status == "cancelled"
    assert store.children("p") == []


def test_a_save_that_fails_creates_no_child(store: Store) -> None:
    from stepflow.errors import StaleWriteError
    from stepflow.stores.base import ChildRun

    clock = FakeClock(START)
    start_run(store, caller(), 1, run_id="p", clock=clock)
    record = store.load("p")
    child = ChildRun("p/kid", "double/v1", record.state, "running", START, 1, 1)
    stale = Save("p", record.version + 1, None, record.state, "running", None, children=(child,))
    with pytest.raises(StaleWriteError):
        store.save(stale, now=START)
    assert store.children("p") == []
    fresh = attrs.evolve(stale, expected_version=record.version)
    store.save(fresh, now=START)
    assert [c.run_id for c in store.children("p")] == ["p/kid"]
    assert [e.seq for e in store.history("p/kid")] == []  # (no batch given)


def test_on_step_reports_a_childs_end_as_its_calls_step(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    clock = FakeClock(START)
    waits = stepflow.new(stepflow.named("waits/v1").wait_event("go"))
    parent = stepflow.new(
        stepflow.named("caller/v1")
        .wait_event("start")
        .call("run", "waits/v1")
        .do("after", lambda ctx: None)
    )
    start_run(store, parent, run_id="p", clock=clock)
    reports: list[Any] = []
    stepflow.send_event(store, "p", "start", None, clock=clock)
    Worker(store, [parent, waits], clock=clock, on_step=reports.append).run_sync(
        until_idle=True, handle_signals=False
    )
    stepflow.send_event(store, "p/caller/v1/runCall#2", "go", 1, clock=clock)
    Worker(store, [parent, waits], clock=clock, on_step=reports.append).run_sync(
        until_idle=True, handle_signals=False
    )
    kinds = [(r.run_id, r.command.kind, type(r.effect).__name__) for r in reports]
    assert ("p", "wait_event", "EventReceived") in kinds
    assert ("p", "call", "ChildEnded") in kinds
    assert store.load("p").status == "completed"
    store.close()
