"""What a handler sees when the runtime calls it: :class:`RunContext`."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from stepflow.core.messages import CallHandler
from stepflow.core.state import ErrorRecord
from stepflow.stores._rules import dump_progress

__all__ = ["RunContext"]


@attrs.frozen
class RunContext:
    """The context the runtime passes to every handler (``fn(ctx)``).

    Attributes:
        run_id: The run's id.
        flow: The flow's name (``"deploy/v1"``).
        step: The scope path of the step being served (for ``on_error``, the
            retry scope).
        kind: The command's kind: ``"do"``, ``"wait_for"``, ``"case"``,
            ``"loop_until"``, ``"on_error"``, ``"map"`` or ``"switch"``.
        attempt: The attempt of the innermost enclosing retry group, from 1 (1
            outside any retry). A re-execution after a crash has the same
            attempt.
        idempotency_key: ``"<run id>/<step>#<command id>"``: the same every time
            this command is executed, different for every other command. Key
            external side effects with it to make them happen once.
        input: The run's input, the JSON document given when it was started.
        outputs: The JSON outputs of earlier ``do`` steps, by step path
            (read-only).
        now: The time the runtime read just before calling the handler.
        app: The application's own object (clients, configuration), given to
            the worker once.
        command: The command being executed.
        index: Inside a ``map``, the index of the item this step runs for
            (``None`` outside any map).
        item: Inside a ``map``, the item itself (the JSON value its ``items``
            handler returned at ``index``); ``None`` outside any map.
        error: Inside the ``handler`` steps of a ``catch``, the
            :class:`~stepflow.ErrorRecord` the catch took (of the innermost such
            catch); ``None`` elsewhere.
        reporter: Where :meth:`report` hands a checked progress document (the
            worker stores it on the run); ``None``: nowhere (a context made by
            hand, or by :mod:`stepflow.testing`).

    """

    run_id: str
    flow: str
    step: str
    kind: str
    attempt: int
    idempotency_key: str
    input: Any
    outputs: Mapping[str, Any]
    now: float
    app: Any
    command: CallHandler = attrs.field(repr=False)
    index: int | None = None
    item: Any = None
    error: ErrorRecord | None = None
    reporter: Callable[[Any], None] | None = attrs.field(default=None, repr=False, eq=False)

    def report(self, progress: Any) -> None:
        """Store ``progress`` on the run as its progress document: the last one wins.

        For an operator to see how far a long step got (``stepflow show``, the
        console's run page, :func:`stepflow.read_run`): ``{"copied_gb": 3,
        "of_gb": 10}``. It is kept beside the run, not in its journal, and
        never changes the run's state or version; the worker writes it only
        while it holds the run's lease.

        From a plain handler (run in a worker thread) the document is written
        before ``report`` returns. From an ``async def`` handler (run on the
        worker's event loop) it is queued on the worker's store thread, so the
        loop never waits for the database; it is written in order, before the
        step's own save. A store failure while writing it is logged, not
        raised: progress is advisory, and a database hiccup must not fail the
        step (its next save would report that failure anyway).

        Args:
            progress: JSON data (dict, list, str, int, finite float, bool,
                None) of at most 4096 bytes as compact JSON.

        Raises:
            ProgressError: ``progress`` is not JSON data, holds NaN or an
                infinity, or is too large; nothing was stored (the step fails
                like any handler that raises, unless the handler catches it).

        """
        text = dump_progress(progress)
        if self.reporter is not None:
            # A fresh copy: the handler may change its document after reporting it.
            self.reporter(json.loads(text))
