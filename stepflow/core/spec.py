"""The immutable flow builder: ``named(...)`` / ``steps()`` and their methods.

Every method returns a new :class:`Steps`; nothing is changed in place, so a
partial spec can be shared and extended in several directions::

    base = named("deploy/v1").do("collect", collect)
    a = base.wait_for("ready", is_ready)      # base is unchanged
    b = base.do("skip", skip)

A spec holds the user's handlers; :func:`stepflow.new` compiles it into a
:class:`~stepflow.core.definition.FlowDefinition`, which is pure data, plus a
table binding each handler to the step it serves. Names are checked at compile
time, where the full scope path of the offending step is known.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from stepflow.core.policies import RetryPolicy
from stepflow.errors import DefinitionError

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "Call",
    "Case",
    "Catch",
    "Do",
    "Finally",
    "Group",
    "Item",
    "LoopUntil",
    "Map",
    "Parallel",
    "Retry",
    "Saga",
    "Sleep",
    "SleepUntil",
    "Steps",
    "Switch",
    "WaitEvent",
    "WaitFor",
    "named",
    "steps",
]

#: Seconds between two polls of a ``wait_for`` condition, unless ``every=`` says.
DEFAULT_POLL_INTERVAL = 1.0
#: A number of seconds, or a ``datetime.timedelta``.
Duration = Any

#: ``fn(ctx)``: returns a JSON value or ``None``, raises to fail. May be ``async def``.
ActionFn = Callable[[Any], Any]
#: ``cond(ctx) -> bool``. May be ``async def``.
ConditionFn = Callable[[Any], Any]
#: ``on_error(ctx, exc) -> bool``: ``True`` restarts the retry group. May be ``async def``.
ErrorHandlerFn = Callable[[Any, BaseException], Any]
#: ``route(ctx) -> scalar``: the JSON scalar a ``switch`` matches its cases with. May be async.
RouteFn = Callable[[Any], Any]
#: ``items(ctx) -> list``: the JSON items a ``map`` runs its steps for. May be ``async def``.
ItemsFn = Callable[[Any], Any]
#: ``when(ctx)``: a ``datetime`` (naive means UTC) or seconds since the epoch. May be ``async def``.
WhenFn = Callable[[Any], Any]
#: ``input(ctx)``: a child run's JSON input; ``id(ctx)``: its run id (a ``str``).
ChildFn = Callable[[Any], Any]


@attrs.frozen
class Do:
    """A step that calls ``fn(ctx)`` once, within ``timeout`` seconds if one is given.

    ``compensate(ctx)``, if given, undoes it: it runs when a failure or a
    cancellation leaves the enclosing :class:`Saga` after this step completed.
    """

    name: str
    fn: ActionFn
    timeout: Duration | None = None
    compensate: ActionFn | None = None


@attrs.frozen
class WaitFor:
    """A step that polls ``cond(ctx)`` every ``every`` seconds until it returns ``True``.

    With a ``timeout``, a condition still false that long after the step began
    fails the step with :class:`~stepflow.errors.WaitTimeoutError`.
    """

    name: str
    cond: ConditionFn
    every: Duration = DEFAULT_POLL_INTERVAL
    timeout: Duration | None = None


@attrs.frozen
class WaitEvent:
    """A step that rests until an event named ``name`` is received.

    Past ``timeout``, the ``on_timeout`` steps run, or, without them, the step
    fails with :class:`~stepflow.errors.WaitTimeoutError`.
    """

    name: str
    timeout: Duration | None = None
    on_timeout: Steps | None = None


@attrs.frozen
class Sleep:
    """A durable timer: the run waits ``duration`` seconds, across restarts."""

    name: str
    duration: Duration


@attrs.frozen
class SleepUntil:
    """A durable timer at the time ``when(ctx)`` returns, computed once."""

    name: str
    when: WhenFn


@attrs.frozen
class Case:
    """A group that runs only when ``cond(ctx)`` returns ``True``."""

    name: str
    cond: ConditionFn
    body: Steps


@attrs.frozen
class Retry:
    """A group restarted on failure, as its ``policy`` and ``on_error(ctx, exc)`` allow.

    Either may be ``None``, not both. The policy decides first (attempts left,
    error retryable), then ``on_error`` (``True`` restarts), then the policy's
    backoff delays the restart.
    """

    name: str
    on_error: ErrorHandlerFn | None
    body: Steps
    policy: RetryPolicy | None = None


@attrs.frozen
class LoopUntil:
    """A group that runs, then repeats while ``cond(ctx)`` returns ``False``."""

    name: str
    cond: ConditionFn
    body: Steps


@attrs.frozen
class Group:
    """A named group of steps (``.steps(name, steps)``)."""

    name: str
    body: Steps


@attrs.frozen
class Parallel:
    """A group whose branches run side by side; it completes when all have completed.

    ``branches`` holds ``(branch name, steps)`` pairs in the order given.
    """

    name: str
    branches: tuple[tuple[str, Steps], ...]
    max_failures: int = 0


@attrs.frozen
class Map:
    """A group that runs ``body`` once per item of the list ``items(ctx)`` returns.

    At most ``max_concurrency`` items run at once (``None``: no limit).
    """

    name: str
    items: ItemsFn
    body: Steps
    max_concurrency: int | None = None
    max_failures: int = 0


@attrs.frozen
class Switch:
    """A choice: ``route(ctx)`` returns a JSON scalar, and the case of that value runs.

    ``cases`` holds ``(value, steps)`` pairs in the order given; ``default`` runs
    when no value matches (``None``: nothing runs). See :mod:`stepflow.core.choice`.
    """

    name: str
    route: RouteFn
    cases: tuple[tuple[Any, Steps], ...]
    default: Steps | None = None


@attrs.frozen
class Catch:
    """A failure scope, like ``try``/``except``: ``handler`` runs when ``body`` fails.

    ``errors`` holds the exception types or recorded type names it takes
    (``None``: every error). See :mod:`stepflow.core.scopes`.
    """

    name: str
    body: Steps
    handler: Steps
    errors: Any = None


@attrs.frozen
class Finally:
    """A cleanup scope, like ``try``/``finally``: ``cleanup`` runs whenever ``body`` is left.

    Completed, failed or cancelled: the cleanup steps run, then the outcome goes
    on. See :mod:`stepflow.core.cleanup`.
    """

    name: str
    body: Steps
    cleanup: Steps


@attrs.frozen
class Saga:
    """A compensation scope: a failure or cancellation leaving ``body`` undoes its steps.

    The ``compensate=`` handlers of the ``do`` steps that completed inside run
    in reverse order, each as its own command, retried as ``policy`` allows.
    See :mod:`stepflow.core.cleanup`.
    """

    name: str
    body: Steps
    policy: RetryPolicy | None = None


def _the_item(ctx: Any) -> Any:
    """Return the input of a ``map(call=)`` item's child: the item."""
    return ctx.item


