"""stepflow.analysis: exploring every run, shortest test paths, design checks."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from strategies import definitions
from test_analysis_cleanup import cleanup_flows

import stepflow
import stepflow.analysis
from stepflow import Destination, FlowDefinition, Transition
from stepflow.analysis import (
    AnalysisError,
    Observation,
    PathCase,
    Trace,
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
from stepflow.analysis._model import started
from stepflow.analysis._paths import taken
from stepflow.core.definition import template_of

# -- the seed's deployment pipeline ---------------------------------------------

ROOT = "deploy/v1"
DEPLOY = f"{ROOT}/deployCase/steps"
PRE_COLLECTED = f"completed:{ROOT}/waitForPreActualStateWaitFor"
CREATE = f"{DEPLOY}/pushRetry/createDeployRequest"
PUSH_RETRY = f"{DEPLOY}/pushRetry"
LIVE = f"completed:{DEPLOY}/monitorDeploymentProgressWaitFor"
POST = f"{DEPLOY}/getPostActualState"
VALIDATE = f"{DEPLOY}/validatePostDeployActualState"


def validation_starts(happening: stepflow.analysis.Happening) -> bool:
    """The validation step starts, wherever a variant of the flow puts it."""
    return happening.what == "entered" and happening.name.endswith("/validatePostDeployActualState")


def handler(*_: Any) -> Any:
    raise AssertionError("the analysis never calls handlers")


def deploy_body(validate: stepflow.Steps | None = None) -> stepflow.Steps:
    """The deploy case's group: a bounded retry around the PR, then the rollout."""
    body = (
        stepflow.steps()
        .retry(
            "push",
            stepflow.RetryPolicy(max_attempts=3, initial_interval=5, jitter=0.2),
            stepflow.steps()
            .do("createDeployRequest", handler)
            .wait_for("waitForAcceptedDeployRequest", handler, every=30, timeout=600),
        )
        .wait_for("monitorDeploymentProgress", handler, every=10, timeout=300)
        .do("getPostActualState", handler)
        .wait_for("waitForPostActualState", handler, every=5, timeout=60)
    )
    if validate is None:
        return body.do("validatePostDeployActualState", handler)
    return body.case("maybeValidate", handler, validate)


def deploy_pipeline(
    *, reordered: bool = False, optional_validation: bool = False
) -> FlowDefinition:
    """examples/deploy_pipeline.py's flow, with timeouts and a retry policy.

    ``reordered`` runs the deploy case before waiting for the pre-deploy state;
    ``optional_validation`` puts the validation behind a case.
    """
    validate = (
        stepflow.steps().do("validatePostDeployActualState", handler)
        if optional_validation
        else None
    )
    spec, body = stepflow.named(ROOT).do("getPreActualState", handler), deploy_body(validate)
    wait = ("waitForPreActualState", handler)
    if reordered:
        spec = spec.case("deploy", handler, body).wait_for(*wait, every=5, timeout=60)
    else:
        spec = spec.wait_for(*wait, every=5, timeout=60).case("deploy", handler, body)
    return stepflow.new(spec).definition


DEPLOY_INVARIANTS = [
    before(PRE_COLLECTED, CREATE, name="deploy starts only after the pre-deploy state"),
    leads_to(CREATE, validation_starts, name="a deploy request is always validated"),
    before(LIVE, POST, name="post-deploy state is collected only once the version is live"),
    always(
        lambda s: s.attempts.get(PUSH_RETRY, 0) < 3,
        name="the push is attempted at most 3 times",
    ),
    never(
        lambda s: s.is_completed and s.events != (f"completed:{ROOT}",),
        name="a run completes only at the end of the flow",
    ),
    always(
        lambda s: not s.is_failed or (s.error is not None and s.error.step in s.events[0]),
        name="a failed run rests at the step that failed",
    ),
]


def test_exploring_the_deploy_pipeline_exhausts_its_state_space_quickly(
    record_property: Callable[[str, object], None],
) -> None:
    started = time.perf_counter()
    result = explore(deploy_pipeline(), invariants=DEPLOY_INVARIANTS, max_loops=3)
    seconds = time.perf_counter() - started
    print(
        f"deploy pipeline: {result.states} states, {result.transitions} transitions, {seconds:.3f}s"
    )
    record_property("states", result.states)
    record_property("transitions", result.transitions)
    assert result.complete
    assert seconds < 5
    assert result.violations == ()
    assert result.dead_ends == ()
    assert result.completed >= 1
    assert result.failed >= 1
    assert result.cut > 0  # polls were cut at max_loops
    assert result.ok


