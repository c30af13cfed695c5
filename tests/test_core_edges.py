"""The rarely travelled paths of the pure core, each pinned by the behaviour it gives.

The common paths are covered by the test files that mirror each module; this file
holds what a real run seldom meets: values compared across types and after a
round trip through storage, malformed or stale states, JSON at its edges, and the
corners of the group rules (nested groups stopping, items that end at once,
failures while a group is already failing). Together they keep ``stepflow/core``
at 100% branch coverage (``scripts/core_coverage.sh``).
"""

from __future__ import annotations

import enum
from typing import Any

import pytest
from pyrsistent import pmap, pvector

import stepflow
from stepflow import (
    CallHandler,
    HandlerRaised,
    HandlerReturned,
    RetryPolicy,
    State,
    TimerFired,
    Wake,
    advance,
    dumps,
    loads,
    named,
    steps,
)
from stepflow.codec import Batch, dumps_batch, loads_batch
from stepflow.core import definition as definition_module
from stepflow.core._json import NotJSON, freeze_json, thaw_json
from stepflow.core.advance import result_error
from stepflow.core.checks import check_state
from stepflow.core.definition import (
    Destination,
    FlowDefinition,
    RetryRule,
    Transition,
    concretize,
    item_indices,
)
from stepflow.core.groups import item_of
from stepflow.core.state import ErrorRecord, GroupProgress
from stepflow.errors import (
    DefinitionError,
    EffectError,
    FlowMismatchError,
    IncompatibleDefinition,
    LateEffectError,
    StateError,
    UnknownEffectError,
    UnknownEventError,
)

T0 = 1_000.0


def _noop(ctx: Any) -> None:
    return None


def ok(command: stepflow.Command, value: Any = None, at: float | None = T0) -> HandlerReturned:
    return HandlerReturned(command.id, value, at)


def boom(
    command: stepflow.Command, at: float | None = T0, kind: str = "RuntimeError"
) -> HandlerRaised:
    return HandlerRaised(command.id, ErrorRecord(kind, "boom", command.step), None, at)


def by_step(commands: tuple[stepflow.Command, ...]) -> dict[str, stepflow.Command]:
    return {c.step: c for c in commands}


TWO_STEPS = stepflow.new(named("f").do("a", _noop).do("b", _noop)).definition
RETRIED = stepflow.new(
    named("r").retry("again", lambda ctx, exc: True, steps().do("a", _noop))
).definition
PARALLEL = stepflow.new(
    named("p").parallel("g", {"left": steps().do("a", _noop), "right": steps().do("b", _noop)})
).definition


# --------------------------------------------------------------------------- messages and state


def _messages() -> list[tuple[Any, tuple[Any, ...]]]:
    error = ErrorRecord("ValueError", "boom", "f/a")
    return [
        (CallHandler(1, "do", "f/a", "start:f/a", None), (1, "do", "f/a", "start:f/a", None)),
        (Wake(2, "sleep", "f/nap", "start:f/nap", 5.0), (2, "sleep", "f/nap", "start:f/nap", 5.0)),
        (HandlerReturned(1, "v", 3.0), (1, "v", 3.0)),
        (HandlerRaised(1, error, None, 3.0), (1, error, None, 3.0)),
        (TimerFired(2, 5.0), (2, 5.0)),
        (GroupProgress("map", ("eu",), 1, 1, pmap()), ("map", ("eu",), 1, 1, pmap(), 0, None)),
    ]


@pytest.mark.parametrize(("value", "fields"), _messages())
def test_a_message_equals_only_its_own_type_never_the_plain_tuple(
    value: Any, fields: tuple[Any, ...]
) -> None:
    twin = type(value)(*fields)
    assert value == twin
    assert not value != twin  # noqa: SIM202 - __ne__ is what is pinned
    assert hash(value) == hash(twin)
    assert len({value, twin}) == 1
    assert value != fields
    assert fields != value
    assert not value == fields  # noqa: SIM201 - __eq__ against a tuple
    other = type(value)(*((fields[0] + 1,) if type(fields[0]) is int else ("x",)), *fields[1:])
    assert value != other


def test_a_handler_raised_compares_without_its_live_exception() -> None:
    error = ErrorRecord("ValueError", "boom", "f/a")
    live = HandlerRaised(1, error, ValueError("boom"), 3.0)
    stored = HandlerRaised(1, error, None, 3.0)
    assert live == stored
    assert hash(live) == hash(stored)
    assert live != HandlerRaised(1, error, None, 4.0)


def test_effects_and_commands_equal_themselves_after_a_journal_round_trip() -> None:
    _, (a,) = advance(TWO_STEPS, None, now=T0)
    effects: tuple[stepflow.Effect, ...] = (HandlerReturned(a.id, {"n": [1, 2.5]}, T0 + 1),)
    batch = Batch("effects", T0 + 1, effects, (a,))
    again = loads_batch(dumps_batch(batch))
    assert again.effects == effects
    assert not again.effects[0] != effects[0]  # noqa: SIM202
    assert again.answered == (a,)
    raised = (HandlerRaised(a.id, ErrorRecord("KeyError", "k", "f/a"), KeyError("k"), T0),)
    assert loads_batch(dumps_batch(Batch("effects", T0, raised, (a,)))).effects == raised
    fired = (TimerFired(9, T0),)
    assert loads_batch(dumps_batch(Batch("effects", T0, fired, ()))).effects == fired


