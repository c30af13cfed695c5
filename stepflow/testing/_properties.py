"""Ready-made properties for users' flows: resumable, deterministic, terminating."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from stepflow.codec import dumps, loads
from stepflow.core.advance import advance, initial_state
from stepflow.core.definition import FlowDefinition
from stepflow.core.groups import command_times
from stepflow.core.messages import CancelRequested
from stepflow.flow import Flow
from stepflow.testing._scripts import (
    SCRIPTED_CANCEL,
    Script,
    ScriptedWorld,
    next_command,
    simulate,
)

__all__ = [
    "Crash",
    "assert_deterministic",
    "assert_resumable",
    "assert_terminates",
    "run_with_crashes",
]

#: Where a simulated worker crashes in one iteration of its loop: not at all,
#: after saving the issued command but before executing it, or after executing
#: it but before saving its effect (the command runs again after the reload).
Crash = Literal["none", "before", "after"]


def _definition(flow: Flow | FlowDefinition) -> FlowDefinition:
    return flow.definition if isinstance(flow, Flow) else flow


def run_with_crashes(
    definition: FlowDefinition,
    world: ScriptedWorld,
    crashes: Sequence[Crash],
    *,
    max_steps: int = 100_000,
    cancel_after: int | None = None,
) -> str:
    """Drive a run as a worker would, crashing where ``crashes`` says; return the last save.

    Each iteration loads the last save, advances (issuing or re-issuing the
    command in flight), saves, executes the command and saves its effect's
    result. A crash loses whatever was not saved. With ``cancel_after=n``, the
    run is cancelled, durably, once ``n`` effects were saved (as
    :func:`~stepflow.testing.simulate` does).
    """
    first, _ = advance(definition, initial_state(definition), now=world.clock.now())
    saved = dumps(first)
    applied = 0
    for step in range(max_steps):
        state = loads(saved, definition)
        if applied == cancel_after and state.status == "running":
            cancel = CancelRequested(SCRIPTED_CANCEL, world.clock.now())
            state, _ = advance(definition, state, (cancel,))
        state, commands = advance(definition, state)
        saved = dumps(state)
        if not commands:
            return saved
        crash = crashes[step] if step < len(crashes) else "none"
        if crash == "before":
            continue
        command = next_command(state, commands)
        effect = world.execute(command, *command_times(state, command))
        if crash == "after":
            continue
        state, _ = advance(definition, state, (effect,))
        saved = dumps(state)
        applied += 1
    raise AssertionError(f"the run did not end within {max_steps} steps")


def _check_resumable(definition: FlowDefinition, script: Script, crashes: Sequence[Crash]) -> None:
    calm = simulate(definition, script)
    stormy = ScriptedWorld(script)
    final = run_with_crashes(definition, stormy, crashes)
    expected = dumps(calm.final)
    if final != expected:
        raise AssertionError(
            f"a run crashed at {list(crashes)!r} ended as\n  {final}\nnot as the "
            f"uninterrupted run did:\n  {expected}"
        )
    first: dict[int, object] = {}
    for command in stormy.executed:
        if first.setdefault(command.id, command) != command:
            raise AssertionError(
                f"command id {command.id} was re-executed as a different command: "
                f"{first[command.id]!r} then {command!r}"
            )
    extra = len(stormy.executed) - len(calm.steps)
    if extra > list(crashes).count("after"):
        raise AssertionError(
            f"{extra} re-executions for {list(crashes).count('after')} crashes after execution"
        )


def assert_resumable(
    flow: Flow | FlowDefinition,
    script: Script | None = None,
    *,
    max_examples: int = 100,
) -> None:
    """Check that a run crashed and reloaded anywhere ends as an uninterrupted one.

    With ``script``, every single crash point (before and after each command) is
    tried exhaustively. Without one, hypothesis draws scripts (see
    :func:`~stepflow.testing.outcomes`) and crash sequences, ``max_examples`` of
    them, and shrinks any failure to a minimal one.

    Raises:
        AssertionError: a crashed run ended differently, or re-executed a
            command under another id.

    """
    definition = _definition(flow)
    if script is not None:
        steps = len(simulate(definition, script).steps)
        for at in range(steps + 1):
            for kind in ("before", "after"):  # each single crash point
                crashes: list[Crash] = ["none"] * at
                crashes.append(kind)
                _check_resumable(definition, script, crashes)
        return
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from stepflow.testing._strategies import outcomes

    @settings(max_examples=max_examples, deadline=None)
    @given(
        outcomes(definition),
        st.lists(st.sampled_from(["none", "none", "before", "after"]), max_size=40),
    )
    def resumable(drawn: Script, crashes: list[Crash]) -> None:
        _check_resumable(definition, drawn, crashes)

    resumable()


def _check_deterministic(definition: FlowDefinition, script: Script) -> None:
    one, two = simulate(definition, script), simulate(definition, script)
    texts_one = [dumps(s) for s in one.states]
    texts_two = [dumps(s) for s in two.states]
    if texts_one != texts_two or one.commands != two.commands:
        for k, (a, b) in enumerate(zip(texts_one, texts_two, strict=False)):
            if a != b:
                raise AssertionError(f"two runs of the same script differ at state {k}:\n{a}\n{b}")
        raise AssertionError("two runs of the same script issued different commands")


def assert_deterministic(
    flow: Flow | FlowDefinition,
    script: Script | None = None,
    *,
    max_examples: int = 100,
) -> None:
    """Check that the same outcomes always give byte-identical states and equal commands.

    With ``script``, that script is run twice; without one, hypothesis draws
    ``max_examples`` scripts.

    Raises:
        AssertionError: two runs differ; the message shows the first difference.

    """
    definition = _definition(flow)
    if script is not None:
        _check_deterministic(definition, script)
        return
    from hypothesis import given, settings

    from stepflow.testing._strategies import outcomes

    @settings(max_examples=max_examples, deadline=None)
    @given(outcomes(definition))
    def deterministic(drawn: Script) -> None:
        _check_deterministic(definition, drawn)

    deterministic()


def assert_terminates(
    flow: Flow | FlowDefinition, *, max_loops: int = 3, max_states: int = 100_000
) -> None:
    """Check that from every reachable state, completion or failure is reachable.

    The whole state space is explored (:func:`stepflow.analysis.explore`), with
    loops, polls and unbounded retries cut at ``max_loops`` passes.

    Raises:
        AssertionError: a reachable state can never end (the message shows the
            shortest path to it), or the state space exceeds ``max_states``.

    """
    from stepflow.analysis import explore

    definition = _definition(flow)
    result = explore(definition, max_loops=max_loops, max_states=max_states)
    if not result.complete:  # before dead ends: a cut search cannot tell them
        raise AssertionError(
            f"the state space of {definition.name!r} exceeds {max_states} states: raise "
            "max_states, or lower max_loops"
        )
    if result.dead_ends:
        raise AssertionError(
            f"{len(result.dead_ends)} reachable state(s) of {definition.name!r} can never "
            f"complete or fail; the shortest path to one:\n{result.dead_ends[0].describe()}"
        )
