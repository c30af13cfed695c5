"""Ports of go-stepflow's own test scenarios to stepflow.

Each test names the Go test it ports (``core/retryitem_test.go
TestRetriableTransition_ErrorHandlerError``...). The scenarios are the same: which
handlers run, in what order, and which error surfaces. Three systematic differences
follow from the designs, not from the scenarios:

* **Apply counts.** A go-stepflow ``Apply`` stops after its first handler
  transition, so it needs one extra ``Apply`` to hop from the last step's
  ``completed`` event to the flow's end. A stepflow ``apply`` executes one step's
  handler and then follows the static transitions after it. Where Go asserts
  "completed after N applies" we assert completion within N applies, that exactly
  one step handler ran per apply, and that applying a completed state again is a
  no-op returning an equal state (what Go's loop does on its last iterations).
* **Roots.** The Go core tests use a bare item as the root (a ``FuncItem`` named
  ``test`` is the whole flow). stepflow roots are ``named(...)`` step lists, so each
  item lives in a root ``named("test")`` and its events gain that prefix
  (``start:test/testWaitFor``). Case and LoopUntil bodies are step lists here, so
  their child scope is ``.../steps`` and they carry more static transitions than the
  Go core items wrapping a single ``FuncItem``.
* **Errors.** Go's ``err == expectedErr`` / ``errors.Is(err, expectedErr)`` is
  ``FlowFailed.__cause__ is expected`` here, and the failed state is inspected too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

import stepflow
from stepflow import Flow, FlowFailed, State, named, steps

# --------------------------------------------------------------------------- helpers


def apply_n(flow: Flow, go_applies: int, ctx: Any = None) -> tuple[State, int]:
    """Run Go's driving loop: ``for range go_applies { state = Apply(ctx, state) }``.

    Returns the final state and the number of applies stepflow needed to complete
    (checked to be at most ``go_applies``). Every apply after completion must return
    an equal state, as Go's ``Apply`` returns a completed state unchanged.
    """
    state: State | None = None
    completed_after = 0
    for i in range(1, go_applies + 1):
        new_state = flow.apply(state, ctx)
        if completed_after:
            assert new_state == state, f"apply #{i} changed a completed state"
        elif flow.is_completed(new_state):
            completed_after = i
        state = new_state
    assert state is not None
    assert flow.is_completed(state), f"not completed after {go_applies} applies: {state}"
    assert 1 <= completed_after <= go_applies
    return state, completed_after


def try_apply(flow: Flow, state: State | None, ctx: Any) -> State | FlowFailed:
    """Apply once; return the new state, or the ``FlowFailed`` the apply raised."""
    try:
        return flow.apply(state, ctx)
    except FlowFailed as failed:
        return failed


def apply_until_failed(flow: Flow, max_applies: int, ctx: Any = None) -> tuple[FlowFailed, int]:
    """Apply until ``FlowFailed`` (Go: ``if errApply != nil { break }``).

    Returns the ``FlowFailed`` and the number of the apply that raised it.
    """
    state: State | None = None
    for i in range(1, max_applies + 1):
        outcome = try_apply(flow, state, ctx)
        if isinstance(outcome, FlowFailed):
            return outcome, i
        state = outcome
    pytest.fail(f"no failure within {max_applies} applies; state: {state}")


def record(calls: list[str], name: str, result: Any = None) -> Callable[[Any], Any]:
    """Return a handler that appends ``name`` to ``calls`` and returns ``result``."""

    def handler(ctx: Any) -> Any:
        calls.append(name)
        return result

    return handler


def fail_with(calls: list[str], name: str, exc: BaseException) -> Callable[[Any], Any]:
    """Return a handler that appends ``name`` to ``calls`` and raises ``exc``."""

    def handler(ctx: Any) -> Any:
        calls.append(name)
        raise exc

    return handler


def transition(flow: Flow, source: str) -> stepflow.Transition:
    """Return the one transition leaving ``source``."""
    return flow.definition.table[source]


def destination_events(t: stepflow.Transition) -> tuple[str, ...]:
    return tuple(d.event for d in t.destinations)


def noop(ctx: Any) -> None:
    return None


# ------------------------------------------------------------ core/stepflow_test.go


def test_new_step_flow() -> None:
    """Ports core/stepflow_test.go TestNewStepFlow."""
    flow = stepflow.new(named("test").do("test", noop))

    assert isinstance(flow, Flow)
    assert flow.name == "test"
    assert flow.definition.start_event == "start:test"
    assert flow.definition.completed_event == "completed:test"


def test_step_flow_apply_runs_the_step_and_completes() -> None:
    """Ports core/stepflow_test.go TestStepFlow_Apply (one apply runs and completes)."""
    calls: list[str] = []
    flow = stepflow.new(named("test").do("test", record(calls, "test")))

    state = flow.apply(None)

    assert calls == ["test"]
    assert state.events == ("completed:test",)
    assert flow.is_completed(state)


def test_step_flow_apply_error_surfaces_the_handler_error() -> None:
    """Ports core/stepflow_test.go TestStepFlow_Apply_Error."""
    expected = RuntimeError("test error")
    flow = stepflow.new(named("test").do("test", fail_with([], "test", expected)))

    with pytest.raises(FlowFailed) as caught:
        flow.apply(None)

    assert caught.value.__cause__ is expected
    failed = caught.value.state
    assert failed.status == "failed"
    assert failed.events == ("start:test/test",)  # the failing position is kept
    assert failed.error == stepflow.ErrorRecord("RuntimeError", "test error", "test/test")
    assert caught.value.error == failed.error


def test_step_flow_is_completed() -> None:
    """Ports core/stepflow_test.go TestStepFlow_IsCompleted.

    Go's empty state is ``None`` here; Go's ``[]string{"wrong"}`` can only enter
    stepflow as a go-stepflow state through ``loads``, which rejects it.
    """
    flow = stepflow.new(named("test").do("test", noop))

    state = flow.apply(None)

    assert flow.is_completed(state)
    assert not flow.is_completed(None)
    go_completed = stepflow.loads('["completed:test"]', flow.definition)
    assert flow.is_completed(go_completed)
    go_not_started = stepflow.loads('["start:test"]', flow.definition)
    assert not flow.is_completed(go_not_started)
    with pytest.raises(stepflow.UnknownEventError):
        stepflow.loads('["wrong"]', flow.definition)
    with pytest.raises(stepflow.CorruptStateError):
        stepflow.loads("[]", flow.definition)


def test_running_state_is_not_completed() -> None:
    """Ports core/stepflow_test.go TestStepFlow_IsCompleted (a state elsewhere than the end)."""
    flow = stepflow.new(named("test").wait_for("test", lambda ctx: False))

    state = flow.apply(None)

    assert state.events == ("start:test/testWaitFor",)
    assert not flow.is_completed(state)


def test_apply_on_unknown_event_raises_a_state_error() -> None:
    """Ports core/stepflow_test.go TestStepFlow_IsCompleted's ``{"wrong"}`` state through Apply.

    go-stepflow's ``Apply`` answers a state at an unknown event with an error
    (``unhandled state [wrong]``). stepflow documents ``UnknownEventError`` (a
    ``StateError``) for a state of this very definition holding unknown events.
    """
    flow = stepflow.new(named("test").wait_for("test", lambda ctx: False))
    running = flow.apply(None)
    wrong = running._replace(events=("wrong",), in_flight=())

    assert not flow.is_completed(wrong)
    with pytest.raises(stepflow.StateError):
        flow.apply(wrong)


def test_scope_names_nest_with_a_slash() -> None:
    """Ports core/stepflow_test.go TestNewScope, TestWithParent and TestWithParent_NilParent.

    A root scope keeps its own name; a child scope is ``parent/child``.
    """
    flow = stepflow.new(named("parent").steps("child", steps().do("test", noop)))

    sources = [t.source for t in flow.definition.transitions]
    assert "start:parent" in sources  # the root scope: no parent prefix
    assert "start:parent/child" in sources
    assert "start:parent/child/test" in sources
    assert transition(flow, "start:parent/child/test").step == "parent/child/test"


# ----------------------------------------------------------- core/stepsitem_test.go


def test_empty_steps_have_one_start_to_completed_transition() -> None:
    """Ports core/stepsitem_test.go TestNewStepsItem."""
    flow = stepflow.new(named("test"))

    (only,) = flow.definition.transitions
    assert only.source == "start:test"
    assert only.is_static
    assert only.destinations == (stepflow.Destination("completed:test", "static"),)
    assert flow.is_completed(flow.apply(None))


def test_steps_with_two_items_have_five_transitions() -> None:
    """Ports core/stepsitem_test.go TestStepsItem_WithItems."""
    flow = stepflow.new(named("test").do("item1", noop).do("item2", noop))

    assert [(t.source, t.kind, destination_events(t)) for t in flow.definition.transitions] == [
        ("start:test", "static", ("start:test/item1",)),
        ("start:test/item1", "do", ("completed:test/item1",)),
        ("completed:test/item1", "static", ("start:test/item2",)),
        ("start:test/item2", "do", ("completed:test/item2",)),
        ("completed:test/item2", "static", ("completed:test",)),
    ]


def test_duplicate_names_are_rejected() -> None:
    """Ports core/stepsitem_test.go TestStepsItem_DuplicateNames."""
    spec = named("test").do("duplicate", noop).do("duplicate", noop)

    with pytest.raises(stepflow.DefinitionError) as caught:
        stepflow.new(spec)

    assert isinstance(caught.value, ValueError)
    assert caught.value.path == "test/duplicate"


def test_duplicate_scope_names_after_suffixes_are_rejected() -> None:
    """Ports core/stepsitem_test.go TestStepsItem_DuplicateNames (go: duplicate transition source).

    ``wait_for("x")`` has the scope ``xWaitFor``, which a ``do("xWaitFor")`` also has.
    """
    spec = named("test").steps("g", steps().wait_for("x", lambda ctx: True).do("xWaitFor", noop))

    with pytest.raises(stepflow.DefinitionError) as caught:
        stepflow.new(spec)

    assert caught.value.path == "test/g/xWaitFor"


def test_steps_with_parent_scope() -> None:
    """Ports core/stepsitem_test.go TestStepsItem_WithParent."""
    flow = stepflow.new(named("parent").steps("test", steps()))

    nested = transition(flow, "start:parent/test")
    assert nested.is_static
    assert destination_events(nested) == ("completed:parent/test",)
    assert flow.is_completed(flow.apply(None))


# ------------------------------------------------------------ core/funcitem_test.go


def test_func_item_transition_and_call() -> None:
    """Ports core/funcitem_test.go TestNewFuncItem."""
    calls: list[str] = []
    flow = stepflow.new(named("test").do("test", record(calls, "test")))

    do = transition(flow, "start:test/test")
    assert (do.kind, do.step) == ("do", "test/test")
    assert destination_events(do) == ("completed:test/test",)
    assert do.retry_scopes == ()

    state = flow.apply(None)

    assert calls == ["test"]
    assert flow.is_completed(state)


def test_func_item_error() -> None:
    """Ports core/funcitem_test.go TestFuncItem_Error."""
    expected = RuntimeError("test error")
    flow = stepflow.new(named("test").do("test", fail_with([], "test", expected)))

    with pytest.raises(FlowFailed) as caught:
        flow.apply(None)

    assert caught.value.__cause__ is expected
    assert caught.value.state.error is not None
    assert caught.value.state.error.step == "test/test"


def test_func_item_with_parent() -> None:
    """Ports core/funcitem_test.go TestFuncItem_WithParent."""
    flow = stepflow.new(named("parent").do("test", noop))

    assert transition(flow, "start:parent/test").step == "parent/test"


# --------------------------------------------------------- core/waitforitem_test.go


def test_wait_for_item_transition() -> None:
    """Ports core/waitforitem_test.go TestNewWaitForItem (2 possible destinations)."""
    flow = stepflow.new(named("test").wait_for("test", lambda ctx: True))

    wait = transition(flow, "start:test/testWaitFor")
    assert (wait.kind, wait.step) == ("wait_for", "test/testWaitFor")
    assert destination_events(wait) == ("completed:test/testWaitFor", "start:test/testWaitFor")


def test_wait_for_condition_met() -> None:
    """Ports core/waitforitem_test.go TestWaitForItem_ConditionMet."""
    calls: list[str] = []
    flow = stepflow.new(named("test").wait_for("test", record(calls, "cond", True)))

    state = flow.apply(None)

    assert calls == ["cond"]
    assert flow.is_completed(state)


def test_wait_for_condition_not_met_polls_again() -> None:
    """Ports core/waitforitem_test.go TestWaitForItem_ConditionNotMet (back to its start)."""
    calls: list[str] = []
    flow = stepflow.new(named("test").wait_for("test", record(calls, "cond", False)))

    state = None
    for expected_polls in (1, 2, 3):
        state = flow.apply(state)
        assert state.events == ("start:test/testWaitFor",)
        assert state.status == "running"
        assert calls == ["cond"] * expected_polls


def test_wait_for_error() -> None:
    """Ports core/waitforitem_test.go TestWaitForItem_Error."""
    expected = RuntimeError("test error")
    flow = stepflow.new(named("test").wait_for("test", fail_with([], "cond", expected)))

    with pytest.raises(FlowFailed) as caught:
        flow.apply(None)

    assert caught.value.__cause__ is expected
    assert caught.value.state.events == ("start:test/testWaitFor",)


# ------------------------------------------------------------ core/caseitem_test.go


def test_case_item_transition() -> None:
    """Ports core/caseitem_test.go TestNewCaseItem.

    Go counts 3 transitions for a Case wrapping one FuncItem; here the body is a step
    list with its own ``steps`` scope (two more static transitions), but the
    condition's transition has the same 2 possible destinations.
    """
    flow = stepflow.new(named("test").case("test", lambda ctx: True, steps().do("child", noop)))

    case = transition(flow, "start:test/testCase")
    assert (case.kind, case.step) == ("case", "test/testCase")
    assert destination_events(case) == ("start:test/testCase/steps", "completed:test/testCase")
    case_sources = [
        t.source
        for t in flow.definition.transitions
        if t.source.startswith(("start:test/testCase", "completed:test/testCase/"))
    ]
    assert case_sources == [
        "start:test/testCase",
        "completed:test/testCase/steps",
        "start:test/testCase/steps",
        "start:test/testCase/steps/child",
        "completed:test/testCase/steps/child",
    ]


def test_case_condition_true_runs_the_child() -> None:
    """Ports core/caseitem_test.go TestCaseItem_ConditionTrue (go: 3 applies)."""
    calls: list[str] = []
    flow = stepflow.new(
        named("test").case(
            "test", record(calls, "cond", True), steps().do("child", record(calls, "child"))
        )
    )

    _, applies = apply_n(flow, 3)

    assert calls == ["cond", "child"]
    assert applies == 2


def test_case_condition_false_skips_the_child() -> None:
    """Ports core/caseitem_test.go TestCaseItem_ConditionFalse (completed after one apply)."""
    calls: list[str] = []
    flow = stepflow.new(
        named("test").case(
            "test", record(calls, "cond", False), steps().do("child", record(calls, "child"))
        )
    )

    state = flow.apply(None)

    assert calls == ["cond"]
    assert flow.is_completed(state)


def test_case_condition_error() -> None:
    """Ports core/caseitem_test.go TestCaseItem_Error."""
    expected = RuntimeError("test error")
    calls: list[str] = []
    flow = stepflow.new(
        named("test").case(
            "test", fail_with(calls, "cond", expected), steps().do("child", record(calls, "child"))
        )
    )

    with pytest.raises(FlowFailed) as caught:
        flow.apply(None)

    assert caught.value.__cause__ is expected
    assert calls == ["cond"]
    assert caught.value.state.events == ("start:test/testCase",)


# ------------------------------------------------------- core/loopuntilitem_test.go


def test_loop_until_item_transition() -> None:
    """Ports core/loopuntilitem_test.go TestNewLoopUntilItem (the condition's 2 destinations)."""
    flow = stepflow.new(
        named("test").loop_until("test", lambda ctx: True, steps().do("child", noop))
    )

    start = transition(flow, "start:test/testLoopUntil")
    assert start.is_static
    assert destination_events(start) == ("start:test/testLoopUntil/steps",)
    loop = transition(flow, "completed:test/testLoopUntil/steps")
    assert (loop.kind, loop.step) == ("loop_until", "test/testLoopUntil")
    assert destination_events(loop) == (
        "completed:test/testLoopUntil",
        "start:test/testLoopUntil/steps",
    )


def test_loop_until_condition_true_runs_the_body_once() -> None:
    """Ports core/loopuntilitem_test.go TestLoopUntilItem_ConditionTrue (go: 2 applies)."""
    calls: list[str] = []
    flow = stepflow.new(
        named("test").loop_until(
            "test", record(calls, "cond", True), steps().do("child", record(calls, "child"))
        )
    )

    _, applies = apply_n(flow, 2)

    assert calls == ["child", "cond"]
    assert applies == 2


def test_loop_until_multiple_iterations() -> None:
    """Ports core/loopuntilitem_test.go TestLoopUntilItem_MultipleIterations (go: 6 applies)."""
    calls: list[str] = []

    def cond(ctx: Any) -> bool:
        calls.append("cond")
        return calls.count("child") >= 3

    flow = stepflow.new(
        named("test").loop_until("test", cond, steps().do("child", record(calls, "child")))
    )

    _, applies = apply_n(flow, 6)

    assert calls == ["child", "cond"] * 3
    assert applies == 6


def test_loop_until_child_error() -> None:
    """Ports core/loopuntilitem_test.go TestLoopUntilItem_ChildError."""
    expected = RuntimeError("test error")
    calls: list[str] = []
    flow = stepflow.new(
        named("test").loop_until(
            "test",
            record(calls, "cond", True),
            steps().do("child", fail_with(calls, "child", expected)),
        )
    )

    with pytest.raises(FlowFailed) as caught:
        flow.apply(None)

    assert caught.value.__cause__ is expected
    assert calls == ["child"]
    assert caught.value.state.events == ("start:test/testLoopUntil/steps/child",)


def test_loop_until_condition_error() -> None:
    """Ports core/loopuntilitem_test.go TestLoopUntilItem_ConditionError (fails on apply 2)."""
    expected = RuntimeError("condition error")
    calls: list[str] = []
    flow = stepflow.new(
        named("test").loop_until(
            "test", fail_with(calls, "cond", expected), steps().do("child", record(calls, "child"))
        )
    )

    failed, at_apply = apply_until_failed(flow, 2)

    assert failed.__cause__ is expected
    assert at_apply == 2
    assert calls == ["child", "cond"]
    assert failed.state.events == ("completed:test/testLoopUntil/steps",)
    assert failed.state.error is not None
    assert failed.state.error.step == "test/testLoopUntil"


# ----------------------------------------------------------- core/retryitem_test.go


def test_retry_item_transition_has_a_retry_destination() -> None:
    """Ports core/retryitem_test.go TestNewRetryItem (a "retry" possible destination).

    stepflow adds the "retry" destination to handler transitions only (static ones
    cannot fail); the retry group is the ``childRetry`` scope itself.
    """
    flow = stepflow.new(
        named("test").retry("child", lambda ctx, exc: True, steps().do("child", noop))
    )

    do = transition(flow, "start:test/childRetry/child")
    assert do.retry_scopes == ("test/childRetry",)
    assert stepflow.Destination("start:test/childRetry", "retry") in do.destinations
    assert all(
        "retry" not in {d.reason for d in t.destinations}
        for t in flow.definition.transitions
        if t.is_static
    )


def test_retry_success_after_one_failure() -> None:
    """Ports core/retryitem_test.go TestRetriableTransition_Success (go: 2 applies)."""
    first_error = RuntimeError("first attempt error")
    calls: list[str] = []
    seen: list[BaseException] = []

    def child(ctx: Any) -> None:
        calls.append("child")
        if calls.count("child") == 1:
            raise first_error

    def on_error(ctx: Any, exc: BaseException) -> bool:
        calls.append("on_error")
        seen.append(exc)
        return True

    flow = stepflow.new(named("test").retry("child", on_error, steps().do("child", child)))

    _, applies = apply_n(flow, 2)

    assert calls == ["child", "on_error", "child"]
    assert seen == [first_error]
    assert seen[0] is first_error
    assert applies == 2


def test_retry_no_retry_fails_with_the_original_error() -> None:
    """Ports core/retryitem_test.go TestRetriableTransition_NoRetry."""
    expected = RuntimeError("test error")
    seen: list[BaseException] = []

    def on_error(ctx: Any, exc: BaseException) -> bool:
        seen.append(exc)
        return False

    flow = stepflow.new(
        named("test").retry(
            "child", on_error, steps().do("child", fail_with([], "child", expected))
        )
    )

    with pytest.raises(FlowFailed) as caught:
        flow.apply(None)

    assert caught.value.__cause__ is expected
    assert len(seen) == 1
    assert seen[0] is expected
    assert caught.value.state.events == ("start:test/childRetry/child",)
    assert caught.value.state.error is not None
    assert caught.value.state.error.step == "test/childRetry/child"


def test_retry_error_handler_error_replaces_the_original() -> None:
    """Ports core/retryitem_test.go TestRetriableTransition_ErrorHandlerError."""
    func_error = RuntimeError("function error")
    handler_error = RuntimeError("handler error")
    seen: list[BaseException] = []

    def on_error(ctx: Any, exc: BaseException) -> bool:
        seen.append(exc)
        raise handler_error

    flow = stepflow.new(
        named("test").retry(
            "child", on_error, steps().do("child", fail_with([], "child", func_error))
        )
    )

    with pytest.raises(FlowFailed) as caught:
        flow.apply(None)

    assert caught.value.__cause__ is handler_error
    assert len(seen) == 1
    assert seen[0] is func_error
    assert caught.value.state.error == stepflow.ErrorRecord(
        "RuntimeError", "handler error", "test/childRetry"
    )
    assert caught.value.state.events == ("start:test/childRetry/child",)


# ---------------------------------------------------------- core/integration_test.go


def test_complex_workflow() -> None:
    """Ports core/integration_test.go TestComplexWorkflow (go: 7 applies)."""
    calls: list[str] = []

    def case_condition(ctx: Any) -> bool:
        calls.append("case-condition")
        return True

    def loop_condition(ctx: Any) -> bool:
        calls.append("loop-condition")
        return calls.count("loop-condition") >= 2

    func = record(calls, "func")
    flow = stepflow.new(
        steps()
        .case("case", case_condition, steps().do("func", func))
        .loop_until("loop", loop_condition, steps().do("func", func))
    )

    state, applies = apply_n(flow, 7)

    assert calls == [
        "case-condition",
        "func",  # from the case
        "func",  # first loop iteration
        "loop-condition",
        "func",  # second loop iteration
        "loop-condition",
    ]
    assert applies == 6
    assert state.events == ("completed:steps",)


def test_error_handling_retries_then_gives_up() -> None:
    """Ports core/integration_test.go TestErrorHandling (3 retries, then the error)."""
    expected = RuntimeError("test error")
    calls: list[str] = []

    def on_error(ctx: Any, exc: BaseException) -> bool:
        assert exc is expected
        calls.append("on_error")
        return calls.count("on_error") < 3

    flow = stepflow.new(
        steps().retry("func", on_error, steps().do("func", fail_with(calls, "func", expected)))
    )

    failed, at_apply = apply_until_failed(flow, 3)

    assert failed.__cause__ is expected
    assert at_apply == 3
    assert calls == ["func", "on_error"] * 3


def test_wait_for_with_case() -> None:
    """Ports core/integration_test.go TestWaitForWithCase (go: 6 applies)."""
    calls: list[str] = []

    def wait(ctx: Any) -> bool:
        calls.append("wait")
        return calls.count("wait") >= 3

    def case_condition(ctx: Any) -> bool:
        calls.append("case-condition")
        return calls.count("wait") >= 3

    flow = stepflow.new(
        steps()
        .wait_for("wait", wait)
        .case("case", case_condition, steps().do("func", record(calls, "func")))
    )

    _, applies = apply_n(flow, 6)

    assert calls == ["wait", "wait", "wait", "case-condition", "func"]
    assert applies == 5


# ------------- stepflow_test.go, dsl_test.go, builder/builder_test.go, <item>_test.go


def exchange(name: str, result: Any = None) -> Callable[[list[str]], Any]:
    """Return a handler appending ``name`` to the exchange the ctx carries (Go's ``ex``)."""

    def handler(ex: list[str]) -> Any:
        ex.append(name)
        return result

    return handler


def log_exchange(ex: list[str]) -> None:
    """Go's ``logExchange``: reads the exchange, changes nothing."""
    assert isinstance(ex, list)


def test_dsl_steps() -> None:
    """Ports TestSteps (stepflow_test.go, dsl_test.go, stepsitem_test.go, builder/builder_test.go).

    Go needs 8 applies with the builder (17 in the first stepflow_test.go version).
    """
    step_d = (
        steps()
        .do("stepA", exchange("stepA"))
        .do("stepB", exchange("stepB"))
        .do("stepA-bis", exchange("stepA"))
    )
    flow = stepflow.new(
        named("TestSteps")
        .do("stepA", exchange("stepA"))
        .do("stepB", exchange("stepB"))
        .do("stepC", exchange("stepC"))
        .steps("stepD", step_d)
        .do("logExchange", log_exchange)
    )
    ex: list[str] = []

    _, applies = apply_n(flow, 8, ex)

    assert ex == ["stepA", "stepB", "stepC", "stepA", "stepB", "stepA"]
    assert applies == 7  # six steps and logExchange
    assert "start:TestSteps/stepD/stepA-bis" in flow.definition.table


def test_dsl_steps_with_async_handlers() -> None:
    """Ports TestSteps (builder/builder_test.go) with ``async def`` handlers and ``apply_async``."""

    def async_exchange(name: str) -> Callable[[list[str]], Any]:
        async def handler(ex: list[str]) -> None:
            await asyncio.sleep(0)
            ex.append(name)

        return handler

    flow = stepflow.new(
        named("TestSteps")
        .do("stepA", async_exchange("stepA"))
        .do("stepB", async_exchange("stepB"))
        .do("stepC", async_exchange("stepC"))
        .steps(
            "stepD",
            steps()
            .do("stepA", async_exchange("stepA"))
            .do("stepB", async_exchange("stepB"))
            .do("stepA-bis", async_exchange("stepA")),
        )
        .do("logExchange", log_exchange)
    )

    async def drive(ex: list[str]) -> int:
        state: State | None = None
        applies = 0
        while not flow.is_completed(state):
            assert applies < 8
            state = await flow.apply_async(state, ex)
            applies += 1
        return applies

    ex: list[str] = []
    assert asyncio.run(drive(ex)) == 7
    assert ex == ["stepA", "stepB", "stepC", "stepA", "stepB", "stepA"]

    ex_sync: list[str] = []
    apply_n(flow, 8, ex_sync)  # the sync driver runs async handlers too
    assert ex_sync == ex


def test_dsl_wait_for() -> None:
    """Ports TestWaitFor (stepflow_test.go, dsl_test.go, waitforitem_test.go, builder) (go: 6)."""

    def ex_len_is_acceptable(ex: list[str]) -> bool:
        ex.append("A")
        return len(ex) > 3

    flow = stepflow.new(
        named("TestWaitFor")
        .wait_for("growEx", ex_len_is_acceptable)
        .do("logExchange", log_exchange)
    )
    ex: list[str] = []

    _, applies = apply_n(flow, 6, ex)

    assert ex == ["A", "A", "A", "A"]
    assert applies == 5  # four polls and logExchange


def test_dsl_retry() -> None:
    """Ports TestRetry (stepflow_test.go, dsl_test.go, retryitem_test.go) and TestBuilderRetry.

    go-stepflow asserts completion after 10 applies.

    The retry restarts its whole group: ``addA`` runs again before each new attempt.
    """
    calls: list[str] = []

    def add_a(ex: list[str]) -> None:
        calls.append("addA")
        ex.append("A")

    def return_error_sometimes(ex: list[str]) -> None:
        calls.append("stepWithError")
        if len(ex) < 3:
            raise RuntimeError("error")

    def log_error_and_retry(ex: list[str], exc: BaseException) -> bool:
        calls.append(f"on_error({exc})")
        return True

    def log(name: str) -> Callable[[list[str]], None]:
        return record(calls, name)

    flow = stepflow.new(
        named("TestRetry")
        .do("logInitialExchange", log("logInitialExchange"))
        .retry(
            "growEx",
            log_error_and_retry,
            steps()
            .do("addA", add_a)
            .do("stepWithError", return_error_sometimes)
            .do("logExchange", log("growEx/logExchange")),
        )
        .do("logExchange", log("logExchange"))
    )
    ex: list[str] = []

    _, applies = apply_n(flow, 10, ex)

    assert calls == [
        "logInitialExchange",
        "addA",
        "stepWithError",
        "on_error(error)",
        "addA",
        "stepWithError",
        "on_error(error)",
        "addA",
        "stepWithError",
        "growEx/logExchange",
        "logExchange",
    ]
    assert ex == ["A", "A", "A"]
    assert applies == 9  # one per step handler; on_error runs within the failing apply


def test_dsl_loop_until() -> None:
    """Ports TestLoopUntil (stepflow_test.go, dsl_test.go, loopuntilitem_test.go, builder).

    go-stepflow asserts completion after 33 applies.
    """
    calls: list[str] = []

    def add_a(ex: list[str]) -> None:
        calls.append("addA")
        ex.append("A")

    def ex_len_is_acceptable(ex: list[str]) -> bool:
        calls.append("cond")
        return len(ex) > 10

    flow = stepflow.new(
        named("TestLoopUntil")
        .do("addA", add_a)
        .loop_until(
            "growEx",
            ex_len_is_acceptable,
            steps().do("addA", add_a).do("logExchange", record(calls, "growEx/logExchange")),
        )
        .do("logExchange", record(calls, "logExchange"))
    )
    ex: list[str] = []

    _, applies = apply_n(flow, 33, ex)

    assert len(ex) == 11
    assert calls == ["addA", *(["addA", "growEx/logExchange", "cond"] * 10), "logExchange"]
    assert applies == 32


def test_dsl_case() -> None:
    """Ports TestCase (stepflow_test.go, dsl_test.go, caseitem_test.go) and TestBuilderCase.

    go-stepflow asserts completion after 7 applies.
    """
    conditions: list[str] = []

    def always(result: bool) -> Callable[[list[str]], bool]:
        return record(conditions, f"always{result}", result)

    flow = stepflow.new(
        named("TestCase")
        .do("beforeTrueCase", exchange("beforeTrueCase"))
        .case(
            "ifTrue",
            always(True),
            steps().do("stepA", exchange("stepA")).do("stepB", exchange("stepB")),
        )
        .case(
            "ifFalse",
            always(False),
            steps().do("ifFalseBranch", exchange("this will not be executed")),
        )
        .do("afterIfFalse", exchange("afterIfFalse"))
    )
    ex: list[str] = []

    _, applies = apply_n(flow, 7, ex)

    assert ex == ["beforeTrueCase", "stepA", "stepB", "afterIfFalse"]
    assert conditions == ["alwaysTrue", "alwaysFalse"]
    assert applies == 6


def test_go_saved_positions_resume_at_the_same_next_step() -> None:
    """Ports TestCase (builder/builder_test.go) by resuming from each state go-stepflow saves.

    A go-stepflow ``Apply`` stops right after a handler transition, so its saved
    states rest at ``completed:<step>`` (or at the destination of a condition).
    Loaded with ``stepflow.loads``, each must run the same next handler Go would.
    """
    calls: list[str] = []
    flow = stepflow.new(
        named("TestCase")
        .do("beforeTrueCase", record(calls, "beforeTrueCase"))
        .case(
            "ifTrue",
            record(calls, "ifTrue?", True),
            steps().do("stepA", record(calls, "stepA")).do("stepB", record(calls, "stepB")),
        )
        .case("ifFalse", record(calls, "ifFalse?", False), steps().do("ifFalseBranch", noop))
        .do("afterIfFalse", record(calls, "afterIfFalse"))
    )
    go_states_and_next_handler = [
        (None, "beforeTrueCase"),
        (["completed:TestCase/beforeTrueCase"], "ifTrue?"),
        (["start:TestCase/ifTrueCase/steps"], "stepA"),
        (["completed:TestCase/ifTrueCase/steps/stepA"], "stepB"),
        (["completed:TestCase/ifTrueCase/steps/stepB"], "ifFalse?"),
        (["completed:TestCase/ifFalseCase"], "afterIfFalse"),
    ]

    for go_state, next_handler in go_states_and_next_handler:
        calls.clear()
        state = None if go_state is None else stepflow.loads(json.dumps(go_state), flow.definition)
        flow.apply(state)
        assert calls == [next_handler], go_state

    calls.clear()
    last = stepflow.loads('["completed:TestCase/afterIfFalse"]', flow.definition)
    assert not flow.is_completed(last)
    assert flow.is_completed(flow.apply(last))
    assert calls == []
    assert flow.is_completed(stepflow.loads('["completed:TestCase"]', flow.definition))


# -------------------------------- retry semantics of core/retryitem.go, nested retries


def test_nested_retry_declined_passes_the_original_error_outward() -> None:
    """Ports core/retryitem_test.go TestRetriableTransition_NoRetry to nested retries.

    go-stepflow wraps a retry's transitions in each enclosing retry: the innermost
    handler is asked first and, declining, hands the original error outward.
    """
    expected = RuntimeError("test error")
    calls: list[str] = []
    seen: list[BaseException] = []

    def handler(name: str) -> Callable[[Any, BaseException], bool]:
        def on_error(ctx: Any, exc: BaseException) -> bool:
            calls.append(name)
            seen.append(exc)
            return False

        return on_error

    flow = stepflow.new(
        named("test").retry(
            "outer",
            handler("outer"),
            steps().retry(
                "inner", handler("inner"), steps().do("child", fail_with(calls, "child", expected))
            ),
        )
    )

    with pytest.raises(FlowFailed) as caught:
        flow.apply(None)

    assert calls == ["child", "inner", "outer"]
    assert all(exc is expected for exc in seen)
    assert caught.value.__cause__ is expected
    do = transition(flow, "start:test/outerRetry/innerRetry/child")
    assert do.retry_scopes == ("test/outerRetry/innerRetry", "test/outerRetry")


def test_nested_retry_handler_error_goes_to_the_enclosing_retry() -> None:
    """Ports core/retryitem_test.go TestRetriableTransition_ErrorHandlerError to nested retries.

    The inner handler's error is what the outer handler sees; the outer handler
    restarting its group reruns the steps before the inner retry too.
    """
    func_error = RuntimeError("function error")
    handler_error = RuntimeError("handler error")
    calls: list[str] = []
    outer_seen: list[BaseException] = []

    def inner(ctx: Any, exc: BaseException) -> bool:
        assert exc is func_error
        calls.append("inner")
        raise handler_error

    def outer(ctx: Any, exc: BaseException) -> bool:
        calls.append("outer")
        outer_seen.append(exc)
        return len(outer_seen) < 2

    flow = stepflow.new(
        named("test").retry(
            "outer",
            outer,
            steps()
            .do("before", record(calls, "before"))
            .retry("inner", inner, steps().do("child", fail_with(calls, "child", func_error))),
        )
    )

    failed, at_apply = apply_until_failed(flow, 4)

    assert calls == ["before", "child", "inner", "outer", "before", "child", "inner", "outer"]
    assert at_apply == 4
    assert all(exc is handler_error for exc in outer_seen)
    assert failed.__cause__ is handler_error
    assert failed.state.error == stepflow.ErrorRecord(
        "RuntimeError", "handler error", "test/outerRetry/innerRetry"
    )


def test_retry_covers_conditions_in_its_group() -> None:
    """Ports core/retryitem.go's wrapping of every transition: a failing condition is retried."""
    calls: list[str] = []

    def flaky_condition(ctx: Any) -> bool:
        calls.append("ready?")
        if calls.count("ready?") == 1:
            raise RuntimeError("not reachable")
        return True

    def on_error(ctx: Any, exc: BaseException) -> bool:
        calls.append(f"on_error({exc})")
        return True

    flow = stepflow.new(
        named("test").retry(
            "group",
            on_error,
            steps().do("first", record(calls, "first")).wait_for("ready", flaky_condition),
        )
    )

    wait = transition(flow, "start:test/groupRetry/readyWaitFor")
    assert wait.retry_scopes == ("test/groupRetry",)
    _, applies = apply_n(flow, 5)
    assert calls == ["first", "ready?", "on_error(not reachable)", "first", "ready?"]
    assert applies == 4


# ----------------------------------------------------- the seed's deployment pipeline


class DeployWorld:
    """The pipeline's ctx: records handler calls; each wait_for is met on its second poll."""

    def __init__(self, deploy: bool = True, valid: bool = True) -> None:
        self.calls: list[str] = []
        self.deploy = deploy
        self.valid = valid


def deploy_do(name: str) -> Callable[[DeployWorld], None]:
    def handler(ctx: DeployWorld) -> None:
        ctx.calls.append(name)
        if name == "validatePostDeployActualState" and not ctx.valid:
            raise RuntimeError("post-deploy actual state is not the desired one")

    return handler


def deploy_wait(name: str) -> Callable[[DeployWorld], bool]:
    def cond(ctx: DeployWorld) -> bool:
        ctx.calls.append(name)
        return ctx.calls.count(name) >= 2

    return cond


def should_deploy(ctx: DeployWorld) -> bool:
    ctx.calls.append("shouldDeploy")
    return ctx.deploy


def deploy_flow() -> Flow:
    return stepflow.new(
        named("deploy/v1")
        .do("getPreActualState", deploy_do("getPreActualState"))
        .wait_for("waitForPreActualState", deploy_wait("waitForPreActualState"))
        .case(
            "deploy",
            should_deploy,
            steps()
            .do("createDeployRequest", deploy_do("createDeployRequest"))
            .wait_for("waitForAcceptedDeployRequest", deploy_wait("waitForAcceptedDeployRequest"))
            .wait_for("monitorDeploymentProgress", deploy_wait("monitorDeploymentProgress"))
            .do("getPostActualState", deploy_do("getPostActualState"))
            .wait_for("waitForPostActualState", deploy_wait("waitForPostActualState"))
            .do("validatePostDeployActualState", deploy_do("validatePostDeployActualState")),
        )
    )


def test_deploy_pipeline_has_go_stepflow_event_names() -> None:
    """The seed's deploy/v1 pipeline compiles to go-stepflow's events and handler transitions."""
    flow = deploy_flow()
    base = "deploy/v1"
    inner = f"{base}/deployCase/steps"

    handler_transitions = {
        t.source: (t.kind, destination_events(t)) for t in flow.definition.handler_transitions()
    }

    assert handler_transitions == {
        f"start:{base}/getPreActualState": ("do", (f"completed:{base}/getPreActualState",)),
        f"start:{base}/waitForPreActualStateWaitFor": (
            "wait_for",
            (
                f"completed:{base}/waitForPreActualStateWaitFor",
                f"start:{base}/waitForPreActualStateWaitFor",
            ),
        ),
        f"start:{base}/deployCase": (
            "case",
            (f"start:{inner}", f"completed:{base}/deployCase"),
        ),
        f"start:{inner}/createDeployRequest": ("do", (f"completed:{inner}/createDeployRequest",)),
        f"start:{inner}/waitForAcceptedDeployRequestWaitFor": (
            "wait_for",
            (
                f"completed:{inner}/waitForAcceptedDeployRequestWaitFor",
                f"start:{inner}/waitForAcceptedDeployRequestWaitFor",
            ),
        ),
        f"start:{inner}/monitorDeploymentProgressWaitFor": (
            "wait_for",
            (
                f"completed:{inner}/monitorDeploymentProgressWaitFor",
                f"start:{inner}/monitorDeploymentProgressWaitFor",
            ),
        ),
        f"start:{inner}/getPostActualState": ("do", (f"completed:{inner}/getPostActualState",)),
        f"start:{inner}/waitForPostActualStateWaitFor": (
            "wait_for",
            (
                f"completed:{inner}/waitForPostActualStateWaitFor",
                f"start:{inner}/waitForPostActualStateWaitFor",
            ),
        ),
        f"start:{inner}/validatePostDeployActualState": (
            "do",
            (f"completed:{inner}/validatePostDeployActualState",),
        ),
    }
    assert "start:deploy/v1/deployCase/steps/createDeployRequest" in flow.definition.events
    assert flow.definition.start_event == "start:deploy/v1"
    assert flow.definition.completed_event == "completed:deploy/v1"
    assert transition(flow, f"completed:{inner}").destinations == (
        stepflow.Destination(f"completed:{base}/deployCase", "static"),
    )


def test_deploy_pipeline_runs_end_to_end() -> None:
    """The seed's deploy/v1 pipeline runs every step in order, resting at go-stepflow events."""
    flow = deploy_flow()
    ctx = DeployWorld()
    positions: list[str] = []

    state: State | None = None
    while not flow.is_completed(state):
        assert len(positions) < 20
        state = flow.apply(state, ctx)
        positions.append(state.events[0])

    assert ctx.calls == [
        "getPreActualState",
        "waitForPreActualState",
        "waitForPreActualState",
        "shouldDeploy",
        "createDeployRequest",
        "waitForAcceptedDeployRequest",
        "waitForAcceptedDeployRequest",
        "monitorDeploymentProgress",
        "monitorDeploymentProgress",
        "getPostActualState",
        "waitForPostActualState",
        "waitForPostActualState",
        "validatePostDeployActualState",
    ]
    inner = "deploy/v1/deployCase/steps"
    assert positions == [
        "start:deploy/v1/waitForPreActualStateWaitFor",
        "start:deploy/v1/waitForPreActualStateWaitFor",
        "start:deploy/v1/deployCase",
        f"start:{inner}/createDeployRequest",
        f"start:{inner}/waitForAcceptedDeployRequestWaitFor",
        f"start:{inner}/waitForAcceptedDeployRequestWaitFor",
        f"start:{inner}/monitorDeploymentProgressWaitFor",
        f"start:{inner}/monitorDeploymentProgressWaitFor",
        f"start:{inner}/getPostActualState",
        f"start:{inner}/waitForPostActualStateWaitFor",
        f"start:{inner}/waitForPostActualStateWaitFor",
        f"start:{inner}/validatePostDeployActualState",
        "completed:deploy/v1",
    ]
    assert flow.apply(state, ctx) == state
    assert len(ctx.calls) == 13


def test_deploy_pipeline_skips_the_deploy_case() -> None:
    """The seed's deploy/v1 pipeline, already at the desired version: the case body is skipped."""
    flow = deploy_flow()
    ctx = DeployWorld(deploy=False)

    state: State | None = None
    for _ in range(4):
        state = flow.apply(state, ctx)

    assert flow.is_completed(state)
    assert ctx.calls == [
        "getPreActualState",
        "waitForPreActualState",
        "waitForPreActualState",
        "shouldDeploy",
    ]


def test_deploy_pipeline_failed_validation_keeps_its_position() -> None:
    """The seed's deploy/v1 pipeline: a failing validation fails the run at that step."""
    flow = deploy_flow()
    ctx = DeployWorld(valid=False)

    failed, at_apply = apply_until_failed(flow, 20, ctx)

    assert at_apply == 13
    assert isinstance(failed.__cause__, RuntimeError)
    assert failed.state.events == (
        "start:deploy/v1/deployCase/steps/validatePostDeployActualState",
    )
    assert failed.state.error is not None
    assert failed.state.error.step == "deploy/v1/deployCase/steps/validatePostDeployActualState"
    with pytest.raises(FlowFailed):  # a failed state stays failed
        flow.apply(failed.state, ctx)
    assert ctx.calls.count("validatePostDeployActualState") == 1
