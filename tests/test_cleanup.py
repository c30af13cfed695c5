"""finally_, sagas with compensations, and cancellation (stepflow.core.cleanup's rules)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import stepflow
from stepflow import RetryPolicy, named, steps
from stepflow.clock import FakeClock
from stepflow.codec import dumps, dumps_batch, loads, loads_batch
from stepflow.core._json import freeze_json
from stepflow.core.advance import advance, result_error, resume
from stepflow.core.cleanup import pending_error
from stepflow.core.messages import (
    CallHandler,
    CancelRequested,
    EventReceived,
    HandlerRaised,
    HandlerReturned,
)
from stepflow.core.state import ErrorRecord
from stepflow.errors import DefinitionError, FlowFailed
from stepflow.history import Batch
from stepflow.testing import Returns, flows_and_scripts, simulate
from stepflow.testing._properties import run_with_crashes
from stepflow.testing._scripts import SCRIPTED_CANCEL, ScriptedWorld

CANCELLED = "stepflow.errors.RunCancelled"


class Log:
    """Handlers that record what ran, and what ctx.error they saw."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.failing: dict[str, int] = {}

    def __call__(self, name: str, value: Any = None) -> Any:
        def handler(ctx: Any) -> Any:
            error = getattr(ctx, "error", None)
            self.calls.append((name, None if error is None else error.message))
            if self.failing.get(name, 0) > 0:
                self.failing[name] -= 1
                raise RuntimeError(f"{name} failed")
            return name if value is None else value

        return handler

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def _run(flow: stepflow.Flow, state: stepflow.State | None = None) -> stepflow.State:
    try:
        return flow.run(state)
    except FlowFailed as failed:
        return failed.state


# ---------------------------------------------------------------------- finally_


def test_a_finally_cleanup_runs_after_its_steps_complete_and_the_flow_goes_on() -> None:
    log = Log()
    flow = stepflow.new(
        named("f")
        .finally_("lease", steps().do("work", log("work")), steps().do("release", log("release")))
        .do("after", log("after"))
    )
    state = _run(flow)
    assert state.is_completed
    assert log.calls == [("work", None), ("release", None), ("after", None)]
    assert "f/leaseFinally" not in state.outputs  # nothing was pending


def test_a_failure_runs_the_cleanup_with_ctx_error_then_goes_on_outward() -> None:
    log = Log()
    log.failing["work"] = 1
    flow = stepflow.new(
        named("f")
        .finally_("lease", steps().do("work", log("work")), steps().do("release", log("release")))
        .do("after", log("after"))
    )
    state = _run(flow)
    assert state.is_failed
    assert state.error is not None
    assert state.error.message == "work failed"
    assert log.calls == [("work", None), ("release", "work failed")]
    assert state.outputs["f/leaseFinally"]["error"]["message"] == "work failed"


def test_a_catch_around_a_finally_takes_the_error_after_the_cleanup() -> None:
    log = Log()
    log.failing["work"] = 1
    inner = steps().finally_(
        "lease", steps().do("work", log("work")), steps().do("release", log("release"))
    )
    flow = stepflow.new(named("f").catch("c", inner, steps().do("handle", log("handle"))))
    state = _run(flow)
    assert state.is_completed
    assert log.names == ["work", "release", "handle"]


def test_a_retry_around_a_finally_cleans_up_each_pass_and_forgets_the_last_error() -> None:
    log = Log()
    log.failing["work"] = 1
    body = steps().finally_(
        "lease", steps().do("work", log("work")), steps().do("release", log("release"))
    )
    flow = stepflow.new(named("f").retry("r", RetryPolicy(max_attempts=2), body))
    state = _run(flow)
    assert state.is_completed
    assert log.calls == [
        ("work", None),
        ("release", "work failed"),
        ("work", None),
        ("release", None),  # the second pass completed: nothing pending
    ]


def test_a_failing_cleanup_replaces_the_error_and_keeps_the_first_in_outputs() -> None:
    log = Log()
    log.failing["work"] = 1
    log.failing["release"] = 1
    flow = stepflow.new(
        named("f").finally_(
            "lease", steps().do("work", log("work")), steps().do("release", log("release"))
        )
    )
    state = _run(flow)
    assert state.error is not None
    assert state.error.message == "release failed"
    assert state.outputs["f/leaseFinally"]["error"]["message"] == "work failed"


