"""The ``stepflow`` command: start, drive, inspect and repair durable runs.

::

    stepflow demo [--apps N] [--db URL] [--fresh] [--speed X]
    stepflow start MODULE:FLOW [--input JSON|@FILE] [--id ID] [--from FILE.jsonl]
    stepflow worker MODULE:FLOW... [--concurrency N] [--until-idle]
    stepflow runs [--status S] [--flow F] [--limit N] [--json] [--watch]
    stepflow show RUN [--json] [--follow]
    stepflow flows MODULE [--json]
    stepflow resume RUN --flow MODULE:FLOW
    stepflow cancel RUN
    stepflow wake RUN
    stepflow send RUN NAME [--data JSON|@FILE] [--key K] [--json]
    stepflow history RUN [--flow MODULE:FLOW]
    stepflow export RUN > run.json
    stepflow replay MODULE:FLOW [--status S] [--json] [FILE...]
    stepflow diff MODULE:OLD MODULE:NEW
    stepflow graph MODULE:FLOW [--format mermaid|dot|json] [--run RUN]
    stepflow check MODULE:FLOW [--max-loops N] [--allow-warnings]
    stepflow paths MODULE:FLOW [--max-loops N]

Every command that reads or writes runs takes ``--db URL`` (``sqlite:///path.db``,
``postgresql://...``; see :func:`stepflow.open_store`), defaulting to
``$STEPFLOW_DB``, then to ``./stepflow.db``. ``MODULE:FLOW`` names an attribute of
an importable module (the current directory is on the import path) or of a Python
file (``path/to/file.py:FLOW``; the ``.py`` may be left out) holding a
:class:`stepflow.Flow`, a spec (:class:`stepflow.Steps`, compiled with
:func:`stepflow.new`), or a function taking no arguments that returns either.
``RUN`` is a run id or any prefix of one that names a single run.

Errors in what was asked (an unknown module, run or URL, malformed JSON, a run in
the wrong status, a user module that fails to import) are reported on one line,
``Error: ...``, with exit status 2 for usage errors and 1 for the others; only a
bug in stepflow shows a traceback. ``docs/cli.md`` documents the JSON documents
``runs --json``, ``show --json`` and ``flows --json`` print.

The commands that judge a flow exit with status 1 when the verdict is negative,
so that they can gate a deploy: ``replay`` when a run diverges, ``diff`` when the
new version cannot continue the old one's runs, ``check`` on any finding (on an
error finding only, with ``--allow-warnings``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import math
import operator
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, cast
from urllib.parse import unquote

import attrs
import click
import orjson
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

import stepflow
from stepflow.codec import Batch, loads
from stepflow.core.definition import FlowDefinition
from stepflow.core.messages import (
    CancelRequested,
    ChildEnded,
    Command,
    Effect,
    EventReceived,
    HandlerRaised,
    HandlerReturned,
    TimerFired,
    answered_id,
)
from stepflow.core.state import State
from stepflow.errors import (
    ConfigurationError,
    CorruptStateError,
    FlowMismatchError,
    JournalPrunedError,
    StepflowError,
)
from stepflow.flow import Flow
from stepflow.history import (
    CorruptHistoryError,
    History,
    ReplayDivergence,
    attempt_label,
    dumps_history,
    history,
    loads_history,
)
from stepflow.history import replay as replay_history
from stepflow.runtime.runs import parse_age
from stepflow.runtime.schedules import OVERLAP_POLICIES, fire_time_label
from stepflow.runtime.worker import StepReport
from stepflow.stores import DEFAULT_SQLITE_PATH, ScheduleRecord, open_store
from stepflow.stores.base import (
    FINISHED_STATUSES,
    JournalEntry,
    RunNotes,
    RunRecord,
    RunStatus,
    Store,
)

__all__ = ["UsageProblem", "import_module", "load_flow", "main", "parse_json"]

log = logging.getLogger("stepflow.cli")

_STATUSES = ("running", "cancelling", "completed", "failed", "cancelled")
# How journal entries other than effect batches read.
_OP_NAMES = {"resume": "resumed", "cancel": "cancelled", "wake": "woken"}
#: The color each run status is shown in (the CLI's tables, the demo's display).
STATUS_STYLES = {
    "running": "cyan",
    "cancelling": "yellow",
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "parked": "magenta",
}


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
        except json.JSONDecodeError as exc:
            # The JSON the user gives is read by parse_json: this is a stored column
            # a store could not decode (runs and show list such runs as unreadable).
            raise click.ClickException(
                f"a stored run cannot be read: a column is not JSON ({exc}); "
                "'stepflow runs' lists the unreadable runs"
            ) from exc


def _stdout(*, wide: bool = False) -> Console:
    """Return a console on standard output; ``wide``: never wrap or cut a piped line.

    Rich lays out for 80 columns when it cannot ask a terminal, which would fold
    the run ids a script reads from a pipe.
    """
    console = Console(highlight=False)
    if wide and not console.is_terminal:
        console = Console(highlight=False, width=_PIPE_WIDTH)
    return console


#: The width tables are laid out for when standard output is not a terminal.
_PIPE_WIDTH = 1_000_000


# -- loading flows and stores -------------------------------------------------------


def load_flow(ref: str) -> Flow:
    """Import ``MODULE:FLOW`` (or ``path/to/file.py:FLOW``) and return the flow it names.

    The attribute may be a :class:`stepflow.Flow`, a :class:`stepflow.Steps`
    spec (compiled with :func:`stepflow.new`), or a function that takes no
    arguments and returns either (a factory such as ``build_flow``, called
    once). It may be dotted (``pipelines:deploy.v2``). The current directory is
    put on the import path; a file's own directory is put there too, so that it
    can import its neighbours.

    Raises:
        UsageProblem: ``ref`` is malformed; its module cannot be found or fails
            to import (a syntax error, an exception at import time); the
            attribute is missing, is not a flow, or is a factory that fails.
        DefinitionError: the spec does not compile.

    """
    module_ref, sep, attribute = ref.rpartition(":")
    if not sep or not module_ref or not attribute:
        raise UsageProblem(
            f"{ref!r} is not MODULE:FLOW (for example 'pipelines:deploy' or "
            "'path/to/pipelines.py:deploy')"
        )
    if not all(part.isidentifier() for part in attribute.split(".")):
        raise UsageProblem(
            f"{ref!r}: {attribute!r} is not an attribute name (the part after the last ':' "
            "names a flow in the module, for example 'pipelines:deploy')"
        )
    module = import_module(module_ref)
    try:
        target = operator.attrgetter(attribute)(module)
    except AttributeError:
        raise UsageProblem(f"module {module_ref!r} has no attribute {attribute!r}") from None
    return _as_flow(target, ref)


def _as_flow(target: Any, ref: str) -> Flow:
    """Return the flow ``target`` is, compiles to, or (a factory) returns."""
    if isinstance(target, Flow):
        return target
    if isinstance(target, stepflow.Steps):
        return stepflow.new(target)
    if inspect.isfunction(target) or inspect.ismethod(target):
        required = [
            name
            for name, parameter in inspect.signature(target).parameters.items()
            if parameter.default is inspect.Parameter.empty
            and parameter.kind
            not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]
        if required:
            raise UsageProblem(
                f"{ref!r} is a function that takes arguments ({', '.join(required)}); "
                "name a Flow, a Steps spec, or a function taking none that returns one"
            )
        try:
            made = target()
        except StepflowError:
            raise
        except Exception as exc:
            raise UsageProblem(f"calling {ref!r}() failed: {_describe(exc)}") from None
        if isinstance(made, (Flow, stepflow.Steps)):
            return _as_flow(made, ref)
        raise UsageProblem(
            f"calling {ref!r}() returned a value of type {type(made).__name__!r}, not a "
            "stepflow.Flow or a stepflow.Steps spec"
        )
    raise UsageProblem(
        f"{ref!r} holds a value of type {type(target).__name__!r}, not a stepflow.Flow, "
        "a stepflow.Steps spec, or a function returning one"
    )


def _describe(exc: BaseException) -> str:
    """``"KeyError: 'x' (at path/to/file.py:12)"``: an exception and where it was raised."""
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "<frozen" not in f.filename]
    if frames:
        text += f" (at {_relative_path(frames[-1].filename)}:{frames[-1].lineno})"
    return text


def _relative_path(path: str) -> str:
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive, on Windows
        return path
    return path if relative.startswith(os.pardir) else relative


def _is_path(module_ref: str) -> bool:
    return module_ref.endswith(".py") or "/" in module_ref or os.sep in module_ref


def import_module(module_ref: str) -> ModuleType:
    """Import a module by name (``pipelines.deploy``) or from a file (``path/to/file.py``).

    A path may leave out ``.py``, or name a package directory. The current
    directory is put on the import path.

    Raises:
        UsageProblem: the reference is malformed or relative, no such module or
            file exists, or the module fails to import (a syntax error names the
            file and line; another exception its type, message and where it was
            raised).

    """
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    if _is_path(module_ref):
        return _import_file(module_ref)
    if module_ref.startswith("."):
        raise UsageProblem(
            f"{module_ref!r} is a relative module name, which has no package to be "
            "relative to here: name the module in full (package.module) or give its "
            "path (path/to/module.py)"
        )
    if not all(part.isidentifier() for part in module_ref.split(".")):
        raise UsageProblem(
            f"{module_ref!r} is neither a module name (package.module) nor a path to a "
            "Python file (path/to/module.py)"
        )
    try:
        return importlib.import_module(module_ref)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing == module_ref or module_ref.startswith(f"{missing}."):
            raise UsageProblem(
                f"cannot import module {module_ref!r}: no module named {missing!r} here; run "
                "stepflow from the directory that holds it, or give the file's path "
                "(path/to/module.py)"
            ) from None
        raise _import_failed(module_ref, exc) from None
    except SyntaxError as exc:
        raise _syntax_error(module_ref, exc) from None
    except (Exception, SystemExit) as exc:
        raise _import_failed(module_ref, exc) from None


def _import_file(module_ref: str) -> ModuleType:
    path = Path(module_ref)
    if path.suffix == ".py":
        candidates = [path]
    else:
        candidates = [path.with_name(f"{path.name}.py"), path / "__init__.py"]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        tried = " nor ".join(repr(str(c)) for c in candidates)
        raise UsageProblem(f"no Python file at {module_ref!r}: there is no {tried}")
    found = found.resolve()
    package = found.name == "__init__.py"
    stem = found.parent.name if package else found.stem
    name = stem if stem.isidentifier() else "module"
    known = sys.modules.get(name)
    known_file = getattr(known, "__file__", None)
    if known is not None and known_file and os.path.realpath(known_file) == str(found):
        return known  # imported already, by name or by path
    if known is not None:  # another module has the name: give this one its own
        name = f"_stepflow_file_{hashlib.sha256(str(found).encode()).hexdigest()[:12]}_{name}"
        if name in sys.modules:
            return sys.modules[name]
    home = str(found.parent.parent if package else found.parent)
    if home not in sys.path:
        sys.path.insert(0, home)  # as Python does for a script: its neighbours import
    spec = importlib.util.spec_from_file_location(
        name, found, submodule_search_locations=[str(found.parent)] if package else None
    )
    if spec is None or spec.loader is None:  # pragma: no cover - a .py file always has one
        raise UsageProblem(f"cannot import {module_ref!r}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as import does: dataclasses and pickle look it up
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[name]
        raise _syntax_error(module_ref, exc) from None
    except (Exception, SystemExit) as exc:
        del sys.modules[name]
        raise _import_failed(module_ref, exc) from None
    return module


def _syntax_error(module_ref: str, exc: SyntaxError) -> UsageProblem:
    where = _relative_path(exc.filename) if exc.filename else module_ref
    line = f":{exc.lineno}" if exc.lineno else ""
    return UsageProblem(
        f"{where}{line}: {type(exc).__name__.replace('Error', ' error').lower()} "
        f"in module {module_ref!r}: {exc.msg}"
    )


def _import_failed(module_ref: str, exc: BaseException) -> UsageProblem:
    return UsageProblem(f"importing module {module_ref!r} failed: {_describe(exc)}")


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


# -- reading JSON ------------------------------------------------------------------


class _NonFinite(ValueError):
    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.token = token


def _refuse_constant(token: str) -> Any:
    raise _NonFinite(token)


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):  # 1e999 parses as inf
        raise _NonFinite(token)
    return value


def parse_json(text: str, source: str) -> Any:
    """Parse JSON text given to the CLI; refuse NaN and infinities.

    Python's ``json`` reads ``NaN``, ``Infinity`` and numbers too large for a
    float (``1e999``), which stores would keep as ``null``; every JSON input
    the CLI takes goes through here instead.

    Args:
        text: The JSON text.
        source: What the text is, for the message (``"--input"``,
            ``"runs.jsonl, line 3"``).

    Raises:
        UsageProblem: the text is not JSON, or holds a non-finite number.

    """
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except _NonFinite as exc:
        raise UsageProblem(
            f"{source}: {exc.token} is not a number JSON can hold (NaN and infinities "
            "would be stored as null): use null, a string or a finite number"
        ) from None
    except json.JSONDecodeError as exc:
        raise UsageProblem(f"{source} is not JSON ({exc}): {text!r:.60}") from None


def _json_argument(text: str | None, option: str) -> Any:
    """Return the JSON an option gives (``JSON``, or ``@FILE``; ``@-`` is standard input)."""
    if text is None:
        return None
    if text.startswith("@"):
        return parse_json(_read_text(text[1:], f"{option} file"), f"{option} {text}")
    return parse_json(text, option)


def _read_text(path: str, what: str) -> str:
    """Read a file the user named (``-``: standard input); refuse it on one line."""
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as file:
            return file.read()
    except OSError as exc:
        raise UsageProblem(f"cannot read {what} {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise UsageProblem(f"{what} {path!r} is not UTF-8 text ({exc.reason})") from None


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


def _reason(record: RunRecord) -> str:
    """Return `` (why)`` for a cancelling or cancelled run whose state says why, else ``""``."""
    if record.status not in ("cancelling", "cancelled"):
        return ""
    error = _peek(record).get("error")
    message = error.get("message") if isinstance(error, dict) else None
    return f" ({message})" if isinstance(message, str) and message else ""


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
        return [
            Text(
                {"resume": "resumed", "cancel": "cancelled", "wake": "woken"}.get(
                    batch.op, batch.op
                )
            )
        ]
    commands: dict[int, Command] = {c.id: c for c in batch.answered}
    lines = []
    for effect in batch.effects:
        if type(effect) is EventReceived:
            line = Text("event ", style="cyan")
            line.append(effect.name)
            line.append(f" -> {_json(effect.payload)}", style="dim")
            lines.append(line)
            continue
        if type(effect) is CancelRequested:
            lines.append(Text(_cancel_text(effect), style="yellow"))
            continue
        command = commands.get(answered_id(effect))
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
    """Deploy a fleet of applications through the seed's pipeline, fanned out to regions.

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
@click.option(
    "--input", "input_text", metavar="JSON|@FILE",
    help="The run's input: JSON, or @FILE to read it from a file (@- standard input).",
)  # fmt: skip
@click.option("--id", "run_id", metavar="ID", help="The run's id (default: a random one).")
@click.option(
    "--from", "from_file", metavar="FILE.jsonl",
    help='Start one run per line of FILE: {"input": ..., "id": "optional"} (- stdin).',
)  # fmt: skip
@click.option(
    "--deadline", metavar="AGE",
    help="Cancel the run (cleanups run) if not over within AGE: 30m, 12h, 7d "
    "(default: the flow's named(deadline=)).",
)  # fmt: skip
@_db_option
def start(
    flow_ref: str,
    input_text: str | None,
    run_id: str | None,
    from_file: str | None,
    deadline: str | None,
    db: str | None,
) -> None:
    """Start a run of MODULE:FLOW and print its id; a worker will drive it.

    With --from FILE.jsonl, start one run per line instead, each line a JSON
    object with the run's "input" (default null) and optionally its "id".
    The whole file is checked before any run is started: a bad line (not JSON,
    another key, a non-string id, an id given twice, an id taken by a run of
    another flow or with another input) is reported with its line number and
    nothing is started. Lines whose run exists already, with the same flow and
    input, are skipped, so starting the same file again starts nothing new. A
    line without an id gets a random one, each time. Prints the id of each run
    started, one a line, and a summary on standard error.

    With --deadline AGE, each run started must be over within AGE of its
    start: past it, a worker cancels it (its cleanups run) with a
    DeadlineExceeded error. Without it, the flow's named(deadline=) applies.
    """
    seconds = None if deadline is None else _age_option(deadline, "--deadline")
    if from_file is not None:
        if input_text is not None or run_id is not None:
            raise UsageProblem("--from FILE gives each run's input and id: drop --input and --id")
        _start_many(load_flow(flow_ref), from_file, db, seconds)
        return
    value = _json_argument(input_text, "--input")
    flow = load_flow(flow_ref)
    with _store(db) as store:
        record = stepflow.start_run(store, flow, value, run_id=run_id, deadline=seconds)
    click.echo(record.run_id)