def test_a_reordered_pipeline_is_caught_with_a_shortest_counterexample() -> None:
    definition = deploy_pipeline(reordered=True)
    result = explore(definition, invariants=DEPLOY_INVARIANTS)
    violation = result.violation("deploy starts only after the pre-deploy state")
    assert violation is not None
    assert violation.trace.outcomes == (
        ("do", f"{ROOT}/getPreActualState", "returned"),
        ("case", f"{ROOT}/deployCase", "true"),
    )
    assert violation.states[-1].events == (f"start:{CREATE}",)
    assert [command.step for command, _ in violation.path] == [
        f"{ROOT}/getPreActualState",
        f"{ROOT}/deployCase",
    ]
    # The counterexample replays through advance to the same states.
    assert replay(definition, violation.trace.outcomes) == violation.trace
    assert "createDeployRequest" in str(violation)
    # The other invariants still hold in the reordered flow.
    assert [v.invariant for v in result.violations] == [violation.invariant]


def test_an_optional_validation_breaks_leads_to_on_completed_runs_only() -> None:
    definition = deploy_pipeline(optional_validation=True)
    result = explore(definition, invariants=DEPLOY_INVARIANTS)
    violation = result.violation("a deploy request is always validated")
    assert violation is not None
    assert violation.states[-1].is_completed
    outcomes = violation.trace.outcomes
    assert outcomes[-1] == ("case", f"{DEPLOY}/maybeValidateCase", "false")
    # Shortest: every wait answered true at once, every step returned.
    assert len(outcomes) == 9
    assert all(outcome in ("returned", "true") for *_, outcome in outcomes[:-1])


def test_explore_is_deterministic() -> None:
    first = explore(deploy_pipeline(reordered=True), invariants=DEPLOY_INVARIANTS)
    again = explore(deploy_pipeline(reordered=True), invariants=DEPLOY_INVARIANTS)
    assert first == again


def test_counters_cut_false_polls_at_max_loops() -> None:
    definition = stepflow.new(stepflow.named("f").wait_for("w", handler)).definition
    for max_loops in (0, 1, 2, 5):
        result = explore(definition, max_loops=max_loops)
        # One running state per number of false polls, plus completed and failed.
        assert result.states == max_loops + 1 + 2
        assert result.cut == 1
        assert result.complete


def test_a_wait_with_a_timeout_times_out_even_without_max_loops() -> None:
    definition = stepflow.new(stepflow.named("f").wait_for("w", handler, timeout=5)).definition
    timeout = "stepflow.errors.WaitTimeoutError"
    invariant = never(lambda s: s.error is not None and s.error.type == timeout, name="no timeout")
    result = explore(definition, max_loops=0, invariants=[invariant])
    violation = result.violation("no timeout")
    assert violation is not None
    assert violation.trace.outcomes == (("wait_for", "f/wWaitFor", "timed_out"),)
    assert violation.trace.final.is_failed
    # The deadline was computed by advance: 5 seconds after the step began at 0.0.
    assert violation.trace.moves[0].effect.at == 5.0


def test_max_states_stops_the_search_incomplete() -> None:
    result = explore(deploy_pipeline(), max_states=10)
    assert not result.complete
    assert result.states == 10
    assert not result.ok
    assert result.dead_ends == ()  # unexplored states are not dead ends


def test_non_retryable_errors_of_a_policy_are_explored() -> None:
    policy = stepflow.RetryPolicy(max_attempts=None, non_retryable=(KeyError,))
    definition = stepflow.new(
        stepflow.named("f").retry("r", policy, stepflow.steps().do("a", handler))
    ).definition
    result = explore(definition, invariants=[never(lambda s: s.is_failed, name="no failure")])
    violation = result.violation("no failure")
    assert violation is not None
    assert violation.trace.outcomes == (("do", "f/rRetry/a", "raised:KeyError"),)


