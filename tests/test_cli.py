"""The ``stepflow`` command, run as a subprocess against real SQLite files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

FLOWS = textwrap.dedent(
    """
    import pathlib

    import stepflow


    def greet(ctx):
        return {"greeting": "hello " + ctx.input["name"]}


    def ready(ctx):
        return True


    def repair(ctx):
        if not pathlib.Path("fixed").exists():
            raise RuntimeError("the flag file 'fixed' is missing")
        return "repaired"


    hello = (
        stepflow.named("hello/v1")
        .do("greet", greet)
        .wait_for("ready", ready, every=0.05)
        .sleep("nap", 0.1)
    )
    hello_v2 = stepflow.new(stepflow.named("hello/v2").do("greet", greet))
    fragile = stepflow.new(stepflow.named("fragile/v1").do("first", greet).do("repair", repair))
    number = 42


    def broken():
        return stepflow.named("bad:name")


    bad_spec = stepflow.named("bad:name")
    """
)


def stepflow_cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60):
    """Run ``python -m stepflow.cli ARGS`` in ``cwd``; wide output, no STEPFLOW_DB leak."""
    environment = {k: v for k, v in os.environ.items() if k != "STEPFLOW_DB"}
    environment.update({"COLUMNS": "200", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "stepflow.cli", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A directory holding the example flows module ``flows.py``."""
    (tmp_path / "flows.py").write_text(FLOWS)
    return tmp_path


def db_args(project: Path) -> list[str]:
    return ["--db", f"sqlite:///{project / 'runs.db'}"]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def test_start_worker_runs_show(project: Path) -> None:
    db = db_args(project)
    out = ok(
        stepflow_cli(
            "start", "flows:hello", "--input", '{"name": "ann"}', "--id", "h1", *db, cwd=project
        )
    )
    assert out.strip() == "h1"
    listing = ok(stepflow_cli("runs", *db, cwd=project))
    assert re.search(r"h1\s.*hello/v1\s.*running\s.*start:greet", listing)

    worker = stepflow_cli("worker", "flows:hello", "--until-idle", *db, cwd=project)
    ok(worker)
    assert worker.stdout == ""  # the worker logs to stderr
    assert "h1 completed" in worker.stderr

    listing = ok(stepflow_cli("runs", *db, cwd=project))
    assert re.search(r"h1\s.*hello/v1\s.*completed\s.*completed:hello/v1", listing)
    shown = ok(stepflow_cli("show", "h1", *db, cwd=project))
    assert "completed" in shown
    assert 'greet = {"greeting": "hello ann"}' in shown
    assert "history" in shown
    assert re.search(r"returned do greet", shown)
    assert re.search(r"returned wait_for readyWaitFor -> true", shown)
    assert re.search(r"timer sleep nap", shown)


def test_start_without_id_prints_a_random_id(project: Path) -> None:
    out = ok(
        stepflow_cli(
            "start", "flows:hello", "--input", '{"name": "x"}', *db_args(project), cwd=project
        )
    )
    assert re.fullmatch(r"[0-9a-f]{32}\n", out)


def test_db_defaults_to_the_environment_then_to_stepflow_db(project: Path) -> None:
    env = {"STEPFLOW_DB": f"sqlite:///{project / 'env.db'}"}
    ok(
        stepflow_cli(
            "start", "flows:hello", "--input", '{"name": "x"}', "--id", "e1", cwd=project, env=env
        )
    )
    assert (project / "env.db").exists()
    ok(stepflow_cli("start", "flows:hello", "--input", '{"name": "x"}', "--id", "d1", cwd=project))
    assert (project / "stepflow.db").exists()
    assert "d1" in ok(stepflow_cli("runs", cwd=project))
    assert "e1" in ok(stepflow_cli("runs", cwd=project, env=env))


