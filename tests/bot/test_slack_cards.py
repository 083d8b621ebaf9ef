"""What approval cards and run messages show when a run's data did not come from the bot: who is mentioned,
what a canceled run's checklist says, and Slack's size limits.

Runs are started from Slack (``/flow run``) through the emulator and the real bolt app; workflows come from
``tests.helpers.content_flows``. Slack reads ``<@X>`` in mrkdwn as a mention of user X: a card field whose
value merely looks like an id (``URGENT``, ``USD``) or a person's name typed on the CLI (``--by Walter``) must be
shown as text, not as a mention of a user that does not exist ("@Unknown user" / "<@Walter>" in Slack). The
emulator refuses a message over Slack's limits as Slack does (``msg_too_long``, ``invalid_blocks``). The root's
status follows a run that sleeps or waits for an event and then works again (``tests.helpers.nap_flows``).
"""

from __future__ import annotations

import asyncio
import json

from bot.emulator import Message
from tests.bot.conftest import CHANNEL, RunningBot, StartBot, block_text, has_buttons, replies, root_for
from tests.helpers import eventually
from tests.helpers.leaky_flows import STEP_TOKEN, refusing_api
from tests.helpers.slack_limits import limit_refusals

FLOWS = "tests.helpers.content_flows"


async def run_from_slack(bot: RunningBot, workflow: str, data: dict[str, object]) -> str:
    """``/flow run WORKFLOW {json}``; returns the new run's id."""
    before = {r.id for r in await bot.engine.list_runs()}
    ack = await bot.command(f"run {workflow} {json.dumps(data)}")
    assert ack.status == 200, ack.body

    async def new() -> list[str]:
        return [r.id for r in await bot.engine.list_runs() if r.id not in before]

    return str((await eventually(new))[0])


async def card_of(bot: RunningBot, run_id: str) -> Message:
    root = await bot.emu.wait_for(lambda: root_for(bot.emu, run_id), timeout=5)
    found: Message = await bot.emu.wait_for(
        lambda: next((m for m in replies(bot.emu, root) if has_buttons(m)), None), timeout=5)
    return found


async def test_card_values_that_merely_look_like_user_ids_are_not_mentions(start_bot: StartBot) -> None:
    bot = await start_bot(THREADFLOW_WORKFLOWS=FLOWS)
    run_id = await run_from_slack(bot, "card", {"card": {
        "title": "Refund needed", "priority": "URGENT", "currency": "USD", "timezone": "UTC", "level": "WARNING",
        "requested_by": "U0ALICE",
    }})
    card = await card_of(bot, run_id)
    shown = block_text(card)
    assert "<@U0ALICE>" in shown  # a real user id is still a mention
    for word in ("URGENT", "USD", "UTC", "WARNING"):
        assert f"<@{word}>" not in shown, shown
        assert word in shown


async def test_a_decision_made_on_the_cli_by_name_is_not_shown_as_a_broken_mention(start_bot: StartBot) -> None:
    """``threadflow resume RUN --by Walter`` (the CLI's ``--by`` is free text, "cli" by default)."""
    bot = await start_bot(THREADFLOW_WORKFLOWS=FLOWS)
    run_id = await run_from_slack(bot, "card", {"card": {"title": "Ship it"}})
    card = await card_of(bot, run_id)
    await bot.engine.resume(run_id, data={"approved": True}, by="Walter")
    assert await bot.settled(run_id) == "success"

    def decided() -> Message | None:
        msg = bot.emu.message(card.ts, card.channel)
        return msg if msg is not None and not has_buttons(msg) else None

    shown = block_text(await bot.emu.wait_for(decided, timeout=5))
    assert "Approved by" in shown
    assert "<@Walter>" not in shown, shown  # Slack shows a mention of a user that does not exist
    assert "Walter" in shown


async def test_a_run_canceled_on_the_cli_by_name_is_not_shown_as_a_broken_mention(start_bot: StartBot) -> None:
    """``threadflow cancel RUN --by William``: the root message and the thread's final reply say who."""
    bot = await start_bot(THREADFLOW_WORKFLOWS=FLOWS)
    run_id = await run_from_slack(bot, "card", {"card": {"title": "Ship it"}})
    await card_of(bot, run_id)
    await bot.engine.cancel(run_id, by="William")
    root = await bot.emu.wait_for(
        lambda: (m := root_for(bot.emu, run_id)) is not None and "canceled" in m.text and m, timeout=5)
    reply = await bot.emu.wait_for(
        lambda: next((m for m in replies(bot.emu, root) if "Run canceled" in m.text), None), timeout=5)
    for msg in (bot.emu.message(root.ts, CHANNEL), reply):
        assert msg is not None
        assert "<@William>" not in block_text(msg), block_text(msg)


