"""A worker that meets a child run: the run is parked, untouched, never crashes the worker.

Workers do not start child runs yet (issue 11, the runtime half of child runs):
until they do, a ``call`` step's ``StartChild`` parks its run with a reason that
says so, and every other run is driven as usual.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import stepflow
from stepflow import FakeClock, Worker
from stepflow.runtime import start_run
from stepflow.stores import MemoryStore, SQLiteStore, Store

START = 1_700_000_000.0


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "memory":
        return MemoryStore()
    return SQLiteStore(tmp_path / "runs.db")


def test_a_parent_run_is_parked_with_its_state_kept_and_other_runs_complete(store: Store) -> None:
    child = stepflow.new(stepflow.named("c/v1").do("a", lambda ctx: 1))
    parent = stepflow.new(stepflow.named("p/v1").do("first", lambda ctx: 1).call("run", child))
    clock = FakeClock(START)
    start_run(store, parent, run_id="parent", clock=clock)
    start_run(store, child, run_id="alone", clock=clock)
    stats = Worker(store, [parent, child], clock=clock).run_sync(
        until_idle=True, handle_signals=False
    )
    assert (stats.completed, stats.parked) == (1, 1)
    parked = store.load("parent")
    assert parked.status == "parked"
    assert parked.parked_reason is not None
    assert "does not start child runs yet" in parked.parked_reason
    state = stepflow.loads(parked.state, parent.definition)
    assert [c.kind for c in state.in_flight] == ["call"]
    assert state.outputs["p/v1/first"] == 1
