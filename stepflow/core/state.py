"""The run state: a typed, versioned, immutable record.

A :class:`State` is everything stepflow needs to continue a run: its position (the
go-stepflow event strings), its status, the error that failed it, the commands in
flight, a sequence counter for command ids, and the JSON outputs of its steps.

It is a ``NamedTuple`` because it is built on every step and must be cheap to make;
it compares equal only to another ``State``, never to a plain tuple.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import attrs
from pyrsistent import pmap
from pyrsistent.typing import PMap

if TYPE_CHECKING:
    from stepflow.core.messages import Command

__all__ = [
    "CANCELLED",
    "CANCELLING",
    "COMPLETED",
    "FAILED",
    "RUNNING",
    "ErrorRecord",
    "GroupProgress",
    "State",
    "Status",
    "type_name",
]

Status = Literal["running", "completed", "failed", "cancelling", "cancelled"]
RUNNING: Status = "running"
COMPLETED: Status = "completed"
FAILED: Status = "failed"
#: A cancellation was requested: commands in flight finish, cleanups and compensations run.
CANCELLING: Status = "cancelling"
#: A cancelled run whose cleanups and compensations have all run.
CANCELLED: Status = "cancelled"

EMPTY_OUTPUTS: PMap[str, Any] = pmap()
EMPTY_ATTEMPTS: PMap[str, int] = EMPTY_OUTPUTS
EMPTY_TIMES: PMap[str, tuple[float | None, float | None]] = EMPTY_OUTPUTS
EMPTY_GROUPS: PMap[str, GroupProgress] = EMPTY_OUTPUTS


def type_name(exc: BaseException) -> str:
    """Return the qualified type name recorded for ``exc``.

    Builtins keep their bare name (``"ValueError"``); other types are
    ``"module.QualName"``.

    >>> type_name(KeyError("x"))
    'KeyError'
    """
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


@attrs.frozen
class ErrorRecord:
    """What failed, as data: the error's type name, its message, and the step.

    >>> ErrorRecord.from_exception(ValueError("boom"), "deploy/v1/push")
    ErrorRecord(type='ValueError', message='boom', step='deploy/v1/push')

    Attributes:
        type: Qualified type name of the exception (see :func:`type_name`).
        message: ``str()`` of the exception.
        step: Scope path of the step whose handler failed (for a failing
            ``on_error`` handler, the path of its retry scope).

    """

    type: str
    message: str
    step: str

    @classmethod
    def from_exception(cls, exc: BaseException, step: str) -> ErrorRecord:
        """Record ``exc``, raised by the handler of ``step``.

        The message is ``str(exc)``, except for a ``KeyError`` of one argument,
        whose ``str()`` is the key's ``repr()``: recording the key itself keeps the
        message stable when the error is rebuilt and recorded again.
        """
        if isinstance(exc, KeyError) and len(exc.args) == 1:
            return cls(type_name(exc), str(exc.args[0]), step)
        return cls(type_name(exc), str(exc), step)


class GroupProgress(NamedTuple):
    """Where a running ``parallel`` or ``map`` group stands (see :mod:`stepflow.core.groups`).

    Attributes:
        kind: ``"parallel"`` or ``"map"``.
        items: For a map, the JSON items its ``items`` handler returned; for a
            parallel group, its branch names.
        started: How many items (branches) were started, in order.
        active: How many started items (branches) have not ended yet.
        results: Each ended or running item's last ``do`` output (a failed one's
            error as ``{"error": {...}}``), keyed by branch name or by the item's
            index as a string.
        failures: How many items (branches) failed.
        error: The error that fails the group, once more items failed than it
            tolerates; no new command starts in it from then on.

    """

    kind: str
    items: tuple[Any, ...]
    started: int
    active: int
    results: PMap[str, Any]
    failures: int = 0
    error: ErrorRecord | None = None

    def __eq__(self, other: object) -> bool:
        return type(other) is GroupProgress and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return tuple.__hash__(self)


class State(NamedTuple):
    """The immutable state of one run of a flow.

    Build the first one with ``advance(definition, None)``; every later one comes
    from :func:`stepflow.advance` or :func:`stepflow.loads`.

    Attributes:
        flow: Name of the flow (the root scope, ``"deploy/v1"``).
        fingerprint: Fingerprint of the definition the state was made under.
        events: The current positions, as go-stepflow event strings
            (``("start:deploy/v1/push",)``): one, or one per running branch or
            map item (a map item's carries its index, ``.../regionsMap/steps[3]/push``).
            In a running state each position has its command, in the same order
            as ``in_flight``.
        status: ``"running"``, ``"completed"``, ``"failed"``, ``"cancelling"``
            (a cancellation is unwinding: see :mod:`stepflow.core.cleanup`) or
            ``"cancelled"``.
        error: The :class:`ErrorRecord` of the failure when ``status`` is
            ``"failed"``; of the cancellation (type
            ``stepflow.errors.RunCancelled`` or ``stepflow.errors.DeadlineExceeded``,
            its reason as the message) when it is ``"cancelling"`` or
            ``"cancelled"``; else ``None``.
        in_flight: The commands issued and not yet answered.
        seq: The id of the last command issued (ids count up from 1).
        outputs: The latest non-``None`` JSON value each ``do`` step returned,
            keyed by the step's scope path (lists as ``pvector``, objects as
            ``pmap``).
        wake_at: The earliest time the commands in flight should be carried out
            (seconds since the epoch): the next poll of a ``wait_for``, a retry's
            backoff, a ``sleep``'s deadline. ``None``: at once (or never, for a
            finished run). Drivers sleep until then instead of spinning.
        timeout_at: When the current ``wait_for`` step times out, or ``None``.
        attempts: For each retry scope the position is inside, how many times
            its group was restarted in the current pass (attempt = restarts + 1).
        run_id: The run's identity, given when it was started; it seeds the
            deterministic jitter of retry backoffs. ``""`` when not given.
        times: In a flow with ``parallel`` or ``map`` groups, each position's
            ``(wake_at, timeout_at)`` where either is set; ``wake_at`` and
            ``timeout_at`` above then hold the earliest of them. Empty otherwise.
        groups: The :class:`GroupProgress` of each running group, keyed by the
            group's scope path (with its item indices). Empty otherwise.
        mailbox: The events received and not yet taken by a ``wait_event`` step,
            as ``(name, payload)`` pairs in arrival order (see
            :mod:`stepflow.core.events`).

    """

    flow: str
    fingerprint: str
    events: tuple[str, ...]
    status: Status
    error: ErrorRecord | None
    in_flight: tuple[Command, ...]
    seq: int
    outputs: PMap[str, Any]
    wake_at: float | None = None
    timeout_at: float | None = None
    attempts: PMap[str, int] = EMPTY_ATTEMPTS
    run_id: str = ""
    times: PMap[str, tuple[float | None, float | None]] = EMPTY_TIMES
    groups: PMap[str, GroupProgress] = EMPTY_GROUPS
    mailbox: tuple[tuple[str, Any], ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is State and tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __hash__(self) -> int:
        return tuple.__hash__(self)

    @property
    def is_running(self) -> bool:
        """Whether the run is running normally (not finished, not being cancelled)."""
        return self.status == RUNNING

    @property
    def is_completed(self) -> bool:
        """Whether the run reached the end of its flow."""
        return self.status == COMPLETED

    @property
    def is_failed(self) -> bool:
        """Whether a step failed outside of any retry that would restart it."""
        return self.status == FAILED

    @property
    def is_cancelled(self) -> bool:
        """Whether the run was cancelled and its cleanups have all run."""
        return self.status == CANCELLED

    @property
    def is_finished(self) -> bool:
        """Whether nothing more will happen to the run: completed, failed or cancelled."""
        return self.status == COMPLETED or self.status == FAILED or self.status == CANCELLED
