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

Step timeouts (``.do(name, fn, timeout=)``) are enforced here, in the shell: the
core never reads a clock. The limit is start-to-close, measured in real time
(whatever the interpreter's clock, which may be a virtual one), from the moment
the handler is called:

* an ``async def`` handler runs as a task that is cancelled at the deadline;
* a plain handler runs in a thread of its own (a thread cannot be stopped from
  outside), which is abandoned at the deadline: whatever it returns or raises
  later is ignored and logged at WARNING;

either way the effect is a ``HandlerRaised`` carrying a
:class:`~stepflow.errors.StepTimeoutError`, stamped at the deadline's clock time.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime
import functools
import inspect
import logging
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
    StartChild,
    TimerFired,
    Wake,
)
from stepflow.core.state import ErrorRecord
from stepflow.errors import InterpreterError, RecordedError, StepTimeoutError

if TYPE_CHECKING:
    from stepflow.flow import Flow

__all__ = ["Interpreter", "epoch_seconds", "rebuild_exception"]

#: How many live exceptions an interpreter remembers for on_error handlers.
_LIVE_EXCEPTIONS = 256
# Results that are certainly not awaitable: inspect.isawaitable's ABC check is the
# slowest part of a call otherwise.
_PLAIN_RESULTS = frozenset((type(None), bool, int, float, str, dict, list, tuple))
_new = tuple.__new__
log = logging.getLogger("stepflow.interpreter")


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


def epoch_seconds(value: Any) -> Any:
    """Return a ``sleep_until`` time as the core takes it: seconds since the epoch.

    A ``datetime`` is converted; a naive one is read as UTC, so the time never
    depends on the time zone of the worker that asked. Anything else passes
    through unchanged, for the core to accept (a finite number) or refuse.

    >>> epoch_seconds(datetime.datetime(1970, 1, 2))
    86400.0
    >>> two_hours_east = datetime.timezone(datetime.timedelta(hours=2))
    >>> epoch_seconds(datetime.datetime(1970, 1, 2, 2, tzinfo=two_hours_east))
    86400.0
    >>> epoch_seconds(5)
    5
    """
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return value.timestamp()
    return value


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _timed_out(command: CallHandler, limit: float, what: str) -> StepTimeoutError:
    return StepTimeoutError(
        f"the do handler of {command.step!r} ran past its timeout of {limit:g}s and was "
        f"{what}; make it faster, raise timeout=, or let a retry try again"
    )


