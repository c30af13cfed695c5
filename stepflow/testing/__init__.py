"""Testing and analysis tools for users' own flows.

* **Scripts and simulation** (no hypothesis needed): outcome scripts
  (:class:`Returns`, :class:`Raises`), :func:`simulate` a run without real
  handlers while skipping time, :func:`scripted_flow` for the real drivers, and
  :class:`~stepflow.FakeClock`.
* **Properties**: :func:`assert_resumable`, :func:`assert_deterministic` and
  :func:`assert_terminates`; :class:`FlowMachine`, a hypothesis
  ``RuleBasedStateMachine`` to subclass.
* **Hypothesis strategies**: :func:`flows` (random definitions: the very
  strategy stepflow's own suite uses) and :func:`outcomes` (scripts for a
  definition). These need ``hypothesis`` (``pip install 'stepflow[testing]'``).
* **Analysis** (re-exported from :mod:`stepflow.analysis`, which holds a few
  more names): exhaustive :func:`explore` with invariants (:func:`always`,
  :func:`never`, :func:`before`, :func:`leads_to`), :func:`paths`, static
  :func:`check`; and the diagrams of :mod:`stepflow.diagrams`
  (:func:`to_mermaid`, :func:`to_dot`, :func:`to_json`).
* **A pytest plugin** with ``fake_clock`` and ``scripted_flow`` fixtures,
  installed with stepflow.
"""

from stepflow.analysis import Exploration as Exploration
from stepflow.analysis import Finding as Finding
from stepflow.analysis import Invariant as Invariant
from stepflow.analysis import PathCase as PathCase
from stepflow.analysis import Violation as Violation
from stepflow.analysis import always as always
from stepflow.analysis import before as before
from stepflow.analysis import check as check
from stepflow.analysis import explore as explore
from stepflow.analysis import leads_to as leads_to
from stepflow.analysis import never as never
from stepflow.analysis import paths as paths
from stepflow.clock import FakeClock as FakeClock
from stepflow.diagrams import to_dot as to_dot
from stepflow.diagrams import to_json as to_json
from stepflow.diagrams import to_mermaid as to_mermaid
from stepflow.testing._properties import Crash as Crash
from stepflow.testing._properties import assert_deterministic as assert_deterministic
from stepflow.testing._properties import assert_resumable as assert_resumable
from stepflow.testing._properties import assert_terminates as assert_terminates
from stepflow.testing._properties import run_with_crashes as run_with_crashes
from stepflow.testing._scripts import EXIT_OUTCOMES as EXIT_OUTCOMES
from stepflow.testing._scripts import START as START
from stepflow.testing._scripts import HandlerKey as HandlerKey
from stepflow.testing._scripts import Outcome as Outcome
from stepflow.testing._scripts import Raises as Raises
from stepflow.testing._scripts import Returns as Returns
from stepflow.testing._scripts import ReturnsWrongKind as ReturnsWrongKind
from stepflow.testing._scripts import Script as Script
from stepflow.testing._scripts import ScriptedWorld as ScriptedWorld
from stepflow.testing._scripts import TimesOut as TimesOut
from stepflow.testing._scripts import Trace as Trace
from stepflow.testing._scripts import TraceStep as TraceStep
from stepflow.testing._scripts import WrongKind as WrongKind
from stepflow.testing._scripts import check_script as check_script
from stepflow.testing._scripts import handler_keys as handler_keys
from stepflow.testing._scripts import next_command as next_command
from stepflow.testing._scripts import outcome_of as outcome_of
from stepflow.testing._scripts import scripted_flow as scripted_flow
from stepflow.testing._scripts import simulate as simulate

__all__ = [
    "EXIT_OUTCOMES",
    "START",
    "Crash",
    "Exploration",
    "FakeClock",
    "Finding",
    "HandlerKey",
    "Invariant",
    "Outcome",
    "PathCase",
    "Raises",
    "Returns",
    "ReturnsWrongKind",
    "Script",
    "ScriptedWorld",
    "TimesOut",
    "Trace",
    "TraceStep",
    "Violation",
    "WrongKind",
    "always",
    "assert_deterministic",
    "assert_resumable",
    "assert_terminates",
    "before",
    "check",
    "check_script",
    "explore",
    "handler_keys",
    "leads_to",
    "never",
    "next_command",
    "outcome_of",
    "paths",
    "run_with_crashes",
    "scripted_flow",
    "simulate",
    "to_dot",
    "to_json",
    "to_mermaid",
]

try:  # the strategies and the state machine need hypothesis; the rest does not
    from stepflow.testing._machine import FlowMachine as FlowMachine
    from stepflow.testing._strategies import bodies as bodies
    from stepflow.testing._strategies import definitions as definitions
    from stepflow.testing._strategies import flows as flows
    from stepflow.testing._strategies import flows_and_scripts as flows_and_scripts
    from stepflow.testing._strategies import items as items
    from stepflow.testing._strategies import json_values as json_values
    from stepflow.testing._strategies import outcomes as outcomes
    from stepflow.testing._strategies import outcomes_for as outcomes_for
    from stepflow.testing._strategies import specs as specs
    from stepflow.testing._strategies import step_names as step_names
except ImportError as exc:  # pragma: no cover - exercised only without hypothesis
    if exc.name != "hypothesis":
        raise
else:
    __all__ += [
        "FlowMachine",
        "bodies",
        "definitions",
        "flows",
        "flows_and_scripts",
        "items",
        "json_values",
        "outcomes",
        "outcomes_for",
        "specs",
        "step_names",
    ]
    __all__.sort(key=lambda name: (not name.isupper(), name))
