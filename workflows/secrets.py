"""Masking secrets in text that is stored or shown: a library's error text may repeat a token or key it was given
(a proxy that refuses a key says which), and tracebacks and log lines carry such text on."""

from __future__ import annotations

import re

#: Slack tokens (bot, user, app, refresh, config) and OpenAI-style keys.
_SECRET = re.compile(r"\b(xox[abpre]|xapp|xoxe\.xox[bp])-[A-Za-z0-9-]{6,}|\bsk-[A-Za-z0-9_\-]{8,}")


def redact(text: str) -> str:
    """``text`` with every token or key in it cut to its kind (``xoxb-…``, ``sk-…``)."""
    return _SECRET.sub(lambda m: m.group(0)[:5] + "…" if not m.group(0).startswith("sk-") else "sk-…", text)
