"""What ``stepflow worker`` shows: the live display on a terminal, its figures, its hook."""

from __future__ import annotations

import logging
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from rich.console import Console
from test_cli import FLOWS, db_args, ok, stepflow_cli

from stepflow._cli_worker import Progress
from stepflow.runtime.metrics import WorkerMetrics


class Ticks:
    """A clock for the progress rate, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_counts_steps_errors_and_runs_by_status() -> None:
    clock = Ticks()
    progress = Progress(["deploy/v1"], live=False, clock=clock)
    assert isinstance(progress, WorkerMetrics)
    for outcome in ("returned", "returned", "raised", "fired"):
        progress.step("deploy/v1", "do", outcome, 0.01)
    progress.parked("deploy/v1")
    progress.stale()
    progress.takeovers(2)
    progress.runs(
        {("deploy/v1", "running"): 3, ("deploy/v2", "running"): 1, ("deploy/v1", "failed"): 1}
    )
    clock.now += 2.0
    assert progress.summary() == (
        "progress: 4 steps (2.0/s); runs: running 4, failed 1; errors 1, parked 1"
    )
    console = Console(record=True, width=100, force_terminal=False)
    console.print(progress.render())
    text = console.export_text()
    assert "serving  deploy/v1" in text
    assert re.search(r"steps\s+4\s+\(\d+\.\d/s\)", text)
    assert "running 4  failed 1" in text
    assert "1 handler errors, 1 parked, 1 stale writes, 2 takeovers" in text


def test_the_rate_is_over_the_last_ten_seconds() -> None:
    clock = Ticks()
    progress = Progress(["f"], live=False, clock=clock)
    for _ in range(100):
        progress.step("f", "do", "returned", 0.0)
    clock.now += 10
    assert progress.rate() == pytest.approx(10.0)
    clock.now += 10  # nothing more in the last ten seconds
    assert progress.rate() == 0.0


def test_piped_progress_logs_a_line_when_the_runs_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="stepflow.cli")
    progress = Progress(["f"], live=False, clock=Ticks())
    progress.runs({("f", "completed"): 2})
    assert caplog.messages == ["progress: 0 steps (0.0/s); runs: completed 2; errors 0, parked 0"]


def test_on_a_terminal_the_worker_draws_a_live_display(tmp_path: Path) -> None:
    """stderr is a pseudo-terminal: the live panel is drawn; steps are not logged one by one."""
    (tmp_path / "flows.py").write_text(FLOWS)
    db = db_args(tmp_path)
    for n in range(3):
        ok(stepflow_cli("start", "flows:hello_v2", "--input", '{"name": "x"}', "--id", f"t{n}",
                        *db, cwd=tmp_path))  # fmt: skip
    leader, follower = pty.openpty()
    environment = {k: v for k, v in os.environ.items() if k not in ("STEPFLOW_DB", "CI")}
    environment.update({"COLUMNS": "200", "TERM": "xterm-256color"})
    environment.pop("NO_COLOR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "stepflow.cli", "worker", "flows:hello_v2", "--until-idle", *db],
        cwd=tmp_path,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.1)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # the terminal closed: the worker is gone
                break
            if not data:
                break
            chunks.append(data)
        elif process.poll() is not None:
            break
    os.close(leader)
    assert process.wait(timeout=30) == 0
    raw = b"".join(chunks).decode(errors="replace")
    assert "\x1b[" in raw  # drawn with terminal control sequences
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert "serving" in screen
    assert "Ctrl-C stops gracefully" in screen  # the live panel was drawn
    assert "stopped after 3 steps" in screen  # the worker's own lines still show
    assert "t0 do greet" not in screen  # steps are counted by the panel, not logged


def test_worker_metrics_port_serves_prometheus_metrics(tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text(FLOWS)
    db = db_args(tmp_path)
    for n in range(2):
        ok(stepflow_cli("start", "flows:hello_v2", "--input", '{"name": "x"}', "--id", f"m{n}",
                        *db, cwd=tmp_path))  # fmt: skip
    environment = {k: v for k, v in os.environ.items() if k != "STEPFLOW_DB"}
    process = subprocess.Popen(
        [sys.executable, "-m", "stepflow.cli", "worker", "flows:hello_v2", "--metrics-port", "0",
         *db],
        cwd=tmp_path,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = process.stderr.readline()
            found = re.search(r"serving metrics on (http://127\.0\.0\.1:\d+/metrics)", line)
            url = found.group(1) if found else None
        assert url is not None, "the worker never said where its metrics are"

        def completed_steps() -> float:
            with urllib.request.urlopen(url, timeout=10) as response:
                text = response.read().decode()
            found = re.search(
                r'^stepflow_steps_total\{flow="hello/v2",kind="do",outcome="returned"\} (\S+)$',
                text,
                re.MULTILINE,
            )
            return float(found.group(1)) if found else 0.0

        while completed_steps() < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert completed_steps() == 2
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()
    assert process.returncode == 0
