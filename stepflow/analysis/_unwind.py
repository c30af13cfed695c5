"""What a move entered when cleanups, compensations or a cancellation decide the way.

``finally_`` groups, sagas and cancellations (:mod:`stepflow.core.cleanup`)
add transitions a position passes without a command, whose destination the
state decides. :func:`stepflow.advance` takes them; this module only retraces,
from the transition table and the states before and after a move, which
events the position entered on the way, for the happenings invariants watch
and the table entries :func:`stepflow.analysis.paths` counts. It mirrors the
rules of :mod:`stepflow.core.cleanup`:

* ``"finally"`` and ``"saga"`` (entering the group) go on to its steps; what
  an earlier pass recorded for the group is forgotten (Rules 3 and 4).
* ``"leave"`` (a finally's cleanup completed) goes on with the failure the
  cleanup ran for, to the failure scopes around the group, while the run is
  running and one is recorded; else to the group's end (Rule 3).
* ``"compensate"`` rests while the saga has a ``compensate`` command in flight
  there after the move; else the saga passes on what it ran for: a failure to
  the failure scopes around it, a cancellation on outward (Rule 5).
* A failure goes to the innermost failure scope that takes it: a retry that
  restarted (its attempts went up) or asked its ``on_error`` handler, a catch
  that took it (its record changed), a finally's cleanup or a saga's
  compensation (always); with none, the run failed there. While cancelling,
  only the scopes inside the cleanup the position runs in take it (Rule 9).
* While cancelling, the answer of a command outside every cleanup unwinds the
  position from that command's own step; a position that reaches a transition
  outside every cleanup (a step, the flow's end, a group's enter or a finally's
  leave) unwinds from there instead, into the innermost finally or saga around it,
  without entering that step or group; with none left the run is
  ``cancelled`` (Rule 8).
* A position reaching a ``wait_event`` whose event the mailbox held (an event
  sent early, taken in this move) passes it (Rule 4 of
  :mod:`stepflow.core.events`).

Runs of one position only: in a flow with groups, the cleanup transitions are
followed as far as the table alone says (see :func:`_model._walk`).
"""

from __future__ import annotations

import json
from collections import Counter

from stepflow.core.choice import case_key
from stepflow.core.cleanup import is_cancellation, pending_error
from stepflow.core.definition import FlowDefinition, start_event, template_of
from stepflow.core.messages import Command
from stepflow.core.state import CANCELLED, CANCELLING, ErrorRecord, State

__all__ = ["Unwinder", "retrace"]

_CLEANUP_START = {"finally": "/cleanup", "saga": "/compensate"}


