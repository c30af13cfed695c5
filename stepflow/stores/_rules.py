"""The save rule every store shares, and the errors all stores raise alike.

The rule that decides whether a save may be applied lives here as plain Python
(:func:`check_save`, :func:`apply_save`), and all three stores use it, so they
agree on the semantics and explain a refused save in the same words:

* the memory store checks it under its lock;
* SQLite checks it after ``BEGIN IMMEDIATE`` (which already serializes writers);
* PostgreSQL checks it in the ``UPDATE``'s ``WHERE`` clause and calls
  :func:`check_save` only to explain an update that matched no row.
"""

from __future__ import annotations

import json
import math
import uuid
from typing import Any

import attrs

from stepflow.errors import (
    ConfigurationError,
    ProgressError,
    RunExistsError,
    StaleWriteError,
    StoreError,
    UnknownRunError,
    UnreadableRunError,
)
from stepflow.stores._inbox import inbox_wake_at
from stepflow.stores._json import dump_limited
from stepflow.stores.base import (
    FINISHED_STATUSES,
    MAX_PROGRESS_BYTES,
    RunRecord,
    RunStatus,
    Save,
)

__all__ = [
    "WAKEABLE",
    "apply_save",
    "check_prune",
    "check_save",
    "dump_input",
    "dump_progress",
    "lease_is_live",
    "load_input",
    "load_progress",
    "new_lease_token",
    "run_exists",
    "unknown_run",
    "woken",
]


def dump_input(value: Any) -> str:
    """Return a run's input as JSON text (every store writes it through this).

    Raises:
        TypeError: the value is not JSON data.
        ValueError: the value holds a NaN or an infinity, which JSON cannot carry.

    """
    return json.dumps(value, allow_nan=False, separators=(",", ":"))


def load_input(run_id: str, text: Any) -> tuple[Any, UnreadableRunError | None]:
    """Decode a run's stored input text: ``(value, None)``, or ``(None, why not)``.

    A stored input that is not JSON (a row edited by hand, a disk error) concerns
    that run alone: the caller builds its record with ``unreadable`` set instead
    of failing a whole listing or claim.
    """
    try:
        return json.loads(text), None
    except (ValueError, TypeError) as exc:  # JSONDecodeError, UnicodeDecodeError, not text
        return None, UnreadableRunError(run_id, "input", f"is not valid JSON ({exc})")


def new_lease_token() -> str:
    """Return a fresh, unique lease token."""
    return uuid.uuid4().hex


def unknown_run(run_id: str) -> UnknownRunError:
    """Return the error for a run id that is not in the store."""
    return UnknownRunError(
        f"no run has id {run_id!r} in this store: check the run id and the store URL",
        run_id,
    )


def run_exists(run_id: str) -> RunExistsError:
    """Return the error for creating a run whose id is taken."""
    return RunExistsError(
        f"a run with id {run_id!r} already exists: choose another id, or load the existing run",
        run_id,
    )


#: The statuses :meth:`Store.wake <stepflow.stores.base.Store.wake>` acts on: a
#: parked run woken is tried again at once.
WAKEABLE = ("running", "cancelling", "parked")


def woken(run: RunRecord, now: float) -> RunRecord:
    """Return ``run`` woken at ``now``: ``woken_at`` set, ``wake_at`` brought forward."""
    wake_at = now if run.wake_at is None or run.wake_at > now else run.wake_at
    return attrs.evolve(run, wake_at=float(wake_at), woken_at=float(now))


def lease_is_live(run: RunRecord, now: float) -> bool:
    """Whether someone holds a lease on ``run`` that has not expired at ``now``."""
    return (
        run.lease_token is not None
        and run.lease_expires_at is not None
        and run.lease_expires_at > now
    )


