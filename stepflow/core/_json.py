"""Freeze and thaw JSON values for the state's outputs (pure)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pyrsistent import PMap, PVector, pmap, pvector

__all__ = ["NotJSON", "freeze_json", "thaw_json"]


# JSON has no integer limits, but its readers do: stepflow keeps 64-bit integers.
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


class NotJSON(TypeError):
    """Internal: a value is not JSON data; ``where`` is a ``$``-path to it."""

    def __init__(self, value: Any, where: str, what: str = "") -> None:
        what = what or f"{type(value).__name__} {value!r:.80}"
        super().__init__(f"{where} is {what}")
        self.where = where


def freeze_json(value: Any, where: str = "$") -> Any:
    """Return ``value`` as immutable JSON data (lists -> pvector, objects -> pmap).

    Raises:
        NotJSON: if any part is not a str-keyed object, array, str, int, finite
            float, bool or None.

    """
    if value is None or value is True or value is False:
        return value
    if type(value) is str:
        return value if value.isascii() else _text(value, where)
    if isinstance(value, int) and not isinstance(value, bool):
        if not _INT_MIN <= value <= _INT_MAX:
            raise NotJSON(value, where, "an integer beyond 64 bits")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise NotJSON(value, where, f"{value!r}, which JSON cannot represent")
        return float(value)
    if isinstance(value, str):
        return _text(str(value), where)
    if isinstance(value, (list, tuple, PVector)):
        return pvector(freeze_json(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, (dict, PMap, Mapping)):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise NotJSON(k, f"{where} key")
            out[_text(str(k), f"{where} key")] = freeze_json(v, f"{where}.{k}")
        return pmap(out)
    raise NotJSON(value, where)


def _text(value: str, where: str) -> str:
    # A lone surrogate is a Python str but not Unicode text: no JSON encoder writes it.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise NotJSON(
            value, where, "a string with a lone surrogate, which is not UTF-8 text"
        ) from None
    return value


def thaw_json(value: Any) -> Any:
    """Return frozen JSON data as plain ``dict``/``list`` values, for encoding."""
    if isinstance(value, PVector):
        return [thaw_json(v) for v in value]
    if isinstance(value, PMap):
        return {k: thaw_json(v) for k, v in value.items()}
    return value
