"""The ``stepflow`` tools that read histories and definitions, run as a subprocess.

``history``, ``export``, ``replay``, ``diff``, ``graph``, ``check`` and ``paths``,
through the installed console script, against real SQLite files.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import stepflow
from stepflow.stores import open_store

FLOWS = textwrap.dedent(
    """
    import stepflow
    from stepflow.core.definition import Destination, FlowDefinition, Transition


    def greet(ctx):
        return {"greeting": "hello " + ctx.input["name"]}


    def ready(ctx):
        return True


    FAILURES = {"left": 2}


    def flaky(ctx):
        if FAILURES["left"]:
            FAILURES["left"] -= 1
            raise RuntimeError(f"flaky, {FAILURES['left']} failures left")
        return "ok"


    def hello_spec(wait="ready"):
        return (
            stepflow.named("hello/v1")
            .do("greet", greet)
            .wait_for(wait, ready, every=0.05)
            .sleep("nap", 0.05)
        )


    hello = hello_spec()
    # Later versions of hello/v1, as a deploy would bring them.
    hello_renamed = hello_spec(wait="steady")  # renames the step every run passes second
    hello_longer = hello_spec().do("thank", greet)  # adds a step at the end
    hello_shorter = stepflow.named("hello/v1").do("greet", greet).wait_for("ready", ready)
    hello_v2 = stepflow.new(stepflow.named("hello/v2").do("greet", greet))

    quick = stepflow.RetryPolicy(max_attempts=5, initial_interval=0.01)
    retrying = stepflow.named("retrying/v1").retry(
        "again", quick, stepflow.steps().do("first", greet).do("flaky", flaky)
    )
    clean = stepflow.named("clean/v1").do("greet", greet).sleep("nap", 1)
    once = stepflow.named("once/v1").retry(
        "again", stepflow.RetryPolicy(max_attempts=1), stepflow.steps().do("a", greet)
    )

    # A hand-built table whose step f/b nothing leads to: an error finding.
    S = "static"
    orphan = stepflow.Flow(
        FlowDefinition(
            "f",
            (
                Transition("start:f", S, None, (Destination("start:f/a", S),)),
                Transition("start:f/a", "do", "f/a", (Destination("completed:f/a", "returned"),)),
                Transition("completed:f/a", S, None, (Destination("completed:f", S),)),
                Transition("start:f/b", "do", "f/b", (Destination("completed:f/b", "returned"),)),
                Transition("completed:f/b", S, None, (Destination("completed:f", S),)),
            ),
        ),
        {},
    )
    number = 42
    """
)


def stepflow_cli(*args: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the ``stepflow`` console script in ``cwd``; wide output, no STEPFLOW_DB leak."""
    script = Path(sys.executable).with_name("stepflow")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "stepflow.cli"]
    environment = {k: v for k, v in os.environ.items() if k != "STEPFLOW_DB"}
    environment["COLUMNS"] = "250"
    return subprocess.run(
        [*command, *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def db_url(project: Path) -> str:
    return f"sqlite:///{project / 'runs.db'}"


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def fails(result: subprocess.CompletedProcess[str], status: int = 1) -> str:
    """Assert the command judged negatively (no error message); return its output."""
    assert result.returncode == status, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def table_rows(output: str) -> list[list[str]]:
    """The body rows of a rich table, as lists of stripped cells."""
    return [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in output.splitlines()
        if line.startswith("│")
    ]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose runs.db holds runs of hello/v1 and retrying/v1.

    ``h1`` and ``h2`` (hello/v1) completed; ``fresh`` (hello/v1) has only been
    started; ``legacy`` (hello/v1) was stored without a history, as by a stepflow
    that recorded none; ``t1`` (retrying/v1) completed on its third attempt. The
    tests read it and change nothing.
    """
    project = tmp_path_factory.mktemp("recorded")
    (project / "flows.py").write_text(FLOWS)
    db = ["--db", db_url(project)]

    def start(flow: str, run_id: str, name: str) -> None:
        value = json.dumps({"name": name})
        ok(stepflow_cli("start", flow, "--input", value, "--id", run_id, *db, cwd=project))

    start("flows:hello", "h1", "ann")
    start("flows:hello", "h2", "bo")
    ok(stepflow_cli("worker", "flows:hello", "--until-idle", *db, cwd=project))
    start("flows:retrying", "t1", "cy")
    ok(stepflow_cli("worker", "flows:retrying", "--until-idle", *db, cwd=project))
    start("flows:hello", "fresh", "di")
    definition = stepflow.new(stepflow.named("hello/v1").do("greet", print)).definition
    state, _ = stepflow.advance(definition, None, now=time.time())
    store = open_store(db_url(project))
    try:
        store.create_run(
            "legacy",
            "hello/v1",
            stepflow.dumps(state),
            input=None,
            status="running",
            wake_at=None,
            now=time.time(),
        )
    finally:
        store.close()
    return project


def run(recorded: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return stepflow_cli(*args, "--db", db_url(recorded), cwd=recorded)


# -- history ---------------------------------------------------------------------


def test_history_shows_one_row_per_journal_entry(recorded: Path) -> None:
    out = ok(run(recorded, "history", "h1"))
    assert "history of run h1" in out
    rows = table_rows(out)
    assert [row[0] for row in rows] == ["1", "2", "3", "4"]  # seq
    assert [row[3] for row in rows] == ["start", "effects", "effects", "effects"]  # op
    assert [row[4] for row in rows] == ["-", "do greet", "wait_for readyWaitFor", "sleep nap"]
    assert rows[0][5] == "started at greet"
    assert rows[1][5] == 'returned {"greeting": "hello ann"}'
    assert rows[2][5] == "returned true"
    assert rows[3][5] == "timer fired"
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \(.+\)", r[1]) for r in rows)
    assert rows[0][2] == "-"
    assert all(re.fullmatch(r"\+\d+\.\d\ds", row[2]) for row in rows[1:])
    assert "attempt" not in out  # only with --flow


def test_history_counts_answers_and_with_the_flow_retry_attempts(recorded: Path) -> None:
    rows = table_rows(ok(run(recorded, "history", "t1", "--flow", "flows:retrying")))
    effects = [(row[4], row[5], row[6], row[7]) for row in rows[1:]]
    assert effects == [
        ("do againRetry/first", 'returned {"greeting": "hello cy"}', "1", "1"),
        ("do againRetry/flaky", "raised RuntimeError: flaky, 1 failures left", "1", "1"),
        ("do againRetry/first", 'returned {"greeting": "hello cy"}', "2", "2"),
        ("do againRetry/flaky", "raised RuntimeError: flaky, 0 failures left", "2", "2"),
        ("do againRetry/first", 'returned {"greeting": "hello cy"}', "3", "3"),
        ("do againRetry/flaky", 'returned "ok"', "3", "3"),
    ]


def test_history_against_another_version_marks_attempts_unknown(recorded: Path) -> None:
    out = ok(run(recorded, "history", "h1", "--flow", "flows:hello_renamed"))
    assert [row[7] for row in table_rows(out)] == ["", "-", "?", "?"]
    assert "diverged at seq 3" in out


# -- export and replay -----------------------------------------------------------


def test_export_prints_the_history_text_exactly(recorded: Path) -> None:
    out = ok(run(recorded, "export", "h1"))
    store = open_store(db_url(recorded))
    try:
        assert out == stepflow.dumps_history(stepflow.history(store, "h1"))
    finally:
        store.close()
    assert json.loads(out)["run_id"] == "h1"


def test_an_exported_run_replays_against_its_own_flow(recorded: Path, tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(ok(run(recorded, "export", "h1")))
    out = ok(stepflow_cli("replay", "flows:hello", str(tmp_path / "run.json"), cwd=recorded))
    assert out.startswith("1 compatible, 0 divergent (1 run replayed against hello/v1 ")


def test_replay_names_where_an_edited_flow_diverges(recorded: Path, tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(ok(run(recorded, "export", "h1")))
    result = stepflow_cli("replay", "flows:hello_renamed", str(tmp_path / "run.json"), cwd=recorded)
    out = fails(result)
    first, summary = out.splitlines()
    assert "(run h1): divergent at batch 1 (seq 3), step hello/v1/readyWaitFor" in first
    assert "answered wait_for 'hello/v1/readyWaitFor'" in first
    assert "issues wait_for 'hello/v1/steadyWaitFor'" in first
    assert summary.startswith("0 compatible, 1 divergent")

    document = json.loads(
        fails(
            stepflow_cli(
                "replay", "flows:hello_renamed", str(tmp_path / "run.json"), "--json", cwd=recorded
            )
        )
    )
    assert (document["compatible"], document["divergent"]) == (0, 1)
    (divergent,) = document["runs"]
    assert (divergent["run"], divergent["index"], divergent["seq"]) == ("h1", 1, 3)
    assert divergent["expected"]["step"] == "hello/v1/readyWaitFor"
    assert divergent["actual"]["step"] == "hello/v1/steadyWaitFor"


def test_replay_of_the_store_covers_every_run_of_the_flow(recorded: Path) -> None:
    out = ok(run(recorded, "replay", "flows:hello"))
    assert "legacy: skipped: no history" in out
    assert out.splitlines()[-1].startswith("3 compatible, 0 divergent, 1 skipped (4 runs")

    out = fails(run(recorded, "replay", "flows:hello_renamed"))
    assert "h1: divergent at batch 1 (seq 3)" in out
    assert "h2: divergent at batch 1 (seq 3)" in out
    assert "fresh" not in out  # only started: the renamed step is still ahead of it
    assert out.splitlines()[-1].startswith("1 compatible, 2 divergent, 1 skipped (4 runs")

    out = fails(run(recorded, "replay", "flows:hello_renamed", "--status", "completed"))
    assert out.splitlines()[-1].startswith("0 compatible, 2 divergent (2 runs")

    document = json.loads(ok(run(recorded, "replay", "flows:retrying", "--json")))
    assert document["runs"] == [{"source": "t1", "run": "t1", "verdict": "compatible"}]


def test_replay_with_no_run_of_the_flow_passes(recorded: Path) -> None:
    assert ok(run(recorded, "replay", "flows:clean")) == "No runs of clean/v1 to replay.\n"


# -- diff ------------------------------------------------------------------------


def test_diff_of_a_step_added_at_the_end_is_compatible(recorded: Path) -> None:
    out = ok(stepflow_cli("diff", "flows:hello", "flows:hello_longer", cwd=recorded))
    assert "added (2):\n  start:hello/v1/thank\n  completed:hello/v1/thank" in out
    assert "removed" not in out
    assert "compatible: every state of hello/v1 can continue under hello/v1" in out


@pytest.mark.parametrize(
    ("new", "removed"),
    [
        ("flows:hello_shorter", "start:hello/v1/nap"),
        ("flows:hello_renamed", "start:hello/v1/readyWaitFor"),
    ],
)
def test_diff_of_a_removed_or_renamed_step_is_incompatible(
    recorded: Path, new: str, removed: str
) -> None:
    out = fails(stepflow_cli("diff", "flows:hello", new, cwd=recorded))
    assert re.search(rf"removed \(\d\):\n(  .*\n)*  {removed}.* \(a run can rest here\)", out)
    assert "incompatible: some states of hello/v1 cannot continue" in out


def test_diff_of_a_flow_with_itself_says_so(recorded: Path) -> None:
    out = ok(stepflow_cli("diff", "flows:hello", "flows:hello", cwd=recorded))
    assert "The definitions are the same." in out


# -- graph -----------------------------------------------------------------------


def test_graph_prints_mermaid_dot_or_json(recorded: Path) -> None:
    mermaid = ok(stepflow_cli("graph", "flows:hello", cwd=recorded))
    assert mermaid.startswith("stateDiagram-v2\n")
    assert "step_readyWaitFor --> step_nap" in mermaid
    assert "class " not in mermaid
    dot = ok(stepflow_cli("graph", "flows:hello", "--format", "dot", cwd=recorded))
    assert dot.startswith('digraph "hello/v1" {')
    graph = json.loads(ok(stepflow_cli("graph", "flows:hello", "--format", "json", cwd=recorded)))
    assert graph["flow"] == "hello/v1"
    assert graph["status"] is None
    assert [n["step"] for n in graph["nodes"] if n["kind"] == "do"] == ["hello/v1/greet"]


def test_graph_of_a_run_highlights_its_position(recorded: Path) -> None:
    mermaid = ok(run(recorded, "graph", "flows:hello", "--run", "fresh"))
    assert "class step_greet current" in mermaid
    dot = ok(run(recorded, "graph", "flows:hello", "--run", "fresh", "--format", "dot"))
    (greet,) = [line for line in dot.splitlines() if line.strip().startswith('"step_greet" [')]
    assert "fillcolor" in greet
    graph = json.loads(
        ok(run(recorded, "graph", "flows:hello", "--run", "fresh", "--format", "json"))
    )
    assert graph["status"] == "running"
    assert [n["event"] for n in graph["nodes"] if n["current"]] == ["start:hello/v1/greet"]


# -- check and paths ---------------------------------------------------------------


def test_check_of_a_clean_flow_passes(recorded: Path) -> None:
    out = ok(stepflow_cli("check", "flows:clean", cwd=recorded))
    assert out.startswith("No findings.")
    assert re.search(r"completed\s+1 ", out)
    assert re.search(r"dead ends\s+0", out)
    assert out.splitlines()[-1] == "0 errors, 0 warnings"


def test_check_fails_on_warnings_unless_they_are_allowed(recorded: Path) -> None:
    out = ok(stepflow_cli("check", "flows:hello", "--allow-warnings", cwd=recorded))
    findings = [row[:3] for row in table_rows(out) if row[0]]  # messages fold onto more rows
    assert findings == [["warning", "wait-without-timeout", "readyWaitFor"]]
    assert out.splitlines()[-1] == "0 errors, 1 warning"
    fails(stepflow_cli("check", "flows:hello", cwd=recorded))


def test_check_fails_on_an_error_finding(recorded: Path) -> None:
    out = fails(stepflow_cli("check", "flows:orphan", cwd=recorded))
    assert ["error", "unreachable-step", "b"] in [row[:3] for row in table_rows(out)]
    assert out.splitlines()[-1].startswith("1 error, ")


def test_paths_lists_every_step_with_its_shortest_outcomes(recorded: Path) -> None:
    out = ok(stepflow_cli("paths", "flows:hello", cwd=recorded))
    steps = {row[0]: row[3] for row in table_rows(out) if row[1] == "step"}
    assert steps == {
        "greet": "(start)",
        "readyWaitFor": "do greet: returned",
        "nap": "do greet: returned -> wait_for readyWaitFor: true",
    }
    assert "readyWaitFor -> start:readyWaitFor (WaitFor condition is not met, poll again)" in out
    assert out.splitlines()[-1] == "7 of 7 targets reachable (--max-loops 1)."


def test_paths_lists_the_unreachable_targets(recorded: Path) -> None:
    out = ok(stepflow_cli("paths", "flows:once", cwd=recorded))
    assert "againRetry/a -> start:againRetry (retry)" in out
    assert "unreachable: againRetry/a -> start:againRetry (retry)" in out


# -- bad input -------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(recorded: Path) -> Path:
    """Broken history files next to the recorded project."""
    text = ok(run(recorded, "export", "h1"))
    (recorded / "truncated.json").write_text(text[: len(text) // 2])
    (recorded / "other.json").write_text('{"format": 1}')
    return recorded


#: The commands given --db in BAD_INPUT (replay with FILE takes none).
READ_THE_STORE = {"history", "export", "graph"}
BAD_INPUT = [
    # (arguments, exit status, a fragment of the message)
    (["history", "ghost"], 1, "no run has id 'ghost'"),
    (["history", "h1", "--flow", "flows:hello_v2"], 1, "is a run of 'hello/v1'"),
    (["history", "legacy", "--flow", "flows:hello"], 1, "does not start with the run's first"),
    (["export", "ghost"], 1, "no run has id 'ghost'"),
    (["export", "legacy"], 1, "does not start with the run's first state"),
    (["replay", "nosuchmodule:flow"], 2, "cannot import module 'nosuchmodule'"),
    (["replay", "flows:hello", "truncated.json"], 1, "truncated.json: a history file must be"),
    (["replay", "flows:hello", "other.json"], 1, "other.json: the history is malformed"),
    (["replay", "flows:hello", "missing.json"], 2, "'missing.json' does not exist"),
    (["replay", "flows:hello", "other.json", "--status", "running"], 2, "without FILE"),
    (["diff", "flows:hello", "flows:nope"], 2, "module 'flows' has no attribute 'nope'"),
    (["graph", "flows:number"], 2, "not a stepflow.Flow"),
    (["graph", "flows:hello", "--format", "png"], 2, "'png' is not one of"),
    (["graph", "flows:hello", "--run", "ghost"], 1, "no run has id 'ghost'"),
    (["graph", "flows:hello_v2", "--run", "h1"], 1, "is a run of 'hello/v1'"),
    (["check", "flows"], 2, "is not MODULE:FLOW"),
    (["check", "flows:hello", "--max-loops", "0"], 2, "0 is not in the range"),
    (["paths", "nosuchmodule:flow"], 2, "cannot import module 'nosuchmodule'"),
]


@pytest.mark.parametrize(("args", "status", "message"), BAD_INPUT)
def test_bad_input_is_one_line_error(
    files: Path, args: list[str], status: int, message: str
) -> None:
    store = ["--db", db_url(files)] if args[0] in READ_THE_STORE else []
    result = stepflow_cli(*args, *store, cwd=files)
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert message in lines[0]


def test_replay_takes_files_or_a_store_not_both(files: Path) -> None:
    result = stepflow_cli("replay", "flows:hello", "other.json", "--db", db_url(files), cwd=files)
    assert result.returncode == 2
    assert result.stderr == (
        "Error: give either --db (replay the stored runs) or FILE..., not both\n"
    )


def test_help_lists_the_tools(recorded: Path) -> None:
    out = ok(stepflow_cli("--help", cwd=recorded))
    for command in ("history", "export", "replay", "diff", "graph", "check", "paths"):
        assert re.search(rf"^  {command} ", out, re.MULTILINE), command


MIGRATING = textwrap.dedent(
    """
    import stepflow
    from stepflow.versioning import Migration


    def greet(ctx):
        return "hi"


    v1 = stepflow.named("m/v1").do("greet", greet).do("last", greet)
    v2 = stepflow.new(
        stepflow.named("m/v2").do("greet", greet).do("last", greet),
        migrations=[Migration("m/v1")],
    )
    v2_renamed = stepflow.new(
        stepflow.named("m/v2").do("greet", greet).do("final", greet),
        migrations=[Migration("m/v1")],
    )
    """
)


def test_a_migrated_run_replays_from_its_migration(tmp_path: Path) -> None:
    (tmp_path / "flows.py").write_text(MIGRATING)
    db = ["--db", db_url(tmp_path)]
    ok(stepflow_cli("start", "flows:v1", "--id", "m1", *db, cwd=tmp_path))
    ok(stepflow_cli("worker", "flows:v2", "--until-idle", *db, cwd=tmp_path))  # adopts m1

    rows = table_rows(ok(stepflow_cli("history", "m1", "--flow", "flows:v2", *db, cwd=tmp_path)))
    assert [(row[3], row[5]) for row in rows][:2] == [
        ("start", "started at greet"),
        ("migrate", "migrated to m/v2"),
    ]
    assert ok(stepflow_cli("replay", "flows:v2", *db, cwd=tmp_path)).startswith("1 compatible")
    out = fails(stepflow_cli("replay", "flows:v2_renamed", *db, cwd=tmp_path))
    assert out.startswith("m1: divergent at batch 2 (seq 4), step m/v2/last:")


def test_graph_of_a_run_with_several_positions_highlights_each(tmp_path: Path) -> None:
    (tmp_path / "fan.py").write_text(
        textwrap.dedent(
            """
            import stepflow

            def work(ctx):
                return ctx.step

            branches = {
                "left": stepflow.steps().do("a", work),
                "right": stepflow.steps().do("b", work),
            }
            fan = stepflow.named("fan/v1").parallel("both", branches)
            """
        )
    )
    db = ["--db", db_url(tmp_path)]
    ok(stepflow_cli("start", "fan:fan", "--id", "r1", *db, cwd=tmp_path))
    mermaid = ok(stepflow_cli("graph", "fan:fan", "--run", "r1", *db, cwd=tmp_path))
    assert "class step_bothParallel_left_a,step_bothParallel_right_b current" in mermaid
    assert "state step_bothParallel <<fork>>" in mermaid
    dot = ok(stepflow_cli("graph", "fan:fan", "--run", "r1", "--format", "dot", *db, cwd=tmp_path))
    assert dot.count("filled,bold") == 2
    graph = json.loads(
        ok(stepflow_cli("graph", "fan:fan", "--run", "r1", "--format", "json", *db, cwd=tmp_path))
    )
    assert [n["positions"] for n in graph["nodes"] if n["current"]] == [
        ["start:fan/v1/bothParallel/left/a"],
        ["start:fan/v1/bothParallel/right/b"],
    ]
