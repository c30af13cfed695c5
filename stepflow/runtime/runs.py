"""Operations on stored runs: start, resume, cancel, and reading them back.

These are what the CLI's ``start``, ``resume``, ``cancel`` and ``show`` do, for
applications to call directly. Each is one store transaction; each records what
it did in the run's journal (a cancellation, once a worker delivers it), so
nothing is lost.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Collection
from typing import Any

import attrs
import orjson

from stepflow.clock import Clock, SystemClock
from stepflow.codec import Batch, dumps, dumps_batch, loads, loads_batch, structure_state
from stepflow.core._json import thaw_json
from stepflow.core.advance import advance, initial_state, resume
from stepflow.core.events import resting, untimed_wait
from stepflow.core.groups import command_times
from stepflow.core.messages import ChildEnded, StartChild
from stepflow.core.state import CANCELLING, COMPLETED, RUNNING, ErrorRecord, State
from stepflow.errors import (
    AmbiguousRunError,
    ConfigurationError,
    RunFinishedError,
    StateError,
    UnknownRunError,
)
from stepflow.flow import Flow
from stepflow.stores._inbox import CANCEL_EVENT
from stepflow.stores.base import (
    FINISHED_STATUSES,
    ChildRun,
    JournalEntry,
    PruneResult,
    RunNotes,
    RunRecord,
    RunStatus,
    Save,
    Store,
)

__all__ = [
    "Deadline",
    "RunView",
    "cancel_run",
    "child_ended",
    "child_note",
    "child_run",
    "deadline_at",
    "deadline_reason",
    "non_finite_path",
    "parse_age",
    "prune_runs",
    "read_run",
    "resolve_run_id",
    "resume_run",
    "start_run",
    "store_wake_at",
    "wake",
]


def store_wake_at(
    state: State, now: float, deadline_at: float | None = None, started: Collection[int] = ()
) -> float | None:
    """When a store should hand ``state``'s run to a worker next (``None``: never).

    A running or cancelling run is handed over at its state's ``wake_at``. A run
    resting at ``wait_event`` steps without timeouts has nothing to do until an
    event comes: ``None`` too (a send makes it due; see
    :func:`stepflow.send_event`). So is a ``StartChild`` among ``started`` (the
    ids of those whose child the caller started, or asked to cancel): its
    child's end wakes the run (through its inbox). A *running* run with a
    ``deadline_at`` is handed over by then at the latest, so the worker can
    cancel it (once cancelling, the deadline was delivered and counts no more).
    """
    if state.status != RUNNING and state.status != CANCELLING:
        return None
    wake_at = state.wake_at
    if started and any(type(c) is StartChild and c[0] in started for c in state.in_flight):
        wake_at = _past_children(state, now, started)
    elif wake_at is None and not resting(state):
        wake_at = now
    if deadline_at is not None and state.status == RUNNING:
        return deadline_at if wake_at is None else min(wake_at, deadline_at)
    return wake_at


def _past_children(state: State, now: float, started: Collection[int]) -> float | None:
    """When the commands in flight, but waits and the started children, come due."""
    times = []
    for command in state.in_flight:
        if untimed_wait(command) or (type(command) is StartChild and command[0] in started):
            continue
        wake_at = command_times(state, command)[0]
        if wake_at is None:
            return now
        times.append(wake_at)
    return min(times) if times else None


def child_run(flow: Flow, run_id: str, input: Any, command: int, now: float) -> ChildRun:
    """Return the child run of ``flow`` a ``StartChild`` command ``command`` starts.

    Its first command is issued, due now, as :func:`start_run` does; the
    parent's save creates it (:attr:`~stepflow.stores.base.Save.children`).

    Raises:
        ConfigurationError: ``input`` is not JSON data.

    """
    run_input = _check_input(input)
    definition = flow.definition
    state, _ = advance(definition, initial_state(definition, run_id), now=now)
    return ChildRun(
        run_id,
        definition.name,
        dumps(state),
        state.status,
        store_wake_at(state, now),
        run_input,
        command,
        dumps_batch(Batch("start", now, state=state)),
    )


def child_note(state: State, child_id: str, command: int) -> str:
    """Return the JSON text a finished child run leaves in its parent's inbox.

    ``{"command", "status", "output", "error", "child"}``: the output is the
    child's ``outputs`` when it completed, the error its record otherwise.
    """
    error = state.error
    return orjson.dumps(
        {
            "command": command,
            "status": state.status,
            "output": thaw_json(state.outputs) if state.status == COMPLETED else None,
            "error": None
            if error is None
            else {"type": error.type, "message": error.message, "step": error.step},
            "child": child_id,
        }
    ).decode()


def child_ended(payload: Any, at: float) -> ChildEnded | None:
    """Return the effect a child's note (:func:`child_note`) stands for, ``None`` if malformed."""
    try:
        error = payload["error"]
        record = None if error is None else ErrorRecord(**error)
        return ChildEnded(
            payload["command"], payload["status"], payload["output"], record, at, payload["child"]
        )
    except (KeyError, TypeError):
        return None


