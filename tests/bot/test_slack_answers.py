"""Agents' answers in Slack (bot/answers.py): what a person typed reaches the model as they typed it, a long
answer is shown whole, or says where it was cut, each tool call is a task card of its own, a refusal reads as the
refusal, and an answer cut by a shutdown says so.

Slack sends a person's message with ``&``, ``<`` and ``>`` as ``&amp;``, ``&lt;`` and ``&gt;`` and mentions as
``<@U...>``; the bot escapes an answer before posting it. Text taken from Slack is converted once on the way in
(bot/slack/text.py), or the model reads entities and a quote of the person's words shows ``&lt;`` in Slack. The
model is the fake OpenAI server over HTTP (or the offline model, which quotes the question).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from bot.emulator import Message
from tests.bot.conftest import BOB, CHANNEL, RunningBot, StartBot, block_text, replies
from tests.bot.test_slack_streaming import (
    last_assistant_message,
    start_run,
    stopped_stream,
    stream_calls,
    task_updates,
)
from tests.fakes import DUMMY_KEY, FakeOpenAI, Reply
from tests.helpers.slack_limits import limit_refusals
from workflows.agent import known_agents

BOT_USER = "U0BOT"


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def llm_for_runs(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAI]:
    """The fake model for thread chat and for the runs' own agents (built with ``model=None``, they read the
    model settings from the environment); it answers what nobody scripted, like a small model."""
    async with FakeOpenAI(profile="openai") as fake:
        monkeypatch.setenv("THREADFLOW_MODEL", "openai:gpt-4o-mini")
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", DUMMY_KEY)
        try:
            yield fake
        finally:  # the built-in agents are module-level: close the clients they opened in this test's event loop
            for agent in known_agents():
                await agent.aclose()


async def llm_bot(start_bot: StartBot, fake: FakeOpenAI, **overrides: object) -> RunningBot:
    return await start_bot(THREADFLOW_MODEL="openai:gpt-4o-mini", OPENAI_BASE_URL=fake.base_url,
                           OPENAI_API_KEY=DUMMY_KEY, **overrides)


async def dm_answer(bot: RunningBot, text: str) -> Message:
    dm = bot.emu.state.im_channel(BOB).id
    asked = await bot.emu.post_as_user(text, user=BOB, channel=dm)
    assert asked.deliveries and all(d.status == 200 for d in asked.deliveries)  # a mention: message + app_mention
    found: list[Message] = await bot.emu.wait_for(
        lambda: [m for m in bot.emu.messages(dm) if m.user == BOT_USER and float(m.ts) > float(asked.ts)], timeout=10)
    await bot.idle()
    return found[0]


async def test_what_a_person_typed_reaches_the_model_unescaped(start_bot: StartBot, fake_llm: FakeOpenAI) -> None:
    bot = await llm_bot(start_bot, fake_llm)
    fake_llm.reply_text("Yes.")
    # The person typed: is 1 < 2 && 3 > 2?
    await dm_answer(bot, "is 1 &lt; 2 &amp;&amp; 3 &gt; 2?")
    sent = [m for m in fake_llm.chat_requests[-1]["messages"] if m["role"] == "user"]
    assert sent[-1]["content"] == "is 1 < 2 && 3 > 2?", sent[-1]["content"]


async def test_a_quote_of_what_a_person_typed_shows_their_characters(bot: RunningBot) -> None:
    """The offline model quotes the question; Slack must show ``1 < 2 && 3 > 2``, not ``1 &lt; 2 &amp;&amp; ...``."""
    answer = await dm_answer(bot, "is 1 &lt; 2 &amp;&amp; 3 &gt; 2?")
    shown = block_text(answer)
    assert "&amp;lt;" not in shown and "&amp;amp;" not in shown, shown
    assert "is 1 &lt; 2 &amp;&amp; 3 &gt; 2?" in shown  # as Slack displays "is 1 < 2 && 3 > 2?"


async def test_a_long_direct_message_answer_is_shown_whole(start_bot: StartBot, fake_llm: FakeOpenAI) -> None:
    """A direct message is answered in the conversation (no thread to stream into): the answer is posted
    whole. A 6,000-character answer (a longer code review, say) must be readable to its end in the blocks,
    which is what Slack shows when a message has blocks (``text`` is only the notification)."""
    bot = await llm_bot(start_bot, fake_llm)
    paragraphs = [f"Point {i}: " + "the deploy script should check the exit code of every command. " * 4
                  for i in range(25)]
    long_answer = "\n\n".join(paragraphs) + "\n\nTHE END."
    assert len(long_answer) > 6000
    fake_llm.reply_text(long_answer)
    answer = await dm_answer(bot, "review our deploy script please")
    shown = "\n".join(b["text"]["text"] if isinstance(b.get("text"), dict) else str(b.get("text") or "")
                      for b in answer.blocks or [])
    assert "Point 24:" in shown and "THE END." in shown, shown[-300:]
    assert limit_refusals(bot.emu) == []


async def test_a_person_mentioned_in_a_question_is_not_dropped_from_it(start_bot: StartBot,
                                                                       fake_llm: FakeOpenAI) -> None:
    """Only the bot's own mention is noise; ``<@U0ALICE>`` names whom the person means, and the model must see it."""
    bot = await llm_bot(start_bot, fake_llm)
    fake_llm.reply_text("Done.")
    await dm_answer(bot, f"<@{BOT_USER}> who should review this, <@U0ALICE> or <@U0CAROL>?")
    sent = [m for m in fake_llm.chat_requests[-1]["messages"] if m["role"] == "user"]
    assert sent[-1]["content"] == "who should review this, <@U0ALICE> or <@U0CAROL>?", sent[-1]["content"]


