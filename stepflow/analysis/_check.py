"""Design checks: faults a flow has whatever its handlers do, each with a fix.

Some checks read the transition table (waits with no timeout, retries with no
bound, loops nothing paces); the others read the explored graph (see
:mod:`stepflow.analysis._explore`, searched with ``max_loops=1``): steps and
transitions no run reaches, states from which no run ends, and commands issued
after a run ended.
"""

from __future__ import annotations

from typing import Literal

import attrs

from stepflow.analysis._model import MAX_ITEMS
from stepflow.analysis._paths import TransitionTarget, coverage
from stepflow.core.advance import advance
from stepflow.core.definition import FlowDefinition, Transition, start_event

__all__ = ["Finding", "Severity", "check"]

#: ``"error"``: the flow is wrong; ``"warning"``: it may be, decide.
Severity = Literal["error", "warning"]


@attrs.frozen
class Finding:
    """A design fault found by :func:`check`.

    Attributes:
        code: What kind of fault (``"wait-without-timeout"``...).
        severity: ``"error"`` or ``"warning"``.
        path: The scope path of the step at fault.
        message: What is wrong.
        hint: How to fix it.

    """

    code: str
    severity: Severity
    path: str
    message: str
    hint: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message} [{self.code}]\n  hint: {self.hint}"


def _waits(definition: FlowDefinition) -> list[Finding]:
    return [
        Finding(
            "wait-without-timeout",
            "warning",
            t.step or "",
            f"wait_for {t.step!r} has no timeout: if its condition never turns true, the run "
            "waits forever, polling",
            "pass timeout= (seconds or a timedelta); an enclosing retry can catch the "
            "WaitTimeoutError",
        )
        for t in definition.handler_transitions()
        if t.kind == "wait_for" and t.timeout is None
    ]


def _retries(definition: FlowDefinition) -> list[Finding]:
    findings = []
    for scope in definition.retry_scopes():
        rule = definition.retry_rule(scope)
        policy = rule.policy
        if policy is not None and policy.max_attempts == 1:
            findings.append(
                Finding(
                    "retry-never-restarts",
                    "warning",
                    scope,
                    f"the policy of retry {scope!r} allows max_attempts=1: it never restarts "
                    "its group"
                    + (", and its on_error handler is never asked" if rule.on_error else ""),
                    "raise max_attempts, or remove the retry",
                )
            )
        elif policy is None or policy.max_attempts is None:
            eager = policy is None or policy.initial_interval == 0
            delay = ", at once, with no backoff" if eager else ""
            if rule.on_error:
                message = (
                    f"retry {scope!r} restarts its group{delay} for as long as its on_error "
                    "handler returns True: nothing bounds the attempts"
                )
            else:
                message = f"retry {scope!r} restarts its group{delay} after every failure, forever"
            findings.append(
                Finding(
                    "unbounded-retry",
                    "warning",
                    scope,
                    message,
                    "give it a RetryPolicy(max_attempts=...) (a policy first, then on_error=)",
                )
            )
    return findings


def _busy_loops(definition: FlowDefinition) -> list[Finding]:
    handled = [t.step or "" for t in definition.handler_transitions()]
    findings = []
    for t in definition.handler_transitions():
        if t.kind != "loop_until":
            continue
        group = f"{t.step}/steps/"
        if not any(step.startswith(group) for step in handled):
            findings.append(
                Finding(
                    "busy-loop",
                    "warning",
                    t.step or "",
                    f"loop_until {t.step!r} has no step in its group: its condition is asked "
                    "again at once, with no delay, until it returns True",
                    "use wait_for(..., every=...) to poll a condition, or put steps in the loop",
                )
            )
    return findings


def _hot_loops(definition: FlowDefinition) -> list[Finding]:
    handlers = [t for t in definition.handler_transitions() if t.kind != "join"]
    findings = []
    for t in handlers:
        if t.kind != "loop_until":
            continue
        group = f"{t.step}/steps/"
        body = [h for h in handlers if (h.step or "").startswith(group)]
        if not body or any(h.kind in ("sleep", "sleep_until", "wait_for") for h in body):
            continue  # an empty body is a busy-loop; a body that waits is paced
        named = [(h.step or "").rpartition("/")[2] for h in body if h.kind != "parallel"]
        listed = ", ".join(repr(name) for name in named[:3])
        more = f" and {len(named) - 3} more" if len(named) > 3 else ""
        findings.append(
            Finding(
                "hot-loop",
                "warning",
                t.step or "",
                f"loop_until {t.step!r} neither waits nor sleeps in its body ({listed}{more}): "
                "while its condition is false, each pass starts the next at once, as fast as "
                "a worker can run it, writing every transition to the journal",
                "add .sleep(...) to the loop's steps to pace the passes, or poll with "
                "wait_for(..., every=..., timeout=...) instead of a loop",
            )
        )
    return findings


def _swallows(definition: FlowDefinition, scope: str) -> bool:
    """Whether retry ``scope`` restarts after every failure, never passing one on."""
    rule = definition.retry_rule(scope)
    policy = rule.policy
    return not rule.on_error and policy is not None and policy.max_attempts is None


