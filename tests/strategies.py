"""Hypothesis strategies: random flow trees and random handler outcomes.

Every construct stepflow supports appears here; a new construct extends
:func:`items`, and the property tests in ``test_properties.py`` then check
resumability, determinism, codec round trips and totality for it automatically.

An *outcome script* says what each handler does, in order, each time a new
command for it is issued: return a value, raise, or return a value of the wrong
kind. When a handler's list runs out it takes its *exit* outcome (a ``do``
returns ``None``, conditions end their wait or loop, ``on_error`` declines), so
every scripted run terminates.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import attrs
from hypothesis import strategies as st

import stepflow
from stepflow.core.compile import scope_name
from stepflow.core.spec import Case, Do, Group, Item, LoopUntil, Retry, Sleep, Steps, WaitFor

# -- flow trees ---------------------------------------------------------------


def _unused(*_: Any) -> Any:
    raise AssertionError("strategy flows are driven by scripts, not by their handlers")


step_names = st.text(alphabet="abcdxyz-_.0", min_size=1, max_size=4)
root_names = st.sampled_from(["f", "steps", "deploy/v1", "a.b/c-d_e/v2"])


#: Durations in seconds: small, so timeouts and backoffs interleave with the
#: one second every scripted handler takes.
durations = st.sampled_from([0.5, 1, 2.5, 5])

policies = st.builds(
    stepflow.RetryPolicy,
    max_attempts=st.none() | st.integers(1, 4),
    initial_interval=st.sampled_from([0, 0.5, 2]),
    backoff_coefficient=st.sampled_from([1, 2, 3.5]),
    max_interval=st.none() | st.just(4.0),
    jitter=st.sampled_from([0, 0.5, 1]),
    non_retryable=st.sampled_from(
        [(), ("RuntimeError",), ("stepflow.errors.HandlerResultError", "KeyError")]
    ),
)


def items(depth: int) -> st.SearchStrategy[Item]:
    """One step of any kind; groups nest at most ``depth`` more levels."""
    leaves: list[st.SearchStrategy[Item]] = [
        st.builds(Do, step_names, st.just(_unused)),
        st.builds(
            WaitFor,
            step_names,
            st.just(_unused),
            durations,
            st.none() | durations.map(lambda d: d * 2),
        ),
        st.builds(Sleep, step_names, st.just(0) | durations),
    ]
    if depth <= 0:
        return st.one_of(leaves)
    body = bodies(depth - 1)
    on_error = st.just(_unused)
    groups: list[st.SearchStrategy[Item]] = [
        st.builds(Case, step_names, st.just(_unused), body),
        st.builds(Retry, step_names, on_error, body),
        st.builds(Retry, step_names, st.none() | on_error, body, policies),
        st.builds(LoopUntil, step_names, st.just(_unused), body),
        st.builds(Group, step_names, body),
    ]
    return st.one_of(*leaves, *groups)


def bodies(depth: int, max_size: int = 3) -> st.SearchStrategy[Steps]:
    """A group's steps, names unique in the scope after go-stepflow's suffixing."""
    return st.builds(
        Steps,
        st.just("steps"),
        st.lists(items(depth), max_size=max_size, unique_by=scope_name).map(tuple),
    )


@st.composite
def specs(draw: st.DrawFn, max_depth: int = 3) -> Steps:
    """A root spec: a random flow tree of every construct."""
    name = draw(root_names)
    children = draw(st.lists(items(max_depth), max_size=4, unique_by=scope_name))
    return Steps(name, tuple(children))


def definitions(max_depth: int = 3) -> st.SearchStrategy[stepflow.FlowDefinition]:
    """Compiled random flows."""
    return specs(max_depth).map(lambda s: stepflow.new(s).definition)


# -- outcome scripts ----------------------------------------------------------

HandlerKey = tuple[str, str]


@attrs.frozen
class Returns:
    """The handler returns ``value``."""

    value: Any


@attrs.frozen
class Raises:
    """The handler raises ``RuntimeError(message)``."""

    message: str


@attrs.frozen
class ReturnsWrongKind:
    """The handler returns a value of the wrong kind (not JSON / not a bool)."""


Outcome = Returns | Raises | ReturnsWrongKind

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text("ab", max_size=2),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text("kv", max_size=2), inner),
    max_leaves=4,
)


def outcomes_for(kind: str) -> st.SearchStrategy[Outcome]:
    """Outcomes a handler of ``kind`` can have."""
    if kind == "do":
        value: st.SearchStrategy[Outcome] = st.builds(Returns, json_values)
    else:
        value = st.builds(Returns, st.booleans())
    failing: list[st.SearchStrategy[Outcome]] = [st.builds(Raises, st.text("xyz", max_size=3))]
    if kind != "on_error":
        failing.append(st.just(ReturnsWrongKind()))
    # Mostly successes, so that runs go deep before a failure (if any) ends them.
    # (one_of picks its branches evenly, so the weight is given by a draw.)
    return st.integers(0, 9).flatmap(lambda n: st.one_of(failing) if n == 0 else value)


#: What a handler does once its scripted outcomes run out: end waits and loops,
#: skip cases, decline retries. This is what bounds every scripted run.
EXIT_OUTCOMES = {
    "do": Returns(None),
    "wait_for": Returns(True),
    "case": Returns(False),
    "loop_until": Returns(True),
    "on_error": Returns(False),
}


def handler_keys(definition: stepflow.FlowDefinition) -> list[HandlerKey]:
    """Every ``(kind, step)`` a handler of ``definition`` serves (timers have none)."""
    keys: list[HandlerKey] = [
        (t.kind, t.step or "") for t in definition.handler_transitions() if t.kind != "sleep"
    ]
    keys += [
        ("on_error", scope)
        for scope in definition.retry_scopes()
        if definition.retry_rule(scope).on_error
    ]
    return keys


@st.composite
def scripts(
    draw: st.DrawFn, definition: stepflow.FlowDefinition, max_len: int = 4
) -> dict[HandlerKey, tuple[Outcome, ...]]:
    """An outcome script for every handler of ``definition``."""
    return {
        key: tuple(draw(st.lists(outcomes_for(key[0]), max_size=max_len)))
        for key in handler_keys(definition)
    }


@st.composite
def flows_and_scripts(
    draw: st.DrawFn, max_depth: int = 3
) -> tuple[stepflow.FlowDefinition, dict[HandlerKey, tuple[Outcome, ...]]]:
    """A random definition with a random outcome script for it."""
    definition = draw(definitions(max_depth))
    return definition, draw(scripts(definition))


class WrongKind:
    """A value that is neither JSON nor a bool."""

    def __repr__(self) -> str:
        return "WrongKind()"


class World:
    """The simulated outside world: answers commands from an outcome script.

    An answer is decided once per command id and remembered, as an idempotent
    external system would: a command re-run after a crash gets the same outcome,
    at the same time. Time is a :class:`stepflow.FakeClock`: every handler takes
    one second, and the world waits for a state's ``wake_at`` before answering.
    """

    def __init__(self, script: dict[HandlerKey, tuple[Outcome, ...]]) -> None:
        self._pending = {key: list(outs) for key, outs in script.items()}
        self._answers: dict[int, stepflow.Effect] = {}
        self.clock = stepflow.FakeClock(START)
        self.executed: list[stepflow.Command] = []
        self.calls: defaultdict[HandlerKey, int] = defaultdict(int)

    def _decide(self, key: HandlerKey) -> Outcome:
        self.calls[key] += 1
        queue = self._pending.get(key, [])
        return queue.pop(0) if queue else EXIT_OUTCOMES[key[0]]

    def execute(self, command: stepflow.Command, wake_at: float | None = None) -> stepflow.Effect:
        """Answer ``command`` (once per id) with an effect, as the interpreter would."""
        self.executed.append(command)
        if command.id not in self._answers:
            self._answers[command.id] = self._answer(command, wake_at)
        return self._answers[command.id]

    def _answer(self, command: stepflow.Command, wake_at: float | None) -> stepflow.Effect:
        if wake_at is not None and wake_at > self.clock.now():
            self.clock.set(wake_at)
        if isinstance(command, stepflow.Wake):
            self.clock.set(max(command.at, self.clock.now()))
            return stepflow.TimerFired(command.id, self.clock.now())
        outcome = self._decide((command.kind, command.step))
        at = self.clock.advance(1)
        if isinstance(outcome, Returns):
            return stepflow.HandlerReturned(command.id, outcome.value, at)
        if isinstance(outcome, Raises):
            error = stepflow.ErrorRecord("RuntimeError", outcome.message, command.step)
            return stepflow.HandlerRaised(command.id, error, None, at)
        return stepflow.HandlerReturned(command.id, WrongKind(), at)

    def handler(self, kind: str, step: str) -> Callable[..., Any]:
        """A real handler for ``(kind, step)`` that plays the script (no crash memo)."""

        def play(ctx: Any, *_: Any) -> Any:
            outcome = self._decide((kind, step))
            self.clock.advance(1)
            if isinstance(outcome, Returns):
                return outcome.value
            if isinstance(outcome, Raises):
                raise RuntimeError(outcome.message)
            return WrongKind()

        return play


#: When scripted worlds start.
START = 1_000.0


def run(
    definition: stepflow.FlowDefinition, world: World
) -> tuple[stepflow.State, list[stepflow.State], list[stepflow.Command]]:
    """Drive a run to its end through ``advance``; return final state, all states, commands."""
    state, commands = stepflow.advance(definition, None, now=world.clock.now())
    states = [state]
    issued = list(commands)
    while commands:
        effect = world.execute(commands[0], state.wake_at)
        state, commands = stepflow.advance(definition, state, (effect,))
        states.append(state)
        issued.extend(commands)
    return state, states, issued
