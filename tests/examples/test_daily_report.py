"""The daily-report example: a 09:00 Europe/Paris schedule over the autumn clock change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from example_module import load_example

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "daily_report.py"


daily_report = load_example("daily_report")


def test_one_report_a_day_at_nine_in_paris_whatever_the_utc_offset(tmp_path: Path) -> None:
    runs, outbox = daily_report.run_week(tmp_path / "reports.db")
    # Summer time ends on 2026-10-25: 09:00 in Paris is 07:00 UTC before, 08:00 after.
    assert [run.run_id for run in runs] == [
        "daily-report/2026-10-22T07:00:00Z",
        "daily-report/2026-10-23T07:00:00Z",
        "daily-report/2026-10-24T07:00:00Z",
        "daily-report/2026-10-25T08:00:00Z",
        "daily-report/2026-10-26T08:00:00Z",
        "daily-report/2026-10-27T08:00:00Z",
        "daily-report/2026-10-28T08:00:00Z",
    ]
    assert all(run.status == "completed" for run in runs)
    assert all(run.input == {"to": "ops@example.com"} for run in runs)
    sent = sorted(outbox.sent.values())
    assert len(sent) == 7
    assert sent[0] == "to ops@example.com: 2026-10-22: 122 orders, 1 refunds"
    assert sent[-1].startswith("to ops@example.com: 2026-10-28:")


def test_the_example_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("completed") == 7
    assert "daily-report/2026-10-25T08:00:00Z  completed" in result.stdout
