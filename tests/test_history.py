"""Histories: a recorded run replays exactly, and replay catches edits where the run went.

* Recorded through a store by the real :class:`~stepflow.Worker`, any run of a
  random flow replays to every state that was saved, and its history survives
  export and import byte for byte.
* A random edit of the flow (a step renamed, inserted, removed, a ``case`` turned
  into a ``do``) is reported by replay exactly when the recorded run went through
  the edited part, at the batch where it did; each test states its rule.
* Golden histories of the demo pipeline (``tests/fixtures/histories/<version>/``,
  one directory per version of the demo's flow) replay to the states recorded
  with them, against the definition they were recorded with. Regenerate them
  with ``STEPFLOW_UPDATE_GOLDEN=1 pytest tests/test_history.py -k golden``.
* Changes a run in flight survives (timing) and bad input (truncated, reordered,
  of another flow) are handled as documented.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import orjson
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from strategies import (
    START,
    HandlerKey,
    Outcome,
    Raises,
    Returns,
    World,
    definitions,
    scripts,
    specs,
)

import stepflow
from stepflow import (
    CorruptHistoryError,
    FakeClock,
    FlowDefinition,
    FlowMismatchError,
    History,
    ReplayDivergence,
    RetryPolicy,
    RunContext,
    State,
    Worker,
    dumps,
    dumps_history,
    history,
    loads,
    loads_history,
    replay,
)
from stepflow.codec import Batch, dumps_batch
from stepflow.core.choice import case_key
from stepflow.core.compile import scope_name
from stepflow.core.definition import completed_event, start_event
from stepflow.core.messages import (
    AwaitEvent,
    Command,
    Effect,
    EventReceived,
    HandlerReturned,
    TimerFired,
)
from stepflow.core.spec import Case, Do, Finally, Group, Item, LoopUntil, Retry, Saga, Steps
from stepflow.demo import Systems, demo_inputs
from stepflow.demo import flow as demo_flow
from stepflow.demo_v1 import demo_inputs as demo_v1_inputs
from stepflow.demo_v1 import flow as demo_v1_flow
from stepflow.runtime.runs import cancel_run, resume_run, start_run
from stepflow.runtime.worker import StepReport
from stepflow.stores import MemoryStore
from stepflow.stores.base import RunRecord, Save
from stepflow.testing import scripted_flow

Script = dict[HandlerKey, tuple[Outcome, ...]]

RUN = "run-1"


def _unused(*_: Any) -> Any:
    raise AssertionError("only compiled: never called")


# -- recording ---------------------------------------------------------------------


def record(
    definition: FlowDefinition, script: Script, *, run_id: str = RUN
) -> tuple[MemoryStore, list[State]]:
    """Run ``definition`` by ``script`` with a real worker on a memory store.

    Returns the store and every state the worker saved, in order.
    """
    world = World(script, FakeClock(START))
    flow = scripted_flow(definition, world)
    saved: list[State] = []
    store = _DeliveriesSeen(definition, saved)
    first = start_run(store, flow, None, run_id=run_id, clock=world.clock)
    asked: set[int] = set()

    def send_scripted(state: State) -> None:
        # A run reaching a wait for an event is sent the event, as scripted (a
        # timed wait scripted to time out gets none: the worker times it out).
        for command in state.in_flight:
            if type(command) is AwaitEvent and command.id not in asked:
                asked.add(command.id)
                answer = world.execute(command)
                if type(answer) is EventReceived:
                    stepflow.send_event(
                        store, run_id, answer.name, answer.payload, clock=world.clock
                    )

    def on_step(report: StepReport) -> None:
        # One report per effect; a batch answering several commands saves one state.
        # (The states that deliveries of events saved were seen as they were saved.)
        if type(report.effect) is not EventReceived and (
            not saved or saved[-1] is not report.state
        ):
            saved.append(report.state)
        send_scripted(report.state)

    store.delivered = send_scripted
    send_scripted(loads(first.state, definition))
    worker = Worker(store, [flow], clock=world.clock, concurrency=1, on_step=on_step)
    worker.run_sync(until_idle=True, handle_signals=False)
    return store, saved


class _DeliveriesSeen(MemoryStore):
    """A memory store that adds each state a delivery of events saved to ``saved``.

    A delivery that only fills the mailbox (its wait was dropped meanwhile)
    answers no command, so ``on_step`` cannot report it.
    """

    def __init__(self, definition: FlowDefinition, saved: list[State]) -> None:
        super().__init__()
        self._definition, self._saved = definition, saved
        # Called with each state a delivery saved (it may wait for the next event).
        self.delivered: Callable[[State], None] = lambda state: None

    def save_many(self, saves: Sequence[Save], *, now: float) -> list[RunRecord | BaseException]:
        results = super().save_many(saves, now=now)
        for save, result in zip(saves, results, strict=True):
            if save.delivered is not None and not isinstance(result, BaseException):
                state = loads(save.state, self._definition)
                self._saved.append(state)
                self.delivered(state)
        return results


def stored_state(store: MemoryStore, definition: FlowDefinition, run_id: str = RUN) -> State:
    return loads(store.load(run_id).state, definition)


def anonymous(state: State) -> State:
    """``state`` without the fingerprint it was made under (which every edit changes)."""
    return state._replace(fingerprint="")


# -- replay gives back every saved state -------------------------------------------


@given(st.data())
def test_replaying_a_recorded_run_gives_back_every_saved_state(data: st.DataObject) -> None:
    definition = data.draw(definitions(calls=False))  # (a worker records: it serves no child flow)
    script = data.draw(scripts(definition))
    store, saved = record(definition, script)
    recorded = history(store, RUN)
    assert (recorded.run_id, recorded.flow) == (RUN, definition.name)
    assert recorded.fingerprint == definition.fingerprint
    assert len(recorded.batches) == len(saved)  # one effect batch per saved step

    result = replay(definition, recorded)

    assert result.ok, result.divergences
    assert list(result.states) == saved
    assert [dumps(s) for s in result.states] == [dumps(s) for s in saved]
    assert result.final == stored_state(store, definition)
    assert result.final.status in ("completed", "failed")
    # What was in flight after each batch is what each saved state asked for.
    assert [tuple(c) for c in result.commands] == [s.in_flight for s in saved]

    text = dumps_history(recorded)
    assert loads_history(text) == recorded
    assert dumps_history(loads_history(text)) == text
    assert loads_history(text.encode()) == recorded
    assert replay(definition, loads_history(text)) == result


def test_resumes_and_cancellations_are_replayed() -> None:
    """A failed run resumed to completion, and a cancelled one, replay to the states stored."""
    spec = stepflow.named("ops/v1").do("a", _unused).do("b", _unused).do("c", _unused)
    definition = stepflow.new(spec).definition
    world = World({("do", "ops/v1/b"): (Raises("down"), Raises("down"))}, FakeClock(START))
    flow = scripted_flow(definition, world)
    store = MemoryStore()
    start_run(store, flow, None, run_id="resumed", clock=world.clock)
    start_run(store, flow, None, run_id="cancelled", clock=world.clock)

    def drive() -> None:
        worker = Worker(store, [flow], clock=world.clock, concurrency=1)
        worker.run_sync(until_idle=True, handle_signals=False)

    drive()  # both fail at b
    world.clock.advance(60)
    resume_run(store, flow, "resumed", clock=world.clock)
    cancel_run(store, "cancelled", clock=world.clock)
    drive()

    resumed = history(store, "resumed")
    assert [b.op for b in resumed.batches] == ["effects", "effects", "resume", "effects", "effects"]
    result = replay(definition, resumed)
    assert result.ok, result.divergences
    assert result.states[1].status == "failed"
    assert result.states[2].status == "running"  # the resume issued b again, with a new id
    assert result.states[2].in_flight[0].id == result.states[1].seq + 1
    assert result.final == stored_state(store, definition, "resumed")
    assert result.final.status == "completed"

    cancelled = history(store, "cancelled")
    assert [b.op for b in cancelled.batches][-1] == "cancel"
    result = replay(definition, cancelled)
    assert result.ok
    assert result.final == stored_state(store, definition, "cancelled")  # kept as it was
    assert loads_history(dumps_history(cancelled)) == cancelled


# -- edits: detected exactly when the run went through them ------------------------

#: Each example of the edit properties runs a worker and replays several times:
#: half the profile's examples keep the module quick (the thorough profile still
#: runs a thousand).
edits = settings(max_examples=max(10, settings().max_examples // 2))

#: Where an item sits in a spec tree: its index in the root, then in each body.
Location = tuple[int, ...]


#: The items that hold steps of their own.
GROUPS = (Case, Retry, LoopUntil, Group)


def body_of(item: Item) -> Steps:
    assert isinstance(item, GROUPS)
    return item.body


def body_at(spec: Steps, where: Location) -> Steps:
    """The steps of the group at ``where`` (the root for ``()``)."""
    steps = spec
    for index in where:
        steps = body_of(steps.items[index])
    return steps


def item_at(spec: Steps, where: Location) -> Item:
    return body_at(spec, where[:-1]).items[where[-1]]


def item_path(spec: Steps, where: Location) -> str:
    """The scope path of the item at ``where``, as compile gives it."""
    path, steps = spec.name, spec
    for depth, index in enumerate(where):
        item = steps.items[index]
        path = f"{path}/{scope_name(item)}"
        if depth < len(where) - 1:
            if isinstance(item, (Case, LoopUntil)):
                path += "/steps"  # case and loop_until run their group in a child scope
            steps = body_of(item)
    return path


def body_path(spec: Steps, where: Location) -> str:
    """The scope path of the steps of the group at ``where``."""
    if not where:
        return spec.name
    steps_scope = isinstance(item_at(spec, where), (Case, LoopUntil))
    return item_path(spec, where) + ("/steps" if steps_scope else "")


def locations(steps: Steps, prefix: Location = ()) -> Iterator[Location]:
    """Every item of the tree, parents before their children."""
    for index, item in enumerate(steps.items):
        yield (*prefix, index)
        if isinstance(item, GROUPS):
            yield from locations(item.body, (*prefix, index))


def groups(spec: Steps) -> list[Location]:
    """Every body of the tree: the root's, then each group's."""
    return [(), *(w for w in locations(spec) if isinstance(item_at(spec, w), GROUPS))]


def change_body(spec: Steps, where: Location, change: Callable[[Steps], Steps]) -> Steps:
    """A copy of ``spec`` with the steps at ``where`` replaced by ``change(steps)``."""
    if not where:
        return change(spec)
    index, rest = where[0], where[1:]
    item = spec.items[index]
    assert isinstance(item, GROUPS)
    changed = attrs.evolve(item, body=change_body(item.body, rest, change))
    return attrs.evolve(spec, items=(*spec.items[:index], changed, *spec.items[index + 1 :]))


def replace_item(spec: Steps, where: Location, new: tuple[Item, ...]) -> Steps:
    """A copy of ``spec`` with the item at ``where`` replaced by ``new`` (none: removed)."""
    index = where[-1]
    return change_body(
        spec,
        where[:-1],
        lambda s: attrs.evolve(s, items=(*s.items[:index], *new, *s.items[index + 1 :])),
    )


def within(path: str, scope: str) -> bool:
    return path == scope or path.startswith(scope + "/")


def touches(command: Command, scope: str) -> bool:
    """Whether ``command`` belongs to ``scope``: its step, or the position it waits at."""
    return within(command.step, scope) or within(command.event.partition(":")[2], scope)


def first_answered_within(recorded: History, scope: str) -> int | None:
    """The first batch answering a command of ``scope`` (``-1``: the first state's), or None."""
    if any(touches(c, scope) for c in recorded.initial.in_flight):
        return -1
    for index, batch in enumerate(recorded.batches):
        if any(touches(c, scope) for c in batch.answered):
            return index
    return None


def hops(definition: FlowDefinition, event: str) -> list[str]:
    """The events a run passes from ``event`` to where it rests (static hops followed)."""
    passed = [event]
    while (transition := definition.table.get(event)) is not None and transition.is_static:
        event = transition.destinations[0].event
        passed.append(event)
    return passed


def moved(
    definition: FlowDefinition, command: Command, effect: Effect, before: State, after: State
) -> list[str]:
    """The events the run passed when ``effect`` answered ``command``."""
    transition = definition.table[command.event]
    to = [d.event for d in transition.destinations]
    if type(effect) is EventReceived:
        return hops(definition, to[0])  # the wait took its event and moved on
    if type(effect) is TimerFired and command.kind == "wait_event":
        if len(to) > 1:
            return hops(definition, to[1])  # timed out: its on_timeout steps
    elif type(effect) is TimerFired or (type(effect) is HandlerReturned and command.kind == "do"):
        return hops(definition, to[0])  # a recorded do value is JSON: the step is done
    if type(effect) is HandlerReturned and command.kind == "switch":
        key, cases = case_key(effect.value), transition.cases
        if key is not None:  # the case of that value, else the default or the switch's end
            return hops(definition, to[cases.index(key) if key in cases else len(cases)])
    if type(effect) is HandlerReturned and command.kind != "on_error":
        if effect.value is True:
            return hops(definition, to[0])
        if effect.value is False and command.kind != "wait_for":
            return hops(definition, to[1])
    # A failure, a poll found false, an on_error answer: the run stays, fails, asks
    # on_error, or restarts a retry group (the one whose attempt count went up).
    for scope in transition.retry_scopes:
        if after.attempts.get(scope, 0) > before.attempts.get(scope, 0):
            return hops(definition, start_event(scope))
    # Or a catch took the error (it recorded it anew): its handler starts.
    for scope in transition.catch_scopes:
        if after.outputs.get(scope) is not before.outputs.get(scope):
            return hops(definition, start_event(scope + "/handler"))
    return []


def passages(definition: FlowDefinition, recorded: History) -> list[set[str]]:
    """The events the recorded run passed: in reaching its first state, then in each batch."""
    states = replay(definition, recorded).states
    passed = [set(hops(definition, definition.start_event))]
    befores = (recorded.initial, *states)[: len(states)]
    for batch, before, after in zip(recorded.batches, befores, states, strict=True):
        assert batch.op == "effects"
        # A delivery of events lists the waits they answered, not one per event.
        effects = batch.effects
        if effects and type(effects[0]) is EventReceived:
            effects = tuple(effects[: len(batch.answered)])
        passed.append(
            {
                e
                for c, f in zip(batch.answered, effects, strict=True)
                for e in moved(definition, c, f, before, after)
            }
        )
    return passed


def cases(spec: Steps) -> list[Location]:
    """Every ``case`` of the tree that could become a ``do`` of the same name."""
    return [
        where
        for where in locations(spec)
        if isinstance(item := item_at(spec, where), Case)
        # A sibling whose scope name is the bare name would clash with the do.
        and all(scope_name(s) != item.name for s in body_at(spec, where[:-1]).items)
    ]


@st.composite
def recorded_runs(
    draw: st.DrawFn, having: Callable[[Steps], object] = bool
) -> tuple[Steps, FlowDefinition, History, list[State]]:
    """A random spec (``having`` something), run by a random script with a worker.

    Flows without parallel or map groups only: the edit properties below locate
    an edit by the one position a run holds, batch by batch. A run of several
    positions is covered by the replay property above and tests/test_groups.py.
    """
    # (Its worker serves no child flow; the edit arithmetic below follows static
    # hops, not the cleanup transitions of finally_ groups and sagas.)
    spec = draw(specs(fork=False, calls=False).map(_plain).filter(having))
    definition = stepflow.new(spec).definition
    # The tests' own path arithmetic agrees with the compiler's.
    assert all(start_event(item_path(spec, w)) in definition.table for w in locations(spec))
    assert all(start_event(body_path(spec, w)) in definition.table for w in groups(spec))
    store, saved = record(definition, draw(scripts(definition)))
    return spec, definition, history(store, RUN), saved


def _plain(value: Any) -> Any:
    """``value`` (a spec) with each finally_ and saga made a plain group, and no compensation."""
    # (The group keeps the scope name: "<name>Finally" can be no other step's.)
    if isinstance(value, Finally):
        return Group(value.name + "Finally", _plain(value.body))
    if isinstance(value, Saga):
        return Group(value.name + "Saga", _plain(value.body))
    if isinstance(value, Do):
        return Do(value.name, value.fn, value.timeout)
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if attrs.has(type(value)):
        return attrs.evolve(
            value, **{a.name: _plain(getattr(value, a.name)) for a in attrs.fields(type(value))}
        )
    return value


def some_item(spec: Steps, recorded: History) -> st.SearchStrategy[Location]:
    """An item of ``spec``; half the time one the run's first state does not wait in.

    (Else most draws would edit the flow's first step, and few runs would reach
    the edited part at a later batch.)
    """
    places = list(locations(spec))
    later = [w for w in places if first_answered_within(recorded, item_path(spec, w)) != -1]
    return st.sampled_from(places) | st.sampled_from(later or places)


def check_detected_at(
    edited: Steps, recorded: History, saved: list[State], expected: int | None
) -> None:
    """Replay ``recorded`` against ``edited``: it diverges first at ``expected``, or not at all."""
    result = replay(stepflow.new(edited).definition, recorded)
    if expected is None:
        event("not detected: the run did not go there")
        assert result.ok, result.divergences
        assert [anonymous(s) for s in result.states] == [anonymous(s) for s in saved]
    else:
        event("detected at the first state" if expected == -1 else "detected at a batch")
        assert not result.ok
        assert [d.index for d in result.divergences] == [expected]
        # The replay stopped there; up to the batch that led into the edited part,
        # every state is the one the run saved.
        assert len(result.states) == max(expected, 0)
        before = max(expected - 1, 0)
        assert [anonymous(s) for s in result.states[:before]] == [
            anonymous(s) for s in saved[:before]
        ]


@edits
@given(recorded_runs(having=lambda s: s.items), st.data())
def test_a_renamed_step_is_detected_exactly_when_the_run_used_it(
    run: tuple[Steps, FlowDefinition, History, list[State]], data: st.DataObject
) -> None:
    """Renaming the step at path P is detected iff the run answered a command in P.

    A command is in P when its step or its position is P or inside it (a group's
    steps, a retry's ``on_error``). Step paths are built from names, not positions,
    so nothing else changes: replay diverges at the first batch that answered a
    command in P (``-1`` when the run's first state already waits in P), and
    replays every state otherwise. A group that issues no command at all (an
    empty one) may be renamed freely: no run can tell.
    """
    spec, _, recorded, saved = run
    where = data.draw(some_item(spec, recorded))
    item = item_at(spec, where)
    edited = replace_item(spec, where, (attrs.evolve(item, name=item.name + "q"),))  # no q in names
    expected = first_answered_within(recorded, item_path(spec, where))
    check_detected_at(edited, recorded, saved, expected)


@edits
@given(recorded_runs(having=lambda s: s.items), st.data())
def test_a_removed_step_is_detected_exactly_when_the_run_used_it(
    run: tuple[Steps, FlowDefinition, History, list[State]], data: st.DataObject
) -> None:
    """Removing the step at path P is detected iff the run answered a command in P.

    The rule and the index are those of a rename: the run that reached P waits
    there for a command the edited flow never issues (it goes on to the next step
    instead), and a run that never reached P is not affected.
    """
    spec, _, recorded, saved = run
    where = data.draw(some_item(spec, recorded))
    edited = replace_item(spec, where, ())
    expected = first_answered_within(recorded, item_path(spec, where))
    check_detected_at(edited, recorded, saved, expected)


@edits
@given(recorded_runs(having=cases), st.data())
def test_a_case_turned_into_a_do_is_detected_exactly_when_the_run_reached_it(
    run: tuple[Steps, FlowDefinition, History, list[State]], data: st.DataObject
) -> None:
    """A ``case`` ``c`` turned into a ``do`` ``c`` is detected iff the run reached the case.

    A run reaching a case always answers its condition, a command of the case's
    scope ``cCase``, which the edited flow (a do step ``c``) no longer has: the
    rule is the rename's, with P the case's scope.
    """
    spec, _, recorded, saved = run
    where = data.draw(st.sampled_from(cases(spec)))
    item = item_at(spec, where)
    edited = replace_item(spec, where, (Do(item.name, _unused),))
    expected = first_answered_within(recorded, item_path(spec, where))
    check_detected_at(edited, recorded, saved, expected)


@edits
@given(recorded_runs(), st.data())
def test_an_inserted_step_is_detected_exactly_when_the_run_passed_its_place(
    run: tuple[Steps, FlowDefinition, History, list[State]], data: st.DataObject
) -> None:
    """A step inserted at index i of a scope is detected iff the run passed there, then went on.

    The run passes the place when it leaves the event that, in the recorded flow,
    leads to the item at i (``start:<scope>`` for i = 0, else
    ``completed:<item i-1>``), which the edited flow leads to the new step
    instead. The events passed are read off the recorded run: each batch's
    answered command, its effect, and the states before and after (see
    :func:`moved`), following the flow's static hops.

    * Passed in reaching the first state: detected at ``-1`` (the edited flow
      starts elsewhere).
    * Passed in batch k, not the last: detected at k + 1, where the run answered
      its next command and the edited flow asks for the new step (with the same
      command id: ids count commands, so they shift only after the new step).
    * Passed only in the last batch: not detected, since no later batch says
      what the run did next. The replay ends waiting for the new step: that is
      where a run stopped there would continue under the edited flow.
    * Never passed: not detected, and every state replays.
    """
    spec, definition, recorded, saved = run
    passed_by_batch = passages(definition, recorded)

    def place_of(where: Location, index: int) -> str:
        if index == 0:
            return start_event(body_path(spec, where))
        return completed_event(item_path(spec, (*where, index - 1)))

    places = [(w, i) for w in groups(spec) for i in range(len(body_at(spec, w).items) + 1)]
    # Half the draws avoid the places the first state already passed (the start
    # of the flow, mostly), which would leave few runs to check at later batches.
    later = [(w, i) for w, i in places if place_of(w, i) not in passed_by_batch[0]]
    where, index = data.draw(st.sampled_from(places) | st.sampled_from(later or places))
    place, scope = place_of(where, index), body_path(spec, where)
    inserted = Do("inserted", _unused)
    edited = change_body(
        spec, where, lambda s: attrs.evolve(s, items=(*s.items[:index], inserted, *s.items[index:]))
    )
    passed = [k for k, events in enumerate(passed_by_batch, start=-1) if place in events]
    if not passed:
        check_detected_at(edited, recorded, saved, None)
    elif passed[0] == -1:
        check_detected_at(edited, recorded, saved, -1)
    elif passed[0] == len(recorded.batches) - 1:
        event("passed in the last batch only")
        result = replay(stepflow.new(edited).definition, recorded)
        assert result.ok, result.divergences
        assert [anonymous(s) for s in result.states[:-1]] == [anonymous(s) for s in saved[:-1]]
        (waiting,) = result.final.in_flight
        assert waiting.step == f"{scope}/inserted"
    else:
        check_detected_at(edited, recorded, saved, passed[0] + 1)


def test_the_edit_rules_on_a_chain() -> None:
    """The rules above, on a three-step chain whose run fails at its second step."""
    chain = stepflow.named("chain/v1")
    definition = stepflow.new(chain.do("a", _unused).do("b", _unused).do("c", _unused)).definition
    store, _ = record(definition, {("do", "chain/v1/b"): (Raises("x"),)})
    recorded = history(store, RUN)
    assert [b.answered[0].step for b in recorded.batches] == ["chain/v1/a", "chain/v1/b"]

    def replayed(edited: Steps) -> stepflow.ReplayResult:
        return replay(stepflow.new(edited).definition, recorded)

    renamed_c = chain.do("a", _unused).do("b", _unused).do("z", _unused)
    assert replayed(renamed_c).ok  # the run never reached c
    renamed_b = chain.do("a", _unused).do("z", _unused).do("c", _unused)
    assert [d.index for d in replayed(renamed_b).divergences] == [1]
    renamed_a = chain.do("z", _unused).do("b", _unused).do("c", _unused)
    assert [d.index for d in replayed(renamed_a).divergences] == [-1]  # the first state waits at a
    without_b = chain.do("a", _unused).do("c", _unused)
    assert [d.index for d in replayed(without_b).divergences] == [1]
    first = chain.do("new", _unused).do("a", _unused).do("b", _unused).do("c", _unused)
    (divergence,) = replayed(first).divergences
    assert (divergence.index, divergence.step) == (-1, "chain/v1/a")
    assert divergence.actual is not None
    assert divergence.actual.step == "chain/v1/new"
    between = chain.do("a", _unused).do("new", _unused).do("b", _unused).do("c", _unused)
    assert [d.index for d in replayed(between).divergences] == [1]
    after_b = chain.do("a", _unused).do("b", _unused).do("new", _unused).do("c", _unused)
    assert replayed(after_b).ok  # the run failed at b: it never went past it


# -- changed definitions that runs survive ---------------------------------------------


def polling(every: float) -> FlowDefinition:
    spec = stepflow.named("poll/v1").do("a", _unused).wait_for("ready", _unused, every=every)
    return stepflow.new(spec.do("b", _unused)).definition


def test_a_changed_poll_interval_replays_with_other_wake_times() -> None:
    """Replay checks commands, not timing: polls are answered whenever they were.

    A new ``every=`` changes the fingerprint and when the next poll is due
    (``wake_at``), but not which commands the run answers, so runs in flight are
    compatible; every replayed state is the recorded one but for those two fields.
    """
    before, after = polling(1.0), polling(7.5)
    assert before.fingerprint != after.fingerprint
    store, saved = record(before, {("wait_for", "poll/v1/readyWaitFor"): (Returns(False),) * 3})
    result = replay(after, history(store, RUN))
    assert result.ok, result.divergences
    assert [s._replace(fingerprint="", wake_at=None) for s in result.states] == [
        s._replace(fingerprint="", wake_at=None) for s in saved
    ]
    polls = [
        (old.wake_at, new.wake_at)
        for old, new in zip(saved, result.states, strict=True)
        if old.wake_at
    ]
    assert len(polls) == 3
    assert all(new - old == pytest.approx(6.5) for old, new in polls)  # type: ignore[operator]
    assert result.final.fingerprint == after.fingerprint


def sleeping(seconds: float) -> FlowDefinition:
    spec = stepflow.named("nap/v1").do("a", _unused).sleep("nap", seconds).do("b", _unused)
    return stepflow.new(spec).definition


def test_a_changed_sleep_diverges_only_for_runs_that_slept() -> None:
    """A timer's time is part of its command: a run that slept diverges at its Wake."""
    store, _ = record(sleeping(5), {})
    slept = history(store, RUN)
    (divergence,) = replay(sleeping(9), slept).divergences
    assert divergence.index == 1  # the batch answering the Wake
    assert divergence.expected is not None
    assert divergence.actual is not None
    assert (divergence.expected.kind, divergence.step) == ("sleep", "nap/v1/nap")
    assert divergence.actual.at - divergence.expected.at == 4  # type: ignore[union-attr]

    store, _ = record(sleeping(5), {("do", "nap/v1/a"): (Raises("x"),)})
    assert replay(sleeping(9), history(store, RUN)).ok  # failed before the sleep


def test_a_step_appended_after_where_the_run_stopped() -> None:
    """A step added past the run's end: a run that failed earlier replays unchanged.

    A run that completed replays without divergence too, since nothing after its
    last batch is recorded, but its replay ends at the new step, where the new
    version would go on.
    """
    base = stepflow.named("grow/v1").do("a", _unused).do("b", _unused)
    grown = stepflow.new(base.do("notify", _unused)).definition
    store, saved = record(stepflow.new(base).definition, {("do", "grow/v1/b"): (Raises("x"),)})
    result = replay(grown, history(store, RUN))
    assert result.ok
    assert [anonymous(s) for s in result.states] == [anonymous(s) for s in saved]
    assert result.final.status == "failed"

    store, saved = record(stepflow.new(base).definition, {})
    result = replay(grown, history(store, RUN))
    assert result.ok
    assert saved[-1].status == "completed"
    assert result.final.status == "running"
    assert [c.step for c in result.final.in_flight] == ["grow/v1/notify"]


def retrying(attempts: int) -> FlowDefinition:
    policy = RetryPolicy(max_attempts=attempts, initial_interval=1)
    spec = stepflow.named("retry/v1").retry("r", policy, stepflow.steps().do("a", _unused))
    return stepflow.new(spec).definition


def test_a_retry_policy_change_diverges_where_the_run_failed_for_good() -> None:
    """More attempts: a run that failed and was resumed diverges at the resume.

    Under the new policy the failure is retried instead of failing the run, so
    the recorded resume cannot happen (a divergence, not a crash). A run that
    never ran out of attempts replays, with other backoff times.
    """
    definition = retrying(2)
    world = World({("do", "retry/v1/rRetry/a"): (Raises("x"),) * 2}, FakeClock(START))
    flow = scripted_flow(definition, world)
    store = MemoryStore()
    start_run(store, flow, None, run_id=RUN, clock=world.clock)
    Worker(store, [flow], clock=world.clock).run_sync(until_idle=True, handle_signals=False)
    assert store.load(RUN).status == "failed"
    resume_run(store, flow, RUN, clock=world.clock)
    Worker(store, [flow], clock=world.clock).run_sync(until_idle=True, handle_signals=False)
    recorded = history(store, RUN)
    assert replay(definition, recorded).final.status == "completed"

    (divergence,) = replay(retrying(3), recorded).divergences
    assert [b.op for b in recorded.batches][divergence.index] == "resume"
    assert divergence.expected is None
    assert divergence.actual is not None
    assert divergence.actual.step == "retry/v1/rRetry/a"

    store, saved = record(definition, {("do", "retry/v1/rRetry/a"): (Raises("x"),)})
    result = replay(retrying(3), history(store, RUN))
    assert result.ok
    assert result.final.status == saved[-1].status == "completed"


# -- divergences ---------------------------------------------------------------------


def four_steps(*names: str) -> FlowDefinition:
    spec = stepflow.named("four/v1")
    for name in names:
        spec = spec.do(name, _unused)
    return stepflow.new(spec).definition


def test_collect_all_lists_every_divergence() -> None:
    store, _ = record(four_steps("a", "b", "c", "d"), {})
    recorded = history(store, RUN)
    edited = four_steps("a", "x", "c", "y")

    first = replay(edited, recorded)
    assert [d.index for d in first.divergences] == [1]
    assert len(first.states) == 1  # stopped before the diverging batch

    every = replay(edited, recorded, collect_all=True)
    assert [(d.index, d.step) for d in every.divergences] == [(1, "four/v1/b"), (3, "four/v1/d")]
    assert every.divergences[0] == first.divergences[0]
    assert len(every.states) == 4
    assert not every.ok


def test_raise_on_divergence_raises_the_first_with_what_explains_it() -> None:
    store, _ = record(four_steps("a", "b", "c", "d"), {})
    recorded = history(store, RUN)
    with pytest.raises(ReplayDivergence) as caught:
        replay(four_steps("a", "b", "x", "d"), recorded, raise_on_divergence=True)
    divergence = caught.value
    assert isinstance(divergence, AssertionError)
    assert divergence.index == 2
    assert divergence.step == "four/v1/c"
    assert divergence.expected == recorded.batches[2].answered[0]
    assert divergence.actual is not None
    assert (divergence.actual.id, divergence.actual.step) == (divergence.expected.id, "four/v1/x")
    assert "four/v1/c" in str(divergence)
    assert "four/v1/x" in str(divergence)


def test_a_run_that_ended_early_is_a_divergence_with_nothing_issued() -> None:
    store, _ = record(four_steps("a", "b", "c", "d"), {})
    (divergence,) = replay(four_steps("a", "b"), history(store, RUN)).divergences
    assert (divergence.index, divergence.actual) == (2, None)
    assert "nothing (the run is over)" in str(divergence)


# -- bad input ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported() -> tuple[FlowDefinition, str]:
    definition = four_steps("a", "b", "c", "d")
    store, _ = record(definition, {})
    return definition, dumps_history(history(store, RUN))


def test_a_truncated_history_is_corrupt(exported: tuple[FlowDefinition, str]) -> None:
    _, text = exported
    for cut in (1, len(text) // 3, len(text) // 2, len(text) - 3):
        with pytest.raises(CorruptHistoryError, match="not JSON"):
            loads_history(text[:cut])
    with pytest.raises(CorruptHistoryError):
        loads_history("")


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda raw: [], id="not-an-object"),
        pytest.param(lambda raw: {**raw, "format": 99}, id="unknown-format"),
        pytest.param(lambda raw: {k: v for k, v in raw.items() if k != "initial"}, id="no-start"),
        pytest.param(lambda raw: {**raw, "initial": {"format": 2}}, id="bad-start"),
        pytest.param(lambda raw: {**raw, "run_id": 7}, id="run-id"),
        pytest.param(lambda raw: {**raw, "batches": {"2": {}}}, id="batches-not-a-list"),
        pytest.param(lambda raw: {**raw, "fingerprint": "sha256:0"}, id="fingerprint"),
        pytest.param(lambda raw: {**raw, "flow": "other/v1"}, id="flow"),
    ],
)
def test_a_malformed_history_is_corrupt(
    exported: tuple[FlowDefinition, str], change: Callable[[Any], Any]
) -> None:
    _, text = exported
    with pytest.raises(CorruptHistoryError):
        loads_history(orjson.dumps(change(orjson.loads(text))))


