"""Child runs: ``call`` steps, :class:`StartChild` and :class:`ChildEnded`.

A ``call`` step starts a run of another flow, the child, and waits for it to end:
composition at run time (a deploy that starts one run per cluster), where the
core sees only a command and its answer.

Rule 1: the same purity as :func:`~stepflow.core.advance.advance`: the child is
named by data (its flow's name, on the transition, part of the fingerprint);
nothing here starts it, reads a clock or calls user code. The shell (a worker,
:meth:`stepflow.Flow.run`, a scripted world) starts the child and reports how it
ended.

Rule 2: names. ``.call(name, flow)`` has the scope ``<name>Call``; its
position rests at ``start:<path>``.

Rule 3: reaching a call. The position rests there with one
:class:`~stepflow.core.messages.StartChild` in flight (kind ``"call"``, the
child's flow name as ``flow``). Nothing else about the child is in the state:
its input and id are the shell's to compute (from the step's ``input`` and
``id`` handlers), once per command, so a re-issued command (a crash) starts the
same child, and a retry (a new command, a new id) starts a new one.

Rule 4: the child ends. A :class:`~stepflow.core.messages.ChildEnded` addressed
to the ``StartChild`` answers it:

* ``"completed"``: its ``output`` (the child's outputs, a JSON object of step
  path to output) is kept in ``outputs`` under the step's path, exactly as a
  ``do``'s return (``None`` keeps an earlier value; a value JSON cannot hold
  fails the step with :class:`~stepflow.errors.HandlerResultError`), and the
  position moves past the step;
* ``"failed"`` or ``"cancelled"``: the step fails with the record
  ``stepflow.errors.ChildFailed`` (:class:`~stepflow.errors.ChildFailed`),
  whose message names the child and carries its error; retries, catches,
  ``finally_`` groups and sagas take it like any failure.

A ``HandlerReturned`` or ``HandlerRaised`` addressed to the command answers it
the same way (``ChildEnded`` is turned into one of them before it is applied).
Any other status, or a ``ChildEnded`` addressed to a command that is not a
``StartChild`` in flight, is refused with :class:`~stepflow.errors.EffectError`,
the state unchanged; one addressed to no command in flight is refused as a late
or unknown effect.

Rule 5: cancellation. A ``StartChild`` in flight counts as executing
(:func:`~stepflow.core.cleanup.may_run`): a cancelled parent becomes
``cancelling`` and keeps waiting for its child, whose cancellation the shell
requests; when the ``ChildEnded`` comes, its outcome is recorded as for a
``do`` (stepflow.core.cleanup, Rule 8) and the parent unwinds.
"""

from __future__ import annotations

from collections.abc import Sequence

from stepflow.core.messages import (
    ChildEnded,
    Effect,
    HandlerRaised,
    HandlerReturned,
    StartChild,
)
from stepflow.core.state import ErrorRecord, State
from stepflow.errors import EffectError

__all__ = ["CHILD_FAILED", "CHILD_STATUSES", "child_failure", "with_children"]

#: The recorded type of a failed or cancelled child.
CHILD_FAILED = "stepflow.errors.ChildFailed"
#: How a child run may end.
CHILD_STATUSES = ("completed", "failed", "cancelled")


def child_failure(command: StartChild, ended: ChildEnded) -> ErrorRecord:
    """Return the record a ``call`` step fails with when its child did not complete.

    >>> command = StartChild(3, "call", "p/v1/cCall", "start:p/v1/cCall", "c/v1")
    >>> error = ErrorRecord("ValueError", "bad disk", "c/v1/check")
    >>> child_failure(command, ChildEnded(3, "failed", None, error, None, "p#3")).message
    "child run 'p#3' of flow 'c/v1' failed: ValueError: bad disk (at c/v1/check)"
    """
    which = f"child run {ended.child!r}" if ended.child else "the child run"
    cause = "" if ended.error is None else f": {ended.error.type}: {ended.error.message}"
    where = "" if ended.error is None or not ended.error.step else f" (at {ended.error.step})"
    message = f"{which} of flow {command.flow!r} {ended.status}{cause}{where}"
    return ErrorRecord(CHILD_FAILED, message, command.step)


def with_children(state: State, effects: Sequence[Effect]) -> list[Effect]:
    """Return ``effects`` with each :class:`ChildEnded` turned into the answer it stands for.

    Rule 4: a completed child's output becomes a ``HandlerReturned``, any other
    end a ``HandlerRaised`` carrying :func:`child_failure`'s record.

    Raises:
        EffectError: a ``ChildEnded`` has an unknown status, or answers a
            command in flight that is not a ``StartChild``.

    """
    in_flight = {command[0]: command for command in state.in_flight}
    answers: list[Effect] = []
    for effect in effects:
        if type(effect) is not ChildEnded:
            answers.append(effect)
            continue
        command_id, status, output, _, at, _ = effect
        command = in_flight.get(command_id)
        if status not in CHILD_STATUSES or (
            command is not None and type(command) is not StartChild
        ):
            raise EffectError(
                f"{effect!r:.120} cannot be applied: a ChildEnded answers a StartChild in "
                f"flight, with a status among {CHILD_STATUSES}",
                command_id=command_id if type(command_id) is int else -1,
            )
        if status == "completed" or command is None:  # (None: refused as late or unknown)
            answers.append(HandlerReturned(command_id, output, at))
        else:
            error = child_failure(command, effect)
            answers.append(HandlerRaised(command_id, error, None, at))
    return answers
