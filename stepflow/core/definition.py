"""The compiled flow: pure data, one transition table, no callables.

A :class:`FlowDefinition` is the explicit finite state machine of a flow. Its
:attr:`~FlowDefinition.transitions` list every transition in go-stepflow's format:
a source event and its possible destinations, each with a human reason. Events are
go-stepflow's strings, ``"start:<path>"`` and ``"completed:<path>"``.

Two kinds of transition exist:

* **static** (``kind == "static"``): taken without asking anyone; the compiler
  follows chains of them ahead of time, so :func:`stepflow.advance` never walks
  them one by one.
* **handler** transitions (``"do"``, ``"wait_for"``, ``"case"``,
  ``"loop_until"``): the position waits at their source until the step's handler
  answers. ``destinations[0]`` is where a returned value (``do``) or ``True``
  leads, ``destinations[1]`` where ``False`` leads; then one ``"retry"``
  destination per enclosing retry, innermost first.
* a ``"switch"`` transition (handler) lists one destination per case, in
  order (their values' canonical JSON keys in :attr:`Transition.cases`), then
  the default group's start, or the switch's end when it has none; see
  :mod:`stepflow.core.choice`.
* **timer** transitions (``"sleep"``): the position waits at their source until
  the durable timer fires, then goes to ``destinations[0]``. A ``"sleep_until"``
  first asks its ``when`` handler for the time (so it lists its retries, as a
  handler does), then waits for its timer in the same way (see
  :mod:`stepflow.core.timers`).
* **event** transitions (``"wait_event"``): the position waits at their source
  for an event named ``awaits``, then goes to ``destinations[0]``; past its
  ``timeout`` it goes to ``destinations[1]`` (the ``on_timeout`` steps) when that
  is not a failure destination, else it fails (see :mod:`stepflow.core.events`).
* a **child** transition (``"call"``): the position waits at its source while
  the child run of flow ``calls`` runs, then goes to ``destinations[0]``; a
  child that fails fails the step (see :mod:`stepflow.core.children`).
* **group** transitions: a ``"parallel"`` fork lists the start of each branch; a
  ``"map"`` calls its ``items`` handler, then starts ``destinations[0]`` (the item
  group) once per item, or goes to ``destinations[1]`` when there are none; a
  ``"join"`` leaves the end of a branch or item group for the end of its group,
  taken once every branch or item has ended. Their rules are in
  :mod:`stepflow.core.groups`.

A failure goes to the failure scopes enclosing the step, innermost first: retry
scopes (``"retry"`` destinations) and catch scopes (a ``"catch"`` destination,
the start of the catch's ``handler`` group; its :class:`CatchRule` is kept in
:attr:`FlowDefinition.catches`, see :mod:`stepflow.core.scopes`), ``finally_``
scopes (a ``"finally"`` destination, the start of its cleanup) and sagas (a
``"saga"`` destination, its ``compensate`` transition).

Cleanup transitions (:mod:`stepflow.core.cleanup`) decide from the state, with
no handler: ``"finally"`` and ``"saga"`` enter such a group (forgetting what an
earlier pass left), ``"leave"`` ends a finally's cleanup (on to the group's end,
``destinations[0]``, or on with the error it ran for), and ``"compensate"``
calls the ``compensate`` handlers of a saga's completed steps one by one.

Time is data here too: a ``wait_for`` transition carries its poll interval
(``delay``) and ``timeout``, a ``sleep`` its duration (``delay``), and each retry
scope a :class:`RetryRule` with its optional :class:`RetryPolicy`. They are part
of the fingerprint.

Construction checks the table: one transition per source event, every destination
handled, and no cycle of static transitions (which could never issue a command).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import attrs

# (Kept importable from here too: they were defined here before policies.py.)
from stepflow.core.policies import CatchRule, RetryPolicy, RetryRule
from stepflow.errors import DefinitionError

__all__ = [
    "CatchRule",
    "Destination",
    "FlowDefinition",
    "RetryPolicy",
    "RetryRule",
    "Transition",
    "TransitionKind",
    "completed_event",
    "start_event",
]

TransitionKind = Literal[
    "static",
    "do",
    "wait_for",
    "case",
    "loop_until",
    "sleep",
    "wait_event",
    "parallel",
    "map",
    "join",
    "switch",
    "sleep_until",
    "finally",
    "saga",
    "leave",
    "compensate",
    "call",
]
#: The kinds of transition that fork or join positions.
GROUP_KINDS = ("parallel", "map")
# A map item's index in a position: the only brackets an event can hold.
_INDEX = re.compile(r"\[(\d+)\]")

#: Bumped when the canonical form that fingerprints are computed over changes.
_FINGERPRINT_FORMAT = 1
#: The reasons of the destinations a failure takes: to a retry, a catch's handler,
#: a finally's cleanup or a saga's compensation.
FAILURE_REASONS = ("retry", "catch", "finally", "saga")
#: The kinds of transition that a position passes through without a command,
#: deciding where to go from the state (see stepflow.core.cleanup).
CLEANUP_KINDS = ("finally", "saga", "leave")


def start_event(scope: str) -> str:
    """Return go-stepflow's start event of ``scope``.

    >>> start_event("deploy/v1/push")
    'start:deploy/v1/push'
    """
    return "start:" + scope


def completed_event(scope: str) -> str:
    """Return go-stepflow's completed event of ``scope``.

    >>> completed_event("deploy/v1")
    'completed:deploy/v1'
    """
    return "completed:" + scope


@attrs.frozen
class Destination:
    """A possible destination of a transition, with the reason it is taken.

    Attributes:
        event: The destination event.
        reason: Why the transition goes there (``"static"``, ``"retry"``,
            ``"Case condition is met"``...).

    """

    event: str
    reason: str


def template_of(path: str) -> str:
    """Return the definition's event or path for a position's, without map item indices.

    >>> template_of("start:deploy/v1/regionsMap/steps[3]/push")
    'start:deploy/v1/regionsMap/steps/push'
    """
    return _INDEX.sub("", path) if "[" in path else path


def item_indices(path: str) -> tuple[int, ...]:
    """Return the map item indices a position's event or path carries, outermost first.

    >>> item_indices("start:f/aMap/steps[2]/bMap/steps[0]/x")
    (2, 0)
    """
    return tuple(int(i) for i in _INDEX.findall(path)) if "[" in path else ()


def concretize(text: str, maps: tuple[str, ...], indices: tuple[int, ...]) -> str:
    """Insert item ``indices`` after each map item scope of ``maps`` that ``text`` lies in.

    ``maps`` are template item scopes (``"f/aMap/steps"``), outermost first;
    ``text`` an event or a path of the definition.

    >>> concretize("start:f/aMap/steps/x", ("f/aMap/steps",), (4,))
    'start:f/aMap/steps[4]/x'
    """
    head, sep, path = text.partition(":")
    if not sep:
        head, path = "", head
    for scope, index in reversed(tuple(zip(maps, indices, strict=False))):
        if path.startswith(scope) and (len(path) == len(scope) or path[len(scope)] == "/"):
            path = f"{path[: len(scope)]}[{index}]{path[len(scope) :]}"
    return head + sep + path


@attrs.frozen
class Transition:
    """One entry of the transition table.

    Attributes:
        source: The event the transition leaves from.
        kind: ``"static"``, or the kind of handler whose answer decides the
            destination.
        step: Scope path of the step whose handler decides (``None`` for static).
        destinations: Every possible destination, in the order described in the
            module docstring.
        retry_scopes: Scope paths of the retries enclosing the step, innermost
            first.
        catch_scopes: Scope paths of the catches enclosing the step, innermost
            first. A failure is handed to the retries and catches in nesting
            order (the innermost, whose path is the longest, first).
        delay: For ``wait_for``, seconds between polls; for ``sleep``, the
            duration. ``None`` otherwise.
        timeout: For ``wait_for``, seconds after which a condition still false
            fails the step with a ``WaitTimeoutError``; for ``wait_event``, after
            which the wait times out; for ``do``, the
            start-to-close limit of one execution of its handler, enforced by
            the shell (``StepTimeoutError``), never read by the core; ``None``:
            no timeout.
        max_concurrency: For ``map``, how many items may run at once
            (``None``: no limit).
        max_failures: For ``parallel`` and ``map``, how many failed branches or
            items the group tolerates and still completes.
        awaits: For ``wait_event``, the name of the event it waits for.
        cases: For ``switch``, the canonical JSON key of each case's value, in
            the order of the case destinations (see :mod:`stepflow.core.choice`).
        cleanup_scopes: Scope paths of the ``finally_`` and ``saga`` groups
            enclosing the step, innermost first.
        compensate: For ``do``, whether the step has a ``compensate`` handler
            (called by the enclosing saga's ``compensate`` transition).
        calls: For ``call``, the name of the child's flow.

    """

    source: str
    kind: TransitionKind
    step: str | None
    destinations: tuple[Destination, ...]
    retry_scopes: tuple[str, ...] = ()
    delay: float | None = None
    timeout: float | None = None
    max_concurrency: int | None = None
    max_failures: int = 0
    catch_scopes: tuple[str, ...] = ()
    cases: tuple[str, ...] = ()
    awaits: str | None = None
    cleanup_scopes: tuple[str, ...] = ()
    compensate: bool = False
    calls: str | None = None

    @property
    def is_static(self) -> bool:
        """Whether the transition is taken without a handler."""
        return self.kind == "static"


class _Node(NamedTuple):
    """Compiled view of a resting event: where a position waits for a handler.

    Private to the core. ``on_true``/``on_false`` are resting events already
    resolved through static hops; ``kind is None`` marks the flow's end.
    """

    event: str
    events: tuple[str, ...]
    kind: str | None
    step: str
    on_true: str
    on_false: str
    retry_scopes: tuple[str, ...]
    delay: float | None
    timeout: float | None
    # A handler step whose command needs no time to issue (not a timer, no
    # timeout): advance's fast path issues it inline.
    plain: bool
    # Groups (parallel/map scopes) enclosing the node, outermost first, and the
    # map item scopes among them: a position inside carries one index per item scope.
    groups: tuple[str, ...] = ()
    maps: tuple[str, ...] = ()
    # A parallel fork's branch names; a fork's max_concurrency and max_failures.
    forks: tuple[str, ...] = ()
    limit: int | None = None
    tolerated: int = 0
    # Retry and catch scopes around the node, innermost first: where a failure goes.
    failures: tuple[str, ...] = ()
    # A wait_event's event name, a call's child flow name ("" otherwise).
    awaits: str = ""
    # How many of ``failures`` (the innermost) lie inside the outermost cleanup
    # the node runs in (a finally's cleanup or a saga's compensation); -1: in none.
    shield: int = -1
    # The sagas enclosing the step, outermost first (a saga's own enter and
    # compensate nodes count it); the first holds the compensation stack.
    sagas: tuple[str, ...] = ()
    # A do step with a compensate= handler.
    compensable: bool = False


def _canonical(
    name: str,
    transitions: tuple[Transition, ...],
    retries: tuple[RetryRule, ...],
    catches: tuple[CatchRule, ...],
    deadline: float | None,
) -> str:
    rows: list[list[Any]] = []
    for t in transitions:
        row: list[Any] = [
            t.source,
            t.kind,
            t.step,
            [[d.event, d.reason] for d in t.destinations],
            list(t.retry_scopes),
        ]
        # Timing joins the row only when set: flows with no wait_for, sleep or
        # policy keep the fingerprints they had before timers existed.
        if t.delay is not None or t.timeout is not None:
            row.append([t.delay, t.timeout])
        if t.kind in GROUP_KINDS:
            row.append({"max_concurrency": t.max_concurrency, "max_failures": t.max_failures})
        if t.awaits is not None:
            row.append({"awaits": t.awaits})
        if t.calls is not None:
            row.append({"calls": t.calls})
        # Catches and cases join the row only when present: older flows keep their prints.
        if t.catch_scopes:
            row.append({"catch_scopes": list(t.catch_scopes)})
        if t.cleanup_scopes:
            row.append({"cleanup_scopes": list(t.cleanup_scopes)})
        if t.compensate:
            row.append({"compensate": True})
        if t.kind == "switch":
            row.append({"cases": list(t.cases)})
        rows.append(row)
    body: list[Any] = [_FINGERPRINT_FORMAT, name, rows]
    plain = [r for r in retries if r.policy is not None or not r.on_error]
    if plain:
        body.append(
            [
                [r.scope, None if r.policy is None else r.policy._canonical(), r.on_error]
                for r in plain
            ]
        )
    if catches:
        errors = [[c.scope, None if c.errors is None else list(c.errors)] for c in catches]
        body.append({"catches": errors})
    if deadline is not None:
        body.append({"deadline": deadline})
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def _shield(path: str, failures: tuple[str, ...], finallies: list[str], sagas: list[str]) -> int:
    """Return how many of ``failures`` lie in the outermost cleanup ``path`` runs in, or -1.

    A finally's cleanup steps run in ``<finally>/cleanup/...``; a saga compensates
    at ``<saga>/compensate`` (whose own retry scope has that path).
    """
    regions = [f + "/cleanup" for f in finallies if path.startswith(f + "/cleanup/")]
    regions += [s + "/compensate" for s in sagas if path == s + "/compensate"]
    if not regions:
        return -1
    region = min(regions, key=len)  # the outermost: cleanups inside it are shielded too
    return sum(1 for f in failures if f == region or f.startswith(region + "/"))


def _branches(t: Transition) -> tuple[str, ...]:
    if t.kind != "parallel":
        return ()
    return tuple(
        d.event.partition(":")[2] for d in t.destinations if d.reason not in FAILURE_REASONS
    )


def _inside(event: str, item_scopes: tuple[str, ...]) -> tuple[str, ...]:
    path = event.partition(":")[2]
    return tuple(m for m in item_scopes if path == m or path.startswith(m + "/"))


# Positions of map items whose nodes are kept ready; past this, the cache starts over.
_CONCRETE_CACHE = 65536


@attrs.frozen(repr=False)
class FlowDefinition:
    """The compiled state machine of a flow: hashable, picklable, pure data.

    Two definitions compiled from equal specs are equal and share a
    :attr:`fingerprint`, whatever the handlers bound to them.

    Attributes:
        name: The flow's name (its root scope).
        transitions: Every transition, in definition order.
        retries: The :class:`RetryRule` of each retry scope that has a policy or
            no ``on_error`` handler; any other retry scope asks its ``on_error``
            handler, without limit or delay (go-stepflow's behaviour).
        catches: The :class:`CatchRule` of each catch scope that has a step in it.
        deadline: Seconds a run may take before the runtime cancels it with
            :class:`~stepflow.errors.DeadlineExceeded` (``None``: no deadline).
            The core never reads it: a deadline reaches a run as a
            :class:`~stepflow.core.messages.CancelRequested` effect.
        table: Mapping of each source event to its one :class:`Transition`.
        fingerprint: ``"sha256:<hex>"`` of the definition's canonical form.
        start_event: The event a new run starts from.
        completed_event: The event of a completed run.

    Raises:
        DefinitionError: if two transitions share a source, a destination is not
            handled, or static transitions form a cycle.

    """

    name: str
    transitions: tuple[Transition, ...]
    retries: tuple[RetryRule, ...] = ()
    catches: tuple[CatchRule, ...] = ()
    deadline: float | None = None
    table: Mapping[str, Transition] = attrs.field(init=False, eq=False, hash=False)
    fingerprint: str = attrs.field(init=False, eq=False, hash=False)
    start_event: str = attrs.field(init=False, eq=False, hash=False)
    completed_event: str = attrs.field(init=False, eq=False, hash=False)
    # Every known event -> the resting node it resolves to through static hops.
    # A plain dict (built here, never changed afterwards): advance reads it on
    # every step, and a read-only proxy would double the cost of each lookup.
    _nodes: dict[str, _Node] = attrs.field(init=False, eq=False, hash=False)
    # (name, fingerprint, nodes, concurrent): what advance needs, in one attribute read.
    _hot: tuple[str, str, dict[str, _Node], bool] = attrs.field(init=False, eq=False, hash=False)
    # Whether the flow has parallel or map groups (several positions per run).
    _concurrent: bool = attrs.field(init=False, eq=False, hash=False)
    # Position (with item indices) -> its node, made on first use (see _node).
    _concrete: dict[str, _Node] = attrs.field(init=False, eq=False, hash=False)
    # Every event of a flow with maps -> the map item scopes it lies in.
    _event_maps: dict[str, tuple[str, ...]] = attrs.field(init=False, eq=False, hash=False)
    # Retry scope -> its rule, for every retry scope of the flow.
    _rules: dict[str, RetryRule] = attrs.field(init=False, eq=False, hash=False)
    # Catch scope -> its rule.
    _catches: dict[str, CatchRule] = attrs.field(init=False, eq=False, hash=False)
    # Finally and saga scope -> "finally" or "saga".
    _cleanups: dict[str, str] = attrs.field(init=False, eq=False, hash=False)
    # Every name, event and step path -> itself: the codec makes loaded states
    # share these strings instead of holding copies of them.
    _strings: dict[str, str] = attrs.field(init=False, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        table: dict[str, Transition] = {}
        for t in self.transitions:
            if t.source in table:
                raise DefinitionError(
                    f"two transitions leave {t.source!r}; every event must have exactly one. "
                    "Give the steps of one scope distinct names.",
                    path=t.source.partition(":")[2],
                )
            table[t.source] = t
        done = completed_event(self.name)
        if done in table:
            raise DefinitionError(
                f"a transition leaves {done!r}, the end of the flow; a completed run must "
                "stay completed",
                path=self.name,
            )
        for t in self.transitions:
            for d in t.destinations:
                if d.event not in table and d.event != done:
                    raise DefinitionError(
                        f"transition from {t.source!r} leads to {d.event!r}, which no "
                        "transition leaves; every destination must be handled.",
                        path=t.source.partition(":")[2],
                    )
        start = start_event(self.name)
        if start not in table:
            raise DefinitionError(f"no transition leaves the start event {start!r}", path=self.name)
        object.__setattr__(self, "table", MappingProxyType(table))
        object.__setattr__(
            self,
            "fingerprint",
            "sha256:"
            + hashlib.sha256(
                _canonical(
                    self.name, self.transitions, self.retries, self.catches, self.deadline
                ).encode()
            ).hexdigest(),
        )
        object.__setattr__(self, "start_event", start)
        object.__setattr__(self, "completed_event", done)
        groups = {t.source.partition(":")[2]: t for t in self.transitions if t.kind in GROUP_KINDS}
        item_scopes = tuple(g + "/steps" for g, t in groups.items() if t.kind == "map")
        event_maps = {e: _inside(e, item_scopes) for e in (*table, done)} if item_scopes else {}
        nodes = self._compile_nodes(table, done, groups, event_maps)
        concurrent = bool(groups)
        object.__setattr__(self, "_nodes", nodes)
        object.__setattr__(self, "_hot", (self.name, self.fingerprint, nodes, concurrent))
        object.__setattr__(self, "_concurrent", concurrent)
        object.__setattr__(self, "_concrete", {})
        object.__setattr__(self, "_event_maps", event_maps)
        rules = {scope: RetryRule(scope) for t in self.transitions for scope in t.retry_scopes}
        for rule in self.retries:
            if rule.scope not in rules:
                raise DefinitionError(
                    f"retry rule for {rule.scope!r}, which no step is inside", path=rule.scope
                )
            rules[rule.scope] = rule
        object.__setattr__(self, "_rules", rules)
        catches = {c.scope: c for c in self.catches}
        listed = {s for t in self.transitions for s in t.catch_scopes}
        for scope in sorted(listed ^ catches.keys()):
            raise DefinitionError(
                f"catch scope {scope!r} needs one CatchRule and a step inside it", path=scope
            )
        object.__setattr__(self, "_catches", catches)
        cleanups = {
            t.source.partition(":")[2]: t.kind
            for t in self.transitions
            if t.kind == "finally" or t.kind == "saga"
        }
        object.__setattr__(self, "_cleanups", cleanups)
        strings = {self.name: self.name, self.fingerprint: self.fingerprint}
        for node in nodes.values():
            strings[node.event] = node.event
            strings[node.step] = node.step
            strings.update((scope, scope) for scope in node.failures)
        object.__setattr__(self, "_strings", strings)

    def _compile_nodes(
        self,
        table: Mapping[str, Transition],
        done: str,
        groups: Mapping[str, Transition],
        event_maps: Mapping[str, tuple[str, ...]],
    ) -> dict[str, _Node]:
        rest: dict[str, str] = {done: done}

        def resolve(event: str) -> str:
            seen: list[str] = []
            current = event
            while current not in rest:
                t = table[current]
                if not t.is_static:
                    rest[current] = current
                    break
                if current in seen:
                    cycle = " -> ".join([*seen[seen.index(current) :], current])
                    raise DefinitionError(
                        f"static transitions form a cycle that issues no command: {cycle}. "
                        "Put a step with a handler (do, wait_for, case, loop_until) in the loop.",
                        path=current.partition(":")[2],
                    )
                seen.append(current)
                current = t.destinations[0].event
            target = rest[current]
            for e in seen:
                rest[e] = target
            return target

        nodes: dict[str, _Node] = {
            done: _Node(done, (done,), None, self.name, done, done, (), None, None, False)
        }
        finallies = sorted(t.step or "" for t in self.transitions if t.kind == "finally")
        sagas = sorted((t.step or "" for t in self.transitions if t.kind == "saga"), key=len)
        for t in self.transitions:
            if t.is_static:
                continue
            assert t.step is not None
            failures = tuple(
                sorted((*t.retry_scopes, *t.catch_scopes, *t.cleanup_scopes), key=len, reverse=True)
            )
            if t.kind == "parallel":
                on_true = on_false = t.source
            elif t.kind == "map":
                # An item's start is concretized per item (see stepflow.core.groups).
                on_true, on_false = t.destinations[0].event, resolve(t.destinations[1].event)
            elif t.kind == "wait_event":
                # on_false: the on_timeout steps, or "" when a timeout fails the step.
                on_true = resolve(t.destinations[0].event)
                later = [d for d in t.destinations[1:2] if d.reason not in FAILURE_REASONS]
                on_false = resolve(later[0].event) if later else ""
            elif t.kind == "switch":  # its cases are chosen in stepflow.core.choice
                on_true = on_false = resolve(t.destinations[len(t.cases)].event)
            elif t.kind in CLEANUP_KINDS or t.kind == "compensate":
                on_true = on_false = resolve(t.destinations[0].event)
            else:
                on_true = resolve(t.destinations[0].event)
                two_way = t.kind not in ("do", "sleep", "sleep_until", "join", "call")
                on_false = resolve(t.destinations[1].event) if two_way else on_true
            path = t.source.partition(":")[2]
            group = groups.get(path)
            nodes[t.source] = _Node(
                t.source,
                (t.source,),
                t.kind,
                t.step,
                on_true,
                on_false,
                t.retry_scopes,
                t.delay,
                None if t.kind == "do" else t.timeout,  # (a do's is the shell's)
                t.kind == "do"
                or (t.kind in ("wait_for", "case", "loop_until", "switch") and not t.timeout),
                tuple(g for g in groups if path.startswith(g + "/")),
                event_maps.get(t.source, ()),
                tuple(b.partition(path + "/")[2] for b in _branches(t)) if group else (),
                t.max_concurrency,
                t.max_failures,
                # Scopes around a step are its ancestors: the innermost has the longest path.
                failures,
                t.awaits or t.calls or "",
                _shield(path, failures, finallies, sagas),
                tuple(g for g in sagas if path == g or path.startswith(g + "/")),
                t.compensate,
            )
        for event in table:
            if event not in nodes:
                nodes[event] = nodes[resolve(event)]
        return nodes

    def _node(self, event: str) -> _Node:
        """Return the node of a position: the table's, or for a map item, a copy with its indices.

        Raises:
            KeyError: ``event`` is not a position of this flow.

        """
        node = self._nodes.get(event)
        if node is not None:
            return node
        node = self._concrete.get(event)
        if node is not None:
            return node
        template = template_of(event)
        base = self._nodes[template]
        indices = item_indices(event)
        if len(indices) != len(self._event_maps.get(template, ())) or (
            concretize(template, self._event_maps[template], indices) != event
        ):
            raise KeyError(event)
        maps, own = base.maps, indices[: len(base.maps)]

        def c(text: str) -> str:
            return concretize(text, maps, own)

        node = base._replace(
            event=c(base.event),
            events=(c(base.event),),
            step=c(base.step),
            on_true=c(base.on_true),
            on_false=c(base.on_false),
            retry_scopes=tuple(map(c, base.retry_scopes)),
            failures=tuple(map(c, base.failures)),
            groups=tuple(map(c, base.groups)),
            sagas=tuple(map(c, base.sagas)),
        )
        if len(self._concrete) >= _CONCRETE_CACHE:
            self._concrete.clear()
        self._concrete[event] = node
        return node

    def __reduce__(self) -> tuple[Any, ...]:
        # The derived tables are rebuilt on load: only the data travels.
        data = (self.name, self.transitions, self.retries, self.catches, self.deadline)
        return (FlowDefinition, data)

    def __repr__(self) -> str:
        return (
            f"FlowDefinition(name={self.name!r}, transitions=<{len(self.transitions)}>, "
            f"fingerprint={self.fingerprint[:19]!r}...)"
        )

    @property
    def events(self) -> tuple[str, ...]:
        """Every event of the flow: each transition's source, then the completed event."""
        return (*self.table, self.completed_event)

    def handler_transitions(self) -> Iterator[Transition]:
        """Iterate over the transitions that are not static.

        Those of handlers and timers, where a position waits, and the forks and
        joins of groups (``"parallel"``, ``"join"``), taken when a group starts or
        a branch or item ends; a ``"map"`` waits for its ``items`` handler.
        """
        return (t for t in self.transitions if not t.is_static)

    def retry_scopes(self) -> tuple[str, ...]:
        """Scope paths of every retry group, in definition order."""
        return tuple(self._rules)

    def resting_event(self, event: str) -> str:
        """Return the event a run entering ``event`` rests at, after static hops.

        Resolved when the definition was built; the completed event rests at itself.

        >>> from stepflow import named, new
        >>> new(named("f").do("a", print)).definition.resting_event("start:f")
        'start:f/a'

        Raises:
            KeyError: ``event`` is not an event of this flow.

        """
        return self._node(event).event

    def enclosing_retries(self, event: str) -> tuple[str, ...]:
        """Scope paths of the retries around the position ``event``, innermost first.

        Raises:
            KeyError: ``event`` is not an event of this flow.

        """
        return self._node(event).retry_scopes

    def catch_scopes(self) -> tuple[str, ...]:
        """Scope paths of every catch group that has a step inside it."""
        return tuple(self._catches)

    def catch_rule(self, scope: str) -> CatchRule:
        """Return the :class:`CatchRule` of the catch scope ``scope``.

        Raises:
            KeyError: ``scope`` is not a catch scope of this flow.

        """
        return self._catches[scope]

    def enclosing_failure_scopes(self, event: str) -> tuple[str, ...]:
        """Retry and catch scopes around the position ``event``, innermost first.

        A failure of the step at ``event`` is handed to them in this order.

        Raises:
            KeyError: ``event`` is not an event of this flow.

        """
        return self._node(event).failures

    def retry_rule(self, scope: str) -> RetryRule:
        """Return the :class:`RetryRule` of the retry scope ``scope``.

        Raises:
            KeyError: ``scope`` is not a retry scope of this flow.

        """
        return self._rules[scope]
