"""Clocks: where the shell reads the time the pure core is given.

The core never reads a clock; effects carry the time they were observed, and the
interpreter, drivers and worker read it from a :class:`Clock`. Production code
uses :class:`SystemClock`; tests inject a :class:`FakeClock` and skip time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "FakeClock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """A source of time: seconds since the Unix epoch, and a way to wait."""

    def now(self) -> float:
        """Return the current time, in seconds since the epoch."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (at least until :meth:`now` has moved on that much)."""
        ...


class SystemClock:
    """The wall clock (``time.time``) and ``asyncio.sleep``."""

    def now(self) -> float:
        """Return ``time.time()``."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """``await asyncio.sleep(seconds)``."""
        await asyncio.sleep(max(0.0, seconds))

    def __repr__(self) -> str:
        return "SystemClock()"


class FakeClock:
    """A virtual clock for tests: time moves only when told, or when someone sleeps.

    ``sleep`` moves the clock forward instead of waiting, so a run that polls
    every minute for a day, or sleeps a week, finishes instantly.

    >>> clock = FakeClock(1_000.0)
    >>> clock.advance(30)
    1030.0
    >>> clock.now()
    1030.0

    Args:
        start: The initial time (seconds since the epoch).

    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        """Return the virtual time."""
        return self._now

    def advance(self, seconds: float) -> float:
        """Move the clock ``seconds`` forward; return the new time."""
        if seconds < 0:
            raise ValueError(f"a clock only moves forward; got {seconds!r} seconds")
        self._now += seconds
        return self._now

    def set(self, when: float) -> None:
        """Move the clock to ``when`` (no earlier than now)."""
        self.advance(when - self._now)

    async def sleep(self, seconds: float) -> None:
        """Advance the clock by ``seconds`` and let other tasks run once."""
        if seconds > 0:
            self._now += seconds
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock({self._now!r})"