def _age_option(text: str, option: str) -> float:
    """Read an AGE option (``30m``) as seconds; a bad one is a usage problem."""
    try:
        seconds = parse_age(text)
    except StepflowError as exc:
        raise UsageProblem(f"{option}: {exc}") from None
    if seconds <= 0:
        raise UsageProblem(f"{option}: {text!r} is no time at all; give an AGE above 0")
    return seconds


@attrs.frozen
class _Line:
    """One run to start, read from a line of a --from file."""

    number: int
    run_id: str | None
    input: Any


def _read_lines(path: str) -> tuple[list[_Line], list[str]]:
    """Read a --from file: the runs it asks for, and what is wrong with it."""
    lines: list[_Line] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, text in enumerate(_read_text(path, "--from file").splitlines(), start=1):
        if not text.strip():
            continue
        where = f"{path}, line {number}"
        try:
            item = parse_json(text, where)
        except UsageProblem as exc:
            problems.append(exc.message)
            continue
        if not isinstance(item, dict):
            problems.append(
                f'{where}: expected an object {{"input": ..., "id": ...}}, got {text!r:.60}'
            )
            continue
        unknown = sorted(set(item) - {"input", "id"})
        if unknown:
            problems.append(f"{where}: unknown key {unknown[0]!r} (a line has 'input' and 'id')")
            continue
        run_id = item.get("id")
        if run_id is not None and (not isinstance(run_id, str) or not run_id):
            problems.append(f"{where}: 'id' must be a non-empty string, got {run_id!r}")
            continue
        if run_id is not None and run_id in seen:
            problems.append(f"{where}: id {run_id!r} was given on line {seen[run_id]} already")
            continue
        try:
            orjson.dumps(item.get("input"))
        except TypeError as exc:  # an integer past 64 bits
            problems.append(f"{where}: the input cannot be stored ({exc})")
            continue
        if run_id is not None:
            seen[run_id] = number
        lines.append(_Line(number, run_id, item.get("input")))
    return lines, problems


def _start_many(flow: Flow, path: str, db: str | None, deadline: float | None = None) -> None:
    """Start the runs a JSON Lines file asks for: all checked first, idempotent by id."""
    lines, problems = _read_lines(path)
    with _store(db) as store:
        existing: set[str] = set()
        for line in lines:
            if line.run_id is None:
                continue
            try:
                record = store.load(line.run_id)
            except stepflow.UnknownRunError:
                continue
            where = f"{path}, line {line.number}"
            if record.flow != flow.name:
                problems.append(
                    f"{where}: run {line.run_id!r} exists already, as a run of {record.flow!r}"
                )
            elif record.input != line.input:
                problems.append(
                    f"{where}: run {line.run_id!r} exists already, with another input "
                    f"({_json(record.input, 60)})"
                )
            else:
                existing.add(line.run_id)
        if problems:
            more = len(problems) - 1
            others = f" (and {more} more problem{'s' * (more != 1)})" if more else ""
            raise UsageProblem(f"{problems[0]}{others}; no run was started")
        started = 0
        for line in lines:
            if line.run_id in existing:
                continue
            try:
                record = stepflow.start_run(
                    store, flow, line.input, run_id=line.run_id, deadline=deadline
                )
            except stepflow.RunExistsError:  # started meanwhile by someone else
                existing.add(str(line.run_id))
                continue
            except ConfigurationError as exc:
                raise click.ClickException(
                    f"{path}, line {line.number}: {exc} ({started} runs started before it; "
                    "start the file again once it is fixed: the runs with an id are skipped)"
                ) from None
            click.echo(record.run_id)
            started += 1
    noun = "run" if started == 1 else "runs"
    if existing:
        skipped = len(existing)
        also = f"{skipped} {'was' if skipped == 1 else 'were'} started before"
        summary = f"started {started} {noun} of {flow.name}; {also}"
        if not started:
            summary = f"nothing new: the {skipped} runs of {path} were started before"
    else:
        summary = f"started {started} {noun} of {flow.name}"
    click.echo(summary, err=True)