def test_invariants_must_name_steps_and_events_of_the_flow() -> None:
    definition = deploy_pipeline()
    with pytest.raises(AnalysisError, match="nope"):
        explore(definition, invariants=[before("start:deploy/v1/nope", CREATE)])
    with pytest.raises(AnalysisError, match="did you mean 'deploy/v1/deployCase/steps/pushRetry'"):
        explore(definition, invariants=[leads_to(CREATE, f"{DEPLOY}/push")])
    assert isinstance(AnalysisError("x"), ValueError)


def test_before_counts_order_within_one_step() -> None:
    definition = stepflow.new(stepflow.named("f").do("a", handler).do("b", handler)).definition
    holds = before("completed:f/a", "start:f/b")
    broken = before("start:f/b", "completed:f/a")
    result = explore(definition, invariants=[holds, broken])
    assert [v.invariant for v in result.violations] == [broken.name]
    assert result.violations[0].trace.outcomes == (("do", "f/a", "returned"),)


def test_matchers_may_be_predicates_on_happenings() -> None:
    definition = deploy_pipeline()

    def create_raised(h: stepflow.analysis.Happening) -> bool:
        return h.what == "ran" and h.name == CREATE and h.outcome == "raised"

    result = explore(definition, invariants=[before(create_raised, f"start:{PUSH_RETRY}")])
    # start:pushRetry is entered first on the way in, before anything raised.
    assert len(result.violations) == 1


def test_replay_refuses_an_outcome_for_another_command() -> None:
    definition = deploy_pipeline()
    with pytest.raises(AnalysisError, match="waits for do"):
        replay(definition, [("case", f"{ROOT}/deployCase", "true")])
    with pytest.raises(AnalysisError, match="cannot answer"):
        replay(definition, [("do", f"{ROOT}/getPreActualState", "true")])


# -- properties over random flows ---------------------------------------------


def explorable() -> st.SearchStrategy[FlowDefinition]:
    """Random flows of one position, whose whole state space a test explores.

    With ``finally_`` groups and sagas too (tests/test_analysis_cleanup.py).
    These properties read a run's one position (``events[0]``); flows with
    parallel and map groups, whose interleavings multiply the states, are
    explored by the properties of tests/test_analysis_groups.py.
    """
    return definitions(fork=False) | cleanup_flows()


def rests(t: Transition) -> bool:
    """Whether a position rests at ``t`` whenever a run reaches it.

    Not forks, joins nor the cleanup transitions a position passes; nor a
    saga's compensation, where it rests only if a failure comes after a step
    to undo (tests/test_analysis_cleanup.py explores those).
    """
    return t.kind not in ("parallel", "join", "finally", "saga", "leave", "compensate")


@given(st.data())
def test_explore_finds_a_planted_violation_with_a_shortest_replayable_trace(
    data: st.DataObject,
) -> None:
    definition = data.draw(explorable(), label="definition")
    handlers = [t for t in definition.handler_transitions() if rests(t)]
    assume(handlers)
    target = data.draw(st.sampled_from(handlers), label="target")

    def at_target(s: stepflow.State) -> bool:
        # (A position inside a map item carries its index: compare templates.)
        return s.is_running and any(template_of(e) == target.source for e in s.events)

    planted = never(at_target, name="planted")
    result = explore(definition, invariants=[planted], max_loops=1)
    violation = result.violation("planted")
    assert violation is not None
    trace = violation.trace
    # Replayed through advance, effect by effect, the trace reaches the step...
    state, _ = stepflow.advance(definition, None, now=0.0)
    assert state == trace.start
    for move in trace.moves:
        assert move.command in state.in_flight
        state, _ = stepflow.advance(definition, state, (move.effect,))
        assert state == move.state
    assert at_target(state)
    assert any(template_of(c.step) == target.step for c in state.in_flight)
    # ...and no shorter prefix of it does (breadth first: it is a shortest one).
    assert not any(at_target(s) for s in trace.states[:-1])
    assert replay(definition, trace.outcomes) == trace


