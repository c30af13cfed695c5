"""``stepflow schedule add/list/pause/resume/delete``, and a worker firing what they add.

Run as subprocesses against real SQLite files, like ``test_cli``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path

import pytest
from test_cli import db_args, ok, stepflow_cli

FLOWS = textwrap.dedent(
    """
    import stepflow


    def send(ctx):
        return {"sent": ctx.input}


    report = stepflow.new(stepflow.named("report/v1").do("send", send))
    """
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "flows.py").write_text(FLOWS)
    return tmp_path


def failed(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_add_list_pause_resume_delete(project: Path) -> None:
    db = db_args(project)
    added = ok(
        stepflow_cli(
            "schedule", "add", "daily", "flows:report", "--cron", "0 9 * * *",
            "--timezone", "Europe/Paris", "--input", '{"to": "ops"}', "--catch-up", "2h",
            "--overlap", "buffer_one", *db, cwd=project,
        )
    )  # fmt: skip
    assert added.startswith("Added schedule daily: runs of report/v1 at '0 9 * * *' (Europe/Paris)")
    # 09:00 in Paris is 07:00 or 08:00 UTC, depending on the season.
    assert re.search(r"first at \d{4}-\d\d-\d\dT0[78]:00:00Z\.", added)
    listing = ok(stepflow_cli("schedule", "list", *db, cwd=project))
    row = r"daily\s.*report/v1\s.*0 9 \* \* \*\s.*Europe/Paris\s.*buffer_one\s.*7200s"
    assert re.search(row, listing)
    document = json.loads(ok(stepflow_cli("schedule", "list", "--json", *db, cwd=project)))
    (only,) = document["schedules"]
    assert only["input"] == {"to": "ops"}
    assert only["catch_up_seconds"] == 7200
    assert only["paused"] is False

    paused = ok(stepflow_cli("schedule", "pause", "daily", *db, cwd=project))
    assert paused == "Paused schedule daily.\n"
    assert re.search(r"daily\s.*paused", ok(stepflow_cli("schedule", "list", *db, cwd=project)))
    resumed = ok(stepflow_cli("schedule", "resume", "daily", *db, cwd=project))
    assert resumed.startswith("Resumed schedule daily; next at ")
    document = json.loads(ok(stepflow_cli("schedule", "list", "--json", *db, cwd=project)))
    assert document["schedules"][0]["paused"] is False

    deleted = ok(stepflow_cli("schedule", "delete", "daily", *db, cwd=project))
    assert deleted == "Deleted schedule daily.\n"
    assert ok(stepflow_cli("schedule", "list", *db, cwd=project)).strip() == "No schedules."


def test_bad_schedules_are_refused_with_the_reason_and_nothing_is_added(project: Path) -> None:
    db = db_args(project)
    base = ["schedule", "add", "s", "flows:report"]
    cases = [
        ([*base, "--cron", "61 * * * *"], 1, "cron expression '61 * * * *' does not parse"),
        ([*base, "--cron", "every day"], 1, "does not parse: Exactly 5, 6 or 7 columns"),
        ([*base, "--cron", "@daily", "--timezone", "Mars/Base"], 1, "unknown timezone 'Mars/Base'"),
        ([*base, "--cron", "@daily", "--overlap", "queue"], 2, "'queue' is not one of"),
        ([*base, "--cron", "@daily", "--catch-up", "5x"], 2, "--catch-up '5x' is not a duration"),
        ([*base, "--cron", "@daily", "--input", "{nope"], 2, "--input"),
        (["schedule", "add", "a/b", "flows:report", "--cron", "@daily"], 1, "without '/'"),
        (["schedule", "add", "s", "flows:nothing", "--cron", "@daily"], 2, "nothing"),
        (["schedule", "add", "s", "flows:report"], 2, "Missing option '--cron'"),
    ]
    for args, code, message in cases:
        assert message in failed(stepflow_cli(*args, *db, cwd=project), code), args
    ok(stepflow_cli("schedule", "add", "s", "flows:report", "--cron", "@daily", *db, cwd=project))
    assert "'s' already exists" in failed(
        stepflow_cli("schedule", "add", "s", "flows:report", "--cron", "@hourly", *db, cwd=project)
    )
    for verb in ("pause", "resume", "delete"):
        error = failed(stepflow_cli("schedule", verb, "nope", *db, cwd=project))
        assert "no schedule is named 'nope'" in error
    listing = json.loads(ok(stepflow_cli("schedule", "list", "--json", *db, cwd=project)))
    assert [s["cron"] for s in listing["schedules"]] == ["@daily"]


def test_listing_a_store_that_does_not_exist_is_refused(project: Path) -> None:
    error = failed(stepflow_cli("schedule", "list", "--db", "sqlite:///absent.db", cwd=project))
    assert "no stepflow database at 'absent.db'" in error
    assert not (project / "absent.db").exists()


def test_a_worker_fires_a_schedule_added_on_the_command_line(project: Path) -> None:
    db = db_args(project)
    ok(
        stepflow_cli(
            "schedule", "add", "tick", "flows:report", "--cron", "* * * * * *",
            "--input", '"hello"', *db, cwd=project,
        )
    )  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if k != "STEPFLOW_DB"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "stepflow.cli", "worker", "flows:report", *db],
        cwd=project,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        completed = 0
        while completed < 2:
            assert time.monotonic() < deadline, "the worker started no scheduled run"
            time.sleep(0.2)
            with closing(sqlite3.connect(project / "runs.db")) as conn:
                rows = conn.execute(
                    "SELECT run_id FROM runs WHERE status = 'completed' ORDER BY run_id"
                ).fetchall()
            completed = len(rows)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=30)
    assert worker.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert all(re.fullmatch(r"tick/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row[0]) for row in rows)
    shown = ok(stepflow_cli("show", rows[0][0], *db, cwd=project))
    assert '{"sent": "hello"}' in shown
    last = json.loads(ok(stepflow_cli("schedule", "list", "--json", *db, cwd=project)))
    assert last["schedules"][0]["last_run_id"].startswith("tick/")
