"""Model checking for flows: explore every run, generate test paths, find design faults.

Everything here is pure and built on :func:`stepflow.advance`: handlers are
never called. Instead each command is answered with each of its possible
outcomes, and the real core computes where that leads.

* :func:`explore` searches every reachable state (breadth first, loops cut at
  ``max_loops``) and checks invariants (:func:`always`, :func:`never`,
  :func:`before`, :func:`leads_to`), returning a shortest counterexample trace
  for each one broken.
* :func:`paths` gives, for every step and every handler transition's
  destination, the shortest outcome script that reaches it: model-based tests.
* :func:`check` reports design faults with a fix: waits that may never end,
  unbounded retries, unreachable steps or transitions.
"""

from stepflow.analysis._check import Finding as Finding
from stepflow.analysis._check import check as check
from stepflow.analysis._explore import Exploration as Exploration
from stepflow.analysis._explore import Violation as Violation
from stepflow.analysis._explore import explore as explore
from stepflow.analysis._invariants import Invariant as Invariant
from stepflow.analysis._invariants import Matcher as Matcher
from stepflow.analysis._invariants import always as always
from stepflow.analysis._invariants import before as before
from stepflow.analysis._invariants import leads_to as leads_to
from stepflow.analysis._invariants import never as never
from stepflow.analysis._model import AnalysisError as AnalysisError
from stepflow.analysis._model import Happening as Happening
from stepflow.analysis._model import Move as Move
from stepflow.analysis._model import Observation as Observation
from stepflow.analysis._model import Outcome as Outcome
from stepflow.analysis._model import Trace as Trace
from stepflow.analysis._model import replay as replay
from stepflow.analysis._paths import PathCase as PathCase
from stepflow.analysis._paths import TransitionTarget as TransitionTarget
from stepflow.analysis._paths import paths as paths

__all__ = [
    "AnalysisError",
    "Exploration",
    "Finding",
    "Happening",
    "Invariant",
    "Matcher",
    "Move",
    "Observation",
    "Outcome",
    "PathCase",
    "Trace",
    "TransitionTarget",
    "Violation",
    "always",
    "before",
    "check",
    "explore",
    "leads_to",
    "never",
    "paths",
    "replay",
]
