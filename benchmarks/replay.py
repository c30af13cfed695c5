"""Benchmark history replay: batches per second on a 1,000-batch history.

Run ``python benchmarks/replay.py`` (``--quick`` for a smoke run). The history is
recorded for real: a :class:`~stepflow.Worker` on a fake clock drives one run of
a ``loop_until`` flow on a :class:`~stepflow.stores.MemoryStore`, and
:func:`stepflow.history` reads it back from the journal.

Figures (each the best of several repeats, garbage collector off while timing):

* ``replay``: :func:`stepflow.replay` against the recording definition, which
  checks every answered command and rebuilds every state;
* ``advance only``: the floor under it, the same effects applied with
  :func:`stepflow.advance` and nothing checked;
* ``loads_history`` / ``dumps_history``: reading and writing the exported text;
* ``history(store)``: reading the journal from the store and decoding it.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import stepflow
from stepflow import FakeClock, Worker
from stepflow.runtime.runs import start_run
from stepflow.stores import MemoryStore

PASSES = 500  # loop passes: one do and one loop_until condition each
BATCHES = 2 * PASSES  # effect batches in the history
RUN_ID = "bench"
_WORK = "bench/v1/passesLoopUntil/steps/work"

_now = time.perf_counter_ns


def work(ctx: stepflow.RunContext) -> dict[str, int]:
    """The loop's do step: count the passes (in the outputs, so the run is pure data)."""
    done = ctx.outputs.get(_WORK)
    return {"n": 1 if done is None else done["n"] + 1}


def enough(ctx: stepflow.RunContext) -> bool:
    """The loop's condition: true after PASSES passes."""
    return bool(ctx.outputs[_WORK]["n"] >= PASSES)


def build_flow() -> stepflow.Flow:
    body = stepflow.steps().do("work", work)
    return stepflow.new(stepflow.named("bench/v1").loop_until("passes", enough, body))


def record(flow: stepflow.Flow) -> tuple[MemoryStore, stepflow.History]:
    """Run the flow to its end with a worker; return the store and the run's history."""
    clock = FakeClock(1_700_000_000.0)
    store = MemoryStore()
    start_run(store, flow, None, run_id=RUN_ID, clock=clock)
    Worker(store, [flow], clock=clock, concurrency=1).run_sync(
        until_idle=True, handle_signals=False
    )
    return store, stepflow.history(store, RUN_ID)


def advance_only(definition: stepflow.FlowDefinition, history: stepflow.History) -> stepflow.State:
    """Apply the recorded effects and check nothing: the floor under replay."""
    advance = stepflow.advance
    state = history.initial
    for batch in history.batches:
        state, _ = advance(definition, state, batch.effects)
    return state


# --------------------------------------------------------------------------- sanity


def _expect(ok: bool, what: str, got: object) -> None:
    # Not assert: the checks must hold under ``python -O`` too.
    if not ok:
        raise SystemExit(f"benchmark setup is wrong: expected {what}, got {got!r}")


def verify(flow: stepflow.Flow, store: MemoryStore, history: stepflow.History) -> None:
    """Check that the history is what the figures claim, before timing it."""
    definition = flow.definition
    _expect(len(history.batches) == BATCHES, f"{BATCHES} batches", len(history.batches))
    _expect(
        all(b.op == "effects" and len(b.effects) == 1 for b in history.batches),
        "one effect per batch",
        {b.op for b in history.batches},
    )
    result = stepflow.replay(definition, history)
    _expect(result.ok, "a replay without divergence", result.divergences)
    _expect(len(result.states) == BATCHES, f"{BATCHES} states", len(result.states))
    _expect(result.final.status == "completed", "a completed run", result.final.status)
    stored = stepflow.loads(store.load(RUN_ID).state, definition)
    _expect(result.final == stored, "the stored final state", result.final)
    _expect(advance_only(definition, history) == stored, "advance to agree", None)
    text = stepflow.dumps_history(history)
    _expect(stepflow.loads_history(text) == history, "an exact round trip", None)


# --------------------------------------------------------------------------- timing


def measure(benches: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best ns per call of each benchmark, repeats interleaved round-robin."""
    best = {name: float("inf") for name in benches}
    for fn in benches.values():
        fn()  # warm up
    enabled = gc.isenabled()
    try:
        for _ in range(repeats):
            for name, fn in benches.items():
                gc.collect()
                gc.disable()
                start = _now()
                fn()
                took = _now() - start
                if enabled:
                    gc.enable()
                best[name] = min(best[name], took)
    finally:
        if enabled:
            gc.enable()
    return best


# --------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (noisier)")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per figure (default 20)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 20)

    flow = build_flow()
    store, history = record(flow)
    verify(flow, store, history)
    definition = flow.definition
    text = stepflow.dumps_history(history)
    benches: dict[str, Callable[[], Any]] = {
        "replay": lambda: stepflow.replay(definition, history),
        "advance only": lambda: advance_only(definition, history),
        "loads_history": lambda: stepflow.loads_history(text),
        "dumps_history": lambda: stepflow.dumps_history(history),
        "history(store)": lambda: stepflow.history(store, RUN_ID),
    }
    start = _now()
    ns = measure(benches, repeats)
    elapsed = (_now() - start) / 1e9

    print(
        f"stepflow {stepflow.__version__}, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.machine()}"
    )
    print(
        f"best of {repeats} repeats{' (--quick)' if args.quick else ''}; history of "
        f"{BATCHES:,} batches ({PASSES} loop_until passes), {len(text) / 1024:,.0f} KiB exported"
    )
    print()
    print(f"{'figure':<20}{'ms':>10}{'batches/s':>14}{'us/batch':>10}{'x advance':>11}")
    print("-" * 65)
    floor = ns["advance only"]
    for name, took in ns.items():
        per_second = BATCHES / (took / 1e9)
        print(
            f"{name:<20}{took / 1e6:>10.2f}{per_second:>14,.0f}"
            f"{took / BATCHES / 1000:>10.2f}{took / floor:>11.1f}"
        )
    print(f"\ntimed in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
