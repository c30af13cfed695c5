"""Parallel branches and maps in the pure core: the rules of ``stepflow.core.groups``."""

from __future__ import annotations

import json
from typing import Any

import pytest

import stepflow
from stepflow import (
    HandlerRaised,
    HandlerReturned,
    RetryPolicy,
    TimerFired,
    advance,
    dumps,
    loads,
    named,
    steps,
)
from stepflow.core.groups import command_times, item_of

T0 = 1_000.0


def _noop(ctx: Any) -> None:
    return None


def ok(command: stepflow.Command, value: Any = None, at: float = T0) -> HandlerReturned:
    return HandlerReturned(command.id, value, at)


def boom(command: stepflow.Command, at: float = T0, kind: str = "RuntimeError") -> HandlerRaised:
    return HandlerRaised(command.id, stepflow.ErrorRecord(kind, "boom", command.step), None, at)


def by_step(commands: tuple[stepflow.Command, ...]) -> dict[str, stepflow.Command]:
    return {c.step: c for c in commands}


PARALLEL = stepflow.new(
    named("p")
    .do("first", _noop)
    .parallel(
        "both",
        {
            "left": steps().do("a", _noop).do("b", _noop),
            "right": steps().do("c", _noop),
        },
    )
    .do("last", _noop)
).definition

MAP = stepflow.new(
    named("m").map(
        "regions", _noop, steps().do("push", _noop).do("check", _noop), max_concurrency=2
    )
).definition


# --------------------------------------------------------------------------- names


def test_a_parallel_group_names_its_branches_after_go_stepflow_suffixes() -> None:
    assert "start:p/bothParallel" in PARALLEL.table
    assert "start:p/bothParallel/left/a" in PARALLEL.table
    assert PARALLEL.table["completed:p/bothParallel/left"].kind == "join"
    assert PARALLEL.table["start:p/bothParallel"].kind == "parallel"


def test_a_map_item_position_carries_its_index() -> None:
    _, commands = advance(MAP, None, now=T0)
    state, commands = advance(
        MAP, advance(MAP, None, now=T0)[0], (ok(commands[0], ["eu", "us", "ap"]),)
    )
    assert state.events == ("start:m/regionsMap/steps[0]/push", "start:m/regionsMap/steps[1]/push")
    assert [c.key for c in commands] == [
        "m/regionsMap/steps[0]/push#2",
        "m/regionsMap/steps[1]/push#3",
    ]
    assert stepflow.core.definition.template_of(commands[0].step) == "m/regionsMap/steps/push"


@pytest.mark.parametrize("bad", ["a[1]", "b]", "x:y", "s/t"])
def test_names_with_brackets_are_refused_because_brackets_mark_indices(bad: str) -> None:
    with pytest.raises(stepflow.DefinitionError, match="contains"):
        stepflow.new(named("f").do(bad, _noop))
    with pytest.raises(stepflow.DefinitionError, match="contains"):
        stepflow.new(named("f").parallel("p", {bad: steps().do("a", _noop)}))


# --------------------------------------------------------------------------- parallel


def test_every_branch_starts_at_once_and_the_group_joins_when_all_have_ended() -> None:
    state, (first,) = advance(PARALLEL, None, now=T0)
    state, commands = advance(PARALLEL, state, (ok(first, "one"),))
    assert [c.step for c in commands] == ["p/bothParallel/left/a", "p/bothParallel/right/c"]
    assert state.events == tuple(c.event for c in commands)
    a, c = commands
    state, commands = advance(PARALLEL, state, (ok(c, {"c": 1}),))
    assert [x.step for x in commands] == ["p/bothParallel/left/a"]
    state, commands = advance(PARALLEL, state, (ok(a, "a"),))
    (b,) = commands
    assert b.step == "p/bothParallel/left/b"
    state, (last,) = advance(PARALLEL, state, (ok(b, None),))
    assert last.step == "p/last"
    # Each branch's result is its last do output (None does not replace one).
    assert state.outputs["p/bothParallel"] == {"left": "a", "right": {"c": 1}}
    assert state.groups == {}
    state, commands = advance(PARALLEL, state, (ok(last),))
    assert state.is_completed
    assert commands == ()


