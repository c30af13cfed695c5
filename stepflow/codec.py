"""Serialize states: canonical, versioned JSON, and go-stepflow's bare event lists.

``dumps(state)`` writes an envelope::

    {"fingerprint": "sha256:...", "flow": "deploy/v1", "format": 1,
     "state": {"error": null, "events": ["start:deploy/v1/push"],
               "in_flight": [{"error": null, "event": "start:deploy/v1/push",
                              "id": 3, "kind": "do", "step": "deploy/v1/push"}],
               "outputs": {}, "seq": 3, "status": "running"}}

with sorted keys, no insignificant white space and UTF-8 text (written by orjson),
so the same state always gives the same text. ``loads(text, definition)`` reads
it back, or a go-stepflow state (a JSON list of event strings), and checks that
it fits the definition.

The work is done by a cattrs converter made by :func:`make_converter`. Well-formed
input takes hand-written hooks registered on it (a state is read and written on
every step); input they reject is structured again through cattrs' generated,
strictly typed hooks, whose errors name every ``$.path`` that was wrong.
"""

from __future__ import annotations

from typing import Any

import attrs
import cattrs
import orjson
from cattrs.errors import BaseValidationError

from stepflow.core._json import NotJSON, freeze_json, thaw_json
from stepflow.core.advance import check_state
from stepflow.core.definition import FlowDefinition
from stepflow.core.messages import CallHandler, CommandKind
from stepflow.core.state import COMPLETED, EMPTY_OUTPUTS, RUNNING, ErrorRecord, State, Status
from stepflow.errors import CorruptStateError

__all__ = ["FORMAT_VERSION", "dumps", "loads", "make_converter"]

#: Version of the envelope format written by :func:`dumps`.
FORMAT_VERSION = 1

_new = tuple.__new__


# The wire schema, as attrs classes: cattrs generates strict structuring hooks
# from them, used to explain what is wrong with input the fast path rejects.
@attrs.frozen
class _WireError:
    type: str
    message: str
    step: str


@attrs.frozen
class _WireCommand:
    id: int
    kind: CommandKind
    step: str
    event: str
    error: _WireError | None


@attrs.frozen
class _WireState:
    events: list[str]
    status: Status
    error: _WireError | None
    in_flight: list[_WireCommand]
    seq: int
    outputs: dict[str, Any]


@attrs.frozen
class _Envelope:
    format: int
    flow: str
    fingerprint: str
    state: _WireState


def _strict(cls: type) -> Any:
    def structure(value: Any, _: Any) -> Any:
        # cattrs' default str()/int() calls would accept 5 for a str and "5" for an int.
        if type(value) is not cls:
            raise TypeError(f"expected {cls.__name__}, got {type(value).__name__} {value!r:.40}")
        return value

    return structure


def _structure_json_value(value: Any, _: Any) -> Any:
    try:
        return freeze_json(value)
    except NotJSON as exc:
        raise TypeError(str(exc)) from None


def _unstructure_error(error: ErrorRecord | None) -> dict[str, str] | None:
    if error is None:
        return None
    return {"type": error.type, "message": error.message, "step": error.step}


def _unstructure_state(state: State) -> dict[str, Any]:
    flow, fingerprint, events, status, error, in_flight, seq, outputs = state
    return {
        "format": FORMAT_VERSION,
        "flow": flow,
        "fingerprint": fingerprint,
        "state": {
            "events": events,
            "status": status,
            "error": None if error is None else _unstructure_error(error),
            "in_flight": [
                {
                    "id": c[0],
                    "kind": c[1],
                    "step": c[2],
                    "event": c[3],
                    "error": None if c[4] is None else _unstructure_error(c[4]),
                }
                for c in in_flight
            ],
            "seq": seq,
            "outputs": {k: thaw_json(v) for k, v in outputs.items()} if outputs else {},
        },
    }


def _error_fast(raw: Any) -> ErrorRecord:
    t, m, s = raw["type"], raw["message"], raw["step"]
    if len(raw) != 3 or type(t) is not str or type(m) is not str or type(s) is not str:
        raise TypeError
    return ErrorRecord(t, m, s)


_KINDS = frozenset(("do", "wait_for", "case", "loop_until", "on_error"))
_STATUSES = frozenset(("running", "completed", "failed"))


def _state_fast(obj: dict[str, Any]) -> State:
    """Structure well-formed input quickly; raise anything on the first doubt.

    Anything it rejects is structured again by cattrs' generated hooks, which
    either accept it or explain, path by path, what is wrong.
    """
    flow, fingerprint, raw = obj["flow"], obj["fingerprint"], obj["state"]
    events, status, seq = raw["events"], raw["status"], raw["seq"]
    error, in_flight, outputs = raw["error"], raw["in_flight"], raw["outputs"]
    if (
        len(obj) != 4
        or len(raw) != 6
        or type(flow) is not str
        or type(fingerprint) is not str
        or type(events) is not list
        or type(seq) is not int
        or status not in _STATUSES
        or type(in_flight) is not list
        or type(outputs) is not dict
    ):
        raise TypeError
    for event in events:
        if type(event) is not str:
            raise TypeError
    commands = []
    for c in in_flight:
        cid, kind, step, event, cerror = c["id"], c["kind"], c["step"], c["event"], c["error"]
        if (
            len(c) != 5
            or type(cid) is not int
            or kind not in _KINDS
            or type(step) is not str
            or type(event) is not str
        ):
            raise TypeError
        cerror = None if cerror is None else _error_fast(cerror)
        commands.append(_new(CallHandler, (cid, kind, step, event, cerror)))
    frozen = freeze_json(outputs) if outputs else EMPTY_OUTPUTS
    error = None if error is None else _error_fast(error)
    return _new(
        State, (flow, fingerprint, tuple(events), status, error, tuple(commands), seq, frozen)
    )


