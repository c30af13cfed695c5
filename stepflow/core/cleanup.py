"""Cleanup scopes and cancellation: ``finally_``, sagas and their compensations, cancel.

Rule 1: pure, as :func:`~stepflow.core.advance.advance`: nothing here performs
I/O, reads a clock or calls user code, and no input is mutated. A cancellation
is an effect with its time (:class:`~stepflow.core.messages.CancelRequested`).

Rule 2: names. ``.finally_(name, steps, cleanup)`` has the scope
``<name>Finally``; its steps run in ``<name>Finally/steps``, its cleanup in
``<name>Finally/cleanup``. ``.saga(name, steps, policy=)`` has the scope
``<name>Saga``; its steps run in ``<name>Saga/steps``, and it compensates
resting at ``start:<name>Saga/compensate``, inside a retry scope of that path
(``<name>Saga/compensate``) when it has a policy.

Rule 3: finally. Entering the group forgets what an earlier pass left in
``outputs`` under its scope path. When its steps complete, the cleanup runs,
then the flow goes on after the group. A failure that leaves the steps (past
the retries, catches and cleanups inside them) is kept in ``outputs`` under the
scope path as ``{"error": {"type", "message", "step"}}`` and the cleanup runs;
when it completes, the error goes on to the failure scopes enclosing the group,
as if the group had failed with it. A failure of the cleanup itself goes on
outward in its place (the first error stays in ``outputs``).

Rule 4: the compensation stack. A ``do`` with ``compensate=`` that completes
inside a saga is pushed on the stack kept in ``outputs`` under the path of the
outermost enclosing saga, as ``{"done": [step paths]}``. Entering an outermost
saga starts an empty stack; entering a nested saga pushes its own scope path
and a ``/``, a mark where its pass begins (never a step's path). A saga that
completes leaves its steps on the stack, for the sagas around it (nothing
else calls them).

Rule 5: compensating. A failure that leaves a saga's steps is kept in
``outputs`` under the saga's path (``{"error": {...}}``, beside ``"done"`` for
an outermost saga), and the saga compensates: the steps on the stack above its
mark (all, for an outermost saga) that lie inside it, the last completed first,
each with one ``compensate`` command
(:class:`~stepflow.core.messages.CallHandler`, ``step`` the ``do``'s path).
Its returned value is ignored; the step leaves the stack. A compensation that
fails is retried as the saga's policy allows, each compensation with attempts
of its own. When none is left, the mark leaves the stack and the error goes on
to the failure scopes enclosing the saga. A compensation that still fails goes
outward in the error's place; the steps not yet compensated stay on the stack,
so :func:`~stepflow.core.advance.resume` goes on with them.

Rule 6: ``ctx.error``. A cleanup's steps that run for a failure or a
cancellation, and every compensation, see that failure (or the cancellation's
record) as ``ctx.error`` (:func:`stepflow.core.scopes.handler_error`).

Rule 7: a cancellation. :class:`~stepflow.core.messages.CancelRequested` is
addressed to the run and applied before the other effects of its batch. To a
run that is not ``running`` it changes nothing (a ``cancelling`` run goes on
cancelling; a finished one stays as it is). A running run becomes
``cancelling``, its ``error`` the cancellation's record: type
``stepflow.errors.RunCancelled`` (``DeadlineExceeded`` for a deadline), the
reason as the message, the position's step. A command in flight that may be
executing (a handler call due at the time of the request, or with no time
known) stays in flight, and its outcome is recorded when it comes. Any other
(a timer, a wait for an event, a poll or a backoff not yet due) is dropped at
once. Effects of the same batch that answer a dropped command are dropped, and
so are its events when the run is cancelled at once (they stay in the journal).

Rule 8: unwinding. A cancelling run starts no step outside a cleanup. When
the outcome of a command that was in flight at the request comes, it is
recorded (a ``do``'s JSON value in ``outputs``, its compensation on the stack;
a failure is not retried and stays in the journal), and the position unwinds
from that step; a position dropped at the request unwinds from where it
rested. Unwinding from a step: the ``finally_`` groups enclosing it run their
cleanups and the sagas enclosing it compensate, innermost first, as for a
failure, their record being ``{"cancelled": {...}}``; retries and catches are
passed by. When a cleanup ends, the position unwinds on from where the
cleanup's group ends. When no cleanup scope is left, the run is
``cancelled``: the record is its error, its position where it stopped.

Rule 9: cleanups are shielded. A finally's cleanup and a saga's compensations
are never cut short by a cancellation: inside them, steps run, poll, sleep,
wait, retry and catch as usual, and so do cleanups nested in them: a failure
inside goes to the scopes inside the outermost cleanup. A failure that leaves
the outermost cleanup while the run is cancelling fails the run (``failed``,
that failure its error): the cancellation stays in ``outputs``, so a resumed
run finishes the cleanup and then goes on cancelling. A cancelled run can be
inspected and replayed; it cannot be resumed.

Rule 10: groups. In a ``parallel`` or ``map`` group each position unwinds
inside its branch or item as above. A branch or item that unwinds to its end
ends with the cancellation as its error, which fails the group whatever its
``max_failures``; once nothing is in flight in it, the group unwinds outward.
When a group fails (:mod:`stepflow.core.groups`, Rule 8), its positions still
running are cancelled the same way, with the group's error as their record, so
their cleanups run before the group's error leaves it. A failure that leaves a
cleanup inside a branch or item fails that branch or item.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pyrsistent.typing import PMap

from stepflow.core._json import NotJSON, freeze_json, thaw_json
from stepflow.core.definition import FlowDefinition, _Node, start_event, template_of
from stepflow.core.messages import (
    CallHandler,
    CancelRequested,
    Command,
    Effect,
    EventReceived,
    HandlerReturned,
    StartChild,
    answered_id,
)
from stepflow.core.state import CANCELLED, CANCELLING, FAILED, RUNNING, ErrorRecord, State

__all__ = [
    "CANCELLATION_TYPES",
    "cancel_from",
    "cancel_record",
    "compensated",
    "enter_scope",
    "interrupted",
    "is_cancellation",
    "leave",
    "may_run",
    "next_compensation",
    "pending_error",
    "push_compensation",
    "take_failure",
    "with_cancel",
]

_new = tuple.__new__
#: The recorded types of a cancellation's record.
CANCELLATION_TYPES = ("stepflow.errors.RunCancelled", "stepflow.errors.DeadlineExceeded")
_COMPENSATE = "/compensate"


def cancel_record(request: CancelRequested, step: str) -> ErrorRecord:
    """Return the record of the cancellation ``request``, made at ``step``.

    >>> cancel_record(CancelRequested("no longer needed"), "f/a")
    ErrorRecord(type='stepflow.errors.RunCancelled', message='no longer needed', step='f/a')
    """
    return ErrorRecord(CANCELLATION_TYPES[1 if request.deadline else 0], request.reason, step)


def is_cancellation(error: ErrorRecord) -> bool:
    """Whether ``error`` is a cancellation's record (never taken by a retry or a catch)."""
    return error.type in CANCELLATION_TYPES


