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
from typing import Any

import attrs

from stepflow.clock import Clock, SystemClock
from stepflow.core.advance import advance
from stepflow.core.compile import HandlerKey, compile_spec
from stepflow.core.definition import FlowDefinition
from stepflow.core.messages import Command, Effect, Wake
from stepflow.core.spec import Steps
from stepflow.core.state import COMPLETED, FAILED, RUNNING, State
from stepflow.errors import DefinitionError, FlowFailed
from stepflow.interpreter import Interpreter
from stepflow.versioning import Migration

__all__ = ["Flow", "new"]


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

    def _after(self, state: State, commands: tuple[Command, ...]) -> Command | None:
        """Return the command to execute next in this apply, or ``None`` to stop."""
        if state.status == FAILED:
            raise self._failed(state)
        if commands and commands[0].kind == "on_error":
            return commands[0]
        return None

    def _first(self, state: State | None) -> tuple[State, Command | None]:
        """Start or load the apply: the state, and the command to execute now."""
        state, commands = advance(self.definition, state, now=self.clock.now())
        if state.status == FAILED:
            raise self._failed(state)
        command: Command | None = commands[0] if commands else None
        if type(command) is Wake and command.at > self.clock.now():
            return state, None  # the timer is not due: nothing to do yet
        return state, command

    def apply(self, state: State | None = None, ctx: Any = None) -> State:
        """Run one step of the flow from ``state`` (``None`` starts a run).

        Args:
            state: The saved state, or ``None`` for a new run.
            ctx: The caller's context object, passed unchanged to every handler.

        Returns:
            The new state, to save. A completed state is returned as it is.

        Raises:
            FlowFailed: the step failed and no retry restarted it; ``.state`` is
                the failed state (save it), ``__cause__`` the handler's exception.

        """
        state, command = self._first(state)
        while command is not None:
            effect: Effect = self.interpreter.execute(command, ctx)
            state, commands = advance(self.definition, state, (effect,))
            command = self._after(state, commands)
        return state

    async def apply_async(self, state: State | None = None, ctx: Any = None) -> State:
        """Like :meth:`apply`, awaiting ``async def`` handlers on the running loop."""
        state, command = self._first(state)
        while command is not None:
            effect: Effect = await self.interpreter.execute_async(command, ctx)
            state, commands = advance(self.definition, state, (effect,))
            command = self._after(state, commands)
        return state

    def run(self, state: State | None = None, ctx: Any = None) -> State:
        """Drive a run to its end in this process, sleeping until each ``wake_at``.

        With a :class:`~stepflow.clock.FakeClock`, the waits take no real time.

        Returns:
            The completed state.

        Raises:
            FlowFailed: as for :meth:`apply`.

        """
        return asyncio.run(self.run_async(state, ctx))

    async def run_async(self, state: State | None = None, ctx: Any = None) -> State:
        """Like :meth:`run`, on the running event loop."""
        state = await self.apply_async(state, ctx)
        while state.status == RUNNING:
            if state.wake_at is not None:
                await self.clock.sleep(state.wake_at - self.clock.now())
            state = await self.apply_async(state, ctx)
        return state


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
