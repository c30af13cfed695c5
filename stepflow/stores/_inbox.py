"""The inbox rules every store shares: checking an event, refusing a send, waking a run.

Events sent to a run (:meth:`Store.send_event <stepflow.stores.base.Store.send_event>`)
wait in an inbox beside it until a worker delivers them. The stores keep these
rules alike:

* **A send is checked before anything is written** (:func:`dump_event`): a bad
  name or payload is an :class:`~stepflow.errors.EventError`, then the run's
  refusals (:func:`refusal`), after a duplicate ``key``, which is never an error.
* **Sequence numbers are per run and follow commit order**: a send takes the
  run's row lock (SQLite's write lock, PostgreSQL's ``FOR UPDATE``) before it
  numbers its event, so once a worker has read event ``n``, no event below ``n``
  can still appear, and ``Save.delivered = n`` marks exactly the events read.
* **A running (or cancelling) run with undelivered events is due**
  (:func:`inbox_wake_at`): a send makes a running one due now (a child's
  outcome, a cancelling one too); a save that leaves events undelivered keeps
  it due.
* **In-process listeners** (:class:`Listeners`) hear of each send after its
  commit, so an idle worker in the same process starts at once.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from stepflow.core.events import check_event_name
from stepflow.errors import EventError, InboxFullError, RunFinishedError, StoreError
from stepflow.stores._json import dump_limited
from stepflow.stores.base import FINISHED_STATUSES, INBOX_LIMIT, MAX_EVENT_BYTES

__all__ = [
    "CANCEL_EVENT",
    "CHILD_EVENT",
    "Listeners",
    "check_name",
    "dump_event",
    "inbox_wake_at",
    "load_payload",
    "refusal",
]

#: The inbox name of a cancellation (:func:`stepflow.cancel_run`), its reason as
#: the payload, sent with this name as its key too, so a run holds one at most.
#: No user event can have it: event names may not hold ``:``. A worker delivers it
#: as a :class:`~stepflow.core.messages.CancelRequested` effect.
CANCEL_EVENT = "stepflow:cancel"

#: The inbox name of a child run's outcome, left in its parent's inbox by the save
#: that finishes the child (:attr:`~stepflow.stores.base.Save.parent_note`), keyed
#: by the child's id; its payload ``{"command", "status", "output", "error",
#: "child"}``. A worker delivers it as a
#: :class:`~stepflow.core.messages.ChildEnded` effect.
CHILD_EVENT = "stepflow:child"

log = logging.getLogger("stepflow.stores")


def check_name(name: object) -> str:
    """Return ``name`` if it can name an event, else raise :class:`EventError`."""
    try:
        return check_event_name(name)
    except ValueError as exc:
        raise EventError(str(exc)) from None


def dump_event(name: object, payload: Any) -> str:
    """Check an event's name and payload; return the payload as compact JSON text.

    Raises:
        EventError: the name is empty, not a str or holds ``:``; the payload is
            not JSON data, holds NaN or an infinity, or takes more than
            :data:`~stepflow.stores.base.MAX_EVENT_BYTES`.

    """
    if name != CANCEL_EVENT:
        check_name(name)
    return dump_limited(
        payload,
        limit=MAX_EVENT_BYTES,
        what=f"the payload of event {name!r}",
        advice="send a reference (an id, a URL) to data kept in your own store",
        error=EventError,
    )


def load_payload(text: Any) -> Any:
    """Decode a stored payload (``dump_event`` wrote it; a hand-edited one reads as text)."""
    try:
        return json.loads(text)
    except (ValueError, TypeError):
        return text


def refusal(run_id: str, status: str, inbox: int, name: str = "") -> StoreError | None:
    """Return why a run of ``status`` holding ``inbox`` undelivered events refuses one more.

    A cancellation (:data:`CANCEL_EVENT`) is never refused for a full inbox.
    """
    if status in FINISHED_STATUSES:
        return RunFinishedError(run_id, status)
    if inbox >= INBOX_LIMIT and name != CANCEL_EVENT:
        return InboxFullError(run_id, INBOX_LIMIT)
    return None


def inbox_wake_at(status: str, wake_at: float | None, inbox: int, now: float) -> float | None:
    """Return a run's ``wake_at`` once ``inbox`` events wait for it: due by ``now`` if running.

    >>> inbox_wake_at("running", None, 1, 5.0), inbox_wake_at("running", 9.0, 0, 5.0)
    (5.0, 9.0)
    """
    if inbox > 0 and (status == "running" or status == "cancelling"):
        return now if wake_at is None else min(wake_at, now)
    return wake_at


class Listeners:
    """The in-process listeners of a store's sends (see ``Store.subscribe``).

    The set is replaced, never changed in place, so telling the listeners needs
    no lock and a listener may unsubscribe while being told.
    """

    _listeners: tuple[Callable[[str], None], ...] = ()
    _listeners_lock = threading.Lock()

    def subscribe(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Call ``listener(run_id)`` after each send commits; return its remover."""
        with self._listeners_lock:
            self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            with self._listeners_lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return unsubscribe

    def _tell(self, run_id: str) -> None:
        """Tell every listener that an event for ``run_id`` committed."""
        for listener in self._listeners:
            try:
                listener(run_id)
            except Exception:  # noqa: PERF203 - the event is stored: not the sender's failure
                log.exception("a listener of sent events failed on run %s", run_id)
