"""Deploy a release to N clusters at once, two at a time: a ``map`` run by a Worker.

The run's input names the release and the clusters::

    {"release": "1.5.0", "clusters": ["c1", "c2", "c3", "c4", "c5"]}

``clustersMap`` runs the same steps once per cluster (``ctx.item`` is the
cluster, ``ctx.index`` its place in the list), at most ``MAX_CONCURRENCY`` at
once: push the release (retried by its own policy when the cluster is busy),
wait until the cluster reports it healthy, report what runs there. The map's
output, each cluster's report in cluster order, is what the final ``verify``
step checks.

``Fleet`` simulates the clusters. A push carries the command's idempotency key,
and the fleet applies each key once: a push re-executed after a crash (same
command, same key) finds the deployment it already made. Every cluster is
therefore deployed exactly once, whatever the worker went through.

Run: ``python examples/fan_out.py`` (a SQLite file in a temporary directory;
the clusters' delays are a fraction of a second).
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import stepflow
from stepflow import RunContext

FLOW_NAME = "release/v1"
MAX_CONCURRENCY = 2
#: Each cluster's push is retried on its own: a busy cluster does not fail the others.
PUSH_RETRY = stepflow.RetryPolicy(max_attempts=4, initial_interval=0.2, backoff_coefficient=2.0)
CLUSTERS = f"{FLOW_NAME}/clustersMap"  # where the map's output lands


class ClusterBusy(RuntimeError):
    """The cluster refused a push for now: try again later."""


class Fleet:
    """The simulated clusters: they outlive any worker process.

    Args:
        busy: Clusters that refuse their first push (``ClusterBusy``).
        rollout: Seconds from a push to the cluster reporting healthy.

    """

    def __init__(self, busy: frozenset[str] = frozenset(), rollout: float = 0.4) -> None:
        self.busy = set(busy)
        self.rollout = rollout
        self.applied: dict[str, dict[str, Any]] = {}  # idempotency key -> deployment
        self.deploys: Counter[str] = Counter()  # cluster -> deployments actually made
        self.versions: dict[str, str] = {}  # cluster -> running version

    def push(self, cluster: str, release: str, key: str, now: float) -> dict[str, Any]:
        """Deploy ``release`` to ``cluster`` once per ``key``; return the deployment."""
        if key in self.applied:  # the same command again (after a crash): nothing new
            return self.applied[key]
        if cluster in self.busy:
            self.busy.discard(cluster)
            raise ClusterBusy(f"{cluster} is busy; push {release} again")
        self.deploys[cluster] += 1
        self.versions[cluster] = release
        deployment = {
            "cluster": cluster,
            "release": release,
            "key": key,
            "ready_at": now + self.rollout,
        }
        self.applied[key] = deployment
        return deployment

    def healthy(self, deployment: dict[str, Any], now: float) -> bool:
        """Whether the cluster reports the deployment healthy at ``now``."""
        return bool(now >= deployment["ready_at"])


def _fleet(ctx: RunContext) -> Fleet:
    assert isinstance(ctx.app, Fleet), "serve this flow with Worker(..., context=Fleet())"
    return ctx.app


def clusters(ctx: RunContext) -> list[str]:
    """Return the map's items: the clusters named in the run's input."""
    return [str(cluster) for cluster in ctx.input["clusters"]]


def push(ctx: RunContext) -> dict[str, Any]:
    """Push the release to this item's cluster, under the command's idempotency key."""
    return _fleet(ctx).push(str(ctx.item), str(ctx.input["release"]), ctx.idempotency_key, ctx.now)


def _pushed(ctx: RunContext) -> dict[str, Any]:
    # Outputs inside a map are kept under the item's scope, ".../clustersMap/steps[i]/...".
    return dict(ctx.outputs[f"{CLUSTERS}/steps[{ctx.index}]/pushRetry/push"])


def healthy(ctx: RunContext) -> bool:
    """Whether this item's cluster reports the release healthy."""
    return _fleet(ctx).healthy(_pushed(ctx), ctx.now)


def report(ctx: RunContext) -> dict[str, Any]:
    """Return this cluster's result: the map keeps it at ``ctx.index`` in its output."""
    deployment = _pushed(ctx)
    return {
        "cluster": ctx.item,
        "index": ctx.index,
        "release": deployment["release"],
        "key": deployment["key"],
    }


def verify(ctx: RunContext) -> dict[str, Any]:
    """Check the map's output: every cluster, in input order, runs the release."""
    results = ctx.outputs[CLUSTERS]
    order = [result["cluster"] for result in results]
    if order != list(ctx.input["clusters"]):
        raise RuntimeError(f"deployed to {order}, expected {list(ctx.input['clusters'])}")
    wrong = [r["cluster"] for r in results if r["release"] != ctx.input["release"]]
    if wrong:
        raise RuntimeError(f"{wrong} do not run {ctx.input['release']}")
    return {"release": ctx.input["release"], "clusters": order}


def build_flow() -> stepflow.Flow:
    """Compile ``release/v1``: a bounded map over the clusters, then a verification."""
    cluster = (
        stepflow.steps()
        .retry("push", PUSH_RETRY, stepflow.steps().do("push", push))
        .wait_for("healthy", healthy, every=0.1, timeout=30)
        .do("report", report)
    )
    return stepflow.new(
        stepflow.named(FLOW_NAME)
        .map("clusters", clusters, cluster, max_concurrency=MAX_CONCURRENCY)
        .do("verify", verify)
    )


flow = build_flow()


def deploy(
    store: stepflow.Store,
    fleet: Fleet,
    release: dict[str, Any],
    *,
    run_id: str = "release-1",
    clock: stepflow.Clock | None = None,
) -> stepflow.State:
    """Start (or resume) the release's run and drive it to its end with a Worker."""
    if run_id not in {record.run_id for record in store.runs(flow=FLOW_NAME)}:
        stepflow.start_run(store, flow, release, run_id=run_id, clock=clock)
    worker = stepflow.Worker(store, [flow], context=fleet, clock=clock, concurrency=8)
    worker.run_sync(until_idle=True, handle_signals=False)
    return stepflow.read_run(store, run_id, flow).state


def main() -> int:
    """Deploy 1.5.0 to five clusters, two at a time; print what each cluster got."""
    release = {"release": "1.5.0", "clusters": ["c1", "c2", "c3", "c4", "c5"]}
    fleet = Fleet(busy=frozenset({"c3"}))
    with tempfile.TemporaryDirectory() as directory:
        store = stepflow.open_store(f"sqlite:///{Path(directory) / 'fan_out.db'}")
        try:
            state = deploy(store, fleet, release)
            batches = stepflow.history(store, "release-1").batches
        finally:
            store.close()
    print(f"{FLOW_NAME}: {state.status}, {len(batches)} batches saved")
    for result in state.outputs[CLUSTERS]:
        name = result["cluster"]
        print(f"  {name}: {result['release']}, deployed {fleet.deploys[name]}x by {result['key']}")
    verified = state.outputs[f"{FLOW_NAME}/verify"]
    print(f"verified: {verified['release']} on {', '.join(verified['clusters'])}")
    return 0 if state.status == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