def test_finally_and_saga_refuse_bad_specs_with_the_path() -> None:
    with pytest.raises(DefinitionError, match="cleanup"):
        stepflow.new(named("f").finally_("x", steps().do("a", print), None))  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="not a RetryPolicy"):
        stepflow.new(named("f").saga("x", steps().do("a", print), policy=3))  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match="no saga encloses it") as raised:
        stepflow.new(named("f").do("a", print, compensate=print))
    assert raised.value.path == "f/a"
    with pytest.raises(DefinitionError, match="not callable"):
        stepflow.new(named("f").saga("s", steps().do("a", print, compensate=3)))  # type: ignore[arg-type]


# ---------------------------------------------------------------------- sagas


def _transfer(log: Log, policy: RetryPolicy | None = None) -> stepflow.Flow:
    return stepflow.new(
        named("transfer")
        .saga(
            "money",
            steps()
            .do("withdraw", log("withdraw"), compensate=log("refund"))
            .do("fee", log("fee"), compensate=log("unfee"))
            .do("deposit", log("deposit")),
            policy=policy,
        )
        .do("notify", log("notify"))
    )


def test_a_failed_saga_compensates_its_completed_steps_in_reverse_order() -> None:
    log = Log()
    log.failing["deposit"] = 1
    state = _run(_transfer(log))
    assert state.is_failed
    assert state.error is not None
    assert state.error.message == "deposit failed"
    assert log.calls == [
        ("withdraw", None),
        ("fee", None),
        ("deposit", None),
        ("unfee", "deposit failed"),
        ("refund", "deposit failed"),
    ]
    assert list(state.outputs["transfer/moneySaga"]["done"]) == []


def test_a_saga_that_completes_compensates_nothing() -> None:
    log = Log()
    state = _run(_transfer(log))
    assert state.is_completed
    assert log.names == ["withdraw", "fee", "deposit", "notify"]
    done = state.outputs["transfer/moneySaga"]["done"]
    assert list(done) == ["transfer/moneySaga/steps/withdraw", "transfer/moneySaga/steps/fee"]


def test_each_compensation_is_retried_by_the_saga_policy_then_the_rest_run() -> None:
    log = Log()
    log.failing["deposit"] = 1
    log.failing["unfee"] = 2
    state = _run(_transfer(log, RetryPolicy(max_attempts=3)))
    assert state.error is not None
    assert state.error.message == "deposit failed"
    assert log.names == ["withdraw", "fee", "deposit", "unfee", "unfee", "unfee", "refund"]


def test_a_compensation_that_still_fails_fails_the_run_and_resume_goes_on() -> None:
    log = Log()
    log.failing["deposit"] = 1
    log.failing["unfee"] = 1
    flow = _transfer(log)
    state = _run(flow)
    assert state.error is not None
    assert state.error.message == "unfee failed"
    assert state.events == ("start:transfer/moneySaga/compensate",)
    assert log.names == ["withdraw", "fee", "deposit", "unfee"]
    resumed, _ = resume(flow.definition, state, now=flow.clock.now())
    state = _run(flow, resumed)
    # The failed compensation runs again, then the rest; then the first error goes on.
    assert log.names[4:] == ["unfee", "refund"]
    assert state.error is not None
    assert state.error.message == "deposit failed"


def test_a_nested_saga_compensates_its_own_pass_and_the_outer_saga_all() -> None:
    log = Log()
    log.failing["late"] = 1
    inner = steps().do("b", log("b"), compensate=log("undo-b"))
    flow = stepflow.new(
        named("f").saga(
            "outer",
            steps()
            .do("a", log("a"), compensate=log("undo-a"))
            .saga("inner", inner)
            .do("late", log("late")),
        )
    )
    state = _run(flow)
    assert state.error is not None
    assert state.error.message == "late failed"
    assert log.names == ["a", "b", "late", "undo-b", "undo-a"]


def test_a_failure_inside_a_nested_saga_compensates_only_that_pass_first() -> None:
    log = Log()
    log.failing["boom"] = 1
    inner = steps().do("b", log("b"), compensate=log("undo-b")).do("boom", log("boom"))
    flow = stepflow.new(
        named("f").saga(
            "outer",
            steps()
            .do("a", log("a"), compensate=log("undo-a"))
            .catch("c", steps().saga("inner", inner), steps().do("handled", log("handled")))
            .do("z", log("z")),
        )
    )
    state = _run(flow)
    assert state.is_completed
    assert log.names == ["a", "b", "boom", "undo-b", "handled", "z"]
    done = state.outputs["f/outerSaga"]["done"]
    assert list(done) == ["f/outerSaga/steps/a"]  # the inner pass's mark left with it