def check_save(run: RunRecord | None, save: Save, now: float) -> StoreError | None:
    """Return why ``save`` may not be applied to ``run`` as stored, or ``None`` if it may.

    A save may be applied when the stored version is ``save.expected_version`` and
    either the save names the run's current lease token (a lease is held until it is
    released or another claim replaces it, even past its expiry), or it names none
    and nobody holds a live lease.

    Returns:
        ``None``, an :class:`~stepflow.errors.UnknownRunError` when ``run`` is
        ``None``, or a :class:`~stepflow.errors.StaleWriteError`.

    """
    run_id = save.run_id
    if run is None:
        return unknown_run(run_id)
    if run.version != save.expected_version:
        return StaleWriteError(
            f"cannot save run {run_id!r}: expected version {save.expected_version}, but the "
            f"store holds version {run.version} (another writer saved it first); drop this "
            "copy and reload the run",
            run_id,
        )
    if save.lease_token is None:
        if lease_is_live(run, now):
            return StaleWriteError(
                f"cannot save run {run_id!r} without a lease: worker {run.lease_owner!r} holds "
                f"its lease until {run.lease_expires_at!r}; stop that worker or wait for the "
                "lease to expire, then retry",
                run_id,
            )
    elif run.lease_token != save.lease_token:
        now_held = (
            f"worker {run.lease_owner!r} holds it now"
            if run.lease_token is not None
            else "it was released"
        )
        return StaleWriteError(
            f"cannot save run {run_id!r}: lease {save.lease_token!r} was lost ({now_held}); "
            "drop this copy and let the lease holder continue the run",
            run_id,
        )
    return None


def apply_save(run: RunRecord, save: Save, now: float, delivered: int = 0) -> RunRecord:
    """Return ``run`` after ``save`` (which :func:`check_save` accepted).

    The version goes up by one. ``delivered`` events leave the run's inbox; a
    running run that still has some is due by ``now`` (see
    :func:`~stepflow.stores._inbox.inbox_wake_at`). The lease is given up when the save asks for it
    (``release``), and cleared by a save made without a lease (any lease left on the
    run had expired, or the save would have been refused). A parked run's mark is
    cleared: whoever saved it could read it. A pending wake (``woken_at``) is
    kept, and keeps ``wake_at`` no later than itself, until a save takes it in
    or the run finishes (see :meth:`Store.wake <stepflow.stores.base.Store.wake>`).
    """
    keep_lease = save.lease_token is not None and not save.release
    wake_at, woken_at = save.wake_at, run.woken_at
    if wake_at is None or save.takes_wake:
        woken_at = None  # finished, or the wake is taken in
    elif woken_at is not None:
        wake_at = min(wake_at, woken_at)  # a pending wake keeps the run due
    inbox = run.inbox - delivered
    if not save.mailbox_full:
        wake_at = inbox_wake_at(save.status, wake_at, inbox, now)
    return attrs.evolve(
        run,
        flow=save.flow if save.flow is not None else run.flow,
        state=save.state,
        status=save.status,
        wake_at=wake_at,
        woken_at=woken_at,
        inbox=inbox,
        version=run.version + 1,
        updated_at=now,
        lease_owner=run.lease_owner if keep_lease else None,
        lease_token=run.lease_token if keep_lease else None,
        lease_expires_at=run.lease_expires_at if keep_lease else None,
        parked_reason=None,
    )


def dump_progress(value: Any) -> str:
    """Return a progress document as compact JSON text, checked for size.

    Raises:
        ProgressError: ``value`` is not JSON data, holds NaN or an infinity, or
            takes more than :data:`~stepflow.stores.base.MAX_PROGRESS_BYTES`.

    """
    return dump_limited(
        value,
        limit=MAX_PROGRESS_BYTES,
        what="a progress report",
        advice="report a summary (counts, a phase, a percentage) and keep large data in "
        "your own store",
        error=ProgressError,
    )


def load_progress(text: Any) -> Any:
    """Decode a stored progress document (``None`` for none, or for one that is not JSON)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, TypeError):  # edited by hand: progress is advisory, never fatal
        return None


def check_prune(older_than: float, status: RunStatus | None, batch: int) -> tuple[str, ...]:
    """Check :meth:`Store.prune`'s arguments; return the statuses it prunes.

    Raises:
        ConfigurationError: ``status`` is not a finished status, ``batch`` is
            below 1, or ``older_than`` is not a finite number.

    """
    if status is not None and status not in FINISHED_STATUSES:
        raise ConfigurationError(
            f"cannot prune runs of status {status!r}: only finished runs lose their journals "
            f"({', '.join(FINISHED_STATUSES)}, or None for all three)"
        )
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigurationError(f"a prune batch is a number of entries >= 1, got {batch!r}")
    if (
        isinstance(older_than, bool)
        or not isinstance(older_than, (int, float))
        or not math.isfinite(older_than)
    ):
        raise ConfigurationError(
            f"older_than is a time (seconds since the epoch), got {older_than!r}"
        )
    return FINISHED_STATUSES if status is None else (status,)
