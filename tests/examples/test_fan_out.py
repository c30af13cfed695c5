"""The fan-out example, end to end on SQLite with a Worker and a fake clock.

Every cluster is deployed exactly once, by the command (and idempotency key) of
its own map item, in the same order as the input; a busy cluster is retried on
its own; a worker stopped with pushes in flight leaves them to the next worker,
which re-issues them with their keys unchanged, so nothing is deployed twice.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from example_module import load_example
from hypothesis import given, settings
from hypothesis import strategies as st

import stepflow
from stepflow import FakeClock

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "fan_out.py"


fan_out = load_example("fan_out")
START = 1_700_000_000.0


def release(count: int) -> dict[str, object]:
    return {"release": "1.5.0", "clusters": [f"c{i}" for i in range(1, count + 1)]}


def assert_deployed_once(state: stepflow.State, fleet: object, clusters: list[str]) -> None:
    assert state.status == "completed", state.error
    results = state.outputs[fan_out.CLUSTERS]
    assert [r["cluster"] for r in results] == clusters  # the map's output, in input order
    assert [r["index"] for r in results] == list(range(len(clusters)))
    assert fleet.deploys == dict.fromkeys(clusters, 1)  # type: ignore[attr-defined]
    keys = [r["key"] for r in results]
    assert len(set(keys)) == len(clusters)
    assert set(fleet.applied) == set(keys)  # type: ignore[attr-defined]
    for i, key in enumerate(keys):
        assert f"/clustersMap/steps[{i}]/pushRetry/push#" in key
    assert state.outputs[f"{fan_out.FLOW_NAME}/verify"]["clusters"] == clusters


def test_every_cluster_is_deployed_once_at_most_two_at_a_time(tmp_path: Path) -> None:
    clock = FakeClock(START)
    fleet = fan_out.Fleet(busy=frozenset({"c2", "c4"}))
    store = stepflow.open_store(f"sqlite:///{tmp_path / 'fan_out.db'}")
    try:
        state = fan_out.deploy(store, fleet, release(6), clock=clock)
        recorded = stepflow.history(store, "release-1")
    finally:
        store.close()
    assert_deployed_once(state, fleet, [f"c{i}" for i in range(1, 7)])
    replayed = stepflow.replay(fan_out.flow.definition, recorded)
    assert replayed.ok, replayed.divergences
    in_flight = [len(s.in_flight) for s in replayed.states]
    assert max(in_flight) == fan_out.MAX_CONCURRENCY  # bounded fan-out, really used
    raised = [type(e).__name__ for b in recorded.batches for e in b.effects]
    assert raised.count("HandlerRaised") == 2  # c2 and c4 were busy once, retried alone


def test_a_crash_with_pushes_in_flight_deploys_nothing_twice(tmp_path: Path) -> None:
    clock = FakeClock(START)
    fleet = fan_out.Fleet(rollout=2.0)
    url = f"sqlite:///{tmp_path / 'fan_out.db'}"
    store = stepflow.open_store(url)
    try:
        stepflow.start_run(store, fan_out.flow, release(4), run_id="release-1", clock=clock)
        worker = stepflow.Worker(store, [fan_out.flow], context=fleet, clock=clock)

        def stop_once_the_clusters_are_listed(report: stepflow.StepReport) -> None:
            if report.command.kind == "map":  # the items command: pushes are issued now
                worker.stop()

        worker.on_step = stop_once_the_clusters_are_listed
        worker.run_sync(until_idle=True, handle_signals=False)
        first = stepflow.read_run(store, "release-1", fan_out.flow).state
        assert first.status == "running"
        pending = [c for c in first.in_flight if c.step.endswith("/push")]
        assert pending  # the next items' pushes are in flight
        # A crash: the dead worker had executed these pushes but saved nothing.
        crashed = {}
        for command in pending:
            index = int(command.step.split("steps[")[1].split("]")[0])
            key = f"release-1/{command.key}"
            fleet.push(f"c{index + 1}", "1.5.0", key, clock.now())
            crashed[f"c{index + 1}"] = key
        state = fan_out.deploy(store, fleet, release(4), clock=clock)
    finally:
        store.close()
    # The next worker re-issued exactly those commands, with their keys unchanged.
    results = {r["cluster"]: r["key"] for r in state.outputs[fan_out.CLUSTERS]}
    assert {cluster: results[cluster] for cluster in crashed} == crashed
    assert_deployed_once(state, fleet, ["c1", "c2", "c3", "c4"])


@settings(max_examples=25, deadline=None)
@given(count=st.integers(0, 7), busy=st.sets(st.integers(1, 7)))
def test_any_fleet_is_deployed_once_in_order(count: int, busy: set[int]) -> None:
    clusters = [f"c{i}" for i in range(1, count + 1)]
    fleet = fan_out.Fleet(busy=frozenset(f"c{i}" for i in busy))
    store = stepflow.open_store("memory://")
    try:
        state = fan_out.deploy(store, fleet, release(count), clock=FakeClock(START))
    finally:
        store.close()
    assert_deployed_once(state, fleet, clusters)


def test_the_example_runs_as_a_script() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "release/v1: completed" in result.stdout
    assert result.stdout.count("deployed 1x") == 5
    assert "verified: 1.5.0 on c1, c2, c3, c4, c5" in result.stdout


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__])