def test_a_state_equals_its_loaded_copy_and_hashes_alike() -> None:
    state, (a,) = advance(TWO_STEPS, None, now=T0)
    state, _ = advance(TWO_STEPS, state, (ok(a, {"k": [1, 2.5, "x"]}),))
    copy = loads(dumps(state), TWO_STEPS)
    assert copy == state
    assert not copy != state  # noqa: SIM202
    assert hash(copy) == hash(state)
    assert copy != tuple(state)
    assert copy != state._replace(seq=state.seq + 1)


def test_group_progress_survives_a_round_trip_inside_the_state() -> None:
    flow = stepflow.new(named("m").map("m", _noop, steps().do("x", _noop))).definition
    state, (items,) = advance(flow, None, now=T0)
    state, _ = advance(flow, state, (ok(items, ["eu", {"region": "us"}]),))
    copy = loads(dumps(state), flow)
    assert copy.groups == state.groups
    assert hash(copy.groups["m/mMap"]) == hash(state.groups["m/mMap"])
    assert not copy.groups["m/mMap"] != state.groups["m/mMap"]  # noqa: SIM202


# --------------------------------------------------------------------------- JSON freezing


class _Text(str):
    pass


class _Count(enum.IntEnum):
    ONE = 1


class _Ratio(float):
    pass


def test_freezing_turns_subclasses_of_json_types_into_the_plain_types() -> None:
    frozen = freeze_json({"t": _Text("x"), "n": _Count.ONE, "r": _Ratio(0.5), "f": 1.5})
    assert frozen == {"t": "x", "n": 1, "r": 0.5, "f": 1.5}
    assert [type(frozen[k]) for k in ("t", "n", "r", "f")] == [str, int, float, float]


def test_freezing_keeps_unicode_text_and_refuses_lone_surrogates_with_their_path() -> None:
    assert freeze_json(["héllo", _Text("wörld")]) == pvector(["héllo", "wörld"])
    with pytest.raises(NotJSON, match=r"\$\[1\] is a string with a lone surrogate") as info:
        freeze_json(["ok", "\ud800"])
    assert info.value.where == "$[1]"
    with pytest.raises(NotJSON, match=r"\$\.a key is a string with a lone surrogate"):
        freeze_json({"a": {"\udfff": 1}})


def test_freezing_refuses_values_json_cannot_hold_and_names_where_they_are() -> None:
    with pytest.raises(NotJSON, match=r"\$\.x is an integer beyond 64 bits"):
        freeze_json({"x": 2**63})
    with pytest.raises(NotJSON, match=r"\$\[0\] is nan"):
        freeze_json([float("nan")])
    with pytest.raises(NotJSON, match=r"\$ key is int 1"):
        freeze_json({1: "a"})
    with pytest.raises(NotJSON, match=r"\$\.s is set"):
        freeze_json({"s": {1}})


def test_frozen_mappings_and_vectors_freeze_and_thaw_to_plain_data() -> None:
    frozen = freeze_json(pmap({"a": pvector([1, (2, 3)])}))
    assert thaw_json(frozen) == {"a": [1, [2, 3]]}
    assert type(thaw_json(frozen)["a"]) is list


# --------------------------------------------------------------------------- result_error


def test_result_error_accepts_json_from_a_do_and_real_booleans_from_conditions() -> None:
    do = CallHandler(1, "do", "f/a", "start:f/a", None)
    assert result_error(do, {"a": [1, 2.5, None]}) is None
    assert result_error(do, None) is None
    case = CallHandler(2, "case", "f/cCase", "start:f/cCase", None)
    assert result_error(case, True) is None
    assert result_error(case, False) is None
    error = result_error(case, 1)
    assert error is not None
    assert error.type == "stepflow.errors.HandlerResultError"
    assert "case condition of 'f/cCase' returned 1 (int)" in error.message
    on_error = CallHandler(3, "on_error", "f/rRetry", "start:f/rRetry/a", None)
    error = result_error(on_error, "yes")
    assert error is not None
    assert "on_error handler of 'f/rRetry'" in error.message


# --------------------------------------------------------------------------- check_state


def _at(
    definition: FlowDefinition, event: str, *in_flight: stepflow.Command, **fields: Any
) -> State:
    """A hand-made state of ``definition`` resting at ``event``."""
    seq = max((c.id for c in in_flight), default=0)
    base = State(
        definition.name, definition.fingerprint, (event,), "running", None, in_flight, seq, pmap()
    )
    return base._replace(**fields)


def test_check_state_refuses_what_is_not_a_state() -> None:
    with pytest.raises(StateError, match="expected a stepflow State, got"):
        check_state(TWO_STEPS, ("f", "sha256:", ("start:f/a",)))  # type: ignore[arg-type]


