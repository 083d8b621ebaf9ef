"""Streamed answers: text deltas and finished tool calls as they arrive, however the server cuts the stream."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes import DUMMY_KEY, FAMILIES, FakeOpenAI, Reply
from workflows.errors import ModelError
from workflows.models import (
    FunctionModel,
    Message,
    ModelResponse,
    OfflineModel,
    OpenAIChatModel,
    ResponseDone,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDone,
    ToolSpec,
    forget_capabilities,
    stream_or_complete,
)
from workflows.step import RetryPolicy

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
#: Arguments with escapes and non-ASCII, so a cut can fall inside an escape sequence or a character.
ARGS = {"city": 'Tromsø "north"', "note": "a\\b\nc"}
ASK = [{"role": "user", "content": "weather?"}]


@pytest.fixture(autouse=True)
def fresh_capabilities() -> None:
    forget_capabilities()


@pytest.fixture
async def on() -> AsyncIterator[Any]:
    made: list[OpenAIChatModel] = []

    def model_on(fake: FakeOpenAI, **kwargs: Any) -> OpenAIChatModel:
        made.append(OpenAIChatModel("m", api_key=DUMMY_KEY, base_url=fake.base_url,
                                    retry=RetryPolicy(attempts=1), **kwargs))
        return made[-1]

    yield model_on
    for m in made:
        await m.aclose()


async def collect(events: AsyncIterator[StreamEvent]) -> tuple[list[StreamEvent], ModelResponse]:
    seen = [e async for e in events]
    assert isinstance(seen[-1], ResponseDone) and not any(isinstance(e, ResponseDone) for e in seen[:-1])
    return seen[:-1], seen[-1].response


@pytest.mark.parametrize("family", FAMILIES)
async def test_every_family_s_stream_assembles_to_the_same_answer(family: str, on: Any) -> None:
    async with FakeOpenAI(profile=family) as fake:
        fake.reply(Reply(body=Reply.tool_calls(("get_weather", ARGS), ("get_weather", {"city": "Oslo"})).body))
        fake.reply_text("It is sunny in Tromsø, 21°C.")
        model = on(fake)
        events, response = await collect(model.stream(ASK, [WEATHER], None))
        text_events, answer = await collect(model.stream(ASK, [WEATHER], None))
    calls = [e.call for e in events if isinstance(e, ToolCallDone)]
    assert [json.loads(c.arguments) for c in calls] == [ARGS, {"city": "Oslo"}]
    assert response.tool_calls == calls and len({c.id for c in calls}) == 2 and response.text is None
    assert all(c.name == "get_weather" for c in calls)
    deltas = [e.text for e in text_events if isinstance(e, TextDelta)]
    assert "".join(deltas) == answer.text == "It is sunny in Tromsø, 21°C." and len(deltas) > 1
    assert answer.usage.total_tokens > 0


async def test_odd_chunks_no_index_ids_first_only_names_repeated_objects_and_usage_last(on: Any) -> None:
    async with FakeOpenAI() as fake:
        fake.reply(Reply.stream(
            {}, {"content": None}, {"role": "assistant", "content": ""},
            {"content": "Checking "},
            {"tool_calls": [{"id": "call_a", "type": "function", "function": {"name": "get_weather"}}]},
            {"tool_calls": [{"function": {"name": "get_weather", "arguments": '{"ci'}}]},  # name repeated
            {"tool_calls": [{"function": {"arguments": 'ty": "Tromsø \\"n'}}]},  # cut inside an escape
            {"tool_calls": [{"function": {"arguments": ""}}]},
            {"tool_calls": [{"function": {"arguments": 'orth\\""}'}}]},
            {"tool_calls": [{"id": "call_b", "function": {"name": "get_", "arguments": {"city": "Oslo"}}}]},
            {"tool_calls": [{"id": "call_b", "function": {"name": "weather"}}]},  # a name split in two
            usage=(7, 3)))
        events, response = await collect(on(fake).stream(ASK, [WEATHER], None))
    assert [type(e).__name__ for e in events] == ["TextDelta", "ToolCallDone", "ToolCallDone"]
    assert response.tool_calls == [
        ToolCall(id="call_a", name="get_weather", arguments='{"city": "Tromsø \\"north\\""}'),
        ToolCall(id="call_b", name="get_weather", arguments='{"city": "Oslo"}'),
    ]
    assert response.text == "Checking " and response.usage.total_tokens == 10


async def test_interleaved_calls_are_completed_when_they_are_whole(on: Any) -> None:
    async with FakeOpenAI() as fake:
        fake.reply(Reply.stream(
            {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "get_weather", "arguments": '{"city"'}}]},
            {"tool_calls": [{"index": 1, "id": "b", "function": {"name": "get_weather", "arguments": '{"city"'}}]},
            {"tool_calls": [{"index": 0, "function": {"arguments": ': "Oslo"}'}}]},
            {"tool_calls": [{"index": 1, "function": {"arguments": ': "Bergen"}'}}]},
            {}))
        events, response = await collect(on(fake).stream(ASK, [WEATHER], None))
    done = [json.loads(e.call.arguments) for e in events if isinstance(e, ToolCallDone)]
    assert done == [{"city": "Oslo"}, {"city": "Bergen"}]
    assert [c.id for c in response.tool_calls] == ["a", "b"]


async def test_a_server_refusing_stream_options_streams_without_them_and_usage_is_estimated(on: Any) -> None:
    async with FakeOpenAI(profile="generic") as fake:
        model = on(fake)
        _, first = await collect(model.stream(ASK, [], None))
        _, second = await collect(model.stream(ASK, [], None))
    assert ["stream_options" in r for r in fake.chat_requests] == [True, False, False]
    assert first.text == second.text == "You asked: weather?"
    assert first.usage.completion_tokens > 0 and first.usage.prompt_tokens > 0


async def test_a_server_that_will_not_stream_with_tools_answers_without_streaming(on: Any) -> None:
    async with FakeOpenAI() as fake:
        fake.reply_error(500, "Cannot use tools with stream")
        fake.reply_tool_calls(("get_weather", {"city": "Oslo"}))
        fake.reply_tool_calls(("get_weather", {"city": "Bergen"}))
        model = on(fake)
        events, response = await collect(model.stream(ASK, [WEATHER], None))
        await collect(model.stream(ASK, [WEATHER], None))
    assert [bool(r.get("stream")) for r in fake.chat_requests] == [True, False, False]
    assert [type(e) for e in events] == [ToolCallDone] and response.tool_calls[0].name == "get_weather"


async def test_structured_output_streams_with_its_fallback_too(on: Any) -> None:
    schema = {"title": "V", "type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    async with FakeOpenAI(profile="lmstudio") as fake:
        _, response = await collect(on(fake, profile="lmstudio").stream(ASK, [], schema))
    assert response.output_mode == "json_schema" and json.loads(response.text or "") == {"ok": False}


async def test_a_stream_that_breaks_midway_is_a_model_error(on: Any) -> None:
    async with FakeOpenAI() as fake:
        fake.reply(Reply(chunks=[{"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "",
                                  "choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
                                 {"error": {"message": "model crashed", "type": "server_error"}}]))
        seen: list[StreamEvent] = []
        with pytest.raises(ModelError, match=r"the answer's stream broke after 1 chunk\(s\)"):
            async for event in on(fake).stream(ASK, [], None):
                seen.append(event)
    assert seen == [TextDelta("Hel")]


async def test_the_offline_model_streams_its_answer_word_by_word() -> None:
    model = OfflineModel(stream_delay=0)
    whole = await model.complete(ASK, [], None)
    events, response = await collect(model.stream(ASK, [], None))
    assert response == whole
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == whole.text
    assert len(events) == len((whole.text or "").split()) > 5
    assert OfflineModel().stream_delay == 0.02


async def test_models_that_cannot_stream_answer_in_one_delta() -> None:
    async def answer(messages: list[Message], tools: list[ToolSpec], schema: dict[str, Any] | None) -> ModelResponse:
        return ModelResponse(text="all at once", model="fn")

    class Plain:  # a model written before streaming existed: complete() only
        name = "plain"

        async def complete(self, messages: list[Message], tools: list[ToolSpec],
                           schema: dict[str, Any] | None) -> ModelResponse:
            return await answer(messages, tools, schema)

    for model in (FunctionModel(answer), Plain()):
        events, response = await collect(stream_or_complete(model, ASK, [], None))
        assert events == [TextDelta("all at once")] and response.text == "all at once"
