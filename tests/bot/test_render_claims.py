"""Exactly one renderer per run in a process, even when two callers ask at the same moment."""

from __future__ import annotations

import asyncio

from tests.bot.conftest import RunningBot, suspend_approval


def renderer_tasks(bot: RunningBot) -> list[asyncio.Task[None]]:
    return [t for t in bot.bot.delivery.render_tasks.values() if not t.done()]


async def test_two_render_calls_at_once_start_one_renderer(bot: RunningBot) -> None:
    run = await suspend_approval(bot)
    slack_run = await bot.bot.store.get_run(run.run_id)
    assert slack_run is not None
    # The run's own renderer watches it while it waits; stop it, as a finished renderer would be.
    for task in renderer_tasks(bot):
        task.cancel()
    await asyncio.gather(*renderer_tasks(bot), return_exceptions=True)
    await bot.idle()
    assert renderer_tasks(bot) == []

    # The sweeper and a command both render the run at once: the lease is this process's either way.
    await asyncio.gather(bot.bot.delivery.ensure_rendering(slack_run), bot.bot.delivery.ensure_rendering(slack_run))

    assert len(renderer_tasks(bot)) == 1
    await asyncio.sleep(0.2)
    assert len([m for m in bot.emu.thread(run.root.channel, run.root.ts) if m.blocks and any(
        b.get("type") == "actions" for b in m.blocks)]) == 1  # the approval was posted once
