"""Agents on model servers at their worst, after the headers of a streamed answer and in what they answer: the real
``openai`` client over HTTP against the fake server (``tests/fakes``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel

from tests.fakes import DUMMY_KEY, FakeOpenAI, Reply, SleepRecorder
from workflows import Workflow, agent_step
from workflows.agent import Agent, AgentDone
from workflows.errors import ModelError
from workflows.memory import Memory
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


@pytest.mark.parametrize("fault", [("stall", 3.0), ("drop", 0)], ids=["first-chunk-late", "dropped-before-any"])
async def test_a_stream_that_fails_before_its_first_chunk_is_retried_like_any_call(
    fake_openai: FakeOpenAI, model: OpenAIChatModel, fault: tuple[str, float]
) -> None:
    # The server sends its headers at once; the first token is late (a queued request) or the connection drops.
    # Nothing was shown yet: a timeout or a dropped connection like any other, retried.
    fake_openai.reply(Reply.text(ANSWER).broken(*fault), Reply.text(ANSWER))

    done = await streamed(Agent("a", "be brief", model=model), "cheapest db?")

    assert done.result.text == ANSWER and len(fake_openai.chat_requests) == 2


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
