"""The pure advance: effects, re-issues, failures as states, retries, outputs."""

from __future__ import annotations

import pytest

import stepflow
from stepflow import ErrorRecord, HandlerRaised, HandlerReturned


def noop(ctx: object) -> None:
    return None


def no(ctx: object, exc: BaseException | None = None) -> bool:
    return False


def definition_of(spec: stepflow.Steps) -> stepflow.FlowDefinition:
    return stepflow.new(spec).definition


TWO_STEPS = definition_of(stepflow.named("f").do("a", noop).do("b", noop))


def raised(command: stepflow.CallHandler, message: str = "boom") -> HandlerRaised:
    return HandlerRaised(command.id, ErrorRecord("RuntimeError", message, command.step))


def test_a_new_run_issues_its_first_command() -> None:
    state, commands = stepflow.advance(TWO_STEPS)
    assert commands == (stepflow.CallHandler(1, "do", "f/a", "start:f/a", None),)
    assert state.events == ("start:f/a",)
    assert state.in_flight == commands
    assert state.seq == 1
    assert state.status == "running"
    assert state.flow == "f"
    assert state.fingerprint == TWO_STEPS.fingerprint


def test_a_result_takes_the_static_hop_and_issues_the_next_command_in_one_call() -> None:
    state, (a,) = stepflow.advance(TWO_STEPS)
    state, (b,) = stepflow.advance(TWO_STEPS, state, (HandlerReturned(a.id, None),))
    assert b == stepflow.CallHandler(2, "do", "f/b", "start:f/b", None)
    state, commands = stepflow.advance(TWO_STEPS, state, (HandlerReturned(b.id, None),))
    assert commands == ()
    assert state.is_completed
    assert state.events == ("completed:f",)


def test_a_state_with_its_command_in_flight_is_returned_equal_with_the_same_command() -> None:
    state, commands = stepflow.advance(TWO_STEPS)
    again, reissued = stepflow.advance(TWO_STEPS, state)
    assert again == state
    assert reissued == commands
    assert reissued[0].key == commands[0].key == "f/a#1"


@pytest.mark.parametrize(
    ("effects", "error"),
    [
        ((HandlerReturned(99, None),), stepflow.UnknownEffectError),
        ((HandlerReturned(1, None), HandlerReturned(1, None)), stepflow.DuplicateEffectError),
        (("not an effect",), stepflow.EffectError),
    ],
)
def test_bad_effects_get_a_typed_error_and_change_nothing(
    effects: tuple[stepflow.Effect, ...], error: type[Exception]
) -> None:
    state, _ = stepflow.advance(TWO_STEPS)
    snapshot = stepflow.dumps(state)
    with pytest.raises(error):
        stepflow.advance(TWO_STEPS, state, effects)
    assert stepflow.dumps(state) == snapshot


def test_a_late_effect_for_an_answered_command_is_rejected() -> None:
    state, (a,) = stepflow.advance(TWO_STEPS)
    state, _ = stepflow.advance(TWO_STEPS, state, (HandlerReturned(a.id, None),))
    with pytest.raises(stepflow.LateEffectError) as info:
        stepflow.advance(TWO_STEPS, state, (HandlerReturned(a.id, None),))
    assert info.value.command_id == a.id
    assert "already answered" in str(info.value)


def test_effects_for_a_finished_run_are_late() -> None:
    state, (a,) = stepflow.advance(TWO_STEPS)
    state, (b,) = stepflow.advance(TWO_STEPS, state, (HandlerReturned(a.id, None),))
    done, _ = stepflow.advance(TWO_STEPS, state, (HandlerReturned(b.id, None),))
    with pytest.raises(stepflow.LateEffectError):
        stepflow.advance(TWO_STEPS, done, (HandlerReturned(b.id, None),))


def test_a_failure_outside_any_retry_is_a_failed_state_that_keeps_position_and_error() -> None:
    state, (a,) = stepflow.advance(TWO_STEPS)
    failed, commands = stepflow.advance(TWO_STEPS, state, (raised(a),))
    assert commands == ()
    assert failed.status == "failed"
    assert failed.events == ("start:f/a",)
    assert failed.error == ErrorRecord("RuntimeError", "boom", "f/a")
    assert failed.in_flight == ()
    assert failed.seq == state.seq
    # Advancing a failed state changes nothing.
    assert stepflow.advance(TWO_STEPS, failed) == (failed, ())


