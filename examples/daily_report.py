"""A daily report at 09:00 Paris time: a schedule, not ``sleep(86400)`` in a loop.

``daily-report`` starts a run of ``report/v1`` every day at 09:00 in
Europe/Paris, so at 07:00 UTC in summer and 08:00 UTC in winter. Each run's id is
the schedule and its fire time (``daily-report/2026-10-26T08:00:00Z``), which is
also how the report knows which day it covers: a run started late (a worker was
down) still reports on its own day, and however many workers share the store, a
day gets one report.

The report gathers the day's figures, renders them and "sends" them to an
outbox (a list here; an email or chat client in real life, keyed by
``ctx.idempotency_key`` so a step re-run after a crash sends once).

Run: ``python examples/daily_report.py``. It drives a Worker on a SQLite file in
a temporary directory with a fake clock over the week of the autumn clock change
(2026-10-22 to 2026-10-29), in well under a second, and prints the runs.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import stepflow
from stepflow import RunContext

SCHEDULE = "daily-report"
#: Thursday 2026-10-22, midnight UTC: the worker's fake clock starts here.
START = datetime(2026, 10, 22, tzinfo=timezone.utc).timestamp()
DAYS = 7


class Outbox:
    """Where reports are sent: kept per idempotency key, so a re-run sends once."""

    def __init__(self) -> None:
        self.sent: dict[str, str] = {}


def report_day(ctx: RunContext) -> date:
    """The day a run reports on: its fire time, from its id (the schedule's doing)."""
    fired = ctx.run_id.removeprefix(f"{SCHEDULE}/")
    return datetime.fromisoformat(fired.replace("Z", "+00:00")).date()


def gather(ctx: RunContext) -> dict[str, Any]:
    day = report_day(ctx)
    # A real report would query the day's data; here, figures derived from the date.
    return {"day": day.isoformat(), "orders": 100 + day.day, "refunds": day.day % 3}


def render(ctx: RunContext) -> str:
    figures = ctx.outputs["report/v1/gather"]
    return f"{figures['day']}: {figures['orders']} orders, {figures['refunds']} refunds"


def send(ctx: RunContext) -> str:
    outbox: Outbox = ctx.app
    text = ctx.outputs["report/v1/render"]
    outbox.sent.setdefault(ctx.idempotency_key, f"to {ctx.input['to']}: {text}")
    return "sent"


report = stepflow.new(
    stepflow.named("report/v1").do("gather", gather).do("render", render).do("send", send)
)

daily = stepflow.Schedule(
    SCHEDULE,
    report,
    cron="0 9 * * *",
    timezone="Europe/Paris",
    input={"to": "ops@example.com"},
)


def run_week(db: Path) -> tuple[list[stepflow.stores.RunRecord], Outbox]:
    """Drive a worker with the schedule for a week of fake time; return its runs."""
    store = stepflow.open_store(f"sqlite:///{db}")
    clock = stepflow.FakeClock(START)
    outbox = Outbox()
    # An hour between looks is plenty for a daily schedule (it wakes for each fire time).
    worker = stepflow.Worker(
        store, [report], context=outbox, clock=clock, schedules=[daily], idle_interval=3600
    )

    async def week() -> None:
        task = asyncio.create_task(worker.run())
        while clock.now() < START + DAYS * 86_400 or store.count(status="running"):
            await asyncio.sleep(0.001)
        worker.stop()
        await task

    try:
        asyncio.run(week())
        return store.runs(), outbox
    finally:
        store.close()


def main() -> int:
    with tempfile.TemporaryDirectory() as directory:
        runs, outbox = run_week(Path(directory) / "reports.db")
    for run in runs:
        print(f"{run.run_id}  {run.status}")
    for line in outbox.sent.values():
        print(line)
    return 0 if runs and all(run.status == "completed" for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
