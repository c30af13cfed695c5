"""What the console's pages show, as plain data: no web framework here.

Rule: these functions read a store and the served flows and return frozen records
(or text) for the templates; they never render HTML themselves, so every piece of
user data (ids, inputs, outputs, errors, step names) reaches the page through the
templates' autoescaping. The one exception is the SVG Graphviz draws from
:func:`stepflow.diagrams.to_dot`, which Graphviz escapes as XML.

Theory of operation
-------------------
* **Runs page**: :meth:`Store.page_runs` (newest first, keyset pages) and
  :meth:`Store.count_by_status`; a page cursor is a run's ``(created_at, run_id)``
  written as ``"<float repr>:<id>"``.
* **Run page**: :func:`stepflow.read_run` for the record and the journal; the
  state is decoded with the served flow of the run's name when there is one (for
  the diagram), and peeked at as JSON otherwise. The timeline pairs each command
  with the journal entry that answered it; with the flow, a replay of the history
  tells when each command was issued and due, and its retry attempt.
* **Flows page**: each served flow's diagram, its runs by status, and the
  fingerprints its stored runs were started under (read from the stored states,
  a page at a time).
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import orjson

from stepflow.codec import Batch, loads
from stepflow.core.definition import FlowDefinition
from stepflow.core.messages import (
    CancelRequested,
    Command,
    EventReceived,
    HandlerRaised,
    HandlerReturned,
    TimerFired,
    Wake,
    answered_id,
)
from stepflow.core.state import State
from stepflow.diagrams import to_dot, to_json
from stepflow.errors import StepflowError
from stepflow.flow import Flow
from stepflow.history import attempt_label, history, replay
from stepflow.runtime.runs import read_run
from stepflow.stores.base import JournalEntry, RunKey, RunRecord, Store

__all__ = [
    "STATUSES",
    "Bar",
    "Box",
    "FlowPage",
    "JournalRow",
    "RunPage",
    "RunRow",
    "RunsPage",
    "Span",
    "Timeline",
    "dot_svg",
    "flow_page",
    "html_diagram",
    "inline",
    "parse_cursor",
    "pretty",
    "run_page",
    "runs_page",
    "timeline",
]

#: The statuses the runs page has a tab for, in its order.
STATUSES = ("running", "cancelling", "failed", "completed", "cancelled")

# Longest a value is shown inline (a table cell) before it is cut.
_INLINE = 120
# Most spans drawn in a run's timeline chart (the table lists them all).
_CHART_SPANS = 200
# How long Graphviz may take to lay out one diagram.
_DOT_TIMEOUT_S = 10.0
# Scope-name suffixes go-stepflow adds to a step, dropped to show the name the user gave.
_SUFFIXES = {"wait_for": "WaitFor", "case": "Case", "loop_until": "LoopUntil", "switch": "Switch"}


def _cursor(run: RunRecord) -> str:
    return f"{run.created_at!r}:{run.run_id}"


def parse_cursor(text: str | None) -> RunKey | None:
    """Read a page cursor (``"<created_at>:<run_id>"``); ``None`` for none or a bad one."""
    if not text:
        return None
    at, sep, run_id = text.partition(":")
    try:
        return (float(at), run_id) if sep else None
    except ValueError:
        return None


def _peek(record: RunRecord) -> dict[str, Any]:
    """Read a stored state's envelope as JSON, without its flow's definition."""
    try:
        raw = orjson.loads(record.state)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(raw, list):  # a go-stepflow state: just the events
        return {"state": {"events": raw}}
    return raw if isinstance(raw, dict) else {}


def _inner(envelope: Mapping[str, Any]) -> dict[str, Any]:
    state = envelope.get("state")
    return state if isinstance(state, dict) else {}


def _short(text: str, flow: str) -> str:
    return text.replace(f"{flow}/", "")


def _step(kind: str, step: str, flow: str) -> str:
    """Name a command's step as the user wrote it: relative, without go-stepflow suffixes."""
    return _short(step, flow).removesuffix(_SUFFIXES.get(kind, "\0"))


def _where(event: str, flow: str) -> str:
    """Say where an event rests, relative to the flow (``"completed"`` at its end)."""
    kind, _, path = event.partition(":")
    if not path:
        return event
    return kind if path == flow else _short(path, flow)


