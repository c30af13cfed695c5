"""Events sent to runs, as stores keep them: ``send_event``, ``pending_events``, ``Save.delivered``.

Run on every store (memory, SQLite with and without ``RETURNING``, PostgreSQL),
through the backends of ``test_stores``; the schema upgrade on the durable ones.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_stores import Backend, _backend, claim, create, save_of

from stepflow.errors import (
    EventError,
    InboxFullError,
    RunFinishedError,
    StaleWriteError,
    UnknownRunError,
)
from stepflow.stores import MemoryStore, Store
from stepflow.stores import postgres as postgres_module
from stepflow.stores import sqlite as sqlite_module
from stepflow.stores.base import INBOX_LIMIT, MAX_EVENT_BYTES, InboxEvent


@pytest.fixture(params=["memory", "sqlite", "sqlite-no-returning", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    yield from _backend(request.param, request, tmp_path)


@pytest.fixture(params=["sqlite", "postgres"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    yield from _backend(request.param, request, tmp_path)


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


def names(store: Store, run_id: str = "r1", limit: int = 100) -> list[str]:
    return [event.name for event in store.pending_events(run_id, limit=limit)]


# -- send_event ------------------------------------------------------------------------------


def test_a_sent_event_waits_in_the_inbox_and_makes_the_run_due_now(store: Store) -> None:
    before = create(store, wake_at=500.0)
    assert store.send_event("r1", "approved", {"by": "ann"}, now=20.0) is True
    run = store.load("r1")
    # Its state, version and lease are untouched: only the count and wake_at moved.
    assert attrs.evolve(run, inbox=0, wake_at=500.0) == before
    assert (run.inbox, run.wake_at) == (1, 20.0)
    assert store.pending_events("r1", limit=10) == [
        InboxEvent(1, "approved", {"by": "ann"}, None, 20.0)
    ]
    assert [lease.run.run_id for lease in claim(store, now=20.0)] == ["r1"]


def test_a_send_makes_a_run_resting_without_wake_at_claimable(store: Store) -> None:
    create(store, wake_at=None)  # waits for an event only: never due by time
    assert claim(store, now=1e9) == []
    store.send_event("r1", "go", None, now=30.0)
    assert store.load("r1").wake_at == 30.0
    assert [lease.run.inbox for lease in claim(store, now=30.0)] == [1]


def test_a_send_keeps_an_earlier_wake_at(store: Store) -> None:
    create(store, wake_at=5.0)
    store.send_event("r1", "go", None, now=30.0)
    assert store.load("r1").wake_at == 5.0


def test_events_are_pending_oldest_first_up_to_the_limit(store: Store) -> None:
    create(store)
    for n in range(5):
        store.send_event("r1", f"e{n}", n, now=float(n))
    assert [(e.seq, e.name, e.payload) for e in store.pending_events("r1", limit=3)] == [
        (1, "e0", 0),
        (2, "e1", 1),
        (3, "e2", 2),
    ]
    assert store.pending_events("r1", limit=0) == []
    assert store.load("r1").inbox == 5


def test_a_duplicate_key_changes_nothing(store: Store) -> None:
    create(store)
    assert store.send_event("r1", "paid", {"n": 1}, key="invoice-7", now=2.0) is True
    before = store.load("r1")
    assert store.send_event("r1", "paid", {"n": 2}, key="invoice-7", now=3.0) is False
    assert store.load("r1") == before
    assert [e.payload for e in store.pending_events("r1", limit=10)] == [{"n": 1}]
    # Keys are per run, and events without a key never clash.
    create(store, "r2")
    assert store.send_event("r2", "paid", None, key="invoice-7", now=3.0) is True
    assert store.send_event("r1", "paid", None, now=3.0) is True
    assert store.send_event("r1", "paid", None, now=3.0) is True
    assert store.load("r1").inbox == 3


def test_a_send_succeeds_while_a_worker_holds_the_lease(store: Store) -> None:
    create(store)
    (lease,) = claim(store, now=20.0)
    assert store.send_event("r1", "go", None, now=21.0)
    run = store.load("r1")
    assert (run.lease_token, run.version, run.inbox) == (lease.token, 1, 1)
    # The holder's save goes through: a send never makes it stale.
    saved = store.save(save_of(lease.run, token=lease.token, wake_at=90.0), now=22.0)
    assert saved.version == 2
    # It delivered nothing: the run stays due, so the event is not stranded.
    assert (saved.inbox, saved.wake_at) == (1, 22.0)


def test_sends_to_unknown_or_finished_runs_are_refused(store: Store) -> None:
    with pytest.raises(UnknownRunError, match="'nope'"):
        store.send_event("nope", "go", None, now=1.0)
    for status in ("completed", "failed", "cancelled"):
        create(store, status, status=status, wake_at=None)
        with pytest.raises(RunFinishedError, match=rf"run '{status}' is {status}") as caught:
            store.send_event(status, "go", None, now=2.0)
        assert (caught.value.run_id, caught.value.status) == (status, status)
        assert store.load(status).inbox == 0
    # A parked run takes events (it is driven again later), and stays parked.
    create(store, "parked")
    (lease,) = claim(store, now=20.0)
    store.park("parked", lease.token, until=99.0, reason="why")
    assert store.send_event("parked", "go", None, now=21.0)
    assert (store.load("parked").status, store.load("parked").wake_at) == ("parked", 99.0)


def test_a_duplicate_key_to_a_finished_run_is_still_no_error(store: Store) -> None:
    run = create(store)
    store.send_event("r1", "go", None, key="k", now=2.0)
    store.save(save_of(run, status="completed", wake_at=None), now=3.0)
    assert store.send_event("r1", "go", None, key="k", now=4.0) is False


@pytest.mark.parametrize(
    ("name", "payload", "match"),
    [
        ("", None, "non-empty str without ':'"),
        ("a:b", None, "'a:b'"),
        (7, None, "got 7"),
        ("go", {1, 2}, "must be JSON data"),
        ("go", float("nan"), "must be JSON data"),
        ("go", "x" * MAX_EVENT_BYTES, f"more than the {MAX_EVENT_BYTES}"),
        ("go", "\ud800", "lone surrogate"),
    ],
)
def test_bad_events_are_refused_and_nothing_is_kept(
    store: Store, name: Any, payload: Any, match: str
) -> None:
    create(store)
    with pytest.raises(EventError, match=match):
        store.send_event("r1", name, payload, now=2.0)
    assert store.load("r1").inbox == 0
    assert store.pending_events("r1", limit=10) == []


def test_a_payload_of_exactly_the_limit_is_kept(store: Store) -> None:
    create(store)
    payload = "x" * (MAX_EVENT_BYTES - 2)  # the quotes make the rest
    assert store.send_event("r1", "big", payload, now=2.0)
    assert store.pending_events("r1", limit=1)[0].payload == payload


def test_a_full_inbox_refuses_the_sender(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from stepflow.stores import _inbox

    monkeypatch.setattr(_inbox, "INBOX_LIMIT", 3)
    create(store)
    for n in range(3):
        store.send_event("r1", "go", n, now=2.0)
    with pytest.raises(InboxFullError, match=r"run 'r1' already holds 3 events") as caught:
        store.send_event("r1", "go", 3, now=2.0)
    assert caught.value.limit == 3
    assert store.load("r1").inbox == 3
    # A duplicate key is still answered as one, not refused.
    monkeypatch.setattr(_inbox, "INBOX_LIMIT", 4)
    store.send_event("r1", "go", 3, key="k", now=2.0)
    assert store.send_event("r1", "go", 3, key="k", now=2.0) is False
    assert INBOX_LIMIT == 1000


def test_pending_events_of_an_unknown_run_raise(store: Store) -> None:
    with pytest.raises(UnknownRunError):
        store.pending_events("nope", limit=5)
    create(store)
    assert store.pending_events("r1", limit=5) == []


# -- delivery --------------------------------------------------------------------------------


def test_a_save_delivers_the_events_it_names_in_its_transaction(store: Store) -> None:
    run = create(store)
    for n in range(3):
        store.send_event("r1", f"e{n}", n, now=2.0)
    (lease,) = claim(store, now=20.0)
    first_two = store.pending_events("r1", limit=2)
    save = attrs.evolve(
        save_of(lease.run, token=lease.token, wake_at=None, batch="b"),
        delivered=first_two[-1].seq,
    )
    saved = store.save(save, now=21.0)
    # One event is left: the run stays due by the save's time.
    assert (saved.inbox, saved.wake_at, saved.version) == (1, 21.0, run.version + 1)
    assert store.load("r1") == saved
    assert names(store) == ["e2"]
    last = attrs.evolve(save_of(saved, token=lease.token, wake_at=None), delivered=3)
    done = store.save(last, now=22.0)
    assert (done.inbox, done.wake_at) == (0, None)
    assert names(store) == []
    # Delivered rows are kept: their keys stay taken.
    assert store.send_event("r1", "e9", None, now=23.0)
    assert [e.seq for e in store.pending_events("r1", limit=5)] == [4]


def test_a_stale_save_delivers_nothing(store: Store) -> None:
    run = create(store)
    store.send_event("r1", "go", None, now=2.0)
    (lease,) = claim(store, now=20.0)
    with pytest.raises(StaleWriteError):
        store.save(attrs.evolve(save_of(run, token="not-mine"), delivered=1), now=21.0)
    assert (store.load("r1").inbox, names(store)) == (1, ["go"])
    assert store.load("r1").lease_token == lease.token


def test_save_many_delivers_per_save_and_a_stale_one_delivers_nothing(store: Store) -> None:
    one, two = create(store, "a"), create(store, "b")
    store.send_event("a", "go", None, now=2.0)
    store.send_event("b", "go", None, now=2.0)
    store.send_event("b", "go", None, now=2.0)
    leases = {lease.run.run_id: lease for lease in claim(store, now=20.0)}
    results = store.save_many(
        [
            attrs.evolve(save_of(one, token=leases["a"].token, wake_at=None), delivered=1),
            attrs.evolve(save_of(two, token="lost", wake_at=None), delivered=2),
        ],
        now=21.0,
    )
    assert not isinstance(results[0], BaseException)
    assert (results[0].inbox, results[0].wake_at) == (0, None)
    assert isinstance(results[1], StaleWriteError)
    assert (names(store, "a"), names(store, "b")) == ([], ["go", "go"])
    assert store.load("b").inbox == 2


def test_a_save_naming_events_delivered_already_does_not_count_them_twice(store: Store) -> None:
    create(store)
    store.send_event("r1", "a", None, now=2.0)
    (lease,) = claim(store, now=20.0)
    saved = store.save(attrs.evolve(save_of(lease.run, token=lease.token), delivered=1), now=21.0)
    store.send_event("r1", "b", None, now=22.0)
    again = store.save(attrs.evolve(save_of(saved, token=lease.token), delivered=1), now=23.0)
    assert (again.inbox, names(store)) == (1, ["b"])


def test_a_finished_save_does_not_make_the_run_due_for_its_left_events(store: Store) -> None:
    run = create(store)
    store.send_event("r1", "go", None, now=2.0)
    done = store.save(save_of(run, status="completed", wake_at=None), now=3.0)
    assert (done.status, done.wake_at, done.inbox) == ("completed", None, 1)


def test_concurrent_sends_are_numbered_in_order_and_each_delivered_once(
    durable: Backend,
) -> None:
    create(durable.open())
    senders = [durable.open() for _ in range(4)]
    start = threading.Barrier(len(senders))

    def send(index: int) -> None:
        start.wait()
        for n in range(10):
            senders[index].send_event("r1", "go", [index, n], now=2.0)

    with ThreadPoolExecutor(len(senders)) as pool:
        list(pool.map(send, range(len(senders))))
    store = durable.open()
    events = store.pending_events("r1", limit=100)
    assert [e.seq for e in events] == list(range(1, 41))
    assert sorted(tuple(e.payload) for e in events) == [(i, n) for i in range(4) for n in range(10)]
    assert store.load("r1").inbox == 40


# -- listeners, prune, schema ----------------------------------------------------------------


def test_listeners_hear_of_each_send_after_it_commits(store: Store) -> None:
    create(store)
    heard: list[tuple[str, int]] = []
    stop = store.subscribe(lambda run_id: heard.append((run_id, store.load(run_id).inbox)))
    store.send_event("r1", "go", None, now=2.0)
    store.send_event("r1", "go", None, key="k", now=2.0)
    store.send_event("r1", "go", None, key="k", now=2.0)  # a duplicate: nothing to hear
    stop()
    store.send_event("r1", "go", None, now=2.0)
    # PostgreSQL may tell a send twice: at its commit, and on its notice (LISTEN).
    assert heard[0] == ("r1", 1)
    assert set(heard) == {("r1", 1), ("r1", 2)}


def test_a_failing_listener_does_not_fail_the_send(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    create(store)

    def boom(run_id: str) -> None:
        raise RuntimeError("listener bug")

    store.subscribe(boom)
    assert store.send_event("r1", "go", None, now=2.0)
    assert "a listener of sent events failed on run r1" in caplog.text


def test_prune_removes_a_finished_runs_inbox(store: Store) -> None:
    run = create(store)
    store.send_event("r1", "go", None, key="k", now=2.0)
    store.send_event("r1", "late", None, now=2.0)
    saved = store.save(attrs.evolve(save_of(run, batch="b"), delivered=1), now=3.0)
    store.save(save_of(saved, status="completed", wake_at=None), now=4.0)
    assert store.prune(10.0, now=20.0).runs == 1
    assert (store.load("r1").inbox, store.pending_events("r1", limit=5)) == (0, [])
    store.prune(10.0, now=20.0, runs=True)
    with pytest.raises(UnknownRunError):
        store.pending_events("r1", limit=5)


def test_a_version_5_database_is_upgraded_with_its_runs(durable: Backend) -> None:
    module = sqlite_module if durable.kind == "sqlite" else postgres_module
    assert module._MIGRATIONS[-3] is module._INBOX
    store = durable.open()
    create(store, "old", wake_at=None)
    store.close()
    durable.raw("DROP TABLE inbox")
    durable.raw("ALTER TABLE runs DROP COLUMN inbox")
    durable.raw("ALTER TABLE runs DROP COLUMN woken_at")  # version 6's
    durable.raw("ALTER TABLE runs DROP COLUMN deadline_at")  # version 8's
    durable.raw("DROP INDEX runs_parent")  # version 9's child runs
    durable.raw("ALTER TABLE runs DROP COLUMN parent_run_id")
    durable.raw("ALTER TABLE runs DROP COLUMN parent_command")
    durable.raw("UPDATE meta SET value = '5' WHERE key = 'schema_version'")
    again = durable.open()
    ((version,),) = durable.raw("SELECT value FROM meta WHERE key = 'schema_version'")
    assert int(version) == module.SCHEMA_VERSION == 9
    assert (again.load("old").inbox, again.load("old").deadline_at) == (0, None)
    assert again.send_event("old", "go", None, now=3.0)
    assert [e.name for e in again.pending_events("old", limit=5)] == ["go"]


def test_a_save_with_a_full_mailbox_leaves_the_run_at_its_own_wake_at(store: Store) -> None:
    create(store)
    store.send_event("r1", "go", None, now=2.0)
    (lease,) = claim(store, now=20.0)
    full = attrs.evolve(save_of(lease.run, token=lease.token, wake_at=70.0), mailbox_full=True)
    saved = store.save(full, now=21.0)
    assert (saved.inbox, saved.wake_at) == (1, 70.0)
    (result,) = store.save_many([attrs.evolve(full, expected_version=2)], now=22.0)
    assert not isinstance(result, BaseException)
    assert result.wake_at == 70.0
    # A later send makes it due all the same.
    store.send_event("r1", "go", None, now=23.0)
    assert store.load("r1").wake_at == 23.0


def test_postgres_listeners_hear_the_sends_of_other_store_objects(
    postgres_dsn: str, postgres_schema: str
) -> None:
    from stepflow.stores import PostgresStore

    listening = PostgresStore(postgres_dsn, schema=postgres_schema)
    sender = PostgresStore(postgres_dsn, schema=postgres_schema)
    create(sender)
    heard = threading.Event()
    runs: list[str] = []

    def listener(run_id: str) -> None:
        runs.append(run_id)
        heard.set()

    stop = listening.subscribe(listener)
    try:
        # The listening connection may not be up yet: send until it hears one.
        for attempt in range(50):
            sender.send_event("r1", "go", attempt, now=2.0)
            if heard.wait(0.2):
                break
        assert heard.is_set(), "no notice reached the other store object"
        assert set(runs) == {"r1"}
    finally:
        stop()
        listening.close()
        sender.close()


# -- a property: whatever the interleaving, each event is delivered once, in order -----------

_SEND = st.tuples(st.just("send"), st.sampled_from([None, "k1", "k2", "k3"]))
_DELIVER = st.tuples(st.just("deliver"), st.integers(0, 4), st.booleans())


@given(operations=st.lists(st.one_of(_SEND, _DELIVER), max_size=25))
def test_every_event_sent_is_delivered_once_in_the_order_sent(
    operations: list[tuple[Any, ...]],
) -> None:
    """Sends (some with keys used before), deliveries of a few at a time, stale saves.

    Stale saves (a lost lease) deliver nothing; what the model says is pending
    is what the store says, with its count; at the end, the delivered events are
    every accepted send, once each, in the order sent.
    """
    store = MemoryStore()
    run = create(store)
    (lease,) = claim(store, now=20.0)
    model: list[int] = []  # the payloads pending, oldest first
    delivered: list[int] = []
    accepted: list[int] = []
    keys: set[str] = set()
    for number, operation in enumerate(operations):
        if operation[0] == "send":
            key = operation[1]
            sent = store.send_event("r1", "e", number, key=key, now=21.0)
            assert sent is (key is None or key not in keys)
            if sent:
                model.append(number)
                accepted.append(number)
                if key is not None:
                    keys.add(key)
        else:
            _, count, stale = operation
            events = store.pending_events("r1", limit=count)
            assert [e.payload for e in events] == model[:count]
            if not events:
                continue
            save = attrs.evolve(
                save_of(run, token="lost" if stale else lease.token), delivered=events[-1].seq
            )
            if stale:
                with pytest.raises(StaleWriteError):
                    store.save(save, now=22.0)
                continue
            run = store.save(save, now=22.0)
            delivered += [e.payload for e in events]
            del model[: len(events)]
        assert store.load("r1").inbox == len(model)
        assert [e.payload for e in store.pending_events("r1", limit=100)] == model
    assert delivered + model == accepted