def edit_batches(text: str, change: Callable[[list[Any]], None]) -> bytes:
    raw = orjson.loads(text)
    change(raw["batches"])
    return orjson.dumps(raw)


def test_batches_out_of_order_are_corrupt(exported: tuple[FlowDefinition, str]) -> None:
    definition, text = exported
    assert replay(definition, loads_history(edit_batches(text, lambda b: None))).ok

    def swap_seqs(batches: list[Any]) -> None:
        batches[1]["seq"], batches[2]["seq"] = batches[2]["seq"], batches[1]["seq"]

    def swap_batches(batches: list[Any]) -> None:
        batches[1], batches[2] = batches[2], batches[1]

    def drop_one(batches: list[Any]) -> None:
        del batches[1]

    def repeat_one(batches: list[Any]) -> None:
        batches.insert(1, batches[1])

    def renumber(batches: list[Any]) -> None:
        batches[0]["seq"] = 1

    def seq_as_text(batches: list[Any]) -> None:
        batches[0]["seq"] = "2"

    for change in (swap_seqs, swap_batches, drop_one, repeat_one, renumber):
        with pytest.raises(CorruptHistoryError, match="batch"):
            loads_history(edit_batches(text, change))
    with pytest.raises(CorruptHistoryError, match="seq"):
        loads_history(edit_batches(text, seq_as_text))