#: A run deadline as :func:`start_run` takes it: seconds from the start, a
#: ``timedelta``, or a timezone-aware ``datetime``.
Deadline = float | dt.timedelta | dt.datetime


def deadline_at(deadline: Deadline, now: float) -> float:
    """Return the time (seconds since the epoch) a run started at ``now`` must be over by.

    >>> deadline_at(90, 1000.0), deadline_at(dt.timedelta(minutes=1), 1000.0)
    (1090.0, 1060.0)

    Raises:
        ConfigurationError: ``deadline`` is not a positive finite number of
            seconds, a positive ``timedelta``, or an aware ``datetime`` after
            ``now``.

    """
    if isinstance(deadline, dt.datetime):
        if deadline.tzinfo is None or deadline.utcoffset() is None:
            raise ConfigurationError(
                f"a deadline datetime must be timezone-aware, got {deadline!r}: "
                "add tzinfo=datetime.timezone.utc (or give seconds or a timedelta)"
            )
        at = deadline.timestamp()
        if at <= now:
            raise ConfigurationError(
                f"the deadline {deadline.isoformat()} has passed already: "
                "give a time after the run's start"
            )
        return at
    seconds = deadline.total_seconds() if isinstance(deadline, dt.timedelta) else deadline
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds <= 0
    ):
        raise ConfigurationError(
            f"a run deadline is a number of seconds > 0, a timedelta > 0 or an aware "
            f"datetime, got {deadline!r:.80}"
        )
    return now + float(seconds)


def deadline_reason(at: float) -> str:
    """Return the reason given by a run cancelled for passing its deadline ``at``.

    >>> deadline_reason(0.0)
    'the deadline of 1970-01-01T00:00:00Z passed'
    """
    when = dt.datetime.fromtimestamp(at, dt.timezone.utc)
    return f"the deadline of {when.strftime('%Y-%m-%dT%H:%M:%S')}Z passed"


