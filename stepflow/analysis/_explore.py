"""Explore every run of a flow: a breadth-first search driven by the real ``advance``.

Rule 1: the search never decides where a run goes. Each successor state comes
from :func:`stepflow.advance`, given an effect for one explored outcome of the
command in flight (see :mod:`stepflow.analysis._model` for outcomes and time).

Rule 2: the search is finite. States carry ever-growing command ids and times,
so two states are the same search state when they agree on an abstraction:
position, status, error type and step, the command in flight (kind, step, and
for ``on_error`` the error's type and step), output keys, retry attempts, the
``wake_at`` and ``timeout_at`` relative to the current time (all ``advance``
computes with is differences of times), a few bounded counters, and the state
of every invariant's monitor. The counters are how many times the current
``wait_for`` polled false, a ``loop_until`` looped, and (in ``attempts``) a
retry with no ``max_attempts`` restarted: an outcome that would push one past
``max_loops`` is not explored (it is *cut*). Retries bounded by their policy's
``max_attempts`` are explored to the end.

Theory of operation
-------------------
Breadth first, each new search state is checked against every invariant not
yet violated; the first violation found is therefore one with a shortest trace.
Every edge is kept (as predecessor lists), so once the search ends, states from
which no completed or failed state can be reached (*dead ends*) are found by
reverse reachability.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence

import attrs

from stepflow.analysis._invariants import Before, Invariant, LeadsTo, check_matcher
from stepflow.analysis._model import (
    AnalysisError,
    Move,
    Observation,
    Outcome,
    Trace,
    effect_time,
    entered_events,
    initial,
    make_effect,
    outcomes_for,
)
from stepflow.core.advance import advance
from stepflow.core.definition import FlowDefinition, start_event
from stepflow.core.messages import Command
from stepflow.core.state import State

__all__ = ["Exploration", "Violation", "explore"]

Counters = tuple[tuple[str, int], ...]
#: Called for every explored edge: source node, the move, what it did, target node.
EdgeHook = Callable[[int, Move, Observation, int], None]


@attrs.frozen
class Violation:
    """An invariant broken by a reachable run, with a shortest trace that breaks it.

    Attributes:
        invariant: The invariant's name.
        message: What went wrong.
        trace: The run, from its start to the first state that breaks it.

    """

    invariant: str
    message: str
    trace: Trace

    @property
    def path(self) -> tuple[tuple[Command, Outcome], ...]:
        """``(command, outcome)`` per move of :attr:`trace`."""
        return self.trace.path

    @property
    def states(self) -> tuple[State, ...]:
        """The states of :attr:`trace`, from the start."""
        return self.trace.states

    def __str__(self) -> str:
        return f"{self.invariant}: {self.message}\n{self.trace.describe()}"


@attrs.frozen
class Exploration:
    """The result of :func:`explore`.

    Attributes:
        states: Distinct search states reached.
        transitions: Edges explored (outcomes applied), cut ones excluded.
        complete: Whether the search ended without reaching ``max_states``.
            Loops, polls and unbounded retries are still cut at ``max_loops``.
        completed: Distinct completed states reached.
        failed: Distinct failed states reached.
        cut: Outcomes not explored because they passed ``max_loops``.
        violations: The first (shortest) violation of each invariant broken.
        dead_ends: A shortest trace to each state from which the run can
            neither complete nor fail (always empty for flows compiled from a
            spec; states left unexplored by an incomplete search do not count).

    """

    states: int
    transitions: int
    complete: bool
    completed: int
    failed: int
    cut: int
    violations: tuple[Violation, ...] = ()
    dead_ends: tuple[Trace, ...] = ()

    @property
    def ok(self) -> bool:
        """Complete, with no violation and no dead end."""
        return self.complete and not self.violations and not self.dead_ends

    def violation(self, invariant: str) -> Violation | None:
        """Return the violation of the invariant named ``invariant``, if any."""
        return next((v for v in self.violations if v.invariant == invariant), None)


def _unbounded(definition: FlowDefinition) -> frozenset[str]:
    """Retry scopes whose restarts only ``max_loops`` bounds."""
    return frozenset(
        scope
        for scope in definition.retry_scopes()
        if (policy := definition.retry_rule(scope).policy) is None or policy.max_attempts is None
    )


def _inside(event: str, scope: str) -> bool:
    path = event.partition(":")[2]
    return path == scope or path.startswith(scope + "/")


def _relative(when: float | None, clock: float) -> float | None:
    return None if when is None else round(when - clock, 9)


def _key(
    state: State, clock: float, counters: Counters, monitors: tuple[Hashable, ...]
) -> Hashable:
    command = state.in_flight[0] if state.in_flight else None
    command_key: Hashable = None
    if command is not None:
        error = getattr(command, "error", None) if command.kind == "on_error" else None
        error_key = None if error is None else (error.type, error.step)
        command_key = (command.kind, command.step, command.event, error_key)
    error_key = None if state.error is None else (state.error.type, state.error.step)
    return (
        state.events,
        state.status,
        error_key,
        command_key,
        frozenset(state.outputs) if state.outputs else None,
        tuple(sorted(state.attempts.items())) if state.attempts else None,
        _relative(state.wake_at, clock),
        _relative(state.timeout_at, clock),
        counters,
        monitors,
    )


class Search:
    """The explored graph of one flow: nodes are search states, kept for traces.

    Private to the analysis; :func:`explore`, :func:`paths` and :func:`check`
    build on it.
    """

    def __init__(
        self,
        definition: FlowDefinition,
        invariants: Sequence[Invariant] = (),
        *,
        max_states: int = 100_000,
        max_loops: int = 3,
    ) -> None:
        if max_loops < 0 or max_states < 1:
            raise AnalysisError(
                f"max_loops must be >= 0 and max_states >= 1, got {max_loops} and {max_states}"
            )
        self.definition = definition
        self.invariants = tuple(invariants)
        self.max_states, self.max_loops = max_states, max_loops
        self.unbounded = _unbounded(definition)
        self.states: list[State] = []
        self.clocks: list[float] = []
        self.counters: list[Counters] = []
        self.monitors: list[tuple[Hashable, ...]] = []
        self.parent: list[int] = []
        self.via: list[Move | None] = []
        self.preds: list[list[int]] = []
        self.expanded: list[bool] = []
        self.has_cut: list[bool] = []
        self.index: dict[Hashable, int] = {}
        self.transitions = self.cut = 0
        self.complete = True
        self.violations: dict[int, Violation] = {}
        self.start: State

    def trace(self, node: int) -> Trace:
        """Return the shortest known run to ``node``."""
        moves: list[Move] = []
        while (move := self.via[node]) is not None:
            moves.append(move)
            node = self.parent[node]
        return Trace(self.start, tuple(reversed(moves)))

    def _add(
        self,
        state: State,
        clock: float,
        counters: Counters,
        monitors: tuple[Hashable, ...],
        parent: int,
        move: Move | None,
    ) -> tuple[int, bool]:
        key = _key(state, clock, counters, monitors)
        node = self.index.get(key)
        if node is not None:
            return node, False
        node = len(self.states)
        self.index[key] = node
        self.states.append(state)
        self.clocks.append(clock)
        self.counters.append(counters)
        self.monitors.append(monitors)
        self.parent.append(parent)
        self.via.append(move)
        self.preds.append([])
        self.expanded.append(False)
        self.has_cut.append(False)
        for i, invariant in enumerate(self.invariants):
            if i not in self.violations:
                message = invariant.violation(monitors[i], state)
                if message is not None:
                    self.violations[i] = Violation(invariant.name, message, self.trace(node))
        return node, True

    def _counters(self, node: int, move: Move, entered: tuple[str, ...]) -> Counters | None:
        """Return the counters after ``move`` from ``node``, or ``None`` if it passes a bound."""
        after = move.state
        if after.status != "running":
            return ()
        counts = dict(self.counters[node])
        command = move.command
        for step in list(counts):
            if start_event(step) in entered:
                del counts[step]  # the loop or wait started over
        looped = command.kind == "loop_until" and move.outcome == "false"
        polled = command.kind == "wait_for" and move.outcome == "false"
        if looped or polled:
            counts[command.step] = counts.get(command.step, 0) + 1
            if counts[command.step] > self.max_loops:
                return None
        for scope in self.unbounded:
            if after.attempts.get(scope, 0) > self.max_loops:
                return None
        position = after.events[0]
        return tuple(sorted((s, n) for s, n in counts.items() if _inside(position, s)))

    def run(
        self,
        on_edge: EdgeHook | None = None,
        on_start: Callable[[Observation], None] | None = None,
    ) -> Search:
        """Explore breadth first; call ``on_start`` for the start, ``on_edge`` per edge."""
        definition = self.definition
        state, observation = initial(definition)
        self.start = state
        monitors = tuple(inv.observe(inv.start(), observation) for inv in self.invariants)
        self._add(state, 0.0, (), monitors, -1, None)
        if on_start is not None:
            on_start(observation)
        queue = deque([0])
        while queue:
            node = queue.popleft()
            self.expanded[node] = True
            before, clock = self.states[node], self.clocks[node]
            if not before.in_flight:
                continue
            command = before.in_flight[0]
            for outcome in outcomes_for(definition, before, clock):
                effect = make_effect(before, outcome, clock)
                after, _ = advance(definition, before, (effect,))
                entered, _ = entered_events(definition, before, command, outcome, after)
                move = Move(command, outcome, effect, after)
                counters = self._counters(node, move, entered)
                if counters is None:
                    self.cut += 1
                    self.has_cut[node] = True
                    continue
                step = Observation(before, command, outcome, effect, after, entered)
                monitors = tuple(
                    inv.observe(m, step)
                    for inv, m in zip(self.invariants, self.monitors[node], strict=True)
                )
                if len(self.states) >= self.max_states and (
                    _key(after, effect_time(effect), counters, monitors) not in self.index
                ):
                    self.complete = False
                    # Partly expanded: its other successors are unknown, so it
                    # must not be taken for a dead end.
                    self.expanded[node] = False
                    return self
                target, new = self._add(after, effect_time(effect), counters, monitors, node, move)
                self.transitions += 1
                self.preds[target].append(node)
                if new:
                    queue.append(target)
                if on_edge is not None:
                    on_edge(node, move, step, target)
        return self

    def nodes_where(self, predicate: Callable[[State], bool]) -> Iterable[int]:
        """Return the nodes whose state satisfies ``predicate``."""
        return (i for i, s in enumerate(self.states) if predicate(s))

    def dead_ends(self) -> list[int]:
        """Return the nodes from which no end, unexplored node or cut outcome is reachable."""
        alive = [
            s.status != "running" or not self.expanded[i] or self.has_cut[i]
            for i, s in enumerate(self.states)
        ]
        stack = [i for i, ok in enumerate(alive) if ok]
        while stack:
            for p in self.preds[stack.pop()]:
                if not alive[p]:
                    alive[p] = True
                    stack.append(p)
        return [i for i, ok in enumerate(alive) if not ok]


def check_invariants(definition: FlowDefinition, invariants: Iterable[Invariant]) -> None:
    """Check that the built-in invariants name steps and events of ``definition``."""
    for invariant in invariants:
        if isinstance(invariant, Before):
            check_matcher(definition, invariant.first)
            check_matcher(definition, invariant.then)
        elif isinstance(invariant, LeadsTo):
            check_matcher(definition, invariant.trigger)
            check_matcher(definition, invariant.response)


def explore(
    definition: FlowDefinition,
    *,
    invariants: Iterable[Invariant] = (),
    max_states: int = 100_000,
    max_loops: int = 3,
) -> Exploration:
    """Explore every run of ``definition`` under every outcome of every command.

    Pure: handlers are never called; each command is answered with each of
    its outcomes in turn (``do``: returned, raised; ``case``, ``loop_until``,
    ``on_error``: true, false, raised; ``wait_for``: true, false, raised, and
    timed_out when it has a timeout; ``sleep``: fired) and the real
    :func:`stepflow.advance` computes where that leads. Loops, false polls and
    restarts of retries without ``max_attempts`` are cut after ``max_loops``
    (see :class:`Exploration`).

    Args:
        definition: The compiled flow.
        invariants: Properties to check (:func:`always`, :func:`never`,
            :func:`before`, :func:`leads_to`, or any :class:`Invariant`).
        max_states: Stop (``complete=False``) after this many search states.
        max_loops: Bound of each loop, poll and unbounded-retry counter.

    Returns:
        The counts, the first violation of each invariant (with a shortest
        trace) and the dead ends.

    Raises:
        AnalysisError: an invariant names a step or event the flow lacks.

    >>> import stepflow
    >>> flow = stepflow.named("f").do("a", print).wait_for("b", bool, timeout=5)
    >>> result = explore(stepflow.new(flow).definition)
    >>> result.complete, result.completed, result.failed, result.dead_ends
    (True, 1, 3, ())

    """
    invariants = tuple(invariants)
    check_invariants(definition, invariants)
    search = Search(definition, invariants, max_states=max_states, max_loops=max_loops).run()
    completed = sum(1 for _ in search.nodes_where(lambda s: s.status == "completed"))
    failed = sum(1 for _ in search.nodes_where(lambda s: s.status == "failed"))
    return Exploration(
        states=len(search.states),
        transitions=search.transitions,
        complete=search.complete,
        completed=completed,
        failed=failed,
        cut=search.cut,
        violations=tuple(search.violations[i] for i in sorted(search.violations)),
        dead_ends=tuple(search.trace(node) for node in search.dead_ends()),
    )
