"""The Store contract, run against every store on a real database; and open_store's URLs.

Every test taking ``store`` runs four times: on a MemoryStore, on a SQLite file in
``tmp_path`` (twice: also as on SQLite before 3.35, which has no ``RETURNING``), and
on a fresh schema of a real PostgreSQL server (see ``postgres.py``). Tests taking
``durable`` run on SQLite and PostgreSQL only.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import attrs
import pytest

import stepflow.stores
from stepflow.errors import (
    ConfigurationError,
    RunExistsError,
    StaleWriteError,
    StoreError,
    UnknownRunError,
    UnreadableRunError,
)
from stepflow.stores import (
    JournalEntry,
    LeaseHolder,
    MemoryStore,
    PostgresStore,
    RunRecord,
    Save,
    SQLiteStore,
    Store,
    open_store,
)
from stepflow.stores import postgres as postgres_module
from stepflow.stores import sqlite as sqlite_module


@attrs.define
class Backend:
    """One fresh database, and how to reach it."""

    kind: str
    make: Callable[[], Store]
    #: Run SQL on the database directly, outside any store (not for memory).
    raw: Callable[[str], list[tuple[Any, ...]]]
    opened: list[Store] = attrs.Factory(list)

    def open(self) -> Store:
        """Open another store object on the database (closed after the test)."""
        store = self.make()
        self.opened.append(store)
        return store


def _backend(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if kind == "memory":
        shared = MemoryStore()

        def no_sql(query: str) -> list[tuple[Any, ...]]:
            raise AssertionError("a memory store has no SQL")

        backend = Backend(kind, lambda: shared, no_sql)
    elif kind in ("sqlite", "sqlite-no-returning"):
        path = tmp_path / "runs.db"
        if kind == "sqlite-no-returning":  # SQLite < 3.35: saves read, check, then write
            request.getfixturevalue("monkeypatch").setattr(sqlite_module, "_HAS_RETURNING", False)

        def sqlite_raw(query: str) -> list[tuple[Any, ...]]:
            with closing(sqlite3.connect(path)) as db, db:
                return db.execute(query).fetchall()

        backend = Backend(kind, lambda: SQLiteStore(path), sqlite_raw)
    else:
        import psycopg
        from psycopg import sql

        dsn: str = request.getfixturevalue("postgres_dsn")
        schema: str = request.getfixturevalue("postgres_schema")

        def postgres_raw(query: str) -> list[tuple[Any, ...]]:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
                cur = conn.execute(query.encode())
                return cur.fetchall() if cur.description else []

        backend = Backend(kind, lambda: PostgresStore(dsn, schema=schema), postgres_raw)
    yield backend
    for store in backend.opened:
        store.close()


@pytest.fixture(params=["memory", "sqlite", "sqlite-no-returning", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _backend(request.param, request, tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    yield from _backend(request.param, request, tmp_path)


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


def create(
    store: Store,
    run_id: str = "r1",
    *,
    flow: str = "deploy/v1",
    status: Any = "running",
    wake_at: float | None = 10.0,
    now: float = 1.0,
    input: Any = None,
) -> RunRecord:
    return store.create_run(
        run_id, flow, f"state of {run_id}", input=input, status=status, wake_at=wake_at, now=now
    )


def save_of(
    run: RunRecord,
    *,
    token: str | None = None,
    version: int | None = None,
    state: str = "next",
    status: Any = "running",
    wake_at: float | None = 50.0,
    batch: str | None = None,
    release: bool = False,
) -> Save:
    return Save(
        run_id=run.run_id,
        expected_version=run.version if version is None else version,
        lease_token=token,
        state=state,
        status=status,
        wake_at=wake_at,
        batch=batch,
        release=release,
    )


def claim(store: Store, *, now: float = 20.0, limit: int = 10, owner: str = "w1", **kw: Any):
    return store.claim_due(now=now, limit=limit, owner=owner, lease_seconds=30.0, **kw)


# -- create and load ------------------------------------------------------------------------


def test_a_store_implements_the_protocol(store: Store) -> None:
    assert isinstance(store, Store)


def test_create_returns_the_run_at_version_1_and_load_reads_it_back(store: Store) -> None:
    document = {"env": "prod", "hosts": ["a", "b"], "n": 3, "ok": True, "none": None}
    run = create(store, input=document, wake_at=5.0, now=2.0)
    assert run == RunRecord(
        run_id="r1",
        flow="deploy/v1",
        status="running",
        state="state of r1",
        version=1,
        wake_at=5.0,
        input=document,
        created_at=2.0,
        updated_at=2.0,
    )
    assert store.load("r1") == run
    assert store.history("r1") == []


def test_a_run_may_be_created_finished_and_never_due(store: Store) -> None:
    run = create(store, status="completed", wake_at=None)
    assert (run.status, run.wake_at) == ("completed", None)
    assert store.load("r1").wake_at is None


def test_create_refuses_a_taken_id_and_keeps_the_first_run(store: Store) -> None:
    first = create(store, input={"first": True})
    with pytest.raises(RunExistsError, match=r"'r1' already exists") as caught:
        create(store, flow="other/v1", input={"first": False})
    assert caught.value.run_id == "r1"
    assert store.load("r1") == first


def test_unknown_runs_raise_unknown_run_error(store: Store) -> None:
    with pytest.raises(UnknownRunError, match="'nope'") as caught:
        store.load("nope")
    assert caught.value.run_id == "nope"
    assert isinstance(caught.value, LookupError)
    with pytest.raises(UnknownRunError):
        store.history("nope")
    with pytest.raises(UnknownRunError):
        store.save(Save("nope", 1, None, "s", "running", None), now=2.0)


def test_input_must_be_json(store: Store) -> None:
    with pytest.raises(TypeError):
        create(store, input={"when": object()})
    with pytest.raises(ValueError, match="JSON"):
        create(store, input=float("nan"))
    assert store.count() == 0


# -- compare-and-swap saves -----------------------------------------------------------------


def test_save_bumps_the_version_and_journals_the_batch(store: Store) -> None:
    run = create(store)
    saved = store.save(save_of(run, state="s2", wake_at=30.0, batch='["b2"]'), now=3.0)
    assert (saved.version, saved.state, saved.wake_at, saved.updated_at) == (2, "s2", 30.0, 3.0)
    assert saved.created_at == run.created_at
    assert store.load("r1") == saved
    assert store.history("r1") == [JournalEntry("r1", 2, 3.0, '["b2"]')]


def test_a_save_without_a_batch_writes_no_journal_entry(store: Store) -> None:
    run = create(store)
    saved = store.save(save_of(run, status="completed", wake_at=None), now=3.0)
    assert (saved.version, saved.status, saved.wake_at) == (2, "completed", None)
    assert store.history("r1") == []


@pytest.mark.parametrize("stale_version", [0, 1, 3, 7])
def test_a_save_naming_another_version_is_stale_and_changes_nothing(
    store: Store, stale_version: int
) -> None:
    run = store.save(save_of(create(store), batch="b2"), now=2.0)  # now at version 2
    with pytest.raises(StaleWriteError) as caught:
        store.save(save_of(run, version=stale_version, state="lost", batch="b?"), now=3.0)
    assert caught.value.run_id == "r1"
    message = str(caught.value)
    assert f"expected version {stale_version}" in message
    assert "version 2" in message
    assert store.load("r1") == run
    assert [entry.seq for entry in store.history("r1")] == [2]


def test_journal_seq_is_the_new_version_and_history_is_append_only(store: Store) -> None:
    run = create(store)
    entries = []
    for step in range(2, 6):
        run = store.save(save_of(run, batch=f"batch {step}"), now=float(step))
        entries.append(JournalEntry("r1", step, float(step), f"batch {step}"))
        assert store.history("r1") == entries  # earlier entries never change
    run = store.save(save_of(run), now=9.0)  # no batch: no entry, version still moves
    assert run.version == 6
    assert store.history("r1") == entries
    store.save(save_of(run, batch="batch 7"), now=10.0)
    assert [entry.seq for entry in store.history("r1")] == [2, 3, 4, 5, 7]


def test_history_belongs_to_one_run(store: Store) -> None:
    one, two = create(store, "one"), create(store, "two")
    store.save(save_of(one, batch="for one"), now=2.0)
    store.save(save_of(two, batch="for two"), now=2.0)
    assert [entry.batch for entry in store.history("one")] == ["for one"]
    assert [entry.batch for entry in store.history("two")] == ["for two"]


# -- leases ---------------------------------------------------------------------------------


def test_claim_due_leases_only_due_running_runs_earliest_first(store: Store) -> None:
    create(store, "late", wake_at=15.0)
    create(store, "early", wake_at=5.0)
    create(store, "exactly-now", wake_at=20.0)
    create(store, "future", wake_at=21.0)
    create(store, "never", wake_at=None)
    create(store, "done", status="completed", wake_at=1.0)
    create(store, "failed", status="failed", wake_at=1.0)
    create(store, "cancelled", status="cancelled", wake_at=1.0)
    leases = claim(store, now=20.0, owner="w1")
    assert [lease.run.run_id for lease in leases] == ["early", "late", "exactly-now"]
    for lease in leases:
        assert lease.expires_at == 50.0
        assert lease.run.version == 1  # a claim is not a save
        assert (lease.run.lease_owner, lease.run.lease_token) == ("w1", lease.token)
        assert lease.run.lease_expires_at == 50.0
        assert store.load(lease.run.run_id) == lease.run
    assert len({lease.token for lease in leases}) == 3


def test_claim_due_respects_limit_and_takes_the_rest_later(store: Store) -> None:
    for index in range(5):
        create(store, f"r{index}", wake_at=float(index))
    assert claim(store, limit=0) == []
    first = claim(store, limit=2)
    assert [lease.run.run_id for lease in first] == ["r0", "r1"]
    second = claim(store, limit=10, owner="w2")
    assert [lease.run.run_id for lease in second] == ["r2", "r3", "r4"]
    assert claim(store, owner="w3") == []


def test_claim_due_filters_by_flow(store: Store) -> None:
    create(store, "a", flow="a/v1")
    create(store, "b", flow="b/v1")
    create(store, "c", flow="c/v1")
    assert claim(store, flows=[]) == []
    leases = claim(store, flows={"a/v1", "c/v1", "unknown/v1"})
    assert sorted(lease.run.run_id for lease in leases) == ["a", "c"]
    assert [lease.run.run_id for lease in claim(store)] == ["b"]


def test_a_live_lease_is_not_claimed_again_an_expired_one_is(store: Store) -> None:
    create(store, wake_at=10.0)
    (first,) = claim(store, now=20.0, owner="w1")  # expires at 50
    assert claim(store, now=49.9, owner="w2") == []
    (second,) = claim(store, now=50.0, owner="w2")
    assert second.token != first.token
    assert (second.run.lease_owner, second.run.lease_expires_at) == ("w2", 80.0)


def test_a_save_under_a_lost_lease_is_stale(store: Store) -> None:
    create(store)
    (first,) = claim(store, now=20.0, owner="w1")
    (second,) = claim(store, now=60.0, owner="w2")  # w1's lease expired; w2 took the run
    with pytest.raises(StaleWriteError, match=r"lease .* was lost \(worker 'w2' holds it now\)"):
        store.save(save_of(first.run, token=first.token, batch="w1"), now=61.0)
    assert store.load("r1") == second.run
    assert store.history("r1") == []
    saved = store.save(save_of(second.run, token=second.token, batch="w2"), now=62.0)
    assert saved.version == 2
    assert saved.lease_token == second.token  # saving keeps the lease unless released


def test_the_lease_holder_may_save_past_expiry_until_someone_else_claims(store: Store) -> None:
    create(store)
    (lease,) = claim(store, now=20.0)
    saved = store.save(save_of(lease.run, token=lease.token), now=70.0)
    assert (saved.version, saved.lease_token) == (2, lease.token)


def test_a_save_with_a_made_up_token_is_stale(store: Store) -> None:
    run = create(store)
    with pytest.raises(StaleWriteError, match="was lost"):
        store.save(save_of(run, token="not-a-lease"), now=2.0)
    assert store.load("r1") == run


def test_a_save_without_a_lease_fails_while_another_holds_a_live_one(store: Store) -> None:
    create(store)
    (lease,) = claim(store, now=20.0, owner="w1")
    with pytest.raises(StaleWriteError, match=r"without a lease: worker 'w1' holds"):
        store.save(save_of(lease.run, status="cancelled", wake_at=None), now=49.0)
    assert store.load("r1") == lease.run
    # Once the lease has expired, the same save goes through and clears the lease.
    saved = store.save(save_of(lease.run, status="cancelled", wake_at=None), now=50.0)
    assert (saved.version, saved.status, saved.lease_token, saved.lease_owner) == (
        2,
        "cancelled",
        None,
        None,
    )
    with pytest.raises(StaleWriteError):
        store.save(save_of(saved, token=lease.token), now=51.0)


def test_a_lease_with_no_expiry_does_not_stop_a_save_without_a_lease(durable: Backend) -> None:
    # The stores write the lease's token and expiry together; a row holding only a
    # token (written by hand) still follows check_save, in save and in save_many.
    store = durable.open()
    for run_id in ("a", "b"):
        create(store, run_id)
    durable.raw("UPDATE runs SET lease_owner = 'w1', lease_token = 't1'")
    saved = store.save(save_of(store.load("a"), batch="cancel"), now=2.0)
    (many,) = store.save_many([save_of(store.load("b"), batch="cancel")], now=2.0)
    assert isinstance(many, RunRecord)
    for run in (saved, many):
        assert (run.version, run.lease_owner, run.lease_token) == (2, None, None)
        assert store.history(run.run_id) == [JournalEntry(run.run_id, 2, 2.0, "cancel")]


def test_save_many_of_many_runs_reports_each_refusal(store: Store) -> None:
    runs = [create(store, f"r{i:03d}") for i in range(60)]
    leases = {lease.run.run_id: lease for lease in claim(store, now=20.0, limit=60)}
    saves = [
        save_of(
            run,
            token=leases[run.run_id].token if i % 3 else "lost",
            version=run.version + 1 if i % 5 == 0 else None,
            batch=f"b{i}" if i % 2 else None,
            release=i % 4 == 0,
        )
        for i, run in enumerate(runs)
    ]
    results = store.save_many(
        [*reversed(saves), Save("ghost", 1, None, "s", "running", None)], now=21.0
    )
    assert isinstance(results.pop(), UnknownRunError)
    for i, (run, result) in enumerate(zip(runs, reversed(results), strict=True)):
        if i % 5 == 0:
            assert isinstance(result, StaleWriteError)
            assert "expected version 2" in str(result)
            assert store.load(run.run_id) == leases[run.run_id].run
        elif i % 3 == 0:
            assert isinstance(result, StaleWriteError)
            assert "'lost' was lost" in str(result)
        else:
            assert isinstance(result, RunRecord)
            assert store.load(run.run_id) == result
            assert result.version == 2
            assert result.lease_token == (None if i % 4 == 0 else leases[run.run_id].token)
            expected = [JournalEntry(run.run_id, 2, 21.0, f"b{i}")] if i % 2 else []
            assert store.history(run.run_id) == expected
            continue
        assert store.history(run.run_id) == []


def test_a_save_without_a_lease_succeeds_when_the_run_is_not_leased(store: Store) -> None:
    run = create(store)
    saved = store.save(save_of(run, batch="resume"), now=2.0)
    assert saved.version == 2
    assert store.history("r1") == [JournalEntry("r1", 2, 2.0, "resume")]


def test_save_with_release_gives_up_the_lease(store: Store) -> None:
    create(store)
    (lease,) = claim(store, now=20.0)
    saved = store.save(save_of(lease.run, token=lease.token, wake_at=20.0, release=True), now=21)
    assert (saved.lease_owner, saved.lease_token, saved.lease_expires_at) == (None, None, None)
    (again,) = claim(store, now=21.0, owner="w2")  # claimable at once
    assert again.run.version == 2
    with pytest.raises(StaleWriteError):
        store.save(save_of(saved, token=lease.token), now=22.0)


def test_release_frees_the_run_and_ignores_lost_leases(store: Store) -> None:
    create(store)
    (lease,) = claim(store, now=20.0)
    store.release("r1", "someone-else")
    store.release("unknown-run", lease.token)
    assert store.load("r1").lease_token == lease.token
    store.release("r1", lease.token)
    released = store.load("r1")
    assert (released.lease_owner, released.lease_token, released.lease_expires_at) == (
        None,
        None,
        None,
    )
    store.release("r1", lease.token)  # again: a no-op
    with pytest.raises(StaleWriteError, match="it was released"):
        store.save(save_of(lease.run, token=lease.token), now=21.0)
    assert [lease.run.run_id for lease in claim(store, now=21.0, owner="w2")] == ["r1"]


def test_renew_extends_only_the_leases_still_held(store: Store) -> None:
    create(store, "a-replaced")
    create(store, "b-held")
    replaced, held = claim(store, now=20.0, owner="w1")  # both expire at 50
    (taken,) = claim(store, now=60.0, owner="w2", limit=1)  # w2 takes "a-replaced"
    assert taken.run.run_id == "a-replaced"
    store.release("a-replaced", taken.token)
    # w1 still holds "b-held" (expired, but nobody claimed it); its other lease is gone.
    renewed = store.renew(
        [("a-replaced", replaced.token), ("b-held", held.token)], now=61.0, lease_seconds=30
    )
    assert renewed == {"b-held"}
    assert store.load("b-held").lease_expires_at == 91.0
    assert store.load("a-replaced").lease_token is None
    # Before 91, only the released run is claimable.
    assert [lease.run.run_id for lease in claim(store, now=90.0, owner="w3")] == ["a-replaced"]
    assert store.renew([], now=61.0, lease_seconds=30) == set()
    assert store.renew([("missing", "token")], now=61.0, lease_seconds=30) == set()


def test_a_renewed_lease_is_not_claimed_at_its_old_expiry(store: Store) -> None:
    create(store)
    (lease,) = claim(store, now=20.0)  # expires at 50
    assert store.renew([("r1", lease.token)], now=40.0, lease_seconds=30.0) == {"r1"}
    assert claim(store, now=60.0, owner="w2") == []
    assert [other.run.run_id for other in claim(store, now=70.0, owner="w2")] == ["r1"]


# -- save_many ------------------------------------------------------------------------------


def test_save_many_applies_the_good_saves_and_reports_the_stale_one(store: Store) -> None:
    for run_id in ("a", "b", "c"):
        create(store, run_id)
    leases = {lease.run.run_id: lease for lease in claim(store, now=20.0)}
    b_before = store.load("b")
    saves = [
        save_of(leases["a"].run, token=leases["a"].token, batch="a2"),
        save_of(leases["b"].run, token=leases["b"].token, version=7, batch="b?"),
        save_of(leases["c"].run, token=leases["c"].token, batch="c2", release=True),
        Save("ghost", 1, None, "s", "running", None, batch="g"),
    ]
    a, b, c, ghost = store.save_many(saves, now=21.0)
    assert isinstance(a, RunRecord)
    assert isinstance(c, RunRecord)
    assert (a.version, c.version, c.lease_token) == (2, 2, None)
    assert isinstance(b, StaleWriteError)
    assert b.run_id == "b"
    assert isinstance(ghost, UnknownRunError)
    assert store.load("a") == a
    assert store.load("c") == c
    assert store.load("b") == b_before
    assert store.history("a") == [JournalEntry("a", 2, 21.0, "a2")]
    assert store.history("b") == []
    assert store.history("c") == [JournalEntry("c", 2, 21.0, "c2")]


def test_save_many_sees_its_own_earlier_saves(store: Store) -> None:
    run = create(store)
    first, second = store.save_many([save_of(run, batch="1"), save_of(run, batch="2")], now=2.0)
    assert isinstance(first, RunRecord)
    assert first.version == 2
    assert isinstance(second, StaleWriteError)
    assert store.save_many([], now=3.0) == []
    assert [entry.batch for entry in store.history("r1")] == ["1"]


# -- listing and scheduling -----------------------------------------------------------------


def test_runs_and_count_filter_by_status_and_flow_oldest_first(store: Store) -> None:
    create(store, "b-old", flow="b/v1", now=1.0)
    create(store, "a-new", flow="a/v1", now=3.0)
    create(store, "a-mid", flow="a/v1", now=2.0)
    create(store, "tie-2", flow="b/v1", now=2.0, status="completed", wake_at=None)
    create(store, "tie-1", flow="a/v1", now=2.0, status="failed", wake_at=None)
    ids = lambda runs: [run.run_id for run in runs]  # noqa: E731
    assert ids(store.runs()) == ["b-old", "a-mid", "tie-1", "tie-2", "a-new"]
    assert ids(store.runs(limit=2)) == ["b-old", "a-mid"]
    assert ids(store.runs(limit=0)) == []
    assert ids(store.runs(flow="a/v1")) == ["a-mid", "tie-1", "a-new"]
    assert ids(store.runs(status="running")) == ["b-old", "a-mid", "a-new"]
    assert ids(store.runs(status="running", flow="b/v1")) == ["b-old"]
    assert ids(store.runs(status="cancelled")) == []
    assert store.count() == 5
    assert store.count(flow="a/v1") == 3
    assert store.count(status="completed") == 1
    assert store.count(status="running", flow="a/v1") == 2
    assert store.count(flow="none/v1") == 0


def test_next_due_is_the_earliest_time_a_running_run_is_claimable(store: Store) -> None:
    assert store.next_due() is None
    create(store, "done", status="completed", wake_at=1.0)
    create(store, "never", wake_at=None)
    assert store.next_due() is None
    create(store, "a", flow="a/v1", wake_at=30.0)
    create(store, "b", flow="b/v1", wake_at=10.0)
    assert store.next_due() == 10.0
    assert store.next_due(flows=["a/v1"]) == 30.0
    assert store.next_due(flows=[]) is None
    (lease,) = claim(store, now=10.0, flows=["b/v1"])  # b leased until 40
    assert store.next_due() == 30.0
    assert store.next_due(flows=["b/v1"]) == 40.0
    store.save(save_of(lease.run, token=lease.token, wake_at=45.0), now=11.0)
    assert store.next_due(flows=["b/v1"]) == 45.0  # later of wake_at and the lease
    store.release("b", lease.token)
    assert store.next_due(flows=["b/v1"]) == 45.0


# -- parked runs, lease holders, expired leases ---------------------------------------------


def test_park_sets_a_run_aside_with_its_reason_and_releases_the_lease(store: Store) -> None:
    run = create(store)
    (lease,) = claim(store)
    assert store.park("r1", lease.token, until=80.0, reason="cannot read it")
    parked = store.load("r1")
    assert (parked.status, parked.wake_at, parked.parked_reason) == (
        "parked",
        80.0,
        "cannot read it",
    )
    assert (parked.lease_owner, parked.lease_token, parked.lease_expires_at) == (None, None, None)
    # Neither the state, nor the version, nor the journal moved.
    assert (parked.state, parked.version) == (run.state, run.version)
    assert store.history("r1") == []
    assert [r.run_id for r in store.runs(status="parked")] == ["r1"]
    assert store.count(status="parked") == 1
    assert store.count(status="running") == 0


def test_park_under_a_lost_lease_does_nothing(store: Store) -> None:
    create(store)
    (lease,) = claim(store)
    store.release("r1", lease.token)
    assert not store.park("r1", lease.token, until=80.0, reason="late")
    assert store.load("r1").status == "running"


def test_a_parked_run_is_claimed_again_at_its_time_after_the_running_ones(
    store: Store,
) -> None:
    create(store, "a", wake_at=10.0)
    create(store, "p", wake_at=5.0)
    (lease,) = claim(store, limit=1, now=6.0)
    assert lease.run.run_id == "p"
    store.park("p", lease.token, until=15.0, reason="bad row")
    assert [x.run.run_id for x in claim(store, now=14.0)] == ["a"]
    (again,) = claim(store, now=15.0)
    assert (again.run.run_id, again.run.status, again.run.parked_reason) == (
        "p",
        "parked",
        "bad row",
    )
    # The next save by a worker that can read it makes it running again, unmarked.
    saved = store.save(save_of(again.run, token=again.token, batch="b"), now=16.0)
    assert (saved.status, saved.parked_reason, saved.version) == ("running", None, 2)
    assert store.load("p").parked_reason is None


def test_a_parked_run_is_claimed_only_when_running_ones_leave_room(store: Store) -> None:
    create(store, "p", wake_at=1.0)
    (lease,) = claim(store, now=2.0)
    store.park("p", lease.token, until=3.0, reason="x")
    create(store, "r", wake_at=4.0)
    assert [x.run.run_id for x in claim(store, now=5.0, limit=1)] == ["r"]
    assert [x.run.run_id for x in claim(store, now=5.0, limit=1)] == ["p"]


def test_lease_holders_counts_live_leases_on_due_runs_by_owner(store: Store) -> None:
    for n in range(3):
        create(store, f"r{n}", wake_at=10.0)
    create(store, "later", wake_at=100.0)
    claim(store, now=20.0, limit=2, owner="w1")
    claim(store, now=21.0, limit=1, owner="w2")
    assert store.lease_holders(now=22.0) == [
        LeaseHolder("w1", 2, 50.0),
        LeaseHolder("w2", 1, 51.0),
    ]
    assert store.lease_holders(now=22.0, flows=["other/v1"]) == []
    assert store.lease_holders(now=50.5) == [LeaseHolder("w2", 1, 51.0)]  # w1's expired


def test_expire_leases_frees_one_owners_runs_at_once_and_fences_it(store: Store) -> None:
    for n in range(3):
        create(store, f"r{n}", wake_at=10.0)
    dead = claim(store, now=20.0, limit=2, owner="gone")
    claim(store, now=20.0, limit=1, owner="alive")
    assert claim(store, now=21.0) == []
    assert store.expire_leases("gone", now=21.0) == 2
    assert store.expire_leases("gone", now=21.0) == 0
    taken = claim(store, now=21.0, owner="back")
    assert sorted(x.run.run_id for x in taken) == sorted(x.run.run_id for x in dead)
    assert {x.taken_from for x in taken} == {"gone"}  # a takeover, and from whom
    assert {x.taken_from for x in dead} == {None}  # fresh runs
    # The old holder's token no longer saves anything.
    with pytest.raises(StaleWriteError):
        store.save(save_of(dead[0].run, token=dead[0].token), now=22.0)


# -- unreadable rows ------------------------------------------------------------------------


def test_a_run_whose_input_is_not_json_is_listed_and_claimed_as_unreadable(
    durable: Backend,
) -> None:
    store = durable.open()
    create(store, "good", input={"n": 1})
    create(store, "bad", input={"n": 2})
    if durable.kind == "postgres":  # jsonb cannot hold bad JSON: corrupt the state instead
        durable.raw("UPDATE runs SET state = '{not json' WHERE run_id = 'bad'")
        assert store.load("bad").unreadable is None
        return
    durable.raw("UPDATE runs SET input = '{not json' WHERE run_id = 'bad'")
    bad = store.load("bad")
    assert isinstance(bad.unreadable, UnreadableRunError)
    assert isinstance(bad.unreadable, StoreError)
    assert (bad.unreadable.run_id, bad.unreadable.column) == ("bad", "input")
    assert bad.input is None
    assert "not valid JSON" in str(bad.unreadable)
    listed = {r.run_id: r.unreadable for r in store.runs()}
    assert listed["good"] is None
    assert listed["bad"] is not None
    assert {x.run.run_id: x.run.unreadable is None for x in claim(store)} == {
        "bad": False,
        "good": True,
    }


def test_sqlite_text_that_is_not_utf8_marks_only_its_run_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with closing(SQLiteStore(path)) as store:
        create(store, "good")
        create(store, "bad")
        (lease,) = claim(store, limit=1)
        store.save(save_of(lease.run, token=lease.token, batch="entry", release=True), now=21.0)
        with closing(sqlite3.connect(path)) as db, db:
            db.execute("UPDATE runs SET state = CAST(x'ff00fe' AS TEXT) WHERE run_id = 'bad'")
            db.execute("UPDATE journal SET batch = CAST(x'c3' AS TEXT) WHERE run_id = 'bad'")
        bad = store.load("bad")
        assert bad.unreadable is not None
        assert bad.unreadable.column == "state"
        assert bad.unreadable.reason == "is not valid UTF-8 text"
        assert store.load("good").unreadable is None
        assert {r.run_id: r.unreadable is None for r in store.runs()} == {
            "bad": False,
            "good": True,
        }
        leases = {x.run.run_id: x for x in claim(store, now=60.0)}
        assert leases["good"].run.unreadable is None
        claimed = leases["bad"]
        assert claimed.run.unreadable is not None
        with pytest.raises(UnreadableRunError, match=r"journal entry 2 is not valid UTF-8"):
            store.history("bad")
        # Parking it keeps its bytes as they are.
        assert store.park("bad", claimed.token, until=99.0, reason=str(claimed.run.unreadable))
        with closing(sqlite3.connect(path)) as db:
            db.text_factory = bytes
            assert db.execute("SELECT state FROM runs WHERE run_id = 'bad'").fetchone() == (
                b"\xff\x00\xfe",
            )


def test_a_database_of_schema_version_2_is_upgraded_with_its_runs(durable: Backend) -> None:
    # Version 2 (the console's indexes) had no parked_reason column; version 3 adds it.
    store = durable.open()
    create(store, "old")
    store.close()
    durable.raw("ALTER TABLE runs DROP COLUMN parked_reason")
    durable.raw("DROP TABLE schedules")  # version 4's
    # And none of the later steps' columns (see test_store_retention).
    durable.raw("DROP INDEX runs_retention")
    for column in ("progress", "progress_at", "journal_pruned_seq", "journal_pruned_at"):
        durable.raw(f"ALTER TABLE runs DROP COLUMN {column}")
    durable.raw("ALTER TABLE runs DROP COLUMN woken_at")  # version 6's
    durable.raw("DROP TABLE inbox")  # version 7's
    durable.raw("ALTER TABLE runs DROP COLUMN inbox")
    durable.raw("ALTER TABLE runs DROP COLUMN deadline_at")  # version 8's
    durable.raw("DROP INDEX runs_parent")  # version 9's child runs
    durable.raw("ALTER TABLE runs DROP COLUMN parent_run_id")
    durable.raw("ALTER TABLE runs DROP COLUMN parent_command")
    durable.raw("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    again = durable.open()
    assert _schema_version(durable) == _module(durable).SCHEMA_VERSION
    assert again.load("old").parked_reason is None
    (lease,) = claim(again)
    assert again.park("old", lease.token, until=30.0, reason="why")
    assert again.load("old").parked_reason == "why"


# -- durable stores: schema, reopening, integrity -------------------------------------------


def _schema_version(durable: Backend) -> int:
    ((value,),) = durable.raw("SELECT value FROM meta WHERE key = 'schema_version'")
    return int(value)


def _module(durable: Backend) -> Any:
    return sqlite_module if durable.kind == "sqlite" else postgres_module


def test_the_schema_version_is_recorded(durable: Backend) -> None:
    durable.open()
    # 3: parked runs; 4: schedules; 5: retention and progress; 6: pending wakes;
    # 7: events sent to runs; 8: run deadlines; 9: child runs.
    assert _schema_version(durable) == _module(durable).SCHEMA_VERSION == 9


def test_reopening_a_database_keeps_its_runs(durable: Backend) -> None:
    first = durable.open()
    run = first.save(save_of(create(first), batch="b2"), now=2.0)
    first.close()
    again = durable.open()
    assert again.load("r1") == run
    assert again.history("r1") == [JournalEntry("r1", 2, 2.0, "b2")]
    assert _schema_version(durable) == _module(durable).SCHEMA_VERSION


def test_a_database_with_a_newer_schema_is_refused(durable: Backend) -> None:
    durable.open().close()
    durable.raw("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match=r"schema version 99.* upgrade stepflow"):
        durable.open()


def test_several_stores_on_one_database_see_each_others_writes(durable: Backend) -> None:
    one, two = durable.open(), durable.open()
    run = create(one)
    assert two.load("r1") == run
    (lease,) = claim(two, now=20.0)
    with pytest.raises(StaleWriteError):
        one.save(save_of(run), now=21.0)
    assert one.save(save_of(run, token=lease.token), now=21.0).version == 2


def test_sqlite_integrity_check_is_ok_after_use(tmp_path: Path) -> None:
    with closing(SQLiteStore(tmp_path / "runs.db")) as store:
        run = create(store)
        (lease,) = claim(store)
        store.save(save_of(run, token=lease.token, batch="b", release=True), now=21.0)
        assert store.integrity_check() == "ok"


def test_sqlite_uses_wal_and_the_synchronous_level_asked_for(tmp_path: Path) -> None:
    with closing(SQLiteStore(tmp_path / "runs.db", synchronous="NORMAL")) as store:
        assert store.synchronous == "normal"
    with closing(sqlite3.connect(tmp_path / "runs.db")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with pytest.raises(ConfigurationError, match=r"'sometimes'.*off, normal, full, extra"):
        SQLiteStore(tmp_path / "runs.db", synchronous="sometimes")


def test_sqlite_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are not the tables you are looking for" * 100)
    with pytest.raises(StoreError, match=r"notes\.txt"):
        SQLiteStore(path)


def test_sqlite_upgrades_a_database_from_version_0(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    with closing(SQLiteStore(path)) as store:
        create(store)
        assert store.count() == 1
    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT value FROM meta").fetchall() == [
            (str(sqlite_module.SCHEMA_VERSION),)
        ]


# -- concurrency ----------------------------------------------------------------------------


def test_concurrent_claimers_never_get_the_same_run(durable: Backend) -> None:
    setup = durable.open()
    runs = [f"run-{index:03}" for index in range(120)]
    for index, run_id in enumerate(runs):
        create(setup, run_id, wake_at=float(index % 7))
    workers = [durable.open() for _ in range(6)]
    start = threading.Barrier(len(workers))

    def work(worker: int) -> list[str]:
        store, claimed = workers[worker], []
        start.wait()
        while leases := store.claim_due(now=20.0, limit=3, owner=f"w{worker}", lease_seconds=60.0):
            claimed += [lease.run.run_id for lease in leases]
            for lease in leases:  # the holder's save goes through: nobody else has it
                store.save(save_of(lease.run, token=lease.token, release=True), now=20.0)
        return claimed

    with ThreadPoolExecutor(len(workers)) as pool:
        claimed = [run_id for got in pool.map(work, range(len(workers))) for run_id in got]
    # Saved runs were released with wake_at 50: each run was claimed exactly once.
    assert sorted(claimed) == runs
    assert setup.count() == len(runs)
    assert all(run.version == 2 for run in setup.runs())


def test_concurrent_first_opens_create_the_schema_once(durable: Backend) -> None:
    start = threading.Barrier(6)

    def open_one(_: int) -> Store:
        start.wait()
        return durable.open()

    with ThreadPoolExecutor(6) as pool:
        stores = list(pool.map(open_one, range(6)))
    create(stores[0])
    assert all(store.count() == 1 for store in stores)
    assert _schema_version(durable) == _module(durable).SCHEMA_VERSION


# -- PostgreSQL specifics -------------------------------------------------------------------


def test_postgres_reconnects_after_losing_its_connection(
    postgres_dsn: str, postgres_schema: str
) -> None:
    import psycopg
    from psycopg.conninfo import make_conninfo

    name = f"stepflow-test-{uuid.uuid4().hex[:8]}"
    with closing(
        PostgresStore(make_conninfo(postgres_dsn, application_name=name), schema=postgres_schema)
    ) as store:
        run = create(store)
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (name,),
            )
        with pytest.raises(StoreError, match="next call reconnects"):
            store.load("r1")
        assert store.load("r1") == run


def test_postgres_store_needs_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if it were not installed
    with pytest.raises(ConfigurationError, match=r"pip install 'stepflow\[postgres\]'"):
        PostgresStore("postgresql:///nowhere")


def test_postgres_reports_an_unreachable_server(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL"):
        open_store(f"postgresql:///db?host={tmp_path}&connect_timeout=2")
    with pytest.raises(StoreError, match="cannot connect to PostgreSQL"):
        open_store(f"postgres:///db?host={tmp_path}&connect_timeout=2")


# -- open_store -----------------------------------------------------------------------------


def test_open_store_defaults_to_stepflow_db_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for url in (None, ""):
        with closing(open_store(url)) as store:
            assert isinstance(store, SQLiteStore)
            assert store.path == "stepflow.db"
    assert (tmp_path / "stepflow.db").is_file()


def test_open_store_reads_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError, match=r"data/runs\.db"):
        open_store("sqlite:///data/runs.db")  # no such directory yet
    (tmp_path / "data").mkdir()
    with closing(open_store("sqlite:///data/runs.db")) as relative:
        assert isinstance(relative, SQLiteStore)
        assert (relative.path, relative.synchronous) == ("data/runs.db", "full")
    absolute_path = tmp_path / "abs runs.db"
    with closing(open_store(f"sqlite:///{absolute_path}?synchronous=normal")) as absolute:
        assert isinstance(absolute, SQLiteStore)
        assert (absolute.path, absolute.synchronous) == (str(absolute_path), "normal")
    assert absolute_path.is_file()


@pytest.mark.parametrize("url", ["memory://", "sqlite://:memory:"])
def test_open_store_gives_a_memory_store(url: str) -> None:
    assert isinstance(open_store(url), MemoryStore)


@pytest.mark.parametrize(
    "url",
    [
        "mysql://localhost/runs",
        "sqlite:runs.db",
        "sqlite://host/runs.db",
        "sqlite://",
        "sqlite:///",
        "sqlite:///?synchronous=normal",
        "sqlite:///runs.db?journal=wal",
        "sqlite:///runs.db?synchronous=normal&synchronous=full",
        "sqlite:///runs.db?synchronous=sometimes",
        "runs.db",
        "/tmp/runs.db",
        "memory://somewhere",
        "memory:",
        "postgresql",
    ],
)
def test_open_store_refuses_other_urls(url: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError) as caught:
        open_store(url)
    message = str(caught.value)
    assert "\n" not in message
    assert "sqlite:///" in message or "synchronous" in message
    assert not list(tmp_path.iterdir())  # nothing was created


def test_open_store_does_not_echo_credentials() -> None:
    with pytest.raises(ConfigurationError, match=r"'mysql://\.\.\.'") as caught:
        open_store("mysql://admin:hunter2@db.example/runs")
    assert "hunter2" not in str(caught.value)


def test_the_stores_package_exports_sorted_names_with_docstrings() -> None:
    names = stepflow.stores.__all__
    assert names == sorted(names, key=lambda name: (not name.isupper(), name))
    for name in names:
        value = getattr(stepflow.stores, name)
        if callable(value) and name != "RunStatus":
            assert value.__doc__, name


def test_a_save_can_move_a_run_to_another_flow_name(store: Store) -> None:
    """A migration renames the run's flow in the same compare-and-swap save."""
    create(store, "r1", flow="deploy/v1")
    saved = store.save(
        Save("r1", 1, None, "{}", "running", 5.0, '{"op":"migrate"}', flow="deploy/v2"),
        now=2.0,
    )
    assert (saved.flow, saved.version) == ("deploy/v2", 2)
    assert store.load("r1").flow == "deploy/v2"
    assert [r.run_id for r in store.runs(flow="deploy/v2")] == ["r1"]
    assert store.runs(flow="deploy/v1") == []
    [many] = store.save_many([Save("r1", 2, None, "{}", "running", 5.0, flow="deploy/v3")], now=3.0)
    assert not isinstance(many, BaseException)
    assert store.load("r1").flow == "deploy/v3"