def test_check_state_refuses_a_state_of_another_flow() -> None:
    other = stepflow.new(named("g").do("a", _noop)).definition
    state, _ = advance(other, None)
    with pytest.raises(FlowMismatchError, match="belongs to flow 'g', not 'f'") as info:
        check_state(TWO_STEPS, state)
    assert (info.value.expected, info.value.actual) == ("f", "g")


def test_check_state_refuses_a_state_with_no_position() -> None:
    with pytest.raises(StateError, match="holds 0 positions"):
        check_state(TWO_STEPS, _at(TWO_STEPS, "start:f/a")._replace(events=()))


def test_check_state_refuses_an_unknown_status() -> None:
    with pytest.raises(StateError, match="unknown status 'paused'"):
        check_state(TWO_STEPS, _at(TWO_STEPS, "start:f/a", status="paused"))


def test_check_state_refuses_a_failed_state_without_an_error_and_a_running_one_with_one() -> None:
    with pytest.raises(StateError, match="a 'failed' state must carry an error record, got None"):
        check_state(TWO_STEPS, _at(TWO_STEPS, "start:f/a", status="failed"))
    error = ErrorRecord("ValueError", "boom", "f/a")
    with pytest.raises(StateError, match="a 'running' state must not carry an error record"):
        check_state(TWO_STEPS, _at(TWO_STEPS, "start:f/a", error=error))


def test_check_state_refuses_a_command_in_flight_at_another_position() -> None:
    b = CallHandler(1, "do", "f/b", "start:f/b", None)
    with pytest.raises(StateError, match="command 1 waits at 'start:f/b', but the state is at"):
        check_state(TWO_STEPS, _at(TWO_STEPS, "start:f/a", b))


def test_check_state_refuses_a_command_for_an_event_the_run_cannot_rest_at() -> None:
    # "start:f" is only passed through on the way to "start:f/a": no command waits there.
    command = CallHandler(1, "do", "f/a", "start:f", None)
    with pytest.raises(UnknownEventError, match="'start:f'") as info:
        check_state(TWO_STEPS, _at(TWO_STEPS, "start:f", command))
    assert info.value.events == ("start:f",)


def test_check_state_refuses_a_command_of_another_kind_or_step_than_its_position() -> None:
    wrong_kind = CallHandler(1, "case", "f/a", "start:f/a", None)
    with pytest.raises(UnknownEventError, match="'case of f/a at start:f/a'"):
        check_state(TWO_STEPS, _at(TWO_STEPS, "start:f/a", wrong_kind))
    wrong_step = CallHandler(1, "do", "f/b", "start:f/a", None)
    with pytest.raises(UnknownEventError, match="'do of f/b at start:f/a'"):
        check_state(TWO_STEPS, _at(TWO_STEPS, "start:f/a", wrong_step))


def test_check_state_refuses_an_on_error_command_of_a_retry_not_around_the_position() -> None:
    flow = stepflow.new(
        named("r").retry("again", lambda ctx, exc: True, steps().do("a", _noop)).do("b", _noop)
    ).definition
    error = ErrorRecord("ValueError", "boom", "r/b")
    ask = CallHandler(1, "on_error", "r/againRetry", "start:r/b", error)
    with pytest.raises(UnknownEventError, match="on_error of r/againRetry around start:r/b"):
        check_state(flow, _at(flow, "start:r/b", ask))
    inside = CallHandler(1, "on_error", "r/againRetry", "start:r/againRetry/a", error)
    state = _at(flow, "start:r/againRetry/a", inside)
    assert check_state(flow, state) is state


def test_check_state_refuses_retry_attempts_of_a_retry_not_around_the_position() -> None:
    flow = stepflow.new(
        named("r").retry("again", lambda ctx, exc: True, steps().do("a", _noop)).do("b", _noop)
    ).definition
    state = _at(flow, "start:r/b", attempts=pmap({"r/againRetry": 1}))
    with pytest.raises(UnknownEventError, match="retry attempts of r/againRetry around"):
        check_state(flow, state)


def test_check_state_refuses_group_progress_for_a_scope_that_is_not_a_group() -> None:
    state, _ = advance(PARALLEL, None)
    stray = state.groups.set("p/nowhere", GroupProgress("map", (), 0, 0, pmap()))
    with pytest.raises(UnknownEventError, match="group p/nowhere"):
        check_state(PARALLEL, state._replace(groups=stray))
    not_a_group = state.groups.set("p/gParallel/left/a", GroupProgress("map", (), 0, 0, pmap()))
    with pytest.raises(UnknownEventError, match="group p/gParallel/left/a"):
        check_state(PARALLEL, state._replace(groups=not_a_group))


def test_check_state_refuses_positions_out_of_step_with_their_commands() -> None:
    state, (a, b) = advance(PARALLEL, None)
    with pytest.raises(StateError, match="each position of a run with several has exactly one"):
        check_state(PARALLEL, state._replace(in_flight=(b, a)))


