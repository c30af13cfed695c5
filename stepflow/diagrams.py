"""Draw a compiled flow: Mermaid, Graphviz DOT, or the same graph as plain data.

Rule: these are pure functions of a :class:`~stepflow.core.definition.FlowDefinition`
(and optionally a :class:`~stepflow.core.state.State`). They perform no I/O, run no
handler and read no clock; the same definition always gives byte-identical text,
in the definition's own order.

Granularity
-----------
* **Nodes are resting events**: one node per handler transition (``do``,
  ``wait_for``, ``case``, ``loop_until``) or timer (``sleep``, ``sleep_until``: its
  ``when`` call and its timer rest at the same event), that is, every
  position a running :class:`~stepflow.core.state.State` can hold, plus a start
  and an end marker. A ``case`` node is its condition check, drawn inside the
  case's scope; a ``loop_until`` node is its check after each pass, drawn inside
  the loop's scope.
* **Static hops are collapsed**: the ``start:``/``completed:`` bookkeeping events
  issue no command and decide nothing, so each handler destination is drawn
  straight to the resting event it reaches through static transitions (the same
  resolution :func:`stepflow.advance` uses). Every edge is one destination of one
  handler transition, labelled with its reason; the start edge is the only one
  made of static transitions alone.
* **Retry edges are drawn per step**, as in the table: each step inside a retry
  scope gets one ``retry`` edge per enclosing retry (innermost first), to the
  first resting event of that retry's group. Mermaid labels them with the prefix
  ``⟲``; DOT draws them dashed. **Catch edges** likewise: each step inside a
  catch's steps gets a ``catch`` edge to the first resting event of the catch's
  handler (Mermaid's prefix ``↳``, DOT dashed red). A failure with no retry or
  catch left fails the run; that path is not drawn.
* **A switch** is one node (a diamond), drawn inside its ``switch`` scope, with
  one edge per case (``route returned "eu"``) to the first step of that case's
  scope (``case0``...), and one for no match, to the ``default`` scope or past
  the switch. A ``catch`` scope holds its ``steps`` and its ``handler`` scope.
* **Cleanup scopes** (:mod:`stepflow.core.cleanup`): a ``finally`` scope holds
  its *enter* node (``finally``), its ``steps``, its ``cleanup`` scope and its
  *leave* node (a decision: on past the group, or on with the error the
  cleanup ran for, along the leave's failure edges); a ``saga`` scope holds
  its enter node (``saga``), its ``steps`` and its *compensate* node (one
  ``compensate`` command per step to undo, the last done first). Each step
  inside gets a ``finally`` (or ``saga``) failure edge to the cleanup's first
  step (or the compensate node), like a catch edge (Mermaid's prefix ``↳``,
  DOT dashed violet or rose). A cancellation is drawn once per group, from
  its enter node: a ``cancelled`` edge (Mermaid's prefix ``⊘``, DOT dotted
  slate) to the same place, for a cancellation unwinds from wherever in the
  group the run is, timers included. The compensate node's ``compensated``
  edge is the table's first destination; the core passes the error on along
  its failure edges instead (with none, the run fails or is cancelled there).
* **Scopes are nested groups** (Mermaid composite states, DOT clusters): the
  flow's root, ``retry``, ``case``, ``loop_until`` and ``steps`` groups (the
  ``steps`` child of a case or loop, and named ``.steps(...)`` groups). A retry
  with no step inside cannot be told from a plain group and is listed as
  ``steps``. Groups with no node in them are listed by :func:`to_json` but not
  drawn.
* **Groups of several positions** (:mod:`stepflow.core.groups`): a
  ``parallel`` scope holds a *fork* node (its transition, a bar), one ``branch``
  scope per branch, side by side, and one *join* node for all its join
  transitions (one per branch in the table, one node drawn), a bar too. A
  ``map`` scope holds its ``items`` node (the command that asks for the list),
  the ``item`` scope, labelled as repeated (``for each item (max 3 at once)``),
  and a join node. Mermaid draws fork and join as ``<<fork>>``/``<<join>>``
  pseudo-states; DOT as thin black bars. The fork's edges (``parallel branch``)
  go to the first step of each branch, the items node's to the first step of
  the item (``map item``) or past the group (``no items``); every branch or item
  ends at the join node, whose one edge leaves the group.
* **Every position is highlighted**: a state of a run with groups holds several
  positions. Each one marks its node; positions inside map items carry their
  item indices (``.../regionsMap/steps[2]/push``) and mark the template node,
  whose label then says how many items are there (a multiplication sign and
  the count, as in ``push x3`` written with the sign).

Node and scope ids are Mermaid-safe identifiers (``[A-Za-z0-9_]``) derived from
the scope path relative to the flow (``step_shouldDeployCase_steps_push``,
``scope_pushRetry``, ``flow`` for the root, ``start`` and ``end``); when two paths
sanitize to the same id, the later one in sorted order gets ``_2``, ``_3``... The
same ids are used by all three functions.

Mermaid cannot style start or end markers: a completed run is marked in
:func:`to_dot` and :func:`to_json` only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, NamedTuple

from stepflow.core.definition import (
    FAILURE_REASONS,
    FlowDefinition,
    Transition,
    completed_event,
    item_indices,
    start_event,
    template_of,
)
from stepflow.core.state import FAILED, State
from stepflow.errors import FlowMismatchError, UnknownEventError

__all__ = ["to_dot", "to_json", "to_mermaid"]

_START = "start"
_END = "end"
_ROOT = "flow"
# Scope-name suffixes go-stepflow adds; stripped to show the name the user gave.
_SUFFIX = {"wait_for": "WaitFor", "case": "Case", "loop_until": "LoopUntil"}
_SUFFIX.update({"wait_event": "WaitEvent", "parallel": "Parallel", "map": "Map"})
_SUFFIX["switch"] = "Switch"
_SUFFIX["call"] = "Call"
_SUFFIX.update({"finally": "Finally", "leave": "Finally", "saga": "Saga", "compensate": "Saga"})
# Kinds of handler transition whose step path is a scope drawn around their node.
_GROUP_KINDS = frozenset(
    {"case", "loop_until", "parallel", "map", "join", "switch"}
    | {"finally", "saga", "leave", "compensate"}
)
# Where a cleanup scope's cleanup starts: a finally's cleanup, a saga's compensation.
_CLEANUP_STARTS = {"finally": "/cleanup", "saga": "/compensate"}
# The edge kind of entering a finally or a saga ("finally" and "saga" edges are
# failures handed to its cleanup or compensation, as "catch" ones to a handler).
_ENTER = {"finally": "enter", "saga": "enter"}
# Node kinds drawn as bars (fork and join of a group).
_BARS = frozenset({"parallel", "join"})

_TIMES = "\N{MULTIPLICATION SIGN}"  # in "push x3": three map items rest there
_CURRENT_COLORS = ("#fde68a", "#b45309")  # fill, stroke
_FAILED_COLORS = ("#fecaca", "#b91c1c")


class _Scope(NamedTuple):
    order: int  # index of the first transition the scope appears in
    path: str
    kind: str
    parent: str | None
    id: str
    name: str
    detail: str


class _Node(NamedTuple):
    order: int  # index of the node's transition
    id: str
    event: str
    kind: str
    step: str | None
    scope: str
    name: str
    delay: float | None
    timeout: float | None


class _Edge(NamedTuple):
    source: str
    target: str
    reason: str
    kind: str
    retry_scope: str | None


class _Graph(NamedTuple):
    flow: str
    fingerprint: str
    scopes: tuple[_Scope, ...]
    nodes: tuple[_Node, ...]
    edges: tuple[_Edge, ...]
    current: frozenset[str]
    state: State | None
    # Node id -> the positions of map items resting at it (a label says how many).
    items: dict[str, int]
    # Node id -> the concrete positions (events) of the state resting at it.
    positions: dict[str, tuple[str, ...]]


def _path(event: str) -> str:
    return event.partition(":")[2]


def _relative(flow: str, path: str) -> str:
    return path[len(flow) + 1 :] if path != flow else ""


def _sanitize(text: str) -> str:
    return re.sub(r"[^0-9A-Za-z]", "_", text)


def _unique_ids(bases: dict[str, str]) -> dict[str, str]:
    """Map each key to its base id, suffixed ``_2``, ``_3``... where bases collide."""
    taken: set[str] = set()
    ids: dict[str, str] = {}
    for key, base in sorted(bases.items(), key=lambda kv: (kv[1], kv[0])):
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate)
        ids[key] = candidate
    return ids


def _seconds(value: float) -> str:
    for unit, size in (("h", 3600.0), ("m", 60.0)):
        if value >= size and value % size == 0:
            return f"{value / size:g}{unit}"
    return f"{value:g}s"


def _group_detail(definition: FlowDefinition, kind: str, scope: str) -> str:
    """Return the label detail of a ``parallel``, ``map`` or ``item`` scope."""
    if kind == "item":
        limit = definition.table[start_event(scope.rpartition("/")[0])].max_concurrency
        return "for each item" + ("" if limit is None else f" (max {limit} at once)")
    tolerated = definition.table[start_event(scope)].max_failures
    if tolerated:
        noun = "failure" if tolerated == 1 else "failures"
        return f"{kind}, tolerates {tolerated} {noun}"
    return kind


def _retry_detail(definition: FlowDefinition, scope: str) -> str:
    rule = definition.retry_rule(scope)
    parts = ["retry"]
    policy = rule.policy
    if policy is not None:
        attempts = policy.max_attempts
        parts.append("unlimited attempts" if attempts is None else f"up to {attempts} attempts")
        if policy.initial_interval:
            backoff = f"backoff {_seconds(policy.initial_interval)}"
            if policy.backoff_coefficient != 1:
                backoff += f" x{policy.backoff_coefficient:g}"
            parts.append(backoff)
    if rule.on_error:
        parts.append("asks on_error")
    return ", ".join(parts)


def _saga_detail(definition: FlowDefinition, scope: str) -> str:
    """Return the label detail of a saga: its compensations' retry policy, if any."""
    own = scope + "/compensate"
    if own not in definition.retry_scopes():
        return "saga"
    return "saga, compensations " + _retry_detail(definition, own)


