"""Diagrams of a flow: Mermaid, Graphviz DOT and JSON, for the deploy pipeline and random flows.

Golden files live in ``tests/golden/``; regenerate them after an intended change with
``STEPFLOW_UPDATE_GOLDEN=1 pytest tests/test_diagrams.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from strategies import World, definitions, flows_and_scripts, run
from test_analysis_cleanup import cleanup_flows

import stepflow
from stepflow.analysis import replay
from stepflow.core.definition import template_of
from stepflow.diagrams import to_dot, to_json, to_mermaid

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("STEPFLOW_UPDATE_GOLDEN") == "1"

PRE_RETRY = "deploy/v1/collectPreActualStateRetry"
CASE = "deploy/v1/shouldDeployCase"
STEPS = f"{CASE}/steps"
ACCEPTED = f"{STEPS}/waitForAcceptedDeployRequestWaitFor"


def _unused(ctx: Any) -> Any:
    raise AssertionError("diagram tests never run handlers")


def deploy_definition() -> stepflow.FlowDefinition:
    """The seed's deploy pipeline, as a real one would run it: retried collections, timeouts."""
    collect_pre = (
        stepflow.steps()
        .do("getPreActualState", _unused)
        .wait_for("waitForPreActualState", _unused, every=5, timeout=300)
    )
    collect_post = (
        stepflow.steps()
        .do("getPostActualState", _unused)
        .wait_for("waitForPostActualState", _unused, every=5, timeout=300)
    )
    policy = stepflow.RetryPolicy(max_attempts=3, initial_interval=5)
    deploy = (
        stepflow.steps()
        .do("createDeployRequest", _unused)
        .wait_for("waitForAcceptedDeployRequest", _unused, every=60, timeout=86_400)
        .wait_for("monitorDeploymentProgress", _unused, every=30)
        .retry("collectPostActualState", policy, collect_post)
        .do("validatePostDeployActualState", _unused)
    )
    spec = (
        stepflow.named("deploy/v1")
        .retry("collectPreActualState", policy, collect_pre)
        .case("shouldDeploy", _unused, deploy)
    )
    return stepflow.new(spec).definition


def answer(
    definition: stepflow.FlowDefinition, state: stepflow.State, value: Any, at: float
) -> stepflow.State:
    """Answer the command in flight of ``state`` with ``value``."""
    (command,) = state.in_flight
    effect = stepflow.HandlerReturned(command.id, value, at)
    new, _ = stepflow.advance(definition, state, (effect,))
    return new


def waiting_for_the_pull_request(definition: stepflow.FlowDefinition) -> stepflow.State:
    """A deploy run that opened its pull request and waits for it to be accepted."""
    state, _ = stepflow.advance(definition, None, now=0.0)
    for at, value in enumerate(["job-1", True, True, 101], start=1):
        state = answer(definition, state, value, float(at))
    assert state.events == (f"start:{ACCEPTED}",)
    return state


def failed_at_should_deploy(definition: stepflow.FlowDefinition) -> stepflow.State:
    """A deploy run whose ``shouldDeploy`` condition raised: nothing retries it."""
    state, _ = stepflow.advance(definition, None, now=0.0)
    state = answer(definition, state, "job-1", 1.0)
    state = answer(definition, state, True, 2.0)
    (command,) = state.in_flight
    error = stepflow.ErrorRecord("KeyError", "preDeploy", CASE)
    state, _ = stepflow.advance(
        definition, state, (stepflow.HandlerRaised(command.id, error, None, 3.0),)
    )
    assert state.is_failed
    return state


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return
    assert path.exists(), f"{path} is missing; create it with STEPFLOW_UPDATE_GOLDEN=1"
    expected = path.read_text(encoding="utf-8")
    assert text == expected, f"{name} changed; if intended, run with STEPFLOW_UPDATE_GOLDEN=1"


