"""An expense approval that escalates: ``wait_event`` with ``on_timeout``, run by a Worker.

Each run is one expense report::

    {"id": "exp-7", "amount": 420, "approver": "ana", "manager": "bo"}

The flow, ``expense/v1``:

1. ``submit`` asks the approver (here: records the request in the ``Inbox``).
2. ``decision`` rests until the event ``decision`` arrives, at most
   ``APPROVER_WINDOW`` seconds. The run costs nothing while it waits: no poll, no
   journal entry. The event's payload (``{"approve": true, "by": "ana"}``) is the
   step's output.
3. Past the window, ``escalate`` asks the manager, and ``managerDecision`` waits
   for the event ``manager_decision``; past *its* window, ``reject_unanswered``
   rejects the report, so no report waits forever.
4. ``outcome`` (a ``switch`` on the decision that came: one command) pays the
   report, or tells the submitter it was rejected.

Events come from outside the run: a web handler would call
``stepflow.send_event(store, run_id, "decision", {"approve": True, "by": "ana"},
key=request_id)`` (or ``stepflow send RUN decision --data '{...}'``). An event
sent before the run reaches its wait is kept in the run's mailbox and taken on
arrival; a second send with the same ``key`` changes nothing.

Run: ``python examples/approval.py`` (a SQLite file in a temporary directory;
windows of a fraction of a second, on the real clock).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

import stepflow
from stepflow import RunContext

FLOW_NAME = "expense/v1"
#: How long the approver, then the manager, has to answer (seconds).
APPROVER_WINDOW = 0.5
MANAGER_WINDOW = 0.5
DECISION = f"{FLOW_NAME}/decisionWaitEvent"
MANAGER = f"{DECISION}/onTimeout/manager_decisionWaitEvent"
AUTO_REJECTED = {"approve": False, "by": "nobody", "reason": "no answer in time"}


class Inbox:
    """Where the simulated people are asked, and money is paid: outside the runs."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []  # (person, report id)
        self.paid: dict[str, int] = {}  # idempotency key -> amount

    def ask(self, person: str, report: str) -> None:
        """Ask ``person`` to decide on ``report`` (an e-mail, a chat message...)."""
        self.asked.append((person, report))

    def pay(self, key: str, amount: int) -> str:
        """Pay ``amount`` once per idempotency ``key``; return the payment's id."""
        self.paid.setdefault(key, amount)
        return f"pay-{key}"


def _inbox(ctx: RunContext) -> Inbox:
    assert isinstance(ctx.app, Inbox), "serve this flow with Worker(..., context=Inbox())"
    return ctx.app


def submit(ctx: RunContext) -> dict[str, Any]:
    """Ask the approver named in the report."""
    _inbox(ctx).ask(ctx.input["approver"], ctx.input["id"])
    return {"asked": ctx.input["approver"]}


def escalate(ctx: RunContext) -> dict[str, Any]:
    """The approver did not answer in time: ask the manager."""
    _inbox(ctx).ask(ctx.input["manager"], ctx.input["id"])
    return {"asked": ctx.input["manager"]}


def reject_unanswered(ctx: RunContext) -> dict[str, Any]:
    """Nobody answered: the report is rejected, with the reason."""
    return AUTO_REJECTED


def decision(ctx: RunContext) -> dict[str, Any]:
    """Return the decision that came: the manager's after an escalation, else the approver's."""
    for step in (f"{MANAGER}/onTimeout/reject_unanswered", MANAGER, DECISION):
        if step in ctx.outputs:
            return dict(ctx.outputs[step])
    raise RuntimeError("no decision was recorded")  # pragma: no cover - the flow forbids it


def outcome(ctx: RunContext) -> str:
    """Route the report: ``"pay"`` when the decision approves it, else ``"reject"``."""
    return "pay" if decision(ctx).get("approve") else "reject"


def pay(ctx: RunContext) -> dict[str, Any]:
    """Pay the report once, under the command's idempotency key."""
    payment = _inbox(ctx).pay(ctx.idempotency_key, int(ctx.input["amount"]))
    return {"paid": payment, "approved_by": decision(ctx)["by"]}


