"""What a worker reports as it runs: the metrics hook, and Prometheus behind it.

A :class:`~stepflow.runtime.worker.Worker` given ``metrics=`` calls the hook's
methods as things happen: after every saved step, on every claim, commit, stale
write and lease takeover, and every ``metrics_interval`` seconds with the runs
counted by flow and status (through :meth:`Store.count
<stepflow.stores.base.Store.count>`). :class:`WorkerMetrics` is that hook's
protocol; any object with these methods will do (the CLI's progress display is
one). :class:`PrometheusMetrics` records them with ``prometheus_client``
(``pip install 'stepflow[metrics]'``) and :func:`serve_metrics` serves them over
HTTP, which is what ``stepflow worker --metrics-port N`` does::

    metrics = PrometheusMetrics()
    serve_metrics(metrics, port=9464)
    Worker(store, flows, metrics=metrics).run_sync()

The hook is called on the worker's event loop, once per step: it must be quick
and must not block.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from stepflow.errors import ConfigurationError

if TYPE_CHECKING:
    import prometheus_client

__all__ = [
    "INSTALL_HINT",
    "STEP_BUCKETS",
    "PrometheusMetrics",
    "WorkerMetrics",
    "serve_metrics",
]

#: How to install what :class:`PrometheusMetrics` needs.
INSTALL_HINT = "pip install 'stepflow[metrics]'"

#: Bucket bounds (seconds) of the step latency histogram: from a no-op step
#: saved in a group commit (a fraction of a millisecond) to a long handler call.
STEP_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

# Bucket bounds (seconds) of the claim lag histogram: how late a due run was claimed.
_LAG_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)


@runtime_checkable
class WorkerMetrics(Protocol):
    """The hook a :class:`~stepflow.runtime.worker.Worker` reports to (``metrics=``)."""

    def step(self, flow: str, kind: str, outcome: str, seconds: float) -> None:
        """Report one step executed and saved.

        Args:
            flow: The flow's name (``"deploy/v1"``).
            kind: The command's kind: ``"do"``, ``"wait_for"``, ``"case"``,
                ``"loop_until"``, ``"on_error"``, ``"sleep"``, ``"map"`` or ``"switch"``.
            outcome: ``"returned"``, ``"raised"`` (the handler raised) or
                ``"fired"`` (a timer).
            seconds: From the start of the command to its durable save.

        """

    def claimed(self, runs: int, lag: float) -> None:
        """Report that ``runs`` due runs were claimed, the most overdue ``lag`` s late."""

    def takeovers(self, runs: int) -> None:
        """Report ``runs`` runs taken over from another lease holder (dead or expired)."""

    def stale(self) -> None:
        """Report a save refused because the run moved on without this worker."""

    def commit(self, saves: int) -> None:
        """Report one store transaction that saved ``saves`` steps."""

    def parked(self, flow: str) -> None:
        """Report a run of ``flow`` parked because this worker cannot drive it."""

    def runs(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Report the runs in the store by ``(flow, status)`` (refreshed periodically)."""