def test_one_batch_may_answer_several_commands_in_any_order() -> None:
    state, (first,) = advance(PARALLEL, None, now=T0)
    state, (a, c) = advance(PARALLEL, state, (ok(first),))
    one, _ = advance(PARALLEL, state, (ok(a, 1), ok(c, 2)))
    two, _ = advance(PARALLEL, state, (ok(c, 2), ok(a, 1)))
    assert one == two
    assert dumps(one) == dumps(two)


# --------------------------------------------------------------------------- map


def test_a_map_runs_at_most_max_concurrency_items_and_keeps_results_in_order() -> None:
    state, (items,) = advance(MAP, None, now=T0)
    state, commands = advance(MAP, state, (ok(items, ["eu", "us", "ap"]),))
    assert len(commands) == 2
    assert item_of(state, commands[1].step) == (1, "us")
    seen_in_flight = [len(commands)]
    order = 0
    while commands:
        # Answer the highest-numbered item first: results still come back in item order.
        command = max(commands, key=lambda c: c.step)
        order += 1
        state, commands = advance(MAP, state, (ok(command, f"{command.step}@{order}"),))
        seen_in_flight.append(len(commands))
    assert max(seen_in_flight) == 2
    assert state.is_completed
    results = state.outputs["m/regionsMap"]
    assert [r.split("@")[0] for r in results] == [
        "m/regionsMap/steps[0]/check",
        "m/regionsMap/steps[1]/check",
        "m/regionsMap/steps[2]/check",
    ]


def test_an_empty_item_list_completes_the_map_with_an_empty_list() -> None:
    state, (items,) = advance(MAP, None, now=T0)
    state, commands = advance(MAP, state, (ok(items, []),))
    assert state.is_completed
    assert commands == ()
    assert list(state.outputs["m/regionsMap"]) == []


@pytest.mark.parametrize("value", [{"a": 1}, "abc", 3, None, [object()], [float("nan")]])
def test_items_that_are_not_a_json_list_are_a_recorded_failure(value: Any) -> None:
    state, (items,) = advance(MAP, None, now=T0)
    failed, commands = advance(MAP, state, (ok(items, value),))
    assert failed.is_failed
    assert commands == ()
    assert failed.error is not None
    assert failed.error.type == "stepflow.errors.HandlerResultError"
    assert "JSON list" in failed.error.message
    assert failed.events == ("start:m/regionsMap",)


def test_a_map_inside_a_parallel_branch_inside_a_map_nests_indices() -> None:
    nested = stepflow.new(
        named("n").map(
            "outer",
            _noop,
            steps().parallel("p", {"x": steps().map("inner", _noop, steps().do("leaf", _noop))}),
        )
    ).definition
    state, (outer,) = advance(nested, None, now=T0)
    state, (inner,) = advance(nested, state, (ok(outer, ["o"]),))
    assert inner.step == "n/outerMap/steps[0]/pParallel/x/innerMap"
    state, leaves = advance(nested, state, (ok(inner, [1, 2]),))
    assert [c.step for c in leaves] == [
        "n/outerMap/steps[0]/pParallel/x/innerMap/steps[0]/leaf",
        "n/outerMap/steps[0]/pParallel/x/innerMap/steps[1]/leaf",
    ]
    assert item_of(state, leaves[1].step) == (1, 2)
    state, _ = advance(nested, state, (ok(leaves[0], "l0"), ok(leaves[1], "l1")))
    assert state.is_completed
    assert state.outputs["n/outerMap"] == [{"x": ["l0", "l1"]}]
    assert loads(dumps(state), nested) == state


# --------------------------------------------------------------------------- failure


def test_the_first_failure_stops_the_group_and_lets_commands_in_flight_finish() -> None:
    state, (first,) = advance(PARALLEL, None, now=T0)
    state, (a, c) = advance(PARALLEL, state, (ok(first),))
    state, commands = advance(PARALLEL, state, (boom(c),))
    # Still running: a is in flight; nothing new starts in the group.
    assert state.is_running
    assert commands == (a,)
    assert state.groups["p/bothParallel"].error is not None
    state, commands = advance(PARALLEL, state, (ok(a, "kept"),))
    # a's outcome is recorded, b never starts, and the error fails the run.
    assert state.outputs["p/bothParallel/left/a"] == "kept"
    assert state.is_failed
    assert commands == ()
    assert state.error is not None
    assert state.error.step == "p/bothParallel/right/c"
    assert state.events == ("start:p/bothParallel",)
    assert state.groups == {}