def _failure_scope(reason: str, event: str) -> str:
    """Return the scope a failure destination hands the error to (its retry scope field)."""
    path = _path(event)
    if reason == "catch":
        return path.removesuffix("/handler")
    if reason in _CLEANUP_STARTS:
        return path.removesuffix(_CLEANUP_STARTS[reason])
    return path


def _timeout_steps(t: Transition) -> bool:
    """Whether ``t`` is a ``wait_event`` with ``on_timeout`` steps: drawn as a scope."""
    return t.kind == "wait_event" and any(d.reason == "timed out" for d in t.destinations)


def _node_scope(t: Transition) -> str:
    assert t.step is not None
    if t.kind in _GROUP_KINDS or _timeout_steps(t):
        return t.step
    return t.step.rpartition("/")[0]


def _build(definition: FlowDefinition, state: State | None) -> _Graph:
    flow = definition.name
    handlers = [t for t in definition.transitions if not t.is_static]
    leaves = {t.step for t in handlers if t.kind not in _GROUP_KINDS and not _timeout_steps(t)}
    retries = set(definition.retry_scopes())
    group_steps: dict[str, str] = {}
    for t in handlers:
        assert t.step is not None
        if t.kind in ("case", "loop_until", "parallel", "map", "switch") or _timeout_steps(t):
            group_steps[t.step] = t.kind
        if t.kind == "parallel":
            for d in t.destinations:
                if d.reason not in FAILURE_REASONS:
                    group_steps[_path(d.event)] = "branch"
        elif t.kind == "map":
            group_steps[t.step + "/steps"] = "item"
    for scope in definition.catch_scopes():
        group_steps[scope] = "catch"
        group_steps[scope + "/handler"] = "handler"
    cleanups = [t for t in handlers if t.kind in _CLEANUP_STARTS]
    for t in cleanups:
        group_steps[str(t.step)] = t.kind
        if t.kind == "finally":
            group_steps[f"{t.step}/cleanup"] = "cleanup"

    # Scopes, in the order their events first appear: a pre-order of the tree.
    paths: dict[str, int] = {}
    for index, t in enumerate(definition.transitions):
        for event in (t.source, *(d.event for d in t.destinations)):
            path = _path(event)
            if path not in leaves:
                paths.setdefault(path, index)

    bases: dict[str, str] = {}
    for t in handlers:
        assert t.step is not None
        if t.kind == "join":
            bases["join " + t.step] = "join_" + _sanitize(_relative(flow, t.step))
        else:
            bases["node " + t.source] = "step_" + _sanitize(_relative(flow, t.step))
    for path in paths:
        if path != flow:
            bases["scope " + path] = "scope_" + _sanitize(_relative(flow, path))
    ids = _unique_ids(bases)
    ids["node " + definition.start_event] = _START
    ids["node " + definition.completed_event] = _END
    ids["scope " + flow] = _ROOT

    scopes: list[_Scope] = []
    for path, order in paths.items():
        if path == flow:
            kind, parent, detail = "flow", None, ""
        else:
            parent = path.rpartition("/")[0]
            kind = group_steps.get(path) or ("retry" if path in retries else "steps")
            if kind == "retry":
                detail = _retry_detail(definition, path)
            elif kind == "catch":
                errors = definition.catch_rule(path).errors
                detail = "catch" + ("" if errors is None else " " + ", ".join(errors))
            elif kind in ("parallel", "map", "item"):
                detail = _group_detail(definition, kind, path)
            elif kind == "saga":
                detail = _saga_detail(definition, path)
            elif kind == "cleanup":
                detail = "runs whatever happens"
            else:
                detail = kind
        name = path if path == flow else path.rpartition("/")[2]
        scopes.append(_Scope(order, path, kind, parent, ids["scope " + path], name, detail))

    # Every join transition of a group is drawn as the group's one join node.
    for t in handlers:
        if t.kind == "join":
            ids["node " + t.source] = ids["join " + str(t.step)]
    nodes = [_Node(-1, _START, definition.start_event, "start", None, flow, "start", None, None)]
    joined: set[str] = set()
    for order, t in enumerate(definition.transitions):
        if t.is_static:
            continue
        assert t.step is not None
        name = t.step.rpartition("/")[2]
        suffix = _SUFFIX.get(t.kind, "")
        if suffix and name.endswith(suffix):
            name = name[: -len(suffix)]
        event = t.source
        if t.kind == "join":
            if t.step in joined:
                continue
            joined.add(t.step)
            name, event = "join", completed_event(t.step)
        node_id = ids["node " + t.source]
        nodes.append(
            _Node(order, node_id, event, t.kind, t.step, _node_scope(t), name, t.delay, t.timeout)
        )
    end = len(definition.transitions)
    nodes.append(_Node(end, _END, definition.completed_event, "end", None, flow, "end", None, None))

    def target(event: str) -> str:
        return ids["node " + definition.resting_event(event)]

    edges = [_Edge(_START, target(definition.start_event), "static", "start", None)]
    left: set[str] = set()
    for t in handlers:
        source = ids["node " + t.source]
        if t.kind == "join":
            if source in left:
                continue  # the group's join node leaves once
            left.add(source)
        # Retry destinations go back to their retry scope's start (timers have none),
        # catch destinations to their catch's handler, finally and saga ones to the
        # cleanup or the compensation.
        edges.extend(
            _Edge(source, target(d.event), d.reason, _ENTER.get(t.kind, t.kind), None)
            for d in t.destinations
            if d.reason not in FAILURE_REASONS
        )
        edges.extend(
            _Edge(
                source,
                target(d.event),
                d.reason,
                d.reason,
                _failure_scope(d.reason, d.event),
            )
            for d in t.destinations
            if d.reason in FAILURE_REASONS
        )
    # Once a finally or saga is entered, a cancellation goes to its cleanup or
    # compensation from wherever in its steps the run is (timers included).
    edges.extend(
        _Edge(
            ids["node " + t.source],
            target(start_event(str(t.step) + _CLEANUP_STARTS[t.kind])),
            "cancelled",
            "cancel",
            str(t.step),
        )
        for t in cleanups
    )

    items: dict[str, int] = {}
    positions: dict[str, list[str]] = {}
    if state is not None:
        for event in _check(definition, state):
            node_id = ids["node " + template_of(definition.resting_event(event))]
            positions.setdefault(node_id, []).append(event)
            if "[" in event:
                items[node_id] = items.get(node_id, 0) + 1
        scopes = _with_progress(scopes, state)
    return _Graph(
        flow,
        definition.fingerprint,
        tuple(scopes),
        tuple(nodes),
        tuple(edges),
        frozenset(positions),
        state,
        items,
        {node_id: tuple(events) for node_id, events in positions.items()},
    )


