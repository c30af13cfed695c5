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

from collections.abc import Callable
from typing import Any

import attrs

from stepflow.core.definition import RetryPolicy
from stepflow.errors import DefinitionError

__all__ = [
    "DEFAULT_POLL_INTERVAL",
    "Case",
    "Do",
    "Group",
    "Item",
    "LoopUntil",
    "Retry",
    "Sleep",
    "Steps",
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


@attrs.frozen
class Do:
    """A step that calls ``fn(ctx)`` once."""

    name: str
    fn: ActionFn


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
class Sleep:
    """A durable timer: the run waits ``duration`` seconds, across restarts."""

    name: str
    duration: Duration


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


Item = Do | WaitFor | Sleep | Case | Retry | LoopUntil | Group


@attrs.frozen
class Steps:
    """An ordered, immutable list of named steps: the flow spec.

    Build one with :func:`named` or :func:`steps`, then chain methods; each returns
    a new ``Steps``.

    Attributes:
        name: The scope name: the flow's root name (``"deploy/v1"``) when this is
            the root, otherwise ignored where the enclosing step names the group.
        items: The steps, in order.

    """

    name: str = "steps"
    items: tuple[Item, ...] = ()

    def _add(self, item: Item) -> Steps:
        return Steps(self.name, (*self.items, item))

    def do(self, name: str, fn: ActionFn) -> Steps:
        """Add a step that calls ``fn(ctx)`` once.

        ``fn`` returns a JSON value (kept in the state's outputs under the step's
        path) or ``None``, and raises to fail.
        """
        return self._add(Do(name, fn))

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

    def sleep(self, name: str, duration: Duration) -> Steps:
        """Add a durable timer: the run resumes ``duration`` seconds after reaching it.

        The deadline is computed once, when the step is reached, and kept in the
        state, so a restart never extends it. Its scope is ``<name>``.
        """
        return self._add(Sleep(name, duration))

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


def named(name: str) -> Steps:
    """Start a flow spec whose root scope is ``name`` (``"deploy/v1"``).

    The root name may contain ``/`` (a versioned name), but not ``:``.
    """
    return Steps(name)


def steps() -> Steps:
    """Start a spec named ``"steps"``: a nested group, or a flow with the default name."""
    return Steps()
