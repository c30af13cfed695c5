"""Test configuration: hypothesis profiles.

* ``dev`` (default): 100 examples per property, for a quick local loop.
* ``ci`` (chosen automatically when ``CI`` is set): 200 examples per property.
* ``thorough``: 2,000 examples, for a long run before a release.
* ``noshrink``: 200 examples, a failure reported as found (not shrunk), for debugging.

Pick one explicitly with ``STEPFLOW_HYPOTHESIS_PROFILE=thorough pytest``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from postgres import PostgresUnavailable, fresh_schema, server

from stepflow.stores import MemoryStore, PostgresStore, SQLiteStore, Store

_common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("dev", max_examples=100, **_common)
settings.register_profile("ci", max_examples=200, print_blob=True, **_common)
settings.register_profile("thorough", max_examples=2000, **_common)
# For finding a failure fast while debugging: report the first failing example unshrunk.
settings.register_profile(
    "noshrink", max_examples=200, phases=[Phase.explicit, Phase.generate], **_common
)

_default = "ci" if os.environ.get("CI") else "dev"
settings.load_profile(os.environ.get("STEPFLOW_HYPOTHESIS_PROFILE", _default))


# PostgreSQL: one server for the session, a fresh schema for each test (see postgres.py).


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """The DSN of a PostgreSQL server for the tests.

    ``STEPFLOW_TEST_POSTGRES_DSN`` if set, else a throwaway cluster started by
    ``.ci/postgres.sh``. With no PostgreSQL to be had, the tests that need it are
    skipped, except in CI (``CI`` set), where they fail: they are never skipped there.
    """
    try:
        with server() as dsn:
            yield dsn
    except PostgresUnavailable as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL tests are never skipped in CI: {exc}")
        pytest.skip(f"no PostgreSQL: {exc}")


@pytest.fixture
def postgres_schema(postgres_dsn: str) -> Iterator[str]:
    """A fresh PostgreSQL schema name for one test, dropped (with its tables) afterwards."""
    with fresh_schema(postgres_dsn) as schema:
        yield schema


# Runs on every backend: a factory of store objects on one fresh database of each kind
# (the memory store is one object). test_worker has a richer one of its own.


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """A factory of store objects on one fresh database of each kind (closed afterwards)."""
    opened: list[Store] = []
    schema: list[str] = []

    def make() -> Store:
        if request.param == "memory":
            store: Store = opened[0] if opened else MemoryStore()
        elif request.param == "sqlite":
            store = SQLiteStore(tmp_path / "runs.db")
        else:
            if not schema:
                schema.append(request.getfixturevalue("postgres_schema"))
            store = PostgresStore(request.getfixturevalue("postgres_dsn"), schema=schema[0])
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(make_store: Callable[[], Store]) -> Store:
    return make_store()