def pretty(value: Any) -> str:
    """Return ``value`` as indented JSON text (any non-JSON value as its ``str``)."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def inline(value: Any, limit: int = _INLINE) -> str:
    """Return ``value`` as one line of JSON, cut to ``limit`` characters."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the runs page ------------------------------------------------------------------


@attrs.frozen
class RunRow:
    """One run in the runs table."""

    run_id: str
    flow: str
    status: str
    position: str
    wake_at: float | None
    created_at: float
    updated_at: float
    leased_by: str | None
    reason: str = ""  # why a cancelling or cancelled run was cancelled


@attrs.frozen
class RunsPage:
    """A page of the runs list and what it was asked for.

    Attributes:
        rows: The runs, newest first.
        counts: Runs by status under the flow and prefix filters (all statuses).
        total: The sum of ``counts``.
        older: The cursor of the next (older) page, or ``None`` at the end.
        newer: The cursor of the previous (newer) page, or ``None`` at the start.
        flows: The flow names to offer in the filter (served ones first).

    """

    rows: tuple[RunRow, ...]
    counts: Mapping[str, int]
    total: int
    older: str | None
    newer: str | None
    flows: tuple[str, ...]


def _row(record: RunRecord) -> RunRow:
    inner = _inner(_peek(record))
    events = inner.get("events") or ["?"]
    position = ", ".join(_where(str(e), record.flow) for e in events)
    error = inner.get("error") if record.status in ("cancelling", "cancelled") else None
    reason = error.get("message") if isinstance(error, dict) else None
    return RunRow(
        record.run_id,
        record.flow,
        record.status,
        position,
        record.wake_at,
        record.created_at,
        record.updated_at,
        record.lease_owner,
        reason if isinstance(reason, str) else "",
    )


def runs_page(
    store: Store,
    flows: Sequence[str],
    *,
    status: str | None,
    flow: str | None,
    prefix: str | None,
    older: str | None,
    newer: str | None,
    limit: int,
) -> RunsPage:
    """Read one page of the runs list (see :class:`RunsPage`)."""
    older_key, newer_key = parse_cursor(older), parse_cursor(newer)
    filters: dict[str, Any] = {"status": status, "flow": flow, "id_prefix": prefix or None}
    # One run more than shown tells whether there is a page beyond this one.
    if newer_key is not None:
        runs = store.page_runs(**filters, newer_than=newer_key, limit=limit + 1)
        more_newer = len(runs) > limit
        runs = runs[-limit:] if more_newer else runs
        more_older = True
    else:
        runs = store.page_runs(**filters, older_than=older_key, limit=limit + 1)
        more_older = len(runs) > limit
        runs = runs[:limit]
        more_newer = older_key is not None
    if not runs and (older_key is not None or newer_key is not None):
        more_older = more_newer = False
    counts = store.count_by_status(flow=flow, id_prefix=prefix or None)
    names = list(flows)
    if flow is not None and flow not in names:
        names.append(flow)
    return RunsPage(
        tuple(_row(run) for run in runs),
        counts,
        sum(counts.values()),
        _cursor(runs[-1]) if runs and more_older else None,
        _cursor(runs[0]) if runs and more_newer else None,
        tuple(names),
    )


