"""The README's demo: a fleet deployed region by region, run durably.

``stepflow demo`` deploys a fleet of applications (36 by default) through
``deploy/v2``, the go-stepflow seed's deployment pipeline with its rollout
fanned out over regions, against simulated external systems that take real time:

* an **actual-state collector** whose jobs finish a second or two after they
  start, and which is sometimes flaky: it raises now and then, and a ``retry``
  group with a :class:`~stepflow.RetryPolicy` starts the collection again;
* a **GitOps repository** whose pull requests merge a few seconds after they
  are opened;
* a **deployment agent** that, once the pull request merged, rolls the new
  version out in each of the application's three or four regions, one replica
  at a time. The regions are the items of a ``map`` (taken from the run's
  input) that rolls out, verifies and validates :data:`REGION_CONCURRENCY`
  regions at a time, so each run has several commands in flight; the live
  display counts each application's regions (``regions 2/4``) and the summary
  the regions deployed.

Each application is one run in a SQLite file (``./stepflow.db`` unless
``--db`` says otherwise), driven by a :class:`~stepflow.Worker`. Interrupt the
demo (Ctrl-C, SIGTERM, even SIGKILL) and run it again: it resumes every run
where its last saved step left it, re-issuing exactly the region steps that
were in flight, each with its own idempotency key.

Theory of operation
-------------------
The simulated systems keep no state of their own: everything they answer is a
pure function of the run's input, the outputs earlier steps saved (when a
collection started and is ready, when a pull request was opened and merges,
when a region's rollout started) and ``ctx.now``. What the systems did is
therefore exactly as durable as the run's state, and a restarted demo sees the
same world. Flakiness is drawn from a hash of the command's idempotency key, so
a re-executed command behaves as it did the first time, and it stops after the
second attempt of a retry group, so every run completes.

Rule: the flow definition does not depend on ``speed`` (poll intervals, timeouts
and retry policies are fixed), so a demo resumed at another speed still loads
its runs; ``speed`` only scales the delays of the simulated systems.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import attrs
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

import stepflow
from stepflow.cli import STATUS_STYLES
from stepflow.codec import loads, loads_batch
from stepflow.core.messages import HandlerRaised
from stepflow.core.state import State
from stepflow.errors import ConfigurationError, RunExistsError, StepflowError
from stepflow.flow import Flow
from stepflow.runtime.context import RunContext
from stepflow.runtime.runs import start_run
from stepflow.runtime.worker import StepReport, Worker
from stepflow.stores import MemoryStore, SQLiteStore, open_store
from stepflow.stores.base import RunRecord, Store

__all__ = [
    "COLLECTOR_RETRY",
    "EARLIER_FLOW_NAMES",
    "FLOW_NAME",
    "REGIONS_OUTPUT",
    "REGION_CONCURRENCY",
    "AppSummary",
    "CollectorUnavailable",
    "DemoResult",
    "DeploymentMismatch",
    "Systems",
    "build_flow",
    "demo_inputs",
    "flow",
    "is_demo_run",
    "run_demo",
]

#: The pipeline's versioned name. ``deploy/v1`` was the go-stepflow seed's
#: pipeline as it is; ``v2`` rolls the merged version out region by region.
FLOW_NAME = "deploy/v2"

#: Names of earlier versions of the demo's flow (their runs are not this demo's).
EARLIER_FLOW_NAMES = ("deploy/v1",)

#: How many regions of one application are rolled out at once.
REGION_CONCURRENCY = 2

#: How the collection steps are retried when the collector flakes.
COLLECTOR_RETRY = stepflow.RetryPolicy(
    max_attempts=5, initial_interval=0.5, backoff_coefficient=2.0, max_interval=4.0, jitter=0.2
)

# Outputs are kept under the scope path of the ``do`` step that returned them;
# inside the regions map, under the item's scope ``.../regionsMap/steps[i]``.
_PRE = f"{FLOW_NAME}/collectPreDeployStateRetry/getPreActualState"
_PR = f"{FLOW_NAME}/deployCase/steps/createDeployRequest"
#: Where the regions map keeps its output: each region's validation, in region order.
REGIONS_OUTPUT = f"{FLOW_NAME}/deployCase/steps/regionsMap"

_SERVICES = (
    "billing", "search", "checkout", "catalog", "payments", "ledger", "auth", "profile",
    "inventory", "shipping", "pricing", "reviews", "orders", "media", "notify", "gateway",
    "reports", "ads",
)  # fmt: skip
_REGIONS = ("eu-west", "us-east", "ap-south", "us-west", "eu-north", "ap-east")


def _in_region(ctx: RunContext, step: str) -> str:
    """Return the output key of ``step`` (a path inside a region's steps) for ``ctx``'s region."""
    return f"{REGIONS_OUTPUT}/steps[{ctx.index}]/{step}"


_SYNC = "syncRegion"
_POST = "collectRegionStateRetry/getRegionActualState"


class CollectorUnavailable(RuntimeError):
    """The actual-state collector flaked: the call may simply be tried again."""


class DeploymentMismatch(RuntimeError):
    """After a deployment the application does not run the desired version."""


def _unit(*parts: object) -> float:
    """Return a number in ``[0, 1)`` drawn deterministically from ``parts``."""
    digest = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class Systems:
    """The simulated external systems: collector, GitOps repository, deployment agent.

    Every answer is computed from the run's input, its outputs and ``ctx.now``
    (see the module's theory of operation), so an instance can be created
    afresh by every process. ``notes`` holds the latest thing each run's
    handlers reported, for display only.

    Args:
        speed: Scales every delay of the systems (``0.1`` is ten times faster).

    """

    def __init__(self, speed: float = 1.0) -> None:
        if not speed > 0:
            raise ConfigurationError(f"speed must be > 0, got {speed!r}")
        self.speed = speed
        self.notes: dict[str, str] = {}

    def note(self, ctx: RunContext, text: str) -> None:
        """Record what ``ctx``'s run is doing, for the progress display."""
        self.notes[ctx.run_id] = text

    async def call(self, ctx: RunContext) -> None:
        """Wait as long as a call to an external system takes (50-200 ms at speed 1)."""
        await asyncio.sleep(self.speed * (0.05 + 0.15 * _unit(ctx.idempotency_key, "latency")))

    # -- the actual-state collector -------------------------------------------

    def start_collection(self, ctx: RunContext, phase: str) -> dict[str, Any]:
        """Start a collection job (of the whole app, or of ``ctx.item``'s region); return it.

        Raises:
            CollectorUnavailable: now and then, in the first two attempts.

        """
        flaky = {1: 0.2, 2: 0.1}.get(ctx.attempt, 0.0)
        if _unit(ctx.idempotency_key, "start") < flaky:
            self.note(ctx, "collector flaked")
            raise CollectorUnavailable(f"collector did not accept the {phase} job; try again")
        if ctx.item is None:  # the whole application, before deploying
            delay = self.speed * (1.0 + 1.5 * _unit(ctx.run_id, phase, "collect"))
            self.note(ctx, "collecting")
            job = f"{ctx.run_id}/{phase}"
        else:  # one region, after its rollout
            delay = self.speed * (0.5 + 0.8 * _unit(ctx.run_id, ctx.item, "collect"))
            self.note(ctx, f"{ctx.item} verifying")
            job = f"{ctx.run_id}/{ctx.item}/{phase}"
        return {"job": job, "started_at": ctx.now, "ready_at": ctx.now + delay}

    def collection_ready(self, ctx: RunContext, job: Mapping[str, Any]) -> bool:
        """Poll a collection job.

        Raises:
            CollectorUnavailable: now and then, in the first two attempts.

        """
        if ctx.attempt <= 2 and _unit(ctx.idempotency_key, round(ctx.now, 1)) < 0.02:
            self.note(ctx, "collector lost job")
            raise CollectorUnavailable(f"collector lost job {job['job']!r}; start it again")
        return bool(ctx.now >= job["ready_at"])

    def version_seen(self, ctx: RunContext, job: Mapping[str, Any]) -> str:
        """Return the version the collection job saw running (in ``ctx.item``'s region)."""
        at = float(job["started_at"])
        if ctx.index is not None:
            rollout = ctx.outputs.get(_in_region(ctx, _SYNC))
            if rollout is not None and self.replicas_updated(rollout, at) == rollout["replicas"]:
                return str(ctx.input["desired"])
        return str(ctx.input["running"])

    # -- the GitOps repository and the deployment agent -------------------------

    def open_pull_request(self, ctx: RunContext) -> dict[str, Any]:
        """Open the version-bump pull request; return it (kept in the outputs)."""
        number = 100 + int(900 * _unit(ctx.idempotency_key, "pr"))
        merges_at = ctx.now + self.speed * (3.5 + 4.5 * _unit(ctx.run_id, "merge"))
        self.note(ctx, f"PR #{number} opened")
        return {"pr": number, "opened_at": ctx.now, "merges_at": merges_at}

    def merged(self, ctx: RunContext, pr: Mapping[str, Any]) -> bool:
        """Whether the pull request has merged."""
        done = bool(ctx.now >= pr["merges_at"])
        self.note(ctx, f"PR #{pr['pr']} {'merged' if done else 'review'}")
        return done

    def sync_region(self, ctx: RunContext) -> dict[str, Any]:
        """Ask the deployment agent to roll the merged version out in ``ctx.item``'s region.

        The answer records how the agent rolls it out, one replica at a time,
        so the region's rollout follows from the run's outputs.
        """
        region = str(ctx.item)
        self.note(ctx, f"{region} syncing")
        return {
            "region": region,
            "started_at": ctx.now,
            "replicas": int(ctx.input["replicas"]),
            "replica_seconds": self.speed * (0.6 + 0.5 * _unit(ctx.run_id, region, "replica")),
        }

    def replicas_updated(self, rollout: Mapping[str, Any], now: float) -> int:
        """How many replicas of a region run the new version at ``now``."""
        rolled = int((now - rollout["started_at"]) / rollout["replica_seconds"])
        return int(max(0, min(rolled, rollout["replicas"])))


_DEFAULT_SYSTEMS = Systems()


def _systems(ctx: RunContext) -> Systems:
    """Return the worker's systems, or a default (``stepflow worker stepflow.demo:flow``)."""
    return ctx.app if isinstance(ctx.app, Systems) else _DEFAULT_SYSTEMS


# -- the handlers ----------------------------------------------------------------

Handler = Callable[[RunContext], Awaitable[Any]]


def get_actual_state(phase: str) -> Handler:
    """Return a ``do`` handler that starts a ``phase`` collection job."""

    async def start(ctx: RunContext) -> dict[str, Any]:
        systems = _systems(ctx)
        await systems.call(ctx)
        return systems.start_collection(ctx, phase)

    return start


def is_actual_state_collected(step: Callable[[RunContext], str]) -> Handler:
    """Return a ``wait_for`` condition polling the job of the ``do`` step ``step(ctx)``."""

    async def poll(ctx: RunContext) -> bool:
        systems = _systems(ctx)
        await systems.call(ctx)
        return systems.collection_ready(ctx, ctx.outputs[step(ctx)])

    return poll


async def should_deploy(ctx: RunContext) -> bool:
    """Deploy when the version collected before deploying is not the desired one."""
    systems = _systems(ctx)
    actual, desired = systems.version_seen(ctx, ctx.outputs[_PRE]), ctx.input["desired"]
    systems.note(
        ctx,
        f"{actual} -> {desired}" if actual != desired else f"already at {desired}",
    )
    return bool(actual != desired)


async def create_deploy_request(ctx: RunContext) -> dict[str, Any]:
    """Open the GitOps pull request bumping the version."""
    systems = _systems(ctx)
    await systems.call(ctx)
    return systems.open_pull_request(ctx)


async def is_deploy_request_accepted(ctx: RunContext) -> bool:
    """Whether the pull request merged."""
    systems = _systems(ctx)
    await systems.call(ctx)
    return systems.merged(ctx, ctx.outputs[_PR])


def target_regions(ctx: RunContext) -> list[str]:
    """Return the regions map's items: the regions the application runs in (its input)."""
    return [str(region) for region in ctx.input["regions"]]


async def sync_region(ctx: RunContext) -> dict[str, Any]:
    """Start the rollout of the merged version in ``ctx.item``'s region."""
    systems = _systems(ctx)
    await systems.call(ctx)
    return systems.sync_region(ctx)


async def is_region_live(ctx: RunContext) -> bool:
    """Report a region's rollout; done once every replica there runs the new version."""
    systems = _systems(ctx)
    await systems.call(ctx)
    rollout = ctx.outputs[_in_region(ctx, _SYNC)]
    live = systems.replicas_updated(rollout, ctx.now)
    systems.note(ctx, f"{ctx.item} {live}/{rollout['replicas']}")
    return live == int(rollout["replicas"])


async def validate_region(ctx: RunContext) -> dict[str, Any]:
    """Check the version collected in ``ctx.item``'s region; return the region's result.

    Raises:
        DeploymentMismatch: the region does not run the desired version.

    """
    systems = _systems(ctx)
    actual, desired = (
        systems.version_seen(ctx, ctx.outputs[_in_region(ctx, _POST)]),
        ctx.input["desired"],
    )
    if actual != desired:
        raise DeploymentMismatch(
            f"{ctx.input['app']} runs {actual} in {ctx.item} after deploying {desired}"
        )
    systems.note(ctx, f"{ctx.item} at {actual}")
    return {"region": ctx.item, "index": ctx.index, "version": actual}


async def validate_post_deploy_state(ctx: RunContext) -> dict[str, Any]:
    """Check the regions map's output: every region, in order, runs the desired version.

    Raises:
        DeploymentMismatch: a region is missing, out of order, or at another version.

    """
    systems = _systems(ctx)
    results, desired = ctx.outputs[REGIONS_OUTPUT], ctx.input["desired"]
    regions = [result["region"] for result in results]
    if regions != list(ctx.input["regions"]):
        raise DeploymentMismatch(
            f"{ctx.input['app']} deployed to {regions}, not {ctx.input['regions']}"
        )
    behind = [result["region"] for result in results if result["version"] != desired]
    if behind:
        raise DeploymentMismatch(f"{ctx.input['app']} is not at {desired} in {behind}")
    systems.note(
        ctx, f"deployed {desired} to {len(regions)} regions (PR #{ctx.outputs[_PR]['pr']})"
    )
    return {"version": desired, "regions": regions}


def _collect(step: str, handler: Handler, job: Callable[[RunContext], str]) -> stepflow.Steps:
    """Build a collection group: start a job, wait for it (retried when the collector flakes)."""
    return (
        stepflow.steps()
        .do(step, handler)
        .wait_for(f"waitFor{step[3:]}", is_actual_state_collected(job), every=0.25, timeout=30)
    )


def build_flow() -> Flow:
    """Compile the ``deploy/v2`` pipeline with the demo's handlers.

    The seed's pipeline, with the rollout fanned out: once the pull request has
    merged, a ``map`` over the application's regions rolls each one out,
    verifies and validates it, :data:`REGION_CONCURRENCY` regions at a time; the
    last step checks the map's output (one result per region, in order).
    """
    region = (
        stepflow.steps()
        .do(_SYNC, sync_region)
        .wait_for("monitorRegionRollout", is_region_live, every=0.3, timeout=120)
        .retry(
            "collectRegionState",
            COLLECTOR_RETRY,
            _collect(
                "getRegionActualState",
                get_actual_state("postDeploy"),
                lambda ctx: _in_region(ctx, _POST),
            ),
        )
        .do("validateRegion", validate_region)
    )
    return stepflow.new(
        stepflow.named(FLOW_NAME)
        .retry(
            "collectPreDeployState",
            COLLECTOR_RETRY,
            _collect("getPreActualState", get_actual_state("preDeploy"), lambda ctx: _PRE),
        )
        .case(
            "deploy",
            should_deploy,
            stepflow.steps()
            .do("createDeployRequest", create_deploy_request)
            .wait_for(
                "waitForAcceptedDeployRequest", is_deploy_request_accepted, every=0.5, timeout=120
            )
            .map("regions", target_regions, region, max_concurrency=REGION_CONCURRENCY)
            .do("validatePostDeployActualState", validate_post_deploy_state),
        )
    )


#: The compiled pipeline: ``stepflow worker stepflow.demo:flow`` serves it.
flow = build_flow()


def demo_inputs(apps: int) -> list[tuple[str, dict[str, Any]]]:
    """Return the run ids and inputs of a demo of ``apps`` applications.

    Every fifth application already runs its desired version. Each runs in
    three or four regions, with two or three replicas in each.

    >>> run_id, spec = demo_inputs(36)[0]
    >>> run_id, spec["service"], spec["running"], spec["desired"], spec["of"]
    ('app-01', 'billing', '2.1.3', '2.2.0', 36)
    >>> spec["regions"]
    ['us-east', 'ap-south', 'us-west', 'eu-north']
    """
    width = max(2, len(str(apps)))
    inputs = []
    for i in range(1, apps + 1):
        run_id = f"app-{i:0{width}d}"
        major, minor = 1 + i % 3, i % 7
        running = f"{major}.{minor}.{2 + i % 4}"
        desired = running if i % 5 == 0 else f"{major}.{minor + 1}.0"
        service = _SERVICES[(i - 1) % len(_SERVICES)]
        regions = [_REGIONS[(i + k) % len(_REGIONS)] for k in range(3 + i % 2)]
        spec = {"app": run_id, "service": service, "running": running, "desired": desired}
        inputs.append((run_id, {**spec, "regions": regions, "replicas": 2 + i % 2, "of": apps}))
    return inputs


# -- the progress display --------------------------------------------------------------


def _position(event: str) -> str:
    """Return a short name for a position: its step, without prefix and scope suffix."""
    kind, _, scope = event.partition(":")
    if scope == FLOW_NAME:
        return "done" if kind == "completed" else "starting"
    if scope.startswith(REGIONS_OUTPUT):  # the map's items command, or a region's step
        return "regions"
    name = scope.rsplit("/", 1)[-1]
    for suffix in ("WaitFor", "Retry", "Case"):
        name = name.removesuffix(suffix)
    return name


def _regions(state: State) -> str:
    """Return one mark per region of a run: ``+`` ended, ``>`` in flight, ``.`` not started.

    Empty before the regions map starts (and for a run that does not deploy).
    """
    progress = state.groups.get(REGIONS_OUTPUT)
    if progress is None:
        results = state.outputs.get(REGIONS_OUTPUT)
        return "" if results is None else "+" * len(results)
    prefix = f"{REGIONS_OUTPUT}/steps["
    running = set()
    for event in state.events:  # one position per region in flight
        scope = event.partition(":")[2]
        if scope.startswith(prefix):
            running.add(int(scope[len(prefix) : scope.index("]", len(prefix))]))
    return "".join(
        "." if i >= progress.started else ">" if i in running else "+"
        for i in range(len(progress.items))
    )


# How the live display draws a region: ● ended, ◐ in flight, ○ not started.
_MARKS = {"+": ("\u25cf", "green"), ">": ("\u25d0", "cyan"), ".": ("\u25cb", "dim")}


def _deployed_regions(state: State) -> tuple[str, ...]:
    """Return the regions validated so far, in region order (the map's output once complete)."""
    results = state.outputs.get(REGIONS_OUTPUT)
    if results is None:
        progress = state.groups.get(REGIONS_OUTPUT)
        if progress is None:
            return ()
        results = [progress.results[key] for key in sorted(progress.results, key=int)]
    return tuple(str(r["region"]) for r in results if isinstance(r, Mapping) and "region" in r)


# Step names as the live display shows them.
_LABELS = {
    "starting": "starting",
    "collectPreDeployState": "collect",
    "getPreActualState": "collect",
    "waitForPreActualState": "collect",
    "deploy": "compare",
    "createDeployRequest": "open PR",
    "waitForAcceptedDeployRequest": "PR review",
    "regions": "regions",
    "validatePostDeployActualState": "validate",
}


def _rank(order: list[str], label: str) -> int:
    return order.index(label) if label in order else len(order)


_CELL = 36  # characters per run in the live display


@attrs.define
class _Entry:
    status: str
    step: str
    detail: str = ""
    regions: str = ""  # one mark per region (see _regions)


class _Board:
    """What the display shows: each run's status, step, regions and latest note."""

    def __init__(self, records: Sequence[RunRecord], systems: Systems, console: Console) -> None:
        self.systems = systems
        self.console = console
        self.started = time.monotonic()
        self.entries: dict[str, _Entry] = {}
        for record in records:
            state = loads(record.state, flow.definition)
            self.entries[record.run_id] = _Entry(
                record.status, _position(state.events[0]), regions=_regions(state)
            )
        self.steps = 0
        self.retries = 0
        self.peak = 0  # the most region steps in flight at once, over all runs
        self.reported = self.started

    @property
    def finished(self) -> int:
        return sum(entry.status != "running" for entry in self.entries.values())

    def region_tally(self) -> tuple[int, int]:
        """Return the regions ended and the regions in flight, over all runs."""
        ended = in_flight = 0
        for entry in list(self.entries.values()):
            ended += entry.regions.count("+")
            in_flight += entry.regions.count(">")
        return ended, in_flight

    def on_step(self, report: StepReport) -> None:
        """Take a :class:`StepReport` from the worker (on its event loop)."""
        entry = self.entries.setdefault(report.run_id, _Entry("running", ""))
        was_running = entry.status == "running"
        entry.status = report.state.status
        entry.step = _position(report.state.events[0])
        entry.regions = _regions(report.state)
        entry.detail = self.systems.notes.get(report.run_id, "")
        self.peak = max(self.peak, self.region_tally()[1])
        self.steps += 1
        if type(report.effect) is HandlerRaised:
            self.retries += 1
            error = report.effect.error.type.rsplit(".", 1)[-1]
            if error != CollectorUnavailable.__name__:  # the systems' notes explain theirs
                entry.detail = f"{error}, retrying" if entry.status == "running" else error
        if not self.console.is_terminal and was_running and entry.status != "running":
            # No live display without a terminal: one line per finished run instead.
            elapsed = time.monotonic() - self.started
            self.console.print(
                f"[{elapsed:5.1f}s] {report.run_id} {entry.status}"
                f" ({self.finished}/{len(self.entries)}): {escape(entry.detail)}",
                highlight=False,
                soft_wrap=True,
            )
        now = time.monotonic()
        if not self.console.is_terminal and now - self.reported >= 5.0:
            self.reported = now
            ended, in_flight = self.region_tally()
            self.console.print(
                f"[{now - self.started:5.1f}s] {self.finished}/{len(self.entries)} finished; "
                + ", ".join(f"{label}: {n}" for label, n in self.by_step().items())
                + f"; region rollouts: {ended} done, {in_flight} in flight",
                highlight=False,
                soft_wrap=True,
            )

    def by_step(self) -> dict[str, int]:
        """Count the running runs at each step (by display label)."""
        counts: dict[str, int] = {}
        for entry in list(self.entries.values()):
            if entry.status == "running":
                label = _LABELS.get(entry.step, entry.step)
                counts[label] = counts.get(label, 0) + 1
        order = list(dict.fromkeys(_LABELS.values()))  # pipeline order
        return dict(sorted(counts.items(), key=lambda item: _rank(order, item[0])))

    def render(self) -> RenderableType:
        """Render the live view: progress, counts by status, step and region, each run's step."""
        entries = list(self.entries.items())
        total, done = len(entries), sum(e.status != "running" for _, e in entries)
        by_status: dict[str, int] = {}
        for _, entry in entries:
            by_status[entry.status] = by_status.get(entry.status, 0) + 1
        header = Table.grid(padding=(0, 1))
        header.add_row(
            ProgressBar(total=max(total, 1), completed=done, width=40),
            Text(f"{done}/{total} runs finished  {time.monotonic() - self.started:5.1f}s"),
        )
        tally = Text()
        for status, count in sorted(by_status.items()):
            tally.append(f"{count} {status}  ", style=STATUS_STYLES.get(status, ""))
        tally.append(f"{self.steps} steps, {self.retries} retried errors", style="dim")
        ended, in_flight = self.region_tally()
        tally.append(
            f"  regions: {ended} done, {in_flight} in flight "
            f"({REGION_CONCURRENCY} at a time per app, peak {self.peak})",
            style="magenta",
        )
        steps = Text("  ".join(f"{label}: {n}" for label, n in self.by_step().items()), style="dim")
        columns = max(1, self.console.width // (_CELL + 2))
        rows = -(-len(entries) // columns)
        if rows + 4 > self.console.height:  # too many runs to show each: the tallies say it
            return Group(header, tally, steps)
        grid = Table.grid(padding=(0, 2))
        for _ in range(columns):
            grid.add_column(width=_CELL, no_wrap=True, overflow="ellipsis")
        cells = []
        for run_id, entry in entries:
            cell = Text(f"{run_id} ", style=STATUS_STYLES.get(entry.status, ""))
            if entry.status == "failed":
                cell.append(entry.status)
            elif entry.step == "regions" and entry.status == "running":
                cell.append(f"regions {entry.regions.count('+')}/{len(entry.regions)} ")
                for mark in entry.regions:
                    glyph, style = _MARKS[mark]
                    cell.append(glyph, style=style)
                cell.append(f" {entry.detail}")
            else:
                cell.append(entry.detail or _LABELS.get(entry.step, entry.step))
            cells.append(cell)
        for row in range(0, len(cells), columns):
            grid.add_row(*cells[row : row + columns])
        return Group(header, tally, steps, grid)


# -- the summary --------------------------------------------------------------------


@attrs.frozen
class AppSummary:
    """One application's line of the demo's summary.

    Attributes:
        run_id: The run (``"app-07"``).
        service: The application's service name.
        status: The run's status.
        position: The step the run is at (``"done"`` once completed,
            ``"regions"`` inside the regions map).
        running: The version the application ran before the demo.
        desired: The version it should run.
        pull_request: The number of the pull request that deployed it, or
            ``None`` (not deployed, or not yet).
        steps: Steps saved in the run's journal.
        retries: Errors raised by its handlers (each one retried, or fatal).
        elapsed: Seconds from the run's creation to its last save.
        error: The error that failed the run, or ``""``.
        regions: The regions the application runs in (from its input).
        deployed_regions: The regions validated at the desired version so far,
            in region order (the regions map's output once it completed).

    """

    run_id: str
    service: str
    status: str
    position: str
    running: str
    desired: str
    pull_request: int | None
    steps: int
    retries: int
    elapsed: float
    error: str = ""
    regions: tuple[str, ...] = ()
    deployed_regions: tuple[str, ...] = ()

    @property
    def change(self) -> str:
        """``"deployed"`` or ``"up to date"`` once completed; ``"deploying"`` or ``""`` before."""
        if self.pull_request is not None:
            return "deployed" if self.status == "completed" else "deploying"
        return "up to date" if self.status == "completed" else ""


@attrs.frozen
class DemoResult:
    """What :func:`run_demo` did.

    Attributes:
        apps: The summary of each application, by run id.
        interrupted: The signal that stopped the demo early, or ``None``.
        seconds: How long this session took.
        peak_regions: The most region steps in flight at once in this
            session, over all runs.

    """

    apps: tuple[AppSummary, ...]
    interrupted: int | None
    seconds: float
    peak_regions: int = 0

    @property
    def completed(self) -> int:
        """How many runs completed."""
        return sum(app.status == "completed" for app in self.apps)

    @property
    def failed(self) -> int:
        """How many runs failed."""
        return sum(app.status == "failed" for app in self.apps)


def _summarize(store: Store, record: RunRecord) -> AppSummary:
    state = loads(record.state, flow.definition)
    steps = retries = 0
    for entry in store.history(record.run_id):
        batch = loads_batch(entry.batch)
        if batch.op == "effects":
            steps += len(batch.effects)
            retries += sum(type(effect) is HandlerRaised for effect in batch.effects)
    spec = record.input
    pr = state.outputs.get(_PR)
    return AppSummary(
        run_id=record.run_id,
        service=str(spec.get("service", "")),
        status=record.status,
        position=_position(state.events[0]),
        running=str(spec["running"]),
        desired=str(spec["desired"]),
        pull_request=None if pr is None else int(pr["pr"]),
        steps=steps,
        retries=retries,
        elapsed=record.updated_at - record.created_at,
        error=f"{state.error.type}: {state.error.message}" if state.error else "",
        regions=tuple(str(region) for region in spec.get("regions", ())),
        deployed_regions=_deployed_regions(state),
    )


def _summary_table(result: DemoResult) -> Table:
    table = Table(
        title=f"{FLOW_NAME}: {len(result.apps)} applications",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for name in ("app", "service", "outcome", "version", "PR"):
        table.add_column(
            name, no_wrap=name != "outcome", min_width=9 if name == "outcome" else None
        )
    for name in ("regions", "steps", "retries", "elapsed"):
        table.add_column(name, justify="right", no_wrap=True)
    for app in result.apps:
        outcome = app.status
        if app.status == "running":
            outcome = f"at {_LABELS.get(app.position, app.position)}"
        if app.error:
            outcome += f" ({escape(app.error)})"
        if app.change in ("deployed", "deploying"):
            version = f"{app.running} -> {app.desired}"
        elif app.change == "up to date":
            version = f"{app.desired} (current)"
        else:
            version = f"{app.running} (wants {app.desired})"
        table.add_row(
            app.run_id,
            app.service,
            f"[{STATUS_STYLES.get(app.status, '')}]{outcome}[/]",
            version,
            "" if app.pull_request is None else f"#{app.pull_request}",
            "" if app.pull_request is None else f"{len(app.deployed_regions)}/{len(app.regions)}",
            str(app.steps),
            str(app.retries),
            f"{app.elapsed:.1f}s",
        )
    return table


# -- the demo ---------------------------------------------------------------------


def is_demo_run(record: RunRecord) -> bool:
    """Tell whether the demo started ``record``: its flow, with an id and input the demo gives.

    A run of a user's own ``deploy/v1`` (the name the README's example uses)
    has another input, so the demo neither drives nor deletes it.
    """
    if record.flow != FLOW_NAME or not isinstance(record.input, dict):
        return False
    apps = record.input.get("of")
    if type(apps) is not int or not 1 <= apps <= _MAX_APPS:
        return False
    return _inputs_by_id(apps).get(record.run_id) == record.input


#: The most applications a demo deploys (its inputs are recognized up to it).
_MAX_APPS = 100_000


@functools.lru_cache(maxsize=8)
def _inputs_by_id(apps: int) -> dict[str, dict[str, Any]]:
    return dict(demo_inputs(apps))


def _foreign_runs(store: Store, flow_name: str | None = None) -> str | None:
    """Describe the runs in ``store`` (of ``flow_name``) the demo did not start, or ``None``."""
    try:
        foreign = [r for r in store.runs(flow=flow_name) if not is_demo_run(r)]
    except (StepflowError, ValueError) as exc:  # a row that cannot be read is not the demo's
        return f"runs it cannot read ({exc})"
    if not foreign:
        return None
    first = foreign[0]
    others = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
    return f"{first.run_id!r}, a run of {first.flow!r}{others}"


def _forget_previous(store: Store, url: str | None) -> Store:
    """Start over: delete the SQLite file when it holds the demo's own runs only.

    Raises:
        ConfigurationError: the store holds a run the demo did not start (of
            any flow, its own ``deploy/v2`` included), or is not a SQLite file;
            nothing was deleted.

    """
    if isinstance(store, MemoryStore) or store.count() == 0:
        return store
    foreign = _foreign_runs(store)
    where = store.path if isinstance(store, SQLiteStore) else "this store"
    if foreign is not None:
        raise ConfigurationError(
            f"--fresh would delete runs the demo did not start: {where!r} holds {foreign}; "
            "nothing was deleted: use --db sqlite:///another-file.db instead"
        )
    if not isinstance(store, SQLiteStore):
        raise ConfigurationError(
            "--fresh can only start over in a SQLite file (or an empty store); "
            "use --db with a new database instead"
        )
    store.close()
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(store.path + suffix)
    return open_store(url)


def _start_missing(store: Store, apps: int, console: Console) -> list[RunRecord]:
    """Start the demo's runs, or find them; return every demo run.

    The number of applications is kept in each run's input, so a demo stopped
    while it was starting its runs starts the missing ones when run again.
    """
    foreign = _foreign_runs(store, FLOW_NAME)
    if foreign is not None:
        raise ConfigurationError(
            f"this store holds runs of {FLOW_NAME} the demo did not start ({foreign}); the "
            "demo's worker would drive them with its simulated systems: use --db "
            "sqlite:///another-file.db"
        )
    existing = store.runs(flow=FLOW_NAME)
    if existing:
        apps = int(existing[0].input.get("of", len(existing)))
        running = sum(record.status == "running" for record in existing)
        console.print(
            f"Resuming the demo: {len(existing)} runs found, {running} still running "
            "(--fresh starts over).",
            highlight=False,
            soft_wrap=True,
        )
    else:
        for earlier in EARLIER_FLOW_NAMES:
            if store.count(flow=earlier):
                raise ConfigurationError(
                    f"this database holds runs of {earlier}, the demo of an earlier stepflow, "
                    f"whose ids the {FLOW_NAME} demo would reuse; run this demo in another "
                    "database (stepflow demo --db sqlite:///stepflow-v2.db)"
                )
        console.print(f"Starting {apps} runs of {FLOW_NAME}.", highlight=False, soft_wrap=True)
    known = {record.run_id for record in existing}
    for run_id, spec in demo_inputs(apps):
        if run_id not in known:
            with contextlib.suppress(RunExistsError):
                start_run(store, flow, spec, run_id=run_id)
    return store.runs(flow=FLOW_NAME)


async def _serve(worker: Worker, handle_signals: bool, console: Console) -> int | None:
    """Run ``worker`` until idle; on SIGINT/SIGTERM stop it gracefully and return the signal."""
    loop = asyncio.get_running_loop()
    caught: list[int] = []

    def stop(signum: int) -> None:
        if caught:  # a second signal: the runs are durable, so leave at once
            os._exit(128 + signum)
        caught.append(signum)
        console.print(
            "Stopping: finishing the steps in flight (press Ctrl-C again to quit at once)...",
            highlight=False,
            soft_wrap=True,
        )
        worker.stop()

    installed: list[int] = []
    if handle_signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop, int(sig))
                installed.append(int(sig))
    try:
        await worker.run(until_idle=True)
    finally:
        for number in installed:
            loop.remove_signal_handler(number)
    return caught[0] if caught else None


def run_demo(
    db_url: str | None = None,
    apps: int = 36,
    concurrency: int = 16,
    console: Console | None = None,
    *,
    fresh: bool = False,
    speed: float = 1.0,
    handle_signals: bool = True,
) -> DemoResult:
    """Deploy ``apps`` applications through ``deploy/v2``, or resume a previous demo.

    When the store holds no demo runs, ``apps`` runs are started (``"app-01"``,
    ...); otherwise the runs found are resumed (completed ones are kept). A
    :class:`~stepflow.Worker` then drives them until none is running, with a
    live progress display on a terminal (one line per finished run otherwise),
    and a summary table is printed.

    Args:
        db_url: The store's URL (see :func:`stepflow.open_store`; default
            ``./stepflow.db``).
        apps: How many applications a new demo deploys.
        concurrency: How many handlers may run at once.
        console: Where to print (default: standard output).
        fresh: Delete the previous demo's runs first.
        speed: Scales the simulated systems' delays (``0.1``: ten times faster).
        handle_signals: Stop gracefully on SIGINT and SIGTERM (in the main thread).

    Returns:
        What happened: each application's summary, and the signal that
        interrupted the demo, if one did.

    Raises:
        ConfigurationError: bad arguments; ``fresh`` on a store it cannot empty
            or holding runs the demo did not start (nothing is deleted); a store
            holding runs of ``deploy/v2`` the demo did not start (its worker
            would drive them).
        StoreError: the store cannot be opened or written.

    """
    if apps < 1:
        raise ConfigurationError(f"a demo deploys at least one application, got {apps!r}")
    console = console if console is not None else Console()
    systems = Systems(speed)
    started = time.monotonic()
    store = open_store(db_url)
    try:
        if fresh:
            store = _forget_previous(store, db_url)
        records = _start_missing(store, apps, console)
        board = _Board(records, systems, console)
        worker = Worker(
            store,
            [flow],
            context=systems,
            concurrency=concurrency,
            # One process drives the demo: short leases let a demo killed with
            # SIGKILL resume its in-flight runs after a few seconds.
            lease_seconds=5.0,
            idle_interval=0.5,
            on_step=board.on_step,
        )
        console.print(
            f"Ctrl-C stops gracefully; run `{_again(db_url)}` again to resume.",
            highlight=False,
            soft_wrap=True,
        )
        if console.is_terminal:
            with Live(console=console, get_renderable=board.render, refresh_per_second=8):
                interrupted = asyncio.run(_serve(worker, handle_signals, console))
        else:
            interrupted = asyncio.run(_serve(worker, handle_signals, console))
        summaries = tuple(_summarize(store, record) for record in store.runs(flow=FLOW_NAME))
    finally:
        store.close()
    result = DemoResult(summaries, interrupted, time.monotonic() - started, board.peak)
    _print_summary(result, console, db_url)
    return result


def _again(db_url: str | None) -> str:
    """Return the command that resumes this demo."""
    return "stepflow demo" + (f" --db {db_url}" if db_url else "")


def _print_summary(result: DemoResult, console: Console, db_url: str | None) -> None:
    console.print(_summary_table(result))
    deployed = sum(app.change == "deployed" for app in result.apps)
    current = sum(app.change == "up to date" for app in result.apps)
    steps = sum(app.steps for app in result.apps)
    retries = sum(app.retries for app in result.apps)
    console.print(
        f"{result.completed}/{len(result.apps)} completed ({deployed} deployed, {current} "
        f"already up to date), {result.failed} failed; {steps} steps, {retries} retried "
        f"errors; {result.seconds:.1f}s",
        highlight=False,
        soft_wrap=True,
    )
    regions = sum(len(app.deployed_regions) for app in result.apps)
    if regions:
        console.print(
            f"Fan-out: {regions} regions rolled out, verified and validated by a map in "
            f"{sum(bool(app.deployed_regions) for app in result.apps)} applications, "
            f"{REGION_CONCURRENCY} regions at a time per application"
            + (f", {result.peak_regions} at once at the peak" if result.peak_regions else "")
            + ".",
            highlight=False,
            soft_wrap=True,
        )
    again = _again(db_url)
    if result.interrupted is not None:
        name = signal.Signals(result.interrupted).name
        console.print(
            f"Interrupted by {name}: the steps in flight finished and were saved. "
            f"Run `{again}` again to resume.",
            highlight=False,
            soft_wrap=True,
        )
    elif result.failed:
        console.print(
            f"Failed runs keep their error and position: see `stepflow show RUN`, then "
            f"`stepflow resume RUN --flow stepflow.demo:flow` and `{again}`.",
            highlight=False,
            soft_wrap=True,
        )