def test_compensations_inside_map_items_run_when_the_saga_fails() -> None:
    log = Log()
    log.failing["charge"] = 1
    item = steps().do("reserve", log("reserve"), compensate=log("unreserve"))
    flow = stepflow.new(
        named("f").saga(
            "order",
            steps().map("items", lambda ctx: [1, 2], item).do("charge", log("charge")),
        )
    )
    state = _run(flow)
    assert state.error is not None
    assert state.error.message == "charge failed"
    assert log.names == ["reserve", "reserve", "charge", "unreserve", "unreserve"]


# ---------------------------------------------------------------------- cancellation


def _job(log: Log) -> stepflow.Flow:
    return stepflow.new(
        named("job")
        .finally_(
            "lease",
            steps()
            .saga(
                "work",
                steps()
                .do("book", log("book"), compensate=log("unbook"))
                .wait_event("approved")
                .do("ship", log("ship"), compensate=log("unship")),
            )
            .do("done", log("done")),
            steps().do("release", log("release")),
        )
        .do("after", log("after")),
        clock=FakeClock(1000.0),
    )


def test_a_run_resting_at_an_event_is_cancelled_at_once_with_its_cleanups() -> None:
    log = Log()
    flow = _job(log)
    state = flow.run()
    assert state.is_running
    state = flow.cancel(state, "customer left")
    assert state.status == "cancelling"
    state = flow.run(state)
    assert state.is_cancelled
    assert state.is_finished
    assert state.error == ErrorRecord(
        CANCELLED, "customer left", "job/leaseFinally/steps/workSaga/steps/approvedWaitEvent"
    )
    assert log.calls == [("book", None), ("unbook", "customer left"), ("release", "customer left")]
    # Cancelling again, or cancelling a finished run, changes nothing.
    assert flow.cancel(state, "again") is state or flow.cancel(state, "again") == state


def test_a_step_in_flight_finishes_and_is_recorded_then_the_run_unwinds() -> None:
    log = Log()
    flow = _job(log)
    state, (command,) = advance(flow.definition, None, now=1000.0)
    assert command.step.endswith("/book")
    cancelling, still = advance(flow.definition, state, [CancelRequested("stop", 1000.5)])
    assert cancelling.status == "cancelling"
    assert still == (command,)
    done, commands = advance(
        flow.definition, cancelling, [HandlerReturned(command.id, "ok", 1001.0)]
    )
    assert done.outputs["job/leaseFinally/steps/workSaga/steps/book"] == "ok"
    assert [c.kind for c in commands] == ["compensate"]
    assert commands[0].step == "job/leaseFinally/steps/workSaga/steps/book"


def test_a_handler_that_fails_after_the_request_is_not_retried() -> None:
    flow = stepflow.new(
        named("f").retry("r", RetryPolicy(max_attempts=5), steps().do("a", print)),
        clock=FakeClock(0.0),
    )
    state, (command,) = advance(flow.definition, None, now=0.0)
    state, _ = advance(flow.definition, state, [CancelRequested("stop", 0.0)])
    error = ErrorRecord("RuntimeError", "x", command.step)
    state, commands = advance(flow.definition, state, [HandlerRaised(command.id, error, None, 1.0)])
    assert state.is_cancelled
    assert commands == ()
    assert state.error is not None
    assert state.error.type == CANCELLED


def test_a_deadline_is_recorded_as_deadline_exceeded() -> None:
    log = Log()
    flow = _job(log)
    state = flow.run()
    state, _ = advance(flow.definition, state, [CancelRequested("deadline passed", 5000.0, True)])
    state = flow.run(state)
    assert state.is_cancelled
    assert state.error is not None
    assert state.error.type == "stepflow.errors.DeadlineExceeded"


def test_a_cancel_while_a_cleanup_runs_for_a_failure_lets_it_finish_then_cancels() -> None:
    log = Log()
    log.failing["work"] = 1
    flow = stepflow.new(
        named("f").finally_(
            "lease",
            steps().do("work", log("work")),
            steps().do("release", log("release")).do("audit", log("audit")),
        ),
        clock=FakeClock(0.0),
    )
    state = flow.apply()  # work failed: release is in flight
    assert state.in_flight[0].step == "f/leaseFinally/cleanup/release"
    state = flow.cancel(state, "stop")
    assert state.status == "cancelling"
    assert state.in_flight[0].step.endswith("release")
    state = flow.run(state)
    assert state.is_cancelled
    assert log.names == ["work", "release", "audit"]


