"""The scriptable CLI: JSON documents, whole ids, id prefixes, bulk starts, flow references.

Most tests drive the ``stepflow`` command in process with click's ``CliRunner``
(whose standard output is not a terminal, as in a pipe); one runs the installed
console script in a subprocess.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Hashable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from rich.console import Console
from rich.text import Text

import stepflow
import stepflow.cli as cli
from stepflow.cli import main
from stepflow.demo import FLOW_NAME, demo_inputs, is_demo_run
from stepflow.errors import AmbiguousRunError, ConfigurationError, UnknownRunError
from stepflow.stores import MemoryStore, SQLiteStore

REPO = Path(__file__).resolve().parent.parent

PIPELINES = textwrap.dedent(
    """
    import stepflow


    def greet(ctx):
        return {"greeting": "hello " + str(ctx.input)}


    hello = stepflow.named("hello/v1").do("greet", greet).sleep("nap", 60)
    compiled = stepflow.new(stepflow.named("compiled/v1").do("greet", greet))
    bad_spec = stepflow.named("bad:name")
    number = 42


    def build_flow() -> stepflow.Flow:
        return stepflow.new(stepflow.named("built/v1").do("greet", greet).do("again", greet))


    def needs_arguments(name):
        return stepflow.named(name)


    def returns_a_number():
        return 42


    def raises():
        raise KeyError("no such setting")
    """
)

LONG_ID = "run-" + "0123456789abcdef" * 6  # 100 characters: wider than any default table


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory holding ``pipelines.py``, with STEPFLOW_DB pointing into it."""
    (tmp_path / "pipelines.py").write_text(PIPELINES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STEPFLOW_DB", f"sqlite:///{tmp_path / 'runs.db'}")
    monkeypatch.setattr(sys, "path", list(sys.path))  # the CLI puts the directory on it
    yield tmp_path
    for name, module in list(sys.modules.items()):  # forget this test's modules
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.fixture
def ref(project: Path) -> str:
    """A reference to the ``hello`` spec, by file path (each test's file is its own module)."""
    return f"{project / 'pipelines.py'}:hello"


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.stdout


def one_line_error(result: Result, status: int = 1) -> str:
    """Check that ``result`` failed with one ``Error:`` line and no traceback; return it."""
    assert result.exit_code == status, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    return lines[0]


def start(ref: str, *args: str) -> str:
    return ok(run("start", ref, *args)).strip()


def stored(project: Path) -> dict[str, Any]:
    """Every run in the project's store: id -> input."""
    if not (project / "runs.db").exists():
        return {}
    store = SQLiteStore(project / "runs.db")
    try:
        return {record.run_id: record.input for record in store.runs()}
    finally:
        store.close()


def one_step(store: SQLiteStore, flow: stepflow.Flow) -> None:
    """Let a worker take one step of the run, then stop."""
    worker = stepflow.Worker(store, [flow], on_step=lambda report: worker.stop())
    worker.run_sync(handle_signals=False)


# -- runs --json, show --json ------------------------------------------------------------

RUN_FIELDS = [
    "id",
    "flow",
    "status",
    "position",
    "wake_at",
    "created_at",
    "updated_at",
    "version",
    "lease_owner",
    "lease_expires_at",
    "inbox",
    "input",
    "unreadable",
]


def test_runs_json_is_one_document_with_the_documented_fields(ref: str) -> None:
    start(ref, "--id", "a1", "--input", '{"n": 1}')
    start(ref, "--id", "b2", "--input", "[1, 2.5]")
    document = json.loads(ok(run("runs", "--json")))
    assert list(document) == ["total", "shown", "runs"]
    assert (document["total"], document["shown"]) == (2, 2)
    first, second = document["runs"]
    assert list(first) == RUN_FIELDS
    assert first["id"] == "a1"
    assert first["flow"] == "hello/v1"
    assert first["status"] == "running"
    assert first["position"] == ["start:hello/v1/greet"]
    assert first["input"] == {"n": 1}
    assert first["version"] == 1
    assert first["unreadable"] is None
    assert first["lease_owner"] is None
    assert isinstance(first["created_at"], float)
    assert first["wake_at"] == first["created_at"]
    assert second["input"] == [1, 2.5]
    limited = json.loads(ok(run("runs", "--json", "--limit", "1")))
    assert (limited["total"], limited["shown"], len(limited["runs"])) == (2, 1, 1)
    assert json.loads(ok(run("runs", "--json", "--status", "failed"))) == {
        "total": 0,
        "shown": 0,
        "runs": [],
    }


def test_show_json_has_the_run_fields_outputs_error_and_journal(ref: str, project: Path) -> None:
    run_id = start(ref, "--input", '"world"')
    store = SQLiteStore(project / "runs.db")
    flow = cli.load_flow(ref)
    one_step(store, flow)
    store.close()
    document = json.loads(ok(run("show", run_id, "--json")))
    assert list(document) == [
        *RUN_FIELDS,
        *("timeout_at", "deadline_at", "parent_run_id", "children", "outputs", "error"),
        *("journal", "progress", "progress_at", "journal_pruned"),
    ]
    assert (document["parent_run_id"], document["children"]) == (None, [])
    assert document["id"] == run_id
    assert document["input"] == "world"
    assert document["position"] == ["start:hello/v1/nap"]
    assert document["outputs"] == {"hello/v1/greet": {"greeting": "hello world"}}
    assert document["error"] is None
    start_entry, effects_entry = document["journal"]
    assert (start_entry["seq"], start_entry["op"], start_entry["effects"]) == (1, "start", [])
    assert effects_entry["op"] == "effects"
    assert effects_entry["effects"] == [
        {
            "command": 1,
            "kind": "do",
            "step": "hello/v1/greet",
            "outcome": "returned",
            "value": {"greeting": "hello world"},
        }
    ]


# -- ids are never cut -------------------------------------------------------------------


def test_piped_tables_never_cut_ids(ref: str) -> None:
    start(ref, "--id", LONG_ID)
    for args in (["runs"], ["show", LONG_ID], ["history", LONG_ID]):
        out = ok(run(*args))
        assert LONG_ID in out, out  # whole, on one line


def test_a_narrow_terminal_shrinks_the_other_columns_not_the_ids() -> None:
    store = MemoryStore()
    flow = cli.load_flow("stepflow.demo:flow")
    record = stepflow.start_run(store, flow, {"x": 1}, run_id=LONG_ID[:60])
    rows, total = cli._rows(store, None, None, None)
    output = io.StringIO()
    console = Console(file=output, width=70, force_terminal=True, color_system=None)
    console.print(cli._runs_view(rows, total, record.created_at))
    assert record.run_id in output.getvalue()


# -- id prefixes -------------------------------------------------------------------------


def test_every_command_taking_a_run_accepts_a_unique_prefix(ref: str, project: Path) -> None:
    start(ref, "--id", "alpha-1234")
    start(ref, "--id", "beta-5678")
    assert json.loads(ok(run("show", "alp", "--json")))["id"] == "alpha-1234"
    assert "history of run alpha-1234" in ok(run("history", "alpha"))
    assert json.loads(ok(run("export", "a")))["run_id"] == "alpha-1234"
    assert "class step_greet current" in ok(run("graph", ref, "--run", "be"))
    assert ok(run("cancel", "bet")).startswith("Cancelling run beta-5678;")
    message = one_line_error(run("resume", "bet", "--flow", ref))
    assert "run 'beta-5678' is 'running'; only a failed run can be resumed" in message


def test_an_exact_id_wins_over_the_longer_ids_it_starts(ref: str) -> None:
    start(ref, "--id", "job")
    start(ref, "--id", "job-2")
    assert json.loads(ok(run("show", "job", "--json")))["id"] == "job"


def test_an_ambiguous_prefix_lists_the_matches(ref: str) -> None:
    for run_id in ("job-1", "job-2", "other"):
        start(ref, "--id", run_id)
    for args in (["show", "job"], ["cancel", "job-"], ["export", "j"], ["history", "job"]):
        message = one_line_error(run(*args))
        assert "is the start of several run ids: job-1, job-2; give more of the id" in message
    assert set(stored(Path.cwd())) == {"job-1", "job-2", "other"}
    message = one_line_error(run("show", "nothing"))
    assert "no run has id 'nothing', nor an id starting with it" in message


def test_resolve_run_id_is_typed_and_names_at_most_ten_matches() -> None:
    store = MemoryStore()
    flow = cli.load_flow("stepflow.demo:flow")
    for i in range(12):
        stepflow.start_run(store, flow, run_id=f"r{i:02d}")
    assert stepflow.resolve_run_id(store, "r03") == "r03"
    with pytest.raises(AmbiguousRunError) as caught:
        stepflow.resolve_run_id(store, "r")
    assert caught.value.prefix == "r"
    assert caught.value.matches == tuple(f"r{i:02d}" for i in range(10))
    assert "and more" in str(caught.value)
    assert isinstance(caught.value, LookupError)
    with pytest.raises(UnknownRunError):
        stepflow.resolve_run_id(store, "x")
    with pytest.raises(ConfigurationError):
        stepflow.resolve_run_id(store, "")


# -- unreadable rows ---------------------------------------------------------------------


def corrupt(project: Path, run_id: str, column: str) -> None:
    with closing(sqlite3.connect(project / "runs.db")) as db, db:
        db.execute(f"UPDATE runs SET {column} = '{{not json' WHERE run_id = ?", (run_id,))


def test_a_row_whose_input_is_not_json_is_listed_as_unreadable(ref: str, project: Path) -> None:
    for run_id in ("good-1", "broken", "good-2"):
        start(ref, "--id", run_id)
    corrupt(project, "broken", "input")
    out = ok(run("runs"))
    assert "good-1" in out
    assert "good-2" in out
    broken = next(line for line in out.splitlines() if "broken" in line)
    assert "unreadable" in broken
    assert "input is not valid JSON" in broken
    # The store reads the rest of the row (UnreadableRunError names the column):
    # the run keeps its place and its status.
    document = json.loads(ok(run("runs", "--json")))
    assert [r["id"] for r in document["runs"]] == ["good-1", "broken", "good-2"]
    unreadable = document["runs"][1]
    assert "input is not valid JSON" in unreadable["unreadable"]
    assert unreadable["status"] == "running"
    assert document["runs"][0]["unreadable"] is None
    assert document["runs"][2]["unreadable"] is None

    result = run("show", "brok")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "unreadable" in result.stdout
    assert "broken" in result.stdout
    shown = json.loads(run("show", "broken", "--json").stdout)
    assert shown["id"] == "broken"
    assert "input is not valid JSON" in shown["unreadable"]


def test_show_lists_a_journal_that_cannot_be_read(ref: str, project: Path) -> None:
    start(ref, "--id", "run-1", "--input", '"x"')
    with closing(sqlite3.connect(project / "runs.db")) as db, db:
        db.execute("UPDATE journal SET batch = '{not json' WHERE run_id = 'run-1'")
    result = run("show", "run-1")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "its journal cannot be read" in result.stdout
    assert "hello/v1" in result.stdout  # the rest of the run is shown
    shown = json.loads(run("show", "run-1", "--json").stdout)
    assert shown["journal"] is None
    assert shown["unreadable"].startswith("its journal cannot be read")
    assert shown["input"] == "x"


def test_commands_that_need_an_unreadable_column_refuse_it_on_one_line(
    ref: str, project: Path
) -> None:
    start(ref, "--id", "broken")
    corrupt(project, "broken", "input")
    # The store still reads the rest of the row: what needs no input works.
    assert "started at greet" in ok(run("history", "brok"))
    assert json.loads(ok(run("export", "broken")))["run_id"] == "broken"
    start(ref, "--id", "lost")
    corrupt(project, "lost", "state")
    message = one_line_error(run("graph", ref, "--run", "lost"))
    assert "not valid JSON" in message


def test_a_row_whose_state_is_not_json_is_listed_as_unreadable(ref: str, project: Path) -> None:
    start(ref, "--id", "good")
    start(ref, "--id", "broken")
    corrupt(project, "broken", "state")
    document = json.loads(ok(run("runs", "--json")))
    good, broken = document["runs"]
    assert good["unreadable"] is None
    assert broken["status"] == "running"  # the columns read; the state does not
    assert broken["position"] is None
    assert broken["unreadable"].startswith("its state is not JSON")
    assert "unreadable: its state is not JSON" in ok(run("runs"))
    result = run("show", "broken")
    assert result.exit_code == 1
    assert "its state is not JSON" in result.stdout
    assert "Traceback" not in result.output


# -- references and imports --------------------------------------------------------------


@pytest.mark.parametrize(
    ("attribute", "flow_name"),
    [("hello", "hello/v1"), ("compiled", "compiled/v1"), ("build_flow", "built/v1")],
)
def test_a_file_path_with_or_without_py_names_a_module(
    project: Path, attribute: str, flow_name: str
) -> None:
    for path in ("pipelines.py", "./pipelines", str(project / "pipelines.py")):
        out = ok(run("graph", f"{path}:{attribute}", "--format", "json"))
        assert json.loads(out)["flow"] == flow_name


def test_the_readme_example_graph_reference_works_from_the_repository() -> None:
    """The real console script, in a subprocess: a path without .py to a factory."""
    script = shutil.which("stepflow", path=str(Path(sys.executable).parent)) or shutil.which(
        "stepflow"
    )
    assert script is not None, "the stepflow console script is not installed"
    environment = {k: v for k, v in os.environ.items() if k != "STEPFLOW_DB"}
    result = subprocess.run(
        [script, "graph", "./examples/deploy_pipeline:build_flow"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("stateDiagram-v2")
    assert "deploy/v1" in result.stdout
    listed = subprocess.run(
        [script, "flows", "examples/deploy_pipeline.py", "--json"],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    (entry,) = json.loads(listed.stdout)["flows"]
    assert (entry["attribute"], entry["kind"], entry["name"]) == (
        "build_flow",
        "factory",
        "deploy/v1",
    )


def test_a_syntax_error_is_one_line_naming_the_file_and_line(project: Path) -> None:
    (project / "broken.py").write_text("import stepflow\n\nflow = (\n")
    for ref in ("broken:flow", "broken.py:flow", "./broken:flow"):
        message = one_line_error(run("graph", ref), status=2)
        assert "broken.py:3: syntax error in module" in message
        assert "was never closed" in message
    (project / "indented.py").write_text("def f():\nreturn 1\n")
    assert "indented.py:2: indentation error" in one_line_error(run("graph", "indented:f"), 2)


def test_a_module_failing_at_import_is_one_line_naming_where(project: Path) -> None:
    (project / "raising.py").write_text("import stepflow\n\nraise RuntimeError('boom')\n")
    (project / "needs.py").write_text("import no_such_dependency_here\n")
    (project / "exits.py").write_text("import sys\nsys.exit(3)\n")
    message = one_line_error(run("graph", "raising:flow"), status=2)
    assert (
        message == "Error: importing module 'raising' failed: RuntimeError: boom (at raising.py:3)"
    )
    message = one_line_error(run("graph", "needs:flow"), status=2)
    assert "importing module 'needs' failed: ModuleNotFoundError" in message
    assert "no_such_dependency_here" in message
    assert "(at needs.py:1)" in message
    assert "SystemExit: 3" in one_line_error(run("graph", "exits.py:flow"), status=2)


@pytest.mark.parametrize(
    ("reference", "fragment"),
    [
        ("pipelines", "is not MODULE:FLOW"),
        (":hello", "is not MODULE:FLOW"),
        ("pipelines:", "is not MODULE:FLOW"),
        ("pipelines:hello world", "is not an attribute name"),
        (".pipelines:hello", "is a relative module name"),
        ("..pkg.mod:hello", "is a relative module name"),
        ("pipe lines:hello", "is neither a module name"),
        ("nosuchmodule:hello", "cannot import module 'nosuchmodule': no module named"),
        ("./nosuchfile:hello", "no Python file at './nosuchfile'"),
        ("missing/dir/file.py:hello", "no Python file at 'missing/dir/file.py'"),
        ("pipelines:nope", "module 'pipelines' has no attribute 'nope'"),
        ("pipelines:number", "holds a value of type 'int'"),
        ("pipelines:needs_arguments", "is a function that takes arguments (name)"),
        ("pipelines:returns_a_number", "returned a value of type 'int'"),
        ("pipelines:raises", "calling 'pipelines:raises'() failed: KeyError"),
    ],
)
def test_bad_references_are_one_line_usage_errors(
    project: Path, reference: str, fragment: str
) -> None:
    assert fragment in one_line_error(run("graph", reference), status=2)


def test_a_file_shadowing_a_loaded_module_gets_its_own_name(project: Path) -> None:
    (project / "json.py").write_text(
        "import stepflow\nflow = stepflow.named('shadow/v1').do('x', lambda ctx: 1)\n"
    )
    out = ok(run("graph", "./json.py:flow", "--format", "json"))
    assert json.loads(out)["flow"] == "shadow/v1"
    assert json.dumps({"a": 1}) == '{"a": 1}'  # the standard module is untouched


# -- non-finite numbers ------------------------------------------------------------------


@pytest.mark.parametrize("text", ['{"when": NaN}', "Infinity", "[-Infinity]", '{"a": 1e999}'])
def test_non_finite_numbers_are_refused_and_nothing_is_stored(
    ref: str, project: Path, text: str
) -> None:
    message = one_line_error(run("start", ref, "--input", text, "--id", "x"), status=2)
    assert "is not a number JSON can hold" in message
    (project / "input.json").write_text(text)
    message = one_line_error(run("start", ref, "--input", "@input.json"), status=2)
    assert message.startswith("Error: --input @input.json: ")
    (project / "runs.jsonl").write_text(f'{{"input": 1}}\n{{"input": {text}}}\n')
    message = one_line_error(run("start", ref, "--from", "runs.jsonl"), status=2)
    assert "runs.jsonl, line 2: " in message
    assert stored(project) == {}


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (float("nan"), "$"),
        ({"when": float("inf")}, "$.when"),
        ({"a": [1.0, {"b": -float("inf")}]}, "$.a[1].b"),
        ((1, float("nan")), "$[1]"),
    ],
)
def test_start_run_refuses_non_finite_input(value: Any, where: str) -> None:
    store = MemoryStore()
    flow = cli.load_flow("stepflow.demo:flow")
    with pytest.raises(ConfigurationError, match=rf"NaN or an infinity at {re.escape(where)},"):
        stepflow.start_run(store, flow, value, run_id="r")
    assert store.count() == 0


# -- start --input @FILE, --from FILE.jsonl ----------------------------------------------


def test_input_from_a_file_or_standard_input(ref: str, project: Path) -> None:
    (project / "input.json").write_text('{"name": "from a file", "n": [1, 2]}')
    run_id = start(ref, "--input", "@input.json")
    assert stored(project)[run_id] == {"name": "from a file", "n": [1, 2]}
    run_id = ok(run("start", ref, "--input", "@-", input='"from stdin"')).strip()
    assert stored(project)[run_id] == "from stdin"
    assert "cannot read --input file 'nope.json'" in one_line_error(
        run("start", ref, "--input", "@nope.json"), status=2
    )


def test_from_starts_one_run_per_line_and_again_starts_nothing(ref: str, project: Path) -> None:
    (project / "runs.jsonl").write_text(
        '{"id": "one", "input": {"n": 1}}\n'
        "\n"  # blank lines are skipped
        '{"id": "two", "input": [2]}\n'
        '{"id": "three"}\n'
    )
    result = run("start", ref, "--from", "runs.jsonl")
    assert ok(result).split() == ["one", "two", "three"]
    assert result.stderr.strip() == "started 3 runs of hello/v1"
    assert stored(project) == {"one": {"n": 1}, "two": [2], "three": None}
    again = run("start", ref, "--from", "runs.jsonl")
    assert ok(again) == ""
    assert again.stderr.strip() == "nothing new: the 3 runs of runs.jsonl were started before"
    with (project / "runs.jsonl").open("a") as file:
        file.write('{"id": "four", "input": 4}\n')
    more = run("start", ref, "--from", "runs.jsonl")
    assert ok(more).split() == ["four"]
    assert more.stderr.strip() == "started 1 run of hello/v1; 3 were started before"
    assert len(stored(project)) == 4


def test_lines_without_an_id_get_a_new_run_each_time(ref: str, project: Path) -> None:
    (project / "runs.jsonl").write_text('{"input": 1}\n{"input": 2}\n')
    first = ok(run("start", ref, "--from", "runs.jsonl")).split()
    second = ok(run("start", ref, "--from", "runs.jsonl")).split()
    assert len(set(first + second)) == 4


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        (['{"id": "a"}', "not json"], "runs.jsonl, line 3 is not JSON"),
        (['{"id": "a"}', "[1, 2]"], "runs.jsonl, line 3: expected an object"),
        (['{"id": "a"}', '{"id": "b", "inptu": 1}'], "line 3: unknown key 'inptu'"),
        (['{"id": 7}'], "line 2: 'id' must be a non-empty string, got 7"),
        (['{"id": ""}'], "line 2: 'id' must be a non-empty string"),
        (['{"id": "a"}', '{"id": "b"}', '{"id": "a"}'], "line 4: id 'a' was given on line 2"),
        (['{"id": "a", "input": 18446744073709551616}'], "line 2: the input cannot be stored"),
        (['{"id": "taken", "input": 2}'], "line 2: run 'taken' exists already, with another input"),
        (['{"id": "other-flow", "input": 1}'], "exists already, as a run of 'compiled/v1'"),
        (["nope", "nope"], "line 2 is not JSON (Expecting value"),
    ],
)
def test_a_bad_file_starts_nothing_and_names_the_line(
    ref: str, project: Path, lines: list[str], fragment: str
) -> None:
    start(ref, "--id", "taken", "--input", "1")
    start(f"{project / 'pipelines.py'}:compiled", "--id", "other-flow", "--input", "1")
    (project / "runs.jsonl").write_text("\n".join(['{"id": "fine"}', *lines]) + "\n")
    message = one_line_error(run("start", ref, "--from", "runs.jsonl"), status=2)
    assert fragment in message
    assert message.endswith("no run was started")
    assert set(stored(project)) == {"taken", "other-flow"}


