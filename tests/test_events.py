"""Events from outside a run: ``wait_event`` and the mailbox (stepflow.core.events)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyrsistent import pmap

import stepflow
from stepflow import (
    AwaitEvent,
    CallHandler,
    DefinitionError,
    EffectError,
    EventReceived,
    HandlerRaised,
    HandlerReturned,
    MailboxFullError,
    State,
    TimerFired,
    advance,
    named,
    new,
    steps,
)
from stepflow.core.advance import initial_state
from stepflow.core.events import MAILBOX_LIMIT, mailbox_room, resting
from stepflow.testing import Returns, TimesOut, simulate

T0 = 1_000.0


def _done(_: Any) -> str:
    return "done"


APPROVAL = new(
    named("approve/v1")
    .do("ask", _done)
    .wait_event("approved", timeout=60, on_timeout=steps().do("escalate", _done))
    .do("ship", _done)
)
UNTIMED = new(named("signal/v1").wait_event("go").do("after", _done))
WAIT = "approve/v1/approvedWaitEvent"


def _at_wait(flow: stepflow.Flow = APPROVAL) -> tuple[State, AwaitEvent]:
    state, (ask,) = advance(flow.definition, None, now=T0)
    state, (waiting,) = advance(flow.definition, state, [HandlerReturned(ask.id, "done", T0 + 1)])
    assert isinstance(waiting, AwaitEvent)
    return state, waiting


def test_a_wait_rests_with_an_await_event_command_timed_by_its_timeout() -> None:
    state, waiting = _at_wait()
    assert waiting == AwaitEvent(2, "wait_event", WAIT, f"start:{WAIT}", T0 + 61, "approved")
    assert waiting.key == f"{WAIT}#2"
    assert state.wake_at == T0 + 61
    assert not resting(state)  # a timeout is a time to wake at


def test_an_untimed_wait_rests_until_an_event_and_costs_nothing() -> None:
    state, (waiting,) = advance(UNTIMED.definition, None, now=T0)
    assert waiting == AwaitEvent(
        1, "wait_event", "signal/v1/goWaitEvent", waiting.event, None, "go"
    )
    assert state.wake_at is None
    assert resting(state)
    # Advancing without effects changes nothing: no poll, no new command.
    assert advance(UNTIMED.definition, state, now=T0 + 3600) == (state, (waiting,))


def test_an_event_answers_the_wait_and_its_payload_is_the_steps_output() -> None:
    state, _ = _at_wait()
    after, (ship,) = advance(
        APPROVAL.definition, state, [EventReceived("approved", {"by": "ana"}, T0 + 5)]
    )
    assert after.outputs[WAIT] == {"by": "ana"}
    assert ship.step == "approve/v1/ship"
    assert after.mailbox == ()


def test_a_timeout_runs_the_on_timeout_steps_and_goes_on_after_the_wait() -> None:
    state, waiting = _at_wait()
    after, (escalate,) = advance(APPROVAL.definition, state, [TimerFired(waiting.id, T0 + 61)])
    assert escalate.step == f"{WAIT}/onTimeout/escalate"
    after, (ship,) = advance(
        APPROVAL.definition, after, [HandlerReturned(escalate.id, "x", T0 + 62)]
    )
    assert ship.step == "approve/v1/ship"
    assert WAIT not in after.outputs


def test_a_timeout_without_on_timeout_fails_the_step_and_a_retry_catches_it() -> None:
    policy = stepflow.RetryPolicy(max_attempts=2, initial_interval=0)
    flow = new(named("w/v1").retry("again", policy, steps().wait_event("go", timeout=5)))
    state, (first,) = advance(flow.definition, None, now=T0)
    state, (second,) = advance(flow.definition, state, [TimerFired(first.id, T0 + 5)])
    assert isinstance(second, AwaitEvent)
    assert second.at == T0 + 10
    failed, commands = advance(flow.definition, state, [TimerFired(second.id, T0 + 10)])
    assert commands == ()
    assert failed.is_failed
    assert failed.error is not None
    assert failed.error.type == "stepflow.errors.WaitTimeoutError"
    assert "no event 'go'" in failed.error.message


def test_an_early_timer_is_refused() -> None:
    state, waiting = _at_wait()
    with pytest.raises(EffectError, match="fires at"):
        advance(APPROVAL.definition, state, [TimerFired(waiting.id, T0 + 60)])


def test_an_event_sent_before_the_wait_waits_in_the_mailbox_and_is_taken_on_arrival() -> None:
    state, (ask,) = advance(APPROVAL.definition, None, now=T0)
    early, commands = advance(APPROVAL.definition, state, [EventReceived("approved", "yes", T0)])
    assert commands == (ask,)  # the do in flight is untouched
    assert early.mailbox == (("approved", "yes"),)
    assert mailbox_room(early) == MAILBOX_LIMIT - 1
    # It survives a save and a reload (codec format 4).
    assert stepflow.loads(stepflow.dumps(early), APPROVAL.definition) == early
    after, (ship,) = advance(APPROVAL.definition, early, [HandlerReturned(ask.id, "d", T0 + 1)])
    assert ship.step == "approve/v1/ship"  # no command was issued for the wait
    assert after.outputs[WAIT] == "yes"
    assert after.mailbox == ()


def test_events_are_taken_first_in_first_out_per_name() -> None:
    flow = new(
        named("two/v1").wait_event("x").wait_event("y").steps("again", steps().wait_event("x"))
    )
    events = [
        EventReceived("x", 1, T0),
        EventReceived("y", "a", T0),
        EventReceived("x", 2, T0),
    ]
    state, commands = advance(flow.definition, None, events, now=T0)
    assert state.is_completed
    assert commands == ()
    assert state.outputs["two/v1/xWaitEvent"] == 1
    assert state.outputs["two/v1/yWaitEvent"] == "a"
    assert state.outputs["two/v1/again/xWaitEvent"] == 2


def test_an_event_no_step_waits_for_is_not_kept() -> None:
    state, _ = _at_wait()
    after, commands = advance(APPROVAL.definition, state, [EventReceived("nobody", 1, T0)])
    assert after == state
    assert commands == state.in_flight


def test_a_none_payload_keeps_the_earlier_output() -> None:
    flow = new(named("loop/v1").loop_until("l", lambda c: True, steps().wait_event("tick")))
    state, _ = advance(flow.definition, None, [EventReceived("tick", 5, T0)], now=T0)
    step = "loop/v1/lLoopUntil/steps/tickWaitEvent"
    assert state.outputs[step] == 5
    (until,) = state.in_flight
    state, (_again,) = advance(flow.definition, state, [HandlerReturned(until.id, False, T0)])
    state, _ = advance(flow.definition, state, [EventReceived("tick", None, T0 + 1)])
    assert state.outputs[step] == 5


def test_the_mailbox_is_bounded_and_a_full_one_refuses_the_whole_batch() -> None:
    state, (_ask,) = advance(APPROVAL.definition, None, now=T0)
    full, _ = advance(
        APPROVAL.definition, state, [EventReceived("approved", i, T0) for i in range(MAILBOX_LIMIT)]
    )
    assert mailbox_room(full) == 0
    with pytest.raises(MailboxFullError, match="limit of 100"):
        advance(APPROVAL.definition, full, [EventReceived("approved", "one more", T0)])


@pytest.mark.parametrize(
    ("event", "message"),
    [
        (EventReceived("", 1, T0), "non-empty"),
        (EventReceived("a:b", 1, T0), "without ':'"),
        (EventReceived("approved", float("nan"), T0), "JSON cannot represent"),
        (EventReceived("approved", object(), T0), "object"),
    ],
)
def test_a_malformed_event_is_refused_and_nothing_changes(
    event: EventReceived, message: str
) -> None:
    state, _ = _at_wait()
    with pytest.raises(EffectError, match=message):
        advance(APPROVAL.definition, state, [event])


def test_a_finished_run_refuses_events() -> None:
    state, _ = advance(UNTIMED.definition, None, [EventReceived("go", None, T0)], now=T0)
    (after,) = state.in_flight
    done, _ = advance(UNTIMED.definition, state, [HandlerReturned(after.id, None, T0)])
    assert done.is_completed
    with pytest.raises(EffectError, match="completed run"):
        advance(UNTIMED.definition, done, [EventReceived("go", None, T0)])


def test_nothing_executes_a_wait_so_it_cannot_raise() -> None:
    state, waiting = _at_wait()
    raised = HandlerRaised(waiting.id, stepflow.ErrorRecord("E", "m", WAIT), None, T0)
    with pytest.raises(EffectError, match="cannot answer wait_event"):
        advance(APPROVAL.definition, state, [raised])
    with pytest.raises(stepflow.InterpreterError, match="no timeout"):
        UNTIMED.interpreter.fire(advance(UNTIMED.definition, None, now=T0)[1][0])  # type: ignore[arg-type]


def test_an_answer_carrying_the_payload_is_the_same_as_the_event() -> None:
    state, waiting = _at_wait()
    by_event = advance(APPROVAL.definition, state, [EventReceived("approved", [1], T0 + 2)])
    by_answer = advance(APPROVAL.definition, state, [HandlerReturned(waiting.id, [1], T0 + 2)])
    assert by_event == by_answer


def test_a_timer_and_an_event_in_one_batch_the_timer_answers_and_the_event_is_kept() -> None:
    state, waiting = _at_wait()
    batch = [EventReceived("approved", "late", T0 + 61), TimerFired(waiting.id, T0 + 61)]
    after, (escalate,) = advance(APPROVAL.definition, state, batch)
    assert escalate.step.endswith("onTimeout/escalate")
    assert after.mailbox == (("approved", "late"),)


def test_waits_in_parallel_branches_each_take_their_own_event() -> None:
    flow = new(
        named("par/v1").parallel(
            "both",
            {"a": steps().wait_event("go"), "b": steps().wait_event("go").do("x", _done)},
        )
    )
    state, commands = advance(flow.definition, None, now=T0)
    assert [type(c) for c in commands] == [AwaitEvent, AwaitEvent]
    assert resting(state)
    assert state.wake_at is None
    one, commands = advance(flow.definition, state, [EventReceived("go", "first", T0)])
    # The first position in the state's order takes the first event.
    assert one.outputs["par/v1/bothParallel/a/goWaitEvent"] == "first"
    assert len(commands) == 1
    assert type(commands[0]) is AwaitEvent
    two, (x,) = advance(flow.definition, one, [EventReceived("go", "second", T0 + 1)])
    assert two.outputs["par/v1/bothParallel/b/goWaitEvent"] == "second"
    assert stepflow.loads(stepflow.dumps(two), flow.definition) == two
    done, _ = advance(flow.definition, two, [HandlerReturned(x.id, 1, T0 + 2)])
    assert done.is_completed


def test_a_failed_group_drops_its_waits_for_events() -> None:
    flow = new(
        named("drop/v1").parallel(
            "g", {"a": steps().wait_event("never"), "b": steps().do("boom", _done)}
        )
    )
    state, commands = advance(flow.definition, None, now=T0)
    boom = next(c for c in commands if type(c) is CallHandler)
    error = stepflow.ErrorRecord("RuntimeError", "no", boom.step)
    failed, commands = advance(flow.definition, state, [HandlerRaised(boom.id, error, None, T0)])
    assert failed.is_failed
    assert commands == ()


def test_the_definition_holds_the_wait_as_data_in_its_fingerprint() -> None:
    transition = APPROVAL.definition.table[f"start:{WAIT}"]
    assert transition.kind == "wait_event"
    assert transition.awaits == "approved"
    assert transition.timeout == 60
    assert [d.reason for d in transition.destinations] == ["event 'approved' received", "timed out"]
    other = new(named("approve/v1").do("ask", _done).wait_event("approved").do("ship", _done))
    assert other.definition.fingerprint != APPROVAL.definition.fingerprint


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (lambda: named("f").wait_event("w", timeout=0), "timeout"),
        (lambda: named("f").wait_event("w", timeout=-1), "timeout"),
        (lambda: named("f").wait_event("w", on_timeout=steps()), "no timeout="),
        (lambda: named("f").wait_event("w", timeout=1, on_timeout="x"), "not a spec"),  # type: ignore[arg-type]
        (lambda: named("f").wait_event("a:b"), "contains ':'"),
        (lambda: named("f").wait_event(""), "non-empty"),
    ],
)
def test_bad_waits_are_definition_errors(spec: Any, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        new(spec())


def test_simulate_plays_events_and_timeouts_from_a_script() -> None:
    key = ("wait_event", WAIT)
    came = simulate(APPROVAL, {key: [Returns({"ok": True})]})
    assert came.final.is_completed
    assert came.final.outputs[WAIT] == {"ok": True}
    late = simulate(APPROVAL, {key: [TimesOut()]})
    assert late.final.is_completed
    assert f"start:{WAIT}/onTimeout/escalate" in late.events


def test_flow_run_returns_a_run_resting_on_an_event_and_send_moves_it() -> None:
    resting_state = UNTIMED.run()
    assert resting_state.is_running
    assert resting(resting_state)
    moved = UNTIMED.send(resting_state, "go", 7)
    assert UNTIMED.run(moved).is_completed


@given(
    before=st.lists(st.sampled_from(["x", "y"]), max_size=6),
    after=st.lists(st.sampled_from(["x", "y"]), max_size=6),
)
def test_an_event_is_never_lost_and_never_taken_twice(before: list[str], after: list[str]) -> None:
    """Events sent before and during a run of waits are each taken once, in order per name."""
    flow = new(
        named("many/v1").loop_until(
            "l",
            lambda c: False,
            steps()
            .wait_event("x", timeout=5, on_timeout=steps())
            .wait_event("y", timeout=5, on_timeout=steps()),
        )
    )
    definition = flow.definition
    sent = [(name, i) for i, name in enumerate(before + after)]
    taken: list[tuple[str, int]] = []

    def step(state: State | None, effects: list[stepflow.Effect]) -> State:
        outputs = state.outputs if state is not None else pmap()
        new_state, _ = advance(definition, state, effects, now=T0)
        for path, value in new_state.outputs.items():
            if outputs.get(path) != value:
                taken.append((path.rsplit("/", 1)[1][0], value))
        return new_state

    state = step(None, [EventReceived(n, i, T0) for n, i in sent[: len(before)]])
    pending = sent[len(before) :]
    clock = T0
    for _ in range(200):
        # Reload as a restarted worker would, then answer what is in flight.
        state = stepflow.loads(stepflow.dumps(state), definition)
        (command,) = state.in_flight
        clock += 1
        if type(command) is not AwaitEvent:
            state = step(state, [HandlerReturned(command.id, False, clock)])
        elif pending:
            name, payload = pending.pop(0)
            state = step(state, [EventReceived(name, payload, clock)])
        elif state.mailbox:
            clock = max(clock, command.at or clock)
            state = step(state, [TimerFired(command.id, clock)])
        else:
            break
    assert sorted(taken, key=lambda t: t[1]) == sorted(sent, key=lambda t: t[1])
    for name in ("x", "y"):
        assert [p for n, p in taken if n == name] == [p for n, p in sent if n == name]


def test_a_timed_wait_reached_with_no_time_known_asks_for_one() -> None:
    flow = new(named("t/v1").wait_event("go", timeout=5))
    with pytest.raises(EffectError, match="no time is known"):
        advance(flow.definition, None)


def test_a_finished_run_is_not_resting() -> None:
    state, _ = advance(UNTIMED.definition, None, [EventReceived("go", None, T0)], now=T0)
    (after,) = state.in_flight
    done, _ = advance(UNTIMED.definition, state, [HandlerReturned(after.id, None, T0)])
    assert not resting(done)
    assert not resting(initial_state(UNTIMED.definition))


def test_an_event_without_a_time_takes_the_callers() -> None:
    state, _ = _at_wait()
    after, (ship,) = advance(APPROVAL.definition, state, [EventReceived("approved", 1)], now=T0 + 9)
    assert ship.step == "approve/v1/ship"
    assert after.outputs[WAIT] == 1


def test_waits_and_events_compare_by_type_and_value() -> None:
    wait = AwaitEvent(1, "wait_event", "f/goWaitEvent", "start:f/goWaitEvent", None, "go")
    same = AwaitEvent(1, "wait_event", "f/goWaitEvent", "start:f/goWaitEvent", None, "go")
    assert wait == same
    assert wait.__ne__(same) is False  # (!= on equal waits)
    assert hash(wait) == hash(same)
    assert wait != tuple(wait)
    event = EventReceived("go", {"a": [1]}, 2.0)
    assert event == EventReceived("go", {"a": [1]}, 2.0)
    assert event != EventReceived("go", {"a": [2]}, 2.0)
    assert hash(event) == hash(EventReceived("go", {"a": [1]}, 2.0))
    assert event != ("go", {"a": [1]}, 2.0)
