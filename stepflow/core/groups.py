"""Several positions per run: ``parallel`` branches and ``map`` items.

A flow with a ``parallel`` or ``map`` group is advanced here; a flow without one
never reaches this module, so its runs hold one position and produce exactly the
states and commands they always did (:mod:`stepflow.core.advance`).

Rule 1: the same purity as :func:`~stepflow.core.advance.advance`: nothing here
performs I/O, reads a clock, draws a random number or calls user code, and no
input is mutated. A rejected batch raises before anything is kept: the caller
still holds the state it passed.

Rule 2: each position moves by the one-position rules. A position of a run
with several is advanced exactly as a run holding only that position would be
(:func:`~stepflow.core.advance.answer`), with the outputs, attempts and command
ids of the whole run; what differs is only what happens at a fork, at a join,
and when an error leaves a branch or an item.

Rule 3: names. A group's scope is ``<name>Parallel`` or ``<name>Map``. Branch
``b`` of a parallel group runs in scope ``<name>Parallel/b``; item ``i`` of a map
runs in scope ``<name>Map/steps[i]``. ``[`` and ``]`` may appear in no step or
branch name, so an index in brackets is unambiguous, and removing every
``[i]`` from a position gives the definition's event (:func:`template_of`): the
transition table stays static, one entry per template event.

Rule 4: commands. :func:`advance_groups` returns every command in flight, one
per position, in the order of ``state.events``; each has a run-unique id (and so
its own idempotency key) and keeps it until answered. A command may be carried
out once its position's ``wake_at`` (``state.times``) has come, or at once if it
has none; ``state.wake_at`` is the earliest of them, ``None`` when one is due at
once.

Rule 5: effects. A batch may answer any number of the commands in flight, in any
order; the effects are applied in the order of their command ids, so a batch
means the same whatever its order. A batch whose every effect answers a
distinct command in flight is applied whole; any other is refused whole.

Rule 6: a fork. Entering a ``parallel`` group starts every branch at once. A
``map`` first issues its ``items`` command; the JSON list it returns is kept in
the group's :class:`~stepflow.core.state.GroupProgress`, and items start in
order, at most ``max_concurrency`` at a time (as one ends, the next starts). An
empty list completes the group at once with ``[]``.

Rule 7: a join. When a branch or item ends, its last ``do`` output (or the
output of the last group it ran) is its result. When every branch or item has
ended, the group completes: its output, a mapping of branch name to result for
``parallel`` or a list of results in item order for ``map``, is kept in
``outputs`` under the group's scope path, and the run continues after it.

Rule 8: failure. An error that leaves a branch or an item (past the retries
inside it) is recorded as its result, ``{"error": {"type", "message", "step"}}``.
While no more than ``max_failures`` have failed, the group goes on. Past that,
the group fails: no new command starts inside it; positions inside it that
wait for a timer, an event, or a poll or backoff not yet due at the time of the
failing batch, are dropped at once (nothing can be executing them); the
effects of commands already in flight are still accepted and recorded (their
outputs kept). Each position stopped so is cancelled inside its branch or item
(:mod:`stepflow.core.cleanup`, Rule 10): the cleanups around it there run, then
it stops. When nothing is left in flight in the group, its first error leaves
it: to the retry enclosing the group, which restarts it whole, or to the
enclosing branch or item, or it fails the run.

Rule 9: a failed run keeps the position of the step that failed, as in a run of
one position; for an error that left a group, that is the group's start. Resuming
it starts the group over.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from pyrsistent import pmap
from pyrsistent.typing import PMap

from stepflow.core._json import NotJSON, freeze_json, thaw_json
from stepflow.core.advance import (
    _EFFECTS,
    _at,
    _enter,
    _fail_step,
    _rejection,
    _wrong_answer,
    answer,
    initial_state,
    result_error,
)
from stepflow.core.checks import check_state
from stepflow.core.children import with_children
from stepflow.core.cleanup import cancel_from, cancel_record, is_cancellation, may_run, with_cancel
from stepflow.core.definition import FlowDefinition, _Node, completed_event, start_event
from stepflow.core.events import untimed_wait, with_events
from stepflow.core.messages import (
    CallHandler,
    CancelRequested,
    ChildEnded,
    Command,
    Effect,
    EventReceived,
    HandlerRaised,
    HandlerReturned,
    answered_id,
)
from stepflow.core.state import (
    CANCELLED,
    CANCELLING,
    COMPLETED,
    EMPTY_ATTEMPTS,
    EMPTY_GROUPS,
    EMPTY_TIMES,
    FAILED,
    RUNNING,
    ErrorRecord,
    GroupProgress,
    State,
)
from stepflow.errors import StateError

__all__ = ["advance_groups", "cancel_groups", "command_times", "item_of", "resume_groups"]

_new = tuple.__new__
_NO_TIMES: tuple[float | None, float | None] = (None, None)


def command_times(state: State, command: Command) -> tuple[float | None, float | None]:
    """Return ``(wake_at, timeout_at)`` of the position ``command`` is in flight for.

    ``wake_at`` is when the command may be carried out (``None``: at once),
    ``timeout_at`` when its ``wait_for`` times out. For a run of one position
    these are the state's own ``wake_at`` and ``timeout_at``.
    """
    if state.times or len(state.in_flight) > 1:
        return state.times.get(command.event, _NO_TIMES)
    return state.wake_at, state.timeout_at


def item_of(state: State, step: str) -> tuple[int, Any] | None:
    """Return ``(index, item)`` of the innermost map item that ``step`` runs in, or ``None``.

    ``step`` is a command's step path (``"f/regionsMap/steps[3]/push"``).

    >>> from pyrsistent import pmap
    >>> progress = GroupProgress("map", ("eu", "us"), 2, 2, pmap())
    >>> groups = pmap({"f/rMap": progress})
    >>> state = State("f", "", (), "running", None, (), 0, pmap(), groups=groups)
    >>> item_of(state, "f/rMap/steps[1]/push")
    (1, 'us')
    """
    cut = step.rfind("/steps[")
    while cut >= 0:
        end = step.find("]", cut)
        progress = state.groups.get(step[:cut])
        if progress is not None and progress.kind == "map":
            index = int(step[cut + 7 : end])
            return index, thaw_json(progress.items[index])
        cut = step.rfind("/steps[", 0, cut)
    return None


class _Run:
    """A run's state while one batch is applied: local to one call, never shared."""

    __slots__ = (
        "answering",
        "attempts",
        "definition",
        "error",
        "filling",
        "groups",
        "mailbox",
        "outputs",
        "positions",
        "seq",
        "state",
        "status",
        "times",
    )

    def __init__(self, definition: FlowDefinition, state: State) -> None:
        self.definition = definition
        self.state = state
        self.positions: dict[str, Command | None] = dict(
            zip(state.events, state.in_flight, strict=False)
        )
        self.seq = state.seq
        self.outputs = state.outputs
        self.attempts = state.attempts
        self.times = state.times
        self.groups = state.groups
        self.status = state.status
        self.error = state.error
        self.mailbox = state.mailbox
        # Groups whose items are being started: an item that ends at once must
        # not start the next one itself (that would recurse once per item).
        self.filling: set[str] = set()
        # Ids of the commands the batch being applied answers: never dropped.
        self.answering: set[int] = set()

    def build(self) -> State:
        definition, state = self.definition, self.state
        events = tuple(self.positions)
        in_flight: tuple[Command, ...] = ()
        wake_at = timeout_at = None
        times = EMPTY_TIMES
        if self.status == RUNNING or self.status == CANCELLING:
            in_flight = tuple(cast(Command, c) for c in self.positions.values())
            times = self.times
            wake_at, timeout_at = _earliest(events, times, in_flight)
        # Empty maps are the shared empties: the codec writes them as format 2 did.
        times = times if times else EMPTY_TIMES
        groups = self.groups if self.groups else EMPTY_GROUPS
        attempts = self.attempts if self.attempts else EMPTY_ATTEMPTS
        fields = (definition.name, definition.fingerprint, events, self.status, self.error)
        rest = (in_flight, self.seq, self.outputs, wake_at, timeout_at, attempts)
        return _new(State, (*fields, *rest, state.run_id, times, groups, self.mailbox))

    # ------------------------------------------------------------------ one position

    def view(self, event: str, command: Command | None, node: _Node) -> State:
        """Return the one-position state of ``event``, for the rules of stepflow.core.advance."""
        wake_at, timeout_at = self.times.get(event, _NO_TIMES)
        attempts = self.attempts
        if attempts:
            scopes = node.retry_scopes
            attempts = pmap({s: n for s, n in attempts.items() if s in scopes})
        definition = self.definition
        # A position unwinds (stepflow.core.cleanup, rules 8 and 10) while the
        # run is cancelling, or when a group around it failed.
        status, error = self.status, self.error
        if status != CANCELLING:
            status, error = RUNNING, None
            failed = self.failed_group(node)
            if failed is not None:
                status, error = CANCELLING, failed
        fields = (definition.name, definition.fingerprint, (event,), status, error)
        issued = () if command is None else (command,)
        rest = (issued, self.seq, self.outputs, wake_at, timeout_at, attempts, self.state.run_id)
        return _new(State, (*fields, *rest, EMPTY_TIMES, EMPTY_GROUPS, self.mailbox))

    def absorb(self, view: State, origin: _Node, at: float | None) -> None:
        """Take the outcome of one position's move (``view``) into the run."""
        self.seq = view.seq
        self.outputs = view.outputs
        self.mailbox = view.mailbox
        attempts = self.attempts
        for scope in origin.retry_scopes:
            if scope in attempts:
                attempts = attempts.discard(scope)
        for scope, count in view.attempts.items():
            attempts = attempts.set(scope, count)
        self.attempts = attempts
        event = view.events[0]
        node = self.definition._node(event)
        if view.status == COMPLETED or (view.status == CANCELLED and not node.groups):
            self.positions = {event: None}
            self.status = view.status
            self.error = view.error
            self.times = EMPTY_TIMES
            return
        if node.groups and self.stopping(node) and not view.in_flight:
            self.stop(node, at)  # (one running a cleanup goes on: cleanup rule 10)
            return
        if view.status == FAILED or view.status == CANCELLED:
            error = cast(ErrorRecord, view.error)
            if node.groups:
                self.item_ended(node.groups[-1], _item_key(node.groups[-1], event), at, error)
            else:
                self.positions = {event: None}
                self.status = FAILED
                self.error = error
                self.times = EMPTY_TIMES
            return
        if view.in_flight:
            self.positions[event] = view.in_flight[0]
            if view.wake_at is not None or view.timeout_at is not None:
                self.times = self.times.set(event, (view.wake_at, view.timeout_at))
            return
        if node.kind == "parallel":
            self.fork(node, at)
        else:  # a join: a branch or an item ended
            self.item_ended(node.step, _item_key(node.step, event), at, None)

    def enter(self, event: str, at: float | None, origin: _Node | None = None) -> None:
        """Move a position to ``event`` (through static hops) and issue its command.

        ``origin`` is the node the position comes from, when it leaves one (a
        completed group's fork): the attempts of the retries around it that the
        new position is not in are forgotten, as for a run of one position.
        """
        node = self.definition._node(event)
        origin = node if origin is None else origin
        view = self.view(node.event, None, origin)
        moved, _ = _enter(self.definition, view, node, view.outputs, view.attempts, at, None)
        self.absorb(moved, origin, at)

    def remove(self, event: str) -> None:
        del self.positions[event]
        if event in self.times:
            self.times = self.times.discard(event)

    # ------------------------------------------------------------------ groups

    def stopping(self, node: _Node) -> bool:
        """Whether a group around ``node`` has failed: nothing new starts in it."""
        return self.failed_group(node) is not None

    def failed_group(self, node: _Node) -> ErrorRecord | None:
        """Return the error of the outermost failed group around ``node``, or ``None``."""
        groups = self.groups
        for scope in node.groups:
            progress = groups.get(scope)
            if progress is not None and progress.error is not None:
                return progress.error
        return None

    def fork(self, node: _Node, at: float | None) -> None:
        scope = node.step
        branches = node.forks
        self.groups = self.groups.set(
            scope, GroupProgress("parallel", branches, len(branches), len(branches), pmap())
        )
        self.filling.add(scope)
        for branch in branches:
            self.enter(start_event(f"{scope}/{branch}"), at)
        self.filling.discard(scope)
        self.settle(scope, at)

    def start_map(self, node: _Node, items: tuple[Any, ...], at: float | None) -> None:
        scope = node.step
        self.groups = self.groups.set(scope, GroupProgress("map", items, 0, 0, pmap()))
        self.fill(scope, node.limit, at)

    def fill(self, scope: str, limit: int | None, at: float | None) -> None:
        """Start the next items of map ``scope`` while its concurrency allows, then settle it."""
        if scope in self.filling:
            return
        self.filling.add(scope)
        progress = self.groups.get(scope)
        while (
            progress is not None
            and progress.error is None
            and progress.started < len(progress.items)
            and (limit is None or progress.active < limit)
        ):
            index = progress.started
            self.groups = self.groups.set(
                scope, progress._replace(started=index + 1, active=progress.active + 1)
            )
            self.enter(start_event(f"{scope}/steps[{index}]"), at)
            progress = self.groups.get(scope)
        self.filling.discard(scope)
        self.settle(scope, at)

    def settle(self, scope: str, at: float | None) -> None:
        """Complete or fail group ``scope`` once nothing runs in it any more."""
        progress = self.groups.get(scope)
        if progress is None or progress.active or scope in self.filling:
            return
        if progress.error is not None:
            self.fail_group(scope, progress.error, at)
        elif (  # pragma: no branch - never false: a map settles once all started (limit >= 1)
            progress.kind == "parallel" or progress.started == len(progress.items)
        ):
            self.complete_group(scope, progress, at)

    def item_ended(self, scope: str, key: str, at: float | None, error: ErrorRecord | None) -> None:
        """Branch or item ``key`` of group ``scope`` ended, with ``error`` if it failed."""
        progress = self.groups[scope]
        self.forget_attempts(_item_scope(scope, progress.kind, key))
        progress = progress._replace(active=progress.active - 1)
        failing = False
        if error is not None:
            record = {"error": {"type": error.type, "message": error.message, "step": error.step}}
            progress = progress._replace(
                failures=progress.failures + 1,
                results=progress.results.set(key, freeze_json(record)),
            )
            tolerated = self.definition._node(start_event(scope)).tolerated
            beyond = progress.failures > tolerated or is_cancellation(error)
            if progress.error is None and beyond:
                progress = progress._replace(error=error)
                failing = True
        self.groups = self.groups.set(scope, progress)
        if failing:
            self.drop_waiting(scope, at)
        if progress.kind == "map":
            self.fill(scope, self.definition._node(start_event(scope)).limit, at)
        else:
            self.settle(scope, at)

    def drop_waiting(self, scope: str, at: float | None) -> None:
        """Drop the positions in failed group ``scope`` that nothing can be executing."""
        if at is None:  # without a time, nothing is known not to be running
            return
        inside = (start_event(scope + "/"), completed_event(scope + "/"))
        dropped = [
            event
            for event, command in self.positions.items()
            if event.startswith(inside)
            and cast(Command, command).id not in self.answering
            and not may_run(cast(Command, command), self.times.get(event, _NO_TIMES)[0], at)
        ]
        self.filling.add(scope)  # settle once, after the last drop
        for event in dropped:
            self.unwind(event, at)
        self.filling.discard(scope)

    def unwind(self, event: str, at: float | None) -> None:
        """Drop the command of position ``event``, and unwind it (cleanup rules 8 and 10)."""
        node = self.definition._node(event)
        if node.shield >= 0:  # a cleanup runs on
            return
        self.remove(event)
        view = self.view(event, None, node)
        moved, _ = cancel_from(self.definition, view, node, at)
        self.absorb(moved, node, at)

    def cancel(self, request: CancelRequested, at: float | None) -> None:
        """Cancel the run (cleanup rule 7): each position not executing unwinds now."""
        first = self.definition._node(next(iter(self.positions)))
        self.status, self.error = CANCELLING, cancel_record(request, first.step)
        for event, command in list(self.positions.items()):
            if event in self.positions and (
                command is None or not may_run(command, self.times.get(event, _NO_TIMES)[0], at)
            ):
                self.unwind(event, at)

    def stop(self, node: _Node, at: float | None) -> None:
        """Account, in each group around it, for a position that ended inside a failed group."""
        event = node.event
        for scope in reversed(node.groups):  # pragma: no branch - returns at the failed group
            progress = self.groups.get(scope)
            if progress is None:  # pragma: no cover - a group around a live position exists
                continue
            self.forget_attempts(_item_scope(scope, progress.kind, _item_key(scope, event)))
            progress = progress._replace(active=progress.active - 1)
            self.groups = self.groups.set(scope, progress)
            if progress.error is not None:
                self.settle(scope, at)
                return
            if progress.active:
                return
            # A group inside the failed one emptied: it ends with no output.
            self.groups = self.groups.discard(scope)
            event = start_event(scope)

    def forget_attempts(self, item_scope: str) -> None:
        attempts = self.attempts
        if attempts:
            prefix = item_scope + "/"
            for scope in [s for s in attempts if s.startswith(prefix)]:
                attempts = attempts.discard(scope)
            self.attempts = attempts

    def complete_group(self, scope: str, progress: GroupProgress, at: float | None) -> None:
        results = progress.results
        if progress.kind == "map":
            output: Any = [results.get(str(i)) for i in range(len(progress.items))]
        else:
            output = {branch: results.get(branch) for branch in progress.items}
        frozen = freeze_json(output)
        self.groups = self.groups.discard(scope)
        self.outputs = self.outputs.set(scope, frozen)
        fork = self.definition._node(start_event(scope))
        self.record_result(fork, scope, frozen)
        self.enter(completed_event(scope), at, fork)

    def fail_group(self, scope: str, error: ErrorRecord, at: float | None) -> None:
        """Hand the error of failed group ``scope`` to what encloses the group."""
        self.groups = self.groups.discard(scope)
        event = start_event(scope)
        fork = self.definition._node(event)
        failed = _new(CallHandler, (0, fork.kind, scope, event, None))
        view = self.view(event, None, fork)
        moved, _ = _fail_step(self.definition, view, failed, fork, error, at)
        self.absorb(moved, fork, at)

    def record_result(self, node: _Node, step: str, value: Any) -> None:
        """Keep ``value`` as the latest result of the branch or item ``step`` runs in."""
        if not node.groups:
            return
        scope = node.groups[-1]
        progress = self.groups.get(scope)
        if progress is not None:
            key = _item_key(scope, step)
            self.groups = self.groups.set(
                scope, progress._replace(results=progress.results.set(key, value))
            )

    # ------------------------------------------------------------------ effects

    def apply(self, command: Command, effect: Effect, now: float | None) -> None:
        event = command.event
        node = self.definition._node(event)
        view = self.view(event, command, node)
        self.remove(event)
        at = _at(effect, now)
        if command.kind == "map":
            self.answer_items(view, command, node, effect, at)
            return
        moved, _ = answer(self.definition, view, command, node, effect, now)
        kind = command.kind
        if (kind == "do" or kind == "call") and node.groups and type(effect) is HandlerReturned:
            # Kept only if the value was: a value that is not JSON fails the step.
            value = moved.outputs.get(command.step)
            if value is not None and value is not view.outputs.get(command.step):
                self.record_result(node, command.step, value)
        self.absorb(moved, node, at)

    def answer_items(
        self, view: State, command: Command, node: _Node, effect: Effect, at: float | None
    ) -> None:
        """Apply the outcome of a map's ``items`` command: start its items, or fail it."""
        if view.status == CANCELLING and node.shield < 0:  # cleanup rule 8: no item starts
            moved, _ = cancel_from(self.definition, view, node, at)
            self.absorb(moved, node, at)
            return
        if type(effect) is HandlerReturned:
            value = effect.value
            if type(value) is list:
                try:
                    items = tuple(freeze_json(item) for item in value)
                except NotJSON:
                    pass
                else:
                    if not items:
                        self.outputs = self.outputs.set(node.step, freeze_json([]))
                        self.record_result(node, node.step, self.outputs[node.step])
                        self.enter(completed_event(node.step), at, node)
                    else:
                        self.start_map(node, items, at)
                    return
            error = cast(ErrorRecord, result_error(command, value))
        elif type(effect) is HandlerRaised:
            error = effect.error
        else:
            raise _wrong_answer(effect, command)
        moved, _ = _fail_step(self.definition, view, command, node, error, at)
        self.absorb(moved, node, at)