def test_from_counts_every_bad_line(ref: str, project: Path) -> None:
    (project / "runs.jsonl").write_text("x\ny\n{}\nz\n")
    message = one_line_error(run("start", ref, "--from", "runs.jsonl"), status=2)
    assert "line 1 is not JSON" in message
    assert "(and 2 more problems); no run was started" in message


def test_from_refuses_input_and_id(ref: str, project: Path) -> None:
    (project / "runs.jsonl").write_text("{}\n")
    for extra in (["--input", "1"], ["--id", "x"]):
        message = one_line_error(run("start", ref, "--from", "runs.jsonl", *extra), status=2)
        assert "drop --input and --id" in message


# -- flows MODULE ------------------------------------------------------------------------


def test_flows_lists_flows_specs_and_factories(project: Path) -> None:
    result = run("flows", "pipelines", "--json")
    assert result.exit_code == 1  # bad_spec does not compile
    document = json.loads(result.stdout)
    assert document["module"] == "pipelines"
    entries = {entry["attribute"]: entry for entry in document["flows"]}
    assert list(entries) == ["bad_spec", "build_flow", "compiled", "hello"]
    assert list(entries["hello"]) == ["attribute", "kind", "name", "fingerprint", "steps", "error"]
    assert entries["hello"]["kind"] == "spec"
    assert entries["hello"]["name"] == "hello/v1"
    assert entries["hello"]["steps"] == 2
    assert (
        entries["hello"]["fingerprint"] == cli.load_flow("pipelines:hello").definition.fingerprint
    )
    assert (entries["compiled"]["kind"], entries["compiled"]["steps"]) == ("flow", 1)
    assert (entries["build_flow"]["kind"], entries["build_flow"]["name"]) == ("factory", "built/v1")
    assert entries["bad_spec"]["name"] is None
    assert "contains ':'" in entries["bad_spec"]["error"]
    table = run("flows", "./pipelines.py")
    assert table.exit_code == 1
    assert "hello/v1" in table.stdout
    assert "does not compile" in table.stdout
    assert (
        cli.load_flow("pipelines:hello").definition.fingerprint in table.stdout
    )  # whole, when piped