@main.command()
@click.argument("flow_refs", metavar="MODULE:FLOW...", nargs=-1, required=True)
@_db_option
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=64, show_default=True,
    help="Commands executed at once.",
)  # fmt: skip
@click.option("--until-idle", is_flag=True, help="Exit once no run of these flows is running.")
@click.option("-v", "--verbose", is_flag=True, help="Also log every poll of a wait.")
@click.option(
    "--lease-seconds", type=click.FloatRange(min=0, min_open=True), default=30.0,
    show_default=True,
    help="How long a claim on a run lasts unless renewed: a dead worker's runs go to "
    "others this long after it stopped renewing.",
)  # fmt: skip
@click.option(
    "--worker-id", metavar="ID",
    help="A stable name for this worker: restarted with the same ID on this host, it "
    "takes back at once the runs its dead predecessor held, instead of waiting out "
    "their leases.",
)  # fmt: skip
@click.option(
    "--metrics-port", type=click.IntRange(0, 65535), metavar="PORT",
    help="Serve Prometheus metrics on http://ADDRESS:PORT/metrics "
    "(needs pip install 'stepflow[metrics]').",
)  # fmt: skip
@click.option(
    "--metrics-address", default="127.0.0.1", show_default=True, metavar="ADDRESS",
    help="The address --metrics-port binds (0.0.0.0 for a scraper on another machine).",
)  # fmt: skip
def worker(
    flow_refs: Sequence[str],
    db: str | None,
    concurrency: int,
    until_idle: bool,
    verbose: bool,
    lease_seconds: float,
    worker_id: str | None,
    metrics_port: int | None,
    metrics_address: str,
) -> None:
    """Drive the runs of the given flows (several versions may be served side by side).

    Logs to standard error (at INFO; -v for DEBUG). On a terminal it shows a live
    display (steps per second, runs by status, errors) and logs only the worker's
    own lines; piped, it logs every step and a progress line every few seconds.
    SIGTERM or Ctrl-C stops gracefully: the steps in flight finish and are saved first.
    """
    from stepflow._cli_worker import Progress, configure_logging
    from stepflow.runtime.metrics import PrometheusMetrics, combine, serve_metrics

    flows = [load_flow(ref) for ref in flow_refs]
    console = Console(stderr=True)
    live = console.is_terminal and not console.is_dumb_terminal
    configure_logging(console if live else None, logging.DEBUG if verbose else logging.INFO)
    # On a terminal the live display counts the steps: each one is a DEBUG line.
    step_level = logging.DEBUG if live else logging.INFO

    def on_step(report: StepReport) -> None:
        effect, command = report.effect, report.command
        where = f"{report.run_id} {command.kind} {_step(command.step, report.flow)}"
        if type(effect) is HandlerRaised:
            log.warning("%s raised %s: %s", where, effect.error.type, effect.error.message)
        elif type(effect) is HandlerReturned and command.kind != "do" and effect.value is False:
            log.debug("%s -> false", where)
        else:
            value = _json(effect.value) if type(effect) is HandlerReturned else "timer"
            log.log(step_level, "%s -> %s", where, value)
        if report.state.status != "running":
            log.log(step_level, "%s %s", report.run_id, report.state.status)

    prometheus = None
    if metrics_port is not None:
        prometheus = PrometheusMetrics()
        server, _ = serve_metrics(prometheus, port=metrics_port, address=metrics_address)
        log.info("serving metrics on http://%s:%d/metrics", metrics_address, server.server_port)
    progress = Progress([flow.name for flow in flows], live=live, console=console)
    with _store(db) as store, progress:
        runner = stepflow.Worker(
            store,
            flows,
            concurrency=concurrency,
            on_step=on_step,
            lease_seconds=lease_seconds,
            worker_id=worker_id,
            metrics=combine(progress, prometheus),
            metrics_interval=2.0 if live else 10.0,
        )
        runner.run_sync(until_idle=until_idle, handle_signals=True)


# -- runs and show: tables, JSON documents, watching ------------------------------------

#: What reading a run row may raise when a column cannot be decoded: the store's
#: typed error, or the decoder's (a store that does not type it yet).
_ROW_ERRORS = (StepflowError, ValueError)


def _unreadable_reason(exc: BaseException) -> str:
    if isinstance(exc, StepflowError):
        return str(exc)
    return f"the stored row cannot be decoded ({type(exc).__name__}: {exc})"


def _state_problem(record: RunRecord) -> str | None:
    """Say why a stored row (its state, its input) cannot be read without its flow, or ``None``."""
    if record.unreadable is not None:  # the store could not decode a column
        return str(record.unreadable)
    try:
        orjson.loads(record.state)
    except orjson.JSONDecodeError as exc:
        return f"its state is not JSON ({exc})"
    return None


@attrs.frozen
class _Row:
    """A run as listed: its record, and why (part of) it cannot be read."""

    run_id: str
    record: RunRecord | None
    unreadable: str | None = None

    @classmethod
    def of(cls, record: RunRecord) -> _Row:
        return cls(record.run_id, record, _state_problem(record))

    def key(self) -> Hashable:
        record = self.record
        if record is None:
            return (self.run_id, self.unreadable)
        return (self.run_id, self.unreadable, record.version, record.status, record.lease_owner)


def _rows(store: Store, status: Any, flow: str | None, limit: int | None) -> tuple[list[_Row], int]:
    """Read the runs to list, and how many match the filters.

    When the store cannot return the list (a row it cannot decode), the runs
    are read one by one, so that only the broken rows are listed as unreadable
    (after the others: their creation time is unknown).
    """
    total = store.count(status=status, flow=flow)
    try:
        return [_Row.of(r) for r in store.runs(status=status, flow=flow, limit=limit)], total
    except _ROW_ERRORS:
        pass
    readable: list[RunRecord] = []
    unreadable: list[_Row] = []
    for run_id in store.match_run_ids(""):
        try:
            record = store.load(run_id)
        except stepflow.UnknownRunError:
            continue  # deleted meanwhile
        except _ROW_ERRORS as exc:
            unreadable.append(_Row(run_id, None, _unreadable_reason(exc)))
            continue
        if (status is None or record.status == status) and (flow is None or record.flow == flow):
            readable.append(record)
    readable.sort(key=lambda r: (r.created_at, r.run_id))
    rows = [_Row.of(r) for r in readable[:limit]] + unreadable
    return rows, max(total, len(rows))


def _events(record: RunRecord) -> list[str] | None:
    if _state_problem(record) is not None:
        return None
    return [str(event) for event in _peek(record).get("events") or []]


def _run_json(run_id: str, record: RunRecord | None, unreadable: str | None) -> dict[str, Any]:
    """Return the fields ``runs --json`` gives for a run (documented in docs/cli.md)."""
    if record is None:
        return dict.fromkeys(_RUN_FIELDS) | {"id": run_id, "unreadable": unreadable}
    return {
        "id": record.run_id,
        "flow": record.flow,
        "status": record.status,
        "position": _events(record),
        "wake_at": record.wake_at,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "version": record.version,
        "lease_owner": record.lease_owner,
        "lease_expires_at": record.lease_expires_at,
        "inbox": record.inbox,
        "input": record.input,
        "unreadable": unreadable,
    }


_RUN_FIELDS = (
    "id",
    "flow",
    "status",
    "position",
    "wake_at",
    "created_at",
    "updated_at",
    "version",
    "lease_owner",
    "lease_expires_at",
    "inbox",
    "input",
    "unreadable",
)


def _runs_document(rows: list[_Row], total: int) -> dict[str, Any]:
    return {
        "total": total,
        "shown": len(rows),
        "runs": [_run_json(row.run_id, row.record, row.unreadable) for row in rows],
    }


def _id_column(table: Table, ids: Sequence[str]) -> None:
    """Keep the ids whole: on a narrow terminal, the other columns give way."""
    column = table.columns[0]
    column.no_wrap = True
    column.min_width = max((len(run_id) for run_id in ids), default=0)


def _runs_view(rows: list[_Row], total: int, now: float) -> RenderableType:
    if not rows:
        return Text("No runs.")
    table = Table("id", "flow", "status", "position", "wake_at", "updated")
    _id_column(table, [row.run_id for row in rows])
    table.columns[3].overflow = "fold"
    for row in rows:
        record = row.record
        if record is None:
            reason = escape(row.unreadable or "")
            table.add_row(escape(row.run_id), "?", "[red]unreadable[/]", reason, "-", "-")
            continue
        position = (
            f"[red]unreadable: {escape(row.unreadable)}[/]"
            if row.unreadable
            else escape(_position(record, short=True) + _reason(record))
        )
        table.add_row(
            escape(record.run_id),
            escape(record.flow),
            f"[{STATUS_STYLES.get(record.status, '')}]{record.status}[/]",
            position,
            _relative(record.wake_at, now),
            _relative(record.updated_at, now),
        )
    if total > len(rows):
        return Group(table, Text(f"{len(rows)} of {total} runs shown.", style="dim"))
    return table


#: A snapshot for watching: a key that changes when what it shows changes, and
#: what to print (a renderable, or a JSON document).
_Snapshot = Callable[[], tuple[Hashable, Any]]


