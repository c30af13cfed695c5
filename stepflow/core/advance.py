"""Advance a run by one batch of effects: the pure function at stepflow's heart.

Rule 1: :func:`advance` computes and executes nothing. It performs no I/O, reads
no clock, draws no random number, and calls no user code. The commands it returns
are requests, carried out (or not) by whoever called it.

Rule 2: inputs are never mutated. A bad effect batch raises a typed
:class:`~stepflow.errors.EffectError` and leaves the state as it was; a failing
step is not an exception but a state: ``status == "failed"`` with the error
recorded and the position kept.

Theory of operation
-------------------
A state rests at an event that waits for a handler (see
:mod:`stepflow.core.definition`), with one command in flight for it. An effect
answers that command:

* a ``do`` that returned moves to the step's ``completed`` event; its JSON value
  is kept in ``outputs`` under the step's path;
* a condition that returned a ``bool`` takes the matching destination;
* a handler that raised (or returned a value of the wrong kind) hands the error
  to the innermost enclosing retry as an ``on_error`` command; ``True`` restarts
  that retry's group, ``False`` passes the same error outward, and an exception
  from ``on_error`` replaces it. With no retry left the run fails.

Static transitions after the move were resolved at compile time, so the new
position is found with one lookup, and its command is issued in the same call.
A state that already has its command in flight is returned as it is, with the
same command (same id), so a crashed worker's successor re-runs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyrsistent.typing import PMap

from stepflow.core._json import NotJSON, freeze_json
from stepflow.core.definition import FlowDefinition, _Node, start_event
from stepflow.core.messages import CallHandler, Command, Effect, HandlerRaised, HandlerReturned
from stepflow.core.state import (
    COMPLETED,
    EMPTY_OUTPUTS,
    FAILED,
    RUNNING,
    ErrorRecord,
    State,
)
from stepflow.errors import (
    DuplicateEffectError,
    EffectError,
    FlowMismatchError,
    HandlerResultError,
    IncompatibleDefinition,
    LateEffectError,
    StateError,
    UnknownEffectError,
    UnknownEventError,
)

__all__ = ["advance", "check_state", "initial_state"]

# NamedTuple.__new__ is a Python function; tuple.__new__ builds the same object
# several times faster, and states and commands are built on every step.
_new = tuple.__new__
_STATUSES = (RUNNING, COMPLETED, FAILED)


def initial_state(definition: FlowDefinition) -> State:
    """Return the state of a new run of ``definition``, before its first command."""
    return _new(
        State,
        (
            definition.name,
            definition.fingerprint,
            (definition.start_event,),
            RUNNING,
            None,
            (),
            0,
            EMPTY_OUTPUTS,
        ),
    )


def advance(
    definition: FlowDefinition,
    state: State | None = None,
    effects: Sequence[Effect] = (),
) -> tuple[State, tuple[Command, ...]]:
    """Apply ``effects`` to ``state`` and return the next state and its commands.

    This function is pure: it executes nothing, reads no clock and mutates none of
    its inputs. Carrying out the returned commands is the caller's job (see
    :class:`stepflow.Interpreter`).

    Args:
        definition: The compiled flow.
        state: The current state, or ``None`` to start a new run.
        effects: Outcomes of commands in flight, addressed by command id.

    Returns:
        The new state and the commands in flight in it. With no effects, a state
        whose command is in flight comes back unchanged with the same command;
        a completed or failed state comes back with no command.

    Raises:
        UnknownEffectError: an effect answers a command id never issued.
        LateEffectError: an effect answers a command no longer in flight.
        DuplicateEffectError: two effects answer the same command.
        EffectError: an item of ``effects`` is not an effect.
        FlowMismatchError, UnknownEventError, IncompatibleDefinition: the state
            does not fit ``definition`` (see :func:`check_state`).

    """
    # The hot path reads tuples by position and builds them with tuple.__new__:
    # advance runs once per step of every run a worker drives.
    name, fingerprint, nodes = definition._hot
    if state is None:
        state = initial_state(definition)
    elif state[1] is not fingerprint and (state[1] != fingerprint or state[0] != name):
        state = check_state(definition, state)
    _, _, events, status, _, in_flight, seq, outputs = state
    if not effects:
        if in_flight or status != RUNNING:
            return state, in_flight
        if len(events) != 1 or events[0] not in nodes:
            check_state(definition, state)  # raises the error that explains it
        return _issue(definition, events[0], seq, outputs)
    effect = effects[0]
    effect_type = type(effect)
    if (
        len(effects) != 1
        or not in_flight
        or (effect_type is not HandlerReturned and effect_type is not HandlerRaised)
        or effect[0] != in_flight[0][0]
    ):
        raise _rejection(state, effects)
    command = in_flight[0]
    node = nodes.get(command[3])
    if node is None or node[2] is None:
        check_state(definition, state)  # raises the error that explains it
        raise StateError(f"command {command!r} waits at an event with no handler")
    kind = command[1]
    if effect_type is HandlerRaised:
        return _fail_step(definition, state, command, node, effect[1])
    value = effect[1]
    if kind == "do":
        if value is None:
            if outputs is not EMPTY_OUTPUTS and command[2] in outputs:
                outputs = outputs.discard(command[2])
        else:
            try:
                outputs = outputs.set(command[2], freeze_json(value))
            except NotJSON as exc:
                message = (
                    f"do step {command[2]!r} returned a value that is not JSON ({exc}); "
                    "return dict, list, str, int, float, bool or None, "
                    "or keep the object elsewhere and return its id"
                )
                error = _result_error(command[2], message)
                return _fail_step(definition, state, command, node, error)
        target = nodes[node[4]]
    elif value is True or value is False:
        if kind == "on_error":
            if value:
                return _issue(definition, nodes[start_event(command[2])][0], seq, outputs)
            assert command[4] is not None
            return _fail_step(definition, state, command, node, command[4])
        target = nodes[node[4] if value else node[5]]
    else:
        what = "on_error handler of" if kind == "on_error" else f"{kind} condition of"
        message = (
            f"the {what} {command[2]!r} returned {value!r:.80} "
            f"({type(value).__name__}); it must return True or False"
        )
        return _fail_step(definition, state, command, node, _result_error(command[2], message))
    # Rest at the target and issue its command: _issue, inlined on the hot path.
    if target[2] is None:
        return _new(State, (name, fingerprint, target[1], COMPLETED, None, (), seq, outputs)), ()
    seq += 1
    commands = (_new(CallHandler, (seq, target[2], target[3], target[0], None)),)
    return _new(
        State, (name, fingerprint, target[1], RUNNING, None, commands, seq, outputs)
    ), commands


def _rejection(state: State, effects: Sequence[Effect]) -> EffectError:
    """Explain why ``effects`` cannot be applied to ``state``."""
    seen: set[int] = set()
    for effect in effects:
        if type(effect) is not HandlerReturned and type(effect) is not HandlerRaised:
            return EffectError(
                f"{effect!r:.120} is not an effect; pass HandlerReturned or HandlerRaised "
                "values (Interpreter.execute makes them)",
                command_id=-1,
            )
        command_id = effect[0]
        if command_id in seen:
            return DuplicateEffectError(
                f"two effects in one batch answer command {command_id}; "
                "send each command's outcome once",
                command_id=command_id,
            )
        seen.add(command_id)
    in_flight = {command.id for command in state.in_flight}
    for command_id in seen:
        if command_id in in_flight:
            continue
        if isinstance(command_id, int) and 0 < command_id <= state.seq:
            return LateEffectError(
                f"command {command_id} of run {state.flow!r} was already answered "
                f"(status {state.status!r}, in flight: {sorted(in_flight)}); "
                "an outcome applies once: drop this stale effect",
                command_id=command_id,
            )
        return UnknownEffectError(
            f"no command {command_id!r} was issued in this run (last id: {state.seq}); "
            "address effects to the ids of the commands advance returned",
            command_id=command_id if isinstance(command_id, int) else -1,
        )
    return EffectError(
        f"a batch of {len(effects)} effects cannot answer the {len(in_flight)} command(s) "
        "in flight; send one effect per command",
        command_id=-1,
    )


def _result_error(step: str, message: str) -> ErrorRecord:
    return ErrorRecord.from_exception(HandlerResultError(message), step)


def _issue(
    definition: FlowDefinition, event: str, seq: int, outputs: PMap[str, Any]
) -> tuple[State, tuple[Command, ...]]:
    """Rest at ``event`` (resolved through static hops) and issue its command."""
    node = definition._nodes[event]
    name, fingerprint = definition.name, definition.fingerprint
    if node[2] is None:
        return _new(State, (name, fingerprint, node[1], COMPLETED, None, (), seq, outputs)), ()
    seq += 1
    commands = (_new(CallHandler, (seq, node[2], node[3], node[0], None)),)
    return _new(
        State, (name, fingerprint, node[1], RUNNING, None, commands, seq, outputs)
    ), commands


def _fail_step(
    definition: FlowDefinition,
    state: State,
    command: CallHandler,
    node: _Node,
    error: ErrorRecord,
) -> tuple[State, tuple[Command, ...]]:
    """Hand ``error`` to the next enclosing retry, or fail the run with it.

    ``command`` is the failed one: a step's handler (ask the innermost retry) or an
    ``on_error`` handler (ask the retry enclosing the one that answered).
    """
    scopes = node.retry_scopes
    index = scopes.index(command.step) + 1 if command.kind == "on_error" else 0
    if index < len(scopes):
        seq = state.seq + 1
        ask = _new(CallHandler, (seq, "on_error", scopes[index], command.event, error))
        fields = (definition.name, definition.fingerprint, state[2], RUNNING, None, (ask,))
        return _new(State, (*fields, seq, state[7])), (ask,)
    return state._replace(
        flow=definition.name,
        fingerprint=definition.fingerprint,
        status=FAILED,
        error=error,
        in_flight=(),
    ), ()


def check_state(definition: FlowDefinition, state: State) -> State:
    """Check that ``state`` can continue under ``definition``; return it adopted.

    A state made under another fingerprint is accepted when every event it holds,
    and every command in flight, still exists with the same meaning; it is returned
    carrying the new fingerprint.

    Raises:
        FlowMismatchError: the state belongs to another flow.
        StateError: the state is malformed (no position, several positions, an
            unknown status, a failed state with no error).
        UnknownEventError: a state of this very definition holds unknown events.
        IncompatibleDefinition: a state of another fingerprint holds events or
            commands missing from this definition.

    """
    if not isinstance(state, State):
        raise StateError(f"expected a stepflow State, got {state!r:.120}")
    # Fast path: the common case of a well-formed state of this very definition
    # (loads checks every state it reads), decided with a handful of lookups.
    name, fingerprint, nodes = definition._hot
    flow, state_fingerprint, events, status, error, in_flight = state[:6]
    if flow == name and state_fingerprint == fingerprint and len(events) == 1:
        node = nodes.get(events[0])
        if node is not None and (error is None) == (status != FAILED) and status in _STATUSES:
            if not in_flight:
                return state
            command = in_flight[0]
            if (
                len(in_flight) == 1
                and node.event == command[3] == events[0]
                and node.kind == command[1]
                and node.step == command[2]
                and command[4] is None
            ):
                return state
    if state.flow != definition.name:
        raise FlowMismatchError(
            f"the state belongs to flow {state.flow!r}, not {definition.name!r}; "
            "load it with the definition of its own flow",
            expected=definition.name,
            actual=state.flow,
        )
    if len(state.events) != 1:
        raise StateError(
            f"the state holds {len(state.events)} positions {list(state.events)!r}; "
            "this version of stepflow runs exactly one position per run"
        )
    if state.status not in _STATUSES:
        raise StateError(f"unknown status {state.status!r}; expected one of {_STATUSES}")
    if (state.status == FAILED) != (state.error is not None):
        raise StateError(
            f"a {state.status!r} state must {'' if state.status == FAILED else 'not '}"
            f"carry an error record, got {state.error!r}"
        )
    missing = [e for e in state.events if e not in nodes]
    for command in state.in_flight:
        if command.event not in state.events:
            raise StateError(
                f"command {command.id} waits at {command.event!r}, but the state is at "
                f"{list(state.events)!r}; a command in flight belongs to the state's position"
            )
        # A handler's resting node is keyed by its own event: a match there means
        # the command still names the same handler with the same meaning.
        node = nodes.get(command.event)
        if node is None or node.event != command.event:
            if command.event not in missing:
                missing.append(command.event)
        elif command.kind == "on_error":
            if command.step not in node.retry_scopes:
                missing.append(f"on_error of {command.step} around {command.event}")
        elif node.kind != command.kind or node.step != command.step:
            missing.append(f"{command.kind} of {command.step} at {command.event}")
    if missing:
        listed = ", ".join(repr(m) for m in missing)
        if state.fingerprint != definition.fingerprint:
            raise IncompatibleDefinition(
                f"the state was saved under definition {state.fingerprint[:19]}... and "
                f"holds {listed}, which {definition.name!r} ({definition.fingerprint[:19]}...) "
                "no longer has; deploy a definition that keeps them, or migrate the state",
                events=tuple(missing),
                state_fingerprint=state.fingerprint,
                definition_fingerprint=definition.fingerprint,
            )
        raise UnknownEventError(
            f"the state holds {listed}, unknown to flow {definition.name!r}; "
            "the state is corrupt or belongs to another version of the flow",
            events=tuple(missing),
        )
    if state.fingerprint != definition.fingerprint:
        state = state._replace(fingerprint=definition.fingerprint)
    return state
