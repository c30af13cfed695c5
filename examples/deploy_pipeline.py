"""The go-stepflow seed's deployment pipeline, driven by a controller loop.

A controller reconciles three applications: each pass loads an app's saved state
text, runs one step with ``flow.apply(state, ctx)`` and saves ``stepflow.dumps(state)``,
until every run is over. "web" already runs the desired version, so its ``deploy``
case is skipped. A line shows the round, the app, the status, the event the run now
rests at (its next step) and what the handlers reported.

``World`` simulates the external systems, deterministically; handlers reach it
through the ctx and read what earlier ``do`` steps returned (a collection job, the PR
number) from the outputs kept in the state. At round 4 the controller "crashes": a
new one continues from the saved texts alone. Run: ``python examples/deploy_pipeline.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import stepflow

DESIRED = {"billing": "1.5.0", "search": "2.1.0", "web": "3.2.0"}
PRE = "deploy/v1/getPreActualState"  # outputs are keyed by the step's scope path
PR = "deploy/v1/deployCase/steps/createDeployRequest"
POST = "deploy/v1/deployCase/steps/getPostActualState"


class World:
    """The simulated external systems: they outlive any controller process."""

    def __init__(self, live: Mapping[str, str]) -> None:
        self.replicas = {app: [version] * 3 for app, version in live.items()}
        self.repo = dict(live)  # the GitOps repository: app -> version in its manifest
        self.seen: dict[str, str | None] = {}  # collection job -> version seen (None: running)
        self.prs: dict[tuple[str, str], int] = {}  # (app, version) -> PR number
        self.polls: Counter[str | int] = Counter()  # job id or PR number -> polls so far

    def collect(self, app: str, phase: str) -> str:
        """Start collecting the actual state of ``app``; return the job id."""
        self.seen[job := f"{app}/{phase}"] = None
        return job

    def poll_collection(self, job: str) -> bool:
        """Poll a collection job; the second poll records the versions it saw."""
        self.polls[job] += 1
        if self.polls[job] == 2:
            self.seen[job] = "+".join(sorted(set(self.replicas[job.split("/")[0]])))
        return self.seen[job] is not None

    def open_pr(self, app: str, version: str) -> int:
        """Open a version-bump pull request; opening the same bump again finds it."""
        return self.prs.setdefault((app, version), 101 + len(self.prs))

    def poll_pr(self, number: int) -> bool:
        """Poll a pull request; the third poll merges it into the repository."""
        app, version = next(bump for bump, n in self.prs.items() if n == number)
        self.polls[number] += 1
        if self.polls[number] == 3:
            self.repo[app] = version
        return self.repo[app] == version

    def sync(self, app: str) -> int:
        """Let the agent roll out one more replica; return how many run the repo's version."""
        replicas, target = self.replicas[app], self.repo[app]
        lagging = [i for i, version in enumerate(replicas) if version != target]
        if lagging:
            replicas[lagging[0]] = target
        return replicas.count(target)


@dataclass
class Deployment:
    """The ctx of one apply: an application, the outputs of its state, and the world."""

    app: str
    desired: str
    world: World
    outputs: Mapping[str, Any]
    notes: list[str] = field(default_factory=list)


def get_actual_state(phase: str) -> Callable[[Deployment], str]:
    """Return a ``do`` handler starting a collection; its job id goes to the outputs."""
    return lambda ctx: ctx.world.collect(ctx.app, phase)


def is_actual_state_collected(step: str) -> Callable[[Deployment], bool]:
    """Return a ``wait_for`` condition polling the job that ``step`` started."""
    return lambda ctx: ctx.world.poll_collection(ctx.outputs[step])


def should_deploy(ctx: Deployment) -> bool:
    """Deploy when the actual version differs from the desired one."""
    actual = ctx.world.seen[ctx.outputs[PRE]]
    ctx.notes.append(f"actual {actual}, desired {ctx.desired}")
    return actual != ctx.desired