def test_a_cleanup_that_fails_while_cancelling_fails_the_run_and_resume_finishes() -> None:
    log = Log()
    log.failing["release"] = 1
    flow = _job(log)
    state = _run(flow, flow.cancel(flow.run(), "stop"))
    assert state.is_failed
    assert state.error is not None
    assert state.error.message == "release failed"
    resumed, _ = resume(flow.definition, state, now=flow.clock.now())
    state = flow.run(resumed)
    assert state.is_cancelled
    assert state.error is not None
    assert state.error.message == "stop"
    assert log.names == ["book", "unbook", "release", "release"]


def test_a_cleanup_waiting_for_an_event_gets_it_while_the_run_is_cancelling() -> None:
    log = Log()
    flow = stepflow.new(
        named("f").finally_(
            "lease",
            steps().wait_event("go"),
            steps().wait_event("released").do("audit", log("audit")),
        ),
        clock=FakeClock(0.0),
    )
    state = flow.run(flow.cancel(flow.run(), "stop"))
    assert state.status == "cancelling"
    state = flow.run(flow.send(state, "released", {"by": "ops"}))
    assert state.is_cancelled
    assert state.outputs["f/leaseFinally/cleanup/releasedWaitEvent"] == {"by": "ops"}
    assert log.names == ["audit"]


def test_events_in_the_batch_of_a_cancellation_that_ends_the_run_are_dropped() -> None:
    flow = stepflow.new(named("f").wait_event("go").wait_event("later"), clock=FakeClock(0.0))
    state = flow.run()
    batch = [CancelRequested("stop", 1.0), EventReceived("later", 1, 1.0)]
    state, commands = advance(flow.definition, state, batch)
    assert state.is_cancelled
    assert commands == ()
    assert state.mailbox == ()


def test_inside_a_cleanup_a_nested_cleanup_fails_to_the_scopes_of_the_outer_one() -> None:
    log = Log()
    log.failing["inner-work"] = 1
    log.failing["undo"] = 1
    inner = steps().finally_(
        "inner", steps().do("inner-work", log("inner-work")), steps().do("tidy", log("tidy"))
    )
    saga = steps().saga("s", steps().do("a", log("a"), compensate=log("undo")).do("b", log("b")))
    log.failing["b"] = 1
    cleanup = (
        steps()
        .catch("c1", inner, steps().do("caught-1", log("caught-1")))
        .catch("c2", saga, steps().do("caught-2", log("caught-2")))
        .do("release", log("release"))
    )
    flow = stepflow.new(
        named("f").finally_("lease", steps().wait_event("go"), cleanup), clock=FakeClock(0.0)
    )
    state = flow.run(flow.cancel(flow.run(), "stop"))
    assert state.is_cancelled
    assert log.names == ["inner-work", "tidy", "caught-1", "a", "b", "undo", "caught-2", "release"]


def test_a_failure_leaving_a_nested_cleanup_while_cancelling_fails_the_run() -> None:
    log = Log()
    log.failing["b"] = 1
    saga = steps().saga("s", steps().do("a", log("a"), compensate=log("undo")).do("b", log("b")))
    flow = stepflow.new(
        named("f").finally_("lease", steps().wait_event("go"), saga), clock=FakeClock(0.0)
    )
    state = _run(flow, flow.cancel(flow.run(), "stop"))
    assert state.is_failed
    assert state.error is not None
    assert state.error.message == "b failed"
    assert log.names == ["a", "b", "undo"]
    # Nothing is lost: the cancellation the cleanup ran for stays recorded.
    assert state.outputs["f/leaseFinally"]["cancelled"]["message"] == "stop"


def test_catches_and_retries_do_not_take_a_cancellation() -> None:
    log = Log()
    body = steps().finally_(
        "lease", steps().wait_event("go"), steps().do("release", log("release"))
    )
    flow = stepflow.new(
        named("f").catch(
            "c", steps().retry("r", RetryPolicy(max_attempts=3), body), steps().do("h", log("h"))
        ),
        clock=FakeClock(0.0),
    )
    state = flow.run(flow.cancel(flow.run(), "stop"))
    assert state.is_cancelled
    assert log.names == ["release"]


