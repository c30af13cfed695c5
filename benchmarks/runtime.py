"""Benchmark stepflow's durable runtime against the database's own raw commit rate.

Run ``python benchmarks/runtime.py`` (``--quick`` for a smoke run, ``--check`` to exit 1
when a target is missed, ``--postgres DSN`` to add PostgreSQL). See
``benchmarks/README.md`` for what each figure means.

A durable step costs at least one commit, so the worker's throughput is measured as a
ratio to what the same database does with the simplest possible commit (a one-row
``UPDATE``), measured in the same run, right before and after it. The ratio carries over
across disks and machines far better than steps per second do.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import NamedTuple

import stepflow
from stepflow.stores import PostgresStore, SQLiteStore, Store

N_STEPS = 12  # do steps per run in the throughput flow
RAW_ROWS = 1_000  # rows in the raw-commit table

TARGET_PLAIN = 0.5  # steps/s >= 0.5x raw commits/s without group commit
TARGET_GROUP = 2.0  # steps/s >= 2x raw commits/s with group commit
TARGET_KIB = 4.0  # worker memory per run in flight < 4 KiB
MAP_ITEMS, MAP_STEPS, MAP_CONCURRENCY = 100, 3, 20
TARGET_MAP = 0.8  # steps/s of one run's map >= 0.8x the same steps as separate runs
CHILDREN, CHILDREN_QUICK = 1000, 200
TARGET_CHILDREN = 2.0  # n children of one parent (started, driven, waited for) <= 2x n runs

POSTGRES_ENV = "STEPFLOW_BENCH_POSTGRES_DSN"

EVENT_SENDS, EVENT_SENDS_QUICK = 200, 50  # events sent to resting runs, one at a time
TARGET_EVENT_MS = 50.0  # send_event -> the run's next step started, median and p99
EVENT_IDLE_S = 5.0  # the worker's idle_interval then: far above the target, so a poll
# could never meet it; only the send's in-process notice can

_now = time.perf_counter


# --------------------------------------------------------------------------- flows


def noop(ctx: stepflow.RunContext) -> None:
    """A do step that does nothing: the step's cost is the runtime's alone."""


def build_noop_flow() -> stepflow.Flow:
    spec = stepflow.named("bench/noop/v1")
    for i in range(N_STEPS):
        spec = spec.do(f"step{i}", noop)
    return stepflow.new(spec)


class Gate:
    """Holds every run inside its (async) handler until all of them have entered it.

    The handler keeps nothing per run and awaits one shared future (not an
    ``asyncio.Event``, which allocates a future per waiter), so what a parked run
    costs is the worker's, apart from the handler's own suspended coroutine, which
    :func:`handler_bytes` measures so that it can be taken out.
    """

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.entered = 0
        self.all_in = asyncio.Event()
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def wait(self, ctx: stepflow.RunContext | None) -> None:
        self.entered += 1
        if self.entered == self.expected:
            self.all_in.set()
        await self.opened


def build_gate_flow(gate: Gate) -> stepflow.Flow:
    return stepflow.new(stepflow.named("bench/gate/v1").do("wait", gate.wait))


# --------------------------------------------------------------------------- databases


def raw_commit_rate(
    execute: Callable[[int], None], duration: float, warmup: int = 50
) -> tuple[float, int]:
    """Commits per second of ``execute(row_id)``, one committed UPDATE per call.

    Runs for about ``duration`` seconds, cycling over the table's rows. Returns the
    rate and the number of commits timed.
    """
    for i in range(warmup):  # the first commits grow the WAL file; do not time them
        execute(i % RAW_ROWS + 1)
    count = 0
    start = _now()
    while True:
        for _ in range(50):  # check the clock every 50 commits, not every one
            execute(count % RAW_ROWS + 1)
            count += 1
        elapsed = _now() - start
        if elapsed >= duration:
            return count / elapsed, count


class SQLiteBench:
    """SQLite databases in a temporary directory, one fresh file per measurement."""

    name = "SQLite"

    def __init__(self, directory: str | None) -> None:
        self.dir = tempfile.mkdtemp(prefix="stepflow-bench-", dir=directory)
        # The store's default level, read from the store so the raw loop always matches it.
        try:
            probe = SQLiteStore(os.path.join(self.dir, "probe.db"))
        except BaseException:
            self.close()
            raise
        self.synchronous = probe.synchronous
        probe.close()
        self.detail = (
            f"SQLite {sqlite3.sqlite_version}, WAL, synchronous={self.synchronous.upper()} "
            f"(SQLiteStore's default), files in {self.dir}"
        )

    @contextmanager
    def store(self) -> Iterator[Store]:
        path = os.path.join(self.dir, f"store-{uuid.uuid4().hex[:8]}.db")
        store = SQLiteStore(path)  # the default synchronous level, as reported
        try:
            yield store
        finally:
            store.close()
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)

    def raw(self, duration: float) -> tuple[float, int]:
        path = os.path.join(self.dir, f"raw-{uuid.uuid4().hex[:8]}.db")
        # Autocommit: each UPDATE is its own transaction, the cheapest commit there is.
        db = sqlite3.connect(path, isolation_level=None)
        try:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise SystemExit(f"benchmark setup is wrong: journal_mode is {mode!r}")
            db.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
            db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v INTEGER NOT NULL)")
            db.execute("BEGIN")
            db.executemany("INSERT INTO t VALUES (?, 0)", ((i,) for i in range(1, RAW_ROWS + 1)))
            db.execute("COMMIT")
            update = "UPDATE t SET v = v + 1 WHERE id = ?"
            return raw_commit_rate(lambda row: db.execute(update, (row,)), duration)
        finally:
            db.close()
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.remove(path + suffix)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class PostgresBench:
    """A PostgreSQL server; a fresh schema per measurement, dropped afterwards."""

    name = "PostgreSQL"

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.dsn = dsn
        self.prefix = f"stepflow_bench_{os.getpid()}_"
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT current_setting('server_version'), current_setting('fsync'),"
                " current_setting('synchronous_commit')"
            ).fetchone()
        assert row is not None
        version, fsync, sync_commit = row
        self.detail = (
            f"PostgreSQL {version}, fsync={fsync}, synchronous_commit={sync_commit} "
            "(the server's settings, used as they are by both sides)"
        )

    def _drop(self, schema: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))

    @contextmanager
    def store(self) -> Iterator[Store]:
        schema = self.prefix + uuid.uuid4().hex[:8]
        store = PostgresStore(self.dsn, schema=schema)
        try:
            yield store
        finally:
            store.close()
            self._drop(schema)

    def raw(self, duration: float) -> tuple[float, int]:
        import psycopg
        from psycopg import sql

        schema = self.prefix + "raw"
        try:
            # Autocommit: each UPDATE is its own transaction in one round trip, the
            # cheapest commit there is.
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
                conn.execute("CREATE TABLE t (id integer PRIMARY KEY, v bigint NOT NULL)")
                conn.execute(
                    "INSERT INTO t SELECT i, 0 FROM generate_series(1, %s) AS i", (RAW_ROWS,)
                )
                cur = conn.cursor()
                update = "UPDATE t SET v = v + 1 WHERE id = %s"
                # psycopg prepares a statement after it has run a few times, as
                # it does for the store's own statements.
                return raw_commit_rate(lambda row: cur.execute(update, (row,)), duration)
        finally:
            self._drop(schema)

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- measurements


def build_map_flow() -> stepflow.Flow:
    """One run: a map of ``MAP_ITEMS`` items, ``MAP_STEPS`` no-op steps each."""
    body = stepflow.steps()
    for i in range(MAP_STEPS):
        body = body.do(f"step{i}", noop)
    items = list(range(MAP_ITEMS))
    return stepflow.new(
        stepflow.named("bench/map/v1").map(
            "items", lambda ctx: items, body, max_concurrency=MAP_CONCURRENCY
        )
    )


def build_item_flow() -> stepflow.Flow:
    """One item's steps as a flow of its own: ``MAP_STEPS`` no-op steps."""
    spec = stepflow.named("bench/item/v1")
    for i in range(MAP_STEPS):
        spec = spec.do(f"step{i}", noop)
    return stepflow.new(spec)


