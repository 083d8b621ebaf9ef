"""Agents on model servers at their worst, after the headers of a streamed answer and in what they answer: the real
``openai`` client over HTTP against the fake server (``tests/fakes``)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from tests.fakes import DUMMY_KEY, FakeOpenAI, Reply, SleepRecorder
from workflows import Workflow, agent_step
from workflows.agent import Agent, AgentDone
from workflows.errors import ModelError
from workflows.memory import Memory
from workflows.model_types import ToolCallDone
from workflows.models import OpenAIChatModel, forget_capabilities
from workflows.run_view import load_run_view
from workflows.step import RetryPolicy
from workflows.tools import tool

ANSWER = "The cheapest option is a db.t3.medium instance at 60 dollars a month."


@pytest.fixture
async def model(fake_openai: FakeOpenAI) -> AsyncIterator[OpenAIChatModel]:
    forget_capabilities()
    made = OpenAIChatModel("gpt-test", api_key=DUMMY_KEY, base_url=fake_openai.base_url, timeout=0.5,
                           retry=RetryPolicy(attempts=3, backoff=0.001, max_backoff=0.01), sleep=SleepRecorder())
    yield made
    await made.aclose()
    forget_capabilities()


async def streamed(agent: Agent, prompt: str, **kwargs: object) -> AgentDone:
    last = None
    async for event in agent.stream(prompt, **kwargs):  # type: ignore[arg-type]
        last = event
    assert isinstance(last, AgentDone)
    return last


@pytest.mark.parametrize("fault", [("stall", 3.0), ("drop", 0), ("eof", 0)],
                         ids=["first-chunk-late", "dropped-before-any", "ended-before-any"])
async def test_a_stream_that_fails_before_its_first_chunk_is_retried_like_any_call(
    fake_openai: FakeOpenAI, model: OpenAIChatModel, fault: tuple[str, float]
) -> None:
    # The server sends its headers at once; the first token is late (a queued request), the connection drops, or
    # the body ends cleanly (a proxy or a worker shutting down). Nothing was shown yet: an outage like any other,
    # retried.
    fake_openai.reply(Reply.text(ANSWER).broken(*fault), Reply.text(ANSWER))

    done = await streamed(Agent("a", "be brief", model=model), "cheapest db?")

    assert done.result.text == ANSWER and len(fake_openai.chat_requests) == 2


def error_event(message: str, kind: str, code: int) -> Reply:
    """A streamed answer that is only an error event, as proxies and servers that sent the 200 headers already
    report a failure (OpenRouter, vLLM)."""
    return Reply(chunks=[{"error": {"message": message, "type": kind, "code": code}}])


async def test_an_overload_error_event_before_the_first_chunk_is_retried_like_a_5xx(
    fake_openai: FakeOpenAI, model: OpenAIChatModel
) -> None:
    # Nothing was shown yet, and the event says it is the 503 THREADFLOW_MODEL_MAX_ATTEMPTS promises to retry.
    fake_openai.reply(error_event("The server is overloaded, try again", "server_error", 503), Reply.text(ANSWER))

    done = await streamed(Agent("a", "be brief", model=model), "cheapest db?")

    assert done.result.text == ANSWER and len(fake_openai.chat_requests) == 2


async def test_a_request_error_event_is_not_retried(fake_openai: FakeOpenAI, model: OpenAIChatModel) -> None:
    fake_openai.reply(error_event("Unknown parameter 'foo'", "invalid_request_error", 400), Reply.text(ANSWER))

    with pytest.raises(ModelError, match="Unknown parameter 'foo'"):
        await streamed(Agent("a", "be brief", model=model), "cheapest db?")

    assert len(fake_openai.chat_requests) == 1


async def test_a_stream_that_breaks_after_its_first_chunk_is_not_retried(
    fake_openai: FakeOpenAI, model: OpenAIChatModel
) -> None:
    fake_openai.reply(Reply.text(ANSWER).broken("drop", 3), Reply.text(ANSWER))

    with pytest.raises(ModelError, match="stream broke after 3 chunk"):
        await streamed(Agent("a", "be brief", model=model), "cheapest db?")

    assert len(fake_openai.chat_requests) == 1  # a retry would repeat the text already shown


async def test_a_stream_cut_short_cleanly_is_an_error_not_the_answer(
    fake_openai: FakeOpenAI, model: OpenAIChatModel, memory: Memory
) -> None:
    # The body ends mid-answer without the finish and without [DONE] (a proxy closing the stream): the half answer
    # is not the answer, and the thread does not keep it as one.
    fake_openai.reply(Reply.text(ANSWER).broken("eof", 6))

    with pytest.raises(ModelError, match="cut short"):
        await streamed(Agent("a", "be brief", model=model, memory=memory), "cheapest db?", thread="t1")

    assert [m.role for m in await memory.thread("t1").history()] == []


REFUSAL = "I'm sorry, I can't help with that request."


def answered_whole(message: dict[str, object], finish_reason: str = "stop") -> Reply:
    """A chat completion (not streamed) whose message is ``message``."""
    return Reply(body={
        "id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "",
        "choices": [{"index": 0, "finish_reason": finish_reason, "message": message}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


async def test_a_refusal_streamed_reads_the_same_as_one_not_streamed(
    fake_openai: FakeOpenAI, model: OpenAIChatModel, memory: Memory
) -> None:
    # OpenAI sends a model's refusal in `message.refusal` (content null) and, streamed, in `delta.refusal`. Both are
    # the answer: not an empty one ("(no answer)" in Slack, an empty assistant message kept in the thread).
    whole = answered_whole({"role": "assistant", "content": None, "refusal": REFUSAL})
    fake_openai.reply(whole, Reply.stream({"role": "assistant", "content": None, "refusal": ""},
                                          {"refusal": "I'm sorry, I can't "}, {"refusal": "help with that request."}))
    agent = Agent("a", "be brief", model=model, memory=memory)

    assert (await agent.generate("help me pick a lock", thread="t-whole")).text == REFUSAL
    done = await streamed(agent, "help me pick a lock", thread="t-streamed")

    assert done.result.text == REFUSAL
    assert [m.content for m in await memory.thread("t-streamed").history()][-1] == REFUSAL


class Ask(BaseModel):
    question: str


async def test_a_server_that_echoes_the_key_leaves_it_in_no_traceback(engine, fake_openai: FakeOpenAI) -> None:
    # What some OpenAI-compatible proxies answer to a key they refuse: the key, repeated. The step's traceback is
    # stored with its failure and shown by the run inspector.
    forget_capabilities()
    fake_openai.reply_error(401, f"Incorrect API key provided: {DUMMY_KEY}")
    agent = Agent("analyst", "You estimate costs.", model="openai:gpt-test")
    wf = Workflow(id="leak", input=Ask).then(agent_step(agent, input=Ask, prompt="{question}", post_output=False))
    e = engine(wf.commit())
    try:
        result = await (await e.start("leak", {"question": "how much?"})).result(timeout=10)
    finally:
        await agent.aclose()

    assert result.status == "failed"
    [step] = (await load_run_view(e, result.run_id)).steps
    assert "Check OPENAI_API_KEY" in (step.error or "") and step.traceback
    assert DUMMY_KEY not in (step.error or "") + step.traceback + str(result.error)


def nameless_call() -> Reply:
    return Reply(body={
        "id": "chatcmpl-x", "object": "chat.completion", "created": 0, "model": "",
        "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": None,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


class City(BaseModel):
    city: str


@tool
async def lookup(args: City) -> str:
    """Look a city up."""
    return f"{args.city}: sunny"


@pytest.mark.parametrize("streaming", [False, True], ids=["answer", "stream"])
async def test_a_tool_call_without_a_name_goes_back_to_the_model_as_no_such_tool(
    fake_openai: FakeOpenAI, model: OpenAIChatModel, memory: Memory, streaming: bool
) -> None:
    # Some servers' tool-call parsers send a call without its function's name: neither a crash nor an empty answer
    # recorded as the reply; the model hears there is no such tool, and answers.
    fake_openai.reply(nameless_call() if not streaming else Reply.stream(
        {"role": "assistant"}, {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                                "function": {"arguments": "{}"}}]}), Reply.text(ANSWER))
    agent = Agent("a", "be brief", model=model, memory=memory, tools=[lookup])

    done = (await streamed(agent, "weather?", thread="t1")).result if streaming else await agent.generate(
        "weather?", thread="t1")

    assert done.text == ANSWER
    told = fake_openai.chat_requests[1]["messages"][-1]
    assert told["role"] == "tool" and "no tool" in told["content"].lower()
    assert [m.content for m in await memory.thread("t1").history() if m.role == "assistant"] == [ANSWER]


def call_without_id(city: str, *, streaming: bool) -> Reply:
    """A tool call from a server whose parser gives no call id (the agent numbers such calls itself)."""
    call = {"type": "function", "function": {"name": "lookup", "arguments": json.dumps({"city": city})}}
    if streaming:
        return Reply.stream({"role": "assistant"}, {"tool_calls": [{"index": 0, **call}]})
    return answered_whole({"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls")


@pytest.mark.parametrize("streaming", [False, True], ids=["answer", "stream"])
async def test_tool_calls_without_ids_in_two_model_calls_each_get_an_id_of_their_own(
    fake_openai: FakeOpenAI, model: OpenAIChatModel, streaming: bool
) -> None:
    # Oslo first, then (having read the result) Bergen: each call's result goes back to the model under its own id,
    # and each is a tool call of its own to whoever watches the stream (a Slack task card each).
    fake_openai.reply(call_without_id("Oslo", streaming=streaming), call_without_id("Bergen", streaming=streaming),
                      Reply.text(ANSWER))
    agent = Agent("a", "be brief", model=model, tools=[lookup])

    if streaming:
        events = [e async for e in agent.stream("weather in Oslo, then Bergen?")]
        done = events[-1].result  # type: ignore[union-attr]
        shown = [e.call.id for e in events if isinstance(e, ToolCallDone)]
        assert shown == [c.id for c in done.tool_calls]
    else:
        done = await agent.generate("weather in Oslo, then Bergen?")

    ids = [c.id for c in done.tool_calls]
    assert len(set(ids)) == 2 and all(ids)
    told = [m["tool_call_id"] for m in fake_openai.chat_requests[2]["messages"] if m["role"] == "tool"]
    assert told == ids


@pytest.mark.parametrize("thread_id", ["th", None], ids=["slack-thread", "run-thread"])
async def test_an_agent_step_that_runs_again_leaves_its_turn_in_the_thread_once(
    engine, fake_openai: FakeOpenAI, thread_id: str | None
) -> None:
    # The answer is saved in the thread, then the attempt fails (here its summary outlasts the step's timeout; a
    # process dying before the step's result is committed is the same): the next attempt's turn replaces it.
    forget_capabilities()
    fake_openai.reply(
        Reply.text("Use Postgres."),  # attempt 1: the answer, saved in the thread at once
        Reply(body=Reply.text("A summary.").body, delay=5.0),  # attempt 1: the summary, slower than the timeout
        Reply.text("Use PostgreSQL 16."),  # attempt 2
        Reply.text("A summary."),
    )
    agent = Agent("analyst", "You pick databases.", model="openai:gpt-test")
    wf = (Workflow(id="twice", input=Ask, step_timeout=1.0, retry=RetryPolicy(attempts=2, backoff=0.01))
          .then(agent_step(agent, input=Ask, prompt="{question}", post_output=False)).commit())
    e = engine(wf)
    e.memory = Memory(e.db, last_messages=1, summarize_after_tokens=1)
    try:
        handle = await e.start("twice", {"question": "Which database?"}, thread_id=thread_id, resource_id="r")
        result = await handle.result(timeout=20)
    finally:
        await agent.aclose()

    assert result.status == "success", result.error
    said = [(m.role, m.content) for m in await e.memory.thread(thread_id or f"run:{result.run_id}").history(50)]
    assert said == [("user", "Which database?"), ("assistant", "Use PostgreSQL 16.")]
