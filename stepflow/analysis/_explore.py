"""Explore every run of a flow: a breadth-first search driven by the real ``advance``.

Rule 1: the search never decides where a run goes. Each successor state comes
from :func:`stepflow.advance`, given an effect for one explored outcome of a
command in flight (see :mod:`stepflow.analysis._model` for outcomes and time),
or a cancellation or an event sent early (see :func:`explore`).

Rule 2: the search is finite. States carry ever-growing command ids and times,
so two states are the same search state when they agree on an abstraction:
position, status, error type and step (in a run with groups, a cancellation's
type only), the command in flight (kind, step, and for ``on_error`` the error's
type and step), output keys, retry attempts, the ``wake_at`` and ``timeout_at``
relative to the current time (all ``advance`` computes with is differences of
times), the names of the events in the mailbox, a few bounded counters, and the
state of every invariant's monitor. The counters are how many times the current
``wait_for`` polled false, a ``loop_until`` looped, and (in ``attempts``) a
retry with no ``max_attempts`` restarted: an outcome that would push one past
``max_loops`` is not explored (it is *cut*). Retries bounded by their policy's
``max_attempts`` are explored to the end. Cancellations (``cancel=True``) are
bounded by the status (only a ``running`` run is cancelled, and none becomes
running again), events sent early by a counter per name (``max_events``).

Theory of operation
-------------------
Breadth first, each new search state is checked against every invariant not
yet violated; the first violation found is therefore one with a shortest trace.
Every edge is kept (as predecessor lists), so once the search ends, states from
which no completed, failed or cancelled state can be reached (*dead ends*) are found by
reverse reachability.

Several commands in flight
--------------------------
A run with ``parallel`` or ``map`` groups holds several commands in flight
(:mod:`stepflow.core.groups`). What is explored:

* **Interleavings**: from each search state, every command in flight is
  answered next, with each of its outcomes; one move answers one command. A
  map's ``items`` command returns 0 to ``max_items`` items.
* **Not explored: batches.** A batch answering several commands at once means
  the same as its effects one by one in command-id order (Rule 5 of
  :mod:`stepflow.core.groups`), which is one of the explored interleavings;
  the one difference, that a failure does not drop a waiting command the same
  batch answers, is not explored.
* **Not explored: answer times** other than "at once, or when due". A command
  not yet due may still be answered before one that is (handlers take any
  time), which moves the clock to its ``wake_at``.

Search states of such runs abstract their positions as a *set* (each with its
command's kind and step, and its own ``wake_at`` and ``timeout_at`` relative to
now) and ignore command ids: answering two commands in either order reaches one
search state, explored once. Each group's progress joins the abstraction
(items, how many started, running and failed, which results are in).

Reduction
---------
The interleavings of commands in *independent* branches are pruned, by a
partial-order reduction in the style of sleep sets, that keeps every search
state and its shortest trace. Two moves ``x`` and ``y`` from a state ``p`` are
**independent** when both:

* answer commands in different branches, or different items, of a group
  (neither branch or item lies inside the other);
* are due now (answered at the current time, so the clock does not move);
* are not failures (``raised``, ``timed_out``), do not leave their branch or
  item (their destination, through static hops, stays inside it), are not a
  map's ``items`` nor an ``on_error`` command, and no group around them has
  failed (a failed group stops or drops its positions as they move);
* are answers to commands: a cancellation or an event sent early is never
  pruned, and no move is pruned after one;
* are invisible to every invariant with a monitor: no matcher of a
  :func:`before` or :func:`leads_to` matches what either move does, and there
  is no invariant other than those and :func:`always`/:func:`never`.

Such moves touch disjoint parts of the state (their own positions, outputs,
attempts, loop counters and group results), so ``x`` then ``y`` and ``y`` then
``x`` reach the same search state. Moves are ordered by ``(position, outcome)``.
When a state ``n`` is expanded, a move ``y`` is **not taken** if, for every edge
``p --x--> n`` on a shortest path to ``n`` (``p`` one step closer to the start),
``y`` was available at ``p``, is independent of ``x`` there, and orders before
``x``. Breadth first, every such edge is known when ``n`` is expanded.

Why nothing is lost: take any search state ``t`` at distance ``D`` from the
start, and among its traces of length ``D`` the lexicographically smallest,
``w``. Each prefix of ``w`` ends in a state at exactly its length from the
start (a shorter way to it would shorten ``w``). If the search pruned move
``w[i]`` at ``s_i``, then ``w[i]`` is independent of ``w[i-1]`` at ``s_(i-1)``
and orders before it; swapping the two gives a trace of ``t`` of the same
length, smaller than ``w``: a contradiction. So ``w`` is explored, by
induction along it, and ``t`` is reached at distance ``D``. Every state is
explored, each at its shortest distance, so each invariant's first violation
still has a shortest trace, and the counts of completed and failed states do
not change; ``transitions`` counts the edges explored, ``pruned`` those left
out. :func:`stepflow.analysis.paths` and :func:`stepflow.analysis.check` search
without the reduction: they need every edge, to find each transition taken.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence

import attrs

from stepflow.analysis._invariants import (
    Before,
    Invariant,
    LeadsTo,
    StateInvariant,
    check_matcher,
    matches,
)
from stepflow.analysis._model import (
    CANCEL,
    MAX_ITEMS,
    SENT,
    AnalysisError,
    Happening,
    Move,
    Observation,
    Outcome,
    Trace,
    _conc,
    _failing,
    answer_time,
    cancel_effect,
    early_event,
    effect_time,
    entered_events,
    initial,
    make_effect,
    outcomes_for,
    static_chain,
)
from stepflow.core.advance import advance
from stepflow.core.cleanup import is_cancellation
from stepflow.core.definition import CLEANUP_KINDS, FlowDefinition, start_event, template_of
from stepflow.core.groups import command_times
from stepflow.core.messages import AwaitEvent, Command, Effect
from stepflow.core.state import CANCELLING, RUNNING, ErrorRecord, State

__all__ = ["Exploration", "Violation", "explore"]

Counters = tuple[tuple[str, int], ...]
#: Called for every explored edge: source node, the move, what it did, target node.
EdgeHook = Callable[[int, Move, Observation, int], None]
# The counter of an event sent early, in Counters ("sent:" never starts a scope path).
_SENT = "sent:"


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
    def path(self) -> tuple[tuple[Command | None, Outcome], ...]:
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
        cancelled: Distinct cancelled states reached (``cancel=True``).
        cut: Outcomes not explored because they passed ``max_loops``.
        pruned: Moves not taken by the reduction (see the module docstring):
            another interleaving of the same moves, no longer, reaches where
            they lead.
        violations: The first (shortest) violation of each invariant broken.
        dead_ends: A shortest trace to each state from which the run can
            neither complete, fail nor be cancelled (always empty for flows
            compiled from a spec; states left unexplored by an incomplete
            search do not count).

    """

    states: int
    transitions: int
    complete: bool
    completed: int
    failed: int
    cut: int
    violations: tuple[Violation, ...] = ()
    dead_ends: tuple[Trace, ...] = ()
    pruned: int = 0
    cancelled: int = 0

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


