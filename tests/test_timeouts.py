"""Step timeouts: ``.do(name, fn, timeout=)``, enforced by the shell, recorded by the core.

The handlers here block on events the tests control (never on the clock), and the
timeouts are a few hundredths of a second: the tests assert what happens past a
deadline, not how long anything takes.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import threading
from typing import Any

import pytest

import stepflow
from stepflow import FakeClock, RetryPolicy, StepTimeoutError, Worker
from stepflow.codec import loads_batch
from stepflow.core.messages import HandlerRaised
from stepflow.errors import DefinitionError, FlowFailed, StepflowError
from stepflow.runtime import start_run
from stepflow.stores import MemoryStore

TIMEOUT_TYPE = "stepflow.errors.StepTimeoutError"
SHORT = 0.05  # seconds: the handlers below outlive it by blocking, not by sleeping


class Blocked:
    """A plain handler that blocks until released, and records what it saw."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0
        self.finished = threading.Event()

    def __call__(self, ctx: Any) -> str:
        self.calls += 1
        self.release.wait(30)
        self.finished.set()
        return "late"


def test_step_timeout_error_is_a_stepflow_error_and_a_timeout_error() -> None:
    assert issubclass(StepTimeoutError, StepflowError)
    assert issubclass(StepTimeoutError, TimeoutError)


@pytest.mark.parametrize("bad", [0, -1, 0.0, float("nan"), float("inf"), "5", True])
def test_a_timeout_that_is_not_a_positive_duration_is_a_definition_error(bad: Any) -> None:
    with pytest.raises(DefinitionError, match=r"timeout= of 't/a'") as info:
        stepflow.new(stepflow.named("t").do("a", print, timeout=bad))
    assert info.value.path == "t/a"


def test_the_timeout_is_pure_data_in_the_fingerprint_only_when_set() -> None:
    plain = stepflow.new(stepflow.named("t").do("a", print)).definition
    timed = stepflow.new(stepflow.named("t").do("a", print, timeout=5)).definition
    same = stepflow.new(
        stepflow.named("t").do("a", len, timeout=datetime.timedelta(seconds=5))
    ).definition
    assert timed.table["start:t/a"].timeout == 5.0
    assert plain.fingerprint != timed.fingerprint == same.fingerprint
    # A flow without timeouts keeps the fingerprint it had before they existed.
    assert plain.fingerprint == (
        "sha256:"
        + __import__("hashlib")
        .sha256(
            b'[1,"t",[["start:t","static",null,[["start:t/a","static"]],[]],'
            b'["start:t/a","do","t/a",[["completed:t/a","handler returned"]],[]],'
            b'["completed:t/a","static",null,[["completed:t","static"]],[]]]]'
        )
        .hexdigest()
    )


def test_the_core_never_times_a_do_it_only_records_the_shells_error() -> None:
    flow = stepflow.new(stepflow.named("t").do("a", print, timeout=5))
    state, (command,) = stepflow.advance(flow.definition, None, now=100.0)
    assert (state.wake_at, state.timeout_at) == (None, None)
    error = stepflow.ErrorRecord.from_exception(StepTimeoutError("late"), "t/a")
    failed, _ = stepflow.advance(flow.definition, state, [HandlerRaised(command.id, error)])
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error.type == TIMEOUT_TYPE


def test_a_plain_handler_is_abandoned_and_its_late_result_ignored_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = Blocked()
    flow = stepflow.new(stepflow.named("t").do("a", handler, timeout=SHORT))
    with pytest.raises(FlowFailed) as info:
        flow.apply(None)
    state = info.value.state
    assert state.error is not None
    assert state.error.type == TIMEOUT_TYPE
    assert "abandoned" in state.error.message
    with caplog.at_level(logging.WARNING, logger="stepflow.interpreter"):
        handler.release.set()
        assert handler.finished.wait(30)
        for _ in range(200):  # the thread logs just after it finishes
            if caplog.records:
                break
            threading.Event().wait(0.01)
    assert "returned after its timeout" in caplog.text
    assert "t/a" not in state.outputs  # the late "late" was never kept


def test_an_async_handler_is_cancelled_at_the_deadline() -> None:
    cancelled = threading.Event()

    async def hangs(ctx: Any) -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    flow = stepflow.new(stepflow.named("t").do("a", hangs, timeout=SHORT))
    for run in (flow.apply, flow.run):
        cancelled.clear()
        with pytest.raises(FlowFailed) as info:
            run(None)
        error = info.value.state.error
        assert error is not None
        assert error.type == TIMEOUT_TYPE
        assert "cancelled" in error.message
        assert cancelled.is_set()


def test_apply_async_abandons_a_plain_handler_without_blocking_the_loop() -> None:
    handler = Blocked()
    flow = stepflow.new(stepflow.named("t").do("a", handler, timeout=SHORT))

    async def main() -> stepflow.State:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        try:
            with pytest.raises(FlowFailed) as info:
                await flow.apply_async(None)
        finally:
            ticker.cancel()
        assert ticks > 1  # the loop ran while the handler was blocked
        return info.value.state

    state = asyncio.run(main())
    handler.release.set()
    assert state.error is not None
    assert state.error.type == TIMEOUT_TYPE