def _watch(
    snapshot: _Snapshot,
    console: Console,
    *,
    as_json: bool,
    interval: float,
    max_polls: int | None,
) -> None:
    """Show ``snapshot`` again and again until interrupted (or ``max_polls`` looks).

    On a terminal the view is updated in place (rich Live). Otherwise a new
    snapshot is printed each time its key changes: a table under a time line,
    or one JSON document a line (JSON Lines).
    """
    polls = 0

    def take() -> tuple[Hashable, Any]:
        nonlocal polls
        polls += 1
        return snapshot()

    def more() -> bool:
        return max_polls is None or polls < max_polls

    try:
        if console.is_terminal and not as_json:
            with Live(take()[1], console=console, auto_refresh=False) as live:
                while more():
                    time.sleep(interval)
                    live.update(take()[1], refresh=True)
            return
        last: Hashable = object()
        while True:
            key, view = take()
            if key != last:
                last = key
                if as_json:
                    click.echo(json.dumps(view, separators=(",", ":")))
                else:
                    console.print(Text(f"-- {_clock(time.time())}", style="dim"))
                    console.print(view)
                sys.stdout.flush()
            if not more():
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        return


def _watch_options(fn: Any) -> Any:
    fn = click.option(
        "--max-polls", type=click.IntRange(min=1), hidden=True,
        help="Stop after this many looks at the store (for tests).",
    )(fn)  # fmt: skip
    return click.option(
        "--interval", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
        metavar="SECONDS", help="Time between two looks at the store, when watching.",
    )(fn)  # fmt: skip


@main.command()
@click.option(
    "--status", type=click.Choice((*_STATUSES, "parked")), help="Only runs with this status."
)
@click.option("--flow", "flow_name", metavar="NAME", help="Only runs of this flow (deploy/v1).")
@_db_option
@click.option("--limit", type=click.IntRange(min=1), help="Show at most this many runs.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (docs/cli.md).")
@click.option("--watch", is_flag=True, help="Keep the list up to date until interrupted.")
@_watch_options
def runs(
    status: Any,
    flow_name: str | None,
    db: str | None,
    limit: int | None,
    as_json: bool,
    watch: bool,
    interval: float,
    max_polls: int | None,
) -> None:
    """List runs, oldest first: status, position, next wake, last update.

    Ids are never cut: piped, lines are as long as they need to be; on a narrow
    terminal the other columns give way. A run whose row cannot be read is
    listed as unreadable, with the reason, after the others.

    With --watch, the list is updated in place until Ctrl-C; piped, a new list
    is printed each time a run changes (with --json, one document a line).
    """
    console = _stdout(wide=True)
    with _store(db, create=False) as store:

        def snapshot() -> tuple[Hashable, Any]:
            rows, total = _rows(store, status, flow_name, limit)
            key = (total, tuple(row.key() for row in rows))
            if as_json:
                return key, _runs_document(rows, total)
            return key, _runs_view(rows, total, time.time())

        if watch:
            _watch(snapshot, console, as_json=as_json, interval=interval, max_polls=max_polls)
            return
        _, view = snapshot()
    if as_json:
        click.echo(json.dumps(view, indent=2))
    else:
        console.print(view)


@attrs.frozen
class _Shown:
    """A run as ``show`` reads it: what could be read, and what could not."""

    run_id: str
    record: RunRecord | None
    journal: tuple[tuple[JournalEntry, Batch], ...] | None
    problems: tuple[str, ...] = ()
    notes: RunNotes | None = None
    children: tuple[str, ...] = ()

    def key(self) -> Hashable:
        record = self.record
        facts = None if record is None else (record.version, record.status, record.lease_owner)
        journal = None if self.journal is None else len(self.journal)
        notes = None if self.notes is None else (self.notes.progress_at, self.notes.pruned_at)
        return (facts, journal, self.problems, notes, self.children)

    def pruned(self) -> bool:
        """Whether a prune removed the start of the journal (see ``RunView.journal_pruned``)."""
        through = None if self.notes is None else self.notes.pruned_through
        return through is not None and (not self.journal or self.journal[0][0].seq != 1)


def _read_shown(store: Store, run_id: str) -> _Shown:
    """Read a run and its journal, saying what cannot be read instead of failing."""
    try:
        view = stepflow.read_run(store, run_id)
    except stepflow.UnknownRunError:
        raise
    except _ROW_ERRORS as exc:
        try:
            record = store.load(run_id)
        except stepflow.UnknownRunError:
            raise
        except _ROW_ERRORS as again:
            return _Shown(run_id, None, None, (_unreadable_reason(again),))
        problems = [f"its journal cannot be read ({_unreadable_reason(exc)})"]
        state = _state_problem(record)
        return _Shown(run_id, record, None, tuple([state, *problems] if state else problems))
    state = _state_problem(view.record)
    children = tuple(child.run_id for child in store.children(run_id))
    found: tuple[str, ...] = (state,) if state else ()
    return _Shown(run_id, view.record, view.journal, found, view.notes, children)


def _cancel_text(cancel: CancelRequested) -> str:
    """Say what a cancellation asked, on one line."""
    what = "deadline passed" if cancel.deadline else "cancel requested"
    return f"{what}: {cancel.reason}" if cancel.reason else what


def _effect_json(effect: Effect, command: Command | None) -> dict[str, Any]:
    if type(effect) is EventReceived:
        return {"outcome": "event", "name": effect.name, "payload": effect.payload}
    if type(effect) is CancelRequested:
        return {"outcome": "cancel", "reason": effect.reason, "deadline": effect.deadline}
    if type(effect) is ChildEnded:
        return {"outcome": "child", "child": effect.child, "status": effect.status}
    body: dict[str, Any] = {
        "command": effect[0],
        "kind": None if command is None else command.kind,
        "step": None if command is None else command.step,
    }
    if type(effect) is HandlerReturned:
        body.update(outcome="returned", value=effect.value)
    elif type(effect) is HandlerRaised:
        body.update(
            outcome="raised", error={"type": effect.error.type, "message": effect.error.message}
        )
    else:
        body.update(outcome="timer")
    return body


def _show_document(shown: _Shown) -> dict[str, Any]:
    """Return the document ``show --json`` prints (documented in docs/cli.md)."""
    reason = "; ".join(shown.problems) or None
    body = _run_json(shown.run_id, shown.record, reason)
    state = {} if shown.record is None else _peek(shown.record)
    error = state.get("error")
    body.update(
        timeout_at=state.get("timeout_at"),
        deadline_at=None if shown.record is None else shown.record.deadline_at,
        parent_run_id=None if shown.record is None else shown.record.parent_run_id,
        children=list(shown.children),
        outputs=state.get("outputs") or {},
        error=(
            {"type": error.get("type"), "message": error.get("message"), "step": error.get("step")}
            if isinstance(error, dict)
            else None
        ),
        journal=None,
        progress=None if shown.notes is None else shown.notes.progress,
        progress_at=None if shown.notes is None else shown.notes.progress_at,
        journal_pruned=(
            {"through": shown.notes.pruned_through, "at": shown.notes.pruned_at}
            if shown.notes is not None and shown.pruned()
            else None
        ),
    )
    if shown.journal is not None:
        journal = []
        for entry, batch in shown.journal:
            commands = {c.id: c for c in batch.answered}
            effects = [_effect_json(e, commands.get(answered_id(e))) for e in batch.effects]
            journal.append({"seq": entry.seq, "at": entry.at, "op": batch.op, "effects": effects})
        body["journal"] = journal
    return body


def _show_view(shown: _Shown, now: float) -> RenderableType:
    record = shown.record
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold", no_wrap=True)
    facts.add_column(overflow="fold")
    facts.add_row("run", escape(shown.run_id))
    for problem in shown.problems:
        facts.add_row("unreadable", f"[red]{escape(problem)}[/]")
    if record is None:
        return facts
    state = _peek(record)
    facts.add_row("flow", escape(record.flow))
    facts.add_row("status", f"[{STATUS_STYLES.get(record.status, '')}]{record.status}[/]")
    if _state_problem(record) is None:
        facts.add_row("position", escape(_position(record)))
    if record.wake_at is not None:
        facts.add_row("next wake", f"{_clock(record.wake_at)} ({_relative(record.wake_at, now)})")
    if state.get("timeout_at") is not None:
        timeout_at = float(state["timeout_at"])
        facts.add_row("times out", f"{_clock(timeout_at)} ({_relative(timeout_at, now)})")
    if record.deadline_at is not None:
        until = record.deadline_at
        facts.add_row("deadline", f"{_clock(until)} ({_relative(until, now)})")
    facts.add_row("created", f"{_clock(record.created_at)} ({_relative(record.created_at, now)})")
    facts.add_row("updated", f"{_clock(record.updated_at)} ({_relative(record.updated_at, now)})")
    if record.parent_run_id is not None:
        facts.add_row("parent", escape(record.parent_run_id))
    if shown.children:
        facts.add_row("children", escape(", ".join(shown.children)))
    if record.lease_owner is not None:
        expiry = _relative(record.lease_expires_at, now)
        facts.add_row("leased by", escape(f"{record.lease_owner} (expires {expiry})"))
    if record.inbox:
        noun = "event waits" if record.inbox == 1 else "events wait"
        facts.add_row("inbox", f"{record.inbox} {noun} to be delivered")
    facts.add_row("input", escape(_json(record.input, limit=2000)))
    for step, value in sorted((state.get("outputs") or {}).items()):
        facts.add_row("output", escape(f"{_step(step, record.flow)} = {_json(value, 2000)}"))
    error = state.get("error")
    if isinstance(error, dict):
        text = f"{error.get('type')}: {error.get('message')} (at {error.get('step')})"
        label = "cancelled" if record.status in ("cancelling", "cancelled") else "error"
        facts.add_row(label, f"[red]{escape(text)}[/]")
    notes = shown.notes
    if notes is not None and notes.progress_at is not None:
        reported = f"{_json(notes.progress, 2000)} (reported {_relative(notes.progress_at, now)})"
        facts.add_row("progress", escape(reported))
    if notes is not None and notes.pruned_at is not None and shown.pruned():
        ago = _relative(notes.pruned_at, now)
        pruned = f"entries up to seq {notes.pruned_through} pruned {ago}"
        facts.add_row("journal", f"[yellow]{escape(pruned)}[/]")
    if not shown.journal:
        empty = "No history: the journal was pruned." if shown.pruned() else "No history yet."
        return Group(facts, Text(empty, style="dim"))
    journal = Table("seq", "time", "op", "effect", "after", title="history", title_justify="left")
    journal.columns[3].overflow = "fold"
    previous = record.created_at
    for entry, batch in shown.journal:
        journal.add_row(
            str(entry.seq),
            _clock(entry.at, precise=True),
            batch.op,
            Text("\n").join(_effect_lines(batch, record.flow)),
            f"+{entry.at - previous:.2f}s",
        )
        previous = entry.at
    return Group(facts, journal)