def test_an_enclosing_retry_restarts_the_whole_group() -> None:
    flow = stepflow.new(
        named("r").retry(
            "again",
            RetryPolicy(max_attempts=2, initial_interval=0),
            steps().parallel("g", {"x": steps().do("a", _noop), "y": steps().do("b", _noop)}),
        )
    ).definition
    state, (a, b) = advance(flow, None, now=T0)
    state, commands = advance(flow, state, (boom(a), ok(b)))
    assert [c.step for c in commands] == [
        "r/againRetry/gParallel/x/a",
        "r/againRetry/gParallel/y/b",
    ]
    assert dict(state.attempts) == {"r/againRetry": 1}
    a2, b2 = commands
    state, _ = advance(flow, state, (boom(a2), boom(b2)))
    assert state.is_failed  # the policy allows two attempts in all


def test_a_retry_inside_a_branch_restarts_only_that_branch() -> None:
    flow = stepflow.new(
        named("r").parallel(
            "g",
            {
                "x": steps().retry(
                    "again", RetryPolicy(max_attempts=3, initial_interval=0), steps().do("a", _noop)
                ),
                "y": steps().do("b", _noop).do("b2", _noop),
            },
        )
    ).definition
    state, (a, b) = advance(flow, None, now=T0)
    state, commands = advance(flow, state, (boom(a),))
    same_b, a2 = commands  # in the order the positions moved last
    assert same_b == b
    assert a2.id > b.id
    assert a2.step == a.step
    assert dict(state.attempts) == {"r/gParallel/x/againRetry": 1}
    state, _ = advance(flow, state, (ok(a2, "a"), ok(b, "b")))
    assert dict(state.attempts) == {}


def test_max_failures_lets_a_map_complete_with_its_failures_recorded() -> None:
    flow = stepflow.new(
        named("t").map("m", _noop, steps().do("x", _noop), max_failures=1)
    ).definition
    state, (items,) = advance(flow, None, now=T0)
    state, (x0, x1, x2) = advance(flow, state, (ok(items, [0, 1, 2]),))
    state, _ = advance(flow, state, (ok(x0, "zero"), boom(x1, kind="KeyError"), ok(x2, "two")))
    assert state.is_completed
    assert state.outputs["t/mMap"] == [
        "zero",
        {"error": {"type": "KeyError", "message": "boom", "step": "t/mMap/steps[1]/x"}},
        "two",
    ]


def test_past_max_failures_the_group_fails_with_its_first_error_beyond_the_tolerance() -> None:
    flow = stepflow.new(
        named("t").map("m", _noop, steps().do("x", _noop), max_failures=1)
    ).definition
    state, (items,) = advance(flow, None, now=T0)
    state, (x0, x1, x2) = advance(flow, state, (ok(items, [0, 1, 2]),))
    state, _ = advance(flow, state, (boom(x0), boom(x1, kind="KeyError"), ok(x2)))
    assert state.is_failed
    assert state.error is not None
    assert state.error.type == "KeyError"


def test_a_failing_group_drops_timers_and_polls_not_yet_due() -> None:
    flow = stepflow.new(
        named("d").parallel(
            "g",
            {
                "fails": steps().do("x", _noop),
                "sleeps": steps().sleep("nap", 3600),
                "polls": steps().wait_for("ready", _noop, every=60),
            },
        )
    ).definition
    state, (x, nap, ready) = advance(flow, None, now=T0)
    state, commands = advance(flow, state, (ok(ready, False, at=T0 + 1),))
    ready = by_step(commands)["d/gParallel/polls/readyWaitFor"]
    assert command_times(state, ready)[0] == T0 + 61
    assert command_times(state, nap)[0] == T0 + 3600
    state, commands = advance(flow, state, (boom(x, at=T0 + 2),))
    assert state.is_failed
    assert commands == ()
    # A timer answered in the same batch as the failure is not dropped under it.
    state, (x, nap, ready) = advance(flow, None, now=T0)
    late = TimerFired(nap.id, T0 + 3600)
    state, _ = advance(flow, state, (boom(x, at=T0 + 3600), late, ok(ready, True, at=T0 + 3600)))
    assert state.is_failed


