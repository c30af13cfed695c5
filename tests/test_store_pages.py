"""The console's runs queries: keyset pages, id prefixes and counts by status.

Run on every runs (memory, SQLite with and without ``RETURNING``, PostgreSQL),
through the backends of ``test_stores``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from test_stores import _backend, create

from stepflow.stores import SQLiteStore, Store
from stepflow.stores import sqlite as sqlite_module
from stepflow.stores.base import prefix_upper_bound


@pytest.fixture(params=["memory", "sqlite", "sqlite-no-returning", "postgres"])
def runs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A fresh store of each kind (see ``test_stores``)."""
    for backend in _backend(request.param, request, tmp_path):
        yield backend.open()


def _ids(runs: list[Any]) -> list[str]:
    return [run.run_id for run in runs]


def _seed(runs: Store) -> None:
    # Created at 1, 2, 3, ...; "b-" runs twice at the same time to test the tie-break.
    specs = [
        ("a-1", "deploy/v1", "running", 1.0),
        ("a-2", "deploy/v1", "failed", 2.0),
        ("b-1", "deploy/v2", "running", 3.0),
        ("b-2", "deploy/v2", "completed", 3.0),
        ("a-3", "deploy/v1", "completed", 4.0),
        ("a%_\\x", "deploy/v1", "running", 5.0),
        ("ab", "deploy/v2", "cancelled", 6.0),
    ]
    for run_id, flow, status, at in specs:
        wake = 10.0 if status == "running" else None
        create(runs, run_id, flow=flow, status=status, wake_at=wake, now=at)


def test_pages_are_newest_first_with_run_id_breaking_ties(runs: Store) -> None:
    _seed(runs)
    assert _ids(runs.page_runs(limit=100)) == ["ab", "a%_\\x", "a-3", "b-2", "b-1", "a-2", "a-1"]


def test_keyset_pages_walk_forwards_and_back_without_gaps_or_repeats(runs: Store) -> None:
    _seed(runs)
    pages = []
    page = runs.page_runs(limit=3)
    while page:
        pages.append(_ids(page))
        last = page[-1]
        page = runs.page_runs(limit=3, older_than=(last.created_at, last.run_id))
    assert pages == [["ab", "a%_\\x", "a-3"], ["b-2", "b-1", "a-2"], ["a-1"]]
    # Back from the last page: the three runs just newer than its first, newest first.
    first = runs.load("a-1")
    assert _ids(runs.page_runs(limit=3, newer_than=(first.created_at, first.run_id))) == [
        "b-2",
        "b-1",
        "a-2",
    ]
    tied = runs.load("b-2")
    assert _ids(runs.page_runs(limit=1, older_than=(tied.created_at, tied.run_id))) == ["b-1"]


def test_pages_filter_by_status_flow_and_id_prefix(runs: Store) -> None:
    _seed(runs)
    assert _ids(runs.page_runs(status="running")) == ["a%_\\x", "b-1", "a-1"]
    assert _ids(runs.page_runs(flow="deploy/v2")) == ["ab", "b-2", "b-1"]
    assert _ids(runs.page_runs(flow="deploy/v1", status="completed")) == ["a-3"]
    assert _ids(runs.page_runs(id_prefix="a-")) == ["a-3", "a-2", "a-1"]
    assert _ids(runs.page_runs(id_prefix="a", status="running")) == ["a%_\\x", "a-1"]
    assert _ids(runs.page_runs(id_prefix="")) == _ids(runs.page_runs())
    assert _ids(runs.page_runs(id_prefix="zz")) == []
    assert runs.page_runs(limit=0) == []


@pytest.mark.parametrize("prefix", ["a%", "a%_", "a%_\\", "_", "%", "A"])
def test_an_id_prefix_is_matched_literally_and_case_sensitively(runs: Store, prefix: str) -> None:
    _seed(runs)
    expected = [run_id for run_id in ["a%_\\x"] if run_id.startswith(prefix)]
    assert _ids(runs.page_runs(id_prefix=prefix)) == expected


