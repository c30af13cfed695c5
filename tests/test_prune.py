"""``stepflow prune`` and :func:`stepflow.prune_runs`; what history tools say of a pruned run.

The store side (which runs, batches, marks, deleting runs) is in
``test_store_retention.py``, on every store.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import stepflow
from stepflow import FakeClock, RunContext, Worker
from stepflow.cli import main
from stepflow.errors import ConfigurationError, JournalPrunedError
from stepflow.runtime import parse_age, prune_runs, read_run, start_run
from stepflow.stores import MemoryStore, SQLiteStore, Store
from stepflow.stores.base import RunNotes

START = 1_700_000_000.0
DAY = 86400.0


def step(ctx: RunContext) -> Any:
    if ctx.input == "fail":
        raise RuntimeError("broken")
    return ctx.input


FLOW = stepflow.new(stepflow.named("job/v1").do("a", step).do("b", step))


def seed(store: Store) -> None:
    """Runs finished at START: two completed, one failed; and one still running."""
    clock = FakeClock(START)
    for run_id, value in (("done-1", 1), ("done-2", 2), ("failed-1", "fail")):
        start_run(store, FLOW, value, run_id=run_id, clock=clock)
    Worker(store, [FLOW], clock=clock).run_sync(until_idle=True, handle_signals=False)
    start_run(store, FLOW, 3, run_id="running", clock=clock)  # started long ago, never driven


# -- parse_age and prune_runs --------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30d", 30 * DAY), ("12h", 43200.0), ("90m", 5400.0), ("45s", 45.0), ("1.5h", 5400.0),
     ("2w", 14 * DAY), ("0d", 0.0), (" 7d ", 7 * DAY)],
)  # fmt: skip
def test_ages_read_as_seconds(text: str, seconds: float) -> None:
    assert parse_age(text) == seconds


@pytest.mark.parametrize("text", ["-30d", "30", "d", "30 days", "", "1e3d", "30D", "nan d"])
def test_malformed_and_negative_ages_are_refused(text: str) -> None:
    with pytest.raises(ConfigurationError, match=r"is not an age: write a positive number"):
        parse_age(text)


@pytest.mark.parametrize("age", [-1.0, math.nan, math.inf, "30d"])
def test_prune_runs_refuses_a_negative_or_non_finite_age_and_changes_nothing(age: Any) -> None:
    store = MemoryStore()
    seed(store)
    with pytest.raises(ConfigurationError, match="retention is a number of seconds >= 0"):
        prune_runs(store, age, clock=FakeClock(START + 100 * DAY))
    assert all(store.notes(run_id) == RunNotes() for run_id in ("done-1", "failed-1"))


def test_prune_runs_cuts_at_now_minus_the_age() -> None:
    store = MemoryStore()
    seed(store)
    # 30 days after the runs finished, a 31-day retention keeps them...
    assert prune_runs(store, 31 * DAY, clock=FakeClock(START + 30 * DAY)).runs == 0
    # ...and a 29-day one does not.
    result = prune_runs(store, 29 * DAY, clock=FakeClock(START + 30 * DAY))
    assert (result.runs, result.journal_entries) == (2, 6)
    view = read_run(store, "done-1", FLOW)
    assert view.journal == ()
    assert view.journal_pruned
    assert view.notes.pruned_at == START + 30 * DAY
    assert view.state is not None
    assert view.state.outputs  # the run keeps its state and outputs
    assert not read_run(store, "failed-1").journal_pruned


def test_history_of_a_pruned_run_raises_a_typed_error() -> None:
    store = MemoryStore()
    seed(store)
    prune_runs(store, 0, status=None, clock=FakeClock(START + DAY))
    with pytest.raises(JournalPrunedError, match=r"journal of run 'done-1' was pruned") as info:
        stepflow.history(store, "done-1")
    assert (info.value.run_id, info.value.through, info.value.at) == ("done-1", 3, START + DAY)
    assert isinstance(info.value, LookupError)


# -- the CLI ---------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> str:
    store = SQLiteStore(tmp_path / "runs.db")
    seed(store)
    store.close()
    return f"sqlite:///{tmp_path / 'runs.db'}"


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_stepflow_prune_removes_old_completed_journals(db: str) -> None:
    result = cli("prune", "--db", db, "--older-than", "30d")
    assert result.exit_code == 0, result.output
    assert result.output == (
        "Pruned the journals of 2 completed runs not saved for 30d: 6 entries removed "
        "(2 transactions).\n"
    )
    shown = json.loads(cli("show", "done-1", "--db", db, "--json").output)
    assert shown["journal"] == []
    assert shown["journal_pruned"]["through"] == 3
    assert shown["status"] == "completed"
    text = cli("show", "done-1", "--db", db)
    assert text.exit_code == 0
    assert "No history: the journal was pruned." in text.output
    assert "entries up to seq 3 pruned" in text.output
    failed = json.loads(cli("show", "failed-1", "--db", db, "--json").output)
    assert failed["journal_pruned"] is None
    assert len(failed["journal"]) == 2  # the start, and the failed step
    again = cli("prune", "--db", db, "--older-than", "30d", "--json")
    assert json.loads(again.output) == {
        "older_than": 30 * DAY,
        "status": "completed",
        "runs": 0,
        "journal_entries": 0,
        "runs_deleted": 0,
        "transactions": 0,
    }


def test_history_export_and_replay_of_a_pruned_run_say_so_in_one_line(db: str) -> None:
    cli("prune", "--db", db, "--older-than", "1d", "--status", "finished")
    for args in (
        ("history", "done-1"),
        ("history", "done-1", "--flow", "test_prune:FLOW"),
        ("export", "done-1"),
    ):
        result = cli(*args, "--db", db)
        assert result.exit_code == 1, (args, result.output)
        assert "Traceback" not in result.output
        assert "the journal of run 'done-1' was pruned" in result.output
    replayed = cli("replay", "test_prune:FLOW", "--db", db)
    assert replayed.exit_code == 0, replayed.output
    assert "done-1: skipped: no history (its journal was pruned)" in replayed.output


def test_stepflow_prune_with_runs_deletes_them(db: str) -> None:
    result = cli("prune", "--db", db, "--older-than", "1d", "--status", "finished", "--runs")
    assert result.exit_code == 0, result.output
    assert "3 runs deleted" in result.output
    listed = json.loads(cli("runs", "--db", db, "--json").output)
    assert [run["id"] for run in listed["runs"]] == ["running"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--older-than", "-30d"), "'-30d' is not an age"),
        (("--older-than", "30"), "'30' is not an age"),
        (("--older-than", "soon"), "'soon' is not an age"),
        (("--older-than", "30d", "--status", "running"), "'running' is not one of"),
        (("--older-than", "30d", "--batch", "0"), "0 is not in the range x>=1"),
    ],
)
def test_stepflow_prune_refuses_bad_input_and_changes_nothing(
    db: str, args: tuple[str, ...], message: str
) -> None:
    result = cli("prune", "--db", db, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(json.loads(cli("show", "done-1", "--db", db, "--json").output)["journal"]) == 3


def test_a_run_marked_by_an_interrupted_prune_keeps_a_readable_history(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    seed(store)
    # As if a prune had marked the run, then stopped before removing anything.
    with store._transaction() as db:
        db.execute("UPDATE runs SET journal_pruned_seq = version, journal_pruned_at = 1")
    view = read_run(store, "done-1")
    assert not view.journal_pruned
    assert stepflow.history(store, "done-1").run_id == "done-1"
    # Once part of it is gone, the history is refused.
    with store._transaction() as db:
        db.execute("DELETE FROM journal WHERE run_id = 'done-1' AND seq = 1")
    assert read_run(store, "done-1").journal_pruned
    with pytest.raises(JournalPrunedError):
        stepflow.history(store, "done-1")
    store.close()
