"""The demo: deploy/v2, each app rolled out to its regions by a map, run to the end,
interrupted and resumed; every region deployed once, the map's output in region order."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

import stepflow
from stepflow.codec import loads_batch
from stepflow.core.messages import HandlerReturned
from stepflow.demo import (
    FLOW_NAME,
    REGION_CONCURRENCY,
    REGIONS_OUTPUT,
    Systems,
    demo_inputs,
    flow,
    run_demo,
)


def demo_cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if k != "STEPFLOW_DB"}
    environment["COLUMNS"] = "160"
    return subprocess.Popen(
        [sys.executable, "-m", "stepflow.cli", "demo", *args],
        cwd=cwd,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], timeout: float = 90) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def journals(url: str) -> dict[str, tuple[float, list[tuple[int, float, str]]]]:
    """Each demo run's creation time and journal entries (seq, at, batch)."""
    store = stepflow.open_store(url)
    try:
        return {
            record.run_id: (
                record.created_at,
                [(e.seq, e.at, e.batch) for e in store.history(record.run_id)],
            )
            for record in store.runs(flow=FLOW_NAME)
        }
    finally:
        store.close()


def statuses(url: str) -> dict[str, str]:
    store = stepflow.open_store(url)
    try:
        return {record.run_id: record.status for record in store.runs()}
    finally:
        store.close()


def assert_every_region_deployed_once(url: str) -> None:
    """Each deploying run synced each region once (one answered command, its own key),
    never more than ``REGION_CONCURRENCY`` at once, and its map output is in region order."""
    store = stepflow.open_store(url)
    try:
        for record in store.runs(flow=FLOW_NAME):
            state = stepflow.loads(record.state, flow.definition)
            regions = record.input["regions"]
            synced: list[str] = []
            for entry in store.history(record.run_id):
                batch = loads_batch(entry.batch)
                if batch.op != "effects":
                    continue
                for command, effect in zip(batch.answered, batch.effects, strict=True):
                    if command.step.endswith("/syncRegion") and type(effect) is HandlerReturned:
                        synced.append(command.key)
            if record.input["running"] == record.input["desired"]:
                assert synced == [], record.run_id
                continue
            assert len(synced) == len(set(synced)) == len(regions), (record.run_id, synced)
            for i in range(len(regions)):
                assert sum(f"/regionsMap/steps[{i}]/syncRegion#" in key for key in synced) == 1
            results = state.outputs[REGIONS_OUTPUT]
            assert [r["region"] for r in results] == regions
            assert [r["index"] for r in results] == list(range(len(regions)))
            assert {r["version"] for r in results} == {record.input["desired"]}
    finally:
        store.close()


