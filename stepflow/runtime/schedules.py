"""Schedules: start a run of a flow at every fire time of a cron expression.

Theory of operation
-------------------
A :class:`Schedule` names a flow, a cron expression read in an IANA timezone
(parsed by `croniter <https://pypi.org/project/croniter/>`_), the input of its
runs, and two policies. It lives in the store (a row per schedule, see
:mod:`stepflow.stores._schedules`), put there by ``stepflow schedule add`` or by
a worker given it (``Worker(..., schedules=[...])``, which adds it, or updates
its definition, when it starts).

Every worker serving the schedule's flow looks at the schedules in its loop
(:class:`Scheduler`), sleeping until the next fire time like it sleeps until the
next due run. For a fire time that has come it starts a run whose id is
``<schedule>/<fire time>``, the fire time in ISO 8601 UTC
(``daily-report/2026-12-03T08:00:00Z``), then moves the schedule's cursor past it
with a compare-and-swap. The run's id is what makes the fire time start **at most
one run, across any number of workers**: the store refuses a second run with the
same id (:class:`~stepflow.errors.RunExistsError`), and a worker that meets that
refusal knows another one (or itself, before a crash) started the run. Since the
run is started before the cursor moves, a worker dying in between loses nothing:
the next one starts the same id again, is refused, and moves the cursor.

Overlap policy (a fire time that comes while the run of the previous one is
still running, or parked): ``"skip"`` (the default) does not start it (logged);
``"allow"`` starts it anyway; ``"buffer_one"`` starts it as soon as the previous
run ends, and keeps at most one such fire time: later ones are skipped (logged)
until it has started. A buffered run still has its fire time's id.

Catch-up policy (fire times that passed while no worker ran, or while workers
were busy): ``catch_up=None`` (the default) starts only the most recent one;
``catch_up=timedelta(...)`` starts every one missed by less than that, oldest
first, subject to the overlap policy. Older ones are skipped and logged, never
started late. A paused schedule starts nothing; resuming it starts from the
next fire time (the ones passed while it was paused are not caught up).

Daylight saving time follows croniter over :mod:`zoneinfo`: a fire time in the
hour skipped in spring fires when the clocks have moved (``30 2 * * *`` fires at
03:00 that day in Europe/Paris), and one in the hour repeated in autumn fires
at both of its instants (two runs, whose UTC ids differ).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import attrs
from croniter import CroniterError, croniter

from stepflow.clock import Clock, SystemClock
from stepflow.errors import (
    ConfigurationError,
    RunExistsError,
    ScheduleError,
    ScheduleExistsError,
    StaleWriteError,
    UnknownRunError,
)
from stepflow.flow import Flow
from stepflow.runtime.runs import _check_input, start_run
from stepflow.stores._schedules import ScheduleRecord
from stepflow.stores.base import Store

__all__ = [
    "OVERLAP_POLICIES",
    "Overlap",
    "Schedule",
    "Scheduler",
    "add_schedule",
    "fire_time_label",
    "pause_schedule",
    "resume_schedule",
]

log = logging.getLogger("stepflow.schedules")

#: What a schedule does with a fire time that comes while its previous run is running.
Overlap = Literal["skip", "allow", "buffer_one"]

#: The overlap policies, in the order the docs list them.
OVERLAP_POLICIES: tuple[str, ...] = get_args(Overlap)

# The most fire times one schedule starts (or buffers) in one look: a catch-up of
# thousands goes on at the worker's next look, without holding up its loop.
_MOST_PER_LOOK = 100

# How often pause and resume retry a compare-and-swap lost to a worker.
_ATTEMPTS = 10


def fire_time_label(at: float) -> str:
    """Return a fire time as it appears in run ids: ISO 8601, UTC, to the second.

    >>> fire_time_label(1_764_662_400.0)
    '2025-12-02T08:00:00Z'
    """
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _flow_name(flow: Flow | str) -> str:
    return flow.name if isinstance(flow, Flow) else flow


def _check_name(instance: Schedule, attribute: Any, name: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or any(c.isspace() for c in name):
        raise ScheduleError(
            f"a schedule's name is a non-empty str without '/' or spaces (its runs' ids are "
            f"'<name>/<fire time>'), got {name!r}",
            str(name),
        )


@attrs.frozen
class Schedule:
    """A flow to start at every fire time of a cron expression.

    Validated when made: a cron expression croniter cannot parse, an unknown
    timezone, an unknown overlap policy, a negative catch-up or an input that is
    not JSON data raise :class:`~stepflow.errors.ScheduleError` saying why.

    >>> from datetime import datetime
    >>> daily = Schedule("daily-report", "report/v1", cron="0 9 * * *",
    ...                  timezone="Europe/Paris")
    >>> at = daily.next_fire_after(datetime(2026, 7, 1, 12, tzinfo=timezone.utc).timestamp())
    >>> daily.run_id(at)
    'daily-report/2026-07-02T07:00:00Z'

    Args:
        name: The schedule's name, unique in its store; its runs' ids are
            ``<name>/<fire time>``. No ``/`` and no spaces.
        flow: The flow to start (a :class:`~stepflow.Flow`, or its name,
            ``"report/v1"``); a worker serving it starts the runs.
        cron: A cron expression: five fields (minute hour day month weekday), a
            sixth for seconds, or a nickname such as ``@daily``.
        input: The JSON input of every run started.
        timezone: The IANA timezone the expression is read in (``"Europe/Paris"``).
        overlap: ``"skip"``, ``"allow"`` or ``"buffer_one"``: what to do with a
            fire time that comes while the previous run is running (see the
            module's doc).
        catch_up: How far back missed fire times are still started, oldest
            first; ``None`` (the default) starts only the most recent one.

    """

    name: str = attrs.field(validator=_check_name)
    flow: str = attrs.field(converter=_flow_name)
    cron: str = attrs.field(kw_only=True)
    input: Any = attrs.field(default=None, kw_only=True)
    timezone: str = attrs.field(default="UTC", kw_only=True)
    overlap: Overlap = attrs.field(default="skip", kw_only=True)
    catch_up: timedelta | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        name = self.name
        if not isinstance(self.flow, str) or not self.flow:
            raise ScheduleError(
                f"schedule {name!r}: flow is a Flow or a flow name, got {self.flow!r}", name
            )
        try:
            zone = ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
            raise ScheduleError(
                f"schedule {name!r}: unknown timezone {self.timezone!r} ({exc}); use an IANA "
                'name such as "UTC" or "Europe/Paris"',
                name,
            ) from None
        try:
            if not isinstance(self.cron, str):
                raise TypeError(f"a cron expression is a str, not {type(self.cron).__name__}")
            croniter(self.cron, datetime(2000, 1, 1, tzinfo=zone))
        except (CroniterError, ValueError, TypeError, KeyError) as exc:
            raise ScheduleError(
                f"schedule {name!r}: cron expression {self.cron!r} does not parse: {exc}; "
                'write five fields, minute hour day month weekday ("0 9 * * 1-5"), a sixth '
                "for seconds, or a nickname such as @daily",
                name,
            ) from None
        if self.overlap not in OVERLAP_POLICIES:
            raise ScheduleError(
                f"schedule {name!r}: unknown overlap policy {self.overlap!r}; use one of "
                f"{', '.join(OVERLAP_POLICIES)}",
                name,
            )
        if self.catch_up is not None and (
            not isinstance(self.catch_up, timedelta) or self.catch_up < timedelta(0)
        ):
            raise ScheduleError(
                f"schedule {name!r}: catch_up is a timedelta of zero or more, or None (only "
                f"the most recent missed fire time), got {self.catch_up!r}",
                name,
            )
        try:
            _check_input(self.input)
        except ConfigurationError as exc:
            raise ScheduleError(f"schedule {name!r}: {exc}", name) from None

    def next_fire_after(self, when: float) -> float:
        """Return the first fire time strictly after ``when`` (seconds since the epoch)."""
        start = datetime.fromtimestamp(when, ZoneInfo(self.timezone))
        return float(croniter(self.cron, start).get_next(float))

    def fire_times(self, after: float, until: float) -> Iterator[float]:
        """Yield the fire times in ``(after, until]``, in order."""
        at = self.next_fire_after(after)
        while at <= until:
            yield at
            at = self.next_fire_after(at)

    def run_id(self, fire_at: float) -> str:
        """Return the id of the run started for the fire time ``fire_at``."""
        return f"{self.name}/{fire_time_label(fire_at)}"

    def record(self, now: float) -> ScheduleRecord:
        """Return this schedule as a new store row, first firing after ``now``."""
        return ScheduleRecord(
            name=self.name,
            flow=self.flow,
            cron=self.cron,
            timezone=self.timezone,
            input=self.input,
            overlap=self.overlap,
            catch_up=None if self.catch_up is None else self.catch_up.total_seconds(),
            paused=False,
            next_fire_at=self.next_fire_after(now),
        )

    @classmethod
    def of(cls, record: ScheduleRecord) -> Schedule:
        """Return the schedule a store row defines (validated again).

        Raises:
            ScheduleError: the row holds a definition that is not valid.

        """
        return cls(
            record.name,
            record.flow,
            cron=record.cron,
            input=record.input,
            timezone=record.timezone,
            overlap=record.overlap,  # type: ignore[arg-type]  # checked by the constructor
            catch_up=None if record.catch_up is None else timedelta(seconds=record.catch_up),
        )


def add_schedule(store: Store, schedule: Schedule, *, clock: Clock | None = None) -> ScheduleRecord:
    """Add ``schedule`` to ``store``; it first fires at its first fire time from now.

    Raises:
        ScheduleExistsError: a schedule with this name is in the store.

    """
    now = (clock or SystemClock()).now()
    return store.create_schedule(schedule.record(now), now=now)


def _set_paused(store: Store, name: str, paused: bool, clock: Clock | None) -> ScheduleRecord:
    now = (clock or SystemClock()).now()
    for _ in range(_ATTEMPTS):
        record = store.load_schedule(name)
        if record.unreadable is not None:
            raise ScheduleError(record.unreadable, name)
        if record.paused == paused:
            return record
        changed = attrs.evolve(record, paused=paused, buffered_at=None)
        if not paused:
            # Resuming starts from the next fire time: none passed while paused is run.
            changed = attrs.evolve(changed, next_fire_at=Schedule.of(record).next_fire_after(now))
        try:
            return store.save_schedule(changed, expected_version=record.version, now=now)
        except StaleWriteError:
            continue  # a worker moved the cursor meanwhile: read it again
    raise ScheduleError(
        f"schedule {name!r} kept changing while being {'paused' if paused else 'resumed'}; "
        "try again",
        name,
    )


def pause_schedule(store: Store, name: str, *, clock: Clock | None = None) -> ScheduleRecord:
    """Pause a schedule: no worker starts its runs until it is resumed (runs in flight go on).

    A fire time buffered by ``"buffer_one"`` is dropped.

    Raises:
        UnknownScheduleError: no schedule has this name.

    """
    return _set_paused(store, name, True, clock)


def resume_schedule(store: Store, name: str, *, clock: Clock | None = None) -> ScheduleRecord:
    """Resume a paused schedule from its next fire time (missed ones are not started).

    Raises:
        UnknownScheduleError: no schedule has this name.
        ScheduleError: the stored definition is not valid.

    """
    return _set_paused(store, name, False, clock)


def _same_definition(record: ScheduleRecord, wanted: ScheduleRecord) -> bool:
    fields = ("flow", "cron", "timezone", "input", "overlap", "catch_up")
    return all(getattr(record, f) == getattr(wanted, f) for f in fields)


class Scheduler:
    """Fires the schedules of the flows one worker serves; the worker calls :meth:`look`.

    Its methods call the store synchronously: the worker runs them on its store
    thread.

    Args:
        store: Where the schedules and runs live.
        flows: The flows served, by name: only their schedules are fired.
        schedules: Schedules to put in the store (added, or their definitions
            updated) before the first look.
        clock: Where runs' start times are read.
        interval: The longest time between two looks (a schedule added to the
            store by the CLI is seen within it).

    Attributes:
        started: How many runs this scheduler started.
        collisions: How many times the store refused a run because its fire time
            had been started already (by another worker, or before a crash).

    """

    def __init__(
        self,
        store: Store,
        flows: Mapping[str, Flow],
        schedules: Iterable[Schedule],
        *,
        clock: Clock,
        interval: float,
    ) -> None:
        self.store = store
        self.flows = dict(flows)
        self.schedules = tuple(schedules)
        self.clock = clock
        self.interval = interval
        self.started = 0
        self.collisions = 0
        self._registered = not self.schedules
        names = [s.name for s in self.schedules]
        for schedule in self.schedules:
            if names.count(schedule.name) > 1:
                raise ConfigurationError(f"two schedules are named {schedule.name!r}")
            if schedule.flow not in self.flows:
                raise ConfigurationError(
                    f"schedule {schedule.name!r} starts runs of {schedule.flow!r}, which this "
                    f"worker does not serve (it serves {', '.join(self.flows)}); pass that flow "
                    "to the worker too"
                )

    def register(self, now: float) -> None:
        """Put the worker's schedules in the store: add new ones, update changed ones.

        A changed cron expression or timezone restarts the schedule from its next
        fire time; whether it is paused, and its last run, are kept.
        """
        for schedule in self.schedules:
            wanted = schedule.record(now)
            try:
                record = self.store.load_schedule(schedule.name)
            except LookupError:
                try:
                    self.store.create_schedule(wanted, now=now)
                    log.info("added schedule %r (%s)", schedule.name, schedule.cron)
                except ScheduleExistsError:
                    pass  # another worker added it meanwhile
                continue
            if _same_definition(record, wanted):
                continue
            changed = attrs.evolve(
                wanted,
                paused=record.paused,
                last_run_id=record.last_run_id,
                buffered_at=record.buffered_at,
            )
            if (record.cron, record.timezone) == (wanted.cron, wanted.timezone):
                changed = attrs.evolve(changed, next_fire_at=record.next_fire_at)
            try:
                self.store.save_schedule(changed, expected_version=record.version, now=now)
                log.info("updated schedule %r to this worker's definition", schedule.name)
            except StaleWriteError:
                pass  # another worker updated it meanwhile (to the same, presumably)
        self._registered = True

    def look(self, now: float) -> float:
        """Start the runs of the fire times that have come; return when to look next.

        A schedule that cannot be handled (a definition that is not valid, a
        store error) is logged and left for the next look; it never stops the
        others or the worker.
        """
        if not self._registered:
            self.register(now)
        records = self.store.schedules(flows=self.flows)
        if not records and not isinstance(self.clock, SystemClock):
            # No schedule, on a virtual clock (tests): looking again every interval
            # would stop the worker from jumping straight to its next due run.
            return float("inf")
        next_look = now + self.interval
        for record in records:
            if record.paused:
                continue
            if record.unreadable is not None:
                log.error("%s; this worker skips it", record.unreadable)
                continue
            try:
                fired = self._fire(record, now)
            except StaleWriteError:
                next_look = now  # another worker moved it: look again at once
                continue
            except Exception as exc:  # one bad schedule never stops the others
                log.error("schedule %r cannot fire (%s); will try again", record.name, exc)
                continue
            next_look = min(next_look, fired.next_fire_at)
        return next_look

    def _running(self, run_id: str | None) -> bool:
        """Whether the run ``run_id`` is still active (running, cancelling, or parked)."""
        if run_id is None:
            return False
        try:
            return self.store.load(run_id).status in ("running", "cancelling", "parked")
        except UnknownRunError:
            return False

    def _start(self, schedule: Schedule, at: float) -> str:
        """Start the run of fire time ``at`` (unless started already); return its id."""
        run_id = schedule.run_id(at)
        try:
            start_run(
                self.store,
                self.flows[schedule.flow],
                schedule.input,
                run_id=run_id,
                clock=self.clock,
            )
        except RunExistsError:
            self.collisions += 1  # started by another worker, or by us before a crash
        else:
            self.started += 1
            log.info("schedule %r started run %s", schedule.name, run_id)
        return run_id

    def _due(self, schedule: Schedule, first: float, now: float) -> tuple[list[float], float]:
        """Return the fire times from ``first`` to ``now`` to handle, and the next after them.

        Fire times missed beyond the catch-up policy are skipped here (logged).
        """
        if schedule.catch_up is None:
            # The most recent fire time at or before now: only that one.
            latest = schedule.next_fire_after(now)
            previous = croniter(
                schedule.cron, datetime.fromtimestamp(latest, ZoneInfo(schedule.timezone))
            ).get_prev(float)
            due = [max(float(previous), first)]
        else:
            oldest = now - schedule.catch_up.total_seconds()
            start = first if first >= oldest else schedule.next_fire_after(oldest)
            due = []
            at = start
            while at <= now and len(due) < _MOST_PER_LOOK:
                due.append(at)
                at = schedule.next_fire_after(at)
        if not due or due[0] > first:
            log.warning(
                "schedule %r skipped the fire times from %s to before %s: missed by more "
                "than its catch-up policy allows",
                schedule.name,
                fire_time_label(first),
                fire_time_label(due[0]) if due else fire_time_label(now),
            )
        following = schedule.next_fire_after(due[-1] if due else now)
        return due, following

    def _fire(self, record: ScheduleRecord, now: float) -> ScheduleRecord:
        """Handle one schedule's buffered and due fire times; return its row as saved."""
        schedule = Schedule.of(record)
        if schedule.flow not in self.flows:
            return record
        last, buffered = record.last_run_id, record.buffered_at
        if buffered is not None and not self._running(last):
            last, buffered = self._start(schedule, buffered), None
        following = record.next_fire_at
        if record.next_fire_at <= now:
            due, following = self._due(schedule, record.next_fire_at, now)
            for at in due:
                if schedule.overlap == "allow" or not self._running(last):
                    last = self._start(schedule, at)
                elif schedule.overlap == "buffer_one" and buffered is None:
                    buffered = at
                    log.info(
                        "schedule %r: fire time %s waits for run %s to end",
                        schedule.name,
                        fire_time_label(at),
                        last,
                    )
                else:
                    log.warning(
                        "schedule %r skipped fire time %s: run %s is still running (overlap %r)",
                        schedule.name,
                        fire_time_label(at),
                        last,
                        schedule.overlap,
                    )
        changed = attrs.evolve(
            record, next_fire_at=following, last_run_id=last, buffered_at=buffered
        )
        if changed == record:
            return record
        return self.store.save_schedule(changed, expected_version=record.version, now=now)