def test_every_branch_of_a_parallel_group_cleans_up_once_when_cancelled() -> None:
    log = Log()

    def branch(name: str) -> stepflow.Steps:
        return steps().finally_(
            "hold",
            steps().wait_event(f"go-{name}"),
            steps().do(f"free-{name}", log(f"free-{name}")),
        )

    flow = stepflow.new(
        named("f").parallel("both", {"a": branch("a"), "b": branch("b")}).do("z", log("z")),
        clock=FakeClock(0.0),
    )
    state = flow.run(flow.cancel(flow.run(), "stop"))
    assert state.is_cancelled
    assert sorted(log.names) == ["free-a", "free-b"]


def test_a_failing_branch_cancels_its_siblings_with_their_cleanup() -> None:
    log = Log()
    log.failing["boom"] = 1
    sibling = steps().finally_("hold", steps().sleep("nap", 60), steps().do("free", log("free")))
    flow = stepflow.new(
        named("f").parallel("both", {"a": steps().do("boom", log("boom")), "b": sibling}),
        clock=FakeClock(0.0),
    )
    state = _run(flow)
    assert state.is_failed
    assert state.error is not None
    assert state.error.message == "boom failed"
    assert log.calls == [("boom", None), ("free", "boom failed")]


def test_cancelling_a_map_runs_each_started_items_cleanup() -> None:
    log = Log()
    item = steps().finally_("hold", steps().wait_event("go"), steps().do("free", log("free")))
    flow = stepflow.new(
        named("f").map("items", lambda ctx: [1, 2, 3], item, max_concurrency=2),
        clock=FakeClock(0.0),
    )
    state = flow.run()
    assert len(state.in_flight) == 2
    state = flow.run(flow.cancel(state, "stop"))
    assert state.is_cancelled
    assert log.names == ["free", "free"]  # the third item never started


def test_cancelling_states_and_cancellations_survive_the_codec_and_the_journal() -> None:
    log = Log()
    flow = _job(log)
    state, _ = advance(flow.definition, None, now=1000.0)
    cancelling, _ = advance(flow.definition, state, [CancelRequested("stop", 1000.5)])
    assert loads(dumps(cancelling), flow.definition) == cancelling
    request = CancelRequested("stop", 1000.5, True)
    batch = Batch("effects", 1000.5, (request,))
    assert loads_batch(dumps_batch(batch)).effects == (request,)
    cancelled = flow.run(cancelling)
    assert loads(dumps(cancelled), flow.definition) == cancelled


# ---------------------------------------------------------------------- properties


@given(st.integers(0, 8), st.lists(st.sampled_from(["none", "before", "after"]), max_size=20))
def test_cancelled_anywhere_and_crashed_anywhere_each_cleanup_and_compensation_runs_once(
    cancel_after: int, crashes: list[Any]
) -> None:
    """At-least-once execution with one id each; exactly one effect per command id."""
    log = Log()
    definition = _job(log).definition
    script = {
        ("wait_event", "job/leaseFinally/steps/workSaga/steps/approvedWaitEvent"): [Returns(1)]
    }
    calm = simulate(definition, script, cancel_after=cancel_after)
    stormy = ScriptedWorld(script)
    final = run_with_crashes(definition, stormy, crashes, cancel_after=cancel_after)
    assert final == dumps(calm.final)
    executed = [s.command for s in calm.steps if s.command is not None]
    kinds = [(c.kind, c.step.rsplit("/", 1)[-1]) for c in executed]
    cancelled = calm.final.is_cancelled
    assert calm.final.status in ("completed", "cancelled")
    order = [
        "cancel" if s.command is None else s.command.step.rsplit("/", 1)[-1] for s in calm.steps
    ]
    # The saga is compensated when the cancellation came before its last step ended.
    inside = "cancel" in order and (
        "ship" not in order or order.index("cancel") < order.index("ship")
    )
    # The cleanup ran exactly once, whatever happened.
    assert kinds.count(("do", "release")) == 1
    # Compensations: exactly the completed compensable steps, last first.
    done = [k[1] for k in kinds if k in (("do", "book"), ("do", "ship"))]
    undone = [k[1] for k in kinds if k[0] == "compensate"]
    assert undone == (list(reversed(done)) if inside else [])
    assert cancelled == ("cancel" in order)
    # After crashes, commands re-ran only under their own ids.
    first: dict[int, Any] = {}
    for command in stormy.executed:
        assert first.setdefault(command.id, command) == command