class Unwinder:
    """Retrace one move of a run of one position through the table (see the module)."""

    def __init__(self, definition: FlowDefinition, before: State, after: State) -> None:
        self.definition, self.before, self.after = definition, before, after
        self.cancelling = before.status == CANCELLING
        self.pending: dict[str, ErrorRecord | None] = {}
        self.taken: list[tuple[str, str]] = []
        self.out: list[str] = []
        names = Counter(name for name, _ in before.mailbox)
        names.subtract(name for name, _ in after.mailbox)
        self.mail = names

    # -- the state's record of what each cleanup runs for -------------------------

    def error_of(self, scope: str) -> ErrorRecord | None:
        """Return what cleanup ``scope`` runs for at this point of the move."""
        if scope in self.pending:
            return self.pending[scope]
        return pending_error(self.before.outputs.get(scope))

    def take(self, source: str, destination: str) -> None:
        """Count the table entry ``source -> destination``, if the table lists it."""
        transition = self.definition.table.get(template_of(source))
        destination = template_of(destination)
        if transition is not None and any(d.event == destination for d in transition.destinations):
            self.taken.append((template_of(source), destination))

    def conc(self, text: str, source: str) -> str:
        from stepflow.analysis._model import _conc

        return _conc(self.definition, text, source)

    def rests(self, event: str) -> bool:
        """Whether the position rests at ``event`` after the move (a command for it)."""
        return any(c.event == event for c in self.after.in_flight)

    # -- walking ------------------------------------------------------------------

    def walk(self, event: str) -> None:
        """Enter ``event``; follow where the position goes until it rests or stops."""
        definition = self.definition
        table = definition.table
        while True:
            template = template_of(event)
            t = table.get(template)
            if t is None:  # the flow's end: a cancelling run is cancelled there instead
                if not self.cancelling:
                    self.out.append(event)
                return
            kind = t.kind
            onward = t.destinations[0].event
            if kind == "static":
                self.out.append(event)
                event = self.conc(onward, event)
                continue
            node = definition._node(event)
            if self.cancelling and node.shield < 0:
                # Outside every cleanup: it unwinds from here instead (a group is
                # not entered, a step not started; a cleanup that ended was).
                if kind == "leave":
                    self.out.append(event)
                self.unwind(event, 0)
                return
            if kind in _CLEANUP_START:
                self.pending[self.conc(str(t.step), event)] = None
                self.take(template, onward)
                self.out.append(event)
                event = self.conc(onward, event)
                continue
            if kind == "leave":
                self.out.append(event)
                error = self.error_of(self.conc(str(t.step), event))
                if error is not None and not self.cancelling:
                    self.fail(event, 0, error)
                    return
                self.take(template, onward)
                event = self.conc(onward, event)
                continue
            self.out.append(event)
            if kind == "compensate":
                if not self.rests(event):
                    self.pass_saga(event)
                return
            if kind == "wait_event" and self.mail[t.awaits or ""] > 0:
                self.mail[t.awaits or ""] -= 1  # taken from the mailbox at once
                self.take(template, onward)
                event = self.conc(onward, event)
                continue
            return  # it rests here

    def into(self, source: str, scope: str, error: ErrorRecord | None) -> None:
        """Run the cleanup (or compensations) of ``scope`` for ``error``."""
        kind = self.definition._cleanups[template_of(scope)]
        start = start_event(scope + _CLEANUP_START[kind])
        self.take(source, start)
        self.pending[scope] = error
        self.walk(start)

    def unwind(self, event: str, index: int) -> None:
        """Unwind a cancellation from the position ``event`` (cleanup.cancel_from)."""
        self.cancelling = True
        node = self.definition._node(event)
        record = self.after.error or self.before.error
        for scope in node.failures[index:]:
            if template_of(scope) in self.definition._cleanups:
                self.into(event, scope, record)
                return

    def pass_saga(self, event: str) -> None:
        """Pass on what a saga with nothing left to compensate ran for."""
        node = self.definition._node(event)
        error = self.error_of(node.step)
        index = 1 if node.failures[:1] == (node.step + "/compensate",) else 0  # its own retry
        shielded = self.definition._node(start_event(node.step)).shield >= 0
        if (error is not None and is_cancellation(error)) or (self.cancelling and not shielded):
            self.unwind(event, index)
        elif error is not None:
            self.fail(event, index, error)

    def fail(self, event: str, index: int, error: ErrorRecord) -> None:
        """Hand ``error`` to the failure scopes of ``event`` from ``index`` on."""
        definition, before, after = self.definition, self.before, self.after
        node = definition._node(event)
        scopes = node.failures
        limit = len(scopes)
        if self.cancelling:
            if node.shield < 0:
                self.unwind(event, 0)
                return
            limit = node.shield
        for scope in scopes[index:limit]:
            pattern = template_of(scope)
            if pattern in definition._rules:
                if after.attempts.get(scope, 0) > before.attempts.get(scope, 0):
                    self.take(event, start_event(pattern))
                    self.walk(start_event(scope))
                    return
                if any(c.kind == "on_error" and c.step == scope for c in after.in_flight):
                    return  # its on_error handler is asked; the position stays
            elif pattern in definition._cleanups:
                self.into(event, scope, error)
                return
            elif after.outputs.get(scope) is not before.outputs.get(scope):
                handler = start_event(scope + "/handler")
                self.take(event, handler)
                self.walk(handler)
                return


