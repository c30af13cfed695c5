"""The project's property-test strategies: those of :mod:`stepflow.testing`.

stepflow's own suite and users' suites draw from the same strategies; this module
only re-exports them under the names the tests use, plus :func:`run`.
"""

from __future__ import annotations

import stepflow
from stepflow.core.groups import command_times
from stepflow.testing import (
    EXIT_OUTCOMES,
    START,
    HandlerKey,
    Outcome,
    Raises,
    Returns,
    ReturnsWrongKind,
    WrongKind,
    bodies,
    definitions,
    flows_and_scripts,
    items,
    json_values,
    next_command,
    outcomes,
    outcomes_for,
    specs,
    step_names,
)
from stepflow.testing import ScriptedWorld as World
from stepflow.testing import handler_keys as handler_keys

scripts = outcomes

__all__ = [
    "EXIT_OUTCOMES",
    "START",
    "HandlerKey",
    "Outcome",
    "Raises",
    "Returns",
    "ReturnsWrongKind",
    "World",
    "WrongKind",
    "bodies",
    "definitions",
    "flows_and_scripts",
    "handler_keys",
    "items",
    "json_values",
    "outcomes_for",
    "run",
    "scripts",
    "specs",
    "step_names",
]


def run(
    definition: stepflow.FlowDefinition, world: World
) -> tuple[stepflow.State, list[stepflow.State], list[stepflow.Command]]:
    """Drive a run to its end through ``advance``; return final state, all states, commands."""
    state, commands = stepflow.advance(definition, None, now=world.clock.now())
    states = [state]
    issued = list(commands)
    while commands:
        command = next_command(state, commands)
        effect = world.execute(command, *command_times(state, command))
        state, commands = stepflow.advance(definition, state, (effect,))
        states.append(state)
        issued.extend(c for c in commands if c.id > states[-2].seq)
    return state, states, issued
