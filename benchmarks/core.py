"""Benchmark stepflow's core against a bare-Python floor and the ``transitions`` library.

Run ``python benchmarks/core.py`` (``--quick`` for a smoke run, ``--check`` to exit 1
when a target is missed). See ``benchmarks/README.md`` for what each figure means.

Every figure is the best of several repeats, measured in one process, with the
garbage collector off while timing (as :mod:`timeit` does). Repeats are interleaved
round-robin across the benchmarks so a burst of machine noise hits all of them
alike instead of one.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable
from itertools import repeat
from typing import Any

from pyrsistent import pmap

import stepflow

N_DO = 10  # do steps in the full flow
N_POLLS = 10  # the wait_for condition is true on this poll
# One handler call per do step and per poll: the same count on both sides.
HANDLER_CALLS = N_DO + N_POLLS

TARGET_ADVANCE = 15.0  # advance <= 15x the floor
TARGET_FLOW = 300.0  # in-memory full flow <= 300x the floor
TARGET_VS_TRANSITIONS = 1.5  # transitions / (flow with dumps/loads) >= 1.5

MAP_SMALL, MAP_LARGE = 10, 1000  # items of the two maps driven by advance alone
MAP_CONCURRENCY = 50
TARGET_MAP_GROWTH = 2.0  # cost per effect, 1,000-item map / 10-item map <= 2
TARGET_MAP_MEMORY = 3.0  # memory kept per step, 1,000-item map / 10-item map <= 3

_now = time.perf_counter_ns


# --------------------------------------------------------------------------- context


class Ctx:
    """The caller's context: a poll counter (reset per run) and a handler-call counter."""

    __slots__ = ("calls", "polls")

    def __init__(self) -> None:
        self.polls = 0
        self.calls = 0


def action(ctx: Ctx) -> None:
    """A do step's handler / a transitions action: trivial work, the same on both sides."""
    ctx.calls += 1


def ready(ctx: Ctx) -> bool:
    """The wait_for condition: true on its N_POLLS-th call of the run."""
    ctx.calls += 1
    ctx.polls += 1
    return ctx.polls >= N_POLLS


# --------------------------------------------------------------------------- stepflow


def build_flow() -> stepflow.Flow:
    spec = stepflow.named("bench/v1")
    for i in range(N_DO):
        spec = spec.do(f"step{i}", action)
    return stepflow.new(spec.wait_for("ready", ready))


def make_floor() -> Callable[[int], None]:
    """One dict lookup and one tuple build per iteration."""
    table = {"start:bench/v1/step4": 1, "start:bench/v1/step5": 2}
    key = "start:bench/v1/step4"
    other = 7

    def floor(n: int, table: dict[str, int] = table, key: str = key, other: int = other) -> None:
        for _ in repeat(None, n):
            t = (table[key], other)  # noqa: F841

    return floor


def advance_inputs(flow: stepflow.Flow) -> tuple[stepflow.State, tuple[stepflow.Effect, ...]]:
    """A state resting at a do step (its command in flight), and the effect answering it."""
    definition = flow.definition
    state, commands = stepflow.advance(definition, None)
    ctx = Ctx()
    while commands[0].step != "bench/v1/step4":
        effect = flow.interpreter.execute(commands[0], ctx)
        state, commands = stepflow.advance(definition, state, (effect,))
    return state, (stepflow.HandlerReturned(commands[0].id, None),)


def make_advance(flow: stepflow.Flow) -> Callable[[int], None]:
    state, effects = advance_inputs(flow)

    def bench_advance(
        n: int,
        advance: Any = stepflow.advance,
        definition: stepflow.FlowDefinition = flow.definition,
        state: stepflow.State = state,
        effects: tuple[stepflow.Effect, ...] = effects,
    ) -> None:
        for _ in repeat(None, n):
            advance(definition, state, effects)

    return bench_advance


def run_in_memory(flow: stepflow.Flow, ctx: Ctx) -> stepflow.State:
    advance = stepflow.advance
    execute = flow.interpreter.execute
    definition = flow.definition
    ctx.polls = 0
    state, cmds = advance(definition, None)
    while cmds:
        effect = execute(cmds[0], ctx)
        state, cmds = advance(definition, state, (effect,))
    return state


def run_with_codec(flow: stepflow.Flow, ctx: Ctx) -> stepflow.State:
    advance = stepflow.advance
    dumps = stepflow.dumps
    loads = stepflow.loads
    execute = flow.interpreter.execute
    definition = flow.definition
    ctx.polls = 0
    state, cmds = advance(definition, None)
    state = loads(dumps(state), definition)
    while cmds:
        effect = execute(cmds[0], ctx)
        state, cmds = advance(definition, state, (effect,))
        text = dumps(state)
        state = loads(text, definition)
    return state