def _with_progress(scopes: list[_Scope], state: State) -> list[_Scope]:
    """Add to each running map's item scope how many items it has, and how far they are."""
    counts: dict[str, list[int]] = {}
    for path, progress in state.groups.items():
        if progress.kind == "map":
            total = counts.setdefault(template_of(path) + "/steps", [0, 0, 0, 0])
            total[0] += len(progress.items)
            total[1] += progress.started - progress.active
            total[2] += progress.active
            total[3] += 1
    if not counts:
        return scopes
    changed = []
    for scope in scopes:
        found = counts.get(scope.path)
        if found is not None:
            items, ended, running, groups = found
            runs = "" if groups == 1 else f" in {groups} runs of the map"
            waiting = items - ended - running
            state_of = f"{ended} ended, {running} running" + (
                f", {waiting} waiting" if waiting else ""
            )
            scope = scope._replace(detail=f"{scope.detail}, {items} items{runs} ({state_of})")
        changed.append(scope)
    return changed


def _check(definition: FlowDefinition, state: State) -> tuple[str, ...]:
    if state.flow != definition.name:
        raise FlowMismatchError(
            f"the state belongs to flow {state.flow!r}, not {definition.name!r}; "
            "draw it with its own flow's definition",
            expected=definition.name,
            actual=state.flow,
        )
    item_scopes = [
        t.source[len("start:") :] + "/steps" for t in definition.transitions if t.kind == "map"
    ]
    unknown = []
    for event in state.events:
        path = template_of(event).partition(":")[2]
        # A position inside a map item must carry one index per map around it.
        inside = sum(1 for m in item_scopes if path == m or path.startswith(m + "/"))
        try:
            definition.resting_event(event)
        except KeyError:
            unknown.append(event)
        else:
            if inside != len(item_indices(event)):
                unknown.append(event)
    if unknown:
        raise UnknownEventError(
            f"the state rests at {list(unknown)!r}, which {definition.name!r} "
            f"({definition.fingerprint[:19]}...) does not have; draw it with the "
            "definition it was made under",
            events=tuple(unknown),
        )
    return state.events