@main.command()
@click.argument("run_ref", metavar="RUN")
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (docs/cli.md).")
@click.option("--follow", is_flag=True, help="Keep showing the run as it moves, until Ctrl-C.")
@_watch_options
def show(
    run_ref: str,
    db: str | None,
    as_json: bool,
    follow: bool,
    interval: float,
    max_polls: int | None,
) -> None:
    """Show a run: position, status, outputs, error, next wake, and its journal.

    RUN is a run id or a prefix of one. A run whose row, state or journal cannot
    be read is shown as unreadable, with the reason, and the exit status is 1.
    With --follow, the view is updated in place until Ctrl-C; piped, it is
    printed again each time the run changes (with --json, one document a line).
    """
    console = _stdout(wide=True)
    with _store(db, create=False) as store:
        run_id = stepflow.resolve_run_id(store, run_ref)

        def snapshot() -> tuple[Hashable, Any]:
            shown = _read_shown(store, run_id)
            if as_json:
                return shown.key(), _show_document(shown)
            return shown.key(), _show_view(shown, time.time())

        if follow:
            _watch(snapshot, console, as_json=as_json, interval=interval, max_polls=max_polls)
            return
        shown = _read_shown(store, run_id)
    if as_json:
        click.echo(json.dumps(_show_document(shown), indent=2))
    else:
        console.print(_show_view(shown, time.time()))
    if shown.problems:
        sys.exit(1)


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
        run_id = stepflow.resolve_run_id(store, run_id)
        record = store.load(run_id)
        if record.flow != flow.name:
            raise click.ClickException(
                f"run {run_id!r} is a run of {record.flow!r}, but {flow_ref!r} is {flow.name!r}"
            )
        record = stepflow.resume_run(store, flow, run_id)
    click.echo(f"Resumed run {run_id} at {_position(record)}; a worker will continue it.")


@main.command()
@click.argument("run_id", metavar="RUN")
@click.option("--reason", default="", metavar="TEXT", help="Why (kept as the run's error).")
@_db_option
def cancel(run_id: str, reason: str, db: str | None) -> None:
    """Cancel a run: commands in flight finish, cleanups and compensations run.

    The cancellation is sent to the run (accepted even while a worker runs one
    of its steps); a worker serving its flow delivers it: the run is
    cancelling while its cleanups run, then cancelled. A failed run is marked
    cancelled at once (abandoned). A finished run, or one being cancelled
    already, is left as it is (exit 0).
    """
    with _store(db, create=False) as store:
        run_id = stepflow.resolve_run_id(store, run_id)
        sent = stepflow.cancel_run(store, run_id, reason)
        record = store.load(run_id)
    if not sent and record.status in FINISHED_STATUSES:
        click.echo(f"Run {run_id} is {record.status} already: nothing to cancel.")
    elif not sent:
        click.echo(f"Run {run_id} is being cancelled already: nothing changed.")
    elif record.status == "cancelled":
        click.echo(f"Cancelled run {run_id} at {_position(record)}.")
    else:
        click.echo(f"Cancelling run {run_id}; a worker will run its cleanups, then cancel it.")


@main.command()
@click.argument("run_id", metavar="RUN")
@_db_option
def wake(run_id: str, db: str | None) -> None:
    """Make a resting run due now: its wait_for polls now, its retry backoff ends now.

    A sleep's timer is never cut short. A worker holding the run takes the wake
    when it next lets the run go. A finished run has nothing to wake (exit 0).
    """
    with _store(db, create=False) as store:
        run_id = stepflow.resolve_run_id(store, run_id)
        woken = stepflow.wake(store, run_id)
        if not woken:
            status = store.load(run_id).status
            click.echo(f"Run {run_id} is {status}: nothing to wake.")
            return
    click.echo(f"Woke run {run_id}; a worker will poll it now.")


# -- events -------------------------------------------------------------------------


@main.command()
@click.argument("run_ref", metavar="RUN")
@click.argument("name", metavar="NAME")
@click.option(
    "--data", "data", metavar="JSON|@FILE",
    help="The event's payload: JSON, or @FILE to read it from a file (@- standard input); "
    "default null.",
)  # fmt: skip
@click.option(
    "--key", metavar="K",
    help="An idempotency key: a second send with the same key to the run changes nothing.",
)  # fmt: skip
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (docs/cli.md).")
def send(
    run_ref: str, name: str, data: str | None, key: str | None, db: str | None, as_json: bool
) -> None:
    """Send the event NAME to a run; its wait_event step takes it.

    The event is stored at once, whatever the run is doing (a step running
    included), and the run is made due: a worker serving its flow delivers it
    (see stepflow.send_event). With --key, sending the same key again changes
    nothing and says so (exit status 0). A run that is unknown or finished, a
    name that is empty or holds ':', or a payload over 64 KiB is refused with
    exit status 1; --data that is not JSON, with status 2.
    """
    payload = _json_argument(data, "--data")
    with _store(db, create=False) as store:
        run_id = stepflow.resolve_run_id(store, run_ref)
        sent = stepflow.send_event(store, run_id, name, payload, key=key)
    if as_json:
        click.echo(json.dumps({"run": run_id, "name": name, "key": key, "sent": sent}, indent=2))
    elif sent:
        click.echo(f"Sent event {name} to run {run_id}; a worker will deliver it.")
    else:
        click.echo(f"duplicate key: nothing changed (key {key!r} was sent to run {run_id} before).")


# -- schedules ----------------------------------------------------------------------

_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(text: str, option: str) -> timedelta:
    """Parse ``90``, ``90s``, ``15m``, ``2h`` or ``1d`` into a timedelta."""
    found = _DURATION.fullmatch(text.strip())
    if found is None:
        raise UsageProblem(
            f"{option} {text!r} is not a duration: write seconds (90), or a number with "
            "s, m, h or d (15m, 2h, 1d)"
        )
    return timedelta(seconds=float(found[1]) * _DURATION_UNITS[found[2]])


def _schedule_json(record: ScheduleRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "flow": record.flow,
        "cron": record.cron,
        "timezone": record.timezone,
        "input": record.input,
        "overlap": record.overlap,
        "catch_up_seconds": record.catch_up,
        "paused": record.paused,
        "next_fire_at": None if record.paused else fire_time_label(record.next_fire_at),
        "last_run_id": record.last_run_id,
        "buffered": None if record.buffered_at is None else fire_time_label(record.buffered_at),
        "unreadable": record.unreadable,
    }


@main.group()
def schedule() -> None:
    """Add, list, pause, resume and delete schedules (runs started at cron fire times).

    A schedule lives in the store; every worker serving its flow starts its runs,
    one per fire time, with the id NAME/<fire time in ISO 8601 UTC> (docs/runtime.md).
    """


@schedule.command("add")
@click.argument("name")
@click.argument("flow_ref", metavar="MODULE:FLOW")
@click.option("--cron", required=True, metavar="EXPR", help='A cron expression ("0 9 * * 1-5").')
@click.option(
    "--input", "input_text", metavar="JSON|@FILE",
    help="Every run's input: JSON, or @FILE to read it from a file (@- standard input).",
)  # fmt: skip
@click.option(
    "--timezone", "tz", default="UTC", show_default=True, metavar="TZ",
    help="The IANA timezone the expression is read in (Europe/Paris).",
)  # fmt: skip
@click.option(
    "--overlap", type=click.Choice(OVERLAP_POLICIES), default="skip", show_default=True,
    help="A fire time that comes while the previous run is running: skip it, allow it, "
    "or buffer one to start when the previous run ends.",
)  # fmt: skip
@click.option(
    "--catch-up", "catch_up", metavar="DURATION",
    help="After downtime, start the fire times missed by less than this (15m, 2h), oldest "
    "first [default: only the most recent one].",
)  # fmt: skip
@_db_option
def schedule_add(
    name: str,
    flow_ref: str,
    cron: str,
    input_text: str | None,
    tz: str,
    overlap: Any,
    catch_up: str | None,
    db: str | None,
) -> None:
    """Add schedule NAME: start a run of MODULE:FLOW at every fire time of --cron.

    The expression is checked here (a cron that does not parse, an unknown
    timezone: nothing is added). The first run starts at its first fire time from now.
    """
    value = _json_argument(input_text, "--input")
    window = None if catch_up is None else _duration(catch_up, "--catch-up")
    flow = load_flow(flow_ref)
    made = stepflow.Schedule(
        name, flow, cron=cron, input=value, timezone=tz, overlap=overlap, catch_up=window
    )
    with _store(db) as store:
        record = stepflow.add_schedule(store, made)
    click.echo(
        f"Added schedule {name}: runs of {record.flow} at {cron!r} ({tz}); first at "
        f"{fire_time_label(record.next_fire_at)}."
    )


@schedule.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@_db_option
def schedule_list(as_json: bool, db: str | None) -> None:
    """List the schedules: flow, cron, timezone, policies, next fire time, last run."""
    with _store(db, create=False) as store:
        records = store.schedules()
    if as_json:
        click.echo(json.dumps({"schedules": [_schedule_json(r) for r in records]}, indent=2))
        return
    console = _stdout(wide=True)
    if not records:
        console.print("No schedules.")
        return
    table = Table(
        "name", "flow", "cron", "timezone", "overlap", "catch-up", "next (UTC)", "last run"
    )
    for record in records:
        shown = _schedule_json(record)
        catch_up = "latest" if record.catch_up is None else f"{record.catch_up:g}s"
        table.add_row(
            escape(record.name),
            escape(record.flow),
            escape(record.cron),
            escape(record.timezone),
            record.overlap,
            catch_up,
            "[red]unreadable[/]"
            if record.unreadable
            else "[yellow]paused[/]"
            if record.paused
            else shown["next_fire_at"],
            escape(record.last_run_id or "-"),
        )
    console.print(table)


