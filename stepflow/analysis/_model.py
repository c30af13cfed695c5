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

Several positions
-----------------
A run with ``parallel`` or ``map`` groups holds several commands in flight
(:mod:`stepflow.core.groups`). A move answers one of them, the times being that
command's own (:func:`~stepflow.core.groups.command_times`). A map's ``items``
command is answered ``"items:<n>"``: its handler returned the list
``[0, 1, ..., n - 1]``. Positions, steps and events inside map items carry their
item indices (``f/regionsMap/steps[1]/push``); a step path without indices, as
in a matcher or a :attr:`Trace.script`, stands for that step in every item.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Literal, NamedTuple

import attrs
from pyrsistent import pmap

from stepflow.core.advance import advance
from stepflow.core.choice import case_key
from stepflow.core.definition import (
    FAILURE_REASONS,
    FlowDefinition,
    Transition,
    completed_event,
    concretize,
    item_indices,
    start_event,
    template_of,
)
from stepflow.core.groups import command_times
from stepflow.core.messages import (
    AwaitEvent,
    CallHandler,
    CancelRequested,
    Command,
    Effect,
    EventReceived,
    HandlerRaised,
    HandlerReturned,
    StartChild,
    TimerFired,
    Wake,
)
from stepflow.core.state import CANCELLED, CANCELLING, RUNNING, ErrorRecord, State
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
#: ``sleep``'s timer), ``"past"`` (a ``sleep_until``'s ``when`` returned a time
#: already past), ``"raised"`` (a generic ``Exception``),
#: ``"raised:<type>"`` (an error of that recorded type, explored when an
#: enclosing :class:`~stepflow.RetryPolicy` treats it as non-retryable, or an
#: enclosing ``catch`` takes it) or
#: ``"items:<n>"`` (a map's ``items`` handler returned a list of ``n`` items) or
#: ``"route:<JSON>"`` (a switch's route returned that scalar: each case's value,
#: then one that matches no case).
Outcome = str

#: The type name recorded for a plain ``"raised"`` outcome.
GENERIC_ERROR = "Exception"
#: The outcome of a cancellation move, and of an event sent early (see :class:`Move`).
CANCEL, SENT = "requested", "sent"
#: The reason of the cancellations the analysis requests.
CANCEL_REASON = "explored cancellation"
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
            ``outcome``; ``"entered"``: the run entered the event ``name``;
            ``"cancel"``: the run was asked to cancel (``name`` is the flow's
            name, ``outcome`` ``"requested"``); ``"event"``: the event
            ``name`` was sent to the run before a step waited for it
            (``outcome`` ``"sent"``).
        name: A step path (for ``"ran"``; a retry scope for its ``on_error``
            handler), an event string (for ``"entered"``), the flow's name
            (``"cancel"``) or an event's name (``"event"``).
        outcome: For ``"ran"``, the :data:`Outcome`; ``"requested"`` or
            ``"sent"``; else ``None``.
        kind: For ``"ran"``, the command's kind (``"do"``, ``"compensate"``...,
            telling a step from its compensation); else ``None``.

    """

    what: Literal["ran", "entered", "cancel", "event"]
    name: str
    outcome: Outcome | None = None
    kind: str | None = None


@attrs.frozen
class Observation:
    """One step of a run as an invariant observes it.

    Attributes:
        before: The state before the step, or ``None`` for the start of the run.
        command: The command answered, or ``None`` for the start of the run,
            a cancellation or an event sent early (see ``effect``).
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
            effect = self.effect
            if type(effect) is CancelRequested:
                return (Happening("cancel", self.after.flow, CANCEL), *entered)
            if type(effect) is EventReceived:
                return (Happening("event", effect.name, SENT), *entered)
            return entered
        command = self.command
        return (Happening("ran", command.step, self.outcome, command.kind), *entered)