def _children(graph: _Graph) -> dict[str | None, list[_Scope | _Node]]:
    """Return the nodes and child scopes drawn in each scope, in definition order.

    Scopes with no node inside are left out; the roots are under ``None``.
    """
    inner = graph.nodes[1:-1]
    inhabited: set[str] = set()
    for node in inner:
        path = node.scope
        while path not in inhabited:
            inhabited.add(path)
            if path == graph.flow:
                break
            path = path.rpartition("/")[0]
    items: list[tuple[int, int, str | None, _Scope | _Node]] = [
        (node.order, 0, node.scope, node) for node in inner
    ]
    items += [(s.order, 1, s.parent, s) for s in graph.scopes if s.path in inhabited]
    children: dict[str | None, list[_Scope | _Node]] = {}
    for _, _, parent, item in sorted(items, key=lambda i: i[:2]):
        children.setdefault(parent, []).append(item)
    return children


#: What a cleanup transition's node does, after its kind.
_CLEANUP_DETAILS = {
    "finally": "finally (enter)",
    "saga": "saga (enter)",
    "leave": "leave (go on, or pass on the error)",
    "compensate": "compensate (last done, first undone)",
}


def _node_detail(node: _Node) -> str:
    if node.kind == "map":
        return "items"
    if node.kind in _CLEANUP_DETAILS:
        return _CLEANUP_DETAILS[node.kind]
    timing = []
    if node.kind == "wait_for" and node.delay is not None:
        timing.append(f"every {_seconds(node.delay)}")
    if node.kind == "sleep" and node.delay is not None:
        timing.append(_seconds(node.delay))
    if node.kind == "wait_event":
        timing.append("for an event")
    if node.kind == "call":
        timing.append("a child run")
    if node.timeout is not None:
        timing.append(f"timeout {_seconds(node.timeout)}")
    return node.kind + (f" ({', '.join(timing)})" if timing else "")


