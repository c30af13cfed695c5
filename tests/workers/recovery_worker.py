"""A worker process for the recovery tests (``tests/test_recovery.py``).

It serves ``recovery/v1``, a chain of ``--steps`` ``do`` steps. Every step's handler
records its execution in a ledger beside the store, in its own transaction:

* ``ledger``: one row per idempotency key (``INSERT`` ignoring a key already
  there), with the run and step it belongs to;
* ``executions``: one row per execution of a key, with the pid that ran it, so
  re-executions can be counted and attributed.

The ledger is a SQLite file (``--ledger PATH``) for a SQLite store, and tables in
the store's own schema for PostgreSQL. The handler returns the executing pid, so
the journal shows which process's save was kept.

Run: ``python recovery_worker.py --store sqlite:////tmp/runs.db --ledger /tmp/l.db``
(see ``--help``). It stops gracefully on SIGTERM and prints its counters as one
JSON line on exit.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import attrs

import stepflow
from stepflow import Flow, RunContext, Worker
from stepflow.stores import PostgresStore, Store, open_store

FLOW_NAME = "recovery/v1"

SQLITE_LEDGER = (
    "CREATE TABLE IF NOT EXISTS ledger (key TEXT PRIMARY KEY, run_id TEXT NOT NULL,"
    " step TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS executions (key TEXT NOT NULL, run_id TEXT NOT NULL,"
    " step TEXT NOT NULL, pid INTEGER NOT NULL, attempt INTEGER NOT NULL)",
)
POSTGRES_LEDGER = (
    "CREATE TABLE IF NOT EXISTS ledger (key text PRIMARY KEY, run_id text NOT NULL,"
    " step text NOT NULL)",
    "CREATE TABLE IF NOT EXISTS executions (key text NOT NULL, run_id text NOT NULL,"
    " step text NOT NULL, pid integer NOT NULL, attempt integer NOT NULL)",
)


def build_flow(steps: int, handler: Any = None) -> Flow:
    """The flow the recovery tests start and the workers serve."""
    spec = stepflow.named(FLOW_NAME)
    for index in range(steps):
        spec = spec.do(f"s{index}", handler or (lambda ctx: None))
    return stepflow.new(spec)


class SQLiteLedger:
    """The ledger in a SQLite file: one connection per handler thread."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._local.db = db
        return db

    def record(self, ctx: RunContext) -> None:
        row = (ctx.idempotency_key, ctx.run_id, ctx.step)
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT OR IGNORE INTO ledger (key, run_id, step) VALUES (?, ?, ?)", row)
            db.execute(
                "INSERT INTO executions (key, run_id, step, pid, attempt) VALUES (?, ?, ?, ?, ?)",
                (*row, os.getpid(), ctx.attempt),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


class PostgresLedger:
    """The ledger in the store's PostgreSQL schema: one connection per handler thread."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema
        self._local = threading.local()

    def _conn(self) -> Any:
        import psycopg
        from psycopg import sql

        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = psycopg.connect(self.dsn, autocommit=True)
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
            self._local.conn = conn
        return conn

    def record(self, ctx: RunContext) -> None:
        row = (ctx.idempotency_key, ctx.run_id, ctx.step)
        conn = self._conn()
        with conn.transaction():
            conn.execute(
                "INSERT INTO ledger (key, run_id, step) VALUES (%s, %s, %s)"
                " ON CONFLICT (key) DO NOTHING",
                row,
            )
            conn.execute(
                "INSERT INTO executions (key, run_id, step, pid, attempt)"
                " VALUES (%s, %s, %s, %s, %s)",
                (*row, os.getpid(), ctx.attempt),
            )


def open_ledger(store: Store, ledger: str | None) -> SQLiteLedger | PostgresLedger:
    if isinstance(store, PostgresStore):
        return PostgresLedger(store.dsn, store.schema)
    if ledger is None:
        raise SystemExit("--ledger PATH is needed with a SQLite store")
    return SQLiteLedger(ledger)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--store", required=True, help="store URL (sqlite:////... or postgresql://...)"
    )
    parser.add_argument("--schema", default="stepflow", help="PostgreSQL schema")
    parser.add_argument("--ledger", help="SQLite ledger file (SQLite stores only)")
    parser.add_argument("--steps", type=int, default=10, help="steps in the flow")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lease-seconds", type=float, default=1.0)
    parser.add_argument("--idle-interval", type=float, default=0.2)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds each handler sleeps")
    parser.add_argument("--marker", help="file written (with the key) when a handler first starts")
    parser.add_argument("--until-idle", action="store_true", help="exit once no run is running")
    parser.add_argument("--worker-id", help="a stable worker id (Worker(worker_id=...))")
    parser.add_argument("--log", action="store_true", help="log the worker's INFO lines")
    args = parser.parse_args(argv)
    if args.log:
        logging.basicConfig(
            stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(message)s", force=True
        )

    if args.store.startswith(("postgresql://", "postgres://")):
        store: Store = PostgresStore(args.store, schema=args.schema)
    else:
        store = open_store(args.store)
    ledger = open_ledger(store, args.ledger)
    marked = threading.Lock()

    def step(ctx: RunContext) -> int:
        if args.marker and marked.acquire(blocking=False):
            # Written aside and renamed: whoever sees the file sees the whole key.
            aside = Path(f"{args.marker}.tmp")
            aside.write_text(ctx.idempotency_key)
            aside.replace(args.marker)
        if args.sleep:
            time.sleep(args.sleep)
        ledger.record(ctx)
        return os.getpid()

    worker = Worker(
        store,
        [build_flow(args.steps, step)],
        concurrency=args.concurrency,
        lease_seconds=args.lease_seconds,
        idle_interval=args.idle_interval,
        worker_id=args.worker_id,
    )
    try:
        stats = worker.run_sync(until_idle=args.until_idle, handle_signals=True)
    finally:
        store.close()
    print(json.dumps({"pid": os.getpid(), **attrs.asdict(stats)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
