"""Versions of a flow: what changed between two, and how runs move from one to the next.

Every state carries its definition's fingerprint. A state saved under another
fingerprint of the *same* flow name is adopted as it is when the new definition
still has every event it holds, with the same meaning
(:func:`stepflow.core.advance.check_state`); otherwise loading it raises
:class:`~stepflow.errors.IncompatibleDefinition`, naming what is missing.

Versioned names (``deploy/v1``, ``deploy/v2``) make the step explicit. A worker
serving both keeps each run on its own version. A flow can instead declare
:class:`Migration` rules from earlier versions: a worker serving only ``deploy/v2``
then adopts ``deploy/v1`` runs, renaming their events (``start:deploy/v1/x`` to
``start:deploy/v2/x``), applying the migration's own mapping and pure function,
and checking the result against the new definition. :func:`diff` tells before a
deploy whether states of the old version fit the new one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import attrs
from pyrsistent import pmap

from stepflow.core.checks import check_state
from stepflow.core.definition import FlowDefinition
from stepflow.core.messages import AwaitEvent, CallHandler, Command, Wake
from stepflow.core.state import ErrorRecord, State
from stepflow.errors import FlowMismatchError

__all__ = ["DefinitionDiff", "Migration", "diff", "migrate"]


def _frozen_mapping(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


@attrs.frozen
class Migration:
    """How runs of an earlier version of a flow become runs of this one.

    Attributes:
        source: The earlier version's flow name (``"deploy/v1"``).
        events: Old events to new ones, for positions that moved or were
            renamed (``{"start:deploy/v1/push": "start:deploy/v2/publish"}``).
            Any event not listed is renamed by its root prefix alone.
        transform: A pure function applied to the renamed state last, for what
            a mapping cannot say (outputs to reshape, a position to pick).

    """

    source: str
    events: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_mapping)
    transform: Callable[[State], State] | None = None


def _renamer(old: str, new: str, events: Mapping[str, str]) -> Callable[[str], str]:
    """Rename an event or a scope path of flow ``old`` into flow ``new``."""

    def rename(text: str) -> str:
        if text in events:
            return events[text]
        kind, colon, path = text.partition(":")
        if not colon:  # a scope path, not an event
            kind, path = "", text
        if path == old or path.startswith(old + "/"):
            path = new + path[len(old) :]
        return f"{kind}{colon}{path}"

    return rename


def migrate(definition: FlowDefinition, state: State, migration: Migration) -> State:
    """Return ``state`` (of flow ``migration.source``) as a state of ``definition``.

    Pure. Events, step paths, output keys, retry attempts and the error's step
    are renamed (explicit ``events`` first, the root prefix otherwise); a command
    in flight keeps its id and takes the new step of its position; then
    ``migration.transform`` runs, and the result is checked against the
    definition.

    Raises:
        FlowMismatchError: ``state`` is not of ``migration.source``.
        IncompatibleDefinition: the migrated state holds events or commands the
            definition does not have; the message names them.

    """
    if state.flow != migration.source:
        raise FlowMismatchError(
            f"the migration is from {migration.source!r}, but the state is of {state.flow!r}",
            expected=migration.source,
            actual=state.flow,
        )
    rename = _renamer(migration.source, definition.name, migration.events)
    events = tuple(rename(e) for e in state.events)

    def command(c: Command) -> Command:
        event = rename(c.event)
        if type(c) is Wake:
            node_step = _step_at(definition, event)
            return Wake(c.id, "sleep", node_step or rename(c.step), event, c.at)
        if type(c) is AwaitEvent:
            node_step = _step_at(definition, event)
            return AwaitEvent(c.id, c.kind, node_step or rename(c.step), event, c.at, c.name)
        assert type(c) is CallHandler
        step = rename(c.step)
        if c.kind != "on_error":
            step = _step_at(definition, event) or step
        error = None if c.error is None else _renamed_error(c.error, rename)
        return CallHandler(c.id, c.kind, step, event, error)

    migrated = state._replace(
        flow=definition.name,
        events=events,
        in_flight=tuple(command(c) for c in state.in_flight),
        outputs=pmap({rename(k): v for k, v in state.outputs.items()}),
        attempts=pmap({rename(k): v for k, v in state.attempts.items()}),
        error=None if state.error is None else _renamed_error(state.error, rename),
    )
    if migration.transform is not None:
        migrated = migration.transform(migrated)
    return check_state(definition, migrated)


def _step_at(definition: FlowDefinition, event: str) -> str | None:
    transition = definition.table.get(event)
    return None if transition is None or transition.is_static else transition.step


def _renamed_error(error: ErrorRecord, rename: Callable[[str], str]) -> ErrorRecord:
    return ErrorRecord(error.type, error.message, rename(error.step))


@attrs.frozen
class DefinitionDiff:
    """What changed from one definition to another, and whether old states fit.

    Attributes:
        old: The old definition's name and fingerprint.
        new: The new definition's name and fingerprint.
        added: Events only the new definition has.
        removed: Events of the old definition the new one does not have (after
            renaming the root, when the names differ).
        changed: Resting events both have whose step or handler kind differs.
        compatible: Whether every state of the old definition can continue
            under the new one (every place a run can rest is kept, with the same
            meaning). When the names differ, through a plain :class:`Migration`.

    """

    old: tuple[str, str]
    new: tuple[str, str]
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    compatible: bool

    @property
    def same(self) -> bool:
        """Whether the two definitions are the same (same fingerprint)."""
        return self.old[1] == self.new[1]


def diff(
    old: FlowDefinition, new: FlowDefinition, migration: Migration | None = None
) -> DefinitionDiff:
    """Compare two versions of a flow, as a deploy gate would.

    When the names differ, old events are renamed into the new flow as
    ``migration`` (default: ``Migration(old.name)``) would rename them.
    """
    mapping: Mapping[str, str] = {} if migration is None else migration.events
    rename = _renamer(old.name, new.name, mapping)
    old_events = {rename(e): e for e in old.events}
    new_events = set(new.events)
    added = tuple(e for e in new.events if e not in old_events)
    removed = tuple(old_events[e] for e in old_events if e not in new_events)
    changed: list[str] = []
    resting_removed: list[str] = []
    for t in old.handler_transitions():
        renamed = rename(t.source)
        after = new.table.get(renamed)
        if after is None or after.is_static:
            resting_removed.append(t.source)
        elif (
            after.kind != t.kind
            or any(rename(s) not in after.retry_scopes for s in t.retry_scopes)
            or after.cases != t.cases
        ):
            # A command's step follows its position; its kind, the retries
            # around it (an on_error in flight names one) and, for a switch,
            # the case values its answer is matched with must stay the same.
            changed.append(t.source)
    done_kept = rename(old.completed_event) == new.completed_event
    return DefinitionDiff(
        (old.name, old.fingerprint),
        (new.name, new.fingerprint),
        added,
        removed,
        tuple(changed),
        not changed and not resting_removed and done_kept,
    )
