"""Child runs in the core and in process: ``.call``, ``StartChild``, ``ChildEnded``.

The rules under test are those of ``stepflow.core.children``; the in-process
driver (``Flow.run`` running an inline child) and the scripted world
(``stepflow.testing``) answer a ``StartChild`` each their own way.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

import stepflow
from stepflow import (
    ChildEnded,
    ErrorRecord,
    EventReceived,
    HandlerRaised,
    HandlerReturned,
    StartChild,
    TimerFired,
    advance,
    codec,
)
from stepflow.core.checks import check_state
from stepflow.core.children import CHILD_FAILED, child_failure, with_children
from stepflow.core.messages import CallHandler, CancelRequested
from stepflow.errors import (
    ConfigurationError,
    CorruptStateError,
    DefinitionError,
    EffectError,
    FlowFailed,
    InterpreterError,
    LateEffectError,
    StateError,
)
from stepflow.flow import ChildContext
from stepflow.testing import Raises, Returns, simulate

T0 = 1_000.0
STEP = "p/v1/runCall"
CHILD_ERROR = ErrorRecord("ValueError", "disk full", "c/v1/copy")


def child_flow() -> stepflow.Flow:
    return stepflow.new(stepflow.named("c/v1").do("double", lambda ctx: ctx.input["n"] * 2))


def parent(flow: Any = "c/v1", **kwargs: Any) -> stepflow.Flow:
    return stepflow.new(stepflow.named("p/v1").call("run", flow, **kwargs).do("after", _after))


def _after(ctx: Any) -> str:
    return "after"


def started(flow: stepflow.Flow) -> tuple[stepflow.State, StartChild]:
    state, commands = advance(flow.definition, None, now=T0)
    (command,) = commands
    assert type(command) is StartChild
    return state, command


# ------------------------------------------------------------------ building


def test_a_call_step_has_the_call_suffix_and_names_its_child_flow_in_the_table() -> None:
    definition = parent().definition
    transition = definition.table[f"start:{STEP}"]
    assert (transition.kind, transition.step, transition.calls) == ("call", STEP, "c/v1")
    assert [d.reason for d in transition.destinations] == ["child run completed"]


def test_a_flow_object_is_called_by_its_name() -> None:
    assert parent(child_flow()).definition.table[f"start:{STEP}"].calls == "c/v1"


def test_the_child_flow_is_part_of_the_fingerprint() -> None:
    assert parent("c/v1").definition.fingerprint != parent("c/v2").definition.fingerprint
    assert parent("c/v1").definition.fingerprint == parent(child_flow()).definition.fingerprint


@pytest.mark.parametrize(
    ("flow", "kwargs", "says"),
    [
        (42, {}, "pass a stepflow.Flow"),
        ("a:b", {}, "names no valid flow"),
        ("", {}, "names no valid flow"),
        ("c/v1", {"input": 3}, "the input of call"),
        ("c/v1", {"id": "fixed"}, "the id of call"),
    ],
)
def test_a_bad_call_is_a_definition_error_naming_the_step(
    flow: Any, kwargs: dict[str, Any], says: str
) -> None:
    with pytest.raises(DefinitionError, match=says) as caught:
        parent(flow, **kwargs)
    assert caught.value.path == STEP


def test_the_call_spec_is_its_input_handler() -> None:
    call = stepflow.steps().call("run", "c/v1", input=lambda ctx: {"n": ctx}).items[0]
    assert call(4) == {"n": 4}
    assert stepflow.steps().call("run", "c/v1").items[0](4) is None


# ------------------------------------------------------------------ the core's rules


def test_reaching_a_call_rests_with_one_start_child_in_flight() -> None:
    state, command = started(parent())
    assert command == StartChild(1, "call", STEP, f"start:{STEP}", "c/v1")
    assert command.key == f"{STEP}#1"
    assert state.wake_at is None
    # Re-advancing a state with its command in flight issues the same command (a crash).
    assert advance(parent().definition, state)[1] == (command,)


def test_a_completed_child_gives_the_step_its_outputs_and_the_flow_goes_on() -> None:
    flow = parent()
    state, command = started(flow)
    ended = ChildEnded(command.id, "completed", {"c/v1/double": 4}, None, T0 + 1, "kid")
    state, commands = advance(flow.definition, state, [ended])
    assert state.outputs[STEP] == {"c/v1/double": 4}
    assert [c.kind for c in commands] == ["do"]


def test_a_child_with_no_output_keeps_what_the_step_had() -> None:
    flow = stepflow.new(
        stepflow.named("p/v1").loop_until(
            "again", lambda ctx: True, stepflow.steps().call("run", "c/v1")
        )
    )
    state, command = started(flow)
    state, commands = advance(flow.definition, state, [ChildEnded(command.id, "completed", 1)])
    state, commands = advance(flow.definition, state, [HandlerReturned(commands[0].id, False)])
    step = "p/v1/againLoopUntil/steps/runCall"
    state, _ = advance(flow.definition, state, [ChildEnded(commands[0].id, "completed", None)])
    assert state.outputs[step] == 1


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_a_child_that_did_not_complete_fails_the_step_with_child_failed(status: Any) -> None:
    flow = parent()
    state, command = started(flow)
    ended = ChildEnded(command.id, status, None, CHILD_ERROR, T0 + 1, "p#1")
    state, commands = advance(flow.definition, state, [ended])
    assert state.status == "failed"
    assert commands == ()
    assert state.error == ErrorRecord(
        CHILD_FAILED,
        f"child run 'p#1' of flow 'c/v1' {status}: ValueError: disk full (at c/v1/copy)",
        STEP,
    )


def test_the_failure_message_says_what_is_known() -> None:
    command = StartChild(1, "call", STEP, f"start:{STEP}", "c/v1")
    error = child_failure(command, ChildEnded(1, "cancelled"))
    assert error.message == "the child run of flow 'c/v1' cancelled"
    no_step = ErrorRecord("KeyError", "k", "")
    error = child_failure(command, ChildEnded(1, "failed", None, no_step))
    assert error.message == "the child run of flow 'c/v1' failed: KeyError: k"


def test_a_retry_starts_a_new_child_with_a_new_command() -> None:
    policy = stepflow.RetryPolicy(max_attempts=2, initial_interval=0)
    flow = stepflow.new(
        stepflow.named("p/v1").retry("again", policy, stepflow.steps().call("run", "c/v1"))
    )
    state, first = started(flow)
    state, commands = advance(flow.definition, state, [ChildEnded(first.id, "failed", at=T0)])
    (second,) = commands
    assert type(second) is StartChild
    assert second.id != first.id
    assert second.step == first.step
    state, _ = advance(flow.definition, state, [ChildEnded(second.id, "completed", "ok", at=T0)])
    assert state.status == "completed"


def test_a_catch_takes_a_child_failure_by_its_type() -> None:
    flow = stepflow.new(
        stepflow.named("p/v1").catch(
            "c",
            stepflow.steps().call("run", "c/v1"),
            stepflow.steps().do("h", lambda ctx: None),
            errors=stepflow.ChildFailed,
        )
    )
    state, command = started(flow)
    state, commands = advance(flow.definition, state, [ChildEnded(command.id, "failed")])
    assert [c.step for c in commands] == ["p/v1/cCatch/handler/h"]


def test_a_child_output_that_is_not_json_fails_the_step() -> None:
    flow = parent()
    state, command = started(flow)
    state, _ = advance(flow.definition, state, [ChildEnded(command.id, "completed", object())])
    assert state.error is not None
    assert state.error.type == "stepflow.errors.HandlerResultError"


def test_handler_answers_address_a_start_child_too() -> None:
    flow = parent()
    state, command = started(flow)
    returned, _ = advance(flow.definition, state, [HandlerReturned(command.id, 5)])
    assert returned.outputs[STEP] == 5
    raised, _ = advance(flow.definition, state, [HandlerRaised(command.id, CHILD_ERROR)])
    assert raised.error == CHILD_ERROR


def test_bad_child_answers_are_refused_and_the_state_is_unchanged() -> None:
    flow = parent()
    state, command = started(flow)
    with pytest.raises(EffectError, match="with a status among"):
        advance(flow.definition, state, [ChildEnded(command.id, "lost")])  # type: ignore[arg-type]
    with pytest.raises(EffectError, match="cannot answer call command"):
        advance(flow.definition, state, [TimerFired(command.id, T0)])
    moved, commands = advance(flow.definition, state, [ChildEnded(command.id, "completed")])
    with pytest.raises(EffectError, match="a ChildEnded answers a StartChild"):
        advance(flow.definition, moved, [ChildEnded(commands[0].id, "completed")])
    with pytest.raises(LateEffectError):
        advance(flow.definition, moved, [ChildEnded(command.id, "completed")])
    with pytest.raises(EffectError, match="a ChildEnded answers a StartChild"):
        with_children(moved, [ChildEnded("x", "lost")])  # type: ignore[arg-type]


def test_events_and_a_child_end_apply_in_one_batch() -> None:
    flow = stepflow.new(stepflow.named("p/v1").call("run", "c/v1").wait_event("go").do("x", _after))
    state, command = started(flow)
    batch = [EventReceived("go", "early", T0), ChildEnded(command.id, "completed", 1, at=T0)]
    state, commands = advance(flow.definition, state, batch)
    assert state.outputs["p/v1/goWaitEvent"] == "early"
    assert [c.kind for c in commands] == ["do"]


# ------------------------------------------------------------------ cancellation


def cleanup_flow() -> stepflow.Flow:
    return stepflow.new(
        stepflow.named("p/v1").finally_(
            "work",
            stepflow.steps().call("run", "c/v1"),
            stepflow.steps().do("release", lambda ctx: "released"),
        )
    )


def test_a_cancelled_parent_waits_for_its_child_then_unwinds() -> None:
    flow = cleanup_flow()
    state, command = started(flow)
    state, commands = advance(flow.definition, state, [CancelRequested("stop", T0)])
    assert state.status == "cancelling"
    assert commands == (command,)  # the child may be running: the shell cancels it
    ended = ChildEnded(command.id, "cancelled", None, ErrorRecord("x", "stop", "c"), T0)
    state, commands = advance(flow.definition, state, [ended])
    assert [c.step for c in commands] == ["p/v1/workFinally/cleanup/release"]
    state, _ = advance(flow.definition, state, [HandlerReturned(commands[0].id, "released")])
    assert (state.status, state.error and state.error.message) == ("cancelled", "stop")


def test_a_child_that_completes_while_its_parent_cancels_keeps_its_output() -> None:
    flow = cleanup_flow()
    state, command = started(flow)
    state, _ = advance(flow.definition, state, [CancelRequested("stop", T0)])
    state, _ = advance(flow.definition, state, [ChildEnded(command.id, "completed", 7, at=T0)])
    assert state.outputs["p/v1/workFinally/steps/runCall"] == 7


def test_a_call_waiting_for_its_backoff_is_dropped_at_once_by_a_cancellation() -> None:
    policy = stepflow.RetryPolicy(max_attempts=3, initial_interval=60)
    flow = stepflow.new(
        stepflow.named("p/v1").retry("again", policy, stepflow.steps().call("run", "c/v1"))
    )
    state, command = started(flow)
    state, commands = advance(flow.definition, state, [ChildEnded(command.id, "failed", at=T0)])
    assert state.wake_at is not None
    assert state.wake_at > T0 + 1
    assert type(commands[0]) is StartChild
    state, commands = advance(flow.definition, state, [CancelRequested("stop", T0 + 1)])
    assert (state.status, commands) == ("cancelled", ())


# ------------------------------------------------------------------ groups


def test_a_map_of_calls_collects_each_child_output_in_item_order() -> None:
    flow = stepflow.new(
        stepflow.named("p/v1").map("each", lambda ctx: [1, 2], stepflow.steps().call("run", "c/v1"))
    )
    state, commands = advance(flow.definition, None, now=T0)
    state, commands = advance(flow.definition, state, [HandlerReturned(commands[0].id, [1, 2])])
    assert [type(c) for c in commands] == [StartChild, StartChild]
    batch = [ChildEnded(c.id, "completed", c.step, at=T0) for c in reversed(commands)]
    state, _ = advance(flow.definition, state, batch)
    assert state.outputs["p/v1/eachMap"] == [
        "p/v1/eachMap/steps[0]/runCall",
        "p/v1/eachMap/steps[1]/runCall",
    ]


def test_a_failed_child_in_a_parallel_branch_fails_the_group() -> None:
    flow = stepflow.new(
        stepflow.named("p/v1").parallel(
            "both",
            {"a": stepflow.steps().call("run", "c/v1"), "b": stepflow.steps().do("x", _after)},
        )
    )
    state, commands = advance(flow.definition, None, now=T0)
    child = next(c for c in commands if type(c) is StartChild)
    other = next(c for c in commands if type(c) is CallHandler)
    batch = [ChildEnded(child.id, "failed", at=T0), HandlerReturned(other.id, 1, T0)]
    state, _ = advance(flow.definition, state, batch)
    assert state.status == "failed"
    assert state.error is not None
    assert state.error.type == CHILD_FAILED


# ------------------------------------------------------------------ checks and codec


def test_check_state_refuses_a_start_child_of_another_flow_or_a_call_without_one() -> None:
    flow = parent()
    state, command = started(flow)
    other = state._replace(in_flight=(command._replace(flow="elsewhere/v1"),), fingerprint="x")
    with pytest.raises(StateError, match="call of p/v1/runCall"):
        check_state(flow.definition, other)
    handler = CallHandler(1, "call", STEP, f"start:{STEP}", None)
    with pytest.raises(StateError, match="call of p/v1/runCall"):
        check_state(flow.definition, state._replace(in_flight=(handler,), fingerprint="x"))


def test_a_state_with_a_child_in_flight_survives_the_codec() -> None:
    flow = parent()
    state, _ = started(flow)
    text = codec.dumps(state)
    assert json.loads(text)["state"]["in_flight"][0]["flow"] == "c/v1"
    assert codec.loads(text, flow.definition) == state
    assert codec.structure_state(json.loads(text)) == state
    raw = json.loads(text)
    del raw["state"]["in_flight"][0]["flow"]
    with pytest.raises(CorruptStateError, match="has no child flow"):
        codec.loads(json.dumps(raw), flow.definition)


def test_child_ends_survive_the_journal() -> None:
    flow = parent()
    _, command = started(flow)
    for effect in (
        ChildEnded(command.id, "failed", None, CHILD_ERROR, T0, "kid"),
        ChildEnded(command.id, "completed", {"a": [1]}, None, None, ""),
    ):
        batch = codec.Batch("effects", T0, (effect,), (command,))
        assert codec.loads_batch(codec.dumps_batch(batch)) == batch
    # An output JSON cannot hold is journaled as the failure advance makes of it.
    odd = codec.Batch("effects", T0, (ChildEnded(command.id, "completed", {1j}),), (command,))
    (kept,) = codec.loads_batch(codec.dumps_batch(odd)).effects
    assert type(kept) is HandlerRaised
    assert kept.error.type == "stepflow.errors.HandlerResultError"
    text = codec.dumps_batch(codec.Batch("effects", T0, (ChildEnded(1, "failed"),), ()))
    with pytest.raises(CorruptStateError, match="malformed child outcome"):
        codec.loads_batch(text.replace('"failed"', '"lost"'))


# ------------------------------------------------------------------ Flow.run, in process


def test_flow_run_runs_an_inline_child_with_its_input() -> None:
    flow = parent(child_flow(), input=lambda ctx: {"n": 21})
    state = flow.run()
    assert state.outputs[STEP] == {"c/v1/double": 42}
    assert asyncio.run(flow.run_async()).outputs == state.outputs
    assert flow.apply(flow.apply()).outputs[STEP] == {"c/v1/double": 42}


def test_an_inline_child_sees_the_parents_context_and_its_own_input() -> None:
    class App:
        region = "eu"

    child = stepflow.new(stepflow.named("c/v1").do("r", lambda ctx: [ctx.region, ctx.input]))
    state = parent(child, input=lambda ctx: ctx.region * 2).run(None, App())
    assert state.outputs[STEP] == {"c/v1/r": ["eu", "eueu"]}
    assert repr(ChildContext(None, 1)) == "ChildContext(input=1, wrapped=None)"


def test_an_inline_child_that_fails_fails_the_step_and_a_retry_runs_it_again() -> None:
    runs: list[int] = []

    def flaky(ctx: Any) -> int:
        runs.append(1)
        if len(runs) == 1:
            raise ValueError("first time")
        return len(runs)

    child = stepflow.new(stepflow.named("c/v1").do("flaky", flaky))
    policy = stepflow.RetryPolicy(max_attempts=2, initial_interval=0)
    flow = stepflow.new(
        stepflow.named("p/v1").retry("again", policy, stepflow.steps().call("run", child))
    )
    assert flow.run().outputs["p/v1/againRetry/runCall"] == {"c/v1/flaky": 2}
    assert len(runs) == 2


def test_an_inline_child_that_fails_fails_the_parent_with_child_failed() -> None:
    child = stepflow.new(stepflow.named("c/v1").do("boom", _boom))
    for run in (parent(child).run, lambda: asyncio.run(parent(child).run_async())):
        with pytest.raises(FlowFailed) as caught:
            run()
        assert caught.value.state.error is not None
        assert caught.value.state.error.type == CHILD_FAILED
        assert "ValueError: boom" in caught.value.state.error.message


def _boom(ctx: Any) -> None:
    raise ValueError("boom")


def test_an_input_handler_that_raises_fails_the_step_and_starts_no_child() -> None:
    for run in (parent(child_flow(), input=_boom).run, parent("c/v1", input=_boom).run):
        with pytest.raises(FlowFailed) as caught:
            run()
        assert caught.value.state.error == ErrorRecord("ValueError", "boom", STEP)
    with pytest.raises(FlowFailed):
        asyncio.run(parent(child_flow(), input=_boom).run_async())


def test_a_child_by_name_needs_a_registry_in_memory() -> None:
    with pytest.raises(ConfigurationError, match="no registry"):
        parent("c/v1").run()


def test_a_child_resting_on_an_event_cannot_run_inline() -> None:
    child = stepflow.new(stepflow.named("c/v1").wait_event("go"))
    with pytest.raises(InterpreterError, match="rests until an event"):
        parent(child).run()


def test_a_cancelled_inline_child_is_reported_as_cancelled() -> None:
    flow = parent(child_flow())
    state, command = started(flow)
    cancelled = stepflow.State(
        "c/v1", "", ("start:c/v1",), "cancelled", CHILD_ERROR, (), 0,
        state.outputs, None, None, state.attempts, "", state.times, state.groups, (),
    )  # fmt: skip
    ended = flow._ended(command, child_flow(), cancelled)
    assert (ended.status, ended.error) == ("cancelled", CHILD_ERROR)


def test_no_interpreter_executes_a_start_child() -> None:
    flow = parent(child_flow())
    _, command = started(flow)
    with pytest.raises(InterpreterError, match="which no interpreter executes"):
        flow.interpreter.execute(command)
    with pytest.raises(InterpreterError, match="which no interpreter executes"):
        asyncio.run(flow.interpreter.execute_async(command))


# ------------------------------------------------------------------ scripted worlds


def test_a_script_answers_a_call_with_the_childs_end_without_running_it() -> None:
    flow = parent()
    key = ("call", STEP)
    trace = simulate(flow, {key: [Returns({"done": True})]})
    assert trace.final.outputs[STEP] == {"done": True}
    (ended,) = [s.effect for s in trace.steps if type(s.effect) is ChildEnded]
    assert (ended.status, ended.child) == ("completed", f"{STEP}#1")
    failed = simulate(flow, {key: [Raises("no capacity", "KeyError")]}).final
    assert failed.error is not None
    assert failed.error.message.endswith("failed: KeyError: no capacity (at c/v1)")


# ------------------------------------------------------------------ map(call=)


def test_a_map_with_call_runs_one_child_per_item_with_the_item_as_input() -> None:
    child = stepflow.new(stepflow.named("sq/v1").do("sq", lambda ctx: ctx.input**2))
    flow = stepflow.new(stepflow.named("p/v1").map("each", lambda ctx: [2, 3], call=child))
    state = flow.run()
    assert state.outputs["p/v1/eachMap"] == [{"sq/v1/sq": 4}, {"sq/v1/sq": 9}]
    transition = flow.definition.table["start:p/v1/eachMap/steps/eachCall"]
    assert (transition.kind, transition.calls) == ("call", "sq/v1")


@pytest.mark.parametrize("both", [True, False])
def test_a_map_takes_steps_or_call_not_both_nor_neither(both: bool) -> None:
    body = stepflow.steps().do("x", _after) if both else None
    with pytest.raises(DefinitionError, match="exactly one of steps") as caught:
        stepflow.steps().map("each", lambda ctx: [], body, call="c/v1" if both else None)
    assert caught.value.path == "each"


def test_a_scripted_flow_answers_calls_as_its_world_does() -> None:
    from stepflow.testing import ScriptedWorld, scripted_flow

    flow = parent()
    key = ("call", STEP)
    for outcome in (Returns({"v": 1}), Raises("down", "KeyError")):
        script = {key: [outcome]}
        in_world = simulate(flow, script).final
        try:
            by_flow = scripted_flow(flow.definition, ScriptedWorld(script)).run()
        except FlowFailed as failed:
            by_flow = failed.state
        assert (by_flow.status, by_flow.outputs.get(STEP)) == (
            in_world.status,
            in_world.outputs.get(STEP),
        )
        assert by_flow.error == in_world.error


def test_start_child_and_child_ended_compare_only_to_their_own_type() -> None:
    command = StartChild(1, "call", STEP, f"start:{STEP}", "c/v1")
    assert command != (1, "call", STEP, f"start:{STEP}", "c/v1")
    assert hash(command) == hash(StartChild(*command))
    ended = ChildEnded(1, "completed", {"a": [1]}, None, T0, "kid")
    assert ended != HandlerReturned(1, {"a": [1]}, T0)
    assert ended == ChildEnded(1, "completed", {"a": [1]}, None, T0, "kid")
    assert hash(ended) == hash(ChildEnded(1, "completed", {"a": [1]}, None, T0, "kid"))


def test_a_child_output_json_cannot_hold_is_not_kept_while_its_parent_cancels() -> None:
    flow = cleanup_flow()
    state, command = started(flow)
    state, _ = advance(flow.definition, state, [CancelRequested("stop", T0)])
    state, commands = advance(flow.definition, state, [ChildEnded(command.id, "completed", {1j})])
    assert "p/v1/workFinally/steps/runCall" not in state.outputs
    assert [c.step for c in commands] == ["p/v1/workFinally/cleanup/release"]
