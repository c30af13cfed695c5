"""Timers at a computed time: the rules of ``sleep_until``.

Rule 1: purity, as in :mod:`stepflow.core.advance`: nothing here reads a clock,
performs I/O or calls user code. Times are JSON numbers (seconds since the
epoch) inside the effects; the shell converts a ``datetime`` a ``when``
handler returns into one before the core sees it (see
:class:`stepflow.Interpreter`).

Rule 2: a ``sleep_until`` step rests at one event (its ``start:``) in two
phases. First its ``when`` handler is called once, as a ``CallHandler`` of kind
``"sleep_until"``; like any handler, it may raise (the innermost retry takes the
error) and it is retried or resumed with a new command.

Rule 3: the time it returns must be a finite JSON number (``bool`` is not a
number); any other value fails the step with a
:class:`~stepflow.errors.HandlerResultError`, as a ``do`` returning a value
that is not JSON does. A valid time is kept in ``outputs`` under the step's
path (so a restart never asks ``when`` again), and becomes the state's
``wake_at``.

Rule 4: the second phase is the durable timer of a ``sleep``: a
:class:`~stepflow.core.messages.Wake` of kind ``"sleep"`` at that time, at the
same position, answered by ``TimerFired`` no earlier than its time (the core
refuses an earlier one). A time already past is due at once: the timer fires
as soon as the shell executes it. Then the run moves past the step, as a
``sleep`` does.
"""

from __future__ import annotations

import math
from typing import Any

from stepflow.core.definition import FlowDefinition, _Node
from stepflow.core.messages import Command, Wake
from stepflow.core.state import EMPTY_GROUPS, EMPTY_TIMES, ErrorRecord, State
from stepflow.errors import HandlerResultError

__all__ = ["fits", "rest_until", "time_error"]

_new = tuple.__new__


def time_error(command: Command, value: Any) -> ErrorRecord | None:
    """Return the error a ``when`` handler returning ``value`` is recorded as (``None``: valid)."""
    if type(value) in (int, float) and math.isfinite(value):
        return None
    message = (
        f"the when handler of sleep_until {command.step!r} returned {value!r:.80} "
        f"({type(value).__name__}); it must return a datetime or a finite number of "
        "seconds since the epoch"
    )
    return ErrorRecord.from_exception(HandlerResultError(message), command.step)


def rest_until(
    definition: FlowDefinition,
    state: State,
    command: Command,
    node: _Node,
    value: Any,
    at: float | None,
) -> tuple[State, tuple[Command, ...]]:
    """Apply a ``when`` handler's ``value``, answered at ``at``: rest until that time.

    Rules 3 and 4: a valid time is kept and its timer issued; any other value
    fails the step (handed to the retries around it, as any failure).
    """
    error = time_error(command, value)
    if error is not None:
        from stepflow.core.advance import _fail_step  # (advance imports this module)

        return _fail_step(definition, state, command, node, error, at)
    when = float(value)
    seq = state.seq + 1
    issued: tuple[Command, ...] = (_new(Wake, (seq, "sleep", node.step, node.event, when)),)
    # (By name: whatever else a state holds is kept as it is.)
    rested = state._replace(
        flow=definition.name,
        fingerprint=definition.fingerprint,
        in_flight=issued,
        seq=seq,
        outputs=state.outputs.set(command.step, when),
        wake_at=when,
        timeout_at=None,
        times=EMPTY_TIMES,
        groups=EMPTY_GROUPS,
    )
    return rested, issued


def fits(node: _Node, command: Command) -> bool:
    """Whether ``command`` may be in flight at ``node``: its own kind, or a sleep_until's timer."""
    return node.kind == command.kind or (node.kind == "sleep_until" and type(command) is Wake)
