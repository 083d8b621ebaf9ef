"""Slack requests that meet a PostgreSQL outage longer than the 10 s a start or a resume is retried (a restart or a
failover that takes its time). README, Reliability: such requests "are retried for 10 s and then get a clear error":
through Slack, the person who asked hears that nothing was done, and nothing in the channel claims otherwise.

The bot paces its Slack calls here as in production (the pace is kept in the database that is out of reach)."""

from __future__ import annotations

import asyncio

import pytest

from tests.bot.conftest import ALICE, CHANNEL, StartBot, block_text, suspend_approval
from tests.helpers.pg_wire import blackhole

pytestmark = pytest.mark.timeout(90)

#: Longer than the 10 s of retries, with a little to spare for the note that follows.
OUTAGE = 13.0


async def test_a_start_that_meets_a_database_outage_says_it_was_not_started(db_url: str, start_bot: StartBot) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("an outage of the PostgreSQL server")
    async with blackhole(db_url) as (proxy, proxied):
        running = await start_bot(THREADFLOW_DATABASE_URL=proxied, THREADFLOW_SLACK_PACING=True)
        emu = running.emu
        before = len(emu.messages(CHANNEL))
        proxy.hold_on = b"INSERT INTO slack_runs"  # the run, on its way to the database, after its root message...
        result = await running.command("run approval please ship it")
        assert result.status == 200
        await asyncio.wait_for(proxy.held.wait(), 5)
        proxy.refusing = True  # ...when the database goes away for longer than the 10 s of retries
        proxy.cut_all()
        await asyncio.sleep(OUTAGE)
        told = [str(p) for p in emu.state.response_urls[result.response_url_id or ""].posts]
        roots = [block_text(m) for m in emu.messages(CHANNEL)[before:]]
        proxy.refusing = False
        await running.stop()
    assert len(roots) == 1
    assert ":hourglass_flowing_sand:" not in roots[0], f"the channel shows a run that does not exist: {roots[0]}"
    assert "the database is unavailable right now, so the run was most likely not started" in roots[0]
    assert any("the run was most likely not started" in t and "try again" in t for t in told), told


async def test_an_approval_whose_decision_meets_a_database_outage_tells_the_clicker_to_click_again(
    db_url: str, start_bot: StartBot
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("an outage of the PostgreSQL server")
    async with blackhole(db_url) as (proxy, proxied):
        running = await start_bot(THREADFLOW_DATABASE_URL=proxied, THREADFLOW_SLACK_PACING=True)
        emu = running.emu
        try:
            run = await suspend_approval(running)
            proxy.hold_on = b"UPDATE suspensions SET"  # the decision, on its way to the database...
            click = await emu.click(run.approval, "approve", user=ALICE)
            assert click.status == 200
            await asyncio.wait_for(proxy.held.wait(), 5)
            proxy.refusing = True  # ...when the database goes away for longer than the 10 s of retries
            proxy.cut_all()
            await asyncio.sleep(OUTAGE)
            told = [e.text for e in emu.ephemerals(ALICE)]
            proxy.refusing = False
            assert (await running.engine.get_run(run.run_id)).status == "suspended"  # the decision was not taken
            again = await emu.click(run.approval, "approve", user=ALICE)  # the card kept its buttons: click again
            assert again.status == 200
            status = await running.settled(run.run_id, timeout=15)
        finally:
            proxy.refusing = False
            await running.stop()
    assert any("Your decision was most likely not recorded" in t and "click again" in t for t in told), told
    assert status == "success"
