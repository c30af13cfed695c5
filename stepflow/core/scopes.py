"""Failure scopes: ``catch``, stepflow's ``try``/``except``.

Rule 1: pure, as :func:`~stepflow.core.advance.advance`: nothing here performs
I/O, reads a clock or calls user code, and no input is mutated.

Rule 2: names. ``.catch(name, steps, handler, errors)`` has the scope
``<name>Catch``; its steps run in the child scope ``<name>Catch/steps``, its
handler in ``<name>Catch/handler``. Entering the catch enters its steps; when
they complete, the catch completes and the flow continues after it.

Rule 3: which errors. ``errors`` is compiled to a
:class:`~stepflow.core.definition.CatchRule`: recorded type names (an exception
type becomes its qualified name), matched as ``RetryPolicy.non_retryable``
matches them: a dotted name exactly, a short name by class name whatever the
module. ``None`` takes every error. An ``errors`` naming no type (an int, an
empty list, an empty string) is a :class:`~stepflow.errors.DefinitionError`.

Rule 4: nesting. A failure (a handler that raised or returned a value of the
wrong kind, a ``wait_for`` that timed out, a group that failed, an ``on_error``
that declined or raised) is handed to the failure scopes enclosing the failed
step, innermost first: retries and catches in the order they nest
(:meth:`~stepflow.core.definition.FlowDefinition.enclosing_failure_scopes`). A
retry whose policy allows another attempt takes it (as before catches
existed); a catch takes it when its rule matches the error's type; any other
scope passes it outward, and with none left the run fails.

Rule 5: catching. A catch that takes an error keeps it in ``outputs`` under the
catch scope's path as ``{"error": {"type", "message", "step"}}`` (replacing an
earlier pass's), drops the attempts of the retries inside its steps, and moves
the position to the start of its handler: a state like any other, so a replay
or a resumed run sees the same. The handler's steps see the error as
``ctx.error`` (:func:`handler_error`); outside a handler ``ctx.error`` is
``None``.

Rule 6: the handler is outside its own catch. A failure in the handler's steps
goes to the scopes enclosing the catch, never back to it. A handler that
completes completes the catch; the flow continues after it.

Rule 7: groups. A catch inside a ``parallel`` branch or a ``map`` item takes
the failures of its steps there, and the branch goes on. A failure that leaves
a branch or item fails the group (:mod:`stepflow.core.groups`, Rule 8); once
nothing runs in it, the group's error goes to the scopes enclosing the group,
so a catch around the group takes it as one failure.
"""

from __future__ import annotations

from typing import Any

from pyrsistent.typing import PMap

from stepflow.core._json import freeze_json, thaw_json
from stepflow.core.cleanup import pending_error
from stepflow.core.definition import FlowDefinition, start_event, template_of
from stepflow.core.messages import Command
from stepflow.core.policies import type_names
from stepflow.core.state import ErrorRecord, State
from stepflow.errors import DefinitionError

__all__ = ["catch", "error_names", "handler_error"]

_HANDLER = "/handler"


def error_names(errors: Any, path: str) -> tuple[str, ...] | None:
    """Return the recorded type names a catch's ``errors`` stands for (``None``: any).

    >>> error_names([KeyError, "Declined"], "f/aCatch")
    ('Declined', 'KeyError')

    Raises:
        DefinitionError: ``errors`` names no exception type.

    """
    if errors is None:
        return None
    listed = (errors,) if isinstance(errors, (str, type)) else errors
    try:
        names = type_names(tuple(listed), "errors")
    except (TypeError, DefinitionError):
        names = ()
    if not names or not all(names):
        raise DefinitionError(
            f"the errors= of catch {path!r} is {errors!r:.80}, which names no exception type; "
            'pass an exception class, a type name ("KeyError", "myapp.Declined"), a list of '
            "them, or None to catch every error",
            path=path,
        )
    return names


def catch(
    definition: FlowDefinition, state: State, scope: str, error: ErrorRecord, at: float | None
) -> tuple[State, tuple[Command, ...]] | None:
    """Let catch ``scope`` take ``error`` (Rule 5); ``None`` if its rule does not match.

    ``state`` is a one-position state (a view of one, in a run with groups).
    """
    if not definition._catches[template_of(scope)].takes(error.type):
        return None
    from stepflow.core.advance import _enter

    record = {"error": {"type": error.type, "message": error.message, "step": error.step}}
    outputs = state.outputs.set(scope, freeze_json(record))
    node = definition._node(start_event(scope + _HANDLER))
    return _enter(definition, state, node, outputs, state.attempts, at, None)


def handler_error(
    definition: FlowDefinition, outputs: PMap[str, Any], command: Command
) -> ErrorRecord | None:
    """Return the error the handler serving ``command`` sees as ``ctx.error``, or ``None``.

    Inside a catch's handler, the error the innermost such catch took (Rule 5);
    inside a finally's cleanup that runs for a failure or a cancellation, and
    for a saga's compensation, what it runs for (:mod:`stepflow.core.cleanup`,
    Rule 6). ``command.step`` is a step path, with any map item indices.
    """
    if command.kind == "compensate":
        return pending_error(outputs.get(command.event.partition(":")[2][: -len("/compensate")]))
    if not definition._catches and not definition._cleanups:
        return None
    step = command.step
    cut = step.rfind("/")
    while cut > 0:
        scope, rest = step[:cut], step[cut + 1 :]
        kind = rest.partition("/")[0]
        if kind == "handler" and template_of(scope) in definition._catches:
            record = outputs.get(scope)
            if record is None:
                return None
            raw = thaw_json(record)["error"]
            return ErrorRecord(raw["type"], raw["message"], raw["step"])
        if kind == "cleanup" and definition._cleanups.get(template_of(scope)) == "finally":
            return pending_error(outputs.get(scope))
        cut = step.rfind("/", 0, cut)
    return None
