"""The journal batch codec, and reading states written before timers (format 1)."""

from __future__ import annotations

import json

import pytest
from pyrsistent import pmap

import stepflow
from stepflow import (
    CallHandler,
    ErrorRecord,
    HandlerRaised,
    HandlerReturned,
    RetryPolicy,
    TimerFired,
    Wake,
)
from stepflow.codec import Batch, dumps_batch, loads_batch
from stepflow.core.advance import result_error

T0 = 1_000.0


def noop(ctx: object) -> None:
    return None


def yes(ctx: object) -> bool:
    return True


def decline(ctx: object, exc: BaseException) -> bool:
    return False


FLOW = stepflow.new(
    stepflow.named("j/v1")
    .do("a", noop)
    .wait_for("w", yes, every=5)
    .sleep("s", 30)
    .retry("r", RetryPolicy(max_attempts=3), stepflow.steps().do("x", noop), on_error=decline)
)
DEFINITION = FLOW.definition

DO = CallHandler(1, "do", "j/v1/a", "start:j/v1/a", None)
POLL = CallHandler(2, "wait_for", "j/v1/wWaitFor", "start:j/v1/wWaitFor", None)
WAKE = Wake(3, "sleep", "j/v1/s", "start:j/v1/s", T0 + 30)
BOOM = ErrorRecord("RuntimeError", "boom", "j/v1/rRetry/x")
ASK = CallHandler(5, "on_error", "j/v1/rRetry", "start:j/v1/rRetry/x", BOOM)


def apply(state: stepflow.State, effects: tuple[stepflow.Effect, ...]) -> stepflow.State:
    return stepflow.advance(DEFINITION, state, effects)[0]


def round_trip(batch: Batch) -> Batch:
    return loads_batch(dumps_batch(batch))


# -- round trips --------------------------------------------------------------------


@pytest.mark.parametrize(
    "batch",
    [
        Batch("effects", T0, (HandlerReturned(1, {"pr": 42, "tags": ["x", "y"]}, T0),), (DO,)),
        Batch("effects", T0, (HandlerReturned(1, None, None),), (DO,)),
        Batch("effects", T0, (HandlerReturned(2, False, T0 + 1),), (POLL,)),
        Batch(
            "effects",
            T0,
            (HandlerRaised(1, ErrorRecord("app.Flaky", "näive ☃", "j/v1/a"), None, T0),),
            (DO,),
        ),
        Batch("effects", T0 + 30, (TimerFired(3, T0 + 30.5),), (WAKE,)),
        Batch("effects", T0, (HandlerReturned(5, True, T0),), (ASK,)),
        Batch("resume", T0 + 99),
        Batch("cancel", None),
        Batch("cancel", T0, (), (POLL,)),
    ],
    ids=[
        "returned",
        "returned-none",
        "condition",
        "raised",
        "timer",
        "on-error",
        "resume",
        "cancel",
        "cancel-answered",
    ],
)
def test_a_batch_round_trips_for_every_effect_and_op(batch: Batch) -> None:
    loaded = round_trip(batch)
    assert loaded == batch
    assert [type(e) for e in loaded.effects] == [type(e) for e in batch.effects]
    assert [type(c) for c in loaded.answered] == [type(c) for c in batch.answered]


def test_a_raised_effect_loses_its_live_exception_but_stays_equal() -> None:
    exc = RuntimeError("boom")
    batch = Batch("effects", T0, (HandlerRaised(4, BOOM, exc, T0),))
    (loaded,) = round_trip(batch).effects
    assert isinstance(loaded, HandlerRaised)
    assert loaded.exception is None
    assert loaded == batch.effects[0]


def test_dumps_batch_writes_sorted_keys_and_no_spaces() -> None:
    text = dumps_batch(Batch("effects", T0, (HandlerReturned(1, {"b": 1, "a": 2}, T0),), (DO,)))
    body = json.loads(text)
    assert text == json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert body["op"] == "effects"
    assert body["effects"] == [
        {"at": T0, "command": 1, "type": "returned", "value": {"a": 2, "b": 1}}
    ]
    assert body["answered"] == [
        {"error": None, "event": "start:j/v1/a", "id": 1, "kind": "do", "step": "j/v1/a"}
    ]


