"""Compile a spec into a :class:`FlowDefinition` plus its handler bindings.

Scopes and events follow go-stepflow character for character:

* a step's scope is ``<parent>/<name>``, with the suffix ``WaitFor``, ``Case``,
  ``Retry`` or ``LoopUntil`` for those items (``do`` and ``.steps`` add none);
* ``case`` and ``loop_until`` run their group in a child scope ``steps``; a
  retry's group *is* its ``<name>Retry`` scope;
* ``wait_event`` (suffix ``WaitEvent``) runs its ``on_timeout`` steps in the
  child scope ``onTimeout``;
* ``switch`` (suffix ``Switch``) runs case ``i`` in the child scope ``case<i>``
  and its default in ``default`` (see :mod:`stepflow.core.choice`); ``catch``
  (suffix ``Catch``) runs its steps in ``steps`` and its handler in ``handler``
  (see :mod:`stepflow.core.scopes`);
* ``finally_`` (suffix ``Finally``) runs its steps in ``steps`` and its cleanup
  in ``cleanup``; ``saga`` (suffix ``Saga``) runs its steps in ``steps`` and
  waits at ``start:<saga>/compensate`` while it compensates (see
  :mod:`stepflow.core.cleanup`);
* ``call`` (suffix ``Call``) starts a child run and rests until it ends (see
  :mod:`stepflow.core.children`);
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

from stepflow.core.choice import case_keys
from stepflow.core.definition import (
    Destination,
    FlowDefinition,
    Transition,
    TransitionKind,
    completed_event,
    start_event,
)
from stepflow.core.policies import CatchRule, RetryPolicy, RetryRule, to_seconds
from stepflow.core.scopes import error_names
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
        Switch: "Switch",
        Catch: "Catch",
        Finally: "Finally",
        Saga: "Saga",
        Call: "Call",
    }
)
_ITEMS = (
    Do,
    WaitFor,
    WaitEvent,
    Sleep,
    Case,
    Retry,
    LoopUntil,
    Group,
    Parallel,
    Map,
    Switch,
    Catch,
    SleepUntil,
    Finally,
    Saga,
    Call,
)
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
    if isinstance(item, Switch):
        _check_switch(item, path)
    for attr in ("fn", "cond", "on_error", "items", "route", "when", "compensate"):
        if not hasattr(item, attr):
            continue
        fn = getattr(item, attr)
        if fn is None and isinstance(item, (Retry, Do)):
            continue
        if not callable(fn):
            raise DefinitionError(
                f"the {attr} of step {path!r} is {fn!r}, which is not callable; "
                "pass a function (plain or async def)",
                path=path,
            )
    if isinstance(item, Call):
        _check_call(item, path)
    if isinstance(item, Saga) and not isinstance(item.policy, (RetryPolicy, type(None))):
        raise DefinitionError(
            f"the policy of saga {path!r} is {item.policy!r}, not a RetryPolicy", path=path
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
    for attr in ("body", "handler", "cleanup"):
        body = getattr(item, attr, None)
        required = isinstance(item, (Catch, Finally, Saga)) and hasattr(item, attr)
        if (body is not None or required) and not isinstance(body, Steps):
            what = attr if attr != "body" else "steps"
            raise DefinitionError(
                f"the {what} of {path!r} are {body!r:.80}, not a spec; pass stepflow.steps()...",
                path=path,
            )
    return item


def _check_call(item: Call, path: str) -> None:
    flow = item.flow
    if isinstance(flow, str):
        try:
            _check_root_name(flow)
        except DefinitionError as exc:
            raise DefinitionError(f"call {path!r} names no valid flow: {exc}", path=path) from None
    elif not isinstance(getattr(flow, "definition", None), FlowDefinition):
        raise DefinitionError(
            f"call {path!r} is given {flow!r:.80} as its flow; pass a stepflow.Flow "
            "(from stepflow.new) or the name of a flow the worker serves",
            path=path,
        )
    for attr in ("input", "id"):
        fn = getattr(item, attr)
        if fn is not None and not callable(fn):
            raise DefinitionError(
                f"the {attr} of call {path!r} is {fn!r:.80}, which is not callable; "
                f"pass a function {attr}(ctx) (or nothing)",
                path=path,
            )


def _check_switch(item: Switch, path: str) -> None:
    if not item.cases and item.default is None:
        raise DefinitionError(
            f"switch {path!r} has no cases and no default; pass a mapping of value to "
            "stepflow.steps() with at least one entry, or a default",
            path=path,
        )
    bodies = [(f"case #{i}", body) for i, (_, body) in enumerate(item.cases)]
    if item.default is not None:
        bodies.append(("the default", item.default))
    for what, body in bodies:
        if not isinstance(body, Steps):
            raise DefinitionError(
                f"{what} of switch {path!r} is {body!r:.80}, not a spec; pass stepflow.steps()...",
                path=path,
            )


class _Compiler:
    def __init__(self) -> None:
        self.transitions: list[Transition] = []
        self.handlers: dict[HandlerKey, Callable[..., Any]] = {}
        self.rules: list[RetryRule] = []
        self.catches: list[CatchRule] = []
        # Every catch, finally and saga scope: the failure scopes a step is in
        # are retries or these.
        self.catch_scopes: set[str] = set()
        self.finally_scopes: set[str] = set()
        self.saga_scopes: set[str] = set()
        # How many sagas enclose the items being compiled (across groups too).
        self.sagas = 0

    def failure_dests(self, scopes: tuple[str, ...]) -> tuple[Destination, ...]:
        """Where a failure may go: each enclosing scope's handling start, innermost first."""
        return tuple(self.failure_dest(s) for s in scopes)

    def failure_dest(self, scope: str) -> Destination:
        if scope in self.catch_scopes:
            return Destination(start_event(scope + "/handler"), "catch")
        if scope in self.finally_scopes:
            return Destination(start_event(scope + "/cleanup"), "finally")
        if scope in self.saga_scopes:
            return Destination(start_event(scope + "/compensate"), "saga")
        return Destination(start_event(scope), _RETRY)

    def split(
        self, scopes: tuple[str, ...]
    ) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """Return the retry, the catch and the cleanup (finally, saga) scopes, order kept."""
        catches, cleanups = self.catch_scopes, self.finally_scopes | self.saga_scopes
        if not catches and not cleanups:
            return scopes, (), ()
        return (
            tuple(s for s in scopes if s not in catches and s not in cleanups),
            tuple(s for s in scopes if s in catches),
            tuple(s for s in scopes if s in cleanups),
        )

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
        scopes: tuple[str, ...],
        fn: Callable[..., Any] | None,
        delay: float | None = None,
        timeout: float | None = None,
        cases: tuple[str, ...] = (),
        compensate: bool = False,
        calls: str | None = None,
    ) -> None:
        # A timer cannot fail, so only handlers list their failure scopes as destinations.
        failure_dests = self.failure_dests(scopes) if fn is not None else ()
        retries, catches, cleanups = self.split(scopes)
        self.transitions.append(
            Transition(
                source, kind, step, destinations + failure_dests, retries, delay, timeout,
                catch_scopes=catches, cases=cases, cleanup_scopes=cleanups, compensate=compensate,
                calls=calls,
            )
        )  # fmt: skip
        if fn is not None:
            self.handlers[(kind, step)] = fn

    def steps(self, scope: str, spec: Steps, scopes: tuple[str, ...]) -> None:
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
                    "after the WaitFor/Case/Retry/LoopUntil/Switch/Catch suffixes",
                    path=child,
                )
            seen[name] = index
            self.static(last, start_event(child))
            self.item(child, item, scopes)
            last = completed_event(child)
        self.static(last, completed_event(scope))

    def item(self, scope: str, item: Item, scopes: tuple[str, ...]) -> None:
        start, done = start_event(scope), completed_event(scope)
        if isinstance(item, Do):
            limit = None
            if item.timeout is not None:
                limit = to_seconds(item.timeout, f"the timeout= of {scope!r}", scope)
            returned = (Destination(done, "handler returned"),)
            undo = item.compensate is not None
            self.handler(
                "do", start, scope, returned, scopes, item.fn, None, limit, compensate=undo
            )
            if item.compensate is not None:
                if not self.sagas:
                    raise DefinitionError(
                        f"step {scope!r} has compensate= but no saga encloses it, so nothing "
                        "would ever call it; put it inside .saga(name, steps()...)",
                        path=scope,
                    )
                self.handlers[("compensate", scope)] = item.compensate
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
                scopes,
                item.cond,
                every,
                timeout,
            )
        elif isinstance(item, WaitEvent):
            self.wait_event(scope, item, scopes)
        elif isinstance(item, Sleep):
            duration = to_seconds(
                item.duration, f"the duration of sleep {scope!r}", scope, allow_zero=True
            )
            self.handler(
                "sleep", start, scope, (Destination(done, "timer fired"),), scopes, None, duration
            )
        elif isinstance(item, SleepUntil):
            fired = (Destination(done, "timer fired"),)
            self.handler("sleep_until", start, scope, fired, scopes, item.when)
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
                scopes,
                item.cond,
            )
            self.static(completed_event(group), done)
            self.steps(group, item.body, scopes)
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
                scopes,
                item.cond,
            )
            self.steps(group, item.body, scopes)
        elif isinstance(item, Retry):
            if item.on_error is not None:
                self.handlers[("on_error", scope)] = item.on_error
            before = len(self.transitions)
            self.steps(scope, item.body, (scope, *scopes))
            inside = any(scope in t.retry_scopes for t in self.transitions[before:])
            if inside and (item.policy is not None or item.on_error is None):
                self.rules.append(RetryRule(scope, item.policy, item.on_error is not None))
        elif isinstance(item, (Parallel, Map)):
            self.group(scope, item, scopes)
        elif isinstance(item, Switch):
            self.switch(scope, item, scopes)
        elif isinstance(item, Catch):
            self.catch(scope, item, scopes)
        elif isinstance(item, Finally):
            self.finally_(scope, item, scopes)
        elif isinstance(item, Saga):
            self.saga(scope, item, scopes)
        elif isinstance(item, Call):
            ended = (Destination(done, "child run completed"),)
            self.handler("call", start, scope, ended, scopes, item, calls=item.flow_name)
        else:
            self.steps(scope, item.body, scopes)

    def wait_event(self, scope: str, item: WaitEvent, scopes: tuple[str, ...]) -> None:
        """Compile a wait for an event: it leads on when one comes, or after its timeout.

        ``destinations[1]`` is the start of the ``on_timeout`` steps, if any; a
        wait without them fails on timeout, so it lists its failure scopes instead.
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
        # Only a wait that can fail (by timing out) lists where its failure goes.
        failing = item.on_timeout is None and timeout is not None
        failure_dests = self.failure_dests(scopes) if failing else ()
        retries, catches, cleanups = self.split(scopes)
        self.transitions.append(
            Transition(
                start, "wait_event", scope, dests + failure_dests, retries,
                timeout=timeout, catch_scopes=catches, awaits=item.name, cleanup_scopes=cleanups,
            )
        )  # fmt: skip
        if item.on_timeout is not None:
            self.static(completed_event(group), done)
            self.steps(group, item.on_timeout, scopes)

    def switch(self, scope: str, item: Switch, scopes: tuple[str, ...]) -> None:
        """Compile a switch: one handler transition to each case, then the default or the end."""
        start, done = start_event(scope), completed_event(scope)
        keys = case_keys(scope, tuple(value for value, _ in item.cases))
        bodies = [(f"{scope}/case{i}", body) for i, (_, body) in enumerate(item.cases)]
        dests = [
            Destination(start_event(b), f"route returned {key}")
            for (b, _), key in zip(bodies, keys, strict=True)
        ]
        if item.default is None:
            dests.append(Destination(done, "no case matched"))
        else:
            bodies.append((f"{scope}/default", item.default))
            dests.append(Destination(start_event(bodies[-1][0]), "no case matched, default"))
        self.handler("switch", start, scope, tuple(dests), scopes, item.route, cases=keys)
        for body_scope, body in bodies:
            self.static(completed_event(body_scope), done)
            self.steps(body_scope, body, scopes)

    def catch(self, scope: str, item: Catch, scopes: tuple[str, ...]) -> None:
        """Compile a catch: its steps inside the catch scope, its handler outside it."""
        names = error_names(item.errors, scope)
        body, handler = f"{scope}/steps", f"{scope}/handler"
        self.catch_scopes.add(scope)
        self.static(start_event(scope), start_event(body))
        before = len(self.transitions)
        self.steps(body, item.body, (scope, *scopes))
        if any(scope in t.catch_scopes for t in self.transitions[before:]):
            self.catches.append(CatchRule(scope, names))
        self.static(completed_event(body), completed_event(scope))
        self.steps(handler, item.handler, scopes)
        self.static(completed_event(handler), completed_event(scope))

    def finally_(self, scope: str, item: Finally, scopes: tuple[str, ...]) -> None:
        """Compile a finally: enter (forget an earlier pass), steps, cleanup, leave.

        The leave transition decides at run time (stepflow.core.cleanup): go on
        after the group, or pass the error (or cancellation) the cleanup ran for.
        """
        body, cleanup = f"{scope}/steps", f"{scope}/cleanup"
        self.finally_scopes.add(scope)
        entered = (Destination(start_event(body), "finally entered"),)
        self.enter(start_event(scope), "finally", scope, entered, scopes)
        self.steps(body, item.body, (scope, *scopes))
        self.static(completed_event(body), start_event(cleanup))
        self.steps(cleanup, item.cleanup, scopes)
        self.leave(completed_event(cleanup), scope, "cleanup completed", scopes)

    def saga(self, scope: str, item: Saga, scopes: tuple[str, ...]) -> None:
        """Compile a saga: enter (mark where its pass starts), steps, and its compensation.

        While compensating, the position rests at ``start:<saga>/compensate``,
        a handler transition that calls one ``compensate`` handler at a time;
        with a policy, it is inside its own retry scope ``<saga>/compensate``.
        """
        body, compensating = f"{scope}/steps", f"{scope}/compensate"
        self.saga_scopes.add(scope)
        entered = (Destination(start_event(body), "saga entered"),)
        self.enter(start_event(scope), "saga", scope, entered, scopes)
        self.sagas += 1
        self.steps(body, item.body, (scope, *scopes))
        self.sagas -= 1
        self.static(completed_event(body), completed_event(scope))
        own = (compensating,) if item.policy is not None else ()
        if own:
            self.rules.append(RetryRule(compensating, item.policy, False))
        self.leave(start_event(compensating), scope, "compensated", (*own, *scopes), "compensate")

    def enter(
        self,
        source: str,
        kind: TransitionKind,
        scope: str,
        destinations: tuple[Destination, ...],
        scopes: tuple[str, ...],
    ) -> None:
        """Compile the entry of a finally or a saga: it keeps the scopes around it.

        (The retry attempts around it survive the entry, and a cancellation that
        unwinds from it finds the cleanups around it.)
        """
        retries, catches, cleanups = self.split(scopes)
        self.transitions.append(
            Transition(
                source, kind, scope, destinations, retries, catch_scopes=catches,
                cleanup_scopes=cleanups,
            )
        )  # fmt: skip

    def leave(
        self,
        source: str,
        scope: str,
        reason: str,
        scopes: tuple[str, ...],
        kind: TransitionKind = "leave",
    ) -> None:
        """Compile the end of a cleanup: on to the scope's end, or to the failure scopes."""
        retries, catches, cleanups = self.split(scopes)
        dests = (Destination(completed_event(scope), reason), *self.failure_dests(scopes))
        self.transitions.append(
            Transition(
                source, kind, scope, dests, retries, catch_scopes=catches, cleanup_scopes=cleanups
            )
        )

    def group(self, scope: str, item: Parallel | Map, scopes: tuple[str, ...]) -> None:
        """Compile a fork: its start, each branch (or the item group), and their joins.

        Inside a group, failures go to the group (scopes=()), which fails as a
        whole once nothing is in flight in it; only then do enclosing scopes see it.
        """
        start, done = start_event(scope), completed_event(scope)
        retry_dests = self.failure_dests(scopes)
        retry_scopes, catch_scopes, cleanup_scopes = self.split(scopes)
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
                start, kind, scope, dests + retry_dests, retry_scopes,
                max_concurrency=limit, max_failures=item.max_failures, catch_scopes=catch_scopes,
                cleanup_scopes=cleanup_scopes,
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
    deadline = None
    if spec.deadline is not None:
        deadline = to_seconds(spec.deadline, f"the deadline= of flow {name!r}", name)
    definition = FlowDefinition(
        name,
        tuple(compiler.transitions),
        tuple(compiler.rules),
        tuple(compiler.catches),
        deadline,
    )
    return definition, MappingProxyType(compiler.handlers)
