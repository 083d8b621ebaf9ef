"""Structured output without trusting the server: instructions that carry the schema, and JSON extraction.

A server that enforces a JSON schema (``json_schema`` mode) needs nothing from here but validation. One
that only promises JSON (``json_object``), or nothing at all (plain text), is given the schema in the
system message, and its answer is searched for the JSON: the whole reply, a fenced block (```json), or
the first JSON object in prose. The agent validates the result against the pydantic model every time,
whatever the mode, because servers also ignore ``response_format`` without saying so.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .model_types import Message

_FENCED = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()


def output_instructions(schema: dict[str, Any]) -> str:
    """The instructions appended to the system message when the server does not enforce the schema."""
    return (
        "Answer with only a JSON object, no other text, that matches this JSON schema:\n"
        "```json\n" + json.dumps(schema, ensure_ascii=False, sort_keys=True) + "\n```"
    )


def with_instructions(messages: list[Message], instructions: str | None) -> list[Message]:
    """``messages`` with ``instructions`` appended to the first system message (one added if none).

    Appended to the existing system message, not sent as a new one: several chat templates (llama.cpp,
    Ollama) accept a single system message at the start only.
    """
    if not instructions:
        return messages
    out = [dict(m) for m in messages]
    for m in out:
        if m.get("role") == "system":
            m["content"] = f"{m.get('content') or ''}\n\n{instructions}".lstrip()
            return out
    return [{"role": "system", "content": instructions}, *out]


def extract_json(text: str) -> str | None:
    """The JSON value in ``text``: all of it, else a fenced block, else the first object or array in it.

    Returns the JSON text (not parsed), or None when nothing in ``text`` parses as JSON.
    """
    stripped = text.strip()
    if _parses(stripped):
        return stripped
    for block in _FENCED.findall(text):
        if _parses(block.strip()):
            return str(block).strip()
    for match in re.finditer(r"[{\[]", text):
        try:
            _, end = _DECODER.raw_decode(text, match.start())
        except ValueError:
            continue
        return text[match.start() : end]
    return None


def _parses(text: str) -> bool:
    if not text or text[0] not in "{[":
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def quote_reply(text: str | None, limit: int = 400) -> str:
    """A reply as it came back, for error messages: quoted, on one line, cut at ``limit`` characters."""
    if text is None:
        return "no text at all"
    one_line = " ".join(text.split())
    if not one_line:
        return "an empty reply"
    return repr(one_line if len(one_line) <= limit else one_line[: limit - 3] + "...")
