"""Events sent to runs, end to end: ``stepflow.send_event``, the worker's delivery, the CLI.

Tests taking ``make_store`` run on a MemoryStore, on a SQLite file and on a fresh
PostgreSQL schema. How fast a send wakes an idle worker is measured in
``benchmarks/runtime.py``, not here.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import stepflow
from stepflow import FakeClock, RunContext, Worker
from stepflow.codec import loads, loads_batch
from stepflow.core.messages import EventReceived, TimerFired
from stepflow.errors import (
    EventError,
    InboxFullError,
    RunFinishedError,
    StaleWriteError,
    UnknownRunError,
)
from stepflow.runtime import read_run, start_run, store_wake_at
from stepflow.stores import PostgresStore, Save, SQLiteStore, Store

START = 1_700_000_000.0
WAIT = "approval/v1/approvedWaitEvent"


class Seen:
    """What the handlers of the approval flow saw, and a hook run inside its first step."""

    def __init__(self) -> None:
        self.after: list[Any] = []
        self.first: Callable[[RunContext], None] = lambda ctx: None

    def flow(self, **wait: Any) -> stepflow.Flow:
        def first(ctx: RunContext) -> str:
            self.first(ctx)
            return "asked"

        def after(ctx: RunContext) -> None:
            self.after.append(ctx.outputs.get(WAIT))

        spec = stepflow.named("approval/v1").do("ask", first).wait_event("approved", **wait)
        return stepflow.new(spec.do("record", after))


def drain(store: Store, flow: stepflow.Flow, clock: FakeClock | None = None) -> Any:
    worker = Worker(store, [flow], clock=clock or FakeClock(START))
    return worker.run_sync(until_idle=True, handle_signals=False)


def event_batches(store: Store, run_id: str) -> list[tuple[EventReceived, ...]]:
    batches = [loads_batch(entry.batch) for entry in store.history(run_id)]
    return [b.effects for b in batches if b.effects and type(b.effects[0]) is EventReceived]


# -- delivery by the worker ------------------------------------------------------------------


def test_an_event_sent_before_the_wait_is_taken_once(store: Store) -> None:
    seen = Seen()
    flow = seen.flow()
    clock = FakeClock(START)
    start_run(store, flow, run_id="r1", clock=clock)
    assert stepflow.send_event(store, "r1", "approved", {"by": "ann"}, clock=clock) is True
    stats = drain(store, flow, clock)
    assert seen.after == [{"by": "ann"}]
    run = store.load("r1")
    assert (run.status, run.inbox) == ("completed", 0)
    assert store.pending_events("r1", limit=10) == []
    assert event_batches(store, "r1") == [(EventReceived("approved", {"by": "ann"}, START),)]
    assert stats.events == 1
    # Driving it again delivers nothing more.
    drain(store, flow, clock)
    assert seen.after == [{"by": "ann"}]


def test_an_event_sent_while_a_step_runs_is_not_stranded(store: Store) -> None:
    seen = Seen()
    seen.first = lambda ctx: stepflow.send_event(store, ctx.run_id, "approved", "yes")
    flow = seen.flow()
    start_run(store, flow, run_id="r1", clock=FakeClock(START))
    drain(store, flow)
    assert seen.after == ["yes"]
    assert store.load("r1").status == "completed"


def test_a_run_resting_at_an_untimed_wait_costs_nothing_until_an_event(store: Store) -> None:
    seen = Seen()
    flow = seen.flow()
    clock = FakeClock(START)
    start_run(store, flow, run_id="r1", clock=clock)
    drain(store, flow, clock)
    rested = store.load("r1")
    state = loads(rested.state, flow.definition)
    assert (rested.status, rested.wake_at, store_wake_at(state, clock.now())) == (
        "running",
        None,
        None,
    )
    entries = len(store.history("r1"))
    clock.advance(7 * 86400.0)
    drain(store, flow, clock)  # nothing due: no journal entry, no poll
    assert len(store.history("r1")) == entries
    stepflow.send_event(store, "r1", "approved", 1, clock=clock)
    drain(store, flow, clock)
    assert (store.load("r1").status, seen.after) == ("completed", [1])


def test_a_send_wakes_an_idle_worker_at_once(make_store: Callable[[], Store]) -> None:
    """The worker sleeps for a minute between looks: only the send's notice can wake it.

    On PostgreSQL the send goes through another store object (another connection,
    as from another process): its notice comes through LISTEN/NOTIFY.
    """
    store = make_store()
    done = threading.Event()
    seen = Seen()
    flow = seen.flow()
    rested = threading.Event()

    def on_step(report: stepflow.runtime.StepReport) -> None:
        if report.command.step.endswith("/ask"):
            rested.set()
        if report.state.status == "completed":
            done.set()

    worker = Worker(store, [flow], idle_interval=60.0, on_step=on_step)
    thread = threading.Thread(target=worker.run_sync, kwargs={"handle_signals": False})
    start_run(store, flow, run_id="r1")
    thread.start()
    try:
        assert rested.wait(30)
        # The same store object (memory, SQLite), or another one on PostgreSQL.
        sender = make_store() if isinstance(store, PostgresStore) else store
        stepflow.send_event(sender, "r1", "approved", "now")
        assert done.wait(30), "the send did not wake the worker"
    finally:
        worker.stop()
        thread.join(30)
    assert seen.after == ["now"]


def test_a_duplicate_key_is_delivered_once(store: Store) -> None:
    seen = Seen()
    seen_flow = seen.flow()
    clock = FakeClock(START)
    start_run(store, seen_flow, run_id="r1", clock=clock)
    assert stepflow.send_event(store, "r1", "approved", 1, key="k", clock=clock) is True
    assert stepflow.send_event(store, "r1", "approved", 2, key="k", clock=clock) is False
    drain(store, seen_flow, clock)
    assert seen.after == [1]
    assert [len(b) for b in event_batches(store, "r1")] == [1]
    # The run is finished: the same key is still a no-op, a new one is refused.
    assert stepflow.send_event(store, "r1", "approved", 3, key="k", clock=clock) is False
    with pytest.raises(RunFinishedError, match="'r1' is completed"):
        stepflow.send_event(store, "r1", "approved", 3, key="other", clock=clock)


def test_events_are_taken_first_in_first_out_and_unknown_names_are_dropped(store: Store) -> None:
    outputs: list[Any] = []
    spec = (
        stepflow.named("pair/v1")
        .wait_event("item")
        .do("one", lambda ctx: outputs.append(ctx.outputs["pair/v1/itemWaitEvent"]))
        .steps("second", stepflow.steps().wait_event("item"))
        .do("two", lambda ctx: outputs.append(ctx.outputs["pair/v1/second/itemWaitEvent"]))
    )
    flow = stepflow.new(spec)
    clock = FakeClock(START)
    start_run(store, flow, run_id="r1", clock=clock)
    for name, payload in (("item", "a"), ("noise", "x"), ("item", "b")):
        stepflow.send_event(store, "r1", name, payload, clock=clock)
    drain(store, flow, clock)
    assert (store.load("r1").status, outputs) == ("completed", ["a", "b"])
    # All three were journaled, in one batch, in the order sent.
    assert [[e.name for e in batch] for batch in event_batches(store, "r1")] == [
        ["item", "noise", "item"]
    ]


def test_a_timed_wait_times_out_and_takes_its_on_timeout_steps(store: Store) -> None:
    escalated: list[str] = []
    spec = (
        stepflow.named("approval/v1")
        .wait_event(
            "approved",
            timeout=3600,
            on_timeout=stepflow.steps().do("escalate", lambda ctx: escalated.append(ctx.run_id)),
        )
        .do("record", lambda ctx: None)
    )
    flow = stepflow.new(spec)
    clock = FakeClock(START)
    start_run(store, flow, run_id="late", clock=clock)
    start_run(store, flow, run_id="early", clock=clock)
    stepflow.send_event(store, "early", "approved", True, clock=clock)
    drain(store, flow, clock)
    assert escalated == ["late"]
    assert clock.now() >= START + 3600
    late = [loads_batch(entry.batch) for entry in store.history("late")]
    fired = [b for b in late if b.effects and type(b.effects[0]) is TimerFired]
    assert len(fired) == 1
    assert fired[0].answered[0].kind == "wait_event"
    assert store.load("early").status == store.load("late").status == "completed"


def test_a_worker_killed_before_its_delivering_save_leaves_the_events_to_the_next(
    store: Store,
) -> None:
    seen = Seen()
    flow = seen.flow()
    clock = FakeClock(START)
    start_run(store, flow, run_id="r1", clock=clock)
    drain(store, flow, clock)  # resting at the wait
    stepflow.send_event(store, "r1", "approved", "once", clock=clock)
    # A worker claims the run and reads its events, then dies before saving: the
    # save is the only commit, so the events stay undelivered.
    (lease,) = store.claim_due(now=clock.now(), limit=1, owner="dead", lease_seconds=30.0)
    read = store.pending_events("r1", limit=10)
    assert [e.payload for e in read] == ["once"]
    assert store.load("r1").inbox == 1
    clock.advance(31.0)  # its lease lapses; the next worker delivers them, once
    drain(store, flow, clock)
    assert seen.after == ["once"]
    assert [len(b) for b in event_batches(store, "r1")] == [1]
    # The dead worker's save, had it come after all, is refused and delivers nothing.
    late = Save("r1", lease.run.version, lease.token, lease.run.state, "running", None, delivered=1)
    with pytest.raises(StaleWriteError):
        store.save(late, now=clock.now())
    assert store.load("r1").inbox == 0


# -- send_event's checks ---------------------------------------------------------------------


def test_send_event_refuses_bad_input_and_changes_nothing(store: Store) -> None:
    flow = Seen().flow()
    start_run(store, flow, run_id="r1", clock=FakeClock(START))
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": ""}, "non-empty str without ':'"),
        ({"name": "a:b"}, "'a:b'"),
        ({"payload": {"x": [1.0, float("inf")]}}, r"NaN or an infinity at \$\.x\[1\]"),
        ({"payload": object()}, "must be JSON data"),
        ({"payload": "x" * (64 * 1024)}, "more than the 65536"),
        ({"key": ""}, "an event key is a non-empty str"),
    ]
    for given, match in cases:
        arguments = {"name": "approved", "payload": None, **given}
        with pytest.raises(EventError, match=match):
            stepflow.send_event(store, "r1", **arguments)
    assert store.load("r1").inbox == 0
    with pytest.raises(UnknownRunError, match="'nope'"):
        stepflow.send_event(store, "nope", "approved")


def test_the_errors_are_typed_and_pickle() -> None:
    import pickle

    for error in (RunFinishedError("r", "failed"), InboxFullError("r", 10)):
        again = pickle.loads(pickle.dumps(error))
        assert (type(again), str(again)) == (type(error), str(error))
    assert issubclass(EventError, ValueError)


def test_history_and_show_print_a_delivered_event(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from stepflow.cli import main

    db = f"sqlite:///{tmp_path / 'runs.db'}"
    store = SQLiteStore(tmp_path / "runs.db")
    flow = Seen().flow()
    clock = FakeClock(START)
    start_run(store, flow, run_id="r1", clock=clock)
    stepflow.send_event(store, "r1", "approved", {"by": "ann"}, clock=clock)
    drain(store, flow, clock)
    store.close()
    runner = CliRunner()
    shown = runner.invoke(main, ["show", "r1", "--db", db, "--json"])
    assert shown.exit_code == 0, shown.output
    journal = json.loads(shown.output)["journal"]
    events = [e for entry in journal for e in entry["effects"] if e.get("outcome") == "event"]
    assert events == [{"outcome": "event", "name": "approved", "payload": {"by": "ann"}}]
    view = read_run(SQLiteStore(tmp_path / "runs.db"), "r1")
    assert view.record.inbox == 0


# -- stepflow send ---------------------------------------------------------------------------


@pytest.fixture
def cli_store(tmp_path: Path) -> Iterator[tuple[str, SQLiteStore]]:
    """A SQLite store holding one run resting at its wait, and its URL."""
    store = SQLiteStore(tmp_path / "runs.db")
    flow = Seen().flow()
    clock = FakeClock(START)
    start_run(store, flow, run_id="order-17", clock=clock)
    start_run(store, flow, run_id="done-1", clock=clock)
    stepflow.send_event(store, "done-1", "approved", None, clock=clock)
    drain(store, flow, clock)
    yield f"sqlite:///{tmp_path / 'runs.db'}", store
    store.close()


def send(db: str, *args: str, stdin: str | None = None) -> Any:
    from click.testing import CliRunner

    from stepflow.cli import main

    return CliRunner().invoke(main, ["send", *args, "--db", db], input=stdin)


def test_stepflow_send_sends_an_event_by_run_prefix(
    cli_store: tuple[str, SQLiteStore], tmp_path: Path
) -> None:
    db, store = cli_store
    result = send(db, "order", "approved", "--data", '{"by": "ann"}')
    assert (result.exit_code, result.output) == (
        0,
        "Sent event approved to run order-17; a worker will deliver it.\n",
    )
    (tmp_path / "payload.json").write_text('["from", "a", "file"]')
    assert (
        send(db, "order-17", "approved", "--data", f"@{tmp_path / 'payload.json'}").exit_code == 0
    )
    assert send(db, "order-17", "approved", "--data", "@-", stdin="7").exit_code == 0
    assert send(db, "order-17", "approved").exit_code == 0
    assert [e.payload for e in store.pending_events("order-17", limit=10)] == [
        {"by": "ann"},
        ["from", "a", "file"],
        7,
        None,
    ]
    from click.testing import CliRunner

    from stepflow.cli import main

    shown = CliRunner().invoke(main, ["show", "order", "--db", db])
    assert "4 events wait to be delivered" in shown.output
    listed = CliRunner().invoke(main, ["runs", "--json", "--db", db])
    assert {run["id"]: run["inbox"] for run in json.loads(listed.output)["runs"]} == {
        "order-17": 4,
        "done-1": 0,
    }


def test_stepflow_send_with_a_key_twice_changes_nothing(cli_store: tuple[str, SQLiteStore]) -> None:
    db, store = cli_store
    first = send(db, "order-17", "approved", "--key", "k1", "--json")
    assert first.exit_code == 0
    assert json.loads(first.output) == {
        "run": "order-17",
        "name": "approved",
        "key": "k1",
        "sent": True,
    }
    again = send(db, "order-17", "approved", "--key", "k1")
    assert again.exit_code == 0
    assert again.output.startswith("duplicate key: nothing changed")
    assert (
        json.loads(send(db, "order-17", "approved", "--key", "k1", "--json").output)["sent"]
        is False
    )
    assert store.load("order-17").inbox == 1


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["nope", "approved"], 1, "no run has id 'nope'"),
        (["done-1", "approved"], 1, "run 'done-1' is completed: it takes no more events"),
        (["order-17", "a:b"], 1, "non-empty str without ':'"),
        (["order-17", "approved", "--data", '"' + "x" * 70000 + '"'], 1, "more than the 65536"),
        (["order-17", "approved", "--data", "{nope"], 2, "--data is not JSON"),
        (["order-17", "approved", "--data", "NaN"], 2, "NaN is not a number JSON can hold"),
    ],
)
def test_stepflow_send_refuses_on_one_line(
    cli_store: tuple[str, SQLiteStore], args: list[str], status: int, message: str
) -> None:
    db, store = cli_store
    result = send(db, *args)
    assert result.exit_code == status, result.output
    assert result.output.startswith("Error: ")
    assert message in result.output
    assert store.load("order-17").inbox == 0


def test_a_full_mailbox_keeps_the_rest_in_the_inbox_without_spinning(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events the state cannot hold yet stay in the inbox; the run sleeps on, then takes them."""
    from stepflow.core import events as core_events
    from stepflow.runtime import worker as worker_module

    monkeypatch.setattr(core_events, "MAILBOX_LIMIT", 2)
    monkeypatch.setattr(worker_module, "MAILBOX_LIMIT", 2)
    taken: list[Any] = []
    spec = stepflow.named("batch/v1").sleep("pause", 3600)
    for n in range(4):
        spec = spec.steps(f"take{n}", stepflow.steps().wait_event("go"))
    spec = spec.do("record", lambda ctx: taken.extend(sorted(ctx.outputs.items())))
    flow = stepflow.new(spec)
    clock = FakeClock(START)
    start_run(store, flow, run_id="r1", clock=clock)
    for n in range(4):
        stepflow.send_event(store, "r1", "go", n, clock=clock)
    worker = Worker(store, [flow], clock=clock)
    stats = worker.run_sync(until_idle=True, handle_signals=False)
    assert store.load("r1").status == "completed"
    assert [value for _, value in taken if isinstance(value, int)] == [0, 1, 2, 3]
    # Two deliveries (two, then the two left once the waits made room), no spinning.
    assert [len(b) for b in event_batches(store, "r1")] == [2, 2]
    assert stats.events == 4
    assert len(store.history("r1")) < 12