def test_an_adopted_state_keeps_running_when_every_position_still_exists() -> None:
    v2 = stepflow.new(named("f").do("a", _noop).do("b", _noop).do("c", _noop)).definition
    state, _ = advance(TWO_STEPS, None)
    adopted = check_state(v2, state)
    assert adopted.fingerprint == v2.fingerprint
    assert adopted._replace(fingerprint=state.fingerprint) == state


def test_an_adopted_state_whose_position_or_command_is_gone_is_incompatible() -> None:
    v2 = stepflow.new(named("f").do("a", _noop).do("c", _noop)).definition
    state, (a,) = advance(TWO_STEPS, None)
    state, _ = advance(TWO_STEPS, state, (ok(a),))
    with pytest.raises(IncompatibleDefinition, match=r"'start:f/b'.*no longer has") as info:
        check_state(v2, state)
    assert info.value.events == ("start:f/b",)
    assert (info.value.state_fingerprint, info.value.definition_fingerprint) == (
        TWO_STEPS.fingerprint,
        v2.fingerprint,
    )
    # The retry around the position went away: its on_error command lost its meaning.
    plain = stepflow.new(named("r").do("a", _noop)).definition
    retried = stepflow.new(
        named("r").retry("again", lambda ctx, exc: True, steps().do("a", _noop))
    ).definition
    error = ErrorRecord("ValueError", "boom", "r/againRetry/a")
    ask = CallHandler(1, "on_error", "r/againRetry", "start:r/againRetry/a", error)
    with pytest.raises(IncompatibleDefinition, match="'start:r/againRetry/a'"):
        check_state(plain, _at(retried, "start:r/againRetry/a", ask))


def test_an_adopted_state_of_a_flow_with_groups_continues_under_the_new_definition() -> None:
    v2 = stepflow.new(
        named("p")
        .parallel("g", {"left": steps().do("a", _noop), "right": steps().do("b", _noop)})
        .do("after", _noop)
    ).definition
    state, (a, b) = advance(PARALLEL, None)
    state, commands = advance(v2, state, (ok(a, 1), ok(b, 2)))
    assert state.fingerprint == v2.fingerprint
    assert [c.step for c in commands] == ["p/after"]
    assert state.outputs["p/gParallel"] == {"left": 1, "right": 2}


# --------------------------------------------------------------------------- advance edges


def test_a_command_waiting_at_the_end_of_the_flow_is_refused() -> None:
    stray = CallHandler(1, None, "f", "completed:f", None)  # type: ignore[arg-type]
    with pytest.raises(StateError, match="waits at an event with no handler"):
        advance(TWO_STEPS, _at(TWO_STEPS, "completed:f", stray), (ok(stray),))
    unknown = CallHandler(1, "do", "f/zz", "start:f/zz", None)
    with pytest.raises(UnknownEventError, match="start:f/zz"):
        advance(TWO_STEPS, _at(TWO_STEPS, "start:f/zz", unknown), (ok(unknown),))


def test_a_do_that_returns_none_after_a_value_keeps_its_earlier_output() -> None:
    flow = stepflow.new(
        named("l").loop_until("again", _noop, steps().do("a", _noop)).do("b", _noop)
    ).definition
    state, (a,) = advance(flow, None)
    state, (cond,) = advance(flow, state, (ok(a, {"n": 1}),))
    assert state.outputs["l/againLoopUntil/steps/a"] == {"n": 1}
    state, (a,) = advance(flow, state, (ok(cond, False),))
    state, (cond,) = advance(flow, state, (ok(a, None),))
    # None keeps the latest non-None value (docs/concepts.md).
    assert state.outputs == {"l/againLoopUntil/steps/a": {"n": 1}}


def test_a_timeout_counts_from_the_first_timed_answer_when_the_wait_began_untimed() -> None:
    flow = stepflow.new(named("w").wait_for("ready", _noop, every=10, timeout=100)).definition
    state, (poll,) = advance(flow, None)  # no time known: no deadline yet
    assert state.timeout_at is None
    state, (poll,) = advance(flow, state, (ok(poll, False, at=T0),))
    assert (state.wake_at, state.timeout_at) == (T0 + 10, T0 + 100)
    state, (poll,) = advance(flow, state, (ok(poll, False, at=T0 + 95),))
    assert state.wake_at == T0 + 100  # the last poll is at the deadline, not past it
    state, commands = advance(flow, state, (ok(poll, False, at=T0 + 100),))
    assert state.is_failed
    assert commands == ()
    assert state.error is not None
    assert state.error.type == "stepflow.errors.WaitTimeoutError"


def test_a_batch_with_an_unknown_command_id_beside_a_good_one_is_refused_whole() -> None:
    state, (a,) = advance(TWO_STEPS, None)
    with pytest.raises(UnknownEffectError, match="no command 99 was issued"):
        advance(TWO_STEPS, state, (ok(a), ok(CallHandler(99, "do", "f/a", "start:f/a", None))))
    after, (b,) = advance(TWO_STEPS, state, (ok(a),))
    with pytest.raises(LateEffectError, match="command 1 of run 'f' was already answered"):
        advance(TWO_STEPS, after, (ok(b), ok(a)))