@schedule.command("pause")
@click.argument("name")
@_db_option
def schedule_pause(name: str, db: str | None) -> None:
    """Pause schedule NAME: no run starts until it is resumed (runs in flight go on)."""
    with _store(db, create=False) as store:
        stepflow.pause_schedule(store, name)
    click.echo(f"Paused schedule {name}.")


@schedule.command("resume")
@click.argument("name")
@_db_option
def schedule_resume(name: str, db: str | None) -> None:
    """Resume schedule NAME from its next fire time (those passed while paused are not run)."""
    with _store(db, create=False) as store:
        record = stepflow.resume_schedule(store, name)
    click.echo(f"Resumed schedule {name}; next at {fire_time_label(record.next_fire_at)}.")


@schedule.command("delete")
@click.argument("name")
@_db_option
def schedule_delete(name: str, db: str | None) -> None:
    """Delete schedule NAME (the runs it started stay)."""
    with _store(db, create=False) as store:
        store.delete_schedule(name)
    click.echo(f"Deleted schedule {name}.")


@main.command()
@click.option(
    "--older-than", "older_than", metavar="AGE", required=True,
    help="Prune runs not saved for this long: 30d, 12h, 90m (units s, m, h, d, w).",
)  # fmt: skip
@click.option(
    "--status", type=click.Choice(("completed", "failed", "cancelled", "finished")),
    default="completed", show_default=True,
    help="Prune finished runs of this status (finished: all three). Never running ones.",
)  # fmt: skip
@click.option(
    "--runs", "delete_runs", is_flag=True,
    help="Delete the runs too, not only their journals.",
)  # fmt: skip
@click.option(
    "--batch", type=click.IntRange(min=1), default=1000, show_default=True,
    help="Journal entries removed per transaction.",
)  # fmt: skip
@_db_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (docs/cli.md).")
def prune(
    older_than: str, status: str, delete_runs: bool, batch: int, db: str | None, as_json: bool
) -> None:
    """Remove the journals (and with --runs the runs) of finished runs past their retention.

    Only completed, failed or cancelled runs last saved more than AGE ago are
    touched, in small transactions, so workers go on saving while it runs. A
    pruned run keeps its state, status, outputs and error ('stepflow show'
    says its journal was pruned); its history can no longer be shown, exported
    or replayed.
    """
    age = parse_age(older_than)
    with _store(db, create=False) as store:
        result = stepflow.prune_runs(
            store,
            age,
            status=None if status == "finished" else cast(RunStatus, status),
            runs=delete_runs,
            batch=batch,
        )
    if as_json:
        document = {"older_than": age, "status": status, **attrs.asdict(result)}
        click.echo(json.dumps(document, indent=2))
        return
    noun = "run" if result.runs == 1 else "runs"
    message = (
        f"Pruned the journals of {result.runs} {status} {noun} not saved for {older_than}: "
        f"{result.journal_entries} entries removed"
    )
    if delete_runs:
        message += f", {result.runs_deleted} runs deleted"
    click.echo(f"{message} ({result.transactions} transactions).")


# -- histories: show, export, replay -------------------------------------------------

#: The problem :func:`stepflow.history.history` names for a journal with no start
#: entry (a run created before stepflow recorded histories).
_NO_START = "$.batches[0]: expected a start entry"


def _utc(at: float | None, now: float) -> str:
    """``"2026-01-02T03:04:05.678Z (5m ago)"``, or ``"-"`` for no time."""
    if at is None:
        return "-"
    stamp = datetime.fromtimestamp(at, tz=timezone.utc).isoformat(timespec="milliseconds")
    return f"{stamp.replace('+00:00', 'Z')} ({_relative(at, now)})"


def _short(step: str, *flows: str) -> str:
    for flow in flows:
        if step == flow or step.startswith(f"{flow}/"):
            return _step(step, flow)
    return step


def _outcome(effect: Effect) -> Text:
    """Say what a handler or timer did, on one line."""
    if type(effect) is HandlerReturned:
        return Text(f"returned {_json(effect.value)}", style="green")
    if type(effect) is HandlerRaised:
        return Text(f"raised {effect.error.type}: {effect.error.message}", style="red")
    if type(effect) is TimerFired:
        return Text("timer fired", style="magenta")
    if type(effect) is CancelRequested:
        return Text(_cancel_text(effect), style="yellow")
    if type(effect) is ChildEnded:
        return Text(f"child {effect.child} {effect.status}", style="cyan")
    event = cast(EventReceived, effect)
    return Text(f"event {event.name} -> {_json(event.payload)}", style="cyan")


def _replayable(definition: FlowDefinition, run: History) -> tuple[History, int]:
    """Return the part of ``run`` made under ``definition``'s name, and where it starts.

    A run adopted by a newer version of its flow (a ``migrate`` entry) started
    under the old name; :func:`stepflow.history.replay` refuses such a history,
    so it is replayed from the state its migration recorded. The index returned
    is the index in ``run.batches`` of the tail's first batch (``tail.batches[k]``
    is ``run.batches[k + offset]``). A history of another flow is returned whole:
    replaying it raises :class:`~stepflow.errors.FlowMismatchError`.
    """
    if run.flow != definition.name:
        for index in range(len(run.batches) - 1, -1, -1):
            batch = run.batches[index]
            if batch.op == "migrate" and batch.state is not None:
                if batch.state.flow != definition.name:
                    break
                state = batch.state
                tail = History(
                    run.run_id, state.flow, state.fingerprint, state, run.batches[index + 1 :]
                )
                return tail, index + 1
    return run, 0


@main.command("history")
@click.argument("run_id", metavar="RUN")
@click.option(
    "--flow", "flow_ref", metavar="MODULE:FLOW",
    help="The run's flow: replay the history against it to show retry attempts.",
)  # fmt: skip
@_db_option
def show_history(run_id: str, flow_ref: str | None, db: str | None) -> None:
    """Show a run's journal, one row per effect applied to it.

    Columns: seq (the journal entry), time (UTC, and how long ago), after (time
    since the previous entry), op, step (the command answered), outcome (the value
    returned, the error raised, the timer fired; or the start, a resume, a
    cancellation, a migration) and n: how many times a command of that step had
    been answered in the run, this one included. n counts every answer (each poll
    of a wait_for, each pass of a loop, each retry); it needs nothing but the
    journal.

    With --flow MODULE:FLOW the history is replayed against that flow, and an
    attempt column shows the attempt of the innermost retry around the step as
    the run's state counted it (restarts + 1): "-" for a step in no retry, "?"
    where the replay could not follow the run (after a divergence).
    """
    flow = load_flow(flow_ref) if flow_ref is not None else None
    now = time.time()
    with _store(db, create=False) as store:
        run_id = stepflow.resolve_run_id(store, run_id)
        view = stepflow.read_run(store, run_id)
        if view.journal_pruned:  # nothing to show from the start: say why, in one line
            notes = view.notes
            raise JournalPrunedError(run_id, notes.pruned_through or 0, notes.pruned_at or 0.0)
        run = history(store, run_id) if flow is not None else None
    record = view.record
    befores: dict[int, State] = {}  # seq -> the replayed state the entry was applied to
    note: Text | None = None
    if flow is not None and run is not None:
        if flow.name not in (record.flow, run.flow):
            raise click.ClickException(
                f"run {run_id!r} is a run of {record.flow!r}, but {flow_ref!r} is {flow.name!r}"
            )
        tail, offset = _replayable(flow.definition, run)
        result = replay_history(flow.definition, tail)
        for k, before in enumerate((tail.initial, *result.states)):
            befores[k + offset + 2] = before  # tail.batches[k] is the entry of seq k+offset+2
        if result.divergences:
            divergence = result.divergences[0]
            seq = divergence.index + offset + 2
            for later in [s for s in befores if s >= seq]:
                del befores[later]
            note = Text(
                f"Replaying against {flow.name} diverged at seq {seq}: {divergence}; "
                "the attempts from there on are unknown (?).",
                style="yellow",
            )
    flows = (record.flow, *(() if run is None else (run.flow,)))
    columns = ["seq", "time", "after", "op", "step", "outcome", "n"]
    if flow is not None:
        columns.append("attempt")
    table = Table(*columns)
    table.columns[5].overflow = "fold"
    answers: dict[tuple[str, str], int] = {}
    previous: float | None = None
    for entry, batch in view.journal:
        after = "-" if previous is None else f"+{entry.at - previous:.2f}s"
        previous = entry.at
        first = [str(entry.seq), _utc(entry.at, now), after, batch.op]
        blank = ["", "", "", ""]
        rows: list[tuple[str, Text, str, str]] = []
        if batch.op == "effects":
            commands = {c.id: c for c in batch.answered}
            for effect in batch.effects:
                command = commands.get(answered_id(effect))
                if command is None:
                    what = (
                        "run"
                        if type(effect) is CancelRequested
                        else effect[0]
                        if type(effect) is EventReceived
                        else f"#{effect[0]}"
                    )
                    rows.append((what, _outcome(effect), "", ""))
                    continue
                key = (command.kind, command.step)
                answers[key] = answers.get(key, 0) + 1
                prior = befores.get(entry.seq)
                attempt = (
                    "?"
                    if prior is None or flow is None
                    else attempt_label(flow.definition, prior, command)
                )
                step = f"{command.kind} {_short(command.step, *flows)}"
                rows.append((step, _outcome(effect), str(answers[key]), attempt))
            if not batch.effects:
                rows.append(("-", Text("no effect (the state was saved again)"), "", ""))
        elif batch.op == "start" and batch.state is not None:
            position = ", ".join(_short(e.partition(":")[2], *flows) for e in batch.state.events)
            rows.append(("-", Text(f"started at {position}"), "", ""))
        elif batch.op == "migrate" and batch.state is not None:
            rows.append(("-", Text(f"migrated to {batch.state.flow}", style="cyan"), "", ""))
        else:
            text = {"resume": "resumed", "cancel": "cancelled", "wake": "woken"}.get(
                batch.op, batch.op
            )
            rows.append(("-", Text(text, style="yellow"), "", ""))
        for i, (step, outcome, n, attempt) in enumerate(rows):
            cells: list[str | Text] = [*(first if i == 0 else blank), escape(step), outcome, n]
            if flow is not None:
                cells.append(attempt)
            table.add_row(*cells)
    console = _stdout(wide=True)
    console.print(Text(f"history of run {run_id}", style="italic"))  # a title would fold the id
    console.print(table if view.journal else Text("No history yet.", style="dim"))
    if note is not None:
        console.print(note)


