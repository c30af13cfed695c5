"""Benchmark the web console's runs page over 100,000 runs in SQLite.

Run ``python benchmarks/console.py`` (``--quick`` for a smoke run over 10,000 runs,
``--check`` to exit 1 when the target is missed, ``--runs N`` for another size).
Needs the ``ui`` extra and Starlette's test client (``pip install -e '.[test]'``).

The store is a temporary SQLite file filled with runs of three flows in four
statuses (real stored states, made by :func:`stepflow.start_run`, copied with
fresh ids and times). The runs page is requested through the console's ASGI
application in process (Starlette's ``TestClient``), so each time is the server's
whole work for the page: the counts by status, one keyset page of 50 runs, and
the HTML; it is an upper bound of server time (the in-process client adds a
little). Each kind of page is asked for repeatedly and the median and p99 are
printed against the target, **runs page < 300 ms median**.

The baseline, measured in the same run on the same file, is what an ``OFFSET``
page costs at the same depth as the deep keyset page (SQLite must walk every row
before it): the ratio says what the keyset pages save.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable

import stepflow
from stepflow.stores import MemoryStore, SQLiteStore

TARGET_MS = 300.0
PAGE = 50


def _flows() -> list[stepflow.Flow]:
    return [
        stepflow.new(
            stepflow.named(name)
            .do("build", lambda ctx: {"image": "app:1"})
            .wait_for("ready", lambda ctx: True, every=5)
            .do("ship", lambda ctx: None)
        )
        for name in ("deploy/v1", "deploy/v2", "backup/v1")
    ]


def fill(path: str, runs: int, seed: int = 7) -> list[str]:
    """Create the store at ``path`` with ``runs`` runs; return their ids."""
    SQLiteStore(path).close()  # the schema, indexes included
    flows = _flows()
    samples = {}
    scratch = MemoryStore()
    for flow in flows:
        record = stepflow.start_run(scratch, flow, {"app": "billing", "version": "1.5.0"})
        samples[flow.name] = record.state
    rng = random.Random(seed)
    statuses = ["completed"] * 70 + ["failed"] * 10 + ["running"] * 15 + ["cancelled"] * 5
    ids = [uuid.UUID(int=rng.getrandbits(128)).hex for _ in range(runs)]
    start = 1_700_000_000.0
    rows = []
    for i, run_id in enumerate(ids):
        flow = flows[i % 3].name
        status = rng.choice(statuses)
        created = start + i * 0.5 + (0 if i % 10 else -0.5)  # some ties in created_at
        wake = created + 60 if status == "running" else None
        rows.append(
            (run_id, flow, status, samples[flow], 3, wake, '{"app": "billing"}', created, created)
        )
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO runs (run_id, flow, status, state, version, wake_at, input,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.execute("ANALYZE")
    return ids


def _time(fn: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        begin = time.perf_counter()
        fn()
        times.append((time.perf_counter() - begin) * 1000)
    return times


def _p99(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run over 10,000 runs")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    parser.add_argument("--runs", type=int, default=None, help="runs in the store (100,000)")
    parser.add_argument("--repeats", type=int, default=None, help="requests per page (30)")
    args = parser.parse_args()
    runs = args.runs or (10_000 if args.quick else 100_000)
    repeats = args.repeats or (10 if args.quick else 30)

    from starlette.testclient import TestClient

    from stepflow.console import create_app

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "runs.db")
        begin = time.perf_counter()
        ids = fill(path, runs)
        took = time.perf_counter() - begin
        print(f"filled {runs:,} runs in {took:.1f} s; {repeats} requests per page")
        store = SQLiteStore(path)
        # A cursor 90% of the way down, as a user paging far back would hold.
        with sqlite3.connect(path) as db:
            at, run_id = db.execute(
                "SELECT created_at, run_id FROM runs ORDER BY created_at DESC, run_id DESC"
                " LIMIT 1 OFFSET ?",
                (int(runs * 0.9),),
            ).fetchone()
        cursor = f"{at!r}:{run_id}"
        pages = {
            "all runs": "/runs",
            "status=failed": "/runs?status=failed",
            "flow=deploy/v2": "/runs?flow=deploy/v2",
            "flow + status": "/runs?flow=deploy/v2&status=running",
            "id prefix (2 chars)": f"/runs?prefix={ids[0][:2]}",
            "deep page (90%)": f"/runs?older={cursor}",
            "live fragment": "/runs?partial=1",
        }
        results: dict[str, list[float]] = {}
        app = create_app(store, _flows())
        with TestClient(app, base_url="http://127.0.0.1") as client:
            for url in pages.values():  # warm up: templates, caches
                response = client.get(url)
                assert response.status_code == 200, (url, response.status_code)
                assert response.text.count("<tr data-run=") == PAGE or "prefix" in url
            for name, url in pages.items():
                results[name] = _time(lambda url=url: client.get(url), repeats)

        def offset_page() -> None:
            with sqlite3.connect(path) as db:
                db.execute(
                    "SELECT * FROM runs ORDER BY created_at DESC, run_id DESC LIMIT ? OFFSET ?",
                    (PAGE, int(runs * 0.9)),
                ).fetchall()

        def keyset_page() -> None:
            store.page_runs(older_than=(at, run_id), limit=PAGE)

        offset = statistics.median(_time(offset_page, repeats))
        keyset = statistics.median(_time(keyset_page, repeats))
        store.close()

    print(f"\nruns page over {runs:,} SQLite runs, ms per request (target: median < {TARGET_MS:g})")
    print(f"{'page':<22}{'median':>9}{'p99':>9}")
    worst = 0.0
    for name, times in results.items():
        median = statistics.median(times)
        worst = max(worst, median)
        print(f"{name:<22}{median:>9.1f}{_p99(times):>9.1f}")
    everything = [t for times in results.values() for t in times]
    print(f"{'all pages':<22}{statistics.median(everything):>9.1f}{_p99(everything):>9.1f}")
    print(
        f"\nbaseline, same depth (90%): OFFSET query {offset:.2f} ms, keyset query "
        f"{keyset:.2f} ms: keyset is {offset / max(keyset, 1e-6):.0f}x faster"
    )
    ok = worst < TARGET_MS
    verdict = "met" if ok else "MISSED"
    print(
        f"\ntarget: every page's median < {TARGET_MS:g} ms: {verdict} "
        f"(worst median {worst:.1f} ms, {worst / TARGET_MS:.2f}x the target)"
    )
    return 1 if args.check and not ok else 0


if __name__ == "__main__":
    sys.exit(main())
