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

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal, cast

import attrs
import cattrs
import orjson
from cattrs.errors import BaseValidationError
from pyrsistent import pmap

from stepflow.core._json import NotJSON, freeze_json, thaw_json
from stepflow.core.advance import result_error
from stepflow.core.checks import check_state
from stepflow.core.children import CHILD_STATUSES
from stepflow.core.definition import FlowDefinition
from stepflow.core.messages import (
    AwaitEvent,
    CallHandler,
    CancelRequested,
    ChildEnded,
    Command,
    CommandKind,
    Effect,
    EventReceived,
    HandlerRaised,
    HandlerReturned,
    StartChild,
    TimerFired,
    Wake,
    answered_id,
)
from stepflow.core.state import (
    COMPLETED,
    EMPTY_ATTEMPTS,
    EMPTY_GROUPS,
    EMPTY_OUTPUTS,
    EMPTY_TIMES,
    RUNNING,
    ErrorRecord,
    GroupProgress,
    State,
    Status,
)
from stepflow.errors import CorruptStateError

__all__ = [
    "FORMAT_VERSION",
    "Batch",
    "dumps",
    "dumps_batch",
    "loads",
    "loads_batch",
    "make_converter",
    "structure_state",
    "unstructure_state",
]

#: Version of the envelope format written by :func:`dumps`. Format 4 adds, for runs
#: holding events no step has taken yet, ``mailbox`` (absent when empty). Format 3
#: added, for runs of several positions only, ``times`` and ``groups`` (absent when
#: empty). Formats 1 (before timers: no ``wake_at``, ``timeout_at``, ``attempts`` or
#: ``run_id``), 2 (no ``times`` or ``groups``) and 3 (no ``mailbox``) are still read.
#: A state is written in the oldest format that can hold it.
FORMAT_VERSION = 4
_READABLE = (1, 2, 3, 4)
_GROUPS_FORMAT = 3
# A state without times or groups is written exactly as format 2 wrote it, so runs of
# flows without groups keep their saved text (and journals) byte for byte.
_ONE_POSITION_FORMAT = 2

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
    error: _WireError | None = None
    at: float | None = None
    name: str | None = None
    flow: str | None = None


@attrs.frozen
class _WireGroup:
    kind: Literal["parallel", "map"]
    items: list[Any]
    started: int
    active: int
    results: dict[str, Any]
    failures: int = 0
    error: _WireError | None = None


@attrs.frozen
class _WireState:
    events: list[str]
    status: Status
    error: _WireError | None
    in_flight: list[_WireCommand]
    seq: int
    outputs: dict[str, Any]
    wake_at: float | None = None
    timeout_at: float | None = None
    attempts: dict[str, int] = attrs.Factory(dict)
    run_id: str = ""
    times: dict[str, tuple[float | None, float | None]] = attrs.Factory(dict)
    groups: dict[str, _WireGroup] = attrs.Factory(dict)
    mailbox: list[tuple[str, Any]] = attrs.Factory(list)


@attrs.frozen
class _Envelope:
    format: int
    flow: str
    fingerprint: str
    state: _WireState


def _strict(cls: type) -> Any:
    def structure(value: Any, _: Any) -> Any:
        # cattrs' default str()/int() calls would accept 5 for a str and "5" for an int;
        # only an int may stand for a float, as in JSON.
        kind = type(value)
        if kind is not cls and not (cls is float and kind is int):
            raise TypeError(f"expected {cls.__name__}, got {kind.__name__} {value!r:.40}")
        return float(value) if kind is int and cls is float else value

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


def _unstructure_command(c: Command) -> dict[str, Any]:
    if type(c) is Wake:
        return {"id": c[0], "kind": c[1], "step": c[2], "event": c[3], "at": float(c[4])}
    if type(c) is AwaitEvent:
        at = None if c[4] is None else float(c[4])
        return {"id": c[0], "kind": c[1], "step": c[2], "event": c[3], "at": at, "name": c[5]}
    if type(c) is StartChild:
        return {"id": c[0], "kind": c[1], "step": c[2], "event": c[3], "flow": c[4]}
    return {
        "id": c[0],
        "kind": c[1],
        "step": c[2],
        "event": c[3],
        "error": _unstructure_error(cast(ErrorRecord | None, c[4])),
    }


def _unstructure_group(group: GroupProgress) -> dict[str, Any]:
    kind, items, started, active, results, failures, error = group
    return {
        "kind": kind,
        "items": [thaw_json(item) for item in items],
        "started": started,
        "active": active,
        "results": {key: thaw_json(value) for key, value in results.items()},
        "failures": failures,
        "error": _unstructure_error(error),
    }


