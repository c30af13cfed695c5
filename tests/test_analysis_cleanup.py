"""stepflow.analysis on flows with finally_, sagas and cancellation: explore(cancel=, events=).

The random flows here wrap the project's strategies in ``finally_`` groups and
sagas (with ``compensate=`` steps) until :func:`stepflow.testing.flows` draws
them itself.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import items

import stepflow
from stepflow.analysis import (
    AnalysisError,
    Happening,
    Invariant,
    Observation,
    always,
    before,
    check,
    explore,
    leads_to,
    never,
    paths,
    replay,
)
from stepflow.analysis._explore import Search
from stepflow.core.compile import scope_name
from stepflow.core.messages import CancelRequested
from stepflow.core.policies import RetryPolicy
from stepflow.core.spec import Do, Finally, Item, Retry, Saga, Steps
from stepflow.core.state import State


def handler(*_: Any) -> Any:
    raise AssertionError("the analysis never calls handlers")


# -- a lease held by a job: finally releases it, a saga undoes the booking --------

F = "job/v1"
WORK = f"{F}/leaseFinally"
RELEASE = f"{WORK}/cleanup/release"
BOOK = f"{F}/bookSaga"


def leased_job() -> stepflow.FlowDefinition:
    """Acquire a lease, wait for approval, work; always release the lease."""
    body = (
        stepflow.steps()
        .do("acquire", handler)
        .wait_event("approved", timeout=60)
        .do("work", handler)
    )
    cleanup = stepflow.steps().do("release", handler)
    return stepflow.new(stepflow.named(F).finally_("lease", body, cleanup)).definition


def booking() -> stepflow.FlowDefinition:
    """A trip: book a flight, a hotel and a car; a failure or a cancellation undoes them."""
    trip = (
        stepflow.steps()
        .do("flight", handler, compensate=handler)
        .do("hotel", handler, compensate=handler)
        .wait_event("confirmed")
        .do("car", handler, compensate=handler)
    )
    return stepflow.new(stepflow.named(F).saga("book", trip).do("notify", handler)).definition


def is_cancel(happening: Happening) -> bool:
    return happening.what == "cancel"


def test_explore_cancels_every_running_state_once_and_each_cancelled_run_released() -> None:
    definition = leased_job()
    plain = explore(definition)
    assert plain.cancelled == 0
    released_once = CountRuns(RELEASE, lambda n, s: s.status != "cancelled" or n == 1)
    result = explore(
        definition,
        cancel=True,
        invariants=[
            released_once,
            leads_to(
                is_cancel, RELEASE, on=("cancelled",), name="a cancellation releases the lease"
            ),
            never(
                lambda s: s.status == "completed" and s.error is not None,
                name="a cancelled run never completes",
            ),
        ],
    )
    assert result.ok, [str(v) for v in result.violations]
    assert result.cancelled >= 3  # at acquire, at the wait, at work
    assert result.states > plain.states


def test_a_release_outside_a_finally_is_skipped_by_a_cancellation() -> None:
    body = stepflow.steps().do("acquire", handler).wait_event("approved", timeout=60)
    spec = stepflow.named(F).steps("lease", body.do("work", handler).do("release", handler))
    definition = stepflow.new(spec).definition
    release = f"{F}/lease/release"
    released = leads_to(is_cancel, release, on=("cancelled",), name="released")
    # Without cancellations nothing is owed; with them, a shortest counterexample.
    assert explore(definition, invariants=[released]).ok
    violation = explore(definition, cancel=True, invariants=[released]).violation("released")
    assert violation is not None
    # (Cancelled while waiting for the approval: the wait is dropped, nothing else runs.)
    assert violation.trace.outcomes == (
        ("do", f"{F}/lease/acquire", "returned"),
        ("cancel", "", "requested"),
    )
    assert violation.message == (
        "the run cancelled, but is_cancel was not followed by 'job/v1/lease/release'"
    )


class CountRuns:
    """How many times a step ran (its handler answered), checked when the run ends."""

    def __init__(self, step: str, ok: Any) -> None:
        self.step, self.ok = step, ok
        self.name = f"{step} runs as expected"

    def start(self) -> int:
        return 0

    def observe(self, monitor: int, step: Observation) -> int:
        ran = sum(1 for h in step.happenings if h.what == "ran" and h.name == self.step)
        return min(monitor + ran, 3)

    def violation(self, monitor: int, state: State) -> str | None:
        if state.is_finished and not self.ok(monitor, state):
            return f"{self.step} ran {monitor} times in a {state.status} run"
        return None


def test_a_cancelled_run_ends_cancelled_and_a_broken_cleanup_is_found() -> None:
    # The cleanup may fail: that run ends failed, not cancelled (Rule 9).
    definition = leased_job()
    ends_cancelled = always(
        lambda s: s.status != "failed" or s.error is None or "Cancelled" not in s.error.type,
        name="a cancelled run ends cancelled",
    )
    result = explore(definition, cancel=True, invariants=[ends_cancelled])
    assert result.ok
    broken = always(lambda s: s.status != "failed", name="cleanups never fail")
    violation = explore(definition, cancel=True, invariants=[broken]).violation(broken.name)
    assert violation is not None
    # The shortest: acquire fails, the lease is released, the error goes on.
    assert violation.trace.outcomes == (
        ("do", f"{WORK}/steps/acquire", "raised"),
        ("do", RELEASE, "returned"),
    )


def test_compensations_run_in_reverse_order_for_a_failure_or_a_cancellation() -> None:
    definition = booking()
    steps = f"{BOOK}/steps"
    compensated = [f"{steps}/{name}" for name in ("flight", "hotel", "car")]

    class ReverseOrder:
        name = "compensations run in reverse order of completion"

        def start(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
            return (), ()

        def observe(self, monitor: Any, step: Observation) -> Any:
            done, undone = monitor
            command, outcome = step.command, step.outcome
            if command is not None and command.step in compensated:
                if command.kind == "do" and outcome == "returned":
                    done = (*done, command.step)
                elif command.kind == "compensate":
                    undone = (*undone, command.step)
            return done, undone

        def violation(self, monitor: Any, state: State) -> str | None:
            done, undone = monitor
            if undone != tuple(reversed(done))[: len(undone)]:
                return f"completed {done}, compensated {undone}"
            return None

    def undoes(name: str) -> Any:
        def match(happening: Happening) -> bool:
            return happening.kind == "compensate" and happening.name == f"{steps}/{name}"

        match.__name__ = f"undoes_{name}"
        return match

    def booked(name: str) -> Any:
        def match(happening: Happening) -> bool:
            step = f"{steps}/{name}"
            return happening[:2] == ("ran", step) and happening[2:] == ("returned", "do")

        match.__name__ = f"booked_{name}"
        return match

    result = explore(
        definition,
        cancel=True,
        invariants=[
            ReverseOrder(),
            before(booked("hotel"), undoes("hotel"), name="only a booked hotel is undone"),
            before(f"{steps}/flight", f"{steps}/hotel"),
            never(
                lambda s: s.status == "cancelled" and s.outputs.get(BOOK) is None,
                name="a cancelled trip went through its saga",
            ),
        ],
    )
    assert result.ok, [str(v) for v in result.violations]
    assert result.cancelled
    assert result.failed
    # A cancellation while waiting for the confirmation undoes the hotel, then the flight.
    trace = replay(
        definition,
        [
            ("do", f"{steps}/flight", "returned"),
            ("do", f"{steps}/hotel", "returned"),
            ("cancel", "", "requested"),
            ("compensate", f"{steps}/hotel", "returned"),
            ("compensate", f"{steps}/flight", "returned"),
        ],
    )
    assert trace.final.status == "cancelled"
    assert "cancel  requested" not in trace.describe()
    assert "cancel requested -> start:job/v1/bookSaga/compensate (cancelling)" in trace.describe()


def test_an_event_sent_early_waits_in_the_mailbox_and_is_taken_at_the_wait() -> None:
    definition = booking()
    steps = f"{BOOK}/steps"
    # (An event sent after its wait stays in the mailbox: a late duplicate.)
    late = never(lambda s: s.is_completed and bool(s.mailbox), name="nothing left unread")
    sent_first = before(
        lambda h: h.what == "event",
        f"{steps}/car",
        name="the car is booked only once confirmed",
    )
    result = explore(definition, events=["confirmed"], invariants=[late])
    assert result.dead_ends == ()
    assert result.complete
    unread = result.violation(late.name)
    assert unread is not None
    assert unread.trace.outcomes[2][0] == "wait_event"
    # Without a wait in between, the car is booked before the confirmation is sent.
    with_sent = explore(definition, events=True, invariants=[sent_first])
    assert with_sent.violation(sent_first.name) is not None
    assert explore(definition, events=True).states == result.states
    assert result.states > explore(definition).states
    # Sent at the start, it is taken as the hotel completes: no wait, no command for it.
    trace = replay(
        definition,
        [
            ("event", "confirmed", "sent"),
            ("do", f"{steps}/flight", "returned"),
            ("do", f"{steps}/hotel", "returned"),
        ],
    )
    assert [c.step for c in trace.final.in_flight] == [f"{steps}/car"]
    assert trace.outcomes[0] == ("event", "confirmed", "sent")
    with pytest.raises(AnalysisError, match="no wait_event"):
        explore(definition, events=["nope"])


def test_max_events_bounds_the_early_events_of_a_run() -> None:
    spec = stepflow.named("f").loop_until(
        "again", handler, stepflow.steps().wait_event("tick", timeout=5)
    )
    definition = stepflow.new(spec).definition
    one = explore(definition, events=True, max_loops=2)
    two = explore(definition, events=True, max_loops=2, max_events=2)
    assert one.ok
    assert two.ok
    assert two.states > one.states


def test_replay_refuses_to_cancel_a_finished_run() -> None:
    definition = leased_job()
    cancel = ("cancel", "", "requested")
    trace = replay(definition, [("do", f"{WORK}/steps/acquire", "returned"), cancel])
    assert trace.final.status == "cancelling"  # the release runs first
    with pytest.raises(AnalysisError, match="cancelling"):
        replay(definition, [("do", f"{WORK}/steps/acquire", "returned"), cancel, cancel])


def test_paths_reach_the_cleanup_and_each_compensation() -> None:
    cases = {str(c.target): c for c in paths(booking())}
    steps = f"{BOOK}/steps"
    saga = f"start:{steps}/car -> start:{BOOK}/compensate (saga)"
    assert cases[saga].outcomes[-1] == ("do", f"{steps}/car", "raised")
    leave = f"completed:{WORK}/cleanup -> completed:{WORK} (cleanup completed)"
    assert {str(c.target): c for c in paths(leased_job())}[leave].reachable
    assert [f.code for f in check(leased_job())] == []
    assert [f.code for f in check(booking())] == ["wait-without-timeout"] or check(booking()) == []


# -- random flows with finally_ and sagas -----------------------------------------

_names = st.sampled_from(["a", "b", "c"])
_policies = st.none() | st.builds(RetryPolicy, max_attempts=st.integers(1, 2))


def _undoable() -> st.SearchStrategy[Item]:
    return st.builds(Do, _names, st.just(handler), st.none(), st.just(handler))


def cleanup_items(depth: int, in_saga: bool, fork: bool) -> st.SearchStrategy[Item]:
    """A step of any kind, or a finally_, a saga, a retry around them; undoable in a saga."""
    leaves = [items(0, fork=fork)] + ([_undoable()] if in_saga else [])
    if depth <= 0:
        return st.one_of(leaves)
    return st.one_of(
        *leaves,
        items(1, fork=fork),
        st.builds(
            Finally,
            _names,
            cleanup_bodies(depth - 1, in_saga, fork),
            cleanup_bodies(depth - 1, in_saga, fork),
        ),
        st.builds(Saga, _names, cleanup_bodies(depth - 1, True, fork), _policies),
        st.builds(
            Retry,
            _names,
            st.none(),
            cleanup_bodies(depth - 1, in_saga, fork),
            st.builds(RetryPolicy, max_attempts=st.just(2)),
        ),
    )


def cleanup_bodies(depth: int, in_saga: bool, fork: bool) -> st.SearchStrategy[Steps]:
    """A group's steps (unique names) drawn by :func:`cleanup_items`."""
    return st.builds(
        Steps,
        st.just("steps"),
        st.lists(
            cleanup_items(depth, in_saga, fork), min_size=1, max_size=3, unique_by=scope_name
        ).map(tuple),
    )