# Commands whose moves may commute with another branch's (see "Reduction").
_LOCAL_KINDS = frozenset({"do", "wait_for", "case", "loop_until", "sleep", "switch", "sleep_until"})


def _nested(a: str, b: str) -> bool:
    """Whether branch or item ``a`` is ``b`` or lies inside it, or the other way round."""
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def _inside(event: str, scope: str) -> bool:
    path = event.partition(":")[2]
    return path == scope or path.startswith(scope + "/")


def _relative(when: float | None, clock: float) -> float | None:
    return None if when is None else round(when - clock, 9)


def _command_key(command: Command) -> Hashable:
    error = getattr(command, "error", None) if command.kind == "on_error" else None
    error_key = None if error is None else (error.type, error.step)
    return (command.kind, command.step, error_key)


def _error_key(error: ErrorRecord | None) -> Hashable:
    """Return an error's type and step; a cancellation's type only.

    A cancellation's record names the step of the position it found first,
    which in a run with groups depends on the order the positions moved in,
    not on what the run does next: the search tells such states apart by type.
    """
    if error is None:
        return None
    return (error.type, None if is_cancellation(error) else error.step)


def _group_key(state: State) -> Hashable:
    return tuple(
        sorted(
            (
                scope,
                p.kind,
                len(p.items),
                p.started,
                p.active,
                p.failures,
                _error_key(p.error),
                frozenset(p.results),
            )
            for scope, p in state.groups.items()
        )
    )