@attrs.frozen
class Call:
    """A child run of ``flow`` (a :class:`~stepflow.Flow` or a flow name), waited for.

    Calling it calls ``input(ctx)`` (``None`` without one): it is bound as the
    step's ``call`` handler, and the shell reads ``flow`` and ``id`` from it.
    See :mod:`stepflow.core.children`.
    """

    name: str
    flow: Any
    input: ChildFn | None = None
    id: ChildFn | None = None

    def __call__(self, ctx: Any) -> Any:
        """Return the child's input: ``input(ctx)``, or ``None`` without an ``input``."""
        return None if self.input is None else self.input(ctx)

    @property
    def flow_name(self) -> str:
        """The name of the child's flow (``flow`` itself, or its ``name``)."""
        return self.flow if isinstance(self.flow, str) else str(self.flow.name)


Item = (
    Do
    | WaitFor
    | WaitEvent
    | Sleep
    | Case
    | Retry
    | LoopUntil
    | Group
    | Parallel
    | Map
    | Switch
    | Catch
    | SleepUntil
    | Finally
    | Saga
    | Call
)


@attrs.frozen
class Steps:
    """An ordered, immutable list of named steps: the flow spec.

    Build one with :func:`named` or :func:`steps`, then chain methods; each returns
    a new ``Steps``.

    Attributes:
        name: The scope name: the flow's root name (``"deploy/v1"``) when this is
            the root, otherwise ignored where the enclosing step names the group.
        items: The steps, in order.
        deadline: For the root spec, how long a run may take (seconds or a
            ``timedelta``) before the runtime cancels it with
            :class:`~stepflow.errors.DeadlineExceeded`; ``None``: no deadline.

    """

    name: str = "steps"
    items: tuple[Item, ...] = ()
    deadline: Duration | None = None

    def _add(self, item: Item) -> Steps:
        return Steps(self.name, (*self.items, item), self.deadline)

    def do(
        self,
        name: str,
        fn: ActionFn,
        *,
        timeout: Duration | None = None,
        compensate: ActionFn | None = None,
    ) -> Steps:
        """Add a step that calls ``fn(ctx)`` once.

        ``fn`` returns a JSON value (kept in the state's outputs under the step's
        path) or ``None``, and raises to fail.

        With ``timeout`` (seconds or a ``timedelta``, > 0), a start-to-close
        limit the shell enforces on each execution: past it, an ``async def``
        handler is cancelled and a plain one is abandoned in its thread (its
        late result is ignored and logged), and the step fails with
        :class:`~stepflow.errors.StepTimeoutError`, which a ``retry`` retries
        like any error. The timeout is part of the definition.

        With ``compensate`` (``compensate(ctx)``, may be ``async def``), the
        step can be undone: inside a :meth:`saga`, once this step completed, a
        failure or a cancellation that leaves the saga calls it (in reverse
        order of completion, each as its own durable command). ``ctx.error``
        is then the error (or cancellation) being handled. A ``do`` with
        ``compensate`` outside every saga is a :class:`DefinitionError`.
        """
        return self._add(Do(name, fn, timeout, compensate))

    def wait_for(
        self,
        name: str,
        cond: ConditionFn,
        *,
        every: Duration = DEFAULT_POLL_INTERVAL,
        timeout: Duration | None = None,
    ) -> Steps:
        """Add a step that polls ``cond(ctx)`` until it returns ``True``.

        After a ``False`` the state asks to run again ``every`` seconds later (its
        ``wake_at``); drivers honour it, so a wait never spins. With ``timeout``
        (seconds or a ``timedelta``), a condition still false that long after the
        step began fails it with :class:`~stepflow.errors.WaitTimeoutError`, which
        an enclosing ``retry`` can catch. Its scope is ``<name>WaitFor``.
        """
        return self._add(WaitFor(name, cond, every, timeout))

    def wait_event(
        self,
        name: str,
        *,
        timeout: Duration | None = None,
        on_timeout: Steps | None = None,
    ) -> Steps:
        """Add a step that rests until an event named ``name`` is received.

        Events come from outside the run (:func:`stepflow.send_event`, ``stepflow
        send``, or an :class:`~stepflow.EventReceived` effect). One received
        before the run gets here waits in the run's mailbox and is taken at
        once, first in first out per name. The event's JSON payload is kept in
        ``outputs`` under the step's path (a ``None`` payload keeps the earlier
        one). While it rests, the run issues no command to execute and costs
        nothing: no poll, no journal entry.

        With ``timeout`` (seconds or a ``timedelta``, counted from when the step
        is reached), a wait still unanswered then runs the ``on_timeout`` steps
        and the flow goes on after them, or, without ``on_timeout``, fails with
        :class:`~stepflow.errors.WaitTimeoutError`, which an enclosing ``retry``
        may catch. Its scope is ``<name>WaitEvent``; the ``on_timeout`` steps run
        in the child scope ``onTimeout``. See :mod:`stepflow.core.events`.
        """
        return self._add(WaitEvent(name, timeout, on_timeout))

    def sleep(self, name: str, duration: Duration) -> Steps:
        """Add a durable timer: the run resumes ``duration`` seconds after reaching it.

        The deadline is computed once, when the step is reached, and kept in the
        state, so a restart never extends it. Its scope is ``<name>``.
        """
        return self._add(Sleep(name, duration))

    def call(
        self,
        name: str,
        flow: Any,
        input: ChildFn | None = None,
        id: ChildFn | None = None,
    ) -> Steps:
        """Add a step that starts a child run of ``flow`` and waits for it to end.

        ``flow`` is a :class:`~stepflow.Flow` or a flow name (a ``str``, which a
        worker resolves among the flows it serves). ``input(ctx)`` returns the
        child's JSON input (default: ``None``); ``id(ctx)`` its run id (default:
        ``"<parent run id>/<step path>#<command id>"``, deterministic, so a
        crashed worker's successor finds the same child). Both are called once
        per start, like a handler.

        The parent rests until the child ends. A completed child's outputs
        (its state's ``outputs``: a JSON object of step path to output) become
        this step's output.
        A failed or cancelled child fails the step with
        :class:`~stepflow.errors.ChildFailed`, which retries (a retry starts a
        new child, with a new id) and catches take like any failure.
        Cancelling the parent cancels the child, and waits for it. Its scope is
        ``<name>Call``. See :mod:`stepflow.core.children` for every rule.
        """
        return self._add(Call(name, flow, input, id))

    def sleep_until(self, name: str, when: WhenFn) -> Steps:
        """Add a durable timer at the time ``when(ctx)`` returns: no drift, across restarts.

        ``when`` is called once, as its own command (it may read ``ctx``), and
        returns a ``datetime`` (an aware one, or a naive one, read as UTC) or a
        number of seconds since the epoch. The time is kept in the state's
        outputs under the step's path (as epoch seconds), and the run resumes
        then; a time already past fires at once. Any other value fails the step
        with :class:`~stepflow.errors.HandlerResultError`. Its scope is
        ``<name>``. See :mod:`stepflow.core.timers` for every rule.
        """
        return self._add(SleepUntil(name, when))

    def case(self, name: str, cond: ConditionFn, steps: Steps) -> Steps:
        """Add a group that runs only when ``cond(ctx)`` returns ``True``.

        Its scope is ``<name>Case``; the group runs in the child scope ``steps``.
        """
        return self._add(Case(name, cond, steps))

    def retry(
        self,
        name: str,
        policy_or_on_error: RetryPolicy | ErrorHandlerFn,
        steps: Steps,
        *,
        on_error: ErrorHandlerFn | None = None,
    ) -> Steps:
        """Add a group that is restarted when one of its steps fails.

        ``policy_or_on_error`` is a :class:`RetryPolicy` (attempts, backoff,
        non-retryable errors) or a go-stepflow ``on_error(ctx, exc)`` handler;
        pass a policy there and a handler as ``on_error=`` to combine them.

        On a failure the policy decides first (attempts left, error retryable),
        then ``on_error``: ``True`` restarts the group from its first step (after
        the policy's backoff), ``False`` lets the original error go on to an
        enclosing retry, or fail the run. An exception raised by ``on_error``
        replaces the original error. Attempts are kept in the state, so a restart
        of the worker never resets them. The group's scope is ``<name>Retry``.
        """
        if isinstance(policy_or_on_error, RetryPolicy):
            return self._add(Retry(name, on_error, steps, policy_or_on_error))
        if on_error is not None:
            raise DefinitionError(
                f"retry {name!r} got two on_error handlers; pass a RetryPolicy first to "
                "combine a policy with on_error=",
                path=name,
            )
        return self._add(Retry(name, policy_or_on_error, steps))

    def loop_until(self, name: str, cond: ConditionFn, steps: Steps) -> Steps:
        """Add a group that runs, then repeats until ``cond(ctx)`` returns ``True``.

        The condition is checked after each pass (do-while). Its scope is
        ``<name>LoopUntil``; the group runs in the child scope ``steps``.
        """
        return self._add(LoopUntil(name, cond, steps))

    def steps(self, name: str, steps: Steps) -> Steps:
        """Add ``steps`` as a nested group with scope ``name`` (whatever ``steps`` was named)."""
        return self._add(Group(name, steps))

    def parallel(self, name: str, branches: Mapping[str, Steps], *, max_failures: int = 0) -> Steps:
        """Add a group whose ``branches`` (branch name -> steps) all run at once.

        The group completes when every branch has completed; its output (in
        ``outputs`` under the group's path) maps each branch to its last ``do``
        output. The first branch that fails (after its own retries) fails the
        group, unless ``max_failures`` failed branches are tolerated: commands
        already in flight finish and are recorded, no new one starts in the
        group, then the error goes to the enclosing retry or fails the run. The
        group's scope is ``<name>Parallel``; branch ``b`` runs in scope
        ``<name>Parallel/b``. See :mod:`stepflow.core.groups` for every rule.
        """
        if not isinstance(branches, Mapping):
            raise DefinitionError(
                f"the branches of parallel {name!r} must be a mapping of branch name to "
                f"stepflow.steps(), got {branches!r:.80}",
                path=name,
            )
        return self._add(Parallel(name, tuple(branches.items()), max_failures))

    def map(
        self,
        name: str,
        items: ItemsFn,
        steps: Steps | None = None,
        *,
        max_concurrency: int | None = None,
        max_failures: int = 0,
        call: Any = None,
    ) -> Steps:
        """Add a group that runs ``steps`` once for each item of ``items(ctx)``.

        ``items`` is called once, as its own command, and must return a JSON
        list, kept in the state. Each item's steps see it as ``ctx.item`` and its
        position as ``ctx.index``; at most ``max_concurrency`` items run at once.
        The group's output is the list of each item's last ``do`` output, in item
        order. Failure works as for :meth:`parallel`. The group's scope is
        ``<name>Map``; item ``i`` runs in scope ``<name>Map/steps[i]``.

        With ``call=flow`` (a :class:`~stepflow.Flow` or a flow name) instead of
        ``steps``, each item runs one child run of ``flow``, its input the item:
        the steps are ``steps().call(name, flow, input=ctx.item)``, so item
        ``i``'s child is ``<name>Map/steps[i]/<name>Call`` and the group's
        output is the list of the children's outputs (see :meth:`call`).

        Raises:
            DefinitionError: both ``steps`` and ``call=`` are given, or neither.

        """
        if (steps is None) == (call is None):
            raise DefinitionError(
                f"map {name!r} needs exactly one of steps (run for each item) and call= "
                "(a child run for each item); pass one of them",
                path=name,
            )
        body = steps if steps is not None else Steps().call(name, call, input=_the_item)
        return self._add(Map(name, items, body, max_concurrency, max_failures))

    def switch(
        self,
        name: str,
        route: RouteFn,
        cases: Mapping[Any, Steps] | Iterable[tuple[Any, Steps] | list[Any]],
        default: Steps | None = None,
    ) -> Steps:
        """Add a choice: the steps of the case whose value ``route(ctx)`` returns run.

        ``route`` (plain or ``async def``) returns a JSON scalar: a str, int,
        float, bool or ``None``. ``cases`` maps such values to steps (a mapping,
        or ``(value, steps)`` pairs: a Python dict merges the keys ``True`` and
        ``1``, pairs keep them apart). Values match exactly and by JSON type:
        ``True`` is not ``1``, ``1`` is not ``"1"``; ``1`` and ``1.0`` are the
        same JSON number, so the same case. With no matching case the
        ``default`` steps run, or nothing; then the flow continues after the
        switch. One ``switch`` command decides it. A route result that is not a
        JSON scalar fails the step with
        :class:`~stepflow.errors.HandlerResultError`.

        Its scope is ``<name>Switch``; case ``i`` (in the order given) runs in
        the child scope ``case<i>``, the default in ``default``.
        """
        given = cases.items() if isinstance(cases, Mapping) else cases
        try:
            pairs: tuple[tuple[Any, Steps], ...] = tuple(
                tuple(p) if isinstance(p, list) else p for p in given
            )
            if not all(isinstance(p, tuple) and len(p) == 2 for p in pairs):
                raise TypeError
        except TypeError:
            raise DefinitionError(
                f"the cases of switch {name!r} must be a mapping of JSON scalar to "
                f"stepflow.steps(), or (value, steps) pairs; got {cases!r:.80}",
                path=name,
            ) from None
        return self._add(Switch(name, route, pairs, default))

    def catch(self, name: str, steps: Steps, handler: Steps, errors: Any = None) -> Steps:
        """Add a failure scope: when ``steps`` fails with a matching error, ``handler`` runs.

        Like ``try``/``except``: ``errors`` is an exception type, a recorded type
        name (``"myapp.Declined"``, or ``"Declined"`` to match by class name as
        :attr:`RetryPolicy.non_retryable` does), or a list of them; ``None``
        takes every error. The handler's steps see the error as ``ctx.error``
        (an :class:`~stepflow.ErrorRecord`, kept in ``outputs`` under the catch
        scope's path as ``{"error": {...}}``); then the flow continues after
        the catch. Other errors, and failures of the handler itself, go on
        outward. Retries and catches nest in any order: the innermost takes a
        failure first. Its scope is ``<name>Catch``; the steps run in its child
        scope ``steps``, the handler in ``handler``.
        """
        return self._add(Catch(name, steps, handler, errors))

    def finally_(self, name: str, steps: Steps, cleanup: Steps) -> Steps:
        """Add a cleanup scope, like ``try``/``finally``: ``cleanup`` runs when ``steps`` is left.

        When ``steps`` completes, fails (past the retries and catches inside
        it) or is cancelled, the ``cleanup`` steps run; then the flow goes on
        after the group, or the error goes on outward, or the cancellation goes
        on. While they run after a failure or a cancellation, ``ctx.error`` is
        that error (or the cancellation's record). A cleanup started by a
        cancellation is never interrupted by it. Its scope is ``<name>Finally``;
        ``steps`` run in its child scope ``steps``, ``cleanup`` in ``cleanup``.
        See :mod:`stepflow.core.cleanup`.
        """
        return self._add(Finally(name, steps, cleanup))

    def saga(self, name: str, steps: Steps, *, policy: RetryPolicy | None = None) -> Steps:
        """Add a compensation scope: a failure or cancellation leaving ``steps`` undoes them.

        The ``compensate=`` handlers of the ``do`` steps that completed inside
        (nested sagas included) run in reverse order of completion, each as its
        own durable command, retried as ``policy`` allows (``None``: a failing
        compensation is not retried). Then the error goes on outward, or the
        cancellation goes on. A compensation that still fails replaces the
        error, and the compensations not yet run stay recorded, so
        :func:`stepflow.resume` goes on with them. Its scope is ``<name>Saga``.
        """
        return self._add(Saga(name, steps, policy))


def named(name: str, *, deadline: Duration | None = None) -> Steps:
    """Start a flow spec whose root scope is ``name`` (``"deploy/v1"``).

    The root name may contain ``/`` (a versioned name), but not ``:``. With
    ``deadline`` (seconds or a ``timedelta``, > 0), every run of the flow that
    is still going that long after it started is cancelled, with its cleanups,
    for :class:`~stepflow.errors.DeadlineExceeded` (enforced by the runtime:
    :func:`stepflow.start_run` and the :class:`stepflow.Worker`).
    """
    return Steps(name, (), deadline)


def steps() -> Steps:
    """Start a spec named ``"steps"``: a nested group, or a flow with the default name."""
    return Steps()
