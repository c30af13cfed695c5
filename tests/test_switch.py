"""switch: one route command chooses which group of steps runs (stepflow.core.choice)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

import stepflow
import stepflow.core
from stepflow import HandlerReturned, named, steps
from stepflow.analysis import explore, paths, replay
from stepflow.codec import dumps, loads
from stepflow.core.choice import case_key
from stepflow.diagrams import to_json, to_mermaid
from stepflow.errors import ConfigurationError, DefinitionError
from stepflow.testing import FlowMachine, Returns, outcome_of
from stepflow.versioning import diff


def routed(route: Any, default: bool = True) -> stepflow.Flow:
    cases = {
        "eu": steps().do("eu", lambda ctx: "eu"),
        1: steps().do("one", lambda ctx: "one"),
        None: steps().do("none", lambda ctx: "none"),
    }
    other = steps().do("other", lambda ctx: "other") if default else None
    spec = named("r/v1").switch("region", route, cases, default=other).do("after", lambda c: 1)
    return stepflow.new(spec)


def ran(flow: stepflow.Flow) -> list[str]:
    state = flow.run(None)
    assert state.is_completed
    return sorted(k.rpartition("/")[2] for k in state.outputs)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("eu", "eu"),
        (1, "one"),
        (1.0, "one"),  # JSON has one number type
        (None, "none"),
        (True, "other"),  # True is not 1
        ("1", "other"),  # "1" is not 1
        ("EU", "other"),
        (2.5, "other"),
    ],
)
def test_the_case_of_the_routed_value_runs_then_the_flow_continues(
    value: object, expected: str
) -> None:
    assert ran(routed(lambda ctx: value)) == sorted([expected, "after"])


def test_with_no_match_and_no_default_nothing_runs_and_the_flow_continues() -> None:
    assert ran(routed(lambda ctx: "us", default=False)) == ["after"]


def test_an_async_route_is_awaited() -> None:
    async def route(ctx: Any) -> str:
        await asyncio.sleep(0)
        return "eu"

    assert ran(routed(route)) == ["after", "eu"]


def test_a_switch_is_one_command_and_one_journal_entry() -> None:
    flow = routed(lambda ctx: "eu")
    state, commands = stepflow.advance(flow.definition, None, now=0)
    assert [(c.kind, c.step) for c in commands] == [("switch", "r/v1/regionSwitch")]
    state, commands = stepflow.advance(flow.definition, state, [HandlerReturned(1, "eu", 1.0)])
    assert [(c.kind, c.step) for c in commands] == [("do", "r/v1/regionSwitch/case0/eu")]
    assert "r/v1/regionSwitch" not in state.outputs  # the route's value is not an output


@pytest.mark.parametrize("value", [[1], {"a": 1}, object(), float("nan"), float("inf")])
def test_a_route_value_that_is_not_a_json_scalar_fails_the_step(value: object) -> None:
    flow = routed(lambda ctx: value)
    with pytest.raises(stepflow.FlowFailed) as failed:
        flow.run(None)
    error = failed.value.state.error
    assert error is not None
    assert error.type == "stepflow.errors.HandlerResultError"
    assert error.step == "r/v1/regionSwitch"
    assert "JSON scalar" in error.message
    command = stepflow.CallHandler(
        1, "switch", "r/v1/regionSwitch", "start:r/v1/regionSwitch", None
    )
    assert stepflow.core.result_error(command, value) == error
    assert stepflow.core.result_error(command, "eu") is None


def test_a_bad_route_value_is_retried_by_an_enclosing_retry() -> None:
    answers = iter([[1], "eu"])
    spec = named("r").retry(
        "again",
        stepflow.RetryPolicy(max_attempts=2, initial_interval=0),
        steps().switch("s", lambda ctx: next(answers), {"eu": steps().do("x", lambda c: 1)}),
    )
    state = stepflow.new(spec).run(None)
    assert state.is_completed
    assert state.outputs["r/againRetry/sSwitch/case0/x"] == 1


def test_case_values_are_data_in_the_table_and_the_fingerprint() -> None:
    flow = routed(lambda ctx: 1)
    transition = flow.definition.table["start:r/v1/regionSwitch"]
    assert transition.kind == "switch"
    assert transition.cases == ('"eu"', "1", "null")
    assert [d.event for d in transition.destinations] == [
        "start:r/v1/regionSwitch/case0",
        "start:r/v1/regionSwitch/case1",
        "start:r/v1/regionSwitch/case2",
        "start:r/v1/regionSwitch/default",
    ]
    other = stepflow.new(
        named("r/v1")
        .switch(
            "region",
            lambda ctx: 1,
            {
                "us": steps().do("eu", print),
                1: steps().do("one", print),
                None: steps().do("none", print),
            },
            default=steps().do("other", print),
        )
        .do("after", print)
    )
    assert other.definition.fingerprint != flow.definition.fingerprint
    changed = diff(flow.definition, other.definition)
    assert changed.changed == ("start:r/v1/regionSwitch",)
    assert not changed.compatible


def test_pairs_keep_true_and_1_apart() -> None:
    spec = named("p").switch(
        "s",
        lambda ctx: True,
        [(True, steps().do("yes", lambda c: 1)), [1, steps().do("one", lambda c: 1)]],
    )
    state = stepflow.new(spec).run(None)
    assert list(state.outputs) == ["p/sSwitch/case0/yes"]


def test_case_key_is_exact_and_type_aware() -> None:
    keys = [case_key(v) for v in (True, 1, "1", None, False, 0, "", 1.5, -0.0)]
    assert keys == ["true", "1", '"1"', "null", "false", "0", '""', "1.5", "0"]
    assert case_key(10**20) == case_key(1e20)


@pytest.mark.parametrize(
    ("cases", "default", "message"),
    [
        ({}, None, "no cases and no default"),
        ([(1, steps()), (1.0, steps())], None, "same value"),
        ([(True, steps()), (True, steps())], None, "same value"),
        ([((1, 2), steps())], None, "not a JSON scalar"),
        ([(float("nan"), steps())], None, "not a JSON scalar"),
        ({"a": "not steps"}, None, "not a spec"),
        ({"a": steps()}, "not steps", "not a spec"),
        (42, None, "must be a mapping"),
        ([1, 2], None, "must be a mapping"),
    ],
)
def test_bad_switches_are_refused_at_build_time_with_the_path(
    cases: Any, default: Any, message: str
) -> None:
    with pytest.raises(DefinitionError, match=message) as refused:
        stepflow.new(named("f").do("a", print).switch("s", print, cases, default=default))
    assert refused.value.path in ("f/sSwitch", "s")


def test_a_route_that_is_not_callable_is_refused() -> None:
    with pytest.raises(DefinitionError, match="route of step 'f/sSwitch'"):
        stepflow.new(named("f").switch("s", "route", {"a": steps()}))  # type: ignore[arg-type]


def test_empty_cases_with_a_default_always_run_the_default() -> None:
    spec = named("d").switch("s", lambda ctx: "x", {}, default=steps().do("d", lambda c: 1))
    assert stepflow.new(spec).run(None).outputs["d/sSwitch/default/d"] == 1


def test_a_switch_inside_map_items_routes_each_item() -> None:
    spec = named("m").map(
        "each",
        lambda ctx: ["eu", "us", "eu"],
        steps().switch(
            "s",
            lambda ctx: ctx.item,
            {"eu": steps().do("eu", lambda c: f"eu{c.index}")},
            default=steps().do("other", lambda c: f"other{c.index}"),
        ),
    )
    state = stepflow.new(spec).run(None)
    assert state.outputs["m/eachMap"] == ["eu0", "other1", "eu2"]


def test_a_switch_command_round_trips_the_codec() -> None:
    flow = routed(lambda ctx: "eu")
    state, _ = stepflow.advance(flow.definition, None, now=0)
    assert loads(dumps(state), flow.definition) == state


def test_diagrams_and_analysis_see_every_case() -> None:
    flow = routed(lambda ctx: "eu")
    mermaid = to_mermaid(flow.definition)
    assert 'route returned "eu"' in mermaid
    assert "no case matched, default" in mermaid
    kinds = {s["path"]: s["kind"] for s in to_json(flow.definition)["scopes"]}
    assert kinds["r/v1/regionSwitch"] == "switch"
    assert explore(flow.definition).ok
    reached = {
        c.target for c in paths(flow.definition) if isinstance(c.target, str) and c.reachable
    }
    assert {
        f"r/v1/regionSwitch/{s}" for s in ("case0/eu", "case1/one", "case2/none", "default/other")
    } <= reached
    trace = replay(flow.definition, [("switch", "r/v1/regionSwitch", "route:null")])
    assert trace.states[-1].events == ("start:r/v1/regionSwitch/case2/none",)


def _returns(value: int) -> Any:
    return lambda ctx: value


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.sampled_from([0.5, 2.0])
    | st.text("ab", max_size=2)
)


@given(st.lists(scalars, max_size=5, unique_by=case_key), scalars, st.booleans())
def test_the_routed_value_runs_exactly_its_case_or_the_default(
    values: list[Any], routed_value: Any, default: bool
) -> None:
    cases = [(v, steps().do("hit", _returns(i))) for i, v in enumerate(values)]
    if not cases and not default:
        return
    other = steps().do("miss", lambda ctx: -1) if default else None
    spec = named("p").switch("s", lambda ctx: routed_value, cases, default=other)
    state = stepflow.new(spec).run(None)
    matches = [i for i, v in enumerate(values) if case_key(v) == case_key(routed_value)]
    outputs = dict(state.outputs)
    if matches:
        assert outputs == {f"p/sSwitch/case{matches[0]}/hit": matches[0]}
    elif default:
        assert outputs == {"p/sSwitch/default/miss": -1}
    else:
        assert outputs == {}


def test_scripts_name_route_outcomes_by_their_json_value() -> None:
    assert outcome_of('route:"eu"') == Returns("eu")
    assert outcome_of("route:null") == Returns(None)
    with pytest.raises(ConfigurationError, match="route:<JSON>"):
        outcome_of("route:{")


class RoutedMachine(FlowMachine):
    """The hypothesis state machine answers switches with case values and others."""

    flow = routed(lambda ctx: "eu")


def test_the_flow_machine_answers_switches() -> None:
    run_state_machine_as_test(RoutedMachine, settings=settings(max_examples=20, deadline=None))