@attrs.frozen
class Move:
    """One move of a trace: an answered command, a cancellation or an event sent early.

    Attributes:
        command: The command the run was waiting for; ``None`` for a
            cancellation (outcome ``"requested"``, effect a
            :class:`~stepflow.core.messages.CancelRequested`) or an event sent
            before a step waited for it (outcome ``"sent"``, effect an
            :class:`~stepflow.core.messages.EventReceived`).
        outcome: How it was answered (an :data:`Outcome`).
        effect: The effect given to :func:`stepflow.advance`.
        state: The state :func:`stepflow.advance` returned.

    """

    command: Command | None
    outcome: Outcome
    effect: Effect
    state: State

    @property
    def key(self) -> tuple[str, str]:
        """``(command kind, step)``: the handler that answered.

        ``("cancel", "")`` for a cancellation, ``("event", <name>)`` for an
        event sent early.
        """
        command, effect = self.command, self.effect
        if command is not None:
            return (command.kind, command.step)
        if type(effect) is EventReceived:
            return ("event", effect.name)
        return ("cancel", "")


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
    def path(self) -> tuple[tuple[Command | None, Outcome], ...]:
        """``(command, outcome)`` per move, from the start (``None``: see :class:`Move`)."""
        return tuple((m.command, m.outcome) for m in self.moves)

    @property
    def outcomes(self) -> tuple[tuple[str, str, Outcome], ...]:
        """``(command kind, step, outcome)`` per move: the input of :func:`replay`.

        A cancellation is ``("cancel", "", "requested")``, an event sent early
        ``("event", <name>, "sent")``.
        """
        return tuple((*m.key, m.outcome) for m in self.moves)

    @property
    def script(self) -> dict[tuple[str, str], list[Outcome]]:
        """Outcomes per handler ``(kind, step)``, in the order they are asked.

        Timers are left out: they need no script, they fire. A step inside a
        map item is keyed without its item indices (one handler serves every
        item), its outcomes in the order the trace answers them.
        """
        script: dict[tuple[str, str], list[Outcome]] = {}
        for m in self.moves:
            if m.command is not None and m.command.kind != "sleep":
                key = (m.command.kind, template_of(m.command.step))
                script.setdefault(key, []).append(m.outcome)
        return script

    def describe(self) -> str:
        """Render the trace one move a line, for a failure message."""
        lines = [f"start -> {_where(self.start)} ({self.start.status})"]
        for m in self.moves:
            s = m.state
            kind, step = m.key
            what = f"{kind} {step}" if step else kind
            lines.append(f"{what} {m.outcome} -> {_where(s)} ({s.status})")
        return "\n".join(lines)


def _where(state: State) -> str:
    """Return a state's position, or its positions joined with ``" & "``."""
    return " & ".join(state.events)


# -- effects ----------------------------------------------------------------


#: How many items a map's ``items`` handler returns at most, by default.
MAX_ITEMS = 2


def answer_time(state: State, clock: float, command: Command) -> float:
    """When ``command``, in flight in ``state``, is answered: now, or at its ``wake_at``."""
    wake = command_times(state, command)[0]
    return clock if wake is None or wake <= clock else wake


def outcomes_for(
    definition: FlowDefinition,
    state: State,
    clock: float,
    command: Command,
    *,
    max_items: int = MAX_ITEMS,
) -> list[Outcome]:
    """Every outcome explored for ``command``, in flight in ``state``."""
    kind = command.kind
    if kind == "sleep":
        return ["fired"]
    if kind == "wait_event":
        # Events reach running and cancelling runs (stepflow.core.events, Rule 2),
        # and an event reaches the first position waiting for its name (Rule 3).
        assert isinstance(command, AwaitEvent)
        first = next(
            c for c in state.in_flight if isinstance(c, AwaitEvent) and c.name == command.name
        )
        active = state.status == RUNNING or state.status == CANCELLING
        received = ["received"] if active and first == command else []
        return received if command[4] is None else [*received, "timed_out"]
    if kind == "map":
        options = [f"items:{n}" for n in range(max_items + 1)]
    elif kind == "do" or kind == "compensate" or kind == "call":
        options = ["returned"]  # (a call: its child completed; raised: it failed)
    elif kind == "switch":
        cases = definition.table[template_of(command.event)].cases
        options = [f"route:{key}" for key in (*cases, _unmatched(cases))]
    elif kind == "sleep_until":
        options = ["past"]  # a time already past: its timer is due at once
    elif kind == "wait_for":
        options = ["true"]
        deadline = command_times(state, command)[1]
        if deadline is None or answer_time(state, clock, command) < deadline:
            options.append("false")
        if deadline is not None:
            options.append("timed_out")
    else:
        options = ["true", "false"]
    options.append("raised")
    options.extend(f"raised:{name}" for name in _non_retryable(definition, command))
    return options