def _count(graph: _Graph, node: _Node) -> str:
    """Return the label suffix saying how many map items rest at ``node`` (or nothing)."""
    count = graph.items.get(node.id)
    return "" if count is None else f" {_TIMES}{count}"


def _bar_failure(
    graph: _Graph, children: dict[str | None, list[_Scope | _Node]], scope: _Scope
) -> str | None:
    """Return the error of a run failed at the fork of ``scope``, said on the scope's label."""
    for child in children.get(scope.path, ()):
        if isinstance(child, _Node) and child.kind in _BARS:
            error = _failure(graph, child)
            if error is not None:
                return error
    return None


def _failure(graph: _Graph, node: _Node) -> str | None:
    state = graph.state
    if state is None or state.status != FAILED or node.id not in graph.current:
        return None
    return state.error.type if state.error is not None else "failed"


# -- Mermaid ------------------------------------------------------------------------


def _mermaid_text(text: str) -> str:
    """Escape user text for a quoted Mermaid state description (entity codes)."""
    out = []
    for c in text:
        if c.isalnum() or c in "_-.,()/+*=!?'@$&^~|":
            out.append(c)
        else:
            out.append(f"#{ord(c)};")
    return "".join(out)


def _mermaid_edge_text(text: str) -> str:
    # An edge label ends at ':', ';' or a newline and cannot hold entity codes.
    return re.sub(r"[^0-9A-Za-z_.\-]", "_", text)


