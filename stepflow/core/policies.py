"""Failure and time rules of a definition: retry policies, catch rules, durations.

Pure data, part of a flow's fingerprint. A :class:`RetryPolicy` says how often
and how long to back off before a retry group restarts; a :class:`RetryRule`
binds it (and whether an ``on_error`` handler is asked) to a retry scope; a
:class:`CatchRule` says which errors a catch scope takes (see
:mod:`stepflow.core.scopes`). Errors are matched by their recorded type name
(:func:`matches_type`). Durations are given as seconds or ``timedelta``
(:func:`to_seconds`).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import Any

import attrs

from stepflow.errors import DefinitionError

__all__ = ["CatchRule", "RetryPolicy", "RetryRule", "matches_type", "to_seconds", "type_names"]


def to_seconds(value: object, what: str, path: str = "", *, allow_zero: bool = False) -> float:
    """Return ``value`` (a number, or anything with ``total_seconds()``) as seconds.

    Raises:
        DefinitionError: ``value`` is not a finite, positive duration (or zero,
            with ``allow_zero``); ``what`` names it in the message.

    """
    total = getattr(value, "total_seconds", None)
    seconds = total() if callable(total) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise DefinitionError(
            f"{what} must be a number of seconds or a timedelta, got {value!r}", path=path or what
        )
    seconds = float(seconds)
    if not math.isfinite(seconds) or seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise DefinitionError(
            f"{what} must be finite and {bound}, got {value!r}", path=path or what
        )
    return seconds


def type_names(types: Iterable[object], what: str = "non_retryable") -> tuple[str, ...]:
    """Return the recorded type names of ``types`` (exception classes or names), sorted.

    >>> type_names([KeyError, "myapp.Declined", "Fatal"])
    ('Fatal', 'KeyError', 'myapp.Declined')

    Raises:
        DefinitionError: an entry is neither an exception type nor a str; ``what``
            names the argument in the message.

    """
    names = []
    for t in types:
        if isinstance(t, str):
            names.append(t)
        elif isinstance(t, type) and issubclass(t, BaseException):
            module = t.__module__
            names.append(t.__qualname__ if module == "builtins" else f"{module}.{t.__qualname__}")
        else:
            raise DefinitionError(
                f"{what} takes exception types or their qualified names, got {t!r}",
                path=what,
            )
    return tuple(sorted(set(names)))


def matches_type(names: tuple[str, ...], error_type: str) -> bool:
    """Whether the recorded ``error_type`` is one of the type ``names``.

    A name with a dot matches exactly; a short one by class name, whatever the module.

    >>> [matches_type(("Fatal",), t) for t in ("__main__.Fatal", "a.NotFatal", "Fatal")]
    [True, False, True]
    """
    # The last dotted part holds no dot, so only a short entry can equal it.
    return error_type in names or error_type.rpartition(".")[2] in names


@attrs.frozen
class RetryPolicy:
    """A declarative retry policy: how often, and how long to back off between attempts.

    Pure data, part of the definition and its fingerprint. The delay before
    attempt ``n + 1`` (``n >= 1``) is ``initial_interval * backoff_coefficient **
    (n - 1)``, capped at ``max_interval``, then shortened by up to ``jitter`` (a
    fraction) by an amount derived from the run id, the retry scope and the
    attempt: deterministic, so replaying a run gives the same delays, yet spread
    across runs.

    >>> policy = RetryPolicy(max_attempts=5, initial_interval=1, jitter=0)
    >>> [policy.backoff(n, "run-1", "f/pushRetry") for n in (1, 2, 3)]
    [1.0, 2.0, 4.0]

    A short ``non_retryable`` name matches by class name, a dotted one exactly:

    >>> fatal = RetryPolicy(non_retryable=["Fatal", "myapp.errors.Declined"])
    >>> [fatal.allows(1, t) for t in ("__main__.Fatal", "Fatal", "myapp.FatalError")]
    [False, False, True]
    >>> [fatal.allows(1, t) for t in ("myapp.errors.Declined", "other.Declined")]
    [False, True]

    Attributes:
        max_attempts: Attempts in all, the first included (``None``: no limit).
            ``max_attempts=1`` never retries.
        initial_interval: Seconds before the second attempt.
        backoff_coefficient: Factor applied to the interval after each attempt.
        max_interval: Upper bound of the interval (``None``: 100 times the
            initial interval).
        jitter: Fraction (0 to 1) by which an interval may be shortened.
        non_retryable: Type names of errors that are never retried; exception
            types are accepted and converted to their qualified names. An error
            is recorded under its qualified type name (``"ValueError"`` for a
            builtin, ``"myapp.errors.Fatal"`` or ``"__main__.Fatal"`` otherwise).
            A name with a dot (``"myapp.errors.Fatal"``) matches that recorded
            name exactly; a name without one (``"Fatal"``) matches by class name,
            whatever the module: any recorded name whose last dotted part it is.

    """

    max_attempts: int | None = 3
    initial_interval: float = attrs.field(default=1.0, converter=float)
    backoff_coefficient: float = attrs.field(default=2.0, converter=float)
    max_interval: float | None = None
    jitter: float = attrs.field(default=0.2, converter=float)
    non_retryable: tuple[str, ...] = attrs.field(default=(), converter=type_names)

    def __attrs_post_init__(self) -> None:
        if self.max_attempts is not None and (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise DefinitionError(
                f"max_attempts must be an int >= 1 or None, got {self.max_attempts!r}",
                path="max_attempts",
            )
        to_seconds(self.initial_interval, "initial_interval", allow_zero=True)
        if self.max_interval is not None:
            object.__setattr__(
                self, "max_interval", to_seconds(self.max_interval, "max_interval", allow_zero=True)
            )
        if not (math.isfinite(self.backoff_coefficient) and self.backoff_coefficient >= 1):
            raise DefinitionError(
                f"backoff_coefficient must be >= 1, got {self.backoff_coefficient!r}",
                path="backoff_coefficient",
            )
        if not 0 <= self.jitter <= 1:
            raise DefinitionError(
                f"jitter must be a fraction between 0 and 1, got {self.jitter!r}", path="jitter"
            )

    def allows(self, attempt: int, error_type: str) -> bool:
        """Whether attempt ``attempt`` (1-based), failed with ``error_type``, is retried.

        ``error_type`` is the recorded (qualified) type name; see ``non_retryable``
        for how it is matched.
        """
        if self.non_retryable and matches_type(self.non_retryable, error_type):
            return False
        return self.max_attempts is None or attempt < self.max_attempts

    def backoff(self, attempt: int, run_id: str, scope: str) -> float:
        """Seconds to wait after attempt ``attempt`` (1-based) failed, jitter included."""
        cap = self.max_interval if self.max_interval is not None else 100 * self.initial_interval
        exponent = min(attempt - 1, 1024)
        try:
            base = min(self.initial_interval * self.backoff_coefficient**exponent, cap)
        except OverflowError:
            base = cap
        if not self.jitter or not base:
            return base
        digest = hashlib.blake2b(f"{run_id}|{scope}|{attempt}".encode(), digest_size=8).digest()
        fraction = int.from_bytes(digest, "big") / 2.0**64
        return base * (1.0 - self.jitter * fraction)

    def _canonical(self) -> list[Any]:
        return [
            self.max_attempts,
            self.initial_interval,
            self.backoff_coefficient,
            self.max_interval,
            self.jitter,
            list(self.non_retryable),
        ]


@attrs.frozen
class RetryRule:
    """How a retry scope handles failures: its policy, and whether it asks ``on_error``.

    Attributes:
        scope: The retry scope's path (``"deploy/v1/pushRetry"``).
        policy: The declarative policy, or ``None`` (unbounded, immediate, as in
            go-stepflow).
        on_error: Whether an ``on_error`` handler is bound and is asked before
            each restart.

    """

    scope: str
    policy: RetryPolicy | None = None
    on_error: bool = True


@attrs.frozen
class CatchRule:
    """Which errors a catch scope takes (see :mod:`stepflow.core.scopes`).

    Attributes:
        scope: The catch scope's path (``"deploy/v1/pushCatch"``).
        errors: Recorded type names it takes, matched as
            :attr:`RetryPolicy.non_retryable` is (a dotted name exactly, a short
            one by class name); ``None`` takes every error.

    """

    scope: str
    errors: tuple[str, ...] | None = None

    def takes(self, error_type: str) -> bool:
        """Whether this catch takes an error recorded as ``error_type``."""
        return self.errors is None or matches_type(self.errors, error_type)
