"""A money transfer that refunds when the deposit cannot be made: ``catch`` around a ``retry``.

Each run moves money between two accounts::

    {"id": "t-1", "source": "alice", "target": "bob", "amount": 40}

The flow, ``transfer/v1``:

1. ``withdraw`` takes the amount from the source account (``InsufficientFunds``
   fails the run at once: nothing was moved, nothing to undo).
2. ``deposit`` puts it on the target account, retried by its own policy while
   the bank is unavailable; ``AccountClosed`` is not retried.
3. If the deposit fails for good, the ``deposit`` catch takes the error (its
   ``ctx.error`` says why) and its handler ``refund``\\s the source, as a durable
   step with a retry policy of its own, then records why it was refunded.
4. ``report`` says how the transfer ended: ``"completed"`` or ``"refunded"``.

Every money movement carries its command's idempotency key, and the ``Bank``
applies each key once: a step re-run after a crash moves nothing twice. Whatever
fails, no money is created or lost: the sum of the balances never changes.

(A ``saga`` construct, where each step declares its compensation and a failure
runs them in reverse order, is planned; this is the same transfer written with
``catch`` and ``retry`` today.)

Run: ``python examples/transfer.py`` (a SQLite file in a temporary directory).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import stepflow
from stepflow import RunContext

FLOW_NAME = "transfer/v1"
DEPOSIT = f"{FLOW_NAME}/depositCatch"


class InsufficientFunds(Exception):
    """The source account holds less than the amount."""


class AccountClosed(Exception):
    """The target account is closed: no retry will help."""


class BankUnavailable(Exception):
    """The bank did not answer: try again."""


#: The deposit's own retries: a few quick ones while the bank is unavailable.
DEPOSIT_RETRY = stepflow.RetryPolicy(
    max_attempts=3, initial_interval=0.05, non_retryable=[AccountClosed, InsufficientFunds]
)
#: A refund must happen: it is retried for much longer.
REFUND_RETRY = stepflow.RetryPolicy(max_attempts=10, initial_interval=0.05, max_interval=1.0)


class Bank:
    """The simulated bank: balances, and each movement applied once per idempotency key.

    Args:
        balances: The opening balance of each account.
        closed: Accounts that refuse every movement (a withdrawal from one fails
            before anything moved; a deposit to one is refunded).
        outages: How many times each account's next deposits (or refunds) fail with
            ``BankUnavailable`` before one goes through.

    """

    def __init__(
        self,
        balances: dict[str, int],
        closed: frozenset[str] = frozenset(),
        outages: dict[str, int] | None = None,
    ) -> None:
        self.balances = dict(balances)
        self.closed = set(closed)
        self.outages = dict(outages or {})
        self.applied: dict[str, int] = {}  # idempotency key -> signed amount moved

    def move(self, account: str, amount: int, key: str) -> int:
        """Add ``amount`` (negative: take) to ``account`` once per ``key``; return the balance."""
        if key in self.applied:  # the same command again (after a crash): nothing new
            return self.balances[account]
        if self.outages.get(account, 0) > 0:
            self.outages[account] -= 1
            raise BankUnavailable(f"the bank of {account} did not answer")
        if account in self.closed:
            raise AccountClosed(f"account {account} is closed")
        if amount < 0 and self.balances[account] < -amount:
            raise InsufficientFunds(f"{account} holds {self.balances[account]}, not {-amount}")
        self.balances[account] += amount
        self.applied[key] = amount
        return self.balances[account]


def _bank(ctx: RunContext) -> Bank:
    assert isinstance(ctx.app, Bank), "serve this flow with Worker(..., context=Bank(...))"
    return ctx.app


def withdraw(ctx: RunContext) -> dict[str, Any]:
    """Take the amount from the source account."""
    balance = _bank(ctx).move(ctx.input["source"], -int(ctx.input["amount"]), ctx.idempotency_key)
    return {"account": ctx.input["source"], "balance": balance}


def deposit(ctx: RunContext) -> dict[str, Any]:
    """Put the amount on the target account."""
    balance = _bank(ctx).move(ctx.input["target"], int(ctx.input["amount"]), ctx.idempotency_key)
    return {"account": ctx.input["target"], "balance": balance}


def refund(ctx: RunContext) -> dict[str, Any]:
    """Give the amount back to the source account: the deposit failed for good."""
    balance = _bank(ctx).move(ctx.input["source"], int(ctx.input["amount"]), ctx.idempotency_key)
    return {"account": ctx.input["source"], "balance": balance}


def refunded(ctx: RunContext) -> dict[str, Any]:
    """Record why the transfer was refunded (the error the catch took)."""
    assert ctx.error is not None
    return {"status": "refunded", "reason": ctx.error.message, "error": ctx.error.type}


def report(ctx: RunContext) -> dict[str, Any]:
    """Say how the transfer ended."""
    why = ctx.outputs.get(f"{DEPOSIT}/handler/why")
    if why is not None:
        return dict(why)
    return {"status": "completed", "amount": ctx.input["amount"]}


def build_flow() -> stepflow.Flow:
    """Compile ``transfer/v1``: withdraw, deposit (refunding if it cannot be made), report."""
    deposit_steps = stepflow.steps().retry(
        "deposit", DEPOSIT_RETRY, stepflow.steps().do("deposit", deposit)
    )
    refund_steps = (
        stepflow.steps()
        .retry("refund", REFUND_RETRY, stepflow.steps().do("refund", refund))
        .do("why", refunded)
    )
    return stepflow.new(
        stepflow.named(FLOW_NAME)
        .do("withdraw", withdraw)
        .catch("deposit", deposit_steps, refund_steps)
        .do("report", report)
    )


flow = build_flow()

#: The demo's transfers: one goes through, one meets a closed account, one an outage.
TRANSFERS = (
    {"id": "t-1", "source": "alice", "target": "bob", "amount": 40},
    {"id": "t-2", "source": "alice", "target": "carol", "amount": 25},
    {"id": "t-3", "source": "bob", "target": "dave", "amount": 10},
)
OPENING = {"alice": 100, "bob": 50, "carol": 0, "dave": 5}


def transfer_all(
    store: stepflow.Store,
    bank: Bank,
    transfers: tuple[dict[str, Any], ...] = TRANSFERS,
    *,
    clock: stepflow.Clock | None = None,
) -> dict[str, stepflow.State]:
    """Start each transfer and drive them all to their end with a Worker."""
    for transfer in transfers:
        stepflow.start_run(store, flow, transfer, run_id=transfer["id"], clock=clock)
    worker = stepflow.Worker(store, [flow], context=bank, clock=clock, idle_interval=0.05)
    worker.run_sync(until_idle=True, handle_signals=False)
    return {t["id"]: stepflow.read_run(store, t["id"], flow).state for t in transfers}


def main() -> int:
    """Run the three transfers on a SQLite file; print how each ended and the balances."""
    bank = Bank(OPENING, closed=frozenset({"carol"}), outages={"dave": 2})
    with tempfile.TemporaryDirectory() as directory:
        store = stepflow.open_store(f"sqlite:///{Path(directory) / 'transfer.db'}")
        try:
            states = transfer_all(store, bank)
        finally:
            store.close()
    for run_id, state in states.items():
        outcome = state.outputs.get(f"{FLOW_NAME}/report", {"status": state.status})
        print(
            f"{run_id}: {outcome['status']}"
            + (f" ({outcome['reason']})" if "reason" in outcome else "")
        )
    print("balances: " + ", ".join(f"{a} {b}" for a, b in sorted(bank.balances.items())))
    conserved = sum(bank.balances.values()) == sum(OPENING.values())
    print(f"money conserved: {conserved}")
    return 0 if conserved and all(s.status == "completed" for s in states.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
