"""Durable run stores: the :class:`Store` contract, three implementations, and URLs.

* :class:`MemoryStore`: in process memory, for tests and trials.
* :class:`SQLiteStore`: one SQLite file, for one machine.
* :class:`PostgresStore`: PostgreSQL, for workers on several machines
  (``pip install 'stepflow[postgres]'``).

:func:`open_store` opens one from a URL, the form the CLI and the worker take.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote

from stepflow.errors import ConfigurationError
from stepflow.stores._schedules import ScheduleRecord as ScheduleRecord
from stepflow.stores.base import JournalEntry as JournalEntry
from stepflow.stores.base import Lease as Lease
from stepflow.stores.base import LeaseHolder as LeaseHolder
from stepflow.stores.base import PruneResult as PruneResult
from stepflow.stores.base import RunNotes as RunNotes
from stepflow.stores.base import RunRecord as RunRecord
from stepflow.stores.base import RunStatus as RunStatus
from stepflow.stores.base import Save as Save
from stepflow.stores.base import Store as Store
from stepflow.stores.memory import MemoryStore as MemoryStore
from stepflow.stores.postgres import PostgresStore as PostgresStore
from stepflow.stores.sqlite import SQLiteStore as SQLiteStore

__all__ = [
    "DEFAULT_SQLITE_PATH",
    "JournalEntry",
    "Lease",
    "LeaseHolder",
    "MemoryStore",
    "PostgresStore",
    "PruneResult",
    "RunNotes",
    "RunRecord",
    "RunStatus",
    "SQLiteStore",
    "Save",
    "ScheduleRecord",
    "Store",
    "open_store",
]

#: The SQLite file :func:`open_store` opens when given no URL.
DEFAULT_SQLITE_PATH = "stepflow.db"

_ACCEPTED = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite://:memory:, memory://, "
    "or postgresql://user@host/database"
)


def open_store(url: str | None) -> Store:
    """Open the store a URL names.

    ============================================  =======================================
    URL                                           Store
    ============================================  =======================================
    ``None`` or ``""``                            :class:`SQLiteStore` on ``./stepflow.db``
    ``sqlite:///relative/path.db``                :class:`SQLiteStore` on that path
    ``sqlite:////absolute/path.db``               :class:`SQLiteStore` on that path
    ``sqlite://:memory:`` or ``memory://``        :class:`MemoryStore`
    ``postgresql://...`` or ``postgres://...``    :class:`PostgresStore` (a libpq URL)
    ============================================  =======================================

    A SQLite URL takes one option, ``?synchronous=normal`` (or ``off``, ``full``,
    ``extra``; see :class:`SQLiteStore`).

    Raises:
        ConfigurationError: the URL has another form, or an unknown option.
        StoreError: the store cannot be opened.

    >>> open_store("memory://")  # doctest: +ELLIPSIS
    <stepflow.stores.memory.MemoryStore object at ...>

    """
    if not url:
        return SQLiteStore(DEFAULT_SQLITE_PATH)
    if url in ("memory://", "sqlite://:memory:"):
        return MemoryStore()
    scheme, separator, rest = url.partition("://")
    if separator and scheme in ("postgresql", "postgres"):
        return PostgresStore(url)
    if separator and scheme == "sqlite" and rest.startswith("/"):
        path, _, query = rest[1:].partition("?")
        try:
            options = parse_qs(query, keep_blank_values=True, strict_parsing=bool(query))
        except ValueError:
            options = {"": [query]}
        unknown = sorted(set(options) - {"synchronous"})
        if unknown or len(options.get("synchronous", ())) > 1:
            raise ConfigurationError(
                f"unknown or repeated option in SQLite store URL {url!r}: "
                "the only option is ?synchronous=off|normal|full|extra"
            )
        if not path:
            raise ConfigurationError(f"SQLite store URL {url!r} names no file: use {_ACCEPTED}")
        synchronous = options.get("synchronous", ["full"])[0]
        return SQLiteStore(unquote(path), synchronous=synchronous)
    # A URL with credentials is not echoed: only its scheme is shown.
    shown = f"{scheme}://..." if separator and "@" in rest else url
    raise ConfigurationError(f"unsupported store URL {shown!r}: use {_ACCEPTED}")