def test_resuming_a_run_failed_by_a_group_starts_the_group_over() -> None:
    state, (first,) = advance(PARALLEL, None, now=T0)
    state, (a, c) = advance(PARALLEL, state, (ok(first),))
    failed, _ = advance(PARALLEL, state, (boom(a), ok(c)))
    assert failed.is_failed
    resumed, commands = stepflow.resume(PARALLEL, failed, now=T0)
    assert resumed.is_running
    assert [x.step for x in commands] == ["p/bothParallel/left/a", "p/bothParallel/right/c"]
    assert all(x.id > failed.seq for x in commands)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: named("f").parallel("p", {}), "no branches"),
        (lambda: named("f").parallel("p", {"a": "not a spec"}), "not a spec"),
        (lambda: named("f").parallel("p", [("a", steps())]), "must be a mapping"),
        (lambda: named("f").map("m", _noop, steps(), max_concurrency=0), "max_concurrency"),
        (lambda: named("f").map("m", _noop, steps(), max_failures=-1), "max_failures"),
        (lambda: named("f").parallel("p", {"a": steps()}, max_failures=True), "max_failures"),
        (lambda: named("f").map("m", "not callable", steps()), "not callable"),
    ],
)
def test_bad_groups_are_refused_with_the_path(build: Any, message: str) -> None:
    with pytest.raises(stepflow.DefinitionError, match=message):
        stepflow.new(build())


def test_bad_effect_batches_are_refused_whole_and_the_state_is_unchanged() -> None:
    state, (first,) = advance(PARALLEL, None, now=T0)
    state, (a, c) = advance(PARALLEL, state, (ok(first),))
    before = dumps(state)
    with pytest.raises(stepflow.DuplicateEffectError):
        advance(PARALLEL, state, (ok(a), ok(a)))
    with pytest.raises(stepflow.LateEffectError):
        advance(PARALLEL, state, (ok(first), ok(a)))
    with pytest.raises(stepflow.UnknownEffectError):
        advance(PARALLEL, state, (ok(a)._replace(command_id=99),))
    with pytest.raises(stepflow.EffectError):
        advance(PARALLEL, state, (TimerFired(a.id, T0),))
    assert dumps(state) == before
    # An effect for an item that already ended is late.
    done, _ = advance(PARALLEL, state, (ok(c),))
    with pytest.raises(stepflow.LateEffectError):
        advance(PARALLEL, done, (ok(c),))


def test_a_state_whose_position_lies_inside_a_group_without_its_progress_is_refused() -> None:
    with pytest.raises(stepflow.StateError, match="inside group"):
        loads(json.dumps(["start:p/bothParallel/left/a"]), PARALLEL)
    state, (first,) = advance(PARALLEL, None, now=T0)
    running, _ = advance(PARALLEL, state, (ok(first),))
    lost = running._replace(groups=running.groups.discard("p/bothParallel"))
    with pytest.raises(stepflow.StateError, match="inside group"):
        stepflow.core.check_state(PARALLEL, lost)


def test_several_positions_are_refused_in_a_flow_without_groups() -> None:
    flow = stepflow.new(named("f").do("a", _noop).do("b", _noop)).definition
    with pytest.raises(stepflow.StateError, match="exactly one position"):
        loads(json.dumps(["start:f/a", "start:f/b"]), flow)


def test_a_map_position_with_a_misplaced_or_missing_index_is_unknown() -> None:
    state, (items,) = advance(MAP, None, now=T0)
    state, (p0, _) = advance(MAP, state, (ok(items, ["eu", "us"]),))
    text = dumps(state)
    for wrong in ("start:m/regionsMap[0]/steps/push", "start:m/regionsMap/steps[0][1]/push"):
        with pytest.raises(stepflow.StateError):
            loads(text.replace(p0.event, wrong), MAP)