def _positions_key(state: State, clock: float) -> Hashable:
    """Return the positions of a run with groups as a set, whatever their order and ids."""
    if not state.in_flight:
        return frozenset(state.events)
    keys = []
    for event, command in zip(state.events, state.in_flight, strict=True):
        wake, timeout = command_times(state, command)
        keys.append(
            (event, _command_key(command), _relative(wake, clock), _relative(timeout, clock))
        )
    return frozenset(keys)


def _concurrent_key(
    state: State, clock: float, counters: Counters, monitors: tuple[Hashable, ...]
) -> Hashable:
    error_key = _error_key(state.error)
    return (
        _positions_key(state, clock),
        state.status,
        error_key,
        frozenset(state.outputs) if state.outputs else None,
        tuple(sorted(state.attempts.items())) if state.attempts else None,
        _group_key(state) if state.groups else None,
        tuple(name for name, _ in state.mailbox),
        counters,
        monitors,
    )


def _key(
    state: State, clock: float, counters: Counters, monitors: tuple[Hashable, ...]
) -> Hashable:
    command = state.in_flight[0] if state.in_flight else None
    command_key: Hashable = None
    if command is not None:
        error = getattr(command, "error", None) if command.kind == "on_error" else None
        asked = None if error is None else (error.type, error.step)
        command_key = (command.kind, command.step, command.event, asked)
    return (
        state.events,
        state.status,
        None if state.error is None else (state.error.type, state.error.step),
        command_key,
        frozenset(state.outputs) if state.outputs else None,
        tuple(sorted(state.attempts.items())) if state.attempts else None,
        _relative(state.wake_at, clock),
        _relative(state.timeout_at, clock),
        tuple(name for name, _ in state.mailbox),
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
        max_items: int = MAX_ITEMS,
        reduce: bool = False,
        cancel: bool = False,
        events: Iterable[str] | bool = (),
        max_events: int = 1,
    ) -> None:
        if max_loops < 0 or max_states < 1 or max_items < 0 or max_events < 0:
            raise AnalysisError(
                f"max_loops, max_items and max_events must be >= 0 and max_states >= 1, got "
                f"{max_loops}, {max_items}, {max_events} and {max_states}"
            )
        self.definition = definition
        self.cancel = cancel
        self.events = _event_names(definition, events)
        self.max_events = max_events
        self.invariants = tuple(invariants)
        self.max_states, self.max_loops, self.max_items = max_states, max_loops, max_items
        concurrent = definition._concurrent
        self.key = _concurrent_key if concurrent else _key
        # The reduction needs monitors it can see through (see the module docstring).
        self.reduce = (
            reduce
            and concurrent
            and all(isinstance(i, (StateInvariant, Before, LeadsTo)) for i in self.invariants)
        )
        self.matchers = [
            m
            for i in self.invariants
            if isinstance(i, (Before, LeadsTo))
            for m in ((i.first, i.then) if isinstance(i, Before) else (i.trigger, i.response))
        ]
        self.depth: list[int] = []
        # Per node: the (predecessor, move) of every edge on a shortest path to it.
        self.shortest_in: list[list[tuple[int, Move]]] = []
        self.locals: dict[tuple[int, str, Outcome], str | None] = {}
        self.pruned = 0
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
        key = self.key(state, clock, counters, monitors)
        node = self.index.get(key)
        if node is not None:
            if move is not None and self.depth[parent] + 1 == self.depth[node]:
                self.shortest_in[node].append((parent, move))
            return node, False
        node = len(self.states)
        self.depth.append(0 if move is None else self.depth[parent] + 1)
        self.shortest_in.append([] if move is None else [(parent, move)])
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
        if after.status != RUNNING and after.status != CANCELLING:
            return ()
        counts = dict(self.counters[node])
        sent = {k: n for k, n in counts.items() if k.startswith(_SENT)}
        command = move.command
        if command is None:
            if move.outcome == SENT:
                key = _SENT + move.key[1]
                sent[key] = sent.get(key, 0) + 1
            kind = None
        else:
            kind = command.kind
        for step in list(counts):
            if start_event(step) in entered:
                del counts[step]  # the loop or wait started over
        looped = kind == "loop_until" and move.outcome == "false"
        polled = kind == "wait_for" and move.outcome == "false"
        if command is not None and (looped or polled):
            counts[command.step] = counts.get(command.step, 0) + 1
            if counts[command.step] > self.max_loops:
                return None
        if self.unbounded:
            for scope, attempt in after.attempts.items():
                if attempt > self.max_loops and template_of(scope) in self.unbounded:
                    return None
        positions = after.events
        kept = [(s, n) for s, n in counts.items() if any(_inside(e, s) for e in positions)]
        return tuple(sorted([*kept, *sent.items()]))

    # -- the reduction ------------------------------------------------------------

    def local(self, node: int, command: Command, outcome: Outcome) -> str | None:
        """Return the branch or item a move stays in if it may commute, else ``None``.

        See "Reduction" in the module docstring for the conditions.
        """
        key = (node, command.event, outcome)
        if key not in self.locals:
            self.locals[key] = self._local(node, command, outcome)
        return self.locals[key]

    def _local(self, node: int, command: Command, outcome: Outcome) -> str | None:
        definition, state = self.definition, self.states[node]
        if command.kind not in _LOCAL_KINDS or _failing(outcome) or state.status != RUNNING:
            return None
        if answer_time(state, self.clocks[node], command) != self.clocks[node]:
            return None  # answering it moves the clock
        groups = definition._node(command.event).groups
        if not groups:
            return None
        if any(g not in state.groups or state.groups[g].error is not None for g in groups):
            return None  # a failed group stops or drops its positions: it sees every move
        group = groups[-1]
        path = command.event.partition(":")[2]
        branch = f"{group}/{path[len(group) + 1 :].split('/')[0]}"
        transition = definition.table[template_of(command.event)]
        if (command.kind, outcome) in (("wait_for", "false"), ("sleep_until", "past")):
            entered: tuple[str, ...] = ()
        else:
            target = transition.destinations[0 if outcome in ("returned", "fired", "true") else 1]
            chain = static_chain(definition.table, target.event)
            if not chain[-1].partition(":")[2].startswith(template_of(branch) + "/"):
                return None  # it leaves its branch or item: the group notices
            end = definition.table.get(chain[-1])
            if end is not None and (end.kind in CLEANUP_KINDS or end.kind == "compensate"):
                return None  # the state decides where it goes: kept simple, never pruned
            entered = tuple(_conc(definition, e, command.event) for e in chain)
        if self.matchers:
            happenings = (
                Happening("ran", command.step, outcome, command.kind),
                *(Happening("entered", e) for e in entered),
            )
            if any(matches(m, h) for m in self.matchers for h in happenings):
                return None
        return branch

    def skipped(self, node: int, command: Command, outcome: Outcome) -> bool:
        """Whether the reduction leaves out answering ``command`` with ``outcome`` at ``node``."""
        incoming = self.shortest_in[node]
        if not incoming:
            return False
        label = (command.event, outcome)
        for parent, move in incoming:
            if move.command is None:  # a cancellation or an event: never reordered
                return False
            if label >= (move.command.event, move.outcome):
                return False
            # The same command at the parent: found by position, since command ids
            # depend on the path that reached each search state first.
            earlier = next(
                (c for c in self.states[parent].in_flight if c.event == command.event), None
            )
            if earlier is None or (earlier.kind, earlier.step) != (command.kind, command.step):
                return False
            mine = self.local(parent, earlier, outcome)
            theirs = self.local(parent, move.command, move.outcome)
            if mine is None or theirs is None or _nested(mine, theirs):
                return False
        return True

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
            if self._expand(node, before, clock, queue, on_edge):
                return self
        return self

    def _moves(
        self, node: int, state: State, clock: float
    ) -> Iterable[tuple[Command | None, Outcome, Effect]]:
        definition, max_items = self.definition, self.max_items
        for command in state.in_flight:
            for outcome in outcomes_for(definition, state, clock, command, max_items=max_items):
                if self.reduce and self.skipped(node, command, outcome):
                    self.pruned += 1
                    continue
                yield command, outcome, make_effect(state, outcome, clock, command)
        if state.status != RUNNING:
            return
        if self.cancel:
            yield None, CANCEL, cancel_effect(clock)
        if self.events:
            sent = dict(self.counters[node])
            waiting = {c.name for c in state.in_flight if isinstance(c, AwaitEvent)}
            for name in self.events:
                if name not in waiting and sent.get(_SENT + name, 0) < self.max_events:
                    yield None, SENT, early_event(name, clock)

    def _expand(
        self,
        node: int,
        before: State,
        clock: float,
        queue: deque[int],
        on_edge: EdgeHook | None,
    ) -> bool:
        """Explore every move from ``node``; return ``True`` if ``max_states`` was reached."""
        definition = self.definition
        for command, outcome, effect in self._moves(node, before, clock):
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
                self.key(after, effect_time(effect), counters, monitors) not in self.index
            ):
                self.complete = False
                # Partly expanded: its other successors are unknown, so it
                # must not be taken for a dead end.
                self.expanded[node] = False
                return True
            target, new = self._add(after, effect_time(effect), counters, monitors, node, move)
            self.transitions += 1
            self.preds[target].append(node)
            if new:
                queue.append(target)
            if on_edge is not None:
                on_edge(node, move, step, target)
        return False

    def nodes_where(self, predicate: Callable[[State], bool]) -> Iterable[int]:
        """Return the nodes whose state satisfies ``predicate``."""
        return (i for i, s in enumerate(self.states) if predicate(s))

    def dead_ends(self) -> list[int]:
        """Return the nodes from which no end, unexplored node or cut outcome is reachable."""
        alive = [
            s.is_finished or not self.expanded[i] or self.has_cut[i]
            for i, s in enumerate(self.states)
        ]
        stack = [i for i, ok in enumerate(alive) if ok]
        while stack:
            for p in self.preds[stack.pop()]:
                if not alive[p]:
                    alive[p] = True
                    stack.append(p)
        return [i for i, ok in enumerate(alive) if not ok]