def test_a_history_that_does_not_open_with_the_start_is_corrupt(
    exported: tuple[FlowDefinition, str],
) -> None:
    """A journal begun before histories were recorded; a history with a second start."""
    store = MemoryStore()
    state, _ = stepflow.advance(four_steps("a"), None, now=START)
    store.create_run(
        "old", "four/v1", dumps(state), input=None, status="running", wake_at=START, now=START
    )
    done, _ = stepflow.advance(four_steps("a"), state, (HandlerReturned(1, None, START),))
    batch = dumps_batch(
        Batch("effects", START, (HandlerReturned(1, None, START),), state.in_flight)
    )
    store.save(Save("old", 1, None, dumps(done), "completed", None, batch), now=START)
    assert [entry.seq for entry in store.history("old")] == [2]
    with pytest.raises(CorruptHistoryError, match="does not start with the run's first state"):
        history(store, "old")

    _, text = exported

    def second_start(batches: list[Any]) -> None:
        batches[1] = {
            "seq": batches[1]["seq"],
            **orjson.loads(dumps_batch(Batch("start", START, state=state))),
        }

    with pytest.raises(CorruptHistoryError, match="starts again"):
        loads_history(edit_batches(text, second_start))


def test_a_history_of_another_flow_is_refused(exported: tuple[FlowDefinition, str]) -> None:
    _, text = exported
    other = stepflow.new(stepflow.named("other/v1").do("a", _unused)).definition
    with pytest.raises(FlowMismatchError, match="four/v1") as caught:
        replay(other, loads_history(text))
    assert (caught.value.expected, caught.value.actual) == ("other/v1", "four/v1")


