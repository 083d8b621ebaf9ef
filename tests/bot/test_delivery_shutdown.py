"""Shutting the bot down while it is busy: every renderer stops when it is cancelled, and work already acked to Slack
(a run being started) is given a moment to finish."""

from __future__ import annotations

import asyncio

from tests.bot.conftest import ALICE, CHANNEL, StartBot, approval_messages, suspend_approval


async def test_a_renderer_woken_as_the_shutdown_cancels_it_still_stops(start_bot: StartBot) -> None:
    # Edits at most every 30 s: the root's edit after the approval card waits, so the renderer waits for its
    # wake-up with a timeout, the case asyncio.wait_for (Python 3.11) got wrong: when the wake-up (an event,
    # a nudge) and the cancel came in the same turn of the loop, the renderer swallowed the cancel and went on
    # rendering, and DeliveryService.close() waited for it until the run ended (forever, for a waiting run).
    bot = await start_bot(THREADFLOW_PROGRESS_INTERVAL=30.0)
    run = await suspend_approval(bot)
    await asyncio.sleep(0.3)  # the renderer has delivered what was due and waits
    renderer = bot.bot.delivery.render_tasks[run.run_id]
    bot.bot.delivery.nudge(run.run_id)
    renderer.cancel()
    done, _ = await asyncio.wait({renderer}, timeout=5)
    if not done:
        renderer.cancel()  # a second cancel reaches it: leave nothing running behind the failure
    assert done, "the renderer swallowed the cancel and kept rendering"
    assert renderer.cancelled()


async def test_a_run_being_started_as_the_bot_stops_is_started_not_lost(start_bot: StartBot) -> None:
    # The command is acked (Slack will not send it again) and its root message is on its way when the bot is told to
    # stop: the start is given its moment, so the run exists and a restarted bot carries it on. Cancelled at once,
    # the command was lost without a word (or its root message left in the channel with no run).
    bot = await start_bot()
    bot.emu.slow("chat.postMessage", 0.5)
    ack = await bot.command("run approval ship it")
    assert ack.status == 200
    await asyncio.sleep(0.1)  # the start is under way: its root message is being posted
    await bot.stop()
    [root] = bot.emu.messages(CHANNEL)
    run_id = root.text.split("(")[1].split(")")[0]
    again = await start_bot()
    assert await again.settled(run_id, ("suspended",), timeout=10) == "suspended"
    assert await again.emu.wait_for(lambda: approval_messages(again.emu), timeout=10)
    assert not bot.emu.ephemerals(ALICE)  # nobody was told that nothing started
