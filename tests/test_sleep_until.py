"""``sleep_until(name, when)``: a durable timer at a computed time (stepflow/core/timers.py)."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest

import stepflow
from stepflow import FakeClock, RetryPolicy, Worker
from stepflow.analysis import explore, paths
from stepflow.codec import loads_batch
from stepflow.core.advance import result_error
from stepflow.core.checks import check_state
from stepflow.core.messages import CallHandler, HandlerRaised, HandlerReturned, TimerFired, Wake
from stepflow.diagrams import to_dot, to_mermaid
from stepflow.errors import DefinitionError, EffectError, FlowFailed, UnknownEventError
from stepflow.runtime import start_run
from stepflow.stores import MemoryStore

UTC = datetime.timezone.utc
T0 = 1_000_000.0
RESULT_ERROR = "stepflow.errors.HandlerResultError"


def never(ctx: Any) -> Any:
    raise AssertionError("driven by effects in this test")


def definition(spec: stepflow.Steps | None = None) -> stepflow.FlowDefinition:
    spec = spec or stepflow.named("f").sleep_until("at", never).do("after", never)
    return stepflow.new(spec).definition


# -- the core ----------------------------------------------------------------------


def test_when_is_asked_once_then_a_timer_rests_until_the_time_it_returned() -> None:
    d = definition()
    state, (ask,) = stepflow.advance(d, None, now=T0)
    assert ask == CallHandler(1, "sleep_until", "f/at", "start:f/at", None)
    state, (timer,) = stepflow.advance(d, state, [HandlerReturned(1, T0 + 60, T0 + 1)])
    assert timer == Wake(2, "sleep", "f/at", "start:f/at", T0 + 60)
    assert (state.events, state.wake_at, state.outputs["f/at"]) == (
        ("start:f/at",),
        T0 + 60,
        T0 + 60,
    )
    assert check_state(d, state) is state
    assert stepflow.loads(stepflow.dumps(state), d) == state
    with pytest.raises(EffectError, match="fires at"):
        stepflow.advance(d, state, [TimerFired(2, T0 + 59)])
    state, (after,) = stepflow.advance(d, state, [TimerFired(2, T0 + 60)])
    assert after.step == "f/after"
    assert state.outputs["f/at"] == T0 + 60


def test_a_time_already_past_fires_at_once() -> None:
    d = definition()
    state, _ = stepflow.advance(d, None, now=T0)
    state, (timer,) = stepflow.advance(d, state, [HandlerReturned(1, 5, T0 + 1)])
    assert timer.at == 5.0
    state, (after,) = stepflow.advance(d, state, [TimerFired(2, T0 + 1)])
    assert after.kind == "do"


@pytest.mark.parametrize("bad", ["09:00", True, None, float("nan"), float("inf"), [1], {"t": 1}])
def test_a_value_that_is_no_time_fails_the_step_with_handler_result_error(bad: Any) -> None:
    d = definition()
    state, (ask,) = stepflow.advance(d, None, now=T0)
    failed, commands = stepflow.advance(d, state, [HandlerReturned(1, bad, T0)])
    assert (failed.status, commands) == ("failed", ())
    assert failed.error is not None
    assert failed.error.type == RESULT_ERROR
    assert "sleep_until 'f/at'" in failed.error.message
    assert result_error(ask, bad) == failed.error
    assert result_error(ask, 12.5) is None


def test_a_bad_time_or_a_raising_when_is_retried_and_resumed_like_any_failure() -> None:
    policy = RetryPolicy(max_attempts=2, initial_interval=0)
    spec = stepflow.named("f").retry("r", policy, stepflow.steps().sleep_until("at", never))
    d = definition(spec)
    state, (ask,) = stepflow.advance(d, None, now=T0)
    state, (again,) = stepflow.advance(d, state, [HandlerReturned(ask.id, "soon", T0)])
    assert (again.kind, dict(state.attempts)) == ("sleep_until", {"f/rRetry": 1})
    error = stepflow.ErrorRecord("RuntimeError", "no calendar", "f/rRetry/at")
    failed, _ = stepflow.advance(d, state, [HandlerRaised(again.id, error, None, T0)])
    assert failed.error == error
    _, (asked,) = stepflow.resume(d, failed, now=T0)
    assert (asked.kind, asked.id) == ("sleep_until", again.id + 1)


def test_effects_of_the_wrong_kind_are_refused() -> None:
    d = definition()
    state, _ = stepflow.advance(d, None, now=T0)
    with pytest.raises(EffectError, match="cannot answer"):
        stepflow.advance(d, state, [TimerFired(1, T0)])
    state, _ = stepflow.advance(d, state, [HandlerReturned(1, T0, T0)])
    with pytest.raises(EffectError, match="cannot answer"):
        stepflow.advance(d, state, [HandlerReturned(2, T0, T0)])


def test_a_timer_in_flight_must_belong_to_the_sleep_until_it_rests_at() -> None:
    d = definition()
    state, _ = stepflow.advance(d, None, now=T0)
    state, _ = stepflow.advance(d, state, [HandlerReturned(1, T0, T0)])
    wrong = state._replace(in_flight=(Wake(2, "sleep", "f/other", "start:f/at", T0),))
    with pytest.raises(UnknownEventError, match="sleep of f/other"):
        check_state(d, wrong)


def test_a_sleep_until_inside_a_map_rests_per_item() -> None:
    spec = stepflow.named("f").map("m", never, stepflow.steps().sleep_until("at", never))
    d = definition(spec)
    state, (items,) = stepflow.advance(d, None, now=T0)
    state, asks = stepflow.advance(d, state, [HandlerReturned(items.id, [1, 2], T0)])
    assert [a.kind for a in asks] == ["sleep_until", "sleep_until"]
    answers = [HandlerReturned(a.id, T0 + 10 * (i + 1), T0) for i, a in enumerate(asks)]
    state, timers = stepflow.advance(d, state, answers)
    assert [t.at for t in timers] == [T0 + 10, T0 + 20]
    assert state.wake_at == T0 + 10
    state, _ = stepflow.advance(d, state, [TimerFired(t.id, T0 + 20) for t in timers])
    assert state.status == "completed"


def test_when_must_be_callable() -> None:
    with pytest.raises(DefinitionError, match="when of step 'f/at'"):
        stepflow.new(stepflow.named("f").sleep_until("at", "09:00"))  # type: ignore[arg-type]


# -- the shell ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "when",
    [
        datetime.datetime(2026, 3, 1, 9, tzinfo=UTC),
        datetime.datetime(2026, 3, 1, 10, tzinfo=datetime.timezone(datetime.timedelta(hours=1))),
        datetime.datetime(2026, 3, 1, 9),  # naive: UTC
        datetime.datetime(2026, 3, 1, 9, tzinfo=UTC).timestamp(),
        int(datetime.datetime(2026, 3, 1, 9, tzinfo=UTC).timestamp()),
    ],
)
def test_datetimes_and_numbers_become_epoch_seconds_in_the_shell(when: Any) -> None:
    nine = datetime.datetime(2026, 3, 1, 9, tzinfo=UTC).timestamp()
    clock = FakeClock(nine - 3600)
    flow = stepflow.new(
        stepflow.named("f").sleep_until("at", lambda ctx: when).do("after", lambda ctx: "ok"),
        clock=clock,
    )
    resting = flow.apply(None)
    assert resting.wake_at == nine
    assert resting.outputs["f/at"] == nine
    assert flow.apply(resting) == resting  # not due yet: nothing runs
    done = flow.run(resting)
    assert (done.status, clock.now()) == ("completed", nine)


def test_an_async_when_and_a_bad_value_from_the_shell() -> None:
    async def when(ctx: Any) -> datetime.datetime:
        return datetime.datetime(1970, 1, 2, tzinfo=UTC)

    flow = stepflow.new(stepflow.named("f").sleep_until("at", when), clock=FakeClock(T0))
    assert asyncio.run(flow.run_async(None)).outputs["f/at"] == 86400.0
    bad = stepflow.new(stepflow.named("f").sleep_until("at", lambda ctx: datetime.date(2026, 1, 1)))
    with pytest.raises(FlowFailed) as info:
        bad.apply(None)
    assert info.value.state.error is not None
    assert info.value.state.error.type == RESULT_ERROR


def test_the_worker_asks_when_once_and_wakes_the_run_at_that_time() -> None:
    asked: list[float] = []

    def when(ctx: stepflow.RunContext) -> float:
        asked.append(ctx.now)
        return ctx.now + 86400

    flow = stepflow.new(stepflow.named("f").sleep_until("at", when).do("after", lambda ctx: 1))
    store = MemoryStore()
    clock = FakeClock(T0)
    run_id = start_run(store, flow, {}, clock=clock).run_id
    Worker(store, [flow], clock=clock).run_sync(until_idle=True, handle_signals=False)
    assert store.load(run_id).status == "completed"
    assert asked == [T0]
    assert clock.now() >= T0 + 86400
    ops = [loads_batch(e.batch).effects[0] for e in store.history(run_id)[1:]]
    assert [type(e) for e in ops] == [HandlerReturned, TimerFired, HandlerReturned]


# -- analysis and diagrams ---------------------------------------------------------


def test_explore_and_paths_cover_a_sleep_until() -> None:
    d = definition()
    found = explore(d)
    assert found.complete
    assert found.completed >= 1
    assert found.failed >= 1  # when raised
    assert paths(d)


def test_diagrams_draw_a_sleep_until() -> None:
    d = definition()
    assert "sleep_until" in to_mermaid(d)
    assert "octagon" in to_dot(d)


def test_a_loop_that_sleeps_until_a_time_is_paced_not_hot() -> None:
    body = stepflow.steps().sleep_until("at", never).do("send", never)
    d = definition(stepflow.named("f").loop_until("daily", never, body))
    assert [f.code for f in stepflow.analysis.check(d) if f.code == "hot-loop"] == []
