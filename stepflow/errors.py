"""The stepflow exception hierarchy.

Every exception stepflow raises derives from :class:`StepflowError`, and each
subclass also extends the builtin that fits it best (``DefinitionError`` is a
``ValueError``), so callers can catch either the stepflow root or the usual
builtin. Each carries the values that explain it as attributes, and its message
says what was wrong and how to fix it.

This module is pure: the core imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stepflow.core.state import ErrorRecord, State

__all__ = [
    "AmbiguousRunError",
    "ChildFailed",
    "ConfigurationError",
    "CorruptStateError",
    "DeadlineExceeded",
    "DefinitionError",
    "DuplicateEffectError",
    "EffectError",
    "EventError",
    "FlowFailed",
    "FlowMismatchError",
    "HandlerResultError",
    "InboxFullError",
    "IncompatibleDefinition",
    "InterpreterError",
    "JournalPrunedError",
    "LateEffectError",
    "MailboxFullError",
    "ProgressError",
    "RecordedError",
    "RunCancelled",
    "RunExistsError",
    "RunFinishedError",
    "ScheduleError",
    "ScheduleExistsError",
    "StaleWriteError",
    "StateError",
    "StepTimeoutError",
    "StepflowError",
    "StoreError",
    "UnknownEffectError",
    "UnknownEventError",
    "UnknownRunError",
    "UnknownScheduleError",
    "UnreadableRunError",
    "WaitTimeoutError",
]


class StepflowError(Exception):
    """Root of every exception stepflow raises."""


class DefinitionError(StepflowError, ValueError):
    """A flow specification cannot be compiled into a definition.

    Attributes:
        path: The scope path of the offending step (``"deploy/v1/shouldDeployCase"``),
            or the root name when the problem is the flow itself.

    """

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class EffectError(StepflowError, ValueError):
    """An effect batch cannot be applied to a state; the state is left unchanged.

    Attributes:
        command_id: The command id the offending effect was addressed to.

    """

    def __init__(self, message: str, command_id: int) -> None:
        super().__init__(message)
        self.command_id = command_id


class UnknownEffectError(EffectError):
    """An effect answers a command that was never issued."""


class DuplicateEffectError(EffectError):
    """One batch holds two effects for the same command."""


class LateEffectError(EffectError):
    """An effect answers a command that was already answered (or is not in flight)."""


class StateError(StepflowError, ValueError):
    """A serialized or given state does not fit the definition it is used with."""


class CorruptStateError(StateError):
    """Serialized state text cannot be read: bad JSON, wrong shape, or unknown format.

    Attributes:
        problems: One line per problem, each naming the ``$.path`` that was wrong.

    """

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


class FlowMismatchError(StateError):
    """The state belongs to another flow than the definition it was given with.

    Attributes:
        expected: The definition's flow name.
        actual: The state's flow name.

    """

    def __init__(self, message: str, expected: str, actual: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class UnknownEventError(StateError):
    """The state holds events (or commands) the definition does not know.

    Attributes:
        events: The unknown event strings.

    """

    def __init__(self, message: str, events: tuple[str, ...]) -> None:
        super().__init__(message)
        self.events = events


class IncompatibleDefinition(UnknownEventError):
    """A state saved under another definition cannot continue under this one.

    Raised when the fingerprints differ and events (or in-flight commands) of the
    state no longer exist in the new definition.

    Attributes:
        events: The events (and command sources) missing from the new definition.
        state_fingerprint: The fingerprint recorded in the state.
        definition_fingerprint: The fingerprint of the definition given.

    """

    def __init__(
        self,
        message: str,
        events: tuple[str, ...],
        state_fingerprint: str,
        definition_fingerprint: str,
    ) -> None:
        super().__init__(message, events)
        self.state_fingerprint = state_fingerprint
        self.definition_fingerprint = definition_fingerprint


class HandlerResultError(StepflowError, TypeError):
    """A handler returned a value of the wrong kind.

    The core records it as the step's failure (a ``do`` that returned a value that is
    not JSON, a condition that returned something other than a ``bool``); it is never
    raised by :func:`stepflow.advance` itself. The interpreter rebuilds it from the
    state's error record so ``on_error`` handlers and ``FlowFailed`` see this type.
    """


class RecordedError(StepflowError, RuntimeError):
    """An exception rebuilt from an error record whose original type is unavailable.

    When a state was saved and loaded, the exception object a handler raised no longer
    exists. ``on_error`` handlers then receive the original type rebuilt from its
    recorded name and message when that type is importable and takes a message, or
    this class otherwise.

    Attributes:
        type_name: The recorded type name (``"builtins.ValueError"``, ``"app.Flaky"``).
        message: The recorded message.

    """

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message


class InterpreterError(StepflowError, RuntimeError):
    """The interpreter was used in a way it cannot serve.

    For example, a synchronous ``execute`` of an ``async def`` handler from inside a
    running event loop: use ``execute_async`` (or ``apply_async``) there.
    """


class FlowFailed(StepflowError, RuntimeError):
    """A flow run failed; the failed state is attached and can be saved.

    ``__cause__`` is the handler's exception (or its rebuilt form when the failure
    was loaded from a saved state).

    Attributes:
        state: The failed state. It keeps the position and the error record.
        error: The error record of the failure (``state.error``).

    """

    def __init__(self, state: State, error: ErrorRecord) -> None:
        super().__init__(
            f"flow {state.flow!r} failed at step {error.step!r}: {error.type}: {error.message}"
        )
        self.state = state
        self.error = error


class MailboxFullError(EffectError):
    """A batch would put more events in a run's mailbox than it holds.

    Nothing is changed; deliver at most
    :func:`~stepflow.core.events.mailbox_room` events in one batch, and the rest
    once a ``wait_event`` step has taken some.
    """


class WaitTimeoutError(StepflowError, TimeoutError):
    """A ``wait_for`` step's condition stayed false past its ``timeout``.

    It is recorded in the state like any handler failure, so an enclosing
    ``retry`` can catch it.
    """


class RunCancelled(StepflowError):
    """The run was cancelled (recorded as a cancelling or cancelled state's ``error``).

    Never raised by a step: a cancellation is an effect
    (:class:`~stepflow.core.messages.CancelRequested`), and its record, with
    the reason as the message, is the state's ``error`` while the cleanups run
    and once the run is cancelled. Retries and catches never take it.
    """


class ChildFailed(StepflowError, RuntimeError):
    """A child run started by a ``call`` step failed or was cancelled.

    Recorded, never raised by the core: the ``call`` step fails with the
    record ``stepflow.errors.ChildFailed``, whose message names the child's
    run id (when known), how it ended and its own error. Retries (a retry
    starts a new child) and catches take it like any failure.
    """


class DeadlineExceeded(RunCancelled):
    """The run was cancelled because it passed its deadline (``named(..., deadline=)``)."""


class StepTimeoutError(StepflowError, TimeoutError):
    """A ``do`` step's handler ran past its ``timeout=`` (start to close).

    The shell enforces it (:class:`stepflow.Interpreter`, the
    :class:`stepflow.Flow` drivers, the :class:`stepflow.Worker`): an
    ``async def`` handler is cancelled at the deadline, a plain one is abandoned
    in its thread (a late result is ignored and logged). The step then fails
    with this error, recorded like any handler failure: an enclosing ``retry``
    retries it unless its policy names it ``non_retryable``.
    """


class StoreError(StepflowError, RuntimeError):
    """A run store cannot do what was asked (schema, connection, corrupt row)."""


class StaleWriteError(StoreError):
    """A save lost its compare-and-swap: the run moved on or the lease was lost.

    Nothing was written. The writer should drop its copy of the run and let the
    lease holder (or the next claim) continue it.

    Attributes:
        run_id: The run the save was for.

    """

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class UnknownRunError(StoreError, LookupError):
    """No run has the given id.

    Attributes:
        run_id: The id that was looked up.

    """

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class UnreadableRunError(StoreError, ValueError):
    """A column of one run's row cannot be read: bad JSON, text that is not UTF-8.

    It concerns that run alone: stores still list the run (its record carries the
    error as ``unreadable``), and a worker parks it and goes on with the others.
    Repair the column by hand and the run is driven again at its next retry.

    Attributes:
        run_id: The run whose row holds the bad column.
        column: The column that cannot be read (``"input"``, ``"state"``, ``"journal"``).
        reason: What is wrong with it.

    """

    def __init__(self, run_id: str, column: str, reason: str) -> None:
        super().__init__(
            f"run {run_id!r} cannot be read: its {column} {reason}; repair the row by hand "
            "(or cancel the run), and a worker drives it again at its next retry"
        )
        self.run_id = run_id
        self.column = column
        self.reason = reason

    def __reduce__(self) -> tuple[type[UnreadableRunError], tuple[str, str, str]]:
        return (type(self), (self.run_id, self.column, self.reason))


class RunExistsError(StoreError, ValueError):
    """A run with the given id already exists.

    Attributes:
        run_id: The id that is taken.

    """

    def __init__(self, message: str, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class ConfigurationError(StepflowError, ValueError):
    """A setting is malformed: a store URL, a ``MODULE:FLOW`` reference, an option."""


class AmbiguousRunError(StoreError, LookupError):
    """A run id prefix matches more than one run.

    Attributes:
        prefix: The prefix that was looked up.
        matches: The ids it matches (the first few, sorted).

    """

    def __init__(self, message: str, prefix: str, matches: tuple[str, ...]) -> None:
        super().__init__(message)
        self.prefix = prefix
        self.matches = matches


class ScheduleError(StepflowError, ValueError):
    """A schedule is malformed (a cron expression, a timezone, an option) or cannot be stored.

    Nothing was added or changed.

    Attributes:
        schedule: The schedule's name.

    """

    def __init__(self, message: str, schedule: str) -> None:
        super().__init__(message)
        self.schedule = schedule


class UnknownScheduleError(ScheduleError, LookupError):
    """No schedule has the given name in the store."""


class ScheduleExistsError(ScheduleError):
    """A schedule with the given name is already in the store."""


class JournalPrunedError(StoreError, LookupError):
    """A run's journal was removed by a retention prune (``stepflow prune``).

    The run itself is kept (its state, status, outputs and error), but its
    history cannot be read, replayed or exported any more.

    Attributes:
        run_id: The run.
        through: The journal entries up to this ``seq`` were removed.
        at: When they were removed.

    """

    def __init__(self, run_id: str, through: int, at: float) -> None:
        super().__init__(
            f"the journal of run {run_id!r} was pruned (entries up to seq {through} removed "
            "by a retention prune): its state and outputs are kept, its history is not; "
            "prune with a longer --older-than to keep the histories you need"
        )
        self.run_id = run_id
        self.through = through
        self.at = at

    def __reduce__(self) -> tuple[type[JournalPrunedError], tuple[str, int, float]]:
        return (type(self), (self.run_id, self.through, self.at))


class ProgressError(StepflowError, ValueError):
    """A progress report (``ctx.report``) is not JSON data, or is too large.

    Nothing was stored: the run keeps its previous progress document.
    """


# -- events sent to runs (stepflow.send_event, Store.send_event) ----------------------------


class EventError(StepflowError, ValueError):
    """An event cannot be sent as given: its name, or its payload.

    The name must be a non-empty str without ``:``; the payload JSON data (no NaN
    or infinity) of at most :data:`~stepflow.stores.base.MAX_EVENT_BYTES` bytes.
    Nothing was stored.
    """


class RunFinishedError(StoreError, ValueError):
    """An event was sent to a run that is finished (completed, failed or cancelled).

    Nothing was stored: no step of a finished run can take it.

    Attributes:
        run_id: The run.
        status: Its status.

    """

    def __init__(self, run_id: str, status: str) -> None:
        super().__init__(
            f"run {run_id!r} is {status}: it takes no more events; nothing was sent "
            "(resume a failed run first if it should go on)"
        )
        self.run_id = run_id
        self.status = status

    def __reduce__(self) -> tuple[type[RunFinishedError], tuple[str, str]]:
        return (type(self), (self.run_id, self.status))


class InboxFullError(StoreError):
    """A run already holds as many undelivered events as its store keeps for it.

    Nothing was stored. The run takes its events when it is driven: send again
    once a worker has delivered some (see :data:`~stepflow.stores.base.INBOX_LIMIT`).

    Attributes:
        run_id: The run.
        limit: How many undelivered events a run may hold.

    """

    def __init__(self, run_id: str, limit: int) -> None:
        super().__init__(
            f"run {run_id!r} already holds {limit} events no worker has delivered yet, the "
            "most a store keeps for one run: nothing was sent; check that a worker serves "
            "its flow, and send again once it has taken some"
        )
        self.run_id = run_id
        self.limit = limit

    def __reduce__(self) -> tuple[type[InboxFullError], tuple[str, int]]:
        return (type(self), (self.run_id, self.limit))
