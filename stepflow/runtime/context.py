"""What a handler sees when the runtime calls it: :class:`RunContext`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from stepflow.core.messages import CallHandler

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
            ``"loop_until"`` or ``"on_error"``.
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
