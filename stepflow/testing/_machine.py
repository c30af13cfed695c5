"""A hypothesis ``RuleBasedStateMachine`` for a flow, to subclass in users' tests."""

from __future__ import annotations

import json
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from stepflow.clock import FakeClock
from stepflow.codec import dumps, loads
from stepflow.core.advance import advance, initial_state
from stepflow.core.definition import FlowDefinition, template_of
from stepflow.core.messages import (
    ChildEnded,
    Command,
    Effect,
    HandlerRaised,
    HandlerReturned,
    TimerFired,
    Wake,
)
from stepflow.core.state import ErrorRecord, State
from stepflow.flow import Flow
from stepflow.testing._scripts import START, TraceStep
from stepflow.testing._strategies import json_values

__all__ = ["FlowMachine"]

_CONDITIONS = ("wait_for", "case", "loop_until", "on_error")


class FlowMachine(RuleBasedStateMachine):
    r"""Explore a flow step by step with hypothesis, checking invariants after each.

    Subclass it, set :attr:`flow`, and add your own ``@rule``\\ s and
    ``@invariant``\\ s; run it with ``TestMyFlow = MyMachine.TestCase``. The
    machine plays the outside world: each rule answers the command in flight
    (a ``do`` returns a JSON value, a condition ``True`` or ``False``, any
    handler raises, a timer fires) or crashes the worker and reloads the saved
    state. Built-in invariants check that every state survives the codec and
    that the commands in flight are the state's.

    Attributes:
        flow: The flow under test (a :class:`~stepflow.Flow` or its definition).
        definition: Its definition.
        clock: The virtual clock; every answer takes one second of it.
        state: The current state.
        commands: The commands in flight.
        history: Every step so far.

    """

    flow: ClassVar[Flow | FlowDefinition]

    def __init__(self) -> None:
        super().__init__()
        flow = type(self).flow
        self.definition = flow.definition if isinstance(flow, Flow) else flow
        self.clock = FakeClock(START)
        self.state: State
        self.commands: tuple[Command, ...]
        self.state, self.commands = advance(
            self.definition, initial_state(self.definition), now=self.clock.now()
        )
        self.history: list[TraceStep] = []

    @property
    def command(self) -> Command | None:
        """The command in flight, or ``None`` once the run has ended."""
        return self.commands[0] if self.commands else None

    def _kind(self) -> str | None:
        command = self.command
        return None if command is None else command.kind

    def apply(self, effect: Effect) -> None:
        """Apply ``effect`` to the current state and record the step."""
        command = self.command
        assert command is not None
        self.state, self.commands = advance(self.definition, self.state, (effect,))
        self.history.append(TraceStep(command, effect, self.state))

    def _tick(self) -> float:
        wake_at = self.state.wake_at
        if wake_at is not None and wake_at > self.clock.now():
            self.clock.set(wake_at)
        return self.clock.advance(1)

    @precondition(lambda self: self._kind() == "do")
    @rule(value=json_values)
    def do_returns(self, value: Any) -> None:
        """Answer the ``do`` in flight: its handler returned ``value``."""
        command = self.command
        assert command is not None
        self.apply(HandlerReturned(command.id, value, self._tick()))

    @precondition(lambda self: self._kind() == "call")
    @rule(output=json_values)
    def child_completes(self, output: Any) -> None:
        """Answer the ``call`` in flight: its child run completed with ``output``."""
        command = self.command
        assert command is not None
        self.apply(ChildEnded(command.id, "completed", output, None, self._tick()))

    @precondition(lambda self: self._kind() in _CONDITIONS)
    @rule(result=st.booleans())
    def condition_answers(self, result: bool) -> None:
        """Answer the condition (or ``on_error``) in flight with ``result``."""
        command = self.command
        assert command is not None
        self.apply(HandlerReturned(command.id, result, self._tick()))

    @precondition(lambda self: self._kind() == "switch")
    @rule(data=st.data())
    def route_answers(self, data: st.DataObject) -> None:
        """Answer the ``switch`` in flight: a case's value, or a scalar that may match none."""
        command = self.command
        assert command is not None
        keys = self.definition.table[template_of(command.event)].cases
        values = [json.loads(key) for key in keys]
        scalars = st.none() | st.booleans() | st.integers(-2, 2) | st.text("ab", max_size=2)
        value = data.draw(st.sampled_from(values) | scalars if values else scalars)
        self.apply(HandlerReturned(command.id, value, self._tick()))

    @precondition(lambda self: self._kind() == "sleep_until")
    @rule(offset=st.sampled_from([-10.0, 0.0, 2.5]))
    def when_returns(self, offset: float) -> None:
        """Answer a ``sleep_until``'s ``when``: a time ``offset`` from now (past, now, ahead)."""
        command = self.command
        assert command is not None
        at = self._tick()
        self.apply(HandlerReturned(command.id, at + offset, at))

    @precondition(lambda self: self._kind() not in (None, "sleep"))
    @rule(message=st.text("xyz", max_size=3))
    def handler_raises(self, message: str) -> None:
        """Answer the handler in flight: it raised ``RuntimeError(message)``."""
        command = self.command
        assert command is not None
        error = ErrorRecord("RuntimeError", message, command.step)
        self.apply(HandlerRaised(command.id, error, None, self._tick()))

    @precondition(lambda self: self._kind() == "sleep")
    @rule()
    def timer_fires(self) -> None:
        """Fire the timer in flight, once it is due."""
        command = self.command
        assert type(command) is Wake
        self.clock.set(max(command.at, self.clock.now()))
        self.apply(TimerFired(command.id, self.clock.now()))

    @rule()
    def crash_and_reload(self) -> None:
        """Crash the worker: its successor reloads the save and re-issues the same command."""
        reloaded = loads(dumps(self.state), self.definition)
        state, commands = advance(self.definition, reloaded)
        assert state == self.state, "a reloaded state differs from the saved one"
        assert commands == self.commands, "a reloaded state issued other commands"

    @invariant()
    def state_survives_the_codec(self) -> None:
        """Check that every state reads back equal from its saved text."""
        assert loads(dumps(self.state), self.definition) == self.state

    @invariant()
    def commands_in_flight_are_the_states(self) -> None:
        """Check that the commands ``advance`` returned are the ones the state holds."""
        assert self.state.in_flight == self.commands