def make_runs(
    run: Callable[[stepflow.Flow, Ctx], Any], flow: stepflow.Flow
) -> Callable[[int], None]:
    ctx = Ctx()

    def bench_runs(n: int) -> None:
        for _ in repeat(None, n):
            run(flow, ctx)

    return bench_runs


# --------------------------------------------------------------------------- transitions


class Model:
    """The transitions model: the machine keeps its state in ``model.state``."""


def build_machine() -> tuple[Any, Model]:
    """The same flow in ``transitions``: one ``step`` trigger, 20 triggers per run.

    ``step0 .. step9`` run their action (a ``before`` callback) and move on; the last
    one moves to ``ready``, where each ``step`` polls the condition and moves to
    ``done`` when it holds. Built once; each run starts a fresh state on its model.
    """
    from transitions import Machine

    states = [f"step{i}" for i in range(N_DO)] + ["ready", "done"]
    table: list[dict[str, Any]] = [
        {"trigger": "step", "source": states[i], "dest": states[i + 1], "before": action}
        for i in range(N_DO)
    ]
    table.append({"trigger": "step", "source": "ready", "dest": "done", "conditions": ready})
    model = Model()
    machine = Machine(
        model=model, states=states, transitions=table, initial="step0", auto_transitions=False
    )
    return machine, model


def run_transitions(machine: Any, model: Any, ctx: Ctx) -> str:
    """A run, saving the state name with json.dumps and restoring it with json.loads."""
    dumps = json.dumps
    loads = json.loads
    set_state = machine.set_state
    ctx.polls = 0
    text = dumps("step0")  # a fresh run's saved state
    name = loads(text)
    set_state(name, model)
    while name != "done":
        model.step(ctx)
        text = dumps(model.state)
        name = loads(text)
        set_state(name, model)
    return name


def make_transitions() -> Callable[[int], None]:
    machine, model = build_machine()
    ctx = Ctx()

    def bench_transitions(n: int) -> None:
        for _ in repeat(None, n):
            run_transitions(machine, model, ctx)

    return bench_transitions


# --------------------------------------------------------------------------- sanity


def _expect(ok: bool, what: str, got: object) -> None:
    # Not assert: the checks must hold under ``python -O`` too.
    if not ok:
        raise SystemExit(f"benchmark setup is wrong: expected {what}, got {got!r}")


def verify(flow: stepflow.Flow) -> None:
    """Check that every benchmark does the work it claims, before timing it."""
    state, effects = advance_inputs(flow)
    new_state, commands = stepflow.advance(flow.definition, state, effects)
    _expect(state.in_flight[0].kind == "do", "a do command in flight", state.in_flight)
    _expect(len(commands) == 1, "one command issued", commands)
    _expect(commands[0].kind == "do", "a do command", commands)
    _expect(commands[0].step == "bench/v1/step5", "the next do step", commands)
    _expect(new_state.events == ("start:bench/v1/step5",), "the hop", new_state.events)
    _expect(new_state.seq == state.seq + 1, "one new command id", new_state.seq)

    for run in (run_in_memory, run_with_codec):
        ctx = Ctx()
        for _ in range(2):  # twice: the poll counter is reset per run
            done = run(flow, ctx)
            _expect(done.status == "completed", "a completed run", done)
            _expect(done.seq == HANDLER_CALLS, f"{HANDLER_CALLS} commands", done.seq)
        _expect(ctx.calls == 2 * HANDLER_CALLS, f"{HANDLER_CALLS} calls per run", ctx.calls)

    machine, model = build_machine()
    ctx = Ctx()
    for _ in range(2):
        name = run_transitions(machine, model, ctx)
        _expect(name == "done", "transitions to reach done", name)
    _expect(ctx.calls == 2 * HANDLER_CALLS, f"{HANDLER_CALLS} transitions calls", ctx.calls)


# --------------------------------------------------------------------------- timing


def calibrate(fn: Callable[[int], None], budget_ns: int) -> int:
    """Return a loop count for which one call of ``fn`` takes about ``budget_ns``."""
    n = 1
    while True:
        start = _now()
        fn(n)
        took = _now() - start
        if took >= budget_ns // 10:
            return max(1, int(n * budget_ns / max(took, 1)))
        n *= 10 if took < budget_ns // 100 else 2


