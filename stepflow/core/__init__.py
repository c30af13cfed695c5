"""The pure core of stepflow: specs, definitions, states, messages and ``advance``.

Nothing in this package performs I/O, reads a clock, draws random numbers or
touches an event loop; ``tests/test_purity.py`` fails if it starts to. The shell
(:mod:`stepflow.interpreter`, :mod:`stepflow.flow`, :mod:`stepflow.codec`) builds
on it.
"""

from stepflow.core.advance import advance as advance
from stepflow.core.advance import initial_state as initial_state
from stepflow.core.advance import result_error as result_error
from stepflow.core.advance import resume as resume
from stepflow.core.checks import check_state as check_state
from stepflow.core.compile import HandlerKey as HandlerKey
from stepflow.core.compile import compile_spec as compile_spec
from stepflow.core.definition import Destination as Destination
from stepflow.core.definition import FlowDefinition as FlowDefinition
from stepflow.core.definition import Transition as Transition
from stepflow.core.definition import TransitionKind as TransitionKind
from stepflow.core.definition import completed_event as completed_event
from stepflow.core.definition import start_event as start_event
from stepflow.core.messages import AwaitEvent as AwaitEvent
from stepflow.core.messages import CallHandler as CallHandler
from stepflow.core.messages import Command as Command
from stepflow.core.messages import CommandKind as CommandKind
from stepflow.core.messages import Effect as Effect
from stepflow.core.messages import EventReceived as EventReceived
from stepflow.core.messages import HandlerRaised as HandlerRaised
from stepflow.core.messages import HandlerReturned as HandlerReturned
from stepflow.core.messages import TimerFired as TimerFired
from stepflow.core.messages import Wake as Wake
from stepflow.core.policies import CatchRule as CatchRule
from stepflow.core.policies import RetryPolicy as RetryPolicy
from stepflow.core.policies import RetryRule as RetryRule
from stepflow.core.spec import Steps as Steps
from stepflow.core.spec import named as named
from stepflow.core.spec import steps as steps
from stepflow.core.state import ErrorRecord as ErrorRecord
from stepflow.core.state import State as State
from stepflow.core.state import Status as Status

__all__ = [
    "AwaitEvent",
    "CallHandler",
    "CatchRule",
    "Command",
    "CommandKind",
    "Destination",
    "Effect",
    "ErrorRecord",
    "EventReceived",
    "FlowDefinition",
    "HandlerKey",
    "HandlerRaised",
    "HandlerReturned",
    "RetryPolicy",
    "RetryRule",
    "State",
    "Status",
    "Steps",
    "TimerFired",
    "Transition",
    "TransitionKind",
    "Wake",
    "advance",
    "check_state",
    "compile_spec",
    "completed_event",
    "initial_state",
    "named",
    "result_error",
    "resume",
    "start_event",
    "steps",
]
