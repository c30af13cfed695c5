"""PostgreSQL for the tests: a server for the session, a fresh schema for each test.

The server is the one named by ``STEPFLOW_TEST_POSTGRES_DSN``, or a throwaway
cluster started (and stopped) by ``.ci/postgres.sh``, the same script CI uses, so
there is one way to start PostgreSQL. The fixtures live in ``conftest.py``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "postgres.sh"
DSN_VARIABLE = "STEPFLOW_TEST_POSTGRES_DSN"


class PostgresUnavailable(Exception):
    """No PostgreSQL server can be had here (the reason is the message)."""


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    # Tests never install packages: only CI's own call of the script may.
    env = {**os.environ, "STEPFLOW_PG_NO_INSTALL": "1"}
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, check=False
    )


@contextmanager
def server() -> Iterator[str]:
    """Yield the DSN of a PostgreSQL server, starting a throwaway one if needed.

    Raises:
        PostgresUnavailable: psycopg is missing, or no server is configured and no
            server binaries are installed.
        RuntimeError: the binaries are there but the cluster would not start.

    """
    dsn = os.environ.get(DSN_VARIABLE)
    if dsn:
        yield dsn
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable(
            "psycopg is not installed: pip install 'stepflow[postgres]'"
        ) from None
    if shutil.which("bash") is None or _script("bindir").returncode != 0:
        raise PostgresUnavailable(
            "no PostgreSQL server binaries (initdb, pg_ctl) on PATH or in "
            f"/usr/lib/postgresql/*/bin: install PostgreSQL or set {DSN_VARIABLE}"
        )
    # Under /tmp: short enough for a socket path, and reachable by the unprivileged
    # user the script runs the server as when the tests run as root.
    directory = tempfile.mkdtemp(
        prefix="stepflow-pg-", dir="/tmp" if Path("/tmp").is_dir() else None
    )
    try:
        started = _script("start", directory)
        if started.returncode != 0:
            raise RuntimeError(
                f"{SCRIPT} start {directory} failed ({started.returncode}):\n{started.stderr}"
            )
        yield started.stdout.strip()
    finally:
        _script("stop", directory)
        shutil.rmtree(directory, ignore_errors=True)


@contextmanager
def fresh_schema(dsn: str) -> Iterator[str]:
    """Yield the name of a schema no one uses yet; drop it (and all in it) afterwards."""
    import psycopg
    from psycopg import sql

    schema = f"test_{uuid.uuid4().hex[:16]}"
    try:
        yield schema
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