def test_a_first_state_the_definition_does_not_have_is_a_divergence(
    exported: tuple[FlowDefinition, str],
) -> None:
    _, text = exported
    (divergence,) = replay(four_steps("x", "b", "c", "d"), loads_history(text)).divergences
    assert (divergence.index, divergence.step, divergence.actual) == (-1, "four/v1/a", None)
    assert divergence.expected is not None
    assert divergence.expected.step == "four/v1/a"


# -- golden histories of the demo pipeline -------------------------------------------

GOLDEN = Path(__file__).parent / "fixtures" / "histories"
#: Each version of the demo's flow, with the runs recorded of it: one that deploys
#: cleanly, one already up to date, one that deploys through collector flakes.
#: ``deploy/v1`` (the seed pipeline the demo ran before its regions map) is kept in
#: :mod:`stepflow.demo_v1`, so its goldens keep replaying against the definition
#: they were recorded with (and are never rewritten).
GOLDEN_FLOWS = {"deploy-v1": demo_v1_flow, "deploy-v2": demo_flow}
_GOLDEN_INPUTS = {demo_v1_flow.name: demo_v1_inputs, demo_flow.name: demo_inputs}
GOLDEN_RUNS = {
    "deploy-v1": ("app-01", "app-05", "app-07"),
    "deploy-v2": ("app-01", "app-05", "app-04"),
}
GOLDEN_CASES = [(version, run_id) for version, runs in GOLDEN_RUNS.items() for run_id in runs]
_GOLDEN_APPS = 10  # the demo's fleet size the inputs are drawn from
_GOLDEN_START = 1_700_000_000.0