def test_demo_completes_and_prints_a_summary(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    code, out, err = finish(demo_cli("--apps", "6", "--db", url, "--speed", "0.1", cwd=tmp_path))
    assert code == 0, err
    assert "Traceback" not in err
    assert "Starting 6 runs of deploy/v2" in out
    assert "deploy/v2: 6 applications" in out
    assert "6/6 completed (5 deployed, 1 already up to date), 0 failed" in out
    regions = sum(
        len(spec["regions"]) for _, spec in demo_inputs(6) if spec["running"] != spec["desired"]
    )
    assert f"Fan-out: {regions} regions rolled out" in out
    assert f"{REGION_CONCURRENCY} regions at a time per application" in out
    assert_every_region_deployed_once(url)
    for run_id, spec in demo_inputs(6):
        assert run_id in out
        if spec["running"] != spec["desired"]:
            assert f"{spec['running']} -> {spec['desired']}" in out
    assert set(statuses(url).values()) == {"completed"}

    # Run again: nothing is left to do, the completed runs are kept as they were.
    before = journals(url)
    code, out, err = finish(demo_cli("--db", url, "--speed", "0.1", cwd=tmp_path))
    assert code == 0, err
    assert "Resuming the demo: 6 runs found, 0 still running" in out
    assert journals(url) == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_interrupted_demo_resumes_where_it_stopped(tmp_path: Path, signum: int) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    process = demo_cli("--apps", "6", "--db", url, "--speed", "0.5", cwd=tmp_path)
    deadline = time.monotonic() + 30
    while not (tmp_path / "demo.db").exists() or not statuses(url):
        assert time.monotonic() < deadline, "the demo did not start its runs"
        time.sleep(0.1)
    time.sleep(1.5)
    process.send_signal(signum)
    code, out, err = finish(process)
    assert "Traceback" not in err
    if signum == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 128 + signum, err
        assert "run `stepflow demo --db" in out
        assert "again to resume" in out
    before = journals(url)
    assert len(before) == 6
    assert "running" in statuses(url).values()

    code, out, err = finish(demo_cli("--db", url, "--speed", "0.5", cwd=tmp_path))
    assert code == 0, err
    assert "Traceback" not in err
    assert "Resuming the demo: 6 runs found" in out
    assert "6/6 completed" in out
    after = journals(url)
    assert set(after) == set(before)  # the same runs, none started again
    assert set(statuses(url).values()) == {"completed"}
    for run_id, (created_at, entries) in after.items():
        old_created_at, old_entries = before[run_id]
        assert created_at == old_created_at
        assert entries[: len(old_entries)] == old_entries  # the journal continues
        seqs = [seq for seq, _, _ in entries]
        assert seqs == sorted(set(seqs))  # no seq twice
    assert_every_region_deployed_once(url)  # in flight at the kill: re-issued, answered once


def test_fresh_starts_over(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    code, _, err = finish(demo_cli("--apps", "2", "--db", url, "--speed", "0.05", cwd=tmp_path))
    assert code == 0, err
    code, out, err = finish(
        demo_cli("--apps", "3", "--db", url, "--speed", "0.05", "--fresh", cwd=tmp_path)
    )
    assert code == 0, err
    assert "Starting 3 runs" in out
    assert sorted(statuses(url)) == ["app-01", "app-02", "app-03"]


def test_fresh_refuses_to_delete_other_flows_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    store = stepflow.open_store(url)
    try:
        other = stepflow.new(stepflow.named("other/v1").do("x", lambda ctx: None))
        stepflow.start_run(store, other, run_id="keep-me")
    finally:
        store.close()
    code, _, err = finish(demo_cli("--db", url, "--fresh", cwd=tmp_path))
    assert code == 2
    assert err.startswith("Error: --fresh would delete runs the demo did not start")
    assert len(err.splitlines()) == 1
    assert statuses(url) == {"keep-me": "running"}


def test_run_demo_in_process_with_a_live_display(tmp_path: Path) -> None:
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=140)
    result = run_demo(
        f"sqlite:///{tmp_path / 'demo.db'}",
        apps=4,
        console=console,
        speed=0.05,
        handle_signals=False,
    )
    assert result.interrupted is None
    assert result.completed == 4
    assert [app.run_id for app in result.apps] == ["app-01", "app-02", "app-03", "app-04"]
    assert all(app.change == "deployed" and app.pull_request for app in result.apps)
    assert all(app.steps > 5 for app in result.apps)
    for app, (_, spec) in zip(result.apps, demo_inputs(4), strict=True):
        assert app.regions == app.deployed_regions == tuple(spec["regions"])
    assert 2 <= result.peak_regions <= REGION_CONCURRENCY * 4
    assert "4/4 completed" in output.getvalue()
    assert "regions 1/" in output.getvalue()  # the live display counts each app's regions
    assert_every_region_deployed_once(f"sqlite:///{tmp_path / 'demo.db'}")


def test_demo_inputs_are_stable_and_some_are_up_to_date() -> None:
    inputs = demo_inputs(36)
    assert inputs == demo_inputs(36)
    assert [run_id for run_id, _ in inputs][:2] == ["app-01", "app-02"]
    current = [spec for _, spec in inputs if spec["running"] == spec["desired"]]
    assert len(current) == 7
    assert {spec["of"] for _, spec in inputs} == {36}


def test_the_definition_does_not_depend_on_speed() -> None:
    # A demo resumed at another speed must still load its runs.
    assert flow.definition.fingerprint == stepflow.demo.build_flow().definition.fingerprint
    assert Systems(0.1).speed == 0.1
    with pytest.raises(stepflow.ConfigurationError):
        Systems(0)


def test_a_database_of_the_earlier_demo_is_refused_with_a_fix(tmp_path: Path) -> None:
    from stepflow.demo_v1 import demo_inputs as v1_inputs
    from stepflow.demo_v1 import flow as v1_flow

    url = f"sqlite:///{tmp_path / 'demo.db'}"
    store = stepflow.open_store(url)
    try:
        run_id, spec = v1_inputs(2)[0]
        stepflow.start_run(store, v1_flow, spec, run_id=run_id)
    finally:
        store.close()
    code, _, err = finish(demo_cli("--db", url, cwd=tmp_path))
    assert code != 0
    assert "holds runs of deploy/v1" in err
    assert "--db sqlite:///stepflow-v2.db" in err
    assert len(err.splitlines()) == 1
    assert statuses(url) == {"app-01": "running"}  # nothing lost
