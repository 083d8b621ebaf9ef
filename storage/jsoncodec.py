"""JSON for the database's JSON columns: orjson where it can, the standard library where it cannot.

Every step writes JSON (its result, its events) and every read parses it; orjson does both about 3-5x
faster than ``json``, which the profile of a step showed as one of its largest parts. orjson is stricter
in a few corners, so anything it refuses (an integer beyond 64 bits, a ``NaN`` literal written by ``json``
in an older row, a type it does not know) goes through ``json`` as before, errors included; except that ``json``
writes no ``NaN`` or infinity (not JSON: PostgreSQL refuses it) but raises, as it does for a type it does not know.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

#: orjson's options for ``dumps`` (storage/prepared.py calls orjson with them directly on a step's hot path).
OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


def dumps(value: Any) -> str:
    """``json.dumps(value)``, faster; the text is compact (no spaces after separators) and UTF-8."""
    try:
        return orjson.dumps(value, option=OPTIONS).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError: let json say what it cannot store
        return json.dumps(value, allow_nan=False)  # (no literal NaN: see above)


def loads(text: str | bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