def map_vs_runs(bench: SQLiteBench) -> tuple[float, float]:
    """Steps/s of one run's map and of the same steps as ``MAP_ITEMS`` separate runs.

    Both with one worker of concurrency ``MAP_CONCURRENCY``, on SQLite, measured
    back to back; the map's items command counts as a step.
    """
    rates = []
    for flow, runs in ((build_map_flow(), 1), (build_item_flow(), MAP_ITEMS)):
        with bench.store() as store:
            for i in range(runs):
                stepflow.start_run(store, flow, run_id=f"run{i:06d}")
            worker = stepflow.Worker(store, [flow], concurrency=MAP_CONCURRENCY)

            async def timed(worker: stepflow.Worker = worker) -> float:
                start = _now()
                await worker.run(until_idle=True)
                return _now() - start

            elapsed = asyncio.run(timed())
            steps = worker.stats.steps
            expected = MAP_ITEMS * MAP_STEPS + (1 if runs == 1 else 0)
            _expect(steps == expected, f"{expected} steps", steps)
            done = store.count(status="completed")
            _expect(done == runs, f"{runs} completed runs", done)
            rates.append(steps / elapsed)
    return rates[0], rates[1]


def children_vs_runs(bench: SQLiteBench, count: int) -> tuple[float, float]:
    """Seconds to start and drive ``count`` child runs of one parent, and ``count`` runs.

    The parent is a ``map(call=)`` of ``count`` items: its worker starts every
    child in one save, drives them, and the parent wakes as their ends reach
    its inbox, until it completes. The runs are started with ``start_run`` and
    driven by the same kind of worker; both on SQLite, one no-op step each.
    """
    child = stepflow.new(stepflow.named("bench/child/v1").do("step", noop))
    items = list(range(count))
    parent = stepflow.new(
        stepflow.named("bench/parent/v1").map("kids", lambda ctx: items, call=child)
    )
    times = []
    for runs in (0, count):
        with bench.store() as store:

            async def timed(store: Store = store, runs: int = runs) -> float:
                start = _now()
                if runs:
                    for i in range(runs):
                        stepflow.start_run(store, child, run_id=f"run{i:06d}")
                else:
                    stepflow.start_run(store, parent, run_id="parent")
                worker = stepflow.Worker(store, [parent, child], concurrency=MAP_CONCURRENCY)
                await worker.run(until_idle=True)
                return _now() - start

            times.append(asyncio.run(timed()))
            done = store.count(status="completed")
            _expect(done == count + (0 if runs else 1), f"{count} completed runs", done)
    return times[0], times[1]


