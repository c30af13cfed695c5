"""What ``stepflow worker`` shows while it runs: a live display, or plain log lines.

On a terminal, :class:`Progress` draws a live panel (rich ``Live``) with the
steps per second, the runs by status and the errors, and log lines print above
it. When standard error is not a terminal (piped, or under a service manager),
the same figures are logged as one plain line every ``interval`` seconds,
between the worker's own log lines. Either way, :class:`Progress` is a
:class:`~stepflow.runtime.metrics.WorkerMetrics` hook of the worker.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Mapping

from rich.console import Console, Group
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

__all__ = ["Progress", "configure_logging"]

log = logging.getLogger("stepflow.cli")

_STATUS_ORDER = ("running", "cancelling", "parked", "failed", "completed", "cancelled")
_STATUS_STYLES = {
    "running": "cyan",
    "cancelling": "yellow",
    "parked": "magenta",
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
}
# The window steps per second are averaged over, in seconds.
_RATE_WINDOW = 10.0


def configure_logging(console: Console | None, level: int) -> None:
    """Send stepflow's log lines to standard error, through rich's console on a terminal.

    Args:
        console: The live display's console (log lines then print above the
            display), or ``None`` for plain lines (``time LEVEL message``).
        level: The lowest level shown.

    """
    handler: logging.Handler
    if console is not None:
        handler = RichHandler(console=console, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


class Progress:
    """A worker's running figures, drawn live on a terminal or logged as plain lines.

    Args:
        flows: The names of the flows served.
        live: Draw a live display (a terminal); else log a line per ``interval``.
        console: Where the live display draws (standard error).
        clock: Where time is read (``time.monotonic``).

    """

    def __init__(
        self,
        flows: list[str],
        *,
        live: bool,
        console: Console | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.flows = flows
        self.steps = 0
        self.errors = 0
        self.parked_runs = 0
        self.takeovers_seen = 0
        self.stale_writes = 0
        self.counts: dict[str, int] = {}
        self._clock = clock
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._samples.append((clock(), 0))
        self._live = (
            Live(get_renderable=self.render, console=console, refresh_per_second=4, transient=True)
            if live
            else None
        )

    # -- the display -------------------------------------------------------------

    def __enter__(self) -> Progress:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()

    def rate(self) -> float:
        """Return the steps per second over the last few seconds."""
        now = self._clock()
        samples = self._samples
        samples.append((now, self.steps))
        while len(samples) > 2 and now - samples[1][0] >= _RATE_WINDOW:
            samples.popleft()
        (then, before), _ = samples[0], samples[-1]
        return (self.steps - before) / (now - then) if now > then else 0.0

    def summary(self) -> str:
        """Return the figures as one plain line."""
        runs = ", ".join(f"{status} {count}" for status, count in self._statuses())
        return (
            f"progress: {self.steps} steps ({self.rate():.1f}/s); runs: {runs or 'none'}; "
            f"errors {self.errors}, parked {self.parked_runs}"
        )

    def render(self) -> Group:
        """Return the live display: steps, rate, runs by status, errors."""
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        table.add_row("serving", ", ".join(self.flows))
        table.add_row("steps", f"{self.steps}  ({self.rate():.1f}/s)")
        runs = Text()
        for status, count in self._statuses():
            runs.append(f"{status} {count}  ", style=_STATUS_STYLES.get(status, ""))
        table.add_row("runs", runs if runs else Text("none counted yet", style="dim"))
        errors = Text(f"{self.errors} handler errors", style="red" if self.errors else "")
        errors.append(f", {self.parked_runs} parked", style="magenta" if self.parked_runs else "")
        errors.append(f", {self.stale_writes} stale writes, {self.takeovers_seen} takeovers")
        table.add_row("errors", errors)
        return Group(table, Text("Ctrl-C stops gracefully", style="dim"))

    def _statuses(self) -> list[tuple[str, int]]:
        return [(s, self.counts[s]) for s in _STATUS_ORDER if self.counts.get(s)]

    # -- the WorkerMetrics hook -----------------------------------------------------

    def step(self, flow: str, kind: str, outcome: str, seconds: float) -> None:
        """Count a step (and a handler error)."""
        self.steps += 1
        if outcome == "raised":
            self.errors += 1

    def claimed(self, runs: int, lag: float) -> None:
        """Ignore claims: the display shows steps."""

    def takeovers(self, runs: int) -> None:
        """Count lease takeovers."""
        self.takeovers_seen += runs

    def stale(self) -> None:
        """Count a stale write."""
        self.stale_writes += 1

    def commit(self, saves: int) -> None:
        """Ignore commits: the display shows steps."""

    def parked(self, flow: str) -> None:
        """Count a parked run."""
        self.parked_runs += 1

    def runs(self, counts: Mapping[tuple[str, str], int]) -> None:
        """Take the runs by status (all served flows together); log them when piped."""
        totals: dict[str, int] = {}
        for (_, status), count in counts.items():
            totals[status] = totals.get(status, 0) + count
        self.counts = totals
        if self._live is None:
            log.info("%s", self.summary())