def _record(error: ErrorRecord) -> dict[str, Any]:
    return {"type": error.type, "message": error.message, "step": error.step}


def pending_error(value: Any) -> ErrorRecord | None:
    """Return the failure or cancellation a cleanup scope's ``outputs`` entry records, if any."""
    if value is None:
        return None
    raw = thaw_json(value)
    found = (raw.get("cancelled") or raw.get("error")) if isinstance(raw, dict) else None
    if not isinstance(found, dict):
        return None
    return ErrorRecord(found["type"], found["message"], found["step"])


def _with_pending(
    outputs: PMap[str, Any], scope: str, key: str, error: ErrorRecord
) -> PMap[str, Any]:
    """Record ``error`` as what cleanup ``scope`` runs for (keeping a saga's stack)."""
    held = outputs.get(scope)
    record = {} if held is None else {k: v for k, v in thaw_json(held).items() if k == "done"}
    record[key] = _record(error)
    return outputs.set(scope, freeze_json(record))


def _stack(outputs: PMap[str, Any], root: str) -> list[str]:
    held = outputs.get(root)
    return [] if held is None else list(thaw_json(held).get("done", ()))


def _with_stack(outputs: PMap[str, Any], root: str, stack: list[str]) -> PMap[str, Any]:
    held = outputs.get(root)
    record = {} if held is None else thaw_json(held)
    record["done"] = stack
    return outputs.set(root, freeze_json(record))


