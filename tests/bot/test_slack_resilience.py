"""When Slack or the bot misbehaves: rate limits, outages, restarts and a killed ``threadflow serve``."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.blocks import shows_step
from bot.emulator import Message, SlackEmulator
from bot.runtime import build_engine
from tests.bot.conftest import (
    ALICE,
    CHANNEL,
    SIGNING_SECRET,
    TOKEN,
    RunningBot,
    StartBot,
    SuspendedRun,
    approval_messages,
    block_text,
    button_value,
    has_buttons,
    make_settings,
    replies,
    root_for,
    suspend_approval,
)
from tests.helpers import eventually
from tests.helpers.pg_wire import commit_cutter
from tests.helpers.serve_process import ServeProcess
from workflows import Engine


def decided_and_finished(emu: SlackEmulator, approval: Message, root: Message) -> bool:
    """The approval message shows Alice's decision without buttons, and the thread has the result."""
    current = emu.message(approval.ts, approval.channel)
    return (current is not None and not has_buttons(current) and f"Approved by <@{ALICE}>" in block_text(current)
            and any("Run finished" in m.text for m in replies(emu, root)))


def statuses(emu: SlackEmulator, method: str) -> list[int]:
    return [c.status for c in emu.calls(method)]


async def test_rate_limited_calls_are_retried_and_the_run_completes(bot: RunningBot) -> None:
    emu = bot.emu
    emu.fail_next("chat.postMessage", status=429, retry_after=0)  # the root message
    run = await suspend_approval(bot)
    assert statuses(emu, "chat.postMessage")[:2] == [429, 200]

    emu.fail_next("chat.update", status=429, retry_after=0)
    emu.fail_next("chat.postMessage", status=429, retry_after=0)  # the result reply
    await emu.click(run.approval, "approve", user=ALICE)
    assert await bot.settled(run.run_id) == "success"
    await emu.wait_for(lambda: decided_and_finished(emu, run.approval, run.root), timeout=10)
    await emu.wait_for(lambda: (m := root_for(emu, run.run_id)) is not None and "success" in m.text, timeout=5)
    assert statuses(emu, "chat.update").count(429) == 1 and statuses(emu, "chat.postMessage").count(429) == 2

    # Retries never duplicate a post: one root, one approval request, one result.
    assert len(emu.messages(CHANNEL)) == 1
    texts = [m.text for m in replies(emu, run.root)]
    assert len(texts) == 2 and "Run finished" in texts[1]


async def test_a_long_slack_outage_never_fails_the_run_and_everything_lands_when_it_ends(bot: RunningBot) -> None:
    emu = bot.emu
    run = await suspend_approval(bot)
    for method in ("chat.update", "chat.postMessage", "chat.postEphemeral"):
        emu.fail_next(method, status=503, retry_after=None, times=5)
    await emu.click(run.approval, "approve", user=ALICE)
    assert await bot.settled(run.run_id) == "success"
    assert (await bot.engine.get_run(run.run_id)).output == {"ok": True}
    # Slack answered 503 for a while; the outbox kept trying (with backoff) until it took everything.
    await emu.wait_for(lambda: decided_and_finished(emu, run.approval, run.root), timeout=40)
    await emu.wait_for(lambda: (m := root_for(emu, run.run_id)) is not None and "success" in m.text, timeout=40)
    assert 503 in statuses(emu, "chat.update") and 503 in statuses(emu, "chat.postMessage")
    assert [m.text for m in replies(emu, run.root)] == [f":white_check_mark: Approved by <@{ALICE}>",
                                                         ":white_check_mark: *Run finished.*"]


async def test_a_run_is_not_started_when_the_bot_cannot_post(bot: RunningBot) -> None:
    emu = bot.emu
    emu.fail_next("chat.postMessage", status=200, error="not_in_channel", retry_after=None)
    await bot.command("run approval")
    told = await emu.wait_for(lambda: emu.ephemerals(ALICE), timeout=5)
    assert "I could not post in this channel" in told[0].text and "/invite @threadflow" in told[0].text
    await bot.idle()
    assert await bot.engine.list_runs() == []


