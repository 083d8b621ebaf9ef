"""Talking to the agents in threads: replies in a run's thread, mentions anywhere, retries and duplicates.

Slack echoes the bot's own posts as ``message`` events, so every test here turns the echo on: the bot must
not answer itself.
"""

from __future__ import annotations

from bot.emulator import Message, SlackEmulator
from tests.bot.conftest import ALICE, BOB, CHANNEL, RunningBot, SuspendedRun, replies, suspend_approval

BOT_USER = "U0BOT"


def answers(emu: SlackEmulator, root_ts: str, after: str) -> list[Message]:
    """The bot's chat answers in the thread of ``root_ts``, posted after the message ``after``."""
    return [m for m in emu.thread(CHANNEL, root_ts)
            if m.user == BOT_USER and float(m.ts) > float(after) and m.text.startswith("(offline model)")]


async def answered(bot: RunningBot, root_ts: str, after: str) -> Message:
    """Wait for the answer to ``after``, let every duplicate delivery finish, and check there is one answer."""
    found: list[Message] = await bot.emu.wait_for(lambda: answers(bot.emu, root_ts, after), timeout=5)
    await bot.idle()
    assert len(answers(bot.emu, root_ts, after)) == 1, [m.text for m in answers(bot.emu, root_ts, after)]
    return found[0]


async def finished_run(bot: RunningBot) -> SuspendedRun:
    run = await suspend_approval(bot, "run approval ship release 2.4 to production")
    await bot.emu.click(run.approval, "approve", user=ALICE)
    await bot.emu.wait_for(lambda: any("Run finished" in m.text for m in replies(bot.emu, run.root)), timeout=5)
    return run


async def test_a_reply_in_a_run_thread_is_answered_about_the_run(bot: RunningBot) -> None:
    bot.emu.echo_bot_messages = True
    run = await finished_run(bot)
    question = await bot.emu.post_as_user("who approved the approve step?", user=BOB, thread_ts=run.root.ts)
    assert [d.status for d in question.deliveries] == [200]

    answer = await answered(bot, run.root.ts, question.ts)
    assert answer.thread_ts == run.root.ts
    assert '"who approved the approve step?"' in answer.text
    assert f'Earlier in this thread: "[threadflow] Step approve was approved by {ALICE}.' in answer.text


async def test_an_answer_streamed_through_a_5xx_goes_on_streaming(bot: RunningBot) -> None:
    # A 5xx to a stream's append is tried again a moment later, as before: the answer keeps streaming in place (a 5xx
    # is "maybe delivered" for posts in the outbox, which look them up; a stream has nothing to look up by).
    bot.emu.echo_bot_messages = True
    run = await finished_run(bot)
    bot.emu.fail_next("chat.appendStream", status=503, retry_after=None)
    question = await bot.emu.post_as_user("who approved the approve step?", user=BOB, thread_ts=run.root.ts)
    answer = await answered(bot, run.root.ts, question.ts)
    assert '"who approved the approve step?"' in answer.text
    assert [c.status for c in bot.emu.calls("chat.appendStream")][:1] == [503]
    [stopped] = bot.emu.calls("chat.stopStream")  # the stream was ended, not given up (then edited as a message)
    assert stopped.status == 200 and not [c for c in bot.emu.calls("chat.update") if c.params.get("ts") == answer.ts]


async def test_a_reply_while_the_run_waits_knows_what_is_waiting(bot: RunningBot) -> None:
    bot.emu.echo_bot_messages = True
    run = await suspend_approval(bot, "run approval ship release 2.4 to production")
    question = await bot.emu.post_as_user("what release needs approval?", user=BOB, thread_ts=run.root.ts)
    answer = await answered(bot, run.root.ts, question.ts)
    assert "Earlier in this thread:" in answer.text and "ship release 2.4 to production" in answer.text


async def test_a_mention_outside_a_run_starts_a_conversation_in_its_thread(bot: RunningBot) -> None:
    emu = bot.emu
    emu.echo_bot_messages = True
    mention = await emu.post_as_user(f"<@{BOT_USER}> remember that the staging database is called kiwi")
    assert [d.status for d in mention.deliveries] == [200, 200]  # message + app_mention
    first = await answered(bot, mention.ts, mention.ts)
    assert first.thread_ts == mention.ts  # the conversation lives in the mention's thread
    assert "remember that the staging database is called kiwi" in first.text
    assert "<@" not in first.text.split('"')[1]  # the mention itself is not part of the question

    follow_up = await emu.post_as_user("what is the staging database called?", thread_ts=mention.ts)
    second = await answered(bot, mention.ts, follow_up.ts)
    assert "Earlier in this thread:" in second.text
    assert "staging database is called kiwi" in second.text.split("Earlier in this thread:")[1]