def _from_wire(env: _Envelope) -> State:
    def err(e: _WireError | None) -> ErrorRecord | None:
        return None if e is None else ErrorRecord(e.type, e.message, e.step)

    s = env.state
    commands = tuple(CallHandler(c.id, c.kind, c.step, c.event, err(c.error)) for c in s.in_flight)
    outputs = freeze_json(s.outputs) if s.outputs else EMPTY_OUTPUTS
    return State(
        env.flow, env.fingerprint, tuple(s.events), s.status, err(s.error), commands, s.seq, outputs
    )


def make_converter() -> cattrs.Converter:
    """Build the cattrs converter stepflow's codec uses.

    It unstructures a :class:`~stepflow.core.state.State` into the envelope
    described in this module's docstring, and structures an envelope back into a
    ``State`` (``converter.structure(obj, State)``), strictly: no str for an int,
    no extra keys, outputs only JSON. Errors are cattrs ``BaseValidationError``
    groups naming each wrong ``$.path``.
    """
    converter = cattrs.Converter(forbid_extra_keys=True)
    for scalar in (int, str):
        converter.register_structure_hook(scalar, _strict(scalar))
    converter.register_structure_hook(Any, _structure_json_value)
    converter.register_unstructure_hook(State, _unstructure_state)
    detailed = converter.get_structure_hook(_Envelope)

    def structure_state(obj: Any, _: Any) -> State:
        try:
            return _state_fast(obj)
        except Exception:  # any doubt goes to the strict, explaining path
            return _from_wire(detailed(obj, _Envelope))

    converter.register_structure_hook(State, structure_state)
    return converter


_CONVERTER = make_converter()
# Resolved once: dispatching through the converter on every call costs more than the hook.
_UNSTRUCTURE_STATE = _CONVERTER.get_unstructure_hook(State)
_STRUCTURE_STATE = _CONVERTER.get_structure_hook(State)


def dumps(state: State) -> str:
    """Serialize ``state`` to canonical JSON text: equal states give equal text.

    Raises:
        TypeError: if ``state`` is not a :class:`~stepflow.core.state.State`.

    """
    if type(state) is not State:
        raise TypeError(f"dumps expects a stepflow State, got {state!r:.80}")
    return orjson.dumps(_UNSTRUCTURE_STATE(state), option=orjson.OPT_SORT_KEYS).decode()


def _go_state(obj: list[Any], definition: FlowDefinition) -> State:
    if not obj or any(type(e) is not str for e in obj):
        raise CorruptStateError(
            f"a go-stepflow state is a non-empty JSON list of event strings, got {obj!r:.120}",
            problems=("$: expected a non-empty list of str",),
        )
    events = tuple(obj)
    status: Status = COMPLETED if events == (definition.completed_event,) else RUNNING
    return State(
        definition.name, definition.fingerprint, events, status, None, (), 0, EMPTY_OUTPUTS
    )


def loads(text: str | bytes, definition: FlowDefinition) -> State:
    """Read a state written by :func:`dumps`, or a go-stepflow state, for ``definition``.

    A go-stepflow state is a bare JSON list of event strings
    (``["start:deploy/v1/push"]``); it continues from that position.

    Args:
        text: The serialized state.
        definition: The definition the state will run under.

    Returns:
        The state. One saved under another fingerprint comes back carrying
        ``definition``'s fingerprint, when compatible.

    Raises:
        CorruptStateError: the text is not JSON, or not a state of a known format.
        FlowMismatchError: the state belongs to another flow.
        UnknownEventError: the state holds events this definition does not know.
        IncompatibleDefinition: the state was saved under another fingerprint and
            holds events or commands this definition no longer has.

    """
    try:
        obj = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise CorruptStateError(
            f"state text is not valid JSON ({exc}); pass the text dumps() wrote, unchanged",
            problems=(f"$: {exc}",),
        ) from exc
    if type(obj) is list:
        return check_state(definition, _go_state(obj, definition))
    if type(obj) is not dict:
        raise CorruptStateError(
            f"expected a stepflow state object or a go-stepflow event list, got {obj!r:.80}",
            problems=("$: expected an object or a list",),
        )
    if obj.get("format") != FORMAT_VERSION:
        raise CorruptStateError(
            f"unsupported state format {obj.get('format')!r}; this stepflow reads format "
            f"{FORMAT_VERSION}. Upgrade stepflow to read newer states.",
            problems=(f"$.format: expected {FORMAT_VERSION}",),
        )
    try:
        state = _state_fast(obj)
    except Exception:  # any doubt goes to the converter's strict, explaining hooks
        state = _structure_explained(obj)
    return check_state(definition, state)


def _structure_explained(obj: Any) -> State:
    try:
        return _STRUCTURE_STATE(obj, State)  # type: ignore[no-any-return]
    except BaseValidationError as exc:
        problems = tuple(cattrs.transform_error(exc))
        raise CorruptStateError(
            "state text does not have the shape of a stepflow state: " + "; ".join(problems),
            problems=problems,
        ) from None
