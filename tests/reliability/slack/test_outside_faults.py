"""When the outside world fails during a run started from Slack: the LLM server (500, 429, timeouts) and Slack's
Web API (5xx, a whole outage).

An LLM that keeps failing is retried (every request is counted at the fake server), then the run fails cleanly:
the thread says which step failed, the failed step has no result row, earlier results are intact. Slack trouble
is retried too, and never fails a run. (tests/bot/test_slack_resilience.py covers Slack 429s and plain API
errors; tests/workflows/test_models.py covers the model client's retries without a run.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.emulator import Message
from tests.bot.conftest import (
    ALICE,
    CHANNEL,
    RunningBot,
    block_text,
    replies,
    root_for,
    suspend_approval,
)
from tests.fakes import DUMMY_KEY, FakeOpenAI, Reply
from tests.helpers import eventually
from tests.reliability.slack.flows import MODEL_RETRY, MODEL_TIMEOUT, llm_flow

ATTEMPTS = MODEL_RETRY.attempts


@pytest.fixture
async def fake_llm() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
async def llm_bot(bot: RunningBot, fake_llm: FakeOpenAI) -> AsyncIterator[RunningBot]:
    """The bot with ``llm-flow`` registered: its agent step talks to the fake OpenAI server over HTTP."""
    workflow, model = llm_flow(fake_llm.base_url, DUMMY_KEY)
    bot.engine.register(workflow)
    yield bot
    await model.aclose()


async def start_from_slack(bot: RunningBot, text: str) -> tuple[str, Message]:
    ack = await bot.command(text)
    assert ack.status == 200, ack.body
    [run] = await eventually(bot.engine.list_runs)
    root = await bot.emu.wait_for(lambda: root_for(bot.emu, run.id), timeout=5)
    return run.id, root


def slow() -> Reply:
    return Reply(**{**Reply.text("too late").__dict__, "delay": MODEL_TIMEOUT * 4})


FAILURES = {
    "500": [Reply.error(500)] * ATTEMPTS,
    "429": [Reply.error(429, "rate limited", retry_after=0)] * ATTEMPTS,
    "timeout": [slow() for _ in range(ATTEMPTS)],
    "mixed": [Reply.error(503), Reply.error(429, retry_after=0), slow()],
}


@pytest.mark.parametrize("fault", list(FAILURES))
async def test_an_llm_that_keeps_failing_is_retried_then_the_run_fails_cleanly_in_its_thread(
    llm_bot: RunningBot, fake_llm: FakeOpenAI, fault: str
) -> None:
    bot = llm_bot
    fake_llm.reply(*FAILURES[fault])

    run_id, root = await start_from_slack(bot, "run llm-flow databases")
    assert await bot.settled(run_id, timeout=15) == "failed"

    assert len(fake_llm.chat_requests) == ATTEMPTS  # retried, then given up: not one request more
    record = await bot.engine.get_run(run_id)
    assert record.error is not None and record.error["path"] == "write"
    assert f"failed after {ATTEMPTS} attempt(s)" in record.error["message"]
    # Nothing half-written: the earlier step's result is intact, the failed step has no result at all.
    details = await bot.engine.details(run_id)
    assert [(s.path, s.output) for s in details.steps] == [
        ("gather", {"topic": "databases", "notes": "notes about databases"})]
    assert [ev.path for ev in details.events if ev.type == "step.failed"] == ["write"]
    assert details.run.output is None
    # The thread says so, naming the step.
    failed = await bot.emu.wait_for(
        lambda: [m for m in replies(bot.emu, root) if "Run failed" in m.text], timeout=5)
    assert len(failed) == 1 and "Run failed at step `write`" in block_text(failed[0])
    assert "attempt(s)" in block_text(failed[0]) and DUMMY_KEY not in block_text(failed[0])
    await bot.emu.wait_for(lambda: (m := root_for(bot.emu, run_id)) is not None and "failed" in m.text, timeout=5)


async def test_an_llm_that_recovers_within_its_retries_lets_the_run_finish(
    llm_bot: RunningBot, fake_llm: FakeOpenAI
) -> None:
    bot = llm_bot
    fake_llm.reply(Reply.error(500), Reply.error(429, retry_after=0), Reply.json({"summary": "Databases store data."}))

    run_id, root = await start_from_slack(bot, "run llm-flow databases")
    assert await bot.settled(run_id, timeout=15) == "success"

    assert len(fake_llm.chat_requests) == 3
    assert (await bot.engine.get_run(run_id)).output == {"summary": "Databases store data."}
    posted = await bot.emu.wait_for(
        lambda: [m for m in replies(bot.emu, root) if "Databases store data." in block_text(m)], timeout=5)
    assert "*writer* (`write`)" in block_text(posted[0])


def statuses(bot: RunningBot, method: str) -> list[int]:
    return [c.status for c in bot.emu.calls(method)]


async def test_slack_server_errors_are_retried_and_the_run_completes(bot: RunningBot) -> None:
    emu = bot.emu
    emu.fail_next("chat.postMessage", status=500)  # the root message
    run = await suspend_approval(bot)
    assert statuses(bot, "chat.postMessage")[:2] == [500, 200]

    emu.fail_next("chat.update", status=503)
    await emu.click(run.approval, "approve", user=ALICE)
    assert await bot.settled(run.run_id) == "success"
    await emu.wait_for(lambda: any("Run finished" in m.text for m in replies(emu, run.root)), timeout=10)
    await emu.wait_for(lambda: f"Approved by <@{ALICE}>" in block_text(emu.message(run.approval.ts)), timeout=10)
    assert 503 in statuses(bot, "chat.update")

    # Retries never duplicate a post: one root, one approval request, one result.
    assert len(emu.messages(CHANNEL)) == 1
    assert len(replies(emu, run.root)) == 2


async def test_a_slack_outage_during_a_run_never_fails_it(bot: RunningBot) -> None:
    emu = bot.emu
    run = await suspend_approval(bot)
    emu.fail_next("*", status=503, retry_after=None, times=100_000)  # every Web API method, retries included

    click = await emu.click(run.approval, "approve", user=ALICE)  # Slack can still deliver the click

    assert click.status == 200
    assert await bot.settled(run.run_id) == "success"
    assert (await bot.engine.get_run(run.run_id)).output == {"ok": True}
    await emu.wait_for(lambda: any(c.status == 503 for c in emu.calls("chat.update")), timeout=10)
    emu.web_api.faults.clear()  # Slack is back: the next run is shown as usual

    ack = await bot.command("run greet-user Ada")
    assert ack.status == 200
    greeted: list[Any] = await eventually(
        lambda: [r for r in bot.emu.messages(CHANNEL) if "greet-user" in r.text and "success" in r.text],
        timeout=10)
    assert len(greeted) == 1