def test_a_format_2_state_cannot_hold_groups() -> None:
    state, (first,) = advance(PARALLEL, None, now=T0)
    running, _ = advance(PARALLEL, state, (ok(first),))
    envelope = json.loads(dumps(running))
    assert envelope["format"] == 3
    envelope["format"] = 2
    with pytest.raises(stepflow.CorruptStateError, match="format 3"):
        loads(json.dumps(envelope), PARALLEL)


# --------------------------------------------------------------------------- drivers


def test_flow_run_gives_map_items_their_item_and_index() -> None:
    seen: list[tuple[int, str]] = []

    def deploy(ctx: Any) -> str:
        seen.append((ctx.index, ctx.item))
        return f"{ctx.item}:{ctx.tag}"

    flow = stepflow.new(
        named("d").map("regions", lambda ctx: ["eu", "us"], steps().do("deploy", deploy))
    )

    class Ctx:
        tag = "v1"

    state = flow.run(None, Ctx())
    assert sorted(seen) == [(0, "eu"), (1, "us")]
    assert state.outputs["d/regionsMap"] == ["eu:v1", "us:v1"]


# --------------------------------------------------------------------------- properties

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from stepflow.testing import specs  # noqa: E402


def _has_group(spec: stepflow.Steps) -> bool:
    return stepflow.new(spec).definition._concurrent


def _success(command: stepflow.Command, state: stepflow.State) -> stepflow.Effect:
    """An outcome that depends on the command's own position only, never on timing or order."""
    wake_at = command_times(state, command)[0]
    at = T0 if wake_at is None else max(T0, wake_at)
    if type(command) is stepflow.Wake:
        return TimerFired(command.id, max(at, command.at))
    if command.kind == "wait_event":
        # Its event arrives; waits of one name take their events first-in first-out,
        # so the payload names the event, not the waiter, whatever the order.
        name = getattr(command, "name")  # noqa: B009 (an AwaitEvent's)
        return stepflow.EventReceived(name, name, at)
    if type(command) is stepflow.StartChild:  # its child completes, with its step as output
        return stepflow.ChildEnded(command.id, "completed", command.step, None, at)
    salt = sum(map(ord, command.step)) % 3
    value: Any = {
        "do": command.step,
        "wait_for": True,
        "loop_until": True,
        "case": salt == 0,
        "map": list(range(salt)),
        "switch": ["a", "b", 1][salt],
        "sleep_until": T0 + salt,  # due at once or a little later, by position alone
    }[command.kind]
    return HandlerReturned(command.id, value, at)


@settings(max_examples=200, deadline=None)
@given(specs(max_depth=2).filter(_has_group), st.data())
def test_independent_branches_end_the_same_whatever_the_order_of_their_effects(
    spec: stepflow.Steps, data: st.DataObject
) -> None:
    definition = stepflow.new(spec).definition
    # The reference: one effect at a time, in command id order.
    reference, commands = advance(definition, None, now=T0)
    while commands:
        reference, commands = advance(definition, reference, (_success(commands[0], reference),))
    # Any order and any grouping into batches.
    state, commands = advance(definition, None, now=T0)
    while commands:
        # A crash here loses nothing: a reload re-issues exactly the commands in flight.
        reloaded, again = advance(definition, loads(dumps(state), definition))
        assert again == commands
        assert [c.key for c in again] == [c.key for c in commands]
        assert reloaded == state
        chosen = data.draw(
            st.lists(st.sampled_from(commands), min_size=1, max_size=len(commands), unique=True)
        )
        state, commands = advance(definition, state, [_success(c, state) for c in chosen])
    assert state.status == reference.status
    assert state.outputs == reference.outputs
    assert state.seq == reference.seq
    assert state == reference


def test_result_error_judges_a_maps_items_as_advance_does() -> None:
    """The shell records a bad items value before journaling it: the same error as the core."""
    state, (items,) = advance(MAP, None, now=T0)
    assert stepflow.core.result_error(items, ["eu", {"id": 2}]) is None
    recorded = stepflow.core.result_error(items, {"eu": 1})
    failed, _ = advance(MAP, state, (ok(items, {"eu": 1}),))
    assert recorded == failed.error