def _without_last(stack: list[str], item: str) -> list[str]:
    index = len(stack) - 1 - stack[::-1].index(item)
    return stack[:index] + stack[index + 1 :]


def push_compensation(node: _Node, outputs: PMap[str, Any], step: str) -> PMap[str, Any]:
    """Push ``step``, a compensable ``do`` that completed, on its sagas' stack (Rule 4)."""
    root = node.sagas[0]
    return _with_stack(outputs, root, [*_stack(outputs, root), step])


def enter_scope(
    definition: FlowDefinition,
    state: State,
    node: _Node,
    outputs: PMap[str, Any],
    attempts: PMap[str, int],
    at: float | None,
) -> tuple[State, tuple[Command, ...]]:
    """Enter the ``finally_`` or saga group of ``node`` (Rules 3 and 4), then its steps."""
    from stepflow.core.advance import _enter

    scope = node.step
    if node.kind == "finally" or node.sagas[0] == scope:
        if scope in outputs:
            outputs = outputs.discard(scope)
    else:  # a nested saga: mark where its pass begins
        root = node.sagas[0]
        outputs = _with_stack(outputs, root, [*_stack(outputs, root), scope + "/"])
    target = definition._node(node.on_true)
    return _enter(definition, state, target, outputs, attempts, at, None)


def leave(
    definition: FlowDefinition,
    state: State,
    node: _Node,
    outputs: PMap[str, Any],
    attempts: PMap[str, int],
    at: float | None,
) -> tuple[State, tuple[Command, ...]]:
    """End a finally's cleanup: go on after the group, or with what it ran for (Rule 3)."""
    from stepflow.core.advance import _enter

    # (A cancelling run reaches a leave outside every cleanup never: it unwound first.)
    error = pending_error(outputs.get(node.step))
    if error is not None:
        taken = state._replace(outputs=outputs, attempts=attempts)
        if not is_cancellation(error):
            return take_failure(definition, taken, node, 0, error, at)
        # (Only a resumed run gets here so: it goes on cancelling, Rule 9.)
        return cancel_from(definition, taken._replace(status=CANCELLING, error=error), node, at)
    target = definition._node(node.on_true)
    return _enter(definition, state, target, outputs, attempts, at, None)


def _entries(stack: list[str], root: str, scope: str) -> list[str]:
    """Return the steps of saga ``scope`` on ``stack`` not yet compensated, oldest first."""
    start, prefix = 0, scope + "/"
    if scope != root and prefix in stack:
        start = len(stack) - stack[::-1].index(prefix)
    return [step for step in stack[start:] if step.startswith(prefix) and step[-1] != "/"]


