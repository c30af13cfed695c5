"""Progress documents end to end: ``ctx.report`` in a Worker, ``read_run``, ``stepflow show``.

The store side (size limit, last one wins, no version change, the lease fence) is
in ``test_store_retention.py``, on every store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import stepflow
from stepflow import FakeClock, RunContext, Worker
from stepflow.cli import main
from stepflow.errors import ProgressError, StoreError
from stepflow.runtime import read_run, start_run
from stepflow.stores import MemoryStore, PostgresStore, SQLiteStore, Store
from stepflow.stores.base import RunNotes

START = 1_700_000_000.0


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SQLiteStore(tmp_path / "runs.db")
    else:
        dsn = request.getfixturevalue("postgres_dsn")
        made = PostgresStore(dsn, schema=request.getfixturevalue("postgres_schema"))
    yield made
    made.close()


def copy(ctx: RunContext) -> str:
    for gb in range(1, 4):
        ctx.report(f"copied {gb} of 10 GB")
    # Written before report returned, from this handler thread.
    ctx.app["seen in copy"] = ctx.app["store"].notes(ctx.run_id).progress
    return "copied"


async def verify(ctx: RunContext) -> str:
    ctx.report({"verified_gb": 3, "of_gb": 10})
    # Queued on the worker's store thread: the loop did not wait for it.
    await asyncio.sleep(0.05)
    ctx.app["seen in verify"] = ctx.app["store"].notes(ctx.run_id).progress
    return "verified"


def transfer() -> stepflow.Flow:
    return stepflow.new(stepflow.named("transfer/v1").do("copy", copy).do("verify", verify))


def run_worker(store: Store, flow: stepflow.Flow, app: dict[str, Any]) -> None:
    app["store"] = store
    worker = Worker(store, [flow], clock=FakeClock(START), context=app)
    worker.run_sync(until_idle=True, handle_signals=False)


def test_a_handler_reports_progress_and_read_run_returns_it(store: Store) -> None:
    flow = transfer()
    start_run(store, flow, run_id="t1", clock=FakeClock(START))
    app: dict[str, Any] = {}
    run_worker(store, flow, app)
    assert app["seen in copy"] == "copied 3 of 10 GB"
    assert app["seen in verify"] == {"verified_gb": 3, "of_gb": 10}
    view = read_run(store, "t1", flow)
    assert view.record.status == "completed"
    assert view.progress == {"verified_gb": 3, "of_gb": 10}
    assert view.notes.progress_at == START
    # Not in the journal: the start, then one entry per step.
    assert [batch.op for _, batch in view.journal] == ["start", "effects", "effects"]


def test_a_report_that_is_not_json_or_too_large_fails_the_step_and_keeps_the_last(
    store: Store,
) -> None:
    def report(document: Any) -> Any:
        def handler(ctx: RunContext) -> None:
            ctx.report(document)

        return handler

    flow = stepflow.new(
        stepflow.named("bad/v1")
        .do("fine", report({"phase": 1}))
        .do("nan", report({"ratio": math.nan}))
    )
    start_run(store, flow, run_id="b1", clock=FakeClock(START))
    run_worker(store, flow, {})
    view = read_run(store, "b1", flow)
    assert view.record.status == "failed"
    assert view.state is not None
    assert view.state.error is not None
    assert view.state.error.type == "stepflow.errors.ProgressError"
    assert "must be JSON data" in view.state.error.message
    assert view.progress == {"phase": 1}

    big = stepflow.new(stepflow.named("big/v1").do("big", report("x" * 5000)))
    start_run(store, big, run_id="b2", clock=FakeClock(START))
    run_worker(store, big, {})
    view = read_run(store, "b2", big)
    assert view.state is not None
    assert view.state.error is not None
    assert "more than the 4096" in view.state.error.message
    assert view.notes == RunNotes()


def test_a_context_without_a_reporter_checks_the_document_and_keeps_it_nowhere() -> None:
    ctx = RunContext(
        run_id="r",
        flow="f",
        step="f/s",
        kind="do",
        attempt=1,
        idempotency_key="r/k",
        input=None,
        outputs={},
        now=0.0,
        app=None,
        command=None,  # type: ignore[arg-type]
    )
    ctx.report({"fine": True})
    with pytest.raises(ProgressError, match="must be JSON data"):
        ctx.report(float("nan"))


def test_the_reporter_gets_a_copy_the_handler_cannot_change() -> None:
    got: list[Any] = []
    ctx = RunContext(
        run_id="r",
        flow="f",
        step="f/s",
        kind="do",
        attempt=1,
        idempotency_key="r/k",
        input=None,
        outputs={},
        now=0.0,
        app=None,
        command=None,  # type: ignore[arg-type]
        reporter=got.append,
    )
    document = {"done": 1}
    ctx.report(document)
    document["done"] = 2
    assert got == [{"done": 1}]


def test_stepflow_show_prints_the_progress_and_json_includes_it(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = SQLiteStore(path)
    flow = stepflow.new(
        stepflow.named("copy/v1").do("copy", lambda ctx: ctx.report("copied 3 of 10 GB"))
    )
    start_run(store, flow, run_id="c1", clock=FakeClock(START))
    run_worker(store, flow, {})
    start_run(store, flow, run_id="c2", clock=FakeClock(START))  # never driven: no progress
    store.close()
    runner = CliRunner()
    shown = runner.invoke(main, ["show", "c1", "--db", f"sqlite:///{path}", "--json"])
    assert shown.exit_code == 0, shown.output
    document = json.loads(shown.output)
    assert document["progress"] == "copied 3 of 10 GB"
    assert document["progress_at"] == START
    assert document["journal_pruned"] is None
    text = runner.invoke(main, ["show", "c1", "--db", f"sqlite:///{path}"])
    assert text.exit_code == 0, text.output
    assert re.search(r"progress +\"copied 3 of 10 GB\" \(reported \d+d ago\)", text.output)
    other = json.loads(
        runner.invoke(main, ["show", "c2", "--db", f"sqlite:///{path}", "--json"]).output
    )
    assert other["progress"] is None
    assert "progress" not in runner.invoke(main, ["show", "c2", "--db", f"sqlite:///{path}"]).output


class FlakyProgressStore(MemoryStore):
    """A memory store whose progress writes fail, as a store that is down would."""

    def report_progress(
        self, run_id: str, progress: Any, *, now: float, token: str | None = None
    ) -> bool:
        raise StoreError("the database is down")


def test_a_store_failure_while_reporting_is_logged_and_the_step_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FlakyProgressStore()
    flow = transfer()
    start_run(store, flow, run_id="t1", clock=FakeClock(START))
    with caplog.at_level(logging.WARNING, logger="stepflow.worker"):
        run_worker(store, flow, {})
    assert store.load("t1").status == "completed"
    messages = [r.getMessage() for r in caplog.records if "progress not kept" in r.getMessage()]
    assert len(messages) == 4  # three from the thread handler, one from the async one
    assert all("the database is down" in message for message in messages)