def _unmatched(cases: tuple[str, ...]) -> str:
    """Return the key of a JSON scalar that matches none of a switch's ``cases``."""
    key, n = "null", 0
    while key in cases:
        n += 1
        key = json.dumps("_" * n)
    return key


def _non_retryable(definition: FlowDefinition, command: Command) -> list[str]:
    """Error types an enclosing policy refuses to retry, or a catch takes: other paths."""
    scopes = definition.enclosing_failure_scopes(template_of(command.event))
    if command.kind == "on_error":
        scopes = scopes[scopes.index(template_of(command.step)) + 1 :]
    names: list[str] = []
    for scope in scopes:
        if scope in definition._cleanups:
            continue  # a finally or a saga takes every error
        if scope in definition._catches:
            listed = definition.catch_rule(scope).errors or ()
        else:
            policy = definition.retry_rule(scope).policy
            listed = () if policy is None else policy.non_retryable
        names.extend(n for n in listed if n not in names)
    return names


def make_effect(state: State, outcome: Outcome, clock: float, command: Command) -> Effect:
    """Return the effect that answers ``command``, in flight in ``state``, with ``outcome``.

    Raises:
        AnalysisError: ``outcome`` cannot answer that command.

    """
    at = answer_time(state, clock, command)
    if command.kind == "sleep":
        if outcome != "fired":
            raise AnalysisError(f"a sleep's timer can only be 'fired', not {outcome!r}")
        assert isinstance(command, Wake)
        return TimerFired(command.id, max(at, command.at))
    if isinstance(command, AwaitEvent):
        if outcome == "received":
            return EventReceived(command.name, None, at)
        if outcome == "timed_out" and command.at is not None:
            return TimerFired(command.id, max(at, command.at))
        raise AnalysisError(
            f"a wait_event can only be 'received' (or 'timed_out', with a timeout), not {outcome!r}"
        )
    assert isinstance(command, (CallHandler, StartChild))
    if outcome == "returned" and command.kind in ("do", "compensate", "call"):
        return HandlerReturned(command.id, None, at)  # (a call: stepflow.core.children, Rule 4)
    if outcome == "past" and command.kind == "sleep_until":
        return HandlerReturned(command.id, 0, at)
    if outcome in ("true", "false") and command.kind != "do":
        return HandlerReturned(command.id, outcome == "true", at)
    deadline = command_times(state, command)[1]
    if outcome == "timed_out" and command.kind == "wait_for" and deadline is not None:
        return HandlerReturned(command.id, False, max(at, deadline))
    if outcome.startswith("route:") and command.kind == "switch":
        try:
            return HandlerReturned(command.id, json.loads(outcome.partition(":")[2]), at)
        except ValueError:
            pass
    if outcome.startswith("items:") and command.kind == "map":
        count = outcome.partition(":")[2]
        if count.isdigit():
            return HandlerReturned(command.id, list(range(int(count))), at)
    if outcome == "raised" or outcome.startswith("raised:"):
        error_type = outcome.partition(":")[2] or GENERIC_ERROR
        return HandlerRaised(command.id, ErrorRecord(error_type, _MESSAGE, command.step), None, at)
    raise AnalysisError(
        f"outcome {outcome!r} cannot answer the {command.kind} command of {command.step!r}; "
        "use returned (do, compensate, call), true/false (conditions, on_error), timed_out "
        "(wait_for with a timeout), fired (sleep), past (sleep_until), received/timed_out "
        "(wait_event), items:<n> (a map's items), route:<JSON> (a switch), raised or raised:<type>"
    )