def test_two_commands_in_flight_in_a_flow_without_groups_are_refused_one_effect_each() -> None:
    # A hand-made state (loads would refuse it): each effect answers a command in
    # flight, yet a run of one position takes one effect per batch.
    a = CallHandler(1, "do", "f/a", "start:f/a", None)
    twin = CallHandler(2, "do", "f/a", "start:f/a", None)
    state = _at(TWO_STEPS, "start:f/a", a, twin)
    with pytest.raises(EffectError, match="a batch of 2 effects cannot answer the 2 command"):
        advance(TWO_STEPS, state, (ok(a), ok(twin)))


# --------------------------------------------------------------------------- groups


def test_item_of_is_none_for_a_step_outside_any_map() -> None:
    state, (a, _) = advance(PARALLEL, None)
    assert state.groups
    assert item_of(state, a.step) is None


def test_item_of_gives_the_innermost_map_item_the_state_holds_progress_of() -> None:
    outer = GroupProgress("map", ("eu", pmap({"r": "us"})), 2, 2, pmap())
    state = State("f", "", (), "running", None, (), 0, pmap(), groups=pmap({"f/aMap": outer}))
    # The inner map's progress is not in this state: its item is unknown, the outer one's is.
    assert item_of(state, "f/aMap/steps[1]/bMap/steps[0]/x") == (1, {"r": "us"})


def test_inside_a_group_a_do_that_returns_none_keeps_its_output_and_its_branch_result() -> None:
    flow = stepflow.new(
        named("p").parallel(
            "g",
            {
                "left": steps().loop_until("again", _noop, steps().do("a", _noop)),
                "right": steps().do("b", _noop),
            },
        )
    ).definition
    path = "p/gParallel/left/againLoopUntil/steps/a"
    state, (a, b) = advance(flow, None)
    state, commands = advance(flow, state, (ok(a, "first"),))
    assert state.outputs[path] == "first"
    cond = by_step(commands)["p/gParallel/left/againLoopUntil"]
    state, commands = advance(flow, state, (ok(cond, False),))
    a = by_step(commands)[path]
    state, commands = advance(flow, state, (ok(a, None),))
    assert state.outputs[path] == "first"  # None keeps the latest non-None value
    cond = by_step(commands)["p/gParallel/left/againLoopUntil"]
    state, _ = advance(flow, state, (ok(cond, True), ok(b, "b")))
    assert state.is_completed
    assert state.outputs["p/gParallel"] == {"left": "first", "right": "b"}


def test_inside_a_group_a_do_that_returns_no_json_fails_its_branch_and_the_group() -> None:
    state, (a, b) = advance(PARALLEL, None)
    state, commands = advance(PARALLEL, state, (ok(a, object()),))
    assert commands == (b,)
    assert "p/gParallel/left/a" not in state.outputs
    state, _ = advance(PARALLEL, state, (ok(b, "b"),))
    assert state.is_failed
    assert state.error is not None
    assert state.error.type == "stepflow.errors.HandlerResultError"
    assert state.error.step == "p/gParallel/left/a"


def test_without_a_known_time_a_failing_group_keeps_its_polls_until_they_are_answered() -> None:
    flow = stepflow.new(
        named("d").parallel(
            "g",
            {"fails": steps().do("x", _noop), "polls": steps().wait_for("ready", _noop, every=60)},
        )
    ).definition
    state, (x, ready) = advance(flow, None)
    state, commands = advance(flow, state, (ok(ready, False, at=None),))
    ready = by_step(commands)["d/gParallel/polls/readyWaitFor"]
    state, commands = advance(flow, state, (boom(x, at=None),))
    # No time known: nothing is known not to be polling, so the poll stays in flight.
    assert state.is_running
    assert commands == (ready,)
    state, commands = advance(flow, state, (ok(ready, True, at=None),))
    assert state.is_failed
    assert commands == ()


NESTED = stepflow.new(
    named("n").parallel(
        "g",
        {
            "fails": steps().do("x", _noop),
            "fan": steps().map("m", _noop, steps().do("y", _noop)),
        },
    )
).definition


def test_a_failing_group_lets_the_items_of_a_nested_map_finish_then_fails_once() -> None:
    state, (x, items) = advance(NESTED, None, now=T0)
    state, commands = advance(NESTED, state, (ok(items, ["eu", "us"]),))
    y0, y1 = (c for c in commands if c.kind == "do" and c.step.endswith("/y"))
    state, commands = advance(NESTED, state, (boom(x),))
    assert state.is_running
    assert commands == (y0, y1)
    assert set(state.groups) == {"n/gParallel", "n/gParallel/fan/mMap"}
    state, commands = advance(NESTED, state, (ok(y0, "eu done"),))
    # One item still in flight: the inner map stays, and nothing new starts.
    assert commands == (y1,)
    assert state.groups["n/gParallel/fan/mMap"].active == 1
    state, commands = advance(NESTED, state, (ok(y1, "us done"),))
    assert state.is_failed
    assert commands == ()
    assert state.groups == {}
    assert state.error is not None
    assert state.error.step == "n/gParallel/fails/x"
    # The outcomes that arrived are kept; the stopped map has no output of its own.
    assert state.outputs["n/gParallel/fan/mMap/steps[1]/y"] == "us done"
    assert "n/gParallel/fan/mMap" not in state.outputs