class InstantSystems(Systems):
    """The demo's simulated systems, answering at once: all time is the fake clock's."""

    async def call(self, ctx: RunContext) -> None:
        return None


def record_demo(run_id: str, flow: stepflow.Flow = demo_flow) -> tuple[History, list[State]]:
    """Run one application of the demo to its end on a fake clock; its history and states."""
    inputs = dict(_GOLDEN_INPUTS[flow.name](_GOLDEN_APPS))
    clock = FakeClock(_GOLDEN_START)
    store = MemoryStore()
    start_run(store, flow, inputs[run_id], run_id=run_id, clock=clock)
    saved: list[State] = []

    def on_step(report: StepReport) -> None:
        if not saved or saved[-1] is not report.state:  # one report per effect of a batch
            saved.append(report.state)

    # One command at a time: with several, how effects group into batches depends
    # on the timing of the event loop, and a golden must come out byte for byte.
    worker = Worker(
        store, [flow], context=InstantSystems(), clock=clock, concurrency=1, on_step=on_step
    )
    worker.run_sync(until_idle=True, handle_signals=False)
    return history(store, run_id), saved


def write_golden(*versions: str) -> None:
    """(Re)write the golden histories: ``<version>/<run>.json`` as exported, and its states.

    Only the versions named: a golden of a version the demo no longer runs is
    kept as it was recorded.
    """
    for version in versions:
        flow = GOLDEN_FLOWS[version]
        (GOLDEN / version).mkdir(parents=True, exist_ok=True)
        for run_id in GOLDEN_RUNS[version]:
            recorded, saved = record_demo(run_id, flow)
            (GOLDEN / version / f"{run_id}.json").write_text(dumps_history(recorded))
            states = "".join(dumps(s) + "\n" for s in saved)
            (GOLDEN / version / f"{run_id}.states.jsonl").write_text(states)


