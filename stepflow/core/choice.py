"""``switch``: one routing command picks which group of steps runs.

Rule 1: pure, as :func:`~stepflow.core.advance.advance`: nothing here performs
I/O, reads a clock or calls user code. The route handler runs in the shell; its
answer reaches the core as an effect.

Rule 2: names. ``.switch(name, route, cases, default)`` has the scope
``<name>Switch``. Case ``i`` (in the order the cases were given, from 0) runs in
the child scope ``<name>Switch/case<i>``, the default in ``<name>Switch/default``.

Rule 3: one command. Reaching the switch issues one ``switch`` command, which
calls ``route(ctx)``; its answer is one journal entry. The route's value is not
kept in ``outputs``.

Rule 4: matching is by canonical JSON key (:func:`case_key`), exact and
type-aware: ``True`` is not ``1``, ``1`` is not ``"1"``, ``None`` is ``null``.
JSON has one number type, so ``1`` and ``1.0`` are the same key (and a switch
with both is refused at build time, as a duplicate case). NaN and the
infinities are not JSON and never keys.

Rule 5: the keys are data. The transition table's ``switch`` transition lists
each case's key (:attr:`~stepflow.core.definition.Transition.cases`) with its
destination, in order, then the default's start, or the switch's end when there
is no default. They are part of the fingerprint, so ``diff``, diagrams and the
analysis see them.

Rule 6: the answer. A route value equal to a case's key starts that case's
steps; any other JSON scalar starts the default's steps, or, with no default,
moves straight to the end of the switch (nothing runs). After the chosen group
the flow continues after the switch. A value that is not a JSON scalar (a list,
a dict, an object, NaN) fails the step with
:class:`~stepflow.errors.HandlerResultError`, exactly as a raise would: an
enclosing retry or catch may take it.

Rule 7: bad definitions are refused at build time with a
:class:`~stepflow.errors.DefinitionError` naming the switch's path: a case
value that is not a JSON scalar, two cases with the same key, a case or
default that is not ``stepflow.steps()``, no cases and no default, a route that
is not callable.
"""

from __future__ import annotations

import json
import math
from typing import Any

from stepflow.core.definition import (
    FlowDefinition,
    _Node,
    concretize,
    item_indices,
    template_of,
)
from stepflow.core.messages import Command
from stepflow.core.state import ErrorRecord
from stepflow.errors import DefinitionError, HandlerResultError

__all__ = ["case_key", "case_keys", "choose", "route_error"]


def case_key(value: object) -> str | None:
    """Return the canonical JSON key of a scalar ``value``, or ``None`` if it is not one.

    >>> [case_key(v) for v in (True, 1, 1.0, "1", None, 2.5)]
    ['true', '1', '1', '"1"', 'null', '2.5']
    >>> case_key([1]) is None and case_key(float("nan")) is None
    True
    """
    kind = type(value)
    if value is None or kind is bool or kind is int or kind is str:
        return json.dumps(value, ensure_ascii=True)
    if kind is float:
        number: float = value  # type: ignore[assignment]
        if not math.isfinite(number):
            return None
        if number.is_integer():
            return str(int(number))
        return repr(number)
    return None


def case_keys(path: str, values: tuple[Any, ...]) -> tuple[str, ...]:
    """Return the keys of a switch's case ``values``, in order.

    Raises:
        DefinitionError: a value is not a JSON scalar, or two share a key.

    """
    keys: dict[str, int] = {}
    for index, value in enumerate(values):
        key = case_key(value)
        if key is None:
            raise DefinitionError(
                f"case #{index} of switch {path!r} has the value {value!r:.80}, which is not "
                "a JSON scalar; use a str, int, float, bool or None",
                path=path,
            )
        if key in keys:
            raise DefinitionError(
                f"cases #{keys[key]} and #{index} of switch {path!r} have the same value "
                f"{key} ({values[keys[key]]!r} and {value!r}); JSON numbers 1 and 1.0 are "
                "equal. Give each case a distinct value",
                path=path,
            )
        keys[key] = index
    return tuple(keys)


def choose(definition: FlowDefinition, node: _Node, value: object) -> _Node | None:
    """Return the node a switch at ``node`` whose route returned ``value`` goes to.

    ``None``: ``value`` is not a JSON scalar (the step fails, see Rule 6).
    """
    key = case_key(value)
    if key is None:
        return None
    transition = definition.table[template_of(node.event)]
    cases = transition.cases
    if key not in cases:
        return definition._node(node.on_true)  # the default, or the switch's end
    event = transition.destinations[cases.index(key)].event
    if node.maps:
        event = concretize(event, node.maps, item_indices(node.event)[: len(node.maps)])
    return definition._node(event)


def route_error(command: Command, value: object) -> ErrorRecord | None:
    """Return the error a route handler returning ``value`` is recorded as (``None``: valid)."""
    if case_key(value) is not None:
        return None
    message = (
        f"the route of switch {command.step!r} returned {value!r:.80} "
        f"({type(value).__name__}); it must return a JSON scalar: str, int, finite float, "
        "bool or None"
    )
    return ErrorRecord.from_exception(HandlerResultError(message), command.step)