def cleanup_flows(*, fork: bool = False) -> st.SearchStrategy[stepflow.FlowDefinition]:
    """Compiled flows with at least one finally_ or saga at the top."""
    top = st.one_of(
        st.builds(Finally, _names, cleanup_bodies(1, False, fork), cleanup_bodies(1, False, fork)),
        st.builds(Saga, _names, cleanup_bodies(1, True, fork), _policies),
    )
    rest = st.lists(items(0, fork=fork), max_size=1)
    return st.builds(
        lambda first, others: stepflow.new(Steps("f", (first, *others))).definition,
        top,
        rest,
    ).filter(lambda d: len(d.table) < 60)


STATUSES = ("running", "completed", "failed", "cancelling", "cancelled")


@settings(max_examples=60, deadline=None)
@given(cleanup_flows())
def test_cancelling_random_flows_finds_no_dead_end_and_every_cancelled_end_is_cancelled(
    definition: stepflow.FlowDefinition,
) -> None:
    invariants: list[Invariant] = [
        always(lambda s: s.status in STATUSES, name="status"),
        always(
            lambda s: (s.status in ("running", "cancelling")) == bool(s.in_flight),
            name="running or cancelling iff a command",
        ),
        always(
            lambda s: s.status not in ("cancelling", "cancelled") or s.error is not None,
            name="a cancellation is recorded",
        ),
        CancelledEnds(),
    ]
    result = explore(definition, cancel=True, events=True, max_loops=1, invariants=invariants)
    assert result.complete
    assert result.violations == (), [str(v) for v in result.violations]
    assert result.dead_ends == ()
    assert result.cancelled >= 1 or not stepflow.advance(definition, None, now=0.0)[0].is_running


