"""Agents' answers streamed into Slack threads: start, appends, stop; tool calls as task cards; the fallbacks.

The offline model streams its answer word by word (``THREADFLOW_OFFLINE_STREAM_DELAY`` apart) and calls the
tools its prompt names, so every test here watches a real agent answer grow in the emulator, which checks
Slack's rules for streams (start before append, nothing after stop, chunk limits) on every call.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from bot.emulator import ApiCall, Message, SlackEmulator
from storage.memory_store import MemoryStore
from storage.slack_store import SlackStore
from tests.bot.conftest import ALICE, BOB, CHANNEL, RunningBot, StartBot, replies, suspend_approval
from tests.helpers import eventually

STREAM_METHODS = ("chat.startStream", "chat.appendStream", "chat.stopStream")
FLOWS = {"THREADFLOW_WORKFLOWS": "tests.helpers.agent_flows", "THREADFLOW_SLACK_STREAM_INTERVAL": 0.05}


@pytest.fixture(autouse=True)
def slow_offline_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Words 30 ms apart: an answer takes long enough to be appended to several times."""
    monkeypatch.setenv("THREADFLOW_OFFLINE_STREAM_DELAY", "0.03")


def stream_calls(emu: SlackEmulator, ts: str) -> list[ApiCall]:
    """The streaming calls that made the message ``ts``, in the order Slack received them."""
    return [c for c in emu.calls() if c.method in STREAM_METHODS and c.response and c.response.get("ok")
            and (c.params.get("ts") == ts or c.response.get("ts") == ts)]


def streamed_markdown(calls: list[ApiCall]) -> str:
    return "".join(chunk["text"] for call in calls for chunk in call.params.get("chunks") or []
                   if chunk.get("type") == "markdown_text")


def task_updates(calls: list[ApiCall]) -> list[dict[str, Any]]:
    return [chunk for call in calls for chunk in call.params.get("chunks") or [] if chunk.get("type") == "task_update"]


async def stopped_stream(emu: SlackEmulator, channel: str, thread_ts: str, after: str) -> Message:
    """The bot's streamed message in the thread posted after ``after``, once its stream has stopped."""

    def done() -> Message | None:
        for msg in emu.thread(channel, thread_ts):
            stream = emu.streams.of(msg.ts)
            if float(msg.ts) > float(after) and stream is not None and stream.state == "stopped":
                return msg
        return None

    found: Message = await emu.wait_for(done, timeout=30)
    return found


async def start_run(bot: RunningBot, text: str) -> tuple[str, Message]:
    """Start a run with ``/flow run ...``; its id and root message, once the run exists."""
    before = {m.ts for m in bot.emu.messages(CHANNEL)}
    ack = await bot.command(text)
    assert ack.status == 200, ack.body
    root: Message = await bot.emu.wait_for(
        lambda: next((m for m in bot.emu.messages(CHANNEL) if m.ts not in before), None), timeout=30)
    run_id = root.text.split("(")[1].split(")")[0]

    async def exists() -> bool:
        return any(r.id == run_id for r in await bot.engine.list_runs(limit=50))

    await eventually(exists, timeout=30)
    return run_id, root


async def last_assistant_message(bot: RunningBot, thread_id: str) -> str:
    rows = await MemoryStore(bot.engine.db).last_messages(thread_id, 20)
    return [r.content for r in rows if r.role == "assistant" and r.author != "threadflow"][-1]


async def test_a_thread_reply_is_streamed_start_appends_stop_and_reads_as_the_answer_in_memory(
        start_bot: StartBot) -> None:
    bot = await start_bot(THREADFLOW_SLACK_STREAM_INTERVAL=0.05)
    run = await suspend_approval(bot, "run approval ship release 2.4 to production")
    question = await bot.emu.post_as_user("what release needs approval?", user=BOB, thread_ts=run.root.ts)

    answer = await stopped_stream(bot.emu, CHANNEL, run.root.ts, question.ts)
    calls = stream_calls(bot.emu, answer.ts)
    methods = [c.method for c in calls]
    assert methods[0] == "chat.startStream" and methods[-1] == "chat.stopStream"
    assert methods.count("chat.appendStream") >= 2 and methods.count("chat.startStream") == 1
    assert set(methods[1:-1]) == {"chat.appendStream"}
    start = calls[0].params
    assert start["thread_ts"] == run.root.ts and start["recipient_user_id"] == BOB and start["recipient_team_id"]

    recorded = await last_assistant_message(bot, f"slack:{bot.emu.state.team_id}:{CHANNEL}:{run.root.ts}")
    assert streamed_markdown(calls) == recorded
    assert answer.text == recorded and "ship release 2.4 to production" in recorded
    assert bot.emu.calls("chat.postMessage")[-1].params.get("text") != recorded  # not posted a second time
    # the feedback buttons came with the stop
    assert any(b["type"] == "context_actions" for b in calls[-1].params.get("blocks") or [])