def test_equal_batches_give_equal_text() -> None:
    one = Batch(
        "effects",
        T0,
        (HandlerReturned(1, {"b": [1, {"y": 2, "x": 3}], "a": None}, T0),),
        (DO,),
    )
    two = Batch(
        "effects",
        T0,
        (HandlerReturned(1, {"a": None, "b": [1, {"x": 3, "y": 2}]}, T0),),
        (DO,),
    )
    assert one == two
    assert dumps_batch(one) == dumps_batch(two)
    # The live exception takes no part in equality, nor in the text.
    raised_one = Batch("effects", T0, (HandlerRaised(4, BOOM, RuntimeError("a"), T0),))
    raised_two = Batch("effects", T0, (HandlerRaised(4, BOOM, None, T0),))
    assert raised_one == raised_two
    assert dumps_batch(raised_one) == dumps_batch(raised_two)


def test_equal_batches_with_times_given_as_ints_give_equal_text() -> None:
    as_ints = Batch(
        "effects",
        1_000,
        (TimerFired(3, 1_030),),
        (Wake(3, "sleep", "j/v1/s", "start:j/v1/s", 1_030),),
    )
    as_floats = Batch("effects", 1_000.0, (TimerFired(3, 1_030.0),), (WAKE,))
    assert as_ints == as_floats
    assert dumps_batch(as_ints) == dumps_batch(as_floats)
    # Re-encoding a loaded entry gives back the text it was read from.
    text = dumps_batch(as_ints)
    assert dumps_batch(loads_batch(text)) == text


# -- values JSON cannot hold ----------------------------------------------------------


def _at_do() -> stepflow.State:
    state, commands = stepflow.advance(DEFINITION, now=T0)
    assert commands == (DO,)
    return state


def _at_poll() -> stepflow.State:
    state = _at_do()
    state, commands = stepflow.advance(DEFINITION, state, (HandlerReturned(DO.id, None, T0),))
    assert commands == (POLL,)
    return state


@pytest.mark.parametrize(
    "value",
    [object(), {"when": object()}, [1, float("nan")], 2**70, {1: "int key"}],
    ids=["object", "nested-object", "nan", "big-int", "int-key"],
)
def test_a_non_json_return_is_journaled_as_the_failure_advance_makes_of_it(value: object) -> None:
    state = _at_do()
    original = HandlerReturned(DO.id, value, T0 + 1)
    batch = Batch("effects", T0 + 1, (original,), (DO,))
    text = dumps_batch(batch)
    (entry,) = json.loads(text)["effects"]
    assert entry["type"] == "raised"
    (loaded,) = loads_batch(text).effects
    assert isinstance(loaded, HandlerRaised)
    assert loaded.error == result_error(DO, value)
    assert loaded.at == T0 + 1
    replayed = apply(state, (loaded,))
    assert replayed == apply(state, (original,))
    assert replayed.is_failed
    assert stepflow.dumps(replayed) == stepflow.dumps(apply(state, (original,)))


def test_a_condition_returning_a_non_json_non_bool_replays_to_the_same_state() -> None:
    state = _at_poll()
    value = object()
    original = HandlerReturned(POLL.id, value, T0 + 2)
    (loaded,) = round_trip(Batch("effects", T0 + 2, (original,), (POLL,))).effects
    assert loaded.error == result_error(POLL, value)  # type: ignore[union-attr]
    assert apply(state, (loaded,)) == apply(state, (original,))


def test_a_returned_string_with_a_lone_surrogate_is_journaled_and_replays_to_the_same_state() -> (
    None
):
    state = _at_do()
    original = HandlerReturned(DO.id, "half a pair: \ud800", T0 + 1)
    loaded = round_trip(Batch("effects", T0 + 1, (original,), (DO,)))
    assert apply(state, loaded.effects) == apply(state, (original,))


def test_a_non_json_return_whose_command_is_not_listed_cannot_be_journaled() -> None:
    with pytest.raises(TypeError, match="not JSON"):
        dumps_batch(Batch("effects", T0, (HandlerReturned(DO.id, object(), T0),)))


# -- corrupt entries ------------------------------------------------------------------

_GOOD = {"op": "effects", "at": T0, "effects": [], "answered": []}


def _entry(**changes: object) -> str:
    return json.dumps({**_GOOD, **changes})