def render_svg(dot: str) -> str:
    """Render ``dot`` with Graphviz; skip without it (fail in CI, which installs it)."""
    exe = shutil.which("dot")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail(
                "Graphviz `dot` is not installed; CI installs it (apt-get install graphviz)"
            )
        pytest.skip("Graphviz `dot` is not installed (apt-get install graphviz)")
    result = subprocess.run(
        [exe, "-Tsvg"], input=dot, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no warnings either
    assert "<svg" in result.stdout
    return result.stdout


# -- structural readers, so that tests compare the texts with the JSON graph ----------

MERMAID_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MERMAID_EDGE = re.compile(r"^    (\S+) --> (\S+)(?: : (.*))?$")
MERMAID_STATE = re.compile(r'^\s*state "([^"]*)" as (\S+?)(\{)?$')
MERMAID_BAR = re.compile(r"^\s*state (\S+) <<(fork|join)>>$")
DOT_EDGE = re.compile(r'^    "([^"]+)" -> "([^"]+)"(?: \[(.*)\])?;$')
DOT_LABEL = re.compile(r'label="((?:[^"\\]|\\.)*)"')


def mermaid_edges(text: str) -> list[tuple[str, str, str]]:
    edges = []
    for line in text.splitlines():
        match = MERMAID_EDGE.match(line)
        if match:
            source, target, label = match.groups()
            edges.append((source, target, label or ""))
    return edges


def dot_edges(text: str) -> list[tuple[str, str, str]]:
    edges = []
    for line in text.splitlines():
        match = DOT_EDGE.match(line)
        if match:
            source, target, attrs = match.groups()
            label = DOT_LABEL.search(attrs or "")
            edges.append((source, target, label.group(1) if label else ""))
    return edges


def check_mermaid_syntax(text: str) -> None:
    """What Mermaid's state grammar needs of the text we generate."""
    lines = text.splitlines()
    assert lines[0] == "stateDiagram-v2"
    depth = 0
    for line in lines[1:]:
        stripped = line.strip()
        if stripped == "}":
            depth -= 1
            assert depth >= 0
            continue
        if stripped.startswith(("%%", "classDef ")):
            continue
        if stripped.startswith("class "):
            ids, _, css = stripped[len("class ") :].partition(" ")
            assert all(MERMAID_ID.fullmatch(i) for i in ids.split(",")), line
            assert css in ("current", "failed")
            continue
        bar = MERMAID_BAR.match(line)
        if bar:
            assert MERMAID_ID.fullmatch(bar.group(1)), line
            assert depth > 0, "a fork or join is drawn inside its group"
            continue
        state = MERMAID_STATE.match(line)
        if state:
            assert MERMAID_ID.fullmatch(state.group(2)), line
            depth += bool(state.group(3))
            continue
        edge = MERMAID_EDGE.match(line)
        assert edge, f"not a statement Mermaid knows: {line!r}"
        assert depth == 0, "edges are declared at the top level"
        for end in edge.groups()[:2]:
            assert end == "[*]" or MERMAID_ID.fullmatch(end), line
        # An edge label stops at ':' or ';' and a line saying "direction XX" is a directive.
        assert not re.search(r"[:;]", edge.group(3) or ""), line
        assert not re.search(r"direction\s+(TB|BT|LR|RL)", line), line
    assert depth == 0


def expected_edges(graph: dict[str, Any], *, mermaid: bool) -> list[tuple[str, str, str]]:
    """The JSON edges as the text formats should draw them."""
    edges = []
    for edge in graph["edges"]:
        source, target, label = edge["source"], edge["target"], edge["reason"]
        if edge["kind"] == "start":
            label = ""
        if mermaid:
            source = "[*]" if source == "start" else source
            target = "[*]" if target == "end" else target
        edges.append((source, target, label))
    return edges


def same_edges(drawn: list[tuple[str, str, str]], graph: dict[str, Any], *, mermaid: bool) -> None:
    expected = expected_edges(graph, mermaid=mermaid)
    assert len(drawn) == len(expected)
    for (source, target, label), (e_source, e_target, e_label) in zip(drawn, expected, strict=True):
        assert (source, target) == (e_source, e_target)
        if mermaid and label.startswith(("⟲ ", "↳ ", "⊘ ")):
            assert label[2:].startswith(e_label + " ")
        elif not mermaid and e_label in ("retry", "catch", "finally", "saga", "cancelled"):
            assert label.startswith(e_label + " ")
        elif not mermaid:
            assert label.replace('\\"', '"') == e_label  # (DOT escapes a case value's quotes)
        else:
            assert label == e_label


# -- the deploy pipeline ---------------------------------------------------------------


def test_mermaid_of_the_deploy_pipeline_matches_its_golden_file() -> None:
    text = to_mermaid(deploy_definition())
    check_mermaid_syntax(text)
    check_golden("deploy_pipeline.mmd", text)


def test_dot_of_the_deploy_pipeline_matches_its_golden_file() -> None:
    check_golden("deploy_pipeline.dot", to_dot(deploy_definition()))


def test_a_waiting_run_is_highlighted_in_its_golden_files() -> None:
    definition = deploy_definition()
    state = waiting_for_the_pull_request(definition)
    mermaid = to_mermaid(definition, state)
    check_mermaid_syntax(mermaid)
    node = "step_shouldDeployCase_steps_waitForAcceptedDeployRequestWaitFor"
    assert f"    class {node} current\n" in mermaid
    check_golden("deploy_pipeline_waiting.mmd", mermaid)
    dot = to_dot(definition, state)
    assert re.search(rf'"{node}" \[[^\n]*filled', dot)
    check_golden("deploy_pipeline_waiting.dot", dot)


def test_the_deploy_pipeline_dot_renders_to_svg() -> None:
    definition = deploy_definition()
    svg = render_svg(to_dot(definition))
    assert "shouldDeployCase" in svg
    render_svg(to_dot(definition, waiting_for_the_pull_request(definition)))
    render_svg(to_dot(definition, failed_at_should_deploy(definition)))


def test_the_deploy_pipeline_draws_every_reason_and_retry_edge() -> None:
    definition = deploy_definition()
    mermaid, dot = to_mermaid(definition), to_dot(definition)
    for reason in (
        "handler returned",
        "WaitFor condition is met",
        "WaitFor condition is not met, poll again",
        "Case condition is met",
        "Case condition is not met",
    ):
        assert f" : {reason}\n" in mermaid
        assert f'label="{reason}"' in dot
    # Each step of a retry group has a retry edge back to the group's first step.
    first = "step_collectPreActualStateRetry_getPreActualState"
    assert f"{first} --> {first} : ⟲ retry collectPreActualStateRetry\n" in mermaid
    wait = "step_collectPreActualStateRetry_waitForPreActualStateWaitFor"
    assert f"{wait} --> {first} : ⟲ retry collectPreActualStateRetry\n" in mermaid
    assert dot.count("style=dashed") == 4
    assert "wait_for waitForPreActualState (every 5s, timeout 5m)" in mermaid
    assert "retry, up to 3 attempts, backoff 5s x2" in mermaid


def test_static_bookkeeping_events_are_not_drawn() -> None:
    definition = deploy_definition()
    graph = to_json(definition)
    handlers = list(definition.handler_transitions())
    assert [n["event"] for n in graph["nodes"]] == [
        definition.start_event,
        *(t.source for t in handlers),
        definition.completed_event,
    ]
    # "Case condition is not met" passes completed:<case> and completed:<flow> at once.
    (skip,) = [e for e in graph["edges"] if e["reason"] == "Case condition is not met"]
    assert (skip["source"], skip["target"]) == ("step_shouldDeployCase", "end")


def test_a_failed_run_is_marked_with_its_error() -> None:
    definition = deploy_definition()
    state = failed_at_should_deploy(definition)
    mermaid = to_mermaid(definition, state)
    check_mermaid_syntax(mermaid)
    assert "class step_shouldDeployCase failed\n" in mermaid
    assert "case shouldDeploy (failed, KeyError)" in mermaid
    assert "classDef current" not in mermaid
    dot = to_dot(definition, state)
    assert '"step_shouldDeployCase" [label="shouldDeploy\\ncase\\nfailed: KeyError"' in dot
    assert "#fecaca" in dot
    graph = to_json(definition, state)
    assert graph["status"] == "failed"
    assert graph["error"] == {"type": "KeyError", "message": "preDeploy", "step": CASE}
    assert [n["id"] for n in graph["nodes"] if n["current"]] == ["step_shouldDeployCase"]


def test_a_completed_run_marks_the_end() -> None:
    definition = deploy_definition()
    state, _ = stepflow.advance(definition, None, now=0.0)
    state = answer(definition, state, "job-1", 1.0)
    state = answer(definition, state, True, 2.0)
    state = answer(definition, state, False, 3.0)  # nothing to deploy
    assert state.is_completed
    graph = to_json(definition, state)
    assert [n["id"] for n in graph["nodes"] if n["current"]] == ["end"]
    assert '"end" [label="", shape=doublecircle' in to_dot(definition, state)
    assert "class " not in to_mermaid(definition, state)  # Mermaid cannot style [*]


def test_the_json_graph_of_the_deploy_pipeline() -> None:
    definition = deploy_definition()
    graph = to_json(definition)
    assert json.loads(json.dumps(graph)) == graph
    assert graph["flow"] == "deploy/v1"
    assert graph["fingerprint"] == definition.fingerprint
    assert (graph["status"], graph["error"]) == (None, None)
    assert graph["scopes"][:4] == [
        {"path": "deploy/v1", "kind": "flow", "parent": None},
        {"path": PRE_RETRY, "kind": "retry", "parent": "deploy/v1"},
        {"path": CASE, "kind": "case", "parent": "deploy/v1"},
        {"path": STEPS, "kind": "steps", "parent": CASE},
    ]
    accepted = next(n for n in graph["nodes"] if n["step"] == ACCEPTED)
    assert accepted == {
        "id": "step_shouldDeployCase_steps_waitForAcceptedDeployRequestWaitFor",
        "event": f"start:{ACCEPTED}",
        "kind": "wait_for",
        "step": ACCEPTED,
        "scope": STEPS,
        "current": False,
        "positions": [],
    }
    assert graph["edges"][0] == {
        "source": "start",
        "target": "step_collectPreActualStateRetry_getPreActualState",
        "reason": "static",
        "kind": "start",
    }


def test_a_state_of_another_flow_or_definition_is_refused() -> None:
    definition = deploy_definition()
    state = waiting_for_the_pull_request(definition)
    with pytest.raises(stepflow.FlowMismatchError, match="'other/v1'"):
        to_mermaid(definition, state._replace(flow="other/v1"))
    with pytest.raises(stepflow.UnknownEventError, match="start:deploy/v1/gone") as info:
        to_dot(definition, state._replace(events=("start:deploy/v1/gone",)))
    assert info.value.events == ("start:deploy/v1/gone",)


def test_loops_sleeps_and_named_groups_are_drawn() -> None:
    spec = stepflow.named("ops/v1").loop_until(
        "rollout",
        _unused,
        stepflow.steps()
        .sleep("cooldown", 90)
        .steps("batch", stepflow.steps().do("push", _unused))
        .steps("empty", stepflow.steps()),
    )
    definition = stepflow.new(spec).definition
    graph = to_json(definition)
    kinds = {s["path"]: s["kind"] for s in graph["scopes"]}
    assert kinds["ops/v1/rolloutLoopUntil"] == "loop_until"
    assert kinds["ops/v1/rolloutLoopUntil/steps/batch"] == "steps"
    loop = next(n for n in graph["nodes"] if n["kind"] == "loop_until")
    assert loop["event"] == "completed:ops/v1/rolloutLoopUntil/steps"
    assert loop["scope"] == "ops/v1/rolloutLoopUntil"
    mermaid = to_mermaid(definition)
    check_mermaid_syntax(mermaid)
    assert 'state "sleep cooldown (90s)" as step_rolloutLoopUntil_steps_cooldown' in mermaid
    assert "as scope_rolloutLoopUntil_steps_empty" not in mermaid  # nothing inside
    assert (
        "step_rolloutLoopUntil --> step_rolloutLoopUntil_steps_cooldown : "
        "LoopUntil condition is not met, loop again"
    ) in mermaid
    dot = to_dot(definition)
    assert "shape=octagon" in dot
    assert "cluster_scope_rolloutLoopUntil_steps_empty" not in dot
    render_svg(dot)


def test_names_that_collide_or_need_escaping_keep_valid_unique_ids() -> None:
    odd = 'say "hi"; #1 {x} <b> direction LR'
    spec = (
        stepflow.named("a.b/c-d_e/v2")
        .do("a-b", _unused)
        .do("a_b", _unused)
        .do("a.b", _unused)
        .retry("r;x", _unused, stepflow.steps().do(odd, _unused))
    )
    definition = stepflow.new(spec).definition
    graph = to_json(definition)
    ids = [n["id"] for n in graph["nodes"]]
    assert len(set(ids)) == len(ids)
    assert {"step_a_b", "step_a_b_2", "step_a_b_3"} <= set(ids)
    mermaid = to_mermaid(definition)
    check_mermaid_syntax(mermaid)
    assert "#34;hi#34;#59;#32;#35;1" in mermaid
    assert "⟲ retry r_xRetry" in mermaid
    dot = to_dot(definition)
    assert 'say \\"hi\\"; #1 {x} <b> direction LR\\ndo' in dot
    render_svg(dot)


# -- parallel branches and maps ---------------------------------------------------------

FANOUT = "fanout/v1"
TIMES = "\N{MULTIPLICATION SIGN}"


def fanout_definition() -> stepflow.FlowDefinition:
    """A release: build, then checks in parallel, then a rollout to each region, two at once."""
    rollout = (
        stepflow.steps().do("push", _unused).wait_for("healthy", _unused, every=10, timeout=600)
    )
    checks = {
        "lint": stepflow.steps().do("ruff", _unused),
        "tests": stepflow.steps().do("unit", _unused).sleep("settle", 30).do("e2e", _unused),
    }
    spec = (
        stepflow.named(FANOUT)
        .do("build", _unused)
        .parallel("checks", checks, max_failures=1)
        .retry(
            "rollout",
            stepflow.RetryPolicy(max_attempts=2, initial_interval=60),
            stepflow.steps().map("regions", _unused, rollout, max_concurrency=2),
        )
        .do("announce", _unused)
    )
    return stepflow.new(spec).definition


def drive(
    definition: stepflow.FlowDefinition,
    until: Any,
    answer_with: Any = lambda command: True,
) -> stepflow.State:
    """Answer every command in flight, one batch at a time, until ``until(state)``."""
    state, commands = stepflow.advance(definition, None, now=0.0)
    at = 0.0
    while not until(state):
        assert commands, f"the run ended before the wanted state: {state.events}"
        at += 1.0
        effects = []
        for command in commands:
            if command.kind == "sleep":
                effects.append(stepflow.TimerFired(command.id, max(at, command.at)))
            else:
                effects.append(stepflow.HandlerReturned(command.id, answer_with(command), at))
        at = max(e.at for e in effects)
        state, commands = stepflow.advance(definition, state, effects, now=at)
    return state


def items(command: Any) -> Any:
    return ["eu", "us", "ap"] if command.kind == "map" else True


def rolling_out(definition: stepflow.FlowDefinition) -> stepflow.State:
    """A run pushing to two regions at once, the third waiting for a slot."""
    return drive(definition, lambda s: any("steps[" in e for e in s.events), items)


def test_mermaid_of_a_flow_with_groups_matches_its_golden_file() -> None:
    text = to_mermaid(fanout_definition())
    check_mermaid_syntax(text)
    assert "    state step_checksParallel <<fork>>\n" in text.replace("        ", "    ")
    assert "state join_checksParallel <<join>>" in text
    assert 'state "checksParallel (parallel, tolerates 1 failure)" as scope_checksParallel{' in text
    assert 'state "for each item (max 2 at once)" as scope_rolloutRetry_regionsMap_steps{' in text
    check_golden("fanout.mmd", text)


def test_dot_of_a_flow_with_groups_matches_its_golden_file() -> None:
    dot = to_dot(fanout_definition())
    check_golden("fanout.dot", dot)
    svg = render_svg(dot)
    assert "for each item (max 2 at once)" in svg
    assert "cluster_scope_checksParallel_lint" in svg


def test_a_parallel_group_is_a_fork_branches_side_by_side_and_one_join() -> None:
    definition = fanout_definition()
    graph = to_json(definition)
    group = f"{FANOUT}/checksParallel"
    kinds = {s["path"]: (s["kind"], s["parent"]) for s in graph["scopes"]}
    assert kinds[group] == ("parallel", FANOUT)
    assert kinds[f"{group}/lint"] == ("branch", group)
    assert kinds[f"{group}/tests"] == ("branch", group)
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert nodes["step_checksParallel"]["kind"] == "parallel"
    assert nodes["join_checksParallel"] == {
        "id": "join_checksParallel",
        "event": f"completed:{group}",
        "kind": "join",
        "step": group,
        "scope": group,
        "current": False,
        "positions": [],
    }
    # Two join transitions in the table, one join node, one edge out of it.
    joins = [t for t in definition.handler_transitions() if t.kind == "join" and t.step == group]
    assert len(joins) == 2
    edges = {(e["source"], e["target"], e["reason"]) for e in graph["edges"]}
    assert {
        ("step_checksParallel", "step_checksParallel_lint_ruff", "parallel branch"),
        ("step_checksParallel", "step_checksParallel_tests_unit", "parallel branch"),
        ("step_checksParallel_lint_ruff", "join_checksParallel", "handler returned"),
        ("step_checksParallel_tests_e2e", "join_checksParallel", "handler returned"),
        ("join_checksParallel", "step_rolloutRetry_regionsMap", "all branches completed"),
    } <= edges
    assert [e for e in graph["edges"] if e["source"] == "join_checksParallel"] == [
        {
            "source": "join_checksParallel",
            "target": "step_rolloutRetry_regionsMap",
            "reason": "all branches completed",
            "kind": "join",
        }
    ]
    dot = to_dot(definition)
    # Fork and join are bars; the branches are clusters inside the group's cluster.
    assert re.search(r'"step_checksParallel" \[label="", shape=box, [^\n]*height=0.06', dot)
    assert re.search(r'"join_checksParallel" \[label="", shape=box, [^\n]*height=0.06', dot)
    same_edges(dot_edges(dot), graph, mermaid=False)
    same_edges(mermaid_edges(to_mermaid(definition)), graph, mermaid=True)


def test_a_map_is_a_repeated_item_scope_between_its_items_node_and_its_join() -> None:
    definition = fanout_definition()
    graph = to_json(definition)
    group = f"{FANOUT}/rolloutRetry/regionsMap"
    kinds = {s["path"]: s["kind"] for s in graph["scopes"]}
    assert (kinds[group], kinds[f"{group}/steps"]) == ("map", "item")
    edges = {(e["source"], e["target"], e["reason"], e["kind"]) for e in graph["edges"]}
    items_node, join = "step_rolloutRetry_regionsMap", "join_rolloutRetry_regionsMap"
    assert {
        (items_node, "step_rolloutRetry_regionsMap_steps_push", "map item", "map"),
        (items_node, "step_announce", "no items", "map"),
        (items_node, items_node, "retry", "retry"),  # the group restarts whole
        (
            "step_rolloutRetry_regionsMap_steps_healthyWaitFor",
            join,
            "WaitFor condition is met",
            "wait_for",
        ),
        (join, "step_announce", "all items completed", "join"),
    } <= edges
    mermaid = to_mermaid(definition)
    assert 'state "items regions" as step_rolloutRetry_regionsMap\n' in mermaid
    dot = to_dot(definition)
    assert 'label="for each item (max 2 at once)";' in dot
    assert 'style="dashed,bold"; color="#be185d";' in dot
    assert '"step_rolloutRetry_regionsMap" [label="regions\\nitems", shape=parallelogram' in dot


def test_every_position_of_a_run_with_groups_is_highlighted() -> None:
    definition = fanout_definition()
    state = drive(definition, lambda s: len(s.events) == 2)
    assert state.events == (
        f"start:{FANOUT}/checksParallel/lint/ruff",
        f"start:{FANOUT}/checksParallel/tests/unit",
    )
    mermaid = to_mermaid(definition, state)
    check_mermaid_syntax(mermaid)
    assert (
        "    class step_checksParallel_lint_ruff,step_checksParallel_tests_unit current\n"
        in mermaid
    )
    dot = to_dot(definition, state)
    assert len(re.findall(r"filled,bold", dot)) == 2
    current = [n["id"] for n in to_json(definition, state)["nodes"] if n["current"]]
    assert current == ["step_checksParallel_lint_ruff", "step_checksParallel_tests_unit"]


def test_positions_in_map_items_highlight_their_template_with_a_count() -> None:
    definition = fanout_definition()
    state = rolling_out(definition)
    push = f"{FANOUT}/rolloutRetry/regionsMap/steps"
    assert state.events == (f"start:{push}[0]/push", f"start:{push}[1]/push")
    mermaid = to_mermaid(definition, state)
    check_mermaid_syntax(mermaid)
    assert f'state "do push {TIMES}2" as step_rolloutRetry_regionsMap_steps_push\n' in mermaid
    assert "    class step_rolloutRetry_regionsMap_steps_push current\n" in mermaid
    assert "for each item (max 2 at once), 3 items (0 ended, 2 running, 1 waiting)" in mermaid
    check_golden("fanout_rolling_out.mmd", mermaid)
    dot = to_dot(definition, state)
    assert f'[label="push\\ndo {TIMES}2", shape=box, style="rounded,filled,bold"' in dot
    check_golden("fanout_rolling_out.dot", dot)
    render_svg(dot)
    graph = to_json(definition, state)
    (node,) = [n for n in graph["nodes"] if n["current"]]
    assert node["positions"] == [f"start:{push}[0]/push", f"start:{push}[1]/push"]
    # One item moves on to its health check: two nodes, one item each.
    command = state.in_flight[0]
    moved, _ = stepflow.advance(
        definition, state, (stepflow.HandlerReturned(command.id, None, 10.0),), now=10.0
    )
    graph = to_json(definition, moved)
    counted = {n["id"]: n["positions"] for n in graph["nodes"] if n["current"]}
    assert counted == {
        "step_rolloutRetry_regionsMap_steps_push": [f"start:{push}[1]/push"],
        "step_rolloutRetry_regionsMap_steps_healthyWaitFor": [f"start:{push}[0]/healthyWaitFor"],
    }
    assert f"do push {TIMES}1" in to_mermaid(definition, moved)
    assert "3 items (0 ended, 2 running, 1 waiting)" in to_dot(definition, moved)


def test_a_run_failed_at_a_group_marks_its_fork() -> None:
    definition = fanout_definition()
    state = drive(definition, lambda s: len(s.events) == 2)
    # Both branches fail: one more than the group tolerates.
    error = stepflow.ErrorRecord("RuntimeError", "red", "")
    effects = tuple(stepflow.HandlerRaised(c.id, error, None, 5.0) for c in state.in_flight)
    state, _ = stepflow.advance(definition, state, effects, now=5.0)
    assert state.is_failed
    assert state.events == (f"start:{FANOUT}/checksParallel",)
    mermaid = to_mermaid(definition, state)
    check_mermaid_syntax(mermaid)
    assert "checksParallel (parallel, tolerates 1 failure) (failed, RuntimeError)" in mermaid
    assert "    class step_checksParallel failed\n" in mermaid
    dot = to_dot(definition, state)
    assert 'fillcolor="#b91c1c", color="#b91c1c", height=0.06' in dot
    assert "failed: RuntimeError" in dot
    render_svg(dot)


def test_positions_a_flow_does_not_have_are_refused_with_their_indices() -> None:
    definition = fanout_definition()
    state = rolling_out(definition)
    push = f"start:{FANOUT}/rolloutRetry/regionsMap/steps"
    for wrong in (f"{push}/push", f"{push}[0][1]/push", f"start:{FANOUT}/build[0]"):
        with pytest.raises(stepflow.UnknownEventError) as info:
            to_json(definition, state._replace(events=(state.events[0], wrong)))
        assert info.value.events == (wrong,)


# -- random flows ------------------------------------------------------------------------


def drawable() -> st.SearchStrategy[stepflow.FlowDefinition]:
    """Random flows: every construct, and finally_ groups and sagas (with groups or not)."""
    return definitions() | cleanup_flows() | cleanup_flows(fork=True)


@given(drawable())
def test_every_step_and_reason_of_a_random_flow_is_drawn(
    definition: stepflow.FlowDefinition,
) -> None:
    graph = to_json(definition)
    mermaid, dot = to_mermaid(definition), to_dot(definition)
    steps = {(n["step"], n["kind"]): n for n in graph["nodes"]}
    joins = {t.step for t in definition.handler_transitions() if t.kind == "join"}
    for t in definition.handler_transitions():
        node = steps[t.step, t.kind]
        # Every join transition of a group is drawn as one join node.
        assert node["event"] == (f"completed:{t.step}" if t.kind == "join" else t.source)
        # (Forks and joins are mermaid's <<fork>>/<<join>> states, named by their id.)
        assert f" as {node['id']}\n" in mermaid or f"state {node['id']} <<" in mermaid
        assert f'"{node["id"]}" [label=' in dot
        reasons = {e["reason"] for e in graph["edges"] if e["source"] == node["id"]}
        for d in t.destinations:
            assert d.reason in reasons
            assert f"{d.reason}" in mermaid
            assert 'label="' + d.reason.replace('"', '\\"') in dot
    handlers = [t for t in definition.handler_transitions() if t.kind != "join"]
    assert len(graph["nodes"]) == len(handlers) + len(joins) + 2
    # (Plus one cancellation edge per finally_ or saga.)
    cleanups = [t for t in handlers if t.kind in ("finally", "saga")]
    destinations = sum(len(t.destinations) for t in handlers)
    assert len(graph["edges"]) == 1 + len(joins) + destinations + len(cleanups)


@given(drawable())
def test_the_json_graph_of_a_random_flow_is_consistent(
    definition: stepflow.FlowDefinition,
) -> None:
    graph = to_json(definition)
    assert json.loads(json.dumps(graph)) == graph
    ids = [n["id"] for n in graph["nodes"]]
    assert len(set(ids)) == len(ids)
    assert all(MERMAID_ID.fullmatch(i) for i in ids)
    assert {n["event"] for n in graph["nodes"]} <= set(definition.events)
    paths = [s["path"] for s in graph["scopes"]]
    assert len(set(paths)) == len(paths)
    assert paths[0] == definition.name
    assert all(s["parent"] in paths for s in graph["scopes"][1:])
    assert all(n["scope"] in paths for n in graph["nodes"])
    for edge in graph["edges"]:
        assert edge["source"] in ids
        assert edge["target"] in ids
        assert edge["target"] != "start"
        assert edge["source"] != "end"
    retry_scopes = {s["path"] for s in graph["scopes"] if s["kind"] == "retry"}
    assert retry_scopes == set(definition.retry_scopes())


@given(drawable())
def test_mermaid_and_dot_draw_exactly_the_json_edges(
    definition: stepflow.FlowDefinition,
) -> None:
    graph = to_json(definition)
    mermaid = to_mermaid(definition)
    check_mermaid_syntax(mermaid)
    same_edges(mermaid_edges(mermaid), graph, mermaid=True)
    same_edges(dot_edges(to_dot(definition)), graph, mermaid=False)


@given(drawable())
def test_diagrams_are_deterministic(definition: stepflow.FlowDefinition) -> None:
    again = pickle.loads(pickle.dumps(definition))  # an equal definition, rebuilt
    assert to_mermaid(definition) == to_mermaid(again)
    assert to_dot(definition) == to_dot(again)
    assert json.dumps(to_json(definition)) == json.dumps(to_json(again))


@given(flows_and_scripts(calls=False), st.data())
def test_every_state_of_a_run_is_drawn_at_its_position(
    flow_and_script: Any, data: st.DataObject
) -> None:
    definition, script = flow_and_script
    # One-position flows here: with groups, hypothesis reports this test's data
    # generation as flaky (not yet understood); group positions are drawn and
    # checked by the golden fan-out diagrams and tests/test_analysis_groups.py.
    assume(not definition._concurrent)
    _, states, _ = run(definition, World(script))
    state = data.draw(st.sampled_from(states))
    graph = to_json(definition, state)
    current = [n for n in graph["nodes"] if n["current"]]
    positions = [event for n in current for event in n["positions"]]
    assert sorted(positions) == sorted(state.events)
    for node in current:
        assert all(template_of(event) == node["event"] for event in node["positions"])
    assert graph["status"] == state.status
    mermaid = to_mermaid(definition, state)
    check_mermaid_syntax(mermaid)
    if current[0]["kind"] != "end":
        css = "failed" if state.is_failed else "current"
        assert f"    class {current[0]['id']} {css}\n" in mermaid
    assert "filled,bold" in to_dot(definition, state) or current[0]["kind"] == "end"


@settings(max_examples=10)
@given(flows_and_scripts(max_depth=2, calls=False), st.data())
def test_dot_of_random_flows_renders(flow_and_script: Any, data: st.DataObject) -> None:
    definition, script = flow_and_script
    _, states, _ = run(definition, World(script))
    render_svg(to_dot(definition, data.draw(st.sampled_from(states))))


def test_a_map_inside_a_map_counts_the_items_of_every_run_of_it() -> None:
    inner = stepflow.steps().map("hosts", _unused, stepflow.steps().do("patch", _unused))
    spec = stepflow.named("patch/v1").map("zones", _unused, inner)
    definition = stepflow.new(spec).definition

    def items(command: Any) -> Any:
        return ["a", "b"] if command.kind == "map" else None

    state = drive(definition, lambda s: sum("/patch" in e for e in s.events) == 4, items)
    assert sorted(state.events) == [
        f"start:patch/v1/zonesMap/steps[{z}]/hostsMap/steps[{h}]/patch"
        for z in (0, 1)
        for h in (0, 1)
    ]
    mermaid = to_mermaid(definition, state)
    check_mermaid_syntax(mermaid)
    assert f'"do patch {TIMES}4"' in mermaid
    assert "for each item, 2 items (0 ended, 2 running)" in mermaid  # the zones
    assert "for each item, 4 items in 2 runs of the map (0 ended, 4 running)" in mermaid
    render_svg(to_dot(definition, state))


def test_a_retried_parallel_group_restarts_from_its_fork() -> None:
    branches = {"a": stepflow.steps().do("x", _unused), "b": stepflow.steps().do("y", _unused)}
    group = stepflow.steps().parallel("both", branches)
    spec = stepflow.named("again/v1").retry("whole", stepflow.RetryPolicy(max_attempts=2), group)
    graph = to_json(stepflow.new(spec).definition)
    fork = "step_wholeRetry_bothParallel"
    retries = [e for e in graph["edges"] if e["kind"] == "retry"]
    assert retries == [{"source": fork, "target": fork, "reason": "retry", "kind": "retry"}]
    kinds = {s["path"]: s["kind"] for s in graph["scopes"]}
    assert kinds["again/v1/wholeRetry/bothParallel/a"] == "branch"


# -- finally_, sagas and cancellation ------------------------------------------------------


def lease_and_booking() -> stepflow.FlowDefinition:
    """A finally around a sleep, then a saga whose compensations are retried."""
    body = stepflow.steps().do("acquire", _unused).sleep("nap", 5)
    cleanup = stepflow.steps().do("release", _unused)
    trip = (
        stepflow.steps()
        .do("flight", _unused, compensate=_unused)
        .do("hotel", _unused, compensate=_unused)
    )
    policy = stepflow.RetryPolicy(max_attempts=3)
    spec = (
        stepflow.named("job/v1").finally_("lease", body, cleanup).saga("book", trip, policy=policy)
    )
    return stepflow.new(spec).definition


def test_a_finally_is_drawn_as_its_steps_then_its_cleanup_with_a_leave_decision() -> None:
    graph = to_json(lease_and_booking())
    kinds = {s["path"].removeprefix("job/v1/"): s["kind"] for s in graph["scopes"]}
    assert kinds["leaseFinally"] == "finally"
    assert kinds["leaseFinally/cleanup"] == "cleanup"
    assert kinds["leaseFinally/steps"] == "steps"
    nodes = {n["id"]: n for n in graph["nodes"]}
    edges = {(e["source"], e["target"], e["kind"]) for e in graph["edges"]}
    enter, leave = "step_leaseFinally_2", "step_leaseFinally"
    release = "step_leaseFinally_cleanup_release"
    assert nodes[enter]["kind"] == "finally"
    assert nodes[leave]["kind"] == "leave"
    assert nodes[leave]["event"] == "completed:job/v1/leaseFinally/cleanup"
    assert (enter, "step_leaseFinally_steps_acquire", "enter") in edges
    # The steps hand failures to the cleanup; a timer cannot fail, but it can be cancelled.
    assert ("step_leaseFinally_steps_acquire", release, "finally") in edges
    assert not any(s == "step_leaseFinally_steps_nap" and k == "finally" for s, _, k in edges)
    assert (enter, release, "cancel") in edges
    # The leave decision: on to the saga, or the error goes on (no scope: the run fails).
    assert (leave, "step_bookSaga", "leave") in edges


def test_a_saga_is_drawn_with_its_compensate_node_and_edges() -> None:
    definition = lease_and_booking()
    graph = to_json(definition)
    saga = next(s for s in graph["scopes"] if s["kind"] == "saga")
    assert saga["path"] == "job/v1/bookSaga"
    compensate = next(n for n in graph["nodes"] if n["kind"] == "compensate")
    assert compensate["scope"] == "job/v1/bookSaga"
    into = {e["source"] for e in graph["edges"] if e["target"] == compensate["id"]}
    assert into == {
        "step_bookSaga",  # cancelled
        "step_bookSaga_steps_flight",
        "step_bookSaga_steps_hotel",
        compensate["id"],  # its own retry
    }
    mermaid = to_mermaid(definition)
    check_mermaid_syntax(mermaid)
    assert "compensate book (last done, first undone)" in mermaid
    assert "saga, compensations retry, up to 3 attempts" in mermaid
    assert f"step_bookSaga --> {compensate['id']} : ⊘ cancelled bookSaga" in mermaid
    assert "step_bookSaga_steps_hotel --> step_bookSaga_2 : ↳ saga bookSaga" in mermaid
    dot = to_dot(definition)
    assert f'"{compensate["id"]}" [label="book\\ncompensate' in dot
    assert 'label="cancelled bookSaga", style=dotted' in dot
    same_edges(mermaid_edges(mermaid), graph, mermaid=True)
    same_edges(dot_edges(dot), graph, mermaid=False)


def test_a_run_compensating_is_highlighted_at_the_compensate_node() -> None:
    definition = lease_and_booking()
    trace = replay(
        definition,
        [
            ("do", "job/v1/leaseFinally/steps/acquire", "returned"),
            ("sleep", "job/v1/leaseFinally/steps/nap", "fired"),
            ("do", "job/v1/leaseFinally/cleanup/release", "returned"),
            ("do", "job/v1/bookSaga/steps/flight", "returned"),
            ("cancel", "", "requested"),  # the hotel is being booked: it ends first
            ("do", "job/v1/bookSaga/steps/hotel", "raised"),
        ],
    )
    state = trace.final
    assert state.status == "cancelling"
    assert [(c.kind, c.step) for c in state.in_flight] == [
        ("compensate", "job/v1/bookSaga/steps/flight")
    ]
    graph = to_json(definition, state)
    assert [n["id"] for n in graph["nodes"] if n["current"]] == ["step_bookSaga_2"]
    assert graph["status"] == "cancelling"
    assert "class step_bookSaga_2 current" in to_mermaid(definition, state)
