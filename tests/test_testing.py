"""stepflow.testing: scripts, simulation, ready-made properties, FlowMachine, plugin."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant

import stepflow
from stepflow import Destination
from stepflow.testing import (
    START,
    FakeClock,
    FlowMachine,
    Raises,
    Returns,
    ScriptedWorld,
    assert_deterministic,
    assert_resumable,
    assert_terminates,
    flows,
    outcomes,
    scripted_flow,
    simulate,
)


def _never(ctx: object) -> bool:
    raise AssertionError("scripted flows never call the real handlers")


RELEASE = stepflow.new(
    stepflow.named("release/v1")
    .do("build", _never)
    .sleep("soak", timedelta(days=7))
    .wait_for("approved", _never, every=timedelta(hours=1), timeout=timedelta(days=2))
    .retry(
        "publish",
        stepflow.RetryPolicy(max_attempts=3, initial_interval=60, jitter=0),
        stepflow.steps().do("publish", _never),
    )
)
WEEK = 7 * 24 * 3600.0


def test_simulate_skips_a_week_of_sleep_and_hours_of_polls_instantly() -> None:
    script = {
        ("do", "release/v1/build"): [Returns({"artifact": "r-1"})],
        ("wait_for", "release/v1/approvedWaitFor"): [Returns(False)] * 5,
        ("do", "release/v1/publishRetry/publish"): [Raises("registry down")],
    }
    trace = simulate(RELEASE, script)

    assert trace.final.is_completed
    assert trace.final.outputs["release/v1/build"] == {"artifact": "r-1"}
    # From build's answer: a week of sleep, the first poll (each handler takes 1 s),
    # five more an hour apart, the failed publish, 60 s of backoff, the good one.
    assert trace.elapsed == WEEK + 1 + 5 * (3600 + 1) + 1 + 60 + 1
    kinds = [step.command.kind for step in trace.steps]
    assert kinds == ["do", "sleep", *["wait_for"] * 6, "do", "do"]
    assert trace.events[0] == "start:release/v1/build"
    assert trace.events[-1] == "completed:release/v1"


def test_simulate_on_a_given_clock_leaves_it_at_the_end_of_the_run() -> None:
    clock = FakeClock(START)
    trace = simulate(RELEASE, {}, clock)
    assert clock.now() == trace.effects[-1].at
    assert clock.now() >= START + WEEK


def test_a_scripted_flow_runs_through_the_real_driver_on_a_fake_clock() -> None:
    world = ScriptedWorld({("wait_for", "release/v1/approvedWaitFor"): [Returns(False)] * 3})
    flow = scripted_flow(RELEASE.definition, world)
    state = flow.run()
    assert state.is_completed
    assert world.calls[("wait_for", "release/v1/approvedWaitFor")] == 4
    assert world.clock.now() >= START + WEEK + 3 * 3600


def test_a_script_naming_no_handler_of_the_flow_is_refused() -> None:
    with pytest.raises(stepflow.ConfigurationError, match="release/v1/aproved"):
        simulate(RELEASE, {("wait_for", "release/v1/aprovedWaitFor"): [Returns(False)]})


def test_a_wait_past_its_timeout_fails_in_simulation() -> None:
    script = {("wait_for", "release/v1/approvedWaitFor"): [Returns(False)] * 100}
    final = simulate(RELEASE, script).final
    assert final.is_failed
    assert final.error is not None
    assert final.error.type == "stepflow.errors.WaitTimeoutError"
    assert final.events == ("start:release/v1/approvedWaitFor",)


def test_assert_resumable_tries_every_crash_point_of_a_given_script() -> None:
    script = {("do", "release/v1/publishRetry/publish"): [Raises("x"), Raises("y")]}
    assert_resumable(RELEASE, script)


def test_assert_resumable_and_deterministic_draw_their_own_scripts() -> None:
    assert_resumable(RELEASE, max_examples=25)
    assert_deterministic(RELEASE, max_examples=25)


@settings(max_examples=30)
@given(st.data())
def test_flows_and_outcomes_compose_into_simulations_that_end(data: st.DataObject) -> None:
    definition = data.draw(flows())
    script = data.draw(outcomes(definition))
    trace = simulate(definition, script)
    assert trace.final.status in ("completed", "failed")
    assert trace.final.in_flight == ()


class ReleaseMachine(FlowMachine):
    """A user's machine: the built-in rules plus an invariant of their own."""

    flow = RELEASE

    def __init__(self) -> None:
        super().__init__()
        self.soaked = False

    def apply(self, effect: stepflow.Effect) -> None:
        if isinstance(effect, stepflow.TimerFired):
            self.soaked = True
        super().apply(effect)

    # A user's invariant: nothing is published before the soak is over.
    @invariant()
    def never_publishes_before_the_soak(self) -> None:
        command = self.command
        if command is not None and command.step.endswith("/publish"):
            assert self.soaked


ReleaseMachine.TestCase.settings = settings(max_examples=30, stateful_step_count=20)
TestReleaseMachine = ReleaseMachine.TestCase


def test_the_pytest_plugin_gives_a_fake_clock_and_scripted_flows(
    fake_clock: FakeClock, scripted_flow: Callable[..., stepflow.Flow]
) -> None:
    flow = scripted_flow(RELEASE, {("wait_for", "release/v1/approvedWaitFor"): [Returns(False)]})
    assert flow.run().is_completed
    assert fake_clock.now() >= START + WEEK + 3600


def test_assert_terminates_passes_a_flow_that_always_ends() -> None:
    assert_terminates(RELEASE)


def test_assert_terminates_shows_the_path_to_a_state_that_never_ends() -> None:
    # Any handler can raise and fail the run, so only timers can trap one: a
    # hand-built table whose sleep fires back into itself never ends.
    static = "static"
    trapped = stepflow.FlowDefinition(
        "trap/v1",
        (
            stepflow.Transition(
                "start:trap/v1", static, None, (Destination("start:trap/v1/a", static),)
            ),
            stepflow.Transition(
                "start:trap/v1/a", "do", "trap/v1/a", (Destination("start:trap/v1/s", "returned"),)
            ),
            stepflow.Transition(
                "start:trap/v1/s",
                "sleep",
                "trap/v1/s",
                (Destination("start:trap/v1/s", "timer fired"),),
                delay=60.0,
            ),
        ),
    )
    with pytest.raises(AssertionError, match="can never complete or fail") as raised:
        assert_terminates(trapped)
    assert str(raised.value).endswith("-> start:trap/v1/s (running)")


def test_assert_terminates_says_when_the_state_space_is_too_big() -> None:
    with pytest.raises(AssertionError, match="exceeds 3 states"):
        assert_terminates(RELEASE, max_states=3)


def test_a_search_cut_short_reports_no_dead_end_it_did_not_prove() -> None:
    from stepflow.analysis import explore

    result = explore(RELEASE.definition, max_states=3)
    assert not result.complete
    assert result.dead_ends == ()
