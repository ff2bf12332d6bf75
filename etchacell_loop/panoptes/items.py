"""What counts as a Panoptes id in an API answer, and how a bad value is named in one line.

Why strict: Panoptes sends ids as decimal strings, and the loop keeps them as 64-bit integers.
Python's ``int()`` would take far more (``7.9`` → 7, ``" 7 "``, ``"+7"``, ``"7_000"``, ``True``,
Arabic-Indic digits, a 5 000-digit string that raises) and the database would refuse an id past
2**63. A value is an id only if it is a positive integer that fits a BIGINT, given as an integer, an
integral float or a string of ASCII digits; anything else is reported, never guessed at.
"""

from __future__ import annotations

import math
import re
from typing import Any

MAX_ID = 2**63 - 1  # the largest BIGINT: where every Panoptes id is kept
_DIGITS = re.compile(r"[0-9]{1,40}")  # longer is no id; past 19 digits it is out of range
SHOWN_CHARS = 40  # how much of a bad value a reason quotes


class BadItem(ValueError):
    """An item of an API answer the loop cannot use; the message is the reason, on one line."""


def read_id(value: Any, name: str = "id") -> int:
    """``value`` as a Panoptes id, or :class:`BadItem` naming ``name`` and what it holds instead."""
    if value is None:
        raise BadItem(f"no {name}")
    number = _integer(value)
    if number is None:
        raise BadItem(f"{name} {shown(value)} is not an id")
    if not 1 <= number <= MAX_ID:
        raise BadItem(f"{name} {shown(value)} is out of range")
    return number


def id_or_none(value: Any) -> int | None:
    """``value`` as a Panoptes id, or ``None`` when it is not one (for callers that only look)."""
    try:
        return read_id(value)
    except BadItem:
        return None


def shown(value: Any) -> str:
    """A value as a reason quotes it: ASCII only (no NUL, no lone surrogate, no newline), short."""
    text = ascii(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    return None
