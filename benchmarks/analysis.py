"""Benchmark the exploration of flows with several commands in flight.

Run ``python benchmarks/analysis.py`` (``--quick`` for a smoke run). For each
flow below, :func:`stepflow.analysis.explore` runs with its reduction and
without it (``reduce=False``), in the same process; the script prints the search
states, the edges explored (each one :func:`stepflow.advance` call), the moves
the reduction left out, and the time of each search (best of several repeats,
garbage collector off) with their ratio. Both searches must reach the same
states, with the same counts of completed and failed runs: the script checks
that before timing.

Flows:

* ``wide``: one ``parallel`` group of 3 branches of 5 ``do`` steps each;
* ``release``: two check branches (``do``, ``sleep``, ``wait_for``), then a
  ``map`` over 0 to 3 regions, 2 at once, of 2 steps each;
* ``fleet``: a ``map`` over 0 to 4 items, all at once, of 3 steps each.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

import stepflow
from stepflow.analysis import Exploration, explore

_now = time.perf_counter_ns


def _handler(*_: Any) -> Any:
    raise AssertionError("the analysis never calls handlers")


def _chain(prefix: str, count: int) -> stepflow.Steps:
    body = stepflow.steps()
    for i in range(count):
        body = body.do(f"{prefix}{i}", _handler)
    return body


def flows() -> dict[str, tuple[stepflow.FlowDefinition, int]]:
    """Each benchmarked flow, with the ``max_items`` its maps are explored with."""
    s = stepflow.steps
    wide = stepflow.named("wide/v1").parallel(
        "p", {"a": _chain("a", 5), "b": _chain("b", 5), "c": _chain("c", 5)}
    )
    checks = {
        "lint": _chain("lint", 3),
        "tests": s()
        .do("unit", _handler)
        .sleep("settle", 30)
        .wait_for("green", _handler, every=5, timeout=20)
        .do("e2e", _handler),
    }
    release = (
        stepflow.named("release/v1")
        .parallel("checks", checks)
        .map("regions", _handler, _chain("step", 2), max_concurrency=2)
    )
    fleet = stepflow.named("fleet/v1").map("hosts", _handler, _chain("op", 3))
    return {
        "wide": (stepflow.new(wide).definition, 2),
        "release": (stepflow.new(release).definition, 3),
        "fleet": (stepflow.new(fleet).definition, 4),
    }


def _best(run: Callable[[], Exploration], repeats: int) -> tuple[float, Exploration]:
    best, result = float("inf"), run()
    gc.disable()
    try:
        for _ in range(repeats):
            start = _now()
            result = run()
            best = min(best, (_now() - start) / 1e6)
    finally:
        gc.enable()
    return best, result


def main() -> None:
    """Print the figures of every flow."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat: a smoke run")
    args = parser.parse_args()
    repeats = 1 if args.quick else 5
    columns = ("states", "edges", "pruned", "reduced ms", "full ms", "ratio")
    widths = (7, 7, 7, 11, 8, 6)
    print(f"{'flow':<8} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    for name, (definition, max_items) in flows().items():
        reduced_ms, reduced = _best(
            lambda d=definition, m=max_items: explore(d, max_items=m), repeats
        )
        full_ms, full = _best(
            lambda d=definition, m=max_items: explore(d, max_items=m, reduce=False), repeats
        )
        same = (reduced.states, reduced.completed, reduced.failed, reduced.complete)
        if same != (full.states, full.completed, full.failed, full.complete):
            raise SystemExit(f"{name}: the reduction changed the search: {reduced} != {full}")
        print(
            f"{name:<8} {reduced.states:>7} {reduced.transitions:>7} {reduced.pruned:>7} "
            f"{reduced_ms:>11.1f} {full_ms:>8.1f} {reduced_ms / full_ms:>6.2f}"
        )


if __name__ == "__main__":
    main()