def measure(
    benches: dict[str, Callable[[int], None]], repeats: int, budget_ns: int
) -> dict[str, float]:
    """Best ns per iteration of each benchmark, repeats interleaved round-robin."""
    loops = {}
    for name, fn in benches.items():
        fn(max(1, calibrate(fn, budget_ns) // 10))  # warm up
        loops[name] = calibrate(fn, budget_ns)
    best = {name: float("inf") for name in benches}
    enabled = gc.isenabled()
    try:
        for _ in range(repeats):
            for name, fn in benches.items():
                gc.collect()
                gc.disable()
                start = _now()
                fn(loops[name])
                took = _now() - start
                if enabled:
                    gc.enable()
                best[name] = min(best[name], took / loops[name])
    finally:
        if enabled:
            gc.enable()
    return best


# --------------------------------------------------------------------------- map


def build_map_flow() -> stepflow.Flow:
    """One ``map`` whose items each run one ``do`` step, ``MAP_CONCURRENCY`` at a time."""
    body = stepflow.steps().do("work", action)
    return stepflow.new(
        stepflow.named("bench/map").map("items", action, body, max_concurrency=MAP_CONCURRENCY)
    )


def drive_map(
    definition: stepflow.FlowDefinition,
    items: int,
    *,
    one_at_a_time: bool = False,
    keep: list[stepflow.State] | None = None,
) -> int:
    """Drive a map of ``items`` to its end with ``advance`` alone; return the effects applied.

    Each batch answers every command in flight (or only the first one); ``keep``
    receives every state, to measure what the states hold on to.
    """
    advance, returned = stepflow.advance, stepflow.HandlerReturned
    state, commands = advance(definition, None)
    state, commands = advance(definition, state, (returned(commands[0].id, list(range(items))),))
    effects = 1
    while commands:
        if one_at_a_time:
            batch: tuple[stepflow.Effect, ...] = (returned(commands[0].id, 1),)
        else:
            batch = tuple(returned(command.id, 1) for command in commands)
        state, commands = advance(definition, state, batch)
        effects += len(batch)
        if keep is not None:
            keep.append(state)
    return effects


def make_map(definition: stepflow.FlowDefinition, items: int) -> Callable[[int], None]:
    def bench_map(n: int) -> None:
        for _ in repeat(None, n):
            drive_map(definition, items)

    return bench_map


def kept_per_step(definition: stepflow.FlowDefinition, items: int) -> tuple[float, int]:
    """Bytes allocated and still held per step when every state of a map's run is kept.

    States that copied their outputs would hold O(items) new bytes each; states
    that share structure (pyrsistent) hold O(log items).
    """
    gc.collect()
    tracemalloc.start()
    keep: list[stepflow.State] = []
    try:
        drive_map(definition, items, one_at_a_time=True, keep=keep)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return held / len(keep), len(keep)


def deep_copy_ns(definition: stepflow.FlowDefinition, items: int) -> float:
    """Time of one deep copy of a state halfway through a map of ``items``: what copying costs."""
    keep: list[stepflow.State] = []
    drive_map(definition, items, one_at_a_time=True, keep=keep)
    middle = keep[len(keep) // 2]
    start = _now()
    copy.deepcopy(middle)
    return float(_now() - start)


def verify_map(definition: stepflow.FlowDefinition) -> None:
    for items in (MAP_SMALL, MAP_LARGE):
        keep: list[stepflow.State] = []
        effects = drive_map(definition, items, keep=keep)
        final = keep[-1]
        _expect(final.status == "completed", "the map completes", final.status)
        _expect(effects == items + 1, "one effect per item, plus the items command", effects)
        output = final.outputs["bench/map/itemsMap"]
        _expect(len(output) == items, "the map's output has one result per item", len(output))
        _expect(
            type(final.outputs) is type(pmap()),
            "outputs are a pyrsistent map",
            type(final.outputs),
        )


# --------------------------------------------------------------------------- report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (noisier)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per figure (default 5)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    budget_ns = 20_000_000 if args.quick else 300_000_000  # per repeat, per figure

    flow = build_flow()
    verify(flow)
    map_flow = build_map_flow()
    verify_map(map_flow.definition)
    benches = {
        "floor": make_floor(),
        "advance": make_advance(flow),
        "flow": make_runs(run_in_memory, flow),
        "flow+codec": make_runs(run_with_codec, flow),
        "transitions": make_transitions(),
        "map-small": make_map(map_flow.definition, MAP_SMALL),
        "map-large": make_map(map_flow.definition, MAP_LARGE),
    }
    start = _now()
    ns = measure(benches, repeats, budget_ns)
    elapsed = (_now() - start) / 1e9

    import transitions

    floor, trans = ns["floor"], ns["transitions"]
    print(
        f"stepflow {stepflow.__version__}, transitions {transitions.__version__}, "
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"{platform.machine()}"
    )
    print(
        f"best of {repeats} repeats{' (--quick)' if args.quick else ''}; "
        f"flow = {N_DO} do steps + 1 wait_for true on poll {N_POLLS} "
        f"({HANDLER_CALLS} handler calls, {HANDLER_CALLS + 1} advances per run)"
    )
    print()
    rows = [
        ("1 FLOOR  dict lookup + tuple build", "floor", "ns/iter"),
        ("2 ADVANCE  static hop + command", "advance", "ns/call"),
        ("3 FULL FLOW  in memory", "flow", "us/run"),
        ("4 FULL FLOW  + dumps/loads each advance", "flow+codec", "us/run"),
        ("5 TRANSITIONS  + json name each step", "transitions", "us/run"),
    ]
    print(f"{'figure':<42}{'time':>12}  {'unit':<8}{'x floor':>10}{'transitions/this':>18}")
    print("-" * 90)
    for label, key, unit in rows:
        value = ns[key] / 1000 if unit == "us/run" else ns[key]
        vs_trans = f"{trans / ns[key]:.2f}" if unit == "us/run" else ""
        print(f"{label:<42}{value:>12.2f}  {unit:<8}{ns[key] / floor:>10.1f}{vs_trans:>18}")
    print()
    per_effect = {
        key: ns[f"map-{key}"] / (items + 1)
        for key, items in (("small", MAP_SMALL), ("large", MAP_LARGE))
    }
    growth = per_effect["large"] / per_effect["small"]
    kept_small, _ = kept_per_step(map_flow.definition, MAP_SMALL)
    kept_large, steps_large = kept_per_step(map_flow.definition, MAP_LARGE)
    copy_ns = deep_copy_ns(map_flow.definition, MAP_LARGE)
    print(
        f"map, max_concurrency={MAP_CONCURRENCY}, driven by advance alone "
        "(each batch answers every command in flight)"
    )
    for key, items in (("small", MAP_SMALL), ("large", MAP_LARGE)):
        label = f"{6 if key == 'small' else 7} MAP  {items:,} items"
        value = per_effect[key] / 1000
        print(f"{label:<42}{value:>12.2f}  {'us/eff':<8}{per_effect[key] / floor:>10.1f}")
    print(f"  cost per effect, {MAP_LARGE:,} items / {MAP_SMALL} items: {growth:.2f}x")
    print(
        f"  memory kept per step (every state kept): {kept_small:,.0f} B with {MAP_SMALL} items, "
        f"{kept_large:,.0f} B with {MAP_LARGE:,} ({kept_large / kept_small:.2f}x for "
        f"{MAP_LARGE // MAP_SMALL}x the items: shared, not copied)"
    )
    print(
        f"  a deep copy of one {MAP_LARGE:,}-item state takes {copy_ns / 1000:,.0f} us, "
        f"{copy_ns / per_effect['large']:.0f}x an effect; {steps_large:,} states kept "
        f"hold {kept_large * steps_large / 1e6:.1f} MB in all"
    )
    print()

    results = [
        (
            f"advance <= {TARGET_ADVANCE:g}x floor",
            ns["advance"] / floor <= TARGET_ADVANCE,
            f"{ns['advance'] / floor:.1f}x",
        ),
        (
            f"in-memory full flow <= {TARGET_FLOW:g}x floor",
            ns["flow"] / floor <= TARGET_FLOW,
            f"{ns['flow'] / floor:.1f}x",
        ),
        (
            f"flow with dumps/loads >= {TARGET_VS_TRANSITIONS:g}x faster than transitions",
            trans / ns["flow+codec"] >= TARGET_VS_TRANSITIONS,
            f"{trans / ns['flow+codec']:.2f}x",
        ),
        (
            f"map cost per effect, {MAP_LARGE:,} items <= {TARGET_MAP_GROWTH:g}x {MAP_SMALL} items",
            growth <= TARGET_MAP_GROWTH,
            f"{growth:.2f}x",
        ),
        (
            f"map memory per step, {MAP_LARGE:,} items <= {TARGET_MAP_MEMORY:g}x {MAP_SMALL} items",
            kept_large / kept_small <= TARGET_MAP_MEMORY,
            f"{kept_large / kept_small:.2f}x",
        ),
    ]
    print("targets")
    for text, ok, got in results:
        print(f"  {'PASS' if ok else 'MISS'}  {text:<62} (got {got})")
    print(f"\ntimed in {elapsed:.1f} s")
    missed = not all(ok for _, ok, _ in results)
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
