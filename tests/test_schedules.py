"""Schedules: fire times (timezones, DST), bad input, and the scheduler's policies.

The scheduler is driven directly (``Scheduler.look(now)``) on a MemoryStore for the
policies, and through Workers on a FakeClock for the loop; the last test runs three
workers on one PostgreSQL database, racing for every fire time of ten minutes.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stepflow
from stepflow import FakeClock, RunContext, Schedule, Worker
from stepflow.errors import ConfigurationError, ScheduleError, UnknownScheduleError
from stepflow.runtime import Scheduler, cancel_run, start_run
from stepflow.runtime.schedules import fire_time_label
from stepflow.stores import MemoryStore, PostgresStore, ScheduleRecord, Store

UTC = timezone.utc
# 2026-01-01T00:00:00Z, a whole minute.
T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def send(ctx: RunContext) -> Any:
    return {"sent": ctx.input}


quick = stepflow.new(stepflow.named("report/v1").do("send", send))
# A run that stays running for 90 s after it starts: longer than a minutely period.
slow = stepflow.new(stepflow.named("slow/v1").sleep("nap", 90).do("send", send))


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def iso(when: float) -> str:
    return fire_time_label(when)


def scheduler(store: Store, *schedules: Schedule, clock: FakeClock | None = None) -> Scheduler:
    flows = {flow.name: flow for flow in (quick, slow)}
    return Scheduler(store, flows, schedules, clock=clock or FakeClock(T0), interval=1.0)


def run_ids(store: Store) -> list[str]:
    return [run.run_id for run in store.runs()]


def cancel(store: Store, run_id: str, now: float) -> None:
    """Cancel a run and let a worker deliver the cancellation (it ends cancelled)."""
    clock = FakeClock(now)
    assert cancel_run(store, run_id, clock=clock)
    Worker(store, [quick, slow], clock=clock).run_sync(until_idle=True, handle_signals=False)
    assert store.load(run_id).status == "cancelled"


# -- fire times ---------------------------------------------------------------------------


def test_a_daily_paris_schedule_fires_at_nine_local_time_across_daylight_saving() -> None:
    daily = Schedule("daily", quick, cron="0 9 * * *", timezone="Europe/Paris")
    times = list(daily.fire_times(at("2026-03-27T12:00:00+00:00"), at("2026-03-31T00:00:00+00:00")))
    # Summer time starts on 2026-03-29: 09:00 Paris is 08:00Z before, 07:00Z after.
    assert [iso(t) for t in times] == [
        "2026-03-28T08:00:00Z",
        "2026-03-29T07:00:00Z",
        "2026-03-30T07:00:00Z",
    ]
    autumn = daily.fire_times(at("2026-10-24T12:00:00+00:00"), at("2026-10-26T12:00:00+00:00"))
    assert [iso(t) for t in autumn] == ["2026-10-25T08:00:00Z", "2026-10-26T08:00:00Z"]


def test_fire_times_in_the_hours_daylight_saving_skips_or_repeats_follow_croniter() -> None:
    nightly = Schedule("nightly", quick, cron="30 2 * * *", timezone="Europe/Paris")
    # 02:30 does not exist on 2026-03-29: it fires when the clocks have moved, at 03:00.
    spring = nightly.fire_times(at("2026-03-28T12:00:00+00:00"), at("2026-03-30T12:00:00+00:00"))
    assert [iso(t) for t in spring] == ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
    # 02:30 happens twice on 2026-10-25: it fires at both instants (distinct UTC ids).
    autumn = nightly.fire_times(at("2026-10-24T12:00:00+00:00"), at("2026-10-25T12:00:00+00:00"))
    assert [iso(t) for t in autumn] == ["2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z"]


def test_run_ids_are_the_schedule_and_the_fire_time_in_utc() -> None:
    tokyo = Schedule("tokyo", quick, cron="0 9 * * 1-5", timezone="Asia/Tokyo")
    # 09:00 in Tokyo is midnight UTC; fire times are strictly after the time given.
    first = tokyo.next_fire_after(T0 - 1)  # 2026-01-01 is a Thursday
    assert tokyo.run_id(first) == "tokyo/2026-01-01T00:00:00Z"
    assert tokyo.run_id(tokyo.next_fire_after(first)) == "tokyo/2026-01-02T00:00:00Z"
    # Then Monday, the weekend skipped.
    assert iso(tokyo.next_fire_after(tokyo.next_fire_after(first))) == "2026-01-05T00:00:00Z"


def test_a_sixth_field_fires_every_second_and_nicknames_parse() -> None:
    every = Schedule("tick", "report/v1", cron="* * * * * *")
    assert list(every.fire_times(T0, T0 + 3)) == [T0 + 1, T0 + 2, T0 + 3]
    assert Schedule("d", quick, cron="@daily").next_fire_after(T0) == T0 + 86_400
    assert every.flow == "report/v1"


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cron", "reason"),
    [
        ("61 * * * *", "out of range"),
        ("every day", "columns"),
        ("", "columns"),
        ("* * * * * * * *", "columns"),
    ],
)
def test_a_cron_expression_that_does_not_parse_is_refused_with_the_reason(
    cron: str, reason: str
) -> None:
    with pytest.raises(ScheduleError, match="does not parse") as caught:
        Schedule("s", quick, cron=cron)
    assert reason in str(caught.value)
    assert caught.value.schedule == "s"
    assert isinstance(caught.value, ValueError)


def test_bad_schedules_are_refused_saying_what_to_do() -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'.*IANA"),
        ({"timezone": "../etc"}, "unknown timezone"),
        ({"overlap": "queue"}, "unknown overlap policy 'queue'; use one of skip, allow"),
        ({"catch_up": timedelta(seconds=-1)}, "catch_up is a timedelta of zero or more"),
        ({"catch_up": 60}, "catch_up is a timedelta"),
        ({"input": {"x": float("nan")}}, r"NaN or an infinity at \$\.x"),
        ({"input": {1, 2}}, "must be JSON data"),
        ({"cron": 5}, "does not parse: a cron expression is a str"),
    ]
    for changes, message in cases:
        options: dict[str, Any] = {"cron": "0 9 * * *", **changes}
        with pytest.raises(ScheduleError, match=message):
            Schedule("s", quick, **options)
    for name in ("", "a/b", "two words"):
        with pytest.raises(ScheduleError, match="a schedule's name is a non-empty str"):
            Schedule(name, quick, cron="0 9 * * *")
    with pytest.raises(ScheduleError, match="flow is a Flow or a flow name"):
        Schedule("s", "", cron="0 9 * * *")


def test_a_worker_refuses_a_schedule_of_a_flow_it_does_not_serve_or_two_of_one_name() -> None:
    store = MemoryStore()
    with pytest.raises(ConfigurationError, match="'other/v1', which this worker does not serve"):
        Worker(store, [quick], schedules=[Schedule("s", "other/v1", cron="@daily")])
    twice = [Schedule("s", quick, cron="@daily"), Schedule("s", quick, cron="@hourly")]
    with pytest.raises(ConfigurationError, match="two schedules are named 's'"):
        Worker(store, [quick], schedules=twice)


# -- firing: one run per fire time ------------------------------------------------------------


def test_each_fire_time_starts_one_run_whoever_looks_and_however_often() -> None:
    store = MemoryStore()
    minutely = Schedule("m", quick, cron="* * * * *", input={"to": "ops"})
    stepflow.add_schedule(store, minutely, clock=FakeClock(T0))
    one, two = scheduler(store), scheduler(store)
    # Nothing due: look again after the interval (1 s here), or at the fire time if sooner.
    assert one.look(T0 + 30) == T0 + 31
    assert one.look(T0 + 59.5) == T0 + 60
    assert run_ids(store) == []
    assert one.look(T0 + 60) == T0 + 61
    assert two.look(T0 + 60) == T0 + 61
    assert one.look(T0 + 61) == T0 + 62
    assert run_ids(store) == ["m/2026-01-01T00:01:00Z"]
    assert store.load("m/2026-01-01T00:01:00Z").input == {"to": "ops"}
    assert (one.started, two.started, two.collisions) == (1, 0, 0)
    saved = store.load_schedule("m")
    assert (saved.next_fire_at, saved.last_run_id) == (T0 + 120, "m/2026-01-01T00:01:00Z")


def test_a_fire_time_started_before_a_crash_is_not_started_again() -> None:
    store = MemoryStore()
    minutely = Schedule("m", quick, cron="* * * * *")
    stepflow.add_schedule(store, minutely, clock=FakeClock(T0))
    # A worker started the run, then died before moving the schedule's cursor.
    start_run(store, quick, None, run_id="m/2026-01-01T00:01:00Z", clock=FakeClock(T0 + 60))
    survivor = scheduler(store)
    survivor.look(T0 + 61)
    assert run_ids(store) == ["m/2026-01-01T00:01:00Z"]
    assert (survivor.started, survivor.collisions) == (0, 1)
    assert store.load_schedule("m").next_fire_at == T0 + 120


def test_after_downtime_only_the_most_recent_missed_fire_time_starts_by_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    stepflow.add_schedule(store, Schedule("m", quick, cron="* * * * *"), clock=FakeClock(T0))
    with caplog.at_level(logging.WARNING, "stepflow.schedules"):
        scheduler(store).look(T0 + 600 + 30)  # ten fire times passed while nobody looked
    assert run_ids(store) == ["m/2026-01-01T00:10:00Z"]
    assert "skipped the fire times from 2026-01-01T00:01:00Z to before 2026-01-01T00:10:00Z" in (
        caplog.text
    )
    assert store.load_schedule("m").next_fire_at == T0 + 660


def test_catch_up_starts_the_fire_times_missed_by_less_than_it_oldest_first() -> None:
    store = MemoryStore()
    window = Schedule("w", quick, cron="* * * * *", overlap="allow", catch_up=timedelta(minutes=5))
    stepflow.add_schedule(store, window, clock=FakeClock(T0))
    scheduler(store).look(T0 + 600 + 30)
    # Missed by less than 5 minutes at 00:10:30: 00:06 to 00:10; the five before skipped.
    assert [run.run_id for run in store.runs()] == [
        f"w/2026-01-01T00:{minute:02d}:00Z" for minute in range(6, 11)
    ]


def test_catch_up_is_subject_to_the_overlap_policy() -> None:
    store = MemoryStore()
    window = Schedule("w", slow, cron="* * * * *", catch_up=timedelta(minutes=5))
    stepflow.add_schedule(store, window, clock=FakeClock(T0))
    scheduler(store).look(T0 + 600 + 30)
    # "skip": the oldest starts, the others would overlap it (its run sleeps 90 s).
    assert run_ids(store) == ["w/2026-01-01T00:06:00Z"]


def test_a_long_catch_up_goes_on_at_the_next_look() -> None:
    store = MemoryStore()
    ticks = Schedule("t", quick, cron="* * * * * *", overlap="allow", catch_up=timedelta(hours=1))
    stepflow.add_schedule(store, ticks, clock=FakeClock(T0))
    looker = scheduler(store)
    assert looker.look(T0 + 250) == T0 + 101  # 100 started; the rest at once
    assert store.count() == 100
    looker.look(T0 + 250)
    looker.look(T0 + 250)
    assert store.count() == 250
    assert looker.look(T0 + 250) == T0 + 251


# -- overlap ----------------------------------------------------------------------------------


def test_skip_does_not_start_a_fire_time_while_the_previous_run_is_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    stepflow.add_schedule(store, Schedule("s", slow, cron="* * * * *"), clock=FakeClock(T0))
    looker = scheduler(store)
    looker.look(T0 + 60)
    with caplog.at_level(logging.WARNING, "stepflow.schedules"):
        looker.look(T0 + 120)
    assert run_ids(store) == ["s/2026-01-01T00:01:00Z"]
    assert "skipped fire time 2026-01-01T00:02:00Z: run s/2026-01-01T00:01:00Z is still" in (
        caplog.text
    )
    cancel(store, "s/2026-01-01T00:01:00Z", T0 + 150)
    looker.look(T0 + 180)
    assert run_ids(store) == ["s/2026-01-01T00:01:00Z", "s/2026-01-01T00:03:00Z"]


def test_allow_starts_every_fire_time_even_while_the_previous_run_is_running() -> None:
    store = MemoryStore()
    allow = Schedule("a", slow, cron="* * * * *", overlap="allow")
    stepflow.add_schedule(store, allow, clock=FakeClock(T0))
    looker = scheduler(store)
    for minute in (1, 2, 3):
        looker.look(T0 + 60 * minute)
    assert len(run_ids(store)) == 3
    assert all(run.status == "running" for run in store.runs())


def test_buffer_one_starts_one_fire_time_once_the_previous_run_ends() -> None:
    store = MemoryStore()
    buffered = Schedule("b", slow, cron="* * * * *", overlap="buffer_one")
    stepflow.add_schedule(store, buffered, clock=FakeClock(T0))
    looker = scheduler(store)
    looker.look(T0 + 60)
    looker.look(T0 + 120)  # buffered: 00:02
    looker.look(T0 + 180)  # skipped: one is buffered already
    assert run_ids(store) == ["b/2026-01-01T00:01:00Z"]
    assert store.load_schedule("b").buffered_at == T0 + 120
    looker.look(T0 + 190)  # still running: still waiting
    assert run_ids(store) == ["b/2026-01-01T00:01:00Z"]
    cancel(store, "b/2026-01-01T00:01:00Z", T0 + 195)
    looker.look(T0 + 200)
    # The buffered run keeps its fire time's id; nothing more is buffered.
    assert run_ids(store) == ["b/2026-01-01T00:01:00Z", "b/2026-01-01T00:02:00Z"]
    saved = store.load_schedule("b")
    assert (saved.buffered_at, saved.last_run_id) == (None, "b/2026-01-01T00:02:00Z")
    assert saved.next_fire_at == T0 + 240


# -- pause, resume, registration, bad rows ------------------------------------------------------


def test_a_paused_schedule_starts_nothing_and_resumes_from_its_next_fire_time() -> None:
    store = MemoryStore()
    stepflow.add_schedule(store, Schedule("p", quick, cron="* * * * *"), clock=FakeClock(T0))
    assert stepflow.pause_schedule(store, "p", clock=FakeClock(T0)).paused
    looker = scheduler(store)
    looker.look(T0 + 600)
    assert run_ids(store) == []
    resumed = stepflow.resume_schedule(store, "p", clock=FakeClock(T0 + 630))
    assert (resumed.paused, resumed.next_fire_at) == (False, T0 + 660)
    looker.look(T0 + 631)
    assert run_ids(store) == []
    looker.look(T0 + 660)
    assert run_ids(store) == ["p/2026-01-01T00:11:00Z"]
    with pytest.raises(UnknownScheduleError):
        stepflow.pause_schedule(store, "nope")


def test_a_worker_adds_its_schedules_and_updates_changed_definitions() -> None:
    store = MemoryStore()
    clock = FakeClock(T0)
    first = Schedule("daily", quick, cron="0 9 * * *", input={"v": 1})
    scheduler(store, first, clock=clock).register(T0)
    added = store.load_schedule("daily")
    assert added.next_fire_at == T0 + 9 * 3600
    stepflow.pause_schedule(store, "daily", clock=clock)
    # The same definition again: nothing written.
    scheduler(store, first, clock=clock).register(T0 + 1)
    assert store.load_schedule("daily").version == 2
    # A new input keeps the cursor; a new cron restarts it; paused is kept either way.
    changed = Schedule("daily", quick, cron="0 9 * * *", input={"v": 2})
    scheduler(store, changed, clock=clock).register(T0 + 2)
    assert store.load_schedule("daily").input == {"v": 2}
    assert store.load_schedule("daily").next_fire_at == T0 + 9 * 3600
    later = Schedule("daily", quick, cron="0 10 * * *", input={"v": 2})
    scheduler(store, later, clock=clock).register(T0 + 3)
    row = store.load_schedule("daily")
    assert (row.cron, row.next_fire_at, row.paused) == ("0 10 * * *", T0 + 10 * 3600, True)


def test_a_bad_schedule_row_is_logged_and_never_stops_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryStore()
    # A row edited by hand: its cron expression no longer parses.
    store.create_schedule(
        ScheduleRecord("bad", "report/v1", "nope", "UTC", None, "skip", None, False, T0),
        now=T0,
    )
    stepflow.add_schedule(store, Schedule("good", quick, cron="* * * * *"), clock=FakeClock(T0))
    with caplog.at_level(logging.ERROR, "stepflow.schedules"):
        scheduler(store).look(T0 + 60)
    assert run_ids(store) == ["good/2026-01-01T00:01:00Z"]
    assert "schedule 'bad' cannot fire" in caplog.text
    assert "does not parse" in caplog.text


def test_schedules_of_flows_another_worker_serves_are_left_to_it() -> None:
    store = MemoryStore()
    stepflow.add_schedule(store, Schedule("x", "other/v1", cron="* * * * *"), clock=FakeClock(T0))
    scheduler(store).look(T0 + 60)
    assert run_ids(store) == []
    assert store.load_schedule("x").next_fire_at == T0 + 60


# -- the worker's loop -----------------------------------------------------------------------


def test_a_worker_on_a_fake_clock_fires_a_minutely_schedule_for_an_hour() -> None:
    store = MemoryStore()
    clock = FakeClock(T0)
    worker = Worker(store, [quick], clock=clock, schedules=[Schedule("m", quick, cron="* * * * *")])

    async def drive() -> None:
        task = asyncio.create_task(worker.run())
        # Until the hour's 60 runs have completed: the clock can reach the hour a
        # moment before the worker fires that last fire time.
        while store.count(status="completed") < 60 or store.count(status="running"):
            await asyncio.sleep(0.001)
        worker.stop()
        await task

    asyncio.run(asyncio.wait_for(drive(), timeout=120))
    expected = [f"m/{iso(T0 + 60 * minute)}" for minute in range(1, 61)]
    completed = [run.run_id for run in store.runs(status="completed")]
    assert completed[:60] == expected
    assert worker.scheduler.started == len(completed) == store.count()


class SteppedClock:
    """A clock the test moves forward, shared by workers on several threads.

    ``sleep`` waits (really, a few milliseconds at most) for the test to move the
    clock to the deadline, so a worker looks again soon after every step.
    """

    def __init__(self, start: float) -> None:
        self._now = start
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds

    async def sleep(self, seconds: float) -> None:
        deadline = self.now() + seconds
        for _ in range(20):
            if self.now() >= deadline:
                return
            await asyncio.sleep(0.001)


def test_three_workers_on_postgresql_start_every_fire_time_of_ten_minutes_exactly_once(
    postgres_dsn: str, postgres_schema: str
) -> None:
    """A schedule firing every second for 10 minutes, 3 workers sharing PostgreSQL.

    Each worker has its own store (its own connection); they share one clock that
    the test moves a second at a time, so every fire time is raced for by all three.
    """
    start = T0
    clock = SteppedClock(start)
    every_second = Schedule(
        "tick", quick, cron="* * * * * *", overlap="allow", catch_up=timedelta(minutes=1)
    )
    stores = [PostgresStore(postgres_dsn, schema=postgres_schema) for _ in range(3)]
    workers = [
        Worker(
            store,
            [quick],
            clock=clock,  # a Clock by its methods (now, sleep)
            schedules=[every_second],
            idle_interval=0.5,
            owner=f"w{index}",
        )
        for index, store in enumerate(stores)
    ]
    loops = [asyncio.new_event_loop() for _ in workers]
    threads = [
        threading.Thread(target=loop.run_until_complete, args=(worker.run(),))
        for loop, worker in zip(loops, workers, strict=True)
    ]
    for thread in threads:
        thread.start()
    try:
        # Let every worker register the schedule at the start time first.
        deadline = time.monotonic() + 30
        while not all(w.scheduler._registered for w in workers):
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.005)
        for _ in range(600):
            clock.advance(1.0)
            time.sleep(0.003)
        deadline = time.monotonic() + 60
        while stores[0].count(status="completed") < 600:
            assert time.monotonic() < deadline, f"only {stores[0].count()} runs after 60 s"
            time.sleep(0.05)
    finally:
        for loop, worker in zip(loops, workers, strict=True):
            loop.call_soon_threadsafe(worker.stop)
        for thread in threads:
            thread.join(timeout=30)
        for loop in loops:
            loop.close()
    check = stores[0]
    ids = [run.run_id for run in check.runs()]
    expected = {f"tick/{iso(start + second)}" for second in range(1, 601)}
    assert len(ids) == 600  # none twice (ids are unique), none more
    assert set(ids) == expected  # none missing
    assert check.count(status="completed") == 600
    started = [worker.scheduler.started for worker in workers]
    assert sum(started) == 600, started  # each run started by exactly one worker
    # They did race: several workers started runs (a few hundred refusals by the store
    # on this machine: fire times another worker had started first).
    assert sum(1 for count in started if count) >= 2, started
    assert check.load_schedule("tick").next_fire_at == start + 601
    for store in stores:
        store.close()


# -- properties --------------------------------------------------------------------------------


@settings(max_examples=60)
@given(
    period=st.sampled_from([1, 7, 60]),
    steps=st.lists(
        st.tuples(st.floats(0, 200, allow_nan=False), st.integers(0, 2), st.booleans()),
        min_size=1,
        max_size=25,
    ),
)
def test_with_a_wide_catch_up_every_fire_time_starts_exactly_once(
    period: int, steps: list[tuple[float, int, bool]]
) -> None:
    """Any schedule of looks, by any of three schedulers, with crashes after starting a run."""
    store = MemoryStore()
    cron = "* * * * * *" if period == 1 else f"*/{period} * * * * *" if period < 60 else "* * * * *"
    ticks = Schedule("t", quick, cron=cron, overlap="allow", catch_up=timedelta(days=1))
    stepflow.add_schedule(store, ticks, clock=FakeClock(T0))
    lookers = [scheduler(store) for _ in range(3)]
    now = T0
    for gap, who, crash in steps:
        now += gap
        if crash:  # a worker started the next due run, then died before moving the cursor
            due = store.load_schedule("t").next_fire_at
            if due <= now:
                start_run(store, quick, None, run_id=ticks.run_id(due), clock=FakeClock(now))
        # Catch-ups of more than 100 fire times go on over several looks.
        while lookers[who].look(now) <= now:
            pass
    expected = [ticks.run_id(at) for at in ticks.fire_times(T0, now)]
    assert sorted(run_ids(store)) == sorted(expected)


@settings(max_examples=60)
@given(looks=st.lists(st.floats(0, 400, allow_nan=False), min_size=1, max_size=20))
def test_by_default_each_look_starts_at_most_the_latest_fire_time_and_never_one_twice(
    looks: list[float],
) -> None:
    store = MemoryStore()
    minutely = Schedule("m", quick, cron="* * * * *", overlap="allow")
    stepflow.add_schedule(store, minutely, clock=FakeClock(T0))
    looker = scheduler(store)
    now = T0
    for gap in looks:
        now += gap
        before = set(run_ids(store))
        looker.look(now)
        new = set(run_ids(store)) - before
        fire_times = list(minutely.fire_times(T0, now))
        assert len(new) <= 1
        if new and fire_times:
            assert new == {minutely.run_id(fire_times[-1])}
    fire_times = list(minutely.fire_times(T0, now))
    if fire_times:
        assert minutely.run_id(fire_times[-1]) in run_ids(store)
