"""Invariants as monitors: small state machines that watch a run step by step.

:func:`explore` runs every invariant's monitor alongside the flow (a product
construction): the monitor's state is part of what makes two search states the
same, so a property of the *history* of a run (``before``, ``leads_to``) is
checked as soundly as a property of one state (``always``, ``never``).

An invariant names what it watches with *matchers*:

* an event string, ``"start:<path>"`` or ``"completed:<path>"``, happens when
  the run enters that event (static hops included);
* a step path, ``"deploy/v1/push"``, happens when the step starts (its start
  event is entered) and each time a command of it is answered (a poll, an
  ``on_error`` handler of a retry scope);
* a callable ``f(happening) -> bool`` over a :class:`Happening`, for anything else.

Inside a map, happenings name steps and events with their item indices
(``f/regionsMap/steps[1]/push``). A matcher without indices matches the step in
every item; one with indices, only that item's.

A run with ``parallel`` or ``map`` groups holds several positions: predicates of
:func:`always` and :func:`never` see the whole :class:`~stepflow.core.state.State`
(``state.events`` lists every position, ``state.groups`` each group's progress).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Hashable, Iterable
from typing import Any, Protocol

import attrs

from stepflow.analysis._model import AnalysisError, Happening, Observation
from stepflow.core.definition import FlowDefinition, start_event, template_of
from stepflow.core.state import State

__all__ = ["Invariant", "Matcher", "always", "before", "leads_to", "matches", "never"]

#: What an invariant watches: an event string, a step path, or a predicate.
Matcher = str | Callable[[Happening], bool]


class Invariant(Protocol):
    """A property of runs, checked by a monitor that :func:`explore` threads through a run.

    A monitor is any hashable value: it joins the search state, so two runs
    whose monitors differ are explored separately.
    """

    @property
    def name(self) -> str:
        """How reports name the invariant."""
        ...

    def start(self) -> Hashable:
        """Return the monitor of a run that has not started."""
        ...

    def observe(self, monitor: Any, step: Observation) -> Hashable:
        """Return the monitor after ``step`` (the start of the run is the first step)."""
        ...

    def violation(self, monitor: Any, state: State) -> str | None:
        """Why ``state``, with ``monitor``, breaks the invariant; ``None`` if it does not.

        ``state.status`` tells whether the run is over, for properties that
        are only decided at the end.
        """
        ...


def matches(matcher: Matcher, happening: Happening) -> bool:
    """Whether ``matcher`` matches ``happening`` (see the module docstring)."""
    if callable(matcher):
        return bool(matcher(happening))
    name = happening.name
    if "[" in name and "[" not in matcher:
        name = template_of(name)  # a matcher without indices names every item
    if matcher.startswith(("start:", "completed:")):
        return happening.what == "entered" and name == matcher
    if happening.what == "ran":
        return name == matcher
    return name == start_event(matcher)


_matches = matches


def _first(matcher: Matcher, step: Observation) -> int | None:
    for index, happening in enumerate(step.happenings):
        if _matches(matcher, happening):
            return index
    return None


def _label(matcher: Matcher) -> str:
    if callable(matcher):
        return getattr(matcher, "__name__", repr(matcher))
    return repr(matcher)


def check_matcher(definition: FlowDefinition, matcher: Matcher) -> None:
    """Raise :class:`AnalysisError` if a string ``matcher`` names nothing in ``definition``."""
    if callable(matcher):
        return
    matcher = template_of(matcher)  # one item's step is checked as the step
    if matcher.startswith(("start:", "completed:")):
        if matcher not in definition.events:
            raise AnalysisError(
                f"invariant names event {matcher!r}, which flow {definition.name!r} does not "
                f"have{_did_you_mean(matcher, definition.events)}"
            )
        return
    if start_event(matcher) not in definition.table:
        scopes = [e.partition(":")[2] for e in definition.table if e.startswith("start:")]
        raise AnalysisError(
            f"invariant names step {matcher!r}, which flow {definition.name!r} does not have"
            f"{_did_you_mean(matcher, scopes)}; name steps by scope path, suffixes included "
            "(WaitFor, Case, Retry, LoopUntil)"
        )


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


@attrs.frozen
class StateInvariant:
    """A predicate every reachable state satisfies (see :func:`always`).

    Attributes:
        name: How reports name the invariant.
        predicate: ``predicate(state) -> bool``.

    """

    name: str
    predicate: Callable[[State], bool]

    def start(self) -> None:
        """No memory is needed: the predicate reads the state alone."""

    def observe(self, monitor: Any, step: Observation) -> None:
        """Return ``None``: keep no memory."""

    def violation(self, monitor: Any, state: State) -> str | None:
        """Report a state in which the predicate is false."""
        if self.predicate(state):
            return None
        where = repr(state.events[0]) if len(state.events) == 1 else repr(list(state.events))
        return f"{self.name} is false in a {state.status} state at {where}"


@attrs.frozen
class Before:
    """``then`` never happens unless ``first`` happened earlier (see :func:`before`).

    Attributes:
        name: How reports name the invariant.
        first: What must happen first.
        then: What must not happen before it.

    """

    name: str
    first: Matcher
    then: Matcher

    def start(self) -> bool | str:
        """Return ``False``: ``first`` has not happened yet."""
        return False

    def observe(self, monitor: Any, step: Observation) -> bool | str:
        """Return ``True`` once ``first`` happened, or what happened if ``then`` came first."""
        if monitor is not False:
            seen: bool | str = monitor
            return seen
        first, then = _first(self.first, step), _first(self.then, step)
        if then is not None and (first is None or then < first):
            what = step.happenings[then]
            return f"{what.what} {what.name}"
        return first is not None

    def violation(self, monitor: Any, state: State) -> str | None:
        """Report ``then`` having happened (the monitor holds what) before ``first``."""
        if isinstance(monitor, str):
            return f"{_label(self.then)} happened ({monitor}) before {_label(self.first)}"
        return None


@attrs.frozen
class LeadsTo:
    """Whenever ``trigger`` happens, ``response`` happens later (see :func:`leads_to`).

    Attributes:
        name: How reports name the invariant.
        trigger: What asks for a response.
        response: What must follow before the run completes.
        on: The statuses of the ended runs checked (``("completed",)``).

    """

    name: str
    trigger: Matcher
    response: Matcher
    on: tuple[str, ...] = ("completed",)

    def start(self) -> bool:
        """Return ``False``: no response is owed."""
        return False

    def observe(self, monitor: Any, step: Observation) -> bool:
        """Return whether a response is owed after ``step``."""
        pending = bool(monitor)
        for happening in step.happenings:
            if _matches(self.response, happening):
                pending = False
            if _matches(self.trigger, happening):
                pending = True
        return pending

    def violation(self, monitor: Any, state: State) -> str | None:
        """Report a run ended in one of ``on`` that still owes a response."""
        if monitor and state.status in self.on:
            return (
                f"the run {state.status}, but "
                f"{_label(self.trigger)} was not followed by {_label(self.response)}"
            )
        return None


def _name_of(predicate: Callable[..., Any], name: str | None, wrapper: str) -> str:
    if name is not None:
        return name
    return f"{wrapper}({getattr(predicate, '__name__', repr(predicate))})"


def always(predicate: Callable[[State], bool], *, name: str | None = None) -> StateInvariant:
    """Every reachable state satisfies ``predicate``.

    The predicate should read what the search tells apart (position, status,
    error type and step, the command in flight, output keys, retry attempts):
    states equal in those are explored once.

    >>> always(lambda s: s.status != "failed", name="never fails").name
    'never fails'
    """
    return StateInvariant(_name_of(predicate, name, "always"), predicate)


def never(predicate: Callable[[State], bool], *, name: str | None = None) -> StateInvariant:
    """No reachable state satisfies ``predicate`` (``always`` of its negation).

    >>> never(lambda s: s.status == "failed").name
    'never(<lambda>)'
    """
    return StateInvariant(_name_of(predicate, name, "never"), lambda state: not predicate(state))


def before(first: Matcher, then: Matcher, *, name: str | None = None) -> Before:
    """``then`` never happens unless ``first`` happened earlier in the run.

    For example "deploy never starts before the pre-deploy state was collected"::

        before("completed:deploy/v1/waitForPreActualStateWaitFor",
               "deploy/v1/deployCase/steps/createDeployRequest")

    See the module docstring for matchers. When one step does both, the order
    within it decides (the command answered comes before the events entered).
    """
    return Before(name or f"before({_label(first)}, {_label(then)})", first, then)


def leads_to(
    trigger: Matcher,
    response: Matcher,
    *,
    name: str | None = None,
    on: Iterable[str] = ("completed",),
) -> LeadsTo:
    """Whenever ``trigger`` happens, ``response`` happens later, on every completed run.

    Checked when a run ends with a status in ``on`` (by default when it
    completes: a run that fails owes nothing). For example "validate always
    runs after a deploy request"::

        leads_to("deploy/v1/deployCase/steps/createDeployRequest",
                 "deploy/v1/deployCase/steps/validatePostDeployActualState")

    and, exploring with ``cancel=True``, "a cancelled run releases its lease"::

        leads_to(lambda h: h.what == "cancel", "job/v1/leaseFinally/cleanup/release",
                 on=("cancelled",))
    """
    statuses = tuple(on)
    label = name or f"leads_to({_label(trigger)}, {_label(response)})"
    return LeadsTo(label, trigger, response, statuses)
