"""Versions of a flow: diff, migrations of states, and workers adopting old runs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import stepflow
from stepflow.codec import loads_batch
from stepflow.stores import MemoryStore
from stepflow.testing import START, FakeClock
from stepflow.versioning import Migration, diff, migrate


def ok(ctx: Any) -> str:
    return f"{ctx.step} done" if isinstance(ctx, stepflow.RunContext) else "done"


def ready(ctx: Any) -> bool:
    return True


def deploy(version: str, *, push: str = "push", extra: bool = False) -> stepflow.Steps:
    spec = (
        stepflow.named(f"deploy/{version}")
        .do("collect", ok)
        .wait_for("collected", ready, every=10)
        .do(push, ok)
    )
    return spec.do("notify", ok) if extra else spec


V1 = stepflow.new(deploy("v1"))


def rest_at_wait(definition: stepflow.FlowDefinition) -> stepflow.State:
    """A v1 run that collected and now waits (a poll in flight, due later)."""
    state, (command,) = stepflow.advance(definition, None, now=START)
    state, _ = stepflow.advance(
        definition, state, (stepflow.HandlerReturned(command.id, {"job": 7}, START + 1),)
    )
    return state


def test_a_state_is_renamed_into_the_new_version_and_runs_on() -> None:
    v2 = stepflow.new(deploy("v2", extra=True))
    old = rest_at_wait(V1.definition)
    new = migrate(v2.definition, old, Migration("deploy/v1"))

    assert new.flow == "deploy/v2"
    assert new.fingerprint == v2.definition.fingerprint
    assert new.events == ("start:deploy/v2/collectedWaitFor",)
    (command,) = new.in_flight
    assert (command.id, command.kind, command.step) == (2, "wait_for", "deploy/v2/collectedWaitFor")
    assert dict(new.outputs) == {"deploy/v2/collect": {"job": 7}}
    assert (new.wake_at, new.seq) == (old.wake_at, old.seq)
    final = v2.with_clock(FakeClock(START + 100)).run(new)
    assert final.is_completed
    assert set(final.outputs) == {
        "deploy/v2/collect",
        "deploy/v2/push",
        "deploy/v2/notify",
    }


def test_a_renamed_step_is_mapped_by_its_events() -> None:
    v2 = stepflow.new(deploy("v2", push="publish"))
    old = rest_at_wait(V1.definition)
    # The run waits before the renamed step: no mapping needed for where it is...
    assert migrate(v2.definition, old, Migration("deploy/v1")).is_running
    # ...but a run resting at the renamed step needs one.
    at_push = stepflow.loads('["start:deploy/v1/push"]', V1.definition)
    with pytest.raises(stepflow.IncompatibleDefinition, match="start:deploy/v2/push"):
        migrate(v2.definition, at_push, Migration("deploy/v1"))
    moved = migrate(
        v2.definition,
        at_push,
        Migration("deploy/v1", events={"start:deploy/v1/push": "start:deploy/v2/publish"}),
    )
    assert moved.events == ("start:deploy/v2/publish",)


def test_a_transform_reshapes_what_a_mapping_cannot() -> None:
    v2 = stepflow.new(deploy("v2"))
    old = rest_at_wait(V1.definition)

    def reshape(state: stepflow.State) -> stepflow.State:
        job = state.outputs["deploy/v2/collect"]["job"]
        return state._replace(outputs=state.outputs.set("deploy/v2/collect", {"jobs": [job]}))

    new = migrate(v2.definition, old, Migration("deploy/v1", transform=reshape))
    assert new.outputs["deploy/v2/collect"] == {"jobs": [7]}


def test_a_migration_from_another_flow_is_refused() -> None:
    v2 = stepflow.new(deploy("v2"))
    with pytest.raises(stepflow.FlowMismatchError, match="deploy/v0"):
        migrate(v2.definition, rest_at_wait(V1.definition), Migration("deploy/v0"))
    with pytest.raises(stepflow.DefinitionError, match="migrations"):
        stepflow.new(deploy("v2"), migrations=[Migration("deploy/v2")])


def test_diff_lists_added_and_removed_events_and_judges_compatibility() -> None:
    same = diff(V1.definition, stepflow.new(deploy("v1")).definition)
    assert same.same
    assert same.compatible
    assert same.added == same.removed == ()

    grown = diff(V1.definition, stepflow.new(deploy("v2", extra=True)).definition)
    assert grown.compatible
    assert "start:deploy/v2/notify" in grown.added
    assert grown.removed == ()

    renamed = diff(V1.definition, stepflow.new(deploy("v2", push="publish")).definition)
    assert not renamed.compatible
    assert "start:deploy/v1/push" in renamed.removed
    assert "start:deploy/v2/publish" in renamed.added

    mapped = diff(
        V1.definition,
        stepflow.new(deploy("v2", push="publish")).definition,
        Migration(
            "deploy/v1",
            events={
                "start:deploy/v1/push": "start:deploy/v2/publish",
                "completed:deploy/v1/push": "completed:deploy/v2/publish",
            },
        ),
    )
    assert mapped.compatible

    kind_changed = stepflow.new(
        stepflow.named("deploy/v1").do("collect", ok).do("collectedWaitFor", ok).do("push", ok)
    )
    assert not diff(V1.definition, kind_changed.definition).compatible


def test_a_worker_serving_v2_adopts_v1_runs_and_completes_them() -> None:
    store, clock = MemoryStore(), FakeClock(START)
    runs = [stepflow.start_run(store, V1, {"n": n}, clock=clock).run_id for n in range(3)]
    v2 = stepflow.new(deploy("v2", extra=True), migrations=[Migration("deploy/v1")])

    stats = stepflow.Worker(store, [v2], clock=clock).run_sync(
        until_idle=True, handle_signals=False
    )

    assert stats.completed == 3
    for run_id in runs:
        record = store.load(run_id)
        assert (record.flow, record.status) == ("deploy/v2", "completed")
        ops = [loads_batch(entry.batch).op for entry in store.history(run_id)]
        assert ops[:2] == ["start", "migrate"]
        state = stepflow.loads(record.state, v2.definition)
        assert "deploy/v2/notify" in state.outputs


def test_a_worker_serving_both_versions_keeps_each_run_on_its_own() -> None:
    store, clock = MemoryStore(), FakeClock(START)
    old = stepflow.start_run(store, V1, None, clock=clock).run_id
    v2 = stepflow.new(deploy("v2", extra=True), migrations=[Migration("deploy/v1")])
    new = stepflow.start_run(store, v2, None, clock=clock).run_id

    stepflow.Worker(store, [V1, v2], clock=clock).run_sync(until_idle=True, handle_signals=False)

    assert store.load(old).flow == "deploy/v1"
    assert store.load(new).flow == "deploy/v2"
    assert {store.load(r).status for r in (old, new)} == {"completed"}


def test_an_old_run_that_cannot_be_migrated_is_left_as_it_was() -> None:
    store, clock = MemoryStore(), FakeClock(START)
    v1 = stepflow.new(stepflow.named("deploy/v1").do("push", ok))
    run = stepflow.start_run(store, v1, None, clock=clock)  # rests at push
    v2 = stepflow.new(
        stepflow.named("deploy/v2").do("publish", ok), migrations=[Migration("deploy/v1")]
    )

    worker = stepflow.Worker(store, [v2], clock=clock)
    stats = asyncio.run(_run_briefly(worker))

    assert stats.steps == 0
    after = store.load(run.run_id)
    # Parked: untouched, out of the way for a while, with the reason.
    assert (after.flow, after.status, after.state) == ("deploy/v1", "parked", run.state)
    assert after.version == run.version
    assert after.lease_token is None
    assert after.parked_reason is not None
    assert "no longer has" in after.parked_reason
    assert after.wake_at is not None
    assert after.wake_at >= START + 60


async def _run_briefly(worker: stepflow.Worker) -> Any:
    task = asyncio.create_task(worker.run())
    for _ in range(50):
        await asyncio.sleep(0.01)
    worker.stop()
    return await task


def test_a_migrated_runs_history_names_its_migration_when_replayed_against_the_old_flow() -> None:
    store, clock = MemoryStore(), FakeClock(START)
    run_id = stepflow.start_run(store, V1, None, clock=clock).run_id
    v2 = stepflow.new(deploy("v2", extra=True), migrations=[Migration("deploy/v1")])
    stepflow.Worker(store, [v2], clock=clock).run_sync(until_idle=True, handle_signals=False)

    recorded = stepflow.history(store, run_id)
    result = stepflow.replay(V1.definition, recorded)
    (divergence,) = result.divergences
    assert divergence.index == 0
    assert "migrated to 'deploy/v2'" in str(divergence)
