"""Properties every flow must have, checked on random flow trees and outcome scripts.

These are the backbone of the suite: each new construct extends
``strategies.items`` and is then covered here without new tests.
"""

from __future__ import annotations

import json
import pickle
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import (
    START,
    HandlerKey,
    Outcome,
    World,
    WrongKind,
    definitions,
    flows_and_scripts,
    run,
)

import stepflow
from stepflow.core.groups import command_times
from stepflow.testing import next_command

FlowAndScript = tuple[stepflow.FlowDefinition, dict[HandlerKey, tuple[Outcome, ...]]]


def _run_with_crashes(
    definition: stepflow.FlowDefinition,
    world: World,
    crashes: list[str],
) -> str:
    """A worker loop that saves after every advance and crashes where ``crashes`` says.

    Each iteration loads the last save, advances (issuing or re-issuing the
    command in flight), saves, executes the command and applies its effect. A
    crash "before" the execution loses nothing; a crash "after" it loses the
    effect: the command runs again after the reload, with the same id.
    """
    saved = stepflow.dumps(stepflow.advance(definition, None, now=world.clock.now())[0])
    for step in range(10_000):
        state = stepflow.loads(saved, definition)
        state, commands = stepflow.advance(definition, state)
        saved = stepflow.dumps(state)
        if not commands:
            return saved
        crash = crashes[step] if step < len(crashes) else "none"
        if crash == "before":
            continue
        command = next_command(state, commands)
        effect = world.execute(command, *command_times(state, command))
        if crash == "after":
            continue
        state, _ = stepflow.advance(definition, state, (effect,))
        saved = stepflow.dumps(state)
    raise AssertionError("the run did not end")


@given(
    flows_and_scripts(),
    st.lists(st.sampled_from(["none", "none", "before", "after"]), max_size=40),
)
def test_a_run_that_crashes_anywhere_ends_as_an_uninterrupted_one(
    flow_and_script: FlowAndScript, crashes: list[str]
) -> None:
    definition, script = flow_and_script
    calm = World(script)
    expected, _, _ = run(definition, calm)

    stormy = World(script)
    final = _run_with_crashes(definition, stormy, crashes)

    assert final == stepflow.dumps(expected)
    first: dict[int, stepflow.Command] = {}
    for command in stormy.executed:
        # A command runs again only as a re-issue of the same command, same id.
        assert first.setdefault(command.id, command) == command
    assert list(first.values()) == calm.executed
    assert len(stormy.executed) - len(calm.executed) <= crashes.count("after")


@given(flows_and_scripts())
def test_the_same_inputs_give_byte_identical_states_and_equal_commands(
    flow_and_script: FlowAndScript,
) -> None:
    definition, script = flow_and_script
    _, states_a, commands_a = run(definition, World(script))
    _, states_b, commands_b = run(definition, World(script))
    assert [stepflow.dumps(s) for s in states_a] == [stepflow.dumps(s) for s in states_b]
    assert commands_a == commands_b


@given(flows_and_scripts())
def test_every_state_of_a_run_survives_the_codec_round_trip(
    flow_and_script: FlowAndScript,
) -> None:
    definition, script = flow_and_script
    _, states, _ = run(definition, World(script))
    for state in states:
        text = stepflow.dumps(state)
        loaded = stepflow.loads(text, definition)
        assert loaded == state
        assert stepflow.dumps(loaded) == text
        # The envelope is JSON any other tool can read.
        assert json.loads(text)["flow"] == definition.name


@given(flows_and_scripts())
def test_a_run_driven_by_flow_apply_ends_as_one_driven_by_advance(
    flow_and_script: FlowAndScript,
) -> None:
    definition, script = flow_and_script
    # flow.apply answers every due command of a run with several positions in one
    # batch, advance-driving one at a time: their interleavings differ, and a
    # script (outcomes in call order) gives them different outcomes. Runs with
    # groups are checked for order independence below instead.
    assume(not definition._concurrent)
    expected, _, _ = run(definition, World(script))

    world = World(script)
    handlers = {key: world.handler(*key) for key in script}
    flow = stepflow.Flow(definition, handlers, world.clock)
    state = None
    for _ in range(10_000):
        waiting = state.in_flight[0] if state is not None and state.in_flight else None
        if type(waiting) is stepflow.AwaitEvent:
            # The outside world decides: its event comes (delivered with send), or
            # the wait's timer is left to fire.
            effect = world.execute(waiting)
            if type(effect) is stepflow.EventReceived:
                state = flow.send(state, effect.name, effect.payload)
                if flow.is_completed(state):
                    break
                continue
        if state is not None and state.wake_at is not None and state.wake_at > world.clock.now():
            world.clock.set(state.wake_at)  # a go-style caller's scheduler
        try:
            state = flow.apply(state)
        except stepflow.FlowFailed as failed:
            state = failed.state
            break
        if flow.is_completed(state):
            break
    assert state == expected


