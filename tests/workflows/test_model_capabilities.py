"""Recognising what a server refused, from its own words, and the profiles that say where to start."""

from __future__ import annotations

import pytest

from bot.settings import SettingsError, load_settings
from tests.fakes import DUMMY_KEY
from workflows.errors import DefinitionError
from workflows.model_capabilities import (
    PROFILE_NAMES,
    PROFILES,
    classify_refusal,
    resolve_profile,
    tools_hint,
)
from workflows.models import OfflineModel, OpenAIChatModel, resolve_model

TOOLS = [{"type": "function", "function": {"name": "ping", "parameters": {"type": "object"}}}]
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "X", "schema": {}, "strict": False}}


@pytest.mark.parametrize(("status", "text", "request_", "kind", "detail"), [
    # vLLM without --enable-auto-tool-choice: tools refused altogether.
    (400, '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
     {"tools": TOOLS}, "tools", None),
    # llama.cpp without --jinja: a 500 that must not be retried as an outage.
    (500, "tools param requires --jinja flag", {"tools": TOOLS}, "tools", None),
    (400, "registry.ollama.ai/library/gemma3:4b does not support tools", {"tools": TOOLS}, "tools", None),
    (500, "Unsupported param: tool_choice", {"tools": TOOLS, "tool_choice": "required"}, "tool_choice", "required"),
    (400, '1 validation error for ChatCompletionRequest\n  Value error, `tool_choice` must either be a named tool, '
     '"auto", or "none".', {"tools": TOOLS, "tool_choice": "required"}, "tool_choice", "required"),
    (500, 'response_format type must be one of "text" or "json_object", but got: json_schema',
     {"response_format": JSON_SCHEMA}, "response_format", "json_schema"),
    (400, "'response_format.type' must be 'json_schema' or 'text'",
     {"response_format": {"type": "json_object"}}, "response_format", "json_object"),
    (400, "json_schema is not supported by this server", {"response_format": JSON_SCHEMA}, "response_format",
     "json_schema"),
    (400, "Unrecognized request argument supplied: parallel_tool_calls",
     {"tools": TOOLS, "parallel_tool_calls": False}, "param", "parallel_tool_calls"),
    (400, "Stream options can only be defined when `stream=True`.", {"stream": True, "stream_options": {}},
     "param", "stream_options"),
    (422, "body.response_format.json_schema.strict: Extra inputs are not permitted",
     {"response_format": JSON_SCHEMA}, "param", "strict"),
    (500, "Cannot use tools with stream", {"tools": TOOLS, "stream": True}, "stream", None),
    # Servers that name the tools field itself, or say they cannot call functions at all.
    (400, "Unrecognized request argument supplied: tools", {"tools": TOOLS}, "tools", None),
    (422, "body.tools: Extra inputs are not permitted", {"tools": TOOLS}, "tools", None),
    (422, "Extra inputs are not permitted: tools", {"tools": TOOLS}, "tools", None),
    (400, "This model does not support function calling", {"tools": TOOLS}, "tools", None),
    (400, "tool calling is not supported for this model", {"tools": TOOLS}, "tools", None),
])
def test_refusals_are_recognised_from_what_real_servers_say(
    status: int, text: str, request_: dict[str, object], kind: str, detail: str | None
) -> None:
    refusal = classify_refusal(status, text, request_)
    assert refusal is not None and refusal.kind == kind
    assert detail in (None, refusal.mode, refusal.param, refusal.value)


@pytest.mark.parametrize(("status", "text", "request_"), [
    (400, "Bad Request", {"response_format": JSON_SCHEMA, "tools": TOOLS}),  # names nothing
    (429, "Rate limit reached for json_schema requests", {"response_format": JSON_SCHEMA}),  # not a capability
    (401, "Incorrect API key for tools", {"tools": TOOLS}),
    (500, "CUDA out of memory", {"response_format": JSON_SCHEMA}),
    (400, "Unrecognized request argument supplied: parallel_tool_calls", {"tools": TOOLS}),  # we did not send it
])
def test_errors_that_name_nothing_we_sent_are_not_refusals(status: int, text: str, request_: dict[str, object]) -> None:
    assert classify_refusal(status, text, request_) is None


def test_the_hint_comes_from_the_server_s_words_then_from_the_profile() -> None:
    assert "--jinja" in tools_hint("tools param requires --jinja flag", PROFILES["openai"])
    assert "--enable-auto-tool-choice" in tools_hint("x", PROFILES["vllm"])
    assert "ollama show" in tools_hint("llama3 does not support tools", PROFILES["generic"])


def test_profiles_by_setting_argument_and_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(PROFILES) == set(PROFILE_NAMES) == {"openai", "ollama", "vllm", "llamacpp", "lmstudio", "generic"}
    assert resolve_profile().name == "openai"
    monkeypatch.setenv("THREADFLOW_MODEL_PROFILE", "LMStudio")
    assert resolve_profile().name == "lmstudio"
    assert resolve_profile("generic").name == "generic"
    model = resolve_model("openai:m", type("S", (), {"openai_api_key": DUMMY_KEY})())
    assert isinstance(model, OpenAIChatModel) and model.profile.name == "lmstudio"
    assert resolve_model("openai:m", type("S", (), {"openai_api_key": DUMMY_KEY, "model_profile": "vllm"})(),
                         ).profile.name == "vllm"  # type: ignore[attr-defined]
    monkeypatch.setenv("THREADFLOW_MODEL_PROFILE", "vlm")
    with pytest.raises(DefinitionError, match="Model profile 'vlm' is not known. Use one of openai, ollama, vllm"):
        resolve_model("offline")  # a typo is found before any server is configured
    monkeypatch.delenv("THREADFLOW_MODEL_PROFILE")
    assert isinstance(resolve_model("offline"), OfflineModel)


def test_the_setting_is_checked_in_one_line() -> None:
    assert load_settings(_env_file=None, THREADFLOW_MODEL_PROFILE=" Ollama ").model_profile == "ollama"
    with pytest.raises(SettingsError, match="Setting THREADFLOW_MODEL_PROFILE is invalid: .*must be one of openai"):
        load_settings(_env_file=None, THREADFLOW_MODEL_PROFILE="mistral")