def test_an_id_prefix_matches_ids_with_any_characters_after_it(runs: Store) -> None:
    for run_id in ["p", "p\x01", "p\U0010ffff", "p\U0010ffffz", "pé", "q"]:
        create(runs, run_id)
    assert sorted(_ids(runs.page_runs(id_prefix="p"))) == sorted(
        ["p", "p\x01", "p\U0010ffff", "p\U0010ffffz", "pé"]
    )
    assert sorted(_ids(runs.page_runs(id_prefix="p\U0010ffff"))) == sorted(
        ["p\U0010ffff", "p\U0010ffffz"]
    )


def test_count_by_status_filters_by_flow_and_prefix(runs: Store) -> None:
    assert runs.count_by_status() == {}
    _seed(runs)
    assert runs.count_by_status() == {
        "running": 3,
        "failed": 1,
        "completed": 2,
        "cancelled": 1,
    }
    assert runs.count_by_status(flow="deploy/v2") == {
        "running": 1,
        "completed": 1,
        "cancelled": 1,
    }
    assert runs.count_by_status(id_prefix="a-") == {"running": 1, "failed": 1, "completed": 1}
    assert runs.count_by_status(flow="nope") == {}


def test_sqlite_answers_the_runs_page_queries_from_indexes(tmp_path: Path) -> None:
    SQLiteStore(tmp_path / "runs.db").close()
    plans = {
        "all": "SELECT * FROM runs ORDER BY created_at DESC, run_id DESC LIMIT 50",
        "status": "SELECT * FROM runs WHERE status = 'failed'"
        " ORDER BY created_at DESC, run_id DESC LIMIT 50",
        "flow": "SELECT * FROM runs WHERE flow = 'f'"
        " ORDER BY created_at DESC, run_id DESC LIMIT 50",
        "both": "SELECT * FROM runs WHERE flow = 'f' AND status = 'failed'"
        " AND (created_at, run_id) < (1.0, 'x') ORDER BY created_at DESC, run_id DESC LIMIT 50",
        "counts": "SELECT status, COUNT(*) FROM runs WHERE flow = 'f' GROUP BY status",
        "prefix": "SELECT status, COUNT(*) FROM runs WHERE run_id >= 'a' AND run_id < 'b'"
        " GROUP BY status",
    }
    with closing(sqlite3.connect(tmp_path / "runs.db")) as db:
        for name, query in plans.items():
            rows = db.execute("EXPLAIN QUERY PLAN " + query).fetchall()
            plan = " ".join(str(row[-1]) for row in rows)
            assert "INDEX" in plan, (name, plan)
            assert "SCAN runs" not in plan.replace("SCAN runs USING", ""), (name, plan)
            if name != "prefix":
                assert "TEMP B-TREE" not in plan, (name, plan)


def test_sqlite_upgrades_a_version_1_database_keeping_its_runs(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for statement in sqlite_module._MIGRATIONS[0]:
            db.execute(statement)
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute(
            "INSERT INTO runs VALUES ('old', 'f/v1', 'running', 's', 1, 1.0, 'null', 1.0, 1.0,"
            " NULL, NULL, NULL)"
        )
    with closing(SQLiteStore(path)) as runs:
        assert _ids(runs.page_runs()) == ["old"]
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM meta").fetchall() == [
            (str(sqlite_module.SCHEMA_VERSION),)
        ]
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"runs_page", "runs_status_page", "runs_flow_page", "runs_flow_status_page"} <= names
    assert "runs_flow" not in names


def test_prefix_upper_bound() -> None:
    assert prefix_upper_bound("a") == "b"
    assert prefix_upper_bound("\U0010ffff") is None
    assert prefix_upper_bound("x\U0010ffff\U0010ffff") == "y"