def next_compensation(
    definition: FlowDefinition,
    state: State,
    node: _Node,
    outputs: PMap[str, Any],
    attempts: PMap[str, int],
    at: float | None,
    not_before: float | None = None,
) -> tuple[State, tuple[Command, ...]]:
    """Issue the saga's next compensation, or, with none left, pass on what it ran for.

    ``not_before`` delays the compensation (the backoff of its retry).
    """
    scope, root = node.step, node.sagas[0]
    stack = _stack(outputs, root)
    entries = _entries(stack, root, scope)
    if entries:
        seq = state.seq + 1
        command = _new(CallHandler, (seq, "compensate", entries[-1], node.event, None))
        issued: tuple[Command, ...] = (command,)
        fields = (definition.name, definition.fingerprint, node.events, state.status, state.error)
        rest = (issued, seq, outputs, not_before, None, attempts, state.run_id)
        return _new(State, (*fields, *rest, state.times, state.groups, state.mailbox)), issued
    if scope != root and scope + "/" in stack:
        outputs = _with_stack(outputs, root, _without_last(stack, scope + "/"))
    error = pending_error(outputs.get(scope))
    taken = state._replace(outputs=outputs, attempts=attempts)
    if error is None:  # (a state placed here by hand, compensating for nothing): go on
        target = definition._node(node.on_true)
        from stepflow.core.advance import _enter

        return _enter(definition, taken, target, outputs, attempts, at, None)
    own = 1 if node.failures[:1] == (scope + _COMPENSATE,) else 0  # its own retry scope
    # A cancelling run goes on unwinding, unless the saga runs in a cleanup, whose
    # scopes take its failure (Rule 9).
    shielded = definition._node(start_event(scope)).shield >= 0  # the saga runs in a cleanup
    if is_cancellation(error) or (state.status == CANCELLING and not shielded):
        taken = taken._replace(status=CANCELLING, error=state.error or error)
        return cancel_from(definition, taken, node, at, own)
    return take_failure(definition, taken, node, own, error, at)


def compensated(
    definition: FlowDefinition, state: State, command: Command, node: _Node, at: float | None
) -> tuple[State, tuple[Command, ...]]:
    """Take a compensation's return: its step leaves the stack; on to the next (Rule 5)."""
    root = node.sagas[0]
    outputs = _with_stack(
        state.outputs, root, _without_last(_stack(state.outputs, root), command.step)
    )
    attempts = state.attempts
    own = node.step + _COMPENSATE
    if own in attempts:
        attempts = attempts.discard(own)
    return next_compensation(definition, state, node, outputs, attempts, at)


def _into(
    definition: FlowDefinition,
    state: State,
    scope: str,
    kind: str,
    key: str,
    error: ErrorRecord,
    at: float | None,
) -> tuple[State, tuple[Command, ...]]:
    """Run the cleanup of finally (or the compensations of saga) ``scope`` for ``error``."""
    from stepflow.core.advance import _enter

    outputs = _with_pending(state.outputs, scope, key, error)
    start = scope + ("/cleanup" if kind == "finally" else _COMPENSATE)
    node = definition._node(start_event(start))
    return _enter(definition, state, node, outputs, state.attempts, at, None)


def take_failure(
    definition: FlowDefinition,
    state: State,
    node: _Node,
    index: int,
    error: ErrorRecord,
    at: float | None,
) -> tuple[State, tuple[Command, ...]]:
    """Hand ``error`` to the failure scopes of ``node`` from ``index`` on, or fail the run.

    Retries, catches, finally groups and sagas, innermost first (Rules 3, 5 and
    :mod:`stepflow.core.scopes`); an ``on_error`` question is asked at
    ``node``, where the run then rests. While cancelling, only the scopes inside the
    cleanup that ``node`` runs in take it (Rule 9), and a node in no cleanup
    unwinds the cancellation instead (Rule 8).
    """
    from stepflow.core.advance import _ask_on_error, _restart
    from stepflow.core.scopes import catch

    scopes = node.failures
    limit = len(scopes)
    if state.status == CANCELLING:
        if node.shield < 0:
            return cancel_from(definition, state, node, at)
        limit = node.shield
    attempts = state.attempts
    while index < limit:
        scope = scopes[index]
        template = template_of(scope)
        rule = definition._rules.get(template)
        if rule is None:
            kind = definition._cleanups.get(template)
            if kind is not None:
                return _into(definition, state, scope, kind, "error", error, at)
            caught = catch(definition, state, scope, error, at)
            if caught is not None:
                return caught
        elif rule.policy is None or rule.policy.allows(attempts.get(scope, 0) + 1, error.type):
            if not rule.on_error:
                return _restart(definition, state, scope, at)
            return _ask_on_error(definition, state, scope, node, error)
        index += 1
    return state._replace(
        flow=definition.name,
        fingerprint=definition.fingerprint,
        status=FAILED,
        error=error,
        in_flight=(),
        wake_at=None,
        timeout_at=None,
    ), ()