def test_a_handler_within_its_timeout_returns_normally_and_its_errors_are_its_own() -> None:
    def boom(ctx: Any) -> None:
        raise TimeoutError("the handler's own")

    async def quick(ctx: Any) -> int:
        return 1

    spec = stepflow.named("t").do("a", lambda ctx: 7, timeout=30).do("b", quick, timeout=30)
    flow = stepflow.new(spec)
    state = flow.run(None)
    assert (state.outputs["t/a"], state.outputs["t/b"]) == (7, 1)
    with pytest.raises(FlowFailed) as info:
        stepflow.new(stepflow.named("t").do("a", boom, timeout=30)).apply(None)
    assert info.value.state.error is not None
    assert info.value.state.error.type == "TimeoutError"


def test_a_timed_out_step_is_retried_like_any_error() -> None:
    handler = Blocked()
    attempts: list[int] = []

    def flaky(ctx: Any) -> str:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            return handler(ctx)  # the first attempt hangs
        return "ok"

    policy = RetryPolicy(max_attempts=3, initial_interval=1, jitter=0)
    spec = stepflow.named("t").retry("r", policy, stepflow.steps().do("a", flaky, timeout=SHORT))
    flow = stepflow.new(spec, clock=FakeClock())
    state = flow.run(None)
    handler.release.set()
    assert state.status == "completed"
    assert state.outputs["t/rRetry/a"] == "ok"
    assert attempts == [1, 2]


def test_non_retryable_can_name_step_timeouts() -> None:
    handler = Blocked()
    policy = RetryPolicy(max_attempts=3, non_retryable=[StepTimeoutError])
    spec = stepflow.named("t").retry("r", policy, stepflow.steps().do("a", handler, timeout=SHORT))
    with pytest.raises(FlowFailed):
        stepflow.new(spec, clock=FakeClock()).run(None)
    handler.release.set()
    assert handler.calls == 1


def test_inside_a_map_item_the_step_keeps_its_timeout() -> None:
    handler = Blocked()
    spec = stepflow.named("t").map(
        "m", lambda ctx: [1], stepflow.steps().do("a", handler, timeout=SHORT)
    )
    flow = stepflow.new(spec, clock=FakeClock())
    assert (
        flow.interpreter.timeout_of(
            stepflow.CallHandler(2, "do", "t/mMap/steps[0]/a", "start:t/mMap/steps[0]/a", None)
        )
        == SHORT
    )
    with pytest.raises(FlowFailed) as info:
        flow.run(None)
    handler.release.set()
    assert "StepTimeoutError" in repr(info.value.state.error)


# -- the worker ----------------------------------------------------------------


def test_the_worker_fails_a_hung_step_and_the_journal_shows_the_error() -> None:
    handler = Blocked()
    flow = stepflow.new(stepflow.named("t").do("a", handler, timeout=SHORT).do("b", print))
    store = MemoryStore()
    clock = FakeClock()
    run_id = start_run(store, flow, {}, clock=clock).run_id
    Worker(store, [flow], clock=clock).run_sync(until_idle=True, handle_signals=False)
    handler.release.set()
    record = store.load(run_id)
    assert record.status == "failed"
    batches = [loads_batch(e.batch) for e in store.history(run_id)]
    (effect,) = batches[-1].effects
    assert type(effect) is HandlerRaised
    assert effect.error.type == TIMEOUT_TYPE
    assert effect.error.step == "t/a"


def test_the_worker_retries_a_timed_out_async_step() -> None:
    calls: list[int] = []

    async def first_hangs(ctx: Any) -> str:
        calls.append(ctx.attempt)
        if ctx.attempt == 1:
            await asyncio.Event().wait()
        return "ok"

    policy = RetryPolicy(max_attempts=2, initial_interval=0)
    spec = stepflow.named("t").retry(
        "r", policy, stepflow.steps().do("a", first_hangs, timeout=SHORT)
    )
    flow = stepflow.new(spec)
    store = MemoryStore()
    clock = FakeClock()
    run_id = start_run(store, flow, {}, clock=clock).run_id
    Worker(store, [flow], clock=clock).run_sync(until_idle=True, handle_signals=False)
    assert store.load(run_id).status == "completed"
    assert calls == [1, 2]


def test_worker_stop_waits_no_longer_than_the_step_timeout() -> None:
    """A hung handler with a timeout cannot hold the worker's shutdown."""
    handler = Blocked()
    started = threading.Event()

    def hangs(ctx: Any) -> str:
        started.set()
        return handler(ctx)

    flow = stepflow.new(stepflow.named("t").do("a", hangs, timeout=0.2).do("b", print))
    store = MemoryStore()
    run_id = start_run(store, flow, {}, clock=stepflow.SystemClock()).run_id
    worker = Worker(store, [flow], lease_seconds=60)

    async def main() -> None:
        task = asyncio.create_task(worker.run())
        while not started.is_set():
            await asyncio.sleep(0.01)
        worker.stop()
        # Never released, the handler would hold a worker without timeouts forever.
        await asyncio.wait_for(task, timeout=30)

    asyncio.run(main())
    assert not handler.finished.is_set()  # the worker stopped while the handler hung
    handler.release.set()
    record = store.load(run_id)
    assert record.status == "failed"  # the timeout was saved, then the lease released
    assert record.lease_token is None
    entries = [loads_batch(e.batch) for e in store.history(run_id)]
    assert entries[-1].effects[0].error.type == TIMEOUT_TYPE  # type: ignore[union-attr]
