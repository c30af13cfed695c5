"""stepflow's pytest plugin: fixtures for a fake clock and scripted flows.

Installed with stepflow (the ``pytest11`` entry point ``stepflow``), so any test
suite can ask for them:

.. code-block:: python

    def test_deploy_waits_for_the_merge(fake_clock, scripted_flow):
        flow = scripted_flow(deploy, {("wait_for", "deploy/v1/mergedWaitFor"): [Returns(False)]})
        state = flow.run()
        assert state.is_completed

It imports neither hypothesis nor anything else that a suite may not have.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from stepflow.clock import FakeClock
from stepflow.core.definition import FlowDefinition
from stepflow.flow import Flow
from stepflow.testing._scripts import START, Script, ScriptedWorld, scripted_flow

__all__ = ["fake_clock", "scripted_flow_factory"]


@pytest.fixture
def fake_clock() -> FakeClock:
    """Return a :class:`~stepflow.FakeClock` at a fixed start time."""
    return FakeClock(START)


@pytest.fixture(name="scripted_flow")
def scripted_flow_factory(fake_clock: FakeClock) -> Callable[..., Flow]:
    """Make flows whose handlers play an outcome script on ``fake_clock``.

    Call it as ``scripted_flow(flow_or_definition, script)``; the returned
    :class:`~stepflow.Flow` works with ``apply``, ``run`` and a ``Worker``.
    """

    def make(flow: Flow | FlowDefinition, script: Script | None = None) -> Flow:
        definition = flow.definition if isinstance(flow, Flow) else flow
        return scripted_flow(definition, ScriptedWorld(script or {}, fake_clock))

    return make