def create_deploy_request(ctx: Deployment) -> int:
    """Open the GitOps pull request; return its number (kept in the state's outputs)."""
    number = ctx.world.open_pr(ctx.app, ctx.desired)
    ctx.notes.append(f"opened PR #{number}")
    return number


def is_version_live(ctx: Deployment) -> bool:
    """Report the rollout's progress; done when every replica runs the new version."""
    live = ctx.world.sync(ctx.app)
    ctx.notes.append(f"{live}/3 replicas on {ctx.desired}")
    return live == 3


def validate_post_deploy_state(ctx: Deployment) -> None:
    """Fail the run when the post-deployment version is not the desired one."""
    actual = ctx.world.seen[ctx.outputs[POST]]
    if actual != ctx.desired:
        raise RuntimeError(f"{ctx.app} runs {actual} after the deployment, not {ctx.desired}")


def build_flow() -> stepflow.Flow:
    """Compile the pipeline; every controller process does this at start-up."""
    return stepflow.new(
        stepflow.named("deploy/v1")
        .do("getPreActualState", get_actual_state("preDeploy"))
        .wait_for("waitForPreActualState", is_actual_state_collected(PRE))
        .case(
            "deploy",
            should_deploy,
            stepflow.steps()
            .do("createDeployRequest", create_deploy_request)
            .wait_for(
                "waitForAcceptedDeployRequest", lambda ctx: ctx.world.poll_pr(ctx.outputs[PR])
            )
            .wait_for("monitorDeploymentProgress", is_version_live)
            .do("getPostActualState", get_actual_state("postDeploy"))
            .wait_for("waitForPostActualState", is_actual_state_collected(POST))
            .do("validatePostDeployActualState", validate_post_deploy_state),
        )
    )


class Controller:
    """One controller process: a compiled flow; every run's state lives in ``db``."""

    def __init__(self, world: World, db: dict[str, str]) -> None:
        self.flow, self.world, self.db = build_flow(), world, db

    def load(self, app: str) -> stepflow.State | None:
        """Read the saved state of ``app``'s run (``None``: not started)."""
        text = self.db.get(app)
        return stepflow.loads(text, self.flow.definition) if text else None

    def pending(self) -> list[str]:
        """Return the apps whose run is not over: not started yet, or running."""
        return [app for app in DESIRED if (state := self.load(app)) is None or state.is_running]

    def reconcile(self, app: str) -> str:
        """Load the app's state, run one step, save the new state; describe what happened."""
        state = self.load(app)
        ctx = Deployment(app, DESIRED[app], self.world, state.outputs if state else {})
        try:
            state = self.flow.apply(state, ctx)
        except stepflow.FlowFailed as failed:
            state = failed.state  # a failed state keeps its position and error: save it
            ctx.notes.append(str(failed))
        self.db[app] = stepflow.dumps(state)
        return f"{app:<8} {state.status:<9} {state.events[0]:<71} {'; '.join(ctx.notes)}"


def main() -> None:
    """Reconcile every application until each run is over, crashing once midway."""
    world = World({"billing": "1.4.2", "search": "2.0.0", "web": "3.2.0"})
    db: dict[str, str] = {}  # app -> saved state text: the database
    applies: Counter[str] = Counter()
    controller, round_no = Controller(world, db), 0
    while pending := controller.pending():
        round_no += 1
        if round_no == 4:
            print(f"-- crash! all that survives is the world and db, e.g. {db['billing']}")
            controller = Controller(world, db)  # a new process: recompiled flow, no state objects
        for app in pending:
            applies[app] += 1
            print(f"{round_no:>2} {controller.reconcile(app)}".rstrip())
    for app in DESIRED:
        state = controller.load(app)
        assert state is not None
        pr = state.outputs.get(PR, "-")
        print(f"{app}: {applies[app]} applies, {state.status}, PR {pr}, {world.replicas[app]}")


if __name__ == "__main__":
    main()
