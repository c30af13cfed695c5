"""Benchmark journal retention: ``Store.prune`` on SQLite, beside a worker that keeps saving.

Run ``python benchmarks/prune.py`` (1,000,000 journal rows; ``--quick``: 100,000;
``--check`` to exit 1 when a target is missed). See ``benchmarks/README.md``.

The database holds finished runs (100 journal entries each) past their retention,
and one running run. While ``prune`` removes the old journals, a writer thread on
its own connection (what a worker is to the database) saves the running run over
and over, each save one small compare-and-swap commit with a journal entry, and
records how long each took. Its worst save beside the prune is compared with its
worst save alone, measured in the same run just before.

Targets: the prune of 1,000,000 rows takes under 30 s (``--quick``: the same rate,
3 s for 100,000 rows), and no save of the writer waits more than 100 ms.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from contextlib import closing

from stepflow.stores import Save, SQLiteStore

ROWS_FULL, ROWS_QUICK = 1_000_000, 100_000
ENTRIES_PER_RUN = 100
TARGET_SECONDS_PER_MILLION = 30.0  # prune of 1,000,000 rows under 30 s
TARGET_WORST_SAVE_MS = 100.0  # no save of a running worker waits longer
BASELINE_SECONDS = 1.5  # how long the writer runs alone first

_now = time.perf_counter


def build(path: str, rows: int) -> None:
    """Write ``rows`` journal rows of finished runs (old), and one running run."""
    SQLiteStore(path).close()  # the schema, as this stepflow writes it
    runs = rows // ENTRIES_PER_RUN
    batch = '{"op":"effects","at":1.0,"effects":[[1,"returned",{"copied":3}]]}'
    with closing(sqlite3.connect(path)) as db, db:
        db.executemany(
            "INSERT INTO runs (run_id, flow, status, state, version, wake_at, input,"
            " created_at, updated_at) VALUES (?, 'bench/v1', 'completed', '{}', ?, NULL,"
            " 'null', 1.0, 2.0)",
            ((f"old-{n:07}", ENTRIES_PER_RUN) for n in range(runs)),
        )
        db.executemany(
            "INSERT INTO journal (run_id, seq, at, batch) VALUES (?, ?, 1.0, ?)",
            (
                (f"old-{n:07}", seq, batch)
                for n in range(runs)
                for seq in range(1, ENTRIES_PER_RUN + 1)
            ),
        )
    store = SQLiteStore(path)
    store.create_run(
        "live", "bench/v1", "{}", input=None, status="running", wake_at=None, now=3.0
    )
    store.close()


class Writer(threading.Thread):
    """Save the running run again and again on its own connection; time each save."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.store = SQLiteStore(path)
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.started = threading.Event()

    def run(self) -> None:
        run = self.store.load("live")
        self.started.set()
        while not self.stop.is_set():
            save = Save("live", run.version, None, "{}", "running", None, batch="{}")
            begin = _now()
            run = self.store.save(save, now=4.0)
            self.latencies.append(_now() - begin)
            time.sleep(0.002)  # a worker between two steps

    def measure(self, seconds: float | None = None) -> list[float]:
        """Return the latencies recorded from now on, for ``seconds`` or until stopped."""
        mark = len(self.latencies)
        if seconds is not None:
            time.sleep(seconds)
        return self.latencies[mark:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 rows instead of 1,000,000")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--rows", type=int, default=None, help="journal rows to prune")
    parser.add_argument("--batch", type=int, default=1000, help="entries per transaction")
    args = parser.parse_args(argv)
    rows = args.rows or (ROWS_QUICK if args.quick else ROWS_FULL)
    target_seconds = TARGET_SECONDS_PER_MILLION * rows / 1_000_000

    directory = tempfile.mkdtemp(prefix="stepflow-bench-prune-")
    try:
        path = os.path.join(directory, "runs.db")
        begin = _now()
        build(path, rows)
        print(f"built {rows:,} journal rows in {_now() - begin:.1f} s ({path})")

        writer = Writer(path)
        writer.start()
        writer.started.wait()
        alone = writer.measure(BASELINE_SECONDS)

        pruner = SQLiteStore(path)
        mark = len(writer.latencies)
        begin = _now()
        result = pruner.prune(10.0, now=5.0, batch=args.batch)
        elapsed = _now() - begin
        beside = writer.latencies[mark:]
        writer.stop.set()
        writer.join()
        writer.store.close()
        with closing(sqlite3.connect(path)) as db:
            (left,) = db.execute("SELECT COUNT(*) FROM journal WHERE run_id != 'live'").fetchone()
        pruner.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)

    worst_alone, worst_beside = max(alone) * 1000, max(beside) * 1000
    print(
        f"prune: {result.journal_entries:,} entries of {result.runs:,} runs in {elapsed:.2f} s "
        f"({result.journal_entries / elapsed:,.0f} entries/s, {result.transactions:,} "
        f"transactions of <= {args.batch} entries); target < {target_seconds:.1f} s"
    )
    print(
        f"writer alone:        {len(alone):5} saves, median "
        f"{statistics.median(alone) * 1000:6.2f} ms, worst {worst_alone:6.2f} ms"
    )
    print(
        f"writer beside prune: {len(beside):5} saves, median "
        f"{statistics.median(beside) * 1000:6.2f} ms, worst {worst_beside:6.2f} ms "
        f"({worst_beside / worst_alone:.1f}x alone); target < {TARGET_WORST_SAVE_MS:.0f} ms"
    )
    problems = []
    if result.journal_entries != rows or left:
        problems.append(f"pruned {result.journal_entries:,} of {rows:,} rows, {left:,} left")
    if elapsed > target_seconds:
        problems.append(f"prune took {elapsed:.1f} s, target {target_seconds:.1f} s")
    if worst_beside > TARGET_WORST_SAVE_MS:
        problems.append(f"a save waited {worst_beside:.0f} ms, target {TARGET_WORST_SAVE_MS} ms")
    for problem in problems:
        print(f"MISSED: {problem}")
    return 1 if problems and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