async def test_threads_the_bot_is_not_part_of_are_left_alone(bot: RunningBot) -> None:
    emu = bot.emu
    emu.echo_bot_messages = True
    chatter = await emu.post_as_user("lunch?", user=BOB)
    reply = await emu.post_as_user("sure", thread_ts=chatter.ts)
    assert [d.status for d in chatter.deliveries + reply.deliveries] == [200, 200]
    await bot.idle()
    assert [m.user for m in emu.thread(CHANNEL, chatter.ts)] == [BOB, ALICE]
    assert emu.calls("chat.postMessage") == []


async def test_a_retried_event_is_answered_once(bot: RunningBot) -> None:
    emu = bot.emu
    emu.echo_bot_messages = True
    run = await suspend_approval(bot)
    question = await emu.post_as_user("is this still waiting?", thread_ts=run.root.ts)
    event_id = question.deliveries[0].event_id
    assert event_id is not None
    early = await emu.redeliver(event_id, retry_num=1, retry_reason="http_timeout")  # before the answer
    await answered(bot, run.root.ts, question.ts)
    late = await emu.redeliver(event_id, retry_num=2, retry_reason="http_error")  # after it
    assert early.status == late.status == 200
    await answered(bot, run.root.ts, question.ts)


async def test_a_mention_inside_a_thread_is_answered_once(bot: RunningBot) -> None:
    emu = bot.emu
    emu.echo_bot_messages = True
    run = await suspend_approval(bot)
    question = await emu.post_as_user(f"<@{BOT_USER}> what are we waiting for?", thread_ts=run.root.ts)
    kinds = [d.payload["event"]["type"] for d in question.deliveries]
    assert sorted(kinds) == ["app_mention", "message"]
    answer = await answered(bot, run.root.ts, question.ts)
    assert answer.thread_ts == run.root.ts


async def test_a_thread_reply_with_a_file_is_answered_once(bot: RunningBot) -> None:
    bot.emu.echo_bot_messages = True
    run = await finished_run(bot)
    question = await bot.emu.post_as_user("here is the log, what failed?", user=BOB, thread_ts=run.root.ts,
                                          files=[{"name": "deploy.log", "mimetype": "text/plain", "size": 2048}])
    assert question.message.files and question.message.to_api()["subtype"] == "file_share"
    assert [d.status for d in question.deliveries] == [200]
    answer = await answered(bot, run.root.ts, question.ts)
    assert '"here is the log, what failed?"' in answer.text
    again = await bot.emu.redeliver(question.deliveries[0].event_id or "")  # Slack's retry: still one answer
    assert again.status == 200
    await answered(bot, run.root.ts, question.ts)


async def test_a_direct_message_is_answered_in_the_conversation(bot: RunningBot) -> None:
    bot.emu.echo_bot_messages = True
    dm = bot.emu.state.im_channel(BOB).id
    first = await bot.emu.post_as_user("remember: the release train leaves on Thursday", user=BOB, channel=dm)
    assert [d.status for d in first.deliveries] == [200]
    reply = await bot.emu.wait_for(lambda: [m for m in bot.emu.messages(dm) if m.user == BOT_USER], timeout=5)
    assert reply[0].thread_ts is None  # answered in the conversation itself, not in a thread
    second = await bot.emu.post_as_user("when does the release train leave?", user=BOB, channel=dm)
    answers_ = await bot.emu.wait_for(
        lambda: [m for m in bot.emu.messages(dm) if m.user == BOT_USER and float(m.ts) > float(second.ts)], timeout=5)
    assert "Thursday" in answers_[0].text  # the conversation is one memory thread
    await bot.idle()
    assert len([m for m in bot.emu.messages(dm) if m.user == BOT_USER]) == 2


async def test_agent_text_is_escaped_so_it_cannot_ping_the_channel(bot: RunningBot) -> None:
    run = await finished_run(bot)
    # Typed as characters (Slack sends them escaped): the model reads ``<!channel>`` and the offline model echoes it.
    question = await bot.emu.post_as_user("say &lt;!channel&gt; &amp; &lt;https://evil.example|your bank&gt;",
                                          user=BOB, thread_ts=run.root.ts)
    answer = await answered(bot, run.root.ts, question.ts)
    assert "<!channel>" not in answer.text and "&lt;!channel&gt;" in answer.text
    assert "&amp;" in answer.text and "<https://evil.example" not in answer.text
