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

Construction checks the table: one transition per source event, every destination
handled, and no cycle of static transitions (which could never issue a command).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, Literal, NamedTuple

import attrs

from stepflow.errors import DefinitionError

__all__ = [
    "Destination",
    "FlowDefinition",
    "Transition",
    "TransitionKind",
    "completed_event",
    "start_event",
]

TransitionKind = Literal["static", "do", "wait_for", "case", "loop_until"]

#: Bumped when the canonical form that fingerprints are computed over changes.
_FINGERPRINT_FORMAT = 1


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
            first; a failure is handed to their ``on_error`` handlers in this order.

    """

    source: str
    kind: TransitionKind
    step: str | None
    destinations: tuple[Destination, ...]
    retry_scopes: tuple[str, ...] = ()

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


def _canonical(name: str, transitions: tuple[Transition, ...]) -> str:
    body = [
        _FINGERPRINT_FORMAT,
        name,
        [
            [
                t.source,
                t.kind,
                t.step,
                [[d.event, d.reason] for d in t.destinations],
                list(t.retry_scopes),
            ]
            for t in transitions
        ],
    ]
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@attrs.frozen(repr=False)
class FlowDefinition:
    """The compiled state machine of a flow: hashable, picklable, pure data.

    Two definitions compiled from equal specs are equal and share a
    :attr:`fingerprint`, whatever the handlers bound to them.

    Attributes:
        name: The flow's name (its root scope).
        transitions: Every transition, in definition order.
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
    table: Mapping[str, Transition] = attrs.field(init=False, eq=False, hash=False)
    fingerprint: str = attrs.field(init=False, eq=False, hash=False)
    start_event: str = attrs.field(init=False, eq=False, hash=False)
    completed_event: str = attrs.field(init=False, eq=False, hash=False)
    # Every known event -> the resting node it resolves to through static hops.
    # A plain dict (built here, never changed afterwards): advance reads it on
    # every step, and a read-only proxy would double the cost of each lookup.
    _nodes: dict[str, _Node] = attrs.field(init=False, eq=False, hash=False)
    # (name, fingerprint, nodes): what advance needs, in one attribute read.
    _hot: tuple[str, str, dict[str, _Node]] = attrs.field(init=False, eq=False, hash=False)

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
            + hashlib.sha256(_canonical(self.name, self.transitions).encode()).hexdigest(),
        )
        object.__setattr__(self, "start_event", start)
        object.__setattr__(self, "completed_event", done)
        nodes = self._compile_nodes(table, done)
        object.__setattr__(self, "_nodes", nodes)
        object.__setattr__(self, "_hot", (self.name, self.fingerprint, nodes))

    def _compile_nodes(self, table: Mapping[str, Transition], done: str) -> dict[str, _Node]:
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

        nodes: dict[str, _Node] = {done: _Node(done, (done,), None, self.name, done, done, ())}
        for t in self.transitions:
            if t.is_static:
                continue
            on_true = resolve(t.destinations[0].event)
            on_false = resolve(t.destinations[1].event) if t.kind != "do" else on_true
            assert t.step is not None
            nodes[t.source] = _Node(
                t.source, (t.source,), t.kind, t.step, on_true, on_false, t.retry_scopes
            )
        for event in table:
            if event not in nodes:
                nodes[event] = nodes[resolve(event)]
        return nodes

    def __reduce__(self) -> tuple[Any, ...]:
        # The derived tables are rebuilt on load: only the data travels.
        return (FlowDefinition, (self.name, self.transitions))

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
        """Iterate over the transitions that wait for a handler."""
        return (t for t in self.transitions if not t.is_static)

    def retry_scopes(self) -> tuple[str, ...]:
        """Scope paths of every retry group, in definition order."""
        seen: dict[str, None] = {}
        for t in self.transitions:
            for scope in t.retry_scopes:
                seen.setdefault(scope, None)
        return tuple(seen)