async def test_a_new_bot_on_the_same_database_finishes_a_run_started_by_the_old_one(start_bot: StartBot) -> None:
    first = await start_bot()
    emu = first.emu
    run = await suspend_approval(first)
    await first.stop()

    second = await start_bot()
    assert second.port != first.port and emu.bot_url == second.url
    await emu.click(run.approval, "approve", user=ALICE)  # a button the first bot posted
    assert await second.settled(run.run_id) == "success"
    await emu.wait_for(lambda: decided_and_finished(emu, run.approval, run.root), timeout=5)
    await emu.wait_for(lambda: (m := root_for(emu, run.run_id)) is not None and "success" in m.text, timeout=5)
    posted = [m.text for m in replies(emu, run.root)]  # nothing posted twice
    assert posted == [f":white_check_mark: Approved by <@{ALICE}>", ":white_check_mark: *Run finished.*"]
    assert {c.token for c in emu.calls("chat.update")} == {TOKEN}


async def card_posted_then_crashed(start_bot: StartBot, tmp_path: Path, *,
                                   attempt_began: float = -0.5) -> tuple[SlackEmulator, SuspendedRun]:
    """A bot suspends a run at its approval card and stops, and the outbox is left as a crash leaves it between Slack
    taking the card and recording it: no ``ts``, the post's attempt begun ``attempt_began`` s from the card's ``ts``."""
    first = await start_bot()
    run = await suspend_approval(first)
    await first.stop()
    with sqlite3.connect(tmp_path / "threadflow.db") as db:
        db.execute("UPDATE slack_messages SET ts = NULL, sent_version = 0, state = 'pending', attempt_started_at = ? "
                   "WHERE key = ?", (float(run.approval.ts) + attempt_began, f"approval:{run.run_id}:approve"))
    db.close()
    return first.emu, run


async def test_an_approval_posted_but_not_recorded_is_not_posted_again(start_bot: StartBot, tmp_path: Path) -> None:
    emu, run = await card_posted_then_crashed(start_bot, tmp_path)

    second = await start_bot()
    await eventually(lambda: _sent(second, run.run_id))
    recorded = await second.bot.store.approval_message(run.run_id, "approve")
    assert recorded is not None and recorded.ts == run.approval.ts
    assert len(approval_messages(emu)) == 1  # the one the first bot posted, found again by its delivery id
    assert emu.calls("conversations.replies")  # found by looking, not by guessing
    await emu.click(run.approval, "approve", user=ALICE)
    assert await second.settled(run.run_id) == "success"
    await emu.wait_for(lambda: decided_and_finished(emu, run.approval, run.root), timeout=5)
    assert len(replies(emu, run.root)) == 2


async def test_a_click_on_a_card_posted_but_not_recorded_decides_before_the_card_is_found_again(
    start_bot: StartBot, tmp_path: Path
) -> None:
    """The process died between Slack taking the approval card and recording where it is, and the click comes before
    the new process has found the card again (here Slack rate-limits that look-up): the click shows where the card
    is, a message this app posted showing this run's step, so it decides instead of being told the button does not
    match its message. The card is not posted a second time."""
    emu, run = await card_posted_then_crashed(start_bot, tmp_path)
    for _ in range(5):
        emu.fail_next("conversations.replies", status=429, retry_after=30)

    second = await start_bot()
    await emu.click(run.approval, "approve", user=ALICE)
    assert await second.settled(run.run_id) == "success"
    await emu.wait_for(lambda: decided_and_finished(emu, run.approval, run.root), timeout=5)
    recorded = await second.bot.store.approval_message(run.run_id, "approve")
    assert recorded is not None and recorded.ts == run.approval.ts
    assert [m.ts for m in replies(emu, run.root) if shows_step(m.to_api(), run.run_id, "approve")] == [run.approval.ts]
    assert not emu.calls("chat.postEphemeral")  # nobody was told the button does not match