def _error(command: Command, outcome: str) -> ErrorRecord:
    """Return the error a failing ``outcome`` recorded (its type is what the rules read)."""
    if outcome == "timed_out":
        return ErrorRecord("stepflow.errors.WaitTimeoutError", "timed out", command.step)
    return ErrorRecord(outcome.partition(":")[2] or "Exception", "simulated failure", command.step)


def _destination(definition: FlowDefinition, command: Command, outcome: str) -> str | None:
    """Return the destination ``outcome`` chooses, ``""`` to stay put, ``None`` for a failure."""
    transition = definition.table[template_of(command.event)]
    destinations = transition.destinations
    kind = command.kind
    if kind == "switch" and outcome.startswith("route:"):
        key = case_key(json.loads(outcome.partition(":")[2]))
        cases = transition.cases
        return destinations[cases.index(key) if key in cases else len(cases)].event
    if (kind, outcome) in (("wait_for", "false"), ("sleep_until", "past")):
        return ""
    if outcome in ("returned", "fired", "true", "received") and kind not in _SPECIAL:
        return destinations[0].event
    if outcome == "false" and kind not in _SPECIAL:
        return destinations[1].event
    if kind == "wait_event" and outcome == "timed_out" and definition._node(command.event).on_false:
        return destinations[1].event
    return None


# Commands whose answers the walker decides itself.
_SPECIAL = ("on_error", "compensate")


def retrace(
    definition: FlowDefinition,
    before: State,
    command: Command | None,
    outcome: str,
    after: State,
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Return the events a move entered and the table entries it took.

    ``command`` is the command answered with ``outcome``; ``None`` for a
    cancellation (``outcome`` ``"requested"``) or an event sent early.
    """
    walker = Unwinder(definition, before, after)
    if command is None:
        kept = after.in_flight == before.in_flight and after.events == before.events
        if outcome == "requested" and not kept:
            walker.unwind(before.events[0], 0)
        return tuple(walker.out), tuple(walker.taken)
    event = command.event
    destination = _destination(definition, command, outcome)
    stays = after.events == before.events and after.status == before.status
    if walker.cancelling and definition._node(event).shield < 0:
        # The answer of a command in flight at the request is recorded, and the
        # position unwinds from its own step (cleanup Rule 8).
        walker.unwind(event, 0)
    elif destination == "":
        if stays or not walker.cancelling:
            if command.kind == "wait_for":
                walker.take(event, definition.table[template_of(event)].destinations[1].event)
            return (), tuple(walker.taken)
        walker.unwind(event, 0)
    elif destination is not None:
        walker.take(event, destination)
        walker.walk(walker.conc(destination, event))
    elif command.kind == "on_error":
        scope = command.step
        if after.attempts.get(scope, 0) > before.attempts.get(scope, 0):
            walker.take(event, start_event(template_of(scope)))
            walker.walk(start_event(scope))
        else:
            error = getattr(command, "error", None) if outcome == "false" else None
            node = definition._node(event)
            walker.fail(event, node.failures.index(scope) + 1, error or _error(command, outcome))
    elif command.kind == "compensate" and outcome == "returned":
        if not walker.rests(event):
            walker.pass_saga(event)
    else:
        walker.fail(event, 0, _error(command, outcome))
    out = tuple(walker.out)
    if out and after.status not in ("failed", CANCELLED) and out[-1] != after.events[0]:
        raise AssertionError(
            f"{command.kind} {command.step!r} answered {outcome!r} should rest at {out[-1]!r} "
            f"by the table, but advance moved to {after.events[0]!r}"
        )
    return out, tuple(walker.taken)
