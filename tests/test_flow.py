"""The shell: interpreter, apply/apply_async drivers, failures and rebuilt errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import stepflow


class Ctx:
    def __init__(self) -> None:
        self.log: list[str] = []
        self.polls = 0


def test_handlers_receive_the_callers_context_unchanged() -> None:
    seen: list[Any] = []
    flow = stepflow.new(stepflow.named("f").do("a", seen.append))
    ctx = object()
    flow.apply(None, ctx)
    assert seen == [ctx]


def test_one_apply_executes_exactly_one_step_handler() -> None:
    ctx = Ctx()

    def step(name: str) -> Any:
        def handler(c: Ctx) -> None:
            c.log.append(name)

        return handler

    flow = stepflow.new(stepflow.named("f").do("a", step("a")).do("b", step("b")))
    state = flow.apply(None, ctx)
    assert ctx.log == ["a"]
    assert state.events == ("start:f/b",)
    state = flow.apply(state, ctx)
    assert ctx.log == ["a", "b"]
    assert flow.is_completed(state)
    assert flow.apply(state, ctx) == state
    assert ctx.log == ["a", "b"]


def test_is_completed_of_none_is_false() -> None:
    assert not stepflow.new(stepflow.steps()).is_completed(None)


def test_a_failure_raises_flow_failed_with_a_saveable_state_and_the_cause() -> None:
    boom = ValueError("bad input")

    def fail(ctx: object) -> None:
        raise boom

    flow = stepflow.new(stepflow.named("f").do("ok", lambda ctx: 1).do("bad", fail))
    state = flow.apply(None)
    with pytest.raises(stepflow.FlowFailed) as info:
        flow.apply(state)
    failed = info.value
    assert failed.__cause__ is boom
    assert failed.state.is_failed
    assert failed.state.events == ("start:f/bad",)
    assert failed.state.outputs == state.outputs
    assert failed.error == stepflow.ErrorRecord("ValueError", "bad input", "f/bad")
    assert "f/bad" in str(failed)
    # The failed state is data: it saves and loads like any other.
    reloaded = stepflow.loads(stepflow.dumps(failed.state), flow.definition)
    with pytest.raises(stepflow.FlowFailed) as again:
        flow.apply(reloaded)
    assert isinstance(again.value.__cause__, ValueError)
    assert str(again.value.__cause__) == "bad input"


def test_on_error_receives_the_live_exception_then_a_rebuilt_one_after_a_reload() -> None:
    received: list[BaseException] = []
    boom = ConnectionError("refused")

    def fail(ctx: object) -> None:
        raise boom

    def on_error(ctx: object, exc: BaseException) -> bool:
        received.append(exc)
        return len(received) < 2

    flow = stepflow.new(stepflow.named("f").retry("r", on_error, stepflow.steps().do("x", fail)))
    state = flow.apply(None)  # x fails, on_error says retry
    assert received == [boom]

    # A new process: the same definition, a fresh flow and interpreter, the saved text.
    fresh = stepflow.new(stepflow.named("f").retry("r", on_error, stepflow.steps().do("x", fail)))
    state = stepflow.loads(stepflow.dumps(state), fresh.definition)
    with pytest.raises(stepflow.FlowFailed):
        fresh.apply(state)
    assert received[1] is boom  # the new interpreter saw x raise this object itself

    # Only the record survives when the failure itself was saved mid-retry.
    calls: list[BaseException] = []
    definition = stepflow.new(
        stepflow.named("g").retry(
            "r", lambda c, e: calls.append(e) or False, stepflow.steps().do("x", fail)
        )
    ).definition
    mid, (x,) = stepflow.advance(definition)
    err = stepflow.ErrorRecord("ConnectionError", "refused", "g/rRetry/x")
    mid, _ = stepflow.advance(definition, mid, (stepflow.HandlerRaised(x.id, err),))
    other = stepflow.new(
        stepflow.named("g").retry(
            "r", lambda c, e: calls.append(e) or False, stepflow.steps().do("x", fail)
        )
    )
    with pytest.raises(stepflow.FlowFailed):
        other.apply(stepflow.loads(stepflow.dumps(mid), definition))
    assert type(calls[0]) is ConnectionError
    assert str(calls[0]) == "refused"


def test_an_unimportable_error_type_is_rebuilt_as_recorded_error() -> None:
    exc = stepflow.rebuild_exception(stepflow.ErrorRecord("gone.module.Error", "lost", "f/a"))
    assert isinstance(exc, stepflow.RecordedError)
    assert (exc.type_name, exc.message) == ("gone.module.Error", "lost")


def test_a_type_that_cannot_be_built_from_a_message_is_rebuilt_as_recorded_error() -> None:
    record = stepflow.ErrorRecord("stepflow.errors.DefinitionError", "x", "f/a")
    assert isinstance(stepflow.rebuild_exception(record), stepflow.RecordedError)


def test_on_error_raising_fails_with_its_own_exception() -> None:
    handler_error = RuntimeError("handler error")

    def on_error(ctx: object, exc: BaseException) -> bool:
        raise handler_error

    def fail(ctx: object) -> None:
        raise ValueError("function error")

    flow = stepflow.new(stepflow.named("f").retry("r", on_error, stepflow.steps().do("x", fail)))
    with pytest.raises(stepflow.FlowFailed) as info:
        flow.apply(None)
    assert info.value.__cause__ is handler_error
    assert info.value.error.step == "f/rRetry"


def test_the_interpreter_turns_exceptions_into_effects() -> None:
    flow = stepflow.new(stepflow.named("f").do("a", lambda ctx: 1 / 0))
    _, (command,) = stepflow.advance(flow.definition)
    effect = stepflow.Interpreter(flow).execute(command)
    assert isinstance(effect, stepflow.HandlerRaised)
    assert effect.error == stepflow.ErrorRecord("ZeroDivisionError", "division by zero", "f/a")
    assert isinstance(effect.exception, ZeroDivisionError)


def test_the_interpreter_rejects_a_command_of_another_flow() -> None:
    flow = stepflow.new(stepflow.named("f").do("a", lambda ctx: 1))
    stranger = stepflow.CallHandler(1, "do", "g/a", "start:g/a", None)
    with pytest.raises(stepflow.InterpreterError, match="no do handler"):
        flow.interpreter.execute(stranger)


async def _async_step(ctx: Ctx) -> str:
    await asyncio.sleep(0)
    ctx.log.append("async")
    return "done"


async def _async_cond(ctx: Ctx) -> bool:
    ctx.polls += 1
    return ctx.polls >= 2


def _async_flow() -> stepflow.Flow:
    return stepflow.new(stepflow.named("f").do("a", _async_step).wait_for("w", _async_cond))


def test_async_handlers_run_under_the_sync_driver() -> None:
    ctx = Ctx()
    flow = _async_flow()
    state = None
    for _ in range(5):
        state = flow.apply(state, ctx)
    assert flow.is_completed(state)
    assert state is not None
    assert state.outputs["f/a"] == "done"
    assert ctx.polls == 2


def test_apply_async_awaits_handlers_on_the_running_loop() -> None:
    async def main() -> stepflow.State:
        ctx = Ctx()
        flow = _async_flow()
        state = None
        while not flow.is_completed(state):
            state = await flow.apply_async(state, ctx)
        assert state is not None
        return state

    state = asyncio.run(main())
    assert state.outputs["f/a"] == "done"


def test_sync_execute_of_an_async_handler_inside_a_running_loop_is_an_interpreter_error() -> None:
    flow = _async_flow()
    _, (command,) = stepflow.advance(flow.definition)

    async def main() -> None:
        with pytest.raises(stepflow.InterpreterError, match="execute_async"):
            flow.interpreter.execute(command, Ctx())

    asyncio.run(main())


def test_async_on_error_handlers_are_awaited() -> None:
    async def on_error(ctx: Ctx, exc: BaseException) -> bool:
        ctx.log.append(f"on_error {exc}")
        return len(ctx.log) < 2

    def fail(ctx: Ctx) -> None:
        raise KeyError("k")

    flow = stepflow.new(stepflow.named("f").retry("r", on_error, stepflow.steps().do("x", fail)))
    ctx = Ctx()

    async def main() -> None:
        state = await flow.apply_async(None, ctx)
        with pytest.raises(stepflow.FlowFailed):
            await flow.apply_async(state, ctx)

    asyncio.run(main())
    assert ctx.log == ["on_error 'k'", "on_error 'k'"]