async def test_a_card_found_again_after_a_decision_taken_meanwhile_shows_the_decision(
    start_bot: StartBot, tmp_path: Path
) -> None:
    """The card was posted, the bot died before recording where, and someone decided from the command line while no
    bot ran. The bot started next plans the card's decided content, then finds the old card by its delivery id:
    what it found is the old content (buttons and all), so it edits it to the decision instead of taking it as sent."""
    emu, run = await card_posted_then_crashed(start_bot, tmp_path)
    cli = build_engine(make_settings(emu, tmp_path / "threadflow.db"))  # as `threadflow approve` with no bot up
    try:
        await (await cli.resume(run.run_id, data={"approved": True}, by=ALICE)).result(timeout=10)
    finally:
        await cli.close()

    await start_bot()
    await emu.wait_for(lambda: decided_and_finished(emu, run.approval, run.root), timeout=10)
    assert [m.ts for m in replies(emu, run.root) if shows_step(m.to_api(), run.run_id, "approve")] == [run.approval.ts]
    assert emu.calls("conversations.replies")  # found by looking, not posted again


@pytest.mark.parametrize("shown_as", ["posted by another app", "posted by no app", "posted before the attempt"])
async def test_a_click_that_may_not_be_on_the_unrecorded_card_decides_nothing(
    start_bot: StartBot, tmp_path: Path, shown_as: str
) -> None:
    """The same state (the card's place not recorded yet), and a clicked message that shows the run's step but may not
    be that post: Slack says another app posted it, or says no app did, or it is older than the post's attempt. It is
    not taken for the card, and the click is refused as before."""
    emu, run = await card_posted_then_crashed(
        start_bot, tmp_path, attempt_began=5.0 if shown_as == "posted before the attempt" else -0.5)
    for _ in range(5):
        emu.fail_next("conversations.replies", status=429, retry_after=30)
    shown = emu.message(run.approval.ts, run.approval.channel)
    assert shown is not None
    if shown_as != "posted before the attempt":  # the same blocks at that place, but Slack names another app or none
        shown.app_id = "A0OTHERAPP" if shown_as == "posted by another app" else None

    second = await start_bot()
    await emu.click(run.approval, "approve", user=ALICE)
    await emu.wait_for(lambda: any("does not match" in str(c.params.get("text")) for c in emu.calls("chat.postEphemeral")),
                       timeout=5)
    assert (await second.bot.engine.get_run(run.run_id)).status == "suspended"
    recorded = await second.bot.store.approval_message(run.run_id, "approve")
    assert recorded is not None and recorded.ts is None


async def test_an_approval_click_whose_replay_record_commit_answer_is_lost_is_not_refused_as_a_replay(
    db_url: str, start_bot: StartBot
) -> None:
    """The bot records every signed Slack request (``slack_seen_events``) before handling it. When the COMMIT of that
    record reached PostgreSQL but its answer did not reach the bot (a failover, a proxy or NAT restart at that moment),
    the commit queue runs the insert again and finds the row it wrote itself: that is still the one delivery of the
    click, not a replay to refuse with 401 (the decision dropped, the run waiting on)."""
    if not db_url.startswith("postgresql"):
        pytest.skip("a commit whose answer a proxy in front of PostgreSQL loses")
    async with commit_cutter(db_url) as (cutter, proxied):
        running = await start_bot(THREADFLOW_DATABASE_URL=proxied)
        try:
            run = await suspend_approval(running)
            cutter.hold(b"slack_seen_events")  # the click's replay record, on its way to the server
            clicking = asyncio.ensure_future(running.emu.click(run.approval, "approve", user=ALICE))
            await asyncio.wait_for(cutter.held.wait(), 5)
            cutter.arm(1)  # its COMMIT happens; the answer is lost
            cutter.release()
            click = await clicking
            assert cutter.cut == 1  # the fault really hit the record's commit
            status = await running.settled(run.run_id, timeout=5)
        finally:
            cutter.release()
            await running.stop()
    assert click.status == 200, f"Slack's one delivery of the click was answered {click.status}: {click.body}"
    assert status == "success", f"approved once, the run is {status}"


