"""Decode JSON text fast: decoding annotations is most of the cost of reading a large export.

``orjson`` is several times faster than the standard library. It refuses the non-standard literals
``NaN`` and ``Infinity``, which Python's own encoder writes and some tools pass along; those texts are
decoded by the standard library instead, so both accept exactly the same inputs.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(text: str | bytes) -> Any:
    """The value of a JSON text; ``ValueError`` (``json.JSONDecodeError``) when it is not JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