def _item_key(scope: str, path: str) -> str:
    """Return the branch name or item index (as a string) of ``path`` inside group ``scope``."""
    path = path.partition(":")[2] if ":" in path else path
    rest = path[len(scope) + 1 :]
    segment = rest.split("/", 1)[0]
    if segment.startswith("steps["):
        return segment[6:-1]
    return segment


def _item_scope(scope: str, kind: str, key: str) -> str:
    return f"{scope}/steps[{key}]" if kind == "map" else f"{scope}/{key}"


def _earliest(
    events: tuple[str, ...],
    times: PMap[str, tuple[float | None, float | None]],
    in_flight: tuple[Command, ...],
) -> tuple[float | None, float | None]:
    """Return the run's ``wake_at`` (``None``: a command is due at once) and ``timeout_at``.

    A wait for an event with no timeout is never due: it does not count.
    """
    wake_at: float | None = None
    timeout_at: float | None = None
    due_now = False
    for event, command in zip(events, in_flight, strict=True):
        wake, timeout = times.get(event, _NO_TIMES)
        if wake is None:
            due_now = due_now or not untimed_wait(command)
        elif wake_at is None or wake < wake_at:
            wake_at = wake
        if timeout is not None and (timeout_at is None or timeout < timeout_at):
            timeout_at = timeout
    return (None if due_now else wake_at), timeout_at


