"""Documents a store keeps beside a run's state: JSON text of a bounded size."""

from __future__ import annotations

import json
from typing import Any

from stepflow.errors import StepflowError

__all__ = ["dump_limited"]


def dump_limited(
    value: Any, *, limit: int, what: str, advice: str, error: type[StepflowError]
) -> str:
    """Return ``value`` as compact JSON text of at most ``limit`` UTF-8 bytes.

    ``what`` names the document in messages (``"a progress report"``); ``advice``
    says what to send instead of a document too large.

    Raises:
        StepflowError: (of type ``error``) ``value`` is not JSON data, holds NaN
            or an infinity, or a lone surrogate, or takes more than ``limit``.

    """
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise error(
            f"{what} must be JSON data (dict, list, str, int, finite float, bool, None); "
            f"got {value!r:.80} ({exc})"
        ) from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise error(f"{what} holds a lone surrogate, which is not UTF-8 text") from None
    if size > limit:
        raise error(f"{what} takes {size} bytes of JSON, more than the {limit} allowed: {advice}")
    return text
