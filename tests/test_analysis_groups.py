"""stepflow.analysis on flows with parallel branches and maps: interleavings, the reduction.

The reduction's promise (stepflow/analysis/_explore.py, "Reduction") is checked
against the search without it, on the flows below and on random flows with
groups: the same search states, each at the same shortest distance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stepflow
from stepflow.analysis import (
    AnalysisError,
    Happening,
    TransitionTarget,
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
from stepflow.analysis._model import outcomes_for
from stepflow.core.state import State


def handler(*_: Any) -> Any:
    raise AssertionError("the analysis never calls handlers")


F = "rel/v1"
CHECKS = f"{F}/checksParallel"
LINT, TESTS = f"{CHECKS}/lint", f"{CHECKS}/tests"
REGIONS = f"{F}/regionsMap"
ITEM = f"{REGIONS}/steps"


def release(*, max_concurrency: int | None = 2, tolerated: int = 0) -> stepflow.FlowDefinition:
    """Build, two independent check branches, a rollout to each region, an announcement."""
    checks = {
        "lint": stepflow.steps().do("ruff", handler).do("mypy", handler).do("vulture", handler),
        "tests": stepflow.steps()
        .do("unit", handler)
        .sleep("settle", 30)
        .wait_for("green", handler, every=5, timeout=20)
        .do("e2e", handler),
    }
    rollout = stepflow.steps().do("push", handler).do("verify", handler)
    spec = (
        stepflow.named(F)
        .do("build", handler)
        .parallel("checks", checks, max_failures=tolerated)
        .map("regions", handler, rollout, max_concurrency=max_concurrency)
        .do("announce", handler)
    )
    return stepflow.new(spec).definition


def at(state: State, *events: str) -> bool:
    return set(events) <= set(state.events)


# -- interleavings and invariants ------------------------------------------------------


def test_every_interleaving_of_two_branches_is_explored() -> None:
    definition = release()
    search = Search(definition).run()
    both = [
        s
        for s in search.states
        if len(s.events) == 2 and all(e.startswith(f"start:{CHECKS}/") for e in s.events)
    ]
    # Each position of one branch meets each of the other: 3 x 4 pairs.
    pairs = {frozenset(s.events) for s in both}
    assert len(pairs) == 3 * 4
    # Which command is answered next is a choice: both orders are edges of the search.
    first = search.states[1]
    assert {c.step for c in first.in_flight} == {f"{LINT}/ruff", f"{TESTS}/unit"}


def test_an_invariant_that_holds_over_independent_branches_is_not_violated() -> None:
    definition = release()
    invariants = [
        always(lambda s: len(s.events) <= 2, name="at most two positions"),
        never(lambda s: at(s, f"start:{F}/announce") and bool(s.groups), name="no group left"),
        before(f"{LINT}/mypy", f"{LINT}/vulture"),
        before(f"completed:{CHECKS}", f"{ITEM}/push"),
        leads_to(f"{TESTS}/unit", f"{TESTS}/e2e"),
    ]
    for reduce in (True, False):
        result = explore(definition, invariants=invariants, reduce=reduce)
        assert result.ok, [str(v) for v in result.violations]
        assert result.completed == 1
        assert result.failed > 0
    # Monitors that see the moves keep them from being reordered; state predicates do not.
    assert explore(definition, invariants=invariants[:2]).pruned > 0


def test_a_planted_violation_is_found_with_a_shortest_trace() -> None:
    definition = release()
    # The tests branch reaches its poll while lint has not moved: a real interleaving.
    planted = never(
        lambda s: at(s, f"start:{LINT}/ruff", f"start:{TESTS}/greenWaitFor"), name="planted"
    )
    for reduce in (True, False):
        result = explore(definition, invariants=[planted], reduce=reduce)
        violation = result.violation("planted")
        assert violation is not None
        # build, unit, the settle timer: three moves, none of lint.
        assert [m.command.step for m in violation.trace.moves] == [
            f"{F}/build",
            f"{TESTS}/unit",
            f"{TESTS}/settle",
        ]
        assert "planted is false in a running state at [" in str(violation)
        # The trace replays to the state that breaks the invariant.
        final = replay(definition, violation.trace.outcomes).final
        assert at(final, f"start:{LINT}/ruff", f"start:{TESTS}/greenWaitFor")


def test_an_order_between_branches_is_not_promised_and_the_search_says_so() -> None:
    definition = release()
    result = explore(definition, invariants=[before(f"{LINT}/vulture", f"{TESTS}/e2e")])
    (violation,) = result.violations
    assert "entered start:" in violation.message
    moves = [(m.command.step, m.outcome) for m in violation.trace.moves]
    assert moves == [
        (f"{F}/build", "returned"),
        (f"{TESTS}/unit", "returned"),
        (f"{TESTS}/settle", "fired"),
        (f"{TESTS}/greenWaitFor", "true"),
    ]


def test_matchers_name_a_step_in_every_item_or_in_one() -> None:
    definition = release(max_concurrency=None)
    every = explore(definition, invariants=[never(lambda s: False), before(f"{F}/build", ITEM)])
    assert every.ok
    # Item 1 can verify before item 0 does: a matcher with indices tells them apart.
    one = before(f"{ITEM}[0]/verify", f"{ITEM}[1]/verify")
    (violation,) = explore(definition, invariants=[one]).violations
    assert violation.trace.moves[-1].command.step == f"{ITEM}[1]/push"
    assert violation.trace.moves[-2].outcome == "items:2"
    assert explore(definition, invariants=[before(f"{ITEM}/verify", f"{ITEM}/verify")]).ok

    def second_item(happening: Happening) -> bool:
        return happening.what == "ran" and "[1]" in happening.name

    assert explore(definition, invariants=[leads_to(f"{F}/build", second_item)]).violations
    with pytest.raises(AnalysisError, match="does not have"):
        explore(definition, invariants=[before(f"{ITEM}[0]/pull", f"{F}/build")])


# -- maps ------------------------------------------------------------------------------


def test_a_map_with_scripted_items_is_explored_completely_within_its_bound() -> None:
    definition = release(max_concurrency=2)
    seen: set[int] = set()
    concurrent = 0
    result = explore(definition, max_items=3)
    assert result.complete
    assert not result.dead_ends
    search = Search(definition, max_items=3).run()
    for state in search.states:
        progress = state.groups.get(REGIONS)
        if progress is not None:
            seen.add(len(progress.items))
            concurrent = max(concurrent, progress.active)
    assert seen == {1, 2, 3}  # 0 items skips the group
    assert concurrent == 2  # max_concurrency holds in every state
    assert len(search.states) == result.states
    # One completed state per number of items? No: outputs are abstracted to their keys,
    # and the map's output is one key whatever its length.
    assert result.completed == 1


def test_items_outcomes_are_scripted_and_replay() -> None:
    definition = release()
    trace = replay(
        definition,
        [
            ("do", f"{F}/build", "returned"),
            ("do", f"{LINT}/ruff", "returned"),
            ("do", f"{LINT}/mypy", "returned"),
            ("do", f"{LINT}/vulture", "returned"),
            ("do", f"{TESTS}/unit", "returned"),
            ("sleep", f"{TESTS}/settle", "fired"),
            ("wait_for", f"{TESTS}/greenWaitFor", "true"),
            ("do", f"{TESTS}/e2e", "returned"),
            ("map", REGIONS, "items:3"),
            ("do", f"{ITEM}[1]/push", "returned"),
            ("do", f"{ITEM}[0]/push", "raised"),
            ("do", f"{ITEM}[1]/verify", "returned"),
        ],
    )
    assert trace.final.is_failed
    assert trace.final.events == (f"start:{REGIONS}",)
    assert trace.script[("do", f"{ITEM}/push")] == ["returned", "raised"]
    assert trace.script[("map", REGIONS)] == ["items:3"]
    with pytest.raises(AnalysisError, match=r"waits for do 'rel/v1/checksParallel/lint/ruff', do"):
        replay(definition, [("do", f"{F}/build", "returned"), ("do", f"{F}/announce", "returned")])
    with pytest.raises(AnalysisError, match="items:<n>"):
        replay(definition, [("do", f"{F}/build", "items:2")])
    with pytest.raises(AnalysisError, match="items:<n>"):
        replay(definition, [*trace.outcomes[:8], ("map", REGIONS, "items:two")])


def test_a_tolerated_failure_lets_the_group_complete() -> None:
    definition = release(tolerated=1)
    completes_after_a_failure = never(
        lambda s: (
            s.status == "running"
            and f"{CHECKS}" in s.outputs
            and len(s.events) == 1
            and s.events[0] == f"start:{REGIONS}"
            and "error" in str(s.outputs[CHECKS])
        ),
        name="checks completed with a failure",
    )
    (violation,) = explore(definition, invariants=[completes_after_a_failure]).violations
    outcomes = [m.outcome for m in violation.trace.moves]
    assert outcomes.count("raised") == 1
    # The shortest such run fails the tests branch at once and finishes lint's three steps.
    assert len(outcomes) == 1 + 1 + 3
    assert violation.trace.moves[-1].command.step == f"{LINT}/vulture"


# -- paths -----------------------------------------------------------------------------


def test_paths_reach_every_step_and_transition_of_groups_and_replay() -> None:
    definition = release()
    cases = paths(definition)
    assert all(case.reachable for case in cases), [c.target for c in cases if not c.reachable]
    by_target = {case.target: case for case in cases}
    for step in (CHECKS, LINT, f"{TESTS}/e2e", REGIONS, ITEM, f"{ITEM}/verify"):
        assert step in by_target
    fork = f"start:{CHECKS}"
    assert TransitionTarget(fork, f"start:{LINT}", "parallel branch") in by_target
    lint_last = TransitionTarget(
        f"completed:{LINT}", f"completed:{CHECKS}", "all branches completed"
    )
    tests_last = TransitionTarget(
        f"completed:{TESTS}", f"completed:{CHECKS}", "all branches completed"
    )
    no_items = TransitionTarget(f"start:{REGIONS}", f"completed:{REGIONS}", "no items")
    for target in (lint_last, tests_last, no_items):
        assert by_target[target].reachable
    # A join is taken by the branch that ends last.
    assert by_target[lint_last].trace.moves[-1].command.step == f"{LINT}/vulture"
    assert by_target[tests_last].trace.moves[-1].command.step == f"{TESTS}/e2e"
    assert by_target[no_items].outcomes[-1] == ("map", REGIONS, "items:0")
    for case in cases:
        again = replay(definition, case.outcomes)
        assert again.final.events == case.trace.final.events
    # Steps are reached by a shortest run: the first verify needs one item pushed.
    verify = by_target[f"{ITEM}/verify"].outcomes
    assert [o for _, _, o in verify][-2:] == ["items:1", "returned"]


# -- the reduction against the search without it ---------------------------------------

STEP_KINDS = ("do", "wait_for", "sleep", "case")


@st.composite
def branch_steps(draw: st.DrawFn, prefix: str, longest: int = 3) -> stepflow.Steps:
    body = stepflow.steps()
    kinds = draw(st.lists(st.sampled_from(STEP_KINDS), min_size=1, max_size=longest))
    for i, kind in enumerate(kinds):
        name = f"{prefix}{i}"
        if kind == "do":
            body = body.do(name, handler)
        elif kind == "wait_for":
            body = body.wait_for(name, handler, every=draw(st.sampled_from([1, 5])), timeout=6)
        elif kind == "sleep":
            body = body.sleep(name, draw(st.sampled_from([1, 3])))
        else:
            body = body.case(name, handler, stepflow.steps().do(f"{name}In", handler))
    return body


@st.composite
def group_flows(draw: st.DrawFn) -> stepflow.FlowDefinition:
    spec = stepflow.named("g/v1").do("first", handler)
    count = draw(st.integers(2, 3))
    # Three branches of three steps each are slow to search: keep the product small.
    longest = 3 if count == 2 else 2
    branches = {f"b{i}": draw(branch_steps(f"s{i}_", longest)) for i in range(count)}
    group = stepflow.steps().parallel("par", branches, max_failures=draw(st.integers(0, 1)))
    if draw(st.booleans()):
        policy = stepflow.RetryPolicy(max_attempts=2, initial_interval=0)
        spec = spec.retry("again", policy, group)
    else:
        spec = spec.steps("grp", group)
    if draw(st.booleans()):
        limit = draw(st.sampled_from([None, 1, 2]))
        spec = spec.map("each", handler, draw(branch_steps("m", 2)), max_concurrency=limit)
    return stepflow.new(spec).definition


def _shape(state: State) -> Any:
    return (frozenset(state.events), state.status, frozenset(state.outputs))


@settings(deadline=None)
@given(group_flows(), st.data())
def test_the_reduction_keeps_every_state_at_its_shortest_distance(
    definition: stepflow.FlowDefinition, data: st.DataObject
) -> None:
    full = Search(definition, max_loops=1).run()
    reduced = Search(definition, max_loops=1, reduce=True).run()
    assert full.complete
    assert reduced.complete
    assert set(full.index) == set(reduced.index)
    depth = {key: full.depth[node] for key, node in full.index.items()}
    assert all(reduced.depth[node] == depth[key] for key, node in reduced.index.items())
    # A pruned move is neither explored nor cut.
    assert reduced.transitions + reduced.pruned + reduced.cut == full.transitions + full.cut
    # A violation of "never reach this state" has the same, shortest, length.
    target = _shape(data.draw(st.sampled_from(full.states)))
    shortest = min(full.depth[i] for i, s in enumerate(full.states) if _shape(s) == target)
    hit: Callable[[State], bool] = lambda s: _shape(s) == target  # noqa: E731
    result = explore(definition, invariants=[never(hit, name="hit")], max_loops=1)
    (violation,) = result.violations
    assert len(violation.trace.moves) == shortest
    assert _shape(violation.trace.final) == target


def test_the_reduction_prunes_reorderings_of_long_independent_branches() -> None:
    def chain(prefix: str) -> stepflow.Steps:
        body = stepflow.steps()
        for i in range(5):
            body = body.do(f"{prefix}{i}", handler)
        return body

    spec = stepflow.named("wide/v1").parallel(
        "p", {"a": chain("a"), "b": chain("b"), "c": chain("c")}
    )
    definition = stepflow.new(spec).definition
    full = explore(definition, reduce=False)
    reduced = explore(definition)
    assert (reduced.states, reduced.completed, reduced.failed) == (
        full.states,
        full.completed,
        full.failed,
    )
    assert reduced.transitions + reduced.pruned == full.transitions
    # Only reorderings of moves that stay in their branch are pruned: failures and
    # ends of branches are seen by the group, so they are explored in every order.
    assert reduced.pruned >= 150
    # A custom invariant's monitor is opaque: nothing is pruned then.

    class Counting:
        name = "counting"

        def start(self) -> int:
            return 0

        def observe(self, monitor: Any, step: Any) -> int:
            return min(int(monitor) + 1, 1)

        def violation(self, monitor: Any, state: State) -> str | None:
            return None

    assert explore(definition, invariants=[Counting()]).pruned == 0


# -- check -----------------------------------------------------------------------------


def codes(spec: stepflow.Steps) -> list[tuple[str, str]]:
    return [(f.code, f.path) for f in check(stepflow.new(spec).definition)]


def test_check_warns_about_a_loop_whose_body_neither_waits_nor_sleeps() -> None:
    s = stepflow.steps
    hot = stepflow.named("h/v1").loop_until("drain", handler, s().do("take", handler))
    (finding,) = check(stepflow.new(hot).definition)
    assert (finding.code, finding.severity, finding.path) == (
        "hot-loop",
        "warning",
        "h/v1/drainLoopUntil",
    )
    assert "neither waits nor sleeps in its body ('take')" in finding.message
    assert ".sleep(" in finding.hint
    assert "wait_for(" in finding.hint
    # Inside a group, and with several steps, it is still hot.
    inner = s().parallel("both", {"a": s().do("x", handler), "b": s().do("y", handler)})
    nested = stepflow.named("h/v1").loop_until("drain", handler, inner.do("z", handler))
    assert codes(nested) == [("hot-loop", "h/v1/drainLoopUntil")]
    assert "('x', 'y', 'z')" in check(stepflow.new(nested).definition)[0].message
    many = s().do("a", handler).do("b", handler).do("c", handler).do("d", handler)
    message = check(stepflow.new(stepflow.named("h/v1").loop_until("l", handler, many)).definition)
    assert "('a', 'b', 'c' and 1 more)" in message[0].message
    # A sleep, or a wait_for anywhere in the body (in a map item too), paces it.
    paced = s().do("take", handler).sleep("pause", 5)
    assert codes(stepflow.named("h/v1").loop_until("drain", handler, paced)) == []
    polled = s().map("each", handler, s().wait_for("ready", handler, every=5, timeout=60))
    assert codes(stepflow.named("h/v1").loop_until("drain", handler, polled)) == []
    # An empty body is a busy loop, reported once.
    empty = stepflow.named("h/v1").do("a", handler).loop_until("spin", handler, s())
    assert codes(empty) == [("busy-loop", "h/v1/spinLoopUntil")]


def test_check_understands_groups() -> None:
    assert check(release()) == []
    # A flow that starts with a fork takes its branches' transitions at the start.
    s = stepflow.steps
    forked = stepflow.named("f/v1").parallel(
        "p", {"a": s().do("x", handler), "b": s().do("y", handler)}
    )
    assert codes(forked) == []
    starts = [c for c in paths(stepflow.new(forked).definition) if c.outcomes == ()]
    assert {str(c.target) for c in starts} >= {
        "start:f/v1/pParallel -> start:f/v1/pParallel/a (parallel branch)",
        "f/v1/pParallel/b/y",
    }
    # With no item ever returned, the steps of the map's items are unreachable.
    findings = check(release(), max_items=0)
    unreachable = {f.path for f in findings if f.code == "unreachable-step"}
    assert unreachable == {ITEM, f"{ITEM}/push", f"{ITEM}/verify"}
    assert {f.code for f in findings} == {"unreachable-step", "unreachable-transition"}


# -- nesting ---------------------------------------------------------------------------


def nested_flows() -> dict[str, stepflow.Steps]:
    s = stepflow.steps
    quick = stepflow.RetryPolicy(max_attempts=2, initial_interval=1)
    return {
        "on_error in a branch": stepflow.named("a/v1").parallel(
            "p", {"x": s().retry("r", handler, s().do("d", handler)), "y": s().do("e", handler)}
        ),
        "on_error around a group": stepflow.named("b/v1").retry(
            "r", handler, s().parallel("p", {"x": s().do("d", handler), "y": s().do("e", handler)})
        ),
        "a map in a branch": stepflow.named("c/v1").parallel(
            "p",
            {
                "x": s().map("m", handler, s().do("d", handler), max_concurrency=1),
                "y": s().do("e", handler),
            },
        ),
        "a parallel in a map": stepflow.named("d/v1").map(
            "m",
            handler,
            s().parallel(
                "p",
                {"x": s().do("d", handler), "y": s().wait_for("w", handler, every=2, timeout=5)},
            ),
            max_failures=1,
        ),
        "a map in a map": stepflow.named("e/v1").map(
            "m", handler, s().map("n", handler, s().do("d", handler)), max_concurrency=2
        ),
        "a parallel after a step in a branch": stepflow.named("f/v1").parallel(
            "p",
            {
                "x": s()
                .do("d", handler)
                .parallel("q", {"u": s().do("u", handler), "v": s().do("v", handler)}),
                "y": s().do("e", handler).do("g", handler),
            },
        ),
        "a loop in a branch": stepflow.named("g/v1").parallel(
            "p",
            {
                "x": s().loop_until("l", handler, s().do("d", handler).sleep("z", 1)),
                "y": s().case("c", handler, s().do("e", handler)),
            },
        ),
        "a bounded retry in an item": stepflow.named("h/v1").map(
            "m", handler, s().retry("r", quick, s().do("d", handler))
        ),
    }


@pytest.mark.parametrize("name", list(nested_flows()))
def test_nested_groups_are_explored_completely_and_every_path_replays(name: str) -> None:
    definition = stepflow.new(nested_flows()[name]).definition
    full = Search(definition, max_loops=1).run()
    reduced = Search(definition, max_loops=1, reduce=True).run()
    assert set(full.index) == set(reduced.index)
    result = explore(definition, max_loops=1)
    assert result.complete
    assert result.completed >= 1
    assert not result.dead_ends
    cases = paths(definition)
    assert all(case.reachable for case in cases), [c.target for c in cases if not c.reachable]
    for case in cases:
        assert case.trace is not None
        assert replay(definition, case.outcomes).final == case.trace.final
    assert {f.code for f in check(definition)} <= {"unbounded-retry"}


def test_an_event_two_branches_wait_for_is_received_by_the_first_only() -> None:
    # The core hands an event to the first position waiting for its name
    # (stepflow.core.events, Rule 3): "received" is explored for that one only,
    # so every move's label says which position moved, as the reduction needs.
    branches = {
        "a": stepflow.steps().do("x", handler).sleep("nap", 0).wait_event("go", timeout=5),
        "b": stepflow.steps().do("y", handler).wait_event("go").do("z", handler),
    }
    definition = stepflow.new(
        stepflow.named("f").parallel("p", branches, max_failures=1)
    ).definition
    full = Search(definition, max_loops=1).run()
    reduced = Search(definition, max_loops=1, reduce=True).run()
    assert set(full.index) == set(reduced.index)
    for node, state in enumerate(full.states):
        waiting = [c for c in state.in_flight if c.kind == "wait_event"]
        if len(waiting) == 2:
            received = [
                c.step for c in waiting if "received" in outcomes_for(definition, state, 0.0, c)
            ]
            assert received == [waiting[0].step], full.trace(node).describe()