async def test_a_canceled_runs_checklist_does_not_say_a_step_still_waits_for_approval(start_bot: StartBot) -> None:
    """The root message of a run canceled while its step waited: status "canceled", and its checklist line must
    not go on saying the step is waiting for approval (its card says no decision is needed any more)."""
    bot = await start_bot(THREADFLOW_WORKFLOWS=FLOWS)
    run_id = await run_from_slack(bot, "card", {"card": {"title": "Ship it"}})
    card = await card_of(bot, run_id)
    await bot.engine.cancel(run_id, by="U0BOB")
    withdrawn = await bot.emu.wait_for(
        lambda: (m := bot.emu.message(card.ts, card.channel)) is not None and not has_buttons(m) and m, timeout=5)
    assert "No decision needed any more" in block_text(withdrawn)
    root = await bot.emu.wait_for(
        lambda: (m := root_for(bot.emu, run_id)) is not None and "canceled" in m.text and m, timeout=5)
    assert "waiting for approval" not in block_text(root), block_text(root)


async def test_an_approval_card_with_a_long_title_stays_within_slacks_text_limit(start_bot: StartBot) -> None:
    """A step suspending with a long title (an agent's summary used as the title, say): the card's ``text``
    (the notification) is the whole escaped title, 125,000 characters here; Slack takes at most 40,000 (``msg_too_long``)."""
    bot = await start_bot(THREADFLOW_WORKFLOWS=FLOWS)
    run_id = await run_from_slack(bot, "card", {"card": {"title": "Deploy <prod> & db"}, "repeat": 7000})
    card = await card_of(bot, run_id)
    assert "Deploy" in block_text(card)
    assert limit_refusals(bot.emu) == []


async def test_clipped_text_does_not_end_in_half_an_entity(start_bot: StartBot) -> None:
    """Text is escaped (``<`` becomes ``&lt;``) and then clipped: the cut may fall inside an entity, and Slack then
    shows the pieces (``&l…``) instead of a character."""
    bot = await start_bot(THREADFLOW_WORKFLOWS=FLOWS)
    run_id = await run_from_slack(bot, "echo", {"text": "<", "repeat": 3000})
    assert await bot.settled(run_id) == "success"
    root = await bot.emu.wait_for(lambda: root_for(bot.emu, run_id), timeout=5)
    reply = await bot.emu.wait_for(
        lambda: next((m for m in replies(bot.emu, root) if "Run finished" in m.text), None), timeout=5)
    shown = block_text(reply)
    body = shown.split("```")[1]
    assert body.rstrip("…").endswith("&lt;"), body[-20:]


async def test_a_token_in_a_failed_steps_error_is_not_posted_in_the_slack_thread(start_bot: StartBot) -> None:
    """A step's library names the URL it called, token included (``?token=``): the ":x: Run failed" reply and
    the root's checklist say what failed, never the token (it would be posted to the whole channel)."""
    bot = await start_bot(THREADFLOW_WORKFLOWS="tests.helpers.leaky_flows")
    async with refusing_api() as api:
        run_id = await run_from_slack(bot, "sync-users", {"api": api})
        assert await bot.settled(run_id) == "failed"
    root = await bot.emu.wait_for(lambda: root_for(bot.emu, run_id), timeout=5)
    failed = await bot.emu.wait_for(
        lambda: next((m for m in replies(bot.emu, root) if "Run failed" in block_text(m)), None), timeout=10)
    root = await bot.emu.wait_for(
        lambda: (m := root_for(bot.emu, run_id)) is not None and "failed" in m.text and m, timeout=5)
    assert "users.list" in block_text(failed)  # the reply says what failed...
    shown = "\n".join(block_text(m) for m in [root, *replies(bot.emu, root)])
    assert STEP_TOKEN not in shown  # ...without the token


async def root_status_while_step_runs(bot: RunningBot, run_id: str, step: str) -> str:
    """The root's *Status:* line while the run executes ``step`` (after its ``step.started``, re-rendered since)."""

    async def started() -> bool | None:
        events = (await bot.engine.details(run_id)).events
        return any(e.type == "step.started" and e.data.get("step_id") == step for e in events) or None

    await eventually(started, timeout=8)
    assert (await bot.engine.get_run(run_id)).status == "running"
    await asyncio.sleep(1.0)  # the progress interval is 0.05 s: the root has been re-rendered by now
    root = root_for(bot.emu, run_id)
    assert root is not None
    return next(line for line in block_text(bot.emu.message(root.ts, root.channel)).splitlines() if "Status:" in line)


async def test_the_root_message_says_running_again_once_a_sleep_ends(start_bot: StartBot) -> None:
    """Waking a sleeping run writes no event of its own: its first ``step.started`` marks it running again (a root
    that went on saying :zzz: waiting while the step worked told people the run was stuck)."""
    bot = await start_bot(THREADFLOW_WORKFLOWS="tests.helpers.nap_flows")
    run_id = await run_from_slack(bot, "nap-then-work", {})
    status = await root_status_while_step_runs(bot, run_id, "work")
    assert "waiting" not in status.lower() and "running" in status.lower(), status


async def test_the_root_message_says_running_again_once_the_awaited_event_arrives(start_bot: StartBot) -> None:
    bot = await start_bot(THREADFLOW_WORKFLOWS="tests.helpers.nap_flows")
    run_id = await run_from_slack(bot, "wait-then-work", {})
    await bot.settled(run_id, ("waiting",))
    await bot.engine.send_event(run_id, "go", {"ok": True})
    status = await root_status_while_step_runs(bot, run_id, "work-on-event")
    assert "waiting" not in status.lower() and "running" in status.lower(), status
