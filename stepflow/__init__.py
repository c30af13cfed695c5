"""stepflow: long-running external processes as explicit, immutable state machines.

Build a flow spec, compile it, and drive it::

    import stepflow

    flow = stepflow.new(
        stepflow.named("deploy/v1")
        .do("collect", collect)
        .wait_for("collected", is_collected)
        .case("shouldDeploy", should_deploy, stepflow.steps().do("push", push))
    )
    state = flow.apply(None, ctx)          # one step; save stepflow.dumps(state)

The core (:mod:`stepflow.core`) is pure: :func:`advance` maps
``(definition, state, effects)`` to ``(state, commands)`` and executes nothing.
The shell (:class:`Interpreter`, :class:`Flow`'s drivers, the codec) carries the
commands out, and the durable runtime (:class:`Worker`, :func:`start_run`,
:func:`open_store`) keeps thousands of runs in SQLite or PostgreSQL.
"""

from stepflow.clock import Clock as Clock
from stepflow.clock import FakeClock as FakeClock
from stepflow.clock import SystemClock as SystemClock
from stepflow.codec import FORMAT_VERSION as FORMAT_VERSION
from stepflow.codec import dumps as dumps
from stepflow.codec import loads as loads
from stepflow.codec import make_converter as make_converter
from stepflow.core.advance import advance as advance
from stepflow.core.advance import resume as resume
from stepflow.core.definition import Destination as Destination
from stepflow.core.definition import FlowDefinition as FlowDefinition
from stepflow.core.definition import Transition as Transition
from stepflow.core.messages import AwaitEvent as AwaitEvent
from stepflow.core.messages import CallHandler as CallHandler
from stepflow.core.messages import ChildEnded as ChildEnded
from stepflow.core.messages import Command as Command
from stepflow.core.messages import Effect as Effect
from stepflow.core.messages import EventReceived as EventReceived
from stepflow.core.messages import HandlerRaised as HandlerRaised
from stepflow.core.messages import HandlerReturned as HandlerReturned
from stepflow.core.messages import StartChild as StartChild
from stepflow.core.messages import TimerFired as TimerFired
from stepflow.core.messages import Wake as Wake
from stepflow.core.policies import RetryPolicy as RetryPolicy
from stepflow.core.spec import Steps as Steps
from stepflow.core.spec import named as named
from stepflow.core.spec import steps as steps
from stepflow.core.state import ErrorRecord as ErrorRecord
from stepflow.core.state import State as State
from stepflow.core.state import Status as Status
from stepflow.errors import AmbiguousRunError as AmbiguousRunError
from stepflow.errors import ChildFailed as ChildFailed
from stepflow.errors import ConfigurationError as ConfigurationError
from stepflow.errors import CorruptStateError as CorruptStateError
from stepflow.errors import DefinitionError as DefinitionError
from stepflow.errors import DuplicateEffectError as DuplicateEffectError
from stepflow.errors import EffectError as EffectError
from stepflow.errors import EventError as EventError
from stepflow.errors import FlowFailed as FlowFailed
from stepflow.errors import FlowMismatchError as FlowMismatchError
from stepflow.errors import HandlerResultError as HandlerResultError
from stepflow.errors import InboxFullError as InboxFullError
from stepflow.errors import IncompatibleDefinition as IncompatibleDefinition
from stepflow.errors import InterpreterError as InterpreterError
from stepflow.errors import JournalPrunedError as JournalPrunedError
from stepflow.errors import LateEffectError as LateEffectError
from stepflow.errors import MailboxFullError as MailboxFullError
from stepflow.errors import ProgressError as ProgressError
from stepflow.errors import RecordedError as RecordedError
from stepflow.errors import RunExistsError as RunExistsError
from stepflow.errors import RunFinishedError as RunFinishedError
from stepflow.errors import ScheduleError as ScheduleError
from stepflow.errors import ScheduleExistsError as ScheduleExistsError
from stepflow.errors import StaleWriteError as StaleWriteError
from stepflow.errors import StateError as StateError
from stepflow.errors import StepflowError as StepflowError
from stepflow.errors import StepTimeoutError as StepTimeoutError
from stepflow.errors import StoreError as StoreError
from stepflow.errors import UnknownEffectError as UnknownEffectError
from stepflow.errors import UnknownEventError as UnknownEventError
from stepflow.errors import UnknownRunError as UnknownRunError
from stepflow.errors import UnknownScheduleError as UnknownScheduleError
from stepflow.errors import UnreadableRunError as UnreadableRunError
from stepflow.errors import WaitTimeoutError as WaitTimeoutError
from stepflow.flow import Flow as Flow
from stepflow.flow import new as new
from stepflow.history import CorruptHistoryError as CorruptHistoryError
from stepflow.history import History as History
from stepflow.history import ReplayDivergence as ReplayDivergence
from stepflow.history import ReplayResult as ReplayResult
from stepflow.history import dumps_history as dumps_history
from stepflow.history import history as history
from stepflow.history import loads_history as loads_history
from stepflow.history import replay as replay
from stepflow.interpreter import Interpreter as Interpreter
from stepflow.interpreter import rebuild_exception as rebuild_exception
from stepflow.runtime import RunContext as RunContext
from stepflow.runtime import Schedule as Schedule
from stepflow.runtime import Worker as Worker
from stepflow.runtime import add_schedule as add_schedule
from stepflow.runtime import cancel_run as cancel_run
from stepflow.runtime import pause_schedule as pause_schedule
from stepflow.runtime import prune_runs as prune_runs
from stepflow.runtime import read_run as read_run
from stepflow.runtime import resolve_run_id as resolve_run_id
from stepflow.runtime import resume_run as resume_run
from stepflow.runtime import resume_schedule as resume_schedule
from stepflow.runtime import send_event as send_event
from stepflow.runtime import start_run as start_run
from stepflow.runtime import wake as wake
from stepflow.stores import Store as Store
from stepflow.stores import open_store as open_store
from stepflow.versioning import Migration as Migration
from stepflow.versioning import diff as diff
from stepflow.versioning import migrate as migrate

