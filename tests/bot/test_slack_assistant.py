"""Slack's assistant container through bolt's ``AsyncAssistant``: prompts from the workflows, runs started in
the thread, "is thinking...", titles, and the thread as a memory thread like any other.

The emulator opens the container as a person would (``assistant_thread_started`` with the channel they were
in), and what they type arrives as a ``message`` in their DM thread with the app.
"""

from __future__ import annotations

import logging

import pytest
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bot.emulator import Message, SlackEmulator
from storage.memory_store import MemoryStore
from storage.slack_store import SlackStore
from tests.bot.conftest import ALICE, CHANNEL, TOKEN, RunningBot, button_value, has_buttons
from tests.helpers import eventually

DM = "D0ALICE"


@pytest.fixture(autouse=True)
def slow_offline_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THREADFLOW_OFFLINE_STREAM_DELAY", "0.01")


def in_thread(emu: SlackEmulator, thread_ts: str) -> list[Message]:
    return [m for m in emu.thread(DM, thread_ts) if m.ts != thread_ts]


async def open_thread(bot: RunningBot) -> str:
    thread, delivered = await bot.emu.assistant.open_thread(ALICE, context_channel=CHANNEL)
    assert delivered is not None and delivered.status == 200
    await bot.emu.wait_for(lambda: bot.emu.assistant.thread(DM, thread.thread_ts).prompts, timeout=5)
    return thread.thread_ts


async def test_the_container_offers_the_workflows_as_prompts_and_a_prompt_starts_a_run_in_the_thread(
        bot: RunningBot) -> None:
    emu = bot.emu
    thread_ts = await open_thread(bot)
    thread = emu.assistant.thread(DM, thread_ts)
    titles = {p["title"]: p["message"] for p in thread.prompts}
    assert titles == {"Ask for approval": "run approval", "Deploy an app": "run deploy-app",
                      "Ask an agent": "run chat-flow", "Greet someone": "run greet-user"}
    [prompted] = [c for c in emu.calls("assistant.threads.setSuggestedPrompts")]
    assert prompted.params["thread_ts"] == thread_ts and prompted.params["channel_id"] == DM

    # the person clicks "Ask for approval": Slack sends the prompt's message as theirs
    await emu.post_as_user(titles["Ask for approval"], channel=DM, thread_ts=thread_ts)
    card = await emu.wait_for(lambda: next((m for m in in_thread(emu, thread_ts) if has_buttons(m)), None), timeout=30)
    run_id = button_value(card)["run_id"]
    assert await bot.settled(run_id, ("suspended",)) == "suspended"
    root = next(m for m in in_thread(emu, thread_ts) if run_id in m.text)
    assert root.thread_ts == thread_ts and card.thread_ts == thread_ts  # the run lives in the assistant thread
    run = await bot.engine.get_run(run_id)
    assert run.thread_id == f"slack:{emu.state.team_id}:{DM}:{thread_ts}" and run.started_by == ALICE
    assert emu.assistant.thread(DM, thread_ts).title == "run approval"

    await emu.click(card, "approve", user=ALICE)
    assert await bot.settled(run_id) == "success"
    await emu.wait_for(lambda: any("Run finished" in m.text for m in in_thread(emu, thread_ts)), timeout=30)


async def test_a_question_in_the_thread_is_answered_with_thinking_status_and_the_same_memory(bot: RunningBot) -> None:
    emu = bot.emu
    thread_ts = await open_thread(bot)
    await emu.post_as_user("remember that the staging database is called kiwi", channel=DM, thread_ts=thread_ts)
    await emu.wait_for(lambda: [m for m in in_thread(emu, thread_ts) if m.user == "U0BOT"
                                and emu.streams.of(m.ts) is not None and emu.streams.of(m.ts).state == "stopped"],
                       timeout=30)
    [status] = [c for c in emu.calls("assistant.threads.setStatus")]
    assert status.params["status"] == "is thinking..." and status.params["thread_ts"] == thread_ts
    calls = [c.method for c in emu.calls()]
    assert calls.index("assistant.threads.setStatus") < calls.index("chat.startStream")
    assert emu.assistant.thread(DM, thread_ts).title == "remember that the staging database is called kiwi"

    await bot.idle()
    asked = await emu.post_as_user("what is the staging database called?", channel=DM, thread_ts=thread_ts)

    def second() -> Message | None:
        return next((m for m in in_thread(emu, thread_ts) if m.user == "U0BOT" and float(m.ts) > float(asked.ts)
                     and emu.streams.of(m.ts) is not None and emu.streams.of(m.ts).state == "stopped"), None)

    answer = await emu.wait_for(second, timeout=30)
    assert "staging database is called kiwi" in answer.text.split("Earlier in this thread:")[1]
    thread_id = f"slack:{emu.state.team_id}:{DM}:{thread_ts}"
    stored = await MemoryStore(bot.engine.db).get_thread(thread_id)
    assert stored is not None and stored.title == "remember that the staging database is called kiwi"
    assert (stored.metadata or {}).get("slack_context", {}).get("channel_id") == CHANNEL
    # the status shows until the bot answers (Slack clears it then)
    assert emu.assistant.snapshot()[0]["status"] == ""


