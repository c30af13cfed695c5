"""The durable runtime: run contexts, run operations and the worker.

This is the shell around the pure core that keeps runs in a
:class:`~stepflow.stores.base.Store`, executes their commands and saves every
step: :class:`Worker`, :func:`start_run`, :func:`resume_run`, :func:`cancel_run`,
:func:`wake` and :func:`read_run`; :func:`send_event`, which sends events to runs
(:mod:`stepflow.runtime.events`); :class:`Schedule` and its operations
(:mod:`stepflow.runtime.schedules`); and what a worker reports as it runs
(:mod:`stepflow.runtime.metrics`: :class:`WorkerMetrics`, :class:`PrometheusMetrics`).
"""

from stepflow.runtime.context import RunContext as RunContext
from stepflow.runtime.events import send_event as send_event
from stepflow.runtime.metrics import PrometheusMetrics as PrometheusMetrics
from stepflow.runtime.metrics import WorkerMetrics as WorkerMetrics
from stepflow.runtime.runs import RunView as RunView
from stepflow.runtime.runs import cancel_run as cancel_run
from stepflow.runtime.runs import parse_age as parse_age
from stepflow.runtime.runs import prune_runs as prune_runs
from stepflow.runtime.runs import read_run as read_run
from stepflow.runtime.runs import resolve_run_id as resolve_run_id
from stepflow.runtime.runs import resume_run as resume_run
from stepflow.runtime.runs import start_run as start_run
from stepflow.runtime.runs import store_wake_at as store_wake_at
from stepflow.runtime.runs import wake as wake
from stepflow.runtime.schedules import Schedule as Schedule
from stepflow.runtime.schedules import Scheduler as Scheduler
from stepflow.runtime.schedules import add_schedule as add_schedule
from stepflow.runtime.schedules import pause_schedule as pause_schedule
from stepflow.runtime.schedules import resume_schedule as resume_schedule
from stepflow.runtime.worker import StepReport as StepReport
from stepflow.runtime.worker import Worker as Worker
from stepflow.runtime.worker import WorkerStats as WorkerStats

__all__ = [
    "PrometheusMetrics",
    "RunContext",
    "RunView",
    "Schedule",
    "Scheduler",
    "StepReport",
    "Worker",
    "WorkerMetrics",
    "WorkerStats",
    "add_schedule",
    "cancel_run",
    "parse_age",
    "pause_schedule",
    "prune_runs",
    "read_run",
    "resolve_run_id",
    "resume_run",
    "resume_schedule",
    "send_event",
    "start_run",
    "store_wake_at",
    "wake",
]