if os.environ.get("STEPFLOW_UPDATE_GOLDEN") == "1":
    write_golden("deploy-v2")


def test_recording_the_demo_is_deterministic() -> None:
    assert dumps_history(record_demo("app-07")[0]) == dumps_history(record_demo("app-07")[0])


@pytest.mark.parametrize(("version", "run_id"), GOLDEN_CASES)
def test_a_golden_demo_history_replays_identically(version: str, run_id: str) -> None:
    text = (GOLDEN / version / f"{run_id}.json").read_text()
    states = (GOLDEN / version / f"{run_id}.states.jsonl").read_text().splitlines()
    recorded = loads_history(text)
    definition = GOLDEN_FLOWS[version].definition
    assert dumps_history(recorded) == text  # the fixture is canonical

    result = replay(definition, recorded)

    assert result.ok, result.divergences
    assert result.final.status == "completed"
    assert [dumps(s) for s in result.states] == states
    assert result.final.outputs[f"{definition.name}/collectPreDeployStateRetry/getPreActualState"]


@pytest.mark.parametrize(("version", "run_id"), GOLDEN_CASES)
def test_the_demo_records_its_golden_history_again(version: str, run_id: str) -> None:
    # The demo's handlers still answer as they did when the golden was recorded.
    recorded, _ = record_demo(run_id, GOLDEN_FLOWS[version])
    assert dumps_history(recorded) == (GOLDEN / version / f"{run_id}.json").read_text()