class CancelledEnds:
    """A run asked to cancel ends cancelled, or failed by a cleanup; no other run is cancelled."""

    name = "a cancelled run ends cancelled"

    def start(self) -> bool:
        return False

    def observe(self, monitor: bool, step: Observation) -> bool:
        return monitor or any(h.what == "cancel" for h in step.happenings)

    def violation(self, monitor: bool, state: State) -> str | None:
        if not state.is_finished:
            return None
        if not monitor:
            return "cancelled, unasked" if state.status == "cancelled" else None
        if state.status == "cancelled":
            return None
        error = state.error
        if state.status == "failed" and error is not None and "Cancelled" not in error.type:
            return None  # a cleanup or a compensation failed (Rule 9)
        return f"asked to cancel, the run ended {state.status} ({state.error})"


@settings(max_examples=40, deadline=None)
@given(cleanup_flows())
def test_traces_with_cancellations_replay_exactly(definition: stepflow.FlowDefinition) -> None:

    def ends_cancelled(s: State) -> bool:
        return s.status == "cancelled"

    result = explore(
        definition, cancel=True, events=True, max_loops=1, invariants=[never(ends_cancelled)]
    )
    if not result.violations:  # a run that ends as it starts: nothing to cancel
        assert not stepflow.advance(definition, None, now=0.0)[0].is_running
        return
    trace = result.violations[0].trace
    assert any(m.command is None for m in trace.moves)
    assert replay(definition, trace.outcomes) == trace
    state = trace.start
    for move in trace.moves:
        state, _ = stepflow.advance(definition, state, (move.effect,))
        assert state == move.state


