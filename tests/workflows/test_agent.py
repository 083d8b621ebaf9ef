"""Agents: tool loops, structured output, shared thread memory and recorded contexts."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, Field

from storage import Database
from tests.fakes import FakeOpenAI, Reply
from workflows.agent import Agent
from workflows.errors import DefinitionError, ModelError, ToolFailed
from workflows.memory import Memory, WorkingMemory
from workflows.models import FunctionModel, Message, ModelResponse, OpenAIChatModel, ToolSpec
from workflows.tools import ToolContext, tool


class City(BaseModel):
    city: str = Field(description="City name, e.g. Oslo")


@tool
async def get_weather(args: City) -> dict[str, Any]:
    """Current weather for a city."""
    if args.city == "Atlantis":
        raise ToolFailed("Atlantis has no weather station")
    if args.city == "Crash":
        raise RuntimeError("sensor offline")
    return {"city": args.city, "sky": "sunny", "celsius": 21}


@tool(name="whoami", description="Tell which agent and thread are calling.")
async def context_tool(args: City, ctx: ToolContext) -> str:
    return f"{ctx.agent} in {ctx.thread.thread_id if ctx.thread else None} at {ctx.path}"


class Verdict(BaseModel):
    approved: bool
    reason: str


def tool_messages(request: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in request["messages"] if m["role"] == "tool"]


# -- tools --------------------------------------------------------------------------------------------


def test_tool_spec_comes_from_the_function_and_its_model() -> None:
    spec = get_weather.spec
    assert spec["type"] == "function"
    assert spec["function"]["name"] == "get_weather"
    assert spec["function"]["description"] == "Current weather for a city."
    assert spec["function"]["parameters"]["required"] == ["city"]
    assert context_tool.name == "whoami" and context_tool.wants_context


def test_bad_tool_definitions_are_rejected() -> None:
    with pytest.raises(DefinitionError, match="one pydantic model argument"):

        @tool
        async def no_model(city: str) -> str:
            return city

    with pytest.raises(DefinitionError, match="async def"):
        tool(lambda args: args)  # type: ignore[arg-type]


async def test_tool_errors_become_text_for_the_model() -> None:
    ctx = ToolContext(agent="a")
    assert json.loads(await get_weather.call('{"city": "Oslo"}', ctx))["sky"] == "sunny"
    assert (await get_weather.call("{}", ctx)).startswith("Error: invalid arguments for tool 'get_weather'")
    assert "field 'city'" in await get_weather.call('{"town": 1}', ctx)
    assert "Invalid JSON" in await get_weather.call("not json", ctx)
    assert await get_weather.call('{"city": "Atlantis"}', ctx) == (
        "Error: tool 'get_weather' failed: Atlantis has no weather station"
    )
    assert "RuntimeError: sensor offline" in await get_weather.call('{"city": "Crash"}', ctx)


# -- the tool loop over HTTP --------------------------------------------------------------------------


async def test_tool_loop_feeds_results_back(openai_model: OpenAIChatModel, fake_openai: FakeOpenAI) -> None:
    agent = Agent("forecaster", "You report the weather.", model=openai_model, tools=[get_weather])
    fake_openai.reply_tool_calls(("get_weather", {"city": "Oslo"}), ("get_weather", {"city": "Atlantis"}))
    fake_openai.reply_text("Oslo is sunny; Atlantis is unknown.")
    result = await agent.generate("Weather in Oslo and Atlantis?")
    assert result.text == "Oslo is sunny; Atlantis is unknown."
    assert [(c.name, c.error) for c in result.tool_calls] == [("get_weather", False), ("get_weather", True)]
    assert result.usage.total_tokens == 30
    first, second = fake_openai.chat_requests
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather"]
    assistant = second["messages"][-3]
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["get_weather", "get_weather"]
    oslo, atlantis = tool_messages(second)
    assert (
        oslo["tool_call_id"] == assistant["tool_calls"][0]["id"]
        and json.loads(oslo["content"])["celsius"] == 21
    )
    assert atlantis["content"].startswith("Error: tool 'get_weather' failed")


async def test_invalid_arguments_and_unknown_tools_go_back_to_the_model(
    openai_model: OpenAIChatModel, fake_openai: FakeOpenAI
) -> None:
    agent = Agent("forecaster", "You report the weather.", model=openai_model, tools=[get_weather])
    fake_openai.reply_tool_calls(("get_weather", '{"town": "Oslo"'), ("get_forecast", {}))
    fake_openai.reply_tool_calls(("get_weather", {"city": "Oslo"}))
    fake_openai.reply_text("Sunny in Oslo.")
    result = await agent.generate("Weather in Oslo?")
    assert result.text == "Sunny in Oslo."
    invalid, unknown = tool_messages(fake_openai.chat_requests[1])
    assert invalid["content"].startswith("Error: invalid arguments for tool 'get_weather'")
    assert unknown["content"] == "Error: there is no tool named 'get_forecast'. Available tools: get_weather."
    assert [c.error for c in result.tool_calls] == [True, True, False]


async def test_max_steps_stops_an_endless_tool_loop(
    openai_model: OpenAIChatModel, fake_openai: FakeOpenAI
) -> None:
    agent = Agent("looper", "Loop.", model=openai_model, tools=[get_weather], max_steps=3)
    fake_openai.handler = lambda request: Reply.tool_calls(("get_weather", {"city": "Oslo"}))
    with pytest.raises(ModelError, match="still calling tools after 3 model calls"):
        await agent.generate("forever")
    assert len(fake_openai.chat_requests) == 3


async def test_model_errors_propagate_after_retries(
    openai_model: OpenAIChatModel, fake_openai: FakeOpenAI
) -> None:
    for _ in range(3):
        fake_openai.reply_error(429, retry_after=0)
    with pytest.raises(ModelError, match="HTTP 429"):
        await Agent("a", "x", model=openai_model).generate("hi")


# -- structured output --------------------------------------------------------------------------------


async def test_structured_output_is_validated(openai_model: OpenAIChatModel, fake_openai: FakeOpenAI) -> None:
    fake_openai.reply_json({"approved": True, "reason": "tests pass"})
    result = await Agent("reviewer", "Review.", model=openai_model).generate("Review PR 12", output=Verdict)
    assert result.output == Verdict(approved=True, reason="tests pass")
    response_format = fake_openai.chat_requests[0]["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["schema"] == Verdict.model_json_schema()


async def test_invalid_structured_output_is_retried_once_with_the_error(
    openai_model: OpenAIChatModel, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply_json({"approved": "perhaps"})
    fake_openai.reply_text('```json\n{"approved": false, "reason": "missing tests"}\n```')
    result = await Agent("reviewer", "Review.", model=openai_model).generate("Review PR 12", output=Verdict)
    assert result.output == Verdict(approved=False, reason="missing tests")
    correction = fake_openai.chat_requests[1]["messages"][-1]
    assert correction["role"] == "user" and "field 'reason': Field required" in correction["content"]


async def test_structured_output_that_stays_invalid_is_a_model_error(
    openai_model: OpenAIChatModel, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply_text("I approve!")
    fake_openai.reply_text("Really, I approve!")
    with pytest.raises(ModelError, match="does not fit Verdict even after being shown the error"):
        await Agent("reviewer", "Review.", model=openai_model).generate("Review", output=Verdict)


# -- memory -------------------------------------------------------------------------------------------


async def test_two_agents_share_one_thread(
    memory: Memory, openai_model: OpenAIChatModel, fake_openai: FakeOpenAI
) -> None:
    researcher = Agent("researcher", "Find facts.", model=openai_model, memory=memory)
    writer = Agent("writer", "Write it up.", model=openai_model, memory=memory)
    fake_openai.reply_text("The outage started at 09:12 UTC.")
    fake_openai.reply_text("Incident report: outage from 09:12 UTC.")
    await researcher.generate("When did the outage start?", thread="T1", resource="U1", author="alice")
    result = await writer.generate("Write the incident report.", thread="T1", resource="U1", author="alice")
    sent = fake_openai.chat_requests[1]["messages"]
    assert {"role": "user", "content": "[alice] When did the outage start?"} in sent
    assert {"role": "assistant", "content": "[researcher] The outage started at 09:12 UTC."} in sent
    assert sent[-1] == {"role": "user", "content": "Write the incident report."}
    history = await memory.thread("T1").history(10)
    assert [(m.role, m.author) for m in history] == [
        ("user", "alice"),
        ("assistant", "researcher"),
        ("user", "alice"),
        ("assistant", "writer"),
    ]
    assert history[-1].content == result.text


async def test_recorded_context_is_exactly_what_the_model_saw(
    memory: Memory, openai_model: OpenAIChatModel, fake_openai: FakeOpenAI
) -> None:
    agent = Agent(
        "forecaster", "You report the weather.", model=openai_model, tools=[get_weather], memory=memory
    )
    fake_openai.reply_tool_calls(("get_weather", {"city": "Oslo"}))
    fake_openai.reply_text("Sunny.")
    await agent.generate("Weather in Oslo?", thread="T1", resource="U1", run_id="run-1", path="forecast/ask")
    (record,) = await memory.store.agent_contexts("run-1")
    assert (record.agent, record.path, record.thread_id) == ("forecaster", "forecast/ask", "T1")
    assert record.context["messages"] == fake_openai.chat_requests[0]["messages"]
    assert record.context["tools"] == ["get_weather"]
    assert record.answer is not None and record.answer["text"] == "Sunny."
    assert record.answer["tool_calls"][0]["name"] == "get_weather"
    assert record.usage == {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
    stored = await memory.thread("T1").history()
    assert [(m.run_id, m.path) for m in stored] == [("run-1", "forecast/ask")] * 2


async def test_failed_calls_are_recorded_too(
    memory: Memory, openai_model: OpenAIChatModel, fake_openai: FakeOpenAI
) -> None:
    fake_openai.reply_error(400, "bad request")
    with pytest.raises(ModelError):
        await Agent("a", "x", model=openai_model, memory=memory).generate("hi", thread="T1", run_id="run-2")
    (record,) = await memory.store.agent_contexts("run-2")
    assert record.answer is not None and "HTTP 400" in record.answer["error"]
    assert await memory.thread("T1").history() == []  # a failed turn is not part of the conversation


async def test_working_memory_is_updated_through_the_builtin_tool(
    memory_db: Database, openai_model: OpenAIChatModel, fake_openai: FakeOpenAI
) -> None:
    memory = Memory(memory_db, working_memory=WorkingMemory(template="- Name:\n- Team:\n"))
    agent = Agent("assistant", "Help.", model=openai_model, memory=memory)
    fake_openai.reply_tool_calls(("update_working_memory", {"content": "- Name: Ada\n- Team: payments\n"}))
    fake_openai.reply_text("Nice to meet you, Ada.")
    await agent.generate("I'm Ada from payments.", thread="T1", resource="U1")
    first = fake_openai.chat_requests[0]
    assert "update_working_memory" in [t["function"]["name"] for t in first["tools"]]
    assert "- Name:\n- Team:" in first["messages"][1]["content"]
    assert await memory.thread("T2", "U1").working_memory() == "- Name: Ada\n- Team: payments\n"
    fake_openai.reply_text("You are Ada.")
    await agent.generate("Who am I?", thread="T2", resource="U1")
    assert "- Name: Ada" in fake_openai.chat_requests[-1]["messages"][1]["content"]


async def test_a_thread_needs_memory(memory: Memory) -> None:
    with pytest.raises(DefinitionError, match="has no memory"):
        await Agent("a", "x", model="offline").generate("hi", thread="T1")
    with pytest.raises(DefinitionError, match="reserved for memory"):
        Agent(
            "a",
            "x",
            tools=[tool(name="update_working_memory")(get_weather.fn)],
            memory=Memory(memory.db, working_memory=WorkingMemory()),
        )


async def test_a_bound_thread_memory_can_be_passed_as_the_thread(memory: Memory) -> None:
    bound = memory.thread("T1", "U1", run_id="run-3", path="chat")
    agent = Agent("helper", "Help.", model="offline", tools=[context_tool])
    result = await agent.generate("call whoami", thread=bound)
    assert result.tool_calls[0].result == "helper in T1 at chat"
    assert [m.path for m in await bound.history()] == ["chat", "chat"]


# -- offline, end to end ------------------------------------------------------------------------------


async def test_offline_chat_reply_uses_thread_memory(memory: Memory) -> None:
    agent = Agent("helper", "Help the team.", model="offline", memory=memory)
    await memory.thread("T1", "U1").add("user", "The staging database host is db-staging-01.", author="bob")
    for text in ["lunch?", "printer fixed", "coffee empty", "sync on Thursday", "new hires Monday"]:
        await memory.thread("T1", "U1").add("user", text, author="carol")
    result = await agent.generate("What is the staging database host?", thread="T1", resource="U1")
    assert result.text.startswith("(offline model)")
    assert "Earlier in this thread:" in result.text and "db-staging-01" in result.text
    assert result.model == "offline" and result.usage.total_tokens > 0
    again = await Agent("helper", "Help the team.", model="offline").generate("same prompt")
    assert (
        again.text == (await Agent("helper", "Help the team.", model="offline").generate("same prompt")).text
    )


async def test_offline_agent_structured_output_and_tools(memory: Memory) -> None:
    agent = Agent("reviewer", "Review.", model="offline", tools=[get_weather], memory=memory)
    result = await agent.generate(
        "Check get_weather for Oslo, then give a verdict", output=Verdict, thread="T1"
    )
    assert isinstance(result.output, Verdict) and "verdict" in result.output.reason
    assert [c.name for c in result.tool_calls] == ["get_weather"]


async def test_function_model_scripts_a_conversation() -> None:
    seen: list[list[Message]] = []

    async def answer(
        messages: list[Message], tools: list[ToolSpec], schema: dict[str, Any] | None
    ) -> ModelResponse:
        seen.append(messages)
        return ModelResponse(text=f"echo: {messages[-1]['content']}", model="fn")

    result = await Agent("echo", "Echo.", model=FunctionModel(answer)).generate("ping")
    assert result.text == "echo: ping" and seen[0][0] == {"role": "system", "content": "Echo."}


# -- structured output on any server ----------------------------------------------------------------


async def test_invalid_answers_are_re_asked_up_to_the_bound_and_counted(
    openai_model: OpenAIChatModel, fake_openai: FakeOpenAI
) -> None:
    from workflows.observe import add_observer, remove_observer

    retries: list[dict[str, Any]] = []

    def observe(kind: str, data: dict[str, Any]) -> None:
        if kind == "llm.output_retry":
            retries.append(data)

    add_observer(observe)
    try:
        fake_openai.reply_text("I approve!")
        fake_openai.reply_json({"approved": "maybe"})
        fake_openai.reply_text('Fine:\n```json\n{"approved": true, "reason": "ok"}\n```\nBye.')
        agent = Agent("reviewer", "Review.", model=openai_model, output_retries=2)
        result = await agent.generate("Review PR 7", output=Verdict)
    finally:
        remove_observer(observe)
    assert result.output == Verdict(approved=True, reason="ok")
    assert result.text == '{"approved":true,"reason":"ok"}'  # the validated JSON, without the prose around it
    assert retries == [{"model": "gpt-test", "agent": "reviewer"}] * 2
    second, third = fake_openai.chat_requests[1:]
    assert "the reply contains no JSON object" in second["messages"][-1]["content"]
    assert "field 'approved': Input should be a valid boolean" in third["messages"][-1]["content"]


async def test_the_failure_quotes_what_came_back(openai_model: OpenAIChatModel, fake_openai: FakeOpenAI) -> None:
    fake_openai.reply_text("no")
    with pytest.raises(ModelError) as caught:
        await Agent("reviewer", "Review.", model=openai_model, output_retries=0).generate("Review", output=Verdict)
    assert str(caught.value).startswith(
        "Agent 'reviewer': the model's reply does not fit Verdict: the reply contains no JSON object. "
        "It answered: 'no'.")
    with pytest.raises(DefinitionError, match="output_retries must be between 0 and 5"):
        Agent("a", "x", output_retries=9)


async def test_a_structured_answer_is_remembered_as_its_json_and_the_record_says_how_it_was_asked(
    memory: Memory, fake_openai: FakeOpenAI
) -> None:
    from workflows.models import forget_capabilities

    forget_capabilities()
    agent = Agent("reviewer", "Review.", model="openai:gpt-test", memory=memory, profile="generic")
    fake_openai.reply_text('Sure.\n```json\n{"approved": false, "reason": "no tests"}\n```')
    await agent.generate("Review PR 9", output=Verdict, thread="T1", run_id="run-9")
    await agent.aclose()
    sent = fake_openai.chat_requests[0]
    assert "response_format" not in sent  # the generic profile asks in plain text
    (record,) = await memory.store.agent_contexts("run-9")
    assert record.context["output_mode"] == "text"
    assert record.context["output_instructions"] in sent["messages"][0]["content"]
    assert record.context["messages"][0] == {"role": "system", "content": "Review."}
    assert record.answer is not None and record.answer["text"].startswith("Sure.")  # what came back, as it came
    history = await memory.thread("T1").history()
    assert history[-1].content == '{"approved":false,"reason":"no tests"}'


# -- streaming ----------------------------------------------------------------------------------------


async def test_an_agent_streams_deltas_tool_calls_and_results_then_the_same_result(
    openai_model: OpenAIChatModel, fake_openai: FakeOpenAI
) -> None:
    from workflows.agent import AgentDone, ToolResult
    from workflows.models import TextDelta, ToolCallDone

    agent = Agent("forecaster", "You report the weather.", model=openai_model, tools=[get_weather])
    fake_openai.reply_tool_calls(("get_weather", {"city": "Oslo"}))
    fake_openai.reply_text("Sunny in Oslo, 21 degrees.")
    events = [e async for e in agent.stream("Weather in Oslo?")]
    kinds = [type(e).__name__ for e in events]
    assert kinds[:2] == ["ToolCallDone", "ToolResult"] and kinds[-1] == "AgentDone"
    assert set(kinds[2:-1]) == {"TextDelta"} and len(kinds[2:-1]) > 1
    call, ran, done = events[0], events[1], events[-1]
    assert isinstance(call, ToolCallDone) and isinstance(ran, ToolResult) and isinstance(done, AgentDone)
    assert json.loads(ran.record.result)["celsius"] == 21 and ran.record.id == call.call.id
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == done.result.text == "Sunny in Oslo, 21 degrees."
    assert all(r.get("stream") is True for r in fake_openai.chat_requests)
    assert fake_openai.chat_requests[0]["stream_options"] == {"include_usage": True}
    assert done.result.usage.total_tokens == 30


async def test_the_offline_agent_streams_word_by_word(memory: Memory) -> None:
    from workflows.agent import AgentDone, OutputRejected
    from workflows.models import OfflineModel, TextDelta

    agent = Agent("helper", "Help.", model=OfflineModel(stream_delay=0), memory=memory)
    events = [e async for e in agent.stream("What is threadflow?", thread="T1")]
    words = [e.text for e in events if isinstance(e, TextDelta)]
    done = events[-1]
    assert isinstance(done, AgentDone) and "".join(words) == done.result.text and len(words) > 5
    assert not any(isinstance(e, OutputRejected) for e in events)
    assert [m.role for m in await memory.thread("T1").history()] == ["user", "assistant"]


async def test_tool_choice_forces_the_first_call_only(openai_model: OpenAIChatModel, fake_openai: FakeOpenAI) -> None:
    agent = Agent("forecaster", "Weather.", model=openai_model, tools=[get_weather], tool_choice="get_weather",
                  parallel_tool_calls=False)
    fake_openai.reply_tool_calls(("get_weather", {"city": "Oslo"}))
    fake_openai.reply_text("Sunny.")
    await agent.generate("Oslo?")
    first, second = fake_openai.chat_requests
    assert first["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert "tool_choice" not in second  # forced once, then the model may answer
    assert first["parallel_tool_calls"] is second["parallel_tool_calls"] is False
    with pytest.raises(DefinitionError, match="tool_choice='get_forecast' is neither 'auto', 'required', 'none'"):
        Agent("a", "x", tools=[get_weather], tool_choice="get_forecast")
