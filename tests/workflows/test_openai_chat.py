"""The chat model against servers that refuse things: fallbacks, dropped parameters, learned once per process."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.fakes import DUMMY_KEY, FakeOpenAI, Reply, SleepRecorder
from workflows.errors import ModelError
from workflows.models import CallOptions, OpenAIChatModel, forget_capabilities
from workflows.step import RetryPolicy

SCHEMA = {"title": "Verdict", "type": "object", "properties": {"approved": {"type": "boolean"}},
          "required": ["approved"]}
WEATHER = {"type": "function", "function": {"name": "get_weather", "strict": True, "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
ASK = [{"role": "system", "content": "Review."}, {"role": "user", "content": "approve?"}]


@pytest.fixture(autouse=True)
def fresh_capabilities() -> None:
    forget_capabilities()


def chat_model(fake: FakeOpenAI, sleeps: SleepRecorder | None = None, **kwargs: Any) -> OpenAIChatModel:
    return OpenAIChatModel("m", api_key=DUMMY_KEY, base_url=fake.base_url,
                           retry=RetryPolicy(attempts=3, backoff=0.001), sleep=sleeps or SleepRecorder(), **kwargs)


@pytest.fixture
async def models() -> AsyncIterator[list[OpenAIChatModel]]:
    made: list[OpenAIChatModel] = []
    yield made
    for m in made:
        await m.aclose()


def formats(fake: FakeOpenAI) -> list[str | None]:
    return [(r.get("response_format") or {}).get("type") for r in fake.chat_requests]


async def test_json_schema_refused_falls_back_to_json_object_with_the_schema_in_the_instructions(
    models: list[OpenAIChatModel],
) -> None:
    async with FakeOpenAI() as fake:
        fake.reply_error(400, "json_schema is not supported by this server")
        fake.reply_json({"approved": True})
        fake.reply_json({"approved": False})
        first, second = chat_model(fake), chat_model(fake)  # two agents' models on one server
        models += [first, second]
        response = await first.complete(ASK, [], SCHEMA)
        again = await second.complete(ASK, [], SCHEMA)
    assert formats(fake) == ["json_schema", "json_object", "json_object"]
    assert (response.output_mode, json.loads(response.text or "")) == ("json_object", {"approved": True})
    system = fake.chat_requests[1]["messages"][0]["content"]
    assert system.startswith("Review.\n\nAnswer with only a JSON object") and '"approved"' in system
    assert response.output_instructions is not None and response.output_instructions in system
    assert fake.chat_requests[1]["messages"][1:] == ASK[1:]  # only the system message gained the schema
    assert again.output_mode == "json_object"
    assert ASK[0]["content"] == "Review."  # the caller's messages are not changed


async def test_a_server_refusing_every_json_mode_is_asked_in_plain_text(models: list[OpenAIChatModel]) -> None:
    async with FakeOpenAI() as fake:
        fake.reply_error(400, "json_schema is not supported by this server")
        fake.reply(Reply(status=400, body={"error": "'response_format.type' must be 'json_schema' or 'text'"}))
        fake.reply_text('Here you go:\n```json\n{"approved": true}\n```')
        model = chat_model(fake)
        models.append(model)
        response = await model.complete(ASK, [], SCHEMA)
    assert formats(fake) == ["json_schema", "json_object", None]
    assert response.output_mode == "text" and "```json" in (response.text or "")


async def test_a_refusal_sent_as_http_500_is_not_retried_as_an_outage(models: list[OpenAIChatModel]) -> None:
    sleeps = SleepRecorder()
    async with FakeOpenAI(profile="llamacpp") as fake:
        model = chat_model(fake, sleeps, profile="llamacpp")
        models.append(model)
        response = await model.complete(ASK, [], SCHEMA)
    assert formats(fake) == ["json_schema", "json_object"] and sleeps.delays == []
    # The llamacpp profile puts the schema in json_object too: llama-server makes it a grammar.
    assert fake.chat_requests[1]["response_format"]["schema"] == SCHEMA
    assert json.loads(response.text or "")["approved"] is False


async def test_other_server_and_model_pairs_find_out_for_themselves(models: list[OpenAIChatModel]) -> None:
    async with FakeOpenAI(profile="llamacpp") as fake:
        model = chat_model(fake)
        other = OpenAIChatModel("other-model", api_key=DUMMY_KEY, base_url=fake.base_url)
        models += [model, other]
        await model.complete(ASK, [], SCHEMA)
        await other.complete(ASK, [], SCHEMA)
        await model.complete(ASK, [], SCHEMA)
    assert formats(fake) == ["json_schema", "json_object", "json_schema", "json_object", "json_object"]


async def test_optional_parameters_are_dropped_once_each_and_remembered(models: list[OpenAIChatModel]) -> None:
    options = CallOptions(tool_choice="required", parallel_tool_calls=False)
    async with FakeOpenAI(profile="generic") as fake:
        fake.reply_tool_calls(("get_weather", {"city": "Oslo"}))
        fake.reply_tool_calls(("get_weather", {"city": "Bergen"}))
        model = chat_model(fake)
        models.append(model)
        first = await model.complete(ASK, [WEATHER], None, options=options)
        second = await model.complete(ASK, [WEATHER], None, options=options)
    sent = [sorted(k for k in r if k in ("tool_choice", "parallel_tool_calls")) for r in fake.chat_requests]
    assert sent == [["parallel_tool_calls", "tool_choice"], ["tool_choice"], [], [], []]
    assert "strict" in fake.chat_requests[2]["tools"][0]["function"]  # refused on the third request...
    assert "strict" not in fake.chat_requests[3]["tools"][0]["function"]  # ...so dropped from then on
    assert "strict" not in fake.chat_requests[4]["tools"][0]["function"]
    assert [c.name for c in first.tool_calls] == [c.name for c in second.tool_calls] == ["get_weather"]
    assert len(fake.chat_requests) == 5  # three refusals, each retried once, then one request


async def test_vllm_refusing_a_required_tool_choice_is_asked_without_it(models: list[OpenAIChatModel]) -> None:
    async with FakeOpenAI(profile="vllm") as fake:
        model = chat_model(fake)
        models.append(model)
        await model.complete([{"role": "user", "content": "get_weather Oslo"}], [WEATHER], None,
                             options=CallOptions(tool_choice="required"))
        await model.complete([{"role": "user", "content": "get_weather Oslo"}], [WEATHER], None,
                             options=CallOptions(tool_choice="get_weather"))
    assert [r.get("tool_choice") for r in fake.chat_requests] == [
        "required", None, {"type": "function", "function": {"name": "get_weather"}}]


@pytest.mark.parametrize(("family", "said", "hint"), [
    ("vllm", "--enable-auto-tool-choice and --tool-call-parser to be set",
     "Start vLLM with --enable-auto-tool-choice and a --tool-call-parser"),
    ("llamacpp", "tools param requires --jinja flag", "Start llama-server with --jinja"),
    ("ollama", "registry.ollama.ai/library/m does not support tools", "`ollama show MODEL` lists 'tools'"),
])
async def test_tools_refused_altogether_is_one_clear_error_naming_the_server_setting(
    models: list[OpenAIChatModel], family: str, said: str, hint: str
) -> None:
    sleeps = SleepRecorder()
    async with FakeOpenAI(profile=family, tools=False) as fake:
        model = chat_model(fake, sleeps)
        models.append(model)
        with pytest.raises(ModelError) as caught:
            await model.complete([{"role": "user", "content": "weather?"}], [WEATHER], None)
    message = str(caught.value)
    assert message.startswith(f"The model server at {fake.base_url} refuses tools for model 'm': ")
    assert said in message and hint in message
    assert len(fake.chat_requests) == 1 and sleeps.delays == []


async def test_an_error_that_names_nothing_stays_an_error_and_points_at_the_profile(
    models: list[OpenAIChatModel],
) -> None:
    async with FakeOpenAI() as fake:
        fake.reply_error(400, "Bad Request")
        model = chat_model(fake)
        models.append(model)
        with pytest.raises(ModelError, match="HTTP 400: Bad Request. The request was rejected") as caught:
            await model.complete(ASK, [], SCHEMA)
    assert "set THREADFLOW_MODEL_PROFILE (openai, ollama, vllm, llamacpp, lmstudio, generic" in str(caught.value)
    assert formats(fake) == ["json_schema"]


async def test_profiles_decide_what_is_sent_before_anything_is_refused(models: list[OpenAIChatModel]) -> None:
    options = CallOptions(tool_choice="auto", parallel_tool_calls=True)
    async with FakeOpenAI(profile="openai") as fake:
        generic, ollama = chat_model(fake, profile="generic"), chat_model(fake, profile="ollama")
        models += [generic, ollama]
        await generic.complete(ASK, [WEATHER], SCHEMA, options=options)
        await ollama.complete(ASK, [WEATHER], SCHEMA, options=options)
    plain, with_schema = fake.chat_requests
    assert "response_format" not in plain and "tool_choice" not in plain and "parallel_tool_calls" not in plain
    assert "strict" not in plain["tools"][0]["function"] and "JSON schema" in plain["messages"][0]["content"]
    # Ollama: json_schema, and the schema in the instructions too (older Ollama ignores response_format).
    assert with_schema["response_format"]["type"] == "json_schema" and "JSON schema" in with_schema["messages"][0]["content"]
    assert "tool_choice" not in with_schema and "parallel_tool_calls" not in with_schema


async def test_concurrent_first_calls_probe_once(models: list[OpenAIChatModel]) -> None:
    async with FakeOpenAI(profile="llamacpp") as fake:
        model = chat_model(fake)
        models.append(model)
        await asyncio.gather(*(model.complete(ASK, [], SCHEMA) for _ in range(4)))
    assert formats(fake).count("json_schema") == 1 and len(fake.chat_requests) == 5
