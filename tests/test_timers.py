"""Time as data: wait_for polls and timeouts, durable sleeps, retry policies, resume.

Every test gives time explicitly: ``now=`` and effects stamped with ``at=`` for
the pure core, or a :class:`stepflow.FakeClock` for the drivers. None reads the
real clock or sleeps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import timedelta

import pytest

import stepflow
from stepflow import (
    CallHandler,
    ErrorRecord,
    FakeClock,
    HandlerRaised,
    HandlerReturned,
    RetryPolicy,
    TimerFired,
    Wake,
)
from stepflow.core.advance import initial_state
from stepflow.core.spec import DEFAULT_POLL_INTERVAL, Retry

T0 = 1_000.0
TIMEOUT_TYPE = "stepflow.errors.WaitTimeoutError"


def noop(ctx: object) -> None:
    return None


def no(ctx: object) -> bool:
    return False


def decline(ctx: object, exc: BaseException) -> bool:
    return False


def definition_of(spec: stepflow.Steps) -> stepflow.FlowDefinition:
    return stepflow.new(spec).definition


def returned(command: stepflow.Command, value: object, at: float) -> HandlerReturned:
    return HandlerReturned(command.id, value, at)


def raised(command: stepflow.Command, at: float, error_type: str = "RuntimeError") -> HandlerRaised:
    return HandlerRaised(command.id, ErrorRecord(error_type, "boom", command.step), None, at)


def counting(results: list[bool]) -> tuple[list[int], Callable[[object], bool]]:
    """A condition that answers ``results`` in order (then ``True``), counting its calls."""
    calls: list[int] = []

    def cond(ctx: object) -> bool:
        calls.append(1)
        return results[len(calls) - 1] if len(calls) <= len(results) else True

    return calls, cond


def failing_times(failures: int) -> tuple[list[float], Callable[[object], str]]:
    """A ``do`` handler that raises ``failures`` times, then returns ``"done"``.

    It records the time of the clock it is given through the context.
    """
    times: list[float] = []

    def step(ctx: object) -> str:
        assert isinstance(ctx, FakeClock)
        times.append(ctx.now())
        if len(times) <= failures:
            raise RuntimeError(f"failure {len(times)}")
        return "done"

    return times, step


# -- wait_for: polls -----------------------------------------------------------

WAIT = definition_of(stepflow.named("f").wait_for("w", no, every=5))


def test_a_false_poll_asks_to_poll_again_every_seconds_later_with_a_new_command() -> None:
    state, (first,) = stepflow.advance(WAIT, now=T0)
    assert state.wake_at is None
    state, (second,) = stepflow.advance(WAIT, state, (returned(first, False, T0 + 3),))
    assert state.wake_at == T0 + 3 + 5
    assert second.id == first.id + 1
    assert second.event == first.event == "start:f/wWaitFor"
    assert state.in_flight == (second,)
    assert state.timeout_at is None
    assert state.is_running


def test_the_default_poll_interval_is_one_second() -> None:
    assert DEFAULT_POLL_INTERVAL == 1.0
    definition = definition_of(stepflow.named("f").wait_for("w", no))
    assert definition.table["start:f/wWaitFor"].delay == 1.0
    state, (first,) = stepflow.advance(definition, now=T0)
    state, _ = stepflow.advance(definition, state, (returned(first, False, T0 + 2),))
    assert state.wake_at == T0 + 2 + DEFAULT_POLL_INTERVAL


# -- wait_for: timeouts --------------------------------------------------------

TIMED = definition_of(
    stepflow.named("f").do("a", noop).wait_for("w", no, every=10, timeout=25).do("b", noop)
)


def _at_timed_wait(entered: float) -> tuple[stepflow.State, stepflow.Command]:
    state, (a,) = stepflow.advance(TIMED, now=T0)
    state, (w,) = stepflow.advance(TIMED, state, (returned(a, None, entered),))
    return state, w


def test_a_timed_wait_sets_its_deadline_when_the_step_is_entered() -> None:
    state, w = _at_timed_wait(entered=T0 + 7)
    assert w.kind == "wait_for"
    assert state.timeout_at == T0 + 7 + 25
    assert state.wake_at is None  # the first poll is due at once


def test_the_next_poll_of_a_timed_wait_is_clamped_to_its_deadline() -> None:
    state, w = _at_timed_wait(entered=T0)
    state, (w,) = stepflow.advance(TIMED, state, (returned(w, False, T0 + 10),))
    assert state.wake_at == T0 + 20
    state, _ = stepflow.advance(TIMED, state, (returned(w, False, T0 + 20),))
    assert state.wake_at == T0 + 25  # not T0 + 30: the deadline comes first
    assert state.timeout_at == T0 + 25


@pytest.mark.parametrize("late", [0.0, 0.5, 100.0])
def test_a_false_poll_at_or_after_the_deadline_fails_with_wait_timeout_error(late: float) -> None:
    state, w = _at_timed_wait(entered=T0)
    failed, commands = stepflow.advance(TIMED, state, (returned(w, False, T0 + 25 + late),))
    assert commands == ()
    assert failed.is_failed
    assert failed.error is not None
    assert failed.error.type == TIMEOUT_TYPE
    assert failed.error.step == "f/wWaitFor"
    assert failed.events == ("start:f/wWaitFor",)
    assert failed.in_flight == ()
    assert (failed.wake_at, failed.timeout_at) == (None, None)


def test_a_false_poll_just_before_the_deadline_polls_again() -> None:
    state, w = _at_timed_wait(entered=T0)
    state, _ = stepflow.advance(TIMED, state, (returned(w, False, T0 + 24.9),))
    assert state.is_running
    assert state.wake_at == T0 + 25


def test_a_true_poll_clears_the_deadline() -> None:
    state, w = _at_timed_wait(entered=T0)
    state, (b,) = stepflow.advance(TIMED, state, (returned(w, True, T0 + 3),))
    assert b.step == "f/b"
    assert state.timeout_at is None
    assert state.wake_at is None


RETRIED_WAIT = definition_of(
    stepflow.named("f").retry(
        "r", decline, stepflow.steps().wait_for("w", no, every=10, timeout=25)
    )
)


def test_a_retry_around_a_timed_wait_catches_the_timeout_and_restarts_with_a_new_deadline() -> None:
    state, (w,) = stepflow.advance(RETRIED_WAIT, now=T0)
    assert state.timeout_at == T0 + 25
    state, (ask,) = stepflow.advance(RETRIED_WAIT, state, (returned(w, False, T0 + 30),))
    assert ask.kind == "on_error"
    assert ask.step == "f/rRetry"
    assert isinstance(ask, CallHandler)
    assert ask.error is not None
    assert ask.error.type == TIMEOUT_TYPE
    state, (again,) = stepflow.advance(RETRIED_WAIT, state, (returned(ask, True, T0 + 31),))
    assert again.step == "f/rRetry/wWaitFor"
    assert state.timeout_at == T0 + 31 + 25


def test_on_error_receives_a_wait_timeout_error_instance_under_flow_run() -> None:
    seen: list[BaseException] = []

    def on_error(ctx: object, exc: BaseException) -> bool:
        seen.append(exc)
        return True

    # Entered at T0, polled at T0, +10, +20, and at the +25 deadline: four Falses.
    calls, cond = counting([False] * 4)
    clock = FakeClock(T0)
    flow = stepflow.new(
        stepflow.named("f").retry(
            "r", on_error, stepflow.steps().wait_for("w", cond, every=10, timeout=25)
        ),
        clock=clock,
    )
    state = flow.run()
    assert state.is_completed
    assert len(seen) == 1
    assert isinstance(seen[0], stepflow.WaitTimeoutError)
    assert isinstance(seen[0], TimeoutError)
    assert len(calls) == 5
    assert clock.now() == T0 + 25


# -- durations -------------------------------------------------------------------


def test_every_timeout_and_duration_accept_timedelta() -> None:
    definition = definition_of(
        stepflow.named("f")
        .wait_for("w", no, every=timedelta(seconds=90), timeout=timedelta(minutes=5))
        .sleep("s", timedelta(hours=1, milliseconds=500))
    )
    wait = definition.table["start:f/wWaitFor"]
    assert (wait.delay, wait.timeout) == (90.0, 300.0)
    assert definition.table["start:f/s"].delay == 3600.5


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        (stepflow.named("f").wait_for("w", no, every=-1), "f/wWaitFor"),
        (stepflow.named("f").wait_for("w", no, every=0), "f/wWaitFor"),
        (stepflow.named("f").wait_for("w", no, every=math.nan), "f/wWaitFor"),
        (stepflow.named("f").wait_for("w", no, every=math.inf), "f/wWaitFor"),
        (stepflow.named("f").wait_for("w", no, every="5"), "f/wWaitFor"),
        (stepflow.named("f").wait_for("w", no, every=True), "f/wWaitFor"),
        (stepflow.named("f").wait_for("w", no, every=timedelta(seconds=-1)), "f/wWaitFor"),
        (stepflow.named("f").wait_for("w", no, timeout=0), "f/wWaitFor"),
        (stepflow.named("f").wait_for("w", no, timeout=-5), "f/wWaitFor"),
        (stepflow.named("f").wait_for("w", no, timeout="1m"), "f/wWaitFor"),
        (stepflow.named("f").sleep("s", -1), "f/s"),
        (stepflow.named("f").sleep("s", math.nan), "f/s"),
        (stepflow.named("f").sleep("s", "1s"), "f/s"),
        (stepflow.named("f").sleep("s", None), "f/s"),
        (
            stepflow.named("f").retry("r", decline, stepflow.steps().wait_for("w", no, every=-0.5)),
            "f/rRetry/wWaitFor",
        ),
    ],
)
def test_bad_durations_are_definition_errors_naming_the_step_path(
    spec: stepflow.Steps, path: str
) -> None:
    with pytest.raises(stepflow.DefinitionError) as info:
        stepflow.new(spec)
    assert info.value.path == path
    assert path in str(info.value)


# -- no hot loop -----------------------------------------------------------------


@pytest.mark.parametrize("falses", [0, 1, 5, 40])
def test_flow_run_polls_a_wait_exactly_once_per_interval_with_no_hot_loop(falses: int) -> None:
    calls, cond = counting([False] * falses)
    clock = FakeClock(T0)
    flow = stepflow.new(stepflow.named("f").wait_for("w", cond, every=7), clock=clock)
    state = flow.run()
    assert state.is_completed
    assert len(calls) == falses + 1
    assert clock.now() == pytest.approx(T0 + 7 * falses)


# -- sleep -----------------------------------------------------------------------

SLEEP = definition_of(stepflow.named("f").do("a", noop).sleep("s", 60).do("b", noop))


def _at_sleep(entered: float) -> tuple[stepflow.State, Wake]:
    state, (a,) = stepflow.advance(SLEEP, now=T0)
    state, (wake,) = stepflow.advance(SLEEP, state, (returned(a, None, entered),))
    assert isinstance(wake, Wake)
    return state, wake


def test_reaching_a_sleep_issues_a_wake_at_entry_time_plus_duration() -> None:
    state, wake = _at_sleep(entered=T0 + 5)
    assert wake == Wake(2, "sleep", "f/s", "start:f/s", T0 + 65)
    assert state.wake_at == wake.at
    assert state.in_flight == (wake,)


def test_a_sleep_reached_first_counts_from_now() -> None:
    definition = definition_of(stepflow.named("f").sleep("s", 30))
    state, (wake,) = stepflow.advance(definition, now=T0)
    assert isinstance(wake, Wake)
    assert wake.at == state.wake_at == T0 + 30


def test_a_timer_fired_before_its_time_is_an_effect_error_and_changes_nothing() -> None:
    state, wake = _at_sleep(entered=T0)
    snapshot = stepflow.dumps(state)
    with pytest.raises(stepflow.EffectError) as info:
        stepflow.advance(SLEEP, state, (TimerFired(wake.id, wake.at - 0.001),))
    assert info.value.command_id == wake.id
    assert stepflow.dumps(state) == snapshot


@pytest.mark.parametrize("late", [0.0, 1.0, 86_400.0])
def test_a_timer_fired_at_or_after_its_time_moves_past_the_sleep(late: float) -> None:
    state, wake = _at_sleep(entered=T0)
    state, (b,) = stepflow.advance(SLEEP, state, (TimerFired(wake.id, wake.at + late),))
    assert b.step == "f/b"
    assert state.wake_at is None


def test_a_wake_answered_with_handler_returned_is_an_effect_error() -> None:
    state, wake = _at_sleep(entered=T0)
    with pytest.raises(stepflow.EffectError):
        stepflow.advance(SLEEP, state, (HandlerReturned(wake.id, None, wake.at),))


def test_a_call_handler_answered_with_timer_fired_is_an_effect_error() -> None:
    state, (a,) = stepflow.advance(SLEEP, now=T0)
    with pytest.raises(stepflow.EffectError):
        stepflow.advance(SLEEP, state, (TimerFired(a.id, T0 + 1),))


def test_a_sleep_deadline_survives_a_restart_unchanged() -> None:
    state, wake = _at_sleep(entered=T0)
    restarted = stepflow.loads(stepflow.dumps(state), SLEEP)
    assert restarted == state
    # A worker that restarts an hour later gets the very same timer back.
    again, commands = stepflow.advance(SLEEP, restarted, now=T0 + 3_600)
    assert again == state
    assert commands == (wake,)
    assert again.wake_at == T0 + 60


@pytest.mark.parametrize("path", ["start", "effect"])
def test_reaching_a_sleep_with_no_time_known_is_an_effect_error_asking_for_now(
    path: str,
) -> None:
    if path == "start":
        definition = definition_of(stepflow.named("f").sleep("s", 5))
        with pytest.raises(stepflow.EffectError, match="now="):
            stepflow.advance(definition, None)
    else:
        state, (a,) = stepflow.advance(SLEEP, now=T0)
        with pytest.raises(stepflow.EffectError, match="now="):
            stepflow.advance(SLEEP, state, (HandlerReturned(a.id, None),))


def test_a_zero_sleep_fires_at_its_entry_time() -> None:
    definition = definition_of(stepflow.named("f").sleep("s", 0))
    state, (wake,) = stepflow.advance(definition, now=T0)
    assert isinstance(wake, Wake)
    assert wake.at == state.wake_at == T0
    done, _ = stepflow.advance(definition, state, (TimerFired(wake.id, T0),))
    assert done.is_completed


def test_flow_apply_fires_a_timer_only_once_it_is_due() -> None:
    clock = FakeClock(T0)
    flow = stepflow.new(stepflow.named("f").sleep("s", 60).do("b", noop), clock=clock)
    state = flow.apply()
    assert state.wake_at == T0 + 60
    clock.advance(59.5)
    assert flow.apply(state) == state
    clock.advance(0.5)
    state = flow.apply(state)  # the timer fires: one step, so it stops at b
    assert state.events == ("start:f/b",)
    assert state.wake_at is None
    assert [c.kind for c in state.in_flight] == ["do"]
    assert flow.apply(state).is_completed


# -- RetryPolicy: backoff ----------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (RetryPolicy(initial_interval=1, jitter=0), [1.0, 2.0, 4.0, 8.0, 16.0]),
        (RetryPolicy(initial_interval=0.5, backoff_coefficient=3, jitter=0), [0.5, 1.5, 4.5]),
        (
            RetryPolicy(initial_interval=2, backoff_coefficient=2, max_interval=5, jitter=0),
            [2.0, 4.0, 5.0, 5.0],
        ),
        (RetryPolicy(initial_interval=3, backoff_coefficient=1, jitter=0), [3.0, 3.0, 3.0]),
        # The default cap is 100 times the initial interval.
        (
            RetryPolicy(initial_interval=1, backoff_coefficient=10, jitter=0),
            [1.0, 10.0, 100.0, 100.0, 100.0],
        ),
    ],
)
def test_backoff_without_jitter_grows_geometrically_up_to_its_cap(
    policy: RetryPolicy, expected: list[float]
) -> None:
    delays = [policy.backoff(n, "run", "f/rRetry") for n in range(1, len(expected) + 1)]
    assert delays == expected


def test_a_huge_attempt_number_backs_off_by_the_cap() -> None:
    policy = RetryPolicy(initial_interval=1, backoff_coefficient=2, jitter=0)
    assert policy.backoff(10_000, "run", "f/rRetry") == 100.0


def test_jittered_backoff_lies_between_base_times_one_minus_jitter_and_base() -> None:
    policy = RetryPolicy(max_attempts=None, initial_interval=2, jitter=0.3)
    plain = RetryPolicy(max_attempts=None, initial_interval=2, jitter=0)
    for attempt in range(1, 9):
        base = plain.backoff(attempt, "", "f/rRetry")
        for run in range(20):
            delay = policy.backoff(attempt, f"run-{run}", "f/rRetry")
            assert base * (1 - 0.3) <= delay <= base


def test_jitter_is_deterministic_per_run_scope_and_attempt_and_spread_across_runs() -> None:
    policy = RetryPolicy(initial_interval=10, jitter=0.5)
    assert policy.backoff(2, "run-a", "f/rRetry") == policy.backoff(2, "run-a", "f/rRetry")
    across_runs = {policy.backoff(2, f"run-{n}", "f/rRetry") for n in range(20)}
    assert len(across_runs) > 1
    across_scopes = {policy.backoff(2, "run-a", f"f/r{n}Retry") for n in range(20)}
    assert len(across_scopes) > 1


def test_the_run_id_seeds_the_backoff_of_a_restart() -> None:
    policy = RetryPolicy(max_attempts=3, initial_interval=10, jitter=0.5)
    definition = definition_of(
        stepflow.named("f").retry("r", policy, stepflow.steps().do("x", noop))
    )
    wakes = set()
    for run in range(20):
        run_id = f"run-{run}"
        state, (x,) = stepflow.advance(definition, initial_state(definition, run_id), now=T0)
        assert state.run_id == run_id
        state, _ = stepflow.advance(definition, state, (raised(x, T0 + 1),))
        assert state.wake_at == T0 + 1 + policy.backoff(1, run_id, "f/rRetry")
        wakes.add(state.wake_at)
    assert len(wakes) > 1


# -- RetryPolicy: attempts ----------------------------------------------------------


def test_max_attempts_counts_every_attempt_the_first_included() -> None:
    times, step = failing_times(failures=10)
    clock = FakeClock(T0)
    policy = RetryPolicy(max_attempts=3, initial_interval=1, jitter=0)
    flow = stepflow.new(
        stepflow.named("f").retry("r", policy, stepflow.steps().do("x", step)), clock=clock
    )
    with pytest.raises(stepflow.FlowFailed) as info:
        flow.run(None, clock)
    assert times == [T0, T0 + 1, T0 + 3]
    assert info.value.state.is_failed
    assert info.value.error.message == "failure 3"


class FatalError(Exception):
    """A failure that retrying cannot fix."""


@pytest.mark.parametrize(
    ("non_retryable", "error_type"),
    [
        ((ValueError,), ValueError),
        (("ValueError",), ValueError),
        ((FatalError,), FatalError),
        ((f"{__name__}.FatalError",), FatalError),
        (("FatalError",), FatalError),  # by class name, whatever the module
    ],
)
def test_non_retryable_errors_are_never_retried(
    non_retryable: tuple[object, ...], error_type: type[Exception]
) -> None:
    calls: list[int] = []

    def step(ctx: object) -> None:
        calls.append(1)
        raise error_type("fatal")

    policy = RetryPolicy(max_attempts=5, initial_interval=1, non_retryable=non_retryable)
    flow = stepflow.new(
        stepflow.named("f").retry("r", policy, stepflow.steps().do("x", step)),
        clock=FakeClock(T0),
    )
    with pytest.raises(stepflow.FlowFailed) as info:
        flow.run()
    assert calls == [1]
    assert isinstance(info.value.__cause__, error_type)


@pytest.mark.parametrize(
    ("non_retryable", "error_type", "retried"),
    [
        # A name without a dot matches the recorded type's class name, any module.
        ("InsufficientFundsError", "__main__.InsufficientFundsError", False),
        ("InsufficientFundsError", "bank.errors.InsufficientFundsError", False),
        ("InsufficientFundsError", "InsufficientFundsError", False),
        ("Inner", "bank.Outer.Inner", False),  # the last dotted part of a qualname
        ("InsufficientFundsError", "bank.InsufficientFundsErrorV2", True),
        ("FundsError", "bank.InsufficientFundsError", True),  # whole names only
        ("Outer", "bank.Outer.Inner", True),
        # A name with a dot matches the recorded type exactly.
        ("bank.errors.InsufficientFundsError", "bank.errors.InsufficientFundsError", False),
        ("errors.InsufficientFundsError", "bank.errors.InsufficientFundsError", True),
        ("bank.errors.InsufficientFundsError", "__main__.InsufficientFundsError", True),
        ("bank.errors.InsufficientFundsError", "InsufficientFundsError", True),
    ],
)
def test_non_retryable_short_names_match_by_class_name_dotted_ones_exactly(
    non_retryable: str, error_type: str, retried: bool
) -> None:
    policy = RetryPolicy(
        max_attempts=5, initial_interval=1, jitter=0, non_retryable=[non_retryable]
    )
    assert policy.allows(1, error_type) is retried
    definition = definition_of(
        stepflow.named("f").retry("r", policy, stepflow.steps().do("x", noop))
    )
    state, (x,) = stepflow.advance(definition, now=T0)
    state, _ = stepflow.advance(definition, state, (raised(x, T0, error_type),))
    assert state.is_running is retried
    assert state.is_failed is not retried
    if not retried:
        assert state.error is not None
        assert state.error.type == error_type


class InsufficientFundsError(Exception):
    """Recorded under this module's name, as a user's error is under ``__main__``."""


def test_a_users_error_named_by_its_class_name_alone_is_never_retried() -> None:
    calls: list[int] = []

    def withdraw(ctx: object) -> None:
        calls.append(1)
        raise InsufficientFundsError("balance 10, asked 25")

    policy = RetryPolicy(
        max_attempts=5, initial_interval=1, non_retryable=["InsufficientFundsError"]
    )
    flow = stepflow.new(
        stepflow.named("bank/v1").retry("pay", policy, stepflow.steps().do("withdraw", withdraw)),
        clock=FakeClock(T0),
    )
    with pytest.raises(stepflow.FlowFailed) as info:
        flow.run()
    assert calls == [1]
    assert info.value.error.type == f"{__name__}.InsufficientFundsError"


def test_a_retryable_error_next_to_a_non_retryable_one_is_retried() -> None:
    times, step = failing_times(failures=1)
    clock = FakeClock(T0)
    policy = RetryPolicy(max_attempts=5, initial_interval=1, jitter=0, non_retryable=(KeyError,))
    flow = stepflow.new(
        stepflow.named("f").retry("r", policy, stepflow.steps().do("x", step)), clock=clock
    )
    state = flow.run(None, clock)
    assert state.is_completed
    assert len(times) == 2


POLICY3 = RetryPolicy(max_attempts=3, initial_interval=4, jitter=0)
RETRY_POLICY = definition_of(
    stepflow.named("f").retry("r", POLICY3, stepflow.steps().do("x", noop)).do("after", noop)
)


def test_attempts_are_kept_in_the_state_and_survive_a_restart() -> None:
    scope = "f/rRetry"
    state, (x,) = stepflow.advance(RETRY_POLICY, now=T0)
    assert scope not in state.attempts
    state, (x,) = stepflow.advance(RETRY_POLICY, state, (raised(x, T0),))
    assert state.attempts[scope] == 1
    # The worker restarts: the attempt count comes back with the state.
    state = stepflow.loads(stepflow.dumps(state), RETRY_POLICY)
    assert state.attempts[scope] == 1
    state, (x,) = stepflow.advance(RETRY_POLICY, state, (raised(x, T0 + 4),))
    assert state.attempts[scope] == 2
    assert state.wake_at == T0 + 4 + 8
    state = stepflow.loads(stepflow.dumps(state), RETRY_POLICY)
    failed, _ = stepflow.advance(RETRY_POLICY, state, (raised(x, T0 + 12),))
    assert failed.is_failed


def test_attempts_are_dropped_once_the_position_leaves_the_retry_group() -> None:
    state, (x,) = stepflow.advance(RETRY_POLICY, now=T0)
    state, (x,) = stepflow.advance(RETRY_POLICY, state, (raised(x, T0),))
    assert dict(state.attempts) == {"f/rRetry": 1}
    state, (after,) = stepflow.advance(RETRY_POLICY, state, (returned(x, None, T0 + 5),))
    assert after.step == "f/after"
    assert dict(state.attempts) == {}
    assert state.wake_at is None


def test_an_outer_retry_restart_gives_the_inner_retry_a_fresh_count_of_attempts() -> None:
    # outer: 3 passes; inner: 2 attempts per pass. The inner group is the outer's
    # whole body, so an outer restart re-enters the inner group directly.
    inner = RetryPolicy(max_attempts=2, initial_interval=0, jitter=0)
    outer = RetryPolicy(max_attempts=3, initial_interval=0, jitter=0)
    definition = definition_of(
        stepflow.named("f").retry(
            "outer", outer, stepflow.steps().retry("inner", inner, stepflow.steps().do("x", noop))
        )
    )
    state, (x,) = stepflow.advance(definition, now=T0)
    runs = 1
    while state.is_running:
        state, commands = stepflow.advance(definition, state, (raised(x, T0),))
        if commands:
            (x,) = commands
            runs += 1
    assert runs == 3 * 2


# -- policy and on_error together ------------------------------------------------------


def _combined(
    policy: RetryPolicy, answer: bool
) -> tuple[stepflow.Flow, list[BaseException], list[float]]:
    asked: list[BaseException] = []

    def on_error(ctx: object, exc: BaseException) -> bool:
        asked.append(exc)
        return answer

    times, step = failing_times(failures=10)
    flow = stepflow.new(
        stepflow.named("f").retry("r", policy, stepflow.steps().do("x", step), on_error=on_error)
    )
    return flow, asked, times


def test_the_policy_is_checked_before_on_error_so_exhausted_attempts_ask_nothing() -> None:
    clock = FakeClock(T0)
    flow, asked, times = _combined(RetryPolicy(max_attempts=2, jitter=0), answer=True)
    with pytest.raises(stepflow.FlowFailed):
        flow.with_clock(clock).run(None, clock)
    assert len(times) == 2
    assert len(asked) == 1  # asked after attempt 1 only


def test_on_error_false_passes_the_error_outward_with_attempts_left() -> None:
    clock = FakeClock(T0)
    flow, asked, times = _combined(RetryPolicy(max_attempts=5, jitter=0), answer=False)
    with pytest.raises(stepflow.FlowFailed) as info:
        flow.with_clock(clock).run(None, clock)
    assert len(times) == 1
    assert len(asked) == 1
    assert info.value.error.message == "failure 1"


def test_on_error_true_restarts_after_the_policys_backoff() -> None:
    policy = RetryPolicy(max_attempts=4, initial_interval=5, jitter=0)
    definition = definition_of(
        stepflow.named("f").retry("r", policy, stepflow.steps().do("x", noop), on_error=decline)
    )
    state, (x,) = stepflow.advance(definition, now=T0)
    state, (ask,) = stepflow.advance(definition, state, (raised(x, T0 + 1),))
    assert ask.kind == "on_error"
    assert state.wake_at is None
    state, (x,) = stepflow.advance(definition, state, (returned(ask, True, T0 + 1),))
    assert x.step == "f/rRetry/x"
    assert state.wake_at == T0 + 1 + 5
    state, (ask,) = stepflow.advance(definition, state, (raised(x, T0 + 6),))
    state, _ = stepflow.advance(definition, state, (returned(ask, True, T0 + 6),))
    assert state.wake_at == T0 + 6 + 10


def test_a_policy_only_retry_restarts_at_once_without_an_on_error_command() -> None:
    state, (x,) = stepflow.advance(RETRY_POLICY, now=T0)
    state, commands = stepflow.advance(RETRY_POLICY, state, (raised(x, T0 + 2),))
    assert [(c.kind, c.step) for c in commands] == [("do", "f/rRetry/x")]
    assert commands[0].id == x.id + 1
    assert state.wake_at == T0 + 2 + 4


def test_a_retry_with_neither_policy_nor_on_error_is_a_definition_error() -> None:
    bare = stepflow.Steps("f", (Retry("r", None, stepflow.steps().do("x", noop)),))
    with pytest.raises(stepflow.DefinitionError) as info:
        stepflow.new(bare)
    assert info.value.path == "f/rRetry"


def test_a_retry_given_two_on_error_handlers_is_a_definition_error() -> None:
    with pytest.raises(stepflow.DefinitionError) as info:
        stepflow.named("f").retry("r", decline, stepflow.steps().do("x", noop), on_error=decline)
    assert info.value.path == "r"


# -- fingerprints ------------------------------------------------------------------


def test_the_fingerprint_changes_with_every_timing_and_policy_field() -> None:
    def flow(
        every: float = 1,
        timeout: float | None = None,
        duration: float = 5,
        policy: RetryPolicy | None = None,
    ) -> str:
        body = stepflow.steps().do("x", noop)
        spec = (
            stepflow.named("f")
            .wait_for("w", no, every=every, timeout=timeout)
            .sleep("s", duration)
            .retry("r", policy or RetryPolicy(), body, on_error=decline)
        )
        return definition_of(spec).fingerprint

    variants = [
        flow(),
        flow(every=2),
        flow(timeout=30),
        flow(timeout=31),
        flow(duration=6),
        flow(policy=RetryPolicy(max_attempts=4)),
        flow(policy=RetryPolicy(initial_interval=2)),
        flow(policy=RetryPolicy(backoff_coefficient=3)),
        flow(policy=RetryPolicy(max_interval=9)),
        flow(policy=RetryPolicy(jitter=0.1)),
        flow(policy=RetryPolicy(non_retryable=(KeyError,))),
    ]
    assert len(set(variants)) == len(variants)
    assert flow() == flow(every=timedelta(seconds=1))  # type: ignore[arg-type]


# -- resume ------------------------------------------------------------------------

RESUMABLE = definition_of(
    stepflow.named("f")
    .do("a", noop)
    .retry(
        "r",
        RetryPolicy(max_attempts=2, initial_interval=1, jitter=0),
        stepflow.steps().do("x", noop),
    )
)


def _failed_inside_retry() -> stepflow.State:
    state, (a,) = stepflow.advance(RESUMABLE, now=T0)
    state, (x,) = stepflow.advance(RESUMABLE, state, (returned(a, {"kept": True}, T0),))
    state, (x,) = stepflow.advance(RESUMABLE, state, (raised(x, T0 + 1),))
    failed, _ = stepflow.advance(RESUMABLE, state, (raised(x, T0 + 2),))
    assert failed.is_failed
    assert dict(failed.attempts) == {"f/rRetry": 1}
    return failed


def test_resume_sends_a_failed_run_back_to_its_failed_step_with_a_new_command() -> None:
    failed = _failed_inside_retry()
    state, (again,) = stepflow.resume(RESUMABLE, failed, now=T0 + 100)
    assert state.is_running
    assert state.error is None
    assert again == CallHandler(failed.seq + 1, "do", "f/rRetry/x", "start:f/rRetry/x", None)
    assert state.in_flight == (again,)
    assert state.events == failed.events
    assert dict(state.attempts) == {}
    assert state.outputs == failed.outputs
    assert state.outputs["f/a"] == {"kept": True}
    # The run continues with a full set of attempts.
    state, (retried,) = stepflow.advance(RESUMABLE, state, (raised(again, T0 + 101),))
    assert retried.step == "f/rRetry/x"
    assert dict(state.attempts) == {"f/rRetry": 1}


def test_resume_of_a_timed_wait_sets_a_fresh_deadline_from_now() -> None:
    state, w = _at_timed_wait(entered=T0)
    failed, _ = stepflow.advance(TIMED, state, (returned(w, False, T0 + 25),))
    state, (again,) = stepflow.resume(TIMED, failed, now=T0 + 500)
    assert again.kind == "wait_for"
    assert again.id == failed.seq + 1
    assert state.timeout_at == T0 + 525


@pytest.mark.parametrize("status", ["running", "completed"])
def test_resume_of_a_run_that_has_not_failed_is_a_state_error(status: str) -> None:
    state, (a,) = stepflow.advance(WAIT, now=T0)
    if status == "completed":
        state, _ = stepflow.advance(WAIT, state, (returned(a, True, T0),))
        assert state.is_completed
    with pytest.raises(stepflow.StateError, match=status):
        stepflow.resume(WAIT, state, now=T0)


# -- the drivers in virtual time --------------------------------------------------------


def test_flow_run_drives_sleep_wait_and_backoff_to_completion_in_virtual_time() -> None:
    clock = FakeClock(T0)
    polls, ready = counting([False, False])
    times, send = failing_times(failures=2)
    policy = RetryPolicy(max_attempts=3, initial_interval=2, backoff_coefficient=3, jitter=0)
    flow = stepflow.new(
        stepflow.named("mix/v1")
        .sleep("pause", 60)
        .wait_for("ready", ready, every=5, timeout=60)
        .retry("push", policy, stepflow.steps().do("send", send)),
        clock=clock,
    )
    state = flow.run(None, clock)
    assert state.is_completed
    assert len(polls) == 3
    # sleep 60, two more polls 5 s apart, then backoffs of 2 and 6 seconds.
    assert times == [T0 + 70, T0 + 72, T0 + 78]
    assert clock.now() == T0 + 78
    assert state.outputs["mix/v1/pushRetry/send"] == "done"
    assert dict(state.attempts) == {}
    assert (state.wake_at, state.timeout_at) == (None, None)