def cancel_effect(clock: float) -> CancelRequested:
    """Return the cancellation the analysis requests at virtual time ``clock``."""
    return CancelRequested(CANCEL_REASON, clock)


def early_event(name: str, clock: float) -> EventReceived:
    """Return the event ``name`` (no payload), sent at virtual time ``clock``."""
    return EventReceived(name, None, clock)


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


#: An entry of the transition table a move took: ``(source, destination)`` events
#: of the definition (without item indices).
Taken = tuple[str, str]

_FAILING = ("timed_out", "raised")


def _failing(outcome: Outcome) -> bool:
    return outcome in _FAILING or outcome.startswith("raised:")


def _conc(definition: FlowDefinition, text: str, source: str) -> str:
    """Return ``text`` (an event or path) with the item indices of position ``source``."""
    if "[" not in source:
        return text
    maps = definition._event_maps.get(template_of(source), ())
    return concretize(text, maps, item_indices(source))


def _path(event: str) -> str:
    return event.partition(":")[2]


def _completed(before: State, after: State, group: str) -> bool:
    """Whether group ``group`` completed in the move from ``before`` to ``after``."""
    if group in after.groups:
        return False
    output = after.outputs.get(group)
    return output is not None and output is not before.outputs.get(group)


def _join(
    definition: FlowDefinition,
    group: str,
    join: str,
    before: State,
    after: State,
    taken: list[Taken],
    out: list[str],
) -> bool:
    """Follow what a branch or item of ``group`` ending did; return whether the group completed.

    ``join`` is the join transition the branch or item ended at. Items that
    started in its place are entered; a completed group's end is walked on from.
    """
    fork = definition.table[start_event(template_of(group))]
    was, now = before.groups.get(group), after.groups.get(group)
    if fork.kind == "map" and was is not None and now is not None:
        for index in range(was.started, now.started):
            taken.append((fork.source, fork.destinations[0].event))
            _walk(definition, start_event(f"{group}/steps[{index}]"), before, after, taken, out)
    if not _completed(before, after, group):
        return False
    taken.append((join, completed_event(template_of(group))))
    _walk(definition, completed_event(group), before, after, taken, out)
    return True


def _walk(
    definition: FlowDefinition,
    event: str,
    before: State,
    after: State,
    taken: list[Taken],
    out: list[str],
) -> None:
    """Append to ``out`` the events a position entering ``event`` passes, in order.

    Static hops are followed; a ``parallel`` fork enters every branch; a join
    leaves its group if the group completed in this move (``before`` to
    ``after``); anything else is where the position rests.
    """
    table = definition.table
    while True:
        out.append(event)
        template = template_of(event)
        t = table.get(template)
        if t is None:  # the flow's end
            return
        if (
            t.kind == "static"
            or t.kind == "finally"
            or t.kind == "saga"
            or (
                t.kind == "leave"
                and after.outputs.get(_conc(definition, str(t.step), event)) is None
            )
        ):
            if not t.is_static:
                taken.append((template, t.destinations[0].event))
            event = _conc(definition, t.destinations[0].event, event)
            continue
        if t.kind == "parallel":
            if _path(event) in after.groups:  # not stopped by a failed group around it
                for d in t.destinations:
                    if d.reason not in FAILURE_REASONS:
                        taken.append((template, d.event))
                        _walk(
                            definition, _conc(definition, d.event, event), before, after, taken, out
                        )
            return
        if t.kind == "join":
            group = _conc(definition, str(t.step), event)
            _join(definition, group, template, before, after, taken, out)
        return


def _restart_source(definition: FlowDefinition, command: Command, scope: str) -> str:
    """Return the transition whose ``retry`` (or ``catch``) destination ``scope`` took."""
    template = template_of(command.event)
    transition = definition.table[template]
    if scope in transition.retry_scopes or scope in transition.catch_scopes:
        return template
    # The failure left a group (or several): the group's fork lists the retry.
    path = _path(template)
    forks = [
        t
        for t in definition.handler_transitions()
        if t.kind in ("parallel", "map")
        and path.startswith(str(t.step) + "/")
        and (scope in t.retry_scopes or scope in t.catch_scopes)
    ]
    return max(forks, key=lambda t: len(str(t.step))).source