_PROBES: list[Any] = [True, False, None, {"k": [1, "a"]}, WrongKind()]


@given(definitions())
def test_every_event_and_every_outcome_is_handled(definition: stepflow.FlowDefinition) -> None:
    """Totality: no event, and no (event, outcome) pair, is left without a transition."""
    for transition in definition.transitions:
        for destination in transition.destinations:
            assert destination.event in definition.table or (
                destination.event == definition.completed_event
            )
    for event in definition.events:
        if _in_group(definition, event):
            # A lone position inside a group has no group to return to: refused.
            with pytest.raises(stepflow.StateError):
                stepflow.loads(json.dumps([event]), definition)
            continue
        state, commands = stepflow.advance(
            definition, stepflow.loads(json.dumps([event]), definition), now=START
        )
        if state.is_completed:
            assert commands == ()
            assert state.events == (definition.completed_event,)
        elif state.groups:  # a parallel group started: one command per branch
            assert [c.event for c in commands] == list(state.events)
        else:
            (command,) = commands
            assert definition.table[command.event].kind == command.kind
            assert state.events == (command.event,)
    for transition in definition.handler_transitions():
        if _in_group(definition, transition.source) or transition.kind in ("parallel", "join"):
            continue  # reached through its group (the properties below cover it)
        if transition.kind in ("finally", "saga", "leave", "compensate"):
            continue  # passed through with no command of their own (test_cleanup covers them)
        state, (command,) = stepflow.advance(
            definition, stepflow.loads(json.dumps([transition.source]), definition), now=START
        )
        raised = stepflow.HandlerRaised(
            command.id, stepflow.ErrorRecord("RuntimeError", "x", command.step), None, START
        )
        answers = [stepflow.HandlerReturned(command.id, v, START) for v in _PROBES] + [raised]
        fired = [stepflow.TimerFired(command.id, state.wake_at or START)]
        good, bad = (fired, answers) if transition.kind == "sleep" else (answers, fired)
        if transition.kind == "wait_event":
            # An event (or an answer carrying its payload) moves it; a timer only
            # when it has a timeout; nothing executes it, so nothing raises.
            assert isinstance(command, stepflow.AwaitEvent)
            received = stepflow.EventReceived(command.name, {"k": 1}, START)
            good = [*answers[:-1], received] + (fired if command.at is not None else [])
            bad = [raised] + (fired if command.at is None else [])
        for effect in good:
            after, commands = stepflow.advance(definition, state, (effect,))
            assert after.status in ("running", "completed", "failed")
            assert (len(commands) >= 1) if after.is_running else (commands == ())
            assert not after.is_running or len(commands) == 1 or after.groups
            assert after.in_flight == commands
        for effect in bad:  # a timer cannot answer a handler, nor a handler a timer
            with pytest.raises(stepflow.EffectError):
                stepflow.advance(definition, state, (effect,))


def _in_group(definition: stepflow.FlowDefinition, event: str) -> bool:
    """Whether ``event`` lies inside a parallel branch or a map item."""
    return bool(definition._nodes[event].groups)


@given(flows_and_scripts())
def test_advance_never_mutates_its_inputs(flow_and_script: FlowAndScript) -> None:
    definition, script = flow_and_script
    world = World(script)
    before_definition = pickle.dumps(definition)
    state, commands = stepflow.advance(definition, None, now=START)
    while commands:
        command = next_command(state, commands)
        effects = (world.execute(command, *command_times(state, command)),)
        snapshot = pickle.dumps((state, effects))
        next_state, commands = stepflow.advance(definition, state, effects)
        assert pickle.dumps((state, effects)) == snapshot
        state = next_state
    assert pickle.dumps(definition) == before_definition
