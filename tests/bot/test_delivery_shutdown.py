"""Shutting the bot down while its renderers are busy: every renderer stops when it is cancelled."""

from __future__ import annotations

import asyncio

from tests.bot.conftest import StartBot, suspend_approval


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