def test_items_that_arrive_while_an_enclosing_group_fails_start_nothing() -> None:
    state, (x, items) = advance(NESTED, None, now=T0)
    state, commands = advance(NESTED, state, (boom(x),))
    assert commands == (items,)
    state, commands = advance(NESTED, state, (ok(items, ["eu", "us"]),))
    assert state.is_failed
    assert commands == ()
    assert state.error is not None
    assert state.error.step == "n/gParallel/fails/x"
    assert state.seq == items.id


def test_a_failure_while_the_group_already_fails_stops_its_item_and_keeps_the_first_error() -> None:
    flow = stepflow.new(named("t").map("m", _noop, steps().do("x", _noop))).definition
    state, (items,) = advance(flow, None, now=T0)
    state, (x0, x1, x2) = advance(flow, state, (ok(items, [0, 1, 2]),))
    state, commands = advance(flow, state, (boom(x1, kind="KeyError"),))
    assert commands == (x0, x2)
    state, commands = advance(flow, state, (boom(x0, kind="OSError"),))
    # The item stops like any other in a failing group: not counted as a failure of its own.
    assert commands == (x2,)
    progress = state.groups["t/mMap"]
    assert (progress.failures, progress.active) == (1, 1)
    assert progress.error == ErrorRecord("KeyError", "boom", x1.step)
    state, _ = advance(flow, state, (ok(x2, "two"),))
    assert state.is_failed
    assert state.error == ErrorRecord("KeyError", "boom", x1.step)
    assert state.outputs["t/mMap/steps[2]/x"] == "two"


def test_a_failed_item_forgets_the_attempts_of_the_retries_inside_it() -> None:
    flow = stepflow.new(
        named("t").map(
            "m",
            _noop,
            steps().retry(
                "r", RetryPolicy(max_attempts=2, initial_interval=0), steps().do("x", _noop)
            ),
            max_failures=1,
        )
    ).definition
    state, (items,) = advance(flow, None, now=T0)
    state, (x0, x1) = advance(flow, state, (ok(items, ["a", "b"]),))
    state, commands = advance(flow, state, (boom(x0),))
    assert dict(state.attempts) == {"t/mMap/steps[0]/rRetry": 1}
    x0 = by_step(commands)["t/mMap/steps[0]/rRetry/x"]
    state, commands = advance(flow, state, (boom(x0),))
    assert commands == (x1,)
    assert dict(state.attempts) == {}
    state, _ = advance(flow, state, (ok(x1, "b"),))
    assert state.is_completed
    assert state.outputs["t/mMap"][0]["error"]["step"] == "t/mMap/steps[0]/rRetry/x"


def test_map_items_that_end_at_once_complete_the_map_in_the_same_step() -> None:
    flow = stepflow.new(
        named("e")
        .map("m", _noop, steps().steps("nothing", steps()), max_concurrency=1)
        .do("z", _noop)
    ).definition
    state, (items,) = advance(flow, None, now=T0)
    state, commands = advance(flow, state, (ok(items, [1, 2, 3]),))
    assert [c.step for c in commands] == ["e/z"]
    assert state.outputs["e/mMap"] == [None, None, None]
    assert state.groups == {}


def test_an_items_handler_that_raises_goes_to_the_retry_around_the_map() -> None:
    flow = stepflow.new(
        named("i").retry(
            "again",
            RetryPolicy(max_attempts=2, initial_interval=0),
            steps().map("m", _noop, steps().do("x", _noop)),
        )
    ).definition
    state, (items,) = advance(flow, None, now=T0)
    state, (again,) = advance(flow, state, (boom(items),))
    assert (again.kind, again.step, again.id) == ("map", items.step, items.id + 1)
    assert dict(state.attempts) == {"i/againRetry": 1}
    state, commands = advance(flow, state, (boom(again, kind="OSError"),))
    assert state.is_failed
    assert commands == ()
    assert state.error == ErrorRecord("OSError", "boom", items.step)


def test_a_timer_cannot_answer_the_items_command_of_a_map() -> None:
    flow = stepflow.new(named("i").map("m", _noop, steps().do("x", _noop))).definition
    state, (items,) = advance(flow, None, now=T0)
    with pytest.raises(EffectError, match="cannot answer map command"):
        advance(flow, state, (TimerFired(items.id, T0),))


def test_a_running_state_with_several_positions_and_no_command_is_refused() -> None:
    state, _ = advance(PARALLEL, None)
    with pytest.raises(StateError, match="each position of a run with several has exactly one"):
        advance(PARALLEL, state._replace(in_flight=()))


