"""Commands and effects: what the core asks for, and what happened.

Commands are imperative (:class:`CallHandler`, :class:`Wake`, :class:`AwaitEvent`,
:class:`StartChild`): the core asks the shell to call a handler, to wake the run
at a time, to deliver an event when one comes, or to start a child run. Effects
are past tense (:class:`HandlerReturned`, :class:`HandlerRaised`,
:class:`TimerFired`, :class:`EventReceived`, :class:`ChildEnded`): the shell
reports the outcome, addressed to the command's id (an event is addressed to the
run: see :mod:`stepflow.core.events`), stamped with the time it was observed
(``at``, seconds since the epoch, read from the shell's clock: the core
never reads one). Both are frozen data; they are ``NamedTuple`` subclasses
because they are made on every step, and each compares equal only to its own type.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, cast

from stepflow.core.state import ErrorRecord

__all__ = [
    "AwaitEvent",
    "CallHandler",
    "CancelRequested",
    "ChildEnded",
    "Command",
    "CommandKind",
    "Effect",
    "EventReceived",
    "HandlerRaised",
    "HandlerReturned",
    "StartChild",
    "TimerFired",
    "Wake",
    "answered_id",
]

CommandKind = Literal[
    "do",
    "wait_for",
    "case",
    "loop_until",
    "on_error",
    "sleep",
    "map",
    "wait_event",
    "switch",
    "sleep_until",
    "compensate",
    "call",
]


class CallHandler(NamedTuple):
    """Call the handler bound to a step and report its outcome as an effect.

    Attributes:
        id: Run-unique, deterministic id (the state's sequence number when it was
            issued). Re-issued commands keep their id.
        kind: ``"do"``, ``"wait_for"``, ``"case"``, ``"loop_until"``,
            ``"on_error"``, ``"map"``, ``"switch"``, ``"sleep_until"`` or
            ``"compensate"``. It says which handler of the step to call and what
            its result means: a JSON value for ``do`` (and for ``compensate``,
            whose value is ignored), a JSON list for a map's ``items``, a JSON
            scalar for a switch's ``route``, a time (seconds since the epoch)
            for a ``sleep_until``'s ``when``, a ``bool`` for the others.
        step: Scope path of the step (``"deploy/v1/shouldDeployCase"``). For
            ``on_error`` it is the retry scope (``"deploy/v1/pushRetry"``); for
            ``compensate``, the ``do`` step whose ``compensate=`` handler to call.
        event: The state event the command belongs to (the position that waits
            for it).
        error: For ``on_error``, the error record to hand to the handler; else
            ``None``.

    """

    id: int
    kind: CommandKind
    step: str
    event: str
    error: ErrorRecord | None

    def __eq__(self, other: object) -> bool:
        return type(other) is CallHandler and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return tuple.__hash__(self)

    @property
    def key(self) -> str:
        """Idempotency key: stable across re-issues of this command in one run.

        Side effects keyed by it (prefixed with a run id when several runs share a
        store) happen once even when a crashed worker's successor re-runs the
        command.

        >>> CallHandler(7, "do", "deploy/v1/push", "start:deploy/v1/push", None).key
        'deploy/v1/push#7'
        """
        return f"{self.step}#{self.id}"


class Wake(NamedTuple):
    """Wake the run at time ``at``: the durable timer of a ``sleep`` or ``sleep_until`` step.

    Answer it with :class:`TimerFired` once the clock reads ``at`` or later; the
    core refuses an earlier one. Its fields line up with :class:`CallHandler`'s,
    so ``id``, ``kind``, ``step`` and ``event`` read the same on every command.

    Attributes:
        id: Run-unique, deterministic id, as for :class:`CallHandler`.
        kind: Always ``"sleep"`` (a ``sleep_until``'s timer too).
        step: Scope path of the sleep step.
        event: The state event the command belongs to.
        at: When the timer fires, seconds since the epoch.

    """

    id: int
    kind: Literal["sleep"]
    step: str
    event: str
    at: float

    def __eq__(self, other: object) -> bool:
        return type(other) is Wake and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return tuple.__hash__(self)

    @property
    def key(self) -> str:
        """Idempotency key, as for :attr:`CallHandler.key`."""
        return f"{self.step}#{self.id}"


class AwaitEvent(NamedTuple):
    """Wait for an event named ``name``: a ``wait_event`` step's position rests here.

    The shell executes nothing for it. An :class:`EventReceived` of that name,
    applied to the run, answers it (see :mod:`stepflow.core.events`); so may a
    :class:`HandlerReturned` addressed to its id, carrying the payload. With a
    timeout, ``at`` is when it expires: answer it then with :class:`TimerFired`,
    as a :class:`Wake`. Its first fields line up with :class:`Wake`'s.

    Attributes:
        id: Run-unique, deterministic id, as for :class:`CallHandler`.
        kind: Always ``"wait_event"``.
        step: Scope path of the ``wait_event`` step.
        event: The state event the command belongs to.
        at: When the wait times out (seconds since the epoch), or ``None``: only
            an event ends it.
        name: The name of the event it waits for.

    """

    id: int
    kind: Literal["wait_event"]
    step: str
    event: str
    at: float | None
    name: str

    def __eq__(self, other: object) -> bool:
        return type(other) is AwaitEvent and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return tuple.__hash__(self)

    @property
    def key(self) -> str:
        """Idempotency key, as for :attr:`CallHandler.key`."""
        return f"{self.step}#{self.id}"


class StartChild(NamedTuple):
    """Start a child run of flow ``flow``: a ``call`` step's position rests here.

    The shell calls the step's ``input`` (and ``id``) handlers, starts the child
    run (in the same transaction as the parent's save, for a durable runtime),
    and answers with :class:`ChildEnded` once the child has ended; see
    :mod:`stepflow.core.children`. For a cancellation it counts as executing:
    the parent waits for its child, whose cancellation the shell requests.
    Its first fields line up with :class:`CallHandler`'s.

    Attributes:
        id: Run-unique, deterministic id, as for :class:`CallHandler`.
        kind: Always ``"call"``.
        step: Scope path of the ``call`` step.
        event: The state event the command belongs to.
        flow: The name of the child's flow (``"deploy-cluster/v1"``).

    """

    id: int
    kind: Literal["call"]
    step: str
    event: str
    flow: str

    def __eq__(self, other: object) -> bool:
        return type(other) is StartChild and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return tuple.__hash__(self)

    @property
    def key(self) -> str:
        """Idempotency key, as for :attr:`CallHandler.key`.

        >>> StartChild(4, "call", "p/v1/deployCall", "start:p/v1/deployCall", "c/v1").key
        'p/v1/deployCall#4'
        """
        return f"{self.step}#{self.id}"


#: Every command the core can issue.
Command = CallHandler | Wake | AwaitEvent | StartChild


class HandlerReturned(NamedTuple):
    """The handler of command ``command_id`` returned ``value``.

    Attributes:
        command_id: The id of the answered command.
        value: The return value: JSON data for ``do``, a ``bool`` for conditions
            and ``on_error``.
        at: When the outcome was observed (seconds since the epoch), or ``None``
            when the caller keeps no clock.

    """

    command_id: int
    value: Any
    at: float | None = None

    def __eq__(self, other: object) -> bool:
        return type(other) is HandlerReturned and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return tuple.__hash__(self)


class HandlerRaised(NamedTuple):
    """The handler of command ``command_id`` raised.

    Attributes:
        command_id: The id of the answered command.
        error: The recorded error (type name, message, step).
        exception: The live exception object, when the effect was made in this
            process; ``None`` after a round trip through storage. It does not take
            part in equality.
        at: When the failure was observed, or ``None``.

    """

    command_id: int
    error: ErrorRecord
    exception: BaseException | None = None
    at: float | None = None

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is HandlerRaised
            and self.command_id == other.command_id
            and self.error == other.error
            and self.at == other.at
        )

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash((HandlerRaised, self.command_id, self.error, self.at))


class TimerFired(NamedTuple):
    """The timer of :class:`Wake` command ``command_id`` fired at ``at``.

    Attributes:
        command_id: The id of the answered :class:`Wake`.
        at: The time the shell observed, no earlier than the command's ``at``.

    """

    command_id: int
    at: float

    def __eq__(self, other: object) -> bool:
        return type(other) is TimerFired and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return tuple.__hash__(self)


class EventReceived(NamedTuple):
    """An event named ``name`` reached the run, carrying the JSON ``payload``.

    Unlike the other effects it answers no command: it is addressed to the run,
    kept in the state's mailbox until a ``wait_event`` step of that name takes
    it (see :mod:`stepflow.core.events` for the rules).

    Attributes:
        name: The event's name (non-empty, without ``:``).
        payload: Its JSON payload (``None`` for none).
        at: When it was sent (seconds since the epoch), or ``None``.

    """

    name: str
    payload: Any = None
    at: float | None = None

    def __eq__(self, other: object) -> bool:
        return type(other) is EventReceived and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash((EventReceived, self.name, repr(self.payload), self.at))


class CancelRequested(NamedTuple):
    """Someone asked to cancel the run, for ``reason``.

    Like :class:`EventReceived`, it answers no command: it is addressed to the
    run. See :mod:`stepflow.core.cleanup` for what it does: commands in flight
    finish, the cleanups of the enclosing ``finally_`` groups and the
    compensations of the enclosing sagas run, then the run is ``cancelled``.

    Attributes:
        reason: Why (kept as the cancellation record's message).
        at: When it was requested (seconds since the epoch), or ``None``.
        deadline: ``True`` when the run's deadline passed (recorded as
            :class:`~stepflow.errors.DeadlineExceeded` rather than
            :class:`~stepflow.errors.RunCancelled`).

    """

    reason: str = ""
    at: float | None = None
    deadline: bool = False

    def __eq__(self, other: object) -> bool:
        return type(other) is CancelRequested and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return tuple.__hash__(self)


class ChildEnded(NamedTuple):
    """The child run that :class:`StartChild` command ``command_id`` started has ended.

    Attributes:
        command_id: The id of the answered :class:`StartChild`.
        status: How the child ended: ``"completed"``, ``"failed"`` or ``"cancelled"``.
        output: For a completed child, its output (JSON; see
            :mod:`stepflow.core.children`); else ``None``.
        error: For a failed or cancelled child, its error record; else ``None``.
        at: When the child ended (seconds since the epoch), or ``None``.
        child: The child's run id, when known (for the failure's message).

    """

    command_id: int
    status: Literal["completed", "failed", "cancelled"]
    output: Any = None
    error: ErrorRecord | None = None
    at: float | None = None
    child: str = ""

    def __eq__(self, other: object) -> bool:
        return type(other) is ChildEnded and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return hash((ChildEnded, self.command_id, self.status, repr(self.output), self.error))


#: Every effect the core accepts.
Effect = HandlerReturned | HandlerRaised | TimerFired | EventReceived | CancelRequested | ChildEnded


def answered_id(effect: Effect) -> int:
    """Return the id of the command ``effect`` answers; ``-1`` for an event or a cancellation.

    >>> answered_id(TimerFired(3, 0.0)), answered_id(EventReceived("approved"))
    (3, -1)
    """
    kind = type(effect)
    return -1 if kind is EventReceived or kind is CancelRequested else cast(int, effect[0])
