"""Outcome scripts and the scripted world that plays them (no hypothesis needed).

An *outcome script* says what each handler does, in order, each time a new
command for it is issued: return a value, raise, or return a value of the wrong
kind. When a handler's list runs out it takes its *exit* outcome (a ``do``
returns ``None``, conditions end their wait or loop, ``on_error`` declines), so
every scripted run terminates.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from stepflow.clock import FakeClock
from stepflow.core.advance import advance, initial_state
from stepflow.core.definition import FlowDefinition, template_of
from stepflow.core.groups import command_times
from stepflow.core.messages import (
    AwaitEvent,
    CancelRequested,
    ChildEnded,
    Command,
    Effect,
    EventReceived,
    HandlerRaised,
    HandlerReturned,
    StartChild,
    TimerFired,
    Wake,
)
from stepflow.core.state import ErrorRecord, State
from stepflow.errors import ConfigurationError
from stepflow.flow import Flow
from stepflow.interpreter import rebuild_exception

__all__ = [
    "EXIT_OUTCOMES",
    "SCRIPTED_CANCEL",
    "START",
    "HandlerKey",
    "Outcome",
    "Raises",
    "Returns",
    "ReturnsWrongKind",
    "Script",
    "ScriptedWorld",
    "TimesOut",
    "Trace",
    "TraceStep",
    "WrongKind",
    "check_script",
    "handler_keys",
    "next_command",
    "outcome_of",
    "scripted_flow",
    "simulate",
]

#: ``(command kind, step path)``: which handler an outcome list is for.
HandlerKey = tuple[str, str]

#: When scripted worlds start, unless told otherwise (seconds since the epoch).
START = 1_000.0
#: The reason of the cancellations scripted runs are given (``cancel_after=``).
SCRIPTED_CANCEL = "cancelled by the script"


@attrs.frozen
class Returns:
    """The handler returns ``value``; for a ``wait_event``, its event arrives with ``value``."""

    value: Any


@attrs.frozen
class Raises:
    """The handler raises ``message``, recorded as an error of type ``type``."""

    message: str
    type: str = "RuntimeError"


@attrs.frozen
class TimesOut:
    """A ``wait_for`` condition is still false at its deadline: the step times out.

    For a ``wait_event``, no event comes before its timeout (one with no
    timeout gets its event, with no payload, instead).
    """


@attrs.frozen
class ReturnsWrongKind:
    """The handler returns a value of the wrong kind (not JSON, not a bool)."""


#: What one handler call does.
Outcome = Returns | Raises | ReturnsWrongKind | TimesOut
#: What every handler does, call after call: outcomes, or the outcome names of
#: :mod:`stepflow.analysis` (``"returned"``, ``"true"``, ``"raised:KeyError"``...),
#: so that a :class:`~stepflow.analysis.PathCase`'s script plays as it is.
Script = Mapping[HandlerKey, Sequence["Outcome | str"]]


def outcome_of(name: Outcome | str) -> Outcome:
    """Return the outcome an analysis outcome name stands for (outcomes pass through).

    >>> outcome_of("raised:KeyError")
    Raises(message='scripted failure', type='KeyError')
    """
    if not isinstance(name, str):
        return name
    kind, _, error_type = name.partition(":")
    if kind == "items" and error_type.isdigit():  # a map's items handler: n items
        return Returns(list(range(int(error_type))))
    if kind == "route" and error_type:  # a switch's route: the JSON value it returned
        try:
            return Returns(json.loads(error_type))
        except ValueError:
            pass
    known: dict[str, Outcome] = {
        "returned": Returns(None),
        "true": Returns(True),
        "false": Returns(False),
        "timed_out": TimesOut(),
        "received": Returns(None),
        "past": Returns(0),
    }
    if kind == "raised":
        return Raises("scripted failure", error_type or "RuntimeError")
    if name not in known:
        raise ConfigurationError(
            f"unknown outcome {name!r}; use Returns/Raises/ReturnsWrongKind/TimesOut or one of "
            f"{sorted(known)}, 'raised[:Type]', 'items:N' and 'route:<JSON>'"
        )
    return known[name]


#: What a handler does once its scripted outcomes run out: end waits and loops,
#: skip cases, decline retries. This is what bounds every scripted run.
EXIT_OUTCOMES: Mapping[str, Outcome] = {
    "do": Returns(None),
    "wait_for": Returns(True),
    "case": Returns(False),
    "loop_until": Returns(True),
    "on_error": Returns(False),
    "map": Returns([]),
    "wait_event": Returns(None),
    "switch": Returns(None),
    "sleep_until": Returns(0),  # a time long past: the timer fires at once
    "compensate": Returns(None),
    "call": Returns(None),  # the child completes, with no outputs kept
}


class WrongKind:
    """A value that is neither JSON nor a bool."""

    def __repr__(self) -> str:
        return "WrongKind()"


# Transitions whose kind names no handler: timers, forks and joins, and the
# cleanup transitions, taken from the state alone (a saga's compensate calls
# the compensate handlers of its steps, listed by step).
_NO_HANDLER = ("sleep", "parallel", "join", "finally", "saga", "leave", "compensate")


def handler_keys(definition: FlowDefinition) -> list[HandlerKey]:
    """Every ``(kind, step)`` a handler of ``definition`` serves (timers have none)."""
    keys: list[HandlerKey] = [
        (t.kind, t.step or "")
        for t in definition.handler_transitions()
        if t.kind not in _NO_HANDLER
    ]
    # A saga compensates with each compensable do's own compensate handler.
    keys += [("compensate", t.step or "") for t in definition.transitions if t.compensate]
    keys += [
        ("on_error", scope)
        for scope in definition.retry_scopes()
        if definition.retry_rule(scope).on_error
    ]
    return keys


class ScriptedWorld:
    """The simulated outside world: answers commands from an outcome script.

    An answer is decided once per command id and remembered, as an idempotent
    external system would: a command re-run after a crash gets the same outcome,
    at the same time. Time is a :class:`~stepflow.clock.FakeClock`: every handler
    takes ``handler_seconds``, and the world waits for a state's ``wake_at``
    before answering, skipping the time in between instantly.

    Args:
        script: What each handler does, call after call.
        clock: The virtual clock (default: a new ``FakeClock(START)``).
        handler_seconds: How long each handler call takes, in virtual time.

    """

    def __init__(
        self,
        script: Script,
        clock: FakeClock | None = None,
        *,
        handler_seconds: float = 1.0,
    ) -> None:
        self.script = script
        self._pending = {key: list(outs) for key, outs in script.items()}
        self._answers: dict[int, Effect] = {}
        self._events: dict[int, Outcome] = {}  # a wait's scripted outcome, by command id
        self.clock = clock if clock is not None else FakeClock(START)
        self.handler_seconds = handler_seconds
        self.executed: list[Command] = []
        self.calls: defaultdict[HandlerKey, int] = defaultdict(int)

    def _decide(self, key: HandlerKey) -> Outcome:
        self.calls[key] += 1
        queue = self._pending.get(key, [])
        return outcome_of(queue.pop(0)) if queue else EXIT_OUTCOMES[key[0]]

    def execute(
        self, command: Command, wake_at: float | None = None, timeout_at: float | None = None
    ) -> Effect:
        """Answer ``command`` (once per id) with an effect, as an interpreter would.

        ``wake_at`` and ``timeout_at`` are the state's: the world's clock moves on
        to ``wake_at`` first, and to ``timeout_at`` for a :class:`TimesOut`.
        """
        self.executed.append(command)
        if command.id not in self._answers:
            self._answers[command.id] = self._answer(command, wake_at, timeout_at)
        return self._answers[command.id]

    def _answer(self, command: Command, wake_at: float | None, timeout_at: float | None) -> Effect:
        if type(command) is AwaitEvent:
            return self._event(command)
        if wake_at is not None and wake_at > self.clock.now():
            self.clock.set(wake_at)
        if type(command) is Wake:
            self.clock.set(max(command.at, self.clock.now()))
            return TimerFired(command.id, self.clock.now())
        # Inside a map item the step carries the item's index; the script is by handler.
        outcome = self._decide((command.kind, template_of(command.step)))
        if isinstance(outcome, TimesOut) and timeout_at is not None:
            self.clock.set(max(timeout_at, self.clock.now()))
        at = self.clock.advance(self.handler_seconds)
        if type(command) is StartChild:  # the child's end, scripted (no child runs)
            return _child_ended(command, outcome, at)
        if isinstance(outcome, Returns):
            return HandlerReturned(command.id, outcome.value, at)
        if isinstance(outcome, TimesOut):
            return HandlerReturned(command.id, False, at)
        if isinstance(outcome, Raises):
            error = ErrorRecord(outcome.type, outcome.message, command.step)
            return HandlerRaised(command.id, error, None, at)
        return HandlerReturned(command.id, WrongKind(), at)

    def _event(self, command: AwaitEvent) -> Effect:
        """Send the event a ``wait_event`` waits for, or let it time out, as scripted."""
        outcome = self._outcome(command)
        if isinstance(outcome, TimesOut) and command.at is not None:
            self.clock.set(max(command.at, self.clock.now()))
            return TimerFired(command.id, self.clock.now())
        value = outcome.value if isinstance(outcome, Returns) else None
        return EventReceived(command.name, value, self.clock.advance(self.handler_seconds))

    def _outcome(self, command: AwaitEvent) -> Outcome:
        if command.id not in self._events:
            self._events[command.id] = self._decide((command.kind, template_of(command.step)))
        return self._events[command.id]

    def event_for(self, command: AwaitEvent) -> EventReceived | None:
        """Return the event the script sends to the wait ``command``, or ``None`` if it times out.

        Decided once per command id, as :meth:`execute` decides, without moving
        the clock: for a driver that delivers events its own way (a store's
        inbox), and lets its worker fire the timeout.
        """
        outcome = self._outcome(command)
        if isinstance(outcome, TimesOut) and command.at is not None:
            return None
        value = outcome.value if isinstance(outcome, Returns) else None
        return EventReceived(command.name, value, self.clock.now())

    def handler(self, kind: str, step: str) -> Callable[..., Any]:
        """Return a real handler for ``(kind, step)`` that plays the script (no crash memo)."""

        def play(ctx: Any, *_: Any) -> Any:
            outcome = self._decide((kind, step))
            self.clock.advance(self.handler_seconds)
            if isinstance(outcome, Returns):
                return outcome.value
            if isinstance(outcome, TimesOut):
                return False  # a real driver's clock decides when it times out
            if isinstance(outcome, Raises):
                raise rebuild_exception(ErrorRecord(outcome.type, outcome.message, step))
            return WrongKind()

        return play


def _child_ended(command: StartChild, outcome: Outcome, at: float) -> ChildEnded:
    """How a scripted child ends: ``Returns(v)`` completes with ``v``, ``Raises`` fails."""
    if isinstance(outcome, Raises):
        error = ErrorRecord(outcome.type, outcome.message, command.flow)
        return ChildEnded(command.id, "failed", None, error, at, command.key)
    value = outcome.value if isinstance(outcome, Returns) else WrongKind()
    return ChildEnded(command.id, "completed", value, None, at, command.key)


def check_script(definition: FlowDefinition, script: Script) -> None:
    """Check that every key of ``script`` names a handler of ``definition``.

    Raises:
        ConfigurationError: a key names no handler (a typo would otherwise leave
            that handler on its exit outcome, silently).

    """
    known = set(handler_keys(definition))
    unknown = [key for key in script if tuple(key) not in known]
    if unknown:
        raise ConfigurationError(
            f"the script names {unknown!r}, which are not handlers of {definition.name!r}; "
            f"its handlers are {sorted(known)!r}"
        )


def scripted_flow(definition: FlowDefinition, world: ScriptedWorld) -> Flow:
    """Return a :class:`~stepflow.Flow` whose handlers play ``world``'s script on its clock.

    Use it with the real drivers (``flow.apply``, ``flow.run``) or a
    :class:`~stepflow.Worker`, in place of the real handlers.
    """
    check_script(definition, world.script)
    handlers = {key: world.handler(*key) for key in handler_keys(definition)}
    return Flow(definition, handlers, world.clock)


@attrs.frozen
class TraceStep:
    """One step of a simulated run: a command, its effect, and the state after.

    Attributes:
        command: The command executed; ``None`` for an effect addressed to the
            run (the cancellation of ``simulate(cancel_after=)``).
        effect: What happened.
        state: The state after applying it.

    """

    command: Command | None
    effect: Effect
    state: State


@attrs.frozen
class Trace:
    """A simulated run, from its first state to its last.

    Attributes:
        initial: The state after the first command was issued.
        steps: Every step, in order.

    """

    initial: State
    steps: tuple[TraceStep, ...]

    @property
    def final(self) -> State:
        """The last state."""
        return self.steps[-1].state if self.steps else self.initial

    @property
    def states(self) -> tuple[State, ...]:
        """Every state, the initial one first."""
        return (self.initial, *(s.state for s in self.steps))

    @property
    def commands(self) -> tuple[Command, ...]:
        """Every command issued, once each, in order (including the last state's, if any)."""
        issued = {c.id: c for c in self.initial.in_flight}
        for step in self.steps:
            for command in step.state.in_flight:
                issued.setdefault(command.id, command)
        return tuple(issued.values())

    @property
    def effects(self) -> tuple[Effect, ...]:
        """Every effect applied, in order."""
        return tuple(s.effect for s in self.steps)

    @property
    def events(self) -> tuple[str, ...]:
        """The positions the run rested at, in order (repeats collapsed)."""
        seen: list[str] = []
        for state in self.states:
            for event in state.events:
                if not seen or seen[-1] != event:
                    seen.append(event)
        return tuple(seen)

    @property
    def elapsed(self) -> float:
        """Virtual seconds from the first effect's time to the last's."""
        times = [e.at for e in self.effects if e.at is not None]
        return times[-1] - times[0] if len(times) > 1 else 0.0


def next_command(state: State, commands: Sequence[Command]) -> Command:
    """Return the command a simulated world answers next: the first due, then the lowest id.

    With one command in flight it is that one. With several (``parallel``
    branches, ``map`` items), the one whose ``wake_at`` comes first (one due at
    once counts as due at ``-inf``), ties broken by command id: a deterministic
    interleaving, the same after a crash and a reload.
    """
    if len(commands) == 1:
        return commands[0]

    def due(command: Command) -> tuple[float, int]:
        wake_at = command_times(state, command)[0]
        return (float("-inf") if wake_at is None else wake_at, command.id)

    return min(commands, key=due)


def simulate(
    flow: Flow | FlowDefinition,
    script: Script,
    clock: FakeClock | None = None,
    *,
    run_id: str = "",
    handler_seconds: float = 1.0,
    max_steps: int = 100_000,
    cancel_after: int | None = None,
) -> Trace:
    """Drive a run of ``flow`` by ``script``, calling no real handler, skipping time.

    Polls, sleeps and retry backoffs take no real time: the virtual ``clock``
    jumps to each ``wake_at``. With ``cancel_after=n``, the run is cancelled
    (:class:`~stepflow.core.messages.CancelRequested`, reason
    :data:`SCRIPTED_CANCEL`) once ``n`` effects were applied, if it still
    runs: a step of the trace with no command.

    Args:
        flow: The flow, or its definition.
        script: What each handler does, call after call (see :class:`Returns`,
            :class:`Raises`); a handler past its list takes its exit outcome.
        clock: The virtual clock (default: ``FakeClock(START)``).
        run_id: The run's id (seeds retry jitter).
        handler_seconds: How long each handler call takes.
        max_steps: A bound, in case a script keeps a loop going forever.
        cancel_after: Cancel the run once this many effects were applied.

    Returns:
        The :class:`Trace`: every command, effect and state.

    Raises:
        ConfigurationError: the script names a handler the flow does not have.
        AssertionError: the run did not end within ``max_steps``.

    """
    definition = flow.definition if isinstance(flow, Flow) else flow
    check_script(definition, script)
    world = ScriptedWorld(script, clock, handler_seconds=handler_seconds)
    state, commands = advance(definition, initial_state(definition, run_id), now=world.clock.now())
    initial = state
    steps: list[TraceStep] = []
    applied = 0
    while commands:
        if len(steps) >= max_steps:
            raise AssertionError(f"the simulated run did not end within {max_steps} steps")
        if applied == cancel_after and state.status == "running":
            cancel = CancelRequested(SCRIPTED_CANCEL, world.clock.now())
            state, commands = advance(definition, state, (cancel,))
            steps.append(TraceStep(None, cancel, state))
            if not commands:
                break
        applied += 1
        command = next_command(state, commands)
        effect = world.execute(command, *command_times(state, command))
        state, commands = advance(definition, state, (effect,))
        steps.append(TraceStep(command, effect, state))
    return Trace(initial, tuple(steps))
