"""How OpenAI-compatible servers differ, for the fake server: what each family refuses, and how it streams.

Each family refuses what its real counterpart refuses, with the same status, body shape and words
(taken from the servers' sources and their users' bug reports):

- ``openai``: accepts everything.
- ``vllm`` (started without ``--enable-auto-tool-choice``): ``tools`` with the default ``auto`` choice ->
  400 ``{"object": "error", "message": "\\"auto\\" tool choice requires --enable-auto-tool-choice and
  --tool-call-parser to be set", "type": "BadRequestError", ...}`` (no ``error`` key); ``tool_choice:
  "required"`` -> 400 (vLLM before 0.8.3). Streams a call's first argument piece with its name.
- ``ollama``: a model without tool support -> 400 ``{"error": {"message": "registry.ollama.ai/library/M
  does not support tools", ...}}``; ignores ``tool_choice``, ``parallel_tool_calls`` and ``strict``
  without a word; answers unconstrained JSON in a fenced block; streams each tool call whole.
- ``llamacpp`` (an older ``llama-server``): ``json_schema`` -> **500** ``response_format type must be one
  of "text" or "json_object", but got: json_schema``; ``json_object`` takes a ``schema``; without
  ``--jinja`` ``tools`` -> 500 ``tools param requires --jinja flag`` and ``tool_choice`` -> 500
  ``Unsupported param: tool_choice``; streams arguments a few characters at a time, with empty deltas.
- ``lmstudio``: ``json_object`` -> 400 ``{"error": "'response_format.type' must be 'json_schema' or
  'text'"}`` (a string, not an object); repeats the call id in every chunk.
- ``generic`` (a minimal proxy): any ``response_format``, ``stream_options``, ``parallel_tool_calls``,
  ``strict`` or ``tool_choice`` -> 400 "Unrecognized request argument supplied: X"; answers JSON in a
  fenced block inside prose; streams tool calls with no ``index``, the id only first, arguments cut
  mid-token, ``content: null`` deltas and an empty first chunk.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FAMILIES = ("openai", "ollama", "vllm", "llamacpp", "lmstudio", "generic")

Refusal = tuple[int, dict[str, Any] | str]


def _openai_error(message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _vllm_error(message: str) -> dict[str, Any]:
    return {"object": "error", "message": message, "type": "BadRequestError", "param": None, "code": 400}


def _llamacpp_error(message: str) -> dict[str, Any]:
    return {"error": {"code": 500, "message": message, "type": "server_error"}}


def _format(body: dict[str, Any]) -> str | None:
    response_format = body.get("response_format")
    return str(response_format.get("type")) if isinstance(response_format, dict) else None


def _has_strict(body: dict[str, Any]) -> bool:
    schema = (body.get("response_format") or {}).get("json_schema") or {}
    return "strict" in schema or any("strict" in (t.get("function") or {}) for t in body.get("tools") or [])


@dataclass(frozen=True)
class Family:
    name: str
    refuse: Callable[[dict[str, Any], bool], Refusal | None]
    #: How the model wraps JSON it was only asked for in words (what it accepted as JSON mode comes bare).
    json_habit: Callable[[str], str]
    #: A completion message -> the ``delta``s of its stream (text and tool-call pieces), in this family's way.
    deltas: Callable[[dict[str, Any]], list[dict[str, Any]]]
    usage_in_finish_chunk: bool = False


# -- refusals -------------------------------------------------------------------------------------------


def _refuse_vllm(body: dict[str, Any], tools_enabled: bool) -> Refusal | None:
    choice = body.get("tool_choice")
    if body.get("tools") and not tools_enabled and choice in (None, "auto"):
        return 400, _vllm_error(
            '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set')
    if choice == "required":
        return 400, _vllm_error(
            '1 validation error for ChatCompletionRequest\n  Value error, `tool_choice` must either be a named '
            'tool, "auto", or "none".')
    return None


def _refuse_ollama(body: dict[str, Any], tools_enabled: bool) -> Refusal | None:
    if body.get("tools") and not tools_enabled:
        return 400, _openai_error(f"registry.ollama.ai/library/{body.get('model')} does not support tools",
                                  "api_error")
    return None


def _refuse_llamacpp(body: dict[str, Any], tools_enabled: bool) -> Refusal | None:
    kind = _format(body)
    if kind not in (None, "text", "json_object"):
        return 500, _llamacpp_error(
            f'response_format type must be one of "text" or "json_object", but got: {kind}')
    if body.get("tools") and not tools_enabled:
        return 500, _llamacpp_error("tools param requires --jinja flag")
    if body.get("tool_choice") is not None and not tools_enabled:
        return 500, _llamacpp_error("Unsupported param: tool_choice")
    return None


def _refuse_lmstudio(body: dict[str, Any], tools_enabled: bool) -> Refusal | None:
    kind = _format(body)
    if kind not in (None, "text", "json_schema"):
        return 400, {"error": "'response_format.type' must be 'json_schema' or 'text'"}
    return None


def _refuse_generic(body: dict[str, Any], tools_enabled: bool) -> Refusal | None:
    for param in ("response_format", "stream_options", "parallel_tool_calls", "tool_choice"):
        if param in body:
            return 400, _openai_error(f"Unrecognized request argument supplied: {param}")
    if _has_strict(body):
        return 400, _openai_error("Unrecognized request argument supplied: strict")
    if body.get("tools") and not tools_enabled:
        return 400, _openai_error("Function calling is not enabled for this model.")
    return None


def _refuse_openai(body: dict[str, Any], tools_enabled: bool) -> Refusal | None:
    return None


# -- streaming shapes -----------------------------------------------------------------------------------


def _pieces(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _text_deltas(message: dict[str, Any], size: int) -> list[dict[str, Any]]:
    content = message.get("content")
    return [{"content": p} for p in _pieces(content, size)] if content else []


def _openai_deltas(message: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "assistant", "content": ""}, *_text_deltas(message, 4)]
    for i, call in enumerate(message.get("tool_calls") or []):
        fn = call["function"]
        out.append({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                    "function": {"name": fn["name"], "arguments": ""}}]})
        out += [{"tool_calls": [{"index": i, "function": {"arguments": p}}]} for p in _pieces(fn["arguments"], 5)]
    return out


def _vllm_deltas(message: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "assistant"}, *_text_deltas(message, 3)]
    for i, call in enumerate(message.get("tool_calls") or []):
        fn = call["function"]
        first, *rest = _pieces(fn["arguments"], 7)
        out.append({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                    "function": {"name": fn["name"], "arguments": first}}]})
        out += [{"tool_calls": [{"index": i, "function": {"arguments": p}}]} for p in rest]
    return out


def _ollama_deltas(message: dict[str, Any]) -> list[dict[str, Any]]:
    words = (message.get("content") or "").split(" ")
    out: list[dict[str, Any]] = [
        {"role": "assistant", "content": w + (" " if i < len(words) - 1 else "")} for i, w in enumerate(words) if w
    ]
    calls = message.get("tool_calls") or []
    if calls:
        out.append({"role": "assistant", "content": "", "tool_calls": [
            {"id": c["id"], "index": i, "type": "function", "function": c["function"]} for i, c in enumerate(calls)]})
    return out


def _llamacpp_deltas(message: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "assistant", "content": None}, {}, *_text_deltas(message, 2)]
    for i, call in enumerate(message.get("tool_calls") or []):
        fn = call["function"]
        out.append({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                    "function": {"name": fn["name"]}}]})
        for p in _pieces(fn["arguments"], 3):
            out += [{"tool_calls": [{"index": i, "function": {"arguments": p}}]}, {}]
    return out


def _lmstudio_deltas(message: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"role": "assistant"}, *_text_deltas(message, 6)]
    for i, call in enumerate(message.get("tool_calls") or []):
        fn = call["function"]
        out.append({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                    "function": {"name": fn["name"], "arguments": ""}}]})
        out += [{"tool_calls": [{"index": i, "id": call["id"], "type": "function", "function": {"arguments": p}}]}
                for p in _pieces(fn["arguments"], 4)]
    return out


def _generic_deltas(message: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"content": None}, *_text_deltas(message, 5)]
    for call in message.get("tool_calls") or []:
        fn = call["function"]
        args = fn["arguments"]
        cut = max(1, len(args) // 2 - 1)  # mid-token, wherever that falls
        out.append({"tool_calls": [{"id": call["id"], "type": "function", "function": {"name": fn["name"]}}]})
        out += [{"content": None}, {"tool_calls": [{"function": {"arguments": args[:cut]}}]},
                {"tool_calls": [{"function": {"arguments": ""}}]}, {"tool_calls": [{"function": {"arguments": args[cut:]}}]}]
    return out


# -- answers ----------------------------------------------------------------------------------------------


def _bare(text: str) -> str:
    return text


def _fenced(text: str) -> str:
    return f"```json\n{text}\n```"


def _fenced_in_prose(text: str) -> str:
    return f"Sure! Here is the JSON you asked for:\n\n```json\n{text}\n```\n\nLet me know if you need changes."


def json_mode(body: dict[str, Any]) -> bool:
    """Whether the (accepted) request asked for a JSON answer, which the server then constrains."""
    return _format(body) in ("json_schema", "json_object")


FAMILY: dict[str, Family] = {
    f.name: f
    for f in (
        Family("openai", _refuse_openai, _bare, _openai_deltas),
        Family("vllm", _refuse_vllm, _bare, _vllm_deltas),
        Family("ollama", _refuse_ollama, _fenced, _ollama_deltas),
        Family("llamacpp", _refuse_llamacpp, _fenced, _llamacpp_deltas, usage_in_finish_chunk=True),
        Family("lmstudio", _refuse_lmstudio, _fenced_in_prose, _lmstudio_deltas),
        Family("generic", _refuse_generic, _fenced_in_prose, _generic_deltas),
    )
}


def stream_chunks(family: Family, completion: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """A ``chat.completion`` body cut into ``chat.completion.chunk`` bodies the way ``family`` streams."""
    choice = completion["choices"][0]
    base = {"id": completion.get("id", "chatcmpl-fake"), "object": "chat.completion.chunk",
            "created": completion.get("created", 0), "model": completion.get("model", "")}
    chunks = [{**base, "choices": [{"index": 0, "delta": d, "finish_reason": None}]}
              for d in family.deltas(choice["message"])]
    finish: dict[str, Any] = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}]}
    if family.usage_in_finish_chunk:
        finish["usage"] = completion.get("usage")
    chunks.append(finish)
    if include_usage and not family.usage_in_finish_chunk:
        chunks.append({**base, "choices": [], "usage": completion.get("usage")})
    if family.name == "generic":
        chunks.insert(0, {**base, "choices": []})
    return chunks


def schema_from_request(body: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The JSON schema the request asks the answer to follow, and whether the server was given it to enforce.

    Read like a model would: ``response_format`` first, else the last fenced ```json block of the system
    messages (where the client puts the schema when the server does not enforce one).
    """
    response_format = body.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema"), True
    if response_format.get("type") == "json_object" and isinstance(response_format.get("schema"), dict):
        return response_format["schema"], True
    system = "\n".join(str(m.get("content") or "") for m in body.get("messages", []) if m.get("role") == "system")
    blocks = system.split("```json")
    if len(blocks) > 1:
        try:
            return json.loads(blocks[-1].split("```", 1)[0]), False
        except ValueError:
            return None, False
    return None, False