def cancel_from(
    definition: FlowDefinition, state: State, node: _Node, at: float | None, index: int = 0
) -> tuple[State, tuple[Command, ...]]:
    """Unwind the cancellation of the ``cancelling`` ``state`` from ``node`` (Rule 8).

    The first ``finally_`` or saga among the node's failure scopes from
    ``index`` on runs its cleanup; with none left, the run is cancelled there.
    """
    record = state.error
    assert record is not None
    scopes = node.failures
    while index < len(scopes):
        scope = scopes[index]
        kind = definition._cleanups.get(template_of(scope))
        if kind is not None:
            return _into(definition, state, scope, kind, "cancelled", record, at)
        index += 1
    fields = (definition.name, definition.fingerprint, (node.event,), CANCELLED, record, ())
    rest = (state.seq, state.outputs, None, None, state.attempts, state.run_id)
    return _new(State, (*fields, *rest, state.times, state.groups, state.mailbox)), ()


def interrupted(
    definition: FlowDefinition,
    state: State,
    command: Command,
    node: _Node,
    effect: Effect,
    at: float | None,
) -> tuple[State, tuple[Command, ...]]:
    """Record the outcome of a command in flight when the run was cancelled; unwind (Rule 8)."""
    outputs = state.outputs
    kind = command.kind
    if type(effect) is HandlerReturned and (kind == "do" or kind == "wait_event" or kind == "call"):
        value = effect.value
        if value is not None:
            try:
                outputs = outputs.set(command.step, freeze_json(value))
            except NotJSON:  # a value JSON cannot hold is not kept (its step was cancelled)
                pass
            else:
                if node.compensable:
                    outputs = push_compensation(node, outputs, command.step)
        elif node.compensable:
            outputs = push_compensation(node, outputs, command.step)
    stopped = state._replace(in_flight=(), wake_at=None, timeout_at=None, outputs=outputs)
    return cancel_from(definition, stopped, node, at)


def with_cancel(
    definition: FlowDefinition, state: State, effects: Sequence[Effect], now: float | None
) -> tuple[State, list[Effect]]:
    """Apply the cancellation among ``effects`` (Rule 7); return the state and the rest.

    The rest are the batch's other effects, less those that answer a command
    the cancellation dropped.
    """
    request = next(e for e in effects if type(e) is CancelRequested)
    rest = [e for e in effects if type(e) is not CancelRequested]
    if state.status != RUNNING:
        return state, rest
    at = now if request.at is None else request.at
    if definition._concurrent:
        from stepflow.core.groups import cancel_groups

        cancelled = cancel_groups(definition, state, request, at)
    else:
        cancelled = _cancel_one(definition, state, request, at)
    kept = {c.id for c in cancelled.in_flight}
    dropped = {c.id for c in state.in_flight} - kept
    rest = [e for e in rest if answered_id(e) not in dropped]
    if cancelled.status != CANCELLING:  # cancelled at once: events find no run (journaled)
        rest = [e for e in rest if type(e) is not EventReceived]
    return cancelled, rest


def may_run(command: Command, wake_at: float | None, at: float | None) -> bool:
    """Whether ``command`` may be executing at ``at``: a handler call (or a child run) due.

    A :class:`~stepflow.core.messages.StartChild` counts: its child may be
    running, and the shell cancels it (stepflow.core.children, Rule 5).
    """
    kind = type(command)
    return (kind is CallHandler or kind is StartChild) and (
        wake_at is None or at is None or wake_at <= at
    )


def _cancel_one(
    definition: FlowDefinition, state: State, request: CancelRequested, at: float | None
) -> State:
    node = definition._node(state.events[0])
    cancelling = state._replace(status=CANCELLING, error=cancel_record(request, node.step))
    in_flight = state.in_flight
    if node.shield >= 0 or (in_flight and may_run(in_flight[0], state.wake_at, at)):
        return cancelling
    dropped = cancelling._replace(in_flight=(), wake_at=None, timeout_at=None)
    return cancel_from(definition, dropped, node, at)[0]
