"""Compile a spec into a :class:`FlowDefinition` plus its handler bindings.

Scopes and events follow go-stepflow character for character:

* a step's scope is ``<parent>/<name>``, with the suffix ``WaitFor``, ``Case``,
  ``Retry`` or ``LoopUntil`` for those items (``do`` and ``.steps`` add none);
* ``case`` and ``loop_until`` run their group in a child scope ``steps``; a
  retry's group *is* its ``<name>Retry`` scope;
* ``wait_event`` (suffix ``WaitEvent``) runs its ``on_timeout`` steps in the
  child scope ``onTimeout``;
* ``parallel`` (suffix ``Parallel``) runs branch ``b`` in the child scope ``b``;
  ``map`` (suffix ``Map``) runs its item group in the child scope ``steps``, which
  a position of item ``i`` carries as ``steps[i]`` (see :mod:`stepflow.core.groups`).
  Step and branch names may therefore not contain ``[`` or ``]``;
* every scope has a ``start:<path>`` and a ``completed:<path>`` event.

So ``named("deploy/v1").case("shouldDeploy", c, steps().do("x", f))`` has the event
``start:deploy/v1/shouldDeployCase/steps/x``.

Names are checked here, where the full path of an offending step is known.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from stepflow.core.definition import (
    Destination,
    FlowDefinition,
    RetryPolicy,
    RetryRule,
    Transition,
    TransitionKind,
    completed_event,
    start_event,
    to_seconds,
)
from stepflow.core.spec import (
    Case,
    Do,
    Group,
    Item,
    LoopUntil,
    Map,
    Parallel,
    Retry,
    Sleep,
    SleepUntil,
    Steps,
    WaitEvent,
    WaitFor,
)
from stepflow.errors import DefinitionError

__all__ = ["HandlerKey", "compile_spec", "scope_name"]

#: ``(command kind, step path)``: how a command finds the handler it calls.
HandlerKey = tuple[str, str]

_SUFFIX: Mapping[type, str] = MappingProxyType(
    {
        Do: "",
        Group: "",
        Sleep: "",
        SleepUntil: "",
        WaitFor: "WaitFor",
        WaitEvent: "WaitEvent",
        Case: "Case",
        Retry: "Retry",
        LoopUntil: "LoopUntil",
        Parallel: "Parallel",
        Map: "Map",
    }
)
_ITEMS = (Do, WaitFor, WaitEvent, Sleep, SleepUntil, Case, Retry, LoopUntil, Group, Parallel, Map)
# Characters a step or branch name may not hold: ':' and '/' build event strings,
# '[' and ']' mark a map item's index in a position.
_RESERVED = (":", "/", "[", "]")
_STATIC: TransitionKind = "static"
_RETRY = "retry"


def scope_name(item: Item) -> str:
    """Return the scope name go-stepflow gives ``item`` (``"shouldDeployCase"``)."""
    return item.name + _SUFFIX[type(item)]


def _check_root_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise DefinitionError(
            f"flow name must be a non-empty str, got {name!r}; "
            'name the flow with named("my-flow/v1")',
            path=str(name),
        )
    if ":" in name:
        raise DefinitionError(
            f"flow name {name!r} contains ':', which separates an event from its scope; "
            "use letters, digits, '-', '_', '.' and '/'",
            path=name,
        )
    if name.startswith("/") or name.endswith("/") or "//" in name:
        raise DefinitionError(
            f"flow name {name!r} has an empty '/'-separated segment; write it like \"deploy/v1\"",
            path=name,
        )
    return name


def _check_name(name: object, what: str, parent: str) -> str:
    path = f"{parent}/{name}"
    if not isinstance(name, str) or not name:
        raise DefinitionError(
            f"{what} of {parent!r} has name {name!r}; every step needs a non-empty str name",
            path=path,
        )
    for bad in _RESERVED:
        if bad in name:
            raise DefinitionError(
                f"{what} name {name!r} in {parent!r} contains {bad!r}, which stepflow uses in "
                "event strings; rename it (for example with '-' or '_')",
                path=path,
            )
    return name


def _check_count(value: object, what: str, path: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DefinitionError(
            f"{what} of {path!r} must be an int >= {minimum}, got {value!r}", path=path
        )


def _check_group(item: Parallel | Map, path: str) -> None:
    _check_count(item.max_failures, "max_failures", path, 0)
    if isinstance(item, Map):
        if item.max_concurrency is not None:
            _check_count(item.max_concurrency, "max_concurrency", path, 1)
        return
    if not item.branches:
        raise DefinitionError(
            f"parallel {path!r} has no branches; pass a mapping of branch name to "
            "stepflow.steps() with at least one entry",
            path=path,
        )
    for branch, body in item.branches:
        _check_name(branch, "a branch", path)
        if not isinstance(body, Steps):
            raise DefinitionError(
                f"branch {branch!r} of {path!r} is {body!r:.80}, not a spec; "
                "pass stepflow.steps()...",
                path=f"{path}/{branch}",
            )


def _check_item(item: object, parent: str, index: int) -> Item:
    if not isinstance(item, _ITEMS):
        raise DefinitionError(
            f"step #{index} of {parent!r} is {item!r}, not a step; "
            "build steps with the methods of stepflow.steps()",
            path=parent,
        )
    _check_name(item.name, f"step #{index}", parent)
    path = f"{parent}/{scope_name(item)}"
    if isinstance(item, (Parallel, Map)):
        _check_group(item, path)
    for attr in ("fn", "cond", "on_error", "items", "when"):
        if not hasattr(item, attr):
            continue
        fn = getattr(item, attr)
        if fn is None and isinstance(item, Retry):
            continue
        if not callable(fn):
            raise DefinitionError(
                f"the {attr} of step {path!r} is {fn!r}, which is not callable; "
                "pass a function (plain or async def)",
                path=path,
            )
    if isinstance(item, Retry):
        if item.on_error is None and item.policy is None:
            raise DefinitionError(
                f"retry {path!r} has neither a RetryPolicy nor an on_error handler; "
                "pass one of them (or both: a policy, then on_error=)",
                path=path,
            )
        if item.policy is not None and not isinstance(item.policy, RetryPolicy):
            raise DefinitionError(
                f"the policy of retry {path!r} is {item.policy!r}, not a RetryPolicy", path=path
            )
    if isinstance(item, WaitEvent) and item.on_timeout is not None:
        if not isinstance(item.on_timeout, Steps):
            raise DefinitionError(
                f"the on_timeout of {path!r} is {item.on_timeout!r:.80}, not a spec; "
                "pass stepflow.steps()...",
                path=path,
            )
        if item.timeout is None:
            raise DefinitionError(
                f"wait_event {path!r} has on_timeout steps but no timeout=; say after how "
                "long they run (seconds or a timedelta)",
                path=path,
            )
    body = getattr(item, "body", None)
    if body is not None and not isinstance(body, Steps):
        raise DefinitionError(
            f"the steps of {path!r} are {body!r}, not a spec; pass stepflow.steps()...",
            path=path,
        )
    return item


class _Compiler:
    def __init__(self) -> None:
        self.transitions: list[Transition] = []
        self.handlers: dict[HandlerKey, Callable[..., Any]] = {}
        self.rules: list[RetryRule] = []

    def static(self, source: str, destination: str) -> None:
        self.transitions.append(
            Transition(source, _STATIC, None, (Destination(destination, _STATIC),))
        )

    def handler(
        self,
        kind: TransitionKind,
        source: str,
        step: str,
        destinations: tuple[Destination, ...],
        retries: tuple[str, ...],
        fn: Callable[..., Any] | None,
        delay: float | None = None,
        timeout: float | None = None,
    ) -> None:
        # A timer cannot fail, so only handlers list their retries as destinations.
        retry_dests = tuple(
            Destination(start_event(r), _RETRY) for r in (retries if fn is not None else ())
        )
        self.transitions.append(
            Transition(source, kind, step, destinations + retry_dests, retries, delay, timeout)
        )
        if fn is not None:
            self.handlers[(kind, step)] = fn

    def steps(self, scope: str, spec: Steps, retries: tuple[str, ...]) -> None:
        seen: dict[str, int] = {}
        last = start_event(scope)
        for index, raw in enumerate(spec.items):
            item = _check_item(raw, scope, index)
            name = scope_name(item)
            child = f"{scope}/{name}"
            if name in seen:
                raise DefinitionError(
                    f"two steps of {scope!r} have the scope name {name!r} "
                    f"(#{seen[name]} and #{index}); names must be unique in a scope, "
                    "after the WaitFor/Case/Retry/LoopUntil suffixes",
                    path=child,
                )
            seen[name] = index
            self.static(last, start_event(child))
            self.item(child, item, retries)
            last = completed_event(child)
        self.static(last, completed_event(scope))

    def item(self, scope: str, item: Item, retries: tuple[str, ...]) -> None:
        start, done = start_event(scope), completed_event(scope)
        if isinstance(item, Do):
            limit = None
            if item.timeout is not None:
                limit = to_seconds(item.timeout, f"the timeout= of {scope!r}", scope)
            returned = (Destination(done, "handler returned"),)
            self.handler("do", start, scope, returned, retries, item.fn, None, limit)
        elif isinstance(item, WaitFor):
            every = to_seconds(item.every, f"the every= of {scope!r}", scope)
            timeout = (
                None
                if item.timeout is None
                else to_seconds(item.timeout, f"the timeout= of {scope!r}", scope)
            )
            self.handler(
                "wait_for",
                start,
                scope,
                (
                    Destination(done, "WaitFor condition is met"),
                    Destination(start, "WaitFor condition is not met, poll again"),
                ),
                retries,
                item.cond,
                every,
                timeout,
            )
        elif isinstance(item, WaitEvent):
            self.wait_event(scope, item, retries)
        elif isinstance(item, Sleep):
            duration = to_seconds(
                item.duration, f"the duration of sleep {scope!r}", scope, allow_zero=True
            )
            self.handler(
                "sleep", start, scope, (Destination(done, "timer fired"),), retries, None, duration
            )
        elif isinstance(item, SleepUntil):
            fired = (Destination(done, "timer fired"),)
            self.handler("sleep_until", start, scope, fired, retries, item.when)
        elif isinstance(item, Case):
            group = f"{scope}/steps"
            self.handler(
                "case",
                start,
                scope,
                (
                    Destination(start_event(group), "Case condition is met"),
                    Destination(done, "Case condition is not met"),
                ),
                retries,
                item.cond,
            )
            self.static(completed_event(group), done)
            self.steps(group, item.body, retries)
        elif isinstance(item, LoopUntil):
            group = f"{scope}/steps"
            self.static(start, start_event(group))
            self.handler(
                "loop_until",
                completed_event(group),
                scope,
                (
                    Destination(done, "LoopUntil condition is met"),
                    Destination(start_event(group), "LoopUntil condition is not met, loop again"),
                ),
                retries,
                item.cond,
            )
            self.steps(group, item.body, retries)
        elif isinstance(item, Retry):
            if item.on_error is not None:
                self.handlers[("on_error", scope)] = item.on_error
            before = len(self.transitions)
            self.steps(scope, item.body, (scope, *retries))
            inside = any(scope in t.retry_scopes for t in self.transitions[before:])
            if inside and (item.policy is not None or item.on_error is None):
                self.rules.append(RetryRule(scope, item.policy, item.on_error is not None))
        elif isinstance(item, (Parallel, Map)):
            self.group(scope, item, retries)
        else:
            self.steps(scope, item.body, retries)

    def wait_event(self, scope: str, item: WaitEvent, retries: tuple[str, ...]) -> None:
        """Compile a wait for an event: it leads on when one comes, or after its timeout.

        ``destinations[1]`` is the start of the ``on_timeout`` steps, if any; a
        wait without them fails on timeout, so it lists its retries instead.
        """
        start, done = start_event(scope), completed_event(scope)
        timeout = (
            None
            if item.timeout is None
            else to_seconds(item.timeout, f"the timeout= of {scope!r}", scope)
        )
        dests: tuple[Destination, ...] = (Destination(done, f"event {item.name!r} received"),)
        if item.on_timeout is not None:
            group = f"{scope}/onTimeout"
            dests += (Destination(start_event(group), "timed out"),)
        # Only a wait that can fail (by timing out) lists its retries.
        failing = retries if item.on_timeout is None and timeout is not None else ()
        retry_dests = tuple(Destination(start_event(r), _RETRY) for r in failing)
        self.transitions.append(
            Transition(
                start, "wait_event", scope, dests + retry_dests, retries,
                timeout=timeout, awaits=item.name,
            )
        )  # fmt: skip
        if item.on_timeout is not None:
            self.static(completed_event(group), done)
            self.steps(group, item.on_timeout, retries)

    def group(self, scope: str, item: Parallel | Map, retries: tuple[str, ...]) -> None:
        """Compile a fork: its start, each branch (or the item group), and their joins.

        Inside a group, failures go to the group (retries=()), which fails as a
        whole once nothing is in flight in it; only then do enclosing retries see it.
        """
        start, done = start_event(scope), completed_event(scope)
        retry_dests = tuple(Destination(start_event(r), _RETRY) for r in retries)
        if isinstance(item, Parallel):
            kind: TransitionKind = "parallel"
            bodies = [(f"{scope}/{branch}", body) for branch, body in item.branches]
            dests = tuple(Destination(start_event(b), "parallel branch") for b, _ in bodies)
            limit = None
            reason = "all branches completed"
        else:
            kind = "map"
            bodies = [(f"{scope}/steps", item.body)]
            dests = (
                Destination(start_event(bodies[0][0]), "map item"),
                Destination(done, "no items"),
            )
            limit = item.max_concurrency
            reason = "all items completed"
            self.handlers[(kind, scope)] = item.items
        self.transitions.append(
            Transition(
                start, kind, scope, dests + retry_dests, retries,
                max_concurrency=limit, max_failures=item.max_failures,
            )
        )  # fmt: skip
        for body_scope, body in bodies:
            self.steps(body_scope, body, ())
            self.transitions.append(
                Transition(completed_event(body_scope), "join", scope, (Destination(done, reason),))
            )


def compile_spec(
    spec: Steps,
) -> tuple[FlowDefinition, Mapping[HandlerKey, Callable[..., Any]]]:
    """Compile ``spec`` into its definition and the handlers bound to its steps.

    Args:
        spec: The root spec, from :func:`stepflow.named` or :func:`stepflow.steps`.

    Returns:
        The :class:`FlowDefinition` (pure data) and a read-only mapping from
        ``(command kind, step path)`` to the handler that serves it.

    Raises:
        DefinitionError: for an invalid or duplicate name, a non-callable
            handler, or a spec that is not a :class:`Steps`, with the path.

    """
    if not isinstance(spec, Steps):
        raise DefinitionError(
            f"expected a flow spec from stepflow.named(...) or stepflow.steps(), got {spec!r}",
            path="",
        )
    name = _check_root_name(spec.name)
    compiler = _Compiler()
    compiler.steps(name, spec, ())
    definition = FlowDefinition(name, tuple(compiler.transitions), tuple(compiler.rules))
    return definition, MappingProxyType(compiler.handlers)