def test_a_delivery_is_journaled_with_the_wait_it_answered_and_replays(store: Store) -> None:
    reports: list[tuple[str, Any]] = []
    seen = Seen()
    flow = seen.flow()
    clock = FakeClock(START)
    start_run(store, flow, run_id="r1", clock=clock)
    worker = Worker(
        store,
        [flow],
        clock=clock,
        on_step=lambda report: reports.append((report.command.kind, report.effect)),
    )
    worker.run_sync(until_idle=True, handle_signals=False)
    stepflow.send_event(store, "r1", "approved", "ok", clock=clock)
    worker.run_sync(until_idle=True, handle_signals=False)
    # The wait is reported as a step ended by the event, between the two do steps.
    assert reports == [
        ("do", reports[0][1]),
        ("wait_event", EventReceived("approved", "ok", START)),
        ("do", reports[2][1]),
    ]
    (delivery,) = [
        b
        for b in (loads_batch(e.batch) for e in store.history("r1"))
        if b.answered and b.answered[0].kind == "wait_event"
    ]
    assert delivery.answered[0].step == WAIT
    recorded = stepflow.history(store, "r1")
    assert stepflow.replay(flow.definition, recorded).ok
    # A definition that waits for something else there diverges at that batch.
    other = stepflow.new(
        stepflow.named("approval/v1")
        .do("ask", lambda ctx: None)
        .wait_event("signed")
        .do("record", lambda ctx: None)
    )
    result = stepflow.replay(other.definition, recorded)
    assert [d.step for d in result.divergences] == [WAIT]