async def test_a_tool_call_shows_as_a_task_card_in_progress_then_complete(start_bot: StartBot) -> None:
    bot = await start_bot(**FLOWS)
    _, root = await start_run(bot, 'run weather question="Is it cold?"')
    await bot.emu.wait_for(lambda: any("Run finished" in m.text for m in replies(bot.emu, root)), timeout=30)
    question = await bot.emu.post_as_user("What is the weather in Bergen? Use get_weather.", thread_ts=root.ts)

    answer = await stopped_stream(bot.emu, CHANNEL, root.ts, question.ts)
    updates = task_updates(stream_calls(bot.emu, answer.ts))
    assert [u["status"] for u in updates] == ["in_progress", "complete"]
    assert {u["id"] for u in updates} == {updates[0]["id"]} and updates[0]["title"] == "get_weather"
    assert "Bergen" in updates[0].get("details", "") and "Sunny and 21 degrees" in updates[1]["output"]
    assert bot.emu.streams.of(answer.ts).task_history[updates[0]["id"]] == ["in_progress", "complete"]
    card = next(b for b in answer.blocks or [] if b["type"] == "task_card")
    assert card["status"] == "complete" and card["title"] == "get_weather"
    assert "Tool results: Sunny and 21 degrees in" in answer.text  # the answer came after the card


async def test_an_agent_step_streams_its_answer_and_its_tools_as_a_plan_delivered_once(start_bot: StartBot) -> None:
    bot = await start_bot(**FLOWS)
    run_id, root = await start_run(bot, 'run weather question="Weather in Oslo today and tomorrow? Use get_weather '
                                        'and get_forecast."')
    assert await bot.settled(run_id, timeout=30) == "success"
    await bot.emu.wait_for(lambda: any("Run finished" in m.text for m in replies(bot.emu, root)), timeout=30)
    await eventually(lambda: not bot.bot.delivery.render_tasks, timeout=30)

    outputs = [m for m in replies(bot.emu, root) if "forecaster" in m.text or bot.emu.streams.of(m.ts)]
    assert len(outputs) == 1, [m.text for m in outputs]  # the stream was the output's one delivery
    message = outputs[0]
    calls = stream_calls(bot.emu, message.ts)
    assert [c.method for c in calls][0] == "chat.startStream" and calls[-1].method == "chat.stopStream"
    assert calls[0].params["task_display_mode"] == "plan"
    assert calls[0].params["chunks"][0] == {"type": "plan_update", "title": "forecaster: working"}
    updates = task_updates(calls)
    assert {u["title"] for u in updates} == {"get_weather", "get_forecast"}
    for name in ("get_weather", "get_forecast"):
        assert [u["status"] for u in updates if u["title"] == name] == ["in_progress", "complete"]
    assert calls[-1].params["chunks"][0] == {"type": "plan_update", "title": "forecaster: done"}
    plan = next(b for b in message.blocks or [] if b["type"] == "plan")
    assert plan["title"] == "forecaster: done"
    assert [t["status"] for t in plan["tasks"]] == ["complete", "complete"]
    # the outbox's post for the step was delivered by the stream's stop: its delivery id, its ts
    stop = calls[-1].params
    delivery_id = stop["metadata"]["event_payload"]["delivery_id"]
    row = await SlackStore(bot.engine.db).get_message(delivery_id)
    assert row is not None and row.state == "sent" and row.ts == message.ts and delivery_id.endswith(":output")
    output = (await bot.engine.get_run(run_id)).output
    assert streamed_markdown(calls).endswith(json.loads(json.dumps(output))["text"])
    assert any(b["type"] == "context_actions" for b in stop.get("blocks") or [])


