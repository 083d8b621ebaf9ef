"""Models: the OpenAI client against the fake server (retries, timeouts, errors) and the offline model."""

from __future__ import annotations

import json
import socket
from datetime import date, datetime
from enum import StrEnum
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from tests.fakes import DUMMY_KEY, FakeOpenAI, Reply, SleepRecorder
from workflows.errors import DefinitionError, ModelError
from workflows.models import (
    OfflineModel,
    OpenAIChatModel,
    OpenAIEmbedder,
    fill_schema,
    resolve_embedder,
    resolve_model,
)
from workflows.step import RetryPolicy

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


# -- OpenAI over HTTP ---------------------------------------------------------------------------------


async def test_chat_completion_sends_messages_tools_and_schema(
    openai_model: OpenAIChatModel, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply_text("Hello!")
    schema = {"title": "Answer", "type": "object", "properties": {"a": {"type": "string"}}}
    response = await openai_model.complete([{"role": "user", "content": "hi"}], [WEATHER_TOOL], schema)
    assert response.text == "Hello!" and response.model == "gpt-test"
    assert response.usage.total_tokens == 15
    (sent,) = fake_openai.chat_requests
    assert sent["model"] == "gpt-test" and sent["messages"] == [{"role": "user", "content": "hi"}]
    assert sent["tools"] == [WEATHER_TOOL]
    assert sent["response_format"]["type"] == "json_schema"
    assert sent["response_format"]["json_schema"]["name"] == "Answer"
    assert sent["response_format"]["json_schema"]["schema"] == schema


async def test_tool_calls_are_parsed(openai_model: OpenAIChatModel, fake_openai: FakeOpenAI) -> None:
    fake_openai.reply_tool_calls(("get_weather", {"city": "Oslo"}), ("get_weather", '{"city": "Bergen"}'))
    response = await openai_model.complete([{"role": "user", "content": "weather?"}], [WEATHER_TOOL], None)
    assert response.text is None
    assert [(c.name, json.loads(c.arguments)) for c in response.tool_calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_weather", {"city": "Bergen"}),
    ]
    assert len({c.id for c in response.tool_calls}) == 2


async def test_retries_429_and_500_then_succeeds_respecting_retry_after(
    openai_model: OpenAIChatModel, fake_openai: FakeOpenAI, sleeps: SleepRecorder
) -> None:
    fake_openai.reply_error(429, "Rate limit reached", retry_after=2)
    fake_openai.reply_error(500)
    fake_openai.reply_text("finally")
    response = await openai_model.complete([{"role": "user", "content": "hi"}], [], None)
    assert response.text == "finally"
    assert len(fake_openai.chat_requests) == 3
    assert sleeps.delays[0] == 2.0  # Retry-After, not our backoff
    assert 0 <= sleeps.delays[1] <= 0.01  # the fixture's max_backoff


async def test_gives_up_with_a_clear_model_error(
    openai_model: OpenAIChatModel, fake_openai: FakeOpenAI
) -> None:
    for _ in range(3):
        fake_openai.reply_error(503, f"overloaded, key {DUMMY_KEY}")
    with pytest.raises(ModelError) as caught:
        await openai_model.complete([{"role": "user", "content": "hi"}], [], None)
    message = str(caught.value)
    assert "failed after 3 attempt(s)" in message and "HTTP 503" in message
    assert "THREADFLOW_MODEL_MAX_ATTEMPTS" in message
    assert DUMMY_KEY not in message and "sk-test" not in message
    assert len(fake_openai.chat_requests) == 3


async def test_client_errors_are_not_retried(openai_model: OpenAIChatModel, fake_openai: FakeOpenAI) -> None:
    fake_openai.reply_error(401, "Incorrect API key provided: sk-test-not-a-real-key-0000")
    with pytest.raises(ModelError, match="Check OPENAI_API_KEY") as caught:
        await openai_model.complete([{"role": "user", "content": "hi"}], [], None)
    assert "sk-test" not in str(caught.value)
    assert len(fake_openai.chat_requests) == 1


async def test_timeouts_are_retried_then_reported(fake_openai: FakeOpenAI, sleeps: SleepRecorder) -> None:
    model = OpenAIChatModel(
        "gpt-test",
        api_key=DUMMY_KEY,
        base_url=fake_openai.base_url,
        timeout=0.2,
        retry=RetryPolicy(attempts=2, backoff=0.001),
        sleep=sleeps,
    )
    fake_openai.reply_slow(5.0)
    fake_openai.reply_slow(5.0)
    try:
        with pytest.raises(ModelError, match="timed out after 0.2s"):
            await model.complete([{"role": "user", "content": "hi"}], [], None)
    finally:
        await model.aclose()
    assert len(fake_openai.chat_requests) == 2 and len(sleeps.delays) == 1


async def test_slow_reply_within_timeout_succeeds(
    openai_model: OpenAIChatModel, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply_slow(0.05, Reply.text("late but fine"))
    assert (
        await openai_model.complete([{"role": "user", "content": "hi"}], [], None)
    ).text == "late but fine"


async def test_connection_refused_is_a_model_error() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    model = OpenAIChatModel(
        "gpt-test", api_key=DUMMY_KEY, base_url=f"http://127.0.0.1:{port}/v1", retry=RetryPolicy(attempts=1)
    )
    try:
        with pytest.raises(ModelError, match="could not connect"):
            await model.complete([{"role": "user", "content": "hi"}], [], None)
    finally:
        await model.aclose()


async def test_embeddings(openai_embedder: OpenAIEmbedder, fake_openai: FakeOpenAI) -> None:
    vectors = await openai_embedder.embed(["deploy staging", "deploy staging", "lunch menu"])
    assert len(vectors) == 3 and len(vectors[0]) == fake_openai.embedding_dim
    assert vectors[0] == vectors[1] != vectors[2]
    assert fake_openai.embedding_requests[0]["model"] == "embed-test"
    assert await openai_embedder.embed([]) == []


async def test_embedding_failures_are_model_errors(
    openai_embedder: OpenAIEmbedder, fake_openai: FakeOpenAI
) -> None:
    fake_openai.embedding_replies.extend([Reply.error(500)] * 3)
    with pytest.raises(ModelError, match="Embedder 'openai:embed-test' failed after 3"):
        await openai_embedder.embed(["x"])


# -- resolving ----------------------------------------------------------------------------------------


async def test_default_model_is_offline_without_a_key() -> None:
    assert isinstance(resolve_model(None), OfflineModel)
    assert isinstance(resolve_model("offline"), OfflineModel)


async def test_default_model_is_openai_with_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", DUMMY_KEY)
    model = resolve_model(None)
    assert isinstance(model, OpenAIChatModel) and model.name == "gpt-4o-mini"
    assert DUMMY_KEY not in repr(model)
    monkeypatch.setenv("THREADFLOW_MODEL", "offline")
    assert isinstance(resolve_model(None), OfflineModel)


async def test_settings_object_wins_over_the_environment() -> None:
    class Settings:
        model = "openai:gpt-4.1"
        openai_api_key = DUMMY_KEY
        openai_base_url = "http://127.0.0.1:1/v1"

    model = resolve_model(None, Settings())
    assert isinstance(model, OpenAIChatModel)
    assert (model.name, model.base_url) == ("gpt-4.1", "http://127.0.0.1:1/v1")


async def test_unknown_models_and_missing_keys_are_definition_errors() -> None:
    with pytest.raises(DefinitionError, match="Use 'openai:<model>'"):
        resolve_model("anthropic:claude")
    with pytest.raises(DefinitionError, match="set OPENAI_API_KEY"):
        resolve_model("openai:gpt-4o-mini")
    assert resolve_embedder(None) is None
    with pytest.raises(DefinitionError, match="Embedder 'nope'"):
        resolve_embedder("nope")


# -- offline ------------------------------------------------------------------------------------------


class Priority(StrEnum):
    low = "low"
    high = "high"


class Step(BaseModel):
    title: str
    done: bool


class Plan(BaseModel):
    summary: str
    priority: Priority
    steps: list[Step] = Field(min_length=2)
    owner_email: str
    confidence: float = Field(gt=0, lt=1)
    retries: int = Field(ge=3, le=5)
    due: date
    created: datetime
    note: str | None
    parent: Plan | None = None
    kind: Literal["plan", "task"]
    tags: dict[str, int] = {}
    code: str = Field(max_length=4)


async def test_offline_model_fills_a_schema_with_a_valid_instance() -> None:
    model = OfflineModel()
    response = await model.complete(
        [{"role": "user", "content": "Plan the database migration"}], [], Plan.model_json_schema()
    )
    plan = Plan.model_validate_json(response.text or "")
    assert plan.priority is Priority.low and len(plan.steps) == 2 and plan.kind == "plan"
    assert "database migration" in plan.summary
    assert 0 < plan.confidence < 1 and 3 <= plan.retries <= 5
    assert plan.parent is None


async def test_offline_model_is_deterministic() -> None:
    messages = [
        {"role": "system", "content": "Be helpful."},
        {"role": "user", "content": "our staging db is db-staging-01"},
        {"role": "assistant", "content": "Noted."},
        {"role": "user", "content": "which host is the staging db?"},
    ]
    first = await OfflineModel().complete(messages, [], None)
    second = await OfflineModel().complete(messages, [], None)
    assert first == second
    assert (first.text or "").startswith("(offline model)")
    assert 'Earlier in this thread: "our staging db is db-staging-01"' in (first.text or "")
    assert first.usage.total_tokens > 0


async def test_offline_model_calls_tools_named_in_the_prompt_once() -> None:
    model = OfflineModel()
    ask = [{"role": "user", "content": "Use get_weather for Oslo please"}]
    response = await model.complete(ask, [WEATHER_TOOL], None)
    (call,) = response.tool_calls
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)
    after = [
        *ask,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21C"},
    ]
    final = await model.complete(after, [WEATHER_TOOL], None)
    assert not final.tool_calls and "sunny, 21C" in (final.text or "")
    unrelated = await model.complete([{"role": "user", "content": "hello"}], [WEATHER_TOOL], None)
    assert not unrelated.tool_calls


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "integer", "exclusiveMinimum": 10, "multipleOf": 5},
        {"type": "number", "minimum": -3.5, "maximum": -1.25},
        {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 3},
        {"type": ["string", "null"], "minLength": 300},
        {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/X"}], "$defs": {"X": {"type": "boolean"}}},
        {
            "type": "object",
            "properties": {"a": {"const": 7}, "b": {"enum": ["x", "y"]}},
            "required": ["a", "b"],
        },
    ],
)
def test_fill_schema_edge_cases(schema: dict[str, object]) -> None:
    from pydantic import TypeAdapter

    value = fill_schema(schema, hint="a prompt")
    assert value is not None
    kind = schema.get("type")
    if kind == "integer":
        assert value == 15
    elif kind == "number":
        assert -3.5 <= value <= -1.25  # type: ignore[operator]
    elif kind == "array":
        assert len(value) == 3
    elif isinstance(kind, list):
        assert len(value) >= 300
    elif "anyOf" in schema:
        assert value is False
    else:
        assert value == {"a": 7, "b": "x"}
    TypeAdapter(object).validate_python(value)


async def test_the_network_guard_stops_calls_to_the_real_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL")
    model = OpenAIChatModel("gpt-4o-mini", api_key=DUMMY_KEY, retry=RetryPolicy(attempts=1))
    try:
        with pytest.raises(ModelError, match="could not connect to api.openai.com") as caught:
            await model.complete([{"role": "user", "content": "hi"}], [], None)
    finally:
        await model.aclose()
    chain: list[BaseException] = []
    exc: BaseException | None = caught.value
    while exc is not None and len(chain) < 10:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any("Tests must not reach the network" in str(e) for e in chain), chain