def test_do_outputs_are_kept_frozen_under_the_step_path() -> None:
    state, (a,) = stepflow.advance(TWO_STEPS)
    value = {"pr": 42, "labels": ["x"]}
    state, _ = stepflow.advance(TWO_STEPS, state, (HandlerReturned(a.id, value),))
    value["pr"] = 0  # the caller's object is not shared with the state
    assert state.outputs["f/a"]["pr"] == 42
    assert list(state.outputs["f/a"]["labels"]) == ["x"]


COUNTING = definition_of(
    stepflow.named("f").loop_until("l", no, stepflow.steps().do("n", noop).do("m", noop))
)


def _answer(
    definition: stepflow.FlowDefinition, state: stepflow.State, step: str, value: object
) -> stepflow.State:
    """Answer the command in flight for ``step`` with ``value``."""
    (command,) = [c for c in state.in_flight if c.step == step]
    state, _ = stepflow.advance(definition, state, (HandlerReturned(command.id, value),))
    return state


def test_a_do_returning_none_keeps_the_output_of_its_earlier_pass() -> None:
    n, m, loop = "f/lLoopUntil/steps/n", "f/lLoopUntil/steps/m", "f/lLoopUntil"
    state, _ = stepflow.advance(COUNTING)
    for value, kept in [(1, 1), (None, 1), (2, 2), (None, 2), (None, 2), (3, 3)]:
        state = _answer(COUNTING, state, n, value)
        assert state.outputs[n] == kept
        state = _answer(COUNTING, state, m, None)
        assert m not in state.outputs  # None, and nothing earlier: still no output
        state = _answer(COUNTING, state, loop, False)
    assert state.outputs[n] == 3


def test_a_do_returning_none_after_a_retry_restart_keeps_the_earlier_output() -> None:
    policy = stepflow.RetryPolicy(max_attempts=3, initial_interval=0, jitter=0)
    definition = definition_of(
        stepflow.named("f").retry("r", policy, stepflow.steps().do("a", noop).do("b", noop))
    )
    a = "f/rRetry/a"
    state, _ = stepflow.advance(definition, now=0.0)
    state = _answer(definition, state, a, {"id": 7})
    (b,) = state.in_flight
    state, _ = stepflow.advance(definition, state, (raised(b),))
    assert dict(state.attempts) == {"f/rRetry": 1}  # restarted at a
    state = _answer(definition, state, a, None)
    assert state.outputs[a] == {"id": 7}


def test_a_do_returning_none_in_a_parallel_branch_keeps_its_output_and_branch_result() -> None:
    body = stepflow.steps().loop_until("l", no, stepflow.steps().do("n", noop))
    definition = definition_of(
        stepflow.named("f").parallel("p", {"x": body, "y": stepflow.steps().do("m", noop)})
    )
    n, loop = "f/pParallel/x/lLoopUntil/steps/n", "f/pParallel/x/lLoopUntil"
    state, _ = stepflow.advance(definition, now=0.0)
    state = _answer(definition, state, n, 1)
    state = _answer(definition, state, loop, False)
    state = _answer(definition, state, n, None)
    assert state.outputs[n] == 1
    state = _answer(definition, state, loop, True)
    state = _answer(definition, state, "f/pParallel/y/m", None)
    assert state.is_completed
    assert state.outputs[n] == 1
    assert state.outputs["f/pParallel"] == {"x": 1, "y": None}


def test_a_non_json_output_is_a_recorded_failure_with_a_clear_message() -> None:
    state, (a,) = stepflow.advance(TWO_STEPS)
    failed, _ = stepflow.advance(TWO_STEPS, state, (HandlerReturned(a.id, {"when": object()}),))
    assert failed.is_failed
    assert failed.error is not None
    assert failed.error.type == "stepflow.errors.HandlerResultError"
    assert "$.when" in failed.error.message
    assert "not JSON" in failed.error.message


def test_a_condition_that_returns_a_non_bool_is_a_recorded_failure() -> None:
    definition = definition_of(stepflow.named("f").wait_for("w", no))
    state, (w,) = stepflow.advance(definition)
    failed, _ = stepflow.advance(definition, state, (HandlerReturned(w.id, "yes"),))
    assert failed.error is not None
    assert "must return True or False" in failed.error.message