def advance_groups(
    definition: FlowDefinition,
    state: State | None,
    effects: Sequence[Effect],
    now: float | None,
) -> tuple[State, tuple[Command, ...]]:
    """:func:`stepflow.advance` for a flow with groups: the rules of this module.

    Returns the new state and every command in flight in it.
    """
    name, fingerprint = definition.name, definition.fingerprint
    if state is None:
        state = initial_state(definition)
    elif state[1] is not fingerprint and (state[1] != fingerprint or state[0] != name):
        state = check_state(definition, state)
    try:
        return _advance(definition, state, effects, now)
    except KeyError as exc:
        # A position or group the definition does not know: say what is wrong.
        check_state(definition, state)
        raise StateError(  # pragma: no cover - check_state refuses each state known to get here
            f"the state does not fit {name!r}: {state!r:.200}"
        ) from exc


def _advance(
    definition: FlowDefinition, state: State, effects: Sequence[Effect], now: float | None
) -> tuple[State, tuple[Command, ...]]:
    in_flight = state.in_flight
    if not effects:
        if in_flight or state.status != RUNNING:
            return state, in_flight
        if len(state.events) != 1:
            check_state(definition, state)  # raises the error that explains it
        run = _Run(definition, state)
        run.enter(state.events[0], now)
        new = run.build()
        return new, new.in_flight
    by_id = {command[0]: command for command in in_flight}
    seen: set[int] = set()
    for effect in effects:
        if type(effect) not in _EFFECTS or effect[0] not in by_id or effect[0] in seen:
            if any(type(e) is CancelRequested for e in effects):
                state, effects = with_cancel(definition, state, effects, now)
                return _advance(definition, state, effects, now) if effects else (state, state[5])
            if any(type(e) is EventReceived for e in effects):
                state, effects = with_events(definition, state, effects, now)
                return _advance(definition, state, effects, now)
            if any(type(e) is ChildEnded for e in effects):  # stepflow.core.children
                return _advance(definition, state, with_children(state, effects), now)
            raise _rejection(state, effects)
        seen.add(answered_id(effect))
    run = _Run(definition, state)
    run.answering = seen
    for effect in sorted(effects, key=answered_id):
        command = by_id[answered_id(effect)]
        if command.event not in run.positions:  # dropped by a failure earlier in the batch
            raise _rejection(run.build(), (effect,))
        run.apply(command, effect, now)
        if run.status != RUNNING and run.status != CANCELLING:
            # A finished run answers nothing more: the rest of the batch is refused.
            rest = [e for e in effects if answered_id(e) > command[0]]
            if rest:
                raise _rejection(run.build(), rest)
    new = run.build()
    return new, new.in_flight


def cancel_groups(
    definition: FlowDefinition, state: State, request: CancelRequested, at: float | None
) -> State:
    """Apply the cancellation ``request`` to the running ``state`` of a flow with groups."""
    run = _Run(definition, state)
    run.cancel(request, at)
    return run.build()


def resume_groups(
    definition: FlowDefinition, state: State, now: float | None
) -> tuple[State, tuple[Command, ...]]:
    """:func:`stepflow.resume` for a flow with groups: start the failed step (or group) over."""
    run = _Run(definition, state._replace(status=RUNNING, error=None, attempts=EMPTY_ATTEMPTS))
    run.enter(state.events[0], now)
    new = run.build()
    return new, new.in_flight