def sibling_links(definition: FlowDefinition) -> list[tuple[str, str]]:
    """(completed:<x>, start:<y>) for each step y that directly follows x in a scope."""
    links = []
    for t in definition.transitions:
        source, destination = t.source, t.destinations[0].event
        if t.is_static and source.startswith("completed:") and destination.startswith("start:"):
            left, right = source.partition(":")[2], destination.partition(":")[2]
            parent = left.rpartition("/")[0]
            # (A finally's cleanup also starts when its steps fail: no order there.)
            if parent == right.rpartition("/")[0] and parent not in definition._cleanups:
                links.append((source, destination))
    return links


@given(st.data())
def test_explore_reports_nothing_where_invariants_hold_by_construction(
    data: st.DataObject,
) -> None:
    definition = data.draw(explorable(), label="definition")
    links = sibling_links(definition)
    # A few links at a time: each monitor may double the states to explore.
    chosen = data.draw(st.lists(st.sampled_from(links), max_size=3) if links else st.just([]))
    invariants = [
        always(lambda s: s.status in ("running", "completed", "failed"), name="status"),
        always(lambda s: s.is_running == bool(s.in_flight), name="running iff a command"),
        *(before(first, then) for first, then in chosen),
    ]
    result = explore(definition, invariants=invariants, max_loops=1)
    assert result.violations == ()
    assert result.dead_ends == ()
    assert result.completed >= 1


def play(definition: FlowDefinition, case: PathCase) -> list[stepflow.State]:
    """Play a case's script (not its recorded effects) through advance."""
    script = {key: list(outcomes) for key, outcomes in case.script.items()}
    clock = 0.0
    state, commands = stepflow.advance(definition, None, now=clock)
    states = [state]
    for _ in case.outcomes:
        command = commands[0]
        at = clock if state.wake_at is None else max(clock, state.wake_at)
        effect: stepflow.Effect
        if isinstance(command, stepflow.Wake):
            effect = stepflow.TimerFired(command.id, max(at, command.at))
        elif isinstance(command, stepflow.AwaitEvent):
            outcome = script[(command.kind, command.step)].pop(0)
            if outcome == "received":
                effect = stepflow.EventReceived(command.name, None, at)
            else:
                assert outcome == "timed_out"
                assert command.at is not None
                effect = stepflow.TimerFired(command.id, max(at, command.at))
        else:
            outcome = script[(command.kind, command.step)].pop(0)
            if outcome == "returned":
                effect = stepflow.HandlerReturned(command.id, None, at)
            elif outcome == "past":  # a sleep_until's when: a time long past
                effect = stepflow.HandlerReturned(command.id, 0, at)
            elif outcome in ("true", "false"):
                effect = stepflow.HandlerReturned(command.id, outcome == "true", at)
            elif outcome.startswith("route:"):  # a switch's route returned that JSON scalar
                value = json.loads(outcome.partition(":")[2])
                effect = stepflow.HandlerReturned(command.id, value, at)
            elif outcome == "timed_out":
                assert state.timeout_at is not None
                effect = stepflow.HandlerReturned(command.id, False, max(at, state.timeout_at))
            else:
                kind = outcome.partition(":")[2] or "Exception"
                error = stepflow.ErrorRecord(kind, "scripted", command.step)
                effect = stepflow.HandlerRaised(command.id, error, None, at)
        clock = effect.at or clock
        state, commands = stepflow.advance(definition, state, (effect,))
        states.append(state)
    assert not any(script.values()), "the script has outcomes left over"
    return states


def summary(state: stepflow.State) -> tuple[object, ...]:
    """What a state says about the run, error messages aside."""
    commands = [(c.id, c.kind, c.step) for c in state.in_flight]
    error = None if state.error is None else (state.error.type, state.error.step)
    return (state.events, state.status, error, commands, state.wake_at, state.timeout_at)


def resting(definition: FlowDefinition, event: str) -> str:
    """Where a run entering ``event`` rests, after static hops."""
    while event in definition.table and definition.table[event].is_static:
        event = definition.table[event].destinations[0].event
    return event


#: Transitions a position passes with no command, the state deciding where to.
PASSED = ("finally", "saga", "leave")


def taken_by(definition: FlowDefinition, trace: Trace) -> list[TransitionTarget]:
    """The table entries the last move of ``trace`` took (those of its start, if none)."""
    if not trace.moves:
        return [
            TransitionTarget(source, dest, "")
            for source, dest in started(definition, trace.start)[1]
        ]
    before, move = trace.states[-2], trace.moves[-1]
    step = Observation(before, move.command, move.outcome, move.effect, move.state, ())
    return taken(definition, step)