def test_a_false_wait_for_polls_again_with_a_new_command() -> None:
    definition = definition_of(stepflow.named("f").wait_for("w", no))
    state, (first,) = stepflow.advance(definition)
    state, (second,) = stepflow.advance(definition, state, (HandlerReturned(first.id, False),))
    assert second.event == first.event == "start:f/wWaitFor"
    assert second.id == first.id + 1
    state, commands = stepflow.advance(definition, state, (HandlerReturned(second.id, True),))
    assert state.is_completed
    assert commands == ()


RETRY = definition_of(
    stepflow.named("f").retry(
        "outer",
        no,
        stepflow.steps().do("before", noop).retry("inner", no, stepflow.steps().do("x", noop)),
    )
)


def _to_x(definition: stepflow.FlowDefinition) -> tuple[stepflow.State, stepflow.CallHandler]:
    state, (before,) = stepflow.advance(definition)
    state, (x,) = stepflow.advance(definition, state, (HandlerReturned(before.id, None),))
    return state, x


def test_a_failure_asks_the_innermost_retry_first_with_the_error() -> None:
    state, x = _to_x(RETRY)
    state, (ask,) = stepflow.advance(RETRY, state, (raised(x),))
    assert ask.kind == "on_error"
    assert ask.step == "f/outerRetry/innerRetry"
    assert ask.event == x.event
    assert ask.error == ErrorRecord("RuntimeError", "boom", x.step)
    assert state.events == (x.event,)


def test_on_error_true_restarts_the_group_from_its_start() -> None:
    state, x = _to_x(RETRY)
    state, (ask,) = stepflow.advance(RETRY, state, (raised(x),))
    state, (again,) = stepflow.advance(RETRY, state, (HandlerReturned(ask.id, True),))
    assert again.step == "f/outerRetry/innerRetry/x"


def test_on_error_false_passes_the_original_error_to_the_enclosing_retry() -> None:
    state, x = _to_x(RETRY)
    state, (inner,) = stepflow.advance(RETRY, state, (raised(x),))
    state, (outer,) = stepflow.advance(RETRY, state, (HandlerReturned(inner.id, False),))
    assert outer.step == "f/outerRetry"
    assert outer.error == inner.error
    # The outer retry restarts its own, larger group.
    state, (restart,) = stepflow.advance(RETRY, state, (HandlerReturned(outer.id, True),))
    assert restart.step == "f/outerRetry/before"


def test_an_exception_from_on_error_replaces_the_error_and_bubbles_out() -> None:
    state, x = _to_x(RETRY)
    state, (inner,) = stepflow.advance(RETRY, state, (raised(x),))
    state, (outer,) = stepflow.advance(RETRY, state, (raised(inner, "handler broke"),))
    assert outer.error == ErrorRecord("RuntimeError", "handler broke", "f/outerRetry/innerRetry")
    failed, _ = stepflow.advance(RETRY, state, (HandlerReturned(outer.id, False),))
    assert failed.error == outer.error
    assert failed.events == (x.event,)


def test_an_on_error_that_returns_a_non_bool_fails_like_one_that_raised() -> None:
    state, x = _to_x(RETRY)
    state, (inner,) = stepflow.advance(RETRY, state, (raised(x),))
    state, (outer,) = stepflow.advance(RETRY, state, (HandlerReturned(inner.id, "retry please"),))
    assert outer.error is not None
    assert outer.error.type == "stepflow.errors.HandlerResultError"


def test_a_state_of_another_flow_is_rejected() -> None:
    other = definition_of(stepflow.named("g").do("a", noop))
    state, _ = stepflow.advance(other)
    with pytest.raises(stepflow.FlowMismatchError):
        stepflow.advance(TWO_STEPS, state)


def test_a_state_of_a_compatible_older_definition_is_adopted() -> None:
    old = definition_of(stepflow.named("f").do("a", noop))
    state, _ = stepflow.advance(old)
    adopted, (command,) = stepflow.advance(TWO_STEPS, state)
    assert adopted.fingerprint == TWO_STEPS.fingerprint
    assert command.step == "f/a"


def test_a_state_of_an_incompatible_older_definition_is_rejected() -> None:
    old = definition_of(stepflow.named("f").do("gone", noop))
    state, _ = stepflow.advance(old)
    with pytest.raises(stepflow.IncompatibleDefinition) as info:
        stepflow.advance(TWO_STEPS, state)
    assert "start:f/gone" in info.value.events