@settings(max_examples=40, deadline=None)
@given(cleanup_flows())
def test_paths_of_random_flows_with_cleanups_reach_every_step(
    definition: stepflow.FlowDefinition,
) -> None:
    for case in paths(definition):
        if isinstance(case.target, str):
            assert case.reachable, case.target
        if case.trace is not None:
            assert replay(definition, case.outcomes) == case.trace
    assert not [f for f in check(definition) if f.severity == "error"]


@settings(max_examples=25, deadline=None)
@given(cleanup_flows(fork=True))
def test_cancelling_random_flows_with_groups_finds_no_dead_end(
    definition: stepflow.FlowDefinition,
) -> None:
    result = explore(definition, cancel=True, max_loops=1, max_states=20_000)
    if result.complete:
        assert result.dead_ends == ()
        assert result.violations == ()


def test_a_completed_nested_saga_is_not_compensated_as_a_step() -> None:
    inner = stepflow.steps().do("x", handler, compensate=handler)
    spec = stepflow.named("f").saga("c", stepflow.steps().saga("a", inner).do("y", handler))
    definition = stepflow.new(spec).definition
    x, y = "f/cSaga/steps/aSaga/steps/x", "f/cSaga/steps/y"
    trace = replay(definition, [("do", x, "returned"), ("do", y, "raised")])
    # y failed: the outer saga compensates x (the one compensable step that completed)...
    assert [(c.kind, c.step) for c in trace.final.in_flight] == [("compensate", x)]
    # ...and then fails with y's error, having compensated nothing else.
    trace = replay(
        definition, [("do", x, "returned"), ("do", y, "raised"), ("compensate", x, "returned")]
    )
    assert trace.final.status == "failed"
    assert trace.final.error is not None
    assert trace.final.error.step == y