def to_mermaid(definition: FlowDefinition, state: State | None = None) -> str:
    """Return ``definition`` as a Mermaid ``stateDiagram-v2``.

    Each scope is a composite state labelled with its name, each resting event a
    state labelled ``<kind> <step name>`` (with its poll interval, timeout or
    duration); edges carry their reasons, retry edges the prefix ``⟲``. All edges
    are declared at the top level, after the nested states, so that Mermaid keeps
    each state in the composite it was declared in. See the module docstring for
    what is drawn.

    Args:
        definition: The compiled flow.
        state: A run of it; the node of each of its positions gets the class
            ``current`` (``failed`` for a failed run, the error type added to
            the label; for a failed group, to the group's label), a node where
            map items rest says how many.

    Returns:
        The diagram text, ending with a newline.

    Raises:
        FlowMismatchError: ``state`` is a run of another flow.
        UnknownEventError: ``state`` rests at an event ``definition`` lacks.

    """
    graph = _build(definition, state)
    children = _children(graph)
    lines = ["stateDiagram-v2", f"    %% {graph.flow} {graph.fingerprint}"]

    def emit(scope: _Scope, depth: int) -> None:
        pad = "    " * depth
        if scope.kind == "item":
            label = scope.detail
        else:
            label = _mermaid_text(scope.name)
            if scope.detail and scope.detail not in ("steps", scope.name):
                label += f" ({scope.detail})"
        error = _bar_failure(graph, children, scope)
        if error is not None:
            label += f" (failed, {_mermaid_text(error)})"
        # No space before '{': Mermaid keeps everything up to it as the id.
        lines.append(f'{pad}state "{label}" as {scope.id}{{')
        for child in children.get(scope.path, ()):
            if isinstance(child, _Scope):
                emit(child, depth + 1)
                continue
            if child.kind in _BARS:
                bar = "fork" if child.kind == "parallel" else "join"
                lines.append(f"{pad}    state {child.id} <<{bar}>>")
                continue
            if child.kind == "map":
                text = f"items {_mermaid_text(child.name)}"
            else:
                text = f"{child.kind} {_mermaid_text(child.name)}"
                detail = _node_detail(child)
                if detail != child.kind:
                    text += detail[len(child.kind) :]
            text += _count(graph, child)
            error = _failure(graph, child)
            if error is not None:
                text += f" (failed, {_mermaid_text(error)})"
            lines.append(f'{pad}    state "{text}" as {child.id}')
        lines.append(pad + "}")

    for root in children.get(None, ()):
        assert isinstance(root, _Scope)
        emit(root, 1)
    for edge in graph.edges:
        source = "[*]" if edge.source == _START else edge.source
        target = "[*]" if edge.target == _END else edge.target
        if edge.kind == "start":
            lines.append(f"    {source} --> {target}")
            continue
        # (A switch's reason holds its case value: a ':' or ';' would end the label.)
        label = re.sub(r"[:;\n]", "_", edge.reason)
        if edge.retry_scope is not None:
            name = edge.retry_scope.rpartition("/")[2]
            mark = {"retry": "⟲", "cancel": "⊘"}.get(edge.kind, "↳")
            label = f"{mark} {label} {_mermaid_edge_text(name)}"
        lines.append(f"    {source} --> {target} : {label}")
    marked = sorted(graph.current - {_START, _END})
    if marked:
        css = "failed" if state is not None and state.status == FAILED else "current"
        fill, stroke = _FAILED_COLORS if css == "failed" else _CURRENT_COLORS
        lines.append(f"    classDef {css} fill:{fill},stroke:{stroke},stroke-width:3px")
        lines.append(f"    class {','.join(marked)} {css}")
    return "\n".join(lines) + "\n"


# -- Graphviz DOT -------------------------------------------------------------------