def _unwinds(definition: FlowDefinition, before: State, after: State) -> bool:
    """Whether a move of a run of one position is retraced by :mod:`._unwind`."""
    return not definition._concurrent and bool(
        definition._cleanups
        or before.mailbox
        or before.status != RUNNING
        or after.status == CANCELLING
        or after.status == CANCELLED
    )


def entered_events(
    definition: FlowDefinition,
    before: State,
    command: Command | None,
    outcome: Outcome,
    after: State,
) -> tuple[tuple[str, ...], tuple[Taken, ...]]:
    """Return the events a move entered, and the table entries it took, in order.

    Derived from the transition table and the states :func:`stepflow.advance`
    returned. For a flow of one position, the last event entered is checked
    against ``after``'s position. In a flow with groups a move may take several
    entries (a branch ends, its group completes, the next group forks) or take
    one and enter nothing more (a position in a failed group stops).
    ``command`` is ``None`` for a cancellation or an event sent early (see
    :class:`Move`).
    """
    if command is None and definition._concurrent:
        # Groups cancel their positions at once: not retraced; what the move
        # entered is taken as where its new positions rest.
        return tuple(e for e in after.events if e not in before.events), ()
    if command is None or _unwinds(definition, before, after):
        from stepflow.analysis._unwind import retrace

        return retrace(definition, before, command, outcome, after)
    scope = restarted_scope(before, after)
    template = template_of(command.event)
    transition = definition.table[template]
    taken: list[Taken] = []
    out: list[str] = []
    concurrent = definition._concurrent
    if scope is not None:
        pattern = template_of(scope)
        taken.append((_restart_source(definition, command, pattern), start_event(pattern)))
        _walk(definition, start_event(scope), before, after, taken, out)
        return tuple(out), tuple(taken)
    caught = _caught(definition, before, after)
    if caught is not None:
        pattern = template_of(caught)
        handler = start_event(pattern + "/handler")
        taken.append((_restart_source(definition, command, pattern), handler))
        _walk(definition, start_event(caught + "/handler"), before, after, taken, out)
        return tuple(out), tuple(taken)
    if after.status == "failed" or command.kind == "on_error":
        return (), ()  # failed, or an on_error handler declined: nothing entered
    # A wait_event's timeout leads to its on_timeout steps, when it has some.
    if _failing(outcome) and not (
        command.kind == "wait_event" and definition._node(command.event).on_false
    ):
        if concurrent:
            # The error may have ended a branch or item: its group goes on, or completes.
            path = _path(template)
            for group in reversed(definition._node(command.event).groups):
                pattern = template_of(group)
                join = completed_event(f"{pattern}/{path[len(pattern) + 1 :].split('/')[0]}")
                if group in after.groups or _join(
                    definition, group, join, before, after, taken, out
                ):
                    break
                path = pattern
        return tuple(out), tuple(taken)
    if command.kind == "map":
        group = _path(command.event)
        progress = after.groups.get(group)
        if outcome == "items:0" or progress is None:
            destination = transition.destinations[1].event
        else:
            destination = transition.destinations[0].event
            for index in range(progress.started):
                taken.append((template, destination))
                _walk(definition, start_event(f"{group}/steps[{index}]"), before, after, taken, out)
            return tuple(out), tuple(taken)
    elif command.kind == "switch":
        key = case_key(json.loads(outcome.partition(":")[2]))
        cases = transition.cases
        destination = transition.destinations[
            cases.index(key) if key in cases else len(cases)
        ].event
    elif outcome in ("returned", "fired", "true", "received"):
        destination = transition.destinations[0].event
    elif command.kind == "wait_for":
        # Polled false: the run stays where it is (the table's "poll again").
        return (), ((template, transition.destinations[1].event),)
    elif command.kind == "sleep_until":
        return (), ()  # its time is known: it stays where it is, for its timer
    else:
        destination = transition.destinations[1].event
    taken.append((template, destination))
    _walk(definition, _conc(definition, destination, command.event), before, after, taken, out)
    last = out[-1]
    if not concurrent:
        if last != after.events[0]:
            raise AssertionError(
                f"{command.kind} {command.step!r} answered {outcome!r} should rest at "
                f"{last!r} by the table, but advance moved to {after.events[0]!r}"
            )
    elif after.status == "running" and last not in after.events:
        kind = (
            definition.table[template_of(last)].kind
            if template_of(last) in definition.table
            else None
        )
        if kind not in ("parallel", "join", None):
            out.pop()  # a position in a failed group stops instead of resting here
    return tuple(out), tuple(taken)


