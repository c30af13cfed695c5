"""The transfer example: a deposit that fails for good is refunded; no money is made or lost."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from example_module import load_example
from hypothesis import given, settings
from hypothesis import strategies as st

from stepflow import FakeClock
from stepflow.stores import MemoryStore

EXAMPLE = Path(__file__).parent.parent.parent / "examples" / "transfer.py"
START = 1_700_000_000.0


transfer = load_example("transfer")
ACCOUNTS = ("alice", "bob", "carol")


def test_a_closed_account_refunds_the_source_and_says_why() -> None:
    bank = transfer.Bank({"alice": 100, "carol": 0}, closed=frozenset({"carol"}))
    one = ({"id": "t", "source": "alice", "target": "carol", "amount": 30},)
    states = transfer.transfer_all(MemoryStore(), bank, one, clock=FakeClock(START))
    state = states["t"]
    # The saga compensated the withdrawal, then the deposit's error failed the run.
    assert state.status == "failed"
    assert state.error is not None
    assert state.error.type == "transfer.AccountClosed"
    assert transfer.outcome(state) == "refunded (account carol is closed)"
    assert list(state.outputs[transfer.SAGA]["done"]) == []  # nothing left to undo
    assert bank.balances == {"alice": 100, "carol": 0}
    # Not retried: AccountClosed is non-retryable; the refund took one attempt.
    assert sorted(bank.applied.values()) == [-30, 30]


def test_a_refund_is_retried_by_the_saga_policy_while_the_bank_is_down() -> None:
    # carol is closed (the deposit fails at once); alice's bank then fails twice.
    bank = transfer.Bank({"alice": 100, "carol": 0}, closed=frozenset({"carol"}))
    one = ({"id": "t", "source": "alice", "target": "carol", "amount": 30},)
    original = bank.move

    def flaky(account: str, amount: int, key: str) -> int:
        if amount > 0 and account == "alice" and bank.outages.get("refund", 0) < 2:
            bank.outages["refund"] = bank.outages.get("refund", 0) + 1
            raise transfer.BankUnavailable("the bank of alice did not answer")
        return original(account, amount, key)

    bank.move = flaky  # type: ignore[method-assign]
    state = transfer.transfer_all(MemoryStore(), bank, one, clock=FakeClock(START))["t"]
    assert transfer.outcome(state) == "refunded (account carol is closed)"
    assert bank.balances == {"alice": 100, "carol": 0}
    assert bank.outages["refund"] == 2


def test_an_outage_is_retried_and_the_transfer_completes() -> None:
    bank = transfer.Bank({"bob": 50, "dave": 0}, outages={"dave": 2})
    one = ({"id": "t", "source": "bob", "target": "dave", "amount": 10},)
    state = transfer.transfer_all(MemoryStore(), bank, one, clock=FakeClock(START))["t"]
    assert state.outputs["transfer/v1/report"] == {"status": "completed", "amount": 10}
    assert bank.balances == {"bob": 40, "dave": 10}


def test_insufficient_funds_fails_the_run_before_anything_moves() -> None:
    bank = transfer.Bank({"alice": 5, "bob": 0})
    one = ({"id": "t", "source": "alice", "target": "bob", "amount": 30},)
    state = transfer.transfer_all(MemoryStore(), bank, one, clock=FakeClock(START))["t"]
    assert state.status == "failed"
    assert state.error is not None
    assert state.error.type == "transfer.InsufficientFunds"
    assert transfer.outcome(state) == "failed (alice holds 5, not 30)"
    assert bank.balances == {"alice": 5, "bob": 0}


@settings(max_examples=25, deadline=None)
@given(
    transfers=st.lists(
        st.tuples(st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS), st.integers(1, 60)).filter(
            lambda t: t[0] != t[1]
        ),
        min_size=1,
        max_size=4,
    ),
    closed=st.frozensets(st.sampled_from(ACCOUNTS)),
    outages=st.dictionaries(st.sampled_from(ACCOUNTS), st.integers(0, 4)),
)
def test_whatever_fails_no_money_is_made_or_lost(
    transfers: list[tuple[str, str, int]], closed: frozenset[str], outages: dict[str, int]
) -> None:
    opening = {"alice": 100, "bob": 50, "carol": 20}
    bank = transfer.Bank(opening, closed=closed, outages=outages)
    given_transfers = tuple(
        {"id": f"t{i}", "source": s, "target": t, "amount": a}
        for i, (s, t, a) in enumerate(transfers)
    )
    states = transfer.transfer_all(MemoryStore(), bank, given_transfers, clock=FakeClock(START))
    assert sum(bank.balances.values()) == sum(opening.values())
    assert all(balance >= 0 for balance in bank.balances.values())
    for run_id, state in states.items():
        moved = [v for k, v in bank.applied.items() if k.startswith(f"{run_id}/")]
        if state.status == "completed":
            amount = state.outputs["transfer/v1/report"]["amount"]
            assert sorted(moved) == [-amount, amount]
        else:
            assert state.status == "failed"
            assert state.error is not None
            if transfer.outcome(state).startswith("refunded"):  # withdrawn, then refunded
                assert sum(moved) == 0
                assert len(moved) == 2
            else:  # withdrawing failed (no funds, a closed account, the bank down)
                assert state.error.step == f"{transfer.SAGA}/steps/withdraw"
                assert moved == []


def test_the_example_script_runs_and_conserves_money() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "t-1: completed",
        "t-2: refunded (account carol is closed)",
        "t-3: completed",
        "balances: alice 60, bob 80, carol 0, dave 15",
        "money conserved: True",
    ]
