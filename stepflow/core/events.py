"""Events from outside a run: the mailbox and ``wait_event``.

An approval, a webhook, a callback: something outside the run happens, and a
``wait_event`` step is waiting for it. The shell delivers it as an
:class:`~stepflow.core.messages.EventReceived` effect, addressed to the run
rather than to a command; the state keeps what it cannot use yet.

Rule 1: the same purity as :func:`~stepflow.core.advance.advance`: an event is an
effect with its time, applied by ``advance``; nothing here reads a clock or
performs I/O, and a refused batch leaves the state as it was.

Rule 2: the mailbox. The events of a batch are appended to ``state.mailbox`` as
``(name, payload)`` pairs, in the batch's order, before anything else in the
batch is applied. An event whose name no ``wait_event`` step of the flow waits
for is not kept (it stays in the journal of the batch, and the sender can be
told; see :func:`stepflow.send_event`). The mailbox holds at most
:data:`MAILBOX_LIMIT` events; a batch that would overflow it is refused whole
with :class:`~stepflow.errors.MailboxFullError`, so a shell delivers at most
:func:`mailbox_room` events per batch. Events reach running runs only: a
finished run refuses them with :class:`~stepflow.errors.EffectError`; a
cancelling one takes them (a ``wait_event`` may run in a cleanup).

Rule 3: taking an event. A position resting at a ``wait_event`` step has an
:class:`~stepflow.core.messages.AwaitEvent` in flight. After the events of a
batch are in the mailbox, each waiting position, in the order of
``state.events``, takes the oldest event of its name (first in, first out per
name; each event is taken once), which answers its ``AwaitEvent`` exactly as a
``HandlerReturned`` carrying the payload would: the payload is kept in
``outputs`` under the step's path (``None`` keeps an earlier value), and the
position moves past the step. A position whose command another effect of the
same batch answers (its timeout) takes no event; the event stays for the next
wait.

Rule 4: reaching a wait. A position that reaches a ``wait_event`` step while
the mailbox holds an event of its name takes it at once and moves on: no
command is issued for the wait. Otherwise it rests there with an ``AwaitEvent``,
which the shell never executes. Resting costs nothing: ``wake_at`` is the
timeout, or ``None`` with only waits for events in flight (see
:func:`resting`), and the run issues no command until an event or its timeout.

Rule 5: timeout. A wait with a ``timeout`` has its ``AwaitEvent.at`` set to the
time it was reached plus the timeout; a
:class:`~stepflow.core.messages.TimerFired` at or after then answers it: the
``on_timeout`` steps run and the flow goes on after the wait, or, without them,
the step fails with :class:`~stepflow.errors.WaitTimeoutError`, handed to the
enclosing retries like any failure. An earlier timer is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stepflow.core._json import NotJSON, freeze_json, thaw_json
from stepflow.core.messages import AwaitEvent, Command, Effect, EventReceived, HandlerReturned
from stepflow.core.state import CANCELLING, RUNNING, State
from stepflow.errors import EffectError, MailboxFullError

if TYPE_CHECKING:
    from stepflow.core.definition import FlowDefinition

__all__ = [
    "MAILBOX_LIMIT",
    "check_event_name",
    "mailbox_room",
    "resting",
    "take",
    "untimed_wait",
    "with_events",
]

#: How many received events a run's state keeps before a wait takes them.
MAILBOX_LIMIT = 100


def mailbox_room(state: State) -> int:
    """Return how many more events ``state``'s mailbox can take in one batch.

    >>> from stepflow import named, new
    >>> from stepflow.core.advance import initial_state
    >>> mailbox_room(initial_state(new(named("f").wait_event("go")).definition))
    100
    """
    return MAILBOX_LIMIT - len(state.mailbox)


def resting(state: State) -> bool:
    """Whether only events can move ``state``: each command in flight waits for one, untimed.

    Such a run has nothing to execute and no time to wake at (its ``wake_at`` is
    ``None`` yet nothing is due): a store should not hand it to a worker until
    an event is sent to it.
    """
    in_flight = state.in_flight
    if not in_flight or (state.status != RUNNING and state.status != CANCELLING):
        return False
    return all(untimed_wait(c) for c in in_flight)


def check_event_name(name: object) -> str:
    """Return ``name`` if it can name an event, else raise a ``ValueError`` saying why.

    >>> check_event_name("approved")
    'approved'
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(
            f"an event name must be a non-empty str without ':', got {name!r:.80}; "
            "name it as the wait_event step that waits for it"
        )
    return name


Mailbox = tuple[tuple[str, Any], ...]


def take(mailbox: Mailbox, name: str) -> tuple[Any, Mailbox] | None:
    """Return the payload of the oldest event ``name`` in ``mailbox`` and the rest, or ``None``."""
    for index, (held, payload) in enumerate(mailbox):
        if held == name:
            return payload, mailbox[:index] + mailbox[index + 1 :]
    return None


def _awaited(definition: FlowDefinition) -> frozenset[str]:
    return frozenset(t.awaits for t in definition.transitions if t.awaits is not None)


def with_events(
    definition: FlowDefinition, state: State, effects: Sequence[Effect], now: float | None
) -> tuple[State, list[Effect]]:
    """Put the events of ``effects`` in the mailbox and let waiting positions take them.

    Returns the state with its new mailbox, and the batch to apply to it: the
    effects that answer commands, plus one ``HandlerReturned`` for each
    ``AwaitEvent`` an event answers (rules 2 and 3).

    Raises:
        EffectError: an event is malformed, or the run is finished.
        MailboxFullError: the mailbox would hold more than :data:`MAILBOX_LIMIT`.

    """
    if state.status != RUNNING and state.status != CANCELLING:
        raise EffectError(
            f"an event reached a {state.status} run of {state.flow!r}; events reach running "
            "(and cancelling) runs only (the store refuses to send them to finished ones)",
            command_id=-1,
        )
    awaited = _awaited(definition)
    mailbox = list(state.mailbox)
    answers: list[Effect] = []
    times: list[float] = []
    for effect in effects:
        if type(effect) is not EventReceived:
            answers.append(effect)
            continue
        name, payload, at = effect
        try:
            check_event_name(name)
            frozen = freeze_json(payload)
        except (ValueError, NotJSON) as exc:
            message = f"{effect!r:.120} cannot be delivered: {exc}"
            raise EffectError(message, command_id=-1) from None
        if at is not None:
            times.append(at)
        if name in awaited:
            mailbox.append((name, frozen))
    if len(mailbox) > MAILBOX_LIMIT:
        raise MailboxFullError(
            f"run {state.run_id or state.flow!r} holds {len(state.mailbox)} events no step has "
            f"taken yet; {len(mailbox) - len(state.mailbox)} more would pass the limit of "
            f"{MAILBOX_LIMIT}: deliver at most mailbox_room(state) per batch",
            command_id=-1,
        )
    at = max(times) if times else now
    answered = {e[0] for e in answers}
    held = tuple(mailbox)
    for command in state.in_flight:
        if type(command) is AwaitEvent and command[0] not in answered:
            found = take(held, command[5])
            if found is not None:
                payload, held = found
                answers.append(HandlerReturned(command[0], thaw_json(payload), at))
    return state._replace(mailbox=held), answers


def untimed_wait(command: Command) -> bool:
    """Whether ``command`` waits for an event with no timeout: nothing can carry it out."""
    return type(command) is AwaitEvent and command[4] is None