def _without(key: str) -> str:
    return json.dumps({k: v for k, v in _GOOD.items() if k != key})


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        dumps_batch(Batch("effects", T0, (TimerFired(3, T0),), (WAKE,)))[:-7],
        "[]",
        "null",
        "42",
        '"effects"',
        b"\xff\xfe",
        _entry(op="pause"),
        _entry(at="yesterday"),
        _entry(at=True),
        _entry(effects=5),
        _entry(effects="ab"),
        _entry(effects=[{"type": "returned", "command": "1", "value": None, "at": None}]),
        _entry(effects=[{"type": "returned", "command": 1, "at": None}]),
        _entry(effects=[{"type": "timer", "command": 1, "at": None}]),
        _entry(effects=[{"type": "teleported", "command": 1, "at": None}]),
        _entry(effects=[{"type": "raised", "command": 1, "error": None, "at": None}]),
        _entry(effects=[{"type": "raised", "command": 1, "error": {"type": "E"}, "at": None}]),
        _entry(effects=[[1, None]]),
        _entry(answered=[{"id": 1, "kind": "do", "step": "s", "event": "e"}]),
        _entry(answered=[{"id": 1, "kind": "fly", "step": "s", "event": "e", "error": None}]),
        _entry(answered=[{"id": 1, "kind": "sleep", "step": "s", "event": "e", "at": None}]),
        _entry(answered=[{"id": 1, "kind": [], "step": "s", "event": "e", "error": None}]),
        _entry(answered={"id": 1}),
        _without("answered"),
        _without("op"),
    ],
)
def test_a_corrupt_journal_entry_is_a_corrupt_state_error(text: str | bytes) -> None:
    with pytest.raises(stepflow.CorruptStateError) as info:
        loads_batch(text)
    assert isinstance(info.value, stepflow.StepflowError)
    assert isinstance(info.value, ValueError)
    assert "journal entry" in str(info.value)


# -- state format 1 -----------------------------------------------------------------


def _format_1(state: stepflow.State) -> str:
    """The text a stepflow without timers wrote for ``state``."""
    envelope = json.loads(stepflow.dumps(state))
    envelope["format"] = 1
    for key in ("wake_at", "timeout_at", "attempts", "run_id"):
        del envelope["state"][key]
    return json.dumps(envelope, sort_keys=True, separators=(",", ":"))


def test_a_format_1_state_from_before_timers_still_loads_with_empty_timing() -> None:
    state, _ = stepflow.advance(DEFINITION, _at_do(), (HandlerReturned(DO.id, {"n": 1}, T0),))
    text = _format_1(state)
    assert json.loads(text)["format"] == 1
    assert sorted(json.loads(text)["state"]) == [
        "error",
        "events",
        "in_flight",
        "outputs",
        "seq",
        "status",
    ]
    loaded = stepflow.loads(text, DEFINITION)
    assert loaded.wake_at is None
    assert loaded.timeout_at is None
    assert dict(loaded.attempts) == {}
    assert loaded.run_id == ""
    assert loaded.events == state.events
    assert loaded.in_flight == state.in_flight == (POLL,)
    assert loaded.outputs == state.outputs
    # It continues where it was, and is written back in the current format.
    again, commands = stepflow.advance(DEFINITION, loaded, now=T0)
    assert commands == (POLL,)
    # A one-position state is written as format 2 wrote it (format 3 adds only groups).
    assert json.loads(stepflow.dumps(again))["format"] == 2
    assert stepflow.FORMAT_VERSION == 4


def test_a_hand_written_format_1_envelope_loads() -> None:
    text = json.dumps(
        {
            "fingerprint": DEFINITION.fingerprint,
            "flow": "j/v1",
            "format": 1,
            "state": {
                "error": None,
                "events": ["start:j/v1/a"],
                "in_flight": [
                    {
                        "error": None,
                        "event": "start:j/v1/a",
                        "id": 1,
                        "kind": "do",
                        "step": "j/v1/a",
                    }
                ],
                "outputs": {},
                "seq": 1,
                "status": "running",
            },
        }
    )
    loaded = stepflow.loads(text, DEFINITION)
    assert loaded == stepflow.State(
        "j/v1", DEFINITION.fingerprint, ("start:j/v1/a",), "running", None, (DO,), 1, pmap()
    )
    assert (loaded.wake_at, loaded.timeout_at, dict(loaded.attempts), loaded.run_id) == (
        None,
        None,
        {},
        "",
    )
