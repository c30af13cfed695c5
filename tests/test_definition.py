"""Compiling specs: names, scopes, events, the transition table, checks."""

from __future__ import annotations

import pickle

import pytest

import stepflow
from stepflow.core.definition import Destination, FlowDefinition, Transition


def noop(ctx: object) -> None:
    return None


def yes(ctx: object) -> bool:
    return True


def deploy_spec() -> stepflow.Steps:
    return (
        stepflow.named("deploy/v1")
        .do("getPreActualState", noop)
        .wait_for("waitForPreActualState", yes)
        .case(
            "shouldDeploy",
            yes,
            stepflow.steps()
            .do("createDeployRequest", noop)
            .wait_for("waitForAcceptedDeployRequest", yes),
        )
    )


def test_events_use_go_stepflow_names_character_for_character() -> None:
    flow = stepflow.new(
        stepflow.named("deploy/v1").case("shouldDeploy", yes, stepflow.steps().do("x", noop))
    )
    assert "start:deploy/v1/shouldDeployCase/steps/x" in flow.definition.table
    assert flow.definition.start_event == "start:deploy/v1"
    assert flow.definition.completed_event == "completed:deploy/v1"


def test_every_construct_gets_its_go_stepflow_scope() -> None:
    inner = stepflow.steps().do("a", noop)
    spec = (
        stepflow.named("f")
        .do("d", noop)
        .wait_for("w", yes)
        .case("c", yes, inner)
        .retry("r", lambda ctx, exc: False, inner)
        .loop_until("l", yes, inner)
        .steps("g", stepflow.named("ignored").do("a", noop))
    )
    sources = set(stepflow.new(spec).definition.table)
    assert {
        "start:f/d",
        "start:f/wWaitFor",
        "start:f/cCase",
        "start:f/cCase/steps/a",
        "start:f/rRetry",
        "start:f/rRetry/a",
        "start:f/lLoopUntil",
        "completed:f/lLoopUntil/steps",
        "start:f/lLoopUntil/steps/a",
        "start:f/g/a",
    } <= sources
    assert not any("ignored" in s for s in sources)


def test_handler_transitions_list_every_destination_with_a_reason() -> None:
    spec = stepflow.named("f").retry(
        "r", lambda ctx, exc: True, stepflow.steps().wait_for("w", yes)
    )
    table = stepflow.new(spec).definition.table
    wait = table["start:f/rRetry/wWaitFor"]
    assert wait.kind == "wait_for"
    assert wait.step == "f/rRetry/wWaitFor"
    assert wait.retry_scopes == ("f/rRetry",)
    assert wait.destinations == (
        Destination("completed:f/rRetry/wWaitFor", "WaitFor condition is met"),
        Destination("start:f/rRetry/wWaitFor", "WaitFor condition is not met, poll again"),
        Destination("start:f/rRetry", "retry"),
    )
    assert table["start:f"].destinations == (Destination("start:f/rRetry", "static"),)


def test_case_and_loop_transitions_follow_go_stepflow() -> None:
    spec = (
        stepflow.named("f").case("c", yes, stepflow.steps()).loop_until("l", yes, stepflow.steps())
    )
    table = stepflow.new(spec).definition.table
    assert [(d.event, d.reason) for d in table["start:f/cCase"].destinations] == [
        ("start:f/cCase/steps", "Case condition is met"),
        ("completed:f/cCase", "Case condition is not met"),
    ]
    assert table["start:f/lLoopUntil"].is_static
    loop = table["completed:f/lLoopUntil/steps"]
    assert loop.kind == "loop_until"
    assert [d.event for d in loop.destinations] == [
        "completed:f/lLoopUntil",
        "start:f/lLoopUntil/steps",
    ]


def test_nested_retries_list_their_scopes_innermost_first() -> None:
    inner = stepflow.steps().do("x", noop)
    spec = stepflow.named("f").retry(
        "outer", lambda c, e: False, stepflow.steps().retry("inner", lambda c, e: False, inner)
    )
    t = stepflow.new(spec).definition.table["start:f/outerRetry/innerRetry/x"]
    assert t.retry_scopes == ("f/outerRetry/innerRetry", "f/outerRetry")
    assert [d.reason for d in t.destinations] == ["handler returned", "retry", "retry"]


def test_equal_specs_give_equal_hashable_picklable_definitions_whatever_the_handlers() -> None:
    a = stepflow.new(deploy_spec()).definition
    b = stepflow.new(
        stepflow.named("deploy/v1")
        .do("getPreActualState", lambda ctx: 1)
        .wait_for("waitForPreActualState", lambda ctx: False)
        .case(
            "shouldDeploy",
            lambda ctx: False,
            stepflow.steps()
            .do("createDeployRequest", lambda ctx: 2)
            .wait_for("waitForAcceptedDeployRequest", lambda ctx: True),
        )
    ).definition
    assert a == b
    assert hash(a) == hash(b)
    assert a.fingerprint == b.fingerprint
    restored = pickle.loads(pickle.dumps(a))
    assert restored == a
    assert restored.fingerprint == a.fingerprint
    assert dict(restored.table) == dict(a.table)