def test_failed_run_shows_its_error_and_resumes_to_completion(project: Path) -> None:
    db = db_args(project)
    ok(
        stepflow_cli(
            "start", "flows:fragile", "--input", '{"name": "bo"}', "--id", "f1", *db, cwd=project
        )
    )
    worker = stepflow_cli("worker", "flows:fragile", "--until-idle", *db, cwd=project)
    ok(worker)
    assert "f1 failed" in worker.stderr
    shown = ok(stepflow_cli("show", "f1", *db, cwd=project))
    assert "failed" in shown
    assert "RuntimeError: the flag file 'fixed' is missing (at fragile/v1/repair)" in shown
    assert "raised do repair" in shown

    (project / "fixed").touch()
    resumed = ok(stepflow_cli("resume", "f1", "--flow", "flows:fragile", *db, cwd=project))
    assert "start:fragile/v1/repair" in resumed
    ok(stepflow_cli("worker", "flows:fragile", "--until-idle", *db, cwd=project))
    shown = ok(stepflow_cli("show", "f1", *db, cwd=project))
    assert re.search(r"status\s+completed", shown)
    # The history is kept: the failure, the resume, then the successful retry.
    assert shown.index("raised do repair") < shown.index("resumed") < shown.index('-> "repaired"')


def test_cancel_stops_a_run(project: Path) -> None:
    db = db_args(project)
    ok(
        stepflow_cli(
            "start", "flows:hello", "--input", '{"name": "x"}', "--id", "c1", *db, cwd=project
        )
    )
    sent = ok(stepflow_cli("cancel", "c1", "--reason", "not needed", *db, cwd=project))
    assert "Cancelling run c1; a worker will run its cleanups" in sent
    again = ok(stepflow_cli("cancel", "c1", *db, cwd=project))
    assert "Run c1 is being cancelled already: nothing changed." in again
    worker = stepflow_cli("worker", "flows:hello", "--until-idle", *db, cwd=project)
    ok(worker)
    assert "run c1: cancellation requested (not needed)" in worker.stderr
    listing = ok(stepflow_cli("runs", "--status", "cancelled", *db, cwd=project))
    assert re.search(r"c1\s.*cancelled.*\(not needed\)", listing)
    shown = ok(stepflow_cli("show", "c1", *db, cwd=project))
    assert "stepflow.errors.RunCancelled: not needed" in shown
    # A finished run: a clear no-op, exit 0.
    done = ok(stepflow_cli("cancel", "c1", *db, cwd=project))
    assert "Run c1 is cancelled already: nothing to cancel." in done


def test_start_with_a_deadline_records_it(project: Path) -> None:
    db = db_args(project)
    ok(stepflow_cli("start", "flows:hello", "--id", "d1", "--deadline", "30m", *db, cwd=project))
    shown = json.loads(ok(stepflow_cli("show", "d1", "--json", *db, cwd=project)))
    assert shown["status"] == "running"
    assert "deadline" in ok(stepflow_cli("show", "d1", *db, cwd=project))


def test_worker_serves_several_versions_side_by_side(project: Path) -> None:
    db = db_args(project)
    ok(
        stepflow_cli(
            "start", "flows:hello", "--input", '{"name": "a"}', "--id", "v1", *db, cwd=project
        )
    )
    ok(
        stepflow_cli(
            "start", "flows:hello_v2", "--input", '{"name": "b"}', "--id", "v2", *db, cwd=project
        )
    )
    worker = stepflow_cli(
        "worker", "flows:hello", "flows:hello_v2", "--until-idle", *db, cwd=project
    )
    ok(worker)
    assert "v1 completed" in worker.stderr
    assert "v2 completed" in worker.stderr
    assert "v2" in ok(
        stepflow_cli("runs", "--flow", "hello/v2", "--status", "completed", *db, cwd=project)
    )
    only_v1 = ok(stepflow_cli("runs", "--flow", "hello/v1", *db, cwd=project))
    assert "v1" in only_v1
    assert "hello/v2" not in only_v1


def test_runs_limit_says_how_many_are_hidden(project: Path) -> None:
    db = db_args(project)
    for run_id in ("r1", "r2", "r3"):
        ok(
            stepflow_cli(
                "start", "flows:hello", "--input", '{"name": "x"}', "--id", run_id, *db, cwd=project
            )
        )
    listing = ok(stepflow_cli("runs", "--limit", "2", *db, cwd=project))
    assert "2 of 3 runs shown" in listing
    assert "r3" not in listing


