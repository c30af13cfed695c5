"""Recovery, with real worker processes: killed, many at once, paused past their lease.

Each test starts ``tests/workers/recovery_worker.py`` in subprocesses on a real
database. Its handlers record every execution in a ledger keyed by the
idempotency key (see the script), which is what the tests check the runtime's
guarantees against: every run completes, every transition is saved exactly once
(a contiguous journal with no duplicate sequence number and no command answered
twice), and handlers run at least once, with one key per command.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from workers.recovery_worker import FLOW_NAME, POSTGRES_LEDGER, SQLITE_LEDGER, build_flow

from stepflow.codec import loads_batch
from stepflow.core.messages import HandlerReturned
from stepflow.runtime import start_run
from stepflow.stores import PostgresStore, SQLiteStore, Store

WORKER = Path(__file__).resolve().parent / "workers" / "recovery_worker.py"


class Workers:
    """Worker processes started by one test; any still running are killed at the end."""

    def __init__(self, directory: Path, store_args: list[str]) -> None:
        self.directory = directory
        self.store_args = store_args
        self.started: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """Start a worker; its stdout and stderr go to a file (a pipe could fill up)."""
        output = self.directory / f"worker-{len(self.started)}.log"
        with output.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, str(WORKER), *self.store_args, *args],
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        self.started.append((process, output))
        return process

    def output(self, process: subprocess.Popen[bytes]) -> str:
        (path,) = (path for started, path in self.started if started is process)
        return path.read_text()

    def stats(self, process: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
        """Wait for a worker to exit cleanly; return the counters it printed."""
        returncode = process.wait(timeout=timeout)
        output = self.output(process)
        assert returncode == 0, output
        stats: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
        return stats

    def kill_all(self) -> None:
        for process, _ in self.started:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGCONT)  # a stopped one could not die
                process.kill()
                process.wait()


@pytest.fixture
def workers_dir(tmp_path: Path) -> Iterator[Callable[[list[str]], Workers]]:
    made: list[Workers] = []

    def make(store_args: list[str]) -> Workers:
        made.append(Workers(tmp_path, store_args))
        return made[-1]

    yield make
    for workers in made:
        workers.kill_all()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def start_runs(store: Store, steps: int, count: int) -> list[str]:
    flow = build_flow(steps)
    return [start_run(store, flow, {"n": n}, run_id=f"run-{n:04}").run_id for n in range(count)]


def check_journals(rows: list[tuple[str, int, int, int, int, int]], runs: int, steps: int) -> None:
    """Check ``(run_id, version, entries, distinct seqs, min seq, max seq)`` per run."""
    assert len(rows) == runs
    for run_id, version, entries, distinct, low, high in rows:
        # The start at seq 1, then one entry per step, seq 2..version: contiguous,
        # none twice, none lost.
        expected = (steps + 1, steps + 1, steps + 1, 1, steps + 1)
        assert (version, entries, distinct, low, high) == expected, run_id


def check_batches(journal: list[tuple[str, str]], steps: int) -> dict[str, dict[int, Any]]:
    """Decode every journal entry; return run -> answered command id -> value saved."""
    saved: dict[str, dict[int, Any]] = {}
    for run_id, text in journal:
        batch = loads_batch(text)
        if batch.op == "start":
            continue
        assert batch.op == "effects"
        (effect,) = batch.effects
        (command,) = batch.answered
        assert type(effect) is HandlerReturned
        assert command.id == effect.command_id
        answered = saved.setdefault(run_id, {})
        assert command.id not in answered, f"{run_id}: command {command.id} answered twice"
        answered[command.id] = (command, effect.value)
    assert all(len(answered) == steps for answered in saved.values())
    return saved


def check_ledger(
    ledger: list[tuple[str, str, str]], executions: list[tuple[str, str, str, int]]
) -> dict[str, list[int]]:
    """Check one key per (run, step), each executed; return key -> executing pids."""
    keys = {(run_id, step): key for key, run_id, step in ledger}
    assert len(keys) == len(ledger), "a step was executed under two different keys"
    for key, run_id, step in ledger:
        assert key.startswith(f"{run_id}/{step}#")
    pids: dict[str, list[int]] = {}
    for key, run_id, step, pid in executions:
        assert keys[(run_id, step)] == key  # every execution of a step used its one key
        pids.setdefault(key, []).append(pid)
    assert set(pids) == {key for key, _, _ in ledger}
    return pids


# -- SQLite: a worker killed over and over -----------------------------------------------


def test_a_worker_killed_ten_times_loses_nothing_and_repeats_little(
    tmp_path: Path, workers_dir: Callable[[list[str]], Workers]
) -> None:
    """SIGKILL a worker at random moments, ten times, and restart it each time.

    Each kill can interrupt at most ``concurrency`` commands: a run's task waits for
    its save before the next command, and the worker holds at most ``concurrency``
    runs. So re-executions are bounded by ``kills * concurrency``, not by ``kills``.
    The killed worker's runs come back only when its leases expire (2 s), which is
    what the restarted worker, a new owner, has to wait for.
    """
    runs, steps, concurrency, kills = 500, 10, 4, 10
    path, ledger_path = tmp_path / "runs.db", tmp_path / "ledger.db"
    store = SQLiteStore(path)
    start_runs(store, steps, runs)
    with closing(sqlite3.connect(ledger_path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        for statement in SQLITE_LEDGER:
            db.execute(statement)
    workers = workers_dir(
        [
            f"--store=sqlite:///{path}",
            f"--ledger={ledger_path}",
            f"--steps={steps}",
            f"--concurrency={concurrency}",
            "--lease-seconds=2",
            "--until-idle",
        ]
    )
    rng = random.Random(20240607)

    def executed() -> int:
        with closing(sqlite3.connect(ledger_path, timeout=30)) as db:
            (count,) = db.execute("SELECT count(*) FROM executions").fetchone()
        return int(count)

    began = time.monotonic()
    for _ in range(kills):
        before = executed()
        process = workers.start()
        # Kill it while it works: once it has made progress, at a random moment.
        wait_until(lambda: executed() > before, 60, "the restarted worker to make progress")  # noqa: B023
        time.sleep(rng.uniform(0.0, 0.25))
        assert process.poll() is None, "the worker finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    assert store.count(status="completed") < runs
    stats = workers.stats(workers.start(), timeout=120)
    elapsed = time.monotonic() - began

    assert store.count(status="completed") == runs
    assert stats["completed"] > 0
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("SELECT DISTINCT status, lease_token FROM runs").fetchall() == [
            ("completed", None)
        ]
        check_journals(
            db.execute(
                "SELECT runs.run_id, version, count(seq), count(DISTINCT seq), min(seq), max(seq)"
                " FROM runs JOIN journal USING (run_id) GROUP BY runs.run_id"
            ).fetchall(),
            runs,
            steps,
        )
        saved = check_batches(db.execute("SELECT run_id, batch FROM journal").fetchall(), steps)
    with closing(sqlite3.connect(ledger_path)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        ledger = db.execute("SELECT key, run_id, step FROM ledger").fetchall()
        executions = db.execute("SELECT key, run_id, step, pid FROM executions").fetchall()
    assert len(ledger) == runs * steps  # exactly one row per (run, step)
    pids = check_ledger(ledger, executions)
    # The saved transition of every command came from a process that executed it.
    for run_id, answered in saved.items():
        for command, pid in answered.values():
            assert pid in pids[f"{run_id}/{command.key}"]
    repeats = len(executions) - len(ledger)
    assert repeats <= kills * concurrency, repeats
    print(f"\n{kills} kills, {repeats} re-executions, {elapsed:.1f} s")


# -- PostgreSQL: many workers on one schema -----------------------------------------------


def postgres_ledger(dsn: str, schema: str) -> Any:
    import psycopg
    from psycopg import sql

    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
    return conn


def check_postgres(
    dsn: str, schema: str, runs: int, steps: int
) -> tuple[Any, dict[str, list[int]]]:
    """Check the journals and the ledger; return the saved values and executing pids."""
    with closing(postgres_ledger(dsn, schema)) as conn:
        assert conn.execute("SELECT DISTINCT status, lease_token FROM runs").fetchall() == [
            ("completed", None)
        ]
        check_journals(
            conn.execute(
                "SELECT runs.run_id, version, count(seq), count(DISTINCT seq), min(seq), max(seq)"
                " FROM runs JOIN journal USING (run_id) GROUP BY runs.run_id, version"
            ).fetchall(),
            runs,
            steps,
        )
        saved = check_batches(conn.execute("SELECT run_id, batch FROM journal").fetchall(), steps)
        ledger = conn.execute("SELECT key, run_id, step FROM ledger").fetchall()
        executions = conn.execute("SELECT key, run_id, step, pid FROM executions").fetchall()
    assert len(ledger) == runs * steps  # every step executed at least once, under one key
    return saved, check_ledger(ledger, executions)


def test_four_workers_on_one_postgres_schema_complete_every_run_once(
    postgres_dsn: str, postgres_schema: str, workers_dir: Callable[[list[str]], Workers]
) -> None:
    runs, steps = 2000, 3
    with closing(PostgresStore(postgres_dsn, schema=postgres_schema)) as store:
        start_runs(store, steps, runs)
        with closing(postgres_ledger(postgres_dsn, postgres_schema)) as conn:
            for statement in POSTGRES_LEDGER:
                conn.execute(statement)
        workers = workers_dir(
            [
                f"--store={postgres_dsn}",
                f"--schema={postgres_schema}",
                f"--steps={steps}",
                "--concurrency=8",
                "--lease-seconds=5",
                "--until-idle",
            ]
        )
        began = time.monotonic()
        processes = [workers.start() for _ in range(4)]
        stats = [workers.stats(process, timeout=180) for process in processes]
        elapsed = time.monotonic() - began
        assert store.count(status="completed") == runs
    _, pids = check_postgres(postgres_dsn, postgres_schema, runs, steps)
    assert sum(s["completed"] for s in stats) == runs
    assert sum(s["steps"] for s in stats) == runs * steps
    assert all(s["steps"] > 0 for s in stats), stats  # the work was shared
    # No worker died, so a command runs twice only when a live worker lost its lease
    # (renewal starved past ``lease_seconds``), and then its own save was refused.
    repeats = sum(len(found) - 1 for found in pids.values())
    assert repeats <= sum(s["stale"] for s in stats), stats
    print(f"\n4 workers, {runs * steps} steps in {elapsed:.1f} s: {[s['steps'] for s in stats]}")


# -- PostgreSQL: a worker paused past its lease ---------------------------------------------


def test_a_worker_paused_past_its_lease_cannot_overwrite_its_successor(
    tmp_path: Path,
    postgres_dsn: str,
    postgres_schema: str,
    workers_dir: Callable[[list[str]], Workers],
) -> None:
    """SIGSTOP a worker mid-step; another takes its runs over; SIGCONT: its saves are refused."""
    runs, steps = 6, 3
    marker = tmp_path / "started"
    with closing(PostgresStore(postgres_dsn, schema=postgres_schema)) as store:
        start_runs(store, steps, runs)
        with closing(postgres_ledger(postgres_dsn, postgres_schema)) as conn:
            for statement in POSTGRES_LEDGER:
                conn.execute(statement)
        workers = workers_dir(
            [
                f"--store={postgres_dsn}",
                f"--schema={postgres_schema}",
                f"--steps={steps}",
                "--lease-seconds=1",
                "--until-idle",
            ]
        )
        paused = workers.start("--concurrency=2", "--sleep=0.5", f"--marker={marker}")
        wait_until(marker.exists, 60, "the first worker to start a step")
        paused.send_signal(signal.SIGSTOP)
        interrupted = marker.read_text()
        held = [run for run in store.runs() if run.lease_token is not None]
        assert held, "the paused worker holds no lease"

        successor = workers.start("--concurrency=4")
        successor_stats = workers.stats(successor, timeout=60)
        assert store.count(status="completed") == runs
        after_successor = [(run.run_id, run.version, run.state) for run in store.runs()]

        paused.send_signal(signal.SIGCONT)
        paused_stats = workers.stats(paused, timeout=60)
        # The paused worker's saves were refused, and changed nothing.
        assert paused_stats["stale"] >= 1, workers.output(paused)
        assert "moved on without this worker" in workers.output(paused)
        assert [(run.run_id, run.version, run.state) for run in store.runs()] == after_successor

    saved, pids = check_postgres(postgres_dsn, postgres_schema, runs, steps)
    # The step the paused worker was in was executed by both, under the same key;
    # the transition saved is the successor's.
    assert sorted(pids[interrupted]) == sorted([paused.pid, successor.pid])
    run_id = interrupted.split("/", 1)[0]
    (value,) = (
        pid for command, pid in saved[run_id].values() if f"{run_id}/{command.key}" == interrupted
    )
    assert value == successor.pid
    assert successor_stats["completed"] + paused_stats["completed"] == runs
    assert FLOW_NAME in interrupted


# -- SIGTERM ----------------------------------------------------------------------------------


def test_sigterm_stops_a_worker_gracefully(
    tmp_path: Path, workers_dir: Callable[[list[str]], Workers]
) -> None:
    """In-flight steps finish and are saved, leases are released, counters are printed."""
    path, ledger_path = tmp_path / "runs.db", tmp_path / "ledger.db"
    store = SQLiteStore(path)
    start_runs(store, 3, 4)
    with closing(sqlite3.connect(ledger_path, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode = WAL")
        for statement in SQLITE_LEDGER:
            db.execute(statement)
    marker = tmp_path / "started"
    workers = workers_dir(
        [f"--store=sqlite:///{path}", f"--ledger={ledger_path}", "--steps=3", "--lease-seconds=30"]
    )
    process = workers.start("--concurrency=4", "--sleep=0.5", f"--marker={marker}")
    wait_until(marker.exists, 60, "the worker to start a step")
    process.send_signal(signal.SIGTERM)
    stats = workers.stats(process, timeout=30)
    assert stats["steps"] >= 1
    runs = store.runs()
    assert all(run.lease_token is None for run in runs)
    assert sum(run.version - 1 for run in runs) == stats["steps"]
    with closing(sqlite3.connect(ledger_path)) as db:
        (executed,) = db.execute("SELECT count(*) FROM executions").fetchone()
    assert executed == stats["steps"]  # every step it began was saved
    store.close()


# -- a restart under the same --worker-id -----------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_worker_restarted_with_its_worker_id_resumes_its_runs_at_once(
    kind: str,
    tmp_path: Path,
    workers_dir: Callable[[list[str]], Workers],
    request: pytest.FixtureRequest,
) -> None:
    """SIGKILL a worker holding 20 runs mid-step under 30 s leases; restart it, same id.

    Without a worker id the restarted worker would wait out the dead one's leases
    (30 s). With it, the new process sees leases signed with its own id by a pid
    that is gone, expires them, and claims every in-flight run in well under a second.
    """
    runs, steps = 20, 3
    store: Store
    if kind == "sqlite":
        path, ledger_path = tmp_path / "runs.db", tmp_path / "ledger.db"
        store = SQLiteStore(path)
        with closing(sqlite3.connect(ledger_path, isolation_level=None)) as db:
            db.execute("PRAGMA journal_mode = WAL")
            for statement in SQLITE_LEDGER:
                db.execute(statement)
        store_args = [f"--store=sqlite:///{path}", f"--ledger={ledger_path}"]
    else:
        dsn: str = request.getfixturevalue("postgres_dsn")
        schema: str = request.getfixturevalue("postgres_schema")
        store = PostgresStore(dsn, schema=schema)
        with closing(postgres_ledger(dsn, schema)) as conn:
            for statement in POSTGRES_LEDGER:
                conn.execute(statement)
        store_args = [f"--store={dsn}", f"--schema={schema}"]
    start_runs(store, steps, runs)
    marker = tmp_path / "started"
    workers = workers_dir(
        [
            *store_args,
            f"--steps={steps}",
            "--concurrency=20",
            "--lease-seconds=30",
            "--sleep=0.4",
            "--worker-id=vm-1",
            "--log",
            "--until-idle",
        ]
    )
    first = workers.start(f"--marker={marker}")
    wait_until(
        lambda: len(leased_by(store, first.pid)) == runs and marker.exists(),
        60,
        "the first worker to hold every run",
    )
    time.sleep(0.1)  # mid-step: the handlers sleep 0.4 s
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=10) == -signal.SIGKILL
    in_flight = {run.run_id: run.version for run in store.runs() if run.lease_token is not None}
    assert len(in_flight) == runs
    assert all(run.lease_expires_at > time.time() + 20 for run in store.runs())

    began = time.monotonic()
    second = workers.start()
    wait_until(lambda: "started" in workers.output(second), 60, "the new worker to start")
    ready = time.monotonic()

    def resumed() -> bool:
        current = {run.run_id: run for run in store.runs()}
        return all(
            current[run_id].version > version
            or f":{second.pid}:" in (current[run_id].lease_owner or "")
            for run_id, version in in_flight.items()
        )

    wait_until(resumed, 25, "the restarted worker to take back its runs")
    recovered = time.monotonic()
    stats = workers.stats(second, timeout=60)
    output = workers.output(second)
    assert f"took back {runs} runs leased by vm-1@" in output, output
    assert stats["taken_back"] == runs
    assert stats["completed"] == runs
    assert store.count(status="completed") == runs
    if kind == "sqlite":
        with closing(sqlite3.connect(path)) as db:
            check_journals(
                db.execute(
                    "SELECT runs.run_id, version, count(seq), count(DISTINCT seq), min(seq),"
                    " max(seq) FROM runs JOIN journal USING (run_id) GROUP BY runs.run_id"
                ).fetchall(),
                runs,
                steps,
            )
    else:
        check_postgres(dsn, schema, runs, steps)
    assert recovered - ready < 1.0, f"took {recovered - ready:.2f} s after the worker started"
    assert recovered - began < 15.0  # the process start included, still far below the 30 s lease
    print(
        f"\n{kind}: recovered {runs} in-flight runs {recovered - ready:.3f} s after the restarted"
        " worker"
        f" started ({recovered - began:.2f} s after its launch; leases were 30 s)"
    )
    store.close()


def leased_by(store: Store, pid: int) -> list[str]:
    return [run.run_id for run in store.runs() if f":{pid}:" in (run.lease_owner or "")]
