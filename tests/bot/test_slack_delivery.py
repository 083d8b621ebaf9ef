"""What a person must see in Slack gets there, with Slack behaving like the real one at its worst.

The emulator answers slowly, sends runs of 429 with ``Retry-After``, 5xx, timeouts and enforces Slack's
per-method rate limits; the bot paces itself (``THREADFLOW_SLACK_PACING`` on) and delivers from its outbox.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bot.delivery.service import REFUSED_CARD_RETRY
from bot.emulator import Message, SlackEmulator
from tests.bot.conftest import (
    ALICE,
    CHANNEL,
    RunningBot,
    StartBot,
    approval_messages,
    block_text,
    button_value,
    has_buttons,
    replies,
    root_for,
)
from tests.helpers import eventually
from tests.helpers.serve_process import ServeProcess

Json = dict[str, Any]

#: What a real Slack is like: pacing on in the bot, latency and rate limits in the emulator.
REAL = {"THREADFLOW_SLACK_PACING": True}


def is_card_post(params: Json) -> bool:
    """A ``chat.postMessage`` that posts an approval card (a thread reply with buttons)."""
    return bool(params.get("thread_ts")) and has_buttons({"blocks": params.get("blocks") or []})


def statuses(emu: SlackEmulator, method: str | None = None) -> list[int]:
    return [c.status for c in emu.calls(method)]


def root_says(emu: SlackEmulator, run_id: str, words: str) -> bool:
    root = root_for(emu, run_id)
    return root is not None and words in block_text(root)


async def start(bot: RunningBot, text: str, *, user: str = ALICE) -> str:
    """Start a run with ``/flow run ...``; returns its id once its root message is in the channel."""
    before = {m.ts for m in bot.emu.messages(CHANNEL)}
    ack = await bot.command(text, user=user)
    assert ack.status == 200, ack.body
    root = await bot.emu.wait_for(lambda: next((m for m in bot.emu.messages(CHANNEL) if m.ts not in before), None),
                                  timeout=30)
    run_id = root.text.split("(")[1].split(")")[0]
    await eventually(lambda: _started(bot, run_id), timeout=10)  # the root goes out just before the run starts
    return run_id


async def _started(bot: RunningBot, run_id: str) -> bool:
    return any(r.id == run_id for r in await bot.engine.list_runs(limit=100))


async def card_of(emu: SlackEmulator, run_id: str, timeout: float = 30) -> Message:
    return await emu.wait_for(lambda: next((m for m in approval_messages(emu) if button_value(m)["run_id"] == run_id),
                                           None), timeout=timeout)


@pytest.mark.parametrize("workflow", ["approval ship it", 'deploy-app "a Postgres-backed API for 10k users"'])
async def test_with_slow_chat_update_the_root_shows_waiting_for_approval_while_suspended(
    start_bot: StartBot, workflow: str
) -> None:
    bot = await start_bot(**REAL)
    bot.emu.realistic()
    bot.emu.slow("chat.update", 0.3)  # every edit takes 0.3 s, so edits pile up behind each other
    run_id = await start(bot, f"run {workflow}")
    await card_of(bot.emu, run_id)
    assert await bot.settled(run_id, ("suspended",), timeout=30) == "suspended"
    await bot.emu.wait_for(lambda: root_says(bot.emu, run_id, "waiting for approval"), timeout=15)
    assert bot.emu.rate_limited == 0


async def test_four_429s_on_the_approval_post_and_the_card_still_appears(start_bot: StartBot) -> None:
    bot = await start_bot(**REAL)
    bot.emu.realistic()
    bot.emu.fail_next("chat.postMessage", status=429, retry_after=1, times=4, when=is_card_post)
    run_id = await start(bot, "run approval ship it")
    card = await card_of(bot.emu, run_id, timeout=30)
    assert [c.status for c in bot.emu.calls("chat.postMessage") if is_card_post(c.params)] == [429] * 4 + [200]
    assert len([m for m in approval_messages(bot.emu) if button_value(m)["run_id"] == run_id]) == 1
    await bot.emu.click(card, "approve", user=ALICE)
    assert await bot.settled(run_id, timeout=30) == "success"


async def test_four_429s_on_the_final_update_and_the_root_still_ends_success(start_bot: StartBot) -> None:
    bot = await start_bot(**REAL)
    bot.emu.realistic()
    run_id = await start(bot, "run approval ship it")
    card = await card_of(bot.emu, run_id)

    def final_root_update(params: Json) -> bool:
        return params.get("ts") == root_for(bot.emu, run_id).ts and "success" in str(params.get("text"))  # type: ignore[union-attr]

    bot.emu.fail_next("chat.update", status=429, retry_after=1, times=4, when=final_root_update)
    await bot.emu.click(card, "approve", user=ALICE)
    assert await bot.settled(run_id, timeout=30) == "success"
    await bot.emu.wait_for(lambda: root_says(bot.emu, run_id, ":white_check_mark: success"), timeout=30)
    refused = [c for c in bot.emu.calls("chat.update") if c.status == 429]
    assert len(refused) == 4 and all("success" in c.params["text"] for c in refused)


async def test_one_chat_update_per_decision(bot: RunningBot) -> None:
    run_id = await start(bot, "run approval ship it")
    card = await card_of(bot.emu, run_id)
    await bot.emu.click(card, "approve", user=ALICE)
    assert await bot.settled(run_id) == "success"
    await bot.emu.wait_for(lambda: not has_buttons(bot.emu.message(card.ts) or card), timeout=10)
    await bot.idle()
    await eventually(lambda: not bot.bot.delivery.render_tasks)
    card_edits = [c for c in bot.emu.calls("chat.update") if c.params.get("ts") == card.ts]
    assert len(card_edits) == 1 and "Approved by" in card_edits[0].params["text"]


async def test_ten_runs_at_once_in_one_channel_make_no_429s_and_every_root_ends_final(start_bot: StartBot) -> None:
    bot = await start_bot(**REAL)
    bot.emu.realistic()
    names = [f"person{i}" for i in range(10)]
    acks = await asyncio.gather(*(bot.command(f"run greet-user name={name}") for name in names))
    assert all(a.status == 200 for a in acks)

    def all_final() -> bool:
        roots = bot.emu.messages(CHANNEL)
        return len(roots) == 10 and all(":white_check_mark: success" in block_text(r) for r in roots) and all(
            any("Run finished" in m.text for m in replies(bot.emu, r)) for r in roots)

    await bot.emu.wait_for(all_final, timeout=120)
    assert 429 not in statuses(bot.emu) and bot.emu.rate_limited == 0
    # Every run's root, its final edit and its "Run finished" reply: nothing posted twice.
    assert len(bot.emu.calls("chat.postMessage")) == 20


async def test_the_bot_killed_while_deliveries_are_pending_delivers_everything_after_restart(
    emu: SlackEmulator, tmp_path: Path
) -> None:
    serve = ServeProcess(emu, tmp_path)
    emu.bot_url = serve.url
    try:
        await serve.start()
        # Slack takes the root, then refuses every thread post for a while: the approval card stays pending.
        emu.fail_next("chat.postMessage", status=503, retry_after=None, times=1000, when=lambda p: bool(p.get("thread_ts")))
        ack = await emu.slash_command("/flow", "run approval ship it", user=ALICE)
        assert ack.status == 200
        root = await emu.wait_for(lambda: next(iter(emu.messages(CHANNEL)), None), timeout=15)
        run_id = root.text.split("(")[1].split(")")[0]

        def pending() -> int:
            with sqlite3.connect(tmp_path / "serve.db") as db:
                return int(db.execute("SELECT count(*) FROM slack_messages WHERE run_id = ? AND state = 'pending' "
                                      "AND kind = 'approval'", (run_id,)).fetchone()[0])

        await eventually(pending, timeout=15)
        await eventually(lambda: any(c.status == 503 for c in emu.calls("chat.postMessage")), timeout=15)
        await serve.kill()
        emu.clear_faults()  # Slack is fine again; nobody is delivering

        await serve.start()
        card = await card_of(emu, run_id, timeout=30)
        await emu.wait_for(lambda: root_says(emu, run_id, "waiting for approval"), timeout=15)
        await emu.click(card, "approve", user=ALICE)
        await emu.wait_for(lambda: any("Run finished" in m.text for m in replies(emu, root)), timeout=30)
        await emu.wait_for(lambda: root_says(emu, run_id, ":white_check_mark: success"), timeout=15)
        texts = [m.text for m in replies(emu, root)]
        assert len(texts) == 2 and "Approved by" in texts[0]  # one card (decided), one final reply: no duplicates
    finally:
        await serve.stop()


def is_root_post(params: Json) -> bool:
    return not params.get("thread_ts")


@pytest.mark.parametrize("fault", [{"status": 200, "delay": 2.5}, {"status": 503, "retry_after": None}],
                         ids=["no-answer", "5xx"])
async def test_a_root_message_slack_took_without_saying_so_is_found_and_its_run_started(start_bot: StartBot,
                                                                                        fault: Json) -> None:
    # Slack posts the run's root message but its answer is lost: the run starts in that message's thread, rather
    # than the person being told nothing started while a root stays in the channel, "pending" for good.
    bot = await start_bot(THREADFLOW_SLACK_TIMEOUT=1)
    bot.emu.fail_next("chat.postMessage", apply=True, when=is_root_post, **fault)
    run_id = await start(bot, "run approval ship it")
    card = await card_of(bot.emu, run_id)
    [root] = bot.emu.messages(CHANNEL)
    assert run_id in root.text and card.thread_ts == root.ts
    assert bot.emu.calls("conversations.history") and not bot.emu.ephemerals(ALICE)
    await bot.emu.click(card, "approve", user=ALICE)
    assert await bot.settled(run_id) == "success"
    await bot.emu.wait_for(lambda: root_says(bot.emu, run_id, ":white_check_mark: success"), timeout=15)


async def test_a_post_whose_answer_was_lost_is_found_by_its_delivery_id_not_posted_twice(bot: RunningBot) -> None:
    # Slack takes the approval card, but its answer never arrives (the client times out).
    bot.emu.fail_next("chat.postMessage", status=200, delay=bot.settings.slack_timeout + 1, apply=True,
                      when=is_card_post)
    run_id = await start(bot, "run approval ship it")
    card = await card_of(bot.emu, run_id)
    row = await eventually(lambda: _card_sent(bot, run_id), timeout=bot.settings.slack_timeout + 15)
    assert row.ts == card.ts
    assert len([m for m in approval_messages(bot.emu) if button_value(m)["run_id"] == run_id]) == 1
    assert bot.emu.calls("conversations.replies")


async def test_a_card_edited_while_its_lost_post_was_in_flight_shows_the_edit_once_found(bot: RunningBot) -> None:
    # Slack takes the approval card, its answer is lost, and the run is canceled before the sender looks for the
    # post: what Slack has is the card with buttons, not the withdrawn card the outbox now holds.
    bot.emu.fail_next("chat.postMessage", status=200, delay=bot.settings.slack_timeout + 1, apply=True,
                      when=is_card_post)
    run_id = await start(bot, "run approval ship it")
    card = await card_of(bot.emu, run_id)
    await bot.command(f"cancel {run_id}")
    assert await bot.settled(run_id) == "canceled"
    row = await eventually(lambda: _card_sent(bot, run_id), timeout=bot.settings.slack_timeout + 15)
    assert row.ts == card.ts and row.sent_version == row.version
    withdrawn = bot.emu.message(card.ts)
    assert withdrawn is not None and not has_buttons(withdrawn)
    assert f"No decision needed any more: the run was canceled by <@{ALICE}>." in block_text(withdrawn)
    assert len([c for c in bot.emu.calls("chat.postMessage") if is_card_post(c.params)]) == 1


async def test_a_card_post_slack_took_but_answered_5xx_is_found_not_posted_twice(bot: RunningBot) -> None:
    # A gateway's 503 after Slack posted the card: the answer does not prove nothing was posted.
    bot.emu.fail_next("chat.postMessage", status=503, retry_after=None, apply=True, when=is_card_post)
    run_id = await start(bot, "run approval ship it")
    card = await card_of(bot.emu, run_id)
    row = await eventually(lambda: _card_sent(bot, run_id), timeout=15)
    assert row.ts == card.ts and bot.emu.calls("conversations.replies")
    await bot.emu.click(card, "approve", user=ALICE)
    assert await bot.settled(run_id) == "success"
    await bot.emu.wait_for(lambda: "Approved by" in block_text(bot.emu.message(card.ts) or card), timeout=15)
    assert [m for m in approval_messages(bot.emu) if button_value(m)["run_id"] == run_id] == []  # no live duplicate
    assert len([c for c in bot.emu.calls("chat.postMessage") if is_card_post(c.params)]) == 1


async def test_a_decided_card_slack_will_not_edit_yet_shows_its_decision_before_the_final_reply(
    bot: RunningBot,
) -> None:
    run_id = await start(bot, "run approval ship it")
    card = await card_of(bot.emu, run_id)
    bot.emu.fail_next("chat.update", status=503, retry_after=None, times=2, when=lambda p: p.get("ts") == card.ts)
    await bot.emu.click(card, "approve", user=ALICE)
    assert await bot.settled(run_id) == "success"
    root = root_for(bot.emu, run_id)
    assert root is not None
    await bot.emu.wait_for(lambda: any("Run finished" in m.text for m in replies(bot.emu, root)), timeout=15)
    calls = bot.emu.calls()
    final = next(i for i, c in enumerate(calls) if c.method == "chat.postMessage" and "Run finished" in str(
        c.params.get("text")))
    edited = next(i for i, c in enumerate(calls) if c.method == "chat.update" and c.status == 200
                  and c.params.get("ts") == card.ts)
    assert edited < final  # the thread never says the run finished under a card that still shows its buttons
    assert [c.status for c in calls if c.method == "chat.update" and c.params.get("ts") == card.ts][:2] == [503, 503]


async def _card_sent(bot: RunningBot, run_id: str) -> Any:
    row = await bot.bot.store.approval_message(run_id, "approve")
    return row if row is not None and row.state == "sent" else None


async def test_an_approval_card_deleted_in_slack_is_posted_again(bot: RunningBot) -> None:
    run_id = await start(bot, "run approval ship it")
    card = await card_of(bot.emu, run_id)
    await bot.emu.delete_as_user(card.ts)
    again = await bot.emu.wait_for(lambda: next((m for m in approval_messages(bot.emu) if m.ts != card.ts), None),
                                   timeout=10)
    assert button_value(again)["run_id"] == run_id
    await bot.emu.click(again, "approve", user=ALICE)
    assert await bot.settled(run_id) == "success"


async def test_a_card_slack_refuses_as_too_long_is_sent_shorter_with_its_buttons(bot: RunningBot) -> None:
    bot.emu.fail_next("chat.postMessage", status=200, error="msg_too_long", retry_after=None, when=is_card_post)
    run_id = await start(bot, "run approval ship it")
    card = await card_of(bot.emu, run_id)
    assert has_buttons(card) and "msg_too_long" in [c.response.get("error") for c in bot.emu.calls("chat.postMessage")
                                                     if c.response]


async def test_a_rate_limited_root_post_says_slack_is_rate_limiting_not_invite_me(bot: RunningBot) -> None:
    bot.emu.fail_next("chat.postMessage", status=429, retry_after=60, times=10)
    await bot.command("run approval ship it")
    told = await bot.emu.wait_for(lambda: bot.emu.ephemerals(ALICE), timeout=10)
    assert "rate-limiting" in told[0].text and "/invite" not in told[0].text
    assert await bot.engine.list_runs() == []


async def test_slack_unavailable_on_the_root_post_says_so_not_invite_me(bot: RunningBot) -> None:
    bot.emu.fail_next("chat.postMessage", status=503, retry_after=None, times=50)
    await bot.command("run approval ship it")
    told = await bot.emu.wait_for(lambda: bot.emu.ephemerals(ALICE), timeout=20)
    assert "having trouble" in told[0].text and "/invite" not in told[0].text
    assert await bot.engine.list_runs() == []


async def test_a_refused_post_ends_in_a_log_line_and_a_metric_and_blocks_nothing(bot: RunningBot,
                                                                                caplog: pytest.LogCaptureFixture) -> None:
    bot.emu.fail_next("chat.postMessage", status=200, error="is_archived", retry_after=None,
                      when=lambda p: "Run finished" in str(p.get("text")))
    run_id = await start(bot, "run greet-user name=Ada")
    assert await bot.settled(run_id) == "success"
    await bot.emu.wait_for(lambda: root_says(bot.emu, run_id, "success"), timeout=10)
    await eventually(lambda: not bot.bot.delivery.render_tasks)
    assert any("is_archived" in r.getMessage() and "archived" in r.getMessage() for r in caplog.records)
    assert bot.bot.metrics.slack_delivery_failures.labels("is_archived")._value.get() == 1


async def retry_refused_cards_now(bot: RunningBot) -> None:
    """One sweep that puts refused cards back in the queue at once (in production: after a few minutes); the
    background sweeper, which runs every couple of seconds, keeps waiting the usual time meanwhile."""
    bot.bot.delivery.refused_card_retry = 0.0
    try:
        await bot.bot.delivery.sweep()
    finally:
        bot.bot.delivery.refused_card_retry = REFUSED_CARD_RETRY


async def test_an_approval_card_refused_for_good_is_told_to_who_started_the_run_once(bot: RunningBot) -> None:
    bot.emu.fail_next("chat.postMessage", status=200, error="restricted_action", retry_after=None, times=2,
                      when=is_card_post)
    run_id = await start(bot, "run approval ship it")
    told = await bot.emu.wait_for(lambda: [e for e in bot.emu.ephemerals(ALICE) if run_id in e.text], timeout=15)
    assert "restricted_action" in told[0].text and f"/flow status {run_id}" in told[0].text
    assert bot.bot.metrics.slack_delivery_failures.labels("restricted_action")._value.get() == 1

    # The sweeper puts the card back in the queue (after a few minutes; here at once) and the run's live renderer
    # tries it again; refused the same way again, nobody is told twice.
    await retry_refused_cards_now(bot)
    await eventually(lambda: bot.bot.metrics.slack_delivery_failures.labels("restricted_action")._value.get() == 2,
                     timeout=15)
    await bot.idle()
    assert len([e for e in bot.emu.ephemerals(ALICE) if run_id in e.text]) == 1
    assert not approval_messages(bot.emu)

    # Once Slack takes it (the channel's setting changed), the waiting run has its card.
    await retry_refused_cards_now(bot)
    card = await card_of(bot.emu, run_id, timeout=15)
    await bot.emu.click(card, "approve", user=ALICE)
    assert await bot.settled(run_id) == "success"


async def test_an_approval_card_the_bot_cannot_post_in_its_channel_tells_nobody_in_it(bot: RunningBot) -> None:
    bot.emu.fail_next("chat.postMessage", status=200, error="not_in_channel", retry_after=None, when=is_card_post)
    run_id = await start(bot, "run approval ship it")
    await eventually(lambda: bot.bot.metrics.slack_delivery_failures.labels("not_in_channel")._value.get() == 1,
                     timeout=15)
    await bot.idle()
    assert not bot.emu.calls("chat.postEphemeral") and await bot.engine.get_run(run_id)
