"""Advance a run by one batch of effects: the pure function at stepflow's heart.

Rule 1: :func:`advance` computes and executes nothing. It performs no I/O, reads
no clock, draws no random number, and calls no user code. The commands it returns
are requests, carried out (or not) by whoever called it. Time is an input like
any other: effects carry the time they were observed (``at``), and the caller may
pass ``now``; the state records when it next wants to run (``wake_at``).

Rule 2: inputs are never mutated. A bad effect batch raises a typed
:class:`~stepflow.errors.EffectError` and leaves the state as it was; a failing
step is not an exception but a state: ``status == "failed"`` with the error
recorded and the position kept.

Theory of operation
-------------------
A state rests at an event that waits for a handler or a timer (see
:mod:`stepflow.core.definition`), with one command in flight for it. An effect
answers that command:

* a ``do`` that returned moves to the step's ``completed`` event; its JSON value
  is kept in ``outputs`` under the step's path, and ``None`` keeps the value an
  earlier pass of the step returned (in a loop or a retried group);
* a condition that returned a ``bool`` takes the matching destination; a
  ``wait_for`` that returned ``False`` polls again ``every`` seconds later
  (``wake_at``), or fails with ``WaitTimeoutError`` once past its timeout;
* a ``sleep``'s :class:`~stepflow.core.messages.TimerFired` moves past it;
* a handler that raised (or returned a value of the wrong kind) goes to the
  innermost enclosing retry. Its :class:`~stepflow.core.definition.RetryPolicy`
  decides first (attempts left, error retryable), then its ``on_error`` handler,
  asked with an ``on_error`` command: ``True`` restarts the group after the
  policy's backoff, ``False`` passes the same error outward, and an exception
  from ``on_error`` replaces it. With no retry left the run fails.

Static transitions after the move were resolved at compile time, so the new
position is found with one lookup, and its command is issued in the same call.
A state that already has its command in flight is returned as it is, with the
same command (same id), so a crashed worker's successor re-runs it.

The time of a batch is its effect's ``at``, else ``now``. Without either, delays
cannot be computed: polls and restarts are due at once (go-stepflow's
behaviour), and reaching a ``sleep`` is an error that asks for ``now``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from pyrsistent.typing import PMap

from stepflow.core._json import NotJSON, freeze_json
from stepflow.core.checks import check_state
from stepflow.core.children import with_children
from stepflow.core.choice import choose, route_error
from stepflow.core.cleanup import (
    cancel_from,
    compensated,
    enter_scope,
    interrupted,
    leave,
    next_compensation,
    push_compensation,
    take_failure,
    with_cancel,
)
from stepflow.core.definition import FlowDefinition, _Node, start_event, template_of
from stepflow.core.events import take, with_events
from stepflow.core.messages import (
    AwaitEvent,
    CallHandler,
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
    answered_id,
)
from stepflow.core.state import (
    CANCELLING,
    COMPLETED,
    EMPTY_ATTEMPTS,
    EMPTY_GROUPS,
    EMPTY_OUTPUTS,
    EMPTY_TIMES,
    FAILED,
    RUNNING,
    ErrorRecord,
    State,
)
from stepflow.core.timers import rest_until, time_error
from stepflow.errors import (
    DuplicateEffectError,
    EffectError,
    HandlerResultError,
    LateEffectError,
    StateError,
    UnknownEffectError,
    WaitTimeoutError,
)

__all__ = ["advance", "initial_state", "result_error", "resume"]

# NamedTuple.__new__ is a Python function; tuple.__new__ builds the same object
# several times faster, and states and commands are built on every step.
_new = tuple.__new__
_STATUSES = (RUNNING, COMPLETED, FAILED)
_EFFECTS = (HandlerReturned, HandlerRaised, TimerFired)


def initial_state(definition: FlowDefinition, run_id: str = "") -> State:
    """Return the state of a new run of ``definition``, before its first command.

    Args:
        definition: The compiled flow.
        run_id: The run's identity (seeds the jitter of retry backoffs).

    """
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
            None,
            None,
            EMPTY_ATTEMPTS,
            run_id,
            EMPTY_TIMES,
            EMPTY_GROUPS,
            (),
        ),
    )


def advance(
    definition: FlowDefinition,
    state: State | None = None,
    effects: Sequence[Effect] = (),
    *,
    now: float | None = None,
) -> tuple[State, tuple[Command, ...]]:
    """Apply ``effects`` to ``state`` and return the next state and its commands.

    This function is pure: it executes nothing, reads no clock and mutates none of
    its inputs. Carrying out the returned commands is the caller's job (see
    :class:`stepflow.Interpreter`), no earlier than the new state's ``wake_at``.

    Args:
        definition: The compiled flow.
        state: The current state, or ``None`` to start a new run.
        effects: Outcomes of commands in flight, addressed by command id.
        now: The caller's time (seconds since the epoch), used when the effects
            carry none: to start a run, or to reach a ``sleep`` without effects.

    Returns:
        The new state and the commands in flight in it. With no effects, a state
        whose command is in flight comes back unchanged with the same command;
        a completed or failed state comes back with no command.

    Raises:
        UnknownEffectError: an effect answers a command id never issued.
        LateEffectError: an effect answers a command no longer in flight.
        DuplicateEffectError: two effects answer the same command.
        EffectError: an item of ``effects`` is not an effect, answers a command
            of another kind, fires a timer early, or a ``sleep`` is reached with
            no time known.
        FlowMismatchError, UnknownEventError, IncompatibleDefinition: the state
            does not fit ``definition`` (see :func:`check_state`).

    """
    # The hot path reads tuples by position and builds them with tuple.__new__:
    # advance runs once per step of every run a worker drives.
    name, fingerprint, nodes, concurrent = definition._hot
    if concurrent:
        from stepflow.core.groups import advance_groups

        return advance_groups(definition, state, effects, now)
    if state is None:
        state = initial_state(definition)
    elif state[1] is not fingerprint and (state[1] != fingerprint or state[0] != name):
        state = check_state(definition, state)
    _, _, events, status, _, in_flight, seq, outputs, _, _, attempts, run_id, _, _, mail = state
    if not effects:
        if in_flight or status != RUNNING:
            return state, in_flight
        if len(events) != 1 or events[0] not in nodes:
            check_state(definition, state)  # raises the error that explains it
        return _enter(definition, state, nodes[events[0]], outputs, attempts, now, None)
    effect = effects[0]
    effect_type = type(effect)
    if (
        len(effects) != 1
        or not in_flight
        or effect_type not in _EFFECTS
        or effect[0] != in_flight[0][0]
    ):
        if any(type(e) is CancelRequested for e in effects):
            state, effects = with_cancel(definition, check_state(definition, state), effects, now)
            return advance(definition, state, effects, now=now) if effects else (state, state[5])
        if any(type(e) is EventReceived for e in effects):
            state, effects = with_events(definition, check_state(definition, state), effects, now)
            return advance(definition, state, effects, now=now)
        if any(type(e) is ChildEnded for e in effects):  # stepflow.core.children, rule 4
            return advance(definition, state, with_children(state, effects), now=now)
        raise _rejection(state, effects)
    command = in_flight[0]
    node = nodes.get(command[3])
    if node is None or node[2] is None:
        check_state(definition, state)  # raises the error that explains it
        raise StateError(f"command {command!r} waits at an event with no handler")
    # The hot path is a do that returned: the time is read only where it is used
    # (waits, retries, timers), so the common step pays nothing for it. The
    # output rule repeats answer()'s, inlined here on purpose.
    # (19: compensable; a cancelling run's answers unwind: stepflow.core.cleanup.)
    if effect_type is not HandlerReturned or command[1] != "do" or node[19] or status != RUNNING:
        return answer(definition, state, command, node, effect, now)
    value = effect[1]
    if value is not None:  # None keeps the step's earlier output
        try:
            outputs = outputs.set(command[2], freeze_json(value))
        except NotJSON:
            error = _bad_result(command, value)
            return _fail_step(definition, state, command, node, error, _at(effect, now))
    target = nodes[node[4]]
    # (Identity first: a pmap's truth is a Python-level __len__ call.)
    if not target[9] or (attempts is not EMPTY_ATTEMPTS and attempts) or mail:
        return _enter(definition, state, target, outputs, attempts, _at(effect, now), None)
    # The common case, _enter inlined: rest at a plain handler step, issue its command.
    seq += 1
    commands = (_new(CallHandler, (seq, target[2], target[3], target[0], None)),)
    # One tuple literal: building the 14 fields in one go is the cheapest way.
    fields = (
        name, fingerprint, target[1], RUNNING, None, commands, seq, outputs,
        None, None, attempts, run_id, EMPTY_TIMES, EMPTY_GROUPS, mail,
    )  # fmt: skip
    return _new(State, fields), commands


def answer(
    definition: FlowDefinition,
    state: State,
    command: Command,
    node: _Node,
    effect: Effect,
    now: float | None,
) -> tuple[State, tuple[Command, ...]]:
    """Apply ``effect``, the outcome of ``command``, to the one-position ``state`` at ``node``.

    The rules of the module docstring, for any kind of command but a map's
    ``items`` (see :mod:`stepflow.core.groups`, which calls this for each
    position of a run with several).
    """
    kind = command[1]
    effect_type = type(effect)
    if state[3] == CANCELLING and node.shield < 0:  # record the outcome, then unwind from here
        return interrupted(definition, state, command, node, effect, _at(effect, now))
    outputs, attempts = state[7], state[10]
    if effect_type is HandlerReturned:
        value = effect[1]
        if kind == "do" or kind == "wait_event" or kind == "call":
            if value is not None:  # None keeps the step's earlier output
                try:
                    outputs = outputs.set(command[2], freeze_json(value))
                except NotJSON:
                    error = _bad_result(command, value)
                    return _fail_step(definition, state, command, node, error, _at(effect, now))
            if node.compensable:  # a saga can now undo it (stepflow.core.cleanup)
                outputs = push_compensation(node, outputs, command[2])
            target = definition._node(node[4])
        elif kind == "compensate":
            return compensated(definition, state, command, node, _at(effect, now))
        elif kind == "sleep":
            raise _wrong_answer(effect, command)
        elif kind == "switch":  # the rules of stepflow.core.choice
            chosen = choose(definition, node, value)
            if chosen is None:
                error = _bad_result(command, value)
                return _fail_step(definition, state, command, node, error, _at(effect, now))
            target = chosen
        elif kind == "sleep_until":  # the time to sleep until (stepflow.core.timers)
            return rest_until(definition, state, command, node, value, _at(effect, now))
        elif value is True or value is False:
            if kind == "on_error":
                if value:
                    return _restart(definition, state, command[2], _at(effect, now))
                error = cast(ErrorRecord, command[4])
                return _fail_step(definition, state, command, node, error, _at(effect, now))
            if kind == "wait_for" and not value:
                return _poll_again(definition, state, command, node, _at(effect, now))
            target = definition._node(node[4] if value else node[5])
        else:
            error = _bad_result(command, value)
            return _fail_step(definition, state, command, node, error, _at(effect, now))
    elif (effect_type is TimerFired) != (kind == "sleep" or kind == "wait_event"):
        raise _wrong_answer(effect, command)
    elif effect_type is HandlerRaised:
        error = cast(ErrorRecord, effect[1])
        return _fail_step(definition, state, command, node, error, _at(effect, now))
    else:  # a timer, due or early
        at = _at(effect, now)
        due = cast(float | None, command[4])
        if at is None or due is None or at < due:
            raise EffectError(
                f"the timer of step {command[2]!r} fires at {command[4]!r}, not at {at!r}; "
                "answer a Wake (or a timed AwaitEvent) with TimerFired only once its time "
                "has come",
                command_id=command[0],
            )
        if kind == "wait_event":
            return _timed_out(definition, state, command, node, at)
        target = definition._node(node[4])
        return _enter(definition, state, target, outputs, attempts, at, None)
    return _enter(definition, state, target, outputs, attempts, _at(effect, now), None)


def _timed_out(
    definition: FlowDefinition, state: State, command: Command, node: _Node, at: float
) -> tuple[State, tuple[Command, ...]]:
    """Run the ``on_timeout`` steps of a ``wait_event`` that timed out at ``at``, or fail it."""
    if node.on_false:
        target = definition._node(node.on_false)
        return _enter(definition, state, target, state.outputs, state.attempts, at, None)
    error = ErrorRecord.from_exception(
        WaitTimeoutError(
            f"no event {node.awaits!r} reached {node.step!r} by {command[4]!r}, the end of its "
            "timeout; give it on_timeout= steps to go on without it"
        ),
        node.step,
    )
    return _fail_step(definition, state, command, node, error, at)


def _at(effect: Effect, now: float | None) -> float | None:
    """Return the time of a batch: its effect's, else the caller's ``now``."""
    at = effect.at
    return now if at is None else at


def _wrong_answer(effect: Effect, command: Command) -> EffectError:
    return EffectError(
        f"{effect!r:.120} cannot answer {command[1]} command {command[0]} of step "
        f"{command[2]!r}; answer a Wake with TimerFired and a CallHandler with "
        "HandlerReturned/HandlerRaised",
        command_id=command[0],
    )


def _enter(
    definition: FlowDefinition,
    state: State,
    node: _Node,
    outputs: PMap[str, Any],
    attempts: PMap[str, int],
    at: float | None,
    not_before: float | None,
) -> tuple[State, tuple[Command, ...]]:
    """Rest at ``node`` (resolved through static hops) and issue its command.

    ``at`` is the time of the batch that got here; ``not_before`` delays the
    command (a retry's backoff).
    """
    name, fingerprint, run_id = definition.name, definition.fingerprint, state[11]
    if attempts:
        scopes = node.retry_scopes
        for scope in attempts:
            if scope not in scopes:
                attempts = attempts.discard(scope)
    status, error = state[3], None
    if status == CANCELLING:  # only cleanups run (stepflow.core.cleanup, rule 8)
        error = state[4]
        if node.shield < 0:
            taken = state._replace(outputs=outputs, attempts=attempts)
            return cancel_from(definition, taken, node, at)
    kind = node.kind
    if kind == "finally" or kind == "saga":
        return enter_scope(definition, state, node, outputs, attempts, at)
    if kind == "leave":
        return leave(definition, state, node, outputs, attempts, at)
    if kind == "compensate":
        return next_compensation(definition, state, node, outputs, attempts, at, not_before)
    seq, mail = state[6], state[14]
    if node.kind is None:
        done = (name, fingerprint, node.events, COMPLETED, None, (), seq, outputs)
        ended = (None, None, attempts, run_id, EMPTY_TIMES, EMPTY_GROUPS, mail)
        return _new(State, (*done, *ended)), ()
    if node.kind == "parallel" or node.kind == "join":
        # A fork or a join: no command; stepflow.core.groups takes it from here.
        fork = (name, fingerprint, node.events, status, error, (), seq, outputs)
        forked = (None, None, attempts, run_id, EMPTY_TIMES, EMPTY_GROUPS, mail)
        return _new(State, (*fork, *forked)), ()
    if node.kind == "wait_event" and mail:
        found = take(mail, node.awaits)
        if found is not None:  # the event came first: take it and go on (events rule 4)
            payload, mail = found
            if payload is not None:
                outputs = outputs.set(node.step, payload)
            target = definition._node(node.on_true)
            taken = state._replace(mailbox=mail)
            return _enter(definition, taken, target, outputs, attempts, at, None)
    seq += 1
    start = at if not_before is None else not_before
    timeout_at = None
    command: Command
    if node.kind == "sleep":
        if start is None:
            raise EffectError(
                f"the run reached sleep step {node.step!r} and no time is known; "
                "pass now= to advance, or stamp effects with their time (at=)",
                command_id=-1,
            )
        assert node.delay is not None
        wake_at: float | None = start + node.delay
        command = _new(Wake, (seq, "sleep", node.step, node.event, wake_at))
    elif node.kind == "wait_event":
        wake_at = None
        if node.timeout is not None:
            if start is None:
                raise EffectError(
                    f"the run reached wait_event step {node.step!r}, whose timeout needs the "
                    "time it was reached, and no time is known; pass now= to advance, or "
                    "stamp effects with their time (at=)",
                    command_id=-1,
                )
            wake_at = start + node.timeout
        command = _new(AwaitEvent, (seq, "wait_event", node.step, node.event, wake_at, node.awaits))
    else:
        wake_at = not_before
        if node.timeout is not None and start is not None:
            timeout_at = start + node.timeout
        if node.kind == "call":  # a child run (stepflow.core.children)
            command = _new(StartChild, (seq, "call", node.step, node.event, node.awaits))
        else:
            command = _new(CallHandler, (seq, node.kind, node.step, node.event, None))
    issued: tuple[Command, ...] = (command,)
    fields = (name, fingerprint, node.events, status, error, issued, seq, outputs)
    rest = (wake_at, timeout_at, attempts, run_id, EMPTY_TIMES, EMPTY_GROUPS, mail)
    return _new(State, (*fields, *rest)), issued


def _poll_again(
    definition: FlowDefinition,
    state: State,
    command: Command,
    node: _Node,
    at: float | None,
) -> tuple[State, tuple[Command, ...]]:
    """Poll a ``wait_for`` condition found false at ``at`` again later, or time out."""
    timeout_at = state.timeout_at
    if node.timeout is not None and at is not None:
        if timeout_at is None:
            timeout_at = at + node.timeout
        if at >= timeout_at:
            error = ErrorRecord.from_exception(
                WaitTimeoutError(
                    f"the condition of {node.step!r} was still false at {at!r}, past its "
                    f"timeout of {node.timeout:g}s (deadline {timeout_at!r})"
                ),
                node.step,
            )
            return _fail_step(definition, state, command, node, error, at)
    wake_at = None
    if at is not None:
        assert node.delay is not None
        wake_at = at + node.delay
        if timeout_at is not None and wake_at > timeout_at:
            wake_at = timeout_at
    seq = state.seq + 1
    commands = (_new(CallHandler, (seq, "wait_for", node.step, node.event, None)),)
    fields = (definition.name, definition.fingerprint, state.events, state.status, state.error)
    rest = (commands, seq, state.outputs, wake_at, timeout_at, state.attempts, state.run_id)
    return _new(State, (*fields, *rest, EMPTY_TIMES, EMPTY_GROUPS, state.mailbox)), commands


def _restart(
    definition: FlowDefinition, state: State, scope: str, at: float | None
) -> tuple[State, tuple[Command, ...]]:
    """Restart the group of retry ``scope``, after its policy's backoff.

    ``at`` is when the restart was decided: the failure, or the ``on_error``
    answer that asked for it; the backoff counts from then.
    """
    attempts = state.attempts
    attempt = attempts.get(scope, 0) + 1  # the attempt that just failed
    # Retries nested in the restarted group start their count over, in a new pass.
    nested = scope + "/"
    for inner in attempts:
        if inner.startswith(nested):
            attempts = attempts.discard(inner)
    policy = definition._rules[template_of(scope)].policy
    not_before = None
    if policy is not None and at is not None:
        delay = policy.backoff(attempt, state.run_id, scope)
        if delay > 0:
            not_before = at + delay
    node = definition._node(start_event(scope))
    return _enter(
        definition, state, node, state.outputs, attempts.set(scope, attempt), at, not_before
    )


def _rejection(state: State, effects: Sequence[Effect]) -> EffectError:
    """Explain why ``effects`` cannot be applied to ``state``."""
    seen: set[int] = set()
    for effect in effects:
        if type(effect) not in _EFFECTS:
            return EffectError(
                f"{effect!r:.120} is not an effect; pass HandlerReturned, HandlerRaised or "
                "TimerFired values (Interpreter.execute makes them)",
                command_id=-1,
            )
        command_id = answered_id(effect)
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


def result_error(command: Command, value: Any) -> ErrorRecord | None:
    """Return the error a handler's return ``value`` is recorded as, or ``None`` if valid.

    A ``do`` must return JSON data (or ``None``), a map's ``items`` a JSON list,
    a switch's ``route`` a JSON scalar; a condition or ``on_error`` handler must
    return a real ``bool``. :func:`advance` records any other value as this
    :class:`~stepflow.errors.HandlerResultError`, exactly as if the handler had
    raised it, so a journal may store the equivalent ``HandlerRaised`` instead of
    a value that JSON cannot hold.
    """
    if command.kind == "map":
        return _items_error(command, value)
    if command.kind == "switch":
        return route_error(command, value)
    if command.kind == "sleep_until":
        return time_error(command, value)
    if command.kind == "compensate":  # its value is ignored
        return None
    if command.kind == "do" or command.kind == "wait_event" or command.kind == "call":
        try:
            freeze_json(value)
        except NotJSON as exc:
            message = (
                f"{command.kind} step {command.step!r} returned a value that is not JSON ({exc}); "
                "return dict, list, str, int, float, bool or None, "
                "or keep the object elsewhere and return its id"
            )
            return ErrorRecord.from_exception(HandlerResultError(message), command.step)
        return None
    if value is True or value is False:
        return None
    what = "on_error handler of" if command.kind == "on_error" else f"{command.kind} condition of"
    message = (
        f"the {what} {command.step!r} returned {value!r:.80} "
        f"({type(value).__name__}); it must return True or False"
    )
    return ErrorRecord.from_exception(HandlerResultError(message), command.step)


def _items_error(command: Command, value: Any) -> ErrorRecord | None:
    """Return the error a map's ``items`` returning ``value`` is recorded as (``None``: a list)."""
    if type(value) is list:
        try:
            freeze_json(value)
        except NotJSON as exc:
            what = f"a list that is not JSON ({exc})"
        else:
            return None
    else:
        what = f"{value!r:.80} ({type(value).__name__})"
    message = (
        f"the items handler of map {command.step!r} returned {what}; it must return "
        "a JSON list (of ids, names or small documents)"
    )
    return ErrorRecord.from_exception(HandlerResultError(message), command.step)


def _bad_result(command: Command, value: Any) -> ErrorRecord:
    error = result_error(command, value)
    assert error is not None
    return error


def _fail_step(
    definition: FlowDefinition,
    state: State,
    command: Command,
    node: _Node,
    error: ErrorRecord,
    at: float | None,
) -> tuple[State, tuple[Command, ...]]:
    """Hand ``error`` to the next enclosing failure scope that takes it, or fail the run.

    ``command`` is the failed one: a step's handler (start at the innermost
    scope) or an ``on_error`` handler (start at the scope enclosing the retry
    that answered). A retry takes the error when its policy allows another
    attempt; it then asks its ``on_error`` handler, or restarts at once if it
    has none. A catch takes it when the error matches (stepflow.core.scopes);
    a finally or a saga always takes it (stepflow.core.cleanup, which walks
    the scopes: :func:`~stepflow.core.cleanup.take_failure`).
    """
    index = node.failures.index(command.step) + 1 if command.kind == "on_error" else 0
    return take_failure(definition, state, node, index, error, at)


def _ask_on_error(
    definition: FlowDefinition, state: State, scope: str, node: _Node, error: ErrorRecord
) -> tuple[State, tuple[Command, ...]]:
    """Ask the ``on_error`` handler of retry ``scope`` whether to restart, at ``node``."""
    seq = state.seq + 1
    ask = _new(CallHandler, (seq, "on_error", scope, node.event, error))
    fields = (definition.name, definition.fingerprint, node.events, state.status, state.error)
    rest = ((ask,), seq, state.outputs, None, None, state.attempts, state.run_id)
    return _new(State, (*fields, *rest, EMPTY_TIMES, EMPTY_GROUPS, state.mailbox)), (ask,)


def resume(
    definition: FlowDefinition, state: State, *, now: float | None = None
) -> tuple[State, tuple[Command, ...]]:
    """Send a failed run back to the step that failed; return it and its command.

    Pure, like :func:`advance`. The position, outputs and command ids are kept; the
    error is cleared, retry attempts start over, and the failed step's command is
    issued again with a new id.

    Raises:
        StateError: the state is not failed.
        FlowMismatchError, UnknownEventError, IncompatibleDefinition: the state
            does not fit ``definition`` (see :func:`check_state`).

    """
    state = check_state(definition, state)
    if state.status != FAILED:
        raise StateError(f"only a failed run can be resumed; this one is {state.status!r}")
    if definition._concurrent:
        from stepflow.core.groups import resume_groups

        return resume_groups(definition, state, now)
    node = definition._node(state.events[0])
    running = state._replace(status=RUNNING, error=None)
    return _enter(definition, running, node, state.outputs, EMPTY_ATTEMPTS, now, None)