def _unreachable_transitions(
    definition: FlowDefinition, missing: list[TransitionTarget]
) -> list[Finding]:
    findings = []
    by_scope: dict[str, list[str]] = {}
    for target in missing:
        transition: Transition = definition.table[target.source]
        step = transition.step or ""
        if transition.kind == "compensate" and target.destination.startswith("completed:"):
            continue  # listed, but a saga that compensated passes on what it ran for
        if target.reason == "retry":
            if transition.kind == "sleep":
                continue  # the table lists it, but a timer cannot fail
            scope = target.destination.partition(":")[2]
            policy = definition.retry_rule(scope).policy
            if policy is not None and policy.max_attempts == 1:
                continue  # reported as retry-never-restarts
            inner = transition.retry_scopes[: transition.retry_scopes.index(scope)]
            if any(_swallows(definition, s) for s in inner):
                by_scope.setdefault(scope, []).append(step)
                continue
        findings.append(
            Finding(
                "unreachable-transition",
                "warning",
                step,
                f"no run takes the transition {target}",
                "check the conditions and retries around the step; remove what cannot happen",
            )
        )
    for scope, steps in by_scope.items():
        listed = ", ".join(repr(s) for s in steps)
        findings.append(
            Finding(
                "unreachable-transition",
                "warning",
                scope,
                f"failures of {listed} never reach retry {scope!r}: an inner retry with "
                "no max_attempts and no on_error restarts after every one of them",
                "bound the inner retry (max_attempts, or an on_error that can decline), or "
                f"remove {scope!r}",
            )
        )
    return findings


def check(
    definition: FlowDefinition, *, max_states: int = 100_000, max_items: int = MAX_ITEMS
) -> list[Finding]:
    """Return the design faults of ``definition``, errors and warnings, with fixes.

    Findings (``code``, ``severity``):

    * ``wait-without-timeout`` (warning): a ``wait_for`` may wait forever.
    * ``unbounded-retry`` (warning): a retry with no ``max_attempts``, whose
      restarts only its ``on_error`` handler (or nothing) limits.
    * ``retry-never-restarts`` (warning): a policy with ``max_attempts=1``.
    * ``busy-loop`` (warning): a ``loop_until`` with no step in its group asks
      its condition again at once, over and over.
    * ``hot-loop`` (warning): a ``loop_until`` whose body has steps but no
      ``sleep`` and no ``wait_for`` (nested groups included): nothing paces its
      passes while its condition stays false.
    * ``unreachable-step`` (error), ``unreachable-transition`` (warning): no
      explored run starts the step or takes the transition.
    * ``dead-end`` (error): a reachable state from which no run ends.
    * ``runs-after-end`` (error): a completed or failed state still issues a
      command (a definition whose table leaves the completed event is refused
      when it is built).
    * ``incomplete-analysis`` (warning): the search stopped at ``max_states``;
      reachability findings are then left out.

    >>> import stepflow
    >>> flow = stepflow.named("f").wait_for("ready", bool)
    >>> [(f.code, f.path) for f in check(stepflow.new(flow).definition)]
    [('wait-without-timeout', 'f/readyWaitFor')]

    Flows with ``parallel`` and ``map`` groups are searched through every
    interleaving of their commands (a map's ``items`` handler returning 0 to
    ``max_items`` items): steps inside branches and items, forks, joins and
    the ``no items`` path count for reachability like any other.
    """
    findings = _findings(definition, max_states, max_items)
    order: dict[str, int] = {}
    for event in definition.table:  # definition order: where each scope starts
        order.setdefault(event.partition(":")[2], len(order))
    return sorted(findings, key=lambda f: order.get(f.path, len(order)))


def _findings(definition: FlowDefinition, max_states: int, max_items: int) -> list[Finding]:
    findings = [
        *_waits(definition),
        *_retries(definition),
        *_busy_loops(definition),
        *_hot_loops(definition),
    ]
    cases, search = coverage(definition, max_loops=1, max_states=max_states, max_items=max_items)
    if not search.complete:
        findings.append(
            Finding(
                "incomplete-analysis",
                "warning",
                definition.name,
                f"the search stopped after {max_states} states: reachability was not checked",
                "raise max_states, or check smaller parts of the flow",
            )
        )
        return findings
    findings.extend(
        Finding(
            "unreachable-step",
            "error",
            case.target,
            f"no run reaches step {case.target!r} (nothing leads to {start_event(case.target)!r})",
            "connect the step to the flow, or remove it",
        )
        for case in cases
        if isinstance(case.target, str) and not case.reachable
    )
    missing = [
        case.target
        for case in cases
        if isinstance(case.target, TransitionTarget) and not case.reachable
    ]
    findings.extend(_unreachable_transitions(definition, missing))
    for node in search.dead_ends():
        state = search.states[node]
        findings.append(
            Finding(
                "dead-end",
                "error",
                state.events[0].partition(":")[2],
                f"from {state.events[0]!r} no run can complete or fail",
                "give every loop and wait an exit",
            )
        )
    findings.extend(
        Finding(
            "runs-after-end",
            "error",
            state.events[0].partition(":")[2],
            f"a {state.status} run at {state.events[0]!r} still issues a command",
            "this is a bug of stepflow's core: report it",
        )
        for state in search.states
        if state.is_finished and advance(definition, state)[1]
    )
    return findings