@given(explorable())
def test_paths_reach_every_step_and_their_scripts_replay_to_the_target(
    definition: FlowDefinition,
) -> None:
    cases = paths(definition)
    for case in cases:
        if isinstance(case.target, str):
            assert case.reachable, case.target  # every step of a compiled flow is reachable
        if case.trace is None:
            continue
        states = play(definition, case)
        assert [summary(s) for s in states] == [summary(s) for s in case.trace.states]
        final = states[-1]
        if isinstance(case.target, str):
            scope = final.events[0].partition(":")[2]
            # (A finally or saga is entered with no command: one with nothing to rest
            # at inside, an empty saga say, is passed through.)
            # (Also through static hops: a retry whose steps are an empty finally.)
            start = f"start:{case.target}"
            passed = start in definition.table and definition._node(start).kind in PASSED
            assert scope == case.target or scope.startswith(case.target + "/") or passed
        elif definition.table[case.target.source].kind in (*PASSED, "compensate"):
            # Passed with no command of its own (a saga with nothing to undo passes its
            # compensation): on the way of the last move, or of the start.
            entries = {(t.source, t.destination) for t in taken_by(definition, case.trace)}
            assert (case.target.source, case.target.destination) in entries
        else:
            last = case.trace.moves[-1]
            assert last.command is not None
            assert last.command.event == case.target.source
            landing = resting(definition, case.target.destination)
            # (A saga with nothing to undo passes its compensation too.)
            kinds = (*PASSED, "compensate")
            passed = landing in definition.table and definition.table[landing].kind in kinds
            assert passed or final.events[0] == landing
    targets = [case.target for case in cases]
    assert len(targets) == len(set(targets))


def test_paths_lists_unreachable_destinations() -> None:
    policy = stepflow.RetryPolicy(max_attempts=1)
    definition = stepflow.new(
        stepflow.named("f").retry("r", policy, stepflow.steps().do("a", handler).sleep("s", 5))
    ).definition
    unreachable = [case.target for case in paths(definition) if not case.reachable]
    assert unreachable == [
        TransitionTarget("start:f/rRetry/a", "start:f/rRetry", "retry"),
    ]


def test_paths_give_the_seed_pipeline_a_script_per_step() -> None:
    cases = {case.target: case for case in paths(deploy_pipeline())}
    validate = cases[VALIDATE]
    assert validate.script == {
        ("do", f"{ROOT}/getPreActualState"): ["returned"],
        ("wait_for", f"{ROOT}/waitForPreActualStateWaitFor"): ["true"],
        ("case", f"{ROOT}/deployCase"): ["true"],
        ("do", CREATE): ["returned"],
        ("wait_for", f"{PUSH_RETRY}/waitForAcceptedDeployRequestWaitFor"): ["true"],
        ("wait_for", f"{DEPLOY}/monitorDeploymentProgressWaitFor"): ["true"],
        ("do", POST): ["returned"],
        ("wait_for", f"{DEPLOY}/waitForPostActualStateWaitFor"): ["true"],
    }
    retry = cases[TransitionTarget(f"start:{CREATE}", f"start:{PUSH_RETRY}", "retry")]
    assert retry.outcomes[-1] == ("do", CREATE, "raised")
    assert isinstance(retry.trace, Trace)
    assert all(case.reachable for case in cases.values())


# -- check --------------------------------------------------------------------


def codes(definition: FlowDefinition) -> list[tuple[str, str, str]]:
    return [(f.code, f.severity, f.path) for f in check(definition)]


def test_check_finds_nothing_in_the_seed_pipeline_with_timeouts_and_a_bounded_retry() -> None:
    assert check(deploy_pipeline()) == []


def test_check_warns_of_a_wait_without_timeout() -> None:
    definition = stepflow.new(stepflow.named("f").wait_for("ready", handler)).definition
    (finding,) = check(definition)
    assert (finding.code, finding.severity, finding.path) == (
        "wait-without-timeout",
        "warning",
        "f/readyWaitFor",
    )
    assert "timeout=" in finding.hint
    assert "f/readyWaitFor" in str(finding)