def _unstructure_state(state: State) -> dict[str, Any]:
    (
        flow, fingerprint, events, status, error, in_flight, seq, outputs,
        wake, until, tries, run, times, groups, mailbox,
    ) = state  # fmt: skip
    if mailbox:
        envelope = _unstructure_state(state._replace(mailbox=()))
        envelope["format"] = FORMAT_VERSION
        envelope["state"]["mailbox"] = [[name, thaw_json(payload)] for name, payload in mailbox]
        return envelope
    # (Identity tests, not truth: a pmap's truth is a Python-level __len__ call.)
    if (times is not EMPTY_TIMES and times) or (groups is not EMPTY_GROUPS and groups):
        envelope = _unstructure_state(state._replace(times=EMPTY_TIMES, groups=EMPTY_GROUPS))
        envelope["format"] = _GROUPS_FORMAT
        body = envelope["state"]
        if times:
            body["times"] = {event: [w, t] for event, (w, t) in times.items()}
        if groups:
            body["groups"] = {scope: _unstructure_group(g) for scope, g in groups.items()}
        return envelope
    return {
        "format": _ONE_POSITION_FORMAT,
        "flow": flow,
        "fingerprint": fingerprint,
        "state": {
            "events": events,
            "status": status,
            "error": None if error is None else _unstructure_error(error),
            "in_flight": [_unstructure_command(c) for c in in_flight],
            "seq": seq,
            "outputs": {}
            if outputs is EMPTY_OUTPUTS
            else {k: thaw_json(v) for k, v in outputs.items()},
            "wake_at": None if wake is None else float(wake),
            "timeout_at": None if until is None else float(until),
            "attempts": {} if tries is EMPTY_ATTEMPTS else dict(tries),
            "run_id": run,
        },
    }


def _error_fast(raw: Any) -> ErrorRecord:
    t, m, s = raw["type"], raw["message"], raw["step"]
    if len(raw) != 3 or type(t) is not str or type(m) is not str or type(s) is not str:
        raise TypeError
    return ErrorRecord(t, m, s)


def _time_fast(value: Any) -> float | None:
    if value is None or type(value) is float:
        return value
    if type(value) is int:
        return float(value)
    raise TypeError


EMPTY_STRINGS: Mapping[str, str] = MappingProxyType({})
_KINDS = frozenset(
    (
        "do",
        "wait_for",
        "case",
        "loop_until",
        "on_error",
        "map",
        "switch",
        "sleep_until",
        "compensate",
    )
)
_EMPTY_MAILBOX: tuple[tuple[str, Any], ...] = ()
_STATUSES = frozenset(("running", "completed", "failed", "cancelling", "cancelled"))


def _command_fast(c: dict[str, Any], strings: Mapping[str, str] = EMPTY_STRINGS) -> Command:
    cid, kind, step, event = c["id"], c["kind"], c["step"], c["event"]
    if type(cid) is not int or type(step) is not str or type(event) is not str:
        raise TypeError
    step, event = strings.get(step, step), strings.get(event, event)
    if kind == "sleep":
        at = _time_fast(c["at"])
        if len(c) != 5 or at is None:
            raise TypeError
        return _new(Wake, (cid, kind, step, event, at))
    if kind == "wait_event":
        at, name = _time_fast(c["at"]), c["name"]
        if len(c) != 6 or type(name) is not str:
            raise TypeError
        return _new(AwaitEvent, (cid, kind, step, event, at, strings.get(name, name)))
    if kind == "call":
        flow = c["flow"]
        if len(c) != 5 or type(flow) is not str:
            raise TypeError
        return _new(StartChild, (cid, kind, step, event, strings.get(flow, flow)))
    if len(c) != 5 or kind not in _KINDS:
        raise TypeError
    cerror = c["error"]
    return _new(
        CallHandler, (cid, kind, step, event, None if cerror is None else _error_fast(cerror))
    )


