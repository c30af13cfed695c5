"""A compiled flow with its handlers, and go-stepflow-style drivers.

``flow.apply(state, ctx)`` does what go-stepflow's ``Apply`` does, without its
flaws: one call follows automatic transitions, executes one step's handler (plus
the ``on_error`` calls its failure triggers), applies the result, and follows the
automatic transitions after it. The returned state is ready to save; a failure
raises :class:`~stepflow.errors.FlowFailed` carrying a failed state that keeps the
position and the error, never ``nil``.

``apply`` leaves scheduling to its caller, as go-stepflow does: it polls a
``wait_for`` whenever it is called, but fires a ``sleep`` timer only once it is
due. :meth:`Flow.run` and :meth:`Flow.run_async` drive a run to its end in
process, honouring every ``wake_at`` through the flow's clock; the durable
:class:`stepflow.Worker` does the same across many runs and restarts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, cast

import attrs

from stepflow.clock import Clock, SystemClock
from stepflow.core._json import thaw_json
from stepflow.core.advance import advance
from stepflow.core.compile import HandlerKey, compile_spec
from stepflow.core.definition import FlowDefinition, template_of
from stepflow.core.events import resting, untimed_wait
from stepflow.core.groups import command_times, item_of
from stepflow.core.messages import (
    AwaitEvent,
    CallHandler,
    CancelRequested,
    ChildEnded,
    Command,
    Effect,
    EventReceived,
    HandlerRaised,
    HandlerReturned,
    StartChild,
    Wake,
)
from stepflow.core.scopes import handler_error
from stepflow.core.spec import Call, Steps
from stepflow.core.state import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    FAILED,
    RUNNING,
    ErrorRecord,
    State,
)
from stepflow.errors import ConfigurationError, DefinitionError, FlowFailed, InterpreterError
from stepflow.interpreter import Interpreter
from stepflow.versioning import Migration

__all__ = ["ChildContext", "Flow", "ItemContext", "new"]


def _tuple(migrations: Iterable[Migration]) -> tuple[Migration, ...]:
    return tuple(migrations)


@attrs.frozen
class Flow:
    """A flow definition bound to its handlers.

    Make one with :func:`stepflow.new`.

    Attributes:
        definition: The compiled state machine: pure data.
        handlers: ``(command kind, step path) -> handler``.
        clock: Where the drivers read the time (default: :class:`SystemClock`).
        migrations: How runs of earlier versions of the flow become runs of this
            one (see :class:`stepflow.versioning.Migration`); a worker serving
            this flow adopts them.
        interpreter: The :class:`~stepflow.interpreter.Interpreter` the drivers use.

    """

    definition: FlowDefinition
    handlers: Mapping[HandlerKey, Callable[..., Any]]
    clock: Clock = attrs.field(factory=SystemClock, eq=False, repr=False)
    migrations: tuple[Migration, ...] = attrs.field(default=(), converter=_tuple, eq=False)
    interpreter: Interpreter = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "interpreter", Interpreter(self, self.clock))

    def with_clock(self, clock: Clock) -> Flow:
        """Return this flow driven by ``clock`` (a :class:`FakeClock` in tests)."""
        return Flow(self.definition, self.handlers, clock, self.migrations)

    @property
    def name(self) -> str:
        """The flow's name (its root scope)."""
        return self.definition.name

    def is_completed(self, state: State | None) -> bool:
        """Whether ``state`` is a completed run (``None``, a run not started, is not)."""
        return state is not None and state.status == COMPLETED

    def _failed(self, state: State) -> FlowFailed:
        assert state.error is not None
        failed = FlowFailed(state, state.error)
        failed.__cause__ = self.interpreter.exception_for(state.error)
        return failed

    def _after(self, before: State, state: State, commands: tuple[Command, ...]) -> list[Command]:
        """Return the commands to execute next in this apply: new ``on_error`` questions."""
        if state.status == FAILED:
            raise self._failed(state)
        return [c for c in commands if c.kind == "on_error" and c.id > before.seq]

    def _first(self, state: State | None) -> tuple[State, list[Command]]:
        """Start or load the apply: the state, and the commands to execute now."""
        now = self.clock.now()
        state, commands = advance(self.definition, state, now=now)
        if state.status == FAILED:
            raise self._failed(state)
        if len(commands) == 1 and not state.groups:
            # One position: its command runs now (the caller honours wake_at),
            # unless it is a timer not yet due.
            command = commands[0]
            if type(command) is not Wake and type(command) is not AwaitEvent:
                return state, [command]
            due = command.at
            return state, ([] if due is None or due > now else [command])
        return state, [c for c in commands if _due(state, c, now)]

    def _context(self, state: State, command: Command, ctx: Any) -> Any:
        """Return the context a handler gets: the caller's, wrapped inside a map or catch.

        Inside a map item it carries ``ctx.item``; inside a catch's handler, ``ctx.error``.
        """
        if state.groups:
            found = item_of(state, command.step)
            if found is not None:
                ctx = ItemContext(ctx, *found)
        error = handler_error(self.definition, state.outputs, command)
        return ctx if error is None else ErrorContext(ctx, error)

    def apply(self, state: State | None = None, ctx: Any = None) -> State:
        """Run one step of the flow from ``state`` (``None`` starts a run).

        In a run with several positions (``parallel`` branches, ``map`` items),
        one step of each position whose command is due runs, in the order of
        ``state.in_flight``, and their outcomes are applied as one batch.

        Args:
            state: The saved state, or ``None`` for a new run.
            ctx: The caller's context object, passed unchanged to every handler
                (inside a map item, wrapped in an :class:`ItemContext` that adds
                ``item`` and ``index``).

        Returns:
            The new state, to save. A completed state is returned as it is.

        Raises:
            FlowFailed: the step failed and no retry restarted it; ``.state`` is
                the failed state (save it), ``__cause__`` the handler's exception.

        """
        state, due = self._first(state)
        execute = self.interpreter.execute
        while due:
            effects = [
                self._start_child(c, self._context(state, c, ctx))
                if type(c) is StartChild
                else execute(c, self._context(state, c, ctx))
                for c in due
            ]
            before = state
            state, commands = advance(self.definition, state, effects)
            due = self._after(before, state, commands)
        return state

    async def apply_async(self, state: State | None = None, ctx: Any = None) -> State:
        """Like :meth:`apply`, awaiting ``async def`` handlers on the running loop.

        The due commands of a run with several positions run concurrently.
        """
        state, due = self._first(state)
        execute = self._execute_async
        while due:
            if len(due) == 1:
                effects = [await execute(due[0], self._context(state, due[0], ctx))]
            else:
                calls = (execute(c, self._context(state, c, ctx)) for c in due)
                effects = list(await asyncio.gather(*calls))
            before = state
            state, commands = advance(self.definition, state, effects)
            due = self._after(before, state, commands)
        return state

    async def _execute_async(self, command: Command, ctx: Any) -> Effect:
        if type(command) is StartChild:
            return await self._start_child_async(command, ctx)
        return await self.interpreter.execute_async(command, ctx)

    def _child_of(self, command: StartChild) -> Flow:
        """Return the child flow of ``command``, given inline as a :class:`Flow`."""
        call = self.handlers.get(("call", template_of(command.step)))
        assert isinstance(call, Call)
        if isinstance(call.flow, str):
            raise ConfigurationError(
                f"step {command.step!r} calls flow {call.flow!r} by name, and a Flow run in "
                "memory has no registry to find it in; pass the child's Flow object to "
                ".call(...), or serve both flows with a stepflow.Worker"
            )
        return cast(Flow, call.flow).with_clock(self.clock)

    def _runs_child(self, command: StartChild) -> bool:
        """Whether ``command``'s step is bound to a :class:`Call` (else, to a scripted stand-in)."""
        return isinstance(self.handlers.get(("call", template_of(command.step))), Call)

    def _ended(self, command: StartChild, child: Flow, state: State) -> ChildEnded:
        """Return how the child ``state`` ended, as the effect that answers ``command``."""
        now = self.clock.now()
        if state.status == COMPLETED:
            return ChildEnded(command.id, "completed", thaw_json(state.outputs), None, now)
        if state.status == FAILED or state.status == CANCELLED:
            ended = cast(Literal["failed", "cancelled"], state.status)
            return ChildEnded(command.id, ended, None, state.error, now)
        raise InterpreterError(
            f"the child run of {child.name!r} started by {command.step!r} rests until an event "
            "or a cancellation; in memory, Flow.run drives only children that run to their "
            "end (use a stepflow.Worker for the others)"
        )

    def _start_child(self, command: StartChild, ctx: Any) -> Effect:
        """Run the child of ``command`` to its end, in process (see :class:`ChildContext`)."""
        asked = CallHandler(command.id, "call", command.step, command.event, None)
        given = self.interpreter.execute(asked, ctx)
        if not self._runs_child(command):
            return _scripted(command, given)
        if type(given) is not HandlerReturned:
            return given
        child = self._child_of(command)
        try:
            state = child.run(None, ChildContext(ctx, given.value))
        except FlowFailed as failed:
            state = failed.state
        return self._ended(command, child, state)

    async def _start_child_async(self, command: StartChild, ctx: Any) -> Effect:
        asked = CallHandler(command.id, "call", command.step, command.event, None)
        given = await self.interpreter.execute_async(asked, ctx)
        if not self._runs_child(command):
            return _scripted(command, given)
        if type(given) is not HandlerReturned:
            return given
        child = self._child_of(command)
        try:
            state = await child.run_async(None, ChildContext(ctx, given.value))
        except FlowFailed as failed:
            state = failed.state
        return self._ended(command, child, state)

    def send(self, state: State | None, name: str, payload: Any = None) -> State:
        """Deliver the event ``name`` with its JSON ``payload`` to the run; return the new state.

        The event is stamped with the flow's clock. A ``wait_event`` step of
        that name that waits takes it (the run then rests at its next step,
        whose command :meth:`apply` or :meth:`run` carries out); otherwise it
        waits in the run's mailbox for one (see :mod:`stepflow.core.events`).

        >>> import stepflow
        >>> flow = stepflow.new(stepflow.named("ok/v1").wait_event("approved"))
        >>> state = flow.send(flow.run(), "approved", {"by": "ana"})
        >>> state.status, state.outputs["ok/v1/approvedWaitEvent"]["by"]
        ('completed', 'ana')

        Raises:
            EffectError: the run is finished, the event's name or payload is
                not valid, or its mailbox is full (:class:`~stepflow.MailboxFullError`).

        """
        now = self.clock.now()
        new, _ = advance(self.definition, state, [EventReceived(name, payload, now)], now=now)
        return new

    def cancel(self, state: State | None, reason: str = "") -> State:
        """Cancel the run for ``reason``; return the new state (see :mod:`stepflow.core.cleanup`).

        Stamped with the flow's clock. A run resting at a timer or an event
        is unwound at once; one whose step may be executing becomes
        ``cancelling``, and :meth:`apply` or :meth:`run` carry out the rest:
        that step's outcome, then the cleanups and compensations. A run that
        is not running is returned as it is.

        >>> import stepflow
        >>> flow = stepflow.new(stepflow.named("job/v1").finally_(
        ...     "work",
        ...     stepflow.steps().wait_event("go"),
        ...     stepflow.steps().do("release", lambda ctx: "released"),
        ... ))
        >>> state = flow.run(flow.cancel(flow.run(), "not needed"))
        >>> state.status, state.error.message, state.outputs["job/v1/workFinally/cleanup/release"]
        ('cancelled', 'not needed', 'released')
        """
        now = self.clock.now()
        new, _ = advance(self.definition, state, [CancelRequested(reason, now)], now=now)
        return new

    def run(self, state: State | None = None, ctx: Any = None) -> State:
        """Drive a run to its end in this process, sleeping until each ``wake_at``.

        With a :class:`~stepflow.clock.FakeClock`, the waits take no real time.
        A run that only an event can move on (every position waits at a
        ``wait_event`` with no timeout) is returned as it is, still running:
        deliver the event with :meth:`send`, then call ``run`` again.

        Returns:
            The completed state, or a running one resting until an event.

        Raises:
            FlowFailed: as for :meth:`apply`.

        """
        return asyncio.run(self.run_async(state, ctx))

    async def run_async(self, state: State | None = None, ctx: Any = None) -> State:
        """Like :meth:`run`, on the running event loop."""
        state = await self.apply_async(state, ctx)
        while (state.status == RUNNING or state.status == CANCELLING) and not resting(state):
            if state.wake_at is not None:
                await self.clock.sleep(state.wake_at - self.clock.now())
            state = await self.apply_async(state, ctx)
        return state