def test_help_lists_every_command(project: Path) -> None:
    out = ok(stepflow_cli("--help", cwd=project))
    for command in ("demo", "start", "worker", "runs", "show", "resume", "cancel"):
        assert command in out


@pytest.fixture(scope="module")
def populated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose runs.db has a running run ``r1`` and a completed run ``done``.

    Shared by the bad-input cases, which change nothing.
    """
    project = tmp_path_factory.mktemp("populated")
    (project / "flows.py").write_text(FLOWS)
    db = db_args(project)
    ok(
        stepflow_cli(
            "start", "flows:hello_v2", "--input", '{"name": "x"}', "--id", "done", *db, cwd=project
        )
    )
    ok(stepflow_cli("worker", "flows:hello_v2", "--until-idle", *db, cwd=project))
    ok(
        stepflow_cli(
            "start", "flows:hello", "--input", '{"name": "x"}', "--id", "r1", *db, cwd=project
        )
    )
    return project


BAD_INPUT = [
    # (arguments, exit status, a fragment of the message)
    (["start", "nosuchmodule:flow"], 2, "cannot import module 'nosuchmodule'"),
    (["start", "flows:nope"], 2, "module 'flows' has no attribute 'nope'"),
    (["start", "flows:number"], 2, "not a stepflow.Flow"),
    (["start", "flows:broken"], 1, "contains ':'"),  # a factory: called, its spec compiled
    (["start", "flows"], 2, "is not MODULE:FLOW"),
    (["start", "flows:bad_spec"], 1, "contains ':'"),
    (["start", "flows:hello", "--input", "{not json"], 2, "--input is not JSON"),
    (["start", "flows:hello", "--id", "r1"], 1, "already exists"),
    (["show", "ghost"], 1, "no run has id 'ghost'"),
    (["cancel", "ghost"], 1, "no run has id 'ghost'"),
    (["start", "flows:hello", "--deadline", "0m"], 2, "--deadline: '0m' is no time at all"),
    (["start", "flows:hello", "--deadline", "soon"], 2, "--deadline: 'soon' is not an age"),
    (["resume", "ghost", "--flow", "flows:hello"], 1, "no run has id 'ghost'"),
    (["resume", "r1", "--flow", "flows:hello"], 1, "only a failed run can be resumed"),
    (["resume", "done", "--flow", "flows:hello"], 1, "is a run of 'hello/v2'"),
    (["resume", "r1"], 2, "Missing option '--flow'"),
    (["runs", "--status", "bogus"], 2, "'bogus' is not one of"),
    (["worker", "flows:hello", "flows:hello", "--until-idle"], 2, "two flows named"),
    (["nosuchcommand"], 2, "No such command"),
]


@pytest.mark.parametrize(("args", "status", "message"), BAD_INPUT)
def test_bad_input_is_one_line_error(
    populated: Path, args: list[str], status: int, message: str
) -> None:
    result = stepflow_cli(*args, *db_args(populated), cwd=populated)
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert message in lines[0]


@pytest.mark.parametrize(
    ("command", "url", "status", "message"),
    [
        ("runs", "mysql://somewhere/db", 2, "unsupported store URL"),
        ("runs", "sqlite://", 2, "unsupported store URL"),
        ("start", "sqlite:///runs.db?journal=wal", 2, "unknown or repeated option"),
        ("start", "sqlite:///no/such/dir/runs.db", 1, "cannot open SQLite database"),
        ("runs", "sqlite:///missing/runs.db", 1, "no stepflow database at 'missing/runs.db'"),
        ("show", "sqlite:///missing.db", 1, "no stepflow database at 'missing.db'"),
    ],
)
def test_bad_store_url_is_one_line_error(
    project: Path, command: str, url: str, status: int, message: str
) -> None:
    args = ["start", "flows:hello"] if command == "start" else [command]
    if command == "show":
        args.append("r1")
    result = stepflow_cli(*args, "--db", url, cwd=project)
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("Error: ")
    assert len(result.stderr.splitlines()) == 1
    assert message in result.stderr


def test_reading_commands_do_not_create_a_database(project: Path) -> None:
    result = stepflow_cli("runs", cwd=project)
    assert result.returncode == 1
    assert "no stepflow database at 'stepflow.db'" in result.stderr
    assert not (project / "stepflow.db").exists()


# -- the worker command: options, logging, piped output -------------------------------------


def test_worker_piped_logs_plain_lines_start_steps_progress_and_stop(project: Path) -> None:
    db = db_args(project)
    for n in range(3):
        ok(stepflow_cli("start", "flows:hello_v2", "--input", '{"name": "x"}', "--id", f"p{n}",
                        *db, cwd=project))  # fmt: skip
    worker = stepflow_cli(
        "worker", "flows:hello_v2", "--until-idle", "--lease-seconds", "5",
        "--worker-id", "box-1", *db, cwd=project,
    )  # fmt: skip
    ok(worker)
    lines = worker.stderr.splitlines()
    plain = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|DEBUG|WARNING|ERROR) +"
    assert all(re.match(plain, line) for line in lines), worker.stderr
    assert "\x1b[" not in worker.stderr  # no colours, no live display when piped
    assert re.search(
        r"INFO +worker box-1@\S+ started: serving hello/v2 \(concurrency 64, leases of 5 s, "
        r"until idle\)",
        worker.stderr,
    )
    assert re.search(r'INFO +p0 do greet -> \{"greeting": "hello x"\}', worker.stderr)
    assert re.search(
        r"INFO +progress: \d+ steps \([\d.]+/s\); runs: running \d.*; errors 0, parked 0",
        worker.stderr,
    )
    assert re.search(
        r"INFO +worker box-1@\S+ stopped after 3 steps: 3 runs completed, 0 failed, 0 parked$",
        lines[-1],
    )


def test_worker_waits_on_leases_held_by_others_and_says_so(project: Path) -> None:
    db = db_args(project)
    ok(stepflow_cli("start", "flows:hello_v2", "--input", '{"name": "x"}', "--id", "w1", *db,
                    cwd=project))  # fmt: skip
    from stepflow.stores import SQLiteStore

    store = SQLiteStore(project / "runs.db")
    try:
        (lease,) = store.claim_due(now=time.time(), limit=1, owner="vm:17108", lease_seconds=1.5)
    finally:
        store.close()
    worker = stepflow_cli("worker", "flows:hello_v2", "--until-idle", *db, cwd=project)
    ok(worker)
    until = time.strftime("%H:%M:%S", time.localtime(lease.expires_at))
    assert f"INFO    1 run is leased by vm:17108 until {until}" in worker.stderr
    assert "w1 completed" in worker.stderr


def test_runs_lists_parked_runs(project: Path) -> None:
    db = db_args(project)
    ok(stepflow_cli("start", "flows:hello_v2", "--input", '{"name": "x"}', "--id", "k1", *db,
                    cwd=project))  # fmt: skip
    import sqlite3

    with sqlite3.connect(project / "runs.db") as conn:
        conn.execute("UPDATE runs SET state = 'garbage' WHERE run_id = 'k1'")
    worker = stepflow_cli("worker", "flows:hello_v2", "--until-idle", *db, cwd=project)
    ok(worker)
    assert "ERROR   run k1 parked until" in worker.stderr
    listing = ok(stepflow_cli("runs", "--status", "parked", *db, cwd=project))
    assert re.search(r"k1\s.*parked", listing)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--lease-seconds", "0"], "Invalid value for '--lease-seconds'"),
        (["--worker-id", "a@b"], "a worker id is a non-empty name without '@'"),
        (["--metrics-port", "70000"], "Invalid value for '--metrics-port'"),
    ],
)
def test_worker_refuses_bad_options_on_one_line(
    project: Path, args: list[str], message: str
) -> None:
    worker = stepflow_cli("worker", "flows:hello_v2", *args, *db_args(project), cwd=project)
    assert worker.returncode == 2
    assert message in worker.stderr
    assert len(worker.stderr.strip().splitlines()) == 1, worker.stderr