async def _within(awaitable: Awaitable[Any], limit: float, command: CallHandler) -> Any:
    """Await ``awaitable`` as a task; cancel it at ``limit`` seconds and raise StepTimeoutError."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait((task,), timeout=limit)
    if not done:
        task.cancel()
        task.add_done_callback(functools.partial(_late, command, limit))
        raise _timed_out(command, limit, "cancelled")
    return task.result()


def _late(command: CallHandler, limit: float, task: asyncio.Future[Any]) -> None:
    """Log a timed-out task that did not end by its cancellation (it swallowed it)."""
    if not task.cancelled():
        error = task.exception()
        outcome = "returned" if error is None else f"raised {error!r:.80}"
        log.warning(
            "the do handler of %r %s after its timeout of %gs; the late outcome is ignored",
            command.step,
            outcome,
            limit,
        )


class _Abandonable:
    """One call of a plain handler on a thread of its own, which may be abandoned.

    Whoever comes first wins, under a lock: the call's end (its outcome is kept)
    or :meth:`abandon` (the outcome, when it comes, is logged and dropped).
    """

    def __init__(self, command: CallHandler, limit: float, call: Callable[[], Any]) -> None:
        self.command, self.limit, self.call = command, limit, call
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.outcome: tuple[Any, BaseException | None] | None = None
        self.abandoned = False
        self.on_done: Callable[[], None] | None = None

    def start(self) -> None:
        name = f"stepflow-timed-{self.command.step}#{self.command.id}"
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (self.call(), None)
        except BaseException as exc:  # handed to the caller, as a plain call would
            outcome = (None, exc)
        with self.lock:
            self.outcome = outcome
            abandoned = self.abandoned
        self.done.set()
        if abandoned:
            error = outcome[1]
            log.warning(
                "the do handler of %r %s after its timeout of %gs; the late outcome is ignored",
                self.command.step,
                "returned" if error is None else f"raised {error!r:.80}",
                self.limit,
            )
        elif self.on_done is not None:
            with contextlib.suppress(RuntimeError):  # the caller's loop is gone
                self.on_done()

    def abandon(self) -> bool:
        """Abandon the call unless it has ended; return whether it was abandoned."""
        with self.lock:
            if self.outcome is None:
                self.abandoned = True
        return self.abandoned

    def result(self) -> Any:
        assert self.outcome is not None
        value, error = self.outcome
        if error is not None:
            raise error
        return value


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
        # Step path (without map indices) -> the start-to-close timeout of its do.
        self._timeouts: dict[str, float] = {
            t.step: t.timeout
            for t in flow.definition.transitions
            if t.kind == "do" and t.step is not None and t.timeout is not None
        }

    def timeout_of(self, command: Command) -> float | None:
        """Return the start-to-close timeout of ``command``'s handler, or ``None``.

        Only ``do`` steps declared with ``timeout=`` have one.
        """
        if not self._timeouts or command[1] != "do":
            return None
        limit = self._timeouts.get(command[2])
        return self._timeouts.get(template_of(command[2])) if limit is None else limit

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

    def _fire(self, command: Command) -> TimerFired:
        if type(command) is StartChild:
            raise InterpreterError(
                f"step {command.step!r} starts a child run of {command.flow!r}, which no "
                "interpreter executes: Flow.run runs it inline, a stepflow.Worker starts it"
            )
        return self.fire(cast(Wake | AwaitEvent, command))

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
            return self._fire(command)
        handler = self._handler(command)
        limit = self.timeout_of(command) if self._timeouts else None
        try:
            if limit is None or inspect.iscoroutinefunction(handler):
                result = self._call(handler, command, ctx)
            else:
                result = self._abandonable(handler, command, ctx, limit)
            if type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result):
                if limit is not None:
                    result = _within(result, limit, command)
                result = self._run_awaitable(command, result)
            if command[1] == "sleep_until":
                result = epoch_seconds(result)
        except InterpreterError:
            raise
        except Exception as exc:  # a handler's failure is an effect, never an escape
            return self._raised(command, exc)
        return _new(HandlerReturned, (command[0], result, self.clock.now()))

    def _abandonable(
        self, handler: Callable[..., Any], command: CallHandler, ctx: Any, limit: float
    ) -> Any:
        """Call a plain handler on its own thread; abandon it at ``limit`` seconds."""
        call = _Abandonable(command, limit, functools.partial(self._call, handler, command, ctx))
        call.start()
        if not call.done.wait(limit) and call.abandon():
            raise _timed_out(command, limit, "abandoned in its thread")
        return call.result()

    async def _abandonable_async(
        self, handler: Callable[..., Any], command: CallHandler, ctx: Any, limit: float
    ) -> Any:
        """:meth:`_abandonable` without blocking the running loop."""
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()
        call = _Abandonable(command, limit, functools.partial(self._call, handler, command, ctx))

        def settle() -> None:
            if not ended.done():
                ended.set_result(None)

        def on_done() -> None:
            loop.call_soon_threadsafe(settle)

        call.on_done = on_done
        call.start()
        await asyncio.wait((ended,), timeout=limit)
        if call.abandon():
            ended.cancel()
            raise _timed_out(command, limit, "abandoned in its thread")
        return call.result()

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

        Plain handlers are called directly, on the loop's thread, except those of
        steps with a ``timeout=``, which run on a thread of their own (see the
        module docstring).

        Raises:
            InterpreterError: no handler is bound for the command, or a timer is
                not due.

        """
        if type(command) is not CallHandler:
            return self._fire(command)
        handler = self._handler(command)
        limit = self.timeout_of(command) if self._timeouts else None
        try:
            if limit is None or inspect.iscoroutinefunction(handler):
                result = self._call(handler, command, ctx)
            else:
                result = await self._abandonable_async(handler, command, ctx, limit)
            if type(result) not in _PLAIN_RESULTS and inspect.isawaitable(result):
                result = await (result if limit is None else _within(result, limit, command))
            if command[1] == "sleep_until":
                result = epoch_seconds(result)
        except Exception as exc:  # a handler's failure is an effect, never an escape
            return self._raised(command, exc)
        return _new(HandlerReturned, (command[0], result, self.clock.now()))