def test_flows_of_a_module_without_any(project: Path) -> None:
    (project / "plain.py").write_text("x = 1\n")
    assert "No flows in plain" in ok(run("flows", "plain"))
    assert json.loads(ok(run("flows", "plain", "--json"))) == {"module": "plain", "flows": []}
    message = one_line_error(run("flows", "no_such_module"), status=2)
    assert "cannot import module 'no_such_module'" in message


# -- watching ----------------------------------------------------------------------------


def test_runs_watch_prints_a_new_snapshot_at_each_change_when_piped(
    ref: str, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start(ref, "--id", "first")
    flow = cli.load_flow(ref)
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # between two looks: a new run, then nothing
        sleeps.append(seconds)
        if len(sleeps) == 1:
            store = SQLiteStore(project / "runs.db")
            stepflow.start_run(store, flow, run_id="second")
            store.close()

    monkeypatch.setattr(cli.time, "sleep", sleep)
    result = run("runs", "--watch", "--json", "--interval", "0.5", "--max-polls", "4")
    assert result.exit_code == 0, result.output
    snapshots = [json.loads(line) for line in result.stdout.splitlines()]
    assert [[r["id"] for r in s["runs"]] for s in snapshots] == [["first"], ["first", "second"]]
    assert sleeps == [0.5, 0.5, 0.5]  # four looks, three waits
    tables = run("runs", "--watch", "--max-polls", "2", "--interval", "0.01")
    assert tables.stdout.count("second") == 1  # nothing changed: one snapshot
    assert tables.stdout.startswith("-- ")


def test_show_follow_prints_the_run_again_as_it_moves(
    ref: str, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = start(ref, "--id", "moving", "--input", '"x"')
    flow = cli.load_flow(ref)
    looks = 0

    def sleep(seconds: float) -> None:
        nonlocal looks
        looks += 1
        if looks == 2:  # a worker takes a step
            store = SQLiteStore(project / "runs.db")
            one_step(store, flow)
            store.close()

    monkeypatch.setattr(cli.time, "sleep", sleep)
    result = run("show", "mov", "--follow", "--json", "--max-polls", "5")
    assert result.exit_code == 0, result.output
    snapshots = [json.loads(line) for line in result.stdout.splitlines()]
    assert [s["position"] for s in snapshots] == [["start:hello/v1/greet"], ["start:hello/v1/nap"]]
    assert all(s["id"] == run_id for s in snapshots)


def test_watching_on_a_terminal_updates_in_place_and_stops_on_ctrl_c(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    output = io.StringIO()
    console = Console(file=output, force_terminal=True, width=60, color_system=None)
    views = iter(["view one", "view two", "view three"])

    def snapshot() -> tuple[Hashable, Any]:
        view = next(views)
        return view, Text(view)

    interrupted: list[float] = []

    def sleep(seconds: float) -> None:
        if interrupted:
            raise KeyboardInterrupt
        interrupted.append(seconds)

    monkeypatch.setattr(cli.time, "sleep", sleep)
    cli._watch(snapshot, console, as_json=False, interval=0.2, max_polls=None)
    text = output.getvalue()
    assert "view one" in text
    assert "view two" in text
    assert "view three" not in text
    assert "\x1b[" in text  # the cursor moved back: an update in place


# -- demo --fresh ------------------------------------------------------------------------


def test_is_demo_run_recognizes_the_demos_runs_only() -> None:
    store = MemoryStore()
    flow = cli.load_flow("stepflow.demo:flow")
    (run_id, spec), *_ = demo_inputs(3)
    demo = stepflow.start_run(store, flow, spec, run_id=run_id)
    users = stepflow.start_run(store, flow, {"app": "app-02", "of": 3}, run_id="app-02")
    other = stepflow.start_run(store, flow, {"service": "billing"}, run_id="deploy-billing")
    assert is_demo_run(demo)
    assert not is_demo_run(users)
    assert not is_demo_run(other)


def user_deploy_flow() -> stepflow.Flow:
    """A user's own flow named as the demo's (the README's example names one so)."""
    return stepflow.new(stepflow.named(FLOW_NAME).do("x", lambda ctx: None))


def test_demo_fresh_refuses_a_store_holding_a_users_deploy_v1(tmp_path: Path) -> None:
    database = tmp_path / "runs.db"
    store = SQLiteStore(database)
    stepflow.start_run(store, user_deploy_flow(), {"service": "mine"}, run_id="my-deploy")
    store.close()
    result = run("demo", "--db", f"sqlite:///{database}", "--fresh", "--apps", "1")
    message = one_line_error(result, status=2)
    assert "--fresh would delete runs the demo did not start" in message
    assert "'my-deploy', a run of 'deploy/v2'" in message
    assert "nothing was deleted" in message
    assert stored(tmp_path) == {"my-deploy": {"service": "mine"}}
    message = one_line_error(run("demo", "--db", f"sqlite:///{database}", "--apps", "1"), 2)
    assert "holds runs of deploy/v2 the demo did not start ('my-deploy'" in message
    assert stored(tmp_path) == {"my-deploy": {"service": "mine"}}


def test_demo_fresh_refuses_a_forged_demo_id(tmp_path: Path) -> None:
    database = tmp_path / "runs.db"
    store = SQLiteStore(database)
    flow = cli.load_flow("stepflow.demo:flow")
    for run_id, spec in demo_inputs(2):
        stepflow.start_run(store, flow, spec, run_id=run_id)
    stepflow.start_run(store, flow, {"of": 2, "app": "app-03"}, run_id="app-03")
    store.close()
    result = run("demo", "--db", f"sqlite:///{database}", "--fresh")
    assert "'app-03', a run of 'deploy/v2'" in one_line_error(result, status=2)
    assert set(stored(tmp_path)) == {"app-01", "app-02", "app-03"}


def test_demo_fresh_deletes_the_demos_own_runs(tmp_path: Path) -> None:
    database = tmp_path / "runs.db"
    store = SQLiteStore(database)
    flow = cli.load_flow("stepflow.demo:flow")
    for run_id, spec in demo_inputs(5):
        stepflow.start_run(store, flow, spec, run_id=run_id)
    store.close()
    result = run(
        "demo", "--db", f"sqlite:///{database}", "--fresh", "--apps", "2", "--speed", "0.02"
    )
    assert result.exit_code == 0, result.output
    assert "Starting 2 runs" in result.stdout
    assert sorted(stored(tmp_path)) == ["app-01", "app-02"]