# -- diagrams -----------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _render_dot(dot: str, text: str) -> str | None:
    try:
        done = subprocess.run(
            [dot, "-Tsvg"],
            input=text.encode(),
            capture_output=True,
            timeout=_DOT_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    svg = done.stdout.decode("utf-8", "replace")
    start = svg.find("<svg")
    return svg[start:] if start >= 0 else None


def dot_svg(definition: FlowDefinition, state: State | None) -> str | None:
    """Draw the flow (and ``state``'s position) as inline SVG with Graphviz ``dot``.

    Returns ``None`` when ``dot`` is not installed or fails; the pages then draw
    the same graph as nested HTML boxes (:func:`stepflow.diagrams.to_json`).
    Diagrams are cached by their DOT text.
    """
    dot = shutil.which("dot")
    if dot is None:
        return None
    return _render_dot(dot, to_dot(definition, state))


@attrs.frozen
class Box:
    """A scope or a node of the HTML diagram (when Graphviz is missing)."""

    kind: str
    label: str
    current: bool = False
    exits: tuple[str, ...] = ()
    children: tuple[Box, ...] = ()
    failed: bool = False


def html_diagram(definition: FlowDefinition, state: State | None) -> Box:
    """Return the flow's graph as nested boxes: scopes holding their nodes, in order.

    A scope sits among its siblings where its first node sits in the definition.
    """
    graph = to_json(definition, state)
    names = {n["id"]: n for n in graph["nodes"]}
    failed = state is not None and state.status == "failed"

    def label(node_id: str) -> str:
        node = names[node_id]
        if node["step"] is None:
            return str(node["kind"])
        return _step(node["kind"], node["step"], definition.name)

    exits: dict[str, list[str]] = {}
    for edge in graph["edges"]:
        if edge["kind"] != "start":
            text = f"{edge['reason']} → {label(edge['target'])}"
            exits.setdefault(edge["source"], []).append(text)
    inside: dict[str | None, list[tuple[str, Any]]] = {}
    for scope in graph["scopes"]:
        inside.setdefault(scope["parent"], []).append(("scope", scope))
    for node in graph["nodes"][1:-1]:
        inside.setdefault(node["scope"], []).append(("node", node))
    order = {node["id"]: index for index, node in enumerate(graph["nodes"])}

    def build(scope: Mapping[str, Any]) -> tuple[int, Box]:
        children: list[tuple[int, Box]] = []
        for what, item in inside.get(scope["path"], ()):
            if what == "scope":
                first, box = build(item)
                if box.children:
                    children.append((first, box))
            else:
                current = bool(item["current"])
                box = Box(
                    item["kind"],
                    label(item["id"]),
                    current,
                    tuple(exits.get(item["id"], ())),
                    failed=current and failed,
                )
                children.append((order[item["id"]], box))
        children.sort(key=lambda child: child[0])
        name = _short(scope["path"], definition.name) if scope["parent"] else scope["path"]
        first = children[0][0] if children else len(order)
        return first, Box(scope["kind"], name, children=tuple(box for _, box in children))

    root = next(s for s in graph["scopes"] if s["parent"] is None)
    _, box = build(root)
    if names["end"]["current"]:
        box = attrs.evolve(box, children=(*box.children, Box("end", "completed", True)))
    return box


# -- the run page --------------------------------------------------------------------


@attrs.frozen
class Span:
    """One command of a run, from when it was issued to when it was answered.

    Attributes:
        command_id: The command's id.
        kind: Its kind (``do``, ``wait_for``, ``sleep``...).
        step: Its step, relative to the flow.
        issued_at: When it was issued (the journal entry that issued it).
        due_at: When it could run: a poll's or backoff's ``wake_at``, a
            sleep's deadline; ``issued_at`` when it was due at once.
        ended_at: When its outcome was recorded; ``None`` while in flight.
        outcome: ``returned``, ``raised``, ``timer`` or ``in flight``.
        detail: The value returned or the error raised, on one line.
        attempt: The retry attempt (``"-"`` outside any retry), or ``"#n"``: the
            n-th answer of this step, when the flow is not served to replay it.

    """

    command_id: int
    kind: str
    step: str
    issued_at: float
    due_at: float
    ended_at: float | None
    outcome: str
    detail: str
    attempt: str

    @property
    def duration(self) -> float | None:
        """Seconds from due to answered (``None`` while in flight)."""
        return None if self.ended_at is None else max(self.ended_at - self.due_at, 0.0)


@attrs.frozen
class Bar:
    """A span placed on the timeline chart (percentages of the chart's width)."""

    span: Span
    row: int
    wait_x: float
    wait_w: float
    run_x: float
    run_w: float


@attrs.frozen
class Timeline:
    """A run's commands over time, and the chart that draws them."""

    spans: tuple[Span, ...]
    bars: tuple[Bar, ...]
    start: float
    end: float
    replayed: bool
    note: str | None

    @property
    def ticks(self) -> tuple[tuple[float, str], ...]:
        """Five labelled times along the chart: ``(percent, "+12.3s")``."""
        width = max(self.end - self.start, 1e-9)
        return tuple((i * 25.0, f"+{width * i / 4:.3g}s") for i in range(5))


@attrs.frozen
class JournalRow:
    """One journal entry as the run page lists it."""

    seq: int
    at: float
    op: str
    lines: tuple[tuple[str, str], ...]  # (css class, text)


@attrs.frozen
class RunPage:
    """Everything the run page shows.

    Attributes:
        record: The run as stored.
        flow: The served flow of the run's name, if any.
        state: The decoded state (``None`` without the flow, or if it did not fit).
        envelope: The stored state as JSON (for a run the console cannot decode).
        position: The events the run rests at, relative to the flow.
        svg: The diagram as SVG, or ``None``.
        boxes: The diagram as HTML boxes, when there is no SVG.
        diagram_note: Why there is no diagram, or how it was drawn.
        timeline: The commands over time.
        journal: The journal, oldest first.
        outputs: ``(step, value)`` for each output, steps relative to the flow.
        error: The failure, ``{"type", "message", "step"}``, or ``None``.
        progress: The run's last progress report (``ctx.report``), or else the
            state's ``progress`` data, when it has some.
        events: Events the run received (journal entries of ``op`` ``"event"``).
        children: The ids of the run's children, when its state lists some.
        can_resume: Whether a resume makes sense (failed, flow served).
        can_cancel: Whether a cancel makes sense (running or failed).

    """

    record: RunRecord
    flow: Flow | None
    state: State | None
    envelope: Mapping[str, Any]
    position: tuple[str, ...]
    svg: str | None
    boxes: Box | None
    diagram_note: str | None
    timeline: Timeline
    journal: tuple[JournalRow, ...]
    outputs: tuple[tuple[str, Any], ...]
    error: Mapping[str, Any] | None
    progress: Any
    events: tuple[JournalRow, ...]
    children: tuple[str, ...]
    can_resume: bool
    can_cancel: bool


def _outcome(effect: Any) -> tuple[str, str]:
    if type(effect) is HandlerReturned:
        return "returned", inline(effect.value)
    if type(effect) is HandlerRaised:
        return "raised", f"{effect.error.type}: {effect.error.message}"
    if type(effect) is TimerFired:
        return "timer", "timer fired"
    if type(effect) is EventReceived:
        return "event", f"{effect.name}: {inline(effect.payload)}"
    if type(effect) is CancelRequested:
        what = "deadline passed" if effect.deadline else "cancel requested"
        return "cancel", f"{what}: {effect.reason}" if effect.reason else what
    return "other", repr(effect)


def _journal_row(entry: JournalEntry, batch: Batch, flow: str) -> JournalRow:
    lines: list[tuple[str, str]] = []
    if batch.op == "effects":
        commands = {c.id: c for c in batch.answered}
        for effect in batch.effects:
            command = commands.get(answered_id(effect))
            where = (
                f"{command.kind} {_step(command.kind, command.step, flow)}"
                if command
                else "run"
                if type(effect) is CancelRequested
                else f"#{effect[0]}"
            )
            outcome, detail = _outcome(effect)
            lines.append((outcome, f"{outcome} {where}: {detail}"))
        if not batch.effects:
            lines.append(("other", "no effect (the state was saved again)"))
    elif batch.op == "start" and batch.state is not None:
        where = ", ".join(_short(e.partition(":")[2], flow) for e in batch.state.events)
        lines.append(("other", f"started at {where}"))
    elif batch.op == "migrate" and batch.state is not None:
        lines.append(("other", f"migrated to {batch.state.flow}"))
    else:
        text = {"resume": "resumed", "cancel": "cancelled", "wake": "woken"}.get(batch.op, batch.op)
        lines.append(("other", text))
    return JournalRow(entry.seq, entry.at, batch.op, tuple(lines))


def _replayed(
    store: Store, record: RunRecord, definition: FlowDefinition
) -> tuple[list[State], str | None]:
    """Return the state after each journal entry, by replay, and a note if it stopped."""
    try:
        run = history(store, record.run_id)
        if run.flow != definition.name:
            return [], f"the run started as {run.flow!r}; attempts are counted per step"
        result = replay(definition, run)
    except StepflowError as exc:
        return [], f"its history could not be replayed ({exc}); attempts are counted per step"
    note = None
    if result.divergences:
        first = result.divergences[0]
        note = f"the replay diverged at batch {first.index}: {first}"
    return [result.initial, *result.states], note


def timeline(
    journal: Sequence[tuple[JournalEntry, Batch]],
    flow: str,
    *,
    states: Sequence[State] = (),
    definition: FlowDefinition | None = None,
    in_flight: Sequence[Command] = (),
    wake_at: float | None = None,
    now: float,
    note: str | None = None,
) -> Timeline:
    """Pair each command with the entry that answered it, and place them on a chart.

    Args:
        journal: The run's journal, oldest first.
        flow: The run's flow name (step names are shown relative to it).
        states: The state after each journal entry (a replay); may be shorter, or
            empty, and then issue times fall back to the entry before the answer.
        definition: The flow's definition, to tell retry attempts.
        in_flight: The commands in flight now, drawn up to ``now``.
        wake_at: When the commands in flight are due.
        now: The time the page is drawn.
        note: Why the replay is missing or partial, if it is.

    """
    issued: dict[int, tuple[float, float]] = {}  # command id -> (issued, due)
    answers: dict[tuple[str, str], int] = {}
    spans: list[Span] = []

    def remember(index: int, at: float) -> None:
        if index < len(states):
            state = states[index]
            for command in state.in_flight:
                if command.id not in issued:
                    due = command.at if type(command) is Wake else (state.wake_at or at)
                    issued[command.id] = (at, max(due, at))

    previous = journal[0][0].at if journal else now
    for index, (entry, batch) in enumerate(journal):
        if batch.op == "effects":
            commands = {c.id: c for c in batch.answered}
            for effect in batch.effects:
                command = commands.get(answered_id(effect))
                if command is None:
                    continue
                key = (command.kind, command.step)
                answers[key] = answers.get(key, 0) + 1
                start, due = issued.get(command.id, (previous, previous))
                if type(command) is Wake:
                    due = max(command.at, start)
                if definition is not None and 0 < index <= len(states):
                    attempt = attempt_label(definition, states[index - 1], command)
                else:
                    attempt = f"#{answers[key]}"
                outcome, detail = _outcome(effect)
                ended = effect.at if effect.at is not None else entry.at
                spans.append(
                    Span(
                        command.id,
                        command.kind,
                        _step(command.kind, command.step, flow),
                        start,
                        min(due, ended),
                        ended,
                        outcome,
                        detail,
                        attempt,
                    )
                )
        remember(index, entry.at)
        previous = entry.at
    for command in in_flight:
        start, due = issued.get(command.id, (previous, previous))
        if type(command) is Wake:
            due = max(command.at, start)
        elif wake_at is not None:
            due = max(wake_at, start)
        spans.append(
            Span(
                command.id,
                command.kind,
                _step(command.kind, command.step, flow),
                start,
                due,
                None,
                "in flight",
                "waiting" if due > now else "running",
                "?",
            )
        )
    first = journal[0][0].at if journal else now
    last = max([first, *(s.ended_at or max(now, s.due_at) for s in spans)])
    width = max(last - first, 1e-9)

    def pct(t: float) -> float:
        return round(min(max((t - first) / width, 0.0), 1.0) * 100, 3)

    bars = []
    for row, span in enumerate(spans[-_CHART_SPANS:]):
        end = span.ended_at if span.ended_at is not None else max(now, span.due_at)
        wait_x, run_x = pct(span.issued_at), pct(span.due_at)
        bars.append(Bar(span, row, wait_x, run_x - wait_x, run_x, max(pct(end) - run_x, 0.4)))
    if len(spans) > _CHART_SPANS:
        cut = f"the chart shows the last {_CHART_SPANS} of {len(spans)} commands"
        note = f"{note}; {cut}" if note else cut
    return Timeline(tuple(spans), tuple(bars), first, last, bool(states), note)


def run_page(store: Store, flows: Mapping[str, Flow], run_id: str) -> RunPage:
    """Read everything the run page shows (see :class:`RunPage`).

    Raises:
        UnknownRunError: no run has this id.
        UnreadableRunError: a column of the run's row cannot be read.
        CorruptStateError: a journal entry cannot be read.

    """
    view = read_run(store, run_id)
    record = view.record
    if record.unreadable is not None:  # a column the store could not decode: say which
        raise record.unreadable
    envelope = _peek(record)
    inner = _inner(envelope)
    flow = flows.get(record.flow)
    state: State | None = None
    diagram_note: str | None = None
    svg: str | None = None
    boxes: Box | None = None
    if flow is None:
        diagram_note = (
            f"no diagram: the console does not serve flow {record.flow!r} "
            "(name its MODULE:FLOW on the stepflow ui command line)"
        )
    else:
        try:
            state = loads(record.state, flow.definition)
        except StepflowError as exc:
            diagram_note = f"the stored state does not fit the served {flow.name!r}: {exc}"
            svg = dot_svg(flow.definition, None)
            boxes = None if svg is not None else html_diagram(flow.definition, None)
        else:
            svg = dot_svg(flow.definition, state)
            boxes = None if svg is not None else html_diagram(flow.definition, state)
            if svg is None:
                diagram_note = "drawn without Graphviz (install it for the full graph)"
            if state.fingerprint != flow.definition.fingerprint:
                diagram_note = (
                    f"the run started under {state.fingerprint[:19]}…, the served flow is "
                    f"{flow.definition.fingerprint[:19]}…"
                )
    states: list[State] = []
    note: str | None = None
    if flow is not None:
        states, note = _replayed(store, record, flow.definition)
    in_flight: Sequence[Command] = ()
    if state is not None and record.status in ("running", "cancelling"):
        in_flight = state.in_flight
    now = time.time()
    chart = timeline(
        view.journal,
        record.flow,
        states=states,
        definition=flow.definition if flow is not None else None,
        in_flight=in_flight,
        wake_at=record.wake_at,
        now=now,
        note=note if flow is not None else "the flow is not served: attempts are counted per step",
    )
    journal = tuple(_journal_row(entry, batch, record.flow) for entry, batch in view.journal)
    outputs = inner.get("outputs")
    error = inner.get("error")
    # What a handler reported (ctx.report) wins over progress data in the state.
    progress = view.progress if view.notes.progress_at is not None else inner.get("progress")
    children = inner.get("children")
    return RunPage(
        record=record,
        flow=flow,
        state=state,
        envelope=envelope,
        position=tuple(_where(str(e), record.flow) for e in inner.get("events") or ()),
        svg=svg,
        boxes=boxes,
        diagram_note=diagram_note,
        timeline=chart,
        journal=journal,
        outputs=tuple(
            (_short(str(k), record.flow), v)
            for k, v in sorted((outputs if isinstance(outputs, dict) else {}).items())
        ),
        error=error if isinstance(error, dict) else None,
        progress=progress,
        events=tuple(row for row in journal if row.op == "event"),
        children=tuple(str(c) for c in children) if isinstance(children, list) else (),
        can_resume=record.status == "failed" and flow is not None,
        can_cancel=record.status in ("running", "failed"),
    )


# -- the flows page ------------------------------------------------------------------


@attrs.frozen
class FlowPage:
    """One served flow on the flows page.

    Attributes:
        flow: The flow.
        svg: Its diagram as SVG, or ``None`` (then ``boxes``).
        boxes: Its diagram as HTML boxes, when there is no SVG.
        counts: Its runs by status.
        fingerprints: ``(fingerprint, runs, is the served one)``, most runs first.

    """

    flow: Flow
    svg: str | None
    boxes: Box | None
    counts: Mapping[str, int]
    fingerprints: tuple[tuple[str, int, bool], ...]


def _fingerprints(store: Store, name: str) -> dict[str, int]:
    """Count the runs of flow ``name`` by the fingerprint their state was made under."""
    counts: dict[str, int] = {}
    key: RunKey | None = None
    while True:
        page = store.page_runs(flow=name, older_than=key, limit=1000)
        for run in page:
            fingerprint = str(_peek(run).get("fingerprint") or "(unreadable)")
            counts[fingerprint] = counts.get(fingerprint, 0) + 1
        if len(page) < 1000:
            return counts
        key = (page[-1].created_at, page[-1].run_id)


def flow_page(store: Store, flow: Flow) -> FlowPage:
    """Read what the flows page shows of one served flow (see :class:`FlowPage`)."""
    svg = dot_svg(flow.definition, None)
    boxes = None if svg is not None else html_diagram(flow.definition, None)
    served = flow.definition.fingerprint
    fingerprints = sorted(
        _fingerprints(store, flow.name).items(), key=lambda item: (-item[1], item[0])
    )
    return FlowPage(
        flow,
        svg,
        boxes,
        store.count_by_status(flow=flow.name),
        tuple((fp, n, fp == served) for fp, n in fingerprints),
    )