def event_latency(bench: SQLiteBench, sends: int) -> list[float]:
    """Seconds from ``send_event`` to a resting run until its next step starts, per send.

    ``sends`` runs rest at a ``wait_event`` with no timeout (nothing is due, the
    idle worker sleeps ``EVENT_IDLE_S`` between looks); each is sent its event
    from another thread, one at a time, and timed from just before the send (its
    commit included) to the moment the handler of the step after the wait starts.
    """
    started: dict[str, float] = {}
    arrived = asyncio.Event()

    async def mark(ctx: stepflow.RunContext) -> None:
        started[ctx.run_id] = _now()
        arrived.set()

    flow = stepflow.new(stepflow.named("bench/event/v1").wait_event("go").do("mark", mark))
    with bench.store() as store:
        start_runs(store, flow, sends)  # each rests at once: its wait has no timeout
        worker = stepflow.Worker(store, [flow], idle_interval=EVENT_IDLE_S)

        async def measure() -> list[float]:
            running = asyncio.create_task(worker.run())
            latencies = []
            try:
                await asyncio.sleep(0.2)  # let the worker settle into its idle sleep
                for i in range(sends):
                    run_id = f"run{i:06d}"
                    arrived.clear()
                    sent = _now()
                    await asyncio.to_thread(stepflow.send_event, store, run_id, "go", i)
                    await asyncio.wait_for(arrived.wait(), timeout=30)
                    latencies.append(started[run_id] - sent)
                    await asyncio.sleep(0.005)  # the worker finishes the run and idles again
            finally:
                worker.stop()
                await running
            return latencies

        latencies = asyncio.run(measure())
        done = store.count(status="completed")
    _expect(done == sends, f"{sends} completed runs", done)
    _expect(worker.stats.events == sends, f"{sends} events delivered", worker.stats.events)
    return latencies


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _expect(ok: bool, what: str, got: object) -> None:
    # Not assert: the checks must hold under ``python -O`` too.
    if not ok:
        raise SystemExit(f"benchmark went wrong: expected {what}, got {got!r}")