def _dot(text: str) -> str:
    """Quote ``text`` as a DOT string (backslashes kept literal)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _attrs(pairs: Iterable[tuple[str, str]]) -> str:
    return "[" + ", ".join(f"{k}={v}" for k, v in pairs) + "]"


_SHAPES = {
    "map": "parallelogram",
    "do": "box",
    "wait_for": "hexagon",
    "sleep": "octagon",
    "wait_event": "cds",
    "sleep_until": "octagon",
    "case": "diamond",
    "loop_until": "diamond",
    "switch": "diamond",
    "finally": "invhouse",
    "saga": "invhouse",
    "leave": "diamond",
    "compensate": "box3d",
    "call": "component",
}
_CLUSTER_STYLES = {
    "flow": ("solid", "#334155"),
    "retry": ("dashed", "#b45309"),
    "case": ("solid", "#1d4ed8"),
    "loop_until": ("solid", "#7c3aed"),
    "wait_event": ("solid", "#0369a1"),
    "steps": ("dotted", "#64748b"),
    "parallel": ("solid", "#0f766e"),
    "branch": ("dotted", "#0f766e"),
    "map": ("solid", "#be185d"),
    "item": ("dashed,bold", "#be185d"),
    "switch": ("solid", "#0369a1"),
    "catch": ("dashed", "#b91c1c"),
    "handler": ("dotted", "#b91c1c"),
    "finally": ("solid", "#6d28d9"),
    "cleanup": ("dashed", "#6d28d9"),
    "saga": ("solid", "#9d174d"),
}
# Failure and cancellation edges: dashed, in these colors, not constraining the layout.
_EDGE_COLORS = {
    "retry": "#b45309",
    "catch": "#b91c1c",
    "finally": "#6d28d9",
    "saga": "#9d174d",
    "cancel": "#475569",
}


def to_dot(definition: FlowDefinition, state: State | None = None) -> str:
    """Return ``definition`` as a Graphviz ``digraph``.

    Each scope is a ``subgraph cluster_<id>`` labelled with its name (retry
    clusters dashed, with their policy); each resting event a node whose shape
    tells its kind (``box`` do, ``hexagon`` wait_for, ``octagon`` sleep and sleep_until,
    ``cds`` wait_event,
    ``diamond`` case and loop_until); edges carry their reasons, retry edges are
    dashed and do not constrain the layout. See the module docstring for what is
    drawn.

    Args:
        definition: The compiled flow.
        state: A run of it; the node of each of its positions is filled (amber;
            red with the error type for a failed run, the end marker for a
            completed one), a node where map items rest says how many.

    Returns:
        The DOT text, ending with a newline.

    Raises:
        FlowMismatchError: ``state`` is a run of another flow.
        UnknownEventError: ``state`` rests at an event ``definition`` lacks.

    """
    graph = _build(definition, state)
    children = _children(graph)
    failed = state is not None and state.status == FAILED
    lines = [
        f"digraph {_dot(graph.flow)} {{",
        f"    // {graph.fingerprint}",
        '    graph [compound=true, fontname="Helvetica", fontsize=12];',
        '    node [fontname="Helvetica", fontsize=11];',
        '    edge [fontname="Helvetica", fontsize=9];',
    ]

    def highlight(node_id: str) -> list[tuple[str, str]]:
        if node_id not in graph.current:
            return []
        fill, stroke = _FAILED_COLORS if failed else _CURRENT_COLORS
        return [("fillcolor", _dot(fill)), ("color", _dot(stroke)), ("penwidth", "2.5")]

    def node_line(pad: str, node: _Node) -> str:
        if node.kind in _BARS:
            return bar_line(pad, node)
        label = f"{node.name}\n{_node_detail(node)}{_count(graph, node)}"
        error = _failure(graph, node)
        if error is not None:
            label += f"\nfailed: {error}"
        shape = _SHAPES[node.kind]
        style = "rounded" if shape == "box" else "solid"
        if node.id in graph.current:
            style += ",filled,bold"
        pairs = [
            ("label", _dot(label)),
            ("shape", shape),
            ("style", _dot(style)),
            ("tooltip", _dot(node.event)),
            *highlight(node.id),
        ]
        return f"{pad}{_dot(node.id)} {_attrs(pairs)};"

    def bar_line(pad: str, node: _Node) -> str:
        # A fork or join: a thin bar, black unless the run rests (failed) at it.
        fill = "black"
        if node.id in graph.current:
            fill = (_FAILED_COLORS if failed else _CURRENT_COLORS)[1]
        pairs = [
            ("label", '""'),
            ("shape", "box"),
            ("style", "filled"),
            ("fillcolor", _dot(fill)),
            ("color", _dot(fill)),
            ("height", "0.06"),
            ("width", "1.2"),
            ("tooltip", _dot(f"{'fork' if node.kind == 'parallel' else 'join'} {node.event}")),
        ]
        return f"{pad}{_dot(node.id)} {_attrs(pairs)};"

    def emit(scope: _Scope, depth: int) -> None:
        pad = "    " * depth
        style, color = _CLUSTER_STYLES[scope.kind]
        if scope.kind == "item":
            label = scope.detail
        else:
            label = scope.name
            if scope.kind not in ("flow", "steps"):
                label += f"\n{scope.detail}"
        error = _bar_failure(graph, children, scope)
        if error is not None:
            label += f"\nfailed: {error}"
        lines.append(f"{pad}subgraph {_dot('cluster_' + scope.id)} {{")
        lines.append(f"{pad}    label={_dot(label)};")
        lines.append(f"{pad}    style={_dot(style)}; color={_dot(color)};")
        for child in children.get(scope.path, ()):
            if isinstance(child, _Scope):
                emit(child, depth + 1)
            else:
                lines.append(node_line(pad + "    ", child))
        lines.append(pad + "}")

    start_pairs = [("label", '""'), ("shape", "circle"), ("style", "filled")]
    start_pairs += [
        ("fillcolor", "black"),
        ("width", "0.25"),
        ("tooltip", _dot(graph.nodes[0].event)),
    ]
    lines.append(f"    {_dot(_START)} {_attrs(start_pairs)};")
    end_pairs = [("label", '""'), ("shape", "doublecircle"), ("style", "filled")]
    end_pairs += [
        ("fillcolor", "black"),
        ("width", "0.2"),
        ("tooltip", _dot(graph.nodes[-1].event)),
    ]
    if _END in graph.current:
        end_pairs = [p for p in end_pairs if p[0] != "fillcolor"] + highlight(_END)
    lines.append(f"    {_dot(_END)} {_attrs(end_pairs)};")
    for root in children.get(None, ()):
        assert isinstance(root, _Scope)
        emit(root, 1)
    for edge in graph.edges:
        pairs: list[tuple[str, str]] = []
        if edge.kind != "start":
            label = edge.reason
            if edge.retry_scope is not None:
                label += " " + edge.retry_scope.rpartition("/")[2]
            pairs.append(("label", _dot(label)))
        color = _EDGE_COLORS.get(edge.kind)
        if color is not None:
            style = "dotted" if edge.kind == "cancel" else "dashed"
            pairs += [("style", style), ("color", _dot(color)), ("constraint", "false")]
        attrs = f" {_attrs(pairs)}" if pairs else ""
        lines.append(f"    {_dot(edge.source)} -> {_dot(edge.target)}{attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"


# -- JSON ---------------------------------------------------------------------------


def to_json(definition: FlowDefinition, state: State | None = None) -> dict[str, Any]:
    """Return the graph of ``definition`` as JSON-serializable data.

    The same nodes, edges and ids as :func:`to_mermaid` and :func:`to_dot`, in
    definition order::

        {"flow": ..., "fingerprint": ..., "status": ..., "error": ...,
         "scopes": [{"path", "kind", "parent"}],
         "nodes": [{"id", "event", "kind", "step", "scope", "current", "positions"}],
         "edges": [{"source", "target", "reason", "kind"}]}

    Scope kinds are ``flow``, ``retry``, ``case``, ``loop_until``, ``steps``,
    ``parallel``, ``branch`` (one branch of a parallel), ``map``, ``item``
    (the scope each item of a map runs in), ``switch`` (its cases and default
    are ``steps``), ``catch`` and ``handler`` (a catch's handler), ``finally``,
    ``cleanup`` (a finally's cleanup) and ``saga``;
    every scope is listed, drawn or not. Node kinds are ``start``, ``end`` and the
    transition kinds (``parallel`` is a group's fork, ``join`` its join, ``map``
    the command that asks for a map's items); a node's ``scope`` is the path of
    the group drawn around it. ``positions`` lists the state's positions resting
    at the node, as the state holds them (map item indices included, so a node
    inside a map lists one per item there); ``current`` says whether there is one.
    Edge kinds are ``start`` (the static hops to the first resting event),
    ``retry``, ``catch``, ``finally`` and ``saga`` (a failure handed to that
    cleanup or compensation), ``cancel`` (a cancellation unwinding into it,
    from the group's enter node), ``enter`` (into a finally's or saga's
    steps), or the kind of the transition the edge leaves by. ``status`` and
    ``error`` (``{"type", "message", "step"}``) come from ``state``, else ``None``.

    Args:
        definition: The compiled flow.
        state: A run of it; the nodes of its positions have ``current`` set
            and list them in ``positions``.

    Raises:
        FlowMismatchError: ``state`` is a run of another flow.
        UnknownEventError: ``state`` rests at an event ``definition`` lacks.

    """
    graph = _build(definition, state)
    error = None if state is None or state.error is None else state.error
    return {
        "flow": graph.flow,
        "fingerprint": graph.fingerprint,
        "status": None if state is None else state.status,
        "error": None
        if error is None
        else {"type": error.type, "message": error.message, "step": error.step},
        "scopes": [{"path": s.path, "kind": s.kind, "parent": s.parent} for s in graph.scopes],
        "nodes": [
            {
                "id": n.id,
                "event": n.event,
                "kind": n.kind,
                "step": n.step,
                "scope": n.scope,
                "current": n.id in graph.current,
                "positions": list(graph.positions.get(n.id, ())),
            }
            for n in graph.nodes
        ],
        "edges": [
            {"source": e.source, "target": e.target, "reason": e.reason, "kind": e.kind}
            for e in graph.edges
        ],
    }
