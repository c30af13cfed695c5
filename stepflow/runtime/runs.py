"""Operations on stored runs: start, resume, cancel, and reading them back.

These are what the CLI's ``start``, ``resume``, ``cancel`` and ``show`` do, for
applications to call directly. Each is one store transaction; each records what
it did in the run's journal, so nothing is lost.
"""

from __future__ import annotations

import uuid
from typing import Any

import attrs
import orjson

from stepflow.clock import Clock, SystemClock
from stepflow.codec import Batch, dumps, dumps_batch, loads, loads_batch
from stepflow.core.advance import advance, initial_state, resume
from stepflow.core.state import RUNNING, State
from stepflow.errors import ConfigurationError, StateError
from stepflow.flow import Flow
from stepflow.stores.base import JournalEntry, RunRecord, RunStatus, Save, Store

__all__ = ["RunView", "cancel_run", "read_run", "resume_run", "start_run", "store_wake_at"]


def store_wake_at(state: State, now: float) -> float | None:
    """When a store should hand ``state``'s run to a worker next (``None``: never)."""
    if state.status != RUNNING:
        return None
    return state.wake_at if state.wake_at is not None else now


def _check_input(value: Any) -> Any:
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
) -> RunRecord:
    """Create a run of ``flow`` in ``store``, its first command issued, due now.

    Args:
        store: Where the run lives.
        flow: The flow to run.
        input: The run's input: JSON data, handed to every handler as
            ``ctx.input``.
        run_id: The run's id (default: a random hex id).
        clock: Where the start time is read (default: the system clock).

    Raises:
        RunExistsError: a run with ``run_id`` exists.
        ConfigurationError: ``input`` is not JSON data.

    """
    now = (clock or SystemClock()).now()
    run_id = run_id if run_id is not None else uuid.uuid4().hex
    if not isinstance(run_id, str) or not run_id:
        raise ConfigurationError(f"a run id is a non-empty str, got {run_id!r}")
    definition = flow.definition
    state, _ = advance(definition, initial_state(definition, run_id), now=now)
    return store.create_run(
        run_id,
        definition.name,
        dumps(state),
        input=_check_input(input),
        status=state.status,
        wake_at=store_wake_at(state, now),
        now=now,
        batch=dumps_batch(Batch("start", now, state=state)),
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
        store_wake_at(state, now),
        dumps_batch(Batch("resume", now)),
    )
    return store.save(save, now=now)


def cancel_run(store: Store, run_id: str, *, clock: Clock | None = None) -> RunRecord:
    """Cancel a running or failed run: no worker will advance it again.

    Its state is kept as it was; the cancellation is recorded in its journal.

    Raises:
        UnknownRunError: no run has this id.
        StateError: the run is already completed or cancelled.
        StaleWriteError: a worker holds the run's lease (retry once it is
            released).

    """
    now = (clock or SystemClock()).now()
    record = store.load(run_id)
    if record.status in ("completed", "cancelled"):
        raise StateError(f"run {run_id!r} is already {record.status}; nothing to cancel")
    status: RunStatus = "cancelled"
    batch = dumps_batch(Batch("cancel", now))
    save = Save(run_id, record.version, None, record.state, status, None, batch)
    return store.save(save, now=now)


@attrs.frozen
class RunView:
    """A stored run, decoded: its record, its state and its journal.

    Attributes:
        record: The run as stored.
        state: The decoded state (``None`` when no flow was given to decode it).
        journal: The journal entries, oldest first, with their batches decoded.

    """

    record: RunRecord
    state: State | None
    journal: tuple[tuple[JournalEntry, Batch], ...]


def read_run(store: Store, run_id: str, flow: Flow | None = None) -> RunView:
    """Load a run and its journal; decode its state when ``flow`` is given.

    Raises:
        UnknownRunError: no run has this id.
        CorruptStateError: the stored state or a journal entry cannot be read.

    """
    record = store.load(run_id)
    state = loads(record.state, flow.definition) if flow is not None else None
    journal = tuple((entry, loads_batch(entry.batch)) for entry in store.history(run_id))
    return RunView(record, state, journal)