async def test_a_long_answer_posted_whole_where_slack_does_not_stream_says_it_was_cut(
        start_bot: StartBot, fake_llm: FakeOpenAI) -> None:
    """A workspace without streaming (``not_agent_app``): a thread answer is posted whole as one ``markdown``
    block, which Slack caps at 12,000 characters. A 15,000-character answer is cut there, and must say so: a silent
    cut reads as a whole answer."""
    bot = await llm_bot(start_bot, fake_llm, THREADFLOW_SLACK_STREAM_INTERVAL=0.05)
    bot.emu.streams.refuse("not_agent_app")
    long_answer = "".join(f"Step {i}: run the migration for shard {i} and check its row counts.\n" for i in range(250))
    long_answer += "THE END."
    assert len(long_answer) > 15_000
    fake_llm.reply_text(long_answer)
    asked = await bot.emu.post_as_user("<@U0BOT> how do we migrate the shards?", user=BOB)
    answer: Message = await bot.emu.wait_for(lambda: next(
        (m for m in bot.emu.thread(asked.message.channel, asked.message.ts) if m.user == BOT_USER), None), timeout=10)
    await bot.idle()
    answer = bot.emu.message(answer.ts, answer.channel) or answer
    shown = "\n".join(str(b.get("text") or "") for b in answer.blocks or [] if b.get("type") == "markdown")
    assert "THE END." not in shown
    assert shown.rstrip().endswith("more characters.)_"), shown[-200:]
    assert "The answer is cut here" in shown
    assert limit_refusals(bot.emu) == []


FLOWS = {"THREADFLOW_WORKFLOWS": "tests.helpers.agent_flows", "THREADFLOW_SLACK_STREAM_INTERVAL": 0.05}


async def finished_weather_run(start_bot: StartBot, fake: FakeOpenAI) -> tuple[RunningBot, Message]:
    """A bot whose ``weather`` run has finished; the run's root message (its thread is where people chat)."""
    bot = await llm_bot(start_bot, fake, **FLOWS)
    run_id, root = await start_run(bot, 'run weather question="Is it cold?"')
    assert await bot.settled(run_id, timeout=30) == "success"
    await bot.emu.wait_for(lambda: any("Run finished" in m.text for m in replies(bot.emu, root)), timeout=30)
    return bot, root


def call_without_id(name: str, arguments: str) -> dict[str, object]:
    # Servers whose parser gives no call id (the agent numbers such calls itself).
    return {"tool_calls": [{"index": 0, "type": "function", "function": {"name": name, "arguments": arguments}}]}