async def test_streaming_refused_by_slack_falls_back_to_one_post_and_says_so_once(
        start_bot: StartBot, logs: pytest.LogCaptureFixture) -> None:
    bot = await start_bot(THREADFLOW_SLACK_STREAM_INTERVAL=0.05)
    bot.emu.streams.refuse("not_agent_app")
    run = await suspend_approval(bot, "run approval ship it")
    answers: list[Message] = []
    for question in ("what needs approval?", "and who asked?"):
        asked = await bot.emu.post_as_user(question, thread_ts=run.root.ts)
        answer = await bot.emu.wait_for(lambda asked=asked: next(
            (m for m in replies(bot.emu, run.root) if m.user == "U0BOT" and float(m.ts) > float(asked.ts)
             and m.text.startswith("(offline model)")), None), timeout=30)
        await bot.idle()
        answers.append(answer)

    posts = [c for c in bot.emu.calls("chat.postMessage") if c.params.get("thread_ts") == run.root.ts
             and str(c.params.get("text", "")).startswith("(offline model)")]
    assert len(posts) == 2 and [p.response["ts"] for p in posts] == [a.ts for a in answers]  # one post each
    assert [c.method for c in bot.emu.calls() if c.method in STREAM_METHODS] == ["chat.startStream"]  # remembered
    assert not bot.emu.calls("chat.appendStream")
    assert any(b["type"] == "context_actions" for b in posts[0].params["blocks"])
    said = [r for r in logs.records if "refused to stream" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING
    feature = await SlackStore(bot.engine.db).feature(bot.emu.state.team_id, "streaming")
    assert feature is not None and feature.state == "refused" and feature.detail == "not_agent_app"


async def test_a_stream_slack_stopped_midway_ends_with_the_whole_answer_in_place(start_bot: StartBot) -> None:
    bot = await start_bot(THREADFLOW_SLACK_STREAM_INTERVAL=0.05)
    run = await suspend_approval(bot, "run approval ship it")
    bot.emu.fail_next("chat.appendStream", status=200, error="message_not_in_streaming_state", retry_after=None)
    question = await bot.emu.post_as_user("what needs approval?", thread_ts=run.root.ts)
    answer = await bot.emu.wait_for(lambda: next(
        (m for m in replies(bot.emu, run.root) if m.edited and float(m.ts) > float(question.ts)), None), timeout=30)
    await bot.idle()

    recorded = await last_assistant_message(bot, f"slack:{bot.emu.state.team_id}:{CHANNEL}:{run.root.ts}")
    assert answer.blocks is not None and answer.blocks[0] == {"type": "markdown", "text": recorded}
    assert [c.method for c in bot.emu.calls() if c.method in STREAM_METHODS] == ["chat.startStream",
                                                                                  "chat.appendStream"]
    assert len([m for m in replies(bot.emu, run.root) if float(m.ts) > float(question.ts)]) == 1


async def test_streaming_switched_off_posts_answers_whole(start_bot: StartBot) -> None:
    bot = await start_bot(THREADFLOW_SLACK_STREAMING=False)
    run = await suspend_approval(bot, "run approval ship it")
    question = await bot.emu.post_as_user("what needs approval?", user=ALICE, thread_ts=run.root.ts)
    await bot.emu.wait_for(lambda: any(m.text.startswith("(offline model)") and float(m.ts) > float(question.ts)
                                       for m in replies(bot.emu, run.root)), timeout=30)
    await bot.idle()
    assert not [c for c in bot.emu.calls() if c.method in STREAM_METHODS]


async def test_a_tool_that_fails_shows_as_a_task_card_in_error(start_bot: StartBot) -> None:
    bot = await start_bot(**FLOWS)
    run_id, root = await start_run(bot, 'run weather question="Is the radar up over Oslo? Use broken_radar."')
    assert await bot.settled(run_id, timeout=30) == "success"  # a tool's failure goes back to the model
    await eventually(lambda: not bot.bot.delivery.render_tasks, timeout=30)
    [message] = [m for m in replies(bot.emu, root) if bot.emu.streams.of(m.ts)]
    updates = task_updates(stream_calls(bot.emu, message.ts))
    assert [u["status"] for u in updates] == ["in_progress", "error"] and updates[0]["title"] == "broken_radar"
    assert "is down" in updates[1]["output"]
    card = next(b for b in message.blocks or [] if b["type"] in ("plan", "task_card"))
    assert (card["tasks"][0] if card["type"] == "plan" else card)["status"] == "error"


async def test_a_mention_outside_a_run_is_answered_by_a_stream_in_its_thread(start_bot: StartBot) -> None:
    bot = await start_bot(THREADFLOW_SLACK_STREAM_INTERVAL=0.05)
    mention = await bot.emu.post_as_user("<@U0BOT> which regions does the staging database run in?", user=BOB)
    answer = await stopped_stream(bot.emu, CHANNEL, mention.ts, mention.ts)
    calls = stream_calls(bot.emu, answer.ts)
    methods = [c.method for c in calls]
    assert methods[0] == "chat.startStream" and methods[-1] == "chat.stopStream" and "chat.appendStream" in methods
    assert calls[0].params["thread_ts"] == mention.ts and calls[0].params["recipient_user_id"] == BOB
    recorded = await last_assistant_message(bot, f"slack:{bot.emu.state.team_id}:{CHANNEL}:{mention.ts}")
    assert streamed_markdown(calls) == recorded == answer.text
    assert any(b["type"] == "context_actions" for b in calls[-1].params.get("blocks") or [])


async def test_a_tool_whose_output_is_longer_than_a_task_card_takes_is_clipped_to_slacks_limit(
        start_bot: StartBot) -> None:
    from tests.helpers.almanac_flows import ALMANAC

    bot = await start_bot(THREADFLOW_WORKFLOWS="tests.helpers.almanac_flows", THREADFLOW_SLACK_STREAM_INTERVAL=0.05)
    _, root = await start_run(bot, "run almanac")
    await bot.emu.wait_for(lambda: any("Run finished" in m.text for m in replies(bot.emu, root)), timeout=30)
    question = await bot.emu.post_as_user("When does the sun rise on Monday? Use get_almanac.", thread_ts=root.ts)

    answer = await stopped_stream(bot.emu, CHANNEL, root.ts, question.ts)  # the emulator refuses fields over 256
    updates = task_updates(stream_calls(bot.emu, answer.ts))
    assert [u["status"] for u in updates] == ["in_progress", "complete"] and len(ALMANAC) > 256
    assert len(updates[1]["output"]) == 256 and updates[1]["output"].startswith("Sunrise 06:12")
    assert not [c for c in bot.emu.calls() if c.method.endswith("Stream") and c.response and not c.response.get("ok")]
