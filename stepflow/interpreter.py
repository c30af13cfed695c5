"""The interpreter: carry out commands by calling the bound handlers.

This is the shell around the pure core. :meth:`Interpreter.execute` looks up the
handler a :class:`~stepflow.core.messages.CallHandler` names, calls it with the
caller's context object, unchanged, and turns its outcome into an effect stamped
with the time read from its :class:`~stepflow.clock.Clock`. An exception raised
by a handler becomes a :class:`HandlerRaised` effect; it never escapes. A due
:class:`~stepflow.core.messages.Wake` becomes a ``TimerFired``.

``on_error`` handlers receive the exception the failing handler raised. The
interpreter keeps the live exception objects of recent failures for that; when
the failure was loaded from storage (another process, a restart), it rebuilds one
from the error record instead (see :func:`rebuild_exception`).
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import sys
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from stepflow.clock import Clock, SystemClock
from stepflow.core.compile import HandlerKey
from stepflow.core.definition import template_of
from stepflow.core.messages import (
    AwaitEvent,
    CallHandler,
    Command,
    Effect,
    HandlerRaised,
    HandlerReturned,
    TimerFired,
    Wake,
)
from stepflow.core.state import ErrorRecord
from stepflow.errors import InterpreterError, RecordedError

if TYPE_CHECKING:
    from stepflow.flow import Flow

__all__ = ["Interpreter", "rebuild_exception"]

#: How many live exceptions an interpreter remembers for on_error handlers.
_LIVE_EXCEPTIONS = 256
# Results that are certainly not awaitable: inspect.isawaitable's ABC check is the
# slowest part of a call otherwise.
_PLAIN_RESULTS = frozenset((type(None), bool, int, float, str, dict, list, tuple))
_new = tuple.__new__


def _lookup_type(name: str) -> type[BaseException] | None:
    if "." not in name:
        found = getattr(builtins, name, None)
    else:
        # Only modules already imported are searched: a record read from storage
        # must never make us import (and run) arbitrary code.
        found = None
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module = sys.modules.get(".".join(parts[:cut]))
            if module is None:
                continue
            obj: Any = module
            for attr in parts[cut:]:
                obj = getattr(obj, attr, None)
            found = obj
            break
    if isinstance(found, type) and issubclass(found, BaseException):
        return found
    return None


def rebuild_exception(record: ErrorRecord) -> BaseException:
    """Rebuild an exception from its record, for handlers that need an object.

    The recorded type is used when it is a builtin or lives in an already imported
    module and can be built from the message alone; otherwise the result is a
    :class:`~stepflow.errors.RecordedError` carrying the type name and message.

    >>> rebuild_exception(ErrorRecord("KeyError", "x", "flow/a"))
    KeyError('x')
    >>> rebuild_exception(ErrorRecord("nowhere.Gone", "lost", "flow/a"))
    RecordedError('nowhere.Gone: lost')
    """
    cls = _lookup_type(record.type)
    if cls is not None:
        try:
            return cls(record.message)
        except Exception:  # any constructor mismatch falls back to the record
            pass
    return RecordedError(record.type, record.message)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class Interpreter:
    """Execute commands against the handlers bound to a flow.

    Args:
        flow: The flow whose handlers serve the commands (from :func:`stepflow.new`).
        clock: Where effects' times come from (default: :class:`SystemClock`).

    """

    def __init__(self, flow: Flow, clock: Clock | None = None) -> None:
        self._handlers: Mapping[HandlerKey, Callable[..., Any]] = flow.handlers
        self._live: OrderedDict[ErrorRecord, BaseException] = OrderedDict()
        self._live_lock = threading.Lock()  # workers execute handlers from many threads
        self.clock: Clock = clock if clock is not None else SystemClock()

    def fire(self, command: Wake | AwaitEvent) -> TimerFired:
        """Answer a due :class:`Wake` (or a timed-out :class:`AwaitEvent`) with ``TimerFired``.

        The effect carries the clock's time.

        Raises:
            InterpreterError: the timer is not due yet, or the command waits for
                an event with no timeout (only an event answers it).

        """
        now = self.clock.now()
        if command.at is None:
            raise InterpreterError(
                f"step {command.step!r} waits for an event {command[5]!r} with no timeout; "
                "nothing executes it: deliver the event (stepflow.send_event, Flow.send)"
            )
        if now < command.at:
            raise InterpreterError(
                f"the timer of {command.step!r} fires at {command.at!r}, and the clock reads "
                f"{now!r}; wait until the state's wake_at before executing it"
            )
        return TimerFired(command.id, now)

    def _handler(self, command: CallHandler) -> Callable[..., Any]:
        try:
            return self._handlers[(command[1], command[2])]
        except KeyError:
            # A step inside a map item carries the item's index: its handler is
            # bound to the definition's path, without indices.
            step = template_of(command[2])
            handler = self._handlers.get((command[1], step)) if step != command[2] else None
            if handler is not None:
                return handler
            raise InterpreterError(
                f"no {command.kind} handler is bound to step {command.step!r}; execute "
                "commands with the interpreter of the flow that issued them"
            ) from None

    def _call(self, handler: Callable[..., Any], command: CallHandler, ctx: Any) -> Any:
        if command[1] == "on_error":
            assert command.error is not None
            return handler(ctx, self.exception_for(command.error))
        return handler(ctx)

    def _raised(self, command: CallHandler, exc: Exception) -> HandlerRaised:
        record = ErrorRecord.from_exception(exc, command.step)
        with self._live_lock:
            self._live[record] = exc
            self._live.move_to_end(record)
            if len(self._live) > _LIVE_EXCEPTIONS:
                self._live.popitem(last=False)
        return HandlerRaised(command.id, record, exc, self.clock.now())

    def exception_for(self, record: ErrorRecord) -> BaseException:
        """Return the exception behind ``record``: the live one if known, else rebuilt."""
        live = self._live.get(record)
        return live if live is not None else rebuild_exception(record)

    def execute(self, command: Command, ctx: Any = None) -> Effect:
        """Call the handler ``command`` names with ``ctx``; return its outcome as an effect.

        An ``async def`` handler is run to completion on a new event loop; from
        inside a running loop, use :meth:`execute_async`. A :class:`Wake` is
        answered with :meth:`fire`, as is a timed-out :class:`AwaitEvent`.

        Raises:
            InterpreterError: no handler is bound for the command, an async
                handler was called from inside a running event loop, or a timer
                is not due.

        """
        if type(command) is not CallHandler:
            return self.fire(cast(Wake | AwaitEvent, command))
        handler = self._handler(command)
        try:
            result = self._call(handler, command, ctx)
            if type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result):
                result = self._run_awaitable(command, result)
        except InterpreterError:
            raise
        except Exception as exc:  # a handler's failure is an effect, never an escape
            return self._raised(command, exc)
        return _new(HandlerReturned, (command[0], result, self.clock.now()))

    @staticmethod
    def _run_awaitable(command: CallHandler, awaitable: Awaitable[Any]) -> Any:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(_await(awaitable))
        if inspect.iscoroutine(awaitable):
            awaitable.close()
        raise InterpreterError(
            f"the {command.kind} handler of {command.step!r} is async and an event loop is "
            "running; use `await interpreter.execute_async(...)` or `await flow.apply_async(...)`"
        )

    async def execute_async(self, command: Command, ctx: Any = None) -> Effect:
        """Like :meth:`execute`, awaiting ``async def`` handlers on the running loop.

        Plain handlers are called directly, on the loop's thread.

        Raises:
            InterpreterError: no handler is bound for the command, or a timer is
                not due.

        """
        if type(command) is not CallHandler:
            return self.fire(cast(Wake | AwaitEvent, command))
        handler = self._handler(command)
        try:
            result = self._call(handler, command, ctx)
            if type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result):
                result = await result
        except Exception as exc:  # a handler's failure is an effect, never an escape
            return self._raised(command, exc)
        return _new(HandlerReturned, (command[0], result, self.clock.now()))