def non_finite_path(value: Any, path: str = "$") -> str | None:
    """Return the ``$.path`` of the first NaN or infinity in JSON-like data, or ``None``.

    JSON has no such numbers: serializers write them as ``null`` or as the
    non-standard ``NaN``, so a value holding one would not be stored as given.

    >>> non_finite_path({"when": [1.5, float("nan")]})
    '$.when[1]'
    >>> non_finite_path({"when": 1.5}) is None
    True
    """
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            found = non_finite_path(item, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = non_finite_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def _check_input(value: Any) -> Any:
    where = non_finite_path(value)
    if where is not None:
        raise ConfigurationError(
            f"a run's input holds NaN or an infinity at {where}, which JSON cannot "
            "represent (it would be stored as null): use null, a string or a finite number"
        )
    try:
        return orjson.loads(orjson.dumps(value))
    except TypeError as exc:
        raise ConfigurationError(
            f"a run's input must be JSON data (dict, list, str, int, float, bool, None); "
            f"got {value!r:.80} ({exc})"
        ) from None


def start_run(
    store: Store,
    flow: Flow,
    input: Any = None,
    *,
    run_id: str | None = None,
    clock: Clock | None = None,
    deadline: Deadline | None = None,
) -> RunRecord:
    """Create a run of ``flow`` in ``store``, its first command issued, due now.

    Args:
        store: Where the run lives.
        flow: The flow to run.
        input: The run's input: JSON data, handed to every handler as
            ``ctx.input``.
        run_id: The run's id (default: a random hex id).
        clock: Where the start time is read (default: the system clock).
        deadline: When the run must be over: seconds from now, a
            ``timedelta``, or a timezone-aware ``datetime`` (default: the
            flow's ``named(..., deadline=)``, if any). Kept as the record's
            ``deadline_at``. Past it, the worker that next holds the run (the
            store hands it over by then, even when it rests at a long wait)
            cancels it, its cleanups and compensations run, and its error is a
            :class:`~stepflow.errors.DeadlineExceeded`.

    Raises:
        RunExistsError: a run with ``run_id`` exists.
        ConfigurationError: ``input`` is not JSON data, or holds NaN or an
            infinity (JSON has no such numbers); ``deadline`` is not a
            positive duration or a future aware datetime.

    """
    now = (clock or SystemClock()).now()
    run_id = run_id if run_id is not None else uuid.uuid4().hex
    if not isinstance(run_id, str) or not run_id:
        raise ConfigurationError(f"a run id is a non-empty str, got {run_id!r}")
    definition = flow.definition
    if deadline is None:
        deadline = definition.deadline
    until = None if deadline is None else deadline_at(deadline, now)
    run_input = _check_input(input)
    state, _ = advance(definition, initial_state(definition, run_id), now=now)
    return store.create_run(
        run_id,
        definition.name,
        dumps(state),
        input=run_input,
        status=state.status,
        wake_at=store_wake_at(state, now, until),
        now=now,
        batch=dumps_batch(Batch("start", now, state=state)),
        deadline_at=until,
    )


def resume_run(store: Store, flow: Flow, run_id: str, *, clock: Clock | None = None) -> RunRecord:
    """Send a failed run back to the step that failed, keeping its history.

    Raises:
        UnknownRunError: no run has this id.
        StateError: the run is not failed.
        StaleWriteError: a worker holds the run's lease.

    """
    now = (clock or SystemClock()).now()
    record = store.load(run_id)
    if record.status != "failed":
        raise StateError(f"run {run_id!r} is {record.status!r}; only a failed run can be resumed")
    state, _ = resume(flow.definition, loads(record.state, flow.definition), now=now)
    save = Save(
        run_id,
        record.version,
        None,
        dumps(state),
        state.status,
        store_wake_at(state, now, record.deadline_at),
        dumps_batch(Batch("resume", now)),
    )
    return store.save(save, now=now)


def cancel_run(store: Store, run_id: str, reason: str = "", *, clock: Clock | None = None) -> bool:
    """Ask for a run to be cancelled, for ``reason``: its cleanups run, then it is cancelled.

    A cancellation is an event: it is kept in the run's inbox (never touching
    its state, version or lease, so it is accepted while a worker holds the
    run mid-step, without a :class:`~stepflow.errors.StaleWriteError`) and
    makes the run due at once. The worker that next holds the run delivers it
    (a :class:`~stepflow.core.messages.CancelRequested` effect, journaled): the
    run is ``"cancelling"`` while its commands in flight finish and the
    cleanups of its ``finally_`` groups and the compensations of its sagas
    run, then ``"cancelled"``, with a :class:`~stepflow.errors.RunCancelled`
    error whose message is ``reason``. A run with nothing left to run is
    ``"cancelled"`` at once.

    A *failed* run cannot advance, nor can a *parked* one (no worker could
    drive it), so neither is sent an event: it is marked ``"cancelled"`` at
    once (its state kept as it was, journal op ``"cancel"``; no cleanup
    runs), so an operator can abandon it; it cannot be resumed after.

    Returns:
        ``True`` when the cancellation was recorded; ``False`` when nothing
        changed: the run is completed or cancelled already, or a
        cancellation of it is under way (it is ``"cancelling"``, or one was
        sent and not delivered yet).

    Raises:
        UnknownRunError: no run has this id.
        ConfigurationError: ``reason`` is not a str.
        StaleWriteError: only for a failed or parked run, saved by someone
            else meanwhile.

    """
    if not isinstance(reason, str):
        raise ConfigurationError(f"a cancellation's reason is a str, got {reason!r:.80}")
    now = (clock or SystemClock()).now()
    record = store.load(run_id)
    if record.status == "failed" or record.status == "parked":
        status: RunStatus = "cancelled"
        batch = dumps_batch(Batch("cancel", now))
        note = None  # a child tells its parent it ended
        if record.parent_run_id is not None and record.parent_command is not None:
            held = structure_state(orjson.loads(record.state))
            held = held._replace(status="cancelled", error=held.error or _abandoned(reason))
            note = child_note(held, run_id, record.parent_command)
        save = Save(run_id, record.version, None, record.state, status, None, batch)
        store.save(attrs.evolve(save, parent_note=note), now=now)
        return True
    if record.status in FINISHED_STATUSES or record.status == "cancelling":
        return False
    try:
        # The key makes every cancellation of a run after the first a no-op.
        return store.send_event(run_id, CANCEL_EVENT, reason, key=CANCEL_EVENT, now=now)
    except RunFinishedError:
        return False  # it finished meanwhile


def _abandoned(reason: str) -> ErrorRecord:
    return ErrorRecord("stepflow.errors.RunCancelled", reason, "")


def wake(store: Store, run_id: str, *, clock: Clock | None = None) -> bool:
    """Make a resting run due now: its ``wait_for`` polls now, its retry backoff ends now.

    A ``sleep`` or ``sleep_until`` timer is never cut short: a timer is a
    promise about time, so a run resting at one stays there (its other
    positions, in a ``parallel`` group, are woken). The state is not changed
    and the run's lease is not touched, so a wake is never refused: while a
    worker holds the run, the wake stays pending and takes effect when that
    worker next releases it (or its lease ends). The worker that next claims
    the run journals the wake (op ``"wake"``) and carries out every command
    of the run that waits on a poll interval or a backoff at once. A parked
    run is tried again at once.

    Returns:
        ``True`` if the run was woken; ``False`` if it is finished (completed,
        failed or cancelled): there is nothing to wake, and nothing changed.

    Raises:
        UnknownRunError: no run has this id.

    """
    return store.wake(run_id, now=(clock or SystemClock()).now())


@attrs.frozen
class RunView:
    """A stored run, decoded: its record, its state and its journal.

    Attributes:
        record: The run as stored.
        state: The decoded state (``None`` when no flow was given to decode it).
        journal: The journal entries, oldest first, with their batches decoded
            (what is left of it after a prune: see ``journal_pruned``).
        notes: The run's progress document and its journal's prune mark.

    """

    record: RunRecord
    state: State | None
    journal: tuple[tuple[JournalEntry, Batch], ...]
    notes: RunNotes = attrs.field(factory=RunNotes)

    @property
    def progress(self) -> Any:
        """The last progress document a handler reported (``ctx.report``), or ``None``."""
        return self.notes.progress

    @property
    def journal_pruned(self) -> bool:
        """Whether a retention prune removed (part of) the journal (see :func:`prune_runs`)."""
        return self.notes.pruned_through is not None and (
            not self.journal or self.journal[0][0].seq != 1
        )


def resolve_run_id(store: Store, id_or_prefix: str) -> str:
    """Return the id of the one run whose id is ``id_or_prefix`` or starts with it.

    An exact id wins over longer ids it prefixes. Only ids are read, so a run
    whose other columns cannot be decoded is still found.

    Raises:
        UnknownRunError: no run's id starts with ``id_or_prefix``.
        AmbiguousRunError: several do (its ``matches`` lists the first ten).

    """
    if not isinstance(id_or_prefix, str) or not id_or_prefix:
        raise ConfigurationError(
            f"a run id (or id prefix) is a non-empty str, got {id_or_prefix!r}"
        )
    matches = store.match_run_ids(id_or_prefix, limit=_SHOWN_MATCHES + 1)
    if matches[:1] == [id_or_prefix] or len(matches) == 1:
        return matches[0]
    if not matches:
        raise UnknownRunError(
            f"no run has id {id_or_prefix!r}, nor an id starting with it "
            "(stepflow runs lists the runs)",
            id_or_prefix,
        )
    shown = ", ".join(matches[:_SHOWN_MATCHES])
    more = " and more" if len(matches) > _SHOWN_MATCHES else ""
    raise AmbiguousRunError(
        f"{id_or_prefix!r} is the start of several run ids: {shown}{more}; give more of the id",
        id_or_prefix,
        tuple(matches[:_SHOWN_MATCHES]),
    )


#: How many of the ids an ambiguous prefix matches are named in the error.
_SHOWN_MATCHES = 10


def read_run(store: Store, run_id: str, flow: Flow | None = None) -> RunView:
    """Load a run, its journal and its notes; decode its state when ``flow`` is given.

    A run whose journal was pruned (see :func:`prune_runs`) is read all the same:
    its ``journal`` holds what is left (nothing, or the entries of later saves),
    ``journal_pruned`` is true and ``notes`` says how far and when.

    Raises:
        UnknownRunError: no run has this id.
        CorruptStateError: the stored state or a journal entry cannot be read.

    """
    record = store.load(run_id)
    state = loads(record.state, flow.definition) if flow is not None else None
    journal = tuple((entry, loads_batch(entry.batch)) for entry in store.history(run_id))
    return RunView(record, state, journal, store.notes(run_id))


#: The units :func:`parse_age` reads, in seconds.
_AGE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}