def _scripted(command: StartChild, given: Effect) -> Effect:
    """Answer a call bound to a plain function: its value is the child's output.

    Only flows made by hand (:func:`stepflow.testing.scripted_flow`) bind one:
    :func:`new` binds every call to its :class:`~stepflow.core.spec.Call`.
    """
    if type(given) is HandlerReturned:
        return ChildEnded(command.id, "completed", given.value, None, given.at, command.key)
    raised = cast(HandlerRaised, given)  # as stepflow.testing's worlds script a failure
    failed = ErrorRecord(raised.error.type, raised.error.message, command.flow)
    return ChildEnded(command.id, "failed", None, failed, raised.at, command.key)


def _due(state: State, command: Command, now: float) -> bool:
    """Whether ``command`` may be carried out at ``now`` (its position's ``wake_at`` came)."""
    if untimed_wait(command):
        return False
    wake_at = command_times(state, command)[0]
    return wake_at is None or wake_at <= now


class ItemContext:
    """The caller's context seen from inside a ``map`` item: ``ctx.item`` and ``ctx.index``.

    :meth:`stepflow.Flow.apply` passes the caller's own context object to every
    handler; for a step inside a map item it passes this wrapper instead, which
    adds the item and its index and forwards every other attribute to the
    caller's object (``wrapped`` is that object itself).

    >>> class Clients:
    ...     region = "eu"
    >>> ctx = ItemContext(Clients(), 2, {"cluster": "c3"})
    >>> (ctx.index, ctx.item["cluster"], ctx.region)
    (2, 'c3', 'eu')
    """

    __slots__ = ("index", "item", "wrapped")

    def __init__(self, wrapped: Any, index: int, item: Any) -> None:
        self.wrapped = wrapped
        self.index = index
        self.item = item

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def __repr__(self) -> str:
        return (
            f"ItemContext(index={self.index!r}, item={self.item!r:.60}, "
            f"wrapped={self.wrapped!r:.60})"
        )