@pytest.mark.parametrize("version", GOLDEN_FLOWS)
def test_the_golden_histories_cover_a_deployment_an_up_to_date_app_and_retries(
    version: str,
) -> None:
    batches = {
        run_id: loads_history((GOLDEN / version / f"{run_id}.json").read_text()).batches
        for run_id in GOLDEN_RUNS[version]
    }
    steps = {run_id: {c.step for b in batches[run_id] for c in b.answered} for run_id in batches}
    deploy = f"{GOLDEN_FLOWS[version].name}/deployCase/steps/createDeployRequest"
    clean, current, flaky = GOLDEN_RUNS[version]
    assert deploy in steps[clean]
    assert deploy in steps[flaky]
    assert deploy not in steps[current]
    raised = [type(e).__name__ for run in batches.values() for b in run for e in b.effects]
    assert raised.count("HandlerRaised") >= 2


def test_the_v2_golden_histories_fan_out_over_the_regions() -> None:
    # Each region is synced once, by its own command; several are in flight at once,
    # and some batches answer several of them.
    inputs = dict(demo_inputs(_GOLDEN_APPS))
    regions = f"{demo_flow.name}/deployCase/steps/regionsMap"
    for run_id in ("app-01", "app-04"):
        recorded = loads_history((GOLDEN / "deploy-v2" / f"{run_id}.json").read_text())
        synced = [
            c.step for b in recorded.batches for c in b.answered if c.step.endswith("/syncRegion")
        ]
        count = len(inputs[run_id]["regions"])
        assert synced == [f"{regions}/steps[{i}]/syncRegion" for i in range(count)]
        result = replay(demo_flow.definition, recorded)
        assert max(len(state.in_flight) for state in result.states) == 2  # two regions at once
        assert [r["region"] for r in result.final.outputs[regions]] == inputs[run_id]["regions"]