def _state_fast(obj: dict[str, Any], definition: FlowDefinition | None = None) -> State:
    """Structure well-formed input quickly; raise anything on the first doubt.

    Anything it rejects is structured again by cattrs' generated hooks, which
    either accept it or explain, path by path, what is wrong. Given the
    definition, the state holds the definition's own strings rather than copies
    parsed from the text: a worker keeps thousands of states in memory.
    """
    flow, fingerprint, raw = obj["flow"], obj["fingerprint"], obj["state"]
    events, status, seq = raw["events"], raw["status"], raw["seq"]
    error, in_flight, outputs = raw["error"], raw["in_flight"], raw["outputs"]
    times, groups = EMPTY_TIMES, EMPTY_GROUPS
    if len(raw) > 10:  # a run of several positions (format 3): the careful path reads it
        raise TypeError
    if len(raw) == 10:
        wake_at, timeout_at = raw["wake_at"], raw["timeout_at"]
        if wake_at is not None and type(wake_at) is not float:
            wake_at = _time_fast(wake_at)
        if timeout_at is not None:
            timeout_at = _time_fast(timeout_at)
        raw_attempts, run_id = raw["attempts"], raw["run_id"]
        if type(raw_attempts) is not dict or type(run_id) is not str:
            raise TypeError
        attempts = EMPTY_ATTEMPTS
        if raw_attempts:
            for count in raw_attempts.values():
                if type(count) is not int:
                    raise TypeError
            attempts = pmap(raw_attempts)
    elif len(raw) == 6 and obj["format"] == 1:
        wake_at = timeout_at = None
        attempts, run_id = EMPTY_ATTEMPTS, ""
    else:
        raise TypeError
    if (
        len(obj) != 4
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
    position = tuple(events)
    strings = EMPTY_STRINGS
    if definition is not None:
        strings = definition._strings
        flow, fingerprint = strings.get(flow, flow), strings.get(fingerprint, fingerprint)
        node = definition._nodes.get(events[0]) if len(events) == 1 else None
        if node is not None and node.event == events[0]:
            position = node.events
    if len(in_flight) == 1:  # the usual case: one command in flight
        commands: tuple[Command, ...] = (_command_fast(in_flight[0], strings),)
    else:
        commands = tuple([_command_fast(c, strings) for c in in_flight])
    frozen = freeze_json(outputs) if outputs else EMPTY_OUTPUTS
    error = None if error is None else _error_fast(error)
    fields = (flow, fingerprint, position, status, error, commands, seq, frozen)
    rest = (wake_at, timeout_at, attempts, run_id, times, groups, _EMPTY_MAILBOX)
    return _new(State, (*fields, *rest))


def _from_wire(env: _Envelope) -> State:
    def err(e: _WireError | None) -> ErrorRecord | None:
        return None if e is None else ErrorRecord(e.type, e.message, e.step)

    def command(c: _WireCommand) -> Command:
        if c.kind == "sleep":
            if c.at is None:
                raise CorruptStateError(
                    f"sleep command {c.id} has no time; a Wake needs its 'at'",
                    problems=("$.state.in_flight: sleep command without 'at'",),
                )
            return Wake(c.id, "sleep", c.step, c.event, c.at)
        if c.kind == "wait_event":
            if c.name is None:
                raise CorruptStateError(
                    f"wait_event command {c.id} has no event name",
                    problems=("$.state.in_flight: wait_event command without 'name'",),
                )
            return AwaitEvent(c.id, "wait_event", c.step, c.event, c.at, c.name)
        if c.kind == "call":
            if c.flow is None:
                raise CorruptStateError(
                    f"call command {c.id} has no child flow",
                    problems=("$.state.in_flight: call command without 'flow'",),
                )
            return StartChild(c.id, "call", c.step, c.event, c.flow)
        return CallHandler(c.id, c.kind, c.step, c.event, err(c.error))

    def group(g: _WireGroup) -> GroupProgress:
        items = tuple(freeze_json(item) for item in g.items)
        results = pmap({key: freeze_json(value) for key, value in g.results.items()})
        return GroupProgress(g.kind, items, g.started, g.active, results, g.failures, err(g.error))

    s = env.state
    if env.format < 3 and (s.times or s.groups):
        raise CorruptStateError(
            f"a format {env.format} state cannot hold 'times' or 'groups' (format 3 added them)",
            problems=("$.format: 'times' and 'groups' need format 3",),
        )
    if env.format < 4 and s.mailbox:
        raise CorruptStateError(
            f"a format {env.format} state cannot hold a 'mailbox' (format 4 added it)",
            problems=("$.format: 'mailbox' needs format 4",),
        )
    commands = tuple(command(c) for c in s.in_flight)
    outputs = freeze_json(s.outputs) if s.outputs else EMPTY_OUTPUTS
    attempts = pmap(s.attempts) if s.attempts else EMPTY_ATTEMPTS
    times = pmap({e: (w, t) for e, (w, t) in s.times.items()}) if s.times else EMPTY_TIMES
    groups = pmap({k: group(g) for k, g in s.groups.items()}) if s.groups else EMPTY_GROUPS
    return State(
        env.flow,
        env.fingerprint,
        tuple(s.events),
        s.status,
        err(s.error),
        commands,
        s.seq,
        outputs,
        s.wake_at,
        s.timeout_at,
        attempts,
        s.run_id,
        times,
        groups,
        tuple((name, freeze_json(payload)) for name, payload in s.mailbox),
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
    for scalar in (int, str, float):
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
    return check_state(definition, structure_state(obj, definition))


def _structure_explained(obj: Any) -> State:
    try:
        return _STRUCTURE_STATE(obj, State)  # type: ignore[no-any-return]
    except BaseValidationError as exc:
        problems = tuple(cattrs.transform_error(exc))
        raise CorruptStateError(
            "state text does not have the shape of a stepflow state: " + "; ".join(problems),
            problems=problems,
        ) from None


# -- journal batches ----------------------------------------------------------

#: What a journal entry records: the run's start, an effect batch, an operator's
#: resume or cancel, or a migration to another version of the flow.
BatchOp = Literal["start", "effects", "resume", "cancel", "migrate", "wake"]
_OPS = ("start", "effects", "resume", "cancel", "migrate", "wake")


@attrs.frozen
class Batch:
    """One entry of a run's journal: what was applied to the run, and when.

    Attributes:
        op: ``"start"`` (the run was created), ``"effects"`` (an effect batch
            given to :func:`stepflow.advance`), ``"resume"``
            (:func:`stepflow.resume`), ``"cancel"``, ``"migrate"`` (the run
            was adopted by another version of its flow), or ``"wake"`` (a worker
            took in a :func:`stepflow.wake`; ``at`` is when it was asked: the
            state is unchanged, its polls and backoffs are due at once).
        at: When it was applied (seconds since the epoch), or ``None``.
        effects: The effects applied, in order.
        answered: The commands in flight that the effects answered.
        state: For ``"start"``, the run's first state; for ``"migrate"``, the
            state after the migration. ``None`` for the other ops, whose states
            follow from the definition.

    """

    op: BatchOp
    at: float | None
    effects: tuple[Effect, ...] = ()
    answered: tuple[Command, ...] = ()
    state: State | None = None


def _time(at: float | None) -> float | None:
    # Times are floats on the wire, whatever number type they were given as, so
    # equal batches give equal text.
    return None if at is None else float(at)


def _unstructure_effect(effect: Effect, command: Command | None) -> dict[str, Any]:
    if type(effect) is CancelRequested:
        reason, at, deadline = effect
        if type(reason) is not str or type(deadline) is not bool:
            raise TypeError(f"{effect!r:.80} needs a str reason and a bool deadline")
        return {"type": "cancel", "reason": reason, "at": _time(at), "deadline": deadline}
    if type(effect) is EventReceived:
        payload = thaw_json(freeze_json(effect.payload))
        return {"type": "event", "name": effect.name, "payload": payload, "at": _time(effect.at)}
    if type(effect) is TimerFired:
        return {"type": "timer", "command": effect.command_id, "at": _time(effect.at)}
    if type(effect) is ChildEnded:
        command_id, status, output, error, at, child = effect
        try:
            output = thaw_json(freeze_json(output))
        except NotJSON:  # recorded as the failure advance makes of it, as for a return
            returned = HandlerReturned(command_id, output, at)
            return _unstructure_effect(returned, command)
        return {
            "type": "child",
            "command": command_id,
            "status": status,
            "output": output,
            "error": _unstructure_error(error),
            "child": child,
            "at": _time(at),
        }
    if type(effect) is HandlerReturned:
        try:
            value = thaw_json(freeze_json(effect.value))
        except NotJSON:
            # A value JSON cannot hold is recorded as the failure advance made of it
            # (result_error), which leads to the very same state.
            error = result_error(command, effect.value) if command is not None else None
            if error is None and command is not None and command.kind == "compensate":
                # A compensation's value is ignored (stepflow.core.cleanup, Rule 5).
                return {
                    "type": "returned",
                    "command": effect.command_id,
                    "value": None,
                    "at": _time(effect.at),
                }
            if error is None:
                raise TypeError(f"effect value {effect.value!r:.80} is not JSON") from None
            return {
                "type": "raised",
                "command": effect.command_id,
                "error": _unstructure_error(error),
                "at": _time(effect.at),
            }
        return {
            "type": "returned",
            "command": effect.command_id,
            "value": value,
            "at": _time(effect.at),
        }
    if type(effect) is HandlerRaised:
        return {
            "type": "raised",
            "command": effect.command_id,
            "error": _unstructure_error(effect.error),
            "at": _time(effect.at),
        }
    raise TypeError(f"{effect!r:.80} is not an effect")


def dumps_batch(batch: Batch) -> str:
    """Serialize a journal :class:`Batch` to canonical JSON text.

    A ``HandlerReturned`` whose value is not JSON is written as the
    ``HandlerRaised`` that :func:`stepflow.advance` turns it into (see
    :func:`~stepflow.core.advance.result_error`), so replaying the entry gives the
    same state.
    """
    by_id = {c.id: c for c in batch.answered}
    body = {
        "op": batch.op,
        "at": _time(batch.at),
        "effects": [_unstructure_effect(e, by_id.get(answered_id(e))) for e in batch.effects],
        "answered": [_unstructure_command(c) for c in batch.answered],
    }
    if batch.state is not None:
        body["state"] = _UNSTRUCTURE_STATE(batch.state)
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode()


def _structure_effect(raw: Any) -> Effect:
    if raw["type"] == "cancel":
        reason, deadline = raw["reason"], raw["deadline"]
        if type(reason) is not str or type(deadline) is not bool or len(raw) != 4:
            raise TypeError(f"malformed cancellation {raw!r:.80}")
        return CancelRequested(reason, _time_fast(raw["at"]), deadline)
    if raw["type"] == "event":
        name = raw["name"]
        if type(name) is not str or len(raw) != 4:
            raise TypeError(f"malformed event {raw!r:.80}")
        return EventReceived(name, raw["payload"], _time_fast(raw["at"]))
    kind, command_id, at = raw["type"], raw["command"], _time_fast(raw["at"])
    if type(command_id) is not int:
        raise TypeError(f"command id {command_id!r} is not an int")
    if kind == "timer":
        if at is None:
            raise TypeError("a timer effect needs its time")
        return TimerFired(command_id, at)
    if kind == "returned":
        return HandlerReturned(command_id, raw["value"], at)
    if kind == "raised":
        return HandlerRaised(command_id, _error_fast(raw["error"]), None, at)
    if kind == "child":
        status, error, child = raw["status"], raw["error"], raw["child"]
        if status not in CHILD_STATUSES or type(child) is not str or len(raw) != 7:
            raise TypeError(f"malformed child outcome {raw!r:.80}")
        record = None if error is None else _error_fast(error)
        return ChildEnded(command_id, status, raw["output"], record, at, child)
    raise TypeError(f"unknown effect type {kind!r}")


def loads_batch(text: str | bytes) -> Batch:
    """Read a journal entry written by :func:`dumps_batch`.

    Raises:
        CorruptStateError: the text is not a journal entry; the message says
            what is wrong.

    """
    try:
        raw = orjson.loads(text)
        op, at = raw["op"], _time_fast(raw["at"])
        if op not in _OPS:
            raise TypeError(f"unknown op {op!r}")
        effects = tuple(_structure_effect(e) for e in raw["effects"])
        answered = tuple(_command_fast(c) for c in raw["answered"])
        raw_state = raw.get("state")
        if len(raw) != (4 if raw_state is None else 5):
            raise TypeError(f"unexpected keys {sorted(raw)!r}")
    except (orjson.JSONDecodeError, TypeError, KeyError, AttributeError) as exc:
        raise CorruptStateError(
            f"not a stepflow journal entry ({type(exc).__name__}: {exc}); "
            "pass the text dumps_batch() wrote, unchanged",
            problems=(f"$: {exc}",),
        ) from exc
    state = None if raw_state is None else structure_state(raw_state)
    return Batch(op, at, effects, answered, state)


def structure_state(obj: Any, definition: FlowDefinition | None = None) -> State:
    """Build a :class:`State` from a decoded envelope, checking only its shape.

    Unlike :func:`loads`, it does not check the state against a definition: use
    :func:`~stepflow.core.advance.check_state` for that. Given ``definition``,
    the state shares its strings (see :func:`loads`).

    Raises:
        CorruptStateError: ``obj`` is not a state envelope of a known format.

    """
    if type(obj) is not dict:
        raise CorruptStateError(
            f"expected a state envelope (a JSON object), got {obj!r:.80}",
            problems=("$: expected an object",),
        )
    if obj.get("format") not in _READABLE:
        raise CorruptStateError(
            f"unsupported state format {obj.get('format')!r}; this stepflow reads formats "
            f"{list(_READABLE)}. Upgrade stepflow to read newer states.",
            problems=(f"$.format: expected one of {list(_READABLE)}",),
        )
    try:
        return _state_fast(obj, definition)
    except Exception:  # any doubt goes to the converter's strict, explaining hooks
        return _structure_explained(obj)


def unstructure_state(state: State) -> dict[str, Any]:
    """Return ``state`` as the envelope :func:`dumps` writes, as plain data."""
    return _UNSTRUCTURE_STATE(state)  # type: ignore[no-any-return]