async def test_two_tool_calls_in_two_model_steps_show_as_two_task_cards(
        start_bot: StartBot, llm_for_runs: FakeOpenAI) -> None:
    bot, root = await finished_weather_run(start_bot, llm_for_runs)

    # The chat agent checks Oslo, then (having read the result) Bergen, then answers: two tools ran.
    llm_for_runs.reply(Reply.stream(call_without_id("get_weather", '{"city": "Oslo"}')),
                       Reply.stream(call_without_id("get_weather", '{"city": "Bergen"}')),
                       Reply.stream({"role": "assistant", "content": "Oslo and Bergen are both sunny."}))
    question = await bot.emu.post_as_user("Weather in Oslo, and if sunny, in Bergen?", thread_ts=root.ts)

    answer = await stopped_stream(bot.emu, CHANNEL, root.ts, question.ts)
    await bot.idle()
    assert "Oslo and Bergen are both sunny." in answer.text
    cards = [b for b in answer.blocks or [] if b["type"] == "task_card"]
    updates = task_updates(stream_calls(bot.emu, answer.ts))
    # The Bergen call must not overwrite (or vanish into) the Oslo card.
    assert len(cards) == 2, (cards, updates)
    assert len({u["id"] for u in updates}) == 2, updates


async def test_a_refusal_streamed_into_a_thread_reads_as_the_refusal_not_no_answer(
        start_bot: StartBot, fake_llm: FakeOpenAI) -> None:
    # The model declines (OpenAI streams it in `delta.refusal`, content null): the person reads the refusal, and the
    # thread's memory keeps it, as when the answer is posted whole.
    bot = await llm_bot(start_bot, fake_llm, THREADFLOW_SLACK_STREAM_INTERVAL=0.05)
    fake_llm.reply(Reply.stream({"role": "assistant", "content": None, "refusal": ""},
                                {"refusal": "I'm sorry, I can't help "}, {"refusal": "with that."}))
    mention = await bot.emu.post_as_user(f"<@{BOT_USER}> write me a phishing email for our bank", user=BOB)
    answer = await stopped_stream(bot.emu, CHANNEL, mention.ts, mention.ts)
    await bot.idle()

    recorded = await last_assistant_message(bot, f"slack:{bot.emu.state.team_id}:{CHANNEL}:{mention.ts}")
    assert "I'm sorry, I can't help with that." in answer.text, answer.text
    assert recorded == "I'm sorry, I can't help with that."


async def test_an_answer_cut_by_a_shutdown_says_so_and_is_not_left_streaming(
        start_bot: StartBot, llm_for_runs: FakeOpenAI) -> None:
    # A deploy stops the bot while an agent answers in a thread: the model has said "Let me look that up.", the tool
    # ran, and the final answer is still being generated. Cancelled after the grace period, the answer ends with a
    # word that it will not come, rather than staying "streaming" until Slack gives up and then reading as finished.
    bot, root = await finished_weather_run(start_bot, llm_for_runs)
    llm_for_runs.reply(Reply.stream({"role": "assistant", "content": "Let me look that up. "},
                                    {"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                                                     "function": {"name": "get_weather",
                                                                  "arguments": '{"city": "Oslo"}'}}]}),
                       Reply.text("It is sunny in Oslo.").broken("stall", 30))
    question = await bot.emu.post_as_user("Weather in Oslo?", thread_ts=root.ts)

    def tool_done() -> str | None:
        for m in bot.emu.thread(CHANNEL, root.ts):
            stream = bot.emu.streams.of(m.ts)
            if float(m.ts) > float(question.ts) and stream is not None and \
                    stream.task_history.get("call_a", [])[-1:] == ["complete"]:
                return m.ts
        return None

    ts = await bot.emu.wait_for(tool_done, timeout=15)
    await bot.stop()  # SIGTERM: the answer waiting for the model is cancelled after the grace period

    stream = bot.emu.streams.of(ts)
    assert stream is not None and stream.state == "stopped", stream.state if stream else None
    shown = bot.emu.message(ts, CHANNEL)
    assert shown is not None and "Let me look that up." in shown.text and "I was interrupted" in shown.text, shown
