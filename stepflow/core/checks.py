"""Check that a state fits a definition before the core advances it.

:func:`check_state` is the gate every state passes before :func:`stepflow.advance`
works on it: a state read back from storage, made by another version of the
flow, or written by hand. Its rules:

* a state belongs to one flow (its name) and is adopted by another fingerprint of
  that flow only when every position, command in flight, retry attempt and group
  it holds still exists there with the same meaning;
* a run of a flow without groups holds one position; a run with several holds
  one command per position, in the same order, every position inside a group
  whose progress it holds;
* its status is one of ``running``, ``completed``, ``failed``, ``cancelling``,
  ``cancelled``; a failed, cancelling or cancelled state (only) carries its
  error record;
* a ``compensate`` command in flight waits at its saga's compensation and names
  a ``do`` step with ``compensate=`` inside that saga.

A well-formed state of the very definition passes a fast path of a few lookups
(advance runs once per step of every run a worker drives).
"""

from __future__ import annotations

from stepflow.core.definition import FlowDefinition, _Node, start_event
from stepflow.core.messages import CallHandler, Command, StartChild
from stepflow.core.state import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    EMPTY_ATTEMPTS,
    FAILED,
    RUNNING,
    State,
)
from stepflow.core.timers import fits
from stepflow.errors import (
    FlowMismatchError,
    IncompatibleDefinition,
    StateError,
    UnknownEventError,
)

__all__ = ["check_state"]

_STATUSES = (RUNNING, COMPLETED, FAILED, CANCELLING, CANCELLED)


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
    name, fingerprint, nodes, _ = definition._hot
    flow, state_fingerprint, events, status, error, in_flight = state[:6]
    if flow == name and state_fingerprint == fingerprint and len(events) == 1:
        node = nodes.get(events[0])
        if (
            node is not None
            and (error is None) == (status in (RUNNING, COMPLETED))
            and status in _STATUSES
            and (state[10] is EMPTY_ATTEMPTS or all(s in node.retry_scopes for s in state[10]))
            and not node[10]  # (groups: a position in a group needs its progress checked)
        ):
            if not in_flight:
                return state
            command = in_flight[0]
            if (
                len(in_flight) == 1
                and node.event == command[3] == events[0]
                and node.kind == command[1]
                and node.step == command[2]
                and (command[4] is None or type(command) is not CallHandler)
            ):
                return state
    if state.flow != definition.name:
        raise FlowMismatchError(
            f"the state belongs to flow {state.flow!r}, not {definition.name!r}; "
            "load it with the definition of its own flow",
            expected=definition.name,
            actual=state.flow,
        )
    if not state.events or (len(state.events) != 1 and not definition._concurrent):
        raise StateError(
            f"the state holds {len(state.events)} positions {list(state.events)!r}; "
            f"flow {definition.name!r} has no parallel or map group, so a run of it holds "
            "exactly one position"
        )
    if state.status not in _STATUSES:
        raise StateError(f"unknown status {state.status!r}; expected one of {_STATUSES}")
    recorded = state.status not in (RUNNING, COMPLETED)
    if recorded != (state.error is not None):
        raise StateError(
            f"a {state.status!r} state must {'' if recorded else 'not '}"
            f"carry an error record, got {state.error!r}"
        )
    if len(state.events) > 1 and [c.event for c in state.in_flight] != list(state.events):
        raise StateError(
            f"the state holds positions {list(state.events)!r} and commands in flight for "
            f"{[c.event for c in state.in_flight]!r}; each position of a run with several "
            "has exactly one command, in the same order"
        )
    positions = {e: _position_node(definition, e) for e in state.events}
    if len(positions) != len(state.events):
        raise StateError(
            f"the state holds a position twice: {list(state.events)!r}; each branch or map "
            "item holds one position"
        )
    missing = [e for e, node in positions.items() if node is None]
    outside = [e for e, node in positions.items() if node is not None and not node.groups]
    if len(state.events) > 1 and outside:
        raise StateError(
            f"the state holds {len(state.events)} positions, and {outside[0]!r} lies in no "
            "parallel or map group; outside groups a run holds one position"
        )
    for command in state.in_flight:
        if command.event not in state.events:
            raise StateError(
                f"command {command.id} waits at {command.event!r}, but the state is at "
                f"{list(state.events)!r}; a command in flight belongs to the state's position"
            )
        # A handler's resting node is keyed by its own event: a match there means
        # the command still names the same handler with the same meaning.
        node = positions[command.event]
        if node is None or node.event != command.event:
            if command.event not in missing:
                missing.append(command.event)
        elif command.kind == "on_error":
            if command.step not in node.retry_scopes:
                missing.append(f"on_error of {command.step} around {command.event}")
        elif command.kind == "compensate":
            undone = _position_node(definition, start_event(command.step))
            if (
                node.kind != "compensate"
                or not command.step.startswith(node.step + "/")
                or undone is None
                or not undone.compensable
                or type(command) is not CallHandler
                or command.error is not None
            ):
                missing.append(f"compensate of {command.step} at {command.event}")
        elif not fits(node, command) or node.step != command.step or _bad_child(node, command):
            missing.append(f"{command.kind} of {command.step} at {command.event}")
    # Retries around a position, through the groups it is in (a group's branches
    # count the attempts of the retries around the group).
    around = {
        scope
        for node in positions.values()
        if node
        for at in (node, *(_position_node(definition, start_event(g)) for g in node.groups))
        if at
        for scope in at.retry_scopes
    }
    missing.extend(
        f"retry attempts of {scope} around {list(state.events)!r}"
        for scope in state.attempts
        if scope not in around
    )
    for scope in state.groups:
        node = _position_node(definition, start_event(scope))
        if node is None or node.kind not in ("parallel", "map"):
            missing.append(f"group {scope}")
    for event, node in positions.items():
        lost = [g for g in (node.groups if node else ()) if g not in state.groups]
        if lost:
            raise StateError(
                f"the state is at {event!r}, inside group {lost[0]!r}, but holds no progress "
                "of that group; a position inside a parallel or map group exists only in the "
                "state its group started in"
            )
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


def _position_node(definition: FlowDefinition, event: str) -> _Node | None:
    """Return the node of position ``event``, or ``None`` if the flow has no such position."""
    try:
        return definition._node(event)
    except KeyError:
        return None


def _bad_child(node: _Node, command: Command) -> bool:
    """Whether ``command`` breaks a call's rule: a StartChild of the node's flow, at a call."""
    if type(command) is StartChild:
        return command.flow != node.awaits
    return node.kind == "call"
