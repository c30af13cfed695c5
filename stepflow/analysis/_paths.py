"""Shortest outcome scripts that reach each step and each transition: model-based tests.

Like xstate's graph package: :func:`paths` searches the flow (see
:mod:`stepflow.analysis._explore`) and keeps, for every target, the first (so
shortest) run that reaches it. A test plays a :class:`PathCase`'s script
against the real handlers or a fake world, or replays it with
:func:`stepflow.analysis.replay`.
"""

from __future__ import annotations

import attrs

from stepflow.analysis._explore import Search
from stepflow.analysis._model import (
    MAX_ITEMS,
    Move,
    Observation,
    Outcome,
    Trace,
    entered_events,
    started,
)
from stepflow.core.definition import FlowDefinition, template_of

__all__ = ["PathCase", "TransitionTarget", "paths"]


@attrs.frozen
class TransitionTarget:
    """One destination of a handler transition, as listed in the transition table.

    Attributes:
        source: The event the transition leaves from.
        destination: The destination event.
        reason: The destination's reason (``"Case condition is met"``, ``"retry"``...).

    """

    source: str
    destination: str
    reason: str

    def __str__(self) -> str:
        return f"{self.source} -> {self.destination} ({self.reason})"


@attrs.frozen
class PathCase:
    """A target and the shortest run that reaches it (``None``: unreachable).

    Attributes:
        target: A step path (reached when the step starts), or a
            :class:`TransitionTarget` (reached when its destination is taken).
        trace: A shortest run whose last move reaches the target, or ``None``
            if no explored run does.

    """

    target: str | TransitionTarget
    trace: Trace | None

    @property
    def reachable(self) -> bool:
        """Whether some explored run reaches the target."""
        return self.trace is not None

    @property
    def outcomes(self) -> tuple[tuple[str, str, Outcome], ...]:
        """``(command kind, step, outcome)`` per move, in order (empty if unreachable)."""
        return () if self.trace is None else self.trace.outcomes

    @property
    def script(self) -> dict[tuple[str, str], list[Outcome]]:
        """Outcomes per handler ``(kind, step)``, in the order each is asked."""
        return {} if self.trace is None else self.trace.script


def step_targets(definition: FlowDefinition) -> list[str]:
    """Every scope below the root that holds a step with a handler or timer."""
    handled = [t.step for t in definition.handler_transitions() if t.step is not None]
    targets = []
    for event in definition.table:
        if event.startswith("start:"):
            path = event.partition(":")[2]
            if path != definition.name and any(
                s == path or s.startswith(path + "/") for s in handled
            ):
                targets.append(path)
    return targets


def transition_targets(definition: FlowDefinition) -> list[TransitionTarget]:
    """Every destination of every handler transition, in table order."""
    return [
        TransitionTarget(t.source, d.event, d.reason)
        for t in definition.handler_transitions()
        for d in t.destinations
    ]


def taken(definition: FlowDefinition, step: Observation) -> list[TransitionTarget]:
    """Return the handler transition destinations ``step`` took, in order.

    One for a run of one position; in a flow with groups a move may take
    several (a branch ends at its join, the group completes, the next forks).
    """
    command, before, outcome = step.command, step.before, step.outcome
    if command is None or before is None or outcome is None:
        return []
    _, entries = entered_events(definition, before, command, outcome, step.after)
    targets = []
    for source, destination in entries:
        transition = definition.table[source]
        reasons = [d.reason for d in transition.destinations if d.event == destination]
        if not reasons:
            raise AssertionError(f"{destination!r} is not a destination of {transition!r}")
        targets.append(TransitionTarget(source, destination, reasons[0]))
    return targets


def coverage(
    definition: FlowDefinition,
    *,
    max_loops: int = 1,
    max_states: int = 100_000,
    max_items: int = MAX_ITEMS,
) -> tuple[list[PathCase], Search]:
    """Search ``definition`` (every edge: no reduction); return a case per target and the graph."""
    steps = step_targets(definition)
    wanted = {*steps}
    found: dict[str | TransitionTarget, Trace] = {}
    search = Search(definition, max_states=max_states, max_loops=max_loops, max_items=max_items)

    def on_start(step: Observation) -> None:
        for event in step.entered:
            path = template_of(event.partition(":")[2])
            if event.startswith("start:") and path in wanted and path not in found:
                found[path] = Trace(step.after)
        for source, destination in started(definition, step.after)[1]:
            reasons = [
                d.reason for d in definition.table[source].destinations if d.event == destination
            ]
            found.setdefault(TransitionTarget(source, destination, reasons[0]), Trace(step.after))

    def on_edge(source: int, move: Move, step: Observation, target: int) -> None:
        reached: list[str | TransitionTarget] = [
            template_of(event.partition(":")[2])
            for event in step.entered
            if event.startswith("start:")
        ]
        reached.extend(taken(definition, step))
        for goal in reached:
            if goal not in found and (isinstance(goal, TransitionTarget) or goal in wanted):
                before = search.trace(source)
                found[goal] = Trace(before.start, (*before.moves, move))

    search.run(on_edge, on_start)
    goals: list[str | TransitionTarget] = [*steps, *transition_targets(definition)]
    return [PathCase(goal, found.get(goal)) for goal in goals], search


def paths(
    definition: FlowDefinition, *, max_loops: int = 1, max_items: int = MAX_ITEMS
) -> list[PathCase]:
    """Return a shortest outcome script to each step and each handler transition destination.

    One :class:`PathCase` per target, steps first (every scope below the root
    that holds a step with a handler or timer, reached when it starts), then
    every destination of every handler transition (reached when taken), in
    table order. Unreachable targets come with ``trace=None``: for a flow
    compiled from a spec these are destinations no outcome can take, such as a
    ``"retry"`` of a policy with ``max_attempts=1``. Loops, false polls and
    unbounded retries are cut at ``max_loops``.

    Groups: steps inside ``parallel`` branches and ``map`` items are targets
    as any other (a map's steps are reached when its first item starts them);
    so are a fork's ``parallel branch`` destinations, a map's ``map item`` and
    ``no items``, and each branch's join (taken when the branch is the last to
    end). A map's ``items`` handler returns 0 to ``max_items`` items
    (``"items:<n>"`` in a script). The outcomes of a trace name each command
    with its item indices, so :func:`stepflow.analysis.replay` plays it
    exactly; its :attr:`~PathCase.script` keys steps without them, in the
    order the trace answers them.

    >>> import stepflow
    >>> flow = stepflow.named("f").case("c", bool, stepflow.steps().do("a", print))
    >>> [case.outcomes for case in paths(stepflow.new(flow).definition)][:2]
    [(), (('case', 'f/cCase', 'true'),)]
    """
    cases, _ = coverage(definition, max_loops=max_loops, max_items=max_items)
    return cases