_AGE = re.compile(r"\s*(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[smhdw])\s*")


def parse_age(text: str) -> float:
    """Return the seconds an age such as ``"30d"``, ``"12h"``, ``"90m"`` stands for.

    Units: ``s``, ``m`` (minutes), ``h``, ``d``, ``w``; the number may have a
    fraction (``"1.5h"``). A number without a unit is refused (seconds or days?).

    >>> parse_age("30d")
    2592000.0
    >>> parse_age("90m")
    5400.0

    Raises:
        ConfigurationError: the text is not such an age (a negative one included).

    """
    found = _AGE.fullmatch(text) if isinstance(text, str) else None
    if found is None:
        raise ConfigurationError(
            f"{text!r} is not an age: write a positive number and a unit, "
            "s, m, h, d or w (30d, 12h, 90m)"
        )
    return float(found["number"]) * _AGE_UNITS[found["unit"]]


def prune_runs(
    store: Store,
    older_than: float,
    *,
    status: RunStatus | None = "completed",
    runs: bool = False,
    batch: int = 1000,
    clock: Clock | None = None,
) -> PruneResult:
    """Remove the journals of finished runs not saved for ``older_than`` seconds.

    What ``stepflow prune`` does: :meth:`Store.prune <stepflow.stores.base.Store.prune>`
    with the cut-off ``now - older_than``. The runs keep their state, status,
    outputs and error; their history can no longer be read: :func:`stepflow.history`
    raises :class:`~stepflow.errors.JournalPrunedError` for them, and
    :func:`read_run` says so (``journal_pruned``). With ``runs``, the runs are
    deleted as well.

    Args:
        store: The store.
        older_than: The retention, in seconds (:func:`parse_age` reads ``"30d"``).
        status: Prune runs of this finished status only (``None``: completed,
            failed and cancelled ones). Running and parked runs are never pruned.
        runs: Delete the runs themselves too.
        batch: Journal entries removed per transaction.
        clock: Where ``now`` is read (default: the system clock).

    Raises:
        ConfigurationError: ``older_than`` is negative or not a finite number,
            ``status`` is not a finished status, or ``batch`` is below 1;
            nothing was changed.

    """
    if (
        isinstance(older_than, bool)
        or not isinstance(older_than, (int, float))
        or not math.isfinite(older_than)
        or older_than < 0
    ):
        raise ConfigurationError(
            f"a retention is a number of seconds >= 0, got {older_than!r}: "
            "runs cannot be older than a time in the future"
        )
    now = (clock or SystemClock()).now()
    return store.prune(now - older_than, now=now, status=status, runs=runs, batch=batch)