def start_runs(store: Store, flow: stepflow.Flow, runs: int) -> None:
    for i in range(runs):
        stepflow.start_run(store, flow, run_id=f"run{i:06d}")


def throughput(
    store: Store, flow: stepflow.Flow, runs: int, group_commit: bool
) -> tuple[float, stepflow.runtime.WorkerStats]:
    """Seconds for one worker to take ``runs`` started runs to completion, and its stats."""
    start_runs(store, flow, runs)  # not timed
    # Every run at once: concurrency covers them all, so group commit has as many
    # saves to gather as there are runs in flight.
    worker = stepflow.Worker(store, [flow], concurrency=runs, group_commit=group_commit)

    async def timed() -> float:
        start = _now()
        await worker.run(until_idle=True)
        return _now() - start

    elapsed = asyncio.run(timed())
    stats = worker.stats
    _expect(stats.steps == runs * N_STEPS, f"{runs * N_STEPS} steps", stats.steps)
    _expect(stats.completed == runs, f"{runs} completed runs", stats.completed)
    _expect(stats.stale == 0, "no stale saves", stats.stale)
    done = store.count(status="completed")
    _expect(done == runs, f"{runs} completed runs in the store", done)
    return elapsed, stats


def handler_bytes(runs: int) -> int:
    """Bytes that ``runs`` handler coroutines take, each suspended where a run parks.

    Each coroutine is stepped by hand to its ``await``, with no task and no worker,
    so this is the handler's own share of a parked run, not the worker's.
    """
    gate = Gate(runs + 1)  # never all in: this gate is only a place to park
    gc.collect()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        parked = [gate.wait(None) for _ in range(runs)]
        for coro in parked:
            # Runs to ``await self.opened`` and stops there. The future's "blocking"
            # flag is shared by all its awaiters; a task resets it on taking the future,
            # so do the same, or the next coroutine's await is refused.
            coro.send(None)._asyncio_future_blocking = False
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for coro in parked:
        coro.close()
    return after - before


def memory_per_run(
    store_cm: AbstractContextManager[Store], runs: int
) -> tuple[float, float, float]:
    """Bytes per run in flight: the worker's peak and still-held growth, and the handler's.

    Every run is parked in an async handler (concurrency covers them all) when the
    memory is read. The baseline is taken after the runs are started and before the
    worker exists; the handlers' own suspended coroutines are subtracted.
    """

    async def measure(store: Store) -> tuple[float, float, float]:
        gate = Gate(runs)
        flow = build_gate_flow(gate)
        start_runs(store, flow, runs)
        handlers = handler_bytes(runs)
        gc.collect()
        tracemalloc.start()
        try:
            baseline, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            worker = stepflow.Worker(store, [flow], concurrency=runs)
            task = asyncio.create_task(worker.run(until_idle=True))
            await gate.all_in.wait()
            current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        gate.opened.set_result(None)
        await task
        _expect(worker.stats.completed == runs, f"{runs} completed runs", worker.stats.completed)
        worker_peak = peak - baseline - handlers
        return worker_peak / runs, (current - baseline - handlers) / runs, handlers / runs

    with store_cm as store:
        return asyncio.run(measure(store))