class ChildContext:
    """The context a child run's handlers get when :meth:`Flow.run` runs it inline.

    ``input`` is the child's input (what the ``call`` step's ``input(ctx)``
    returned); every other attribute is the parent's context's (``wrapped``).

    >>> ChildContext(None, {"cluster": "c3"}).input
    {'cluster': 'c3'}
    """

    __slots__ = ("input", "wrapped")

    def __init__(self, wrapped: Any, input: Any) -> None:
        self.wrapped = wrapped
        self.input = input

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def __repr__(self) -> str:
        return f"ChildContext(input={self.input!r:.60}, wrapped={self.wrapped!r:.60})"


class ErrorContext:
    """The caller's context seen from inside a ``catch`` handler: ``ctx.error``.

    Like :class:`ItemContext`, it forwards every other attribute to the
    caller's object (``wrapped``). ``error`` is the
    :class:`~stepflow.ErrorRecord` the catch took.

    >>> from stepflow import ErrorRecord
    >>> ctx = ErrorContext(None, ErrorRecord("KeyError", "k", "f/aCatch/steps/x"))
    >>> ctx.error.type
    'KeyError'
    """

    __slots__ = ("error", "wrapped")

    def __init__(self, wrapped: Any, error: ErrorRecord) -> None:
        self.wrapped = wrapped
        self.error = error

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)

    def __repr__(self) -> str:
        return f"ErrorContext(error={self.error!r}, wrapped={self.wrapped!r:.60})"


def new(spec: Steps, *, clock: Clock | None = None, migrations: Iterable[Migration] = ()) -> Flow:
    """Compile ``spec`` into a :class:`Flow` whose drivers read ``clock``.

    ``migrations`` say how runs of earlier versions become runs of this one
    (see :class:`stepflow.versioning.Migration`).

    >>> import stepflow
    >>> flow = stepflow.new(stepflow.named("hello/v1").do("greet", lambda ctx: "hi"))
    >>> flow.apply(None).outputs["hello/v1/greet"]
    'hi'

    Raises:
        DefinitionError: for an invalid spec, naming the offending path.

    """
    definition, handlers = compile_spec(spec)
    for migration in migrations:
        if not isinstance(migration, Migration) or migration.source == definition.name:
            raise DefinitionError(
                f"migrations must be Migration(...) from another flow name than "
                f"{definition.name!r}, got {migration!r}",
                path=definition.name,
            )
    clock = clock if clock is not None else SystemClock()
    return Flow(definition, handlers, clock, _tuple(migrations))
