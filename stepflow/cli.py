"""The ``stepflow`` command: start, drive, inspect and repair durable runs.

::

    stepflow demo [--apps N] [--db URL] [--fresh] [--speed X]
    stepflow start MODULE:FLOW --input JSON [--id ID]
    stepflow worker MODULE:FLOW... [--concurrency N] [--until-idle]
    stepflow runs [--status S] [--flow F] [--limit N]
    stepflow show RUN
    stepflow resume RUN --flow MODULE:FLOW
    stepflow cancel RUN

Every command takes ``--db URL`` (``sqlite:///path.db``, ``postgresql://...``; see
:func:`stepflow.open_store`), defaulting to ``$STEPFLOW_DB``, then to
``./stepflow.db``. ``MODULE:FLOW`` names an attribute of an importable module
(the current directory is on the import path) holding a :class:`stepflow.Flow`
or a spec (:class:`stepflow.Steps`), which is compiled with :func:`stepflow.new`.

Errors in what was asked (an unknown module, run or URL, malformed JSON, a run in
the wrong status) are reported on one line, ``Error: ...``, with exit status 2
for usage errors and 1 for the others; only a bug in stepflow shows a traceback.
"""

from __future__ import annotations

import importlib
import json
import logging
import operator
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote

import click
import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

import stepflow
from stepflow.codec import Batch
from stepflow.core.messages import Command, HandlerRaised, HandlerReturned, TimerFired
from stepflow.errors import ConfigurationError, StepflowError
from stepflow.flow import Flow
from stepflow.runtime.worker import StepReport
from stepflow.stores import DEFAULT_SQLITE_PATH, open_store
from stepflow.stores.base import RunRecord, Store

__all__ = ["UsageProblem", "load_flow", "main"]

log = logging.getLogger("stepflow.cli")

_STATUSES = ("running", "completed", "failed", "cancelled")
_STYLES = {"running": "cyan", "completed": "green", "failed": "red", "cancelled": "yellow"}


class UsageProblem(click.ClickException):
    """A usage error reported on one line (``Error: ...``), with exit status 2."""

    exit_code = 2