# --------------------------------------------------------------------------- report


class Row(NamedTuple):
    """One throughput measurement and the raw commit rates around it."""

    database: str
    group_commit: bool
    stats: stepflow.runtime.WorkerStats
    elapsed: float
    raw_before: float
    raw_after: float

    @property
    def mode(self) -> str:
        return "group commit" if self.group_commit else "no group commit"

    @property
    def steps_s(self) -> float:
        return self.stats.steps / self.elapsed

    @property
    def raw(self) -> float:
        return (self.raw_before + self.raw_after) / 2

    @property
    def ratio(self) -> float:
        return self.steps_s / self.raw

    @property
    def target(self) -> float:
        return TARGET_GROUP if self.group_commit else TARGET_PLAIN

    @property
    def ok(self) -> bool:
        return self.ratio >= self.target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (200 runs)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--runs", type=int, default=None, help="runs in flight (default 1000)")
    parser.add_argument(
        "--postgres",
        metavar="DSN",
        default=os.environ.get(POSTGRES_ENV) or None,
        help=f"also measure PostgreSQL at this DSN (default: ${POSTGRES_ENV})",
    )
    parser.add_argument(
        "--dir", default=None, help="where the SQLite files go (default: the temp directory)"
    )
    args = parser.parse_args(argv)
    runs = args.runs or (200 if args.quick else 1_000)
    raw_seconds = 0.5 if args.quick else 2.0
    if runs < 1:
        parser.error("--runs must be >= 1")

    # PostgreSQL first: it holds nothing yet, so a bad DSN leaves no temp directory behind.
    postgres = [PostgresBench(args.postgres)] if args.postgres else []
    benches: list[SQLiteBench | PostgresBench] = [SQLiteBench(args.dir), *postgres]

    print(
        f"stepflow {stepflow.__version__}, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.machine()}, {os.cpu_count()} CPUs"
    )
    print(
        f"{runs} runs of {N_STEPS} no-op do steps ({runs * N_STEPS} steps), one worker, "
        f"concurrency {runs}{' (--quick)' if args.quick else ''}"
    )
    for bench in benches:
        print(f"  {bench.name}: {bench.detail}")
    print()

    flow = build_noop_flow()
    rows: list[Row] = []
    start = _now()
    try:
        for bench in benches:
            for group_commit in (False, True):
                # The raw rate is taken right before and right after the worker's, and
                # averaged, so both sides meet the same disk weather (fsync times drift
                # by 2x or more on shared machines).
                before, _ = bench.raw(raw_seconds)
                with bench.store() as store:
                    elapsed, stats = throughput(store, flow, runs, group_commit)
                after, _ = bench.raw(raw_seconds)
                rows.append(Row(bench.name, group_commit, stats, elapsed, before, after))
        peak, current, handler = memory_per_run(benches[0].store(), runs)
        assert isinstance(benches[0], SQLiteBench)
        map_rate, runs_rate = map_vs_runs(benches[0])
        children = CHILDREN_QUICK if args.quick else CHILDREN
        children_s, runs_s = children_vs_runs(benches[0], children)
        latencies = event_latency(benches[0], EVENT_SENDS_QUICK if args.quick else EVENT_SENDS)
    finally:
        for bench in benches:
            bench.close()
    took = _now() - start

    header = (
        f"{'database':<12}{'mode':<17}{'steps/s':>10}{'raw commits/s':>15}"
        f"{'ratio':>8}{'target':>9}  {'':<5}{'commits':>9}{'steps/commit':>14}"
    )
    print(header)
    print("-" * len(header))
    results: list[tuple[str, bool, str]] = []
    for row in rows:
        print(
            f"{row.database:<12}{row.mode:<17}{row.steps_s:>10.0f}{row.raw:>15.0f}"
            f"{row.ratio:>7.2f}x{'>= ' + format(row.target, 'g') + 'x':>9}  "
            f"{'PASS' if row.ok else 'MISS':<5}{row.stats.commits:>9}"
            f"{row.stats.steps / max(row.stats.commits, 1):>14.1f}"
        )
        results.append(
            (f"{row.database}, {row.mode}: >= {row.target:g}x raw", row.ok, f"{row.ratio:.2f}x")
        )
    print()
    for row in rows:
        print(
            f"  {row.database}, {row.mode}: worker {row.elapsed:.2f} s to idle; raw "
            f"{row.raw_before:.0f} commits/s before it, {row.raw_after:.0f} after"
        )
    kib = peak / 1024
    ok = kib < TARGET_KIB
    results.append((f"worker memory per run in flight < {TARGET_KIB:g} KiB", ok, f"{kib:.2f} KiB"))
    print()
    print(
        f"memory: {runs} runs in flight in one worker (SQLite), tracemalloc: the worker's "
        f"peak growth {kib:.2f} KiB/run, still held {current / 1024:.2f} KiB/run "
        f"(the handlers' own {handler / 1024:.2f} KiB/run taken out)"
    )
    print(f"  {'PASS' if ok else 'MISS'}  < {TARGET_KIB:g} KiB per run in flight")
    print()
    map_ratio = map_rate / runs_rate
    map_ok = map_ratio >= TARGET_MAP
    results.append(
        (f"map in one run >= {TARGET_MAP:g}x the same steps as runs", map_ok, f"{map_ratio:.2f}x")
    )
    print(
        f"map (SQLite, concurrency {MAP_CONCURRENCY}): one run with a map of {MAP_ITEMS} items x "
        f"{MAP_STEPS} steps, max_concurrency={MAP_CONCURRENCY}: {map_rate:.0f} steps/s; "
        f"the same {MAP_ITEMS * MAP_STEPS} steps as {MAP_ITEMS} runs: {runs_rate:.0f} steps/s; "
        f"ratio {map_ratio:.2f}x"
    )
    print(f"  {'PASS' if map_ok else 'MISS'}  >= {TARGET_MAP:g}x")
    print()
    children_ratio = children_s / runs_s
    children_ok = children_ratio <= TARGET_CHILDREN
    results.append(
        (f"{children} children of one parent <= {TARGET_CHILDREN:g}x {children} runs",
         children_ok, f"{children_ratio:.2f}x")
    )  # fmt: skip
    print(
        f"child runs (SQLite): one parent starting {children} children (map(call=)) and "
        f"waking when the last ends: {children_s:.2f} s; {children} independent runs started "
        f"and driven: {runs_s:.2f} s; ratio {children_ratio:.2f}x"
    )
    print(f"  {'PASS' if children_ok else 'MISS'}  <= {TARGET_CHILDREN:g}x")
    print()
    median_ms = _percentile(latencies, 0.5) * 1000
    p99_ms = _percentile(latencies, 0.99) * 1000
    for label, value in (("median", median_ms), ("p99", p99_ms)):
        results.append(
            (f"send_event to next step, {label} < {TARGET_EVENT_MS:g} ms", value < TARGET_EVENT_MS,
             f"{value:.1f} ms")
        )  # fmt: skip
    print(
        f"events (SQLite): send_event to a run resting at a wait_event, until its next step "
        f"starts, {len(latencies)} sends one at a time, idle worker (idle_interval "
        f"{EVENT_IDLE_S:g} s): median {median_ms:.1f} ms, p99 {p99_ms:.1f} ms, "
        f"max {max(latencies) * 1000:.1f} ms"
    )
    ok_events = median_ms < TARGET_EVENT_MS and p99_ms < TARGET_EVENT_MS
    print(f"  {'PASS' if ok_events else 'MISS'}  < {TARGET_EVENT_MS:g} ms (median and p99)")
    print()
    print("targets")
    for text, ok, got in results:
        print(f"  {'PASS' if ok else 'MISS'}  {text:<56} (got {got})")
    print(f"\nmeasured in {took:.1f} s")
    missed = not all(ok for _, ok, _ in results)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
