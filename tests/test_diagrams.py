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
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import World, definitions, flows_and_scripts, run

import stepflow
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
        if mermaid and label.startswith("⟲ "):
            assert label[2:].startswith(e_label + " ")
        elif not mermaid and e_label == "retry":
            assert label.startswith("retry ")
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


# -- random flows ------------------------------------------------------------------------


@given(definitions())
def test_every_step_and_reason_of_a_random_flow_is_drawn(
    definition: stepflow.FlowDefinition,
) -> None:
    graph = to_json(definition)
    mermaid, dot = to_mermaid(definition), to_dot(definition)
    steps = {n["step"]: n for n in graph["nodes"]}
    for t in definition.handler_transitions():
        node = steps[t.step]
        assert node["event"] == t.source
        assert node["kind"] == t.kind
        assert f" as {node['id']}\n" in mermaid
        assert f'"{node["id"]}" [label=' in dot
        reasons = {e["reason"] for e in graph["edges"] if e["source"] == node["id"]}
        for d in t.destinations:
            assert d.reason in reasons
            assert f"{d.reason}" in mermaid
            assert f'label="{d.reason}' in dot
    assert len(graph["nodes"]) == len(list(definition.handler_transitions())) + 2
    assert len(graph["edges"]) == 1 + sum(
        len(t.destinations) for t in definition.handler_transitions()
    )


@given(definitions())
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


@given(definitions())
def test_mermaid_and_dot_draw_exactly_the_json_edges(
    definition: stepflow.FlowDefinition,
) -> None:
    graph = to_json(definition)
    mermaid = to_mermaid(definition)
    check_mermaid_syntax(mermaid)
    same_edges(mermaid_edges(mermaid), graph, mermaid=True)
    same_edges(dot_edges(to_dot(definition)), graph, mermaid=False)


@given(definitions())
def test_diagrams_are_deterministic(definition: stepflow.FlowDefinition) -> None:
    again = pickle.loads(pickle.dumps(definition))  # an equal definition, rebuilt
    assert to_mermaid(definition) == to_mermaid(again)
    assert to_dot(definition) == to_dot(again)
    assert json.dumps(to_json(definition)) == json.dumps(to_json(again))


@given(flows_and_scripts(), st.data())
def test_every_state_of_a_run_is_drawn_at_its_position(
    flow_and_script: Any, data: st.DataObject
) -> None:
    definition, script = flow_and_script
    _, states, _ = run(definition, World(script))
    state = data.draw(st.sampled_from(states))
    graph = to_json(definition, state)
    current = [n for n in graph["nodes"] if n["current"]]
    assert [n["event"] for n in current] == list(state.events)
    assert graph["status"] == state.status
    mermaid = to_mermaid(definition, state)
    check_mermaid_syntax(mermaid)
    if current[0]["kind"] != "end":
        css = "failed" if state.is_failed else "current"
        assert f"    class {current[0]['id']} {css}\n" in mermaid
    assert "filled,bold" in to_dot(definition, state) or current[0]["kind"] == "end"


@settings(max_examples=10)
@given(flows_and_scripts(max_depth=2), st.data())
def test_dot_of_random_flows_renders(flow_and_script: Any, data: st.DataObject) -> None:
    definition, script = flow_and_script
    _, states, _ = run(definition, World(script))
    render_svg(to_dot(definition, data.draw(st.sampled_from(states))))
