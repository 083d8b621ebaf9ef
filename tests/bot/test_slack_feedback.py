"""Feedback buttons under agent answers: a click is stored with the agent call it rates, shown, counted, acked.

The buttons are Slack's ``feedback_buttons`` in a ``context_actions`` block; the emulator clicks them like a
person does (the payload carries the clicked button's value). Nothing here may change a run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.emulator import Message, SlackEmulator
from storage.memory_store import AgentContextRow, MemoryStore
from tests.bot.conftest import ALICE, BOB, CHANNEL, RunningBot, StartBot, replies, suspend_approval
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parents[2]


def feedback_element(msg: Message) -> dict[str, Any]:
    for block in msg.blocks or []:
        if block.get("type") == "context_actions":
            for element in block.get("elements") or []:
                if element.get("type") == "feedback_buttons":
                    return dict(element)
    raise LookupError(f"no feedback buttons on {msg.ts}")


async def answered(bot: RunningBot, thread_ts: str, question: str, user: str = BOB) -> Message:
    """Ask in the thread and wait for the bot's whole answer (streamed and stopped, or posted)."""
    asked = await bot.emu.post_as_user(question, user=user, thread_ts=thread_ts)

    def done() -> Message | None:
        for m in bot.emu.thread(CHANNEL, thread_ts):
            stream = bot.emu.streams.of(m.ts)
            if m.user == "U0BOT" and float(m.ts) > float(asked.ts) and (stream is None or stream.state == "stopped") \
                    and m.text.startswith("(offline model)"):
                return m
        return None

    found: Message = await bot.emu.wait_for(done, timeout=30)
    await bot.idle()
    return found


async def contexts(bot: RunningBot, run_id: str) -> list[AgentContextRow]:
    return await MemoryStore(bot.engine.db).agent_contexts(run_id)


async def metric(bot: RunningBot, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{bot.port}/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def show_context(bot: RunningBot, run_id: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("THREADFLOW_", "SLACK_", "OPENAI_"))}
    env.update({"THREADFLOW_DATABASE_URL": bot.settings.database_url, "PYTHONPATH": str(ROOT)})
    proc = subprocess.run([sys.executable, "-m", "bot.cli", "show", run_id, "--context"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def test_a_click_is_stored_with_the_agent_call_it_rates_shown_counted_and_acked(bot: RunningBot) -> None:
    run = await suspend_approval(bot, "run approval ship release 2.4")
    events_before = [e.type for e in (await bot.engine.details(run.run_id)).events]
    first = await answered(bot, run.root.ts, "what needs approval?")
    second = await answered(bot, run.root.ts, "and who asked for it?", user=ALICE)

    buttons = feedback_element(first)
    assert buttons["action_id"] == "agent_feedback"
    click = await bot.emu.click(first, "agent_feedback", user=BOB, value="positive")
    assert click.status == 200
    await bot.idle()

    calls = await contexts(bot, run.run_id)
    rated = [c for c in calls if (c.answer or {}).get("feedback")]
    assert len(rated) == 1
    assert rated[0].answer["text"] == first.text and rated[0].path is None  # the call that wrote the first answer
    [entry] = rated[0].answer["feedback"]
    assert entry["user"] == BOB and entry["rating"] == "good" and entry["message_ts"] == first.ts
    assert next(c for c in calls if c.answer and c.answer.get("text") == second.text).answer.get("feedback") is None
    thanks = await bot.emu.wait_for(lambda: [e for e in bot.emu.ephemerals(BOB) if "Thanks" in e.text])
    assert thanks[0].thread_ts == run.root.ts and not bot.emu.ephemerals(ALICE)
    assert await metric(bot, "threadflow_agent_feedback_total", rating="good") == 1

    # Bob changes his mind, Alice rates too: one entry per person, the latest
    await bot.emu.click(first, "agent_feedback", user=BOB, value="negative")
    await bot.emu.click(first, "agent_feedback", user=ALICE, value="positive")
    await bot.idle()
    stored = next(c for c in await contexts(bot, run.run_id) if c.id == rated[0].id).answer["feedback"]
    assert sorted((f["user"], f["rating"]) for f in stored) == [(ALICE, "good"), (BOB, "bad")]
    assert await metric(bot, "threadflow_agent_feedback_total", rating="bad") == 1

    shown = show_context(bot, run.run_id)
    assert f"feedback: bad from {BOB}" in shown and f"feedback: good from {ALICE}" in shown
    # a rating never changes the run
    run_now = await bot.engine.get_run(run.run_id)
    assert run_now.status == "suspended"
    assert [e.type for e in (await bot.engine.details(run.run_id)).events] == events_before


async def test_an_agent_steps_output_is_rated_on_its_newest_call(start_bot: StartBot, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.setenv("THREADFLOW_OFFLINE_STREAM_DELAY", "0.01")
    bot = await start_bot(THREADFLOW_WORKFLOWS="tests.helpers.agent_flows")
    ack = await bot.command('run weather question="Will it rain in Oslo? Use get_forecast."')
    assert ack.status == 200
    root = await bot.emu.wait_for(lambda: next(iter(bot.emu.messages(CHANNEL)), None), timeout=30)
    output = await bot.emu.wait_for(lambda: next(
        (m for m in replies(bot.emu, root) if any(b.get("type") == "context_actions" for b in m.blocks or [])
         and (bot.emu.streams.of(m.ts) is None or bot.emu.streams.of(m.ts).state == "stopped")), None), timeout=30)
    value = json.loads(feedback_element(output)["positive_button"]["value"])
    assert value["rating"] == "good" and value["path"] == "forecast"
    await bot.emu.click(output, "agent_feedback", user=ALICE, value="positive")
    await bot.idle()

    [call] = [c for c in await contexts(bot, value["run_id"]) if c.path == "forecast"]
    assert [(f["user"], f["rating"]) for f in call.answer["feedback"]] == [(ALICE, "good")]


async def test_a_forged_feedback_value_records_nothing_and_says_so(bot: RunningBot, emu: SlackEmulator) -> None:
    run = await suspend_approval(bot, "run approval ship it")
    answer = await answered(bot, run.root.ts, "what needs approval?")
    forged = {**answer.to_api()}
    forged["blocks"] = [{"type": "context_actions", "elements": [{
        "type": "feedback_buttons", "action_id": "agent_feedback",
        "positive_button": {"text": {"type": "plain_text", "text": "up"}, "value": '{"rating": "great", "context_id": 1}'},
        "negative_button": {"text": {"type": "plain_text", "text": "down"}, "value": "not json"}}]}]
    for button in ("positive", "negative"):
        await emu.click(forged, "agent_feedback", user=BOB, value=button)
    await bot.idle()
    warnings = await eventually(lambda: [e for e in emu.ephemerals(BOB) if "malformed" in e.text])
    assert len(warnings) == 2
    assert not [c for c in await contexts(bot, run.run_id) if (c.answer or {}).get("feedback")]