__version__ = "0.1.0.dev0"

__all__ = [
    "FORMAT_VERSION",
    "AmbiguousRunError",
    "AwaitEvent",
    "CallHandler",
    "ChildEnded",
    "ChildFailed",
    "Clock",
    "Command",
    "ConfigurationError",
    "CorruptHistoryError",
    "CorruptStateError",
    "DefinitionError",
    "Destination",
    "DuplicateEffectError",
    "Effect",
    "EffectError",
    "ErrorRecord",
    "EventError",
    "EventReceived",
    "FakeClock",
    "Flow",
    "FlowDefinition",
    "FlowFailed",
    "FlowMismatchError",
    "HandlerRaised",
    "HandlerResultError",
    "HandlerReturned",
    "History",
    "InboxFullError",
    "IncompatibleDefinition",
    "Interpreter",
    "InterpreterError",
    "JournalPrunedError",
    "LateEffectError",
    "MailboxFullError",
    "Migration",
    "ProgressError",
    "RecordedError",
    "ReplayDivergence",
    "ReplayResult",
    "RetryPolicy",
    "RunContext",
    "RunExistsError",
    "RunFinishedError",
    "Schedule",
    "ScheduleError",
    "ScheduleExistsError",
    "StaleWriteError",
    "StartChild",
    "State",
    "StateError",
    "Status",
    "StepTimeoutError",
    "StepflowError",
    "Steps",
    "Store",
    "StoreError",
    "SystemClock",
    "TimerFired",
    "Transition",
    "UnknownEffectError",
    "UnknownEventError",
    "UnknownRunError",
    "UnknownScheduleError",
    "UnreadableRunError",
    "WaitTimeoutError",
    "Wake",
    "Worker",
    "add_schedule",
    "advance",
    "cancel_run",
    "diff",
    "dumps",
    "dumps_history",
    "history",
    "loads",
    "loads_history",
    "make_converter",
    "migrate",
    "named",
    "new",
    "open_store",
    "pause_schedule",
    "prune_runs",
    "read_run",
    "rebuild_exception",
    "replay",
    "resolve_run_id",
    "resume",
    "resume_run",
    "resume_schedule",
    "send_event",
    "start_run",
    "steps",
    "wake",
]