def test_check_warns_of_retries_with_no_bound() -> None:
    on_error_only = stepflow.named("f").retry("r", handler, stepflow.steps().do("a", handler))
    assert codes(stepflow.new(on_error_only).definition) == [
        ("unbounded-retry", "warning", "f/rRetry")
    ]
    no_limit = stepflow.RetryPolicy(max_attempts=None, initial_interval=1)
    forever = stepflow.named("f").retry("r", no_limit, stepflow.steps().do("a", handler))
    (finding,) = check(stepflow.new(forever).definition)
    assert finding.code == "unbounded-retry"
    assert "forever" in finding.message


def test_check_warns_of_a_retry_that_never_restarts() -> None:
    once = stepflow.RetryPolicy(max_attempts=1)
    spec = stepflow.named("f").retry("r", once, stepflow.steps().do("a", handler), on_error=handler)
    (finding,) = check(stepflow.new(spec).definition)
    assert (finding.code, finding.path) == ("retry-never-restarts", "f/rRetry")
    assert "on_error handler is never asked" in finding.message


def test_check_warns_of_a_loop_with_nothing_in_it() -> None:
    spec = stepflow.named("f").loop_until("l", handler, stepflow.steps())
    assert codes(stepflow.new(spec).definition) == [("busy-loop", "warning", "f/lLoopUntil")]


def test_check_finds_a_retry_no_failure_reaches() -> None:
    swallow = stepflow.RetryPolicy(max_attempts=None)
    spec = stepflow.named("f").retry(
        "outer",
        handler,
        stepflow.steps().retry("inner", swallow, stepflow.steps().do("a", handler)),
    )
    found = check(stepflow.new(spec).definition)
    assert [(f.code, f.path) for f in found] == [
        ("unbounded-retry", "f/outerRetry"),
        ("unreachable-transition", "f/outerRetry"),
        ("unbounded-retry", "f/outerRetry/innerRetry"),
    ]
    assert "f/outerRetry/innerRetry/a" in found[1].message


def test_check_finds_an_unreachable_step_in_a_hand_built_table() -> None:
    static = "static"
    definition = FlowDefinition(
        "f",
        (
            Transition("start:f", static, None, (Destination("start:f/a", static),)),
            Transition("start:f/a", "do", "f/a", (Destination("completed:f/a", "returned"),)),
            Transition("completed:f/a", static, None, (Destination("completed:f", static),)),
            Transition("start:f/b", "do", "f/b", (Destination("completed:f/b", "returned"),)),
            Transition("completed:f/b", static, None, (Destination("completed:f", static),)),
        ),
    )
    assert codes(definition) == [
        ("unreachable-step", "error", "f/b"),
        ("unreachable-transition", "warning", "f/b"),
    ]


def test_a_table_with_a_step_after_completion_is_refused_when_built() -> None:
    # A transition leaving the completed event would make a run that never
    # completes, its "completed" step running forever: the definition refuses it.
    static = "static"
    with pytest.raises(stepflow.DefinitionError, match="completed:f"):
        FlowDefinition(
            "f",
            (
                Transition("start:f", static, None, (Destination("start:f/a", static),)),
                Transition("start:f/a", "do", "f/a", (Destination("completed:f/a", "returned"),)),
                Transition("completed:f/a", static, None, (Destination("completed:f", static),)),
                Transition(
                    "completed:f", "do", "f/again", (Destination("completed:f", "returned"),)
                ),
            ),
        )


def test_check_says_when_the_search_was_cut_short() -> None:
    assert codes(deploy_pipeline()) == []
    found = check(deploy_pipeline(), max_states=5)
    assert [f.code for f in found] == ["incomplete-analysis"]


# -- the package --------------------------------------------------------------


def test_the_analysis_exports_are_sorted_and_documented() -> None:
    names = stepflow.analysis.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), n))
    for name in names:
        obj = getattr(stepflow.analysis, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), name


def test_the_analysis_imports_without_hypothesis() -> None:
    code = (
        "import sys; sys.modules['hypothesis'] = None\n"
        "import stepflow.analysis\n"
        "assert 'hypothesis' not in [m.split('.')[0] for m in sys.modules if sys.modules[m]]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