def notify_rejected(ctx: RunContext) -> dict[str, Any]:
    """Tell the submitter why the report was rejected."""
    return {"rejected_by": decision(ctx)["by"]}


def build_flow() -> stepflow.Flow:
    """Compile ``expense/v1``: ask, wait (escalating once), then pay or reject."""
    escalation = (
        stepflow.steps()
        .do("escalate", escalate)
        .wait_event(
            "manager_decision",
            timeout=MANAGER_WINDOW,
            on_timeout=stepflow.steps().do("reject_unanswered", reject_unanswered),
        )
    )
    return stepflow.new(
        stepflow.named(FLOW_NAME)
        .do("submit", submit)
        .wait_event("decision", timeout=APPROVER_WINDOW, on_timeout=escalation)
        .switch(
            "outcome",
            outcome,
            {
                "pay": stepflow.steps().do("pay", pay),
                "reject": stepflow.steps().do("notify", notify_rejected),
            },
        )
    )


flow = build_flow()

#: The demo's three reports: approved at once, approved by the manager, never answered.
REPORTS = (
    {"id": "exp-1", "amount": 120, "approver": "ana", "manager": "bo"},
    {"id": "exp-2", "amount": 980, "approver": "cy", "manager": "bo"},
    {"id": "exp-3", "amount": 45, "approver": "dee", "manager": "bo"},
)


def result(state: stepflow.State) -> str:
    """Say how a finished report ended, on one line."""
    pay_step, notify_step = (
        f"{FLOW_NAME}/outcomeSwitch/case0/pay",
        f"{FLOW_NAME}/outcomeSwitch/case1/notify",
    )
    if pay_step in state.outputs:
        return f"paid, approved by {state.outputs[pay_step]['approved_by']}"
    if notify_step in state.outputs:
        return f"rejected by {state.outputs[notify_step]['rejected_by']}"
    return state.status


async def run_reports(store: stepflow.Store, inbox: Inbox) -> dict[str, stepflow.State]:
    """Start the three reports, answer two of them as people would, and wait for all three.

    ``exp-1`` is approved before its run even reaches the wait (the event waits in
    the run's mailbox); ``exp-2``'s approver never answers, so the manager is
    asked and approves; nobody answers ``exp-3``, which is rejected.
    """
    for report in REPORTS:
        stepflow.start_run(store, flow, report, run_id=report["id"])
    approval = {"approve": True, "by": "ana"}
    stepflow.send_event(store, "exp-1", "decision", approval, key="mail-4711")
    stepflow.send_event(store, "exp-1", "decision", approval, key="mail-4711")  # a retry: no-op
    worker = stepflow.Worker(store, [flow], context=inbox, idle_interval=0.05)
    running = asyncio.create_task(worker.run())
    while ("bo", "exp-2") not in inbox.asked:  # the escalation reached the manager
        await asyncio.sleep(0.01)
    stepflow.send_event(store, "exp-2", "manager_decision", {"approve": True, "by": "bo"})
    ids = [report["id"] for report in REPORTS]
    while any(store.load(run_id).status == "running" for run_id in ids):
        await asyncio.sleep(0.02)
    worker.stop()
    await running
    return {run_id: stepflow.read_run(store, run_id, flow).state for run_id in ids}


def main() -> int:
    """Run the three reports on a SQLite file; print how each ended."""
    inbox = Inbox()
    with tempfile.TemporaryDirectory() as directory:
        store = stepflow.open_store(f"sqlite:///{Path(directory) / 'approval.db'}")
        try:
            states = asyncio.run(run_reports(store, inbox))
        finally:
            store.close()
    for run_id, state in states.items():
        asked = ", ".join(person for person, report in inbox.asked if report == run_id)
        print(f"{run_id}: {result(state)} (asked: {asked})")
    print(f"payments made: {len(inbox.paid)}, total {sum(inbox.paid.values())}")
    return 0 if all(state.status == "completed" for state in states.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
