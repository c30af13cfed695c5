"""Store.match_run_ids: finding runs by id prefix, on every store (PostgreSQL included)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stepflow.stores import MemoryStore, PostgresStore, SQLiteStore, Store
from stepflow.stores.base import prefix_upper_bound

IDS = ["a", "ab", "ab%", "ab_c", "abc", "abd", "b", "b\U0010ffff", "é1", "é2", "\U0010ffffz"]


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = SQLiteStore(tmp_path / "runs.db")
    else:
        dsn: str = request.getfixturevalue("postgres_dsn")
        made = PostgresStore(dsn, schema=request.getfixturevalue("postgres_schema"))
    for run_id in reversed(IDS):  # inserted out of order: the store sorts
        made.create_run(run_id, "f/v1", "{}", input=None, status="running", wake_at=None, now=1.0)
    yield made
    made.close()


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("", IDS),
        ("a", ["a", "ab", "ab%", "ab_c", "abc", "abd"]),
        ("ab", ["ab", "ab%", "ab_c", "abc", "abd"]),
        ("ab%", ["ab%"]),  # LIKE wildcards are plain characters here
        ("ab_", ["ab_c"]),
        ("abc", ["abc"]),
        ("abe", []),
        ("b", ["b", "b\U0010ffff"]),
        ("é", ["é1", "é2"]),
        ("\U0010ffff", ["\U0010ffffz"]),
        ("A", []),  # case-sensitive, as ids are
    ],
)
def test_match_run_ids_returns_the_ids_with_the_prefix_in_code_point_order(
    store: Store, prefix: str, expected: list[str]
) -> None:
    assert store.match_run_ids(prefix) == expected


def test_match_run_ids_stops_at_the_limit(store: Store) -> None:
    assert store.match_run_ids("ab", limit=2) == ["ab", "ab%"]
    assert store.match_run_ids("", limit=1) == ["a"]
    assert store.match_run_ids("a", limit=0) == []


def test_match_run_ids_reads_only_ids_so_a_corrupt_row_is_still_found(tmp_path: Path) -> None:
    import sqlite3
    from contextlib import closing

    store = SQLiteStore(tmp_path / "runs.db")
    store.create_run("run-1", "f/v1", "{}", input={"a": 1}, status="running", wake_at=1.0, now=1.0)
    with closing(sqlite3.connect(tmp_path / "runs.db")) as db, db:
        db.execute("UPDATE runs SET input = '{not json' WHERE run_id = 'run-1'")
    assert store.match_run_ids("run") == ["run-1"]
    store.close()


def test_sqlite_prefix_search_is_a_range_on_the_primary_key(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "runs.db")
    plan = store._db.execute(
        "EXPLAIN QUERY PLAN SELECT run_id FROM runs WHERE run_id >= ? AND run_id < ?"
        " ORDER BY run_id LIMIT ?",
        ("ab", "ac", 5),
    ).fetchall()
    store.close()
    assert any("USING" in str(row[-1]) and "INDEX" in str(row[-1]) for row in plan), plan


def test_successor_bounds_every_string_with_the_prefix() -> None:
    assert prefix_upper_bound("ab") == "ac"
    assert prefix_upper_bound("a\U0010ffff") == "b"
    assert prefix_upper_bound("\U0010ffff") is None
    assert prefix_upper_bound("") is None
    assert prefix_upper_bound("a\ud7ff") == "a\ue000"
