"""The seed's deployment pipeline, verified end to end: a test to copy for your flows.

Nothing here calls a real handler or waits for real time. The flow is the seed's
pipeline as ``stepflow demo`` ran it before its regions map (``deploy/v1``, kept in
:mod:`stepflow.demo_v1`); swap in your own and keep the shape:

1. exhaustive exploration with invariants (every path, not only examples);
2. one test case per path, generated from the definition;
3. ready-made properties: resumable, deterministic, terminating;
4. a scripted simulation of one story, with time skipped.
"""

from __future__ import annotations

import time

import pytest

from stepflow.demo_v1 import flow
from stepflow.testing import (
    Raises,
    Returns,
    always,
    assert_deterministic,
    assert_resumable,
    assert_terminates,
    before,
    check,
    explore,
    leads_to,
    never,
    paths,
    simulate,
)

ROOT = "deploy/v1"
COLLECTED = f"completed:{ROOT}/collectPreDeployStateRetry"
DEPLOY = f"{ROOT}/deployCase/steps/createDeployRequest"
LIVE = f"completed:{ROOT}/deployCase/steps/monitorDeploymentProgressWaitFor"
POST = f"{ROOT}/deployCase/steps/collectPostDeployStateRetry/getPostActualState"
VALIDATE = f"{ROOT}/deployCase/steps/validatePostDeployActualState"
PRE_COLLECT = f"{ROOT}/collectPreDeployStateRetry/getPreActualState"

INVARIANTS = [
    before(COLLECTED, DEPLOY, name="deploy starts only after the pre-deploy state is collected"),
    before(LIVE, POST, name="post-deploy state is collected only once the version is live"),
    leads_to(DEPLOY, VALIDATE, name="every deploy request is validated"),
    always(
        lambda s: not s.is_completed or s.events == (f"completed:{ROOT}",),
        name="a run completes only at the end of the flow",
    ),
    never(
        lambda s: s.attempts.get(f"{ROOT}/collectPreDeployStateRetry", 0) > 4,
        name="the collector is tried at most five times",
    ),
]


def test_every_path_of_the_pipeline_keeps_its_invariants() -> None:
    started = time.perf_counter()
    result = explore(flow.definition, invariants=INVARIANTS, max_loops=3)
    elapsed = time.perf_counter() - started

    assert result.complete, "the whole state space was explored"
    assert result.violations == (), result.violations[0].trace.describe()
    assert result.dead_ends == ()
    assert result.completed > 0
    assert result.failed > 0  # timeouts and exhausted retries are reachable
    assert elapsed < 5


def test_a_broken_invariant_comes_with_its_shortest_counterexample() -> None:
    # A wrong belief: "a deploy request is always made". Runs whose app is already
    # at the desired version skip the case, and explore finds the shortest one.
    wrong = leads_to(PRE_COLLECT, DEPLOY, name="every run deploys")
    result = explore(flow.definition, invariants=[wrong], max_loops=3)
    violation = result.violation("every run deploys")
    assert violation is not None
    outcomes = [(command.step.rsplit("/", 1)[-1], outcome) for command, outcome in violation.path]
    assert outcomes[-1] == ("deployCase", "false")


def test_the_pipeline_has_no_static_findings_but_its_known_warnings() -> None:
    assert [f.code for f in check(flow.definition) if f.severity == "error"] == []


@pytest.mark.parametrize("case", paths(flow.definition), ids=lambda case: str(case.target))
def test_each_generated_path_reaches_its_target(case) -> None:  # type: ignore[no-untyped-def]
    if not case.reachable:
        pytest.skip("not reachable with loops bounded at one pass")
    trace = simulate(flow, case.script)  # an analysis script plays as it is
    if isinstance(case.target, str):  # a step: its command was executed
        assert any(s.command.step.startswith(case.target) for s in trace.steps)
    else:  # a transition: taken from its source to its destination
        assert case.target.source in trace.events


def test_the_pipeline_is_resumable_deterministic_and_terminating() -> None:
    assert_resumable(flow, max_examples=50)
    assert_deterministic(flow, max_examples=50)
    assert_terminates(flow, max_loops=3)


def test_a_flaky_collector_is_retried_and_the_deploy_goes_through() -> None:
    script = {
        ("do", PRE_COLLECT): [Raises("collector timed out"), Returns({"job": "pre-1"})],
        ("case", f"{ROOT}/deployCase"): [Returns(True)],
        ("wait_for", f"{ROOT}/deployCase/steps/waitForAcceptedDeployRequestWaitFor"): [
            Returns(False)
        ]
        * 3,
    }
    trace = simulate(flow, script)
    assert trace.final.is_completed
    steps = [step.command.step for step in trace.steps]
    assert steps.count(PRE_COLLECT) == 2
    assert steps.index(DEPLOY) < steps.index(VALIDATE)
    assert trace.elapsed < 60  # the retry's backoff and the polls, in virtual time