@given(
    flows_and_scripts(),
    st.integers(0, 12),
    st.lists(st.sampled_from(["none", "before", "after"]), max_size=30),
)
def test_a_random_run_cancelled_anywhere_unwinds_to_the_end_even_across_crashes(
    flow_and_script: Any, cancel_after: int, crashes: list[Any]
) -> None:
    definition, script = flow_and_script
    calm = simulate(definition, script, cancel_after=cancel_after)
    final = calm.final
    requested = any(type(s.effect) is CancelRequested for s in calm.steps)
    if requested:
        assert final.status in ("cancelled", "failed")
        if final.is_cancelled:
            assert final.error is not None
            assert final.error.type == CANCELLED
            assert final.error.message == SCRIPTED_CANCEL
    stormy = ScriptedWorld(script)
    assert run_with_crashes(definition, stormy, crashes, cancel_after=cancel_after) == dumps(final)
    # No command is in flight in a finished run, and every compensate names a compensable do.
    assert final.in_flight == ()
    for step in calm.steps:
        if isinstance(step.command, CallHandler) and step.command.kind == "compensate":
            assert definition._node("start:" + step.command.step).compensable


# ---------------------------------------------------------------------- edges


def test_a_flow_deadline_is_part_of_the_definition_and_its_fingerprint() -> None:
    timed = stepflow.new(named("f", deadline=60).do("a", print)).definition
    plain = stepflow.new(named("f").do("a", print)).definition
    assert timed.deadline == 60.0
    assert plain.deadline is None
    assert timed.fingerprint != plain.fingerprint
    assert named("f", deadline=60).do("a", print).deadline == 60  # kept as the spec grows


def test_a_compensation_value_is_never_a_wrong_result() -> None:
    command = CallHandler(3, "compensate", "f/sSaga/steps/a", "start:f/sSaga/compensate", None)
    assert result_error(command, object()) is None


def test_a_state_placed_at_a_compensation_with_nothing_pending_goes_on() -> None:
    flow = stepflow.new(
        named("f").saga("s", steps().do("a", print, compensate=print)).do("b", print)
    )
    placed = loads(json.dumps(["start:f/sSaga/compensate"]), flow.definition)
    _, (command,) = advance(flow.definition, placed, now=0.0)
    assert command.step == "f/b"
    assert pending_error(freeze_json({"done": []})) is None


def test_a_compensate_command_must_name_a_compensable_step_of_its_saga() -> None:
    definition = stepflow.new(
        named("f").saga("s", steps().do("a", print, compensate=print).do("b", print))
    ).definition
    placed = loads(json.dumps(["start:f/sSaga/compensate"]), definition)
    for step in ("f/sSaga/steps/b", "f/other/a"):
        bad = placed._replace(
            in_flight=(CallHandler(1, "compensate", step, "start:f/sSaga/compensate", None),),
            seq=1,
        )
        with pytest.raises(stepflow.UnknownEventError, match="compensate of"):
            advance(definition, bad._replace(fingerprint="sha256:other"))


def test_cancel_requests_compare_and_hash_by_value() -> None:
    one, same, other = CancelRequested("x", 1.0), CancelRequested("x", 1.0), CancelRequested("y")
    assert one == same
    assert hash(one) == hash(same)
    assert one != other
    assert one != ("x", 1.0, False)


def test_a_cleanup_running_in_a_failing_group_is_not_cut_short() -> None:
    log = Log()
    log.failing["boom"] = 1
    cleaning = steps().finally_("hold", steps(), steps().sleep("nap", 60).do("free", log("free")))
    flow = stepflow.new(
        named("f").parallel(
            "both", {"a": steps().sleep("wait", 1).do("boom", log("boom")), "b": cleaning}
        ),
        clock=FakeClock(0.0),
    )
    state = _run(flow)
    assert state.is_failed
    assert log.names == ["boom", "free"]


def test_a_retry_around_a_saga_or_a_finally_counts_its_attempts() -> None:
    log = Log()
    log.failing["book"] = 5
    log.failing["work"] = 5
    saga = steps().saga("s", steps().do("book", log("book"), compensate=log("undo")))
    lease = steps().finally_("l", steps().do("work", log("work")), steps())
    for body, step in ((saga, "book"), (lease, "work")):
        flow = stepflow.new(named("f").retry("r", RetryPolicy(max_attempts=3), body))
        state = _run(flow)
        assert state.is_failed
        assert log.names.count(step) == 3


def test_a_compensation_value_that_is_not_json_is_journaled_as_none() -> None:
    command = CallHandler(3, "compensate", "f/sSaga/steps/a", "start:f/sSaga/compensate", None)
    batch = Batch("effects", 1.0, (HandlerReturned(3, object(), 1.0),), (command,))
    assert loads_batch(dumps_batch(batch)).effects == (HandlerReturned(3, None, 1.0),)
