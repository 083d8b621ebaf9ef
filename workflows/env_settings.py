"""Numbers read from the environment (``THREADFLOW_*``), checked where they are read: a typo is a
:class:`UsageError` naming the setting and what it wants, not a ``ValueError`` from ``int()`` in the middle of a run."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

from .errors import UsageError

N = TypeVar("N", int, float)


def number_setting(name: str, text: str | None, convert: Callable[[str], N], valid: Callable[[N], bool],
                   wants: str, why: str = "") -> N | None:
    """The setting ``name``: ``text`` if given, else the environment variable; None when blank (its default).

    ``convert`` parses it and ``valid`` checks it; either failing raises ``UsageError("NAME must be WANTS; got
    'TEXT'.WHY")``."""
    text = os.environ.get(name) if text is None else text
    if not text or not text.strip():
        return None
    text = text.strip()
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not valid(value):
        raise UsageError(f"{name} must be {wants}; got {text!r}.{why}")
    return value