def test_a_batch_that_goes_on_after_the_run_ended_is_refused_whole() -> None:
    # A hand-made state with two positions outside any group (no run reaches it):
    # the first effect ends the run, so the second has nothing left to answer.
    flow = stepflow.new(
        named("q").parallel("g", {"x": steps().do("x", _noop)}).do("a", _noop).do("b", _noop)
    ).definition
    b = CallHandler(1, "do", "q/b", "start:q/b", None)
    a = CallHandler(2, "do", "q/a", "start:q/a", None)
    state = State(
        "q", flow.fingerprint, ("start:q/b", "start:q/a"), "running", None, (b, a), 2, pmap()
    )
    with pytest.raises(LateEffectError, match="command 2 of run 'q' was already answered"):
        advance(flow, state, (ok(a), ok(b)))


# --------------------------------------------------------------------------- definition


def test_item_indices_and_concretize_work_on_paths_as_well_as_events() -> None:
    assert item_indices("f/aMap/steps[12]/x") == (12,)
    assert item_indices("start:f/x") == ()
    maps = ("f/aMap/steps", "f/aMap/steps/bMap/steps")
    assert (
        concretize("f/aMap/steps/bMap/steps/y", maps, (3, 4)) == "f/aMap/steps[3]/bMap/steps[4]/y"
    )
    assert concretize("completed:f/aMap/steps", maps[:1], (0,)) == "completed:f/aMap/steps[0]"
    # A scope that merely shares a prefix is not inside the item scope.
    assert concretize("f/aMap/stepsX", maps[:1], (0,)) == "f/aMap/stepsX"


def test_concrete_nodes_are_cached_and_the_cache_starts_over_when_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow = stepflow.new(named("c").map("m", _noop, steps().do("x", _noop))).definition
    first = flow._node("start:c/mMap/steps[0]/x")
    assert flow._node("start:c/mMap/steps[0]/x") is first
    monkeypatch.setattr(definition_module, "_CONCRETE_CACHE", 2)
    nodes = [flow._node(f"start:c/mMap/steps[{i}]/x") for i in range(1, 5)]
    assert len(flow._concrete) <= 2
    assert [n.step for n in nodes] == [f"c/mMap/steps[{i}]/x" for i in range(1, 5)]
    # Made again after the cache started over: equal, and still right.
    assert flow._node("start:c/mMap/steps[0]/x") == first


def test_a_position_with_the_wrong_indices_is_no_node_of_the_flow() -> None:
    flow = stepflow.new(named("c").map("m", _noop, steps().do("x", _noop))).definition
    for event in ("start:c/mMap/steps[0][1]/x", "start:c/mMap/steps/x[0]", "start:c/nope[0]"):
        with pytest.raises(KeyError):
            flow._node(event)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be an int >= 1 or None, got 0"),
        ({"max_attempts": True}, "max_attempts must be an int >= 1 or None, got True"),
        ({"max_attempts": 2.5}, "max_attempts must be an int >= 1 or None, got 2.5"),
        ({"backoff_coefficient": 0.5}, "backoff_coefficient must be >= 1, got 0.5"),
        ({"backoff_coefficient": float("inf")}, "backoff_coefficient must be >= 1, got inf"),
        ({"jitter": 1.5}, "jitter must be a fraction between 0 and 1, got 1.5"),
        ({"jitter": -0.1}, "jitter must be a fraction between 0 and 1, got -0.1"),
        ({"non_retryable": (42,)}, "non_retryable takes exception types or their qualified"),
        ({"non_retryable": (int,)}, "non_retryable takes exception types or their qualified"),
    ],
)
def test_a_bad_retry_policy_is_refused_with_the_field_it_names(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(DefinitionError, match=message):
        RetryPolicy(**fields)


def test_non_retryable_takes_types_and_names_alike() -> None:
    class Fatal(Exception):
        pass

    policy = RetryPolicy(non_retryable=(ValueError, "x.Y", Fatal))
    assert policy.non_retryable == tuple(
        sorted(("ValueError", "x.Y", f"{__name__}.{Fatal.__qualname__}"))
    )
    assert not policy.allows(1, "ValueError")
    assert policy.allows(1, "KeyError")


def _do(source: str, step: str, destination: str) -> Transition:
    return Transition(source, "do", step, (Destination(destination, "static"),))


def test_a_table_whose_run_could_leave_its_end_is_refused() -> None:
    with pytest.raises(DefinitionError, match="a transition leaves 'completed:f'"):
        FlowDefinition(
            "f",
            (
                Transition("start:f", "static", None, (Destination("start:f/a", "static"),)),
                _do("start:f/a", "f/a", "completed:f"),
                _do("completed:f", "f", "start:f/a"),
            ),
        )


def test_a_table_with_no_way_in_is_refused() -> None:
    with pytest.raises(DefinitionError, match="no transition leaves the start event 'start:f'"):
        FlowDefinition("f", (_do("start:f/a", "f/a", "completed:f"),))


def test_a_retry_rule_for_a_scope_no_step_is_inside_is_refused() -> None:
    table = (
        Transition("start:f", "static", None, (Destination("start:f/a", "static"),)),
        _do("start:f/a", "f/a", "completed:f"),
    )
    with pytest.raises(DefinitionError, match="retry rule for 'f/xRetry', which no step is inside"):
        FlowDefinition("f", table, (RetryRule("f/xRetry", RetryPolicy()),))


def test_a_definition_describes_its_retries_and_shows_a_short_repr() -> None:
    policy = RetryPolicy(max_attempts=4)
    flow = stepflow.new(
        named("r").retry(
            "outer", policy, steps().retry("inner", lambda ctx, exc: True, steps().do("a", _noop))
        )
    ).definition
    assert flow.retry_scopes() == ("r/outerRetry/innerRetry", "r/outerRetry")
    assert flow.enclosing_retries("start:r/outerRetry/innerRetry/a") == (
        "r/outerRetry/innerRetry",
        "r/outerRetry",
    )
    assert flow.retry_rule("r/outerRetry") == RetryRule("r/outerRetry", policy, on_error=False)
    assert flow.retry_rule("r/outerRetry/innerRetry").policy is None
    with pytest.raises(KeyError):
        flow.retry_rule("r/nowhere")
    assert repr(flow) == (
        f"FlowDefinition(name='r', transitions=<{len(flow.transitions)}>, "
        f"fingerprint={flow.fingerprint[:19]!r}...)"
    )


# --------------------------------------------------------------------------- compile


def test_compiling_what_is_not_a_spec_is_refused() -> None:
    with pytest.raises(DefinitionError, match=r"expected a flow spec from stepflow\.named"):
        stepflow.new("deploy/v1")  # type: ignore[arg-type]


def test_a_spec_holding_something_other_than_a_step_is_refused_with_its_place() -> None:
    from stepflow.core.spec import Steps

    with pytest.raises(DefinitionError, match="step #1 of 'f' is 'oops', not a step"):
        stepflow.new(Steps("f", (*named("f").do("a", _noop).items, "oops")))  # type: ignore[arg-type]


def test_a_retry_whose_policy_is_not_a_retry_policy_is_refused() -> None:
    from stepflow.core.spec import Retry, Steps

    bad = Retry("again", None, steps().do("a", _noop), {"max_attempts": 3})  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="the policy of retry 'f/againRetry' is"):
        stepflow.new(Steps("f", (bad,)))