def _caught(definition: FlowDefinition, before: State, after: State) -> str | None:
    """Return the catch scope that took an error in the move from ``before`` to ``after``."""
    if not definition._catches:
        return None
    for scope, record in after.outputs.items():
        if template_of(scope) in definition._catches and record is not before.outputs.get(scope):
            return str(scope)
    return None


def initial(definition: FlowDefinition, now: float = 0.0) -> tuple[State, Observation]:
    """Start a run at ``now``; return its state and the observation of its start."""
    state, _ = advance(definition, None, now=now)
    if definition._concurrent or definition._cleanups:
        entered, _ = started(definition, state)
    else:
        entered = static_chain(definition.table, definition.start_event)
    return state, Observation(None, None, None, None, state, entered)


def started(definition: FlowDefinition, state: State) -> tuple[tuple[str, ...], tuple[Taken, ...]]:
    """Return the events a new run (``state``) entered, and the table entries it took.

    A flow that starts with a group forks (or asks for its items) at once.
    """
    out: list[str] = []
    taken: list[Taken] = []
    nothing = state._replace(groups=pmap(), outputs=pmap())
    _walk(definition, definition.start_event, nothing, state, taken, out)
    return tuple(out), tuple(taken)


def replay(
    definition: FlowDefinition,
    outcomes: Iterable[tuple[str, str, Outcome]],
    *,
    now: float = 0.0,
) -> Trace:
    """Drive a new run of ``definition`` through :func:`stepflow.advance`, outcome by outcome.

    Each item names the command it answers, ``(kind, step, outcome)``, as in
    :attr:`Trace.outcomes` (with several commands in flight, the one of that
    step, item indices included); time runs as described in this module's docstring,
    so replaying a trace found by :func:`explore` or :func:`paths` reproduces it.
    ``("cancel", "", "requested")`` cancels the run, and ``("event", name,
    "sent")`` sends it the event ``name``, at the current virtual time.

    Raises:
        AnalysisError: the run is not waiting for the named command, or is over.

    """
    state, _ = initial(definition, now)
    start, clock, moves = state, now, []
    for index, (kind, step, outcome) in enumerate(outcomes):
        if kind in ("cancel", "event"):
            if state.status != RUNNING:
                raise AnalysisError(
                    f"outcome #{index} ({kind} {step!r}) comes when the run is {state.status}; "
                    "only a running run is cancelled or sent an event"
                )
            effect: Effect = cancel_effect(clock) if kind == "cancel" else early_event(step, clock)
            state, _ = advance(definition, state, (effect,))
            moves.append(Move(None, CANCEL if kind == "cancel" else SENT, effect, state))
            continue
        if not state.in_flight:
            raise AnalysisError(
                f"outcome #{index} ({kind} {step!r} {outcome!r}) comes after the run ended "
                f"({state.status} at {state.events[0]!r})"
            )
        matching = [c for c in state.in_flight if (c.kind, c.step) == (kind, step)]
        if not matching:
            waiting = ", ".join(f"{c.kind} {c.step!r}" for c in state.in_flight)
            raise AnalysisError(
                f"outcome #{index} answers {kind} {step!r}, but the run waits for {waiting}"
            )
        command = matching[0]
        effect = make_effect(state, outcome, clock, command)
        state, _ = advance(definition, state, (effect,))
        clock = effect_time(effect)
        moves.append(Move(command, outcome, effect, state))
    return Trace(start, tuple(moves))
