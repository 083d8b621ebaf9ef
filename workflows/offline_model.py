"""The offline model: a deterministic stand-in for a real model, and the schema filler it uses.

No network and the same answer for the same input, so every example workflow runs end to end without
a key. It streams too: its answer word by word, a small delay apart (``stream_delay`` seconds, or
``THREADFLOW_OFFLINE_STREAM_DELAY``; 0 in tests), so a streaming UI can be tried offline.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from collections.abc import AsyncIterator
from typing import Any

from .errors import DefinitionError
from .model_types import (
    CallOptions,
    Message,
    ModelResponse,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDone,
    ToolSpec,
    Usage,
    estimate_tokens,
)

#: Seconds between the words of a streamed offline answer, unless ``THREADFLOW_OFFLINE_STREAM_DELAY`` says.
DEFAULT_STREAM_DELAY = 0.02

_STOP = set(
    "a an and are as at be but by do does for from has have how i in is it its me my no not of on or our "
    "so that the their them then there these they this to was we were what when where which who why will "
    "with you your can could should would please tell about".split()
)


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"\w+", text.lower()) if len(w) > 2 and w not in _STOP}


def _snippet(text: str, limit: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


class OfflineModel:
    """A deterministic stand-in for a real model: no network, same answer for the same input.

    It makes example workflows run end to end: structured output is a valid instance of the schema,
    tools named in the prompt get called, and text answers quote the most relevant earlier message so
    a chat visibly uses its thread memory.
    """

    name = "offline"

    def __init__(self, *, stream_delay: float | None = None) -> None:
        if stream_delay is None:
            stream_delay = float(os.environ.get("THREADFLOW_OFFLINE_STREAM_DELAY") or DEFAULT_STREAM_DELAY)
        self.stream_delay = max(0.0, stream_delay)

    async def stream(
        self,
        messages: list[Message],
        tools: list[ToolSpec],
        output_schema: dict[str, Any] | None,
        *,
        options: CallOptions | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """The same answer as :meth:`complete`, its text word by word ``stream_delay`` seconds apart."""
        response = await self.complete(messages, tools, output_schema)
        for i, word in enumerate(re.findall(r"\S+\s*", response.text or "")):
            if i and self.stream_delay:
                await asyncio.sleep(self.stream_delay)
            yield TextDelta(word)
        for call in response.tool_calls:
            yield ToolCallDone(call)
        yield ResponseDone(response)

    async def complete(
        self,
        messages: list[Message],
        tools: list[ToolSpec],
        output_schema: dict[str, Any] | None,
        *,
        options: CallOptions | None = None,
    ) -> ModelResponse:
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        prompt = str(messages[last_user].get("content") or "") if last_user >= 0 else ""
        since = messages[last_user + 1 :]
        tool_results = [m for m in since if m.get("role") == "tool"]
        response = ModelResponse(model=self.name)
        if tools and not tool_results:
            calls = [
                ToolCall(
                    id=f"offline_call_{i}",
                    name=spec["function"]["name"],
                    arguments=json.dumps(fill_schema(spec["function"].get("parameters") or {}, hint=prompt)),
                )
                for i, spec in enumerate(tools)
                if _mentions(prompt, spec["function"]["name"])
            ]
            if calls:
                response.tool_calls = calls
        if not response.tool_calls:
            if output_schema is not None:
                response.text = json.dumps(fill_schema(output_schema, hint=prompt))
            else:
                response.text = self._answer(
                    messages[:last_user] if last_user >= 0 else messages, prompt, tool_results
                )
        prompt_tokens = sum(estimate_tokens(str(m.get("content") or "")) for m in messages)
        completion = estimate_tokens(
            (response.text or "") + "".join(c.arguments for c in response.tool_calls)
        )
        response.usage = Usage(
            prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion
        )
        return response

    def _answer(self, earlier: list[Message], prompt: str, tool_results: list[Message]) -> str:
        parts = [
            f'(offline model) I am the offline model, so this is not a real answer to "{_snippet(prompt, 120)}".'
        ]
        if tool_results:
            parts.append(
                "Tool results: " + "; ".join(_snippet(str(m.get("content") or ""), 200) for m in tool_results)
            )
        best = self.most_relevant(earlier, prompt)
        if best is not None:
            parts.append(f'Earlier in this thread: "{_snippet(best)}"')
        return " ".join(parts)

    @staticmethod
    def most_relevant(earlier: list[Message], prompt: str) -> str | None:
        """The earlier message (or recalled line) sharing most words with the prompt, latest on ties."""
        candidates: list[str] = []
        seen_system = False
        for m in earlier:
            content = str(m.get("content") or "").strip()
            if m.get("role") == "system":
                if seen_system:  # context blocks after the instructions: one candidate per line
                    candidates += [ln.strip(" -") for ln in content.splitlines()[1:] if ln.strip(" -")]
                seen_system = True
            elif m.get("role") in ("user", "assistant") and content:
                candidates.append(content)
        if not candidates:
            return None
        wanted = _words(prompt)
        scored = [(len(wanted & _words(c)), i) for i, c in enumerate(candidates)]
        return candidates[max(scored)[1]]


def _mentions(prompt: str, tool_name: str) -> bool:
    lowered = prompt.lower()
    name = tool_name.lower()
    return re.search(rf"\b{re.escape(name)}\b", lowered) is not None or name.replace("_", " ") in lowered


def fill_schema(schema: dict[str, Any], *, hint: str = "", root: dict[str, Any] | None = None) -> Any:
    """A valid instance of a JSON schema, with strings derived from ``hint`` (the prompt)."""
    return _fill(schema, root if root is not None else schema, hint, "value", 0)


def _fill(schema: dict[str, Any], root: dict[str, Any], hint: str, name: str, depth: int) -> Any:
    if "$ref" in schema:
        target = _resolve_ref(root, schema["$ref"])
        return _fill(
            {**target, **{k: v for k, v in schema.items() if k != "$ref"}}, root, hint, name, depth + 1
        )
    if "default" in schema:
        return json.loads(json.dumps(schema["default"]))
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = schema[key]
            non_null = [o for o in options if o.get("type") != "null"]
            if depth > 8 and len(non_null) < len(options):
                return None  # cut recursive optional structures short
            return _fill(non_null[0] if non_null else options[0], root, hint, name, depth + 1)
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(_resolve_ref(root, part["$ref"]) if "$ref" in part else part)
        return _fill(merged, root, hint, name, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        props: dict[str, Any] = schema.get("properties", {})
        return {key: _fill(sub, root, hint, key, depth + 1) for key, sub in props.items()}
    if kind == "array":
        if "prefixItems" in schema:
            return [_fill(s, root, hint, name, depth + 1) for s in schema["prefixItems"]]
        count = max(int(schema.get("minItems", 0)), 1 if depth < 6 else 0)
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        item = schema.get("items") or {}
        values = [_fill(item, root, hint, name, depth + 1) for _ in range(count)]
        if schema.get("uniqueItems") and count > 1 and item.get("type") in ("integer", "number"):
            values = [v + i for i, v in enumerate(values)]
        return values
    if kind == "string":
        return _fill_string(schema, hint, name)
    if kind in ("integer", "number"):
        return _fill_number(schema, integer=kind == "integer")
    if kind == "boolean":
        return False
    return None


def _resolve_ref(root: dict[str, Any], ref: str) -> dict[str, Any]:
    if not ref.startswith("#"):
        raise DefinitionError(
            f"Schema reference {ref!r} is not local; only '#/...' references are supported."
        )
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/"):
        if part:
            node = node[part.replace("~1", "/").replace("~0", "~")]
    return dict(node)


_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00",
    "email": "offline@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "duration": "P1D",
    "ipv4": "127.0.0.1",
}


def _fill_string(schema: dict[str, Any], hint: str, name: str) -> str:
    if schema.get("format") in _FORMATS:
        return _FORMATS[schema["format"]]
    words = " ".join(hint.split())
    lowered = name.lower()
    if "email" in lowered:
        value = _FORMATS["email"]
    elif lowered.endswith(("url", "uri", "link")):
        value = _FORMATS["uri"]
    elif lowered in ("name", "title", "id", "slug", "label", "key") or lowered.endswith(("_name", "_id")):
        value = " ".join(words.split()[:5]) or "offline"
    else:
        value = f"(offline) {_snippet(words, 120)}" if words else "(offline)"
    max_len = schema.get("maxLength")
    if max_len is not None:
        value = value[: int(max_len)]
    return value.ljust(int(schema.get("minLength", 0)), ".")


def _fill_number(schema: dict[str, Any], *, integer: bool) -> int | float:
    """1 when allowed, else the first value inside the bounds (and a multiple of ``multipleOf``)."""
    lo, hi = schema.get("minimum"), schema.get("maximum")
    xlo, xhi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    low = lo if lo is not None else xlo
    high = hi if hi is not None else xhi

    def fits(v: float) -> bool:
        return (
            (lo is None or v >= lo)
            and (hi is None or v <= hi)
            and (xlo is None or v > xlo)
            and (xhi is None or v < xhi)
        )

    candidates: list[float] = [1, 0]
    if low is not None:
        candidates += [low, low + 1]
    if high is not None:
        candidates += [high, high - 1]
    if low is not None and high is not None:
        candidates.append((low + high) / 2)
    multiple = schema.get("multipleOf")
    for raw in candidates:
        for value in (math.ceil(raw), math.floor(raw)) if integer else (raw,):
            if multiple:
                value = math.ceil(value / multiple) * multiple
            if fits(value):
                return int(value) if integer else float(value)
    raise DefinitionError(f"The offline model cannot find a number within {schema}; check the bounds.")
