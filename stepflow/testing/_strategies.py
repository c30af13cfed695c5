"""Hypothesis strategies: random flow trees and random outcome scripts.

Every construct stepflow supports appears in :func:`items`; the project's own
property tests draw from these very strategies, so a new construct added here
is checked for resumability, determinism, codec round trips and totality at
once, in stepflow's suite and in users' suites alike.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from stepflow.core.choice import case_key
from stepflow.core.compile import scope_name
from stepflow.core.definition import FlowDefinition
from stepflow.core.policies import RetryPolicy
from stepflow.core.spec import (
    Call,
    Case,
    Catch,
    Do,
    Finally,
    Group,
    Item,
    LoopUntil,
    Map,
    Parallel,
    Retry,
    Saga,
    Sleep,
    SleepUntil,
    Steps,
    Switch,
    WaitEvent,
    WaitFor,
)
from stepflow.flow import new
from stepflow.testing._scripts import (
    HandlerKey,
    Outcome,
    Raises,
    Returns,
    ReturnsWrongKind,
    TimesOut,
    handler_keys,
)

__all__ = [
    "bodies",
    "catch_errors",
    "definitions",
    "durations",
    "flows",
    "flows_and_scripts",
    "items",
    "json_values",
    "outcomes",
    "outcomes_for",
    "policies",
    "route_values",
    "sleep_until_times",
    "specs",
    "step_names",
]


def _unused(*_: Any) -> Any:
    raise AssertionError("strategy flows are driven by scripts, not by their handlers")


step_names = st.text(alphabet="abcdxyz-_.0", min_size=1, max_size=4)
# Few event names, so that several waits (and mailboxes) share them.
_event_names = st.sampled_from(["go", "ok", "x"])
_root_names = st.sampled_from(["f", "steps", "deploy/v1", "a.b/c-d_e/v2"])

#: Durations in seconds: small, so timeouts and backoffs interleave with the
#: one second every scripted handler takes.
durations = st.sampled_from([0.5, 1, 2.5, 5])

#: Retry policies of every shape: bounded or not, with and without backoff and
#: jitter, with non-retryable errors.
policies = st.builds(
    RetryPolicy,
    max_attempts=st.none() | st.integers(1, 4),
    initial_interval=st.sampled_from([0, 0.5, 2]),
    backoff_coefficient=st.sampled_from([1, 2, 3.5]),
    max_interval=st.none() | st.just(4.0),
    jitter=st.sampled_from([0, 0.5, 1]),
    non_retryable=st.sampled_from(
        [(), ("RuntimeError",), ("stepflow.errors.HandlerResultError", "KeyError")]
    ),
)


#: The values switches are drawn with, as case values and route results: every
#: JSON scalar type, with ``True``/``1``/``1.0`` to try type-aware matching.
route_values = st.sampled_from(["a", "b", "1", 1, 1.0, 2.5, True, False, None])

#: A catch's ``errors``: every error, the scripted ones, wrong results, or none.
catch_errors = st.sampled_from(
    [None, RuntimeError, "RuntimeError", ("HandlerResultError", "KeyError"), "KeyError"]
)


def items(depth: int, *, fork: bool = True, calls: bool = True) -> st.SearchStrategy[Item]:
    """One step of any kind; groups nest at most ``depth`` more levels.

    With ``fork=False``, no ``parallel`` or ``map`` group: runs of one position.
    With ``calls=False``, no ``call`` step (child run).
    """
    # (A composite keeps the strategy's repr short: the nested one_of's repr runs
    # to tens of kB, which hypothesis warns about whenever it reports an example.)
    return _items(depth, fork, calls)


@st.composite
def _items(draw: st.DrawFn, depth: int, fork: bool, calls: bool) -> Item:
    return draw(_item_kinds(depth, fork, calls))


#: The child flows ``call`` steps are drawn with (by name: scripts answer them).
_child_flows = st.sampled_from(["child/v1", "other"])


def _item_kinds(depth: int, fork: bool, calls: bool) -> st.SearchStrategy[Item]:
    leaves: list[st.SearchStrategy[Item]] = [
        st.builds(Do, step_names, st.just(_unused), st.none() | durations),
        st.builds(
            WaitFor,
            step_names,
            st.just(_unused),
            durations,
            st.none() | durations.map(lambda d: d * 2),
        ),
        st.builds(Sleep, step_names, st.just(0) | durations),
        st.builds(WaitEvent, _event_names, st.none() | durations),
        st.builds(SleepUntil, step_names, st.just(_unused)),
    ]
    if calls:
        leaves.append(st.builds(Call, step_names, _child_flows))
    if depth <= 0:
        return st.one_of(leaves)
    body = bodies(depth - 1, fork=fork, calls=calls)
    leaves.append(_waits_with_timeout_steps(depth, fork, calls))
    on_error = st.just(_unused)
    groups: list[st.SearchStrategy[Item]] = [
        st.builds(Case, step_names, st.just(_unused), body),
        st.builds(Retry, step_names, on_error, body),
        st.builds(Retry, step_names, st.none() | on_error, body, policies),
        st.builds(LoopUntil, step_names, st.just(_unused), body),
        st.builds(Group, step_names, body),
        st.builds(
            Switch,
            step_names,
            st.just(_unused),
            st.lists(
                st.tuples(route_values, body), max_size=3, unique_by=lambda p: case_key(p[0])
            ).map(tuple),
            body,
        )
        | st.builds(
            Switch,
            step_names,
            st.just(_unused),
            st.lists(
                st.tuples(route_values, body),
                min_size=1,
                max_size=3,
                unique_by=lambda p: case_key(p[0]),
            ).map(tuple),
        ),
        # (Its steps begin with a do, which can fail: the handler is always reachable.)
        st.builds(Catch, step_names, body.map(_failing_first), body, catch_errors),
        st.builds(Finally, step_names, body, body),
        # (Its own dos can be undone, and it ends with one that can fail.)
        st.builds(Saga, step_names, body.map(_compensable), st.none() | policies),
        st.builds(
            Parallel,
            step_names,
            st.lists(st.tuples(step_names, body), min_size=1, max_size=3, unique_by=_first).map(
                tuple
            ),
            st.integers(0, 1),
        ),
        st.builds(
            Map,
            step_names,
            st.just(_unused),
            body,
            st.none() | st.integers(1, 3),
            st.integers(0, 1),
        ),
    ]
    if not fork:
        groups = groups[:-2]
    return st.one_of(*leaves, *groups)


@st.composite
def _waits_with_timeout_steps(draw: st.DrawFn, depth: int, fork: bool, calls: bool) -> Item:
    # (A composite for a short repr, as _items.)
    on_timeout = draw(bodies(depth - 1, fork=fork, calls=calls))
    return WaitEvent(draw(_event_names), draw(durations), on_timeout)


def _failing_first(body: Steps) -> Steps:
    return Steps(body.name, (Do("try", _unused), *body.items))


def _compensable(body: Steps) -> Steps:
    undoable = tuple(
        Do(i.name, i.fn, i.timeout, _unused) if isinstance(i, Do) else i for i in body.items
    )
    return Steps(body.name, (Do("book", _unused, None, _unused), *undoable, Do("try", _unused)))


def _first(pair: tuple[str, Any]) -> str:
    return pair[0]


def bodies(
    depth: int, max_size: int = 3, *, fork: bool = True, calls: bool = True
) -> st.SearchStrategy[Steps]:
    """Draw a group's steps, names unique in the scope after go-stepflow's suffixing."""
    return st.builds(
        Steps,
        st.just("steps"),
        st.lists(items(depth, fork=fork, calls=calls), max_size=max_size, unique_by=scope_name).map(
            tuple
        ),
    )


@st.composite
def specs(draw: st.DrawFn, max_depth: int = 3, *, fork: bool = True, calls: bool = True) -> Steps:
    """Draw a root spec: a random flow tree of every construct.

    With ``fork=False``, no ``parallel`` or ``map`` group: runs of one position.
    With ``calls=False``, no ``call`` step (child run).
    """
    name = draw(_root_names)
    drawn = items(max_depth, fork=fork, calls=calls)
    children = draw(st.lists(drawn, max_size=4, unique_by=scope_name))
    return Steps(name, tuple(children))


def definitions(
    max_depth: int = 3, *, fork: bool = True, calls: bool = True
) -> st.SearchStrategy[FlowDefinition]:
    """Compiled random flows: every construct, nested up to ``max_depth``.

    With ``fork=False``, no ``parallel`` or ``map`` group: runs of one position.
    With ``calls=False``, no ``call`` step (child run).
    """
    return specs(max_depth, fork=fork, calls=calls).map(lambda s: new(s).definition)


#: Random flows; the same strategy stepflow's own property tests use.
flows = definitions

#: Times a ``sleep_until``'s ``when`` returns: long past, around the scripted
#: worlds' start (:data:`~stepflow.testing.START`) and a little after.
sleep_until_times = st.sampled_from([0, 999.5, 1000, 1001.5, 1004, 1010.0])


def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=2) | st.dictionaries(st.text("kv", max_size=2), inner)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text("ab", max_size=2),
    _json_containers,
    max_leaves=4,
)


def outcomes_for(kind: str) -> st.SearchStrategy[Outcome]:
    """Outcomes a handler of ``kind`` can have: mostly successes, sometimes failures."""
    if kind == "do" or kind == "compensate" or kind == "call":  # (call: the child's output)
        value: st.SearchStrategy[Outcome] = st.builds(Returns, json_values)
    elif kind == "map":
        value = st.builds(Returns, st.lists(json_values, max_size=3))
    elif kind == "wait_event":
        # An event (with a payload) comes, or the wait times out: nothing raises.
        return st.one_of(st.builds(Returns, json_values), st.just(TimesOut()))
    if kind == "switch":
        value = st.builds(Returns, route_values)
    elif kind == "sleep_until":  # a time past, at hand or ahead of the scripted clock
        value = st.builds(Returns, sleep_until_times)
    else:
        value = st.builds(Returns, st.booleans())
    failing: list[st.SearchStrategy[Outcome]] = [st.builds(Raises, st.text("xyz", max_size=3))]
    if kind != "on_error":
        failing.append(st.just(ReturnsWrongKind()))
    # Mostly successes, so that runs go deep before a failure (if any) ends them.
    # (one_of picks its branches evenly, so the weight is given by a draw.)
    return st.integers(0, 9).flatmap(lambda n: st.one_of(failing) if n == 0 else value)


@st.composite
def outcomes(
    draw: st.DrawFn, definition: FlowDefinition, max_len: int = 4
) -> dict[HandlerKey, tuple[Outcome, ...]]:
    """Draw an outcome script for every handler of ``definition``.

    Each handler gets up to ``max_len`` outcomes (return values, raised errors,
    condition results), then its exit outcome, so every scripted run ends.
    """
    return {
        key: tuple(draw(st.lists(outcomes_for(key[0]), max_size=max_len)))
        for key in handler_keys(definition)
    }


@st.composite
def flows_and_scripts(
    draw: st.DrawFn, max_depth: int = 3, *, calls: bool = True
) -> tuple[FlowDefinition, dict[HandlerKey, tuple[Outcome, ...]]]:
    """Draw a random definition with a random outcome script for it.

    With ``calls=False``, no ``call`` step (child run).
    """
    definition = draw(definitions(max_depth, calls=calls))
    return definition, draw(outcomes(definition))
