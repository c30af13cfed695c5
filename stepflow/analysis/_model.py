"""What the analysis sees: outcomes, moves, traces and observations.

Rule: nothing here decides where a run goes. Every state comes from
:func:`stepflow.advance`; this module only chooses *which* effect to feed it
(the outcome) and *when* (virtual time), and describes what happened.

Virtual time
------------
A search starts at ``0.0`` and handlers answer instantly: a command is answered
at the time of the previous answer, or at the state's ``wake_at`` if that is
later (a poll interval, a retry backoff). A ``sleep``'s timer fires at its
``at``. A ``wait_for`` that *times out* answers ``False`` at its deadline
(``timeout_at``). Answering instantly gives every poll the most time before its
deadline, so a wait with a timeout can always be found false at least once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal, NamedTuple

import attrs

from stepflow.core.advance import advance
from stepflow.core.definition import FlowDefinition, Transition, start_event
from stepflow.core.messages import (
    CallHandler,
    Command,
    Effect,
    HandlerRaised,
    HandlerReturned,
    TimerFired,
    Wake,
)
from stepflow.core.state import ErrorRecord, State
from stepflow.errors import StepflowError

__all__ = [
    "AnalysisError",
    "Happening",
    "Move",
    "Observation",
    "Outcome",
    "Trace",
    "replay",
]

#: What a handler (or timer) did, as the analysis explores it:
#: ``"returned"`` (a ``do`` returned ``None``), ``"true"``, ``"false"``,
#: ``"timed_out"`` (a ``wait_for`` still false at its deadline), ``"fired"`` (a
#: ``sleep``'s timer), ``"raised"`` (a generic ``Exception``) or
#: ``"raised:<type>"`` (an error of that recorded type, explored when an
#: enclosing :class:`~stepflow.RetryPolicy` treats it as non-retryable).
Outcome = str

#: The type name recorded for a plain ``"raised"`` outcome.
GENERIC_ERROR = "Exception"
_MESSAGE = "simulated failure"


class AnalysisError(StepflowError, ValueError):
    """An analysis was asked something that does not fit the flow.

    Raised for an invariant naming an unknown step or event, or a replayed
    outcome that does not answer the command the run is waiting for.
    """


class Happening(NamedTuple):
    """One thing that happened in a step of a run, in the order it happened.

    Attributes:
        what: ``"ran"``: the handler (or timer) of ``name`` answered with
            ``outcome``; ``"entered"``: the run entered the event ``name``.
        name: A step path (for ``"ran"``; a retry scope for its ``on_error``
            handler) or an event string (for ``"entered"``).
        outcome: For ``"ran"``, the :data:`Outcome`; else ``None``.

    """

    what: Literal["ran", "entered"]
    name: str
    outcome: Outcome | None = None


@attrs.frozen
class Observation:
    """One step of a run as an invariant observes it.

    Attributes:
        before: The state before the step, or ``None`` for the start of the run.
        command: The command answered, or ``None`` for the start of the run.
        outcome: How it was answered (an :data:`Outcome`), or ``None``.
        effect: The effect fed to :func:`stepflow.advance`, or ``None``.
        after: The state :func:`stepflow.advance` returned.
        entered: The events the run entered, in order, static hops included
            (``("completed:f/a", "start:f/b")``); empty when it stayed put (a
            poll found false, an ``on_error`` handler asked, a failure).

    """

    before: State | None
    command: Command | None
    outcome: Outcome | None
    effect: Effect | None
    after: State
    entered: tuple[str, ...]

    @property
    def happenings(self) -> tuple[Happening, ...]:
        """The command that ran (if any), then each event entered, in order."""
        entered = tuple(Happening("entered", event) for event in self.entered)
        if self.command is None:
            return entered
        return (Happening("ran", self.command.step, self.outcome), *entered)


@attrs.frozen
class Move:
    """One answered command of a trace.

    Attributes:
        command: The command the run was waiting for.
        outcome: How it was answered (an :data:`Outcome`).
        effect: The effect given to :func:`stepflow.advance`.
        state: The state :func:`stepflow.advance` returned.

    """

    command: Command
    outcome: Outcome
    effect: Effect
    state: State

    @property
    def key(self) -> tuple[str, str]:
        """``(command kind, step)``: the handler that answered."""
        return (self.command.kind, self.command.step)


@attrs.frozen
class Trace:
    """A run from its start: the first state and each move after it.

    Replaying ``[m.effect for m in moves]`` through :func:`stepflow.advance`
    from ``start`` gives exactly ``[m.state for m in moves]``.

    Attributes:
        start: The state of the new run (``advance(definition, None, now=0.0)``).
        moves: Every answered command, in order.

    """

    start: State
    moves: tuple[Move, ...] = ()

    @property
    def states(self) -> tuple[State, ...]:
        """Every state of the run: the start, then one per move."""
        return (self.start, *(m.state for m in self.moves))

    @property
    def final(self) -> State:
        """The last state."""
        return self.moves[-1].state if self.moves else self.start

    @property
    def path(self) -> tuple[tuple[Command, Outcome], ...]:
        """``(command, outcome)`` per move, from the start."""
        return tuple((m.command, m.outcome) for m in self.moves)

    @property
    def outcomes(self) -> tuple[tuple[str, str, Outcome], ...]:
        """``(command kind, step, outcome)`` per move: the input of :func:`replay`."""
        return tuple((m.command.kind, m.command.step, m.outcome) for m in self.moves)

    @property
    def script(self) -> dict[tuple[str, str], list[Outcome]]:
        """Outcomes per handler ``(kind, step)``, in the order they are asked.

        Timers are left out: they need no script, they fire.
        """
        script: dict[tuple[str, str], list[Outcome]] = {}
        for m in self.moves:
            if m.command.kind != "sleep":
                script.setdefault(m.key, []).append(m.outcome)
        return script

    def describe(self) -> str:
        """Render the trace one move a line, for a failure message."""
        lines = [f"start -> {self.start.events[0]} ({self.start.status})"]
        for m in self.moves:
            s = m.state
            lines.append(
                f"{m.command.kind} {m.command.step} {m.outcome} -> {s.events[0]} ({s.status})"
            )
        return "\n".join(lines)


# -- effects ----------------------------------------------------------------


def answer_time(state: State, clock: float) -> float:
    """When a command in flight in ``state`` is answered: now, or at its ``wake_at``."""
    wake = state.wake_at
    return clock if wake is None or wake <= clock else wake


def outcomes_for(definition: FlowDefinition, state: State, clock: float) -> list[Outcome]:
    """Every outcome explored for the command in flight in ``state``."""
    command = state.in_flight[0]
    kind = command.kind
    if kind == "sleep":
        return ["fired"]
    if kind == "do":
        options = ["returned"]
    elif kind == "wait_for":
        options = ["true"]
        deadline = state.timeout_at
        if deadline is None or answer_time(state, clock) < deadline:
            options.append("false")
        if deadline is not None:
            options.append("timed_out")
    else:
        options = ["true", "false"]
    options.append("raised")
    options.extend(f"raised:{name}" for name in _non_retryable(definition, command))
    return options


def _non_retryable(definition: FlowDefinition, command: Command) -> list[str]:
    """Error types an enclosing policy refuses to retry: they take other paths."""
    scopes = definition.enclosing_retries(command.event)
    if command.kind == "on_error":
        scopes = scopes[scopes.index(command.step) + 1 :]
    names: list[str] = []
    for scope in scopes:
        policy = definition.retry_rule(scope).policy
        if policy is not None:
            names.extend(n for n in policy.non_retryable if n not in names)
    return names


def make_effect(state: State, outcome: Outcome, clock: float) -> Effect:
    """Return the effect that answers the command in flight in ``state`` with ``outcome``.

    Raises:
        AnalysisError: ``outcome`` cannot answer that command.

    """
    command = state.in_flight[0]
    at = answer_time(state, clock)
    if command.kind == "sleep":
        if outcome != "fired":
            raise AnalysisError(f"a sleep's timer can only be 'fired', not {outcome!r}")
        assert isinstance(command, Wake)
        return TimerFired(command.id, max(at, command.at))
    assert isinstance(command, CallHandler)
    if outcome == "returned" and command.kind == "do":
        return HandlerReturned(command.id, None, at)
    if outcome in ("true", "false") and command.kind != "do":
        return HandlerReturned(command.id, outcome == "true", at)
    if outcome == "timed_out" and command.kind == "wait_for" and state.timeout_at is not None:
        return HandlerReturned(command.id, False, max(at, state.timeout_at))
    if outcome == "raised" or outcome.startswith("raised:"):
        error_type = outcome.partition(":")[2] or GENERIC_ERROR
        return HandlerRaised(command.id, ErrorRecord(error_type, _MESSAGE, command.step), None, at)
    raise AnalysisError(
        f"outcome {outcome!r} cannot answer the {command.kind} command of {command.step!r}; "
        "use returned (do), true/false (conditions, on_error), timed_out (wait_for with a "
        "timeout), fired (sleep), raised or raised:<type>"
    )


def effect_time(effect: Effect) -> float:
    """Return the time stamped on an effect made by :func:`make_effect`."""
    at = effect.at
    assert at is not None
    return at


# -- what happened ------------------------------------------------------------


def static_chain(table: Mapping[str, Transition], event: str) -> tuple[str, ...]:
    """``event`` and every event reached from it by static hops, in order."""
    chain = [event]
    t = table.get(event)
    while t is not None and t.is_static:
        event = t.destinations[0].event
        chain.append(event)
        t = table.get(event)
    return tuple(chain)


def restarted_scope(before: State, after: State) -> str | None:
    """Return the retry scope that ``after`` restarted (its attempts went up), if any."""
    if after.status != "running":
        return None
    for scope, attempt in after.attempts.items():
        if attempt > before.attempts.get(scope, 0):
            return scope
    return None


def entered_events(
    definition: FlowDefinition, before: State, command: Command, outcome: Outcome, after: State
) -> tuple[tuple[str, ...], str | None]:
    """Return the events a move entered, and the destination it took (if it moved).

    Derived from the transition table and the states :func:`stepflow.advance`
    returned; the last event entered is checked against ``after``'s position.
    """
    scope = restarted_scope(before, after)
    destination: str | None
    if scope is not None:
        destination = start_event(scope)
    elif after.status == "failed" or command.kind == "on_error":
        return (), None  # failed, or an on_error handler declined: nothing entered
    elif outcome == "timed_out" or outcome == "raised" or outcome.startswith("raised:"):
        return (), None  # the failure went to an on_error handler, or failed the run
    elif outcome in ("returned", "fired", "true"):
        destination = definition.table[command.event].destinations[0].event
    elif command.kind == "wait_for":
        # Polled false: the run stays where it is (the table's "poll again").
        return (), definition.table[command.event].destinations[1].event
    else:
        destination = definition.table[command.event].destinations[1].event
    chain = static_chain(definition.table, destination)
    if chain[-1] != after.events[0]:
        raise AssertionError(
            f"{command.kind} {command.step!r} answered {outcome!r} should rest at "
            f"{chain[-1]!r} by the table, but advance moved to {after.events[0]!r}"
        )
    return chain, destination


def initial(definition: FlowDefinition, now: float = 0.0) -> tuple[State, Observation]:
    """Start a run at ``now``; return its state and the observation of its start."""
    state, _ = advance(definition, None, now=now)
    entered = static_chain(definition.table, definition.start_event)
    return state, Observation(None, None, None, None, state, entered)


def replay(
    definition: FlowDefinition,
    outcomes: Iterable[tuple[str, str, Outcome]],
    *,
    now: float = 0.0,
) -> Trace:
    """Drive a new run of ``definition`` through :func:`stepflow.advance`, outcome by outcome.

    Each item names the command it answers, ``(kind, step, outcome)``, as in
    :attr:`Trace.outcomes`; time runs as described in this module's docstring,
    so replaying a trace found by :func:`explore` or :func:`paths` reproduces it.

    Raises:
        AnalysisError: the run is not waiting for the named command, or is over.

    """
    state, _ = initial(definition, now)
    start, clock, moves = state, now, []
    for index, (kind, step, outcome) in enumerate(outcomes):
        if not state.in_flight:
            raise AnalysisError(
                f"outcome #{index} ({kind} {step!r} {outcome!r}) comes after the run ended "
                f"({state.status} at {state.events[0]!r})"
            )
        command = state.in_flight[0]
        if (command.kind, command.step) != (kind, step):
            raise AnalysisError(
                f"outcome #{index} answers {kind} {step!r}, but the run waits for "
                f"{command.kind} {command.step!r}"
            )
        effect = make_effect(state, outcome, clock)
        state, _ = advance(definition, state, (effect,))
        clock = effect_time(effect)
        moves.append(Move(command, outcome, effect, state))
    return Trace(start, tuple(moves))