def test_a_cancelling_run_receives_the_event_its_cleanup_waits_for() -> None:
    cleanup = stepflow.steps().wait_event("released")
    spec = stepflow.named("f").finally_("w", stepflow.steps().do("a", handler), cleanup)
    definition = stepflow.new(spec).definition
    state, _ = stepflow.advance(definition, None, now=0.0)
    state, _ = stepflow.advance(definition, state, [CancelRequested("stop", 1.0)])
    state, _ = stepflow.advance(definition, state, [stepflow.HandlerReturned(1, None, 1.0)])
    assert state.status == "cancelling"
    assert [c.kind for c in state.in_flight] == ["wait_event"]
    state, _ = stepflow.advance(definition, state, [stepflow.EventReceived("released", None, 2.0)])
    assert state.status == "cancelled"


@settings(max_examples=30, deadline=None)
@given(cleanup_flows(fork=True), st.booleans())
def test_the_reduction_keeps_every_state_with_cleanups_and_cancellations(
    definition: stepflow.FlowDefinition, cancel: bool
) -> None:
    full = Search(definition, max_loops=1, max_states=5_000, cancel=cancel).run()
    assume(full.complete)
    reduced = Search(definition, max_loops=1, max_states=5_000, cancel=cancel, reduce=True).run()
    assert reduced.complete
    assert set(full.index) == set(reduced.index)
    depth = {key: full.depth[node] for key, node in full.index.items()}
    assert all(reduced.depth[node] == depth[key] for key, node in reduced.index.items())


def test_a_cancellation_record_names_any_position_of_a_group_and_the_search_ignores_which() -> None:
    # The record's step is the position the core found first, which depends on
    # the order the positions moved in; the reduction reorders moves, so the
    # search tells cancellation records apart by type only.
    branches = {
        "poll": stepflow.steps().wait_for("ready", handler, every=0.5),
        "later": stepflow.steps()
        .wait_event("go", timeout=0.5)
        .sleep_until("one", handler)
        .sleep_until("two", handler),
    }
    body = stepflow.steps().parallel("p", branches).do("c", handler)
    spec = stepflow.named("f").saga("s", body, policy=RetryPolicy(max_attempts=2))
    definition = stepflow.new(spec).definition
    full = Search(definition, max_loops=1, cancel=True).run()
    reduced = Search(definition, max_loops=1, cancel=True, reduce=True).run()
    assert reduced.pruned > 0
    assert set(full.index) == set(reduced.index)


def test_a_cancelled_group_enters_the_cleanups_of_its_branches() -> None:
    lease = stepflow.steps().do("use", handler)
    branches = {
        name: stepflow.steps().finally_("lease", lease, stepflow.steps().do("release", handler))
        for name in ("a", "b")
    }
    definition = stepflow.new(stepflow.named("f").parallel("p", branches)).definition
    released = [f"f/pParallel/{name}/leaseFinally/cleanup/release" for name in ("a", "b")]
    # Each branch's lease is released exactly once in every cancelled run.
    invariants = [
        CountRuns(step, lambda n, s: s.status != "cancelled" or n == 1) for step in released
    ]
    result = explore(definition, cancel=True, invariants=invariants)
    assert result.ok, [str(v) for v in result.violations]
    assert result.cancelled
