"""Flows and runs for the console's tests (importable as ``console_flows:shop``)."""

from __future__ import annotations

from typing import Any

import stepflow
from stepflow.stores import Store

#: An output no page may run as markup.
XSS = "<script>alert('xss')</script><img src=x onerror=\"alert('img')\">"


def _fetch(ctx: Any) -> Any:
    return {"payload": XSS, "app": ctx.input.get("app")}


def _flaky(ctx: Any) -> int:
    if ctx.input.get("fail"):
        raise RuntimeError("boom <b>not bold</b>")
    return 1


def _ready(ctx: Any) -> bool:
    return True


shop = stepflow.new(
    stepflow.named("shop/v1")
    .do("fetch", _fetch)
    .retry(
        "again",
        stepflow.RetryPolicy(max_attempts=2, initial_interval=0.01),
        stepflow.steps().do("flaky", _flaky),
    )
    .wait_for("ready", _ready, every=0.01)
    .do("finish", lambda ctx: "done")
)

#: Another flow, of which the console serves nothing.
other = stepflow.new(stepflow.named("other/v1").do("only", lambda ctx: None))


def seed(store: Store) -> dict[str, str]:
    """Make real runs in ``store``; return ``{what: run id}``.

    Two completed runs, one failed after its two attempts, one running (not yet
    driven), and one run of a flow the console does not serve.
    """
    runs = {
        "done": "done-1",
        "done2": "done-2",
        "failed": "fail-1",
    }
    stepflow.start_run(store, shop, {"app": "billing"}, run_id=runs["done"])
    stepflow.start_run(store, shop, {"app": "<i>ledger</i>"}, run_id=runs["done2"])
    stepflow.start_run(store, shop, {"app": "search", "fail": True}, run_id=runs["failed"])
    stepflow.Worker(store, [shop], concurrency=4).run_sync(until_idle=True, handle_signals=False)
    runs["running"] = stepflow.start_run(store, shop, {"app": "queue"}, run_id="wait-1").run_id
    runs["other"] = stepflow.start_run(store, other, None, run_id="other-1").run_id
    return runs
