"""Histories: a run's life as data, replayed against any version of its flow.

Because the core is pure, a run is fully determined by its first state and the
effect batches applied to it. A :class:`History` holds exactly that, read from a
store's journal (:func:`history`) or from a file (:func:`loads_history`), and
:func:`replay` runs it again through :func:`stepflow.advance`:

* against the definition that recorded it, it gives back every intermediate
  state exactly (time-travel debugging);
* against a new version of the flow, it proves that runs already in flight will
  not break, or names the first batch where the new definition would issue
  another command than the one that was answered (a :class:`ReplayDivergence`);
* exported, it is a test fixture (``stepflow export RUN > run.json``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import attrs
import orjson

from stepflow.codec import (
    Batch,
    dumps_batch,
    loads_batch,
    structure_state,
    unstructure_state,
)
from stepflow.core.advance import advance, initial_state, resume
from stepflow.core.checks import check_state
from stepflow.core.definition import FlowDefinition
from stepflow.core.messages import Command
from stepflow.core.state import State
from stepflow.errors import (
    CorruptStateError,
    EffectError,
    FlowMismatchError,
    JournalPrunedError,
    StateError,
    StepflowError,
)
from stepflow.stores.base import Store

__all__ = [
    "HISTORY_FORMAT",
    "CorruptHistoryError",
    "History",
    "ReplayDivergence",
    "ReplayResult",
    "attempt_label",
    "dumps_history",
    "history",
    "loads_history",
    "replay",
]

#: Version of the text :func:`dumps_history` writes.
HISTORY_FORMAT = 1


class CorruptHistoryError(CorruptStateError):
    """A history cannot be read: truncated, malformed, or its batches out of order."""


@attrs.frozen
class History:
    """The whole life of one run, as data.

    Attributes:
        run_id: The run's id.
        flow: The flow's name.
        fingerprint: The fingerprint of the definition the run started under.
        initial: The run's first state (its first command issued).
        batches: What was applied to it, in order: effect batches with the
            commands they answered and their times, resumes, cancellations and
            migrations. ``batches[k]`` produced the state ``replay(...).states[k]``.

    """

    run_id: str
    flow: str
    fingerprint: str
    initial: State
    batches: tuple[Batch, ...]


class ReplayDivergence(StepflowError, AssertionError):
    """Replaying a history, the definition would not do what the recorded run did.

    Attributes:
        index: The index of the batch where it diverged (``-1``: the initial state
            itself does not fit the definition).
        expected: The command the recorded run answered there, if any.
        actual: The command the definition issues there instead, if any.
        step: The scope path of the step concerned.

    """

    def __init__(
        self,
        message: str,
        *,
        index: int,
        expected: Command | None,
        actual: Command | None,
        step: str,
    ) -> None:
        super().__init__(message)
        self.index = index
        self.expected = expected
        self.actual = actual
        self.step = step

    def __eq__(self, other: object) -> bool:
        return type(other) is ReplayDivergence and (
            self.index,
            self.expected,
            self.actual,
            self.step,
            str(self),
        ) == (other.index, other.expected, other.actual, other.step, str(other))

    def __hash__(self) -> int:
        return hash((self.index, self.expected, self.actual, self.step))


@attrs.frozen
class ReplayResult:
    """What a replay produced.

    Attributes:
        states: The state after each batch: ``states[k]`` follows ``batches[k]``.
            Shorter than the history when the replay stopped at a divergence.
        commands: The commands in flight after each batch.
        divergences: Every divergence found (at most one unless ``collect_all``).

    """

    initial: State
    states: tuple[State, ...]
    commands: tuple[tuple[Command, ...], ...]
    divergences: tuple[ReplayDivergence, ...]

    @property
    def final(self) -> State:
        """The last state reached."""
        return self.states[-1] if self.states else self.initial

    @property
    def ok(self) -> bool:
        """Whether the whole history replayed without divergence."""
        return not self.divergences


def attempt_label(definition: FlowDefinition, before: State, command: Command) -> str:
    """Return which attempt of its innermost retry ``command`` is, as ``before`` counts.

    For tables of a history (``stepflow history``, the console's timeline): the
    attempt as a number, ``"-"`` outside any retry, ``"?"`` for a position the
    definition does not know. For an ``on_error`` command, the retry asked.
    """
    if command.kind == "on_error":
        scope = command.step  # the retry whose handler is asked
    else:
        try:
            scopes = definition.enclosing_retries(command.event)
        except KeyError:
            return "?"
        if not scopes:
            return "-"
        scope = scopes[0]
    return str(before.attempts.get(scope, 0) + 1)


def _describe(command: Command | None) -> str:
    if command is None:
        return "nothing (the run is over)"
    return f"{command.kind} {command.step!r} (id {command.id}, at {command.event!r})"


def _position(state: State, commands: Sequence[Command]) -> tuple[Any, ...]:
    """Where ``state`` rests and what it asks for, times aside."""
    return (
        state.events,
        state.status,
        tuple((c.id, c.kind, c.step, c.event) for c in commands),
    )


def replay(
    definition: FlowDefinition,
    history: History,
    *,
    raise_on_divergence: bool = False,
    collect_all: bool = False,
) -> ReplayResult:
    """Replay ``history`` against ``definition``: every state, and any divergence.

    The run's first state must be where the definition starts a run (its
    position and first command; times aside, which a history does not record).
    For each effect batch, the definition must have in flight each command the
    batch answered (same id, kind, step and position; a run of several positions
    answers some of its commands per batch, in any order); the batch's effects
    are then applied. Resumes are re-applied (a resume of a run that, under the
    definition, had not failed is a divergence); cancellations change no state;
    migrations put the recorded migrated state in place.

    Args:
        definition: The definition to replay against: the recording one, or a new
            version whose compatibility with runs in flight is in question.
        history: The history (see :func:`history`, :func:`loads_history`).
        raise_on_divergence: Raise the first :class:`ReplayDivergence` instead of
            returning it in the result.
        collect_all: Go on after a divergence wherever the recorded effects can
            still be applied, to list every divergence.

    Raises:
        FlowMismatchError: the history is of another flow.
        ReplayDivergence: with ``raise_on_divergence``, at the first divergence.

    """
    if history.flow != definition.name:
        raise FlowMismatchError(
            f"the history is of flow {history.flow!r}, not {definition.name!r}; replay it "
            "against a version of its own flow",
            expected=definition.name,
            actual=history.flow,
        )
    states: list[State] = []
    issued_log: list[tuple[Command, ...]] = []
    divergences: list[ReplayDivergence] = []

    def diverge(divergence: ReplayDivergence) -> bool:
        """Record a divergence; return whether to go on."""
        if raise_on_divergence:
            raise divergence
        divergences.append(divergence)
        return collect_all

    try:
        state = check_state(definition, history.initial)
    except StateError as exc:
        step = history.initial.events[0].partition(":")[2] if history.initial.events else ""
        diverge(
            ReplayDivergence(
                f"the run's first state does not fit the definition: {exc}",
                index=-1,
                expected=history.initial.in_flight[0] if history.initial.in_flight else None,
                actual=None,
                step=step,
            )
        )
        return ReplayResult(history.initial, (), (), tuple(divergences))
    # The first state is taken as recorded, so check that the definition starts a
    # run there too: a step inserted before the recorded start diverges like one
    # inserted anywhere else the run went. A history does not record when its run
    # started, so positions and commands are compared, not times.
    fresh, first = advance(definition, initial_state(definition, state.run_id), now=0.0)
    if _position(fresh, first) != _position(state, state.in_flight):
        recorded = state.in_flight[0] if state.in_flight else None
        actual = first[0] if first else None
        go_on = diverge(
            ReplayDivergence(
                f"the definition starts a run at {_describe(actual)}, but the recorded run "
                f"started at {_describe(recorded)}",
                index=-1,
                expected=recorded,
                actual=actual,
                step=state.events[0].partition(":")[2] if state.events else "",
            )
        )
        if not go_on:
            return ReplayResult(history.initial, (), (), tuple(divergences))
    for index, batch in enumerate(history.batches):
        if batch.op == "effects":
            state, issued = advance(definition, state)
            # A run of several positions answers some of its commands in a batch:
            # each must be in flight under the definition, whatever their order.
            by_id = {c.id: c for c in issued}
            for k, expected in enumerate(batch.answered):
                actual = by_id.get(expected.id, issued[k] if k < len(issued) else None)
                # The same id, kind, step and position (and, for an on_error, the
                # same error; for a timer, the same time).
                if actual != expected:
                    go_on = diverge(
                        ReplayDivergence(
                            f"batch {index}: the recorded run answered {_describe(expected)}, "
                            f"but the definition issues {_describe(actual)}",
                            index=index,
                            expected=expected,
                            actual=actual,
                            step=expected.step,
                        )
                    )
                    if not go_on:
                        return ReplayResult(
                            history.initial, tuple(states), tuple(issued_log), tuple(divergences)
                        )
            try:
                state, issued = advance(definition, state, batch.effects)
            except EffectError as exc:
                answered = batch.answered[0] if batch.answered else None
                diverge(
                    ReplayDivergence(
                        f"batch {index}: the recorded effects cannot be applied any more ({exc})",
                        index=index,
                        expected=answered,
                        actual=state.in_flight[0] if state.in_flight else None,
                        step=answered.step if answered is not None else "",
                    )
                )
                return ReplayResult(
                    history.initial, tuple(states), tuple(issued_log), tuple(divergences)
                )
        elif batch.op == "resume":
            try:
                state, issued = resume(definition, state, now=batch.at)
            except StateError as exc:
                # Under this definition the run had not failed here (a retry policy
                # that allows more attempts, say): the recorded resume cannot happen.
                diverge(
                    ReplayDivergence(
                        f"batch {index}: the recorded run was resumed, but under the "
                        f"definition it is {state.status} ({exc})",
                        index=index,
                        expected=None,
                        actual=state.in_flight[0] if state.in_flight else None,
                        step=state.events[0].partition(":")[2] if state.events else "",
                    )
                )
                return ReplayResult(
                    history.initial, tuple(states), tuple(issued_log), tuple(divergences)
                )
        elif batch.op == "migrate" and batch.state is not None:
            try:
                state = check_state(definition, batch.state)
            except StateError as exc:
                # The run moved on to another version (or one this definition
                # cannot hold): what follows is that version's to replay.
                diverge(
                    ReplayDivergence(
                        f"batch {index}: the run was migrated to {batch.state.flow!r} "
                        f"({batch.state.fingerprint[:19]}...), which this definition cannot "
                        f"continue ({exc})",
                        index=index,
                        expected=batch.state.in_flight[0] if batch.state.in_flight else None,
                        actual=None,
                        step=batch.state.events[0].partition(":")[2] if batch.state.events else "",
                    )
                )
                return ReplayResult(
                    history.initial, tuple(states), tuple(issued_log), tuple(divergences)
                )
            issued = state.in_flight
        else:  # start (only first), cancel, wake: the state is unchanged
            issued = state.in_flight
        states.append(state)
        issued_log.append(issued)
    return ReplayResult(history.initial, tuple(states), tuple(issued_log), tuple(divergences))


def history(store: Store, run_id: str) -> History:
    """Read the history of run ``run_id`` from ``store``'s journal.

    Raises:
        UnknownRunError: no run has this id.
        JournalPrunedError: a retention prune removed the journal
            (:func:`stepflow.prune_runs`); the run itself is still in the store.
        CorruptHistoryError: the journal does not start with the run's first
            state (a run created before histories were recorded), or an entry
            cannot be read.

    """
    entries = store.history(run_id)
    if not entries or entries[0].seq != 1:
        notes = store.notes(run_id)
        if notes.pruned_through is not None:
            raise JournalPrunedError(run_id, notes.pruned_through, notes.pruned_at or 0.0)
    batches = [(entry.seq, loads_batch(entry.batch)) for entry in entries]
    return _assemble(run_id, batches)


def _assemble(run_id: str, batches: Sequence[tuple[int, Batch]]) -> History:
    if not batches or batches[0][1].op != "start" or batches[0][1].state is None:
        raise CorruptHistoryError(
            f"the history of run {run_id!r} does not start with the run's first state; "
            "it was created before stepflow recorded histories, or was truncated",
            problems=("$.batches[0]: expected a start entry",),
        )
    for seq, batch in batches[1:]:
        if batch.op == "start":
            raise CorruptHistoryError(
                f"the history of run {run_id!r} starts again at batch {seq}; a run starts "
                "once (are two histories joined?)",
                problems=(f"$.batches: a second start at {seq}",),
            )
    for (before, _), (after, _) in itertools.pairwise(batches):
        if after != before + 1:
            raise CorruptHistoryError(
                f"the history of run {run_id!r} has batch {after} right after batch {before}; "
                "batches must follow each other one by one (is a part missing or reordered?)",
                problems=(f"$.batches: {after} after {before}",),
            )
    initial = batches[0][1].state
    assert initial is not None
    return History(
        run_id, initial.flow, initial.fingerprint, initial, tuple(b for _, b in batches[1:])
    )


def dumps_history(history: History) -> str:
    """Serialize ``history`` to canonical JSON text, for fixtures and bug reports."""
    body = {
        "format": HISTORY_FORMAT,
        "run_id": history.run_id,
        "flow": history.flow,
        "fingerprint": history.fingerprint,
        "initial": unstructure_state(history.initial),
        "batches": [
            {"seq": seq, **orjson.loads(dumps_batch(batch))}
            for seq, batch in enumerate(history.batches, start=2)
        ],
    }
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).decode() + "\n"


def loads_history(text: str | bytes) -> History:
    """Read a history written by :func:`dumps_history`.

    Raises:
        CorruptHistoryError: the text is not a history (truncated, malformed, of
            an unknown format), or its batches are out of order.

    """
    try:
        raw: Any = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise CorruptHistoryError(
            f"a history file must be the JSON `stepflow export` wrote; this is not JSON ({exc}) "
            "(truncated?)",
            problems=(f"$: {exc}",),
        ) from exc
    if type(raw) is not dict or raw.get("format") != HISTORY_FORMAT:
        raise CorruptHistoryError(
            f"not a stepflow history of format {HISTORY_FORMAT}: {str(raw)[:80]!r}",
            problems=("$.format: expected 1",),
        )
    try:
        run_id, batches_raw = raw["run_id"], raw["batches"]
        initial = structure_state(raw["initial"])
        batches = [(b.pop("seq"), loads_batch(orjson.dumps(b))) for b in batches_raw]
        if type(run_id) is not str or any(type(seq) is not int for seq, _ in batches):
            raise TypeError("run_id must be a str and every seq an int")
    except (KeyError, TypeError, AttributeError, CorruptStateError) as exc:
        raise CorruptHistoryError(
            f"the history is malformed: {type(exc).__name__}: {exc}",
            problems=(f"$: {exc}",),
        ) from exc
    assembled = _assemble(run_id, [(1, Batch("start", None, state=initial)), *batches])
    if (raw.get("flow"), raw.get("fingerprint")) != (assembled.flow, assembled.fingerprint):
        raise CorruptHistoryError(
            "the history's flow and fingerprint do not match its first state's",
            problems=("$.flow/$.fingerprint: mismatch with $.initial",),
        )
    return assembled
