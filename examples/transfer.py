"""A money transfer as a saga: the withdrawal is compensated by a refund when the deposit fails.

Each run moves money between two accounts::

    {"id": "t-1", "source": "alice", "target": "bob", "amount": 40}

The flow, ``transfer/v1``, is one saga, ``money``:

1. ``withdraw`` takes the amount from the source account. It declares its
   compensation, ``refund``. (``InsufficientFunds`` fails it before anything
   moved: there is nothing to undo.)
2. ``deposit`` puts it on the target account, retried by its own policy while
   the bank is unavailable; ``AccountClosed`` is not retried.
3. If the deposit fails for good, the failure leaves the saga, which runs the
   compensations of the steps that completed in it, last first: here
   ``refund``, as a durable command retried by the saga's policy, seeing the
   error as ``ctx.error``. Then the run fails with the deposit's error, the
   money back where it was.
4. ``report`` says how a transfer that went through ended.

Every money movement carries its command's idempotency key, and the ``Bank``
applies each key once: a step re-run after a crash moves nothing twice. Whatever
fails, no money is created or lost: the sum of the balances never changes.

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
SAGA = f"{FLOW_NAME}/moneySaga"
DEPOSIT_STEP = f"{SAGA}/steps/depositRetry/deposit"


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
#: A refund must happen: the saga retries each compensation for much longer.
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


def refund(ctx: RunContext) -> None:
    """Undo ``withdraw``: give the amount back to the source (``ctx.error`` says why)."""
    assert ctx.error is not None  # the deposit's error, which left the saga
    _bank(ctx).move(ctx.input["source"], int(ctx.input["amount"]), ctx.idempotency_key)


def report(ctx: RunContext) -> dict[str, Any]:
    """Say how the transfer ended."""
    return {"status": "completed", "amount": ctx.input["amount"]}


def build_flow() -> stepflow.Flow:
    """Compile ``transfer/v1``: a saga of withdraw (undone by refund) and deposit; report."""
    money = (
        stepflow.steps()
        .do("withdraw", withdraw, compensate=refund)
        .retry("deposit", DEPOSIT_RETRY, stepflow.steps().do("deposit", deposit))
    )
    return stepflow.new(
        stepflow.named(FLOW_NAME).saga("money", money, policy=REFUND_RETRY).do("report", report)
    )


def outcome(state: stepflow.State) -> str:
    """Say how a finished transfer ended: completed, refunded (and why), or failed (and why)."""
    if state.status == "completed":
        return "completed"
    assert state.error is not None
    if state.error.step == DEPOSIT_STEP:  # the saga refunded the withdrawal
        return f"refunded ({state.error.message})"
    return f"failed ({state.error.message})"


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
        print(f"{run_id}: {outcome(state)}")
    print("balances: " + ", ".join(f"{a} {b}" for a, b in sorted(bank.balances.items())))
    conserved = sum(bank.balances.values()) == sum(OPENING.values())
    print(f"money conserved: {conserved}")
    ended = all(not outcome(s).startswith("failed") for s in states.values())
    return 0 if conserved and ended else 1


if __name__ == "__main__":
    sys.exit(main())