class _Group(click.Group):
    """The command group: turns expected failures into one-line errors."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            # click's own parsing errors: one line, with the way to the help.
            where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            raise UsageProblem(f"{exc.format_message()} (see '{where} --help')") from exc
        except ConfigurationError as exc:
            raise UsageProblem(str(exc)) from exc
        except StepflowError as exc:
            raise click.ClickException(str(exc)) from exc


def _stdout() -> Console:
    return Console(highlight=False)


# -- loading flows and stores -------------------------------------------------------


def load_flow(ref: str) -> Flow:
    """Import ``MODULE:FLOW`` and return the flow it names.

    The attribute may be a :class:`stepflow.Flow` or a :class:`stepflow.Steps`
    spec (compiled with :func:`stepflow.new`); it may be dotted
    (``pipelines:deploy.v2``). The current directory is put on the import path.

    Raises:
        UsageProblem: ``ref`` is malformed, its module cannot be imported, the
            attribute is missing or is not a flow.
        DefinitionError: the spec does not compile.

    """
    module_name, sep, attribute = ref.partition(":")
    if not sep or not module_name or not attribute:
        raise UsageProblem(f"{ref!r} is not MODULE:FLOW (for example 'pipelines:deploy')")
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageProblem(f"cannot import module {module_name!r} (from {ref!r}): {exc}") from None
    try:
        target = operator.attrgetter(attribute)(module)
    except AttributeError:
        raise UsageProblem(f"module {module_name!r} has no attribute {attribute!r}") from None
    if isinstance(target, Flow):
        return target
    if isinstance(target, stepflow.Steps):
        return stepflow.new(target)
    raise UsageProblem(
        f"{ref!r} holds a value of type {type(target).__name__!r}, not a stepflow.Flow "
        "or a stepflow.Steps spec"
    )


def _sqlite_path(url: str | None) -> str | None:
    """Return the file a SQLite URL names (``None`` for other URLs)."""
    if not url:
        return DEFAULT_SQLITE_PATH
    if url.startswith("sqlite:///"):
        return unquote(url[len("sqlite:///") :].partition("?")[0]) or None
    return None


@contextmanager
def _store(url: str | None, *, create: bool = True) -> Iterator[Store]:
    """Open the store ``url`` names; without ``create``, refuse a missing SQLite file."""
    path = _sqlite_path(url)
    if not create and path is not None and not os.path.exists(path):
        raise click.ClickException(
            f"no stepflow database at {path!r}: pass --db URL (or set STEPFLOW_DB), "
            "or start a run first"
        )
    store = open_store(url)
    try:
        yield store
    finally:
        store.close()


def _db_option(fn: Any) -> Any:
    return click.option(
        "--db",
        "db",
        envvar="STEPFLOW_DB",
        metavar="URL",
        help="The store: sqlite:///path.db or postgresql://... "
        f"[env STEPFLOW_DB; default sqlite:///{DEFAULT_SQLITE_PATH}]",
    )(fn)


# -- reading states and times ------------------------------------------------------


def _peek(record: RunRecord) -> dict[str, Any]:
    """Read a stored state's fields without its flow's definition."""
    try:
        raw = orjson.loads(record.state)
    except orjson.JSONDecodeError:
        return {}
    if isinstance(raw, list):  # a go-stepflow state: just the events
        return {"events": raw}
    state = raw.get("state") if isinstance(raw, dict) else None
    return state if isinstance(state, dict) else {}


def _position(record: RunRecord, *, short: bool = False) -> str:
    events = _peek(record).get("events") or ["?"]
    text = ", ".join(map(str, events))
    return text.replace(f":{record.flow}/", ":") if short else text


def _ago(seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"


def _relative(at: float | None, now: float) -> str:
    """``"in 3.2s"``, ``"5m ago"``, ``"now"``, or ``"-"`` for no time."""
    if at is None:
        return "-"
    delta = at - now
    if abs(delta) < 0.05:
        return "now"
    return f"in {_ago(delta)}" if delta > 0 else f"{_ago(-delta)} ago"


def _clock(at: float | None, *, precise: bool = False) -> str:
    if at is None:
        return "-"
    if precise:  # a time of the day, to the millisecond
        return f"{time.strftime('%H:%M:%S', time.localtime(at))}.{int(at % 1 * 1000):03d}"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _json(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _step(step: str, flow: str) -> str:
    return step.removeprefix(f"{flow}/")


def _effect_lines(batch: Batch, flow: str) -> list[Text]:
    """One line per effect of a journal entry: what happened, at which step."""
    if batch.op != "effects":
        return [Text({"resume": "resumed", "cancel": "cancelled"}.get(batch.op, batch.op))]
    commands: dict[int, Command] = {c.id: c for c in batch.answered}
    lines = []
    for effect in batch.effects:
        command = commands.get(effect[0])
        where = f"{command.kind} {_step(command.step, flow)}" if command else f"#{effect[0]}"
        if type(effect) is HandlerReturned:
            line = Text("returned ", style="green")
            line.append(where)
            line.append(f" -> {_json(effect.value)}", style="dim")
        elif type(effect) is HandlerRaised:
            line = Text("raised ", style="red")
            line.append(where)
            line.append(f" {effect.error.type}: {effect.error.message}", style="red")
        elif type(effect) is TimerFired:
            line = Text("timer ", style="magenta")
            line.append(where)
        else:
            line = Text(repr(effect))
        lines.append(line)
    return lines


# -- the commands ------------------------------------------------------------------


@click.group(cls=_Group)
@click.version_option(stepflow.__version__, prog_name="stepflow")
def main() -> None:
    """Long-running processes as pure, immutable state machines, run durably."""


@main.command()
@click.option(
    "--apps", type=click.IntRange(min=1), default=36, show_default=True, help="Applications."
)
@_db_option
@click.option("--fresh", is_flag=True, help="Delete the previous demo's runs and start over.")
@click.option(
    "--speed",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Scale the simulated systems' delays (0.1: ten times faster).",
)
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=16, show_default=True, help="Handlers."
)
def demo(apps: int, db: str | None, fresh: bool, speed: float, concurrency: int) -> None:
    """Deploy a fleet of applications through the seed's deploy/v1 pipeline.

    The simulated GitOps repository, deployment agent and (flaky) state
    collector take real time. Interrupt the demo at any point and run it again:
    it resumes where it stopped.
    """
    from stepflow.demo import run_demo  # the demo's flow is compiled only when asked for

    result = run_demo(db, apps=apps, concurrency=concurrency, fresh=fresh, speed=speed)
    if result.interrupted is not None:
        sys.exit(128 + result.interrupted)
    if result.failed:
        sys.exit(1)


@main.command()
@click.argument("flow_ref", metavar="MODULE:FLOW")
@click.option("--input", "input_text", metavar="JSON", default="null", help="The run's input.")
@click.option("--id", "run_id", metavar="ID", help="The run's id (default: a random one).")
@_db_option
def start(flow_ref: str, input_text: str, run_id: str | None, db: str | None) -> None:
    """Start a run of MODULE:FLOW and print its id; a worker will drive it."""
    flow = load_flow(flow_ref)
    try:
        value = json.loads(input_text)
    except json.JSONDecodeError as exc:
        raise UsageProblem(f"--input is not JSON ({exc}): {input_text!r:.60}") from None
    with _store(db) as store:
        record = stepflow.start_run(store, flow, value, run_id=run_id)
    click.echo(record.run_id)


@main.command()
@click.argument("flow_refs", metavar="MODULE:FLOW...", nargs=-1, required=True)
@_db_option
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=64, show_default=True,
    help="Commands executed at once.",
)  # fmt: skip
@click.option("--until-idle", is_flag=True, help="Exit once no run of these flows is running.")
@click.option("-v", "--verbose", is_flag=True, help="Also log every poll of a wait.")
def worker(
    flow_refs: Sequence[str], db: str | None, concurrency: int, until_idle: bool, verbose: bool
) -> None:
    """Drive the runs of the given flows (several versions may be served side by side).

    Logs to standard error. SIGTERM or Ctrl-C stops gracefully: the steps in
    flight finish and are saved first.
    """
    flows = [load_flow(ref) for ref in flow_refs]
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(message)s",
    )

    def on_step(report: StepReport) -> None:
        effect, command = report.effect, report.command
        where = f"{report.run_id} {command.kind} {_step(command.step, report.flow)}"
        if type(effect) is HandlerRaised:
            log.warning("%s raised %s: %s", where, effect.error.type, effect.error.message)
        elif type(effect) is HandlerReturned and command.kind != "do" and effect.value is False:
            log.debug("%s -> false", where)
        else:
            value = _json(effect.value) if type(effect) is HandlerReturned else "timer"
            log.info("%s -> %s", where, value)
        if report.state.status != "running":
            log.info("%s %s", report.run_id, report.state.status)

    names = ", ".join(flow.name for flow in flows)
    with _store(db) as store:
        runner = stepflow.Worker(store, flows, concurrency=concurrency, on_step=on_step)
        log.info("serving %s (%s)", names, "until idle" if until_idle else "Ctrl-C stops")
        stats = runner.run_sync(until_idle=until_idle, handle_signals=True)
    log.info(
        "worker stopped after %d steps; runs completed: %d, failed: %d",
        stats.steps,
        stats.completed,
        stats.failed,
    )


@main.command()
@click.option("--status", type=click.Choice(_STATUSES), help="Only runs with this status.")
@click.option("--flow", "flow_name", metavar="NAME", help="Only runs of this flow (deploy/v1).")
@_db_option
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many runs.")
def runs(status: Any, flow_name: str | None, db: str | None, limit: int | None) -> None:
    """List runs, oldest first: status, position, next wake, last update."""
    now = time.time()
    with _store(db, create=False) as store:
        records = store.runs(status=status, flow=flow_name, limit=limit)
        total = store.count(status=status, flow=flow_name)
    console = _stdout()
    if not records:
        console.print("No runs.")
        return
    table = Table("id", "flow", "status", "position", "wake_at", "updated")
    table.columns[3].overflow = "fold"
    for record in records:
        table.add_row(
            escape(record.run_id),
            escape(record.flow),
            f"[{_STYLES.get(record.status, '')}]{record.status}[/]",
            escape(_position(record, short=True)),
            _relative(record.wake_at, now),
            _relative(record.updated_at, now),
        )
    console.print(table)
    if total > len(records):
        console.print(f"{len(records)} of {total} runs shown.", style="dim")


@main.command()
@click.argument("run_id", metavar="RUN")
@_db_option
def show(run_id: str, db: str | None) -> None:
    """Show a run: position, status, outputs, error, next wake, and its journal."""
    now = time.time()
    with _store(db, create=False) as store:
        view = stepflow.read_run(store, run_id)
    record, state = view.record, _peek(view.record)
    console = _stdout()
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column(overflow="fold")
    facts.add_row("run", escape(record.run_id))
    facts.add_row("flow", escape(record.flow))
    facts.add_row("status", f"[{_STYLES.get(record.status, '')}]{record.status}[/]")
    facts.add_row("position", escape(_position(record)))
    if record.wake_at is not None:
        facts.add_row("next wake", f"{_clock(record.wake_at)} ({_relative(record.wake_at, now)})")
    if state.get("timeout_at") is not None:
        timeout_at = float(state["timeout_at"])
        facts.add_row("times out", f"{_clock(timeout_at)} ({_relative(timeout_at, now)})")
    facts.add_row("created", f"{_clock(record.created_at)} ({_relative(record.created_at, now)})")
    facts.add_row("updated", f"{_clock(record.updated_at)} ({_relative(record.updated_at, now)})")
    if record.lease_owner is not None:
        expiry = _relative(record.lease_expires_at, now)
        facts.add_row("leased by", escape(f"{record.lease_owner} (expires {expiry})"))
    facts.add_row("input", escape(_json(record.input, limit=2000)))
    for step, value in sorted((state.get("outputs") or {}).items()):
        facts.add_row("output", escape(f"{_step(step, record.flow)} = {_json(value, 2000)}"))
    error = state.get("error")
    if isinstance(error, dict):
        text = f"{error.get('type')}: {error.get('message')} (at {error.get('step')})"
        facts.add_row("error", f"[red]{escape(text)}[/]")
    console.print(facts)
    journal = Table("seq", "time", "op", "effect", "after", title="history", title_justify="left")
    journal.columns[3].overflow = "fold"
    previous = record.created_at
    for entry, batch in view.journal:
        journal.add_row(
            str(entry.seq),
            _clock(entry.at, precise=True),
            batch.op,
            Text("\n").join(_effect_lines(batch, record.flow)),
            f"+{entry.at - previous:.2f}s",
        )
        previous = entry.at
    console.print(journal if view.journal else Text("No history yet.", style="dim"))


@main.command()
@click.argument("run_id", metavar="RUN")
@click.option(
    "--flow", "flow_ref", metavar="MODULE:FLOW", required=True,
    help="The run's flow, to compute where it resumes.",
)  # fmt: skip
@_db_option
def resume(run_id: str, flow_ref: str, db: str | None) -> None:
    """Send a failed run back to the step that failed; its history is kept."""
    flow = load_flow(flow_ref)
    with _store(db, create=False) as store:
        record = store.load(run_id)
        if record.flow != flow.name:
            raise click.ClickException(
                f"run {run_id!r} is a run of {record.flow!r}, but {flow_ref!r} is {flow.name!r}"
            )
        record = stepflow.resume_run(store, flow, run_id)
    click.echo(f"Resumed run {run_id} at {_position(record)}; a worker will continue it.")


@main.command()
@click.argument("run_id", metavar="RUN")
@_db_option
def cancel(run_id: str, db: str | None) -> None:
    """Cancel a running or failed run: no worker will advance it again."""
    with _store(db, create=False) as store:
        record = stepflow.cancel_run(store, run_id)
    click.echo(f"Cancelled run {run_id} at {_position(record)}.")


if __name__ == "__main__":
    main()