async def first_reply(bot: RunningBot, text: str) -> Message:
    """What the bot first says in a new assistant thread to ``text``, once it is done."""
    thread_ts = await open_thread(bot)
    await bot.emu.post_as_user(text, user=ALICE, channel=DM, thread_ts=thread_ts)
    reply: Message = await bot.emu.wait_for(
        lambda: next((m for m in in_thread(bot.emu, thread_ts) if m.user == "U0BOT"), None), timeout=15)
    await bot.idle()
    return bot.emu.message(reply.ts, DM) or reply


async def test_a_question_that_starts_with_the_word_run_is_answered_not_taken_for_an_unknown_workflow(
        bot: RunningBot) -> None:
    # "Run me through ..." names no workflow: it is a question, answered by the agent, not refused as the start of
    # a workflow called "me".
    reply = await first_reply(bot, "Run me through what the deploy-app workflow does")

    assert not reply.text.startswith(":warning:"), reply.text
    assert "(offline model)" in reply.text, reply.text


async def test_run_and_a_mistyped_workflow_is_answered_with_the_known_ones(bot: RunningBot) -> None:
    reply = await first_reply(bot, "run deploy-ap")

    assert reply.text.startswith(":warning:") and "'deploy-ap' is not registered" in reply.text, reply.text
    assert "deploy-app" in reply.text


async def test_slack_refusing_the_assistant_methods_is_logged_and_the_thread_still_answers(
        bot: RunningBot, logs: pytest.LogCaptureFixture) -> None:
    emu = bot.emu
    emu.fail_next("assistant.threads.setSuggestedPrompts", status=200, error="not_agent_app", retry_after=None)
    thread, _ = await emu.assistant.open_thread(ALICE)
    await eventually(lambda: emu.calls("assistant.threads.setSuggestedPrompts"), timeout=5)
    await bot.idle()
    assert emu.calls("assistant.threads.setSuggestedPrompts")[-1].response["error"] == "not_agent_app"
    assert any("could not offer the workflows" in r.getMessage() and "not_agent_app" in r.getMessage()
               for r in logs.records if r.levelno == logging.WARNING)
    feature = await SlackStore(bot.engine.db).feature(emu.state.team_id, "assistant")
    assert feature is not None and feature.state == "seen"

    await emu.post_as_user("hello there", channel=DM, thread_ts=thread.thread_ts)
    await emu.wait_for(lambda: [m for m in in_thread(emu, thread.thread_ts) if m.user == "U0BOT"], timeout=30)


async def test_an_app_without_the_assistant_view_cannot_be_opened_and_refuses_its_methods(emu: SlackEmulator) -> None:
    emu.assistant.disable()
    with pytest.raises(LookupError, match="no assistant view"):
        await emu.assistant.open_thread(ALICE)
    client = AsyncWebClient(token=TOKEN, base_url=emu.api_url)
    with pytest.raises(SlackApiError) as refused:
        await client.assistant_threads_setSuggestedPrompts(channel_id=DM, thread_ts="1.000001",
                                                           prompts=[{"title": "t", "message": "m"}])
    assert refused.value.response["error"] == "not_agent_app"


async def test_a_run_started_by_typing_in_the_assistant_gets_the_input_the_person_typed(bot: RunningBot) -> None:
    """In the assistant container ``run WORKFLOW input`` is typed as a message; Slack sends it escaped
    (``&`` as ``&amp;``, a URL wrapped as ``<https://...>``). The run's input must be what the person typed,
    not Slack's markup."""
    emu = bot.emu
    thread, delivered = await emu.assistant.open_thread(ALICE, context_channel=CHANNEL)
    assert delivered is not None and delivered.status == 200
    # typed: run approval R&D budget for https://example.com/q?a=1&b=2
    await emu.post_as_user("run approval R&amp;D budget for <https://example.com/q?a=1&amp;b=2>",
                           channel=DM, thread_ts=thread.thread_ts)

    async def started() -> list[str]:
        return [r.id for r in await bot.engine.list_runs()]

    [run_id] = await eventually(started, timeout=10)
    assert (await bot.engine.get_run(run_id)).input == {
        "request": "R&D budget for https://example.com/q?a=1&b=2"}
