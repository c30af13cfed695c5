"""``deploy/v1``: the go-stepflow seed's pipeline, as ``stepflow demo`` ran it before ``v2``.

The demo now runs ``deploy/v2`` (:mod:`stepflow.demo`), which rolls the merged
version out region by region with a ``map``. This module keeps the earlier
version, one application rolled out as a whole, for three reasons:

* a database an earlier demo left behind holds ``deploy/v1`` runs: a worker
  serving this flow (``stepflow worker stepflow.demo_v1:flow``) finishes them,
  each run staying on its own version;
* the golden histories recorded with it (``tests/fixtures/histories/deploy-v1``)
  keep replaying against the definition they were recorded with;
* it is the seed's pipeline exactly, one position per run, which the analysis
  example (``tests/examples/test_deploy_pipeline.py``) explores exhaustively.

Its handlers answer through the same simulated :class:`~stepflow.demo.Systems`
and draw the same numbers as they always did, so a run recorded before is
recorded again identically.
"""

from __future__ import annotations

from typing import Any

import stepflow
from stepflow.demo import (
    _SERVICES,
    COLLECTOR_RETRY,
    DeploymentMismatch,
    Handler,
    _systems,
    _unit,
    get_actual_state,
    is_actual_state_collected,
)
from stepflow.flow import Flow
from stepflow.runtime.context import RunContext

__all__ = ["FLOW_NAME", "build_flow", "demo_inputs", "flow"]

#: The seed pipeline's versioned name.
FLOW_NAME = "deploy/v1"

_PRE = f"{FLOW_NAME}/collectPreDeployStateRetry/getPreActualState"
_PR = f"{FLOW_NAME}/deployCase/steps/createDeployRequest"
_POST = f"{FLOW_NAME}/deployCase/steps/collectPostDeployStateRetry/getPostActualState"


def _replicas_updated(pr: Any, now: float) -> int:
    """How many replicas run the new version at ``now`` (the rollout starts at the merge)."""
    if now < pr["merges_at"]:
        return 0
    rolled = int((now - pr["merges_at"]) / pr["replica_seconds"])
    return int(min(rolled, pr["replicas"]))


def _version_seen(ctx: RunContext, job: Any) -> str:
    """Return the version the application ran on all its replicas when ``job`` started."""
    pr = ctx.outputs.get(_PR)
    if pr is not None and _replicas_updated(pr, float(job["started_at"])) == pr["replicas"]:
        return str(ctx.input["desired"])
    return str(ctx.input["running"])


async def should_deploy(ctx: RunContext) -> bool:
    """Deploy when the version collected before deploying is not the desired one."""
    actual, desired = _version_seen(ctx, ctx.outputs[_PRE]), ctx.input["desired"]
    _systems(ctx).note(
        ctx, f"{actual} -> {desired}" if actual != desired else f"already at {desired}"
    )
    return bool(actual != desired)


async def create_deploy_request(ctx: RunContext) -> dict[str, Any]:
    """Open the GitOps pull request; it records how the agent rolls the app out."""
    systems = _systems(ctx)
    await systems.call(ctx)
    pr = systems.open_pull_request(ctx)
    pr["replicas"] = int(ctx.input["replicas"])
    pr["replica_seconds"] = systems.speed * (1.0 + 0.6 * _unit(ctx.run_id, "replica"))
    return pr


async def is_deploy_request_accepted(ctx: RunContext) -> bool:
    """Whether the pull request merged."""
    systems = _systems(ctx)
    await systems.call(ctx)
    return systems.merged(ctx, ctx.outputs[_PR])


async def is_version_live(ctx: RunContext) -> bool:
    """Report the rollout's progress; done once every replica runs the new version."""
    systems = _systems(ctx)
    await systems.call(ctx)
    pr = ctx.outputs[_PR]
    live = _replicas_updated(pr, ctx.now)
    systems.note(ctx, f"rollout {live}/{pr['replicas']}")
    return live == int(pr["replicas"])


async def validate_post_deploy_state(ctx: RunContext) -> None:
    """Fail the run when the application does not run the desired version after deploying."""
    actual, desired = _version_seen(ctx, ctx.outputs[_POST]), ctx.input["desired"]
    if actual != desired:
        raise DeploymentMismatch(f"{ctx.input['app']} runs {actual} after deploying {desired}")
    _systems(ctx).note(ctx, f"deployed {actual} (PR #{ctx.outputs[_PR]['pr']})")


def _collect(step: str, handler: Handler, job: str) -> stepflow.Steps:
    """Build a collection group: start a job, wait for it (retried when the collector flakes)."""
    return (
        stepflow.steps()
        .do(step, handler)
        .wait_for(
            f"waitFor{step[3:]}", is_actual_state_collected(lambda ctx: job), every=0.25, timeout=30
        )
    )


def build_flow() -> Flow:
    """Compile the seed's ``deploy/v1`` pipeline with the demo's handlers."""
    return stepflow.new(
        stepflow.named(FLOW_NAME)
        .retry(
            "collectPreDeployState",
            COLLECTOR_RETRY,
            _collect("getPreActualState", get_actual_state("preDeploy"), _PRE),
        )
        .case(
            "deploy",
            should_deploy,
            stepflow.steps()
            .do("createDeployRequest", create_deploy_request)
            .wait_for(
                "waitForAcceptedDeployRequest", is_deploy_request_accepted, every=0.5, timeout=120
            )
            .wait_for("monitorDeploymentProgress", is_version_live, every=0.3, timeout=120)
            .retry(
                "collectPostDeployState",
                COLLECTOR_RETRY,
                _collect("getPostActualState", get_actual_state("postDeploy"), _POST),
            )
            .do("validatePostDeployActualState", validate_post_deploy_state),
        )
    )


#: The compiled seed pipeline: ``stepflow worker stepflow.demo_v1:flow`` serves it.
flow = build_flow()


def demo_inputs(apps: int) -> list[tuple[str, dict[str, Any]]]:
    """Return the run ids and inputs the ``deploy/v1`` demo started (no regions).

    >>> run_id, spec = demo_inputs(36)[0]
    >>> run_id, spec["running"], spec["desired"], spec["replicas"]
    ('app-01', '2.1.3', '2.2.0', 4)
    """
    width = max(2, len(str(apps)))
    inputs = []
    for i in range(1, apps + 1):
        run_id = f"app-{i:0{width}d}"
        major, minor = 1 + i % 3, i % 7
        running = f"{major}.{minor}.{2 + i % 4}"
        desired = running if i % 5 == 0 else f"{major}.{minor + 1}.0"
        service = _SERVICES[(i - 1) % len(_SERVICES)]
        spec = {"app": run_id, "service": service, "running": running, "desired": desired}
        inputs.append((run_id, {**spec, "replicas": 3 + i % 4, "of": apps}))
    return inputs
