"""catch: try/except for a group of steps (stepflow.core.scopes)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pyrsistent import pmap

import stepflow
from stepflow import ErrorRecord, RetryPolicy, named, steps
from stepflow.analysis import explore, paths
from stepflow.clock import FakeClock
from stepflow.codec import dumps, loads
from stepflow.core._json import freeze_json
from stepflow.core.messages import CallHandler
from stepflow.core.scopes import handler_error
from stepflow.diagrams import to_json, to_mermaid
from stepflow.errors import DefinitionError


class Declined(Exception):
    """A business error, recorded as ``test_catch.Declined``."""


def fail(exc: BaseException) -> Any:
    def handler(ctx: Any) -> Any:
        raise exc

    return handler


def seen_error(ctx: Any) -> Any:
    # (Flow drivers pass the caller's ctx, here None, wrapped with .error in a handler.)
    error = getattr(ctx, "error", None)
    return None if error is None else [error.type, error.message, error.step]


def run(spec: stepflow.Steps) -> stepflow.State:
    return stepflow.new(spec).run(None)


def test_a_matching_error_runs_the_handler_with_ctx_error_then_the_flow_continues() -> None:
    spec = (
        named("c/v1")
        .catch(
            "pay",
            steps().do("charge", fail(Declined("no funds"))).do("never", lambda c: 1),
            steps().do("refund", seen_error),
            errors=Declined,
        )
        .do("after", seen_error)
    )
    state = run(spec)
    assert state.is_completed
    record = [f"{__name__}.Declined", "no funds", "c/v1/payCatch/steps/charge"]
    assert state.outputs["c/v1/payCatch/handler/refund"] == record
    assert state.outputs["c/v1/payCatch"] == {
        "error": dict(zip(("type", "message", "step"), record, strict=False))
    }
    assert "c/v1/payCatch/steps/never" not in state.outputs
    assert state.outputs.get("c/v1/after") is None  # ctx.error is None outside the handler


@pytest.mark.parametrize(
    "errors",
    [None, Declined, "Declined", f"{__name__}.Declined", [KeyError, "Declined"], ("Declined",)],
)
def test_errors_match_by_class_by_short_name_or_exactly(errors: Any) -> None:
    spec = named("c").catch("x", steps().do("a", fail(Declined())), steps(), errors=errors)
    assert run(spec).is_completed


@pytest.mark.parametrize("errors", [KeyError, "KeyError", "other.Declined", ["ValueError"]])
def test_other_errors_pass_outward(errors: Any) -> None:
    spec = named("c").catch("x", steps().do("a", fail(Declined("boom"))), steps(), errors=errors)
    with pytest.raises(stepflow.FlowFailed) as failed:
        run(spec)
    error = failed.value.state.error
    assert error is not None
    assert (error.type, error.step) == (f"{__name__}.Declined", "c/xCatch/steps/a")
    assert "c/xCatch" not in failed.value.state.outputs


def test_a_failure_in_the_handler_goes_outward_not_back_to_its_catch() -> None:
    inner = steps().catch(
        "inner",
        steps().do("a", fail(KeyError("first"))),
        steps().do("h", fail(ValueError("second"))),
    )
    spec = named("c").catch("outer", inner, steps().do("h", seen_error))
    state = run(spec)
    assert state.outputs["c/outerCatch/handler/h"] == [
        "ValueError",
        "second",
        "c/outerCatch/steps/innerCatch/handler/h",
    ]
    alone = named("c").catch(
        "x", steps().do("a", fail(KeyError())), steps().do("h", fail(ValueError()))
    )
    with pytest.raises(stepflow.FlowFailed, match="ValueError"):
        run(alone)


def test_the_innermost_scope_takes_a_failure_first_catch_inside_retry() -> None:
    calls: list[str] = []

    def flaky(ctx: Any) -> Any:
        calls.append("try")
        raise Declined("x") if len(calls) == 1 else KeyError("k")

    body = steps().catch("c", steps().do("a", flaky), steps().do("h", seen_error), errors=Declined)
    spec = named("r").retry("again", RetryPolicy(max_attempts=2, initial_interval=0), body)
    # Declined: caught inside the retry; the retry never restarts.
    state = run(spec)
    assert calls == ["try"]
    assert state.attempts == {}
    assert state.outputs["r/againRetry/cCatch/handler/h"][0] == f"{__name__}.Declined"
    # KeyError: the catch passes it to the retry, which restarts, then fails the run.
    calls.clear()
    calls.append("skip the Declined")
    with pytest.raises(stepflow.FlowFailed, match="KeyError"):
        run(spec)
    assert calls == ["skip the Declined", "try", "try"]


def test_a_retry_inside_a_catch_retries_first_then_the_catch_takes_the_error() -> None:
    calls: list[int] = []

    def always(ctx: Any) -> Any:
        calls.append(1)
        raise Declined("again")

    body = steps().retry(
        "r", RetryPolicy(max_attempts=3, initial_interval=0), steps().do("a", always)
    )
    state = run(named("f").catch("c", body, steps().do("h", seen_error)))
    assert len(calls) == 3
    assert state.is_completed
    assert state.attempts == {}
    assert state.outputs["f/cCatch/handler/h"][2] == "f/cCatch/steps/rRetry/a"


def test_an_on_error_that_declines_passes_the_error_to_the_catch() -> None:
    body = steps().retry("r", lambda ctx, exc: False, steps().do("a", fail(Declined("no"))))
    state = run(named("f").catch("c", body, steps().do("h", seen_error)))
    assert state.outputs["f/cCatch/handler/h"][:2] == [f"{__name__}.Declined", "no"]


def test_a_wait_timeout_and_a_bad_result_are_caught_like_raises() -> None:
    clock = FakeClock(0)
    spec = named("t").catch(
        "c",
        steps().wait_for("w", lambda ctx: False, every=1, timeout=3),
        steps().do("h", seen_error),
        errors="WaitTimeoutError",
    )
    state = stepflow.new(spec, clock=clock).run(None)
    assert state.outputs["t/cCatch/handler/h"][0] == "stepflow.errors.WaitTimeoutError"
    bad = named("b").catch(
        "c", steps().do("a", lambda ctx: object()), steps(), errors="HandlerResultError"
    )
    assert run(bad).is_completed


def test_a_branch_failure_is_caught_inside_its_branch_and_the_group_completes() -> None:
    branch = steps().catch(
        "c", steps().do("a", fail(Declined("b1"))), steps().do("h", lambda c: "handled")
    )
    spec = named("p").parallel("g", {"one": branch, "two": steps().do("b", lambda c: "two")})
    state = run(spec)
    assert state.outputs["p/gParallel"] == {"one": "handled", "two": "two"}


def test_a_group_failure_is_caught_around_the_group() -> None:
    group = steps().parallel(
        "g", {"one": steps().do("a", fail(Declined("b1"))), "two": steps().do("b", lambda c: 2)}
    )
    state = run(named("p").catch("c", group, steps().do("h", seen_error)).do("z", lambda c: 1))
    assert state.is_completed
    assert state.outputs["p/cCatch/handler/h"] == [
        f"{__name__}.Declined",
        "b1",
        "p/cCatch/steps/gParallel/one/a",
    ]
    assert state.groups == {}


def test_map_items_catch_their_own_failures_and_see_their_own_error() -> None:
    def work(ctx: Any) -> Any:
        if ctx.item % 2:
            raise Declined(str(ctx.item))
        return ctx.item

    item = steps().catch("c", steps().do("w", work), steps().do("h", lambda ctx: ctx.error.message))
    state = run(named("m").map("each", lambda ctx: [0, 1, 2, 3], item))
    assert state.outputs["m/eachMap"] == [0, "1", 2, "3"]
    assert (
        state.outputs["m/eachMap/steps[3]/cCatch"]["error"]["step"]
        == "m/eachMap/steps[3]/cCatch/steps/w"
    )


def test_a_caught_state_survives_the_codec_and_resumes_with_ctx_error() -> None:
    flow = stepflow.new(
        named("s").catch("c", steps().do("a", fail(KeyError("k"))), steps().do("h", seen_error))
    )
    state, commands = stepflow.advance(flow.definition, None, now=0)
    effect = flow.interpreter.execute(commands[0])
    state, commands = stepflow.advance(flow.definition, state, [effect])
    assert [c.step for c in commands] == ["s/cCatch/handler/h"]
    again = loads(dumps(state), flow.definition)
    assert again == state
    error = handler_error(flow.definition, again.outputs, _do("s/cCatch/handler/h"))
    assert error == ErrorRecord("KeyError", "k", "s/cCatch/steps/a")
    assert handler_error(flow.definition, again.outputs, _do("s/cCatch/steps/a")) is None
    assert flow.run(again).outputs["s/cCatch/handler/h"] == ["KeyError", "k", "s/cCatch/steps/a"]


@pytest.mark.parametrize("errors", [42, [], "", [1], [int], object(), [KeyError, None]])
def test_errors_naming_no_exception_type_are_refused(errors: Any) -> None:
    with pytest.raises(DefinitionError, match="names no exception type") as refused:
        stepflow.new(named("f").catch("x", steps().do("a", print), steps(), errors=errors))
    assert refused.value.path == "f/xCatch"


def test_steps_and_handler_must_be_specs() -> None:
    with pytest.raises(DefinitionError, match="the handler of 'f/xCatch'"):
        stepflow.new(named("f").catch("x", steps(), "oops"))  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="the steps of 'f/xCatch'"):
        stepflow.new(named("f").catch("x", None, steps()))  # type: ignore[arg-type]


def test_flows_without_catch_or_switch_keep_their_fingerprints() -> None:
    # Computed by stepflow before catch and switch existed.
    spec = (
        named("fp/v1")
        .do("a", print)
        .wait_for("w", print, every=2, timeout=10)
        .sleep("z", 3)
        .case("c", print, steps().do("x", print))
        .retry(
            "r",
            RetryPolicy(max_attempts=3, non_retryable=["KeyError"]),
            steps().do("y", print).loop_until("l", print, steps().do("q", print)),
        )
        .retry(
            "g",
            print,
            steps().parallel("p", {"b1": steps().do("s", print), "b2": steps()}, max_failures=1),
        )
        .map("m", print, steps().do("i", print), max_concurrency=2)
    )
    expected = "sha256:5ea1b6305775d86bb9d270090993aefcc742eb48dcc8acb2485c2eb697152575"
    assert stepflow.new(spec).definition.fingerprint == expected


def test_the_table_lists_catch_destinations_in_nesting_order() -> None:
    spec = named("n").retry(
        "r", print, steps().catch("c", steps().retry("q", print, steps().do("a", print)), steps())
    )
    definition = stepflow.new(spec).definition
    t = definition.table["start:n/rRetry/cCatch/steps/qRetry/a"]
    assert t.retry_scopes == ("n/rRetry/cCatch/steps/qRetry", "n/rRetry")
    assert t.catch_scopes == ("n/rRetry/cCatch",)
    assert [(d.event, d.reason) for d in t.destinations[1:]] == [
        ("start:n/rRetry/cCatch/steps/qRetry", "retry"),
        ("start:n/rRetry/cCatch/handler", "catch"),
        ("start:n/rRetry", "retry"),
    ]
    assert definition.enclosing_failure_scopes(t.source) == (
        "n/rRetry/cCatch/steps/qRetry",
        "n/rRetry/cCatch",
        "n/rRetry",
    )
    assert definition.catch_scopes() == ("n/rRetry/cCatch",)
    assert definition.catch_rule("n/rRetry/cCatch").errors is None


def test_a_catch_with_nothing_that_can_fail_has_no_rule() -> None:
    definition = stepflow.new(named("e").catch("c", steps().sleep("s", 1), steps())).definition
    assert definition.catch_scopes() == ("e/cCatch",)
    empty = stepflow.new(named("e").catch("c", steps(), steps().do("h", print))).definition
    assert empty.catch_scopes() == ()


def test_definitions_refuse_catch_rules_that_do_not_fit() -> None:
    definition = stepflow.new(named("e").catch("c", steps().do("a", print), steps())).definition
    with pytest.raises(DefinitionError, match="needs one CatchRule"):
        stepflow.FlowDefinition(definition.name, definition.transitions)
    import pickle

    assert pickle.loads(pickle.dumps(definition)) == definition


def test_diagrams_and_analysis_draw_and_reach_the_handler() -> None:
    spec = named("d").catch("c", steps().do("a", print), steps().do("h", print), errors="Declined")
    definition = stepflow.new(spec).definition
    kinds = {s["path"]: s["kind"] for s in to_json(definition)["scopes"]}
    assert kinds["d/cCatch"] == "catch"
    assert kinds["d/cCatch/handler"] == "handler"
    assert "↳ catch cCatch" in to_mermaid(definition)
    assert explore(definition).ok
    case = next(c for c in paths(definition) if c.target == "d/cCatch/handler/h")
    assert case.trace is not None
    assert case.trace.outcomes[-1] == ("do", "d/cCatch/steps/a", "raised:Declined")


error_types = st.sampled_from(["KeyError", "ValueError", f"{__name__}.Declined", "other.Declined"])


@given(error_types, st.none() | st.lists(error_types, min_size=1, max_size=2))
def test_a_catch_takes_exactly_the_errors_it_names(raised: str, errors: list[str] | None) -> None:
    record = ErrorRecord(raised, "boom", "f/xCatch/steps/a")
    spec = named("f").catch("x", steps().do("a", print), steps().do("h", print), errors=errors)
    definition = stepflow.new(spec).definition
    state, commands = stepflow.advance(definition, None, now=0)
    state, commands = stepflow.advance(
        definition, state, [stepflow.HandlerRaised(commands[0].id, record, None, 1.0)]
    )
    short = {e.rpartition(".")[2] for e in errors or ()}
    takes = errors is None or raised in errors or raised.rpartition(".")[2] in (short & set(errors))
    if takes:
        assert [c.step for c in commands] == ["f/xCatch/handler/h"]
        assert handler_error(definition, state.outputs, _do("f/xCatch/handler/h")) == record
    else:
        assert state.is_failed
        assert state.error == record


def test_ctx_error_is_found_only_inside_a_catch_handler() -> None:
    spec = named("h").catch(
        "c",
        steps().steps("handler", steps().do("x", print)).do("handlers", print),
        steps().do("h", print),
    )
    definition = stepflow.new(spec).definition
    record = {"error": {"type": "KeyError", "message": "k", "step": "h/cCatch/steps/handlers"}}
    outputs = pmap({"h/cCatch": freeze_json(record)})
    # A group named "handler" inside the steps, or a step named "handlers", is no handler.
    assert handler_error(definition, outputs, _do("h/cCatch/steps/handler/x")) is None
    assert handler_error(definition, outputs, _do("h/cCatch/steps/handlers")) is None
    assert handler_error(definition, outputs, _do("h/cCatch/handler/h")) == ErrorRecord(
        "KeyError", "k", "h/cCatch/steps/handlers"
    )
    # A state made by hand (or migrated) in the handler with no record: no error.
    assert handler_error(definition, pmap(), _do("h/cCatch/handler/h")) is None


def _do(step: str) -> CallHandler:
    """A do command of ``step``: what ctx.error is computed for."""
    return CallHandler(1, "do", step, "start:" + step, None)
