"""Metrics and traces of a worker: Prometheus scraped over HTTP, OpenTelemetry spans in memory."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client.parser import text_string_to_metric_families

import stepflow
from stepflow import FakeClock, RetryPolicy, RunContext, Worker
from stepflow.errors import ConfigurationError
from stepflow.runtime import metrics as metrics_module
from stepflow.runtime import start_run
from stepflow.runtime import worker as worker_module
from stepflow.runtime.metrics import PrometheusMetrics, WorkerMetrics, serve_metrics
from stepflow.stores import MemoryStore, SQLiteStore

START = 1_700_000_000.0


def flaky_flow() -> stepflow.Flow:
    """do -> retry(do that fails on its first attempt) -> sleep -> do."""

    def fails_once(ctx: RunContext) -> str:
        if ctx.attempt == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    return stepflow.new(
        stepflow.named("metered/v1")
        .do("a", lambda ctx: ctx.input)
        .retry(
            "r",
            RetryPolicy(max_attempts=3, initial_interval=1, jitter=0),
            stepflow.steps().do("b", fails_once),
        )
        .sleep("nap", 5)
        .do("c", lambda ctx: "done")
    )


@pytest.fixture
def served() -> Iterator[tuple[PrometheusMetrics, str]]:
    """Metrics served on a free port of 127.0.0.1, and their URL."""
    metrics = PrometheusMetrics()
    server, thread = serve_metrics(metrics, port=0)
    yield metrics, f"http://127.0.0.1:{server.server_port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Fetch the endpoint; return sample name and labels -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_worker_serves_prometheus_metrics_scraped_over_http(
    served: tuple[PrometheusMetrics, str], tmp_path: Any
) -> None:
    metrics, url = served
    assert isinstance(metrics, WorkerMetrics)
    flow = flaky_flow()
    clock = FakeClock(START)
    store = SQLiteStore(tmp_path / "runs.db")
    for n in range(4):
        start_run(store, flow, n, run_id=f"m{n}", clock=clock)
    # Another worker, gone, left a lease on one run: it expires, and is taken over.
    store.create_run("x", "other/v1", "{}", input=None, status="running", wake_at=0, now=START)
    dead = store.claim_due(now=START, limit=1, owner="dead", lease_seconds=1, flows=["metered/v1"])
    clock.advance(30)  # everything is due, and 30 s late

    stats = Worker(store, [flow], clock=clock, metrics=metrics).run_sync(
        until_idle=True, handle_signals=False
    )
    assert stats.completed == 4
    values = scrape(url)
    flow_label = ("flow", "metered/v1")

    def steps(kind: str, outcome: str) -> float:
        return values[("stepflow_steps_total", (flow_label, ("kind", kind), ("outcome", outcome)))]

    assert steps("do", "returned") == 4 * 3
    assert steps("do", "raised") == 4
    assert steps("sleep", "fired") == 4
    for kind, count in (("do", 16), ("sleep", 4)):
        key = ("stepflow_step_seconds_count", (flow_label, ("kind", kind)))
        assert values[key] == count
        assert values[("stepflow_step_seconds_sum", (flow_label, ("kind", kind)))] > 0
    assert values[("stepflow_runs", (flow_label, ("status", "completed")))] == 4
    assert values[("stepflow_runs", (flow_label, ("status", "running")))] == 0
    assert values[("stepflow_claimed_total", ())] == stats.claimed

    # The first claim was of runs due 30 s before: its lag lands in the 30 s bucket
    # (later claims, of retries and timers, were on time).
    def lags(le: str) -> float:
        return values[("stepflow_claim_lag_seconds_bucket", (("le", le),))]

    assert lags("30.0") - lags("10.0") == 1
    assert lags("+Inf") == lags("30.0")
    assert values[("stepflow_lease_takeovers_total", ())] == len(dead) == 1
    assert values[("stepflow_commits_total", ())] == stats.commits
    assert values[("stepflow_saves_total", ())] == stats.steps
    assert values[("stepflow_stale_writes_total", ())] == 0
    store.close()


def test_stale_writes_and_parked_runs_are_counted(served: tuple[PrometheusMetrics, str]) -> None:
    metrics, url = served
    clock = FakeClock(START)
    store = MemoryStore()

    stolen: list[str] = []

    def stalls(ctx: RunContext) -> str:
        if ctx.run_id == "lost" and not stolen:  # another worker claims it meanwhile, once
            stolen.append(ctx.run_id)
            store.claim_due(now=clock.now() + 31, limit=5, owner="thief", lease_seconds=60)
        return "done"

    flow = stepflow.new(stepflow.named("metered/v1").do("s", stalls))
    start_run(store, flow, None, run_id="lost", clock=clock)
    start_run(store, flow, None, run_id="bad", clock=clock)
    store._runs["bad"] = _with_input(store, "bad", "{nope")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    worker = Worker(
        store,
        [flow],
        clock=clock,
        metrics=metrics,
        park_seconds=1000,
        tracer=provider.get_tracer("test"),
    )
    # The thief never saves: once its lease expires, the worker finishes the run.
    stats = worker.run_sync(until_idle=True, handle_signals=False)
    assert (stats.stale, stats.parked, stats.completed) == (1, 1, 1)
    values = scrape(url)
    assert values[("stepflow_stale_writes_total", ())] == 1
    assert values[("stepflow_parked_total", (("flow", "metered/v1"),))] == 1
    assert values[("stepflow_runs", (("flow", "metered/v1"), ("status", "parked")))] == 1
    # The step whose save was refused ends its span as not saved.
    outcomes = [span.attributes["stepflow.outcome"] for span in exporter.get_finished_spans()]
    assert outcomes == ["interrupted", "returned"]
    assert exporter.get_finished_spans()[0].status.status_code is StatusCode.ERROR


def _with_input(store: MemoryStore, run_id: str, text: str) -> Any:
    import attrs

    return attrs.evolve(store._runs[run_id], input=text)


def test_prometheus_metrics_need_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'stepflow\[metrics\]'"):
        PrometheusMetrics()


def test_a_port_in_use_is_one_clear_error(served: tuple[PrometheusMetrics, str]) -> None:
    _, url = served
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(ConfigurationError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
        serve_metrics(PrometheusMetrics(), port=port)


def test_combine_reports_to_every_hook() -> None:
    seen: list[tuple[str, Any]] = []

    class Hook:
        def step(self, flow: str, kind: str, outcome: str, seconds: float) -> None:
            seen.append(("step", (flow, kind, outcome)))

        def claimed(self, runs: int, lag: float) -> None:
            seen.append(("claimed", runs))

        def takeovers(self, runs: int) -> None:
            seen.append(("takeovers", runs))

        def stale(self) -> None:
            seen.append(("stale", None))

        def commit(self, saves: int) -> None:
            seen.append(("commit", saves))

        def parked(self, flow: str) -> None:
            seen.append(("parked", flow))

        def runs(self, counts: Any) -> None:
            seen.append(("runs", dict(counts)))

    assert metrics_module.combine(None, None) is None
    one = Hook()
    assert metrics_module.combine(one, None) is one
    both = metrics_module.combine(Hook(), Hook())
    assert isinstance(both, WorkerMetrics)
    both.step("f", "do", "returned", 0.1)
    both.claimed(2, 0.5)
    both.takeovers(1)
    both.stale()
    both.commit(3)
    both.parked("f")
    both.runs({("f", "running"): 1})
    assert len(seen) == 14
    assert seen[:2] == [("step", ("f", "do", "returned"))] * 2


# -- OpenTelemetry -----------------------------------------------------------------------------


def test_one_span_per_step_with_run_flow_step_attempt_and_outcome() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    flow = flaky_flow()
    clock = FakeClock(START)
    store = MemoryStore()
    start_run(store, flow, 7, run_id="t1", clock=clock)
    stats = Worker(store, [flow], clock=clock, tracer=provider.get_tracer("test")).run_sync(
        until_idle=True, handle_signals=False
    )
    spans = exporter.get_finished_spans()
    assert len(spans) == stats.steps == 5
    rows = [
        (
            span.name,
            span.attributes["stepflow.step"],
            span.attributes["stepflow.attempt"],
            span.attributes["stepflow.outcome"],
        )
        for span in spans
    ]
    assert rows == [
        ("stepflow do metered/v1/a", "metered/v1/a", 1, "returned"),
        ("stepflow do metered/v1/rRetry/b", "metered/v1/rRetry/b", 1, "raised"),
        ("stepflow do metered/v1/rRetry/b", "metered/v1/rRetry/b", 2, "returned"),
        ("stepflow sleep metered/v1/nap", "metered/v1/nap", 1, "fired"),
        ("stepflow do metered/v1/c", "metered/v1/c", 1, "returned"),
    ]
    assert all(span.attributes["stepflow.run_id"] == "t1" for span in spans)
    assert all(span.attributes["stepflow.flow"] == "metered/v1" for span in spans)
    failed = spans[1]
    assert failed.status.status_code is StatusCode.ERROR
    assert "first attempt fails" in (failed.status.description or "")
    assert [event.name for event in failed.events] == ["exception"]
    assert spans[0].status.status_code is StatusCode.UNSET


def test_no_tracer_without_a_configured_provider_or_without_opentelemetry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry import trace

    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        assert worker_module._global_tracer() is None  # installed, not configured
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    assert worker_module._global_tracer() is None  # not installed


def test_the_global_tracer_provider_is_used_once_configured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from opentelemetry import trace

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # As trace.set_tracer_provider(provider) would, without changing the process for good.
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    flow = stepflow.new(stepflow.named("traced/v1").do("a", lambda ctx: 1))
    store = MemoryStore()
    start_run(store, flow, None, run_id="g1")
    Worker(store, [flow]).run_sync(until_idle=True, handle_signals=False)
    (span,) = exporter.get_finished_spans()
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "stepflow"
    assert span.attributes is not None
    assert span.attributes["stepflow.run_id"] == "g1"