@main.command("export")
@click.argument("run_id", metavar="RUN")
@_db_option
def export_history(run_id: str, db: str | None) -> None:
    """Print a run's history as JSON, to replay or keep as a fixture.

    The text is exactly what stepflow.dumps_history writes: redirect it to a
    file (stepflow export RUN > run.json). A run created before stepflow
    recorded histories cannot be exported.
    """
    with _store(db, create=False) as store:
        run = history(store, stepflow.resolve_run_id(store, run_id))
    click.echo(dumps_history(run), nl=False)


_Verdict = Literal["compatible", "divergent", "skipped", "error"]
_VERDICTS: tuple[_Verdict, ...] = ("compatible", "divergent", "skipped", "error")


@attrs.frozen
class _Replayed:
    """What replaying one recorded run against a definition gave."""

    source: str  # the run id, or the file it was read from
    run_id: str
    verdict: _Verdict
    reason: str = ""
    divergence: ReplayDivergence | None = None
    index: int = 0  # the divergence's batch index in the whole history
    divergences: int = 0

    def label(self) -> str:
        same = self.source == self.run_id or not self.run_id
        return self.source if same else f"{self.source} (run {self.run_id})"


def _replay_one(definition: FlowDefinition, run: History, source: str) -> _Replayed:
    tail, offset = _replayable(definition, run)
    try:
        result = replay_history(definition, tail, collect_all=True)
    except FlowMismatchError as exc:
        return _Replayed(source, run.run_id, "error", str(exc))
    if result.ok:
        return _Replayed(source, run.run_id, "compatible")
    first = result.divergences[0]
    return _Replayed(
        source,
        run.run_id,
        "divergent",
        re.sub(r"^batch -?\d+: ", "", str(first)),
        first,
        first.index + offset,
        len(result.divergences),
    )


