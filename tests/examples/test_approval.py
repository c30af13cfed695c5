"""The approval example: events from outside, a timeout that escalates, then pay or reject.

In process on a virtual clock (the worker jumps straight to each timeout), and as
the script a user runs (real time, real SQLite file, events sent while it runs).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from example_module import load_example

import stepflow
from stepflow import FakeClock

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "approval.py"
START = 1_700_000_000.0


approval = load_example("approval")


def _drive(store: stepflow.Store, inbox: object, clock: FakeClock) -> None:
    worker = stepflow.Worker(store, [approval.flow], context=inbox, clock=clock)
    worker.run_sync(until_idle=True, handle_signals=False)


def test_each_report_ends_as_its_answers_say_on_a_virtual_clock(tmp_path: Path) -> None:
    clock = FakeClock(START)
    store = stepflow.open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    inbox = approval.Inbox()
    for report in approval.REPORTS:
        stepflow.start_run(store, approval.flow, report, run_id=report["id"], clock=clock)
    # exp-1's approver answers at once; exp-2's manager answers before being asked:
    # both wait in their run's mailbox until a wait_event takes them.
    yes = {"approve": True, "by": "ana"}
    assert stepflow.send_event(store, "exp-1", "decision", yes, key="k1", clock=clock)
    assert not stepflow.send_event(store, "exp-1", "decision", yes, key="k1", clock=clock)
    boss = {"approve": True, "by": "bo"}
    assert stepflow.send_event(store, "exp-2", "manager_decision", boss, clock=clock)
    _drive(store, inbox, clock)
    states = {
        r["id"]: stepflow.read_run(store, r["id"], approval.flow).state for r in approval.REPORTS
    }
    assert {run_id: approval.result(s) for run_id, s in states.items()} == {
        "exp-1": "paid, approved by ana",
        "exp-2": "paid, approved by bo",
        "exp-3": "rejected by nobody",
    }
    # Only the escalated reports reached the manager; each payment was made once.
    assert sorted(inbox.asked) == [
        ("ana", "exp-1"), ("bo", "exp-2"), ("bo", "exp-3"), ("cy", "exp-2"), ("dee", "exp-3"),
    ]  # fmt: skip
    assert sorted(inbox.paid.values()) == [120, 980]
    # exp-1 never waited: its event was in the mailbox when it reached the wait.
    history = stepflow.history(store, "exp-1")
    waits = [c for b in history.batches for c in b.answered if c.kind == "wait_event"]
    assert waits == []
    # The timeouts took their windows of virtual time, no more.
    assert clock.now() >= START + approval.APPROVER_WINDOW + approval.MANAGER_WINDOW
    store.close()


def test_a_run_waiting_for_its_decision_rests_until_the_event_wakes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long window on the real clock: the run rests (no poll), then an event moves it."""
    monkeypatch.setattr(approval, "APPROVER_WINDOW", 3600.0)
    flow = approval.build_flow()
    store = stepflow.open_store(f"sqlite:///{tmp_path / 'runs.db'}")

    async def scenario() -> stepflow.State:
        stepflow.start_run(store, flow, approval.REPORTS[0], run_id="r")
        worker = stepflow.Worker(store, [flow], context=approval.Inbox(), idle_interval=5.0)
        running = asyncio.create_task(worker.run())
        state = await _until(
            store, flow, lambda s: bool(s.in_flight) and s.in_flight[0].kind == "wait_event"
        )
        (waiting,) = state.in_flight
        assert isinstance(waiting, stepflow.AwaitEvent)
        assert waiting.at is not None
        assert store.load("r").wake_at == waiting.at  # due only at its timeout: no poll
        journal = len(store.history("r"))
        # The worker sleeps up to idle_interval (5 s); the send wakes it at once.
        stepflow.send_event(store, "r", "decision", {"approve": False, "by": "ana"})
        done = await _until(store, flow, lambda s: s.status == "completed")
        worker.stop()
        await running
        # Waiting cost no journal entry: the delivery, the switch and the notify did.
        assert len(store.history("r")) == journal + 3
        return done

    done = asyncio.run(asyncio.wait_for(scenario(), timeout=60))
    assert approval.result(done) == "rejected by ana"
    store.close()


async def _until(
    store: stepflow.Store, flow: stepflow.Flow, test: Callable[[stepflow.State], bool]
) -> stepflow.State:
    while True:
        state = stepflow.read_run(store, "r", flow).state
        assert state is not None
        if test(state):
            return state
        await asyncio.sleep(0.01)


def test_the_example_script_runs_and_reports_each_decision() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "exp-1: paid, approved by ana (asked: ana)"
    assert lines[1] == "exp-2: paid, approved by bo (asked: cy, bo)"
    assert lines[2] == "exp-3: rejected by nobody (asked: dee, bo)"
    assert lines[3] == "payments made: 2, total 1100"