def test_the_fingerprint_is_a_stable_sha256_of_the_canonical_form() -> None:
    fingerprint = stepflow.new(stepflow.named("f").do("a", noop)).definition.fingerprint
    # Pinned: the fingerprint must not change between processes or releases by accident.
    assert fingerprint == stepflow.new(stepflow.named("f").do("a", noop)).definition.fingerprint
    assert fingerprint.startswith("sha256:")
    assert len(fingerprint) == len("sha256:") + 64
    other = stepflow.new(stepflow.named("f").do("b", noop)).definition.fingerprint
    assert other != fingerprint


def test_the_definition_holds_no_callables() -> None:
    definition = stepflow.new(deploy_spec()).definition

    def walk(value: object) -> None:
        assert not callable(value) or isinstance(value, type), value
        if isinstance(value, (tuple, list)):
            for v in value:
                walk(v)
        elif hasattr(value, "__attrs_attrs__"):
            for field in value.__attrs_attrs__:  # type: ignore[attr-defined]
                walk(getattr(value, field.name))

    walk(definition.transitions)
    walk(definition.name)


def test_builder_methods_return_new_specs_and_never_change_the_old_one() -> None:
    base = stepflow.named("f").do("a", noop)
    left = base.do("b", noop)
    right = base.wait_for("b", yes)
    assert len(base.items) == 1
    assert [i.name for i in left.items] == ["a", "b"]
    assert type(right.items[1]).__name__ == "WaitFor"


def test_an_empty_flow_completes_without_a_command() -> None:
    definition = stepflow.new(stepflow.steps()).definition
    state, commands = stepflow.advance(definition)
    assert state.is_completed
    assert commands == ()
    assert state.events == ("completed:steps",)


# -- rejected specs ----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "path"),
    [
        (stepflow.named("f").do("a", noop).do("a", noop), "f/a"),
        (stepflow.named("f").do("aWaitFor", noop).wait_for("a", yes), "f/aWaitFor"),
        (
            stepflow.named("f").case("c", yes, stepflow.steps().do("x", noop).do("x", noop)),
            "f/cCase/steps/x",
        ),
        (stepflow.named("f").do("", noop), "f/"),
        (stepflow.named("f").do("a:b", noop), "f/a:b"),
        (stepflow.named("f").do("a/b", noop), "f/a/b"),
        (stepflow.named("f").do("a", "not callable"), "f/a"),  # type: ignore[arg-type]
        (stepflow.named("f").case("c", yes, "nope"), "f/cCase"),  # type: ignore[arg-type]
        (stepflow.named("bad:name"), "bad:name"),
        (stepflow.named(""), ""),
        (stepflow.named("deploy//v1"), "deploy//v1"),
    ],
)
def test_invalid_specs_raise_definition_error_with_the_offending_path(
    spec: stepflow.Steps, path: str
) -> None:
    with pytest.raises(stepflow.DefinitionError) as info:
        stepflow.new(spec)
    assert info.value.path == path
    assert isinstance(info.value, ValueError)


def test_do_and_wait_for_of_the_same_name_may_stand_side_by_side() -> None:
    flow = stepflow.new(stepflow.named("f").do("a", noop).wait_for("a", yes))
    assert {"start:f/a", "start:f/aWaitFor"} <= set(flow.definition.table)


def test_the_root_name_may_contain_slashes() -> None:
    assert stepflow.new(stepflow.named("team/deploy/v1")).definition.name == "team/deploy/v1"


def test_a_cycle_of_static_transitions_is_a_definition_error() -> None:
    static = "static"
    transitions = (
        Transition("start:f", static, None, (Destination("start:f/a", static),)),
        Transition("start:f/a", static, None, (Destination("completed:f/a", static),)),
        Transition("completed:f/a", static, None, (Destination("start:f/a", static),)),
    )
    with pytest.raises(stepflow.DefinitionError, match="cycle that issues no command") as info:
        FlowDefinition("f", transitions)
    assert "start:f/a -> completed:f/a -> start:f/a" in str(info.value)


def test_a_table_with_an_unhandled_destination_is_a_definition_error() -> None:
    transitions = (
        Transition("start:f", "static", None, (Destination("start:f/nowhere", "static"),)),
    )
    with pytest.raises(stepflow.DefinitionError, match="no transition leaves"):
        FlowDefinition("f", transitions)


def test_a_table_with_two_transitions_from_one_event_is_a_definition_error() -> None:
    t = Transition("start:f", "static", None, (Destination("completed:f", "static"),))
    with pytest.raises(stepflow.DefinitionError, match="two transitions leave"):
        FlowDefinition("f", (t, t))


def test_a_do_timeout_is_data_in_its_transition_and_never_reaches_the_core() -> None:
    timed = stepflow.new(stepflow.named("t").do("a", print, timeout=2.5)).definition
    assert timed.table["start:t/a"].timeout == 2.5
    assert timed._node("start:t/a").timeout is None  # the shell times it (StepTimeoutError)
    with pytest.raises(stepflow.DefinitionError, match="must be finite and > 0"):
        stepflow.new(stepflow.named("t").do("a", print, timeout=0))