def _read_history(path: str) -> History:
    """Read a history file `stepflow export` wrote; refuse anything else on one line."""
    try:
        with open(path, "rb") as file:
            return loads_history(file.read())
    except CorruptHistoryError as exc:
        raise click.ClickException(f"{path}: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None


def _command_json(command: Command | None) -> dict[str, Any] | None:
    if command is None:
        return None
    return {"id": command.id, "kind": command.kind, "step": command.step, "event": command.event}


def _replayed_json(item: _Replayed) -> dict[str, Any]:
    body: dict[str, Any] = {"source": item.source, "run": item.run_id, "verdict": item.verdict}
    if item.reason:
        body["reason"] = item.reason
    if item.divergence is not None:
        body.update(
            index=item.index,
            seq=item.index + 2,
            step=item.divergence.step,
            expected=_command_json(item.divergence.expected),
            actual=_command_json(item.divergence.actual),
            divergences=item.divergences,
        )
    return body


@main.command("replay")
@click.argument("flow_ref", metavar="MODULE:FLOW")
@click.argument(
    "files", metavar="[FILE]...", nargs=-1, type=click.Path(exists=True, dir_okay=False)
)
@_db_option
@click.option(
    "--status", type=click.Choice(_STATUSES),
    help="Only the stored runs with this status (not with FILE).",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def replay_runs(
    ctx: click.Context,
    flow_ref: str,
    files: Sequence[str],
    db: str | None,
    status: Any,
    as_json: bool,
) -> None:
    """Replay recorded runs against MODULE:FLOW; exit 1 if any diverges.

    Without FILE, every stored run of the flow's name (with --status, only those)
    is replayed from its journal; runs created before stepflow recorded
    histories are skipped. With FILE..., the histories `stepflow export` wrote are
    replayed instead. A run adopted by this version through a migration is
    replayed from its migration on.

    Prints how many runs are compatible and, for each divergent one, the first
    batch where the definition issues another command than the one the run
    answered. Exits with status 1 if any run diverges or cannot be replayed
    (a history of another flow, an unreadable journal), so it can gate a deploy;
    a FILE that is not a history is an error (status 1) before anything is
    replayed.
    """
    if files and status is not None:
        raise UsageProblem("--status selects stored runs: give it without FILE")
    if files and ctx.get_parameter_source("db") is click.core.ParameterSource.COMMANDLINE:
        raise UsageProblem("give either --db (replay the stored runs) or FILE..., not both")
    flow = load_flow(flow_ref)
    definition = flow.definition
    results: list[_Replayed] = []
    if files:
        histories = [(path, _read_history(path)) for path in files]  # all read, then replayed
        results = [_replay_one(definition, run, path) for path, run in histories]
    else:
        with _store(db, create=False) as store:
            for record in store.runs(flow=definition.name, status=status):
                try:
                    run = history(store, record.run_id)
                except JournalPrunedError:
                    reason = "no history (its journal was pruned)"
                    results.append(_Replayed(record.run_id, record.run_id, "skipped", reason))
                    continue
                except CorruptHistoryError as exc:
                    if exc.problems[:1] == (_NO_START,):
                        reason = "no history (the run was created before stepflow recorded them)"
                        results.append(_Replayed(record.run_id, record.run_id, "skipped", reason))
                    else:
                        results.append(_Replayed(record.run_id, record.run_id, "error", str(exc)))
                    continue
                except CorruptStateError as exc:
                    results.append(_Replayed(record.run_id, record.run_id, "error", str(exc)))
                    continue
                results.append(_replay_one(definition, run, record.run_id))
    counts: dict[str, int] = {v: sum(1 for r in results if r.verdict == v) for v in _VERDICTS}
    failed = counts["divergent"] + counts["error"] > 0
    if as_json:
        document: dict[str, Any] = {
            "flow": definition.name,
            "fingerprint": definition.fingerprint,
            **counts,
            "runs": [_replayed_json(r) for r in results],
        }
        click.echo(json.dumps(document, indent=2))
    else:
        for item in results:
            if item.verdict == "divergent" and item.divergence is not None:
                where = "the first state" if item.index < 0 else f"batch {item.index}"
                click.echo(
                    f"{item.label()}: divergent at {where} (seq {item.index + 2}), "
                    f"step {item.divergence.step}: {item.reason}"
                )
                if item.divergences > 1:
                    click.echo(f"  ({item.divergences - 1} more divergences after it)")
            elif item.verdict != "compatible":
                click.echo(f"{item.label()}: {item.verdict}: {item.reason}")
        if not results:
            click.echo(f"No runs of {definition.name} to replay.")
        else:
            parts = [f"{counts['compatible']} compatible", f"{counts['divergent']} divergent"]
            parts += [f"{counts[v]} {v}" for v in ("skipped", "error") if counts[v]]
            noun = "run" if len(results) == 1 else "runs"
            click.echo(
                f"{', '.join(parts)} ({len(results)} {noun} replayed against "
                f"{definition.name} {definition.fingerprint[:19]}...)"
            )
    if failed:
        sys.exit(1)


# -- definitions: diff, graph, check, paths --------------------------------------------


def _is_factory(module: ModuleType, value: Any) -> bool:
    """Tell whether ``value`` is a function of ``module`` declared to return a flow.

    That is: it takes no required argument and its return annotation names
    ``Flow`` or ``Steps`` (``-> stepflow.Flow``), as ``build_flow`` does.
    """
    if not inspect.isfunction(value) or value.__module__ != module.__name__:
        return False
    try:
        signature = inspect.signature(value)
    except (TypeError, ValueError):  # pragma: no cover - a Python function has one
        return False
    if any(
        p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        for p in signature.parameters.values()
    ):
        return False
    returns = signature.return_annotation
    name = returns if isinstance(returns, str) else getattr(returns, "__name__", "")
    return name.rpartition(".")[2] in ("Flow", "Steps")


def _flow_entry(attribute: str, value: Any, module_ref: str) -> dict[str, Any]:
    """Return what ``flows`` lists of one attribute (documented in docs/cli.md)."""
    kind = (
        "flow"
        if isinstance(value, Flow)
        else "spec"
        if isinstance(value, stepflow.Steps)
        else "factory"
    )
    try:
        definition = _as_flow(value, f"{module_ref}:{attribute}").definition
    except (StepflowError, click.ClickException) as exc:
        return {
            "attribute": attribute,
            "kind": kind,
            "name": None,
            "fingerprint": None,
            "steps": None,
            "error": exc.message if isinstance(exc, click.ClickException) else str(exc),
        }
    steps = {
        t.step
        for t in definition.handler_transitions()
        if t.step is not None and t.kind not in ("parallel", "join")
    }
    return {
        "attribute": attribute,
        "kind": kind,
        "name": definition.name,
        "fingerprint": definition.fingerprint,
        "steps": len(steps),
        "error": None,
    }


@main.command("flows")
@click.argument("module_ref", metavar="MODULE")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (docs/cli.md).")
def list_flows(module_ref: str, as_json: bool) -> None:
    """List the flows MODULE defines: attribute, flow name, fingerprint, steps.

    MODULE is a module name (pipelines.deploy) or a Python file's path. Every
    public attribute holding a stepflow.Flow or a Steps spec is listed, by
    name, and so is every factory: a function of MODULE that takes no argument
    and is annotated to return one (def build_flow() -> stepflow.Flow), which
    is called. Specs are compiled; one that does not compile, or a factory that
    fails, is listed with its error (exit status 1). steps counts the steps
    that wait for a handler or a timer.
    """
    module = import_module(module_ref)
    entries = [
        _flow_entry(name, value, module_ref)
        for name, value in sorted(vars(module).items())
        if not name.startswith("_")
        and (isinstance(value, (Flow, stepflow.Steps)) or _is_factory(module, value))
    ]
    if as_json:
        click.echo(json.dumps({"module": module_ref, "flows": entries}, indent=2))
    elif not entries:
        click.echo(f"No flows in {module_ref} (no attribute holds a stepflow.Flow or Steps spec).")
    else:
        table = Table("attribute", "flow", "fingerprint", "steps")
        for entry in entries:
            if entry["error"] is not None:
                error = f"[red]does not compile: {escape(entry['error'])}[/]"
                table.add_row(escape(entry["attribute"]), error, "-", "-")
                continue
            table.add_row(
                escape(entry["attribute"]),
                escape(entry["name"]),
                entry["fingerprint"],
                str(entry["steps"]),
            )
        _stdout(wide=True).print(table)
    if any(entry["error"] is not None for entry in entries):
        sys.exit(1)


@main.command("diff")
@click.argument("old_ref", metavar="MODULE:OLD")
@click.argument("new_ref", metavar="MODULE:NEW")
def diff_flows(old_ref: str, new_ref: str) -> None:
    """Say whether runs of OLD can continue under NEW, and what changed.

    Lists the events NEW adds, the events of OLD it removes (marking the resting
    ones, where a run can be), and the resting events whose handler kind or
    retries changed. When NEW declares a Migration from OLD's name, its event
    mapping is used. Exits with status 0 when every state of OLD fits NEW, 1
    when not.
    """
    old, new = load_flow(old_ref), load_flow(new_ref)
    migration = next((m for m in new.migrations if m.source == old.name), None)
    result = stepflow.diff(old.definition, new.definition, migration)
    console = _stdout()
    console.print(
        f"[bold]{escape(old.name)}[/] ({result.old[1][:19]}...) -> "
        f"[bold]{escape(new.name)}[/] ({result.new[1][:19]}...)"
    )
    if migration is not None:
        console.print(f"through the migration {escape(new.name)} declares from {escape(old.name)}")
    if result.same:
        console.print("The definitions are the same.")
    resting = {t.source for t in old.definition.handler_transitions()}
    for title, events, style in (
        ("added", result.added, "green"),
        ("removed", result.removed, "red"),
        ("changed", result.changed, "yellow"),
    ):
        if not events:
            continue
        console.print(f"{title} ({len(events)}):", style="bold")
        for event in events:
            mark = " (a run can rest here)" if title == "removed" and event in resting else ""
            console.print(f"  [{style}]{escape(event)}[/]{mark}")
    if result.compatible:
        console.print(
            f"[green]compatible[/]: every state of {escape(old.name)} can continue under "
            f"{escape(new.name)}"
        )
        if old.name != new.name and migration is None:
            console.print(
                f"note: {escape(new.name)} declares no Migration from {escape(old.name)}, so its "
                f"workers will not adopt {escape(old.name)}'s runs: serve both versions, or "
                f"declare migrations=[Migration({old.name!r})]",
                style="dim",
            )
    else:
        console.print(
            f"[red]incompatible[/]: some states of {escape(old.name)} cannot continue under "
            f"{escape(new.name)} (see removed and changed above)"
        )
        sys.exit(1)


@main.command("graph")
@click.argument("flow_ref", metavar="MODULE:FLOW")
@click.option(
    "--format", "fmt", type=click.Choice(("mermaid", "dot", "json")), default="mermaid",
    show_default=True, help="Mermaid stateDiagram-v2, Graphviz DOT, or the graph as JSON.",
)  # fmt: skip
@click.option("--run", "run_id", metavar="RUN", help="Highlight where this run is.")
@_db_option
def draw_graph(flow_ref: str, fmt: str, run_id: str | None, db: str | None) -> None:
    """Print a diagram of MODULE:FLOW, with --run a run's position.

    The run's stored state is decoded with the flow's definition, so it must be
    a run of this flow and of a version whose events this one still has.
    Render the output with Mermaid or Graphviz (stepflow graph ... --format dot |
    dot -Tsvg > flow.svg).
    """
    from stepflow.diagrams import to_dot, to_json, to_mermaid

    flow = load_flow(flow_ref)
    state: State | None = None
    if run_id is not None:
        with _store(db, create=False) as store:
            run_id = stepflow.resolve_run_id(store, run_id)
            record = store.load(run_id)
        if record.flow != flow.name:
            raise click.ClickException(
                f"run {run_id!r} is a run of {record.flow!r}, but {flow_ref!r} is {flow.name!r}"
            )
        state = loads(record.state, flow.definition)
    if fmt == "json":
        click.echo(json.dumps(to_json(flow.definition, state), indent=2))
    else:
        draw = to_dot if fmt == "dot" else to_mermaid
        click.echo(draw(flow.definition, state), nl=False)


_SEVERITY_STYLES = {"error": "red", "warning": "yellow"}


@main.command("check")
@click.argument("flow_ref", metavar="MODULE:FLOW")
@click.option(
    "--max-loops", type=click.IntRange(min=1), default=3, show_default=True,
    help="How many times each loop, poll and unbounded retry is followed.",
)  # fmt: skip
@click.option(
    "--max-states", type=click.IntRange(min=1), default=100_000, show_default=True,
    help="Stop searching after this many states.",
)  # fmt: skip
@click.option(
    "--allow-warnings", is_flag=True, help="Exit with status 0 when there are only warnings."
)
def check_flow(flow_ref: str, max_loops: int, max_states: int, allow_warnings: bool) -> None:
    """Check MODULE:FLOW for design faults and explore every run of it.

    Runs no handler: each command is answered with each of its outcomes and the
    core computes where that leads. Prints the findings (severity, code, step,
    what is wrong, how to fix it), then the exploration: distinct states,
    transitions, whether the search ended before --max-states, completed and
    failed end states, dead ends (states from which no run ends) and the time
    taken.

    Exits with status 1 on any finding: an error, a dead end, a warning or a
    search cut short; with --allow-warnings, only errors and dead ends fail.
    """
    from stepflow.analysis import check, explore

    definition = load_flow(flow_ref).definition
    started = time.perf_counter()
    findings = check(definition, max_states=max_states)
    checked = time.perf_counter()
    exploration = explore(definition, max_loops=max_loops, max_states=max_states)
    explored = time.perf_counter()
    console = _stdout()
    if findings:
        table = Table("severity", "code", "step", "message", "hint")
        table.columns[3].overflow = "fold"
        table.columns[4].overflow = "fold"
        for finding in findings:
            table.add_row(
                f"[{_SEVERITY_STYLES[finding.severity]}]{finding.severity}[/]",
                finding.code,
                escape(_short(finding.path, definition.name)),
                escape(finding.message),
                escape(finding.hint),
            )
        console.print(table)
    else:
        console.print("No findings.", style="green")
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("flow", f"{escape(definition.name)} ({definition.fingerprint[:19]}...)")
    facts.add_row("states", str(exploration.states))
    facts.add_row("transitions", str(exploration.transitions))
    complete = "yes" if exploration.complete else f"[yellow]no: stopped at {max_states} states[/]"
    facts.add_row("complete", complete)
    facts.add_row("completed", f"{exploration.completed} (distinct completed states)")
    facts.add_row("failed", f"{exploration.failed} (distinct failed states)")
    facts.add_row("cut", f"{exploration.cut} (outcomes past --max-loops {max_loops})")
    dead = len(exploration.dead_ends)
    facts.add_row("dead ends", f"[red]{dead}[/]" if dead else "0")
    facts.add_row("time", f"{checked - started:.2f}s checks, {explored - checked:.2f}s exploration")
    console.print(facts)
    for trace in exploration.dead_ends:
        console.print("dead end, reached by:", style="red")
        console.print(escape(trace.describe()))
    errors = sum(1 for f in findings if f.severity == "error") + dead
    warnings = sum(1 for f in findings if f.severity == "warning")
    warnings += 0 if exploration.complete else 1
    verdict = f"{errors} error{'s' * (errors != 1)}, {warnings} warning{'s' * (warnings != 1)}"
    console.print(verdict, style="red" if errors else "yellow" if warnings else "green")
    if errors or (warnings and not allow_warnings):
        sys.exit(1)


@main.command("paths")
@click.argument("flow_ref", metavar="MODULE:FLOW")
@click.option(
    "--max-loops", type=click.IntRange(min=1), default=1, show_default=True,
    help="How many times each loop, poll and unbounded retry is followed.",
)  # fmt: skip
def list_paths(flow_ref: str, max_loops: int) -> None:
    """List a shortest outcome sequence to each step and transition.

    One row per target: every step (reached when it starts), then every
    destination of every handler transition (reached when taken), each with the
    outcomes, in order, of a shortest run that reaches it: test cases for the
    flow's handlers. Targets no explored run reaches are marked unreachable and
    counted at the end. Always exits with status 0.
    """
    from stepflow.analysis import paths

    definition = load_flow(flow_ref).definition
    name = definition.name
    cases = paths(definition, max_loops=max_loops)
    table = Table("target", "kind", "moves", "shortest outcomes")
    table.columns[0].overflow = "fold"
    table.columns[3].overflow = "fold"
    unreachable = []
    for case in cases:
        if isinstance(case.target, str):
            target, kind = _short(case.target, name), "step"
        else:
            source = _short(case.target.source.partition(":")[2], name)
            destination = case.target.destination.partition(":")
            where = f"{destination[0]}:{_short(destination[2], name)}"
            target, kind = f"{source} -> {where} ({case.target.reason})", "transition"
        if not case.reachable:
            unreachable.append(target)
            table.add_row(escape(target), kind, "-", "[red]unreachable[/]")
            continue
        moves = [f"{k} {_short(step, name)}: {outcome}" for k, step, outcome in case.outcomes]
        table.add_row(
            escape(target), kind, str(len(moves)), escape(" -> ".join(moves) or "(start)")
        )
    console = _stdout()
    console.print(table)
    reached = len(cases) - len(unreachable)
    console.print(f"{reached} of {len(cases)} targets reachable (--max-loops {max_loops}).")
    if unreachable:
        console.print(f"unreachable: {escape(', '.join(unreachable))}", style="red")


# The web console lives in its own package, with its own extra (stepflow[ui]).
from stepflow.console._command import ui as _ui  # noqa: E402 - registered last

main.add_command(_ui)


if __name__ == "__main__":
    main()