def _event_names(definition: FlowDefinition, events: Iterable[str] | bool) -> tuple[str, ...]:
    """Return the names of the events to send early: every ``wait_event``'s for ``True``."""
    awaited = sorted({t.awaits for t in definition.transitions if t.awaits})
    if events is True:
        return tuple(awaited)
    if events is False:
        return ()
    names = tuple(dict.fromkeys(events))
    for name in names:
        if name not in awaited:
            raise AnalysisError(
                f"events= names {name!r}, which no wait_event of flow {definition.name!r} "
                f"waits for; the flow waits for {awaited!r}"
            )
    return names


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
    max_items: int = MAX_ITEMS,
    reduce: bool = True,
    cancel: bool = False,
    events: Iterable[str] | bool = (),
    max_events: int = 1,
) -> Exploration:
    """Explore every run of ``definition`` under every outcome of every command.

    Pure: handlers are never called; each command is answered with each of
    its outcomes in turn (``do``: returned, raised; ``case``, ``loop_until``,
    ``on_error``: true, false, raised; ``wait_for``: true, false, raised, and
    timed_out when it has a timeout; ``sleep``: fired; ``sleep_until``: past,
    raised, then its timer fired; ``wait_event``: received (by the first
    position waiting for that name, as the core delivers it), and timed_out
    when it has a timeout; a map's ``items``: 0 to ``max_items`` items, raised; a
    ``switch``'s route: each case's value, a value matching none, raised) and the
    real :func:`stepflow.advance` computes
    where that leads. Loops, false polls and restarts of retries without
    ``max_attempts`` are cut after ``max_loops`` (see :class:`Exploration`).

    With several commands in flight (``parallel`` and ``map`` groups), each of
    them is answered next in turn: every interleaving is explored, up to a
    reduction that leaves out reorderings of independent branches and keeps
    every state and its shortest trace (see :mod:`stepflow.analysis._explore`,
    "Reduction", and docs/testing.md).

    Cancellations and early events (moves with no command, see
    :class:`~stepflow.analysis.Move`): with ``cancel=True``, from every
    search state whose run is ``running``, the run is also cancelled (a
    :class:`~stepflow.core.messages.CancelRequested` at the current virtual
    time). A run is cancelled at most once: a ``cancelling`` or ``cancelled``
    run is not running. With ``events``, an event a ``wait_event`` waits for is
    also sent to a running run that no position currently waits for it at
    (it waits in the mailbox, taken when a step reaches it), at most
    ``max_events`` times per name and run. The search state keeps the run's
    status and the names in its mailbox, so the search stays finite.

    Args:
        definition: The compiled flow.
        invariants: Properties to check (:func:`always`, :func:`never`,
            :func:`before`, :func:`leads_to`, or any :class:`Invariant`).
        max_states: Stop (``complete=False``) after this many search states.
        max_loops: Bound of each loop, poll and unbounded-retry counter.
        max_items: The most items a map's ``items`` handler returns.
        reduce: Prune reorderings of independent branches (``False``:
            explore every interleaving edge, for comparison).
        cancel: Also cancel every running run, at every point.
        events: Event names to send early (``True``: every name a
            ``wait_event`` of the flow waits for).
        max_events: How many times each of ``events`` is sent early per run.

    Returns:
        The counts, the first violation of each invariant (with a shortest
        trace) and the dead ends.

    Raises:
        AnalysisError: an invariant names a step or event the flow lacks, or
            ``events`` an event no ``wait_event`` waits for.

    >>> import stepflow
    >>> flow = stepflow.named("f").do("a", print).wait_for("b", bool, timeout=5)
    >>> result = explore(stepflow.new(flow).definition)
    >>> result.complete, result.completed, result.failed, result.dead_ends
    (True, 1, 3, ())

    """
    invariants = tuple(invariants)
    check_invariants(definition, invariants)
    search = Search(
        definition,
        invariants,
        max_states=max_states,
        max_loops=max_loops,
        max_items=max_items,
        reduce=reduce,
        cancel=cancel,
        events=events,
        max_events=max_events,
    ).run()
    completed = sum(1 for _ in search.nodes_where(lambda s: s.status == "completed"))
    failed = sum(1 for _ in search.nodes_where(lambda s: s.status == "failed"))
    cancelled = sum(1 for _ in search.nodes_where(lambda s: s.status == "cancelled"))
    return Exploration(
        states=len(search.states),
        transitions=search.transitions,
        complete=search.complete,
        completed=completed,
        failed=failed,
        cut=search.cut,
        violations=tuple(search.violations[i] for i in sorted(search.violations)),
        dead_ends=tuple(search.trace(node) for node in search.dead_ends()),
        pruned=search.pruned,
        cancelled=cancelled,
    )