class PrometheusMetrics:
    """A :class:`WorkerMetrics` hook recording Prometheus metrics (``stepflow[metrics]``).

    The metrics, all prefixed ``stepflow_``:

    * ``steps_total{flow, kind, outcome}``: steps executed and saved;
    * ``step_seconds{flow, kind}``: histogram of step latency, from the start of
      the command to its durable save;
    * ``runs{flow, status}``: runs in the store by status (refreshed every
      ``metrics_interval`` seconds by the worker);
    * ``claimed_total``, and ``claim_lag_seconds``: histogram of how late the
      most overdue run of each claim was claimed after its ``wake_at``;
    * ``lease_takeovers_total``: runs taken over from a dead or expired lease;
    * ``stale_writes_total``: saves refused because the run moved on;
    * ``commits_total`` and ``saves_total``: store transactions and the steps
      they saved (their ratio is the group commit's batch size);
    * ``parked_total{flow}``: runs parked because this worker cannot drive them.

    Args:
        registry: Where to register them (default: a new
            ``prometheus_client.CollectorRegistry``, so several workers in one
            process do not clash; pass ``prometheus_client.REGISTRY`` to use the
            global one).

    Attributes:
        registry: The registry holding the metrics.

    Raises:
        ConfigurationError: ``prometheus_client`` is not installed.

    """

    def __init__(self, registry: prometheus_client.CollectorRegistry | None = None) -> None:
        try:
            import prometheus_client as prom
        except ImportError as exc:
            raise ConfigurationError(
                f"Prometheus metrics need prometheus_client, which is not installed: {INSTALL_HINT}"
            ) from exc
        self.registry = registry if registry is not None else prom.CollectorRegistry()
        on = self.registry
        # Steps are counted by a collector of plain counters, read at scrape time:
        # a step costs the worker tens of microseconds, and a labelled Counter and
        # Histogram would add a lock and a label lookup each to every one.
        self._steps = _StepCollector()
        self.registry.register(self._steps)
        self._runs = prom.Gauge(
            "runs",
            "Runs in the store by status.",
            ["flow", "status"],
            registry=on,
            namespace="stepflow",
        )
        self._claimed = prom.Counter("claimed", "Runs claimed.", registry=on, namespace="stepflow")
        self._lag = prom.Histogram(
            "claim_lag_seconds",
            "How late the most overdue run of a claim was claimed after its wake_at.",
            buckets=_LAG_BUCKETS,
            registry=on,
            namespace="stepflow",
        )
        self._takeovers = prom.Counter(
            "lease_takeovers",
            "Runs taken over from a dead or expired lease.",
            registry=on,
            namespace="stepflow",
        )
        self._stale = prom.Counter(
            "stale_writes",
            "Saves refused because the run moved on without this worker.",
            registry=on,
            namespace="stepflow",
        )
        self._commits = prom.Counter(
            "commits", "Store transactions that saved steps.", registry=on, namespace="stepflow"
        )
        self._saves = prom.Counter(
            "saves", "Steps saved by those transactions.", registry=on, namespace="stepflow"
        )
        self._parked = prom.Counter(
            "parked",
            "Runs parked because this worker cannot drive them.",
            ["flow"],
            registry=on,
            namespace="stepflow",
        )
        self._seen_runs: set[tuple[str, str]] = set()

    def step(self, flow: str, kind: str, outcome: str, seconds: float) -> None:
        """Count the step and observe its latency (see :meth:`WorkerMetrics.step`)."""
        steps = self._steps
        key = (flow, kind, outcome)
        steps.counts[key] = steps.counts.get(key, 0) + 1
        latency = steps.latency.get((flow, kind))
        if latency is None:
            latency = steps.latency[(flow, kind)] = [0.0] + [0] * (len(STEP_BUCKETS) + 1)
        latency[0] += seconds
        # Bucket i holds the values <= STEP_BUCKETS[i] and above the one before; the
        # last, the values above every bound. Made cumulative when scraped.
        latency[1 + bisect.bisect_left(STEP_BUCKETS, seconds)] += 1

    def claimed(self, runs: int, lag: float) -> None:
        """Count the claim and observe its lag (see :meth:`WorkerMetrics.claimed`)."""
        self._claimed.inc(runs)
        self._lag.observe(max(lag, 0.0))

    def takeovers(self, runs: int) -> None:
        """Count lease takeovers (see :meth:`WorkerMetrics.takeovers`)."""
        self._takeovers.inc(runs)

    def stale(self) -> None:
        """Count a stale write (see :meth:`WorkerMetrics.stale`)."""
        self._stale.inc()

    def commit(self, saves: int) -> None:
        """Count a commit of ``saves`` steps (see :meth:`WorkerMetrics.commit`)."""
        self._commits.inc()
        self._saves.inc(saves)

    def parked(self, flow: str) -> None:
        """Count a parked run (see :meth:`WorkerMetrics.parked`)."""
        self._parked.labels(flow).inc()

    def runs(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Set the runs-by-status gauge (see :meth:`WorkerMetrics.runs`).

        A combination seen before and missing now is set to 0, not left stale.
        """
        for key in self._seen_runs - counts.keys():
            self._runs.labels(*key).set(0)
        for key, count in counts.items():
            self._runs.labels(*key).set(count)
        self._seen_runs |= counts.keys()


class _StepCollector:
    """``stepflow_steps_total`` and ``stepflow_step_seconds``, from plain counters.

    The worker's loop writes the counters; a scrape (on the HTTP server's thread)
    reads a copy of them. Under the GIL each update is whole, so a scrape sees
    every step either counted or not yet, never a torn value.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}
        # (flow, kind) -> [sum of seconds, count per bucket..., count above the last]
        self.latency: dict[tuple[str, str], list[float]] = {}

    def collect(self) -> Iterator[Any]:
        """Yield the two metric families as they stand (prometheus_client's Collector)."""
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        steps = CounterMetricFamily(
            "stepflow_steps", "Steps executed and saved.", labels=["flow", "kind", "outcome"]
        )
        for key, count in list(self.counts.items()):
            steps.add_metric(list(key), count)
        yield steps
        latency = HistogramMetricFamily(
            "stepflow_step_seconds",
            "Step latency: from the start of the command to its durable save.",
            labels=["flow", "kind"],
        )
        bounds = [*(repr(float(bound)) for bound in STEP_BUCKETS), "+Inf"]
        for labels, values in list(self.latency.items()):
            total, *in_buckets = list(values)
            cumulative, buckets = 0.0, []
            for bound, in_bucket in zip(bounds, in_buckets, strict=True):
                cumulative += in_bucket
                buckets.append((bound, cumulative))
            latency.add_metric(list(labels), buckets, sum_value=total)
        yield latency


