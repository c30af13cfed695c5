"""A compiled flow with its handlers, and go-stepflow-style drivers.

``flow.apply(state, ctx)`` does what go-stepflow's ``Apply`` does, without its
flaws: one call follows automatic transitions, executes one step's handler (plus
the ``on_error`` calls its failure triggers), applies the result, and follows the
automatic transitions after it. The returned state is ready to save; a failure
raises :class:`~stepflow.errors.FlowFailed` carrying a failed state that keeps the
position and the error, never ``nil``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs

from stepflow.core.advance import advance
from stepflow.core.compile import HandlerKey, compile_spec
from stepflow.core.definition import FlowDefinition
from stepflow.core.messages import Command, Effect
from stepflow.core.spec import Steps
from stepflow.core.state import COMPLETED, FAILED, State
from stepflow.errors import FlowFailed
from stepflow.interpreter import Interpreter

__all__ = ["Flow", "new"]


@attrs.frozen
class Flow:
    """A flow definition bound to its handlers.

    Make one with :func:`stepflow.new`.

    Attributes:
        definition: The compiled state machine: pure data.
        handlers: ``(command kind, step path) -> handler``.
        interpreter: The :class:`~stepflow.interpreter.Interpreter` the drivers use.

    """

    definition: FlowDefinition
    handlers: Mapping[HandlerKey, Callable[..., Any]]
    interpreter: Interpreter = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "interpreter", Interpreter(self))

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
        state, commands = advance(self.definition, state)
        if state.status == FAILED:
            raise self._failed(state)
        command: Command | None = commands[0] if commands else None
        while command is not None:
            effect: Effect = self.interpreter.execute(command, ctx)
            state, commands = advance(self.definition, state, (effect,))
            command = self._after(state, commands)
        return state

    async def apply_async(self, state: State | None = None, ctx: Any = None) -> State:
        """Like :meth:`apply`, awaiting ``async def`` handlers on the running loop."""
        state, commands = advance(self.definition, state)
        if state.status == FAILED:
            raise self._failed(state)
        command: Command | None = commands[0] if commands else None
        while command is not None:
            effect: Effect = await self.interpreter.execute_async(command, ctx)
            state, commands = advance(self.definition, state, (effect,))
            command = self._after(state, commands)
        return state


def new(spec: Steps) -> Flow:
    """Compile ``spec`` into a :class:`Flow`.

    >>> import stepflow
    >>> flow = stepflow.new(stepflow.named("hello/v1").do("greet", lambda ctx: "hi"))
    >>> flow.apply(None).outputs["hello/v1/greet"]
    'hi'

    Raises:
        DefinitionError: for an invalid spec, naming the offending path.

    """
    definition, handlers = compile_spec(spec)
    return Flow(definition, handlers)