async def _sent(bot: RunningBot, run_id: str) -> bool:
    card = await bot.bot.store.approval_message(run_id, "approve")
    return card is not None and card.state == "sent"


# -- a real ``threadflow serve`` process -----------------------------------------------------------------


@pytest.fixture
async def serve(emu: SlackEmulator, tmp_path: Path) -> AsyncIterator[ServeProcess]:
    process = ServeProcess(emu, tmp_path)
    emu.bot_url = process.url
    yield process
    await process.stop()


async def run_status(database_url: str, run_id: str) -> Any:
    """Read the run from the database as another process would (without executing anything)."""
    engine = Engine(database_url, execute=False)
    try:
        return await engine.get_run(run_id)
    finally:
        await engine.close()


async def test_a_killed_serve_process_resumes_the_run_after_restart(emu: SlackEmulator, serve: ServeProcess) -> None:
    await serve.start()
    ack = await emu.slash_command("/flow", "run approval ship it from a process", user=ALICE)
    assert ack.status == 200
    approval = await emu.wait_for(lambda: next(iter(approval_messages(emu)), None), timeout=10)
    run_id = button_value(approval)["run_id"]
    root = root_for(emu, run_id)
    assert root is not None
    assert (await run_status(serve.database_url, run_id)).status == "suspended"

    await serve.kill()
    await serve.start()
    click = await emu.click(approval, "approve", user=ALICE)
    assert click.status == 200
    await emu.wait_for(lambda: decided_and_finished(emu, approval, root), timeout=10)
    assert [m.ts for m in replies(emu, root) if shows_step(m.to_api(), run_id, "approve")] == [approval.ts]
    record = await run_status(serve.database_url, run_id)
    assert record.status == "success" and record.output == {"ok": True}
    assert await serve.stop() == 0  # SIGTERM: a clean shutdown

    logs = serve.output()
    assert "threadflow is listening on http://127.0.0.1:" in logs
    assert TOKEN not in logs and SIGNING_SECRET not in logs
    assert TOKEN not in json.dumps(emu.snapshot()) and SIGNING_SECRET not in json.dumps(emu.snapshot())


async def test_a_restarted_serve_process_renders_at_once_what_the_killed_one_was_rendering(
    emu: SlackEmulator, tmp_path: Path
) -> None:
    """The killed process held its runs' render leases (renewed while it lived); the one started after it on the same
    host does not wait for them to run out: that process no longer exists, so its leases are handed back at start.
    Here a lease lasts 30 s (``THREADFLOW_POLL_INTERVAL=10``), longer than the test waits."""
    serve = ServeProcess(emu, tmp_path, THREADFLOW_POLL_INTERVAL=10)
    emu.bot_url = serve.url
    try:
        await serve.start()
        await emu.slash_command("/flow", "run approval ship it from a process", user=ALICE)
        approval = await emu.wait_for(lambda: next(iter(approval_messages(emu)), None), timeout=10)
        run_id = button_value(approval)["run_id"]
        root = root_for(emu, run_id)
        assert root is not None
        with sqlite3.connect(tmp_path / "serve.db") as db:
            [(renderer, expires)] = db.execute(
                "SELECT renderer, renderer_expires_at FROM slack_runs WHERE run_id = ?", (run_id,)).fetchall()
        db.close()
        assert renderer is not None and expires > time.time() + 10  # the killed process's lease outlives the wait

        await serve.kill()
        await serve.start()
        await emu.click(approval, "approve", user=ALICE)
        await emu.wait_for(lambda: decided_and_finished(emu, approval, root), timeout=10)
        assert "handed back" in serve.output() and renderer in serve.output()
    finally:
        await serve.stop()