# --------------------------------------------------------------------------- hand-made group states

TWO_LEFT = stepflow.new(
    named("p").parallel(
        "g", {"left": steps().do("a", _noop).do("b", _noop), "right": steps().do("c", _noop)}
    )
).definition


def test_a_hand_made_state_that_lost_its_group_progress_is_refused_when_a_branch_ends() -> None:
    state, (a, _) = advance(TWO_LEFT, None)
    state, commands = advance(TWO_LEFT, state, (ok(a, 1),))
    b = by_step(commands)["p/gParallel/left/b"]
    lost = state._replace(groups=state.groups.discard("p/gParallel"))
    with pytest.raises(StateError, match="inside group 'p/gParallel', but holds no progress"):
        advance(TWO_LEFT, lost, (ok(b, 2),))


def test_a_hand_made_state_holding_one_position_twice_refuses_the_second_answer() -> None:
    state, (a, _) = advance(TWO_LEFT, None)
    twin = a._replace(id=state.seq + 1)
    doubled = state._replace(events=(a.event, a.event), in_flight=(a, twin), seq=twin.id)
    # One answer moves the position on; the other then has no position left to answer.
    with pytest.raises(LateEffectError, match=f"command {twin.id} of run 'p' was already answered"):
        advance(TWO_LEFT, doubled, (ok(a, "x"), ok(twin, "y")))


def test_a_state_holding_one_position_twice_is_refused() -> None:
    definition = stepflow.new(
        stepflow.named("t").parallel("p", {"a": stepflow.steps().do("x", print)})
    ).definition
    state, _ = stepflow.advance(definition, None, now=0.0)
    twice = state._replace(events=state.events * 2, in_flight=state.in_flight * 2)
    with pytest.raises(stepflow.StateError, match="twice"):
        stepflow.core.check_state(definition, twice)


def test_several_positions_outside_any_group_are_refused_in_a_flow_with_groups() -> None:
    definition = stepflow.new(
        stepflow.named("t")
        .do("a", print)
        .do("b", print)
        .parallel("p", {"x": stepflow.steps().do("c", print)})
    ).definition
    state, (a,) = stepflow.advance(definition, None, now=0.0)
    b = stepflow.CallHandler(a.id + 1, "do", "t/b", "start:t/b", None)
    both = state._replace(events=("start:t/a", "start:t/b"), in_flight=(a, b), seq=b.id)
    with pytest.raises(stepflow.StateError, match="lies in no parallel or map group"):
        stepflow.core.check_state(definition, both)
