"""Sending events to runs from outside: approvals, webhooks, callbacks.

:func:`send_event` keeps an event in the run's inbox in its store, beside the
run's state, and makes the run due at once. A :class:`~stepflow.Worker` serving
the run's flow then delivers it: one save applies the events waiting (as
:class:`~stepflow.core.messages.EventReceived` effects, journaled as one batch)
and marks them delivered, in the same transaction. A ``wait_event`` step of
that name takes it (see :mod:`stepflow.core.events` for the rules).

What holds:

* **Durable and exactly once.** The send is one transaction; the delivery is one
  save. A worker killed between reading the events and saving leaves them
  undelivered: the next one delivers them, once.
* **Idempotent by key.** A second send with the same ``key`` to the same run
  changes nothing (``send_event`` returns ``False``), even after delivery.
* **Never refused for a lease.** The send changes neither the run's state nor its
  version nor its lease, so it succeeds while a step runs, and the worker's save
  never fails on it. Events sent during a step are delivered after it.
* **At once in the same process.** A worker listening on the same store object
  (as every :class:`~stepflow.Worker` does) is woken by the send and starts the
  run's next step in a few milliseconds (``benchmarks/runtime.py`` measures it).
  On PostgreSQL, workers in other processes are woken too (``LISTEN/NOTIFY``,
  see :meth:`PostgresStore.subscribe
  <stepflow.stores.postgres.PostgresStore.subscribe>`); on SQLite, a worker in
  another process finds the run due at its next look, at most its
  ``idle_interval`` later.
"""

from __future__ import annotations

from typing import Any

from stepflow.clock import Clock, SystemClock
from stepflow.errors import EventError
from stepflow.runtime.runs import non_finite_path
from stepflow.stores._inbox import check_name
from stepflow.stores.base import Store

__all__ = ["send_event"]


def send_event(
    store: Store,
    run_id: str,
    name: str,
    payload: Any = None,
    *,
    key: str | None = None,
    clock: Clock | None = None,
) -> bool:
    """Send the event ``name`` with its JSON ``payload`` to a run; wake the run now.

    The event waits in the run's inbox until a worker delivers it to the run's
    state, where a ``wait_event(name)`` step takes it (first in, first out per
    name), now or when the run reaches it. An event no step of the flow waits
    for is journaled and dropped.

    Args:
        store: The run's store.
        run_id: The run's id (the full id: see
            :func:`~stepflow.runtime.runs.resolve_run_id` for prefixes).
        name: The event's name, as its ``wait_event`` step names it (non-empty,
            without ``:``).
        payload: JSON data, at most
            :data:`~stepflow.stores.base.MAX_EVENT_BYTES` bytes encoded; the
            step keeps it as its output.
        key: An idempotency key: a second send with the same key to the same
            run changes nothing.
        clock: Where the send time is read (default: the system clock).

    Returns:
        ``True`` when the event was sent; ``False`` when ``key`` was sent to
        the run before (nothing changed).

    Raises:
        EventError: the name is empty or holds ``:``; the payload is not JSON
            data, holds NaN or an infinity, or is too large; the key is not a
            non-empty str.
        UnknownRunError: no run has this id.
        RunFinishedError: the run is completed, failed or cancelled.
        InboxFullError: the run holds
            :data:`~stepflow.stores.base.INBOX_LIMIT` undelivered events (no
            worker is delivering them).

    """
    check_name(name)
    if key is not None and (not isinstance(key, str) or not key):
        raise EventError(f"an event key is a non-empty str or None, got {key!r:.80}")
    where = non_finite_path(payload)
    if where is not None:
        raise EventError(
            f"the payload of event {name!r} holds NaN or an infinity at {where}, which JSON "
            "cannot represent: use null, a string or a finite number"
        )
    now = (clock or SystemClock()).now()
    return store.send_event(run_id, name, payload, key=key, now=now)