class _Both:
    """Report to several hooks (the CLI's progress display and Prometheus)."""

    def __init__(self, hooks: Sequence[WorkerMetrics]) -> None:
        self.hooks = tuple(hooks)

    def step(self, flow: str, kind: str, outcome: str, seconds: float) -> None:
        for hook in self.hooks:
            hook.step(flow, kind, outcome, seconds)

    def claimed(self, runs: int, lag: float) -> None:
        for hook in self.hooks:
            hook.claimed(runs, lag)

    def takeovers(self, runs: int) -> None:
        for hook in self.hooks:
            hook.takeovers(runs)

    def stale(self) -> None:
        for hook in self.hooks:
            hook.stale()

    def commit(self, saves: int) -> None:
        for hook in self.hooks:
            hook.commit(saves)

    def parked(self, flow: str) -> None:
        for hook in self.hooks:
            hook.parked(flow)

    def runs(self, counts: Mapping[tuple[str, str], int]) -> None:
        for hook in self.hooks:
            hook.runs(counts)


def combine(*hooks: WorkerMetrics | None) -> WorkerMetrics | None:
    """Return one hook reporting to every hook given (``None`` ones left out)."""
    given = [hook for hook in hooks if hook is not None]
    if not given:
        return None
    return given[0] if len(given) == 1 else _Both(given)


def serve_metrics(
    metrics: PrometheusMetrics, *, port: int, address: str = "127.0.0.1"
) -> tuple[Any, Any]:
    """Serve ``metrics`` at ``http://address:port/metrics`` from a daemon thread.

    Binds 127.0.0.1 by default: pass ``address="0.0.0.0"`` for a scraper on
    another machine. Port 0 picks a free port (read it from the returned
    server's ``server_port``).

    Returns:
        ``(server, thread)`` as ``prometheus_client.start_http_server`` returns
        them; ``server.shutdown()`` then ``server.server_close()`` stop serving.

    Raises:
        ConfigurationError: the port cannot be bound.

    """
    import prometheus_client

    try:
        server, thread = prometheus_client.start_http_server(
            port, addr=address, registry=metrics.registry
        )
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve metrics on {address}:{port}: {exc.strerror or exc}; "
            "choose another --metrics-port"
        ) from exc
    return server, thread
