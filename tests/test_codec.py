"""The codec: canonical envelopes, go-stepflow states, and every rejection typed."""

from __future__ import annotations

import json

import pytest

import stepflow


def noop(ctx: object) -> None:
    return None


FLOW = stepflow.new(stepflow.named("deploy/v1").do("a", noop).wait_for("w", lambda ctx: True))
DEFINITION = FLOW.definition


def test_dumps_writes_a_versioned_envelope_with_sorted_keys_and_no_spaces() -> None:
    state, _ = stepflow.advance(DEFINITION)
    text = stepflow.dumps(state)
    envelope = json.loads(text)
    # One position: written exactly as format 2 wrote it; format 3 adds times and groups.
    assert envelope["format"] == 2
    assert stepflow.FORMAT_VERSION == 4  # 3 added times and groups, 4 the mailbox
    assert envelope["flow"] == "deploy/v1"
    assert envelope["fingerprint"] == DEFINITION.fingerprint
    assert envelope["state"]["in_flight"] == [
        {"error": None, "event": "start:deploy/v1/a", "id": 1, "kind": "do", "step": "deploy/v1/a"}
    ]
    assert text == json.dumps(envelope, sort_keys=True, separators=(",", ":"))


def test_dumps_is_canonical_for_equal_states_built_differently() -> None:
    state, (a,) = stepflow.advance(DEFINITION)
    one, _ = stepflow.advance(
        DEFINITION, state, (stepflow.HandlerReturned(a.id, {"b": 1, "a": [2]}),)
    )
    two, _ = stepflow.advance(
        DEFINITION, state, (stepflow.HandlerReturned(a.id, {"a": (2,), "b": 1}),)
    )
    assert one == two
    assert stepflow.dumps(one) == stepflow.dumps(two)


def test_a_failed_state_round_trips_with_its_error() -> None:
    state, (a,) = stepflow.advance(DEFINITION)
    error = stepflow.ErrorRecord("app.Flaky", "näive ☃", "deploy/v1/a")
    failed, _ = stepflow.advance(DEFINITION, state, (stepflow.HandlerRaised(a.id, error),))
    assert stepflow.loads(stepflow.dumps(failed), DEFINITION) == failed


def test_loads_accepts_a_go_stepflow_state() -> None:
    state = stepflow.loads('["start:deploy/v1/wWaitFor"]', DEFINITION)
    assert state.events == ("start:deploy/v1/wWaitFor",)
    assert state.status == "running"
    assert state.in_flight == ()
    state, (command,) = stepflow.advance(DEFINITION, state)
    assert command.kind == "wait_for"


def test_loads_of_a_go_stepflow_static_position_follows_its_hops() -> None:
    state = stepflow.loads('["completed:deploy/v1/a"]', DEFINITION)
    _, (command,) = stepflow.advance(DEFINITION, state)
    assert command.event == "start:deploy/v1/wWaitFor"


def test_loads_of_a_completed_go_stepflow_state_is_completed() -> None:
    assert stepflow.loads('["completed:deploy/v1"]', DEFINITION).is_completed


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "",
        "null",
        "[]",
        "[1]",
        '{"format": 99}',
        '{"format": 1}',
        '{"format": 1, "flow": "deploy/v1", "fingerprint": 5, "state": {}}',
    ],
)
def test_corrupt_text_is_a_corrupt_state_error(text: str) -> None:
    with pytest.raises(stepflow.CorruptStateError):
        stepflow.loads(text, DEFINITION)


def test_shape_errors_name_each_wrong_path() -> None:
    state, _ = stepflow.advance(DEFINITION)
    envelope = json.loads(stepflow.dumps(state))
    envelope["state"]["seq"] = "1"
    envelope["state"]["in_flight"][0]["id"] = None
    envelope["extra"] = True
    with pytest.raises(stepflow.CorruptStateError) as info:
        stepflow.loads(json.dumps(envelope), DEFINITION)
    problems = "\n".join(info.value.problems)
    assert "$.state.seq" in problems
    assert "$.state.in_flight[0].id" in problems
    assert "extra" in problems


def test_a_state_of_another_flow_is_a_flow_mismatch() -> None:
    other = stepflow.new(stepflow.named("other/v1").do("a", noop))
    text = stepflow.dumps(stepflow.advance(other.definition)[0])
    with pytest.raises(stepflow.FlowMismatchError) as info:
        stepflow.loads(text, DEFINITION)
    assert (info.value.expected, info.value.actual) == ("deploy/v1", "other/v1")


def test_unknown_events_are_an_unknown_event_error() -> None:
    with pytest.raises(stepflow.UnknownEventError) as info:
        stepflow.loads('["start:deploy/v1/nope"]', DEFINITION)
    assert info.value.events == ("start:deploy/v1/nope",)


def test_a_state_of_an_edited_definition_loads_while_its_events_still_exist() -> None:
    old = stepflow.new(stepflow.named("deploy/v1").do("a", noop))
    text = stepflow.dumps(stepflow.advance(old.definition)[0])
    state = stepflow.loads(text, DEFINITION)
    assert state.fingerprint == DEFINITION.fingerprint


def test_a_state_of_an_edited_definition_whose_events_are_gone_is_incompatible() -> None:
    old = stepflow.new(stepflow.named("deploy/v1").do("renamed", noop))
    text = stepflow.dumps(stepflow.advance(old.definition)[0])
    with pytest.raises(stepflow.IncompatibleDefinition) as info:
        stepflow.loads(text, DEFINITION)
    assert info.value.state_fingerprint == old.definition.fingerprint
    assert info.value.definition_fingerprint == DEFINITION.fingerprint
    assert "start:deploy/v1/renamed" in info.value.events


def test_a_command_whose_meaning_changed_is_incompatible() -> None:
    old = stepflow.new(stepflow.named("deploy/v1").wait_for("a", lambda ctx: True))
    state = stepflow.advance(old.definition)[0]
    envelope = json.loads(stepflow.dumps(state))
    envelope["state"]["events"] = ["start:deploy/v1/a"]
    envelope["state"]["in_flight"][0]["event"] = "start:deploy/v1/a"
    with pytest.raises(stepflow.IncompatibleDefinition):
        stepflow.loads(json.dumps(envelope), DEFINITION)


def test_the_converter_is_built_by_a_factory_and_structures_states() -> None:
    converter = stepflow.make_converter()
    assert converter is not stepflow.make_converter()
    state, _ = stepflow.advance(DEFINITION)
    assert converter.structure(converter.unstructure(state), stepflow.State) == state


def test_dumps_rejects_what_is_not_a_state() -> None:
    with pytest.raises(TypeError):
        stepflow.dumps(["start:deploy/v1"])  # type: ignore[arg-type]
