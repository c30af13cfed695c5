"""The public API: pinned names, sorted ``__all__``, docstrings everywhere."""

from __future__ import annotations

import inspect

import stepflow
import stepflow.core

PUBLIC = [
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


def test_the_public_names_are_pinned() -> None:
    assert stepflow.__all__ == PUBLIC


def test_all_is_sorted_and_every_name_exists() -> None:
    for module in (stepflow, stepflow.core):
        assert module.__all__ == sorted(module.__all__, key=lambda n: (not n.isupper(), n))
        for name in module.__all__:
            assert hasattr(module, name), name


def test_every_public_class_and_function_has_a_docstring() -> None:
    missing = []
    for name in stepflow.__all__:
        obj = getattr(stepflow, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            if not inspect.getdoc(obj):
                missing.append(name)
            for attr, member in vars(obj).items() if inspect.isclass(obj) else ():
                public = not attr.startswith("_")
                documentable = inspect.isfunction(member) or isinstance(member, property)
                if public and documentable and not inspect.getdoc(member):
                    missing.append(f"{name}.{attr}")
    assert not missing


def test_every_error_has_one_root_and_a_builtin() -> None:
    errors = [getattr(stepflow, n) for n in stepflow.__all__ if n.endswith(("Error", "Failed"))]
    errors.append(stepflow.IncompatibleDefinition)
    for cls in errors:
        assert issubclass(cls, stepflow.StepflowError), cls
        if cls not in (stepflow.StepflowError, stepflow.RecordedError):
            builtin_bases = [b for b in cls.__mro__ if b.__module__ == "builtins"]
            assert set(builtin_bases) - {Exception, BaseException, object}, cls
